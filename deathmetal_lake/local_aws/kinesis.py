"""Kinesis PutRecord(s) applied straight to moto's backend, with the payloads left in the journal.

moto keeps every record's payload in memory as a base64 string for ever: at scale 100 that is
gigabytes. The request body is journaled as the client sent it, so a record here holds only
where its base64 text lies in the journal and reads it back when delivery or GetRecords asks.
Handling these two calls here also skips moto's generic request parsing and its base64 decoding
of every record just to measure it, most of the CPU a PutRecords call used to cost.

Validation and errors are moto's (its checks in its order, its exceptions), but all of them run
before anything is stored, where moto stores the records ahead of a bad one.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from deathmetal_lake.local_aws import moto_adapter
from deathmetal_lake.local_aws.journal import Entry, Journal

PUT_RECORD = "Kinesis_20131202.PutRecord"
PUT_RECORDS = "Kinesis_20131202.PutRecords"
_MAX_RECORDS = 500
_MAX_RECORD_BYTES = 1_048_576
_MAX_REQUEST_BYTES = 5_242_880
FIRST_SEQUENCE = "seq"
"""Journal extra of a compacted PutRecord(s) entry: its first sequence number per shard."""


class JournaledRecord:
    """A record in a moto shard whose payload stays in the journal (see the module docstring).

    It offers what moto and delivery use of moto's own `Record` (`moto_adapter.RECORD_ATTRIBUTES`).
    A payload the journal does not hold verbatim (a client that escaped characters of its base64)
    is kept `inline` instead.
    """

    __slots__ = (
        "_inline",
        "_journal",
        "_length",
        "_offset",
        "created_at",
        "created_at_datetime",
        "explicit_hash_key",
        "partition_key",
        "sequence_number",
        "size",
    )

    def __init__(
        self,
        journal: Journal,
        location: tuple[int, int] | str,
        *,
        partition_key: str,
        sequence_number: int,
        explicit_hash_key: str | None,
        arrived: datetime,
        size: int,
    ) -> None:
        self._journal = journal
        self._offset, self._length = location if isinstance(location, tuple) else (0, 0)
        self._inline = location if isinstance(location, str) else None
        self.partition_key = partition_key
        self.sequence_number = sequence_number
        self.explicit_hash_key = explicit_hash_key
        self.created_at_datetime = arrived
        self.created_at = moto_adapter.unix_time(arrived)
        self.size = size

    @property
    def data(self) -> str:
        """The payload in base64, as moto's records hold it (moto's shard splits re-put it)."""
        if self._inline is not None:
            return self._inline
        return self._journal.read(self._offset, self._length).decode("ascii")

    def encoded(self) -> bytes:
        """The payload in base64, as bytes: the journal's own (no detour through a str)."""
        if self._inline is not None:
            return self._inline.encode("ascii", "replace")
        return self._journal.read(self._offset, self._length)

    def payload(self) -> bytes:
        if self._inline is not None:
            return base64.b64decode(self._inline)
        return binascii.a2b_base64(self.encoded())

    def to_json(self) -> dict[str, Any]:
        return {
            "Data": self.payload(),
            "PartitionKey": self.partition_key,
            "SequenceNumber": str(self.sequence_number),
            "ApproximateArrivalTimestamp": self.created_at_datetime,
        }


def payload(record: Any) -> bytes:
    """A record's bytes, whether stored here or by moto itself (records of a shard split)."""
    if isinstance(record, JournaledRecord):
        return record.payload()
    return base64.b64decode(moto_adapter.record_base64(record))


def payloads(records: list[Any]) -> list[bytes]:
    """The records' bytes, in order: `payload` of each, decoded together and faster.

    Decoding base64 is the largest share of Firehose delivery's CPU, and polars' decoder is
    faster than binascii's. It accepts only canonical base64 (what SDKs send): for anything else
    each record is decoded as `payload` does, so the bytes never differ.
    """
    encoded = [
        record.encoded()
        if isinstance(record, JournaledRecord)
        else moto_adapter.record_base64(record).encode()
        for record in records
    ]
    try:
        return pl.Series(encoded, dtype=pl.Binary).bin.decode("base64").to_list()
    except pl.exceptions.ComputeError:
        return [payload(record) for record in records]


def payload_size(record: Any) -> int:
    """A record's length in bytes, without reading a journaled payload back."""
    if isinstance(record, JournaledRecord):
        return record.size
    return len(base64.b64decode(moto_adapter.record_base64(record)))


@dataclass
class PutRequest:
    """A parsed PutRecord(s) request; `locations` say where each payload lies in the body."""

    operation: str
    params: dict[str, Any]
    records: list[dict[str, Any]]
    locations: list[tuple[int, int] | str]
    region: str
    account_id: str


@dataclass
class Plan:
    """A validated request: the stream, each record's shard and payload size (moto's objects)."""

    request: PutRequest
    stream: Any
    shards: list[Any]
    sizes: list[int]
    results: list[dict[str, str]] = field(default_factory=list)


