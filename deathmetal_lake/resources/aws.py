"""The lake's AWS resources: where the lake lives, and boto3 clients for S3, Kinesis, Firehose.

The same resources serve the three back ends; only the endpoint and credentials differ. In
embedded mode the `lake` resource starts the embedded AWS on first use, so any Dagster process
(webserver, daemon, run worker) finds it running.
"""

import functools
import os
from typing import Any, ClassVar

import boto3
from dagster import ConfigurableResource, InitResourceContext, ResourceDependency
from dagster_aws.s3 import S3Resource
from dagster_aws.utils import ResourceWithBoto3Configuration, construct_boto_client_retry_config

from deathmetal_lake.local_aws import ensure_running
from deathmetal_lake.settings import AwsMode, LakeSettings

# Polars' streaming join buffers up to this many rows of each side to choose its build side, and
# reads the variable once per process. Its default buffers a whole large table (album_reviews'
# reviews side); 100k rows choose as well with a fraction of the memory.
JOIN_SAMPLE_LIMIT = ("POLARS_JOIN_SAMPLE_LIMIT", "100000")


class LakeResource(ConfigurableResource):
    """Where the lake lives and how it talks to AWS; starts the embedded AWS when it is used.

    Set up in every process that runs the lake's steps, before any of them runs: it caps Polars'
    join sample there (a user's own `POLARS_JOIN_SAMPLE_LIMIT` wins).
    """

    settings: LakeSettings

    def polars_storage_options(self) -> dict[str, str]:
        """Options for Polars' own S3 reads and writes (object_store keys, not fsspec's)."""
        settings = self.settings
        options = {"aws_region": settings.region}
        if endpoint := settings.aws_endpoint:
            options["aws_endpoint_url"] = endpoint
            options["aws_allow_http"] = str(endpoint.startswith("http://")).lower()
        options.update(settings.aws_credentials)
        return options

    def setup_for_execution(self, context: InitResourceContext) -> None:
        os.environ.setdefault(*JOIN_SAMPLE_LIMIT)
        if self.settings.aws_mode is AwsMode.EMBEDDED:
            ensure_running(self.settings)


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
    lake uses it to describe delivery streams, e.g. their status.
    """

    service: ClassVar[str] = "firehose"


class LakeS3Resource(S3Resource):
    """dagster-aws's S3 resource, started together with the embedded AWS when that is in use."""

    lake: ResourceDependency[LakeResource]

    def get_client(self) -> Any:
        """A shared client: dagster-aws builds a new session and client on every call."""
        return _shared_client(self, "s3")


def boto3_fields(settings: LakeSettings) -> dict[str, Any]:
    return {
        "region_name": settings.region,
        "endpoint_url": settings.aws_endpoint,
        "max_attempts": 8,
        **settings.aws_credentials,
    }


def fsspec_storage_options(settings: LakeSettings) -> dict[str, Any]:
    """fsspec-style options; dagster-polars maps them onto Polars' object_store keys too."""
    client_kwargs: dict[str, Any] = {"region_name": settings.region}
    options: dict[str, Any] = {"client_kwargs": client_kwargs}
    if settings.aws_endpoint:
        client_kwargs["endpoint_url"] = settings.aws_endpoint
    if settings.aws_credentials:
        options["key"] = settings.aws_credentials["aws_access_key_id"]
        options["secret"] = settings.aws_credentials["aws_secret_access_key"]
    return options
