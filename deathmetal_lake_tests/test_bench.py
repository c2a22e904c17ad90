"""The benchmark command runs end to end at a tiny scale and reports every stage.

It asserts that the command works and that each figure is there and positive, never a time: the
README's figures come from running it at real scales.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deathmetal_lake.bench import FLOOR_STAGES, STAGES

pytestmark = pytest.mark.slow

# "asset checks" is reported when the lake has checks; every other stage always.
REQUIRED_STAGES = [stage for stage in STAGES if stage != "asset checks"]
POSITIVE_FIELDS = ("seconds", "input_mb", "mb_per_s", "rows_per_s", "bench_peak_rss_mib")


def _emulators_of(workdir: Path) -> list[int]:
    """Pids of embedded AWS processes whose state folder is under `workdir`."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"deathmetal_lake.local_aws" in argv and any(
            arg.startswith(str(workdir).encode()) for arg in argv
        ):
            found.append(int(entry.name))
    return found


def test_bench_runs_and_reports_every_stage(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "deathmetal_lake.bench",
            "--scale",
            "0.02",
            "--buffer-seconds",
            "0",
            "--json",
            str(out),
            "--workdir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]

    report = json.loads(out.read_text())
    machine = report["machine"]
    assert machine["cores"] >= 1
    assert machine["cpu_model"]
    assert {"python", "polars", "dagster"} <= machine["versions"].keys()

    (result,) = report["scales"]
    assert result["scale"] == 0.02
    assert result["source"]["rows"] > 0 and result["source"]["bytes"] > 0
    stages = result["stages"]
    assert set(REQUIRED_STAGES) <= stages.keys()
    for name, stage in stages.items():
        for field in POSITIVE_FIELDS:
            assert stage[field] is not None and stage[field] > 0, (name, field, stage)
        if sys.platform.startswith("linux"):
            assert stage["emulator_peak_rss_mib"] > 0, (name, stage)
    for kind in ("local", "s3"):
        floor = result["floors"][kind]
        assert set(FLOOR_STAGES) <= floor.keys()
        for name in FLOOR_STAGES:
            for field in POSITIVE_FIELDS:
                assert floor[name][field] is not None and floor[name][field] > 0, (kind, name)
            assert result["ratios"][kind][name] > 0
    assert len(result["repetitions"]) == 1

    # The Markdown table names every stage, and nothing is left running or lying around.
    for name in REQUIRED_STAGES:
        assert f"| {name} |" in completed.stdout
    assert _emulators_of(workdir) == []
    assert not any(workdir.glob("scale-*/rep-*"))
