"""Incremental silver: every refresh equals a rebuild from scratch of the same ingests.

One module-scoped lake (the committed sample, on its own embedded AWS) receives, in order, the
cases of the incremental design: an append of new ids, an update of existing ids by a newer
file, a replaced file, a reverted file (v1 -> v2 -> v1) and a failed ingest next to a good one.
After each, `make run`'s `run_lake` refreshes it incrementally; the test then snapshots silver,
quarantine and gold, deletes them, rebuilds them from scratch through the same assets, and
compares the two row by row by provenance.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from dagster import AssetCheckKey, AssetKey, AssetSelection, DagsterInstance, materialize
from polars.testing import assert_frame_equal

from deathmetal_lake.batch import run_lake
from deathmetal_lake.definitions import build_definitions
from deathmetal_lake.settings import LakeSettings
from deathmetal_lake_tests.conftest import GOLD_TABLES, aws_client, sample_lake_built

pytestmark = pytest.mark.slow

DATASETS = ("albums", "bands", "reviews")
REVIEW_COLUMNS = ["id", "album", "title", "score", "content"]
BASE_TABLES = [f"silver/{d}" for d in DATASETS] + [f"quarantine/{d}" for d in DATASETS]
JOINED_TABLES = ["silver/music_catalog", "silver/album_reviews"]
TABLES = [*BASE_TABLES, *JOINED_TABLES, *(f"gold/{t}" for t in GOLD_TABLES)]
PROVENANCE = ["_ingest_id", "_source_row"]


class Lake:
    def __init__(self, settings: LakeSettings, instance: DagsterInstance) -> None:
        self.settings = settings
        self.instance = instance
        self.s3 = aws_client(settings, "s3")

    @property
    def csv_dir(self) -> Path:
        return self.settings.csv_path

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.settings.bucket, Prefix=prefix
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def read(self, table: str) -> pl.DataFrame:
        """A table as the contract lays it out: a folder of parts, or one file."""
        keys = [k for k in self.keys(f"{table}/") if k.endswith(".parquet")] or [f"{table}.parquet"]
        frames = [
            pl.read_parquet(self.s3.get_object(Bucket=self.settings.bucket, Key=k)["Body"].read())
            for k in keys
        ]
        return pl.concat(frames)

    def snapshot(self) -> dict[str, pl.DataFrame]:
        return {table: _ordered(self.read(table)) for table in TABLES}

    def rebuild_from_scratch(self) -> None:
        """Silver, quarantine and gold deleted and built again from the staged ingests."""
        for table in TABLES:
            for key in self.keys(f"{table}/") + self.keys(f"{table}.parquet"):
                self.s3.delete_object(Bucket=self.settings.bucket, Key=key)
        defs = build_definitions(self.settings)
        downstream = AssetSelection.groups("silver", "gold").resolve(defs.resolve_asset_graph())
        result = materialize(
            [*(defs.assets or []), *(defs.asset_checks or [])],
            selection=sorted(downstream),
            instance=self.instance,
            resources=defs.resources,
            raise_on_error=False,
        )
        assert result.success, "the rebuild from scratch failed"


def _ordered(frame: pl.DataFrame) -> pl.DataFrame:
    """Tables carry no row order: sort by provenance, or by every column for joins and gold."""
    by = PROVENANCE if set(PROVENANCE) <= set(frame.columns) else frame.columns
    sortable = [c for c in by if frame.schema[c] != pl.List(pl.String)]
    return frame.sort(sortable, nulls_last=True)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    with sample_lake_built(tmp_path_factory.mktemp("incremental")) as (settings, instance):
        yield Lake(settings, instance)


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def sample_rows(lake: Lake, name: str) -> list[list[str]]:
    with (lake.csv_dir / name).open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f))[1:]


def parts_rewritten(lake: Lake, table: str) -> int:
    """How many parts the latest refresh of a silver base table wrote (its own metadata)."""
    event = lake.instance.get_latest_materialization_event(AssetKey(table.split("/")))
    assert event is not None and event.asset_materialization is not None
    return event.asset_materialization.metadata["parts_written"].value


def parts_checked(lake: Lake, table: str, check: str) -> int:
    """How many parts of `table` the check's latest evaluation read (the others were verified)."""
    key = AssetCheckKey(AssetKey(table.split("/")), check)
    (record,) = lake.instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
    assert record.event is not None and record.event.dagster_event is not None
    return record.event.dagster_event.event_specific_data.metadata["parts_checked"].value


