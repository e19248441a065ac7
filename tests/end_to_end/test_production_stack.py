"""segflow on the production stack of docker-compose.yml, run natively: this machine has no
Docker engine, so the test starts the same components as processes, configured by the compose
file's own settings wherever a container's setting makes sense outside a container.

- Postgres (127.0.0.1:5432): a fresh database for Airflow's metadata and one for MLflow's.
- Redis (127.0.0.1:6379, a database of its own) as Celery's broker.
- airflow-init's script from the compose file, then the API server (logins by FAB), scheduler,
  DAG processor, triggerer, and the two Celery workers with the compose file's commands: one
  for the `warehouse` queue, one for everything else.
- The MLflow tracking server (`segflow tracking-server`, the compose file's `mlflow` command):
  Postgres backend, served artifacts, basic authentication.

What it shows:
- Neither server answers without credentials.
- The first segment_pipeline run finds no model, trains every one into the tracking server
  (the files uploaded to the server's artifact store) and publishes the date's segments with
  them; the tasks that open the warehouse run on the warehouse queue.
- A backfill made with `airflow backfill create` publishes, for each of its dates, exactly what
  a single run of that date publishes (`airflow dags test` on its own metadata and data), with
  the champions of the tracking server.
- segment_pipeline and train_models triggered together both succeed, their tasks in the
  `warehouse` pool take turns instead of colliding, and train_models registers a new version,
  judged by its gate, through the server (training runs off the warehouse queue).
- No log of any of it holds a secret or a customer's e-mail address, and the exports are
  readable by their owner only.

Postgres and Redis must be reachable. Where they are not (a laptop without them) the module is
skipped, except in CI (CI=true), where that fails.

The scheduler creates no runs from the DAGs' schedules here (`use_job_schedule` off): every run
is one the test asked for, which the tests check.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import duckdb
import pytest
import yaml

from ml.config import Settings
from ml.models.catalogue import MODEL_KINDS
from ml.orchestration.dag_defaults import WAREHOUSE_POOL, WAREHOUSE_QUEUE
from tests.conftest import (
    COMPOSE_TEXT,
    COMPOSE_VARIABLE,
    PROJECT_DIR,
    TRAINED_AS_OF,
    free_port,
    processes_with_env,
)

pytestmark = pytest.mark.stack
BIN = Path(sys.executable).parent
AIRFLOW = str(BIN / "airflow")
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS = ("127.0.0.1", 6379)
AIRFLOW_SERVICES = tuple(
    name for name in COMPOSE["services"] if name.startswith("airflow-") and name != "airflow-init"
)
"""Every long-running Airflow service of the compose file, workers included."""
DAG_IDS = ("segment_pipeline", "train_models")
BACKFILL_DATES = [TRAINED_AS_OF - dt.timedelta(days=days) for days in (1, 0)]
STACK_START_TIMEOUT_S = 240
RUNS_TIMEOUT_S = 900
FINISHED = {"success", "failed"}
STARTED_BY = "SEGFLOW_TEST_STARTED_BY"
"""Set in the environment of every process this module starts, so that teardown finds them all."""
PUBLISHED_TABLES = ("customer_segments", "audience_members", "audience_definitions")
PUBLICATION_RUN_METADATA = ("run_id", "published_at")
"""The columns of published.publications (and keys of manifest.json) that describe the run
rather than the data: which run published, and when. The published tables have none."""
CONTAINER_SETTINGS = {
    "AIRFLOW_HOME",
    "AIRFLOW__CORE__DAGS_FOLDER",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__BASE_URL",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "SEGFLOW_DATA_DIR",
    "SEGFLOW_LANDING_DIR",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "SEGFLOW_ALERT_WEBHOOK_URL",
    "SEGFLOW_ALERT_EMAILS",
    "SEGFLOW_AUTO_PROMOTE",
    "SEGFLOW_DUCKDB_MEMORY_LIMIT",
}
"""The compose file's Airflow settings that name a secret, a container's host or path, or a
value from .env: the test gives each a local equivalent. Every other setting is used as is."""


def interpolated(value: str) -> str:
    """A compose value with each ${NAME:-default} as its default and $$ as $. A required
    ${NAME:?message} is a setting the test must give a local equivalent of instead."""

    def fill(match: re.Match) -> str:
        name, operator, default = match.groups()
        assert operator == ":-", f"${{{name}}} is required by the compose file: give it locally"
        return default

    return COMPOSE_VARIABLE.sub(fill, value).replace("$$", "$")


def compose_command(service: str) -> list[str]:
    return [interpolated(part) for part in COMPOSE["services"][service]["command"]]


def tail(path: Path, chars: int = 4000) -> str:
    return (
        f"\n--- {path} (end)\n{path.read_text(errors='replace')[-chars:]}" if path.exists() else ""
    )


def task_log(path: Path, lines: int = 40) -> str:
    """The end of a task's log (JSON lines), as `time level event` and any exception."""
    readable = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            readable.append(line)
            continue
        readable.append(
            f"{record.get('timestamp', '')[11:19]} {record.get('level')} {record.get('event')}"
        )
        readable += [
            f"    {error['exc_type']}: {error['exc_value']}"
            for error in record.get("error_detail", [])
        ]
    return f"\n--- {path} (end)\n" + "\n".join(readable[-lines:])


