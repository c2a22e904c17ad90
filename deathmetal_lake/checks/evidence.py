"""What every check result carries: counts, thresholds and a sample of the failing rows.

A user reads a failed check in the UI and acts on it without opening a notebook: the sample is a
Markdown table (`failing_rows`) and the same rows as JSON (`failing_rows_json`) for tools.

Also how checks run: several checks share one Dagster step (`checks_step`), because each step
costs a fixed overhead (event log, input loading) that dwarfs the work of a check on a lazy table.
"""

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow.parquet as pq
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetIn,
    AssetKey,
    MetadataValue,
    multi_asset_check,
)
from upath import UPath

from deathmetal_lake.rows import PROVENANCE_COLUMNS

SAMPLE_ROWS = 10
_MAX_CELL = 80


def sample_rows(rows: pl.DataFrame, columns: Sequence[str] = ()) -> pl.DataFrame:
    """Up to SAMPLE_ROWS rows: the given columns first, then the provenance columns present."""
    wanted = [*columns, *(c for c in PROVENANCE_COLUMNS if c not in columns)]
    return rows.select([c for c in wanted if c in rows.columns]).head(SAMPLE_ROWS)


def sample_lazy(
    rows: pl.LazyFrame, columns: Sequence[str] = (), order: Sequence[str] = ()
) -> pl.LazyFrame:
    """`sample_rows` of a lazy frame, sorted by `order` then provenance: bounded and deterministic.

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


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 1] + "…"


def markdown_table(rows: pl.DataFrame) -> str:
    if rows.is_empty():
        return "_no failing rows_"
    header = "| " + " | ".join(rows.columns) + " |"
    rule = "| " + " | ".join("---" for _ in rows.columns) + " |"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows.iter_rows()]
    return "\n".join([header, rule, *body])


def _json_ready(rows: pl.DataFrame) -> list[dict[str, Any]]:
    return [
        {
            k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
            for k, v in r.items()
        }
        for r in rows.to_dicts()
    ]


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
    sample = sample.head(SAMPLE_ROWS)
    metadata: dict[str, Any] = {
        name: MetadataValue.int(int(v)) if isinstance(v, int) else MetadataValue.float(float(v))
        for name, v in counts.items()
    }
    metadata.update({f"threshold_{k}": v for k, v in (thresholds or {}).items()})
    metadata["failing_rows"] = MetadataValue.md(markdown_table(sample))
    metadata["failing_rows_json"] = MetadataValue.json(_json_ready(sample))
    metadata.update(extra or {})
    return AssetCheckResult(
        passed=passed, severity=severity, metadata=metadata, description=description
    )


def _lake_path(io_manager: Any, path: str) -> UPath:
    """`{base_dir}/{path}.parquet` (the contract's layout) with the IO manager's storage options.

    So checks read the lake exactly where and how the IO manager writes it, on S3 or on a local
    directory alike.
    """
    return UPath(io_manager.base_dir, **io_manager.storage_options).joinpath(
        *f"{path}.parquet".split("/")
    )


def parquet_rows(io_manager: Any, path: str) -> int | None:
    """Row count of the lake's Parquet file at `path` from its footer, None when absent."""
    try:
        with _lake_path(io_manager, path).open("rb") as f:
            return pq.ParquetFile(f).metadata.num_rows
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------
# Several checks in one step

# A check's evaluation in a step: the step's context and its input tables by input name.
Evaluation = Callable[[AssetCheckExecutionContext, Mapping[str, pl.LazyFrame]], AssetCheckResult]


@dataclass(frozen=True)
class PlannedCheck:
    """One check of a `checks_step`: what the UI shows of it (`spec`) and how it is evaluated."""

    spec: AssetCheckSpec
    evaluate: Evaluation


def checks_step(
    name: str,
    checks: Sequence[PlannedCheck],
    ins: Mapping[str, AssetKey],
    description: str,
    required_resource_keys: frozenset[str] = frozenset(),
) -> AssetChecksDefinition:
    """`checks` evaluated in one Dagster step, `ins` (input name -> asset) loaded once, lazily.

    Each check keeps its own name, asset, blocking flag and description; a run selecting only
    some of them evaluates only those. A failed blocking check fails the whole step, so only
    checks whose blocking stops the same downstream assets belong in one step.
    """

    def step(
        context: AssetCheckExecutionContext, **tables: pl.LazyFrame
    ) -> Iterator[AssetCheckResult]:
        selected = context.selected_asset_check_keys
        for check in checks:
            if check.spec.key in selected:
                result = check.evaluate(context, tables)
                yield AssetCheckResult(
                    asset_key=check.spec.asset_key,
                    check_name=check.spec.name,
                    passed=result.passed,
                    severity=result.severity,
                    metadata=result.metadata,
                    description=result.description,
                )

    # The inputs are named parameters annotated LazyFrame, so the IO manager scans the tables
    # instead of reading them whole: Dagster reads a function's inputs and their types from its
    # `__signature__`, and an AssetIn cannot carry the type of an asset the checks also target.
    step.__signature__ = inspect.Signature(
        [
            inspect.Parameter("context", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            *(
                inspect.Parameter(
                    input_name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=pl.LazyFrame
                )
                for input_name in ins
            ),
        ],
        return_annotation=Iterator[AssetCheckResult],
    )
    return multi_asset_check(
        name=name,
        specs=[check.spec for check in checks],
        ins={input_name: AssetIn(key=key) for input_name, key in ins.items()},
        can_subset=True,
        required_resource_keys=set(required_resource_keys),
        description=description,
    )(step)