def refresh_equals_rebuild(
    lake: Lake,
    *,
    rewritten: dict[str, int] | None = None,
    checked: dict[tuple[str, str], int] | None = None,
) -> dict:
    """Run the lake incrementally, then check a from-scratch rebuild gives the same tables.

    `rewritten`: table -> how many parts the incremental refresh may write; `checked`:
    (table, check) -> how many parts the refresh's evaluation of that check may read.
    """
    assert run_lake(lake.settings, lake.instance), "the incremental run failed"
    for table, parts in (rewritten or {}).items():
        assert parts_rewritten(lake, table) == parts, table
    for (table, check), parts in (checked or {}).items():
        assert parts_checked(lake, table, check) == parts, (table, check)
    incremental = lake.snapshot()
    lake.rebuild_from_scratch()
    rebuilt = lake.snapshot()
    for table in TABLES:
        assert_frame_equal(incremental[table], rebuilt[table], check_row_order=True), table
    assert_reconciles(lake, incremental)
    return incremental


def assert_reconciles(lake: Lake, tables: dict[str, pl.DataFrame]) -> None:
    """For every current ingest: staged rows = silver rows + quarantine rows, each once."""
    for dataset in DATASETS:
        placed = pl.concat(
            [
                tables[f"silver/{dataset}"].select(PROVENANCE),
                tables[f"quarantine/{dataset}"].select(PROVENANCE),
            ]
        )
        assert placed.is_duplicated().sum() == 0, dataset
        ingests = placed["_ingest_id"].unique().to_list()
        staged = pl.concat(
            [lake.read(f"staging/{dataset}/{ingest}").select(PROVENANCE) for ingest in ingests]
        )
        assert_frame_equal(placed.sort(PROVENANCE), staged.sort(PROVENANCE))


def ids(tables: dict[str, pl.DataFrame], table: str) -> set[int]:
    return set(tables[table]["id"].to_list())


def test_the_sample_equals_its_rebuild(lake: Lake) -> None:
    tables = refresh_equals_rebuild(lake)
    assert tables["silver/reviews"].height > 0


def test_an_append_adds_its_ids_and_rewrites_no_other_part(lake: Lake) -> None:
    before = lake.snapshot()
    start = max(ids(before, "silver/reviews")) + 1
    albums = sorted(ids(before, "silver/albums"))[:3]
    rows = [[start + i, albums[i % 3], f"New {i}", 50 + i, "Fresh."] for i in range(5)]
    write_csv(lake.csv_dir / "reviews_append.csv", REVIEW_COLUMNS, rows)
    # New ids supersede nothing: the refresh writes the new ingest's part alone, and the join
    # of reviews with albums only that part's join.
    # The row-level checks and the reconciliation read that part alone.
    after = refresh_equals_rebuild(
        lake,
        rewritten={"silver/reviews": 1, "silver/album_reviews": 1},
        checked={
            ("silver/reviews", "silver_reconciles_with_bronze"): 1,
            ("silver/reviews", "required_not_null"): 1,
            ("silver/reviews", "values_in_range"): 1,
        },
    )
    assert ids(after, "silver/reviews") == ids(before, "silver/reviews") | {r[0] for r in rows}
    assert after["quarantine/reviews"].height == before["quarantine/reviews"].height


