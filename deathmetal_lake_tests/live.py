"""The lake under `dagster dev`, started as `make dev` starts it, and watched through GraphQL.

`running_lake` starts the embedded AWS (`python -m deathmetal_lake.local_aws up`) and then
`dagster dev` (webserver and daemon) with a lake of its own: a fresh DAGSTER_HOME, free ports, its
own state folder and a copy of the sample CSVs as the watched folder. Everything logs to files and
is stopped when the block ends, on failure too. `LakeView` reads what the UI shows: runs, asset
materializations, check executions and sensor ticks, through the webserver's `/graphql`.

Used by `test_live.py` and by `scripts/screenshots.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import polars as pl

from deathmetal_lake.resources import LakeResource
from deathmetal_lake.settings import LakeSettings
from deathmetal_lake_tests.conftest import REPO_ROOT, SAMPLE_CSV_DIR, free_port, make_settings

DAGSTER = Path(sys.executable).with_name("dagster")
ACTIVE_RUN_STATUSES = {
    "QUEUED",
    "NOT_STARTED",
    "MANAGED",
    "STARTING",
    "STARTED",
    "SUSPENDED",
    "CANCELING",
}
POLL_SECONDS = 1.0
LOG_TAIL_LINES = 60


@dataclass(frozen=True)
class LiveLake:
    """A running `dagster dev` and embedded AWS, and where they keep their files."""

    root: Path
    settings: LakeSettings
    url: str
    dagster_log: Path

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        text = self.dagster_log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def lake_environment(settings: LakeSettings) -> dict[str, str]:
    """The environment of `make dev` for these settings, with none of the caller's AWS setup."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "LAKE_", "DAGSTER_"))
    }
    env.update(
        {
            "LAKE_AWS_MODE": settings.aws_mode.value,
            "LAKE_EMBEDDED_PORT": str(settings.embedded_port),
            "LAKE_STATE_DIR": str(settings.state_dir),
            "LAKE_CSV_DIR": str(settings.csv_dir),
            "LAKE_BUCKET": settings.bucket,
            "AWS_DEFAULT_REGION": settings.region,
            "LAKE_EMBEDDED_BUFFER_SECONDS": str(settings.embedded_buffer_seconds),
            "LAKE_LANDING_TIMEOUT_SECONDS": str(settings.landing_timeout_seconds),
            "DAGSTER_HOME": str(settings.instance_dir),
            "AWS_CONFIG_FILE": str(settings.state_dir / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(settings.state_dir / "no-aws-credentials"),
        }
    )
    return env


def _local_aws(command: str, env: dict[str, str], log: Path) -> None:
    with log.open("ab") as out:
        subprocess.run(
            [sys.executable, "-m", "deathmetal_lake.local_aws", command],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=180,
        )


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # ProcessLookupError: every process of the group has exited already.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _stop_group(process: subprocess.Popen[bytes], grace_seconds: float = 30.0) -> None:
    """SIGTERM to the group (`dagster dev` and its children); then SIGKILL to what is left."""
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        print(f"dagster dev still running {grace_seconds:.0f} s after SIGTERM; killing it")
    _signal_group(process, signal.SIGKILL)
    process.wait()


def _wait_for_webserver(lake: LiveLake, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"dagster dev exited with {process.returncode}; its log ends with:\n"
                + lake.log_tail()
            )
        try:
            with urllib.request.urlopen(f"{lake.url}/server_info", timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(POLL_SECONDS)
    raise TimeoutError(f"no webserver at {lake.url} after {timeout:.0f} s:\n{lake.log_tail()}")


@contextmanager
def running_lake(
    root: Path, csv_source: Path = SAMPLE_CSV_DIR, startup_timeout: float = 180.0
) -> Iterator[LiveLake]:
    """`make dev` on a lake of its own under `root`; stops what it started when the block ends."""
    root.mkdir(parents=True, exist_ok=True)
    csv_dir = root / "csv"
    shutil.copytree(csv_source, csv_dir)
    settings = make_settings(root / "state", csv_dir=csv_dir)
    settings.instance_dir.mkdir(parents=True)
    env = lake_environment(settings)
    port = free_port()
    lake = LiveLake(root, settings, f"http://127.0.0.1:{port}", root / "dagster-dev.log")
    aws_log = root / "local-aws-cli.log"
    try:
        _local_aws("up", env, aws_log)
        with lake.dagster_log.open("ab") as log:
            # A session of its own: the group can be signalled as a whole, and a shell's SIGINT
            # (ignored by background jobs of non-interactive shells) plays no part.
            process = subprocess.Popen(
                [str(DAGSTER), "dev", "-h", "127.0.0.1", "-p", str(port)],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_for_webserver(lake, process, startup_timeout)
            yield lake
        finally:
            _stop_group(process)
    finally:
        _local_aws("down", env, aws_log)


# --- GraphQL -------------------------------------------------------------------------------------

WORKSPACE_QUERY = """
query Workspace {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on RepositoryLocation { repositories { name } }
          ... on PythonError { message }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""

STATE_QUERY = """
query LakeState($repository: RepositorySelector!) {
  runsOrError(limit: 500) {
    __typename
    ... on Runs {
      results {
        runId
        status
        creationTime
        startTime
        endTime
        tags { key value }
        assetSelection { path }
      }
    }
  }
  assetNodes {
    assetKey { path }
    groupName
    dependencyKeys { path }
    assetMaterializations(limit: 1) { timestamp runId }
    assetChecksOrError {
      __typename
      ... on AssetChecks { checks { name } }
    }
  }
  sensorsOrError(repositorySelector: $repository) {
    __typename
    ... on Sensors {
      results {
        name
        sensorState {
          status
          ticks(limit: 1) { status timestamp endTimestamp runIds error { message } }
        }
      }
    }
  }
}
"""

CHECK_EXECUTIONS_QUERY = """
query CheckExecutions($assetKey: AssetKeyInput!, $checkName: String!) {
  assetCheckExecutions(assetKey: $assetKey, checkName: $checkName, limit: 1000) {
    runId
    status
    timestamp
  }
}
"""

RUN_FAILURE_QUERY = """
query RunFailure($runId: ID!) {
  logsForRun(runId: $runId, limit: 10000) {
    __typename
    ... on EventConnection {
      events {
        __typename
        ... on ExecutionStepFailureEvent { stepKey error { message causes { message } } }
        ... on RunFailureEvent { message }
        ... on EngineEvent { message error { message } }
      }
    }
  }
}
"""


class GraphQLError(RuntimeError):
    """The webserver answered a query with errors."""


@dataclass(frozen=True)
class Run:
    run_id: str
    status: str
    created: float
    started: float | None
    ended: float | None
    tags: dict[str, str]
    assets: tuple[str, ...]

    @property
    def label(self) -> str:
        """Who started it and what it materializes, e.g. `csv_dir_sensor: landing/reviews, ...`."""
        by = self.tags.get("dagster/sensor_name") or self.tags.get("dagster/schedule_name") or "?"
        return f"{by}: {', '.join(self.assets)}"


@dataclass(frozen=True)
class Asset:
    key: str
    group: str
    deps: tuple[str, ...]
    materialized_at: float | None
    checks: tuple[str, ...]


@dataclass(frozen=True)
class SensorTick:
    status: str
    started: float
    ended: float | None
    run_ids: tuple[str, ...]
    error: str | None


@dataclass(frozen=True)
class LakeState:
    """The lake as the UI shows it at one moment."""

    runs: list[Run]
    assets: dict[str, Asset]
    # The latest tick of every running sensor (None before its first tick).
    sensor_ticks: dict[str, SensorTick | None]

    @property
    def active_runs(self) -> list[Run]:
        return [run for run in self.runs if run.status in ACTIVE_RUN_STATUSES]

    @property
    def failed_runs(self) -> list[Run]:
        return [run for run in self.runs if run.status == "FAILURE"]

    @property
    def unmaterialized(self) -> list[str]:
        return sorted(key for key, asset in self.assets.items() if asset.materialized_at is None)

    def settled(self, since: float = 0.0) -> bool:
        """Nothing queued or running, and every running sensor looked since and asked for nothing.

        A quiet moment alone is not enough: the automation sensor starts the next run only on
        its next tick. Once every sensor has ticked after the last run ended (and after `since`)
        without requesting a run, nothing more happens until something changes.
        """
        if not self.assets or self.active_runs:
            return False
        last_activity = max([since, *(run.ended or run.created for run in self.runs)])
        return all(
            tick is not None
            and tick.status in ("SKIPPED", "SUCCESS")
            and not tick.run_ids
            and tick.started > last_activity
            for tick in self.sensor_ticks.values()
        )

    def runs_since(self, moment: float) -> list[Run]:
        return sorted((r for r in self.runs if r.created >= moment), key=lambda r: r.created)

    def downstream(self, key: str, group: str) -> list[str]:
        """Assets of `group` that read `key`, directly or through others."""
        found: set[str] = set()
        frontier = {key}
        while frontier:
            frontier = {
                asset.key
                for asset in self.assets.values()
                if frontier & set(asset.deps) and asset.key not in found
            }
            found |= frontier
        return sorted(k for k in found if self.assets[k].group == group)


def _key(path: list[str]) -> str:
    return "/".join(path)


def _expect(result: dict[str, Any], typename: str) -> dict[str, Any]:
    """A union field's answer, if it is the type asked for (not an error type)."""
    if result["__typename"] != typename:
        raise GraphQLError(f"expected {typename}, got {json.dumps(result, indent=2)}")
    return result


class LakeView:
    """Queries against one webserver's `/graphql`."""

    def __init__(self, lake: LiveLake) -> None:
        self.lake = lake
        self.repository: dict[str, str] | None = None

    def query(self, text: str, **variables: Any) -> dict[str, Any]:
        body = json.dumps({"query": text, "variables": variables}).encode()
        request = urllib.request.Request(
            f"{self.lake.url}/graphql", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.load(response)
        if answer.get("errors"):
            raise GraphQLError(json.dumps(answer["errors"], indent=2))
        return answer["data"]

    def wait_for_code_location(self, timeout: float = 180.0) -> dict[str, str]:
        """The repository selector of the lake's code location, once it has loaded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workspace = self.query(WORKSPACE_QUERY)["workspaceOrError"]
            for entry in workspace.get("locationEntries", []):
                loaded = entry["locationOrLoadError"]
                if entry["loadStatus"] != "LOADED" or loaded is None:
                    continue
                if loaded["__typename"] == "PythonError":
                    raise RuntimeError(f"code location {entry['name']}: {loaded['message']}")
                self.repository = {
                    "repositoryLocationName": entry["name"],
                    "repositoryName": loaded["repositories"][0]["name"],
                }
                return self.repository
            time.sleep(POLL_SECONDS)
        raise TimeoutError(f"code location not loaded after {timeout:.0f} s")

    def state(self) -> LakeState:
        repository = self.repository or self.wait_for_code_location()
        data = self.query(STATE_QUERY, repository=repository)
        runs = [
            Run(
                run_id=run["runId"],
                status=run["status"],
                created=run["creationTime"],
                started=run["startTime"],
                ended=run["endTime"],
                tags={tag["key"]: tag["value"] for tag in run["tags"]},
                assets=tuple(_key(a["path"]) for a in run["assetSelection"] or []),
            )
            for run in _expect(data["runsOrError"], "Runs")["results"]
        ]
        assets = {}
        for node in data["assetNodes"]:
            latest = node["assetMaterializations"]
            checks = _expect(node["assetChecksOrError"], "AssetChecks")["checks"]
            key = _key(node["assetKey"]["path"])
            assets[key] = Asset(
                key=key,
                group=node["groupName"],
                deps=tuple(_key(d["path"]) for d in node["dependencyKeys"]),
                materialized_at=int(latest[0]["timestamp"]) / 1000 if latest else None,
                checks=tuple(check["name"] for check in checks),
            )
        ticks: dict[str, SensorTick | None] = {}
        for sensor in _expect(data["sensorsOrError"], "Sensors")["results"]:
            if sensor["sensorState"]["status"] != "RUNNING":
                continue
            latest = sensor["sensorState"]["ticks"]
            ticks[sensor["name"]] = (
                SensorTick(
                    status=latest[0]["status"],
                    started=latest[0]["timestamp"],
                    ended=latest[0]["endTimestamp"],
                    run_ids=tuple(latest[0]["runIds"]),
                    error=(latest[0]["error"] or {}).get("message"),
                )
                if latest
                else None
            )
        return LakeState(runs, assets, ticks)

    def wait_until(
        self, condition: Callable[[LakeState], bool], timeout: float, what: str
    ) -> LakeState:
        """Polls the lake until `condition` holds; on timeout fails with what went wrong."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            if condition(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: not reached after {timeout:.0f} s\n{self.report(state)}"
                )
            time.sleep(POLL_SECONDS)

    def failed_check_executions(self, state: LakeState) -> list[str]:
        """Every check execution that errored (EXECUTION_FAILED), as `asset:check run ...`."""
        failed = []
        for asset in state.assets.values():
            for check in asset.checks:
                executions = self.query(
                    CHECK_EXECUTIONS_QUERY,
                    assetKey={"path": asset.key.split("/")},
                    checkName=check,
                )["assetCheckExecutions"]
                failed += [
                    f"{asset.key}:{check} (run {execution['runId']})"
                    for execution in executions
                    if execution["status"] == "EXECUTION_FAILED"
                ]
        return sorted(failed)

    def problems(self, state: LakeState) -> list[str]:
        """What keeps the lake from green: failed runs, errored checks, assets never built."""
        problems = []
        if state.failed_runs:
            problems.append(f"{len(state.failed_runs)} of {len(state.runs)} runs failed")
        failed_checks = self.failed_check_executions(state)
        if failed_checks:
            problems.append("check executions failed: " + ", ".join(failed_checks))
        if state.unmaterialized:
            problems.append("never materialized: " + ", ".join(state.unmaterialized))
        return problems

    def run_errors(self, run: Run) -> list[str]:
        """The step failures and the run failure message of a failed run."""
        logs = self.query(RUN_FAILURE_QUERY, runId=run.run_id)["logsForRun"]
        events = _expect(logs, "EventConnection")["events"]
        errors = []
        for event in events:
            if event["__typename"] == "ExecutionStepFailureEvent":
                error = event["error"] or {"message": "(no error recorded)", "causes": []}
                chain = [error["message"], *(cause["message"] for cause in error["causes"])]
                errors.append(f"step {event['stepKey']}: " + " <- ".join(m.strip() for m in chain))
            elif event["__typename"] == "RunFailureEvent":
                errors.append(f"run: {event['message']}")
            elif event["__typename"] == "EngineEvent" and event.get("error"):
                errors.append(f"engine: {event['message']}: {event['error']['message'].strip()}")
        return errors

    def report(self, state: LakeState) -> str:
        """What a red run needs said: failed runs with their errors, sensors, the dagster log."""
        lines = [f"runs: {len(state.runs)} ({len(state.active_runs)} active)"]
        for run in state.failed_runs:
            lines.append(f"FAILED run {run.run_id} [{run.label}]")
            lines += [f"    {error}" for error in self.run_errors(run)]
        if state.unmaterialized:
            lines.append(f"never materialized: {', '.join(state.unmaterialized)}")
        for name, tick in state.sensor_ticks.items():
            lines.append(f"sensor {name}: latest tick {tick}")
        lines.append(f"--- {self.lake.dagster_log} (last {LOG_TAIL_LINES} lines) ---")
        lines.append(self.lake.log_tail())
        return "\n".join(lines)


# --- Tables --------------------------------------------------------------------------------------


def read_table(settings: LakeSettings, layer: str, name: str) -> pl.DataFrame:
    """A table at `{layer}/{name}.parquet`, or the folder `{layer}/{name}/` of Parquet parts."""
    s3 = boto3.client("s3", **settings.boto3_client_kwargs())
    prefix = f"{layer}/{name}/"
    listed = s3.list_objects_v2(Bucket=settings.bucket, Prefix=prefix, MaxKeys=1)
    root = f"s3://{settings.bucket}/{layer}/{name}"
    source = f"{root}/**/*.parquet" if listed.get("KeyCount") else f"{root}.parquet"
    options = LakeResource.from_settings(settings).polars_storage_options()
    return pl.scan_parquet(source, storage_options=options).collect()
