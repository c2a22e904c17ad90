"""Data-quality checks (issue 5): each check on good and on crafted bad data, blocking, the sample.

The `evaluate_*` functions are the checks' logic; they are tested directly on frames built by the
real silver transform. Blocking is tested on the real silver and gold assets and checks over a
temporary directory; the sample is built with `run_lake` on the embedded AWS, checks included.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import polars as pl
import pytest
from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    AssetMaterialization,
    AssetSelection,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    RunsFilter,
    TableMetadataValue,
    build_init_resource_context,
    evaluate_automation_conditions,
    materialize,
)

from deathmetal_lake.assets.bronze import bronze_assets
from deathmetal_lake.assets.gold import gold_assets
from deathmetal_lake.assets.landing import landing_assets
from deathmetal_lake.assets.silver import silver_assets
from deathmetal_lake.assets.staging import staging_assets
from deathmetal_lake.checks import contracts, freshness, gold, lake_checks, reconciliation
from deathmetal_lake.checks import run as checks_run
from deathmetal_lake.checks.evidence import SAMPLE_ROWS
from deathmetal_lake.definitions import build_definitions
from deathmetal_lake.jobs import lake_checks_job
from deathmetal_lake.resources import (
    LakeParquetIOManager,
    LakeTables,
    TableMissing,
    build_resources,
)
from deathmetal_lake.rules import CONTRACTS, RULES, ForeignKey
from deathmetal_lake.settings import AwsMode, LakeSettings
from deathmetal_lake.transforms import gold as gold_transforms
from deathmetal_lake.transforms import joins, merge
from deathmetal_lake.transforms import silver as silver_transforms
from deathmetal_lake_tests.conftest import (
    REPO_ROOT,
    aws_client,
    check_evaluations,
    sample_lake_built,
)

YEAR = 2026
MARTS_BY_NAME = {mart.name: mart for mart in gold_transforms.MARTS}
ERROR, WARN = AssetCheckSeverity.ERROR, AssetCheckSeverity.WARN


# ---------------------------------------------------------------------------------------------
# Crafted data through the real transforms


def bronze_frame(dataset: str, rows: list[dict[str, Any]], ingest: str) -> pl.DataFrame:
    """Bronze as the bronze asset writes it: source columns as text plus provenance."""
    schema = silver_transforms.bronze_schema(dataset)
    columns = {name: [row.get(name) for row in rows] for name in RULES[dataset].source_columns}
    return (
        pl.DataFrame(columns, schema={c: pl.String for c in columns})
        .with_columns(
            pl.lit(f"{ingest.rsplit('-', 1)[0]}.csv").alias("_source_file"),
            pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("_source_row"),
            pl.lit(ingest).alias("_ingest_id"),
            pl.lit(None, pl.String).alias("_parse_error"),
            pl.lit(None, pl.String).alias("_raw"),
        )
        .select(schema.names())
    )


def albums_rows(n: int, bands: int) -> list[dict[str, Any]]:
    return [
        {"id": str(i), "band": str(i % bands + 1), "title": f"A{i}", "year": "1999"}
        for i in range(1, n + 1)
    ]


def bands_rows(n: int) -> list[dict[str, Any]]:
    countries = ["Brazil", "Sweden", "Finland"]
    return [
        {
            "id": str(i),
            "name": f"B{i}",
            "country": countries[i % 3],
            "status": "Active",
            "formed_in": "1990",
            "genre": "Death",
            "theme": "Gore",
            "active": "1990-present",
        }
        for i in range(1, n + 1)
    ]


def reviews_rows(n: int, albums: int) -> list[dict[str, Any]]:
    return [
        {
            "id": str(i),
            "album": str(i % albums + 1),
            "title": f"R{i}",
            "score": str(40 + i % 60),
            "content": "ok",
        }
        for i in range(1, n + 1)
    ]


def build(dataset: str, rows: list[dict[str, Any]]) -> merge.SilverResult:
    ingest = f"{dataset}-000000000001"
    result = merge.build_silver(
        dataset,
        {ingest: bronze_frame(dataset, rows, ingest).lazy()},
        [ingest],
        current_year=YEAR,
        source_files={ingest: f"{dataset}.csv"},
    )
    return result._replace(
        table=result.table.collect().lazy(), quarantine=result.quarantine.collect().lazy()
    )


@pytest.fixture(scope="module")
def good() -> dict[str, pl.LazyFrame]:
    albums, bands = build("albums", albums_rows(40, 20)), build("bands", bands_rows(20))
    reviews = build("reviews", reviews_rows(60, 40))
    catalog = joins.music_catalog(albums.table, bands.table)
    album_reviews = joins.album_reviews(reviews.table, albums.table)
    scores = gold_transforms.band_avg_scores(album_reviews, bands.table)
    return {
        "albums": albums.table,
        "bands": bands.table,
        "reviews": reviews.table,
        "albums_quarantine": albums.quarantine,
        "band_avg_scores": scores.collect().lazy(),
        "top10_by_country": gold_transforms.top10_by_country(scores).collect().lazy(),
        "album_rankings": gold_transforms.album_rankings(reviews.table, catalog).collect().lazy(),
    }


def sample(metadata: Any) -> list[dict[str, Any]]:
    """The failing-row sample of a check result's metadata: the rows of its UI table."""
    table = metadata["failing_rows"]
    assert isinstance(table, TableMetadataValue)
    rows = [record.data for record in table.records]
    assert all(set(row) == {c.name for c in table.schema.columns} for row in rows)
    return rows


def failing(result: Any) -> list[dict[str, Any]]:
    rows = sample(result.metadata)
    assert len(rows) <= SAMPLE_ROWS
    return rows


def meta(result: Any, name: str) -> Any:
    return result.metadata[name].value


def assert_passes(result: Any) -> None:
    assert result.passed, result.metadata
    assert failing(result) == []


def assert_fails(result: Any, severity: AssetCheckSeverity) -> list[dict[str, Any]]:
    assert not result.passed
    assert result.severity == severity
    rows = failing(result)
    assert rows, "a failed check shows the rows that failed"
    return rows


# ---------------------------------------------------------------------------------------------
# Reconciliation


def test_landing_reconciles_source_rows_with_deliveries_and_errors() -> None:
    assert_passes(reconciliation.evaluate_landing("bands-abc", 5, [1, 2, 2, 4, 3], [5]))
    result = reconciliation.evaluate_landing("bands-abc", 5, [1, 2, 7], [5])
    rows = assert_fails(result, ERROR)
    assert {r["_source_row"] for r in rows} == {3, 4, 7}
    assert {r["_ingest_id"] for r in rows} == {"bands-abc"}
    assert {r["_source_file"] for r in rows} == {"bands.csv"}
    assert (meta(result, "missing_rows"), meta(result, "extra_rows")) == (2, 1)
    assert "bands-abc" in result.description
    # 50 missing rows do not crowd the one extra row out of the 10-row sample.
    rows = assert_fails(reconciliation.evaluate_landing("bands-abc", 50, [], [60]), ERROR)
    assert len(rows) == 6 and rows[-1]["_source_row"] == 60


