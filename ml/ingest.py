"""Landing files -> `raw` tables in the warehouse, with the data contract enforced.

What a run does, for the landing folder and an as-of date:
1. Finds every `.csv` / `.parquet` file per entity folder whose Hive partition
   (`date=YYYY-MM-DD`) is not after the as-of date (unpartitioned files always count).
2. Skips files already loaded with the same content (sha256), so loading twice is a no-op;
   a file whose content changed replaces the rows it loaded before.
3. Checks each new file's columns before anything is written: a missing required entity or
   column, or a file that cannot be parsed, raises `ContractViolation` naming the file,
   the column and the rule.
4. Checks every row. A broken rule on a required column (bad type, missing value, negative
   amount, unknown event type, duplicate id, unknown customer, timestamp after the load time)
   keeps the row out of raw and records it in `quarantine.violations` with the reason. A broken
   rule on an optional column keeps the row with that value set to null, and records the
   original value there too. Nothing is silently dropped.
5. Writes in transactions of a batch of files (about 32 MiB): every file's rows, quarantine and
   load record land together or not at all, so an interrupted run is completed by the next.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from ml.config import Settings
from ml.contract import ENTITIES, Column, Entity, landing_format
from ml.warehouse import connect

log = logging.getLogger(__name__)

BATCH_BYTES = 32 * 2**20
"""Files are staged and checked in batches of about this much on disk, so the first load of
a year of history for a million customers stays within memory (one batch at a time)."""
PARTITION_PATTERN = re.compile(r"^date=(.+)$")


class ContractViolation(Exception):
    """Landing data breaks the contract so that nothing can be loaded."""

    def __init__(self, file: str, column: str | None, rule: str):
        self.file, self.column, self.rule = file, column, rule
        where = f"{file}: column '{column}'" if column else file
        super().__init__(f"{where}: {rule}")


@dataclass(frozen=True)
class LandingFile:
    entity: str
    path: Path
    relative: str
    """Path inside the landing folder: how raw rows and quarantine name their source."""
    format: str
    partition_date: dt.date | None


@dataclass
class EntityReport:
    files_loaded: int = 0
    files_unchanged: int = 0
    files_replaced: int = 0
    rows_loaded: int = 0
    rows_rejected: int = 0
    values_nullified: int = 0


@dataclass
class IngestReport:
    as_of: dt.date | None
    loaded_at: dt.datetime
    entities: dict[str, EntityReport] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"ingest as of {self.as_of or 'all partitions'} at {self.loaded_at:%Y-%m-%d %H:%M:%S} UTC"
        ]
        for name, r in self.entities.items():
            lines.append(
                f"  {name:<13} files new {r.files_loaded:>4}, replaced {r.files_replaced:>3}, "
                f"unchanged {r.files_unchanged:>4} | rows loaded {r.rows_loaded:>10,}, "
                f"quarantined {r.rows_rejected:>7,}, values nulled {r.values_nullified:>6,}"
            )
        return "\n".join(lines)


def normalize_column_name(name: str) -> str:
    """`Order ID`, `order-id` and `ORDER_ID` all become `order_id`."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# --------------------------------------------------------------------------- discovery


def _partition_date(relative: Path) -> dt.date | None:
    for part in relative.parts[:-1]:
        match = PARTITION_PATTERN.match(part)
        if match:
            try:
                return dt.date.fromisoformat(match.group(1))
            except ValueError:
                raise ContractViolation(
                    str(relative),
                    None,
                    f"partition folder '{part}' is not a date (date=YYYY-MM-DD)",
                ) from None
    return None


def discover_landing_files(landing_dir: Path) -> dict[str, list[LandingFile]]:
    """Every landing file per contract entity, sorted by path (which fixes the load order)."""
    if not landing_dir.is_dir():
        raise ContractViolation(str(landing_dir), None, "landing folder does not exist")
    known = {e.name for e in ENTITIES}
    for child in sorted(landing_dir.iterdir()):
        if child.is_dir() and child.name not in known and not child.name.startswith((".", "_")):
            log.warning("landing folder %s is not a contract entity; ignored", child)
    found: dict[str, list[LandingFile]] = {}
    for entity in ENTITIES:
        folder = landing_dir / entity.name
        files = []
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                fmt = landing_format(path.name)
                if fmt is None or not path.is_file():
                    continue
                relative = path.relative_to(landing_dir)
                files.append(
                    LandingFile(
                        entity.name, path, relative.as_posix(), fmt, _partition_date(relative)
                    )
                )
        if entity.required and not files:
            raise ContractViolation(
                str(folder),
                None,
                f"required entity '{entity.name}' has no .csv or .parquet files",
            )
        found[entity.name] = files
    return found


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- warehouse tables


