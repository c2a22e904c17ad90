"""The WSGI gateway in front of moto: journaling, replay, AWS-faithful refusals and fault injection.

Every request passes through here. Requests that change state are applied under one lock and
journaled in the order they were applied, so a replay rebuilds identical state (Kinesis sequence
numbers included, and moto's timestamps: each mutation is applied at a journaled instant).
Observers see each applied mutation, live and during replay alike; the Firehose delivery uses that
to keep its read positions in the same journal as the objects it wrote. So does the compactor,
which plans what compacting the journal would drop at any moment (`upkeep.py`).

Kinesis PutRecord(s), the bulk of what the lake sends, skip moto's request handling (`kinesis.py`
applies them to moto's backend, payloads stay in the journal), and so do the objects Firehose
delivery writes (`put_object`: moto's ETag, checksum and metadata; the body's only copy stays in
the journal, read back by offset).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from werkzeug.test import EnvironBuilder, run_wsgi_app
from werkzeug.wrappers import Request

from deathmetal_lake.local_aws import kinesis, moto_adapter
from deathmetal_lake.local_aws.faults import THROTTLED, FaultInjector, Faults
from deathmetal_lake.local_aws.journal import Entry, Journal, ReadGate
from deathmetal_lake.local_aws.ranged_reads import ranged_read
from deathmetal_lake.local_aws.responses import (
    JSON_1_1,
    Response,
    error_response,
    json_response,
    moto_headers,
    refusal,
)

if TYPE_CHECKING:
    from deathmetal_lake.local_aws.compaction import Compactor

log = logging.getLogger(__name__)

_READ_ONLY_OPERATIONS = ("Describe", "List", "Get")
_SKIPPED_HEADERS = {"content-length", "transfer-encoding", "connection"}
_UPLOAD_ID = re.compile(rb"<UploadId>([^<]+)</UploadId>")
_BUCKET = re.compile(rb"<Bucket>([^<]+)</Bucket>")
_QUERY_UPLOAD_ID = re.compile(r"(^|&)uploadId=([^&]+)")
_KINESIS_PUTS = (kinesis.PUT_RECORD, kinesis.PUT_RECORDS)
# moto reads the account and region of a request from its credential scope, never the signature.
_INTERNAL_AUTHORIZATION = "AWS4-HMAC-SHA256 Credential=test/20250101"
# The journal entry of an object written by `put_object` holds its MD5 here (and a lazy body).
_OBJECT_ETAG = "etag"

Observer = Callable[[Entry], None]
Refusal = tuple[int, dict[str, Any]]
Guard = Callable[[Entry], Refusal | None]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class JournalUnwritable(RuntimeError):
    """The journal could not be written (a full disk, say): the emulator refuses every change."""


def operation(entry: Entry) -> str | None:
    """`Service_Version.Operation` of a JSON-protocol request (Kinesis, Firehose), else None."""
    return entry.header("X-Amz-Target")


def is_mutation(entry: Entry) -> bool:
    target = operation(entry)
    if target is not None:
        return not target.rsplit(".", 1)[-1].startswith(_READ_ONLY_OPERATIONS)
    if entry.path.startswith("/moto-api"):
        return False
    return entry.method in ("PUT", "POST", "DELETE")


def _object_key(entry: Entry) -> str:
    """The key of an S3 request on an object (path-style: `/bucket/key`)."""
    return unquote(entry.path.lstrip("/").partition("/")[2])


def _upload_id(entry: Entry) -> str | None:
    found = _QUERY_UPLOAD_ID.search(entry.query)
    return unquote(found.group(2)) if found else None


def _is_object_read(entry: Entry) -> bool:
    """S3 GET/HEAD of an object: large, read-only, and safe to serve without the lock."""
    return (
        operation(entry) is None
        and entry.method in ("GET", "HEAD")
        and entry.path.strip("/").count("/") >= 1
    )


class Gateway:
    """WSGI app wrapping moto's; see the module docstring."""

    def __init__(
        self,
        backend: WsgiApp,
        journal: Journal,
        *,
        identity: dict[str, Any],
        region: str,
        host: str,
    ) -> None:
        self.backend = backend
        self.journal = journal
        self.identity = identity
        self.region = region
        self.host = host
        self.lock = threading.RLock()
        self.ready = False
        self.faults = FaultInjector()
        self.journal_error: str | None = None
        self.observers: list[Observer] = []
        self.guards: list[Guard] = []
        self.status_provider: Callable[[], dict[str, Any]] = dict
        self.journal_status: Callable[[], dict[str, Any]] = dict
        self.compactor: Compactor | None = None
        """Sees every entry the journal holds, replayed or journaled live, to plan compaction."""
        self.grown: Callable[[int], None] = lambda size: None
        """Told the journal's size after each append (under the lock)."""
        self.object_reads = ReadGate()

    # --- replay -----------------------------------------------------------------------------

    def replay(self) -> int:
        """Apply the journal to the (fresh) backend; returns the number of entries replayed.

        `compactor`, if set, sees each entry as the journal holds it, with what Kinesis stored of
        it. A multipart upload gets back the id it had live: its client may still send parts.
        """
        count = 0
        for entry in self.journal.replay():
            if operation(entry) in _KINESIS_PUTS:
                self._replay_kinesis_put(entry)
                count += 1
                continue
            self._record(entry)
            if _OBJECT_ETAG in entry.extra:
                self._store_object(entry)
                self._notify(entry)
                count += 1
                continue
            with moto_adapter.frozen_clock(entry.extra.get("t")):
                response = self._dispatch(entry)
            if "upload_id" in entry.extra and (found := _UPLOAD_ID.search(response.body)):
                bucket = _BUCKET.search(response.body)
                moto_adapter.keep_upload_id(
                    self.region,
                    bucket.group(1).decode() if bucket else entry.path.strip("/").split("/")[0],
                    found.group(1).decode(),
                    entry.extra["upload_id"],
                )
            if response.ok:
                self._notify(entry)
            count += 1
        return count

    def _replay_kinesis_put(self, entry: Entry) -> None:
        try:
            plan = kinesis.plan(kinesis.parse(entry, self.region))
        except (ValueError, moto_adapter.ServiceError):
            # Answered with an error when it was live, so it changed nothing then either.
            self._record(entry)
            return
        ranges = kinesis.store(plan, entry, self.journal, frozenset(entry.extra.get("failed", ())))
        self._record(entry, plan, ranges)
        self._notify(entry)

    def _record(
        self,
        entry: Entry,
        plan: kinesis.Plan | None = None,
        ranges: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        """Show the compactor a journaled entry (with where Kinesis stored its records)."""
        if self.compactor is None:
            return
        if plan is None:
            self.compactor.record(entry)
            return
        stream = (
            plan.request.account_id,
            plan.request.region,
            moto_adapter.stream_name(plan.stream),
        )
        self.compactor.record(entry, stream=stream, ranges=ranges)

    # --- live requests ----------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO", "").startswith("/_lake/"):
            response = self._control(environ)
        else:
            response = self._handle(environ)
            if response is None:
                # moto reads the whole body (a view of the journal) before it returns.
                with self.object_reads.passing():
                    response = ranged_read(environ, self.region)
                    if response is None:
                        return self.backend(environ, start_response)
        headers = [(k, v) for k, v in response.headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(response.body))))
        start_response(response.status, headers)
        return [response.body]

    def _handle(self, environ: dict[str, Any]) -> Response | None:
        """Apply a request; None means "stream it straight through" (unlocked object reads)."""
        request = Request(environ)
        body = request.get_data()
        entry = Entry(
            method=request.method,
            path=environ.get("PATH_INFO", ""),
            query=environ.get("QUERY_STRING", ""),
            headers=[
                (k, v) for k, v in request.headers.items() if k.lower() not in _SKIPPED_HEADERS
            ],
            body=body,
        )
        if _is_object_read(entry):
            return None
        for guard in self.guards:
            if refused := guard(entry):
                return json_response(*refused, content_type="application/x-amz-json-1.1")
        if not is_mutation(entry):
            with self.lock:
                return self._dispatch(entry)
        if self.faults.fails_upload(entry.method, _upload_id(entry)):
            return refusal(
                entry,
                500,
                "InternalError",
                "We encountered an internal error. Please try again. (injected fault)",
            )
        try:
            if self.journal_error is not None:
                raise JournalUnwritable(self.journal_error)
            if operation(entry) in _KINESIS_PUTS:
                return self._kinesis_put(entry)
            with self.lock:
                return self._apply(entry)
        except JournalUnwritable as error:
            return refusal(entry, 507, "InsufficientStorage", str(error))

    def _journal(self, entry: Entry) -> None:
        """Append to the journal; once that failed, refuse every change until a restart.

        A write that failed may have left part of an entry, and the request it belongs to may
        already be applied in memory: going on would journal changes that depend on it. A restart
        replays what was journaled whole (a torn tail is cut) and drops the rest, which no client
        was told had succeeded.
        """
        if self.journal_error is None:
            try:
                self.faults.check_journal_write(self.journal.path)
                self.journal.append(entry)
                self.grown(entry.end)
                return
            except OSError as error:
                self.journal_error = (
                    f"the embedded AWS cannot write its journal {self.journal.path} "
                    f"({error.strerror or error}) and refuses every change until it is restarted: "
                    f"free space in {self.journal.path.parent}, then restart it (make aws-down, "
                    "make aws-up); everything it acknowledged before is kept"
                )
                log.error(self.journal_error)
        raise JournalUnwritable(self.journal_error)

    def _apply(self, entry: Entry) -> Response:
        """Dispatch at a journaled instant, journal on success, tell observers; under the lock."""
        entry.extra["t"] = time.time()
        with moto_adapter.frozen_clock(entry.extra["t"]):
            response = self._dispatch(entry)
        if response.ok:
            if entry.query.startswith("uploads") and (found := _UPLOAD_ID.search(response.body)):
                entry.extra["upload_id"] = found.group(1).decode()
            self._journal(entry)
            self._record(entry)
            if "upload_id" in entry.extra:
                self.faults.upload_created(_object_key(entry), entry.extra["upload_id"])
            self._notify(entry)
        return response

    def _kinesis_put(self, entry: Entry) -> Response:
        """PutRecord(s) through `kinesis.py`, failing a share of PutRecords' records if asked.

        An injected failure is what Kinesis throttling or an internal failure does: an error entry
        inside a 200 answer. The journal keeps the whole request and the indexes that failed, for
        replay.
        """
        try:
            request = kinesis.parse(entry, self.region)
        except ValueError:
            with self.lock:
                return self._apply(entry)  # not JSON: moto answers it as it would
        with self.lock:
            try:
                plan = kinesis.plan(request)
            except moto_adapter.ServiceError as error:
                return error_response(error)
            failed: dict[int, str] = {}
            if request.operation == kinesis.PUT_RECORDS:
                failed = self.faults.record_failures(len(request.records))
            entry.extra["t"] = time.time()
            if failed:
                entry.extra["failed"] = sorted(failed)
            if len(failed) < len(request.records):
                self._journal(entry)
                ranges = kinesis.store(plan, entry, self.journal, frozenset(failed))
                self._record(entry, plan, ranges)
                self._notify(entry)
                if request.operation == kinesis.PUT_RECORDS:
                    self.faults.put_records_journaled()
        if request.operation == kinesis.PUT_RECORD:
            accepted = plan.results[0]
            payload: dict[str, Any] = {
                "ShardId": accepted["ShardId"],
                "SequenceNumber": accepted["SequenceNumber"],
            }
        else:
            results, accepted_iter = [], iter(plan.results)
            for index, shard in enumerate(plan.shards):
                if index in failed:
                    message = (
                        f"Rate exceeded for shard {moto_adapter.shard_id(shard)} in stream "
                        f"{moto_adapter.stream_name(plan.stream)} under account "
                        f"{request.account_id} (injected fault)."
                        if failed[index] == THROTTLED
                        else "Internal service failure. (injected fault)"
                    )
                    results.append({"ErrorCode": failed[index], "ErrorMessage": message})
                else:
                    results.append(next(accepted_iter))
            payload = {"FailedRecordCount": len(failed), "Records": results}
        response = json_response(200, payload, JSON_1_1)
        response.headers += moto_headers()
        return response

    def put_object(self, bucket: str, key: str, body: bytes, metadata: dict[str, str]) -> None:
        """PutObject from inside the emulator (Firehose delivery): journaled, no request handling.

        The entry is the request boto3 would send (so the Firehose checkpoint in its metadata is
        observed like any other), plus the body's MD5, computed here outside the lock. The object
        goes straight into moto's backend with its body left in the journal (`_store_object`).
        """
        checksum = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
        entry = Entry(
            method="PUT",
            path=f"/{bucket}/{quote(key, safe='/~')}",
            query="",
            headers=[
                ("Host", self.host),
                *((f"X-Amz-Meta-{name}", value) for name, value in metadata.items()),
                ("X-Amz-Checksum-Crc32", checksum),
                ("X-Amz-Sdk-Checksum-Algorithm", "CRC32"),
                ("Authorization", f"{_INTERNAL_AUTHORIZATION}/{self.region}/s3/aws4_request"),
            ],
            body=body,
            extra={_OBJECT_ETAG: hashlib.md5(body, usedforsecurity=False).hexdigest()},
            lazy=True,
        )
        with self.lock:
            moto_adapter.require_bucket(self.region, bucket)  # raises before journaling
            entry.extra["t"] = time.time()
            self._journal(entry)
            self._record(entry)
            self._store_object(entry)
            self._notify(entry)
            self.faults.object_delivered()

    def _store_object(self, entry: Entry) -> None:
        """Apply a journaled `put_object` entry to moto's S3 backend, live and on replay alike.

        The body is a view of the journal, the ETag the journaled MD5: no copy, no hashing.
        """
        bucket_name, quoted_key = entry.path.lstrip("/").split("/", 1)
        with moto_adapter.frozen_clock(entry.extra["t"]):
            moto_adapter.store_object(
                self.region,
                bucket_name,
                unquote(quoted_key),
                self.journal.view(entry.offset, entry.size),
                size=entry.size,
                etag=entry.extra[_OBJECT_ETAG],
                headers=dict(entry.headers),
            )

    def _dispatch(self, entry: Entry) -> Response:
        builder = EnvironBuilder(
            path=entry.path,
            method=entry.method,
            query_string=entry.query,
            headers=entry.headers,
            data=entry.body,
        )
        try:
            environ = builder.get_environ()
        finally:
            builder.close()
        app_iter, status, headers = run_wsgi_app(self.backend, environ, buffered=True)
        try:
            body = b"".join(app_iter)
        finally:
            close = getattr(app_iter, "close", None)
            if close is not None:
                close()
        return Response(status, list(headers.items()), body)

    def _notify(self, entry: Entry) -> None:
        for observer in self.observers:
            observer(entry)

    # --- the emulator's own endpoints -------------------------------------------------------

    def _control(self, environ: dict[str, Any]) -> Response:
        request, path = Request(environ), environ["PATH_INFO"]
        if path == "/_lake/health":
            return json_response(
                200,
                {
                    **self.identity,
                    "ready": self.ready,
                    "journal_error": self.journal_error,
                    "journal": self.journal_status(),
                },
            )
        if path == "/_lake/delivery":
            return json_response(200, self.status_provider())
        if path == "/_lake/faults" and request.method == "POST":
            with self.lock:
                self.faults.set(Faults(**json.loads(request.get_data() or b"{}")))
            return json_response(200, self.faults.describe())
        return json_response(404, {"error": f"unknown control path {path}"})
