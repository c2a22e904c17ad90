"""The runs `make run` launches: every source file in LAKE_CSV_DIR ingested, the lake refreshed.

Headless, but recorded in the Dagster instance that `make dev` uses, so the runs, partitions and
materializations show in the UI. Files are planned as the CSV sensor plans them (minus its wait
for a file to settle; a file whose size and modification time are those it had at the last
`make run` is not read again to hash it): a new file version is ingested (landing, bronze,
staging), a version seen before that is not its file's current one any more (v1 -> v2 -> v1) is
staged again, and silver and gold are refreshed once when something changed or they were never
built, in the run of the last ingest (as the sensor's run carries one file to gold).
"""

from __future__ import annotations

import logging

from dagster import AssetKey, AssetSelection, DagsterInstance, Definitions, ExecuteInProcessResult

from deathmetal_lake.assets.bronze import bronze_key
from deathmetal_lake.assets.landing import landing_key
from deathmetal_lake.assets.staging import staging_key
from deathmetal_lake.datasets import DATASETS_BY_NAME
from deathmetal_lake.definitions import build_definitions
from deathmetal_lake.jobs import buildable_downstream
from deathmetal_lake.partitions import INGEST_PARTITIONS
from deathmetal_lake.sensors import Cursor, needs_restaging, plan_ingests
from deathmetal_lake.settings import LakeSettings
from deathmetal_lake.sources import KnownHashes, local_sources

log = logging.getLogger("deathmetal_lake.batch")
TAGS = {"lake/launched_by": "make run"}
# The instance's key-value store keeps the content hashes of the files `make run` last saw.
HASHES_KEY = "deathmetal_lake/make_run/source_hashes"


def _ingest_runs(
    settings: LakeSettings, instance: DagsterInstance, current: dict[str, set[str]]
) -> list[tuple[str, list[AssetKey]]]:
    """(ingest, assets to materialize) for every file version here that silver does not use yet."""
    runs = []
    for name, partitions in INGEST_PARTITIONS.items():
        dataset = DATASETS_BY_NAME[name]
        landed = instance.get_materialized_partitions(bronze_key(dataset))
        files_now = current.get(name, set())
        for key in instance.get_dynamic_partitions(partitions.name):
            if key not in files_now:
                if key not in landed:
                    # A failed ingest whose file has changed or gone: its content cannot be read
                    # again, and the file's current version has its own key.
                    log.warning(
                        "skipping ingest %s: it never completed and no file in %s has its content",
                        key,
                        settings.csv_path,
                    )
                continue
            if key not in landed:
                runs.append(
                    (key, [landing_key(dataset), bronze_key(dataset), staging_key(dataset)])
                )
            elif needs_restaging(instance, dataset, key):
                runs.append((key, [staging_key(dataset)]))
    return runs


def run_lake(settings: LakeSettings, instance: DagsterInstance) -> bool:
    """Ingest what is new, then refresh silver and gold; True if every run succeeded."""
    sources = local_sources(settings.csv_path)
    # Every file counts as settled: a headless run does not wait for a second look.
    cursor = Cursor(pending={source.location: source.fingerprint for source in sources})

    def partition_exists(dataset: str, key: str) -> bool:
        return instance.has_dynamic_partition(INGEST_PARTITIONS[dataset].name, key)

    storage = instance.run_storage
    hashes = KnownHashes.parse(storage.get_cursor_values({HASHES_KEY}).get(HASHES_KEY))
    plan = plan_ingests(sources, cursor, partition_exists, log, hash_of=hashes.content_hash)
    storage.set_cursor_values({HASHES_KEY: hashes.dump(sources)})
    for dataset, keys in plan.new_partitions.items():
        instance.add_dynamic_partitions(INGEST_PARTITIONS[dataset].name, keys)

    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    downstream = sorted(AssetSelection.groups("silver", "gold").resolve(graph))
    # One query for every asset, not one per asset and question.
    built = {
        record.asset_entry.asset_key
        for record in instance.get_asset_records(list(graph.get_all_asset_keys()))
        if record.asset_entry.last_materialization is not None
    }
    never_built = not built.issuperset(downstream)
    runs = _ingest_runs(settings, instance, plan.current)
    if not runs and not never_built:
        log.info("nothing new in %s; silver and gold are up to date", settings.csv_path)
        return True

    def exists(key: AssetKey) -> bool:
        return key in built

    # Only what the new ingests feed is refreshed (everything, the first time).
    roots = downstream if never_built else [k for _, selection in runs for k in selection]
    refresh = [k for k in buildable_downstream(graph, roots, exists) if k in downstream]
    if not runs:
        return _execute(defs, instance, refresh).success
    # The last ingest's run carries the refresh, as the sensor's run carries one file to gold:
    # a run fewer to create, start and check.
    *earlier, (last_key, last_selection) = runs
    ok = True
    for key, selection in earlier:
        ok &= _execute(defs, instance, selection, key).success
    carried = [*last_selection, *(k for k in refresh if k not in last_selection)]
    result = _execute(defs, instance, carried, last_key)
    if result.success:
        return ok
    # A failed ingest blocks nothing after it: what its failure skipped is refreshed without it.
    materialized = {event.asset_key for event in result.get_asset_materialization_events()}
    if materialized.issuperset(last_selection):
        return False
    skipped = [k for k in refresh if k not in materialized]
    if skipped:
        _execute(defs, instance, skipped)
    return False


def _execute(
    defs: Definitions,
    instance: DagsterInstance,
    selection: list[AssetKey],
    partition_key: str | None = None,
) -> ExecuteInProcessResult:
    """One run of `selection` with the checks of those assets, as the UI would launch it."""
    log.info("materializing %s", ", ".join(k.to_user_string() for k in selection))
    job = defs.resolve_implicit_job_def_def_for_assets(selection)
    assert job is not None, selection
    result = job.execute_in_process(
        instance=instance,
        partition_key=partition_key,
        asset_selection=selection,
        tags=TAGS,
        raise_on_error=False,
    )
    _report_checks(result)
    return result


def _report_checks(result: ExecuteInProcessResult) -> None:
    """The run's check results in the terminal: the instance logs at INFO, Dagster's check
    events are DEBUG lines, and a failed non-blocking check does not fail its run."""
    evaluations = result.get_asset_check_evaluations()
    failed = [e for e in evaluations if not e.passed]
    for e in failed:
        log.warning(
            "check %s on %s failed (%s): %s",
            e.check_name,
            e.asset_key.to_user_string(),
            e.severity.value,
            e.description,
        )
    if evaluations:
        log.info("%d of %d checks passed", len(evaluations) - len(failed), len(evaluations))
