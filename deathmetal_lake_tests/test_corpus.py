"""The bad-input corpus (issue 14): every hostile file is either ingested with every source row
accounted for, or refused before anything is sent with the file, row and reason.

The accepted files are built here, each with what must become of every record: a silver row
with these values, a quarantine row with this reason, or an `errors/` object. One lake of its own
(its emulator, Dagster instance and folder of these files) is built once with the runs `make run`
launches: one per file (landing, bronze, staging and their checks), then silver with its checks;
gold is left out, it adds nothing here. The tests then read the real objects back by
`_source_row`: silver + quarantine + errors/ = the file's records, each exactly once. The
refused files go through the producer on the same emulator, which must raise before its first
PutRecords.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    RunsFilter,
)

from deathmetal_lake.arrival import DeliveryTimeoutError, DeliveryWatcher
from deathmetal_lake.assets.bronze import bronze_key
from deathmetal_lake.assets.landing import landing_key
from deathmetal_lake.assets.silver import quarantine_key, silver_key
from deathmetal_lake.assets.staging import staging_key
from deathmetal_lake.datasets import DATASETS_BY_NAME
from deathmetal_lake.definitions import build_definitions
from deathmetal_lake.local_aws import ensure_running, stop
from deathmetal_lake.partitions import INGEST_PARTITIONS
from deathmetal_lake.producer import Destination, Shipment, SourceFileError, ingest
from deathmetal_lake.settings import LakeSettings
from deathmetal_lake.sources import ingest_key
from deathmetal_lake_tests.conftest import aws_client, isolate_env, make_settings

pytestmark = pytest.mark.slow

BOM = b"\xef\xbb\xbf"
REVIEWS_HEADER = b"id,album,title,score,content"
KIB = 1024
MIB = 1024 * KIB
NEXT_YEAR = datetime.now(UTC).year + 1


# ---------------------------------------------------------------------------------------------
# What must become of each record


@dataclass(frozen=True)
class Silver:
    """The record is a silver row with these values (silver types: ids Int64, scores Float64)."""

    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Quarantined:
    """The record is a quarantine row whose `_reject_reason` starts with `reason`."""

    reason: str


@dataclass(frozen=True)
class Errors:
    """The record is too large for a Kinesis record: an object in `errors/`."""


Outcome = Silver | Quarantined | Errors


@dataclass
class CaseFile:
    """One source file of the corpus and the outcome of each of its records, in file order."""

    name: str
    cases: str
    """The README's case names this file stands for."""
    data: bytearray = field(default_factory=bytearray)
    outcomes: list[Outcome] = field(default_factory=list)
    texts: list[bytes] = field(default_factory=list)
    blank_lines: int = 0

    def record(self, text: bytes, outcome: Outcome) -> CaseFile:
        """`text` is the record exactly as in the file, its line end included."""
        self.data += text
        self.outcomes.append(outcome)
        self.texts.append(text)
        return self

    def raw(self, text: bytes, *, blank_lines: int = 0) -> CaseFile:
        """Bytes that are no record: the header, blank lines."""
        self.data += text
        self.blank_lines += blank_lines
        return self

    @property
    def dataset(self) -> str:
        return self.name.split("_")[0].removesuffix(".csv")

    @property
    def ingest(self) -> str:
        return ingest_key(self.name, hashlib.sha256(self.data).hexdigest())


def quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def review(review_id: int, content: str, *, album: int = 1, score: str = "70", end: str = "\n"):
    """A review record with its content quoted, and what silver must hold for it."""
    text = f"{review_id},{album},t{review_id},{score},{quote(content)}{end}".encode()
    expected = {"id": review_id, "album": album, "content": content, "score": float(score)}
    return text, Silver(expected)


