"""The contract's invariant as blocking checks: nothing lost, nothing doubled.

- landing: every source row of an ingest was delivered to `landing/` or written to `errors/`;
- bronze: an ingest's bronze rows are exactly its distinct landing lines;
- silver: for the latest ingest of every source file, bronze rows = silver rows + quarantine rows.

The landing and bronze checks are partitioned like their assets and evaluate the ingest that was
materialized (one partition), never every ingest. The `evaluate_*` functions are plain Polars
and testable without Dagster; the `build_*` functions wire them to assets and storage.
"""

import io
from collections.abc import Iterable, Mapping

import polars as pl
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetIn,
    AssetRecordsFilter,
    asset_check,
)

from deathmetal_lake.assets.bronze import bronze_key
from deathmetal_lake.assets.landing import DELIVERED_OBJECTS, landing_key
from deathmetal_lake.assets.silver import quarantine_key, silver_key
from deathmetal_lake.checks.evidence import check_result, read_lake_parquet
from deathmetal_lake.datasets import DATASETS, Dataset
from deathmetal_lake.partitions import ingest_partitions
from deathmetal_lake.resources import LakeResource, LakeS3Resource

LANDING_DELIVERED = "landing_delivered_every_row"
BRONZE_MATCHES_LANDING = "bronze_matches_landing"
SILVER_RECONCILES = "silver_reconciles_with_bronze"

_ROWS = pl.Schema({"_ingest_id": pl.String, "_source_row": pl.Int64})
_PROBLEM_COLUMNS = ["problem", "_ingest_id", "_source_file", "_source_row"]


def source_file_of(ingest_id: str) -> str:
    """The file an ingest came from: its partition key is `{file stem}-{hash}` (README)."""
    return f"{ingest_id.rsplit('-', 1)[0]}.csv"


def _problems(problem: str, ingest_id: str, rows: Iterable[int]) -> pl.DataFrame:
    rows = sorted(rows)
    return pl.DataFrame(
        {
            "problem": [problem] * len(rows),
            "_ingest_id": [ingest_id] * len(rows),
            "_source_file": [source_file_of(ingest_id)] * len(rows),
            "_source_row": rows,
        },
        schema={
            "problem": pl.String,
            "_ingest_id": pl.String,
            "_source_file": pl.String,
            "_source_row": pl.Int64,
        },
    )


# ---------------------------------------------------------------------------------------------
# landing


def evaluate_landing(
    ingest_id: str, source_rows: int, delivered_rows: Iterable[int], error_rows: Iterable[int]
) -> AssetCheckResult:
    """Source rows 1..source_rows = distinct delivered `_source_row`s + rows in `errors/`."""
    delivered, errors = set(delivered_rows), set(error_rows)
    expected = set(range(1, source_rows + 1))
    missing = expected - delivered - errors
    extra = (delivered | errors) - expected
    doubled = delivered & errors
    failing = pl.concat(
        [
            _problems("missing: neither delivered nor in errors/", ingest_id, missing),
            _problems("extra: not a row of the source file", ingest_id, extra),
            _problems("doubled: delivered and in errors/", ingest_id, doubled),
        ]
    )
    return check_result(
        passed=failing.is_empty(),
        counts={
            "source_rows": source_rows,
            "delivered_rows": len(delivered),
            "error_rows": len(errors),
            "missing_rows": len(missing),
            "extra_rows": len(extra),
            "doubled_rows": len(doubled),
        },
        thresholds={"missing_or_extra_rows": 0},
        failing=failing,
        description=(
            f"ingest {ingest_id}: {source_rows} source rows = {len(delivered)} delivered + "
            f"{len(errors)} in errors/"
            if failing.is_empty()
            else f"ingest {ingest_id}: {len(missing)} rows missing, {len(extra)} extra, "
            f"{len(doubled)} doubled"
        ),
    )


def landing_rows(bodies: Iterable[bytes], ingest_id: str) -> pl.Series:
    """The distinct `_source_row`s of one ingest in landing objects (JSON lines)."""
    frames = [
        pl.read_ndjson(io.BytesIO(body), schema_overrides=_ROWS, infer_schema_length=None)
        .select(_ROWS.names())
        .filter(pl.col("_ingest_id") == ingest_id)
        for body in bodies
        if body.strip()
    ]
    rows = pl.concat(frames) if frames else pl.DataFrame(schema=_ROWS)
    return rows["_source_row"].cast(pl.Int64).unique().sort()


def _landing_metadata(context: AssetCheckExecutionContext, dataset: Dataset) -> Mapping:
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(
            asset_key=landing_key(dataset), asset_partitions=[context.partition_key]
        ),
        limit=1,
    ).records
    return records[0].asset_materialization.metadata if records else {}


