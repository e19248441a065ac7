"""Retention: what segflow keeps, and for how long (`settings.retention`, SEGFLOW_RETENTION_*).

`apply_retention(settings, today)` removes what is older than each limit; the daily run's last
task (`housekeeping`) and `segflow housekeeping` call it. Something is older than N days when its
date is before `today - N days` (a folder of exactly N days ago stays). What goes, per kind:

- raw_history: superseded versions in `raw.customer_versions` and `raw.order_versions` whose
  validity ended (the next version took effect, ml/contract.py VERSION_ORDER, as dbt's
  `version_validity` macro says) before the cutoff. The latest version, in force, always stays.
  `raw.consent_log` is a view of the versions: the opt-in changes recorded in the versions that
  go, go with them (the oldest version kept then counts since always). Unsubscribe, complaint
  and bounce events are e-mail events, not versions: they stay, and keep suppressing.
- published_history: the rows of `published.*` and `staging.*` customer_segments,
  audience_members, audience_definitions and not_applicable_models, and of the feature marts
  `marts.customer_features` and `marts.training_labels`, of as-of dates before the cutoff;
  `published.trigger_members` of refreshes evaluated before it. The newest date (refresh) of
  each table stays whatever its age: triggers filter on the latest publication, the gates
  compare with the previous dates. The publication log (`published.publications`), the
  trigger refresh log, `published.suppressions` (who has been told to e-mail tools as
  suppressed) and the aggregates (`published.campaign_readouts`, `monitoring.*`: no row per
  customer) stay whole.
- quarantine: `quarantine.violations` rows loaded before the cutoff, and `quarantine.files`
  entries accepted (`segflow quarantine --accept`) and last changed before it, once their file
  is gone from the landing folder. An open entry stays: it blocks the daily run until someone
  acts. An accepted entry whose file is still there stays too: without it the next ingest would
  set the file aside again as a new, blocking bad file. `quarantine.held_rows` need nothing
  here: a held row becomes a rejection after SEGFLOW_HOLD_DAYS (ml/ingest/loader.py).
- exports: `exports/<YYYY-MM-DD>/` folders of dates before the cutoff, except the newest.
- trigger_exports: `exports/triggers/<refresh id>/` folders of refreshes evaluated before the
  cutoff, except the newest.
- training_sets: `training/<YYYY-MM-DD>/` folders of dates before the cutoff, except those a
  model version holding an alias (champion, challenger) was trained on: the version's
  `training_set` tag (ml/models/train.py), which promotion reads again. Unreadable registry: all stay.
- reports: `reports/segments/<date>.html` and `reports/drift/<date>.html` of dates before the
  cutoff, Great Expectations validation pages (`reports/data_docs/validations/.../<run time>/`)
  of runs before it, `quality.validation_results` rows of run dates before it (their examples
  may be customers' values), and the lines of `reports/failures.jsonl` recorded before it.

A folder is renamed aside (`.<name>.<token>.expired`) before it is deleted, so nobody ever reads
half of one; leftovers of an interrupted run are deleted by the next. Rows are deleted in one
transaction, then the warehouse is checkpointed; DuckDB keeps the freed blocks in the file for
reuse (it does not shrink here). A dry run counts the same things and removes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb

from ml.config import Settings
from ml.contract import ENTITIES, VERSION_ORDER
from ml.models import catalogue
from ml.models.registry import mlflow_client
from ml.models.training_sets import training_set_dir
from ml.monitoring.alerts import failures_path
from ml.triggers.refresh import REFRESH_ID_FORMAT
from ml.warehouse import tables
from ml.warehouse.connection import connect, table_exists

log = logging.getLogger(__name__)

KINDS = {
    "raw_history": ("raw_history_days", "SEGFLOW_RETENTION_RAW_HISTORY_DAYS"),
    "published_history": ("published_history_days", "SEGFLOW_RETENTION_PUBLISHED_DAYS"),
    "quarantine": ("quarantine_days", "SEGFLOW_RETENTION_QUARANTINE_DAYS"),
    "exports": ("exports_days", "SEGFLOW_RETENTION_EXPORTS_DAYS"),
    "trigger_exports": ("trigger_exports_days", "SEGFLOW_RETENTION_TRIGGER_EXPORTS_DAYS"),
    "training_sets": ("training_sets_days", "SEGFLOW_RETENTION_TRAINING_SETS_DAYS"),
    "reports": ("reports_days", "SEGFLOW_RETENTION_REPORTS_DAYS"),
}
"""Each kind of thing kept: its field of RetentionSettings and its environment variable."""
FEATURE_MARTS = ("customer_features", "training_labels")
EXPIRED_SUFFIX = ".expired"
DATE_NAME = re.compile(r"\d{4}-\d{2}-\d{2}")
VALIDATION_RUN_NAME = re.compile(r"(\d{8})T\d{6}")
"""Great Expectations names a validation page's folder by its run time: 20261203T123712.9Z."""


