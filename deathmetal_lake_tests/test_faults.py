"""Faults on the embedded AWS, each against the lake's own steps: nothing lost, nothing doubled.

Every test injects one fault through the emulator's `/_lake/faults` (see `local_aws/faults.py`),
runs the lake's assets as a run would, and checks bronze and silver by provenance: every source
row exactly once. One emulator serves the module; a test that kills it or fills its journal
leaves it restarted and healthy for the next.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from botocore.exceptions import EndpointConnectionError
from dagster import AssetKey, DagsterEventType, DagsterInstance, materialize

from deathmetal_lake.definitions import build_definitions
from deathmetal_lake.local_aws import ensure_running, health, stop
from deathmetal_lake.partitions import INGEST_PARTITIONS
from deathmetal_lake.resources import build_resources
from deathmetal_lake.settings import AwsMode, LakeSettings
from deathmetal_lake.sources import content_hash, ingest_key, local_sources
from deathmetal_lake_tests.conftest import (
    SAMPLE_CSV_DIR,
    aws_client,
    free_port,
    isolate_env,
    make_settings,
)

pytestmark = pytest.mark.slow

INGEST_STEPS = ("landing", "bronze", "staging")


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LakeSettings]:
    root = tmp_path_factory.mktemp("faults")
    settings = make_settings(root / "state", csv_dir=root / "csv")
    settings.csv_path.mkdir(parents=True)
    with pytest.MonkeyPatch.context() as env:
        isolate_env(env, root)
        ensure_running(settings)
        try:
            yield settings
        finally:
            stop(settings)


@pytest.fixture
def lake(aws: LakeSettings) -> Iterator[LakeSettings]:
    """The module's emulator, running and without faults, before and after the test."""
    ensure_running(aws)
    yield aws
    if health(aws) is None or health(aws)["journal_error"]:
        stop(aws)
        ensure_running(aws)
    _faults(aws)


def _faults(settings: LakeSettings, **faults: Any) -> None:
    request = urllib.request.Request(
        f"{settings.aws_endpoint}/_lake/faults", data=json.dumps(faults).encode(), method="POST"
    )
    urllib.request.urlopen(request, timeout=5).close()


def _buffering(settings: LakeSettings, dataset: str, size_mb: int, seconds: int) -> None:
    firehose = aws_client(settings, "firehose")
    name = f"{dataset}-firehose"
    description = firehose.describe_delivery_stream(DeliveryStreamName=name)
    description = description["DeliveryStreamDescription"]
    firehose.update_destination(
        DeliveryStreamName=name,
        CurrentDeliveryStreamVersionId=description["VersionId"],
        DestinationId=description["Destinations"][0]["DestinationId"],
        ExtendedS3DestinationUpdate={
            "BufferingHints": {"SizeInMBs": size_mb, "IntervalInSeconds": seconds}
        },
    )
    time.sleep(0.2)  # the delivery loop reads the hints on its next tick


# --- sources and runs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    dataset: str
    path: Path
    key: str
    rows: int


def _source(settings: LakeSettings, dataset: str, name: str, id_offset: int = 0) -> Source:
    """A copy of the sample file of `dataset` as `{dataset}_{name}.csv`, ids shifted if asked."""
    path = settings.csv_path / f"{dataset}_{name}.csv"
    if id_offset:
        with (SAMPLE_CSV_DIR / f"{dataset}.csv").open(newline="", encoding="utf-8") as handle:
            header, *rows = list(csv.reader(handle))
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(
                [str(int(row[0]) + id_offset), *row[1:]] if row and row[0].isdigit() else row
                for row in rows
            )
    else:
        shutil.copy(SAMPLE_CSV_DIR / f"{dataset}.csv", path)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = sum(1 for _ in csv.reader(handle)) - 1
    (found,) = [s for s in local_sources(settings.csv_path) if s.name == path.name]
    return Source(dataset, path, ingest_key(found.name, content_hash(found)), rows)


def _run(
    settings: LakeSettings,
    instance: DagsterInstance,
    keys: list[AssetKey],
    partition_key: str | None = None,
) -> Any:
    defs = build_definitions(settings)
    return materialize(
        list(defs.assets or []),
        selection=keys,
        partition_key=partition_key,
        instance=instance,
        resources=build_resources(settings),
        raise_on_error=False,
    )


def _silver_keys(dataset: str) -> list[AssetKey]:
    return [AssetKey(["silver", dataset]), AssetKey(["quarantine", dataset])]


def _ingest(settings: LakeSettings, instance: DagsterInstance, source: Source) -> Any:
    """Landing, bronze and staging of one ingest: what a sensor's run starts with."""
    instance.add_dynamic_partitions(INGEST_PARTITIONS[source.dataset].name, [source.key])
    keys = [AssetKey([step, source.dataset]) for step in INGEST_STEPS]
    return _run(settings, instance, keys, source.key)


