"""Forgetting a customer (the right to erasure): everywhere segflow keeps them, down to the bytes.

`forget(settings, customer_ids, emails)`:
1. Resolves the identities: the ids given and those of the addresses given, and every address
   any version of those customers had.
2. Holding the warehouse's writer lock throughout, so no run publishes them meanwhile, rewrites
   the files that hold them (ml/privacy/erasure_files.py): audience and trigger exports and their
   manifests, training sets and drift references, reports, and the landing files segflow may
   write (their new checksums are recorded as loaded, so they are not loaded again).
3. In one transaction: deletes every warehouse row of theirs (any table with a `customer_id`,
   `email` or pseudonymous `customer_key` column of theirs, and held rows naming them),
   replaces mentions of them in other
   text columns (messages, validation examples) by `[erased]`, checks that no column of any
   table still holds them, and records keyed hashes of the identities
   (`privacy.erased_identities`), so that a re-delivered landing file does not bring them back:
   ingest quarantines such rows as `erased`, without their values.
4. Rebuilds the DuckDB file: DuckDB does not overwrite the blocks that deleted rows occupied,
   so the live data is copied into a new file that replaces the old one.
5. Logs the erasure in `privacy.erasures`: when, how many rows of which table, which files,
   without the identity.

Models trained on the customer are not retrained (see docs/operations.md).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from ml.checksums import file_sha256
from ml.config import Settings
from ml.errors import ErasureError
from ml.ingest.landing import ERASURE_REQUESTS, Fingerprint, discover
from ml.privacy.erasure_files import (
    ERASED,
    NAME_CHARACTERS,
    Identities,
    files_under,
    holds_identity,
    redact_text,
    remove_csv_records,
    remove_json_lines,
    remove_parquet_rows,
    update_manifest,
)
from ml.privacy.pseudonyms import CUSTOMER_ID, EMAIL, PseudonymKey, pseudonym_key
from ml.warehouse import tables
from ml.warehouse.connection import connect

log = logging.getLogger(__name__)

IDENTITY_COLUMNS = ("customer_id", "email")
RECORD_COLUMNS = ("record",)
"""JSON columns holding a delivered row (quarantine.held_rows keeps it whole while it waits):
such a row naming an identity goes."""


@dataclass
class ErasureResult:
    erasure_id: str
    erased_at: dt.datetime
    identities_requested: int
    customers_found: int
    rows_deleted: dict[str, int] = field(default_factory=dict)
    values_redacted: dict[str, int] = field(default_factory=dict)
    files_rewritten: dict[str, int] = field(default_factory=dict)
    """Relative path under the data or landing folder -> records removed or values redacted."""
    landing_files_left: list[str] = field(default_factory=list)
    """Landing files that hold the customer but segflow may not write (a read-only delivery):
    the shop must delete or re-export them."""
    files_still_holding: list[str] = field(default_factory=list)
    warehouse_bytes: tuple[int, int] = (0, 0)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.landing_files_left and not self.files_still_holding

    def as_dict(self) -> dict:
        return {
            "erasure_id": self.erasure_id,
            "erased_at": self.erased_at.isoformat(timespec="seconds"),
            "identities_requested": self.identities_requested,
            "customers_found": self.customers_found,
            "rows_deleted": self.rows_deleted,
            "values_redacted": self.values_redacted,
            "files_rewritten": self.files_rewritten,
            "landing_files_left": self.landing_files_left,
            "files_still_holding": self.files_still_holding,
            "warehouse_bytes": {
                "before": self.warehouse_bytes[0],
                "after": self.warehouse_bytes[1],
            },
            "seconds": round(self.seconds, 1),
            "complete": self.complete,
        }

    def render(self) -> str:
        lines = [
            f"erasure {self.erasure_id} at {self.erased_at:%Y-%m-%d %H:%M:%S} UTC: "
            f"{self.identities_requested} identities requested, {self.customers_found} "
            f"customers found, {self.seconds:.1f} s",
            f"  warehouse rows deleted: {sum(self.rows_deleted.values()):,} "
            f"({', '.join(f'{t} {n:,}' for t, n in sorted(self.rows_deleted.items())) or '-'})",
        ]
        if self.values_redacted:
            lines.append(
                "  mentions replaced by [erased]: "
                + ", ".join(f"{t} {n:,}" for t, n in sorted(self.values_redacted.items()))
            )
        folders = Counter(path.split("/", 1)[0] for path in self.files_rewritten)
        lines.append(
            f"  files rewritten: {len(self.files_rewritten)} "
            f"({', '.join(f'{folder} {n}' for folder, n in sorted(folders.items())) or '-'})"
        )
        before, after = self.warehouse_bytes
        lines.append(f"  warehouse file rebuilt: {before:,} -> {after:,} bytes")
        for path in self.landing_files_left:
            lines.append(f"  STILL HELD in a landing file segflow may not write: {path}")
        for path in self.files_still_holding:
            lines.append(f"  STILL HELD in: {path}")
        return "\n".join(lines)


def _tables(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], dict[str, str]]:
    """Every base table outside `privacy` with its columns and their types."""
    columns: dict[tuple[str, str], dict[str, str]] = {}
    for schema, table, column, kind in con.execute(
        """SELECT c.table_schema, c.table_name, c.column_name, c.data_type
           FROM information_schema.columns c JOIN information_schema.tables t
             USING (table_catalog, table_schema, table_name)
           WHERE t.table_type = 'BASE TABLE' AND c.table_schema NOT IN ('privacy')
             AND t.table_catalog = current_database()
           ORDER BY c.table_schema, c.table_name, c.ordinal_position"""
    ).fetchall():
        columns.setdefault((schema, table), {})[column] = kind
    return columns


def _resolve(con: duckdb.DuckDBPyConnection, ids: set[str], emails: set[str]) -> Identities:
    """The ids of the addresses, and every address those customers ever had."""
    con.execute("CREATE OR REPLACE TEMP TABLE asked (kind VARCHAR, value VARCHAR)")
    con.executemany(
        "INSERT INTO asked VALUES (?, ?)",
        [(CUSTOMER_ID, value) for value in ids] + [(EMAIL, value) for value in emails],
    )
    if not _has_table(con, "raw", "customer_versions"):
        return Identities(frozenset(ids), frozenset(emails))
    rows = con.execute(
        """SELECT DISTINCT trim(customer_id), lower(trim(email)) FROM raw.customer_versions
           WHERE trim(customer_id) IN (SELECT value FROM asked WHERE kind = 'customer_id')
              OR lower(trim(email)) IN (SELECT value FROM asked WHERE kind = 'email')"""
    ).fetchall()
    found_ids = {customer for customer, _ in rows if customer}
    found_emails = {email for _, email in rows if email}
    return Identities(frozenset(ids | found_ids), frozenset(emails | found_emails))


def _text_pattern(identities: Identities) -> str:
    """`Identities.pattern` for DuckDB's RE2, which has no look-around: the characters around
    the identity are groups 1 and 3, kept by a replacement."""
    return f"(?i)(^|[^{NAME_CHARACTERS}])({identities.alternatives()})($|[^{NAME_CHARACTERS}])"


def _is_text(kind: str) -> bool:
    return kind in ("VARCHAR", "JSON")


def _can_hold_text(kind: str) -> bool:
    """Text, or a list, struct, map or union that may hold text."""
    return _is_text(kind) or kind.endswith("]") or kind.startswith(("STRUCT", "MAP", "UNION"))


def _sweep_warehouse(
    con: duckdb.DuckDBPyConnection, identities: Identities, result: ErasureResult
) -> None:
    """Delete the customers' rows and redact mentions of them, inside the caller's transaction."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE forgotten_ids AS SELECT unnest(?::VARCHAR[]) AS v",
        [sorted(identities.customer_ids)],
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE forgotten_emails AS SELECT unnest(?::VARCHAR[]) AS v",
        [sorted(identities.emails)],
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE forgotten_keys AS SELECT unnest(?::VARCHAR[]) AS v",
        [sorted(identities.pseudonyms)],
    )
    pattern = _text_pattern(identities)
    for (schema, table), columns in _tables(con).items():
        name = f'"{schema}"."{table}"'
        conditions = []
        if "customer_id" in columns:
            conditions.append("trim(customer_id) IN (SELECT v FROM forgotten_ids)")
        if "email" in columns:
            conditions.append("lower(trim(email)) IN (SELECT v FROM forgotten_emails)")
        if "customer_key" in columns:
            conditions.append("customer_key IN (SELECT v FROM forgotten_keys)")
        conditions.extend(
            f"regexp_matches(CAST({column} AS VARCHAR), $pattern)"
            for column in RECORD_COLUMNS
            if column in columns
        )
        if conditions:
            where = " OR ".join(conditions)
            deleted = con.execute(
                f"DELETE FROM {name} WHERE {where}",
                {"pattern": pattern} if "$pattern" in where else {},
            ).fetchone()[0]
            if deleted:
                result.rows_deleted[f"{schema}.{table}"] = deleted
        redacted = 0
        for column, kind in columns.items():
            if not _is_text(kind) or column in IDENTITY_COLUMNS:
                continue
            quoted = f'"{column}"'
            redacted += con.execute(
                f"""UPDATE {name}
                    SET {quoted} = regexp_replace({quoted}, $pattern, '\\1{ERASED}\\3', 'g')
                    WHERE regexp_matches({quoted}, $pattern)""",
                {"pattern": pattern},
            ).fetchone()[0]
        if redacted:
            result.values_redacted[f"{schema}.{table}"] = redacted


