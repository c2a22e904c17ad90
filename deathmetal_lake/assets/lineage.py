"""Column lineage metadata (`dagster/column_lineage`) from the transforms' declarations."""

from __future__ import annotations

from dagster import AssetKey, TableColumnDep, TableColumnLineage

from deathmetal_lake.transforms import COLUMN_LINEAGE

SILVER_TABLES = frozenset({"albums", "bands", "reviews", "music_catalog", "album_reviews"})


def table_key(table: str) -> AssetKey:
    return AssetKey(["silver" if table in SILVER_TABLES else "gold", table])


def column_lineage(table: str) -> TableColumnLineage:
    return TableColumnLineage(
        deps_by_column={
            column: [TableColumnDep(asset_key=table_key(t), column_name=c) for t, c in deps]
            for column, deps in COLUMN_LINEAGE[table].items()
        }
    )
