"""How the lake retries what fails when it talks to AWS: each layer left to the library with one.

- **Whole AWS calls** (boto3: S3, Kinesis, Firehose; s3fs is botocore too): botocore's "standard"
  retry mode. It retries throttling, 5xx answers and connection errors with exponential backoff
  and full jitter, under a retry quota. Not "legacy" (botocore's default: fewer error codes, no
  quota), not "adaptive" (it adds a client-side rate limiter that slows every later call of the
  shared client after one throttled call, and the lake's throttling mostly shows inside PutRecords
  answers, which it never sees). 4 attempts and a 3 s connect timeout: an unreachable back end fails
  a call in about 5 s (at most ~20 s on an address that drops packets), not in a minute.
- **Polars' own S3 client** (object_store, for Parquet and JSON lines): 3 retries within 10 s
  instead of 8 within 30 s, for the same reason.
- **Records that fail inside a successful PutRecords call** (`FailedRecordCount`): no client
  retries those; the producer re-sends them, bounded, with backoff (`producer/sending.py`).
- **A step whose AWS calls still fail** (an outage longer than the clients' budget, such as the
  embedded AWS restarting): Dagster re-runs the step (`assets/retry.py`). Every AWS-facing step
  is safe to re-run: landing sends its ingest again under the same ingest id (bronze removes the
  copies by `_source_row`), and every Parquet write replaces whole objects (S3 never shows a
  partly written one) or, for silver's folder tables, completes what a failed attempt left.
  Failures that a retry cannot heal (a bad file, a missing one, Firehose slower than the landing
  timeout) are raised with `allow_retries=False`.
"""

from __future__ import annotations

from typing import Any

from botocore.config import Config

AWS_MAX_ATTEMPTS = 4
CONNECT_TIMEOUT_SECONDS = 3
READ_TIMEOUT_SECONDS = 60

_BOTOCORE_RETRIES = {"mode": "standard", "max_attempts": AWS_MAX_ATTEMPTS}

POLARS_CLOUD_ENV = {
    "POLARS_CLOUD_MAX_RETRIES": "3",
    "POLARS_CLOUD_RETRY_TIMEOUT_MS": "10000",
    "POLARS_HTTP_CONNECT_TIMEOUT_SECONDS": str(CONNECT_TIMEOUT_SECONDS),
}
"""Polars reads these once per process; dagster-polars' IO manager drops such storage options."""

POLARS_STORAGE_RETRIES = {"max_retries": 3, "retry_timeout_ms": 10_000}
"""The same budget as storage options, for the lake's own Polars reads."""


def botocore_config(max_attempts: int = AWS_MAX_ATTEMPTS) -> Config:
    """The retry mode and timeouts of every boto3 client the lake makes."""
    return Config(
        retries={**_BOTOCORE_RETRIES, "max_attempts": max_attempts},
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
    )


def s3fs_options() -> dict[str, Any]:
    """s3fs options for the same botocore retries and timeouts (s3fs' defaults: legacy mode,
    5 s to connect)."""
    return {
        "config_kwargs": {
            "retries": dict(_BOTOCORE_RETRIES),
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "read_timeout": READ_TIMEOUT_SECONDS,
        },
    }
