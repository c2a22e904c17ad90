"""`python -m deathmetal_lake.checks.run`: the landing and bronze checks alone, ingest by ingest.

Dagster cannot backfill a job of checks only (it is not partitioned, see `jobs.py`), so this runs
each dataset's `{dataset}_ingest_checks` job once per ingest, the ingest named by the run's
partition tag, in the Dagster instance `make dev` and `make run` share: the runs and results
show in the UI on each ingest. Nothing is materialized.
"""

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence

from dagster import DagsterInstance, ExecuteInProcessResult

from deathmetal_lake.assets.landing import landing_key
from deathmetal_lake.checks.reconciliation import source_file_of
from deathmetal_lake.datasets import DATASETS, DATASETS_BY_NAME, Dataset, dataset_for_file
from deathmetal_lake.definitions import build_definitions
from deathmetal_lake.instance import open_instance
from deathmetal_lake.jobs import PARTITION_TAG, ingest_checks_job_name
from deathmetal_lake.partitions import ingest_partitions
from deathmetal_lake.settings import LakeSettings, load_settings


def landed_ingests(instance: DagsterInstance, dataset: Dataset) -> list[str]:
    """The dataset's ingests that reached landing, oldest first: the ones there is data to check.

    An ingest whose file was refused before anything was sent (a bad file) has nothing to check.
    """
    landed = instance.get_materialized_partitions(landing_key(dataset))
    return [
        key
        for key in instance.get_dynamic_partitions(ingest_partitions(dataset).name)
        if key in landed
    ]


def dataset_of_ingest(ingest_id: str) -> Dataset:
    dataset = dataset_for_file(source_file_of(ingest_id))
    if dataset is None:
        raise ValueError(f"{ingest_id!r} is not an ingest of any dataset")
    return dataset


def run_ingest_checks(
    settings: LakeSettings, instance: DagsterInstance, ingests: Mapping[str, Sequence[str]]
) -> dict[str, ExecuteInProcessResult]:
    """Run the ingest checks job of each dataset once per ingest given; results by ingest."""
    checks_defs = build_definitions(settings)
    results = {}
    for dataset_name, keys in ingests.items():
        job = checks_defs.resolve_job_def(ingest_checks_job_name(DATASETS_BY_NAME[dataset_name]))
        for key in keys:
            results[key] = job.execute_in_process(
                instance=instance,
                tags={PARTITION_TAG: key, "lake/launched_by": "deathmetal_lake.checks.run"},
                raise_on_error=False,
            )
    return results


def _report(results: Mapping[str, ExecuteInProcessResult]) -> bool:
    ok = True
    for ingest_id, result in results.items():
        evaluations = result.get_asset_check_evaluations()
        for e in sorted(evaluations, key=lambda e: e.asset_key.to_user_string()):
            status = "passed" if e.passed else f"FAILED ({e.severity.value})"
            print(f"{ingest_id}  {e.asset_key.to_user_string()}  {e.check_name}: {status}")
            print(f"    {e.description}")
        ok &= result.success and all(e.passed for e in evaluations)
        if len(evaluations) < len(result.job_def.nodes):
            # A check that raised instead of reporting (e.g. its bronze partition is missing).
            print(f"{ingest_id}: a check did not finish (run {result.run_id}); see its log")
    return ok


def _targets(
    ingest_ids: Iterable[str], datasets: Sequence[str], instance: DagsterInstance
) -> dict[str, list[str]]:
    """Named ingests by their dataset, or else every landed ingest of the datasets chosen."""
    chosen = [DATASETS_BY_NAME[name] for name in datasets] or list(DATASETS)
    named = list(ingest_ids)
    if not named:
        return {d.name: landed_ingests(instance, d) for d in chosen}
    targets: dict[str, list[str]] = {}
    for ingest_id in named:
        targets.setdefault(dataset_of_ingest(ingest_id).name, []).append(ingest_id)
    return targets


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deathmetal_lake.checks.run",
        description="Run the landing and bronze checks alone: the ingests named, or every "
        "ingest that reached landing of the datasets given (default: all datasets).",
    )
    parser.add_argument(
        "ingest", nargs="*", help="ingest partition keys, e.g. bands-5f77c9ac7efe (any dataset)"
    )
    parser.add_argument("--dataset", action="append", default=[], choices=sorted(DATASETS_BY_NAME))
    args = parser.parse_args(argv)
    settings = load_settings()
    with open_instance(settings) as instance:
        try:
            targets = _targets(args.ingest, args.dataset, instance)
        except ValueError as error:
            parser.error(str(error))
        if not any(targets.values()):
            print("no ingest to check")
            return 0
        ok = _report(run_ingest_checks(settings, instance, targets))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
