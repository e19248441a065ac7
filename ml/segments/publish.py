"""Write-audit-publish of a date's segments, and the audience exports for e-mail tools.

1. Write: scoring (ml/segments/score.py) staged the date's rows in `staging.customer_segments` and
   `staging.audience_members`.
2. Audit: the segments gate (ml.quality.gates.run_segments_gate) validates the staged rows.
3. Publish: the exports are built in a temporary folder next to `exports/<as_of_date>/` (only
   the owner may read it: e-mail addresses), with `manifest.json`. Then, in one DuckDB
   transaction, the date's rows of `published.customer_segments` and
   `published.audience_members` are replaced and the publication is logged in
   `published.publications`; the export folder is renamed into place (the previous one moved
   aside) and the transaction commits. If anything fails, the transaction rolls back and the
   previous export folder is moved back: the last good publication stays as it was.

Exports: `<audience>.csv` per audience with the e-mailable treatment members only (holdout
members are never sent), sorted by customer_id, floats with fixed decimals, so a re-run of the
same date on the same data writes byte-identical files; text cells that a spreadsheet would run
as a formula get a leading quote (ml/csv_exports.py). A customer suppressed since the date (an
unsubscribe loaded later, ml/segments/consent.py) is left out of the export whatever date it is for; the
table keeps the row as scored. The manifest holds row counts, treatment and holdout
counts, those left out since, each file's sha256, the model versions, the models that were not
applicable with the reason (their score columns are empty), the formula rule with the cells it
neutralised, and the run id (the only thing that differs between two runs of a date).

Between the rename and the commit there is a moment where a killed process leaves the new
exports beside the old table rows; running the publish again for the date makes both agree.
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
from ml.contract import as_of_cutoff
from ml.csv_exports import formula_rule_summary, write_csv
from ml.errors import PublishError
from ml.models import catalogue
from ml.quality import gates
from ml.segments.audiences import audience_counts
from ml.segments.consent import create_current_suppressions, create_customers_in_force
from ml.segments.score import not_applicable_on
from ml.warehouse import tables
from ml.warehouse.connection import connect, table_exists

log = logging.getLogger(__name__)

EXPORT_COLUMNS = {
    "customer_id": "s.customer_id",
    "email": "lower(trim(c.email))",
    "segment": "s.segment",
    "rfm_segment": "s.rfm_segment",
    **{
        column: expression
        for model in catalogue.SCORES
        for column, expression in (
            # Probabilities to six decimals, money to cents.
            (
                model.output_column,
                f"printf('%.{6 if model.probability else 2}f', s.{model.output_column})",
            ),
            *([(model.band_column, f"s.{model.band_column}")] if model.band_column else []),
        )
    },
    "best_send_hour": "s.best_send_hour",
}
"""Columns of an export file and how each is written (fixed decimals: stable bytes)."""


def _staged_summary(
    settings: Settings, as_of: dt.date
) -> tuple[int, int, dict[str, int], dict[str, str]]:
    """Rows and e-mailable customers staged for the date, the model versions behind them, and
    the models that were not applicable (kind -> reason)."""
    nothing_staged = PublishError(f"nothing staged for {as_of}: run scoring first (segflow score)")
    if not settings.warehouse_path.exists():
        raise nothing_staged
    with connect(settings, read_only=True) as con:
        if not table_exists(con, "staging", "customer_segments"):
            raise nothing_staged
        versions = ", ".join(
            f"min({m.version_column}), count(DISTINCT {m.version_column})" for m in catalogue.MODELS
        )
        row = con.execute(
            f"""SELECT count(*), count(*) FILTER (WHERE is_emailable), {versions}
                FROM staging.customer_segments WHERE as_of_date = ?""",
            [as_of],
        ).fetchone()
        not_applicable = not_applicable_on(con, "staging", as_of)
    rows, emailable = row[0], row[1]
    if not rows:
        raise nothing_staged
    model_versions = {}
    for index, model in enumerate(catalogue.MODELS):
        version, distinct = row[2 + 2 * index], row[3 + 2 * index]
        kind, column = model.kind, model.version_column
        # A model not applicable scored nobody: no version at all, every other one exactly one.
        if distinct != (0 if kind in not_applicable else 1):
            raise PublishError(
                f"staged rows for {as_of} hold {distinct} versions in {column}"
                f"{' (the model was not applicable)' if kind in not_applicable else ''}: "
                "score the date again"
            )
        if version is not None:
            model_versions[kind] = int(version)
    return rows, emailable, model_versions, not_applicable


def _write_exports(
    con: duckdb.DuckDBPyConnection,
    as_of: dt.date,
    folder: Path,
    manifest: dict,
    empty_opt_in_emailable: bool,
) -> dict[str, dict]:
    """One CSV per staged audience (treatment members) and manifest.json into `folder`: the
    addresses in force on the date, less everyone consent suppresses now."""
    folder.mkdir(mode=0o700)
    create_current_suppressions(con, empty_opt_in_emailable)
    create_customers_in_force(con, as_of_cutoff(as_of))
    audiences, written = {}, {}
    select = ", ".join(f"{expression} AS {name}" for name, expression in EXPORT_COLUMNS.items())
    for audience, _, holdout_share, treatment, holdout in audience_counts(con, "staging", as_of):
        path = folder / f"{audience}.csv"
        written[path.name] = write_csv(
            con,
            f"""SELECT {select}
                FROM staging.audience_members m
                JOIN staging.customer_segments s
                    ON s.as_of_date = m.as_of_date AND s.customer_id = m.customer_id
                JOIN customers_in_force c ON c.customer_id = s.customer_id
                ANTI JOIN current_suppressions suppressed ON suppressed.customer_id = s.customer_id
                WHERE m.as_of_date = ? AND m.audience = ? AND NOT m.is_holdout AND s.is_emailable
                ORDER BY s.customer_id""",
            [as_of, audience],
            path,
        )
        rows = written[path.name].rows
        audiences[audience] = {
            "file": path.name,
            "rows": rows,
            "treatment": treatment,
            "holdout": holdout,
            "holdout_share": holdout_share,
            "suppressed_since": treatment - rows,
            "sha256": file_sha256(path),
        }
    manifest = {
        **manifest,
        "audiences": audiences,
        "spreadsheet_formula_rule": formula_rule_summary(written),
    }
    manifest_path = folder / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    manifest_path.chmod(0o600)
    return audiences


def _replace_published_rows(
    con: duckdb.DuckDBPyConnection, as_of: dt.date, publication: dict
) -> None:
    """Inside the caller's transaction: the date's staged rows become the published ones."""
    # Staging as well: an earlier version may have staged the date without every table.
    tables.ensure(con, *tables.STAGED_SEGMENTS, *tables.PUBLISHED_SEGMENTS, tables.PUBLICATIONS)
    for staged, published in zip(tables.STAGED_SEGMENTS, tables.PUBLISHED_SEGMENTS, strict=True):
        con.execute(f"DELETE FROM {published.qualified_name} WHERE as_of_date = ?", [as_of])
        con.execute(
            f"""INSERT INTO {published.qualified_name}
                SELECT * FROM {staged.qualified_name} WHERE as_of_date = ? ORDER BY ALL""",
            [as_of],
        )
    con.execute(
        """INSERT INTO published.publications
           VALUES (?, ?, now() AT TIME ZONE 'UTC', ?, ?, ?, ?, ?)""",
        [
            as_of,
            publication["run_id"],
            publication["rows"],
            publication["emailable"],
            json.dumps(publication["model_versions"], sort_keys=True),
            json.dumps(publication["audiences"], sort_keys=True),
            publication["exports_dir"],
        ],
    )


def _swap_exports(built: Path, final: Path, aside: Path) -> None:
    """Move the previous export folder aside (kept until the commit) and the new one in."""
    if final.exists():
        final.rename(aside)
    built.rename(final)


def _restore_exports(final: Path, aside: Path, had_previous: bool) -> None:
    """Undo a swap that may have happened in part: the previous folder goes back in place."""
    if aside.exists():
        if final.exists():
            shutil.rmtree(final)
        aside.rename(final)
    elif not had_previous and final.exists():
        shutil.rmtree(final)


def _clear_interrupted(exports_dir: Path, as_of: dt.date, final: Path) -> None:
    """Leftovers of a publish of this date that was killed: unfinished folders are removed; a
    previous folder moved aside comes back if nothing took its place."""
    for leftover in sorted(exports_dir.glob(f".{as_of}.*")):
        if leftover.name.endswith(".previous") and not final.exists():
            log.warning("restoring %s left aside by an interrupted publish", final)
            leftover.rename(final)
        else:
            shutil.rmtree(leftover)


def publish_segments(
    settings: Settings, as_of: dt.date, run_id: str, gate_passed: bool = False
) -> dict:
    """Gate the date's staged segments (unless `gate_passed`: the caller just ran
    ml.quality.gates.run_segments_gate on them), then publish rows and exports together. Returns
    counts and paths. On any failure the previous publication and exports stay as they were."""
    rows, emailable, model_versions, not_applicable = _staged_summary(settings, as_of)
    if not gate_passed:
        gates.run_segments_gate(settings, as_of)
    # Said in every manifest; stale data reaches here only under SEGFLOW_STALE_DATA=publish.
    freshness = gates.data_freshness(settings, as_of)

    exports_dir = settings.exports_dir
    exports_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    final = exports_dir / as_of.isoformat()
    token = uuid.uuid4().hex
    built = exports_dir / f".{as_of}.{token}.building"
    aside = exports_dir / f".{as_of}.{token}.previous"
    _clear_interrupted(exports_dir, as_of, final)
    had_previous = final.exists()
    publication = {
        "as_of_date": as_of.isoformat(),
        "run_id": run_id,
        "rows": rows,
        "emailable": emailable,
        "model_versions": model_versions,
        "not_applicable": not_applicable,
        "exports_dir": str(final),
    }
    try:
        with connect(settings) as con:
            manifest = {
                k: publication[k]
                for k in ("as_of_date", "run_id", "model_versions", "not_applicable")
            }
            manifest |= {"customers": rows, "emailable": emailable, "data_freshness": freshness}
            publication["audiences"] = _write_exports(
                con, as_of, built, manifest, settings.loading.empty_opt_in_emailable
            )
            con.execute("BEGIN TRANSACTION")
            try:
                _replace_published_rows(con, as_of, publication)
                _swap_exports(built, final, aside)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                _restore_exports(final, aside, had_previous)
                raise
    finally:
        if built.exists():
            shutil.rmtree(built)
    if aside.exists():
        shutil.rmtree(aside)
    log.info(
        "published %d customers (%d e-mailable) for %s, run %s; exports in %s",
        rows,
        emailable,
        as_of,
        run_id,
        final,
    )
    return {**publication, "manifest": str(final / "manifest.json")}
