"""`make run`: ingest every source file in LAKE_CSV_DIR and materialize the whole lake once.

Headless, but recorded in the Dagster instance that `make dev` uses, so the runs, partitions and
materializations show in the UI. Files are planned as the CSV sensor plans them (minus its wait
for a file to stop changing); a file whose content was already ingested adds nothing, and silver
and gold are rebuilt only when something new arrived or they were never built.
"""

from __future__ import annotations

import logging
import sys

from dagster import AssetKey, AssetSelection, DagsterInstance, materialize

from deathmetal_lake.assets.bronze import bronze_key
from deathmetal_lake.assets.landing import landing_key
from deathmetal_lake.datasets import DATASETS_BY_NAME
from deathmetal_lake.definitions import defs
from deathmetal_lake.partitions import INGEST_PARTITIONS
from deathmetal_lake.resources import build_resources
from deathmetal_lake.sensors import Cursor, plan_ingests
from deathmetal_lake.settings import LakeSettings, load_settings
from deathmetal_lake.sources import local_sources

log = logging.getLogger("deathmetal_lake.run")


def _downstream_keys() -> list[AssetKey]:
    graph = defs.resolve_asset_graph()
    return sorted(AssetSelection.groups("silver", "gold").resolve(graph))


def run_lake(settings: LakeSettings, instance: DagsterInstance) -> bool:
    """Ingest what is new, then refresh silver and gold; True if every run succeeded."""
    sources = local_sources(settings.csv_dir)
    # Every file counts as stable: a headless run does not wait for a second look.
    cursor = Cursor(pending={source.location: source.fingerprint for source in sources})

    def partition_exists(dataset: str, key: str) -> bool:
        return instance.has_dynamic_partition(INGEST_PARTITIONS[dataset].name, key)

    plan = plan_ingests(sources, cursor, partition_exists, log)
    for dataset, keys in plan.new_partitions.items():
        instance.add_dynamic_partitions(INGEST_PARTITIONS[dataset].name, keys)

    # The checks run with the assets they guard: a blocking failure stops what is downstream.
    assets = [*(defs.assets or []), *(defs.asset_checks or [])]
    # From the settings given, not `defs.resources` (built from the environment at import), so
    # a caller with other settings (a test's emulator and folder) gets its own lake.
    resources = build_resources(settings)
    pending = []
    for dataset_name, partitions in INGEST_PARTITIONS.items():
        dataset = DATASETS_BY_NAME[dataset_name]
        done = instance.get_materialized_partitions(bronze_key(dataset))
        current = plan.current.get(dataset_name, set())
        for key in instance.get_dynamic_partitions(partitions.name):
            if key in done:
                continue
            if key in current:
                pending.append((dataset, key))
            else:
                # An ingest that failed before and whose file has since changed or gone: its
                # content cannot be read again, and the file's current version has its own key.
                log.warning(
                    "skipping ingest %s: it never completed and no file in %s has its content",
                    key,
                    settings.csv_dir,
                )
    ok = True
    for dataset, key in pending:
        log.info("ingesting %s partition %s", dataset.name, key)
        result = materialize(
            assets,
            selection=[landing_key(dataset), bronze_key(dataset)],
            partition_key=key,
            instance=instance,
            resources=resources,
            tags={"lake/launched_by": "make run"},
            raise_on_error=False,
        )
        ok &= result.success
    downstream = _downstream_keys()
    never_built = any(instance.get_latest_materialization_event(k) is None for k in downstream)
    if downstream and (pending or never_built):
        result = materialize(
            assets,
            selection=downstream,
            instance=instance,
            resources=resources,
            tags={"lake/launched_by": "make run"},
            raise_on_error=False,
        )
        ok &= result.success
    elif not pending:
        log.info("nothing new in %s; silver and gold are up to date", settings.csv_dir)
    return ok


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = load_settings()
    settings.instance_dir.mkdir(parents=True, exist_ok=True)
    with DagsterInstance.from_config(str(settings.instance_dir)) as instance:
        ok = run_lake(settings, instance)
    if not ok:
        log.error("some runs failed; see the messages above or the runs in the Dagster UI")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
