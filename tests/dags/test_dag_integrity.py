"""Every DAG file imports cleanly and follows the project's rules for DAGs (docs/operations.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from ml.errors import AsOfDateError
from ml.orchestration.as_of import AS_OF_DATE
from ml.orchestration.dag_defaults import DAG_TAGS, DRIFT_ALERT, WAREHOUSE_POOL, WAREHOUSE_QUEUE
from ml.orchestration.dbt_tasks import apply_run_settings

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


def test_any_shop_date_runs_and_the_scheduler_starts_from_the_latest_interval(dag_bag: DagBag):
    """Airflow runs no task for a logical date before a DAG's start date (and `airflow dags
    test` still reports success), so every DAG starts long before any shop's history; without
    catch-up the scheduler's first run is the latest interval, not one per day since."""
    import datetime as dt

    from airflow.serialization.serialized_objects import DagSerialization

    from ml.orchestration.dag_defaults import DAG_START_DATE

    assert DAG_START_DATE.date() <= dt.date(2000, 1, 1)
    week_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=7, hours=1)
    for dag in dag_bag.dags.values():
        assert dag.start_date == DAG_START_DATE, dag.dag_id
        assert {task.start_date for task in dag.tasks} == {DAG_START_DATE}, dag.dag_id
        scheduled = DagSerialization.from_dict(DagSerialization.to_dict(dag))
        first = scheduled.next_dagrun_info(last_automated_run_info=None)
        # refresh_triggers runs on assets only: no time-based run at all.
        assert first is None or first.run_after >= week_ago, (dag.dag_id, first)


def test_warehouse_writers_share_the_single_slot_pool(dag_bag: DagBag):
    dag = dag_bag.dags["segment_pipeline"]
    ingest = dag.get_task("ingest")
    assert {a.name for a in ingest.outlets} >= {"raw.customers", "raw.orders"}
    # The empty tasks standing for ephemeral models run nothing.
    dbt_tasks = [
        t
        for t in dag.tasks
        if t.task_id.startswith("features.") and type(t).__name__ != "EmptyOperator"
    ]
    gates = [dag.get_task(f"{name}_gate") for name in ("raw", "features", "segments")]
    writers = [
        dag.get_task(task_id)
        for task_id in ("score_review_texts", "ensure_champions", "score", "publish")
    ]
    # A reader waits behind a writer of another process too (DuckDB: one writer or readers).
    writers += [dag.get_task("segment_report"), dag.get_task("monitor")]
    writers += [dag.get_task("housekeeping")]  # retention deletes rows
    writers += [dag.get_task("forget_requested")]  # erasure deletes rows, rebuilds the file
    warehouse_tasks = [ingest, *gates, *writers, *dbt_tasks]
    assert {t.pool for t in warehouse_tasks} == {WAREHOUSE_POOL}
    # Under Celery, one worker serves the queue of the tasks that open the warehouse.
    assert {t.queue for t in warehouse_tasks} == {WAREHOUSE_QUEUE}
    # Training writes the warehouse only when dbt builds missing snapshots.
    train = dag_bag.dags["train_models"]
    assert train.get_task("build_training_set").pool == WAREHOUSE_POOL
    assert train.get_task("build_training_set").queue == WAREHOUSE_QUEUE
    # Models train on any worker, from the training set's files.
    assert train.get_task("train_model").pool != WAREHOUSE_POOL
    assert train.get_task("train_model").queue != WAREHOUSE_QUEUE


def test_publishing_follows_scoring_and_its_gate(dag_bag: DagBag):
    dag = dag_bag.dags["segment_pipeline"]
    order = ["features_gate", "ensure_champions", "score", "segments_gate", "publish"]
    for upstream, downstream in zip(order, order[1:], strict=False):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    assert {a.name for a in dag.get_task("publish").outlets} == {
        "published.customer_segments",
        "published.audience_members",
        "published.audience_definitions",
        "published.not_applicable_models",
        "published.publications",
        "audience_exports",
    }


def test_the_monitor_follows_the_publication_and_only_its_alert_schedules_training(
    dag_bag: DagBag,
):
    dag = dag_bag.dags["segment_pipeline"]
    assert dag.get_task("monitor").upstream_task_ids == {"segment_report"}
    alert = dag.get_task("drift_alert")
    assert alert.upstream_task_ids == {"monitor"}
    assert [a.name for a in alert.outlets] == ["drift_alert"]
    emitters = {t.task_id for t in dag.tasks for a in t.outlets if a.name == "drift_alert"}
    assert emitters == {"drift_alert"}


def test_erasure_requests_are_honoured_before_anything_is_loaded(
    dag_bag: DagBag, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """forget_requested runs first, so nobody who asked to be forgotten is loaded or published
    that day; with no request waiting it does nothing and says so (None)."""
    dag = dag_bag.dags["segment_pipeline"]
    forget = dag.get_task("forget_requested")
    assert forget.upstream_task_ids == set()
    assert forget.downstream_task_ids == {"ingest"}
    monkeypatch.setenv("SEGFLOW_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SEGFLOW_LANDING_DIR", str(tmp_path / "landing"))
    assert forget.python_callable() is None


def test_housekeeping_ends_the_daily_run_and_returns_what_it_removed(
    dag_bag: DagBag, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """Retention runs once the day's work is done, as of the run's date, in the warehouse
    pool; its report is the task's XCom."""
    import json

    dag = dag_bag.dags["segment_pipeline"]
    housekeeping = dag.get_task("housekeeping")
    assert housekeeping.upstream_task_ids == {"monitor"}
    assert housekeeping.downstream_task_ids == set()
    assert (housekeeping.pool, housekeeping.queue) == (WAREHOUSE_POOL, WAREHOUSE_QUEUE)
    old = tmp_path / "exports" / "2025-01-01"
    for name in ("2025-01-01", "2026-06-29"):
        (tmp_path / "exports" / name).mkdir(parents=True)
    monkeypatch.setenv("SEGFLOW_DATA_DIR", str(tmp_path))
    report = housekeeping.python_callable(as_of="2026-06-30")
    json.dumps(report)  # an XCom
    assert report["today"] == "2026-06-30"
    assert report["kinds"]["exports"]["removed"] == ["exports/2025-01-01"]
    assert not old.exists() and (tmp_path / "exports" / "2026-06-29").exists()


def test_every_table_the_pipeline_produces_is_an_asset(dag_bag: DagBag):
    """The UI's lineage shows each table and file a run produces, from its producing task."""
    produced = {
        asset.name for dag in dag_bag.dags.values() for t in dag.tasks for asset in t.outlets
    }
    assert produced >= {
        *(f"raw.{entity}" for entity in ("customers", "orders", "email_events", "web_events")),
        "raw.reviews",
        "derived.review_sentiment",
        "quality.validation_results",
        "marts.customer_features",
        "marts.training_labels",
        "staging.customer_segments",
        "published.customer_segments",
        "audience_exports",
        "segment_report",
        "monitoring.drift_metrics",
        "monitoring.model_performance",
        "monitoring.drift_alerts",
        "drift_report",
        "drift_alert",
        "training_set",
        *(f"segflow_{kind}" for kind in ("personas", "churn_risk", "customer_value")),
    }


def test_train_models_trains_every_model_weekly_and_on_drift(dag_bag: DagBag):
    from ml.models import catalogue

    dag = dag_bag.dags["train_models"]
    assert dag.params["models"] == list(catalogue.MODEL_KINDS)
    assert dag.get_task("train_model").upstream_task_ids == {
        "build_training_set",
        "models_to_train",
    }
    assert dag.get_task("promote").upstream_task_ids == {"train_model"}
    assert {a.name for a in dag.get_task("promote").outlets} == {
        model.registered_name for model in catalogue.MODELS
    }
    assert "drift_alert" in str(dag.timetable.asset_condition)
    assert dag.timetable.timetable.expression == "0 4 * * 1"


def test_every_dbt_model_is_a_task_and_one_task_tests_them_all(dag_bag: DagBag, dbt_manifest: Path):
    """Staging and intermediate models are ephemeral: Cosmos shows them as empty tasks (the
    lineage stays visible) and only the two marts start dbt; one task then runs every data and
    unit test of the project, before the features gate."""
    import json

    models = {
        node["name"]: node["config"]["materialized"]
        for node in json.loads(dbt_manifest.read_text())["nodes"].values()
        if node["resource_type"] == "model"
    }
    assert {name for name, kind in models.items() if kind != "ephemeral"} == {
        "customer_features",
        "training_labels",
    }
    dag = dag_bag.dags["segment_pipeline"]
    dbt_tasks = {t.task_id: t for t in dag.tasks if t.task_id.startswith("features.")}
    assert set(dbt_tasks) == {f"features.{model}_run" for model in models} | {
        "features.dbt_project_test"
    }
    for model, kind in models.items():
        operator = type(dbt_tasks[f"features.{model}_run"]).__name__
        assert operator == ("EmptyOperator" if kind == "ephemeral" else "DbtRunLocalOperator")
    marts = dag.get_task("features.customer_features_run")
    assert "features.int_customers_rfm_scored_run" in marts.upstream_task_ids
    tests = dag.get_task("features.dbt_project_test")
    assert type(tests).__name__ == "DbtTestLocalOperator"
    assert tests.upstream_task_ids == {
        "features.customer_features_run",
        "features.training_labels_run",
    }
    # dbt receives the same as-of date as the Python tasks (test_every_task_is_given_the_
    # runs_as_of_date_when_it_runs), and segflow's settings when the task runs.
    for task in (marts, tests):
        assert task.vars == {"as_of_date": AS_OF_DATE}
        assert task.env is None and task.interceptors == [apply_run_settings]
    assert dag.get_task("score_review_texts").downstream_task_ids >= {
        "features.stg_shop__customer_versions_run"
    }
    # Gates sit between ingest and dbt, and after dbt's tests.
    assert dag.get_task("raw_gate").upstream_task_ids == {"ingest"}
    assert dag.get_task("raw_gate").downstream_task_ids == {"score_review_texts"}
    assert dag.get_task("features_gate").upstream_task_ids == {"features.dbt_project_test"}


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


def test_a_cold_start_without_a_passing_model_fails_without_retrying(
    dag_bag: DagBag, monkeypatch: pytest.MonkeyPatch
):
    """Training again on the same data fails the same way: the task fails for good
    (AirflowFailException skips the retries) instead of registering more losing versions."""
    from airflow.sdk.exceptions import AirflowFailException

    import ml.models.train
    from ml.errors import NoChampion

    def nothing_beats_its_baseline(settings, as_of):
        raise NoChampion(f"cold start as of {as_of}: no champion after training")

    monkeypatch.setattr(ml.models.train, "ensure_champions", nothing_beats_its_baseline)
    task = dag_bag.dags["segment_pipeline"].get_task("ensure_champions")
    with pytest.raises(AirflowFailException, match="no champion after training"):
        task.python_callable(as_of="2026-06-30")


def test_training_fails_at_once_on_settings_or_data_a_retry_cannot_fix(
    dag_bag: DagBag, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """Bad settings and a training set that cannot be read fail for good (no retries, no more
    versions registered on each try); a model the data cannot support is no failure."""
    from airflow.sdk.exceptions import AirflowFailException

    dag = dag_bag.dags["train_models"]
    monkeypatch.setenv("SEGFLOW_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SEGFLOW_SNAPSHOT_SPACING_DAYS", "10")  # shorter than the label horizon
    with pytest.raises(AirflowFailException, match="SEGFLOW_SNAPSHOT_SPACING_DAYS=10"):
        dag.get_task("build_training_set").python_callable(as_of="2026-06-30")
    with pytest.raises(AirflowFailException, match="holds no training set"):
        dag.get_task("train_model").python_callable(
            kind="churn_risk", training_set_dir=str(tmp_path / "missing")
        )
    not_applicable = {"kind": "engagement_propensity", "version": None, "not_applicable": "no"}
    assert dag.get_task("promote").python_callable(trained=not_applicable) == {
        "kind": "engagement_propensity",
        "status": "not_applicable",
        "reason": "no",
    }


def test_refresh_triggers_runs_on_landing_files_through_the_gates_before_the_pool_queue(
    dag_bag: DagBag,
):
    from ml.orchestration.landing_watch import LandingFilesTrigger

    dag = dag_bag.dags["refresh_triggers"]
    (asset,) = dag.timetable.asset_condition.objects
    (watcher,) = asset.watchers
    assert isinstance(watcher.trigger, LandingFilesTrigger)
    # No setting is fixed when the DAG is parsed: the triggerer's decide where it looks.
    assert watcher.trigger.serialize()[1] == {}
    order = ["forget_requested", "ingest", "raw_gate", "evaluate", "triggers_gate", "publish"]
    for upstream, task_id in zip(order, order[1:], strict=False):
        assert upstream in dag.get_task(task_id).upstream_task_ids, task_id
    for task in dag.tasks:
        assert (task.pool, task.queue) == (WAREHOUSE_POOL, WAREHOUSE_QUEUE), task.task_id
        # Ahead of the daily and training runs' tasks when they wait for the slot.
        assert (task.priority_weight, str(task.weight_rule)) == (100, "absolute"), task.task_id
    # A daily task's weight is the sum of its own and its downstream tasks' weights (1 each).
    daily = dag_bag.dags["segment_pipeline"]
    assert {t.priority_weight for t in daily.tasks} == {1} and len(daily.tasks) < 100


def rendered_as_of(dag, **context) -> dict[str, str]:
    """The as-of date each task of `dag` is given, rendered as when it runs (the DAG's macros,
    the run's context), by task id; tasks without one are left out."""
    env = dag.get_template_env()
    templates = {}
    for task in dag.tasks:
        arguments = [a for a in getattr(task, "op_args", ()) if isinstance(a, str)]
        arguments += [task.vars["as_of_date"]] if getattr(task, "vars", None) else []
        if arguments:
            (templates[task.task_id],) = arguments
    return {task_id: env.from_string(t).render(context) for task_id, t in templates.items()}


def test_every_task_is_given_the_runs_as_of_date_when_it_runs(dag_bag: DagBag):
    """One templated argument per task, dbt's var included: the `as_of_date` param, else the
    day of the logical date; train_models follows a drift alert's date too."""
    import datetime as dt
    from types import SimpleNamespace

    daily = dag_bag.dags["segment_pipeline"]
    run = {
        "logical_date": dt.datetime(2026, 6, 30, tzinfo=dt.UTC),
        "data_interval_start": dt.datetime(2026, 6, 29, 2, tzinfo=dt.UTC),
    }
    given = rendered_as_of(daily, params={"as_of_date": None}, **run)
    assert set(given) == {
        task.task_id
        for task in daily.tasks
        if task.task_id not in ("forget_requested", "drift_alert")
        and type(task).__name__ != "EmptyOperator"
    }
    assert set(given.values()) == {"2026-06-30"}
    given = rendered_as_of(daily, params={"as_of_date": "2026-06-15"}, **run)
    assert set(given.values()) == {"2026-06-15"}
    with pytest.raises(AsOfDateError, match="'30.06.2026' is not a date"):
        rendered_as_of(daily, params={"as_of_date": "30.06.2026"}, **run)

    training = dag_bag.dags["train_models"]
    alert = SimpleNamespace(extra={"as_of_date": "2026-06-20", "models": [], "reasons": []})
    given = rendered_as_of(
        training,
        params={"as_of_date": None},
        triggering_asset_events={DRIFT_ALERT: [alert]},
        **run,
    )
    assert given == {"build_training_set": "2026-06-20"}


def test_parsing_the_dags_reads_no_setting(dbt_manifest: Path, monkeypatch: pytest.MonkeyPatch):
    """Settings are read when a task runs: one that cannot be used fails the tasks that use it,
    not the parsing of every DAG (and a change needs no new parse)."""
    monkeypatch.setenv("SEGFLOW_LABEL_HORIZON_DAYS", "thirty")
    monkeypatch.setenv("SEGFLOW_LANDING_POLL_SECONDS", "-1")
    bag = DagBag(dag_folder=str(DAGS_DIR), known_pools={WAREHOUSE_POOL, "default_pool"})
    assert bag.import_errors == {}
    assert set(bag.dags) == {path.stem for path in DAG_FILES}
