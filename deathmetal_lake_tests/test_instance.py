"""The instance `make run` and `make dev` open: the repository's dagster.yaml and its storage."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy
from dagster import AssetKey, DagsterInstance, asset, materialize

from deathmetal_lake.instance import INSTANCE_SETTINGS, LakeSqliteStorage, _engine, open_instance
from deathmetal_lake.settings import LakeSettings
from deathmetal_lake_tests.conftest import make_settings


@asset
def tally() -> int:
    return 1


def _materialize_tally(instance: DagsterInstance) -> str:
    result = materialize([tally], instance=instance)
    assert result.success
    return result.run_id


class _Opened:
    """Counts the database connections opened while it listens to SQLAlchemy's `connect` event."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, _dbapi_connection: object, _record: object) -> None:
        self.count += 1


@pytest.fixture
def settings(lake_settings: LakeSettings, monkeypatch: pytest.MonkeyPatch) -> LakeSettings:
    """A lake whose instance is DAGSTER_HOME, as `make` sets it."""
    monkeypatch.setenv("DAGSTER_HOME", str(lake_settings.instance_dir))
    return lake_settings


def _runs_and_materializations(instance: DagsterInstance) -> tuple[set[str], int]:
    runs = {run.run_id for run in instance.get_runs()}
    events = instance.fetch_materializations(AssetKey("tally"), limit=100).records
    return runs, len(events)


def test_lake_storage_shares_dagsters_default_files_both_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance made before dagster.yaml chose the storage keeps its history, and back."""
    settings = make_settings(tmp_path / "state")
    home = settings.instance_dir
    home.mkdir(parents=True)
    with DagsterInstance.from_config(str(home)) as default:  # no dagster.yaml: Dagster's own
        assert default.get_ref().storage_data.class_name == "DagsterSqliteStorage"
        before = _materialize_tally(default)

    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with open_instance(settings) as lake:
        assert (home / "dagster.yaml").read_text() == INSTANCE_SETTINGS.read_text()
        assert lake.get_ref().storage_data.class_name == LakeSqliteStorage.__name__
        assert _runs_and_materializations(lake) == ({before}, 1)
        after = _materialize_tally(lake)
        assert _runs_and_materializations(lake) == ({before, after}, 2)

    (home / "dagster.yaml").unlink()
    with DagsterInstance.from_config(str(home)) as default:
        assert _runs_and_materializations(default) == ({before, after}, 2)


def test_lake_storage_syncs_normally_on_every_database(settings: LakeSettings) -> None:
    """WAL with synchronous=NORMAL on the run, event log (index and run shards) and schedules."""
    with open_instance(settings) as instance:
        run_id = _materialize_tally(instance)
        events = instance.event_log_storage
        connections = [
            instance.run_storage.connect(),
            instance.schedule_storage.connect(),
            events.index_connection(),
            events.run_connection(run_id),
        ]
        for connection in connections:
            with connection as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_lake_storage_keeps_its_connections_open(settings: LakeSettings) -> None:
    """A run's many event writes reuse the open connections of each database file."""
    opened = _Opened()
    with open_instance(settings) as instance:
        run_id = _materialize_tally(instance)
        events = instance.event_log_storage
        engines = [
            _engine(events.conn_string_for_shard(run_id)),
            _engine(events.conn_string_for_shard("index")),
        ]
        for engine in engines:
            sqlalchemy.event.listen(engine, "connect", opened)
        writes = len(instance.all_logs(run_id))
        for _ in range(3):
            _materialize_tally(instance)
        with events.run_connection(run_id) as conn:
            conn.exec_driver_sql("SELECT 1")
    assert writes > 10
    assert opened.count == 0


def test_lake_storage_asks_for_tables_on_its_open_connection(settings: LakeSettings) -> None:
    """Dagster asks whether a table exists before most partition and check writes (250 times in
    a scale-1 build): the index's open connection answers, no database is opened for it."""
    opened = _Opened()
    with open_instance(settings) as instance:
        instance.add_dynamic_partitions("ingests", ["first"])
        sqlalchemy.event.listen(sqlalchemy.pool.Pool, "connect", opened)
        try:
            for n in range(5):
                instance.add_dynamic_partitions("ingests", [f"ingest-{n}"])
                assert instance.has_dynamic_partition("ingests", f"ingest-{n}")
        finally:
            sqlalchemy.event.remove(sqlalchemy.pool.Pool, "connect", opened)
    assert opened.count == 0
