"""Failure alerts (ml/monitoring/alerts.py): the record, the webhook and the mail, against local servers.

The end-to-end proof that Airflow calls the callback is in tests/end_to_end/test_pipeline_airflow.py (the
corrupt day's raw_gate failure is recorded)."""

from __future__ import annotations

import datetime as dt
import email
import http.server
import json
import logging
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import ml.orchestration.dag_defaults  # noqa: F401  (imports Airflow, which sets up logging, before caplog does)
from ml.config import load_settings
from ml.errors import ConfigError, QuarantineTooLarge
from ml.monitoring.alerts import failure_record, failures_path, record_task_failure
from ml.orchestration.as_of import as_of_macros
from ml.orchestration.dag_defaults import DRIFT_ALERT
from ml.orchestration.retraining import training_as_of
from tests.conftest import free_port

AS_OF = dt.date(2026, 6, 30)


def failure_context(error: BaseException | None) -> dict:
    """The part of Airflow's callback context the callback reads."""
    ti = SimpleNamespace(
        dag_id="segment_pipeline",
        run_id="manual__2026-06-30T00:00:00+00:00",
        task_id="raw_gate",
        map_index=-1,
        try_number=1,
        log_url="http://localhost:8080/dags/segment_pipeline/runs/manual/tasks/raw_gate",
    )
    return {
        "ti": ti,
        "exception": error,
        "params": {"as_of_date": None},
        "logical_date": dt.datetime(2026, 6, 30, tzinfo=dt.UTC),
        "data_interval_start": dt.datetime(2026, 6, 29, 2, tzinfo=dt.UTC),
    }


def gate_failure() -> QuarantineTooLarge:
    return QuarantineTooLarge(
        "quarantine above SEGFLOW_QUARANTINE_MAX_SHARE=5.0% for orders 40.0%\n"
        "    12 amount: must be >= 0\n"
        "    e.g. Jane.Doe+shop@mail.example.com, bob@example.org"
    )


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The callback reads its settings from the environment, as in a task process."""
    for name in ("SEGFLOW_ALERT_WEBHOOK_URL", "SEGFLOW_ALERT_EMAILS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SEGFLOW_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def recorded(data_dir: Path) -> list[dict]:
    path = failures_path(load_settings({"SEGFLOW_DATA_DIR": str(data_dir)}))
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def webhook() -> Iterator[SimpleNamespace]:
    """A local HTTP server on a free port; set `.status` to make it fail."""
    state = SimpleNamespace(status=200, bodies=[], url=None)

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.bodies.append((self.headers["Content-Type"], body))
            self.send_response(state.status)
            self.end_headers()

        def log_message(self, *args):  # keep the test output quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/segflow"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _SmtpSession(socketserver.StreamRequestHandler):
    """Just enough SMTP for smtplib: greet, accept every command, collect DATA."""

    def handle(self):
        self.wfile.write(b"220 test smtp\r\n")
        envelope, lines = {"to": []}, None
        for raw in self.rfile:
            line = raw.decode().rstrip("\r\n")
            if lines is not None:
                if line == ".":
                    self.server.messages.append((envelope, "\n".join(lines)))
                    envelope, lines = {"to": []}, None
                    self.wfile.write(b"250 queued\r\n")
                else:
                    lines.append(line[1:] if line.startswith("..") else line)
                continue
            verb = line.split(" ", 1)[0].upper()
            if verb == "RCPT":
                envelope["to"].append(line.split(":", 1)[1].strip(" <>"))
            if verb == "DATA":
                lines = []
                self.wfile.write(b"354 end with .\r\n")
            elif verb == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


@pytest.fixture
def smtp_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[list]:
    """A local SMTP server on a free port, and Airflow's [smtp] settings pointing at it."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SmtpSession)
    server.daemon_threads = True
    server.messages = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    smtp = {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(server.server_address[1]),
        "SMTP_STARTTLS": "False",
        "SMTP_SSL": "False",
        "SMTP_MAIL_FROM": "segflow@example.org",
        "SMTP_RETRY_LIMIT": "0",
        "SMTP_TIMEOUT": "5",
    }
    for name, value in smtp.items():
        monkeypatch.setenv(f"AIRFLOW__SMTP__{name}", value)
    try:
        yield server.messages
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_a_failure_is_recorded_as_one_json_line_without_e_mail_addresses(data_dir: Path):
    record_task_failure(failure_context(gate_failure()))
    record_task_failure(failure_context(None))  # a killed task: the DAG processor's call

    gate, killed = recorded(data_dir)
    assert {k: v for k, v in gate.items() if k != "recorded_at"} == {
        "dag_id": "segment_pipeline",
        "run_id": "manual__2026-06-30T00:00:00+00:00",
        "task_id": "raw_gate",
        "map_index": -1,
        "try_number": 1,
        "logical_date": "2026-06-30T00:00:00+00:00",
        "as_of_date": "2026-06-30",
        "exception_class": "ml.errors.QuarantineTooLarge",
        "exception_message": "quarantine above SEGFLOW_QUARANTINE_MAX_SHARE=5.0% for orders "
        "40.0%\n    12 amount: must be >= 0\n    e.g. <e-mail>, <e-mail>",
        "log_url": "http://localhost:8080/dags/segment_pipeline/runs/manual/tasks/raw_gate",
    }
    assert dt.datetime.fromisoformat(gate["recorded_at"]).tzinfo is not None
    assert killed["exception_class"] is None
    assert "killed" in killed["exception_message"]


