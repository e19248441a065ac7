"""
### refresh_triggers

Trigger segments within minutes of new behaviour: recent buyers, cart and browse abandoners,
win-back openers, and immediate suppression on unsubscribe, complaint or bounce (the
`triggers:` of the audience file, ml/triggers/refresh.py).

Scheduled on the asset `landing_files`: its asset watcher (ml/orchestration/landing_watch.py,
run by Airflow's triggerer with the triggerer's settings) fires when new files have settled in
the landing zone, and each event starts a run.
No manual trigger and no polling schedule are involved; events that arrive during a run start
one more run after it.

0. **forget_requested**: erasure requests in `erasure_requests/` (the watcher sees them too)
   are honoured first, as the daily run does: the person is forgotten within minutes, before
   any refresh could export them.
1. **ingest**: the new landing files (partitions up to today) into `raw`, as the daily run
   loads them; its load time is the refresh's evaluation time.
2. **raw_gate**: the daily run's raw gate on those rows.
3. **evaluate**: the triggers on the events no published refresh has evaluated, and the new
   suppressions, into staging.
4. **triggers_gate**: Great Expectations on the staged members (with their consent as the
   warehouse knows it now) and suppressions.
5. **publish**: write-audit-publish of the delta export `exports/triggers/<refresh id>/`
   (`<trigger>.csv`, `suppressions.csv`, `manifest.json`) with `published.trigger_members`,
   `published.suppressions` and `published.trigger_refreshes`. Consent is checked once more:
   a newer daily publication or unsubscribe always wins.

Every task opens the warehouse, so all are in the `warehouse` pool (one slot) shared with
segment_pipeline and train_models, with a high priority: when another DAG holds the slot, a
refresh's next task takes it as soon as it is free.
"""

from __future__ import annotations

import datetime as dt

import ml  # noqa: F401  (first: it switches off telemetry before any library is imported)

# isort: split
from airflow.sdk import Asset, AssetWatcher, dag, task

from ml.config import load_settings
from ml.orchestration.dag_defaults import (
    DAG_START_DATE,
    DEFAULT_ARGS,
    PUBLISHED_TRIGGERS,
    RAW_TABLES,
    STAGED_TRIGGERS,
    TRIGGER_EXPORTS,
    VALIDATION_RESULTS,
    WAREHOUSE_TASK,
)
from ml.orchestration.landing_watch import LandingFilesTrigger

LANDING_FILES = Asset(
    name="landing_files",
    uri="file://segflow/landing",
    watchers=[AssetWatcher(name="landing_files_watcher", trigger=LandingFilesTrigger())],
)
REFRESH_TASK = {**WAREHOUSE_TASK, "priority_weight": 100, "weight_rule": "absolute"}
"""A refresh's tasks go before the daily and training DAGs' when they wait for the pool."""


@dag(
    dag_id="refresh_triggers",
    schedule=[LANDING_FILES],
    start_date=DAG_START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["segflow", "triggers"],
    doc_md=__doc__,
)
def refresh_triggers():
    @task(**REFRESH_TASK)
    def forget_requested() -> dict | None:
        """Forget the customers named in the landing folder's erasure requests."""
        from ml.privacy.erasure import forget_requested as forget_waiting_requests

        result = forget_waiting_requests(load_settings())
        return None if result is None else result.as_dict()

    @task(**REFRESH_TASK, outlets=RAW_TABLES)
    def ingest() -> str:
        """Load the new landing files into raw; returns the load time, the refresh's clock."""
        from ml.ingest.loader import ingest_landing

        now = dt.datetime.now(dt.UTC)
        report = ingest_landing(load_settings(), as_of=now.date(), loaded_at=now)
        return report.loaded_at.isoformat()

    @task(**REFRESH_TASK, retries=0, outlets=[VALIDATION_RESULTS])
    def raw_gate(loaded_at: str) -> None:
        """The raw gate on the rows no gate has judged yet. A bad file or stale orders do not
        stop a refresh (they stop the daily run): the good files' unsubscribes count now."""
        from ml.quality.gates import run_raw_gate

        moment = dt.datetime.fromisoformat(loaded_at)
        run_raw_gate(load_settings(), as_of=moment.date(), loaded_at=moment, daily=False)

    @task(**REFRESH_TASK, inlets=RAW_TABLES, outlets=STAGED_TRIGGERS)
    def evaluate(loaded_at: str) -> str:
        """Stage the triggers' new members and the new suppressions; returns the refresh id."""
        from ml.triggers.refresh import stage_refresh

        summary = stage_refresh(load_settings(), dt.datetime.fromisoformat(loaded_at))
        return summary["refresh_id"]

    @task(**REFRESH_TASK, retries=0, outlets=[VALIDATION_RESULTS])
    def triggers_gate(refresh_id: str) -> None:
        """Great Expectations on the staged refresh: a failure stops the publish."""
        from ml.quality.gates import run_triggers_gate

        run_triggers_gate(load_settings(), refresh_id)

    @task(**REFRESH_TASK, outlets=[*PUBLISHED_TRIGGERS, TRIGGER_EXPORTS])
    def publish(refresh_id: str, run_id=None) -> dict:
        """Publish the delta export and the memberships together."""
        from ml.triggers.exports import publish_refresh

        return publish_refresh(load_settings(), refresh_id, run_id)

    loaded_at = ingest()
    forget_requested() >> loaded_at
    refresh_id = evaluate(loaded_at)
    raw_gate(loaded_at) >> refresh_id
    triggers_gate(refresh_id) >> publish(refresh_id)


refresh_triggers()
