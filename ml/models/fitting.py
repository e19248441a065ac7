"""The estimators: tuned scikit-learn Pipelines and what one fit yields (`Trained`), before
ml/models/train.py logs and registers it.

Every model is one Pipeline (preprocessing and estimator), fitted on the training snapshots and
evaluated out of time on the validation snapshot (ml/models/training_sets.py, ml/models/evaluate.py).

- Propensities (purchase, churn, engagement): HistGradientBoostingClassifier. Class imbalance
  is handled by balancing the classes of every snapshot the booster learns from: all rows of
  the rarer class and as many random rows of the other. `class_weight="balanced"` does the
  same in expectation, but was measured three times slower per fit at the same validation
  ROC-AUC (demo scale), while undersampling also halves the rows to fit. Hyper-parameters come
  from a successive-halving random search under time-aware cross-validation: each fold trains
  on the snapshots before one training snapshot and validates on that snapshot, so no fold
  learns from its own future; the search runs on at most `SEGFLOW_TUNING_MAX_ROWS` sampled
  rows. The booster is then fitted on all training snapshots but the newest and calibrated
  (sigmoid) on the newest, untouched: balancing inflates the raw probabilities, calibration
  brings them back to the real rates, and calibrating on later data than the booster saw is
  how the model will be used.
- Customer value: HistGradientBoostingRegressor with a Poisson loss, suited to revenue that is
  zero for most customers and skewed for the rest (its predictions are never negative), tuned
  the same way and fitted on all training snapshots.
- Personas: ml/segments/personas.py.

Categorical features are ordinal-encoded (rare values grouped) and handled natively by the
boosters; numeric features pass through as floats with their missing values, which the boosters
route on their own. The same Pipeline accepts the training Parquet files and the frames scoring
reads from DuckDB (nullable integers, the new pandas string dtype, booleans).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import loguniform, randint, uniform
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.experimental import enable_halving_search_cv  # noqa: F401  (the import enables it)
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import HalvingRandomSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder, StandardScaler

from ml.config import Settings
from ml.contract import PERSONAL_COLUMNS
from ml.csv_exports import write_frame_csv
from ml.models import catalogue, evaluate
from ml.models.sampling import sample_rows
from ml.models.training_sets import CUSTOMER_KEY, LABEL_COLUMNS, TrainingSet
from ml.monitoring import drift
from ml.segments import personas

RANDOM_STATE = 7
NOT_FEATURES = {
    CUSTOMER_KEY,
    *PERSONAL_COLUMNS,
    "as_of_date",
    "snapshot_date",
    "rfm_code",
    *LABEL_COLUMNS,
}
"""The customer's pseudonym and personal columns (a training set holds none of the latter, this
is a second guard) are no features, and so never in a model, its signature or input example;
rfm_code repeats r_score, f_score and m_score as text."""
CATEGORICAL = (
    "rfm_segment",
    "preferred_device",
    "favourite_category",
    "country_code",
    "age_band",
    "acquisition_channel",
)
MAX_CATEGORIES = 30
MAX_ITER = 100
HALVING_FACTOR = 3
IMPORTANCE_ROWS = 2000
DRIFT_REFERENCE_ROWS = 200_000
"""The drift reference profiles a sample of this many customers (quantiles within a few
tenths of a percent)."""
SEARCH_SPACE = {
    "learning_rate": loguniform(0.07, 0.3),
    "max_leaf_nodes": randint(8, 48),
    "min_samples_leaf": randint(20, 200),
    "l2_regularization": loguniform(1e-3, 10.0),
    "max_features": uniform(0.5, 0.5),
}


@dataclass
class Trained:
    """What one training produced, before it is logged."""

    model: Any
    features: list[str]
    metrics: dict[str, float]
    baseline: dict[str, float]
    params: dict[str, Any]
    rows: dict[str, int]
    persona_names: dict[int, str] | None = None
    persona_descriptions: dict[int, str] | None = None


def model_features(frame: pd.DataFrame) -> list[str]:
    """The customer_features columns the supervised models read, in the frame's order; a column
    without any value in the training rows (an optional source the shop does not deliver) is
    left out: it carries nothing to learn, and the boosters cannot bin it."""
    return [
        column
        for column in frame.columns
        if column not in NOT_FEATURES and frame[column].notna().any()
    ]


def preprocessing(features: list[str]) -> ColumnTransformer:
    """Categorical columns first (the boosters are told their positions), then numeric ones."""
    categorical = [column for column in features if column in CATEGORICAL]
    numeric = [column for column in features if column not in CATEGORICAL]
    return ColumnTransformer(
        [
            (
                "categorical",
                OrdinalEncoder(
                    handle_unknown="use_encoded_value",
                    unknown_value=np.nan,
                    max_categories=MAX_CATEGORIES,
                ),
                categorical,
            ),
            # An identity that turns nullable integers, booleans and decimals into floats and
            # keeps missing values missing (a plain "passthrough" would hand pd.NA on).
            ("numeric", StandardScaler(with_mean=False, with_std=False), numeric),
        ]
    )


def _encoded_names(features: list[str]) -> list[str]:
    """The preprocessing's output columns: the raw names, categorical ones first."""
    return [f for f in features if f in CATEGORICAL] + [f for f in features if f not in CATEGORICAL]


