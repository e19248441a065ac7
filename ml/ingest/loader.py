"""Landing files -> `raw` tables in the warehouse, with the data contract enforced.

What a run does, for the landing folder and an as-of date (which files are data, and how each
is read, is ml/ingest/landing.py's part):
1. Takes every landing file per entity folder whose Hive partition (`date=YYYY-MM-DD`) is not
   after the as-of date (unpartitioned files always count), once it has stopped changing.
2. Skips files already loaded with the same content (sha256), so loading twice is a no-op;
   a file whose content changed replaces the rows it loaded before.
3. A file that cannot be loaded at all (unreadable, wrong encoding, a required column missing,
   a column named twice, a link out of the landing folder) is set aside whole in
   `quarantine.files` with its reason, and every other file loads. The raw gate then stops the
   daily run, naming it, until it is replaced or accepted (`segflow quarantine --accept`).
4. Checks every row, and each row ends in exactly one place:
   - loaded into raw;
   - unchanged: a customer or order equal to its last delivered version, or an event delivered
     again with the same values (nothing new to keep);
   - held in `quarantine.held_rows`, when it is fine but waits for something: its customer has
     not been delivered yet, or its timestamp is later than the load time by no more than the
     clock-skew tolerance. Held rows are tried again on every run, and become rejections after
     `SEGFLOW_HOLD_DAYS`;
   - rejected into `quarantine.violations` with the reason (a missing or malformed required
     value, a negative amount, an unknown type, an event id delivered again with other values,
     a timestamp beyond the tolerance). A broken rule on an optional column keeps the row with
     that value set to null (an unreadable opt-in: to false), and records the original value
     there too.
   Quarantine keeps what a person needs to fix the file, and nothing that identifies a
   customer: the file, row number, column and rule; the offending value unless the column is
   personal (ml.contract.PERSONAL_COLUMNS: ids, addresses, birth year, gender, review text),
   whose value is replaced by its shape (`value_shape`, e.g. `a.a@a.a (20 characters)`); and
   the row's other values (`record`) without its personal columns. A held row keeps its whole
   record while it waits (it is loaded later); if it becomes a rejection it is kept the same
   minimal way.
5. Customers and orders keep every version (`raw.customer_versions`, `raw.order_versions`):
   a row delivered again for a known key with any other value is a new version. A version
   takes effect at its `updated_at` when the export has the column, else at the start of its
   file's partition date, else when it was loaded; versions with the same moment follow
   delivery order (load time, file, row). `raw.customers` and `raw.orders` are views of the
   latest versions; dbt derives the version in force on any date.
6. Writes in transactions of a batch of files (about 32 MiB): every file's rows, quarantine and
   load record land together or not at all, so an interrupted run is completed by the next.

Columns beyond the contract are not kept: nothing downstream reads them, and nobody can tell
whether a column named `notes` or `phone` holds personal data. `_extra` records only their names
(a JSON list, e.g. `["loyalty_tier"]`), so it shows that a file carries more than the contract;
a column worth using belongs in the contract. Warehouses from before are migrated once: extra
values become their names, and quarantine rows lose their personal values and fields.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from ml.config import Settings
from ml.contract import (
    ENTITIES,
    OPT_IN_SPELLINGS,
    PERSONAL_COLUMNS,
    VERSION_ORDER,
    VERSION_ORDER_DESC,
    Column,
    Entity,
    spelling,
)
from ml.ingest.landing import (
    BadFile,
    ContractViolation,
    Fingerprint,
    LandingFile,
    StillChanging,
    checksum,
    csv_header,
    discover,
    readable_path,
)
from ml.privacy.erasure import ensure_privacy_tables
from ml.privacy.pseudonyms import CUSTOMER_ID, EMAIL, pseudonym_key, pseudonym_sql
from ml.segments.consent import create_consent_log
from ml.warehouse.connection import connect

log = logging.getLogger(__name__)

BATCH_BYTES = 32 * 2**20
"""Files are staged and checked in batches of about this much on disk, so the first load of
a year of history for a million customers stays within memory (one batch at a time)."""
ID_AS_INTEGER = r"^(-?[0-9]+)\.0+$"
"""An id written as a number with only zeros after the point is that integer (`42.0` -> `42`):
what pandas writes for an integer column that had a null."""

__all__ = ["BadFile", "ContractViolation", "ingest_landing", "raw_summary"]


@dataclass
class EntityReport:
    files_loaded: int = 0
    files_unchanged: int = 0
    files_replaced: int = 0
    files_bad: int = 0
    files_still_changing: int = 0
    rows_loaded: int = 0
    rows_unchanged: int = 0
    rows_held: int = 0
    rows_rejected: int = 0
    values_nullified: int = 0
    held_rows_loaded: int = 0
    held_rows_rejected: int = 0


@dataclass
class IngestReport:
    as_of: dt.date | None
    loaded_at: dt.datetime
    entities: dict[str, EntityReport] = field(default_factory=dict)
    bad_files: list[str] = field(default_factory=list)
    """Files set aside whole by this run (their reasons are in quarantine.files)."""
    ignored_files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"ingest as of {self.as_of or 'all partitions'} at {self.loaded_at:%Y-%m-%d %H:%M:%S} UTC"
        ]
        for name, r in self.entities.items():
            lines.append(
                f"  {name:<13} files new {r.files_loaded:>4}, replaced {r.files_replaced:>3}, "
                f"unchanged {r.files_unchanged:>4}, bad {r.files_bad:>2} | rows loaded "
                f"{r.rows_loaded:>10,}, unchanged {r.rows_unchanged:>9,}, held {r.rows_held:>6,}, "
                f"quarantined {r.rows_rejected:>7,}, values nulled {r.values_nullified:>6,}"
                + (
                    f" | earlier held rows loaded {r.held_rows_loaded:,}, "
                    f"rejected {r.held_rows_rejected:,}"
                    if r.held_rows_loaded or r.held_rows_rejected
                    else ""
                )
            )
        if self.bad_files:
            lines.append(f"  bad files set aside (quarantine.files): {', '.join(self.bad_files)}")
        if self.ignored_files:
            lines.append(f"  not a landing format, ignored: {', '.join(self.ignored_files)}")
        return "\n".join(lines)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _timestamp(value: dt.datetime) -> str:
    return f"TIMESTAMP '{value:%Y-%m-%d %H:%M:%S}'"


SHAPE_CHARACTERS = 40


def _shape(value: str) -> str:
    """SQL: what a (personal) value looks like without what it says: every run of letters is
    `a`, every run of digits `9`, other characters stay, then its length, e.g.
    `a.a@a.a (20 characters)` for an address. Enough to see a missing `@`, a stray blank or an
    id written as `42.0`; not enough to tell whose value it was. Null stays null."""
    letters = f"regexp_replace({value}, '[\\pL\\pM]+', 'a', 'g')"
    digits = f"regexp_replace({letters}, '\\pN+', '9', 'g')"
    return (
        f"CASE WHEN {value} IS NOT NULL THEN left({digits}, {SHAPE_CHARACTERS}) || ' (' "
        f"|| length({value}) || ' characters)' END"
    )


def _personal(column: str) -> str:
    """SQL: whether the column named by `column` is personal (PERSONAL_COLUMNS)."""
    return f"{column} IN ({', '.join(_literal(c) for c in sorted(PERSONAL_COLUMNS))})"


# --------------------------------------------------------------------------- warehouse tables

LOADED_FILE_COUNTS = ("rows_unchanged", "rows_held")


def ensure_raw_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
    con.execute("CREATE SCHEMA IF NOT EXISTS quarantine")
    _move_to_versions(con)
    for entity in ENTITIES:
        columns = ", ".join(f"{_quote(c.name)} {c.sql_type}" for c in entity.columns)
        versioned = ", _version_at TIMESTAMP" if entity.versioned else ""
        con.execute(
            f"CREATE TABLE IF NOT EXISTS raw.{entity.table} ({columns}, "
            "_extra JSON, _source_file VARCHAR NOT NULL, _source_row BIGINT NOT NULL, "
            f"_loaded_at TIMESTAMP{versioned})"
        )
        if entity.versioned:
            con.execute(
                f"""CREATE OR REPLACE VIEW raw.{entity.name} AS
                SELECT * FROM raw.{entity.table}
                QUALIFY row_number() OVER (PARTITION BY {_quote(entity.key)}
                    ORDER BY {VERSION_ORDER_DESC}) = 1"""
            )
    create_consent_log(con)
    con.execute(
        """CREATE TABLE IF NOT EXISTS raw.loaded_files (
            entity VARCHAR NOT NULL, source_file VARCHAR NOT NULL, sha256 VARCHAR NOT NULL,
            size_bytes BIGINT NOT NULL, mtime_ns BIGINT NOT NULL, partition_date DATE,
            rows_in_file BIGINT NOT NULL, rows_loaded BIGINT NOT NULL,
            rows_rejected BIGINT NOT NULL, values_nullified BIGINT NOT NULL,
            loaded_at TIMESTAMP NOT NULL, PRIMARY KEY (entity, source_file))"""
    )
    for column in LOADED_FILE_COUNTS:
        con.execute(
            f"ALTER TABLE raw.loaded_files ADD COLUMN IF NOT EXISTS {column} BIGINT DEFAULT 0"
        )
    # When a raw gate passed the file's rows; null until one has (ml/quality/gates.py).
    con.execute("ALTER TABLE raw.loaded_files ADD COLUMN IF NOT EXISTS gated_at TIMESTAMP")
    _minimise_quarantine(con)
    con.execute(
        """CREATE TABLE IF NOT EXISTS quarantine.violations (
            entity VARCHAR NOT NULL, source_file VARCHAR NOT NULL, source_row BIGINT NOT NULL,
            column_name VARCHAR NOT NULL, rule VARCHAR NOT NULL, value VARCHAR,
            value_shape VARCHAR, action VARCHAR NOT NULL, record JSON NOT NULL,
            loaded_at TIMESTAMP NOT NULL, customer_key VARCHAR)"""
    )
    con.execute("ALTER TABLE quarantine.violations ADD COLUMN IF NOT EXISTS customer_key VARCHAR")
    con.execute(
        """CREATE TABLE IF NOT EXISTS quarantine.held_rows (
            entity VARCHAR NOT NULL, source_file VARCHAR NOT NULL, source_row BIGINT NOT NULL,
            reason VARCHAR NOT NULL, record JSON NOT NULL, extra JSON,
            held_since TIMESTAMP NOT NULL, last_tried_at TIMESTAMP NOT NULL,
            PRIMARY KEY (entity, source_file, source_row))"""
    )
    con.execute(
        """CREATE TABLE IF NOT EXISTS quarantine.files (
            entity VARCHAR NOT NULL, source_file VARCHAR NOT NULL, sha256 VARCHAR,
            column_name VARCHAR, reason VARCHAR NOT NULL, found_at TIMESTAMP NOT NULL,
            accepted_at TIMESTAMP, accepted_note VARCHAR, PRIMARY KEY (entity, source_file))"""
    )


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
    personal_field = _personal(_spelled("e.key"))
    extra_names = "CASE WHEN json_type({0}) = 'OBJECT' THEN to_json(json_keys({0})) ELSE {0} END"
    tables = {
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
            f"""UPDATE quarantine.violations SET value_shape = {_shape("value")}, value = NULL
                WHERE {_personal("column_name")}"""
        )
        # The record's keys are the file's column names: personal ones by their spelling.
        con.execute(
            f"""UPDATE quarantine.violations SET record = coalesce(to_json(map_from_entries(
                    list_filter(list_transform(json_keys(record),
                                               lambda k: {{'key': k, 'value': record ->> k}}),
                                lambda e: NOT {personal_field}))), '{{}}')"""
        )
        if ("quarantine", "held_rows") in tables:
            con.execute(
                f"UPDATE quarantine.held_rows SET extra = {extra_names.format('extra')} "
                "WHERE extra IS NOT NULL"
            )
        for entity in ENTITIES:
            if ("raw", entity.table) in tables:
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
    and raw.orders: those rows become the first versions."""
    tables = {
        name
        for (name,) in con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'raw' AND table_type = 'BASE TABLE'"
        ).fetchall()
    }
    for entity in ENTITIES:
        if entity.name not in tables:
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


