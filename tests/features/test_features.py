"""The dbt feature layer on generated data: builds, is idempotent, and agrees with plain Python."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from ml.config import Settings, load_settings
from ml.errors import FeatureBuildError
from ml.features.dbt import build_features, run_dbt
from ml.ingest.loader import ingest_landing
from tests.conftest import SAMPLE_END

pytestmark = pytest.mark.slow
AS_OF = SAMPLE_END - dt.timedelta(days=3)
CUTOFF = pd.Timestamp(AS_OF + dt.timedelta(days=1))


def make_settings(root: Path, landing: Path) -> Settings:
    return load_settings(
        {"SEGFLOW_DATA_DIR": str(root / "data"), "SEGFLOW_LANDING_DIR": str(landing)}
    )


def read(settings: Settings, sql: str) -> pd.DataFrame:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(sql).df()


def features_fingerprint(settings: Settings, as_of: dt.date) -> tuple:
    """Row count and an order-independent checksum of every column of a date's features."""
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(
            f"""SELECT count(*), sum(hash(f)) FROM marts.customer_features f
                WHERE as_of_date = DATE '{as_of}'"""
        ).fetchone()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, generated_landing: Path) -> Settings:
    root = tmp_path_factory.mktemp("features")
    settings = make_settings(root, generated_landing)
    ingest_landing(settings, as_of=SAMPLE_END)
    build_features(settings, AS_OF)
    return settings


def test_dbt_build_passes_and_covers_every_known_customer(built: Settings):
    counts = read(
        built,
        f"""SELECT (SELECT count(*) FROM marts.customer_features WHERE as_of_date = DATE '{AS_OF}') AS features,
                   (SELECT count(*) FROM raw.customers WHERE signup_at < TIMESTAMP '{CUTOFF}') AS customers,
                   (SELECT count(*) FROM marts.training_labels) AS labels""",
    ).iloc[0]
    assert counts.features == counts.customers > 0
    assert counts.labels > 0


def test_rebuilding_the_same_date_leaves_features_identical(built: Settings):
    before = features_fingerprint(built, AS_OF)
    build_features(built, AS_OF)
    assert features_fingerprint(built, AS_OF) == before


def test_each_date_keeps_its_own_rows(built: Settings):
    earlier = AS_OF - dt.timedelta(days=7)
    build_features(built, earlier)
    dates = read(
        built, "SELECT as_of_date, count(*) AS n FROM marts.customer_features GROUP BY 1 ORDER BY 1"
    )
    assert list(dates.as_of_date.dt.date) == [earlier, AS_OF]
    # Point in time: the earlier date knows fewer customers and fewer orders.
    totals = read(
        built,
        "SELECT as_of_date, sum(frequency) AS orders FROM marts.customer_features GROUP BY 1 ORDER BY 1",
    )
    assert dates.n.iloc[0] <= dates.n.iloc[1]
    assert totals.orders.iloc[0] < totals.orders.iloc[1]


def expected_features(settings: Settings) -> pd.DataFrame:
    """Recency, frequency, monetary, 90-day open rate and 30-day cart abandonment in pandas."""
    orders = read(settings, "SELECT customer_id, ordered_at, amount, status FROM raw.orders")
    orders = orders[
        (orders.ordered_at < CUTOFF) & orders.status.fillna("completed").eq("completed")
    ]
    rfm = orders.groupby("customer_id").agg(
        frequency=("amount", "size"), monetary=("amount", "sum"), last=("ordered_at", "max")
    )
    rfm["recency_days"] = (pd.Timestamp(AS_OF) - rfm["last"].dt.normalize()).dt.days

    emails = read(
        settings, "SELECT customer_id, campaign_id, event_type, occurred_at FROM raw.email_events"
    )
    emails = emails[
        (emails.occurred_at < CUTOFF) & (emails.occurred_at >= CUTOFF - pd.Timedelta(days=90))
    ]
    per_campaign = (
        emails.assign(
            delivered=emails.event_type.eq("delivered"), opened=emails.event_type.eq("open")
        )
        .groupby(["customer_id", "campaign_id"])[["delivered", "opened"]]
        .any()
    )
    per_customer = per_campaign.groupby("customer_id").sum()
    open_rate = (per_customer.opened / per_customer.delivered).clip(upper=1)[
        per_customer.delivered > 0
    ]

    web = read(
        settings, "SELECT customer_id, session_id, event_type, occurred_at FROM raw.web_events"
    )
    web = web[(web.occurred_at < CUTOFF) & (web.occurred_at >= CUTOFF - pd.Timedelta(days=30))]
    sessions = (
        web.assign(cart=web.event_type.eq("add_to_cart"), checkout=web.event_type.eq("checkout"))
        .groupby(["customer_id", "session_id"])[["cart", "checkout"]]
        .any()
    )
    carts = sessions[sessions.cart]
    abandonment = (~carts.checkout).groupby("customer_id").mean()

    return rfm[["recency_days", "frequency", "monetary"]].join(
        [open_rate.rename("email_open_rate_90d"), abandonment.rename("cart_abandonment_rate_30d")],
        how="outer",
    )


