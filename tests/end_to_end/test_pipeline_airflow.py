"""The pipeline through real Airflow (`airflow dags test`), on its own metadata DB and data."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from ml.config import load_settings
from ml.monitoring.alerts import failures_path
from ml.synthetic.shop import generate
from tests.conftest import SAMPLE_END

pytestmark = pytest.mark.airflow
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
DAGS = Path(__file__).resolve().parents[2] / "dags"


DRIFT_FROM = SAMPLE_END + dt.timedelta(days=1)
DRIFTED_DATE = SAMPLE_END + dt.timedelta(days=30)


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """4,000 customers over 240 days up to SAMPLE_END (enough history for two monthly training
    snapshots and a validation snapshot), then 30 days of changed behaviour (`drift_from`), and
    a small hyper-parameter search for a quick cold start."""
    root = tmp_path_factory.mktemp("airflow-e2e")
    generate(
        root / "landing",
        customers=4000,
        days=270,
        end_date=DRIFTED_DATE,
        seed=5,
        progress=False,
        drift_from=DRIFT_FROM,
    )
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "SEGFLOW_DATA_DIR": str(root / "data"),
        "SEGFLOW_LANDING_DIR": str(root / "landing"),
        "SEGFLOW_TRAINING_SNAPSHOTS": "2",
        "SEGFLOW_TUNING_ITERATIONS": "2",
    }
    for command in (["db", "migrate"], ["pools", "set", "warehouse", "1", "warehouse writers"]):
        subprocess.run([AIRFLOW, *command], env=env, check=True, capture_output=True, timeout=300)
    return env


def run_dag(
    env: dict[str, str],
    logical_date: dt.date,
    conf: dict | None = None,
    dag_id: str = "segment_pipeline",
) -> subprocess.CompletedProcess:
    command = [AIRFLOW, "dags", "test", dag_id, logical_date.isoformat()]
    if conf is not None:
        command += ["-c", json.dumps(conf)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def raw_counts(env: dict[str, str]) -> dict[str, int]:
    path = Path(env["SEGFLOW_DATA_DIR"]) / "warehouse.duckdb"
    with duckdb.connect(str(path), read_only=True) as con:
        return {
            t: con.execute(f"SELECT count(*) FROM raw.{t}").fetchone()[0]
            for t in ("customers", "orders", "email_events", "web_events", "reviews")
        }


def expected_counts(landing: Path, until: dt.date) -> dict[str, int]:
    with duckdb.connect() as con:
        return {
            entity: con.execute(
                f"SELECT count(*) FROM read_parquet('{landing}/{entity}/**/*.parquet', hive_partitioning = true) "
                f"WHERE date <= DATE '{until}'"
            ).fetchone()[0]
            for entity in ("customers", "orders", "email_events", "web_events", "reviews")
        }


def features_per_date(env: dict[str, str]) -> dict[dt.date, int]:
    path = Path(env["SEGFLOW_DATA_DIR"]) / "warehouse.duckdb"
    with duckdb.connect(str(path), read_only=True) as con:
        rows = con.execute(
            "SELECT as_of_date, count(*) FROM marts.customer_features GROUP BY 1"
        ).fetchall()
    return dict(rows)


def publication(env: dict[str, str]) -> tuple[list[tuple], dict[str, bytes]]:
    """Every published row, and every export file's bytes: what an e-mail tool can see."""
    data = Path(env["SEGFLOW_DATA_DIR"])
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT * FROM published.customer_segments ORDER BY as_of_date, customer_id"
        ).fetchall()
    exports = data / "exports"
    files = {str(f.relative_to(exports)): f.read_bytes() for f in exports.rglob("*") if f.is_file()}
    return rows, files


def features_fingerprint(env: dict[str, str]) -> tuple:
    path = Path(env["SEGFLOW_DATA_DIR"]) / "warehouse.duckdb"
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(
            "SELECT count(*), sum(hash(f)) FROM marts.customer_features f"
        ).fetchone()


def test_daily_runs_publish_and_a_corrupt_day_stops_at_the_raw_gate(
    airflow_env: dict[str, str],
):
    from ml.models.catalogue import MODEL_KINDS
    from ml.models.registry import missing_champions

    landing = Path(airflow_env["SEGFLOW_LANDING_DIR"])
    settings = load_settings(airflow_env)
    previous = SAMPLE_END - dt.timedelta(days=1)

    # The first run has no champion: it trains every model first (cold start), then publishes.
    assert missing_champions(settings) == list(MODEL_KINDS)
    result = run_dag(airflow_env, previous)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert raw_counts(airflow_env) == expected_counts(landing, previous)
    assert missing_champions(settings) == []
    # Cosmos built the marts for the run's own date through dbt (training built its snapshots).
    features = features_per_date(airflow_env)
    assert features[previous] == expected_counts(landing, previous)["customers"]
    rows, files = publication(airflow_env)
    assert pd.DataFrame(rows).groupby(1).size().to_dict() == {previous: features[previous]}
    manifest = json.loads(files[f"{previous}/manifest.json"])
    assert set(manifest["model_versions"]) == set(MODEL_KINDS)
    assert {f"{previous}/{name}.csv" for name in manifest["audiences"]} <= set(files)

    # The last day's export has negative amounts in 40% of its orders.
    path = landing / "orders" / f"date={SAMPLE_END}" / "part-0.parquet"
    orders = pd.read_parquet(path)
    broken = max(1, int(len(orders) * 0.4))
    orders.loc[: broken - 1, "amount"] = -orders.loc[: broken - 1, "amount"].abs() - 1
    orders.to_parquet(path)
    before = features_fingerprint(airflow_env)

    failed = run_dag(airflow_env, SAMPLE_END)
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "quarantine above SEGFLOW_QUARANTINE_MAX_SHARE=5.0% for orders" in output
    assert "amount: must be >= 0" in output
    # The failure callback recorded the gate's failure once, with the rule that failed.
    (failure,) = map(json.loads, failures_path(settings).read_text().splitlines())
    assert (failure["dag_id"], failure["task_id"], failure["as_of_date"]) == (
        "segment_pipeline",
        "raw_gate",
        SAMPLE_END.isoformat(),
    )
    assert failure["exception_class"] == "ml.errors.QuarantineTooLarge"
    assert "amount: must be >= 0" in failure["exception_message"]
    # Nothing downstream of the gate ran: the features are as before, and the previous days'
    # publication (rows and export files) is unchanged byte for byte.
    assert features_fingerprint(airflow_env) == before
    assert publication(airflow_env) == (rows, files)


