import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest
from airflow.sdk.exceptions import AirflowSkipException

from ml.config import load_settings
from ml.errors import AsOfDateError
from ml.orchestration.as_of import AS_OF_DATE, as_of_macros, resolve_as_of, run_as_of
from ml.orchestration.dag_defaults import DRIFT_ALERT
from ml.orchestration.retraining import (
    drift_request,
    emit_drift_alert,
    models_to_train,
    promote_trained,
    training_as_of,
)

MIDNIGHT = dt.datetime(2026, 10, 31, 0, 0, tzinfo=dt.UTC)


def test_param_wins_over_the_logical_date():
    assert resolve_as_of({"as_of_date": "2026-10-15"}, None, MIDNIGHT) == dt.date(2026, 10, 15)


def test_the_logical_date_day_is_the_as_of_date():
    # `airflow dags test segment_pipeline 2026-10-31` infers an earlier data interval for a
    # manual run: the logical date is what the user asked for.
    interval_start = dt.datetime(2026, 10, 29, 2, 0, tzinfo=dt.UTC)
    assert resolve_as_of({"as_of_date": None}, interval_start, MIDNIGHT) == dt.date(2026, 10, 31)


def test_the_data_interval_is_used_when_a_run_has_no_logical_date():
    interval_start = dt.datetime(2026, 10, 30, 2, 0, tzinfo=dt.UTC)
    assert resolve_as_of({}, interval_start, None) == dt.date(2026, 10, 30)


def test_a_param_that_is_not_a_date_is_refused():
    with pytest.raises(AsOfDateError, match="as_of_date='31.10.2026' is not a date"):
        resolve_as_of({"as_of_date": "31.10.2026"}, None, MIDNIGHT)


def test_no_date_at_all_is_refused():
    with pytest.raises(AsOfDateError, match="neither an as_of_date param nor a logical date"):
        resolve_as_of({}, None, None)


@dataclass
class Event:
    extra: dict


def test_a_drift_triggered_run_takes_date_and_models_from_the_newest_alert():
    older = {"as_of_date": "2026-07-01", "models": ["churn_risk"], "reasons": []}
    newer = {"as_of_date": "2026-07-02", "models": ["personas"], "reasons": []}
    events = {DRIFT_ALERT: [Event(older), Event(newer), Event({})]}
    assert drift_request(events) == newer
    assert drift_request({}) is None
    assert drift_request(None) is None
    # An event without a date (someone marked the asset updated by hand) asks for nothing.
    assert drift_request({DRIFT_ALERT: [Event({})]}) is None


def test_a_date_before_the_dags_start_date_is_refused_with_the_reason():
    from ml.orchestration.dag_defaults import DAG_START_DATE, runnable_as_of

    assert runnable_as_of("2025-10-31") == dt.date(2025, 10, 31)
    assert runnable_as_of(DAG_START_DATE.date().isoformat()) == DAG_START_DATE.date()
    with pytest.raises(AsOfDateError, match="1999-12-31 is before the DAGs' start date 2000-01-01"):
        runnable_as_of("1999-12-31")
    with pytest.raises(AsOfDateError, match="'31.10.2025' is not a date"):
        runnable_as_of("31.10.2025")


def states(*pairs: tuple[str, str | None]) -> list[dict]:
    """Task instances as `airflow tasks states-for-dag-run -o json` prints them."""
    return [{"task_id": task, "state": state or ""} for task, state in pairs]


def test_a_run_counts_as_run_only_when_its_tasks_ran_and_published():
    from ml.errors import RunDidNotRun
    from ml.orchestration.dag_defaults import check_run_ran

    done = states(("ingest", "success"), ("publish", "success"), ("drift_alert", "skipped"))
    assert check_run_ran(done, "publish") == "1 skipped, 2 success"
    # A logical date before the start date: Airflow says success and has run nothing.
    with pytest.raises(RunDidNotRun, match="ran none of the run's tasks"):
        check_run_ran([], "publish")
    with pytest.raises(
        RunDidNotRun, match=r"did not finish: publish \(not run\), score \(failed\)"
    ):
        check_run_ran(states(("score", "failed"), ("publish", None)), "publish")
    with pytest.raises(RunDidNotRun, match="the task publish did not succeed"):
        check_run_ran(states(("ingest", "success"), ("publish", "skipped")), "publish")


def test_errors_a_retry_cannot_fix_fail_the_task_at_once():
    from airflow.sdk.exceptions import AirflowFailException

    from ml.errors import ConfigError, TrainingSetError
    from ml.orchestration.dag_defaults import fail_at_once_on_lasting_errors

    for lasting in (TrainingSetError("only 1 training snapshot"), ConfigError("bad value")):
        with (
            pytest.raises(AirflowFailException, match=str(lasting)),
            fail_at_once_on_lasting_errors(),
        ):
            raise lasting
    # Anything else (a lock, a lost connection) keeps its retries.
    with pytest.raises(OSError, match="database is locked"), fail_at_once_on_lasting_errors():
        raise OSError("database is locked")


