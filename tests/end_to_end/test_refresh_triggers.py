"""refresh_triggers on the embedded default, as a user runs it: `make up` (airflow standalone:
scheduler, triggerer, DAG processor and API server on SQLite with LocalExecutor), the DAG
unpaused, and increment files dropped into the landing zone. Nothing is triggered by hand: the
landing watcher's asset events start every run.

The data folder starts as a copy of `trained_settings`' (1,000 customers up to TRAINED_AS_OF,
models trained) with that date's daily publication made here, so triggers filter on real
segments and consent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from ml.config import Settings, load_settings
from ml.segments.publish import publish_segments
from ml.segments.score import score_customers
from ml.warehouse.connection import connect
from tests.conftest import PROJECT_DIR, TRAINED_AS_OF, free_port, processes_with_env, run_make

pytestmark = pytest.mark.airflow
TRIGGERS = """
audiences:
  - name: everyone
    holdout_share: 0.0
    filters: {purchase_propensity: {">=": 0}}
triggers:
  - name: recent_buyer
    event: orders.completed
    holdout_share: 0.0
  - name: cart_abandoner
    event: web_events.add_to_cart
    unless_followed_by: [web_events.checkout, orders.completed]
    within_hours: 1
    holdout_share: 0.0
  - name: win_back_open
    event: email_events.open
    filters: {churn_risk_band: [high]}
    holdout_share: 0.0
"""
WATCHER_TIMEOUT_S = 300
REFRESH_TIMEOUT_S = 300
QUIET_S = 5
"""A few of the watcher's polls (1 s here) without a new run: the increment is all done."""


@dataclass
class LiveAirflow:
    env: dict[str, str]
    settings: Settings
    home: Path

    def metadata(self, query: str, params: tuple = ()) -> list[tuple]:
        """A read of Airflow's SQLite metadata (retried while a writer holds it)."""
        for _ in range(20):
            try:
                with contextlib.closing(sqlite3.connect(self.home / "airflow.db", timeout=5)) as db:
                    return db.execute(query, params).fetchall()
            except sqlite3.OperationalError:
                time.sleep(0.5)
        raise AssertionError(f"Airflow's metadata stayed locked: {query}")

    def runs(self) -> list[tuple[str, str, str]]:
        return self.metadata(
            "SELECT run_id, run_type, state FROM dag_run WHERE dag_id = 'refresh_triggers' "
            "ORDER BY queued_at"
        )

    def failure_report(self) -> str:
        report = [str(run) for run in self.runs()]
        for log in sorted((self.home / "logs" / "dag_id=refresh_triggers").rglob("*.log")):
            lines = []
            for line in log.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    line = f"{record.get('level')} {record.get('event')}"
                    for error in record.get("error_detail", []):
                        line += f"\n    {error['exc_type']}: {error['exc_value']}"
                lines.append(line)
            report.append(f"--- {log}\n" + "\n".join(lines[-25:]))
        run_log = self.home / "run" / "airflow.log"
        if run_log.exists():
            report.append(f"--- {run_log}\n{run_log.read_text(errors='replace')[-4000:]}")
        return "\n".join(report)

    def wait_for_refreshes(self, count: int) -> list[tuple[str, str, str]]:
        """Until at least `count` refresh runs have finished and no other started for a few
        polls; a failed one fails the test with its logs."""
        deadline = time.monotonic() + REFRESH_TIMEOUT_S
        quiet_since, seen = None, None
        while True:
            runs = self.runs()
            states = [state for _, _, state in runs]
            assert "failed" not in states, self.failure_report()
            finished = len(runs) >= count and all(s == "success" for s in states)
            if not finished or runs != seen:
                quiet_since, seen = time.monotonic(), runs
            elif time.monotonic() - quiet_since > QUIET_S:
                return runs
            assert time.monotonic() < deadline, (
                f"{count} refresh runs not finished after {REFRESH_TIMEOUT_S} s\n"
                + self.failure_report()
            )
            time.sleep(1)


