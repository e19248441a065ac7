"""Scoring with the champions, then the whole publish: gate, swap, exports, report."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.config import Settings, load_settings
from ml.errors import NoChampion
from ml.models.catalogue import MODEL_KINDS
from ml.models.registry import (
    CHAMPION,
    alias_version,
    load_champion,
    mlflow_client,
)
from ml.segments.publish import publish_segments
from ml.segments.report import EXPERIMENT, segments_summary, write_segment_report
from ml.segments.score import _model_input, _prepare, score_customers
from ml.warehouse.connection import connect
from tests.conftest import TRAINED_AS_OF, copy_of_trained

pytestmark = pytest.mark.slow
AS_OF = TRAINED_AS_OF


@pytest.fixture(scope="module")
def scored(trained_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A copy of the trained warehouse and MLflow store (the shared fixture stays untouched),
    scored for the trained date."""
    root = tmp_path_factory.mktemp("scored")
    shutil.copy(trained_settings.warehouse_path, root / "warehouse.duckdb")
    store = Path(trained_settings.mlflow_tracking_uri.removeprefix("sqlite:///"))
    (root / "mlflow").mkdir()
    shutil.copy(store, root / "mlflow" / "mlflow.db")
    settings = load_settings(
        {
            "SEGFLOW_DATA_DIR": str(root),
            "SEGFLOW_LANDING_DIR": str(trained_settings.landing_dir),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
        }
    )
    score_customers(settings, AS_OF)
    return settings


def staged(settings: Settings) -> pd.DataFrame:
    with connect(settings, read_only=True) as con:
        return con.execute(
            """SELECT s.*, f.orders_365d, f.preferred_hour, f.is_unsubscribed, f.has_complained,
                      f.has_hard_bounced, f.is_opted_in, f.has_valid_email
               FROM staging.customer_segments s
               JOIN marts.customer_features f USING (customer_id, as_of_date)
               WHERE as_of_date = ? ORDER BY customer_id""",
            [AS_OF],
        ).df()


def expected_band(scores: pd.Series) -> pd.Series:
    """High: fewer than 20% of the date's scored customers score higher; medium: fewer than
    50%; ties share the better band."""
    higher = scores.rank(method="min", ascending=False) - 1
    count = scores.notna().sum()
    band = np.where(higher < 0.2 * count, "high", np.where(higher < 0.5 * count, "medium", "low"))
    return pd.Series(np.where(scores.isna(), None, band), index=scores.index)


def test_every_customer_is_scored_by_the_champions(scored: Settings):
    from ml.models.catalogue import PERSONA_NAMES

    rows = staged(scored)
    with connect(scored, read_only=True) as con:
        features = con.execute(
            "SELECT count(*) FROM marts.customer_features WHERE as_of_date = ?", [AS_OF]
        ).fetchone()[0]
    assert len(rows) == features == rows.customer_id.nunique()
    for kind in MODEL_KINDS:
        assert set(rows[f"{kind}_model_version"]) == {alias_version(scored, kind, CHAMPION)}
    assert set(rows.segment) <= set(PERSONA_NAMES)
    for kind in ("purchase_propensity", "engagement_propensity", "churn_risk"):
        assert rows[kind].dropna().between(0, 1).all()
        assert (rows[f"{kind}_band"].fillna("-") == expected_band(rows[kind]).fillna("-")).all()
    assert (rows.predicted_clv >= 0).all()
    # Churn risk is defined for active customers only.
    assert (rows.churn_risk.notna() == (rows.orders_365d > 0)).all()
    assert rows.churn_risk.notna().any() and rows.churn_risk.isna().any()


def test_consent_and_send_hours_follow_the_features(scored: Settings):
    rows = staged(scored)
    # The first reason that applies, in this order.
    reasons = [
        (rows.is_unsubscribed, "unsubscribed"),
        (rows.has_complained, "complaint"),
        (rows.has_hard_bounced, "hard_bounce"),
        (~rows.is_opted_in, "no_opt_in"),
        (~rows.has_valid_email, "invalid_address"),
    ]
    reason = np.select([c.astype(bool) for c, _ in reasons], [n for _, n in reasons], "-")
    assert (rows.suppression_reason.fillna("-") == reason).all()
    assert (rows.is_emailable == (reason == "-")).all()
    assert (~rows.is_emailable).any()

    own = rows.preferred_hour.notna()
    assert (rows.best_send_hour[own] == rows.preferred_hour[own]).all()
    assert (rows.send_hour_source == np.where(own, "customer", "segment")).all()
    assert rows.best_send_hour.between(0, 23).all()
    # Without an own hour, the persona's most common hour of the date.
    for segment, group in rows[~own].groupby("segment"):
        hours = rows.preferred_hour[own & (rows.segment == segment)]
        if len(hours):
            top = hours.value_counts()
            assert set(group.best_send_hour) == {min(top.index[top == top.max()])}


def features_of_the_date(settings: Settings) -> pd.DataFrame:
    with connect(settings, read_only=True) as con:
        return con.execute(
            "SELECT * FROM marts.customer_features WHERE as_of_date = ? ORDER BY customer_id",
            [AS_OF],
        ).df()


