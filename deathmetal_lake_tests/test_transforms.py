"""Unit tests of the silver and gold transforms on small hand-made frames."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from deathmetal_lake.datasets import DATASETS_BY_NAME
from deathmetal_lake.rows import PROVENANCE_COLUMNS
from deathmetal_lake.rules import RULES, RejectReason
from deathmetal_lake.transforms import COLUMN_LINEAGE, descriptions, gold, joins, merge, silver

YEAR = 2026
PROVENANCE_SCHEMA = {"_source_file": pl.String, "_source_row": pl.Int64, "_ingest_id": pl.String}
# Valid values for every source column, so a test row only states what it is about.
VALID = {
    "albums": {"band": "7", "title": "Scream Bloody Gore", "year": "1987"},
    "bands": {
        "name": "Death",
        "country": "United States",
        "status": "Split-up",
        "formed_in": "1983",
        "genre": "Death Metal",
        "theme": "Death",
        "active": "1983-2001",
    },
    "reviews": {"album": "3", "title": "Classic", "score": "90", "content": "Great"},
}


def bronze(
    dataset: str, file: str, ingest: str, rows: list[dict[str, Any]], **extra: list[str]
) -> pl.LazyFrame:
    """A bronze frame: rows are numbered 1.. unless they set `_source_row`."""
    records = []
    for number, row in enumerate(rows, start=1):
        record: dict[str, Any] = {**VALID[dataset], "_source_row": number, **row}
        if record.get("_parse_error"):  # the producer could not split it: no source values
            record.update(dict.fromkeys(DATASETS_BY_NAME[dataset].columns))
        records.append({**record, "_source_file": file, "_ingest_id": ingest})
    schema = {**silver.bronze_schema(dataset), **dict.fromkeys(extra, pl.String)}
    for column, values in extra.items():
        for record, value in zip(records, values, strict=True):
            record[column] = value
    return pl.LazyFrame([{c: r.get(c) for c in schema} for r in records], schema=schema)


def source_files_of(bronze: dict[str, pl.LazyFrame]) -> dict[str, str]:
    """Each test ingest's file, read from its first row (an empty ingest names none)."""
    firsts = pl.collect_all([frame.select(pl.first("_source_file")) for frame in bronze.values()])
    return {i: f.item() for i, f in zip(bronze, firsts, strict=True) if f.height and f.item()}


def build(dataset: str, *frames: tuple[str, pl.LazyFrame], **kwargs: Any) -> merge.SilverResult:
    """build_silver over ingests given oldest first as (ingest_id, frame)."""
    files = kwargs.pop("source_files", None) or source_files_of(dict(frames))
    return merge.build_silver(
        dataset,
        dict(frames),
        [i for i, _ in frames],
        current_year=YEAR,
        source_files=files,
        **kwargs,
    )


def reasons(result: merge.SilverResult) -> dict[str, str]:
    """Quarantine as raw id (or `file:row` when the id is missing) -> reason."""
    q = result.quarantine.collect()
    return {
        r["id"] if r["id"] else f"{r['_source_file']}:{r['_source_row']}": r["_reject_reason"]
        for r in q.iter_rows(named=True)
    }


def ids(result: merge.SilverResult) -> list[int]:
    return sorted(result.table.collect()["id"].to_list())


# --- rules --------------------------------------------------------------------------------------


def test_rules_cover_every_dataset_and_name_only_source_columns():
    assert RULES.keys() == DATASETS_BY_NAME.keys()
    for rules in RULES.values():
        named = {
            rules.key,
            *rules.integer_columns,
            *rules.year_columns,
            *(s.name for s in rules.score_columns),
            *rules.free_text_columns,
            *rules.list_columns,
            *rules.text_columns,
            *rules.required_columns,
            *(fk.column for fk in rules.foreign_keys),
            *rules.known_values,
        }
        if rules.active_column:
            named.add(rules.active_column)
        assert named <= set(rules.source_columns), rules.dataset
        for fk in rules.foreign_keys:
            assert fk.references in RULES
            assert fk.column in rules.integer_columns


def test_reject_reasons_are_stable_and_ordered():
    assert [r.value for r in RejectReason] == [
        "parse error",
        "invalid id",
        "required field missing",
        "invalid integer",
        "invalid score",
        "invalid year",
        "duplicate id",
    ]


