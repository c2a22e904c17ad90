"""`make run` as a user waits for it, from an empty state and for three increments after it.

Each `make run` is a process of its own (`<this python> -m deathmetal_lake.run`) with the
environment the Makefile gives it (LAKE_CSV_DIR, LAKE_STATE_DIR, LAKE_EMBEDDED_PORT, a fresh
DAGSTER_HOME) and is timed from process start to exit. The full build is measured twice from an
empty state: once with the embedded AWS started by the process itself (a user's first `make run`)
and once with it started beforehand; the increments then run against that second lake, whose
emulator is still up as it is after a user's `make run`, so their ratio is to the build that had
the emulator up too. The increments, generated from the seed:
an append (`reviews_append.csv`, 1,000 new review ids about existing albums), an update
(`reviews_update.csv`, 1,000 existing review ids with new scores and text) and a replaced file
(a new `bands.csv` with some rows changed and some gone). Each one's stage breakdown comes from
its own runs in the instance, and silver's row counts before and after show it landed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deathmetal_lake.settings import LakeSettings
from deathmetal_lake_tools.bench.common import MIB, BenchError
from deathmetal_lake_tools.bench.emulator import (
    embedded_aws,
    emulator_pid,
    lake_settings,
    stopped_at_exit,
)
from deathmetal_lake_tools.bench.lake import Step, ordered_layers, read_steps, table_rows
from deathmetal_lake_tools.bench.memory import reset_peak, status_kib
from deathmetal_lake_tools.generate import (
    IncrementFile,
    append_reviews,
    replace_file,
    update_reviews,
)

# Each increment: its name, how it is written into a CSV folder (with the seed), and the silver
# table whose rows it changes.
INCREMENTS: tuple[tuple[str, Callable[[Path, int], IncrementFile], str], ...] = (
    ("append", lambda csv_dir, seed: append_reviews(csv_dir, "append", seed), "silver.reviews"),
    ("update", lambda csv_dir, seed: update_reviews(csv_dir, "update", seed), "silver.reviews"),
    ("replace", lambda csv_dir, seed: replace_file(csv_dir, "bands", seed), "silver.bands"),
)


def make_run_env(settings: LakeSettings) -> dict[str, str]:
    """This process's environment without any lake or AWS setting, plus the lake's own."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("LAKE_", "AWS_")) and name != "DAGSTER_HOME"
    }
    env |= {
        "LAKE_CSV_DIR": str(settings.csv_path.resolve()),
        "LAKE_STATE_DIR": str(settings.state_path.resolve()),
        "LAKE_EMBEDDED_PORT": str(settings.embedded_port),
        "DAGSTER_HOME": str(settings.instance_dir),
        "LAKE_EMBEDDED_BUFFER_SECONDS": str(settings.embedded_buffer_seconds),
        "LAKE_LANDING_TIMEOUT_SECONDS": str(settings.landing_timeout_seconds),
    }
    return env


def time_make_run(settings: LakeSettings, log_path: Path) -> dict[str, Any]:
    """Run `make run`'s command as a process; its wall time, exit code and peak RSS."""
    from deathmetal_lake.instance import prepare_instance

    prepare_instance(settings.instance_dir)
    with log_path.open("ab") as log:
        began_epoch, began = time.time(), time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "deathmetal_lake.run"],
            cwd=log_path.parent,
            env=make_run_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise BenchError(f"make run exited with {process.returncode}; its log ends with:\n{tail}")
    # ru_maxrss is in KiB on Linux: the process's own peak, not the emulator's.
    return {
        "began": began_epoch,
        "ended": began_epoch + wall,
        "wall_seconds": wall,
        "run_peak_rss_mib": usage.ru_maxrss * 1024 / MIB,
    }


def breakdown(steps: list[Step], runs: list[dict[str, Any]], timed: dict[str, Any]) -> dict:
    """Where one `make run`'s wall time went, from its own runs' event logs."""
    layers: dict[str, float] = {}
    checks: dict[str, float] = {}
    for step in steps:
        if step.group.startswith("checks:"):
            name = step.group.split(":", 1)[1]
            checks[name] = checks.get(name, 0.0) + step.seconds
        else:
            layers[step.group] = layers.get(step.group, 0.0) + step.seconds
    starts = [r["start"] for r in runs if r["start"]]
    in_runs = sum(r["seconds"] or 0.0 for r in runs)
    # Interpreter start, imports, definitions, planning (and the emulator, if it starts it).
    before = (min(starts) - timed["began"]) if starts else timed["wall_seconds"]
    return {
        "runs": len(runs),
        "steps": len(steps),
        "layers": {name: layers[name] for name in ordered_layers(set(layers))},
        "checks": dict(sorted(checks.items())),
        "before_first_run": before,
        # Run start-up, step planning and event writes inside the runs.
        "in_runs_outside_steps": in_runs - sum(s.seconds for s in steps),
        # Creating the next run, reading the instance between runs, and the process's exit.
        "between_and_after_runs": timed["wall_seconds"] - before - in_runs,
    }


