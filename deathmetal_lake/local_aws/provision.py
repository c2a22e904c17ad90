"""Idempotent provisioning of the lake's AWS resources, built from the dataset registry.

The embedded AWS runs this at every start and `make provision` on the embedded AWS or LocalStack;
on AWS, Terraform in `infra/` creates the same resources (a test parses `infra/*.tf` and checks
both agree with the request builders below). Terraform also hardens what it creates (bucket
encryption, versioning, lifecycle, Kinesis KMS); emulators get the resources without that.
"""

from __future__ import annotations

import json
import time
from typing import Any

from botocore.exceptions import ClientError

from deathmetal_lake.datasets import DATASETS, BufferingHints, Dataset

ACCOUNT_ID = "123456789012"
FIREHOSE_ROLE_NAME = "deathmetal-lake-firehose"
FIREHOSE_POLICY_NAME = "deathmetal-lake-firehose-delivery"


def firehose_role_arn(account_id: str = ACCOUNT_ID) -> str:
    return f"arn:aws:iam::{account_id}:role/{FIREHOSE_ROLE_NAME}"


def stream_arn(dataset: Dataset, region: str, account_id: str = ACCOUNT_ID) -> str:
    return f"arn:aws:kinesis:{region}:{account_id}:stream/{dataset.stream_name}"


def firehose_trust_policy(account_id: str = ACCOUNT_ID) -> dict[str, Any]:
    """Only Firehose of this account may assume the role (the confused-deputy guard)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "FirehoseOfThisAccountOnly",
                "Effect": "Allow",
                "Principal": {"Service": "firehose.amazonaws.com"},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"aws:SourceAccount": account_id}},
            }
        ],
    }


def firehose_role_policy(bucket: str, region: str) -> dict[str, Any]:
    """Read the lake's streams, write `landing/` and `errors/`: what `infra/` grants."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadOwnKinesisStreams",
                "Effect": "Allow",
                "Action": [
                    "kinesis:DescribeStream",
                    "kinesis:DescribeStreamSummary",
                    "kinesis:GetRecords",
                    "kinesis:GetShardIterator",
                    "kinesis:ListShards",
                ],
                "Resource": [stream_arn(dataset, region) for dataset in DATASETS],
            },
            {
                "Sid": "LocateLakeBucket",
                "Effect": "Allow",
                "Action": ["s3:GetBucketLocation", "s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
            },
            {
                "Sid": "WriteLandingAndErrors",
                "Effect": "Allow",
                "Action": ["s3:AbortMultipartUpload", "s3:PutObject"],
                "Resource": [f"arn:aws:s3:::{bucket}/landing/*", f"arn:aws:s3:::{bucket}/errors/*"],
            },
        ],
    }


def kinesis_stream_request(dataset: Dataset) -> dict[str, Any]:
    return {
        "StreamName": dataset.stream_name,
        "ShardCount": dataset.shard_count,
        "StreamModeDetails": {"StreamMode": "PROVISIONED"},
    }


def delivery_stream_request(
    dataset: Dataset, bucket: str, region: str, buffering: BufferingHints | None = None
) -> dict[str, Any]:
    """CreateDeliveryStream for `dataset`: its Kinesis stream as source, S3 as destination."""
    hints = buffering or dataset.buffering
    return {
        "DeliveryStreamName": dataset.firehose_name,
        "DeliveryStreamType": "KinesisStreamAsSource",
        "KinesisStreamSourceConfiguration": {
            "KinesisStreamARN": stream_arn(dataset, region),
            "RoleARN": firehose_role_arn(),
        },
        "ExtendedS3DestinationConfiguration": {
            "RoleARN": firehose_role_arn(),
            "BucketARN": f"arn:aws:s3:::{bucket}",
            "Prefix": dataset.landing_prefix,
            "ErrorOutputPrefix": dataset.firehose_error_output_prefix,
            "BufferingHints": {
                "SizeInMBs": hints.size_mb,
                "IntervalInSeconds": hints.interval_seconds,
            },
            "CompressionFormat": "UNCOMPRESSED",
        },
    }