def _verify_warehouse(con: duckdb.DuckDBPyConnection, identities: Identities) -> None:
    """No column of any table may still hold an identity (read through SQL, every type cast to
    text): otherwise the transaction is rolled back and the error names the column."""
    pattern = _text_pattern(identities)
    for (schema, table), columns in _tables(con).items():
        checked = [
            f'regexp_matches(CAST("{column}" AS VARCHAR), $pattern)'
            for column, kind in columns.items()
            if _can_hold_text(kind)
        ]
        if not checked:
            continue
        left = con.execute(
            f'SELECT count(*) FROM "{schema}"."{table}" WHERE {" OR ".join(checked)}',
            {"pattern": pattern},
        ).fetchone()[0]
        if left:
            raise ErasureError(
                f"{left} rows of {schema}.{table} still name a forgotten customer after the "
                "erasure; nothing was erased (rolled back)"
            )


def _record_identities(
    con: duckdb.DuckDBPyConnection, key: PseudonymKey, identities: Identities, result: ErasureResult
) -> None:
    hashes = [(CUSTOMER_ID, key.of(CUSTOMER_ID, value)) for value in identities.customer_ids]
    hashes += [(EMAIL, key.of(EMAIL, value)) for value in identities.emails]
    con.executemany(
        """INSERT INTO privacy.erased_identities VALUES (?, ?, ?, ?)
           ON CONFLICT DO NOTHING""",
        [(kind, value, result.erasure_id, result.erased_at) for kind, value in hashes],
    )


