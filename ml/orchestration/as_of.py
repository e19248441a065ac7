"""The date a run computes, and how its tasks receive it.

Every task that works as of a date takes it as one argument, given the template `AS_OF_DATE`.
Airflow renders the template when the task runs: the DAG's `as_of_date` macro (`as_of_macros`)
applies the DAG's rule to the run's context (`run_as_of` for the daily run) and gives the date as
YYYY-MM-DD. The UI shows it among the task's rendered fields, and dbt gets the same string as
its `as_of_date` var.

Standard library and Jinja only: the failure callback reads the same rule, in any process.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

import jinja2

from ml.errors import AsOfDateError

AS_OF_DATE = "{{ as_of_date() }}"
"""The argument a task's as-of date is given: rendered to the run's date by the DAG's macro."""

AsOfRule = Callable[[Mapping[str, Any]], dt.date]
"""A DAG's rule: the as-of date of the run whose Airflow context it is given."""


def as_of_macros(rule: AsOfRule) -> dict[str, Callable[..., str]]:
    """A DAG's `user_defined_macros`: the `as_of_date` macro that AS_OF_DATE calls, which gives
    `rule`'s date for the task's run."""

    # The template context holds no logical date or data interval when the run has none:
    # reading them through the context, they are None, as they are for a task's arguments.
    @jinja2.pass_context
    def as_of_date(context: jinja2.runtime.Context) -> str:
        return rule(context).isoformat()

    # The rule itself too, for code that runs outside a task's arguments (`dag_as_of`).
    return {"as_of_date": as_of_date, "as_of_rule": rule}


def dag_as_of(context: Mapping[str, Any]) -> dt.date:
    """The as-of date of the run whose Airflow context this is, by its DAG's own rule (the one
    `as_of_macros` was given; `run_as_of` for a DAG without one): the failure callback records
    the date the failed task computed, e.g. a drift-triggered training's drift date."""
    macros = getattr(context.get("dag"), "user_defined_macros", None) or {}
    return macros.get("as_of_rule", run_as_of)(context)


def run_as_of(context: Mapping[str, Any]) -> dt.date:
    """The as-of date of the run whose Airflow context this is (`resolve_as_of`)."""
    return resolve_as_of(
        context.get("params"), context.get("data_interval_start"), context.get("logical_date")
    )


def resolve_as_of(
    params: Mapping[str, Any] | None,
    data_interval_start: dt.datetime | None,
    logical_date: dt.datetime | None,
) -> dt.date:
    """The date a run computes: the `as_of_date` param when given, else the day of the run's
    logical date (a scheduled run, a backfill and `airflow dags test segment_pipeline D` for
    day D all compute D), else the day its data interval starts."""
    requested = (params or {}).get("as_of_date")
    if requested:
        try:
            return dt.date.fromisoformat(str(requested))
        except ValueError:
            raise AsOfDateError(
                f"param as_of_date={requested!r} is not a date (YYYY-MM-DD)"
            ) from None
    for moment in (logical_date, data_interval_start):
        if moment is not None:
            return moment.date()
    raise AsOfDateError(
        "this run has neither an as_of_date param nor a logical date: "
        'trigger it with a logical date or conf {"as_of_date": "YYYY-MM-DD"}'
    )