def stop_process_groups(processes: list[subprocess.Popen], grace_s: float = 30) -> None:
    """SIGTERM to each process and everything it started (its group), all at once so that they
    shut down side by side; SIGKILL to whatever is left after the grace."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0, deadline - time.monotonic()))
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def kill_processes_started_by(marker: str) -> None:
    """SIGKILL every process whose environment has STARTED_BY=marker."""
    for pid in processes_with_env(STARTED_BY, marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def http(
    url: str,
    method: str = "GET",
    body: dict | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    """(status, body) of a request; an HTTP error status is returned, not raised."""
    request = urllib.request.Request(
        url,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def basic_auth(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@dataclass
class ProductionStack:
    env: dict[str, str]
    """The Airflow services' environment (what x-airflow-common-env says, made local)."""
    url: str
    mlflow_url: str
    home: Path
    mlflow_artifacts: Path
    secrets: dict[str, str]
    database_prefix: str
    """The names of the Postgres databases this stack made start with it; so do a test's own."""
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    token: str = ""

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        """A call to Airflow's REST API as the admin user."""
        status, text = http(
            f"{self.url}/api/v2{path}", method, body, {"Authorization": f"Bearer {self.token}"}
        )
        assert status < 300, f"{method} {path}: {status} {text[:500]}"
        return json.loads(text)

    def log_in(self) -> None:
        status, text = http(
            f"{self.url}/auth/token",
            "POST",
            {"username": self.env["AIRFLOW_ADMIN_USERNAME"], "password": self.secrets["airflow"]},
        )
        assert status in (200, 201), f"no token for the admin: {status} {text[:300]}"
        self.token = json.loads(text)["access_token"]

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=120
        )

    def service_logs(self) -> str:
        return "".join(tail(path, 3000) for path in sorted((self.home / "run").glob("*.log")))

    def runs(self, dag_id: str = "~") -> list[dict]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns?limit=100&order_by=logical_date")[
            "dag_runs"
        ]

    def task_instances(self, run: dict) -> list[dict]:
        path = f"/dags/{run['dag_id']}/dagRuns/{run['dag_run_id']}/taskInstances?limit=200"
        return self.api("GET", path)["task_instances"]

    def failure_report(self, runs: list[dict]) -> str:
        """The runs' states, the logs of their tasks that failed or retried, and the services'."""
        report = [f"{r['dag_id']} {r['dag_run_id']}: {r['state']}" for r in runs]
        for run in runs:
            for ti in self.task_instances(run):
                if ti["state"] in {"failed", "up_for_retry", "upstream_failed"}:
                    folder = (
                        self.home
                        / "logs"
                        / f"dag_id={run['dag_id']}"
                        / f"run_id={run['dag_run_id']}"
                        / f"task_id={ti['task_id']}"
                    )
                    report += [task_log(log) for log in sorted(folder.rglob("attempt=*.log"))]
        return "\n".join(report) + self.service_logs()

    def trigger(self, dag_id: str, conf: dict) -> str:
        run_id = f"test__{dag_id}__{time.time_ns()}"
        triggered = self.cli(
            "dags", "trigger", dag_id, "--run-id", run_id, "--conf", json.dumps(conf)
        )
        assert triggered.returncode == 0, triggered.stdout[-3000:] + triggered.stderr[-3000:]
        return run_id

    def wait_until_finished(self, wanted: dict[str, list[str]]) -> list[dict]:
        """Poll until every wanted run ({dag_id: [run_id, ...]}) has finished; a failed run or
        the timeout fails the test with the task logs."""
        deadline = time.monotonic() + RUNS_TIMEOUT_S
        while True:
            runs = [
                run
                for dag_id, run_ids in wanted.items()
                for run in self.runs(dag_id)
                if run["dag_run_id"] in run_ids
            ]
            states = {run["state"] for run in runs}
            if "failed" in states or (
                len(runs) == sum(map(len, wanted.values())) and states <= FINISHED
            ):
                break
            for name, process in self.processes.items():
                assert process.poll() is None, f"{name} exited" + self.failure_report(runs)
            assert time.monotonic() < deadline, (
                f"runs not finished after {RUNS_TIMEOUT_S} s" + self.failure_report(runs)
            )
            time.sleep(1)
        assert states == {"success"}, self.failure_report(runs)
        return runs

    @contextlib.contextmanager
    def mlflow_client(self) -> Iterator:
        """An MLflow client of the tracking server, logged in as the pipeline is."""
        import mlflow

        login = {
            name: self.env[name]
            for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
        }
        with mock.patch.dict(os.environ, login):
            yield mlflow.MlflowClient(self.mlflow_url, self.mlflow_url)

    def champions(self) -> dict[str, int]:
        with self.mlflow_client() as client:
            return {
                kind: int(client.get_model_version_by_alias(f"segflow_{kind}", "champion").version)
                for kind in MODEL_KINDS
            }

    def stored_artifact(self, uri: str) -> Path:
        """Where the server keeps the artifact `mlflow-artifacts:/<path>`."""
        assert uri.startswith("mlflow-artifacts:/"), f"{uri} was not uploaded through the server"
        return self.mlflow_artifacts / uri.removeprefix("mlflow-artifacts:/").lstrip("/")


