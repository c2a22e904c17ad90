# One configuration for LocalStack and a real account: `use_localstack` only redirects the
# endpoints and relaxes the credential checks; the resources are identical.
# `tflocal` also works: its generated override file replaces the endpoints and credentials below.

terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}

provider "aws" {
  region = var.region

  # LocalStack accepts any credentials; fixed dummy ones keep a real AWS profile out of local
  # applies. On AWS (null) the normal credential chain is used.
  access_key = var.use_localstack ? "test" : null
  secret_key = var.use_localstack ? "test" : null

  skip_credentials_validation = var.use_localstack
  skip_metadata_api_check     = var.use_localstack
  # LocalStack on localhost has no per-bucket DNS names.
  s3_use_path_style = var.use_localstack

  # Only the services this configuration calls; null keeps the provider's AWS endpoint.
  endpoints {
    s3       = var.use_localstack ? var.localstack_endpoint : null
    kinesis  = var.use_localstack ? var.localstack_endpoint : null
    firehose = var.use_localstack ? var.localstack_endpoint : null
    iam      = var.use_localstack ? var.localstack_endpoint : null
    sts      = var.use_localstack ? var.localstack_endpoint : null
  }

  default_tags {
    tags = var.tags
  }
}
