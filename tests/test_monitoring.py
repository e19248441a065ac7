"""The drift monitor on a generated shop that keeps behaving as it did: models are trained as
of TRAINED, then every day up to TRAINED + 30 gets its features built with dbt, and is scored,
published and monitored, as the daily DAG does. A shop that changes (`--drift-from`) is run
through Airflow in test_pipeline_airflow.py.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from ml.config import Settings, load_settings
from ml.synthetic import generate

pytestmark = pytest.mark.slow

TRAINED = dt.date(2026, 6, 30)
DAYS = 30
END = TRAINED + dt.timedelta(days=DAYS)
CUSTOMERS = 600
HISTORY_DAYS = 480
"""A young shop's customers age visibly within a month (days since the first order drifts by
itself: KS 0.22 after 30 days at 400 days of history), an older one's less."""


@dataclass
class Shop:
    settings: Settings
    results: dict  # date -> MonitoringResult


def _settings(root: Path) -> Settings:
    return load_settings(
        {
            "SEGFLOW_DATA_DIR": str(root / "data"),
            "SEGFLOW_LANDING_DIR": str(root / "landing"),
            "SEGFLOW_TRAINING_SNAPSHOTS": "2",
            "SEGFLOW_TUNING_ITERATIONS": "2",
        }
    )


def _daily_runs(settings: Settings, dates: list[dt.date]) -> dict:
    """What segment_pipeline does for each date, from features to the monitor."""
    from ml.features import dbt_vars, run_dbt_commands
    from ml.ingest import ingest_landing
    from ml.monitoring import monitor
    from ml.publish import publish_segments
    from ml.score import score_customers
    from ml.text_signal import score_review_sentiment

    started = time.perf_counter()
    ingest_landing(settings, as_of=max(dates))
    score_review_sentiment(settings, max(dates))
    # Each date's features, and the labels of the date one horizon before the last (the
    # earlier dates' labels are of days before any score), in one dbt process.
    run_dbt_commands(
        settings,
        [["run", "--select", "customer_features", "--vars", dbt_vars(settings, d)] for d in dates]
        + [["run", "--select", "training_labels", "--vars", dbt_vars(settings, max(dates))]],
    )
    seconds = {
        "features": time.perf_counter() - started,
        "score": 0.0,
        "publish": 0.0,
        "monitor": 0.0,
    }
    results = {}
    for date in dates:
        started = time.perf_counter()
        score_customers(settings, date)
        scored = time.perf_counter()
        # The segments gate is the DAG's own task (tested with the publishing); here it would
        # only repeat itself.
        publish_segments(settings, date, run_id=f"test__{date}", gate_passed=True)
        published = time.perf_counter()
        results[date] = monitor(settings, date)
        seconds["score"] += scored - started
        seconds["publish"] += published - scored
        seconds["monitor"] += time.perf_counter() - published
    print(f"\n{len(dates)} daily runs: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    return results


@pytest.fixture(scope="module")
def steady(tmp_path_factory: pytest.TempPathFactory) -> Shop:
    """The training date and the 30 days after it, on data without drift."""
    from ml.ingest import ingest_landing
    from ml.train import train_all

    root = tmp_path_factory.mktemp("monitoring")
    generate(
        root / "landing",
        customers=CUSTOMERS,
        days=HISTORY_DAYS,
        end_date=END,
        seed=21,
        progress=False,
    )
    settings = _settings(root)
    ingest_landing(settings, as_of=TRAINED)
    train_all(settings, TRAINED)
    return Shop(
        settings, _daily_runs(settings, [TRAINED + dt.timedelta(days=d) for d in range(DAYS + 1)])
    )


def _query(settings: Settings, sql: str, params: list | None = None) -> pd.DataFrame:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(sql, params or []).df()


def test_thirty_daily_runs_without_drift_raise_no_alert(steady: Shop):
    results = steady.results
    assert len(results) == DAYS + 1
    raised = {date: r.reasons for date, r in results.items() if r.alert}
    assert raised == {}
    metrics = _query(steady.settings, "SELECT * FROM monitoring.drift_metrics")
    # Every input of every champion was checked every day, with both statistics when numeric.
    features = metrics[metrics["check_name"] == "feature"]
    per_day = features.groupby("as_of_date")["name"].nunique()
    assert len(per_day) == DAYS + 1 and per_day.min() >= 30
    assert set(features["statistic"]) == {"psi", "ks"}
    assert set(metrics["check_name"]) == {"feature", "score", "segment_mix"}
    assert metrics["level"].isin(["ok", "warn"]).all()
    print(
        "\nlargest statistics over 30 days without drift:\n"
        + metrics.groupby(["check_name", "statistic"])["value"].max().round(3).to_string()
    )


def test_realized_performance_appears_once_the_horizon_has_passed_and_matches_sklearn(steady: Shop):
    settings = steady.settings
    performance = _query(settings, "SELECT * FROM monitoring.model_performance")
    # Labels of TRAINED mature with the run of TRAINED + horizon, not before.
    assert set(performance["as_of_date"].dt.date) == {END}
    assert set(performance["scored_date"].dt.date) == {TRAINED}

    outcomes = _query(
        settings,
        """SELECT s.*, l.purchased, l.churned, l.clicked_email, l.was_active,
                  l.revenue_in_horizon::DOUBLE AS revenue
           FROM published.customer_segments s
           JOIN marts.training_labels l USING (customer_id, as_of_date)
           WHERE s.as_of_date = ?""",
        [TRAINED],
    )
    realized = performance.set_index(["model_kind", "metric"])["realized"]
    for kind, label in (
        ("purchase_propensity", "purchased"),
        ("engagement_propensity", "clicked_email"),
        ("churn_risk", "churned"),
    ):
        rows = outcomes[outcomes[kind].notna()]
        if kind == "churn_risk":
            rows = rows[rows["was_active"]]
        y, score = rows[label].astype(int).to_numpy(), rows[kind].to_numpy()
        assert realized[(kind, "roc_auc")] == pytest.approx(roc_auc_score(y, score), abs=1e-12)
        top = np.argsort(-score, kind="stable")[: round(len(score) * 0.1)]
        assert realized[(kind, "lift_top_decile")] == pytest.approx(y[top].mean() / y.mean())
        assert realized[(kind, "mean_probability")] == pytest.approx(score.mean())
        assert realized[(kind, "positive_rate")] == pytest.approx(y.mean())
        assert realized[(kind, "brier")] == pytest.approx(np.mean((score - y) ** 2))
    assert realized[("customer_value", "spearman")] == pytest.approx(
        spearmanr(outcomes["revenue"], outcomes["predicted_clv"]).statistic
    )
    # Next to the validation numbers of the version that scored the date.
    roc = performance[performance["metric"] == "roc_auc"]
    assert roc["validation"].between(0.5, 1).all()
    assert np.allclose(roc["change"], roc["realized"] - roc["validation"])