# --------------------------------------------------------------------------- reading files


@dataclass(frozen=True)
class _FileSchema:
    """Source column per contract column (`None` when absent), their types, and extra columns."""

    source_names: dict[str, str | None]
    source_types: dict[str, str]
    extras: tuple[str, ...]


def _parse_error(file: LandingFile, error: Exception) -> BadFile:
    # DuckDB's messages quote the offending line: keep only the first line, which says where.
    first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
    return BadFile(file.relative, None, f"cannot be parsed as {file.format.upper()}: {first_line}")


def _reader(file: LandingFile, path: Path, settings: Settings, delimiter: str = ",") -> str:
    """The SQL table function that reads one file, every text value as VARCHAR."""
    location = _literal(str(path))
    compression = _literal(file.compression or "none")
    if file.format == "csv":
        # Read every CSV value as text: the contract decides types, so a bad value becomes a
        # quarantine row with a reason instead of a failed load.
        return (
            f"read_csv({location}, header = true, skip = 0, delim = {_literal(delimiter)}, "
            "quote = '\"', strict_mode = true, all_varchar = true, hive_partitioning = false, "
            f"compression = {compression}, encoding = {_literal(settings.loading.encoding)})"
        )
    if file.format == "json":
        return f"read_ndjson_objects({location}, compression = {compression})"
    return f"read_parquet({location}, hive_partitioning = false)"


