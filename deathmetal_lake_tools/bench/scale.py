"""One scale: generate the sources, measure the lake and its floors per repetition, then the
`make run` processes (full builds and increments), and evaluate the targets."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deathmetal_lake.datasets import DATASETS
from deathmetal_lake.settings import LakeSettings
from deathmetal_lake_tools.bench import floors as floor_module
from deathmetal_lake_tools.bench.common import MB, median
from deathmetal_lake_tools.bench.emulator import embedded_aws, lake_settings, polars_s3_options
from deathmetal_lake_tools.bench.increments import run_make_runs
from deathmetal_lake_tools.bench.lake import Step, lake_stages, prefix_bytes, run_lake_once
from deathmetal_lake_tools.bench.memory import PeakSampler
from deathmetal_lake_tools.bench.report import STAGE_INPUT, summarize, targets
from deathmetal_lake_tools.generate import generate


def _floors(
    csv_dir: Path, rep_dir: Path, settings: LakeSettings, sampler: PeakSampler, rows: int
) -> dict[str, Any]:
    import boto3

    local_root = rep_dir / "floor"
    local = floor_module.run_floor(
        csv_dir, str(local_root), None, sampler, rows, floor_module.local_size(local_root)
    )
    s3 = boto3.client("s3", **settings.boto3_client_kwargs())
    through_s3 = floor_module.run_floor(
        csv_dir,
        f"s3://{settings.bucket}/floor",
        polars_s3_options(settings),
        sampler,
        rows,
        lambda layer: prefix_bytes(s3, settings.bucket, f"floor/{layer}/"),
    )
    return {"local": local, "s3": through_s3}


def _step_rows(steps: list[Step]) -> list[dict[str, Any]]:
    return [
        {
            "key": s.key,
            "group": s.group,
            "seconds": round(s.seconds, 4),
            "timeline": s.timeline,
            **({"metadata": s.metadata} if s.metadata else {}),
        }
        for s in steps
    ]


def run_repetition(
    csv_dir: Path,
    rep_dir: Path,
    *,
    buffer_seconds: int,
    rows: int,
    floors: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The lake in this process from an empty state, then the floors, on one fresh emulator."""
    source_bytes = sum((csv_dir / f"{d.name}.csv").stat().st_size for d in DATASETS)
    settings = lake_settings(csv_dir, rep_dir, buffer_seconds)
    with embedded_aws(settings) as (startup_seconds, emulator_pid):
        log(f"  embedded AWS up in {startup_seconds:.1f} s (pid {emulator_pid}); running the lake")
        sampler = PeakSampler({"bench": os.getpid(), "emulator": emulator_pid})
        sampler.start()
        try:
            lake = run_lake_once(settings)
            log(f"  lake done in {lake['ended'] - lake['began']:.1f} s")
            floor = _floors(csv_dir, rep_dir, settings, sampler, rows) if floors else {}
            if floor:
                log(
                    f"  floors: local {floor['local']['bronze+silver+gold']['seconds']:.1f} s, "
                    f"S3 {floor['s3']['bronze+silver+gold']['seconds']:.1f} s"
                )
        finally:
            sampler.stop()
    whole = (lake["began"], lake["ended"])
    by_layer: dict[str, float] = {}
    for step in lake["steps"]:
        if step.group.startswith("checks:"):
            layer = step.group.split(":", 1)[1]
            by_layer[layer] = by_layer.get(layer, 0.0) + step.seconds
    return {
        "emulator_start_seconds": startup_seconds,
        "stages": lake_stages(lake["steps"], whole, source_bytes, rows, lake["stored"], sampler),
        "floors": floor,
        "check_seconds_by_layer": by_layer,
        "stored_bytes": lake["stored"],
        "runs": lake["runs"],
        "steps": _step_rows(lake["steps"]),
        # True: per-interval VmHWM (exact peaks); False: sampled VmRSS (may miss short peaks).
        "rss_exact": sampler.exact,
    }


def _floor_summary(reps: list[dict[str, Any]], stages: dict[str, Any]) -> tuple[dict, dict]:
    summary: dict[str, dict[str, Any]] = {}
    ratios: dict[str, dict[str, float | None]] = {}
    for kind in ("local", "s3"):
        summary[kind] = summarize([r["floors"][kind] for r in reps], floor_module.STAGE_INPUT)
        ratios[kind] = {
            name: (stages[name]["seconds"] / summary[kind][name]["seconds"])
            if summary[kind][name]["seconds"]
            else None
            for name in floor_module.STAGES
        }
    return summary, ratios


def _generate(csv_dir: Path, scale: float, seed: int, log: Callable[[str], None]) -> dict:
    log(f"scale {scale:g}: generating into {csv_dir}")
    began = time.perf_counter()
    written = generate(csv_dir, scale, seed)
    seconds = time.perf_counter() - began
    files = {
        name: {"bytes": (csv_dir / f"{name}.csv").stat().st_size, "rows": count}
        for name, count in written.items()
    }
    rows = sum(f["rows"] for f in files.values())
    source_bytes = sum(f["bytes"] for f in files.values())
    log(f"  {source_bytes / MB:.1f} MB, {rows:,} rows in {seconds:.1f} s")
    source = {"bytes": source_bytes, "mb": source_bytes / MB, "rows": rows, "files": files}
    return {"source": source, "generate_seconds": seconds}


def run_scale(
    scale: float,
    *,
    seed: int,
    workdir: Path,
    repeat: int,
    buffer_seconds: int,
    floors: bool,
    increments: bool,
    cold: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    scale_dir = workdir / f"scale-{scale:g}"
    csv_dir = scale_dir / "csv"
    generated = _generate(csv_dir, scale, seed, log)
    rows = generated["source"]["rows"]
    reps = []
    try:
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
        make_runs = {}
        if increments:
            log(f"scale {scale:g}: make run as a process, then the increments")
            make_runs = run_make_runs(
                csv_dir, scale_dir, seed=seed, buffer_seconds=buffer_seconds, cold=cold, log=log
            )
    finally:
        shutil.rmtree(csv_dir, ignore_errors=True)
    stages = summarize([r["stages"] for r in reps], STAGE_INPUT)
    floor_summary, ratios = _floor_summary(reps, stages) if floors else ({}, {})
    return {
        "scale": scale,
        "seed": seed,
        "repeat": repeat,
        **generated,
        "emulator_start_seconds": median([r["emulator_start_seconds"] for r in reps]),
        "stages": stages,
        "floors": floor_summary,
        "ratios": ratios,
        "make_runs": make_runs,
        "targets": targets(stages, floor_summary, make_runs),
        "repetitions": reps,
    }
