"""The silver joins: albums with their band, reviews with their album (left joins, orphans kept)."""

from __future__ import annotations

import polars as pl


def music_catalog(albums: pl.LazyFrame, bands: pl.LazyFrame) -> pl.LazyFrame:
    """Albums LEFT JOIN bands on albums.band = bands.id; an unknown band leaves its columns null."""
    return albums.select(
        pl.col("id").alias("album_id"),
        pl.col("title").alias("album_title"),
        "year",
        pl.col("band").alias("band_id"),
    ).join(
        bands.select(
            pl.col("id").alias("band_id"),
            pl.col("name").alias("band_name"),
            "country",
            "status",
            "formed_in",
            "genre",
            "theme",
            "active_start_year",
            "active_end_year",
            "active_periods",
            "is_active",
        ),
        on="band_id",
        how="left",
    )


def album_reviews(reviews: pl.LazyFrame, albums: pl.LazyFrame) -> pl.LazyFrame:
    """Reviews LEFT JOIN albums on reviews.album = albums.id; an unknown album leaves nulls."""
    return reviews.select(
        pl.col("id").alias("review_id"),
        pl.col("album").alias("album_id"),
        pl.col("title").alias("review_title"),
        "score",
        "content",
    ).join(
        albums.select(
            pl.col("id").alias("album_id"),
            pl.col("title").alias("album_title"),
            pl.col("band").alias("band_id"),
            "year",
        ),
        on="album_id",
        how="left",
    )


def count_orphans(
    child: pl.LazyFrame, parent: pl.LazyFrame, foreign_key: str, parent_key: str = "id"
) -> pl.LazyFrame:
    """One row: `orphan_rows` (child rows whose foreign key has no parent) and `orphan_keys`."""
    orphans = child.filter(pl.col(foreign_key).is_not_null()).join(
        parent.select(pl.col(parent_key).alias(foreign_key)), on=foreign_key, how="anti"
    )
    return orphans.select(
        pl.len().cast(pl.Int64).alias("orphan_rows"),
        pl.col(foreign_key).n_unique().cast(pl.Int64).alias("orphan_keys"),
    )


SILVER_LINEAGE: dict[str, dict[str, list[tuple[str, str]]]] = {
    "music_catalog": {
        "album_id": [("albums", "id")],
        "album_title": [("albums", "title")],
        "year": [("albums", "year")],
        "band_id": [("albums", "band")],
        "band_name": [("bands", "name"), ("albums", "band"), ("bands", "id")],
        "country": [("bands", "country"), ("albums", "band"), ("bands", "id")],
        "status": [("bands", "status"), ("albums", "band"), ("bands", "id")],
        "formed_in": [("bands", "formed_in"), ("albums", "band"), ("bands", "id")],
        "genre": [("bands", "genre"), ("albums", "band"), ("bands", "id")],
        "theme": [("bands", "theme"), ("albums", "band"), ("bands", "id")],
        "active_start_year": [("bands", "active_start_year"), ("albums", "band"), ("bands", "id")],
        "active_end_year": [("bands", "active_end_year"), ("albums", "band"), ("bands", "id")],
        "active_periods": [("bands", "active_periods"), ("albums", "band"), ("bands", "id")],
        "is_active": [("bands", "is_active"), ("albums", "band"), ("bands", "id")],
    },
    "album_reviews": {
        "review_id": [("reviews", "id")],
        "album_id": [("reviews", "album")],
        "review_title": [("reviews", "title")],
        "score": [("reviews", "score")],
        "content": [("reviews", "content")],
        "album_title": [("albums", "title"), ("reviews", "album"), ("albums", "id")],
        "band_id": [("albums", "band"), ("reviews", "album"), ("albums", "id")],
        "year": [("albums", "year"), ("reviews", "album"), ("albums", "id")],
    },
}
