"""Gold: the marts users query, one asset per mart declared in `transforms.gold.MARTS`.

Each asset's inputs are the transform's parameters (named after the silver or gold tables they
take), so adding a mart is one function and one `Mart` line; its checks come from the same line
(`checks.gold`).
"""

import polars as pl
from dagster import AssetIn, AssetKey, AssetsDefinition, asset

from deathmetal_lake.assets.lineage import column_lineage, table_key
from deathmetal_lake.assets.retry import STEP_RETRY_POLICY
from deathmetal_lake.automation import follow_upstream
from deathmetal_lake.transforms.gold import MARTS, Mart

GROUP = "gold"


def gold_key(table: str) -> AssetKey:
    return AssetKey([GROUP, table])


def build_gold_asset(mart: Mart) -> AssetsDefinition:
    @asset(
        key=gold_key(mart.name),
        group_name=GROUP,
        kinds={"polars", "parquet", "s3"},
        owners=["team:analytics"],
        description=f"{mart.summary} At `gold/{mart.name}.parquet`.",
        ins={
            table: AssetIn(key=table_key(table), dagster_type=pl.LazyFrame) for table in mart.inputs
        },
        metadata={"dagster/column_lineage": column_lineage(mart.name)},
        automation_condition=follow_upstream(),
        retry_policy=STEP_RETRY_POLICY,
    )
    def gold_table(**tables: pl.LazyFrame) -> pl.LazyFrame:
        return mart.transform(**tables)

    return gold_table


gold_assets = [build_gold_asset(mart) for mart in MARTS]