def measure_make_run(
    settings: LakeSettings, log_path: Path, seen_runs: set[str], emulator: int | None
) -> dict[str, Any]:
    """One timed `make run`, its breakdown and peaks; adds its runs to `seen_runs`."""
    from deathmetal_lake.instance import open_instance

    if emulator is not None:
        reset_peak(emulator)
    timed = time_make_run(settings, log_path)
    emulator = emulator if emulator is not None else emulator_pid(settings)
    peak_kib = status_kib(emulator, "VmHWM")
    with open_instance(settings) as instance:
        steps, runs = read_steps(instance, frozenset(seen_runs))
    seen_runs.update(r["run_id"] for r in runs)
    failed = [r["run_id"] for r in runs if r["status"] != "SUCCESS"]
    if failed:
        raise BenchError(f"runs {failed} of make run failed; see {log_path}")
    return {
        "wall_seconds": timed["wall_seconds"],
        "run_peak_rss_mib": timed["run_peak_rss_mib"],
        "emulator_peak_rss_mib": peak_kib * 1024 / MIB if peak_kib is not None else None,
        "breakdown": breakdown(steps, runs, timed),
    }


def cold_build(csv_dir: Path, run_dir: Path, buffer_seconds: int) -> dict[str, Any]:
    """`make run` from an empty state with no emulator running: the process starts it."""
    settings = lake_settings(csv_dir, run_dir, buffer_seconds)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with stopped_at_exit(settings):
            return measure_make_run(settings, run_dir / "make-run.log", set(), None)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _increment(
    name: str, made: IncrementFile, table: str, before: dict, after: dict, run: dict
) -> dict[str, Any]:
    expected = before.get(table, 0) + made.new_ids - made.removed_ids
    return {
        "name": name,
        "file": made.path.name,
        "rows": made.rows,
        "new_ids": made.new_ids,
        "changed_ids": made.changed_ids,
        "removed_ids": made.removed_ids,
        "table": table,
        "table_rows_before": before.get(table),
        "table_rows_after": after.get(table),
        "table_rows_expected": expected,
        "landed_as_expected": after.get(table) == expected,
        "tables_before": before,
        "tables_after": after,
        **run,
    }


def warm_build_and_increments(
    csv_dir: Path, run_dir: Path, *, seed: int, buffer_seconds: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """The full build with the emulator started beforehand, then each increment on that lake."""
    own_csv = run_dir / "csv"
    # Linked, not copied: increments add files or rename new versions over old names.
    shutil.copytree(csv_dir, own_csv, copy_function=os.link)
    settings = lake_settings(own_csv, run_dir, buffer_seconds)
    seen: set[str] = set()
    with embedded_aws(settings) as (startup_seconds, pid):
        full = measure_make_run(settings, run_dir / "make-run.log", seen, pid)
        log(f"  make run, emulator up: {full['wall_seconds']:.1f} s")
        tables = table_rows(settings)
        increments = []
        for name, write, table in INCREMENTS:
            made = write(own_csv, seed)
            run = measure_make_run(settings, run_dir / f"make-run-{name}.log", seen, pid)
            after = table_rows(settings)
            increments.append(_increment(name, made, table, tables, after, run))
            increments[-1]["ratio"] = run["wall_seconds"] / full["wall_seconds"]
            log(f"  {name}: {run['wall_seconds']:.1f} s ({increments[-1]['ratio']:.2f} of full)")
            if not increments[-1]["landed_as_expected"]:
                log(
                    f"  {name}: {table} has {after.get(table)} rows, expected "
                    f"{increments[-1]['table_rows_expected']}"
                )
            tables = after
    return {"emulator_start_seconds": startup_seconds, "full": full, "increments": increments}


def run_make_runs(
    csv_dir: Path,
    scale_dir: Path,
    *,
    seed: int,
    buffer_seconds: int,
    cold: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Every `make run` measurement of one scale (see the module docstring)."""
    result: dict[str, Any] = {}
    if cold:
        result["cold"] = cold_build(csv_dir, scale_dir / "make-run-cold", buffer_seconds)
        log(
            f"  make run from empty, emulator started by it: {result['cold']['wall_seconds']:.1f} s"
        )
    run_dir = scale_dir / "make-run-warm"
    try:
        result |= warm_build_and_increments(
            csv_dir, run_dir, seed=seed, buffer_seconds=buffer_seconds, log=log
        )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result
