"""The one module that reaches into moto's internals; the rest of the embedded AWS calls it.

moto's public surface is its HTTP server. The emulator needs more: replay at the journaled
instant (a frozen `utcnow`), Kinesis records whose payloads stay in the journal (written into a
shard's `records`), S3 objects whose body is a view of the journal (a key's `_value_buffer`), and
read access to Firehose and Kinesis models for delivery. None of that is moto's API, so it can
change in any release: moto is pinned exactly in pyproject.toml, and
`deathmetal_lake_tests/test_moto_adapter.py` checks each assumption made here against the installed
moto, so an upgrade that breaks one fails there by name instead of corrupting state.

Why a journal of our own and not moto's recorder (`/moto-api/recorder/*`): the recorder logs
every HTTP request, GETs included, as base64 inside JSON lines (a Kinesis payload, base64 already,
is encoded again), and replay is a manual POST that re-sends them all over HTTP to a server that
is already serving clients. Replayed requests run at replay time: Firehose objects get new
time-based keys and Kinesis records new arrival times, and a multipart upload fails because its
upload id is new. And it hooks into moto's request handling, which the emulator's fast paths skip
(Kinesis PutRecord(s), the objects Firehose delivery writes): the lake's records, delivered
objects and delivery positions would not be recorded at all. `test_moto_adapter.py` checks the
recorder's part of these claims.
"""

from __future__ import annotations

import importlib
import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.exceptions import JsonRESTError
from moto.core.utils import unix_time
from moto.firehose.models import firehose_backends
from moto.kinesis.exceptions import (
    InvalidArgumentError,
    RecordSizeExceedsLimit,
    TooManyRecords,
    TotalRecordsSizeExceedsLimit,
)
from moto.kinesis.models import kinesis_backends
from moto.kinesis.responses import KinesisResponse
from moto.moto_api._internal import moto_api_backend
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.s3 import notifications
from moto.s3.exceptions import S3ClientError
from moto.s3.models import FakeKey, s3_backends
from moto.s3.utils import metadata_from_headers
from moto.utilities.utils import get_partition
from werkzeug.datastructures import Headers

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "RECORD_ATTRIBUTES",
    "ServiceError",
    "unix_time",
]

ServiceError = JsonRESTError
"""What moto raises for an AWS error of a JSON-protocol service (Kinesis, Firehose)."""

CLOCKED_MODULES = ("moto.s3.models", "moto.kinesis.models", "moto.firehose.models")
"""The moto modules whose own `utcnow` import stamps S3, Kinesis and Firehose times."""

RECORD_ATTRIBUTES = (
    "partition_key",
    "data",
    "sequence_number",
    "explicit_hash_key",
    "created_at_datetime",
    "created_at",
    "to_json",
)
"""What moto's Kinesis code uses of a shard's record: a stand-in record must offer all of it."""


# --- the server ---------------------------------------------------------------------------------


def spill_s3_bodies(directory: Path, threshold_bytes: int) -> None:
    """S3 bodies over `threshold_bytes` go to temporary files in `directory`, not memory.

    moto spools bodies with `tempfile.SpooledTemporaryFile`, sized by an environment variable it
    reads for each object. Called once by the emulator's process, before it serves.
    """
    os.environ.setdefault("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", str(threshold_bytes))
    tempfile.tempdir = str(directory)


def backend_app() -> Any:
    """moto's WSGI application, dispatching on the request to each service's backend."""
    return DomainDispatcherApplication(create_backend_app)


def request_handler() -> type:
    """The werkzeug request handler moto's server uses (it keeps moto's header handling)."""
    return MotoRequestHandler


def reset() -> None:
    """Forget every backend's state, as a fresh process has none (before a second replay)."""
    moto_api_backend.reset()


def error_parts(error: JsonRESTError) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body of moto's answer to one of its exceptions."""
    return error.code, list(error.get_headers()), error.get_body().encode()