def _ignore_exists(call: Any, codes: tuple[str, ...], **kwargs: Any) -> bool:
    """Call `call(**kwargs)`; True if it created something, False if it already existed."""
    try:
        call(**kwargs)
    except ClientError as error:
        if error.response["Error"]["Code"] in codes:
            return False
        raise
    return True


def _bucket_exists(s3: Any, bucket: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        return False
    return True


def _wait_stream_active(kinesis: Any, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
        if status["StreamStatus"] == "ACTIVE":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Kinesis stream {name} is still {status['StreamStatus']}")
        time.sleep(0.2)


def _sync_buffering(firehose: Any, request: dict[str, Any]) -> None:
    """Apply changed buffering hints to an existing delivery stream (as UpdateDestination would)."""
    name = request["DeliveryStreamName"]
    description = firehose.describe_delivery_stream(DeliveryStreamName=name)[
        "DeliveryStreamDescription"
    ]
    destination = description["Destinations"][0]
    wanted = request["ExtendedS3DestinationConfiguration"]["BufferingHints"]
    current = destination.get("ExtendedS3DestinationDescription", {}).get("BufferingHints")
    if current != wanted:
        firehose.update_destination(
            DeliveryStreamName=name,
            CurrentDeliveryStreamVersionId=description["VersionId"],
            DestinationId=destination["DestinationId"],
            ExtendedS3DestinationUpdate={"BufferingHints": wanted},
        )


def _provision_role(iam: Any, bucket: str, region: str) -> bool:
    """The Firehose role and its inline policy (rewritten every time: PutRolePolicy overwrites)."""
    created = _ignore_exists(
        iam.create_role,
        ("EntityAlreadyExists",),
        RoleName=FIREHOSE_ROLE_NAME,
        AssumeRolePolicyDocument=json.dumps(firehose_trust_policy()),
        Description="Lets the lake's Firehose delivery streams read their Kinesis streams "
        "and write landing/ and errors/.",
    )
    iam.put_role_policy(
        RoleName=FIREHOSE_ROLE_NAME,
        PolicyName=FIREHOSE_POLICY_NAME,
        PolicyDocument=json.dumps(firehose_role_policy(bucket, region)),
    )
    return created


def provision_lake(
    s3: Any,
    kinesis: Any,
    firehose: Any,
    iam: Any,
    *,
    bucket: str,
    region: str,
    buffering_seconds: int | None = None,
) -> list[str]:
    """Create what is missing (bucket, Firehose role, streams, delivery streams); returns what
    was created.

    `buffering_seconds` overrides every dataset's interval hint (the embedded AWS uses a short one
    so local runs are quick).
    """
    created: list[str] = []
    bucket_args: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        bucket_args["CreateBucketConfiguration"] = {"LocationConstraint": region}
    # In us-east-1 CreateBucket on a bucket you own succeeds (AWS and moto alike): ask first.
    if not _bucket_exists(s3, bucket) and _ignore_exists(
        s3.create_bucket, ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"), **bucket_args
    ):
        created.append(f"s3://{bucket}")
    # Firehose checks its role when a delivery stream is created: the role comes first.
    if _provision_role(iam, bucket, region):
        created.append(f"iam role {FIREHOSE_ROLE_NAME}")
    for dataset in DATASETS:
        if _ignore_exists(
            kinesis.create_stream, ("ResourceInUseException",), **kinesis_stream_request(dataset)
        ):
            created.append(dataset.stream_name)
        _wait_stream_active(kinesis, dataset.stream_name)
    # One at a time: LocalStack starts a consumer JVM in each CreateDeliveryStream (~25 s), and
    # three starting at once on a busy machine missed its 90 s limit for the consumer's start.
    for dataset in DATASETS:
        hints = dataset.buffering
        if buffering_seconds is not None:
            hints = BufferingHints(hints.size_mb, buffering_seconds)
        request = delivery_stream_request(dataset, bucket, region, hints)
        if _ignore_exists(firehose.create_delivery_stream, ("ResourceInUseException",), **request):
            created.append(dataset.firehose_name)
        else:
            _sync_buffering(firehose, request)
    return created
