"""Shared fixtures (an isolated data folder per test, generated landing data, a trained setup)
and the order `make test` runs the modules in.

The tests come in tiers by cost, each a marker (pyproject.toml); a test carries its costliest:
- none: fast, pure functions and small data (`make test-fast` runs only these);
- `slow`: real data through dbt, training, or a generated shop of a thousand customers (every
  test that uses `trained_settings` is);
- `airflow`: starts Airflow itself (`airflow dags test`, `make run`, `make up`);
- `stack`: the production stack (Postgres, Redis, Celery workers, an MLflow server).

`make test` runs every tier on two pytest-xdist workers, a module per worker at a time, in the
order of pytest_collection_modifyitems: costliest tier first, so that the long modules run
beside the many short ones instead of after them. The expensive session fixtures are built
once per run (built_once), not once per worker.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Tests never touch the project's own data/ or .airflow/ (a DAG-parsing test may still read the
# dags folder through AIRFLOW_HOME's config, which is harmless).
os.environ.setdefault("AIRFLOW_HOME", str(PROJECT_DIR / ".airflow"))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(PROJECT_DIR / "dags"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from ml.config import Settings, load_settings  # noqa: E402
from ml.features.dbt import DBT_PROJECT_DIR, build_features, run_dbt  # noqa: E402
from ml.ingest.loader import ingest_landing  # noqa: E402
from ml.synthetic.shop import generate  # noqa: E402

COMPOSE_TEXT = (PROJECT_DIR / "docker-compose.yml").read_text()
COMPOSE_VARIABLE = re.compile(r"(?<!\$)\$\{(\w+)(:[-?])?([^}]*)\}")
"""A ${NAME}, ${NAME:-default} or ${NAME:?message} that compose fills in from the environment
(name, operator, default or message); $${NAME} is left to the container's shell."""

SAMPLE_END = dt.date(2026, 6, 30)
TRAINED_AS_OF = dt.date(2026, 6, 30)
"""The date `trained_settings` trained its models as of, and has customer_features for."""


COSTLY_TIERS = ("stack", "airflow", "slow")
"""The markers of the costly tiers, costliest first; a test with none of them is fast."""


def tier_rank(item: pytest.Item) -> int:
    """The position of the item's costliest tier in COSTLY_TIERS; fast tests come after all."""
    ranks = [
        COSTLY_TIERS.index(mark.name) for mark in item.iter_markers() if mark.name in COSTLY_TIERS
    ]
    return min(ranks, default=len(COSTLY_TIERS))


def pytest_itemcollected(item: pytest.Item) -> None:
    """A test that uses the trained setup is slow at least, whatever its own marks say: the
    setup takes a minute to build."""
    uses_trained = "trained_settings" in getattr(item, "fixturenames", ())
    if uses_trained and tier_rank(item) == len(COSTLY_TIERS):
        item.add_marker(pytest.mark.slow)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules costliest tier first (a module's tier is its costliest test's), each whole and
    in its own order. pytest-xdist hands the modules to `make test`'s two workers in this order
    (--dist loadfile --no-loadscope-reorder): the production stack starts at once, and the
    shorter modules run on the other worker beside it."""
    module_rank: dict[Path, int] = {}
    for item in items:
        module_rank[item.path] = min(module_rank.get(item.path, len(COSTLY_TIERS)), tier_rank(item))
    items.sort(key=lambda item: module_rank[item.path])


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


def built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]
) -> Path:
    """The folder `name`, built by `build(folder)` once per test run. Under pytest-xdist the
    first worker to ask builds it in the run's temporary folder, which every worker shares,
    while the others wait for the lock; then all of them read it. It is built in place (what
    it holds names its own paths, e.g. MLflow's artifact locations) and counts as built once
    `build` returned: no worker reads half a build, and a failed one is built again."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's, above each worker's own
    folder, built = shared / name, shared / f"{name}.built"
    with (shared / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not built.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            built.touch()
    return folder


@pytest.fixture(scope="session")
def generated_landing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 customers over 90 days, generated once per run; copy it before changing it."""

    def generate_landing(root: Path) -> None:
        generate(
            root / "landing", customers=300, days=90, end_date=SAMPLE_END, seed=11, progress=False
        )

    return built_once(tmp_path_factory, "generated", generate_landing) / "landing"


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


def trained_settings_in(root: Path) -> Settings:
    """The settings of the trained setup built in `root`."""
    return load_settings(
        {
            "SEGFLOW_DATA_DIR": str(root / "data"),
            "SEGFLOW_LANDING_DIR": str(root / "landing"),
            "SEGFLOW_TRAINING_SNAPSHOTS": "2",
        }
    )


@pytest.fixture(scope="session")
def trained_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """1,000 generated customers over 240 days up to TRAINED_AS_OF, ingested, features built for
    TRAINED_AS_OF, and every model kind trained (two training snapshots) and promoted to
    champion in a temporary MLflow store. Built once per run and shared by the workers: read
    it only; tests that change the warehouse or the registry work on a copy."""

    def train(root: Path) -> None:
        # mlflow and scikit-learn take seconds to import: only where a test needs the models.
        from ml.models.train import train_all

        generate(
            root / "landing",
            customers=1000,
            days=240,
            end_date=TRAINED_AS_OF,
            seed=11,
            progress=False,
        )
        settings = trained_settings_in(root)
        ingest_landing(settings, as_of=TRAINED_AS_OF)
        build_features(settings, TRAINED_AS_OF)
        train_all(settings, TRAINED_AS_OF)

    return trained_settings_in(built_once(tmp_path_factory, "trained", train))


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
