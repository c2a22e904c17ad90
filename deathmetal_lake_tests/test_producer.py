"""The producer against Kinesis and S3 on an in-process moto server: what is sent comes back."""

from __future__ import annotations

import csv
import gc
import hashlib
import io
import itertools
import json
import os
import threading
import tracemalloc
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import boto3
import pytest
from moto.server import ThreadedMotoServer

from deathmetal_lake.datasets import DATASETS_BY_NAME, Dataset
from deathmetal_lake.producer import (
    MAX_CALL_BYTES,
    MAX_CALL_RECORDS,
    MAX_RECORD_BYTES,
    DeliveryError,
    Destination,
    IngestReport,
    RetryPolicy,
    SendOptions,
    Shipment,
    SourceFileError,
    check_source,
    encoding,
    ingest,
)
from deathmetal_lake.producer.blocks import LineBatch, plain_records
from deathmetal_lake.producer.encoding import RowEncoder, encode_plain
from deathmetal_lake.sources import SourceFile, ingest_key, locate

BUCKET = "csv-batch-bucket"
REVIEWS = DATASETS_BY_NAME["reviews"]
ALBUMS = DATASETS_BY_NAME["albums"]
SAMPLE_CSV_DIR = Path(__file__).resolve().parent.parent / "csv"
FAST_RETRY = RetryPolicy(max_attempts=10, base_seconds=0.001, cap_seconds=0.01)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@dataclass
class Aws:
    kinesis: Any
    s3: Any


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Aws:
    """Fresh emulator state with the bucket and 2-shard streams; a user's real AWS is kept out."""
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    urllib.request.urlopen(
        urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")
    ).close()
    options = {
        "endpoint_url": moto_endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
    }
    kinesis = boto3.client("kinesis", **options)
    s3 = boto3.client("s3", **options)
    s3.create_bucket(Bucket=BUCKET)
    for dataset in (REVIEWS, ALBUMS):
        kinesis.create_stream(StreamName=dataset.stream_name, ShardCount=2)
    return Aws(kinesis, s3)


def read_stream(kinesis: Any, stream: str) -> dict[str, list[bytes]]:
    """Every record's data on the stream, by shard, read from the start."""
    shards = kinesis.list_shards(StreamName=stream)["Shards"]
    found: dict[str, list[bytes]] = {}
    for shard in shards:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        data = found.setdefault(shard["ShardId"], [])
        while records := (response := kinesis.get_records(ShardIterator=iterator))["Records"]:
            data.extend(record["Data"] for record in records)
            iterator = response["NextShardIterator"]
    return found


def read_stream_records(aws: Aws) -> list[bytes]:
    """Every record on the reviews stream."""
    return [d for shard in read_stream(aws.kinesis, REVIEWS.stream_name).values() for d in shard]


def landed_lines(kinesis: Any, dataset: Dataset = REVIEWS) -> list[dict[str, Any]]:
    """The JSON lines on the stream. Every record must hold whole lines, each ending in `\\n`."""
    lines = []
    for records in read_stream(kinesis, dataset.stream_name).values():
        for data in records:
            assert data.endswith(b"\n")
            lines.extend(json.loads(line) for line in data.decode().split("\n")[:-1])
    return lines


