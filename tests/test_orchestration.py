import datetime as dt
from dataclasses import dataclass

import pytest

from ml.orchestration import DRIFT_ALERT, AsOfDateError, drift_request, resolve_as_of

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
