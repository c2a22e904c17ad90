"""Freshness of silver and gold.

Two views, both declared in `rules.py`:
- `follows_upstream` checks (WARN): a table is stale when an asset it reads materialized after
  it did and it has not followed within FOLLOW_UPSTREAM_WITHIN_MINUTES. They run by themselves
  every FRESHNESS_CHECK_CRON through the lake's automation sensor, so a stuck refresh shows
  without anyone running anything; that cron is their automation condition, so the automatic
  refreshes leave them out, while `make run` and the `refresh_lake`/`lake_checks` jobs run them.
  They all run in one step (`freshness_checks`): each is a lookup in the event log.
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
    AssetCheckSpec,
    AssetKey,
    AssetsDefinition,
    AutomationCondition,
    FreshnessPolicy,
    apply_freshness_policy,
    map_asset_specs,
)

from deathmetal_lake.assets.gold import gold_assets
from deathmetal_lake.assets.silver import silver_assets
from deathmetal_lake.checks.evidence import PlannedCheck, check_result, checks_step
from deathmetal_lake.resources import LakeTables
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


def _latest_timestamps(
    context: AssetCheckExecutionContext, keys: Sequence[AssetKey]
) -> dict[AssetKey, float | None]:
    """When each asset last materialized: one event-log query for all of them, not one each."""
    events = context.instance.get_latest_materialization_events(keys)
    return {key: None if events.get(key) is None else events[key].timestamp for key in keys}


def _follows_upstream_check(key: AssetKey, upstream: Sequence[AssetKey]) -> PlannedCheck:
    def evaluate(context: AssetCheckExecutionContext, _: LakeTables) -> AssetCheckResult:
        updated_at = _latest_timestamps(context, [key, *upstream])
        return evaluate_follows_upstream(
            updated_at[key],
            {k.to_user_string(): updated_at[k] for k in upstream},
            now=datetime.now(UTC).timestamp(),
        )

    return PlannedCheck(
        AssetCheckSpec(
            FOLLOWS_UPSTREAM,
            asset=key,
            additional_deps=list(upstream),
            automation_condition=AutomationCondition.cron_tick_passed(FRESHNESS_CHECK_CRON),
            description=(
                f"WARN when {', '.join(k.to_user_string() for k in upstream)} materialized after "
                f"this table and it has not followed within {FOLLOW_UPSTREAM_WITHIN_MINUTES} min."
            ),
        ),
        evaluate,
    )


def freshness_checks(
    assets: Sequence[AssetsDefinition] = (*silver_assets, *gold_assets),
) -> list[AssetChecksDefinition]:
    """Every `follows_upstream` check in one step: each reads only the instance's event log."""
    return [
        checks_step(
            "freshness_checks",
            [
                _follows_upstream_check(key, sorted(deps, key=AssetKey.to_user_string))
                for asset in assets
                for key, deps in asset.asset_deps.items()
                if deps
            ],
            description="Silver and gold follow their upstream assets.",
        )
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
