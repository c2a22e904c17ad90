"""The landing asset against a throttling Kinesis, and its wait for Firehose's deliveries."""

import csv
import json
import shutil
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from deathmetal_lake.arrival import DeliveryTimeoutError, DeliveryWatcher
from deathmetal_lake.assets.bronze import bronze_assets
from deathmetal_lake.assets.landing import landing_assets
from deathmetal_lake.partitions import INGEST_PARTITIONS
from deathmetal_lake.resources import build_resources
from deathmetal_lake.settings import LakeSettings
from deathmetal_lake.sources import content_hash, ingest_key, local_sources
from deathmetal_lake_tests.conftest import SAMPLE_CSV_DIR, aws_client, make_settings


def _inject(settings: LakeSettings, rate: float) -> None:
    request = urllib.request.Request(
        f"{settings.aws_endpoint}/_lake/faults",
        data=json.dumps({"put_records_failure_rate": rate, "seed": 7}).encode(),
        method="POST",
    )
    urllib.request.urlopen(request, timeout=5).close()


def _ingest(settings: LakeSettings, instance: DagsterInstance, file: Path):
    (source,) = [s for s in local_sources(settings.csv_path) if s.name == file.name]
    key = ingest_key(source.name, content_hash(source))
    instance.add_dynamic_partitions(INGEST_PARTITIONS["reviews"].name, [key])
    result = materialize(
        [*landing_assets, *bronze_assets],
        selection=[AssetKey(["landing", "reviews"]), AssetKey(["bronze", "reviews"])],
        partition_key=key,
        instance=instance,
        resources=build_resources(settings),
        raise_on_error=False,
    )
    return key, result


def _source_rows(file: Path) -> int:
    with file.open(newline="", encoding="utf-8") as handle:
        return sum(1 for _ in csv.reader(handle)) - 1


def test_every_row_arrives_once_when_a_fifth_of_each_call_is_throttled(
    embedded_aws: LakeSettings,
) -> None:
    embedded_aws.csv_path.mkdir(parents=True)
    file = Path(shutil.copy(SAMPLE_CSV_DIR / "reviews.csv", embedded_aws.csv_path))
    _inject(embedded_aws, 0.2)

    with DagsterInstance.ephemeral() as instance:
        key, result = _ingest(embedded_aws, instance, file)
        assert result.success
        landing = result.asset_materializations_for_node("landing__reviews")[0].metadata
        bronze_event = instance.get_latest_materialization_event(AssetKey(["bronze", "reviews"]))

    assert landing["resent_records"].value > 0
    assert landing["rows"].value == _source_rows(file)
    assert bronze_event is not None
    s3 = aws_client(embedded_aws, "s3")
    body = s3.get_object(Bucket=embedded_aws.bucket, Key=f"bronze/reviews/{key}.parquet")["Body"]
    bronze = pl.read_parquet(body.read())
    assert bronze["_source_row"].sort().to_list() == list(range(1, _source_rows(file) + 1))


def test_the_asset_fails_with_the_unsent_count_when_the_retry_budget_runs_out(
    tmp_path: Path,
) -> None:
    from deathmetal_lake.local_aws import ensure_running, stop

    settings = make_settings(tmp_path / "state", put_records_max_attempts=2)
    settings.csv_path.mkdir(parents=True)
    file = Path(shutil.copy(SAMPLE_CSV_DIR / "reviews.csv", settings.csv_path))
    ensure_running(settings)
    try:
        _inject(settings, 1.0)
        with DagsterInstance.ephemeral() as instance:
            _, result = _ingest(settings, instance, file)
        assert not result.success
        (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        message = failure.step_failure_data.error.message
        assert (
            f"{_source_rows(file):,} of {_source_rows(file):,} rows were not delivered" in message
        )
        assert "ProvisionedThroughputExceededException" in message
        landing = aws_client(settings, "s3").list_objects_v2(
            Bucket=settings.bucket, Prefix="landing/reviews/"
        )
        assert landing.get("KeyCount", 0) == 0
    finally:
        stop(settings)


def _lines(ingest: str, rows: list[int]) -> bytes:
    return b"".join(
        json.dumps({"_ingest_id": ingest, "_source_row": r, "id": str(r)}).encode() + b"\n"
        for r in rows
    )


def test_delivery_watcher_never_reads_what_was_delivered_before_the_send(
    embedded_aws: LakeSettings,
) -> None:
    """Objects seconds old (inside the clock slack) are not read: not an earlier ingest's, which
    cost a scale-10 increment 126 MB of reading, nor an earlier attempt's of this ingest (a
    retried landing sends every row again)."""
    s3 = aws_client(embedded_aws, "s3")
    bucket, prefix = embedded_aws.bucket, "landing/albums/"
    hour = f"{prefix}{datetime.now(UTC):%Y/%m/%d/%H}/"
    s3.put_object(Bucket=bucket, Key=f"{hour}attempt-1", Body=_lines("a-1", [1, 2, 3]))
    with DeliveryWatcher(
        s3, bucket=bucket, prefix=prefix, ingest_id="a-1", since=datetime.now(UTC)
    ) as watcher:
        s3.put_object(Bucket=bucket, Key=f"{hour}attempt-2", Body=_lines("a-1", [1, 2, 3]))
    arrival = watcher.wait(3, timeout_seconds=5)
    assert arrival.objects == {f"{hour}attempt-2": 3}
    assert (arrival.rows, arrival.copies) == (3, 0)


def test_delivery_watcher_counts_copies_ignores_other_ingests_and_names_missing_rows(
    embedded_aws: LakeSettings,
) -> None:
    s3 = aws_client(embedded_aws, "s3")
    bucket, prefix = embedded_aws.bucket, "landing/reviews/"
    hour = f"{prefix}{datetime.now(UTC):%Y/%m/%d/%H}/"
    with DeliveryWatcher(
        s3, bucket=bucket, prefix=prefix, ingest_id="r-1", since=datetime.now(UTC)
    ) as watcher:
        # Delivered while the "send" is still going: the background poll reads them.
        s3.put_object(Bucket=bucket, Key=f"{hour}a", Body=_lines("r-1", [1, 2, 3]))
        s3.put_object(Bucket=bucket, Key=f"{hour}b", Body=_lines("r-1", [3, 4]) + _lines("x", [9]))
        time.sleep(1)
        assert watcher.arrival.objects == {f"{hour}a": 3, f"{hour}b": 2}
    arrival = watcher.wait(4, timeout_seconds=5)
    assert (arrival.rows, arrival.copies, arrival.lines) == (4, 1, 5)

    with pytest.raises(DeliveryTimeoutError) as raised:
        watcher.wait(7, timeout_seconds=0.5)
    assert "r-1: 3 of 7 rows were not delivered" in str(raised.value)
    assert "first missing source rows: [5, 6, 7]" in str(raised.value)

    # An object arriving after the send is picked up by the wait itself.
    s3.put_object(Bucket=bucket, Key=f"{hour}c", Body=_lines("r-1", [5, 6, 7]))
    assert watcher.wait(7, timeout_seconds=5).rows == 7
