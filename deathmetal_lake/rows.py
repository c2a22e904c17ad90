"""The row contract every layer shares: provenance, the landing line's fields, the ingest key.

A landing line is one JSON object per source row: the source columns as text plus the provenance
columns; a row the producer could not parse carries `_raw` (its text as in the file) and
`_parse_error` instead of source columns. Bronze keeps exactly those fields as columns. The
ingest key names one version of one source file and doubles as the rows' `_ingest_id`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

import polars as pl

SOURCE_FILE = "_source_file"
SOURCE_ROW = "_source_row"
INGEST_ID = "_ingest_id"
PROVENANCE_COLUMNS = (SOURCE_FILE, SOURCE_ROW, INGEST_ID)
PARSE_ERROR = "_parse_error"
RAW = "_raw"
# Fields of a landing line that are not source columns; a source column may not use these names.
RESERVED_FIELDS = frozenset((*PROVENANCE_COLUMNS, PARSE_ERROR, RAW))

PROVENANCE_SCHEMA = pl.Schema({SOURCE_FILE: pl.String, SOURCE_ROW: pl.Int64, INGEST_ID: pl.String})
# What a landing line's provenance looks like to a reader that needs only "which row of which
# ingest" (delivery watching, reconciliation).
ROW_ID_SCHEMA = pl.Schema({INGEST_ID: pl.String, SOURCE_ROW: pl.Int64})

HASH_LENGTH = 12


def landing_schema(source_columns: tuple[str, ...] | list[str]) -> pl.Schema:
    """Every field a landing line of these source columns may carry, all text but the row number."""
    return pl.Schema(
        {
            **dict.fromkeys(source_columns, pl.String),
            **PROVENANCE_SCHEMA,
            PARSE_ERROR: pl.String,
            RAW: pl.String,
        }
    )


@dataclass(frozen=True, order=True)
class IngestKey:
    """One version of one source file: `{file stem}-{first 12 hex of its sha256}`.

    The same content never makes a second key, a changed file makes a new one. `str(key)` is the
    partition key and the rows' `_ingest_id`.
    """

    stem: str
    digest: str

    @classmethod
    def of(cls, file_name: str, sha256_hex: str) -> IngestKey:
        return cls(PurePath(file_name).stem, sha256_hex[:HASH_LENGTH])

    @classmethod
    def parse(cls, key: str) -> IngestKey:
        stem, sep, digest = key.rpartition("-")
        if not sep or not stem or not digest:
            raise ValueError(f"{key!r} is not an ingest key (`<file stem>-<content hash>`)")
        return cls(stem, digest)

    @property
    def source_file(self) -> str:
        """The file name the ingest came from (every source file is a `.csv`)."""
        return f"{self.stem}.csv"

    def __str__(self) -> str:
        return f"{self.stem}-{self.digest}"
