"""Silver: bronze text -> typed, validated, deduplicated base tables, and the silver joins.

`build_silver` applies a dataset's `DatasetRules`. Rows that fail a rule go to quarantine with
`_reject_reason`; for the latest ingest of every source file, input rows = silver + quarantine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import polars as pl

from deathmetal_lake.datasets import DATASETS_BY_NAME
from deathmetal_lake.rows import PROVENANCE_COLUMNS
from deathmetal_lake.rules import (
    FIELD_SEPARATOR,
    MAX_YEAR_AHEAD,
    MIN_YEAR,
    MISSING_MARKERS,
    RULES,
    DatasetRules,
    RejectReason,
)

PARSE_ERROR_COLUMN = "_parse_error"
RAW_COLUMN = "_raw"
REJECT_REASON_COLUMN = "_reject_reason"

# Helper columns live under "__" so they can never collide with bronze's "_" columns.
_POSITION = "__ingest_position"
_CHECK_REASON = "__check_reason"
# A row's place in upsert order, unique per row: ingest position * 2**32 + `_source_row`, so
# "the latest ingest, then the later row" is a plain max.
_ROW = "__row"
_WINNING_ROW = "__winning_row"
_WINNING_POSITION = "__winning_position"
_WINNING_FILE = "__winning_file"
_ROW_SPAN = 2**32
_HELPERS = "^__.*$"


class SilverResult(NamedTuple):
    """A silver base table and the rows rejected on the way (every bronze column + reason)."""

    table: pl.LazyFrame
    quarantine: pl.LazyFrame


class SilverPlan(NamedTuple):
    """One dataset's latest bronze rows and the decision which of them are rejected.

    `rows` are bronze text plus a `__row` upsert position; `columns` types them into silver.
    """

    rows: pl.LazyFrame
    rejected: pl.LazyFrame
    columns: dict[str, pl.Expr]

    def split(self, rejected: pl.LazyFrame | None = None) -> SilverResult:
        """The table (rows not rejected, typed) and the quarantine (rows rejected, as text).

        Both stream: each is the rows joined to `rejected`, which is small, so neither holds a
        layer in memory. Row order follows bronze and carries no meaning.
        """
        rejected = self.rejected if rejected is None else rejected
        table = self.rows.join(rejected, on=_ROW, how="anti").select(
            *(expr.alias(name) for name, expr in self.columns.items()), *PROVENANCE_COLUMNS
        )
        quarantine = self.rows.join(rejected, on=_ROW, how="inner").select(pl.exclude(_HELPERS))
        return SilverResult(table, quarantine)


def bronze_schema(dataset: str) -> pl.Schema:
    """The columns every bronze frame of `dataset` is expected to carry (extras may be added)."""
    return pl.Schema(
        {
            **dict.fromkeys(DATASETS_BY_NAME[dataset].columns, pl.String),
            "_source_file": pl.String,
            "_source_row": pl.Int64,
            "_ingest_id": pl.String,
            PARSE_ERROR_COLUMN: pl.String,
            RAW_COLUMN: pl.String,
        }
    )


def latest_bronze(
    dataset: str,
    bronze: Mapping[str, pl.LazyFrame],
    ingest_order: Sequence[str],
    *,
    source_files: Mapping[str, str] | None = None,
) -> pl.LazyFrame:
    """The rows silver is built from: the latest ingest of each `_source_file` only.

    Use it to count the invariant's input side (input rows = silver rows + quarantine rows).
    """
    return _latest_with_position(dataset, bronze, ingest_order, source_files).drop(_POSITION)


def build_silver(
    dataset: str,
    bronze: Mapping[str, pl.LazyFrame],
    ingest_order: Sequence[str],
    *,
    current_year: int,
    source_files: Mapping[str, str] | None = None,
) -> SilverResult:
    """Type, validate and upsert one dataset's bronze ingests into its silver table."""
    return plan_silver(
        dataset, bronze, ingest_order, current_year=current_year, source_files=source_files
    ).split()


