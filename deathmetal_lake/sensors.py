"""Sensors that turn new or changed source files into ingest runs.

`csv_dir_sensor` watches `LAKE_CSV_DIR` and ships RUNNING, so dropping a CSV there under
`make dev` ingests it with nothing to switch on. `s3_raw_sensor` watches `raw/` in the bucket and
ships STOPPED: on real AWS each tick lists the prefix (billed requests), so users who upload to
S3 turn it on in the UI.

Both share one planner. A file is ingested once it is complete: an S3 object as soon as it is
listed (S3 shows an upload only once it is whole), a local file once its modification time is
`SETTLE_SECONDS` old, or once it stayed unchanged from one tick to the next. So a file moved into
the folder whole (an atomic rename) is ingested on the first tick that sees it, and a file still
being written waits. Its partition key comes from its content, so a touched but unchanged file
starts nothing, and the cursor (what was seen, what is pending, which unknown names were
reported) makes a restarted daemon pick up where it was.
"""

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import Logger

from dagster import (
    AssetSelection,
    DagsterInstance,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from deathmetal_lake.assets.bronze import bronze_key
from deathmetal_lake.assets.landing import landing_key
from deathmetal_lake.assets.staging import staging_key, staging_order
from deathmetal_lake.checks.freshness import FOLLOWS_UPSTREAM
from deathmetal_lake.datasets import DATASETS, DATASETS_BY_NAME, Dataset
from deathmetal_lake.jobs import buildable_downstream
from deathmetal_lake.partitions import INGEST_PARTITIONS
from deathmetal_lake.resources import LakeResource, LakeS3Resource
from deathmetal_lake.rows import IngestKey
from deathmetal_lake.sources import SourceFile, content_hash, ingest_key, local_sources, s3_sources
from deathmetal_lake.transforms.merge import current_ingests

KNOWN_NAMES = ", ".join(f"{d.name}.csv or {d.name}_<anything>.csv" for d in DATASETS)
# Tag of the runs that refresh silver and gold: the instance runs them one at a time
# (`dagster.yaml`), since each merges into the same tables.
REFRESH_TAG = {"lake/refresh": "true"}

SETTLE_SECONDS = 1.0
"""How long a local file's modification time must stand still before the file counts as complete.

Every write moves the modification time, so a file this old has not been written to for that long:
a copy, an editor's save or a producer streaming rows writes again well within it unless it
stalls. Short, because every drop waits it out once before it is ingested; a file moved in by an
atomic rename keeps the time of its last write and usually is this old already.
"""


@dataclass
class Cursor:
    seen: dict[str, str] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: str | None) -> "Cursor":
        return cls(**json.loads(raw)) if raw else cls()

    def dump(self) -> str:
        return json.dumps({"seen": self.seen, "pending": self.pending, "unknown": self.unknown})


@dataclass
class Plan:
    run_requests: list[RunRequest] = field(default_factory=list)
    new_partitions: dict[str, list[str]] = field(default_factory=dict)
    # Ingest keys of the files looked at this tick, new or not, per dataset.
    current: dict[str, set[str]] = field(default_factory=dict)


def is_complete(source: SourceFile, now: float) -> bool:
    """True if the file can no longer be growing: listed whole, or not written for a while."""
    return source.modified_at is None or now - source.modified_at >= SETTLE_SECONDS


def settle_wait(sources: list[SourceFile], cursor: Cursor, now: float) -> float:
    """Seconds until every new, still settling file is `SETTLE_SECONDS` old (at most that)."""
    waits = [
        SETTLE_SECONDS - (now - source.modified_at)
        for source in sources
        if source.modified_at is not None
        and source.dataset is not None
        and cursor.seen.get(source.location) != source.fingerprint
        and not is_complete(source, now)
    ]
    return min(max(waits, default=0.0), SETTLE_SECONDS)


def plan_ingests(
    sources: list[SourceFile],
    cursor: Cursor,
    partition_exists: Callable[[str, str], bool],
    log: Logger,
    now: float | None = None,
    restage: Callable[[str, str], bool] = lambda dataset, key: False,
    hash_of: Callable[[SourceFile], str] = content_hash,
) -> Plan:
    """Decide which files to ingest this tick (`now` defaults to the clock); updates `cursor`.

    A file is ingested when it is complete at `now` or unchanged since `cursor.pending` noted it,
    so a caller that knows its files are whole can list them as pending. A version ingested
    before whose bronze is there but which is not its file's current one any more (`restage`:
    dropped back, v1 -> v2 -> v1) is staged again, which makes it the current one. `hash_of`
    gives a file's sha256 (read in full unless the caller remembers it).
    """
    now = time.time() if now is None else now
    plan = Plan()
    present = {source.location for source in sources}
    cursor.seen = {loc: fp for loc, fp in cursor.seen.items() if loc in present}
    cursor.pending = {loc: fp for loc, fp in cursor.pending.items() if loc in present}
    cursor.unknown = [loc for loc in cursor.unknown if loc in present]
    for source in sources:
        dataset = source.dataset
        if dataset is None:
            if source.location not in cursor.unknown:
                log.warning(f"ignoring {source.location}: not a source file name ({KNOWN_NAMES})")
                cursor.unknown.append(source.location)
            continue
        if cursor.seen.get(source.location) == source.fingerprint:
            continue
        unchanged = cursor.pending.get(source.location) == source.fingerprint
        if not (unchanged or is_complete(source, now)):
            cursor.pending[source.location] = source.fingerprint
            continue
        cursor.pending.pop(source.location, None)
        cursor.seen[source.location] = source.fingerprint
        key = ingest_key(source.name, hash_of(source))
        plan.current.setdefault(dataset.name, set()).add(key)
        planned = plan.new_partitions.setdefault(dataset.name, [])
        if key in planned or partition_exists(dataset.name, key):
            if not restage(dataset.name, key):
                log.info(f"{source.location}: content already ingested as {key}")
                continue
            log.info(f"{source.location}: back to the version of ingest {key}; staging it again")
            plan.run_requests.append(_ingest_request(source, dataset, key, restage=True))
            continue
        planned.append(key)
        plan.run_requests.append(_ingest_request(source, dataset, key, restage=False))
    return plan


