"""An append-only journal of the requests that changed the emulator's state.

moto keeps everything in memory. The gateway appends every successful mutating request here
(a JSON header line, then the raw body) before it answers the client, and a restart replays the
journal into a fresh moto in order, which rebuilds the same buckets, objects, streams and Kinesis
sequence numbers. A process killed in the middle of an append leaves a torn tail, which is cut off
on open: the client of that request never got an answer, so nothing it was told is lost.

Entries know where their body lies in the file, so large payloads (Kinesis records, delivered S3
objects) need not stay in memory: they are read back from the journal when asked for. The body of
an entry appended as `lazy` is not even read on replay, only its place is: moto's S3 object reads
it from the journal (`BodyView`) instead of holding a copy.

`rewrite` replaces the file by one holding only some of its entries (what compaction keeps): the
new file is written beside it, flushed to disk, then renamed over it, so a crash at any moment
leaves either the old journal or the new one, whole. Every offset moves: whoever holds one must
be done with it first (`ReadGate`), and a view made before reads nothing after (`generation`).
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

_COPY_CHUNK = 8 * 1024 * 1024


@dataclass
class Entry:
    """One journaled request, enough to rebuild its WSGI environ."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)
    offset: int = -1
    """Where the body starts in the journal file, once journaled."""
    lazy: bool = False
    """Replay leaves the body in the file (`body` is then empty) and reads only its place."""
    size: int = -1
    """The body's length in the journal, once journaled (also for lazy entries)."""
    start: int = -1
    """Where the entry (its header line) starts in the journal file, once read back."""

    @property
    def end(self) -> int:
        """Where the next entry starts, once journaled."""
        return self.offset + self.size + 1

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)


def _read_entries(handle: BinaryIO) -> Iterator[tuple[Entry, int]]:
    """Yield each complete entry and the offset just after it; stop at a torn tail."""
    while True:
        start = handle.tell()
        line = handle.readline()
        if not line.endswith(b"\n"):
            return
        try:
            meta = json.loads(line)
        except ValueError:
            return
        offset = handle.tell()
        lazy = bool(meta.get("l"))
        if lazy:
            handle.seek(meta["n"], os.SEEK_CUR)
            body = b""
        else:
            body = handle.read(meta["n"])
            if len(body) != meta["n"]:
                return
        if handle.read(1) != b"\n":  # also where a lazy body was torn: the file ends before
            return
        entry = Entry(
            method=meta["m"],
            path=meta["p"],
            query=meta["q"],
            headers=[tuple(h) for h in meta["h"]],
            body=body,
            extra=meta.get("x", {}),
            offset=offset,
            lazy=lazy,
            size=meta["n"],
            start=start,
        )
        yield entry, handle.tell()


