"""One place for segflow's settings: embedded defaults, each overridable from the environment.

Every path, URI, threshold and horizon the platform uses is read here. A value that cannot be
used fails at once with a message that names the environment variable, so a typo in a
deployment is found before any data is touched.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ml.errors import ConfigError

PROJECT_DIR = Path(__file__).resolve().parent.parent

KNOWN_TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "http", "https", "file", "databricks")


@dataclass(frozen=True)
class QualityThresholds:
    """What the data quality gates (expectations/) tolerate; each has an override."""

    freshness_max_days: int
    """SEGFLOW_FRESHNESS_MAX_DAYS: the newest order may be at most this many days before the
    as-of date (error)."""
    quarantine_max_share: float
    """SEGFLOW_QUARANTINE_MAX_SHARE: share of a run's rows of one entity that may be rejected
    into quarantine before the run stops (error)."""
    feature_max_null_share: float
    """SEGFLOW_FEATURE_MAX_NULL_SHARE: share of nulls a guarded feature may have (warn)."""
    feature_mean_band: float
    """SEGFLOW_FEATURE_MEAN_BAND: relative distance a guarded feature's mean may move from its
    mean over the previous runs (warn), e.g. 0.5 = within 50%."""
    gate_sample_rows: int
    """SEGFLOW_GATE_SAMPLE_ROWS: larger row sets are validated on a deterministic sample."""


@dataclass(frozen=True)
class LoadingSettings:
    """How landing files are read and what waits (ml/ingest/loader.py, ml/ingest/landing.py)."""

    encoding: str
    """SEGFLOW_LANDING_ENCODING: the text encoding of every CSV, TSV and JSON-lines file
    (default utf-8, with or without a byte order mark; latin-1 or utf-16 for other exports)."""
    clock_skew_hours: float
    """SEGFLOW_CLOCK_SKEW_HOURS: a row whose timestamp is later than the load time by at most
    this much is held until that time has passed (clock skew, local time without an offset);
    later still, it is rejected."""
    hold_days: float
    """SEGFLOW_HOLD_DAYS: how long a held row (waiting for its customer or its time) is retried
    before it becomes a rejection."""
    empty_opt_in_emailable: bool
    """SEGFLOW_EMPTY_OPT_IN_MEANS: what an empty `email_opt_in` means: `opted_out` (default,
    not e-mailable) or `opted_in`."""
    stale_data: str
    """SEGFLOW_STALE_DATA: what a run does when the newest order is older than the freshness
    limit: `stop` (default) or `publish` (with the staleness stated in the manifest)."""


@dataclass(frozen=True)
class ModelSettings:
    """How models are trained and promoted (ml/models/train.py, ml/models/registry.py); each has an override."""

    training_snapshots: int
    """SEGFLOW_TRAINING_SNAPSHOTS: past as-of dates stacked into a training set, before the
    out-of-time validation snapshot."""
    snapshot_spacing_days: int
    """SEGFLOW_SNAPSHOT_SPACING_DAYS: days between snapshots (at least the label horizon, so
    that no training label window overlaps the validation snapshot)."""
    tuning_iterations: int
    """SEGFLOW_TUNING_ITERATIONS: hyper-parameter candidates tried per model."""
    tuning_max_rows: int
    """SEGFLOW_TUNING_MAX_ROWS: the search runs on at most this many rows (a sample); the final
    model is fitted on all of them."""
    promotion_tolerance: float
    """SEGFLOW_PROMOTION_TOLERANCE: how much worse than the champion (on the gate's metric, same
    validation snapshot) a challenger may be and still be promoted."""
    auto_promote: bool
    """SEGFLOW_AUTO_PROMOTE: move `champion` when the gate passes; false leaves it to a person
    in the MLflow UI."""
    persona_min_share: float
    """SEGFLOW_PERSONA_MIN_SHARE: smallest share of customers a persona may hold."""
    persona_max_count: int
    """SEGFLOW_PERSONA_MAX_COUNT: most personas the clustering may choose."""


@dataclass(frozen=True)
class PublishSettings:
    """How scores become published segments and audience exports (ml/segments/score.py, ml/segments/publish.py)."""

    audiences_path: Path
    """SEGFLOW_AUDIENCES_PATH: the marketer's audience definitions (YAML)."""
    scoring_chunk_rows: int
    """SEGFLOW_SCORING_CHUNK_ROWS: customers scored per chunk, which bounds scoring memory."""
    band_high_share: float
    """SEGFLOW_BAND_HIGH_SHARE: the top share of a date's customers whose score band is `high`."""
    band_medium_share: float
    """SEGFLOW_BAND_MEDIUM_SHARE: the next share, band `medium` (the rest is `low`)."""
    default_send_hour: int
    """SEGFLOW_DEFAULT_SEND_HOUR: send hour (UTC) when neither the customer nor their persona
    has an engagement hour."""


