"""Sanity checks on the gold marts, all ERROR and blocking (gold feeds gold).

- every mart is not empty when all its inputs are not (except `GOLD_MAY_BE_EMPTY`);
- `top10_by_country` has at most TOP_PER_COUNTRY bands per country;
- score averages (`GOLD_SCORE_COLUMNS`) are within the score range 0..100;
- `album_rankings` is ordered: rank 1..n, weighted score never increasing with rank.

The evaluations stream (lazy aggregations, a sorted sample of the failing rows). The checks share
steps: one per mart that feeds another mart, one for all the others (`gold_checks`).
"""

from collections.abc import Callable, Mapping, Sequence

import polars as pl
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSpec,
    AssetKey,
)

from deathmetal_lake.assets.gold import gold_assets, gold_key
from deathmetal_lake.checks.evidence import (
    SAMPLE_ROWS,
    Evaluation,
    PlannedCheck,
    check_result,
    checks_step,
    collect_streaming,
    parquet_rows,
)
from deathmetal_lake.rules import GOLD_MAY_BE_EMPTY, GOLD_SCORE_COLUMNS, RULES
from deathmetal_lake.transforms.gold import TOP_PER_COUNTRY

NOT_EMPTY = "not_empty_when_inputs_are_not"
AT_MOST_TOP_PER_COUNTRY = "at_most_10_per_country"
SCORES_IN_RANGE = "scores_in_range"
RANKS_ORDERED = "ranks_ordered"

_SCORE = RULES["reviews"].score_columns[0]


def _sortable(table: pl.LazyFrame) -> list[str]:
    """The columns a sample can be sorted by (not lists): a deterministic order for any mart."""
    return [c for c, dtype in table.collect_schema().items() if not dtype.is_nested()]