def rows_file() -> CaseFile:
    """Row-level cases, one file: each record is one case, numbered without the blank lines."""
    f = CaseFile("reviews.csv", "rows").raw(REVIEWS_HEADER + b"\n")
    f.record(*review(101, "plain"))
    f.record(
        b'102,1,"Title, with commas",70,"one, two, three"\n',
        Silver({"content": "one, two, three", "title": "Title, with commas"}),
    )
    f.record(b'103,1,t,70,"a ""quoted"" word"\n', Silver({"content": 'a "quoted" word'}))
    f.record(*review(104, "LF\ninside"))
    f.record(*review(105, "CR\rinside"))
    f.record(*review(106, "CRLF\r\ninside"))
    f.record(*review(107, "Ünholy Nödtveidt — «Мрак» 死 🤘"))
    f.record(b"108,1,t,70,nul\x00inside\n", Silver({"content": "nul\x00inside"}))
    f.record(b"109,1,too few\n", Quarantined("parse error: expected 5 fields, found 3"))
    f.record(b"110,1,t,70,c,extra\n", Quarantined("parse error: expected 5 fields, found 6"))
    f.raw(b"\n", blank_lines=1)
    f.record(b"   \n", Quarantined("parse error: expected 5 fields, found 1"))
    f.record(b",,,,\n", Quarantined("invalid id: missing"))
    f.record(b'113,1,"bad"quote,70,x\n', Quarantined("parse error: CSV error"))
    # A duplicate row, then a duplicate id with other content: the later row wins.
    f.record(
        b"114,1,twice,70,same\n", Quarantined("duplicate id: superseded by reviews.csv row 15")
    )
    f.record(b"114,1,twice,70,same\n", Silver({"id": 114, "content": "same"}))
    f.record(
        b"116,1,t,70,first version\n", Quarantined("duplicate id: superseded by reviews.csv row 17")
    )
    f.record(
        b"116,1,t,71,second version\n",
        Silver({"id": 116, "score": 71.0, "content": "second version"}),
    )
    f.raw(b"\n", blank_lines=1)
    f.record(b"abc,1,t,70,x\n", Quarantined("invalid id: id='abc'"))
    f.record(b"12.5,1,t,70,x\n", Quarantined("invalid id: id='12.5'"))
    f.record(b"121,1,t,140,x\n", Quarantined("invalid score: score='140'"))
    f.record(b"122,1,t,-3,x\n", Quarantined("invalid score: score='-3'"))
    f.record(b"123,1,t,abc,x\n", Quarantined("invalid score: score='abc'"))
    f.record(b"124,1,t,,x\n", Quarantined("required field missing: score"))
    f.record(*review(125, "full marks", score="100"))
    f.record(*review(126, "an album nobody ingested", album=999_999))
    return f.raw(b"\n\n", blank_lines=2)


def line_endings_file() -> CaseFile:
    """A BOM, a CRLF header, LF, CRLF and CR record ends, and no line end after the last record."""
    f = CaseFile("reviews_line-endings.csv", "BOM, CRLF and mixed line endings, no final newline")
    f.raw(BOM + REVIEWS_HEADER + b"\r\n")
    f.record(*review(201, "ends with CRLF", end="\r\n"))
    f.record(*review(202, "ends with LF", end="\n"))
    f.record(*review(203, "ends with CR", end="\r"))
    f.record(*review(204, "  CRLF\r\ninside, spaces kept  ", end="\r\n"))
    return f.record(*review(205, "the last record, no line end", end=""))


def header_only_file() -> CaseFile:
    return CaseFile("reviews_header-only.csv", "header only").raw(REVIEWS_HEADER + b"\n")


def headers_file() -> CaseFile:
    """Columns reordered, names padded and upper-cased, 195 extra columns: 200 in all."""
    extras = [f"extra_{i:03}" for i in range(1, 196)]
    header = ["Content ", " SCORE", "ID", "Album", "tItLe ", *extras]
    f = CaseFile("reviews_headers.csv", "reordered, mangled and extra headers, 200 columns")
    f.raw((",".join(header) + "\n").encode())
    for i in (401, 402):
        values = [quote(f"review {i}"), "70", str(i), "1", f"t{i}", *(f"x{i}" for _ in extras)]
        f.record(
            (",".join(values) + "\n").encode(),
            Silver({"id": i, "title": f"t{i}", "content": f"review {i}"}),
        )
    return f


