"""Waiting for Firehose to deliver an ingest into `landing/`.

A landing run succeeds only when every row it sent is in S3: this counts the ingest's distinct
`_source_row`s in the objects Firehose delivered since the send began, the same way on the
embedded AWS, LocalStack and AWS (all three write `{prefix}YYYY/MM/DD/HH/...` in UTC).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

_PROVENANCE_SCHEMA = {"_ingest_id": pl.String, "_source_row": pl.Int64}
# S3 LastModified has one-second resolution and hosts' clocks drift: look a little further back.
_CLOCK_SLACK = timedelta(seconds=30)


class DeliveryTimeoutError(TimeoutError):
    """Firehose did not deliver every row of an ingest in time."""


@dataclass
class Arrival:
    """What has arrived so far for one ingest."""

    expected_rows: int
    delivered: bytearray = field(init=False)
    objects: dict[str, int] = field(default_factory=dict)
    copies: int = 0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        # One byte per source row: 5 MB for a 5-million-row file, whatever its width.
        self.delivered = bytearray(self.expected_rows + 1)

    @property
    def rows(self) -> int:
        return self.expected_rows - self.delivered.count(0) + 1

    @property
    def missing(self) -> int:
        return self.expected_rows - self.rows

    def first_missing(self, limit: int = 10) -> list[int]:
        found, start = [], 1
        while len(found) < limit:
            index = self.delivered.find(0, start)
            if index < 0:
                break
            found.append(index)
            start = index + 1
        return found

    def record(self, key: str, rows: pl.Series) -> None:
        for row in rows.to_list():
            if 1 <= row <= self.expected_rows:
                if self.delivered[row]:
                    self.copies += 1
                self.delivered[row] = 1
        self.objects[key] = len(rows)


def _hour_prefixes(prefix: str, since: datetime, until: datetime) -> list[str]:
    hour = since.replace(minute=0, second=0, microsecond=0)
    prefixes = []
    while hour <= until:
        prefixes.append(f"{prefix}{hour:%Y/%m/%d/%H}/")
        hour += timedelta(hours=1)
    return prefixes


def wait_for_delivery(
    s3_client: Any,
    *,
    bucket: str,
    prefix: str,
    ingest_id: str,
    expected_rows: int,
    since: datetime,
    timeout_seconds: float,
    poll_seconds: float = 0.25,
) -> Arrival:
    """Poll `prefix` until all `expected_rows` of `ingest_id` arrived; raise on timeout."""
    arrival = Arrival(expected_rows)
    started = time.monotonic()
    seen: set[str] = set()
    earliest = since - _CLOCK_SLACK
    while arrival.missing > 0:
        now = datetime.now(UTC)
        for hour_prefix in _hour_prefixes(prefix, earliest, now + _CLOCK_SLACK):
            pages = s3_client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=hour_prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    if item["Key"] in seen or item["LastModified"] < earliest:
                        continue
                    seen.add(item["Key"])
                    body = s3_client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                    lines = pl.read_ndjson(io.BytesIO(body), schema=_PROVENANCE_SCHEMA)
                    mine = lines.filter(pl.col("_ingest_id") == ingest_id)["_source_row"]
                    if len(mine):
                        arrival.record(item["Key"], mine)
        arrival.seconds = time.monotonic() - started
        if arrival.missing <= 0:
            break
        if arrival.seconds > timeout_seconds:
            raise DeliveryTimeoutError(
                f"ingest {ingest_id}: {arrival.missing} of {expected_rows} rows were not delivered "
                f"to s3://{bucket}/{prefix} within {timeout_seconds:.0f}s "
                f"(first missing source rows: {arrival.first_missing()}); "
                "check the Firehose delivery stream and its error output under errors/"
            )
        time.sleep(poll_seconds)
    return arrival
