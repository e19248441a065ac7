"""How a landing file is read for loading: its header checked against the contract, the SQL
that yields its rows with every text value as text, and a batch of files (or the held rows)
staged as the temporary view `batch` with the contract's columns by name (what the row rules,
ml/ingest/row_rules.py, check). Which files are data, and how they are opened, is
ml/ingest/landing.py's part.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from ml.config import Settings
from ml.contract import Entity, spelling
from ml.errors import BadFile
from ml.ingest.landing import Fingerprint, LandingFile, csv_header, readable_path
from ml.warehouse.sql import identifier, literal


@dataclass(frozen=True)
class FileSchema:
    """Source column per contract column (`None` when absent), their types, and extra columns."""

    source_names: dict[str, str | None]
    source_types: dict[str, str]
    extras: tuple[str, ...]


def parse_error(file: LandingFile, error: Exception) -> BadFile:
    # DuckDB's messages quote the offending line: keep only the first line, which says where.
    first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
    return BadFile(file.relative, None, f"cannot be parsed as {file.format.upper()}: {first_line}")


def _reader(file: LandingFile, path: Path, settings: Settings, delimiter: str = ",") -> str:
    """The SQL table function that reads one file, every text value as VARCHAR."""
    location = literal(str(path))
    compression = literal(file.compression or "none")
    if file.format == "csv":
        # Read every CSV value as text: the contract decides types, so a bad value becomes a
        # quarantine row with a reason instead of a failed load.
        return (
            f"read_csv({location}, header = true, skip = 0, delim = {literal(delimiter)}, "
            "quote = '\"', strict_mode = true, all_varchar = true, hive_partitioning = false, "
            f"compression = {compression}, encoding = {literal(settings.loading.encoding)})"
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
class Source:
    """How one file is read: the SQL that yields its columns, and what they are."""

    select: str
    """A query over the file whose columns are the file's, by their names in the file."""
    schema: FileSchema
    path: Path
    """What DuckDB reads: the file, or a plain-named link to it (ml.ingest.landing.readable_path)."""


def source_of(
    con: duckdb.DuckDBPyConnection,
    entity: Entity,
    file: LandingFile,
    settings: Settings,
    staging: Path,
) -> Source:
    """Check a file's columns, and read a text file through once (a ragged row shows only
    then), before anything is written; raises BadFile. A Parquet file's broken page shows when
    its batch is read, and then sets aside only that file (ml/ingest/loader.py)."""
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
            values = ", ".join(f"json ->> {literal(key)} AS {identifier(key)}" for key in keys)
            select = f"SELECT {values} FROM {reader}"
            described = [(key, "VARCHAR") for key in keys]
        else:
            _check_names(file, entity, pq.read_schema(path).names)
            select = f"SELECT * FROM {_reader(file, path, settings)}"
            described = con.execute(f"DESCRIBE {select}").fetchall()
        if file.format != "parquet":
            con.execute(f"SELECT count(*) FROM ({select})").fetchone()
    except (duckdb.Error, pa.ArrowException, OSError) as error:
        raise parse_error(file, error) from None
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
    return Source(select, FileSchema(source_names, source_types, extras), path)


def _contract_columns(schema: FileSchema) -> str:
    selects = [
        f"{identifier(source)} AS {identifier(column)}"
        if source
        else f"NULL AS {identifier(column)}"
        for column, source in schema.source_names.items()
    ]
    if schema.extras:
        # The names of the columns beyond the contract, never their values (ml/ingest/loader.py).
        names = ", ".join(literal(x) for x in schema.extras)
        selects.append(f"to_json([{names}]) AS _extra")
    else:
        selects.append("NULL::JSON AS _extra")
    return ", ".join(selects)


def stage_files(con: duckdb.DuckDBPyConnection, items: list[PlannedFile]) -> None:
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
        paths = ", ".join(literal(str(i.source.path)) for i in items)
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
        f"SELECT {columns}, {literal(i.file.relative)} AS _source_file, "
        f"row_number() OVER () AS _source_row, "
        f"{literal(str(i.file.partition_date)) + '::DATE' if i.file.partition_date else 'NULL::DATE'}"
        f" AS _partition_date, NULL::TIMESTAMP AS _held_since FROM ({i.source.select})"
        for i in items
    ]
    # A view: the files are read once, when the checks materialise `checked`.
    con.execute(f"CREATE OR REPLACE TEMP VIEW batch AS {' UNION ALL '.join(selects)}")


def stage_held_rows(con: duckdb.DuckDBPyConnection, entity: Entity) -> FileSchema:
    """An entity's held rows as the temporary view `batch`, their values as text again."""
    values = ", ".join(
        f"record ->> {literal(c.name)} AS {identifier(c.name)}" for c in entity.columns
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP VIEW batch AS
        SELECT {values}, h.extra AS _extra, h.source_file AS _source_file,
               h.source_row AS _source_row, f.partition_date AS _partition_date,
               h.held_since AS _held_since
        FROM quarantine.held_rows h
        LEFT JOIN raw.loaded_files f ON f.entity = h.entity AND f.source_file = h.source_file
        WHERE h.entity = {literal(entity.name)}"""
    )
    names = {c.name: c.name for c in entity.columns}
    return FileSchema(names, dict.fromkeys(names, "VARCHAR"), ())


@dataclass(frozen=True)
class PlannedFile:
    """A landing file to load: how it is read, its checksum, and whether it replaces the rows
    an earlier content of it loaded."""

    file: LandingFile
    source: Source
    sha256: str
    fingerprint: Fingerprint
    replaces: bool
