"""The embedded AWS: moto with persistence and real Firehose delivery, started on demand."""

from deathmetal_lake.local_aws.control import (
    EmbeddedAwsError,
    endpoint,
    ensure_running,
    health,
    stop,
)

__all__ = ["EmbeddedAwsError", "endpoint", "ensure_running", "health", "stop"]
