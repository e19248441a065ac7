"""The one rule that keeps passwords and tokens out of what segflow shows: error messages, log
lines, DAG import errors and failure records.

`mask_secrets(text)` replaces with *** :
- the value of every secret environment variable of this process: one whose name contains
  PASSWORD, SECRET, TOKEN, KEY or WEBHOOK (MLFLOW_TRACKING_PASSWORD, AIRFLOW__CORE__FERNET_KEY,
  SEGFLOW_ALERT_WEBHOOK_URL, ...), and the password inside any URI-valued variable
  (AIRFLOW__CELERY__BROKER_URL, ...), when at least MIN_SECRET_LENGTH characters long;
- the password of a URI: `postgresql://user:secret@host/db` becomes `postgresql://user:***@host/db`
  (also without a scheme, `user:secret@host`);
- the credentials of an Authorization header (`Authorization: Bearer ***`, `Basic ***`) and of a
  bare bearer token;
- the value of a `password=`, `token=`, `secret=`, `api_key=`, ... parameter (query string,
  connection string) and of such a quoted key in a dict or JSON text.

`SecretMaskingFilter` applies it to a log record's final message and exception text;
`install_log_masking()` (called when the `ml` package is imported) runs that filter on every log
record this process creates, whatever handlers Airflow or the CLI configure, and hands the
secret values to Airflow's own task-log masker, which masks the lines Airflow writes itself (a
task's failure and its traceback).

Standard library only: ml/errors.py imports it (every ConfigError is masked), and DAG files
import that at parse time.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote, urlsplit

MASK = "***"
MIN_SECRET_LENGTH = 6
"""Shorter values of secret variables are not masked by value: too many ordinary words match."""

SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY|WEBHOOK", re.IGNORECASE)

# The userinfo of a URI: an optional scheme, a user, and everything up to the last @ of the
# same word is the password (an unencoded / or @ in a password must not leak its tail).
_URI_PASSWORD = re.compile(
    r"(?P<head>(?:\b[a-zA-Z][a-zA-Z0-9+.-]*:/{0,3})?[^\s:/?#@'\"<>()\[\]{},;]*)"
    r":(?P<password>[^\s'\"<>/][^\s'\"<>]*)@"
)
_AUTHORIZATION = re.compile(
    r"(?P<head>\bAuthorization['\"]?\s*[:=]\s*['\"]?(?:(?:Bearer|Basic|Token|Digest)\s+)?)"
    r"(?P<credentials>[^\s'\",}]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<head>\bBearer\s+)(?P<credentials>[A-Za-z0-9\-._~+/]{16,}=*)")
_SECRET_PARAMETER_NAME = (
    r"[\w.-]*(?:token|passw(?:or)?d|pwd|secret|signature)"
    r"|[\w.-]*(?:api|access|secret|private|auth)[_-]?key|sig"
)
_PARAMETER = re.compile(
    rf"(?P<head>(?<![\w.-])(?:{_SECRET_PARAMETER_NAME})=['\"]?)(?P<value>[^\s&#;,'\"()\[\]{{}}<>]+)",
    re.IGNORECASE,
)
_QUOTED_KEY = re.compile(
    rf"(?P<head>(?P<q>['\"])(?:{_SECRET_PARAMETER_NAME})(?P=q)\s*:\s*(?P<vq>['\"]))"
    r"(?P<value>[^'\"]+)(?P=vq)",
    re.IGNORECASE,
)


def _uri_password(value: str) -> str | None:
    if "://" not in value or "@" not in value:
        return None
    try:
        password = urlsplit(value.strip()).password
    except ValueError:
        return None
    return password or None


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """The secrets of `env` (default: this process's environment) that are masked wherever
    they appear, longest first; each also in its percent-encoded and decoded forms."""
    env = os.environ if env is None else env
    found: set[str] = set()
    for name, value in env.items():
        candidates = [value.strip()] if SECRET_NAME.search(name) else []
        password = _uri_password(value)
        if password:
            candidates.append(password)
        for candidate in candidates:
            if len(candidate) >= MIN_SECRET_LENGTH:
                found.update({candidate, quote(candidate, safe=""), unquote(candidate)})
    return sorted(
        (value for value in found if len(value) >= MIN_SECRET_LENGTH), key=len, reverse=True
    )


_environment_cache: dict[str, object] = {"data": None, "values": []}


def _environment_secrets() -> list[str]:
    """secret_values() of os.environ, computed again only when the environment changed."""
    data = getattr(os.environ, "_data", None)  # the raw mapping; decoding every value is slow
    if not isinstance(data, dict):
        return secret_values(os.environ)
    if _environment_cache["data"] != data:
        _environment_cache["values"] = secret_values(os.environ)
        _environment_cache["data"] = dict(data)
    return _environment_cache["values"]  # type: ignore[return-value]


def _mask_group(match: re.Match, group: str) -> str:
    whole, start = match.group(0), match.start(group) - match.start(0)
    return whole[:start] + MASK + whole[match.end(group) - match.start(0) :]


def mask_secrets(text: str, env: Mapping[str, str] | None = None) -> str:
    """`text` as it may be shown, logged or sent: every secret in it replaced by ***."""
    if not text:
        return text
    for value in _environment_secrets() if env is None else secret_values(env):
        if value in text:
            text = text.replace(value, MASK)
    if "@" in text and ":" in text:
        text = _URI_PASSWORD.sub(lambda m: _mask_group(m, "password"), text)
    text = _AUTHORIZATION.sub(lambda m: _mask_group(m, "credentials"), text)
    text = _BEARER.sub(lambda m: _mask_group(m, "credentials"), text)
    if "=" in text:
        text = _PARAMETER.sub(lambda m: _mask_group(m, "value"), text)
    if ":" in text:
        text = _QUOTED_KEY.sub(lambda m: _mask_group(m, "value"), text)
    return text


class SecretMaskingFilter(logging.Filter):
    """Masks a record's final message (its arguments filled in) and its exception text. A
    record whose exception text holds a secret carries the masked traceback in its message
    instead of the exception, since handlers (structlog's among them) render exceptions their
    own way."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict):
            return True  # a structlog event dict, rendered by structlog's processors
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: logging reports it, without its arguments
            record.args = ()
            return True
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, ()
        if record.exc_info and record.exc_info[1] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            masked_text = mask_secrets(text)
            if masked_text != text:
                record.msg = f"{record.msg}\n{masked_text}"
                record.exc_info, record.exc_text = None, None
        elif record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        return True


_FILTER = SecretMaskingFilter()


def _masking_factory(previous):
    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _FILTER.filter(record)
        return record

    factory.segflow_masking = True  # type: ignore[attr-defined]
    return factory


def install_log_masking() -> None:
    """Mask every log record this process creates from now on (idempotent), and tell Airflow's
    task-log masker the secret values when Airflow is loaded (in a task, the supervisor that
    writes the task's log is told too)."""
    current = logging.getLogRecordFactory()
    if not getattr(current, "segflow_masking", False):
        logging.setLogRecordFactory(_masking_factory(current))
    if "airflow.sdk" in sys.modules:
        _tell_airflow(_environment_secrets())


def _tell_airflow(values: Iterable[str]) -> None:
    try:
        from airflow.sdk.log import mask_secret
    except Exception:  # another Airflow version: our own filter still masks our lines
        return
    for value in values:
        try:
            mask_secret(value)
        except Exception:
            return
