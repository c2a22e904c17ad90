"""Increment files for a lake built from generated sources: new reviews, updated reviews, and a
new version of a whole file.

Each is drawn from the seed, the tag and the files already in the folder, so the same folder,
seed and tag give the same bytes. Their rows break no rule and repeat no id, so what silver shows
once they are ingested is known in advance (`IncrementFile`): an append adds `rows` ids, an update
gives `rows` existing ids a new version and adds none, a replacement changes some rows of a file
and drops others.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from deathmetal_lake.datasets import DATASETS_BY_NAME
from deathmetal_lake_tools.generate.sources import (
    _BREAKS,
    _COUNTRY,
    _INVALID,
    _LENGTHS,
    _RELEASED,
    _SCORES,
    _content,
    _pool,
    _review_title,
    _sentence,
)

INCREMENT_ROWS = 1_000
# Shares of a replaced file's clean rows that the new version changes and drops.
REPLACE_CHANGED_SHARE = 0.01
REPLACE_REMOVED_SHARE = 0.005


@dataclass(frozen=True)
class IncrementFile:
    """An increment written, and what it should do to its silver table once ingested."""

    path: Path
    rows: int
    new_ids: int
    changed_ids: int
    removed_ids: int


# The column a replacement changes per dataset, and how a new value is drawn.
_CHANGES: dict[str, tuple[str, Callable[[random.Random], str]]] = {
    "bands": ("country", lambda rng: _COUNTRY.draw(rng, 1)[0]),
    "albums": ("year", lambda rng: _RELEASED.draw(rng, 1)[0]),
    "reviews": ("score", lambda rng: str(_SCORES.draw(rng, 1)[0])),
}


def _read(path: Path, columns: Iterable[str]) -> pl.DataFrame:
    """Columns of a source CSV as text, an empty field as "" (as the lake reads it)."""
    return pl.read_csv(path, columns=list(columns), infer_schema=False).fill_null("")


def _clean(path: Path, name: str, columns: Iterable[str] = ("id",)) -> pl.DataFrame:
    """Rows that break none of the generator's planted rules and whose id appears once: their
    fate in silver is known. Sorted by id so draws from them are deterministic."""
    wanted = {"id", *columns, *(column for column, _ in _INVALID[name])}
    frame = _read(path, [c for c in DATASETS_BY_NAME[name].columns if c in wanted])
    broken = pl.any_horizontal(pl.col(column) == str(value) for column, value in _INVALID[name])
    return (
        frame.filter(pl.col("id").is_unique() & ~broken)
        .with_columns(pl.col("id").cast(pl.Int64))
        .sort("id")
        .select(list(dict.fromkeys(["id", *columns])))
    )


def _write(path: Path, name: str, rows: Iterable[list[str | int]]) -> int:
    """Write a source file under a `.partial` name, renamed when complete; returns its rows."""
    partial = path.with_name(f"{path.name}.partial")
    count = 0
    with partial.open("w", encoding="utf-8", newline="", buffering=1 << 20) as f:
        writer = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(DATASETS_BY_NAME[name].columns)
        for row in rows:
            writer.writerow(row)
            count += 1
    os.replace(partial, path)
    return count


def _review_text(rng: random.Random, titles: list[str], sentences: list[str]) -> tuple[str, str]:
    """A new title and content, drawn as the full file draws them."""
    length = _LENGTHS.draw(rng, 1)[0]
    content = _content(rng.choices(sentences, k=length), _BREAKS.draw(rng, 1)[0])
    return rng.choice(titles), content


def append_reviews(csv_dir: Path, tag: str, seed: int, rows: int = INCREMENT_ROWS) -> IncrementFile:
    """`reviews_<tag>.csv` with `rows` new review ids (above every id in the folder's review
    files), each about an existing album that silver keeps."""
    rng = random.Random(f"{seed}/append/{tag}")
    review_files = sorted(p for p in csv_dir.glob("*.csv") if _is_file_of("reviews", p))
    top = max(_read(p, ["id"]).get_column("id").cast(pl.Int64).max() or 0 for p in review_files)
    albums = _clean(csv_dir / "albums.csv", "albums").get_column("id").to_list()
    titles, sentences = _pool(rng, _review_title), _pool(rng, _sentence)

    def generated() -> Iterable[list[str | int]]:
        for review in range(top + 1, top + 1 + rows):
            title, content = _review_text(rng, titles, sentences)
            yield [review, rng.choice(albums), title, _SCORES.draw(rng, 1)[0], content]

    path = csv_dir / f"reviews_{tag}.csv"
    written = _write(path, "reviews", generated())
    return IncrementFile(path, written, new_ids=written, changed_ids=0, removed_ids=0)


def update_reviews(csv_dir: Path, tag: str, seed: int, rows: int = INCREMENT_ROWS) -> IncrementFile:
    """`reviews_<tag>.csv` whose `rows` rows reuse ids of `reviews.csv` (on the same album) with a
    new score, title and content; ids another review file already holds are left alone."""
    rng = random.Random(f"{seed}/update/{tag}")
    base = csv_dir / "reviews.csv"
    others = [
        _read(p, ["id"]).get_column("id").cast(pl.Int64)
        for p in sorted(csv_dir.glob("*.csv"))
        if _is_file_of("reviews", p) and p.name != base.name and p.name != f"reviews_{tag}.csv"
    ]
    candidates = _clean(base, "reviews", ("album", "score"))
    if others:
        candidates = candidates.filter(~pl.col("id").is_in(pl.concat(others).implode()))
    if candidates.height < rows:
        raise ValueError(f"{base} has {candidates.height} clean reviews, fewer than {rows}")
    picked = sorted(rng.sample(candidates.rows(), rows))
    titles, sentences = _pool(rng, _review_title), _pool(rng, _sentence)

    def generated() -> Iterable[list[str | int]]:
        for review, album, score in picked:
            title, content = _review_text(rng, titles, sentences)
            yield [review, album, title, _different(rng, score, _CHANGES["reviews"][1]), content]

    path = csv_dir / f"reviews_{tag}.csv"
    written = _write(path, "reviews", generated())
    return IncrementFile(path, written, new_ids=0, changed_ids=written, removed_ids=0)


def replace_file(csv_dir: Path, name: str, seed: int) -> IncrementFile:
    """A new version of `<name>.csv`: a share of its clean rows get a new value in one column, a
    share disappear; every other row stays as it was, in its place."""
    rng = random.Random(f"{seed}/replace/{name}")
    path = csv_dir / f"{name}.csv"
    clean = _clean(path, name).get_column("id").to_list()
    changed_count = max(1, round(len(clean) * REPLACE_CHANGED_SHARE))
    removed_count = max(1, round(len(clean) * REPLACE_REMOVED_SHARE))
    if changed_count + removed_count > len(clean):
        raise ValueError(f"{path} has too few clean rows ({len(clean)}) to replace")
    drawn = rng.sample(clean, changed_count + removed_count)
    changed, removed = (
        {str(i) for i in drawn[:changed_count]},
        {str(i) for i in drawn[changed_count:]},
    )
    column, draw = _CHANGES[name]
    index = DATASETS_BY_NAME[name].columns.index(column)

    def kept() -> Iterable[list[str | int]]:
        with path.open(encoding="utf-8", newline="") as source:
            records = csv.reader(source)
            next(records)
            for record in records:
                if record[0] in removed:
                    continue
                if record[0] in changed:
                    record[index] = _different(rng, record[index], draw)
                yield record

    # The old version is read to the end before the new one is renamed over it.
    written = _write(path, name, kept())
    return IncrementFile(
        path, written, new_ids=0, changed_ids=changed_count, removed_ids=removed_count
    )


def _different(rng: random.Random, old: str | int, draw: Callable[[random.Random], str]) -> str:
    """A freshly drawn value that differs from `old`."""
    while True:
        value = draw(rng)
        if str(value) != str(old):
            return value


def _is_file_of(name: str, path: Path) -> bool:
    return DATASETS_BY_NAME[name].matches_file(path.name)
