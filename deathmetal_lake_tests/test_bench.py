"""The benchmark command runs end to end at a tiny scale, reports every stage, and times `make run`
as processes: from an empty state, then for three increments whose rows land in silver.

It asserts that the command works and that each figure is there and positive, never a time: the
README's figures come from running it at real scales.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deathmetal_lake_tools.bench import FLOOR_STAGES, INCREMENTS, STAGES

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


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    """One run of the whole benchmark at scale 0.05 (about 5,000 rows): its report, its Markdown
    and its work folder."""
    tmp_path = tmp_path_factory.mktemp("bench")
    workdir = tmp_path / "work"
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "deathmetal_lake_tools.bench",
            "--scale",
            "0.05",
            "--buffer-seconds",
            "0",
            "--json",
            str(out),
            "--workdir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(out.read_text()), completed.stdout, workdir


def test_bench_runs_and_reports_every_stage(bench: tuple[dict, str, Path]) -> None:
    report, stdout, workdir = bench
    machine = report["machine"]
    assert machine["cores"] >= 1
    assert machine["cpu_model"]
    assert {"python", "polars", "dagster"} <= machine["versions"].keys()

    (result,) = report["scales"]
    assert result["scale"] == 0.05
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
        assert f"| {name} |" in stdout
    assert _emulators_of(workdir) == []
    assert not any(workdir.glob("scale-*/*"))


def _assert_make_run(run: dict) -> None:
    assert run["wall_seconds"] > 0 and run["run_peak_rss_mib"] > 0
    parts = run["breakdown"]
    assert parts["runs"] >= 1 and parts["steps"] >= 1
    assert all(seconds > 0 for seconds in parts["layers"].values()), parts
    assert parts["before_first_run"] > 0
    step_seconds = sum(parts["layers"].values()) + sum(parts["checks"].values())
    accounted = step_seconds + parts["before_first_run"] + parts["in_runs_outside_steps"]
    assert accounted + parts["between_and_after_runs"] == pytest.approx(run["wall_seconds"])


def test_bench_times_make_run_from_empty_and_three_increments(
    bench: tuple[dict, str, Path],
) -> None:
    report, stdout, _ = bench
    (result,) = report["scales"]
    runs = result["make_runs"]
    for build in (runs["cold"], runs["full"]):
        _assert_make_run(build)
        assert {"landing", "bronze", "silver", "gold"} <= build["breakdown"]["layers"].keys()
    assert runs["emulator_start_seconds"] > 0

    increments = {inc["name"]: inc for inc in runs["increments"]}
    assert (
        list(increments) == [name for name, _, _ in INCREMENTS] == ["append", "update", "replace"]
    )
    for inc in increments.values():
        _assert_make_run(inc)
        assert inc["ratio"] == pytest.approx(inc["wall_seconds"] / runs["full"]["wall_seconds"])
        assert inc["landed_as_expected"], inc
        assert {"landing", "bronze", "silver"} <= inc["breakdown"]["layers"].keys()

    # The rows landed: 1,000 new ids; 1,000 ids with a newer version (the older ones are
    # quarantined as superseded); a new bands.csv without the rows it dropped.
    append, update, replace = (increments[n] for n in ("append", "update", "replace"))
    assert append["file"] == "reviews_append.csv" and append["new_ids"] == 1000
    assert append["table_rows_after"] == append["table_rows_before"] + 1000
    assert update["file"] == "reviews_update.csv" and update["changed_ids"] == 1000
    assert update["table_rows_after"] == update["table_rows_before"]
    before, after = update["tables_before"], update["tables_after"]
    assert after["quarantine.reviews"] == before["quarantine.reviews"] + 1000
    assert replace["file"] == "bands.csv" and replace["removed_ids"] >= 1
    assert replace["table_rows_after"] == replace["table_rows_before"] - replace["removed_ids"]
    assert replace["tables_after"]["silver.reviews"] == replace["tables_before"]["silver.reviews"]

    # Reported in the Markdown, with their targets.
    for name in increments:
        assert f"| {name} (" in stdout
    assert "| from empty, starts the emulator |" in stdout
    targets = {t["target"] for t in result["targets"]}
    assert "make run from an empty state <= 8 s wall" in targets
    assert "each increment <= 0.15 of the full build" in targets