def plan_silver(
    dataset: str,
    bronze: Mapping[str, pl.LazyFrame],
    ingest_order: Sequence[str],
    *,
    current_year: int,
    source_files: Mapping[str, str] | None = None,
) -> SilverPlan:
    """Type and check one dataset's bronze ingests, and decide which rows are rejected.

    `ingest_order` lists ingest ids oldest -> newest; every key of `bronze` must be in it.
    `source_files` (ingest id -> file name), when the caller knows it, drops superseded ingests
    before they are read and lets a newer, empty version of a file supersede the older one.
    A row gets the first failing rule in `RejectReason` order; among valid rows sharing an id
    the latest ingest wins, then the later `_source_row`; the others are duplicates. Deciding
    that is a group-by over the ids, not a window, so it streams.
    """
    rules = RULES[dataset]
    typed = _typed_columns(rules)
    typed_names = {name: f"__typed_{name}" for name in typed}
    key = pl.col(typed_names[rules.key])
    rows = _latest_with_position(dataset, bronze, ingest_order, source_files).with_columns(
        (pl.col(_POSITION) * _ROW_SPAN + pl.col("_source_row")).alias(_ROW)
    )
    checked = rows.with_columns(
        expr.alias(typed_names[name]) for name, expr in typed.items()
    ).with_columns(pl.coalesce(_checks(rules, current_year, typed_names)).alias(_CHECK_REASON))
    valid = checked.filter(pl.col(_CHECK_REASON).is_null())
    winners = valid.group_by(key).agg(pl.col(_ROW).max().alias(_WINNING_ROW))
    failed = checked.filter(pl.col(_CHECK_REASON).is_not_null()).select(
        _ROW, pl.col(_CHECK_REASON).alias(REJECT_REASON_COLUMN)
    )
    winning_files = rows.select(
        pl.col(_POSITION).alias(_WINNING_POSITION), pl.col("_source_file").alias(_WINNING_FILE)
    ).unique()
    superseded = (
        valid.select(key, _ROW)
        .join(winners, on=key.meta.output_name())
        .filter(pl.col(_ROW) != pl.col(_WINNING_ROW))
        .with_columns((pl.col(_WINNING_ROW) // _ROW_SPAN).alias(_WINNING_POSITION))
        .join(winning_files, on=_WINNING_POSITION, how="left")
        .select(_ROW, _duplicate_reason(ingest_order).alias(REJECT_REASON_COLUMN))
    )
    return SilverPlan(rows, pl.concat([failed, superseded]), typed)


def restore_commas(column: str) -> pl.Expr:
    """The export wrote "," inside fields as "|"; put the comma back."""
    return pl.col(column).str.replace_all(FIELD_SEPARATOR, ",", literal=True)


def split_list(column: str) -> pl.Expr:
    """A "|"-separated field as List(String): items trimmed, empty and N/A dropped; none -> null."""
    item = pl.element().str.strip_chars()
    items = pl.col(column).str.split(FIELD_SEPARATOR).list.eval(item.filter(_is_not_marker(item)))
    return pl.when(items.list.len() > 0).then(items)


def active_period_columns(column: str) -> list[pl.Expr]:
    """Parse Metal-Archives activity periods ("1989-1993|2004-present") into four columns.

    `{column}_start_year`: first period's start (null for "?"); `{column}_end_year`: last
    period's end (null for "present" or "?"); `{column}_periods`: number of periods;
    `is_{column}`: the last period ends in "present" (null when there are no periods).
    Annotations such as "(as Old Name)" are ignored; a lone year is both start and end.
    """
    period = pl.element().str.replace_all(r"\([^)]*\)", "").str.strip_chars()
    periods = (
        pl.col(column).str.split(FIELD_SEPARATOR).list.eval(period.filter(_is_not_marker(period)))
    )
    count = periods.list.len().fill_null(0)
    first, last = periods.list.first(), periods.list.last()
    return [
        first.str.extract(r"^(\d{4})(?:\s*-|$)", 1).cast(pl.Int64).alias(f"{column}_start_year"),
        last.str.extract(r"(?:^|-\s*)(\d{4})$", 1).cast(pl.Int64).alias(f"{column}_end_year"),
        count.cast(pl.Int64).alias(f"{column}_periods"),
        pl.when(count > 0)
        .then(last.str.to_lowercase().str.ends_with("present"))
        .alias(f"is_{column}"),
    ]


def music_catalog(albums: pl.LazyFrame, bands: pl.LazyFrame) -> pl.LazyFrame:
    """Albums LEFT JOIN bands on albums.band = bands.id; an unknown band leaves its columns null."""
    return albums.select(
        pl.col("id").alias("album_id"),
        pl.col("title").alias("album_title"),
        "year",
        pl.col("band").alias("band_id"),
    ).join(
        bands.select(
            pl.col("id").alias("band_id"),
            pl.col("name").alias("band_name"),
            "country",
            "status",
            "formed_in",
            "genre",
            "theme",
            "active_start_year",
            "active_end_year",
            "active_periods",
            "is_active",
        ),
        on="band_id",
        how="left",
    )


def album_reviews(reviews: pl.LazyFrame, albums: pl.LazyFrame) -> pl.LazyFrame:
    """Reviews LEFT JOIN albums on reviews.album = albums.id; an unknown album leaves nulls."""
    return reviews.select(
        pl.col("id").alias("review_id"),
        pl.col("album").alias("album_id"),
        pl.col("title").alias("review_title"),
        "score",
        "content",
    ).join(
        albums.select(
            pl.col("id").alias("album_id"),
            pl.col("title").alias("album_title"),
            pl.col("band").alias("band_id"),
            "year",
        ),
        on="album_id",
        how="left",
    )


def count_orphans(
    child: pl.LazyFrame, parent: pl.LazyFrame, foreign_key: str, parent_key: str = "id"
) -> pl.LazyFrame:
    """One row: `orphan_rows` (child rows whose foreign key has no parent) and `orphan_keys`."""
    orphans = child.filter(pl.col(foreign_key).is_not_null()).join(
        parent.select(pl.col(parent_key).alias(foreign_key)), on=foreign_key, how="anti"
    )
    return orphans.select(
        pl.len().cast(pl.Int64).alias("orphan_rows"),
        pl.col(foreign_key).n_unique().cast(pl.Int64).alias("orphan_keys"),
    )


def unknown_values(table: pl.LazyFrame, dataset: str) -> pl.LazyFrame:
    """Values outside the dataset's `known_values` (kept in silver): column, value, rows."""
    schema = pl.Schema({"column": pl.String, "value": pl.String, "rows": pl.Int64})
    frames = [
        table.filter(pl.col(column).is_not_null() & ~pl.col(column).is_in(sorted(known)))
        .group_by(column)
        .agg(pl.len().cast(pl.Int64).alias("rows"))
        .select(pl.lit(column).alias("column"), pl.col(column).alias("value"), "rows")
        for column, known in RULES[dataset].known_values.items()
    ]
    return pl.concat([pl.LazyFrame(schema=schema), *frames]).sort("column", "value")


def _latest_with_position(
    dataset: str,
    bronze: Mapping[str, pl.LazyFrame],
    ingest_order: Sequence[str],
    source_files: Mapping[str, str] | None,
) -> pl.LazyFrame:
    position = {ingest_id: i for i, ingest_id in enumerate(ingest_order)}
    if len(position) != len(ingest_order):
        raise ValueError("ingest_order lists an ingest id twice")
    if unknown := sorted(set(bronze) - position.keys()):
        raise ValueError(f"bronze ingests missing from ingest_order: {unknown}")
    if source_files is not None:
        latest = {source_files[i]: i for i in ingest_order if i in source_files}
        superseded = {i for i in bronze if i in source_files and latest[source_files[i]] != i}
    else:
        superseded = set()
    # The empty template makes every expected column exist with its type, even with no ingests.
    frames = [
        pl.LazyFrame(schema=bronze_schema(dataset)).with_columns(
            pl.lit(None, pl.Int64).alias(_POSITION)
        )
    ]
    frames += [
        bronze[i].with_columns(pl.lit(position[i], pl.Int64).alias(_POSITION))
        for i in sorted(set(bronze) - superseded, key=position.__getitem__)
    ]
    rows = pl.concat(frames, how="diagonal_relaxed")
    if source_files is not None and set(bronze) <= source_files.keys():
        return rows
    # Without the file of every ingest, find each file's latest ingest from the rows themselves.
    latest = rows.group_by("_source_file").agg(pl.col(_POSITION).max())
    return rows.join(
        latest, on=["_source_file", _POSITION], how="semi", nulls_equal=True, maintain_order="left"
    )


def _is_not_marker(text: pl.Expr) -> pl.Expr:
    return ~text.is_in(list(MISSING_MARKERS))


def _is_missing(column: str) -> pl.Expr:
    return pl.col(column).is_null() | ~_is_not_marker(pl.col(column).str.strip_chars())


def _present(column: str) -> pl.Expr:
    """Stripped text, or null when missing."""
    return pl.when(~_is_missing(column)).then(pl.col(column).str.strip_chars())


def _typed_columns(rules: DatasetRules) -> dict[str, pl.Expr]:
    """Silver column name -> expression over the bronze text, in source column order."""
    scores = {s.name for s in rules.score_columns}
    typed: dict[str, pl.Expr] = {}
    for column in rules.source_columns:
        if column in (rules.key, *rules.integer_columns, *rules.year_columns):
            typed[column] = _present(column).cast(pl.Int64, strict=False)
        elif column in scores:
            typed[column] = _present(column).cast(pl.Float64, strict=False)
        elif column in rules.free_text_columns:
            typed[column] = pl.when(pl.col(column).str.strip_chars() != "").then(
                restore_commas(column)
            )
        elif column in rules.list_columns:
            typed[column] = split_list(column)
        elif column in rules.text_columns:
            typed[column] = _present(column)
        else:
            typed[column] = pl.col(column)
        if column == rules.active_column:
            typed.update({e.meta.output_name(): e for e in active_period_columns(column)})
    return typed


def _checks(rules: DatasetRules, current_year: int, typed: dict[str, str]) -> list[pl.Expr]:
    """One reason expression per rule and column, in `RejectReason` order (null = passes)."""

    def value_reason(reason: RejectReason, column: str, failed: pl.Expr, expected: str) -> pl.Expr:
        message = pl.format(f"{reason}: {column}='{{}}' (expected {expected})", pl.col(column))
        return pl.when(~_is_missing(column) & failed).then(message)

    checks = [
        pl.when(pl.col(PARSE_ERROR_COLUMN).is_not_null()).then(
            pl.format(f"{RejectReason.PARSE_ERROR}: {{}}", pl.col(PARSE_ERROR_COLUMN))
        ),
        pl.when(_is_missing(rules.key)).then(pl.lit(f"{RejectReason.INVALID_ID}: missing")),
        value_reason(
            RejectReason.INVALID_ID, rules.key, pl.col(typed[rules.key]).is_null(), "integer"
        ),
    ]
    checks += [
        pl.when(_is_missing(c)).then(pl.lit(f"{RejectReason.REQUIRED_MISSING}: {c}"))
        for c in rules.required_columns
    ]
    checks += [
        value_reason(RejectReason.INVALID_INTEGER, c, pl.col(typed[c]).is_null(), "integer")
        for c in rules.integer_columns
    ]
    for score in rules.score_columns:
        # NaN sorts above every number in polars, so "nan" fails the range too.
        in_range = pl.col(typed[score.name]).is_between(score.minimum, score.maximum)
        expected = f"number in {score.minimum:g}..{score.maximum:g}"
        checks.append(
            value_reason(
                RejectReason.INVALID_SCORE, score.name, ~in_range.fill_null(False), expected
            )
        )
    last_year = current_year + MAX_YEAR_AHEAD
    for c in rules.year_columns:
        in_range = pl.col(typed[c]).is_between(MIN_YEAR, last_year).fill_null(False)
        checks.append(
            value_reason(
                RejectReason.INVALID_YEAR, c, ~in_range, f"year in {MIN_YEAR}..{last_year}"
            )
        )
    return checks


def _duplicate_reason(ingest_order: Sequence[str]) -> pl.Expr:
    """Names the copy that won: its file, row and ingest, unpacked from `__winning_row`."""
    ingest = pl.col(_WINNING_POSITION).replace_strict(
        dict(enumerate(ingest_order)), return_dtype=pl.String
    )
    return pl.format(
        f"{RejectReason.DUPLICATE_ID}: superseded by {{}} row {{}} (ingest {{}})",
        pl.col(_WINNING_FILE),
        pl.col(_WINNING_ROW) % _ROW_SPAN,
        ingest,
    )


SILVER_LINEAGE: dict[str, dict[str, list[tuple[str, str]]]] = {
    "music_catalog": {
        "album_id": [("albums", "id")],
        "album_title": [("albums", "title")],
        "year": [("albums", "year")],
        "band_id": [("albums", "band")],
        "band_name": [("bands", "name"), ("albums", "band"), ("bands", "id")],
        "country": [("bands", "country"), ("albums", "band"), ("bands", "id")],
        "status": [("bands", "status"), ("albums", "band"), ("bands", "id")],
        "formed_in": [("bands", "formed_in"), ("albums", "band"), ("bands", "id")],
        "genre": [("bands", "genre"), ("albums", "band"), ("bands", "id")],
        "theme": [("bands", "theme"), ("albums", "band"), ("bands", "id")],
        "active_start_year": [("bands", "active_start_year"), ("albums", "band"), ("bands", "id")],
        "active_end_year": [("bands", "active_end_year"), ("albums", "band"), ("bands", "id")],
        "active_periods": [("bands", "active_periods"), ("albums", "band"), ("bands", "id")],
        "is_active": [("bands", "is_active"), ("albums", "band"), ("bands", "id")],
    },
    "album_reviews": {
        "review_id": [("reviews", "id")],
        "album_id": [("reviews", "album")],
        "review_title": [("reviews", "title")],
        "score": [("reviews", "score")],
        "content": [("reviews", "content")],
        "album_title": [("albums", "title"), ("reviews", "album"), ("albums", "id")],
        "band_id": [("albums", "band"), ("reviews", "album"), ("albums", "id")],
        "year": [("albums", "year"), ("reviews", "album"), ("albums", "id")],
    },
}

_PROVENANCE_DESCRIPTIONS = {
    "_source_file": "Source file name as dropped (e.g. reviews_2026-11.csv).",
    "_source_row": "1-based data row in that file, header excluded.",
    "_ingest_id": "Ingest (file version) the row came from.",
}

SILVER_COLUMN_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "albums": {
        "id": "Metal-Archives album id (unique).",
        "band": "Band id (bands.id); may be an orphan.",
        "title": "Album title, commas restored.",
        "year": "Release year; null when unknown.",
        **_PROVENANCE_DESCRIPTIONS,
    },
    "bands": {
        "id": "Metal-Archives band id (unique).",
        "name": "Band name, commas restored.",
        "country": "Country of origin; null when N/A.",
        "status": "Active, Split-up, On hold, Changed name, Unknown or Disputed.",
        "formed_in": "Year formed; null when unknown.",
        "genre": "Genres as listed by Metal-Archives.",
        "theme": "Lyrical themes.",
        "active": "Activity periods as written, e.g. 1989-1993|2004-present.",
        "active_start_year": "Start of the first activity period; null when unknown.",
        "active_end_year": "End of the last period; null when ongoing or unknown.",
        "active_periods": "Number of activity periods (0 when none are known).",
        "is_active": "The last activity period runs to the present.",
        **_PROVENANCE_DESCRIPTIONS,
    },
    "reviews": {
        "id": "Metal-Archives review id (unique).",
        "album": "Album id (albums.id); may be an orphan.",
        "title": "Review title, commas restored.",
        "score": "Reviewer's score, 0-100.",
        "content": "Review text, commas restored.",
        **_PROVENANCE_DESCRIPTIONS,
    },
    "music_catalog": {
        "album_id": "Album id.",
        "album_title": "Album title.",
        "year": "Release year.",
        "band_id": "Band id; its band columns are null when the band is unknown.",
        "band_name": "Band name.",
        "country": "Band's country.",
        "status": "Band's status.",
        "formed_in": "Year the band formed.",
        "genre": "Band's genres.",
        "theme": "Band's lyrical themes.",
        "active_start_year": "Start of the band's first activity period.",
        "active_end_year": "End of the band's last activity period.",
        "active_periods": "Number of the band's activity periods.",
        "is_active": "The band is active to the present.",
    },
    "album_reviews": {
        "review_id": "Review id.",
        "album_id": "Reviewed album id; album columns are null when the album is unknown.",
        "review_title": "Review title.",
        "score": "Reviewer's score, 0-100.",
        "content": "Review text.",
        "album_title": "Album title.",
        "band_id": "Album's band id.",
        "year": "Album's release year.",
    },
}