def _events(result: Any, event_type: DagsterEventType, step: str) -> list[Any]:
    return [e for e in result.all_events if e.event_type == event_type and e.step_key == step]


def _error_text(event: Any) -> str:
    """An event's error with its causes (a retried step's error is "Exceeded max_retries")."""
    data = event.event_specific_data
    return data.error.to_string() if data.error else ""


def _get(settings: LakeSettings, key: str) -> bytes:
    return aws_client(settings, "s3").get_object(Bucket=settings.bucket, Key=key)["Body"].read()


def _keys(settings: LakeSettings, prefix: str) -> dict[str, str]:
    """Key -> ETag of every object under `prefix`."""
    pages = aws_client(settings, "s3").get_paginator("list_objects_v2")
    return {
        item["Key"]: item["ETag"]
        for page in pages.paginate(Bucket=settings.bucket, Prefix=prefix)
        for item in page.get("Contents", [])
    }


def _bronze(settings: LakeSettings, source: Source) -> pl.DataFrame:
    return pl.read_parquet(_get(settings, f"bronze/{source.dataset}/{source.key}.parquet"))


def _assert_exactly_once(settings: LakeSettings, source: Source) -> None:
    """Bronze holds every source row of the ingest once, and the landing lines each one."""
    bronze = _bronze(settings, source)
    assert set(bronze["_ingest_id"]) == {source.key}
    assert sorted(bronze["_source_row"]) == list(range(1, source.rows + 1))
    landed = set()
    for key in _keys(settings, f"landing/{source.dataset}/"):
        lines = pl.read_ndjson(
            io.BytesIO(_get(settings, key)),
            schema={"_ingest_id": pl.String, "_source_row": pl.Int64},
        )
        landed |= set(lines.filter(pl.col("_ingest_id") == source.key)["_source_row"])
    assert landed == set(range(1, source.rows + 1))


def _silver_rows(settings: LakeSettings, table: str) -> pl.DataFrame:
    """(_source_file, _source_row) of every silver and quarantine row of a dataset."""
    frames = [
        pl.read_parquet(_get(settings, key)).select("_source_file", "_source_row", "_ingest_id")
        for layer in ("silver", "quarantine")
        for key in _keys(settings, f"{layer}/{table}/")
    ]
    return pl.concat(frames)


@contextmanager
def _restarted_when_killed(settings: LakeSettings) -> Iterator[None]:
    """Restarts the emulator as soon as it is gone (what `make aws-up` does)."""
    done = threading.Event()
    errors: list[BaseException] = []

    def watch() -> None:
        try:
            while not done.wait(0.05):
                if health(settings, timeout=0.5) is None:
                    ensure_running(settings)
                    return
        except BaseException as error:  # re-raised in the test's thread
            errors.append(error)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
    if errors:
        raise errors[0]


def _ingest_through_a_crash(settings: LakeSettings, source: Source) -> None:
    """Ingest while the emulator dies on an injected fault: the step's retries or, if the
    restart took longer than they wait, a re-run land every row exactly once."""
    pid = health(settings)["pid"]
    with DagsterInstance.ephemeral() as instance, _restarted_when_killed(settings):
        result = _ingest(settings, instance, source)
        if not result.success:
            failures = [
                e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE
            ]
            assert any(settings.aws_endpoint in _error_text(e) for e in failures)
            ensure_running(settings)
            result = _ingest(settings, instance, source)
        assert result.success
    assert health(settings)["pid"] != pid, "the emulator was not killed"
    _assert_exactly_once(settings, source)


# --- the faults -------------------------------------------------------------------------------


def test_throttling_and_internal_failures_inside_every_put_records_call(
    lake: LakeSettings,
) -> None:
    _faults(lake, put_records_failure_rate=0.2, put_records_internal_failure_rate=0.2, seed=3)
    kinesis = aws_client(lake, "kinesis")
    probe = kinesis.put_records(
        StreamName="albums-stream",
        Records=[{"PartitionKey": str(n), "Data": b'{"_ingest_id": "probe"}\n'} for n in range(50)],
    )
    codes = {r.get("ErrorCode") for r in probe["Records"]}
    assert codes == {None, "ProvisionedThroughputExceededException", "InternalFailure"}

    # The sample's reviews fit in two records; with this seed the first one fails once.
    _faults(lake, put_records_failure_rate=0.3, put_records_internal_failure_rate=0.3, seed=1)
    source = _source(lake, "reviews", "throttled")
    with DagsterInstance.ephemeral() as instance:
        result = _ingest(lake, instance, source)
        assert result.success
        (landing,) = result.asset_materializations_for_node("landing__reviews")
    assert landing.metadata["resent_records"].value > 0
    assert landing.metadata["rows"].value == source.rows
    _assert_exactly_once(lake, source)