@pytest.fixture(scope="module")
def live(
    trained_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveAirflow]:
    """`make up` on a copy of the trained data with the date's daily publication, and
    refresh_triggers unpaused with its watcher running; `make down` afterwards."""
    root = tmp_path_factory.mktemp("live")
    shutil.copytree(trained_settings.data_dir, root / "data")
    shutil.copytree(trained_settings.landing_dir, root / "landing")
    (root / "audiences.yml").write_text(TRIGGERS)
    overrides = {
        "SEGFLOW_DATA_DIR": str(root / "data"),
        "SEGFLOW_LANDING_DIR": str(root / "landing"),
        "SEGFLOW_AUDIENCES_PATH": str(root / "audiences.yml"),
        "SEGFLOW_LANDING_POLL_SECONDS": "1",
        "SEGFLOW_TRAINING_SNAPSHOTS": "2",
    }
    settings = load_settings(overrides)
    score_customers(settings, TRAINED_AS_OF)
    publish_segments(settings, TRAINED_AS_OF, run_id="daily", gate_passed=True)

    port = free_port()
    env = {
        **os.environ,
        **overrides,
        "AIRFLOW_HOME": str(root / "airflow"),
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "AIRFLOW__API__PORT": str(port),
        # Under `make test` the caller's environment holds the Makefile's URLs for port 8080.
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "MLFLOW_PORT": str(free_port()),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        # The watcher is created when the DAG is parsed after its unpausing.
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
    }
    airflow = LiveAirflow(env, settings, root / "airflow")
    try:
        up = run_make("up", env)
        assert up.returncode == 0, f"make up failed:\n{up.stdout}\n{up.stderr}"
        deadline = time.monotonic() + WATCHER_TIMEOUT_S
        while not airflow.metadata("SELECT 1 FROM dag WHERE dag_id = 'refresh_triggers'"):
            assert time.monotonic() < deadline, "refresh_triggers was not parsed"
            time.sleep(1)
        unpause = subprocess.run(
            [str(PROJECT_DIR / ".venv" / "bin" / "airflow"), "dags", "unpause", "refresh_triggers"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert unpause.returncode == 0, unpause.stderr
        # The watcher's first look marks the history as seen: only then may files land.
        while not airflow.metadata("SELECT value FROM asset_state_store"):
            assert time.monotonic() < deadline, "the landing watcher did not start\n" + (
                airflow.failure_report()
            )
            time.sleep(1)
        yield airflow
    finally:
        run_make("down", env)
        for pid in processes_with_env("AIRFLOW_HOME", env["AIRFLOW_HOME"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def published_segments(settings: Settings) -> pd.DataFrame:
    with connect(settings, read_only=True) as con:
        return con.execute(
            "SELECT customer_id, is_emailable, churn_risk_band FROM published.customer_segments "
            "ORDER BY customer_id"
        ).df()


def drop(landing: Path, entity: str, name: str, rows: list[dict]) -> None:
    """A CSV increment written under a hidden name and renamed into place, as a writer should."""
    folder = landing / entity / f"date={dt.datetime.now(dt.UTC).date()}"
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / f".{name}.tmp", index=False)
    (folder / f".{name}.tmp").rename(folder / name)


def iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def order(customer: str, at: dt.datetime, tag: str) -> dict:
    return {"order_id": f"O-{tag}-{customer}", "customer_id": customer, "ordered_at": iso(at),
            "amount": "19.90", "status": "completed"}  # fmt: skip


def event(customer: str, kind: str, at: dt.datetime, tag: str, **extra) -> dict:
    return {"event_id": f"{tag}-{kind}-{customer}", "customer_id": customer, "event_type": kind,
            "occurred_at": iso(at), **extra}  # fmt: skip


def export(folder: Path, name: str) -> list[str]:
    return list(pd.read_csv(folder / name, dtype=str).customer_id)


def delta_exports(settings: Settings, before: set[Path]) -> tuple[list[Path], dict[str, list]]:
    """The export folders published since `before`, and each file's customers over all of them
    (an increment normally makes one refresh, but a writer's pause may split it in two)."""
    folders = sorted(set((settings.exports_dir / "triggers").iterdir()) - before)
    assert folders, "no trigger export was published"
    names = {path.name for folder in folders for path in folder.glob("*.csv")}
    return folders, {
        name: sorted(c for folder in folders for c in export(folder, name)) for name in names
    }


def test_increments_in_the_landing_zone_publish_trigger_exports_and_unsubscribes_stick(
    live: LiveAirflow,
):
    segments = published_segments(live.settings)
    ok = segments[segments.is_emailable]
    buyers = list(ok.customer_id[:3])
    cart, checked_out = ok.customer_id.iloc[3], ok.customer_id.iloc[4]
    leaver, late_buyer = ok.customer_id.iloc[5], ok.customer_id.iloc[6]
    at_risk = ok[ok.churn_risk_band == "high"].customer_id.iloc[-1]
    safe = ok[ok.churn_risk_band == "low"].customer_id.iloc[-1]
    not_emailable = segments[~segments.is_emailable].customer_id.iloc[0]
    now = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
    hour = dt.timedelta(hours=1)
    landing = live.settings.landing_dir

    # Increment 1: web events first, so the last file lands when the others have settled.
    drop(landing, "web_events", "increment-1.csv", [
        event(cart, "add_to_cart", now - 2 * hour, "W1", session_id="S1"),
        event(checked_out, "add_to_cart", now - 2 * hour, "W1", session_id="S2"),
        event(checked_out, "checkout", now - 1.9 * hour, "W1", session_id="S2"),
    ])  # fmt: skip
    drop(landing, "email_events", "increment-1.csv", [
        event(at_risk, "open", now, "E1", campaign_id="C1"),
        event(safe, "open", now, "E1", campaign_id="C1"),
        event(leaver, "unsubscribe", now - 0.5 * hour, "E1", campaign_id="C1"),
    ])  # fmt: skip
    dropped = time.time()
    drop(landing, "orders", "increment-1.csv", [
        *(order(c, now, "1") for c in [*buyers, leaver, not_emailable]),
    ])  # fmt: skip

    runs = live.wait_for_refreshes(1)
    first, exported = delta_exports(live.settings, before=set())
    assert {run_type for _, run_type, _ in runs} == {"asset_triggered"}, runs
    assert exported["recent_buyer.csv"] == sorted(buyers)
    assert exported["cart_abandoner.csv"] == [cart]
    assert exported["win_back_open.csv"] == [at_risk]
    assert leaver in exported["suppressions.csv"]
    assert not_emailable in exported["suppressions.csv"]
    manifest = json.loads((first[0] / "manifest.json").read_text())
    assert manifest["daily_as_of"] == TRAINED_AS_OF.isoformat()
    assert manifest["run_id"] == runs[0][0]
    latency = (first[-1] / "manifest.json").stat().st_mtime - dropped
    print(f"file arrival to published delta: {latency:.1f} s")

    # Increment 2: the customer who unsubscribed buys again, a buyer buys again within the
    # cooldown, and a new buyer: only the new buyer is exported.
    drop(landing, "orders", "increment-2.csv", [
        order(leaver, now + 0.5 * dt.timedelta(minutes=1), "2"),
        order(buyers[0], now + 0.5 * dt.timedelta(minutes=1), "2"),
        order(late_buyer, now + 0.5 * dt.timedelta(minutes=1), "2"),
    ])  # fmt: skip
    runs = live.wait_for_refreshes(len(runs) + 1)
    assert {run_type for _, run_type, _ in runs} == {"asset_triggered"}, runs
    _, exported = delta_exports(live.settings, before=set(first))
    assert exported["recent_buyer.csv"] == [late_buyer]
    assert exported["suppressions.csv"] == []  # nothing new to suppress

    # The daily exports published from now on leave the customer out too, whatever the date.
    publish_segments(live.settings, TRAINED_AS_OF, run_id="daily-again", gate_passed=True)
    daily = live.settings.exports_dir / TRAINED_AS_OF.isoformat()
    assert leaver not in export(daily, "everyone.csv")
    assert set(ok.customer_id) - {leaver} == set(export(daily, "everyone.csv"))
