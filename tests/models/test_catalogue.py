"""The model catalogue: what it promises to the code that reads it."""

from __future__ import annotations

import numpy as np
import pytest

from ml.models import catalogue, evaluate
from ml.models.training_sets import LABEL_COLUMNS
from ml.warehouse import tables


def _metric_names(model: catalogue.Model) -> set[str]:
    """The metrics evaluate computes for a model of this kind (on made-up outcomes)."""
    y = np.array([0, 1, 0, 1, 1, 0, 1, 0, 0, 1])
    score = np.linspace(0.1, 0.9, len(y))
    if not model.supervised:
        space = np.column_stack([score, score[::-1]])
        return set(evaluate.clustering_metrics(space, y, np.arange(len(y))))
    if model.probability:
        return set(evaluate.classification_metrics(y, score))
    return set(evaluate.regression_metrics(y * 10.0, score * 10.0))


def test_kinds_and_registered_names_are_unique():
    assert len(set(catalogue.MODEL_KINDS)) == len(catalogue.MODELS)
    assert len({m.registered_name for m in catalogue.MODELS}) == len(catalogue.MODELS)
    assert len({m.output_column for m in catalogue.MODELS}) == len(catalogue.MODELS)


@pytest.mark.parametrize("model", catalogue.MODELS, ids=catalogue.MODEL_KINDS)
def test_the_gate_and_realized_metrics_are_ones_evaluation_computes(model: catalogue.Model):
    computed = _metric_names(model)
    assert model.gate_metric in computed
    assert set(model.realized_metrics) <= computed
    # The drift monitor judges a drop in the gate metric; a model it watches must compute it.
    assert not model.realized_metrics or model.gate_metric in model.realized_metrics


@pytest.mark.parametrize("model", catalogue.SCORES, ids=[m.kind for m in catalogue.SCORES])
def test_a_supervised_model_learns_a_label_and_names_its_outcomes(model: catalogue.Model):
    assert model.target in LABEL_COLUMNS
    assert model.outcomes is not None and len(set(model.outcomes)) == 2


def test_every_output_band_and_version_is_a_column_of_the_segments_table():
    columns = tables.CUSTOMER_SEGMENTS.column_names
    for model in catalogue.MODELS:
        assert model.output_column in columns, model.kind
        assert model.version_column in columns, model.kind
    for model in catalogue.PROBABILITIES:
        assert model.band_column in columns, model.kind
    assert all(m.band_column is None for m in catalogue.MODELS if not m.probability)


def test_the_docstring_table_says_what_the_catalogue_holds():
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in catalogue.__doc__.splitlines()
        if line.startswith("| ") and not line.startswith("| model ")
    ]
    assert [row[0] for row in rows] == list(catalogue.MODEL_KINDS)
    for kind, target, rows_, _, gate in rows:
        model = catalogue.model(kind)
        assert target == (model.target or "-"), kind
        assert rows_.startswith("active") == model.active_only, kind
        assert gate == model.gate_metric, kind


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown model kind 'propensity'"):
        catalogue.model("propensity")
