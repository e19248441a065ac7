"""Trigger segments: the customers who just did something worth an e-mail, within minutes.

The daily run keeps the model segments fresh; triggers react to the newest events between daily
runs. New landing files start the `refresh_triggers` DAG (dags/refresh_triggers.py): it ingests
them, evaluates the triggers on the new events (here, into staging), gates the result and
publishes a delta export (ml/triggers/exports.py).

The marketer defines triggers next to the audiences, under `triggers:` in the audience file:

    triggers:
      - name: cart_abandoner                 # letters, digits, _ and -; names the export file
        description: A reminder of the cart they left
        event: web_events.add_to_cart        # what enters a customer: <entity>.<type>
        unless_followed_by: [web_events.checkout, orders.completed]
        within_hours: 1                      # ... by one of these within this: abandoned
        filters: {churn_risk_band: [high]}   # optional, on the latest published segments
        holdout_share: 0.1                   # a stable control group, as for audiences
        lookback_hours: 24                   # optional (24): older events trigger nothing
        cooldown_hours: 24                   # optional (24): enters at most once per this

Events: `orders.<status>` (completed, cancelled, refunded; no status is completed),
`web_events.<type>` and `email_events.<sent|delivered|open|click>`. Unsubscribes, complaints
and bounces are not triggers: they suppress, always (ml/segments/consent.py).

A refresh evaluates at its evaluation time T (the load time of its ingest):
- New events are the rows of landing files no published refresh has evaluated, whoever loaded
  them (this refresh, or a daily run that got there first).
- An instant trigger (no `unless_followed_by`) enters the customers with a new event in
  [T - lookback, T].
- An abandonment trigger enters the customers with an event whose deadline (event +
  within_hours) has passed by T but had not at the previous refresh (or whose event is new),
  within the lookback, and who did none of the `unless_followed_by` events between the event
  and its deadline: a cart counts as abandoned at the first refresh after its deadline.
- A customer enters only when e-mailable now (ml.segments.consent, and not suppressed by the latest daily
  publication), matching the filters on their row of the latest daily publication (a customer
  not published yet matches no filter), and not entered in the same trigger within the cooldown.
  Members whose hash falls in the holdout are recorded but not exported, as for audiences.
- Suppressions: every customer suppressed now (ml.segments.consent) or by the latest daily publication
  who is not in `published.suppressions` yet: the first refresh publishes the whole list, later
  ones the new suppressions.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ml.config import Settings
from ml.contract import EMAIL_EVENT_TYPES, ORDER_STATUSES, WEB_EVENT_TYPES
from ml.errors import AudienceError, TriggerError
from ml.segments.audiences import (
    HOLDOUT_FRACTION_SQL,
    Filter,
    check_unique_names,
    filter_vocabulary,
    parse_description,
    parse_entry,
    parse_filters,
    parse_holdout_share,
    read_audience_file,
)
from ml.segments.consent import SUPPRESSING_EVENTS, create_current_suppressions
from ml.warehouse import tables
from ml.warehouse.connection import connect, table_exists

log = logging.getLogger(__name__)

TRIGGER_FIELDS = (
    "name",
    "description",
    "event",
    "unless_followed_by",
    "within_hours",
    "filters",
    "holdout_share",
    "lookback_hours",
    "cooldown_hours",
)
DEFAULT_LOOKBACK_HOURS = 24.0
DEFAULT_COOLDOWN_HOURS = 24.0


@dataclass(frozen=True)
class EventSource:
    """How an entity's rows read as events: when, what kind, and the detail an e-mail can use."""

    time: str
    kind: str
    detail: str
    kinds: tuple[str, ...]


