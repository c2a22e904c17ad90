"""A live lake read through its webserver's `/graphql`, as the UI reads it.

`LakeView.state()` takes one snapshot (`LakeState`): runs, each asset's latest materialization
and checks, each running sensor's latest tick. `LakeState.settled()` says when nothing more will
happen by itself, `LakeView.wait_until` polls for a condition, and `LakeView.problems` and
`LakeView.report` say what is red and why (failed steps with their errors, the dagster log).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deathmetal_lake_tests.live import LOG_TAIL_LINES, POLL_SECONDS, LiveLake

ACTIVE_RUN_STATUSES = {
    "QUEUED",
    "NOT_STARTED",
    "MANAGED",
    "STARTING",
    "STARTED",
    "SUSPENDED",
    "CANCELING",
}

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
