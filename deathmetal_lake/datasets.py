"""The registry of the lake's datasets: one entry per source CSV.

Everything that repeats per dataset (assets, AWS resource names, S3 prefixes, Terraform) is built
from this registry, so adding a dataset is one entry here and the infrastructure it names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class BufferingHints:
    """Firehose buffering hints: an object is flushed when either is reached."""

    size_mb: int = 5
    interval_seconds: int = 60


@dataclass(frozen=True)
class Dataset:
    """One source CSV and the streaming resources that carry it into the lake."""

    name: str
    columns: tuple[str, ...]
    shard_count: int = 1
    buffering: BufferingHints = BufferingHints()

    @property
    def stream_name(self) -> str:
        return f"{self.name}-stream"

    @property
    def firehose_name(self) -> str:
        return f"{self.name}-firehose"

    @property
    def landing_prefix(self) -> str:
        """Firehose's S3 prefix; the trailing slash matters (AWS concatenates the time path)."""
        return f"landing/{self.name}/"

    @property
    def errors_prefix(self) -> str:
        """Where rows that cannot be delivered go: Firehose's error output and the producer's."""
        return f"errors/{self.name}/"

    @property
    def firehose_error_output_prefix(self) -> str:
        """Firehose's error output prefix, in the expression form AWS accepts."""
        return f"{self.errors_prefix}!{{firehose:error-output-type}}/!{{timestamp:yyyy/MM/dd}}/"

    def matches_file(self, file_name: str) -> bool:
        """`{name}.csv` or `{name}_<suffix>.csv` (an increment such as `reviews_2026-11.csv`).

        The suffix is letters, digits, `_`, `.` and `-` (no `..`): the file's stem becomes part of
        its partition key and S3 paths, so it must be safe in both as it is.
        """
        pattern = rf"{re.escape(self.name)}(_[A-Za-z0-9_.-]+)?\.csv"
        return re.fullmatch(pattern, file_name) is not None and ".." not in file_name


DATASETS: tuple[Dataset, ...] = (
    Dataset("albums", ("id", "band", "title", "year")),
    Dataset("bands", ("id", "name", "country", "status", "formed_in", "genre", "theme", "active")),
    Dataset("reviews", ("id", "album", "title", "score", "content"), shard_count=2),
)

DATASETS_BY_NAME: dict[str, Dataset] = {d.name: d for d in DATASETS}


def dataset_for_file(file_name: str) -> Dataset | None:
    """The dataset a source file belongs to, or None for a file name the lake does not know."""
    return next((d for d in DATASETS if d.matches_file(file_name)), None)
