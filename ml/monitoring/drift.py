"""Drift statistics against a model's training reference.

A reference profile summarises, per model input, the rows a model version was validated on (the
newest snapshot of its training set, see `reference_profile`), without keeping any row:

- numeric columns: the decile edges (the PSI bins, fixed on the reference), the share of rows in
  each bin and missing, and 1,001 quantiles that stand in for the reference's distribution in
  the Kolmogorov-Smirnov statistic (off by at most 0.001);
- categorical and boolean columns: the share of each category (the 50 most frequent; the rest
  and values never seen share one bin) and of missing values.

Each feature gets the population stability index (PSI) over those bins and, when numeric, the
two-sample KS statistic D, the largest distance between the two distribution functions.
Decisions are taken on the statistics, not on p-values: at tens of thousands of customers a
KS test calls a shift of a hundredth "significant", which is no reason to retrain.

The profile is JSON, logged as the MLflow artifact `drift_reference.json` of the run that
registered the version, so drift is measured against what that version learned from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

PSI_BINS = 10
KS_QUANTILES = 1001
MAX_CATEGORIES = 50
SHARE_FLOOR = 1e-4
"""Empty bins count as this share, so the PSI stays finite (a bin that empties or fills is
still a large term)."""
OTHER = "(other)"
MISSING = "(missing)"
PROFILE_FORMAT = 1
REFERENCE_ARTIFACT = "drift_reference.json"
"""Logged in the MLflow run that registered a model version."""


def is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _floats(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values).astype("float64").to_numpy(na_value=np.nan)


def _labels(values: pd.Series) -> pd.Series:
    """Categories as text (booleans as true/false), missing as None."""
    if pd.api.types.is_bool_dtype(values):
        return values.map({True: "true", False: "false"}).astype(object)
    return (
        values.astype(object)
        .where(values.notna(), None)
        .map(lambda value: None if value is None else str(value))
    )


def column_profile(values: pd.Series) -> dict[str, Any]:
    """The reference summary of one column (see the module's docstring)."""
    if is_numeric(values):
        numbers = _floats(values)
        present = numbers[~np.isnan(numbers)]
        edges = (
            np.unique(np.quantile(present, np.linspace(0, 1, PSI_BINS + 1)[1:-1]))
            if len(present)
            else np.array([])
        )
        return {
            "type": "numeric",
            "edges": edges.tolist(),
            "shares": _numeric_shares(numbers, edges).tolist(),
            # Values that occur (no interpolation between them), so the distribution function
            # read off them is within one step of the reference's, ties included.
            "quantiles": (
                np.quantile(
                    present, np.linspace(0, 1, KS_QUANTILES), method="inverted_cdf"
                ).tolist()
                if len(present)
                else []
            ),
        }
    labels = _labels(values)
    counts = labels.value_counts(dropna=True)
    kept = sorted(counts.index[:MAX_CATEGORIES].tolist())
    return {
        "type": "categorical",
        "categories": kept,
        "shares": _categorical_shares(labels, kept).tolist(),
    }


def _numeric_shares(numbers: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Shares of rows in the bins (-inf, e1], (e1, e2], ... (ek, inf), then missing."""
    missing = np.isnan(numbers)
    bins = np.searchsorted(edges, numbers[~missing], side="left")
    counts = np.bincount(bins, minlength=len(edges) + 1).astype(float)
    counts = np.append(counts, missing.sum())
    return counts / max(len(numbers), 1)


def _categorical_shares(labels: pd.Series, categories: list[str]) -> np.ndarray:
    """Shares of rows in each reference category, then the others, then missing."""
    total = max(len(labels), 1)
    counts = labels.value_counts(dropna=True)
    known = np.array([counts.get(category, 0) for category in categories], dtype=float)
    missing = float(labels.isna().sum())
    other = total - known.sum() - missing
    return np.append(known, [other, missing]) / total


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins."""
    ref = np.maximum(np.asarray(reference, dtype=float), SHARE_FLOOR)
    cur = np.maximum(np.asarray(current, dtype=float), SHARE_FLOOR)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def ks_statistic(reference_quantiles: np.ndarray, current: np.ndarray) -> float:
    """Largest distance between the current values' distribution function and the reference's
    (given by its quantiles at equal steps), over the non-missing values of both."""
    quantiles = np.asarray(reference_quantiles, dtype=float)
    values = np.sort(current[~np.isnan(current)])
    if not len(quantiles) or not len(values):
        return float("nan")
    points = np.union1d(quantiles, values)
    # Both distribution functions jump at these points: compare them just at and just before.
    distance = 0.0
    for side in ("right", "left"):
        ref_cdf = np.searchsorted(quantiles, points, side=side) / len(quantiles)
        cur_cdf = np.searchsorted(values, points, side=side) / len(values)
        distance = max(distance, float(np.max(np.abs(ref_cdf - cur_cdf))))
    return distance


@dataclass(frozen=True)
class ColumnDrift:
    psi: float
    ks: float | None
    """None for categorical columns."""
    current_missing_share: float
    reference_missing_share: float


def column_drift(profile: dict[str, Any], values: pd.Series) -> ColumnDrift:
    """PSI (and KS for numeric columns) of `values` against a column's reference profile."""
    reference = np.asarray(profile["shares"], dtype=float)
    if profile["type"] == "numeric":
        numbers = _floats(values)
        current = _numeric_shares(numbers, np.asarray(profile["edges"], dtype=float))
        ks = ks_statistic(np.asarray(profile["quantiles"]), numbers)
    else:
        current = _categorical_shares(_labels(values), profile["categories"])
        ks = None
    return ColumnDrift(
        psi=psi(reference, current),
        ks=ks,
        current_missing_share=float(current[-1]),
        reference_missing_share=float(reference[-1]),
    )


def reference_profile(
    rows: pd.DataFrame, features: list[str], scores: dict[str, pd.Series], description: str
) -> dict[str, Any]:
    """The drift reference of a model version: a profile of each input feature of `rows` and of
    each of the model's outputs on them (`scores`: output name -> values)."""
    return {
        "format": PROFILE_FORMAT,
        "description": description,
        "rows": len(rows),
        "features": {feature: column_profile(rows[feature]) for feature in features},
        "scores": {name: column_profile(values) for name, values in scores.items()},
    }
