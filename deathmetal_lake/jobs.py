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
