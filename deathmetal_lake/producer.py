"""The producer: sends one source CSV file to its dataset's Kinesis stream, one JSON line per row.

It runs in two passes over the file. The pre-flight pass reads the whole file without sending
anything and rejects whole-file problems: an empty file, bytes that are not UTF-8, a missing
required column, or an unterminated quote at the end. The second pass turns each data row into a
JSON line carrying the provenance columns of the lake contract, packs consecutive lines into Kinesis
records of at most 1 MiB, and sends them with PutRecords. Blocks of plain CSV are encoded by Polars
(`deathmetal_lake.encoding`), everything else by the csv module; both give the same lines.

Nothing is dropped silently:
- A row with the wrong number of fields, or one the csv module cannot parse, is still sent. It goes
  as `_raw` (its text exactly as in the file, without its line terminator) plus `_parse_error`.
- An empty line between rows is such a row too (`_parse_error: "empty line"`). Empty lines after the
  last row are not rows, so they are skipped.
- A row too large for any record is written to `errors/{dataset}/producer/{ingest_id}/` in S3.
- Records that still fail after the retry budget raise `DeliveryError`.

Whole-call errors (throttled or failed API calls) are left to the boto3 client's retry settings.
"""

from __future__ import annotations

import bisect
import codecs
import csv
import hashlib
import io
import itertools
import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass
from typing import Any, BinaryIO, TypedDict

from deathmetal_lake.datasets import Dataset
from deathmetal_lake.encoding import LineBatch, RecordBlocks, encode_plain, plain_records
from deathmetal_lake.rows import PROVENANCE_COLUMNS

_log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 1_048_576
"""Kinesis' limit per record, partition key included."""
MAX_CALL_RECORDS = 500
MAX_CALL_BYTES = 5 * 1_048_576
"""PutRecords' limit per call, partition keys included."""

_CHUNK_BYTES = 1 << 18
_BLOCK_BYTES = 1 << 20
"""CSV bytes encoded at once: larger blocks cost memory, smaller ones Polars' overhead per call."""
_MAX_BLOCK_BYTES = 16 << 20
_MAX_HEADER_CHARS = 1 << 20
_RESERVED_COLUMNS = frozenset((*PROVENANCE_COLUMNS, "_raw", "_parse_error"))
_encode_str = json.encoder.encode_basestring  # the C escaper behind ensure_ascii=False
_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# The csv module refuses fields over 128 Ki characters, which would make a long review a parse
# error. With this limit such rows parse, and anything over 1 MiB goes to errors/. A field larger
# than the limit still ends up as a parse-error row, so memory stays bounded by it.
csv.field_size_limit(max(csv.field_size_limit(), 64 << 20))


class SourceFileError(ValueError):
    """The file as a whole cannot be ingested.

    Raised before anything is sent, except for a file that changed while it was being sent.
    """


class DeliveryError(RuntimeError):
    """Some rows did not reach the stream. The ingest is incomplete and must be run again."""

    def __init__(self, message: str, *, rows_not_sent: int, error_code: str, error_message: str):
        super().__init__(message)
        self.rows_not_sent = rows_not_sent
        self.error_code = error_code
        self.error_message = error_message


@dataclass(frozen=True)
class SourceInfo:
    """What pre-flight learned about a source file."""

    content_hash: str
    """sha256 of the file's bytes, hex."""
    header: tuple[str, ...]
    """Column names in file order, normalised (BOM stripped, trimmed, lower-cased)."""
    byte_size: int


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


class OversizeRow(TypedDict):
    """A row whose JSON line is too large for a Kinesis record, written to S3 at `key` instead.

    A plain dict, so that the report can go into Dagster metadata as JSON.
    """

    source_row: int
    bytes: int
    key: str


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
    """Data rows in the file, parse-error rows included (header, trailing empty lines excluded)."""
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


