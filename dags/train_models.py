"""
### train_models

Trains, evaluates, registers and promotes segflow's models, weekly (Mondays 04:00 UTC) and
whenever the drift monitor emits the `drift_alert` asset. For an as-of date (the `as_of_date`
param, else the date the drift alert was raised for, else the day of the logical date), and the
models the `models` param names (a drift-triggered run: the models the alert names):

1. **build_training_set**: point-in-time snapshots of `customer_features` joined to
   `training_labels` (monthly, stacked), plus an out-of-time validation snapshot after them;
   missing snapshots are built with dbt. Written to Parquet, so training never holds the
   warehouse.
2. **train_model** (one mapped task per model, all of them or those the `models` param names): hyper-parameter search under time-aware
   cross-validation, calibration, evaluation on the validation snapshot against a baseline
   that needs no learning, an MLflow run with charts and a model card, and a new registered
   version with the alias `challenger`. A model whose training set lacks the outcomes to learn
   from (no e-mail events: no click to predict) is marked not applicable instead, with the
   reason; its scores stay null until a training finds enough.
3. **promote** (one per model): the gate. The challenger must beat the baseline and be no worse
   than the `champion` on the same snapshot beyond `SEGFLOW_PROMOTION_TOLERANCE`; then
   `champion` moves, unless `SEGFLOW_AUTO_PROMOTE=false` leaves that to a person in the MLflow
   UI. Each version is tagged with its validation status and the reason.
4. **summary**: what was promoted and why, in the log.

Settings or data that cannot give a training set fail the task at once, without retries: the
next try would fail the same way.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

from ml.config import load_settings
from ml.models.catalogue import MODEL_KINDS
from ml.orchestration import retraining
from ml.orchestration.as_of import AS_OF_DATE, as_of_macros
from ml.orchestration.dag_defaults import (
    DAG_START_DATE,
    DEFAULT_ARGS,
    DRIFT_ALERT,
    FEATURE_MARTS,
    REGISTERED_MODELS,
    TRAINING_SET,
    WAREHOUSE_TASK,
    as_of_param,
    fail_at_once_on_lasting_errors,
)

log = logging.getLogger(__name__)


@dag(
    dag_id="train_models",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 4 * * 1", timezone="UTC"), assets=[DRIFT_ALERT]
    ),
    start_date=DAG_START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["segflow", "training"],
    params={
        "as_of_date": as_of_param("Train as of this date"),
        # Validated before the run starts: an unknown model is refused with the allowed names.
        "models": Param(
            list(MODEL_KINDS),
            type="array",
            items={"type": "string", "enum": list(MODEL_KINDS)},
            minItems=1,
            uniqueItems=True,
            description="The models to train and promote (all by default).",
        ),
    },
    user_defined_macros=as_of_macros(retraining.training_as_of),
    doc_md=__doc__,
)
def train_models():
    @task(**WAREHOUSE_TASK, inlets=FEATURE_MARTS, outlets=[TRAINING_SET])
    def build_training_set(as_of: str) -> str:
        """Snapshots of features and labels up to the as-of date, as Parquet (dbt builds the
        missing ones, hence the warehouse pool)."""
        from ml.models.training_sets import build_training_set

        with fail_at_once_on_lasting_errors():
            return str(build_training_set(load_settings(), dt.date.fromisoformat(as_of)))

    # Two cores: one model at a time gets both of them.
    @task(max_active_tis_per_dagrun=1)
    def train_model(kind: str, training_set_dir: str) -> dict:
        """Tune, train, evaluate and register one model as `challenger`, or mark it not
        applicable when the training set cannot support it."""
        from ml.models.train import train_and_register

        with fail_at_once_on_lasting_errors():
            return train_and_register(load_settings(), kind, Path(training_set_dir))

    @task(outlets=REGISTERED_MODELS)
    def promote(trained: dict) -> dict:
        """The promotion gate for one new version (a model not applicable has none)."""
        return retraining.promote_trained(trained)

    @task
    def summary(decisions: list[dict]) -> None:
        """What was promoted and why, in the log."""
        for decision in decisions:
            log.info("%s", decision)

    @task
    def models_to_train(params=None, triggering_asset_events=None) -> list[str]:
        """The models the `models` param names, or those of them a drift alert names."""
        return retraining.models_to_train(params["models"], triggering_asset_events)

    trained = train_model.partial(training_set_dir=build_training_set(AS_OF_DATE)).expand(
        kind=models_to_train()
    )
    summary(promote.expand(trained=trained))


train_models()