def test_an_update_by_a_newer_file_wins_and_the_old_rows_go_to_quarantine(lake: Lake) -> None:
    original = [r for r in sample_rows(lake, "reviews.csv")][:3]
    updated = [[r[0], r[1], "Updated", "1", "Changed my mind."] for r in original]
    # An invalid newer copy does not displace the valid older one.
    invalid = [original[0][0], original[0][1], "Bad", "abc", "?"]
    write_csv(lake.csv_dir / "reviews_update.csv", REVIEW_COLUMNS, [*updated[1:], invalid])
    # The new part, and reviews.csv's part that lost two ids (and their joins).
    tables = refresh_equals_rebuild(
        lake,
        rewritten={"silver/reviews": 2, "silver/album_reviews": 2},
        checked={("silver/reviews", "silver_reconciles_with_bronze"): 2},
    )
    reviews = tables["silver/reviews"]
    for row in updated[1:]:
        winner = reviews.filter(pl.col("id") == int(row[0]))
        assert winner.select("title", "_source_file").rows() == [("Updated", "reviews_update.csv")]
    first = reviews.filter(pl.col("id") == int(original[0][0]))
    assert first["_source_file"].to_list() == ["reviews.csv"]
    reasons = tables["quarantine/reviews"].filter(pl.col("_source_file") == "reviews_update.csv")
    assert reasons["_reject_reason"].to_list() == [
        "invalid score: score='abc' (expected number in 0..100)"
    ]


def test_a_replaced_file_drops_its_old_rows_and_brings_back_what_it_superseded(
    lake: Lake,
) -> None:
    original = sample_rows(lake, "reviews.csv")[:3]
    # v2 of reviews_update.csv no longer has the update of review original[1].
    v2 = [[original[2][0], original[2][1], "Updated again", "2", "Still bad."]]
    write_csv(lake.csv_dir / "reviews_update.csv", REVIEW_COLUMNS, v2)
    tables = refresh_equals_rebuild(lake)
    reviews = tables["silver/reviews"]
    back = reviews.filter(pl.col("id") == int(original[1][0]))
    assert back["_source_file"].to_list() == ["reviews.csv"]
    again = reviews.filter(pl.col("id") == int(original[2][0]))
    assert again["title"].to_list() == ["Updated again"]
    assert "Bad" not in tables["quarantine/reviews"]["title"].to_list()


def test_a_reverted_file_is_the_latest_again(lake: Lake) -> None:
    original = sample_rows(lake, "reviews.csv")[:3]
    updated = [[r[0], r[1], "Updated", "1", "Changed my mind."] for r in original]
    invalid = [original[0][0], original[0][1], "Bad", "abc", "?"]
    # Byte for byte the v1 of the update test: its ingest exists already and is staged again.
    write_csv(lake.csv_dir / "reviews_update.csv", REVIEW_COLUMNS, [*updated[1:], invalid])
    tables = refresh_equals_rebuild(lake)
    back = tables["silver/reviews"].filter(pl.col("id") == int(original[1][0]))
    assert back.select("title", "_source_file").rows() == [("Updated", "reviews_update.csv")]


def test_a_failed_ingest_blocks_nothing_after_it(lake: Lake) -> None:
    (lake.csv_dir / "albums_broken.csv").write_text("id,band\n1,2\n", encoding="utf-8")
    before = lake.snapshot()
    start = max(ids(before, "silver/albums")) + 1
    band = min(ids(before, "silver/bands"))
    write_csv(
        lake.csv_dir / "albums_more.csv",
        ["id", "band", "title", "year"],
        [[start, band, "X", 2020]],
    )
    assert run_lake(lake.settings, lake.instance) is False  # the broken file's run failed
    (lake.csv_dir / "albums_broken.csv").unlink()
    tables = refresh_equals_rebuild(lake)
    assert start in ids(tables, "silver/albums")
    key = AssetKey(["staging", "albums"])
    assert not any(
        p.startswith("albums_broken") for p in lake.instance.get_materialized_partitions(key)
    )
