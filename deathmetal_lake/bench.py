"""Benchmark: the whole lake on the embedded AWS, side by side with two plain-Polars floors.

    python -m deathmetal_lake.bench --scale 1 10 [--repeat 3] [--json OUT] [--seed N]
                                    [--workdir DIR] [--buffer-seconds S] [--no-floors]

For each scale it generates the source CSVs with the project's generator, then, per repetition,
starts an embedded AWS with a fresh state folder on a free port and a fresh Dagster instance, runs
the lake from that empty state exactly as `make run` does (`run_lake`: one landing+bronze run per
file, then one silver+gold run), and stops the emulator again, also on failure.

Stage times come from what the lake itself recorded, not from guesses: the landing
materializations' `send_seconds` and `delivery_seconds` metadata, and each step's STEP_START to
STEP_SUCCESS in the run's event log (a step covers loading its inputs, computing and writing its
outputs through the IO manager). "Dagster overhead" is the whole lake's wall time minus every
step's, i.e. planning, run creation, event writes and process-local start-up of each run.

Peak RSS is measured per stage and per process: a sampler thread reads `VmHWM` of this process
(where Dagster executes every step in process) and of the emulator from `/proc/<pid>/status`
every few milliseconds and resets it through `/proc/<pid>/clear_refs`, so each sample is the exact
peak of its interval and a stage's peak is the largest sample overlapping the stage. Without
`/proc` (not Linux) only this process's lifetime peak (`getrusage`) is known.

In the same repetition, after the lake, two floors do the same bronze, silver and gold work with
plain Polars and no orchestrator, using the project's own transforms: read each CSV (every column
as text), write bronze Parquet with the provenance columns, build the silver tables, quarantines
and joins, and the gold marts; once on local disk and once through the same emulator's S3.
Reported figures are medians over the repetitions.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deathmetal_lake.datasets import DATASETS
from deathmetal_lake.generate import generate
from deathmetal_lake.settings import AwsMode, LakeSettings

MB = 1e6
MIB = 1024 * 1024
SAMPLE_SECONDS = 0.02

# Lake stages in table order; the floors have bronze, silver, gold and their sum.
STAGES = (
    "landing send",
    "firehose delivery",
    "landing (send+delivery)",
    "bronze",
    "silver",
    "gold",
    "bronze+silver+gold",
    "asset checks",
    "dagster overhead",
    "whole lake",
)
FLOOR_STAGES = ("bronze", "silver", "gold", "bronze+silver+gold")
# What each stage reads, for the table's "input" column.
STAGE_INPUT = {
    "landing send": "CSV",
    "firehose delivery": "JSON lines",
    "landing (send+delivery)": "CSV",
    "bronze": "JSON lines",
    "silver": "bronze Parquet",
    "gold": "silver Parquet",
    "bronze+silver+gold": "JSON lines",
    "asset checks": "all layers",
    "dagster overhead": "CSV",
    "whole lake": "CSV",
}
FLOOR_INPUT = {
    "bronze": "CSV",
    "silver": "bronze Parquet",
    "gold": "silver Parquet",
    "bronze+silver+gold": "CSV",
}
# Step groups: the first part of the asset keys a step materializes.
GROUP_OF_KEY_PREFIX = {
    "landing": "landing",
    "bronze": "bronze",
    "silver": "silver",
    "quarantine": "silver",
    "gold": "gold",
}


class BenchError(RuntimeError):
    """The benchmark could not run the lake (a failed run, an emulator that did not start)."""


# --- machine --------------------------------------------------------------------------------


def _proc_field(path: str, name: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        return None
    return None


def machine_info() -> dict[str, Any]:
    import dagster
    import polars

    memory_kb = _proc_field("/proc/meminfo", "MemTotal")
    versions = {"python": platform.python_version(), "polars": polars.__version__}
    versions["dagster"] = dagster.__version__
    for module in ("dagster_polars", "moto", "boto3", "pyarrow"):
        with contextlib.suppress(Exception):
            versions[module] = __import__(module).__version__
    return {
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "?",
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(int(memory_kb.split()[0]) / MIB, 1) if memory_kb else None,
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions,
    }


# --- peak RSS ---------------------------------------------------------------------------------


def _status_kib(pid: int, name: str) -> int | None:
    """A `kB` field of /proc/<pid>/status; read raw, as the sampler calls it every few ms."""
    try:
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, 1 << 14)
    finally:
        os.close(fd)
    start = data.find(f"\n{name}:".encode())
    if start < 0:
        return None
    end = data.find(b"\n", start + 1)
    return int(data[start + len(name) + 2 : end].split()[0])


class PeakSampler:
    """Per-interval peak RSS of some processes, from VmHWM reset after each read (see docstring).

    Each sample is (end time, {process: peak bytes during the interval}); intervals are
    contiguous from `start()` to `stop()`. Where VmHWM cannot be reset, a sample is the current
    RSS instead, which can miss short peaks between samples.
    """

    def __init__(self, pids: dict[str, int], interval: float = SAMPLE_SECONDS) -> None:
        self.pids = dict(pids)
        self.interval = interval
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.exact = {name: self._can_reset(pid) for name, pid in self.pids.items()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = 0.0

    @staticmethod
    def _can_reset(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            return False
        return _status_kib(pid, "VmHWM") is not None

    def _take(self) -> None:
        peaks: dict[str, int] = {}
        for name, pid in self.pids.items():
            kib = _status_kib(pid, "VmHWM" if self.exact[name] else "VmRSS")
            if kib is None:
                continue
            peaks[name] = kib * 1024
            if self.exact[name]:
                with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as h:
                    h.write("5")
        self.samples.append((time.time(), peaks))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def start(self) -> None:
        self._started_at = time.time()
        for name, pid in self.pids.items():
            if self.exact[name]:
                with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as h:
                    h.write("5")
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._take()

    def peak(self, name: str, windows: list[tuple[float, float]]) -> int | None:
        """Largest sample of `name` whose interval overlaps one of the windows (epoch seconds)."""
        best: int | None = None
        previous = self._started_at
        for end, peaks in self.samples:
            value = peaks.get(name)
            if value is not None and any(previous < b and end > a for a, b in windows):
                best = value if best is None else max(best, value)
            previous = end
        if best is None and windows:
            # A window of a few ms can fall between samples when the wall clock is stepped
            # (NTP in a VM): take the first sample that ended after the window began.
            start = min(a for a, _ in windows)
            later = [p[name] for end, p in self.samples if end >= start and name in p]
            fallback = later[:1] or [p[name] for _, p in self.samples[-1:] if name in p]
            best = fallback[0] if fallback else None
        return best


# --- running the lake -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _kill_orphan_emulator(state_dir: Path) -> None:
    """Stop an emulator of ours that never answered (ensure_running timed out): found by the
    unique state folder on its command line, ended by its pid."""
    import signal

    wanted = str(state_dir.resolve()).encode()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"deathmetal_lake.local_aws" in argv and wanted in argv:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


@contextlib.contextmanager
def embedded_aws(settings: LakeSettings) -> Iterator[tuple[float, int]]:
    """Start an emulator for `settings`; yields (start-up seconds, pid); always stopped."""
    from deathmetal_lake.local_aws import control

    began = time.perf_counter()
    try:
        control.ensure_running(settings)
        started = time.perf_counter() - began
        current = control.health(settings)
        if current is None:
            raise BenchError("the embedded AWS stopped answering right after it started")
        yield started, int(current["pid"])
    finally:
        try:
            control.stop(settings)
        except Exception as error:
            print(f"could not stop the embedded AWS cleanly: {error}", file=sys.stderr)
        finally:
            if sys.platform.startswith("linux"):
                _kill_orphan_emulator(settings.state_dir)


def _write_instance_config(instance_dir: Path) -> None:
    instance_dir.mkdir(parents=True, exist_ok=True)
    (instance_dir / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")


@dataclass
class Step:
    run_id: str
    key: str
    group: str
    start: float
    end: float
    metadata: dict[str, Any] = field(default_factory=dict)
    timeline: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.end - self.start


def _metadata_values(metadata: dict[str, Any]) -> dict[str, Any]:
    values = {}
    for name, value in metadata.items():
        raw = getattr(value, "value", value)
        if isinstance(raw, int | float | str | bool) or raw is None:
            values[name] = raw
    return values


def read_steps(instance: Any) -> tuple[list[Step], list[dict[str, Any]]]:
    """Every step of every run in the instance, with its group and materialization metadata."""
    from dagster import DagsterEventType

    steps: list[Step] = []
    runs: list[dict[str, Any]] = []
    for run in instance.get_runs():
        starts: dict[str, float] = {}
        ends: dict[str, float] = {}
        groups: dict[str, str] = {}
        metadata: dict[str, dict[str, Any]] = {}
        timeline: dict[str, dict[str, float]] = {}
        run_start = run_end = None
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None:
                continue
            kind = event.event_type
            if kind == DagsterEventType.RUN_START:
                run_start = entry.timestamp
            elif kind in (DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE):
                run_end = entry.timestamp
            step_key = entry.step_key
            if step_key is None:
                continue
            if kind == DagsterEventType.STEP_START:
                starts[step_key] = entry.timestamp
            elif kind in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
                ends[step_key] = entry.timestamp
                if kind == DagsterEventType.STEP_FAILURE:
                    raise BenchError(f"step {step_key} of run {run.run_id} failed")
            elif kind == DagsterEventType.ASSET_MATERIALIZATION:
                materialization = event.event_specific_data.materialization
                prefix = materialization.asset_key.path[0]
                # A step that materializes belongs to its layer, even if it also runs checks.
                groups[step_key] = GROUP_OF_KEY_PREFIX.get(prefix, prefix)
                if prefix == "landing":
                    metadata[step_key] = _metadata_values(materialization.metadata)
            elif kind == DagsterEventType.ASSET_CHECK_EVALUATION:
                prefix = event.event_specific_data.asset_key.path[0]
                groups.setdefault(step_key, f"checks:{GROUP_OF_KEY_PREFIX.get(prefix, prefix)}")
            # Offsets of the step's phases (inputs loaded, output handled) for the JSON report.
            if step_key in starts:
                name = kind.value.lower()
                timeline.setdefault(step_key, {})[name] = round(
                    entry.timestamp - starts[step_key], 4
                )
        for step_key, start in starts.items():
            if step_key not in ends:
                raise BenchError(f"step {step_key} of run {run.run_id} did not finish")
            steps.append(
                Step(
                    run_id=run.run_id,
                    key=step_key,
                    group=groups.get(step_key, "other"),
                    start=start,
                    end=ends[step_key],
                    metadata=metadata.get(step_key, {}),
                    timeline=timeline.get(step_key, {}),
                )
            )
        runs.append(
            {
                "run_id": run.run_id,
                "status": run.status.value,
                "partition": run.tags.get("dagster/partition"),
                "steps": sorted(k for k in starts),
                "seconds": (run_end - run_start) if run_start and run_end else None,
                "step_seconds": sum(ends[k] - starts[k] for k in starts),
            }
        )
    return steps, runs


def _prefix_bytes(s3: Any, bucket: str, prefix: str) -> int:
    total = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        total += sum(item["Size"] for item in page.get("Contents", []))
    return total


def _stage(
    seconds: float,
    input_bytes: float,
    rows: int,
    windows: list[tuple[float, float]],
    sampler: PeakSampler,
) -> dict[str, Any]:
    return {
        "seconds": seconds,
        "input_bytes": input_bytes,
        "rows": rows,
        "bench_peak_rss": sampler.peak("bench", windows),
        "emulator_peak_rss": sampler.peak("emulator", windows),
    }


def lake_stages(
    steps: list[Step],
    whole: tuple[float, float],
    source_bytes: int,
    rows: int,
    stored: dict[str, int],
    sampler: PeakSampler,
) -> dict[str, dict[str, Any]]:
    """The lake's stages from its steps (see the module docstring)."""
    by_group: dict[str, list[Step]] = {}
    for step in steps:
        by_group.setdefault(step.group, []).append(step)
    for needed in ("landing", "bronze", "silver", "gold"):
        if not by_group.get(needed):
            raise BenchError(f"no {needed} step ran; the lake did not build every layer")
    landing = by_group["landing"]
    for step in landing:
        if "send_seconds" not in step.metadata or "delivery_seconds" not in step.metadata:
            raise BenchError(f"landing step {step.key} recorded no send/delivery seconds")
    send_windows = [(s.start, s.end - s.metadata["delivery_seconds"]) for s in landing]
    delivery_windows = [(s.end - s.metadata["delivery_seconds"], s.end) for s in landing]
    json_bytes = sum(s.metadata.get("bytes_sent", 0) for s in landing)

    def seconds_of(group: str) -> float:
        return sum(s.seconds for s in by_group.get(group, []))

    def windows_of(*groups: str) -> list[tuple[float, float]]:
        return [(s.start, s.end) for g in groups for s in by_group.get(g, [])]

    checks = sorted(g for g in by_group if g.startswith("checks:"))

    all_steps = sum(s.seconds for s in steps)
    step_windows = [(s.start, s.end) for s in steps]
    gaps = []  # the whole lake's time outside every step: Dagster's own work
    cursor = whole[0]
    for a, b in sorted(step_windows):
        if a > cursor:
            gaps.append((cursor, a))
        cursor = max(cursor, b)
    if whole[1] > cursor:
        gaps.append((cursor, whole[1]))
    bsg = ("bronze", "silver", "gold")
    stages = {
        "landing send": _stage(
            sum(s.metadata["send_seconds"] for s in landing),
            source_bytes,
            rows,
            send_windows,
            sampler,
        ),
        "firehose delivery": _stage(
            sum(s.metadata["delivery_seconds"] for s in landing),
            json_bytes,
            rows,
            delivery_windows,
            sampler,
        ),
        "landing (send+delivery)": _stage(
            seconds_of("landing"), source_bytes, rows, windows_of("landing"), sampler
        ),
        "bronze": _stage(seconds_of("bronze"), json_bytes, rows, windows_of("bronze"), sampler),
        "silver": _stage(
            seconds_of("silver"), stored["bronze"], rows, windows_of("silver"), sampler
        ),
        "gold": _stage(seconds_of("gold"), stored["silver"], rows, windows_of("gold"), sampler),
        "bronze+silver+gold": _stage(
            sum(seconds_of(g) for g in bsg), json_bytes, rows, windows_of(*bsg), sampler
        ),
        # Asset checks of every layer, in steps of their own (input: what they read varies).
        "asset checks": _stage(
            sum(seconds_of(g) for g in checks), source_bytes, rows, windows_of(*checks), sampler
        ),
        "dagster overhead": _stage(
            (whole[1] - whole[0]) - all_steps, source_bytes, rows, gaps, sampler
        ),
        "whole lake": _stage(whole[1] - whole[0], source_bytes, rows, [whole], sampler),
    }
    if not checks:
        del stages["asset checks"]
    return stages


