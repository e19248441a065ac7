"""Benchmark harness: every stage of segflow at a scale, each in its own process, with its wall
time and peak memory; the dbt feature build against a hand-written DuckDB query and pandas; the
whole daily run through Airflow. Writes docs/benchmarks.json, docs/benchmarks.md and the scaling
plot docs/benchmarks-scaling.png.

    python bench/run.py --customers 1000000 [--days 365] [--stages generate,ingest,...]
                        [--work DIR]  # keep the data in DIR and reuse it in a later call

The history is generated up to END_DATE + 1 day. The stages up to `drift` run as of END_DATE
on the whole history (the heaviest load each sees: ingest loads a year at once); `daily_run` is
then `airflow dags test segment_pipeline` for END_DATE + 1 with the models trained by `train`
(warm), which ingests that one day's increment, exactly as the scheduler's daily run does.
`trigger_refresh` then starts `airflow standalone` on the same folder and times increments of
"now" from landing in the landing zone to refresh_triggers' published delta.

A stage's peak memory is its process's own (wait4): Linux counts in it the largest of the
processes that child waited for (dbt, Airflow's task runners), not their sum. Results
accumulate in the JSON per scale, so the 10,000, 100,000 and 1,000,000 runs all appear.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import REPORT, write_report
from stages import (
    ALL_STAGES,
    DAILY_DATE,
    END_DATE,
    HISTORY_STAGES,
    MIB,
    PROJECT,
    SNAPSHOT_CHANGE_SHARE,
)

RESULTS = PROJECT / "docs" / "benchmarks.json"
BIN = Path(sys.executable).parent
SEGFLOW = str(BIN / "segflow")
ERASURE_CUSTOMERS = 100
"""erasure: customers forgotten in one `segflow forget` (half by id, half by address)."""
TRIGGER_INCREMENTS = 3
"""Increments timed from landing to published delta, after one that warms up (see refreshes)."""


def measure(command: list[str], env: dict[str, str], keep_output: bool = False) -> dict:
    """Wall seconds and peak RSS (MiB) of one child process and what it waited for."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{output[-4000:]}")
    result = {"seconds": round(seconds, 1), "peak_mib": round(usage.ru_maxrss / 1024)}
    return {**result, "output": output} if keep_output else result


def measure_all(commands: list[list[str]], env: dict[str, str]) -> dict:
    """Commands one after the other: total seconds, the largest peak."""
    results = [measure(command, env) for command in commands]
    return {
        "seconds": round(sum(r["seconds"] for r in results), 1),
        "peak_mib": max(r["peak_mib"] for r in results),
    }


def landing_rows(landing: Path) -> dict[str, int]:
    import duckdb

    with duckdb.connect() as con:
        return {
            entity.name: con.execute(
                f"SELECT count(*) FROM read_parquet('{entity}/**/*.parquet')"
            ).fetchone()[0]
            for entity in sorted(landing.iterdir())
            if entity.is_dir()
        }


def bench_env(work: Path) -> dict[str, str]:
    """Everything in the work folder: data, landing, MLflow store and Airflow's home."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "SEGFLOW_DATA_DIR": str(work / "data"),
        "SEGFLOW_LANDING_DIR": str(work / "landing"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'data' / 'mlflow' / 'mlflow.db'}",
        "AIRFLOW_HOME": str(work / "airflow"),
        # Its own SQLite metadata, whatever database the caller's environment names.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{work / 'airflow' / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }


def snapshot_commands(env: dict[str, str]) -> list[list[str]]:
    """What the daily runs of the snapshot dates would have left: features and labels as of
    each date `segflow train` as of END_DATE reads, so `train` is the weekly steady state."""
    from ml.config import load_settings
    from ml.models.training_sets import plan_snapshots

    plan = plan_snapshots(load_settings(env), END_DATE)
    return [
        [SEGFLOW, "features", "--as-of", str(date), "--label-as-of", str(date)]
        for date in (*plan.training, plan.validation)
    ]


def feature_comparisons(env: dict[str, str], work: Path, stages: list[str]) -> dict:
    """The customer_features mart for END_DATE three ways, on the warehouse the stages built:
    dbt (what the pipeline runs: one process, parse included), one hand-written DuckDB query,
    pandas. The query's rows are checked against the mart, so the floor computes the same."""
    from ml.config import load_settings
    from ml.features.dbt import dbt_vars

    baselines = str(PROJECT / "bench" / "feature_baselines.py")
    target = work / "dbt-target-bench"
    commands = {
        "dbt_features": [
            SEGFLOW,
            "dbt",
            "run",
            "--select",
            "customer_features",
            "--vars",
            dbt_vars(load_settings(env), END_DATE),
            "--target-path",
            str(target),
        ],
        **{
            name: [sys.executable, baselines, baseline, "--as-of", END_DATE.isoformat()]
            for name, baseline in (("duckdb_query", "duckdb"), ("pandas", "pandas"))
        },
    }
    results = {}
    for name, command in commands.items():
        if name in stages:
            results[name] = measure(command, env)
    if "dbt_features" in results:
        run_results = json.loads((target / "run_results.json").read_text())
        (model,) = run_results["results"]
        results["dbt_features"]["model_seconds"] = round(model["execution_time"], 1)
    if "duckdb_query" in results:
        # Exits non-zero, failing the benchmark, when the query's rows differ from the mart's.
        measure([*commands["duckdb_query"], "--check"], env)
    return results


