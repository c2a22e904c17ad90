"""Silver upserts across ingests: which staged rows win their id, and the parts that changed.

A silver base table is a folder of Parquet parts, one per *current* ingest (the latest ingest of
each source file), holding that ingest's rows that pass every rule and win their id; the
quarantine has the matching part with the rest. The winner of an id is its valid row of the
latest current ingest, then the later `_source_row`. Deciding that reads only each staged part's
key and provenance columns (a group-by over the ids), so a refresh costs the parts it rewrites:
the new ingest's, and those of ingests whose rejected rows changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import polars as pl

from deathmetal_lake.rows import INGEST_ID, SOURCE_ROW
from deathmetal_lake.rules import RULES, RejectReason
from deathmetal_lake.transforms.silver import (
    CHECK_REASON_COLUMN,
    REJECT_REASON_COLUMN,
    bronze_schema,
    stage,
)

# A row's place in upsert order, unique per row: ingest position * 2**32 + `_source_row`, so
# "the latest ingest, then the later row" is a plain max.
_ROW_SPAN = 2**32
_PACKED = "__row"
_WINNER = "__winning_row"
_POSITION = "__position"
REJECTION_SCHEMA = pl.Schema(
    {INGEST_ID: pl.String, SOURCE_ROW: pl.Int64, REJECT_REASON_COLUMN: pl.String}
)


def current_ingests(staged_order: Sequence[str], source_file: Callable[[str], str]) -> list[str]:
    """The latest ingest of each source file, in upsert order.

    `staged_order` lists ingests by when they were last staged, oldest first: a file's version
    dropped again (v1 -> v2 -> v1) is staged again and so is its latest.
    """
    latest = {source_file(ingest): ingest for ingest in staged_order}
    current = set(latest.values())
    return [ingest for ingest in staged_order if ingest in current]


def rejections(
    dataset: str,
    staged: Mapping[str, pl.LazyFrame],
    order: Sequence[str],
    source_file: Callable[[str], str],
) -> pl.LazyFrame:
    """(`_ingest_id`, `_source_row`, `_reject_reason`) of every rejected row of `order`'s ingests.

    A row that broke a rule keeps that rule's reason; among valid rows sharing an id, all but the
    winner are duplicates naming the copy that won.
    """
    key = RULES[dataset].key
    columns = [key, SOURCE_ROW, CHECK_REASON_COLUMN]
    template = pl.LazyFrame(
        schema={key: pl.Int64, SOURCE_ROW: pl.Int64, CHECK_REASON_COLUMN: pl.String}
    ).with_columns(pl.lit(None, pl.Int64).alias(_POSITION))
    keys = pl.concat(
        [template]
        + [
            staged[ingest].select(columns).with_columns(pl.lit(position, pl.Int64).alias(_POSITION))
            for position, ingest in enumerate(order)
        ]
    ).with_columns(
        (pl.col(_POSITION) * _ROW_SPAN + pl.col(SOURCE_ROW)).alias(_PACKED),
        _ingest_of(order, pl.col(_POSITION)).alias(INGEST_ID),
    )
    valid = keys.filter(pl.col(CHECK_REASON_COLUMN).is_null())
    winners = valid.group_by(key).agg(pl.col(_PACKED).max().alias(_WINNER))
    superseded = (
        valid.join(winners, on=key)
        .filter(pl.col(_PACKED) != pl.col(_WINNER))
        .select(
            INGEST_ID,
            SOURCE_ROW,
            _duplicate_reason(order, source_file).alias(REJECT_REASON_COLUMN),
        )
    )
    failed = keys.filter(pl.col(CHECK_REASON_COLUMN).is_not_null()).select(
        INGEST_ID, SOURCE_ROW, pl.col(CHECK_REASON_COLUMN).alias(REJECT_REASON_COLUMN)
    )
    return pl.concat([failed, superseded])


def table_part(staged: pl.LazyFrame, rejected: pl.LazyFrame) -> pl.LazyFrame:
    """An ingest's silver part: its staged rows that were not rejected (`rejected`: its own)."""
    return (
        staged.filter(pl.col(CHECK_REASON_COLUMN).is_null())
        .join(rejected.select(SOURCE_ROW), on=SOURCE_ROW, how="anti")
        .drop(CHECK_REASON_COLUMN)
    )


