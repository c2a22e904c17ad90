"""The lake's stages, from what the lake itself recorded in its Dagster instance and its bucket.

A step belongs to the layer of the asset keys it materializes (the key's first part, quarantine
counting as silver, whose steps write it), or to `checks:<layer>` when it only evaluates checks;
layers are found, not listed, so an asset or layer added or renamed shows up as it is. Landing's
send and delivery split comes from its materializations' `send_seconds` and `delivery_seconds`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from deathmetal_lake.settings import LakeSettings
from deathmetal_lake_tools.bench.common import BenchError
from deathmetal_lake_tools.bench.emulator import polars_s3_options
from deathmetal_lake_tools.bench.memory import PeakSampler

# Tables a layer's steps write under another prefix.
LAYER_OF_KEY_PREFIX = {"quarantine": "silver"}
# Layers in the order data flows; a layer not named here comes after them.
LAYER_ORDER = ("landing", "bronze", "staging", "silver", "gold")
# The layers every whole-lake build must have run.
REQUIRED_LAYERS = ("landing", "bronze", "silver", "gold")


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


def layer_of(key_path: list[str]) -> str:
    return LAYER_OF_KEY_PREFIX.get(key_path[0], key_path[0])


def ordered_layers(groups: set[str]) -> list[str]:
    """The data layers among step groups (not checks), in the order data flows through them."""
    layers = [g for g in groups if not g.startswith("checks:") and g != "other"]
    rank = {name: i for i, name in enumerate(LAYER_ORDER)}
    return sorted(layers, key=lambda g: (rank.get(g, len(rank)), g))


def _metadata_values(metadata: dict[str, Any]) -> dict[str, Any]:
    values = {}
    for name, value in metadata.items():
        raw = getattr(value, "value", value)
        if isinstance(raw, int | float | str | bool) or raw is None:
            values[name] = raw
    return values


class _RunLog:
    """One run's event log folded into its steps and a summary."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.starts: dict[str, float] = {}
        self.ends: dict[str, float] = {}
        self.groups: dict[str, str] = {}
        self.metadata: dict[str, dict[str, Any]] = {}
        self.timeline: dict[str, dict[str, float]] = {}
        self.run_start: float | None = None
        self.run_end: float | None = None

    def add(self, entry: Any) -> None:
        from dagster import DagsterEventType

        event, kind, step_key = entry.dagster_event, entry.dagster_event.event_type, entry.step_key
        if kind == DagsterEventType.RUN_START:
            self.run_start = entry.timestamp
        elif kind in (DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE):
            self.run_end = entry.timestamp
        if step_key is None:
            return
        if kind == DagsterEventType.STEP_START:
            self.starts[step_key] = entry.timestamp
        elif kind == DagsterEventType.STEP_FAILURE:
            raise BenchError(f"step {step_key} of run {self.run.run_id} failed")
        elif kind == DagsterEventType.STEP_SUCCESS:
            self.ends[step_key] = entry.timestamp
        elif kind == DagsterEventType.ASSET_MATERIALIZATION:
            materialization = event.event_specific_data.materialization
            # A step that materializes belongs to its layer, even if it also runs checks.
            self.groups[step_key] = layer_of(materialization.asset_key.path)
            if materialization.asset_key.path[0] == "landing":
                self.metadata[step_key] = _metadata_values(materialization.metadata)
        elif kind == DagsterEventType.ASSET_CHECK_EVALUATION:
            layer = layer_of(event.event_specific_data.asset_key.path)
            self.groups.setdefault(step_key, f"checks:{layer}")
        # Offsets of the step's phases (inputs loaded, output handled) for the JSON report.
        if step_key in self.starts:
            offset = round(entry.timestamp - self.starts[step_key], 4)
            self.timeline.setdefault(step_key, {})[kind.value.lower()] = offset

    def steps(self) -> list[Step]:
        steps = []
        for step_key, start in self.starts.items():
            if step_key not in self.ends:
                raise BenchError(f"step {step_key} of run {self.run.run_id} did not finish")
            group = self.groups.get(step_key, "other")
            metadata, timeline = self.metadata.get(step_key, {}), self.timeline.get(step_key, {})
            end = self.ends[step_key]
            steps.append(Step(self.run.run_id, step_key, group, start, end, metadata, timeline))
        return steps

    def summary(self) -> dict[str, Any]:
        began, ended = self.run_start, self.run_end
        return {
            "run_id": self.run.run_id,
            "status": self.run.status.value,
            "partition": self.run.tags.get("dagster/partition"),
            "steps": sorted(self.starts),
            "start": began,
            "end": ended,
            "seconds": (ended - began) if began and ended else None,
            "step_seconds": sum(self.ends[k] - s for k, s in self.starts.items() if k in self.ends),
        }