# --- column helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("active", "start", "end", "periods", "is_active"),
    [
        ("1989-1993|2004-present", 1989, None, 2, True),
        ("?-1995", None, 1995, 1, False),
        ("N/A", None, None, 0, None),
        ("1990-1995|?-present", 1990, None, 2, True),
        ("present", None, None, 1, True),
        ("", None, None, 0, None),
        (None, None, None, 0, None),
        ("1983-2001", 1983, 2001, 1, False),
        ("1990-?", 1990, None, 1, False),
        ("?-present", None, None, 1, True),
        ("1995", 1995, 1995, 1, False),
        ("1988-1991 (as Mantas)|1991-2001", 1988, 2001, 2, False),
        (" 1990 - 1992 | 1995-Present ", 1990, None, 2, True),
        ("1990-1992|", 1990, 1992, 1, False),
        ("1987-1990|1992-1995|2000-2003", 1987, 2003, 3, False),
    ],
)
def test_active_period_parser(active, start, end, periods, is_active):
    out = pl.LazyFrame({"active": [active]}, schema={"active": pl.String}).select(
        silver.active_period_columns("active")
    )
    expected = pl.DataFrame(
        {
            "active_start_year": [start],
            "active_end_year": [end],
            "active_periods": [periods],
            "is_active": [is_active],
        },
        schema={
            "active_start_year": pl.Int64,
            "active_end_year": pl.Int64,
            "active_periods": pl.Int64,
            "is_active": pl.Boolean,
        },
    )
    assert_frame_equal(out.collect(), expected)


def test_restore_commas():
    out = pl.LazyFrame({"t": ["Left Hand Path", "Blood| Guts| Gore", "||", None]}).select(
        silver.restore_commas("t")
    )
    expected = pl.DataFrame({"t": ["Left Hand Path", "Blood, Guts, Gore", ",,", None]})
    assert_frame_equal(out.collect(), expected)


def test_split_list():
    values = ["Death Metal", " Death Metal | Grindcore ", "N/A", "", "a||b", " | N/A ", None]
    out = pl.LazyFrame({"g": values}, schema={"g": pl.String}).select(silver.split_list("g"))
    expected = pl.DataFrame(
        {"g": [["Death Metal"], ["Death Metal", "Grindcore"], None, None, ["a", "b"], None, None]},
        schema={"g": pl.List(pl.String)},
    )
    assert_frame_equal(out.collect(), expected)


# --- silver base tables: typing and cleaning ----------------------------------------------------


def test_bands_are_typed_and_cleaned():
    rows = [
        {
            "id": "2",
            "name": "Sepultura",
            "country": "Brazil",
            "status": "Active",
            "formed_in": "1984",
            "genre": "Death Metal (early)| Thrash Metal (mid)",
            "theme": "Politics|War|N/A",
            "active": "1984-present",
        },
        {
            "id": " 1 ",
            "name": "Blood| Sweat",
            "country": "N/A",
            "status": "",
            "formed_in": "N/A",
            "genre": "N/A",
            "theme": "",
            "active": "N/A",
        },
    ]
    result = build("bands", ("i1", bronze("bands", "bands.csv", "i1", rows)))
    expected = pl.DataFrame(
        {
            "id": [1, 2],
            "name": ["Blood, Sweat", "Sepultura"],
            "country": [None, "Brazil"],
            "status": [None, "Active"],
            "formed_in": [None, 1984],
            "genre": [None, ["Death Metal (early)", "Thrash Metal (mid)"]],
            "theme": [None, ["Politics", "War"]],
            "active": [None, "1984-present"],
            "active_start_year": [None, 1984],
            "active_end_year": [None, None],
            "active_periods": [0, 1],
            "is_active": [None, True],
            "_source_file": ["bands.csv", "bands.csv"],
            "_source_row": [2, 1],
            "_ingest_id": ["i1", "i1"],
        },
        schema={
            "id": pl.Int64,
            "name": pl.String,
            "country": pl.String,
            "status": pl.String,
            "formed_in": pl.Int64,
            "genre": pl.List(pl.String),
            "theme": pl.List(pl.String),
            "active": pl.String,
            "active_start_year": pl.Int64,
            "active_end_year": pl.Int64,
            "active_periods": pl.Int64,
            "is_active": pl.Boolean,
            **PROVENANCE_SCHEMA,
        },
    )
    assert_frame_equal(result.table.collect().sort("id"), expected)
    assert result.quarantine.collect().height == 0


