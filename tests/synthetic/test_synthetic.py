"""The generator: deterministic, contract-valid, and worth segmenting."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import numpy as np
import pytest

from ml.cli import main
from ml.config import Settings
from ml.ingest.loader import ingest_landing
from ml.synthetic.increments import generate_increment
from ml.synthetic.shop import generate
from ml.warehouse.connection import connect

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


# --------------------------------------------------------------------------- increments for now

AT = dt.datetime(2026, 7, 1, 9, 30, tzinfo=dt.UTC)
LATER = dt.datetime(2026, 7, 1, 11, 0, tzinfo=dt.UTC)
INCREMENT_ENTITIES = ("orders", "email_events", "web_events")
ID_COLUMNS = {"orders": "order_id", "email_events": "event_id", "web_events": "event_id"}


def increment_rows(path: Path, sql: str) -> list[tuple]:
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(
            f"CREATE VIEW t AS SELECT * FROM read_parquet('{path}', hive_partitioning = false)"
        )
        return con.execute(sql).fetchall()


def test_increment_for_now_loads_without_quarantine(settings: Settings, landing_copy: Path):
    historical_ids = {
        e: {r[0] for r in read(landing_copy, e, f"SELECT {ID_COLUMNS[e]} FROM t")}
        for e in INCREMENT_ENTITIES
    }
    customers = {r[0] for r in read(landing_copy, "customers", "SELECT customer_id FROM t")}
    report = generate_increment(landing_copy, AT, hours=3, seed=1)

    files = {
        e: landing_copy / e / "date=2026-07-01/increment-20260701T093000Z.parquet"
        for e in INCREMENT_ENTITIES
    }
    assert sorted(report.files) == sorted(files.values())
    assert all(p.is_file() for p in report.files)
    assert not [p for p in landing_copy.rglob("*") if p.name.startswith(".")]
    # A small landing zone still gets something of every kind.
    assert report.rows["web_events"] >= 20 and report.rows["orders"] >= 3
    assert report.rows["email_events"] >= 7
    for entity, path in files.items():
        column, time = ID_COLUMNS[entity], "ordered_at" if entity == "orders" else "occurred_at"
        rows, distinct, first, last = increment_rows(
            path, f"SELECT count(*), count(DISTINCT {column}), min({time}), max({time}) FROM t"
        )[0]
        assert rows == distinct == report.rows[entity]
        assert AT - dt.timedelta(hours=3) <= first and last <= AT, entity
        ids = {r[0] for r in increment_rows(path, f"SELECT {column} FROM t")}
        assert not ids & historical_ids[entity]
        used = {r[0] for r in increment_rows(path, "SELECT customer_id FROM t")}
        assert used <= customers

    web, orders, email = files["web_events"], files["orders"], files["email_events"]
    # Every session that checks out ends with its checkout, and an order follows within a minute.
    with duckdb.connect() as con:
        checkouts, ordered, ending_with_checkout, abandoned = con.execute(
            f"""WITH w AS (SELECT * FROM read_parquet('{web}')),
                o AS (SELECT * FROM read_parquet('{orders}')),
                c AS (SELECT * FROM w WHERE event_type = 'checkout'),
                s AS (SELECT session_id, max(occurred_at) AS last_at,
                             bool_or(event_type = 'add_to_cart') AS carted,
                             bool_or(event_type = 'checkout') AS checked_out FROM w GROUP BY ALL)
            SELECT (SELECT count(*) FROM c),
                   (SELECT count(*) FROM c WHERE EXISTS (SELECT 1 FROM o
                        WHERE o.customer_id = c.customer_id AND o.ordered_at > c.occurred_at
                          AND o.ordered_at <= c.occurred_at + INTERVAL 1 MINUTE)),
                   (SELECT count(*) FROM c JOIN s USING (session_id) WHERE s.last_at = c.occurred_at),
                   (SELECT count(*) FROM s WHERE carted AND NOT checked_out)"""
        ).fetchone()
    assert checkouts == ordered == ending_with_checkout == report.rows["orders"]
    assert abandoned >= 1
    assert increment_rows(orders, "SELECT DISTINCT status FROM t") == [("completed",)]
    kinds = dict(increment_rows(email, "SELECT event_type, count(*) FROM t GROUP BY ALL"))
    assert kinds["open"] >= 1 and kinds["click"] >= 1 and kinds["unsubscribe"] >= 1
    unsubscribed = increment_rows(
        email, "SELECT customer_id FROM t WHERE event_type = 'unsubscribe'"
    )
    assert sorted(r[0] for r in unsubscribed) == sorted(report.unsubscribed)

    # The loader takes all of it at the increment's own moment: nothing later, nothing unknown.
    loaded = ingest_landing(settings, as_of=AT.date(), loaded_at=AT)
    assert all(r.rows_rejected == 0 and r.values_nullified == 0 for r in loaded.entities.values())
    # A second increment, its window overlapping the first, has ids of its own.
    second = generate_increment(landing_copy, LATER, hours=3, seed=1)
    for path in second.files:
        entity = path.relative_to(landing_copy).parts[0]
        ids = {r[0] for r in increment_rows(path, f"SELECT {ID_COLUMNS[entity]} FROM t")}
        first_ids = {
            r[0] for r in increment_rows(files[entity], f"SELECT {ID_COLUMNS[entity]} FROM t")
        }
        assert ids and not ids & first_ids and not ids & historical_ids[entity]
    loaded = ingest_landing(settings, as_of=LATER.date(), loaded_at=LATER)
    assert all(r.rows_rejected == 0 for r in loaded.entities.values())
    assert {e: loaded.entities[e].rows_loaded for e in INCREMENT_ENTITIES} == second.rows
    with connect(settings) as con:
        assert con.execute("SELECT count(*) FROM quarantine.violations").fetchone() == (0,)
        from_increments = con.execute(
            "SELECT count(*) FROM raw.orders WHERE _source_file LIKE '%increment-%'"
        ).fetchone()[0]
    assert from_increments == report.rows["orders"] + second.rows["orders"]


def test_increment_never_overwrites_and_needs_customers(tmp_path: Path, landing_copy: Path):
    generate_increment(landing_copy, AT, seed=1)
    with pytest.raises(FileExistsError):
        generate_increment(landing_copy, AT, seed=2)
    with pytest.raises(ValueError, match="segflow generate"):
        generate_increment(tmp_path / "empty", AT)
    # Customers from a CSV with its own spelling of the column.
    csv_landing = tmp_path / "csv"
    (csv_landing / "customers").mkdir(parents=True)
    (csv_landing / "customers" / "shop.csv").write_text(
        "Email;Customer ID\na@x.de; K-1 \nb@x.de;K-2\n"
    )
    report = generate_increment(csv_landing, AT, hours=0.5, seed=1)
    customers = increment_rows(report.files[0], "SELECT DISTINCT customer_id FROM t")
    assert {r[0] for r in customers} <= {"K-1", "K-2"}


def test_increment_cli(landing_copy: Path, capsys):
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    with pytest.raises(SystemExit) as refused:
        main(["generate", "--increment", "--out", str(landing_copy), "--at", future])
    assert refused.value.code == 2 and "in the future" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["generate", "--out", str(landing_copy)])
    assert refused.value.code == 2 and "--end-date" in capsys.readouterr().err

    main(
        [
            "generate",
            "--increment",
            "--out",
            str(landing_copy),
            "--at",
            "2026-07-01T09:30:00",
            "--hours",
            "2",
        ]
    )
    printed = capsys.readouterr().out
    assert "2026-07-01 07:30:00 .. 2026-07-01 09:30:00 UTC" in printed
    assert printed.count("increment-20260701T093000Z.parquet") == 3 and "unsubscribed: C" in printed
