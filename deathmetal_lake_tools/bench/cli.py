"""The benchmark's command line (the package docstring says what it measures)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deathmetal_lake.settings import LakeSettings
from deathmetal_lake_tools.bench.report import machine_info, markdown
from deathmetal_lake_tools.bench.scale import run_scale

COMMAND = ("python", "-m", "deathmetal_lake_tools.bench")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=" ".join(COMMAND),
        description="Benchmark the lake against plain-Polars floors on the embedded AWS, and "
        "`make run` as a user waits for it, from empty and for three increments.",
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
    parser.add_argument("--no-floors", action="store_true", help="skip the plain-Polars floors")
    parser.add_argument(
        "--no-increments",
        action="store_true",
        help="skip the `make run` processes (full builds and the three increments)",
    )
    parser.add_argument(
        "--no-cold",
        action="store_true",
        help="skip the `make run` from empty that starts the emulator itself (a full build)",
    )
    return parser


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if any(not s > 0 for s in args.scale):
        parser.error("every --scale must be positive")
    made_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="lake-bench-")) if made_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "command": [*COMMAND, *(sys.argv[1:] if argv is None else argv)],
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
                    increments=not args.no_increments,
                    cold=not args.no_cold,
                    log=_log,
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
