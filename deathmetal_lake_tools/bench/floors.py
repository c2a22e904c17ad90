"""The plain-Polars floors: the lake's bronze, silver and gold work without an orchestrator.

They use the project's own transforms: read each CSV (every column as text), write bronze Parquet
with the provenance columns, build the silver tables, quarantines and joins, and the gold marts;
once on local disk and once through the same emulator's S3, to show what the work itself costs.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deathmetal_lake.datasets import DATASETS
from deathmetal_lake_tools.bench.lake import stage
from deathmetal_lake_tools.bench.memory import PeakSampler

STAGES = ("bronze", "silver", "gold", "bronze+silver+gold")
# What each floor stage reads, for the table's "input" column.
STAGE_INPUT = {
    "bronze": "CSV",
    "silver": "bronze Parquet",
    "gold": "silver Parquet",
    "bronze+silver+gold": "CSV",
}


def run_floor(
    csv_dir: Path,
    root: str,
    storage_options: dict[str, Any] | None,
    sampler: PeakSampler,
    rows: int,
    size_of: Callable[[str], int],
) -> dict[str, dict[str, Any]]:
    """Bronze, silver and gold with plain Polars under `root` (a folder or an s3:// URL)."""
    import polars as pl

    from deathmetal_lake.assets.lineage import SILVER_TABLES
    from deathmetal_lake.rows import PARSE_ERROR as PARSE_ERROR_COLUMN
    from deathmetal_lake.rows import RAW as RAW_COLUMN
    from deathmetal_lake.transforms import joins, merge
    from deathmetal_lake.transforms.gold import MARTS

    options = {"storage_options": storage_options} if storage_options else {}
    ingest = {d.name: f"{d.name}-floor" for d in DATASETS}

    def path(*parts: str) -> str:
        return "/".join((root, *parts))

    def scan(table: str) -> pl.LazyFrame:
        layer = "silver" if table in SILVER_TABLES else "gold"
        return pl.scan_parquet(path(layer, f"{table}.parquet"), **options)

    if storage_options is None:
        for layer in ("silver", "quarantine", "gold", *(f"bronze/{d.name}" for d in DATASETS)):
            Path(root, layer).mkdir(parents=True, exist_ok=True)

    # An empty field is "" in the lake's JSON lines; Polars reads it as null unless told.
    if "empty_string_is_null" in inspect.signature(pl.scan_csv).parameters:
        empty_as_text = {"empty_string_is_null": False}
    else:  # polars < 1.43
        empty_as_text = {"missing_utf8_is_empty_string": True}

    def bronze() -> None:
        for dataset in DATASETS:
            source_file = f"{dataset.name}.csv"
            (
                pl.scan_csv(csv_dir / source_file, infer_schema=False, **empty_as_text)
                .with_row_index("_source_row", offset=1)
                .with_columns(
                    pl.lit(source_file).alias("_source_file"),
                    pl.col("_source_row").cast(pl.Int64),
                    pl.lit(ingest[dataset.name]).alias("_ingest_id"),
                    pl.lit(None, pl.String).alias(PARSE_ERROR_COLUMN),
                    pl.lit(None, pl.String).alias(RAW_COLUMN),
                )
                .sink_parquet(
                    path("bronze", dataset.name, f"{ingest[dataset.name]}.parquet"), **options
                )
            )

    def silver() -> None:
        year = datetime.now(UTC).year
        for dataset in DATASETS:
            key = ingest[dataset.name]
            bronze_frames = {
                key: pl.scan_parquet(path("bronze", dataset.name, f"{key}.parquet"), **options)
            }
            result = merge.build_silver(
                dataset.name,
                bronze_frames,
                [key],
                current_year=year,
                source_files={key: f"{dataset.name}.csv"},
            )
            # Both outputs in one query: Polars shares the typed, validated rows between them.
            pl.collect_all(
                [
                    result.table.sink_parquet(
                        path("silver", f"{dataset.name}.parquet"), lazy=True, **options
                    ),
                    result.quarantine.sink_parquet(
                        path("quarantine", f"{dataset.name}.parquet"), lazy=True, **options
                    ),
                ]
            )
        joins.music_catalog(scan("albums"), scan("bands")).sink_parquet(
            path("silver", "music_catalog.parquet"), **options
        )
        joins.album_reviews(scan("reviews"), scan("albums")).sink_parquet(
            path("silver", "album_reviews.parquet"), **options
        )

    def gold() -> None:
        for mart in MARTS:
            tables = {name: scan(name) for name in mart.inputs}
            mart.transform(**tables).sink_parquet(path("gold", f"{mart.name}.parquet"), **options)

    stages: dict[str, dict[str, Any]] = {}
    windows = []
    source_bytes = sum((csv_dir / f"{d.name}.csv").stat().st_size for d in DATASETS)
    inputs = {"bronze": lambda: source_bytes, "silver": lambda: size_of("bronze"),
              "gold": lambda: size_of("silver")}  # fmt: skip
    for name, work in (("bronze", bronze), ("silver", silver), ("gold", gold)):
        began_wall, began = time.time(), time.perf_counter()
        work()
        seconds = time.perf_counter() - began
        windows.append((began_wall, time.time()))
        stages[name] = stage(seconds, inputs[name](), rows, [windows[-1]], sampler)
    stages["bronze+silver+gold"] = stage(
        sum(stages[s]["seconds"] for s in ("bronze", "silver", "gold")),
        source_bytes,
        rows,
        windows,
        sampler,
    )
    return stages


def local_size(root: Path) -> Callable[[str], int]:
    def size(layer: str) -> int:
        return sum(p.stat().st_size for p in (root / layer).rglob("*.parquet"))

    return size