def run_lake_once(settings: LakeSettings, sampler: PeakSampler) -> dict[str, Any]:
    """`make run` against the started emulator, from an empty state; the raw measurements."""
    import boto3
    from dagster import DagsterInstance

    from deathmetal_lake.run import run_lake

    _write_instance_config(settings.instance_dir)
    with DagsterInstance.from_config(str(settings.instance_dir)) as instance:
        began = time.time()
        ok = run_lake(settings, instance)
        ended = time.time()
        steps, runs = read_steps(instance)
    if not ok:
        failed = [r["run_id"] for r in runs if r["status"] != "SUCCESS"]
        raise BenchError(f"the lake failed (runs {failed}); the Dagster log above says why")
    s3 = boto3.client("s3", **settings.boto3_client_kwargs())
    stored = {
        prefix: _prefix_bytes(s3, settings.bucket, f"{prefix}/")
        for prefix in ("landing", "bronze", "silver", "quarantine", "gold")
    }
    return {"began": began, "ended": ended, "steps": steps, "runs": runs, "stored": stored}


# --- the plain-Polars floors ------------------------------------------------------------------


def run_floor(
    csv_dir: Path,
    root: str,
    storage_options: dict[str, Any] | None,
    sampler: PeakSampler,
    rows: int,
    size_of: Callable[[str], int],
) -> dict[str, dict[str, Any]]:
    """Bronze, silver and gold with plain Polars under `root` (a folder or an s3:// URL)."""
    import polars as pl

    from deathmetal_lake.assets.lineage import SILVER_TABLES
    from deathmetal_lake.transforms import silver as silver_transforms
    from deathmetal_lake.transforms.gold import MARTS
    from deathmetal_lake.transforms.silver import PARSE_ERROR_COLUMN, RAW_COLUMN

    options = {"storage_options": storage_options} if storage_options else {}
    ingest = {d.name: f"{d.name}-floor" for d in DATASETS}

    def path(*parts: str) -> str:
        return "/".join((root, *parts))

    def scan(table: str) -> pl.LazyFrame:
        layer = "silver" if table in SILVER_TABLES else "gold"
        return pl.scan_parquet(path(layer, f"{table}.parquet"), **options)

    if storage_options is None:
        for layer in ("silver", "quarantine", "gold", *(f"bronze/{d.name}" for d in DATASETS)):
            Path(root, layer).mkdir(parents=True, exist_ok=True)

    # An empty field is "" in the lake's JSON lines; Polars reads it as null unless told.
    if "empty_string_is_null" in inspect.signature(pl.scan_csv).parameters:
        empty_as_text = {"empty_string_is_null": False}
    else:  # polars < 1.43
        empty_as_text = {"missing_utf8_is_empty_string": True}

    def bronze() -> None:
        for dataset in DATASETS:
            source_file = f"{dataset.name}.csv"
            (
                pl.scan_csv(csv_dir / source_file, infer_schema=False, **empty_as_text)
                .with_row_index("_source_row", offset=1)
                .with_columns(
                    pl.lit(source_file).alias("_source_file"),
                    pl.col("_source_row").cast(pl.Int64),
                    pl.lit(ingest[dataset.name]).alias("_ingest_id"),
                    pl.lit(None, pl.String).alias(PARSE_ERROR_COLUMN),
                    pl.lit(None, pl.String).alias(RAW_COLUMN),
                )
                .sink_parquet(
                    path("bronze", dataset.name, f"{ingest[dataset.name]}.parquet"), **options
                )
            )

    def silver() -> None:
        year = datetime.now(UTC).year
        for dataset in DATASETS:
            key = ingest[dataset.name]
            bronze_frames = {
                key: pl.scan_parquet(path("bronze", dataset.name, f"{key}.parquet"), **options)
            }
            result = silver_transforms.build_silver(
                dataset.name,
                bronze_frames,
                [key],
                current_year=year,
                source_files={key: f"{dataset.name}.csv"},
            )
            # Both outputs in one query: Polars shares the typed, validated rows between them.
            pl.collect_all(
                [
                    result.table.sink_parquet(
                        path("silver", f"{dataset.name}.parquet"), lazy=True, **options
                    ),
                    result.quarantine.sink_parquet(
                        path("quarantine", f"{dataset.name}.parquet"), lazy=True, **options
                    ),
                ]
            )
        silver_transforms.music_catalog(scan("albums"), scan("bands")).sink_parquet(
            path("silver", "music_catalog.parquet"), **options
        )
        silver_transforms.album_reviews(scan("reviews"), scan("albums")).sink_parquet(
            path("silver", "album_reviews.parquet"), **options
        )

    def gold() -> None:
        for mart in MARTS:
            tables = {name: scan(name) for name in mart.inputs}
            mart.transform(**tables).sink_parquet(path("gold", f"{mart.name}.parquet"), **options)

    stages: dict[str, dict[str, Any]] = {}
    windows = []
    source_bytes = sum((csv_dir / f"{d.name}.csv").stat().st_size for d in DATASETS)
    inputs = {"bronze": lambda: source_bytes, "silver": lambda: size_of("bronze"),
              "gold": lambda: size_of("silver")}  # fmt: skip
    for name, work in (("bronze", bronze), ("silver", silver), ("gold", gold)):
        began_wall, began = time.time(), time.perf_counter()
        work()
        seconds = time.perf_counter() - began
        windows.append((began_wall, time.time()))
        stages[name] = _stage(seconds, inputs[name](), rows, [windows[-1]], sampler)
    stages["bronze+silver+gold"] = _stage(
        sum(stages[s]["seconds"] for s in ("bronze", "silver", "gold")),
        source_bytes,
        rows,
        windows,
        sampler,
    )
    return stages


