"""The MLflow model registry: how segflow's models are stored, found by alias, and promoted.

Every model kind is registered as `segflow_<kind>`. A new version gets the alias `challenger`;
the promotion gate (`promote`) moves `champion`, which is what scoring loads. Each version carries
the tags `validation_status` (pending, passed, failed, awaiting_review) and `validation_reason`.

A kind the newest training set cannot support (ml.models.evaluate.not_applicable_reason) is marked on
its registered model with the tags `not_applicable_reason` and `not_applicable_as_of`: scoring
leaves its columns null, whatever champion it had, and the cold start does not train it again.
The next training judges it anew; a new version clears the mark.

Models are stored with skops, never pickle. Loading trusts only the types in
`SKOPS_ALLOWED_TYPES`, a list kept in this code: the trusted-types list written into a model's
own MLmodel file is checked against it, so a tampered artifact cannot widen what gets loaded
(that is also why loading does not go through `mlflow.sklearn.load_model`, which would need
`MLFLOW_ALLOW_PICKLE_DESERIALIZATION`).
"""

from __future__ import annotations

import importlib.metadata
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from threadpoolctl import threadpool_limits

from ml.config import Settings
from ml.errors import NoChampion
from ml.models import catalogue
from ml.models.training_sets import load_training_set
from ml.privacy.secret_masking import mask_secrets

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

# skops finds a function's module by looking the function up in every imported module. In an
# Airflow task those include Airflow's deprecated aliases, and each lookup warns: some 1,100
# log lines per logged model, none of them about segflow.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"skops\.io\._utils")

EXPERIMENT_NAME = "segflow"
CHAMPION = "champion"
CHALLENGER = "challenger"
NOT_APPLICABLE_REASON = "not_applicable_reason"
NOT_APPLICABLE_AS_OF = "not_applicable_as_of"

SKOPS_ALLOWED_TYPES = frozenset(
    {
        # Gradient boosting with native categorical features keeps a small preprocessor that
        # holds `functools.partial(check_array, ...)`; skops checks the wrapped function against
        # this same list, so trusting `partial` admits nothing else.
        "functools.partial",
        "sklearn.utils.validation.check_array",
        "numpy.dtype",
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    }
)
"""Types beyond skops' defaults that segflow's pipelines contain. Logging a model that needs
another type fails: add it here only after checking it cannot run code when loaded."""


@dataclass(frozen=True)
class ChampionModel:
    kind: str
    version: int
    model: Any
    """The scikit-learn Pipeline."""
    features: list[str]
    """The customer_features columns the model reads, in order."""
    persona_names: dict[int, str] | None
    """Personas only: cluster label -> persona name."""


@dataclass(frozen=True)
class NotApplicable:
    """A model kind the data cannot support, as the training as of `as_of` found."""

    kind: str
    reason: str
    as_of: str | None


