"""Benchmark: the whole lake on the embedded AWS, side by side with two plain-Polars floors, and
`make run` as a user waits for it, from an empty state and for three increments.

    python -m deathmetal_lake_tools.bench --scale 1 10 [--repeat 3] [--json OUT] [--seed N]
        [--workdir DIR] [--buffer-seconds S] [--no-floors] [--no-increments] [--no-cold]

For each scale it generates the source CSVs with the project's generator, then, per repetition,
starts an embedded AWS with a fresh state folder on a free port and a fresh Dagster instance, runs
the lake in this process from that empty state as `make run` does (`run_lake`), measures the
floors (`floors`) on the same emulator, and stops it again, also on failure. Figures of the
repetitions are medians.

Stage times come from what the lake itself recorded (`lake`): landing's `send_seconds` and
`delivery_seconds` metadata, and each step's STEP_START to STEP_SUCCESS in the run's event log
(a step covers loading its inputs, computing and writing its outputs through the IO manager),
grouped by the layer of the asset keys it materializes. "Dagster overhead" is the whole lake's
wall time minus every step's: planning, run creation, event writes and each run's start-up.
Peak RSS per stage and process comes from `memory`'s sampler.

Then, once per scale, `make run` runs as processes of their own, timed from start to exit
(`increments`): from an empty state with the process starting the emulator, from an empty state
with the emulator up, and three increments on that lake (an append, an update and a replaced
file), each also as a ratio to the full build. `report` evaluates the issues' targets and writes
the Markdown tables; `--json` keeps every figure.
"""

from deathmetal_lake_tools.bench.common import BenchError
from deathmetal_lake_tools.bench.floors import STAGES as FLOOR_STAGES
from deathmetal_lake_tools.bench.increments import INCREMENTS
from deathmetal_lake_tools.bench.report import STAGES

__all__ = ["FLOOR_STAGES", "INCREMENTS", "STAGES", "BenchError"]
