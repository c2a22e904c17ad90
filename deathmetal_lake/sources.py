"""Source files: CSVs dropped in `LAKE_CSV_DIR` or uploaded to `raw/` in the bucket.

Both sensors and `make run` discover files here, and a landing run finds its file again from its
partition key, whichever of the two places it came from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar

from deathmetal_lake.datasets import Dataset, dataset_for_file
from deathmetal_lake.rows import IngestKey

RAW_PREFIX = "raw/"
_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class SourceFile:
    """One source file as found; `fingerprint` changes whenever its content may have."""

    name: str
    location: str
    fingerprint: str
    open: Callable[[], BinaryIO]
    # Epoch seconds of the last write, for stores where a file grows while written (a local
    # folder); None where an object appears whole (S3 lists an upload once it is complete).
    modified_at: float | None = None

    @property
    def dataset(self) -> Dataset | None:
        return dataset_for_file(self.name)


def local_sources(csv_dir: Path) -> list[SourceFile]:
    """Every `*.csv` in the folder (known or not; the caller reports unknown names)."""
    if not csv_dir.is_dir():
        return []
    found = []
    for path in sorted(csv_dir.glob("*.csv")):
        stat = path.stat()
        found.append(
            SourceFile(
                name=path.name,
                location=str(path.resolve()),
                fingerprint=f"{stat.st_size}:{stat.st_mtime_ns}",
                open=lambda path=path: path.open("rb"),
                modified_at=stat.st_mtime,
            )
        )
    return found


def s3_sources(s3_client: Any, bucket: str) -> list[SourceFile]:
    """Every `raw/*.csv` object (not in sub-folders), listed page by page."""
    found = []
    for page in s3_client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=RAW_PREFIX
    ):
        for item in page.get("Contents", []):
            name = item["Key"][len(RAW_PREFIX) :]
            if "/" in name or not name.endswith(".csv"):
                continue
            found.append(
                SourceFile(
                    name=name,
                    location=f"s3://{bucket}/{item['Key']}",
                    fingerprint=f"{item['Size']}:{item['ETag']}",
                    open=lambda key=item["Key"]: s3_client.get_object(Bucket=bucket, Key=key)[
                        "Body"
                    ],
                )
            )
    return found


def content_hash(source: SourceFile) -> str:
    """sha256 of the file's bytes, read in chunks (a 1.5 GB file is never held whole)."""
    digest = hashlib.sha256()
    with source.open() as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class KnownHashes:
    """Content hashes of files by location, each valid while the file keeps its fingerprint.

    `make run` plans every file in the folder each time it starts; remembering what it hashed
    (in the Dagster instance, `batch.py`) keeps it from reading every unchanged file again (1.5 GB
    at scale 100), as the sensor's cursor does. The fingerprint is the same one the sensor trusts.
    """

    by_location: dict[str, tuple[str, str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str | None) -> KnownHashes:
        loaded = json.loads(raw) if raw else {}
        return cls({location: (fp, digest) for location, (fp, digest) in loaded.items()})

    def dump(self, sources: list[SourceFile]) -> str:
        """What to remember: the files still there."""
        present = {source.location for source in sources}
        kept = {loc: list(known) for loc, known in self.by_location.items() if loc in present}
        return json.dumps(kept, sort_keys=True)

    def content_hash(self, source: SourceFile) -> str:
        known = self.by_location.get(source.location)
        if known is not None and known[0] == source.fingerprint:
            return known[1]
        digest = content_hash(source)
        self.by_location[source.location] = (source.fingerprint, digest)
        return digest


def ingest_key(file_name: str, sha256_hex: str) -> str:
    """The partition key and `_ingest_id` of a file version, e.g. `reviews_2026-11-3fa9c2d1e0b4`."""
    return str(IngestKey.of(file_name, sha256_hex))


class SourceNotFoundError(LookupError):
    """No source file has the content a partition key names."""


class Hashed(Protocol):
    """What reading a candidate gives: at least its sha256."""

    @property
    def content_hash(self) -> str: ...


H = TypeVar("H", bound=Hashed)


def locate(
    partition_key: str, candidates: list[SourceFile], read: Callable[[SourceFile], H]
) -> tuple[SourceFile, H]:
    """The candidate whose name and content match the key (local files first), and what `read`
    gave for it.

    `read` reads a candidate whole and hashes it on the way, e.g. the producer's pre-flight
    (`producer.check_source`), so that finding the file costs no read of its own.
    """
    stem = IngestKey.parse(partition_key).stem
    named = [c for c in candidates if Path(c.name).stem == stem]
    for candidate in named:
        found = read(candidate)
        if ingest_key(candidate.name, found.content_hash) == partition_key:
            return candidate, found
    places = ", ".join(c.location for c in named) or "nowhere"
    raise SourceNotFoundError(
        f"no source file has the content of ingest {partition_key}: `{stem}.csv` was found at "
        f"{places}, with other content. The file changed after this version was registered; "
        "its new version gets a partition of its own when a sensor or `make run` sees it."
    )
