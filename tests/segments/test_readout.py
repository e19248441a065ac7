"""Campaign readout on a hand-made campaign, against a direct computation."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from ml.config import Settings
from ml.errors import ReadoutError
from ml.ingest.raw_tables import ensure_raw_tables
from ml.segments.readout import readout
from ml.warehouse import tables
from ml.warehouse.connection import connect

AS_OF = dt.date(2026, 6, 30)
Z95 = 1.959963984540054


@pytest.fixture
def campaign(settings: Settings) -> dict:
    """400 treatment and 200 holdout members of `spring` published for AS_OF; 60 and 20 of
    them buy within 14 days of the send (some twice), plus orders that must not count."""
    rng = np.random.default_rng(5)
    treatment = [f"T{i:04d}" for i in range(400)]
    holdout = [f"H{i:04d}" for i in range(200)]
    revenue = {c: 0.0 for c in treatment + holdout}
    orders = []

    def order(customer: str, at: dt.datetime, amount: float, status: str = "completed") -> None:
        orders.append((f"O{len(orders):05d}", customer, at, amount, status))

    send = dt.datetime(2026, 7, 1)
    for buyers in (treatment[:60], holdout[:20]):
        for customer in buyers:
            for _ in range(1 + (rng.random() < 0.3)):
                amount = round(float(rng.uniform(10, 200)), 2)
                order(
                    customer, send + dt.timedelta(hours=float(rng.uniform(0, 14 * 24 - 1))), amount
                )
                revenue[customer] += amount
    order(treatment[100], send - dt.timedelta(minutes=1), 99.0)  # before the send
    order(treatment[101], send + dt.timedelta(days=14), 99.0)  # the day after the window
    order(holdout[100], send + dt.timedelta(days=2), 99.0, "cancelled")
    order("X0001", send + dt.timedelta(days=1), 99.0)  # not a member

    with connect(settings) as con:
        ensure_raw_tables(con)
        tables.ensure(con, *tables.PUBLISHED_SEGMENTS)
        order_rows = pd.DataFrame(  # noqa: F841  (read by name in SQL)
            orders, columns=["order_id", "customer_id", "ordered_at", "amount", "status"]
        )
        con.execute(
            """INSERT INTO raw.order_versions (order_id, customer_id, ordered_at, amount, status,
                                       _source_file, _source_row)
               SELECT *, 'orders.csv', 0 FROM order_rows"""
        )
        member_rows = pd.DataFrame(  # noqa: F841  (read by name in SQL)
            {"customer_id": treatment + holdout, "is_holdout": [False] * 400 + [True] * 200}
        )
        con.execute(
            """INSERT INTO published.audience_members
               SELECT DATE '2026-06-30', 'spring', customer_id, is_holdout FROM member_rows"""
        )
    return {"treatment": treatment, "holdout": holdout, "revenue": revenue}


def test_readout_matches_a_direct_computation(settings: Settings, campaign: dict):
    result = readout(settings, "spring", AS_OF, window_days=14)

    t = np.array([campaign["revenue"][c] for c in campaign["treatment"]])
    h = np.array([campaign["revenue"][c] for c in campaign["holdout"]])
    p_t, p_h = (t > 0).mean(), (h > 0).mean()
    assert (result.treatment.customers, result.treatment.converters) == (400, 60)
    assert (result.holdout.customers, result.holdout.converters) == (200, 20)
    assert result.treatment.revenue == pytest.approx(t.sum())
    assert result.holdout.revenue == pytest.approx(h.sum())

    se = math.sqrt(p_t * (1 - p_t) / 400 + p_h * (1 - p_h) / 200)
    assert result.conversion_difference == pytest.approx(
        (p_t - p_h, p_t - p_h - Z95 * se, p_t - p_h + Z95 * se)
    )
    # 15% against 10%: a 50% relative lift, interval from the log of the ratio.
    se_log = math.sqrt(1 / 60 - 1 / 400 + 1 / 20 - 1 / 200)
    assert result.relative_lift == pytest.approx(
        (0.5, 1.5 * math.exp(-Z95 * se_log) - 1, 1.5 * math.exp(Z95 * se_log) - 1)
    )
    se_revenue = math.sqrt(t.var(ddof=1) / 400 + h.var(ddof=1) / 200)
    difference = t.mean() - h.mean()
    assert result.revenue_difference == pytest.approx(
        (difference, difference - Z95 * se_revenue, difference + Z95 * se_revenue)
    )
    text = result.render()
    assert "relative lift: +50.0%" in text
    assert "15.00%" in text and "10.00%" in text


def test_readout_is_stored_once_per_audience_date_and_window(settings: Settings, campaign: dict):
    readout(settings, "spring", AS_OF, window_days=14)
    readout(settings, "spring", AS_OF, window_days=14)
    readout(settings, "spring", AS_OF, window_days=7)
    with connect(settings, read_only=True) as con:
        rows = con.execute(
            """SELECT window_days, treatment_converters, holdout_converters, relative_lift
               FROM published.campaign_readouts ORDER BY window_days"""
        ).fetchall()
    assert [r[0] for r in rows] == [7, 14]
    assert rows[1][1:3] == (60, 20) and rows[1][3] == pytest.approx(0.5)


def test_readout_refuses_what_it_cannot_answer(settings: Settings, campaign: dict):
    with pytest.raises(ReadoutError, match="'autumn' has no published members.*spring"):
        readout(settings, "autumn", AS_OF, window_days=14)
    with pytest.raises(ReadoutError, match="orders are loaded only up to 2026-07-15"):
        readout(settings, "spring", AS_OF, window_days=30)
