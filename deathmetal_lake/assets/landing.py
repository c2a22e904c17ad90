"""Landing: each source file version streamed through Kinesis and Firehose into `landing/`.

One asset per dataset, partitioned by ingest. A run finds its file from the partition key, checks
the whole file before sending anything, sends every row as a JSON line, and succeeds only when
Firehose has delivered every row to S3. Its output is the ingest's `LandingManifest`: which
objects hold its rows, which rows went to `errors/`; bronze and the checks read that.
"""

from datetime import UTC, datetime
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    Failure,
    Output,
    asset,
)

from deathmetal_lake.arrival import (
    Arrival,
    DeliveryTimeoutError,
    DeliveryWatcher,
    NothingDeliveredError,
)
from deathmetal_lake.assets.retry import STEP_RETRY_POLICY
from deathmetal_lake.datasets import DATASETS, Dataset
from deathmetal_lake.manifest import LandingManifest
from deathmetal_lake.partitions import ingest_partitions
from deathmetal_lake.producer import (
    DeliveryError,
    Destination,
    IngestReport,
    RetryPolicy,
    SendOptions,
    Shipment,
    SourceFileError,
    SourceInfo,
    check_source,
    ingest,
)
from deathmetal_lake.progress import LandingProgress
from deathmetal_lake.resources import (
    FirehoseResource,
    KinesisResource,
    LakeResource,
    LakeS3Resource,
)
from deathmetal_lake.settings import LakeSettings
from deathmetal_lake.sources import (
    SourceFile,
    SourceNotFoundError,
    local_sources,
    locate,
    s3_sources,
)

GROUP = "landing"


def landing_key(dataset: Dataset) -> AssetKey:
    return AssetKey([GROUP, dataset.name])


# Beyond its buffering interval, how long a delivery stream may stay silent before the run says
# it does not deliver (rather than waiting out the whole landing timeout).
SILENCE_MARGIN_SECONDS = 30.0


def _check_delivery_stream(firehose: FirehoseResource, dataset: Dataset) -> float:
    """Firehose reads from the stream's tip once ACTIVE: rows sent earlier would never land.

    Returns how long the delivery stream may take to deliver anything: its interval hint plus
    a margin.
    """
    description = firehose.get_client().describe_delivery_stream(
        DeliveryStreamName=dataset.firehose_name
    )["DeliveryStreamDescription"]
    if description["DeliveryStreamStatus"] != "ACTIVE":
        raise Failure(
            f"delivery stream {dataset.firehose_name} is {description['DeliveryStreamStatus']}, "
            "not ACTIVE; rows sent now would not be delivered. Retry once it is ACTIVE."
        )
    destination = description["Destinations"][0].get("ExtendedS3DestinationDescription", {})
    interval = destination.get("BufferingHints", {}).get(
        "IntervalInSeconds", dataset.buffering.interval_seconds
    )
    return interval + SILENCE_MARGIN_SECONDS


def _find_source(
    settings: LakeSettings, s3_client: Any, dataset: Dataset, ingest_id: str
) -> tuple[SourceFile, SourceInfo]:
    """The file version the ingest names, checked whole: pre-flight hashes while it checks."""
    try:
        return locate(
            ingest_id,
            local_sources(settings.csv_path) + s3_sources(s3_client, settings.bucket),
            read=lambda c: check_source(c.open, dataset=dataset, source_file=c.name),
        )
    except SourceNotFoundError as error:
        raise Failure(str(error), allow_retries=False) from error


def _landing_metadata(
    source: str, report: IngestReport, arrival: Arrival, total_seconds: float
) -> dict[str, Any]:
    """What the UI shows of a landing run: counts, sizes and where the time went."""
    return {
        "source": source,
        "rows": report.rows,
        "blank_lines": report.blank_lines,
        "parse_error_rows": report.parse_error_rows,
        "oversize_rows": len(report.oversize_rows),
        "bytes_sent": report.bytes,
        "records": report.records,
        "put_records_calls": report.put_calls,
        "resent_records": report.resent_records,
        "send_seconds": round(report.seconds, 3),
        "delivery_seconds": round(arrival.seconds, 3),
        "landing_objects": len(arrival.objects),
        "delivered_copies": arrival.copies,
        "mb_per_second": round(report.bytes / 1e6 / max(total_seconds, 1e-9), 2),
    }


