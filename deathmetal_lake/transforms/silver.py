"""Silver typing: one ingest's bronze text -> typed columns and the first rule each row breaks.

`stage` runs once per ingest, when it arrives (the `staging/{dataset}` asset): typing, list and
activity-period parsing and the per-row rules of `rules.RULES`. Which rows of the current ingests
win their id is decided later, across ingests, by `transforms.merge`.
"""

from __future__ import annotations

import polars as pl

from deathmetal_lake.datasets import DATASETS_BY_NAME
from deathmetal_lake.rows import PARSE_ERROR, PROVENANCE_COLUMNS, landing_schema
from deathmetal_lake.rules import (
    FIELD_SEPARATOR,
    MAX_YEAR_AHEAD,
    MIN_YEAR,
    MISSING_MARKERS,
    RULES,
    DatasetRules,
    RejectReason,
)

REJECT_REASON_COLUMN = "_reject_reason"
# The first row rule a staged row breaks (null when it passes all of them).
CHECK_REASON_COLUMN = "_check_reason"


def bronze_schema(dataset: str) -> pl.Schema:
    """The columns every bronze frame of `dataset` carries (a file's extra columns may be added)."""
    return landing_schema(DATASETS_BY_NAME[dataset].columns)


def stage(dataset: str, bronze: pl.LazyFrame, *, current_year: int) -> pl.LazyFrame:
    """One ingest typed: silver columns, provenance and `_check_reason` (first failed rule).

    Streams: every expression is per row. A row that fails a rule keeps its (partly null) typed
    columns; its text stays in bronze, where the quarantine takes it from.
    """
    rules = RULES[dataset]
    typed = _typed_columns(rules)
    typed_names = {name: f"__typed_{name}" for name in typed}
    template = pl.LazyFrame(schema=bronze_schema(dataset))
    return (
        pl.concat([template, bronze], how="diagonal_relaxed")
        .with_columns(expr.alias(typed_names[name]) for name, expr in typed.items())
        .with_columns(
            pl.coalesce(_checks(rules, current_year, typed_names)).alias(CHECK_REASON_COLUMN)
        )
        .select(
            *(pl.col(typed_names[name]).alias(name) for name in typed),
            *PROVENANCE_COLUMNS,
            CHECK_REASON_COLUMN,
        )
    )


def silver_schema(dataset: str) -> pl.Schema:
    """The silver table's columns and types, as `stage` builds them from the rules."""
    staged = stage(dataset, pl.LazyFrame(schema=bronze_schema(dataset)), current_year=2000)
    return staged.drop(CHECK_REASON_COLUMN).collect_schema()


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
        pl.when(pl.col(PARSE_ERROR).is_not_null()).then(
            pl.format(f"{RejectReason.PARSE_ERROR}: {{}}", pl.col(PARSE_ERROR))
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
