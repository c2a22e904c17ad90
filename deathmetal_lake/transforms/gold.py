"""Gold marts: small analytic tables computed from silver (and from each other)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

BRAZIL = "Brazil"
TOP_PER_COUNTRY = 10
# Bayesian prior weight m, in reviews: an album needs about this many reviews before its own mean
# outweighs the global mean. Most Metal-Archives albums have 1-3 reviews, so a median-based m
# would be ~1 and let a single perfect review rank near the top; a fixed m also keeps ranks
# stable when an increment shifts the review-count distribution.
DEFAULT_PRIOR_WEIGHT = 5.0


def band_avg_scores(album_reviews: pl.LazyFrame, bands: pl.LazyFrame) -> pl.LazyFrame:
    """Per band with at least one review: review count, mean/min/max/std (sample) of score."""
    stats = (
        album_reviews.filter(pl.col("band_id").is_not_null())
        .group_by("band_id")
        .agg(
            pl.col("score").count().cast(pl.Int64).alias("review_count"),
            pl.col("score").mean().alias("mean_score"),
            pl.col("score").min().alias("min_score"),
            pl.col("score").max().alias("max_score"),
            pl.col("score").std().alias("std_score"),
        )
    )
    names = bands.select(
        pl.col("id").alias("band_id"), pl.col("name").alias("band_name"), "country"
    )
    return (
        stats.join(names, on="band_id", how="left")
        .select(
            "band_id",
            "band_name",
            "country",
            "review_count",
            "mean_score",
            "min_score",
            "max_score",
            "std_score",
        )
        .sort("band_id")
    )


def top10_by_country(band_avg_scores: pl.LazyFrame) -> pl.LazyFrame:
    """Per country, the 10 best bands by mean score (ties: more reviews, then lower band_id)."""
    return (
        band_avg_scores.filter(pl.col("country").is_not_null())
        .sort(
            "country",
            "mean_score",
            "review_count",
            "band_id",
            descending=[False, True, True, False],
        )
        .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over("country").alias("rank"))
        .filter(pl.col("rank") <= TOP_PER_COUNTRY)
        .select("country", "rank", "band_id", "band_name", "mean_score", "review_count")
    )


def brazilian_bands(bands: pl.LazyFrame) -> pl.LazyFrame:
    """Bands whose country is Brazil."""
    return (
        bands.filter(pl.col("country") == BRAZIL)
        .select(
            pl.col("id").alias("band_id"),
            pl.col("name").alias("band_name"),
            "status",
            "formed_in",
            "genre",
            "theme",
            "active_start_year",
            "active_end_year",
            "is_active",
        )
        .sort("band_id")
    )


def band_album_counts(albums: pl.LazyFrame, bands: pl.LazyFrame) -> pl.LazyFrame:
    """Per known band, its number of albums (0 included), most albums first."""
    counts = albums.group_by(pl.col("band").alias("band_id")).agg(
        pl.len().cast(pl.Int64).alias("album_count")
    )
    return (
        bands.select(pl.col("id").alias("band_id"), pl.col("name").alias("band_name"))
        .join(counts, on="band_id", how="left")
        .with_columns(pl.col("album_count").fill_null(0))
        .sort("album_count", "band_id", descending=[True, False])
    )


def album_rankings(
    reviews: pl.LazyFrame,
    music_catalog: pl.LazyFrame,
    *,
    prior_weight: float = DEFAULT_PRIOR_WEIGHT,
) -> pl.LazyFrame:
    """Reviewed albums ranked by Bayesian score (v/(v+m))*R + (m/(v+m))*C, best first.

    R and v are the album's mean score and review count, C the mean of every review (orphans
    included), m `prior_weight`. Ties: more reviews, then lower album_id.
    """
    stats = reviews.group_by(pl.col("album").alias("album_id")).agg(
        pl.col("score").count().cast(pl.Int64).alias("review_count"),
        pl.col("score").mean().alias("mean_score"),
    )
    global_mean = reviews.select(pl.col("score").mean().alias("global_mean"))
    v, r, c = pl.col("review_count"), pl.col("mean_score"), pl.col("global_mean")
    weighted = (v / (v + prior_weight)) * r + (prior_weight / (v + prior_weight)) * c
    return (
        stats.join(global_mean, how="cross")
        .with_columns(weighted.alias("weighted_score"))
        .join(
            music_catalog.select("album_id", "album_title", "year", "band_id", "band_name"),
            on="album_id",
            how="inner",
        )
        .sort("weighted_score", "review_count", "album_id", descending=[True, True, False])
        .with_row_index("rank", offset=1)
        .select(
            pl.col("rank").cast(pl.Int64),
            "album_id",
            "album_title",
            "band_id",
            "band_name",
            "year",
            "review_count",
            "mean_score",
            "weighted_score",
        )
    )


def genre_by_decade(music_catalog: pl.LazyFrame) -> pl.LazyFrame:
    """Albums per band genre per decade of release (an album counts once in each of its genres)."""
    return (
        music_catalog.filter(pl.col("year").is_not_null())
        .select("album_id", "genre", ((pl.col("year") // 10) * 10).alias("decade"))
        # Explicit: polars 2 changes the default; an album without genres yields no row.
        .explode("genre", empty_as_null=False, keep_nulls=False)
        .group_by("genre", "decade")
        .agg(pl.col("album_id").n_unique().cast(pl.Int64).alias("album_count"))
        .sort("genre", "decade")
    )


@dataclass(frozen=True)
class TopPerGroup:
    """At most `limit` rows per value of `group`, numbered 1.. in `rank`."""

    group: str
    rank: str
    limit: int


@dataclass(frozen=True)
class RankOrder:
    """`rank` is the row position 1..n and `score` never increases with it."""

    rank: str
    score: str


@dataclass(frozen=True)
class Mart:
    """A gold mart declared once: its transform and the sanity rules its checks enforce.

    The transform's table parameters name its inputs (silver or gold tables); its name is the
    mart's. `score_columns` hold review scores or their averages (0..100); `may_be_empty` marks a
    mart that can be empty while its inputs are not (a filter that can match nothing).
    """

    transform: Callable[..., pl.LazyFrame]
    score_columns: tuple[str, ...] = ()
    may_be_empty: bool = False
    top_per_group: TopPerGroup | None = None
    rank_order: RankOrder | None = None

    @property
    def name(self) -> str:
        return self.transform.__name__

    @property
    def inputs(self) -> tuple[str, ...]:
        """The transform's table parameters: positional, without defaults."""
        return tuple(
            p.name
            for p in inspect.signature(self.transform).parameters.values()
            if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty
        )

    @property
    def summary(self) -> str:
        return (inspect.getdoc(self.transform) or self.name).split("\n\n", 1)[0]