def test_train_models_registers_challengers_and_tags_their_gate(airflow_env: dict[str, str]):
    from ml.models import catalogue
    from ml.models.registry import mlflow_client

    # A clustering and a classifier: the `models` param keeps the other three out (and quick).
    kinds = ["personas", "churn_risk"]
    result = run_dag(
        airflow_env, SAMPLE_END - dt.timedelta(days=1), {"models": kinds}, dag_id="train_models"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = mlflow_client(load_settings(airflow_env))
    for kind in kinds:
        name = catalogue.model(kind).registered_name
        challenger = client.get_model_version_by_alias(name, "challenger")
        assert int(challenger.version) >= 2, kind  # the cold start registered version 1
        assert challenger.tags["validation_status"] in {"passed", "failed"}, kind
        assert challenger.tags["validation_reason"], kind
        champion = client.get_model_version_by_alias(name, "champion")
        # Auto-promotion is on: a passing challenger is the champion, a failing one is not.
        assert (champion.version == challenger.version) == (
            challenger.tags["validation_status"] == "passed"
        ), kind
    # The models the param left out got no new version.
    untouched = catalogue.CUSTOMER_VALUE.registered_name
    assert [int(v.version) for v in client.search_model_versions(f"name='{untouched}'")] == [1]


def test_a_run_with_an_as_of_param_that_is_not_a_date_is_refused(airflow_env: dict[str, str]):
    result = run_dag(airflow_env, SAMPLE_END, {"as_of_date": "30.06.2026"})
    assert result.returncode != 0
    assert (
        "Invalid input for param as_of_date: '30.06.2026' is not a 'date'"
        in result.stdout + result.stderr
    )


def test_training_an_unknown_model_is_refused(airflow_env: dict[str, str]):
    result = run_dag(airflow_env, SAMPLE_END, {"models": ["churn"]}, dag_id="train_models")
    assert result.returncode != 0
    assert "Invalid input for param models: 'churn' is not one of" in result.stdout + result.stderr


def test_a_run_after_the_drift_date_raises_the_alert_that_schedules_train_models(
    airflow_env: dict[str, str],
):
    # A paused DAG is not scheduled by assets: train_models is unpaused, as in production.
    for command in (["dags", "reserialize"], ["dags", "unpause", "train_models"]):
        subprocess.run(
            [AIRFLOW, *command], env=airflow_env, check=True, capture_output=True, timeout=300
        )
    result = run_dag(airflow_env, DRIFTED_DATE)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "drift alert for " + DRIFTED_DATE.isoformat() in output

    metadata = Path(airflow_env["AIRFLOW_HOME"]) / "airflow.db"
    with contextlib.closing(sqlite3.connect(f"file:{metadata}?mode=ro", uri=True)) as con:
        (extra,) = con.execute(
            """SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id
               WHERE a.name = 'drift_alert'"""
        ).fetchall()
        queued = con.execute(
            """SELECT q.target_dag_id FROM asset_dag_run_queue q
               JOIN asset a ON a.id = q.asset_id WHERE a.name = 'drift_alert'"""
        ).fetchall()
    # The alert names the date, the drifted features and the models to retrain...
    alert = json.loads(extra[0])
    assert alert["as_of_date"] == DRIFTED_DATE.isoformat()
    drifted = {r["name"] for r in alert["reasons"] if r["check"] == "feature"}
    # Fewer opens (ml/synthetic/shop.py), measured by the features that count and date them.
    assert {"email_opens_30d", "days_since_last_open"} <= drifted, alert["reasons"]
    opens = next(r for r in alert["reasons"] if r["name"] == "email_opens_30d")
    assert opens["value"] >= opens["threshold"] == 0.25
    assert "engagement_propensity" in alert["models"]
    # ...and the scheduler has a train_models run queued for it.
    assert queued == [("train_models",)]
    # The warehouse keeps the same verdict and reasons; the report shows them.
    path = Path(airflow_env["SEGFLOW_DATA_DIR"]) / "warehouse.duckdb"
    with duckdb.connect(str(path), read_only=True) as con:
        raised, models, reasons, report = con.execute(
            """SELECT raised, models, reasons, report FROM monitoring.drift_alerts
               WHERE as_of_date = ?""",
            [DRIFTED_DATE],
        ).fetchone()
    assert raised and models == alert["models"] and json.loads(reasons) == alert["reasons"]
    assert "Drift alert" in Path(report).read_text()
