"""What every segflow DAG shares: the warehouse pool and queue, retry policy and failure alerts, the
assets that show lineage in the UI, and the run's as-of date.

Kept free of heavy imports: DAG files import this at parse time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from airflow.sdk import Asset, Param

from ml.alerts import record_task_failure
from ml.contract import ENTITIES

WAREHOUSE_POOL = "warehouse"
"""Pool of size 1: DuckDB allows one writing process, so every task that writes the
warehouse, in any DAG, takes this pool's only slot."""
WAREHOUSE_QUEUE = "warehouse"
"""The Celery queue of those tasks. In the production stack (docker-compose.yml) one worker
serves it, so the warehouse file is written from one place however many workers train models.
Executors without queues (LocalExecutor, `airflow dags test`) ignore it."""
WAREHOUSE_TASK: dict[str, str] = {"pool": WAREHOUSE_POOL, "queue": WAREHOUSE_QUEUE}
"""The arguments of every task that opens the warehouse: `@task(**WAREHOUSE_TASK, ...)`."""

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "segflow",
    "retries": 2,
    "retry_delay": dt.timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(minutes=10),
    # Once a task has failed for good: a line in <reports dir>/failures.jsonl, a log line, and
    # the webhook and mail alerts that are configured (ml/alerts.py).
    "on_failure_callback": record_task_failure,
}

DAG_TAGS = {"segflow", "daily", "training", "monitoring", "triggers"}
"""The small set of tags DAGs may use."""


MODEL_KINDS = (
    "personas",
    "purchase_propensity",
    "churn_risk",
    "engagement_propensity",
    "customer_value",
)
"""The models train_models registers as `segflow_<kind>` (ml.registry holds the same tuple; a
test keeps them equal, so that parsing a DAG needs no MLflow import)."""


def _table(schema: str, name: str) -> Asset:
    return Asset(name=f"{schema}.{name}", uri=f"duckdb://segflow/{schema}/{name}")


RAW_TABLES = [_table("raw", entity.name) for entity in ENTITIES]
REVIEW_SENTIMENT = _table("derived", "review_sentiment")
VALIDATION_RESULTS = _table("quality", "validation_results")
FEATURE_MARTS = [_table("marts", "customer_features"), _table("marts", "training_labels")]
"""Built by dbt; updated in Airflow once the features gate has passed them."""
STAGED_SEGMENTS = [
    _table("staging", name)
    for name in ("customer_segments", "audience_members", "audience_definitions")
]
TRAINING_SET = Asset(name="training_set", uri="file://segflow/training")
REGISTERED_MODELS = [
    Asset(name=f"segflow_{kind}", uri=f"mlflow://segflow/models/segflow_{kind}")
    for kind in MODEL_KINDS
]
PUBLISHED_SEGMENTS = [
    _table("published", name)
    for name in ("customer_segments", "audience_members", "audience_definitions", "publications")
]
AUDIENCE_EXPORTS = Asset(name="audience_exports", uri="file://segflow/exports")
STAGED_TRIGGERS = [
    _table("staging", name)
    for name in ("trigger_members", "trigger_suppressions", "trigger_refreshes")
]
PUBLISHED_TRIGGERS = [
    _table("published", name) for name in ("trigger_members", "suppressions", "trigger_refreshes")
]
TRIGGER_EXPORTS = Asset(name="trigger_exports", uri="file://segflow/exports/triggers")
SEGMENT_REPORT = Asset(name="segment_report", uri="file://segflow/reports/segments")
MONITORING_TABLES = [
    _table("monitoring", name) for name in ("drift_metrics", "model_performance", "drift_alerts")
]
DRIFT_REPORT = Asset(name="drift_report", uri="file://segflow/reports/drift")
DRIFT_ALERT = Asset(name="drift_alert", uri="segflow://monitoring/drift_alert")
"""Emitted by the drift monitor when a check alerts; schedules train_models. Its event's extra
holds the monitored date, the models to retrain and the reasons (ml.monitoring)."""


def as_of_param(what: str) -> Param:
    """The `as_of_date` param every DAG takes: a date Airflow validates before the run starts
    (a run with `30.06.2026` is refused with a message naming the param)."""
    return Param(
        None,
        type=["null", "string"],
        format="date",
        description=f"{what} (YYYY-MM-DD); empty means the day of the logical date.",
    )


def drift_request(triggering_asset_events: Mapping[Any, Any] | None) -> dict[str, Any] | None:
    """What the newest drift alert that triggered this run asks for (`as_of_date`, `models`,
    `reasons`), or None when the run was not triggered by one."""
    events = list((triggering_asset_events or {}).get(DRIFT_ALERT, []))
    requests = [event.extra for event in events if (event.extra or {}).get("as_of_date")]
    return max(requests, key=lambda extra: extra["as_of_date"]) if requests else None


class AsOfDateError(ValueError):
    """The run's as-of date cannot be determined or is not a date."""


def resolve_as_of(
    params: Mapping[str, Any] | None,
    data_interval_start: dt.datetime | None,
    logical_date: dt.datetime | None,
) -> dt.date:
    """The date a run computes: the `as_of_date` param when given, else the day of the run's
    logical date (a scheduled run, a backfill and `airflow dags test segment_pipeline D` for
    day D all compute D), else the day its data interval starts."""
    requested = (params or {}).get("as_of_date")
    if requested:
        try:
            return dt.date.fromisoformat(str(requested))
        except ValueError:
            raise AsOfDateError(
                f"param as_of_date={requested!r} is not a date (YYYY-MM-DD)"
            ) from None
    for moment in (logical_date, data_interval_start):
        if moment is not None:
            return moment.date()
    raise AsOfDateError(
        "this run has neither an as_of_date param nor a logical date: "
        'trigger it with a logical date or conf {"as_of_date": "YYYY-MM-DD"}'
    )
