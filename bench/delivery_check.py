"""Data as shops export it, through Airflow, day after day: every run green, nothing lost.
Writes docs/delivery-check.md.

    python bench/delivery_check.py [--customers 5000] [--history-days 240] [--run-days 60]
                                   [--work DIR]

A shop is generated with `segflow generate --as-exported` (full customer snapshots with
changes, integer and `42.0` ids, gzip, TSV and JSON lines, late and early rows, refunds, the
e-mail tools' event names) and `segment_pipeline` runs through Airflow (`airflow dags test`,
as `make run` does) for each of the last `--run-days` dates, oldest first: the first run loads
the history and trains the models (cold start), each later run loads its day. Afterwards the
warehouse's counts are checked against what the generator delivered. A run takes about half a
minute here, so this is not part of the test suite; tests/synthetic/test_deliveries.py loads the same
kind of delivery day by day without Airflow.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import bench_env  # the benchmark's: everything in the work folder

PROJECT = Path(__file__).resolve().parent.parent
REPORT = PROJECT / "docs" / "delivery-check.md"
BIN = Path(sys.executable).parent
END = dt.date(2026, 10, 31)
SEED = 5


def airflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "airflow"), *args], env=env, capture_output=True, text=True, check=False
    )


def task_states(env: dict[str, str], day: dt.date) -> dict[str, str]:
    import sqlite3

    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        rows = db.execute(
            """SELECT ti.task_id, ti.state FROM task_instance ti
               JOIN dag_run r ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id
               WHERE ti.dag_id = 'segment_pipeline' AND date(r.logical_date) = ?""",
            [day.isoformat()],
        ).fetchall()
    return dict(rows)


def warehouse_counts(env: dict[str, str]) -> dict:
    import duckdb

    from ml.config import load_settings

    settings = load_settings(env)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        files = {
            entity: dict(
                zip(("rows", "loaded", "unchanged", "held", "rejected"), counts, strict=True)
            )
            for entity, *counts in con.execute(
                """SELECT entity, sum(rows_in_file), sum(rows_loaded), sum(rows_unchanged),
                          sum(rows_held), sum(rows_rejected) FROM raw.loaded_files GROUP BY 1"""
            ).fetchall()
        }
        return {
            "files": files,
            "customer_versions": con.execute(
                "SELECT count(*) FROM raw.customer_versions"
            ).fetchone()[0],
            "order_versions": con.execute("SELECT count(*) FROM raw.order_versions").fetchone()[0],
            "held_now": con.execute("SELECT count(*) FROM quarantine.held_rows").fetchone()[0],
            "bad_files": con.execute("SELECT count(*) FROM quarantine.files").fetchone()[0],
            "published_dates": con.execute(
                "SELECT count(DISTINCT as_of_date) FROM published.customer_segments"
            ).fetchone()[0],
            "unsubscribed_in_exports": con.execute(
                # Every delivered unsubscribe against the newest publication's e-mailable rows.
                """SELECT count(*) FROM published.customer_segments s
                   JOIN raw.email_events e ON e.customer_id = s.customer_id
                   WHERE e.event_type = 'unsubscribe' AND s.is_emailable
                     AND s.as_of_date = (SELECT max(as_of_date) FROM published.customer_segments)
                     AND e.occurred_at < s.as_of_date + INTERVAL 1 DAY"""
            ).fetchone()[0],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Enough customers and history before the first run for the models to beat their baselines.
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--history-days", type=int, default=240)
    parser.add_argument("--run-days", type=int, default=60)
    parser.add_argument("--work", type=Path, help="keep the shop here (default: a temp dir)")
    args = parser.parse_args()

    from ml.synthetic.deliveries import generate_as_exported

    work = args.work or Path(tempfile.mkdtemp(prefix="segflow-delivery-check-"))
    env = bench_env(work)
    started = time.perf_counter()
    delivered = generate_as_exported(
        work / "landing", args.customers, args.history_days, END, seed=SEED, progress=False
    )
    (work / "airflow").mkdir(parents=True, exist_ok=True)
    for command in (("db", "migrate"), ("pools", "set", "warehouse", "1", "one writer")):
        result = airflow(env, *command)
        if result.returncode != 0:
            raise SystemExit(result.stdout + result.stderr)

    days = [END - dt.timedelta(days=n) for n in reversed(range(args.run_days))]
    runs = []
    for day in days:
        begun = time.perf_counter()
        result = airflow(env, "dags", "test", "segment_pipeline", day.isoformat())
        seconds = time.perf_counter() - begun
        states = task_states(env, day)
        failed = sorted(
            task for task, state in states.items() if state not in ("success", "skipped")
        )
        runs.append((day, seconds, result.returncode, len(states), failed))
        print(
            f"{day}: rc {result.returncode}, {len(states)} tasks, failed {failed}, {seconds:.0f} s",
            flush=True,
        )
        if result.returncode != 0 or failed:
            (work / f"failed-{day}.log").write_text(result.stdout + result.stderr)
    counts = warehouse_counts(env)
    minutes = (time.perf_counter() - started) / 60
    REPORT.write_text("\n".join(render(args, delivered, runs, counts, minutes)) + "\n")
    print(REPORT.read_text())


def render(args, delivered, runs, counts: dict, minutes: float) -> list[str]:
    green = sum(1 for _, _, rc, tasks, failed in runs if rc == 0 and tasks and not failed)
    seconds = sorted(s for _, s, *_ in runs)
    lines = [
        "# Delivery check: data as shops export it, through Airflow",
        "",
        f"Made by `make delivery-check` (`python bench/delivery_check.py --customers "
        f"{args.customers} --history-days {args.history_days} --run-days {args.run_days}`) in "
        f"{minutes:.0f} min on this 2-core machine. A shop of {args.customers:,} customers over "
        f"{args.history_days} days up to {END}, generated as shops export it "
        "(`segflow generate --as-exported`), and `segment_pipeline` run through Airflow "
        f"(`airflow dags test`) for each of the last {args.run_days} dates, oldest first.",
        "",
        f"**Runs: {green} of {len(runs)} green** (every task succeeded or was skipped as "
        f"designed). The first, which loads the history and trains the models, took "
        f"{runs[0][1]:.0f} s; the others a median of {seconds[len(seconds) // 2]:.0f} s "
        f"(max {seconds[-1]:.0f} s).",
        "",
        "What was delivered (the generator's report) and where every row went (raw.loaded_files):",
        "",
        "| entity | files | rows delivered | first deliveries | unchanged again | changed again "
        "| late | early | loaded | unchanged | held now | rejected | adds up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for entity, d in delivered.entities.items():
        c = counts["files"].get(
            entity, dict.fromkeys(("rows", "loaded", "unchanged", "held", "rejected"), 0)
        )
        adds_up = c["rows"] == d.rows == c["loaded"] + c["unchanged"] + c["held"] + c["rejected"]
        lines.append(
            f"| {entity} | {d.files:,} | {d.rows:,} | {d.first_deliveries:,} | "
            f"{d.unchanged_redeliveries:,} | {d.changed_redeliveries:,} | {d.late:,} | "
            f"{d.early:,} | {c['loaded']:,} | {c['unchanged']:,} | {c['held']:,} | "
            f"{c['rejected']:,} | {'yes' if adds_up else '**no**'} |"
        )
    changes = delivered.customer_changes
    lines += [
        "",
        f"- Customer versions in raw: {counts['customer_versions']:,} = "
        f"{delivered.entities['customers'].first_deliveries:,} customers + "
        f"{changes['email']:,} new addresses + {changes['opt_out']:,} opt-outs + "
        f"{changes['opt_in']:,} opt-ins ({changes['respelled']:,} rows that only respelled the "
        "same consent, `true` as `yes`, are unchanged).",
        f"- Order versions: {counts['order_versions']:,} (the refunds are second versions).",
        f"- Early rows ({sum(e.early for e in delivered.entities.values()):,}, of them "
        f"{delivered.early_unsubscribes:,} unsubscribes delivered before their customer) wait "
        "in quarantine.held_rows for their customer's snapshot and load with it (those in the "
        "history the first run loads arrive together with their customers); rows still held "
        f"at the end: "
        f"{counts['held_now']:,}. Bad files: {counts['bad_files']}.",
        f"- Dates published: {counts['published_dates']}. Customers e-mailable in the newest "
        f"publication although an unsubscribe of theirs was delivered: "
        f"{counts['unsubscribed_in_exports']}.",
        "",
        "| date | seconds | tasks | result |",
        "|---|---:|---:|---|",
        *[
            f"| {day} | {s:.0f} | {tasks} | {'green' if rc == 0 and not failed else 'FAILED: ' + ', '.join(failed)} |"
            for day, s, rc, tasks, failed in runs
        ],
    ]
    return lines


if __name__ == "__main__":
    main()