def test_albums_and_reviews_are_typed_and_cleaned():
    albums = build(
        "albums",
        (
            "i1",
            bronze("albums", "albums.csv", "i1", [{"id": "5", "title": "Hate| Love", "year": ""}]),
        ),
    )
    assert_frame_equal(
        albums.table.collect(),
        pl.DataFrame(
            {
                "id": [5],
                "band": [7],
                "title": ["Hate, Love"],
                "year": [None],
                "_source_file": ["albums.csv"],
                "_source_row": [1],
                "_ingest_id": ["i1"],
            },
            schema={
                "id": pl.Int64,
                "band": pl.Int64,
                "title": pl.String,
                "year": pl.Int64,
                **PROVENANCE_SCHEMA,
            },
        ),
    )
    reviews = build(
        "reviews",
        (
            "i1",
            bronze(
                "reviews",
                "reviews.csv",
                "i1",
                [{"id": "9", "score": " 87.5 ", "title": "", "content": "Fast| heavy| loud"}],
            ),
        ),
    )
    assert_frame_equal(
        reviews.table.collect(),
        pl.DataFrame(
            {
                "id": [9],
                "album": [3],
                "title": [None],
                "score": [87.5],
                "content": ["Fast, heavy, loud"],
                "_source_file": ["reviews.csv"],
                "_source_row": [1],
                "_ingest_id": ["i1"],
            },
            schema={
                "id": pl.Int64,
                "album": pl.Int64,
                "title": pl.String,
                "score": pl.Float64,
                "content": pl.String,
                **PROVENANCE_SCHEMA,
            },
        ),
    )


def test_descriptions_cover_every_silver_column():
    base = {
        name: build(name, ("i1", bronze(name, f"{name}.csv", "i1", [{"id": "1"}]))).table
        for name in RULES
    }
    tables = {
        **base,
        "music_catalog": joins.music_catalog(base["albums"], base["bands"]),
        "album_reviews": joins.album_reviews(base["reviews"], base["albums"]),
    }
    assert tables.keys() == descriptions.SILVER_COLUMN_DESCRIPTIONS.keys()
    for name, table in tables.items():
        assert table.collect_schema().names() == list(descriptions.SILVER_COLUMN_DESCRIPTIONS[name])


# --- silver base tables: rejections -------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "row", "reason"),
    [
        (
            "reviews",
            {"_parse_error": "unterminated quote", "_raw": '1,2,"x'},
            "parse error: unterminated quote",
        ),
        ("reviews", {"id": ""}, "invalid id: missing"),
        ("reviews", {"id": "N/A"}, "invalid id: missing"),
        ("reviews", {"id": "12a"}, "invalid id: id='12a' (expected integer)"),
        ("reviews", {"id": "1.0"}, "invalid id: id='1.0' (expected integer)"),
        ("reviews", {"album": "N/A"}, "required field missing: album"),
        ("reviews", {"score": ""}, "required field missing: score"),
        ("albums", {"title": " "}, "required field missing: title"),
        ("albums", {"title": "N/A"}, "required field missing: title"),
        ("bands", {"name": None}, "required field missing: name"),
        ("albums", {"band": "seven"}, "invalid integer: band='seven' (expected integer)"),
        ("reviews", {"score": "abc"}, "invalid score: score='abc' (expected number in 0..100)"),
        ("reviews", {"score": "-1"}, "invalid score: score='-1' (expected number in 0..100)"),
        ("reviews", {"score": "100.5"}, "invalid score: score='100.5' (expected number in 0..100)"),
        ("reviews", {"score": "nan"}, "invalid score: score='nan' (expected number in 0..100)"),
        ("reviews", {"score": "inf"}, "invalid score: score='inf' (expected number in 0..100)"),
        ("albums", {"year": "1959"}, "invalid year: year='1959' (expected year in 1960..2027)"),
        ("albums", {"year": "2028"}, "invalid year: year='2028' (expected year in 1960..2027)"),
        ("albums", {"year": "199x"}, "invalid year: year='199x' (expected year in 1960..2027)"),
        (
            "bands",
            {"formed_in": "83"},
            "invalid year: formed_in='83' (expected year in 1960..2027)",
        ),
    ],
)
def test_each_rejection_reason(dataset, row, reason):
    frame = bronze(dataset, f"{dataset}.csv", "i1", [{"id": "1", **row}])
    result = build(dataset, ("i1", frame))
    assert result.table.collect().height == 0
    quarantine = result.quarantine.collect()
    assert quarantine["_reject_reason"].to_list() == [reason]
    # Quarantine keeps the bronze row as it came.
    assert_frame_equal(quarantine.drop("_reject_reason"), frame.collect())


@pytest.mark.parametrize(
    ("dataset", "row"),
    [
        ("reviews", {"score": "0"}),
        ("reviews", {"score": "100"}),
        ("reviews", {"title": "N/A", "content": ""}),
        ("albums", {"year": "1960"}),
        ("albums", {"year": "2027"}),
        ("albums", {"year": "N/A"}),
        ("bands", {"formed_in": "", "country": "", "genre": "", "active": ""}),
    ],
)
def test_boundary_and_optional_values_are_accepted(dataset, row):
    result = build(dataset, ("i1", bronze(dataset, f"{dataset}.csv", "i1", [{"id": "1", **row}])))
    assert ids(result) == [1]
    assert result.quarantine.collect().height == 0


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"id": "x", "_parse_error": "bad row"}, "parse error: bad row"),
        ({"id": "x", "album": "", "score": "500"}, "invalid id: id='x' (expected integer)"),
        ({"album": "", "score": "500"}, "required field missing: album"),
        ({"album": "y", "score": "500"}, "invalid integer: album='y' (expected integer)"),
        ({"score": "500"}, "invalid score: score='500' (expected number in 0..100)"),
    ],
)
def test_a_row_gets_the_first_failing_reason(row, reason):
    result = build("reviews", ("i1", bronze("reviews", "reviews.csv", "i1", [{"id": "1", **row}])))
    assert result.quarantine.collect()["_reject_reason"].to_list() == [reason]


