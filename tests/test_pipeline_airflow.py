"""The pipeline through real Airflow (`airflow dags test`), on its own metadata DB and data."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from tests.conftest import SAMPLE_END

pytestmark = pytest.mark.slow
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
DAGS = Path(__file__).resolve().parents[1] / "dags"


@pytest.fixture(scope="module")
def airflow_env(
    tmp_path_factory: pytest.TempPathFactory, generated_landing: Path
) -> dict[str, str]:
    root = tmp_path_factory.mktemp("airflow-e2e")
    shutil.copytree(generated_landing, root / "landing")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "SEGFLOW_DATA_DIR": str(root / "data"),
        "SEGFLOW_LANDING_DIR": str(root / "landing"),
    }
    for command in (["db", "migrate"], ["pools", "set", "warehouse", "1", "warehouse writers"]):
        subprocess.run([AIRFLOW, *command], env=env, check=True, capture_output=True, timeout=300)
    return env


def run_dag(
    env: dict[str, str], logical_date: dt.date, conf: dict | None = None
) -> subprocess.CompletedProcess:
    command = [AIRFLOW, "dags", "test", "segment_pipeline", logical_date.isoformat()]
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


def features_fingerprint(env: dict[str, str]) -> tuple:
    path = Path(env["SEGFLOW_DATA_DIR"]) / "warehouse.duckdb"
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(
            "SELECT count(*), sum(hash(f)) FROM marts.customer_features f"
        ).fetchone()


def test_daily_runs_build_their_features_and_a_corrupt_day_stops_at_the_raw_gate(
    airflow_env: dict[str, str],
):
    landing = Path(airflow_env["SEGFLOW_LANDING_DIR"])
    earlier, previous = SAMPLE_END - dt.timedelta(days=10), SAMPLE_END - dt.timedelta(days=1)

    for day in (earlier, previous):
        result = run_dag(airflow_env, day)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert raw_counts(airflow_env) == expected_counts(landing, day)
    # Cosmos built the marts for each run's own date, through dbt.
    features = features_per_date(airflow_env)
    assert set(features) == {earlier, previous}
    assert (
        0
        < features[earlier]
        <= features[previous]
        == expected_counts(landing, previous)["customers"]
    )

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
    # Nothing downstream of the gate ran: the features are exactly as before.
    assert features_fingerprint(airflow_env) == before


def test_a_run_with_an_as_of_param_that_is_not_a_date_is_refused(airflow_env: dict[str, str]):
    result = run_dag(airflow_env, SAMPLE_END, {"as_of_date": "30.06.2026"})
    assert result.returncode != 0
    assert (
        "Invalid input for param as_of_date: '30.06.2026' is not a 'date'"
        in result.stdout + result.stderr
    )
