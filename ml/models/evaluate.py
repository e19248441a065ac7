"""Evaluation on the out-of-time validation snapshot, against baselines that need no learning.

Each model's target, rows, baseline and gate metric are in the model catalogue
(ml/models/catalogue.py); this module computes them.

A supervised model is trained only when its training set has enough customers of each outcome in
every snapshot (`not_applicable_reason`); otherwise it is not applicable, and its scores are null.

Charts are written with matplotlib's Agg backend (no display needed) and show aggregates only:
no customer ids, no e-mail addresses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import (
    adjusted_rand_score,
    average_precision_score,
    brier_score_loss,
    davies_bouldin_score,
    log_loss,
    mean_absolute_error,
    roc_auc_score,
    root_mean_squared_error,
    silhouette_score,
)

from ml.models import catalogue
from ml.models.sampling import sample_rows
from ml.segments.personas import SILHOUETTE_SAMPLE, embed

TOP_SHARE = 0.1
MIN_OUTCOME_ROWS = 30
"""Customers of each outcome a supervised model needs in every snapshot of its training set
(`not_applicable_reason`)."""


def target_rows(kind: str, frame: pd.DataFrame) -> pd.DataFrame:
    """The rows a model learns from and is judged on (churn: active customers only)."""
    if catalogue.model(kind).active_only:
        return frame[frame["was_active"].astype(bool)]
    return frame


def target(kind: str, frame: pd.DataFrame) -> np.ndarray:
    model = catalogue.model(kind)
    values = pd.to_numeric(frame[model.target])
    return values.to_numpy(dtype=int if model.probability else float)


def not_applicable_reason(kind: str, frame: pd.DataFrame, horizon_days: int) -> str | None:
    """Why the data cannot support a model of `kind`, or None when it can; `frame` holds every
    snapshot of a training set (`snapshot_date`), the validation snapshot included.

    The rule: a supervised model needs at least MIN_OUTCOME_ROWS customers of each outcome in
    every snapshot (positives and negatives; for customer value, customers who spent and who did
    not). With fewer, a fold of the time-aware search or the calibration sees one outcome only,
    and the out-of-time metrics are undefined. A shop without e-mail events has no click, so no
    engagement model. Personas need no outcome: they always apply."""
    model = catalogue.model(kind)
    if not model.supervised:
        return None
    population, (did, did_not) = model.population, model.outcomes
    rows = target_rows(kind, frame)
    positive = pd.Series(target(kind, rows) > 0, index=rows.index)
    fewest = None
    for snapshot in sorted(frame["snapshot_date"].unique()):
        outcomes = positive[rows["snapshot_date"] == snapshot]
        for count, outcome in ((int(outcomes.sum()), did), (int((~outcomes).sum()), did_not)):
            if fewest is None or count < fewest[0]:
                fewest = (count, outcome, len(outcomes), snapshot)
    count, outcome, total, snapshot = fewest
    if count >= MIN_OUTCOME_ROWS:
        return None
    return (
        f"{count} of {total} {population} {outcome} in the {horizon_days} days after {snapshot}; "
        f"every snapshot needs at least {MIN_OUTCOME_ROWS} who {did} and {MIN_OUTCOME_ROWS} "
        f"who {did_not}"
    )


def _numeric(frame: pd.DataFrame, column: str, missing: float) -> np.ndarray:
    return pd.to_numeric(frame[column]).astype(float).fillna(missing).to_numpy()


def baseline_score(kind: str, frame: pd.DataFrame, horizon_days: int) -> np.ndarray:
    """A score that needs no learning; higher means more likely (or more revenue)."""
    if kind == "purchase_propensity":
        return _numeric(frame, "rfm_score", 0.0)
    if kind == "churn_risk":
        return _numeric(frame, "recency_days", float("inf"))
    if kind == "engagement_propensity":
        return _numeric(frame, "email_click_rate_90d", 0.0)
    if kind == "customer_value":
        return _numeric(frame, "spend_90d", 0.0) * horizon_days / 90
    raise ValueError(f"no score baseline for {kind}")


def predict(kind: str, model: Any, frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    if catalogue.model(kind).probability:
        return model.predict_proba(frame[features])[:, 1]
    return np.asarray(model.predict(frame[features]))


def top_share_mask(score: np.ndarray, share: float = TOP_SHARE) -> np.ndarray:
    """The top `share` of rows by score (ties broken by position, so exactly that many)."""
    count = max(1, int(round(len(score) * share)))
    order = np.argsort(-score, kind="stable")
    mask = np.zeros(len(score), dtype=bool)
    mask[order[:count]] = True
    return mask


def ranking_metrics(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    top = top_share_mask(score)
    base_rate = y.mean()
    return {
        "roc_auc": float(roc_auc_score(y, score)),
        "pr_auc": float(average_precision_score(y, score)),
        "lift_top_decile": float(y[top].mean() / base_rate) if base_rate else float("nan"),
        "capture_top_decile": float(y[top].sum() / y.sum()) if y.sum() else float("nan"),
    }


def classification_metrics(y: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    return {
        **ranking_metrics(y, probability),
        "brier": float(brier_score_loss(y, probability)),
        "log_loss": float(log_loss(y, probability, labels=[0, 1])),
        "positive_rate": float(y.mean()),
        "mean_probability": float(probability.mean()),
    }


def regression_metrics(y: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    top = top_share_mask(prediction)
    return {
        "mae": float(mean_absolute_error(y, prediction)),
        "rmse": float(root_mean_squared_error(y, prediction)),
        "spearman": float(spearmanr(y, prediction).statistic),
        "capture_top_decile": float(y[top].sum() / y.sum()) if y.sum() else float("nan"),
        "mean_actual": float(y.mean()),
        "mean_predicted": float(prediction.mean()),
    }


def clustering_metrics(space: np.ndarray, labels: np.ndarray, sample: np.ndarray) -> dict:
    """Silhouette on a fixed sample (it is quadratic in rows), Davies-Bouldin on all rows."""
    if len(np.unique(labels)) < 2 or len(np.unique(labels[sample])) < 2:
        return {"silhouette": float("nan"), "davies_bouldin": float("nan")}
    return {
        "silhouette": float(silhouette_score(space[sample], labels[sample])),
        "davies_bouldin": float(davies_bouldin_score(space, labels)),
    }


def stability(labels: np.ndarray, other: np.ndarray) -> float:
    """Adjusted Rand index of two assignments of the same customers (1 = identical)."""
    return float(adjusted_rand_score(labels, other))


# Charts -------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def calibration_table(y: np.ndarray, probability: np.ndarray) -> pd.DataFrame:
    """Per decile of the predictions: mean predicted probability and observed rate."""
    from sklearn.calibration import calibration_curve

    observed, predicted = calibration_curve(y, probability, n_bins=10, strategy="quantile")
    return pd.DataFrame({"mean_predicted": predicted, "observed_rate": observed})


def calibration_chart(table: pd.DataFrame, title: str, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    ax.plot(
        table["mean_predicted"],
        table["observed_rate"],
        marker="o",
        label="model (deciles of predictions)",
    )
    ax.set(xlabel="predicted probability", ylabel="observed rate", title=title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def lift_table(y: np.ndarray, scores: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per score and decile (1 = highest scores): share of the outcome captured, cumulative."""
    rows = []
    total = y.sum()
    for name, score in scores.items():
        order = np.argsort(-score, kind="stable")
        for decile, chunk in enumerate(np.array_split(order, 10), start=1):
            rows.append({"score": name, "decile": decile, "outcome": float(y[chunk].sum())})
    table = pd.DataFrame(rows)
    table["cumulative_capture"] = table.groupby("score")["outcome"].cumsum() / total
    table["lift"] = table["outcome"] / (total / 10)
    return table


