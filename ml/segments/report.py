"""What a publication holds, for people: an HTML report per date and a terminal summary.

The report (`<reports dir>/segments/<as_of_date>.html`, self-contained) shows segment sizes,
each segment's profile (scores and the features behind them), score distributions and
audience counts. It is logged to MLflow too (experiment `segflow-publishing`, one run per
report) with its headline numbers as metrics. It holds aggregates only: no customer id or
address leaves the warehouse this way.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
from pathlib import Path

from ml.config import Settings
from ml.models import catalogue
from ml.models.registry import experiment_id, mlflow_client
from ml.segments.audiences import audience_counts
from ml.warehouse.connection import connect, table_exists

log = logging.getLogger(__name__)

EXPERIMENT = "segflow-publishing"
HISTOGRAM_BINS = 10
PROFILE_COLUMNS = {
    "customers": "count(*)",
    "share": "count(*) / sum(count(*)) OVER ()",
    "e-mailable": "avg(s.is_emailable::INTEGER)",
    "purchase propensity": "avg(s.purchase_propensity)",
    "churn risk": "avg(s.churn_risk)",
    "engagement": "avg(s.engagement_propensity)",
    "predicted CLV": "avg(s.predicted_clv)",
    "recency (days)": "median(f.recency_days)",
    "orders": "avg(f.frequency)",
    "revenue": "avg(f.monetary)",
    "open rate 90d": "avg(f.email_open_rate_90d)",
    "web sessions 30d": "avg(f.web_sessions_30d)",
    "top RFM segment": "mode(s.rfm_segment)",
}
PERCENT_COLUMNS = ("share", "e-mailable", "open rate 90d")


def _newest_publication(con, as_of: dt.date | None) -> dt.date | None:
    if not table_exists(con, "published", "customer_segments"):
        return None
    if as_of is not None:
        found = con.execute(
            "SELECT count(*) FROM published.customer_segments WHERE as_of_date = ?", [as_of]
        ).fetchone()[0]
        return as_of if found else None
    return con.execute("SELECT max(as_of_date) FROM published.customer_segments").fetchone()[0]


def _report_data(settings: Settings, as_of: dt.date) -> dict:
    """Every number the report and the summary show, for one published date."""
    from ml.segments.score import not_applicable_on

    with connect(settings, read_only=True) as con:
        if _newest_publication(con, as_of) is None:
            raise LookupError(f"nothing published for {as_of}: publish that date first")
        columns = ", ".join(f'{sql} AS "{name}"' for name, sql in PROFILE_COLUMNS.items())
        profiles = con.execute(
            f"""SELECT s.segment, {columns}
                FROM published.customer_segments s
                LEFT JOIN marts.customer_features f
                    ON f.as_of_date = s.as_of_date AND f.customer_id = s.customer_id
                WHERE s.as_of_date = ? GROUP BY s.segment ORDER BY count(*) DESC, s.segment""",
            [as_of],
        ).df()
        not_applicable = not_applicable_on(con, "published", as_of)
        histograms = {}
        for model in (m for m in catalogue.PROBABILITIES if m.kind not in not_applicable):
            score = model.output_column
            counts = dict(
                con.execute(
                    f"""SELECT least(floor({score} * {HISTOGRAM_BINS}), {HISTOGRAM_BINS - 1})::INTEGER,
                               count(*)
                        FROM published.customer_segments
                        WHERE as_of_date = ? AND {score} IS NOT NULL GROUP BY 1""",
                    [as_of],
                ).fetchall()
            )
            histograms[model.kind] = [counts.get(i, 0) for i in range(HISTOGRAM_BINS)]
        clv = con.execute(
            """SELECT quantile_cont(predicted_clv, [0.1, 0.25, 0.5, 0.75, 0.9, 0.99])
               FROM published.customer_segments WHERE as_of_date = ?""",
            [as_of],
        ).fetchone()[0]
        suppression = con.execute(
            """SELECT coalesce(suppression_reason, 'e-mailable'), count(*)
               FROM published.customer_segments WHERE as_of_date = ? GROUP BY 1 ORDER BY 2 DESC""",
            [as_of],
        ).fetchall()
        audiences = audience_counts(con, "published", as_of)
        publication = con.execute(
            """SELECT run_id, published_at, model_versions FROM published.publications
               WHERE as_of_date = ? ORDER BY published_at DESC LIMIT 1""",
            [as_of],
        ).fetchone()
    return {
        "as_of": as_of,
        "profiles": profiles,
        "histograms": histograms,
        "clv_quantiles": clv,
        "suppression": suppression,
        "audiences": audiences,
        "run_id": publication[0],
        "published_at": publication[1],
        "model_versions": json.loads(publication[2]),
        "not_applicable": not_applicable,
    }


def _models(data: dict) -> str:
    """The model versions behind the scores, and the models that were not applicable."""
    versions = ", ".join(f"{k} v{v}" for k, v in sorted(data["model_versions"].items()))
    if data["not_applicable"]:
        versions += f"; not applicable: {', '.join(data['not_applicable'])}"
    return versions


def _score(value, spec: str) -> str:
    """A mean score for the terminal; '-' when nobody has one."""
    return "-" if value is None or value != value else format(value, spec)


def _cell(name: str, value) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    if name in PERCENT_COLUMNS:
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def _bars(counts: list[int], labels: list[str]) -> str:
    top = max(counts) or 1
    rows = "".join(
        f"<tr><td>{html.escape(label)}</td><td class='bar'><div style='width:{100 * n / top:.1f}%'>"
        f"</div></td><td class='n'>{n:,}</td></tr>"
        for label, n in zip(labels, counts, strict=True)
    )
    return f"<table class='bars'>{rows}</table>"


def _render_html(data: dict) -> str:
    profiles = data["profiles"]
    total = int(profiles["customers"].sum())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in profiles.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(c, row[c])}</td>" for c in profiles.columns) + "</tr>"
        for row in profiles.to_dict("records")
    )
    size_bars = _bars(profiles["customers"].astype(int).tolist(), profiles["segment"].tolist())
    bins = [
        f"{i / HISTOGRAM_BINS:.1f}-{(i + 1) / HISTOGRAM_BINS:.1f}" for i in range(HISTOGRAM_BINS)
    ]
    histograms = "".join(
        f"<div class='hist'><h3>{kind.replace('_', ' ')}</h3>{_bars(counts, bins)}</div>"
        for kind, counts in data["histograms"].items()
    )
    clv = (
        "not applicable"
        if data["clv_quantiles"] is None
        else " · ".join(
            f"p{q}: {v:,.2f}"
            for q, v in zip((10, 25, 50, 75, 90, 99), data["clv_quantiles"], strict=True)
        )
    )
    not_applicable = "".join(
        f"<li>{html.escape(kind)}: {html.escape(reason)}</li>"
        for kind, reason in data["not_applicable"].items()
    )
    reasons = _bars([n for _, n in data["suppression"]], [r for r, _ in data["suppression"]])
    audience_rows = (
        "".join(
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(description)}</td>"
            f"<td>{share:.0%}</td><td>{treatment:,}</td><td>{holdout:,}</td></tr>"
            for name, description, share, treatment, holdout in data["audiences"]
        )
        or "<tr><td colspan='5'>no audiences defined</td></tr>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>segflow segments {data["as_of"]}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5rem; }}
th, td {{ padding: .25rem .6rem; border-bottom: 1px solid #ddd; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
.bars td.bar {{ width: 22rem; }} .bars td.bar div {{ background: #4a7bd0; height: .9rem; }}
.hist {{ display: inline-block; vertical-align: top; margin-right: 2rem; }}
.meta {{ color: #666; }}
</style></head><body>
<h1>Customer segments as of {data["as_of"]}</h1>
<p class="meta">{total:,} customers · run {html.escape(str(data["run_id"]))} · published
{data["published_at"]:%Y-%m-%d %H:%M} UTC · models: {html.escape(_models(data))}</p>
{f"<p>Not applicable (their scores are empty):</p><ul>{not_applicable}</ul>" if not_applicable else ""}
<h2>Segment sizes</h2>{size_bars}
<h2>Segment profiles</h2>
<p class="meta">Means per segment (recency: median). Churn risk covers active customers only.</p>
<table><tr>{head}</tr>{body}</table>
<h2>Score distributions</h2>{histograms}
<p>Predicted customer value (revenue over the label horizon): {clv}</p>
<h2>Reachability</h2>{reasons}
<h2>Audiences</h2>
<table><tr><th>audience</th><th>description</th><th>holdout share</th><th>treatment</th>
<th>holdout</th></tr>{audience_rows}</table>
</body></html>
"""


