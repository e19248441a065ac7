"""Shared fixtures: an isolated data folder per test, and small generated landing data."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Tests never touch the project's own data/ or .airflow/ (a DAG-parsing test may still read the
# dags folder through AIRFLOW_HOME's config, which is harmless).
os.environ.setdefault("AIRFLOW_HOME", str(PROJECT_DIR / ".airflow"))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(PROJECT_DIR / "dags"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from ml.config import Settings, load_settings  # noqa: E402
from ml.features import DBT_PROJECT_DIR, run_dbt  # noqa: E402
from ml.synthetic import generate  # noqa: E402

SAMPLE_END = dt.date(2026, 6, 30)


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
