"""The generator's promises: deterministic, contract-shaped CSVs with the source's quirks, and
increment files whose effect on silver is known."""

from __future__ import annotations

import csv
import shlex
import statistics
from pathlib import Path

import polars as pl
import pytest

from deathmetal_lake.datasets import DATASETS_BY_NAME
from deathmetal_lake_tools import generate as gen
from deathmetal_lake_tools.generate import sources

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "csv"
NAMES = ("albums", "bands", "reviews")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _bytes(directory: Path) -> dict[str, bytes]:
    return {name: (directory / f"{name}.csv").read_bytes() for name in NAMES}


@pytest.fixture(scope="module")
def moderate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """Scale 0.1: a few thousand rows per file, enough for every quirk and for score statistics."""
    out = tmp_path_factory.mktemp("moderate")
    return out, gen.generate(out, 0.1, 7)


@pytest.fixture(scope="module")
def parsed(moderate: tuple[Path, dict[str, int]]) -> dict[str, list[dict[str, str]]]:
    return {name: _rows(moderate[0] / f"{name}.csv") for name in NAMES}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    first, again, other = (tmp_path / d for d in ("first", "again", "other"))
    assert gen.generate(first, 0.01, 1) == gen.generate(again, 0.01, 1)
    assert _bytes(first) == _bytes(again)
    gen.generate(other, 0.01, 2)
    assert all(_bytes(first)[name] != _bytes(other)[name] for name in NAMES)
    assert not list(tmp_path.glob("*/*.partial"))


def test_header_is_the_contract_and_both_parsers_agree(
    moderate: tuple[Path, dict[str, int]],
) -> None:
    out, written = moderate
    for name in NAMES:
        columns = DATASETS_BY_NAME[name].columns
        path = out / f"{name}.csv"
        assert path.read_bytes().split(b"\n", 1)[0].decode() == ",".join(columns)
        with path.open(encoding="utf-8", newline="") as f:
            header, *records = csv.reader(f)
        assert tuple(header) == columns
        assert all(len(record) == len(columns) for record in records)
        assert len(records) == written[name]
        frame = pl.read_csv(path, infer_schema=False)
        assert tuple(frame.columns) == columns
        assert frame.height == written[name]
        assert set(frame.schema.values()) == {pl.String}
        assert frame.fill_null("").rows() == [tuple(r) for r in records]


def test_row_counts_scale_linearly(tmp_path: Path) -> None:
    small = gen.generate(tmp_path / "small", 0.01, 3)
    double = gen.generate(tmp_path / "double", 0.02, 3)
    for name, base in gen.BASE_ROWS.items():
        assert small[name] == pytest.approx(base * 0.01, rel=0.01)
        assert double[name] == pytest.approx(2 * small[name], rel=0.01)


def test_a_tenth_of_the_real_dataset_at_scale_0_1(moderate: tuple[Path, dict[str, int]]) -> None:
    """Scale 1 is the real dataset: about 37,000 bands, 45,000 albums, 22,000 reviews, 15 MB."""
    out, written = moderate
    expected = {"bands": 3_700, "albums": 4_500, "reviews": 2_200}
    assert written == pytest.approx(expected, rel=0.01)
    assert sum(len(b) for b in _bytes(out).values()) == pytest.approx(1_500_000, rel=0.1)


def test_source_quirks(moderate: tuple[Path, dict[str, int]], parsed: dict) -> None:
    content = [r["content"] for r in parsed["reviews"]]
    assert any("\r\n" in c for c in content) and any("\n" in c.replace("\r\n", "") for c in content)
    assert any("," in c and '"' in c for c in content)
    assert any("," in r["title"] for r in parsed["reviews"])
    assert any('"' in r["title"] for r in parsed["reviews"])
    assert any("| " in r["title"] for r in parsed["albums"])
    assert any("| " in b["name"] for b in parsed["bands"])
    assert any("|" in b["genre"] for b in parsed["bands"])
    assert any(b["theme"].count("|") >= 2 for b in parsed["bands"])
    for column in ("country", "formed_in", "theme", "active"):
        assert any(b[column] == "N/A" for b in parsed["bands"]), column
    active = [b["active"] for b in parsed["bands"]]
    assert any(a.endswith("-present") for a in active)
    assert any("|" in a and a.endswith("-present") for a in active)
    assert any(a.startswith("?-") for a in active) and any(a.endswith("-?") for a in active)
    assert {b["status"] for b in parsed["bands"]} == set(sources._STATUSES)
    assert any(not b["name"].isascii() for b in parsed["bands"])
    raw = (moderate[0] / "reviews.csv").read_bytes()
    assert raw.count(b"\n") > len(content) + 1  # newlines inside quoted fields


def test_deliberate_duplicates_orphans_and_rule_breakers(parsed: dict) -> None:
    for name, rows in parsed.items():
        ids = [int(r["id"]) for r in rows]
        assert ids == sorted(ids)
        copies = len(ids) - len(set(ids))
        assert 1 <= copies <= max(1, round(len(set(ids)) * gen.DUPLICATE_RATE)), name
        for i in range(1, len(rows)):
            if ids[i] == ids[i - 1]:
                assert rows[i] == rows[i - 1]
    band_ids = {r["id"] for r in parsed["bands"]}
    album_ids = {r["id"] for r in parsed["albums"]}
    for child, key, parents in (("albums", "band", band_ids), ("reviews", "album", album_ids)):
        orphans = [r for r in parsed[child] if r[key] not in parents]
        assert 1 <= len(orphans) <= 0.005 * len(parsed[child]), child

    broken = {
        "bands": [b for b in parsed["bands"] if b["name"] == "" or b["formed_in"] == "1850"],
        "albums": [
            a for a in parsed["albums"] if a["title"] == "" or a["year"] in ("1850", "unknown")
        ],
        "reviews": [
            r for r in parsed["reviews"] if not r["score"] or not 0 <= int(r["score"]) <= 100
        ],
    }
    for name, rows in broken.items():
        assert 1 <= len(rows) <= 2 * max(1, round(len(parsed[name]) * gen.INVALID_RATE)), name


