"""segflow under a real Airflow stack: `airflow api-server`, `airflow scheduler` (LocalExecutor)
and `airflow dag-processor`, each in its own process group, on a temporary Airflow home with a
SQLite metadata database.

- A backfill made with Airflow's own `airflow backfill create` publishes, for each of its
  dates, exactly what a single run of that date publishes (`airflow dags test` on a fresh data
  folder with the same landing files and the same champions).
- segment_pipeline and train_models triggered together both succeed, and their tasks in the
  `warehouse` pool (one slot: DuckDB allows one writer) take turns instead of colliding.

The scheduler creates no runs from the DAGs' schedules here (`use_job_schedule` off): every run
is one the test asked for, which the tests check.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from ml.config import Settings
from tests.conftest import PROJECT_DIR, TRAINED_AS_OF, free_port, processes_with_env

pytestmark = pytest.mark.slow
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
SERVICES = ("api-server", "scheduler", "dag-processor")
DAG_IDS = ("segment_pipeline", "train_models")
WAREHOUSE_POOL = "warehouse"
BACKFILL_DATES = [TRAINED_AS_OF - dt.timedelta(days=days) for days in (1, 0)]
STACK_START_TIMEOUT_S = 180
RUNS_TIMEOUT_S = 900
FINISHED = {"success", "failed"}
STARTED_BY = "SEGFLOW_TEST_STARTED_BY"
"""Set in the environment of every process this module starts, so that teardown finds them all."""
PUBLISHED_TABLES = ("customer_segments", "audience_members", "audience_definitions")
PUBLICATION_RUN_METADATA = ("run_id", "published_at")
"""The columns of published.publications (and keys of manifest.json) that describe the run
rather than the data: which run published, and when. The published tables have none."""


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


def stop_process_group(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM to the process and everything it started (its group), SIGKILL after the grace."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def kill_processes_started_by(marker: str) -> None:
    """SIGKILL every process whose environment has STARTED_BY=marker."""
    for pid in processes_with_env(STARTED_BY, marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class AirflowStack:
    env: dict[str, str]
    url: str
    home: Path
    processes: dict[str, subprocess.Popen]

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        """A call to Airflow's REST API (no token: this stack lets everyone in as admin)."""
        request = urllib.request.Request(
            f"{self.url}/api/v2{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=120
        )

    def service_logs(self) -> str:
        return "".join(tail(self.home / "run" / f"{name}.log", 3000) for name in SERVICES)

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
                assert process.poll() is None, f"airflow {name} exited" + self.failure_report(runs)
            assert time.monotonic() < deadline, (
                f"runs not finished after {RUNS_TIMEOUT_S} s" + self.failure_report(runs)
            )
            time.sleep(3)
        assert states == {"success"}, self.failure_report(runs)
        return runs


def copy_registry(tracking_uri: str, into: Path) -> str:
    """A copy of an embedded MLflow store (with its champions), so that what happens to the
    copy leaves the original alone; the artifacts stay where they are (read only)."""
    into.mkdir(parents=True)
    shutil.copy(tracking_uri.removeprefix("sqlite:///"), into / "mlflow.db")
    return f"sqlite:///{into / 'mlflow.db'}"


def segflow_env(
    marker: str, landing_dir: Path, airflow_home: Path, data_dir: Path, registry: str
) -> dict:
    return {
        **os.environ,
        STARTED_BY: marker,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_DIR / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "SEGFLOW_DATA_DIR": str(data_dir),
        "SEGFLOW_LANDING_DIR": str(landing_dir),
        "MLFLOW_TRACKING_URI": registry,
        "SEGFLOW_TRAINING_SNAPSHOTS": "2",
        "SEGFLOW_TUNING_ITERATIONS": "2",
    }


@pytest.fixture(scope="module")
def stack(
    trained_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AirflowStack]:
    """The three Airflow services on a fresh metadata DB and data folder, with both DAGs
    unpaused and the champions that `trained_settings` trained (1,000 customers over 240 days
    up to TRAINED_AS_OF), in a copy of its registry. Stopped afterwards, whatever happened."""
    root = tmp_path_factory.mktemp("scheduler")
    home = root / "airflow"
    port = free_port()
    registry = copy_registry(trained_settings.mlflow_tracking_uri, root / "registry")
    env = segflow_env(str(root), trained_settings.landing_dir, home, root / "data", registry)
    env |= {
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        # Tasks report to the execution API of this api-server (the default is port 8080).
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        # Only the runs the tests create: no cron or asset schedule, whatever the date today.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        # Parsed once: the DAG files do not change during the tests.
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        # The log server's fixed default port would clash with another Airflow on this machine.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
    }
    (home / "run").mkdir(parents=True)
    for command in (["db", "migrate"], ["pools", "set", WAREHOUSE_POOL, "1", "warehouse writers"]):
        subprocess.run([AIRFLOW, *command], env=env, check=True, capture_output=True, timeout=300)
    # The migrated database before any service touched it: single runs get their own copy.
    shutil.copy(home / "airflow.db", root / "airflow-migrated.db")

    started = time.monotonic()
    processes: dict[str, subprocess.Popen] = {}
    stack = AirflowStack(env=env, url=f"http://127.0.0.1:{port}", home=home, processes=processes)
    try:
        for name in SERVICES:
            with open(home / "run" / f"{name}.log", "w") as log:
                processes[name] = subprocess.Popen(
                    [AIRFLOW, name],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
        wait_until_ready(stack)
        for dag_id in DAG_IDS:
            assert not stack.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})["is_paused"]
        print(f"\nAirflow stack up in {time.monotonic() - started:.0f} s")
        yield stack
    finally:
        for process in processes.values():
            stop_process_group(process)
        # Airflow's task supervisor gives each task a process group of its own: tasks that
        # outlived their scheduler (a failed test) are found by their environment.
        kill_processes_started_by(str(root))