# --- upsert by id and the unit of replacement ---------------------------------------------------


def test_latest_ingest_wins_across_files_and_later_row_within_an_ingest():
    base = bronze(
        "reviews",
        "reviews.csv",
        "i1",
        [{"id": "1", "score": "10"}, {"id": "2", "score": "20"}, {"id": "2", "score": "21"}],
    )
    increment = bronze(
        "reviews",
        "reviews_2026-11.csv",
        "i2",
        [{"id": "1", "score": "11"}, {"id": "3", "score": "30"}],
    )
    result = build("reviews", ("i1", base), ("i2", increment))
    table = result.table.collect().sort("id")
    assert table.select("id", "score", "_source_file", "_source_row").rows() == [
        (1, 11.0, "reviews_2026-11.csv", 1),
        (2, 21.0, "reviews.csv", 3),
        (3, 30.0, "reviews_2026-11.csv", 2),
    ]
    quarantine = result.quarantine.collect()
    assert quarantine.select("id", "score", "_source_row", "_reject_reason").rows() == [
        ("1", "10", 1, "duplicate id: superseded by reviews_2026-11.csv row 1 (ingest i2)"),
        ("2", "20", 2, "duplicate id: superseded by reviews.csv row 3 (ingest i1)"),
    ]


def test_ingest_order_not_dict_order_decides_the_winner():
    old = bronze("reviews", "reviews_a.csv", "zz-old", [{"id": "1", "score": "10"}])
    new = bronze("reviews", "reviews_b.csv", "aa-new", [{"id": "1", "score": "99"}])
    result = merge.build_silver(
        "reviews",
        {"aa-new": new, "zz-old": old},
        ["zz-old", "aa-new"],
        current_year=YEAR,
        source_files={"aa-new": "reviews_b.csv", "zz-old": "reviews_a.csv"},
    )
    assert result.table.collect()["score"].to_list() == [99.0]


def test_an_invalid_newer_copy_does_not_displace_a_valid_older_one():
    result = build(
        "reviews",
        ("i1", bronze("reviews", "reviews.csv", "i1", [{"id": "1", "score": "10"}])),
        ("i2", bronze("reviews", "reviews_x.csv", "i2", [{"id": "1", "score": "bad"}])),
    )
    assert result.table.collect()["score"].to_list() == [10.0]
    assert reasons(result) == {"1": "invalid score: score='bad' (expected number in 0..100)"}


def test_a_newer_ingest_of_the_same_file_replaces_the_older_one():
    old = bronze("bands", "bands.csv", "i1", [{"id": "1"}, {"id": "2"}, {"id": "x"}])
    other = bronze("bands", "bands_extra.csv", "i2", [{"id": "5"}])
    new = bronze("bands", "bands.csv", "i3", [{"id": "2", "name": "New"}, {"id": "3"}])
    result = build("bands", ("i1", old), ("i2", other), ("i3", new))
    table = result.table.collect().sort("id")
    assert table.select("id", "_ingest_id").rows() == [(2, "i3"), (3, "i3"), (5, "i2")]
    assert table.filter(pl.col("id") == 2)["name"].to_list() == ["New"]
    # Superseded rows are neither silver nor quarantine: the invalid row of i1 is gone too.
    assert result.quarantine.collect().height == 0


def test_source_files_skip_superseded_ingests_unread_and_let_an_empty_version_win():
    never_read = pl.scan_parquet("/nonexistent/bronze/bands/i1.parquet")
    empty = bronze("bands", "bands.csv", "i2", [])
    other = bronze("bands", "bands_b.csv", "i3", [{"id": "7"}])
    result = build(
        "bands",
        ("i1", never_read),
        ("i2", empty),
        ("i3", other),
        source_files={"i1": "bands.csv", "i2": "bands.csv", "i3": "bands_b.csv"},
    )
    assert ids(result) == [7]
    # A newer bands.csv whose ingest failed (no bronze) replaces nothing: the last good one counts.
    good = bronze("bands", "bands.csv", "i1", [{"id": "5"}])
    result = merge.build_silver(
        "bands",
        {"i1": good, "i3": other},
        ["i1", "i2", "i3"],
        current_year=YEAR,
        source_files={"i1": "bands.csv", "i2": "bands.csv", "i3": "bands_b.csv"},
    )
    assert ids(result) == [5, 7]