class Journal:
    """The journal file of one state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rewriting = path.with_name(path.name + ".rewrite")
        """The new file while `rewrite` writes it; a leftover is a crash's and is removed."""
        self._handle: BinaryIO | None = None
        self._reader: int | None = None
        self._reader_lock = threading.Lock()
        self.generation = 0
        """How many times `rewrite` replaced the file: offsets of an earlier one mean nothing."""

    def replay(self) -> Iterator[Entry]:
        """Yield the complete entries in order, then cut any torn tail so appends stay readable."""
        self.rewriting.unlink(missing_ok=True)
        if not self.path.exists():
            return
        valid_end = 0
        with self.path.open("rb") as handle:
            for entry, end in _read_entries(handle):
                valid_end = end
                yield entry
        if valid_end != self.path.stat().st_size:
            with self.path.open("r+b") as handle:
                handle.truncate(valid_end)

    def rewrite(self, kept: Iterable[tuple[int, int, dict[str, Any]]]) -> int:
        """Replace the file by the entries at `kept`: (start, end, extras to add); its new size.

        Call it on a closed journal (no appends, no reads): offsets of the old file mean nothing in
        the new one. Bodies are copied as they are, headers get the extras. If writing fails (a
        full disk) the old file stays as it was and the error is raised.
        """
        self.close()
        try:
            with self.path.open("rb") as source, self.rewriting.open("wb") as target:
                for start, end, extras in kept:
                    source.seek(start)
                    header = source.readline()
                    if extras:
                        meta = json.loads(header)
                        meta["x"] = {**meta.get("x", {}), **extras}
                        header = json.dumps(meta).encode() + b"\n"
                    target.write(header)
                    remaining = end - source.tell()
                    while remaining:
                        chunk = source.read(min(remaining, _COPY_CHUNK))
                        if not chunk:
                            raise OSError(f"{self.path} ends inside the entry at {start}")
                        target.write(chunk)
                        remaining -= len(chunk)
                target.flush()
                os.fsync(target.fileno())
                size = target.tell()
        except BaseException:
            self.rewriting.unlink(missing_ok=True)
            raise
        os.replace(self.rewriting, self.path)
        self.generation += 1
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)
        return size

    def append(self, entry: Entry) -> None:
        """Write one entry and set its `offset`; flushed to the OS so it survives a kill."""
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("ab")
        meta = {
            "m": entry.method,
            "p": entry.path,
            "q": entry.query,
            "h": entry.headers,
            "n": len(entry.body),
        }
        if entry.extra:
            meta["x"] = entry.extra
        if entry.lazy:
            meta["l"] = 1
        header = json.dumps(meta).encode() + b"\n"
        entry.start = self._handle.tell()
        entry.offset = entry.start + len(header)
        entry.size = len(entry.body)
        # Three writes, not one concatenation: bodies are up to megabytes, copying them costs CPU.
        self._handle.write(header)
        self._handle.write(entry.body)
        self._handle.write(b"\n")
        self._handle.flush()

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` of the file, e.g. part of an entry's body; thread-safe."""
        with self._reader_lock:
            if self._reader is None:
                self._reader = os.open(self.path, os.O_RDONLY)
        data = os.pread(self._reader, length, offset)
        if len(data) != length:
            raise OSError(f"{self.path} ends before {offset + length}")
        return data

    def view(self, offset: int, length: int) -> BodyView:
        """A read-only file over `length` bytes at `offset`, e.g. a lazy entry's body."""
        return BodyView(self, offset, length)

    def sync(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self.sync()
            self._handle.close()
            self._handle = None
        if self._reader is not None:
            os.close(self._reader)
            self._reader = None


class BodyView(io.RawIOBase):
    """Part of the journal as a read-only, seekable file: what moto's S3 object keeps its body in.

    moto reads an object's body with seek(0) and read() under the object's own lock; reads go to
    the journal by offset, so the bytes are neither held in memory nor copied to a spill file.
    """

    def __init__(self, journal: Journal, offset: int, length: int) -> None:
        super().__init__()
        self._journal = journal
        self._offset = offset
        self._length = length
        self._position = 0
        self._generation = journal.generation

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._length}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file.")  # what moto's own buffer raises
        if self._generation != self._journal.generation:
            raise OSError(f"a view of {self._journal.path} from before it was compacted")
        remaining = max(0, self._length - self._position)
        count = remaining if size is None or size < 0 else min(size, remaining)
        data = self._journal.read(self._offset + self._position, count) if count else b""
        self._position += count
        return data


class ReadGate:
    """Reads by journal offset made outside the gateway's lock (S3 object GETs), counted.

    A rewrite moves every offset: `closed` waits for the reads under way and holds new ones back
    (they wait, they do not fail) until the state made of the new offsets is in place.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._reading = 0
        self._closed = False

    @contextmanager
    def passing(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._closed)
            self._reading += 1
        try:
            yield
        finally:
            with self._condition:
                self._reading -= 1
                self._condition.notify_all()

    @contextmanager
    def closed(self) -> Iterator[None]:
        with self._condition:
            self._closed = True
            self._condition.wait_for(lambda: self._reading == 0)
        try:
            yield
        finally:
            with self._condition:
                self._closed = False
                self._condition.notify_all()