def reachable(address: tuple[str, int]) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(address, timeout=3):
        return True
    return False


@pytest.fixture(scope="module")
def services() -> None:
    """Postgres and Redis answer; skipped without them, except in CI."""
    missing = [
        name
        for name, address in (
            ("Postgres", (POSTGRES["host"], POSTGRES["port"])),
            ("Redis", REDIS),
        )
        if not reachable(address)
    ]
    if missing:
        message = f"{' and '.join(missing)} not reachable on 127.0.0.1 (the production stack)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@contextlib.contextmanager
def fresh_databases(prefix: str, names: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """Empty Postgres databases `<prefix>_<name>`, dropped afterwards; yields their URIs."""
    import psycopg2

    admin = psycopg2.connect(dbname="postgres", **POSTGRES)
    admin.autocommit = True
    databases = {name: f"{prefix}_{name}" for name in names}
    try:
        with admin.cursor() as cursor:
            for database in databases.values():
                cursor.execute(f'CREATE DATABASE "{database}"')
        yield {
            name: f"postgresql+psycopg2://{POSTGRES['user']}@{POSTGRES['host']}:{POSTGRES['port']}/{database}"
            for name, database in databases.items()
        }
    finally:
        with admin.cursor() as cursor:
            for database in databases.values():
                cursor.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()


def local_airflow_env(
    root: Path, databases: dict[str, str], broker: str, mlflow_url: str, landing: Path, port: int
) -> tuple[dict[str, str], dict[str, str]]:
    """The Airflow services' environment: the compose file's x-airflow-common-env, with a local
    equivalent for each of CONTAINER_SETTINGS, and the test's own settings. Returns it and the
    secrets in it."""
    from cryptography.fernet import Fernet

    generated = {
        "airflow": secrets.token_hex(16),
        "mlflow": secrets.token_hex(16),
        "fernet": Fernet.generate_key().decode(),
        "api": secrets.token_hex(24),
        "jwt": secrets.token_hex(32),
        "mlflow_flask": secrets.token_hex(24),
    }
    compose_env = COMPOSE["x-airflow-common-env"]
    in_container = {
        name
        for name, value in compose_env.items()
        if "${" in str(value) or "://" in str(value) or str(value).startswith("/")
    }
    assert in_container <= CONTAINER_SETTINGS, in_container - CONTAINER_SETTINGS
    metadata = databases["airflow"]
    env = {
        **os.environ,
        **{
            name: str(value)
            for name, value in compose_env.items()
            if name not in CONTAINER_SETTINGS
        },
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        STARTED_BY: str(root),
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_DIR / "dags"),
        "AIRFLOW__CORE__FERNET_KEY": generated["fernet"],
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{metadata}",
        "AIRFLOW__CELERY__BROKER_URL": broker,
        "AIRFLOW__API__SECRET_KEY": generated["api"],
        "AIRFLOW__API_AUTH__JWT_SECRET": generated["jwt"],
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "SEGFLOW_DATA_DIR": str(root / "data"),
        "SEGFLOW_LANDING_DIR": str(landing),
        "MLFLOW_TRACKING_URI": mlflow_url,
        "MLFLOW_TRACKING_USERNAME": "segflow",
        "MLFLOW_TRACKING_PASSWORD": generated["mlflow"],
        "SEGFLOW_ALERT_WEBHOOK_URL": "",
        "SEGFLOW_ALERT_EMAILS": "",
        "SEGFLOW_AUTO_PROMOTE": "true",
        "SEGFLOW_DUCKDB_MEMORY_LIMIT": "2GB",
        # airflow-init's
        "AIRFLOW_ADMIN_USERNAME": "admin",
        "AIRFLOW_ADMIN_PASSWORD": generated["airflow"],
        "AIRFLOW_ADMIN_EMAIL": "airflow-admin@segflow.invalid",
        # The test's own: one machine, quick parsing, only the runs the tests make.
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        # A task process that closed its sockets before exiting (most do) is seen to have exited
        # at its supervisor's next heartbeat check, and holds the worker's slot until then:
        # checked every second instead of every 5 s.
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
        # As `trained_settings` trains (which the first run repeats): two snapshots.
        "SEGFLOW_TRAINING_SNAPSHOTS": "2",
    }
    return env, generated