def _read_objects(s3: LakeS3Resource, bucket: str, keys: Iterable[str]) -> list[bytes]:
    client = s3.get_client()
    return [client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys]


def _existing(s3: LakeS3Resource, bucket: str, keys: Mapping[int, str]) -> list[int]:
    client, found = s3.get_client(), []
    for row, key in keys.items():
        try:
            client.head_object(Bucket=bucket, Key=key)
        except client.exceptions.ClientError:
            continue
        found.append(row)
    return found


def build_landing_check(dataset: Dataset) -> AssetChecksDefinition:
    @asset_check(
        asset=landing_key(dataset),
        name=LANDING_DELIVERED,
        partitions_def=ingest_partitions(dataset),
        blocking=True,
        description=(
            "Nothing lost: every source row of this ingest is a landing line (delivery copies "
            "counted once) or an object in errors/. Reads the objects the landing run recorded."
        ),
    )
    def landing_delivered(
        context: AssetCheckExecutionContext, lake: LakeResource, s3: LakeS3Resource
    ) -> AssetCheckResult:
        ingest_id = context.partition_key
        metadata = _landing_metadata(context, dataset)
        if "rows" not in metadata:
            return check_result(
                passed=False,
                counts={},
                description=f"ingest {ingest_id} has no landing materialization with row counts",
            )
        objects = metadata[DELIVERED_OBJECTS].value
        oversize = (
            metadata["oversize_error_objects"].value
            if "oversize_error_objects" in (metadata)
            else {}
        )
        delivered = landing_rows(_read_objects(s3, lake.bucket, objects), ingest_id)
        errors = _existing(s3, lake.bucket, {int(row): key for row, key in oversize.items()})
        return evaluate_landing(ingest_id, metadata["rows"].value, delivered.to_list(), errors)

    return landing_delivered


# ---------------------------------------------------------------------------------------------
# bronze


def evaluate_bronze(
    ingest_id: str, landing_source_rows: Iterable[int], bronze: pl.DataFrame
) -> AssetCheckResult:
    """Bronze rows of an ingest = its distinct landing lines, each exactly once."""
    landing = set(landing_source_rows)
    counts = bronze.group_by("_source_row").len()
    doubled = counts.filter(pl.col("len") > 1)["_source_row"].to_list()
    in_bronze = set(counts["_source_row"].to_list())
    wrong_ingest = bronze.filter(pl.col("_ingest_id") != ingest_id)
    failing = pl.concat(
        [
            _problems("missing: a landing line not in bronze", ingest_id, landing - in_bronze),
            _problems("extra: a bronze row with no landing line", ingest_id, in_bronze - landing),
            _problems("doubled: in bronze more than once", ingest_id, doubled),
            wrong_ingest.select(
                pl.lit("another ingest's row").alias("problem"),
                *(pl.col(c) for c in _PROBLEM_COLUMNS[1:]),
            ),
        ]
    )
    return check_result(
        passed=failing.is_empty(),
        counts={
            "landing_lines": len(landing),
            "bronze_rows": bronze.height,
            "missing_rows": len(landing - in_bronze),
            "extra_rows": len(in_bronze - landing),
            "doubled_rows": len(doubled),
            "other_ingest_rows": wrong_ingest.height,
        },
        thresholds={"missing_or_extra_rows": 0},
        failing=failing,
        description=(
            f"ingest {ingest_id}: {bronze.height} bronze rows, "
            f"{len(landing)} distinct landing lines"
            if failing.is_empty()
            else f"ingest {ingest_id}: {len(landing - in_bronze)} landing lines missing from "
            f"bronze, {len(in_bronze - landing)} extra, {len(doubled)} doubled, "
            f"{wrong_ingest.height} of another ingest"
        ),
    )


def build_bronze_check(dataset: Dataset) -> AssetChecksDefinition:
    @asset_check(
        asset=bronze_key(dataset),
        name=BRONZE_MATCHES_LANDING,
        partitions_def=ingest_partitions(dataset),
        blocking=True,
        description=(
            "Nothing doubled: this ingest's bronze rows are exactly its distinct landing lines "
            "(Firehose's at-least-once copies removed, none lost)."
        ),
    )
    def bronze_matches_landing(
        context: AssetCheckExecutionContext,
        lake: LakeResource,
        s3: LakeS3Resource,
        bronze: pl.DataFrame,
    ) -> AssetCheckResult:
        ingest_id = context.partition_key
        metadata = _landing_metadata(context, dataset)
        objects = metadata[DELIVERED_OBJECTS].value if DELIVERED_OBJECTS in metadata else {}
        landing = landing_rows(_read_objects(s3, lake.bucket, objects), ingest_id)
        return evaluate_bronze(ingest_id, landing.to_list(), bronze)

    return bronze_matches_landing


