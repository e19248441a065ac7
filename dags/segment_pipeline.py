"""
### segment_pipeline

The daily run of segflow for one as-of date (the day of the run's logical date, or the
`as_of_date` param), which each task receives as its `as_of` argument, rendered when it runs:

0. **forget_requested**: the erasure requests waiting in the landing folder
   (`erasure_requests/*.csv`): those customers are forgotten everywhere before anything is
   loaded or published, and the request files are deleted (docs/operations.md).
1. **ingest**: landing files up to that date into the warehouse's `raw` schema; rows that
   break the data contract are kept in `quarantine.violations` with their reason.
2. **raw_gate**: the run's quarantine share, then Great Expectations suites on the new raw
   rows; an `error` expectation that fails stops the run (results in
   `quality.validation_results`, Data Docs under the reports folder).
3. **score_review_texts**: the review text signal for reviews not scored yet.
4. **features**: the dbt project through Cosmos, one task per model. Staging and intermediate
   models are ephemeral (inlined into the marts, shown as empty tasks); the marts
   `customer_features` (for the date) and `training_labels` (for the date minus the label
   horizon) run, then `dbt_project_test` runs every data and unit test of the project.
5. **features_gate**: the `customer_features` suite for the date.
6. **ensure_champions**: cold start. The models that have no `champion` yet are trained first
   (the same code as the `train_models` DAG), instead of failing; a model the data cannot
   support is marked not applicable (its scores are null) until the next scheduled training.
7. **score**: every customer of the date scored by the champions (loaded by alias), in chunks,
   into `staging.customer_segments`.
8. **segments_gate**: the `customer_segments` suite on the staged rows.
9. **publish**: write-audit-publish. The date's rows are swapped into
   `published.customer_segments` in one transaction, with the audiences' members and holdouts,
   and the exports for e-mail tools (`exports/<date>/<audience>.csv`, `manifest.json`) are moved
   into place. A failure leaves the last good publication as it was.
10. **segment_report**: an HTML report of the publication, also logged to MLflow.
11. **monitor**: feature, score and segment-mix drift against the champions' training
    references, and realized performance of the date one label horizon back
    (`monitoring.*` tables, an HTML report under the reports folder and in MLflow).
12. **drift_alert**: when a check alerts, emits the `drift_alert` asset with the reasons, which
    schedules train_models for the models concerned; skipped otherwise, and for backfill runs
    (a backfill records its alerts but retrains nothing).
13. **housekeeping**: retention (`ml/privacy/retention.py`, `SEGFLOW_RETENTION_*`): what is older
    than its limit as of the date goes (superseded raw versions, published and feature rows of
    old dates, quarantine, export folders, training sets no aliased model needs, reports);
    returns what was removed. Docs: docs/operations.md, "What is kept, and for how long".

Every task that opens the warehouse runs in the `warehouse` pool (one slot), shared with
train_models: DuckDB allows one writing process, and no reader beside it. Under Celery these
tasks go to the `warehouse` queue, which one worker serves. Re-running a date gives the same
tables and byte-identical exports.
"""

from __future__ import annotations

import datetime as dt

import ml  # noqa: F401  (first: it switches off telemetry before any library is imported)

# isort: split
from airflow.sdk import CronDataIntervalTimetable, dag, task

from ml.config import load_settings
from ml.orchestration import retraining
from ml.orchestration.as_of import AS_OF_DATE, as_of_macros, run_as_of
from ml.orchestration.dag_defaults import (
    AUDIENCE_EXPORTS,
    DAG_START_DATE,
    DEFAULT_ARGS,
    DRIFT_ALERT,
    DRIFT_REPORT,
    FEATURE_MARTS,
    MONITORING_TABLES,
    PUBLISHED_SEGMENTS,
    RAW_TABLES,
    REGISTERED_MODELS,
    REVIEW_SENTIMENT,
    SEGMENT_REPORT,
    STAGED_SEGMENTS,
    VALIDATION_RESULTS,
    WAREHOUSE_TASK,
    as_of_param,
    fail_at_once_on_lasting_errors,
)
from ml.orchestration.dbt_tasks import dbt_feature_tasks


