"""Plain ranged GETs of S3 objects, answered from the object's body alone.

moto's GetObject reads an object's whole body to slice a range out of it; a Polars reader of a
few columns of a large Parquet part sends dozens of ranged GETs. The gateway answers the plain
ones here (`Range: bytes=a-b` or `bytes=a-`, path-style, no query string, no conditions, CORS,
checksum or SSE-C headers) and hands everything else to moto, errors included.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

from deathmetal_lake.local_aws import moto_adapter
from deathmetal_lake.local_aws.responses import Response, status_line

_SIMPLE_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_FALLBACK_HEADERS = (
    "HTTP_IF_MATCH",
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_UNMODIFIED_SINCE",
    "HTTP_ORIGIN",
    "HTTP_X_AMZ_CHECKSUM_MODE",
    "HTTP_X_AMZ_SERVER_SIDE_ENCRYPTION_CUSTOMER_ALGORITHM",
)


def ranged_read(environ: dict[str, Any], region: str) -> Response | None:
    """The 206 answer to a plain ranged GET of an object; None hands the request to moto."""
    found = _SIMPLE_RANGE.fullmatch(environ.get("HTTP_RANGE", ""))
    if (
        found is None
        or environ.get("REQUEST_METHOD") != "GET"
        or environ.get("QUERY_STRING")
        or any(name in environ for name in _FALLBACK_HEADERS)
    ):
        return None
    bucket, _, key = environ.get("PATH_INFO", "").lstrip("/").partition("/")
    first, last = int(found.group(1)), found.group(2)
    ranged = moto_adapter.object_range(
        region, unquote(bucket), unquote(key), first, int(last) if last else None
    )
    if ranged is None:
        return None
    headers, body = ranged
    return Response(status_line(206), list(headers.items()), body)
