import datetime as dt
from dataclasses import dataclass

import pytest

from ml.orchestration.dag_defaults import DRIFT_ALERT, AsOfDateError, drift_request, resolve_as_of

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
    from ml.orchestration.dag_defaults import RunDidNotRun, check_run_ran

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

    from ml.config import ConfigError
    from ml.models.training_sets import TrainingSetError
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