def oversize_middle_file() -> CaseFile:
    """Issue 14's file: a 1.25 MB review as the 10th of 11 rows, 200 kB ones first and last."""
    f = CaseFile("reviews_oversize-middle.csv", "over 1 MiB mid-file, 200 kB first and last")
    f.raw(REVIEWS_HEADER + b"\n")
    f.record(*review(501, "a" * 200 * KIB))
    for i in range(502, 510):
        f.record(*review(i, f"review {i}"))
    f.record(f"510,1,t,70,{'b' * 1_250_000}\n".encode(), Errors())
    return f.record(*review(511, "c" * 200 * KIB))


def oversize_ends_file() -> CaseFile:
    f = CaseFile("reviews_oversize-ends.csv", "over 1 MiB first and last, 200 kB mid-file")
    f.raw(REVIEWS_HEADER + b"\n")
    f.record(f"601,1,t,70,{'d' * (MIB + 1)}\n".encode(), Errors())
    f.record(*review(602, "small"))
    f.record(*review(603, "ü" * 100 * KIB))  # 200 kB of UTF-8
    f.record(*review(604, "small"))
    return f.record(f"605,1,t,70,{'e' * (2 * MIB)}".encode(), Errors())


def albums_file() -> CaseFile:
    """The albums every review names (1-50), and the year cases."""
    f = CaseFile("albums.csv", "years 0 and next century, orphan band").raw(b"id,band,title,year\n")
    for i in range(1, 51):
        f.record(f"{i},{i % 5 + 1},Album {i},1990\n".encode(), Silver({"id": i, "year": 1990}))
    f.record(b"901,1,Year zero,0\n", Quarantined("invalid year: year='0'"))
    f.record(b"902,1,Next century,2101\n", Quarantined("invalid year: year='2101'"))
    f.record(b"903,1,Before 1960,1959\n", Quarantined("invalid year: year='1959'"))
    f.record(f"904,1,Announced,{NEXT_YEAR}\n".encode(), Silver({"id": 904, "year": NEXT_YEAR}))
    f.record(b"905,1,No year,\n", Silver({"id": 905, "year": None}))
    return f.record(b"906,999,Orphan band,1999\n", Silver({"id": 906, "band": 999}))


ACCEPTED = [
    rows_file(),
    line_endings_file(),
    header_only_file(),
    headers_file(),
    oversize_middle_file(),
    oversize_ends_file(),
    albums_file(),
]


@dataclass(frozen=True)
class Refused:
    """A file the lake must refuse whole, and what its error must say after the file name."""

    name: str
    data: bytes
    message: str
    """How the error goes on after `{name}: `: the reason, and the row where there is one."""


ROW_1 = b"1,1,t,70,fine\n"
REFUSED = [
    Refused("reviews_empty.csv", b"", "the file is empty (0 bytes); expected a header line"),
    Refused(
        "reviews_latin1.csv",
        REVIEWS_HEADER + b"\n" + ROW_1 + b"\n" + b"2,1,Mot\xf6rhead,70,latin-1\n",
        "not UTF-8: byte 0xF6 at byte offset 51 (line 4, data row 2): invalid start byte; "
        "save the file as UTF-8",
    ),
    Refused(
        "reviews_utf16.csv",
        (REVIEWS_HEADER + b"\n" + ROW_1).decode().encode("utf-16"),
        "not UTF-8: byte 0xFF at byte offset 0 (line 1, the header): invalid start byte",
    ),
    Refused(
        "reviews_unterminated.csv",
        REVIEWS_HEADER + b"\n" + ROW_1 + b"\n" + b'2,1,t,70,"never closed\n3,1,t,70,x\n',
        "unterminated quote: the quoted field in data row 2 (from line 4) is never closed, so "
        "the rest of the file would be one value",
    ),
    Refused(
        "reviews_missing-column.csv",
        b"id,album,title,content\n1,1,t,fine\n",
        "header (line 1): missing required column(s) score; expected id, album, title, score, "
        "content (found id, album, title, content)",
    ),
    Refused(
        "reviews_duplicate-column.csv",
        REVIEWS_HEADER + b",ID\n1,1,t,70,fine,1\n",
        "header (line 1): duplicate column(s) id",
    ),
    Refused(
        "reviews_nameless-column.csv",
        REVIEWS_HEADER + b",\n1,1,t,70,fine,\n",
        "header (line 1): column(s) 6 have no name",
    ),
    Refused(
        "reviews_reserved-column.csv",
        REVIEWS_HEADER + b",_source_row\n1,1,t,70,fine,7\n",
        "header (line 1): column(s) _source_row are reserved for the lake",
    ),
    Refused(
        "reviews_blank-first-line.csv",
        b"\n" + REVIEWS_HEADER + b"\n" + ROW_1,
        "no header: line 1 is empty",
    ),
]


