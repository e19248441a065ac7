"""Training: one MLflow run per model, registered as `challenger`.

The estimators, their tuning and what a fit yields are ml/models/fitting.py's. This module runs
them for a training set (ml/models/training_sets.py): a kind whose training set lacks the
outcomes to learn from (ml.models.evaluate.not_applicable_reason: no e-mail events, so no click
to predict; too few examples in a snapshot) is not trained: it is marked not applicable in the
registry, and its scores are null until a training finds enough.

Training runs with one OpenMP and BLAS thread, in one process. On two cores shared with
anything else (another task, the scheduler, a CI neighbour), the boosters and K-Means were
measured 7 to 15 times slower with two spinning OpenMP threads than with one; on a quiet
machine one thread took about 1.7 times as long per fit. Predictable beats fast on a good day.

One MLflow parent run per training set ("train <as-of>": window, snapshots, settings, code
version) holds one nested run per model: parameters, metrics of the model and its baseline,
row counts, the feature list, charts, permutation importances and a model card.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import importlib.metadata
import json
import logging
import subprocess
import tempfile
import time
from pathlib import Path

from threadpoolctl import threadpool_limits

from ml.config import PROJECT_DIR, Settings
from ml.errors import NoChampion
from ml.models import catalogue, evaluate, registry
from ml.models.fitting import Trained, drift_reference, train_personas, train_supervised
from ml.models.training_sets import TrainingSet, build_training_set, load_training_set
from ml.monitoring import drift

log = logging.getLogger(__name__)


@functools.cache
def code_version() -> str:
    """The git commit (with +dirty for uncommitted changes), else the package version."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            timeout=10,
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if commit.returncode == 0:
            return commit.stdout.strip() + ("+dirty" if status.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return f"segflow {importlib.metadata.version('segflow')}"


def _parent_run(settings: Settings, ts: TrainingSet) -> str:
    """The run of this training set ("train <as-of>"), created by the first model trained."""
    client = registry.mlflow_client(settings)
    experiment = registry.experiment_id(settings)
    manifest = ts.manifest
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    found = client.search_runs(
        [experiment], filter_string=f"tags.segflow_training_set = '{digest}'", max_results=1
    )
    if found:
        return found[0].info.run_id
    from mlflow.entities import Param

    training = manifest["training_snapshots"]
    rows = manifest["snapshots"]
    window_end = dt.date.fromisoformat(training[-1]) + dt.timedelta(
        days=manifest["label_horizon_days"]
    )
    params = {
        "as_of": manifest["as_of"],
        "validation_snapshot": manifest["validation_snapshot"],
        "training_snapshots": ",".join(training),
        "training_window": f"features {training[0]}..{training[-1]}, labels to {window_end}",
        "skipped_snapshots": ",".join(manifest["skipped_snapshots"]) or "none",
        "label_horizon_days": manifest["label_horizon_days"],
        "snapshot_spacing_days": manifest["snapshot_spacing_days"],
        "rows_training": sum(rows[s]["rows"] for s in training),
        "rows_validation": rows[manifest["validation_snapshot"]]["rows"],
        **{f"models_{k}": v for k, v in vars(settings.models).items()},
    }
    tags = {"segflow_training_set": digest, "segflow_code_version": code_version()}
    if not code_version().startswith("segflow "):
        tags["mlflow.source.git.commit"] = code_version().removesuffix("+dirty")
    run = client.create_run(experiment, run_name=f"train {manifest['as_of']}", tags=tags)
    client.log_batch(
        run.info.run_id, params=[Param(key, str(value)) for key, value in params.items()]
    )
    client.log_artifact(run.info.run_id, str(ts.directory / "manifest.json"))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _model_card(kind: str, ts: TrainingSet, trained: Trained) -> str:
    model = catalogue.model(kind)
    manifest = ts.manifest
    lines = [
        f"# Model card: {model.registered_name}",
        "",
        f"- Trained as of {manifest['as_of']} on snapshots {', '.join(manifest['training_snapshots'])}"
        f" (label horizon {manifest['label_horizon_days']} days); evaluated out of time on "
        f"{manifest['validation_snapshot']}.",
        f"- Rows: {trained.rows['rows_training']:,} training, {trained.rows['rows_validation']:,} validation.",
        f"- Gate metric: {model.gate_metric} (promotion compares it with the baseline and the "
        "champion).",
        f"- Baseline (no learning): {model.baseline}.",
        f"- Code version: {code_version()}.",
        "",
        "## Target",
        "",
    ]
    if not model.supervised:
        lines += [
            "No target: K-Means on standardised behaviour features; the number of personas by "
            "silhouette with a minimum segment share; names from the profile (ml/segments/personas.py).",
            "",
            "| persona | description |",
            "|---|---|",
            *(
                f"| {trained.persona_names[label]} | {trained.persona_descriptions[label]} |"
                for label in sorted(trained.persona_names)
            ),
        ]
    else:
        rows = (
            "active customers (an order in the past year)" if model.active_only else "all customers"
        )
        lines += [f"`{model.target}` in the horizon after the snapshot, for {rows}."]
    lines += [
        "",
        "## Out-of-time results",
        "",
        evaluate.metrics_table(trained.metrics, trained.baseline),
        "",
        "## Training",
        "",
        *(f"- {name}: {value}" for name, value in trained.params.items()),
        "",
        "## Features",
        "",
        ", ".join(f"`{f}`" for f in trained.features),
        "",
        "## Use and limits",
        "",
        "- Scores customers as of a date for e-mail audiences; not for decisions with legal or "
        "similarly significant effects on a person.",
        "- Learned from this shop's own history: a change of assortment, pricing or campaign "
        "rhythm makes it stale; the drift monitor triggers retraining.",
        "- No personal data in this model's artifacts: ids and e-mail addresses are never "
        "features, and the input example is a row of medians.",
    ]
    return "\n".join(lines) + "\n"


def train_and_register(settings: Settings, kind: str, training_set_dir: Path) -> dict:
    """Tune, train and evaluate one model kind on a training set, log the MLflow run, and
    register the model as a new version with the alias `challenger`. A kind the training set
    cannot support (ml.models.evaluate.not_applicable_reason) is marked not applicable in the registry
    instead, and nothing is trained: `version` is None and `not_applicable` says why."""
    import mlflow

    name = catalogue.model(kind).registered_name
    ts = load_training_set(training_set_dir)
    as_of = ts.manifest["as_of"]
    reason = evaluate.not_applicable_reason(kind, ts.frame, ts.manifest["label_horizon_days"])
    if reason:
        registry.mark_not_applicable(settings, kind, reason, as_of)
        log.warning("%s is not applicable as of %s: %s", name, as_of, reason)
        return {"kind": kind, "registered_model": name, "version": None, "not_applicable": reason}
    parent = _parent_run(settings, ts)
    started = time.perf_counter()
    with (
        threadpool_limits(limits=1),
        mlflow.start_run(
            experiment_id=registry.experiment_id(settings),
            run_name=f"{kind} {ts.manifest['as_of']}",
            tags={
                "mlflow.parentRunId": parent,
                "segflow_kind": kind,
                "segflow_code_version": code_version(),
            },
        ) as run,
        tempfile.TemporaryDirectory(prefix="segflow-train-") as tmp,
    ):
        out = Path(tmp)
        if kind == "personas":
            trained = train_personas(ts, settings, out)
        else:
            trained = train_supervised(kind, ts, settings, out)
        fit_seconds = time.perf_counter() - started
        (out / "features.json").write_text(json.dumps(trained.features, indent=1) + "\n")
        (out / drift.REFERENCE_ARTIFACT).write_text(
            json.dumps(drift_reference(kind, trained, ts)) + "\n"
        )
        (out / "model_card.md").write_text(_model_card(kind, ts, trained))
        gate = catalogue.model(kind).gate_metric
        mlflow.log_params(
            {
                "kind": kind,
                "as_of": ts.manifest["as_of"],
                "validation_snapshot": ts.manifest["validation_snapshot"],
                "training_snapshots": ",".join(ts.manifest["training_snapshots"]),
                "n_features": len(trained.features),
                "baseline": catalogue.model(kind).baseline,
                "gate_metric": gate,
                **trained.rows,
                **trained.params,
            }
        )
        mlflow.log_metrics(
            {
                **trained.metrics,
                **{f"baseline_{key}": value for key, value in trained.baseline.items()},
                "train_seconds": fit_seconds,
            }
        )
        mlflow.log_artifacts(str(out))
        version = registry.log_model(
            kind,
            trained.model,
            trained.features,
            ts.training[trained.features],  # the input example: medians of features only
            version_tags={
                "training_set": str(Path(training_set_dir).resolve()),
                "training_as_of": ts.manifest["as_of"],
                "validation_snapshot": ts.manifest["validation_snapshot"],
                "gate_metric": gate,
                gate: f"{trained.metrics[gate]:.4f}",
                f"baseline_{gate}": f"{trained.baseline[gate]:.4f}",
                "code_version": code_version(),
            },
            persona_names=trained.persona_names,
            persona_descriptions=trained.persona_descriptions,
        )
        run_id = run.info.run_id
    client = registry.mlflow_client(settings)
    for key in (gate, *(m for m in ("pr_auc", "brier", "mae") if m in trained.metrics)):
        client.log_metric(parent, f"{kind}.{key}", trained.metrics[key])
        if key in trained.baseline:
            client.log_metric(parent, f"{kind}.baseline_{key}", trained.baseline[key])
    seconds = time.perf_counter() - started
    log.info(
        "%s version %d: %s %.4f (baseline %.4f), trained in %.1fs",
        name,
        version,
        gate,
        trained.metrics[gate],
        trained.baseline[gate],
        seconds,
    )
    return {
        "kind": kind,
        "registered_model": name,
        "version": version,
        "not_applicable": None,
        "run_id": run_id,
        "gate_metric": gate,
        "metrics": {k: round(v, 6) for k, v in trained.metrics.items()},
        "baseline": {k: round(v, 6) for k, v in trained.baseline.items()},
        "rows": trained.rows,
        "fit_seconds": round(fit_seconds, 2),
        "seconds": round(seconds, 2),
    }


def train_all(
    settings: Settings, as_of: dt.date, kinds: tuple[str, ...] | list[str] = catalogue.MODEL_KINDS
) -> dict:
    """Build the training set, then train, register and promote each of `kinds` (every model
    kind by default); a kind that is not applicable has nothing to promote."""
    directory = build_training_set(settings, as_of)
    models = {}
    for kind in kinds:
        trained = train_and_register(settings, kind, directory)
        promotion = None
        if not trained["not_applicable"]:
            promotion = registry.promote(settings, kind, trained["version"])
        models[kind] = {**trained, "promotion": promotion}
    return {"as_of": as_of.isoformat(), "training_set": str(directory), "models": models}


def ensure_champions(settings: Settings, as_of: dt.date) -> list[str]:
    """Cold start: train, as of `as_of`, the model kinds that have no champion and are not
    marked not applicable (registry.missing_champions). Returns those kinds. Only they are
    trained, so a retry after a failure registers no new versions of the ones that made it; a
    kind the data cannot support is marked and left to the next scheduled training. A kind
    whose first model does not beat its baseline still has no champion: that stops the run
    here, with the gate's reason, rather than publishing scores no better than a rule of
    thumb."""
    missing = registry.missing_champions(settings)
    if not missing:
        return []
    log.info("no champion yet for %s: training them as of %s", ", ".join(missing), as_of)
    result = train_all(settings, as_of, missing)
    still_missing = registry.missing_champions(settings)
    if still_missing:
        reasons = "; ".join(
            f"{catalogue.model(kind).registered_name}: "
            f"{result['models'][kind]['promotion']['reason']}"
            for kind in still_missing
        )
        raise NoChampion(
            f"cold start as of {as_of}: no champion after training ({reasons}). Nothing is "
            "published until a model beats its baseline: more history (a later as-of date) or "
            "a person promoting a version in the MLflow UI"
        )
    return missing


def training_summary(settings: Settings) -> str:
    """The champion of each model kind with its version, window and key metrics, or why the
    kind is not applicable."""
    lines = ["models (champion by alias):"]
    client = None
    marked = registry.not_applicable_models(settings)
    for model in catalogue.MODELS:
        kind, name = model.kind, model.registered_name
        if kind in marked:
            lines.append(
                f"  {name:<34} not applicable as of {marked[kind].as_of} (scores null): "
                f"{marked[kind].reason}"
            )
            continue
        version = registry.alias_version(settings, kind, registry.CHAMPION)
        if version is None:
            lines.append(f"  {name:<34} no champion yet (train_models, or segflow train)")
            continue
        client = client or registry.mlflow_client(settings)
        details = client.get_model_version(name, str(version))
        metrics = client.get_run(details.run_id).data.metrics
        gate = model.gate_metric
        lines.append(
            f"  {name:<34} v{version:<4} as of {details.tags.get('training_as_of', '?')}  "
            f"{gate} {metrics.get(gate, float('nan')):.3f} "
            f"(baseline {metrics.get(f'baseline_{gate}', float('nan')):.3f})  "
            f"{details.tags.get('validation_status', '?')}"
        )
    return "\n".join(lines)