def test_landing_rows_dedupes_copies_and_ignores_other_ingests(tmp_path: Path) -> None:
    bodies = [
        b'{"_ingest_id":"a","_source_row":1,"x":"1"}\n{"_ingest_id":"a","_source_row":2}\n',
        b'{"_ingest_id":"a","_source_row":2}\n{"_ingest_id":"b","_source_row":9,"y":[1]}\n\n',
        b"",
    ]
    for i, body in enumerate(bodies):
        (tmp_path / f"{i}.json").write_bytes(body)
    lines = reconciliation.scan_landing(sorted(str(p) for p in tmp_path.iterdir()), {})
    assert reconciliation.landing_rows(lines, "a").to_list() == [1, 2]
    assert reconciliation.landing_rows(reconciliation.scan_landing([], {}), "a").is_empty()


def test_bronze_equals_distinct_landing_lines() -> None:
    frame = bronze_frame("bands", bands_rows(4), "bands-abc")
    assert_passes(reconciliation.evaluate_bronze("bands-abc", [1, 2, 3, 4], frame))
    doubled = pl.concat([frame, frame.filter(pl.col("_source_row") == 2)])
    result = reconciliation.evaluate_bronze("bands-abc", [1, 2, 3, 4, 5], doubled)
    rows = assert_fails(result, ERROR)
    assert {(r["problem"].split(":")[0], r["_source_row"]) for r in rows} == {
        ("missing", 5),
        ("doubled", 2),
    }


def test_silver_reconciles_latest_bronze_with_silver_plus_quarantine() -> None:
    rows = [*bands_rows(6), {"id": "1", "name": "dup"}, {"id": "x", "name": "bad id"}]
    ingest = "bands-000000000001"
    bronze = bronze_frame("bands", rows, ingest)
    result = merge.build_silver(
        "bands",
        {ingest: bronze.lazy()},
        [ingest],
        current_year=YEAR,
        source_files={ingest: "bands.csv"},
    )
    table, quarantine = result.table.collect(), result.quarantine.collect()
    assert quarantine.height == 2
    assert_passes(reconciliation.evaluate_silver("bands", bronze, table, quarantine))

    lost = table.filter(pl.col("_source_row") != 3)
    doubled = pl.concat([quarantine, quarantine.head(1)])
    result = reconciliation.evaluate_silver("bands", bronze, lost, doubled)
    rows = assert_fails(result, ERROR)
    assert {(r["problem"].split(":")[0], r["_source_row"]) for r in rows} == {
        ("missing", 3),
        ("doubled", quarantine["_source_row"][0]),
    }
    assert ingest in result.description
    current = merge.current_ingests(["a-1", "b-1", "a-2"], reconciliation.source_file_of)
    assert current == ["b-1", "a-2"]


def test_silver_reconciliation_tells_ingests_apart_whose_row_numbers_overlap() -> None:
    """Each ingest's rows get keys of their own (`RowKeys`), also rows outside bronze's range."""

    def provenance(ingest: str, rows: list[int]) -> pl.DataFrame:
        return pl.DataFrame({"_ingest_id": [ingest] * len(rows), "_source_row": rows})

    a, b = "bands-00000000000a", "bands-00000000000b"
    bronze = pl.concat([provenance(a, [1, 2, 3]), provenance(b, [1, 2, 3])])
    assert_passes(
        reconciliation.evaluate_silver(
            "bands", bronze, provenance(a, [1, 2, 3]), provenance(b, [1, 2, 3])
        )
    )
    silver = pl.concat([provenance(a, [1, 2, 3, 7]), provenance(b, [1, 2])])
    result = reconciliation.evaluate_silver("bands", bronze, silver, provenance(b, [2, -1]))
    rows = assert_fails(result, ERROR)
    assert {(r["problem"].split(":")[0], r["_ingest_id"], r["_source_row"]) for r in rows} == {
        ("missing", b, 3),
        ("extra", a, 7),
        ("extra", b, -1),
        ("doubled", b, 2),
    }
    assert (meta(result, "missing_rows"), meta(result, "extra_rows")) == (1, 2)


# ---------------------------------------------------------------------------------------------
# Silver contracts


def test_key_unique_and_not_null(good) -> None:
    assert_passes(contracts.evaluate_key(good["bands"], RULES["bands"]))
    bad = pl.concat(
        [
            good["bands"],
            good["bands"].head(1),
            good["bands"].tail(1).with_columns(pl.lit(None, pl.Int64).alias("id")),
        ]
    )
    result = contracts.evaluate_key(bad, RULES["bands"])
    rows = assert_fails(result, ERROR)
    assert (meta(result, "null_keys"), meta(result, "duplicate_keys")) == (1, 1)
    assert {"_source_file", "_source_row", "_ingest_id", "id"} <= rows[0].keys()
    types = {c.name: c.type for c in result.metadata["failing_rows"].schema.columns}
    assert (types["id"], types["_source_row"], types["problem"]) == ("Int64", "Int64", "String")


def test_required_columns_not_null(good) -> None:
    assert_passes(contracts.evaluate_required(good["albums"], RULES["albums"]))
    bad = good["albums"].with_columns(
        pl.when(pl.col("id") == 3).then(None).otherwise(pl.col("title")).alias("title")
    )
    result = contracts.evaluate_required(bad, RULES["albums"])
    rows = assert_fails(result, ERROR)
    assert [(r["id"], r["null_columns"]) for r in rows] == [(3, "title")]
    assert meta(result, "null_title") == 1


def test_columns_and_types(good) -> None:
    for dataset in RULES:
        assert_passes(contracts.evaluate_schema(good[dataset], dataset))
    bad = good["reviews"].with_columns(pl.col("score").cast(pl.String)).drop("title")
    rows = assert_fails(
        contracts.evaluate_schema(bad.with_columns(pl.lit(1).alias("x")), "reviews"), ERROR
    )
    assert {(r["column"], r["expected"], r["actual"]) for r in rows} == {
        ("score", "Float64", "String"),
        ("title", "String", "None"),
        ("x", "None", "Int32"),
    }


def test_value_rules(good) -> None:
    for dataset in RULES:
        assert_passes(contracts.evaluate_values(good[dataset], RULES[dataset], YEAR))
    bad = good["reviews"].with_columns(
        pl.when(pl.col("id") == 2).then(101.5).otherwise(pl.col("score")).alias("score")
    )
    result = contracts.evaluate_values(bad, RULES["reviews"], YEAR)
    rows = assert_fails(result, ERROR)
    assert [(r["column"], r["value"], r["id"], r["_source_row"]) for r in rows] == [
        ("score", "101.5", 2, 2)
    ]
    assert meta(result, "threshold_range_score") == "0..100"
    bad_year = good["albums"].with_columns(pl.lit(1700, pl.Int64).alias("year"))
    assert (
        meta(contracts.evaluate_values(bad_year, RULES["albums"], YEAR), "out_of_range_year") == 40
    )