def ensure_raw_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
    con.execute("CREATE SCHEMA IF NOT EXISTS quarantine")
    for entity in ENTITIES:
        columns = ", ".join(f"{_quote(c.name)} {c.sql_type}" for c in entity.columns)
        con.execute(
            f"CREATE TABLE IF NOT EXISTS raw.{entity.name} ({columns}, "
            "_extra JSON, _source_file VARCHAR NOT NULL, _source_row BIGINT NOT NULL)"
        )
    con.execute(
        """CREATE TABLE IF NOT EXISTS raw.loaded_files (
            entity VARCHAR NOT NULL, source_file VARCHAR NOT NULL, sha256 VARCHAR NOT NULL,
            size_bytes BIGINT NOT NULL, mtime_ns BIGINT NOT NULL, partition_date DATE,
            rows_in_file BIGINT NOT NULL, rows_loaded BIGINT NOT NULL,
            rows_rejected BIGINT NOT NULL, values_nullified BIGINT NOT NULL,
            loaded_at TIMESTAMP NOT NULL, PRIMARY KEY (entity, source_file))"""
    )
    con.execute(
        """CREATE TABLE IF NOT EXISTS quarantine.violations (
            entity VARCHAR NOT NULL, source_file VARCHAR NOT NULL, source_row BIGINT NOT NULL,
            column_name VARCHAR NOT NULL, rule VARCHAR NOT NULL, value VARCHAR,
            action VARCHAR NOT NULL, record JSON NOT NULL, loaded_at TIMESTAMP NOT NULL)"""
    )


# --------------------------------------------------------------------------- reading files


@dataclass(frozen=True)
class _FileSchema:
    """Source column per contract column (`None` when absent), their types, and extra columns."""

    source_names: dict[str, str | None]
    source_types: dict[str, str]
    extras: tuple[str, ...]


CSV_DELIMITERS = (",", ";", "\t", "|")


def _csv_delimiter(path: Path) -> str:
    """The delimiter of the header line. DuckDB's sniffer, left alone, may decide that a file
    with one ragged row has no header and skip rows silently; with the dialect fixed, a ragged
    row is an error that names the file."""
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        header = handle.readline()
    return max(CSV_DELIMITERS, key=header.count)


def _reader(file: LandingFile) -> str:
    path = _literal(str(file.path))
    if file.format == "csv":
        # Read every CSV value as text: the contract decides types, so a bad value becomes a
        # quarantine row with a reason instead of a failed load.
        delimiter = _literal(_csv_delimiter(file.path))
        return (
            f"read_csv({path}, header = true, skip = 0, delim = {delimiter}, quote = '\"', "
            "strict_mode = true, all_varchar = true, hive_partitioning = false)"
        )
    return f"read_parquet({path}, hive_partitioning = false)"


def _file_schema(con: duckdb.DuckDBPyConnection, entity: Entity, file: LandingFile) -> _FileSchema:
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {_reader(file)}").fetchall()
        if file.format == "csv":
            # A ragged row deep in a CSV only shows when the whole file is read: read it now,
            # so that a broken file stops the run before anything is written.
            con.execute(f"SELECT count(*) FROM {_reader(file)}").fetchone()
    except duckdb.Error as error:
        raise ContractViolation(
            file.relative, None, f"cannot be parsed as {file.format.upper()}: {error}"
        ) from None
    by_normalized: dict[str, tuple[str, str]] = {}
    for name, type_, *_ in described:
        normalized = normalize_column_name(name)
        if normalized in by_normalized:
            raise ContractViolation(
                file.relative,
                normalized,
                f"appears twice ('{by_normalized[normalized][0]}' and '{name}'); "
                "column names are case-insensitive",
            )
        by_normalized[normalized] = (name, type_)
    for required in entity.must_have():
        if required not in by_normalized:
            raise ContractViolation(
                file.relative,
                required,
                f"required column of {entity.name} is missing "
                f"(the file has: {', '.join(name for name, *_ in described)})",
            )
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
    return _FileSchema(source_names, source_types, extras)


