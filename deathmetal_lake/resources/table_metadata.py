"""What a written table shows in the UI: row count, URI and a preview of its first rows.

Cheap by design: the row count comes from the Parquet footers, the preview from the first pages of
the first part (a buffered read of one small batch, never a whole row group or table).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import polars as pl
import pyarrow.parquet as pq
from dagster import MetadataValue, TableColumn, TableRecord, TableSchema
from upath import UPath

from deathmetal_lake.rules import RejectReason
from deathmetal_lake.transforms.silver import REJECT_REASON_COLUMN

PREVIEW_ROWS = 5
PREVIEW_TEXT_CHARS = 80
# Read buffer for the preview: pyarrow then streams pages instead of whole column chunks.
_PREVIEW_BUFFER_BYTES = 1 << 16
_COLUMN_TYPES = {pl.Boolean: "bool", pl.Float32: "float", pl.Float64: "float"}


def _footer_rows(part: UPath) -> int:
    with part.fs.open(part.path, "rb") as file:
        return pq.ParquetFile(file).metadata.num_rows


def _rows_and_head(part: UPath) -> tuple[int, pl.DataFrame]:
    """A part's row count and first rows, from one open of it (its footer, then a small batch)."""
    with part.fs.open(part.path, "rb") as file:
        reader = pq.ParquetFile(file, buffer_size=_PREVIEW_BUFFER_BYTES, pre_buffer=False)
        batch = next(reader.iter_batches(batch_size=PREVIEW_ROWS), None)
        rows, schema = reader.metadata.num_rows, reader.schema_arrow
    frame = pl.from_arrow(batch if batch is not None else schema.empty_table())
    assert isinstance(frame, pl.DataFrame)
    return rows, frame.head(PREVIEW_ROWS)


def _column_type(dtype: pl.DataType) -> str:
    if dtype.is_integer():
        return "int"
    return _COLUMN_TYPES.get(type(dtype), "string")


def _cell(value: Any, column_type: str) -> Any:
    if value is None or column_type != "string":
        return value
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= PREVIEW_TEXT_CHARS else text[: PREVIEW_TEXT_CHARS - 1] + "…"


def preview(frame: pl.DataFrame) -> MetadataValue:
    """The rows as a UI table; long text is cut, lists and dates are shown as text."""
    types = {name: _column_type(dtype) for name, dtype in frame.schema.items()}
    return MetadataValue.table(
        records=[
            TableRecord({name: _cell(value, types[name]) for name, value in row.items()})
            for row in frame.iter_rows(named=True)
        ],
        schema=TableSchema(columns=[TableColumn(name, kind) for name, kind in types.items()]),
    )


def written_table_metadata(
    parts: Iterable[UPath], uri: str, *, partitioned: bool = False
) -> dict[str, Any]:
    """Row count (`dagster/partition_row_count` for a partition), URI and preview of a table.

    `parts` are its Parquet files: one for a file table or partition, every part of a folder.
    """
    ordered = sorted(parts, key=str)
    for part in ordered:  # written by Polars, not fsspec: a listing cached earlier is stale
        part.fs.invalidate_cache(part.path)
    # The preview is the first rows of the first part that has any; the other parts give counts.
    rows, head = 0, None
    for part in ordered:
        if head is None:
            count, first_rows = _rows_and_head(part)
            head = first_rows if count else None
        else:
            count = _footer_rows(part)
        rows += count
    metadata: dict[str, Any] = {
        "dagster/partition_row_count" if partitioned else "dagster/row_count": rows,
        "dagster/uri": MetadataValue.path(uri),
    }
    if head is not None:
        metadata["preview"] = preview(head)
    return metadata


def quarantine_reason_counts(rejected: pl.DataFrame) -> dict[str, int]:
    """`quarantine/<reason>`: rows per reject reason, 0 for reasons absent, so plots keep a line."""
    reasons = rejected[REJECT_REASON_COLUMN].str.extract(r"^([^:]+)").value_counts()
    counts = dict(reasons.iter_rows())
    return {
        f"quarantine/{reason.value.replace(' ', '_')}": counts.get(reason.value, 0)
        for reason in RejectReason
    }