def _check_names(file: LandingFile, entity: Entity, names: list[str]) -> dict[str, str]:
    """Source name per normalised name; a name twice, or a required one missing, is an error.
    A header naming no column of the contract is most likely a first data row (a file without
    header line): its names, which would be a customer's values, are not repeated."""
    if names and not {spelling(name) for name in names} & set(entity.column_names):
        raise BadFile(
            file.relative,
            None,
            f"the header names no column of {entity.name} ({len(names)} columns): is the "
            "header line missing? (the first line is not repeated here: it may be a row of data)",
        )
    by_normalized: dict[str, str] = {}
    for name in names:
        normalized = spelling(name)
        if normalized in by_normalized:
            raise BadFile(
                file.relative,
                normalized,
                f"appears twice in the header ('{by_normalized[normalized]}' and '{name}'); "
                "column names are case-insensitive",
            )
        by_normalized[normalized] = name
    for required in entity.must_have():
        if required not in by_normalized:
            raise BadFile(
                file.relative,
                required,
                f"required column of {entity.name} is missing (the file has: {', '.join(names)})",
            )
    return by_normalized


@dataclass(frozen=True)
class _Source:
    """How one file is read: the SQL that yields its columns, and what they are."""

    select: str
    """A query over the file whose columns are the file's, by their names in the file."""
    schema: _FileSchema
    path: Path
    """What DuckDB reads: the file, or a plain-named link to it (ml.ingest.landing.readable_path)."""


def _source(
    con: duckdb.DuckDBPyConnection,
    entity: Entity,
    file: LandingFile,
    settings: Settings,
    staging: Path,
) -> _Source:
    """Check a file's columns, and read a text file through once (a ragged row shows only
    then), before anything is written; raises BadFile. A Parquet file's broken page shows when
    its batch is read, and then sets aside only that file (_load_entity)."""
    path = readable_path(file, staging)
    try:
        if file.format == "csv":
            delimiter, header = csv_header(file, settings.loading.encoding)
            _check_names(file, entity, header)
            reader = _reader(file, path, settings, delimiter)
            select = f"SELECT * FROM {reader}"
            described = con.execute(f"DESCRIBE {select}").fetchall()
        elif file.format == "json":
            reader = _reader(file, path, settings)
            keys = [
                key
                for (key,) in con.execute(
                    f"""SELECT key FROM (SELECT unnest(json_keys(json)) AS key, row_number()
                        OVER () AS n FROM {reader}) GROUP BY key ORDER BY min(n)"""
                ).fetchall()
            ]
            _check_names(file, entity, keys)
            values = ", ".join(f"json ->> {_literal(key)} AS {_quote(key)}" for key in keys)
            select = f"SELECT {values} FROM {reader}"
            described = [(key, "VARCHAR") for key in keys]
        else:
            _check_names(file, entity, pq.read_schema(path).names)
            select = f"SELECT * FROM {_reader(file, path, settings)}"
            described = con.execute(f"DESCRIBE {select}").fetchall()
        if file.format != "parquet":
            con.execute(f"SELECT count(*) FROM ({select})").fetchone()
    except (duckdb.Error, pa.ArrowException, OSError) as error:
        raise _parse_error(file, error) from None
    by_normalized = {spelling(name): (name, type_) for name, type_, *_ in described}
    source_names = {
        c.name: by_normalized[c.name][0] if c.name in by_normalized else None
        for c in entity.columns
    }
    source_types = {
        c.name: by_normalized[c.name][1] for c in entity.columns if c.name in by_normalized
    }
    extras = tuple(
        original for norm, (original, _) in by_normalized.items() if norm not in source_names
    )
    return _Source(select, _FileSchema(source_names, source_types, extras), path)


def _contract_columns(schema: _FileSchema) -> str:
    selects = [
        f"{_quote(source)} AS {_quote(column)}" if source else f"NULL AS {_quote(column)}"
        for column, source in schema.source_names.items()
    ]
    if schema.extras:
        # The names of the columns beyond the contract, never their values (module docstring).
        names = ", ".join(_literal(x) for x in schema.extras)
        selects.append(f"to_json([{names}]) AS _extra")
    else:
        selects.append("NULL::JSON AS _extra")
    return ", ".join(selects)


def _stage_files(con: duckdb.DuckDBPyConnection, items: list[_PlannedFile]) -> None:
    """The files of one schema as the temporary view `batch`, contract columns by name."""
    columns = _contract_columns(items[0].source.schema)
    if items[0].file.format == "parquet":
        # One scan for all files (much faster than one per file); the reader numbers rows
        # within each file, and the files' names and partitions come from a small table.
        files = pa.Table.from_pylist(  # noqa: F841  (read by name in SQL)
            [
                {
                    "path": str(i.source.path),
                    "relative": i.file.relative,
                    "partition_date": i.file.partition_date,
                }
                for i in items
            ],
            schema=pa.schema(
                [("path", pa.string()), ("relative", pa.string()), ("partition_date", pa.date32())]
            ),
        )
        con.execute("CREATE OR REPLACE TEMP TABLE batch_files AS SELECT * FROM files")
        paths = ", ".join(_literal(str(i.source.path)) for i in items)
        con.execute(
            f"""CREATE OR REPLACE TEMP VIEW batch AS
            SELECT {columns}, f.relative AS _source_file, file_row_number + 1 AS _source_row,
                   f.partition_date AS _partition_date, NULL::TIMESTAMP AS _held_since
            FROM read_parquet([{paths}], filename = true, file_row_number = true,
                              hive_partitioning = false) r
            JOIN batch_files f ON f.path = r.filename"""
        )
        return
    selects = [
        # A window over one plain scan keeps file order: row 1 is the first data row.
        f"SELECT {columns}, {_literal(i.file.relative)} AS _source_file, "
        f"row_number() OVER () AS _source_row, "
        f"{_literal(str(i.file.partition_date)) + '::DATE' if i.file.partition_date else 'NULL::DATE'}"
        f" AS _partition_date, NULL::TIMESTAMP AS _held_since FROM ({i.source.select})"
        for i in items
    ]
    # A view: the files are read once, when the checks materialise `checked`.
    con.execute(f"CREATE OR REPLACE TEMP VIEW batch AS {' UNION ALL '.join(selects)}")


