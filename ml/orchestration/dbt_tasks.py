"""The dbt project as tasks of segment_pipeline, through Cosmos.

One task per model, read from the manifest that `make setup` writes (`dbt parse`), so parsing
the DAG calls no dbt. Staging and intermediate models are ephemeral (inlined into the marts), so
Cosmos shows them as empty tasks; the two marts run, then one task runs every data and unit
test of the project for the date: three dbt processes instead of thirteen.

segflow's settings reach dbt when a task runs, not when the DAG is parsed: Cosmos calls
`apply_run_settings` just before it builds the dbt command, with the settings of the process
that runs the task. The as-of date is the task's templated `as_of_date` var.
"""

from __future__ import annotations

from typing import Any

from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import InvocationMode, LoadMode, TestBehavior

from ml.config import load_settings
from ml.features.dbt import DBT_EXECUTABLE, DBT_PROJECT_DIR, dbt_environment
from ml.orchestration.dag_defaults import DEFAULT_ARGS, WAREHOUSE_TASK


def apply_run_settings(context: Any, operator: Any) -> None:
    """A Cosmos interceptor: the environment that profiles.yml and the models read, and the
    `label_horizon_days` var (a number: the models compute with it), from the settings."""
    settings = load_settings()
    operator.env = {**(operator.env or {}), **dbt_environment(settings)}
    operator.vars = {**(operator.vars or {}), "label_horizon_days": settings.label_horizon_days}


def dbt_feature_tasks(as_of: str) -> DbtTaskGroup:
    """The `features` task group: the marts built and the project tested as of `as_of` (the
    as-of template), in the warehouse pool."""
    return DbtTaskGroup(
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
            load_method=LoadMode.DBT_MANIFEST,
            test_behavior=TestBehavior.AFTER_ALL,
        ),
        operator_args={
            **WAREHOUSE_TASK,
            "append_env": True,
            "vars": {"as_of_date": as_of},
            "interceptors": [apply_run_settings],
        },
        default_args=DEFAULT_ARGS,
    )