def test_ingest_order_must_place_every_ingest_once():
    frame = bronze("bands", "bands.csv", "i1", [{"id": "1"}])
    with pytest.raises(ValueError, match="missing from ingest_order"):
        merge.build_silver(
            "bands", {"i1": frame}, ["i0"], current_year=YEAR, source_files={"i1": "bands.csv"}
        )
    with pytest.raises(ValueError, match="twice"):
        merge.build_silver("bands", {"i1": frame}, ["i1", "i1"], current_year=YEAR, source_files={})


def test_extra_and_missing_columns_across_ingests():
    with_extra = bronze("albums", "albums.csv", "i1", [{"id": "1", "year": "3000"}], label=["x"])
    # A frame that holds only unsplittable rows may lack the source columns altogether.
    only_errors = pl.LazyFrame(
        {
            "_source_file": ["albums_b.csv"],
            "_source_row": [1],
            "_ingest_id": ["i2"],
            "_parse_error": ["too many fields"],
            "_raw": ["1,2,3,4,5"],
        },
        schema_overrides={"_source_row": pl.Int64},
    )
    result = build("albums", ("i1", with_extra), ("i2", only_errors))
    assert result.table.collect_schema().names() == [
        "id",
        "band",
        "title",
        "year",
        *PROVENANCE_COLUMNS,
    ]
    quarantine = result.quarantine.collect()
    # Every part of the quarantine folder has one schema: a file's extra columns stay in bronze.
    assert quarantine.columns == [*silver.bronze_schema("albums"), "_reject_reason"]
    assert quarantine.select("_raw", "_reject_reason").rows() == [
        (None, "invalid year: year='3000' (expected year in 1960..2027)"),
        ("1,2,3,4,5", "parse error: too many fields"),
    ]


def test_no_ingests_give_empty_typed_frames():
    result = merge.build_silver("reviews", {}, [], current_year=YEAR, source_files={})
    table, quarantine = result.table.collect(), result.quarantine.collect()
    assert table.height == quarantine.height == 0
    assert table.schema["score"] == pl.Float64
    assert quarantine.columns == [*silver.bronze_schema("reviews"), "_reject_reason"]


def test_invariant_input_rows_equal_silver_plus_quarantine():
    ingests = {
        "i1": bronze(
            "reviews", "reviews.csv", "i1", [{"id": str(i), "score": "50"} for i in range(1, 6)]
        ),
        "i2": bronze(
            "reviews",
            "reviews_2026-11.csv",
            "i2",
            [
                {"id": "1", "score": "60"},
                {"id": "2", "score": "999"},
                {"id": ""},
                {"_parse_error": "bad quoting", "_raw": "?"},
                {"id": "6", "album": "N/A"},
                {"id": "7"},
                {"id": "7"},
            ],
        ),
        "i3": bronze(
            "reviews",
            "reviews.csv",
            "i3",
            [{"id": str(i), "score": "70"} for i in range(3, 9)] + [{"id": "3"}],
        ),
    }
    order = ["i1", "i2", "i3"]
    result = merge.build_silver(
        "reviews", ingests, order, current_year=YEAR, source_files=source_files_of(ingests)
    )
    table, quarantine = result.table.collect().sort("id"), result.quarantine.collect()
    input_rows = sum(ingests[i].collect().height for i in ("i2", "i3"))
    assert input_rows == 7 + 7
    assert table.height + quarantine.height == input_rows
    assert table["id"].is_unique().all()
    # reviews.csv of i1 is superseded by i3; id 7 appears twice in i2 and once in i3.
    assert table.select("id", "_ingest_id").rows() == [
        (1, "i2"),
        (3, "i3"),
        (4, "i3"),
        (5, "i3"),
        (6, "i3"),
        (7, "i3"),
        (8, "i3"),
    ]
    assert reasons(result) == {
        "2": "invalid score: score='999' (expected number in 0..100)",
        "reviews_2026-11.csv:3": "invalid id: missing",
        "reviews_2026-11.csv:4": "parse error: bad quoting",
        "6": "required field missing: album",
        "7": "duplicate id: superseded by reviews.csv row 5 (ingest i3)",
        "3": "duplicate id: superseded by reviews.csv row 7 (ingest i3)",
    }
    assert quarantine.filter(pl.col("id") == "7")["_source_row"].to_list() == [6, 7]


# --- silver joins -------------------------------------------------------------------------------


