"""The lake's Dagster definitions: the contract's asset keys and groups, and what loading does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import (
    AssetCheckKey,
    AssetKey,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    build_init_resource_context,
)

from deathmetal_lake.datasets import DATASETS
from deathmetal_lake.definitions import build_definitions
from deathmetal_lake.local_aws import stop
from deathmetal_lake.resources.aws import STREAMING_CHUNK_ROWS, LakeResource
from deathmetal_lake.settings import AwsMode
from deathmetal_lake_tests.conftest import GOLD_TABLES, REPO_ROOT, free_port, make_settings

VENV_BIN = Path(sys.executable).parent
DATASET_NAMES = ("albums", "bands", "reviews")
BASE_TABLES = DATASET_NAMES
JOINS = ("music_catalog", "album_reviews")

EXPECTED_GROUPS: dict[AssetKey, str] = {
    **{AssetKey(["landing", d]): "landing" for d in DATASET_NAMES},
    **{AssetKey(["bronze", d]): "bronze" for d in DATASET_NAMES},
    **{AssetKey(["staging", d]): "bronze" for d in DATASET_NAMES},
    **{AssetKey(["silver", t]): "silver" for t in (*BASE_TABLES, *JOINS)},
    **{AssetKey(["quarantine", d]): "silver" for d in DATASET_NAMES},
    **{AssetKey(["gold", t]): "gold" for t in GOLD_TABLES},
}
PARQUET_ON_S3 = {"polars", "parquet", "s3"}
EXPECTED_KINDS = {
    "landing": {"kinesis", "firehose", "s3"},
    "bronze": PARQUET_ON_S3,
    "staging": PARQUET_ON_S3,
    "silver": PARQUET_ON_S3,
    "quarantine": PARQUET_ON_S3,
    "gold": PARQUET_ON_S3,
}
INGEST_ASSETS = {
    AssetKey([layer, d]) for layer in ("landing", "bronze", "staging") for d in DATASET_NAMES
}


@pytest.fixture(scope="module")
def defs(tmp_path_factory: pytest.TempPathFactory):
    return build_definitions(make_settings(tmp_path_factory.mktemp("defs") / "state"))


@pytest.fixture(scope="module")
def asset_graph(defs):
    return defs.resolve_asset_graph()


def test_asset_keys_and_groups_are_the_contracts(asset_graph) -> None:
    assert {key: asset_graph.get(key).group_name for key in asset_graph.get_all_asset_keys()} == (
        EXPECTED_GROUPS
    )
    assert [d.name for d in DATASETS] == list(DATASET_NAMES)


def test_every_asset_has_its_layers_kinds_a_description_and_an_owner(asset_graph) -> None:
    for key in asset_graph.get_all_asset_keys():
        node = asset_graph.get(key)
        assert node.kinds == EXPECTED_KINDS[key.path[0]], key
        assert node.description and node.description.strip(), key
        assert node.owners, key


def test_ingest_layers_are_partitioned_by_their_datasets_ingests(asset_graph) -> None:
    for key in asset_graph.get_all_asset_keys():
        partitions_def = asset_graph.get(key).partitions_def
        if key in INGEST_ASSETS:
            assert isinstance(partitions_def, DynamicPartitionsDefinition), key
            assert partitions_def.name == f"{key.path[1]}_ingests", key
        else:
            assert partitions_def is None, key
    # The ingest layers of one dataset share one definition: a run materializes them together.
    for dataset in DATASET_NAMES:
        landing = asset_graph.get(AssetKey(["landing", dataset])).partitions_def
        assert asset_graph.get(AssetKey(["bronze", dataset])).partitions_def is landing
        assert asset_graph.get(AssetKey(["staging", dataset])).partitions_def is landing


def test_everything_below_landing_follows_upstream(asset_graph) -> None:
    for key in asset_graph.get_all_asset_keys():
        has_condition = asset_graph.get(key).automation_condition is not None
        assert has_condition == (key.path[0] != "landing"), key


def test_sensors_their_targets_and_default_statuses(defs, asset_graph) -> None:
    sensors = {sensor.name: sensor for sensor in defs.sensors or []}
    assert {name: sensor.default_status for name, sensor in sensors.items()} == {
        "csv_dir_sensor": DefaultSensorStatus.RUNNING,
        "s3_raw_sensor": DefaultSensorStatus.STOPPED,
        "lake_automation_sensor": DefaultSensorStatus.RUNNING,
    }
    for name in ("csv_dir_sensor", "s3_raw_sensor"):
        selection = defs.resolve_sensor_def(name).asset_selection
        assert selection is not None, name
        # A file's run carries its ingest as far down as it can be built (to gold).
        assert selection.resolve(asset_graph) == asset_graph.get_all_asset_keys(), name
    automation = defs.resolve_sensor_def("lake_automation_sensor")
    assert isinstance(automation, AutomationConditionSensorDefinition)
    automated = {k for k in asset_graph.get_all_asset_keys() if k.path[0] != "landing"}
    assert automated <= automation.asset_selection.resolve(asset_graph)


def test_refresh_lake_job_rebuilds_silver_and_gold(defs) -> None:
    job = defs.resolve_job_def("refresh_lake")
    assert job.description
    assert set(job.asset_layer.selected_asset_keys) == {
        key for key, group in EXPECTED_GROUPS.items() if group in ("silver", "gold")
    }


def test_ingest_checks_jobs_run_their_datasets_landing_and_bronze_checks_alone(defs) -> None:
    for dataset in DATASET_NAMES:
        job = defs.resolve_job_def(f"{dataset}_ingest_checks")
        assert job.description and "dagster/partition" in job.description
        assert job.asset_layer.asset_graph.asset_check_keys == {
            AssetCheckKey(AssetKey(["landing", dataset]), "landing_delivered_every_row"),
            AssetCheckKey(AssetKey(["bronze", dataset]), "bronze_matches_landing"),
        }
        assert not job.asset_layer.selected_asset_keys  # checks only: nothing is materialized


def test_joins_and_gold_carry_column_lineage_to_their_inputs(asset_graph) -> None:
    with_lineage = {
        key
        for key in asset_graph.get_all_asset_keys()
        if "dagster/column_lineage" in asset_graph.get(key).metadata
    }
    assert with_lineage == {AssetKey(["silver", t]) for t in JOINS} | {
        AssetKey(["gold", t]) for t in GOLD_TABLES
    }
    for key in with_lineage:
        lineage = asset_graph.get(key).metadata["dagster/column_lineage"]
        assert lineage.deps_by_column, key
        upstream = asset_graph.get(key).parent_keys
        for column, deps in lineage.deps_by_column.items():
            assert deps, (key, column)
            assert {dep.asset_key for dep in deps} <= upstream, (key, column)


def _env(tmp_path: Path, port: int) -> dict[str, str]:
    dagster_home = tmp_path / "dagster-home"
    dagster_home.mkdir(exist_ok=True)
    return {
        **os.environ,
        "LAKE_STATE_DIR": str(tmp_path / "state"),
        "LAKE_EMBEDDED_PORT": str(port),
        "DAGSTER_HOME": str(dagster_home),
    }


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _stop_if_started(tmp_path: Path, port: int) -> None:
    """A failing test must not leave an emulator behind."""
    if _port_open(port):
        stop(make_settings(tmp_path / "state", embedded_port=port))


def test_the_lake_resource_caps_polars_streaming_chunks_unless_the_user_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Polars' own chunks held too much text in flight at scale 100 (`STREAMING_CHUNK_ROWS`)."""
    settings = make_settings(tmp_path / "state", aws_mode=AwsMode.LOCALSTACK)
    resource = LakeResource.of(settings)
    monkeypatch.delenv("POLARS_STREAMING_CHUNK_SIZE", raising=False)
    resource.setup_for_execution(build_init_resource_context())
    assert os.environ["POLARS_STREAMING_CHUNK_SIZE"] == str(STREAMING_CHUNK_ROWS)

    monkeypatch.setenv("POLARS_STREAMING_CHUNK_SIZE", "500")
    resource.setup_for_execution(build_init_resource_context())
    assert os.environ["POLARS_STREAMING_CHUNK_SIZE"] == "500"


def test_loading_definitions_starts_nothing(tmp_path: Path) -> None:
    port = free_port()
    try:
        result = subprocess.run(
            [sys.executable, "-c", "import deathmetal_lake.definitions"],
            cwd=REPO_ROOT,
            env=_env(tmp_path, port),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert not _port_open(port)
        assert not (tmp_path / "state").exists()
    finally:
        _stop_if_started(tmp_path, port)


def test_dagster_definitions_validate_passes(tmp_path: Path) -> None:
    port = free_port()
    try:
        result = subprocess.run(
            [
                str(VENV_BIN / "dagster"),
                "definitions",
                "validate",
                "-m",
                "deathmetal_lake.definitions",
            ],
            cwd=REPO_ROOT,
            env=_env(tmp_path, port),
            capture_output=True,
            text=True,
            timeout=300,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "All code locations passed validation" in output
        assert not _port_open(port)
    finally:
        _stop_if_started(tmp_path, port)


def test_loading_the_definitions_warns_nothing() -> None:
    """`make run` and every CLI load them: no Dagster preview or deprecation warning to read."""
    loaded = subprocess.run(
        [sys.executable, "-W", "error", "-c", "import deathmetal_lake.definitions"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stderr == ""
