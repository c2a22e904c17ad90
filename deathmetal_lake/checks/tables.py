"""Where the checks find the lake's tables: the IO manager's layout, scanned lazily.

The one place that turns an asset key into a table: `{base_dir}/{key path}{extension}` as the
IO manager writes it, or a folder `{base_dir}/{key path}/` of Parquet parts (the contract's
layout for an incremental table). A check step asks only for the tables its selected checks read,
and asks first whether they exist, so a table not built yet never fails a step.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import polars as pl
from dagster import AssetKey
from upath import UPath

from deathmetal_lake.resources import LakeParquetIOManager

_LOCAL_PROTOCOLS = frozenset({"", "file", "local"})


class LakeTables:
    """The lake's tables by asset key, for the checks of one step (each location probed once).

    `io_manager` is called on first use: a step whose selected checks read no table never needs
    the IO manager.
    """

    def __init__(self, io_manager: Callable[[], LakeParquetIOManager]) -> None:
        self._get_io_manager = io_manager
        self._sources: dict[AssetKey, str | None] = {}

    @cached_property
    def _io_manager(self) -> LakeParquetIOManager:
        return self._get_io_manager()

    @cached_property
    def _base(self) -> UPath:
        base = UPath(self._io_manager.base_dir, **self._io_manager.storage_options)
        # fsspec shares one filesystem per process, listings cached: a table written since by
        # another step or run would look absent.
        base.fs.invalidate_cache()
        return base

    def _locate(self, key: AssetKey) -> str | None:
        """The file, or the folder of parts as a glob, that holds the table; None if neither."""
        *parents, name = key.path
        file = self._base.joinpath(*parents, f"{name}{self._io_manager.extension}")
        if file.exists():
            return str(file)
        folder = self._base.joinpath(*key.path)
        if folder.is_dir() and any(folder.rglob(f"*{self._io_manager.extension}")):
            return f"{folder}/**/*{self._io_manager.extension}"
        return None

    def _source(self, key: AssetKey) -> str | None:
        if key not in self._sources:
            self._sources[key] = self._locate(key)
        return self._sources[key]

    def exists(self, key: AssetKey) -> bool:
        return self._source(key) is not None

    def scan(self, key: AssetKey) -> pl.LazyFrame:
        """The table as a LazyFrame: nothing is read until a check collects what it needs."""
        source = self._source(key)
        if source is None:
            raise FileNotFoundError(f"{key.to_user_string()} has no table in the lake yet")
        local = self._base.protocol in _LOCAL_PROTOCOLS
        options = None if local else self._io_manager.lake.polars_storage_options()
        return pl.scan_parquet(source, storage_options=options)

    def rows(self, key: AssetKey) -> int:
        """Row count (Polars reads it from the Parquet footers)."""
        return self.scan(key).select(pl.len()).collect().item()