def test_a_drift_triggered_trainings_failure_records_the_drift_date():
    """train_models trains as of the date whose drift raised the alert, not its run's day: the
    record says the date the failed task computed, by the DAG's own rule."""
    alert = SimpleNamespace(extra={"as_of_date": "2026-06-20", "models": ["churn_risk"]})
    context = {
        **failure_context(None),
        "dag": SimpleNamespace(user_defined_macros=as_of_macros(training_as_of)),
        "triggering_asset_events": {DRIFT_ALERT: [alert]},
    }
    assert failure_record(context)["as_of_date"] == "2026-06-20"
    # A DAG without a rule of its own: the run's date.
    assert failure_record({**context, "dag": None})["as_of_date"] == "2026-06-30"


def test_the_webhook_gets_the_record_as_json(data_dir: Path, webhook, monkeypatch):
    monkeypatch.setenv("SEGFLOW_ALERT_WEBHOOK_URL", webhook.url)
    record_task_failure(failure_context(gate_failure()))

    ((content_type, body),) = webhook.bodies
    assert content_type == "application/json"
    assert json.loads(body) == recorded(data_dir)[0]


def test_the_mail_goes_out_through_airflows_smtp_settings(data_dir: Path, smtp_server, monkeypatch):
    monkeypatch.setenv("SEGFLOW_ALERT_EMAILS", "data-team@example.com, oncall@example.com")
    record_task_failure(failure_context(gate_failure()))

    ((envelope, text),) = smtp_server
    assert envelope["to"] == ["data-team@example.com", "oncall@example.com"]
    message = email.message_from_string(text)
    assert message["From"] == "segflow@example.org"
    assert message["Subject"] == "segflow: segment_pipeline.raw_gate failed (as of 2026-06-30)"
    body = next(p for p in message.walk() if p.get_content_type() == "text/html")
    html = body.get_payload(decode=True).decode()
    assert "ml.errors.QuarantineTooLarge" in html and "amount: must be &gt;= 0" in html
    assert "@" not in html  # the customers' addresses in the message are masked


def test_alerts_that_fail_are_logged_and_do_not_mask_the_failure(
    data_dir: Path, webhook, smtp_server, monkeypatch, caplog: pytest.LogCaptureFixture
):
    # The webhook answers 500, the mail server is not there: the record is still written.
    webhook.status = 500
    monkeypatch.setenv("SEGFLOW_ALERT_WEBHOOK_URL", webhook.url)
    monkeypatch.setenv("SEGFLOW_ALERT_EMAILS", "oncall@example.com")
    monkeypatch.setenv("AIRFLOW__SMTP__SMTP_PORT", str(free_port()))
    with caplog.at_level(logging.WARNING, logger="ml.monitoring.alerts"):
        record_task_failure(failure_context(gate_failure()))  # does not raise

    assert len(webhook.bodies) == 1 and smtp_server == []
    assert [r["task_id"] for r in recorded(data_dir)] == ["raw_gate"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("SEGFLOW_ALERT_WEBHOOK_URL" in w for w in warnings)
    assert any("SEGFLOW_ALERT_EMAILS" in w for w in warnings)
    assert webhook.url not in caplog.text  # it may hold a token, tracebacks included

    # A webhook nobody listens on, and a reports folder that cannot be written: still no raise.
    monkeypatch.setenv("SEGFLOW_ALERT_WEBHOOK_URL", f"http://127.0.0.1:{free_port()}/x")
    monkeypatch.delenv("SEGFLOW_ALERT_EMAILS")
    data_dir.joinpath("reports").rename(data_dir / "reports-moved")
    data_dir.joinpath("reports").write_text("a file where the folder should be")
    record_task_failure(failure_context(gate_failure()))


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SEGFLOW_ALERT_WEBHOOK_URL", "hooks.example.com/T0K3N", "expected an http:// or https://"),
        ("SEGFLOW_ALERT_WEBHOOK_URL", "ftp://hooks.example.com/T0K3N", "expected an http://"),
        ("SEGFLOW_ALERT_WEBHOOK_URL", "https:///T0K3N", "with a host"),
        ("SEGFLOW_ALERT_EMAILS", "ops@example.com, nobody", "'nobody' is not an e-mail address"),
    ],
)
def test_alert_settings_are_validated(name: str, value: str, expected: str):
    with pytest.raises(ConfigError) as error:
        load_settings({name: value})
    assert str(error.value).startswith(name)
    assert expected in str(error.value)
    assert "T0K3N" not in str(error.value)


def test_alert_settings_default_to_the_record_only():
    alerts = load_settings({}).alerts
    assert alerts.webhook_url is None and alerts.emails == ()
    alerts = load_settings(
        {
            "SEGFLOW_ALERT_WEBHOOK_URL": " https://hooks.example.com/segflow ",
            "SEGFLOW_ALERT_EMAILS": "a@example.com,, b@example.com ",
        }
    ).alerts
    assert alerts.webhook_url == "https://hooks.example.com/segflow"
    assert alerts.emails == ("a@example.com", "b@example.com")


def test_every_task_of_every_dag_records_its_failure(dbt_manifest: Path):
    from airflow.dag_processing.dagbag import DagBag

    dags = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags")).dags
    assert set(dags) == {"segment_pipeline", "train_models", "refresh_triggers"}
    for dag in dags.values():
        for task in dag.tasks:
            callbacks = task.on_failure_callback
            # A mapped task keeps the argument as given until it is expanded into a list.
            callbacks = [callbacks] if callable(callbacks) else callbacks
            assert record_task_failure in callbacks, (dag.dag_id, task.task_id)
