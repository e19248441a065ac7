"""Who may be e-mailed now, whatever date an export is for.

A scored row records consent as of its date (ml/score.py). But an unsubscribe, a complaint or a
hard bounce loaded since then must stop every later send at once: the audience exports of any
date published afterwards (ml/publish.py) and every trigger export (ml/triggers.py) leave out
the customers in `current_suppressions`, built from everything the warehouse holds now:

- an unsubscribe, complaint or bounce event at any time (the contract: these always suppress);
- `email_opt_in` false, or an address that is not one, in the customers' current rows.

Consent only ever narrows here: nobody suppressed by a publication becomes e-mailable through
this table, it only adds the newer suppressions.
"""

from __future__ import annotations

import duckdb

SUPPRESSION_REASONS = ("unsubscribed", "complaint", "hard_bounce", "no_opt_in", "invalid_address")
"""In order of precedence: a customer's first reason that applies is the one recorded (the
order scoring uses)."""
SUPPRESSING_EVENTS = {
    "unsubscribe": "unsubscribed",
    "complaint": "complaint",
    "bounce": "hard_bounce",
}
"""E-mail event types that suppress for good, and their reason."""
VALID_ADDRESS_PATTERN = r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}"
"""What counts as an address: the dbt macro `duckdb__is_valid_email` uses the same pattern for
the features (a test keeps the two equal)."""


def create_current_suppressions(con: duckdb.DuckDBPyConnection) -> int:
    """The temp table `current_suppressions` (customer_id, reason, occurred_at: when the event
    happened, null for opt-in and address), one row per suppressed customer. Returns its rows."""
    events = ", ".join(f"'{event}'" for event in SUPPRESSING_EVENTS)
    reason_of_event = " ".join(
        f"WHEN '{event}' THEN '{reason}'" for event, reason in SUPPRESSING_EVENTS.items()
    )
    precedence = " ".join(
        f"WHEN '{reason}' THEN {rank}" for rank, reason in enumerate(SUPPRESSION_REASONS)
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE current_suppressions AS
        WITH reasons AS (
            SELECT customer_id, CASE event_type {reason_of_event} END AS reason,
                   min(occurred_at) AS occurred_at
            FROM raw.email_events WHERE event_type IN ({events}) GROUP BY ALL
            UNION ALL
            SELECT customer_id,
                   CASE WHEN email_opt_in = false THEN 'no_opt_in' ELSE 'invalid_address' END,
                   NULL
            FROM raw.customers
            WHERE email_opt_in = false
               OR NOT coalesce(regexp_full_match(lower(trim(email)), '{VALID_ADDRESS_PATTERN}'), false)
        )
        SELECT customer_id,
               arg_min(reason, (CASE reason {precedence} END, occurred_at)) AS reason,
               arg_min(occurred_at, (CASE reason {precedence} END, occurred_at)) AS occurred_at
        FROM reasons GROUP BY customer_id"""
    )
    return con.execute("SELECT count(*) FROM current_suppressions").fetchone()[0]
