"""Point-in-time training sets: the snapshot plan, its refusals, and what the Parquet holds."""

from __future__ import annotations

import datetime as dt

import duckdb
import pandas as pd
import pytest

from ml.config import Settings, load_settings
from ml.contract import PERSONAL_COLUMNS
from ml.errors import TrainingSetError
from ml.models.training_sets import (
    DRIFT_REFERENCE,
    build_training_set,
    load_training_set,
    plan_snapshots,
    training_set_dir,
    usable_training_snapshots,
)
from ml.privacy.pseudonyms import CUSTOMER_ID, pseudonym_key
from tests.conftest import TRAINED_AS_OF

D = dt.date


def settings_with(**env: str) -> Settings:
    return load_settings({"SEGFLOW_DATA_DIR": "/nonexistent/segflow", **env})


def test_validation_is_one_horizon_back_and_training_snapshots_a_spacing_apart():
    plan = plan_snapshots(settings_with(), D(2026, 10, 31))

    assert plan.validation == D(2026, 10, 1)
    assert plan.training == (D(2026, 6, 3), D(2026, 7, 3), D(2026, 8, 2), D(2026, 9, 1))
    # The newest training label window (the day after the snapshot, for 30 days) ends where
    # the validation snapshot's features end: no training label overlaps its label window.
    assert plan.training[-1] + dt.timedelta(days=30) <= plan.validation


def test_spacing_shorter_than_the_horizon_is_refused():
    settings = settings_with(SEGFLOW_SNAPSHOT_SPACING_DAYS="20")
    with pytest.raises(TrainingSetError, match="SEGFLOW_SNAPSHOT_SPACING_DAYS=20.*at least 30"):
        plan_snapshots(settings, D(2026, 10, 31))


def test_snapshots_before_the_first_order_are_skipped_and_too_few_refused(caplog):
    settings = settings_with()
    plan = plan_snapshots(settings, D(2026, 10, 31))

    with caplog.at_level("INFO", logger="ml.models.training_sets"):
        kept = usable_training_snapshots(settings, plan, first_order=D(2026, 7, 1))
    assert kept == [D(2026, 7, 3), D(2026, 8, 2), D(2026, 9, 1)]
    assert "snapshot 2026-06-03 is before the first order (2026-07-01): skipped" in caplog.text

    with pytest.raises(TrainingSetError, match="only 1 training snapshot.*at least 2"):
        usable_training_snapshots(settings, plan, first_order=D(2026, 8, 15))
    with pytest.raises(TrainingSetError, match="validation snapshot 2026-10-01 is before"):
        usable_training_snapshots(settings, plan, first_order=D(2026, 10, 5))


@pytest.mark.slow
def test_training_as_of_a_date_the_data_has_not_reached_is_refused(trained_settings: Settings):
    later = TRAINED_AS_OF + dt.timedelta(days=20)
    with pytest.raises(TrainingSetError, match=f"ingest data up to {later} first"):
        build_training_set(trained_settings, later)


def raw_orders(settings: Settings) -> pd.DataFrame:
    """Completed orders, each with its customer's pseudonym as `customer_key`."""
    key = pseudonym_key(settings)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        orders = con.execute(
            "SELECT customer_id, ordered_at, status FROM raw.orders "
            "WHERE coalesce(status, 'completed') = 'completed'"
        ).df()
    orders["customer_key"] = [key.of(CUSTOMER_ID, c) for c in orders["customer_id"]]
    return orders


@pytest.mark.slow
def test_training_files_hold_a_pseudonym_and_no_id_or_address(trained_settings: Settings):
    directory = training_set_dir(trained_settings, TRAINED_AS_OF)
    with duckdb.connect(str(trained_settings.warehouse_path), read_only=True) as con:
        customers = con.execute("SELECT customer_id, email FROM raw.customers").fetchall()
    ids = {customer for customer, _ in customers}
    addresses = {email for _, email in customers if email}
    key = pseudonym_key(trained_settings)

    files = sorted(directory.glob("*.parquet"))
    assert DRIFT_REFERENCE in {path.name for path in files} and len(files) == 4
    for path in files:
        frame = pd.read_parquet(path)
        assert frame.columns[0] == "customer_key", path.name
        assert not set(frame.columns) & PERSONAL_COLUMNS, path.name
        assert not any(c == "email" or "address" in c for c in frame.columns), path.name
        assert frame["customer_key"].is_unique and frame["customer_key"].notna().all()
        # No text value of any column is an id or an address.
        for column in frame.select_dtypes(exclude="number").columns:
            values = set(frame[column].dropna().astype(str))
            assert not values & ids and not values & addresses, (path.name, column)

    # The key is the customer's pseudonym: the one Python computes with the shop's key, for
    # every customer with features on the training date.
    with duckdb.connect(str(trained_settings.warehouse_path), read_only=True) as con:
        featured = [
            row[0]
            for row in con.execute(
                "SELECT customer_id FROM marts.customer_features WHERE as_of_date = ?",
                [TRAINED_AS_OF],
            ).fetchall()
        ]
    reference = pd.read_parquet(directory / DRIFT_REFERENCE)
    assert key.of(CUSTOMER_ID, featured[0]) in set(reference["customer_key"])
    assert set(reference["customer_key"]) == {key.of(CUSTOMER_ID, c) for c in featured}


@pytest.mark.slow
def test_each_row_holds_features_before_and_labels_after_its_own_snapshot(
    trained_settings: Settings,
):
    ts = load_training_set(training_set_dir(trained_settings, TRAINED_AS_OF))
    manifest = ts.manifest
    assert manifest["validation_snapshot"] == "2026-05-31"
    assert manifest["training_snapshots"] == ["2026-04-01", "2026-05-01"]
    assert set(ts.frame["snapshot_date"]) == {D(2026, 4, 1), D(2026, 5, 1), D(2026, 5, 31)}
    assert len(ts.validation) == manifest["snapshots"]["2026-05-31"]["rows"] > 0
    assert not ts.frame.duplicated(["customer_key", "snapshot_date"]).any()
    assert (pd.to_datetime(ts.frame["as_of_date"]).dt.date == ts.frame["snapshot_date"]).all()

    # Recompute frequency (orders before the cutoff) and purchased (an order in the 30 days
    # after it) from raw orders for every snapshot: a join on the wrong date would differ.
    orders = raw_orders(trained_settings)
    for snapshot, rows in ts.frame.groupby("snapshot_date"):
        cutoff = pd.Timestamp(snapshot + dt.timedelta(days=1))
        before = orders[orders.ordered_at < cutoff].groupby("customer_key").size()
        window = orders[
            (orders.ordered_at >= cutoff) & (orders.ordered_at < cutoff + pd.Timedelta(days=30))
        ]
        rows = rows.set_index("customer_key")
        expected_frequency = before.reindex(rows.index, fill_value=0)
        expected_purchased = rows.index.isin(window.customer_key).astype(int)
        assert (rows["frequency"] == expected_frequency).all(), snapshot
        assert (rows["purchased"].to_numpy() == expected_purchased).all(), snapshot
        # Churn is defined for active customers only.
        assert rows.loc[~rows["was_active"], "churned"].isna().all()