# ---------------------------------------------------------------------------------------------
# The corpus lake


@dataclass
class Corpus:
    settings: LakeSettings
    instance: DagsterInstance
    failed_runs: list[str]
    s3: Any
    _tables: dict[str, pl.DataFrame] = field(default_factory=dict)

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.settings.bucket, Prefix=prefix
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def get(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.settings.bucket, Key=key)["Body"].read()

    def table(self, folder: str) -> pl.DataFrame:
        """Every part of a folder table (`silver/reviews`), read once."""
        if folder not in self._tables:
            parts = [pl.read_parquet(io.BytesIO(self.get(k))) for k in self.keys(f"{folder}/")]
            self._tables[folder] = pl.concat(parts, how="diagonal_relaxed")
        return self._tables[folder]

    def rows_of(self, folder: str, ingest: str) -> pl.DataFrame:
        return self.table(folder).filter(pl.col("_ingest_id") == ingest)

    def errors_of(self, dataset: str, ingest: str) -> list[dict[str, Any]]:
        return [json.loads(self.get(k)) for k in self.keys(f"errors/{dataset}/producer/{ingest}/")]

    def landing_metadata(self, dataset: str, ingest: str) -> dict[str, Any]:
        records = self.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(["landing", dataset]), asset_partitions=[ingest]),
            limit=1,
        ).records
        assert records, f"landing/{dataset} {ingest} never materialized"
        metadata = records[0].asset_materialization.metadata
        return {name: value.value for name, value in metadata.items()}

    def check_counts(self, ingest: str) -> dict[str, dict[str, Any]]:
        """The counts of the checks that ran in the ingest's run, by check, if they passed."""
        (run,) = self.instance.get_runs(RunsFilter(tags={"dagster/partition": ingest}))
        records = self.instance.get_records_for_run(
            run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
        ).records
        evaluations = [r.event_log_entry.dagster_event.event_specific_data for r in records]
        return {
            e.check_name: {k: v.value for k, v in e.metadata.items()}
            for e in evaluations
            if e.passed
        }


def build_corpus_lake(settings: LakeSettings, instance: DagsterInstance) -> list[str]:
    """Each file ingested by its own run, then one run of silver: the runs `make run` would
    launch for these files, with the checks of their assets, but no gold. Failed runs' ids."""
    defs = build_definitions(settings)
    runs: list[tuple[str | None, list[AssetKey]]] = []
    for case_file in ACCEPTED:
        dataset = DATASETS_BY_NAME[case_file.dataset]
        instance.add_dynamic_partitions(INGEST_PARTITIONS[dataset.name].name, [case_file.ingest])
        runs.append(
            (case_file.ingest, [landing_key(dataset), bronze_key(dataset), staging_key(dataset)])
        )
    datasets = sorted({DATASETS_BY_NAME[f.dataset] for f in ACCEPTED}, key=lambda d: d.name)
    runs.append((None, [k for d in datasets for k in (silver_key(d.name), quarantine_key(d))]))
    failed = []
    for partition, selection in runs:
        job = defs.resolve_implicit_job_def_def_for_assets(selection)
        assert job is not None, selection
        result = job.execute_in_process(
            instance=instance,
            partition_key=partition,
            asset_selection=selection,
            raise_on_error=False,
        )
        if not result.success:
            failed.append(result.run_id)
    return failed


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    root = tmp_path_factory.mktemp("corpus")
    csv_dir = root / "csv"
    csv_dir.mkdir()
    for case_file in ACCEPTED:
        (csv_dir / case_file.name).write_bytes(case_file.data)
    # A landing that waits for a row never sent fails in 30 s, not the default 300 s.
    settings = make_settings(root / "state", csv_dir=csv_dir, landing_timeout_seconds=30)
    with pytest.MonkeyPatch.context() as env:
        isolate_env(env, root)
        ensure_running(settings)
        try:
            settings.instance_dir.mkdir(parents=True, exist_ok=True)
            with DagsterInstance.from_config(str(settings.instance_dir)) as instance:
                failed = build_corpus_lake(settings, instance)
                yield Corpus(settings, instance, failed, aws_client(settings, "s3"))
        finally:
            stop(settings)