def _rewrite_landing(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    identities: Identities,
    result: ErasureResult,
) -> None:
    """The shop's landing files that hold the customers lose their records. A file loaded as it
    was gets its new checksum recorded as loaded (and as evaluated by trigger refreshes), so the
    rewrite is not taken for a new delivery."""
    if not settings.landing_dir.is_dir():
        return
    loaded = (
        {
            (entity, source): (sha, Fingerprint(size, mtime))
            for entity, source, sha, size, mtime in con.execute(
                "SELECT entity, source_file, sha256, size_bytes, mtime_ns FROM raw.loaded_files"
            ).fetchall()
        }
        if _has_table(con, "raw", "loaded_files")
        else {}
    )
    evaluated = [
        schema
        for schema in ("published", "staging")
        if _has_table(con, schema, "trigger_evaluated_files")
    ]
    for files in discover(settings.landing_dir).files.values():
        for file in files:
            fingerprint = Fingerprint.of(file.path)
            try:
                if file.format == "parquet":
                    removed = remove_parquet_rows(file.path, identities, keep_mtime=True)
                elif file.format == "json":
                    removed = remove_json_lines(
                        file.path, identities, settings.loading.encoding, keep_mtime=True
                    )
                else:
                    removed = remove_csv_records(
                        file.path, identities, settings.loading.encoding, keep_mtime=True
                    )
            except (OSError, ValueError, UnicodeDecodeError):
                # Not ours to write (a read-only delivery), or a file the loader sets aside as
                # unreadable: a byte search tells whether it names them.
                if holds_identity(file.path, identities):
                    result.landing_files_left.append(file.relative)
                continue
            if not removed:
                continue
            result.files_rewritten[f"landing/{file.relative}"] = removed
            previous = loaded.get((file.entity, file.relative))
            if previous is None or previous[1] != fingerprint:
                continue  # not loaded as it was: the loader takes the rewritten file as new
            sha, now = file_sha256(file.path), Fingerprint.of(file.path)
            con.execute(
                """UPDATE raw.loaded_files SET sha256 = ?, size_bytes = ?, mtime_ns = ?,
                       rows_in_file = rows_in_file - ?
                   WHERE entity = ? AND source_file = ?""",
                [sha, now.size, now.mtime_ns, removed, file.entity, file.relative],
            )
            for schema in evaluated:
                con.execute(
                    f"""UPDATE {schema}.trigger_evaluated_files SET sha256 = ?
                        WHERE entity = ? AND source_file = ? AND sha256 = ?""",
                    [sha, file.entity, file.relative, previous[0]],
                )


