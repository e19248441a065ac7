"""The benchmark's feature baselines (bench/feature_baselines.py) compute what the dbt mart
computes: on generated data, and on rows the generator never makes but the contract allows."""

from __future__ import annotations

import datetime as dt
import importlib.util
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from ml.config import Settings, load_settings
from ml.features.dbt import build_features
from ml.ingest.loader import ingest_landing
from ml.warehouse.connection import connect
from tests.conftest import PROJECT_DIR, SAMPLE_END


def _load_baselines():
    # bench/ holds scripts, not a package.
    path = PROJECT_DIR / "bench" / "feature_baselines.py"
    spec = importlib.util.spec_from_file_location("feature_baselines", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


baselines = _load_baselines()
pytestmark = pytest.mark.slow  # builds the marts with dbt
AS_OF = SAMPLE_END - dt.timedelta(days=3)
"""2026-06-27: the cutoff is 2026-06-28 00:00, the 30-day window starts 2026-05-29 00:00 and
the 90-day window 2026-03-30 00:00."""

EDGE_CASES = """
INSERT INTO raw.customer_versions (customer_id, email, signup_at, country, birth_year,
                           acquisition_channel, email_opt_in, _source_file, _source_row) VALUES
    -- Known from the last microsecond before the cutoff; mixed case; no birth year or opt-in.
    ('X1', 'Odd.Case@Example.COM', '2026-06-27 23:59:59.999999', 'de', NULL, 'Paid_Search',
     NULL, 'edge', 1),
    -- Signs up at the cutoff, after buying: unknown on the date, yet among the buyers ranked.
    ('X2', 'x2@example.com', '2026-06-28 00:00:00', 'FR', 1961, 'organic', false, 'edge', 2),
    ('X3', NULL, '2026-01-01 00:00:00', 'GB', 2002, 'email', true, 'edge', 3);

INSERT INTO raw.order_versions (order_id, customer_id, ordered_at, amount, items, category, status,
                        _source_file, _source_row) VALUES
    ('XO1', 'X1', '2026-05-01 12:00:00.7', 5.00, 1, NULL, 'completed', 'edge', 1),
    -- No status means completed; categories count case-insensitively.
    ('XO2', 'X1', '2026-06-01 10:00:00.4', 10.00, 1, 'Books', NULL, 'edge', 2),
    ('XO3', 'X1', '2026-06-27 23:59:59.9', 20.00, 1, 'books', NULL, 'edge', 3),
    ('XO4', 'X1', '2026-06-28 00:00:00', 30.00, 1, 'toys', 'completed', 'edge', 4),
    ('XO5', 'X1', '2026-06-10 00:00:00', 40.00, 1, 'toys', 'cancelled', 'edge', 5),
    ('XO6', 'X2', '2026-06-20 00:00:00', 5000.00, 9, 'home', 'completed', 'edge', 6),
    -- A tie between categories goes to the smallest name.
    ('XO7', 'X3', '2026-02-01 08:00:00', 12.00, 1, 'toys', 'completed', 'edge', 7),
    ('XO8', 'X3', '2026-02-02 08:00:00', 12.00, 1, 'home', 'completed', 'edge', 8);

INSERT INTO raw.email_events (event_id, customer_id, campaign_id, event_type, occurred_at, device,
                              _source_file, _source_row) VALUES
    -- One campaign sent twice and opened twice counts once.
    ('XE01', 'X1', 'CMP-X1', 'sent', '2026-06-10 09:00:00', NULL, 'edge', 1),
    ('XE02', 'X1', 'CMP-X1', 'sent', '2026-06-11 09:00:00', NULL, 'edge', 2),
    ('XE03', 'X1', 'CMP-X1', 'delivered', '2026-06-10 09:00:01', NULL, 'edge', 3),
    ('XE04', 'X1', 'CMP-X1', 'open', '2026-06-10 10:15:00', 'mobile', 'edge', 4),
    ('XE05', 'X1', 'CMP-X1', 'open', '2026-06-12 08:15:00', 'desktop', 'edge', 5),
    ('XE06', 'X1', 'CMP-X1', 'click', '2026-06-12 12:00:00', NULL, 'edge', 6),
    -- Delivered before the 90 days, opened at their first instant: the open rate is capped at 1.
    ('XE07', 'X1', 'CMP-X2', 'sent', '2026-03-29 23:00:00', NULL, 'edge', 7),
    ('XE08', 'X1', 'CMP-X2', 'delivered', '2026-03-29 23:00:05', NULL, 'edge', 8),
    ('XE09', 'X1', 'CMP-X2', 'open', '2026-03-30 00:00:00', 'mobile', 'edge', 9),
    ('XE10', 'X1', 'CMP-X3', 'complaint', '2026-05-01 00:00:00', NULL, 'edge', 10),
    ('XE11', 'X1', 'CMP-X3', 'open', '2026-06-28 00:00:00', 'tablet', 'edge', 11),
    -- Sent but bounced: no deliveries, so no rate (not a rate of 1).
    ('XE12', 'X3', 'CMP-X1', 'sent', '2026-06-20 09:00:00', NULL, 'edge', 12),
    ('XE13', 'X3', 'CMP-X1', 'bounce', '2026-06-20 09:00:02', NULL, 'edge', 13);

INSERT INTO raw.web_events (event_id, customer_id, session_id, event_type, occurred_at, device,
                            category, _source_file, _source_row) VALUES
    ('XW1', 'X3', 'SX0', 'page_view', '2026-05-28 23:59:59.999999', 'desktop', NULL, 'edge', 1),
    -- A session of 9.3 s crosses 10 second boundaries; devices count case-insensitively.
    ('XW2', 'X3', 'SX1', 'product_view', '2026-05-29 00:00:00.9', 'MOBILE', NULL, 'edge', 2),
    ('XW3', 'X3', 'SX1', 'add_to_cart', '2026-05-29 00:00:01', 'Mobile', 'books', 'edge', 3),
    ('XW4', 'X3', 'SX1', 'page_view', '2026-05-29 00:00:10.2', NULL, NULL, 'edge', 4),
    ('XW5', 'X3', 'SX2', 'add_to_cart', '2026-06-27 23:00:00', 'desktop', 'books', 'edge', 5),
    ('XW6', 'X3', 'SX2', 'checkout', '2026-06-27 23:30:00', NULL, NULL, 'edge', 6),
    ('XW7', 'X3', 'SX3', 'page_view', '2026-06-28 00:00:00', 'desktop', NULL, 'edge', 7);

INSERT INTO raw.reviews (review_id, customer_id, created_at, rating, text,
                         _source_file, _source_row) VALUES
    ('XR1', 'X1', '2026-06-02 00:00:00', NULL, 'no stars given', 'edge', 1),
    ('XR2', 'X1', '2026-06-03 00:00:00', 4, 'fine', 'edge', 2),
    ('XR3', 'X1', '2026-06-28 00:00:00', 1, 'later', 'edge', 3);
"""


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory, generated_landing: Path) -> Settings:
    root = tmp_path_factory.mktemp("baselines")
    settings = load_settings(
        {"SEGFLOW_DATA_DIR": str(root / "data"), "SEGFLOW_LANDING_DIR": str(generated_landing)}
    )
    ingest_landing(settings, as_of=SAMPLE_END)
    with duckdb.connect(str(settings.warehouse_path)) as con:
        con.execute(EDGE_CASES)
    build_features(settings, AS_OF, select="customer_features")
    return settings


