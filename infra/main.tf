# The lake's AWS resources: what deathmetal_lake/local_aws/provision.py creates in the embedded
# emulator, hardened for a real account. deathmetal_lake_tests/test_infra.py parses this file and
# fails if names, shard counts, prefixes or buffering drift from the dataset registry.

locals {
  # Mirrors DATASETS in deathmetal_lake/datasets.py: one entry per source CSV. Every name and
  # prefix below is derived from the key, as the registry derives them from Dataset.name.
  datasets = {
    albums  = { shard_count = 1, buffering_size_mb = 5, buffering_interval_seconds = 60 }
    bands   = { shard_count = 1, buffering_size_mb = 5, buffering_interval_seconds = 60 }
    reviews = { shard_count = 2, buffering_size_mb = 5, buffering_interval_seconds = 60 }
  }

  # The AWS managed key's own key policy already lets this account's principals decrypt through
  # Kinesis; only a customer managed key needs an IAM grant.
  kinesis_uses_customer_key = var.kinesis_kms_key_id != "alias/aws/kinesis"
}

data "aws_caller_identity" "current" {}

# --- Bucket -------------------------------------------------------------------------------------

resource "aws_s3_bucket" "lake" {
  bucket        = var.bucket_name
  force_destroy = var.bucket_force_destroy
}

resource "aws_s3_bucket_ownership_controls" "lake" {
  bucket = aws_s3_bucket.lake.id

  # ACLs off: access is decided by IAM alone.
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "lake" {
  bucket = aws_s3_bucket.lake.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "lake" {
  bucket = aws_s3_bucket.lake.id

  # SSE-S3 needs no key permissions for Firehose or the lake's readers.
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_versioning" "lake" {
  bucket = aws_s3_bucket.lake.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "lake" {
  bucket = aws_s3_bucket.lake.id

  # Landing files are raw Firehose output; bronze holds their rows once materialized.
  rule {
    id     = "expire-landing"
    status = "Enabled"

    filter {
      prefix = "landing/"
    }

    expiration {
      days = var.landing_expiration_days
    }

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_upload_days
    }
  }

  rule {
    id     = "expire-errors"
    status = "Enabled"

    filter {
      prefix = "errors/"
    }

    expiration {
      days = var.errors_expiration_days
    }

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_upload_days
    }
  }

  # Bronze/silver/gold overwrite their Parquet files on every run: without this, versioning would
  # keep every old copy forever.
  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"

    # The whole bucket. `prefix = ""` rather than `filter {}`: provider 5.9x warns that an empty
    # filter will become an error.
    filter {
      prefix = ""
    }

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_upload_days
    }
  }

  # Lifecycle rules on a versioned bucket must follow versioning being enabled.
  depends_on = [aws_s3_bucket_versioning.lake]
}

# --- Kinesis ------------------------------------------------------------------------------------

resource "aws_kinesis_stream" "this" {
  for_each = local.datasets

  name             = "${each.key}-stream"
  shard_count      = each.value.shard_count
  retention_period = var.kinesis_retention_hours
  encryption_type  = "KMS"
  kms_key_id       = var.kinesis_kms_key_id

  stream_mode_details {
    stream_mode = "PROVISIONED"
  }
}

# --- Firehose role ------------------------------------------------------------------------------

data "aws_iam_policy_document" "firehose_assume_role" {
  statement {
    sid     = "FirehoseOfThisAccountOnly"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["firehose.amazonaws.com"]
    }

    # Confused-deputy guard: only delivery streams in this account may assume the role.
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_iam_role" "firehose" {
  # FIREHOSE_ROLE_NAME in deathmetal_lake/local_aws/provision.py.
  name               = "deathmetal-lake-firehose"
  description        = "Lets the lake's Firehose delivery streams read their Kinesis streams and write landing/ and errors/."
  assume_role_policy = data.aws_iam_policy_document.firehose_assume_role.json
}

data "aws_iam_policy_document" "firehose" {
  statement {
    sid    = "ReadOwnKinesisStreams"
    effect = "Allow"
    actions = [
      "kinesis:DescribeStream",
      "kinesis:DescribeStreamSummary",
      "kinesis:GetRecords",
      "kinesis:GetShardIterator",
      "kinesis:ListShards",
    ]
    resources = [for stream in aws_kinesis_stream.this : stream.arn]
  }

  statement {
    sid       = "LocateLakeBucket"
    effect    = "Allow"
    actions   = ["s3:GetBucketLocation", "s3:ListBucket"]
    resources = [aws_s3_bucket.lake.arn]
  }

  # Firehose writes objects (multipart for large ones) and never reads them back.
  statement {
    sid     = "WriteLandingAndErrors"
    effect  = "Allow"
    actions = ["s3:AbortMultipartUpload", "s3:PutObject"]
    resources = [
      "${aws_s3_bucket.lake.arn}/landing/*",
      "${aws_s3_bucket.lake.arn}/errors/*",
    ]
  }

  dynamic "statement" {
    for_each = local.kinesis_uses_customer_key ? [var.kinesis_kms_key_id] : []

    content {
      sid       = "DecryptKinesisRecords"
      effect    = "Allow"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["kinesis.${var.region}.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role_policy" "firehose" {
  name   = "deathmetal-lake-firehose-delivery"
  role   = aws_iam_role.firehose.id
  policy = data.aws_iam_policy_document.firehose.json
}

# --- Firehose -----------------------------------------------------------------------------------

resource "aws_kinesis_firehose_delivery_stream" "this" {
  for_each = local.datasets

  name        = "${each.key}-firehose"
  destination = "extended_s3"

  # Producers write to the Kinesis stream; Firehose reads it (PutRecord on the delivery stream is
  # rejected for this source type). Firehose-side SSE is not available with a Kinesis source: the
  # stream itself is encrypted above.
  kinesis_source_configuration {
    kinesis_stream_arn = aws_kinesis_stream.this[each.key].arn
    role_arn           = aws_iam_role.firehose.arn
  }

  extended_s3_configuration {
    role_arn   = aws_iam_role.firehose.arn
    bucket_arn = aws_s3_bucket.lake.arn

    # The trailing slash matters: AWS appends the YYYY/MM/DD/HH/ time path by concatenation.
    prefix              = "landing/${each.key}/"
    error_output_prefix = "errors/${each.key}/!{firehose:error-output-type}/!{timestamp:yyyy/MM/dd}/"
    buffering_size      = each.value.buffering_size_mb
    buffering_interval  = each.value.buffering_interval_seconds
    compression_format  = "UNCOMPRESSED"
  }

  # Firehose checks the role's permissions when it is created.
  depends_on = [aws_iam_role_policy.firehose]
}