def by_row(lines: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Lines by `_source_row`, checking each row arrived exactly once."""
    rows = [line["_source_row"] for line in lines]
    assert len(rows) == len(set(rows)), "a row arrived more than once"
    return {line["_source_row"]: line for line in lines}


def csv_bytes(rows: list[list[str]], *, line_end: str = "\n", bom: bool = False) -> bytes:
    text = io.StringIO()
    csv.writer(text, lineterminator=line_end).writerows(rows)
    return (b"\xef\xbb\xbf" if bom else b"") + text.getvalue().encode()


def run_ingest(
    aws: Aws,
    tmp_path: Path,
    data: bytes,
    *,
    dataset: Dataset = REVIEWS,
    source_file: str = "reviews.csv",
    kinesis: Any = None,
    expected_hash: str | None = None,
    **options: Any,
) -> IngestReport:
    """Ingest `data` as a file dropped under `source_file`."""
    path = tmp_path / source_file
    path.write_bytes(data)
    ingest_id = ingest_key(source_file, hashlib.sha256(data).hexdigest())
    return ingest(
        Shipment(lambda: path.open("rb"), source_file, ingest_id, dataset, expected_hash),
        Destination(kinesis or aws.kinesis, aws.s3, BUCKET),
        SendOptions(**options),
    )


TRICKY_VALUES = [
    "quoted, commas, inside",
    'a "doubled" quote and a lone " one',
    "CRLF\r\nline ends\r\ninside",
    "LF\nline ends\n",
    "mixed\r\nand\nand\r\n",
    "",
    "  leading and trailing spaces  ",
    "Ünholy Nödtveidt — «Мрак» 死 🤘",
    "backslash \\ tab \t and \\n literal",
    "line separator \u2028 and \u0085 next-line",
    '""',
    ",",
]


def test_every_row_arrives_once_with_values_byte_for_byte(aws: Aws, tmp_path: Path) -> None:
    header = ["Content ", " SCORE", "id", "title", "album", "Reviewer"]  # reordered, extra column
    rows = [
        [value, str(i % 101), str(i), f"title {i}", str(1000 + i), f"reviewer {i}"]
        for i, value in enumerate(TRICKY_VALUES * 20, 1)
    ]
    data = csv_bytes([header, *rows], line_end="\r\n", bom=True)

    report = run_ingest(aws, tmp_path, data)

    content_hash = hashlib.sha256(data).hexdigest()
    ingest_id = f"reviews-{content_hash[:12]}"
    lines = by_row(landed_lines(aws.kinesis))
    assert sorted(lines) == list(range(1, len(rows) + 1))
    for row_no, row in enumerate(rows, 1):
        assert lines[row_no] == {
            "content": row[0],
            "score": row[1],
            "id": row[2],
            "title": row[3],
            "album": row[4],
            "reviewer": row[5],
            "_source_file": "reviews.csv",
            "_source_row": row_no,
            "_ingest_id": ingest_id,
        }
    assert report.rows == report.rows_sent == len(rows)
    assert report.content_hash == content_hash
    assert report.columns == ("content", "score", "id", "title", "album", "reviewer")
    assert report.source_bytes == len(data)
    assert (report.parse_error_rows, report.oversize_rows, report.resent_records) == (0, (), 0)
    assert report.bytes == sum(map(len, read_stream_records(aws)))


def test_lines_are_compact_utf8_json(aws: Aws, tmp_path: Path) -> None:
    data = csv_bytes([["id", "band", "title", "year"], ["1", "Nödtveidt", 'Storm "of" Bane', "95"]])

    report = run_ingest(aws, tmp_path, data, dataset=ALBUMS, source_file="albums.csv")

    [record] = [d for shard in read_stream(aws.kinesis, ALBUMS.stream_name).values() for d in shard]
    expected = (
        '{"id":"1","band":"Nödtveidt","title":"Storm \\"of\\" Bane","year":"95",'
        f'"_source_file":"albums.csv","_source_row":1,"_ingest_id":"{report.ingest_id}"}}\n'
    )
    assert record == expected.encode()


def test_source_can_be_an_s3_object(aws: Aws) -> None:
    data = csv_bytes([["id", "album", "title", "score", "content"], ["7", "3", "t", "90", "a,\nb"]])
    aws.s3.put_object(Bucket=BUCKET, Key="raw/reviews.csv", Body=data)

    report = ingest(
        Shipment(
            lambda: aws.s3.get_object(Bucket=BUCKET, Key="raw/reviews.csv")["Body"],
            "reviews.csv",
            "reviews-s3",
            REVIEWS,
        ),
        Destination(aws.kinesis, aws.s3, BUCKET),
    )

    assert report.rows == 1
    [line] = landed_lines(aws.kinesis)
    assert line["content"] == "a,\nb"


HEADER = b"id,album,title,score,content\n"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"", "reviews.csv: the file is empty (0 bytes)", id="empty-file"),
        pytest.param(b"\n1,2,3,4,5\n", "reviews.csv: no header: line 1 is empty", id="no-header"),
        pytest.param(
            b"id,album,title,content\n1,2,t,c\n",
            "reviews.csv: header (line 1): missing required column(s) score",
            id="missing-column",
        ),
        pytest.param(
            b"id,album,title,score,content,ID\n1,2,t,3,c,1\n",
            "reviews.csv: header (line 1): duplicate column(s) id",
            id="duplicate-column",
        ),
        pytest.param(
            HEADER + b'1,1,a,1,"two\nlines"\n2,1,b,2,ok\n3,1,Mot\xf6rhead,3,latin-1\n',
            "reviews.csv: not UTF-8: byte 0xF6 at byte offset 67 (line 5, data row 3): "
            "invalid start byte",
            id="latin-1-in-row-3",
        ),
        pytest.param(
            HEADER + b"1,1,a,1,ok\n2,1,b,2,\xe2\x82",
            "reviews.csv: not UTF-8: byte 0xE2 at byte offset 48 (line 3, data row 2): "
            "the file ends mid-character",
            id="truncated-character",
        ),
        pytest.param(
            HEADER + b'1,1,a,1,"fine ""quoted"" value"\n2,1,b,2,ok\n3,1,c,3,"never\nclosed\n',
            "reviews.csv: unterminated quote: the quoted field in data row 3 (from line 4) is "
            "never closed",
            id="unterminated-quote",
        ),
    ],
)
def test_whole_file_problems_stop_the_file_before_sending(
    aws: Aws, tmp_path: Path, data: bytes, expected: str
) -> None:
    with pytest.raises(SourceFileError) as raised:
        run_ingest(aws, tmp_path, data)

    assert str(raised.value).startswith(expected)
    assert read_stream_records(aws) == []


def test_utf8_is_checked_across_chunk_boundaries() -> None:
    """A character cut in two between reads (at 1 MiB) is fine; a bad byte's offset is exact."""
    start = HEADER + b"1,1,t,1,"
    data = start + b"x" * ((1 << 20) - 1 - len(start)) + "ö".encode() + b"\n"
    info = check_source(
        lambda: io.BytesIO(data), dataset=REVIEWS, source_file="reviews.csv"
    ).accepted()
    assert info.byte_size == len(data) == (1 << 20) + 2

    broken = data + b"2,1,t,2,caf\xe9\n"
    with pytest.raises(SourceFileError) as raised:
        check_source(
            lambda: io.BytesIO(broken), dataset=REVIEWS, source_file="reviews.csv"
        ).accepted()
    offset = len(data) + len(b"2,1,t,2,caf")
    assert f"byte 0xE9 at byte offset {offset} (line 3, data row 2)" in str(raised.value)


def test_header_only_file_ingests_zero_rows(aws: Aws, tmp_path: Path) -> None:
    report = run_ingest(aws, tmp_path, HEADER + b"\r\n\n")

    assert (report.rows, report.records, report.put_calls) == (0, 0, 0)
    assert landed_lines(aws.kinesis) == []


def test_bad_rows_are_sent_raw_with_a_reason(aws: Aws, tmp_path: Path) -> None:
    data = (
        HEADER
        + b"1,1,a,1,ok\r\n"
        + b'2,1,b,2,"too, many",x,"y\r\nz"\r\n'
        + b"3,1,c\r\n"
        + b"\r\n"
        + b'4,1,"bad"quote,4,x\r\n'
        + b"5,1,e,5,ok\r\n"
        + b"\r\n\n"
    )

    report = run_ingest(aws, tmp_path, data)

    lines = by_row(landed_lines(aws.kinesis))
    assert sorted(lines) == [1, 2, 3, 4, 5]
    assert lines[1]["content"] == "ok" and lines[5]["content"] == "ok"
    assert "_raw" not in lines[1] and "_parse_error" not in lines[5]
    provenance = {"_source_file": "reviews.csv", "_ingest_id": report.ingest_id}
    assert lines[2] == {
        **provenance,
        "_source_row": 2,
        "_raw": '2,1,b,2,"too, many",x,"y\r\nz"',
        "_parse_error": "expected 5 fields, found 7",
    }
    assert lines[3] == {
        **provenance,
        "_source_row": 3,
        "_raw": "3,1,c",
        "_parse_error": "expected 5 fields, found 3",
    }
    # The blank line between rows 3 and 4 is not a row: numbering goes on without it.
    assert lines[4]["_raw"] == '4,1,"bad"quote,4,x'
    assert lines[4]["_parse_error"].startswith("CSV error: ")
    assert (report.rows, report.parse_error_rows, report.blank_lines) == (5, 3, 3)


def test_literal_quotes_in_unquoted_fields_are_not_taken_for_an_open_quote(
    aws: Aws, tmp_path: Path
) -> None:
    data = HEADER + b'1,1,12" vinyl,1,ok\n2,1,b,2,"a ""quoted"" word"\n'

    report = run_ingest(aws, tmp_path, data)

    lines = by_row(landed_lines(aws.kinesis))
    assert (lines[1]["title"], lines[2]["content"]) == ('12" vinyl', 'a "quoted" word')
    assert report.parse_error_rows == 0


class ThrottlingKinesis:
    """A real Kinesis client, except that PutRecords reports some entries as throttled.

    moto never fails single entries; AWS does under load. Entry i of call n fails when
    (n + i) % fail_every == 0: a fifth of each call by default, every entry with fail_every=1.
    Calls are forwarded one at a time: moto's Kinesis loses records under concurrent writes.
    """

    def __init__(self, client: Any, *, fail_every: int = 5):
        self._client = client
        self._fail_every = fail_every
        self._calls = itertools.count()
        self._lock = threading.Lock()
        self.failed_entries = 0

    def put_records(self, *, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            call = next(self._calls)
            failing = {i for i in range(len(Records)) if (call + i) % self._fail_every == 0}
            self.failed_entries += len(failing)
            passed = [entry for i, entry in enumerate(Records) if i not in failing]
            results = iter(
                self._client.put_records(StreamName=StreamName, Records=passed)["Records"]
                if passed
                else []
            )
        throttled = {
            "ErrorCode": "ProvisionedThroughputExceededException",
            "ErrorMessage": f"Rate exceeded for shard shardId-000000000001 in stream {StreamName} "
            "under account 123456789012.",
        }
        return {
            "FailedRecordCount": len(failing),
            "Records": [throttled if i in failing else next(results) for i in range(len(Records))],
        }


def review_rows(count: int, content_size: int = 300) -> list[list[str]]:
    return [
        [str(i), str(i % 97), f"title {i}", str(i % 101), f"review {i}, " + "x" * content_size]
        for i in range(1, count + 1)
    ]


def test_throttled_entries_are_resent_until_every_row_arrived_once(
    aws: Aws, tmp_path: Path
) -> None:
    rows = review_rows(2000)
    throttling = ThrottlingKinesis(aws.kinesis)

    report = run_ingest(
        aws,
        tmp_path,
        csv_bytes([["id", "album", "title", "score", "content"], *rows]),
        kinesis=throttling,
        retry=FAST_RETRY,
        max_record_bytes=4096,
        max_in_flight=3,
    )

    lines = by_row(landed_lines(aws.kinesis))
    assert sorted(lines) == list(range(1, len(rows) + 1))
    assert all(lines[i + 1]["content"] == row[4] for i, row in enumerate(rows))
    assert report.resent_records == throttling.failed_entries > 0
    assert report.records == len(read_stream_records(aws))


@pytest.mark.parametrize("fail_every", [5, 1], ids=["a-fifth-throttled", "all-throttled"])
def test_rows_not_delivered_within_the_budget_raise(
    aws: Aws, tmp_path: Path, fail_every: int
) -> None:
    rows = review_rows(2000)

    with pytest.raises(DeliveryError) as raised:
        run_ingest(
            aws,
            tmp_path,
            csv_bytes([["id", "album", "title", "score", "content"], *rows]),
            kinesis=ThrottlingKinesis(aws.kinesis, fail_every=fail_every),
            retry=RetryPolicy(max_attempts=1),
            max_record_bytes=4096,
            max_in_flight=2,
        )

    error = raised.value
    arrived = by_row(landed_lines(aws.kinesis))
    assert error.rows_not_sent == len(rows) - len(arrived) > 0
    if fail_every == 1:
        assert error.rows_not_sent == len(rows)
    assert error.error_code == "ProvisionedThroughputExceededException"
    assert str(error).startswith(
        f"reviews.csv: {error.rows_not_sent:,} of {len(rows):,} rows were not delivered"
    )
    assert "ProvisionedThroughputExceededException: Rate exceeded for shard" in str(error)


class RecordingKinesis:
    """A real Kinesis client that records the size of every PutRecords call (one at a time)."""

    def __init__(self, client: Any):
        self._client = client
        self._lock = threading.Lock()
        self.calls: list[list[tuple[int, int]]] = []  # per call: (data bytes, key bytes)

    def put_records(self, *, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            self.calls.append([(len(r["Data"]), len(r["PartitionKey"].encode())) for r in Records])
            return self._client.put_records(StreamName=StreamName, Records=Records)


def test_records_and_calls_stay_within_kinesis_limits(aws: Aws, tmp_path: Path) -> None:
    rows = review_rows(6000, content_size=2000)
    huge = ["3001", "1", "huge", "50", "y" * (MAX_RECORD_BYTES + 10)]
    rows[3000] = huge
    recording = RecordingKinesis(aws.kinesis)

    report = run_ingest(
        aws,
        tmp_path,
        csv_bytes([["id", "album", "title", "score", "content"], *rows]),
        kinesis=recording,
        max_in_flight=2,
    )

    sizes = [size for call in recording.calls for size in call]
    assert all(data + key <= MAX_RECORD_BYTES for data, key in sizes)
    assert max(data + key for data, key in sizes) > MAX_RECORD_BYTES - 5000  # records are filled
    assert all(len(call) <= MAX_CALL_RECORDS for call in recording.calls)
    assert all(sum(d + k for d, k in call) <= MAX_CALL_BYTES for call in recording.calls)
    assert report.put_calls == len(recording.calls) < report.records

    shards = read_stream(aws.kinesis, REVIEWS.stream_name)
    assert all(shards.values()), "records are spread over both shards"
    lines = by_row(landed_lines(aws.kinesis))
    assert sorted(lines) == [n for n in range(1, len(rows) + 1) if n != 3001]

    key = f"errors/reviews/producer/{report.ingest_id}/row-3001.json"
    assert [(r["source_row"], r["key"]) for r in report.oversize_rows] == [(3001, key)]
    body = aws.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    error = json.loads(body)
    assert error["reason"].startswith("the row's JSON line is ")
    assert (error["_source_file"], error["_source_row"], error["_ingest_id"]) == (
        "reviews.csv",
        3001,
        report.ingest_id,
    )
    assert error["bytes"] == report.oversize_rows[0]["bytes"] == len(error["line"].encode()) + 1
    assert json.loads(error["line"])["content"] == huge[4]
    assert report.rows == len(rows) == report.rows_sent + 1


def test_calls_hold_at_most_500_records(aws: Aws, tmp_path: Path) -> None:
    rows = [[str(i), str(i), f"t{i}", "1999"] for i in range(1, 1301)]
    recording = RecordingKinesis(aws.kinesis)

    report = run_ingest(
        aws,
        tmp_path,
        csv_bytes([["id", "band", "title", "year"], *rows]),
        dataset=ALBUMS,
        source_file="albums.csv",
        kinesis=recording,
        max_record_bytes=200,
        max_in_flight=2,
    )

    # Two calls in flight: they may complete in either order.
    assert sorted(len(call) for call in recording.calls) == [300, 500, 500]
    assert report.records == 1300
    assert len(by_row(landed_lines(aws.kinesis, ALBUMS))) == 1300


def test_a_file_changed_between_the_two_reads_is_refused(aws: Aws) -> None:
    versions = iter([HEADER + b"1,1,a,1,first\n", HEADER + b"1,1,a,1,second\n"])

    with pytest.raises(SourceFileError, match="changed while it was being ingested"):
        ingest(
            Shipment(lambda: io.BytesIO(next(versions)), "reviews.csv", "reviews-x", REVIEWS),
            Destination(aws.kinesis, aws.s3, BUCKET),
        )


def test_expected_hash_is_checked_before_sending(aws: Aws, tmp_path: Path) -> None:
    with pytest.raises(SourceFileError, match="the file changed after its ingest id was made"):
        run_ingest(aws, tmp_path, HEADER + b"1,1,a,1,x\n", expected_hash="0" * 64)
    assert landed_lines(aws.kinesis) == []


def counted_source(name: str, data: bytes, opens: list[str]) -> SourceFile:
    """A source file in memory that notes every time it is opened."""

    def open_source() -> BinaryIO:
        opens.append(name)
        return io.BytesIO(data)

    return SourceFile(name, f"memory://{name}", str(len(data)), open_source)


def test_landing_reads_a_file_twice_finding_it_with_its_preflight(aws: Aws) -> None:
    """Pre-flight is the read that finds the version a key names; sending is the second read."""
    data = HEADER + b'1,1,a,1,"x, y"\n2,1,b,2,ok\n'
    key = ingest_key("reviews.csv", hashlib.sha256(data).hexdigest())
    opens: list[str] = []
    candidates = [
        counted_source("reviews.csv", HEADER + b"9,9,older,9,version\n", opens),
        counted_source("reviews.csv", data, opens),
    ]

    source, checked = locate(
        key,
        candidates,
        read=lambda c: check_source(c.open, dataset=REVIEWS, source_file=c.name),
    )
    report = ingest(
        Shipment(source.open, source.name, key, REVIEWS),
        Destination(aws.kinesis, aws.s3, BUCKET),
        checked=checked,
    )

    assert source is candidates[1]
    assert opens == ["reviews.csv"] * 3, "one read of the other version, two of this one"
    assert report.content_hash == checked.content_hash == hashlib.sha256(data).hexdigest()
    assert [line["title"] for line in landed_lines(aws.kinesis)] == ["a", "b"]


def test_a_refused_version_is_still_located_and_refused_with_its_reason(aws: Aws) -> None:
    data = b"id,album,title,content\n1,2,t,c\n"
    key = ingest_key("reviews.csv", hashlib.sha256(data).hexdigest())

    source, checked = locate(
        key,
        [counted_source("reviews.csv", data, [])],
        read=lambda c: check_source(c.open, dataset=REVIEWS, source_file=c.name),
    )

    assert checked.content_hash == hashlib.sha256(data).hexdigest()
    with pytest.raises(SourceFileError, match="missing required column"):
        ingest(
            Shipment(source.open, source.name, key, REVIEWS),
            Destination(aws.kinesis, aws.s3, BUCKET),
            checked=checked,
        )
    assert landed_lines(aws.kinesis) == []


def test_fields_over_the_csv_default_limit_parse_without_changing_it_for_the_process(
    aws: Aws, tmp_path: Path
) -> None:
    long_review = "ü" * 200_000  # over the csv module's default of 128 Ki characters
    data = csv_bytes(
        [["id", "album", "title", "score", "content"], ["1", "2", "t", "3", long_review]]
    )
    limit_before = csv.field_size_limit()

    report = run_ingest(aws, tmp_path, data)

    assert csv.field_size_limit() == limit_before
    with pytest.raises(csv.Error, match="field larger than field limit"):
        list(csv.reader(io.StringIO(data.decode(), newline="")))
    [line] = landed_lines(aws.kinesis)
    assert line["content"] == long_review
    assert report.parse_error_rows == 0


ROW_TEMPLATE = b'%d,%d,"title, %d",%d,"' + b"z" * 400 + b' ""quoted""\r\nsecond line"\n'


class GeneratedCsv(io.RawIOBase):
    """A large reviews CSV made on the fly, so that the input itself takes no memory."""

    def __init__(self, rows: int):
        self._rows = iter(range(1, rows + 1))
        self._pending = HEADER
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while len(self._pending) < len(buffer):
            chunk = b"".join(
                ROW_TEMPLATE % (i, i, i, i % 101) for i in itertools.islice(self._rows, 200)
            )
            if not chunk:
                break
            self._pending += chunk
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self.size += n
        return n


@pytest.mark.parametrize(
    ("method", "rows", "max_peak"),
    [("lines", 50_000, 4_000_000), ("batches", 200_000, 12_000_000)],
)
def test_preflight_and_encoder_stream_in_bounded_memory(
    method: str, rows: int, max_peak: int
) -> None:
    """Python's own allocations only: Polars' are checked on a 1 GB file by hand (README)."""
    opened: list[GeneratedCsv] = []  # 50,000 rows are about 23 MB

    def open_source() -> BinaryIO:
        opened.append(GeneratedCsv(rows))
        return io.BufferedReader(opened[-1])

    gc.collect()  # earlier tests' garbage: finalizers run by a collection are not the encoder's
    tracemalloc.start()
    try:
        info = check_source(open_source, dataset=REVIEWS, source_file="reviews.csv").accepted()
        encoder = RowEncoder(info.header, source_file="reviews.csv", ingest_id="reviews-x")
        with open_source() as source:
            if method == "lines":
                json_bytes = sum(map(len, encoder.lines(source)))
            else:
                json_bytes = sum(len(batch.data) for batch in encoder.batches(source))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert encoder.rows == rows
    assert opened[0].size == info.byte_size > rows * 400
    assert json_bytes > info.byte_size
    assert peak < max_peak, f"peak {peak:,} bytes for a {info.byte_size:,}-byte file"


def encode_both(
    data: bytes, header: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, block_bytes: int
) -> tuple[RowEncoder, list[bytes], RowEncoder, list[bytes], int]:
    """The lines of `data` through the csv module alone and through `batches`, whose blocks
    are `block_bytes` long; also how many rows Polars encoded."""
    monkeypatch.setattr(encoding, "_BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(encoding, "_MAX_BLOCK_BYTES", 4 * block_bytes)
    fast_rows = 0

    def counting_encode_plain(*args: Any, **kwargs: Any) -> LineBatch | None:
        nonlocal fast_rows
        batch = encode_plain(*args, **kwargs)
        fast_rows += len(batch) if batch else 0
        return batch

    monkeypatch.setattr(encoding, "encode_plain", counting_encode_plain)
    options = {"source_file": "reviews.csv", "ingest_id": "reviews-0123456789ab"}
    reference = RowEncoder(header, **options)
    expected = list(reference.lines(io.BytesIO(data)))
    fast = RowEncoder(header, **options)
    batches = list(fast.batches(io.BufferedReader(io.BytesIO(data), 64)))
    lines = [
        b.data[start:end] for b in batches for start, end in zip([0, *b.ends], b.ends, strict=False)
    ]
    assert all(batch.ends[-1] == len(batch.data) for batch in batches)
    return reference, expected, fast, lines, fast_rows


def plain_rows(first: int, count: int) -> bytes:
    return b"".join(
        b'%d,%d,"t, %d",%d,"a ""b""\r\nc"\n' % (i, i, i, i % 101)
        for i in range(first, first + count)
    )


NASTY = {
    "tricky-values-crlf-bom": csv_bytes(
        [["id", "album", "title", "score", "content"]]
        + [[str(i), "1", v, "2", v[::-1]] for i, v in enumerate(TRICKY_VALUES * 30, 1)],
        line_end="\r\n",
        bom=True,
    ),
    "quote-all": "".join(
        f'"{i}","1","{v.replace(chr(34), chr(34) * 2)}","2",""\n'
        for i, v in enumerate(TRICKY_VALUES * 30, 1)
    ).encode(),
    "ragged-and-empty-lines": plain_rows(1, 50)
    + b'51,1,short\n\n\r\n52,1,t,2,c,extra,"x\ny"\n53,1,t,2,ok\n'
    + plain_rows(54, 50)
    + b"\n\n",
    "malformed-quotes": plain_rows(1, 50)
    + b'51,1,"bad"quote,4,x\n52,1,12" vinyl,1,"a\nb"\n53,1, "spaced",1,x\n'
    + plain_rows(54, 50),
    "balanced-malformed-quotes": plain_rows(1, 50)
    + b'51,1,"bad"quote,4,"x"y\n52,1,a""b,1,x\n53,1, "spaced" ,1,x\n54,1,"a"" ,1,x\n'
    + plain_rows(55, 50),
    "cr-cr-lf": plain_rows(1, 50) + b'51,1,t,1,x\r\r\n52,1,t,1,"q"\r\r\n' + plain_rows(53, 50),
    "lone-cr-nul-and-bom-char": plain_rows(1, 50)
    + b'51,1,t,1,x\r52,1,t,1,"in\rquotes"\n53,1,n\x00ul,1,\x01\n\xef\xbb\xbf54,1,t,1,x\n'
    + plain_rows(55, 50),
    "long-field-and-no-final-newline": plain_rows(1, 20)
    + b'21,1,t,1,"'
    + "ü🤘 ".encode() * 20_000
    + b'"\n'
    + plain_rows(22, 20)
    + b"42,1,t,1,last",
    "long-multiline-field": plain_rows(1, 20)
    + b'21,1,t,1,"'
    + "line ü\r\n".encode() * 5000
    + b'"\n'
    + plain_rows(22, 20),
    "header-only": b"",
}


NOT_PLAIN = {
    "ragged-and-empty-lines",
    "malformed-quotes",
    "balanced-malformed-quotes",
    "cr-cr-lf",
    "lone-cr-nul-and-bom-char",
}
"""Cases with rows Polars must not encode."""


@pytest.mark.parametrize("block_bytes", [64, 1000, 1 << 20])
@pytest.mark.parametrize("case", list(NASTY))
def test_fast_path_gives_the_lines_of_the_csv_module(
    case: str, block_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = NASTY[case]
    if not data.startswith((b"\xef\xbb\xbfid", b"id")):
        data = HEADER + data

    reference, expected, fast, lines, fast_rows = encode_both(
        data, ("id", "album", "title", "score", "content"), monkeypatch, block_bytes
    )

    assert lines == expected
    assert [json.loads(line) for line in lines] == [json.loads(line) for line in expected]
    assert (fast.rows, fast.parse_error_rows) == (reference.rows, reference.parse_error_rows)
    if block_bytes < len(data) // 4:
        assert fast_rows > 0.5 * fast.rows, "blocks after a bad one take the fast path again"
    if case in NOT_PLAIN:
        assert fast_rows < fast.rows


@pytest.mark.parametrize("name", ["albums.csv", "bands.csv", "reviews.csv"])
def test_fast_path_gives_the_lines_of_the_csv_module_on_the_sample(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = (SAMPLE_CSV_DIR / name).read_bytes()
    dataset = DATASETS_BY_NAME[name.removesuffix(".csv")]
    info = check_source(lambda: io.BytesIO(data), dataset=dataset, source_file=name).accepted()

    reference, expected, fast, lines, fast_rows = encode_both(
        data, info.header, monkeypatch, 1 << 16
    )

    assert lines == expected
    assert fast.rows == reference.rows > 1000
    assert fast_rows > 0.5 * fast.rows


@pytest.mark.parametrize(
    ("block", "records"),
    [
        pytest.param(b'1,"a""b",""\r\n2,"""q""",x\n3,"a\r\nb\rc",y', 3, id="plain"),
        pytest.param(b"1,2,3\n", 1, id="unquoted"),
        pytest.param(b'1,"bad"x,3\n', 0, id="text-after-closing-quote"),
        pytest.param(b'1,12" vinyl,3\n', 0, id="quote-in-unquoted-field"),
        pytest.param(b'1, "a",3\n', 0, id="space-before-quote"),
        pytest.param(b'1,"open,3\n', 0, id="ends-inside-quotes"),
        pytest.param(b"1,2,3\r4,5,6\n", 0, id="lone-cr"),
        pytest.param(b"1,2,3\n\n4,5,6\n", 0, id="empty-line"),
        pytest.param(b"1,\x00,3\n", 0, id="nul"),
        pytest.param(b"\xef\xbb\xbf1,2,3\n", 0, id="leading-bom"),
    ],
)
def test_only_plain_blocks_take_the_fast_path(block: bytes, records: int) -> None:
    assert plain_records(block, 3) == records


@pytest.mark.parametrize("block", [b"1,2\n4,5,6,7\n", b"1,2,3,4\n5,6\n", b"1,2,3\n4,5\n6,7,8,9\n"])
def test_records_of_the_wrong_width_are_not_encoded(block: bytes) -> None:
    """Their commas add up, so only Polars sees the records differ."""
    records = plain_records(block, 3)
    assert records == block.count(b"\n")
    header = ("a", "b", "c")
    assert encode_plain(block, records, header, source_file="f", ingest_id="i", first_row=1) is None


def test_records_are_filled_greedily_in_row_order(aws: Aws, tmp_path: Path) -> None:
    rows = [[str(i), "1", "t", "2", "x" * (i * 37 % 500)] for i in range(1, 3001)]
    rows[1000][4] = "y" * 5000  # too large for a record
    keeping = KeepingKinesis(aws.kinesis)

    report = run_ingest(
        aws,
        tmp_path,
        csv_bytes([["id", "album", "title", "score", "content"], *rows]),
        kinesis=keeping,
        max_record_bytes=4096,
    )

    records = [(data.split(b"\n")[:-1], len(key)) for data, key in keeping.records]
    row_numbers = [json.loads(line)["_source_row"] for lines, _ in records for line in lines]
    assert row_numbers == [n for n in range(1, 3001) if n != 1001]
    for (lines, key_bytes), (following, _) in itertools.pairwise(records):
        last, first = json.loads(lines[-1]), json.loads(following[0])
        if first["_source_row"] == last["_source_row"] + 1:
            size = sum(len(line) + 1 for line in lines) + key_bytes + len(following[0]) + 1
            assert size > 4096, "a record was closed while the next line still fitted"
    assert [r["source_row"] for r in report.oversize_rows] == [1001]


class KeepingKinesis:
    """A real Kinesis client that keeps every record sent, in order (calls one at a time)."""

    def __init__(self, client: Any):
        self._client = client
        self._lock = threading.Lock()
        self.records: list[tuple[bytes, str]] = []

    def put_records(self, *, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            self.records.extend((r["Data"], r["PartitionKey"]) for r in Records)
            return self._client.put_records(StreamName=StreamName, Records=Records)
