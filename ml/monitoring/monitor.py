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

The checks are ml/monitoring/checks.py's; this module runs them for a date, decides the alert,
and stores and reports the result.
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
from ml.errors import MonitoringError
from ml.models import catalogue
from ml.models.registry import experiment_id, mlflow_client
from ml.monitoring.checks import (
    LEVELS,
    published_versions,
    realized_performance,
    reference_drift,
    segment_mix_drift,
)
from ml.warehouse import tables
from ml.warehouse.connection import connect, table_exists

log = logging.getLogger(__name__)

EXPERIMENT = "segflow-monitoring"


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


def _worst(levels: list[str]) -> str:
    return max(levels, key=LEVELS.index, default="ok")


def _alert_reasons(
    drift_metrics: pd.DataFrame, performance: pd.DataFrame
) -> tuple[list[dict], list[str]]:
    """One reason per alerting statistic (a feature that drifted for several models is one
    reason naming them), and the models to retrain."""
    reasons: list[dict] = []
    models: set[str] = set()
    alerting = drift_metrics[drift_metrics["level"] == "alert"] if len(drift_metrics) else []
    if len(alerting):
        for (check, name, statistic), group in alerting.groupby(
            ["check_name", "name", "statistic"], sort=True
        ):
            kinds = sorted(k for k in group["model_kind"].dropna().unique())
            # A drifting RFM mix concerns every model: rfm_segment is an input of all of them.
            concerned = kinds or list(catalogue.MODEL_KINDS)
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
    return reasons, [kind for kind in catalogue.MODEL_KINDS if kind in models]


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
    tables.ensure(con, *tables.MONITORING)
    drift_rows = result.drift_metrics  # noqa: F841  (read by name in SQL)
    performance_rows = result.model_performance  # noqa: F841
    con.execute("BEGIN TRANSACTION")
    try:
        for table in tables.MONITORING:
            con.execute(f"DELETE FROM {table.qualified_name} WHERE as_of_date = ?", [result.as_of])
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


def _frame(rows: list[dict], table: tables.Table) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(table.column_names))


def monitor(settings: Settings, as_of: dt.date) -> MonitoringResult:
    """Every check for the published date `as_of`: stored, reported, and returned."""
    notes: list[str] = []
    with connect(settings, read_only=True) as con:
        if not table_exists(con, "published", "customer_segments"):
            raise MonitoringError("nothing is published yet: run segment_pipeline first")
        versions = published_versions(con, as_of)
        if not versions:
            raise MonitoringError(
                f"nothing is published for {as_of}: publish that date first (segment_pipeline)"
            )
        notes += [
            f"{kind}: not applicable on {as_of}, no score to check"
            for kind in catalogue.MODEL_KINDS
            if kind not in versions
        ]
        drift_rows = reference_drift(settings, con, as_of, versions, notes)
        drift_rows += segment_mix_drift(con, as_of, versions, settings.monitoring, notes)
        performance_rows = realized_performance(settings, con, as_of, notes)
    result = MonitoringResult(
        as_of=as_of,
        drift_metrics=_frame(drift_rows, tables.DRIFT_METRICS),
        model_performance=_frame(performance_rows, tables.MODEL_PERFORMANCE),
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