def scoring(command: list[str], env: dict[str, str]) -> dict:
    """The score command, and the rate it logs for its scoring alone: from reading the first
    features to the staged rows, without the imports and the models' loading."""
    result = measure([SEGFLOW, *command, END_DATE.isoformat()], env, keep_output=True)
    rate = re.search(r"scored \d+ customers as of \S+ in ([\d.]+)s", result.pop("output"))
    result["scoring_seconds"] = float(rate.group(1))
    return result


def airflow_ready(env: dict[str, str]) -> None:
    if (Path(env["AIRFLOW_HOME"]) / "airflow.db").exists():
        return
    for command in (["db", "migrate"], ["pools", "set", "warehouse", "1", "warehouse writers"]):
        subprocess.run([str(BIN / "airflow"), *command], env=env, check=True, capture_output=True)


def task_seconds(env: dict[str, str]) -> list[tuple[str, float]]:
    """Each task's duration in the newest segment_pipeline run, from Airflow's metadata, in
    the order they started (a list: the JSON's keys are sorted)."""
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        rows = db.execute(
            """SELECT task_id, duration FROM task_instance
               WHERE dag_id = 'segment_pipeline' AND run_id = (
                   SELECT run_id FROM dag_run WHERE dag_id = 'segment_pipeline'
                   ORDER BY id DESC LIMIT 1)
                 AND duration >= 0.05
               ORDER BY start_date"""
        ).fetchall()
    return [(task, round(seconds, 1)) for task, seconds in rows]


def daily_run(env: dict[str, str]) -> dict:
    airflow_ready(env)
    command = [str(BIN / "airflow"), "dags", "test", "segment_pipeline", DAILY_DATE.isoformat()]
    result = measure(command, env)
    result["tasks"] = task_seconds(env)
    return result


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def metadata(env: dict[str, str], query: str) -> list[tuple]:
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db", timeout=30) as db:
        return db.execute(query).fetchall()


