"""The embedded AWS's disk: journal compaction, a torn journal, one writer per state folder.

Like `test_local_aws.py`, every test runs the real emulator (`serve` in the background on a free
port with a tmp state dir) and checks what a client sees across restarts: objects byte for byte
with their ETags and timestamps, streams with their records and sequence numbers, and Firehose
delivery positions (nothing re-delivered, nothing skipped).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from conftest import REPO_ROOT, aws_client, free_port, make_settings
from test_local_aws import (
    MiB,
    _assert_all_landed_once,
    _cli_env,
    _delivery_status,
    _kill_server,
    _put_all,
    _put_round,
    _state,
    _stream_records,
    _wait_landed,
    _wait_until,
)

from deathmetal_lake import settings as settings_module
from deathmetal_lake.datasets import DATASETS
from deathmetal_lake.local_aws import ensure_running, health, stop
from deathmetal_lake.local_aws.control import LOG_FILE
from deathmetal_lake.local_aws.journal import Journal
from deathmetal_lake.local_aws.server import JOURNAL_FILE
from deathmetal_lake.local_aws.upkeep import compact
from deathmetal_lake.settings import ENV_FILE, LakeSettings, load_settings

COMPACTED = "journal compacted from"
SMALL_PARTS = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)


def _journal(settings: LakeSettings) -> Path:
    return settings.state_path / JOURNAL_FILE


def _folder_size(settings: LakeSettings) -> int:
    """What the emulator keeps on disk: the state folder without its log."""
    return sum(
        path.stat().st_size
        for path in settings.state_path.rglob("*")
        if path.is_file() and path.name != LOG_FILE
    )


def _log(settings: LakeSettings) -> str:
    return (settings.state_path / LOG_FILE).read_text()


def _bodies(settings: LakeSettings) -> dict[str, bytes]:
    s3 = aws_client(settings, "s3")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket)
    return {
        obj["Key"]: s3.get_object(Bucket=settings.bucket, Key=obj["Key"])["Body"].read()
        for page in pages
        for obj in page.get("Contents", [])
    }


def _restart(settings: LakeSettings) -> None:
    assert stop(settings)
    ensure_running(settings)


def _churn(settings: LakeSettings, rounds: int) -> dict[str, bytes]:
    """Write, overwrite and delete objects the ways the lake and its users do; the survivors."""
    s3 = aws_client(settings, "s3")
    bucket = settings.bucket
    for round_no in range(rounds):
        for n in range(4):
            body = f"{round_no}:{n}:".encode() + os.urandom(256 * 1024)
            s3.put_object(Bucket=bucket, Key=f"silver/table_{n}.parquet", Body=body)
            s3.put_object_tagging(
                Bucket=bucket,
                Key=f"silver/table_{n}.parquet",
                Tagging={"TagSet": [{"Key": "round", "Value": str(round_no)}]},
            )
        s3.put_object(Bucket=bucket, Key="tmp/scratch.bin", Body=os.urandom(128 * 1024))
        s3.delete_object(Bucket=bucket, Key="tmp/scratch.bin")
    # A multipart object overwritten, an aborted upload, a copy whose source is deleted.
    for _ in range(2):
        s3.upload_fileobj(
            io.BytesIO(os.urandom(11 * MiB)), bucket, "gold/big.parquet", Config=SMALL_PARTS
        )
    upload = s3.create_multipart_upload(Bucket=bucket, Key="gold/aborted.parquet")["UploadId"]
    s3.upload_part(
        Bucket=bucket, Key="gold/aborted.parquet", UploadId=upload, PartNumber=1, Body=b"x" * MiB
    )
    s3.abort_multipart_upload(Bucket=bucket, Key="gold/aborted.parquet", UploadId=upload)
    s3.put_object(Bucket=bucket, Key="raw/source.csv", Body=b"id\n1\n")
    s3.copy_object(Bucket=bucket, Key="raw/copy.csv", CopySource=f"{bucket}/raw/source.csv")
    s3.put_object(Bucket=bucket, Key="raw/doomed-1.csv", Body=os.urandom(64 * 1024))
    s3.put_object(Bucket=bucket, Key="raw/doomed-2.csv", Body=os.urandom(64 * 1024))
    s3.delete_objects(
        Bucket=bucket,
        Delete={
            "Objects": [
                {"Key": "raw/source.csv"},
                {"Key": "raw/doomed-1.csv"},
                {"Key": "raw/doomed-2.csv"},
            ]
        },
    )
    return _bodies(settings)


# --- compaction --------------------------------------------------------------------------------


def test_compaction_keeps_the_lake_and_drops_its_history(embedded_aws: LakeSettings) -> None:
    settings = embedded_aws
    sent: dict[str, list[Any]] = {d.name: [] for d in DATASETS}
    _put_all(settings, sent, 0)
    _assert_all_landed_once(settings, sent)
    survivors = _churn(settings, rounds=8)
    assert "raw/source.csv" not in survivors and "raw/copy.csv" in survivors
    live = sum(len(body) for body in survivors.values())
    before = _state(settings)
    grown = _folder_size(settings)
    assert grown > 2 * live, (grown, live)

    _restart(settings)
    assert COMPACTED in _log(settings)
    compacted = _folder_size(settings)
    # Objects, plus the records still within the streams' retention (base64) and the headers.
    records = sum(len(s.data) for records in sent.values() for s in records) * 4 // 3
    assert compacted < live + records + 256 * 1024, (compacted, live, records)
    assert _state(settings) == before
    assert _bodies(settings) == survivors
    for delivery in _delivery_status(settings).values():
        assert delivery["objects_this_run"] == 0, "compaction made delivery send records again"

    # Sequence numbers and delivery go on where they were, and the next start compacts nothing.
    _put_all(settings, sent, 1)
    _assert_all_landed_once(settings, sent)
    after_more = _state(settings)
    _restart(settings)
    assert _log(settings).count(COMPACTED) == 1
    assert _state(settings) == after_more
    assert _bodies(settings).keys() == after_more["objects"].keys()


def _compact_at(settings: LakeSettings, now: float) -> None:
    """Compact the (stopped) emulator's journal as its start-up would at `now`, in this process."""
    from deathmetal_lake.local_aws import moto_adapter
    from deathmetal_lake.local_aws.compaction import Compactor
    from deathmetal_lake.local_aws.delivery import FirehoseDelivery
    from deathmetal_lake.local_aws.gateway import Gateway

    # moto's backends are global to the process: another module's in-process moto server
    # (test_producer's, on the same pytest-xdist worker) may have left streams there.
    moto_adapter.reset()
    journal = Journal(_journal(settings))
    gateway = Gateway(
        moto_adapter.backend_app(), journal, identity={}, region=settings.region, host="127.0.0.1"
    )
    delivery = FirehoseDelivery(settings.region, gateway.put_object, gateway.lock)
    gateway.observers.append(delivery.observe)
    try:
        gateway.compactor = compactor = Compactor(settings.region)
        gateway.replay()
        plan = compactor.plan(
            now=now,
            retention_hours=moto_adapter.retention_hours(settings.region),
            delivered=delivery.delivered(),
        )
        assert compact(journal, plan), "compaction found too little to drop"
    finally:
        journal.close()
        moto_adapter.reset()


