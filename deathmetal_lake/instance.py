"""The Dagster instance that `make run` and `make dev` share, and its SQLite storage.

Dagster's SQLite storages build a new SQLAlchemy engine for every transaction, so every event a
run writes (an increment writes ~170) connects, initializes the dialect and compiles its INSERT
again, then waits for SQLite's full sync of the write-ahead log. `LakeSqliteStorage` is the same
storage in the same files (`$DAGSTER_HOME/history`, `schedules`) with one engine per database
file, its compiled statements kept, and `synchronous=NORMAL`: in WAL mode a commit can neither
corrupt the database nor be lost when a process dies, only when the machine loses power before
the next checkpoint, the right trade for a local lake's run history. dagster.yaml selects it.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy
from dagster import DagsterInstance
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._core.storage.runs import SqliteRunStorage
from dagster._core.storage.schedules import SqliteScheduleStorage
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._serdes import ConfigurableClassData
from sqlalchemy.pool import NullPool

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from deathmetal_lake.settings import LakeSettings


# The instance settings `make dev` and `make run` share (storage, run queue, log level, telemetry).
INSTANCE_SETTINGS = Path(__file__).resolve().parents[1] / "dagster.yaml"


def prepare_instance(instance_dir: Path) -> None:
    """As `make` does: the folder, with the repository's dagster.yaml unless it has its own."""
    instance_dir.mkdir(parents=True, exist_ok=True)
    if not (instance_dir / "dagster.yaml").exists():
        shutil.copy(INSTANCE_SETTINGS, instance_dir / "dagster.yaml")


def open_instance(settings: LakeSettings) -> DagsterInstance:
    """The instance in `settings.instance_dir`, as `dagster dev` would load it from DAGSTER_HOME.

    dagster.yaml names the storage's folder by DAGSTER_HOME, which a `.env` file may have set for
    the lake's settings only: the process environment gets it too.
    """
    prepare_instance(settings.instance_dir)
    os.environ["DAGSTER_HOME"] = str(settings.instance_dir)
    return DagsterInstance.from_config(str(settings.instance_dir))


def _sync_normally(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


# Bounded: a long `make dev` reads the event logs of many runs (a database file each).
@functools.lru_cache(maxsize=64)
def _engine(conn_string: str) -> Engine:
    """One engine per database file; NullPool still opens a connection per transaction."""
    engine = sqlalchemy.create_engine(
        conn_string,
        poolclass=NullPool,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
    )
    sqlalchemy.event.listen(engine, "connect", _sync_normally)
    return engine


@contextmanager
def _transaction(conn_string: str) -> Iterator[Connection]:
    with _engine(conn_string).connect() as conn, conn.begin():
        yield conn


class _RunStorage(SqliteRunStorage):
    @contextmanager
    def connect(self) -> Iterator[Connection]:
        with _transaction(self._conn_string) as conn:
            yield conn


class _ScheduleStorage(SqliteScheduleStorage):
    @contextmanager
    def connect(self) -> Iterator[Connection]:
        with _transaction(self._conn_string) as conn:
            yield conn


class _EventLogStorage(SqliteEventLogStorage):
    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        # As Dagster's own: one lock for the run and index shards, each shard initialized once.
        with self._db_lock:
            conn_string = self.conn_string_for_shard(shard)
            if shard not in self._initialized_dbs:
                self._initdb(_engine(conn_string))
                self._initialized_dbs.add(shard)
            with _transaction(conn_string) as conn:
                yield conn


class LakeSqliteStorage(DagsterSqliteStorage):
    """Dagster's SQLite storage, in the same folders below `base_dir` (by default DAGSTER_HOME)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self.base_dir = base_dir
        self._run_storage = _RunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = _EventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = _ScheduleStorage.from_local(_schedule_directory(base_dir))
        self._inst_data = inst_data
        super(DagsterSqliteStorage, self).__init__()

    @classmethod
    def from_config_value(  # ty: ignore[invalid-method-override]
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, str]
    ) -> LakeSqliteStorage:
        return cls(inst_data=inst_data, **config_value)
