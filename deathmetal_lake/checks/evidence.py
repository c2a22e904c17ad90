"""What every check result carries: counts, thresholds and a sample of the failing rows.

A user reads a failed check in the UI and acts on it without opening a notebook: the sample is a
Markdown table (`failing_rows`) and the same rows as JSON (`failing_rows_json`) for tools.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl
import pyarrow.parquet as pq
from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue
from upath import UPath

from deathmetal_lake.datasets import PROVENANCE_COLUMNS

SAMPLE_ROWS = 10
_MAX_CELL = 80


def sample_rows(rows: pl.DataFrame, columns: Sequence[str] = ()) -> pl.DataFrame:
    """Up to SAMPLE_ROWS rows: the given columns first, then the provenance columns present."""
    wanted = [*columns, *(c for c in PROVENANCE_COLUMNS if c not in columns)]
    return rows.select([c for c in wanted if c in rows.columns]).head(SAMPLE_ROWS)


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


def read_lake_parquet(io_manager: Any, path: str) -> pl.DataFrame | None:
    """The lake's Parquet file at `path` (no extension), or None when it does not exist."""
    try:
        with _lake_path(io_manager, path).open("rb") as f:
            return pl.read_parquet(f)
    except FileNotFoundError:
        return None


def parquet_rows(io_manager: Any, path: str) -> int | None:
    """Row count of the lake's Parquet file at `path` from its footer, None when absent."""
    try:
        with _lake_path(io_manager, path).open("rb") as f:
            return pq.ParquetFile(f).metadata.num_rows
    except FileNotFoundError:
        return None
