"""The lake's Dagster definitions: every asset, check, sensor and job, and their resources.

`dagster dev` and `dg` load `defs`, which builds them when the code location loads, from the
environment's settings. Other entry points (`make run`, the checks runner, the tests) call
`build_definitions` with settings of their own, so every one runs the same lake.
"""

from __future__ import annotations

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
    definitions,
    in_process_executor,
)

from deathmetal_lake.assets.bronze import bronze_assets
from deathmetal_lake.assets.gold import gold_assets
from deathmetal_lake.assets.landing import landing_assets
from deathmetal_lake.assets.silver import silver_assets
from deathmetal_lake.assets.staging import staging_assets
from deathmetal_lake.checks import lake_checks, with_freshness_policy
from deathmetal_lake.jobs import ingest_checks_jobs, lake_checks_job, refresh_lake_job
from deathmetal_lake.resources import build_resources
from deathmetal_lake.sensors import csv_dir_sensor, s3_raw_sensor
from deathmetal_lake.settings import LakeSettings, load_settings

# Dagster's own automation sensor starts STOPPED; this one runs from the first `make dev`, so
# silver and gold follow every new bronze ingest without a click.
lake_automation_sensor = AutomationConditionSensorDefinition(
    "lake_automation_sensor",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
)

LAKE_ASSETS = [*landing_assets, *bronze_assets, *staging_assets, *silver_assets, *gold_assets]


def build_definitions(settings: LakeSettings) -> Definitions:
    """The whole lake on the back end `settings` choose."""
    # Steps run in the run worker's process: a lake refresh is a chain of short Polars steps, and
    # a process per step (the multiprocess default) costs more in start-up than it gains.
    return Definitions(
        assets=with_freshness_policy(LAKE_ASSETS),
        asset_checks=lake_checks,
        sensors=[csv_dir_sensor, s3_raw_sensor, lake_automation_sensor],
        jobs=[refresh_lake_job, lake_checks_job, *ingest_checks_jobs],
        resources=build_resources(settings),
        executor=in_process_executor,
    )


@definitions
def defs() -> Definitions:
    return build_definitions(load_settings())
