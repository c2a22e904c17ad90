"""Landing: each source file version streamed through Kinesis and Firehose into `landing/`.

One asset per dataset, partitioned by ingest. A run finds its file from the partition key, checks
the whole file before sending anything, sends every row as a JSON line, and succeeds only when
Firehose has delivered every row to S3.
"""

from datetime import UTC, datetime
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from deathmetal_lake.arrival import DeliveryTimeoutError, DeliveryWatcher
from deathmetal_lake.datasets import DATASETS, Dataset
from deathmetal_lake.partitions import ingest_partitions
from deathmetal_lake.producer import (
    DeliveryError,
    Destination,
    RetryPolicy,
    SendOptions,
    Shipment,
    SourceFileError,
    check_source,
    ingest,
)
from deathmetal_lake.resources import (
    FirehoseResource,
    KinesisResource,
    LakeResource,
    LakeS3Resource,
)
from deathmetal_lake.sources import SourceNotFoundError, local_sources, locate, s3_sources

GROUP = "landing"
# Metadata keys the bronze layer reads back from the landing materialization.
DELIVERED_OBJECTS = "delivered_objects"
SOURCE_COLUMNS = "source_columns"


def landing_key(dataset: Dataset) -> AssetKey:
    return AssetKey([GROUP, dataset.name])


def _check_delivery_stream(firehose: FirehoseResource, dataset: Dataset) -> None:
    """Firehose reads from the stream's tip once ACTIVE: rows sent earlier would never land."""
    description = firehose.get_client().describe_delivery_stream(
        DeliveryStreamName=dataset.firehose_name
    )["DeliveryStreamDescription"]
    if description["DeliveryStreamStatus"] != "ACTIVE":
        raise Failure(
            f"delivery stream {dataset.firehose_name} is {description['DeliveryStreamStatus']}, "
            "not ACTIVE; rows sent now would not be delivered. Retry once it is ACTIVE."
        )


def build_landing_asset(dataset: Dataset) -> AssetsDefinition:
    @asset(
        key=landing_key(dataset),
        group_name=GROUP,
        partitions_def=ingest_partitions(dataset),
        kinds={"kinesis", "firehose", "s3"},
        owners=["team:data-platform"],
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
    ) -> MaterializeResult:
        ingest_id = context.partition_key
        s3_client = s3.get_client()
        try:
            # Pre-flight runs here, as the read that finds the file: it hashes while it checks.
            source, checked = locate(
                ingest_id,
                local_sources(Path(lake.csv_dir)) + s3_sources(s3_client, lake.bucket),
                read=lambda c: check_source(c.open, dataset=dataset, source_file=c.name),
            )
        except SourceNotFoundError as error:
            raise Failure(str(error)) from error
        _check_delivery_stream(firehose, dataset)
        context.log.info(f"ingesting {source.location} as {ingest_id}")
        started = datetime.now(UTC)
        watcher = DeliveryWatcher(
            s3_client,
            bucket=lake.bucket,
            prefix=dataset.landing_prefix,
            ingest_id=ingest_id,
            since=started,
        )
        # Delivered objects are read while the producer sends, not all after it.
        with watcher:
            try:
                report = ingest(
                    Shipment(source.open, source.name, ingest_id, dataset),
                    Destination(kinesis.get_client(), s3_client, lake.bucket),
                    SendOptions(
                        retry=RetryPolicy(max_attempts=lake.put_records_max_attempts),
                        # Two PutRecords calls in flight send faster; the embedded AWS applies
                        # writes under one lock, AWS per shard.
                        max_in_flight=2,
                    ),
                    checked=checked,
                )
            except (SourceFileError, DeliveryError) as error:
                raise Failure(str(error)) from error
        try:
            arrival = watcher.wait(report.rows_sent, timeout_seconds=lake.landing_timeout_seconds)
        except DeliveryTimeoutError as error:
            raise Failure(str(error)) from error
        total_seconds = (datetime.now(UTC) - started).total_seconds()
        return MaterializeResult(
            metadata={
                "source": source.location,
                "rows": report.rows,
                "parse_error_rows": report.parse_error_rows,
                "oversize_rows": len(report.oversize_rows),
                "oversize_error_objects": MetadataValue.json(
                    {str(row["source_row"]): row["key"] for row in report.oversize_rows}
                ),
                "bytes_sent": report.bytes,
                "records": report.records,
                "put_records_calls": report.put_calls,
                "resent_records": report.resent_records,
                "send_seconds": round(report.seconds, 3),
                "delivery_seconds": round(arrival.seconds, 3),
                "delivered_copies": arrival.copies,
                "mb_per_second": round(report.bytes / 1e6 / max(total_seconds, 1e-9), 2),
                DELIVERED_OBJECTS: MetadataValue.json(arrival.objects),
                SOURCE_COLUMNS: MetadataValue.json(list(report.columns)),
            }
        )

    return landing


landing_assets = [build_landing_asset(dataset) for dataset in DATASETS]
