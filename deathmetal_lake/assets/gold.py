"""Gold: the marts users query, one asset per transform in `transforms.gold`.

Each asset's inputs are the transform's parameters (named after the silver or gold tables they
take), so adding a mart is one function and one line in `GOLD_TABLES`.
"""

import inspect
from collections.abc import Callable

import polars as pl
from dagster import AssetIn, AssetKey, AssetsDefinition, asset

from deathmetal_lake.assets.lineage import column_lineage, table_key
from deathmetal_lake.automation import follow_upstream
from deathmetal_lake.transforms import gold

GROUP = "gold"

GOLD_TABLES: tuple[Callable[..., pl.LazyFrame], ...] = (
    gold.band_avg_scores,
    gold.top10_by_country,
    gold.brazilian_bands,
    gold.band_album_counts,
    gold.album_rankings,
    gold.genre_by_decade,
)


def gold_key(table: str) -> AssetKey:
    return AssetKey([GROUP, table])


def _input_tables(transform: Callable[..., pl.LazyFrame]) -> list[str]:
    """The transform's table parameters: positional, without defaults."""
    return [
        p.name
        for p in inspect.signature(transform).parameters.values()
        if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty
    ]


def build_gold_asset(transform: Callable[..., pl.LazyFrame]) -> AssetsDefinition:
    name = transform.__name__
    summary = (inspect.getdoc(transform) or name).split("\n\n", 1)[0]

    @asset(
        key=gold_key(name),
        group_name=GROUP,
        kinds={"polars", "parquet", "s3"},
        owners=["team:analytics"],
        description=f"{summary} At `gold/{name}.parquet`.",
        ins={
            table: AssetIn(key=table_key(table), dagster_type=pl.LazyFrame)
            for table in _input_tables(transform)
        },
        metadata={"dagster/column_lineage": column_lineage(name)},
        automation_condition=follow_upstream(),
    )
    def gold_table(**tables: pl.LazyFrame) -> pl.LazyFrame:
        return transform(**tables)

    return gold_table


gold_assets = [build_gold_asset(transform) for transform in GOLD_TABLES]
