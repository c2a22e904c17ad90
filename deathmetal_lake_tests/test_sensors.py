"""The ingest sensors, ticked the way Dagster's sensor daemon ticks them.

Every tick evaluates the sensor with `evaluate_tick` against the lake's real definitions and a real
(temporary) Dagster instance, then applies its dynamic partition requests to that instance as the
daemon does, so "this content already has a partition" is answered by Dagster itself. The cursor
is carried from tick to tick as the string the daemon stores; a new `Daemon` given that string is a
restarted daemon.

`csv_dir_sensor` reads a local folder only. Its tests use LocalStack settings, whose `lake`
resource starts nothing and no AWS client is ever made, so they need no emulator and fail loudly
if the sensor ever starts to call AWS. `s3_raw_sensor` runs against the embedded AWS.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AddDynamicPartitionsRequest,
    AssetKey,
    DagsterInstance,
    RunRequest,
    SensorDefinition,
    build_sensor_context,
    instance_for_test,
)

from deathmetal_lake.datasets import DATASETS
from deathmetal_lake.definitions import build_definitions
from deathmetal_lake.partitions import ingest_partitions
from deathmetal_lake.resources import build_resources
from deathmetal_lake.sensors import SETTLE_SECONDS, Cursor, csv_dir_sensor, s3_raw_sensor
from deathmetal_lake.settings import AwsMode, LakeSettings
from deathmetal_lake_tests.conftest import aws_client, make_settings

BANDS = (
    b"id,name,country,status,formed_in,genre,theme,active\n"
    b"1,Death,US,Split-up,1984,Death,Gore,1984-2001\n"
)
ALBUMS = b"id,band,title,year\n1,1,Scream Bloody Gore,1987\n"
REVIEWS = b"id,album,title,score,content\n1,1,Classic,95,Raw and brutal.\n"
# What an ingest run carries on a fresh instance: what reads only this dataset's tables.
FRESH_DOWNSTREAM = {
    dataset: {AssetKey(["silver", dataset]), AssetKey(["quarantine", dataset])}
    for dataset in ("albums", "bands", "reviews")
}
FRESH_DOWNSTREAM["bands"].add(AssetKey(["gold", "brazilian_bands"]))
# What the daemon resolves run requests against; the settings do not matter for that.
DEFS = build_definitions(LakeSettings())


def expected_key(file_name: str, content: bytes) -> str:
    """The partition key the README promises: `{file stem}-{first 12 hex of sha256}`."""
    return f"{Path(file_name).stem}-{hashlib.sha256(content).hexdigest()[:12]}"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Tick:
    run_requests: list[RunRequest]
    partition_requests: list[AddDynamicPartitionsRequest]
    cursor: str
    logs: list[logging.LogRecord]

    def warnings(self) -> list[str]:
        return [r.getMessage() for r in self.logs if r.levelno == logging.WARNING]


class Daemon:
    """One sensor ticked as the daemon does it: evaluate, add partitions, keep the cursor."""

    def __init__(
        self,
        sensor: SensorDefinition,
        instance: DagsterInstance,
        resources: dict[str, Any],
        cursor: str | None = None,
    ) -> None:
        self.sensor = sensor
        self.instance = instance
        self.resources = resources
        self.cursor = cursor

    def tick(self) -> Tick:
        records = _Records()
        with build_sensor_context(
            instance=self.instance,
            # The daemon's context carries the instance's ref: run requests are resolved against
            # the partitions stored there plus the ones this tick asks to add.
            instance_ref=self.instance.get_ref(),
            cursor=self.cursor,
            resources=self.resources,
            definitions=DEFS,
            sensor_name=self.sensor.name,
        ) as context:
            context.log.addHandler(records)
            data = self.sensor.evaluate_tick(context)
        assert data.cursor is not None
        for request in data.dynamic_partitions_requests or []:
            assert isinstance(request, AddDynamicPartitionsRequest)
            missing = [
                key
                for key in request.partition_keys
                if not self.instance.has_dynamic_partition(request.partitions_def_name, key)
            ]
            self.instance.add_dynamic_partitions(request.partitions_def_name, missing)
        self.cursor = data.cursor
        return Tick(
            run_requests=list(data.run_requests or []),
            partition_requests=list(data.dynamic_partitions_requests or []),
            cursor=data.cursor,
            logs=records.records,
        )

    def ticks(self, count: int) -> list[Tick]:
        return [self.tick() for _ in range(count)]


def assert_ingest(
    tick: Tick, dataset: str, keys: list[str], sources: list[str] | None = None
) -> None:
    """Exactly one run per key, and one partition request. Each run takes its ingest through
    landing, bronze and staging to the dataset's silver table and quarantine (on this fresh
    instance, the joins and gold wait: their other tables were never built)."""
    assert [r.partition_key for r in tick.run_requests] == keys
    for request, key in zip(tick.run_requests, keys, strict=True):
        assert re.fullmatch(r".+-[0-9a-f]{12}", key)
        assert request.run_key == key
        ingest = [AssetKey([layer, dataset]) for layer in ("landing", "bronze", "staging")]
        assert request.asset_selection[:3] == ingest
        assert set(request.asset_selection[3:]) == FRESH_DOWNSTREAM[dataset]
        checked = {check.asset_key for check in request.asset_check_keys or []}
        # The checks of what the run builds ride with it (freshness keeps its own schedule).
        assert {AssetKey(["silver", dataset]), AssetKey(["quarantine", dataset])} <= checked
        assert checked <= set(request.asset_selection) - {AssetKey(["staging", dataset])}
        assert all(check.name != "follows_upstream" for check in request.asset_check_keys)
        assert request.tags["lake/refresh"] == "true"
        assert request.tags["dagster/partition"] == key
        assert request.tags["lake/dataset"] == dataset
    if sources is not None:
        assert [r.tags["lake/source"] for r in tick.run_requests] == sources
    assert [(r.partitions_def_name, list(r.partition_keys)) for r in tick.partition_requests] == [
        (f"{dataset}_ingests", keys)
    ]


def assert_nothing(tick: Tick) -> None:
    assert tick.run_requests == []
    assert tick.partition_requests == []


def partitions(instance: DagsterInstance, dataset: str) -> list[str]:
    return list(instance.get_dynamic_partitions(f"{dataset}_ingests"))


def set_mtime(path: Path, seconds: float) -> None:
    os.utime(path, (seconds, seconds))


def write(path: Path, content: bytes) -> Path:
    """Writes the file as written a while ago: complete, so the sensor need not wait for it."""
    path.write_bytes(content)
    set_mtime(path, time.time() - 2 * SETTLE_SECONDS)
    return path


def drop(path: Path, content: bytes, staging: Path) -> Path:
    """Writes the file elsewhere and renames it into the folder, as the README advises."""
    staging.mkdir(exist_ok=True)
    staged = staging / path.name
    staged.write_bytes(content)
    os.replace(staged, path)
    return path


def write_ahead_of_the_clock(path: Path, content: bytes) -> Path:
    """Writes the file with a modification time in the future (a share whose clock runs ahead).

    Its age never reaches `SETTLE_SECONDS`, so the sensor takes it only once it stayed unchanged
    from one tick to the next: a file the sensor has seen and holds as pending.
    """
    path.write_bytes(content)
    set_mtime(path, time.time() + 3600)
    return path


def fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def touch(path: Path) -> None:
    set_mtime(path, path.stat().st_mtime - 1)


@pytest.fixture(scope="module")
def shared_instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as instance:
        yield instance


@pytest.fixture
def instance(shared_instance: DagsterInstance) -> DagsterInstance:
    """A real instance without ingest partitions (the only state the sensors keep in it)."""
    for dataset in DATASETS:
        name = ingest_partitions(dataset).name
        for key in shared_instance.get_dynamic_partitions(name):
            shared_instance.delete_dynamic_partition(name, key)
    return shared_instance


@pytest.fixture
def local_settings(tmp_path: Path) -> LakeSettings:
    settings = make_settings(tmp_path / "state", aws_mode=AwsMode.LOCALSTACK)
    settings.csv_path.mkdir()
    return settings


@pytest.fixture
def csv_daemon(local_settings: LakeSettings, instance: DagsterInstance) -> Daemon:
    resources = build_resources(local_settings)
    return Daemon(csv_dir_sensor, instance, {"lake": resources["lake"]})


# --- csv_dir_sensor ----------------------------------------------------------------------------


def test_renamed_file_is_ingested_once_on_the_first_tick(
    csv_daemon: Daemon, local_settings: LakeSettings, instance: DagsterInstance, tmp_path: Path
) -> None:
    path = drop(local_settings.csv_path / "bands.csv", BANDS, tmp_path / "staging")
    key = expected_key("bands.csv", BANDS)
    assert key.startswith("bands-")
    # Just written: the first tick waits out the rest of the settle time rather than the next tick.
    assert time.time() - path.stat().st_mtime < SETTLE_SECONDS

    first, second = csv_daemon.ticks(2)

    assert_ingest(first, "bands", [key], sources=[str(path.resolve())])
    assert Cursor.parse(first.cursor).seen == {str(path.resolve()): fingerprint(path)}
    assert Cursor.parse(first.cursor).pending == {}
    assert partitions(instance, "bands") == [key]
    assert partitions(instance, "albums") == partitions(instance, "reviews") == []
    assert_nothing(second)
    assert partitions(instance, "bands") == [key]


def test_restarted_daemon_continues_from_the_stored_cursor(
    csv_daemon: Daemon, local_settings: LakeSettings, instance: DagsterInstance
) -> None:
    bands = write(local_settings.csv_path / "bands.csv", BANDS)
    csv_daemon.tick()
    albums = write_ahead_of_the_clock(local_settings.csv_path / "albums.csv", ALBUMS)
    assert_nothing(csv_daemon.tick())  # albums.csv pending when the daemon stops
    assert Cursor.parse(csv_daemon.cursor).pending == {str(albums.resolve()): fingerprint(albums)}

    stored = csv_daemon.cursor
    assert stored is not None
    assert Cursor.parse(Cursor.parse(stored).dump()) == Cursor.parse(stored)
    restarted = Daemon(csv_dir_sensor, instance, csv_daemon.resources, cursor=stored)

    assert_ingest(restarted.tick(), "albums", [expected_key("albums.csv", ALBUMS)])
    assert_nothing(restarted.tick())
    assert Cursor.parse(restarted.cursor).seen.keys() == {
        str(bands.resolve()),
        str(albums.resolve()),
    }
    assert partitions(instance, "bands") == [expected_key("bands.csv", BANDS)]


def test_lost_cursor_does_not_ingest_known_content_again(
    csv_daemon: Daemon, local_settings: LakeSettings, instance: DagsterInstance
) -> None:
    write(local_settings.csv_path / "bands.csv", BANDS)
    csv_daemon.tick()

    reset = Daemon(csv_dir_sensor, instance, csv_daemon.resources)  # cursor cleared in the UI
    first, second = reset.ticks(2)

    assert_nothing(first)
    assert_nothing(second)
    key = expected_key("bands.csv", BANDS)
    assert any(f"already ingested as {key}" in r.getMessage() for r in first.logs)
    assert partitions(instance, "bands") == [key]


def test_changed_content_gets_a_new_partition(
    csv_daemon: Daemon, local_settings: LakeSettings, instance: DagsterInstance
) -> None:
    path = write(local_settings.csv_path / "bands.csv", BANDS)
    csv_daemon.tick()
    changed = BANDS + b"2,Morbid Angel,US,Active,1983,Death,Occult,1983-present\n"
    write(path, changed)

    first, second = csv_daemon.ticks(2)

    assert_ingest(first, "bands", [expected_key("bands.csv", changed)])
    assert_nothing(second)
    assert partitions(instance, "bands") == [
        expected_key("bands.csv", BANDS),
        expected_key("bands.csv", changed),
    ]


def test_file_still_being_written_is_not_ingested(
    csv_daemon: Daemon, local_settings: LakeSettings, instance: DagsterInstance
) -> None:
    path = local_settings.csv_path / "reviews.csv"
    started, done = threading.Event(), threading.Event()

    def append_rows() -> None:
        """A producer writing the file in place, a row at a time, until told to stop."""
        with path.open("wb") as out:
            out.write(REVIEWS)
            out.flush()
            started.set()
            n = 2
            while not done.is_set():
                out.write(f"{n},1,Again,{n % 101},Still brutal.\n".encode())
                out.flush()
                n += 1
                time.sleep(SETTLE_SECONDS / 20)

    writer = threading.Thread(target=append_rows)
    writer.start()
    try:
        assert started.wait(10)
        ticks = csv_daemon.ticks(3)
    finally:
        done.set()
        writer.join()

    for tick in ticks:
        assert_nothing(tick)
    assert Cursor.parse(ticks[-1].cursor).pending.keys() == {str(path.resolve())}
    assert partitions(instance, "reviews") == []
    written = path.read_bytes()
    assert written.count(b"Still brutal.") > 3
    assert_ingest(csv_daemon.tick(), "reviews", [expected_key("reviews.csv", written)])


def test_touched_file_with_same_content_adds_nothing(
    csv_daemon: Daemon, local_settings: LakeSettings, instance: DagsterInstance
) -> None:
    path = write(local_settings.csv_path / "albums.csv", ALBUMS)
    csv_daemon.tick()
    touch(path)

    first, second = csv_daemon.ticks(2)

    for tick in (first, second):
        assert_nothing(tick)
    assert Cursor.parse(second.cursor).seen == {str(path.resolve()): fingerprint(path)}
    assert partitions(instance, "albums") == [expected_key("albums.csv", ALBUMS)]


def test_unknown_names_are_reported_once_and_not_ingested(
    csv_daemon: Daemon, local_settings: LakeSettings, instance: DagsterInstance
) -> None:
    folder = local_settings.csv_path
    notes, album = write(folder / "notes.csv", b"x\n"), write(folder / "album.csv", ALBUMS)
    write(folder / "bands.txt", BANDS)
    write(folder / "bands_.csv", BANDS)

    ticks = csv_daemon.ticks(3)

    for tick in ticks:
        assert_nothing(tick)
    reported = sorted(message for tick in ticks for message in tick.warnings())
    unknown = sorted(str(p.resolve()) for p in (album, notes, folder / "bands_.csv"))
    assert len(reported) == 3
    for location, message in zip(unknown, reported, strict=True):
        assert message.startswith(f"ignoring {location}: not a source file name")
        assert "bands.csv or bands_<anything>.csv" in message
    assert ticks[0].warnings()  # reported on the first tick
    cursor = Cursor.parse(ticks[-1].cursor)
    assert sorted(cursor.unknown) == unknown
    assert cursor.seen == cursor.pending == {}
    assert all(partitions(instance, d) == [] for d in ("albums", "bands", "reviews"))


def test_increments_map_to_their_dataset_and_names_tell_same_content_apart(
    csv_daemon: Daemon, local_settings: LakeSettings, instance: DagsterInstance
) -> None:
    write(local_settings.csv_path / "reviews.csv", REVIEWS)
    write(local_settings.csv_path / "reviews_2026-11.csv", REVIEWS)

    tick = csv_daemon.tick()

    keys = [expected_key("reviews.csv", REVIEWS), expected_key("reviews_2026-11.csv", REVIEWS)]
    assert keys[0] != keys[1]
    assert keys[1].startswith("reviews_2026-11-")
    assert_ingest(tick, "reviews", keys)
    assert partitions(instance, "reviews") == keys


def test_deleted_file_is_forgotten(
    csv_daemon: Daemon, local_settings: LakeSettings, instance: DagsterInstance
) -> None:
    bands = write(local_settings.csv_path / "bands.csv", BANDS)
    notes = write(local_settings.csv_path / "notes.csv", b"x\n")
    csv_daemon.tick()
    albums = write_ahead_of_the_clock(local_settings.csv_path / "albums.csv", ALBUMS)
    assert_nothing(csv_daemon.tick())  # albums.csv pending

    for path in (bands, notes, albums):
        path.unlink()
    tick = csv_daemon.tick()

    assert_nothing(tick)
    assert Cursor.parse(tick.cursor) == Cursor()
    # Back again: a new drop, reported and considered afresh (its content is known already).
    write(bands, BANDS)
    write(notes, b"x\n")
    first, second = csv_daemon.ticks(2)
    assert len(first.warnings()) == 1
    assert first.warnings()[0].startswith(f"ignoring {notes.resolve()}:")
    assert_nothing(first)
    assert_nothing(second)
    assert partitions(instance, "bands") == [expected_key("bands.csv", BANDS)]


def test_missing_folder_is_no_error(
    instance: DagsterInstance, local_settings: LakeSettings
) -> None:
    local_settings.csv_path.rmdir()
    daemon = Daemon(csv_dir_sensor, instance, {"lake": build_resources(local_settings)["lake"]})
    tick = daemon.tick()
    assert_nothing(tick)
    assert Cursor.parse(tick.cursor) == Cursor()


# --- s3_raw_sensor -----------------------------------------------------------------------------


@pytest.fixture
def s3_daemon(embedded_aws: LakeSettings, instance: DagsterInstance) -> Daemon:
    resources = build_resources(embedded_aws)
    return Daemon(s3_raw_sensor, instance, {"lake": resources["lake"], "s3": resources["s3"]})


def test_s3_raw_uploads_are_ingested_like_local_files(
    s3_daemon: Daemon, embedded_aws: LakeSettings, instance: DagsterInstance
) -> None:
    s3 = aws_client(embedded_aws, "s3")
    bucket = embedded_aws.bucket
    s3.put_object(Bucket=bucket, Key="raw/bands.csv", Body=BANDS)
    s3.put_object(Bucket=bucket, Key="raw/sub/albums.csv", Body=ALBUMS)
    s3.put_object(Bucket=bucket, Key="raw/bands.txt", Body=BANDS)
    s3.put_object(Bucket=bucket, Key="raw/notes.csv", Body=b"x\n")
    s3.put_object(Bucket=bucket, Key="landing/bands.csv", Body=BANDS)

    first, second = s3_daemon.ticks(2)

    # An object is listed only once uploaded whole: the first tick that sees it ingests it.
    assert len(first.warnings()) == 1
    assert first.warnings()[0].startswith(f"ignoring s3://{bucket}/raw/notes.csv:")
    key = expected_key("bands.csv", BANDS)
    assert_ingest(first, "bands", [key], sources=[f"s3://{bucket}/raw/bands.csv"])
    assert_nothing(second)
    cursor = Cursor.parse(second.cursor)
    assert cursor.seen.keys() == {f"s3://{bucket}/raw/bands.csv"}
    assert cursor.unknown == [f"s3://{bucket}/raw/notes.csv"]
    assert all(partitions(instance, d) == [] for d in ("albums", "reviews"))

    # The same bytes dropped in the local folder are the same ingest: no second partition.
    local = build_resources(embedded_aws)
    csv_daemon = Daemon(csv_dir_sensor, instance, {"lake": local["lake"]})
    embedded_aws.csv_path.mkdir()
    write(embedded_aws.csv_path / "bands.csv", BANDS)
    for tick in csv_daemon.ticks(2):
        assert_nothing(tick)
    assert partitions(instance, "bands") == [key]

    # A new upload (new ETag) is a new version; a re-upload of the same bytes is not.
    changed = BANDS.replace(b"Gore", b"Evil")
    assert len(changed) == len(BANDS)
    s3.put_object(Bucket=bucket, Key="raw/bands.csv", Body=changed)
    first, second = s3_daemon.ticks(2)
    assert_ingest(first, "bands", [expected_key("bands.csv", changed)])
    assert_nothing(second)
    s3.put_object(Bucket=bucket, Key="raw/bands.csv", Body=changed)
    for tick in s3_daemon.ticks(2):
        assert_nothing(tick)

    # A deleted object is forgotten.
    s3.delete_object(Bucket=bucket, Key="raw/bands.csv")
    assert Cursor.parse(s3_daemon.tick().cursor).seen == {}
    assert partitions(instance, "bands") == [key, expected_key("bands.csv", changed)]
