"""The data quality gates of a run: which rows each suite sees, and what stops the run.

- Raw gate: landing files set aside whole and not accepted, and stale orders, stop a daily run;
  then per entity the rows of every loaded file no gate has passed yet (whoever loaded it),
  validated against the entity's suite, and their quarantine share, which stops the run above
  `SEGFLOW_QUARANTINE_MAX_SHARE`. Passed files are marked, so nothing is judged twice and
  nothing escapes.
- Features gate: `customer_features` for the as-of date, with the expected row count from
  `raw.customers` and feature means learned from the previous dates.
- Segments gate: the scored rows in `staging.customer_segments` for the date, before they are
  published: one per feature row, probabilities, bands, consent and model versions, and score
  means against the previous publications.

Large row sets are validated on a deterministic sample: rows whose key hashes into the first
`gate_sample_rows / rows` of the hash space. Sampling by key keeps the checks honest: rows
sharing a key (duplicates) are in or out of the sample together, so uniqueness is exact within
it; value rules (ranges, sets, nulls) are checked on hundreds of thousands of rows, which
misses only violations rarer than about one in that many; the row count is compared with the
same sample of known customers.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable

import pandas as pd

from expectations.runner import validate_frame
from ml.config import Settings
from ml.contract import ENTITIES, ENTITY_BY_NAME, as_of_cutoff
from ml.errors import (
    BadFilesWaiting,
    GateFailed,
    QualityGateFailed,
    QuarantineTooLarge,
    StaleData,
)
from ml.models import catalogue
from ml.segments.consent import create_current_suppressions
from ml.triggers.refresh import create_latest_segments, latest_daily_publication, staged_summary
from ml.warehouse.connection import connect, table_exists

log = logging.getLogger(__name__)

HASH_SPACE = 1 << 32
PREVIOUS_RUNS_FOR_MEANS = 7


def latest_load_time(settings: Settings) -> dt.datetime:
    """When the newest ingest ran: what marks the rows of the latest run."""
    with connect(settings, read_only=True) as con:
        return con.execute("SELECT max(loaded_at) FROM raw.loaded_files").fetchone()[0]


def _sample_filter(key: str, rows: int, limit: int) -> str:
    if rows <= limit:
        return "true"
    return f"hash({key}) % {HASH_SPACE} < {int(HASH_SPACE * limit / rows)}"


UNJUDGED_FILES = "SELECT source_file FROM raw.loaded_files WHERE entity = ? AND gated_at IS NULL"
"""The files no raw gate has passed yet, whoever loaded them (a daily run, a trigger refresh,
`segflow ingest`); a held row that loads later sends its file back here."""


def new_rows(settings: Settings, entity_name: str) -> pd.DataFrame:
    """The rows no raw gate has judged yet: those of the entity's unjudged files."""
    entity = ENTITY_BY_NAME[entity_name]
    with connect(settings, read_only=True) as con:
        where = f"_source_file IN ({UNJUDGED_FILES})"
        rows = con.execute(
            f"SELECT count(*) FROM raw.{entity.table} WHERE {where}", [entity.name]
        ).fetchone()[0]
        sample = _sample_filter(entity.key, rows, settings.quality.gate_sample_rows)
        return con.execute(
            f"SELECT * FROM raw.{entity.table} WHERE {where} AND {sample}", [entity.name]
        ).df()


def quarantine_shares(settings: Settings) -> dict[str, tuple[int, int, dict[str, int]]]:
    """Per entity, for the files no gate has passed: rows read, rows rejected, and rejected
    rows per reason (`column: rule`)."""
    with connect(settings, read_only=True) as con:
        totals = con.execute(
            """SELECT entity, sum(rows_in_file), sum(rows_rejected) FROM raw.loaded_files
               WHERE gated_at IS NULL GROUP BY entity"""
        ).fetchall()
        reasons = con.execute(
            """SELECT v.entity, v.column_name || ': ' || v.rule,
                      count(DISTINCT (v.source_file, v.source_row))
               FROM quarantine.violations v
               JOIN raw.loaded_files f ON f.entity = v.entity AND f.source_file = v.source_file
               WHERE f.gated_at IS NULL AND v.action = 'rejected'
               GROUP BY ALL ORDER BY 3 DESC"""
        ).fetchall()
    shares = {entity: (int(read), int(rejected), {}) for entity, read, rejected in totals}
    for entity, reason, count in reasons:
        if entity in shares:
            shares[entity][2][reason] = count
    return shares