EVENT_SOURCES = {
    "orders": EventSource(
        "ordered_at", "coalesce(status, 'completed')", "category", ORDER_STATUSES
    ),
    "web_events": EventSource("occurred_at", "event_type", "category", WEB_EVENT_TYPES),
    "email_events": EventSource(
        "occurred_at",
        "event_type",
        "campaign_id",
        tuple(kind for kind in EMAIL_EVENT_TYPES if kind not in SUPPRESSING_EVENTS),
    ),
}
EVENT_NAMES = tuple(f"{entity}.{kind}" for entity, s in EVENT_SOURCES.items() for kind in s.kinds)

REFRESH_ID_FORMAT = "%Y%m%dT%H%M%SZ"
"""A refresh is named by its evaluation time, e.g. 20261201T141503Z (its export folder)."""


@dataclass(frozen=True)
class Trigger:
    name: str
    description: str
    event: str
    unless_followed_by: tuple[str, ...]
    within_hours: float | None
    filters: tuple[Filter, ...]
    holdout_share: float
    lookback_hours: float
    cooldown_hours: float

    def definition(self) -> dict:
        """What the trigger meant, recorded with each refresh."""
        return {
            "event": self.event,
            "unless_followed_by": list(self.unless_followed_by),
            "within_hours": self.within_hours,
            "filters": [[f.column, f.operator, f.value] for f in self.filters],
            "holdout_share": self.holdout_share,
            "lookback_hours": self.lookback_hours,
            "cooldown_hours": self.cooldown_hours,
        }


# --------------------------------------------------------------------------- definitions


def _event(where: str, value) -> str:
    if value not in EVENT_NAMES:
        hint = ""
        if isinstance(value, str) and value.removeprefix("email_events.") in SUPPRESSING_EVENTS:
            hint = " (unsubscribes, complaints and bounces always suppress; they trigger nothing)"
        raise AudienceError(
            f"{where}: {value!r} is not an event{hint}; events: {', '.join(EVENT_NAMES)}"
        )
    return value


def _hours(where: str, value, default: float | None, allow_zero: bool = False) -> float | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise AudienceError(f"{where}: expected a number of hours, got {value!r}")
    if value == 0 and not allow_zero:
        raise AudienceError(f"{where}: must be above 0")
    return float(value)


def _parse_trigger(file: Path, index: int, raw, vocabulary: dict) -> Trigger:
    name, where = parse_entry(file, "trigger", index, raw, TRIGGER_FIELDS)
    event = _event(f"{where} 'event'", raw.get("event"))
    unless = raw.get("unless_followed_by") or []
    if not isinstance(unless, list):
        raise AudienceError(f"{where} 'unless_followed_by': expected a list of events")
    unless = tuple(_event(f"{where} 'unless_followed_by'", value) for value in unless)
    within = _hours(f"{where} 'within_hours'", raw.get("within_hours"), None)
    if bool(unless) != (within is not None):
        raise AudienceError(
            f"{where} 'within_hours': 'unless_followed_by' and 'within_hours' go together "
            "(an abandonment: the event, then none of these within so many hours)"
        )
    filters = ()
    if raw.get("filters") is not None:
        filters = parse_filters(f"{where} 'filters'", raw["filters"], vocabulary)
    return Trigger(
        name=name,
        description=parse_description(where, raw.get("description", "")),
        event=event,
        unless_followed_by=unless,
        within_hours=within,
        filters=filters,
        holdout_share=parse_holdout_share(where, raw.get("holdout_share", 0.0)),
        lookback_hours=_hours(
            f"{where} 'lookback_hours'", raw.get("lookback_hours"), DEFAULT_LOOKBACK_HOURS
        ),
        cooldown_hours=_hours(
            f"{where} 'cooldown_hours'", raw.get("cooldown_hours"), DEFAULT_COOLDOWN_HOURS, True
        ),
    )


