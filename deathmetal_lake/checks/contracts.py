"""Contracts on the silver base tables, declared from `rules.RULES` and `rules.CONTRACTS`.

Per dataset: key unique and not null, required columns not null, column set and types, value
rules (scores, years) — ERROR and blocking, so gold does not build on a silver that broke them;
values outside the known set (band status) — WARN; foreign-key orphans — WARN up to the
dataset's `orphan_error_rate`, ERROR (blocking) above; quarantine rate — WARN above
`quarantine_warn_rate`. Adding a rule to `rules.py` adds it to the checks.
"""

from datetime import UTC, datetime

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetIn,
    asset_check,
)

from deathmetal_lake.assets.silver import quarantine_key, silver_key
from deathmetal_lake.checks.evidence import check_result, sample_rows
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
from deathmetal_lake.transforms.silver import REJECT_REASON_COLUMN, build_silver

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
    return build_silver(dataset, {}, [], current_year=2000).table.collect_schema()


# ---------------------------------------------------------------------------------------------
# Evaluations: plain Polars, one AssetCheckResult each


def evaluate_key(table: pl.LazyFrame, rules: DatasetRules) -> AssetCheckResult:
    key = rules.key
    rows = table.with_columns(pl.len().over(key).alias("copies")).collect()
    null_keys = rows.filter(pl.col(key).is_null())
    duplicates = rows.filter(pl.col(key).is_not_null() & (pl.col("copies") > 1)).sort(key)
    failing = pl.concat(
        [
            sample_rows(
                null_keys.with_columns(pl.lit("null key").alias("problem")), ["problem", key]
            ),
            sample_rows(
                duplicates.with_columns(pl.lit("duplicate key").alias("problem")), ["problem", key]
            ),
        ],
        how="diagonal_relaxed",
    )
    return check_result(
        passed=failing.is_empty(),
        counts={
            "rows": rows.height,
            "null_keys": null_keys.height,
            "duplicate_key_rows": duplicates.height,
            "duplicate_keys": duplicates[key].n_unique(),
        },
        thresholds={"null_or_duplicate_keys": 0},
        failing=failing,
    )