def test_known_values_warn(good) -> None:
    assert_passes(contracts.evaluate_known_values(good["bands"], RULES["bands"]))
    bad = good["bands"].with_columns(
        pl.when(pl.col("id") == 4).then(pl.lit("Reunited")).otherwise("status").alias("status")
    )
    rows = assert_fails(contracts.evaluate_known_values(bad, RULES["bands"]), WARN)
    assert [(r["status"], r["id"]) for r in rows] == [("Reunited", 4)]


def test_foreign_key_orphans_warn_under_threshold_and_error_over(good) -> None:
    fk, contract = ForeignKey("band", "bands"), CONTRACTS["albums"]
    assert_passes(contracts.evaluate_foreign_key(good["albums"], good["bands"], fk, contract))
    few = good["bands"].filter(pl.col("id") != 1)  # 2 of 40 albums (5%): at the threshold
    result = contracts.evaluate_foreign_key(good["albums"], few, fk, contract)
    rows = assert_fails(result, WARN)
    assert {r["band"] for r in rows} == {1} and len(rows) == 2
    assert (meta(result, "orphan_rows"), meta(result, "orphan_keys")) == (2, 1)
    assert meta(result, "threshold_orphan_error_rate") == contract.orphan_error_rate
    many = good["bands"].filter(pl.col("id") > 5)
    result = contracts.evaluate_foreign_key(good["albums"], many, fk, contract)
    rows = assert_fails(result, ERROR)
    assert meta(result, "orphan_rows") == 10 and len(rows) == SAMPLE_ROWS
    assert meta(result, "orphan_rate") == 0.25


def test_quarantine_rate_warns_over_threshold(good) -> None:
    contract = CONTRACTS["albums"]
    result = contracts.evaluate_quarantine_rate(good["albums_quarantine"], good["albums"], contract)
    assert_passes(result)
    bad = build(
        "albums",
        [
            *albums_rows(40, 20),
            {"id": "1", "band": "1", "title": "dup"},
            {"id": "41", "band": "1", "year": "1999"},
        ],
    )
    result = contracts.evaluate_quarantine_rate(bad.quarantine, bad.table, contract)
    rows = assert_fails(result, WARN)
    assert meta(result, "quarantine_rows") == 2
    assert meta(result, "reason_duplicate_id") == 1
    assert {r["_reject_reason"].split(":")[0] for r in rows} == {
        "duplicate id",
        "required field missing",
    }


def test_required_column_absent_from_the_table_fails(good) -> None:
    result = contracts.evaluate_required(good["albums"].drop("title"), RULES["albums"])
    assert (result.passed, result.severity) == (False, ERROR)
    assert "title" in result.description and "null_title" not in result.metadata


def test_counts_are_exact_and_samples_do_not_depend_on_row_order(good) -> None:
    """Silver streams in no guaranteed order: the sample is sorted, the counts cover every row."""
    bands = good["bands"].collect()
    bad = pl.concat([bands, bands, bands.head(3).with_columns(pl.lit(None, pl.Int64).alias("id"))])
    shuffled = bad.sample(fraction=1.0, shuffle=True, seed=7)
    results = [contracts.evaluate_key(frame.lazy(), RULES["bands"]) for frame in (bad, shuffled)]
    for result in results:
        assert_fails(result, ERROR)
        counts = [meta(result, c) for c in ("null_keys", "duplicate_keys", "duplicate_key_rows")]
        assert counts == [3, 20, 40]
    assert failing(results[0]) == failing(results[1])
    rows = failing(results[0])  # each kind of problem gets half of the sample
    assert [(r["problem"], r["id"]) for r in rows] == [
        *[("null key", None)] * 3,
        *[("duplicate key", i) for i in (1, 1, 2, 2, 3)],
    ]
    fk, few_bands = ForeignKey("band", "bands"), good["bands"].filter(pl.col("id") > 5)
    albums = good["albums"].collect()
    orphans = [
        contracts.evaluate_foreign_key(frame.lazy(), few_bands, fk, CONTRACTS["albums"])
        for frame in (albums, albums.sample(fraction=1.0, shuffle=True, seed=3))
    ]
    assert failing(orphans[0]) == failing(orphans[1])
    assert [r["band"] for r in failing(orphans[0])] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_contracts_never_read_the_reviews_content(good) -> None:
    """Each check reads the columns it needs: loading `content` here raises, even for samples."""

    def unreadable(frame: pl.LazyFrame) -> pl.LazyFrame:
        def fail(_: pl.Series) -> pl.Series:
            raise AssertionError("content was read")

        return frame.with_columns(pl.col("content").map_batches(fail, return_dtype=pl.String))

    rows = reviews_rows(60, 40)
    rows[1]["score"] = "101"  # quarantined
    reviews = build("reviews", [*rows, {**rows[0], "title": "copy"}])
    bad = unreadable(
        pl.concat([reviews.table, reviews.table.head(1)]).with_columns(
            pl.when(pl.col("id") == 3).then(None).otherwise(pl.col("album")).alias("album"),
            pl.when(pl.col("id") == 4).then(-1.0).otherwise(pl.col("score")).alias("score"),
        )
    )
    albums = good["albums"].filter(pl.col("id") != 6)
    results = [
        contracts.evaluate_key(bad, RULES["reviews"]),
        contracts.evaluate_required(bad, RULES["reviews"]),
        contracts.evaluate_values(bad, RULES["reviews"], YEAR),
        contracts.evaluate_foreign_key(
            bad, albums, RULES["reviews"].foreign_keys[0], CONTRACTS["reviews"]
        ),
        contracts.evaluate_quarantine_rate(
            unreadable(reviews.quarantine), bad, CONTRACTS["reviews"]
        ),
    ]
    assert [failing(r) != [] for r in results] == [True] * len(results)
    assert contracts.evaluate_schema(bad, "reviews").passed


# ---------------------------------------------------------------------------------------------
# Gold sanity


def test_gold_not_empty_when_inputs_are_not(good) -> None:
    assert_passes(gold.evaluate_not_empty(good["album_rankings"], {"reviews": 60}))
    assert_passes(gold.evaluate_not_empty(good["album_rankings"].head(0), {"reviews": 0}))
    rows = assert_fails(
        gold.evaluate_not_empty(good["album_rankings"].head(0), {"reviews": 60, "x": 3}), ERROR
    )
    assert rows == [{"input": "reviews", "rows": 60}, {"input": "x", "rows": 3}]


def test_top10_at_most_ten_per_country(good) -> None:
    rule = MARTS_BY_NAME["top10_by_country"].top_per_group
    assert (rule.group, rule.limit) == ("country", 10)
    assert_passes(gold.evaluate_top_per_group(good["top10_by_country"], rule))
    bad = pl.DataFrame({"country": ["Peru"] * 12, "rank": list(range(1, 13))}).lazy()
    result = gold.evaluate_top_per_group(bad, rule)
    rows = assert_fails(result, ERROR)
    assert [r["rank"] for r in rows] == [11, 12]
    assert meta(result, "max_rows_per_country") == 12


