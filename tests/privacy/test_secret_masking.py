"""Secrets stay secret (ml/privacy/secret_masking.py): the one masking rule, and where it is applied:
ConfigError messages, log records, failure records, DAG import errors, the CLI, and the
command lines of the Makefile and the first Airflow user's creation."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ml
from ml.config import load_settings
from ml.errors import ConfigError
from ml.monitoring.alerts import failure_record, record_task_failure
from ml.privacy.secret_masking import (
    MASK,
    SecretMaskingFilter,
    install_log_masking,
    mask_secrets,
    secret_values,
)
from tests.conftest import PROJECT_DIR
from tests.monitoring.test_alerts import data_dir, failure_context, recorded  # noqa: F401  (fixture)

PASSWORD = "hunter2-Secret"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # URIs: scheme://user:***@host
        (
            "postgresql+psycopg2://mlflow:s3cret@postgres:5432/mlflow",
            "postgresql+psycopg2://mlflow:***@postgres:5432/mlflow",
        ),
        ("redis://:r3dis@redis:6379/0", "redis://:***@redis:6379/0"),
        (
            "MLFLOW_TRACKING_URI='mysql://u:pw@db/x': bad",
            "MLFLOW_TRACKING_URI='mysql://u:***@db/x': bad",
        ),
        ("u:pw@host/db", "u:***@host/db"),  # the scheme forgotten
        ("postgresql://u:pa/s@s@host/db", "postgresql://u:***@host/db"),  # unencoded / and @
        ('{"uri":"http://u:pw@h/x"}', '{"uri":"http://u:***@h/x"}'),
        # Authorization headers and bearer tokens
        ("Authorization: Bearer eyJhbGciOi.J9.abc", "Authorization: Bearer ***"),
        ("{'Authorization': 'Basic dXNlcjpwYXNz'}", "{'Authorization': 'Basic ***'}"),
        ("header Bearer abcdefghijklmnopqrstuvwxyz", "header Bearer ***"),
        # token=, password= and their kin, in query strings, DSNs, reprs and JSON
        (
            "https://hooks.example.com/x?token=abc123&team=7&password=pw",
            "https://hooks.example.com/x?token=***&team=7&password=***",
        ),
        ("host=db password=pw dbname=x", "host=db password=*** dbname=x"),
        (
            "?api_key=k1&X-Amz-Signature=ff&access_token=t",
            "?api_key=***&X-Amz-Signature=***&access_token=***",
        ),
        ("connect(password='pw', user='u')", "connect(password='***', user='u')"),
        (
            '{"password": "pw", "client_secret":"s", "name": "n"}',
            '{"password": "***", "client_secret":"***", "name": "n"}',
        ),
    ],
)
def test_each_kind_of_secret_is_masked(text: str, expected: str):
    assert mask_secrets(text) == expected
    assert mask_secrets(expected) == expected  # masking twice changes nothing


@pytest.mark.parametrize(
    "text",
    [
        "http://mlflow:5000 sqlite:////data/mlflow/mlflow.db http://user@host file:///x",
        "models:/segflow_churn@champion, run manual__2026-06-30T00:00:00+00:00 at 12:30",
        "e.g. Jane.Doe+shop@mail.example.com, worker default@abc123",
        "Basic authentication, a Bearer token, max_tokens=5, key=customer_id",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
    ],
)
def test_ordinary_text_is_left_alone(text: str):
    assert mask_secrets(text) == text


def test_the_values_of_secret_environment_variables_are_masked(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    monkeypatch.setenv("SEGFLOW_TEST_DB_PASSWORD", "pass/word@1")
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "Zm9vYmFyYmF6cXV4cXV1eA==")
    monkeypatch.setenv("SEGFLOW_ALERT_WEBHOOK_URL", "https://hooks.example.com/T0/B0/xyzzy")
    monkeypatch.setenv("AIRFLOW__CELERY__BROKER_URL", "redis://:brokerpass@redis:6379/0")
    monkeypatch.setenv("SEGFLOW_TEST_SHORT_TOKEN", "abc")  # too short to mask by value
    monkeypatch.setenv("SEGFLOW_TEST_PLAIN", "plain-value")  # not a secret's name
    text = (
        f"login {PASSWORD} and pass%2Fword%401, fernet Zm9vYmFyYmF6cXV4cXV1eA==, "
        "hook https://hooks.example.com/T0/B0/xyzzy, broker brokerpass, abc, plain-value"
    )
    assert mask_secrets(text) == (
        f"login {MASK} and {MASK}, fernet {MASK}, hook {MASK}, broker {MASK}, abc, plain-value"
    )
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    assert PASSWORD in mask_secrets(f"login {PASSWORD}")  # the environment is read again
    assert secret_values({"X_SECRET": PASSWORD, "Y": "postgresql://u:dbpass1@h/x"}) == [
        PASSWORD,
        "dbpass1",
    ]


@pytest.mark.parametrize(
    "uri",
    [
        f"ftp://segflow:{PASSWORD}@db.example.com/mlflow",  # a scheme MLflow does not know
        f"segflow:{PASSWORD}@db.example.com/mlflow",  # no scheme
        f"postgresql:/segflow:{PASSWORD}@db.example.com/mlflow",  # one slash
    ],
)
def test_a_bad_tracking_uri_is_reported_without_its_password(uri: str):
    with pytest.raises(ConfigError) as error:
        load_settings({"MLFLOW_TRACKING_URI": uri})
    message = str(error.value)
    assert "MLFLOW_TRACKING_URI" in message and "expected a URI" in message
    assert PASSWORD not in message
    assert "db.example.com" in message  # the rest is still there to find the mistake


def test_every_config_error_is_masked(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SEGFLOW_PSEUDONYM_KEY", PASSWORD)
    error = ConfigError(f"X=postgresql://u:pw@h/db, key {PASSWORD}, ?token=abc")
    assert str(error) == "X=postgresql://u:***@h/db, key ***, ?token=***"


def test_log_records_are_masked_in_their_final_message_and_exception():
    assert getattr(logging.getLogRecordFactory(), "segflow_masking", False), "import ml installs it"
    install_log_masking()  # a second time changes nothing
    assert getattr(logging.getLogRecordFactory(), "segflow_masking", False)

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    logger = logging.getLogger("ml.test_secret_masking")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("tracking at %s", "postgresql://u:pw@h/db")
        try:
            raise RuntimeError("cannot connect: password=pw")
        except RuntimeError:
            logger.exception("failed for %s", "Authorization: Bearer abcdefghijklmnopqrstu")
        logger.info("plain %s and %d", "text", 3)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    lines = stream.getvalue()
    assert "pw@" not in lines and "password=pw" not in lines and "abcdefghijklmnop" not in lines
    assert "ml.test_secret_masking tracking at postgresql://u:***@h/db" in lines
    assert "failed for Authorization: Bearer ***\nTraceback" in lines
    assert "RuntimeError: cannot connect: password=***" in lines
    assert "plain text and 3" in lines


def test_the_filter_leaves_a_record_without_secrets_as_it_was():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "a %s", ("b",), None)
    assert SecretMaskingFilter().filter(record)
    assert (record.msg, record.args) == ("a %s", ("b",))


def test_a_failure_record_holds_no_secret(data_dir: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: F811
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    error = RuntimeError(
        f"login as segflow/{PASSWORD} to postgresql://mlflow:dbpass@postgres/mlflow failed"
        " (https://hooks.example.com/x?token=abc123), customer jane@example.com"
    )
    assert failure_record(failure_context(error))["exception_message"] == (
        "login as segflow/*** to postgresql://mlflow:***@postgres/mlflow failed"
        " (https://hooks.example.com/x?token=***), customer <e-mail>"
    )
    record_task_failure(failure_context(error))
    (line,) = (data_dir / "reports" / "failures.jsonl").read_text().splitlines()
    for secret in (PASSWORD, "dbpass", "abc123"):
        assert secret not in line
    assert recorded(data_dir)[0]["exception_class"] == "builtins.RuntimeError"


def test_a_bad_secret_setting_breaks_no_dag_and_its_error_hides_the_password(tmp_path: Path):
    """DAG files read no setting at parse time: a tracking URI with a password that cannot be
    used is no import error in Airflow's UI; the task that reads the settings fails with an
    error that names the setting without the password."""
    script = textwrap.dedent(
        """
        import json, sys
        from airflow.dag_processing.dagbag import DagBag
        from ml.config import load_settings
        from ml.errors import ConfigError

        bag = DagBag(dag_folder=sys.argv[1])
        try:
            load_settings()
        except ConfigError as error:
            task_error = f"{type(error).__name__}: {error}"
        print(json.dumps({"import_errors": bag.import_errors, "dags": sorted(bag.dag_ids),
                          "task_error": task_error}))
        """
    )
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"ftp://segflow:{PASSWORD}@db.example.com/mlflow",
        "SEGFLOW_DATA_DIR": str(tmp_path / "data"),
        "AIRFLOW__CORE__DAGBAG_IMPORT_ERROR_TRACEBACKS": "True",
    }
    parsed = subprocess.run(
        [sys.executable, "-c", script, str(PROJECT_DIR / "dags")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert parsed.returncode == 0, parsed.stderr[-3000:]
    result = json.loads(parsed.stdout.strip().splitlines()[-1])
    assert result["import_errors"] == {}
    assert result["dags"] == ["refresh_triggers", "segment_pipeline", "train_models"]
    assert "ConfigError" in result["task_error"] and "MLFLOW_TRACKING_URI" in result["task_error"]
    assert "ftp://segflow:***@db.example.com/mlflow" in result["task_error"]
    assert PASSWORD not in parsed.stdout + parsed.stderr


def test_the_cli_shows_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    from ml import cli

    monkeypatch.setenv("SEGFLOW_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"postgresql://segflow:{PASSWORD}@db/mlflow")
    assert cli.main(["config"]) == 0
    shown = capsys.readouterr().out
    assert "postgresql://segflow:***@db/mlflow" in shown and PASSWORD not in shown

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"ftp://segflow:{PASSWORD}@db/mlflow")
    assert cli.main(["config"]) == 2
    error = capsys.readouterr().err
    assert "configuration error: MLFLOW_TRACKING_URI" in error and PASSWORD not in error

    # An unexpected error's traceback is printed masked.
    try:
        raise RuntimeError(f"postgresql://segflow:{PASSWORD}@db/mlflow is down")
    except RuntimeError as unexpected:
        cli._print_masked_traceback(type(unexpected), unexpected, unexpected.__traceback__)
    error = capsys.readouterr().err
    assert "RuntimeError: postgresql://segflow:***@db/mlflow is down" in error
    assert PASSWORD not in error


def test_the_first_airflow_user_gets_its_password_from_the_environment():
    from ml.orchestration.airflow_admin import admin_arguments

    arguments = admin_arguments(
        {
            "AIRFLOW_ADMIN_USERNAME": "admin",
            "AIRFLOW_ADMIN_PASSWORD": PASSWORD,
            "AIRFLOW_ADMIN_EMAIL": "admin@example.invalid",
        }
    )
    assert (arguments.username, arguments.password, arguments.role) == ("admin", PASSWORD, "Admin")
    assert arguments.use_random_password is False
    with pytest.raises(ConfigError, match="AIRFLOW_ADMIN_PASSWORD: "):
        admin_arguments({"AIRFLOW_ADMIN_USERNAME": "admin", "AIRFLOW_ADMIN_EMAIL": "a@b.c"})


def test_make_up_gives_mlflow_its_store_uri_through_the_environment():
    makefile = (PROJECT_DIR / "Makefile").read_text()
    assert "--backend-store-uri" not in makefile
    assert (
        'MLFLOW_BACKEND_STORE_URI="$$($(BIN)/segflow config --get mlflow_tracking_uri)"' in makefile
    )


def test_ml_installs_the_masking_for_every_process_that_imports_it():
    assert "install_log_masking()" in Path(ml.__file__).read_text()
