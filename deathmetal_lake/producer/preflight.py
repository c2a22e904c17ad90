"""Pre-flight: one streaming pass over a source file before any of it is sent.

The pass computes the file's sha256, which names the version (the ingest key) and which the
sending pass checks again, and it refuses whole-file problems: an empty file, bytes that are not
UTF-8, a header without the dataset's required columns, an unterminated quote at the end. A
refusal names the file, where the problem is, and the reason. A refused file is still hashed to
its end, so that `sources.locate` can tell it is the version a key names before saying what is
wrong with it.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from deathmetal_lake.datasets import Dataset
from deathmetal_lake.producer import csv_reader
from deathmetal_lake.producer.errors import SourceFileError
from deathmetal_lake.rows import RESERVED_FIELDS

CHUNK_BYTES = 1 << 18
_MAX_HEADER_CHARS = 1 << 20


@dataclass(frozen=True)
class SourceInfo:
    """What pre-flight learned about a source file."""

    content_hash: str
    """sha256 of the file's bytes, hex."""
    byte_size: int
    header: tuple[str, ...]
    """Column names in file order, normalised (BOM stripped, trimmed, lower-cased)."""
    refusal: str | None = None
    """Why the file cannot be ingested (file, where, reason), or None."""

    def accepted(self) -> SourceInfo:
        """This info if the file can be ingested, else `SourceFileError` with the refusal."""
        if self.refusal is not None:
            raise SourceFileError(self.refusal)
        return self


def check_source(
    open_source: Callable[[], BinaryIO], *, dataset: Dataset, source_file: str
) -> SourceInfo:
    """Read the whole file once: its sha256, size and header, or why it is refused.

    The file is UTF-8 (with or without a BOM), no quoted field is still open at its end, and
    its header has every column the dataset requires; extra columns are kept and the column
    order does not matter. A problem does not raise here: `accepted()` does. The file is read
    again only if it has bytes that are not UTF-8 or an odd number of quotes: the csv module then
    says in which row they are, and whether a quote is still open.
    """
    scan = _Scan(dataset, source_file)
    with open_source() as source:
        while chunk := source.read(CHUNK_BYTES):
            scan.feed(chunk)
    scan.finish()
    return SourceInfo(
        content_hash=scan.digest.hexdigest(),
        byte_size=scan.size,
        header=scan.header,
        refusal=scan.refusal(open_source),
    )