def mlflow_client(settings: Settings) -> MlflowClient:
    """A client on the configured store (tracking and registry), also set for mlflow's fluent
    API in this process."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    return mlflow.MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)


def experiment_id(settings: Settings, name: str = EXPERIMENT_NAME) -> str:
    """The experiment `name` (default `segflow`), created on first use. In the embedded store
    its artifacts live under the data folder (`make up` serves the same folder), never in the
    working directory."""
    client = mlflow_client(settings)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if settings.mlflow_tracking_uri.startswith("sqlite:"):
        location = (settings.mlflow_dir / "artifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def _store_is_empty(settings: Settings) -> bool:
    """True when the embedded SQLite store does not exist yet (reading must not create it)."""
    uri = settings.mlflow_tracking_uri
    return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists()


def trusted_types(model: Any) -> list[str]:
    """The non-default types skops needs to load `model`, checked against the allow-list."""
    import skops.io

    needed = set(skops.io.get_untrusted_types(data=skops.io.dumps(model)))
    unexpected = needed - SKOPS_ALLOWED_TYPES
    if unexpected:
        raise ValueError(
            f"the model contains types skops does not trust by default and segflow has not "
            f"reviewed: {', '.join(sorted(unexpected))}; check them and extend "
            f"ml.models.registry.SKOPS_ALLOWED_TYPES"
        )
    return sorted(needed)


_MODEL_PACKAGES = ("scikit-learn", "skops", "numpy", "scipy", "pandas")


def _pip_requirements() -> list[str]:
    return [f"{package}=={importlib.metadata.version(package)}" for package in _MODEL_PACKAGES]


def input_example(frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """One row of medians and most frequent values of `frame`: the shape of the input with no
    real customer in it. Numbers become doubles (integer columns of the warehouse can be null,
    and the signature should say so)."""
    import numpy as np
    import pandas as pd

    row = {}
    for column in features:
        values = frame[column].dropna()
        if values.empty:
            row[column] = np.nan
        elif pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            row[column] = values.mode().iloc[0]
        else:
            row[column] = float(values.median())
    return pd.DataFrame([row], columns=features)


def log_model(
    kind: str,
    model: Any,
    features: list[str],
    reference: pd.DataFrame,
    version_tags: dict[str, str],
    persona_names: dict[int, str] | None = None,
    persona_descriptions: dict[int, str] | None = None,
) -> int:
    """Log `model` in the active run, register it as a new version of `segflow_<kind>` with the
    alias `challenger` and `version_tags`, and return the version number. The signature and
    input example are derived from `reference` (rows with the feature columns), as medians and
    most frequent values only."""
    import mlflow
    from mlflow.models import infer_signature

    name = catalogue.model(kind).registered_name
    example = input_example(reference, features)
    is_classifier = hasattr(model, "predict_proba")
    output = model.predict_proba(example) if is_classifier else model.predict(example)
    metadata: dict[str, Any] = {"segflow_kind": kind, "features": list(features)}
    if persona_names is not None:
        metadata["persona_names"] = {str(label): n for label, n in persona_names.items()}
        metadata["persona_descriptions"] = {
            str(label): text for label, text in (persona_descriptions or {}).items()
        }
    info = mlflow.sklearn.log_model(
        model,
        name="model",
        signature=infer_signature(example, output),
        input_example=example,
        registered_model_name=name,
        serialization_format="skops",
        skops_trusted_types=trusted_types(model),
        pyfunc_predict_fn="predict_proba" if is_classifier else "predict",
        # Stated, not inferred: inference loads the model in a subprocess (about 20 s per model).
        pip_requirements=_pip_requirements(),
        metadata=metadata,
    )
    version = int(info.registered_model_version)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(name, CHALLENGER, str(version))
    for key, value in {"validation_status": "pending", **version_tags}.items():
        client.set_model_version_tag(name, str(version), key, str(value))
    # The data supports this kind again.
    for key in (NOT_APPLICABLE_REASON, NOT_APPLICABLE_AS_OF):
        client.delete_registered_model_tag(name, key)
    return version


def mark_not_applicable(settings: Settings, kind: str, reason: str, as_of: str) -> None:
    """Record that the training set as of `as_of` cannot support `kind` (see the module's
    docstring), creating the registered model when it has no version yet."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(settings)
    name = catalogue.model(kind).registered_name
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name)
    client.set_registered_model_tag(name, NOT_APPLICABLE_REASON, reason)
    client.set_registered_model_tag(name, NOT_APPLICABLE_AS_OF, as_of)


def not_applicable_models(settings: Settings) -> dict[str, NotApplicable]:
    """The kinds marked not applicable, with the reason and the training date that found it."""
    from mlflow.exceptions import MlflowException

    if _store_is_empty(settings):
        return {}
    client = mlflow_client(settings)
    marked = {}
    for kind in catalogue.MODEL_KINDS:
        try:
            tags = client.get_registered_model(catalogue.model(kind).registered_name).tags
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                continue
            raise
        if NOT_APPLICABLE_REASON in tags:
            marked[kind] = NotApplicable(
                kind, tags[NOT_APPLICABLE_REASON], tags.get(NOT_APPLICABLE_AS_OF)
            )
    return marked


