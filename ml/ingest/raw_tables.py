"""The raw tables ingestion writes: created with the other tables of ingestion
(ml/warehouse/tables.py) after an older warehouse's are migrated once, and the views over them
(each versioned entity's latest versions under its name, and the consent log).
"""

from __future__ import annotations

import logging

import duckdb

from ml.contract import ENTITIES, VERSION_ORDER_DESC
from ml.ingest.row_rules import is_personal_sql, shape_sql, spelling_sql
from ml.segments.consent import create_consent_log
from ml.warehouse import tables
from ml.warehouse.sql import identifier

log = logging.getLogger(__name__)


def ensure_raw_tables(con: duckdb.DuckDBPyConnection) -> None:
    """The tables ingestion writes (ml/warehouse/tables.py), after migrating an older
    warehouse's, and the views over them: each versioned entity's latest versions under its
    name (`raw.customers`, `raw.orders`) and the consent log."""
    _move_to_versions(con)
    _minimise_quarantine(con)
    tables.ensure(con, *tables.INGESTION)
    for entity in ENTITIES:
        if entity.versioned:
            con.execute(
                f"""CREATE OR REPLACE VIEW raw.{entity.name} AS
                SELECT * FROM raw.{entity.table}
                QUALIFY row_number() OVER (PARTITION BY {identifier(entity.key)}
                    ORDER BY {VERSION_ORDER_DESC}) = 1"""
            )
    create_consent_log(con)


def _minimise_quarantine(con: duckdb.DuckDBPyConnection) -> None:
    """A warehouse from before quarantine was minimised (its violations have no `value_shape`):
    violations lose personal values (their shape is kept) and the personal fields of their
    records, and the values of extra columns, in raw and in held rows, become their names. One
    transaction, so an interrupted migration is done again by the next run."""
    (old,) = con.execute(
        """SELECT count(*) FROM information_schema.tables
           WHERE table_schema = 'quarantine' AND table_name = 'violations'
             AND NOT EXISTS (SELECT 1 FROM information_schema.columns
                             WHERE table_schema = 'quarantine' AND table_name = 'violations'
                               AND column_name = 'value_shape')"""
    ).fetchone()
    if not old:
        return
    personal_field = is_personal_sql(spelling_sql("e.key"))
    extra_names = "CASE WHEN json_type({0}) = 'OBJECT' THEN to_json(json_keys({0})) ELSE {0} END"
    existing = {
        (schema, name)
        for schema, name in con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE'"
        ).fetchall()
    }
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("ALTER TABLE quarantine.violations ADD COLUMN value_shape VARCHAR")
        con.execute(
            f"""UPDATE quarantine.violations SET value_shape = {shape_sql("value")}, value = NULL
                WHERE {is_personal_sql("column_name")}"""
        )
        # The record's keys are the file's column names: personal ones by their spelling.
        con.execute(
            f"""UPDATE quarantine.violations SET record = coalesce(to_json(map_from_entries(
                    list_filter(list_transform(json_keys(record),
                                               lambda k: {{'key': k, 'value': record ->> k}}),
                                lambda e: NOT {personal_field}))), '{{}}')"""
        )
        if ("quarantine", "held_rows") in existing:
            con.execute(
                f"UPDATE quarantine.held_rows SET extra = {extra_names.format('extra')} "
                "WHERE extra IS NOT NULL"
            )
        for entity in ENTITIES:
            if ("raw", entity.table) in existing:
                con.execute(
                    f"UPDATE raw.{entity.table} SET _extra = {extra_names.format('_extra')} "
                    "WHERE _extra IS NOT NULL"
                )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    log.info("quarantine minimised and extra columns reduced to their names (one-time migration)")


def _move_to_versions(con: duckdb.DuckDBPyConnection) -> None:
    """A warehouse from before versions kept one row per customer and order in raw.customers
    and raw.orders, and no load time on any raw row: those rows become the first versions, each
    row's load time its file's. A warehouse that has them is left alone: a raw row's load time
    is never rewritten (a held row loaded days after its file keeps the day it was loaded)."""
    base_tables = {
        name
        for (name,) in con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'raw' AND table_type = 'BASE TABLE'"
        ).fetchall()
    }
    with_load_time = {
        name
        for (name,) in con.execute(
            "SELECT table_name FROM information_schema.columns "
            "WHERE table_schema = 'raw' AND column_name = '_loaded_at'"
        ).fetchall()
    }
    for entity in ENTITIES:
        # Versioned: the old table still has the entity's name (now a view over the versions).
        old_layout = entity.versioned or entity.name not in with_load_time
        if entity.name not in base_tables or not old_layout:
            continue
        if entity.versioned:
            con.execute(f"ALTER TABLE raw.{entity.name} RENAME TO {entity.table}")
        con.execute(f"ALTER TABLE raw.{entity.table} ADD COLUMN IF NOT EXISTS _loaded_at TIMESTAMP")
        if entity.versioned:
            con.execute(
                f"ALTER TABLE raw.{entity.table} ADD COLUMN IF NOT EXISTS updated_at TIMESTAMP"
            )
            con.execute(
                f"ALTER TABLE raw.{entity.table} ADD COLUMN IF NOT EXISTS _version_at TIMESTAMP"
            )
        con.execute(
            f"""UPDATE raw.{entity.table} t SET _loaded_at = f.loaded_at
                {", _version_at = coalesce(f.partition_date::TIMESTAMP, f.loaded_at)" if entity.versioned else ""}
            FROM raw.loaded_files f
            WHERE f.entity = '{entity.name}' AND f.source_file = t._source_file"""
        )
