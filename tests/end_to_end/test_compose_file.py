"""The production stack's definition: docker-compose.yml, .env.example and the Dockerfile.
(tests/end_to_end/test_production_stack.py runs the same components natively.)"""

from __future__ import annotations

import re

import pytest
import yaml

from ml.orchestration.dag_defaults import WAREHOUSE_QUEUE
from tests.conftest import COMPOSE_TEXT, PROJECT_DIR
from tests.conftest import COMPOSE_VARIABLE as VARIABLE

COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
ENV_EXAMPLE = (PROJECT_DIR / ".env.example").read_text()
LONG_RUNNING = sorted(name for name, service in SERVICES.items() if name != "airflow-init")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|_KEY$|TOKEN")
CONNECTION_NAME = re.compile(r"SQL_ALCHEMY_CONN|RESULT_BACKEND|BROKER_URL|STORE_URI")
AIRFLOW_SERVICES = sorted(name for name in SERVICES if name.startswith("airflow-"))
WORKERS = ("airflow-worker", "airflow-warehouse-worker")


def environment(service: dict) -> dict[str, str]:
    return {name: str(value) for name, value in (service.get("environment") or {}).items()}


def example_values() -> dict[str, str]:
    """NAME=value lines of .env.example, commented-out optional ones included."""
    return dict(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=(.*)$", ENV_EXAMPLE, flags=re.MULTILINE))


def test_the_stack_has_the_services_of_airflows_official_layout_and_an_mlflow_server():
    assert set(SERVICES) == {
        "postgres",
        "redis",
        "mlflow",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
        "airflow-warehouse-worker",
    }
    airflow_env = COMPOSE["x-airflow-common-env"]
    assert airflow_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert airflow_env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("FabAuthManager")
    assert airflow_env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    scheduler = environment(SERVICES["airflow-scheduler"])
    assert scheduler["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert scheduler["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    for name in AIRFLOW_SERVICES:
        assert environment(SERVICES[name]).items() >= airflow_env.items(), name
    assert environment(SERVICES["mlflow"])["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_every_long_running_service_has_a_health_check_and_restarts(name: str):
    service = SERVICES[name]
    assert service["healthcheck"]["test"], name
    assert service["restart"] == "always", name


def test_services_start_once_what_they_need_is_healthy_or_done():
    for name, service in SERVICES.items():
        for needed, condition in (service.get("depends_on") or {}).items():
            expected = (
                "service_completed_successfully" if needed == "airflow-init" else "service_healthy"
            )
            assert condition == {"condition": expected}, f"{name} -> {needed}"
    for name in LONG_RUNNING:
        if name.startswith("airflow-"):
            assert "airflow-init" in SERVICES[name]["depends_on"], name
    assert {"postgres", "redis"} <= set(SERVICES["airflow-init"]["depends_on"])
    assert set(SERVICES["mlflow"]["depends_on"]) == {"postgres"}
    for worker in ("airflow-worker", "airflow-warehouse-worker"):
        assert {"mlflow", "airflow-apiserver"} <= set(SERVICES[worker]["depends_on"])


def test_every_published_port_is_bound_to_127_0_0_1():
    published = [(name, port) for name, s in SERVICES.items() for port in s.get("ports", [])]
    assert {name for name, _ in published} == {"airflow-apiserver", "mlflow"}
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"


def test_no_secret_is_written_in_the_file_and_each_is_required():
    """Secrets and connection URLs take their passwords from ${NAME:?...}: compose refuses to
    start while one is empty, and none has a default."""
    everywhere = [
        (f"{name}.{key}", value)
        for name, service in {"x-airflow-common-env": None, **SERVICES}.items()
        for key, value in (
            COMPOSE["x-airflow-common-env"] if service is None else environment(service)
        ).items()
    ]
    checked = 0
    for where, value in everywhere:
        key = where.rsplit(".", 1)[1]
        if SECRET_NAME.search(key) or CONNECTION_NAME.search(key):
            variables = VARIABLE.findall(str(value))
            assert variables, f"{where} is written in the file: {value!r}"
            for variable, operator, _ in variables:
                assert operator == ":?", f"{where}: ${{{variable}}} must be required (:?)"
            checked += 1
    assert checked >= 15
    # Nothing that looks like a password after a user in a URL, other than a variable.
    for url in re.findall(r"\w+://[^\s\"']+", COMPOSE_TEXT):
        userinfo = url.split("://", 1)[1].split("@", 1)[0] if "@" in url else ""
        if ":" in userinfo:
            assert userinfo.split(":", 1)[1].startswith("${"), url


def test_env_example_documents_every_variable_and_gives_no_secret():
    used = {name for name, _, _ in VARIABLE.findall(COMPOSE_TEXT)}
    documented = example_values()
    assert used <= set(documented), f"not in .env.example: {sorted(used - set(documented))}"
    required = {name for name, operator, _ in VARIABLE.findall(COMPOSE_TEXT) if operator == ":?"}
    for name in required:
        assert documented[name] == "", f".env.example gives {name} a value"
        # Each is explained by a comment above it (the line before, or its group's).
        assert re.search(rf"#[^\n]*\n(?:[A-Z_]+=\n)*{name}=", ENV_EXAMPLE), name


def test_one_worker_serves_the_warehouse_queue_with_one_slot_and_holds_the_data():
    workers = {
        name: service["command"]
        for name, service in SERVICES.items()
        if service.get("command", [])[:3] == ["airflow", "celery", "worker"]
    }
    serving = {
        name
        for name, command in workers.items()
        if WAREHOUSE_QUEUE in command[command.index("--queues") + 1].split(",")
    }
    assert serving == {"airflow-warehouse-worker"}
    command = workers["airflow-warehouse-worker"]
    assert command[command.index("--concurrency") + 1] == "1"
    for name in workers:
        assert "segflow-data:/data" in SERVICES[name]["volumes"], name
    # The landing watcher runs in the triggerer: it lists the files the workers load.
    landing = COMPOSE["x-airflow-common-env"]["SEGFLOW_LANDING_DIR"]
    for name in (*workers, "airflow-triggerer"):
        mounts = [v for v in SERVICES[name]["volumes"] if v.endswith(f":{landing}:ro")]
        assert len(mounts) == 1, name
    assert "segflow-data" in COMPOSE["volumes"]
    assert COMPOSE["x-airflow-common-env"]["SEGFLOW_DATA_DIR"] == "/data"


def test_the_mlflow_server_serves_artifacts_behind_a_login_for_named_hosts():
    mlflow = SERVICES["mlflow"]
    assert mlflow["command"][:2] == ["segflow", "tracking-server"]
    env = environment(mlflow)
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "/mlflow/artifacts"
    assert "mlflow-artifacts:/mlflow/artifacts" in mlflow["volumes"]
    assert "mlflow:5000" in env["SEGFLOW_MLFLOW_ALLOWED_HOSTS"].split(",")
    for name in WORKERS:
        worker = environment(SERVICES[name])
        assert worker["MLFLOW_TRACKING_USERNAME"].startswith("${MLFLOW_ADMIN_USERNAME:?")
        assert worker["MLFLOW_TRACKING_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD:?")


def test_every_library_telemetry_is_off_in_every_airflow_service():
    airflow_env = COMPOSE["x-airflow-common-env"]
    assert airflow_env["SCARF_NO_ANALYTICS"] == "true"  # Cosmos reads it too
    assert airflow_env["AIRFLOW__COSMOS__ENABLE_TELEMETRY"] == "False"
    assert airflow_env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert airflow_env["GX_ANALYTICS_ENABLED"] == "false"
    assert airflow_env["DBT_SEND_ANONYMOUS_USAGE_STATS"] == "false"
    assert airflow_env["DO_NOT_TRACK"] == "true"
    assert environment(SERVICES["mlflow"])["MLFLOW_DISABLE_TELEMETRY"] == "true"


def test_the_image_installs_the_lock_and_runs_as_a_user():
    dockerfile = (PROJECT_DIR / "Dockerfile").read_text()
    assert (
        "uv pip sync --compile-bytecode --python .venv/bin/python requirements.lock" in dockerfile
    )
    users = re.findall(r"^USER (\S+)", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] != "root"
    # The image holds no local data, environment or secrets.
    # The image holds no local data, environment or secrets: everything is left out of the
    # build context but what it names.
    ignored = (PROJECT_DIR / ".dockerignore").read_text().splitlines()
    assert "*" in ignored
    wanted = {line.removeprefix("!").rstrip("/") for line in ignored if line.startswith("!")}
    assert not wanted & {".env", "data", ".airflow", ".venv"}


SECRET_VARIABLE = re.compile(r"PASSWORD|SECRET|_KEY$|TOKEN|WEBHOOK")
"""The .env variables that hold a secret (a webhook URL often carries its token)."""
SECRETS_OF_SERVICE = {
    "postgres": {"POSTGRES_PASSWORD", "AIRFLOW_DB_PASSWORD", "MLFLOW_DB_PASSWORD"},
    "redis": {"REDIS_PASSWORD"},
    "mlflow": {"MLFLOW_DB_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_SECRET_KEY"},
    "airflow-init": {"AIRFLOW_DB_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_ADMIN_PASSWORD"},
    "airflow-apiserver": {
        "AIRFLOW_DB_PASSWORD",
        "AIRFLOW_FERNET_KEY",
        "AIRFLOW_JWT_SECRET",
        "AIRFLOW_API_SECRET_KEY",
    },
    "airflow-scheduler": {
        "AIRFLOW_DB_PASSWORD",
        "AIRFLOW_FERNET_KEY",
        "AIRFLOW_JWT_SECRET",
        "REDIS_PASSWORD",
    },
    "airflow-dag-processor": {
        "AIRFLOW_DB_PASSWORD",
        "AIRFLOW_FERNET_KEY",
        "SEGFLOW_ALERT_WEBHOOK_URL",
    },
    "airflow-triggerer": {"AIRFLOW_DB_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_API_SECRET_KEY"},
    **{
        worker: {
            "AIRFLOW_DB_PASSWORD",  # in Celery's result backend only: no metadata database
            "REDIS_PASSWORD",
            "AIRFLOW_API_SECRET_KEY",
            "MLFLOW_ADMIN_PASSWORD",
            "SEGFLOW_ALERT_WEBHOOK_URL",
        }
        for worker in WORKERS
    },
}
"""Which secret of .env reaches which service: those it uses, no other (README, Production
stack, says why each needs its own)."""


def secrets_given(service: dict) -> set[str]:
    return {
        variable
        for value in environment(service).values()
        for variable, _, _ in VARIABLE.findall(value)
        if SECRET_VARIABLE.search(variable)
    }


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_each_service_gets_only_the_secrets_it_uses(name: str):
    assert secrets_given(SERVICES[name]) == SECRETS_OF_SERVICE[name]


def test_only_the_workers_get_the_mlflow_login():
    holding = {
        name
        for name, service in SERVICES.items()
        if {"MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME"} & set(environment(service))
    }
    assert holding == set(WORKERS)
    # The DAG processor parses the DAGs without it: no DAG file talks to MLflow at parse time.
    assert "MLFLOW_TRACKING_PASSWORD" not in environment(SERVICES["airflow-dag-processor"])
    assert "MLFLOW_TRACKING_PASSWORD" not in COMPOSE["x-airflow-common-env"]


def test_the_workers_have_no_metadata_database_and_sign_no_tokens():
    for name in WORKERS:
        env = environment(SERVICES[name])
        assert not {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
            "AIRFLOW__CORE__FERNET_KEY",
            "AIRFLOW__API_AUTH__JWT_SECRET",
        } & set(env), name
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql")


def as_text(command: str | list[str] | None) -> str:
    return command if isinstance(command, str) else " ".join(command or [])


def on_command_lines(script: str) -> str:
    """What of a command (a shell script) becomes processes' arguments: here-document bodies
    (a process's standard input) and NAME=value assignments (its environment) taken out."""
    kept, delimiter = [], None
    for line in script.splitlines():
        if delimiter is not None:
            delimiter = None if line.strip() == delimiter else delimiter
            continue
        if heredoc := re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line):
            delimiter = heredoc.group(1)
        kept.append(re.sub(r"\b[A-Z_][A-Z0-9_]*=(\"[^\"]*\"|'[^']*'|\S+)", "", line))
    return "\n".join(kept)


def commands(service: dict) -> list[str]:
    return [
        as_text(service.get("command")),
        as_text(service.get("entrypoint")),
        as_text((service.get("healthcheck") or {}).get("test")),
    ]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_no_command_puts_a_secret_on_a_command_line(name: str):
    """`ps` on the Docker host shows every container's command lines: a secret reaches a
    process through its environment or its standard input, never its arguments."""
    # Those of .env (compose would write their values into the command) and the service's own.
    candidates = {variable for variable, _, _ in VARIABLE.findall(COMPOSE_TEXT)}
    candidates |= set(environment(SERVICES[name]))
    secret_names = {
        variable
        for variable in candidates
        if SECRET_VARIABLE.search(variable) or CONNECTION_NAME.search(variable)
    }
    for command in commands(SERVICES[name]):
        arguments = on_command_lines(command)
        referenced = set(re.findall(r"\$\$?\{?(\w+)", arguments))
        assert not referenced & secret_names, f"{name}: {command!r}"
        for flag in ("--password", "--requirepass", "--conn-password", "--backend-store-uri"):
            assert flag not in arguments, f"{name}: {command!r}"


def test_the_first_airflow_user_is_created_without_its_password_in_argv():
    command = as_text(SERVICES["airflow-init"]["command"])
    assert "users create" not in command
    assert "python -m ml.orchestration.airflow_admin" in command
    assert "AIRFLOW_ADMIN_PASSWORD" in environment(SERVICES["airflow-init"])


def test_redis_reads_its_password_from_standard_input():
    command = as_text(SERVICES["redis"]["command"])
    assert "redis-server -" in command and 'requirepass "$$REDIS_PASSWORD"' in command
    assert "REDIS_PASSWORD" not in on_command_lines(command)


def test_postgres_init_gives_psql_the_passwords_on_standard_input():
    script = (PROJECT_DIR / "deploy" / "postgres-init.sh").read_text()
    psql = script[script.index("\npsql ") : script.index("<<'SQL'")]
    assert "PASSWORD" not in psql, psql
    assert "\\getenv airflow_password AIRFLOW_DB_PASSWORD" in script
    assert "\\getenv mlflow_password MLFLOW_DB_PASSWORD" in script


def test_the_image_declares_no_secret():
    dockerfile = (PROJECT_DIR / "Dockerfile").read_text()
    declared = re.findall(r"^\s*(?:ARG|ENV)\s+(.*)$", dockerfile, flags=re.MULTILINE)
    names = {name for line in declared for name in re.findall(r"([A-Z_][A-Z0-9_]*)=", line)}
    assert not {name for name in names if SECRET_VARIABLE.search(name)}, names