def _has_table(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return (schema, table) in _tables(con)


def _rewrite_data_files(settings: Settings, identities: Identities, result: ErasureResult) -> None:
    """Exports, training sets, reports: every file under the data folder but the warehouse,
    the keys and the landing folder."""
    skip = [
        settings.warehouse_path,
        settings.warehouse_path.with_name(settings.warehouse_path.name + ".wal"),
        settings.warehouse_path.with_name(settings.warehouse_path.name + ".tmp"),
        settings.keys_dir,
        settings.landing_dir,
    ]
    rewritten_csv: dict[Path, dict[str, int]] = {}
    for path in files_under(settings.data_dir, skip):
        name = path.name.lower()
        if name.startswith(".") and name.endswith(".erasing"):
            path.unlink()  # left by an interrupted erasure
            continue
        if name.endswith(".csv"):
            changed = remove_csv_records(path, identities)
            if changed:
                rewritten_csv.setdefault(path.parent, {})[path.name] = changed
        elif name.endswith(".parquet"):
            changed = remove_parquet_rows(path, identities)
        elif name.endswith((".json", ".jsonl", ".html", ".txt", ".md", ".yaml", ".yml", ".log")):
            changed = redact_text(path, identities)
        else:
            changed = 0
        if changed:
            result.files_rewritten[path.relative_to(settings.data_dir).as_posix()] = changed
    for folder, removed in rewritten_csv.items():
        update_manifest(folder, removed, result.erased_at)
    for path in files_under(settings.data_dir, skip):
        if holds_identity(path, identities):
            result.files_still_holding.append(path.relative_to(settings.data_dir).as_posix())


def rebuild_warehouse(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Copy the live data of the open warehouse into a new file and put it in the old one's
    place, while `con` still holds the old file's lock: the blocks deleted rows occupied stay
    behind in the old file, which is then gone."""
    fresh = path.with_name(f".{path.name}.rebuilding")
    fresh.unlink(missing_ok=True)
    con.execute("CHECKPOINT")
    database = con.execute("SELECT current_database()").fetchone()[0]
    con.execute(f"ATTACH '{fresh}' AS rebuilt")
    try:
        con.execute(f'COPY FROM DATABASE "{database}" TO rebuilt')
    finally:
        con.execute("DETACH rebuilt")
    os.replace(fresh, path)


def forget(
    settings: Settings,
    customer_ids: set[str] | frozenset[str] = frozenset(),
    emails: set[str] | frozenset[str] = frozenset(),
    *,
    source: str = "command line",
) -> ErasureResult:
    """Forget the customers with these ids or addresses everywhere segflow keeps data."""
    started = time.monotonic()
    ids = {value.strip() for value in customer_ids if value and value.strip()}
    addresses = {value.strip().lower() for value in emails if value and value.strip()}
    if not ids and not addresses:
        raise ErasureError("nothing to forget: give at least one customer id or address")
    key = pseudonym_key(settings)
    result = ErasureResult(
        erasure_id=uuid.uuid4().hex[:12],
        erased_at=dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0),
        identities_requested=len(ids) + len(addresses),
        customers_found=0,
    )
    before = settings.warehouse_path.stat().st_size if settings.warehouse_path.exists() else 0
    with connect(settings) as con:
        tables.ensure(con, *tables.PRIVACY)
        identities = _resolve(con, ids, addresses)
        identities = Identities(
            identities.customer_ids,
            identities.emails,
            frozenset(key.of(CUSTOMER_ID, value) for value in identities.customer_ids),
        )
        result.customers_found = (
            con.execute(
                "SELECT count(DISTINCT customer_id) FROM raw.customer_versions "
                "WHERE trim(customer_id) IN (SELECT unnest(?::VARCHAR[]))",
                [sorted(identities.customer_ids)],
            ).fetchone()[0]
            if _has_table(con, "raw", "customer_versions")
            else 0
        )
        con.execute("BEGIN TRANSACTION")
        try:
            _rewrite_landing(con, settings, identities, result)
            _rewrite_data_files(settings, identities, result)
            _sweep_warehouse(con, identities, result)
            _verify_warehouse(con, identities)
            _record_identities(con, key, identities, result)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        rebuild_warehouse(con, settings.warehouse_path)
    result.warehouse_bytes = (before, settings.warehouse_path.stat().st_size)
    result.seconds = time.monotonic() - started
    with connect(settings) as con:
        con.execute(
            "INSERT INTO privacy.erasures VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                result.erasure_id,
                result.erased_at,
                source,
                result.identities_requested,
                result.customers_found,
                json.dumps(result.rows_deleted),
                json.dumps(result.values_redacted),
                json.dumps(dict(Counter(path.split("/", 1)[0] for path in result.files_rewritten))),
                len(result.landing_files_left),
                len(result.files_still_holding),
                result.seconds,
            ],
        )
    if not result.complete:
        log.warning(
            "erasure %s: %d files still hold the customers (listed in the result): delete or "
            "re-export them",
            result.erasure_id,
            len(result.landing_files_left) + len(result.files_still_holding),
        )
    log.info(
        "erasure %s: %d identities, %d customers found, %s warehouse rows deleted, %d files "
        "rewritten in %.1f s",
        result.erasure_id,
        result.identities_requested,
        result.customers_found,
        f"{sum(result.rows_deleted.values()):,}",
        len(result.files_rewritten),
        result.seconds,
    )
    return result


def read_identities(path: Path, encoding: str = "utf-8") -> tuple[set[str], set[str]]:
    """The ids and addresses of a file of people to forget (CSV with a `customer_id` column, an
    `email` column or both; a row may fill either)."""
    relative = path.name
    with path.open(encoding=encoding, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip().lower() for name in reader.fieldnames or []]
        if not set(columns) & set(IDENTITY_COLUMNS):
            raise ErasureError(
                f"{relative}: has no customer_id or email column (header: "
                f"{', '.join(columns) or 'none'}); nothing was erased"
            )
        ids, addresses = set(), set()
        for number, row in enumerate(reader, start=2):
            row = {(key or "").strip().lower(): (value or "").strip() for key, value in row.items()}
            if not row.get("customer_id") and not row.get("email"):
                raise ErasureError(
                    f"{relative}, line {number}: neither customer_id nor email is filled in; "
                    "nothing was erased"
                )
            if row.get("customer_id"):
                ids.add(row["customer_id"])
            if row.get("email"):
                addresses.add(row["email"])
    return ids, addresses


def forget_requested(settings: Settings) -> ErasureResult | None:
    """Forget everyone named in the landing folder's erasure request files (all at once), then
    delete the files: they name the people themselves. None when no request is waiting."""
    folder = settings.landing_dir / ERASURE_REQUESTS
    files = sorted(
        path
        for path in (folder.iterdir() if folder.is_dir() else ())
        if path.is_file() and path.suffix.lower() == ".csv" and not path.name.startswith((".", "_"))
    )
    if not files:
        return None
    ids: set[str] = set()
    addresses: set[str] = set()
    for path in files:
        more_ids, more_addresses = read_identities(path, settings.loading.encoding)
        ids |= more_ids
        addresses |= more_addresses
    result = forget(settings, ids, addresses, source=f"{ERASURE_REQUESTS}: {len(files)} files")
    for path in files:
        path.unlink()
    return result
