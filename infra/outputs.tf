output "bucket_name" {
  description = "The lake's bucket: set LAKE_BUCKET to this."
  value       = aws_s3_bucket.lake.bucket
}

output "bucket_arn" {
  description = "ARN of the lake's bucket."
  value       = aws_s3_bucket.lake.arn
}

output "kinesis_stream_names" {
  description = "Kinesis stream name per dataset."
  value       = { for dataset, stream in aws_kinesis_stream.this : dataset => stream.name }
}

output "kinesis_stream_arns" {
  description = "Kinesis stream ARN per dataset."
  value       = { for dataset, stream in aws_kinesis_stream.this : dataset => stream.arn }
}

output "firehose_names" {
  description = "Firehose delivery stream name per dataset."
  value       = { for dataset, firehose in aws_kinesis_firehose_delivery_stream.this : dataset => firehose.name }
}

output "firehose_arns" {
  description = "Firehose delivery stream ARN per dataset."
  value       = { for dataset, firehose in aws_kinesis_firehose_delivery_stream.this : dataset => firehose.arn }
}

output "firehose_role_arn" {
  description = "ARN of the role the delivery streams assume."
  value       = aws_iam_role.firehose.arn
}

output "glue_database_name" {
  description = "Glue database of the lake's Athena tables (null without the catalog)."
  value       = one(aws_glue_catalog_database.lake[*].name)
}
