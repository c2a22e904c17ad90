"""The lake under `dagster dev`, started as `make dev` starts it, and stopped whatever happens.

`running_lake` starts the embedded AWS (`python -m deathmetal_lake.local_aws up`) and then
`dagster dev` (webserver, daemon, code server) with a lake of its own: a fresh DAGSTER_HOME, free
ports, its own state folder and a copy of the sample CSVs as the watched folder. Everything logs to
files and is stopped when the block ends, on failure too. `lake_view.LakeView` then reads what the
UI shows. Used by `test_live.py` and by `scripts/screenshots.py`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
import polars as pl

from deathmetal_lake.instance import prepare_instance
from deathmetal_lake.resources import LakeResource
from deathmetal_lake.settings import LakeSettings
from deathmetal_lake_tests.conftest import REPO_ROOT, SAMPLE_CSV_DIR, free_port, make_settings

DAGSTER = Path(sys.executable).with_name("dagster")
POLL_SECONDS = 1.0
LOG_TAIL_LINES = 60


@dataclass(frozen=True)
class LiveLake:
    """A running `dagster dev` and embedded AWS, and where they keep their files."""

    root: Path
    settings: LakeSettings
    url: str
    dagster_log: Path

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        text = self.dagster_log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def lake_environment(settings: LakeSettings) -> dict[str, str]:
    """The environment of `make dev` for these settings, with none of the caller's AWS setup."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "LAKE_", "DAGSTER_"))
    }
    env.update(
        {
            "LAKE_AWS_MODE": settings.aws_mode.value,
            "LAKE_EMBEDDED_PORT": str(settings.embedded_port),
            "LAKE_STATE_DIR": str(settings.state_path),
            "LAKE_CSV_DIR": str(settings.csv_path),
            "LAKE_BUCKET": settings.bucket,
            "AWS_DEFAULT_REGION": settings.region,
            "LAKE_EMBEDDED_BUFFER_SECONDS": str(settings.embedded_buffer_seconds),
            "LAKE_LANDING_TIMEOUT_SECONDS": str(settings.landing_timeout_seconds),
            "DAGSTER_HOME": str(settings.instance_dir),
            "AWS_CONFIG_FILE": str(settings.state_path / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(settings.state_path / "no-aws-credentials"),
        }
    )
    return env


def _local_aws(command: str, env: dict[str, str], log: Path) -> None:
    with log.open("ab") as out:
        subprocess.run(
            [sys.executable, "-m", "deathmetal_lake.local_aws", command],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=180,
        )


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # ProcessLookupError: every process of the group has exited already.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _stop_group(process: subprocess.Popen[bytes], grace_seconds: float = 30.0) -> None:
    """SIGTERM to `dagster dev`, which stops its webserver, daemon and code server in order (as on
    Ctrl-C); then SIGKILL to whatever of its group is left.

    Not SIGTERM to the whole group: the children, stopped by the signal and by `dagster dev` at
    once, took the whole grace period to exit.
    """
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        print(f"dagster dev still running {grace_seconds:.0f} s after SIGTERM; killing it")
    _signal_group(process, signal.SIGKILL)
    process.wait()


def _wait_for_webserver(lake: LiveLake, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"dagster dev exited with {process.returncode}; its log ends with:\n"
                + lake.log_tail()
            )
        try:
            with urllib.request.urlopen(f"{lake.url}/server_info", timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(POLL_SECONDS)
    raise TimeoutError(f"no webserver at {lake.url} after {timeout:.0f} s:\n{lake.log_tail()}")


@contextmanager
def running_lake(
    root: Path, csv_source: Path = SAMPLE_CSV_DIR, startup_timeout: float = 180.0
) -> Iterator[LiveLake]:
    """`make dev` on a lake of its own under `root`; stops what it started when the block ends."""
    root.mkdir(parents=True, exist_ok=True)
    csv_dir = root / "csv"
    shutil.copytree(csv_source, csv_dir)
    settings = make_settings(root / "state", csv_dir=csv_dir)
    # As `make dev` does: the instance's settings from the repository's dagster.yaml.
    prepare_instance(settings.instance_dir)
    env = lake_environment(settings)
    port = free_port()
    lake = LiveLake(root, settings, f"http://127.0.0.1:{port}", root / "dagster-dev.log")
    aws_log = root / "local-aws-cli.log"
    try:
        _local_aws("up", env, aws_log)
        with lake.dagster_log.open("ab") as log:
            # A session of its own: the group can be signalled as a whole, and a shell's SIGINT
            # (ignored by background jobs of non-interactive shells) plays no part.
            process = subprocess.Popen(
                [str(DAGSTER), "dev", "-h", "127.0.0.1", "-p", str(port)],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_for_webserver(lake, process, startup_timeout)
            yield lake
        finally:
            _stop_group(process)
    finally:
        _local_aws("down", env, aws_log)


def read_table(settings: LakeSettings, layer: str, name: str) -> pl.DataFrame:
    """A table at `{layer}/{name}.parquet`, or the folder `{layer}/{name}/` of Parquet parts."""
    s3 = boto3.client("s3", **settings.boto3_client_kwargs())
    prefix = f"{layer}/{name}/"
    listed = s3.list_objects_v2(Bucket=settings.bucket, Prefix=prefix, MaxKeys=1)
    root = f"s3://{settings.bucket}/{layer}/{name}"
    source = f"{root}/**/*.parquet" if listed.get("KeyCount") else f"{root}.parquet"
    options = LakeResource.of(settings).polars_storage_options()
    return pl.scan_parquet(source, storage_options=options).collect()