def _stage_group(
    con: duckdb.DuckDBPyConnection, files: list[LandingFile], schema: _FileSchema, landing_dir: Path
) -> None:
    """The files of one schema as the temporary view `batch`, contract columns by name."""
    selects = []
    for column, source in schema.source_names.items():
        selects.append(
            f"{_quote(source)} AS {_quote(column)}" if source else f"NULL AS {_quote(column)}"
        )
    if schema.extras:
        pairs = ", ".join(f"{_literal(x)}: {_quote(x)}::VARCHAR" for x in schema.extras)
        selects.append(f"to_json({{{pairs}}}) AS _extra")
    else:
        selects.append("NULL::JSON AS _extra")
    columns = ", ".join(selects)
    if files[0].format == "parquet":
        # One scan for all files; the reader numbers rows within each file.
        paths = ", ".join(_literal(str(f.path)) for f in files)
        prefix = len(str(landing_dir)) + 2
        selects = [
            f"SELECT {columns}, substr(filename, {prefix}) AS _source_file, "
            "file_row_number + 1 AS _source_row FROM read_parquet("
            f"[{paths}], filename = true, file_row_number = true, hive_partitioning = false)"
        ]
    else:
        # A window over one plain CSV scan keeps file order: row 1 is the first data row.
        selects = [
            f"SELECT {columns}, {_literal(f.relative)} AS _source_file, "
            f"row_number() OVER () AS _source_row FROM {_reader(f)}"
            for f in files
        ]
    # A view: the files are read once, when the checks materialise `checked`.
    con.execute(f"CREATE OR REPLACE TEMP VIEW batch AS {' UNION ALL '.join(selects)}")


def _unreadable_file(
    con: duckdb.DuckDBPyConnection, files: list[LandingFile]
) -> ContractViolation | None:
    """The file of a batch that cannot be read to the end (a corrupt Parquet page passes the
    schema check and fails only when the data is read), if any."""
    for file in files:
        try:
            con.execute(f"SELECT count(*) FROM {_reader(file)}").fetchone()
        except duckdb.Error as error:
            return ContractViolation(
                file.relative, None, f"cannot be parsed as {file.format.upper()}: {error}"
            )
    return None


# --------------------------------------------------------------------------- row rules


def _source_value(column: str, source_type: str | None) -> str:
    """The value as the file has it; text trimmed and empty text as null (SQL)."""
    ref = _quote(column)
    if source_type is None:
        return "NULL::VARCHAR"
    if source_type == "VARCHAR":
        return f"nullif(trim({ref}), '')"
    return ref


def _typed(column: Column, source_type: str | None) -> str:
    """The value cast to its contract type, null when it cannot be (SQL)."""
    if source_type is None:
        return f"NULL::{column.sql_type}"
    value = _source_value(column.name, source_type)
    if column.accepted:
        return f"lower({value}::VARCHAR)"
    if column.type == "timestamp":
        # Text without an offset is UTC; with an offset it is converted to UTC.
        return f"try_cast({value} AS TIMESTAMPTZ)::TIMESTAMP"
    return f"try_cast({value} AS {column.sql_type})"


def _rules(column: Column, current_year: int, loaded_at: dt.datetime) -> list[tuple[str, str]]:
    """(rule text, SQL condition that is true when the rule is broken), on `t_<col>`/`s_<col>`."""
    typed, text = _quote("t_" + column.name), _quote("s_" + column.name)
    rules = []
    if column.required:
        rules.append(("required value is missing", f"{text} IS NULL"))
    if column.type != "string":
        rules.append((f"not a valid {column.type}", f"{text} IS NOT NULL AND {typed} IS NULL"))
    if column.accepted:
        allowed = ", ".join(_literal(v) for v in column.accepted)
        rules.append(
            (f"must be one of {', '.join(column.accepted)}", f"{typed} NOT IN ({allowed})")
        )
    if column.minimum is not None:
        rules.append((f"must be >= {column.minimum:g}", f"{typed} < {column.minimum}"))
    maximum = current_year if column.maximum_is_current_year else column.maximum
    if maximum is not None:
        rules.append((f"must be <= {maximum:g}", f"{typed} > {maximum}"))
    if column.pattern:
        rules.append(
            (
                f"must be {column.pattern_rule}",
                f"NOT regexp_full_match({typed}, {_literal(column.pattern)})",
            )
        )
    if column.not_in_future:
        rules.append(
            (
                f"must not be later than the load time ({loaded_at:%Y-%m-%d %H:%M:%S} UTC)",
                f"{typed} > TIMESTAMP '{loaded_at:%Y-%m-%d %H:%M:%S}'",
            )
        )
    return rules


