"""Silver: typed, validated, upserted base tables, their quarantine, and the two joins.

A base table is rebuilt from the bronze ingests of its dataset: the latest ingest of each source
file counts, rows are upserted by `id` across files, and every rejected row goes to
`quarantine/{dataset}` with its reason, so bronze rows = silver rows + quarantine rows.
"""

from collections.abc import Iterator
from datetime import UTC, datetime

import polars as pl
from dagster import (
    AllPartitionMapping,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetOut,
    AssetsDefinition,
    MetadataValue,
    Output,
    asset,
    multi_asset,
)

from deathmetal_lake.assets.bronze import bronze_key
from deathmetal_lake.assets.lineage import column_lineage
from deathmetal_lake.automation import follow_ingests, follow_upstream
from deathmetal_lake.datasets import DATASETS, Dataset
from deathmetal_lake.partitions import ingest_partitions
from deathmetal_lake.rows import IngestKey
from deathmetal_lake.transforms import silver as transforms

GROUP = "silver"
KINDS = {"polars", "parquet", "s3"}


def silver_key(table: str) -> AssetKey:
    return AssetKey([GROUP, table])


def quarantine_key(dataset: Dataset) -> AssetKey:
    return AssetKey(["quarantine", dataset.name])


def _source_file(ingest_id: str) -> str:
    return IngestKey.parse(ingest_id).source_file


def build_silver_asset(dataset: Dataset) -> AssetsDefinition:
    partitions = ingest_partitions(dataset)

    @multi_asset(
        name=f"silver_{dataset.name}",
        outs={
            "table": AssetOut(
                key=silver_key(dataset.name),
                group_name=GROUP,
                kinds=KINDS,
                owners=["team:data-platform"],
                description=(
                    f"`{dataset.name}`: typed and cleaned, one row per id (latest ingest wins), "
                    f"from the latest ingest of every source file. "
                    f"At `silver/{dataset.name}.parquet`."
                ),
                metadata={"descriptions": transforms.SILVER_COLUMN_DESCRIPTIONS[dataset.name]},
                automation_condition=follow_ingests(),
                dagster_type=pl.LazyFrame,
            ),
            "quarantine": AssetOut(
                key=quarantine_key(dataset),
                group_name=GROUP,
                kinds=KINDS,
                owners=["team:data-platform"],
                description=(
                    f"`{dataset.name}` rows that broke a rule, with every bronze column and "
                    f"`_reject_reason`. At `quarantine/{dataset.name}.parquet`."
                ),
                automation_condition=follow_ingests(),
                dagster_type=pl.LazyFrame,
            ),
        },
        ins={
            "bronze": AssetIn(
                key=bronze_key(dataset),
                partition_mapping=AllPartitionMapping(),
                metadata={"allow_missing_partitions": True},
            )
        },
    )
    def silver(
        context: AssetExecutionContext, bronze: dict[str, pl.LazyFrame]
    ) -> Iterator[Output[pl.LazyFrame]]:
        order = [
            key for key in context.instance.get_dynamic_partitions(partitions.name) if key in bronze
        ]
        source_files = {key: _source_file(key) for key in order}
        plan = transforms.plan_silver(
            dataset.name,
            bronze,
            order,
            current_year=datetime.now(UTC).year,
            source_files=source_files,
        )
        # The rejected rows are few; deciding them first lets both outputs stream into Parquet.
        rejected = plan.rejected.collect(engine="streaming")
        result = plan.split(rejected.lazy())
        bronze_rows = plan.rows.select(pl.len()).collect(engine="streaming").item()
        reasons = rejected.group_by(transforms.REJECT_REASON_COLUMN).len()
        ingests = sorted({source_files[key] for key in order})
        yield Output(
            result.table,
            output_name="table",
            metadata={
                "dagster/row_count": bronze_rows - rejected.height,
                "bronze_rows": bronze_rows,
                "quarantine_rows": rejected.height,
                "ingests_used": MetadataValue.json(
                    {name: [k for k in order if source_files[k] == name][-1] for name in ingests}
                ),
            },
        )
        yield Output(
            result.quarantine,
            output_name="quarantine",
            metadata={
                "dagster/row_count": rejected.height,
                "reasons": MetadataValue.json(
                    {row[transforms.REJECT_REASON_COLUMN]: row["len"] for row in reasons.to_dicts()}
                ),
            },
        )

    return silver


def _join_asset(
    name: str, left_table: str, right_table: str, foreign_key: str, description: str
) -> AssetsDefinition:
    build = getattr(transforms, name)

    @asset(
        key=silver_key(name),
        group_name=GROUP,
        kinds=KINDS,
        owners=["team:data-platform"],
        description=description,
        ins={
            "left": AssetIn(key=silver_key(left_table)),
            "right": AssetIn(key=silver_key(right_table)),
        },
        metadata={"dagster/column_lineage": column_lineage(name)},
        automation_condition=follow_upstream(),
    )
    def join(left: pl.LazyFrame, right: pl.LazyFrame) -> Output[pl.LazyFrame]:
        orphans = transforms.count_orphans(left, right, foreign_key)
        orphans = orphans.collect(engine="streaming").row(0, named=True)
        return Output(
            build(left, right),
            metadata={
                f"orphan_{foreign_key}_rows": orphans["orphan_rows"],
                f"orphan_{foreign_key}_keys": orphans["orphan_keys"],
            },
        )

    return join


silver_assets = [build_silver_asset(dataset) for dataset in DATASETS] + [
    _join_asset(
        "music_catalog",
        "albums",
        "bands",
        "band",
        "Albums with their band (albums LEFT JOIN bands); "
        "albums of unknown bands keep null band columns.",
    ),
    _join_asset(
        "album_reviews",
        "reviews",
        "albums",
        "album",
        "Reviews with their album (reviews LEFT JOIN albums); "
        "reviews of unknown albums keep null album columns.",
    ),
]
