"""What every part of the benchmark shares: units, its error, medians."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any

MB = 1e6
MIB = 1024 * 1024

# The instance settings `make run` and `make dev` share (run queue, log level, telemetry).
INSTANCE_SETTINGS = Path(__file__).resolve().parents[2] / "dagster.yaml"


class BenchError(RuntimeError):
    """The benchmark could not run the lake (a failed run, an emulator that did not start)."""


def median(values: list[Any]) -> Any:
    """The median of the values that are there; None if none is."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def prepare_instance(instance_dir: Path) -> None:
    """As the Makefile does: the instance folder, with the repository's dagster.yaml if none."""
    instance_dir.mkdir(parents=True, exist_ok=True)
    if not (instance_dir / "dagster.yaml").exists():
        shutil.copy(INSTANCE_SETTINGS, instance_dir / "dagster.yaml")
