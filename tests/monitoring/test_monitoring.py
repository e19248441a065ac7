"""The drift monitor on a copy of the shared trained shop (conftest: trained as of
TRAINED_AS_OF, with the validation snapshot one horizon before it built, labels included).

Its validation date is scored and published with the champions, then TRAINED_AS_OF: the labels
of the validation date have matured by then, so the monitor of TRAINED_AS_OF measures realized
performance, which must equal a direct computation. A shop that changes (`--drift-from`) is run
through Airflow in test_pipeline_airflow.py; 30 daily runs of a steady shop are
`bench/drift_check.py` (docs/drift-check.md).
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from ml.config import Settings, load_settings
from tests.conftest import TRAINED_AS_OF, copy_of_trained

pytestmark = pytest.mark.slow

SCORED = TRAINED_AS_OF - dt.timedelta(days=30)
"""The validation snapshot of the training: its features and matured labels are built."""


@pytest.fixture(scope="module")
def monitored(trained_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from ml.monitoring.monitor import monitor
    from ml.segments.publish import publish_segments
    from ml.segments.score import score_customers

    root = tmp_path_factory.mktemp("monitored")
    shutil.copy(trained_settings.warehouse_path, root / "warehouse.duckdb")
    (root / "mlflow").mkdir()
    shutil.copy(trained_settings.mlflow_dir / "mlflow.db", root / "mlflow" / "mlflow.db")
    settings = load_settings(
        {
            "SEGFLOW_DATA_DIR": str(root),
            "SEGFLOW_LANDING_DIR": str(trained_settings.landing_dir),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
        }
    )
    results = {}
    for date in (SCORED, TRAINED_AS_OF):
        score_customers(settings, date)
        # The segments gate is the DAG's own task (tested with the publishing).
        publish_segments(settings, date, run_id=f"test__{date}", gate_passed=True)
        results[date] = monitor(settings, date)
    return {"settings": settings, "results": results}


def _query(settings: Settings, sql: str, params: list | None = None) -> pd.DataFrame:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(sql, params or []).df()


def test_realized_performance_appears_once_the_horizon_has_passed_and_matches_sklearn(
    monitored: dict,
):
    settings, results = monitored["settings"], monitored["results"]
    performance = _query(settings, "SELECT * FROM monitoring.model_performance")
    # The run of SCORED has no earlier scores with matured labels; that of TRAINED_AS_OF, one
    # horizon later, measures SCORED.
    assert set(performance["as_of_date"].dt.date) == {TRAINED_AS_OF}
    assert set(performance["scored_date"].dt.date) == {SCORED}
    assert any("no published scores with matured labels" in n for n in results[SCORED].notes)

    outcomes = _query(
        settings,
        """SELECT s.*, l.purchased, l.churned, l.clicked_email, l.was_active,
                  l.revenue_in_horizon::DOUBLE AS revenue
           FROM published.customer_segments s
           JOIN marts.training_labels l USING (customer_id, as_of_date)
           WHERE s.as_of_date = ?""",
        [SCORED],
    )
    assert len(outcomes) > 500
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
    # Next to the validation numbers of the version that scored the date (the champions were
    # validated on this very snapshot, so realized and validation ROC-AUC agree).
    roc = performance[performance["metric"] == "roc_auc"]
    assert np.allclose(roc["change"], roc["realized"] - roc["validation"])
    assert np.allclose(roc["realized"], roc["validation"], atol=1e-9)
    assert set(roc["level"]) == {"ok"}


def test_every_input_and_score_of_every_champion_is_checked_and_stored(monitored: dict):
    settings, results = monitored["settings"], monitored["results"]
    metrics = _query(settings, "SELECT * FROM monitoring.drift_metrics")
    assert set(metrics["as_of_date"].dt.date) == {SCORED, TRAINED_AS_OF}
    today = metrics[metrics["as_of_date"].dt.date == TRAINED_AS_OF]
    features = today[today["check_name"] == "feature"]
    assert features["name"].nunique() >= 30
    assert set(features["model_kind"]) == {
        "personas",
        "purchase_propensity",
        "churn_risk",
        "engagement_propensity",
        "customer_value",
    }
    # The reference is the features of the training date itself: no drift on that date (KS
    # compares with 1,001 reference quantiles, exact to a thousandth).
    assert features[features["statistic"] == "psi"]["value"].max() < 1e-9
    assert features[features["statistic"] == "ks"]["value"].max() < 0.002
    scores = today[today["check_name"] == "score"]
    assert set(scores["name"]) == {
        "segment",
        "purchase_propensity",
        "churn_risk",
        "engagement_propensity",
        "predicted_clv",
    }
    # Churn risk is compared over the customers it is computed for (active ones).
    assert scores[scores["statistic"] == "psi"]["value"].max() < 1e-9
    assert scores[scores["statistic"] == "ks"]["value"].max() < 0.002
    assert set(today[today["check_name"] == "segment_mix"]["name"]) == {"segment", "rfm_segment"}
    # One verdict per date, with its report. (SCORED, a month before the reference of this
    # young shop, may well alert: its customers are a month younger.)
    alerts = _query(settings, "SELECT * FROM monitoring.drift_alerts ORDER BY as_of_date")
    assert alerts["as_of_date"].dt.date.tolist() == [SCORED, TRAINED_AS_OF]
    assert not alerts["raised"].iloc[-1]
    report = Path(alerts["report"].iloc[-1]).read_text()
    assert "No drift alert" in report and "Realized performance" in report
    some_customer = _query(settings, "SELECT min(customer_id) FROM published.customer_segments")
    assert some_customer.iloc[0, 0] not in report  # aggregates only
    assert not results[TRAINED_AS_OF].alert


def test_rerunning_the_monitor_replaces_the_date_rows(monitored: dict):
    from ml.monitoring.monitor import monitor

    settings = monitored["settings"]

    def counts() -> list:
        return (
            _query(
                settings,
                """SELECT (SELECT count(*) FROM monitoring.drift_metrics),
                      (SELECT count(*) FROM monitoring.model_performance),
                      (SELECT count(*) FROM monitoring.drift_alerts)""",
            )
            .iloc[0]
            .tolist()
        )

    before = counts()
    monitor(settings, TRAINED_AS_OF)
    assert counts() == before


def test_a_model_not_applicable_is_noted_and_the_others_are_monitored(
    trained_settings: Settings, tmp_path: Path
):
    from ml.models.registry import mark_not_applicable
    from ml.monitoring.monitor import monitor
    from ml.segments.publish import publish_segments
    from ml.segments.score import score_customers

    settings = copy_of_trained(trained_settings, tmp_path)
    mark_not_applicable(settings, "engagement_propensity", "no clicks", TRAINED_AS_OF.isoformat())
    for date in (SCORED, TRAINED_AS_OF):
        score_customers(settings, date)
        publish_segments(settings, date, run_id=f"test__{date}", gate_passed=True)

    result = monitor(settings, TRAINED_AS_OF)

    assert f"engagement_propensity on {SCORED}: not applicable, no score to judge" in result.notes
    assert f"engagement_propensity: not applicable on {TRAINED_AS_OF}, no score to check" in (
        result.notes
    )
    assert set(result.model_performance["model_kind"]) == {
        "purchase_propensity",
        "churn_risk",
        "customer_value",
    }
    assert "engagement_propensity" not in set(result.drift_metrics["model_kind"].dropna())
    assert "personas" in set(result.drift_metrics["model_kind"])