def start(name: str, command: list[str], env: dict[str, str], run_dir: Path) -> subprocess.Popen:
    with open(run_dir / f"{name}.log", "w") as log:
        return subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=run_dir,
        )


@pytest.fixture(scope="module")
def stack(
    services: None, trained_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProductionStack]:
    """The production stack on fresh databases, with both DAGs unpaused. Its data folder starts
    as a copy of `trained_settings`' (1,000 customers over 240 days up to TRAINED_AS_OF,
    ingested, features built) without its models: the tracking server starts empty. Stopped
    afterwards, and its databases dropped, whatever happened."""
    import redis

    root = tmp_path_factory.mktemp("production")
    run_dir = root / "airflow" / "run"
    run_dir.mkdir(parents=True)
    shutil.copytree(
        trained_settings.data_dir, root / "data", ignore=shutil.ignore_patterns("mlflow")
    )
    port, mlflow_port = free_port(), free_port()
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    redis_db = random.randrange(1, 16)
    prefix = f"segflow_test_{os.getpid()}_{secrets.token_hex(3)}"
    with fresh_databases(prefix, ("airflow", "mlflow")) as databases:
        env, generated = local_airflow_env(
            root,
            databases,
            f"redis://{REDIS[0]}:{REDIS[1]}/{redis_db}",
            mlflow_url,
            trained_settings.landing_dir,
            port,
        )
        stack = ProductionStack(
            env=env,
            url=f"http://127.0.0.1:{port}",
            mlflow_url=mlflow_url,
            home=root / "airflow",
            mlflow_artifacts=root / "mlflow-artifacts",
            secrets=generated,
            database_prefix=prefix,
        )
        try:
            started = time.monotonic()
            mlflow_env = {
                **{
                    name: str(value)
                    for name, value in COMPOSE["services"]["mlflow"]["environment"].items()
                },
                **env,
                "MLFLOW_BACKEND_STORE_URI": databases["mlflow"],
                "MLFLOW_ARTIFACTS_DESTINATION": str(stack.mlflow_artifacts),
                "MLFLOW_AUTH_ADMIN_USERNAME": env["MLFLOW_TRACKING_USERNAME"],
                "MLFLOW_AUTH_ADMIN_PASSWORD": generated["mlflow"],
                "MLFLOW_FLASK_SERVER_SECRET_KEY": generated["mlflow_flask"],
                "SEGFLOW_MLFLOW_ALLOWED_HOSTS": f"127.0.0.1:{mlflow_port},localhost:{mlflow_port}",
            }
            server = compose_command("mlflow")
            assert server[:2] == ["segflow", "tracking-server"], server
            stack.processes["mlflow"] = start(
                "mlflow",
                [
                    str(BIN / "segflow"),
                    "tracking-server",
                    "--port",
                    str(mlflow_port),
                    "--workers",
                    "1",
                ],
                mlflow_env,
                run_dir,
            )
            # The tracking server needs nothing of Airflow's: it starts while airflow-init runs.
            init = subprocess.run(
                compose_command("airflow-init"),
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                cwd=run_dir,
            )
            (run_dir / "airflow-init.log").write_text(init.stdout + init.stderr)
            assert init.returncode == 0, tail(run_dir / "airflow-init.log")
            for service in AIRFLOW_SERVICES:
                command = compose_command(service)
                # Two workers on one host: each its own log server port.
                service_env = {**env, "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}
                stack.processes[service] = start(service, command, service_env, run_dir)
            wait_until_ready(stack)
            for dag_id in DAG_IDS:
                assert not stack.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})["is_paused"]
            print(f"\nproduction stack up in {time.monotonic() - started:.0f} s")
            yield stack
        finally:
            stop_process_groups(list(stack.processes.values()))
            # Airflow's task supervisor gives each task a process group of its own: tasks that
            # outlived their scheduler (a failed test) are found by their environment.
            kill_processes_started_by(str(root))
            redis.Redis(host=REDIS[0], port=REDIS[1], db=redis_db).flushdb()