def test_score_and_year_distributions(parsed: dict) -> None:
    scores = [int(r["score"]) for r in parsed["reviews"] if r["score"]]
    scores = [s for s in scores if 0 <= s <= 100]
    assert 76 <= statistics.mean(scores) <= 80
    assert 79 <= statistics.median(scores) <= 83
    assert 0 in scores and 100 in scores
    round_share = sum(s % 5 == 0 for s in scores) / len(scores)
    assert round_share > 0.33  # about twice the 20% of evenly spread scores: reviewers round
    for rows, column in ((parsed["albums"], "year"), (parsed["bands"], "formed_in")):
        years = [int(r[column]) for r in rows if r[column].isdigit()]
        assert sum(1970 <= y <= 2024 for y in years) / len(years) > 0.99


def test_committed_sample_is_what_the_documented_command_writes(tmp_path: Path) -> None:
    command = next(
        line
        for line in gen.__doc__.splitlines()
        if "-m deathmetal_lake_tools.generate --scale" in line
    )
    args = shlex.split(command)[3:]
    out = args.index("--out")
    gen.main([*args[:out], *args[out + 2 :], "--out", str(tmp_path)])
    assert _bytes(tmp_path) == _bytes(SAMPLE_DIR)
    assert sum(len(b) for b in _bytes(SAMPLE_DIR).values()) < 2_000_000


@pytest.fixture()
def small(tmp_path: Path) -> Path:
    out = tmp_path / "small"
    gen.generate(out, 0.05, 11)
    return out


def test_increments_are_deterministic(tmp_path: Path) -> None:
    made = []
    for name in ("one", "two"):
        out = tmp_path / name
        gen.generate(out, 0.05, 5)
        gen.append_reviews(out, "a", 5)
        gen.update_reviews(out, "u", 5)
        gen.replace_file(out, "bands", 5)
        made.append({p.name: p.read_bytes() for p in sorted(out.glob("*.csv"))})
    assert made[0] == made[1]
    assert sorted(made[0]) == [
        "albums.csv",
        "bands.csv",
        "reviews.csv",
        "reviews_a.csv",
        "reviews_u.csv",
    ]


def test_append_adds_new_review_ids_about_existing_albums(small: Path) -> None:
    made = gen.append_reviews(small, "2026-12", 1)
    assert made.path == small / "reviews_2026-12.csv"
    assert (made.rows, made.new_ids, made.changed_ids, made.removed_ids) == (1000, 1000, 0, 0)
    rows = _rows(made.path)
    assert made.path.read_bytes().split(b"\n", 1)[0].decode() == ",".join(
        DATASETS_BY_NAME["reviews"].columns
    )
    old_ids = {int(r["id"]) for r in _rows(small / "reviews.csv")}
    new_ids = [int(r["id"]) for r in rows]
    assert len(set(new_ids)) == 1000 and min(new_ids) > max(old_ids)
    albums = {r["id"] for r in _rows(small / "albums.csv")}
    assert all(r["album"] in albums for r in rows)
    assert all(0 <= int(r["score"]) <= 100 and r["content"] and r["title"] for r in rows)
    assert not list(small.glob("*.partial"))


def test_update_gives_existing_reviews_a_new_score_on_the_same_album(small: Path) -> None:
    old = {}
    for r in _rows(small / "reviews.csv"):
        old.setdefault(r["id"], []).append(r)
    made = gen.update_reviews(small, "fix", 2)
    assert (made.rows, made.new_ids, made.changed_ids, made.removed_ids) == (1000, 0, 1000, 0)
    rows = _rows(made.path)
    assert len({r["id"] for r in rows}) == 1000
    for row in rows:
        (before,) = old[row["id"]]  # an id the base file holds once
        assert row["album"] == before["album"]
        assert row["score"] != before["score"] and 0 <= int(row["score"]) <= 100
        assert 0 <= int(before["score"]) <= 100  # its old version was valid too


def test_replace_changes_some_rows_and_drops_others(small: Path) -> None:
    before = _rows(small / "bands.csv")
    made = gen.replace_file(small, "bands", 3)
    after = _rows(small / "bands.csv")
    assert made.path == small / "bands.csv"
    assert made.changed_ids >= 1 and made.removed_ids >= 1
    assert len(after) == made.rows == len(before) - made.removed_ids
    kept = {r["id"]: r for r in after}
    gone = [r for r in before if r["id"] not in kept]
    assert len(gone) == made.removed_ids
    changed = [r for r in before if r["id"] in kept and kept[r["id"]] != r]
    assert len(changed) == made.changed_ids
    assert all(kept[r["id"]] == {**r, "country": kept[r["id"]]["country"]} for r in changed)
    assert [r["id"] for r in after] == [r["id"] for r in before if r["id"] in kept]


def test_increment_command_is_the_documented_one(small: Path) -> None:
    command = next(line for line in gen.__doc__.splitlines() if "--increment append" in line)
    args = shlex.split(command)[3:]
    out = args.index("--out")
    assert gen.main([*args[:out], *args[out + 2 :], "--out", str(small)]) == 0
    tag = args[args.index("--tag") + 1]
    assert len(_rows(small / f"reviews_{tag}.csv")) == 1000
