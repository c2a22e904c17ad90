"""Jobs for the UI and the command line; ingest runs come from the sensors."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from dagster import AssetKey, AssetSelection, define_asset_job

from deathmetal_lake.assets.bronze import bronze_key
from deathmetal_lake.assets.landing import landing_key
from deathmetal_lake.datasets import DATASETS, Dataset

if TYPE_CHECKING:  # what these return; not exported by `dagster` itself
    from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

# Dagster's run tag for the partition a run targets (`dagster._core.storage.tags`).
PARTITION_TAG = "dagster/partition"

refresh_lake_job = define_asset_job(
    "refresh_lake",
    selection=AssetSelection.groups("silver", "gold"),
    description=(
        "Rebuilds silver and gold from every bronze ingest (the whole lake downstream of landing)."
    ),
)

# The silver and gold checks on their own, over the lake as it is (nothing is materialized). The
# landing and bronze checks are partitioned by ingest, one partitions definition per dataset, so
# they have a job per dataset (`ingest_checks_job`).
lake_checks_job = define_asset_job(
    "lake_checks",
    selection=AssetSelection.all_asset_checks() & AssetSelection.groups("silver", "gold"),
    description=(
        "Runs every silver and gold asset check (contracts, reconciliation with bronze, gold "
        "sanity, freshness) without materializing anything."
    ),
)


def ingest_checks_job_name(dataset: Dataset) -> str:
    return f"{dataset.name}_ingest_checks"


def ingest_checks_job(dataset: Dataset) -> UnresolvedAssetJobDefinition:
    """A dataset's landing and bronze checks alone, on the ingest named by the run's partition tag.

    Dagster 1.13 takes an asset job's partitions from the assets it materializes; a job of checks
    only materializes none, so it is not partitioned (`dagster job execute --partition` and
    backfills refuse it). The checks still read the run's `dagster/partition` tag as their
    partition, evaluate that one ingest and record the result on it.
    """
    return define_asset_job(
        ingest_checks_job_name(dataset),
        selection=AssetSelection.checks_for_assets(landing_key(dataset), bronze_key(dataset)),
        description=(
            f"Runs the {dataset.name} landing and bronze reconciliation checks on one ingest, "
            f"without materializing anything. Launch it with the tag "
            f"{PARTITION_TAG}=<ingest partition key>."
        ),
    )


ingest_checks_jobs = [ingest_checks_job(dataset) for dataset in DATASETS]


def buildable_downstream(
    graph: BaseAssetGraph, roots: Iterable[AssetKey], exists: Callable[[AssetKey], bool]
) -> list[AssetKey]:
    """`roots` and everything downstream of them whose every input exists or is built with them.

    What one run can carry from a new ingest to gold: a mart whose other input was never built
    (albums ingested before any bands) waits for a later run instead of failing on a missing
    table. Topological order, roots first.
    """
    chosen = set(roots)
    for level in graph.toposorted_asset_keys_by_level:
        for key in level:
            if key in chosen or not (graph.get(key).parent_keys & chosen):
                continue
            if all(parent in chosen or exists(parent) for parent in graph.get(key).parent_keys):
                chosen.add(key)
    return [key for level in graph.toposorted_asset_keys_by_level for key in level if key in chosen]
