"""What every segflow DAG shares: the start date and the dates a run can compute, the warehouse
pool and queue, retry policy and failure alerts, the assets that show lineage in the UI, and
the `as_of_date` param (the run's as-of date itself: ml/orchestration/as_of.py).

Kept free of heavy imports: DAG files import this at parse time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from airflow.sdk import Asset, Param
from airflow.sdk.exceptions import AirflowFailException

from ml.contract import ENTITIES
from ml.errors import (
    AsOfDateError,
    ConfigError,
    NoChampion,
    RunDidNotRun,
    TrainingSetError,
)
from ml.models import catalogue
from ml.monitoring.alerts import record_task_failure
from ml.warehouse import tables

WAREHOUSE_POOL = "warehouse"
"""Pool of size 1: DuckDB allows one writing process, so every task that writes the
warehouse, in any DAG, takes this pool's only slot."""
WAREHOUSE_QUEUE = "warehouse"
"""The Celery queue of those tasks. In the production stack (docker-compose.yml) one worker
serves it, so the warehouse file is written from one place however many workers train models.
Executors without queues (LocalExecutor, `airflow dags test`) ignore it."""
WAREHOUSE_TASK: dict[str, str] = {"pool": WAREHOUSE_POOL, "queue": WAREHOUSE_QUEUE}
"""The arguments of every task that opens the warehouse: `@task(**WAREHOUSE_TASK, ...)`."""

DAG_START_DATE = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
"""Every DAG's start_date, and so the earliest as-of date a run by logical date computes:
Airflow runs no task of a run whose logical date is before it, and `airflow dags test` still
reports success. Hence a date before any shop's history; catchup=False keeps the scheduler from
creating runs for the intervals since (it creates the latest one only)."""

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "segflow",
    "retries": 2,
    "retry_delay": dt.timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(minutes=10),
    # Once a task has failed for good: a line in <reports dir>/failures.jsonl, a log line, and
    # the webhook and mail alerts that are configured (ml/monitoring/alerts.py).
    "on_failure_callback": record_task_failure,
}

DAG_TAGS = {"segflow", "daily", "training", "monitoring", "triggers"}
"""The small set of tags DAGs may use."""


def _table(schema: str, name: str) -> Asset:
    return Asset(name=f"{schema}.{name}", uri=f"duckdb://segflow/{schema}/{name}")


def _defined(table: tables.Table) -> Asset:
    return _table(table.schema, table.name)


RAW_TABLES = [_table("raw", entity.name) for entity in ENTITIES]
REVIEW_SENTIMENT = _defined(tables.REVIEW_SENTIMENT)
VALIDATION_RESULTS = _defined(tables.VALIDATION_RESULTS)
FEATURE_MARTS = [_table("marts", "customer_features"), _table("marts", "training_labels")]
"""Built by dbt; updated in Airflow once the features gate has passed them."""
STAGED_SEGMENTS = [_defined(table) for table in tables.STAGED_SEGMENTS]
TRAINING_SET = Asset(name="training_set", uri="file://segflow/training")
REGISTERED_MODELS = [
    Asset(name=model.registered_name, uri=f"mlflow://segflow/models/{model.registered_name}")
    for model in catalogue.MODELS
]
PUBLISHED_SEGMENTS = [
    _defined(table) for table in (*tables.PUBLISHED_SEGMENTS, tables.PUBLICATIONS)
]
AUDIENCE_EXPORTS = Asset(name="audience_exports", uri="file://segflow/exports")
STAGED_TRIGGERS = [
    _defined(table)
    for table in (
        tables.STAGED_TRIGGER_MEMBERS,
        tables.STAGED_SUPPRESSIONS,
        tables.STAGED_REFRESHES,
    )
]
PUBLISHED_TRIGGERS = [
    _defined(table)
    for table in (
        tables.PUBLISHED_TRIGGER_MEMBERS,
        tables.PUBLISHED_SUPPRESSIONS,
        tables.PUBLISHED_REFRESHES,
    )
]
TRIGGER_EXPORTS = Asset(name="trigger_exports", uri="file://segflow/exports/triggers")
SEGMENT_REPORT = Asset(name="segment_report", uri="file://segflow/reports/segments")
MONITORING_TABLES = [_defined(table) for table in tables.MONITORING]
DRIFT_REPORT = Asset(name="drift_report", uri="file://segflow/reports/drift")
DRIFT_ALERT = Asset(name="drift_alert", uri="segflow://monitoring/drift_alert")
"""Emitted by the drift monitor when a check alerts; schedules train_models. Its event's extra
holds the monitored date, the models to retrain and the reasons (ml.monitoring.monitor)."""


def as_of_param(what: str) -> Param:
    """The `as_of_date` param every DAG takes: a date Airflow validates before the run starts
    (a run with `30.06.2026` is refused with a message naming the param)."""
    return Param(
        None,
        type=["null", "string"],
        format="date",
        description=f"{what} (YYYY-MM-DD); empty means the day of the logical date.",
    )


def runnable_as_of(text: str) -> dt.date:
    """The date `text` names, when a run by logical date computes it (`make run`, `make
    backfill`); AsOfDateError says why not."""
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise AsOfDateError(f"{text!r} is not a date (YYYY-MM-DD)") from None
    if day < DAG_START_DATE.date():
        raise AsOfDateError(
            f"{day} is before the DAGs' start date {DAG_START_DATE.date()}: Airflow would run "
            "none of their tasks for it"
        )
    return day


FINISHED_STATES = ("success", "skipped")


def check_run_ran(task_states: list[Mapping[str, str]], required_task: str) -> str:
    """A summary of a finished run's task states (the rows `airflow tasks states-for-dag-run
    -o json` prints), after checking that it ran: it has tasks, each succeeded or was skipped,
    and `required_task` succeeded. RunDidNotRun otherwise."""
    if not task_states:
        raise RunDidNotRun(
            "Airflow ran none of the run's tasks (is the logical date before the DAG's start date?)"
        )
    unfinished = sorted(
        f"{ti['task_id']} ({ti['state'] or 'not run'})"
        for ti in task_states
        if ti["state"] not in FINISHED_STATES
    )
    if unfinished:
        raise RunDidNotRun(f"tasks that did not finish: {', '.join(unfinished)}")
    if not any(ti["task_id"] == required_task and ti["state"] == "success" for ti in task_states):
        raise RunDidNotRun(f"the task {required_task} did not succeed")
    counts = Counter(ti["state"] for ti in task_states)
    return ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))


@contextlib.contextmanager
def fail_at_once_on_lasting_errors() -> Iterator[None]:
    """Around a task's work: an error that the next try would meet again fails the task for
    good (AirflowFailException skips the retries). Those are bad settings, data that cannot give
    a training set, and a cold start that leaves a model without champion: the same settings
    and data fail the same way, and each try of a training would register more versions."""
    try:
        yield
    except (ConfigError, NoChampion, TrainingSetError) as error:
        raise AirflowFailException(str(error)) from error
