"""Bronze: one Parquet file per ingest, exactly the source rows, as text, with provenance.

Reads the landing objects its ingest's `LandingManifest` names and removes Firehose's
at-least-once copies by (`_ingest_id`, `_source_row`).
"""

from collections.abc import Mapping

import polars as pl
from dagster import AssetIn, AssetKey, AssetsDefinition, AutomationCondition, Output, asset

from deathmetal_lake.assets.landing import landing_key
from deathmetal_lake.assets.retry import STEP_RETRY_POLICY
from deathmetal_lake.datasets import DATASETS, Dataset
from deathmetal_lake.manifest import LandingManifest
from deathmetal_lake.partitions import ingest_partitions
from deathmetal_lake.resources import LakeResource
from deathmetal_lake.rows import INGEST_ID, PROVENANCE_COLUMNS, SOURCE_ROW
from deathmetal_lake.transforms.silver import bronze_schema

GROUP = "bronze"


def bronze_key(dataset: Dataset) -> AssetKey:
    return AssetKey([GROUP, dataset.name])


def landing_lines(
    uris: list[str], ingest_id: str, schema: Mapping[str, pl.DataType], storage_options: dict
) -> pl.LazyFrame:
    """The ingest's lines from its landing objects, delivery copies removed, in delivery order.

    Lazy, so the IO manager streams it into Parquet: a large ingest is never held whole in memory.
    Not sorted (a sort holds the whole ingest); `_source_row` is there for anyone who needs
    source order.
    """
    if not uris:
        return pl.LazyFrame(schema=schema)
    return (
        pl.scan_ndjson(uris, schema=schema, storage_options=storage_options)
        .filter(pl.col(INGEST_ID) == ingest_id)
        .filter(pl.col(SOURCE_ROW).is_first_distinct())
    )


def bronze_columns(dataset: Dataset, source_columns: list[str]) -> dict[str, pl.DataType]:
    """The registry's bronze columns plus any extra columns the file had, all text."""
    schema = dict(bronze_schema(dataset.name))
    extras = {column: pl.String() for column in source_columns if column not in schema}
    return {**schema, **extras}


def build_bronze_asset(dataset: Dataset) -> AssetsDefinition:
    @asset(
        key=bronze_key(dataset),
        group_name=GROUP,
        partitions_def=ingest_partitions(dataset),
        ins={"landing": AssetIn(landing_key(dataset))},
        kinds={"polars", "parquet", "s3"},
        owners=["team:data-platform"],
        metadata={"compression": "snappy"},
        # A landing partition materialized on its own (from the UI, say) brings its bronze along.
        automation_condition=AutomationCondition.eager(),
        retry_policy=STEP_RETRY_POLICY,
        description=(
            f"`{dataset.name}` rows of one ingest exactly once: every source column as text plus "
            f"{', '.join(PROVENANCE_COLUMNS)}. At `bronze/{dataset.name}/<ingest>.parquet`."
        ),
    )
    def bronze(lake: LakeResource, landing: LandingManifest) -> Output[pl.LazyFrame]:
        bucket = lake.settings.bucket
        lines = landing_lines(
            [f"s3://{bucket}/{key}" for key in landing.objects],
            landing.ingest_id,
            bronze_columns(dataset, landing.source_columns),
            lake.polars_storage_options(),
        )
        return Output(
            lines,
            metadata={
                "dagster/partition_row_count": landing.delivered_rows,
                "landing_objects": len(landing.objects),
                "copies_removed": landing.delivered_copies,
                "parse_error_rows": landing.parse_error_rows,
            },
        )

    return bronze


bronze_assets = [build_bronze_asset(dataset) for dataset in DATASETS]
