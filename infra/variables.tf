variable "region" {
  description = "AWS region of every resource (the lake's AWS_DEFAULT_REGION)."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]+$", var.region))
    error_message = "region must be an AWS region name such as us-east-1."
  }
}

variable "use_localstack" {
  description = "Point the provider at LocalStack (docker compose) instead of a real AWS account."
  type        = bool
  default     = false
}

variable "localstack_endpoint" {
  description = "LocalStack's edge endpoint, used only when use_localstack is true."
  type        = string
  default     = "http://localhost:4566"

  validation {
    condition     = can(regex("^https?://[^/]+/?$", var.localstack_endpoint))
    error_message = "localstack_endpoint must be an http(s) URL without a path, e.g. http://localhost:4566."
  }
}

variable "bucket_name" {
  description = "The lake's bucket (LAKE_BUCKET). Bucket names are global on AWS: pick your own there."
  type        = string
  default     = "csv-batch-bucket"

  validation {
    condition = (
      can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
      && !can(regex("\\.\\.|^\\d+\\.\\d+\\.\\d+\\.\\d+$|^xn--|-s3alias$", var.bucket_name))
    )
    error_message = "bucket_name must be a valid S3 bucket name: 3-63 lowercase letters, digits, dots and hyphens."
  }
}

variable "bucket_force_destroy" {
  description = "Allow `terraform destroy` to delete a bucket that still holds objects (the lake's data). Keep false outside throwaway environments."
  type        = bool
  default     = false
}

variable "landing_expiration_days" {
  description = "Days after which Firehose's landing/ objects expire. Bronze keeps the rows; landing is only needed to rebuild bronze."
  type        = number
  default     = 90

  validation {
    condition     = var.landing_expiration_days >= 1 && floor(var.landing_expiration_days) == var.landing_expiration_days
    error_message = "landing_expiration_days must be a whole number of days, at least 1."
  }
}

variable "errors_expiration_days" {
  description = "Days after which errors/ objects (rows Firehose or the producer could not deliver) expire."
  type        = number
  default     = 90

  validation {
    condition     = var.errors_expiration_days >= 1 && floor(var.errors_expiration_days) == var.errors_expiration_days
    error_message = "errors_expiration_days must be a whole number of days, at least 1."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days a replaced or deleted object version is kept (versioning is on; silver and gold overwrite their files every run)."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && floor(var.noncurrent_version_expiration_days) == var.noncurrent_version_expiration_days
    error_message = "noncurrent_version_expiration_days must be a whole number of days, at least 1."
  }
}

variable "abort_incomplete_multipart_upload_days" {
  description = "Days after which unfinished multipart uploads are aborted (their parts are billed but invisible)."
  type        = number
  default     = 7

  validation {
    condition     = var.abort_incomplete_multipart_upload_days >= 1 && floor(var.abort_incomplete_multipart_upload_days) == var.abort_incomplete_multipart_upload_days
    error_message = "abort_incomplete_multipart_upload_days must be a whole number of days, at least 1."
  }
}

variable "kinesis_retention_hours" {
  description = "Kinesis retention. Firehose retries a Kinesis source indefinitely, so this is how long an outage may last before records are lost."
  type        = number
  default     = 24

  validation {
    condition     = var.kinesis_retention_hours >= 24 && var.kinesis_retention_hours <= 8760 && floor(var.kinesis_retention_hours) == var.kinesis_retention_hours
    error_message = "kinesis_retention_hours must be a whole number from 24 to 8760."
  }
}

variable "kinesis_kms_key_id" {
  description = "KMS key for Kinesis server-side encryption: the AWS managed alias/aws/kinesis, or the ARN of a customer managed key (then Firehose's role is allowed to decrypt with it)."
  type        = string
  default     = "alias/aws/kinesis"

  validation {
    condition = (
      var.kinesis_kms_key_id == "alias/aws/kinesis"
      || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[0-9a-f-]+$", var.kinesis_kms_key_id))
    )
    error_message = "kinesis_kms_key_id must be alias/aws/kinesis or a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>); IAM policies need the key ARN, not an alias."
  }
}

variable "tags" {
  description = "Tags applied to every resource through the provider's default_tags."
  type        = map(string)
  default = {
    Project   = "deathmetal-lake"
    ManagedBy = "terraform"
  }
}

variable "athena_catalog" {
  description = "Declare the Glue database and tables Athena queries the lake through (AWS only: never with use_localstack)."
  type        = bool
  default     = true
}

variable "glue_database_name" {
  description = "Glue database of the lake's Athena tables (silver_reviews, gold_top10_by_country, ...)."
  type        = string
  default     = "deathmetal_lake"

  validation {
    condition     = can(regex("^[a-z0-9_]{1,255}$", var.glue_database_name))
    error_message = "glue_database_name must be lowercase letters, digits and underscores (Athena's rule for database names)."
  }
}
