"""The lake's settings: the only place that reads the environment.

`LakeSettings` is plain data: every entry point (`dagster dev`, `make run`, the checks runner,
the tests) builds the same definitions from its own settings, and the `lake` resource carries
them whole as its Dagster config (`resources.LakeConfig`; the UI shows them there). Importing
this module does not import Dagster, so `make run` and `make aws-up` start the embedded AWS
(which never needs Dagster) while Dagster is still being imported. `load_settings()` reads
them from `LAKE_*` and the standard AWS variables (see the README's settings table), and from a
`.env` file in the current directory for what the environment does not set: the file `dagster dev`
loads itself, so `make run`, `local_aws` and the checks runner see the same lake as the UI.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from deathmetal_lake.retries import botocore_config

LOCALSTACK_ENDPOINT = "http://localhost:4566"
ENV_FILE = ".env"
"""Settings for this checkout, relative to the current directory (git-ignored; see .env.example)."""
# Emulators accept any credentials; fixed ones keep a user's real AWS profile out of local runs.
EMULATOR_CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}


class AwsMode(StrEnum):
    EMBEDDED = "embedded"
    LOCALSTACK = "localstack"
    AWS = "aws"


class LakeSettings(BaseModel):
    """Where one lake lives and how it talks to AWS. Paths are text so Dagster can show them."""

    model_config = ConfigDict(frozen=True)

    aws_mode: AwsMode = AwsMode.EMBEDDED
    endpoint_url: str | None = None
    region: str = "us-east-1"
    embedded_port: int = Field(default=4566, ge=1, le=65535)
    state_dir: str = ".lake"
    bucket: str = "csv-batch-bucket"
    csv_dir: str = "csv"
    dagster_home: str | None = None
    landing_timeout_seconds: float = Field(default=300.0, gt=0)
    put_records_max_attempts: int = Field(default=10, ge=1)
    embedded_buffer_seconds: int = Field(default=0, ge=0, le=900)
    embedded_compact_min_mb: int = Field(default=64, ge=1)

    @field_validator("state_dir", "csv_dir", "dagster_home", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def csv_path(self) -> Path:
        return Path(self.csv_dir)

    @property
    def instance_dir(self) -> Path:
        """Dagster's home: shared by `make dev` and `make run`, kept beside the emulator state."""
        return Path(self.dagster_home or self.state_path / "dagster").resolve()

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

    def boto3_client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `boto3.client(service, **kwargs)`, retries included."""
        kwargs: dict[str, Any] = {
            "region_name": self.region,
            "config": botocore_config(),
            **self.aws_credentials,
        }
        if self.aws_endpoint:
            kwargs["endpoint_url"] = self.aws_endpoint
        return kwargs


class _EnvironmentSettings(BaseSettings, LakeSettings):
    """`LakeSettings` read from the environment: `LAKE_*` plus three standard variables."""

    model_config = SettingsConfigDict(
        env_prefix="LAKE_", env_file=ENV_FILE, extra="ignore", populate_by_name=True
    )

    endpoint_url: str | None = Field(
        default=None, validation_alias=AliasChoices("AWS_ENDPOINT_URL")
    )
    region: str = Field(default="us-east-1", validation_alias=AliasChoices("AWS_DEFAULT_REGION"))
    dagster_home: str | None = Field(default=None, validation_alias=AliasChoices("DAGSTER_HOME"))


def load_settings() -> LakeSettings:
    """The settings of the environment this process runs in."""
    return LakeSettings(**_EnvironmentSettings().model_dump())