def mart_rows(warehouse: Settings) -> pd.DataFrame:
    with connect(warehouse, read_only=True) as con:
        return (
            con.execute("SELECT * FROM marts.customer_features WHERE as_of_date = ?", [AS_OF])
            .df()
            .set_index("customer_id")
        )


def test_the_baselines_cover_the_mart_but_its_text_signal(warehouse: Settings):
    mart_features = set(mart_rows(warehouse).columns) - {"as_of_date", "avg_review_sentiment"}
    assert set(baselines.CORE_FEATURES) == mart_features


def test_the_edge_cases_reach_the_mart(warehouse: Settings):
    mart = mart_rows(warehouse)
    assert "X2" not in mart.index
    x1 = mart.loc["X1"]
    assert x1.frequency == 3 and x1.favourite_category == "books"
    assert x1.email_opens_90d == 2 and x1.email_open_rate_90d == 1.0
    assert x1.preferred_device == "mobile" and x1.review_count == 2
    x3 = mart.loc["X3"]
    assert x3.favourite_category == "home" and x3.web_sessions_30d == 2
    assert x3.preferred_device == "mobile" and pd.isna(x3.email_open_rate_90d)


@pytest.mark.parametrize("baseline", ["duckdb", "pandas"])
def test_the_baseline_computes_what_the_mart_computes(warehouse: Settings, baseline: str):
    features = baselines.BASELINES[baseline](warehouse, AS_OF)
    assert baselines.compare_with_mart(warehouse, AS_OF, features) == []


def test_a_changed_value_and_a_missing_customer_are_reported(warehouse: Settings):
    features = baselines.duckdb_features(warehouse, AS_OF)
    features.loc[features.customer_id == "X1", "email_open_rate_90d"] = 0.5
    differences = baselines.compare_with_mart(
        warehouse, AS_OF, features[features.customer_id != "X3"]
    )
    assert differences == [
        "customers missing from the baseline: 1 (e.g. X3)",
        "email_open_rate_90d differs for 1 of 294 customers, e.g. X1: mart 1.0, baseline 0.5",
    ]
