"""Deterministic generator of source CSVs shaped like the Kaggle "Death Metal" dataset.

The real dataset (scraped from Metal-Archives) cannot be redistributed, and the lake needs inputs of
any size for tests and benchmarks, so this writes `albums.csv`, `bands.csv` and `reviews.csv` with
the contract's columns and the source's shape and quirks:

- `|` where the source had commas inside names and album titles (`Blood| Guts and Bones`); genre
  and theme are `|`-separated lists (`Death Metal|Grindcore`, `Gore|Death|Horror`);
- `N/A` for unknown countries, formed_in, themes and active periods; active periods such as
  `1989-1993|2004-present`, `?-1995`, `1988-?` and `1987-1989 (as Name)|1989-present`;
- Metal-Archives country names (`United States`, `United Kingdom`) weighted as in death metal, and
  UTF-8 names (Scandinavian, Portuguese, French, Polish, Cyrillic, Japanese);
- review titles and content with commas and double quotes, content with embedded LF or CRLF, quoted
  per RFC 4180 by the csv module (QUOTE_MINIMAL); records end with LF;
- scores are integers 0-100, mean about 78 and median about 81, with peaks at multiples of 5 and 10.

Deliberate oddities give the silver layer's quarantine something to do. Per file, and at least one
of each kind, at fixed rates: exact duplicate source rows (same id twice, adjacent) at
`DUPLICATE_RATE`; orphan foreign keys (`albums.band` not in `bands.id`, `reviews.album` not in
`albums.id`, always above the referenced table's largest id) at `ORPHAN_RATE`; rule-breaking rows
at `INVALID_RATE` (see `sources._INVALID`: a score of 105, -3 or none, a year of 1850 or
`unknown`, an empty album title or band name). Ids are 1..n in file order.

At scale 1 the sizes are about those of the real dataset (`BASE_ROWS`, about 15 MB); sizes scale
linearly. The same seed and scale give byte-identical files (for a given CPython `random`). Rows are
written in chunks, so memory stays bounded at any scale, and each file is written under a
`.partial` name and renamed when complete so a watching sensor never sees half a file.

The committed sample in `csv/` was produced by:

    python -m deathmetal_lake_tools.generate --scale 0.1 --seed 42 --out csv/

Increments for a lake built from such files (`increments`): a file of new reviews, a file that
updates existing reviews, and a new version of a whole file:

    python -m deathmetal_lake_tools.generate --increment append --tag 2026-12 --out csv/
"""

from deathmetal_lake_tools.generate.cli import main
from deathmetal_lake_tools.generate.increments import (
    IncrementFile,
    append_reviews,
    replace_file,
    update_reviews,
)
from deathmetal_lake_tools.generate.sources import (
    BASE_ROWS,
    DUPLICATE_RATE,
    INVALID_RATE,
    ORPHAN_RATE,
    generate,
)

__all__ = [
    "BASE_ROWS",
    "DUPLICATE_RATE",
    "INVALID_RATE",
    "ORPHAN_RATE",
    "IncrementFile",
    "append_reviews",
    "generate",
    "main",
    "replace_file",
    "update_reviews",
]