def silver_bands(rows: list[dict[str, Any]]) -> pl.LazyFrame:
    defaults = {
        "country": None,
        "status": "Active",
        "formed_in": 1990,
        "genre": ["Death Metal"],
        "theme": None,
        "active": "1990-present",
        "active_start_year": 1990,
        "active_end_year": None,
        "active_periods": 1,
        "is_active": True,
        "_source_file": "bands.csv",
        "_source_row": 1,
        "_ingest_id": "i1",
    }
    schema = {
        "id": pl.Int64,
        "name": pl.String,
        "country": pl.String,
        "status": pl.String,
        "formed_in": pl.Int64,
        "genre": pl.List(pl.String),
        "theme": pl.List(pl.String),
        "active": pl.String,
        "active_start_year": pl.Int64,
        "active_end_year": pl.Int64,
        "active_periods": pl.Int64,
        "is_active": pl.Boolean,
        **PROVENANCE_SCHEMA,
    }
    return pl.LazyFrame([{**defaults, **r} for r in rows], schema=schema)


def silver_albums(rows: list[tuple[int, int, str, int | None]]) -> pl.LazyFrame:
    return pl.LazyFrame(
        [(*r, "albums.csv", 1, "i1") for r in rows],
        schema={
            "id": pl.Int64,
            "band": pl.Int64,
            "title": pl.String,
            "year": pl.Int64,
            **PROVENANCE_SCHEMA,
        },
        orient="row",
    )


def silver_reviews(rows: list[tuple[int, int, float]]) -> pl.LazyFrame:
    return pl.LazyFrame(
        [(i, a, f"r{i}", s, "text", "reviews.csv", 1, "i1") for i, a, s in rows],
        schema={
            "id": pl.Int64,
            "album": pl.Int64,
            "title": pl.String,
            "score": pl.Float64,
            "content": pl.String,
            **PROVENANCE_SCHEMA,
        },
        orient="row",
    )


BANDS = silver_bands(
    [
        {"id": 1, "name": "Death", "country": "United States", "genre": ["Death Metal"]},
        {
            "id": 2,
            "name": "Sepultura",
            "country": "Brazil",
            "genre": ["Death Metal", "Thrash Metal"],
        },
        {"id": 3, "name": "Krisiun", "country": "Brazil", "genre": None, "status": "Split-up"},
        {"id": 4, "name": "Unreleased", "country": "Sweden", "status": "Defunct-ish"},
    ]
)
ALBUMS = silver_albums(
    [
        (10, 1, "Leprosy", 1988),
        (11, 1, "Human", 1991),
        (20, 2, "Beneath the Remains", 1989),
        (30, 3, "Black Force Domain", None),
        (40, 99, "Orphan Album", 2001),
    ]
)
REVIEWS = silver_reviews(
    [
        (100, 10, 80.0),
        (101, 10, 90.0),
        (102, 11, 100.0),
        (103, 20, 70.0),
        (104, 30, 60.0),
        (105, 40, 50.0),
        (106, 77, 40.0),
    ]
)


def test_music_catalog_keeps_albums_of_unknown_bands():
    out = joins.music_catalog(ALBUMS, BANDS).collect()
    assert out.select(
        "album_id", "album_title", "year", "band_id", "band_name", "country"
    ).rows() == [
        (10, "Leprosy", 1988, 1, "Death", "United States"),
        (11, "Human", 1991, 1, "Death", "United States"),
        (20, "Beneath the Remains", 1989, 2, "Sepultura", "Brazil"),
        (30, "Black Force Domain", None, 3, "Krisiun", "Brazil"),
        (40, "Orphan Album", 2001, 99, None, None),
    ]
    assert out.schema["genre"] == pl.List(pl.String)
    orphan = out.filter(pl.col("band_id") == 99).row(0, named=True)
    band_columns = [
        c for c in out.columns if c not in ("album_id", "album_title", "year", "band_id")
    ]
    assert len(band_columns) == 10
    assert all(orphan[c] is None for c in band_columns)


def test_a_partwise_join_rebuilds_only_what_changed():
    left = {"a": "1", "b": "1"}
    built = {"a": "x", "b": "y"}
    right = joins.table_version({"albums": "1"})
    last = joins.JoinVersions(left=left, right=right, built=built)
    # Nothing changed: nothing to write.
    assert joins.stale_parts(last, left, right, built) == ([], [])
    # A new left part and a rewritten one; a left part gone is deleted.
    assert joins.stale_parts(last, {"b": "2", "c": "1"}, right, built) == (["b", "c"], ["a"])
    # The right table changed: every part.
    other = joins.table_version({"albums": "2"})
    assert joins.stale_parts(last, left, other, built) == (["a", "b"], [])
    # A part that is not the one the last build wrote (a failed run touched it), or is missing.
    assert joins.stale_parts(last, left, right, {"a": "x", "b": "z"}) == (["b"], [])
    assert joins.stale_parts(last, left, right, {"a": "x"}) == (["b"], [])
    # Never built: everything.
    assert joins.stale_parts(None, left, right, {}) == (["a", "b"], [])
    assert joins.table_version({"p": "1", "q": "2"}) == joins.table_version({"q": "2", "p": "1"})