def evaluate_not_empty(table: pl.LazyFrame, input_rows: dict[str, int]) -> AssetCheckResult:
    """`input_rows`: input table -> its row count."""
    rows = table.select(pl.len()).collect(engine="streaming").item()
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
    (counts,) = collect_streaming(table.group_by("country").agg(pl.len().alias("bands")))
    over = counts.filter(pl.col("bands") > TOP_PER_COUNTRY)
    failing = None
    if over.height:
        (failing,) = collect_streaming(
            table.join(over.lazy().select("country"), on="country", how="semi")
            .filter(pl.col("rank") > TOP_PER_COUNTRY)
            .sort(_sortable(table))
            .head(SAMPLE_ROWS)
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
    outside = {
        c: pl.col(c).is_not_null() & ~pl.col(c).is_between(_SCORE.minimum, _SCORE.maximum)
        for c in columns
    }
    (size,) = collect_streaming(
        table.select(pl.len().alias("rows"), *(e.sum().alias(c) for c, e in outside.items()))
    )
    rows, *counts = size.row(0)
    out_of_range = dict(zip(columns, counts, strict=True))
    samples = collect_streaming(
        *(
            table.filter(outside[c])
            .sort(list(dict.fromkeys([c, *_sortable(table)])))
            .head(SAMPLE_ROWS)
            .select(pl.lit(c).alias("column"), pl.all())
            for c, n in out_of_range.items()
            if n
        )
    )
    return check_result(
        passed=not any(counts),
        counts={"rows": rows, **{f"out_of_range_{c}": n for c, n in out_of_range.items()}},
        thresholds={"score_range": f"{_SCORE.minimum:g}..{_SCORE.maximum:g}"},
        failing=pl.concat([pl.DataFrame(), *samples], how="diagonal_relaxed"),
    )


def evaluate_rankings_ordered(table: pl.LazyFrame) -> AssetCheckResult:
    """Row order is the point here: the mart is written sorted and read back in file order."""
    positioned = table.with_row_index("position", offset=1)
    wrong = (pl.col("rank") != pl.col("position").cast(pl.Int64)) | (
        pl.col("weighted_score") > pl.col("weighted_score").shift(1)
    )
    flagged = positioned.select("position", wrong.fill_null(False).alias("wrong"))
    size, first = collect_streaming(
        flagged.select(pl.len().alias("rows"), pl.col("wrong").sum()),
        flagged.filter("wrong").select("position").sort("position").head(SAMPLE_ROWS),
    )
    rows, out_of_order = size.row(0)
    failing = None
    if out_of_order:
        (failing,) = collect_streaming(
            positioned.filter(pl.col("position").is_in(first["position"].implode())).sort(
                "position"
            )
        )
    return check_result(
        passed=not out_of_order,
        counts={"rows": rows, "out_of_order_rows": out_of_order},
        thresholds={"order": "rank = row position 1..n; weighted_score non-increasing"},
        failing=failing,
    )


# ---------------------------------------------------------------------------------------------
# Definitions


def _inputs(table: str) -> dict[str, AssetKey]:
    asset = next(a for a in gold_assets if a.key == gold_key(table))
    return dict(asset.keys_by_input_name)


def _spec(
    table: str, name: str, description: str, additional_deps: Sequence[AssetKey] = ()
) -> AssetCheckSpec:
    return AssetCheckSpec(
        name,
        asset=gold_key(table),
        blocking=True,
        description=description,
        additional_deps=additional_deps,
    )


def _on_table(table: str, evaluate: Callable[[pl.LazyFrame], AssetCheckResult]) -> Evaluation:
    return lambda _, tables: evaluate(tables[table])


def _not_empty(table: str) -> PlannedCheck:
    inputs = _inputs(table)

    def evaluate(
        context: AssetCheckExecutionContext, tables: Mapping[str, pl.LazyFrame]
    ) -> AssetCheckResult:
        io_manager = context.resources.io_manager
        input_rows = {
            name: parquet_rows(io_manager, "/".join(key.path)) or 0 for name, key in inputs.items()
        }
        return evaluate_not_empty(tables[table], input_rows)

    return PlannedCheck(
        _spec(
            table,
            NOT_EMPTY,
            f"Not empty when its inputs ({', '.join(inputs)}) are not.",
            additional_deps=list(inputs.values()),
        ),
        evaluate,
    )


def planned_gold_checks(table: str) -> list[PlannedCheck]:
    """A mart's sanity checks, from `rules.py` and the mart's name."""
    checks = [] if table in GOLD_MAY_BE_EMPTY else [_not_empty(table)]
    if table in GOLD_SCORE_COLUMNS:
        columns = GOLD_SCORE_COLUMNS[table]
        checks.append(
            PlannedCheck(
                _spec(
                    table, SCORES_IN_RANGE, f"{', '.join(columns)} within the score range 0..100."
                ),
                _on_table(table, lambda frame: evaluate_scores_in_range(frame, columns)),
            )
        )
    if table == "top10_by_country":
        checks.append(
            PlannedCheck(
                _spec(
                    table, AT_MOST_TOP_PER_COUNTRY, f"At most {TOP_PER_COUNTRY} bands per country."
                ),
                _on_table(table, evaluate_top_per_country),
            )
        )
    if table == "album_rankings":
        checks.append(
            PlannedCheck(
                _spec(
                    table,
                    RANKS_ORDERED,
                    "rank is 1..n in row order and weighted_score never increases with it.",
                ),
                _on_table(table, evaluate_rankings_ordered),
            )
        )
    return checks


def _step(name: str, tables: list[str]) -> AssetChecksDefinition:
    return checks_step(
        name,
        [check for table in tables for check in planned_gold_checks(table)],
        ins={table: gold_key(table) for table in tables},
        description=f"Sanity of gold: {', '.join(tables)}.",
        required_resource_keys=frozenset({"io_manager"}),
    )


def gold_checks() -> list[AssetChecksDefinition]:
    """A step for each mart another mart reads, one for all the others.

    A failed blocking check fails its step and so stops everything that waits for any check of
    that step: a mart read by another mart has a step of its own, so its failure stops exactly
    its readers and another mart's failure does not stop them.
    """
    tables = [a.key.path[-1] for a in gold_assets]
    marts = {a.key for a in gold_assets}
    read_by_gold = {key.path[-1] for t in tables for key in _inputs(t).values() if key in marts}
    checked = [t for t in tables if planned_gold_checks(t)]
    return [
        *(_step(f"gold_{t}_checks", [t]) for t in checked if t in read_by_gold),
        _step("gold_checks", [t for t in checked if t not in read_by_gold]),
    ]
