"""What the dbt feature build is benchmarked against: the same customer features from one
hand-written DuckDB query over the raw tables (the floor), and from pandas (what many data
scientists would write).

    python bench/feature_baselines.py {duckdb,pandas} --as-of YYYY-MM-DD [--check]

The features are computed in this process, so the harness measures this process's wall time and
peak memory; `--check` then compares them with `marts.customer_features` for the date and fails
listing every difference.

Both baselines follow the mart's semantics (dbt_project/models): only rows before the start of
the day after the as-of date, completed orders only (no status counts as completed), windows
ending at that cutoff, opens and clicks counted once per campaign, rates capped at 1, RFM
quintiles by percent rank over every buyer, most-frequent values with ties to the smallest.
They cover every column of the mart but `avg_review_sentiment`, which needs the review text
model (ml/features/text_signal.py) and the table it writes, not raw data.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from ml.config import Settings, load_settings
from ml.contract import as_of_cutoff
from ml.warehouse.connection import connect

CORE_FEATURES = (
    # RFM
    "recency_days",
    "frequency",
    "monetary",
    "avg_order_value",
    "r_score",
    "f_score",
    "m_score",
    "rfm_score",
    "rfm_code",
    "rfm_segment",
    # Purchase rhythm
    "orders_30d",
    "orders_90d",
    "orders_365d",
    "avg_days_between_orders",
    "days_since_first_order",
    "days_since_signup",
    "spend_90d",
    "spend_trend",
    # E-mail engagement
    "email_sends_30d",
    "email_sends_90d",
    "email_opens_30d",
    "email_opens_90d",
    "email_clicks_30d",
    "email_clicks_90d",
    "email_open_rate_90d",
    "email_click_rate_90d",
    "days_since_last_open",
    "days_since_last_click",
    "email_clicks_per_week_90d",
    "is_unsubscribed",
    "has_hard_bounced",
    "has_complained",
    # Web behaviour (30 days)
    "web_sessions_30d",
    "product_views_30d",
    "add_to_carts_30d",
    "cart_abandonment_rate_30d",
    "avg_session_minutes_30d",
    # Context
    "preferred_device",
    "preferred_hour",
    "favourite_category",
    "country_code",
    "age_band",
    "acquisition_channel",
    # Reviews
    "review_count",
    "avg_rating",
    # Reachability
    "has_valid_email",
    "is_opted_in",
)

AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
# The mart's '[^@\s]+@[^@\s]+\.[A-Za-z]{2,}' with RE2's \s spelt out, so that Python's re
# (whose \s also matches other whitespace) accepts exactly the same addresses.
VALID_EMAIL = r"[^@\t\n\f\r ]+@[^@\t\n\f\r ]+\.[A-Za-z]{2,}"


FEATURES_SQL_FILE = Path(__file__).with_name("feature_baselines.sql")
"""The DuckDB baseline's query, its parameters bound by name."""


# --------------------------------------------------------------------------- DuckDB


def duckdb_features(settings: Settings, as_of: dt.date) -> pd.DataFrame:
    """customer_id and CORE_FEATURES for every customer known on `as_of`, in one query."""
    cutoff = as_of_cutoff(as_of)
    parameters = {
        "as_of": as_of,
        "cutoff": cutoff,
        **{f"since_{days}d": cutoff - dt.timedelta(days=days) for days in (30, 90, 180, 365)},
        "valid_email": VALID_EMAIL,
    }
    with connect(settings, read_only=True) as con:
        return con.execute(FEATURES_SQL_FILE.read_text(), parameters).df()


# --------------------------------------------------------------------------- pandas


ZERO_WHEN_ABSENT = (
    "frequency",
    "monetary",
    "orders_30d",
    "orders_90d",
    "orders_365d",
    "spend_90d",
    "spend_trend",
    "email_sends_30d",
    "email_sends_90d",
    "email_opens_30d",
    "email_opens_90d",
    "email_clicks_30d",
    "email_clicks_90d",
    "email_clicks_per_week_90d",
    "web_sessions_30d",
    "product_views_30d",
    "add_to_carts_30d",
    "review_count",
)
FALSE_WHEN_ABSENT = ("is_unsubscribed", "has_hard_bounced", "has_complained")

RAW_COLUMNS = {
    "customers": (
        "customer_id",
        "signup_at",
        "country",
        "birth_year",
        "acquisition_channel",
        "email",
        "email_opt_in",
    ),
    "orders": ("customer_id", "ordered_at", "amount", "category", "status"),
    "email_events": ("customer_id", "campaign_id", "event_type", "occurred_at", "device"),
    "web_events": ("customer_id", "session_id", "event_type", "occurred_at", "device"),
    "reviews": ("customer_id", "created_at", "rating"),
}