def test_album_reviews_keeps_reviews_of_unknown_albums():
    out = joins.album_reviews(REVIEWS, ALBUMS).collect()
    expected = pl.DataFrame(
        [
            (100, 10, "r100", 80.0, "text", "Leprosy", 1, 1988),
            (101, 10, "r101", 90.0, "text", "Leprosy", 1, 1988),
            (102, 11, "r102", 100.0, "text", "Human", 1, 1991),
            (103, 20, "r103", 70.0, "text", "Beneath the Remains", 2, 1989),
            (104, 30, "r104", 60.0, "text", "Black Force Domain", 3, None),
            (105, 40, "r105", 50.0, "text", "Orphan Album", 99, 2001),
            (106, 77, "r106", 40.0, "text", None, None, None),
        ],
        schema={
            "review_id": pl.Int64,
            "album_id": pl.Int64,
            "review_title": pl.String,
            "score": pl.Float64,
            "content": pl.String,
            "album_title": pl.String,
            "band_id": pl.Int64,
            "year": pl.Int64,
        },
        orient="row",
    )
    assert_frame_equal(out, expected)


# --- gold ---------------------------------------------------------------------------------------


def test_band_avg_scores():
    out = gold.band_avg_scores(joins.album_reviews(REVIEWS, ALBUMS), BANDS).collect()
    expected = pl.DataFrame(
        [
            (1, "Death", "United States", 3, 90.0, 80.0, 100.0, 10.0),
            (2, "Sepultura", "Brazil", 1, 70.0, 70.0, 70.0, None),
            (3, "Krisiun", "Brazil", 1, 60.0, 60.0, 60.0, None),
            (99, None, None, 1, 50.0, 50.0, 50.0, None),
        ],
        schema={
            "band_id": pl.Int64,
            "band_name": pl.String,
            "country": pl.String,
            "review_count": pl.Int64,
            "mean_score": pl.Float64,
            "min_score": pl.Float64,
            "max_score": pl.Float64,
            "std_score": pl.Float64,
        },
        orient="row",
    )
    assert_frame_equal(out, expected)


def test_top10_by_country_caps_at_ten_and_breaks_ties():
    rows = [(i, f"S{i}", "Sweden", 2, float(i)) for i in range(1, 13)]  # 12 Swedish bands
    rows += [
        (20, "A", "Brazil", 3, 80.0),
        (21, "B", "Brazil", 5, 80.0),  # same mean, more reviews -> ahead of 20
        (19, "C", "Brazil", 3, 80.0),  # same mean and count -> lower id first
        (30, "N", None, 9, 99.0),  # no country: not ranked
    ]
    scores = pl.LazyFrame(
        rows,
        schema={
            "band_id": pl.Int64,
            "band_name": pl.String,
            "country": pl.String,
            "review_count": pl.Int64,
            "mean_score": pl.Float64,
        },
        orient="row",
    )
    out = gold.top10_by_country(scores).collect()
    assert out.columns == ["country", "rank", "band_id", "band_name", "mean_score", "review_count"]
    assert out.filter(pl.col("country") == "Brazil").select("rank", "band_id").rows() == [
        (1, 21),
        (2, 19),
        (3, 20),
    ]
    sweden = out.filter(pl.col("country") == "Sweden")
    assert sweden["rank"].to_list() == list(range(1, 11))
    assert sweden["band_id"].to_list() == list(range(12, 2, -1))
    assert out["country"].to_list() == ["Brazil"] * 3 + ["Sweden"] * 10


def test_brazilian_bands():
    out = gold.brazilian_bands(BANDS).collect()
    assert out.select("band_id", "band_name", "status", "genre").rows() == [
        (2, "Sepultura", "Active", ["Death Metal", "Thrash Metal"]),
        (3, "Krisiun", "Split-up", None),
    ]
    assert "country" not in out.columns


def test_band_album_counts():
    out = gold.band_album_counts(ALBUMS, BANDS).collect()
    expected = pl.DataFrame(
        [(1, "Death", 2), (2, "Sepultura", 1), (3, "Krisiun", 1), (4, "Unreleased", 0)],
        schema={"band_id": pl.Int64, "band_name": pl.String, "album_count": pl.Int64},
        orient="row",
    )
    assert_frame_equal(out, expected)


