"""The generator's command line: full source files, or one increment for files already there."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from deathmetal_lake_tools.generate.increments import (
    IncrementFile,
    append_reviews,
    replace_file,
    update_reviews,
)
from deathmetal_lake_tools.generate.sources import generate


def _increment(kind: str, out: Path, tag: str, seed: int) -> IncrementFile:
    if kind == "append":
        return append_reviews(out, tag, seed)
    if kind == "update":
        return update_reviews(out, tag, seed)
    return replace_file(out, tag, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deathmetal_lake_tools.generate",
        description="Write source CSVs shaped like the Death Metal dataset, or an increment.",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="1 = the real dataset's size")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=Path("csv"))
    parser.add_argument(
        "--increment",
        choices=("append", "update", "replace"),
        help="instead of full files: 1,000 new reviews, 1,000 updated reviews (reviews_<tag>.csv)"
        " or a new version of <tag>.csv (bands, albums or reviews), from the files in --out",
    )
    parser.add_argument("--tag", default="increment", help="names the increment (see above)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    if args.increment:
        made = _increment(args.increment, args.out, args.tag, args.seed)
        print(
            f"{made.path}: {made.rows:,} rows ({made.new_ids:,} new ids, {made.changed_ids:,} "
            f"changed, {made.removed_ids:,} removed) in {time.perf_counter() - began:.1f} s"
        )
        return 0
    written = generate(args.out, args.scale, args.seed)
    size = sum((args.out / f"{name}.csv").stat().st_size for name in written)
    rows = ", ".join(f"{name} {count:,}" for name, count in written.items())
    print(f"{rows} rows; {size / 1e6:.1f} MB in {time.perf_counter() - began:.1f} s -> {args.out}")
    return 0