def pandas_features(settings: Settings, as_of: dt.date) -> pd.DataFrame:
    """The same features in pandas: each raw table's columns read as they are, then filtered,
    grouped and merged in pandas."""
    cutoff = pd.Timestamp(as_of_cutoff(as_of))
    with connect(settings, read_only=True) as con:
        customers = _customer_features(_read(con, "customers"), as_of, cutoff)
        per_customer = [
            _order_features(_read(con, "orders"), as_of, cutoff),
            _email_features(_read(con, "email_events"), as_of, cutoff),
            _web_features(_read(con, "web_events"), cutoff),
            _review_features(_read(con, "reviews"), cutoff),
        ]
    features = customers.join(per_customer, how="left")

    # What the mart coalesces for customers without orders, e-mails, sessions or reviews.
    features["rfm_segment"] = features.rfm_segment.fillna("No purchase yet")
    features[list(ZERO_WHEN_ABSENT)] = features[list(ZERO_WHEN_ABSENT)].fillna(0)
    features[list(FALSE_WHEN_ABSENT)] = features[list(FALSE_WHEN_ABSENT)].fillna(False).astype(bool)
    features["preferred_device"] = features.preferred_email_device.fillna(
        features.preferred_web_device
    )
    return features.reset_index()[["customer_id", *CORE_FEATURES]]


def _read(con: duckdb.DuckDBPyConnection, table: str) -> pd.DataFrame:
    """The columns the features need, as stored: no filtering or aggregation in SQL.

    Through Arrow: DuckDB's .df() builds Python strings and took ten times as long on the
    e-mail events, which would charge pandas for the hand-over rather than for its work."""
    rows = con.sql(f"SELECT {', '.join(RAW_COLUMNS[table])} FROM raw.{table}").to_arrow_table()
    # Decimals as floats, as .df() gives them: pandas has no fast decimal type.
    as_floats = pa.schema(
        [f.with_type(pa.float64()) if pa.types.is_decimal(f.type) else f for f in rows.schema]
    )
    return rows.cast(as_floats).to_pandas()


def _days_before(as_of: dt.date, timestamps: pd.Series) -> pd.Series:
    """Calendar days from each timestamp's date to the as-of date (SQL date_diff('day'))."""
    return (pd.Timestamp(as_of) - timestamps.dt.normalize()).dt.days


def _whole_seconds_between(start: pd.Series, end: pd.Series) -> pd.Series:
    """SQL date_diff('second'): second boundaries crossed, not elapsed time rounded."""
    return end.dt.floor("s").sub(start.dt.floor("s")).dt.total_seconds()


def _most_frequent(events: pd.DataFrame, column: str) -> pd.Series:
    """Each customer's most frequent non-null value, ties going to the smallest value."""
    counts = events.groupby(["customer_id", column]).size().rename("events").reset_index()
    counts = counts.sort_values(
        ["customer_id", "events", column], ascending=[True, False, True]
    ).drop_duplicates("customer_id")
    return counts.set_index("customer_id")[column]


def _quintile(values: pd.Series, ascending: bool = True) -> pd.Series:
    """1 + floor(5 * percent_rank), capped at 5: ties share a score, as in SQL."""
    if len(values) < 2:
        return pd.Series(1, index=values.index)
    rank = values.rank(method="min", ascending=ascending)
    percent_rank = (rank - 1) / (len(values) - 1)
    return np.minimum(5, 1 + np.floor(5 * percent_rank)).astype(int)


def _customer_features(
    customers: pd.DataFrame, as_of: dt.date, cutoff: pd.Timestamp
) -> pd.DataFrame:
    known = customers[customers.signup_at < cutoff].set_index("customer_id")
    age = as_of.year - known.birth_year
    age_band = pd.cut(
        age, [-np.inf, 25, 35, 45, 55, 65, np.inf], right=False, labels=list(AGE_BANDS)
    )
    # The staging model's lower(trim(email)); DuckDB's trim removes spaces only.
    email = known.email.str.strip(" ").str.lower()
    return pd.DataFrame(
        {
            "days_since_signup": _days_before(as_of, known.signup_at),
            "country_code": known.country.str.upper(),
            "age_band": age_band.astype(object).where(age.notna(), "unknown"),
            "acquisition_channel": known.acquisition_channel.str.lower(),
            "has_valid_email": email.str.fullmatch(VALID_EMAIL).fillna(False).astype(bool),
            "is_opted_in": known.email_opt_in.fillna(False).astype(bool),
        }
    )


