"""A writing step killed mid-way and run again leaves no partial state (the task retry case).

Each step runs in a child process that SIGKILLs itself at a fixed point (right after the Nth
call of one of its functions returns): no `finally`, no rollback, no close, as when the OS kills
a task. What a reader sees in between is checked where the design promises atomicity, then the
step runs again normally and the result must equal a clean, uninterrupted run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from ml.config import Settings, load_settings
from tests.conftest import PROJECT_DIR, TRAINED_AS_OF
from tests.segments.test_publish import scored_frame, stage
from tests.segments.test_publish import staged as staged  # noqa: F401  (the fixture: staged segments)

KILLED_CHILD = """
import datetime as dt, importlib, json, os, signal, sys

from ml.config import load_settings

target, nth, args = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
module_name, _, attribute = target.partition(":")
owner = importlib.import_module(module_name)
*path, name = attribute.split(".")
for part in path:
    owner = getattr(owner, part)
original, calls = getattr(owner, name), []


def kill_after_nth_call(*call_args, **call_kwargs):
    result = original(*call_args, **call_kwargs)
    calls.append(name)
    if len(calls) == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    return result


setattr(owner, name, kill_after_nth_call)
settings, as_of = load_settings(), dt.date.fromisoformat(args["as_of"])
if args["step"] == "ingest":
    import ml.ingest.loader

    ml.ingest.loader.BATCH_BYTES = args["batch_bytes"]
    ml.ingest.loader.ingest_landing(settings, as_of, dt.datetime.fromisoformat(args["loaded_at"]))
elif args["step"] == "score":
    from ml.segments.score import score_customers

    score_customers(settings, as_of)
elif args["step"] == "publish":
    from ml.segments.publish import publish_segments

    publish_segments(settings, as_of, run_id=args["run_id"], gate_passed=True)
elif args["step"] == "training_set":
    from ml.models.training_sets import build_training_set

    build_training_set(settings, as_of)
sys.exit(3)  # the kill point was never reached
"""


def run_and_kill(settings: Settings, target: str, nth: int, **step) -> None:
    """Run a step in a child process that kills itself after the `nth` call of `target`
    (`module:function` or `module:Class.method`) returns."""
    env = {
        **os.environ,
        "SEGFLOW_DATA_DIR": str(settings.data_dir),
        "SEGFLOW_LANDING_DIR": str(settings.landing_dir),
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "SEGFLOW_SCORING_CHUNK_ROWS": str(settings.publishing.scoring_chunk_rows),
        "SEGFLOW_TRAINING_SNAPSHOTS": str(settings.models.training_snapshots),
        "SEGFLOW_AUDIENCES_PATH": str(settings.publishing.audiences_path),
    }
    step = {key: str(value) if isinstance(value, dt.date) else value for key, value in step.items()}
    child = subprocess.run(
        [sys.executable, "-c", KILLED_CHILD, target, str(nth), json.dumps(step)],
        env=env,
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]


def query(settings: Settings, sql: str) -> list[tuple]:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(sql).fetchall()


def settings_for(root: Path, **env: str) -> Settings:
    return load_settings({"SEGFLOW_DATA_DIR": str(root), **env})


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# --------------------------------------------------------------------------- ingest

INGEST_TABLES = (
    "raw.customers",
    "raw.orders",
    "raw.email_events",
    "raw.web_events",
    "raw.reviews",
    "raw.loaded_files",
    "quarantine.violations",
)
LOADED_AT = dt.datetime(2026, 7, 1, 3, 0)


def ingested(settings: Settings) -> dict[str, list[tuple]]:
    return {
        table: query(settings, f"SELECT * FROM {table} ORDER BY ALL") for table in INGEST_TABLES
    }


def test_ingest_killed_between_batches_keeps_whole_files_and_the_rerun_completes_it(
    landing_copy: Path, settings: Settings, tmp_path: Path
):
    from ml.ingest.loader import ingest_landing

    clean = settings_for(tmp_path / "clean", SEGFLOW_LANDING_DIR=str(landing_copy))
    ingest_landing(clean, TRAINED_AS_OF, LOADED_AT)

    # Batches of 64 KiB (a few files each): killed inside the second orders batch's
    # transaction, after its rows were inserted, with customers (3 batches) and one orders
    # batch committed.
    run_and_kill(
        settings,
        "ml.ingest.loader:write_checked",
        5,
        step="ingest",
        as_of=TRAINED_AS_OF,
        loaded_at=LOADED_AT.isoformat(),
        batch_bytes=64 * 1024,
    )
    loaded = dict(query(settings, "SELECT entity, count(*) FROM raw.loaded_files GROUP BY entity"))
    all_order_files = len(list((landing_copy / "orders").rglob("*.parquet")))
    assert 0 < loaded["orders"] < all_order_files and set(loaded) == {"customers", "orders"}
    # Every row in raw and quarantine belongs to a file recorded as loaded, and every loaded
    # file has all its rows: nothing of the batch that was being written is visible.
    for entity in ("customers", "orders"):
        assert (
            query(
                settings,
                f"""SELECT f.source_file, f.rows_loaded, count(r._source_file)
                FROM raw.loaded_files f
                FULL JOIN raw.{entity} r ON r._source_file = f.source_file
                WHERE coalesce(f.entity, '{entity}') = '{entity}'
                GROUP BY ALL HAVING f.rows_loaded IS DISTINCT FROM count(r._source_file)""",
            )
            == []
        )
    assert query(
        settings,
        """SELECT count(*) FROM quarantine.violations q
           ANTI JOIN raw.loaded_files f USING (entity, source_file)""",
    ) == [(0,)]

    ingest_landing(settings, TRAINED_AS_OF, LOADED_AT)
    assert ingested(settings) == ingested(clean)


# --------------------------------------------------------------------------- publish

AS_OF = dt.date(2026, 6, 30)


def publication(settings: Settings) -> tuple[dict[str, list[tuple]], dict[str, bytes]]:
    """What a reader of the date's publication sees: published rows and export files."""
    rows = {
        table: query(
            settings, f"SELECT * FROM published.{table} WHERE as_of_date = '{AS_OF}' ORDER BY ALL"
        )
        for table in ("customer_segments", "audience_members", "audience_definitions")
    }
    rows["publications"] = query(
        settings,
        "SELECT as_of_date, run_id, rows, emailable, model_versions, audiences "
        "FROM published.publications ORDER BY published_at",
    )
    return rows, files_under(settings.exports_dir / AS_OF.isoformat())


