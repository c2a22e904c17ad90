"""`python -m deathmetal_lake.query "SQL"`: SQL over the lake's tables, on the configured back end.

Tables are named by layer, as their asset keys: `silver.reviews`, `quarantine.albums`,
`gold.top10_by_country`. The engine is Polars SQL over `LakeTables.scan`, the reader the lake's
own assets use (file or folder tables, the back end's endpoint and credentials), so nothing is
read until the query runs, and then only the columns, row groups and tables it needs.

Polars SQL takes `silver.reviews` for a column `reviews` of a table `silver`, so each table is
registered under its quoted name `"silver.reviews"` and the query's unquoted `layer.table`
references (outside string literals and quoted identifiers) are quoted to match.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import TextIO

import polars as pl
from dagster import AssetKey

from deathmetal_lake.catalog import LAYERS, lake_catalog
from deathmetal_lake.local_aws import ensure_running
from deathmetal_lake.resources import LakeResource, LakeTables
from deathmetal_lake.settings import AwsMode, LakeSettings, load_settings

FORMATS = ("table", "csv", "json")
# A string literal, a quoted identifier (both left as they are), or a `layer.table` reference.
_TOKENS = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\b(?P<layer>" + "|".join(LAYERS) + r")\s*\.\s*"
    r"(?P<table>[A-Za-z_]\w*)\b",
    re.IGNORECASE,
)


class QueryError(Exception):
    """A query the lake cannot answer: an unknown table, bad SQL, or a table not built yet."""


def lake_tables() -> list[str]:
    """Every table users can query, `layer.name`."""
    return [table.name for table in lake_catalog()]


def qualify(sql: str) -> tuple[str, list[str]]:
    """The query with its `layer.table` references quoted, and the tables it names (lower case)."""
    named: list[str] = []

    def quote(match: re.Match[str]) -> str:
        if match["layer"] is None:
            return match[0]
        name = f"{match['layer']}.{match['table']}".lower()
        if name not in named:
            named.append(name)
        return f'"{name}"'

    return _TOKENS.sub(quote, sql), named


def _tables_hint(tables: Sequence[str]) -> str:
    return "tables: " + ", ".join(tables)


def _first_line(error: Exception) -> str:
    """Polars' message without the query plan it appends."""
    return str(error).strip().splitlines()[0]


def run_query(sql: str, tables: LakeTables, known: Sequence[str]) -> pl.DataFrame:
    """Answer `sql` over the lake; `QueryError` names what is wrong and lists the tables."""
    qualified, named = qualify(sql)
    unknown = [name for name in named if name not in known]
    if unknown:
        raise QueryError(f"unknown table {', '.join(unknown)}; {_tables_hint(known)}")
    context = pl.SQLContext()
    for name in named:
        try:
            context.register(name, tables.scan(AssetKey(name.split("."))))
        except FileNotFoundError as error:
            raise QueryError(f"{error}: materialize it first") from error
    try:
        return context.execute(qualified).collect(engine="streaming")
    except pl.exceptions.SQLInterfaceError as error:
        message = _first_line(error)
        if "relation" in message and "not found" in message:
            raise QueryError(f"unknown table: {message}; {_tables_hint(known)}") from error
        raise QueryError(f"bad SQL: {message}; {_tables_hint(known)}") from error
    except (pl.exceptions.SQLSyntaxError, pl.exceptions.ColumnNotFoundError) as error:
        raise QueryError(f"bad SQL: {_first_line(error)}; {_tables_hint(known)}") from error
    except pl.exceptions.PolarsError as error:
        raise QueryError(f"the query failed: {error}") from error


def write(frame: pl.DataFrame, output_format: str, out: TextIO) -> None:
    """`table`: Polars' text table, every row and column; `csv`; `json`: one array of objects."""
    if output_format == "csv":
        out.write(frame.write_csv())
    elif output_format == "json":
        out.write(frame.write_json() + "\n")
    else:
        with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=80, tbl_width_chars=200):
            out.write(f"{frame}\n")


def _parser(known: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deathmetal_lake.query",
        description=(
            "SQL (Polars SQL) over the lake's tables on the back end the settings choose "
            "(LAKE_AWS_MODE, LAKE_BUCKET, ...); the embedded AWS is started if needed."
        ),
        epilog=_tables_hint(known),
    )
    parser.add_argument("sql", help='e.g. "SELECT country, count(*) FROM silver.bands GROUP BY 1"')
    parser.add_argument("--format", choices=FORMATS, default="table", help="default: table")
    return parser


def _tables_for(settings: LakeSettings) -> LakeTables:
    lake = LakeResource.of(settings)
    if settings.aws_mode is AwsMode.EMBEDDED:
        ensure_running(settings)
    return LakeTables(lake=lake, base_dir=f"s3://{settings.bucket}")


def main(argv: Sequence[str] | None = None) -> int:
    known = lake_tables()
    args = _parser(known).parse_args(argv)
    try:
        frame = run_query(args.sql, _tables_for(load_settings()), known)
    except QueryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    write(frame, args.format, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