def _locate(body: bytes, records: list[dict[str, Any]]) -> list[tuple[int, int] | str]:
    """Each record's base64 text as (offset, length) in `body`, or the text if not verbatim."""
    locations: list[tuple[int, int] | str] = []
    start = 0
    for record in records:
        data = record.get("Data") or ""
        needle = data.encode("ascii", "replace")
        found = _find(body, needle, start)
        if found < 0:
            locations.append(data)
            continue
        locations.append((found, len(needle)))
        start = found + len(needle)
    return locations


def _find(body: bytes, needle: bytes, start: int) -> int:
    """`body.find(needle, start)`, faster for megabyte needles that sit near `start`.

    bytes.find spends a few ns per byte on a long needle; finding its head and comparing the
    rest (a memcmp) is what makes locating a 5 MB request's payloads cheap.
    """
    head = needle[:64]
    found = body.find(head, start)
    while found >= 0 and not body.startswith(needle, found):
        found = body.find(head, found + 1)
    return found


def parse(entry: Entry, default_region: str) -> PutRequest:
    """Parse a PutRecord(s) request; needs no lock. Raises ValueError if it is not valid JSON."""
    params = json.loads(entry.body)
    if not isinstance(params, dict):
        raise ValueError("the request body is not a JSON object")
    operation = entry.header("X-Amz-Target") or ""
    records = [params] if operation == PUT_RECORD else params.get("Records") or []
    region, account_id = moto_adapter.kinesis_request_context(
        entry.headers, entry.path, default_region
    )
    return PutRequest(operation, params, records, _locate(entry.body, records), region, account_id)


def _decoded_size(data: str) -> int:
    """len(b64decode(data)) without decoding, for the canonical base64 every SDK sends."""
    if len(data) % 4:
        return len(base64.b64decode(data))
    return len(data) // 4 * 3 - (2 if data.endswith("==") else 1 if data.endswith("=") else 0)


def plan(request: PutRequest) -> Plan:
    """Validate against the current streams (under the gateway's lock); raises moto's errors."""
    stream = moto_adapter.kinesis_stream(
        request.account_id,
        request.region,
        stream_arn=request.params.get("StreamARN"),
        stream_name=request.params.get("StreamName"),
    )
    sizes = [
        _decoded_size(r.get("Data") or "") + len(r.get("PartitionKey") or "")
        for r in request.records
    ]
    if request.operation == PUT_RECORDS:
        if len(request.records) > _MAX_RECORDS:
            raise moto_adapter.too_many_records()
        if sum(sizes) > _MAX_REQUEST_BYTES:
            raise moto_adapter.request_too_large()
        for position, size in enumerate(sizes, start=1):
            if size > _MAX_RECORD_BYTES:
                raise moto_adapter.record_too_large(position)
    shards = [
        moto_adapter.shard_for_key(
            stream, record.get("PartitionKey"), record.get("ExplicitHashKey")
        )
        for record in request.records
    ]
    return Plan(request, stream, shards, sizes)


def store(
    plan: Plan, entry: Entry, journal: Journal, failed: frozenset[int]
) -> dict[str, tuple[int, int]]:
    """Append the records (all but `failed`) to their shards; `entry` is already journaled.

    Fills `plan.results` with the accepted records' SequenceNumber and ShardId, in order, and
    returns each shard's first and last sequence number of them. A record gets its shard's next
    number, or the first one the entry's `FIRST_SEQUENCE` names if higher: compaction writes it,
    because the entries it dropped no longer push the numbers up on replay.
    """
    arrived = datetime.fromtimestamp(entry.extra["t"], UTC).replace(tzinfo=None)
    first_numbers: dict[str, int] = entry.extra.get(FIRST_SEQUENCE, {})
    ranges: dict[str, tuple[int, int]] = {}
    incoming = 0
    for index, (record, shard, location) in enumerate(
        zip(plan.request.records, plan.shards, plan.request.locations, strict=True)
    ):
        if index in failed:
            continue
        if isinstance(location, tuple):
            location = (entry.offset + location[0], location[1])
        shard_id = moto_adapter.shard_id(shard)
        sequence_number = max(
            moto_adapter.last_sequence_number(shard) + 1, first_numbers.get(shard_id, 0)
        )
        record_in_journal = JournaledRecord(
            journal,
            location,
            partition_key=record.get("PartitionKey"),
            sequence_number=sequence_number,
            explicit_hash_key=record.get("ExplicitHashKey"),
            arrived=arrived,
            size=plan.sizes[index] - len(record.get("PartitionKey") or ""),
        )
        moto_adapter.append_record(shard, record_in_journal)
        ranges[shard_id] = (ranges.get(shard_id, (sequence_number,))[0], sequence_number)
        plan.results.append({"SequenceNumber": str(sequence_number), "ShardId": shard_id})
        incoming += plan.sizes[index]
    moto_adapter.count_put(
        plan.request.account_id,
        plan.request.region,
        plan.stream,
        incoming_bytes=incoming,
        incoming_records=len(plan.results),
    )
    return ranges
