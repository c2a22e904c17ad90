"""The lake's Dagster resources, all built for one `LakeSettings` by `build_resources`."""

from __future__ import annotations

from typing import Any

from deathmetal_lake.resources.aws import (
    FirehoseResource,
    KinesisResource,
    LakeResource,
    LakeS3Resource,
    boto3_fields,
    fsspec_storage_options,
)
from deathmetal_lake.resources.io_managers import (
    LakeParquetIOManager,
    LakeTables,
    LandingManifestIOManager,
    TableMissing,
    TableUpdate,
)
from deathmetal_lake.settings import LakeSettings

__all__ = [
    "FirehoseResource",
    "KinesisResource",
    "LakeParquetIOManager",
    "LakeResource",
    "LakeS3Resource",
    "LakeTables",
    "LandingManifestIOManager",
    "TableMissing",
    "TableUpdate",
    "build_resources",
]


def build_resources(settings: LakeSettings) -> dict[str, Any]:
    """Every resource the lake's definitions need, for the back end the settings choose."""
    lake = LakeResource.of(settings)
    boto3_config = boto3_fields(settings)
    s3 = LakeS3Resource(lake=lake, **boto3_config)
    tables = LakeTables(lake=lake, base_dir=f"s3://{settings.bucket}")
    return {
        "lake": lake,
        "s3": s3,
        "kinesis": KinesisResource(lake=lake, **boto3_config),
        "firehose": FirehoseResource(lake=lake, **boto3_config),
        "tables": tables,
        "io_manager": LakeParquetIOManager(
            tables=tables,
            base_dir=f"s3://{settings.bucket}",
            storage_options=fsspec_storage_options(settings),
        ),
        "manifest_io_manager": LandingManifestIOManager(lake=lake, s3=s3),
    }