def preflight(
    open_source: Callable[[], BinaryIO], *, dataset: Dataset, source_file: str
) -> SourceInfo:
    """Check a whole source file in one streaming pass before any of it is sent.

    It computes the sha256 hash and checks the file is UTF-8 (with or without a BOM). It checks
    that no quoted field is still open at the end, and that the header has every column the
    dataset requires. Extra columns are kept and the column order does not matter. Raises
    `SourceFileError` naming the file, where the problem is, and the reason.
    """
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    size = lines = quotes = 0
    head: list[str] = []  # decoded text up to the end of the header record
    header: tuple[str, ...] | None = None
    bad_utf8: tuple[int, int, int, str] | None = None  # (byte, offset, line, reason)

    with open_source() as source:
        while chunk := source.read(_CHUNK_BYTES):
            digest.update(chunk)
            carried = len(decoder.getstate()[0])
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                at = max(0, exc.start - carried)
                line = lines + chunk.count(b"\n", 0, at) + 1
                bad_utf8 = (exc.object[exc.start], size - carried + exc.start, line, exc.reason)
                break
            if header is None:
                head.append(text)
                # A `\n` outside quotes ends the header. None in the first MiB: `\r` line ends?
                record_ends = _record_ends(chunk, in_quote=quotes % 2 == 1)
                if record_ends or sum(map(len, head)) > _MAX_HEADER_CHARS:
                    header = _check_header("".join(head), dataset, source_file)
                    head.clear()
            size += len(chunk)
            lines += chunk.count(b"\n")
            quotes += chunk.count(b'"')
        if bad_utf8 is None:
            try:
                head.append(decoder.decode(b"", final=True))
            except UnicodeDecodeError as exc:
                offset = size - len(exc.object) + exc.start
                bad_utf8 = (exc.object[exc.start], offset, lines + 1, "the file ends mid-character")

    if bad_utf8:
        byte, offset, line, reason = bad_utf8
        row = _scan_records(open_source, max_lines=line - 1)[0]
        raise SourceFileError(
            f"{source_file}: not UTF-8: byte 0x{byte:02X} at byte offset {offset} (line {line}, "
            f"{_where(row)}): {reason}; save the file as UTF-8"
        )
    if size == 0:
        raise SourceFileError(f"{source_file}: the file is empty (0 bytes); expected a header line")
    if header is None:
        header = _check_header("".join(head), dataset, source_file)
    # An odd number of quotes means a quoted field is still open at the end, unless some quotes
    # are literal ones inside unquoted fields (`12" vinyl`). The csv module decides which.
    if quotes % 2 == 1 and (scan := _scan_records(open_source))[2]:
        row, line, _ = scan
        raise SourceFileError(
            f"{source_file}: unterminated quote: the quoted field in {_where(row)} (from line "
            f"{line}) is never closed, so the rest of the file would be one value"
        )
    return SourceInfo(content_hash=digest.hexdigest(), header=header, byte_size=size)


def _record_ends(data: bytes, in_quote: bool) -> int:
    """`\\n`s outside quotes in `data`, for a file following RFC 4180.

    Every `"` toggles the quote state; a doubled quote toggles it twice. So the text between
    quotes alternates between outside and inside, and this needs no per-byte Python loop.
    """
    return b"".join(data.split(b'"')[1 if in_quote else 0 :: 2]).count(b"\n")


def _scan_records(
    open_source: Callable[[], BinaryIO], max_lines: int | None = None
) -> tuple[int, int, bool]:
    """Parse the file (or its first lines) as the encoder will, to say where a problem is.

    Returns the number of records that ended, counting the header (so also the data row of
    the record after them), the line that record starts on, and whether the input ended inside a
    quoted field. Reading stops at `max_lines`, so bytes that are not UTF-8 after it do not matter.
    """
    with open_source() as source:
        text = io.TextIOWrapper(source, encoding="utf-8-sig", errors="replace", newline="")
        line_no, exhausted = 0, False

        def counted_lines() -> Iterator[str]:
            nonlocal line_no, exhausted
            for line in itertools.islice(text, max_lines):
                line_no += 1
                yield line
            exhausted = True

        reader = csv.reader(counted_lines(), strict=True)
        records, next_line = 0, 1
        try:
            while True:
                try:
                    for _ in reader:
                        records, next_line = records + 1, line_no + 1
                    return records, next_line, False
                except csv.Error:
                    if exhausted:  # the csv module raises at the end only inside quotes
                        return records, next_line, True
                    records, next_line = records + 1, line_no + 1
        finally:
            text.detach()


def _where(data_row: int) -> str:
    return f"data row {data_row}" if data_row else "the header"