def _wait_for_delivery(
    watcher: DeliveryWatcher,
    dataset: Dataset,
    settings: LakeSettings,
    report: IngestReport,
    silence_seconds: float,
) -> Arrival:
    """Every row sent, delivered; a Failure that says what to do if not."""
    try:
        return watcher.wait(
            report.rows,
            timeout_seconds=settings.landing_timeout_seconds,
            not_sent=[row["source_row"] for row in report.oversize_rows],
            silence_seconds=silence_seconds,
        )
    except NothingDeliveredError as error:
        raise Failure(
            f"{error}: delivery stream {dataset.firehose_name} is not delivering from "
            f"{dataset.stream_name}. Run `make provision` (it waits until every delivery "
            "stream delivers; a LocalStack one drops what is sent in its first ~30 s), "
            "then re-run this partition: rows delivered twice are counted once.",
            # Not retried: a retry would wait as long again for a stream that does not deliver.
            allow_retries=False,
        ) from error
    except DeliveryTimeoutError as error:
        # Retrying at once would wait as long again; the rows are in Kinesis meanwhile.
        raise Failure(
            f"{error}. Firehose is slower than LAKE_LANDING_TIMEOUT_SECONDS "
            f"({settings.landing_timeout_seconds:.0f}s): raise it, or re-execute this "
            "partition later (it sends the rows again; bronze removes the copies)",
            allow_retries=False,
        ) from error


def build_landing_asset(dataset: Dataset) -> AssetsDefinition:
    @asset(
        key=landing_key(dataset),
        group_name=GROUP,
        partitions_def=ingest_partitions(dataset),
        kinds={"kinesis", "firehose", "s3"},
        owners=["team:data-platform"],
        io_manager_key="manifest_io_manager",
        retry_policy=STEP_RETRY_POLICY,
        description=(
            f"Rows of `{dataset.name}` source files, one JSON line per row with provenance, "
            f"delivered by `{dataset.firehose_name}` from `{dataset.stream_name}` into "
            f"`landing/{dataset.name}/`. One partition per file version."
        ),
    )
    def landing(
        context: AssetExecutionContext,
        lake: LakeResource,
        s3: LakeS3Resource,
        kinesis: KinesisResource,
        firehose: FirehoseResource,
    ) -> Output[LandingManifest]:
        ingest_id = context.partition_key
        settings = lake.settings
        s3_client = s3.get_client()
        source, checked = _find_source(settings, s3_client, dataset, ingest_id)
        silence_seconds = _check_delivery_stream(firehose, dataset)
        context.log.info(f"ingesting {source.location} as {ingest_id}")
        started = datetime.now(UTC)
        watcher = DeliveryWatcher(
            s3_client,
            bucket=settings.bucket,
            prefix=dataset.landing_prefix,
            ingest_id=ingest_id,
            since=started,
        )
        progress = LandingProgress(context.log, ingest_id, lambda: watcher.arrival.lines)
        # Delivered objects are read while the producer sends, not all after it.
        with progress, watcher:
            try:
                report = ingest(
                    Shipment(source.open, source.name, ingest_id, dataset),
                    Destination(kinesis.get_client(), s3_client, settings.bucket),
                    SendOptions(
                        retry=RetryPolicy(max_attempts=settings.put_records_max_attempts),
                        # Two PutRecords calls in flight send faster; the embedded AWS applies
                        # writes under one lock, AWS per shard.
                        max_in_flight=2,
                        progress=progress.sent,
                    ),
                    checked=checked,
                )
            except (SourceFileError, DeliveryError) as error:
                # Not retried: a bad file stays bad, and the producer already re-sent each failed
                # record with backoff; sending the whole ingest again would add load to a stream
                # that throttles (LAKE_PUT_RECORDS_MAX_ATTEMPTS is the budget).
                raise Failure(str(error), allow_retries=False) from error
        with progress:
            arrival = _wait_for_delivery(watcher, dataset, settings, report, silence_seconds)
        total_seconds = (datetime.now(UTC) - started).total_seconds()
        return Output(
            LandingManifest(
                ingest_id=ingest_id,
                source=source.location,
                source_columns=list(report.columns),
                source_rows=report.rows,
                objects=arrival.objects,
                error_rows={row["source_row"]: row["key"] for row in report.oversize_rows},
                parse_error_rows=report.parse_error_rows,
            ),
            metadata=_landing_metadata(source.location, report, arrival, total_seconds),
        )

    return landing


landing_assets = [build_landing_asset(dataset) for dataset in DATASETS]
