"""An append-only journal of the requests that changed the emulator's state.

moto keeps everything in memory. The gateway appends every successful mutating request here
(a JSON header line, then the raw body) before it answers the client, and a restart replays the
journal into a fresh moto in order, which rebuilds the same buckets, objects, streams and Kinesis
sequence numbers. A process killed in the middle of an append leaves a torn tail, which is cut off
on open: the client of that request never got an answer, so nothing it was told is lost.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO


@dataclass
class Entry:
    """One journaled request, enough to rebuild its WSGI environ."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)


def _read_entries(handle: BinaryIO) -> Iterator[tuple[Entry, int]]:
    """Yield each complete entry and the offset just after it; stop at a torn tail."""
    while True:
        line = handle.readline()
        if not line.endswith(b"\n"):
            return
        try:
            meta = json.loads(line)
        except ValueError:
            return
        body = handle.read(meta["n"])
        if len(body) != meta["n"] or handle.read(1) != b"\n":
            return
        entry = Entry(
            method=meta["m"],
            path=meta["p"],
            query=meta["q"],
            headers=[tuple(h) for h in meta["h"]],
            body=body,
            extra=meta.get("x", {}),
        )
        yield entry, handle.tell()


class Journal:
    """The journal file of one state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: BinaryIO | None = None

    def replay(self) -> Iterator[Entry]:
        """Yield the complete entries in order, then cut any torn tail so appends stay readable."""
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

    def append(self, entry: Entry) -> None:
        """Write one entry; flushed to the OS so it survives the process being killed."""
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
        self._handle.write(json.dumps(meta).encode() + b"\n" + entry.body + b"\n")
        self._handle.flush()

    def sync(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self.sync()
            self._handle.close()
            self._handle = None
