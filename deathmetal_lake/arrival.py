"""Waiting for Firehose to deliver an ingest into `landing/`.

A landing run succeeds only when every row it sent is in S3: this counts the ingest's distinct
`_source_row`s in the objects Firehose delivered since the send began, the same way on the
embedded AWS, LocalStack and AWS (all three write `{prefix}YYYY/MM/DD/HH/...` in UTC).

`DeliveryWatcher` starts reading delivered objects while the producer is still sending, so what
is left to wait for after the last PutRecords is only the tail of the ingest.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import polars as pl

from deathmetal_lake.rows import INGEST_ID, ROW_ID_SCHEMA, SOURCE_ROW

# S3 LastModified has one-second resolution and hosts' clocks drift: look a little further back.
_CLOCK_SLACK = timedelta(seconds=30)
# After the send, the tail is usually delivered within a fraction of a second (at once on the
# embedded AWS, which delivers every 50 ms): poll for it often at first, then back off to the
# watcher's own interval, so a tail that waits out a buffering interval costs few listings.
_FIRST_TAIL_POLL_SECONDS = 0.05
_TAIL_POLL_BACKOFF = 1.5


class DeliveryTimeoutError(TimeoutError):
    """Firehose did not deliver every row of an ingest in time."""


class NothingDeliveredError(DeliveryTimeoutError):
    """Not one row of an ingest arrived: its delivery stream does not deliver at all."""


@dataclass
class Arrival:
    """What has arrived so far for one ingest: its objects and the source rows in them."""

    objects: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    _pending: list[pl.Series] = field(default_factory=list, repr=False)
    _seen_rows: pl.Series = field(
        default_factory=lambda: pl.Series(SOURCE_ROW, [], ROW_ID_SCHEMA[SOURCE_ROW]), repr=False
    )

    @property
    def _distinct(self) -> pl.Series:
        """Distinct rows so far; merged on demand, not per object (a 2 M-row ingest has 200+)."""
        if self._pending:
            self._seen_rows = pl.concat([self._seen_rows, *self._pending]).unique()
            self._pending.clear()
        return self._seen_rows

    @property
    def lines(self) -> int:
        """Every delivered line of the ingest, Firehose's copies included."""
        return sum(self.objects.values())

    @property
    def rows(self) -> int:
        """Distinct source rows delivered."""
        return self._distinct.len()

    @property
    def copies(self) -> int:
        return self.lines - self.rows

    def missing(self, expected: pl.Series) -> pl.Series:
        """The rows of `expected` not delivered yet, ascending if `expected` is."""
        return expected.filter(~expected.is_in(self._distinct.implode()))

    def record(self, key: str, rows: pl.Series) -> None:
        self.objects[key] = len(rows)
        self._pending.append(rows)


def sent_rows(source_rows: int, not_sent: Iterable[int] = ()) -> pl.Series:
    """The source rows an ingest sent to Kinesis: 1..source_rows except those in `not_sent`
    (rows written to errors/ instead), so a row after an oversize one is waited for too."""
    dtype = ROW_ID_SCHEMA[SOURCE_ROW]
    rows = pl.int_range(1, source_rows + 1, dtype=dtype, eager=True)
    return rows.filter(~rows.is_in(pl.Series(list(not_sent), dtype=dtype).implode()))


def _hour_prefixes(prefix: str, since: datetime, until: datetime) -> list[str]:
    hour = since.replace(minute=0, second=0, microsecond=0)
    prefixes = []
    while hour <= until:
        prefixes.append(f"{prefix}{hour:%Y/%m/%d/%H}/")
        hour += timedelta(hours=1)
    return prefixes


