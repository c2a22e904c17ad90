"""The lake's settings: the only place that reads the environment.

Every value comes from an environment variable (see the README's settings table); resources,
the embedded AWS and the command-line entry points receive a `LakeSettings` instead of reading
`os.environ` themselves.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

LOCALSTACK_ENDPOINT = "http://localhost:4566"
# Emulators accept any credentials; fixed ones keep a user's real AWS profile out of local runs.
EMULATOR_CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}


class AwsMode(StrEnum):
    EMBEDDED = "embedded"
    LOCALSTACK = "localstack"
    AWS = "aws"


class LakeSettings(BaseSettings):
    """Settings of one lake, read from `LAKE_*` and the standard AWS variables."""

    model_config = SettingsConfigDict(
        env_prefix="LAKE_", frozen=True, extra="ignore", populate_by_name=True
    )

    aws_mode: AwsMode = AwsMode.EMBEDDED
    endpoint_url: str | None = Field(
        default=None, validation_alias=AliasChoices("AWS_ENDPOINT_URL")
    )
    region: str = Field(default="us-east-1", validation_alias=AliasChoices("AWS_DEFAULT_REGION"))
    embedded_port: int = Field(default=4566, ge=1, le=65535)
    state_dir: Path = Path(".lake")
    bucket: str = "csv-batch-bucket"
    csv_dir: Path = Path("csv")
    dagster_home: Path | None = Field(default=None, validation_alias=AliasChoices("DAGSTER_HOME"))
    landing_timeout_seconds: float = Field(default=300.0, gt=0)
    put_records_max_attempts: int = Field(default=10, ge=1)
    embedded_buffer_seconds: int = Field(default=0, ge=0, le=900)

    @property
    def aws_endpoint(self) -> str | None:
        """The endpoint every AWS client uses; None means boto3's own (real AWS)."""
        if self.endpoint_url:
            return self.endpoint_url
        if self.aws_mode is AwsMode.EMBEDDED:
            return f"http://127.0.0.1:{self.embedded_port}"
        if self.aws_mode is AwsMode.LOCALSTACK:
            return LOCALSTACK_ENDPOINT
        return None

    @property
    def aws_credentials(self) -> dict[str, str]:
        """Fixed credentials for emulators; empty (boto3's credential chain) for real AWS."""
        return {} if self.aws_mode is AwsMode.AWS else dict(EMULATOR_CREDENTIALS)

    @property
    def uses_embedded_aws(self) -> bool:
        return self.aws_mode is AwsMode.EMBEDDED

    @property
    def instance_dir(self) -> Path:
        """Dagster's home: shared by `make dev` and `make run`, kept beside the emulator state."""
        return (self.dagster_home or self.state_dir / "dagster").resolve()

    def boto3_client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for `boto3.client(service, **kwargs)`."""
        kwargs = {"region_name": self.region, **self.aws_credentials}
        if self.aws_endpoint:
            kwargs["endpoint_url"] = self.aws_endpoint
        return kwargs


def load_settings() -> LakeSettings:
    return LakeSettings()
