"""The contract's invariant as blocking checks: nothing lost, nothing doubled.

- landing: every source row of an ingest was delivered to `landing/` or written to `errors/`;
- bronze: an ingest's bronze rows are exactly its distinct landing lines;
- silver: for the latest ingest of every source file, bronze rows = silver rows + quarantine rows
  (evaluated in its dataset's contracts step: `contracts.planned_contract_checks`).

The landing and bronze checks are partitioned like their assets and evaluate the ingest that was
materialized (one partition), never every ingest; they count against the ingest's
`LandingManifest`. The `evaluate_*` functions are plain Polars and testable without Dagster; the
`build_*` functions wire them to assets and storage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import polars as pl
from dagster import (
    AllPartitionMapping,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSpec,
    AssetDep,
    AssetIn,
    AssetKey,
)

from deathmetal_lake.assets.bronze import bronze_key
from deathmetal_lake.assets.landing import landing_key
from deathmetal_lake.assets.silver import quarantine_key, silver_key
from deathmetal_lake.assets.staging import staging_order
from deathmetal_lake.checks.evidence import SAMPLE_ROWS, PlannedCheck, check_result
from deathmetal_lake.checks.row_keys import ROW_KEY, RowKeys
from deathmetal_lake.checks.verified import last_verified, unverified, with_verification
from deathmetal_lake.datasets import DATASETS, Dataset
from deathmetal_lake.manifest import LandingManifest
from deathmetal_lake.partitions import ingest_asset_check
from deathmetal_lake.resources import LakeResource, LakeS3Resource, LakeTables, TableMissing
from deathmetal_lake.rows import INGEST_ID, ROW_ID_SCHEMA, SOURCE_FILE, SOURCE_ROW, IngestKey
from deathmetal_lake.transforms.merge import current_ingests

LANDING_DELIVERED = "landing_delivered_every_row"
BRONZE_MATCHES_LANDING = "bronze_matches_landing"
SILVER_RECONCILES = "silver_reconciles_with_bronze"

_ROWS = ROW_ID_SCHEMA
_PROBLEM_COLUMNS = ["problem", "_ingest_id", "_source_file", "_source_row"]


def source_file_of(ingest_id: str) -> str:
    return IngestKey.parse(ingest_id).source_file


def _problems(problem: str, ingest_id: str, rows: pl.Series) -> pl.DataFrame:
    rows = rows.sort().head(SAMPLE_ROWS)
    return pl.DataFrame(
        {
            "problem": [problem] * len(rows),
            "_ingest_id": [ingest_id] * len(rows),
            "_source_file": [source_file_of(ingest_id)] * len(rows),
            "_source_row": rows.to_list(),
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


def _rows(values: Iterable[int]) -> pl.Series:
    """Distinct row numbers as a Series: set logic in Polars, not in Python sets of millions."""
    return pl.Series("_source_row", values, dtype=pl.Int64).unique()


def evaluate_landing(
    ingest_id: str, source_rows: int, delivered_rows: Iterable[int], error_rows: Iterable[int]
) -> AssetCheckResult:
    """Source rows 1..source_rows = distinct delivered `_source_row`s + rows in `errors/`."""
    delivered, errors = _rows(delivered_rows), _rows(error_rows)
    expected = pl.int_range(1, source_rows + 1, dtype=pl.Int64, eager=True)
    accounted = pl.concat([delivered, errors]).unique()
    missing = expected.filter(~expected.is_in(accounted.implode()))
    extra = accounted.filter(~accounted.is_in(expected.implode()))
    doubled = delivered.filter(delivered.is_in(errors.implode()))
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
            "delivered_rows": delivered.len(),
            "error_rows": errors.len(),
            "missing_rows": missing.len(),
            "extra_rows": extra.len(),
            "doubled_rows": doubled.len(),
        },
        thresholds={"missing_or_extra_rows": 0},
        failing=failing,
        description=(
            f"ingest {ingest_id}: {source_rows} source rows = {delivered.len()} delivered + "
            f"{errors.len()} in errors/"
            if failing.is_empty()
            else f"ingest {ingest_id}: {missing.len()} rows missing, {extra.len()} extra, "
            f"{doubled.len()} doubled"
        ),
    )


def scan_landing(uris: Sequence[str], storage_options: Mapping[str, Any]) -> pl.LazyFrame:
    """The ingest id and source row of every line of the given landing objects (JSON lines).

    Polars parses the objects in Rust and keeps only these two fields, streaming, instead of
    holding every object's bytes in Python.
    """
    if not uris:
        return pl.LazyFrame(schema=_ROWS)
    return pl.scan_ndjson(list(uris), schema=_ROWS, storage_options=dict(storage_options))


def landing_rows(lines: pl.LazyFrame, ingest_id: str) -> pl.Series:
    """The distinct `_source_row`s of one ingest among landing lines (delivery copies once)."""
    rows = lines.filter(pl.col("_ingest_id") == ingest_id).select(pl.col("_source_row").unique())
    return rows.collect(engine="streaming").to_series().sort()


def _scan_objects(lake: LakeResource, keys: Iterable[str]) -> pl.LazyFrame:
    uris = [f"s3://{lake.settings.bucket}/{key}" for key in keys]
    return scan_landing(uris, lake.polars_storage_options())


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
    @ingest_asset_check(
        dataset,
        asset=landing_key(dataset),
        name=LANDING_DELIVERED,
        blocking=True,
        description=(
            "Nothing lost: every source row of this ingest is a landing line (delivery copies "
            "counted once) or an object in errors/. Reads the objects its landing manifest names."
        ),
    )
    def landing_delivered(
        lake: LakeResource, s3: LakeS3Resource, landing: LandingManifest
    ) -> AssetCheckResult:
        delivered = landing_rows(_scan_objects(lake, landing.objects), landing.ingest_id)
        errors = _existing(s3, lake.settings.bucket, landing.error_rows)
        return evaluate_landing(landing.ingest_id, landing.source_rows, delivered, errors)

    return landing_delivered


# ---------------------------------------------------------------------------------------------
# bronze


def evaluate_bronze(
    ingest_id: str, landing_source_rows: Iterable[int], bronze: pl.DataFrame | pl.LazyFrame
) -> AssetCheckResult:
    """Bronze rows of an ingest = its distinct landing lines, each exactly once.

    Reads only the provenance columns of bronze.
    """
    landing = _rows(landing_source_rows)
    rows = bronze.lazy().select("_ingest_id", "_source_file", "_source_row")
    counts, wrong_ingest = pl.collect_all(
        [
            rows.group_by("_source_row").len(),
            rows.filter(pl.col("_ingest_id") != ingest_id),
        ],
        engine="streaming",
    )
    in_bronze = counts["_source_row"]
    bronze_rows = int(counts["len"].sum())
    missing = landing.filter(~landing.is_in(in_bronze.implode()))
    extra = in_bronze.filter(~in_bronze.is_in(landing.implode()))
    doubled = counts.filter(pl.col("len") > 1)["_source_row"]
    failing = pl.concat(
        [
            _problems("missing: a landing line not in bronze", ingest_id, missing),
            _problems("extra: a bronze row with no landing line", ingest_id, extra),
            _problems("doubled: in bronze more than once", ingest_id, doubled),
            wrong_ingest.sort("_source_row")
            .head(SAMPLE_ROWS)
            .select(
                pl.lit("another ingest's row").alias("problem"),
                *(pl.col(c) for c in _PROBLEM_COLUMNS[1:]),
            ),
        ]
    )
    return check_result(
        passed=failing.is_empty(),
        counts={
            "landing_lines": landing.len(),
            "bronze_rows": bronze_rows,
            "missing_rows": missing.len(),
            "extra_rows": extra.len(),
            "doubled_rows": doubled.len(),
            "other_ingest_rows": wrong_ingest.height,
        },
        thresholds={"missing_or_extra_rows": 0},
        failing=failing,
        description=(
            f"ingest {ingest_id}: {bronze_rows} bronze rows, {landing.len()} distinct landing lines"
            if failing.is_empty()
            else f"ingest {ingest_id}: {missing.len()} landing lines missing from "
            f"bronze, {extra.len()} extra, {doubled.len()} doubled, "
            f"{wrong_ingest.height} of another ingest"
        ),
    )


def build_bronze_check(dataset: Dataset) -> AssetChecksDefinition:
    @ingest_asset_check(
        dataset,
        asset=bronze_key(dataset),
        name=BRONZE_MATCHES_LANDING,
        blocking=True,
        additional_ins={"landing": AssetIn(key=landing_key(dataset))},
        description=(
            "Nothing doubled: this ingest's bronze rows are exactly its distinct landing lines "
            "(Firehose's at-least-once copies removed, none lost)."
        ),
    )
    def bronze_matches_landing(
        lake: LakeResource, landing: LandingManifest, bronze: pl.LazyFrame
    ) -> AssetCheckResult:
        lines = landing_rows(_scan_objects(lake, landing.objects), landing.ingest_id)
        return evaluate_bronze(landing.ingest_id, lines, bronze)

    return bronze_matches_landing


# ---------------------------------------------------------------------------------------------
# silver


def _provenance(frame: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    return frame.lazy().select(pl.col(INGEST_ID), pl.col(SOURCE_ROW).cast(pl.Int64))


def _labelled(frame: pl.DataFrame, problem: str) -> pl.DataFrame:
    return frame.select(
        pl.lit(problem).alias("problem"),
        INGEST_ID,
        pl.col(INGEST_ID).map_elements(source_file_of, pl.String).alias(SOURCE_FILE),
        SOURCE_ROW,
    )


def evaluate_silver(
    dataset: str,
    bronze_latest: pl.DataFrame | pl.LazyFrame,
    silver: pl.DataFrame | pl.LazyFrame,
    quarantine: pl.DataFrame | pl.LazyFrame,
) -> AssetCheckResult:
    """For the latest ingests: every bronze row is in silver or quarantine, exactly once.

    Reads only `_ingest_id` and `_source_row` of each table, compared as one key (`RowKeys`).
    """
    frames = [_provenance(frame) for frame in (bronze_latest, silver, quarantine)]
    keys = RowKeys.spanning(frames)
    bronze_rows, silver_rows, quarantine_rows = (keys.keyed(frame) for frame in frames)
    placed = pl.concat([silver_rows, quarantine_rows]).group_by(ROW_KEY).len()
    missing, extra, doubled, sizes = pl.collect_all(
        [
            bronze_rows.join(placed, on=ROW_KEY, how="anti"),
            placed.join(bronze_rows, on=ROW_KEY, how="anti"),
            placed.filter(pl.col("len") > 1),
            pl.concat(
                [
                    bronze_rows.select(pl.len().alias("bronze")),
                    silver_rows.select(pl.len().alias("silver")),
                    quarantine_rows.select(pl.len().alias("quarantine")),
                ],
                how="horizontal_extend",
            ),
        ],
        engine="streaming",
    )
    missing, extra, doubled = (keys.pairs(frame) for frame in (missing, extra, doubled))
    size = sizes.row(0, named=True)
    failing = pl.concat(
        [
            _labelled(missing, "missing: in bronze, not in silver nor quarantine"),
            _labelled(extra, "extra: not a row of the latest bronze ingests"),
            _labelled(doubled, "doubled: more than once across silver and quarantine"),
        ]
    ).sort(INGEST_ID, SOURCE_ROW)
    per_ingest = failing.group_by(INGEST_ID, "problem").len().sort(INGEST_ID).iter_rows()
    return check_result(
        passed=failing.is_empty(),
        counts={
            "bronze_rows": size["bronze"],
            "silver_rows": size["silver"],
            "quarantine_rows": size["quarantine"],
            "missing_rows": missing.height,
            "extra_rows": extra.height,
            "doubled_rows": doubled.height,
        },
        thresholds={"missing_or_extra_rows": 0},
        failing=failing,
        description=(
            f"{dataset}: bronze {size['bronze']} = silver {size['silver']} + quarantine "
            f"{size['quarantine']}"
            if failing.is_empty()
            else f"{dataset}: "
            + "; ".join(f"ingest {ingest}: {n} {problem}" for ingest, problem, n in per_ingest)
        ),
    )


# What the per-ingest reconciliation enforces; a new meaning here must re-read every part.
_SILVER_RULES = "bronze = silver + quarantine, per current ingest"


def _ingest_versions(
    current: Sequence[str], bronze: Mapping[str, str], *tables: Mapping[str, str]
) -> dict[str, str]:
    """Per ingest that is current or has a part: whether it is current, its parts' versions."""
    ingests = {*current, *(ingest for parts in tables for ingest in parts)}
    return {
        ingest: "|".join(
            [
                "current" if ingest in current else "not current",
                *(str(parts.get(ingest)) for parts in (bronze, *tables)),
            ]
        )
        for ingest in ingests
    }


