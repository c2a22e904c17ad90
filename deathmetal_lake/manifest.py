"""What a landing run delivered, handed to bronze and to the reconciliation checks as data.

The landing asset's output: the ingest's source rows, where Firehose delivered them and which
went to `errors/`. Bronze reads exactly the objects named here, and the checks count against it,
so no layer has to look in Dagster's event log for another layer's results.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class LandingManifest:
    """One ingest's landing: its source rows and the objects that hold them."""

    ingest_id: str
    source: str
    source_columns: list[str]
    source_rows: int
    # Landing object key -> lines of this ingest in it (Firehose's copies counted).
    objects: dict[str, int] = field(default_factory=dict)
    # Source row -> the `errors/` object of a row too large for a Kinesis record.
    error_rows: dict[int, str] = field(default_factory=dict)
    parse_error_rows: int = 0

    @property
    def delivered_rows(self) -> int:
        """Distinct source rows Firehose delivered: every row but those sent to `errors/`."""
        return self.source_rows - len(self.error_rows)

    @property
    def delivered_copies(self) -> int:
        """Lines beyond one per delivered row: Firehose's at-least-once copies."""
        return sum(self.objects.values()) - self.delivered_rows

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> LandingManifest:
        raw = json.loads(text)
        raw["error_rows"] = {int(row): key for row, key in raw["error_rows"].items()}
        return cls(**raw)