def _log_to_mlflow(settings: Settings, data: dict, path: Path) -> str:
    """One run in the `segflow-publishing` experiment: the report and its headline numbers."""
    import mlflow

    client: mlflow.MlflowClient = mlflow_client(settings)
    profiles = data["profiles"]
    total = int(profiles["customers"].sum())
    run = client.create_run(
        experiment_id(settings, EXPERIMENT),
        run_name=f"segments {data['as_of']}",
        tags={"as_of_date": data["as_of"].isoformat(), "segflow_run_id": str(data["run_id"])},
    )
    run_id = run.info.run_id
    client.log_param(run_id, "as_of_date", data["as_of"].isoformat())
    for kind, version in sorted(data["model_versions"].items()):
        client.log_param(run_id, f"{kind}_model_version", version)
    metrics = {"customers": total}
    metrics |= {f"share.{row['segment']}": row["share"] for row in profiles.to_dict("records")}
    emailable = sum(n for reason, n in data["suppression"] if reason == "e-mailable")
    metrics["emailable_share"] = emailable / total
    for name, _, _, treatment, holdout in data["audiences"]:
        metrics[f"audience.{name}.treatment"] = treatment
        metrics[f"audience.{name}.holdout"] = holdout
    for name, value in metrics.items():
        client.log_metric(run_id, name, float(value))
    client.log_artifact(run_id, str(path), artifact_path="segment_report")
    client.set_terminated(run_id)
    return run_id


