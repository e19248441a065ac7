"""Training end to end on small generated data: models by alias, metrics against baselines,
what the MLflow runs hold, and the pieces (folds, balancing, persona names) on their own."""

from __future__ import annotations

import json
import re

import duckdb
import numpy as np
import pandas as pd
import pytest

from ml import registry
from ml.config import Settings
from ml.personas import PERSONA_CATALOGUE, fit_personas, name_personas
from ml.train import balanced_rows, time_splits
from ml.training_sets import load_training_set, training_set_dir
from tests.conftest import TRAINED_AS_OF


def test_time_splits_validate_each_snapshot_on_models_of_earlier_ones_only():
    dates = np.array(["2026-03", "2026-01", "2026-02", "2026-01", "2026-03", "2026-02"])
    folds = time_splits(dates)

    assert [(list(train), list(test)) for train, test in folds] == [
        ([1, 3], [2, 5]),
        ([1, 2, 3, 5], [0, 4]),
    ]


def test_balanced_rows_keep_every_rare_row_and_as_many_common_ones_per_snapshot():
    dates = np.array(["a"] * 10 + ["b"] * 10)
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0] + [1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
    kept = balanced_rows(y, dates)

    for snapshot, rare in (("a", 1), ("b", 0)):
        rows = kept[dates[kept] == snapshot]
        assert (
            (y[rows] == rare).sum()
            == (y[rows] != rare).sum()
            == (y[dates == snapshot] == rare).sum()
        )
    assert np.array_equal(kept, balanced_rows(y, dates))  # a fixed draw


def test_persona_names_follow_the_profile_and_are_never_shared():
    columns = [
        "recency_days",
        "frequency",
        "monetary",
        "avg_order_value",
        "orders_90d",
        "spend_trend",
        "days_since_signup",
        "email_open_rate_90d",
        "email_click_rate_90d",
        "web_sessions_30d",
        "product_views_30d",
        "single_order",
    ]
    profile = pd.DataFrame(0.0, index=[0, 1, 2, 3], columns=columns)
    profile.loc[0, ["monetary", "frequency", "avg_order_value"]] = 1.5
    profile.loc[0, "recency_days"] = -1.0
    profile.loc[1, ["recency_days"]] = 1.5
    profile.loc[1, ["email_open_rate_90d", "web_sessions_30d"]] = -1.0
    profile.loc[2, "days_since_signup"] = -2.0
    # Cluster 3 resembles cluster 0, a little weaker: it must get another name.
    profile.loc[3] = profile.loc[0] * 0.8

    names = name_personas(profile)

    assert names[0] == "Loyal high spenders"
    assert names[1] == "Dormant"
    assert names[2] == "New customers"
    assert names[3] in PERSONA_CATALOGUE and names[3] != names[0]
    # Labels are arbitrary: shuffling them moves the names with the profiles.
    shuffled = name_personas(profile.rename(index={0: 2, 2: 0}))
    assert shuffled[2] == "Loyal high spenders" and shuffled[0] == "New customers"


def features_from_warehouse(settings: Settings) -> pd.DataFrame:
    """The frame scoring reads: straight from DuckDB (nullable ints, pandas' string dtype)."""
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(
            "SELECT * FROM marts.customer_features WHERE as_of_date = ? ORDER BY customer_id",
            [TRAINED_AS_OF],
        ).df()


@pytest.mark.slow
def test_every_champion_loads_by_alias_and_scores_the_warehouse_frame(
    trained_settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    import mlflow

    assert registry.missing_champions(trained_settings) == []
    frame = features_from_warehouse(trained_settings)
    assert isinstance(frame["recency_days"].dtype, pd.Int64Dtype)  # what scoring will see
    assert len(frame) > 0

    for kind in registry.MODEL_KINDS:
        champion = registry.load_champion(trained_settings, kind)
        assert champion.version == registry.alias_version(trained_settings, kind, "champion")
        if kind == "personas":
            labels = champion.model.predict(frame[champion.features])
            names = {champion.persona_names[int(label)] for label in labels}
            assert names <= set(PERSONA_CATALOGUE) and len(names) >= 3
            continue
        if kind == "customer_value":
            scores = champion.model.predict(frame[champion.features])
            assert (scores >= 0).all()
        else:
            scores = champion.model.predict_proba(frame[champion.features])[:, 1]
            assert ((scores >= 0) & (scores <= 1)).all()
        assert np.isfinite(scores).all() and scores.std() > 0
        assert "customer_id" not in champion.features and "as_of_date" not in champion.features

    # MLflow's own loader by the alias URI gives the same model (it needs the opt-in that
    # ml.registry avoids by checking skops' trusted types itself).
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    registry.mlflow_client(trained_settings)
    by_uri = mlflow.sklearn.load_model("models:/segflow_purchase_propensity@champion")
    champion = registry.load_champion(trained_settings, "purchase_propensity")
    np.testing.assert_allclose(
        by_uri.predict_proba(frame[champion.features]),
        champion.model.predict_proba(frame[champion.features]),
    )


@pytest.mark.slow
def test_unseen_categories_and_missing_values_are_scored(trained_settings: Settings):
    frame = features_from_warehouse(trained_settings).head(50).copy()
    frame["favourite_category"] = pd.Series(["garden"] * len(frame), dtype="str")
    frame["country_code"] = pd.NA
    frame["recency_days"] = pd.array([pd.NA] * len(frame), dtype="Int64")
    champion = registry.load_champion(trained_settings, "churn_risk")

    scores = champion.model.predict_proba(frame[champion.features])[:, 1]

    assert np.isfinite(scores).all()


def champion_run(settings: Settings, kind: str):
    client = registry.mlflow_client(settings)
    version = registry.alias_version(settings, kind, "champion")
    details = client.get_model_version(registry.registered_name(kind), str(version))
    return client, details, client.get_run(details.run_id)


@pytest.mark.slow
def test_each_model_beats_its_no_learning_baseline_out_of_time(trained_settings: Settings):
    for kind, metric in (
        ("purchase_propensity", "roc_auc"),
        ("churn_risk", "roc_auc"),
        ("engagement_propensity", "roc_auc"),
        ("customer_value", "spearman"),
        ("personas", "silhouette"),
    ):
        _, details, run = champion_run(trained_settings, kind)
        metrics = run.data.metrics
        assert metrics[metric] > metrics[f"baseline_{metric}"], (kind, metrics)
        assert details.tags["validation_status"] == "passed"
        assert details.tags["validation_reason"].startswith("first model")
        assert details.tags["validation_snapshot"] == "2026-05-31"
    _, _, run = champion_run(trained_settings, "purchase_propensity")
    for name in ("pr_auc", "brier", "log_loss", "lift_top_decile", "capture_top_decile"):
        assert name in run.data.metrics
    assert 0 < run.data.metrics["brier"] < 0.25  # calibrated: better than a coin


@pytest.mark.slow
def test_runs_hold_the_window_charts_card_and_no_personal_data(trained_settings: Settings):
    client, details, run = champion_run(trained_settings, "purchase_propensity")
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.run_name == f"train {TRAINED_AS_OF}"
    assert parent.data.params["training_window"].startswith("features 2026-04-01..2026-05-01")
    assert parent.data.tags["segflow_code_version"]
    assert "purchase_propensity.roc_auc" in parent.data.metrics
    assert int(run.data.params["rows_training"]) > 0 and int(run.data.params["n_features"]) > 20

    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {
        "calibration_curve.png",
        "lift_chart.png",
        "permutation_importance.csv",
        "permutation_importance.png",
        "model_card.md",
        "features.json",
    } <= artifacts
    _, _, personas_run = champion_run(trained_settings, "personas")
    assert "persona_profile.png" in {
        item.path for item in client.list_artifacts(personas_run.info.run_id)
    }

    # Everything lives in the store under the data folder, and no file there holds an e-mail
    # address or a customer id (the models included).
    store = trained_settings.mlflow_dir / "artifacts"
    assert run.info.artifact_uri.startswith(store.resolve().as_uri())
    with duckdb.connect(str(trained_settings.warehouse_path), read_only=True) as con:
        ids = [row[0] for row in con.execute("SELECT customer_id FROM raw.customers").fetchall()]
    files = [path for path in store.rglob("*") if path.is_file()]
    assert {"model_card.md", "input_example.json", "model.skops"} <= {p.name for p in files}
    address = re.compile(rb"[\w.+-]+@[\w-]+\.[a-z]{2,}")
    for path in files:
        content = path.read_bytes()
        assert not address.search(content), path
        assert not any(customer.encode() in content for customer in ids), path
    example = json.loads(next(p for p in files if p.name == "input_example.json").read_text())
    assert "customer_id" not in example["columns"]


@pytest.mark.slow
def test_personas_retrained_on_the_same_data_keep_their_names(trained_settings: Settings):
    ts = load_training_set(training_set_dir(trained_settings, TRAINED_AS_OF))
    champion = registry.load_champion(trained_settings, "personas")
    models = trained_settings.models

    again = fit_personas(ts.training, models.persona_min_share, models.persona_max_count)

    frame = ts.validation
    before = [
        champion.persona_names[label] for label in champion.model.predict(frame[champion.features])
    ]
    after = [again.names[label] for label in again.model.predict(frame[champion.features])]
    assert before == after
    assert len(set(champion.persona_names.values())) == len(champion.persona_names)


def test_a_cold_start_trains_only_when_a_champion_is_missing(settings: Settings, monkeypatch):
    import ml.train

    trained = []
    monkeypatch.setattr(ml.train.registry, "missing_champions", lambda _: [])
    monkeypatch.setattr(ml.train, "train_all", lambda _, as_of: trained.append(as_of))
    assert ml.train.ensure_champions(settings, TRAINED_AS_OF) == []
    assert trained == []


def test_a_cold_start_whose_model_misses_its_baseline_stops_with_the_reason(
    settings: Settings, monkeypatch
):
    import ml.train

    reason = "roc_auc 0.5000 does not beat the baseline (0.6471)"
    trained = []

    def train_all(_, as_of):
        trained.append(as_of)
        return {"models": {"churn_risk": {"promotion": {"reason": reason}}}}

    monkeypatch.setattr(ml.train.registry, "missing_champions", lambda _: ["churn_risk"])
    monkeypatch.setattr(ml.train, "train_all", train_all)
    with pytest.raises(registry.NoChampion, match=re.escape(f"segflow_churn_risk: {reason}")):
        ml.train.ensure_champions(settings, TRAINED_AS_OF)
    assert trained == [TRAINED_AS_OF]
