"""Building the feature marts with dbt for an as-of date.

dbt runs in a child process: the DuckDB file is released the moment dbt exits (dbt's
in-process runner keeps it open), and a failure is reported with the failing nodes. Several
commands share one child (`run_dbt_commands`): importing dbt and loading the project cost
about 5 s per process here, more than building one training snapshot.
Airflow runs the same project model by model through Cosmos (dags/segment_pipeline.py);
this is the path for the CLI, tests and benchmarks.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from ml.config import PROJECT_DIR, Settings
from ml.contract import PLAIN_ADDRESS_PATTERN
from ml.errors import FeatureBuildError

log = logging.getLogger(__name__)

DBT_PROJECT_DIR = PROJECT_DIR / "dbt_project"
DBT_EXECUTABLE = Path(sys.executable).with_name("dbt")


def dbt_environment(settings: Settings) -> dict[str, str]:
    """What dbt needs from segflow's configuration (profiles.yml and the models read these),
    and the address rule (ml/contract.py), so that dbt applies segflow's one definition."""
    return {
        "SEGFLOW_WAREHOUSE_PATH": str(settings.warehouse_path),
        "SEGFLOW_DUCKDB_MEMORY_LIMIT": settings.duckdb_memory_limit,
        "DBT_PROFILES_DIR": str(DBT_PROJECT_DIR),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "SEGFLOW_EMPTY_OPT_IN_MEANS": "opted_in"
        if settings.loading.empty_opt_in_emailable
        else "opted_out",
        "SEGFLOW_PLAIN_ADDRESS_PATTERN": PLAIN_ADDRESS_PATTERN,
    }


def dbt_vars(settings: Settings, as_of: dt.date, label_as_of: dt.date | None = None) -> str:
    values = {"as_of_date": as_of.isoformat(), "label_horizon_days": settings.label_horizon_days}
    if label_as_of is not None:
        values["label_as_of_date"] = label_as_of.isoformat()
    return json.dumps(values)


def run_dbt(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    """Run a dbt command on the project; raise FeatureBuildError naming what failed."""
    return _run_child(settings, [str(DBT_EXECUTABLE), *args, "--project-dir", str(DBT_PROJECT_DIR)])


def dbt_target_dir(settings: Settings) -> Path:
    """Where the builds segflow starts write dbt's artifacts: in the data folder, not in
    dbt_project/target, whose manifest.json Cosmos reads each time Airflow parses the DAG."""
    return settings.data_dir / "dbt-target"


def run_dbt_commands(settings: Settings, commands: list[list[str]]) -> str:
    """Run dbt commands one after the other in a single child process (`python -m
    ml.features.dbt`), stopping at the first that fails; return dbt's output."""
    target = ["--target-path", str(dbt_target_dir(settings))]
    batch = json.dumps([[*command, *target] for command in commands])
    return _run_child(settings, [sys.executable, "-m", "ml.features.dbt", batch]).stdout


def _run_child(settings: Settings, command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command,
        env={**os.environ, **dbt_environment(settings)},
        cwd=DBT_PROJECT_DIR,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise FeatureBuildError(
            _failures(result.stdout) or result.stdout[-4000:] + result.stderr[-2000:]
        )
    return result


def _invoke_in_this_process(commands: list[list[str]]) -> int:
    from dbt.cli.main import dbtRunner

    runner = dbtRunner()
    for args in commands:
        if not runner.invoke([*args, "--project-dir", str(DBT_PROJECT_DIR)]).success:
            return 1
    return 0


def _failures(output: str) -> str:
    """The lines of dbt's summary that say what failed and why."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if "Completed with" in line), None)
    return "\n".join(lines[start:]) if start is not None else ""


def build_features(
    settings: Settings,
    as_of: dt.date,
    label_as_of: dt.date | None = None,
    select: str | None = None,
) -> str:
    """Score new review texts, then `dbt build` (models, tests, unit tests) for `as_of`."""
    from ml.features.text_signal import score_review_sentiment

    score_review_sentiment(settings, as_of)
    args = ["build", "--target-path", str(dbt_target_dir(settings))]
    args += ["--vars", dbt_vars(settings, as_of, label_as_of)]
    if label_as_of is not None:
        # The unit tests pin their own dates, which an explicit label date would override.
        args += ["--exclude-resource-type", "unit_test"]
    if select:
        args += ["--select", select]
    result = run_dbt(settings, *args)
    log.info("dbt build for %s:\n%s", as_of, result.stdout[-1500:])
    return result.stdout


def features_summary(settings: Settings) -> str:
    """The newest features date: customers per RFM segment with their typical values."""
    from ml.warehouse.connection import connect, table_exists

    with connect(settings, read_only=True) as con:
        if not table_exists(con, "marts", "customer_features"):
            return "features: none built yet (segflow features --as-of YYYY-MM-DD, or make run)"
        as_of = con.execute("SELECT max(as_of_date) FROM marts.customer_features").fetchone()[0]
        rows = con.execute(
            """SELECT rfm_segment, count(*), median(recency_days), avg(frequency), avg(monetary),
                      avg(email_open_rate_90d)
               FROM marts.customer_features WHERE as_of_date = ?
               GROUP BY rfm_segment ORDER BY count(*) DESC""",
            [as_of],
        ).fetchall()
    lines = [
        f"customer_features as of {as_of}: RFM segments",
        f"  {'segment':<20}{'customers':>10}{'recency':>9}{'orders':>8}{'revenue':>10}{'open rate':>11}",
    ]
    for segment, n, recency, orders, revenue, open_rate in rows:
        recency_text = f"{recency:.0f}d" if recency is not None else "-"
        open_text = f"{open_rate:.0%}" if open_rate is not None else "-"
        lines.append(
            f"  {segment:<20}{n:>10,}{recency_text:>9}{orders:>8.1f}{float(revenue):>10,.0f}{open_text:>11}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    # The child process of run_dbt_commands.
    sys.exit(_invoke_in_this_process(json.loads(sys.argv[1])))
