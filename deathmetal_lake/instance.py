"""The Dagster instance that `make run` and `make dev` share, and its SQLite storage.

Dagster's SQLite storages build a new SQLAlchemy engine for every transaction, so every event a
run writes (an increment writes ~170) opens the database file, initializes the dialect and
compiles its INSERT again, then waits for SQLite's full sync of the write-ahead log.
`LakeSqliteStorage` is the same storage in the same files (`$DAGSTER_HOME/history`, `schedules`)
with one engine per database file that keeps its connections open and its compiled statements,
and `synchronous=NORMAL`: in WAL mode a commit can neither corrupt the database nor be lost when
a process dies, only when the machine loses power before the next checkpoint, the right trade for
a local lake's run history. dagster.yaml selects it.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy
from dagster import DagsterInstance
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
)
from dagster._core.storage.runs import SqliteRunStorage
from dagster._core.storage.schedules import SqliteScheduleStorage
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._serdes import ConfigurableClassData
from sqlalchemy.pool import QueuePool

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


class _Engines:
    """One engine per database file, which keeps its connections open between transactions.

    Opening the file per transaction (Dagster's NullPool) cost 1-3 ms of every event write, about
    1.2 s of a 1,000-row increment's `make run`. Two stay open: Dagster asks whether a table
    exists while it writes a materialization's tags. An idle connection holds no lock in WAL
    mode; more threads that write at the same time get connections of their own, closed when
    returned.
    Bounded: a long `make dev` reads the event logs of many runs (a database file each), and an
    engine that falls out closes its connections.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget_parents_connections)

    def __call__(self, conn_string: str) -> Engine:
        with self._lock:
            engine = self._engines.get(conn_string)
            if engine is None:
                engine = self._engines[conn_string] = self._create(conn_string)
                if len(self._engines) > self._size:
                    self._engines.popitem(last=False)[1].dispose()
            self._engines.move_to_end(conn_string)
            return engine

    @staticmethod
    def _create(conn_string: str) -> Engine:
        engine = sqlalchemy.create_engine(
            conn_string,
            poolclass=QueuePool,
            pool_size=2,
            max_overflow=-1,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
        )
        sqlalchemy.event.listen(engine, "connect", _sync_normally)
        return engine

    def _forget_parents_connections(self) -> None:
        """A forked child must not use the connections its parent keeps open (SQLAlchemy's rule)."""
        self._lock = threading.Lock()
        for engine in self._engines.values():
            engine.dispose(close=False)


_engine = _Engines(size=64)


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

    def has_table(self, table_name: str) -> bool:
        # Dagster asks before most writes of an asset check or partition event (250 times in a
        # scale-1 build), each time through a new engine that opens the index file again.
        engine = _engine(self.conn_string_for_shard(INDEX_SHARD_NAME))
        with engine.connect() as conn:
            return bool(engine.dialect.has_table(conn, table_name))


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
