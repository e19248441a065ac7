"""The drift monitor: after each publication, is what the champions see and say still what they
were trained for, and were their past predictions right?

For the published date D:

- feature drift: every input of each champion against the reference logged with the version
  that scored D (ml/monitoring/drift.py): PSI, and KS for numeric features;
- score drift: each published score (and the persona mix) against the same version's outputs
  on its reference;
- segment-mix drift: the share of each persona and RFM segment against the previous
  `SEGFLOW_SEGMENT_MIX_RUNS` published dates (personas only those scored by the same version);
- realized performance: once the label horizon after an earlier published date E = D - horizon
  has passed (labels of E are built by D's run), each propensity's ROC-AUC, top-decile lift
  and calibration on E's customers, and customer value's Spearman correlation, next to the
  version's validation numbers.

Each statistic gets a level, `ok`, `warn` or `alert`, from the thresholds in
`ml.config.MonitoringSettings`. Any `alert` raises the drift alert: the DAG emits the
`drift_alert` asset, which schedules train_models for the models concerned, and the reason
(which checks, which features, how much) is stored in `monitoring.drift_alerts`.

The results replace D's rows of `monitoring.drift_metrics`, `monitoring.model_performance` and
`monitoring.drift_alerts` in one transaction, and an HTML report goes to
`<reports dir>/drift/<D>.html` and to MLflow (experiment `segflow-monitoring`). The report holds
statistics only, never a customer.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from ml.config import MonitoringSettings, Settings
from ml.monitoring import drift
from ml.segments.score import OUTPUT_COLUMNS
from ml.warehouse.connection import connect, table_exists

log = logging.getLogger(__name__)

EXPERIMENT = "segflow-monitoring"
MIX_COLUMNS = {"segment": "personas", "rfm_segment": None}
"""Segment columns whose mix is watched, and the model whose version must match to compare."""
LEVELS = ("ok", "warn", "alert")
PROPENSITY_METRICS = ("roc_auc", "lift_top_decile", "brier", "mean_probability", "positive_rate")
"""Ranking, then calibration: the mean predicted probability against the observed rate."""
REALIZED_METRICS = {
    "purchase_propensity": PROPENSITY_METRICS,
    "churn_risk": PROPENSITY_METRICS,
    "engagement_propensity": PROPENSITY_METRICS,
    "customer_value": ("spearman", "mae", "mean_predicted", "mean_actual"),
}
"""What is computed on matured labels; the gate metric (ml.models.evaluate.GATE_METRIC) decides."""

DRIFT_METRICS_COLUMNS = """(
    as_of_date DATE NOT NULL,
    check_name VARCHAR NOT NULL,
    model_kind VARCHAR,
    model_version INTEGER,
    name VARCHAR NOT NULL,
    statistic VARCHAR NOT NULL,
    value DOUBLE,
    warn_at DOUBLE,
    alert_at DOUBLE,
    level VARCHAR NOT NULL,
    compared_with VARCHAR NOT NULL,
    rows BIGINT NOT NULL
)"""
MODEL_PERFORMANCE_COLUMNS = """(
    as_of_date DATE NOT NULL,
    scored_date DATE NOT NULL,
    model_kind VARCHAR NOT NULL,
    model_version INTEGER NOT NULL,
    customers BIGINT NOT NULL,
    metric VARCHAR NOT NULL,
    realized DOUBLE,
    validation DOUBLE,
    change DOUBLE,
    alert_at DOUBLE,
    level VARCHAR NOT NULL
)"""
DRIFT_ALERTS_COLUMNS = """(
    as_of_date DATE NOT NULL,
    raised BOOLEAN NOT NULL,
    models VARCHAR[] NOT NULL,
    reasons JSON NOT NULL,
    report VARCHAR NOT NULL
)"""
TABLES = {
    "drift_metrics": DRIFT_METRICS_COLUMNS,
    "model_performance": MODEL_PERFORMANCE_COLUMNS,
    "drift_alerts": DRIFT_ALERTS_COLUMNS,
}


class MonitoringError(RuntimeError):
    """The monitor cannot run for a date; the message says what to do."""


@dataclass
class MonitoringResult:
    as_of: dt.date
    drift_metrics: pd.DataFrame
    model_performance: pd.DataFrame
    reasons: list[dict[str, Any]]
    """One per alerting statistic: check, name, models, statistic, value, threshold."""
    models: list[str]
    """The model kinds the alert asks to retrain."""
    notes: list[str] = field(default_factory=list)
    """What could not be checked, and why."""
    report: Path | None = None

    @property
    def alert(self) -> bool:
        return bool(self.reasons)

    def summary(self) -> dict[str, Any]:
        """What the drift alert asset event carries (JSON)."""
        return {
            "as_of_date": self.as_of.isoformat(),
            "models": self.models,
            "reasons": self.reasons,
            "report": str(self.report) if self.report else None,
        }


def level(value: float | None, warn_at: float, alert_at: float) -> str:
    if value is None or np.isnan(value):
        return "ok"
    return "alert" if value >= alert_at else "warn" if value >= warn_at else "ok"


def _worst(levels: list[str]) -> str:
    return max(levels, key=LEVELS.index, default="ok")


def _published_versions(con: duckdb.DuckDBPyConnection, as_of: dt.date) -> dict[str, int]:
    """The version of each model that scored the published date (none for a model that was
    not applicable)."""
    from ml.models.registry import MODEL_KINDS

    row = con.execute(
        "SELECT "
        + ", ".join(f"max({kind}_model_version)" for kind in MODEL_KINDS)
        + " FROM published.customer_segments WHERE as_of_date = ?",
        [as_of],
    ).fetchone()
    return {kind: int(version) for kind, version in zip(MODEL_KINDS, row, strict=True) if version}


def _reference(settings: Settings, kind: str, version: int) -> dict | None:
    """The drift reference logged with a model version, or None for versions trained before
    segflow logged one."""
    import mlflow

    from ml.models.registry import mlflow_client, registered_name

    client = mlflow_client(settings)
    run_id = client.get_model_version(registered_name(kind), str(version)).run_id
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


def _reference_drift(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    as_of: dt.date,
    versions: dict[str, int],
    notes: list[str],
) -> list[dict]:
    """Feature and score drift of each champion against its reference."""
    from ml.models.registry import registered_name

    references = {}
    for kind, version in versions.items():
        reference = _reference(settings, kind, version)
        if reference is None:
            notes.append(
                f"{registered_name(kind)} v{version} has no {drift.REFERENCE_ARTIFACT} (trained "
                "before drift monitoring): retrain it (train_models) to monitor it"
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
        f"SELECT {', '.join(OUTPUT_COLUMNS.values())} FROM published.customer_segments "
        "WHERE as_of_date = ?",
        [as_of],
    ).df()
    rows: list[dict] = []
    for kind, reference in references.items():
        version = versions[kind]
        compared_with = f"{registered_name(kind)} v{version}: {reference['description']}"
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


def _segment_mix_drift(
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
    return con.execute(
        """SELECT s.customer_id, s.purchase_propensity, s.churn_risk, s.engagement_propensity,
                  s.predicted_clv, s.purchase_propensity_model_version,
                  s.churn_risk_model_version, s.engagement_propensity_model_version,
                  s.customer_value_model_version,
                  l.purchased, l.churned, l.clicked_email, l.was_active,
                  CAST(l.revenue_in_horizon AS DOUBLE) AS revenue_in_horizon
           FROM published.customer_segments s
           JOIN marts.training_labels l USING (customer_id, as_of_date)
           WHERE s.as_of_date = ?
           ORDER BY s.customer_id""",
        [scored_date],
    ).df()


def realized_metrics(kind: str, outcomes: pd.DataFrame) -> tuple[dict[str, float], int]:
    """The metrics of REALIZED_METRICS[kind] on matured outcomes, and the customers they cover
    (churn: active customers with a churn score)."""
    from ml.models import evaluate

    column = OUTPUT_COLUMNS[kind]
    rows = outcomes[outcomes[column].notna()]
    if kind == "churn_risk":
        rows = rows[rows["was_active"].astype(bool)]
    y = evaluate.target(kind, rows)
    score = rows[column].to_numpy(dtype=float)
    if kind == "customer_value":
        metrics = evaluate.regression_metrics(y, score)
    elif len(np.unique(y)) < 2:
        return {}, len(rows)
    else:
        metrics = evaluate.classification_metrics(y, score)
    return {name: metrics[name] for name in REALIZED_METRICS[kind]}, len(rows)


def _realized_performance(
    settings: Settings, con: duckdb.DuckDBPyConnection, as_of: dt.date, notes: list[str]
) -> list[dict]:
    from ml.models import evaluate
    from ml.models.registry import mlflow_client, registered_name

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
    for kind in REALIZED_METRICS:
        versions = outcomes[f"{kind}_model_version"].dropna()
        if versions.empty:
            notes.append(f"{kind} on {scored_date}: not applicable, no score to judge")
            continue
        version = int(versions.max())
        metrics, customers = realized_metrics(kind, outcomes)
        if not metrics:
            notes.append(f"{kind} on {scored_date}: one outcome only, no ranking metric")
            continue
        run_id = client.get_model_version(registered_name(kind), str(version)).run_id
        validation = client.get_run(run_id).data.metrics
        gate = evaluate.GATE_METRIC[kind]
        for metric, realized in metrics.items():
            expected = validation.get(metric)
            change = None if expected is None else realized - expected
            is_gate = metric == gate
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


def _alert_reasons(
    drift_metrics: pd.DataFrame, performance: pd.DataFrame
) -> tuple[list[dict], list[str]]:
    """One reason per alerting statistic (a feature that drifted for several models is one
    reason naming them), and the models to retrain."""
    from ml.models.registry import MODEL_KINDS

    reasons: list[dict] = []
    models: set[str] = set()
    alerting = drift_metrics[drift_metrics["level"] == "alert"] if len(drift_metrics) else []
    if len(alerting):
        for (check, name, statistic), group in alerting.groupby(
            ["check_name", "name", "statistic"], sort=True
        ):
            kinds = sorted(k for k in group["model_kind"].dropna().unique())
            # A drifting RFM mix concerns every model: rfm_segment is an input of all of them.
            concerned = kinds or list(MODEL_KINDS)
            models.update(concerned)
            reasons.append(
                {
                    "check": check,
                    "name": name,
                    "statistic": statistic,
                    "value": round(float(group["value"].max()), 4),
                    "threshold": float(group["alert_at"].iloc[0]),
                    "models": concerned,
                }
            )
    if len(performance):
        for row in performance[performance["level"] == "alert"].to_dict("records"):
            models.add(row["model_kind"])
            reasons.append(
                {
                    "check": "realized_performance",
                    "name": row["metric"],
                    "statistic": "drop",
                    "value": round(-float(row["change"]), 4),
                    "threshold": -float(row["alert_at"]),
                    "models": [row["model_kind"]],
                    "scored_date": row["scored_date"].isoformat(),
                }
            )
    reasons.sort(key=lambda reason: -reason["value"] / reason["threshold"])
    return reasons, [kind for kind in MODEL_KINDS if kind in models]


def describe(reason: dict) -> str:
    """One alert reason in words, e.g. `feature email_opens_30d: PSI 0.34 >= 0.25 (churn_risk, ...)`."""
    statistic = {"psi": "PSI", "ks": "KS", "drop": "drop"}[reason["statistic"]]
    where = (
        f"realized {reason['name']} of {reason['scored_date']}"
        if reason["check"] == "realized_performance"
        else f"{reason['check'].replace('_', ' ')} {reason['name']}"
    )
    return (
        f"{where}: {statistic} {reason['value']:.3f} >= {reason['threshold']:g} "
        f"({', '.join(reason['models'])})"
    )


def _store(con: duckdb.DuckDBPyConnection, result: MonitoringResult) -> None:
    """Replace the date's monitoring rows, all tables in one transaction."""
    con.execute("CREATE SCHEMA IF NOT EXISTS monitoring")
    for table, columns in TABLES.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS monitoring.{table} {columns}")
    drift_rows = result.drift_metrics  # noqa: F841  (read by name in SQL)
    performance_rows = result.model_performance  # noqa: F841
    con.execute("BEGIN TRANSACTION")
    try:
        for table in TABLES:
            con.execute(f"DELETE FROM monitoring.{table} WHERE as_of_date = ?", [result.as_of])
        if len(result.drift_metrics):
            con.execute("INSERT INTO monitoring.drift_metrics BY NAME SELECT * FROM drift_rows")
        if len(result.model_performance):
            con.execute(
                "INSERT INTO monitoring.model_performance BY NAME SELECT * FROM performance_rows"
            )
        con.execute(
            "INSERT INTO monitoring.drift_alerts VALUES (?, ?, ?, ?, ?)",
            [
                result.as_of,
                result.alert,
                result.models,
                json.dumps(result.reasons),
                str(result.report),
            ],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _frame(rows: list[dict], columns: str) -> pd.DataFrame:
    names = [line.strip().split()[0] for line in columns.strip("()\n").split(",\n")]
    return pd.DataFrame(rows, columns=names)


def monitor(settings: Settings, as_of: dt.date) -> MonitoringResult:
    """Every check for the published date `as_of`: stored, reported, and returned."""
    from ml.models.registry import MODEL_KINDS

    notes: list[str] = []
    with connect(settings, read_only=True) as con:
        if not table_exists(con, "published", "customer_segments"):
            raise MonitoringError("nothing is published yet: run segment_pipeline first")
        versions = _published_versions(con, as_of)
        if not versions:
            raise MonitoringError(
                f"nothing is published for {as_of}: publish that date first (segment_pipeline)"
            )
        notes += [
            f"{kind}: not applicable on {as_of}, no score to check"
            for kind in MODEL_KINDS
            if kind not in versions
        ]
        drift_rows = _reference_drift(settings, con, as_of, versions, notes)
        drift_rows += _segment_mix_drift(con, as_of, versions, settings.monitoring, notes)
        performance_rows = _realized_performance(settings, con, as_of, notes)
    result = MonitoringResult(
        as_of=as_of,
        drift_metrics=_frame(drift_rows, DRIFT_METRICS_COLUMNS),
        model_performance=_frame(performance_rows, MODEL_PERFORMANCE_COLUMNS),
        reasons=[],
        models=[],
        notes=notes,
    )
    result.reasons, result.models = _alert_reasons(result.drift_metrics, result.model_performance)
    result.report = _write_report(settings, result)
    with connect(settings) as con:
        _store(con, result)
    _log_to_mlflow(settings, result)
    if result.alert:
        log.warning(
            "drift alert for %s (retrain %s):\n  %s",
            as_of,
            ", ".join(result.models),
            "\n  ".join(map(describe, result.reasons)),
        )
    else:
        log.info("no drift alert for %s; report %s", as_of, result.report)
    for note in notes:
        log.info("not checked: %s", note)
    return result


LEVEL_COLOURS = {"ok": "#e6f4ea", "warn": "#fff4ce", "alert": "#fde0dc"}


def _table(frame: pd.DataFrame, columns: list[str]) -> str:
    if frame.empty:
        return "<p class='meta'>nothing to show</p>"
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in columns)

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "-"
        if isinstance(value, float):
            return f"{value:.4f}"
        return html.escape(str(value))

    body = "".join(
        f"<tr style='background:{LEVEL_COLOURS.get(row.get('level'), 'none')}'>"
        + "".join(f"<td>{cell(row[c])}</td>" for c in columns)
        + "</tr>"
        for row in frame.to_dict("records")
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _feature_table(drift_metrics: pd.DataFrame, check: str) -> pd.DataFrame:
    """One row per model and feature (or score): PSI and KS side by side, worst first."""
    rows = drift_metrics[drift_metrics["check_name"] == check]
    if rows.empty:
        return rows
    wide = rows.pivot_table(
        index=["name", "model_kind", "model_version"],
        columns="statistic",
        values="value",
        aggfunc="first",
    ).reset_index()
    wide["model_version"] = wide["model_version"].astype(int)
    levels = rows.groupby(["name", "model_kind"])["level"].agg(lambda x: _worst(list(x)))
    wide["level"] = [levels[(n, k)] for n, k in zip(wide["name"], wide["model_kind"], strict=True)]
    if "ks" not in wide:
        wide["ks"] = np.nan
    order = wide["level"].map(LEVELS.index) * 10 + wide["psi"].fillna(0)
    return wide.assign(order=order).sort_values("order", ascending=False)


def _render_html(result: MonitoringResult, thresholds: MonitoringSettings) -> str:
    metrics = result.drift_metrics
    if result.alert:
        headline = (
            "<p class='alert'><b>Drift alert</b>: retrain "
            f"{html.escape(', '.join(result.models))}</p><ul>"
            + "".join(f"<li>{html.escape(describe(r))}</li>" for r in result.reasons)
            + "</ul>"
        )
    else:
        headline = "<p class='ok'><b>No drift alert.</b></p>"
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in result.notes)
    mix = metrics[metrics["check_name"] == "segment_mix"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>segflow drift {result.as_of}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5rem; }}