def write_segment_report(settings: Settings, as_of: dt.date) -> Path:
    """The HTML report of the publication of `as_of`, under the reports folder and in MLflow."""
    data = _report_data(settings, as_of)
    folder = settings.reports_dir / "segments"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{as_of.isoformat()}.html"
    partial = path.with_suffix(".html.partial")
    partial.write_text(_render_html(data), encoding="utf-8")
    partial.replace(path)
    mlflow_run = _log_to_mlflow(settings, data, path)
    log.info("segment report for %s: %s (MLflow run %s)", as_of, path, mlflow_run)
    return path


def segments_summary(settings: Settings, as_of: dt.date | None = None) -> str:
    """The published segments of `as_of` (default: the newest publication) as a table."""
    with connect(settings, read_only=True) as con:
        found = _newest_publication(con, as_of)
    if found is None:
        when = f"for {as_of}" if as_of else "yet"
        return f"segments: nothing published {when} (segflow score, then segflow publish)"
    data = _report_data(settings, found)
    profiles = data["profiles"]
    total = int(profiles["customers"].sum())
    lines = [
        f"segments as of {found}: {total:,} customers (run {data['run_id']}; {_models(data)})",
        f"  {'segment':<22}{'customers':>10}{'share':>7}{'e-mail':>8}{'buy':>6}{'churn':>7}"
        f"{'engage':>8}{'CLV':>9}",
    ]
    for row in profiles.to_dict("records"):
        lines.append(
            f"  {row['segment']:<22}{row['customers']:>10,}{row['share']:>7.1%}"
            f"{row['e-mailable']:>8.0%}{_score(row['purchase propensity'], '.2f'):>6}"
            f"{_score(row['churn risk'], '.2f'):>7}{_score(row['engagement'], '.2f'):>8}"
            f"{_score(row['predicted CLV'], ',.0f'):>9}"
        )
    if data["audiences"]:
        lines.append(f"  {'audience':<22}{'treatment':>10}{'holdout':>9}{'share':>7}")
        for name, _, share, treatment, holdout in data["audiences"]:
            lines.append(f"  {name:<22}{treatment:>10,}{holdout:>9,}{share:>7.0%}")
    return "\n".join(lines)