def alias_version(settings: Settings, kind: str, alias: str) -> int | None:
    """The version holding `alias`, or None."""
    from mlflow.exceptions import MlflowException

    if _store_is_empty(settings):
        return None
    client = mlflow_client(settings)
    try:
        return int(
            client.get_model_version_by_alias(catalogue.model(kind).registered_name, alias).version
        )
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def load_version(settings: Settings, kind: str, version: int) -> ChampionModel:
    """One registered version of a model kind, loaded with skops and the reviewed types."""
    import mlflow
    import skops.io
    from mlflow.models import Model

    mlflow_client(settings)
    uri = f"models:/{catalogue.model(kind).registered_name}/{version}"
    with tempfile.TemporaryDirectory(prefix="segflow-model-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        spec = Model.load(local)
        flavor = spec.flavors["sklearn"]
        if flavor.get("serialization_format") != "skops":
            raise ValueError(
                f"{uri} is stored as {flavor.get('serialization_format')!r}; segflow loads only "
                "skops models (retrain it with train_models)"
            )
        declared = set(flavor.get("skops_trusted_types") or [])
        if not declared <= SKOPS_ALLOWED_TYPES:
            raise ValueError(
                f"{uri} asks to trust types segflow has not reviewed: "
                f"{', '.join(sorted(declared - SKOPS_ALLOWED_TYPES))}"
            )
        model = skops.io.load(local / flavor["pickled_model"], trusted=sorted(declared))
    metadata = spec.metadata or {}
    names = metadata.get("persona_names")
    return ChampionModel(
        kind=kind,
        version=int(version),
        model=model,
        features=list(metadata["features"]),
        persona_names={int(label): n for label, n in names.items()} if names else None,
    )


def load_champion(settings: Settings, kind: str) -> ChampionModel:
    """The model `models:/segflow_<kind>@champion`; NoChampion when there is none yet."""
    version = alias_version(settings, kind, CHAMPION)
    if version is None:
        registry = mask_secrets(settings.mlflow_tracking_uri)
        raise NoChampion(
            f"{catalogue.model(kind).registered_name} has no champion in {registry}: run "
            "train_models (segflow train --as-of YYYY-MM-DD, or the train_models DAG) first"
        )
    return load_version(settings, kind, version)


def missing_champions(settings: Settings) -> list[str]:
    """The model kinds that have no champion yet and are not marked not applicable: those a
    cold start trains."""
    marked = not_applicable_models(settings)
    return [
        kind
        for kind in catalogue.MODEL_KINDS
        if kind not in marked and alias_version(settings, kind, CHAMPION) is None
    ]


def decide(
    metric: str,
    scores: dict[str, float],
    champion_version: int | None,
    tolerance: float,
    auto_promote: bool,
) -> tuple[str, str, bool]:
    """The gate's verdict: (validation status, reason, whether `champion` moves).

    The challenger must beat the baseline. The first model ever then becomes champion, whatever
    SEGFLOW_AUTO_PROMOTE says: without one nothing can be scored, and there is no earlier model
    for a person to protect. Otherwise it must not be worse than the champion by more than
    `tolerance` (an absolute difference in the gate metric); then the alias moves, or, with
    auto-promotion off, the version waits for a person to move it."""
    challenger, baseline = scores["challenger"], scores["baseline"]
    champion = scores.get("champion")
    if not challenger > baseline:  # also refuses a metric that could not be computed (nan)
        return (
            "failed",
            f"{metric} {challenger:.4f} does not beat the baseline ({baseline:.4f})",
            False,
        )
    beats = f"{metric} {challenger:.4f} beats the baseline ({baseline:.4f})"
    if champion_version is None:
        return "passed", f"first model: {beats}; promoted to champion", True
    if champion is None:
        versus = f"champion v{champion_version} cannot read this training set's columns"
    elif challenger < champion - tolerance:
        return (
            "failed",
            f"{beats}, but is worse than champion v{champion_version} ({champion:.4f}) by more "
            f"than the tolerance {tolerance}",
            False,
        )
    else:
        versus = f"champion v{champion_version} has {champion:.4f} (tolerance {tolerance})"
    if not auto_promote:
        return (
            "awaiting_review",
            f"{beats}; {versus}. Auto-promotion is off (SEGFLOW_AUTO_PROMOTE): move the alias "
            f"'{CHAMPION}' to this version in the MLflow UI to promote it",
            False,
        )
    return "passed", f"{beats}; {versus}; promoted to champion", True


def promote(settings: Settings, kind: str, version: int) -> dict:
    """The promotion gate for one registered version: compare it with the baseline and the
    current champion on its own validation snapshot, tag it with the verdict, and move
    `champion` when it passes (and auto-promotion is on)."""
    from ml.models import evaluate

    client = mlflow_client(settings)
    name = catalogue.model(kind).registered_name
    details = client.get_model_version(name, str(version))
    if "training_set" not in details.tags:
        raise ValueError(
            f"{name} v{version} has no training_set tag: it was not trained by segflow"
        )
    validation = load_training_set(Path(details.tags["training_set"]), validation_only=True)
    champion_version = alias_version(settings, kind, CHAMPION)
    metric = catalogue.model(kind).gate_metric
    if champion_version == int(version):
        status, reason, move = "passed", "already the champion", False
        scores: dict[str, float] = {}
    else:
        challenger = load_version(settings, kind, int(version))
        champion = (
            None if champion_version is None else load_version(settings, kind, champion_version)
        )
        with threadpool_limits(
            limits=1
        ):  # see ml/models/train.py: spinning threads on shared cores
            scores = evaluate.gate_scores(
                kind, validation.validation, challenger, champion, settings.label_horizon_days
            )
        status, reason, move = decide(
            metric,
            scores,
            champion_version,
            settings.models.promotion_tolerance,
            settings.models.auto_promote,
        )
    if move:
        client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_model_version_tag(name, str(version), "validation_status", status)
    client.set_model_version_tag(name, str(version), "validation_reason", reason)
    # The comparison is kept with the version's run: gate_challenger_roc_auc, gate_champion_...
    for key, value in scores.items():
        label = key if key == "ari_vs_champion" else f"{key}_{metric}"
        client.log_metric(details.run_id, f"gate_{label}", value)
    log.info("%s v%s: %s (%s)", name, version, status, reason)
    return {
        "kind": kind,
        "version": int(version),
        "status": status,
        "reason": reason,
        "champion_version": int(version) if move else champion_version,
        "previous_champion_version": champion_version,
        "gate_metric": metric,
        "scores": {key: round(value, 6) for key, value in scores.items()},
    }
