"""Training end to end on small generated data: models by alias, metrics against baselines,
what the MLflow runs hold, and the pieces (folds, balancing, persona names) on their own."""

from __future__ import annotations

import dataclasses
import json
import re

import duckdb
import numpy as np
import pandas as pd
import pytest

from ml.config import Settings
from ml.errors import NoChampion
from ml.models import catalogue, registry
from ml.models.catalogue import PERSONA_NAMES
from ml.models.evaluate import MIN_OUTCOME_ROWS, not_applicable_reason
from ml.models.fitting import balanced_rows, time_splits
from ml.models.training_sets import load_training_set, training_set_dir
from ml.segments.personas import PERSONA_FEATURES, fit_personas, name_personas
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
    columns = [*PERSONA_FEATURES, "single_order"]
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
    assert names[3] in PERSONA_NAMES and names[3] != names[0]
    # Labels are arbitrary: shuffling them moves the names with the profiles.
    shuffled = name_personas(profile.rename(index={0: 2, 2: 0}))
    assert shuffled[2] == "Loyal high spenders" and shuffled[0] == "New customers"


def test_personas_fit_when_every_customer_has_ordered():
    """Without a customer lacking an order, recency arrives as integers, not floats with NaN."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({column: rng.integers(1, 60, 400) for column in PERSONA_FEATURES})
    frame["spend_trend"] = rng.normal(0, 1, 400)
    frame["email_open_rate_90d"] = frame["email_click_rate_90d"] = np.nan  # no e-mail events
    assert frame["recency_days"].dtype == np.int64

    fitted = fit_personas(frame, min_share=0.05, max_count=4)

    assert set(fitted.names.values()) <= set(PERSONA_NAMES)
    assert len(set(fitted.model.predict(frame[PERSONA_FEATURES]))) >= 3


def snapshots(outcomes: dict[str, tuple[int, int]], target: str) -> pd.DataFrame:
    """Training-set rows: per snapshot, (customers with the outcome, customers without)."""
    parts = [
        pd.DataFrame({"snapshot_date": snapshot, target: [1] * yes + [0] * no, "was_active": True})
        for snapshot, (yes, no) in outcomes.items()
    ]
    return pd.concat(parts, ignore_index=True)


def test_a_model_applies_only_with_enough_customers_of_each_outcome_in_every_snapshot():
    enough = {"2026-04-01": (40, 500), "2026-05-01": (35, 480), "2026-05-31": (50, 470)}
    assert not_applicable_reason("purchase_propensity", snapshots(enough, "purchased"), 30) is None
    assert not_applicable_reason("personas", snapshots(enough, "purchased"), 30) is None

    # No e-mail events: nobody clicks, in any snapshot.
    no_clicks = snapshots({d: (0, yes + no) for d, (yes, no) in enough.items()}, "clicked_email")
    assert not_applicable_reason("engagement_propensity", no_clicks, 30) == (
        "0 of 540 customers clicked an e-mail in the 30 days after 2026-04-01; every snapshot "
        f"needs at least {MIN_OUTCOME_ROWS} who clicked an e-mail and {MIN_OUTCOME_ROWS} who "
        "clicked none"
    )
    # One snapshot short of either outcome is enough to refuse, and is named.
    short = {**enough, "2026-05-01": (MIN_OUTCOME_ROWS - 1, 480)}
    reason = not_applicable_reason("churn_risk", snapshots(short, "churned"), 30)
    assert reason.startswith(f"{MIN_OUTCOME_ROWS - 1} of 509 active customers stopped buying")
    assert "after 2026-05-01" in reason
    everyone_bought = {**enough, "2026-05-31": (520, 0)}
    reason = not_applicable_reason(
        "purchase_propensity", snapshots(everyone_bought, "purchased"), 30
    )
    assert reason.startswith("0 of 520 customers did not buy in the 30 days after 2026-05-31")


@pytest.mark.slow
def test_a_model_without_positive_examples_is_not_applicable_and_registers_nothing(
    trained_settings: Settings, tmp_path
):
    """No e-mail events, so no click: the engagement model is marked not applicable with the
    reason instead of crashing in its hyper-parameter search, no version is registered, and a
    cold start does not train it again (the next scheduled training judges it anew)."""
    import shutil

    from ml.models.train import train_and_register, training_summary

    directory = tmp_path / "training"
    shutil.copytree(training_set_dir(trained_settings, TRAINED_AS_OF), directory)
    for path in directory.glob("????-??-??.parquet"):
        pd.read_parquet(path).assign(clicked_email=0).to_parquet(path)
    shutil.copy(trained_settings.mlflow_dir / "mlflow.db", tmp_path / "mlflow.db")
    settings = dataclasses.replace(
        trained_settings, mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"
    )
    client = registry.mlflow_client(settings)
    name = catalogue.ENGAGEMENT_PROPENSITY.registered_name
    client.delete_registered_model_alias(name, registry.CHAMPION)
    assert registry.missing_champions(settings) == ["engagement_propensity"]

    trained = train_and_register(settings, "engagement_propensity", directory)

    assert trained["version"] is None
    assert trained["not_applicable"].startswith("0 of ")
    assert "clicked an e-mail" in trained["not_applicable"]
    assert [int(v.version) for v in client.search_model_versions(f"name='{name}'")] == [1]
    (marked,) = registry.not_applicable_models(settings).values()
    assert (marked.kind, marked.as_of) == ("engagement_propensity", TRAINED_AS_OF.isoformat())
    assert registry.missing_champions(settings) == []  # the cold start leaves it alone
    summary = training_summary(settings)
    assert f"{name:<34} not applicable as of {TRAINED_AS_OF}" in summary
    assert trained["not_applicable"] in summary


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

    for kind in catalogue.MODEL_KINDS:
        champion = registry.load_champion(trained_settings, kind)
        assert champion.version == registry.alias_version(trained_settings, kind, "champion")
        if kind == "personas":
            labels = champion.model.predict(frame[champion.features])
            names = {champion.persona_names[int(label)] for label in labels}
            assert names <= set(PERSONA_NAMES) and len(names) >= 3
            continue
        if kind == "customer_value":
            scores = champion.model.predict(frame[champion.features])
            assert (scores >= 0).all()
        else:
            scores = champion.model.predict_proba(frame[champion.features])[:, 1]
            assert ((scores >= 0) & (scores <= 1)).all()
        assert np.isfinite(scores).all() and scores.std() > 0
        assert "customer_id" not in champion.features and "as_of_date" not in champion.features
        assert "customer_key" not in champion.features

    # MLflow's own loader by the alias URI gives the same model (it needs the opt-in that
    # ml.models.registry avoids by checking skops' trusted types itself).
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
    details = client.get_model_version(catalogue.model(kind).registered_name, str(version))
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
        people = con.execute("SELECT customer_id, email FROM raw.customers").fetchall()
    ids = [customer for customer, _ in people]
    # The shop's own addresses, exactly: an address-shaped pattern also matches PNG bytes.
    addresses = [email.encode() for _, email in people if email]
    # Nor the pseudonyms of the training set: they stay with it.
    keys = set(
        load_training_set(training_set_dir(trained_settings, TRAINED_AS_OF)).frame["customer_key"]
    )
    files = [path for path in store.rglob("*") if path.is_file()]
    assert {"model_card.md", "input_example.json", "model.skops"} <= {p.name for p in files}
    for path in files:
        content = path.read_bytes()
        assert not any(address in content for address in addresses), path
        assert not any(customer.encode() in content for customer in ids), path
        assert not any(key.encode() in content for key in keys), path
    example = json.loads(next(p for p in files if p.name == "input_example.json").read_text())
    assert "customer_id" not in example["columns"] and "customer_key" not in example["columns"]


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
    import ml.models.train

    trained = []
    monkeypatch.setattr(ml.models.train.registry, "missing_champions", lambda _: [])
    monkeypatch.setattr(ml.models.train, "train_all", lambda _, as_of, kinds: trained.append(as_of))
    assert ml.models.train.ensure_champions(settings, TRAINED_AS_OF) == []
    assert trained == []


def test_a_cold_start_trains_only_the_kinds_without_champion(settings: Settings, monkeypatch):
    """A retry after a failure trains what is still missing: the models that made it get no
    new version on every try."""
    import ml.models.train

    missing = [["engagement_propensity"], []]
    trained = []
    monkeypatch.setattr(ml.models.train.registry, "missing_champions", lambda _: missing.pop(0))
    monkeypatch.setattr(
        ml.models.train, "train_all", lambda _, as_of, kinds: trained.append((as_of, list(kinds)))
    )
    assert ml.models.train.ensure_champions(settings, TRAINED_AS_OF) == ["engagement_propensity"]
    assert trained == [(TRAINED_AS_OF, ["engagement_propensity"])]


def test_a_cold_start_whose_model_misses_its_baseline_stops_with_the_reason(
    settings: Settings, monkeypatch
):
    import ml.models.train

    reason = "roc_auc 0.5000 does not beat the baseline (0.6471)"
    trained = []

    def train_all(_, as_of, kinds):
        trained.append(as_of)
        return {"models": {"churn_risk": {"promotion": {"reason": reason}}}}

    monkeypatch.setattr(ml.models.train.registry, "missing_champions", lambda _: ["churn_risk"])
    monkeypatch.setattr(ml.models.train, "train_all", train_all)
    with pytest.raises(NoChampion, match=re.escape(f"segflow_churn_risk: {reason}")):
        ml.models.train.ensure_champions(settings, TRAINED_AS_OF)
    assert trained == [TRAINED_AS_OF]