def _normalise(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(name.strip().lower() for name in names)


def _check_header(text: str, dataset: Dataset, source_file: str) -> tuple[str, ...]:
    """The normalised header of a file starting with `text`, or `SourceFileError`."""
    try:
        names = next(csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True))
    except StopIteration:
        names = []
    except csv.Error as exc:
        raise SourceFileError(f"{source_file}: header (line 1) is not valid CSV: {exc}") from None
    header = _normalise(names)
    if not any(header):
        raise SourceFileError(f"{source_file}: no header: line 1 is empty")
    problems = []
    if missing := [column for column in dataset.columns if column not in header]:
        problems.append(f"missing required column(s) {', '.join(missing)}")
    if empty := [str(i) for i, name in enumerate(header, 1) if not name]:
        problems.append(f"column(s) {', '.join(empty)} have no name")
    if duplicated := sorted({name for name in header if name and header.count(name) > 1}):
        problems.append(f"duplicate column(s) {', '.join(duplicated)}")
    if reserved := [name for name in header if name in _RESERVED_COLUMNS]:
        problems.append(f"column(s) {', '.join(reserved)} are reserved for the lake")
    if problems:
        raise SourceFileError(
            f"{source_file}: header (line 1): {'; '.join(problems)}; "
            f"expected {', '.join(dataset.columns)} (found {', '.join(header)})"
        )
    return header


class RowEncoder:
    """Turns a CSV byte stream into JSON lines (UTF-8, `\\n`-terminated), one per data row.

    A good row becomes `{column: value as text, ..., _source_file, _source_row, _ingest_id}` with
    the normalised header names as keys. A row that cannot be mapped to the header keeps only the
    provenance columns plus `_raw` and `_parse_error`. The encoder is lazy and reads one file
    once. After iteration, `rows` and `parse_error_rows` hold the counts.
    """

    def __init__(self, header: Sequence[str], *, source_file: str, ingest_id: str):
        self.header = tuple(header)
        self.source_file = source_file
        self.ingest_id = ingest_id
        self.rows = 0
        self.parse_error_rows = 0
        self._header_read = False
        self._record: list[str] = []  # physical lines of the record being parsed, as in the file
        self._empty_lines: list[str] = []  # held back: only those followed by a row are rows
        # One %-template per file: formatting a row is then one C call instead of a dict and dumps.
        fields = "".join(f"{_encode_str(name).replace('%', '%%')}:%s," for name in self.header)
        self._template = (
            f'{{{fields}"_source_file":{_encode_str(source_file).replace("%", "%%")},'
            f'"_source_row":%d,"_ingest_id":{_encode_str(ingest_id).replace("%", "%%")}}}\n'
        )

    def batches(self, source: BinaryIO) -> Iterator[LineBatch]:
        """The JSON lines of `source` in batches; the lines are exactly those of `lines`.

        Blocks of plain CSV go through Polars (`deathmetal_lake.encoding`), at half the CPU.
        Anything else, from the header to where a block ends on a record boundary again, goes
        through the csv module as in `lines`. `source` must return whole blocks from `read`.
        """
        blocks = RecordBlocks(source, _BLOCK_BYTES, _MAX_BLOCK_BYTES)
        width = len(self.header)
        for block in blocks:
            if self._header_read and (records := plain_records(block, width)):
                if self._empty_lines:
                    yield LineBatch.of(self._held_back_empty_lines())
                batch = encode_plain(
                    block,
                    records,
                    self.header,
                    source_file=self.source_file,
                    ingest_id=self.ingest_id,
                    first_row=self.rows + 1,
                )
                if batch is not None:
                    self.rows += records
                    yield batch
                    continue
            yield from _batched(self._parse(self._region(block, blocks)))
        if not self._header_read:  # an empty file
            raise SourceFileError(f"{self.source_file}: the header changed after pre-flight")

    def lines(self, source: BinaryIO) -> Iterator[bytes]:
        """The JSON lines of `source`, every row through the csv module: what `batches` gives."""
        text = io.TextIOWrapper(source, encoding="utf-8-sig", newline="")
        try:
            yield from self._parse(text)
        finally:
            text.detach()

    def _region(self, block: bytes, blocks: RecordBlocks) -> Iterator[str]:
        """The physical lines of `block`, and of the next blocks while a record goes on.

        After the header, or once a record went on into the next block (whose end may then not
        be a record end), the rest of the block from the next record on goes back to `blocks`.
        """
        give_back = not self._header_read
        while True:
            lines = io.StringIO(block.decode(), newline="")
            for line in lines:
                if give_back and self._header_read and not self._record:
                    blocks.push_back((line + lines.read()).encode())
                    return
                yield line
            if not self._record or (block := next(blocks, None)) is None:
                return
            give_back = True

    def _parse(self, physical_lines: Iterable[str]) -> Iterator[bytes]:
        """The JSON lines of the records in `physical_lines`, the first being the header if it
        was not read yet. Rows are numbered on from `rows`."""
        record = self._record

        def tracked() -> Iterator[str]:
            for line in physical_lines:
                record.append(line)
                yield line

        reader = csv.reader(tracked(), strict=True)
        if not self._header_read:
            try:
                found = _normalise(next(reader))
            except (StopIteration, csv.Error):
                found = ()
            if found != self.header:
                raise SourceFileError(f"{self.source_file}: the header changed after pre-flight")
            self._header_read = True
            record.clear()

        template, width, encode = self._template, len(self.header), _encode_str
        while True:
            try:
                for fields in reader:
                    if not fields:
                        self._empty_lines.append(_raw(record))
                    else:
                        if self._empty_lines:
                            yield from self._held_back_empty_lines()
                        if len(fields) == width:
                            self.rows += 1
                            yield (template % (*map(encode, fields), self.rows)).encode()
                        else:
                            reason = f"expected {width} fields, found {len(fields)}"
                            yield self._parse_error_line(_raw(record), reason)
                    record.clear()
                return
            except csv.Error as exc:
                yield from self._held_back_empty_lines()
                yield self._parse_error_line(_raw(record), f"CSV error: {exc}")
                record.clear()

    def _held_back_empty_lines(self) -> list[bytes]:
        lines = [self._parse_error_line(raw, "empty line") for raw in self._empty_lines]
        self._empty_lines.clear()
        return lines

    def _parse_error_line(self, raw: str, reason: str) -> bytes:
        self.rows += 1
        self.parse_error_rows += 1
        line = {
            "_source_file": self.source_file,
            "_source_row": self.rows,
            "_ingest_id": self.ingest_id,
            "_raw": raw,
            "_parse_error": reason,
        }
        return (_encode_json(line) + "\n").encode()