def test_the_scores_are_each_champion_pipelines_own_predictions(scored: Settings):
    rows, features = staged(scored), features_of_the_date(scored)
    champions = {kind: load_champion(scored, kind) for kind in MODEL_KINDS}

    def own(kind: str, frame: pd.DataFrame) -> np.ndarray:
        return champions[kind].model.predict_proba(_model_input(frame, champions[kind].features))[
            :, 1
        ]

    for kind in ("purchase_propensity", "engagement_propensity"):
        np.testing.assert_array_equal(rows[kind], own(kind, features))
    active = (features.orders_365d > 0).to_numpy()
    np.testing.assert_array_equal(rows.churn_risk[active], own("churn_risk", features[active]))
    value = champions["customer_value"]
    np.testing.assert_array_equal(
        rows.predicted_clv,
        np.clip(value.model.predict(_model_input(features, value.features)), 0, None),
    )
    personas = champions["personas"]
    labels = personas.model.predict(_model_input(features, personas.features))
    assert list(rows.segment) == [personas.persona_names[int(label)] for label in labels]


def test_the_encoding_by_distinct_values_is_the_column_transformers(scored: Settings):
    champion = load_champion(scored, "purchase_propensity")
    preparation = champion.model[0]
    frame = _model_input(features_of_the_date(scored), champion.features).copy()
    (categorical,) = [cols for _, step, cols in preparation.transformers_ if step != "drop"][:1]
    # A category training never saw, and missing values, in every categorical column.
    for column in categorical:
        frame.loc[frame.index[:3], column] = "never-seen-in-training"
        frame.loc[frame.index[3:6], column] = None
    expected = preparation.transform(frame)
    assert np.isnan(expected[:6, : len(categorical)]).all()
    np.testing.assert_array_equal(_prepare(preparation, frame), expected)


def test_scoring_in_small_chunks_gives_the_same_rows(scored: Settings):
    before = staged(scored)
    quarter = -(-len(before) // 4)  # four chunks
    small = dataclasses.replace(
        scored, publishing=dataclasses.replace(scored.publishing, scoring_chunk_rows=quarter)
    )
    score_customers(small, AS_OF)
    pd.testing.assert_frame_equal(staged(scored), before)


def test_publishing_twice_gives_identical_rows_and_exports(scored: Settings):
    first = publish_segments(scored, AS_OF, run_id="first")  # the real segments gate runs
    folder = Path(first["exports_dir"])
    files = {p.name: p.read_bytes() for p in folder.glob("*.csv")}
    with connect(scored, read_only=True) as con:
        rows = con.execute(
            "SELECT * FROM published.customer_segments WHERE as_of_date = ? ORDER BY ALL", [AS_OF]
        ).fetchall()
    assert len(rows) == first["rows"] and files

    score_customers(scored, AS_OF)
    second = publish_segments(scored, AS_OF, run_id="second")
    assert {p.name: p.read_bytes() for p in folder.glob("*.csv")} == files
    with connect(scored, read_only=True) as con:
        assert (
            con.execute(
                "SELECT * FROM published.customer_segments WHERE as_of_date = ? ORDER BY ALL",
                [AS_OF],
            ).fetchall()
            == rows
        )
    assert second["audiences"] == first["audiences"]

    report = write_segment_report(scored, AS_OF)
    text = report.read_text()
    assert report.parent == scored.reports_dir / "segments"
    assert "Segment profiles" in text and "Audiences" in text
    assert not any(customer_id in text for customer_id, *_ in rows[:200])
    assert "@" not in text
    client = mlflow_client(scored)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["customers"] == len(rows)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "segment_report")] == [
        f"segment_report/{AS_OF}.html"
    ]
    summary = segments_summary(scored)
    assert f"segments as of {AS_OF}: {len(rows):,} customers (run second" in summary


def test_no_champion_means_train_first(settings: Settings):
    with pytest.raises(NoChampion, match="segflow_personas has no champion.*train"):
        score_customers(settings, AS_OF)


def test_a_model_not_applicable_scores_nobody_and_the_rest_is_published(
    trained_settings: Settings, tmp_path: Path
):
    """Engagement marked not applicable (no e-mail events): its columns are null, the other
    models score as usual, and the publication, its report and summary say why."""
    from ml.models.registry import mark_not_applicable

    settings = copy_of_trained(trained_settings, tmp_path)
    reason = "0 of 902 customers clicked an e-mail in the 30 days after 2026-05-31"
    mark_not_applicable(settings, "engagement_propensity", reason, AS_OF.isoformat())

    score_customers(settings, AS_OF)

    rows = staged(settings)
    empty = ["engagement_propensity", "engagement_propensity_band"]
    assert rows[[*empty, "engagement_propensity_model_version"]].isna().all().all()
    assert rows[["purchase_propensity", "predicted_clv", "segment"]].notna().all().all()
    assert rows.purchase_propensity_model_version.notna().all()
    with connect(settings, read_only=True) as con:
        assert con.execute(
            "SELECT model_kind, reason, training_as_of FROM staging.not_applicable_models"
        ).fetchall() == [("engagement_propensity", reason, AS_OF)]

    published = publish_segments(settings, AS_OF, run_id="minimal", gate_passed=True)
    assert published["not_applicable"] == {"engagement_propensity": reason}
    assert "Not applicable" in write_segment_report(settings, AS_OF).read_text()
    summary = segments_summary(settings)
    assert "not applicable: engagement_propensity" in summary
    assert " nan" not in summary
