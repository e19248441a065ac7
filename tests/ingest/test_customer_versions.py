"""A customer delivered three times (opted in; a new address; opted out), through features,
scoring, the daily exports and a trigger refresh: each date uses the version in force that day,
and after the opt-out the customer is in no export."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ml.config import Settings, load_settings
from ml.features.dbt import build_features
from ml.ingest.loader import ingest_landing
from ml.segments.publish import publish_segments
from ml.segments.score import score_customers
from ml.triggers.exports import refresh_now
from ml.warehouse.connection import connect
from tests.conftest import TRAINED_AS_OF
from tests.triggers.test_triggers import holdout, read_export

CUSTOMER_COLUMNS = [
    "customer_id",
    "email",
    "signup_at",
    "country",
    "birth_year",
    "gender",
    "acquisition_channel",
    "email_opt_in",
]


@pytest.fixture
def shop(trained_settings: Settings, tmp_path: Path) -> Settings:
    """A copy of the trained shop (warehouse, MLflow store and landing files)."""
    shutil.copytree(trained_settings.data_dir, tmp_path / "data")
    shutil.copytree(trained_settings.landing_dir, tmp_path / "landing")
    return load_settings(
        {
            "SEGFLOW_DATA_DIR": str(tmp_path / "data"),
            "SEGFLOW_LANDING_DIR": str(tmp_path / "landing"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'data' / 'mlflow' / 'mlflow.db'}",
        }
    )


def publish_day(settings: Settings, day: dt.date) -> dict[str, pd.DataFrame]:
    """The daily run's steps for `day`; its audience exports by audience."""
    ingest_landing(settings, as_of=day)
    build_features(settings, day)
    score_customers(settings, day)
    folder = Path(publish_segments(settings, day, run_id=f"run-{day}")["exports_dir"])
    return {path.stem: read_export(folder, path.name) for path in folder.glob("*.csv")}


def addresses_of(exports: dict[str, pd.DataFrame], customer: str) -> set[str]:
    return {
        email
        for frame in exports.values()
        for email in frame.loc[frame.customer_id == customer, "email"]
    }


def deliver(settings: Settings, day: dt.date, row: dict) -> None:
    folder = settings.landing_dir / "customers" / f"date={day}"
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([row], columns=CUSTOMER_COLUMNS).to_csv(folder / "changes.csv", index=False)


def features_of(settings: Settings, customer: str) -> list[tuple]:
    with connect(settings, read_only=True) as con:
        return con.execute(
            """SELECT as_of_date, is_opted_in FROM marts.customer_features
               WHERE customer_id = ? AND as_of_date > ? ORDER BY 1""",
            [customer, TRAINED_AS_OF],
        ).fetchall()


@pytest.mark.slow
def test_each_date_uses_the_version_in_force_and_an_opt_out_leaves_every_export(shop: Settings):
    day1, day2, day3 = (TRAINED_AS_OF + dt.timedelta(days=n) for n in (1, 2, 3))
    first = publish_day(shop, day1)
    # The member of the most audiences, so that a day later they are still in one.
    memberships = pd.concat(first.values()).customer_id.value_counts()
    customer = sorted(memberships[memberships == memberships.max()].index)[0]
    [original] = addresses_of(first, customer)
    with connect(shop, read_only=True) as con:
        row = (
            con.execute(
                f"SELECT {', '.join(CUSTOMER_COLUMNS)} FROM raw.customers WHERE customer_id = ?",
                [customer],
            )
            .df()
            .iloc[0]
            .to_dict()
        )
    assert row["email_opt_in"]  # the first version: opted in

    deliver(shop, day2, dict(row, email="moved@example.org"))
    second = publish_day(shop, day2)
    assert addresses_of(second, customer) == {"moved@example.org"}

    deliver(shop, day3, dict(row, email="moved@example.org", email_opt_in="no"))
    third = publish_day(shop, day3)
    assert addresses_of(third, customer) == set()
    # Features are point in time: opted in on day 2, not on day 3.
    assert features_of(shop, customer) == [(day1, True), (day2, True), (day3, False)]
    # A date published again after the opt-out leaves the customer out too.
    assert addresses_of(publish_day(shop, day1), customer) == set()
    assert original != "moved@example.org"

    # A trigger refresh: the customer and another one buy; only the other enters.
    others = sorted(
        c
        for c in set(pd.concat(third.values()).customer_id)
        if c != customer and holdout("recent_buyer", c) >= 0.05
    )
    buyer = others[0]
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    folder = shop.landing_dir / "orders" / f"date={now.date()}"
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "order_id": ["late-1", "late-2"],
            "customer_id": [customer, buyer],
            "ordered_at": [(now - dt.timedelta(hours=1)).isoformat()] * 2,
            "amount": ["20.00", "30.00"],
        }
    ).to_csv(folder / "live.csv", index=False)
    manifest = refresh_now(shop)
    exported = Path(manifest["exports_dir"])
    assert list(read_export(exported, "recent_buyer.csv").customer_id) == [buyer]
    suppressions = read_export(exported, "suppressions.csv")
    assert suppressions.loc[suppressions.customer_id == customer, "reason"].tolist() == [
        "no_opt_in"
    ]
