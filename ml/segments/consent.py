"""Who may be e-mailed now, whatever date an export is for.

A scored row records consent as of its date (ml/segments/score.py). But an unsubscribe, a complaint or a
hard bounce loaded since then must stop every later send at once: the audience exports of any
date published afterwards (ml/segments/publish.py) and every trigger export (ml/triggers/refresh.py) leave out
the customers in `current_suppressions`, built from everything the warehouse holds now:

- an unsubscribe, complaint or bounce event at any time (the contract: these always suppress);
- `email_opt_in` false (or empty, unless SEGFLOW_EMPTY_OPT_IN_MEANS=opted_in), or an address
  that is not a plain address (ml/contract.py PLAIN_ADDRESS_PATTERN: none, malformed, or one a
  spreadsheet would run as a formula), in the customers' latest versions.

Consent is a log: raw keeps every version of every customer (ml/ingest/loader.py), so each opt-in
change is kept with the moment it took effect, beside the unsubscribe, complaint and bounce
events; `raw.consent_log` shows them as one log, from which the state at any time follows.

Consent only ever narrows here: nobody suppressed by a publication becomes e-mailable through
this table, it only adds the newer suppressions.
"""

from __future__ import annotations

import datetime as dt

import duckdb

from ml.contract import PLAIN_ADDRESS_PATTERN, VERSION_ORDER
from ml.warehouse.sql import literal

SUPPRESSION_REASONS = ("unsubscribed", "complaint", "hard_bounce", "no_opt_in", "invalid_address")
"""In order of precedence: a customer's first reason that applies is the one recorded (the
order scoring uses)."""
SUPPRESSING_EVENTS = {
    "unsubscribe": "unsubscribed",
    "complaint": "complaint",
    "bounce": "hard_bounce",
}
"""E-mail event types that suppress for good, and their reason."""
SUPPRESSING_EVENTS_SQL = ", ".join(f"'{event}'" for event in SUPPRESSING_EVENTS)
REASON_OF_EVENT_SQL = (
    "CASE event_type "
    + " ".join(f"WHEN '{event}' THEN '{reason}'" for event, reason in SUPPRESSING_EVENTS.items())
    + " END"
)


def is_plain_address_sql(address: str) -> str:
    """SQL: whether the address expression is a plain address (ml/contract.py
    PLAIN_ADDRESS_PATTERN, which dbt's `is_valid_email` applies for the features); false when it
    is null."""
    return f"coalesce(regexp_full_match({address}, {literal(PLAIN_ADDRESS_PATTERN)}), false)"


def create_current_suppressions(
    con: duckdb.DuckDBPyConnection, empty_opt_in_emailable: bool
) -> int:
    """The temp table `current_suppressions` (customer_id, reason, occurred_at: when the event
    happened, null for opt-in and address), one row per suppressed customer. Returns its rows."""
    opted_in = f"coalesce(email_opt_in, {str(empty_opt_in_emailable).lower()})"
    precedence = " ".join(
        f"WHEN '{reason}' THEN {rank}" for rank, reason in enumerate(SUPPRESSION_REASONS)
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE current_suppressions AS
        WITH reasons AS (
            SELECT customer_id, {REASON_OF_EVENT_SQL} AS reason,
                   min(occurred_at) AS occurred_at
            FROM raw.email_events WHERE event_type IN ({SUPPRESSING_EVENTS_SQL}) GROUP BY ALL
            UNION ALL
            SELECT customer_id,
                   CASE WHEN NOT {opted_in} THEN 'no_opt_in' ELSE 'invalid_address' END,
                   NULL
            FROM raw.customers
            WHERE NOT {opted_in}
               OR NOT {is_plain_address_sql("lower(trim(email))")}
        )
        SELECT customer_id,
               arg_min(reason, (CASE reason {precedence} END, occurred_at)) AS reason,
               arg_min(occurred_at, (CASE reason {precedence} END, occurred_at)) AS occurred_at
        FROM reasons GROUP BY customer_id"""
    )
    return con.execute("SELECT count(*) FROM current_suppressions").fetchone()[0]


def create_customers_in_force(con: duckdb.DuckDBPyConnection, cutoff: dt.datetime) -> None:
    """The temp table `customers_in_force` (customer_id, email): each customer's version in
    force at `cutoff`, by the rule of dbt's stg_shop__customers (the last version that took
    effect before it; a customer's first version counts since always)."""
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE customers_in_force AS
        WITH ordered AS (
            SELECT customer_id, email, _version_at,
                   row_number() OVER delivery AS version_number,
                   lead(_version_at) OVER delivery AS superseded_at
            FROM raw.customer_versions
            WINDOW delivery AS (PARTITION BY customer_id ORDER BY {VERSION_ORDER})
        )
        SELECT customer_id, email FROM ordered
        WHERE (version_number = 1 OR _version_at < $cutoff)
          AND (superseded_at IS NULL OR superseded_at >= $cutoff)""",
        {"cutoff": cutoff},
    )


def create_consent_log(con: duckdb.DuckDBPyConnection) -> None:
    """The view `raw.consent_log` (customer_id, changed_at, signal, source_file, source_row):
    every consent signal as one log. A customer's first opt-in state and each change of it in
    their versions, dated when the version took effect (the first since always: null), and
    every unsubscribe, complaint and hard bounce."""
    con.execute(
        f"""CREATE OR REPLACE VIEW raw.consent_log AS
        SELECT customer_id, CASE WHEN version_number > 1 THEN _version_at END AS changed_at,
               CASE WHEN email_opt_in IS NULL THEN 'opt_in_empty'
                    WHEN email_opt_in THEN 'opted_in' ELSE 'opted_out' END AS signal,
               _source_file AS source_file, _source_row AS source_row
        FROM (SELECT *, lag(email_opt_in) OVER delivery AS previous,
                     row_number() OVER delivery AS version_number
              FROM raw.customer_versions
              WINDOW delivery AS (PARTITION BY customer_id ORDER BY {VERSION_ORDER}))
        WHERE version_number = 1 OR previous IS DISTINCT FROM email_opt_in
        UNION ALL
        SELECT customer_id, occurred_at, {REASON_OF_EVENT_SQL},
               _source_file, _source_row
        FROM raw.email_events WHERE event_type IN ({SUPPRESSING_EVENTS_SQL})"""
    )