def wait_until_ready(stack: AirflowStack) -> None:
    """The API answers, the scheduler heartbeats and both DAGs are parsed (and paused)."""
    deadline = time.monotonic() + STACK_START_TIMEOUT_S
    while True:
        for name, process in stack.processes.items():
            assert process.poll() is None, f"airflow {name} exited" + stack.service_logs()
        with contextlib.suppress(OSError):
            health = stack.api("GET", "/monitor/health")
            dags = {dag["dag_id"]: dag for dag in stack.api("GET", "/dags")["dags"]}
            if health["scheduler"]["status"] == "healthy" and set(DAG_IDS) <= set(dags):
                assert all(dags[dag_id]["is_paused"] for dag_id in DAG_IDS), dags
                return
        assert time.monotonic() < deadline, (
            f"Airflow not ready after {STACK_START_TIMEOUT_S} s" + stack.service_logs()
        )
        time.sleep(1)


def assert_only_requested_runs(stack: AirflowStack) -> None:
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


def test_a_backfill_publishes_what_single_runs_of_its_dates_publish(stack: AirflowStack):
    first, last = BACKFILL_DATES[0], BACKFILL_DATES[-1]
    root = stack.home.parent
    # Single runs of the same dates on a fresh metadata DB and data folder, with the champions
    # the stack has now, run meanwhile: they share nothing with the stack but the landing files.
    single_home, single_data = root / "single-airflow", root / "single-data"
    single_home.mkdir()
    shutil.copy(root / "airflow-migrated.db", single_home / "airflow.db")
    single_env = segflow_env(
        stack.env[STARTED_BY],
        Path(stack.env["SEGFLOW_LANDING_DIR"]),
        single_home,
        single_data,
        copy_registry(stack.env["MLFLOW_TRACKING_URI"], root / "single-registry"),
    )
    single_logs = [single_home / f"dags-test-{date}.log" for date in BACKFILL_DATES]
    single_runs = subprocess.Popen(
        [
            "bash",
            "-c",
            " && ".join(
                f"{AIRFLOW} dags test segment_pipeline {date} > {log} 2>&1"
                for date, log in zip(BACKFILL_DATES, single_logs, strict=True)
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
        stack.wait_until_finished({"segment_pipeline": list(backfill.values())})
        print(f"\nbackfill of {len(backfill)} dates: {time.monotonic() - started:.0f} s")
        assert single_runs.wait(timeout=RUNS_TIMEOUT_S) == 0, "".join(map(tail, single_logs))
        print(f"single runs, meanwhile: {time.monotonic() - started:.0f} s")
    finally:
        stop_process_group(single_runs)

    data_dir = Path(stack.env["SEGFLOW_DATA_DIR"])
    backfilled = publication(data_dir, BACKFILL_DATES)
    single = publication(single_data, BACKFILL_DATES)
    published_dates = {as_of_date for _, as_of_date, *_ in backfilled["customer_segments"]}
    assert published_dates == set(BACKFILL_DATES)
    assert backfilled.keys() == single.keys()
    for part, content in backfilled.items():
        assert content == single[part], f"{part}: {first_difference(content, single[part])}"
    # Each side published its dates itself: the backfill's runs, and the single runs.
    assert publishing_runs(data_dir, BACKFILL_DATES) == {
        date: backfill[date.isoformat()] for date in BACKFILL_DATES
    }
    assert all(
        run_id.startswith("manual__")
        for run_id in publishing_runs(single_data, BACKFILL_DATES).values()
    )
    assert_only_requested_runs(stack)


def test_b_segment_pipeline_and_train_models_take_turns_in_the_warehouse_pool(
    stack: AirflowStack,
):
    as_of = TRAINED_AS_OF.isoformat()
    # One model is enough to contend for the pool (build_training_set) and keeps this quick.
    requests = {
        "segment_pipeline": {"as_of_date": as_of},
        "train_models": {"as_of_date": as_of, "models": ["customer_value"]},
    }
    run_ids = {dag_id: f"together__{dag_id}__{time.time_ns()}" for dag_id in requests}
    started = time.monotonic()
    triggers = [
        subprocess.Popen(
            [
                AIRFLOW,
                "dags",
                "trigger",
                dag_id,
                "--run-id",
                run_ids[dag_id],
                "--conf",
                json.dumps(conf),
            ],
            env=stack.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for dag_id, conf in requests.items()
    ]
    for trigger in triggers:
        output, _ = trigger.communicate(timeout=120)
        assert trigger.returncode == 0, output[-3000:]
    runs = stack.wait_until_finished({dag_id: [run_id] for dag_id, run_id in run_ids.items()})
    print(f"\nsegment_pipeline and train_models together: {time.monotonic() - started:.0f} s")

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
