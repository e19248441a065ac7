"""Shared fixtures: an isolated data folder per test, and small generated landing data."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Tests never touch the project's own data/ or .airflow/ (a DAG-parsing test may still read the
# dags folder through AIRFLOW_HOME's config, which is harmless).
os.environ.setdefault("AIRFLOW_HOME", str(PROJECT_DIR / ".airflow"))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(PROJECT_DIR / "dags"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from ml.config import Settings, load_settings  # noqa: E402
from ml.features.dbt import DBT_PROJECT_DIR, run_dbt  # noqa: E402
from ml.synthetic.shop import generate  # noqa: E402

COMPOSE_TEXT = (PROJECT_DIR / "docker-compose.yml").read_text()
COMPOSE_VARIABLE = re.compile(r"(?<!\$)\$\{(\w+)(:[-?])?([^}]*)\}")
"""A ${NAME}, ${NAME:-default} or ${NAME:?message} that compose fills in from the environment
(name, operator, default or message); $${NAME} is left to the container's shell."""

SAMPLE_END = dt.date(2026, 6, 30)
TRAINED_AS_OF = dt.date(2026, 6, 30)
"""The date `trained_settings` trained its models as of, and has customer_features for."""


LONGEST_MODULES = ("test_production_stack.py", "test_refresh_triggers.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first: `make test` runs the modules on two workers (pytest-xdist,
    one module per worker at a time), so each worker starts with one of them and runs the
    others beside it instead of last."""
    order = {name: rank for rank, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))


def run_make(target: str, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    """`make <target>` in the project, as a user runs it, with `env` and a user's usual umask
    (this process has segflow's owner-only one)."""
    return subprocess.run(
        ["make", "--no-print-directory", target],
        cwd=PROJECT_DIR,
        env=env,
        umask=0o022,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def processes_with_env(variable: str, value: str) -> list[int]:
    """Every process whose environment has variable=value: what a test started, children
    included, whatever process group they moved to (Airflow 3.3 gives each task its own)."""
    wanted = f"{variable}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if wanted in environment:
            found.append(int(entry.name))
    return found


MLFLOW_URI_AT_START = os.environ.get("MLFLOW_TRACKING_URI")


@pytest.fixture(autouse=True)
def _mlflow_uri_does_not_leak_into_later_tests():
    """mlflow.set_tracking_uri (ml.models.registry) also exports MLFLOW_TRACKING_URI to os.environ:
    the Airflow processes a later test starts would inherit another test's registry. Session
    fixtures set up before this one, hence the value from the session's start."""
    yield
    if MLFLOW_URI_AT_START is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = MLFLOW_URI_AT_START


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    data = tmp_path / "data"
    return load_settings(
        {"SEGFLOW_DATA_DIR": str(data), "SEGFLOW_LANDING_DIR": str(tmp_path / "landing")}
    )


@pytest.fixture(scope="session")
def generated_landing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 customers over 90 days, generated once per session; copy it before changing it."""
    out = tmp_path_factory.mktemp("generated") / "landing"
    generate(out, customers=300, days=90, end_date=SAMPLE_END, seed=11, progress=False)
    return out


@pytest.fixture
def landing_copy(generated_landing: Path, settings: Settings) -> Path:
    shutil.copytree(generated_landing, settings.landing_dir)
    return settings.landing_dir


@pytest.fixture(scope="session")
def dbt_manifest() -> Path:
    """The manifest Cosmos renders the DAG's dbt tasks from (`make setup` makes it too)."""
    manifest = DBT_PROJECT_DIR / "target" / "manifest.json"
    if not manifest.exists():
        run_dbt(load_settings(), "parse", "--quiet")
    return manifest


@pytest.fixture(scope="session")
def trained_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """1,000 generated customers over 240 days up to TRAINED_AS_OF, ingested, features built for
    TRAINED_AS_OF, and every model kind trained (two training snapshots) and promoted to
    champion in a temporary MLflow store. Built once per session: tests that change the
    warehouse or the registry work on a copy."""
    from ml.features.dbt import build_features
    from ml.ingest.loader import ingest_landing
    from ml.models.train import train_all

    root = tmp_path_factory.mktemp("trained")
    generate(
        root / "landing", customers=1000, days=240, end_date=TRAINED_AS_OF, seed=11, progress=False
    )
    settings = load_settings(
        {
            "SEGFLOW_DATA_DIR": str(root / "data"),
            "SEGFLOW_LANDING_DIR": str(root / "landing"),
            "SEGFLOW_TRAINING_SNAPSHOTS": "2",
        }
    )
    ingest_landing(settings, as_of=TRAINED_AS_OF)
    build_features(settings, TRAINED_AS_OF)
    train_all(settings, TRAINED_AS_OF)
    return settings


def copy_of_trained(trained: Settings, root: Path) -> Settings:
    """The trained warehouse and MLflow store copied into `root`, so that a test may change
    them; the landing files stay shared (read only)."""
    shutil.copy(trained.warehouse_path, root / "warehouse.duckdb")
    shutil.copy(trained.mlflow_dir / "mlflow.db", root / "mlflow.db")
    return load_settings(
        {
            "SEGFLOW_DATA_DIR": str(root),
            "SEGFLOW_LANDING_DIR": str(trained.landing_dir),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        }
    )
