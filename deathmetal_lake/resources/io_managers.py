"""Where each layer's data lives in the bucket, and how Dagster reads and writes it.

- `LakeParquetIOManager`: dagster-polars' Parquet IO manager rooted at `s3://{bucket}/`, so an
  asset key is its S3 path. Tables declared with `FOLDER_TABLE` are a folder of Parquet parts
  (`silver/reviews/{ingest}.parquet`), written part by part from a `TableUpdate` and read as one
  table, so an incremental refresh rewrites only the parts that changed.
- `LandingManifestIOManager`: each landing run's `LandingManifest`, a small JSON object under
  `manifests/`.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_origin

import polars as pl
from dagster import (
    AssetKey,
    ConfigurableIOManager,
    ConfigurableResource,
    InitResourceContext,
    InputContext,
    MetadataValue,
    OutputContext,
    ResourceDependency,
)
from dagster_polars import PolarsParquetIOManager
from upath import UPath

from deathmetal_lake.manifest import LandingManifest
from deathmetal_lake.resources.aws import (
    LakeResource,
    LakeS3Resource,
    fsspec_storage_options,
    require_reachable,
)
from deathmetal_lake.resources.table_metadata import written_table_metadata

# Definition metadata of an asset whose table is a folder of Parquet parts.
FOLDER_TABLE = {"lake/layout": "folder"}
# Output metadata of a folder table's write: every part's version once it is written.
PART_VERSIONS = "lake/part_versions"
MANIFESTS_PREFIX = "manifests"
PARQUET = ".parquet"


@dataclass(frozen=True)
class TableUpdate:
    """A folder table's change: parts to (re)write, by name, and parts to delete."""

    write: dict[str, pl.LazyFrame] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)


class TableMissing(FileNotFoundError):
    """A table asked for has neither its file nor a part in the lake yet."""

    def __init__(self, key: AssetKey) -> None:
        super().__init__(f"{key.to_user_string()} has no table in the lake yet")
        self.key = key


def is_folder_table(metadata: Any) -> bool:
    return (metadata or {}).get("lake/layout") == FOLDER_TABLE["lake/layout"]


class LakeTables(ConfigurableResource):
    """The lake's tables by asset key: `{key}.parquet`, or a folder `{key}/` of Parquet parts.

    The one place that knows where a table lives, for the IO manager, the silver merge and the
    checks; every look at the bucket is fresh (fsspec caches listings per process, which would
    hide a table another run wrote since).
    """

    lake: ResourceDependency[LakeResource]
    base_dir: str

    def _root(self) -> UPath:
        root = UPath(self.base_dir, **self._fsspec_options())
        root.fs.invalidate_cache()
        return root

    @property
    def on_s3(self) -> bool:
        """The lake is in its bucket (always, but for tests of a lake on a local disk)."""
        return self.base_dir.startswith("s3://")

    def _fsspec_options(self) -> dict[str, Any]:
        return fsspec_storage_options(self.lake.settings) if self.on_s3 else {}

    def folder(self, key: AssetKey) -> UPath:
        """The folder of a folder table, e.g. `s3://bucket/silver/reviews/`."""
        return self._root().joinpath(*key.path)

    def part_names(self, key: AssetKey) -> set[str]:
        """Names (without `.parquet`) of the parts a folder table has now."""
        folder = self.folder(key)
        if not folder.is_dir():
            return set()
        return {p.name.removesuffix(PARQUET) for p in folder.iterdir() if p.suffix == PARQUET}

    def part_versions(self, key: AssetKey) -> dict[str, str]:
        """Each part's name and version (its ETag on S3; size and mtime on a local disk).

        A version changes whenever the part is rewritten with other content, so a table built
        from this one can tell which of its own parts are stale without reading any data.
        """
        folder = self.folder(key)
        if not folder.is_dir():
            return {}
        return {
            Path(info["name"]).name.removesuffix(PARQUET): str(
                info.get("ETag") or f"{info.get('size')}@{info.get('mtime')}"
            ).strip('"')
            for info in folder.fs.ls(folder.path, detail=True)
            if info["name"].endswith(PARQUET)
        }

    def scan_part(self, key: AssetKey, name: str) -> pl.LazyFrame:
        """One part of a folder table, lazily."""
        return self.scan_parts(key, [name])

    def scan_parts(self, key: AssetKey, names: Sequence[str]) -> pl.LazyFrame:
        """Some parts of a folder table as one LazyFrame (at least one name)."""
        folder = self.folder(key)
        options = self.lake.polars_storage_options() if self.on_s3 else None
        paths = [str(folder / f"{name}{PARQUET}") for name in names]
        return pl.scan_parquet(paths, storage_options=options)

    def _locate(self, key: AssetKey) -> str | None:
        """The file, or the folder of parts as a glob, that holds the table; None if neither.

        One listing of the table's parent tells both: every look is a round trip to S3, and a
        run's check steps look up each table they read.
        """
        *parents, name = key.path
        parent = self._root().joinpath(*parents)
        try:
            listing = parent.fs.ls(parent.path, detail=True)
        except FileNotFoundError:
            return None
        kinds = {Path(info["name"]).name: info["type"] for info in listing}
        if kinds.get(f"{name}{PARQUET}") == "file":
            return str(parent / f"{name}{PARQUET}")
        if kinds.get(name) != "directory":
            return None
        folder = parent / name
        # On S3 a folder is listed only while it holds parts; a folder on a disk may be empty.
        if not self.on_s3 and not any(folder.rglob(f"*{PARQUET}")):
            return None
        return f"{folder}/**/*{PARQUET}"

    def scan(self, key: AssetKey) -> pl.LazyFrame:
        """The table as a LazyFrame: nothing is read until the caller collects what it needs."""
        source = self._locate(key)
        if source is None:
            raise TableMissing(key)
        options = self.lake.polars_storage_options() if self.on_s3 else None
        return pl.scan_parquet(source, storage_options=options)

    def rows(self, key: AssetKey) -> int:
        """Row count (Polars reads it from the Parquet footers)."""
        return self.scan(key).select(pl.len()).collect().item()


