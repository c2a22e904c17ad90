"""Firehose delivery from a Kinesis source, which moto accepts but never performs.

For every delivery stream of type KinesisStreamAsSource this reads each shard of the source stream
from where the delivery stream started (the stream's tip when it was created, as on AWS),
concatenates the records as they are (no delimiter), and writes an S3 object when the buffer
reaches its size hint or its oldest record reaches the interval hint, under the key Firehose uses:
`{prefix}YYYY/MM/DD/HH/{name}-{version}-YYYY-MM-DD-HH-MM-SS-{uuid}` in UTC.

The read position after each object travels in that object's own PutObject (as user metadata), so
the journal holds the object and the position in one entry: after a restart, even after SIGKILL,
delivery resumes exactly after the last delivered record. Objects are written through the
gateway's `put_object` (journaled like any request, without an HTTP round trip), and payloads are
read back from the journal outside the gateway's lock, so sending is not held up meanwhile.
"""

from __future__ import annotations

import ctypes
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from deathmetal_lake.local_aws import moto_adapter
from deathmetal_lake.local_aws.gateway import Entry, Refusal, operation
from deathmetal_lake.local_aws.kinesis import payload_size, payloads

log = logging.getLogger(__name__)

CHECKPOINT_METADATA = "lake-delivery"
_CHECKPOINT_HEADER = f"x-amz-meta-{CHECKPOINT_METADATA}"
KINESIS_SOURCE = "KinesisStreamAsSource"


def return_free_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps it, so idle RSS stays at the peak).

    Megabyte-sized request and object buffers come and go by the thousand; without this the
    process keeps hundreds of MB it no longer uses. A no-op where libc has no malloc_trim.
    """
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


class ObjectWriter(Protocol):
    def __call__(self, bucket: str, key: str, body: bytes, metadata: dict[str, str]) -> None: ...


@dataclass
class _Delivery:
    """One delivery stream's positions (last sequence number per shard) and buffer."""

    name: str
    committed: dict[str, int]
    read: dict[str, int]
    buffer: list[tuple[str, int, bytes]] = field(default_factory=list)
    buffered_bytes: int = 0
    first_buffered_at: float | None = None
    objects: int = 0
    deleted: bool = False