@dataclass(frozen=True)
class MonitoringSettings:
    """When the drift monitor (ml/monitoring/monitor.py) warns and when it alerts, which schedules
    train_models. Each has an override."""

    psi_warn: float
    """SEGFLOW_DRIFT_PSI_WARN: population stability index of a feature, score or segment mix
    from which it is reported as drifting."""
    psi_alert: float
    """SEGFLOW_DRIFT_PSI_ALERT: PSI from which drift raises the alert."""
    ks_warn: float
    """SEGFLOW_DRIFT_KS_WARN: Kolmogorov-Smirnov statistic D (numeric features and scores) from
    which it is reported as drifting."""
    ks_alert: float
    """SEGFLOW_DRIFT_KS_ALERT: KS statistic D from which drift raises the alert."""
    realized_drop_alert: float
    """SEGFLOW_REALIZED_DROP_ALERT: how far a champion's realized ROC-AUC (Spearman for
    customer value) may fall below its validation value before it raises the alert."""
    segment_mix_runs: int
    """SEGFLOW_SEGMENT_MIX_RUNS: previous published dates the segment mix is compared with."""


@dataclass(frozen=True)
class AlertSettings:
    """Who hears of a failed segflow task (ml/monitoring/alerts.py), besides `<reports dir>/failures.jsonl`
    and the task's log, which always get it."""

    webhook_url: str | None
    """SEGFLOW_ALERT_WEBHOOK_URL: an http(s) URL that receives each failure record as JSON (POST)."""
    emails: tuple[str, ...]
    """SEGFLOW_ALERT_EMAILS: comma-separated addresses that get a mail per failure, sent through
    Airflow's SMTP settings (AIRFLOW__SMTP__SMTP_HOST and the rest of the [smtp] section)."""


