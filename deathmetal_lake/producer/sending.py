"""Sending JSON lines to a Kinesis stream: records, PutRecords calls, retries, errors/.

Consecutive lines are packed into records of at most 1 MiB (partition key included), records into
PutRecords calls of at most 500 records or 5 MiB, and up to `max_in_flight` calls run at once
while the next batch is encoded. Entries that fail inside a successful call are sent again with
backoff; whole-call errors (throttled or failed API calls) are left to the boto3 client's retry
settings. A line too large for any record is written to `errors/{dataset}/producer/{ingest_id}/`.
"""

from __future__ import annotations

import bisect
import logging
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TypedDict

from deathmetal_lake.producer.blocks import LineBatch
from deathmetal_lake.producer.encoding import RowEncoder, encode_json
from deathmetal_lake.producer.errors import DeliveryError
from deathmetal_lake.rows import INGEST_ID, SOURCE_FILE, SOURCE_ROW

_log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 1_048_576
"""Kinesis' limit per record, partition key included."""
MAX_CALL_RECORDS = 500
MAX_CALL_BYTES = 5 * 1_048_576
"""PutRecords' limit per call, partition keys included."""


@dataclass(frozen=True)
class RetryPolicy:
    """How records that fail inside a successful PutRecords call are sent again.

    Each record is sent at most `max_attempts` times. Before each new attempt the producer waits
    a random time between 0 and min(cap, base * 2**n) ("full jitter"). Without the random spread,
    throttled senders would all retry at the same moment.
    """

    max_attempts: int = 10
    base_seconds: float = 0.1
    cap_seconds: float = 5.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        return random.uniform(0, min(self.cap_seconds, self.base_seconds * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class SendOptions:
    """How an ingest is sent.

    At most `max_in_flight` PutRecords calls of at most 5 MiB each run at once, which bounds
    memory; the next batch is encoded meanwhile. More than one call in flight only pays off on a
    stream with many shards, and loses records on a bare moto server, whose Kinesis is not safe
    for concurrent writes. `max_record_bytes` can lower the record size for a consumer with a
    smaller limit.
    """

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_in_flight: int = 1
    max_record_bytes: int = MAX_RECORD_BYTES
    progress: Callable[[Sent], None] | None = None
    """Called with the running totals after each PutRecords call, in the sending thread."""

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if not 0 < self.max_record_bytes <= MAX_RECORD_BYTES:
            raise ValueError(f"max_record_bytes must be in 1..{MAX_RECORD_BYTES}")


class OversizeRow(TypedDict):
    """A row whose JSON line is too large for a Kinesis record, written to S3 at `key` instead.

    A plain dict, so that the report can go into Dagster metadata as JSON.
    """

    source_row: int
    bytes: int
    key: str


@dataclass
class OversizeRows:
    """Writes each line too large for a record to `{errors_prefix}producer/{ingest_id}/`."""

    s3_client: Any
    bucket: str
    errors_prefix: str
    encoder: RowEncoder
    """The encoder of the lines: it names their file and ingest."""
    written: list[OversizeRow] = field(default_factory=list)

    def write(self, row_no: int, line: bytes, limit: int) -> None:
        ingest_id = self.encoder.ingest_id
        key = f"{self.errors_prefix}producer/{ingest_id}/row-{row_no}.json"
        body = {
            "reason": f"the row's JSON line is {len(line):,} bytes; a Kinesis record holds "
            f"at most {limit:,} next to its partition key",
            SOURCE_FILE: self.encoder.source_file,
            SOURCE_ROW: row_no,
            INGEST_ID: ingest_id,
            "bytes": len(line),
            "line": line.decode().removesuffix("\n"),
        }
        self.s3_client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=(encode_json(body) + "\n").encode(),
            ContentType="application/json",
        )
        self.written.append(OversizeRow(source_row=row_no, bytes=len(line), key=key))


@dataclass
class _Record:
    data: bytes
    key: str
    rows: int


@dataclass
class Sent:
    """What delivering one or more calls did; `failed_records` ran out of attempts."""

    rows: int = 0
    records: int = 0
    bytes: int = 0
    calls: int = 0
    resent: int = 0
    failed_records: int = 0
    error: tuple[str, str] | None = None

    def add(self, other: Sent) -> None:
        self.rows += other.rows
        self.records += other.records
        self.bytes += other.bytes
        self.calls += other.calls
        self.resent += other.resent
        self.failed_records += other.failed_records
        self.error = self.error or other.error


class _Sender:
    """Delivers one batch with PutRecords, re-sending only the entries that failed.

    boto3 retries failed calls, but not entries that fail inside a successful call.
    """

    def __init__(self, client: Any, stream_name: str, retry: RetryPolicy):
        self._client = client
        self._stream = stream_name
        self._retry = retry

    def send(self, batch: list[_Record]) -> Sent:
        sent = Sent()
        pending = batch
        for attempt in range(1, self._retry.max_attempts + 1):
            if attempt > 1:
                time.sleep(self._retry.delay(attempt - 1))
                sent.resent += len(pending)
            response = self._client.put_records(
                StreamName=self._stream,
                Records=[{"Data": r.data, "PartitionKey": r.key} for r in pending],
            )
            sent.calls += 1
            failed = []
            for record, result in zip(pending, response["Records"], strict=True):
                if "ErrorCode" in result:
                    failed.append(record)
                    if sent.error is None:
                        sent.error = (result["ErrorCode"], result.get("ErrorMessage", ""))
                else:
                    sent.rows += record.rows
                    sent.records += 1
                    sent.bytes += len(record.data)
            if not failed:
                return sent
            _log.debug(
                "%s: %d of %d records failed on attempt %d, first with %s",
                self._stream,
                len(failed),
                len(pending),
                attempt,
                sent.error,
            )
            pending = failed
        sent.failed_records = len(pending)
        return sent


class _Delivery:
    """Packs JSON lines into records, records into PutRecords calls, and keeps calls in flight.

    A record is filled with whole lines up to its size limit. A call takes records up to 500 or
    5 MiB. At most `max_in_flight` calls run at once while the next batch is being built.
    """

    def __init__(
        self,
        sender: _Sender,
        pool: ThreadPoolExecutor,
        max_in_flight: int,
        ingest_id: str,
        max_record_bytes: int,
        progress: Callable[[Sent], None] | None = None,
    ):
        self._sender = sender
        self._pool = pool
        self._max_in_flight = max_in_flight
        self._ingest_id = ingest_id
        self._max_record_bytes = max_record_bytes
        self._record_no = 0
        self._lines: list[memoryview] = []  # of the record being filled: parts of batches
        self._used = self._record_rows = self._row_no = 0
        self._batch: list[_Record] = []
        self._batch_bytes = 0
        self._in_flight: set[Future[Sent]] = set()
        self.totals = Sent()
        self._progress = progress
        self._next_key()

    @property
    def failed(self) -> bool:
        return self.totals.failed_records > 0

    def run(
        self, batches: Iterator[LineBatch], to_errors: Callable[[int, bytes, int], None]
    ) -> None:
        """Send every line; a line no record can hold goes to `to_errors(row, line, limit)`.

        After a batch runs out of retries nothing more is sent, but the remaining lines are
        still read, so the encoder's row count covers the whole file.
        """
        for batch in batches:
            self._pack(batch, to_errors)
            if self.failed:
                break
        if self._lines and not self.failed:
            self._close_record()
        if self._batch:
            self._submit()
        self._collect(wait(self._in_flight).done)
        if self.failed:
            for _ in batches:
                pass

    def _pack(self, batch: LineBatch, to_errors: Callable[[int, bytes, int], None]) -> None:
        """Add the batch's lines to records, as many at a time as fit (a bisection, no loop)."""
        data, ends = memoryview(batch.data), batch.ends  # slices are copied once, into a record
        line = start = 0  # the next line to place and its offset in `data`
        while line < len(ends):
            fit = bisect.bisect_right(ends, start + self._limit - self._used, line)
            if fit > line:
                end = ends[fit - 1]
                self._lines.append(data[start:end])
                self._used += end - start
                self._record_rows += fit - line
                self._row_no += fit - line
                line, start = fit, end
            elif self._lines:
                self._close_record()
                if self.failed:
                    return
            else:
                end = ends[line]
                self._row_no += 1
                to_errors(self._row_no, bytes(data[start:end]), self._limit)
                line, start = line + 1, end

    def _next_key(self) -> None:
        """One partition key per record, so that MD5 spreads the records over all shards."""
        self._key = f"{self._ingest_id}:{self._record_no}"
        self._limit = self._max_record_bytes - len(self._key.encode())

    def _close_record(self) -> None:
        data = b"".join(self._lines)
        size = len(data) + len(self._key.encode())
        if self._batch and (
            len(self._batch) == MAX_CALL_RECORDS or self._batch_bytes + size > MAX_CALL_BYTES
        ):
            self._submit()
        self._batch.append(_Record(data, self._key, self._record_rows))
        self._batch_bytes += size
        self._record_no += 1
        self._lines, self._used, self._record_rows = [], 0, 0
        self._next_key()

    def _submit(self) -> None:
        while len(self._in_flight) >= self._max_in_flight:
            self._collect(wait(self._in_flight, return_when=FIRST_COMPLETED).done)
        if not self.failed:
            self._in_flight.add(self._pool.submit(self._sender.send, self._batch))
        self._batch, self._batch_bytes = [], 0

    def _collect(self, done: set[Future[Sent]]) -> None:
        for future in done:
            self._in_flight.discard(future)
            self.totals.add(future.result())
            if self._progress is not None:
                self._progress(self.totals)


def send_lines(
    batches: Iterator[LineBatch],
    *,
    kinesis_client: Any,
    stream_name: str,
    ingest_id: str,
    options: SendOptions,
    to_errors: Callable[[int, bytes, int], None],
) -> Sent:
    """Send every line of `batches` to the stream, in records keyed `{ingest_id}:{n}`."""
    sender = _Sender(kinesis_client, stream_name, options.retry)
    with ThreadPoolExecutor(options.max_in_flight) as pool:
        delivery = _Delivery(
            sender,
            pool,
            options.max_in_flight,
            ingest_id,
            options.max_record_bytes,
            options.progress,
        )
        delivery.run(batches, to_errors)
    return delivery.totals


def delivery_error(
    sent: Sent, oversize: OversizeRows, stream_name: str, retry: RetryPolicy
) -> DeliveryError:
    """The error for an ingest whose records ran out of attempts: what did not arrive, and why."""
    encoder = oversize.encoder
    code, message = sent.error or ("", "")
    not_sent = encoder.rows - sent.rows - len(oversize.written)
    return DeliveryError(
        f"{encoder.source_file}: {not_sent:,} of {encoder.rows:,} rows were not delivered to "
        f"Kinesis stream {stream_name}: {sent.failed_records} record(s) still failed after "
        f"{retry.max_attempts} attempt(s) each, and sending stopped there (first error: "
        f"{code}: {message}). Ingest {encoder.ingest_id} is incomplete: run it again with the "
        "same ingest id; rows delivered twice are removed in bronze",
        rows_not_sent=not_sent,
        error_code=code,
        error_message=message,
    )
