"""The tables users query: name, where each lives, and its columns with their types.

One entry per silver, quarantine and gold asset, taken from the asset definitions (so a new mart
is in the catalog without a line here). Each table's schema comes from the transform that writes
it, applied to empty inputs, which is what the lake writes (`test_lake.py` compares it with the
Parquet files). The query command lists these names; `infra/athena.tf` declares a Glue table per
entry with `glue_columns()`, and `test_infra.py` holds the two together.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import polars as pl
from dagster import AssetKey

from deathmetal_lake.resources.io_managers import PARQUET, is_folder_table

LAYERS = ("silver", "quarantine", "gold")


@dataclass(frozen=True)
class CatalogTable:
    key: AssetKey
    folder: bool
    """A folder of Parquet parts (`silver/reviews/`) rather than one file (`gold/x.parquet`)."""
    schema: pl.Schema

    @property
    def name(self) -> str:
        """The layer-qualified name the query command takes: `silver.reviews`."""
        return ".".join(self.key.path)

    @property
    def glue_name(self) -> str:
        """The Glue/Athena table name: `silver_reviews` (one database holds every layer)."""
        return "_".join(self.key.path)

    @property
    def path(self) -> str:
        """Where it lives in the bucket, as the contract names it."""
        return "/".join(self.key.path) + ("/" if self.folder else PARQUET)

    def glue_columns(self) -> list[tuple[str, str]]:
        return [(column, glue_type(dtype)) for column, dtype in self.schema.items()]


_GLUE_TYPES: dict[type[pl.DataType], str] = {
    pl.Int8: "tinyint",
    pl.Int16: "smallint",
    pl.Int32: "int",
    pl.Int64: "bigint",
    pl.Float32: "float",
    pl.Float64: "double",
    pl.Boolean: "boolean",
    pl.String: "string",
    pl.Date: "date",
    pl.Datetime: "timestamp",
}


def glue_type(dtype: pl.DataType) -> str:
    """The Hive/Athena type Athena reads a Polars-written Parquet column as."""
    if isinstance(dtype, pl.List):
        return f"array<{glue_type(dtype.inner)}>"
    if isinstance(dtype, pl.Struct):
        return "struct<" + ",".join(f"{f.name}:{glue_type(f.dtype)}" for f in dtype.fields) + ">"
    try:  # `pl.List(pl.String).inner` is the class itself, a schema holds instances
        return _GLUE_TYPES[dtype if isinstance(dtype, type) else type(dtype)]
    except KeyError:
        raise TypeError(f"no Glue type for the Polars type {dtype}") from None


def _schemas() -> dict[str, pl.Schema]:
    """Each table's schema, from its transform over empty inputs (joins and marts in order)."""
    from deathmetal_lake.assets.lineage import table_key
    from deathmetal_lake.datasets import DATASETS
    from deathmetal_lake.transforms import joins, merge
    from deathmetal_lake.transforms.gold import MARTS
    from deathmetal_lake.transforms.silver import bronze_schema, silver_schema

    schemas: dict[str, pl.Schema] = {}
    for dataset in DATASETS:
        schemas[f"silver.{dataset.name}"] = silver_schema(dataset.name)
        schemas[f"quarantine.{dataset.name}"] = merge.quarantine_part(
            dataset.name,
            pl.LazyFrame(schema=bronze_schema(dataset.name)),
            pl.LazyFrame(schema=merge.REJECTION_SCHEMA),
        ).collect_schema()

    def empty(table: str) -> pl.LazyFrame:
        return pl.LazyFrame(schema=schemas[".".join(table_key(table).path)])

    schemas["silver.music_catalog"] = joins.music_catalog(
        empty("albums"), empty("bands")
    ).collect_schema()
    schemas["silver.album_reviews"] = joins.album_reviews(
        empty("reviews"), empty("albums")
    ).collect_schema()
    for mart in MARTS:
        frames = {table: empty(table) for table in mart.inputs}
        schemas[f"gold.{mart.name}"] = mart.transform(**frames).collect_schema()
    return schemas


@functools.cache
def lake_catalog() -> tuple[CatalogTable, ...]:
    """Every silver, quarantine and gold table, sorted by name."""
    from deathmetal_lake.assets.gold import gold_assets
    from deathmetal_lake.assets.silver import silver_assets

    schemas = _schemas()
    specs = (spec for assets in [*silver_assets, *gold_assets] for spec in assets.specs)
    tables = [
        CatalogTable(spec.key, is_folder_table(spec.metadata), schemas[".".join(spec.key.path)])
        for spec in specs
        if spec.key.path[0] in LAYERS
    ]
    return tuple(sorted(tables, key=lambda t: t.name))
