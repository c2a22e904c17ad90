"""Start, find and stop the embedded AWS process.

Several Dagster processes (webserver, daemon, run workers) and `make` may all ask for the
emulator at the same moment; a file lock in the state directory makes exactly one of them start
it, and the others wait for it to report ready.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deathmetal_lake.settings import LakeSettings

SERVICE_ID = "deathmetal-lake-embedded-aws"
"""What the emulator's /_lake/health names itself (kept here: clients need not import moto)."""
LOG_FILE = "embedded-aws.log"
LOCK_FILE = "embedded-aws.lock"


class EmbeddedAwsError(RuntimeError):
    """The embedded AWS could not be started, reached or stopped."""


def endpoint(settings: LakeSettings) -> str:
    return f"http://127.0.0.1:{settings.embedded_port}"


def health(settings: LakeSettings, timeout: float = 1.0) -> dict[str, Any] | None:
    """The running emulator's identity, or None if nothing listens on the port.

    Raises if something else answers there (LocalStack, another emulator) or if it is the
    embedded AWS of another state directory: using it would mix two lakes.
    """
    url = f"{endpoint(settings)}/_lake/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise EmbeddedAwsError(
            f"{endpoint(settings)} is answered by something else (HTTP {error.code} on {url}); "
            "stop it, set LAKE_EMBEDDED_PORT to a free port, or set LAKE_AWS_MODE=localstack"
        ) from error
    # IncompleteRead: it was killed while it answered.
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.IncompleteRead):
        return None
    except ValueError as error:
        raise EmbeddedAwsError(f"{endpoint(settings)} is answered by something else") from error
    if payload.get("service") != SERVICE_ID:
        raise EmbeddedAwsError(f"{endpoint(settings)} is answered by something else: {payload}")
    wanted = str(settings.state_path.resolve())
    if payload["state_dir"] != wanted:
        raise EmbeddedAwsError(
            f"the embedded AWS on {endpoint(settings)} keeps its state in {payload['state_dir']}, "
            f"not {wanted}; stop it (python -m deathmetal_lake.local_aws down) or use another port"
        )
    return payload


@contextmanager
def _exclusive(settings: LakeSettings) -> Iterator[None]:
    settings.state_path.mkdir(parents=True, exist_ok=True)
    with (settings.state_path / LOCK_FILE).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _log_tail(settings: LakeSettings, lines: int = 20) -> str:
    path = settings.state_path / LOG_FILE
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def ensure_running(settings: LakeSettings, timeout: float = 120.0) -> str:
    """Start the embedded AWS unless it already runs; returns its endpoint once it is ready."""
    current = health(settings)
    if current and current["ready"]:
        return endpoint(settings)
    with _exclusive(settings):
        process = None
        if health(settings) is None:
            log = (settings.state_path / LOG_FILE).open("ab")
            # stdio goes to the log file: a child holding our stdout open would keep CI waiting.
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "deathmetal_lake.local_aws",
                    "serve",
                    "--state-dir",
                    str(settings.state_path.resolve()),
                    "--port",
                    str(settings.embedded_port),
                    "--region",
                    settings.region,
                    "--bucket",
                    settings.bucket,
                    "--buffer-seconds",
                    str(settings.embedded_buffer_seconds),
                    "--compact-min-mb",
                    str(settings.embedded_compact_min_mb),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = health(settings)
            if current and current["ready"]:
                return endpoint(settings)
            if process is not None and process.poll() is not None:
                raise EmbeddedAwsError(
                    f"the embedded AWS exited with code {process.returncode} while starting; "
                    f"its log ({settings.state_path / LOG_FILE}) ends with:\n{_log_tail(settings)}"
                )
            time.sleep(0.1)
    raise EmbeddedAwsError(
        f"the embedded AWS did not become ready within {timeout:.0f}s; "
        f"its log ({settings.state_path / LOG_FILE}) ends with:\n{_log_tail(settings)}"
    )


def start_in_background(settings: LakeSettings) -> threading.Thread:
    """Begin `ensure_running` in a thread and return at once.

    The emulator then boots while the caller imports Dagster (each takes seconds, and there are
    two cores); the caller's own `ensure_running` later waits on the same file lock until it is
    ready, and reports any failure to start.
    """
    thread = threading.Thread(
        target=ensure_running, args=(settings,), name="embedded-aws-start", daemon=True
    )
    thread.start()
    return thread


def stop(settings: LakeSettings, timeout: float = 60.0) -> bool:
    """Stop the emulator gracefully (it delivers what it buffered); False if none was running."""
    with _exclusive(settings):
        current = health(settings)
        if current is None:
            return False
        pid = int(current["pid"])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid) and health(settings) is None:
                return True
            time.sleep(0.1)
        stacks = _thread_stacks(settings, pid)
        os.kill(pid, signal.SIGKILL)
    raise EmbeddedAwsError(
        f"the embedded AWS (pid {pid}) did not stop within {timeout:.0f}s and was killed; "
        "nothing it acknowledged is lost (its journal has it: the next start delivers what it "
        f"had buffered). Its threads when it was killed, as in its log "
        f"({settings.state_path / LOG_FILE}):\n{stacks}"
    )


def _thread_stacks(settings: LakeSettings, pid: int) -> str:
    """Have a stuck emulator write every thread's stack to its log (SIGUSR1); return them."""
    path = settings.state_path / LOG_FILE
    before = path.stat().st_size if path.exists() else 0
    os.kill(pid, signal.SIGUSR1)
    time.sleep(1.0)
    with path.open("rb") as log:
        log.seek(before)
        return log.read().decode(errors="replace")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # An exited process stays a zombie until its parent reaps it: reap it if it is our child;
    # otherwise (its starter exited and nothing reaps orphans here) read its state.
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not _is_zombie(pid)
    return finished == 0


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"
