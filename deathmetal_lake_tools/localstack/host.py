"""Install, start and stop LocalStack Community 4.14.0 on the host: no Docker, no auth token.

The install comes from the package registries only (PyPI for LocalStack, npm for its Kinesis
emulator) and is cached outside the checkout, so a second run and a second clone reuse it. Each
LocalStack gets a root folder of its own (its filesystem root, temp files, log and pid); the
cached parts are linked in, never written to.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

VERSION = "4.14.0"
KINESIS_MOCK = "kinesis-local@0.5.2"
HERE = Path(__file__).resolve().parent
CONSTRAINTS = HERE / "constraints.txt"
PLUGIN = HERE / "plugin"
# A LocalStack plugin serving DynamoDB from moto (LocalStack's own DynamoDB downloads a jar).
PLUGIN_FILES = (PLUGIN / "pyproject.toml", PLUGIN / "ls_moto_ddb" / "__init__.py")
# Firehose reads a Kinesis source through a KCL consumer that keeps its leases in DynamoDB.
SERVICES = "s3,kinesis,firehose,iam,sts,dynamodb"
LOG_FILE = "localstack.log"
PID_FILE = "localstack.pid"
READY_SECONDS = 90.0
STOP_SECONDS = 30.0


class LocalStackError(RuntimeError):
    """LocalStack could not be installed, started or stopped."""


def cache_dir() -> Path:
    """The install, keyed by what goes into it: a changed constraint or plugin installs anew."""
    digest = hashlib.sha256()
    for path in (CONSTRAINTS, *PLUGIN_FILES):
        digest.update(path.read_bytes())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "deathmetal-lake" / f"localstack-{VERSION}-{digest.hexdigest()[:12]}"


def _python313() -> str:
    """LocalStack's package installer fails on 3.11 (`Lock | None`); it needs 3.13.

    A `python3.13` on PATH may be a pyenv shim of a version not selected: each is tried.
    """
    candidates = [shutil.which("python3.13")]
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False)
        candidates += sorted(Path(root.stdout.strip()).glob("versions/3.13*/bin/python3.13"))
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", ""], capture_output=True, check=False).returncode == 0:
            return str(candidate)
    raise LocalStackError("LocalStack needs Python 3.13: put python3.13 on PATH (or in pyenv)")


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LocalStackError(f"{what} failed ({' '.join(command)}):\n{result.stderr[-3000:]}")


def install() -> Path:
    """The cached install (venv and kinesis-mock), made if missing; safe to call in parallel."""
    cache = cache_dir()
    done = cache / ".complete"
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.parent / f"{cache.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return cache
        shutil.rmtree(cache, ignore_errors=True)  # a half-made install from an interrupted run
        venv = cache / "venv"
        _run([_python313(), "-m", "venv", "--without-pip", str(venv)], "creating the venv")
        # uv (bootstrapped into the project's venv by the Makefile) installs this in ~15 s.
        uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
        if uv is None:
            raise LocalStackError("uv not found: run `make .venv/.installed-test` first")
        # The plugin is built from a copy: a build leaves `build/` and `*.egg-info` behind.
        plugin = cache / "plugin"
        for path in PLUGIN_FILES:
            (plugin / path.relative_to(PLUGIN)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, plugin / path.relative_to(PLUGIN))
        _run(
            [
                uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
                "-c", str(CONSTRAINTS), f"localstack-core[runtime]=={VERSION}", str(plugin),
            ],
            "installing LocalStack",
        )  # fmt: skip
        npm = shutil.which("npm")
        if npm is None:
            raise LocalStackError("npm not found: LocalStack's Kinesis runs on Node.js")
        _run(
            [npm, "install", "--silent", "--prefix", str(cache / "kinesis-local"), KINESIS_MOCK],
            "installing kinesis-mock",
        )
        done.touch()
    return cache


def _java_home() -> Path:
    java = shutil.which("java")
    if java is None:
        raise LocalStackError("java not found: LocalStack's Firehose consumer (KCL) needs a JDK")
    return Path(java).resolve().parent.parent


def _filesystem(root: Path, cache: Path) -> Path:
    """LocalStack's filesystem root, with the system JDK and the cached kinesis-mock linked in
    where it looks for them (else it downloads Temurin and runs npm at start-up)."""
    lib = root / "fs" / "var" / "lib" / "localstack" / "lib"
    links = {
        lib / "java" / "11": _java_home(),
        lib / "kinesis-local" / KINESIS_MOCK.rsplit("@", 1)[1]: cache / "kinesis-local",
    }
    for link, target in links.items():
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return root / "fs"


@dataclass(frozen=True)
class LocalStack:
    """A LocalStack process started by `start`: its endpoint, process group and log."""

    root: Path
    port: int
    pid: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.root / LOG_FILE


def _ready(endpoint: str, log: Path) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/_localstack/health", timeout=1) as response:
            response.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
    return any(line.startswith("Ready.") for line in log.read_text(errors="replace").splitlines())


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def start(root: Path, port: int) -> LocalStack:
    """Start LocalStack in its own session, stdio to `root/localstack.log`; return once ready."""
    cache = install()
    root.mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    venv_bin = cache / "venv" / "bin"
    env = {
        **os.environ,
        "OVERRIDE_IN_DOCKER": "0",
        "FILESYSTEM_ROOT": str(_filesystem(root, cache)),
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "SERVICES": SERVICES,
        # The KCL lease table: moto's DynamoDB (the plugin), not DynamoDB Local (a download).
        "PROVIDER_OVERRIDE_DYNAMODB": "moto",
        "DISABLE_EVENTS": "1",
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        "DNS_ADDRESS": "0",
        "PERSISTENCE": "0",
        # The KCL's temp files (`kclipy.*`) go with the rest of this LocalStack.
        "TMPDIR": str(root / "tmp"),
        "VIRTUAL_ENV": str(cache / "venv"),
        # The KCL consumers (a JVM per delivery stream) must start within 90 s, or LocalStack
        # fails the delivery stream: the client compiler alone starts them with less CPU.
        "JAVA_TOOL_OPTIONS": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
        # The consumer script LocalStack writes starts with `#!/usr/bin/env python`.
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log = root / LOG_FILE
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(venv_bin / "python"), "-m", "localstack.runtime.main"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
            start_new_session=True,
        )
    (root / PID_FILE).write_text(f"{process.pid} {port}\n")
    started = LocalStack(root, port, process.pid)
    deadline = time.monotonic() + READY_SECONDS
    try:
        while not _ready(started.endpoint, log):
            if process.poll() is not None:
                raise LocalStackError(f"LocalStack exited ({process.returncode}):\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise LocalStackError(f"LocalStack not ready in {READY_SECONDS:.0f}s\n{_tail(log)}")
            time.sleep(0.5)
    except BaseException:
        stop(started)
        raise
    return started


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _parents() -> dict[int, int]:
    parents = {}
    for proc in Path("/proc").iterdir():
        with suppress(OSError, ValueError, IndexError):
            if proc.name.isdigit():
                stat = (proc / "stat").read_text()
                parents[int(proc.name)] = int(stat.rpartition(")")[2].split()[1])
    return parents


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants. LocalStack starts node and every KCL JVM in sessions of their
    own, so its process group alone does not hold them."""
    parents = _parents()
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _reap(pid: int) -> None:
    """Collect the leader's exit status if this process started it (a zombie keeps its pid)."""
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(running: LocalStack) -> None:
    """SIGTERM (LocalStack stops its Java and Node children), then SIGKILL what is left of it."""
    if not _group_alive(running.pid):
        return
    tree = process_tree(running.pid)
    os.killpg(running.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline:
        _reap(running.pid)
        if not any(_alive(pid) for pid in tree):
            break
        time.sleep(0.2)
    else:
        for pid in tree:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _reap(running.pid)
    (running.root / PID_FILE).unlink(missing_ok=True)


def recorded(root: Path) -> LocalStack | None:
    """The LocalStack `start` left running under `root`, if its process group still exists."""
    try:
        pid, port = (int(part) for part in (root / PID_FILE).read_text().split())
    except (FileNotFoundError, ValueError):
        return None
    return LocalStack(root, port, pid) if _group_alive(pid) else None


@contextmanager
def running(root: Path, port: int) -> Iterator[LocalStack]:
    """A LocalStack for the duration of the block, stopped however the block ends."""
    started = start(root, port)
    try:
        yield started
    finally:
        stop(started)
