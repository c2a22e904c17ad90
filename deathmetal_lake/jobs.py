"""Jobs for the UI and the command line; ingest runs come from the sensors."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

refresh_lake_job = define_asset_job(
    "refresh_lake",
    selection=AssetSelection.groups("silver", "gold"),
    description=(
        "Rebuilds silver and gold from every bronze ingest (the whole lake downstream of landing)."
    ),
)

# The silver and gold checks on their own, over the lake as it is (nothing is materialized). The
# landing and bronze reconciliation checks are partitioned by ingest and run with every ingest
# (Dagster cannot run partitioned checks of several partitions definitions in one job).
lake_checks_job = define_asset_job(
    "lake_checks",
    selection=AssetSelection.all_asset_checks() & AssetSelection.groups("silver", "gold"),
    description=(
        "Runs every silver and gold asset check (contracts, reconciliation with bronze, gold "
        "sanity, freshness) without materializing anything."
    ),
)
