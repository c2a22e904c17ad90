"""deathmetal-lake: the Death Metal dataset as a Dagster asset-based data lake."""

import os

# Polars' streaming join buffers up to this many rows of each side to choose its build side, and
# reads the setting once per process. Its default buffered the whole reviews table (2.3 GB peak at
# scale 100 for album_reviews); 100k rows choose as well and peak at 1.3 GB. A user's value wins.
os.environ.setdefault("POLARS_JOIN_SAMPLE_LIMIT", "100000")
