"""
### segment_pipeline

The daily run of segflow for one as-of date (the day of the run's logical date, or the
`as_of_date` param): landing files up to that date are loaded into the warehouse's `raw` schema, with rows
that break the data contract kept in `quarantine.violations` with their reason.

Every task that writes the warehouse runs in the `warehouse` pool (one slot): DuckDB allows one
writing process. Re-running a date changes nothing that is already loaded.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, task

from ml.contract import ENTITIES
from ml.orchestration import DEFAULT_ARGS, WAREHOUSE_POOL, resolve_as_of

RAW_TABLES = [Asset(name=f"raw.{e.name}", uri=f"duckdb://segflow/raw/{e.name}") for e in ENTITIES]


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
            description="Date to compute (YYYY-MM-DD); empty means the run's data interval day.",
        )
    },
    doc_md=__doc__,
)
def segment_pipeline():
    @task(pool=WAREHOUSE_POOL, outlets=RAW_TABLES)
    def ingest(params=None, data_interval_start=None, logical_date=None) -> dict[str, int]:
        """Load new landing files up to the as-of date into raw; quarantine bad rows."""
        from ml.config import load_settings
        from ml.ingest import ingest_landing

        report = ingest_landing(
            load_settings(), as_of=resolve_as_of(params, data_interval_start, logical_date)
        )
        return {name: r.rows_loaded for name, r in report.entities.items()}

    ingest()


segment_pipeline()