def _order_features(orders: pd.DataFrame, as_of: dt.date, cutoff: pd.Timestamp) -> pd.DataFrame:
    completed = orders[
        orders.status.fillna("completed").eq("completed") & (orders.ordered_at < cutoff)
    ].copy()
    # Whole cents: float sums depend on the order of addition, and the M quintile ranks ties.
    completed["cents"] = (completed.amount * 100).round().astype("int64")
    since = {days: cutoff - pd.Timedelta(days=days) for days in (30, 90, 180, 365)}
    at = completed.ordered_at
    completed["in_30d"] = at >= since[30]
    completed["in_90d"] = at >= since[90]
    completed["in_365d"] = at >= since[365]
    completed["cents_90d"] = completed.cents.where(completed.in_90d, 0)
    completed["cents_previous_90d"] = completed.cents.where(
        (at >= since[180]) & ~completed.in_90d, 0
    )

    totals = completed.groupby("customer_id").agg(
        frequency=("cents", "size"),
        cents=("cents", "sum"),
        first_order_at=("ordered_at", "min"),
        last_order_at=("ordered_at", "max"),
        orders_30d=("in_30d", "sum"),
        orders_90d=("in_90d", "sum"),
        orders_365d=("in_365d", "sum"),
        cents_90d=("cents_90d", "sum"),
        cents_previous_90d=("cents_previous_90d", "sum"),
    )
    features = pd.DataFrame(index=totals.index)
    features["recency_days"] = _days_before(as_of, totals.last_order_at)
    features["frequency"] = totals.frequency
    features["monetary"] = totals.cents / 100
    features["avg_order_value"] = features.monetary / totals.frequency
    # Buyers are ranked against every buyer with an order before the cutoff, as the mart does.
    features["r_score"] = _quintile(features.recency_days, ascending=False)
    features["f_score"] = _quintile(totals.frequency)
    features["m_score"] = _quintile(totals.cents)
    features["rfm_score"] = features.r_score + features.f_score + features.m_score
    features["rfm_code"] = (
        features.r_score.astype(str) + features.f_score.astype(str) + features.m_score.astype(str)
    )
    features["rfm_segment"] = _rfm_segment(features.r_score, features.f_score)
    features[["orders_30d", "orders_90d", "orders_365d"]] = totals[
        ["orders_30d", "orders_90d", "orders_365d"]
    ]
    features["avg_days_between_orders"] = (
        _whole_seconds_between(totals.first_order_at, totals.last_order_at)
        / 86400.0
        / (totals.frequency - 1)
    ).where(totals.frequency > 1)
    features["days_since_first_order"] = _days_before(as_of, totals.first_order_at)
    features["spend_90d"] = totals.cents_90d / 100
    recent_and_previous = totals.cents_90d + totals.cents_previous_90d
    features["spend_trend"] = (
        (totals.cents_90d - totals.cents_previous_90d) / recent_and_previous
    ).where(recent_and_previous != 0, 0.0)

    categories = completed.assign(category=completed.category.str.lower()).dropna(
        subset=["category"]
    )
    features["favourite_category"] = _most_frequent(categories, "category")
    return features


def _rfm_segment(r: pd.Series, f: pd.Series) -> np.ndarray:
    """The recency x frequency grid of int_customers_rfm_scored.sql, first match wins."""
    grid = [
        ((r == 5) & (f >= 4), "Champions"),
        ((r >= 3) & (f >= 4), "Loyal"),
        ((r >= 4) & f.between(2, 3), "Potential loyalist"),
        ((r == 5) & (f == 1), "New"),
        ((r == 4) & (f == 1), "Promising"),
        ((r == 3) & (f == 3), "Need attention"),
        ((r == 3) & (f <= 2), "About to sleep"),
        ((r <= 2) & (f == 5), "Cannot lose them"),
        ((r <= 2) & f.between(3, 4), "At risk"),
        ((r == 1) & (f == 1), "Lost"),
    ]
    return np.select([c for c, _ in grid], [s for _, s in grid], default="Hibernating")


