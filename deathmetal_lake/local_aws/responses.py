"""The answers the gateway builds itself: JSON, AWS-faithful refusals, moto's error rendering.

Kept apart from the gateway so its request handling reads on its own; each answer carries what
moto's own server would add, so a client cannot tell whether moto or the gateway answered.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from deathmetal_lake.local_aws import moto_adapter
from deathmetal_lake.local_aws.journal import Entry

JSON_1_1 = "application/x-amz-json-1.1"
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}


@dataclass
class Response:
    status: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def ok(self) -> bool:
        return int(self.status.split(" ", 1)[0]) < 300


def status_line(status: int) -> str:
    return f"{status} {_REASONS.get(status, 'Error')}"


def json_response(
    status: int, payload: dict[str, Any], content_type: str = "application/json"
) -> Response:
    return Response(
        status_line(status), [("Content-Type", content_type)], json.dumps(payload).encode()
    )


def moto_headers() -> list[tuple[str, str]]:
    """What moto's server adds to every answer (a request id, the CORS header)."""
    return [
        ("server", "amazon.com"),
        ("x-amzn-requestid", "".join(random.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", k=52))),
        ("Access-Control-Allow-Origin", "*"),
    ]


def refusal(entry: Entry, status: int, code: str, message: str) -> Response:
    """An error answer in the request's protocol: JSON (Kinesis, Firehose) or S3's XML."""
    if entry.header("X-Amz-Target") is not None:
        return json_response(status, {"__type": code, "message": message}, JSON_1_1)
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    )
    return Response(
        status_line(status), [("Content-Type", "application/xml"), *moto_headers()], body.encode()
    )


def error_response(error: moto_adapter.ServiceError) -> Response:
    """moto's answer to one of its exceptions, as its server renders it."""
    code, headers, body = moto_adapter.error_parts(error)
    return Response(status_line(code), [*headers, ("status", str(code)), *moto_headers()], body)