def _stage_held_rows(con: duckdb.DuckDBPyConnection, entity: Entity) -> _FileSchema:
    """An entity's held rows as the temporary view `batch`, their values as text again."""
    values = ", ".join(f"record ->> {_literal(c.name)} AS {_quote(c.name)}" for c in entity.columns)
    con.execute(
        f"""CREATE OR REPLACE TEMP VIEW batch AS
        SELECT {values}, h.extra AS _extra, h.source_file AS _source_file,
               h.source_row AS _source_row, f.partition_date AS _partition_date,
               h.held_since AS _held_since
        FROM quarantine.held_rows h
        LEFT JOIN raw.loaded_files f ON f.entity = h.entity AND f.source_file = h.source_file
        WHERE h.entity = {_literal(entity.name)}"""
    )
    names = {c.name: c.name for c in entity.columns}
    return _FileSchema(names, dict.fromkeys(names, "VARCHAR"), ())


# --------------------------------------------------------------------------- row rules


def _source_value(column: str, source_type: str | None) -> str:
    """The value as the file has it; text trimmed and empty text as null (SQL)."""
    ref = _quote(column)
    if source_type is None:
        return "NULL::VARCHAR"
    if source_type == "VARCHAR":
        return f"nullif(trim({ref}), '')"
    return ref


def _spelled(value: str) -> str:
    """contract.spelling in SQL."""
    return f"trim(regexp_replace(lower(trim({value}::VARCHAR)), '[^0-9a-z]+', '_', 'g'), '_')"


def _typed(column: Column, source_type: str | None) -> str:
    """The value cast to its contract type, null when it cannot be (SQL)."""
    if source_type is None:
        return f"NULL::{column.sql_type}"
    value = _source_value(column.name, source_type)
    if column.is_id:
        return f"regexp_replace({value}::VARCHAR, '{ID_AS_INTEGER}', '\\1')"
    if column.accepted:
        names = " ".join(
            f"WHEN {_literal(name)} THEN {_literal(meaning)}" for name, meaning in column.synonyms
        )
        spelled = _spelled(value)
        return f"CASE {spelled} {names} ELSE {spelled} END" if names else spelled
    if column.type == "boolean":
        names = " ".join(
            f"WHEN {_literal(name)} THEN {str(meaning).lower()}"
            for name, meaning in OPT_IN_SPELLINGS.items()
        )
        return f"CASE {_spelled(value)} {names} END"
    if column.type == "timestamp":
        # Text without an offset is UTC; with an offset it is converted to UTC.
        return f"try_cast({value} AS TIMESTAMPTZ)::TIMESTAMP"
    return f"try_cast({value} AS {column.sql_type})"


@dataclass(frozen=True)
class _Rule:
    text: str
    broken: str
    """SQL, true when the rule is broken, on `t_<col>` (typed) and `s_<col>` (as delivered)."""
    action: str
    """rejected (the row), nulled or defaulted (the value), held (the row waits)."""


def _rules(column: Column, loaded_at: dt.datetime, settings: Settings) -> list[_Rule]:
    typed, text = _quote("t_" + column.name), _quote("s_" + column.name)
    on_value = "rejected" if column.rejects_row else "nulled"
    rules = []
    if column.required:
        rules.append(_Rule("required value is missing", f"{text} IS NULL", "rejected"))
    if column.type == "boolean":
        # Consent errs on the side of the customer: a value we cannot read means "no".
        rules.append(
            _Rule(
                "not a recognised yes/no value: taken as false (not e-mailable)",
                f"{text} IS NOT NULL AND {typed} IS NULL",
                "defaulted",
            )
        )
    elif column.type != "string":
        rules.append(
            _Rule(f"not a valid {column.type}", f"{text} IS NOT NULL AND {typed} IS NULL", on_value)
        )
    if column.accepted:
        allowed = ", ".join(_literal(v) for v in column.accepted)
        rules.append(
            _Rule(
                f"must be one of {', '.join(column.accepted)}"
                + (" (or an e-mail tool's name for one)" if column.synonyms else ""),
                f"{typed} NOT IN ({allowed})",
                on_value,
            )
        )
    if column.minimum is not None:
        rules.append(
            _Rule(f"must be >= {column.minimum:g}", f"{typed} < {column.minimum}", on_value)
        )
    maximum = loaded_at.year if column.maximum_is_current_year else column.maximum
    if maximum is not None:
        rules.append(_Rule(f"must be <= {maximum:g}", f"{typed} > {maximum}", on_value))
    if column.pattern:
        rules.append(
            _Rule(
                f"must be {column.pattern_rule}",
                f"NOT regexp_full_match({typed}, {_literal(column.pattern)})",
                on_value,
            )
        )
    if column.not_in_future:
        skew = settings.loading.clock_skew_hours
        tolerated = loaded_at + dt.timedelta(hours=skew)
        rules.append(
            _Rule(
                f"more than {skew:g} h later than the load time ({loaded_at:%Y-%m-%d %H:%M:%S} "
                "UTC; SEGFLOW_CLOCK_SKEW_HOURS)",
                f"{typed} > {_timestamp(tolerated)}",
                "rejected",
            )
        )
        rules.append(
            _Rule(
                "later than the load time: waits until that time has passed",
                f"{typed} > {_timestamp(loaded_at)} AND {typed} <= {_timestamp(tolerated)}",
                "held",
            )
        )
    return rules


def _has_action(action: str) -> str:
    return f"list_contains(list_transform(_violations, lambda v: v.action), '{action}')"


REJECTED = _has_action("rejected")
HELD = f"({_has_action('held')} AND NOT {REJECTED})"
LOADED = f"(NOT {_has_action('held')} AND NOT {REJECTED} AND NOT _unchanged)"


