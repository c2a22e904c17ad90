"""Each moto internal `moto_adapter.py` relies on, checked against the installed moto.

moto is pinned exactly because these are not its API. When a new moto is tried, a test here that
fails names the assumption that no longer holds; the message says what the emulator would do
wrong. Everything runs on real moto (an in-process server and its backends), nothing is mocked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib
import inspect
import json
import os
import tempfile
import urllib.request
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.kinesis.models import Record, kinesis_backends
from moto.s3.models import s3_backends
from moto.server import ThreadedMotoServer
from werkzeug.serving import WSGIRequestHandler
from werkzeug.test import Client

from deathmetal_lake.local_aws import moto_adapter
from deathmetal_lake.local_aws.journal import Entry, Journal
from deathmetal_lake.local_aws.kinesis import JournaledRecord

REGION = "us-east-1"
ACCOUNT = moto_adapter.DEFAULT_ACCOUNT_ID
BUCKET = "adapter-bucket"
STREAM = "adapter-stream"
# A whole second in the past: moto's S3 times have second precision.
FROZEN = datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC)


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def endpoint(moto_server: str) -> str:
    """The server with moto's state emptied, so each test starts from nothing."""
    post(moto_server, "/moto-api/reset")
    return moto_server


def post(endpoint: str, path: str) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(endpoint + path, method="POST")) as answer:
        return answer.read()