def lift_chart(table: pd.DataFrame, title: str, path: Path) -> Path:
    plt = _pyplot()
    fig, (gains, lift) = plt.subplots(1, 2, figsize=(10, 4.2))
    for name, part in table.groupby("score", sort=False):
        gains.plot(
            [0, *part["decile"] * 10], [0, *part["cumulative_capture"]], marker="o", label=name
        )
        lift.bar(
            part["decile"] + (0.2 if name == "model" else -0.2), part["lift"], width=0.4, label=name
        )
    gains.plot([0, 100], [0, 1], linestyle="--", color="grey", label="random")
    gains.set(xlabel="% of customers, highest scores first", ylabel="share of outcome captured")
    gains.legend()
    lift.axhline(1, linestyle="--", color="grey")
    lift.set(xlabel="decile (1 = highest scores)", ylabel="lift", xticks=range(1, 11))
    lift.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def permutation_importance_table(
    model: Any, x: Any, y: np.ndarray, names: list[str], scoring: str
) -> pd.DataFrame:
    """How much the validation score drops when one feature's values are shuffled (`names`
    label the columns of `x`)."""
    from sklearn.inspection import permutation_importance

    result = permutation_importance(
        model, x, y, scoring=scoring, n_repeats=3, random_state=7, n_jobs=1
    )
    return (
        pd.DataFrame(
            {
                "feature": names,
                "importance_mean": result.importances_mean,
                "importance_std": result.importances_std,
            }
        )
        .sort_values("importance_mean", ascending=False)
        .reset_index(drop=True)
    )


