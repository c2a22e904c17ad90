"""Byte-level pieces of the encoders: a file cut into blocks of whole records, and JSON lines
held in one buffer per batch.

`plain_records` decides which blocks Polars may encode: those where it provably reads what the
csv module reads. Every check is a few passes of bytes methods, with no Python per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import BinaryIO

BOM = b"\xef\xbb\xbf"
_OPEN, _CLOSE = b"\x00", b"\x01"
_MARK = _OPEN + _CLOSE  # stands for a quoted part in the text outside quotes; refused in the input


@dataclass(frozen=True)
class LineBatch:
    """Consecutive JSON lines, one per data row, held as one buffer to avoid a bytes per row."""

    data: bytes
    ends: Sequence[int]
    """Offset in `data` just past each line, ascending; the last one is len(data)."""

    @classmethod
    def of(cls, lines: Sequence[bytes]) -> LineBatch:
        return cls(b"".join(lines), list(accumulate(map(len, lines))))

    def __len__(self) -> int:
        return len(self.ends)


class RecordBlocks:
    """`source` in blocks of about `size` bytes, a leading UTF-8 BOM dropped.

    Each block but the last ends with a `\\n` that is outside quotes if the quotes before it pair
    up as in RFC 4180, so a plain block is whole records. When no such `\\n` comes within
    `max_size` bytes (a literal `"` in an unquoted field upsets the pairing), the block ends at
    its last `\\n`: the csv module then reads it and sees where records really end, and gives
    back what follows a record end with `push_back`, so that blocks pair quotes right again.
    `source` must return whole blocks from `read` until its end, as `io.BufferedReader` does.
    """

    def __init__(self, source: BinaryIO, size: int, max_size: int):
        self._source = source
        self._size = size
        self._max_size = max_size
        self._pending = bytearray(source.read(size).removeprefix(BOM))
        self._scanned = self._quotes = 0  # bytes of `_pending` holding no cut, their `"` count

    def __iter__(self) -> RecordBlocks:
        return self

    def __next__(self) -> bytes:
        pending = self._pending
        while True:
            cut = _last_record_end(pending, self._scanned, self._quotes)
            if not cut and len(pending) >= self._max_size:
                cut = pending.rfind(b"\n") + 1
            if cut:
                block = bytes(pending[:cut])
                del pending[:cut]
                self._scanned, self._quotes = len(pending), pending.count(b'"')
                return block
            self._scanned, self._quotes = len(pending), pending.count(b'"')
            if not (data := self._source.read(self._size)):
                break
            pending += data
        if not pending:
            raise StopIteration
        block = bytes(pending)
        pending.clear()
        return block

    def push_back(self, data: bytes) -> None:
        """Make `data`, which starts a record, the start of the next block."""
        self._pending[:0] = data
        self._scanned = self._quotes = 0


def _last_record_end(data: bytearray, start: int, quotes_before: int) -> int:
    """Offset past the last `\\n` in `data[start:]` with an even number of `"` before it, or 0.

    `quotes_before` is the number of `"` in `data[:start]`.
    """
    end = len(data)
    quotes = quotes_before + data.count(b'"', start)
    while (newline := data.rfind(b"\n", start, end)) >= 0:
        quotes -= data.count(b'"', newline, end)
        if quotes % 2 == 0:
            return newline + 1
        end = newline
    return 0


def plain_records(block: bytes, width: int) -> int:
    """The number of records in `block` if the csv module and Polars must read it alike, else 0.

    That is when the block is strict RFC 4180: every `"` opens a field, closes one before a `,`
    or line end, or is doubled inside one; records end with `\\n` or `\\r\\n` (the last may have
    none); no lone `\\r` outside quotes, no NUL or \\x01, no leading BOM. `encode_plain` checks that
    each record has `width` fields, which rules out empty lines too. The check is a few passes of
    bytes methods, no Python per row.
    """
    if _OPEN in block or _CLOSE in block or block.startswith(BOM):
        return 0
    outside = block
    if b'"' in block:
        parts = block.split(b'"')
        if len(parts) % 2 == 0:  # ends inside quotes
            return 0
        # The text outside quotes with a mark for each quoted part. A field with doubled quotes
        # ("a""b") is a run of marks, which must start after a `,` or line end and end before one.
        outside = _MARK.join(parts[::2])
        runs = outside.count(_OPEN) - outside.count(_CLOSE + _OPEN)
        opened = outside.count(b"," + _OPEN) + outside.count(b"\n" + _OPEN) + (parts[0] == b"")
        closed = (
            outside.count(_CLOSE + b",")
            + outside.count(_CLOSE + b"\n")
            + outside.count(_CLOSE + b"\r\n")
            + (parts[-1] == b"")
        )
        if not runs == opened == closed:
            return 0
    if b"\r" in outside and outside.count(b"\r") != outside.count(b"\r\n"):
        return 0  # a lone `\r` ends a record for the csv module, not for Polars
    records = outside.count(b"\n") + (not outside.endswith(b"\n"))
    return records if outside.count(b",") == records * (width - 1) else 0