def test_records_past_retention_and_delivered_are_dropped(embedded_aws: LakeSettings) -> None:
    settings = embedded_aws
    kinesis = aws_client(settings, "kinesis")
    sent = {"reviews": []}
    for round_no in range(12):
        sent["reviews"] += _put_round(settings, "reviews", round_no, count=10, pad=20_000)
    objects = _wait_landed(settings, "reviews", sent["reviews"])
    before = _state(settings)
    stop(settings)
    size = _journal(settings).stat().st_size

    # A day and an hour later: Kinesis' default retention (24 h) is over for every record.
    _compact_at(settings, time.time() + 25 * 3600)
    assert _journal(settings).stat().st_size < size / 2
    ensure_running(settings)
    after = _state(settings)
    assert {k: v for k, v in after.items() if k != "records"} == {
        k: v for k, v in before.items() if k != "records"
    }
    for shard, records in after["records"]["reviews-stream"].items():
        kept = before["records"]["reviews-stream"][shard]
        # Only each shard's last PutRecords remains: the next sequence number follows it.
        assert records and records == kept[len(kept) - len(records) :], shard
        assert len(records) < len(kept), shard
    assert _delivery_status(settings)["reviews-firehose"]["objects_this_run"] == 0

    more = _put_round(settings, "reviews", 99, count=10, pad=20_000)
    for record in more:
        newest = before["records"]["reviews-stream"][record.shard][-1][0]
        assert record.sequence > newest, "a sequence number was handed out twice"
    landed = _wait_landed(settings, "reviews", sent["reviews"] + more)
    assert len(landed) > len(objects)
    assert (
        _stream_records(kinesis, "reviews-stream").keys()
        == after["records"]["reviews-stream"].keys()
    )


