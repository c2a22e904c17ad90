"""Contracts on the silver base tables, declared from `rules.RULES` and `rules.CONTRACTS`.

Per dataset: key unique and not null, required columns not null, column set and types, value
rules (scores, years) — ERROR and blocking, so gold does not build on a silver that broke them;
values outside the known set (band status) — WARN; foreign-key orphans — WARN up to the
dataset's `orphan_error_rate`, ERROR (blocking) above; quarantine rate — WARN above
`quarantine_warn_rate`. Adding a rule to `rules.py` adds it to the checks.

A foreign-key check reads two tables, so it has its own automation condition (`after_both_tables`):
it waits for the parent table, and runs again when either changes. The rest ride along. Every
evaluation streams (lazy aggregations over only the columns it needs, a sorted sample), and the
row-level rules read only the parts they have not verified yet (`checks.verified`).
"""

from collections.abc import Mapping
from datetime import UTC, datetime

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    AutomationCondition,
)

from deathmetal_lake.assets.silver import quarantine_key, silver_key
from deathmetal_lake.checks.evidence import (
    SAMPLE_ROWS,
    PlannedCheck,
    check_result,
    checks_step,
    collect_streaming,
    sample_lazy,
    table_check,
)
from deathmetal_lake.checks.reconciliation import planned_silver_check
from deathmetal_lake.checks.verified import part_check
from deathmetal_lake.datasets import DATASETS_BY_NAME
from deathmetal_lake.rules import (
    CONTRACTS,
    MAX_YEAR_AHEAD,
    MIN_YEAR,
    RULES,
    DatasetRules,
    ForeignKey,
    QualityContract,
)
from deathmetal_lake.transforms.silver import REJECT_REASON_COLUMN, silver_schema

KEY_UNIQUE_NOT_NULL = "key_unique_not_null"
REQUIRED_NOT_NULL = "required_not_null"
COLUMNS_AND_TYPES = "columns_and_types"
VALUES_IN_RANGE = "values_in_range"
KNOWN_VALUES = "known_values"
QUARANTINE_RATE = "quarantine_rate"


def foreign_key_check_name(fk: ForeignKey) -> str:
    return f"{fk.column}_in_{fk.references}"


def expected_schema(dataset: str) -> pl.Schema:
    """The silver table's columns and types, as the transform builds them from the rules."""
    return silver_schema(dataset)


# ---------------------------------------------------------------------------------------------
# Evaluations: plain Polars, one AssetCheckResult each


def _samples(*frames: pl.LazyFrame) -> pl.DataFrame:
    """The samples of several kinds of problem as one frame (their columns may differ)."""
    return pl.concat([pl.DataFrame(), *collect_streaming(*frames)], how="diagonal_relaxed")


def evaluate_key(table: pl.LazyFrame, rules: DatasetRules) -> AssetCheckResult:
    """Null and duplicate keys, counted on the key column alone (a group-by, not a window)."""
    key = rules.key
    keys = table.select(key)
    size, duplicates = collect_streaming(
        keys.select(pl.len().alias("rows"), pl.col(key).null_count().alias("null_keys")),
        keys.drop_nulls().group_by(key).len().filter(pl.col("len") > 1),
    )
    rows, null_keys = size.row(0)
    samples = []
    if null_keys:
        null_rows = table.filter(pl.col(key).is_null())
        samples.append(
            sample_lazy(null_rows.with_columns(problem=pl.lit("null key")), ["problem", key])
        )
    if duplicates.height:
        first_keys = duplicates[key].sort().head(SAMPLE_ROWS)
        copies = table.filter(pl.col(key).is_in(first_keys.implode()))
        samples.append(
            sample_lazy(
                copies.with_columns(problem=pl.lit("duplicate key")), ["problem", key], [key]
            )
        )
    return check_result(
        passed=not samples,
        counts={
            "rows": rows,
            "null_keys": null_keys,
            "duplicate_key_rows": int(duplicates["len"].sum()),
            "duplicate_keys": duplicates.height,
        },
        thresholds={"null_or_duplicate_keys": 0},
        failing=_samples(*samples),
    )


