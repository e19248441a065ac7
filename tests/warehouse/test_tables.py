"""The warehouse tables: one definition each, created by `ensure` and nowhere else."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from ml.config import Settings
from ml.contract import ENTITIES
from ml.warehouse import tables

PROJECT = Path(__file__).resolve().parents[2]


def _columns(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[str, str, bool]]]:
    """Each base table's columns in order: name, type, whether it may be null."""
    found: dict[str, list[tuple[str, str, bool]]] = {}
    for schema, table, column, kind, nullable in con.execute(
        """SELECT c.table_schema, c.table_name, c.column_name, c.data_type, c.is_nullable
           FROM information_schema.columns c JOIN information_schema.tables t
             USING (table_catalog, table_schema, table_name)
           WHERE t.table_type = 'BASE TABLE' ORDER BY c.table_schema, c.table_name,
                 c.ordinal_position"""
    ).fetchall():
        found.setdefault(f"{schema}.{table}", []).append((column, kind, nullable == "YES"))
    return found


def test_every_table_is_defined_once():
    names = [table.qualified_name for table in tables.TABLES]
    assert len(names) == len(set(names))


def test_ensure_creates_every_defined_table_as_defined(tmp_path: Path):
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        tables.ensure(con, *tables.TABLES)
        created = _columns(con)
    assert set(created) == {table.qualified_name for table in tables.TABLES}
    for table in tables.TABLES:
        key = set(table.primary_key)
        assert [(name, nullable) for name, _, nullable in created[table.qualified_name]] == [
            (c.name, not (c.not_null or c.name in key)) for c in table.columns
        ], table.qualified_name


def test_ensure_keeps_rows_and_adds_the_columns_older_warehouses_lack(tmp_path: Path):
    """An older warehouse's raw.loaded_files, before its row counts and gate time: `ensure`
    adds them (counts 0 for the files loaded before) and keeps the rows."""
    older = tables.Table(
        "raw",
        "loaded_files",
        tuple(
            c for c in tables.LOADED_FILES.columns if c.name not in tables.LOADED_FILES.added_later
        ),
        primary_key=tables.LOADED_FILES.primary_key,
    )
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        tables.ensure(con, older)
        con.execute(
            "INSERT INTO raw.loaded_files VALUES "
            "('orders', 'orders/a.csv', 'abc', 10, 1, NULL, 3, 3, 0, 0, TIMESTAMP '2026-01-01')"
        )
        tables.ensure(con, *tables.INGESTION)
        tables.ensure(con, *tables.INGESTION)  # again: nothing left to do
        rows = con.execute(
            "SELECT source_file, rows_unchanged, rows_held, gated_at FROM raw.loaded_files"
        ).fetchall()
        columns = [name for name, _, _ in _columns(con)["raw.loaded_files"]]
    assert rows == [("orders/a.csv", 0, 0, None)]
    assert columns == list(tables.LOADED_FILES.column_names)


@pytest.mark.parametrize("entity", ENTITIES, ids=[e.name for e in ENTITIES])
def test_a_raw_table_holds_the_contract_columns_with_their_types(entity):
    table = tables.raw_table(entity)
    contract = [(c.name, c.sql_type) for c in entity.columns]
    assert [(c.name, c.type) for c in table.columns[: len(contract)]] == contract


def test_the_segments_suite_expects_the_segments_table_columns(settings: Settings):
    from expectations import suites

    suite = suites.segments_suite(10, ["Loyal"], {}, settings.quality)
    (expected,) = [
        e.column_set
        for e in suite.expectations
        if type(e).__name__ == "ExpectTableColumnsToMatchSet"
    ]
    assert expected == list(tables.CUSTOMER_SEGMENTS.column_names)
    staged = {t.name: t.column_names for t in tables.STAGED_SEGMENTS}
    assert staged == {t.name: t.column_names for t in tables.PUBLISHED_SEGMENTS}


def test_no_other_module_creates_a_schema_or_a_table():
    """Temporary tables and views are a step's own business; warehouse tables are defined in
    ml/warehouse/tables.py."""
    creating = re.compile(r"CREATE\s+(SCHEMA|TABLE|OR\s+REPLACE\s+TABLE)\b", re.IGNORECASE)
    offenders = [
        str(path.relative_to(PROJECT))
        for folder in ("ml", "expectations", "dags")
        for path in sorted((PROJECT / folder).rglob("*.py"))
        if path != PROJECT / "ml" / "warehouse" / "tables.py"
        and creating.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