th, td {{ padding: .25rem .6rem; border-bottom: 1px solid #ddd; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
.meta {{ color: #666; }} .alert {{ color: #a40000; }} .ok {{ color: #1e6b2e; }}
</style></head><body>
<h1>Drift and realized performance as of {result.as_of}</h1>
{headline}
<p class="meta">Levels: PSI warn at {thresholds.psi_warn:g}, alert at {thresholds.psi_alert:g};
KS D warn at {thresholds.ks_warn:g}, alert at {thresholds.ks_alert:g}; realized ROC-AUC
(Spearman for customer value) alert when {thresholds.realized_drop_alert:g} below validation.
Features and scores are compared with the reference logged with the model version that scored
the date.</p>
{"<h2>Not checked</h2><ul>" + notes + "</ul>" if notes else ""}
<h2>Realized performance</h2>
{_table(result.model_performance, ["model_kind", "model_version", "scored_date", "customers", "metric", "realized", "validation", "change", "level"])}
<h2>Score drift</h2>
{_table(_feature_table(metrics, "score"), ["name", "model_kind", "model_version", "psi", "ks", "level"])}
<h2>Segment mix</h2>
{_table(mix, ["name", "value", "compared_with", "level"])}
<h2>Feature drift</h2>
{_table(_feature_table(metrics, "feature"), ["name", "model_kind", "model_version", "psi", "ks", "level"])}
</body></html>
"""


def _write_report(settings: Settings, result: MonitoringResult) -> Path:
    folder = settings.reports_dir / "drift"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{result.as_of.isoformat()}.html"
    partial = path.with_suffix(".html.partial")
    partial.write_text(_render_html(result, settings.monitoring), encoding="utf-8")
    partial.replace(path)
    return path


def _log_to_mlflow(settings: Settings, result: MonitoringResult) -> str:
    """One run in the `segflow-monitoring` experiment: the report and the worst statistics."""
    from ml.models.registry import experiment_id, mlflow_client

    client = mlflow_client(settings)
    run = client.create_run(
        experiment_id(settings, EXPERIMENT),
        run_name=f"drift {result.as_of}",
        tags={"as_of_date": result.as_of.isoformat(), "drift_alert": str(result.alert).lower()},
    )
    run_id = run.info.run_id
    metrics = {"alerts": len(result.reasons)}
    frame = result.drift_metrics
    for (check, statistic), group in frame.groupby(["check_name", "statistic"]):
        metrics[f"max_{check}_{statistic}"] = float(group["value"].max())
    for row in result.model_performance.to_dict("records"):
        metrics[f"{row['model_kind']}.realized_{row['metric']}"] = float(row["realized"])
    for name, value in metrics.items():
        client.log_metric(run_id, name, float(value))
    if result.alert:
        client.log_text(run_id, "\n".join(map(describe, result.reasons)), "drift_alert.txt")
    client.log_artifact(run_id, str(result.report), artifact_path="drift_report")
    client.set_terminated(run_id)
    return run_id


def monitoring_summary(settings: Settings, as_of: dt.date | None = None) -> str:
    """The stored verdict of a date (default: the newest monitored), for the terminal."""
    with connect(settings, read_only=True) as con:
        if not table_exists(con, "monitoring", "drift_alerts"):
            return "drift monitor: no run yet"
        row = con.execute(
            """SELECT as_of_date, raised, models, reasons, report FROM monitoring.drift_alerts
               WHERE as_of_date = coalesce(?, (SELECT max(as_of_date) FROM monitoring.drift_alerts))""",
            [as_of],
        ).fetchone()
        if row is None:
            return f"drift monitor: no run for {as_of}"
        date, raised, models, reasons, report = row
        counts = dict(
            con.execute(
                """SELECT level, count(*) FROM monitoring.drift_metrics WHERE as_of_date = ?
                   GROUP BY level""",
                [date],
            ).fetchall()
        )
    verdict = f"ALERT, retrain {', '.join(models)}" if raised else "no alert"
    lines = [
        f"drift monitor as of {date}: {verdict} "
        f"({counts.get('alert', 0)} alert, {counts.get('warn', 0)} warn, "
        f"{counts.get('ok', 0)} ok statistics); report {report}"
    ]
    lines += [f"  {describe(reason)}" for reason in json.loads(reasons)]
    return "\n".join(lines)