def _check_batch(
    con: duckdb.DuckDBPyConnection,
    entity: Entity,
    schema: _FileSchema,
    loaded_at: dt.datetime,
    settings: Settings,
    retried: bool = False,
) -> None:
    """Turn `batch` into `checked`: the values as delivered (`s_`), typed (`t_`) and as they
    are kept (`v_`, after nulling), a list of violations per row, and `_unchanged`. Held rows
    tried again (`retried`) that waited too long become rejections."""
    selects, conditions, violations, kept = [], [], [], []
    for column in entity.columns:
        source_type = schema.source_types.get(column.name)
        source = _quote("s_" + column.name)
        typed = _quote("t_" + column.name)
        selects.append(f"{_source_value(column.name, source_type)} AS {source}")
        selects.append(f"{_typed(column, source_type)} AS {typed}")
        value_rules = {"nulled": [], "defaulted": []}
        for rule in _rules(column, loaded_at, settings):
            broken = f"coalesce({rule.broken}, false)"
            conditions.append(broken)
            violations.append(
                f"CASE WHEN {broken} THEN {{'column_name': {_literal(column.name)}, "
                f"'rule': {_literal(rule.text)}, 'value': {source}::VARCHAR, "
                f"'action': {_literal(rule.action)}}} END"
            )
            if rule.action in value_rules:
                value_rules[rule.action].append(broken)
        value = typed
        if value_rules["defaulted"]:
            value = f"CASE WHEN {' OR '.join(value_rules['defaulted'])} THEN false ELSE {value} END"
        if value_rules["nulled"]:
            value = f"CASE WHEN {' OR '.join(value_rules['nulled'])} THEN NULL ELSE {value} END"
        kept.append(f"{value} AS {_quote('v_' + column.name)}")
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE checked AS
        SELECT *, {", ".join(kept)},
            -- Most rows break no rule: test that cheaply before building the list.
            CASE WHEN {" OR ".join(conditions) or "false"}
                 THEN list_filter([{", ".join(violations)}], lambda v: v IS NOT NULL)
                 ELSE [] END AS _violations,
            false AS _unchanged
        FROM (SELECT {", ".join(selects)}, _extra, _source_file, _source_row, _partition_date,
                     _held_since FROM batch)"""
    )
    _check_keys_and_references(con, entity)
    _reject_erased(con, entity)
    if retried:
        _expire_held_rows(con, loaded_at, settings.loading.hold_days)


def _values_hash(entity: Entity, prefix: str = "") -> str:
    """A hash of the values that make a version (all but `updated_at`, which only orders them)."""
    columns = [c.name for c in entity.columns if c.name != "updated_at"]
    return f"hash({', '.join(_quote(prefix + name) for name in columns)})"


def _check_keys_and_references(con: duckdb.DuckDBPyConnection, entity: Entity) -> None:
    """Unknown customers (held), and what a known key means: for customers and orders a new
    version unless the values equal the last delivered version (then unchanged); for the
    append-only entities unchanged when equal to the first delivery, else rejected."""
    key = _quote("v_" + entity.key)
    passing = f"NOT {REJECTED} AND NOT {_has_action('held')}"
    customer_columns = (
        ", v_customer_id, s_customer_id::VARCHAR AS s_customer_id"
        if entity.references_customers
        else ""
    )
    waiting = ""
    if entity.references_customers:
        waiting = """
            WHEN NOT EXISTS (SELECT 1 FROM raw.customer_versions known
                             WHERE known.customer_id = p.v_customer_id)
            THEN {'column_name': 'customer_id',
                  'rule': 'waits for its customer (no such customer_id delivered yet)',
                  'value': p.s_customer_id, 'action': 'held'}"""
    if entity.versioned:
        # Equal to the version delivered just before it: nothing new. Other values are a new
        # version, never an error.
        reference = "coalesce(p.previous, prior.last)"
        differs = "false"
    else:
        # The first delivery of an event is the event; a later one must repeat it exactly.
        reference = "CASE WHEN prior.k IS NULL AND p.is_first THEN NULL ELSE coalesce(prior.first, p.first) END"
        differs = f"p.h <> {reference}"
    prior_first = f"arg_min({_values_hash(entity)}, ({VERSION_ORDER.replace('_version_at, ', '')}))"
    prior_last = f"arg_max({_values_hash(entity)}, ({VERSION_ORDER.replace('_version_at, ', '')}))"
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE key_checks AS
        WITH passing AS (
            SELECT {key} AS k, {_quote("s_" + entity.key)}::VARCHAR AS s_key,
                   _source_file, _source_row, {_values_hash(entity, "v_")} AS h
                   {customer_columns}
            FROM checked WHERE {passing}
        ),
        sequenced AS (
            SELECT *,
                lag(h) OVER delivery AS previous,
                first_value(h) OVER delivery AS first,
                row_number() OVER delivery = 1 AS is_first
            FROM passing
            WINDOW delivery AS (PARTITION BY k ORDER BY _source_file, _source_row)
        ),
        prior AS (
            SELECT {_quote(entity.key)} AS k, {prior_first} AS first, {prior_last} AS last,
                   min(_source_file || ' row ' || _source_row) AS seen
            FROM raw.{entity.table}
            WHERE {_quote(entity.key)} IN (SELECT k FROM passing)
            GROUP BY 1
        )
        SELECT p._source_file, p._source_row,
            CASE
                {waiting}
                WHEN {differs}
                THEN {{'column_name': {_literal(entity.key)},
                       'rule': 'delivered again with other values (first seen in '
                               || coalesce(prior.seen, p._source_file) || ')',
                       'value': p.s_key, 'action': 'rejected'}}
            END AS v,
            coalesce(p.h = {reference}, false) AS unchanged
        FROM sequenced p
        LEFT JOIN prior ON prior.k = p.k"""
    )
    con.execute(
        """UPDATE checked
        SET _violations = CASE WHEN e.v IS NULL THEN checked._violations
                               ELSE list_append(checked._violations, e.v) END,
            _unchanged = e.v IS NULL AND e.unchanged
        FROM key_checks e
        WHERE (e.v IS NOT NULL OR e.unchanged)
          AND checked._source_file = e._source_file AND checked._source_row = e._source_row"""
    )


ERASED_RULE = "names a forgotten customer (segflow forget): not loaded, values not kept"


def _reject_erased(con: duckdb.DuckDBPyConnection, entity: Entity) -> None:
    """A row of a customer segflow was asked to forget (by id or address, compared by keyed
    hash, ml/privacy/erasure.py) is rejected with this rule alone: no value of it is kept anywhere."""
    if not con.execute("SELECT count(*) FROM privacy.erased_identities").fetchone()[0]:
        return
    names = {column.name for column in entity.columns}
    matches = [
        f"""EXISTS (SELECT 1 FROM privacy.erased_identities e WHERE e.kind = '{kind}'
                    AND e.identity_hash = {pseudonym_sql(kind, _quote("v_" + kind))})"""
        for kind in (CUSTOMER_ID, EMAIL)
        if kind in names
    ]
    if not matches:
        return
    con.execute(
        f"""UPDATE checked SET _unchanged = false,
               _violations = [{{'column_name': '{CUSTOMER_ID if CUSTOMER_ID in names else EMAIL}',
                                'rule': {_literal(ERASED_RULE)}, 'value': NULL::VARCHAR,
                                'action': 'rejected'}}]
            WHERE {" OR ".join(matches)}"""
    )