def time_splits(dates: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Expanding-window folds: train on the snapshots before each later one, validate on it."""
    snapshots = sorted(set(dates))
    return [
        (np.flatnonzero(dates < snapshot), np.flatnonzero(dates == snapshot))
        for snapshot in snapshots[1:]
    ]


def _search(
    estimator: Any,
    x: np.ndarray,
    y: np.ndarray,
    dates: np.ndarray,
    scoring: str,
    settings: Settings,
) -> tuple[HalvingRandomSearchCV, dict[str, Any]]:
    """Successive halving over random candidates: all of them on a third of the rows, the best
    third on all of them (and so on), each scored by the time-aware folds. Returns the search
    and the parameters worth logging."""
    rows = sample_rows(len(y), settings.models.tuning_max_rows)
    candidates = settings.models.tuning_iterations
    rounds = max(1, int(np.ceil(np.log(candidates) / np.log(HALVING_FACTOR))))
    search = HalvingRandomSearchCV(
        estimator,
        SEARCH_SPACE,
        n_candidates=candidates,
        factor=HALVING_FACTOR,
        min_resources=max(len(rows) // HALVING_FACTOR ** (rounds - 1), 1),
        scoring=scoring,
        cv=time_splits(dates[rows]),
        refit=False,
        random_state=RANDOM_STATE,
        n_jobs=1,  # one process, one thread: see ml/models/train.py
    )
    search.fit(x[rows], y[rows])
    best = {
        name: round(float(value), 6) if isinstance(value, float) else int(value)
        for name, value in search.best_params_.items()
    }
    return search, {
        **{f"hgb_{name}": value for name, value in best.items()},
        "tuning_rows": len(rows),
        "tuning_candidates": candidates,
        "tuning_rows_per_round": ",".join(str(n) for n in search.n_resources_),
        "cv_folds": len(search.cv),
        f"cv_best_{scoring}": round(float(search.best_score_), 6),
    }


def balanced_rows(y: np.ndarray, dates: np.ndarray) -> np.ndarray:
    """Row positions with, per snapshot, every row of the rarer class and as many random rows
    of the other (a fixed draw)."""
    rng = np.random.default_rng(RANDOM_STATE)
    keep = []
    for snapshot in sorted(set(dates)):
        rows = np.flatnonzero(dates == snapshot)
        positive, negative = rows[y[rows] == 1], rows[y[rows] == 0]
        rare, common = sorted((positive, negative), key=len)
        keep += [rare, rng.choice(common, size=len(rare), replace=False)]
    return np.sort(np.concatenate(keep))


def _fit_classifier(kind: str, ts: TrainingSet, settings: Settings) -> tuple[Pipeline, dict]:
    rows = evaluate.target_rows(kind, ts.training)
    features = model_features(rows)
    prepare = preprocessing(features).fit(rows[features])
    x, y = prepare.transform(rows[features]), evaluate.target(kind, rows)
    dates = rows["snapshot_date"].to_numpy()
    newest = dates == max(dates)
    balanced = balanced_rows(y, dates)
    booster = HistGradientBoostingClassifier(
        categorical_features=list(range(sum(f in CATEGORICAL for f in features))),
        max_iter=MAX_ITER,
        early_stopping=True,
        random_state=RANDOM_STATE,
    )
    search, params = _search(
        booster, x[balanced], y[balanced], dates[balanced], "roc_auc", settings
    )
    learn = balanced[~newest[balanced]]
    booster = clone(booster).set_params(**search.best_params_).fit(x[learn], y[learn])
    calibrated = CalibratedClassifierCV(FrozenEstimator(booster), method="sigmoid")
    calibrated.fit(x[newest], y[newest])
    params = {
        **params,
        "hgb_iterations": int(booster.n_iter_),
        "class_balance": "undersampled per snapshot",
        "calibration": "sigmoid, on the newest training snapshot",
        "booster_rows": len(learn),
        "calibration_rows": int(newest.sum()),
    }
    return Pipeline([("prepare", prepare), ("classifier", calibrated)]), params


def _fit_regressor(ts: TrainingSet, settings: Settings) -> tuple[Pipeline, dict]:
    rows = ts.training
    features = model_features(rows)
    prepare = preprocessing(features).fit(rows[features])
    x, y = prepare.transform(rows[features]), evaluate.target("customer_value", rows)
    booster = HistGradientBoostingRegressor(
        loss="poisson",
        categorical_features=list(range(sum(f in CATEGORICAL for f in features))),
        max_iter=MAX_ITER,
        early_stopping=True,
        random_state=RANDOM_STATE,
    )
    scoring = "neg_mean_poisson_deviance"
    search, params = _search(booster, x, y, rows["snapshot_date"].to_numpy(), scoring, settings)
    booster = clone(booster).set_params(**search.best_params_).fit(x, y)
    params = {**params, "hgb_iterations": int(booster.n_iter_), "loss": "poisson"}
    return Pipeline([("prepare", prepare), ("regressor", booster)]), params


def train_supervised(kind: str, ts: TrainingSet, settings: Settings, out: Path) -> Trained:
    probability = catalogue.model(kind).probability
    if probability:
        model, params = _fit_classifier(kind, ts, settings)
    else:
        model, params = _fit_regressor(ts, settings)
    features = list(model[0].feature_names_in_)
    validation = evaluate.target_rows(kind, ts.validation)
    y = evaluate.target(kind, validation)
    predicted = evaluate.predict(kind, model, validation, features)
    reference = evaluate.baseline_score(kind, validation, settings.label_horizon_days)
    title = kind.replace("_", " ")
    if not probability:
        metrics = evaluate.regression_metrics(y, predicted)
        baseline = evaluate.regression_metrics(y, reference)
        scoring = "neg_mean_poisson_deviance"
    else:
        metrics = evaluate.classification_metrics(y, predicted)
        baseline = evaluate.ranking_metrics(y, reference)
        scoring = "roc_auc"
        calibration = evaluate.calibration_table(y, predicted)
        write_frame_csv(calibration, out / "calibration_curve.csv")
        evaluate.calibration_chart(
            calibration,
            f"{title}: calibration on {ts.validation_date}",
            out / "calibration_curve.png",
        )
    lift = evaluate.lift_table(y, {"model": predicted, "baseline": reference})
    write_frame_csv(lift, out / "lift_table.csv")
    evaluate.lift_chart(
        lift, f"{title}: model vs baseline on {ts.validation_date}", out / "lift_chart.png"
    )

    # Shuffling an encoded column is shuffling the raw one (the preprocessing works column by
    # column), so the estimator is scored on the encoded sample: the same numbers, faster.
    sample = validation.iloc[sample_rows(len(validation), IMPORTANCE_ROWS)]
    importance = evaluate.permutation_importance_table(
        model[-1],
        model[0].transform(sample[features]),
        evaluate.target(kind, sample),
        _encoded_names(features),
        scoring,
    )
    write_frame_csv(importance, out / "permutation_importance.csv")
    evaluate.importance_chart(
        importance, f"{title}: permutation importance", out / "permutation_importance.png"
    )
    training_rows = evaluate.target_rows(kind, ts.training)
    return Trained(
        model=model,
        features=features,
        metrics=metrics,
        baseline=baseline,
        params=params,
        rows={"rows_training": len(training_rows), "rows_validation": len(validation)},
    )


def train_personas(ts: TrainingSet, settings: Settings, out: Path) -> Trained:
    fitted = personas.fit_personas(
        ts.training, settings.models.persona_min_share, settings.models.persona_max_count
    )
    model, validation = fitted.model, ts.validation
    space = personas.embed(model, validation)
    labels = model[-1].predict(space)
    sample = sample_rows(len(validation), personas.SILHOUETTE_SAMPLE)
    metrics = evaluate.clustering_metrics(space, labels, sample)
    segments = pd.factorize(validation["rfm_segment"].astype(str))[0]
    baseline = evaluate.clustering_metrics(space, segments, sample)

    # Stability: the same recipe retrained on the newest training snapshot alone, as a retrain
    # a month from now would be on mostly the same customers; both assign the validation rows.
    newest = ts.training[ts.training["snapshot_date"] == ts.training["snapshot_date"].max()]
    retrained = personas.persona_pipeline(model[-1].n_clusters).fit(
        newest[personas.PERSONA_FEATURES].iloc[sample_rows(len(newest), personas.FIT_ROWS)]
    )
    retrained_labels = retrained.predict(validation[personas.PERSONA_FEATURES])
    retrained_names = personas.name_personas(personas.profile(retrained, newest))
    names = np.array([fitted.names[label] for label in labels])
    metrics["stability_ari"] = evaluate.stability(labels, retrained_labels)
    metrics["stability_same_name"] = float(
        np.mean(names == np.array([retrained_names[label] for label in retrained_labels]))
    )
    metrics["persona_count"] = float(model[-1].n_clusters)
    shares = pd.Series(names).value_counts(normalize=True)
    metrics["smallest_share"] = float(shares.min())
    for name, share in shares.items():
        metrics[f"share_{name.lower().replace(' ', '_').replace('-', '_')}"] = float(share)

    table = personas.profile(model, validation)
    evaluate.persona_heatmap(table, fitted.names, out / "persona_profile.png")
    summary = table.assign(
        persona=[fitted.names[label] for label in table.index],
        description=[fitted.descriptions[label] for label in table.index],
    )
    write_frame_csv(summary.rename_axis("cluster").reset_index(), out / "personas.csv")
    write_frame_csv(
        pd.DataFrame(
            {
                "personas": list(fitted.silhouette_by_count),
                "silhouette": list(fitted.silhouette_by_count.values()),
                "smallest_share": list(fitted.min_share_by_count.values()),
            }
        ),
        out / "persona_count_search.csv",
    )
    return Trained(
        model=model,
        features=list(personas.PERSONA_FEATURES),
        metrics=metrics,
        baseline=baseline,
        params={
            "personas": int(model[-1].n_clusters),
            "persona_min_share": settings.models.persona_min_share,
            "persona_max_count": settings.models.persona_max_count,
            "fit_rows": min(len(ts.training), personas.FIT_ROWS),
            "silhouette_by_count": json.dumps(
                {k: round(v, 4) for k, v in fitted.silhouette_by_count.items()}
            ),
        },
        rows={"rows_training": len(ts.training), "rows_validation": len(validation)},
        persona_names=fitted.names,
        persona_descriptions=fitted.descriptions,
    )


def drift_reference(kind: str, trained: Trained, ts: TrainingSet) -> dict:
    """The profile drift is measured against (ml/monitoring/drift.py): the features of the customers as
    of the training date, and the new model's outputs on them, as scoring computes them."""
    rows = ts.drift_reference
    rows = rows.iloc[sample_rows(len(rows), DRIFT_REFERENCE_ROWS)]
    x = rows[trained.features]
    model = catalogue.model(kind)
    if not model.supervised:
        labels = trained.model.predict(x)
        output = pd.Series([trained.persona_names[int(label)] for label in labels])
    elif not model.probability:
        output = pd.Series(np.clip(trained.model.predict(x), 0, None))
    else:
        # Churn risk is scored for active customers only (ml/segments/score.py).
        scored = x[rows["orders_365d"] > 0] if model.active_only else x
        output = pd.Series(trained.model.predict_proba(scored)[:, 1])
    return drift.reference_profile(
        rows,
        trained.features,
        {model.output_column: output},
        f"customer_features as of {ts.manifest['as_of']} ({len(rows):,} customers)",
    )
