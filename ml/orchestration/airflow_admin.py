"""Create the production stack's first Airflow user (FAB auth manager, Admin role) from the
environment: docker-compose.yml's airflow-init runs `python -m ml.orchestration.airflow_admin`.

`airflow users create --password ...` would put the password on a command line, where `ps`
(on the Docker host too) and Airflow's own record of CLI calls would see it. This runs the same
command's code with the password read from AIRFLOW_ADMIN_PASSWORD. Like the command, it creates
the user once, and says so and changes nothing when the user exists.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from ml.errors import ConfigError

REQUIRED_VARIABLES = {
    "AIRFLOW_ADMIN_USERNAME": "the first UI/API user's name",
    "AIRFLOW_ADMIN_PASSWORD": "that user's password",
    "AIRFLOW_ADMIN_EMAIL": "that user's e-mail address",
}


def admin_arguments(env: Mapping[str, str]) -> argparse.Namespace:
    """The arguments of `airflow users create` for the admin, from `env`."""
    missing = [name for name in REQUIRED_VARIABLES if not env.get(name, "").strip()]
    if missing:
        raise ConfigError(
            "airflow-init needs these environment variables (see .env.example): "
            + "; ".join(f"{name}: {REQUIRED_VARIABLES[name]}" for name in missing)
        )
    return argparse.Namespace(
        role="Admin",
        username=env["AIRFLOW_ADMIN_USERNAME"].strip(),
        password=env["AIRFLOW_ADMIN_PASSWORD"],
        use_random_password=False,
        email=env["AIRFLOW_ADMIN_EMAIL"].strip(),
        firstname="segflow",
        lastname="admin",
        verbose=False,
    )


def create_admin(env: Mapping[str, str] | None = None) -> None:
    from airflow.providers.fab.auth_manager.cli_commands.user_command import users_create

    users_create(admin_arguments(os.environ if env is None else env))


if __name__ == "__main__":
    try:
        create_admin()
    except ConfigError as error:
        sys.exit(f"segflow: configuration error: {error}")