def _expire_held_rows(con: duckdb.DuckDBPyConnection, loaded_at: dt.datetime, days: float) -> None:
    """A row held for longer than SEGFLOW_HOLD_DAYS is rejected for what it waited for."""
    deadline = loaded_at - dt.timedelta(days=days)
    con.execute(
        f"""UPDATE checked SET _violations = list_transform(_violations, lambda v:
                CASE WHEN v.action = 'held'
                     THEN {{'column_name': v.column_name,
                           'rule': 'held since ' || strftime(_held_since, '%Y-%m-%d %H:%M')
                                   || ' for more than {days:g} days (SEGFLOW_HOLD_DAYS): '
                                   || v.rule,
                           'value': v.value, 'action': 'rejected'}}
                     ELSE v END)
        WHERE _held_since < {_timestamp(deadline)} AND {HELD}"""
    )


def _record_of(schema: _FileSchema, for_people: bool) -> str:
    """SQL rebuilding a row's delivered values as JSON: for people (quarantine.violations) by
    the file's column names and without personal columns; for held rows whole and by contract
    names (to be read again)."""
    fields = [
        f"{_literal(source if for_people else column)}: {_quote('s_' + column)}::VARCHAR"
        for column, source in schema.source_names.items()
        if source is not None and not (for_people and column in PERSONAL_COLUMNS)
    ]
    return f"to_json({{{', '.join(fields)}}})" if fields else "'{}'::JSON"


def _write_checked(
    con: duckdb.DuckDBPyConnection,
    entity: Entity,
    schema: _FileSchema,
    loaded_at: dt.datetime,
) -> dict[str, tuple[int, ...]]:
    """Append loaded rows to raw, violations to quarantine and held rows to the held table;
    counts per source file (rows, loaded, unchanged, held, rejected, values nulled)."""
    at = _timestamp(loaded_at)
    values = ", ".join(f"{_quote('v_' + c.name)} AS {_quote(c.name)}" for c in entity.columns)
    version = (
        f", coalesce(v_updated_at, _partition_date::TIMESTAMP, {at}) AS _version_at"
        if entity.versioned
        else ""
    )
    con.execute(
        f"""INSERT INTO raw.{entity.table} BY NAME
        SELECT {values}, _extra, _source_file, _source_row, {at} AS _loaded_at {version}
        FROM checked WHERE {LOADED}"""
    )
    # A personal value is kept as its shape only, and the record without personal columns:
    # also for a held row that waited too long (module docstring).
    personal = _personal("v.column_name")
    # The pseudonym, not the id: an erasure finds the person's rejected rows by it.
    customer_key = (
        pseudonym_sql(CUSTOMER_ID, "s_customer_id")
        if any(column.name == CUSTOMER_ID for column in entity.columns)
        else "NULL::VARCHAR"
    )
    con.execute(
        f"""INSERT INTO quarantine.violations BY NAME
        SELECT {_literal(entity.name)} AS entity, _source_file AS source_file,
               _source_row AS source_row, v.column_name AS column_name, v.rule AS rule,
               CASE WHEN {personal} THEN NULL ELSE v.value END AS value,
               CASE WHEN {personal} THEN {_shape("v.value")} END AS value_shape,
               v.action AS action, CASE WHEN v.rule = {_literal(ERASED_RULE)} THEN '{{}}'::JSON
                                        ELSE _record END AS record, {at} AS loaded_at,
               CASE WHEN v.rule <> {_literal(ERASED_RULE)} THEN _customer_key END AS customer_key
        FROM (SELECT _source_file, _source_row, {_record_of(schema, True)} AS _record,
                     {customer_key} AS _customer_key, unnest(_violations) AS v
              FROM checked WHERE len(_violations) > 0 AND NOT {HELD} AND NOT _unchanged)
        WHERE v.action <> 'held'
        ORDER BY _source_file, _source_row, v.column_name"""
    )
    con.execute(
        f"""INSERT INTO quarantine.held_rows
        SELECT {_literal(entity.name)}, _source_file, _source_row,
               array_to_string(list_transform(list_filter(_violations,
                   lambda v: v.action = 'held'), lambda v: v.column_name || ': ' || v.rule), '; '),
               {_record_of(schema, False)}, _extra, coalesce(_held_since, {at}), {at}
        FROM checked WHERE {HELD}"""
    )
    nulled = "len(list_filter(_violations, lambda v: v.action IN ('nulled', 'defaulted')))"
    counts = con.execute(
        f"""SELECT _source_file, count(*),
                   count(*) FILTER (WHERE {LOADED}),
                   count(*) FILTER (WHERE _unchanged AND NOT {REJECTED}),
                   count(*) FILTER (WHERE {HELD}),
                   count(*) FILTER (WHERE {REJECTED}),
                   coalesce(sum({nulled}) FILTER (WHERE {LOADED}), 0)
            FROM checked GROUP BY _source_file"""
    ).fetchall()
    return {row[0]: tuple(int(n) for n in row[1:]) for row in counts}


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class _PlannedFile:
    file: LandingFile
    source: _Source
    sha256: str
    fingerprint: Fingerprint
    replaces: bool


def ingest_landing(
    settings: Settings,
    as_of: dt.date | None = None,
    loaded_at: dt.datetime | None = None,
) -> IngestReport:
    """Load every new landing file up to `as_of` (all partitions when None) into raw, and try
    the held rows again."""
    loaded_at = (loaded_at or dt.datetime.now(dt.UTC)).replace(tzinfo=None, microsecond=0)
    discovery = discover(settings.landing_dir)
    report = IngestReport(as_of=as_of, loaded_at=loaded_at, ignored_files=discovery.ignored)
    staging = settings.data_dir / ".ingest-links"

    with connect(settings) as con:
        ensure_raw_tables(con)
        ensure_privacy_tables(con)
        pseudonym_key(settings).install(con)  # recognises forgotten customers (_reject_erased)
        previous = {
            (entity, source): (sha, Fingerprint(size, mtime))
            for entity, source, sha, size, mtime in con.execute(
                "SELECT entity, source_file, sha256, size_bytes, mtime_ns FROM raw.loaded_files"
            ).fetchall()
        }
        set_aside = {
            (entity, source): sha
            for entity, source, sha in con.execute(
                "SELECT entity, source_file, sha256 FROM quarantine.files"
            ).fetchall()
        }
        for bad in discovery.refused:
            entity = bad.file.split("/", 1)[0]
            if (entity, bad.file) not in set_aside:
                _set_aside(con, entity, bad, None, loaded_at, report)
        # Decide what to load and check every new file's columns before writing anything.
        plan: dict[str, list[_PlannedFile]] = {}
        for entity in ENTITIES:
            entity_report = report.entities.setdefault(entity.name, EntityReport())
            plan[entity.name] = []
            for file in discovery.files[entity.name]:
                if as_of is not None and file.partition_date and file.partition_date > as_of:
                    continue
                known = previous.get((entity.name, file.relative))
                if known and known[1] == Fingerprint.of(file.path):
                    entity_report.files_unchanged += 1
                    continue
                try:
                    sha, fingerprint = checksum(file, settings.loading.encoding)
                    if known and known[0] == sha:
                        entity_report.files_unchanged += 1
                        continue
                    if set_aside.get((entity.name, file.relative), "") == sha:
                        entity_report.files_bad += 1  # set aside before, and still the same
                        continue
                    source = _source(con, entity, file, settings, staging)
                except StillChanging:
                    log.warning("%s is still being written: left for a later run", file.relative)
                    entity_report.files_still_changing += 1
                    continue
                except BadFile as bad:
                    _set_aside(con, entity.name, bad, _bad_file_sha(file), loaded_at, report)
                    continue
                plan[entity.name].append(
                    _PlannedFile(file, source, sha, fingerprint, known is not None)
                )
            if entity.required and not discovery.files[entity.name]:
                raise ContractViolation(
                    str(settings.landing_dir / entity.name),
                    None,
                    f"required entity '{entity.name}' has no landing files",
                )

        try:
            for entity in ENTITIES:
                # After the entities before it: a held order whose customer came today loads now.
                _retry_held_rows(con, entity, loaded_at, settings, report)
                _load_entity(con, entity, plan[entity.name], loaded_at, settings, report)
        finally:
            # The links share the shop's files: they must not keep one alive after the shop
            # (or an erasure) deletes or rewrites it.
            shutil.rmtree(staging, ignore_errors=True)
    log.info("%s", report.summary())
    return report


