"""Row-level checks of a folder table read only the parts they have not verified yet.

A rule that holds row by row (required columns, value ranges, known values, an ingest's bronze
rows = its silver rows + its quarantine rows) keeps holding for a part as long as the part is
unchanged. So a check that passes records every part's version (`lake/verified_parts` in its
metadata), and its next evaluation reads only the parts whose version differs from its newest
passing evaluation: an increment costs its own parts, not the table. A failed evaluation verifies
nothing, so what failed is read again until it passes; parts verified under other rules (a
threshold changed) count as unverified.
"""

from collections.abc import Callable, Mapping

import polars as pl
from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSpec,
    DagsterInstance,
    MetadataValue,
)

from deathmetal_lake.checks.evidence import PlannedCheck
from deathmetal_lake.resources import LakeTables, TableMissing

VERIFIED_PARTS = "lake/verified_parts"
# How far back the newest passing evaluation is looked for; beyond, every part is read again.
_HISTORY = 20


def last_verified(instance: DagsterInstance, check: AssetCheckKey, rules: str) -> dict[str, str]:
    """Part -> version, as the check's newest passing evaluation under `rules` verified them."""
    history = instance.event_log_storage.get_asset_check_execution_history(check, limit=_HISTORY)
    for record in history:
        evaluation = record.event.dagster_event.event_specific_data if record.event else None
        if not isinstance(evaluation, AssetCheckEvaluation) or not evaluation.passed:
            continue
        entry = evaluation.metadata.get(VERIFIED_PARTS)
        recorded = entry.value if entry is not None else None
        if isinstance(recorded, dict) and recorded.get("rules") == rules:
            return dict(recorded["parts"])
        return {}
    return {}


def unverified(versions: Mapping[str, str], verified: Mapping[str, str]) -> list[str]:
    """The parts whose version is not the one verified, sorted."""
    return sorted(part for part, version in versions.items() if verified.get(part) != version)


def with_verification(
    result: AssetCheckResult, rules: str, versions: Mapping[str, str], checked: int
) -> AssetCheckResult:
    """The result with how many parts it read; a passing one also records what it verified."""
    metadata = {**result.metadata, "parts": len(versions), "parts_checked": checked}
    if result.passed:
        metadata[VERIFIED_PARTS] = MetadataValue.json({"rules": rules, "parts": dict(versions)})
    return AssetCheckResult(
        passed=result.passed,
        severity=result.severity,
        metadata=metadata,
        description=result.description,
    )


def part_check(
    spec: AssetCheckSpec,
    rules: Callable[[], str],
    empty: pl.Schema,
    evaluate: Callable[[pl.LazyFrame], AssetCheckResult],
) -> PlannedCheck:
    """A row-level check of its asset's folder table, evaluated on the unverified parts only.

    `rules` names what the check enforces (its thresholds); `empty` is the table's schema, for
    an evaluation with no part to read.
    """
    key = spec.asset_key

    def evaluate_parts(context: AssetCheckExecutionContext, tables: LakeTables) -> AssetCheckResult:
        versions = tables.part_versions(key)
        if not versions:
            raise TableMissing(key)
        enforced = rules()
        todo = unverified(versions, last_verified(context.instance, spec.key, enforced))
        rows = tables.scan_parts(key, todo) if todo else pl.LazyFrame(schema=empty)
        return with_verification(evaluate(rows), enforced, versions, len(todo))

    return PlannedCheck(spec, evaluate_parts, reads=(key,))
