from pathlib import Path

import pytest

from ml.config import PROJECT_DIR, load_settings
from ml.errors import ConfigError
from ml.privacy.secret_masking import mask_secrets


def test_defaults_live_inside_the_project():
    settings = load_settings({})
    assert settings.data_dir == PROJECT_DIR / "data"
    assert settings.landing_dir == PROJECT_DIR / "data" / "landing"
    assert settings.warehouse_path == PROJECT_DIR / "data" / "warehouse.duckdb"
    assert settings.label_horizon_days == 30
    assert settings.mlflow_tracking_uri == f"sqlite:///{PROJECT_DIR}/data/mlflow/mlflow.db"
    assert settings.airflow_home == PROJECT_DIR / ".airflow"
    assert settings.duckdb_memory_limit == "4GB"


def test_environment_overrides_every_setting(tmp_path: Path):
    settings = load_settings(
        {
            "SEGFLOW_DATA_DIR": str(tmp_path / "work"),
            "SEGFLOW_LANDING_DIR": str(tmp_path / "export"),
            "SEGFLOW_LABEL_HORIZON_DAYS": "14",
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
            "AIRFLOW_HOME": str(tmp_path / "af"),
            "SEGFLOW_DUCKDB_MEMORY_LIMIT": "512MiB",
        }
    )
    assert settings.duckdb_memory_limit == "512MiB"
    assert settings.data_dir == tmp_path / "work"
    assert settings.warehouse_path == tmp_path / "work" / "warehouse.duckdb"
    assert settings.landing_dir == tmp_path / "export"
    assert settings.label_horizon_days == 14
    assert settings.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert settings.airflow_home == tmp_path / "af"


def test_landing_follows_an_overridden_data_dir(tmp_path: Path):
    settings = load_settings({"SEGFLOW_DATA_DIR": str(tmp_path)})
    assert settings.landing_dir == tmp_path / "landing"
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SEGFLOW_LABEL_HORIZON_DAYS", "thirty", "expected a whole number"),
        ("SEGFLOW_QUARANTINE_MAX_SHARE", "5%", "expected a share between 0 and 1"),
        ("SEGFLOW_QUARANTINE_MAX_SHARE", "1.5", "must be between 0 and 1"),
        ("SEGFLOW_GATE_SAMPLE_ROWS", "-1", "must be at least 1"),
        ("SEGFLOW_LABEL_HORIZON_DAYS", "0", "must be at least 1"),
        ("MLFLOW_TRACKING_URI", "data/mlflow.db", "expected a URI"),
        ("MLFLOW_TRACKING_URI", "ftp://host/x", "expected a URI"),
        ("SEGFLOW_DUCKDB_MEMORY_LIMIT", "lots", "expected a memory size"),
        ("SEGFLOW_AUTO_PROMOTE", "maybe", "expected true or false"),
        ("SEGFLOW_DEFAULT_SEND_HOUR", "25", "expected an hour of the day"),
        ("SEGFLOW_PROMOTION_TOLERANCE", "2", "must be between 0 and 1"),
        ("SEGFLOW_DRIFT_PSI_ALERT", "high", "expected a number"),
        ("SEGFLOW_DRIFT_PSI_ALERT", "0", "must be above 0"),
        ("SEGFLOW_DRIFT_KS_ALERT", "1.2", "must be between 0 and 1"),
        ("SEGFLOW_DRIFT_PSI_WARN", "0.3", "must not exceed the alert level"),
        ("SEGFLOW_REALIZED_DROP_ALERT", "-0.1", "must be between 0 and 1"),
    ],
)
def test_a_wrong_value_names_the_variable(name: str, value: str, expected: str):
    with pytest.raises(ConfigError) as error:
        load_settings({name: value})
    assert name in str(error.value)
    assert expected in str(error.value)


def test_a_directory_setting_pointing_at_a_file_is_refused(tmp_path: Path):
    file = tmp_path / "a-file"
    file.write_text("x")
    with pytest.raises(ConfigError, match="SEGFLOW_DATA_DIR"):
        load_settings({"SEGFLOW_DATA_DIR": str(file)})


def test_model_and_publishing_settings_have_overrides(tmp_path: Path):
    settings = load_settings(
        {
            "SEGFLOW_TRAINING_SNAPSHOTS": "6",
            "SEGFLOW_AUTO_PROMOTE": "false",
            "SEGFLOW_PROMOTION_TOLERANCE": "0.02",
            "SEGFLOW_AUDIENCES_PATH": str(tmp_path / "campaigns.yml"),
            "SEGFLOW_BAND_HIGH_SHARE": "0.1",
            "SEGFLOW_DEFAULT_SEND_HOUR": "18",
        }
    )
    assert settings.models.training_snapshots == 6
    assert settings.models.auto_promote is False
    assert settings.models.promotion_tolerance == 0.02
    assert settings.publishing.audiences_path == tmp_path / "campaigns.yml"
    assert settings.publishing.band_high_share == 0.1
    assert settings.publishing.default_send_hour == 18
    assert load_settings({}).models.auto_promote is True


def test_an_audiences_path_that_is_a_directory_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="SEGFLOW_AUDIENCES_PATH"):
        load_settings({"SEGFLOW_AUDIENCES_PATH": str(tmp_path)})


def test_a_uri_is_shown_without_its_password():
    assert (
        mask_secrets("postgresql+psycopg2://mlflow:s3cret@postgres:5432/mlflow")
        == "postgresql+psycopg2://mlflow:***@postgres:5432/mlflow"
    )
    for uri in ("http://mlflow:5000", "sqlite:////data/mlflow/mlflow.db", "http://user@host"):
        assert mask_secrets(uri) == uri


TRACKING_SERVER_ENV = {
    "MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg2://mlflow:pa%ss@postgres:5432/mlflow",
    "MLFLOW_ARTIFACTS_DESTINATION": "/mlflow/artifacts",
    "MLFLOW_AUTH_ADMIN_USERNAME": "segflow",
    "MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-admin-password",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "flask-secret",
    "SEGFLOW_MLFLOW_ALLOWED_HOSTS": "mlflow:5000,127.0.0.1:5000",
}


@pytest.mark.parametrize("missing", sorted(TRACKING_SERVER_ENV))
def test_the_tracking_server_does_not_start_without_each_variable(missing: str):
    from ml.models.tracking_server import start

    env = {**TRACKING_SERVER_ENV, missing: " "}
    with pytest.raises(ConfigError, match=f"{missing}: "):
        start("127.0.0.1", 5000, 1, env=env)


def test_the_tracking_server_keeps_the_database_password_off_its_command_line():
    import configparser

    from ml.models.tracking_server import auth_config, server_command

    command = " ".join(server_command(TRACKING_SERVER_ENV, "0.0.0.0", 5000, 2))
    assert "pa%ss" not in command
    for option in ("--app-name basic-auth", "--serve-artifacts", "--allowed-hosts mlflow:5000,"):
        assert option in command
    # The users live in the same database; a % in its password survives configparser.
    config = configparser.ConfigParser()
    config.read_string(auth_config(TRACKING_SERVER_ENV))
    assert config["mlflow"]["database_uri"] == TRACKING_SERVER_ENV["MLFLOW_BACKEND_STORE_URI"]
    assert config["mlflow"]["default_permission"] == "READ"
