"""The lake's Dagster definitions: every asset, check, sensor and job, and their resources."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
    in_process_executor,
)

from deathmetal_lake.assets.bronze import bronze_assets
from deathmetal_lake.assets.gold import gold_assets
from deathmetal_lake.assets.landing import landing_assets
from deathmetal_lake.assets.silver import silver_assets
from deathmetal_lake.checks import lake_checks, with_freshness_policy
from deathmetal_lake.jobs import ingest_checks_jobs, lake_checks_job, refresh_lake_job
from deathmetal_lake.resources import build_resources
from deathmetal_lake.sensors import csv_dir_sensor, s3_raw_sensor
from deathmetal_lake.settings import load_settings

# Dagster's own automation sensor starts STOPPED; this one runs from the first `make dev`, so
# silver and gold follow every new bronze ingest without a click.
lake_automation_sensor = AutomationConditionSensorDefinition(
    "lake_automation_sensor",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
)

# Steps run in the run worker's process: a lake refresh is a chain of short Polars steps, and a
# process per step (the multiprocess default) costs more in start-up than it gains in parallelism.
defs = Definitions(
    assets=with_freshness_policy([*landing_assets, *bronze_assets, *silver_assets, *gold_assets]),
    asset_checks=lake_checks,
    sensors=[csv_dir_sensor, s3_raw_sensor, lake_automation_sensor],
    jobs=[refresh_lake_job, lake_checks_job, *ingest_checks_jobs],
    resources=build_resources(load_settings()),
    executor=in_process_executor,
)
