"""Ingest partitions: one dynamic partition per version of a source file, per dataset.

A key is `{file stem}-{first 12 hex of the content's sha256}`, so the same content never makes a
second partition and a changed file makes a new one. It doubles as the rows' `_ingest_id`.
"""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition

from deathmetal_lake.datasets import DATASETS, Dataset

INGEST_PARTITIONS: dict[str, DynamicPartitionsDefinition] = {
    dataset.name: DynamicPartitionsDefinition(name=f"{dataset.name}_ingests")
    for dataset in DATASETS
}


def ingest_partitions(dataset: Dataset) -> DynamicPartitionsDefinition:
    return INGEST_PARTITIONS[dataset.name]