def test_emulator_killed_mid_landing(lake: LakeSettings) -> None:
    """It dies having journaled a PutRecords call it never answered."""
    _faults(lake, exit_after_put_records=1)
    _ingest_through_a_crash(lake, _source(lake, "reviews", "killed-sending"))


def test_emulator_killed_mid_delivery(lake: LakeSettings) -> None:
    """It dies after Firehose delivered the first of two objects; the restart delivers the rest."""
    _buffering(lake, "reviews", size_mb=1, seconds=0)
    try:
        _faults(lake, exit_after_deliveries=1)
        _ingest_through_a_crash(lake, _source(lake, "reviews", "killed-delivering"))
    finally:
        _buffering(lake, "reviews", size_mb=5, seconds=0)


@contextmanager
def _objects_seen(settings: LakeSettings, prefix: str) -> Iterator[list[tuple[str, int]]]:
    """Every object that shows under `prefix` while the block runs, read whole as it shows:
    (key, rows), or (key, -1) for an object that is not a whole Parquet file."""
    seen: list[tuple[str, int]] = []
    done = threading.Event()
    s3 = aws_client(settings, "s3")

    def watch() -> None:
        while not done.wait(0.02):
            for key in _keys(settings, prefix):
                body = s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
                try:
                    seen.append((key, pl.read_parquet(body).height))
                except Exception:
                    seen.append((key, -1))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield seen
    finally:
        done.set()
        watcher.join()


def _assert_retried_after_the_injected_failure(result: Any, step: str) -> None:
    (retry,) = _events(result, DagsterEventType.STEP_UP_FOR_RETRY, step)
    assert "InternalError" in _error_text(retry) and "injected fault" in _error_text(retry)
    assert not _events(result, DagsterEventType.STEP_FAILURE, step)


def test_an_s3_write_failing_mid_bronze_and_mid_silver_is_retried(lake: LakeSettings) -> None:
    source = _source(lake, "albums", "s3-failures")
    uploads = aws_client(lake, "s3")
    with DagsterInstance.ephemeral() as instance:
        _faults(lake, s3_failed_uploads=1, s3_failure_prefix="bronze/albums/")
        with _objects_seen(lake, f"bronze/albums/{source.key}") as bronze_seen:
            result = _ingest(lake, instance, source)
        assert result.success
        _assert_retried_after_the_injected_failure(result, "bronze__albums")

        _faults(lake, s3_failed_uploads=1, s3_failure_prefix="silver/albums/")
        with _objects_seen(lake, "silver/albums/") as silver_seen:
            result = _run(lake, instance, _silver_keys("albums"))
        assert result.success
        _assert_retried_after_the_injected_failure(result, "silver_albums")

    # The failed uploads never showed: only whole files, with all their rows, ever did.
    assert bronze_seen and set(bronze_seen) == {
        (f"bronze/albums/{source.key}.parquet", source.rows)
    }
    assert silver_seen and all(rows >= 0 for _, rows in silver_seen)
    pending = uploads.list_multipart_uploads(Bucket=lake.bucket).get("Uploads", [])
    assert {u["Key"].split("/")[0] for u in pending} <= {"bronze", "silver"}
    _assert_exactly_once(lake, source)
    mine = _silver_rows(lake, "albums").filter(pl.col("_ingest_id") == source.key)
    assert sorted(mine["_source_row"]) == list(range(1, source.rows + 1))


def test_firehose_slower_than_the_landing_timeout(lake: LakeSettings) -> None:
    source = _source(lake, "albums", "slow-firehose")
    impatient = lake.model_copy(update={"landing_timeout_seconds": 1})
    _buffering(lake, "albums", size_mb=5, seconds=4)
    try:
        with DagsterInstance.ephemeral() as instance:
            started = time.monotonic()
            result = _ingest(impatient, instance, source)
            assert not result.success and time.monotonic() - started < 30
            assert not _events(result, DagsterEventType.STEP_UP_FOR_RETRY, "landing__albums")
            (failure,) = _events(result, DagsterEventType.STEP_FAILURE, "landing__albums")
            message = failure.event_specific_data.user_failure_data.description
            assert f"ingest {source.key}: " in message and "within 1s" in message
            assert "LAKE_LANDING_TIMEOUT_SECONDS" in message and "re-execute" in message

            # A later run, with the default timeout, catches up.
            result = _ingest(lake, instance, source)
            assert result.success
    finally:
        _buffering(lake, "albums", size_mb=5, seconds=0)
    _assert_exactly_once(lake, source)


