"""Silver: the base tables merged from staged ingests, their quarantine, and the two joins.

A base table is a folder of parts, one per current ingest (the latest of each source file):
rows are upserted by `id` across files, and every rejected row goes to `quarantine/{dataset}/`
with its reason, so for the current ingests staged rows = silver rows + quarantine rows. A
refresh decides the winners from the staged parts' key columns and rewrites only the parts
whose rows changed.
"""

from collections.abc import Iterator

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
from deathmetal_lake.assets.retry import STEP_RETRY_POLICY
from deathmetal_lake.assets.staging import staging_key, staging_order
from deathmetal_lake.automation import follow_ingests, follow_upstream
from deathmetal_lake.datasets import DATASETS, Dataset
from deathmetal_lake.resources import LakeTables, TableUpdate
from deathmetal_lake.resources.io_managers import FOLDER_TABLE, PART_VERSIONS
from deathmetal_lake.resources.table_metadata import quarantine_reason_counts
from deathmetal_lake.rows import INGEST_ID, IngestKey
from deathmetal_lake.transforms import joins, merge
from deathmetal_lake.transforms.descriptions import SILVER_COLUMN_DESCRIPTIONS
from deathmetal_lake.transforms.silver import REJECT_REASON_COLUMN

GROUP = "silver"
KINDS = {"polars", "parquet", "s3"}
_ALL_INGESTS = {
    "partition_mapping": AllPartitionMapping(),
    "metadata": {"allow_missing_partitions": True},
}


def silver_key(table: str) -> AssetKey:
    return AssetKey([GROUP, table])


def quarantine_key(dataset: Dataset) -> AssetKey:
    return AssetKey(["quarantine", dataset.name])


def _source_file(ingest_id: str) -> str:
    return IngestKey.parse(ingest_id).source_file


def _outs(dataset: Dataset) -> dict[str, AssetOut]:
    common = {"group_name": GROUP, "kinds": KINDS, "owners": ["team:data-platform"]}
    return {
        "table": AssetOut(
            key=silver_key(dataset.name),
            description=(
                f"`{dataset.name}`: typed and cleaned, one row per id (latest ingest wins), from "
                f"the latest ingest of every source file. A folder of Parquet parts, one per "
                f"ingest: `silver/{dataset.name}/`."
            ),
            metadata={**FOLDER_TABLE, "descriptions": SILVER_COLUMN_DESCRIPTIONS[dataset.name]},
            automation_condition=follow_ingests(),
            **common,
        ),
        "quarantine": AssetOut(
            key=quarantine_key(dataset),
            description=(
                f"`{dataset.name}` rows that broke a rule or lost their id to a later copy, with "
                f"every bronze column and `{REJECT_REASON_COLUMN}`. A folder of Parquet parts, one "
                f"per ingest: `quarantine/{dataset.name}/`."
            ),
            metadata=FOLDER_TABLE,
            automation_condition=follow_ingests(),
            **common,
        ),
    }


def build_silver_asset(dataset: Dataset) -> AssetsDefinition:
    @multi_asset(
        name=f"silver_{dataset.name}",
        outs=_outs(dataset),
        ins={
            "staged": AssetIn(key=staging_key(dataset), **_ALL_INGESTS),
            "bronze": AssetIn(key=bronze_key(dataset), **_ALL_INGESTS),
        },
        retry_policy=STEP_RETRY_POLICY,
    )
    def silver(
        context: AssetExecutionContext,
        tables: LakeTables,
        staged: dict[str, pl.LazyFrame],
        bronze: dict[str, pl.LazyFrame],
    ) -> Iterator[Output[TableUpdate]]:
        order = merge.current_ingests(
            [i for i in staging_order(context.instance, dataset) if i in staged], _source_file
        )
        rejected = merge.rejections(dataset.name, staged, order, _source_file).collect(
            engine="streaming"
        )
        table_key, rejects_key = silver_key(dataset.name), quarantine_key(dataset)
        existing = tables.scan(rejects_key) if tables.part_names(rejects_key) else None
        changes = merge.changed_parts(
            order,
            tables.part_names(table_key),
            rejected,
            rejected.clear()
            if existing is None
            else existing.select(merge.REJECTION_SCHEMA.names()).collect(),
        )
        own = {
            ingest: rejected.filter(pl.col(INGEST_ID) == ingest).lazy() for ingest in changes.write
        }
        summary = {
            "current_ingests": len(order),
            "parts_rewritten": len(changes.write),
            "quarantine_rows": rejected.height,
        }
        yield Output(
            TableUpdate(
                write={i: merge.table_part(staged[i], own[i]) for i in changes.write},
                delete=changes.delete,
            ),
            output_name="table",
            metadata=summary,
        )
        yield Output(
            TableUpdate(
                write={
                    i: merge.quarantine_part(dataset.name, bronze[i], own[i]) for i in changes.write
                },
                delete=changes.delete,
            ),
            output_name="quarantine",
            metadata={
                "dagster/row_count": rejected.height,
                **quarantine_reason_counts(rejected),
            },
        )

    return silver


JOIN_INPUTS = "lake/join_inputs"
"""Metadata entry of a join's materialization: the versions of the tables it was built from."""


def _last_join_versions(context: AssetExecutionContext) -> joins.JoinVersions | None:
    event = context.instance.get_latest_materialization_event(context.asset_key)
    materialization = event.asset_materialization if event else None
    if materialization is None:
        return None
    metadata = materialization.metadata
    inputs, built = metadata.get(JOIN_INPUTS), metadata.get(PART_VERSIONS)
    if inputs is None or built is None:
        return None
    return joins.JoinVersions.recorded(inputs.value, built.value)


def _join_asset(name: str, left_table: str, right_table: str, description: str) -> AssetsDefinition:
    """A left join built part by part. Its orphans (left rows with no right row) are counted by
    the foreign-key check of the left table (`band_in_bands`, `album_in_albums`), not again here."""
    build = getattr(joins, name)
    key, left_key, right_key = silver_key(name), silver_key(left_table), silver_key(right_table)

    @asset(
        key=key,
        group_name=GROUP,
        kinds=KINDS,
        owners=["team:data-platform"],
        description=f"{description} A folder of Parquet parts, one per `{left_table}` part: "
        f"`silver/{name}/`.",
        deps=[left_key, right_key],
        metadata={**FOLDER_TABLE, "dagster/column_lineage": column_lineage(name)},
        automation_condition=follow_upstream(),
        retry_policy=STEP_RETRY_POLICY,
    )
    def join(context: AssetExecutionContext, tables: LakeTables) -> Output[TableUpdate]:
        left = tables.part_versions(left_key)
        right = joins.table_version(tables.part_versions(right_key))
        write, delete = joins.stale_parts(
            _last_join_versions(context), left, right, tables.part_versions(key)
        )
        right_rows = tables.scan(right_key)
        update = TableUpdate(
            write={part: build(tables.scan_part(left_key, part), right_rows) for part in write},
            delete=delete,
        )
        return Output(
            update,
            metadata={
                "parts_rebuilt": len(write),
                JOIN_INPUTS: MetadataValue.json({"left": left, "right": right}),
            },
        )

    return join


silver_assets = [build_silver_asset(dataset) for dataset in DATASETS] + [
    _join_asset(
        "music_catalog",
        "albums",
        "bands",
        "Albums with their band (albums LEFT JOIN bands); "
        "albums of unknown bands keep null band columns.",
    ),
    _join_asset(
        "album_reviews",
        "reviews",
        "albums",
        "Reviews with their album (reviews LEFT JOIN albums); "
        "reviews of unknown albums keep null album columns.",
    ),
]