def wait_until_ready(stack: ProductionStack) -> None:
    """The MLflow server answers, the admin can log in to the API, the scheduler, DAG
    processor and triggerer heartbeat, and both DAGs are parsed (and paused)."""
    deadline = time.monotonic() + STACK_START_TIMEOUT_S
    while True:
        for name, process in stack.processes.items():
            assert process.poll() is None, f"{name} exited" + stack.service_logs()
        with contextlib.suppress(OSError, AssertionError, KeyError):
            assert http(f"{stack.mlflow_url}/health")[0] == 200
            health = json.loads(http(f"{stack.url}/api/v2/monitor/health")[1])
            components = ("scheduler", "dag_processor", "triggerer")
            assert all(health[part]["status"] == "healthy" for part in components)
            stack.log_in()
            dags = {dag["dag_id"]: dag for dag in stack.api("GET", "/dags")["dags"]}
            if set(DAG_IDS) <= set(dags):
                assert all(dags[dag_id]["is_paused"] for dag_id in DAG_IDS), dags
                return
        assert time.monotonic() < deadline, (
            f"the stack is not ready after {STACK_START_TIMEOUT_S} s" + stack.service_logs()
        )
        time.sleep(2)


def assert_only_requested_runs(stack: ProductionStack) -> None:
    """Unpausing created no scheduled or asset-triggered run: only backfills and triggers."""
    kinds = {(run["dag_id"], run["run_type"]) for run in stack.runs()}
    assert {kind for _, kind in kinds} <= {"backfill", "manual"}, kinds


def publication(data_dir: Path, dates: list[dt.date]) -> dict:
    """What the dates' publications consist of, minus PUBLICATION_RUN_METADATA: every column of
    the published tables, the latest publication record per date, and the export files' bytes
    (manifest.json without its run_id)."""
    dates_sql = ", ".join(f"DATE '{date}'" for date in dates)
    published = {}
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        for table in PUBLISHED_TABLES:
            published[table] = con.execute(
                f"SELECT * FROM published.{table} WHERE as_of_date IN ({dates_sql}) ORDER BY ALL"
            ).fetchall()
        excluded = ", ".join(PUBLICATION_RUN_METADATA)
        # The export folder's path names the data folder: compared relative to it.
        published["publications"] = con.execute(
            f"""SELECT * EXCLUDE ({excluded}) REPLACE (replace(exports_dir, ?, '') AS exports_dir)
                FROM published.publications
                WHERE as_of_date IN ({dates_sql})
                QUALIFY published_at = max(published_at) OVER (PARTITION BY as_of_date)
                ORDER BY as_of_date""",
            [str(data_dir)],
        ).fetchall()
    exports = data_dir / "exports"
    for date in dates:
        for path in sorted((exports / date.isoformat()).iterdir()):
            content = path.read_bytes()
            if path.name == "manifest.json":
                manifest = json.loads(content)
                content = {k: v for k, v in manifest.items() if k not in PUBLICATION_RUN_METADATA}
            published[f"exports/{date}/{path.name}"] = content
    return published


def publishing_runs(data_dir: Path, dates: list[dt.date]) -> dict[dt.date, str]:
    """The run id behind each date's current exports (manifest.json)."""
    exports = data_dir / "exports"
    return {
        date: json.loads((exports / date.isoformat() / "manifest.json").read_text())["run_id"]
        for date in dates
    }


def first_difference(ours: object, theirs: object) -> str:
    if isinstance(ours, list) and isinstance(theirs, list):
        for index, (mine, other) in enumerate(zip(ours, theirs, strict=False)):
            if mine != other:
                return f"row {index}: backfill {mine!r} != single run {other!r}"
        return f"{len(ours)} rows after the backfill, {len(theirs)} after single runs"
    return f"backfill {str(ours)[:500]!r} != single run {str(theirs)[:500]!r}"


