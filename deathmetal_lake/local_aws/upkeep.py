"""Journal compaction at start-up and while the emulator runs, so its disk follows the lake.

The gateway shows every entry it replays or journals to a `Compactor`, so a plan of what can go
is at hand at any moment. Start-up compacts when more than half of the journal can go
(`compact`), then rebuilds moto from the compacted journal (`rebuild`). A running emulator does
the same, in place, when its journal has grown past max(a floor, twice its size after the last
compaction) and the plan is worthwhile (`JournalKeeper`): it stops the world, since moto's S3
bodies and Kinesis payloads are views into the journal by offset and the rewrite moves them all.

Stopping the world, in this order: Firehose delivery pauses between passes (a pass reads payloads
by offset outside the lock); the gateway's lock is taken, so every other request waits (none
fails); object reads, served outside the lock, are held back once those under way are done. Then
the journal is rewritten and moto rebuilt from it as a restart would, and delivery keeps the
records it had read but not delivered. A rewrite that fails (a full disk) leaves the journal and
moto as they were: the emulator serves on, and tries again once the journal doubled.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

from deathmetal_lake.local_aws import moto_adapter
from deathmetal_lake.local_aws.compaction import Compactor, Plan
from deathmetal_lake.local_aws.delivery import FirehoseDelivery, return_free_memory
from deathmetal_lake.local_aws.gateway import Gateway
from deathmetal_lake.local_aws.journal import Journal

log = logging.getLogger("deathmetal_lake.local_aws")

_REBUILD_FAILED_EXIT = 70


def compact(journal: Journal, plan: Plan) -> bool:
    """Rewrite the journal as `plan` says if that is worthwhile; True if it was rewritten.

    A failed rewrite (a full disk) leaves the journal as it was: the emulator serves on from it.
    """
    size = journal.path.stat().st_size if journal.path.exists() else 0
    if not plan.worthwhile:
        log.info(
            "journal: %d bytes, %d of them no longer needed: not compacted",
            size,
            plan.dropped_bytes,
        )
        return False
    try:
        compacted = journal.rewrite(plan.kept)
    except OSError as error:
        log.warning("journal compaction failed, the journal is kept as it was: %s", error)
        return False
    log.info(
        "journal compacted from %d to %d bytes (%d entries dropped)",
        size,
        compacted,
        plan.dropped_entries,
    )
    return True


def plan(gateway: Gateway, delivery: FirehoseDelivery) -> Plan:
    """What compacting the journal now would keep; under the gateway's lock once serving."""
    assert gateway.compactor is not None, "the gateway was built without its compactor"
    return gateway.compactor.plan(
        now=time.time(),
        retention_hours=moto_adapter.retention_hours(gateway.region),
        delivered=delivery.delivered(),
    )


def rebuild(gateway: Gateway, delivery: FirehoseDelivery) -> int:
    """moto, delivery and the compactor rebuilt in place from the journal as it is now.

    What a restart would hold, minus what only this process knew: delivery's unwritten buffer,
    which it keeps. Returns the number of entries replayed.
    """
    moto_adapter.reset()
    previous = delivery.forget()
    gateway.compactor = Compactor(gateway.region)
    replayed = gateway.replay()
    delivery.carry_over(previous)
    return replayed


class JournalKeeper:
    """Compacts the journal at start-up, then whenever it has doubled; see the module docstring."""

    def __init__(
        self, gateway: Gateway, delivery: FirehoseDelivery, journal: Journal, *, floor_bytes: int
    ) -> None:
        self.gateway = gateway
        self.delivery = delivery
        self.journal = journal
        self.floor_bytes = floor_bytes
        self._due = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._compacting = False
        self._compactions = 0
        self._last: dict[str, Any] | None = None
        self._failed: dict[str, Any] | None = None
        self._threshold = self._next_threshold(self._size())

    def _size(self) -> int:
        return self.journal.path.stat().st_size if self.journal.path.exists() else 0

    def _next_threshold(self, size: int) -> int:
        return max(self.floor_bytes, 2 * size)

    def grown(self, size: int) -> None:
        """The journal's size after an append (under the gateway's lock): wake the keeper if due."""
        if size > self._threshold:
            self._due.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="journal-keeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Wait for a compaction under way, and start none after it."""
        self._stopping.set()
        self._due.set()
        if self._thread is not None:
            self._thread.join()

    def restore(self) -> None:
        """At start-up, before serving: replay the journal, then compact it if worthwhile."""
        self.gateway.compactor = Compactor(self.gateway.region)
        replayed = self.gateway.replay()
        log.info("replayed %d journal entries from %s", replayed, self.journal.path)
        self.compact_now(during="at start-up")

    def _run(self) -> None:
        while True:
            self._due.wait()
            if self._stopping.is_set():
                return
            self._due.clear()
            if self._size() <= self._threshold:
                continue  # woken by appends made while the last compaction waited for the lock
            try:
                self.compact_now(during="while running")
            except Exception:
                # Planning failed (a bug): the journal and moto are untouched. Try again later.
                log.exception("journal compaction failed; the journal is kept as it was")
                self._threshold = self._next_threshold(self._size())

    def compact_now(self, *, during: str) -> bool:
        """Compact if worthwhile; True if the journal was rewritten and moto rebuilt from it."""
        with self.delivery.paused(), self.gateway.lock:
            locked = time.monotonic()
            if self.gateway.journal_error is not None:
                return False  # appends fail: the journal may end in a torn entry until a restart
            size = self._size()
            planned = plan(self.gateway, self.delivery)
            if not planned.worthwhile:
                compact(self.journal, planned)  # logs why not
                self._threshold = self._next_threshold(size)
                return False
            self._compacting = True
            try:
                with self.gateway.object_reads.closed():
                    if not compact(self.journal, planned):
                        self._threshold = self._next_threshold(size)
                        self._failed = {"at": _now(), "during": during, "bytes": size}
                        return False
                    replayed = self._rebuild()
            finally:
                self._compacting = False
            held = time.monotonic() - locked
            compacted = self._size()
            self._threshold = self._next_threshold(compacted)
            self._compactions += 1
            self._last = {
                "at": _now(),
                "during": during,
                "bytes_before": size,
                "bytes_after": compacted,
                "entries_dropped": planned.dropped_entries,
                "entries_replayed": replayed,
                "seconds": round(held, 3),
            }
        return_free_memory()  # the old state's buffers, given back to the system
        log.info(
            "replayed %d entries of the compacted journal (compacted %s in %.2f s, requests "
            "waiting meanwhile); next compaction considered past %d bytes",
            replayed,
            during,
            held,
            self._threshold,
        )
        return True

    def _rebuild(self) -> int:
        """`rebuild`; if it fails midway moto is half-built, so the process ends as if killed.

        The journal on disk is whole (the rewrite is done): the next start replays it.
        """
        try:
            return rebuild(self.gateway, self.delivery)
        except BaseException:
            log.critical(
                "rebuilding from the compacted journal failed; exiting so that a restart "
                "replays it (make aws-up)",
                exc_info=True,
            )
            logging.shutdown()
            os._exit(_REBUILD_FAILED_EXIT)

    def status(self) -> dict[str, Any]:
        """For `/_lake/health`: sizes and the last compaction; answers while one runs."""
        return {
            "bytes": self._size(),
            "compacting": self._compacting,
            "compactions": self._compactions,
            "next_compaction_past_bytes": self._threshold,
            "last_compaction": self._last,
            "last_failed_compaction": self._failed,
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