# --- compaction while running ----------------------------------------------------------------

RUNTIME_FLOOR_MB = 2
GARBAGE = 128 * 1024


@pytest.fixture
def compacting_aws(tmp_path: Path) -> Iterator[LakeSettings]:
    """An emulator that compacts while running once its journal passes 2 MB (not 64 MB)."""
    settings = make_settings(tmp_path / "state", embedded_compact_min_mb=RUNTIME_FLOOR_MB)
    ensure_running(settings)
    try:
        yield settings
    finally:
        stop(settings)


def _keeper(settings: LakeSettings) -> dict[str, Any]:
    current = health(settings)
    assert current is not None
    return current["journal"]


def _garbage_up_to_the_threshold(settings: LakeSettings) -> bytes:
    """Overwrite one key and write-then-delete others until the next write would compact."""
    s3 = aws_client(settings, "s3")
    body = b""
    n = 0
    while (
        _keeper(settings)["bytes"] + 3 * GARBAGE < _keeper(settings)["next_compaction_past_bytes"]
    ):
        body = f"{n}:".encode() + os.urandom(GARBAGE)
        s3.put_object(Bucket=settings.bucket, Key="silver/albums.parquet", Body=body)
        s3.put_object(Bucket=settings.bucket, Key=f"tmp/scratch-{n}", Body=os.urandom(GARBAGE))
        s3.delete_object(Bucket=settings.bucket, Key=f"tmp/scratch-{n}")
        n += 1
    assert n > 4, "too little room below the threshold for garbage to be most of the journal"
    assert _keeper(settings)["compactions"] == 0, "compacted before the threshold"
    return body


def _read_meanwhile(settings: LakeSettings, key: str, body: bytes) -> tuple[threading.Event, list]:
    """GET `key` (an object read served outside the lock) in a loop; what went wrong, if any."""
    s3 = aws_client(settings, "s3")
    done, problems = threading.Event(), []

    def loop() -> None:
        while not done.is_set():
            try:
                got = s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
            except Exception as error:  # reported by the test
                problems.append(repr(error))
                return
            if got != body:
                problems.append(f"{key} read back {len(got)} bytes, not the {len(body)} written")
                return

    threading.Thread(target=loop, name="reader", daemon=True).start()
    return done, problems