# ---------------------------------------------------------------------------------------------
# Accepted files: every record in silver, quarantine or errors/, exactly once


def test_the_lake_completes_over_the_corpus(corpus: Corpus) -> None:
    """Every ingest run and the silver run succeeded, their checks (reconciliation) included."""
    failures = {
        run_id: [
            record.event_log_entry.dagster_event.step_key
            for record in corpus.instance.get_records_for_run(
                run_id, of_type=DagsterEventType.STEP_FAILURE
            ).records
        ]
        for run_id in corpus.failed_runs
    }
    assert failures == {}


@pytest.mark.parametrize("case_file", ACCEPTED, ids=lambda f: f.name)
def test_every_record_is_in_silver_quarantine_or_errors_exactly_once(
    corpus: Corpus, case_file: CaseFile
) -> None:
    dataset, ingest = case_file.dataset, case_file.ingest
    silver = corpus.rows_of(f"silver/{dataset}", ingest)
    quarantine = corpus.rows_of(f"quarantine/{dataset}", ingest)
    errors = corpus.errors_of(dataset, ingest)
    placed = Counter(
        [*silver["_source_row"], *quarantine["_source_row"], *(e["_source_row"] for e in errors)]
    )
    records = len(case_file.outcomes)
    assert sorted(placed) == list(range(1, records + 1)), "a record is missing or extra"
    assert set(placed.values()) <= {1}, "a record is in more than one place"

    silver_rows = {row["_source_row"]: row for row in silver.iter_rows(named=True)}
    reasons = dict(quarantine.select("_source_row", "_reject_reason").iter_rows())
    raws = dict(quarantine.select("_source_row", "_raw").iter_rows())
    error_rows = {e["_source_row"]: e for e in errors}
    for number, outcome in enumerate(case_file.outcomes, 1):
        where = f"{case_file.name} row {number}"
        match outcome:
            case Silver(values):
                assert number in silver_rows, f"{where}: not in silver ({reasons.get(number)})"
                row = silver_rows[number]
                assert {k: row[k] for k in values} == values, where
                assert row["_source_file"] == case_file.name
            case Quarantined(reason):
                assert number in reasons, f"{where}: not in quarantine"
                assert reasons[number].startswith(reason), f"{where}: {reasons[number]}"
                if reason.startswith("parse error"):  # kept as in the file, line end aside
                    text = case_file.texts[number - 1].decode()
                    assert raws[number] == text.removesuffix("\n"), where
            case Errors():
                assert number in error_rows, f"{where}: not in errors/"
                error = error_rows[number]
                assert (error["_source_file"], error["_ingest_id"]) == (case_file.name, ingest)
                assert "bytes; a Kinesis record holds at most" in error["reason"], error["reason"]
                assert json.loads(error["line"])["_source_row"] == number

    landing = corpus.landing_metadata(dataset, ingest)
    assert (landing["rows"], landing["blank_lines"]) == (records, case_file.blank_lines)
    assert landing["oversize_rows"] == len(errors)
    # The reconciliation checks of the ingest's run passed, counting records, not blank lines.
    checks = corpus.check_counts(ingest)
    delivered = checks["landing_delivered_every_row"]
    assert (delivered["source_rows"], delivered["error_rows"]) == (records, len(errors))
    assert checks["bronze_matches_landing"]["bronze_rows"] == records - len(errors)


