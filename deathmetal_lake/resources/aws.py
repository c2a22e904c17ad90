"""The lake's AWS resources: where the lake lives, and boto3 clients for S3, Kinesis, Firehose.

The same resources serve the three back ends; only the endpoint and credentials differ. In
embedded mode the `lake` resource starts the embedded AWS on first use, so any Dagster process
(webserver, daemon, run worker) finds it running.
"""

import contextlib
import functools
import os
from typing import Any, ClassVar, Self

import boto3
import polars as pl
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from dagster import Config, ConfigurableResource, InitResourceContext, ResourceDependency
from dagster_aws.s3 import S3Resource
from dagster_aws.utils import ResourceWithBoto3Configuration

from deathmetal_lake.local_aws import ensure_running
from deathmetal_lake.local_aws.control import LOG_FILE
from deathmetal_lake.retries import (
    AWS_MAX_ATTEMPTS,
    POLARS_CLOUD_ENV,
    POLARS_STORAGE_RETRIES,
    botocore_config,
    s3fs_options,
)
from deathmetal_lake.settings import AwsMode, LakeSettings

# Polars' streaming join buffers up to this many rows of each side to choose its build side, and
# reads the variable once per process. Its default buffers a whole large table (album_reviews'
# reviews side); 100k rows choose as well with a fraction of the memory.
JOIN_SAMPLE_LIMIT = ("POLARS_JOIN_SAMPLE_LIMIT", "100000")
# Rows per chunk of Polars' streaming engine. By default it sizes chunks from the schema and its
# threads, which for rows with long text keeps too much in flight: at scale 100, typing the 2.2 M
# reviews peaked at 1.6 GiB and `album_reviews` at 1.4 GiB; with 10k rows 1.3 and 1.0 GiB, in the
# same time, and the files written keep their row groups.
STREAMING_CHUNK_ROWS = 10_000


class LakeConfig(LakeSettings, Config):
    """`LakeSettings` as the `lake` resource's Dagster config: the UI shows them there."""


class LakeResource(ConfigurableResource):
    """Where the lake lives and how it talks to AWS; starts the embedded AWS when it is used.

    Set up in every process that runs the lake's steps, before any of them runs: it caps Polars'
    join sample and its streaming chunks, and sets Polars' S3 retries there (a user's own
    `POLARS_*` variables win).
    """

    settings: LakeConfig

    @classmethod
    def of(cls, settings: LakeSettings) -> Self:
        """The resource for `settings`, carried as its Dagster config."""
        return cls(settings=LakeConfig(**settings.model_dump()))

    def polars_storage_options(self) -> dict[str, Any]:
        """Options for Polars' own S3 reads and writes (object_store keys, not fsspec's)."""
        settings = self.settings
        options: dict[str, Any] = {"aws_region": settings.region}
        if endpoint := settings.aws_endpoint:
            options["aws_endpoint_url"] = endpoint
            options["aws_allow_http"] = str(endpoint.startswith("http://")).lower()
        options.update(settings.aws_credentials)
        options.update(POLARS_STORAGE_RETRIES)
        return options

    def setup_for_execution(self, context: InitResourceContext) -> None:
        os.environ.setdefault(*JOIN_SAMPLE_LIMIT)
        if "POLARS_STREAMING_CHUNK_SIZE" not in os.environ:
            pl.Config.set_streaming_chunk_size(STREAMING_CHUNK_ROWS)
        for name, value in POLARS_CLOUD_ENV.items():
            os.environ.setdefault(name, value)
        if self.settings.aws_mode is AwsMode.EMBEDDED:
            ensure_running(self.settings)


# One retry: a probe that waits out a blip, not an outage.
PROBE_MAX_ATTEMPTS = 2


def require_reachable(settings: LakeSettings) -> None:
    """Fail a run at its start, in seconds and naming its back end, if that does not answer.

    Otherwise every AWS-facing step would spend its clients' retries and then its own (minutes
    for a `make run` of three ingests). Any answer counts: a missing bucket or a refused HEAD is
    for the steps to report as they always do.
    """
    endpoint = {"endpoint_url": settings.aws_endpoint} if settings.aws_endpoint else {}
    s3 = _client(
        "s3",
        None,
        PROBE_MAX_ATTEMPTS,
        unreachable_hint(settings),
        region_name=settings.region,
        **settings.aws_credentials,
        **endpoint,
    )
    with contextlib.suppress(ClientError):
        s3.head_bucket(Bucket=settings.bucket)