def _bad_file_sha(file: LandingFile) -> str | None:
    """The checksum of a bad file, to know it again; None when it cannot even be read."""
    try:
        return checksum(file, "latin-1")[0]
    except (OSError, StillChanging):
        return None


def _set_aside(
    con: duckdb.DuckDBPyConnection,
    entity: str,
    bad: BadFile,
    sha: str | None,
    loaded_at: dt.datetime,
    report: IngestReport,
) -> None:
    """Record a file that cannot be loaded; the run goes on with the others."""
    log.error("bad landing file set aside (quarantine.files): %s", bad)
    con.execute(
        "DELETE FROM quarantine.files WHERE entity = ? AND source_file = ?", [entity, bad.file]
    )
    con.execute(
        "INSERT INTO quarantine.files VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)",
        [entity, bad.file, sha, bad.column, bad.rule, loaded_at],
    )
    report.bad_files.append(bad.file)
    report.entities.setdefault(entity, EntityReport()).files_bad += 1


def _batches(items: list[_PlannedFile]) -> list[list[_PlannedFile]]:
    batches: list[list[_PlannedFile]] = [[]]
    size = 0
    for item in items:
        if batches[-1] and size + item.fingerprint.size > BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += item.fingerprint.size
    return batches


def _load_entity(
    con: duckdb.DuckDBPyConnection,
    entity: Entity,
    planned: list[_PlannedFile],
    loaded_at: dt.datetime,
    settings: Settings,
    report: IngestReport,
) -> None:
    """Load files of one entity, a batch per transaction: each file's rows, quarantine and
    `loaded_files` record land together or not at all, and a batch that fails is retried whole
    by the next run. Files with the same columns and types are staged together, in path order."""
    groups: dict[tuple, list[_PlannedFile]] = {}
    for item in planned:
        schema = item.source.schema
        signature = (
            tuple(schema.source_names.items()),
            tuple(schema.source_types.items()),
            schema.extras,
        )
        groups.setdefault(signature, []).append(item)
    pending = [batch for group in groups.values() for batch in _batches(group)]
    while pending:
        items = pending.pop(0)
        try:
            _load_batch(con, entity, items, loaded_at, settings, report)
        except duckdb.Error:
            # A corrupt page passes the column check and fails only when the data is read.
            culprit = _unreadable_file(con, items)
            if culprit is None:
                raise
            _set_aside(
                con,
                entity.name,
                _parse_error(culprit.file, culprit.error),
                culprit.sha256,
                loaded_at,
                report,
            )
            rest = [i for i in items if i is not culprit.item]
            if rest:
                pending.insert(0, rest)
        except StillChanging as changing:
            log.warning("%s changed while it was loaded: left for a later run", changing)
            report.entities[entity.name].files_still_changing += 1
            rest = [i for i in items if i.file.relative != str(changing)]
            if rest:
                pending.insert(0, rest)


@dataclass
class _Unreadable:
    item: _PlannedFile
    error: Exception

    @property
    def file(self) -> LandingFile:
        return self.item.file

    @property
    def sha256(self) -> str:
        return self.item.sha256


def _unreadable_file(
    con: duckdb.DuckDBPyConnection, items: list[_PlannedFile]
) -> _Unreadable | None:
    for item in items:
        try:
            con.execute(f"SELECT count(*) FROM ({item.source.select})").fetchone()
        except duckdb.Error as error:
            return _Unreadable(item, error)
    return None