def test_gold_scores_in_range(good) -> None:
    scored = [mart for mart in gold_transforms.MARTS if mart.score_columns]
    assert {mart.name for mart in scored} == {
        "band_avg_scores",
        "top10_by_country",
        "album_rankings",
    }
    for mart in scored:
        assert_passes(gold.evaluate_scores_in_range(good[mart.name], mart.score_columns))
    bad = good["band_avg_scores"].with_columns(
        pl.when(pl.col("band_id") == 2).then(-3.0).otherwise("mean_score").alias("mean_score")
    )
    rows = assert_fails(gold.evaluate_scores_in_range(bad, ("mean_score",)), ERROR)
    assert [(r["column"], r["band_id"], r["mean_score"]) for r in rows] == [("mean_score", 2, -3.0)]


def test_album_rankings_ordered(good) -> None:
    rule = MARTS_BY_NAME["album_rankings"].rank_order
    assert_passes(gold.evaluate_rankings_ordered(good["album_rankings"], rule))
    swapped = good["album_rankings"].collect()
    swapped = pl.concat([swapped[1:2], swapped[0:1], swapped[2:]]).lazy()
    rows = assert_fails(gold.evaluate_rankings_ordered(swapped, rule), ERROR)
    assert [r["position"] for r in rows][:2] == [1, 2]


# ---------------------------------------------------------------------------------------------
# Freshness


def test_follows_upstream() -> None:
    now = time.time()
    assert_passes(freshness.evaluate_follows_upstream(now - 60, {"bronze/x": now - 120}, now))
    # Upstream newer, but within the window: automation is on its way.
    assert_passes(freshness.evaluate_follows_upstream(now - 600, {"bronze/x": now - 60}, now))
    result = freshness.evaluate_follows_upstream(
        now - 7200, {"bronze/x": now - 3600, "bronze/y": None}, now, within_minutes=30
    )
    rows = assert_fails(result, WARN)
    assert [r["upstream"] for r in rows] == ["bronze/x"]
    assert meta(result, "overdue_minutes") == pytest.approx(60, abs=1)


def test_definitions_register_checks_job_and_freshness_policy() -> None:
    defs = build_definitions(LakeSettings())
    graph = defs.resolve_asset_graph()
    check_keys = graph.asset_check_keys
    assert {c for d in lake_checks for c in d.check_keys} == set(check_keys)
    names = {(k.asset_key.to_user_string(), k.name) for k in check_keys}
    assert ("bronze/reviews", "bronze_matches_landing") in names
    assert ("silver/albums", "band_in_bands") in names
    assert ("gold/album_rankings", "ranks_ordered") in names
    for key in graph.get_all_asset_keys():
        policy = graph.get(key).freshness_policy
        assert (policy is not None) == (graph.get(key).group_name in {"silver", "gold"}), key
    for d in lake_checks:
        for spec in d.check_specs:
            partitioned = spec.asset_key.path[0] in {"landing", "bronze"}
            assert (spec.partitions_def is not None) == partitioned, spec.key
    job, lake = defs.resolve_job_def(lake_checks_job.name), {"silver", "gold"}
    job_checks = job.asset_layer.asset_graph.asset_check_keys
    assert job_checks == {k for k in check_keys if graph.get(k.asset_key).group_name in lake}
    assert {k.asset_key.path[0] for k in job_checks} == {"silver", "quarantine", "gold"}


def test_checks_share_steps_and_keep_their_flags() -> None:
    """One step per silver dataset, one per mart another mart reads, one for the other marts,
    one for freshness; each check keeps the name, asset and blocking flag the README lists."""
    steps = [*contracts.contract_checks(), *gold.gold_checks(), *freshness.freshness_checks()]
    step_of = {spec.key: d.node_def.name for d in steps for spec in d.check_specs}
    specs = {spec.key: spec for d in steps for spec in d.check_specs}
    assert set(specs) <= {k for d in lake_checks for k in d.check_keys}
    assert len(steps) == len(RULES) + 3
    by_name: dict[str, set[str]] = {}
    for key, spec in specs.items():
        by_name.setdefault(key.name, set()).add(spec.asset_key.to_user_string())
        if key.name == "follows_upstream":
            assert step_of[key] == "freshness_checks"
            assert not spec.blocking and spec.automation_condition is not None
        elif key.asset_key.path[0] in {"silver", "quarantine"}:
            assert step_of[key] == f"silver_{key.asset_key.path[-1]}_contracts"
        elif key.asset_key == AssetKey(["gold", "band_avg_scores"]):  # top10_by_country reads it
            assert step_of[key] == "gold_band_avg_scores_checks"
        else:
            assert step_of[key] == "gold_checks"
    blocking = {
        "key_unique_not_null": True,
        "required_not_null": True,
        "columns_and_types": True,
        "values_in_range": True,
        "band_in_bands": True,
        "album_in_albums": True,
        "known_values": False,
        "quarantine_rate": False,
        "not_empty_when_inputs_are_not": True,
        "scores_in_range": True,
        "at_most_10_per_country": True,
        "ranks_ordered": True,
        "follows_upstream": False,
    }
    for key, spec in specs.items():
        if key.name in blocking:
            assert spec.blocking == blocking[key.name], key
            assert spec.description, key
    assert by_name["band_in_bands"] == {"silver/albums"}
    assert by_name["album_in_albums"] == {"silver/reviews"}
    assert by_name["known_values"] == {"silver/bands"}
    assert by_name["quarantine_rate"] == {f"quarantine/{d}" for d in RULES}
    assert by_name["key_unique_not_null"] == {f"silver/{d}" for d in RULES}
    scored = {f"gold/{m.name}" for m in gold_transforms.MARTS if m.score_columns}
    assert by_name["scores_in_range"] == scored
    assert len(by_name["follows_upstream"]) == 14
    band_in_bands = specs[AssetCheckKey(AssetKey(["silver", "albums"]), "band_in_bands")]
    assert {d.asset_key for d in band_in_bands.additional_deps} == {AssetKey(["silver", "bands"])}


# ---------------------------------------------------------------------------------------------
# Blocking: real silver and gold assets and checks over a temporary directory


def _evaluations(result: Any) -> dict[tuple[str, str], AssetCheckEvaluation]:
    return {
        (e.asset_key.to_user_string(), e.check_name): e
        for e in result.get_asset_check_evaluations()
    }


def _resources(tmp_path: Path) -> dict[str, Any]:
    """The lake's resources over a temporary directory: the IO manager writes to `lake/`."""
    settings = LakeSettings(
        aws_mode=AwsMode.AWS, bucket="unused", csv_dir=tmp_path, state_dir=tmp_path
    )
    resources = build_resources(settings)
    tables = LakeTables(lake=resources["lake"], base_dir=str(tmp_path / "lake"))
    io_manager = LakeParquetIOManager(tables=tables, base_dir=str(tmp_path / "lake"))
    return {**resources, "io_manager": io_manager, "tables": tables}


