"""Faults the embedded AWS can inject, to see the lake's retries work: all off by default.

Set them with `POST /_lake/faults` (a JSON object of `Faults` fields; `{}` clears them all):

    curl -X POST localhost:4566/_lake/faults -d '{"put_records_failure_rate": 0.2}'

They last until changed or until the emulator restarts. `deathmetal_lake_tests/test_faults.py`
uses every one of them against the whole lake.
"""

from __future__ import annotations

import errno
import logging
import os
import random
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

THROTTLED = "ProvisionedThroughputExceededException"
INTERNAL_FAILURE = "InternalFailure"
_KILLED_EXIT_CODE = 137  # what a shell reports for a process killed by SIGKILL


@dataclass(frozen=True)
class Faults:
    """What to break.

    - `put_records_failure_rate`, `put_records_internal_failure_rate`: the share of every
      PutRecords call's records that fail with ProvisionedThroughputExceededException or
      InternalFailure, inside a 200 answer, as Kinesis reports them (`FailedRecordCount`).
    - `s3_failed_uploads`, `s3_failure_prefix`: the next N multipart uploads to a key under the
      prefix (Polars writes every Parquet file as one) fail on each part and on completion with a
      500 InternalError, however often they are retried; the object never appears.
    - `exit_after_put_records`, `exit_after_deliveries`: the emulator exits at once, as if killed
      with SIGKILL, once it journaled the Nth PutRecords call (before answering it) or the Nth
      object Firehose delivered.
    - `journal_full`: every journal write fails with ENOSPC, as on a full disk.
    - `seed`: of the random choice of failing records.
    """

    put_records_failure_rate: float = 0.0
    put_records_internal_failure_rate: float = 0.0
    s3_failed_uploads: int = 0
    s3_failure_prefix: str = ""
    exit_after_put_records: int = 0
    exit_after_deliveries: int = 0
    journal_full: bool = False
    seed: int = 0


class FaultInjector:
    """The faults in force and what they have done so far; the gateway asks it at each hook."""

    def __init__(self) -> None:
        self.set(Faults())

    def set(self, faults: Faults) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._counts: Counter[str] = Counter()
        self._doomed_uploads: set[str] = set()

    def describe(self) -> dict[str, Any]:
        return asdict(self.faults)

    def record_failures(self, records: int) -> dict[int, str]:
        """Index -> error code of the records of one PutRecords call that fail."""
        throttled = self.faults.put_records_failure_rate
        internal = self.faults.put_records_internal_failure_rate
        if not throttled and not internal:
            return {}
        failures = {}
        for index in range(records):
            draw = self._rng.random()
            if draw < throttled:
                failures[index] = THROTTLED
            elif draw < throttled + internal:
                failures[index] = INTERNAL_FAILURE
        return failures

    def upload_created(self, key: str, upload_id: str) -> None:
        """A multipart upload started: doom it if uploads under the failure prefix are to fail."""
        if self._counts["uploads"] < self.faults.s3_failed_uploads and key.startswith(
            self.faults.s3_failure_prefix
        ):
            self._counts["uploads"] += 1
            self._doomed_uploads.add(upload_id)

    def fails_upload(self, method: str, upload_id: str | None) -> bool:
        """Whether a part or the completion (PUT or POST with an uploadId) of a doomed upload."""
        return method in ("PUT", "POST") and upload_id in self._doomed_uploads

    def check_journal_write(self, path: os.PathLike[str]) -> None:
        if self.faults.journal_full:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected fault)", path)

    def put_records_journaled(self) -> None:
        self._exit_at("put_records", self.faults.exit_after_put_records)

    def object_delivered(self) -> None:
        self._exit_at("deliveries", self.faults.exit_after_deliveries)

    def _exit_at(self, counter: str, limit: int) -> None:
        if not limit:
            return
        self._counts[counter] += 1
        if self._counts[counter] >= limit:
            log.warning("injected fault: exiting as if killed, after %d %s", limit, counter)
            os._exit(_KILLED_EXIT_CODE)
