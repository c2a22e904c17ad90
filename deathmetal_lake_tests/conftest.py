"""Shared fixtures: an isolated environment and the embedded AWS on a free port."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
from dagster import AssetCheckEvaluation, DagsterEventType, DagsterInstance

from deathmetal_lake import settings as settings_module
from deathmetal_lake.instance import open_instance
from deathmetal_lake.local_aws import ensure_running, stop
from deathmetal_lake.settings import AwsMode, LakeSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CSV_DIR = REPO_ROOT / "csv"
# The gold marts the lake must have, spelled out here rather than read from the code under test.
GOLD_TABLES = (
    "band_avg_scores",
    "top10_by_country",
    "brazilian_bands",
    "band_album_counts",
    "album_rankings",
    "genre_by_decade",
)


def isolate_env(env: pytest.MonkeyPatch, root: Path) -> None:
    """No real AWS profile, endpoint or lake setting of the developer leaks into the lake.

    That includes a developer's `.env`: settings read in the test process ignore it.
    """
    env.setitem(settings_module._EnvironmentSettings.model_config, "env_file", None)
    for name in list(os.environ):
        if name.startswith(("AWS_", "LAKE_")) or name == "DAGSTER_HOME":
            env.delenv(name)
    env.setenv("AWS_CONFIG_FILE", str(root / "no-aws-config"))
    env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(root / "no-aws-credentials"))


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_env(monkeypatch, tmp_path)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_settings(state_dir: Path, **overrides: Any) -> LakeSettings:
    values: dict[str, Any] = {
        "aws_mode": AwsMode.EMBEDDED,
        "endpoint_url": None,
        "embedded_port": free_port(),
        "state_dir": state_dir,
        "csv_dir": state_dir.parent / "csv",
        "dagster_home": state_dir / "dagster",
        "embedded_buffer_seconds": 0,
        "landing_timeout_seconds": 60,
    }
    values.update(overrides)
    return LakeSettings(**values)


def aws_client(settings: LakeSettings, service: str) -> Any:
    return boto3.client(service, **settings.boto3_client_kwargs())


def check_evaluations(instance: DagsterInstance, run_id: str) -> list[AssetCheckEvaluation]:
    """The asset check evaluations a run recorded, as the UI shows them."""
    records = instance.get_records_for_run(
        run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
    ).records
    return [r.event_log_entry.dagster_event.event_specific_data for r in records]


@contextmanager
def sample_lake_built(root: Path) -> Iterator[tuple[LakeSettings, DagsterInstance]]:
    """The committed sample ingested by `run_lake` into a lake of its own under `root`.

    For module-scoped fixtures: the per-test environment isolation does not cover them, so this
    isolates the environment itself for as long as the lake lives.
    """
    from deathmetal_lake.batch import run_lake

    csv_dir = root / "csv"
    shutil.copytree(SAMPLE_CSV_DIR, csv_dir)
    settings = make_settings(root / "state", csv_dir=csv_dir)
    with pytest.MonkeyPatch.context() as env:
        isolate_env(env, root)
        ensure_running(settings)
        try:
            # As `make run` opens it: the repository's dagster.yaml, DAGSTER_HOME set (and reset).
            env.setenv("DAGSTER_HOME", str(settings.instance_dir))
            with open_instance(settings) as instance:
                # Every test reads this lake: a failed build errors them all, not misleads them.
                assert run_lake(settings, instance), "run_lake failed over the sample; see the log"
                yield settings, instance
        finally:
            stop(settings)


@pytest.fixture
def lake_settings(tmp_path: Path) -> LakeSettings:
    return make_settings(tmp_path / "state")


@pytest.fixture
def embedded_aws(lake_settings: LakeSettings) -> Iterator[LakeSettings]:
    """The embedded AWS of this test, on a free port with its own state; stopped afterwards."""
    ensure_running(lake_settings)
    try:
        yield lake_settings
    finally:
        stop(lake_settings)