class FirehoseDelivery:
    """Runs Kinesis-source deliveries of one moto region; see the module docstring."""

    def __init__(
        self,
        region: str,
        write_object: ObjectWriter,
        lock: threading.RLock,
        *,
        poll_seconds: float = 0.05,
        account_id: str = moto_adapter.DEFAULT_ACCOUNT_ID,
    ) -> None:
        self.region = region
        self.write_object = write_object
        self.lock = lock
        self.poll_seconds = poll_seconds
        self.account_id = account_id
        self._deliveries: dict[str, _Delivery] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pass = threading.Lock()
        """Held by the loop for each pass over the deliveries; `paused` takes it between passes."""

    # --- moto state -------------------------------------------------------------------------

    def _delivery_stream(self, name: str) -> Any | None:
        return moto_adapter.delivery_stream(self.account_id, self.region, name)

    def _source_shards(self, delivery_stream: Any) -> dict[str, Any]:
        return moto_adapter.source_shards(self.account_id, self.region, delivery_stream)

    # --- observing the journal (live and on replay) -------------------------------------------

    def observe(self, entry: Entry) -> None:
        """Track delivery streams and checkpoints from each applied mutation."""
        target = operation(entry)
        if target == "Firehose_20150804.CreateDeliveryStream":
            request = json.loads(entry.body)
            if request.get("DeliveryStreamType") == KINESIS_SOURCE:
                self._start(request["DeliveryStreamName"])
        elif target == "Firehose_20150804.DeleteDeliveryStream":
            deleted = self._deliveries.pop(json.loads(entry.body)["DeliveryStreamName"], None)
            if deleted is not None:
                # A pass already under way stops reading: it would deliver records put after the
                # deletion and checkpoint them into a new delivery stream of the same name.
                deleted.deleted = True
        elif entry.method == "PUT" and (checkpoint := entry.header(_CHECKPOINT_HEADER)):
            state = json.loads(checkpoint)
            delivery = self._deliveries.get(state["delivery_stream"])
            if delivery is not None:
                delivery.committed = {k: int(v) for k, v in state["positions"].items()}
                for shard, position in delivery.committed.items():
                    delivery.read[shard] = max(delivery.read.get(shard, 0), position)

    def _start(self, name: str) -> None:
        """A new delivery stream starts at its source's tip, as Firehose does."""
        shards = self._source_shards(self._delivery_stream(name))
        tip = {
            shard_id: moto_adapter.last_sequence_number(shard) for shard_id, shard in shards.items()
        }
        self._deliveries[name] = _Delivery(name, committed=dict(tip), read=dict(tip))

    def refuse_direct_put(self, entry: Entry) -> Refusal | None:
        """AWS refuses PutRecord(Batch) on a Kinesis-source delivery stream; moto does not."""
        if operation(entry) not in (
            "Firehose_20150804.PutRecord",
            "Firehose_20150804.PutRecordBatch",
        ):
            return None
        name = json.loads(entry.body).get("DeliveryStreamName")
        with self.lock:
            stream = self._delivery_stream(name)
        if stream is None or moto_adapter.delivery_stream_type(stream) != KINESIS_SOURCE:
            return None
        return 400, {
            "__type": "InvalidArgumentException",
            "message": (
                "This operation is not permitted on KinesisStreamAsSource delivery stream type."
            ),
        }

    # --- the delivery loop ------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="firehose-delivery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and deliver what is buffered, so a clean stop leaves nothing waiting."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for delivery in list(self._deliveries.values()):
            try:
                self._deliver(delivery, final=True)
            except Exception:
                # Still in Kinesis, journaled, with the read position of the last object: the
                # next start delivers them.
                log.exception(
                    "delivery of %s failed at stop; the next start delivers it", delivery.name
                )

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No delivery pass runs meanwhile: a pass reads payloads by journal offset, unlocked.

        Take it before the gateway's lock: the pass under way may need the lock to finish.
        """
        with self._pass:
            yield

    def forget(self) -> dict[str, _Delivery]:
        """Drop the deliveries, for a replay to rebuild them; what they were, for `carry_over`."""
        previous, self._deliveries = self._deliveries, {}
        return previous

    def carry_over(self, previous: dict[str, _Delivery]) -> None:
        """Keep what a replay cannot know across a rebuild: records read, not yet delivered.

        Positions are sequence numbers and buffers hold the payloads themselves, so both stay
        true whatever the journal's offsets became.
        """
        for name, delivery in self._deliveries.items():
            old = previous.get(name)
            if old is None or old.deleted:
                continue
            if old.committed != delivery.committed:
                # Delivered positions come from the journal; the rebuilt ones are the truth. The
                # old buffer is dropped, and its records are read again from those positions.
                log.warning(
                    "delivery %s: positions %s before the rebuild, %s after; reading again",
                    name,
                    old.committed,
                    delivery.committed,
                )
                continue
            delivery.read = old.read
            delivery.buffer = old.buffer
            delivery.buffered_bytes = old.buffered_bytes
            delivery.first_buffered_at = old.first_buffered_at
            delivery.objects = old.objects

    def _run(self) -> None:
        written = trimmed_at = 0
        while not self._stop.wait(self.poll_seconds):
            with self._pass:
                for delivery in list(self._deliveries.values()):
                    try:
                        self._deliver(delivery)
                    except Exception:
                        # Firehose retries delivery; so do we, a second later, from the same buffer.
                        log.exception("delivery of %s failed; retrying", delivery.name)
                        self._stop.wait(1.0)
            now_written = sum(d.objects for d in list(self._deliveries.values()))
            if now_written == written != trimmed_at:
                # A burst of deliveries is over: give the memory its buffers used back.
                return_free_memory()
                trimmed_at = written
            written = now_written

    def _deliver(self, delivery: _Delivery, *, final: bool = False) -> None:
        with self.lock:
            stream = self._delivery_stream(delivery.name)
            if stream is None:
                return
            destination, version = moto_adapter.s3_destination(stream)
        hints = destination.get("BufferingHints", {})
        size_limit = int(hints.get("SizeInMBs", 5)) * 1024 * 1024
        interval = float(hints.get("IntervalInSeconds", 300))
        while True:
            more = self._read(delivery, stream, size_limit)
            if delivery.deleted:
                return
            while delivery.buffered_bytes >= size_limit:
                self._flush(delivery, destination, version, size_limit)
            age = time.monotonic() - (delivery.first_buffered_at or time.monotonic())
            if delivery.buffer and (final or age >= interval):
                self._flush(delivery, destination, version, size_limit)
            if not more:
                return

    def _read(self, delivery: _Delivery, stream: Any, size_limit: int) -> bool:
        """Move new records into the buffer, up to about one object; True if more are waiting.

        Only picking the records needs the lock; their payloads are read and decoded after it.
        """
        picked: list[tuple[str, int, Any]] = []
        size = delivery.buffered_bytes
        more = False
        with self.lock:
            if delivery.deleted:
                return False
            for shard_id, shard in self._source_shards(stream).items():
                position = delivery.read.get(shard_id, 0)
                last = moto_adapter.last_sequence_number(shard)
                while position < last:
                    if size >= size_limit:
                        more = True
                        break
                    position += 1
                    record = moto_adapter.record_at(shard, position)
                    if record is not None:
                        picked.append((shard_id, position, record))
                        size += payload_size(record)
                if more:
                    break
        decoded = payloads([record for _, _, record in picked])
        for (shard_id, position, _), data in zip(picked, decoded, strict=True):
            if not delivery.buffer:
                delivery.first_buffered_at = time.monotonic()
            delivery.buffer.append((shard_id, position, data))
            delivery.buffered_bytes += len(data)
            delivery.read[shard_id] = position
        return more

    def _flush(
        self, delivery: _Delivery, destination: dict[str, Any], version: str, size_limit: int
    ) -> None:
        """Write the oldest buffered records (at most `size_limit` bytes, at least one)."""
        taken, size = 0, 0
        for _, _, data in delivery.buffer:
            if taken and size + len(data) > size_limit:
                break
            taken, size = taken + 1, size + len(data)
        records = delivery.buffer[:taken]
        positions = dict(delivery.committed)
        for shard_id, sequence, _ in records:
            positions[shard_id] = sequence
        now = datetime.now(UTC)
        key = (
            f"{destination.get('Prefix', '')}{now:%Y/%m/%d/%H}/"
            f"{delivery.name}-{version}-{now:%Y-%m-%d-%H-%M-%S}-{uuid.uuid4()}"
        )
        checkpoint = json.dumps({"delivery_stream": delivery.name, "positions": positions})
        self.write_object(
            destination["BucketARN"].rsplit(":", 1)[-1],
            key,
            b"".join(data for _, _, data in records),
            {CHECKPOINT_METADATA: checkpoint},
        )
        del delivery.buffer[:taken]
        delivery.buffered_bytes -= size
        delivery.objects += 1
        delivery.first_buffered_at = time.monotonic() if delivery.buffer else None

    def delivered(self) -> dict[tuple[str, str, str], dict[str, int]]:
        """Per source stream (account, region, name) and shard: what every delivery delivered."""
        passed: dict[tuple[str, str, str], dict[str, int]] = {}
        with self.lock:
            for delivery in self._deliveries.values():
                stream = self._delivery_stream(delivery.name)
                if stream is None:
                    continue
                key = (self.account_id, self.region, moto_adapter.source_stream_name(stream))
                shards = passed.setdefault(key, {})
                for shard, position in delivery.committed.items():
                    shards[shard] = min(shards.get(shard, position), position)
        return passed

    def status(self) -> dict[str, Any]:
        """Positions and buffers, for `/_lake/delivery` and the tests."""
        with self.lock:
            return {
                name: {
                    "committed": dict(d.committed),
                    "read": dict(d.read),
                    "buffered_records": len(d.buffer),
                    "buffered_bytes": d.buffered_bytes,
                    "objects_this_run": d.objects,
                }
                for name, d in self._deliveries.items()
            }
