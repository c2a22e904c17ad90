"""Named automation conditions: how the lake keeps itself up to date under `make dev`."""

from __future__ import annotations

from dagster import AutomationCondition


def follow_ingests() -> AutomationCondition:
    """For silver base tables, which read every bronze ingest: rebuild when any ingest updates.

    Unlike `eager()`, a missing bronze partition does not block: an ingest whose landing failed
    (a bad file) has no bronze, and `eager()` would then never refresh silver again. A table is
    not built before its first ingest either.
    """
    return (
        AutomationCondition.any_deps_updated().since_last_handled()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label("follow_ingests")


def follow_upstream() -> AutomationCondition:
    """For joins and gold: eager, i.e. rebuild once every input exists and any of them changed."""
    return AutomationCondition.eager()