def _check_batch(
    con: duckdb.DuckDBPyConnection,
    entity: Entity,
    schema: _FileSchema,
    loaded_at: dt.datetime,
) -> str:
    """Turn `batch` into `checked`: typed columns plus a list of violations per row.

    Returns the SQL expression that rebuilds a row's original record (for quarantine)."""
    selects, conditions, violations = [], [], []
    for column in entity.columns:
        source_type = schema.source_types.get(column.name)
        source = _quote("s_" + column.name)
        selects.append(f"{_source_value(column.name, source_type)} AS {source}")
        selects.append(f"{_typed(column, source_type)} AS {_quote('t_' + column.name)}")
        action = "rejected" if column.rejects_row else "nulled"
        for rule, broken in _rules(column, loaded_at.year, loaded_at):
            conditions.append(f"coalesce({broken}, false)")
            violations.append(
                f"CASE WHEN coalesce({broken}, false) THEN {{'column_name': {_literal(column.name)}, "
                f"'rule': {_literal(rule)}, 'value': {source}::VARCHAR, "
                f"'action': {_literal(action)}}} END"
            )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE checked AS
        SELECT *,
            -- Most rows break no rule: test that cheaply before building the list.
            CASE WHEN {" OR ".join(conditions) or "false"}
                 THEN list_filter([{", ".join(violations)}], lambda v: v IS NOT NULL)
                 ELSE [] END AS _violations
        FROM (SELECT {", ".join(selects)}, _extra, _source_file, _source_row FROM batch)"""
    )
    _check_keys_and_references(con, entity)
    return (
        "to_json({"
        + ", ".join(
            f"{_literal(source)}: {_quote('s_' + column)}::VARCHAR"
            for column, source in schema.source_names.items()
            if source is not None
        )
        + "})"
    )


def _check_keys_and_references(con: duckdb.DuckDBPyConnection, entity: Entity) -> None:
    """Add duplicate-key and unknown-customer violations, among rows not already rejected.

    The first occurrence of a key wins (in raw already, else the first by file and row); the
    work is hash joins and aggregates, and only the rows that break a rule are updated."""
    key, source_key = _quote("t_" + entity.key), _quote("s_" + entity.key)
    passing = "NOT list_contains(list_transform(_violations, lambda v: v.action), 'rejected')"

    def unique_rule(first_seen: str) -> str:
        return (
            f"{{'column_name': {_literal(entity.key)}, "
            f"'rule': 'must be unique (first seen in ' || {first_seen} || ')', "
            "'value': p.s_key, 'action': 'rejected'}"
        )

    orphan = ""
    if entity.references_customers:
        orphan = """
            WHEN known.customer_id IS NULL
            THEN {'column_name': 'customer_id',
                  'rule': 'must reference a known customer (no such customer_id in customers)',
                  'value': p.s_customer_id, 'action': 'rejected'}"""
    customer_columns = ", t_customer_id, s_customer_id" if entity.references_customers else ""
    customer_join = (
        "LEFT JOIN raw.customers known ON known.customer_id = p.t_customer_id"
        if entity.references_customers
        else ""
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE extra_violations AS
        WITH passing AS (
            SELECT {key} AS k, {source_key}::VARCHAR AS s_key, _source_file, _source_row
                   {customer_columns}
            FROM checked WHERE {passing}
        ),
        repeated AS (
            SELECT k, min({{'f': _source_file, 'r': _source_row}}) AS first
            FROM passing GROUP BY k HAVING count(*) > 1
        ),
        prior AS (
            SELECT {_quote(entity.key)} AS k, min(_source_file || ' row ' || _source_row) AS seen
            FROM raw.{entity.name}
            WHERE {_quote(entity.key)} IN (SELECT k FROM passing)
            GROUP BY 1
        )
        SELECT p._source_file, p._source_row,
            CASE
                WHEN prior.k IS NOT NULL THEN {unique_rule("prior.seen")}
                WHEN repeated.k IS NOT NULL
                     AND (p._source_file <> repeated.first.f OR p._source_row <> repeated.first.r)
                THEN {unique_rule("repeated.first.f || ' row ' || repeated.first.r")}
                {orphan}
            END AS v
        FROM passing p
        LEFT JOIN repeated ON repeated.k = p.k
        LEFT JOIN prior ON prior.k = p.k
        {customer_join}"""
    )
    con.execute(
        """UPDATE checked SET _violations = list_append(checked._violations, e.v)
        FROM extra_violations e
        WHERE e.v IS NOT NULL
          AND checked._source_file = e._source_file AND checked._source_row = e._source_row"""
    )


