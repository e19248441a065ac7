"""Consent as the warehouse knows it now (ml/segments/consent.py), on raw rows made here."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from ml.config import Settings
from ml.ingest.raw_tables import ensure_raw_tables
from ml.segments.consent import create_current_suppressions
from ml.warehouse.connection import connect

DAY = dt.datetime(2026, 7, 1)


@pytest.mark.parametrize("empty_opt_in_emailable", [True, False])
def test_every_reason_is_found_and_the_first_in_precedence_wins(
    settings: Settings, empty_opt_in_emailable: bool
):
    customers = pd.DataFrame(  # noqa: F841  (read in SQL)
        {
            "customer_id": ["ok", "left", "both", "optout", "nomail", "bad", "silent"],
            "email": ["a@x.io", "b@x.io", "c@x.io", "d@x.io", None, "no-at-all", "g@x.io"],
            "email_opt_in": [True, True, False, False, None, True, None],
        }
    )
    events = pd.DataFrame(  # noqa: F841
        {
            "event_id": ["1", "2", "3", "4", "5"],
            "customer_id": ["left", "both", "both", "ok", "left"],
            "campaign_id": "C",
            "event_type": ["unsubscribe", "bounce", "complaint", "open", "unsubscribe"],
            "occurred_at": [DAY, DAY, DAY + dt.timedelta(hours=1), DAY, DAY - dt.timedelta(days=3)],
        }
    )
    with connect(settings) as con:
        ensure_raw_tables(con)
        con.execute(
            """INSERT INTO raw.customer_versions BY NAME
               SELECT *, TIMESTAMP '2025-01-01' AS signup_at, 'c.csv' AS _source_file,
                      1 AS _source_row FROM customers"""
        )
        con.execute(
            """INSERT INTO raw.email_events BY NAME
               SELECT *, 'e.csv' AS _source_file, 1 AS _source_row FROM events"""
        )
        create_current_suppressions(con, empty_opt_in_emailable)
        found = {
            row[0]: row[1:] for row in con.execute("SELECT * FROM current_suppressions").fetchall()
        }
    expected = {
        "left": ("unsubscribed", DAY - dt.timedelta(days=3)),  # the first time it happened
        "both": ("complaint", DAY + dt.timedelta(hours=1)),  # complaint before hard bounce
        "optout": ("no_opt_in", None),
        "nomail": ("invalid_address", None),  # no address, no e-mail
        "bad": ("invalid_address", None),
    }
    if not empty_opt_in_emailable:
        # The privacy-safe default: an empty opt-in is no opt-in.
        expected |= {"nomail": ("no_opt_in", None), "silent": ("no_opt_in", None)}
    assert found == expected
