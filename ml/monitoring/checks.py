"""The checks of the drift monitor (ml/monitoring/monitor.py), each returning rows of
`monitoring.drift_metrics` or `monitoring.model_performance` with their levels: features and
scores against the reference logged with the version that scored the date, the segment mix
against the previous published dates, and realized performance once labels have matured.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pandas as pd

from ml.config import MonitoringSettings, Settings
from ml.models import catalogue
from ml.models.registry import mlflow_client
from ml.monitoring import drift
from ml.warehouse.connection import table_exists

MIX_COLUMNS = {catalogue.PERSONAS.output_column: catalogue.PERSONAS.kind, "rfm_segment": None}
"""Segment columns whose mix is watched, and the model whose version must match to compare."""
LEVELS = ("ok", "warn", "alert")
"""A statistic's levels, mildest first."""


def level(value: float | None, warn_at: float, alert_at: float) -> str:
    if value is None or np.isnan(value):
        return "ok"
    return "alert" if value >= alert_at else "warn" if value >= warn_at else "ok"


def published_versions(con: duckdb.DuckDBPyConnection, as_of: dt.date) -> dict[str, int]:
    """The version of each model that scored the published date (none for a model that was
    not applicable)."""
    row = con.execute(
        "SELECT "
        + ", ".join(f"max({model.version_column})" for model in catalogue.MODELS)
        + " FROM published.customer_segments WHERE as_of_date = ?",
        [as_of],
    ).fetchone()
    return {
        kind: int(version)
        for kind, version in zip(catalogue.MODEL_KINDS, row, strict=True)
        if version
    }


def _reference(settings: Settings, kind: str, version: int) -> dict | None:
    """The drift reference logged with a model version, or None for versions trained before
    segflow logged one."""
    import mlflow

    client = mlflow_client(settings)
    run_id = client.get_model_version(catalogue.model(kind).registered_name, str(version)).run_id
    names = {artifact.path for artifact in client.list_artifacts(run_id)}
    if drift.REFERENCE_ARTIFACT not in names:
        return None
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{drift.REFERENCE_ARTIFACT}")


def _rows(
    date: dt.date,
    check: str,
    kind: str | None,
    version: int | None,
    name: str,
    result: drift.ColumnDrift,
    thresholds: MonitoringSettings,
    compared_with: str,
    rows: int,
) -> list[dict]:
    measured = [("psi", result.psi, thresholds.psi_warn, thresholds.psi_alert)]
    if result.ks is not None:
        measured.append(("ks", result.ks, thresholds.ks_warn, thresholds.ks_alert))
    return [
        {
            "as_of_date": date,
            "check_name": check,
            "model_kind": kind,
            "model_version": version,
            "name": name,
            "statistic": statistic,
            "value": value,
            "warn_at": warn_at,
            "alert_at": alert_at,
            "level": level(value, warn_at, alert_at),
            "compared_with": compared_with,
            "rows": rows,
        }
        for statistic, value, warn_at, alert_at in measured
    ]


def reference_drift(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    as_of: dt.date,
    versions: dict[str, int],
    notes: list[str],
) -> list[dict]:
    """Feature and score drift of each champion against its reference."""
    references = {}
    for kind, version in versions.items():
        reference = _reference(settings, kind, version)
        if reference is None:
            notes.append(
                f"{catalogue.model(kind).registered_name} v{version} has no "
                f"{drift.REFERENCE_ARTIFACT} (trained before drift monitoring): retrain it "
                "(train_models) to monitor it"
            )
        else:
            references[kind] = reference
    if not references:
        return []
    features = sorted({name for ref in references.values() for name in ref["features"]})
    current = con.execute(
        f"SELECT {', '.join(features)} FROM marts.customer_features WHERE as_of_date = ?",
        [as_of],
    ).df()
    scores = con.execute(
        f"SELECT {', '.join(m.output_column for m in catalogue.MODELS)} "
        "FROM published.customer_segments WHERE as_of_date = ?",
        [as_of],
    ).df()
    rows: list[dict] = []
    for kind, reference in references.items():
        version = versions[kind]
        name = catalogue.model(kind).registered_name
        compared_with = f"{name} v{version}: {reference['description']}"
        for feature, profile in reference["features"].items():
            result = drift.column_drift(profile, current[feature])
            rows += _rows(
                as_of,
                "feature",
                kind,
                version,
                feature,
                result,
                settings.monitoring,
                compared_with,
                len(current),
            )
        for column, profile in reference["scores"].items():
            values = scores[column].dropna()
            result = drift.column_drift(profile, values)
            rows += _rows(
                as_of,
                "score",
                kind,
                version,
                column,
                result,
                settings.monitoring,
                compared_with,
                len(values),
            )
    return rows