def evaluate_required(table: pl.LazyFrame, rules: DatasetRules) -> AssetCheckResult:
    required = [rules.key, *rules.required_columns]
    names = table.collect_schema().names()
    present = [c for c in required if c in names]
    absent = [c for c in required if c not in names]
    (size,) = collect_streaming(
        table.select(pl.len().alias("rows"), *(pl.col(c).null_count() for c in present))
    )
    rows, *nulls = size.row(0)
    null_counts = dict(zip(present, nulls, strict=True))
    failing = pl.DataFrame()
    if any(nulls):
        null_columns = pl.concat_str(
            [pl.when(pl.col(c).is_null()).then(pl.lit(c)) for c in present],
            separator=",",
            ignore_nulls=True,
        )
        failing = _samples(
            sample_lazy(
                table.filter(pl.any_horizontal(pl.col(c).is_null() for c in present)).with_columns(
                    null_columns.alias("null_columns")
                ),
                ["null_columns", *present],
                present,
            )
        )
    return check_result(
        passed=not any(nulls) and not absent,
        counts={"rows": rows, **{f"null_{c}": n for c, n in null_counts.items()}},
        thresholds={"required_columns": ", ".join(required), "nulls_allowed": 0},
        failing=failing,
        description=f"required columns absent from the table: {absent}" if absent else None,
    )


def evaluate_schema(table: pl.LazyFrame, dataset: str) -> AssetCheckResult:
    actual, expected = table.collect_schema(), expected_schema(dataset)
    diffs = [
        {"column": c, "expected": str(expected.get(c)), "actual": str(actual.get(c))}
        for c in [*expected.names(), *(c for c in actual.names() if c not in expected)]
        if expected.get(c) != actual.get(c)
    ]
    failing = pl.DataFrame(
        diffs, schema={"column": pl.String, "expected": pl.String, "actual": pl.String}
    )
    return check_result(
        passed=not diffs,
        counts={
            "expected_columns": len(expected),
            "actual_columns": len(actual),
            "missing_columns": sum(c not in actual for c in expected),
            "unexpected_columns": sum(c not in expected for c in actual),
            "type_changes": sum(c in actual and actual[c] != t for c, t in expected.items()),
        },
        thresholds={"schema": ", ".join(f"{c}:{t}" for c, t in expected.items())},
        failing=failing,
    )


def _count_rows_where(
    table: pl.LazyFrame, conditions: Mapping[str, pl.Expr]
) -> tuple[int, dict[str, int]]:
    """The table's rows and, per name, the rows where its condition holds (null: it does not)."""
    (size,) = collect_streaming(
        table.select(
            pl.len().alias("rows"),
            *(expr.fill_null(False).sum().alias(name) for name, expr in conditions.items()),
        )
    )
    rows, *counts = size.row(0)
    return rows, {name: int(n) for name, n in zip(conditions, counts, strict=True)}


def _value_ranges(rules: DatasetRules, current_year: int) -> dict[str, tuple[float, float]]:
    ranges = {s.name: (s.minimum, s.maximum) for s in rules.score_columns}
    return ranges | {c: (MIN_YEAR, current_year + MAX_YEAR_AHEAD) for c in rules.year_columns}


def evaluate_values(
    table: pl.LazyFrame, rules: DatasetRules, current_year: int
) -> AssetCheckResult:
    ranges = _value_ranges(rules, current_year)
    names = table.collect_schema().names()
    out_of_range = {
        column: ~pl.col(column).is_between(low, high)
        for column, (low, high) in ranges.items()
        if column in names
    }
    rows, counts = _count_rows_where(table, out_of_range)
    failing = _samples(
        *(
            sample_lazy(
                table.filter(expr.fill_null(False)).select(
                    pl.lit(column).alias("column"),
                    pl.col(column).cast(pl.String).alias("value"),
                    pl.exclude(column),
                ),
                ["column", "value", rules.key],
                [rules.key],
            )
            for column, expr in out_of_range.items()
            if counts[column]
        )
    )
    return check_result(
        passed=not any(counts.values()),
        counts={"rows": rows, **{f"out_of_range_{c}": n for c, n in counts.items()}},
        thresholds={f"range_{c}": f"{low:g}..{high:g}" for c, (low, high) in ranges.items()},
        failing=failing,
    )


