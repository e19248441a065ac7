"""The MLflow tracking server of the production stack: the `mlflow` service of
docker-compose.yml, and the server the native test of that stack starts.

- Metadata and the model registry in a database (Postgres in the stack).
- Artifacts stored and served by the server (`--serve-artifacts`): Airflow's workers upload and
  download models through it and need no access to its disk.
- Basic authentication: every request needs a user and password. The admin user is created on
  the first start from the environment. An admin adds the people who review models in the UI;
  what others may do starts at DEFAULT_PERMISSION.
- Only the Host headers in SEGFLOW_MLFLOW_ALLOWED_HOSTS are answered (against DNS rebinding).

Secrets come only from the environment, and the database URI (it holds a password) never
reaches the command line, where `ps` would show it. A missing variable stops the server before
it starts, with a message naming the variable.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ml.errors import ConfigError
from ml.privacy.permissions import secure_folder

REQUIRED_VARIABLES = {
    "MLFLOW_BACKEND_STORE_URI": (
        "the server's database for runs, the registry and its users, "
        "e.g. postgresql+psycopg2://mlflow:<password>@postgres:5432/mlflow"
    ),
    "MLFLOW_ARTIFACTS_DESTINATION": "where the server keeps the artifacts it serves, e.g. /mlflow/artifacts",
    "MLFLOW_AUTH_ADMIN_USERNAME": "the admin user created on the first start",
    "MLFLOW_AUTH_ADMIN_PASSWORD": "that user's password (MLflow asks for at least 12 characters)",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "signs the UI's sessions and CSRF tokens",
    "SEGFLOW_MLFLOW_ALLOWED_HOSTS": "comma-separated Host headers the server answers, e.g. mlflow:5000,127.0.0.1:5000",
}

DEFAULT_PERMISSION = "READ"
"""What a user an admin added may do with experiments and models they were granted nothing on:
read them. Editing and promoting are granted per model (MLflow UI, Admin)."""


AUTH_CACHE_SECONDS = 60
"""How long a server process trusts a user and password it has checked. Without the cache each
request pays a password hash (logging one model is dozens of requests); the price is that a
changed or revoked password may still work on other server processes for this long."""


def auth_config(env: Mapping[str, str]) -> str:
    """MLflow's basic-auth configuration: its users live in the server's database (their own
    tables and migration history); the admin's name and password are read from the
    environment by MLflow itself."""
    # configparser would read a '%' in the password as interpolation: doubled, it is literal.
    database_uri = env["MLFLOW_BACKEND_STORE_URI"].strip().replace("%", "%%")
    return (
        "[mlflow]\n"
        f"default_permission = {DEFAULT_PERMISSION}\n"
        f"database_uri = {database_uri}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n"
    )


def server_command(env: Mapping[str, str], host: str, port: int, workers: int) -> list[str]:
    """`mlflow server` with segflow's options; the database URI and artifact folder are
    passed through the environment (MLFLOW_BACKEND_STORE_URI, MLFLOW_ARTIFACTS_DESTINATION)."""
    return [
        # The mlflow of the environment segflow runs in, whatever PATH says.
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--app-name",
        "basic-auth",
        "--serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--allowed-hosts",
        env["SEGFLOW_MLFLOW_ALLOWED_HOSTS"].strip(),
    ]


def start(host: str, port: int, workers: int, env: Mapping[str, str] | None = None) -> None:
    """Check the environment, write the auth configuration where only this user can read it,
    make a local artifact folder owner-only, and replace this process with the server."""
    env = dict(os.environ if env is None else env)
    missing = [name for name in REQUIRED_VARIABLES if not env.get(name, "").strip()]
    if missing:
        raise ConfigError(
            "the tracking server needs these environment variables (see .env.example): "
            + "; ".join(f"{name}: {REQUIRED_VARIABLES[name]}" for name in missing)
        )
    # The server inherits this process's owner-only umask (ml/__init__.py); its artifact
    # folder (a volume the image made, or an older server's) is made owner-only too.
    artifacts = env["MLFLOW_ARTIFACTS_DESTINATION"].strip()
    if "://" not in artifacts or artifacts.startswith("file://"):
        artifacts_dir = Path(artifacts.removeprefix("file://"))
        artifacts_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        secure_folder(artifacts_dir)
    private_dir = Path(tempfile.mkdtemp(prefix="segflow-mlflow-auth-"))  # mode 0700
    config_path = private_dir / "basic_auth.ini"
    config_path.touch(mode=0o600)
    config_path.write_text(auth_config(env))
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(config_path)
    # segflow runs no MLflow server jobs: without this the server starts eight idle job
    # consumers (25 to 30 CPU seconds at each start on two cores).
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    command = server_command(env, host, port, workers)
    os.execve(command[0], command, env)