def planned_silver_check(dataset: Dataset) -> PlannedCheck:
    """The silver reconciliation, evaluated in its dataset's contracts step (same blocking).

    Silver and quarantine have a part per current ingest, so the invariant holds ingest by
    ingest: it is evaluated for the ingests whose bronze, silver or quarantine part changed since
    it last passed (`verified`), and for any ingest whose parts should or should not be there.
    """
    table, quarantine, bronze = (
        silver_key(dataset.name),
        quarantine_key(dataset),
        bronze_key(dataset),
    )

    def parts(tables: LakeTables, key: AssetKey, names: Sequence[str]) -> pl.LazyFrame:
        # Part by part: a bronze part keeps its file's extra columns, so their schemas differ.
        return pl.concat(
            [
                pl.LazyFrame(schema=_ROWS),
                *(tables.scan_part(key, name).select(_ROWS.names()) for name in names),
            ]
        )

    def evaluate(context: AssetCheckExecutionContext, tables: LakeTables) -> AssetCheckResult:
        in_silver, in_quarantine = tables.part_versions(table), tables.part_versions(quarantine)
        if not in_silver:
            raise TableMissing(table)
        landed = tables.part_versions(bronze)
        staged = [i for i in staging_order(context.instance, dataset) if i in landed]
        current = current_ingests(staged, source_file_of)
        versions = _ingest_versions(current, landed, in_silver, in_quarantine)
        todo = unverified(versions, last_verified(context.instance, spec.key, _SILVER_RULES))
        result = evaluate_silver(
            dataset.name,
            parts(tables, bronze, [i for i in current if i in todo]),
            parts(tables, table, [i for i in todo if i in in_silver]),
            parts(tables, quarantine, [i for i in todo if i in in_quarantine]),
        )
        return with_verification(result, _SILVER_RULES, versions, len(todo))

    spec = AssetCheckSpec(
        SILVER_RECONCILES,
        asset=table,
        blocking=True,
        additional_deps=[quarantine, AssetDep(bronze, partition_mapping=AllPartitionMapping())],
        description=(
            "For the latest ingest of every source file, bronze rows = silver rows + quarantine "
            "rows, each (_ingest_id, _source_row) exactly once; read for the ingests changed "
            "since it last passed."
        ),
    )
    return PlannedCheck(spec, evaluate, reads=(table, quarantine, bronze))


def reconciliation_checks() -> list[AssetChecksDefinition]:
    return [
        build(dataset)
        for dataset in DATASETS
        for build in (build_landing_check, build_bronze_check)
    ]