@dataclass(frozen=True)
class RetentionSettings:
    """How long segflow keeps what it writes (ml/privacy/retention.py removes what is older, daily).
    Each is a number of days, overridable from the environment."""

    raw_history_days: int
    """SEGFLOW_RETENTION_RAW_HISTORY_DAYS: superseded versions of customers and orders whose
    validity ended longer ago are deleted (the version in force is always kept)."""
    published_history_days: int
    """SEGFLOW_RETENTION_PUBLISHED_DAYS: published segments, audience and trigger members and
    the feature marts of as-of dates further back are deleted."""
    quarantine_days: int
    """SEGFLOW_RETENTION_QUARANTINE_DAYS: rejected rows and set-aside files recorded longer ago
    are deleted."""
    exports_days: int
    """SEGFLOW_RETENTION_EXPORTS_DAYS: daily audience export folders of older dates are deleted."""
    trigger_exports_days: int
    """SEGFLOW_RETENTION_TRIGGER_EXPORTS_DAYS: trigger refresh export folders older than this
    are deleted."""
    training_sets_days: int
    """SEGFLOW_RETENTION_TRAINING_SETS_DAYS: training sets of older dates are deleted, except
    those of model versions that hold an alias (champion, challenger)."""
    reports_days: int
    """SEGFLOW_RETENTION_REPORTS_DAYS: reports (segment, drift, quality results and Data Docs,
    failure records) older than this are deleted."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    landing_dir: Path
    label_horizon_days: int
    mlflow_tracking_uri: str
    airflow_home: Path
    duckdb_memory_limit: str
    """Memory DuckDB may use before spilling to disk (warehouse.duckdb.tmp/), e.g. 4GB."""
    duckdb_uncompressed: bool
    """SEGFLOW_DUCKDB_UNCOMPRESSED: store the warehouse without compression (a larger file), so
    that a byte search of the file can confirm an erasure; off by default."""
    landing_poll_seconds: float
    """SEGFLOW_LANDING_POLL_SECONDS: how often the landing zone's watcher looks for new files
    (ml/orchestration/landing_watch.py); a file counts once it stayed the same for one look."""
    loading: LoadingSettings
    quality: QualityThresholds
    models: ModelSettings
    publishing: PublishSettings
    alerts: AlertSettings
    monitoring: MonitoringSettings
    retention: RetentionSettings
    pseudonym_key: str | None
    """SEGFLOW_PSEUDONYM_KEY: the secret that keys customer pseudonyms and the hashes of
    forgotten identities (ml/privacy/pseudonyms.py); unset, a key is generated once into
    `<data dir>/keys/pseudonym.key`."""

    @property
    def warehouse_path(self) -> Path:
        return self.data_dir / "warehouse.duckdb"

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def trigger_exports_dir(self) -> Path:
        return self.exports_dir / "triggers"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def mlflow_dir(self) -> Path:
        return self.data_dir / "mlflow"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"


def _given(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value, or None when it is unset or blank (blank means: use the default)."""
    raw = env.get(name)
    return None if raw is None or raw.strip() == "" else raw


def _path(env: Mapping[str, str], name: str, default: Path) -> Path:
    raw = _given(env, name)
    if raw is None:
        return default
    path = Path(raw.strip()).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{name}={raw!r}: expected a directory, but it is a file")
    # Relative overrides are taken from where the user runs the command, like any CLI path.
    return path.resolve()


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _given(env, name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a whole number, e.g. 30") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r}: must be at least 1")
    return value


def _tracking_uri(env: Mapping[str, str], name: str, default: str) -> str:
    raw = _given(env, name)
    if raw is None:
        return default
    uri = raw.strip()
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme.split("+", 1)[0] not in KNOWN_TRACKING_SCHEMES:
        raise ConfigError(
            f"{name}={raw!r}: expected a URI such as sqlite:///path/mlflow.db, "
            f"postgresql://host/db or http://host:5000 (schemes: {', '.join(KNOWN_TRACKING_SCHEMES)})"
        )
    return uri


def _memory_size(env: Mapping[str, str], name: str, default: str) -> str:
    raw = _given(env, name)
    if raw is None:
        return default
    value = raw.strip()
    if not re.fullmatch(r"\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)", value, flags=re.IGNORECASE):
        raise ConfigError(f"{name}={raw!r}: expected a memory size such as 4GB or 512MiB")
    return value