def _local_size(root: Path) -> Callable[[str], int]:
    def size(layer: str) -> int:
        return sum(p.stat().st_size for p in (root / layer).rglob("*.parquet"))

    return size


# --- one repetition, one scale ----------------------------------------------------------------


def polars_s3_options(settings: LakeSettings) -> dict[str, str]:
    return {
        "aws_endpoint_url": settings.aws_endpoint or "",
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
        "aws_region": settings.region,
        "aws_allow_http": "true",
    }


def run_repetition(
    csv_dir: Path,
    rep_dir: Path,
    *,
    buffer_seconds: int,
    rows: int,
    floors: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    import boto3

    source_bytes = sum((csv_dir / f"{d.name}.csv").stat().st_size for d in DATASETS)
    settings = LakeSettings(
        aws_mode=AwsMode.EMBEDDED,
        endpoint_url=None,
        region="us-east-1",
        embedded_port=free_port(),
        state_dir=rep_dir / "state",
        bucket="csv-batch-bucket",
        csv_dir=csv_dir,
        dagster_home=rep_dir / "dagster",
        embedded_buffer_seconds=buffer_seconds,
        landing_timeout_seconds=max(300.0, source_bytes / MB * 5),
    )
    with embedded_aws(settings) as (startup_seconds, emulator_pid):
        log(f"  embedded AWS up in {startup_seconds:.1f} s (pid {emulator_pid}); running the lake")
        sampler = PeakSampler({"bench": os.getpid(), "emulator": emulator_pid})
        sampler.start()
        try:
            lake = run_lake_once(settings, sampler)
            log(f"  lake done in {lake['ended'] - lake['began']:.1f} s")
            result: dict[str, Any] = {"emulator_start_seconds": startup_seconds}
            floor: dict[str, Any] = {}
            if floors:
                local_root = rep_dir / "floor"
                floor["local"] = run_floor(
                    csv_dir, str(local_root), None, sampler, rows, _local_size(local_root)
                )
                log(f"  local floor {floor['local']['bronze+silver+gold']['seconds']:.1f} s")
                s3 = boto3.client("s3", **settings.boto3_client_kwargs())
                floor["s3"] = run_floor(
                    csv_dir,
                    f"s3://{settings.bucket}/floor",
                    polars_s3_options(settings),
                    sampler,
                    rows,
                    lambda layer: _prefix_bytes(s3, settings.bucket, f"floor/{layer}/"),
                )
                log(f"  S3 floor {floor['s3']['bronze+silver+gold']['seconds']:.1f} s")
        finally:
            sampler.stop()
        result["stages"] = lake_stages(
            lake["steps"],
            (lake["began"], lake["ended"]),
            source_bytes,
            rows,
            lake["stored"],
            sampler,
        )
        result["floors"] = floor
        by_layer: dict[str, float] = {}
        for step in lake["steps"]:
            if step.group.startswith("checks:"):
                layer = step.group.split(":", 1)[1]
                by_layer[layer] = by_layer.get(layer, 0.0) + step.seconds
        result["check_seconds_by_layer"] = by_layer
        result["stored_bytes"] = lake["stored"]
        result["runs"] = lake["runs"]
        result["steps"] = [
            {
                "key": s.key,
                "group": s.group,
                "seconds": round(s.seconds, 4),
                "timeline": s.timeline,
                **({"metadata": s.metadata} if s.metadata else {}),
            }
            for s in lake["steps"]
        ]
        # True: per-interval VmHWM (exact peaks); False: sampled VmRSS (may miss short peaks).
        result["rss_exact"] = sampler.exact
    return result


def _median(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _summarize(stages: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Medians per stage and field over repetitions, plus the derived rates."""
    summary = {}
    for name in stages[0]:
        fields = {key: _median([rep[name][key] for rep in stages]) for key in stages[0][name]}
        seconds = fields["seconds"]
        fields["input_mb"] = fields["input_bytes"] / MB
        fields["mb_per_s"] = fields["input_mb"] / seconds if seconds > 0 else None
        fields["rows_per_s"] = fields["rows"] / seconds if seconds > 0 else None
        for key in ("bench_peak_rss", "emulator_peak_rss"):
            value = fields.pop(key)
            fields[f"{key}_mib"] = value / MIB if value is not None else None
        fields["input"] = STAGE_INPUT.get(name, "")
        summary[name] = fields
    return summary


def run_scale(
    scale: float,
    *,
    seed: int,
    workdir: Path,
    repeat: int,
    buffer_seconds: int,
    floors: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    scale_dir = workdir / f"scale-{scale:g}"
    csv_dir = scale_dir / "csv"
    log(f"scale {scale:g}: generating into {csv_dir}")
    began = time.perf_counter()
    written = generate(csv_dir, scale, seed)
    generate_seconds = time.perf_counter() - began
    files = {
        name: {"bytes": (csv_dir / f"{name}.csv").stat().st_size, "rows": count}
        for name, count in written.items()
    }
    rows = sum(f["rows"] for f in files.values())
    source_bytes = sum(f["bytes"] for f in files.values())
    log(f"  {source_bytes / MB:.1f} MB, {rows:,} rows in {generate_seconds:.1f} s")
    reps = []
    for rep in range(repeat):
        log(f"scale {scale:g}: repetition {rep + 1} of {repeat}")
        rep_dir = scale_dir / f"rep-{rep + 1}"
        try:
            reps.append(
                run_repetition(
                    csv_dir,
                    rep_dir,
                    buffer_seconds=buffer_seconds,
                    rows=rows,
                    floors=floors,
                    log=log,
                )
            )
        finally:
            shutil.rmtree(rep_dir, ignore_errors=True)
    stages = _summarize([r["stages"] for r in reps])
    floor_summary: dict[str, dict[str, Any]] = {}
    ratios: dict[str, dict[str, float | None]] = {}
    if floors:
        for kind in ("local", "s3"):
            floor_summary[kind] = _summarize([r["floors"][kind] for r in reps])
            for name, fields in floor_summary[kind].items():
                fields["input"] = FLOOR_INPUT[name]
            ratios[kind] = {
                name: (stages[name]["seconds"] / floor_summary[kind][name]["seconds"])
                if floor_summary[kind][name]["seconds"]
                else None
                for name in FLOOR_STAGES
            }
    shutil.rmtree(csv_dir, ignore_errors=True)
    return {
        "scale": scale,
        "seed": seed,
        "repeat": repeat,
        "source": {"bytes": source_bytes, "mb": source_bytes / MB, "rows": rows, "files": files},
        "generate_seconds": generate_seconds,
        "emulator_start_seconds": _median([r["emulator_start_seconds"] for r in reps]),
        "stages": stages,
        "floors": floor_summary,
        "ratios": ratios,
        "targets": targets(scale, stages, floor_summary),
        "repetitions": reps,
    }


def targets(
    scale: float, stages: dict[str, dict[str, Any]], floors: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The issue's targets, evaluated at this scale (each was set for one scale)."""
    peak = max(
        (
            v
            for s in stages.values()
            for v in (s["bench_peak_rss_mib"], s["emulator_peak_rss_mib"])
            if v is not None
        ),
        default=None,
    )
    found: list[dict[str, Any]] = [
        {
            "target": "whole lake from an empty state <= 15 s",
            "set_for_scale": 1,
            "value": stages["whole lake"]["seconds"],
            "met": stages["whole lake"]["seconds"] <= 15,
        },
        {
            "target": "landing (send+delivery) >= 20 MB/s",
            "set_for_scale": 10,
            "value": stages["landing (send+delivery)"]["mb_per_s"],
            "met": (stages["landing (send+delivery)"]["mb_per_s"] or 0) >= 20,
        },
        {
            "target": "no process above 2 GiB peak RSS",
            "set_for_scale": 100,
            "value": peak,
            "met": peak is not None and peak <= 2048,
        },
    ]
    if "s3" in floors:
        ratio = (
            stages["bronze+silver+gold"]["seconds"] / floors["s3"]["bronze+silver+gold"]["seconds"]
        )
        found.insert(
            1,
            {
                "target": "bronze+silver+gold within 2x the Polars-through-S3 floor",
                "set_for_scale": 10,
                "value": ratio,
                "met": ratio <= 2,
            },
        )
    return found


# --- output -----------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        f"Machine: {machine['cpu_model']}, {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB; Python {machine['versions']['python']}, "
        f"Polars {machine['versions']['polars']}, Dagster {machine['versions']['dagster']}. "
        f"Medians of {report['repeat']} run(s).",
        "",
    ]
    for result in report["scales"]:
        source = result["source"]
        lines += [
            f"### Scale {result['scale']:g}: {source['mb']:.1f} MB of CSV, {source['rows']:,} rows",
            "",
            "| stage | seconds | reads | input MB | MB/s | rows/s | peak RSS lake MiB "
            "| peak RSS emulator MiB | floor local s | floor S3 s | lake/local | lake/S3 |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, stage in result["stages"].items():
            floor_cells = []
            for kind in ("local", "s3"):
                floor = result["floors"].get(kind, {}).get(name)
                floor_cells.append(_fmt(floor["seconds"]) if floor else "")
            ratio_cells = [
                f"{result['ratios'][kind][name]:.1f}x"
                if result["ratios"].get(kind, {}).get(name)
                else ""
                for kind in ("local", "s3")
            ]
            lines.append(
                f"| {name} | {_fmt(stage['seconds'])} | {stage['input']} "
                f"| {_fmt(stage['input_mb'], 1)} | {_fmt(stage['mb_per_s'], 1)} "
                f"| {_fmt(stage['rows_per_s'], 0)} | {_fmt(stage['bench_peak_rss_mib'], 0)} "
                f"| {_fmt(stage['emulator_peak_rss_mib'], 0)} | {' | '.join(floor_cells)} "
                f"| {' | '.join(ratio_cells)} |"
            )
        if result["floors"]:
            lines += [
                "",
                "Floors (plain Polars, same transforms, no orchestrator):",
                "",
                "| floor | stage | seconds | reads | input MB | MB/s | rows/s | peak RSS MiB "
                "| peak RSS emulator MiB |",
                "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
            ]
            for kind, label in (("local", "local disk"), ("s3", "embedded S3")):
                for name, stage in result["floors"][kind].items():
                    lines.append(
                        f"| {label} | {name} | {_fmt(stage['seconds'])} | {stage['input']} "
                        f"| {_fmt(stage['input_mb'], 1)} | {_fmt(stage['mb_per_s'], 1)} "
                        f"| {_fmt(stage['rows_per_s'], 0)} "
                        f"| {_fmt(stage['bench_peak_rss_mib'], 0)} "
                        f"| {_fmt(stage['emulator_peak_rss_mib'], 0)} |"
                    )
        lines += ["", "Targets (each set for one scale):", ""]
        for target in result["targets"]:
            mark = "met" if target["met"] else "NOT met"
            lines.append(
                f"- {target['target']} (set for scale {target['set_for_scale']}): "
                f"{_fmt(target['value'])} -> {mark} here"
            )
        lines += [
            "",
            f"Emulator start-up {_fmt(result['emulator_start_seconds'])} s (not in the lake's "
            f"time); data generated in {_fmt(result['generate_seconds'])} s.",
            "",
        ]
    return "\n".join(lines)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deathmetal_lake.bench",
        description="Benchmark the lake against plain-Polars floors on the embedded AWS.",
    )
    parser.add_argument("--scale", type=float, nargs="+", default=[1.0], help="1 = ~15 MB")
    parser.add_argument("--repeat", type=int, default=1, help="repetitions; medians reported")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, help="write the full report here")
    parser.add_argument(
        "--workdir", type=Path, help="where data and state go (default: a temp dir)"
    )
    parser.add_argument(
        "--buffer-seconds",
        type=int,
        default=LakeSettings.model_fields["embedded_buffer_seconds"].default,
        help="the embedded Firehose's interval hint (default: the lake's default)",
    )
    parser.add_argument("--no-floors", action="store_true", help="measure the lake only")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if any(not s > 0 for s in args.scale):
        parser.error("every --scale must be positive")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    made_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="lake-bench-")) if made_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "command": ["python", "-m", "deathmetal_lake.bench", *(argv or sys.argv[1:])],
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "repeat": args.repeat,
        "seed": args.seed,
        "buffer_seconds": args.buffer_seconds,
        "scales": [],
    }
    try:
        for scale in args.scale:
            report["scales"].append(
                run_scale(
                    scale,
                    seed=args.seed,
                    workdir=workdir,
                    repeat=args.repeat,
                    buffer_seconds=args.buffer_seconds,
                    floors=not args.no_floors,
                    log=log,
                )
            )
    finally:
        if made_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
