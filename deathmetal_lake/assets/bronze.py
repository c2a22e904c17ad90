"""Bronze: one Parquet file per ingest, exactly the source rows, as text, with provenance.

Reads the landing objects its ingest was delivered in (recorded by the landing materialization)
and removes Firehose's at-least-once copies by (`_ingest_id`, `_source_row`).
"""

import io

import polars as pl
from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    AssetsDefinition,
    AutomationCondition,
    Failure,
    Output,
    asset,
)

from deathmetal_lake.assets.landing import DELIVERED_OBJECTS, landing_key
from deathmetal_lake.datasets import DATASETS, PROVENANCE_COLUMNS, Dataset
from deathmetal_lake.partitions import ingest_partitions
from deathmetal_lake.resources import LakeResource, LakeS3Resource
from deathmetal_lake.transforms.silver import bronze_schema

GROUP = "bronze"


def bronze_key(dataset: Dataset) -> AssetKey:
    return AssetKey([GROUP, dataset.name])


def read_landing_lines(bodies: list[bytes], ingest_id: str, dataset: Dataset) -> pl.DataFrame:
    """The ingest's lines from landing objects, delivery copies removed, in source order.

    Every value is JSON text, so inference yields strings; columns a file lacks entirely (the
    parse-error markers of a clean file, say) are added as null text so every ingest has the
    registry's columns.
    """
    expected = bronze_schema(dataset.name)
    frames = [
        pl.read_ndjson(io.BytesIO(body), infer_schema_length=None).filter(
            pl.col("_ingest_id") == ingest_id
        )
        for body in bodies
    ]
    lines = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame(schema=expected)
    missing = [
        pl.lit(None, dtype).alias(name)
        for name, dtype in expected.items()
        if name not in lines.columns
    ]
    return (
        lines.with_columns(missing)
        .with_columns(pl.col("_source_row").cast(pl.Int64))
        .unique(subset=["_ingest_id", "_source_row"], keep="first")
        .sort("_source_row")
    )


def build_bronze_asset(dataset: Dataset) -> AssetsDefinition:
    @asset(
        key=bronze_key(dataset),
        group_name=GROUP,
        partitions_def=ingest_partitions(dataset),
        deps=[AssetDep(landing_key(dataset))],
        kinds={"polars", "parquet", "s3"},
        owners=["team:data-platform"],
        metadata={"compression": "snappy"},
        # A landing partition materialized on its own (from the UI, say) brings its bronze along.
        automation_condition=AutomationCondition.eager(),
        description=(
            f"`{dataset.name}` rows of one ingest exactly once: every source column as text plus "
            f"{', '.join(PROVENANCE_COLUMNS)}. At `bronze/{dataset.name}/<ingest>.parquet`."
        ),
    )
    def bronze(
        context: AssetExecutionContext, lake: LakeResource, s3: LakeS3Resource
    ) -> Output[pl.DataFrame]:
        ingest_id = context.partition_key
        objects = _delivered_objects(context, dataset, ingest_id)
        s3_client = s3.get_client()
        bodies = [
            s3_client.get_object(Bucket=lake.bucket, Key=key)["Body"].read() for key in objects
        ]
        table = read_landing_lines(bodies, ingest_id, dataset)
        return Output(
            table,
            metadata={
                "landing_objects": len(objects),
                "copies_removed": sum(objects.values()) - table.height,
                "parse_error_rows": table["_parse_error"].is_not_null().sum(),
            },
        )

    return bronze


def _delivered_objects(
    context: AssetExecutionContext, dataset: Dataset, ingest_id: str
) -> dict[str, int]:
    """Landing objects holding this ingest's rows (and how many), as its landing run recorded."""
    result = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=landing_key(dataset), asset_partitions=[ingest_id]), limit=1
    )
    if not result.records:
        raise Failure(
            f"ingest {ingest_id} has no landing materialization; materialize landing first"
        )
    metadata = result.records[0].asset_materialization.metadata
    return metadata[DELIVERED_OBJECTS].value


bronze_assets = [build_bronze_asset(dataset) for dataset in DATASETS]