def load_triggers(path: Path) -> list[Trigger]:
    """The triggers of the audience file (none when it has no `triggers:`); AudienceError names
    the file, the trigger and the field that is wrong."""
    path = Path(path)
    raw = read_audience_file(path).get("triggers") or []
    if not isinstance(raw, list):
        raise AudienceError(f"{path}: 'triggers:' must be a list")
    vocabulary = filter_vocabulary()
    triggers = [_parse_trigger(path, index, entry, vocabulary) for index, entry in enumerate(raw)]
    check_unique_names(path, "trigger", [t.name for t in triggers])
    if any(t.name.lower() == "suppressions" for t in triggers):
        raise AudienceError(
            f"{path}: trigger 'suppressions': the name is taken by the suppression list"
        )
    return triggers


# --------------------------------------------------------------------------- evaluation


def latest_daily_publication(con: duckdb.DuckDBPyConnection) -> dt.date | None:
    """The newest date the daily run published, whose segments triggers filter on."""
    if not table_exists(con, "published", "publications"):
        return None
    return con.execute("SELECT max(as_of_date) FROM published.publications").fetchone()[0]


def create_latest_segments(con: duckdb.DuckDBPyConnection, as_of: dt.date | None) -> None:
    """The temp table `latest_segments`: each customer's row of the latest daily publication."""
    if as_of is None:
        # Nothing published yet: no rows, the published columns (which filters name).
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE latest_segments {tables.CUSTOMER_SEGMENTS.definition}"
        )
        return
    con.execute(
        """CREATE OR REPLACE TEMP TABLE latest_segments AS
           SELECT * FROM published.customer_segments WHERE as_of_date = ?""",
        [as_of],
    )


def _create_events(
    con: duckdb.DuckDBPyConnection, triggers: list[Trigger], since: dt.datetime
) -> None:
    """The temp table `events`: every row since `since` of the kinds the triggers use, each
    flagged `is_new` when its file has not been evaluated by a published refresh."""
    kinds: dict[str, set[str]] = {}
    for trigger in triggers:
        for name in (trigger.event, *trigger.unless_followed_by):
            entity, kind = name.split(".", 1)
            kinds.setdefault(entity, set()).add(kind)
    selects = [
        "SELECT NULL::VARCHAR AS entity, NULL::VARCHAR AS kind, NULL::VARCHAR AS customer_id, "
        "NULL::TIMESTAMP AS happened_at, NULL::VARCHAR AS detail, NULL::BOOLEAN AS is_new WHERE false"
    ]
    for entity, wanted in sorted(kinds.items()):
        source = EVENT_SOURCES[entity]
        listed = ", ".join(f"'{kind}'" for kind in sorted(wanted))
        selects.append(
            f"""SELECT '{entity}', {source.kind}, customer_id, {source.time}, {source.detail},
                       _source_file IN (SELECT source_file FROM new_files WHERE entity = '{entity}')
                FROM raw.{entity}
                WHERE {source.time} >= TIMESTAMP '{since:%Y-%m-%d %H:%M:%S}'
                  AND {source.time} <= (SELECT evaluated_at FROM clock)
                  AND {source.kind} IN ({listed})"""
        )
    con.execute(f"CREATE OR REPLACE TEMP TABLE events AS {' UNION ALL '.join(selects)}")


def _candidates_sql(trigger: Trigger) -> tuple[str, list]:
    """Each customer the trigger's events enter (customer_id, event_at, event_detail)."""
    entity, kind = trigger.event.split(".", 1)
    lookback = int(trigger.lookback_hours * 3600 * 1e6)
    if trigger.within_hours is None:
        return (
            """SELECT customer_id, min(happened_at) AS event_at, arg_min(detail, happened_at) AS event_detail
               FROM events
               WHERE entity = ? AND kind = ? AND is_new
                 AND happened_at >= (SELECT evaluated_at FROM clock) - to_microseconds(?)
               GROUP BY customer_id""",
            [entity, kind, lookback],
        )
    within = int(trigger.within_hours * 3600 * 1e6)
    followers = " OR ".join("(f.entity = ? AND f.kind = ?)" for _ in trigger.unless_followed_by)
    follower_params = [part for name in trigger.unless_followed_by for part in name.split(".", 1)]
    return (
        f"""SELECT e.customer_id, min(e.happened_at) AS event_at, arg_min(e.detail, e.happened_at) AS event_detail
            FROM events e, clock
            WHERE e.entity = ? AND e.kind = ?
              AND e.happened_at + to_microseconds(?) <= clock.evaluated_at
              AND e.happened_at + to_microseconds(?) >= clock.evaluated_at - to_microseconds(?)
              AND (e.is_new OR clock.previous_evaluated_at IS NULL
                   OR e.happened_at + to_microseconds(?) > clock.previous_evaluated_at)
              AND NOT EXISTS (
                  SELECT 1 FROM events f
                  WHERE f.customer_id = e.customer_id AND ({followers})
                    AND f.happened_at > e.happened_at AND f.happened_at <= e.happened_at + to_microseconds(?))
            GROUP BY e.customer_id""",
        [entity, kind, within, within, lookback, within, *follower_params, within],
    )


