"""`make provision`: the lake's AWS resources on the embedded AWS or LocalStack, proven to deliver.

`provision_lake` creates what `infra/` creates (idempotent). A delivery stream that exists, even
ACTIVE, may not deliver yet: LocalStack's consumer starts reading about 30 s after the create
call, at the stream's tip, and drops what was sent before. So this sends a probe record to every
shard (`ExplicitHashKey` = the shard's starting hash key) until each shows up in `landing/`.

A probe line carries `_probe` and no `_ingest_id`. Every reader of `landing/` (the delivery wait,
bronze, the reconciliation checks) keeps only its ingest's `_ingest_id`, so no ingest counts a
probe, even one delivered in the same object as its rows. The sensors never read `landing/`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3

from deathmetal_lake.datasets import DATASETS, Dataset
from deathmetal_lake.local_aws import EmbeddedAwsError, ensure_running
from deathmetal_lake.local_aws.provision import provision_lake
from deathmetal_lake.settings import AwsMode, LakeSettings, load_settings

PROBE = "_probe"
DEFAULT_TIMEOUT_SECONDS = 120.0
# LocalStack drops records sent before its consumer reads: a lost probe is sent again.
RESEND_SECONDS = 5.0
POLL_SECONDS = 1.0
# How many delivery streams that failed to create are deleted and created again.
REPAIRS = 2
_CLOCK_SLACK = timedelta(seconds=30)
FAILED_STATUSES = {"CREATING_FAILED", "DELETING", "DELETING_FAILED"}


class NotDeliveringError(RuntimeError):
    """A delivery stream did not deliver a probe in time (or cannot)."""


class FailedDeliveryStreamError(NotDeliveringError):
    """A delivery stream failed to create; it never recovers, but one created again may work
    (LocalStack fails one whose consumer did not start within 90 s, on a busy machine)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass
class _Shard:
    dataset: Dataset
    shard_id: str
    hash_key: str
    sent_at: float = float("-inf")


def probe_line(token: str, shard: _Shard) -> bytes:
    return json.dumps({PROBE: token, "shard": shard.shard_id}).encode() + b"\n"


def _shards(kinesis: Any) -> list[_Shard]:
    return [
        _Shard(dataset, shard["ShardId"], shard["HashKeyRange"]["StartingHashKey"])
        for dataset in DATASETS
        for shard in kinesis.list_shards(StreamName=dataset.stream_name)["Shards"]
    ]


