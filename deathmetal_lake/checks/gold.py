"""Sanity checks on the gold marts, all ERROR and blocking (gold feeds gold).

- every mart is not empty when all its inputs are not (except `GOLD_MAY_BE_EMPTY`);
- `top10_by_country` has at most TOP_PER_COUNTRY bands per country;
- score averages (`GOLD_SCORE_COLUMNS`) are within the score range 0..100;
- `album_rankings` is ordered: rank 1..n, weighted score never increasing with rank.
"""

import polars as pl
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetKey,
    asset_check,
)

from deathmetal_lake.assets.gold import gold_assets, gold_key
from deathmetal_lake.checks.evidence import check_result, parquet_rows
from deathmetal_lake.rules import GOLD_MAY_BE_EMPTY, GOLD_SCORE_COLUMNS, RULES
from deathmetal_lake.transforms.gold import TOP_PER_COUNTRY

NOT_EMPTY = "not_empty_when_inputs_are_not"
AT_MOST_TOP_PER_COUNTRY = "at_most_10_per_country"
SCORES_IN_RANGE = "scores_in_range"
RANKS_ORDERED = "ranks_ordered"

_SCORE = RULES["reviews"].score_columns[0]


def evaluate_not_empty(table: pl.LazyFrame, input_rows: dict[str, int]) -> AssetCheckResult:
    """`input_rows`: input table -> its row count."""
    rows = table.select(pl.len()).collect().item()
    failed = rows == 0 and all(input_rows.values())
    return check_result(
        passed=not failed,
        counts={"rows": rows, **{f"input_rows_{k}": v for k, v in input_rows.items()}},
        thresholds={"min_rows_when_inputs_not_empty": 1},
        failing=pl.DataFrame({"input": list(input_rows), "rows": list(input_rows.values())})
        if failed
        else None,
    )


def evaluate_top_per_country(table: pl.LazyFrame) -> AssetCheckResult:
    counts = table.group_by("country").agg(pl.len().alias("bands")).collect()
    over = counts.filter(pl.col("bands") > TOP_PER_COUNTRY).sort("bands", descending=True)
    failing = (
        table.collect()
        .join(over.select("country"), on="country")
        .filter(pl.col("rank") > TOP_PER_COUNTRY)
        .sort("country", "rank")
    )
    return check_result(
        passed=over.is_empty(),
        counts={
            "countries": counts.height,
            "countries_over_limit": over.height,
            "max_bands_per_country": int(counts["bands"].max() or 0),
        },
        thresholds={"max_bands_per_country": TOP_PER_COUNTRY},
        failing=failing,
    )


def evaluate_scores_in_range(table: pl.LazyFrame, columns: tuple[str, ...]) -> AssetCheckResult:
    rows = table.collect()
    outside = {
        c: rows.filter(
            ~pl.col(c).is_between(_SCORE.minimum, _SCORE.maximum).fill_null(True)
            & pl.col(c).is_not_null()
        )
        for c in columns
    }
    failing = pl.concat(
        [
            f.with_columns(pl.lit(c).alias("column")).select("column", pl.all().exclude("column"))
            for c, f in outside.items()
        ],
        how="diagonal_relaxed",
    )
    return check_result(
        passed=failing.is_empty(),
        counts={"rows": rows.height, **{f"out_of_range_{c}": f.height for c, f in outside.items()}},
        thresholds={"score_range": f"{_SCORE.minimum:g}..{_SCORE.maximum:g}"},
        failing=failing,
    )


def evaluate_rankings_ordered(table: pl.LazyFrame) -> AssetCheckResult:
    rows = table.collect().with_row_index("position", offset=1)
    wrong = rows.filter(
        (pl.col("rank") != pl.col("position").cast(pl.Int64))
        | (pl.col("weighted_score") > pl.col("weighted_score").shift(1))
    )
    return check_result(
        passed=wrong.is_empty(),
        counts={"rows": rows.height, "out_of_order_rows": wrong.height},
        thresholds={"order": "rank = row position 1..n; weighted_score non-increasing"},
        failing=wrong.select("position", pl.all().exclude("position")),
    )


def _inputs(table: str) -> dict[str, AssetKey]:
    asset = next(a for a in gold_assets if a.key == gold_key(table))
    return dict(asset.keys_by_input_name)


def _not_empty_check(table: str) -> AssetChecksDefinition:
    inputs = _inputs(table)

    @asset_check(
        asset=gold_key(table),
        name=NOT_EMPTY,
        blocking=True,
        additional_deps=list(inputs.values()),
        required_resource_keys={"io_manager"},
        description=f"Not empty when its inputs ({', '.join(inputs)}) are not.",
    )
    def not_empty(
        context: AssetCheckExecutionContext, gold_table: pl.LazyFrame
    ) -> AssetCheckResult:
        io_manager = context.resources.io_manager
        input_rows = {
            name: parquet_rows(io_manager, "/".join(key.path)) or 0 for name, key in inputs.items()
        }
        return evaluate_not_empty(gold_table, input_rows)

    return not_empty


def _score_check(table: str, columns: tuple[str, ...]) -> AssetChecksDefinition:
    @asset_check(
        asset=gold_key(table),
        name=SCORES_IN_RANGE,
        blocking=True,
        description=f"{', '.join(columns)} within the score range 0..100.",
    )
    def scores_in_range(gold_table: pl.LazyFrame) -> AssetCheckResult:
        return evaluate_scores_in_range(gold_table, columns)

    return scores_in_range


@asset_check(
    asset=gold_key("top10_by_country"),
    name=AT_MOST_TOP_PER_COUNTRY,
    blocking=True,
    description=f"At most {TOP_PER_COUNTRY} bands per country.",
)
def top_per_country_check(top10_by_country: pl.LazyFrame) -> AssetCheckResult:
    return evaluate_top_per_country(top10_by_country)


@asset_check(
    asset=gold_key("album_rankings"),
    name=RANKS_ORDERED,
    blocking=True,
    description="rank is 1..n in row order and weighted_score never increases with it.",
)
def rankings_ordered_check(album_rankings: pl.LazyFrame) -> AssetCheckResult:
    return evaluate_rankings_ordered(album_rankings)


def gold_checks() -> list[AssetChecksDefinition]:
    tables = [a.key.path[-1] for a in gold_assets]
    return [
        *(_not_empty_check(t) for t in tables if t not in GOLD_MAY_BE_EMPTY),
        *(_score_check(t, cols) for t, cols in GOLD_SCORE_COLUMNS.items()),
        top_per_country_check,
        rankings_ordered_check,
    ]