@contextmanager
def frozen_clock(applied_at: float | None) -> Iterator[None]:
    """moto reads `applied_at` (epoch seconds) as the current time; None leaves its clock alone.

    Only one thread at a time may hold it: the gateway's lock (or replay, before serving).
    """
    if applied_at is None:
        yield
        return
    frozen = datetime.fromtimestamp(applied_at, UTC).replace(tzinfo=None)

    def clock() -> datetime:
        return frozen

    modules = [importlib.import_module(name) for name in CLOCKED_MODULES]
    originals = [module.utcnow for module in modules]
    for module in modules:
        module.utcnow = clock
    try:
        yield
    finally:
        for module, original in zip(modules, originals, strict=True):
            module.utcnow = original


# --- S3 -----------------------------------------------------------------------------------------


def _s3_backend(region: str) -> Any:
    return s3_backends[DEFAULT_ACCOUNT_ID][get_partition(region)]


def require_bucket(region: str, bucket: str) -> None:
    """Raise moto's MissingBucket if `bucket` does not exist."""
    _s3_backend(region).get_bucket(bucket)


def store_object(
    region: str,
    bucket: str,
    key: str,
    body: io.IOBase,
    *,
    size: int,
    etag: str,
    headers: dict[str, str],
) -> None:
    """Put an object whose body moto reads from `body` (a seekable file), as PutObject would.

    What moto's PutObject handler does for a request with these headers (no ACL, tagging or
    redirect headers), minus parsing the request, copying the body and hashing it: the ETag and
    CRC32 checksum are the caller's. Call it under `frozen_clock` for its LastModified.
    """
    backend = _s3_backend(region)
    lowered = {name.lower(): value for name, value in headers.items()}
    stored = backend.put_object(
        bucket,
        key,
        b"",
        storage="STANDARD",
        etag=etag,
        checksum_value=lowered.get("x-amz-checksum-crc32"),
        disable_notification=True,
    )
    stored._value_buffer.close()
    stored._value_buffer = body
    stored.contentsize = size
    stored.set_metadata(metadata_from_headers(headers))
    stored.set_acl(backend.get_bucket(bucket).acl)
    stored.website_redirect_location = None
    stored.checksum_algorithm = lowered.get("x-amz-sdk-checksum-algorithm")
    notifications.send_event(
        backend.account_id,
        notifications.S3NotificationEvent.OBJECT_CREATED_PUT_EVENT,
        backend.get_bucket(bucket),
        stored,
    )
    backend.put_object_tagging(stored, {})


def object_range(
    region: str, bucket: str, key: str, first: int, last: int | None
) -> tuple[dict[str, str], bytes] | None:
    """Bytes `first`..`last` of an object and GetObject's headers for them (206), read from its
    body alone; None where moto's own handler must answer.

    moto's GetObject reads the whole body to slice a range out of it: about 80 ms per request on
    a 100 MB Parquet part, whatever the range, and a reader of a few columns sends dozens. None
    for what this does not cover (no such bucket or object, a version, encryption, another storage
    class, a range past the end), so moto answers those, errors included, as before.
    """
    try:
        stored = _s3_backend(region).get_object(bucket, key)
    except S3ClientError:
        return None
    if (
        not isinstance(stored, FakeKey)
        or stored.version_id != "null"
        or stored.encryption is not None
        or stored.storage_class != "STANDARD"
        or first >= stored.size
    ):
        return None
    end = stored.size - 1 if last is None else min(last, stored.size - 1)
    if first > end:
        return None
    with stored.lock:
        stored._value_buffer.seek(first)
        body = stored._value_buffer.read(end - first + 1)
    headers = {**stored.response_dict, **stored.metadata, "Accept-Ranges": "bytes"}
    headers["content-range"] = f"bytes {first}-{end}/{stored.size}"
    headers["content-length"] = str(len(body))
    return headers, body


def keep_upload_id(region: str, bucket: str, replayed: str, journaled: str) -> None:
    """Give the multipart upload moto created as `replayed` the id `journaled` it had live.

    moto draws a new random id on replay; the client of an upload under way holds the old one.
    """
    uploads = _s3_backend(region).get_bucket(bucket).multiparts
    upload = uploads.pop(replayed)  # not `del`: moto's dict disposes of the parts on delete
    upload.id = journaled
    uploads[journaled] = upload


# --- Kinesis ------------------------------------------------------------------------------------