def _run_silver_and_gold(tmp_path: Path, bands_kept: int) -> Any:
    """Albums of bands 1..20, bands 1..`bands_kept`: the orphan rate decides the severity."""
    data = {
        "albums": albums_rows(40, 20),
        "bands": bands_rows(bands_kept),
        "reviews": reviews_rows(60, 40),
    }
    instance = DagsterInstance.ephemeral()
    for dataset, rows in data.items():
        ingest = f"{dataset}-000000000001"
        instance.add_dynamic_partitions(f"{dataset}_ingests", [ingest])
        path = tmp_path / "lake" / "bronze" / dataset / f"{ingest}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        bronze_frame(dataset, rows, ingest).write_parquet(path)
        staged = tmp_path / "lake" / "staging" / dataset / f"{ingest}.parquet"
        staged.parent.mkdir(parents=True, exist_ok=True)
        _staged(dataset, rows, ingest).write_parquet(staged)
        _report_ingest(instance, dataset, ingest)
    checks = [
        d
        for d in lake_checks
        if not any(s.asset_key.path[0] in {"landing", "bronze"} for s in d.check_specs)
    ]
    return materialize(
        [*landing_assets, *bronze_assets, *staging_assets, *silver_assets, *gold_assets, *checks],
        selection=[k for a in (*silver_assets, *gold_assets) for k in a.keys],
        instance=instance,
        resources=_resources(tmp_path),
        raise_on_error=False,
    )


def test_blocking_error_on_silver_stops_gold_in_the_same_run(tmp_path: Path) -> None:
    result = _run_silver_and_gold(tmp_path, bands_kept=10)  # half the albums are orphans
    evaluations = _evaluations(result)
    fk = evaluations[("silver/albums", "band_in_bands")]
    assert (fk.passed, fk.severity) == (False, ERROR)
    assert fk.metadata["orphan_rows"].value == 20
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "silver/albums" in materialized  # the checked asset itself stays
    assert "silver/bands" in materialized and "gold/brazilian_bands" in materialized
    blocked = {
        "silver/music_catalog",
        "silver/album_reviews",
        "gold/album_rankings",
        "gold/band_album_counts",
        "gold/band_avg_scores",
        "gold/top10_by_country",
    }
    assert not blocked & materialized
    # Every other check that ran passed: the failure is the orphans, nothing else.
    others = [e for k, e in evaluations.items() if k != ("silver/albums", "band_in_bands")]
    assert all(e.passed for e in others if e.severity == ERROR), [
        k for k, e in evaluations.items() if not e.passed
    ]


def test_warn_on_silver_does_not_block_gold(tmp_path: Path) -> None:
    result = _run_silver_and_gold(tmp_path, bands_kept=19)  # 2 of 40 albums are orphans
    evaluations = _evaluations(result)
    fk = evaluations[("silver/albums", "band_in_bands")]
    assert (fk.passed, fk.severity) == (False, WARN)
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert {"gold/album_rankings", "gold/top10_by_country", "silver/music_catalog"} <= materialized
    assert all(e.passed for e in evaluations.values() if e.severity == ERROR)
    assert evaluations[("silver/albums", "silver_reconciles_with_bronze")].passed
    assert evaluations[("gold/album_rankings", "ranks_ordered")].passed


def test_lake_tables_find_a_file_or_a_folder_of_parts(tmp_path: Path) -> None:
    """A table is `{key}.parquet` or a folder `{key}/` of Parquet parts (the contract's two
    layouts); a table in neither is absent, not an error."""
    tables = _resources(tmp_path)["tables"]
    lake = tmp_path / "lake"
    (lake / "silver").mkdir(parents=True)
    pl.DataFrame({"id": [1, 2, 3]}).write_parquet(lake / "silver" / "bands.parquet")
    parts = lake / "silver" / "reviews"
    (parts / "ingest=a").mkdir(parents=True)
    pl.DataFrame({"id": [1, 2]}).write_parquet(parts / "part-0.parquet")
    pl.DataFrame({"id": [3]}).write_parquet(parts / "ingest=a" / "part-1.parquet")
    (lake / "silver" / "albums").mkdir()  # a folder without parts is no table
    bands, reviews, albums = (AssetKey(["silver", t]) for t in ("bands", "reviews", "albums"))
    assert (tables.rows(bands), tables.rows(reviews)) == (3, 3)
    assert sorted(tables.scan(reviews).select("id").collect()["id"]) == [1, 2, 3]
    for absent in (albums, AssetKey(["gold", "band_avg_scores"])):
        with pytest.raises(TableMissing, match=absent.to_user_string()):
            tables.scan(absent)


def test_a_join_built_as_a_folder_replaces_the_file_an_older_lake_holds(tmp_path: Path) -> None:
    """Joins were single files before they became folders: the first partwise build removes
    the file, which readers would otherwise find first and read stale."""
    lake = tmp_path / "lake"
    for table in ("albums", "bands"):
        (lake / "silver" / table).mkdir(parents=True)
        frame = pl.DataFrame(schema=silver_transforms.silver_schema(table))
        frame.write_parquet(lake / "silver" / table / "ingest-a.parquet")
    stale = lake / "silver" / "music_catalog.parquet"
    pl.DataFrame({"album_id": [1, 2, 3]}).write_parquet(stale)
    resources = _resources(tmp_path)
    key = AssetKey(["silver", "music_catalog"])
    result = materialize(
        [*landing_assets, *bronze_assets, *staging_assets, *silver_assets],
        selection=AssetSelection.assets(key),
        instance=DagsterInstance.ephemeral(),
        resources=resources,
    )
    assert result.success
    assert not stale.exists()
    assert resources["tables"].part_names(key) == {"ingest-a"}
    assert resources["tables"].rows(key) == 0


def test_lake_tables_on_s3_see_tables_written_since_a_listing(embedded_aws) -> None:
    """fsspec caches S3 listings per process: a table written after something in the process
    listed its layer is still found, as a file or as a folder of parts."""
    from upath import UPath

    settings = embedded_aws
    resources = build_resources(settings)
    io_manager, tables = resources["io_manager"], resources["tables"]
    io_manager.setup_for_execution(build_init_resource_context())
    s3, bucket = aws_client(settings, "s3"), settings.bucket

    def put(key: str, rows: int) -> None:
        body = io.BytesIO()
        pl.DataFrame({"id": list(range(rows))}).write_parquet(body)
        s3.put_object(Bucket=bucket, Key=key, Body=body.getvalue())

    put("silver/albums.parquet", 1)
    layer = UPath(io_manager.base_dir, **io_manager.storage_options) / "silver"
    assert [p.name for p in layer.iterdir()] == ["albums.parquet"]  # now cached
    put("silver/bands.parquet", 2)
    put("silver/reviews/part-0.parquet", 3)
    assert (
        tables.rows(AssetKey(["silver", "bands"])),
        tables.rows(AssetKey(["silver", "reviews"])),
    ) == (2, 3)