def check_quarantine(settings: Settings) -> str:
    """Summarise the quarantine of the unjudged files; raise when an entity's share is above
    the threshold."""
    limit = settings.quality.quarantine_max_share
    lines, too_large = [], []
    for entity, (read, rejected, reasons) in sorted(quarantine_shares(settings).items()):
        share = rejected / read if read else 0.0
        lines.append(f"{entity}: {rejected:,} of {read:,} rows quarantined ({share:.1%})")
        lines += [f"    {count:,} {reason}" for reason, count in reasons.items()]
        if share > limit:
            too_large.append(f"{entity} {share:.1%}")
    summary = "\n".join(lines) or "no new rows"
    log.info("quarantine of the files not judged yet:\n%s", summary)
    if too_large:
        raise QuarantineTooLarge(
            f"quarantine above SEGFLOW_QUARANTINE_MAX_SHARE={limit:.1%} for "
            f"{', '.join(too_large)}; nothing downstream ran. Rows and reasons are in "
            f"quarantine.violations:\n{summary}"
        )
    return summary


def check_bad_files(settings: Settings) -> None:
    """Files set aside whole stop the daily run until they are replaced or accepted."""
    with connect(settings, read_only=True) as con:
        bad = con.execute(
            """SELECT source_file, coalesce('column ' || column_name || ': ', '') || reason
               FROM quarantine.files WHERE accepted_at IS NULL ORDER BY source_file"""
        ).fetchall()
    if bad:
        listed = "\n".join(f"  {source_file}: {reason}" for source_file, reason in bad)
        raise BadFilesWaiting(
            f"{len(bad)} landing file(s) could not be loaded; nothing is published until each "
            "is replaced by a good file (it then loads) or accepted unloaded with "
            f"`segflow quarantine --accept <file> --note <why>`:\n{listed}"
        )


def data_freshness(settings: Settings, as_of: dt.date) -> dict:
    """How old the newest order before the run's cutoff is, against the freshness limit."""
    cutoff = as_of_cutoff(as_of)
    with connect(settings, read_only=True) as con:
        (newest,) = con.execute(
            "SELECT max(ordered_at) FROM raw.orders WHERE ordered_at < ?", [cutoff]
        ).fetchone()
    limit = settings.quality.freshness_max_days
    days_old = None if newest is None else (as_of - newest.date()).days
    return {
        "newest_order_at": None if newest is None else newest.isoformat(),
        "days_old": days_old,
        "max_days": limit,
        "stale": days_old is None or days_old > limit,
    }


def check_freshness(settings: Settings, as_of: dt.date) -> dict:
    """Freshness on every run, new files or not: stale data stops the run, unless
    SEGFLOW_STALE_DATA=publish (the manifest then says how stale)."""
    freshness = data_freshness(settings, as_of)
    if freshness["stale"]:
        message = (
            f"stale data for {as_of}: the newest order is from {freshness['newest_order_at']}, "
            f"more than SEGFLOW_FRESHNESS_MAX_DAYS={freshness['max_days']} days before it"
        )
        if settings.loading.stale_data == "stop":
            raise StaleData(
                f"{message}; nothing downstream ran. Deliver the missing files, or set "
                "SEGFLOW_STALE_DATA=publish to publish with the staleness in the manifest"
            )
        log.warning("%s; published anyway (SEGFLOW_STALE_DATA=publish)", message)
    return freshness