def wait_for(what: str, condition, timeout_s: float = 600, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise SystemExit(f"trigger_refresh: {what} not seen after {timeout_s:.0f} s")
        time.sleep(every_s)
    return found


def timed_increment(env: dict[str, str], work: Path) -> dict:
    """One increment of the last 3 hours dropped into the landing zone; seconds from its last
    file landing to the refresh's manifest, and the refresh's task times."""
    from ml.synthetic.increments import generate_increment

    exports = work / "data" / "exports" / "triggers"
    before = set(exports.iterdir()) if exports.exists() else set()
    runs = len(metadata(env, "SELECT id FROM dag_run WHERE dag_id = 'refresh_triggers'"))
    report = generate_increment(work / "landing", dt.datetime.now(dt.UTC), hours=3)
    landed = time.time()

    def finished() -> list:
        states = metadata(
            env,
            "SELECT state FROM dag_run WHERE dag_id = 'refresh_triggers' ORDER BY id",
        )
        if "failed" in {state for (state,) in states}:
            raise SystemExit(
                f"trigger_refresh: a refresh_triggers run failed: see {work}/airflow/logs"
            )
        return len(states) > runs and states[-1][0] == "success" and states

    wait_for("the refresh run", finished)
    (folder,) = set(exports.iterdir()) - before
    published = (folder / "manifest.json").stat().st_mtime
    manifest = json.loads((folder / "manifest.json").read_text())
    queued, started = metadata(
        env,
        "SELECT queued_at, start_date FROM dag_run WHERE dag_id = 'refresh_triggers' "
        "ORDER BY id DESC LIMIT 1",
    )[0]
    tasks = metadata(
        env,
        """SELECT task_id, duration FROM task_instance WHERE dag_id = 'refresh_triggers'
           AND run_id = (SELECT run_id FROM dag_run WHERE dag_id = 'refresh_triggers'
                         ORDER BY id DESC LIMIT 1) ORDER BY start_date""",
    )
    run_queued = dt.datetime.fromisoformat(queued).replace(tzinfo=dt.UTC).timestamp()
    return {
        "seconds": round(published - landed, 1),
        "run_queued_after": round(run_queued - landed, 1),
        "tasks": [(task, round(seconds, 1)) for task, seconds in tasks],
        "rows": sum(report.rows.values()),
        "members": {name: t["rows"] + t["holdout"] for name, t in manifest["triggers"].items()},
        "new_suppressions": manifest["suppressions"]["rows"],
    }


def trigger_refresh(env: dict[str, str], work: Path) -> dict:
    """`airflow standalone` on the benchmark's warehouse (after the daily run published), with
    refresh_triggers unpaused: the first increment's refresh also evaluates the whole history's
    files and publishes the full suppression list (warm-up); then TRIGGER_INCREMENTS more."""
    from ml.config import load_settings

    airflow_ready(env)
    port = free_port()
    env = {
        **env,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
    }
    log = (work / "airflow" / "standalone.log").open("w")
    server = subprocess.Popen(
        [str(BIN / "airflow"), "standalone"], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_for("refresh_triggers parsed", lambda: metadata(
            env, "SELECT 1 FROM dag WHERE dag_id = 'refresh_triggers'"), every_s=1)  # fmt: skip
        subprocess.run(
            [str(BIN / "airflow"), "dags", "unpause", "refresh_triggers"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        wait_for("the landing watcher", lambda: metadata(
            env, "SELECT 1 FROM asset_state_store"), every_s=1)  # fmt: skip
        warmup = timed_increment(env, work)
        timed = [timed_increment(env, work) for _ in range(TRIGGER_INCREMENTS)]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
        log.close()
    seconds = sorted(t["seconds"] for t in timed)
    return {
        "measured_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "warmup": warmup,
        "increments": timed,
        "median_seconds": seconds[len(seconds) // 2],
        "max_seconds": seconds[-1],
        "poll_seconds": load_settings(env).landing_poll_seconds,
    }


def customer_snapshot(env: dict[str, str]) -> dict:
    """A full daily snapshot of the customers table, as shops export it, with a share of the
    customers changed (a new address, or an opt-out): the time and memory of loading it, which
    compares every row with its customer's last version. Last, as it adds versions."""
    import duckdb

    from ml.config import load_settings

    settings = load_settings(env)
    # In a partition already loaded, so that the snapshot is the only new file.
    folder = settings.landing_dir / "customers" / f"date={END_DATE}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "snapshot-full.csv.gz"
    every = round(2 / SNAPSHOT_CHANGE_SHARE)  # half of the changes new addresses, half opt-outs
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        columns = "country, birth_year, gender, acquisition_channel"
        con.execute(
            f"""COPY (
                SELECT customer_id,
                       CASE WHEN hash(customer_id) % {every} = 0
                            THEN 'moved.' || coalesce(email, 'x@example.com') ELSE email END AS email,
                       signup_at, {columns},
                       CASE WHEN hash(customer_id) % {every} = 1 THEN false
                            ELSE email_opt_in END AS email_opt_in
                FROM raw.customers ORDER BY customer_id
            ) TO '{path}' (HEADER, COMPRESSION gzip)"""
        )
        (rows,) = con.execute("SELECT count(*) FROM raw.customers").fetchone()
    measured = measure([SEGFLOW, "ingest", "--as-of", END_DATE.isoformat()], env)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        loaded, unchanged = con.execute(
            "SELECT rows_loaded, rows_unchanged FROM raw.loaded_files WHERE source_file = ?",
            [str(path.relative_to(settings.landing_dir))],
        ).fetchone()
    return {
        **measured,
        "rows": rows,
        "new_versions": loaded,
        "unchanged": unchanged,
        "file_mib": round(path.stat().st_size / MIB, 1),
    }


def erasure(env: dict[str, str], work: Path) -> dict:
    """One `segflow forget` of ERASURE_CUSTOMERS customers, as a batch of requests arrives:
    landing files, exports, training sets and reports rewritten, warehouse rows deleted and
    the DuckDB file rebuilt. Last on the shop, as it removes customers."""
    import duckdb

    from ml.config import load_settings

    settings = load_settings(env)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        chosen = con.execute(
            f"""SELECT customer_id, email FROM raw.customers
                ORDER BY hash(customer_id) LIMIT {ERASURE_CUSTOMERS}"""
        ).fetchall()
    requests = work / "erasure-requests.csv"
    requests.write_text(
        "customer_id,email\n"
        + "".join(
            f"{customer},\n" if index % 2 else f",{email}\n"
            for index, (customer, email) in enumerate(chosen)
        )
    )
    requests.chmod(0o600)
    measured = measure([SEGFLOW, "forget", "--from-file", str(requests)], env, keep_output=True)
    requests.unlink()
    summary = [line.strip() for line in measured["output"].splitlines() if line.startswith("  ")]
    return {
        "seconds": measured["seconds"],
        "peak_mib": measured["peak_mib"],
        "customers": len(chosen),
        "warehouse_gib": round(settings.warehouse_path.stat().st_size / 2**30, 2),
        "summary": summary[:4],
    }


def exported_ingest(customers: int, days: int, work: Path) -> dict:
    """The same shop generated as shops export it (`generate --as-exported`: customer snapshots
    every 7 days, gzip CSV, JSON lines, TSV, integer ids, refunds, late and early rows) and
    loaded in one `segflow ingest`, in a folder of its own."""
    env = bench_env(work / "exported")
    landing = work / "exported" / "landing"
    generate = measure(
        [
            SEGFLOW,
            "generate",
            "--as-exported",
            "--customers",
            str(customers),
            "--days",
            str(days),
            "--end-date",
            END_DATE.isoformat(),
            "--seed",
            "7",
            "--out",
            str(landing),
            "--quiet",
        ],
        env,
    )
    ingest = measure([SEGFLOW, "ingest", "--as-of", END_DATE.isoformat()], env, keep_output=True)
    size = sum(path.stat().st_size for path in landing.rglob("*") if path.is_file())
    return {
        "generate": generate,
        "ingest": {k: ingest[k] for k in ("seconds", "peak_mib")},
        "landing_gib": round(size / 2**30, 2),
        "summary": [line for line in ingest["output"].splitlines() if "files new" in line],
    }


def run(customers: int, days: int, stages: list[str], work: Path, results: dict) -> None:
    """Run the chosen stages into `results`, stage by stage (a failure keeps what came before)."""
    env = bench_env(work)
    if "generate" in stages:
        # One day past END_DATE: the increment the daily run ingests.
        results["stages"]["generate"] = measure(
            [
                SEGFLOW,
                "generate",
                "--customers",
                str(customers),
                "--days",
                str(days + 1),
                "--end-date",
                DAILY_DATE.isoformat(),
                "--seed",
                "7",
                "--out",
                str(work / "landing"),
                "--quiet",
            ],
            env,
        )
    if (work / "landing").is_dir():
        results["rows"] = landing_rows(work / "landing")
    for stage, command in HISTORY_STAGES.items():
        if stage not in stages:
            continue
        if command is None:
            results["stages"][stage] = measure_all(snapshot_commands(env), env)
        elif stage == "score":
            results["stages"][stage] = scoring(command, env)
        else:
            results["stages"][stage] = measure([SEGFLOW, *command, END_DATE.isoformat()], env)
    results["comparisons"].update(feature_comparisons(env, work, stages))
    if "daily_run" in stages:
        results["daily_run"] = daily_run(env)
    if "trigger_refresh" in stages:
        results["trigger_refresh"] = trigger_refresh(env, work)
    if "customer_snapshot" in stages:
        results["customer_snapshot"] = customer_snapshot(env)
    if "erasure" in stages:
        results["erasure"] = erasure(env, work)
    if "exported_ingest" in stages:
        results["exported_ingest"] = exported_ingest(customers, days, work)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--stages", default=",".join(ALL_STAGES))
    parser.add_argument(
        "--work", type=Path, help="keep the data in this folder (and reuse what it holds)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the report from the JSON, run nothing"
    )
    args = parser.parse_args()
    if args.report_only:
        write_report(json.loads(RESULTS.read_text()))
        return
    stages = args.stages.split(",")
    unknown = set(stages) - set(ALL_STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; known: {', '.join(ALL_STAGES)}")

    work = args.work or Path(tempfile.mkdtemp(prefix=f"segflow-bench-{args.customers}-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"stages": {}, "comparisons": {}}
    try:
        run(args.customers, args.days, stages, work, result)
    finally:
        save(args.customers, args.days, result)  # a failed stage keeps those measured before
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(REPORT.read_text())


def save(customers: int, days: int, result: dict) -> None:
    result.update(
        customers=customers,
        days=days,
        measured_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=(
            f"{os.cpu_count()} cores, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
            f"{platform.python_implementation()} {platform.python_version()}"
        ),
    )
    all_results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    # A run of some stages updates those and keeps the scale's other measurements.
    key = f"{customers}x{days}"
    earlier = all_results.get(key, {})
    for part in ("stages", "comparisons"):
        result[part] = {**earlier.get(part, {}), **result[part]}
    result["rows"] = result.get("rows") or earlier.get("rows", {})
    for part in ("daily_run", "trigger_refresh", "customer_snapshot", "erasure", "exported_ingest"):
        if part not in result and part in earlier:
            result[part] = earlier[part]
    all_results[key] = result
    RESULTS.write_text(json.dumps(all_results, indent=2, sort_keys=True) + "\n")
    write_report(all_results)


if __name__ == "__main__":
    main()