def test_a_run_of_some_checks_of_a_step_evaluates_only_those(tmp_path: Path) -> None:
    key = AssetCheckKey(AssetKey(["gold", "album_rankings"]), "follows_upstream")
    result = materialize(
        [
            *landing_assets,
            *bronze_assets,
            *staging_assets,
            *silver_assets,
            *gold_assets,
            *freshness.freshness_checks(),
        ],
        selection=AssetSelection.checks(key),
        instance=DagsterInstance.ephemeral(),
        resources=_resources(tmp_path),
    )
    assert [(e.asset_key, e.check_name) for e in result.get_asset_check_evaluations()] == [
        (key.asset_key, key.name)
    ]


# ---------------------------------------------------------------------------------------------
# A fresh lake on the embedded AWS: no check execution fails, however the ingests interleave
# (issue 12). A run fails when a step fails, and Dagster then marks every check of the run that
# had no result EXECUTION_FAILED; a check without a result in a successful run is SKIPPED.

_SILVER_AND_GOLD = AssetSelection.groups("silver", "gold")
_CRAFTED = {"albums": albums_rows(40, 20), "bands": bands_rows(20), "reviews": reviews_rows(60, 40)}


def _staged(dataset: str, rows: list[dict[str, Any]], ingest: str) -> pl.DataFrame:
    """The ingest as the staging asset writes it: typed and checked against the silver rules."""
    bronze = bronze_frame(dataset, rows, ingest).lazy()
    return silver_transforms.stage(dataset, bronze, current_year=YEAR).collect()


def _report_ingest(instance: DagsterInstance, dataset: str, ingest: str) -> None:
    """Bronze and staging of the ingest recorded as their assets record them."""
    for layer in ("bronze", "staging"):
        instance.report_runless_asset_event(
            AssetMaterialization(asset_key=AssetKey([layer, dataset]), partition=ingest)
        )


def _lake_defs(settings: Any) -> Definitions:

    return Definitions(
        assets=[*landing_assets, *bronze_assets, *staging_assets, *silver_assets, *gold_assets],
        asset_checks=lake_checks,
        resources=build_resources(settings),
    )


def _ingest_bronze(
    settings: Any,
    instance: DagsterInstance,
    dataset: str,
    rows: list[dict[str, Any]] | None = None,
    version: int = 1,
) -> None:
    """A bronze ingest of `dataset`.csv (crafted rows by default) on the lake's S3, recorded as
    the bronze asset records it; a later `version` supersedes the earlier ones."""
    ingest = f"{dataset}-{version:012d}"
    instance.add_dynamic_partitions(f"{dataset}_ingests", [ingest])
    rows = _CRAFTED[dataset] if rows is None else rows
    s3 = aws_client(settings, "s3")
    for layer, frame in (
        ("bronze", bronze_frame(dataset, rows, ingest)),
        ("staging", _staged(dataset, rows, ingest)),
    ):
        body = io.BytesIO()
        frame.write_parquet(body)
        s3.put_object(
            Bucket=settings.bucket, Key=f"{layer}/{dataset}/{ingest}.parquet", Body=body.getvalue()
        )
    _report_ingest(instance, dataset, ingest)


def _materialize(defs: Definitions, instance: DagsterInstance, selection: AssetSelection) -> Any:
    return materialize(
        [*defs.assets, *defs.asset_checks],
        selection=selection,
        instance=instance,
        resources=defs.resources,
        raise_on_error=False,
    )


def _check_keys(result: Any) -> set[tuple[str, str]]:
    return {
        (e.asset_key.to_user_string(), e.check_name) for e in result.get_asset_check_evaluations()
    }


def _planned_checks(instance: DagsterInstance, result: Any) -> set[tuple[str, str]]:
    """The checks the run planned, i.e. that Dagster shows as executions of the run."""
    planned = instance.all_logs(
        result.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED
    )
    keys = [e.dagster_event.asset_check_planned_data.asset_check_key for e in planned]
    return {(k.asset_key.to_user_string(), k.name) for k in keys}


def _logged(instance: DagsterInstance, result: Any) -> str:
    return "\n".join(entry.user_message for entry in instance.all_logs(result.run_id))


def test_albums_contracts_before_bands_exist(embedded_aws) -> None:
    """Albums ingested before bands: the albums contracts run; band_in_bands is skipped."""
    settings, instance = embedded_aws, DagsterInstance.ephemeral()
    defs = _lake_defs(settings)
    _ingest_bronze(settings, instance, "albums")
    result = _materialize(
        defs, instance, AssetSelection.assets(["silver", "albums"], ["quarantine", "albums"])
    )
    assert result.success, _logged(instance, result)
    planned, evaluated = _planned_checks(instance, result), _check_keys(result)
    fk = ("silver/albums", "band_in_bands")
    assert fk in planned and planned - evaluated == {fk}
    assert {name for asset, name in evaluated if asset == "silver/albums"} >= {
        "key_unique_not_null",
        "required_not_null",
        "columns_and_types",
        "values_in_range",
        "silver_reconciles_with_bronze",
    }
    assert ("quarantine/albums", "quarantine_rate") in evaluated
    assert all(e.passed for e in result.get_asset_check_evaluations())
    assert "silver/albums:band_in_bands skipped: silver/bands not in the lake yet" in _logged(
        instance, result
    )
    # Once bands exists, the same check finds it (no stale view of the bucket) and passes.
    _ingest_bronze(settings, instance, "bands")
    bands = AssetSelection.assets(["silver", "bands"], ["quarantine", "bands"])
    assert _materialize(defs, instance, bands).success
    fk_key = AssetCheckKey(AssetKey(["silver", "albums"]), "band_in_bands")
    result = _materialize(defs, instance, AssetSelection.checks(fk_key))
    assert _check_keys(result) == {fk} and result.get_asset_check_evaluations()[0].passed


def test_a_gold_subset_checks_only_its_marts(embedded_aws) -> None:
    """Albums and bands, no reviews: the marts that can be built are, and their checks pass."""
    settings, instance = embedded_aws, DagsterInstance.ephemeral()
    defs = _lake_defs(settings)
    for dataset in ("albums", "bands"):
        _ingest_bronze(settings, instance, dataset)
    silver = AssetSelection.assets(
        *(["silver", t] for t in ("albums", "bands", "music_catalog")),
        *(["quarantine", d] for d in ("albums", "bands")),
    )
    assert _materialize(defs, instance, silver).success
    marts = ("brazilian_bands", "band_album_counts", "genre_by_decade")
    result = _materialize(defs, instance, AssetSelection.assets(*(["gold", m] for m in marts)))
    assert result.success, _logged(instance, result)
    evaluated = _check_keys(result)
    assert evaluated == _planned_checks(instance, result)
    assert {k for k in evaluated if k[1] != "follows_upstream"} == {
        ("gold/band_album_counts", "not_empty_when_inputs_are_not"),
        ("gold/genre_by_decade", "not_empty_when_inputs_are_not"),
    }
    assert all(e.passed for e in result.get_asset_check_evaluations())


