"""Owner-only: what segflow writes under the data folder is readable by its owner only (files
0600, folders 0700), whichever entry point wrote it, also when the user's umask is the usual
permissive 022; and a data folder an older segflow left readable by others is repaired."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ml import cli
from ml.config import load_settings
from ml.privacy.permissions import AIRFLOW_PASSWORD_FILE
from ml.warehouse.connection import connect
from tests.conftest import PROJECT_DIR

SEGFLOW = str(Path(sys.executable).with_name("segflow"))
USUAL_UMASK = 0o022
"""What a login shell typically has: files 0644, folders 0755."""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def readable_by_others(root: Path) -> list[str]:
    """Every path under `root` (itself included) that group or others may use; symbolic links
    have no permissions of their own."""
    paths = [root, *root.rglob("*")]
    return [
        f"{oct(mode(path))} {path}"
        for path in paths
        if not path.is_symlink() and mode(path) & 0o077
    ]


def usual_env(tmp_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "SEGFLOW_DATA_DIR": str(tmp_path / "data"),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
    }
    for name in ("SEGFLOW_LANDING_DIR", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)  # the defaults: both under the data folder
    return env


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, env=env, umask=USUAL_UMASK, capture_output=True, text=True, timeout=300
    )


def test_a_pipeline_step_through_the_cli_leaves_every_file_owner_only(tmp_path: Path):
    env = usual_env(tmp_path)
    data = tmp_path / "data"
    # The umask the commands start with really is permissive: a file made without segflow.
    probe = run(["sh", "-c", f"touch {tmp_path / 'probe'}"], env)
    assert probe.returncode == 0 and mode(tmp_path / "probe") == 0o644

    generate = run(
        [SEGFLOW, "generate", "--customers", "50", "--days", "30", "--end-date", "2026-06-30"]
        + ["--out", str(data / "landing"), "--quiet"],
        env,
    )
    assert generate.returncode == 0, generate.stderr
    ingest = run([SEGFLOW, "ingest", "--as-of", "2026-06-30"], env)
    assert ingest.returncode == 0, ingest.stderr

    assert (data / "warehouse.duckdb").is_file()
    assert any((data / "landing").rglob("*.parquet"))
    assert readable_by_others(data) == []


def test_a_stricter_umask_stays_and_a_looser_one_is_tightened():
    show = "import os, ml; print(oct(os.umask(0)))"
    for start, expected in ((0o022, "0o77"), (0o027, "0o77"), (0o277, "0o277")):
        result = subprocess.run(
            [sys.executable, "-c", show], umask=start, capture_output=True, text=True, check=True
        )
        assert result.stdout.strip() == expected, oct(start)


@pytest.fixture
def older_data_folder(tmp_path: Path) -> dict[str, Path]:
    """A data folder as an older segflow left it under umask 022 (folders 0755, files 0644),
    with links to the shop's landing folder outside it and Airflow's password file 0644."""
    data = tmp_path / "data"
    shop = tmp_path / "shop-landing"
    for folder in (data / "mlflow" / "artifacts" / "1", data / "reports", shop / "orders"):
        folder.mkdir(parents=True)
    for path in (
        data / "warehouse.duckdb",
        data / "mlflow" / "mlflow.db",
        data / "mlflow" / "artifacts" / "1" / "model.pkl",
        data / "reports" / "segments_2026-06-30.html",
        shop / "orders" / "orders.csv",
    ):
        path.write_text("customer data\n")
    (data / "shop").symlink_to(shop)
    # ml/ingest/landing.py reads a landing file with a pattern character in its name through a link.
    (data / ".ingest-links").mkdir()
    (data / ".ingest-links" / "orders.csv").hardlink_to(shop / "orders" / "orders.csv")
    passwords = tmp_path / "airflow" / AIRFLOW_PASSWORD_FILE
    passwords.parent.mkdir()
    passwords.write_text('{"admin": "secret"}')
    for path in [tmp_path / "airflow", passwords, shop, *shop.rglob("*"), data, *data.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert readable_by_others(data)
    return {"data": data, "shop": shop, "passwords": passwords}


def repaired(data: Path) -> bool:
    """Everything under `data` is owner-only but the hard link to the shop's file, whose mode
    is the shop's (one file, two names)."""
    return readable_by_others(data) == [f"0o644 {data / '.ingest-links' / 'orders.csv'}"]


def test_the_first_command_repairs_a_data_folder_an_older_segflow_left_readable(
    older_data_folder: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys
):
    data, shop = older_data_folder["data"], older_data_folder["shop"]
    monkeypatch.setenv("SEGFLOW_DATA_DIR", str(data))
    monkeypatch.setenv("SEGFLOW_LANDING_DIR", str(shop))
    monkeypatch.setenv("AIRFLOW_HOME", str(older_data_folder["passwords"].parent))

    assert cli.main(["config"]) == 0

    assert repaired(data)
    assert mode(data) == 0o700 and mode(data / "warehouse.duckdb") == 0o600
    assert mode(older_data_folder["passwords"]) == 0o600
    # The shop's files outside the data folder are not segflow's to change, linked or not.
    assert mode(shop) == 0o755 and mode(shop / "orders" / "orders.csv") == 0o644


def test_opening_the_warehouse_repairs_the_data_folder_too(older_data_folder: dict[str, Path]):
    """An Airflow task's first step opens the warehouse: no CLI command needs to come first."""
    data = older_data_folder["data"]
    (data / "warehouse.duckdb").unlink()  # not a DuckDB file
    settings = load_settings(
        {"SEGFLOW_DATA_DIR": str(data), "AIRFLOW_HOME": str(older_data_folder["passwords"].parent)}
    )

    with connect(settings) as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS x")

    assert repaired(data)
    assert mode(older_data_folder["passwords"]) == 0o600
    assert mode(older_data_folder["shop"] / "orders" / "orders.csv") == 0o644


def test_the_tracking_server_makes_its_artifact_folder_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from ml.models import tracking_server

    artifacts = tmp_path / "artifacts"
    (artifacts / "1" / "run").mkdir(parents=True)
    (artifacts / "1" / "run" / "model.pkl").write_text("model")
    for path in (artifacts, *artifacts.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    started = []
    monkeypatch.setattr(tracking_server.os, "execve", lambda *args: started.append(args))
    env = {
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": str(artifacts),
        "MLFLOW_AUTH_ADMIN_USERNAME": "segflow",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-admin-password",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "flask-secret",
        "SEGFLOW_MLFLOW_ALLOWED_HOSTS": "127.0.0.1:5000",
    }

    tracking_server.start("127.0.0.1", 5000, 1, env=env)

    assert started, "the server was not started"
    assert readable_by_others(artifacts) == []


def test_make_recipes_create_owner_only_files_under_a_usual_umask(tmp_path: Path):
    """The demo's data generation through make: the stamp file is made by the recipe's own
    `touch`, not by segflow, so only the Makefile's umask makes it owner-only."""
    env = usual_env(tmp_path)
    data = tmp_path / "data"
    stamp = data / "landing" / ".generated-50-30-2026-06-30-7"
    result = subprocess.run(
        # -o: an out-of-date virtualenv is not re-synced by a test.
        ["make", "--no-print-directory", "-o", str(PROJECT_DIR / ".venv" / ".installed")]
        + [str(stamp), "DEMO_CUSTOMERS=50", "DEMO_DAYS=30", "DEMO_END=2026-06-30"],
        cwd=PROJECT_DIR,
        env=env,
        umask=USUAL_UMASK,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert stamp.is_file()
    assert readable_by_others(data) == []
