"""deathmetal-lake: the Death Metal dataset as a Dagster asset-based data lake."""
