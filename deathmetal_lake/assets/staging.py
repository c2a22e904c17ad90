"""Staging: each ingest typed and checked once, when it arrives.

`staging/{dataset}/<ingest>.parquet` holds the ingest's silver columns, provenance and the first
row rule each row breaks (`_check_reason`). Silver then only merges staged ingests, so a new file
costs its own rows, not the lake's. Staging an ingest again (the same file version dropped back)
makes it its file's latest version again.
"""

from datetime import UTC, datetime

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetRecordsFilter,
    AssetsDefinition,
    AutomationCondition,
    DagsterInstance,
    Output,
    asset,
)

from deathmetal_lake.assets.bronze import bronze_key
from deathmetal_lake.assets.retry import STEP_RETRY_POLICY
from deathmetal_lake.datasets import DATASETS, Dataset
from deathmetal_lake.partitions import ingest_partitions
from deathmetal_lake.transforms.silver import CHECK_REASON_COLUMN, stage

# Partitioned by ingest like bronze, and run with it: the per-ingest half of the lake.
GROUP = "bronze"
_PAGE = 1000


def staging_key(dataset: Dataset) -> AssetKey:
    return AssetKey(["staging", dataset.name])


def staging_order(instance: DagsterInstance, dataset: Dataset) -> list[str]:
    """Staged ingests of a dataset, oldest first by their latest staging.

    This is upsert order: an ingest staged later is a later version of its file and wins ids.
    """
    latest: dict[str, int] = {}
    cursor = None
    while True:
        page = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=staging_key(dataset)),
            limit=_PAGE,
            cursor=cursor,
            ascending=True,
        )
        for record in page.records:
            if record.partition_key is not None:
                latest[record.partition_key] = record.storage_id
        if not page.has_more:
            return sorted(latest, key=latest.__getitem__)
        cursor = page.cursor


def build_staging_asset(dataset: Dataset) -> AssetsDefinition:
    @asset(
        key=staging_key(dataset),
        group_name=GROUP,
        partitions_def=ingest_partitions(dataset),
        ins={"bronze": AssetIn(bronze_key(dataset))},
        kinds={"polars", "parquet", "s3"},
        owners=["team:data-platform"],
        automation_condition=AutomationCondition.eager(),
        retry_policy=STEP_RETRY_POLICY,
        description=(
            f"`{dataset.name}` rows of one ingest typed and checked against the silver rules "
            f"(`{CHECK_REASON_COLUMN}`: the first rule a row breaks). Internal: silver merges "
            f"these. At `staging/{dataset.name}/<ingest>.parquet`."
        ),
    )
    def staging(context: AssetExecutionContext, bronze: pl.LazyFrame) -> Output[pl.LazyFrame]:
        staged = stage(dataset.name, bronze, current_year=datetime.now(UTC).year)
        return Output(staged, metadata={"ingest": context.partition_key})

    return staging


staging_assets = [build_staging_asset(dataset) for dataset in DATASETS]
