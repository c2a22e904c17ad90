"""Named automation conditions: how the lake keeps itself up to date under `make dev`."""

from __future__ import annotations

from dagster import AutomationCondition


def follow_upstream() -> AutomationCondition:
    """Eager, except that a missing upstream partition does not block.

    Silver reads every bronze ingest; an ingest whose landing failed (a bad file) has no bronze,
    and plain `eager()` would then never refresh silver again.
    """
    return AutomationCondition.eager().without(~AutomationCondition.any_deps_missing())