def run_raw_gate(
    settings: Settings, as_of: dt.date, loaded_at: dt.datetime, daily: bool = True
) -> list:
    """Bad files and freshness (daily runs), the quarantine share, then every raw entity's
    suite on the rows no gate has judged; raises on errors, and marks the judged files passed.

    A trigger refresh (daily=False) is not stopped by a bad file or by stale orders: the good
    files' unsubscribes must take effect at once."""
    from expectations.suites import raw_suite

    if daily:
        check_bad_files(settings)
        check_freshness(settings, as_of)
    check_quarantine(settings)
    checks = (
        (
            new_rows(settings, entity.name),
            raw_suite(entity.name, loaded_at + dt.timedelta(seconds=1)),
        )
        for entity in ENTITIES
    )
    reports = validate_all(settings, checks, as_of, what=f"raw gate for {as_of}")
    with connect(settings) as con:
        con.execute(
            "UPDATE raw.loaded_files SET gated_at = ? WHERE gated_at IS NULL AND loaded_at <= ?",
            [loaded_at, loaded_at],
        )
    return reports


def validate_all(settings: Settings, checks: Iterable, run_date: dt.date, what: str) -> list:
    """Each (frame, suite) that has rows; one GateFailed with every suite's failed errors, after
    all of them ran (their results are stored either way)."""
    reports, problems = [], []
    for frame, suite in checks:
        if frame.empty:
            log.info("%s: no rows for %s", what, suite.name)
            continue
        report = validate_frame(settings, frame, suite, run_date)
        reports.append(report)
        try:
            report.raise_on_errors()
        except GateFailed as failure:
            problems.append(str(failure))
    if problems:
        raise GateFailed(f"{what}:\n" + "\n\n".join(problems))
    return reports


def features_frame(
    settings: Settings, as_of: dt.date
) -> tuple[pd.DataFrame, int, dict[str, float]]:
    """The date's features (sampled when large), the number of customers known on the date
    under the same sample, and the guarded features' means over the previous dates."""
    from expectations.suites import GUARDED_FEATURES

    cutoff = as_of_cutoff(as_of)
    with connect(settings, read_only=True) as con:
        rows = con.execute(
            "SELECT count(*) FROM marts.customer_features WHERE as_of_date = ?", [as_of]
        ).fetchone()[0]
        sample = _sample_filter("customer_id", rows, settings.quality.gate_sample_rows)
        frame = con.execute(
            f"SELECT * FROM marts.customer_features WHERE as_of_date = ? AND {sample}", [as_of]
        ).df()
        known = con.execute(
            f"SELECT count(*) FROM raw.customers WHERE signup_at < ? AND {sample}", [cutoff]
        ).fetchone()[0]
        previous = previous_means(con, "marts.customer_features", GUARDED_FEATURES, as_of)
    return frame, known, previous


def previous_means(con, table: str, columns, as_of: dt.date) -> dict[str, float]:
    """Each column's mean over the previous dates of `table` (the mean of the per-date means, so
    that every earlier run weighs the same), for the distribution guards."""
    means = con.execute(
        f"""SELECT {", ".join(f"avg({c})" for c in columns)} FROM (
                SELECT {", ".join(f"avg({c}) AS {c}" for c in columns)}
                FROM {table}
                WHERE as_of_date IN (
                    SELECT DISTINCT as_of_date FROM {table}
                    WHERE as_of_date < ? ORDER BY as_of_date DESC LIMIT {PREVIOUS_RUNS_FOR_MEANS})
                GROUP BY as_of_date)""",
        [as_of],
    ).fetchone()
    return {c: float(m) for c, m in zip(columns, means, strict=True) if m is not None}


def run_features_gate(settings: Settings, as_of: dt.date):
    from expectations.suites import features_suite

    frame, known, previous = features_frame(settings, as_of)
    report = validate_frame(
        settings, frame, features_suite(known, previous, settings.quality), as_of
    )
    report.raise_on_errors()
    return report