@pytest.mark.parametrize(
    ("kill_after", "exports_seen"),
    [
        # New exports built beside the old ones, nothing swapped yet.
        ("ml.segments.publish:_write_exports", "previous"),
        # The date's rows replaced inside the transaction, which is still open.
        ("ml.segments.publish:_replace_published_rows", "previous"),
        # The previous export folder moved aside, the new one not yet in place: the one moment
        # the date has no export folder (between two renames).
        ("pathlib:Path.rename", "none"),
        # Exports swapped, commit not reached: the window ml/segments/publish.py documents; the retry
        # closes it.
        ("ml.segments.publish:_swap_exports", "new"),
    ],
)
def test_publish_killed_mid_way_keeps_the_previous_publication_and_the_retry_completes_it(
    staged: Settings, tmp_path: Path, kill_after: str, exports_seen: str
):
    from ml.segments.publish import publish_segments

    # The date was published from one scoring; a new scoring (other rows) is staged for it.
    publish_segments(staged, AS_OF, run_id="first", gate_passed=True)
    stage(staged, scored_frame(seed=2))
    previous_rows, previous_files = publication(staged)
    clean = settings_for(tmp_path / "clean")
    shutil.copytree(staged.data_dir, clean.data_dir)
    publish_segments(clean, AS_OF, run_id="retried", gate_passed=True)
    new_rows, new_files = publication(clean)
    assert new_rows["customer_segments"] != previous_rows["customer_segments"]

    run_and_kill(staged, kill_after, 1, step="publish", as_of=AS_OF, run_id="retried")
    # Published rows change only with the commit; the date's export folder is whole.
    rows, files = publication(staged)
    assert rows == previous_rows
    assert files == {"previous": previous_files, "new": new_files, "none": {}}[exports_seen]

    # The retry (same run id, as Airflow retries) publishes what an uninterrupted run does and
    # clears what the killed run left behind.
    publish_segments(staged, AS_OF, run_id="retried", gate_passed=True)
    assert publication(staged) == (new_rows, new_files)
    assert [p.name for p in staged.exports_dir.iterdir()] == [AS_OF.isoformat()]