# ---------------------------------------------------------------------------------------------
# silver


def latest_ingests(ingest_order: Iterable[str]) -> dict[str, str]:
    """Source file -> its latest ingest, from ingest ids listed oldest -> newest."""
    return {source_file_of(ingest_id): ingest_id for ingest_id in ingest_order}


def evaluate_silver(
    dataset: str, bronze_latest: pl.DataFrame, silver: pl.DataFrame, quarantine: pl.DataFrame
) -> AssetCheckResult:
    """For the latest ingests: every bronze row is in silver or quarantine, exactly once."""
    key = ["_ingest_id", "_source_row"]
    bronze_rows = bronze_latest.select(key).with_columns(pl.col("_source_row").cast(pl.Int64))
    out = pl.concat(
        [
            silver.select(key).with_columns(pl.col("_source_row").cast(pl.Int64)),
            quarantine.select(key).with_columns(pl.col("_source_row").cast(pl.Int64)),
        ]
    )
    placed = out.group_by(key).len()
    missing = bronze_rows.join(placed, on=key, how="anti")
    extra = placed.join(bronze_rows, on=key, how="anti")
    doubled = placed.filter(pl.col("len") > 1)

    def label(frame: pl.DataFrame, problem: str) -> pl.DataFrame:
        return frame.select(
            pl.lit(problem).alias("problem"),
            "_ingest_id",
            pl.col("_ingest_id").map_elements(source_file_of, pl.String).alias("_source_file"),
            "_source_row",
        )

    failing = pl.concat(
        [
            label(missing, "missing: in bronze, not in silver nor quarantine"),
            label(extra, "extra: not a row of the latest bronze ingests"),
            label(doubled, "doubled: more than once across silver and quarantine"),
        ]
    ).sort("_ingest_id", "_source_row")
    per_ingest = (
        failing.group_by("_ingest_id", "problem").len().sort("_ingest_id").to_dicts()
        if not failing.is_empty()
        else []
    )
    return check_result(
        passed=failing.is_empty(),
        counts={
            "bronze_rows": bronze_rows.height,
            "silver_rows": silver.height,
            "quarantine_rows": quarantine.height,
            "missing_rows": missing.height,
            "extra_rows": extra.height,
            "doubled_rows": doubled.height,
        },
        thresholds={"missing_or_extra_rows": 0},
        failing=failing,
        description=(
            f"{dataset}: bronze {bronze_rows.height} = silver {silver.height} + quarantine "
            f"{quarantine.height}"
            if failing.is_empty()
            else f"{dataset}: "
            + "; ".join(f"ingest {r['_ingest_id']}: {r['len']} {r['problem']}" for r in per_ingest)
        ),
    )


def build_silver_check(dataset: Dataset) -> AssetChecksDefinition:
    partitions = ingest_partitions(dataset)

    @asset_check(
        asset=silver_key(dataset.name),
        name=SILVER_RECONCILES,
        blocking=True,
        additional_ins={"quarantine": AssetIn(key=quarantine_key(dataset))},
        required_resource_keys={"io_manager"},
        description=(
            "For the latest ingest of every source file, bronze rows = silver rows + quarantine "
            "rows, each (_ingest_id, _source_row) exactly once."
        ),
    )
    def silver_reconciles(
        context: AssetCheckExecutionContext, table: pl.LazyFrame, quarantine: pl.LazyFrame
    ) -> AssetCheckResult:
        materialized = context.instance.get_materialized_partitions(bronze_key(dataset))
        order = [
            k for k in context.instance.get_dynamic_partitions(partitions.name) if k in materialized
        ]
        latest = latest_ingests(order)
        frames = [
            read_lake_parquet(context.resources.io_manager, f"bronze/{dataset.name}/{ingest}")
            for ingest in latest.values()
        ]
        columns = ["_ingest_id", "_source_row"]
        bronze = pl.concat(
            [pl.DataFrame(schema=_ROWS), *(f.select(columns) for f in frames if f is not None)]
        )
        return evaluate_silver(
            dataset.name,
            bronze,
            table.select(columns).collect(),
            quarantine.select(columns).collect(),
        )

    return silver_reconciles


def reconciliation_checks() -> list[AssetChecksDefinition]:
    return [
        build(dataset)
        for dataset in DATASETS
        for build in (build_landing_check, build_bronze_check, build_silver_check)
    ]
