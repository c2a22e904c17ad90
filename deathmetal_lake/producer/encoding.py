"""CSV to JSON lines: one line per data row, by two encoders that give the same bytes.

A good row becomes `{column: value as text, ..., _source_file, _source_row, _ingest_id}` with the
normalised header names as keys. A row that cannot be mapped to the header keeps only the
provenance fields plus `_raw` (its text as in the file) and `_parse_error`. A blank line (nothing
before its line end) is not a record, as for `csv.DictReader`, pandas and R: it is counted in
`blank_lines`, not sent, and rows are numbered without it. A line of spaces is a record (one
field that is not the header's width), so it is sent as a parse-error row, not skipped.

The csv module and a JSON template cost about 3 µs of Python per row. Polars parses a block of
rows and encodes them as JSON in native code, with no Python per row. It is used only for blocks
where it provably gives what the csv module gives (`blocks.plain_records`); every other block goes
through the csv module, so the JSON lines, row numbers and parse errors stay the same.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO

import polars as pl

from deathmetal_lake.producer import csv_reader
from deathmetal_lake.producer.blocks import LineBatch, RecordBlocks, plain_records
from deathmetal_lake.producer.errors import SourceFileError
from deathmetal_lake.producer.preflight import normalise
from deathmetal_lake.rows import INGEST_ID, PARSE_ERROR, RAW, SOURCE_FILE, SOURCE_ROW

_BLOCK_BYTES = 1 << 20
"""CSV bytes encoded at once: larger blocks cost memory, smaller ones Polars' overhead per call."""
_MAX_BLOCK_BYTES = 16 << 20
_encode_str = json.encoder.encode_basestring  # the C escaper behind ensure_ascii=False
encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
"""Compact UTF-8 JSON, as every line the producer writes."""


class RowEncoder:
    """Turns a CSV byte stream into JSON lines (UTF-8, `\\n`-terminated), one per data row.

    The encoder is lazy and reads one file once; it checks the header is the one pre-flight
    read. After iteration, `rows`, `parse_error_rows` and `blank_lines` hold the counts.
    """

    def __init__(self, header: Sequence[str], *, source_file: str, ingest_id: str):
        self.header = tuple(header)
        self.source_file = source_file
        self.ingest_id = ingest_id
        self.rows = 0
        self.parse_error_rows = 0
        self.blank_lines = 0
        self._header_read = False
        self._record: list[str] = []  # physical lines of the record being parsed, as in the file
        self._template = _line_template(self.header, source_file, ingest_id)

    def batches(self, source: BinaryIO) -> Iterator[LineBatch]:
        """The JSON lines of `source` in batches; the lines are exactly those of `lines`.

        Blocks of plain CSV go through Polars (`encode_plain`), at half the CPU.
        Anything else, from the header to where a block ends on a record boundary again, goes
        through the csv module as in `lines`. `source` must return whole blocks from `read`.
        """
        blocks = RecordBlocks(source, _BLOCK_BYTES, _MAX_BLOCK_BYTES)
        width = len(self.header)
        for block in blocks:
            if self._header_read and (records := plain_records(block, width)):
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

        reader = csv_reader.reader(tracked())
        if not self._header_read:
            try:
                found = normalise(next(reader))
            except (StopIteration, csv_reader.Error):
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
                        self.blank_lines += 1
                    elif len(fields) == width:
                        self.rows += 1
                        yield (template % (*map(encode, fields), self.rows)).encode()
                    else:
                        reason = f"expected {width} fields, found {len(fields)}"
                        yield self._parse_error_line(_raw(record), reason)
                    record.clear()
                return
            except csv_reader.Error as exc:
                yield self._parse_error_line(_raw(record), f"CSV error: {exc}")
                record.clear()

    def _parse_error_line(self, raw: str, reason: str) -> bytes:
        self.rows += 1
        self.parse_error_rows += 1
        line = {
            SOURCE_FILE: self.source_file,
            SOURCE_ROW: self.rows,
            INGEST_ID: self.ingest_id,
            RAW: raw,
            PARSE_ERROR: reason,
        }
        return (encode_json(line) + "\n").encode()


def _line_template(header: Sequence[str], source_file: str, ingest_id: str) -> str:
    """A %-template of a good row's line: formatting a row is one C call, not a dict and dumps."""

    def literal(text: str) -> str:
        return _encode_str(text).replace("%", "%%")

    fields = "".join(f"{literal(name)}:%s," for name in header)
    return (
        f"{{{fields}{literal(SOURCE_FILE)}:{literal(source_file)},{literal(SOURCE_ROW)}:%d,"
        f"{literal(INGEST_ID)}:{literal(ingest_id)}}}\n"
    )


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


def encode_plain(
    block: bytes,
    records: int,
    header: Sequence[str],
    *,
    source_file: str,
    ingest_id: str,
    first_row: int,
) -> LineBatch | None:
    """The JSON lines of a block that `plain_records` accepted, or None if Polars reads it
    otherwise (bytes that are not UTF-8 in a file that changed since pre-flight).

    Polars escapes strings exactly as `json.encoder.encode_basestring` (ensure_ascii=False), so
    the lines are byte for byte those of the csv module path.
    """
    try:
        frame = pl.read_csv(
            block,
            has_header=False,
            new_columns=list(header),
            infer_schema=False,
            empty_string_is_null=False,
            n_threads=1,
        )
    except pl.exceptions.PolarsError:
        return None
    # Polars refuses a record longer than the first. So with the first as wide as the header, no
    # nulls (short records) and `records` * (width - 1) commas, every record has `width` fields.
    if frame.shape != (records, len(header)) or any(frame.null_count().row(0)):
        return None
    lines = frame.select(
        pl.struct(
            pl.all(),
            **{
                SOURCE_FILE: pl.lit(source_file),
                SOURCE_ROW: pl.int_range(first_row, first_row + records, dtype=pl.Int64),
                INGEST_ID: pl.lit(ingest_id),
            },
        )
        .struct.json_encode()
        .add("\n")
    ).to_series()
    return LineBatch(
        lines.str.join("").cast(pl.Binary).item(), lines.str.len_bytes().cum_sum().to_list()
    )