def test_a_neither_server_answers_without_credentials(stack: ProductionStack):
    search = f"{stack.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=5"
    user = stack.env["MLFLOW_TRACKING_USERNAME"]
    assert http(search)[0] == 401
    assert http(search, headers=basic_auth(user, "not-the-password"))[0] == 401
    assert http(search, headers=basic_auth(user, stack.secrets["mlflow"]))[0] == 200
    # A Host header it was not told about (DNS rebinding) is refused even with credentials.
    rebound = {**basic_auth(user, stack.secrets["mlflow"]), "Host": "attacker.example"}
    assert http(search, headers=rebound)[0] == 403

    assert http(f"{stack.url}/api/v2/dags")[0] == 401
    forged = {"Authorization": "Bearer forged"}
    assert http(f"{stack.url}/api/v2/dags", headers=forged)[0] in (401, 403)
    wrong = {"username": stack.env["AIRFLOW_ADMIN_USERNAME"], "password": "not-the-password"}
    assert http(f"{stack.url}/auth/token", "POST", wrong)[0] == 401


def test_b_the_first_run_trains_every_model_into_the_tracking_server_and_publishes(
    stack: ProductionStack,
):
    started = time.monotonic()
    run_id = stack.trigger("segment_pipeline", {"as_of_date": TRAINED_AS_OF.isoformat()})
    (run,) = stack.wait_until_finished({"segment_pipeline": [run_id]})
    print(f"\nfirst segment_pipeline run, training every model: {time.monotonic() - started:.0f} s")

    # No model yet: ensure_champions trained them all (the code of train_models) on the
    # warehouse worker, and the server holds what the worker uploaded.
    queues = {ti["task_id"]: ti["queue"] for ti in stack.task_instances(run)}
    assert queues["ensure_champions"] == queues["publish"] == WAREHOUSE_QUEUE
    champions = stack.champions()
    assert champions == dict.fromkeys(MODEL_KINDS, 1)
    with stack.mlflow_client() as client:
        for kind in MODEL_KINDS:
            assert_uploaded_through_the_server(stack, client, kind, champions[kind])

    data_dir = Path(stack.env["SEGFLOW_DATA_DIR"])
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        segments = con.execute(
            "SELECT count(*) FROM published.customer_segments WHERE as_of_date = ?",
            [TRAINED_AS_OF],
        ).fetchone()[0]
        (versions,) = con.execute(
            "SELECT model_versions FROM published.publications WHERE as_of_date = ?",
            [TRAINED_AS_OF],
        ).fetchone()
    assert segments == 1000
    assert json.loads(versions) == champions
    assert (data_dir / "exports" / TRAINED_AS_OF.isoformat() / "manifest.json").is_file()
    assert_only_requested_runs(stack)


def assert_uploaded_through_the_server(stack: ProductionStack, client, kind: str, version: int):
    """The version's model and its run's drift reference are in the server's artifact store:
    the worker uploaded them through the server (served artifacts), not to a shared disk."""
    details = client.get_model_version(f"segflow_{kind}", str(version))
    model = client.get_logged_model(details.source.removeprefix("models:/"))
    assert (stack.stored_artifact(model.artifact_location) / "MLmodel").is_file(), kind
    run_artifacts = client.get_run(details.run_id).info.artifact_uri
    assert (stack.stored_artifact(run_artifacts) / "drift_reference.json").is_file(), kind


