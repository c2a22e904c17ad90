"""`python -m deathmetal_lake_tools.localstack`: a host-mode LocalStack 4.14.0.

- `install`: the cached install (PyPI and npm only), made if missing.
- `up [--port 4566]` / `down` / `status`: one LocalStack in the background, under
  `$LAKE_STATE_DIR/localstack/` (log `localstack.log`), for `LAKE_AWS_MODE=localstack`.
- `run -- COMMAND...`: start one on a free port, run the command with `LAKE_AWS_MODE=localstack`
  and `AWS_ENDPOINT_URL` pointing at it, stop it (and its Java and Node children) however the
  command ends; print the wall time and LocalStack's peak memory. Exits with the command's code.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

from deathmetal_lake.settings import load_settings
from deathmetal_lake_tools.localstack import host

PAGE = os.sysconf("SC_PAGE_SIZE")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tree_rss(pid: int) -> int:
    """Resident bytes of LocalStack and every process it started (its JVMs, node)."""
    total = 0
    for member in host.process_tree(pid):
        with suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * PAGE
    return total


class _PeakMemory(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak = pid, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            self.peak = max(self.peak, _tree_rss(self.pid))


def _run(command: list[str], root: Path) -> int:
    shutil.rmtree(root, ignore_errors=True)
    started = time.monotonic()
    with host.running(root, _free_port()) as localstack:
        print(f"LocalStack {host.VERSION} on {localstack.endpoint} (log {localstack.log})")
        memory = _PeakMemory(localstack.pid)
        memory.start()
        env = {**os.environ, "LAKE_AWS_MODE": "localstack", "AWS_ENDPOINT_URL": localstack.endpoint}
        code = subprocess.run(command, env=env, check=False).returncode
        memory.done.set()
        # Before LocalStack is stopped (and reaped): the largest process of the command alone.
        command_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    print(
        f"{' '.join(command)}: exit {code} in {time.monotonic() - started:.0f}s; peak memory: "
        f"LocalStack {memory.peak / 2**20:.0f} MiB (all its processes together), "
        f"the command's largest process {command_peak} MiB"
    )
    if code:
        print(f"LocalStack's log: {localstack.log}")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deathmetal_lake_tools.localstack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help="install LocalStack into the cache if missing")
    up = commands.add_parser("up", help="start LocalStack in the background")
    up.add_argument("--port", type=int, default=4566)
    commands.add_parser("down", help="stop the LocalStack `up` started")
    commands.add_parser("status", help="say whether it runs")
    run = commands.add_parser("run", help="run a command against a LocalStack of its own")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)

    state = load_settings().state_path.resolve()
    background = state / "localstack"
    try:
        if args.command == "install":
            print(host.install())
        elif args.command == "run":
            command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not command:
                parser.error("run: give the command after --")
            return _run(command, state / "localstack-run")
        elif args.command == "up":
            current = host.recorded(background)
            if current is None:
                current = host.start(background, args.port)
            print(f"{current.endpoint} (pid {current.pid}, log {current.log})")
        elif args.command == "down":
            current = host.recorded(background)
            if current is not None:
                host.stop(current)
            print("stopped" if current else "not running")
        else:
            current = host.recorded(background)
            print(f"running on {current.endpoint}" if current else "not running")
            return 0 if current else 3
    except host.LocalStackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