def _write_checked(
    con: duckdb.DuckDBPyConnection, entity: Entity, record: str, loaded_at: dt.datetime
) -> dict:
    """Append passing rows to raw and every violation to quarantine; counts per source file."""
    rejected = "list_contains(list_transform(_violations, lambda v: v.action), 'rejected')"
    nulled = "list_filter(_violations, lambda v: v.action = 'nulled')"
    values = ", ".join(
        f"CASE WHEN list_contains(_nulled, {_literal(c.name)}) THEN NULL ELSE {_quote('t_' + c.name)} END"
        for c in entity.columns
    )
    con.execute(
        f"""INSERT INTO raw.{entity.name}
        SELECT {values}, _extra, _source_file, _source_row
        FROM (SELECT *, list_transform({nulled}, lambda v: v.column_name) AS _nulled
              FROM checked WHERE NOT {rejected})"""
    )
    con.execute(
        f"""INSERT INTO quarantine.violations
        SELECT {_literal(entity.name)}, _source_file, _source_row, v.column_name, v.rule, v.value,
               v.action, _record, TIMESTAMP '{loaded_at:%Y-%m-%d %H:%M:%S}'
        FROM (SELECT _source_file, _source_row, {record} AS _record, unnest(_violations) AS v
              FROM checked WHERE len(_violations) > 0)
        ORDER BY _source_file, _source_row, v.column_name"""
    )
    counts = con.execute(
        f"""SELECT _source_file, count(*),
                   count(*) FILTER (WHERE NOT {rejected}),
                   count(*) FILTER (WHERE {rejected}),
                   coalesce(sum(len({nulled})) FILTER (WHERE NOT {rejected}), 0)
            FROM checked GROUP BY _source_file"""
    ).fetchall()
    return {row[0]: row[1:] for row in counts}


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class _PlannedFile:
    file: LandingFile
    schema: _FileSchema
    sha256: str
    replaces: bool


def ingest_landing(
    settings: Settings,
    as_of: dt.date | None = None,
    loaded_at: dt.datetime | None = None,
) -> IngestReport:
    """Load every new landing file up to `as_of` (all partitions when None) into raw."""
    loaded_at = (loaded_at or dt.datetime.now(dt.UTC)).replace(tzinfo=None, microsecond=0)
    discovered = discover_landing_files(settings.landing_dir)
    report = IngestReport(as_of=as_of, loaded_at=loaded_at)

    with connect(settings) as con:
        ensure_raw_tables(con)
        previous = {
            (entity, source): (sha, size, mtime)
            for entity, source, sha, size, mtime in con.execute(
                "SELECT entity, source_file, sha256, size_bytes, mtime_ns FROM raw.loaded_files"
            ).fetchall()
        }
        # Decide what to load and check every new file's columns before writing anything.
        plan: dict[str, list[_PlannedFile]] = {}
        for entity in ENTITIES:
            entity_report = report.entities.setdefault(entity.name, EntityReport())
            plan[entity.name] = []
            for file in discovered[entity.name]:
                if (
                    as_of is not None
                    and file.partition_date is not None
                    and file.partition_date > as_of
                ):
                    continue
                stat = file.path.stat()
                known = previous.get((entity.name, file.relative))
                if known and (known[1], known[2]) == (stat.st_size, stat.st_mtime_ns):
                    entity_report.files_unchanged += 1
                    continue
                sha = file_sha256(file.path)
                if known and known[0] == sha:
                    entity_report.files_unchanged += 1
                    continue
                schema = _file_schema(con, entity, file)
                plan[entity.name].append(_PlannedFile(file, schema, sha, known is not None))

        for entity in ENTITIES:
            if plan[entity.name]:
                _load_entity(
                    con, entity, plan[entity.name], settings.landing_dir, loaded_at, report
                )
    log.info("%s", report.summary())
    return report


