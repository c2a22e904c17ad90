"""Sanity checks on the gold marts, all ERROR and blocking (gold feeds gold).

Each mart's `Mart` declaration (`transforms.gold.MARTS`) names the rules its checks enforce:
- not empty when all its inputs are not (unless `may_be_empty`);
- `score_columns` within the score range 0..100;
- `top_per_group`: at most N rows per group (`top10_by_country`: 10 bands per country);
- `rank_order`: rank 1..n in row order, the score never increasing with rank.

The evaluations stream (lazy aggregations, a sorted sample of the failing rows). The checks share
steps: one per mart that feeds another mart, one for all the others (`gold_checks`).
"""

from collections.abc import Callable, Sequence

import polars as pl
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSpec,
    AssetKey,
)

from deathmetal_lake.assets.gold import gold_key
from deathmetal_lake.assets.lineage import table_key
from deathmetal_lake.checks.evidence import (
    SAMPLE_ROWS,
    PlannedCheck,
    check_result,
    checks_step,
    collect_streaming,
    table_check,
)
from deathmetal_lake.resources import LakeTables
from deathmetal_lake.rules import RULES
from deathmetal_lake.transforms.gold import MARTS, Mart, RankOrder, TopPerGroup

NOT_EMPTY = "not_empty_when_inputs_are_not"
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


def evaluate_top_per_group(table: pl.LazyFrame, rule: TopPerGroup) -> AssetCheckResult:
    group = rule.group
    (counts,) = collect_streaming(table.group_by(group).agg(pl.len().alias("rows")))
    over = counts.filter(pl.col("rows") > rule.limit)
    failing = None
    if over.height:
        (failing,) = collect_streaming(
            table.join(over.lazy().select(group), on=group, how="semi")
            .filter(pl.col(rule.rank) > rule.limit)
            .sort(_sortable(table))
            .head(SAMPLE_ROWS)
        )
    return check_result(
        passed=over.is_empty(),
        counts={
            f"{group}_values": counts.height,
            f"{group}_values_over_limit": over.height,
            f"max_rows_per_{group}": int(counts["rows"].max() or 0),
        },
        thresholds={f"max_rows_per_{group}": rule.limit},
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


def evaluate_rankings_ordered(table: pl.LazyFrame, rule: RankOrder) -> AssetCheckResult:
    """Row order is the point here: the mart is written sorted and read back in file order."""
    positioned = table.with_row_index("position", offset=1)
    score = pl.col(rule.score)
    wrong = (pl.col(rule.rank) != pl.col("position").cast(pl.Int64)) | (score > score.shift(1))
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
        thresholds={"order": f"{rule.rank} = row position 1..n; {rule.score} non-increasing"},
        failing=failing,
    )


# ---------------------------------------------------------------------------------------------
# Definitions: from each mart's declaration (`transforms.gold.MARTS`)


def _input_keys(mart: Mart) -> list[AssetKey]:
    return [table_key(table) for table in mart.inputs]


def _check(
    mart: Mart,
    name: str,
    description: str,
    evaluate: Callable[[pl.LazyFrame], AssetCheckResult],
) -> PlannedCheck:
    """A check of the mart's own table."""
    spec = AssetCheckSpec(name, asset=gold_key(mart.name), blocking=True, description=description)
    return table_check(spec, evaluate)


def _not_empty(mart: Mart) -> PlannedCheck:
    key, inputs = gold_key(mart.name), _input_keys(mart)

    def evaluate(_: AssetCheckExecutionContext, tables: LakeTables) -> AssetCheckResult:
        input_rows = {k.path[-1]: tables.rows(k) for k in inputs}
        return evaluate_not_empty(tables.scan(key), input_rows)

    return PlannedCheck(
        AssetCheckSpec(
            NOT_EMPTY,
            asset=key,
            blocking=True,
            description=f"Not empty when its inputs ({', '.join(mart.inputs)}) are not.",
            additional_deps=inputs,
        ),
        evaluate,
        reads=(key, *inputs),
    )


def planned_gold_checks(mart: Mart) -> list[PlannedCheck]:
    """A mart's sanity checks, from the rules its declaration names."""
    checks = [] if mart.may_be_empty else [_not_empty(mart)]
    if mart.score_columns:
        columns = mart.score_columns
        checks.append(
            _check(
                mart,
                SCORES_IN_RANGE,
                f"{', '.join(columns)} within the score range "
                f"{_SCORE.minimum:g}..{_SCORE.maximum:g}.",
                lambda table: evaluate_scores_in_range(table, columns),
            )
        )
    if (top := mart.top_per_group) is not None:
        checks.append(
            _check(
                mart,
                f"at_most_{top.limit}_per_{top.group}",
                f"At most {top.limit} rows per {top.group}.",
                lambda table: evaluate_top_per_group(table, top),
            )
        )
    if (order := mart.rank_order) is not None:
        checks.append(
            _check(
                mart,
                RANKS_ORDERED,
                f"{order.rank} is 1..n in row order and {order.score} never increases with it.",
                lambda table: evaluate_rankings_ordered(table, order),
            )
        )
    return checks


def _step(name: str, marts: Sequence[Mart]) -> AssetChecksDefinition:
    return checks_step(
        name,
        [check for mart in marts for check in planned_gold_checks(mart)],
        description=f"Sanity of gold: {', '.join(mart.name for mart in marts)}.",
    )


def gold_checks() -> list[AssetChecksDefinition]:
    """A step for each mart another mart reads, one for all the others.

    A failed blocking check fails its step and so stops everything that waits for any check of
    that step: a mart read by another mart has a step of its own, so its failure stops exactly
    its readers and another mart's failure does not stop them.
    """
    names = {mart.name for mart in MARTS}
    read_by_gold = {table for mart in MARTS for table in mart.inputs if table in names}
    checked = [mart for mart in MARTS if planned_gold_checks(mart)]
    return [
        *(_step(f"gold_{m.name}_checks", [m]) for m in checked if m.name in read_by_gold),
        _step("gold_checks", [m for m in checked if m.name not in read_by_gold]),
    ]