# --------------------------------------------------------------------------- score and training


@pytest.fixture
def trained_copy(trained_settings: Settings, tmp_path: Path) -> Settings:
    """A copy of the trained warehouse, training set and MLflow store (the shared fixture stays
    untouched), scoring 300 customers per chunk (four chunks)."""
    root = tmp_path / "trained"
    shutil.copytree(trained_settings.data_dir, root)
    return settings_for(
        root,
        SEGFLOW_LANDING_DIR=str(trained_settings.landing_dir),
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
        SEGFLOW_TRAINING_SNAPSHOTS="2",
        SEGFLOW_SCORING_CHUNK_ROWS="300",
    )


def staged_scores(settings: Settings) -> dict[str, list[tuple]]:
    return {
        table: query(
            settings,
            f"SELECT * FROM staging.{table} WHERE as_of_date = '{TRAINED_AS_OF}' ORDER BY ALL",
        )
        for table in ("customer_segments", "audience_members", "audience_definitions")
    }


@pytest.mark.slow
def test_scoring_killed_mid_way_leaves_the_staged_rows_as_they_were(trained_copy: Settings):
    from ml.segments.score import score_customers
    from ml.warehouse.connection import connect

    score_customers(trained_copy, TRAINED_AS_OF)
    clean = staged_scores(trained_copy)
    # Make the staged rows of the date recognisably those of an earlier scoring.
    with connect(trained_copy) as con:
        con.execute("UPDATE staging.customer_segments SET segment = 'earlier scoring'")
        con.execute("DELETE FROM staging.audience_members WHERE is_holdout")
    earlier = staged_scores(trained_copy)

    # Inside the transaction that replaces the date's staged rows, after every chunk was scored
    # and the segments and members were inserted (chunk scores before it are in a temp table).
    run_and_kill(
        trained_copy, "ml.segments.score:audience_definitions", 1, step="score", as_of=TRAINED_AS_OF
    )
    assert staged_scores(trained_copy) == earlier

    score_customers(trained_copy, TRAINED_AS_OF)
    assert staged_scores(trained_copy) == clean


def training_set_seen(directory: Path) -> tuple[list[str], dict, dict[str, pd.DataFrame]]:
    """A training set folder as a reader sees it: its files, manifest and Parquet contents."""
    names = sorted(p.name for p in directory.iterdir())
    manifest = json.loads((directory / "manifest.json").read_text())
    frames = {name: pd.read_parquet(directory / name) for name in names if name != "manifest.json"}
    return names, manifest, frames


def assert_same_set(seen: tuple, expected: tuple) -> None:
    (names, manifest, frames), (expected_names, expected_manifest, expected_frames) = seen, expected
    assert (names, manifest) == (expected_names, expected_manifest)
    for name, frame in frames.items():
        pd.testing.assert_frame_equal(frame, expected_frames[name])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kill_after", "set_seen"),
    [
        # Every snapshot exported to the temporary folder, the manifest not yet written.
        ("ml.models.training_sets:_export", "previous"),
        # The first file deleted while a set is removed: whatever is being removed, the folder
        # readers use holds a whole set.
        ("os:unlink", "new"),
    ],
)
def test_a_training_set_killed_mid_way_is_never_half_a_set(
    trained_copy: Settings, tmp_path: Path, kill_after: str, set_seen: str
):
    from ml.models.training_sets import build_training_set, training_set_dir

    final = training_set_dir(trained_copy, TRAINED_AS_OF)
    previous = training_set_seen(final)  # the set the fixture's training built
    clean = settings_for(tmp_path / "clean", SEGFLOW_TRAINING_SNAPSHOTS="2")
    shutil.copytree(trained_copy.data_dir, clean.data_dir)
    new = training_set_seen(build_training_set(clean, TRAINED_AS_OF))
    # The fixture built the snapshots with dbt, a rebuild finds them built.
    assert previous[1]["built_with_dbt"] and not new[1]["built_with_dbt"]

    run_and_kill(trained_copy, kill_after, 1, step="training_set", as_of=TRAINED_AS_OF)
    assert_same_set(training_set_seen(final), {"previous": previous, "new": new}[set_seen])

    assert build_training_set(trained_copy, TRAINED_AS_OF) == final
    assert_same_set(training_set_seen(final), new)
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]