def segments_frame(
    settings: Settings, as_of: dt.date
) -> tuple[pd.DataFrame, int, dict[str, float], list[str]]:
    """The date's staged segments (sampled when large), the number of feature rows of the date
    under the same sample, the guarded scores' means over the previous publications, and the
    models that were not applicable when the date was scored."""
    from expectations.suites import GUARDED_SCORES
    from ml.segments.score import not_applicable_on

    with connect(settings, read_only=True) as con:
        if not table_exists(con, "staging", "customer_segments"):
            raise QualityGateFailed(
                f"segments gate for {as_of}: staging.customer_segments does not exist; "
                "scoring must run before the gate"
            )
        rows = con.execute(
            "SELECT count(*) FROM staging.customer_segments WHERE as_of_date = ?", [as_of]
        ).fetchone()[0]
        sample = _sample_filter("customer_id", rows, settings.quality.gate_sample_rows)
        frame = con.execute(
            f"SELECT * FROM staging.customer_segments WHERE as_of_date = ? AND {sample}", [as_of]
        ).df()
        feature_rows = con.execute(
            f"SELECT count(*) FROM marts.customer_features WHERE as_of_date = ? AND {sample}",
            [as_of],
        ).fetchone()[0]
        previous = (
            previous_means(con, "published.customer_segments", GUARDED_SCORES, as_of)
            if table_exists(con, "published", "customer_segments")
            else {}
        )
        not_applicable = list(not_applicable_on(con, "staging", as_of))
    return frame, feature_rows, previous, not_applicable


def run_segments_gate(settings: Settings, as_of: dt.date):
    """The scored segments in staging, before they are published: a failure stops the publish
    and leaves the last good publication in place."""
    from expectations.suites import segments_suite

    frame, feature_rows, previous, not_applicable = segments_frame(settings, as_of)
    suite = segments_suite(
        feature_rows, list(catalogue.PERSONA_NAMES), previous, settings.quality, not_applicable
    )
    report = validate_frame(settings, frame, suite, as_of)
    report.raise_on_errors()
    return report


def run_triggers_gate(settings: Settings, refresh_id: str) -> list:
    """A trigger refresh's staged members, with their consent as known now (ml.segments.consent, and
    the latest daily publication), and its new suppressions: a failure stops the publish and
    leaves the last delta export as it was."""
    from expectations.suites import suppressions_suite, trigger_members_suite

    with connect(settings, read_only=True) as con:
        summary = staged_summary(con, refresh_id)
        create_current_suppressions(con, settings.loading.empty_opt_in_emailable)
        create_latest_segments(con, latest_daily_publication(con))
        members = con.execute(
            """SELECT m.*, coalesce(s.reason, CASE WHEN NOT l.is_emailable
                                                  THEN l.suppression_reason END)
                           AS suppression_reason
               FROM staging.trigger_members m
               LEFT JOIN current_suppressions s ON s.customer_id = m.customer_id
               LEFT JOIN latest_segments l ON l.customer_id = m.customer_id
               WHERE m.refresh_id = ?""",
            [refresh_id],
        ).df()
        suppressions = con.execute(
            "SELECT * FROM staging.trigger_suppressions WHERE refresh_id = ?", [refresh_id]
        ).df()
    checks = (
        (members, trigger_members_suite(summary["triggers"])),
        (suppressions, suppressions_suite()),
    )
    run_date = dt.datetime.fromisoformat(summary["evaluated_at"]).date()
    return validate_all(settings, checks, run_date, what=f"triggers gate of refresh {refresh_id}")


def quality_summary(settings: Settings) -> str:
    """The newest result of every suite, for people (read-only)."""
    with connect(settings, read_only=True) as con:
        if not table_exists(con, "quality", "validation_results"):
            return "quality gates: not run yet"
        rows = con.execute(
            """SELECT suite, run_date, count(*),
                      count(*) FILTER (WHERE NOT success AND severity = 'error'),
                      count(*) FILTER (WHERE NOT success AND severity <> 'error')
               FROM quality.validation_results
               WHERE (suite, run_date) IN (
                   SELECT (suite, max(run_date)) FROM quality.validation_results GROUP BY suite)
               GROUP BY suite, run_date ORDER BY suite"""
        ).fetchall()
    lines = [f"quality gates (Data Docs: {settings.reports_dir / 'data_docs' / 'index.html'}):"]
    for suite, run_date, total, errors, warnings in rows:
        verdict = "FAILED" if errors else "passed"
        lines.append(
            f"  {suite:<18} {run_date} {verdict}: {total} expectations, "
            f"{errors} failed errors, {warnings} warnings"
        )
    return "\n".join(lines)