def read_steps(
    instance: Any, skip_runs: frozenset[str] = frozenset()
) -> tuple[list[Step], list[dict[str, Any]]]:
    """Every step of every run in the instance but `skip_runs`, with its group and landing
    metadata, and a summary per run, oldest run first."""
    steps: list[Step] = []
    runs: list[dict[str, Any]] = []
    for run in instance.get_runs(ascending=True):
        if run.run_id in skip_runs:
            continue
        log = _RunLog(run)
        for entry in instance.all_logs(run.run_id):
            if entry.dagster_event is not None:
                log.add(entry)
        steps += log.steps()
        runs.append(log.summary())
    return steps, runs


def stage(
    seconds: float,
    input_bytes: float,
    rows: int,
    windows: list[tuple[float, float]],
    sampler: PeakSampler,
) -> dict[str, Any]:
    """One stage's figures: its seconds, what it read, and each process's peak RSS meanwhile."""
    return {
        "seconds": seconds,
        "input_bytes": input_bytes,
        "rows": rows,
        "bench_peak_rss": sampler.peak("bench", windows),
        "emulator_peak_rss": sampler.peak("emulator", windows),
    }


def _gaps(steps: list[Step], whole: tuple[float, float]) -> list[tuple[float, float]]:
    """The whole lake's time outside every step: Dagster's own work."""
    gaps = []
    cursor = whole[0]
    for a, b in sorted((s.start, s.end) for s in steps):
        if a > cursor:
            gaps.append((cursor, a))
        cursor = max(cursor, b)
    if whole[1] > cursor:
        gaps.append((cursor, whole[1]))
    return gaps


def _landing_stages(
    landing: list[Step], source_bytes: int, rows: int, sampler: PeakSampler
) -> tuple[dict[str, dict[str, Any]], int]:
    """Landing's send, Firehose's delivery and both, and the JSON bytes landing sent."""
    for step in landing:
        if "send_seconds" not in step.metadata or "delivery_seconds" not in step.metadata:
            raise BenchError(f"landing step {step.key} recorded no send/delivery seconds")
    delivered_at = [s.end - s.metadata["delivery_seconds"] for s in landing]
    json_bytes = sum(s.metadata.get("bytes_sent", 0) for s in landing)
    stages = {
        "landing send": stage(
            sum(s.metadata["send_seconds"] for s in landing),
            source_bytes,
            rows,
            [(s.start, d) for s, d in zip(landing, delivered_at, strict=True)],
            sampler,
        ),
        "firehose delivery": stage(
            sum(s.metadata["delivery_seconds"] for s in landing),
            json_bytes,
            rows,
            [(d, s.end) for s, d in zip(landing, delivered_at, strict=True)],
            sampler,
        ),
        "landing (send+delivery)": stage(
            sum(s.seconds for s in landing),
            source_bytes,
            rows,
            [(s.start, s.end) for s in landing],
            sampler,
        ),
    }
    return stages, json_bytes