def _stage_members(con: duckdb.DuckDBPyConnection, trigger: Trigger, refresh_id: str) -> None:
    candidates, params = _candidates_sql(trigger)
    where, filter_params = _filters_sql(trigger) if trigger.filters else ("true", [])
    cooldown = int(trigger.cooldown_hours * 3600 * 1e6)
    fraction = HOLDOUT_FRACTION_SQL.format(audience="?")
    con.execute(
        f"""INSERT INTO staging.trigger_members
        SELECT ?, ?, customer_id, event_at, event_detail, {fraction} < ?,
               (SELECT evaluated_at FROM clock)
        FROM (
            SELECT c.*
            FROM ({candidates}) c
            LEFT JOIN latest_segments l ON l.customer_id = c.customer_id
            WHERE c.customer_id NOT IN (SELECT customer_id FROM current_suppressions)
              AND coalesce(l.is_emailable, true)
              AND ({where})
              AND NOT EXISTS (
                  SELECT 1 FROM published.trigger_members p
                  WHERE p.trigger = ? AND p.customer_id = c.customer_id
                    AND p.evaluated_at > (SELECT evaluated_at FROM clock) - to_microseconds(?))
        )""",
        [
            refresh_id,
            trigger.name,
            trigger.name,
            trigger.holdout_share,
            *params,
            *filter_params,
            trigger.name,
            cooldown,
        ],
    )


def _filters_sql(trigger: Trigger) -> tuple[str, list]:
    """The trigger's filters on the customer's latest published row (`l`)."""
    parts, params = ["l.customer_id IS NOT NULL"], []
    for condition in trigger.filters:
        text, values = Filter(f"l.{condition.column}", condition.operator, condition.value).sql()
        parts.append(f"({text})")
        params += values
    return " AND ".join(parts), params