def evaluate_required(table: pl.LazyFrame, rules: DatasetRules) -> AssetCheckResult:
    required = [rules.key, *rules.required_columns]
    rows = table.collect()
    null_counts = {c: rows[c].null_count() for c in required if c in rows.columns}
    absent = [c for c in required if c not in rows.columns]
    failing_rows = rows.filter(pl.any_horizontal(pl.col(c).is_null() for c in null_counts))
    failing = sample_rows(
        failing_rows.with_columns(
            pl.concat_str(
                [pl.when(pl.col(c).is_null()).then(pl.lit(c)) for c in null_counts],
                separator=",",
                ignore_nulls=True,
            ).alias("null_columns")
        ),
        ["null_columns", *null_counts],
    )
    return check_result(
        passed=failing_rows.is_empty() and not absent,
        counts={"rows": rows.height, **{f"null_{c}": n for c, n in null_counts.items()}},
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


def evaluate_values(
    table: pl.LazyFrame, rules: DatasetRules, current_year: int
) -> AssetCheckResult:
    last_year = current_year + MAX_YEAR_AHEAD
    ranges = {s.name: (s.minimum, s.maximum) for s in rules.score_columns}
    ranges |= {c: (MIN_YEAR, last_year) for c in rules.year_columns}
    rows = table.collect()
    out_of_range = {
        column: ~pl.col(column).is_between(low, high)
        for column, (low, high) in ranges.items()
        if column in rows.columns
    }
    bad = {c: rows.filter(expr.fill_null(False)) for c, expr in out_of_range.items()}
    failing = pl.concat(
        [
            sample_rows(
                frame.select(
                    pl.lit(column).alias("column"),
                    pl.col(column).cast(pl.String).alias("value"),
                    pl.exclude(column),
                ),
                ["column", "value", rules.key],
            )
            for column, frame in bad.items()
        ]
        or [pl.DataFrame()],
        how="diagonal_relaxed",
    )
    return check_result(
        passed=all(frame.is_empty() for frame in bad.values()),
        counts={"rows": rows.height, **{f"out_of_range_{c}": f.height for c, f in bad.items()}},
        thresholds={f"range_{c}": f"{low:g}..{high:g}" for c, (low, high) in ranges.items()},
        failing=failing,
    )


def evaluate_known_values(table: pl.LazyFrame, rules: DatasetRules) -> AssetCheckResult:
    rows = table.collect()
    unknown = {
        column: rows.filter(pl.col(column).is_not_null() & ~pl.col(column).is_in(sorted(known)))
        for column, known in rules.known_values.items()
    }
    failing = pl.concat(
        [
            sample_rows(frame.with_columns(pl.lit(c).alias("column")), ["column", c, rules.key])
            for c, frame in unknown.items()
        ]
        or [pl.DataFrame()],
        how="diagonal_relaxed",
    )
    return check_result(
        passed=all(f.is_empty() for f in unknown.values()),
        severity=AssetCheckSeverity.WARN,
        counts={"rows": rows.height, **{f"unknown_{c}": f.height for c, f in unknown.items()}},
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
    rows = child.select(pl.len()).collect().item()
    orphans = (
        child.filter(pl.col(fk.column).is_not_null())
        .join(parent.select(pl.col(parent_key).alias(fk.column)), on=fk.column, how="anti")
        .collect()
    )
    rate = orphans.height / rows if rows else 0.0
    too_many = rate > contract.orphan_error_rate
    return check_result(
        passed=orphans.is_empty(),
        severity=AssetCheckSeverity.ERROR if too_many else AssetCheckSeverity.WARN,
        counts={
            "rows": rows,
            "orphan_rows": orphans.height,
            "orphan_keys": orphans[fk.column].n_unique(),
            "orphan_rate": round(rate, 6),
        },
        thresholds={"orphan_warn_rate": 0.0, "orphan_error_rate": contract.orphan_error_rate},
        failing=sample_rows(orphans.sort(fk.column), [fk.column, "id"]),
        description=(
            f"{orphans.height} of {rows} rows ({rate:.2%}) have a {fk.column} missing from "
            f"{fk.references}.id; ERROR above {contract.orphan_error_rate:.2%}"
        ),
    )


def evaluate_quarantine_rate(
    quarantine: pl.LazyFrame, table: pl.LazyFrame, contract: QualityContract
) -> AssetCheckResult:
    rejected = quarantine.collect()
    kept = table.select(pl.len()).collect().item()
    total = kept + rejected.height
    rate = rejected.height / total if total else 0.0
    reason = pl.col(REJECT_REASON_COLUMN).str.split(":").list.first()
    by_reason = (
        rejected.group_by(reason.alias("reason")).len().sort("len", descending=True).to_dicts()
        if rejected.height
        else []
    )
    return check_result(
        passed=rate <= contract.quarantine_warn_rate,
        severity=AssetCheckSeverity.WARN,
        counts={
            "bronze_rows": total,
            "quarantine_rows": rejected.height,
            "quarantine_rate": round(rate, 6),
            **{f"reason_{r['reason'].replace(' ', '_')}": r["len"] for r in by_reason},
        },
        thresholds={"quarantine_warn_rate": contract.quarantine_warn_rate},
        failing=sample_rows(rejected, [REJECT_REASON_COLUMN, "id"]),
        description=f"{rejected.height} of {total} rows ({rate:.2%}) quarantined",
    )


# ---------------------------------------------------------------------------------------------
# Definitions


def build_contract_checks(dataset: str) -> list[AssetChecksDefinition]:
    rules, contract = RULES[dataset], CONTRACTS[dataset]
    key = silver_key(dataset)

    @asset_check(
        asset=key,
        name=KEY_UNIQUE_NOT_NULL,
        blocking=True,
        description=f"`{rules.key}` is never null and unique.",
    )
    def key_check(table: pl.LazyFrame) -> AssetCheckResult:
        return evaluate_key(table, rules)

    @asset_check(
        asset=key,
        name=REQUIRED_NOT_NULL,
        blocking=True,
        description=f"Required columns are never null: {rules.required_columns}.",
    )
    def required_check(table: pl.LazyFrame) -> AssetCheckResult:
        return evaluate_required(table, rules)

    @asset_check(
        asset=key,
        name=COLUMNS_AND_TYPES,
        blocking=True,
        description="The column set and types are the ones the rules produce.",
    )
    def schema_check(table: pl.LazyFrame) -> AssetCheckResult:
        return evaluate_schema(table, dataset)

    @asset_check(
        asset=key,
        name=VALUES_IN_RANGE,
        blocking=True,
        description="Scores in their range, years in MIN_YEAR..next year.",
    )
    def values_check(table: pl.LazyFrame) -> AssetCheckResult:
        return evaluate_values(table, rules, datetime.now(UTC).year)

    checks = [key_check, required_check, schema_check, values_check]
    if rules.known_values:

        @asset_check(
            asset=key,
            name=KNOWN_VALUES,
            description=f"Values in their known set: {sorted(rules.known_values)} (WARN).",
        )
        def known_check(table: pl.LazyFrame) -> AssetCheckResult:
            return evaluate_known_values(table, rules)

        checks.append(known_check)
    checks += [_foreign_key_check(dataset, fk, contract) for fk in rules.foreign_keys]

    @asset_check(
        asset=quarantine_key(DATASETS_BY_NAME[dataset]),
        name=QUARANTINE_RATE,
        additional_ins={"table": AssetIn(key=key)},
        description=f"WARN when more than {contract.quarantine_warn_rate:.1%} of rows are "
        "quarantined; counts by reason.",
    )
    def quarantine_check(quarantine: pl.LazyFrame, table: pl.LazyFrame) -> AssetCheckResult:
        return evaluate_quarantine_rate(quarantine, table, contract)

    return [*checks, quarantine_check]


def _foreign_key_check(
    dataset: str, fk: ForeignKey, contract: QualityContract
) -> AssetChecksDefinition:
    @asset_check(
        asset=silver_key(dataset),
        name=foreign_key_check_name(fk),
        blocking=True,
        additional_ins={"parent": AssetIn(key=silver_key(fk.references))},
        description=(
            f"`{fk.column}` in `{fk.references}.id`: orphans are a WARN up to "
            f"{contract.orphan_error_rate:.0%} of rows, an ERROR (blocking) above."
        ),
    )
    def foreign_key_check(table: pl.LazyFrame, parent: pl.LazyFrame) -> AssetCheckResult:
        return evaluate_foreign_key(table, parent, fk, contract)

    return foreign_key_check


def contract_checks() -> list[AssetChecksDefinition]:
    return [check for dataset in RULES for check in build_contract_checks(dataset)]
