"""Where each layer's data lives in the bucket, and how Dagster reads and writes it.

- `LakeParquetIOManager`: dagster-polars' Parquet IO manager rooted at `s3://{bucket}/`, so an
  asset key is its S3 path. Tables declared with `FOLDER_TABLE` are a folder of Parquet parts
  (`silver/reviews/{ingest}.parquet`), written part by part from a `TableUpdate` and read as one
  table, so an incremental refresh rewrites only the parts that changed.
- `LandingManifestIOManager`: each landing run's `LandingManifest`, a small JSON object under
  `manifests/`.
"""

from dataclasses import dataclass, field
from typing import Any, get_origin

import polars as pl
from dagster import (
    ConfigurableIOManager,
    ConfigurableResource,
    InputContext,
    MetadataValue,
    OutputContext,
    ResourceDependency,
)
from dagster_polars import PolarsParquetIOManager
from upath import UPath

from deathmetal_lake.manifest import LandingManifest
from deathmetal_lake.resources.aws import LakeResource, LakeS3Resource, fsspec_storage_options

# Definition metadata of an asset whose table is a folder of Parquet parts.
FOLDER_TABLE = {"lake/layout": "folder"}
MANIFESTS_PREFIX = "manifests"


@dataclass(frozen=True)
class TableUpdate:
    """A folder table's change: parts to (re)write, by name, and parts to delete."""

    write: dict[str, pl.LazyFrame] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)


def is_folder_table(metadata: Any) -> bool:
    return (metadata or {}).get("lake/layout") == FOLDER_TABLE["lake/layout"]


class LakeTables(ConfigurableResource):
    """The lake's folder tables: which parts a table has, and all of them as one lazy frame."""

    lake: ResourceDependency[LakeResource]

    def folder(self, asset_key_path: list[str]) -> UPath:
        """The folder of a folder table, e.g. `s3://bucket/silver/reviews/`."""
        settings = self.lake.settings
        root = UPath(f"s3://{settings.bucket}", **fsspec_storage_options(settings))
        return root.joinpath(*asset_key_path)

    def part_names(self, asset_key_path: list[str]) -> set[str]:
        """Names (without `.parquet`) of the parts a folder table has now."""
        folder = self.folder(asset_key_path)
        # s3fs caches listings per process; parts written by another run would be missed.
        folder.fs.invalidate_cache(folder.path)
        if not folder.exists():
            return set()
        return {p.name.removesuffix(".parquet") for p in folder.iterdir() if p.suffix == ".parquet"}

    def scan(self, asset_key_path: list[str]) -> pl.LazyFrame | None:
        """Every part of a folder table as one lazy frame, None while it has no part."""
        if not self.part_names(asset_key_path):
            return None
        glob = f"{self.folder(asset_key_path)}/*.parquet"
        return pl.scan_parquet(glob, storage_options=self.lake.polars_storage_options())


class LakeParquetIOManager(PolarsParquetIOManager):
    """Parquet in the lake's bucket: a file per asset (or partition), or a folder of parts."""

    tables: ResourceDependency[LakeTables]

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if not isinstance(obj, TableUpdate):
            super().handle_output(context, obj)
            return
        folder = self.tables.folder(list(context.asset_key.path))
        for name, frame in obj.write.items():
            self.sink_df_to_path(context, frame, folder / f"{name}.parquet")
        # New parts first: a reader between the two steps sees a row twice, never lose one.
        for name in obj.delete:
            (folder / f"{name}.parquet").unlink(missing_ok=True)
        context.add_output_metadata(
            {
                "dagster/uri": MetadataValue.path(str(folder)),
                "parts_written": len(obj.write),
                "parts_deleted": len(obj.delete),
            }
        )

    def load_input(self, context: InputContext) -> Any:
        upstream = context.upstream_output
        if upstream is not None and is_folder_table(upstream.definition_metadata):
            return self._load_folder(context)
        # A `dict[partition, frame]` input is a dict even with one or no partition: UPathIOManager
        # hands over a bare frame for one partition and None for none.
        expects_mapping = get_origin(context.dagster_type.typing_type) is dict
        if expects_mapping and context.has_asset_partitions:
            keys = context.asset_partition_keys
            if len(keys) <= 1:
                loaded = self.load_partitions(context) if keys else None
                return {} if loaded is None else {keys[0]: loaded}
        return super().load_input(context)

    def _load_folder(self, context: InputContext) -> pl.LazyFrame | pl.DataFrame:
        path = list(context.asset_key.path)
        frame = self.tables.scan(path)
        if frame is None:
            raise FileNotFoundError(
                f"{context.asset_key.to_user_string()} has no parts yet in "
                f"{self.tables.folder(path)}: materialize it first"
            )
        eager = context.dagster_type.typing_type is pl.DataFrame
        return frame.collect(engine="streaming") if eager else frame


class LandingManifestIOManager(ConfigurableIOManager):
    """Landing manifests as JSON at `manifests/{asset key path}/{partition}.json`."""

    lake: ResourceDependency[LakeResource]
    s3: ResourceDependency[LakeS3Resource]

    def _key(self, asset_key_path: list[str], partition: str) -> str:
        return "/".join([MANIFESTS_PREFIX, *asset_key_path, f"{partition}.json"])

    def handle_output(self, context: OutputContext, obj: LandingManifest) -> None:
        key = self._key(list(context.asset_key.path), context.partition_key)
        self.s3.get_client().put_object(
            Bucket=self.lake.settings.bucket, Key=key, Body=obj.to_json().encode()
        )
        context.add_output_metadata(
            {"dagster/uri": MetadataValue.path(f"s3://{self.lake.settings.bucket}/{key}")}
        )

    def load_input(self, context: InputContext) -> LandingManifest:
        key = self._key(list(context.asset_key.path), context.asset_partition_key)
        client = self.s3.get_client()
        try:
            body = client.get_object(Bucket=self.lake.settings.bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey as error:
            raise FileNotFoundError(
                f"no landing manifest for ingest {context.asset_partition_key} "
                f"(s3://{self.lake.settings.bucket}/{key}): materialize its landing first"
            ) from error
        return LandingManifest.from_json(body)