def test_features_agree_with_an_independent_computation(built: Settings):
    actual = read(
        built,
        f"""SELECT customer_id, recency_days, frequency, monetary, email_open_rate_90d,
                   cart_abandonment_rate_30d
            FROM marts.customer_features WHERE as_of_date = DATE '{AS_OF}'""",
    ).set_index("customer_id")
    expected = expected_features(built)
    # Sample customers with each kind of history, and compare every one of them.
    sample = sorted(set(expected.index[:40]) | set(expected.dropna().index[:40]))
    assert len(sample) >= 40
    got = actual.loc[sample]
    want = expected.loc[sample]
    assert (got.frequency == want.frequency.fillna(0)).all()
    assert (
        got.monetary.astype(float).round(2).tolist()
        == want.monetary.fillna(0).astype(float).round(2).tolist()
    )
    pd.testing.assert_series_equal(
        got.recency_days.astype("Float64"), want.recency_days.astype("Float64"), check_names=False
    )
    for column in ("email_open_rate_90d", "cart_abandonment_rate_30d"):
        pd.testing.assert_series_equal(
            got[column].astype("Float64"),
            want[column].astype("Float64"),
            check_names=False,
            atol=1e-9,
        )
    # Customers without orders are zero in counts and null in recency.
    no_orders = actual[~actual.index.isin(expected.dropna(subset=["frequency"]).index)]
    assert (no_orders.frequency == 0).all() and no_orders.recency_days.isna().all()


def test_labels_never_leak_into_features(built: Settings):
    columns = set(read(built, "SELECT * FROM marts.customer_features LIMIT 0").columns)
    assert not columns & {
        "purchased",
        "orders_in_horizon",
        "revenue_in_horizon",
        "churned",
        "clicked_email",
    }


def test_optional_sources_absent_still_build(tmp_path: Path, generated_landing: Path):
    landing = tmp_path / "landing"
    for required in ("customers", "orders"):
        shutil.copytree(generated_landing / required, landing / required)
    settings = make_settings(tmp_path, landing)
    ingest_landing(settings, as_of=SAMPLE_END)
    build_features(settings, AS_OF)
    row = read(
        settings,
        """SELECT count(*) AS n, sum(email_opens_90d) AS opens, count(email_open_rate_90d) AS rates,
                  sum(web_sessions_30d) AS sessions, count(avg_rating) AS ratings, sum(frequency) AS orders
           FROM marts.customer_features""",
    ).iloc[0]
    assert row.n > 0 and row.orders > 0
    assert row.opens == 0 and row.rates == 0 and row.sessions == 0 and row.ratings == 0


def test_the_features_gate_passes_on_built_features_and_records_it(built: Settings):
    from ml.quality.gates import run_features_gate

    report = run_features_gate(built, AS_OF)
    assert report.rows_validated > 0 and not report.failed_errors
    stored = read(
        built,
        f"SELECT count(*) AS n FROM quality.validation_results WHERE suite = 'customer_features' AND run_date = DATE '{AS_OF}'",
    ).n.iloc[0]
    assert stored == len(report.outcomes)


def test_a_run_without_a_date_fails_with_a_clear_message(built: Settings):
    with pytest.raises(FeatureBuildError, match="var as_of_date is required"):
        run_dbt(built, "run", "--select", "customer_features")
