"""The smallest shop a new user brings, run with `make run` as they would: customers and orders
only (no e-mail or web events, no reviews), every customer a buyer, nine months of history
ending 2025-10-31. What it guards: a date before a DAG's start date, for which Airflow runs no
task and still reports success; and a model the data cannot support (no click without e-mail
events), which must be marked not applicable while the rest is trained and published."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from ml.synthetic.shop import generate
from tests.conftest import run_make

pytestmark = pytest.mark.airflow
AS_OF = dt.date(2025, 10, 31)
SEGFLOW = str(Path(sys.executable).with_name("segflow"))
RUN_TIMEOUT_S = 600
"""A cold start (training every model) inside the run: minutes on two busy cores."""


def keep_buyers_only(landing: Path) -> int:
    """Rewrite the customers files with the customers who have an order; returns how many."""
    orders = f"read_parquet('{landing}/orders/**/*.parquet')"
    with duckdb.connect() as con:
        for path in sorted((landing / "customers").rglob("*.parquet")):
            rewritten = path.with_suffix(".rewritten")
            con.execute(
                f"""COPY (SELECT * FROM read_parquet('{path}')
                          WHERE customer_id IN (SELECT customer_id FROM {orders}))
                    TO '{rewritten}' (FORMAT parquet)"""
            )
            rewritten.replace(path)
        return con.execute(
            f"SELECT count(*) FROM read_parquet('{landing}/customers/**/*.parquet')"
        ).fetchone()[0]


@pytest.fixture(scope="module")
def minimal_shop(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The shop's landing folder, and the environment of a project that has never run (its own
    Airflow home and data folder), with a small hyper-parameter search for a quick cold start."""
    root = tmp_path_factory.mktemp("minimal-shop")
    landing = root / "landing"
    generate(landing, customers=1500, days=270, end_date=AS_OF, seed=5, progress=False)
    for optional in ("email_events", "web_events", "reviews"):
        shutil.rmtree(landing / optional)
    customers = keep_buyers_only(landing)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(root / "airflow"),
        "SEGFLOW_DATA_DIR": str(root / "data"),
        "SEGFLOW_LANDING_DIR": str(landing),
        "SEGFLOW_TRAINING_SNAPSHOTS": "2",
        "SEGFLOW_TUNING_ITERATIONS": "2",
        # A fixed key: pseudonyms order the training rows, and so what early stopping samples;
        # with a random key per run the models' gate scores moved enough to fail a cold start.
        "SEGFLOW_PSEUDONYM_KEY": "minimal-shop-tests",
    }
    env.pop("MLFLOW_TRACKING_URI", None)  # the registry under this data folder
    return {"env": env, "customers": customers, "data": root / "data"}


def test_make_run_publishes_segments_with_the_click_model_not_applicable(minimal_shop: dict):
    env, data = minimal_shop["env"], minimal_shop["data"]

    result = run_make("run", {**env, "AS_OF": AS_OF.isoformat()}, timeout=RUN_TIMEOUT_S)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"run for {AS_OF} succeeded" in result.stdout
    assert " success)" in result.stdout  # the run's task states, checked by make run
    # Airflow's task processes, dbt and MLflow wrote the data folder under a user's umask
    # (run_make): owner-only all the same (ml/privacy/permissions.py).
    for path in (data, *data.rglob("*")):
        assert path.is_symlink() or not stat.S_IMODE(path.stat().st_mode) & 0o077, path
    # Published: every customer, scored by the models the data supports.
    manifest = json.loads((data / "exports" / AS_OF.isoformat() / "manifest.json").read_text())
    assert manifest["customers"] == minimal_shop["customers"]
    (reason,) = manifest["not_applicable"].values()
    assert set(manifest["not_applicable"]) == {"engagement_propensity"}
    assert "clicked an e-mail" in reason
    assert set(manifest["model_versions"]) == {
        "personas",
        "purchase_propensity",
        "churn_risk",
        "customer_value",
    }
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        scored, clicks, purchases, segments = con.execute(
            """SELECT count(*), count(engagement_propensity), count(purchase_propensity),
                      count(DISTINCT segment)
               FROM published.customer_segments WHERE as_of_date = ?""",
            [AS_OF],
        ).fetchone()
    assert scored == purchases == minimal_shop["customers"] and segments >= 3
    assert clicks == 0
    # The model summary (segflow models, and the demo's status) says why.
    models = subprocess.run(
        [SEGFLOW, "models"], env=env, capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert f"{'segflow_engagement_propensity':<34} not applicable as of {AS_OF}" in models
    assert reason in models
    # The scheduler under `make up` would start from the latest interval, not from 2000.
    metadata = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    with contextlib.closing(sqlite3.connect(f"file:{metadata}?mode=ro", uri=True)) as con:
        next_runs = dict(con.execute("SELECT dag_id, next_dagrun FROM dag").fetchall())
    week_ago = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(days=8)
    for dag_id in ("segment_pipeline", "train_models"):
        assert dt.datetime.fromisoformat(next_runs[dag_id][:19]) > week_ago, next_runs


def test_make_run_refuses_a_date_no_dag_run_computes(minimal_shop: dict):
    result = run_make("run", {**minimal_shop["env"], "AS_OF": "1999-12-31"})

    assert result.returncode != 0
    assert "1999-12-31 is before the DAGs' start date 2000-01-01" in result.stderr
    assert "succeeded" not in result.stdout
