"""Journal compaction: keep the entries that still make the state, so the disk follows the lake.

The journal holds every mutation ever applied; most of it stops mattering. An S3 object that was
overwritten or deleted (with its multipart parts, tags), an aborted multipart upload, and Kinesis
records past their stream's retention that every Firehose delivery reading the stream has
delivered: replaying without them rebuilds the same lake. `Compactor` watches a replay and then
every entry journaled live, and says which entries can go; `upkeep.py` rewrites the journal
without them (`Journal.rewrite`: new file, fsync, rename) when they are more than half of it, at
start-up and while running. Everything it does not recognise is kept, so a kind of request it was
not written for costs disk, never state.

What stays although it is superseded, and why:
- the source of a copy (CopyObject, UploadPartCopy) as it was then: the replayed copy reads it;
- a delete, when an older version of its key stays (for the reason above): it deletes it again;
- the object holding a delivery stream's last checkpoint: delivery resumes from it;
- each shard's last records entry: the next record's sequence number follows it. Kept records
  entries carry their first sequence numbers (`kinesis.FIRST_SEQUENCE`), since the dropped ones
  no longer count them up on replay;
- every object of a bucket that ever had versioning, and every record of a resharded stream.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote
from xml.etree import ElementTree

from deathmetal_lake.local_aws import kinesis, moto_adapter
from deathmetal_lake.local_aws.delivery import CHECKPOINT_METADATA
from deathmetal_lake.local_aws.journal import Entry

_KINESIS = "Kinesis_20131202."
_RESHARDING = ("SplitShard", "MergeShards", "UpdateShardCount")
_COPY_SOURCE = "x-amz-copy-source"
_CHECKPOINT_HEADER = f"x-amz-meta-{CHECKPOINT_METADATA}"
# Sub-resources of an object that belong to its current version (dropped with it).
_OBJECT_SUBRESOURCES = ("tagging", "acl", "retention", "legal-hold")
_NAMESPACE = re.compile(r"\{[^}]*\}")

StreamKey = tuple[str, str, str]
"""(account, region, stream name) of a Kinesis stream."""


@dataclass
class _Version:
    """The entries that made one version of an S3 key."""

    entries: list[int]
    pinned: bool = False


@dataclass
class _Delete:
    """A delete (DeleteObject or DeleteObjects): needed only while an older version stays."""

    index: int
    earlier: list[_Version]


@dataclass
class _Records:
    """A journaled PutRecord(s) that stored records: where they went."""

    index: int
    stream: StreamKey
    incarnation: int
    ranges: dict[str, tuple[int, int]]
    applied_at: float


@dataclass
class Plan:
    """What a compaction keeps: (start, end, extras to add) per entry, and its sizes."""

    kept: list[tuple[int, int, dict[str, Any]]]
    kept_bytes: int
    dropped_bytes: int
    dropped_entries: int

    @property
    def worthwhile(self) -> bool:
        """More than half of the journal can go: rewriting costs the kept bytes, once."""
        return self.dropped_bytes > self.kept_bytes


@dataclass
class Compactor:
    """Watches a replay (`record`) and plans the compacted journal (`plan`)."""

    default_region: str
    _spans: list[tuple[int, int]] = field(default_factory=list)
    _versions: dict[tuple[str, str], _Version] = field(default_factory=dict)
    _superseded: list[_Version] = field(default_factory=list)
    _history: dict[tuple[str, str], list[_Version]] = field(default_factory=dict)
    _deletes: list[_Delete] = field(default_factory=list)
    _uploads: dict[str, list[int]] = field(default_factory=dict)
    _aborted: list[int] = field(default_factory=list)
    _versioned_buckets: set[str] = field(default_factory=set)
    _bucket_of: dict[int, str] = field(default_factory=dict)
    _checkpoints: dict[str, int] = field(default_factory=dict)
    _records: list[_Records] = field(default_factory=list)
    _incarnations: dict[StreamKey, int] = field(default_factory=dict)
    _resharded: set[StreamKey] = field(default_factory=set)

    # --- watching the replay ----------------------------------------------------------------

    def record(
        self,
        entry: Entry,
        *,
        stream: StreamKey | None = None,
        ranges: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        """Note one replayed entry; `stream` and `ranges` for records Kinesis stored."""
        index = len(self._spans)
        self._spans.append((entry.start, entry.end))
        if stream is not None:
            if ranges:
                self._records.append(
                    _Records(
                        index,
                        stream,
                        self._incarnations.get(stream, 0),
                        ranges,
                        entry.extra["t"],
                    )
                )
            return
        target = entry.header("X-Amz-Target")
        if target is not None:
            if target.startswith(_KINESIS):
                self._kinesis_control(entry, target.removeprefix(_KINESIS))
            return
        self._s3(index, entry)

    def _kinesis_control(self, entry: Entry, action: str) -> None:
        if action not in ("CreateStream", *_RESHARDING):
            return
        try:
            params = json.loads(entry.body)
        except ValueError:
            return
        name = params.get("StreamName") or (params.get("StreamARN") or "").rsplit("/", 1)[-1]
        region, account = moto_adapter.kinesis_request_context(
            entry.headers, entry.path, self.default_region
        )
        key = (account, region, name)
        if action == "CreateStream":
            self._incarnations[key] = self._incarnations.get(key, 0) + 1
        else:
            self._resharded.add(key)

    def _s3(self, index: int, entry: Entry) -> None:
        host = (entry.header("Host") or "").rsplit(":", 1)[0].strip("[]")
        if host != "localhost" and not _is_ip(host):
            return  # virtual-hosted style: the bucket is in the host name; not worth reading
        bucket, _, key = entry.path.lstrip("/").partition("/")
        if not bucket:
            return
        self._bucket_of[index] = bucket
        query = parse_qs(entry.query, keep_blank_values=True)
        if not key:
            if "versioning" in query or "object-lock" in query:
                self._versioned_buckets.add(bucket)
            elif entry.method == "POST" and "delete" in query:
                self._delete(index, bucket, _deleted_keys(entry.body))
            return
        key = unquote(key)
        upload_id = (query.get("uploadId") or [None])[0]
        if entry.method == "POST" and "uploads" in query:
            self._uploads[entry.extra.get("upload_id", "")] = [index]
        elif upload_id is not None and upload_id in self._uploads:
            self._upload_step(index, entry, bucket, key, upload_id)
        elif any(name in query for name in _OBJECT_SUBRESOURCES):
            version = self._versions.get((bucket, key))
            if version is not None:
                version.entries.append(index)
        elif entry.method == "PUT" and not query:
            self._pin_copy_source(entry)
            self._new_version(bucket, key, [index])
            if checkpoint := entry.header(_CHECKPOINT_HEADER):
                self._checkpoints[json.loads(checkpoint)["delivery_stream"]] = index
        elif entry.method == "DELETE" and not query:
            self._delete(index, bucket, [key])

    def _upload_step(self, index: int, entry: Entry, bucket: str, key: str, upload: str) -> None:
        steps = self._uploads[upload]
        steps.append(index)
        if entry.method == "PUT":
            self._pin_copy_source(entry)
        elif entry.method == "POST":
            self._new_version(bucket, key, self._uploads.pop(upload))
        elif entry.method == "DELETE":
            self._aborted += self._uploads.pop(upload)

    def _pin_copy_source(self, entry: Entry) -> None:
        source = entry.header(_COPY_SOURCE)
        if source is None:
            return
        bucket, _, key = unquote(source.split("?", 1)[0]).lstrip("/").partition("/")
        version = self._versions.get((bucket, key))
        if version is not None:
            version.pinned = True

    def _new_version(self, bucket: str, key: str, entries: list[int]) -> None:
        old = self._versions.get((bucket, key))
        if old is not None:
            self._superseded.append(old)
        self._versions[(bucket, key)] = version = _Version(entries)
        self._history.setdefault((bucket, key), []).append(version)

    def _delete(self, index: int, bucket: str, keys: list[str] | None) -> None:
        if keys is None:  # a DeleteObjects body that does not parse: keep it and what it names
            return
        earlier: list[_Version] = []
        for key in keys:
            earlier += self._history.get((bucket, key), [])
            old = self._versions.pop((bucket, key), None)
            if old is not None:
                self._superseded.append(old)
        self._deletes.append(_Delete(index, earlier))

    # --- planning ---------------------------------------------------------------------------

    def plan(
        self,
        *,
        now: float,
        retention_hours: dict[StreamKey, int],
        delivered: dict[StreamKey, dict[str, int]],
    ) -> Plan:
        """The entries to keep, given the streams' retention and what delivery has delivered.

        `retention_hours` and `delivered` describe the streams as they are after the replay
        (`delivered`: per shard, the position every delivery stream reading it has passed).
        """
        dropped: set[int] = set()
        for version in self._superseded:
            if not version.pinned:
                dropped.update(version.entries)
        dropped.difference_update(self._checkpoints.values())
        dropped.update(self._aborted)
        for delete in self._deletes:
            if all(set(v.entries) <= dropped for v in delete.earlier):
                dropped.add(delete.index)
        dropped = {i for i in dropped if self._bucket_of.get(i) not in self._versioned_buckets}
        dropped |= self._expired_records(now, retention_hours, delivered)

        kept: list[tuple[int, int, dict[str, Any]]] = []
        extras = {
            r.index: {kinesis.FIRST_SEQUENCE: {s: first for s, (first, _) in r.ranges.items()}}
            for r in self._records
        }
        kept_bytes = dropped_bytes = 0
        for index, (start, end) in enumerate(self._spans):
            if index in dropped:
                dropped_bytes += end - start
            else:
                kept.append((start, end, extras.get(index, {})))
                kept_bytes += end - start
        return Plan(kept, kept_bytes, dropped_bytes, len(dropped))

    def _expired_records(
        self,
        now: float,
        retention_hours: dict[StreamKey, int],
        delivered: dict[StreamKey, dict[str, int]],
    ) -> set[int]:
        """Records entries past retention and delivered, except each shard's last one."""
        last: dict[tuple[StreamKey, str], int] = {}
        for records in self._records:
            if records.incarnation == self._incarnations.get(records.stream, 0):
                for shard, (_, high) in records.ranges.items():
                    last[(records.stream, shard)] = max(last.get((records.stream, shard), 0), high)
        expired: set[int] = set()
        for records in self._records:
            if records.stream in self._resharded:
                continue
            current = records.incarnation == self._incarnations.get(records.stream, 0)
            hours = retention_hours.get(records.stream, 24) if current else 24
            if now - records.applied_at <= hours * 3600:
                continue
            if current:
                passed = delivered.get(records.stream, {})
                if any(
                    high >= last[(records.stream, shard)] or high > passed.get(shard, high)
                    for shard, (_, high) in records.ranges.items()
                ):
                    continue
            expired.add(records.index)
        return expired


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _deleted_keys(body: bytes) -> list[str] | None:
    """The keys a DeleteObjects request names, or None if its body does not parse."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None
    keys = []
    for element in root:
        if _local(element.tag) == "Object":
            key = next((c.text or "" for c in element if _local(c.tag) == "Key"), None)
            if key is None:
                return None
            keys.append(key)
    return keys


def _local(tag: str) -> str:
    """An XML tag without its namespace."""
    return _NAMESPACE.sub("", tag)
