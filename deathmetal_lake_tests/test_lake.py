"""End-to-end: the whole lake over the committed sample on the embedded AWS, no mocks.

One module-scoped lake (its own emulator, Dagster instance and copy of `csv/`) is built once with
`run_lake`, what `make run` does, and the tests read it back layer by layer through S3. The tests
run in file order: the first ones check the lake as the sample built it; the later ones change the
source folder (a new file version, an increment, broken files) and check what that does.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.dataset
import pyarrow.parquet as pq
import pytest
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
)
from polars.testing import assert_frame_equal
from pyarrow.fs import S3FileSystem

from deathmetal_lake.batch import HASHES_KEY, run_lake
from deathmetal_lake.settings import LakeSettings
from deathmetal_lake.transforms.gold import DEFAULT_PRIOR_WEIGHT
from deathmetal_lake_tests.conftest import (
    GOLD_TABLES,
    aws_client,
    check_evaluations,
    sample_lake_built,
)

DATASETS = ("albums", "bands", "reviews")
COLUMNS = {
    "albums": ("id", "band", "title", "year"),
    "bands": ("id", "name", "country", "status", "formed_in", "genre", "theme", "active"),
    "reviews": ("id", "album", "title", "score", "content"),
}
PROVENANCE = ("_source_file", "_source_row", "_ingest_id")
SILVER_TABLES = ("albums", "bands", "reviews", "music_catalog", "album_reviews")
BRAZIL = "Brazil"
TOP_PER_COUNTRY = 10

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------
# The module's lake


@dataclass
class Lake:
    settings: LakeSettings
    instance: DagsterInstance
    s3: Any
    # Sample file name -> its ingest id (partition key), computed here from the file's bytes.
    sample_ingests: dict[str, str] = field(default_factory=dict)

    @property
    def csv_dir(self) -> Path:
        return self.settings.csv_path

    @property
    def bucket(self) -> str:
        return self.settings.bucket


def ingest_id(path: Path) -> str:
    """The contract's partition key: `{file stem}-{first 12 hex of the content's sha256}`."""
    return f"{path.stem}-{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    root = tmp_path_factory.mktemp("lake")
    with sample_lake_built(root) as (settings, instance):
        yield Lake(
            settings=settings,
            instance=instance,
            s3=aws_client(settings, "s3"),
            sample_ingests={
                f"{name}.csv": ingest_id(settings.csv_path / f"{name}.csv") for name in DATASETS
            },
        )


# ---------------------------------------------------------------------------------------------
# Reading the sources and the lake back


def csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and data rows as Python's csv module reads them (RFC 4180, newline='')."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """As the generator writes: QUOTE_MINIMAL, records ending with LF."""
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def list_keys(lake: Lake, prefix: str) -> list[str]:
    keys = []
    for page in lake.s3.get_paginator("list_objects_v2").paginate(
        Bucket=lake.bucket, Prefix=prefix
    ):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


def get_bytes(lake: Lake, key: str) -> bytes:
    return lake.s3.get_object(Bucket=lake.bucket, Key=key)["Body"].read()


def landing_lines(lake: Lake, dataset: str) -> dict[str, list[dict[str, Any]]]:
    """Every landing line of a dataset, by object key: the objects split on LF, as JSON."""
    return {
        key: [json.loads(line) for line in get_bytes(lake, key).split(b"\n") if line]
        for key in list_keys(lake, f"landing/{dataset}/")
    }


def lines_of_ingest(lake: Lake, dataset: str, ingest: str) -> list[dict[str, Any]]:
    return [
        line
        for lines in landing_lines(lake, dataset).values()
        for line in lines
        if line["_ingest_id"] == ingest
    ]


def read_parquet(lake: Lake, key: str) -> pl.DataFrame:
    return pl.read_parquet(io.BytesIO(get_bytes(lake, key)))


# Silver rows carry no order (they stream in bronze order); tests compare them by key.
SILVER_KEYS = {"music_catalog": "album_id", "album_reviews": "review_id"}
# Base tables and quarantines are folders of Parquet parts, one per current ingest (contract);
# the joins are folders too, a part per part of their left-hand table.
FOLDER_TABLES = (
    {f"silver/{d}" for d in DATASETS}
    | {f"quarantine/{d}" for d in DATASETS}
    | {"silver/music_catalog", "silver/album_reviews"}
)


def table_path(table: str) -> str:
    """Where a table lives: `{layer}/{name}/` for a folder table, else `{layer}/{name}.parquet`."""
    return f"{table}/" if table in FOLDER_TABLES else f"{table}.parquet"


def read_table(lake: Lake, table: str) -> pl.DataFrame:
    if table not in FOLDER_TABLES:
        return read_parquet(lake, f"{table}.parquet")
    parts = [read_parquet(lake, key) for key in list_keys(lake, f"{table}/")]
    assert parts, f"{table}/ has no parts"
    assert all(part.schema == parts[0].schema for part in parts), f"{table}: parts differ"
    return pl.concat(parts)


def silver(lake: Lake, table: str) -> pl.DataFrame:
    return read_table(lake, f"silver/{table}").sort(SILVER_KEYS.get(table, "id"))


def quarantine(lake: Lake, dataset: str) -> pl.DataFrame:
    return read_table(lake, f"quarantine/{dataset}").sort("_ingest_id", "_source_row")


def gold(lake: Lake, table: str) -> pl.DataFrame:
    return read_parquet(lake, f"gold/{table}.parquet")


def bronze(lake: Lake, dataset: str, ingest: str) -> pl.DataFrame:
    return read_parquet(lake, f"bronze/{dataset}/{ingest}.parquet")


def partitions(lake: Lake, dataset: str) -> list[str]:
    return lake.instance.get_dynamic_partitions(f"{dataset}_ingests")


def latest_ingests(lake: Lake, dataset: str) -> dict[str, str]:
    """Source file name -> its latest staged ingest (the last one staged of each file)."""
    records = lake.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(["staging", dataset])), limit=10_000, ascending=True
    ).records
    return {f"{r.partition_key.rsplit('-', 1)[0]}.csv": r.partition_key for r in records}


def snapshot(lake: Lake) -> dict[str, pl.DataFrame]:
    tables = {f"silver/{t}": silver(lake, t) for t in SILVER_TABLES}
    tables |= {f"quarantine/{d}": quarantine(lake, d) for d in DATASETS}
    tables |= {f"gold/{t}": gold(lake, t) for t in GOLD_TABLES}
    return tables


def kinesis_data(lake: Lake, dataset: str) -> list[bytes]:
    """Every record still in the dataset's stream, from the trim horizon of every shard."""
    kinesis = aws_client(lake.settings, "kinesis")
    stream = f"{dataset}-stream"
    data = []
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            response = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            if not response["Records"]:
                break
            data += [record["Data"] for record in response["Records"]]
            iterator = response.get("NextShardIterator")
    return data


# ---------------------------------------------------------------------------------------------
# Shared assertions


def assert_landing_matches_source(lake: Lake, dataset: str, path: Path, ingest: str) -> None:
    """Landing holds each data row of the file exactly once, every value as in the file."""
    header, rows = csv_rows(path)
    assert tuple(header) == COLUMNS[dataset]
    lines = lines_of_ingest(lake, dataset, ingest)
    counts = Counter(line["_source_row"] for line in lines)
    assert len(lines) == len(rows), f"{path.name}: {len(lines)} landing lines, {len(rows)} rows"
    assert set(counts) == set(range(1, len(rows) + 1))
    assert set(counts.values()) == {1}, "a source row landed more than once"
    by_row = {line["_source_row"]: line for line in lines}
    for number, row in enumerate(rows, start=1):
        line = by_row[number]
        assert set(line) == {*header, *PROVENANCE}, f"row {number}: {sorted(line)}"
        assert line["_source_file"] == path.name
        assert line["_ingest_id"] == ingest
        for column, value in zip(header, row, strict=True):
            assert line[column].encode() == value.encode(), f"row {number} {column}"


def assert_invariant(lake: Lake, dataset: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Latest bronze of every file = silver + quarantine, row for row; silver ids unique."""
    latest = latest_ingests(lake, dataset)
    bronze_rows = pl.concat(
        [bronze(lake, dataset, key).select(PROVENANCE) for key in latest.values()]
    )
    table, rejected = silver(lake, dataset), quarantine(lake, dataset)
    assert bronze_rows.height == table.height + rejected.height, dataset
    assert table["id"].is_unique().all(), f"{dataset}: silver ids are not unique"
    assert table["id"].null_count() == 0
    assert rejected["_reject_reason"].null_count() == 0
    # Not just the counts: every bronze row is in exactly one of the two.
    accounted = pl.concat([table.select(PROVENANCE), rejected.select(PROVENANCE)])
    assert_frame_equal(accounted.sort(PROVENANCE), bronze_rows.sort(PROVENANCE))
    assert set(table["_ingest_id"]) <= set(latest.values())
    return table, rejected


def expected_gold(lake: Lake) -> dict[str, pl.DataFrame]:
    """Every gold table computed here from the silver base tables the lake wrote."""
    albums, bands, reviews = silver(lake, "albums"), silver(lake, "bands"), silver(lake, "reviews")
    band_names = bands.select(
        pl.col("id").alias("band_id"), pl.col("name").alias("band_name"), "country"
    )

    band_album_counts = (
        bands.select(pl.col("id").alias("band_id"), pl.col("name").alias("band_name"))
        .join(
            albums.group_by(pl.col("band").alias("band_id")).agg(
                pl.len().cast(pl.Int64).alias("album_count")
            ),
            on="band_id",
            how="left",
        )
        .with_columns(pl.col("album_count").fill_null(0))
    )

    # Reviews of known albums, by the album's band (which may itself be unknown).
    by_band = reviews.join(
        albums.select(pl.col("id").alias("album"), pl.col("band").alias("band_id")),
        on="album",
        how="inner",
    )
    band_avg_scores = (
        by_band.group_by("band_id")
        .agg(
            pl.len().cast(pl.Int64).alias("review_count"),
            pl.col("score").mean().alias("mean_score"),
            pl.col("score").min().alias("min_score"),
            pl.col("score").max().alias("max_score"),
            pl.col("score").std(ddof=1).alias("std_score"),
        )
        .join(band_names, on="band_id", how="left")
        .select(
            "band_id",
            "band_name",
            "country",
            "review_count",
            "mean_score",
            "min_score",
            "max_score",
            "std_score",
        )
    )

    top_rows = []
    for (country,), group in band_avg_scores.filter(pl.col("country").is_not_null()).group_by(
        "country"
    ):
        ordered = sorted(
            group.iter_rows(named=True),
            key=lambda r: (-r["mean_score"], -r["review_count"], r["band_id"]),
        )
        for rank, row in enumerate(ordered[:TOP_PER_COUNTRY], start=1):
            top_rows.append(
                {
                    "country": country,
                    "rank": rank,
                    "band_id": row["band_id"],
                    "band_name": row["band_name"],
                    "mean_score": row["mean_score"],
                    "review_count": row["review_count"],
                }
            )
    top10_by_country = pl.DataFrame(
        top_rows,
        schema={
            "country": pl.String,
            "rank": pl.Int64,
            "band_id": pl.Int64,
            "band_name": pl.String,
            "mean_score": pl.Float64,
            "review_count": pl.Int64,
        },
    )

    brazilian_bands = bands.filter(pl.col("country") == BRAZIL).select(
        pl.col("id").alias("band_id"),
        pl.col("name").alias("band_name"),
        "status",
        "formed_in",
        "genre",
        "theme",
        "active_start_year",
        "active_end_year",
        "is_active",
    )

    # Bayesian average: m = DEFAULT_PRIOR_WEIGHT, C = mean of every (silver) review score.
    m = DEFAULT_PRIOR_WEIGHT
    c = reviews["score"].mean()
    per_album = reviews.group_by(pl.col("album").alias("album_id")).agg(
        pl.len().cast(pl.Int64).alias("review_count"), pl.col("score").mean().alias("mean_score")
    )
    v, r = pl.col("review_count"), pl.col("mean_score")
    album_rankings = (
        per_album.with_columns(((v / (v + m)) * r + (m / (v + m)) * c).alias("weighted_score"))
        .join(
            albums.select(
                pl.col("id").alias("album_id"),
                pl.col("title").alias("album_title"),
                "year",
                pl.col("band").alias("band_id"),
            ),
            on="album_id",
            how="inner",
        )
        .join(band_names.drop("country"), on="band_id", how="left")
        .sort("weighted_score", "review_count", "album_id", descending=[True, True, False])
        .with_row_index("rank", offset=1)
        .select(
            pl.col("rank").cast(pl.Int64),
            "album_id",
            "album_title",
            "band_id",
            "band_name",
            "year",
            "review_count",
            "mean_score",
            "weighted_score",
        )
    )

    genre_by_decade = (
        albums.filter(pl.col("year").is_not_null())
        .join(bands.select(pl.col("id").alias("band"), "genre"), on="band", how="inner")
        .explode("genre", empty_as_null=True)
        .filter(pl.col("genre").is_not_null())
        .group_by("genre", ((pl.col("year") // 10) * 10).alias("decade"))
        .agg(pl.col("id").n_unique().cast(pl.Int64).alias("album_count"))
    )

    return {
        "band_album_counts": band_album_counts,
        "band_avg_scores": band_avg_scores,
        "top10_by_country": top10_by_country,
        "brazilian_bands": brazilian_bands,
        "album_rankings": album_rankings,
        "genre_by_decade": genre_by_decade,
    }


# Columns each gold table is compared (and sorted) on.
GOLD_SORT = {
    "band_album_counts": ["band_id"],
    "band_avg_scores": ["band_id"],
    "top10_by_country": ["country", "rank"],
    "brazilian_bands": ["band_id"],
    "album_rankings": ["rank"],
    "genre_by_decade": ["genre", "decade"],
}


def assert_gold_matches_silver(lake: Lake) -> None:
    expected = expected_gold(lake)
    assert set(expected) == set(GOLD_TABLES)
    for table, frame in expected.items():
        actual = gold(lake, table)
        assert actual.height > 0, table
        keys = GOLD_SORT[table]
        try:
            assert_frame_equal(
                actual.sort(keys),
                frame.select(actual.columns).sort(keys),
                check_exact=False,
                rel_tol=1e-9,
                abs_tol=1e-9,
            )
        except AssertionError as error:
            raise AssertionError(f"gold/{table}: {error}") from error
    counts = gold(lake, "band_album_counts")
    assert counts.equals(counts.sort("album_count", "band_id", descending=[True, False]))
    assert counts.filter(pl.col("album_count") == 0).height > 0, "bands without albums count 0"
    top10 = gold(lake, "top10_by_country")
    assert top10.group_by("country").len()["len"].max() <= TOP_PER_COUNTRY
    assert top10.group_by("country").len()["len"].max() == TOP_PER_COUNTRY, "never full"
    rankings = gold(lake, "album_rankings")
    assert rankings["rank"].to_list() == list(range(1, rankings.height + 1))
    assert rankings["weighted_score"].is_sorted(descending=True)
    brazil = gold(lake, "brazilian_bands")
    assert brazil.height > 0


# ---------------------------------------------------------------------------------------------
# 1. The first run


def test_run_lake_builds_the_whole_lake_from_the_sample(lake: Lake) -> None:
    for dataset in DATASETS:
        key = lake.sample_ingests[f"{dataset}.csv"]
        assert partitions(lake, dataset) == [key]
        assert lake.instance.get_materialized_partitions(AssetKey(["bronze", dataset])) == {key}
    for table in SILVER_TABLES:
        assert lake.instance.get_latest_materialization_event(AssetKey(["silver", table]))
    for table in GOLD_TABLES:
        assert lake.instance.get_latest_materialization_event(AssetKey(["gold", table]))
    runs = lake.instance.get_runs()
    assert runs and all(run.status == DagsterRunStatus.SUCCESS for run in runs)
    # A run per ingest, and no run of its own for silver and gold: the last ingest's carries them.
    assert len(runs) == len(DATASETS)


# ---------------------------------------------------------------------------------------------
# 2. Landing: every source row exactly once, byte for byte


def test_sample_has_the_values_that_break_naive_csv_handling(lake: Lake) -> None:
    """Otherwise the landing test below would prove nothing about them."""
    values = [
        value
        for dataset in DATASETS
        for row in csv_rows(lake.csv_dir / f"{dataset}.csv")[1]
        for value in row
    ]
    assert any("," in v for v in values), "no quoted comma"
    assert any('"' in v for v in values), "no quote"
    assert any("\r\n" in v for v in values), "no embedded CRLF"
    assert any("\n" in v.replace("\r\n", "") for v in values), "no embedded bare LF"
    assert any(not v.isascii() for v in values), "no non-ASCII text"
    raw = (lake.csv_dir / "reviews.csv").read_bytes()
    assert b'""' in raw and b"\r\n" in raw, "quotes are not doubled / CRLF is not raw in the file"


@pytest.mark.parametrize("dataset", DATASETS)
def test_landing_equals_the_source_rows(lake: Lake, dataset: str) -> None:
    path = lake.csv_dir / f"{dataset}.csv"
    assert_landing_matches_source(lake, dataset, path, lake.sample_ingests[path.name])
    for key in list_keys(lake, f"landing/{dataset}/"):
        assert key.startswith(f"landing/{dataset}/20"), key
        assert key.split("/")[-1].startswith(f"{dataset}-firehose-"), key


@pytest.mark.parametrize("dataset", DATASETS)
def test_landing_materialization_metadata(lake: Lake, dataset: str) -> None:
    key = lake.sample_ingests[f"{dataset}.csv"]
    records = lake.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(["landing", dataset]), asset_partitions=[key]),
        limit=10,
    ).records
    assert len(records) == 1
    metadata = {
        name: value.value for name, value in records[0].asset_materialization.metadata.items()
    }
    rows = len(csv_rows(lake.csv_dir / f"{dataset}.csv")[1])
    assert {"rows", "records", "put_records_calls", "mb_per_second"} <= set(metadata)
    assert metadata["rows"] == rows
    assert 1 <= metadata["records"] <= rows
    assert 1 <= metadata["put_records_calls"] <= metadata["records"]
    assert metadata["mb_per_second"] > 0
    # What bronze and the checks read: the landing manifest the run wrote.
    manifest = json.loads(get_bytes(lake, f"manifests/landing/{dataset}/{key}.json"))
    assert manifest["ingest_id"] == key and manifest["source_rows"] == rows
    delivered = manifest["objects"]
    assert sum(delivered.values()) == rows
    holding = {
        k
        for k, lines in landing_lines(lake, dataset).items()
        if lines and any(line["_ingest_id"] == key for line in lines)
    }
    assert set(delivered) == holding


# ---------------------------------------------------------------------------------------------
# 3. Bronze: the distinct landing lines of the ingest, as text, with provenance


@pytest.mark.parametrize("dataset", DATASETS)
def test_bronze_partition_is_the_distinct_landing_lines(lake: Lake, dataset: str) -> None:
    key = lake.sample_ingests[f"{dataset}.csv"]
    table = bronze(lake, dataset, key)
    for column in COLUMNS[dataset]:
        assert table.schema[column] == pl.String, column
    assert table.schema["_source_file"] == pl.String
    assert table.schema["_ingest_id"] == pl.String
    assert table.schema["_source_row"].is_integer()
    lines = lines_of_ingest(lake, dataset, key)
    distinct = {line["_source_row"]: line for line in lines}
    numbers = sorted(distinct)  # a Firehose copy of a line would count once here
    expected = pl.DataFrame(
        {c: [distinct[n][c] for n in numbers] for c in (*COLUMNS[dataset], *PROVENANCE)},
        schema_overrides={"_source_row": table.schema["_source_row"]},
    )
    assert table.height == len(numbers)
    assert_frame_equal(table.select(expected.columns).sort("_source_row"), expected)
    # The sample is well-formed: nothing went to the parse-error columns.
    extra = [c for c in table.columns if c not in expected.columns]
    assert set(extra) <= {"_parse_error", "_raw"}
    for column in extra:
        assert table[column].null_count() == table.height, column


# ---------------------------------------------------------------------------------------------
# 4. The invariant, and the sample's planted duplicates and rule-breakers in quarantine


def planted_rejects(dataset: str, rows: list[list[str]]) -> dict[int, str]:
    """Source row -> reason prefix the generator's deliberate oddities must get (its docstring).

    Rule-breakers (`_INVALID`): bands name "" / formed_in 1850; albums year 1850 / "unknown" /
    title ""; reviews score 105 / -3 / "". Exact duplicate rows: the earlier copy loses.
    """
    columns = COLUMNS[dataset]
    reasons: dict[int, str] = {}
    for number, values in enumerate(rows, start=1):
        row = dict(zip(columns, values, strict=True))
        if dataset == "bands":
            if row["name"] == "":
                reasons[number] = "required field missing: name"
            elif row["formed_in"] == "1850":
                reasons[number] = "invalid year: formed_in='1850'"
        elif dataset == "albums":
            if row["title"] == "":
                reasons[number] = "required field missing: title"
            elif row["year"] in ("1850", "unknown"):
                reasons[number] = f"invalid year: year='{row['year']}'"
        elif row["score"] == "":
            reasons[number] = "required field missing: score"
        elif row["score"] in ("105", "-3"):
            reasons[number] = f"invalid score: score='{row['score']}'"
    last_valid: dict[str, int] = {}
    for number, values in enumerate(rows, start=1):
        if number not in reasons:
            last_valid[values[0]] = number
    for number, values in enumerate(rows, start=1):
        if number not in reasons and last_valid[values[0]] != number:
            reasons[number] = (
                f"duplicate id: superseded by {dataset}.csv row {last_valid[values[0]]}"
            )
    return reasons


@pytest.mark.parametrize("dataset", DATASETS)
def test_invariant_and_quarantine_of_the_sample(lake: Lake, dataset: str) -> None:
    table, rejected = assert_invariant(lake, dataset)
    rows = csv_rows(lake.csv_dir / f"{dataset}.csv")[1]
    planted = planted_rejects(dataset, rows)
    kinds = {reason.split(":")[0] for reason in planted.values()}
    assert "duplicate id" in kinds, f"{dataset}: the sample plants no duplicate"
    assert kinds - {"duplicate id"}, f"{dataset}: the sample plants no rule-breaker"
    found = dict(zip(rejected["_source_row"], rejected["_reject_reason"], strict=True))
    assert set(found) == set(planted), f"{dataset}: quarantined rows {sorted(found)}"
    for number, prefix in planted.items():
        assert found[number].startswith(prefix), (number, found[number], prefix)
    # Quarantine keeps every bronze column, as text.
    for column in COLUMNS[dataset]:
        assert rejected.schema[column] == pl.String
    # Silver holds every other source row, one per id.
    assert table.height == len(rows) - len(planted)
    assert set(table["id"].cast(pl.String)) == {
        values[0] for number, values in enumerate(rows, 1) if number not in planted
    }


# ---------------------------------------------------------------------------------------------
# 5. Gold = an independent computation over silver


def test_joins_keep_every_row_of_their_left_table(lake: Lake) -> None:
    catalog, album_reviews = silver(lake, "music_catalog"), silver(lake, "album_reviews")
    assert catalog.height == silver(lake, "albums").height
    assert catalog["album_id"].is_unique().all()
    assert album_reviews.height == silver(lake, "reviews").height
    assert album_reviews["review_id"].is_unique().all()


def test_gold_matches_an_independent_computation(lake: Lake) -> None:
    assert_gold_matches_silver(lake)


# ---------------------------------------------------------------------------------------------
# 6. An independent reader: pyarrow's own S3 client at the contract's paths


def test_pyarrow_reads_every_table_at_the_contract_path(lake: Lake) -> None:
    fs = S3FileSystem(
        endpoint_override=lake.settings.aws_endpoint.removeprefix("http://"),
        scheme="http",
        access_key="test",
        secret_key="test",
        region="us-east-1",
    )
    # pyarrow reads a folder table's parts as one dataset, as the contract promises.
    paths = {table_path(f"silver/{t}"): silver(lake, t).height for t in SILVER_TABLES}
    paths |= {table_path(f"quarantine/{d}"): quarantine(lake, d).height for d in DATASETS}
    paths |= {f"gold/{t}.parquet": gold(lake, t).height for t in GOLD_TABLES}
    bronze_paths = {
        f"bronze/{d}/{lake.sample_ingests[f'{d}.csv']}.parquet": len(
            csv_rows(lake.csv_dir / f"{d}.csv")[1]
        )
        for d in DATASETS
    }
    for path, rows in {**paths, **bronze_paths}.items():
        assert pq.read_table(f"{lake.bucket}/{path}", filesystem=fs).num_rows == rows, path
    for path in bronze_paths:
        with fs.open_input_file(f"{lake.bucket}/{path}") as f:
            metadata = pq.ParquetFile(f).metadata
        codecs = {
            metadata.row_group(g).column(c).compression
            for g in range(metadata.num_row_groups)
            for c in range(metadata.num_columns)
        }
        assert codecs == {"SNAPPY"}, f"{path}: {codecs}"


# ---------------------------------------------------------------------------------------------
# Using the lake: the query command, what each table shows in the UI, the catalog's schemas

GOLD_PREVIEW_QUERY = """
query GoldAsset($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    __typename
    ... on Asset {
      definition { groupName }
      assetMaterializations(limit: 1) {
        metadataEntries {
          __typename
          label
          ... on IntMetadataEntry { intValue }
          ... on PathMetadataEntry { path }
          ... on TableMetadataEntry { table { records schema { columns { name } } } }
        }
      }
    }
  }
}
"""


def pyarrow_fs(lake: Lake) -> S3FileSystem:
    return S3FileSystem(
        endpoint_override=lake.settings.aws_endpoint.removeprefix("http://"),
        scheme="http",
        access_key="test",
        secret_key="test",
        region="us-east-1",
    )


def pyarrow_rows(lake: Lake, table: str) -> list[dict[str, Any]]:
    """A table's rows read by pyarrow at its contract path, as Python dicts (no Polars)."""
    return pq.read_table(
        f"{lake.bucket}/{table_path(table)}", filesystem=pyarrow_fs(lake)
    ).to_pylist()


def query_env(lake: Lake, env: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment a user of this lake sets, so the command's `load_settings()` finds it."""
    values = {
        "LAKE_AWS_MODE": "embedded",
        "LAKE_EMBEDDED_PORT": str(lake.settings.embedded_port),
        "LAKE_STATE_DIR": lake.settings.state_dir,
        "LAKE_BUCKET": lake.bucket,
    }
    for name, value in values.items():
        env.setenv(name, value)
    return values


def run_query_command(
    lake: Lake, env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """`python -m deathmetal_lake.query ARGS` in this process: exit code, stdout, stderr."""
    from deathmetal_lake.query import main

    query_env(lake, env)
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def query_json(lake: Lake, env: pytest.MonkeyPatch, capsys: Any, sql: str) -> list[dict]:
    code, out, err = run_query_command(lake, env, capsys, sql, "--format", "json")
    assert code == 0, err
    return json.loads(out)


def test_query_answers_match_an_independent_reader(
    lake: Lake, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bands, albums = pyarrow_rows(lake, "silver/bands"), pyarrow_rows(lake, "silver/albums")
    reviews = pyarrow_rows(lake, "silver/reviews")
    # Counts, of a folder table, a quarantine and a file table.
    for table, rows in (
        ("silver.reviews", reviews),
        ("quarantine.albums", pyarrow_rows(lake, "quarantine/albums")),
        ("gold.top10_by_country", pyarrow_rows(lake, "gold/top10_by_country")),
    ):
        assert query_json(lake, monkeypatch, capsys, f"SELECT count(*) AS n FROM {table}") == [
            {"n": len(rows)}
        ], table
    # An aggregate.
    per_country: dict[str, list[int]] = {}
    for band in bands:
        per_country.setdefault(band["country"], []).append(band["formed_in"])
    answer = query_json(
        lake,
        monkeypatch,
        capsys,
        "SELECT country, count(*) AS bands, max(formed_in) AS latest FROM silver.bands "
        "GROUP BY country",
    )
    assert {row["country"]: (row["bands"], row["latest"]) for row in answer} == {
        country: (len(years), max((y for y in years if y is not None), default=None))
        for country, years in per_country.items()
    }
    assert len(answer) == len(per_country)
    # A join across two folder tables, with a filter.
    album_ids = {album["id"] for album in albums}
    expected = Counter(r["album"] for r in reviews if r["album"] in album_ids and r["score"] >= 90)
    answer = query_json(
        lake,
        monkeypatch,
        capsys,
        "SELECT r.album, count(*) AS reviews FROM silver.reviews r "
        "JOIN silver.albums a ON r.album = a.id WHERE r.score >= 90 GROUP BY r.album",
    )
    assert {row["album"]: row["reviews"] for row in answer} == dict(expected)
    assert expected, "the sample has albums with a review of 90 or more"
    # The other formats: CSV has a header and every row.
    code, out, _ = run_query_command(
        lake, monkeypatch, capsys, "SELECT * FROM gold.top10_by_country", "--format", "csv"
    )
    lines = out.splitlines()
    assert code == 0 and len(lines) == len(pyarrow_rows(lake, "gold/top10_by_country")) + 1
    assert lines[0].split(",") == list(gold(lake, "top10_by_country").columns)
    code, out, _ = run_query_command(
        lake, monkeypatch, capsys, "SELECT 1 AS one FROM gold.brazilian_bands LIMIT 1"
    )
    assert code == 0 and "one" in out


def test_query_errors_name_the_problem_and_list_the_tables(
    lake: Lake, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = ", ".join(
        sorted(
            [f"silver.{t}" for t in SILVER_TABLES]
            + [f"quarantine.{d}" for d in DATASETS]
            + [f"gold.{t}" for t in GOLD_TABLES]
        )
    )
    for sql, problem in (
        ("SELECT * FROM gold.top_bands", "unknown table gold.top_bands"),
        ("SELECT * FROM reviews", "unknown table"),
        ("SELEC * FROM silver.reviews", "bad SQL"),
        ("SELECT no_such_column FROM silver.reviews", "bad SQL"),
    ):
        code, out, err = run_query_command(lake, monkeypatch, capsys, sql)
        assert (code, out) == (1, ""), sql
        assert problem in err and err.rstrip().endswith(f"tables: {listing}"), (sql, err)
    with pytest.raises(SystemExit) as exit_:
        run_query_command(lake, monkeypatch, capsys, "--help")
    assert exit_.value.code == 0 and "silver.reviews" in capsys.readouterr().out


def test_query_command_runs_as_a_module(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh process with only the user's environment (one: Dagster's import is 2-3 s)."""
    env = {**os.environ, **query_env(lake, monkeypatch)}
    command = [sys.executable, "-m", "deathmetal_lake.query"]
    done = subprocess.run(
        [*command, "SELECT count(*) AS n FROM gold.band_avg_scores", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"n": gold(lake, "band_avg_scores").height}]


def latest_metadata(lake: Lake, key: AssetKey) -> dict[str, Any]:
    event = lake.instance.get_latest_materialization_event(key)
    assert event is not None and event.asset_materialization is not None, key
    return dict(event.asset_materialization.metadata)


def test_readme_readers_see_the_same_tables(lake: Lake) -> None:
    """The README's Polars and pyarrow snippets: a folder table is every `*.parquet` in it."""
    storage = {
        "aws_endpoint_url": lake.settings.aws_endpoint,
        "aws_allow_http": "true",
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
        "aws_region": "us-east-1",
    }
    reviews = pl.scan_parquet(
        f"s3://{lake.bucket}/silver/reviews/*.parquet", storage_options=storage
    )
    albums = pl.scan_parquet(f"s3://{lake.bucket}/silver/albums/*.parquet", storage_options=storage)
    joined = reviews.join(albums, left_on="album", right_on="id").select(pl.len()).collect().item()
    album_ids = {album["id"] for album in pyarrow_rows(lake, "silver/albums")}
    assert joined == sum(r["album"] in album_ids for r in pyarrow_rows(lake, "silver/reviews"))
    top10 = pyarrow.dataset.dataset(
        f"{lake.bucket}/gold/top10_by_country.parquet", filesystem=pyarrow_fs(lake)
    ).to_table()
    assert top10.num_rows == gold(lake, "top10_by_country").height


def test_every_table_reports_row_count_uri_and_preview(lake: Lake) -> None:
    tables = [f"silver/{t}" for t in SILVER_TABLES] + [f"quarantine/{d}" for d in DATASETS]
    tables += [f"gold/{t}" for t in GOLD_TABLES]
    for table in tables:
        metadata = latest_metadata(lake, AssetKey(table.split("/")))
        rows = pyarrow_rows(lake, table)
        assert metadata["dagster/row_count"].value == len(rows), table
        assert metadata["dagster/uri"].value == f"s3://{lake.bucket}/{table_path(table)}", table
        preview = metadata["preview"].value
        assert [c.name for c in preview.schema.columns] == list(rows[0]), table
        assert 1 <= len(preview.records) <= 5, table
    for dataset in DATASETS:
        ingest = lake.sample_ingests[f"{dataset}.csv"]
        for layer in ("bronze", "staging"):
            event = (
                lake.instance.fetch_materializations(
                    AssetRecordsFilter(
                        asset_key=AssetKey([layer, dataset]), asset_partitions=[ingest]
                    ),
                    limit=1,
                )
                .records[0]
                .event_log_entry.asset_materialization
            )
            path = f"s3://{lake.bucket}/{layer}/{dataset}/{ingest}.parquet"
            assert event.metadata["dagster/uri"].value == path
            rows = pq.read_metadata(
                path.removeprefix("s3://"), filesystem=pyarrow_fs(lake)
            ).num_rows
            assert event.metadata["dagster/partition_row_count"].value == rows
            assert "preview" in event.metadata


def test_quarantine_reports_a_number_per_reason(lake: Lake) -> None:
    from deathmetal_lake.rules import RejectReason

    for dataset in DATASETS:
        metadata = latest_metadata(lake, AssetKey(["quarantine", dataset]))
        counted = Counter(
            r["_reject_reason"].split(":")[0] for r in pyarrow_rows(lake, f"quarantine/{dataset}")
        )
        per_reason = {
            reason.value: metadata[f"quarantine/{reason.value.replace(' ', '_')}"].value
            for reason in RejectReason
        }
        assert all(isinstance(n, int) for n in per_reason.values())
        assert {r: n for r, n in per_reason.items() if n} == dict(counted), dataset


def test_gold_asset_shows_row_count_uri_and_preview_in_graphql(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The UI's own query path: Dagster's GraphQL schema over the instance and the lake's code."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster_graphql.test.utils import execute_dagster_graphql

    query_env(lake, monkeypatch)
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="deathmetal_lake.definitions", attribute="defs"),
        location_name="deathmetal_lake",
    )
    with WorkspaceProcessContext(lake.instance, InProcessWorkspaceLoadTarget(origin)) as process:
        result = execute_dagster_graphql(
            process.create_request_context(),
            GOLD_PREVIEW_QUERY,
            {"path": ["gold", "top10_by_country"]},
        )
    asset = result.data["assetOrError"]
    assert asset["__typename"] == "Asset" and asset["definition"]["groupName"] == "gold"
    entries = {e["label"]: e for e in asset["assetMaterializations"][0]["metadataEntries"]}
    expected = gold(lake, "top10_by_country")
    assert entries["dagster/row_count"]["intValue"] == expected.height
    assert entries["dagster/uri"]["path"] == f"s3://{lake.bucket}/gold/top10_by_country.parquet"
    table = entries["preview"]["table"]
    assert [c["name"] for c in table["schema"]["columns"]] == expected.columns
    records = [json.loads(record) for record in table["records"]]
    assert 1 <= len(records) <= 5
    assert all(set(r) == set(expected.columns) for r in records)
    assert {(r["country"], r["rank"]) for r in records} <= set(
        expected.select("country", "rank").iter_rows()
    )


def test_landing_logs_its_progress(lake: Lake) -> None:
    for dataset in DATASETS:
        ingest = lake.sample_ingests[f"{dataset}.csv"]
        rows = len(csv_rows(lake.csv_dir / f"{dataset}.csv")[1])
        lines = [
            entry.user_message
            for run in lake.instance.get_runs(RunsFilter(tags={"dagster/partition": ingest}))
            for entry in lake.instance.all_logs(run.run_id)
            if entry.user_message.startswith(f"{ingest}: ") and " rows sent (" in entry.user_message
        ]
        # After the send and after the wait, at least: the last one has every row delivered.
        assert len(lines) >= 2, (dataset, lines)
        assert lines[-1].startswith(f"{ingest}: {rows:,} rows sent (")
        assert f" MB), {rows:,} rows delivered" in lines[-1], lines[-1]


def test_catalog_schemas_are_what_the_lake_wrote(lake: Lake) -> None:
    """`deathmetal_lake.catalog` (which infra/athena.tf is checked against) is the Parquet truth."""
    from deathmetal_lake.catalog import lake_catalog

    catalog = {table.name: table for table in lake_catalog()}
    written = [f"silver.{t}" for t in SILVER_TABLES] + [f"quarantine.{d}" for d in DATASETS]
    written += [f"gold.{t}" for t in GOLD_TABLES]
    assert sorted(catalog) == sorted(written)
    for name in written:
        table = name.replace(".", "/")
        assert catalog[name].path == table_path(table), name
        assert (
            pl.from_arrow(
                pq.read_table(
                    f"{lake.bucket}/{table_path(table)}", filesystem=pyarrow_fs(lake)
                ).schema.empty_table()
            ).schema
            == catalog[name].schema
        ), name


# ---------------------------------------------------------------------------------------------
# 7. Idempotency, a new version of a file, and an increment


def test_second_run_with_unchanged_files_changes_nothing(lake: Lake) -> None:
    before = snapshot(lake)
    keys = {d: partitions(lake, d) for d in DATASETS}
    runs = lake.instance.get_runs_count()
    objects = sorted(list_keys(lake, ""))
    # A touched file with the same content is the same ingest.
    os.utime(lake.csv_dir / "bands.csv")
    assert run_lake(lake.settings, lake.instance)
    assert {d: partitions(lake, d) for d in DATASETS} == keys
    assert lake.instance.get_runs_count() == runs
    assert sorted(list_keys(lake, "")) == objects
    after = snapshot(lake)
    for name, frame in before.items():
        assert after[name].equals(frame), name


def test_make_run_reads_only_the_files_whose_fingerprint_changed(lake: Lake) -> None:
    # Other content, but the size and modification time it had: make run trusts the fingerprint
    # as the sensor does, so it does not read the file again (and does not see the change).
    path = lake.csv_dir / "bands.csv"
    original, stat = path.read_bytes(), path.stat()
    changed = original.replace(b"Brazil", b"Brazik", 1)
    assert changed != original and len(changed) == len(original)
    runs = lake.instance.get_runs_count()
    try:
        path.write_bytes(changed)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert run_lake(lake.settings, lake.instance)
        assert lake.instance.get_runs_count() == runs
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    remembered = lake.instance.run_storage.get_cursor_values({HASHES_KEY})[HASHES_KEY]
    assert {Path(location).name for location in json.loads(remembered)} == {
        f"{name}.csv" for name in DATASETS
    }


def test_new_file_version_and_increment_update_exactly_their_rows(
    lake: Lake, caplog: pytest.LogCaptureFixture
) -> None:
    before = snapshot(lake)
    old_keys = {d: partitions(lake, d) for d in DATASETS}

    # bands.csv, new version: one band renamed, one removed, one added.
    bands_path = lake.csv_dir / "bands.csv"
    header, rows = csv_rows(bands_path)
    old_bands = before["silver/bands"]
    with_albums = set(before["silver/albums"]["band"])
    # Two Brazilian bands with albums, neither with a quarantined (duplicate) copy.
    candidates = old_bands.filter(
        pl.col("id").is_in(with_albums)
        & (pl.col("country") == BRAZIL)
        & ~pl.col("id").cast(pl.String).is_in(before["quarantine/bands"]["id"].implode())
    )
    renamed_id, removed_id = candidates["id"].head(2).to_list()
    new_band_id = max(int(r[0]) for r in rows) + 1
    new_name = 'Renamed, the "Second" Coming'
    edited = []
    for row in rows:
        if int(row[0]) == removed_id:
            continue
        if int(row[0]) == renamed_id:
            row = [row[0], new_name, *row[2:]]
        edited.append(row)
    edited.append(
        [str(new_band_id), "Newborn Carcass", BRAZIL, "Active", "2025", "Death Metal", "Gore",
         "2025-present"]
    )  # fmt: skip
    write_csv(bands_path, header, edited)

    # reviews_2026-11.csv, an increment: two new reviews and a new version of review 5.
    reviews_header, review_rows = csv_rows(lake.csv_dir / "reviews.csv")
    old_review = next(r for r in review_rows if r[0] == "5")
    next_review_id = max(int(r[0]) for r in review_rows) + 1
    increment = [
        [str(next_review_id), "1", 'Fresh, "raw" and\r\nbrutal', "97", "Line one\nline two"],
        [str(next_review_id + 1), "2", "Meh", "40", "Not my thing, sadly."],
        ["5", old_review[1], "Revised opinion", "12", "I was wrong.\r\nIt is bad."],
    ]
    increment_path = lake.csv_dir / "reviews_2026-11.csv"
    write_csv(increment_path, reviews_header, increment)

    runs_before = {run.run_id for run in lake.instance.get_runs()}
    with caplog.at_level(logging.INFO, logger="deathmetal_lake.batch"):
        assert run_lake(lake.settings, lake.instance)
    # Every failed check of these runs is named in the terminal (the sample has WARN orphans).
    failed = {
        (e.check_name, e.asset_key.to_user_string(), e.severity.value)
        for run in lake.instance.get_runs()
        if run.run_id not in runs_before
        for e in check_evaluations(lake.instance, run.run_id)
        if not e.passed
    }
    assert ("album_in_albums", "silver/reviews", "WARN") in failed
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name, asset, severity in failed:
        assert any(f"check {name} on {asset} failed ({severity})" in w for w in warned), name
    assert any(r.getMessage().endswith("checks passed") for r in caplog.records)

    bands_key, increment_key = ingest_id(bands_path), ingest_id(increment_path)
    assert partitions(lake, "albums") == old_keys["albums"]
    assert partitions(lake, "bands") == [*old_keys["bands"], bands_key]
    assert partitions(lake, "reviews") == [*old_keys["reviews"], increment_key]
    assert_landing_matches_source(lake, "bands", bands_path, bands_key)
    assert_landing_matches_source(lake, "reviews", increment_path, increment_key)
    for dataset in DATASETS:
        assert_invariant(lake, dataset)
    after = snapshot(lake)

    # Albums: untouched, provenance included.
    assert_frame_equal(after["silver/albums"], before["silver/albums"])
    assert_frame_equal(after["quarantine/albums"], before["quarantine/albums"])

    # Bands: only the superseding ingest counts; the data changed in exactly three rows.
    new_bands = after["silver/bands"]
    assert set(new_bands["_ingest_id"]) == {bands_key}
    assert set(after["quarantine/bands"]["_ingest_id"]) == {bands_key}
    data = [c for c in new_bands.columns if c not in PROVENANCE]
    assert removed_id not in new_bands["id"]
    assert removed_id not in after["quarantine/bands"]["id"].cast(pl.Int64, strict=False)
    assert new_bands.filter(pl.col("id") == renamed_id)["name"].to_list() == [new_name]
    added = new_bands.filter(pl.col("id") == new_band_id)
    assert added.select("name", "country", "formed_in", "is_active").rows() == [
        ("Newborn Carcass", BRAZIL, 2025, True)
    ]
    unchanged = pl.col("id").is_in([renamed_id, removed_id, new_band_id]).not_()
    assert_frame_equal(
        new_bands.filter(unchanged).select(data), old_bands.filter(unchanged).select(data)
    )
    old_renamed = old_bands.filter(pl.col("id") == renamed_id).select(data).drop("name")
    assert_frame_equal(
        new_bands.filter(pl.col("id") == renamed_id).select(data).drop("name"), old_renamed
    )
    # The same rows are rejected, for the same reasons (row numbers in them may shift).
    assert_frame_equal(
        after["quarantine/bands"]
        .select("id", pl.col("_reject_reason").str.split(":").list.first())
        .sort("id", "_reject_reason"),
        before["quarantine/bands"]
        .select("id", pl.col("_reject_reason").str.split(":").list.first())
        .sort("id", "_reject_reason"),
    )

    # Reviews: upserted by id across the two files.
    new_reviews, old_reviews = after["silver/reviews"], before["silver/reviews"]
    touched = [next_review_id, next_review_id + 1, 5]
    assert_frame_equal(
        new_reviews.filter(~pl.col("id").is_in(touched)),
        old_reviews.filter(~pl.col("id").is_in(touched)),
    )
    upserted = new_reviews.filter(pl.col("id").is_in(touched)).sort("_source_row")
    assert upserted.select("id", "title", "score", "content", *PROVENANCE).rows() == [
        (next_review_id, 'Fresh, "raw" and\r\nbrutal', 97.0, "Line one\nline two",
         "reviews_2026-11.csv", 1, increment_key),
        (next_review_id + 1, "Meh", 40.0, "Not my thing, sadly.",
         "reviews_2026-11.csv", 2, increment_key),
        (5, "Revised opinion", 12.0, "I was wrong.\r\nIt is bad.",
         "reviews_2026-11.csv", 3, increment_key),
    ]  # fmt: skip
    new_rejects = after["quarantine/reviews"].join(
        before["quarantine/reviews"], on=list(PROVENANCE), how="anti"
    )
    assert new_rejects.select("id", "_source_file").rows() == [("5", "reviews.csv")]
    assert new_rejects["_reject_reason"].item() == (
        f"duplicate id: superseded by reviews_2026-11.csv row 3 (ingest {increment_key})"
    )
    assert before["quarantine/reviews"].height + 1 == after["quarantine/reviews"].height

    # The joins and gold follow.
    catalog = after["silver/music_catalog"]
    orphaned = catalog.filter(pl.col("band_id") == removed_id)
    assert orphaned.height > 0 and orphaned["band_name"].null_count() == orphaned.height
    assert set(catalog.filter(pl.col("band_id") == renamed_id)["band_name"]) == {new_name}
    assert_gold_matches_silver(lake)
    brazil = after["gold/brazilian_bands"]
    assert new_band_id in brazil["band_id"] and removed_id not in brazil["band_id"]


# ---------------------------------------------------------------------------------------------
# 8. Broken files fail their own run, send nothing, and do not stop the others


def step_failure(instance: DagsterInstance, run_id: str) -> tuple[str, str]:
    """The failed step and the description of its `Failure` (what the UI shows first)."""
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE).records
    assert len(records) == 1, records
    event = records[0].event_log_entry.dagster_event
    return event.step_key, event.step_failure_data.user_failure_data.description


def test_broken_files_fail_their_run_and_send_nothing(lake: Lake) -> None:
    missing_column = lake.csv_dir / "albums_missing-year.csv"
    missing_column.write_text("id,band,title\n9001,1,No Year Here\n", encoding="utf-8")
    not_utf8 = lake.csv_dir / "bands_latin1.csv"
    not_utf8.write_bytes(
        "id,name,country,status,formed_in,genre,theme,active\n"
        "9001,Mötley Décès,France,Active,1999,Death Metal,Gore,1999-present\n".encode("latin-1")
    )
    good = lake.csv_dir / "albums_2026-12.csv"
    write_csv(good, list(COLUMNS["albums"]), [["9002", "1", "Still| Ingested", "2026"]])
    broken = {"albums": missing_column, "bands": not_utf8}
    # What the failure must say besides the file's name (the producer words the rest).
    reasons = {missing_column.name: "missing required column(s) year", not_utf8.name: "not UTF-8"}
    keys = {path.name: ingest_id(path) for path in (missing_column, not_utf8, good)}
    try:
        assert run_lake(lake.settings, lake.instance) is False

        for dataset, path in broken.items():
            key = keys[path.name]
            assert key in partitions(lake, dataset)
            runs = lake.instance.get_runs(RunsFilter(tags={"dagster/partition": key}))
            assert runs and all(run.status == DagsterRunStatus.FAILURE for run in runs)
            step, message = step_failure(lake.instance, runs[0].run_id)
            assert step == f"landing__{dataset}"
            assert message.startswith(f"{path.name}: ") and reasons[path.name] in message, message
            assert key not in lake.instance.get_materialized_partitions(
                AssetKey(["landing", dataset])
            )
            assert key not in lake.instance.get_materialized_partitions(
                AssetKey(["bronze", dataset])
            )
            assert lines_of_ingest(lake, dataset, key) == []
            assert not any(key.encode() in data for data in kinesis_data(lake, dataset))
            assert not list_keys(lake, f"bronze/{dataset}/{key}")
            assert not list_keys(lake, f"errors/{dataset}/")

        # The good file went all the way: Kinesis, landing, bronze, silver.
        good_key = keys[good.name]
        assert any(good_key.encode() in data for data in kinesis_data(lake, "albums"))
        assert_landing_matches_source(lake, "albums", good, good_key)
        assert good_key in lake.instance.get_materialized_partitions(AssetKey(["bronze", "albums"]))
        albums = silver(lake, "albums")
        assert albums.filter(pl.col("id") == 9002).select("title", "_ingest_id").rows() == [
            ("Still, Ingested", good_key)
        ]
        # The broken bands file's run was the last, which carries the refresh: what its failure
        # skipped (everything downstream of bands) was refreshed without it.
        catalog = silver(lake, "music_catalog").filter(pl.col("album_id") == 9002)
        assert catalog.select("album_title").rows() == [("Still, Ingested",)]
        for dataset in DATASETS:
            assert_invariant(lake, dataset)

        # Once the broken files are gone, their failed ingests no longer fail every run.
        missing_column.unlink()
        not_utf8.unlink()
        assert run_lake(lake.settings, lake.instance) is True
    finally:
        # Leave the lake as a later test expects it: no broken file, no ingest left pending.
        for path in (missing_column, not_utf8, good):
            path.unlink(missing_ok=True)
        for dataset, path in broken.items():
            lake.instance.delete_dynamic_partition(f"{dataset}_ingests", keys[path.name])