def evaluate_known_values(table: pl.LazyFrame, rules: DatasetRules) -> AssetCheckResult:
    unknown = {
        column: pl.col(column).is_not_null() & ~pl.col(column).is_in(sorted(known))
        for column, known in rules.known_values.items()
    }
    rows, counts = _count_rows_where(table, unknown)
    failing = _samples(
        *(
            sample_lazy(
                table.filter(expr).with_columns(pl.lit(column).alias("column")),
                ["column", column, rules.key],
                [rules.key],
            )
            for column, expr in unknown.items()
            if counts[column]
        )
    )
    return check_result(
        passed=not any(counts.values()),
        severity=AssetCheckSeverity.WARN,
        counts={"rows": rows, **{f"unknown_{c}": n for c, n in counts.items()}},
        thresholds={f"known_{c}": ", ".join(sorted(k)) for c, k in rules.known_values.items()},
        failing=failing,
    )


def evaluate_foreign_key(
    child: pl.LazyFrame,
    parent: pl.LazyFrame,
    fk: ForeignKey,
    contract: QualityContract,
    parent_key: str = "id",
) -> AssetCheckResult:
    """Orphans by one anti join on the key columns alone; the sample's provenance is read after.

    The join carries only `fk.column` and `id`, and its result (two integers per orphan) is
    collected once for the counts and the sample; the first orphans' other columns are fetched
    by id afterwards, so the text columns are never read for the whole table.
    """
    keys = [fk.column, "id"]
    size, orphans = collect_streaming(
        child.select(pl.len()),
        child.select(keys)
        .filter(pl.col(fk.column).is_not_null())
        .join(parent.select(pl.col(parent_key).alias(fk.column)), on=fk.column, how="anti"),
    )
    rows = size.item()
    orphan_rows, orphan_keys = orphans.height, orphans[fk.column].n_unique()
    first = orphans.sort(keys).head(SAMPLE_ROWS)
    candidates = child.filter(pl.col("id").is_in(first["id"].implode()))
    sample = candidates.join(first.lazy(), on=keys, how="semi")
    failing = _samples(sample_lazy(sample, keys, keys)) if orphan_rows else None
    rate = orphan_rows / rows if rows else 0.0
    too_many = rate > contract.orphan_error_rate
    return check_result(
        passed=not orphan_rows,
        severity=AssetCheckSeverity.ERROR if too_many else AssetCheckSeverity.WARN,
        counts={
            "rows": rows,
            "orphan_rows": orphan_rows,
            "orphan_keys": orphan_keys,
            "orphan_rate": round(rate, 6),
        },
        thresholds={"orphan_warn_rate": 0.0, "orphan_error_rate": contract.orphan_error_rate},
        failing=failing,
        description=(
            f"{orphan_rows} of {rows} rows ({rate:.2%}) have a {fk.column} missing from "
            f"{fk.references}.id; ERROR above {contract.orphan_error_rate:.2%}"
        ),
    )


def evaluate_quarantine_rate(
    quarantine: pl.LazyFrame, table: pl.LazyFrame, contract: QualityContract
) -> AssetCheckResult:
    """Counts by reason; the sample shows every reason (a rare one is not crowded out)."""
    reason = pl.col(REJECT_REASON_COLUMN).str.split(":").list.first()
    by_reason, kept = collect_streaming(
        quarantine.group_by(reason.alias("reason")).len().sort(["len", "reason"], descending=True),
        table.select(pl.len()),
    )
    rejected = int(by_reason["len"].sum())
    total = kept.item() + rejected
    rate = rejected / total if total else 0.0
    share = SAMPLE_ROWS // max(1, by_reason.height) or 1
    failing = _samples(
        *(
            sample_lazy(quarantine.filter(reason == r), [REJECT_REASON_COLUMN, "id"]).head(share)
            for r in by_reason["reason"]
        )
    )
    return check_result(
        passed=rate <= contract.quarantine_warn_rate,
        severity=AssetCheckSeverity.WARN,
        counts={
            "bronze_rows": total,
            "quarantine_rows": rejected,
            "quarantine_rate": round(rate, 6),
            **{f"reason_{r['reason'].replace(' ', '_')}": r["len"] for r in by_reason.to_dicts()},
        },
        thresholds={"quarantine_warn_rate": contract.quarantine_warn_rate},
        failing=failing,
        description=f"{rejected} of {total} rows ({rate:.2%}) quarantined",
    )


# ---------------------------------------------------------------------------------------------
# Definitions: every contract of a dataset in one step


def after_both_tables() -> AutomationCondition:
    """For a check across two tables: run once both exist, again whenever either changes.

    Requested on the same tick as its asset, so it still runs, and blocks, in the asset's run.
    """
    return AutomationCondition.eager().with_label("after_both_tables")