def _batches(items: list[_PlannedFile]) -> list[list[_PlannedFile]]:
    batches: list[list[_PlannedFile]] = [[]]
    size = 0
    for item in items:
        file_size = item.file.path.stat().st_size
        if batches[-1] and size + file_size > BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += file_size
    return batches


def _load_entity(
    con: duckdb.DuckDBPyConnection,
    entity: Entity,
    planned: list[_PlannedFile],
    landing_dir: Path,
    loaded_at: dt.datetime,
    report: IngestReport,
) -> None:
    """Load files of one entity, a batch per transaction: each file's rows, quarantine and
    `loaded_files` record land together or not at all, and a batch that fails is retried whole
    by the next run. Files with the same columns and types are staged together, in path order."""
    entity_report = report.entities[entity.name]
    groups: dict[tuple, list[_PlannedFile]] = {}
    for item in planned:
        schema = item.schema
        signature = (
            item.file.format,
            tuple(schema.source_names.items()),
            tuple(schema.source_types.items()),
            schema.extras,
        )
        groups.setdefault(signature, []).append(item)
    for items in (batch for group in groups.values() for batch in _batches(group)):
        con.execute("BEGIN TRANSACTION")
        try:
            _forget_replaced_files(con, entity, [i for i in items if i.replaces])
            _stage_group(con, [i.file for i in items], items[0].schema, landing_dir)
            try:
                record = _check_batch(con, entity, items[0].schema, loaded_at)
            except duckdb.Error:
                culprit = _unreadable_file(con, [i.file for i in items])
                if culprit:
                    raise culprit from None
                raise
            counts = _write_checked(con, entity, record, loaded_at)
            records = []
            for item in items:
                rows_in_file, loaded, rejected, nulled = counts.get(
                    item.file.relative, (0, 0, 0, 0)
                )
                stat = item.file.path.stat()
                records.append(
                    {
                        "entity": entity.name,
                        "source_file": item.file.relative,
                        "sha256": item.sha256,
                        "size_bytes": stat.st_size,
                        "mtime_ns": stat.st_mtime_ns,
                        "partition_date": item.file.partition_date,
                        "rows_in_file": rows_in_file,
                        "rows_loaded": loaded,
                        "rows_rejected": rejected,
                        "values_nullified": nulled,
                        "loaded_at": loaded_at,
                    }
                )
            loaded_files = pa.Table.from_pylist(records)  # noqa: F841  (read by name in SQL)
            con.execute("INSERT INTO raw.loaded_files BY NAME SELECT * FROM loaded_files")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        for item, loaded_file in zip(items, records, strict=True):
            if item.replaces:
                entity_report.files_replaced += 1
            else:
                entity_report.files_loaded += 1
            entity_report.rows_loaded += loaded_file["rows_loaded"]
            entity_report.rows_rejected += loaded_file["rows_rejected"]
            entity_report.values_nullified += loaded_file["values_nullified"]


def _forget_replaced_files(
    con: duckdb.DuckDBPyConnection, entity: Entity, replaced: list[_PlannedFile]
) -> None:
    """A file whose content changed replaces what it loaded before: rows, quarantine, record."""
    for item in replaced:
        log.warning("%s changed since it was loaded: replacing its rows", item.file.relative)
        source = item.file.relative
        con.execute(f"DELETE FROM raw.{entity.name} WHERE _source_file = ?", [source])
        for table in ("quarantine.violations", "raw.loaded_files"):
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
            lines.append(
                f"  {entity.name:<13} {rows:>12,} rows from {files:>5} files, {time_column} {span}"
            )
        violations = con.execute(
            """SELECT entity, column_name, rule, action, count(*) AS n FROM quarantine.violations
               GROUP BY ALL ORDER BY n DESC, entity, column_name LIMIT 10"""
        ).fetchall()
        if violations:
            lines.append("quarantine (most frequent):")
            for entity, column, rule, action, n in violations:
                lines.append(f"  {n:>8,} {entity}.{column}: {rule} -> row {action}")
        else:
            lines.append("quarantine: empty (every row met the contract)")
    return "\n".join(lines)