def test_a_row_too_large_mid_file_does_not_hold_up_the_rows_after_it(corpus: Corpus) -> None:
    """Issue 14: the landing waited for rows 1-10 (row 10 went to errors/) and never for row 11."""
    case_file = oversize_middle_file()
    landing = corpus.landing_metadata("reviews", case_file.ingest)
    assert landing["delivery_seconds"] < 10
    bronze = corpus.get(f"bronze/reviews/{case_file.ingest}.parquet")
    assert sorted(pl.read_parquet(io.BytesIO(bronze))["_source_row"]) == [*range(1, 10), 11]


def test_extra_columns_stay_in_bronze_and_not_in_silver(corpus: Corpus) -> None:
    case_file = headers_file()
    bronze = pl.read_parquet(io.BytesIO(corpus.get(f"bronze/reviews/{case_file.ingest}.parquet")))
    # The file's 200 columns, normalised, the provenance and the parse-error fields.
    assert len(bronze.columns) == 200 + 5
    assert {"id", "score", "content", "extra_001", "extra_195"} <= set(bronze.columns)
    assert bronze["extra_195"].to_list() == ["x401", "x402"]
    assert "extra_001" not in corpus.table("silver/reviews").columns


def test_the_delivery_watcher_waits_for_the_rows_sent(corpus: Corpus) -> None:
    """Not for 1..n minus the rows written to errors/: row 11 arrives, row 10 never will."""
    s3, bucket, prefix = corpus.s3, corpus.settings.bucket, "landing/albums/"
    hour = f"{prefix}{datetime.now(UTC):%Y/%m/%d/%H}/"

    def lines(rows: list[int]) -> bytes:
        return b"".join(b'{"_ingest_id":"w-1","_source_row":%d}\n' % row for row in rows)

    with DeliveryWatcher(
        s3, bucket=bucket, prefix=prefix, ingest_id="w-1", since=datetime.now(UTC)
    ) as watcher:
        s3.put_object(Bucket=bucket, Key=f"{hour}w-a", Body=lines(list(range(1, 10))))
    with pytest.raises(DeliveryTimeoutError) as raised:
        watcher.wait(11, timeout_seconds=0.5, not_sent=[10])
    assert "w-1: 1 of 10 rows were not delivered" in str(raised.value)
    assert "first missing source rows: [11]" in str(raised.value)

    s3.put_object(Bucket=bucket, Key=f"{hour}w-b", Body=lines([11]))
    started = time.monotonic()
    assert watcher.wait(11, timeout_seconds=5, not_sent=[10]).rows == 10
    assert time.monotonic() - started < 2
    for key in (f"{hour}w-a", f"{hour}w-b"):
        s3.delete_object(Bucket=bucket, Key=key)


# ---------------------------------------------------------------------------------------------
# Refused files: nothing sent, the file, row and reason said


@pytest.mark.parametrize("refused", REFUSED, ids=lambda r: r.name)
def test_a_refused_file_sends_nothing_and_says_why(
    corpus: Corpus, refused: Refused, tmp_path: Path
) -> None:
    path = tmp_path / refused.name
    path.write_bytes(refused.data)
    dataset = DATASETS_BY_NAME["reviews"]
    kinesis = aws_client(corpus.settings, "kinesis")
    tips = [
        kinesis.get_shard_iterator(
            StreamName=dataset.stream_name, ShardId=shard["ShardId"], ShardIteratorType="LATEST"
        )["ShardIterator"]
        for shard in kinesis.list_shards(StreamName=dataset.stream_name)["Shards"]
    ]
    ingest_id = ingest_key(refused.name, hashlib.sha256(refused.data).hexdigest())

    with pytest.raises(SourceFileError) as raised:
        ingest(
            Shipment(lambda: path.open("rb"), refused.name, ingest_id, dataset),
            Destination(kinesis, corpus.s3, corpus.settings.bucket),
        )

    assert str(raised.value).startswith(f"{refused.name}: {refused.message}"), raised.value
    assert [kinesis.get_records(ShardIterator=tip)["Records"] for tip in tips] == [[]] * len(tips)
    assert corpus.keys(f"errors/reviews/producer/{ingest_id}/") == []
