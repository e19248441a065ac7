"""Every CSV file segflow writes goes through `write_csv`, which applies the spreadsheet formula
rule: the audience exports (ml/segments/publish.py), the trigger exports and `suppressions.csv`
(ml/triggers/exports.py) and the tables logged with each trained model (ml/models/fitting.py).

The rule (OWASP, "CSV injection"): a spreadsheet opening a CSV runs a cell that begins with
`=`, `+`, `-` or `@` as a formula (`=HYPERLINK(...)` links anywhere, `=cmd|...` ran commands in
old Excel), and a leading tab or carriage return can hide such a start. So every text cell that
begins with one of `=`, `+`, `-`, `@`, tab (0x09) or carriage return (0x0D) is written with a
single quote (`'`) in front, which spreadsheets show as text. Only text columns (VARCHAR and
ENUM) are touched: numbers, dates and timestamps that DuckDB writes itself are not formulas and
stay as they are (a negative number stays `-3.5`). A column of numbers formatted as text (a
`printf` in the select) is text and gets the rule too, so format only values that cannot be
negative, or leave numbers as numbers.

The rule runs inside DuckDB as a CASE over each text column of the select (read by DESCRIBE):
the select runs once into a temporary table, which the file is written from and the changed
cells are counted in (the manifests record the count).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from ml.warehouse.sql import identifier, literal

if TYPE_CHECKING:
    import pandas as pd

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
"""The first characters that make a spreadsheet treat a cell as a formula."""
STARTS_LIKE_A_FORMULA = r"^[=+\-@\t\r]"
"""FORMULA_PREFIXES as the regular expression DuckDB matches each text value with (a projection,
unlike `left(x, 1) IN (...)`, which DuckDB runs as a join that does not keep the rows' order)."""
FORMULA_RULE = (
    "a text cell beginning with =, +, -, @, tab or carriage return is written with a leading "
    "single quote (') so that spreadsheets show it as text instead of running it as a formula; "
    "numbers, dates and timestamps are written unchanged"
)
"""The rule in words, as the manifests state it."""
TEXT_TYPES = ("VARCHAR", "ENUM")
CSV_OPTIONS = "FORMAT csv, HEADER true, DELIMITER ',', NEW_LINE '\\n'"


@dataclass(frozen=True)
class WrittenCsv:
    rows: int
    cells_neutralised: int
    """Text cells that were given a leading quote."""


def _starts_like_a_formula(column: str) -> str:
    return f"regexp_matches({column}, '{STARTS_LIKE_A_FORMULA}')"


def neutralised(column: str) -> str:
    """SQL: the text column (an expression) with the rule applied; NULL stays NULL."""
    return f"CASE WHEN {_starts_like_a_formula(column)} THEN '''' || {column} ELSE {column} END"


def text_columns(
    con: duckdb.DuckDBPyConnection, select: str, params: list
) -> list[tuple[str, bool]]:
    """The select's columns in order, and which of them DuckDB writes as text."""
    return [
        (name, type_name.split("(")[0].strip().upper() in TEXT_TYPES)
        for name, type_name, *_ in con.execute(f"DESCRIBE {select}", params).fetchall()
    ]


def write_csv(
    con: duckdb.DuckDBPyConnection,
    select: str,
    params: list,
    path: Path,
    private: bool = True,
) -> WrittenCsv:
    """The query's rows as a CSV file (header, commas, `\\n`), with the spreadsheet formula rule
    applied to its text columns, in the select's order. `private`: readable by its owner only
    (files with e-mail addresses). Returns the rows written and the cells neutralised."""
    # The select runs once (an export's join is the costly part): the file and the count of
    # neutralised cells are both read from its rows, kept in order of insertion.
    con.execute(f"CREATE OR REPLACE TEMP TABLE csv_rows AS {select}", params)
    try:
        columns = text_columns(con, "SELECT * FROM csv_rows", [])
        text = [identifier(name) for name, is_text in columns if is_text]
        written = ", ".join(
            f"{neutralised(identifier(name))} AS {identifier(name)}"
            if is_text
            else identifier(name)
            for name, is_text in columns
        )
        rows = con.execute(
            f"COPY (SELECT {written} FROM csv_rows) TO {literal(str(path))} ({CSV_OPTIONS})"
        ).fetchone()[0]
        cells = 0
        if text and rows:
            counts = " + ".join(
                f"count(*) FILTER (WHERE {_starts_like_a_formula(column)})" for column in text
            )
            cells = con.execute(f"SELECT {counts} FROM csv_rows").fetchone()[0]
    finally:
        con.execute("DROP TABLE IF EXISTS csv_rows")
    if private:
        path.chmod(0o600)
    return WrittenCsv(rows=rows, cells_neutralised=int(cells))


def write_frame_csv(frame: pd.DataFrame, path: Path, private: bool = False) -> WrittenCsv:
    """A data frame (its columns, not its index) as a CSV file through `write_csv`."""
    with duckdb.connect() as con:
        con.register("csv_frame", frame)
        return write_csv(con, "SELECT * FROM csv_frame", [], path, private=private)


def formula_rule_summary(files: dict[str, WrittenCsv]) -> dict:
    """What a manifest records about the rule: that it was applied, the rule, and the cells
    neutralised in all and per file."""
    return {
        "applied": True,
        "rule": FORMULA_RULE,
        "cells_neutralised": sum(written.cells_neutralised for written in files.values()),
        "cells_neutralised_by_file": {
            name: written.cells_neutralised for name, written in sorted(files.items())
        },
    }
