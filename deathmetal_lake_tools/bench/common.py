"""What every part of the benchmark shares: units, its error, medians."""

from __future__ import annotations

import statistics
from typing import Any

MB = 1e6
MIB = 1024 * 1024


class BenchError(RuntimeError):
    """The benchmark could not run the lake (a failed run, an emulator that did not start)."""


def median(values: list[Any]) -> Any:
    """The median of the values that are there; None if none is."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None
