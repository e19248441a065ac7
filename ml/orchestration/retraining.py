"""What the DAGs decide about retraining: when the daily run emits the drift alert, which
models a train_models run trains and as of which date, and what becomes of each training.

The drift alert is the `drift_alert` asset's event: segment_pipeline's `drift_alert` task sets
the monitor's verdict (`as_of_date`, `models`, `reasons`) as its extra, and the event schedules
train_models, which retrains the models it names as of the date whose drift raised it.

train_models reads `training_as_of` when it is parsed (its as-of macro): the monitor's and the
registry's modules, which load numpy and MLflow, are imported by the functions that use them.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException

from ml.config import load_settings
from ml.orchestration.as_of import resolve_as_of
from ml.orchestration.dag_defaults import DRIFT_ALERT

log = logging.getLogger(__name__)


def drift_request(triggering_asset_events: Mapping[Any, Any] | None) -> dict[str, Any] | None:
    """What the newest drift alert that triggered this run asks for (`as_of_date`, `models`,
    `reasons`), or None when the run was not triggered by one."""
    events = list((triggering_asset_events or {}).get(DRIFT_ALERT, []))
    requests = [event.extra for event in events if (event.extra or {}).get("as_of_date")]
    return max(requests, key=lambda extra: extra["as_of_date"]) if requests else None


def training_as_of(context: Mapping[str, Any]) -> dt.date:
    """train_models' as-of date: the `as_of_date` param, else the date whose drift raised the
    alert that triggered the run (retrained on the data that showed it), else the run's date
    (`resolve_as_of`)."""
    params = context.get("params") or {}
    drift = drift_request(context.get("triggering_asset_events"))
    if drift and not params.get("as_of_date"):
        params = {**params, "as_of_date": drift["as_of_date"]}
    return resolve_as_of(params, context.get("data_interval_start"), context.get("logical_date"))


def models_to_train(
    requested: Sequence[str], triggering_asset_events: Mapping[Any, Any] | None
) -> list[str]:
    """The models a train_models run trains: those the `models` param names, or, in a run a
    drift alert triggered, those of them that the alert names (logged with its reasons)."""
    drift = drift_request(triggering_asset_events)
    if drift is None:
        return list(requested)
    from ml.monitoring.monitor import describe

    log.warning(
        "retraining %s on the drift alert of %s:\n  %s",
        ", ".join(drift["models"]),
        drift["as_of_date"],
        "\n  ".join(map(describe, drift["reasons"])),
    )
    return [kind for kind in drift["models"] if kind in requested]


def emit_drift_alert(verdict: dict[str, Any], run_type: str, alert_event: Any) -> dict[str, Any]:
    """Put the monitor's verdict on the drift alert's asset event (`alert_event`, the task's
    outlet event), which schedules train_models. AirflowSkipException, saying why, when the
    verdict has no reasons, or when the run is a backfill: a backfill records its alerts (the
    monitor did) and retrains nothing, since retraining on an old date would replace today's
    champions."""
    if not verdict["reasons"]:
        raise AirflowSkipException(f"no drift alert for {verdict['as_of_date']}")
    from ml.monitoring.monitor import describe

    reasons = "\n  ".join(map(describe, verdict["reasons"]))
    if run_type == "backfill":
        raise AirflowSkipException(
            f"drift alert for {verdict['as_of_date']} recorded, not emitted (a backfill "
            f"retrains nothing):\n  {reasons}"
        )
    alert_event.extra = verdict
    log.warning(
        "drift alert for %s: retrain %s\n  %s",
        verdict["as_of_date"],
        ", ".join(verdict["models"]),
        reasons,
    )
    return verdict


def promote_trained(trained: dict[str, Any]) -> dict[str, Any]:
    """The promotion gate for one training's new version (ml.models.registry.promote); a model
    found not applicable has no version, and its decision says why."""
    if trained["not_applicable"]:
        return {
            "kind": trained["kind"],
            "status": "not_applicable",
            "reason": trained["not_applicable"],
        }
    from ml.models.registry import promote

    return promote(load_settings(), trained["kind"], trained["version"])
