"""The lake's Dagster resources, all built from `LakeSettings` in `build_resources`.

The same resources serve the three back ends; only the endpoint and credentials differ. In
embedded mode the `lake` resource starts the embedded AWS on first use, so any Dagster process
(webserver, daemon, run worker) finds it running.
"""

import functools
from typing import Any, ClassVar, get_origin

import boto3
from dagster import ConfigurableResource, InitResourceContext, InputContext, ResourceDependency
from dagster_aws.s3 import S3Resource
from dagster_aws.utils import ResourceWithBoto3Configuration, construct_boto_client_retry_config
from dagster_polars import PolarsParquetIOManager

from deathmetal_lake.local_aws import ensure_running
from deathmetal_lake.settings import EMULATOR_CREDENTIALS, AwsMode, LakeSettings


class LakeResource(ConfigurableResource):
    """Where the lake lives: bucket, source folder, back end; starts the embedded AWS if needed."""

    aws_mode: str
    region: str
    endpoint_url: str | None
    bucket: str
    csv_dir: str
    state_dir: str
    embedded_port: int
    embedded_buffer_seconds: int
    landing_timeout_seconds: float
    put_records_max_attempts: int

    @classmethod
    def from_settings(cls, settings: LakeSettings) -> "LakeResource":
        return cls(
            aws_mode=settings.aws_mode.value,
            region=settings.region,
            endpoint_url=settings.aws_endpoint,
            bucket=settings.bucket,
            csv_dir=str(settings.csv_dir),
            state_dir=str(settings.state_dir),
            embedded_port=settings.embedded_port,
            embedded_buffer_seconds=settings.embedded_buffer_seconds,
            landing_timeout_seconds=settings.landing_timeout_seconds,
            put_records_max_attempts=settings.put_records_max_attempts,
        )

    def polars_storage_options(self) -> dict[str, str]:
        """Options for Polars' own S3 reads (object_store keys, not fsspec's)."""
        options = {"aws_region": self.region}
        if self.endpoint_url:
            options["aws_endpoint_url"] = self.endpoint_url
            options["aws_allow_http"] = str(self.endpoint_url.startswith("http://")).lower()
        if self.aws_mode != AwsMode.AWS:
            options["aws_access_key_id"] = EMULATOR_CREDENTIALS["aws_access_key_id"]
            options["aws_secret_access_key"] = EMULATOR_CREDENTIALS["aws_secret_access_key"]
        return options

    def setup_for_execution(self, context: InitResourceContext) -> None:
        if self.aws_mode == AwsMode.EMBEDDED:
            ensure_running(
                LakeSettings(
                    aws_mode=AwsMode.EMBEDDED,
                    region=self.region,
                    bucket=self.bucket,
                    state_dir=self.state_dir,
                    embedded_port=self.embedded_port,
                    embedded_buffer_seconds=self.embedded_buffer_seconds,
                )
            )


@functools.cache
def _client(service: str, profile_name: str | None, max_attempts: int, **kwargs: Any) -> Any:
    """One boto3 client per service and configuration for the whole process.

    A new session reloads botocore's service models (0.1-0.3 s each time), and Dagster makes new
    resource objects for every run; boto3 clients are thread-safe, so they can be shared.
    """
    config = construct_boto_client_retry_config(max_attempts)
    return boto3.session.Session(profile_name=profile_name).client(service, config=config, **kwargs)


def _shared_client(resource: ResourceWithBoto3Configuration, service: str) -> Any:
    return _client(
        service,
        resource.profile_name,
        resource.max_attempts,
        region_name=resource.region_name,
        use_ssl=resource.use_ssl,
        verify=resource.verify,
        endpoint_url=resource.endpoint_url,
        aws_access_key_id=resource.aws_access_key_id,
        aws_secret_access_key=resource.aws_secret_access_key,
        aws_session_token=resource.aws_session_token,
    )


class _Boto3ClientResource(ResourceWithBoto3Configuration):
    """A boto3 client of one service, with boto3's standard retries for whole-call errors."""

    lake: ResourceDependency[LakeResource]
    service: ClassVar[str]

    def get_client(self) -> Any:
        return _shared_client(self, self.service)


class KinesisResource(_Boto3ClientResource):
    """Kinesis Data Streams: the producer writes each source row here.

    Example:
        kinesis.get_client().put_records(StreamName="reviews-stream", Records=[...])
    """

    service: ClassVar[str] = "kinesis"


class FirehoseResource(_Boto3ClientResource):
    """Amazon Data Firehose: reads the Kinesis streams and delivers them to `landing/` in S3.

    Producers never call it directly (AWS refuses puts on a Kinesis-source delivery stream); the
    lake uses it to describe delivery streams, e.g. their buffering hints.
    """

    service: ClassVar[str] = "firehose"


class LakeS3Resource(S3Resource):
    """dagster-aws's S3 resource, started together with the embedded AWS when that is in use."""

    lake: ResourceDependency[LakeResource]

    def get_client(self) -> Any:
        """A shared client: dagster-aws builds a new session and client on every call."""
        return _shared_client(self, "s3")


class LakeParquetIOManager(PolarsParquetIOManager):
    """dagster-polars' Parquet IO manager rooted at `s3://{bucket}/`: asset key = S3 path."""

    lake: ResourceDependency[LakeResource]

    def load_input(self, context: InputContext) -> Any:
        """A `dict[partition, frame]` input is a dict even with one or no partition.

        UPathIOManager hands over a bare frame for one partition and None for none, which breaks
        an asset that reads "all ingests so far" on the first ingest.
        """
        expects_mapping = get_origin(context.dagster_type.typing_type) is dict
        if expects_mapping and context.has_asset_partitions:
            keys = context.asset_partition_keys
            if len(keys) <= 1:
                loaded = self.load_partitions(context) if keys else None
                return {} if loaded is None else {keys[0]: loaded}
        return super().load_input(context)


def _boto3_fields(settings: LakeSettings) -> dict[str, Any]:
    return {
        "region_name": settings.region,
        "endpoint_url": settings.aws_endpoint,
        "max_attempts": 8,
        **settings.aws_credentials,
    }


def polars_storage_options(settings: LakeSettings) -> dict[str, Any]:
    """fsspec-style options; dagster-polars maps them onto Polars' object_store keys too."""
    client_kwargs: dict[str, Any] = {"region_name": settings.region}
    options: dict[str, Any] = {"client_kwargs": client_kwargs}
    if settings.aws_endpoint:
        client_kwargs["endpoint_url"] = settings.aws_endpoint
    if settings.aws_credentials:
        options["key"] = settings.aws_credentials["aws_access_key_id"]
        options["secret"] = settings.aws_credentials["aws_secret_access_key"]
    return options


def build_resources(settings: LakeSettings) -> dict[str, Any]:
    """Every resource the lake's definitions need, for the back end the settings choose."""
    lake = LakeResource.from_settings(settings)
    boto3_fields = _boto3_fields(settings)
    return {
        "lake": lake,
        "s3": LakeS3Resource(lake=lake, **boto3_fields),
        "kinesis": KinesisResource(lake=lake, **boto3_fields),
        "firehose": FirehoseResource(lake=lake, **boto3_fields),
        "io_manager": LakeParquetIOManager(
            lake=lake,
            base_dir=f"s3://{settings.bucket}",
            storage_options=polars_storage_options(settings),
        ),
    }
