"""The embedded AWS process: moto behind the journaling gateway, plus Firehose delivery.

Start-up order matters: replay the journal into a fresh moto, open the port, provision what is
missing, then report ready and start delivering. Clients (see `control.py`) wait for ready.
moto is imported only here, when serving: importing it is slow, and importers of this module's
names (the CLI, the tests) need not pay for it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from deathmetal_lake.local_aws.journal import Journal

if TYPE_CHECKING:
    from deathmetal_lake.local_aws.delivery import FirehoseDelivery
    from deathmetal_lake.local_aws.gateway import Gateway

log = logging.getLogger("deathmetal_lake.local_aws")

JOURNAL_FILE = "journal.bin"
SPILL_DIR = "spill"
"""moto's temporary files of S3 bodies: unlinked at once, emptied at start in case of leftovers."""


def serve(
    *,
    state_dir: Path,
    port: int,
    region: str,
    bucket: str,
    buffer_seconds: int,
    host: str = "127.0.0.1",
) -> None:
    """Run until SIGTERM or SIGINT; see the module docstring."""
    from werkzeug.serving import make_server

    from deathmetal_lake.local_aws import moto_adapter
    from deathmetal_lake.local_aws.delivery import return_free_memory
    from deathmetal_lake.local_aws.provision import provision_lake

    state_dir = state_dir.resolve()
    endpoint = f"http://{host}:{port}"
    gateway, delivery, journal = _assemble(state_dir, endpoint, region, f"{host}:{port}")
    replayed = gateway.replay()
    return_free_memory()
    log.info("replayed %d journal entries from %s", replayed, journal.path)

    server = make_server(
        host, port, gateway, threaded=True, request_handler=moto_adapter.request_handler()
    )
    http = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    http.start()
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
    gateway.ready = True
    log.info("embedded AWS ready on %s (state in %s)", endpoint, state_dir)

    _wait_for_stop_signal()
    log.info("stopping: delivering buffered records")
    gateway.ready = False
    delivery.stop()
    server.shutdown()
    journal.close()
    log.info("stopped")


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
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    stopping.wait()