MARTS: tuple[Mart, ...] = (
    Mart(band_avg_scores, score_columns=("mean_score", "min_score", "max_score")),
    Mart(
        top10_by_country,
        score_columns=("mean_score",),
        top_per_group=TopPerGroup("country", "rank", TOP_PER_COUNTRY),
    ),
    Mart(brazilian_bands, may_be_empty=True),
    Mart(band_album_counts),
    Mart(
        album_rankings,
        score_columns=("mean_score", "weighted_score"),
        rank_order=RankOrder("rank", "weighted_score"),
    ),
    Mart(genre_by_decade),
)


_BY_BAND = [("album_reviews", "band_id")]
_BAYES = [("reviews", "score"), ("reviews", "album")]

GOLD_LINEAGE: dict[str, dict[str, list[tuple[str, str]]]] = {
    "band_avg_scores": {
        "band_id": _BY_BAND,
        "band_name": [("bands", "name"), ("bands", "id"), *_BY_BAND],
        "country": [("bands", "country"), ("bands", "id"), *_BY_BAND],
        "review_count": [("album_reviews", "score"), *_BY_BAND],
        "mean_score": [("album_reviews", "score"), *_BY_BAND],
        "min_score": [("album_reviews", "score"), *_BY_BAND],
        "max_score": [("album_reviews", "score"), *_BY_BAND],
        "std_score": [("album_reviews", "score"), *_BY_BAND],
    },
    "top10_by_country": {
        "country": [("band_avg_scores", "country")],
        "rank": [
            ("band_avg_scores", "country"),
            ("band_avg_scores", "mean_score"),
            ("band_avg_scores", "review_count"),
            ("band_avg_scores", "band_id"),
        ],
        "band_id": [("band_avg_scores", "band_id")],
        "band_name": [("band_avg_scores", "band_name")],
        "mean_score": [("band_avg_scores", "mean_score")],
        "review_count": [("band_avg_scores", "review_count")],
    },
    "brazilian_bands": {
        "band_id": [("bands", "id"), ("bands", "country")],
        "band_name": [("bands", "name"), ("bands", "country")],
        "status": [("bands", "status"), ("bands", "country")],
        "formed_in": [("bands", "formed_in"), ("bands", "country")],
        "genre": [("bands", "genre"), ("bands", "country")],
        "theme": [("bands", "theme"), ("bands", "country")],
        "active_start_year": [("bands", "active_start_year"), ("bands", "country")],
        "active_end_year": [("bands", "active_end_year"), ("bands", "country")],
        "is_active": [("bands", "is_active"), ("bands", "country")],
    },
    "band_album_counts": {
        "band_id": [("bands", "id")],
        "band_name": [("bands", "name")],
        "album_count": [("albums", "band"), ("bands", "id")],
    },
    "album_rankings": {
        "rank": [*_BAYES, ("music_catalog", "album_id")],
        "album_id": [("reviews", "album"), ("music_catalog", "album_id")],
        "album_title": [("music_catalog", "album_title")],
        "band_id": [("music_catalog", "band_id")],
        "band_name": [("music_catalog", "band_name")],
        "year": [("music_catalog", "year")],
        "review_count": _BAYES,
        "mean_score": _BAYES,
        "weighted_score": _BAYES,
    },
    "genre_by_decade": {
        "genre": [("music_catalog", "genre"), ("music_catalog", "year")],
        "decade": [("music_catalog", "year")],
        "album_count": [
            ("music_catalog", "album_id"),
            ("music_catalog", "genre"),
            ("music_catalog", "year"),
        ],
    },
}
