"""Provenance pairs as integers, for the reconciliation's joins over millions of rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from deathmetal_lake.rows import INGEST_ID, SOURCE_ROW

ROW_KEY = "_row_key"


@dataclass(frozen=True)
class RowKeys:
    """(`_ingest_id`, `_source_row`) as one Int64: each ingest's rows get a range of their own.

    Ingest i's row r is `base_i + r`, the ranges laid end to end from each ingest's lowest to
    highest row, so distinct pairs always get distinct keys. Joining and grouping on one integer
    instead of a string and an integer: at scale 100 the albums reconciliation (4.5 M rows)
    peaked at 0.7 GiB instead of 1.5 GiB, in 1.5 s instead of 2.0 s.
    """

    ranges: pl.DataFrame
    """Per ingest: `_ingest_id`, `start` (its first key) and `base` (key = base + row), by start."""

    @classmethod
    def spanning(cls, frames: Sequence[pl.LazyFrame]) -> RowKeys:
        """Keys for every (ingest, row) pair in `frames` (their provenance columns)."""
        spans = (
            pl.concat(frames)
            .group_by(INGEST_ID)
            .agg(pl.col(SOURCE_ROW).min().alias("first"), pl.col(SOURCE_ROW).max().alias("last"))
            .collect(engine="streaming")
            .drop_nulls()
            .sort(INGEST_ID)
        )
        size = pl.col("last") - pl.col("first") + 1
        if not spans.is_empty() and spans.select(size.sum()).item() >= 2**62:
            raise ValueError("the ingests' source rows span more than an Int64 key can hold")
        ranges = spans.with_columns(start=size.cum_sum() - size).select(
            INGEST_ID, "start", base=pl.col("start") - pl.col("first")
        )
        return cls(ranges)

    def keyed(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        """The frame's rows as keys (null for a row whose ingest or row number is null)."""
        base = pl.col(INGEST_ID).replace_strict(
            self.ranges[INGEST_ID], self.ranges["base"], default=None, return_dtype=pl.Int64
        )
        return frame.select((base + pl.col(SOURCE_ROW)).alias(ROW_KEY))

    def pairs(self, keyed: pl.DataFrame) -> pl.DataFrame:
        """Keys back to (`_ingest_id`, `_source_row`); a null key stays null."""
        found = (
            keyed.drop_nulls(ROW_KEY)
            .sort(ROW_KEY)
            .join_asof(self.ranges, left_on=ROW_KEY, right_on="start", strategy="backward")
        )
        return pl.concat(
            [
                found.select(INGEST_ID, (pl.col(ROW_KEY) - pl.col("base")).alias(SOURCE_ROW)),
                keyed.filter(pl.col(ROW_KEY).is_null()).select(
                    pl.col(ROW_KEY).cast(pl.String).alias(INGEST_ID),
                    pl.col(ROW_KEY).alias(SOURCE_ROW),
                ),
            ]
        )