def _automation_tick(defs: Definitions, instance: DagsterInstance, cursor: Any) -> tuple[Any, Any]:
    """One tick of the lake's automation over silver and gold, and the run it requests.

    The run holds what the tick requested plus the checks that ride along with the requested
    assets, i.e. those without an automation condition of their own (as Dagster's automation
    sensor builds its run requests).
    """
    tick = evaluate_automation_conditions(
        defs, instance, asset_selection=_SILVER_AND_GOLD, cursor=cursor
    )
    requested = [r.key for r in tick.results if r.true_subset.size]
    assets = [k for k in requested if isinstance(k, AssetKey)]
    graph = defs.resolve_asset_graph()
    riding = [
        k
        for k in graph.asset_check_keys
        if k.asset_key in assets and graph.get(k).automation_condition is None
    ]
    checks = {*(k for k in requested if isinstance(k, AssetCheckKey)), *riding}
    if not requested:
        return tick.cursor, None
    selection = AssetSelection.assets(*assets).without_checks() | AssetSelection.checks(*checks)
    return tick.cursor, _materialize(defs, instance, selection)


@pytest.mark.slow
def test_automation_on_a_fresh_lake_never_fails_a_check(embedded_aws) -> None:
    """Albums, then bands, then reviews, each carried by automation: every run succeeds, each
    cross-table check waits for its other table, and in the end every check has passed."""
    settings, instance = embedded_aws, DagsterInstance.ephemeral()
    defs = _lake_defs(settings)
    cursor, run = _automation_tick(defs, instance, None)  # the sensor ticks before any ingest
    assert run is None
    runs = {}
    for dataset in ("albums", "bands", "reviews"):
        _ingest_bronze(settings, instance, dataset)
        cursor, run = _automation_tick(defs, instance, cursor)
        assert run is not None and run.success, _logged(instance, run)
        runs[dataset] = run
    cursor, run = _automation_tick(defs, instance, cursor)
    assert run is None, "the lake settles: nothing left to do"
    # band_in_bands waits for bands rather than running without it, then runs with bands.
    assert ("silver/albums", "band_in_bands") not in _planned_checks(instance, runs["albums"])
    assert ("silver/albums", "band_in_bands") in _check_keys(runs["bands"])
    assert ("silver/reviews", "album_in_albums") in _check_keys(runs["reviews"])
    lake = defs.resolve_asset_graph()
    expected = {
        k
        for k in lake.asset_check_keys
        if k.asset_key.path[0] in {"silver", "quarantine", "gold"} and k.name != "follows_upstream"
    }
    latest = {}
    for run in runs.values():
        for e in run.get_asset_check_evaluations():
            latest[AssetCheckKey(e.asset_key, e.check_name)] = e
    assert set(latest) == expected, expected - set(latest)
    assert all(e.passed for e in latest.values()), [k for k, e in latest.items() if not e.passed]
    materialized = {
        k for k in lake.get_all_asset_keys() if instance.get_latest_materialization_event(k)
    }
    assert {k for k in _SILVER_AND_GOLD.resolve(lake)} <= materialized

    # A check with its own condition still runs, and blocks, in its asset's run: a new albums
    # file whose bands are half unknown stops music_catalog in that same run.
    _ingest_bronze(settings, instance, "albums", albums_rows(40, 40), version=2)
    cursor, run = _automation_tick(defs, instance, cursor)
    fk = _evaluations(run)[("silver/albums", "band_in_bands")]
    assert (fk.passed, fk.severity, fk.metadata["orphan_rows"].value) == (False, ERROR, 20)
    built = {e.asset_key.to_user_string() for e in run.get_asset_materialization_events()}
    assert "silver/albums" in built and "silver/music_catalog" not in built


# ---------------------------------------------------------------------------------------------
# The sample on the embedded AWS, with the checks in every run


@pytest.fixture(scope="module")
def sample_lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with sample_lake_built(tmp_path_factory.mktemp("checks_lake")) as (settings, instance):
        yield SimpleNamespace(settings=settings, instance=instance)


def _instance_evaluations(instance: DagsterInstance) -> list[AssetCheckEvaluation]:
    """The evaluations of the sample's build (`run_lake`), not of later checks-only runs."""
    return [
        event.dagster_event.event_specific_data
        for run in instance.get_runs(RunsFilter(tags={"lake/launched_by": "make run"}))
        for event in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
    ]


@pytest.mark.slow
def test_sample_passes_every_error_check_and_shows_its_orphans_as_warnings(sample_lake) -> None:
    evaluations = _instance_evaluations(sample_lake.instance)
    by_key = {(e.asset_key.to_user_string(), e.check_name): e for e in evaluations}
    errors = [k for k, e in by_key.items() if not e.passed and e.severity == ERROR]
    assert not errors, errors
    for dataset in RULES:
        for key in (
            ("landing", "landing_delivered_every_row"),
            ("bronze", "bronze_matches_landing"),
            ("silver", "silver_reconciles_with_bronze"),
        ):
            assert by_key[(f"{key[0]}/{dataset}", key[1])].passed, (dataset, key)
        landing = by_key[(f"landing/{dataset}", "landing_delivered_every_row")]
        assert landing.partition is not None  # evaluated on the ingest that was materialized
    # The sample's deliberate orphans: WARN results with their rows.
    for table, check, orphans in (
        ("albums", "band_in_bands", 9),
        ("reviews", "album_in_albums", 3),
    ):
        result = by_key[(f"silver/{table}", check)]
        assert (result.passed, result.severity) == (False, WARN)
        assert result.metadata["orphan_rows"].value == orphans
        assert sample(result.metadata)
    # The sample's duplicates and bad rows: quarantine counts, under the WARN threshold.
    for dataset, duplicates in (("albums", 4), ("bands", 4), ("reviews", 2)):
        result = by_key[(f"quarantine/{dataset}", "quarantine_rate")]
        assert result.passed
        assert result.metadata["reason_duplicate_id"].value == duplicates
        assert len(sample(result.metadata)) > 0


@pytest.mark.slow
def test_lake_checks_job_runs_the_checks_alone(sample_lake) -> None:
    settings, instance = sample_lake.settings, sample_lake.instance
    job_defs = build_definitions(settings)
    before = {
        k: instance.get_latest_materialization_event(k)
        for k in job_defs.resolve_asset_graph().get_all_asset_keys()
    }
    result = job_defs.resolve_job_def(lake_checks_job.name).execute_in_process(instance=instance)
    assert result.success
    evaluations = _evaluations(result)
    job = job_defs.resolve_job_def(lake_checks_job.name)
    assert set(evaluations) == {
        (k.asset_key.to_user_string(), k.name) for k in job.asset_layer.asset_graph.asset_check_keys
    }
    assert all(e.passed for e in evaluations.values() if e.severity == ERROR)
    assert all(evaluations[k].passed for k in evaluations if k[1] == "follows_upstream")
    assert not result.get_asset_materialization_events()
    assert before == {k: instance.get_latest_materialization_event(k) for k in before}