def _ingest_request(source: SourceFile, dataset: Dataset, key: str, *, restage: bool) -> RunRequest:
    """A new version's landing, bronze and staging, or only its staging when it comes back."""
    layers = [staging_key(dataset)]
    if not restage:
        layers = [landing_key(dataset), bronze_key(dataset), *layers]
    return RunRequest(
        # A version that comes back again is a new request each time its file is touched.
        run_key=f"{key}@{source.fingerprint}" if restage else key,
        partition_key=key,
        asset_selection=layers,
        tags={"lake/source": source.location, "lake/dataset": dataset.name},
    )


def needs_restaging(instance: DagsterInstance, dataset: Dataset, key: str) -> bool:
    """The ingest landed, but silver uses another version of its file now (or none of it)."""
    if key not in instance.get_materialized_partitions(bronze_key(dataset)):
        return False  # still running, or failed: nothing to stage again
    order = staging_order(instance, dataset)
    return key not in current_ingests(order, lambda i: IngestKey.parse(i).source_file)


def carried_to_gold(context: SensorEvaluationContext, request: RunRequest) -> RunRequest:
    """The ingest run extended by everything downstream that can be built, with its checks.

    One run from landing to gold: a dropped file reaches gold without waiting for another
    sensor tick and run launch. Assets whose other inputs do not exist yet stay out.
    """
    graph = context.repository_def.asset_graph
    exists = functools.cache(
        lambda key: context.instance.get_latest_materialization_event(key) is not None
    )
    selection = buildable_downstream(graph, request.asset_selection or [], exists)
    # Freshness checks run on their own schedule; every other check rides with its asset.
    checks = [
        check
        for check in graph.asset_check_keys
        if check.asset_key in selection and check.name != FOLLOWS_UPSTREAM
    ]
    return request.with_replaced_attrs(
        asset_selection=selection,
        asset_check_keys=checks,
        tags={**request.tags, **REFRESH_TAG},
    )


def _evaluate(context: SensorEvaluationContext, sources: list[SourceFile]) -> SensorResult:
    cursor = Cursor.parse(context.cursor)

    def partition_exists(dataset: str, key: str) -> bool:
        return context.instance.has_dynamic_partition(INGEST_PARTITIONS[dataset].name, key)

    def restage(dataset: str, key: str) -> bool:
        return needs_restaging(context.instance, DATASETS_BY_NAME[dataset], key)

    plan = plan_ingests(sources, cursor, partition_exists, context.log, restage=restage)
    return SensorResult(
        run_requests=[carried_to_gold(context, request) for request in plan.run_requests],
        dynamic_partitions_requests=[
            INGEST_PARTITIONS[dataset].build_add_request(keys)
            for dataset, keys in plan.new_partitions.items()
            if keys
        ],
        cursor=cursor.dump(),
    )


# Each tick costs a listing of the folder. Dagster's sensor daemon itself loops every few
# seconds, so this lets the sensor tick on every loop rather than on every other one.
@sensor(
    asset_selection=AssetSelection.all(),
    minimum_interval_seconds=1,
    default_status=DefaultSensorStatus.RUNNING,
)
def csv_dir_sensor(context: SensorEvaluationContext, lake: LakeResource) -> SensorResult:
    """Ingests new or changed `{dataset}.csv` / `{dataset}_*.csv` files in LAKE_CSV_DIR.

    A file dropped just now is waited for within the tick (at most `SETTLE_SECONDS`) and looked
    at again, rather than left for the next tick, which comes seconds later.
    """
    folder = lake.settings.csv_path
    sources = local_sources(folder)
    wait = settle_wait(sources, Cursor.parse(context.cursor), time.time())
    if wait > 0:
        time.sleep(wait)
        sources = local_sources(folder)
    return _evaluate(context, sources)


@sensor(
    asset_selection=AssetSelection.all(),
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.STOPPED,
)
def s3_raw_sensor(
    context: SensorEvaluationContext, lake: LakeResource, s3: LakeS3Resource
) -> SensorResult:
    """Ingests new or changed CSVs uploaded to `raw/` in the lake's bucket."""
    return _evaluate(context, s3_sources(s3.get_client(), lake.settings.bucket))
