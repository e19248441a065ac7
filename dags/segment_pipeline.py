"""
### segment_pipeline

The daily run of segflow for one as-of date (the day of the run's logical date, or the
`as_of_date` param):

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

import ml  # noqa: F401  (first: it switches off Cosmos's telemetry, which Cosmos reads on import)

# isort: split
from airflow.sdk import CronDataIntervalTimetable, dag, task
from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import InvocationMode, LoadMode, TestBehavior

from ml.config import load_settings
from ml.features.dbt import DBT_EXECUTABLE, DBT_PROJECT_DIR, dbt_environment
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
    resolve_as_of,
)

# The same date the Python tasks resolve (ml.orchestration.dag_defaults.resolve_as_of), in Jinja for dbt.
AS_OF_TEMPLATE = "{{ params.as_of_date or (logical_date or data_interval_start) | ds }}"
SETTINGS = load_settings()


@dag(
    dag_id="segment_pipeline",
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
    start_date=DAG_START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["segflow", "daily"],
    params={"as_of_date": as_of_param("Date to compute")},
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
    def ingest(params=None, data_interval_start=None, logical_date=None) -> str:
        """Load new landing files up to the as-of date into raw; quarantine bad rows.
        Returns the load time that marks this run's files, for the raw gate."""
        from ml.ingest.loader import ingest_landing

        report = ingest_landing(
            load_settings(), as_of=resolve_as_of(params, data_interval_start, logical_date)
        )
        return report.loaded_at.isoformat()

    @task(**WAREHOUSE_TASK, retries=0, outlets=[VALIDATION_RESULTS])
    def raw_gate(loaded_at: str, params=None, data_interval_start=None, logical_date=None) -> None:
        """Quarantine share and the raw suites on this run's rows: a failure stops the run.
        No retries: the same data fails the same way."""
        from ml.quality.gates import run_raw_gate

        run_raw_gate(
            load_settings(),
            as_of=resolve_as_of(params, data_interval_start, logical_date),
            loaded_at=dt.datetime.fromisoformat(loaded_at),
        )

    # The marts' assets are updated here: dbt built them, this gate passed them.
    @task(**WAREHOUSE_TASK, retries=0, outlets=[VALIDATION_RESULTS, *FEATURE_MARTS])
    def features_gate(params=None, data_interval_start=None, logical_date=None) -> None:
        """The customer_features suite for the date: a failure stops the run."""
        from ml.quality.gates import run_features_gate

        run_features_gate(
            load_settings(), as_of=resolve_as_of(params, data_interval_start, logical_date)
        )

    @task(**WAREHOUSE_TASK, outlets=[REVIEW_SENTIMENT])
    def score_review_texts(params=None, data_interval_start=None, logical_date=None) -> int:
        """Score review texts written up to the as-of date that have no score yet."""
        from ml.features.text_signal import score_review_sentiment

        return score_review_sentiment(
            load_settings(), as_of=resolve_as_of(params, data_interval_start, logical_date)
        )

    features = DbtTaskGroup(
        group_id="features",
        project_config=ProjectConfig(
            dbt_project_path=DBT_PROJECT_DIR,
            manifest_path=DBT_PROJECT_DIR / "target" / "manifest.json",
            install_dbt_deps=False,
        ),
        profile_config=ProfileConfig(
            profile_name="segflow",
            target_name="local",
            profiles_yml_filepath=DBT_PROJECT_DIR / "profiles.yml",
        ),
        execution_config=ExecutionConfig(
            dbt_executable_path=str(DBT_EXECUTABLE),
            # A dbt child process per task releases the DuckDB file when it exits.
            invocation_mode=InvocationMode.SUBPROCESS,
        ),
        render_config=RenderConfig(
            # The manifest is made by `make setup` (dbt parse): no dbt call when the DAG is parsed.
            load_method=LoadMode.DBT_MANIFEST,
            # Staging and intermediate models are ephemeral (inlined into the marts), so Cosmos
            # shows them as empty tasks; the two marts run, then one task runs every data and
            # unit test of the project for the date. Three dbt processes instead of thirteen.
            test_behavior=TestBehavior.AFTER_ALL,
        ),
        operator_args={
            **WAREHOUSE_TASK,
            "env": dbt_environment(SETTINGS),
            "append_env": True,
            "vars": {
                "as_of_date": AS_OF_TEMPLATE,
                "label_horizon_days": SETTINGS.label_horizon_days,
            },
        },
        default_args=DEFAULT_ARGS,
    )

    @task(**WAREHOUSE_TASK, outlets=REGISTERED_MODELS)
    def ensure_champions(params=None, data_interval_start=None, logical_date=None) -> list[str]:
        """Cold start: train the models that have no champion yet (a model not applicable
        waits for the next scheduled training). Returns what was missing."""
        from ml.models.train import ensure_champions

        with fail_at_once_on_lasting_errors():
            return ensure_champions(
                load_settings(), as_of=resolve_as_of(params, data_interval_start, logical_date)
            )

    @task(**WAREHOUSE_TASK, inlets=[*FEATURE_MARTS, *REGISTERED_MODELS], outlets=STAGED_SEGMENTS)
    def score(params=None, data_interval_start=None, logical_date=None) -> int:
        """Score the date's customers with the champions into staging.customer_segments."""
        from ml.segments.score import score_customers

        return score_customers(
            load_settings(), as_of=resolve_as_of(params, data_interval_start, logical_date)
        )

    @task(**WAREHOUSE_TASK, retries=0, outlets=[VALIDATION_RESULTS])
    def segments_gate(params=None, data_interval_start=None, logical_date=None) -> None:
        """The customer_segments suite on the staged rows: a failure stops the publish."""
        from ml.quality.gates import run_segments_gate

        run_segments_gate(
            load_settings(), as_of=resolve_as_of(params, data_interval_start, logical_date)
        )

    @task(**WAREHOUSE_TASK, outlets=[*PUBLISHED_SEGMENTS, AUDIENCE_EXPORTS])
    def publish(params=None, data_interval_start=None, logical_date=None, run_id=None) -> dict:
        """Swap the gated rows into published.customer_segments and move the exports in place."""
        from ml.segments.publish import publish_segments

        return publish_segments(
            load_settings(),
            as_of=resolve_as_of(params, data_interval_start, logical_date),
            run_id=run_id,
            gate_passed=True,  # segments_gate ran on these rows just before
        )

    # It only reads the warehouse, but DuckDB lets no other process read while one writes.
    @task(**WAREHOUSE_TASK, outlets=[SEGMENT_REPORT])
    def segment_report(params=None, data_interval_start=None, logical_date=None) -> str:
        """The run's segment report (HTML under the reports folder, and in MLflow)."""
        from ml.segments.report import write_segment_report

        return str(
            write_segment_report(
                load_settings(), as_of=resolve_as_of(params, data_interval_start, logical_date)
            )
        )

    @task(**WAREHOUSE_TASK, outlets=[*MONITORING_TABLES, DRIFT_REPORT])
    def monitor(params=None, data_interval_start=None, logical_date=None) -> dict:
        """Drift and realized performance for the date; returns the alert (empty reasons: none)."""
        from ml.monitoring.monitor import monitor

        result = monitor(
            load_settings(), as_of=resolve_as_of(params, data_interval_start, logical_date)
        )
        return result.summary()

    @task(outlets=[DRIFT_ALERT])
    def drift_alert(verdict: dict, dag_run=None, outlet_events=None) -> dict:
        """Emit the drift alert (it schedules train_models), or skip when there is none."""
        import logging

        from airflow.sdk.exceptions import AirflowSkipException

        from ml.monitoring.monitor import describe

        if not verdict["reasons"]:
            raise AirflowSkipException(f"no drift alert for {verdict['as_of_date']}")
        reasons = "\n  ".join(map(describe, verdict["reasons"]))
        if dag_run.run_type == "backfill":
            raise AirflowSkipException(
                f"drift alert for {verdict['as_of_date']} recorded, not emitted (a backfill "
                f"retrains nothing):\n  {reasons}"
            )
        outlet_events[DRIFT_ALERT].extra = verdict
        logging.getLogger(__name__).warning(
            "drift alert for %s: retrain %s\n  %s",
            verdict["as_of_date"],
            ", ".join(verdict["models"]),
            reasons,
        )
        return verdict

    @task(**WAREHOUSE_TASK)
    def housekeeping(params=None, data_interval_start=None, logical_date=None) -> dict:
        """Remove what is older than its retention limit as of the date; returns the report."""
        from ml.privacy.retention import apply_retention

        return apply_retention(
            load_settings(), today=resolve_as_of(params, data_interval_start, logical_date)
        ).as_dict()

    loaded_at = ingest()
    forget_requested() >> loaded_at
    report = (
        raw_gate(loaded_at)
        >> score_review_texts()
        >> features
        >> features_gate()
        >> ensure_champions()
        >> score()
        >> segments_gate()
        >> publish()
        >> segment_report()
    )
    verdict = monitor()
    report >> verdict
    drift_alert(verdict)
    verdict >> housekeeping()


segment_pipeline()