@dag(
    dag_id="segment_pipeline",
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
    start_date=DAG_START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["segflow", "daily"],
    params={"as_of_date": as_of_param("Date to compute")},
    user_defined_macros=as_of_macros(run_as_of),
    doc_md=__doc__,
)
def segment_pipeline():
    @task(**WAREHOUSE_TASK)
    def forget_requested() -> dict | None:
        """Forget the customers named in the landing folder's erasure requests."""
        from ml.privacy.erasure import forget_requested as forget_waiting_requests

        result = forget_waiting_requests(load_settings())
        return None if result is None else result.as_dict()

    @task(**WAREHOUSE_TASK, outlets=RAW_TABLES)
    def ingest(as_of: str) -> str:
        """Load new landing files up to the as-of date into raw; quarantine bad rows.
        Returns the load time that marks this run's files, for the raw gate."""
        from ml.ingest.loader import ingest_landing

        report = ingest_landing(load_settings(), as_of=dt.date.fromisoformat(as_of))
        return report.loaded_at.isoformat()

    @task(**WAREHOUSE_TASK, retries=0, outlets=[VALIDATION_RESULTS])
    def raw_gate(loaded_at: str, as_of: str) -> None:
        """Quarantine share and the raw suites on this run's rows: a failure stops the run.
        No retries: the same data fails the same way."""
        from ml.quality.gates import run_raw_gate

        run_raw_gate(
            load_settings(),
            as_of=dt.date.fromisoformat(as_of),
            loaded_at=dt.datetime.fromisoformat(loaded_at),
        )

    # The marts' assets are updated here: dbt built them, this gate passed them.
    @task(**WAREHOUSE_TASK, retries=0, outlets=[VALIDATION_RESULTS, *FEATURE_MARTS])
    def features_gate(as_of: str) -> None:
        """The customer_features suite for the date: a failure stops the run."""
        from ml.quality.gates import run_features_gate

        run_features_gate(load_settings(), as_of=dt.date.fromisoformat(as_of))

    @task(**WAREHOUSE_TASK, outlets=[REVIEW_SENTIMENT])
    def score_review_texts(as_of: str) -> int:
        """Score review texts written up to the as-of date that have no score yet."""
        from ml.features.text_signal import score_review_sentiment

        return score_review_sentiment(load_settings(), as_of=dt.date.fromisoformat(as_of))

    @task(**WAREHOUSE_TASK, outlets=REGISTERED_MODELS)
    def ensure_champions(as_of: str) -> list[str]:
        """Cold start: train the models that have no champion yet (a model not applicable
        waits for the next scheduled training). Returns what was missing."""
        from ml.models.train import ensure_champions

        with fail_at_once_on_lasting_errors():
            return ensure_champions(load_settings(), as_of=dt.date.fromisoformat(as_of))

    @task(**WAREHOUSE_TASK, inlets=[*FEATURE_MARTS, *REGISTERED_MODELS], outlets=STAGED_SEGMENTS)
    def score(as_of: str) -> int:
        """Score the date's customers with the champions into staging.customer_segments."""
        from ml.segments.score import score_customers

        return score_customers(load_settings(), as_of=dt.date.fromisoformat(as_of))

    @task(**WAREHOUSE_TASK, retries=0, outlets=[VALIDATION_RESULTS])
    def segments_gate(as_of: str) -> None:
        """The customer_segments suite on the staged rows: a failure stops the publish."""
        from ml.quality.gates import run_segments_gate

        run_segments_gate(load_settings(), as_of=dt.date.fromisoformat(as_of))

    @task(**WAREHOUSE_TASK, outlets=[*PUBLISHED_SEGMENTS, AUDIENCE_EXPORTS])
    def publish(as_of: str, run_id=None) -> dict:
        """Swap the gated rows into published.customer_segments and move the exports in place."""
        from ml.segments.publish import publish_segments

        return publish_segments(
            load_settings(),
            as_of=dt.date.fromisoformat(as_of),
            run_id=run_id,
            gate_passed=True,  # segments_gate ran on these rows just before
        )

    # It only reads the warehouse, but DuckDB lets no other process read while one writes.
    @task(**WAREHOUSE_TASK, outlets=[SEGMENT_REPORT])
    def segment_report(as_of: str) -> str:
        """The run's segment report (HTML under the reports folder, and in MLflow)."""
        from ml.segments.report import write_segment_report

        return str(write_segment_report(load_settings(), as_of=dt.date.fromisoformat(as_of)))

    @task(**WAREHOUSE_TASK, outlets=[*MONITORING_TABLES, DRIFT_REPORT])
    def monitor(as_of: str) -> dict:
        """Drift and realized performance for the date; returns the alert (empty reasons: none)."""
        from ml.monitoring.monitor import monitor

        return monitor(load_settings(), as_of=dt.date.fromisoformat(as_of)).summary()

    @task(outlets=[DRIFT_ALERT])
    def drift_alert(verdict: dict, dag_run=None, outlet_events=None) -> dict:
        """Emit the drift alert (it schedules train_models), or skip when there is none."""
        return retraining.emit_drift_alert(verdict, dag_run.run_type, outlet_events[DRIFT_ALERT])

    @task(**WAREHOUSE_TASK)
    def housekeeping(as_of: str) -> dict:
        """Remove what is older than its retention limit as of the date; returns the report."""
        from ml.privacy.retention import apply_retention

        return apply_retention(load_settings(), today=dt.date.fromisoformat(as_of)).as_dict()

    loaded_at = ingest(AS_OF_DATE)
    forget_requested() >> loaded_at
    report = (
        raw_gate(loaded_at, AS_OF_DATE)
        >> score_review_texts(AS_OF_DATE)
        >> dbt_feature_tasks(AS_OF_DATE)
        >> features_gate(AS_OF_DATE)
        >> ensure_champions(AS_OF_DATE)
        >> score(AS_OF_DATE)
        >> segments_gate(AS_OF_DATE)
        >> publish(AS_OF_DATE)
        >> segment_report(AS_OF_DATE)
    )
    verdict = monitor(AS_OF_DATE)
    report >> verdict
    drift_alert(verdict)
    verdict >> housekeeping(AS_OF_DATE)


segment_pipeline()