def _batched(lines: Iterator[bytes]) -> Iterator[LineBatch]:
    """`lines` in batches of about `_BLOCK_BYTES`."""
    batch: list[bytes] = []
    size = 0
    for line in lines:
        batch.append(line)
        size += len(line)
        if size >= _BLOCK_BYTES:
            yield LineBatch.of(batch)
            batch, size = [], 0
    if batch:
        yield LineBatch.of(batch)


def _raw(lines: list[str]) -> str:
    """A record's text as in the file, without its final line terminator."""
    text = "".join(lines)
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith(("\n", "\r")) else text


class _HashingReader(io.RawIOBase):
    """Hashes what the sending pass reads, so a file that changed since pre-flight is noticed."""

    def __init__(self, inner: BinaryIO):
        self._inner = inner
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._inner.read(len(buffer))
        buffer[: len(data)] = data
        self.digest.update(data)
        return len(data)


@dataclass
class _Record:
    data: bytes
    key: str
    rows: int


@dataclass
class _Sent:
    """What delivering one or more batches did; `failed_records` ran out of attempts."""

    rows: int = 0
    records: int = 0
    bytes: int = 0
    calls: int = 0
    resent: int = 0
    failed_records: int = 0
    error: tuple[str, str] | None = None

    def add(self, other: _Sent) -> None:
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

    def send(self, batch: list[_Record]) -> _Sent:
        sent = _Sent()
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
        self._in_flight: set[Future[_Sent]] = set()
        self.totals = _Sent()
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

    def _collect(self, done: set[Future[_Sent]]) -> None:
        for future in done:
            self._in_flight.discard(future)
            self.totals.add(future.result())


