"""The benchmark's report: the machine, medians per stage, the issues' targets, and Markdown."""

from __future__ import annotations

import contextlib
import os
import platform
from typing import Any

from deathmetal_lake_tools.bench.common import MB, MIB, median

# The lake's stages that every whole-lake build reports, in table order; a layer found besides
# them (a staging layer, say) is reported too.
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
# What each stage reads, for the table's "input" column.
STAGE_INPUT = {
    "landing send": "CSV",
    "firehose delivery": "JSON lines",
    "landing (send+delivery)": "CSV",
    "bronze": "JSON lines",
    "staging": "bronze Parquet",
    "silver": "bronze Parquet",
    "gold": "silver Parquet",
    "bronze+silver+gold": "JSON lines",
    "asset checks": "all layers",
    "dagster overhead": "CSV",
    "whole lake": "CSV",
}
GIB_MIB = 2048


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


def summarize(
    stages: list[dict[str, dict[str, Any]]], inputs: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Medians per stage and field over repetitions, plus the derived rates."""
    summary = {}
    for name in stages[0]:
        fields = {key: median([rep[name][key] for rep in stages]) for key in stages[0][name]}
        seconds = fields["seconds"]
        fields["input_mb"] = fields["input_bytes"] / MB
        fields["mb_per_s"] = fields["input_mb"] / seconds if seconds > 0 else None
        fields["rows_per_s"] = fields["rows"] / seconds if seconds > 0 else None
        for key in ("bench_peak_rss", "emulator_peak_rss"):
            value = fields.pop(key)
            fields[f"{key}_mib"] = value / MIB if value is not None else None
        fields["input"] = inputs.get(name, "Parquet")
        summary[name] = fields
    return summary


def _target(text: str, scale: float, value: float | None, met: bool) -> dict[str, Any]:
    return {"target": text, "set_for_scale": scale, "value": value, "met": met}


def _peak_mib(stages: dict[str, dict[str, Any]], make_runs: dict[str, Any]) -> float | None:
    """The largest peak RSS of any process the benchmark watched."""
    peaks = [
        v
        for s in stages.values()
        for v in (s["bench_peak_rss_mib"], s["emulator_peak_rss_mib"])
        if v is not None
    ]
    runs = [make_runs.get("cold"), make_runs.get("full"), *make_runs.get("increments", [])]
    for run in filter(None, runs):
        peaks += [v for v in (run["run_peak_rss_mib"], run["emulator_peak_rss_mib"]) if v]
    return max(peaks, default=None)


def _make_run_targets(make_runs: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    first = make_runs.get("cold") or make_runs.get("full")
    if first:
        found.append(
            _target(
                "make run from an empty state <= 8 s wall",
                1,
                first["wall_seconds"],
                first["wall_seconds"] <= 8,
            )
        )
    if make_runs.get("increments"):
        worst = max(i["ratio"] for i in make_runs["increments"])
        for scale, share in ((10, 0.15), (100, 0.05)):
            found.append(
                _target(
                    f"each increment <= {share} of the full build", scale, worst, worst <= share
                )
            )
    return found


def targets(
    stages: dict[str, dict[str, Any]],
    floors: dict[str, dict[str, Any]],
    make_runs: dict[str, Any],
) -> list[dict[str, Any]]:
    """The issues' targets, evaluated at this scale (each was set for one scale)."""
    whole = stages["whole lake"]["seconds"]
    landing = stages["landing (send+delivery)"]["mb_per_s"]
    peak = _peak_mib(stages, make_runs)
    found = [_target("whole lake from an empty state <= 15 s", 1, whole, whole <= 15)]
    if "s3" in floors:
        ratio = (
            stages["bronze+silver+gold"]["seconds"] / floors["s3"]["bronze+silver+gold"]["seconds"]
        )
        found.append(
            _target(
                "bronze+silver+gold within 2x the Polars-through-S3 floor", 10, ratio, ratio <= 2
            )
        )
    found.append(_target("landing (send+delivery) >= 20 MB/s", 10, landing, (landing or 0) >= 20))
    found += _make_run_targets(make_runs)
    found.append(
        _target("no process above 2 GiB peak RSS", 100, peak, peak is not None and peak <= GIB_MIB)
    )
    return found


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _stage_table(result: dict[str, Any]) -> list[str]:
    lines = [
        "| stage | seconds | reads | input MB | MB/s | rows/s | peak RSS lake MiB "
        "| peak RSS emulator MiB | floor local s | floor S3 s | lake/local | lake/S3 |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, stage in result["stages"].items():
        floor_cells, ratio_cells = [], []
        for kind in ("local", "s3"):
            floor = result["floors"].get(kind, {}).get(name)
            floor_cells.append(fmt(floor["seconds"]) if floor else "")
            ratio = result["ratios"].get(kind, {}).get(name)
            ratio_cells.append(f"{ratio:.1f}x" if ratio else "")
        lines.append(
            f"| {name} | {fmt(stage['seconds'])} | {stage['input']} "
            f"| {fmt(stage['input_mb'], 1)} | {fmt(stage['mb_per_s'], 1)} "
            f"| {fmt(stage['rows_per_s'], 0)} | {fmt(stage['bench_peak_rss_mib'], 0)} "
            f"| {fmt(stage['emulator_peak_rss_mib'], 0)} | {' | '.join(floor_cells)} "
            f"| {' | '.join(ratio_cells)} |"
        )
    return lines


def _floor_table(result: dict[str, Any]) -> list[str]:
    lines = [
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
                f"| {label} | {name} | {fmt(stage['seconds'])} | {stage['input']} "
                f"| {fmt(stage['input_mb'], 1)} | {fmt(stage['mb_per_s'], 1)} "
                f"| {fmt(stage['rows_per_s'], 0)} | {fmt(stage['bench_peak_rss_mib'], 0)} "
                f"| {fmt(stage['emulator_peak_rss_mib'], 0)} |"
            )
    return lines


def _make_run_row(label: str, run: dict[str, Any], ratio: str, landed: str) -> str:
    parts = run["breakdown"]
    layers = ", ".join(f"{name} {fmt(s, 1)}" for name, s in parts["layers"].items())
    checks = sum(parts["checks"].values())
    return (
        f"| {label} | {fmt(run['wall_seconds'])} | {ratio} | {parts['runs']} | {parts['steps']} "
        f"| {fmt(parts['before_first_run'])} | {layers} | {fmt(checks)} "
        f"| {fmt(parts['in_runs_outside_steps'])} | {fmt(parts['between_and_after_runs'])} "
        f"| {fmt(run['run_peak_rss_mib'], 0)} | {fmt(run['emulator_peak_rss_mib'], 0)} "
        f"| {landed} |"
    )


def _make_run_table(make_runs: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "`make run` as a process, start to exit (increments on the lake the full build made):",
        "",
        "| make run | wall s | of full build | runs | steps | before first run s | step s by layer "
        "| checks s | in runs, outside steps s | between and after runs s | peak RSS run MiB "
        "| peak RSS emulator MiB | rows landed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    if "cold" in make_runs:
        lines.append(_make_run_row("from empty, starts the emulator", make_runs["cold"], "", ""))
    lines.append(_make_run_row("from empty, emulator up", make_runs["full"], "1", ""))
    for inc in make_runs["increments"]:
        change = {"append": f"+{inc['new_ids']:,} ids", "update": f"{inc['changed_ids']:,} ids"}
        label = f"{inc['name']} ({inc['file']}, {change.get(inc['name'], 'new version')})"
        landed = (
            f"{inc['table']} {fmt(inc['table_rows_before'])} -> {fmt(inc['table_rows_after'])}"
            + ("" if inc["landed_as_expected"] else f" (expected {inc['table_rows_expected']})")
        )
        lines.append(_make_run_row(label, inc, f"{inc['ratio']:.3f}", landed))
    return lines


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        f"Machine: {machine['cpu_model']}, {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB; Python {machine['versions']['python']}, "
        f"Polars {machine['versions']['polars']}, Dagster {machine['versions']['dagster']}. "
        f"Medians of {report['repeat']} run(s); `make run` figures from one.",
        "",
    ]
    for result in report["scales"]:
        source = result["source"]
        lines += [
            f"### Scale {result['scale']:g}: {source['mb']:.1f} MB of CSV, {source['rows']:,} rows",
            "",
            *_stage_table(result),
            *(_floor_table(result) if result["floors"] else []),
            *(_make_run_table(result["make_runs"]) if result["make_runs"] else []),
            "",
            "Targets (each set for one scale):",
            "",
        ]
        for target in result["targets"]:
            mark = "met" if target["met"] else "NOT met"
            lines.append(
                f"- {target['target']} (set for scale {target['set_for_scale']}): "
                f"{fmt(target['value'])} -> {mark} here"
            )
        lines += [
            "",
            f"Emulator start-up {fmt(result['emulator_start_seconds'])} s (not in the lake's "
            f"time); data generated in {fmt(result['generate_seconds'])} s.",
            "",
        ]
    return "\n".join(lines)