def lake_stages(
    steps: list[Step],
    whole: tuple[float, float],
    source_bytes: int,
    rows: int,
    stored: dict[str, int],
    sampler: PeakSampler,
) -> dict[str, dict[str, Any]]:
    """The whole lake's stages: landing's two parts, each layer after it (input: what the layer
    before it stored), their sum, the checks, and Dagster's time outside every step."""
    by_group: dict[str, list[Step]] = {}
    for step in steps:
        by_group.setdefault(step.group, []).append(step)
    for needed in REQUIRED_LAYERS:
        if not by_group.get(needed):
            raise BenchError(f"no {needed} step ran; the lake did not build every layer")
    stages, json_bytes = _landing_stages(by_group["landing"], source_bytes, rows, sampler)

    def stage_of(groups: list[str], input_bytes: float) -> dict[str, Any]:
        chosen = [s for g in groups for s in by_group.get(g, [])]
        windows = [(s.start, s.end) for s in chosen]
        return stage(sum(s.seconds for s in chosen), input_bytes, rows, windows, sampler)

    layers = [g for g in ordered_layers(set(by_group)) if g != "landing"]
    for i, layer in enumerate(layers):
        stages[layer] = stage_of([layer], json_bytes if i == 0 else stored.get(layers[i - 1], 0))
    stages["bronze+silver+gold"] = stage_of(layers, json_bytes)
    checks = sorted(g for g in by_group if g.startswith("checks:"))
    if checks:
        # Asset checks of every layer, in steps of their own (what they read varies).
        stages["asset checks"] = stage_of(checks, source_bytes)
    overhead = (whole[1] - whole[0]) - sum(s.seconds for s in steps)
    stages["dagster overhead"] = stage(overhead, source_bytes, rows, _gaps(steps, whole), sampler)
    stages["whole lake"] = stage(whole[1] - whole[0], source_bytes, rows, [whole], sampler)
    return stages


def _keys(s3: Any, bucket: str, prefix: str = "") -> list[tuple[str, int]]:
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [(item["Key"], item["Size"]) for item in page.get("Contents", [])]
    return found


def prefix_bytes(s3: Any, bucket: str, prefix: str) -> int:
    return sum(size for _, size in _keys(s3, bucket, prefix))


def stored_bytes(settings: LakeSettings) -> dict[str, int]:
    """Bytes in the lake's bucket per top-level prefix (landing, bronze, silver, ...)."""
    import boto3

    s3 = boto3.client("s3", **settings.boto3_client_kwargs())
    stored: dict[str, int] = {}
    for key, size in _keys(s3, settings.bucket):
        prefix = key.split("/", 1)[0]
        stored[prefix] = stored.get(prefix, 0) + size
    return stored


def table_rows(
    settings: LakeSettings, layers: tuple[str, ...] = ("silver", "quarantine")
) -> dict[str, int]:
    """Rows per table (`silver.reviews`), whether a table is one Parquet file or a folder."""
    import boto3
    import polars as pl

    s3 = boto3.client("s3", **settings.boto3_client_kwargs())
    files: dict[str, list[str]] = {}
    for layer in layers:
        for key, _ in _keys(s3, settings.bucket, f"{layer}/"):
            if key.endswith(".parquet"):
                table = key.split("/")[1].removesuffix(".parquet")
                files.setdefault(f"{layer}.{table}", []).append(f"s3://{settings.bucket}/{key}")
    options = polars_s3_options(settings)
    return {
        name: pl.scan_parquet(paths, storage_options=options).select(pl.len()).collect().item()
        for name, paths in sorted(files.items())
    }


def run_lake_once(settings: LakeSettings) -> dict[str, Any]:
    """`make run`'s work in this process, against the started emulator, from an empty state."""
    from deathmetal_lake.batch import run_lake
    from deathmetal_lake.instance import open_instance

    with open_instance(settings) as instance:
        began = time.time()
        ok = run_lake(settings, instance)
        ended = time.time()
        steps, runs = read_steps(instance)
    if not ok:
        failed = [r["run_id"] for r in runs if r["status"] != "SUCCESS"]
        raise BenchError(f"the lake failed (runs {failed}); the Dagster log above says why")
    return {
        "began": began,
        "ended": ended,
        "steps": steps,
        "runs": runs,
        "stored": stored_bytes(settings),
    }