def ingest(
    open_source: Callable[[], BinaryIO],
    *,
    dataset: Dataset,
    source_file: str,
    ingest_id: str,
    kinesis_client: Any,
    s3_client: Any,
    bucket: str,
    expected_hash: str | None = None,
    retry: RetryPolicy = RetryPolicy(),
    max_in_flight: int = 1,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> IngestReport:
    """Send one source file to `dataset.stream_name`: pre-flight, then encode and send.

    `open_source` is called twice and must return the same bytes both times (for an S3 object,
    pin its VersionId or ETag); a file that changed in between raises `SourceFileError` after
    sending. `expected_hash`, when given, must match the file's sha256 at pre-flight, e.g. the hash
    `ingest_id` was built from. At most `max_in_flight` PutRecords calls of at most 5 MiB each run
    at once, which bounds memory; the next batch is encoded meanwhile. More than one call in flight
    only pays off on a stream with many shards, and loses records on a bare moto server, whose
    Kinesis is not safe for concurrent writes. `max_record_bytes` can lower the record size for a
    consumer with a smaller limit. The clients are boto3 clients made by the caller, whose retry
    configuration covers errors of whole calls.
    """
    started = time.monotonic()
    if not ingest_id or "/" in ingest_id or len(ingest_id) > 200:
        raise ValueError(f"ingest_id must be 1-200 characters without '/': {ingest_id!r}")
    if not 0 < max_record_bytes <= MAX_RECORD_BYTES:
        raise ValueError(f"max_record_bytes must be in 1..{MAX_RECORD_BYTES}")
    info = preflight(open_source, dataset=dataset, source_file=source_file)
    if expected_hash is not None and info.content_hash != expected_hash:
        raise SourceFileError(
            f"{source_file}: content hash is {info.content_hash}, expected {expected_hash}; "
            "the file changed after its ingest id was made"
        )
    encoder = RowEncoder(info.header, source_file=source_file, ingest_id=ingest_id)
    sender = _Sender(kinesis_client, dataset.stream_name, retry)
    oversize: list[OversizeRow] = []

    def send_to_errors(row_no: int, line: bytes, limit: int) -> None:
        key = f"{dataset.errors_prefix}producer/{ingest_id}/row-{row_no}.json"
        body = {
            "reason": f"the row's JSON line is {len(line):,} bytes; a Kinesis record holds "
            f"at most {limit:,} next to its partition key",
            "_source_file": source_file,
            "_source_row": row_no,
            "_ingest_id": ingest_id,
            "bytes": len(line),
            "line": line.decode().removesuffix("\n"),
        }
        s3_client.put_object(
            Bucket=bucket,
            Key=key,
            Body=(_encode_json(body) + "\n").encode(),
            ContentType="application/json",
        )
        oversize.append(OversizeRow(source_row=row_no, bytes=len(line), key=key))

    with open_source() as source, ThreadPoolExecutor(max_in_flight) as pool:
        hashing = _HashingReader(source)
        delivery = _Delivery(sender, pool, max_in_flight, ingest_id, max_record_bytes)
        with closing(encoder.batches(io.BufferedReader(hashing, _CHUNK_BYTES))) as batches:
            delivery.run(batches, send_to_errors)
    totals = delivery.totals
    content_hash = hashing.digest.hexdigest()

    if totals.failed_records:
        code, message = totals.error or ("", "")
        not_sent = encoder.rows - totals.rows - len(oversize)
        raise DeliveryError(
            f"{source_file}: {not_sent:,} of {encoder.rows:,} rows were not delivered to Kinesis "
            f"stream {dataset.stream_name}: {totals.failed_records} record(s) still failed after "
            f"{retry.max_attempts} attempt(s) each, and sending stopped there (first error: "
            f"{code}: {message}). Ingest {ingest_id} is incomplete: run it again with the same "
            "ingest id; rows delivered twice are removed in bronze",
            rows_not_sent=not_sent,
            error_code=code,
            error_message=message,
        )
    if content_hash != info.content_hash:
        raise SourceFileError(
            f"{source_file}: the file changed while it was being ingested (sha256 "
            f"{info.content_hash} at pre-flight, {content_hash} when sent); ingest {ingest_id} "
            "mixes two versions and must be replaced by a new ingest"
        )
    return IngestReport(
        source_file=source_file,
        ingest_id=ingest_id,
        content_hash=content_hash,
        source_bytes=info.byte_size,
        rows=encoder.rows,
        columns=info.header,
        bytes=totals.bytes,
        records=totals.records,
        put_calls=totals.calls,
        resent_records=totals.resent,
        parse_error_rows=encoder.parse_error_rows,
        oversize_rows=tuple(oversize),
        seconds=time.monotonic() - started,
    )