class _Scan:
    """The state of one pre-flight pass. After the first problem it only hashes."""

    def __init__(self, dataset: Dataset, source_file: str):
        self._dataset = dataset
        self._source_file = source_file
        self.digest = hashlib.sha256()
        self.size = 0
        self.header: tuple[str, ...] = ()
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._lines = self._quotes = 0
        self._head: list[str] | None = []  # decoded text up to the end of the header record
        self._bad_utf8: tuple[int, int, int, str] | None = None  # (byte, offset, line, reason)
        self._problem: str | None = None

    @property
    def _checking(self) -> bool:
        return self._bad_utf8 is None and self._problem is None

    def feed(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        if self._checking:
            self._check(chunk)
        self.size += len(chunk)

    def _check(self, chunk: bytes) -> None:
        carried = len(self._decoder.getstate()[0])
        try:
            text = self._decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            at = max(0, exc.start - carried)
            line = self._lines + chunk.count(b"\n", 0, at) + 1
            offset = self.size - carried + exc.start
            self._bad_utf8 = (exc.object[exc.start], offset, line, exc.reason)
            return
        if self._head is not None:
            self._head.append(text)
            # A `\n` outside quotes ends the header. None in the first MiB: `\r` line ends?
            if (
                _record_ends(chunk, in_quote=self._quotes % 2 == 1)
                or sum(map(len, self._head)) > _MAX_HEADER_CHARS
            ):
                self._read_header(self._head)
        self._lines += chunk.count(b"\n")
        self._quotes += chunk.count(b'"')

    def _read_header(self, head: list[str]) -> None:
        self.header, self._problem = _check_header("".join(head), self._dataset, self._source_file)
        self._head = None

    def finish(self) -> None:
        """The checks that need the end of the file."""
        if not self._checking:
            return
        try:
            tail = self._decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            offset = self.size - len(exc.object) + exc.start
            reason = "the file ends mid-character"
            self._bad_utf8 = (exc.object[exc.start], offset, self._lines + 1, reason)
            return
        if self.size == 0:
            self._problem = (
                f"{self._source_file}: the file is empty (0 bytes); expected a header line"
            )
        elif self._head is not None:
            self._head.append(tail)
            self._read_header(self._head)

    def refusal(self, open_source: Callable[[], BinaryIO]) -> str | None:
        """The first problem found, worded with the row it is in, or None."""
        if self._bad_utf8:
            byte, offset, line, reason = self._bad_utf8
            row = _scan_records(open_source, max_lines=line - 1)[0]
            return (
                f"{self._source_file}: not UTF-8: byte 0x{byte:02X} at byte offset {offset} "
                f"(line {line}, {_where(row)}): {reason}; save the file as UTF-8"
            )
        if self._problem:
            return self._problem
        # An odd number of quotes means a quoted field is still open at the end, unless some
        # quotes are literal ones inside unquoted fields (`12" vinyl`). The csv module decides.
        if self._quotes % 2 == 1 and (scan := _scan_records(open_source))[2]:
            row, line, _ = scan
            return (
                f"{self._source_file}: unterminated quote: the quoted field in {_where(row)} "
                f"(from line {line}) is never closed, so the rest of the file would be one value"
            )
        return None


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

    Returns the number of records that ended, counting the header and not blank lines (so also
    the data row of the record after them, as `_source_row` numbers it), the line that record
    starts on, and whether the input ended inside a quoted field. Reading stops at `max_lines`,
    so bytes that are not UTF-8 after it do not matter.
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

        reader = csv_reader.reader(counted_lines())
        records, next_line = 0, 1
        try:
            while True:
                try:
                    for fields in reader:
                        records += bool(fields)  # a blank line is not a record
                        next_line = line_no + 1
                    return records, next_line, False
                except csv_reader.Error:
                    if exhausted:  # the csv module raises at the end only inside quotes
                        return records, next_line, True
                    records, next_line = records + 1, line_no + 1
        finally:
            text.detach()


def _where(data_row: int) -> str:
    return f"data row {data_row}" if data_row else "the header"


def normalise(names: Sequence[str]) -> tuple[str, ...]:
    """Header names as the lake uses them: trimmed and lower-cased."""
    return tuple(name.strip().lower() for name in names)


def _check_header(
    text: str, dataset: Dataset, source_file: str
) -> tuple[tuple[str, ...], str | None]:
    """The normalised header of a file starting with `text`, and what is wrong with it."""
    try:
        names = next(csv_reader.reader(io.StringIO(text.removeprefix("\ufeff"), newline="")))
    except StopIteration:
        names = []
    except csv_reader.Error as exc:
        return (), f"{source_file}: header (line 1) is not valid CSV: {exc}"
    header = normalise(names)
    if not any(header):
        return (), f"{source_file}: no header: line 1 is empty"
    problems = []
    if missing := [column for column in dataset.columns if column not in header]:
        problems.append(f"missing required column(s) {', '.join(missing)}")
    if empty := [str(i) for i, name in enumerate(header, 1) if not name]:
        problems.append(f"column(s) {', '.join(empty)} have no name")
    if duplicated := sorted({name for name in header if name and header.count(name) > 1}):
        problems.append(f"duplicate column(s) {', '.join(duplicated)}")
    if reserved := [name for name in header if name in RESERVED_FIELDS]:
        problems.append(f"column(s) {', '.join(reserved)} are reserved for the lake")
    if problems:
        return (), (
            f"{source_file}: header (line 1): {'; '.join(problems)}; "
            f"expected {', '.join(dataset.columns)} (found {', '.join(header)})"
        )
    return header, None


class HashingReader(io.RawIOBase):
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
