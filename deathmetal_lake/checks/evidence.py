"""What every check result carries, and how several checks share one Dagster step.

A user reads a failed check in the UI and acts on it without opening a notebook: every result
has its counts, its thresholds and a sample of the failing rows as a table (`failing_rows`).

Several checks share one step (`checks_step`) because each step costs a fixed overhead (event
log, process set-up) that dwarfs the work of a check on a lazy table. A step loads nothing up
front: each selected check scans the tables it reads through `LakeTables`, and a check whose
tables do not all exist yet is not evaluated (Dagster shows it as skipped), so one missing table
never fails the step nor the other checks in it.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
    multi_asset_check,
)

from deathmetal_lake.resources import LakeTables, TableMissing
from deathmetal_lake.rows import PROVENANCE_COLUMNS

SAMPLE_ROWS = 10
FAILING_ROWS = "failing_rows"
_CELL_TYPES = (str, int, float, bool)


def sample_lazy(
    rows: pl.LazyFrame, columns: Sequence[str] = (), order: Sequence[str] = ()
) -> pl.LazyFrame:
    """Up to SAMPLE_ROWS rows, the given columns then provenance, sorted by `order` then provenance.

    Tables stream in no guaranteed row order, so the sample is sorted; the sort keeps only the
    first SAMPLE_ROWS rows (a top-k), so a table where every row fails still costs little memory.
    """
    names = rows.collect_schema().names()
    wanted = [*columns, *(c for c in PROVENANCE_COLUMNS if c not in columns)]
    selected = rows.select([c for c in wanted if c in names])
    by = [c for c in dict.fromkeys([*order, *PROVENANCE_COLUMNS]) if c in names]
    return (selected.sort(by, nulls_last=True) if by else selected).head(SAMPLE_ROWS)


def collect_streaming(*frames: pl.LazyFrame) -> list[pl.DataFrame]:
    """The frames collected with the streaming engine: memory bounded by batches, not by tables."""
    return pl.collect_all(frames, engine="streaming")


def failing_rows_table(rows: pl.DataFrame) -> MetadataValue:
    """The sample as a UI table: each column with its Polars type, values the UI can show."""

    def cell(value: Any) -> str | int | float | bool | None:
        return value if value is None or isinstance(value, _CELL_TYPES) else str(value)

    return MetadataValue.table(
        records=[TableRecord({k: cell(v) for k, v in row.items()}) for row in rows.to_dicts()],
        schema=TableSchema(
            columns=[TableColumn(name, str(dtype)) for name, dtype in rows.schema.items()]
        ),
    )


def check_result(
    *,
    passed: bool,
    severity: AssetCheckSeverity = AssetCheckSeverity.ERROR,
    counts: Mapping[str, int | float],
    thresholds: Mapping[str, Any] | None = None,
    failing: pl.DataFrame | None = None,
    description: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> AssetCheckResult:
    """An AssetCheckResult with the evidence every lake check reports.

    `failing` is the sample (at most SAMPLE_ROWS rows are kept); `counts` holds the full counts.
    """
    sample = failing if failing is not None else pl.DataFrame()
    if "problem" in sample.columns and sample.height > SAMPLE_ROWS:
        # Every kind of problem gets a share of the sample (missing rows must not hide extras).
        share = max(1, SAMPLE_ROWS // sample["problem"].n_unique())
        sample = sample.group_by("problem", maintain_order=True).head(share)
    metadata: dict[str, Any] = {
        name: MetadataValue.int(int(v)) if isinstance(v, int) else MetadataValue.float(float(v))
        for name, v in counts.items()
    }
    metadata.update({f"threshold_{k}": v for k, v in (thresholds or {}).items()})
    metadata[FAILING_ROWS] = failing_rows_table(sample.head(SAMPLE_ROWS))
    metadata.update(extra or {})
    return AssetCheckResult(
        passed=passed, severity=severity, metadata=metadata, description=description
    )


# ---------------------------------------------------------------------------------------------
# Several checks in one step

# A check's evaluation in a step: the step's context and the lake's tables.
Evaluation = Callable[[AssetCheckExecutionContext, LakeTables], AssetCheckResult]


@dataclass(frozen=True)
class PlannedCheck:
    """One check of a `checks_step`: what the UI shows of it (`spec`), the tables it reads
    (`reads`: its asset or its additional deps) and how it is evaluated."""

    spec: AssetCheckSpec
    evaluate: Evaluation
    reads: tuple[AssetKey, ...] = ()

    def __post_init__(self) -> None:
        deps = {self.spec.asset_key, *(d.asset_key for d in self.spec.additional_deps)}
        undeclared = [k.to_user_string() for k in self.reads if k not in deps]
        if undeclared:
            raise ValueError(f"{self.spec.key.to_user_string()} reads undeclared {undeclared}")


def table_check(
    spec: AssetCheckSpec, evaluate: Callable[[pl.LazyFrame], AssetCheckResult]
) -> PlannedCheck:
    """A check that reads its own asset's table alone."""
    key = spec.asset_key
    return PlannedCheck(spec, lambda _, tables: evaluate(tables.scan(key)), reads=(key,))


def _evaluate_selected(
    context: AssetCheckExecutionContext, checks: Sequence[PlannedCheck], tables: LakeTables
) -> Iterator[AssetCheckResult]:
    selected = context.selected_asset_check_keys
    for check in checks:
        if check.spec.key not in selected:
            continue
        # A table not written yet is found when the check scans it: one listing, not two.
        try:
            result = check.evaluate(context, tables)
        except TableMissing as missing:
            if missing.key not in check.reads:
                raise
            context.log.warning(
                f"{check.spec.key.to_user_string()} skipped: {missing.key.to_user_string()} not "
                "in the lake yet; Dagster shows this execution as skipped, not failed."
            )
            continue
        yield AssetCheckResult(
            asset_key=check.spec.asset_key,
            check_name=check.spec.name,
            passed=result.passed,
            severity=result.severity,
            metadata=result.metadata,
            description=result.description,
        )


def checks_step(
    name: str,
    checks: Sequence[PlannedCheck],
    description: str,
) -> AssetChecksDefinition:
    """`checks` evaluated in one Dagster step; each reads its own tables when it runs.

    Each check keeps its own name, asset, blocking flag, automation condition and description;
    a run selecting only some of them evaluates only those, and reads only their tables. The
    tables are dependencies, not inputs: Dagster orders the step after them and loads nothing.
    A failed blocking check fails the whole step, so only checks whose blocking stops the same
    downstream assets belong in one step.
    """

    @multi_asset_check(
        name=name,
        specs=[check.spec for check in checks],
        can_subset=True,
        required_resource_keys={"tables"},
        description=description,
    )
    def step(context: AssetCheckExecutionContext) -> Iterator[AssetCheckResult]:
        yield from _evaluate_selected(context, checks, context.resources.tables)

    return step