def client(endpoint: str, service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def create_stream(endpoint: str, shards: int = 1) -> None:
    kinesis = client(endpoint, "kinesis")
    kinesis.create_stream(StreamName=STREAM, ShardCount=shards)


def create_delivery_stream(endpoint: str) -> None:
    client(endpoint, "s3").create_bucket(Bucket=BUCKET)
    create_stream(endpoint, shards=2)
    stream_arn = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{STREAM}"
    client(endpoint, "firehose").create_delivery_stream(
        DeliveryStreamName="adapter-delivery",
        DeliveryStreamType="KinesisStreamAsSource",
        KinesisStreamSourceConfiguration={
            "KinesisStreamARN": stream_arn,
            "RoleARN": f"arn:aws:iam::{ACCOUNT}:role/firehose",
        },
        ExtendedS3DestinationConfiguration={
            "RoleARN": f"arn:aws:iam::{ACCOUNT}:role/firehose",
            "BucketARN": f"arn:aws:s3:::{BUCKET}",
            "Prefix": "landing/",
            "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 60},
        },
    )


# --- the server ---------------------------------------------------------------------------------


def test_backend_app_answers_aws_requests() -> None:
    app = Client(moto_adapter.backend_app())
    answer = app.get("/", headers={"Host": "s3.amazonaws.com"})
    assert answer.status_code == 200, "moto's DomainDispatcherApplication no longer serves S3"
    assert b"ListAllMyBucketsResult" in answer.data
    assert issubclass(moto_adapter.request_handler(), WSGIRequestHandler), (
        "moto's MotoRequestHandler is no longer a werkzeug request handler: make_server needs one"
    )


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc to find the file")
def test_spill_s3_bodies_puts_large_bodies_in_files_of_the_directory(
    endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)
    moto_adapter.spill_s3_bodies(tmp_path, threshold_bytes=1024)
    s3 = client(endpoint, "s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="small", Body=b"s" * 1000)
    s3.put_object(Bucket=BUCKET, Key="large", Body=b"l" * 2000)
    bucket = s3_backends[ACCOUNT]["aws"].get_bucket(BUCKET)
    small, large = bucket.keys["small"]._value_buffer, bucket.keys["large"]._value_buffer
    assert isinstance(large, tempfile.SpooledTemporaryFile), (
        "moto's S3 keys no longer spool bodies: MOTO_S3_DEFAULT_KEY_BUFFER_SIZE has no effect"
    )
    assert large._rolled and not small._rolled, (
        "moto no longer reads MOTO_S3_DEFAULT_KEY_BUFFER_SIZE for each object"
    )
    spilled = os.readlink(f"/proc/self/fd/{large.fileno()}")
    assert spilled.startswith(str(tmp_path)), (
        f"moto's spooled bodies no longer follow tempfile.tempdir: {spilled}"
    )
    assert s3.get_object(Bucket=BUCKET, Key="large")["Body"].read() == b"l" * 2000


def test_error_parts_render_moto_errors_as_its_server_does() -> None:
    for error, code in (
        (moto_adapter.too_many_records(), "ValidationException"),
        (moto_adapter.request_too_large(), "InvalidArgumentException"),
        (moto_adapter.record_too_large(3), "ValidationException"),
    ):
        assert isinstance(error, moto_adapter.ServiceError)
        status, headers, body = moto_adapter.error_parts(error)
        assert status == 400
        assert json.loads(body)["__type"] == code, f"moto renamed the error {error!r}"
        assert ("X-Amzn-ErrorType", code) in headers, "boto3 reads the error's type here"
    assert "records.3." in json.loads(moto_adapter.error_parts(error)[2])["message"]


def test_frozen_clock_stamps_s3_kinesis_and_firehose_times(endpoint: str) -> None:
    """Replay applies each journaled request at its instant; moto must read the frozen clock."""
    for name in moto_adapter.CLOCKED_MODULES:
        module = importlib.import_module(name)
        assert callable(getattr(module, "utcnow", None)), (
            f"{name} no longer imports utcnow: frozen_clock cannot stamp its times, and a replay "
            "would restamp objects and records with the restart time"
        )
    with moto_adapter.frozen_clock(FROZEN.timestamp()):
        create_delivery_stream(endpoint)
        client(endpoint, "s3").put_object(Bucket=BUCKET, Key="k", Body=b"x")
        client(endpoint, "kinesis").put_record(StreamName=STREAM, Data=b"x", PartitionKey="p")
    s3, kinesis = client(endpoint, "s3"), client(endpoint, "kinesis")
    assert s3.head_object(Bucket=BUCKET, Key="k")["LastModified"] == FROZEN, "S3 LastModified"
    shard = kinesis.list_shards(StreamName=STREAM)["Shards"]
    records = []
    for each in shard:
        iterator = kinesis.get_shard_iterator(
            StreamName=STREAM, ShardId=each["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        records += kinesis.get_records(ShardIterator=iterator)["Records"]
    assert [r["ApproximateArrivalTimestamp"] for r in records] == [FROZEN], "Kinesis arrival"
    described = client(endpoint, "firehose").describe_delivery_stream(
        DeliveryStreamName="adapter-delivery"
    )
    assert described["DeliveryStreamDescription"]["CreateTimestamp"] == FROZEN, "Firehose"
    with moto_adapter.frozen_clock(None):
        s3.put_object(Bucket=BUCKET, Key="now", Body=b"x")
    assert s3.head_object(Bucket=BUCKET, Key="now")["LastModified"] > FROZEN


# --- S3 -----------------------------------------------------------------------------------------


def test_store_object_answers_like_put_object_from_the_given_file(
    endpoint: str, tmp_path: Path
) -> None:
    s3 = client(endpoint, "s3")
    s3.create_bucket(Bucket=BUCKET)
    with pytest.raises(Exception, match="bucket does not exist"):
        moto_adapter.require_bucket(REGION, "missing-bucket")
    moto_adapter.require_bucket(REGION, BUCKET)
    body = b"line one\nline two\n" * 100
    journal = Journal(tmp_path / "journal.bin")
    entry = Entry("PUT", "/", "", [], body=body)
    journal.append(entry)
    view = journal.view(entry.offset, entry.size)
    checksum = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
    with moto_adapter.frozen_clock(FROZEN.timestamp()):
        moto_adapter.store_object(
            REGION,
            BUCKET,
            "landing/a b",
            view,
            size=len(body),
            etag=md5,
            headers={
                "X-Amz-Meta-Lake-Delivery": "position",
                "X-Amz-Checksum-Crc32": checksum,
                "X-Amz-Sdk-Checksum-Algorithm": "CRC32",
            },
        )
    stored = s3_backends[ACCOUNT]["aws"].get_bucket(BUCKET).keys["landing/a b"]
    assert stored._value_buffer is view, (
        "moto's S3 key no longer keeps its body in _value_buffer: delivered objects would be "
        "copied into memory, or read back empty"
    )
    got = s3.get_object(Bucket=BUCKET, Key="landing/a b", ChecksumMode="ENABLED")
    assert got["Body"].read() == body
    assert got["ETag"] == f'"{md5}"'
    assert got["ChecksumCRC32"] == checksum
    assert got["Metadata"] == {"lake-delivery": "position"}
    assert got["ContentLength"] == len(body)
    assert got["LastModified"] == FROZEN
    ranged = s3.get_object(Bucket=BUCKET, Key="landing/a b", Range="bytes=5-7")
    assert ranged["Body"].read() == body[5:8]
    listed = s3.list_objects_v2(Bucket=BUCKET)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [("landing/a b", len(body))]
    journal.close()


def test_keep_upload_id_renames_an_upload_with_its_parts(endpoint: str) -> None:
    s3 = client(endpoint, "s3")
    s3.create_bucket(Bucket=BUCKET)
    first = os.urandom(5 * 1024 * 1024)
    drawn = s3.create_multipart_upload(Bucket=BUCKET, Key="big")["UploadId"]
    etag = s3.upload_part(Bucket=BUCKET, Key="big", UploadId=drawn, PartNumber=1, Body=first)
    moto_adapter.keep_upload_id(REGION, BUCKET, drawn, "journaled-id")
    listed = s3.list_multipart_uploads(Bucket=BUCKET)["Uploads"]
    assert [upload["UploadId"] for upload in listed] == ["journaled-id"], (
        "moto no longer lists an upload by its id attribute and its bucket's multiparts key"
    )
    second = s3.upload_part(
        Bucket=BUCKET, Key="big", UploadId="journaled-id", PartNumber=2, Body=b"tail"
    )
    s3.complete_multipart_upload(
        Bucket=BUCKET,
        Key="big",
        UploadId="journaled-id",
        MultipartUpload={
            "Parts": [
                {"PartNumber": 1, "ETag": etag["ETag"]},
                {"PartNumber": 2, "ETag": second["ETag"]},
            ]
        },
    )
    assert s3.get_object(Bucket=BUCKET, Key="big")["Body"].read() == first + b"tail", (
        "a renamed upload lost its parts: moto's multipart dict disposes of them on pop"
    )


def test_store_object_follows_put_objects_signature() -> None:
    parameters = inspect.signature(type(s3_backends[ACCOUNT]["aws"]).put_object).parameters
    for name in ("bucket_name", "key_name", "value", "storage", "etag", "checksum_value"):
        assert name in parameters, f"moto's S3Backend.put_object lost its {name} parameter"
    assert "disable_notification" in parameters, (
        "moto's put_object no longer takes disable_notification: store_object would send "
        "the object-created event twice"
    )


# --- Kinesis ------------------------------------------------------------------------------------


def test_kinesis_request_context_reads_region_and_account_from_the_credential_scope() -> None:
    headers = [
        ("Host", "localhost:4566"),
        ("Authorization", "AWS4-HMAC-SHA256 Credential=test/20250101/eu-west-2/kinesis/aws4"),
    ]
    assert moto_adapter.kinesis_request_context(headers, "/", REGION) == ("eu-west-2", ACCOUNT)
    assert moto_adapter.kinesis_request_context([], "/", REGION) == (REGION, ACCOUNT)


def test_kinesis_stream_and_shards_as_moto_holds_them(endpoint: str) -> None:
    create_stream(endpoint, shards=2)
    with pytest.raises(moto_adapter.ServiceError, match="not found"):
        moto_adapter.kinesis_stream(ACCOUNT, REGION, stream_arn=None, stream_name="missing")
    stream = moto_adapter.kinesis_stream(ACCOUNT, REGION, stream_arn=None, stream_name=STREAM)
    assert moto_adapter.stream_name(stream) == STREAM
    shard = moto_adapter.shard_for_key(stream, "a key", None)
    listed = client(endpoint, "kinesis").list_shards(StreamName=STREAM)["Shards"]
    assert moto_adapter.shard_id(shard) in {s["ShardId"] for s in listed}
    with pytest.raises(moto_adapter.ServiceError):
        moto_adapter.shard_for_key(stream, "a key", str(2**128))
    assert moto_adapter.last_sequence_number(shard) == 0
    put = client(endpoint, "kinesis").put_record(
        StreamName=STREAM, Data=b"moto's own", PartitionKey="a key"
    )
    assert put["ShardId"] == moto_adapter.shard_id(shard)
    assert moto_adapter.last_sequence_number(shard) == int(put["SequenceNumber"]), (
        "moto's Kinesis sequence numbers are no longer the keys of shard.records"
    )
    own = moto_adapter.record_at(shard, int(put["SequenceNumber"]))
    assert base64.b64decode(moto_adapter.record_base64(own)) == b"moto's own"
    assert moto_adapter.record_at(shard, int(put["SequenceNumber"]) + 1) is None


def test_moto_record_offers_nothing_a_journaled_record_lacks() -> None:
    """moto reads shard records it did not create: they must offer all it uses of its own."""
    record = Record("key", base64.b64encode(b"x").decode(), 1, "0")
    methods = {
        name
        for name, value in vars(Record).items()
        if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property))
    }
    uses = set(vars(record)) | methods
    assert uses <= set(moto_adapter.RECORD_ATTRIBUTES), (
        f"moto's Kinesis Record gained {sorted(uses - set(moto_adapter.RECORD_ATTRIBUTES))}: "
        "JournaledRecord must offer it too"
    )
    for name in moto_adapter.RECORD_ATTRIBUTES:
        assert hasattr(JournaledRecord, name) or name in JournaledRecord.__slots__, name
    assert set(record.to_json()) == {
        "Data",
        "PartitionKey",
        "SequenceNumber",
        "ApproximateArrivalTimestamp",
    }


def test_appended_records_are_served_counted_and_split_by_moto(
    endpoint: str, tmp_path: Path
) -> None:
    create_stream(endpoint)
    stream = moto_adapter.kinesis_stream(ACCOUNT, REGION, stream_arn=None, stream_name=STREAM)
    shard = moto_adapter.shard_for_key(stream, "p", None)
    journal = Journal(tmp_path / "journal.bin")
    payloads = [b"first record", b"second record"]
    for payload in payloads:
        encoded = base64.b64encode(payload)
        entry = Entry("POST", "/", "", [], body=encoded)
        journal.append(entry)
        moto_adapter.append_record(
            shard,
            JournaledRecord(
                journal,
                (entry.offset, entry.size),
                partition_key="p",
                sequence_number=moto_adapter.last_sequence_number(shard) + 1,
                explicit_hash_key=None,
                arrived=FROZEN.replace(tzinfo=None),
                size=len(payload),
            ),
        )
    moto_adapter.count_put(
        ACCOUNT, REGION, stream, incoming_bytes=sum(map(len, payloads)), incoming_records=2
    )
    kinesis = client(endpoint, "kinesis")
    shard_id = moto_adapter.shard_id(shard)
    iterator = kinesis.get_shard_iterator(
        StreamName=STREAM, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    served = kinesis.get_records(ShardIterator=iterator)["Records"]
    assert [r["Data"] for r in served] == payloads
    assert [r["SequenceNumber"] for r in served] == ["1", "2"]
    assert served[0]["ApproximateArrivalTimestamp"] == FROZEN
    metrics = client(endpoint, "cloudwatch").list_metrics(Namespace="AWS/Kinesis")["Metrics"]
    assert {m["MetricName"] for m in metrics} >= {"IncomingBytes", "IncomingRecords"}, (
        "moto's KinesisBackend._send_stream_metrics no longer records PutRecord(s) metrics"
    )
    kinesis.update_shard_count(StreamName=STREAM, TargetShardCount=2, ScalingType="UNIFORM_SCALING")
    resharded = kinesis_backends[ACCOUNT][REGION].streams[STREAM].shards.values()
    moved = [
        binascii.a2b_base64(moto_adapter.record_base64(r))
        for s in resharded
        for r in s.records.values()
    ]
    assert sorted(moved) == sorted(payloads), "a shard split lost or changed journaled records"
    journal.close()


# --- Firehose -----------------------------------------------------------------------------------


def test_delivery_stream_and_its_source_as_moto_holds_them(endpoint: str) -> None:
    create_delivery_stream(endpoint)
    assert moto_adapter.delivery_stream(ACCOUNT, REGION, "missing") is None
    stream = moto_adapter.delivery_stream(ACCOUNT, REGION, "adapter-delivery")
    assert stream is not None
    assert moto_adapter.delivery_stream_type(stream) == "KinesisStreamAsSource"
    destination, version = moto_adapter.s3_destination(stream)
    assert destination["BucketARN"] == f"arn:aws:s3:::{BUCKET}"
    assert destination["Prefix"] == "landing/"
    assert destination["BufferingHints"] == {"SizeInMBs": 1, "IntervalInSeconds": 60}
    assert version == "1"
    shards = moto_adapter.source_shards(ACCOUNT, REGION, stream)
    listed = client(endpoint, "kinesis").list_shards(StreamName=STREAM)["Shards"]
    assert sorted(shards) == sorted(s["ShardId"] for s in listed)
    firehose = client(endpoint, "firehose")
    firehose.update_destination(
        DeliveryStreamName="adapter-delivery",
        CurrentDeliveryStreamVersionId=version,
        DestinationId="destinationId-000000000001",
        ExtendedS3DestinationUpdate={"Prefix": "elsewhere/"},
    )
    destination, version = moto_adapter.s3_destination(stream)
    assert (destination["Prefix"], version) == ("elsewhere/", "2"), (
        "moto's delivery stream no longer keeps its version and updated destination: delivered "
        "keys would carry a stale version or prefix"
    )


def test_retention_source_stream_and_reset_as_compaction_uses_them(endpoint: str) -> None:
    create_delivery_stream(endpoint)
    key = (ACCOUNT, REGION, STREAM)
    assert moto_adapter.retention_hours(REGION) == {key: 24}
    client(endpoint, "kinesis").increase_stream_retention_period(
        StreamName=STREAM, RetentionPeriodHours=48
    )
    assert moto_adapter.retention_hours(REGION) == {key: 48}, (
        "moto's stream no longer keeps its retention period: compaction would drop records "
        "still within it"
    )
    stream = moto_adapter.delivery_stream(ACCOUNT, REGION, "adapter-delivery")
    assert moto_adapter.source_stream_name(stream) == STREAM
    moto_adapter.reset()
    assert moto_adapter.retention_hours(REGION) == {}, (
        "moto's reset no longer empties the backends: the compacted journal would be replayed "
        "over the state of the old one"
    )
    assert moto_adapter.delivery_stream(ACCOUNT, REGION, "adapter-delivery") is None


# --- why the journal and not moto's recorder ---------------------------------------------------


def test_moto_recorder_does_not_rebuild_the_same_state(
    endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `moto_adapter`'s docstring says of the recorder: if this fails, read it again."""
    monkeypatch.chdir(tmp_path)  # the recorder writes ./moto_recording unless told otherwise
    post(endpoint, "/moto-api/recorder/reset-recording")
    post(endpoint, "/moto-api/recorder/start-recording")
    s3, kinesis, firehose = (client(endpoint, name) for name in ("s3", "kinesis", "firehose"))
    try:
        s3.create_bucket(Bucket=BUCKET)
        kinesis.create_stream(StreamName=STREAM, ShardCount=1)
        firehose.create_delivery_stream(
            DeliveryStreamName="direct",
            ExtendedS3DestinationConfiguration={
                "RoleARN": f"arn:aws:iam::{ACCOUNT}:role/firehose",
                "BucketARN": f"arn:aws:s3:::{BUCKET}",
                "Prefix": "landing/",
            },
        )
        payload = b"x" * 3000
        kinesis.put_record(StreamName=STREAM, Data=payload, PartitionKey="p")
        firehose.put_record(DeliveryStreamName="direct", Record={"Data": b"row\n"})
        upload = s3.create_multipart_upload(Bucket=BUCKET, Key="multipart")
        part = s3.upload_part(
            Bucket=BUCKET, Key="multipart", UploadId=upload["UploadId"], PartNumber=1, Body=b"y"
        )
        s3.complete_multipart_upload(
            Bucket=BUCKET,
            Key="multipart",
            UploadId=upload["UploadId"],
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
        )
        before = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"])
        arrived = first_record(kinesis)["ApproximateArrivalTimestamp"]
    finally:
        post(endpoint, "/moto-api/recorder/stop-recording")
    recording = [
        json.loads(line) for line in (tmp_path / "moto_recording").read_text().splitlines()
    ]
    targets = [r["headers"].get("X-Amz-Target", r["method"]) for r in recording]
    assert "GET" in targets and "Kinesis_20131202.GetShardIterator" in targets, "reads recorded"
    put = next(r for r in recording if r["headers"].get("X-Amz-Target", "").endswith("PutRecord"))
    assert len(put["body"]) > 1.7 * len(payload), "a Kinesis payload is base64 twice over"

    post(endpoint, "/moto-api/reset")
    post(endpoint, "/moto-api/recorder/replay-recording")
    after = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"])
    assert "multipart" in before and "multipart" not in after, "a replayed upload has a new id"
    landed = [k for k in before if k.startswith("landing/")]
    relanded = [k for k in after if k.startswith("landing/")]
    assert len(landed) == len(relanded) == 1 and landed != relanded, "new Firehose keys"
    assert first_record(kinesis)["ApproximateArrivalTimestamp"] > arrived, "new arrival times"


def first_record(kinesis: Any) -> dict[str, Any]:
    iterator = kinesis.get_shard_iterator(
        StreamName=STREAM, ShardId="shardId-000000000000", ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    return kinesis.get_records(ShardIterator=iterator)["Records"][0]