def test_c_a_backfill_publishes_what_single_runs_of_its_dates_publish(
    stack: ProductionStack, trained_settings: Settings
):
    first, last = BACKFILL_DATES[0], BACKFILL_DATES[-1]
    champions = stack.champions()
    root = stack.home.parent
    # Single runs of the same dates with `airflow dags test`, on a metadata database and a data
    # folder of their own (a copy of the stack's starting data), with the tracking server's
    # champions, run meanwhile.
    single_home, single_data = root / "single-airflow", root / "single-data"
    shutil.copytree(trained_settings.data_dir, single_data, ignore=shutil.ignore_patterns("mlflow"))
    single_logs = [single_home / f"dags-test-{date}.log" for date in BACKFILL_DATES]
    with fresh_databases(f"{stack.database_prefix}_single", ("airflow",)) as databases:
        single_env = {
            **stack.env,
            "AIRFLOW_HOME": str(single_home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": databases["airflow"],
            "SEGFLOW_DATA_DIR": str(single_data),
        }
        single_home.mkdir()
        single_runs = subprocess.Popen(
            [
                "bash",
                "-c",
                " && ".join(
                    [
                        f"{AIRFLOW} db migrate > {single_home / 'migrate.log'} 2>&1",
                        f"{AIRFLOW} pools set {WAREHOUSE_POOL} 1 writers > /dev/null",
                        *(
                            f"{AIRFLOW} dags test segment_pipeline {date} > {log} 2>&1"
                            for date, log in zip(BACKFILL_DATES, single_logs, strict=True)
                        ),
                    ]
                ),
            ],
            env=single_env,
            start_new_session=True,
        )
        try:
            started = time.monotonic()
            # The last date's run has its logical date at 02:00 (the cron), after midnight of `last`.
            created = stack.cli(
                "backfill", "create", "--dag-id", "segment_pipeline",
                "--from-date", first.isoformat(), "--to-date", f"{last}T23:59:59",
                "--reprocess-behavior", "completed", "--max-active-runs", "1",
            )  # fmt: skip
            assert created.returncode == 0, created.stdout[-3000:] + created.stderr[-3000:]
            backfill = {
                run["logical_date"][:10]: run["dag_run_id"]
                for run in stack.runs("segment_pipeline")
                if run["run_type"] == "backfill"
            }
            assert sorted(backfill) == [date.isoformat() for date in BACKFILL_DATES]
            runs = stack.wait_until_finished({"segment_pipeline": list(backfill.values())})
            print(f"\nbackfill of {len(backfill)} dates: {time.monotonic() - started:.0f} s")
            assert single_runs.wait(timeout=RUNS_TIMEOUT_S) == 0, "".join(map(tail, single_logs))
            print(f"single runs, meanwhile: {time.monotonic() - started:.0f} s")
        finally:
            stop_process_groups([single_runs])

    # Under Celery, every task that opens the warehouse ran on the warehouse queue.
    for run in runs:
        for ti in stack.task_instances(run):
            if ti["pool"] == WAREHOUSE_POOL:
                assert ti["queue"] == WAREHOUSE_QUEUE, ti["task_id"]

    data_dir = Path(stack.env["SEGFLOW_DATA_DIR"])
    backfilled = publication(data_dir, BACKFILL_DATES)
    single = publication(single_data, BACKFILL_DATES)
    published_dates = {as_of_date for _, as_of_date, *_ in backfilled["customer_segments"]}
    assert published_dates == set(BACKFILL_DATES)
    assert backfilled.keys() == single.keys()
    for part, content in backfilled.items():
        assert content == single[part], f"{part}: {first_difference(content, single[part])}"
    # Each side published its dates itself: the backfill's runs, and the single runs...
    assert publishing_runs(data_dir, BACKFILL_DATES) == {
        date: backfill[date.isoformat()] for date in BACKFILL_DATES
    }
    assert all(
        run_id.startswith("manual__")
        for run_id in publishing_runs(single_data, BACKFILL_DATES).values()
    )
    # ...with the champions of the tracking server.
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        used = con.execute(
            "SELECT DISTINCT model_versions FROM published.publications WHERE as_of_date IN (?, ?)",
            BACKFILL_DATES,
        ).fetchall()
    assert [json.loads(versions) for (versions,) in used] == [champions]
    assert_only_requested_runs(stack)


def test_d_segment_pipeline_and_train_models_take_turns_in_the_warehouse_pool(
    stack: ProductionStack,
):
    as_of = TRAINED_AS_OF.isoformat()
    # One model is enough to contend for the pool (build_training_set) and keeps this quick.
    requests = {
        "segment_pipeline": {"as_of_date": as_of},
        "train_models": {"as_of_date": as_of, "models": ["customer_value"]},
    }
    started = time.monotonic()
    run_ids = {"segment_pipeline": stack.trigger("segment_pipeline", requests["segment_pipeline"])}
    # Contention is made, not hoped for: train_models is asked for while segment_pipeline's
    # longest warehouse task (the dbt tests, ~10 s) holds the slot, so its first warehouse task
    # is ready before the slot is free. Through the REST API, which answers in milliseconds.
    deadline = time.monotonic() + RUNS_TIMEOUT_S
    while True:
        (holder,) = [
            run
            for run in stack.runs("segment_pipeline")
            if run["dag_run_id"] == run_ids["segment_pipeline"]
        ]
        if any(
            ti["task_id"] == "features.dbt_project_test" and ti["state"] == "running"
            for ti in stack.task_instances(holder)
        ):
            break
        assert holder["state"] in {"queued", "running"}, stack.failure_report([holder])
        assert time.monotonic() < deadline, stack.failure_report([holder])
        time.sleep(0.5)
    run_ids["train_models"] = f"together__train_models__{time.time_ns()}"
    stack.api(
        "POST",
        "/dags/train_models/dagRuns",
        {
            "dag_run_id": run_ids["train_models"],
            "logical_date": None,
            "conf": requests["train_models"],
        },
    )
    runs = stack.wait_until_finished({dag_id: [run_id] for dag_id, run_id in run_ids.items()})
    print(f"\nsegment_pipeline and train_models together: {time.monotonic() - started:.0f} s")

    # train_models registered a new version through the server, and its gate decided on it.
    with stack.mlflow_client() as client:
        (newest,) = client.search_model_versions(
            "name = 'segflow_customer_value'", order_by=["version_number DESC"], max_results=1
        )
        assert int(newest.version) > 1
        assert newest.tags["validation_status"] != "pending", newest.tags
        assert_uploaded_through_the_server(stack, client, "customer_value", int(newest.version))
    queues = {
        ti["task_id"]: ti["queue"]
        for run in runs
        if run["dag_id"] == "train_models"
        for ti in stack.task_instances(run)
    }
    assert queues["build_training_set"] == WAREHOUSE_QUEUE
    assert queues["train_model"] != WAREHOUSE_QUEUE

    assert stack.api("GET", f"/pools/{WAREHOUSE_POOL}")["slots"] == 1
    when = dt.datetime.fromisoformat
    # The two runs were in flight at the same time...
    assert max(when(run["start_date"]) for run in runs) < min(when(run["end_date"]) for run in runs)
    pool_tasks = sorted(
        [
            (
                ti["dag_id"],
                ti["task_id"],
                when(ti["scheduled_when"]),
                when(ti["start_date"]),
                when(ti["end_date"]),
            )
            for run in runs
            for ti in stack.task_instances(run)
            if ti["pool"] == WAREHOUSE_POOL
        ],
        key=lambda task: task[3],
    )
    assert {dag_id for dag_id, *_ in pool_tasks} == set(requests)
    spans = "\n".join(f"{dag}.{task}: {start} - {end}" for dag, task, _, start, end in pool_tasks)
    # ...yet their warehouse tasks never held the warehouse together,
    for (*_, previous_end), (*_, start, _) in zip(pool_tasks, pool_tasks[1:], strict=False):
        assert start >= previous_end, spans
    # and a task of one run was ready while the other run's held the slot, and waited for it.
    assert any(
        ready_at < holder_end <= start
        for ready_dag, _, ready_at, start, _ in pool_tasks
        for holder_dag, _, _, _, holder_end in pool_tasks
        if ready_dag != holder_dag
    ), spans
    assert_only_requested_runs(stack)


EMAIL = re.compile(rb"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def test_e_no_log_holds_a_secret_or_a_customer_address_and_exports_are_private(
    stack: ProductionStack, trained_settings: Settings
):
    root = stack.home.parent
    logs = [
        path
        for folder in (stack.home, root / "single-airflow")
        for path in folder.rglob("*.log")
        if path.is_file()
    ]
    task_logs = [path for path in logs if "dag_id=" in str(path)]
    assert len(task_logs) > 20, "the earlier tests left too few task logs to search"
    with duckdb.connect() as con:
        customers = {
            address.encode()
            for (address,) in con.execute(
                "SELECT email FROM read_parquet(?)",
                [str(trained_settings.landing_dir / "customers" / "*" / "*.parquet")],
            ).fetchall()
        }
    hidden = {name: value.encode() for name, value in stack.secrets.items()}
    for path in logs:
        content = path.read_bytes()
        leaked = [name for name, value in hidden.items() if value in content]
        assert not leaked, f"{path} holds the {', '.join(leaked)} secret"
        addresses = set(EMAIL.findall(content)) & customers
        assert not addresses, f"{path} holds customer addresses, e.g. {sorted(addresses)[:3]}"

    exports = Path(stack.env["SEGFLOW_DATA_DIR"]) / "exports"
    folders = [exports, *(path for path in exports.rglob("*") if path.is_dir())]
    files = [path for path in exports.rglob("*") if path.is_file()]
    assert files, "no exports to check"
    for folder in folders:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