class DeliveryWatcher:
    """Collects an ingest's delivered rows from `prefix`, in the background while it is open.

    Use it as a context manager around the send, then call `wait` with the rows sent.
    """

    def __init__(
        self,
        s3_client: Any,
        *,
        bucket: str,
        prefix: str,
        ingest_id: str,
        since: datetime,
        poll_seconds: float = 0.25,
    ) -> None:
        self._s3 = s3_client
        self._bucket, self._prefix, self._ingest_id = bucket, prefix, ingest_id
        self._earliest = since - _CLOCK_SLACK
        self._poll_seconds = poll_seconds
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.arrival = Arrival()

    def __enter__(self) -> DeliveryWatcher:
        # What is there before the send cannot hold its rows: never read. Without this, an ingest
        # that follows another of its dataset within the clock slack read all of that one's
        # objects (126 MB after a scale-10 build).
        self._seen.update(item["Key"] for item in self._delivered())
        self._thread = threading.Thread(target=self._watch, name="delivery-watcher", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._stop_watching()
        except Exception as error:
            if exc is None:
                raise
            # The send failed too: its error is the one to report, this one goes with it.
            exc.add_note(f"reading delivered objects also failed: {error!r}")

    def wait(
        self,
        source_rows: int,
        timeout_seconds: float,
        *,
        not_sent: Iterable[int] = (),
        silence_seconds: float | None = None,
    ) -> Arrival:
        """Poll until every row sent arrived: rows 1..`source_rows` but those in `not_sent`
        (written to errors/ instead). Raise DeliveryTimeoutError after the timeout, or
        NothingDeliveredError as soon as `silence_seconds` passed without a single row."""
        self._stop_watching()
        expected = sent_rows(source_rows, not_sent)
        started = time.monotonic()
        delay = min(_FIRST_TAIL_POLL_SECONDS, self._poll_seconds)
        while True:
            self.poll()
            self.arrival.seconds = time.monotonic() - started
            missing = self.arrival.missing(expected)
            if missing.is_empty():
                return self.arrival
            silent = silence_seconds is not None and self.arrival.seconds > silence_seconds
            if silent and not self.arrival.objects:
                raise NothingDeliveredError(
                    f"ingest {self._ingest_id}: none of its {expected.len()} rows arrived in "
                    f"s3://{self._bucket}/{self._prefix} within {silence_seconds:.0f}s"
                )
            if self.arrival.seconds > timeout_seconds:
                raise DeliveryTimeoutError(
                    f"ingest {self._ingest_id}: {missing.len()} of {expected.len()} rows were not "
                    f"delivered to s3://{self._bucket}/{self._prefix} within "
                    f"{timeout_seconds:.0f}s (first missing source rows: "
                    f"{missing.head(10).to_list()}); "
                    "check the Firehose delivery stream and its error output under errors/"
                )
            time.sleep(delay)
            delay = min(delay * _TAIL_POLL_BACKOFF, self._poll_seconds)

    def poll(self) -> None:
        """Read every object delivered since the last poll."""
        with self._lock:
            for item in self._delivered():
                if item["Key"] not in self._seen and item["LastModified"] >= self._earliest:
                    self._read(item["Key"])

    def _delivered(self) -> Iterator[dict[str, Any]]:
        """The objects under the hour prefixes from the send's start (less the slack) to now."""
        until = datetime.now(UTC) + _CLOCK_SLACK
        for hour_prefix in _hour_prefixes(self._prefix, self._earliest, until):
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=hour_prefix
            )
            for page in pages:
                yield from page.get("Contents", [])

    def _read(self, key: str) -> None:
        body = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()
        lines = pl.read_ndjson(io.BytesIO(body), schema=ROW_ID_SCHEMA)
        mine = lines.filter(pl.col(INGEST_ID) == self._ingest_id)[SOURCE_ROW]
        self._seen.add(key)
        if len(mine):
            self.arrival.record(key, mine)

    def _watch(self) -> None:
        try:
            while not self._stop.wait(self._poll_seconds):
                self.poll()
        except Exception as error:  # re-raised by `_stop_watching`, in the caller's thread
            self._error = error

    def _stop_watching(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