def importance_chart(table: pd.DataFrame, title: str, path: Path, top: int = 20) -> Path:
    plt = _pyplot()
    shown = table.head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(shown) + 1.2))
    ax.barh(shown["feature"], shown["importance_mean"], xerr=shown["importance_std"])
    ax.set(xlabel="drop in validation score when shuffled", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def persona_heatmap(profile: pd.DataFrame, names: dict[int, str], path: Path) -> Path:
    """Personas x features: the mean standardised value (0 = population average)."""
    plt = _pyplot()
    values = profile.drop(columns=["share"])
    labels = [f"{names[label]} ({profile.loc[label, 'share']:.0%})" for label in values.index]
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * values.shape[1], 1.2 + 0.5 * len(values)))
    image = ax.imshow(values.to_numpy(), cmap="RdBu_r", vmin=-2, vmax=2, aspect="auto")
    ax.set_xticks(range(values.shape[1]), values.columns, rotation=45, ha="right")
    ax.set_yticks(range(len(values)), labels)
    for (row, column), value in np.ndenumerate(values.to_numpy()):
        ax.text(column, row, f"{value:.1f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="standard deviations from the average customer")
    ax.set_title("Persona profiles (validation snapshot)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def metrics_table(metrics: dict[str, float], baseline: dict[str, float]) -> str:
    """Markdown: each metric for the model and, where it applies, the baseline."""
    lines = ["| metric | model | baseline |", "|---|---|---|"]
    for name, value in metrics.items():
        other = baseline.get(name)
        lines.append(f"| {name} | {value:.4f} | {'' if other is None else f'{other:.4f}'} |")
    return "\n".join(lines)


def gate_scores(
    kind: str, frame: pd.DataFrame, challenger: Any, champion: Any | None, horizon_days: int
) -> dict[str, float]:
    """The gate metric of the challenger, the baseline and the champion (when given and able to
    read this frame) on one validation snapshot. `challenger` and `champion` carry `.model` and
    `.features` (ml.models.registry.ChampionModel). Personas also get the adjusted Rand index between
    the challenger's and the champion's assignments."""
    comparable = champion is not None and set(champion.features) <= set(frame.columns)
    if kind == "personas":
        space = embed(challenger.model, frame)
        sample = sample_rows(len(frame), SILHOUETTE_SAMPLE)
        labels = challenger.model[-1].predict(space)
        segments = pd.factorize(frame["rfm_segment"].astype(str))[0]
        scores = {
            "challenger": clustering_metrics(space, labels, sample)["silhouette"],
            "baseline": clustering_metrics(space, segments, sample)["silhouette"],
        }
        if comparable:
            theirs = np.asarray(champion.model.predict(frame[champion.features]))
            scores["champion"] = clustering_metrics(space, theirs, sample)["silhouette"]
            scores["ari_vs_champion"] = stability(labels, theirs)
        return scores

    rows = target_rows(kind, frame)
    y = target(kind, rows)

    def metric(score: np.ndarray) -> float:
        if catalogue.model(kind).gate_metric == "spearman":
            return float(spearmanr(y, score).statistic)
        return float(roc_auc_score(y, score))

    scores = {
        "challenger": metric(predict(kind, challenger.model, rows, challenger.features)),
        "baseline": metric(baseline_score(kind, rows, horizon_days)),
    }
    if comparable:
        scores["champion"] = metric(predict(kind, champion.model, rows, champion.features))
    return scores