def _foreign_key_check(dataset: str, fk: ForeignKey, contract: QualityContract) -> PlannedCheck:
    parent_key = RULES[fk.references].key
    child, parent = silver_key(dataset), silver_key(fk.references)
    return PlannedCheck(
        AssetCheckSpec(
            foreign_key_check_name(fk),
            asset=child,
            blocking=True,
            additional_deps=[parent],
            automation_condition=after_both_tables(),
            description=(
                f"`{fk.column}` in `{fk.references}.id`: orphans are a WARN up to "
                f"{contract.orphan_error_rate:.0%} of rows, an ERROR (blocking) above."
            ),
        ),
        lambda _, tables: evaluate_foreign_key(
            tables.scan(child), tables.scan(parent), fk, contract, parent_key
        ),
        reads=(child, parent),
    )


def _table_checks(dataset: str) -> list[PlannedCheck]:
    """The checks that read the silver table alone; the row-level ones, unverified parts only."""
    rules, key, schema = RULES[dataset], silver_key(dataset), expected_schema(dataset)

    def spec(name: str, description: str, *, blocking: bool = True) -> AssetCheckSpec:
        return AssetCheckSpec(name, asset=key, blocking=blocking, description=description)

    checks = [
        table_check(
            spec(KEY_UNIQUE_NOT_NULL, f"`{rules.key}` is never null and unique."),
            lambda table: evaluate_key(table, rules),
        ),
        part_check(
            spec(REQUIRED_NOT_NULL, f"Required columns are never null: {rules.required_columns}."),
            lambda: ", ".join([rules.key, *rules.required_columns]),
            schema,
            lambda table: evaluate_required(table, rules),
        ),
        table_check(
            spec(COLUMNS_AND_TYPES, "The column set and types are the ones the rules produce."),
            lambda table: evaluate_schema(table, dataset),
        ),
        part_check(
            spec(VALUES_IN_RANGE, "Scores in their range, years in MIN_YEAR..next year."),
            lambda: repr(_value_ranges(rules, datetime.now(UTC).year)),
            schema,
            lambda table: evaluate_values(table, rules, datetime.now(UTC).year),
        ),
    ]
    if rules.known_values:
        checks.append(
            part_check(
                spec(
                    KNOWN_VALUES,
                    f"Values in their known set: {sorted(rules.known_values)} (WARN).",
                    blocking=False,
                ),
                lambda: repr(sorted((c, sorted(k)) for c, k in rules.known_values.items())),
                schema,
                lambda table: evaluate_known_values(table, rules),
            )
        )
    return checks


def planned_contract_checks(dataset: str) -> list[PlannedCheck]:
    """A dataset's contracts from its rules: each check's spec (the UI's) and evaluation."""
    rules, contract = RULES[dataset], CONTRACTS[dataset]
    key, quarantine = silver_key(dataset), quarantine_key(DATASETS_BY_NAME[dataset])
    return [
        *_table_checks(dataset),
        planned_silver_check(DATASETS_BY_NAME[dataset]),
        *(_foreign_key_check(dataset, fk, contract) for fk in rules.foreign_keys),
        PlannedCheck(
            AssetCheckSpec(
                QUARANTINE_RATE,
                asset=quarantine,
                additional_deps=[key],
                description=f"WARN when more than {contract.quarantine_warn_rate:.1%} of rows are "
                "quarantined; counts by reason.",
            ),
            lambda _, tables: evaluate_quarantine_rate(
                tables.scan(quarantine), tables.scan(key), contract
            ),
            reads=(quarantine, key),
        ),
    ]


def build_contract_checks(dataset: str) -> AssetChecksDefinition:
    """Every contract of a dataset, and its reconciliation, in one step; each check reads its
    tables when it runs.

    One step and not one per check: each step costs a fixed Dagster overhead, larger than the
    streaming evaluation itself. Its blocking checks all guard `silver/{dataset}`, so a failure
    stops exactly what one of them alone would.
    """
    return checks_step(
        f"silver_{dataset}_contracts",
        planned_contract_checks(dataset),
        description=f"The contracts and reconciliation of silver/{dataset}, its quarantine rate.",
    )


def contract_checks() -> list[AssetChecksDefinition]:
    return [build_contract_checks(dataset) for dataset in RULES]