def _share(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _given(env, name)
    if raw is None:
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a share between 0 and 1, e.g. 0.05") from None
    if not 0 <= value <= 1:
        raise ConfigError(f"{name}={raw!r}: must be between 0 and 1")
    return value


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _given(env, name)
    if raw is None:
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a number, e.g. 0.25") from None
    if not value > 0:
        raise ConfigError(f"{name}={raw!r}: must be above 0")
    return value


def _hour(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _given(env, name)
    if raw is None:
        return default
    if not raw.strip().isdigit() or not 0 <= int(raw) <= 23:
        raise ConfigError(f"{name}={raw!r}: expected an hour of the day, 0 to 23")
    return int(raw)


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _given(env, name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r}: expected true or false")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = _given(env, name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
    return value


def _encoding(env: Mapping[str, str], name: str, default: str) -> str:
    raw = _given(env, name)
    if raw is None:
        return default
    value = raw.strip().lower().replace("_", "-")
    if value not in ("utf-8", "utf8", "latin-1", "latin1", "utf-16"):
        raise ConfigError(f"{name}={raw!r}: expected utf-8, latin-1 or utf-16")
    return {"utf8": "utf-8", "latin1": "latin-1"}.get(value, value)


def _file(env: Mapping[str, str], name: str, default: Path) -> Path:
    raw = _given(env, name)
    if raw is None:
        return default
    path = Path(raw.strip()).expanduser()
    if path.is_dir():
        raise ConfigError(f"{name}={raw!r}: expected a file, but it is a directory")
    return path.resolve()


def _http_url(env: Mapping[str, str], name: str) -> str | None:
    raw = _given(env, name)
    if raw is None:
        return None
    url = raw.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # The value is not repeated: a webhook URL often carries its token.
        raise ConfigError(
            f"{name}: expected an http:// or https:// URL with a host, "
            "e.g. https://hooks.example.com/segflow"
        )
    return url


EMAIL_ADDRESS = re.compile(r"[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+")


def _email_list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = _given(env, name)
    if raw is None:
        return ()
    addresses = tuple(part.strip() for part in raw.split(",") if part.strip())
    for address in addresses:
        if not EMAIL_ADDRESS.fullmatch(address):
            raise ConfigError(
                f"{name}={raw!r}: {address!r} is not an e-mail address "
                "(expected comma-separated addresses, e.g. data-team@example.com,oncall@example.com)"
            )
    return addresses


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from `env` (default: the process environment)."""
    env = os.environ if env is None else env
    data_dir = _path(env, "SEGFLOW_DATA_DIR", PROJECT_DIR / "data")
    return Settings(
        data_dir=data_dir,
        landing_dir=_path(env, "SEGFLOW_LANDING_DIR", data_dir / "landing"),
        label_horizon_days=_positive_int(env, "SEGFLOW_LABEL_HORIZON_DAYS", 30),
        mlflow_tracking_uri=_tracking_uri(
            env, "MLFLOW_TRACKING_URI", f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}"
        ),
        airflow_home=_path(env, "AIRFLOW_HOME", PROJECT_DIR / ".airflow"),
        duckdb_memory_limit=_memory_size(env, "SEGFLOW_DUCKDB_MEMORY_LIMIT", "4GB"),
        duckdb_uncompressed=_flag(env, "SEGFLOW_DUCKDB_UNCOMPRESSED", False),
        landing_poll_seconds=_positive_float(env, "SEGFLOW_LANDING_POLL_SECONDS", 5.0),
        loading=LoadingSettings(
            encoding=_encoding(env, "SEGFLOW_LANDING_ENCODING", "utf-8"),
            clock_skew_hours=_positive_float(env, "SEGFLOW_CLOCK_SKEW_HOURS", 24.0),
            hold_days=_positive_float(env, "SEGFLOW_HOLD_DAYS", 7.0),
            empty_opt_in_emailable=_choice(
                env, "SEGFLOW_EMPTY_OPT_IN_MEANS", ("opted_out", "opted_in"), "opted_out"
            )
            == "opted_in",
            stale_data=_choice(env, "SEGFLOW_STALE_DATA", ("stop", "publish"), "stop"),
        ),
        quality=QualityThresholds(
            freshness_max_days=_positive_int(env, "SEGFLOW_FRESHNESS_MAX_DAYS", 3),
            quarantine_max_share=_share(env, "SEGFLOW_QUARANTINE_MAX_SHARE", 0.05),
            feature_max_null_share=_share(env, "SEGFLOW_FEATURE_MAX_NULL_SHARE", 0.9),
            feature_mean_band=_share(env, "SEGFLOW_FEATURE_MEAN_BAND", 0.5),
            gate_sample_rows=_positive_int(env, "SEGFLOW_GATE_SAMPLE_ROWS", 500_000),
        ),
        models=ModelSettings(
            training_snapshots=_positive_int(env, "SEGFLOW_TRAINING_SNAPSHOTS", 4),
            snapshot_spacing_days=_positive_int(env, "SEGFLOW_SNAPSHOT_SPACING_DAYS", 30),
            tuning_iterations=_positive_int(env, "SEGFLOW_TUNING_ITERATIONS", 6),
            tuning_max_rows=_positive_int(env, "SEGFLOW_TUNING_MAX_ROWS", 200_000),
            promotion_tolerance=_share(env, "SEGFLOW_PROMOTION_TOLERANCE", 0.01),
            auto_promote=_flag(env, "SEGFLOW_AUTO_PROMOTE", True),
            persona_min_share=_share(env, "SEGFLOW_PERSONA_MIN_SHARE", 0.05),
            persona_max_count=_positive_int(env, "SEGFLOW_PERSONA_MAX_COUNT", 7),
        ),
        publishing=PublishSettings(
            audiences_path=_file(env, "SEGFLOW_AUDIENCES_PATH", PROJECT_DIR / "audiences.yml"),
            scoring_chunk_rows=_positive_int(env, "SEGFLOW_SCORING_CHUNK_ROWS", 250_000),
            band_high_share=_share(env, "SEGFLOW_BAND_HIGH_SHARE", 0.2),
            band_medium_share=_share(env, "SEGFLOW_BAND_MEDIUM_SHARE", 0.3),
            default_send_hour=_hour(env, "SEGFLOW_DEFAULT_SEND_HOUR", 10),
        ),
        alerts=AlertSettings(
            webhook_url=_http_url(env, "SEGFLOW_ALERT_WEBHOOK_URL"),
            emails=_email_list(env, "SEGFLOW_ALERT_EMAILS"),
        ),
        monitoring=_monitoring(env),
        retention=RetentionSettings(
            raw_history_days=_positive_int(env, "SEGFLOW_RETENTION_RAW_HISTORY_DAYS", 1095),
            published_history_days=_positive_int(env, "SEGFLOW_RETENTION_PUBLISHED_DAYS", 400),
            quarantine_days=_positive_int(env, "SEGFLOW_RETENTION_QUARANTINE_DAYS", 90),
            exports_days=_positive_int(env, "SEGFLOW_RETENTION_EXPORTS_DAYS", 30),
            trigger_exports_days=_positive_int(env, "SEGFLOW_RETENTION_TRIGGER_EXPORTS_DAYS", 14),
            training_sets_days=_positive_int(env, "SEGFLOW_RETENTION_TRAINING_SETS_DAYS", 180),
            reports_days=_positive_int(env, "SEGFLOW_RETENTION_REPORTS_DAYS", 90),
        ),
        pseudonym_key=_given(env, "SEGFLOW_PSEUDONYM_KEY"),
    )


def _monitoring(env: Mapping[str, str]) -> MonitoringSettings:
    monitoring = MonitoringSettings(
        psi_warn=_positive_float(env, "SEGFLOW_DRIFT_PSI_WARN", 0.1),
        psi_alert=_positive_float(env, "SEGFLOW_DRIFT_PSI_ALERT", 0.25),
        ks_warn=_share(env, "SEGFLOW_DRIFT_KS_WARN", 0.1),
        ks_alert=_share(env, "SEGFLOW_DRIFT_KS_ALERT", 0.25),
        realized_drop_alert=_share(env, "SEGFLOW_REALIZED_DROP_ALERT", 0.05),
        segment_mix_runs=_positive_int(env, "SEGFLOW_SEGMENT_MIX_RUNS", 7),
    )
    for statistic in ("psi", "ks"):
        warn, alert = (
            getattr(monitoring, f"{statistic}_warn"),
            getattr(monitoring, f"{statistic}_alert"),
        )
        if warn > alert:
            name = statistic.upper()
            raise ConfigError(
                f"SEGFLOW_DRIFT_{name}_WARN={warn} is above SEGFLOW_DRIFT_{name}_ALERT={alert}: "
                "the warning level must not exceed the alert level"
            )
    return monitoring
