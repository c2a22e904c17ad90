"""The query command's parts, the UI metadata helpers and the landing progress log, without a lake.

The command itself, against an independent reader of a built lake, is tested in `test_lake.py`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import polars as pl
import pytest
from upath import UPath

from deathmetal_lake.catalog import glue_type, lake_catalog
from deathmetal_lake.producer.sending import Sent
from deathmetal_lake.progress import LandingProgress
from deathmetal_lake.query import QueryError, lake_tables, qualify, run_query
from deathmetal_lake.resources.table_metadata import (
    PREVIEW_TEXT_CHARS,
    preview,
    quarantine_reason_counts,
    written_table_metadata,
)
from deathmetal_lake.rules import RejectReason


def test_qualify_quotes_table_references_only() -> None:
    sql, named = qualify(
        "SELECT r.id, 'silver.reviews' AS s, \"gold.x\" FROM Silver . Reviews r "
        "JOIN gold.top10_by_country g ON r.id = g.band_id WHERE r.title = 'it''s gold.mine'"
    )
    assert sql == (
        'SELECT r.id, \'silver.reviews\' AS s, "gold.x" FROM "silver.reviews" r '
        "JOIN \"gold.top10_by_country\" g ON r.id = g.band_id WHERE r.title = 'it''s gold.mine'"
    )
    assert named == ["silver.reviews", "gold.top10_by_country"]


def test_unknown_table_is_refused_before_anything_is_read() -> None:
    # No LakeTables is needed (None would fail on use): the name is checked first.
    with pytest.raises(QueryError, match=r"unknown table gold\.nope; tables: gold\.album_rankings"):
        run_query("SELECT * FROM gold.nope", None, lake_tables())  # type: ignore[arg-type]


def test_every_silver_quarantine_and_gold_asset_is_a_table() -> None:
    tables = lake_tables()
    assert {"silver.reviews", "quarantine.albums", "gold.top10_by_country"} <= set(tables)
    assert {name.split(".")[0] for name in tables} == {"silver", "quarantine", "gold"}
    assert len(tables) == len(set(tables)) == len(lake_catalog())


def test_glue_types() -> None:
    assert glue_type(pl.List(pl.String)) == "array<string>"
    assert glue_type(pl.Struct({"a": pl.Int64, "b": pl.Float64})) == "struct<a:bigint,b:double>"
    with pytest.raises(TypeError, match="no Glue type"):
        glue_type(pl.Object())


def test_preview_and_row_count_of_a_written_table(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {
            "id": list(range(1000)),
            "genre": [["Death", "Thrash"]] * 1000,
            "content": ["x" * 500] * 1000,
            "score": [90.5] * 1000,
        }
    )
    parts = [UPath(tmp_path / "a.parquet"), UPath(tmp_path / "b.parquet")]
    frame.write_parquet(parts[0].path, row_group_size=100)
    frame.clear().write_parquet(parts[1].path)
    metadata = written_table_metadata(parts, f"{tmp_path}/")
    assert metadata["dagster/row_count"] == 1000
    assert metadata["dagster/uri"].value == f"{tmp_path}/"
    table = metadata["preview"].value
    assert [(c.name, c.type) for c in table.schema.columns] == [
        ("id", "int"),
        ("genre", "string"),
        ("content", "string"),
        ("score", "float"),
    ]
    assert [r.data["id"] for r in table.records] == [0, 1, 2, 3, 4]
    assert table.records[0].data["genre"] == "['Death', 'Thrash']"
    assert len(table.records[0].data["content"]) == PREVIEW_TEXT_CHARS
    partition = written_table_metadata(parts[1:], str(parts[1]), partitioned=True)
    assert partition["dagster/partition_row_count"] == 0 and "preview" not in partition
    assert preview(frame.head(0)).value.records == []


def test_quarantine_reports_every_reason() -> None:
    rejected = pl.DataFrame(
        {
            "_reject_reason": [
                "duplicate id: superseded by albums.csv row 3",
                "duplicate id: superseded by albums.csv row 9",
                "invalid year: year='1850' (expected year in 1960..2027)",
            ]
        }
    )
    counts = quarantine_reason_counts(rejected)
    assert len(counts) == len(RejectReason)
    assert counts["quarantine/duplicate_id"] == 2 and counts["quarantine/invalid_year"] == 1
    assert sum(counts.values()) == rejected.height


def test_landing_progress_logs_while_open_and_when_closed(caplog: pytest.LogCaptureFixture) -> None:
    delivered = [0]
    log = logging.getLogger("test_landing_progress")
    progress = LandingProgress(log, "reviews-abc", lambda: delivered[0], interval_seconds=0.05)
    with caplog.at_level(logging.INFO, logger=log.name):
        with progress:
            progress.sent(Sent(rows=1_500, bytes=2_500_000))
            time.sleep(0.3)
        ticks = len(caplog.messages)
        delivered[0] = 1_500
        with progress:
            pass
    assert ticks >= 2, caplog.messages  # at least one tick while sending, and the closing line
    assert caplog.messages[0].startswith("reviews-abc: 1,500 rows sent (2.5 MB), 0 rows delivered")
    assert caplog.messages[-1].startswith("reviews-abc: 1,500 rows sent (2.5 MB), 1,500 rows")