def _email_features(events: pd.DataFrame, as_of: dt.date, cutoff: pd.Timestamp) -> pd.DataFrame:
    # Subsets of the largest table by masks, never a filtered copy of all of it.
    before_cutoff = events.occurred_at < cutoff
    since_30d = cutoff - pd.Timedelta(days=30)

    # Per campaign first: a customer opening one e-mail five times opened one campaign.
    window = events[before_cutoff & (events.occurred_at >= cutoff - pd.Timedelta(days=90))]
    kind = window.event_type
    campaigns = (
        window.assign(
            sent_at=window.occurred_at.where(kind.eq("sent")),
            delivered=kind.eq("delivered"),
            open_at=window.occurred_at.where(kind.eq("open")),
            click_at=window.occurred_at.where(kind.eq("click")),
        )
        .groupby(["customer_id", "campaign_id"])
        .agg(
            sent_at=("sent_at", "min"),
            delivered=("delivered", "any"),
            first_open_at=("open_at", "min"),
            first_click_at=("click_at", "min"),
        )
    )
    windows = (
        pd.DataFrame(
            {
                "email_sends_30d": campaigns.sent_at >= since_30d,
                "email_sends_90d": campaigns.sent_at.notna(),
                "deliveries_90d": campaigns.delivered,
                "email_opens_30d": campaigns.first_open_at >= since_30d,
                "email_opens_90d": campaigns.first_open_at.notna(),
                "email_clicks_30d": campaigns.first_click_at >= since_30d,
                "email_clicks_90d": campaigns.first_click_at.notna(),
            }
        )
        .groupby("customer_id")
        .sum()
    )
    delivered = windows.deliveries_90d.where(windows.deliveries_90d > 0)
    # Capped at 1: an open inside the window can belong to a delivery just before it.
    windows["email_open_rate_90d"] = (windows.email_opens_90d / delivered).clip(upper=1.0)
    windows["email_click_rate_90d"] = (windows.email_clicks_90d / delivered).clip(upper=1.0)
    windows["email_clicks_per_week_90d"] = windows.email_clicks_90d * 7.0 / 90

    rare = events[
        before_cutoff
        & events.event_type.isin(["open", "click", "unsubscribe", "bounce", "complaint"])
    ]
    kind = rare.event_type
    history = (
        rare.assign(
            open_at=rare.occurred_at.where(kind.eq("open")),
            click_at=rare.occurred_at.where(kind.eq("click")),
            is_unsubscribed=kind.eq("unsubscribe"),
            has_hard_bounced=kind.eq("bounce"),
            has_complained=kind.eq("complaint"),
        )
        .groupby("customer_id")
        .agg(
            last_open_at=("open_at", "max"),
            last_click_at=("click_at", "max"),
            is_unsubscribed=("is_unsubscribed", "any"),
            has_hard_bounced=("has_hard_bounced", "any"),
            has_complained=("has_complained", "any"),
        )
    )
    history["days_since_last_open"] = _days_before(as_of, history.pop("last_open_at"))
    history["days_since_last_click"] = _days_before(as_of, history.pop("last_click_at"))

    engagement = events[
        before_cutoff
        & events.event_type.isin(["open", "click"])
        & (events.occurred_at >= cutoff - pd.Timedelta(days=365))
    ]
    preferences = pd.DataFrame(
        {
            "preferred_hour": _most_frequent(
                engagement.assign(hour=engagement.occurred_at.dt.hour), "hour"
            ),
            "preferred_email_device": _most_frequent(
                engagement.dropna(subset=["device"]), "device"
            ),
        }
    )
    return windows.drop(columns="deliveries_90d").join([history, preferences], how="outer")


