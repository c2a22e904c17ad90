"""An embedded AWS per measurement: fresh state on a free port, always stopped afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from deathmetal_lake.settings import AwsMode, LakeSettings
from deathmetal_lake_tools.bench.common import MB, BenchError


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lake_settings(csv_dir: Path, run_dir: Path, buffer_seconds: int) -> LakeSettings:
    """Settings of a lake of its own under `run_dir`: state, Dagster home and a free port."""
    source_bytes = sum(p.stat().st_size for p in csv_dir.glob("*.csv"))
    return LakeSettings(
        aws_mode=AwsMode.EMBEDDED,
        endpoint_url=None,
        region="us-east-1",
        embedded_port=free_port(),
        state_dir=run_dir / "state",
        bucket="csv-batch-bucket",
        csv_dir=csv_dir,
        dagster_home=run_dir / "dagster",
        embedded_buffer_seconds=buffer_seconds,
        landing_timeout_seconds=max(300.0, source_bytes / MB * 5),
    )


def kill_orphan_emulator(state_dir: Path) -> None:
    """Stop an emulator of ours that never answered (ensure_running timed out): found by the
    unique state folder on its command line, ended by its pid."""
    wanted = str(state_dir.resolve()).encode()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"deathmetal_lake.local_aws" in argv and wanted in argv:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def emulator_pid(settings: LakeSettings) -> int:
    """The pid of the running emulator of `settings`."""
    from deathmetal_lake.local_aws import control

    current = control.health(settings)
    if current is None:
        raise BenchError(f"no embedded AWS answers on port {settings.embedded_port}")
    return int(current["pid"])


@contextlib.contextmanager
def stopped_at_exit(settings: LakeSettings) -> Iterator[None]:
    """Stop the emulator of `settings` when the block ends, whoever started it, also on failure."""
    from deathmetal_lake.local_aws import control

    try:
        yield
    finally:
        try:
            control.stop(settings)
        except Exception as error:
            print(f"could not stop the embedded AWS cleanly: {error}", file=sys.stderr)
        finally:
            if sys.platform.startswith("linux"):
                kill_orphan_emulator(settings.state_path)


@contextlib.contextmanager
def embedded_aws(settings: LakeSettings) -> Iterator[tuple[float, int]]:
    """Start an emulator for `settings`; yields (start-up seconds, pid); always stopped."""
    from deathmetal_lake.local_aws import control

    with stopped_at_exit(settings):
        began = time.perf_counter()
        control.ensure_running(settings)
        yield time.perf_counter() - began, emulator_pid(settings)


def polars_s3_options(settings: LakeSettings) -> dict[str, str]:
    return {
        "aws_endpoint_url": settings.aws_endpoint or "",
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
        "aws_region": settings.region,
        "aws_allow_http": "true",
    }