def test_album_rankings_do_not_let_one_perfect_review_top_the_chart():
    reviews = silver_reviews(
        [(1, 10, 100.0)]  # one perfect review
        + [(100 + i, 20, 90.0) for i in range(10)]  # ten reviews of 90
        + [(200, 30, 40.0), (201, 30, 60.0)]
        + [(300, 77, 0.0)]  # orphan album: counts in C, not ranked
    )
    catalog = joins.music_catalog(
        silver_albums([(10, 1, "One Hit", 2001), (20, 2, "Solid", 1995), (30, 3, "Meh", None)]),
        BANDS,
    )
    out = gold.album_rankings(reviews, catalog).collect()
    m, c = gold.DEFAULT_PRIOR_WEIGHT, 1100.0 / 14

    def bayes(v: int, r: float) -> float:
        return (v / (v + m)) * r + (m / (v + m)) * c

    expected = pl.DataFrame(
        [
            (1, 20, "Solid", 2, "Sepultura", 1995, 10, 90.0, bayes(10, 90.0)),
            (2, 10, "One Hit", 1, "Death", 2001, 1, 100.0, bayes(1, 100.0)),
            (3, 30, "Meh", 3, "Krisiun", None, 2, 50.0, bayes(2, 50.0)),
        ],
        schema={
            "rank": pl.Int64,
            "album_id": pl.Int64,
            "album_title": pl.String,
            "band_id": pl.Int64,
            "band_name": pl.String,
            "year": pl.Int64,
            "review_count": pl.Int64,
            "mean_score": pl.Float64,
            "weighted_score": pl.Float64,
        },
        orient="row",
    )
    assert_frame_equal(out, expected)
    # Without the prior the single perfect review would win: the prior is what prevents it.
    plain = gold.album_rankings(reviews, catalog, prior_weight=0).collect()
    assert plain["album_id"].to_list()[0] == 10


def test_genre_by_decade():
    catalog = joins.music_catalog(
        silver_albums(
            [
                (10, 2, "A", 1989),
                (11, 2, "B", 1991),
                (12, 1, "C", 1988),
                (13, 3, "D", 1990),  # band without genre: not counted
                (14, 1, "E", None),  # no year: not counted
                (15, 99, "F", 1990),  # unknown band: no genre
            ]
        ),
        BANDS,
    )
    out = gold.genre_by_decade(catalog).collect()
    expected = pl.DataFrame(
        [
            ("Death Metal", 1980, 2),
            ("Death Metal", 1990, 1),
            ("Thrash Metal", 1980, 1),
            ("Thrash Metal", 1990, 1),
        ],
        schema={"genre": pl.String, "decade": pl.Int64, "album_count": pl.Int64},
        orient="row",
    )
    assert_frame_equal(out, expected)


# --- the whole chain ----------------------------------------------------------------------------


def chain() -> dict[str, pl.LazyFrame]:
    """Silver and gold from bronze, as the assets will compose them."""
    base = {
        "albums": build(
            "albums",
            ("a1", bronze("albums", "albums.csv", "a1", [{"id": "3", "band": "7"}])),
        ).table,
        "bands": build(
            "bands",
            ("b1", bronze("bands", "bands.csv", "b1", [{"id": "7", "genre": "Death Metal"}])),
        ).table,
        "reviews": build(
            "reviews",
            ("r1", bronze("reviews", "reviews.csv", "r1", [{"id": "1"}, {"id": "2"}])),
        ).table,
    }
    joined = {
        "music_catalog": joins.music_catalog(base["albums"], base["bands"]),
        "album_reviews": joins.album_reviews(base["reviews"], base["albums"]),
    }
    scores = gold.band_avg_scores(joined["album_reviews"], base["bands"])
    return {
        **base,
        **joined,
        "band_avg_scores": scores,
        "top10_by_country": gold.top10_by_country(scores),
        "brazilian_bands": gold.brazilian_bands(base["bands"]),
        "band_album_counts": gold.band_album_counts(base["albums"], base["bands"]),
        "album_rankings": gold.album_rankings(base["reviews"], joined["music_catalog"]),
        "genre_by_decade": gold.genre_by_decade(joined["music_catalog"]),
    }


def test_transforms_build_plans_without_collecting(monkeypatch):
    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a transform collected")

    monkeypatch.setattr(pl.LazyFrame, "collect", forbidden)
    tables = chain()
    assert all(isinstance(t, pl.LazyFrame) for t in tables.values())


def test_whole_chain_runs_and_lineage_names_every_output_column():
    tables = chain()
    results = dict(zip(tables, pl.collect_all(list(tables.values())), strict=True))
    assert results["album_rankings"].rows() == [
        (1, 3, "Scream Bloody Gore", 7, "Death", 1987, 2, 90.0, 90.0)
    ]
    assert results["genre_by_decade"].rows() == [("Death Metal", 1980, 1)]
    assert set(COLUMN_LINEAGE) == set(tables) - set(RULES)
    for table, lineage in COLUMN_LINEAGE.items():
        assert list(lineage) == results[table].columns, table
        for deps in lineage.values():
            for source, column in deps:
                assert column in results[source].columns, (table, source, column)
