"""The WSGI gateway in front of moto: journaling, replay, AWS-faithful refusals and fault injection.

Every request passes through here. Requests that change state are applied under one lock and
journaled in the order they were applied, so a replay rebuilds identical state (Kinesis sequence
numbers included, and moto's timestamps: each mutation is applied at a journaled instant).
Observers see each applied mutation, live and during replay alike; the Firehose delivery uses that
to keep its read positions in the same journal as the objects it wrote.
"""

from __future__ import annotations

import importlib
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from werkzeug.test import EnvironBuilder, run_wsgi_app
from werkzeug.wrappers import Request

from deathmetal_lake.local_aws.journal import Entry, Journal

SERVICE_ID = "deathmetal-lake-embedded-aws"
_READ_ONLY_OPERATIONS = ("Describe", "List", "Get")
_SKIPPED_HEADERS = {"content-length", "transfer-encoding", "connection"}
_UPLOAD_ID = re.compile(rb"<UploadId>([^<]+)</UploadId>")
_QUERY_UPLOAD_ID = re.compile(r"(^|&)uploadId=([^&]+)")
# moto stamps S3 LastModified, Kinesis arrival and creation times with the `utcnow` each of these
# modules imports; without a fixed clock a replay would restamp everything with the restart time.
_CLOCKED_MOTO_MODULES = ("moto.s3.models", "moto.kinesis.models", "moto.firehose.models")

Observer = Callable[[Entry], None]
Refusal = tuple[int, dict[str, Any]]
Guard = Callable[[Entry], Refusal | None]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass
class Response:
    status: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def ok(self) -> bool:
        return int(self.status.split(" ", 1)[0]) < 300


@dataclass
class Faults:
    """Injected faults, for tests and for users who want to see retries work."""

    put_records_failure_rate: float = 0.0
    seed: int = 0


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


def _is_object_read(entry: Entry) -> bool:
    """S3 GET/HEAD of an object: large, read-only, and safe to serve without the lock."""
    return (
        operation(entry) is None
        and entry.method in ("GET", "HEAD")
        and entry.path.strip("/").count("/") >= 1
    )


@contextmanager
def _moto_clock(applied_at: float | None) -> Iterator[None]:
    """moto reads `applied_at` (epoch seconds) as the current time; None leaves its clock alone.

    Only one thread at a time may hold it: the gateway's lock (or replay, before serving).
    """
    if applied_at is None:
        yield
        return
    frozen = datetime.fromtimestamp(applied_at, UTC).replace(tzinfo=None)

    def clock() -> datetime:
        return frozen

    modules = [importlib.import_module(name) for name in _CLOCKED_MOTO_MODULES]
    originals = [module.utcnow for module in modules]
    for module in modules:
        module.utcnow = clock
    try:
        yield
    finally:
        for module, original in zip(modules, originals, strict=True):
            module.utcnow = original


def _json_response(status: int, payload: dict[str, Any], content_type: str) -> Response:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
    return Response(
        f"{status} {reason}", [("Content-Type", content_type)], json.dumps(payload).encode()
    )


class Gateway:
    """WSGI app wrapping moto's; see the module docstring."""

    def __init__(
        self,
        backend: WsgiApp,
        journal: Journal,
        *,
        identity: dict[str, Any],
    ) -> None:
        self.backend = backend
        self.journal = journal
        self.identity = identity
        self.lock = threading.RLock()
        self.ready = False
        self.faults = Faults()
        self.observers: list[Observer] = []
        self.guards: list[Guard] = []
        self.status_provider: Callable[[], dict[str, Any]] = dict
        self._rng = random.Random(0)

    # --- replay -----------------------------------------------------------------------------

    def replay(self) -> int:
        """Apply the journal to the (fresh) backend; returns the number of entries replayed."""
        upload_ids: dict[str, str] = {}
        count = 0
        for entry in self.journal.replay():
            entry.query = _QUERY_UPLOAD_ID.sub(
                lambda m: f"{m.group(1)}uploadId={upload_ids.get(m.group(2), m.group(2))}",
                entry.query,
            )
            with _moto_clock(entry.extra.get("t")):
                response = self._dispatch(entry)
            if "upload_id" in entry.extra and (found := _UPLOAD_ID.search(response.body)):
                upload_ids[entry.extra["upload_id"]] = found.group(1).decode()
            if response.ok:
                self._notify(entry)
            count += 1
        return count

    # --- live requests ----------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO", "").startswith("/_lake/"):
            response = self._control(environ)
        else:
            response = self._handle(environ)
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
            if refusal := guard(entry):
                return _json_response(*refusal, content_type="application/x-amz-json-1.1")
        if not is_mutation(entry):
            with self.lock:
                return self._dispatch(entry)
        if (
            operation(entry) == "Kinesis_20131202.PutRecords"
            and self.faults.put_records_failure_rate
        ):
            return self._put_records_with_faults(entry)
        with self.lock:
            return self._apply(entry)

    def _apply(self, entry: Entry) -> Response:
        """Dispatch at a journaled instant, journal on success, tell observers; under the lock."""
        entry.extra["t"] = time.time()
        with _moto_clock(entry.extra["t"]):
            response = self._dispatch(entry)
        if response.ok:
            if entry.query.startswith("uploads") and (found := _UPLOAD_ID.search(response.body)):
                entry.extra["upload_id"] = found.group(1).decode()
            self.journal.append(entry)
            self._notify(entry)
        return response

    def _put_records_with_faults(self, entry: Entry) -> Response:
        """Fail a share of the records the way Kinesis throttling does, inside a 200 response."""
        request = json.loads(entry.body)
        records = request["Records"]
        with self.lock:
            failed = {
                i
                for i in range(len(records))
                if self._rng.random() < self.faults.put_records_failure_rate
            }
            kept = [r for i, r in enumerate(records) if i not in failed]
            accepted: list[dict[str, Any]] = []
            if kept:
                entry.body = json.dumps({**request, "Records": kept}).encode()
                response = self._apply(entry)
                if not response.ok:
                    return response
                accepted = json.loads(response.body)["Records"]
        stream = request.get("StreamName") or request.get("StreamARN", "")
        results, accepted_iter = [], iter(accepted)
        for i in range(len(records)):
            if i in failed:
                results.append(
                    {
                        "ErrorCode": "ProvisionedThroughputExceededException",
                        "ErrorMessage": (
                            f"Rate exceeded for shard in stream {stream} (injected fault)."
                        ),
                    }
                )
            else:
                results.append(next(accepted_iter))
        return _json_response(
            200,
            {"FailedRecordCount": len(failed), "Records": results},
            content_type="application/x-amz-json-1.1",
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
        request = Request(environ)
        path = environ["PATH_INFO"]
        if path == "/_lake/health":
            return _json_response(200, {**self.identity, "ready": self.ready}, "application/json")
        if path == "/_lake/delivery":
            return _json_response(200, self.status_provider(), "application/json")
        if path == "/_lake/faults" and request.method == "POST":
            settings = json.loads(request.get_data() or b"{}")
            with self.lock:
                self.faults = Faults(**settings)
                self._rng = random.Random(self.faults.seed)
            return _json_response(200, vars(self.faults), "application/json")
        return _json_response(404, {"error": f"unknown control path {path}"}, "application/json")
