"""The producer: sends one source CSV file to its dataset's Kinesis stream, one JSON line per row.

An ingest reads the file twice. The pre-flight pass (`preflight`) hashes the whole file and
refuses whole-file problems before anything is sent; `sources.locate` can run it to find the
file a key names, so that its hash costs no read of its own. The sending pass encodes each row as
a JSON line with the lake's provenance (`encoding`) and sends the lines (`sending`), hashing as
it reads: a file that changed since pre-flight fails the ingest.

Nothing is dropped silently:
- A row with the wrong number of fields, or one the csv module cannot parse, is still sent. It goes
  as `_raw` (its text exactly as in the file, without its line terminator) plus `_parse_error`.
- A blank line holds no record: it is counted (`blank_lines`), and rows are numbered without it.
- A row too large for any record is written to `errors/{dataset}/producer/{ingest_id}/` in S3.
- Records that still fail after the retry budget raise `DeliveryError`.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from typing import Any, BinaryIO

from deathmetal_lake.datasets import Dataset
from deathmetal_lake.producer.encoding import RowEncoder
from deathmetal_lake.producer.errors import DeliveryError, SourceFileError
from deathmetal_lake.producer.preflight import CHUNK_BYTES, HashingReader, SourceInfo, check_source
from deathmetal_lake.producer.sending import (
    MAX_CALL_BYTES,
    MAX_CALL_RECORDS,
    MAX_RECORD_BYTES,
    OversizeRow,
    OversizeRows,
    RetryPolicy,
    SendOptions,
    delivery_error,
    send_lines,
)

__all__ = [
    "MAX_CALL_BYTES",
    "MAX_CALL_RECORDS",
    "MAX_RECORD_BYTES",
    "DeliveryError",
    "Destination",
    "IngestReport",
    "OversizeRow",
    "RetryPolicy",
    "SendOptions",
    "Shipment",
    "SourceFileError",
    "SourceInfo",
    "check_source",
    "ingest",
]


_DEFAULT_OPTIONS = SendOptions()


@dataclass(frozen=True)
class Shipment:
    """What one ingest sends: one version of one source file, under its ingest id.

    `open` is called once per pass and must return the same bytes each time (for an S3 object,
    pin its VersionId or ETag). `expected_hash`, when given, must be the file's sha256 at
    pre-flight, e.g. the hash `ingest_id` was built from.
    """

    open: Callable[[], BinaryIO]
    source_file: str
    ingest_id: str
    dataset: Dataset
    expected_hash: str | None = None

    def __post_init__(self) -> None:
        if not self.ingest_id or "/" in self.ingest_id or len(self.ingest_id) > 200:
            raise ValueError(f"ingest_id must be 1-200 characters without '/': {self.ingest_id!r}")


@dataclass(frozen=True)
class Destination:
    """Where it goes: boto3 clients made by the caller, whose retry configuration covers errors
    of whole calls, and the lake's bucket (for rows too large for Kinesis)."""

    kinesis_client: Any
    s3_client: Any
    bucket: str


@dataclass(frozen=True)
class IngestReport:
    """What one ingest did. The lake's invariant: rows = rows_sent + len(oversize_rows)."""

    source_file: str
    ingest_id: str
    content_hash: str
    source_bytes: int
    columns: tuple[str, ...]
    """The file's normalised header, in file order."""
    rows: int
    """Data rows (records) in the file, parse-error rows included; header and blank lines are not
    rows. `_source_row` numbers them 1..rows."""
    blank_lines: int
    """Blank lines in the file, wherever they are: skipped, not sent."""
    bytes: int
    """JSON bytes sent to Kinesis (record data, partition keys excluded)."""
    records: int
    put_calls: int
    resent_records: int
    parse_error_rows: int
    oversize_rows: tuple[OversizeRow, ...]
    seconds: float

    @property
    def rows_sent(self) -> int:
        return self.rows - len(self.oversize_rows)


def ingest(
    shipment: Shipment,
    destination: Destination,
    options: SendOptions = _DEFAULT_OPTIONS,
    *,
    checked: SourceInfo | None = None,
) -> IngestReport:
    """Send one source file to `shipment.dataset.stream_name`: pre-flight, then encode and send.

    `checked` is a pre-flight already run on this file (by `sources.locate`); without it the
    ingest runs its own, so the file is read twice either way. A file that changed after
    pre-flight raises `SourceFileError` after sending.
    """
    started = time.monotonic()
    info = (checked or _preflight(shipment)).accepted()
    _check_expected_hash(shipment, info)
    encoder = RowEncoder(
        info.header, source_file=shipment.source_file, ingest_id=shipment.ingest_id
    )
    oversize = OversizeRows(
        destination.s3_client, destination.bucket, shipment.dataset.errors_prefix, encoder
    )
    with shipment.open() as source:
        hashing = HashingReader(source)
        with closing(encoder.batches(io.BufferedReader(hashing, CHUNK_BYTES))) as batches:
            sent = send_lines(
                batches,
                kinesis_client=destination.kinesis_client,
                stream_name=shipment.dataset.stream_name,
                ingest_id=shipment.ingest_id,
                options=options,
                to_errors=oversize.write,
            )
    if sent.failed_records:
        raise delivery_error(sent, oversize, shipment.dataset.stream_name, options.retry)
    _check_unchanged(shipment, info, hashing.digest.hexdigest())
    return IngestReport(
        source_file=shipment.source_file,
        ingest_id=shipment.ingest_id,
        content_hash=info.content_hash,
        source_bytes=info.byte_size,
        columns=info.header,
        rows=encoder.rows,
        blank_lines=encoder.blank_lines,
        parse_error_rows=encoder.parse_error_rows,
        oversize_rows=tuple(oversize.written),
        bytes=sent.bytes,
        records=sent.records,
        put_calls=sent.calls,
        resent_records=sent.resent,
        seconds=time.monotonic() - started,
    )


def _preflight(shipment: Shipment) -> SourceInfo:
    return check_source(shipment.open, dataset=shipment.dataset, source_file=shipment.source_file)


def _check_expected_hash(shipment: Shipment, info: SourceInfo) -> None:
    if shipment.expected_hash is not None and info.content_hash != shipment.expected_hash:
        raise SourceFileError(
            f"{shipment.source_file}: content hash is {info.content_hash}, expected "
            f"{shipment.expected_hash}; the file changed after its ingest id was made"
        )


def _check_unchanged(shipment: Shipment, info: SourceInfo, sent_hash: str) -> None:
    if sent_hash != info.content_hash:
        raise SourceFileError(
            f"{shipment.source_file}: the file changed while it was being ingested (sha256 "
            f"{info.content_hash} at pre-flight, {sent_hash} when sent); ingest "
            f"{shipment.ingest_id} mixes two versions and must be replaced by a new ingest"
        )