class LakeParquetIOManager(PolarsParquetIOManager):
    """Parquet in the lake's bucket: a file per asset (or partition), or a folder of parts.

    Every table it writes reports its row count, URI and a preview (`table_metadata`).
    """

    tables: ResourceDependency[LakeTables]

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """A run whose bucket does not answer fails here, before its first step (`aws.py`)."""
        super().setup_for_execution(context)
        if self.tables.on_s3:
            require_reachable(self.tables.lake.settings)

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if not isinstance(obj, TableUpdate):
            super().handle_output(context, obj)
            return
        folder = self.tables.folder(context.asset_key)
        self.make_directory(folder)
        for name, frame in obj.write.items():
            self.sink_df_to_path(context, frame, folder / f"{name}.parquet")
        # New parts first: a reader between the two steps sees a row twice, never lose one.
        for name in obj.delete:
            (folder / f"{name}.parquet").unlink(missing_ok=True)
        # A lake built before this table became a folder has it as one file, which readers
        # would find first: the folder replaces it.
        folder.with_name(f"{folder.name}{PARQUET}").unlink(missing_ok=True)
        parts = [folder / f"{name}{PARQUET}" for name in self.tables.part_names(context.asset_key)]
        context.add_output_metadata(
            {
                **written_table_metadata(parts, f"{folder}/"),
                "parts_written": len(obj.write),
                "parts_deleted": len(obj.delete),
                PART_VERSIONS: MetadataValue.json(self.tables.part_versions(context.asset_key)),
            }
        )

    def make_directory(self, path: UPath) -> None:
        """A local lake needs its folders; S3 has none, and asking costs round trips per write."""
        if not self.tables.on_s3:
            super().make_directory(path)

    def _handle_transition_to_partitioned_asset(self, context: OutputContext, path: UPath) -> None:
        """Not needed: no partitioned asset of the lake was ever a single file.

        Dagster's check (is the partitions' folder a file?) asks S3 about a prefix, which costs
        several round trips on every partition write.
        """

    def get_metadata(self, context: OutputContext, obj: Any) -> dict[str, MetadataValue]:
        metadata = super().get_metadata(context, obj)
        if obj is None:
            return metadata
        if context.has_asset_partitions:
            (path,) = self._get_paths_for_partitions(context).values()
        else:
            path = self._get_path(context)
        partitioned = context.has_asset_partitions
        return {**metadata, **written_table_metadata([path], str(path), partitioned=partitioned)}

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
        frame = self.tables.scan(context.asset_key)
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