def _probes_in(s3: Any, bucket: str, key: str, token: str) -> set[str]:
    """The shards whose probe of this `token` the object holds."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    shards = set()
    for line in body.splitlines():
        if PROBE.encode() in line:  # most lines are rows: skip them without parsing
            fields = json.loads(line)
            if fields.get(PROBE) == token:
                shards.add(fields["shard"])
    return shards


def _check_status(firehose: Any, dataset: Dataset) -> None:
    description = firehose.describe_delivery_stream(DeliveryStreamName=dataset.firehose_name)[
        "DeliveryStreamDescription"
    ]
    status = description["DeliveryStreamStatus"]
    if status in FAILED_STATUSES:
        reason = description.get("FailureDescription", {}).get("Details", "no details")
        raise FailedDeliveryStreamError(
            dataset.firehose_name, f"delivery stream {dataset.firehose_name} is {status}: {reason}"
        )


def wait_until_delivering(
    s3: Any,
    kinesis: Any,
    firehose: Any,
    *,
    bucket: str,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> dict[str, float]:
    """Probe every shard until its probe lands; seconds until each delivery stream delivered.

    Raises NotDeliveringError naming every delivery stream that did not within the timeout.
    """
    token = uuid.uuid4().hex
    since = datetime.now(UTC) - _CLOCK_SLACK
    started = time.monotonic()
    pending = {(shard.dataset.name, shard.shard_id): shard for shard in _shards(kinesis)}
    delivered: dict[str, float] = {}
    read: set[str] = set()
    while pending:
        now = time.monotonic()
        for shard in pending.values():
            if now - shard.sent_at >= RESEND_SECONDS:
                _check_status(firehose, shard.dataset)
                kinesis.put_record(
                    StreamName=shard.dataset.stream_name,
                    Data=probe_line(token, shard),
                    PartitionKey=PROBE,
                    ExplicitHashKey=shard.hash_key,
                )
                shard.sent_at = now
        for dataset in {shard.dataset for shard in pending.values()}:
            pages = s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket,
                Prefix=dataset.landing_prefix,
                # Keys start with the UTC hour they were written in: skip the older ones.
                StartAfter=f"{dataset.landing_prefix}{since:%Y/%m/%d/%H}",
            )
            for item in (item for page in pages for item in page.get("Contents", [])):
                if item["Key"] in read or item["LastModified"] < since:
                    continue
                read.add(item["Key"])
                for shard_id in _probes_in(s3, bucket, item["Key"], token):
                    pending.pop((dataset.name, shard_id), None)
            if not any(shard.dataset == dataset for shard in pending.values()):
                delivered[dataset.firehose_name] = time.monotonic() - started
        if pending and time.monotonic() - started > timeout_seconds:
            silent = sorted({shard.dataset.firehose_name for shard in pending.values()})
            shards = sorted(f"{s.dataset.stream_name}/{s.shard_id}" for s in pending.values())
            raise NotDeliveringError(
                f"{', '.join(silent)} did not deliver a probe record to s3://{bucket}/landing/ "
                f"within {timeout_seconds:.0f}s (shards not delivered: {', '.join(shards)})"
            )
        if pending:
            time.sleep(POLL_SECONDS)
    return delivered


def _wait_deleted(firehose: Any, name: str, timeout_seconds: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            firehose.describe_delivery_stream(DeliveryStreamName=name)
        except firehose.exceptions.ResourceNotFoundException:
            return
        time.sleep(POLL_SECONDS)
    raise NotDeliveringError(f"delivery stream {name} failed to create and is not deleted yet")


def provision(settings: LakeSettings, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
    """Create the lake's resources where `settings` point, then wait until they deliver."""
    if settings.aws_mode is AwsMode.EMBEDDED and not settings.endpoint_url:
        ensure_running(settings)
    clients = {
        service: boto3.client(service, **settings.boto3_client_kwargs())
        for service in ("s3", "kinesis", "firehose", "iam")
    }
    for attempt in range(REPAIRS + 1):
        created = provision_lake(
            clients["s3"],
            clients["kinesis"],
            clients["firehose"],
            clients["iam"],
            bucket=settings.bucket,
            region=settings.region,
            # The embedded AWS provisions itself with this hint at every start: keep it.
            buffering_seconds=(
                settings.embedded_buffer_seconds if settings.aws_mode is AwsMode.EMBEDDED else None
            ),
        )
        print(f"{settings.aws_endpoint}: created {', '.join(created) or 'nothing (all there)'}")
        try:
            delivered = wait_until_delivering(
                clients["s3"],
                clients["kinesis"],
                clients["firehose"],
                bucket=settings.bucket,
                timeout_seconds=timeout_seconds,
            )
            break
        except FailedDeliveryStreamError as error:
            if attempt == REPAIRS:
                raise
            print(f"{error}: deleting it to create it again")
            clients["firehose"].delete_delivery_stream(
                DeliveryStreamName=error.name, AllowForceDelete=True
            )
            _wait_deleted(clients["firehose"], error.name)
    for name, seconds in sorted(delivered.items()):
        print(f"{name} delivers (probe in landing/ after {seconds:.1f}s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deathmetal_lake.provision", description=__doc__
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, metavar="SECONDS")
    args = parser.parse_args(argv)
    settings = load_settings()
    if settings.aws_mode is AwsMode.AWS:
        print(
            "error: LAKE_AWS_MODE=aws: provision a real account with Terraform "
            "(cd infra && terraform init && terraform apply; see infra/README.md)",
            file=sys.stderr,
        )
        return 2
    try:
        provision(settings, args.timeout)
    except (NotDeliveringError, EmbeddedAwsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
