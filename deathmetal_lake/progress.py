"""A landing's progress in its run's log: rows and MB sent, rows delivered, every few seconds.

A long landing (76 s at scale 100, or a minute of Firehose buffering on AWS) otherwise logs one
line at its start. `LandingProgress` is a context manager, entered once around the send and once
around the wait: the producer hands it its running totals (`SendOptions.progress`), and while it
is open a background thread logs them with the rows delivered so far at a steady pace, plus a
line each time it closes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

from deathmetal_lake.producer.sending import Sent

INTERVAL_SECONDS = 10.0


class LandingProgress:
    """Logs `rows sent (MB), rows delivered` every `interval_seconds` while it is open.

    `delivered` returns the delivered lines so far (Firehose's copies included, bronze removes
    them); it is called from the logging thread, so it must only read.
    """

    def __init__(
        self,
        log: logging.Logger | logging.LoggerAdapter,
        ingest_id: str,
        delivered: Callable[[], int],
        interval_seconds: float = INTERVAL_SECONDS,
    ) -> None:
        self._log, self._ingest_id, self._delivered = log, ingest_id, delivered
        self._interval = interval_seconds
        self._rows = self._bytes = 0
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sent(self, totals: Sent) -> None:
        """The producer's hook: the running totals after each PutRecords call."""
        self._rows, self._bytes = totals.rows, totals.bytes

    def line(self) -> str:
        return (
            f"{self._ingest_id}: {self._rows:,} rows sent ({self._bytes / 1e6:,.1f} MB), "
            f"{self._delivered():,} rows delivered, {time.monotonic() - self._started:.0f} s"
        )

    def __enter__(self) -> LandingProgress:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="landing-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if exc is None:
            self._log.info(self.line())

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._log.info(self.line())
