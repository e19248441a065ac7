"""Every exception segflow raises on purpose, by lifecycle step.

Any module may import this one, and the command line names them all to turn each into one
readable message and an exit code without importing the modules that raise them. So it imports
nothing of segflow's but the masking rule (itself standard library only), which every
`ConfigError` message passes through.
"""

from __future__ import annotations

from ml.privacy.secret_masking import mask_secrets

# --------------------------------------------------------------------------- configuration


class ConfigError(ValueError):
    """A setting from the environment cannot be used; the message names the variable.

    The message passes through the masking rule (ml/privacy/secret_masking.py): a value it repeats
    keeps no password or token (the message reaches task logs, failure alerts and the terminal)."""

    def __init__(self, message: str) -> None:
        super().__init__(mask_secrets(message))


# --------------------------------------------------------------------------- ingest


class ContractViolation(Exception):
    """Landing data breaks the contract; the message names the file and, where there is one,
    the column and the rule, and never quotes the file's content."""

    def __init__(self, file: str, column: str | None, rule: str):
        self.file, self.column, self.rule = file, column, rule
        where = f"{file}: column '{column}'" if column else file
        super().__init__(f"{where}: {rule}")


class BadFile(ContractViolation):
    """One landing file cannot be loaded; the others can."""


class StillChanging(Exception):
    """The file changed while it was read: a writer is not done with it."""


# --------------------------------------------------------------------------- features


class FeatureBuildError(RuntimeError):
    """dbt failed: the message lists each failing model or test with its error."""


# --------------------------------------------------------------------------- quality gates


class QualityGateFailed(RuntimeError):
    """A gate stopped the run; the message says which checks failed and why."""


class QuarantineTooLarge(QualityGateFailed):
    """Too large a share of a run's rows broke the contract."""


class BadFilesWaiting(QualityGateFailed):
    """Landing files were set aside whole and nobody has replaced or accepted them."""


class StaleData(QualityGateFailed):
    """The newest order is older than the freshness limit."""


class GateFailed(QualityGateFailed):
    """A data quality gate found `error` expectations failing; the message lists them."""


# --------------------------------------------------------------------------- models


class TrainingSetError(RuntimeError):
    """A training set cannot be built or read; the message says why and what to do."""


class NoChampion(LookupError):
    """A model kind has no version with the alias `champion` yet."""


# --------------------------------------------------------------------------- segments


class AudienceError(ValueError):
    """An audience file cannot be used; the message names the file, the audience and the field."""


class ScoringError(RuntimeError):
    """Scoring cannot run for a date; the message says what to do."""


class PublishError(RuntimeError):
    """Nothing was published; the message says why and what to do."""


class ReadoutError(RuntimeError):
    """A readout cannot be computed yet; the message says why and what to do."""


# --------------------------------------------------------------------------- triggers


class TriggerError(RuntimeError):
    """A refresh cannot be evaluated or published; the message says why."""


# --------------------------------------------------------------------------- monitoring


class MonitoringError(RuntimeError):
    """The monitor cannot run for a date; the message says what to do."""


# --------------------------------------------------------------------------- privacy


class ErasureError(RuntimeError):
    """An erasure could not be completed; the message names where, never whom."""


# --------------------------------------------------------------------------- orchestration


class AsOfDateError(ValueError):
    """The run's as-of date cannot be determined, is not a date, or no run can compute it."""


class RunDidNotRun(RuntimeError):
    """A run that Airflow reports as successful did not run its tasks."""
