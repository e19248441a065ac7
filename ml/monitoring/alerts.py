"""What happens when a segflow task fails: the failure is recorded, and people are told.

`record_task_failure` is the `on_failure_callback` of every segflow task (the DAGs' default
args, ml/orchestration/dag_defaults.py). Airflow 3 calls it once a task has failed for good (a failure that
will be retried calls `on_retry_callback` instead): in the task's own process right after the
task ran (the task runner's `finalize`, which `airflow dags test` runs in its process too), or,
for a task that was killed or stopped heart-beating, in the DAG processor, where no exception
is known.

For each failure:
1. one JSON line is appended to `<reports dir>/failures.jsonl` (dag_id, run_id, task_id,
   map_index, try_number, logical and as-of date, exception class and message, log URL), and
   an error line is logged;
2. the same JSON is POSTed to SEGFLOW_ALERT_WEBHOOK_URL, when set;
3. a mail goes to SEGFLOW_ALERT_EMAILS, when set, through Airflow's [smtp] settings.

The steps are independent and none raises: an alert that cannot be delivered is logged, and
the task's failure stays what Airflow reports. Passwords and tokens in an exception message
(ml/privacy/secret_masking.py) and e-mail addresses (a gate's example values may be customers'
addresses) are masked before anything is written, posted or mailed.

DAG files import this at parse time: heavy imports stay inside the functions.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ml.config import Settings, load_settings
from ml.errors import AsOfDateError
from ml.orchestration.as_of import dag_as_of
from ml.privacy.secret_masking import mask_secrets

log = logging.getLogger(__name__)

FAILURES_FILE = "failures.jsonl"
MESSAGE_MAX_CHARS = 4000
"""Longer messages are cut (the whole one is in the task's log)."""
WEBHOOK_TIMEOUT_SECONDS = 10
NO_EXCEPTION = (
    "no exception reached the callback: the task was killed or stopped heart-beating (see its log)"
)
_EMAIL_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")


def failures_path(settings: Settings) -> Path:
    return settings.reports_dir / FAILURES_FILE


def mask_email_addresses(text: str) -> str:
    return _EMAIL_ADDRESS.sub("<e-mail>", text)


def _as_of_date(context: Mapping[str, Any]) -> str | None:
    try:
        return dag_as_of(context).isoformat()
    except AsOfDateError:
        return None


def failure_record(context: Mapping[str, Any]) -> dict[str, Any]:
    """The failure as one flat JSON-ready dict, from the callback's Airflow context."""
    ti = context["ti"]
    error = context.get("exception")
    # Secrets first (ml/privacy/secret_masking.py): a URI's password must not pass for an address.
    message = NO_EXCEPTION if error is None else mask_email_addresses(mask_secrets(str(error)))
    if len(message) > MESSAGE_MAX_CHARS:
        message = message[:MESSAGE_MAX_CHARS] + " [cut: the whole message is in the log]"
    logical_date = context.get("logical_date")
    return {
        "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "map_index": ti.map_index,  # -1: not a mapped task
        "try_number": ti.try_number,
        "logical_date": logical_date.isoformat() if logical_date else None,
        "as_of_date": _as_of_date(context),
        "exception_class": (
            None if error is None else f"{type(error).__module__}.{type(error).__qualname__}"
        ),
        "exception_message": message,
        "log_url": ti.log_url,
    }


def append_failure(settings: Settings, record: Mapping[str, Any]) -> Path:
    path = failures_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record) + "\n").encode()
    # One write on an O_APPEND descriptor: records of tasks failing together do not interleave.
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)
    return path


def post_to_webhook(url: str, record: Mapping[str, Any]) -> None:
    """POST the record as JSON; an HTTP error status raises."""
    import urllib.request

    request = urllib.request.Request(
        url,
        data=json.dumps(record).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "segflow-alerts"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as response:
        response.read()


def _mail_html(record: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><th align='left'>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>"
        for key, value in record.items()
        if key not in ("exception_message", "log_url")
    )
    return (
        f"<table>{rows}</table>"
        f"<pre>{html.escape(record['exception_message'])}</pre>"
        f"<p><a href='{html.escape(record['log_url'] or '')}'>The task's log</a></p>"
    )


def send_failure_mail(recipients: tuple[str, ...], record: Mapping[str, Any]) -> None:
    """A mail through Airflow's [smtp] settings; login from the `[email] email_conn_id`
    connection (smtp_default) when it exists."""
    from airflow.providers.common.compat.sdk import conf
    from airflow.providers.smtp.utils.emailer import send_email_smtp

    subject = (
        f"segflow: {record['dag_id']}.{record['task_id']} failed"
        f" (as of {record['as_of_date'] or 'unknown date'})"
    )
    send_email_smtp(
        list(recipients),
        subject,
        _mail_html(record),
        conn_id=conf.get("email", "email_conn_id", fallback="smtp_default"),
    )


def _attempt(what: str, step: Callable[[], object]) -> None:
    try:
        step()
    except Exception:
        log.warning("could not %s; the task's own failure is unaffected", what, exc_info=True)


def record_task_failure(context: Mapping[str, Any]) -> None:
    """on_failure_callback: record the failure, then alert the webhook and the mail
    recipients that are configured. Never raises."""
    try:
        record = failure_record(context)
        settings = load_settings()
    except Exception:
        log.exception("could not record the failure of this task")
        return
    first_line = record["exception_message"].splitlines()[0] if record["exception_message"] else ""
    log.error(
        "segflow task failed: %s.%s (run %s, try %s, as of %s): %s: %s; recording it in %s",
        record["dag_id"],
        record["task_id"],
        record["run_id"],
        record["try_number"],
        record["as_of_date"],
        record["exception_class"],
        first_line,
        failures_path(settings),
    )
    _attempt(f"append to {failures_path(settings)}", lambda: append_failure(settings, record))
    alerts = settings.alerts
    if alerts.webhook_url:
        _attempt(
            "post the failure to SEGFLOW_ALERT_WEBHOOK_URL",
            lambda: post_to_webhook(alerts.webhook_url, record),
        )
    if alerts.emails:
        _attempt(
            "mail the failure to SEGFLOW_ALERT_EMAILS",
            lambda: send_failure_mail(alerts.emails, record),
        )