def quarantine_part(dataset: str, bronze: pl.LazyFrame, rejected: pl.LazyFrame) -> pl.LazyFrame:
    """An ingest's quarantine part: its rejected bronze rows as text, with `_reject_reason`.

    Every part has the registry's bronze columns, so the folder reads as one table; a file's
    extra columns stay in its bronze.
    """
    schema = bronze_schema(dataset)
    rows = pl.concat([pl.LazyFrame(schema=schema), bronze], how="diagonal_relaxed")
    return rows.select(schema.names()).join(
        rejected.select(SOURCE_ROW, REJECT_REASON_COLUMN), on=SOURCE_ROW, how="inner"
    )


@dataclass(frozen=True)
class PartChanges:
    """What a refresh writes and deletes, by ingest id (the parts' names)."""

    write: list[str]
    delete: list[str]


def changed_parts(
    order: Sequence[str],
    existing_parts: set[str],
    rejected: pl.DataFrame,
    existing_rejected: pl.DataFrame,
) -> PartChanges:
    """Parts to write: new current ingests and those whose rejected rows or reasons differ.

    Compared with what the quarantine holds now, not with what the last refresh meant to write,
    so a refresh that stopped half-way is completed by the next one.
    """
    rejected = rejected.select(REJECTION_SCHEMA.names())
    existing_rejected = existing_rejected.select(REJECTION_SCHEMA.names())
    differ = pl.concat(
        [
            rejected.join(existing_rejected, on=REJECTION_SCHEMA.names(), how="anti"),
            existing_rejected.join(rejected, on=REJECTION_SCHEMA.names(), how="anti"),
        ]
    )
    touched = set(differ[INGEST_ID].to_list())
    write = [i for i in order if i not in existing_parts or i in touched]
    return PartChanges(write=write, delete=sorted(existing_parts - set(order)))


class SilverResult(NamedTuple):
    """A silver base table and its quarantine, each as one frame (the concatenated parts)."""

    table: pl.LazyFrame
    quarantine: pl.LazyFrame


def build_silver(
    dataset: str,
    bronze: Mapping[str, pl.LazyFrame],
    ingest_order: Sequence[str],
    *,
    current_year: int,
    source_files: Mapping[str, str],
) -> SilverResult:
    """The whole table rebuilt from bronze: what every sequence of incremental refreshes equals.

    `ingest_order` lists ingest ids oldest -> newest; every key of `bronze` must be in it.
    `source_files` maps ingest ids to the file names they are versions of.
    """
    if len(set(ingest_order)) != len(ingest_order):
        raise ValueError("ingest_order lists an ingest id twice")
    if unknown := sorted(set(bronze) - set(ingest_order)):
        raise ValueError(f"bronze ingests missing from ingest_order: {unknown}")
    present = [ingest for ingest in ingest_order if ingest in bronze]
    file_of = source_files.__getitem__
    order = current_ingests([i for i in present if i in source_files], file_of)
    staged = {i: stage(dataset, bronze[i], current_year=current_year) for i in order}
    rejected = rejections(dataset, staged, order, file_of)

    def own(ingest: str) -> pl.LazyFrame:
        return rejected.filter(pl.col(INGEST_ID) == ingest)

    empty = stage(dataset, pl.LazyFrame(schema=bronze_schema(dataset)), current_year=current_year)
    tables = [table_part(empty, rejected.head(0))] + [table_part(staged[i], own(i)) for i in order]
    quarantines = [
        quarantine_part(dataset, pl.LazyFrame(schema=bronze_schema(dataset)), rejected.head(0))
    ] + [quarantine_part(dataset, bronze[i], own(i)) for i in order]
    return SilverResult(pl.concat(tables), pl.concat(quarantines))


def _ingest_of(order: Sequence[str], position: pl.Expr) -> pl.Expr:
    return position.replace_strict(dict(enumerate(order)), default=None, return_dtype=pl.String)


def _duplicate_reason(order: Sequence[str], source_file: Callable[[str], str]) -> pl.Expr:
    """Names the copy that won: its file, row and ingest, unpacked from `__winning_row`."""
    position = pl.col(_WINNER) // _ROW_SPAN
    files = {p: source_file(ingest) for p, ingest in enumerate(order)}
    return pl.format(
        f"{RejectReason.DUPLICATE_ID}: superseded by {{}} row {{}} (ingest {{}})",
        position.replace_strict(files, default=None, return_dtype=pl.String),
        pl.col(_WINNER) % _ROW_SPAN,
        _ingest_of(order, position),
    )
