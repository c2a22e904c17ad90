"""`make provision` on the embedded AWS: idempotent, proves delivery, and its probes stay out of
every count; a landing run whose delivery stream does not deliver says so early."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from deathmetal_lake import provision as provisioning
from deathmetal_lake.arrival import DeliveryWatcher
from deathmetal_lake.assets import landing as landing_module
from deathmetal_lake.assets.bronze import bronze_assets, landing_lines
from deathmetal_lake.assets.landing import landing_assets
from deathmetal_lake.checks.reconciliation import landing_rows, scan_landing
from deathmetal_lake.datasets import DATASETS_BY_NAME
from deathmetal_lake.local_aws import ensure_running, stop
from deathmetal_lake.local_aws.provision import (
    FIREHOSE_POLICY_NAME,
    FIREHOSE_ROLE_NAME,
    delivery_stream_request,
    firehose_role_policy,
)
from deathmetal_lake.partitions import INGEST_PARTITIONS
from deathmetal_lake.resources import build_resources
from deathmetal_lake.rows import ROW_ID_SCHEMA
from deathmetal_lake.settings import LakeSettings
from deathmetal_lake.sources import content_hash, ingest_key, local_sources
from deathmetal_lake_tests.conftest import SAMPLE_CSV_DIR, aws_client, isolate_env, make_settings

BANDS = DATASETS_BY_NAME["bands"]


@pytest.fixture(scope="module")
def embedded_aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LakeSettings]:
    """One emulator for the module (starting one costs more than these tests); tests in order."""
    root = tmp_path_factory.mktemp("provision")
    settings = make_settings(root / "state")
    with pytest.MonkeyPatch.context() as env:
        isolate_env(env, root)
        ensure_running(settings)
        try:
            yield settings
        finally:
            stop(settings)


def _probe_objects(settings: LakeSettings, dataset: str) -> list[str]:
    s3 = aws_client(settings, "s3")
    found = []
    for item in s3.list_objects_v2(Bucket=settings.bucket, Prefix=f"landing/{dataset}/").get(
        "Contents", []
    ):
        body = s3.get_object(Bucket=settings.bucket, Key=item["Key"])["Body"].read()
        if all(provisioning.PROBE in json.loads(line) for line in body.splitlines()):
            found.append(item["Key"])
    return found


def _land(settings: LakeSettings, instance: DagsterInstance, dataset: str):
    (source,) = [s for s in local_sources(settings.csv_path) if s.name == f"{dataset}.csv"]
    key = ingest_key(source.name, content_hash(source))
    instance.add_dynamic_partitions(INGEST_PARTITIONS[dataset].name, [key])
    result = materialize(
        [*landing_assets, *bronze_assets],
        selection=[AssetKey(["landing", dataset]), AssetKey(["bronze", dataset])],
        partition_key=key,
        instance=instance,
        resources=build_resources(settings),
        raise_on_error=False,
    )
    return key, result


def _bronze_rows(settings: LakeSettings, dataset: str, key: str) -> list[int]:
    body = aws_client(settings, "s3").get_object(
        Bucket=settings.bucket, Key=f"bronze/{dataset}/{key}.parquet"
    )["Body"]
    return pl.read_parquet(body.read())["_source_row"].sort().to_list()


def _source_rows(dataset: str) -> int:
    return pl.read_csv(SAMPLE_CSV_DIR / f"{dataset}.csv", infer_schema=False).height


def test_provision_is_idempotent_creates_the_role_and_every_shard_delivers_a_probe(
    embedded_aws: LakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = embedded_aws
    provisioning.provision(settings, timeout_seconds=30)
    provisioning.provision(settings, timeout_seconds=30)
    out = capsys.readouterr().out
    # The emulator provisioned itself at start: both calls find everything there.
    assert out.count("created nothing (all there)") == 2
    assert all(f"{name}-firehose delivers" in out for name in DATASETS_BY_NAME)

    iam = aws_client(settings, "iam")
    assert iam.get_role(RoleName=FIREHOSE_ROLE_NAME)["Role"]["RoleName"] == FIREHOSE_ROLE_NAME
    policy = iam.get_role_policy(RoleName=FIREHOSE_ROLE_NAME, PolicyName=FIREHOSE_POLICY_NAME)
    assert policy["PolicyDocument"] == firehose_role_policy(settings.bucket, settings.region)
    # The buffering hint the emulator runs with is kept, not reset to infra/'s 60 s.
    description = aws_client(settings, "firehose").describe_delivery_stream(
        DeliveryStreamName="albums-firehose"
    )["DeliveryStreamDescription"]
    hints = description["Destinations"][0]["ExtendedS3DestinationDescription"]["BufferingHints"]
    assert hints["IntervalInSeconds"] == settings.embedded_buffer_seconds
    # reviews has two shards: a probe each, from each of the two runs.
    probes = [
        json.loads(line)
        for key in _probe_objects(settings, "reviews")
        for line in aws_client(settings, "s3")
        .get_object(Bucket=settings.bucket, Key=key)["Body"]
        .read()
        .splitlines()
    ]
    assert len({p[provisioning.PROBE] for p in probes}) == 2
    assert {p["shard"] for p in probes} == {"shardId-000000000000", "shardId-000000000001"}


def test_probe_lines_are_counted_by_no_reader_of_landing(embedded_aws: LakeSettings) -> None:
    settings = embedded_aws
    s3 = aws_client(settings, "s3")
    prefix = "landing/bands/"
    key = f"{prefix}{datetime.now(UTC):%Y/%m/%d/%H}/bands-firehose-mixed"
    probe = provisioning.probe_line("t", provisioning._Shard(BANDS, "shardId-000000000000", "0"))
    rows = b"".join(
        json.dumps({"_ingest_id": "bands-1", "_source_row": r, "id": str(r)}).encode() + b"\n"
        for r in (1, 2)
    )
    with DeliveryWatcher(
        s3, bucket=settings.bucket, prefix=prefix, ingest_id="bands-1", since=datetime.now(UTC)
    ) as watcher:
        # A probe delivered in the same object as an ingest's rows, before and after them.
        s3.put_object(Bucket=settings.bucket, Key=key, Body=probe + rows + probe)
    arrival = watcher.wait(2, timeout_seconds=5)
    assert (arrival.rows, arrival.lines, arrival.objects) == (2, 2, {key: 2})

    uri = [f"s3://{settings.bucket}/{key}"]
    options = build_resources(settings)["lake"].polars_storage_options()
    assert landing_rows(scan_landing(uri, options), "bands-1").to_list() == [1, 2]
    bronze = landing_lines(uri, "bands-1", {**ROW_ID_SCHEMA, "id": pl.String()}, options)
    assert bronze.collect()["_source_row"].to_list() == [1, 2]


def test_a_delivery_stream_that_does_not_deliver_is_named_then_provision_repairs_the_lake(
    embedded_aws: LakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = embedded_aws
    settings.csv_path.mkdir(parents=True)
    shutil.copy(SAMPLE_CSV_DIR / "bands.csv", settings.csv_path)
    firehose = aws_client(settings, "firehose")
    # ACTIVE, but delivering somewhere the lake does not look: as silent as LocalStack's gap.
    firehose.delete_delivery_stream(DeliveryStreamName=BANDS.firehose_name)
    lost = delivery_stream_request(BANDS, settings.bucket, settings.region)
    lost["ExtendedS3DestinationConfiguration"]["Prefix"] = "lost/bands/"
    lost["ExtendedS3DestinationConfiguration"]["BufferingHints"]["IntervalInSeconds"] = 0
    firehose.create_delivery_stream(**lost)

    with pytest.raises(provisioning.NotDeliveringError) as raised:
        provisioning.wait_until_delivering(
            aws_client(settings, "s3"),
            aws_client(settings, "kinesis"),
            firehose,
            bucket=settings.bucket,
            timeout_seconds=3,
        )
    assert str(raised.value).startswith("bands-firehose did not deliver a probe record")
    assert "bands-stream/shardId-000000000000" in str(raised.value)

    monkeypatch.setattr(landing_module, "SILENCE_MARGIN_SECONDS", 3.0)
    with DagsterInstance.ephemeral() as instance:
        key, result = _land(settings, instance, "bands")
        assert not result.success
        (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        message = failure.step_failure_data.error.message
        assert f"ingest {key}: none of its {_source_rows('bands')} rows arrived" in message
        assert "within 3s" in message  # not the 60 s landing timeout
        assert "delivery stream bands-firehose is not delivering" in message
        assert "make provision" in message

        # The repair the message names: a right delivery stream, proven, then the same partition.
        firehose.delete_delivery_stream(DeliveryStreamName=BANDS.firehose_name)
        provisioning.provision(settings, timeout_seconds=30)
        _, again = _land(settings, instance, "bands")
    assert again.success
    assert _bronze_rows(settings, "bands", key) == list(range(1, _source_rows("bands") + 1))


def test_provision_refuses_real_aws_and_points_to_terraform(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("LAKE_AWS_MODE", "aws")
    monkeypatch.setenv("LAKE_STATE_DIR", str(tmp_path / "state"))
    assert provisioning.main([]) == 2
    err = capsys.readouterr().err
    assert "terraform apply" in err and "infra/README.md" in err
    assert not (tmp_path / "state").exists()  # nothing was started