@dataclass
class KindReport:
    """What one kind's retention removed (or, in a dry run, would remove)."""

    setting: str
    days: int
    cutoff: dt.date
    """Dated before this: removed."""
    rows: dict[str, int] = field(default_factory=dict)
    """Rows per warehouse table."""
    removed: list[str] = field(default_factory=list)
    """Folders and files, relative to the data folder."""
    lines: dict[str, int] = field(default_factory=dict)
    """Lines per file (reports/failures.jsonl)."""
    kept: list[str] = field(default_factory=list)
    """Older than the limit but kept on purpose, and why."""

    def describe(self) -> str:
        parts = [f"{table} {n:,} rows" for table, n in self.rows.items() if n]
        parts += [f"{name} {n:,} lines" for name, n in self.lines.items() if n]
        if self.removed:
            shown = ", ".join(self.removed[:5])
            more = f" and {len(self.removed) - 5} more" if len(self.removed) > 5 else ""
            parts.append(f"{shown}{more}")
        text = "; ".join(parts) or "nothing"
        if self.kept:
            text += f"; kept: {'; '.join(self.kept)}"
        return text


@dataclass
class RetentionReport:
    today: dt.date
    dry_run: bool
    kinds: dict[str, KindReport]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows_removed(self) -> int:
        return sum(n for kind in self.kinds.values() for n in kind.rows.values())

    @property
    def paths_removed(self) -> int:
        return sum(len(kind.removed) for kind in self.kinds.values())

    def summary(self) -> str:
        verb = "would remove (dry run, nothing removed)" if self.dry_run else "removed"
        lines = [
            f"retention as of {self.today}: {verb} {self.rows_removed:,} rows and "
            f"{self.paths_removed:,} folders/files in {self.seconds:.1f} s"
        ]
        for name, kind in self.kinds.items():
            lines.append(
                f"  {name} ({kind.setting}={kind.days}, before {kind.cutoff}): {kind.describe()}"
            )
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """JSON-ready (dates as ISO strings): the daily task's XCom."""
        return json.loads(json.dumps(asdict(self), default=str))


def _report(settings: Settings, today: dt.date, dry_run: bool) -> RetentionReport:
    kinds = {}
    for name, (attribute, variable) in KINDS.items():
        days = getattr(settings.retention, attribute)
        kinds[name] = KindReport(variable, days, today - dt.timedelta(days=days))
    return RetentionReport(today, dry_run, kinds)


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time())


def _relative(settings: Settings, path: Path) -> str:
    try:
        return str(path.relative_to(settings.data_dir))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- warehouse


def _remove_rows(
    con: duckdb.DuckDBPyConnection, table: str, where: str, params: list, dry_run: bool
) -> int:
    verb = "SELECT count(*) FROM" if dry_run else "DELETE FROM"
    return int(con.execute(f"{verb} {table} WHERE {where}", params).fetchone()[0])