def test_a_running_emulator_compacts_its_journal_and_keeps_the_lake(
    compacting_aws: LakeSettings,
) -> None:
    settings = compacting_aws
    s3 = aws_client(settings, "s3")
    bucket = settings.bucket
    pid = health(settings)["pid"]
    sent: dict[str, list[Any]] = {d.name: [] for d in DATASETS}
    _put_all(settings, sent, 0)
    _assert_all_landed_once(settings, sent)
    # An upload under way across the compaction: its client keeps the id it was given.
    upload = s3.create_multipart_upload(Bucket=bucket, Key="gold/in-flight.parquet")["UploadId"]
    latest = _garbage_up_to_the_threshold(settings)
    before, bodies = _state(settings), _bodies(settings)
    delivery_before = _delivery_status(settings)
    grown = _journal(settings).stat().st_size

    # A delivered object's body is a view into the journal, by offset: read it throughout.
    delivered = min(key for key in bodies if key.startswith("landing/"))
    done, problems = _read_meanwhile(settings, delivered, bodies[delivered])
    try:
        # This write passes the threshold; the object is gone again whenever compaction runs.
        s3.put_object(Bucket=bucket, Key="tmp/crossing", Body=os.urandom(3 * GARBAGE))
        s3.delete_object(Bucket=bucket, Key="tmp/crossing")
        _wait_until(lambda: _keeper(settings)["compactions"] == 1, 30, "a runtime compaction")
    finally:
        done.set()
    assert not problems, problems
    keeper = _keeper(settings)
    last = keeper["last_compaction"]
    assert last["during"] == "while running" and not keeper["compacting"], keeper
    assert health(settings)["pid"] == pid, "the emulator restarted"
    assert last["bytes_after"] < last["bytes_before"] / 2, last
    assert _journal(settings).stat().st_size < grown / 2, (grown, last)
    assert keeper["next_compaction_past_bytes"] == max(
        RUNTIME_FLOOR_MB * MiB, 2 * last["bytes_after"]
    )
    assert "(compacted while running in" in _log(settings)
    assert _state(settings) == before
    assert _bodies(settings) == bodies
    assert bodies["silver/albums.parquet"] == latest
    assert _delivery_status(settings) == delivery_before, "delivery lost its run's progress"

    # Delivery goes on, once each; the upload completes under the id it had.
    _put_all(settings, sent, 1)
    _assert_all_landed_once(settings, sent)
    listed = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [u["UploadId"] for u in listed] == [upload]
    part = s3.upload_part(
        Bucket=bucket, Key="gold/in-flight.parquet", UploadId=upload, PartNumber=1, Body=b"gold"
    )
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="gold/in-flight.parquet",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    after, after_bodies = _state(settings), _bodies(settings)
    assert after_bodies["gold/in-flight.parquet"] == b"gold"

    # A restart replays the compacted journal and what came after it to the same lake.
    _restart(settings)
    assert _state(settings) == after
    assert _bodies(settings) == after_bodies
    for delivery in _delivery_status(settings).values():
        assert delivery["objects_this_run"] == 0, "the restart made delivery send records again"


def test_a_failed_runtime_compaction_leaves_the_journal_and_serves_on(
    compacting_aws: LakeSettings,
) -> None:
    """The rewrite fails where a full disk would fail it: creating the new journal file."""
    settings = compacting_aws
    s3 = aws_client(settings, "s3")
    latest = _garbage_up_to_the_threshold(settings)
    before = _state(settings)
    blocker = Journal(_journal(settings)).rewriting
    blocker.mkdir()
    try:
        s3.put_object(Bucket=settings.bucket, Key="tmp/crossing", Body=os.urandom(3 * GARBAGE))
        size = _journal(settings).stat().st_size
        _wait_until(
            lambda: _keeper(settings)["last_failed_compaction"], 30, "the compaction to fail"
        )
        assert "journal compaction failed, the journal is kept as it was" in _log(settings)
        keeper = _keeper(settings)
        assert keeper["compactions"] == 0 and keeper["last_compaction"] is None, keeper
        assert keeper["next_compaction_past_bytes"] == 2 * keeper["last_failed_compaction"]["bytes"]
        assert _journal(settings).stat().st_size == size
        assert health(settings)["journal_error"] is None
        s3.delete_object(Bucket=settings.bucket, Key="tmp/crossing")
        assert _state(settings) == before
        got = s3.get_object(Bucket=settings.bucket, Key="silver/albums.parquet")["Body"].read()
        assert got == latest
    finally:
        blocker.rmdir()
    _restart(settings)
    assert _state(settings) == before


# --- a torn journal ----------------------------------------------------------------------------


def _last_entry(settings: LakeSettings) -> Any:
    *_, last = Journal(_journal(settings)).replay()
    return last


def _tear(settings: LakeSettings, at: int) -> None:
    with _journal(settings).open("r+b") as handle:
        handle.truncate(at)


