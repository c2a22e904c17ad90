"""Ingest partitions: one dynamic partition per version of a source file, per dataset.

A key is `{file stem}-{first 12 hex of the content's sha256}`, so the same content never makes a
second partition and a changed file makes a new one. It doubles as the rows' `_ingest_id`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from dagster import AssetChecksDefinition, DynamicPartitionsDefinition, PreviewWarning, asset_check

from deathmetal_lake.datasets import DATASETS, Dataset

INGEST_PARTITIONS: dict[str, DynamicPartitionsDefinition] = {
    dataset.name: DynamicPartitionsDefinition(name=f"{dataset.name}_ingests")
    for dataset in DATASETS
}


def ingest_partitions(dataset: Dataset) -> DynamicPartitionsDefinition:
    return INGEST_PARTITIONS[dataset.name]


def ingest_asset_check(
    dataset: Dataset, **kwargs: Any
) -> Callable[[Callable[..., Any]], AssetChecksDefinition]:
    """`@asset_check` partitioned by the dataset's ingests: one result per ingest.

    Dagster 1.13 calls a partitioned check a preview and warns on every load of the definitions;
    the lake relies on them by design, so its users (`make run`, every CLI) are not warned.
    """

    def apply(evaluate: Callable[..., Any]) -> AssetChecksDefinition:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", "Specifying a partitions_def on an AssetCheckSpec", PreviewWarning
            )
            return asset_check(partitions_def=ingest_partitions(dataset), **kwargs)(evaluate)

    return apply
