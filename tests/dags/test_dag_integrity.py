"""Every DAG file imports cleanly and follows the project's rules (STYLE.md, DESIGN.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from ml.orchestration import DAG_TAGS, WAREHOUSE_POOL

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def dag_bag(dbt_manifest: Path) -> DagBag:
    # known_pools makes the bag warn about a task in a pool that `make airflow-init` does not create.
    return DagBag(dag_folder=str(DAGS_DIR), known_pools={WAREHOUSE_POOL, "default_pool"})


def test_every_dag_file_imports_without_errors(dag_bag: DagBag):
    assert dag_bag.import_errors == {}
    assert dag_bag.captured_warnings == {}
    assert dag_bag.dag_warnings == set()  # e.g. a task in a pool that airflow-init does not create
    assert DAG_FILES, "no DAG files found"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_one_dag_per_file_named_after_the_file(dag_bag: DagBag, path: Path):
    in_file = [d for d in dag_bag.dags.values() if Path(d.fileloc).resolve() == path.resolve()]
    assert [d.dag_id for d in in_file] == [path.stem]


def test_dags_set_tags_retries_and_one_active_run(dag_bag: DagBag):
    for dag in dag_bag.dags.values():
        assert dag.tags and set(dag.tags) <= DAG_TAGS, dag.dag_id
        assert dag.max_active_runs == 1, dag.dag_id
        assert dag.catchup is False, dag.dag_id
        assert dag.doc_md, f"{dag.dag_id} has no documentation"
        for task in dag.tasks:
            # A data quality gate fails the same way on the same data: retrying only delays.
            if task.task_id.endswith("_gate"):
                assert task.retries == 0, f"{dag.dag_id}.{task.task_id} retries a gate"
            else:
                assert task.retries >= 1, f"{dag.dag_id}.{task.task_id} has no retries"


def test_warehouse_writers_share_the_single_slot_pool(dag_bag: DagBag):
    dag = dag_bag.dags["segment_pipeline"]
    ingest = dag.get_task("ingest")
    assert {a.name for a in ingest.outlets} >= {"raw.customers", "raw.orders"}
    dbt_tasks = [t for t in dag.tasks if t.task_id.startswith("features.")]
    gates = [dag.get_task(f"{name}_gate") for name in ("raw", "features", "segments")]
    writers = [
        dag.get_task(task_id)
        for task_id in ("score_review_texts", "ensure_champions", "score", "publish")
    ]
    assert {t.pool for t in [ingest, *gates, *writers, *dbt_tasks]} == {WAREHOUSE_POOL}
    # Training writes the warehouse only when dbt builds missing snapshots.
    train = dag_bag.dags["train_models"]
    assert train.get_task("build_training_set").pool == WAREHOUSE_POOL
    assert train.get_task("train_model").pool != WAREHOUSE_POOL


def test_publishing_follows_scoring_and_its_gate(dag_bag: DagBag):
    dag = dag_bag.dags["segment_pipeline"]
    order = ["features_gate", "ensure_champions", "score", "segments_gate", "publish"]
    for upstream, downstream in zip(order, order[1:], strict=False):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    assert {a.name for a in dag.get_task("publish").outlets} == {
        "published.customer_segments",
        "audience_exports",
    }


def test_train_models_trains_every_model_weekly_and_on_drift(dag_bag: DagBag):
    from ml.registry import MODEL_KINDS

    dag = dag_bag.dags["train_models"]
    # The DAG file takes the kinds from ml.orchestration to avoid importing MLflow at parse time.
    assert dag.get_task("train_model").op_kwargs_expand_input.value["kind"] == list(MODEL_KINDS)
    assert dag.get_task("promote").upstream_task_ids == {"train_model"}
    assert {a.name for a in dag.get_task("promote").outlets} == {
        f"segflow_{kind}" for kind in MODEL_KINDS
    }
    assert "drift_alert" in str(dag.timetable.asset_condition)
    assert dag.timetable.timetable.expression == "0 4 * * 1"


def test_every_dbt_model_is_a_task_that_builds_it_with_its_tests(
    dag_bag: DagBag, dbt_manifest: Path
):
    import json

    models = {
        node["name"]
        for node in json.loads(dbt_manifest.read_text())["nodes"].values()
        if node["resource_type"] == "model"
    }
    dag = dag_bag.dags["segment_pipeline"]
    assert {t.task_id for t in dag.tasks if t.task_id.startswith("features.")} == {
        f"features.{model}_model_build" for model in models
    }
    marts = dag.get_task("features.customer_features_model_build")
    assert "int_customers_rfm_scored_model_build" in " ".join(marts.upstream_task_ids)
    # dbt receives the same as-of date the Python tasks resolve.
    assert (
        marts.vars["as_of_date"]
        == "{{ params.as_of_date or (logical_date or data_interval_start) | ds }}"
    )
    assert dag.get_task("score_review_texts").downstream_task_ids >= {
        "features.stg_shop__customers_model_build"
    }
    # Gates sit between ingest and dbt, and after dbt.
    assert dag.get_task("raw_gate").upstream_task_ids == {"ingest"}
    assert dag.get_task("raw_gate").downstream_task_ids == {"score_review_texts"}
    assert dag.get_task("features_gate").upstream_task_ids >= {
        "features.customer_features_model_build",
        "features.training_labels_model_build",
    }


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_parsing_a_dag_file_imports_no_heavy_library(path: Path, dbt_manifest: Path):
    """The scheduler parses DAG files often: heavy libraries belong inside tasks."""
    heavy = ("duckdb", "pandas", "pyarrow", "sklearn", "mlflow", "great_expectations", "dbt")
    probe = (
        "import runpy, sys; runpy.run_path(sys.argv[1]); "
        f"print('loaded heavy:', [m for m in {heavy!r} if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(path)], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "loaded heavy: []"