def _older_dates(column: str, table: str) -> str:
    """Before the cutoff (the one parameter), and not the table's newest."""
    return f"{column} < ? AND {column} < (SELECT max({column}) FROM {table})"


def _raw_history(con: duckdb.DuckDBPyConnection, kind: KindReport, dry_run: bool) -> None:
    for entity in ENTITIES:
        if not entity.versioned or not table_exists(con, "raw", entity.table):
            continue
        table = f"raw.{entity.table}"
        # A version is valid until the next one took effect (dbt's version_validity macro).
        superseded = f"""rowid IN (
            SELECT rowid FROM (
                SELECT rowid, lead(_version_at) OVER (
                    PARTITION BY "{entity.key}" ORDER BY {VERSION_ORDER}) AS valid_to
                FROM {table})
            WHERE valid_to < ?)"""
        kind.rows[table] = _remove_rows(con, table, superseded, [_midnight(kind.cutoff)], dry_run)


def _published_history(con: duckdb.DuckDBPyConnection, kind: KindReport, dry_run: bool) -> None:
    dated = [(t.schema, t.name) for t in (*tables.PUBLISHED_SEGMENTS, *tables.STAGED_SEGMENTS)]
    dated += [("marts", name) for name in FEATURE_MARTS]
    for schema, name in dated:
        if table_exists(con, schema, name):
            table = f"{schema}.{name}"
            where = _older_dates("as_of_date", table)
            kind.rows[table] = _remove_rows(con, table, where, [kind.cutoff], dry_run)
    if table_exists(con, "published", "trigger_members"):
        table = "published.trigger_members"
        where = _older_dates("evaluated_at", table)
        kind.rows[table] = _remove_rows(con, table, where, [_midnight(kind.cutoff)], dry_run)


def _quarantine(
    con: duckdb.DuckDBPyConnection, settings: Settings, kind: KindReport, dry_run: bool
) -> None:
    cutoff = _midnight(kind.cutoff)
    if table_exists(con, "quarantine", "violations"):
        table = "quarantine.violations"
        kind.rows[table] = _remove_rows(con, table, "loaded_at < ?", [cutoff], dry_run)
    if not table_exists(con, "quarantine", "files"):
        return
    accepted = con.execute(
        """SELECT entity, source_file FROM quarantine.files
           WHERE accepted_at IS NOT NULL AND greatest(found_at, accepted_at) < ?
           ORDER BY source_file""",
        [cutoff],
    ).fetchall()
    gone = []
    for entity, source_file in accepted:
        if os.path.lexists(settings.landing_dir / source_file):
            kind.kept.append(f"accepted bad file {source_file} (still in the landing folder)")
        else:
            gone.append((entity, source_file))
    if gone and not dry_run:
        con.executemany("DELETE FROM quarantine.files WHERE entity = ? AND source_file = ?", gone)
    kind.rows["quarantine.files"] = len(gone)


def _validation_results(con: duckdb.DuckDBPyConnection, kind: KindReport, dry_run: bool) -> None:
    if table_exists(con, "quality", "validation_results"):
        table = "quality.validation_results"
        kind.rows[table] = _remove_rows(con, table, "run_date < ?", [kind.cutoff], dry_run)


def _warehouse(settings: Settings, report: RetentionReport) -> None:
    if not settings.warehouse_path.exists():
        report.notes.append(f"no warehouse at {settings.warehouse_path}: no rows to remove")
        return
    kinds = report.kinds
    with connect(settings, read_only=report.dry_run) as con:
        if not report.dry_run:
            con.execute("BEGIN TRANSACTION")
        try:
            _raw_history(con, kinds["raw_history"], report.dry_run)
            _published_history(con, kinds["published_history"], report.dry_run)
            _quarantine(con, settings, kinds["quarantine"], report.dry_run)
            _validation_results(con, kinds["reports"], report.dry_run)
            if not report.dry_run:
                con.execute("COMMIT")
        except BaseException:
            if not report.dry_run:
                con.execute("ROLLBACK")
            raise
        if not report.dry_run:
            # The deleted rows' blocks are free for reuse; the file keeps its size.
            con.execute("CHECKPOINT")


