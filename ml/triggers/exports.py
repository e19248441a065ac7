"""Write-audit-publish of a trigger refresh: the delta export an e-mail tool picks up.

1. Write: ml.triggers.refresh.stage_refresh staged the refresh's members, suppressions and the files it
   evaluated.
2. Audit: the triggers gate (ml.quality.gates.run_triggers_gate) validated them.
3. Publish: consent is checked once more, since a daily run may have loaded an unsubscribe or
   published a suppression after the evaluation, and the newer knowledge wins. The folder
   `exports/triggers/<refresh id>/` is built under a temporary name: `<trigger>.csv` per
   trigger with its e-mailable treatment members, `suppressions.csv` (customer_id, reason,
   occurred_at: no addresses, the contract sends those only for e-mailable customers) and
   `manifest.json` (it records the spreadsheet formula rule, applied to every file, and the
   cells it neutralised: ml/csv_exports.py). Then, in one transaction, the members,
   suppressions, evaluated files and the refresh's record go into `published.*`, the folder is
   renamed into place and the transaction commits. A failure publishes nothing and leaves the files unevaluated: the next
   refresh takes them up.

A refresh with no member and no new suppression writes no folder; it records that its files
were evaluated. Publishing a refresh that is published already does nothing (a retried task).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import uuid
from pathlib import Path

import duckdb

from ml.checksums import file_sha256
from ml.config import Settings
from ml.csv_exports import formula_rule_summary, write_csv
from ml.errors import TriggerError
from ml.ingest.loader import ingest_landing
from ml.quality.gates import run_raw_gate, run_triggers_gate
from ml.segments.consent import create_current_suppressions
from ml.triggers.refresh import (
    create_latest_segments,
    latest_daily_publication,
    stage_refresh,
    staged_summary,
)
from ml.warehouse import tables
from ml.warehouse.connection import connect, table_exists

log = logging.getLogger(__name__)

TRIGGER_EXPORT_COLUMNS = {
    "customer_id": "m.customer_id",
    "email": "lower(trim(c.email))",
    "event_at": "strftime(m.event_at, '%Y-%m-%dT%H:%M:%SZ')",
    "event_detail": "m.event_detail",
    "segment": "l.segment",
    "rfm_segment": "l.rfm_segment",
    "best_send_hour": "l.best_send_hour",
}
"""A trigger export's columns: the event that entered the customer, and their latest segment
(empty for a customer the daily run has not published yet)."""
SUPPRESSIONS_FILE = "suppressions.csv"


def _write_exports(
    con: duckdb.DuckDBPyConnection,
    refresh_id: str,
    triggers: list[str],
    folder: Path,
    manifest: dict,
) -> dict:
    """The refresh's files and manifest into `folder`; returns the manifest."""
    folder.mkdir(mode=0o700, parents=False)
    select = ", ".join(f"{expr} AS {name}" for name, expr in TRIGGER_EXPORT_COLUMNS.items())
    entries, written = {}, {}
    for trigger in triggers:
        path = folder / f"{trigger}.csv"
        written[path.name] = write_csv(
            con,
            f"""SELECT {select} FROM publishable m
                JOIN raw.customers c ON c.customer_id = m.customer_id
                LEFT JOIN latest_segments l ON l.customer_id = m.customer_id
                WHERE m.trigger = ? AND NOT m.is_holdout ORDER BY m.customer_id""",
            [trigger],
            path,
        )
        (holdout,) = con.execute(
            "SELECT count(*) FROM publishable WHERE trigger = ? AND is_holdout", [trigger]
        ).fetchone()
        entries[trigger] = {
            "file": path.name,
            "rows": written[path.name].rows,
            "holdout": holdout,
            "sha256": file_sha256(path),
        }
    path = folder / SUPPRESSIONS_FILE
    written[path.name] = write_csv(
        con,
        """SELECT customer_id, reason, strftime(occurred_at, '%Y-%m-%dT%H:%M:%SZ') AS occurred_at
           FROM publishable_suppressions ORDER BY customer_id""",
        [],
        path,
    )
    manifest = {
        **manifest,
        "triggers": entries,
        "suppressions": {
            "file": path.name,
            "rows": written[path.name].rows,
            "sha256": file_sha256(path),
        },
        "spreadsheet_formula_rule": formula_rule_summary(written),
    }
    manifest_path = folder / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    manifest_path.chmod(0o600)
    return manifest


def _record(con: duckdb.DuckDBPyConnection, refresh_id: str, run_id: str, counts: dict) -> None:
    """Inside the caller's transaction: the refresh's rows become published."""
    con.execute(
        """INSERT INTO published.trigger_members
           SELECT refresh_id, trigger, customer_id, event_at, event_detail, is_holdout, evaluated_at
           FROM publishable ORDER BY trigger, customer_id"""
    )
    con.execute(
        "INSERT INTO published.suppressions SELECT * FROM publishable_suppressions ORDER BY ALL"
    )
    con.execute(
        """INSERT INTO published.trigger_evaluated_files
           SELECT * FROM staging.trigger_evaluated_files WHERE refresh_id = ?""",
        [refresh_id],
    )
    con.execute(
        """INSERT INTO published.trigger_refreshes
           SELECT refresh_id, evaluated_at, previous_evaluated_at, daily_as_of, definitions,
                  ?, now() AT TIME ZONE 'UTC', ?, ?, ?, ?
           FROM staging.trigger_refreshes WHERE refresh_id = ?""",
        [
            run_id,
            counts["members"],
            counts["exported"],
            counts["suppressions"],
            counts["exports_dir"],
            refresh_id,
        ],
    )