def test_two_ingests_of_one_dataset_at_the_same_time(lake: LakeSettings, tmp_path: Path) -> None:
    sources = [
        _source(lake, "bands", "together-a"),
        _source(lake, "bands", "together-b", id_offset=10_000_000),
    ]
    results: dict[str, Any] = {}
    (tmp_path / "dagster").mkdir()
    # Without capture of the steps' output: two runs in threads of one process would race over
    # its file descriptors, and a capture's `tail -F` processes were once left running.
    no_capture = {
        "compute_logs": {
            "module": "dagster._core.storage.noop_compute_log_manager",
            "class": "NoOpComputeLogManager",
        }
    }
    with DagsterInstance.local_temp(str(tmp_path / "dagster"), overrides=no_capture) as instance:
        threads = [
            threading.Thread(
                target=lambda s=s: results.__setitem__(s.key, _ingest(lake, instance, s))
            )
            for s in sources
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(results[s.key].success for s in sources)
        assert _run(lake, instance, _silver_keys("bands")).success
    rows = _silver_rows(lake, "bands")
    for source in sources:
        _assert_exactly_once(lake, source)
        mine = rows.filter(pl.col("_ingest_id") == source.key)
        assert sorted(mine["_source_row"]) == list(range(1, source.rows + 1))


def test_a_full_disk_for_the_state_folder(lake: LakeSettings) -> None:
    before = _source(lake, "albums", "before-the-disk-filled")
    during = _source(lake, "albums", "while-the-disk-is-full")
    with DagsterInstance.ephemeral() as instance:
        assert _ingest(lake, instance, before).success
        kept = _keys(lake, "")
        journal = lake.state_path / "journal.bin"
        journal_size = journal.stat().st_size

        _faults(lake, journal_full=True)
        result = _ingest(lake, instance, during)
        assert not result.success
        (failure,) = _events(result, DagsterEventType.STEP_FAILURE, "landing__albums")
        message = _error_text(failure)
        assert f"cannot write its journal {journal.resolve()}" in message
        assert "No space left on device" in message and "make aws-up" in message
        assert health(lake)["journal_error"]
        assert journal.stat().st_size == journal_size  # nothing torn, nothing half-written

        # Restarted, it has exactly what it acknowledged; the ingest then goes through.
        stop(lake)
        ensure_running(lake)
        assert _keys(lake, "") == kept
        _assert_exactly_once(lake, before)
        assert _ingest(lake, instance, during).success
    _assert_exactly_once(lake, during)


def test_an_unreachable_back_end_fails_fast_and_says_what_to_do(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "state", embedded_port=free_port())
    resources = build_resources(settings)
    started = time.monotonic()
    with pytest.raises(EndpointConnectionError) as raised:
        resources["s3"].get_client().list_objects_v2(Bucket=settings.bucket)
    assert time.monotonic() - started < 15
    notes = "\n".join(getattr(raised.value, "__notes__", []))
    assert settings.aws_endpoint in notes and "make aws-up" in notes
    assert "LAKE_AWS_MODE=embedded" in notes

    started = time.monotonic()
    with pytest.raises(OSError, match="error sending request"):
        pl.scan_parquet(
            f"s3://{settings.bucket}/silver/albums.parquet",
            storage_options=resources["lake"].polars_storage_options(),
        ).collect()
    assert time.monotonic() - started < 15


def test_a_run_on_an_unreachable_back_end_fails_at_its_start(tmp_path: Path) -> None:
    """Not after every AWS-facing step spent its retries (a `make run` took 216 s so)."""
    dead = make_settings(
        tmp_path / "state",
        aws_mode=AwsMode.LOCALSTACK,
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        csv_dir=tmp_path / "csv",
    )
    started = time.monotonic()
    with DagsterInstance.ephemeral() as instance:
        result = _run(dead, instance, _silver_keys("bands"))
    assert not result.success and time.monotonic() - started < 15
    assert not [e for e in result.all_events if e.event_type == DagsterEventType.STEP_START]
    (failure,) = [e for e in result.all_events if e.event_type == DagsterEventType.RUN_FAILURE]
    message = failure.event_specific_data.error.to_string()
    assert f"the lake's AWS back end ({dead.aws_endpoint}, LAKE_AWS_MODE=localstack)" in message

    # `make run` says so before planning anything, and exits 1.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKE_", "AWS_"))}
    env |= {
        "LAKE_AWS_MODE": "localstack",
        "AWS_ENDPOINT_URL": dead.aws_endpoint or "",
        "LAKE_CSV_DIR": str(SAMPLE_CSV_DIR),
        "LAKE_STATE_DIR": str(dead.state_path),
        "DAGSTER_HOME": str(dead.instance_dir),
    }
    dead.instance_dir.mkdir(parents=True)
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "deathmetal_lake.run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1 and time.monotonic() - started < 20
    assert f'Could not connect to the endpoint URL: "{dead.aws_endpoint}/' in completed.stderr
    assert "does not answer: check AWS_ENDPOINT_URL" in completed.stderr
    assert "materializing" not in completed.stderr