# --------------------------------------------------------------------------- files


def _clear_expired_leftovers(folder: Path, dry_run: bool) -> None:
    """Folders an interrupted retention had renamed aside but not deleted yet."""
    if dry_run or not folder.is_dir():
        return
    for leftover in folder.glob(f".*{EXPIRED_SUFFIX}"):
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()


def _remove_folder(path: Path, dry_run: bool) -> None:
    """Renamed aside first: a reader finds the whole folder or none."""
    if dry_run:
        return
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}{EXPIRED_SUFFIX}")
    path.rename(aside)
    shutil.rmtree(aside)


def _dated_folders(folder: Path, date_of) -> list[tuple[dt.date, Path]]:
    """The folder's sub-folders whose name `date_of` reads as a date, oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if path.is_dir() and not path.name.startswith("."):
            day = date_of(path.name)
            if day is not None:
                found.append((day, path))
    return sorted(found)


def _iso_date(name: str) -> dt.date | None:
    if not DATE_NAME.fullmatch(name):
        return None
    try:
        return dt.date.fromisoformat(name)
    except ValueError:
        return None


def _refresh_date(name: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(name, REFRESH_ID_FORMAT).date()
    except ValueError:
        return None


def _expire_all_but_newest(
    settings: Settings, folder: Path, date_of, kind: KindReport, dry_run: bool, what: str
) -> None:
    _clear_expired_leftovers(folder, dry_run)
    folders = _dated_folders(folder, date_of)
    for index, (day, path) in enumerate(folders):
        if day >= kind.cutoff:
            continue
        if index == len(folders) - 1:
            kind.kept.append(f"{_relative(settings, path)} (the newest {what})")
            continue
        _remove_folder(path, dry_run)
        kind.removed.append(_relative(settings, path))


def _aliased_training_sets(settings: Settings) -> dict[str, list[str]]:
    """Training set folder name -> the model versions holding an alias that were trained on
    it, e.g. {'2026-06-30': ['segflow_churn_risk v3 @champion']}."""
    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return {}  # no registry yet (reading must not create it)
    from mlflow.exceptions import MlflowException

    client = mlflow_client(settings)
    used: dict[str, list[str]] = {}
    for registered_name in (m.registered_name for m in catalogue.MODELS):
        try:
            model = client.get_registered_model(registered_name)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                continue
            raise
        by_version: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            by_version.setdefault(str(version), []).append(alias)
        for version, aliases in sorted(by_version.items()):
            details = client.get_model_version(model.name, version)
            names = set()
            if details.tags.get("training_set"):
                names.add(Path(details.tags["training_set"]).name)
            if details.tags.get("training_as_of"):
                names.add(details.tags["training_as_of"])
            if not names and details.run_id:
                as_of = client.get_run(details.run_id).data.params.get("as_of")
                if as_of:
                    names.add(as_of)
            for name in names:
                used.setdefault(name, []).append(
                    f"{model.name} v{version} @{'/'.join(sorted(aliases))}"
                )
    return used


def _training_sets(settings: Settings, kind: KindReport, report: RetentionReport) -> None:
    root = training_set_dir(settings, report.today).parent
    _clear_expired_leftovers(root, report.dry_run)
    old = [(day, path) for day, path in _dated_folders(root, _iso_date) if day < kind.cutoff]
    if not old:
        return
    try:
        used = _aliased_training_sets(settings)
    except Exception as error:  # a registry that cannot be read must not cost a champion its set
        log.warning("model registry not readable, every training set kept: %s", error)
        report.notes.append(
            f"model registry not readable ({type(error).__name__}: {error}): "
            "every training set kept"
        )
        return
    for _, path in old:
        if path.name in used:
            kind.kept.append(f"{_relative(settings, path)} (trained {', '.join(used[path.name])})")
            continue
        _remove_folder(path, report.dry_run)
        kind.removed.append(_relative(settings, path))


def _remove_empty_folders(top: Path, dry_run: bool) -> None:
    if dry_run or not top.is_dir():
        return
    for folder, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
        if Path(folder) != top and not os.listdir(folder):
            os.rmdir(folder)


def _failure_lines(settings: Settings, kind: KindReport, dry_run: bool) -> None:
    """Lines of failures.jsonl recorded before the cutoff; a line without a readable
    `recorded_at` stays. Rewritten through a temporary file, with whatever a failing task
    appended meanwhile."""
    path = failures_path(settings)
    if not path.is_file():
        return
    content = path.read_bytes()
    kept, dropped = [], 0
    for line in content.splitlines(keepends=True):
        try:
            recorded = dt.datetime.fromisoformat(json.loads(line)["recorded_at"]).date()
        except (ValueError, KeyError, TypeError):
            recorded = None
        if recorded is not None and recorded < kind.cutoff:
            dropped += 1
        else:
            kept.append(line)
    kind.lines[_relative(settings, path)] = dropped
    if not dropped or dry_run:
        return
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(b"".join(kept))
    partial.chmod(path.stat().st_mode & 0o777)
    with path.open("rb") as current:
        current.seek(len(content))
        appended = current.read()
    if appended:
        with partial.open("ab") as out:
            out.write(appended)
    partial.replace(path)


def _reports(settings: Settings, kind: KindReport, dry_run: bool) -> None:
    reports = settings.reports_dir
    for folder in (reports / "segments", reports / "drift"):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.html")):
            day = _iso_date(path.stem)
            if day is not None and day < kind.cutoff:
                if not dry_run:
                    path.unlink()
                kind.removed.append(_relative(settings, path))
    validations = reports / "data_docs" / "validations"
    _clear_expired_leftovers(validations, dry_run)
    if validations.is_dir():
        for folder, subfolders, _ in os.walk(validations):
            for name in sorted(subfolders):
                match = VALIDATION_RUN_NAME.match(name)
                if not match:
                    continue
                day = dt.datetime.strptime(match.group(1), "%Y%m%d").date()
                if day < kind.cutoff:
                    path = Path(folder) / name
                    _remove_folder(path, dry_run)
                    kind.removed.append(_relative(settings, path))
            # Run-time folders hold the pages: nothing below them to look at.
            subfolders[:] = [n for n in subfolders if not VALIDATION_RUN_NAME.match(n)]
        _remove_empty_folders(validations, dry_run)
    _failure_lines(settings, kind, dry_run)


# --------------------------------------------------------------------------- all of it


def apply_retention(
    settings: Settings, today: dt.date, *, dry_run: bool = False
) -> RetentionReport:
    """Remove what is older than each limit of `settings.retention`, as of `today` (the
    daily run's as-of date); see the module's docstring for what each kind removes. Returns
    what was removed (with `dry_run`: what would be, and nothing is)."""
    started = time.perf_counter()
    report = _report(settings, today, dry_run)
    kinds = report.kinds
    _warehouse(settings, report)
    _expire_all_but_newest(
        settings, settings.exports_dir, _iso_date, kinds["exports"], dry_run, "publication"
    )
    _expire_all_but_newest(
        settings,
        settings.trigger_exports_dir,
        _refresh_date,
        kinds["trigger_exports"],
        dry_run,
        "trigger export",
    )
    _training_sets(settings, kinds["training_sets"], report)
    _reports(settings, kinds["reports"], dry_run)
    report.seconds = time.perf_counter() - started
    log.info("%s", report.summary())
    return report
