"""The generator: deterministic, contract-valid, and worth segmenting."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import numpy as np
import pytest

from ml.config import Settings
from ml.ingest import ingest_landing
from ml.synthetic import generate

END = dt.date(2026, 6, 30)


def read(landing: Path, entity: str, sql: str = "SELECT * FROM t") -> list[tuple]:
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(
            f"CREATE VIEW t AS SELECT * FROM read_parquet('{landing}/{entity}/**/*.parquet', hive_partitioning = false)"
        )
        return con.execute(sql).fetchall()


@pytest.fixture(scope="module")
def year_of_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("year") / "landing"
    generate(out, customers=3000, days=365, end_date=END, seed=3, progress=False)
    return out


def test_same_seed_same_data_other_seed_other_data(tmp_path: Path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate(tmp_path / name, customers=200, days=30, end_date=END, seed=seed, progress=False)
    orders = {n: read(tmp_path / n, "orders", "SELECT * FROM t ORDER BY order_id") for n in "abc"}
    events = {
        n: read(tmp_path / n, "email_events", "SELECT * FROM t ORDER BY event_id") for n in "abc"
    }
    assert orders["a"] == orders["b"] and events["a"] == events["b"]
    assert orders["a"] != orders["c"]


def test_writes_all_five_entities_as_daily_partitions(generated_landing: Path):
    for entity in ("customers", "orders", "email_events", "web_events", "reviews"):
        partitions = sorted(p.name for p in (generated_landing / entity).iterdir())
        assert partitions, entity
        assert all(p.startswith("date=") for p in partitions)
    # Each day's events land in that day's partition.
    mismatched = read(
        generated_landing,
        "orders",
        "SELECT count(*) FROM (SELECT ordered_at, filename FROM read_parquet("
        f"'{generated_landing}/orders/**/*.parquet', filename = true, hive_partitioning = false)) "
        "WHERE strftime(ordered_at, 'date=%Y-%m-%d') NOT IN (SELECT unnest(string_split(filename, '/')))",
    )
    assert mismatched == [(0,)]


def test_generated_data_meets_the_contract(settings: Settings, landing_copy: Path):
    report = ingest_landing(settings)
    assert all(r.rows_rejected == 0 and r.values_nullified == 0 for r in report.entities.values())
    assert report.entities["orders"].rows_loaded > 0
    assert report.entities["reviews"].rows_loaded > 0


def test_nothing_happens_after_the_end_date_or_before_signup(year_of_data: Path):
    last = read(year_of_data, "email_events", "SELECT max(occurred_at)::DATE FROM t")[0][0]
    assert last <= END
    with duckdb.connect() as con:
        early = con.execute(
            f"""SELECT count(*) FROM read_parquet('{year_of_data}/orders/**/*.parquet') o
                JOIN read_parquet('{year_of_data}/customers/**/*.parquet') c USING (customer_id)
                WHERE o.ordered_at < c.signup_at"""
        ).fetchone()
    assert early == (0,)


def test_volumes_per_customer_are_realistic(year_of_data: Path):
    customers = read(year_of_data, "customers", "SELECT count(*) FROM t")[0][0]
    per_customer = {
        e: read(year_of_data, e, "SELECT count(*) FROM t")[0][0] / customers
        for e in ("orders", "email_events", "web_events", "reviews")
    }
    assert 2 < per_customer["orders"] < 12
    assert 40 < per_customer["email_events"] < 140
    assert 20 < per_customer["web_events"] < 90
    assert 0.05 < per_customer["reviews"] < 1.5


def test_future_purchases_follow_from_past_behaviour(year_of_data: Path):
    """Frequency in the first half of the year predicts the second half, but not perfectly."""
    rows = read(
        year_of_data,
        "orders",
        f"""SELECT count(*) FILTER (WHERE ordered_at < DATE '{END - dt.timedelta(days=182)}'),
                   count(*) FILTER (WHERE ordered_at >= DATE '{END - dt.timedelta(days=182)}')
            FROM t WHERE status = 'completed' GROUP BY customer_id""",
    )
    first, second = np.array(rows, dtype=float).T
    correlation = np.corrcoef(first, second)[0, 1]
    assert 0.3 < correlation < 0.95


def test_customers_differ_in_kind_not_only_in_amount(year_of_data: Path):
    """Latent types show: heavy openers browse more, and some customers lapse."""
    opens = read(
        year_of_data,
        "email_events",
        """SELECT count(*) FILTER (WHERE event_type = 'open') / count(*) FILTER (WHERE event_type = 'delivered')
           FROM t GROUP BY customer_id HAVING count(*) FILTER (WHERE event_type = 'delivered') >= 10""",
    )
    open_rates = np.array([r[0] for r in opens])
    assert np.percentile(open_rates, 90) > 3 * np.percentile(open_rates, 25)
    hours = read(
        year_of_data,
        "email_events",
        "SELECT hour(occurred_at) AS h, count(*) FROM t WHERE event_type = 'open' GROUP BY h",
    )
    assert len(hours) >= 18  # opens spread over the day, not one send hour
    devices = dict(
        read(year_of_data, "web_events", "SELECT device, count(*) FROM t GROUP BY device")
    )
    assert devices["mobile"] > devices["tablet"] and devices["desktop"] > devices["tablet"]


def test_seasonality_black_friday_beats_a_summer_week(tmp_path: Path):
    out = tmp_path / "landing"
    generate(out, customers=4000, days=365, end_date=dt.date(2026, 12, 31), seed=2, progress=False)
    weekly = dict(
        read(out, "orders", "SELECT strftime(ordered_at, '%m-%d') AS d, count(*) FROM t GROUP BY d")
    )
    black_friday_week = sum(weekly.get(f"11-{d:02d}", 0) for d in range(23, 30))
    summer_week = sum(weekly.get(f"07-{d:02d}", 0) for d in range(23, 30))
    assert black_friday_week > 1.4 * summer_week


def test_drift_changes_behaviour_only_from_its_date(tmp_path: Path):
    drift_from = END - dt.timedelta(days=30)
    generate(tmp_path / "plain", customers=1500, days=120, end_date=END, seed=9, progress=False)
    generate(
        tmp_path / "drift",
        customers=1500,
        days=120,
        end_date=END,
        seed=9,
        progress=False,
        drift_from=drift_from,
    )
    before = f"WHERE ordered_at < DATE '{drift_from}'"
    assert read(
        tmp_path / "plain", "orders", f"SELECT * FROM t {before} ORDER BY order_id"
    ) == read(tmp_path / "drift", "orders", f"SELECT * FROM t {before} ORDER BY order_id")

    def after(landing: Path, entity: str, sql: str, column: str = "occurred_at") -> float:
        return read(landing, entity, f"SELECT {sql} FROM t WHERE {column} >= DATE '{drift_from}'")[
            0
        ][0]

    value = "avg(amount)"
    assert after(tmp_path / "drift", "orders", value, "ordered_at") > 1.2 * after(
        tmp_path / "plain", "orders", value, "ordered_at"
    )
    open_rate = "count(*) FILTER (WHERE event_type = 'open') / count(*) FILTER (WHERE event_type = 'delivered')"
    assert after(tmp_path / "drift", "email_events", open_rate) < 0.7 * after(
        tmp_path / "plain", "email_events", open_rate
    )
    mobile = "avg((device = 'mobile')::INT)"
    assert (
        after(tmp_path / "drift", "web_events", mobile)
        > after(tmp_path / "plain", "web_events", mobile) + 0.1
    )