@pytest.mark.slow
def test_silver_checks_read_only_changed_parts_and_catch_a_tampered_one(sample_lake) -> None:
    settings, instance = sample_lake.settings, sample_lake.instance
    job = build_definitions(settings).resolve_job_def(lake_checks_job.name)
    reconciles, required = (
        ("silver/bands", "silver_reconciles_with_bronze"),
        (
            "silver/bands",
            "required_not_null",
        ),
    )

    def checked() -> dict[tuple[str, str], AssetCheckEvaluation]:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        return _evaluations(result)

    verified = checked()
    assert verified[reconciles].passed and verified[reconciles].metadata["parts_checked"].value == 0
    assert verified[required].metadata["parts_checked"].value == 0

    s3, bucket = aws_client(settings, "s3"), settings.bucket
    (part,) = [
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="silver/bands/")["Contents"]
    ]
    rows = pl.read_parquet(io.BytesIO(s3.get_object(Bucket=bucket, Key=part)["Body"].read()))
    lost, doubled = rows["_source_row"].sort()[:2].to_list()
    planted = io.BytesIO()
    pl.concat(
        [rows.filter(pl.col("_source_row") != lost), rows.filter(pl.col("_source_row") == doubled)]
    ).write_parquet(planted)
    with _replaced(s3, bucket, part, planted.getvalue()):
        tampered = checked()
    result = tampered[reconciles]
    assert (result.passed, result.metadata["parts_checked"].value) == (False, 1)
    assert {(p, row) for p, row, _, _ in _problems(result)} == {
        ("missing", lost),
        ("doubled", doubled),
    }
    assert tampered[required].metadata["parts_checked"].value == 1

    # Put back, the part is a new object (S3 gives it another ETag): read again, and it passes.
    restored = checked()
    assert restored[reconciles].passed and restored[reconciles].metadata["parts_checked"].value == 1


# ---------------------------------------------------------------------------------------------
# The landing and bronze checks alone, one ingest at a time, on the sample lake's S3


def _ingest(instance: DagsterInstance, dataset: str) -> str:
    (key,) = instance.get_dynamic_partitions(f"{dataset}_ingests")
    return key


def _by_check(result: Any) -> dict[str, AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


@contextmanager
def _replaced(s3: Any, bucket: str, key: str, body: bytes) -> Iterator[None]:
    """The object `key` holds `body` inside the block and its original content again after."""
    original = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    try:
        yield
    finally:
        s3.put_object(Bucket=bucket, Key=key, Body=original)


def _problems(evaluation: AssetCheckEvaluation) -> set[tuple[str, int, str, str]]:
    return {
        (r["problem"].split(":")[0], r["_source_row"], r["_source_file"], r["_ingest_id"])
        for r in sample(evaluation.metadata)
    }


@pytest.mark.slow
def test_ingest_checks_run_alone_and_catch_tampered_landing_and_bronze(sample_lake) -> None:
    settings, instance = sample_lake.settings, sample_lake.instance
    albums, bands = _ingest(instance, "albums"), _ingest(instance, "bands")
    targets = {"albums": [albums], "bands": [bands]}
    for ingest, result in checks_run.run_ingest_checks(settings, instance, targets).items():
        assert result.success
        evaluations = _by_check(result)
        assert set(evaluations) == {"landing_delivered_every_row", "bronze_matches_landing"}
        assert all(e.passed and e.partition == ingest for e in evaluations.values())
        assert not result.get_asset_materialization_events()

    s3, bucket = aws_client(settings, "s3"), settings.bucket
    # bronze of bands: source row 5 lost, source row 7 twice
    bronze_object = f"bronze/bands/{bands}.parquet"
    bronze = pl.read_parquet(
        io.BytesIO(s3.get_object(Bucket=bucket, Key=bronze_object)["Body"].read())
    )
    bad_bronze = io.BytesIO()
    pl.concat(
        [bronze.filter(pl.col("_source_row") != 5), bronze.filter(pl.col("_source_row") == 7)]
    ).write_parquet(bad_bronze)
    # landing of albums: three lines of its largest delivered object gone
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="landing/albums/")["Contents"]
    landing_object = max(listed, key=lambda o: o["Size"])["Key"]
    lines = s3.get_object(Bucket=bucket, Key=landing_object)["Body"].read().splitlines(True)
    dropped = {json.loads(line)["_source_row"] for line in lines[1:4]}
    with (
        _replaced(s3, bucket, bronze_object, bad_bronze.getvalue()),
        _replaced(s3, bucket, landing_object, b"".join(lines[:1] + lines[4:])),
    ):
        results = checks_run.run_ingest_checks(settings, instance, targets)

    checks = _by_check(results[bands])
    assert checks["landing_delivered_every_row"].passed
    bronze_check = checks["bronze_matches_landing"]
    assert (bronze_check.passed, bronze_check.severity, bronze_check.blocking) == (
        False,
        ERROR,
        True,
    )
    assert bronze_check.partition == bands
    assert _problems(bronze_check) == {
        ("missing", 5, "bands.csv", bands),
        ("doubled", 7, "bands.csv", bands),
    }
    checks = _by_check(results[albums])
    landing_check = checks["landing_delivered_every_row"]
    assert (landing_check.passed, landing_check.severity, landing_check.partition) == (
        False,
        ERROR,
        albums,
    )
    assert landing_check.metadata["missing_rows"].value == 3
    assert _problems(landing_check) == {("missing", r, "albums.csv", albums) for r in dropped}
    # Bronze compares with landing's manifest, an input: landing's failed blocking check skips it.
    assert "bronze_matches_landing" not in checks


@pytest.mark.slow
def test_ingest_checks_from_the_command_line(
    sample_lake, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, instance = sample_lake.settings, sample_lake.instance
    env = {
        "LAKE_STATE_DIR": str(settings.state_path),
        "LAKE_EMBEDDED_PORT": str(settings.embedded_port),
        "LAKE_CSV_DIR": str(settings.csv_path),
        "DAGSTER_HOME": str(settings.instance_dir),
    }
    reviews = _ingest(instance, "reviews")
    # The README's command for one ingest: the job, the ingest in the partition tag.
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            *("job", "execute", "-m", "deathmetal_lake.definitions", "-j", "reviews_ingest_checks"),
            *("--tags", json.dumps({"dagster/partition": reviews})),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (run,) = instance.get_runs(RunsFilter(job_name="reviews_ingest_checks"))
    assert run.tags["dagster/partition"] == reviews
    # The instance logs at INFO (dagster.yaml): the results are in the run, as the UI shows them.
    evaluations = {
        (e.asset_key.to_user_string(), e.check_name, e.passed)
        for e in check_evaluations(instance, run.run_id)
    }
    assert evaluations == {
        ("landing/reviews", "landing_delivered_every_row", True),
        ("bronze/reviews", "bronze_matches_landing", True),
    }
    # Every ingest of every dataset, in-process as `python -m deathmetal_lake.checks.run`.
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert checks_run.main([]) == 0
    out = capsys.readouterr().out
    assert out.count(": passed") == 6
    assert all(_ingest(instance, d) in out for d in ("albums", "bands", "reviews"))