def _web_features(events: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    events = events[
        (events.occurred_at >= cutoff - pd.Timedelta(days=30)) & (events.occurred_at < cutoff)
    ]
    kind = events.event_type
    sessions = (
        events.assign(
            product_view=kind.eq("product_view"),
            add_to_cart=kind.eq("add_to_cart"),
            checkout=kind.eq("checkout"),
        )
        .groupby(["customer_id", "session_id"])
        .agg(
            started_at=("occurred_at", "min"),
            ended_at=("occurred_at", "max"),
            product_views=("product_view", "sum"),
            add_to_carts=("add_to_cart", "sum"),
            has_checkout=("checkout", "any"),
        )
    )
    has_cart = sessions.add_to_carts > 0
    per_customer = (
        pd.DataFrame(
            {
                "web_sessions_30d": 1,
                "product_views_30d": sessions.product_views,
                "add_to_carts_30d": sessions.add_to_carts,
                "cart_sessions": has_cart,
                "abandoned_cart_sessions": has_cart & ~sessions.has_checkout,
                "session_seconds": _whole_seconds_between(sessions.started_at, sessions.ended_at),
            }
        )
        .groupby("customer_id")
        .sum()
    )
    per_customer["cart_abandonment_rate_30d"] = (
        per_customer.abandoned_cart_sessions / per_customer.cart_sessions
    ).where(per_customer.cart_sessions > 0)
    per_customer["avg_session_minutes_30d"] = (
        per_customer.session_seconds / 60.0 / per_customer.web_sessions_30d
    )
    devices = events.assign(device=events.device.str.lower()).dropna(subset=["device"])
    per_customer["preferred_web_device"] = _most_frequent(devices, "device")
    return per_customer.drop(
        columns=["cart_sessions", "abandoned_cart_sessions", "session_seconds"]
    )


def _review_features(reviews: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    return (
        reviews[reviews.created_at < cutoff]
        .groupby("customer_id")
        .agg(review_count=("rating", "size"), avg_rating=("rating", "mean"))
    )


# --------------------------------------------------------------------------- comparison


def compare_with_mart(settings: Settings, as_of: dt.date, frame: pd.DataFrame) -> list[str]:
    """How `frame` differs from marts.customer_features for `as_of` on CORE_FEATURES: other
    customers, or values not equal within 1e-9 relative (nulls equal only to nulls)."""
    with connect(settings, read_only=True) as con:
        mart = con.execute(
            f"""SELECT customer_id, {", ".join(CORE_FEATURES)}
                FROM marts.customer_features WHERE as_of_date = ?""",
            [as_of],
        ).df()
    if mart.empty:
        return [f"marts.customer_features has no rows for {as_of}: build it first"]
    differences = []
    absent = [c for c in CORE_FEATURES if c not in frame.columns]
    if absent:
        differences.append(f"columns missing from the baseline: {', '.join(absent)}")
    if frame.customer_id.duplicated().any():
        differences.append(
            f"{frame.customer_id.duplicated().sum()} customers appear more than once in the baseline"
        )
    for label, ids in (
        ("customers missing from the baseline", set(mart.customer_id) - set(frame.customer_id)),
        ("customers not in the mart", set(frame.customer_id) - set(mart.customer_id)),
    ):
        if ids:
            differences.append(f"{label}: {len(ids)} (e.g. {', '.join(sorted(ids)[:3])})")

    joined = mart.merge(frame, on="customer_id", suffixes=("_mart", "_baseline"))
    for column in CORE_FEATURES:
        if column in absent:
            continue
        expected, actual = joined[f"{column}_mart"], joined[f"{column}_baseline"]
        differs = _values_differ(expected, actual)
        if differs.any():
            examples = "; ".join(
                f"{customer}: mart {_shown(e)}, baseline {_shown(a)}"
                for customer, e, a in zip(
                    joined.customer_id[differs][:3],
                    expected[differs][:3],
                    actual[differs][:3],
                    strict=True,
                )
            )
            differences.append(
                f"{column} differs for {differs.sum()} of {len(joined)} customers, e.g. {examples}"
            )
    return differences


def _shown(value: object) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)


def _values_differ(expected: pd.Series, actual: pd.Series) -> np.ndarray:
    expected_null, actual_null = expected.isna().to_numpy(), actual.isna().to_numpy()
    numeric = pd.api.types.is_numeric_dtype(expected) and pd.api.types.is_numeric_dtype(actual)
    if numeric:
        e = expected.to_numpy(dtype="float64", na_value=np.nan)
        a = actual.to_numpy(dtype="float64", na_value=np.nan)
        unequal = ~np.isclose(a, e, rtol=1e-9, atol=0.0)
    else:
        unequal = (expected.astype(object) != actual.astype(object)).to_numpy()
    return (expected_null != actual_null) | (~expected_null & ~actual_null & unequal)


# --------------------------------------------------------------------------- command line

BASELINES = {"duckdb": duckdb_features, "pandas": pandas_features}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", choices=BASELINES)
    parser.add_argument("--as-of", type=dt.date.fromisoformat, required=True)
    parser.add_argument(
        "--check", action="store_true", help="compare with marts.customer_features for the date"
    )
    args = parser.parse_args()
    settings = load_settings()  # the warehouse of SEGFLOW_DATA_DIR, as segflow's commands

    started = time.perf_counter()
    features = BASELINES[args.baseline](settings, args.as_of)
    seconds = time.perf_counter() - started
    print(f"{args.baseline}: {len(features):,} customers as of {args.as_of} in {seconds:.2f} s")
    if args.check:
        differences = compare_with_mart(settings, args.as_of, features)
        if differences:
            sys.exit("differences from marts.customer_features:\n  " + "\n  ".join(differences))
        print(f"same as marts.customer_features on {len(CORE_FEATURES)} features")


if __name__ == "__main__":
    main()