def unreachable_hint(settings: LakeSettings) -> str:
    """What to do when the back end does not answer, for the mode the settings choose."""
    endpoint = settings.aws_endpoint
    if settings.aws_mode is AwsMode.EMBEDDED and not settings.endpoint_url:
        return (
            f"the embedded AWS (LAKE_AWS_MODE=embedded) does not answer on {endpoint}: start it "
            "with `make aws-up` (python -m deathmetal_lake.local_aws up) and see `make aws-status` "
            f"and its log {settings.state_path / LOG_FILE}; LAKE_EMBEDDED_PORT sets "
            "its port"
        )
    if settings.aws_mode is AwsMode.LOCALSTACK and not settings.endpoint_url:
        return (
            f"LocalStack (LAKE_AWS_MODE=localstack) does not answer on {endpoint}: start it with "
            "`docker compose up -d`, or choose another back end with LAKE_AWS_MODE"
        )
    where = endpoint or f"AWS in {settings.region}"
    return (
        f"the lake's AWS back end ({where}, LAKE_AWS_MODE={settings.aws_mode.value}) does not "
        "answer: check AWS_ENDPOINT_URL, AWS_DEFAULT_REGION and the network, or set "
        "LAKE_AWS_MODE=embedded for a local lake"
    )


def _name_the_back_end(hint: str) -> Any:
    """A botocore handler that adds `hint` to a call that could not reach the back end."""

    def add_note(exception: BaseException | None = None, **_: Any) -> None:
        if isinstance(exception, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError):
            exception.add_note(hint)

    return add_note


@functools.cache
def _client(
    service: str, profile_name: str | None, max_attempts: int, hint: str, **kwargs: Any
) -> Any:
    """One boto3 client per service and configuration for the whole process.

    A new session reloads botocore's service models (0.1-0.3 s each time), and Dagster makes new
    resource objects for every run; boto3 clients are thread-safe, so they can be shared. A call
    that cannot reach the back end fails in seconds (`retries.py`) and says what to do.
    """
    session = boto3.session.Session(profile_name=profile_name)
    client = session.client(service, config=botocore_config(max_attempts), **kwargs)
    client.meta.events.register("after-call-error", _name_the_back_end(hint))
    return client


def _shared_client(
    resource: ResourceWithBoto3Configuration, settings: LakeSettings, service: str
) -> Any:
    return _client(
        service,
        resource.profile_name,
        resource.max_attempts,
        unreachable_hint(settings),
        region_name=resource.region_name,
        use_ssl=resource.use_ssl,
        verify=resource.verify,
        endpoint_url=resource.endpoint_url,
        aws_access_key_id=resource.aws_access_key_id,
        aws_secret_access_key=resource.aws_secret_access_key,
        aws_session_token=resource.aws_session_token,
    )


class _Boto3ClientResource(ResourceWithBoto3Configuration):
    """A boto3 client of one service, with botocore's standard retries for whole-call errors."""

    lake: ResourceDependency[LakeResource]
    service: ClassVar[str]

    def get_client(self) -> Any:
        return _shared_client(self, self.lake.settings, self.service)


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
        return _shared_client(self, self.lake.settings, "s3")


def boto3_fields(settings: LakeSettings) -> dict[str, Any]:
    return {
        "region_name": settings.region,
        "endpoint_url": settings.aws_endpoint,
        "max_attempts": AWS_MAX_ATTEMPTS,
        **settings.aws_credentials,
    }


def fsspec_storage_options(settings: LakeSettings) -> dict[str, Any]:
    """fsspec-style options; dagster-polars maps them onto Polars' object_store keys too."""
    client_kwargs: dict[str, Any] = {"region_name": settings.region}
    options: dict[str, Any] = {"client_kwargs": client_kwargs, **s3fs_options()}
    if settings.aws_endpoint:
        client_kwargs["endpoint_url"] = settings.aws_endpoint
    if settings.aws_credentials:
        options["key"] = settings.aws_credentials["aws_access_key_id"]
        options["secret"] = settings.aws_credentials["aws_secret_access_key"]
    return options
