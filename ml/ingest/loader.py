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

This module runs the steps: ml/ingest/reading.py reads and stages the files,
ml/ingest/row_rules.py checks the rows and writes each where it ends, and
ml/ingest/raw_tables.py creates (and migrates) the tables.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from ml.config import Settings
from ml.contract import ENTITIES, Entity
from ml.errors import BadFile, ContractViolation, StillChanging
from ml.ingest.landing import Fingerprint, LandingFile, checksum, discover
from ml.ingest.raw_tables import ensure_raw_tables
from ml.ingest.reading import PlannedFile, parse_error, source_of, stage_files, stage_held_rows
from ml.ingest.row_rules import check_batch, write_checked
from ml.privacy.pseudonyms import pseudonym_key
from ml.warehouse import tables
from ml.warehouse.connection import connect

log = logging.getLogger(__name__)

BATCH_BYTES = 32 * 2**20
"""Files are staged and checked in batches of about this much on disk, so the first load of
a year of history for a million customers stays within memory (one batch at a time)."""


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
        tables.ensure(con, *tables.PRIVACY)
        pseudonym_key(settings).install(con)  # recognises forgotten customers (row_rules)
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
        plan: dict[str, list[PlannedFile]] = {}
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
                    source = source_of(con, entity, file, settings, staging)
                except StillChanging:
                    log.warning("%s is still being written: left for a later run", file.relative)
                    entity_report.files_still_changing += 1
                    continue
                except BadFile as bad:
                    _set_aside(con, entity.name, bad, _bad_file_sha(file), loaded_at, report)
                    continue
                plan[entity.name].append(
                    PlannedFile(file, source, sha, fingerprint, known is not None)
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


def _batches(items: list[PlannedFile]) -> list[list[PlannedFile]]:
    batches: list[list[PlannedFile]] = [[]]
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
    planned: list[PlannedFile],
    loaded_at: dt.datetime,
    settings: Settings,
    report: IngestReport,
) -> None:
    """Load files of one entity, a batch per transaction: each file's rows, quarantine and
    `loaded_files` record land together or not at all, and a batch that fails is retried whole
    by the next run. Files with the same columns and types are staged together, in path order."""
    groups: dict[tuple, list[PlannedFile]] = {}
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
                parse_error(culprit.file, culprit.error),
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
    item: PlannedFile
    error: Exception

    @property
    def file(self) -> LandingFile:
        return self.item.file

    @property
    def sha256(self) -> str:
        return self.item.sha256


def _unreadable_file(
    con: duckdb.DuckDBPyConnection, items: list[PlannedFile]
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
    items: list[PlannedFile],
    loaded_at: dt.datetime,
    settings: Settings,
    report: IngestReport,
) -> None:
    entity_report = report.entities[entity.name]
    schema = items[0].source.schema
    con.execute("BEGIN TRANSACTION")
    try:
        _forget_replaced_files(con, entity, [i for i in items if i.replaces])
        stage_files(con, items)
        check_batch(con, entity, schema, loaded_at, settings)
        counts = write_checked(con, entity, schema, loaded_at)
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
        schema = stage_held_rows(con, entity)
        check_batch(con, entity, schema, loaded_at, settings, retried=True)
        con.execute("DELETE FROM quarantine.held_rows WHERE entity = ?", [entity.name])
        counts = write_checked(con, entity, schema, loaded_at)
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
    con: duckdb.DuckDBPyConnection, entity: Entity, replaced: list[PlannedFile]
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
