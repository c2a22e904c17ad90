"""Silver-layer rules per dataset, declared as data.

The silver transforms (`deathmetal_lake.transforms.silver`) read these declarations; changing what a
dataset accepts or how a column is cleaned is an edit here, not in the transform code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from deathmetal_lake.datasets import DATASETS_BY_NAME

# Text a source field holds when it has no value (Metal-Archives writes "N/A").
MISSING_MARKERS: tuple[str, ...] = ("", "N/A")
# The separator the Kaggle export put in place of "," inside fields.
FIELD_SEPARATOR = "|"
# Years before this are typos in a death-metal dataset; the upper bound is current_year + 1
# (an announced album may carry next year).
MIN_YEAR = 1960
MAX_YEAR_AHEAD = 1


class RejectReason(StrEnum):
    """Why a row went to quarantine: the stable first part of `_reject_reason`.

    `_reject_reason` is `"<reason>: <detail>"`. A row gets the first failing rule in this
    declaration order, and within a rule the first column in the order `DatasetRules` lists them.
    The prefixes are stable so checks and dashboards can group by them.
    """

    PARSE_ERROR = "parse error"
    INVALID_ID = "invalid id"
    REQUIRED_MISSING = "required field missing"
    INVALID_INTEGER = "invalid integer"
    INVALID_SCORE = "invalid score"
    INVALID_YEAR = "invalid year"
    DUPLICATE_ID = "duplicate id"


@dataclass(frozen=True)
class ScoreColumn:
    """A numeric rating that must parse as a float inside [minimum, maximum]."""

    name: str
    minimum: float = 0.0
    maximum: float = 100.0


@dataclass(frozen=True)
class ForeignKey:
    """`column` refers to the key of dataset `references`; orphans are kept and counted."""

    column: str
    references: str


@dataclass(frozen=True)
class DatasetRules:
    """How one dataset's bronze text becomes typed silver rows, and which rows are rejected.

    Every column named here is a source column of the dataset (checked by the tests); a source
    column listed nowhere stays text as it came.
    """

    dataset: str
    key: str = "id"
    # Non-key integer columns (foreign keys): Int64 in silver, unparseable -> quarantine.
    integer_columns: tuple[str, ...] = ()
    # Int64 in MIN_YEAR..current_year+MAX_YEAR_AHEAD; missing is null unless required.
    year_columns: tuple[str, ...] = ()
    score_columns: tuple[ScoreColumn, ...] = ()
    # Free text where the export's "|" is restored to ",".
    free_text_columns: tuple[str, ...] = ()
    # "|"-separated lists -> List(String), items trimmed, missing -> null.
    list_columns: tuple[str, ...] = ()
    # Short text (codes, names of things) where a missing marker becomes null.
    text_columns: tuple[str, ...] = ()
    # Missing (null or a MISSING_MARKERS value) -> quarantine. The key is always required.
    required_columns: tuple[str, ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()
    # Values the lake knows per column; others are kept but reported (not rejected).
    known_values: dict[str, frozenset[str]] = field(default_factory=dict)
    # Metal-Archives' activity periods ("1989-1993|2004-present"), parsed into active_* columns.
    active_column: str | None = None

    @property
    def source_columns(self) -> tuple[str, ...]:
        return DATASETS_BY_NAME[self.dataset].columns


BAND_STATUSES = frozenset({"Active", "Split-up", "On hold", "Changed name", "Unknown", "Disputed"})

RULES: dict[str, DatasetRules] = {
    r.dataset: r
    for r in (
        DatasetRules(
            dataset="albums",
            integer_columns=("band",),
            year_columns=("year",),
            free_text_columns=("title",),
            required_columns=("band", "title"),
            foreign_keys=(ForeignKey("band", "bands"),),
        ),
        DatasetRules(
            dataset="bands",
            year_columns=("formed_in",),
            free_text_columns=("name",),
            list_columns=("genre", "theme"),
            text_columns=("country", "status", "active"),
            required_columns=("name",),
            known_values={"status": BAND_STATUSES},
            active_column="active",
        ),
        DatasetRules(
            dataset="reviews",
            integer_columns=("album",),
            score_columns=(ScoreColumn("score"),),
            free_text_columns=("title", "content"),
            required_columns=("album", "score"),
            foreign_keys=(ForeignKey("album", "albums"),),
        ),
    )
}


# ---------------------------------------------------------------------------------------------
# Quality contracts: the thresholds of the asset checks in `deathmetal_lake.checks`.


@dataclass(frozen=True)
class QualityContract:
    """How strict the silver checks of one dataset are; the rest comes from `DatasetRules`.

    Foreign-key orphans (rows whose key has no parent, kept in silver) are a WARN up to
    `orphan_error_rate` of the table's rows and an ERROR above it (blocking gold). Quarantined
    rows are a WARN above `quarantine_warn_rate` of the latest ingests' bronze rows. Values outside
    `DatasetRules.known_values` (e.g. a band `status` the lake does not know) are a WARN.
    """

    dataset: str
    orphan_error_rate: float = 0.05
    quarantine_warn_rate: float = 0.01


CONTRACTS: dict[str, QualityContract] = {
    c.dataset: c
    for c in (
        QualityContract("albums"),
        QualityContract("bands"),
        QualityContract("reviews"),
    )
}

# Freshness: a silver or gold table is stale when an upstream asset materialized newer data and
# the table has not followed within FOLLOW_UPSTREAM_WITHIN (automation follows in seconds).
FOLLOW_UPSTREAM_WITHIN_MINUTES = 30
# How often the freshness checks run by themselves (the lake's automation sensor launches them).
FRESHNESS_CHECK_CRON = "*/15 * * * *"
# Dagster FreshnessPolicy on silver and gold (time since the last materialization): a backstop
# shown in the UI's freshness column; a day without new files is normal, a week is not.
FRESHNESS_WARN_HOURS = 24
FRESHNESS_FAIL_HOURS = 24 * 7
