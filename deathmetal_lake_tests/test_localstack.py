"""The same lake on a real LocalStack: every row landed once, every layer equal to the embedded run.

Run by `make test-localstack` (marker `localstack`, left out of `make test`): it starts a
host-mode LocalStack, provisions it with `make provision` and passes it here through
`LAKE_AWS_MODE=localstack` and `AWS_ENDPOINT_URL`. The sample is built twice with `run_lake`, on
an embedded AWS of its own and on that LocalStack, and read back layer by layer.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance
from polars.testing import assert_frame_equal

from deathmetal_lake.batch import run_lake
from deathmetal_lake.provision import PROBE
from deathmetal_lake.settings import AwsMode, LakeSettings
from deathmetal_lake_tests.conftest import (
    SAMPLE_CSV_DIR,
    aws_client,
    isolate_env,
    sample_lake_built,
)
from deathmetal_lake_tests.test_lake import (
    DATASETS,
    Lake,
    bronze,
    csv_rows,
    get_bytes,
    ingest_id,
    landing_lines,
    snapshot,
)

pytestmark = pytest.mark.localstack

# Read when the module is collected, before the per-test isolation clears AWS_* and LAKE_*.
ENDPOINT = os.environ.get("AWS_ENDPOINT_URL")
MODE = os.environ.get("LAKE_AWS_MODE")


def _ingests(settings: LakeSettings) -> dict[str, str]:
    return {d: ingest_id(settings.csv_path / f"{d}.csv") for d in DATASETS}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    with sample_lake_built(tmp_path_factory.mktemp("embedded")) as (settings, instance):
        yield Lake(settings, instance, aws_client(settings, "s3"), _ingests(settings))


@pytest.fixture(scope="module")
def localstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    if MODE != AwsMode.LOCALSTACK or not ENDPOINT:
        pytest.fail("run these through `make test-localstack` (it starts LocalStack)")
    root = tmp_path_factory.mktemp("localstack")
    csv_dir = Path(shutil.copytree(SAMPLE_CSV_DIR, root / "csv"))
    settings = LakeSettings(
        aws_mode=AwsMode.LOCALSTACK,
        endpoint_url=ENDPOINT,
        state_dir=str(root / "state"),
        csv_dir=str(csv_dir),
        dagster_home=str(root / "dagster"),
        landing_timeout_seconds=120,
    )
    with pytest.MonkeyPatch.context() as env:
        isolate_env(env, root)
        settings.instance_dir.mkdir(parents=True)
        with DagsterInstance.from_config(str(settings.instance_dir)) as instance:
            assert run_lake(settings, instance), "run_lake failed on LocalStack; see the log"
            yield Lake(settings, instance, aws_client(settings, "s3"), _ingests(settings))


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_source_row_landed_exactly_once(localstack: Lake, dataset: str) -> None:
    ingest = localstack.sample_ingests[dataset]
    _, rows = csv_rows(localstack.csv_dir / f"{dataset}.csv")
    lines = [
        line
        for object_lines in landing_lines(localstack, dataset).values()
        for line in object_lines
        if line.get("_ingest_id") == ingest
    ]
    counts = Counter(line["_source_row"] for line in lines)
    assert set(counts) == set(range(1, len(rows) + 1)), "a source row did not land"
    assert set(counts.values()) == {1}, f"landed more than once: {counts.most_common(3)}"


@pytest.mark.parametrize("dataset", DATASETS)
def test_probes_of_make_provision_are_in_landing_and_counted_nowhere(
    localstack: Lake, dataset: str
) -> None:
    # make provision probed this LocalStack: its probe lines sit in landing/ beside the rows.
    probes = [
        key
        for key in landing_lines(localstack, dataset)
        if PROBE.encode() in get_bytes(localstack, key)
    ]
    assert probes, "make provision left no probe in landing/ (did it run?)"
    _, rows = csv_rows(localstack.csv_dir / f"{dataset}.csv")
    assert bronze(localstack, dataset, localstack.sample_ingests[dataset]).height == len(rows)


def test_landing_objects_are_named_as_localstack_names_them(localstack: Lake) -> None:
    # `{firehose}-YYYY-MM-DD-HH-MM-SS-{uuid}`: no `-1-` version part (AWS and the embedded AWS).
    for dataset in DATASETS:
        for key in landing_lines(localstack, dataset):
            assert not key.rsplit("/", 1)[1].startswith(f"{dataset}-firehose-1-"), key


@pytest.mark.parametrize("dataset", DATASETS)
def test_bronze_equals_the_embedded_runs(localstack: Lake, embedded: Lake, dataset: str) -> None:
    assert localstack.sample_ingests == embedded.sample_ingests
    ingest = embedded.sample_ingests[dataset]
    assert_frame_equal(
        bronze(localstack, dataset, ingest).sort("_source_row"),
        bronze(embedded, dataset, ingest).sort("_source_row"),
    )


def test_silver_quarantine_and_gold_equal_the_embedded_runs(
    localstack: Lake, embedded: Lake
) -> None:
    expected, actual = snapshot(embedded), snapshot(localstack)
    assert actual.keys() == expected.keys()
    for table, frame in expected.items():
        assert frame.height > 0 or table.startswith("quarantine/"), f"{table} is empty"
        try:
            assert_frame_equal(actual[table], frame)
        except AssertionError as difference:
            raise AssertionError(f"{table} differs from the embedded run's: {difference}") from None


def test_landing_manifests_name_only_objects_with_the_ingests_rows(localstack: Lake) -> None:
    for dataset in DATASETS:
        ingest = localstack.sample_ingests[dataset]
        key = f"manifests/landing/{dataset}/{ingest}.json"
        manifest = json.loads(get_bytes(localstack, key))
        for name, count in manifest["objects"].items():
            lines = [json.loads(line) for line in get_bytes(localstack, name).splitlines()]
            assert sum(line.get("_ingest_id") == ingest for line in lines) == count, name
