"""Column descriptions of the silver tables, shown in the UI's column schema of each asset."""

from __future__ import annotations

_PROVENANCE_DESCRIPTIONS = {
    "_source_file": "Source file name as dropped (e.g. reviews_2026-11.csv).",
    "_source_row": "1-based data row in that file, header excluded.",
    "_ingest_id": "Ingest (file version) the row came from.",
}

SILVER_COLUMN_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "albums": {
        "id": "Metal-Archives album id (unique).",
        "band": "Band id (bands.id); may be an orphan.",
        "title": "Album title, commas restored.",
        "year": "Release year; null when unknown.",
        **_PROVENANCE_DESCRIPTIONS,
    },
    "bands": {
        "id": "Metal-Archives band id (unique).",
        "name": "Band name, commas restored.",
        "country": "Country of origin; null when N/A.",
        "status": "Active, Split-up, On hold, Changed name, Unknown or Disputed.",
        "formed_in": "Year formed; null when unknown.",
        "genre": "Genres as listed by Metal-Archives.",
        "theme": "Lyrical themes.",
        "active": "Activity periods as written, e.g. 1989-1993|2004-present.",
        "active_start_year": "Start of the first activity period; null when unknown.",
        "active_end_year": "End of the last period; null when ongoing or unknown.",
        "active_periods": "Number of activity periods (0 when none are known).",
        "is_active": "The last activity period runs to the present.",
        **_PROVENANCE_DESCRIPTIONS,
    },
    "reviews": {
        "id": "Metal-Archives review id (unique).",
        "album": "Album id (albums.id); may be an orphan.",
        "title": "Review title, commas restored.",
        "score": "Reviewer's score, 0-100.",
        "content": "Review text, commas restored.",
        **_PROVENANCE_DESCRIPTIONS,
    },
    "music_catalog": {
        "album_id": "Album id.",
        "album_title": "Album title.",
        "year": "Release year.",
        "band_id": "Band id; its band columns are null when the band is unknown.",
        "band_name": "Band name.",
        "country": "Band's country.",
        "status": "Band's status.",
        "formed_in": "Year the band formed.",
        "genre": "Band's genres.",
        "theme": "Band's lyrical themes.",
        "active_start_year": "Start of the band's first activity period.",
        "active_end_year": "End of the band's last activity period.",
        "active_periods": "Number of the band's activity periods.",
        "is_active": "The band is active to the present.",
    },
    "album_reviews": {
        "review_id": "Review id.",
        "album_id": "Reviewed album id; album columns are null when the album is unknown.",
        "review_title": "Review title.",
        "score": "Reviewer's score, 0-100.",
        "content": "Review text.",
        "album_title": "Album title.",
        "band_id": "Album's band id.",
        "year": "Album's release year.",
    },
}
