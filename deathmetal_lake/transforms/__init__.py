"""Pure Polars transforms for silver and gold: LazyFrames in, LazyFrames out, no Dagster.

The asset layer wraps these and sinks their results; nothing here collects, so a layer is never
held in memory twice.
"""

from deathmetal_lake.transforms.gold import GOLD_LINEAGE
from deathmetal_lake.transforms.joins import SILVER_LINEAGE

# Output column -> the (table, column) pairs it is computed from, per join and gold table.
# Table names are unique across layers: albums, bands, reviews, music_catalog and album_reviews
# are silver; the rest are gold.
COLUMN_LINEAGE: dict[str, dict[str, list[tuple[str, str]]]] = {**SILVER_LINEAGE, **GOLD_LINEAGE}
