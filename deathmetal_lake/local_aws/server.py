"""The embedded AWS process: moto behind the journaling gateway, plus Firehose delivery.

Start-up order matters: lock the state directory (one writer per journal), replay the journal
into a fresh moto, compact it if more than half of it no longer makes the state (then replay the
compacted journal), open the port, provision what is missing, then report ready and start
delivering, and compacting again whenever the journal has doubled (`upkeep.py`). Clients (see
`control.py`) wait for ready.
moto is imported only here, when serving: importing it is slow, and importers of this module's
names (the CLI, the tests) need not pay for it.
"""

from __future__ import annotations

import faulthandler
import fcntl
import logging
import os
import shutil
import signal
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import boto3
from botocore.config import Config

from deathmetal_lake.local_aws.control import EmbeddedAwsError
from deathmetal_lake.local_aws.journal import Journal

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer

    from deathmetal_lake.local_aws.delivery import FirehoseDelivery
    from deathmetal_lake.local_aws.gateway import Gateway
    from deathmetal_lake.local_aws.upkeep import JournalKeeper

log = logging.getLogger("deathmetal_lake.local_aws")

JOURNAL_FILE = "journal.bin"
WRITER_LOCK_FILE = "journal.lock"
SPILL_DIR = "spill"
"""moto's temporary files of S3 bodies: unlinked at once, emptied at start in case of leftovers."""


def _restore(
    state_dir: Path, endpoint: str, region: str, authority: str, compact_min_bytes: int
) -> tuple[Gateway, FirehoseDelivery, Journal, JournalKeeper]:
    """The gateway, delivery and journal rebuilt from the journal, compacted first if due."""
    from deathmetal_lake.local_aws.upkeep import JournalKeeper

    gateway, delivery, journal = _assemble(state_dir, endpoint, region, authority)
    keeper = JournalKeeper(gateway, delivery, journal, floor_bytes=compact_min_bytes)
    keeper.restore()
    gateway.grown = keeper.grown
    gateway.journal_status = keeper.status
    return gateway, delivery, journal, keeper


def serve(
    *,
    state_dir: Path,
    port: int,
    region: str,
    bucket: str,
    buffer_seconds: int,
    compact_min_mb: int = 64,
    host: str = "127.0.0.1",
) -> None:
    """Run until SIGTERM or SIGINT; see the module docstring."""
    state_dir = state_dir.resolve()
    endpoint = f"http://{host}:{port}"
    # `control.stop` asks a process that does not stop for its threads' stacks, to its log.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    writer_lock = hold_writer_lock(state_dir, endpoint)  # before importing moto: refuse at once

    from deathmetal_lake.local_aws.delivery import return_free_memory
    from deathmetal_lake.local_aws.provision import provision_lake

    gateway, delivery, journal, keeper = _restore(
        state_dir, endpoint, region, f"{host}:{port}", compact_min_mb * 1024 * 1024
    )
    return_free_memory()

    server = _serve_http(host, port, gateway)
    clients = _clients(endpoint, region)
    created = provision_lake(
        clients["s3"],
        clients["kinesis"],
        clients["firehose"],
        clients["iam"],
        bucket=bucket,
        region=region,
        buffering_seconds=buffer_seconds,
    )
    log.info("provisioned %s", ", ".join(created) or "nothing new")
    delivery.start()
    keeper.start()
    gateway.ready = True
    log.info("embedded AWS ready on %s (state in %s)", endpoint, state_dir)

    _wait_for_stop_signal()
    log.info("stopping: delivering buffered records")
    gateway.ready = False
    keeper.stop()
    delivery.stop()
    server.shutdown()
    journal.close()
    writer_lock.close()
    log.info("stopped")


def _serve_http(host: str, port: int, gateway: Gateway) -> BaseWSGIServer:
    """The gateway on `host:port`, answering from a thread of its own."""
    from werkzeug.serving import make_server

    from deathmetal_lake.local_aws import moto_adapter

    server = make_server(
        host, port, gateway, threaded=True, request_handler=moto_adapter.request_handler()
    )
    # How often the loop looks for a shutdown request: what a stop waits for, at most.
    http = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="http", daemon=True
    )
    http.start()
    return server


def hold_writer_lock(state_dir: Path, endpoint: str) -> TextIO:
    """Lock the state directory for this process's life; raise if another emulator has it.

    Two emulators appending to one journal would interleave their entries and corrupt it. The
    lock is `flock`'s: the kernel releases it when the process ends, however it ends, so it never
    goes stale. The file names the holder, for the error the next one raises.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / WRITER_LOCK_FILE
    handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = handle.read().strip() or "its pid and endpoint not yet written"
        handle.close()
        raise EmbeddedAwsError(
            f"the state folder {state_dir} is in use by another embedded AWS ({holder}); "
            "stop it (python -m deathmetal_lake.local_aws down, with its LAKE_EMBEDDED_PORT) "
            "or give this one another LAKE_STATE_DIR"
        ) from None
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {endpoint}\n")
    handle.flush()
    return handle


def _assemble(
    state_dir: Path, endpoint: str, region: str, host: str
) -> tuple[Gateway, FirehoseDelivery, Journal]:
    """moto behind the gateway, with Firehose delivery observing it; nothing replayed yet."""
    from deathmetal_lake.local_aws import moto_adapter
    from deathmetal_lake.local_aws.control import SERVICE_ID
    from deathmetal_lake.local_aws.delivery import FirehoseDelivery
    from deathmetal_lake.local_aws.gateway import Gateway

    # S3 bodies moto holds (requests' objects) over this size spill to temporary files. They go to
    # the state directory: /tmp is RAM on many systems, which would put the lake back in memory.
    spill = state_dir / SPILL_DIR
    shutil.rmtree(spill, ignore_errors=True)
    spill.mkdir(parents=True)
    moto_adapter.spill_s3_bodies(spill, threshold_bytes=1024 * 1024)

    identity = {
        "service": SERVICE_ID,
        "pid": os.getpid(),
        "state_dir": str(state_dir),
        "endpoint": endpoint,
    }
    journal = Journal(state_dir / JOURNAL_FILE)
    gateway = Gateway(
        moto_adapter.backend_app(), journal, identity=identity, region=region, host=host
    )
    delivery = FirehoseDelivery(region, gateway.put_object, gateway.lock)
    gateway.observers.append(delivery.observe)
    gateway.guards.append(delivery.refuse_direct_put)
    gateway.status_provider = delivery.status
    return gateway, delivery, journal


def _clients(endpoint: str, region: str) -> dict[str, Any]:
    """boto3 clients of the emulator itself, for provisioning."""
    return {
        service: boto3.client(
            service,
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(retries={"max_attempts": 10, "mode": "standard"}),
        )
        for service in ("s3", "kinesis", "firehose", "iam")
    }


def _wait_for_stop_signal() -> None:
    """Return once SIGTERM or SIGINT arrives.

    The wake-up is the byte the interpreter's own C handler writes to a socket (`set_wakeup_fd`),
    not a Python handler setting a `threading.Event`: that one can hang the stop for good, either
    when the signal lands while the main thread holds the event's lock (it does, entering `wait`)
    or when the kernel hands the signal to another thread, leaving the main thread asleep in
    `wait` where Python handlers never run. The C handler writes from whichever thread receives
    the signal and takes no lock.
    """
    woken, waker = socket.socketpair()
    waker.setblocking(False)
    signal.set_wakeup_fd(waker.fileno(), warn_on_full_buffer=False)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    woken.recv(1)
