"""Freshness of silver and gold.

Two views, both declared in `rules.py`:
- `follows_upstream` checks (WARN): a table is stale when an asset it reads materialized after
  it did and it has not followed within FOLLOW_UPSTREAM_WITHIN_MINUTES. They run by themselves
  every FRESHNESS_CHECK_CRON through the lake's automation sensor, so a stuck refresh shows
  without anyone running anything; that cron is their automation condition, so the automatic
  refreshes leave them out, while `make run` and the `refresh_lake`/`lake_checks` jobs run them.
- a Dagster `FreshnessPolicy.time_window` on every silver and gold asset (`with_freshness_policy`),
  the UI's freshness state: time since the last materialization, whatever the upstream did. The
  Dagster daemon's freshness evaluator (in `dagster dev`, every 30 s) records that state; nothing
  to switch on, and without a daemon it is never updated.
"""

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import polars as pl
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetKey,
    AssetsDefinition,
    AutomationCondition,
    FreshnessPolicy,
    apply_freshness_policy,
    asset_check,
    map_asset_specs,
)

from deathmetal_lake.assets.gold import gold_assets
from deathmetal_lake.assets.silver import silver_assets
from deathmetal_lake.checks.evidence import check_result
from deathmetal_lake.rules import (
    FOLLOW_UPSTREAM_WITHIN_MINUTES,
    FRESHNESS_CHECK_CRON,
    FRESHNESS_FAIL_HOURS,
    FRESHNESS_WARN_HOURS,
)

FOLLOWS_UPSTREAM = "follows_upstream"
FRESHNESS_GROUPS = frozenset({"silver", "gold"})

LAKE_FRESHNESS_POLICY = FreshnessPolicy.time_window(
    fail_window=timedelta(hours=FRESHNESS_FAIL_HOURS),
    warn_window=timedelta(hours=FRESHNESS_WARN_HOURS),
)


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


def evaluate_follows_upstream(
    updated_at: float | None,
    upstream_updated_at: Mapping[str, float | None],
    now: float,
    within_minutes: float = FOLLOW_UPSTREAM_WITHIN_MINUTES,
) -> AssetCheckResult:
    """Stale: an upstream materialized after this table, longer than `within_minutes` ago."""
    own = updated_at if updated_at is not None else float("-inf")
    newer = {name: ts for name, ts in upstream_updated_at.items() if ts is not None and ts > own}
    overdue = {name: ts for name, ts in newer.items() if now - ts > within_minutes * 60}
    lag = max((now - ts for ts in overdue.values()), default=0.0)
    return check_result(
        passed=not overdue,
        severity=AssetCheckSeverity.WARN,
        counts={
            "upstreams_newer": len(newer),
            "upstreams_overdue": len(overdue),
            "overdue_minutes": round(lag / 60, 1),
        },
        thresholds={"follow_within_minutes": within_minutes},
        failing=pl.DataFrame(
            {
                "upstream": list(overdue),
                "upstream_updated_at": [_iso(ts) for ts in overdue.values()],
                "table_updated_at": [_iso(updated_at)] * len(overdue),
            },
            schema={c: pl.String for c in ("upstream", "upstream_updated_at", "table_updated_at")},
        ),
    )


def _latest_timestamp(context: AssetCheckExecutionContext, key: AssetKey) -> float | None:
    event = context.instance.get_latest_materialization_event(key)
    return None if event is None else event.timestamp


def _follows_upstream_check(key: AssetKey, upstream: Sequence[AssetKey]) -> AssetChecksDefinition:
    @asset_check(
        asset=key,
        name=FOLLOWS_UPSTREAM,
        additional_deps=list(upstream),
        automation_condition=AutomationCondition.cron_tick_passed(FRESHNESS_CHECK_CRON),
        description=(
            f"WARN when {', '.join(k.to_user_string() for k in upstream)} materialized after "
            f"this table and it has not followed within {FOLLOW_UPSTREAM_WITHIN_MINUTES} min."
        ),
    )
    def follows_upstream(context: AssetCheckExecutionContext) -> AssetCheckResult:
        return evaluate_follows_upstream(
            _latest_timestamp(context, key),
            {k.to_user_string(): _latest_timestamp(context, k) for k in upstream},
            now=datetime.now(UTC).timestamp(),
        )

    return follows_upstream


def freshness_checks(
    assets: Sequence[AssetsDefinition] = (*silver_assets, *gold_assets),
) -> list[AssetChecksDefinition]:
    return [
        _follows_upstream_check(key, sorted(deps, key=AssetKey.to_user_string))
        for asset in assets
        for key, deps in asset.asset_deps.items()
        if deps
    ]


def with_freshness_policy(assets: Sequence[AssetsDefinition]) -> list[AssetsDefinition]:
    """The assets, LAKE_FRESHNESS_POLICY set on every silver and gold one (others unchanged)."""
    return map_asset_specs(
        lambda spec: (
            apply_freshness_policy(spec, LAKE_FRESHNESS_POLICY)
            if spec.group_name in FRESHNESS_GROUPS
            else spec
        ),
        assets,
    )
