"""
### segment_pipeline

The daily run of segflow for one as-of date (the day of the run's logical date, or the
`as_of_date` param):

1. **ingest**: landing files up to that date into the warehouse's `raw` schema; rows that
   break the data contract are kept in `quarantine.violations` with their reason.
2. **raw_gate**: the run's quarantine share, then Great Expectations suites on the new raw
   rows; an `error` expectation that fails stops the run (results in
   `quality.validation_results`, Data Docs under the reports folder).
3. **score_review_texts**: the review text signal for reviews not scored yet.
4. **features**: the dbt project through Cosmos, one task per model running the model and its
   tests (`dbt build`): staging, intermediate, then the marts `customer_features` (for the
   date) and `training_labels` (for the date minus the label horizon).
5. **features_gate**: the `customer_features` suite for the date.

Every task that writes the warehouse runs in the `warehouse` pool (one slot): DuckDB allows one
writing process. Re-running a date gives the same tables.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, task
from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import InvocationMode, LoadMode, TestBehavior

from ml.config import load_settings
from ml.contract import ENTITIES
from ml.features import DBT_EXECUTABLE, DBT_PROJECT_DIR, dbt_environment
from ml.orchestration import DEFAULT_ARGS, WAREHOUSE_POOL, resolve_as_of

RAW_TABLES = [Asset(name=f"raw.{e.name}", uri=f"duckdb://segflow/raw/{e.name}") for e in ENTITIES]
REVIEW_SENTIMENT = Asset(
    name="derived.review_sentiment", uri="duckdb://segflow/derived/review_sentiment"
)
# The same date the Python tasks resolve (ml.orchestration.resolve_as_of), in Jinja for dbt.
AS_OF_TEMPLATE = "{{ params.as_of_date or (logical_date or data_interval_start) | ds }}"
SETTINGS = load_settings()


@dag(
    dag_id="segment_pipeline",
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["segflow", "daily"],
    params={
        "as_of_date": Param(
            None,
            type=["null", "string"],
            format="date",
            description="Date to compute (YYYY-MM-DD); empty means the day of the logical date.",
        )
    },
    doc_md=__doc__,
)
def segment_pipeline():
    @task(pool=WAREHOUSE_POOL, outlets=RAW_TABLES)
    def ingest(params=None, data_interval_start=None, logical_date=None) -> str:
        """Load new landing files up to the as-of date into raw; quarantine bad rows.
        Returns the load time that marks this run's files, for the raw gate."""
        from ml.ingest import ingest_landing

        report = ingest_landing(
            load_settings(), as_of=resolve_as_of(params, data_interval_start, logical_date)
        )
        return report.loaded_at.isoformat()

    @task(pool=WAREHOUSE_POOL, retries=0)
    def raw_gate(loaded_at: str, params=None, data_interval_start=None, logical_date=None) -> None:
        """Quarantine share and the raw suites on this run's rows: a failure stops the run.
        No retries: the same data fails the same way."""
        from ml.quality import run_raw_gate

        run_raw_gate(
            load_settings(),
            as_of=resolve_as_of(params, data_interval_start, logical_date),
            loaded_at=dt.datetime.fromisoformat(loaded_at),
        )

    @task(pool=WAREHOUSE_POOL, retries=0)
    def features_gate(params=None, data_interval_start=None, logical_date=None) -> None:
        """The customer_features suite for the date: a failure stops the run."""
        from ml.quality import run_features_gate

        run_features_gate(
            load_settings(), as_of=resolve_as_of(params, data_interval_start, logical_date)
        )

    @task(pool=WAREHOUSE_POOL, outlets=[REVIEW_SENTIMENT])
    def score_review_texts(params=None, data_interval_start=None, logical_date=None) -> int:
        """Score review texts written up to the as-of date that have no score yet."""
        from ml.text_signal import score_review_sentiment

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
            test_behavior=TestBehavior.BUILD,
        ),
        operator_args={
            "pool": WAREHOUSE_POOL,
            "env": dbt_environment(SETTINGS),
            "append_env": True,
            "vars": {
                "as_of_date": AS_OF_TEMPLATE,
                "label_horizon_days": SETTINGS.label_horizon_days,
            },
        },
        default_args=DEFAULT_ARGS,
    )

    raw_gate(ingest()) >> score_review_texts() >> features >> features_gate()


segment_pipeline()