def _load_batch(
    con: duckdb.DuckDBPyConnection,
    entity: Entity,
    items: list[_PlannedFile],
    loaded_at: dt.datetime,
    settings: Settings,
    report: IngestReport,
) -> None:
    entity_report = report.entities[entity.name]
    schema = items[0].source.schema
    con.execute("BEGIN TRANSACTION")
    try:
        _forget_replaced_files(con, entity, [i for i in items if i.replaces])
        _stage_files(con, items)
        _check_batch(con, entity, schema, loaded_at, settings)
        counts = _write_checked(con, entity, schema, loaded_at)
        records = []
        for item in items:
            # The checksum is of the bytes loaded only if nothing changed since it was taken.
            if Fingerprint.of(item.file.path) != item.fingerprint:
                raise StillChanging(item.file.relative)
            rows, loaded, unchanged, held, rejected, nulled = counts.get(
                item.file.relative, (0, 0, 0, 0, 0, 0)
            )
            records.append(
                {
                    "entity": entity.name,
                    "source_file": item.file.relative,
                    "sha256": item.sha256,
                    "size_bytes": item.fingerprint.size,
                    "mtime_ns": item.fingerprint.mtime_ns,
                    "partition_date": item.file.partition_date,
                    "rows_in_file": rows,
                    "rows_loaded": loaded,
                    "rows_unchanged": unchanged,
                    "rows_held": held,
                    "rows_rejected": rejected,
                    "values_nullified": nulled,
                    "loaded_at": loaded_at,
                }
            )
        loaded_files = pa.Table.from_pylist(records)  # noqa: F841  (read by name in SQL)
        con.execute("INSERT INTO raw.loaded_files BY NAME SELECT * FROM loaded_files")
        con.execute(
            "DELETE FROM quarantine.files WHERE entity = ? AND source_file IN "
            "(SELECT source_file FROM loaded_files)",
            [entity.name],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    for item, record in zip(items, records, strict=True):
        if item.replaces:
            entity_report.files_replaced += 1
        else:
            entity_report.files_loaded += 1
        entity_report.rows_loaded += record["rows_loaded"]
        entity_report.rows_unchanged += record["rows_unchanged"]
        entity_report.rows_held += record["rows_held"]
        entity_report.rows_rejected += record["rows_rejected"]
        entity_report.values_nullified += record["values_nullified"]


def _retry_held_rows(
    con: duckdb.DuckDBPyConnection,
    entity: Entity,
    loaded_at: dt.datetime,
    settings: Settings,
    report: IngestReport,
) -> None:
    """Held rows of an entity through the same checks again: what can load now loads (and its
    file's counts move from held to loaded, the file to be judged by the raw gate again), what
    waited too long is rejected, the rest waits."""
    (held,) = con.execute(
        "SELECT count(*) FROM quarantine.held_rows WHERE entity = ?", [entity.name]
    ).fetchone()
    if not held:
        return
    con.execute("BEGIN TRANSACTION")
    try:
        schema = _stage_held_rows(con, entity)
        _check_batch(con, entity, schema, loaded_at, settings, retried=True)
        con.execute("DELETE FROM quarantine.held_rows WHERE entity = ?", [entity.name])
        counts = _write_checked(con, entity, schema, loaded_at)
        for source_file, (_, loaded, unchanged, _, rejected, nulled) in counts.items():
            released = loaded + unchanged + rejected
            if not released:
                continue
            con.execute(
                """UPDATE raw.loaded_files SET rows_loaded = rows_loaded + ?,
                       rows_unchanged = rows_unchanged + ?, rows_rejected = rows_rejected + ?,
                       values_nullified = values_nullified + ?, rows_held = rows_held - ?,
                       gated_at = CASE WHEN ? > 0 THEN NULL ELSE gated_at END
                   WHERE entity = ? AND source_file = ?""",
                [loaded, unchanged, rejected, nulled, released, loaded, entity.name, source_file],
            )
            entity_report = report.entities[entity.name]
            entity_report.held_rows_loaded += loaded + unchanged
            entity_report.held_rows_rejected += rejected
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _forget_replaced_files(
    con: duckdb.DuckDBPyConnection, entity: Entity, replaced: list[_PlannedFile]
) -> None:
    """A file whose content changed replaces what it loaded before: rows, quarantine, record."""
    for item in replaced:
        log.warning("%s changed since it was loaded: replacing its rows", item.file.relative)
        source = item.file.relative
        con.execute(f"DELETE FROM raw.{entity.table} WHERE _source_file = ?", [source])
        for table in ("quarantine.violations", "quarantine.held_rows", "raw.loaded_files"):
            con.execute(
                f"DELETE FROM {table} WHERE entity = ? AND source_file = ?", [entity.name, source]
            )


def raw_summary(settings: Settings) -> str:
    """What the warehouse holds in raw and quarantine, for people (read-only)."""
    with connect(settings, read_only=True) as con:
        lines = [f"warehouse {settings.warehouse_path}", "raw tables:"]
        for entity in ENTITIES:
            time_column = next(c.name for c in entity.columns if c.type == "timestamp")
            rows, first, last = con.execute(
                f"SELECT count(*), min({time_column})::DATE, max({time_column})::DATE FROM raw.{entity.name}"
            ).fetchone()
            files = con.execute(
                "SELECT count(*) FROM raw.loaded_files WHERE entity = ?", [entity.name]
            ).fetchone()[0]
            span = f"{first} .. {last}" if rows else "-"
            versions = ""
            if entity.versioned:
                (count,) = con.execute(f"SELECT count(*) FROM raw.{entity.table}").fetchone()
                versions = f" ({count:,} versions)"
            lines.append(
                f"  {entity.name:<13} {rows:>12,} rows{versions} from {files:>5} files, "
                f"{time_column} {span}"
            )
        lines += quarantine_lines(con)
    return "\n".join(lines)


def quarantine_lines(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Bad files, held rows and the most frequent rejections, for people."""
    lines = []
    files = con.execute(
        """SELECT source_file, coalesce('column ' || column_name || ': ', '') || reason,
                  accepted_at FROM quarantine.files ORDER BY source_file"""
    ).fetchall()
    for source_file, reason, accepted_at in files:
        state = f"accepted {accepted_at:%Y-%m-%d %H:%M}" if accepted_at else "NOT ACCEPTED"
        lines.append(f"  bad file ({state}) {source_file}: {reason}")
    held = con.execute(
        """SELECT entity, reason, count(*), min(held_since) FROM quarantine.held_rows
           GROUP BY ALL ORDER BY 3 DESC LIMIT 10"""
    ).fetchall()
    for entity, reason, n, since in held:
        lines.append(f"  {n:>8,} held {entity}: {reason} (since {since:%Y-%m-%d %H:%M})")
    # Where to look first: the first row breaking each rule, with its value (or, for a
    # personal column, the value's shape).
    violations = con.execute(
        """SELECT entity, column_name, rule, action, n, source_file, source_row, value,
                  value_shape
           FROM (SELECT *, count(*) OVER reason AS n,
                        row_number() OVER (reason ORDER BY source_file, source_row) AS k
                 FROM quarantine.violations
                 WINDOW reason AS (PARTITION BY entity, column_name, rule, action))
           WHERE k = 1 ORDER BY n DESC, entity, column_name LIMIT 10"""
    ).fetchall()
    for entity, column, rule, action, n, file, row, value, shape in violations:
        detail = f", value {value!r}" if value is not None else ""
        detail = f", a value like {shape}" if shape is not None else detail
        lines.append(
            f"  {n:>8,} {entity}.{column}: {rule} -> row {action} (first: {file} row {row}{detail})"
        )
    if not lines:
        return ["quarantine: empty (every file and row met the contract)"]
    return ["quarantine (bad files, held rows, most frequent rules broken):", *lines]


def accept_bad_file(settings: Settings, source_file: str, note: str) -> None:
    """An operator accepts that a bad file stays unloaded: the raw gate lets runs go on."""
    with connect(settings) as con:
        ensure_raw_tables(con)
        (found,) = con.execute(
            "SELECT count(*) FROM quarantine.files WHERE source_file = ? AND accepted_at IS NULL",
            [source_file],
        ).fetchone()
        if not found:
            raise ContractViolation(source_file, None, "is not an unaccepted bad file")
        con.execute(
            "UPDATE quarantine.files SET accepted_at = ?, accepted_note = ? WHERE source_file = ?",
            [dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0), note, source_file],
        )
    log.warning("bad landing file %s accepted unloaded: %s", source_file, note)
