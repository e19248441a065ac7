"""Campaign readout: did an audience's treatment convert better than its holdout?

The members of an audience published for `as_of` were split by a stable hash into treatment
(exported, sent) and holdout (never sent). Orders are attributed by time: a member converted
when they placed a completed order in the window of `window_days` from the send (by default
the day after `as_of`, when the export is first available), read from `raw.orders` (the
landing zone's orders after ingestion). Every member counts, whether they bought or not.

Reported per group: customers, converters, conversion rate and revenue per customer; between
them, with 95% confidence intervals (normal approximation, fine for the hundreds of customers
per group a holdout has):

- the difference in conversion rates (percentage points): p_t - p_h +- z * sqrt(p_t(1-p_t)/n_t
  + p_h(1-p_h)/n_h);
- the relative lift p_t / p_h - 1, with the interval of the log of the ratio (delta method):
  log(p_t / p_h) +- z * sqrt(1/c_t - 1/n_t + 1/c_h - 1/n_h), undefined when a group has no
  converter;
- the difference in revenue per customer (Welch: sample variances of each group).

The result is stored in `published.campaign_readouts` (one row per audience, date, send day
and window; a re-run replaces it).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

from ml.config import Settings
from ml.errors import ReadoutError
from ml.warehouse import tables
from ml.warehouse.connection import connect, table_exists

CONFIDENCE = 0.95
Z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)


@dataclass(frozen=True)
class Group:
    customers: int
    converters: int
    revenue: float
    revenue_squares: float
    """Sum over customers of (their revenue in the window) squared, for the variance."""

    @property
    def conversion_rate(self) -> float:
        return self.converters / self.customers

    @property
    def revenue_per_customer(self) -> float:
        return self.revenue / self.customers

    @property
    def revenue_variance(self) -> float:
        if self.customers < 2:
            return 0.0
        mean = self.revenue_per_customer
        return max(self.revenue_squares - self.customers * mean**2, 0.0) / (self.customers - 1)


@dataclass(frozen=True)
class Readout:
    audience: str
    as_of: dt.date
    sent_on: dt.date
    window_days: int
    treatment: Group
    holdout: Group

    @property
    def conversion_difference(self) -> tuple[float, float, float]:
        """p_t - p_h and its interval."""
        t, h = self.treatment, self.holdout
        p_t, p_h = t.conversion_rate, h.conversion_rate
        se = math.sqrt(p_t * (1 - p_t) / t.customers + p_h * (1 - p_h) / h.customers)
        return p_t - p_h, p_t - p_h - Z * se, p_t - p_h + Z * se

    @property
    def relative_lift(self) -> tuple[float, float, float] | None:
        """p_t / p_h - 1 and its interval; None when a group has no converter."""
        t, h = self.treatment, self.holdout
        if not t.converters or not h.converters:
            return None
        log_ratio = math.log(t.conversion_rate / h.conversion_rate)
        se = math.sqrt(1 / t.converters - 1 / t.customers + 1 / h.converters - 1 / h.customers)
        return tuple(math.exp(x) - 1 for x in (log_ratio, log_ratio - Z * se, log_ratio + Z * se))

    @property
    def revenue_difference(self) -> tuple[float, float, float]:
        """Revenue per customer, treatment minus holdout, and its interval."""
        t, h = self.treatment, self.holdout
        difference = t.revenue_per_customer - h.revenue_per_customer
        se = math.sqrt(t.revenue_variance / t.customers + h.revenue_variance / h.customers)
        return difference, difference - Z * se, difference + Z * se

    def render(self) -> str:
        last_day = self.sent_on + dt.timedelta(days=self.window_days - 1)
        lines = [
            f"readout of audience '{self.audience}' published for {self.as_of}: orders from "
            f"{self.sent_on} to {last_day} ({self.window_days} days)",
            f"  {'group':<10}{'customers':>11}{'converted':>11}{'conversion':>12}"
            f"{'revenue/customer':>18}",
        ]
        for name, group in (("treatment", self.treatment), ("holdout", self.holdout)):
            lines.append(
                f"  {name:<10}{group.customers:>11,}{group.converters:>11,}"
                f"{group.conversion_rate:>12.2%}{group.revenue_per_customer:>18,.2f}"
            )
        difference, low, high = self.conversion_difference
        level = f"{CONFIDENCE:.0%} CI"
        lines.append(
            f"  conversion: {difference * 100:+.2f} points ({level} {low * 100:+.2f} to "
            f"{high * 100:+.2f})"
        )
        lift = self.relative_lift
        if lift is None:
            lines.append("  relative lift: undefined (a group has no converter yet)")
        else:
            lines.append(
                f"  relative lift: {lift[0]:+.1%} ({level} {lift[1]:+.1%} to {lift[2]:+.1%})"
            )
        revenue, low, high = self.revenue_difference
        lines.append(
            f"  revenue per customer: {revenue:+,.2f} ({level} {low:+,.2f} to {high:+,.2f})"
        )
        if low > 0 or (lift and lift[1] > 0):
            verdict = "the treatment did better than the holdout"
        elif (lift and lift[2] < 0) or high < 0:
            verdict = "the treatment did worse than the holdout"
        else:
            verdict = "no difference can be told apart from chance"
        lines.append(f"  at {CONFIDENCE:.0%} confidence: {verdict}")
        return "\n".join(lines)


def _group(row) -> Group:
    customers, converters, revenue, squares = row
    return Group(int(customers), int(converters), float(revenue), float(squares))


def readout(
    settings: Settings,
    audience: str,
    as_of: dt.date,
    window_days: int,
    sent_on: dt.date | None = None,
) -> Readout:
    """Treatment against holdout of `audience` as published for `as_of`, over the orders in
    the `window_days` from `sent_on` (default: the day after `as_of`); stored in
    `published.campaign_readouts`."""
    sent_on = sent_on or as_of + dt.timedelta(days=1)
    window_end = sent_on + dt.timedelta(days=window_days)
    with connect(settings) as con:
        if not table_exists(con, "published", "audience_members"):
            raise ReadoutError("nothing published yet: publish segments first (segflow publish)")
        known = [
            row[0]
            for row in con.execute(
                """SELECT DISTINCT audience FROM published.audience_members
                   WHERE as_of_date = ? ORDER BY 1""",
                [as_of],
            ).fetchall()
        ]
        if audience not in known:
            raise ReadoutError(
                f"audience '{audience}' has no published members for {as_of} "
                f"(audiences published for that date: {', '.join(known) or 'none'})"
            )
        newest_order = con.execute("SELECT max(ordered_at) FROM raw.orders").fetchone()[0]
        if newest_order is None or newest_order.date() < window_end - dt.timedelta(days=1):
            raise ReadoutError(
                f"the window runs to {window_end - dt.timedelta(days=1)} but orders are loaded "
                f"only up to {newest_order.date() if newest_order else 'nothing'}: ingest the "
                "later days first, or choose a shorter --window-days"
            )
        rows = con.execute(
            """WITH revenue AS (
                   SELECT customer_id, sum(amount) AS revenue FROM raw.orders
                   WHERE ordered_at >= ? AND ordered_at < ?
                     AND coalesce(status, 'completed') = 'completed'
                   GROUP BY customer_id
               ),
               members AS (
                   SELECT m.is_holdout, coalesce(r.revenue, 0)::DOUBLE AS revenue,
                          r.customer_id IS NOT NULL AS converted
                   FROM published.audience_members m
                   LEFT JOIN revenue r USING (customer_id)
                   WHERE m.as_of_date = ? AND m.audience = ?
               )
               SELECT is_holdout, count(*), count(*) FILTER (WHERE converted),
                      sum(revenue), sum(revenue * revenue)
               FROM members GROUP BY is_holdout""",
            [sent_on, window_end, as_of, audience],
        ).fetchall()
        groups = {row[0]: _group(row[1:]) for row in rows}
        if True not in groups or False not in groups:
            raise ReadoutError(
                f"audience '{audience}' for {as_of} has no "
                f"{'holdout' if True not in groups else 'treatment'} members: a readout needs "
                "both (set a holdout_share above 0 in the audience file)"
            )
        result = Readout(audience, as_of, sent_on, window_days, groups[False], groups[True])
        _store(con, result)
    return result


def _store(con, result: Readout) -> None:
    lift = result.relative_lift or (None, None, None)
    values = [
        result.as_of,
        result.audience,
        result.sent_on,
        result.window_days,
        *(asdict(result.treatment)[k] for k in ("customers", "converters", "revenue")),
        *(asdict(result.holdout)[k] for k in ("customers", "converters", "revenue")),
        *result.conversion_difference,
        *lift,
        *result.revenue_difference,
    ]
    con.execute("BEGIN TRANSACTION")
    try:
        tables.ensure(con, tables.CAMPAIGN_READOUTS)
        con.execute(
            """DELETE FROM published.campaign_readouts
               WHERE as_of_date = ? AND audience = ? AND sent_on = ? AND window_days = ?""",
            values[:4],
        )
        placeholders = ", ".join("?" for _ in values)
        con.execute(
            f"""INSERT INTO published.campaign_readouts
                VALUES ({placeholders}, now() AT TIME ZONE 'UTC')""",
            values,
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