def segment_mix_drift(
    con: duckdb.DuckDBPyConnection,
    as_of: dt.date,
    versions: dict[str, int],
    thresholds: MonitoringSettings,
    notes: list[str],
) -> list[dict]:
    """Each segment column's shares on the date against their mean over the previous runs."""
    rows: list[dict] = []
    customers = con.execute(
        "SELECT count(*) FROM published.customer_segments WHERE as_of_date = ?", [as_of]
    ).fetchone()[0]
    for column, model in MIX_COLUMNS.items():
        same_version = f"AND {model}_model_version = {versions[model]}" if model in versions else ""
        previous = [
            row[0]
            for row in con.execute(
                f"""SELECT DISTINCT as_of_date FROM published.customer_segments
                    WHERE as_of_date < ? {same_version}
                    ORDER BY as_of_date DESC LIMIT {thresholds.segment_mix_runs}""",
                [as_of],
            ).fetchall()
        ]
        if not previous:
            notes.append(f"{column} mix: no earlier published date to compare with")
            continue
        shares = con.execute(
            f"""SELECT as_of_date = ? AS is_current, coalesce({column}, '{drift.MISSING}') AS value,
                       count(*) / sum(count(*)) OVER (PARTITION BY as_of_date) AS share
                FROM published.customer_segments
                WHERE as_of_date = ? OR list_contains(?, as_of_date)
                GROUP BY as_of_date, value""",
            [as_of, as_of, previous],
        ).df()
        categories = sorted(set(shares["value"]))
        current = shares[shares["is_current"]].set_index("value")["share"]
        today = current.reindex(categories, fill_value=0.0)
        earlier = shares[~shares["is_current"]].groupby("value")["share"].sum() / len(previous)
        earlier = earlier.reindex(categories, fill_value=0.0)
        value = drift.psi(earlier.to_numpy(), today.to_numpy())
        span = f"{min(previous)} to {max(previous)}" if len(previous) > 1 else str(previous[0])
        rows.append(
            {
                "as_of_date": as_of,
                "check_name": "segment_mix",
                "model_kind": model,
                "model_version": versions.get(model) if model else None,
                "name": column,
                "statistic": "psi",
                "value": value,
                "warn_at": thresholds.psi_warn,
                "alert_at": thresholds.psi_alert,
                "level": level(value, thresholds.psi_warn, thresholds.psi_alert),
                "compared_with": (
                    f"mean shares of {len(previous)} previous published "
                    f"date{'s' if len(previous) > 1 else ''} ({span})"
                ),
                "rows": customers,
            }
        )
    return rows


def realized_outcomes(con: duckdb.DuckDBPyConnection, scored_date: dt.date) -> pd.DataFrame:
    """The published scores of `scored_date` next to what happened in the label horizon after
    it (marts.training_labels); empty when the labels are not there yet."""
    if not table_exists(con, "marts", "training_labels"):
        return pd.DataFrame()
    columns = [
        *(f"s.{m.output_column}" for m in catalogue.SCORES),
        *(f"s.{m.version_column}" for m in catalogue.SCORES),
        *(
            f"l.{m.target}" if m.probability else f"CAST(l.{m.target} AS DOUBLE) AS {m.target}"
            for m in catalogue.SCORES
        ),
    ]
    return con.execute(
        f"""SELECT s.customer_id, {", ".join(columns)}, l.was_active
           FROM published.customer_segments s
           JOIN marts.training_labels l USING (customer_id, as_of_date)
           WHERE s.as_of_date = ?
           ORDER BY s.customer_id""",
        [scored_date],
    ).df()


def realized_metrics(kind: str, outcomes: pd.DataFrame) -> tuple[dict[str, float], int]:
    """The model's realized metrics (ml.models.catalogue) on matured outcomes, and the
    customers they cover (churn: active customers with a churn score)."""
    from ml.models import evaluate

    model = catalogue.model(kind)
    rows = evaluate.target_rows(kind, outcomes[outcomes[model.output_column].notna()])
    y = evaluate.target(kind, rows)
    score = rows[model.output_column].to_numpy(dtype=float)
    if not model.probability:
        metrics = evaluate.regression_metrics(y, score)
    elif len(np.unique(y)) < 2:
        return {}, len(rows)
    else:
        metrics = evaluate.classification_metrics(y, score)
    return {name: metrics[name] for name in model.realized_metrics}, len(rows)


def realized_performance(
    settings: Settings, con: duckdb.DuckDBPyConnection, as_of: dt.date, notes: list[str]
) -> list[dict]:
    """Each model's realized metrics on the customers scored a label horizon ago, against its
    validation metrics; the gate metric's drop has a level."""
    scored_date = as_of - dt.timedelta(days=settings.label_horizon_days)
    outcomes = realized_outcomes(con, scored_date)
    if outcomes.empty:
        notes.append(
            f"realized performance: no published scores with matured labels for {scored_date} "
            f"(the date {settings.label_horizon_days} days before)"
        )
        return []
    client = mlflow_client(settings)
    drop_alert = settings.monitoring.realized_drop_alert
    rows = []
    for model in (model for model in catalogue.MODELS if model.realized_metrics):
        kind = model.kind
        versions = outcomes[model.version_column].dropna()
        if versions.empty:
            notes.append(f"{kind} on {scored_date}: not applicable, no score to judge")
            continue
        version = int(versions.max())
        metrics, customers = realized_metrics(kind, outcomes)
        if not metrics:
            notes.append(f"{kind} on {scored_date}: one outcome only, no ranking metric")
            continue
        run_id = client.get_model_version(model.registered_name, str(version)).run_id
        validation = client.get_run(run_id).data.metrics
        for metric, realized in metrics.items():
            expected = validation.get(metric)
            change = None if expected is None else realized - expected
            is_gate = metric == model.gate_metric
            rows.append(
                {
                    "as_of_date": as_of,
                    "scored_date": scored_date,
                    "model_kind": kind,
                    "model_version": version,
                    "customers": customers,
                    "metric": metric,
                    "realized": realized,
                    "validation": expected,
                    "change": change,
                    "alert_at": -drop_alert if is_gate else None,
                    "level": (
                        level(-change, drop_alert / 2, drop_alert)
                        if is_gate and change is not None
                        else "ok"
                    ),
                }
            )
    return rows