def _create_publishable(
    con: duckdb.DuckDBPyConnection, refresh_id: str, empty_opt_in_emailable: bool
) -> int:
    """The temp tables `publishable`, the staged members still e-mailable now, and
    `publishable_suppressions`, the staged suppressions not published yet. Returns how many
    staged members consent now leaves out."""
    create_current_suppressions(con, empty_opt_in_emailable)
    create_latest_segments(con, latest_daily_publication(con))
    con.execute(
        """CREATE OR REPLACE TEMP TABLE publishable AS
           SELECT m.* FROM staging.trigger_members m
           LEFT JOIN latest_segments l ON l.customer_id = m.customer_id
           WHERE m.refresh_id = ?
             AND m.customer_id NOT IN (SELECT customer_id FROM current_suppressions)
             AND coalesce(l.is_emailable, true)""",
        [refresh_id],
    )
    con.execute(
        """CREATE OR REPLACE TEMP TABLE publishable_suppressions AS
           SELECT * FROM staging.trigger_suppressions WHERE refresh_id = ?
             AND customer_id NOT IN (SELECT customer_id FROM published.suppressions)""",
        [refresh_id],
    )
    return con.execute(
        """SELECT (SELECT count(*) FROM staging.trigger_members WHERE refresh_id = ?)
                  - (SELECT count(*) FROM publishable)""",
        [refresh_id],
    ).fetchone()[0]


def publish_refresh(settings: Settings, refresh_id: str, run_id: str) -> dict:
    """Publish the staged refresh (gated before): rows and export folder together. Returns the
    manifest (without files when there was nothing to export)."""
    root = settings.trigger_exports_dir
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    final = root / refresh_id
    built = root / f".{refresh_id}.{uuid.uuid4().hex}.building"
    with connect(settings) as con:
        tables.ensure(con, *tables.TRIGGERS)
        done = con.execute(
            "SELECT exports_dir FROM published.trigger_refreshes WHERE refresh_id = ?", [refresh_id]
        ).fetchone()
        if done is not None:
            log.info("refresh %s is published already (%s): nothing to do", refresh_id, done[0])
            return {"refresh_id": refresh_id, "exports_dir": done[0], "already_published": True}
        summary = staged_summary(con, refresh_id)
        (newer,) = con.execute(
            "SELECT max(evaluated_at) FROM published.trigger_refreshes"
        ).fetchone()
        if newer is not None and newer >= dt.datetime.fromisoformat(summary["evaluated_at"]):
            raise TriggerError(
                f"refresh {refresh_id}: a refresh evaluated at {newer} is published already"
            )
        dropped = _create_publishable(con, refresh_id, settings.loading.empty_opt_in_emailable)
        (members, exported) = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE NOT is_holdout) FROM publishable"
        ).fetchone()
        (suppressions,) = con.execute("SELECT count(*) FROM publishable_suppressions").fetchone()
        anything = members > 0 or suppressions > 0
        counts = {
            "members": members,
            "exported": exported,
            "suppressions": suppressions,
            "exports_dir": str(final) if anything else None,
        }
        manifest = {
            "refresh_id": refresh_id,
            "run_id": run_id,
            "evaluated_at": summary["evaluated_at"],
            "previous_evaluated_at": summary["previous_evaluated_at"],
            "daily_as_of": summary["daily_as_of"],
            "new_files": summary["new_files"],
            "left_out_by_newer_consent": dropped,
        }
        if final.exists():
            # Renamed into place by a publish killed before its commit: not published, rebuilt.
            shutil.rmtree(final)
        try:
            if anything:
                manifest = _write_exports(con, refresh_id, summary["triggers"], built, manifest)
            con.execute("BEGIN TRANSACTION")
            try:
                _record(con, refresh_id, run_id, counts)
                if anything:
                    built.rename(final)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                if final.exists():
                    shutil.rmtree(final)
                raise
        finally:
            if built.exists():
                shutil.rmtree(built)
    if anything:
        log.info(
            "published refresh %s: %d trigger members (%d exported), %d new suppressions%s; in %s",
            refresh_id,
            members,
            exported,
            suppressions,
            f", {dropped} left out by newer consent" if dropped else "",
            final,
        )
    else:
        log.info(
            "refresh %s: no trigger member and no new suppression, nothing exported", refresh_id
        )
    return {**manifest, **counts}


def refresh_now(settings: Settings, run_id: str = "manual") -> dict:
    """A whole refresh in this process, as the DAG's tasks run it one by one: ingest the new
    landing files, the raw gate, evaluate, the triggers gate, publish."""
    loaded_at = ingest_landing(settings, as_of=dt.datetime.now(dt.UTC).date()).loaded_at
    run_raw_gate(settings, as_of=loaded_at.date(), loaded_at=loaded_at, daily=False)
    refresh_id = stage_refresh(settings, loaded_at)["refresh_id"]
    run_triggers_gate(settings, refresh_id)
    return publish_refresh(settings, refresh_id, run_id)


def refreshes_summary(settings: Settings, newest: int = 10) -> str:
    """The newest published refreshes, for people (read-only)."""
    with connect(settings, read_only=True) as con:
        if not table_exists(con, "published", "trigger_refreshes"):
            return "trigger refreshes: none published yet"
        rows = con.execute(
            f"""SELECT refresh_id, published_at, members, exported, suppressions, exports_dir
                FROM published.trigger_refreshes ORDER BY evaluated_at DESC LIMIT {newest}"""
        ).fetchall()
    lines = [f"trigger refreshes (newest {newest}):"]
    for refresh_id, published_at, members, exported, suppressions, folder in rows:
        lines.append(
            f"  {refresh_id} published {published_at:%Y-%m-%d %H:%M:%S}: {members:,} members "
            f"({exported:,} exported), {suppressions:,} new suppressions -> {folder or 'no export'}"
        )
    return "\n".join(lines)