def test_a_torn_last_entry_loses_only_itself_with_compaction_too(
    embedded_aws: LakeSettings,
) -> None:
    settings = embedded_aws
    s3 = aws_client(settings, "s3")
    bucket = settings.bucket
    for n in range(12):  # history for the next start-up to compact away
        s3.put_object(Bucket=bucket, Key="silver/albums.parquet", Body=f"{n}".encode() * 100_000)
    s3.put_object(Bucket=bucket, Key="raw/kept.csv", Body=b"id\n1\n")
    s3.put_object(Bucket=bucket, Key="raw/torn.csv", Body=b"id\n2\n" * 1000)
    expected = {k: v for k, v in _bodies(settings).items() if k != "raw/torn.csv"}

    # Killed while writing the header of the last entry; and earlier, during a compaction.
    _kill_server(settings)
    last = _last_entry(settings)
    assert last.path.endswith("/raw/torn.csv")
    _tear(settings, last.start + 20)
    leftover = Journal(_journal(settings)).rewriting
    leftover.write_bytes(b"half a compacted journal")
    ensure_running(settings)
    assert COMPACTED in _log(settings), "the torn tail kept compaction from running"
    assert not leftover.exists()
    assert _bodies(settings) == expected

    # Killed in the middle of an entry's body, after a compaction.
    s3.put_object(Bucket=bucket, Key="raw/torn.csv", Body=b"id\n3\n" * 1000)
    _kill_server(settings)
    last = _last_entry(settings)
    _tear(settings, last.offset + last.size // 2)
    ensure_running(settings)
    assert _bodies(settings) == expected

    # The tail was cut, not written after: what comes next survives a restart.
    s3.put_object(Bucket=bucket, Key="raw/after.csv", Body=b"id\n4\n")
    _restart(settings)
    assert _bodies(settings) == {**expected, "raw/after.csv": b"id\n4\n"}


# --- one writer per state folder, and .env --------------------------------------------------


def test_dot_env_is_read_and_a_second_emulator_is_refused_at_once(
    embedded_aws: LakeSettings, tmp_path: Path
) -> None:
    """A port set only in .env is the port `status` and `up` use; a second emulator on the same
    state folder (another port in .env, as the issue found) fails at once, naming the first."""
    settings = embedded_aws
    env = _cli_env(settings)
    del env["LAKE_EMBEDDED_PORT"]
    dot_env = tmp_path / ".env"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "deathmetal_lake.local_aws", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    pid = health(settings)["pid"]
    dot_env.write_text(f"LAKE_EMBEDDED_PORT={settings.embedded_port}\n")
    status = cli("status")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["pid"] == pid

    dot_env.write_text(f"LAKE_EMBEDDED_PORT={free_port()}\n")
    started = time.monotonic()
    up = cli("up")
    assert up.returncode == 1
    # Refused as it starts, not after `up`'s wait for a ready emulator (120 s) ran out.
    assert time.monotonic() - started < 90, "the second emulator was not refused at once"
    assert f"the state folder {settings.state_path.resolve()} is in use" in up.stderr
    assert f"pid {pid} on http://127.0.0.1:{settings.embedded_port}" in up.stderr
    assert health(settings)["pid"] == pid


def test_settings_read_dot_env_under_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # conftest keeps a developer's .env out of the tests; this test is about reading one.
    monkeypatch.setitem(settings_module._EnvironmentSettings.model_config, "env_file", ENV_FILE)
    (tmp_path / ".env").write_text(
        "LAKE_EMBEDDED_PORT=4999\nLAKE_BUCKET=from-dotenv\nAWS_DEFAULT_REGION=eu-west-1\n"
    )
    settings = load_settings()
    assert (settings.embedded_port, settings.bucket, settings.region) == (
        4999,
        "from-dotenv",
        "eu-west-1",
    )
    monkeypatch.setenv("LAKE_BUCKET", "from-environment")
    assert load_settings().bucket == "from-environment"


def test_make_takes_dagster_home_from_dot_env_under_the_environment(tmp_path: Path) -> None:
    """`make dev` and `make run` export DAGSTER_HOME: it follows a LAKE_STATE_DIR set in .env."""
    (tmp_path / ".env").write_text("LAKE_STATE_DIR=/srv/lake\n")
    env = {"PATH": os.environ["PATH"]}

    def dagster_home(**extra: str) -> str:
        shown = subprocess.run(
            [
                "make",
                "-s",
                "-f",
                str(REPO_ROOT / "Makefile"),
                "--eval",
                "show: ; @echo $$DAGSTER_HOME",
                "show",
            ],
            cwd=tmp_path,
            env={**env, **extra},
            capture_output=True,
            text=True,
            check=True,
        )
        return shown.stdout.strip()

    assert dagster_home() == "/srv/lake/dagster"
    assert dagster_home(LAKE_STATE_DIR="/elsewhere") == "/elsewhere/dagster"
    assert dagster_home(DAGSTER_HOME="/dh") == "/dh"