def kinesis_request_context(
    headers: list[tuple[str, str]], path: str, default_region: str
) -> tuple[str, str]:
    """The region and account of a Kinesis request, resolved the way moto resolves them."""
    parsed = Headers(headers)
    probe = KinesisResponse()
    probe.headers = parsed
    probe.querystring = {}
    probe.default_region = default_region
    full_url = f"http://{parsed.get('Host', 'localhost')}{path}"
    region = probe.get_region_from_url(SimpleNamespace(headers=parsed), full_url)
    return region, probe.get_current_account()


def kinesis_stream(
    account_id: str, region: str, *, stream_arn: str | None, stream_name: str | None
) -> Any:
    """The stream named by ARN or name; raises moto's error when there is none."""
    backend = kinesis_backends[account_id][region]
    return backend.describe_stream(stream_arn=stream_arn, stream_name=stream_name)


def stream_name(stream: Any) -> str:
    return stream.stream_name


def shard_for_key(stream: Any, partition_key: Any, explicit_hash_key: Any) -> Any:
    """The shard a record goes to, validated as moto validates it (raising moto's errors)."""
    shard = stream.get_shard_for_key(partition_key, explicit_hash_key)
    if shard is None:
        raise InvalidArgumentError("explicit_hash_key")
    return shard


def shard_id(shard: Any) -> str:
    return shard.shard_id


def last_sequence_number(shard: Any) -> int:
    """The shard's highest sequence number, 0 when it has no record."""
    return next(reversed(shard.records), 0)


def append_record(shard: Any, record: Any) -> None:
    """Put `record` (offering `RECORD_ATTRIBUTES`) at its sequence number, the shard's next."""
    shard.records[record.sequence_number] = record


def record_at(shard: Any, sequence_number: int) -> Any | None:
    return shard.records.get(sequence_number)


def record_base64(record: Any) -> str:
    """The payload of one of moto's own records (a shard split's), in base64."""
    return record.data


def retention_hours(region: str) -> dict[tuple[str, str, str], int]:
    """Each stream's retention period, by (account, region, name), in the default account."""
    streams = kinesis_backends[DEFAULT_ACCOUNT_ID][region].streams
    return {
        (DEFAULT_ACCOUNT_ID, region, name): stream.retention_period_hours
        for name, stream in streams.items()
    }


def count_put(
    account_id: str, region: str, stream: Any, *, incoming_bytes: int, incoming_records: int
) -> None:
    """The CloudWatch metrics moto's PutRecord(s) emit for accepted records."""
    kinesis_backends[account_id][region]._send_stream_metrics(
        stream_name(stream), incoming_bytes=incoming_bytes, incoming_records=incoming_records
    )


def too_many_records() -> JsonRESTError:
    return TooManyRecords()


def request_too_large() -> JsonRESTError:
    return TotalRecordsSizeExceedsLimit()


def record_too_large(position: int) -> JsonRESTError:
    """The error for the record at `position` (counted from 1), as moto words it."""
    return RecordSizeExceedsLimit(position=position)


# --- Firehose -----------------------------------------------------------------------------------


def delivery_stream(account_id: str, region: str, name: str) -> Any | None:
    return firehose_backends[account_id][region].delivery_streams.get(name)


def delivery_stream_type(stream: Any) -> str:
    """`DirectPut` or `KinesisStreamAsSource`."""
    return stream.delivery_stream_type


def s3_destination(stream: Any) -> tuple[dict[str, Any], str]:
    """The ExtendedS3 destination as it was configured, and the stream's version id."""
    return stream.destinations[0]["ExtendedS3"], stream.version_id


def source_stream_name(stream: Any) -> str:
    """The name of the Kinesis stream a KinesisStreamAsSource stream reads."""
    return stream.source["KinesisStreamARN"].rsplit("/", 1)[-1]


def source_shards(account_id: str, region: str, stream: Any) -> dict[str, Any]:
    """The shards, by id, of the Kinesis stream a KinesisStreamAsSource stream reads."""
    source = kinesis_backends[account_id][region].streams[source_stream_name(stream)]
    return {shard.shard_id: shard for shard in source.shards.values()}