def stage_refresh(settings: Settings, evaluated_at: dt.datetime) -> dict:
    """Evaluate every trigger and the suppressions at `evaluated_at` into staging (replacing
    whatever was staged before). Returns the refresh's id and counts."""
    triggers = load_triggers(settings.publishing.audiences_path)
    evaluated_at = evaluated_at.replace(tzinfo=None, microsecond=0)
    refresh_id = evaluated_at.strftime(REFRESH_ID_FORMAT)
    with connect(settings) as con:
        tables.ensure(con, *tables.TRIGGERS)
        previous = con.execute(
            "SELECT max(evaluated_at) FROM published.trigger_refreshes"
        ).fetchone()[0]
        if previous is not None and evaluated_at <= previous:
            raise TriggerError(
                f"refresh {refresh_id}: a refresh evaluated at {previous} is published already; "
                "an older evaluation would publish stale triggers (start a new refresh instead)"
            )
        daily_as_of = latest_daily_publication(con)
        con.execute(
            "CREATE OR REPLACE TEMP TABLE clock AS SELECT ?::TIMESTAMP AS evaluated_at, "
            "?::TIMESTAMP AS previous_evaluated_at",
            [evaluated_at, previous],
        )
        con.execute(
            """CREATE OR REPLACE TEMP TABLE new_files AS
               SELECT entity, source_file, sha256 FROM raw.loaded_files l
               WHERE NOT EXISTS (
                   SELECT 1 FROM published.trigger_evaluated_files e
                   WHERE e.entity = l.entity AND e.source_file = l.source_file
                     AND e.sha256 = l.sha256)"""
        )
        create_latest_segments(con, daily_as_of)
        create_current_suppressions(con, settings.loading.empty_opt_in_emailable)
        horizon = max((t.lookback_hours + (t.within_hours or 0) for t in triggers), default=0.0)
        _create_events(con, triggers, evaluated_at - dt.timedelta(hours=horizon))
        con.execute("BEGIN TRANSACTION")
        try:
            for table in (
                "trigger_members",
                "trigger_suppressions",
                "trigger_evaluated_files",
                "trigger_refreshes",
            ):
                con.execute(f"DELETE FROM staging.{table}")
            for trigger in triggers:
                _stage_members(con, trigger, refresh_id)
            # Suppressed now, or by the latest daily publication (which may know reasons the
            # raw rows no longer show), and not on the published list yet.
            con.execute(
                """INSERT INTO staging.trigger_suppressions
                   SELECT ?, customer_id, reason, occurred_at FROM (
                       SELECT customer_id, reason, occurred_at FROM current_suppressions
                       UNION ALL
                       SELECT customer_id, suppression_reason, NULL FROM latest_segments
                       WHERE NOT is_emailable
                         AND customer_id NOT IN (SELECT customer_id FROM current_suppressions))
                   WHERE customer_id NOT IN (SELECT customer_id FROM published.suppressions)
                   ORDER BY customer_id""",
                [refresh_id],
            )
            con.execute(
                "INSERT INTO staging.trigger_evaluated_files SELECT ?, * FROM new_files",
                [refresh_id],
            )
            definitions = json.dumps({t.name: t.definition() for t in triggers}, sort_keys=True)
            con.execute(
                "INSERT INTO staging.trigger_refreshes VALUES (?, ?, ?, ?, ?)",
                [refresh_id, evaluated_at, previous, daily_as_of, definitions],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        summary = staged_summary(con, refresh_id)
    log.info("staged refresh %s: %s", refresh_id, json.dumps(summary, default=str))
    return summary


def staged_summary(con: duckdb.DuckDBPyConnection, refresh_id: str) -> dict:
    """What is staged for the refresh: members per trigger (treatment, holdout), suppressions,
    and the files evaluated."""
    found = con.execute(
        "SELECT evaluated_at, previous_evaluated_at, daily_as_of, definitions "
        "FROM staging.trigger_refreshes WHERE refresh_id = ?",
        [refresh_id],
    ).fetchone()
    if found is None:
        raise TriggerError(f"refresh {refresh_id} is not staged: evaluate it first")
    members = con.execute(
        """SELECT trigger, count(*) FILTER (WHERE NOT is_holdout), count(*) FILTER (WHERE is_holdout)
           FROM staging.trigger_members WHERE refresh_id = ? GROUP BY trigger ORDER BY trigger""",
        [refresh_id],
    ).fetchall()
    (suppressions,) = con.execute(
        "SELECT count(*) FROM staging.trigger_suppressions WHERE refresh_id = ?", [refresh_id]
    ).fetchone()
    (files,) = con.execute(
        "SELECT count(*) FROM staging.trigger_evaluated_files WHERE refresh_id = ?", [refresh_id]
    ).fetchone()
    return {
        "refresh_id": refresh_id,
        "evaluated_at": found[0].isoformat(),
        "previous_evaluated_at": found[1].isoformat() if found[1] else None,
        "daily_as_of": found[2].isoformat() if found[2] else None,
        "new_files": files,
        "triggers": sorted(json.loads(found[3])),
        "members": {name: {"treatment": t, "holdout": h} for name, t, h in members},
        "suppressions": suppressions,
    }