def render_as_of(rule, **context) -> str:
    """AS_OF_DATE rendered as Airflow renders a task's argument: the DAG's macros as globals,
    undefined names strict (a run without a logical date has none in its context)."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.globals.update(as_of_macros(rule))
    return env.from_string(AS_OF_DATE).render(**context)


def test_a_tasks_as_of_argument_renders_to_the_date_the_rule_gives():
    interval_start = dt.datetime(2026, 10, 29, 2, 0, tzinfo=dt.UTC)
    run = {"logical_date": MIDNIGHT, "data_interval_start": interval_start}
    assert render_as_of(run_as_of, params={"as_of_date": None}, **run) == "2026-10-31"
    assert render_as_of(run_as_of, params={"as_of_date": "2026-10-15"}, **run) == "2026-10-15"
    with pytest.raises(AsOfDateError, match="as_of_date='31.10.2026' is not a date"):
        render_as_of(run_as_of, params={"as_of_date": "31.10.2026"}, **run)
    # A manual run without a logical date: Airflow's context has no date at all.
    with pytest.raises(AsOfDateError, match="neither an as_of_date param nor a logical date"):
        render_as_of(run_as_of, params={"as_of_date": None})


REASON = {
    "check": "feature",
    "name": "email_opens_30d",
    "statistic": "psi",
    "value": 0.413,
    "threshold": 0.25,
    "models": ["churn_risk", "engagement_propensity"],
}
ALERT = {
    "as_of_date": "2026-07-02",
    "models": ["churn_risk", "engagement_propensity"],
    "reasons": [REASON],
    "report": None,
}


def test_training_runs_as_of_the_param_else_the_drift_date_else_the_logical_date():
    raised = {DRIFT_ALERT: [Event(ALERT)]}
    run = {"logical_date": MIDNIGHT, "data_interval_start": MIDNIGHT}
    no_param = {"as_of_date": None, "models": ["churn_risk"]}
    # Retrained on the data that showed the drift, not on the day the run starts.
    context = {**run, "params": no_param, "triggering_asset_events": raised}
    assert training_as_of(context) == dt.date(2026, 7, 2)
    assert render_as_of(training_as_of, **context) == "2026-07-02"
    context = {**run, "params": {**no_param, "as_of_date": "2026-07-05"}}
    assert training_as_of({**context, "triggering_asset_events": raised}) == dt.date(2026, 7, 5)
    assert training_as_of({**run, "params": no_param}) == dt.date(2026, 10, 31)


def test_a_drift_triggered_run_trains_the_requested_models_that_the_alert_names(
    caplog: pytest.LogCaptureFixture,
):
    requested = ["churn_risk", "customer_value"]
    assert models_to_train(requested, None) == requested
    assert models_to_train(requested, {DRIFT_ALERT: [Event({})]}) == requested
    with caplog.at_level(logging.WARNING, logger="ml.orchestration.retraining"):
        assert models_to_train(requested, {DRIFT_ALERT: [Event(ALERT)]}) == ["churn_risk"]
    assert "retraining churn_risk, engagement_propensity on the drift alert of 2026-07-02" in (
        caplog.text
    )
    assert "feature email_opens_30d: PSI 0.413 >= 0.25" in caplog.text


def test_the_drift_alert_is_emitted_with_its_reasons_and_never_by_a_backfill():
    event = SimpleNamespace(extra={})
    with pytest.raises(AirflowSkipException, match="no drift alert for 2026-07-02"):
        emit_drift_alert({**ALERT, "reasons": []}, "scheduled", event)
    with pytest.raises(
        AirflowSkipException,
        match=r"recorded, not emitted \(a backfill retrains nothing\):\n  feature email_opens_30d",
    ):
        emit_drift_alert(ALERT, "backfill", event)
    assert event.extra == {}
    assert emit_drift_alert(ALERT, "scheduled", event) == ALERT
    assert event.extra == ALERT  # what schedules train_models, and what it reads


def test_a_model_found_not_applicable_has_nothing_to_promote():
    trained = {"kind": "engagement_propensity", "version": None, "not_applicable": "no clicks"}
    assert promote_trained(trained) == {
        "kind": "engagement_propensity",
        "status": "not_applicable",
        "reason": "no clicks",
    }


def test_dbt_gets_the_settings_of_the_process_that_runs_the_task(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    from ml.orchestration.dbt_tasks import apply_run_settings

    monkeypatch.setenv("SEGFLOW_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SEGFLOW_LABEL_HORIZON_DAYS", "45")
    operator = SimpleNamespace(env=None, vars={"as_of_date": "2026-06-30"})
    apply_run_settings({}, operator)
    # A number: the models compute with it (dbt_project/macros/as_of.sql).
    assert operator.vars == {"as_of_date": "2026-06-30", "label_horizon_days": 45}
    assert operator.env["SEGFLOW_WAREHOUSE_PATH"] == str(load_settings().warehouse_path)
