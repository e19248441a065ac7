"""Retention (ml/privacy/retention.py): for each kind, what is older than its limit goes, what is newer
stays, and what must stay (the version in force, the newest export, an aliased model's training
set, a bad file that still blocks) stays whatever its age. Real DuckDB, real files."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest

from ml.config import Settings
from ml.privacy.retention import apply_retention
from ml.warehouse.connection import connect
from tests.conftest import TRAINED_AS_OF, copy_of_trained

TODAY = dt.date(2026, 6, 30)
"""With the default limits the cutoffs are: raw history 2023-07-01, published 2025-05-26,
quarantine and reports 2026-04-01, exports 2026-05-31, trigger exports 2026-06-16, training
sets 2026-01-01."""
OLD_DATE, NEW_DATE = dt.date(2025, 1, 1), dt.date(2026, 6, 29)


def _customer_version(con, customer_id: str, opted_in: bool, at: str, source: str) -> None:
    con.execute(
        """INSERT INTO raw.customer_versions BY NAME
           SELECT ? AS customer_id, ? AS email, TIMESTAMP '2018-01-01' AS signup_at,
                  ? AS email_opt_in, ? AS _source_file, 1 AS _source_row,
                  ?::TIMESTAMP AS _loaded_at, ?::TIMESTAMP AS _version_at""",
        [customer_id, f"{customer_id}@example.com", opted_in, source, at, at],
    )


def _order_version(con, order_id: str, status: str, at: str, source: str) -> None:
    con.execute(
        """INSERT INTO raw.order_versions BY NAME
           SELECT ? AS order_id, 'c1' AS customer_id, TIMESTAMP '2019-12-31' AS ordered_at,
                  10.0 AS amount, ? AS status, ? AS _source_file, 1 AS _source_row,
                  ?::TIMESTAMP AS _loaded_at, ?::TIMESTAMP AS _version_at""",
        [order_id, status, source, at, at],
    )


def _populate_warehouse(settings: Settings) -> None:
    from ml.ingest.raw_tables import ensure_raw_tables
    from ml.warehouse import tables

    with connect(settings) as con:
        ensure_raw_tables(con)
        # c1 opted in, out (2021), in again (2026); c2 has one version since 2019.
        _customer_version(con, "c1", True, "2020-01-01", "customers/a.csv")
        _customer_version(con, "c1", False, "2021-01-01", "customers/b.csv")
        _customer_version(con, "c1", True, "2026-01-01", "customers/c.csv")
        _customer_version(con, "c2", True, "2019-01-01", "customers/0.csv")
        _order_version(con, "o1", "completed", "2020-01-01", "orders/a.csv")
        _order_version(con, "o1", "refunded", "2020-02-01", "orders/b.csv")

        tables.ensure(con, *tables.PUBLISHED_SEGMENTS, *tables.STAGED_SEGMENTS)
        for schema in ("published", "staging"):
            for day in (OLD_DATE, NEW_DATE):
                con.execute(
                    f"INSERT INTO {schema}.customer_segments (customer_id, as_of_date) "
                    "VALUES ('c1', ?), ('c2', ?)",
                    [day, day],
                )
                con.execute(
                    f"INSERT INTO {schema}.audience_members (as_of_date, audience, customer_id, "
                    "is_holdout) VALUES (?, 'winback', 'c1', false)",
                    [day],
                )
                con.execute(
                    f"INSERT INTO {schema}.audience_definitions (as_of_date, audience, description, "
                    "holdout_share, filters) VALUES (?, 'winback', '', 0.1, '{}')",
                    [day],
                )
                con.execute(
                    f"INSERT INTO {schema}.not_applicable_models (as_of_date, model_kind, reason) "
                    "VALUES (?, 'churn_risk', 'x')",
                    [day],
                )
        tables.ensure(con, tables.PUBLICATIONS)
        con.execute(
            """INSERT INTO published.publications (as_of_date, run_id, published_at, rows,
                   emailable, model_versions, audiences, exports_dir)
               VALUES (?, 'r', now(), 2, 2, '{}', '{}', 'x')""",
            [OLD_DATE],
        )
        tables.ensure(con, *tables.TRIGGERS)
        for at in ("2025-01-01 10:00", "2026-06-29 10:00"):
            con.execute(
                """INSERT INTO published.trigger_members
                       (refresh_id, trigger, customer_id, event_at, is_holdout, evaluated_at)
                   VALUES ('r', 'cart_abandoner', 'c1', ?::TIMESTAMP, false, ?::TIMESTAMP)""",
                [at, at],
            )
        con.execute(
            "INSERT INTO published.suppressions (refresh_id, customer_id, reason) "
            "VALUES ('r', 'c2', 'unsubscribed')"
        )
        con.execute("CREATE SCHEMA marts")
        con.execute("CREATE TABLE marts.customer_features (customer_id VARCHAR, as_of_date DATE)")
        con.execute(
            "INSERT INTO marts.customer_features VALUES ('c1', ?), ('c1', ?)", [OLD_DATE, NEW_DATE]
        )
        # Labels only of old dates: the newest of them stays.
        con.execute("CREATE TABLE marts.training_labels (customer_id VARCHAR, as_of_date DATE)")
        con.execute(
            "INSERT INTO marts.training_labels VALUES ('c1', DATE '2024-12-01'), ('c1', ?)",
            [OLD_DATE],
        )

        for loaded_at in ("2026-01-01", "2026-06-01"):
            con.execute(
                """INSERT INTO quarantine.violations
                       (entity, source_file, source_row, column_name, rule, value, action,
                        record, loaded_at)
                   VALUES ('orders', 'orders/x.csv', 1, 'amount', 'must be >= 0', '-5',
                           'rejected', '{"email": "c9@example.com"}', ?::TIMESTAMP)""",
                [loaded_at],
            )
        con.executemany(
            """INSERT INTO quarantine.files
                   (entity, source_file, reason, found_at, accepted_at, accepted_note)
               VALUES (?, ?, 'unreadable', ?, ?, ?)""",
            [
                ("orders", "orders/gone.csv", "2026-01-01", "2026-01-02", "ok"),
                ("orders", "orders/still_there.csv", "2026-01-01", "2026-01-02", "ok"),
                ("orders", "orders/open.csv", "2026-01-01", None, None),
                ("orders", "orders/accepted_lately.csv", "2026-01-01", "2026-06-01", "ok"),
            ],
        )
        con.execute(
            """INSERT INTO quarantine.held_rows
                   (entity, source_file, source_row, reason, record, held_since, last_tried_at)
               VALUES ('orders', 'orders/y.csv', 1, 'customer not delivered yet', '{}',
                       '2026-01-01', '2026-01-01')"""
        )
        con.execute("CREATE SCHEMA quality")
        con.execute("CREATE TABLE quality.validation_results (run_date DATE, suite VARCHAR)")
        con.execute(
            "INSERT INTO quality.validation_results VALUES (DATE '2026-01-01', 'raw_orders'), (?, 'raw_orders')",
            [NEW_DATE],
        )


def _populate_files(settings: Settings) -> None:
    (settings.landing_dir / "orders").mkdir(parents=True)
    (settings.landing_dir / "orders" / "still_there.csv").write_text("not,a,good,file\n")
    exports = settings.exports_dir
    for name in ("2026-01-01", "2026-05-30", "2026-06-29"):
        (exports / name).mkdir(parents=True)
        (exports / name / "winback.csv").write_text("customer_id,email\nc1,c1@example.com\n")
    (exports / ".2026-02-01.0f1e.expired").mkdir()  # left by an interrupted retention
    # Both trigger exports are older than 14 days: the newer one is the newest.
    for name in ("20260101T100000Z", "20260610T120000Z"):
        (exports / "triggers" / name).mkdir(parents=True)
        (exports / "triggers" / name / "cart_abandoner.csv").write_text("customer_id\nc1\n")
    for name in ("2025-06-30", "2026-06-01", "2026-06-01.previous"):
        (settings.data_dir / "training" / name).mkdir(parents=True)
    reports = settings.reports_dir
    for folder in ("segments", "drift"):
        (reports / folder).mkdir(parents=True)
        for day in ("2026-01-01", "2026-06-29"):
            (reports / folder / f"{day}.html").write_text("<html></html>")
    validations = reports / "data_docs" / "validations"
    for suite, run_time in (
        ("raw_customers", "20260101T020304.123456Z"),
        ("raw_orders", "20260629T020304.123456Z"),
    ):
        page = validations / suite / "__none__" / run_time / f"segflow-{suite}.html"
        page.parent.mkdir(parents=True)
        page.write_text("<html>examples: c9@example.com</html>")
    (reports / "data_docs" / "index.html").write_text("<html></html>")
    lines = [
        json.dumps({"recorded_at": "2026-01-01T03:00:00+00:00", "task_id": "raw_gate"}),
        json.dumps({"recorded_at": "2026-06-29T03:00:00+00:00", "task_id": "publish"}),
        "not json: kept",
    ]
    (reports / "failures.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def populated(settings: Settings) -> Settings:
    """A warehouse and data folder with something older and something newer than each limit."""
    _populate_warehouse(settings)
    _populate_files(settings)
    return settings


def _rows(settings: Settings, sql: str) -> list[tuple]:
    with connect(settings, read_only=True) as con:
        return con.execute(sql).fetchall()


def _files(settings: Settings) -> list[str]:
    return sorted(str(p.relative_to(settings.data_dir)) for p in settings.data_dir.rglob("*"))


def test_superseded_versions_go_once_their_validity_ended_the_version_in_force_stays(
    populated: Settings,
):
    consent_before = _rows(populated, "SELECT * FROM raw.consent_log ORDER BY ALL")
    report = apply_retention(populated, TODAY)

    assert report.kinds["raw_history"].rows == {
        "raw.customer_versions": 1,
        "raw.order_versions": 1,
    }
    # c1's first version ended in 2021 (before 2023-07-01): gone. Its second ended in 2026,
    # its third is in force; c2's only version and o1's refunded one are in force since long.
    assert _rows(
        populated,
        "SELECT customer_id, _version_at::DATE::VARCHAR FROM raw.customer_versions ORDER BY ALL",
    ) == [("c1", "2021-01-01"), ("c1", "2026-01-01"), ("c2", "2019-01-01")]
    assert _rows(populated, "SELECT order_id, status FROM raw.order_versions") == [
        ("o1", "refunded")
    ]
    assert _rows(populated, "SELECT count(*) FROM raw.customers") == [(2,)]
    # The consent log is derived from the versions: the 2020 opt-in went with its version,
    # and c1's oldest version kept counts since always.
    consent_after = _rows(populated, "SELECT * FROM raw.consent_log ORDER BY ALL")
    assert len(consent_before) == 4 and len(consent_after) == 3
    assert ("c1", None, "opted_out", "customers/b.csv", 1) in consent_after


def test_published_and_feature_rows_of_old_dates_go_the_newest_date_and_the_log_stay(
    populated: Settings,
):
    report = apply_retention(populated, TODAY)

    rows = report.kinds["published_history"].rows
    for schema in ("published", "staging"):
        assert rows[f"{schema}.customer_segments"] == 2
        for table in ("audience_members", "audience_definitions", "not_applicable_models"):
            assert rows[f"{schema}.{table}"] == 1
            assert _rows(populated, f"SELECT DISTINCT as_of_date FROM {schema}.{table}") == [
                (NEW_DATE,)
            ]
    assert rows["marts.customer_features"] == 1
    assert rows["published.trigger_members"] == 1
    assert _rows(populated, "SELECT evaluated_at::DATE FROM published.trigger_members") == [
        (NEW_DATE,)
    ]
    # Only old labels: the newest date stays, whatever its age.
    assert rows["marts.training_labels"] == 1
    assert _rows(populated, "SELECT as_of_date FROM marts.training_labels") == [(OLD_DATE,)]
    # The publication log and the suppression list stay whole.
    assert _rows(populated, "SELECT as_of_date FROM published.publications") == [(OLD_DATE,)]
    assert _rows(populated, "SELECT customer_id FROM published.suppressions") == [("c2",)]


def test_old_rejections_and_accepted_bad_files_go_an_open_bad_file_stays(populated: Settings):
    report = apply_retention(populated, TODAY)

    kind = report.kinds["quarantine"]
    assert kind.rows == {"quarantine.violations": 1, "quarantine.files": 1}
    assert _rows(populated, "SELECT loaded_at::DATE::VARCHAR FROM quarantine.violations") == [
        ("2026-06-01",)
    ]
    # Accepted and gone from the landing folder: removed. Still open (it blocks the daily run),
    # accepted but still in the landing folder (removing the entry would block again), or
    # accepted lately: kept.
    assert _rows(populated, "SELECT source_file FROM quarantine.files ORDER BY ALL") == [
        ("orders/accepted_lately.csv",),
        ("orders/open.csv",),
        ("orders/still_there.csv",),
    ]
    assert kind.kept == ["accepted bad file orders/still_there.csv (still in the landing folder)"]
    # Held rows expire by SEGFLOW_HOLD_DAYS into violations, not here.
    assert _rows(populated, "SELECT count(*) FROM quarantine.held_rows") == [(1,)]


def test_old_export_folders_go_the_newest_of_each_stays(populated: Settings):
    report = apply_retention(populated, TODAY)

    assert report.kinds["exports"].removed == ["exports/2026-01-01", "exports/2026-05-30"]
    assert report.kinds["trigger_exports"].removed == ["exports/triggers/20260101T100000Z"]
    assert report.kinds["trigger_exports"].kept == [
        "exports/triggers/20260610T120000Z (the newest trigger export)"
    ]
    exports = populated.exports_dir
    assert sorted(p.name for p in exports.iterdir()) == ["2026-06-29", "triggers"]
    assert [p.name for p in (exports / "triggers").iterdir()] == ["20260610T120000Z"]


def test_an_interrupted_removal_leaves_no_half_folder_and_the_next_run_finishes_it(
    populated: Settings, monkeypatch: pytest.MonkeyPatch
):
    import ml.privacy.retention

    rmtree = shutil.rmtree

    def killed_at_the_first_export(path, *args, **kwargs):
        if ".2026-01-01." in str(path):
            raise KeyboardInterrupt(f"killed while deleting {path}")
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(ml.privacy.retention.shutil, "rmtree", killed_at_the_first_export)
    with pytest.raises(KeyboardInterrupt):
        apply_retention(populated, TODAY)
    monkeypatch.undo()
    # The folder being deleted was renamed aside first: under its own name it is whole or gone.
    names = sorted(p.name for p in populated.exports_dir.iterdir())
    assert "2026-01-01" not in names
    assert any(name.startswith(".2026-01-01.") and name.endswith(".expired") for name in names)

    apply_retention(populated, TODAY)
    assert sorted(p.name for p in populated.exports_dir.iterdir()) == ["2026-06-29", "triggers"]


def test_old_training_sets_go_without_a_registry(populated: Settings):
    report = apply_retention(populated, TODAY)

    assert report.kinds["training_sets"].removed == ["training/2025-06-30"]
    assert sorted(p.name for p in (populated.data_dir / "training").iterdir()) == [
        "2026-06-01",
        "2026-06-01.previous",  # not a training set's name: training_sets.py's own
    ]


def test_the_training_set_of_a_model_version_with_an_alias_stays(
    trained_settings: Settings, tmp_path: Path
):
    settings = copy_of_trained(trained_settings, tmp_path)
    shutil.copytree(
        trained_settings.data_dir / "training" / TRAINED_AS_OF.isoformat(),
        settings.data_dir / "training" / TRAINED_AS_OF.isoformat(),
    )
    (settings.data_dir / "training" / "2025-06-30").mkdir()
    # Half a year after training: both sets are older than 180 days.
    today = TRAINED_AS_OF + dt.timedelta(days=200)

    report = apply_retention(settings, today)

    kind = report.kinds["training_sets"]
    assert kind.removed == ["training/2025-06-30"]
    (kept,) = kind.kept
    assert kept.startswith(f"training/{TRAINED_AS_OF} (trained segflow_")
    assert "@challenger/champion" in kept
    assert (settings.data_dir / "training" / TRAINED_AS_OF.isoformat() / "manifest.json").exists()
    # The trained shop's history is younger than every other limit: nothing else goes.
    assert report.rows_removed == 0
    print(f"apply_retention on the trained shop's warehouse: {report.seconds:.2f} s")


def test_old_reports_validation_pages_results_and_failure_lines_go(populated: Settings):
    report = apply_retention(populated, TODAY)

    kind = report.kinds["reports"]
    assert kind.removed == [
        "reports/segments/2026-01-01.html",
        "reports/drift/2026-01-01.html",
        "reports/data_docs/validations/raw_customers/__none__/20260101T020304.123456Z",
    ]
    assert kind.rows == {"quality.validation_results": 1}
    assert kind.lines == {"reports/failures.jsonl": 1}
    reports = populated.reports_dir
    assert sorted(p.name for p in (reports / "segments").iterdir()) == ["2026-06-29.html"]
    assert sorted(p.name for p in (reports / "drift").iterdir()) == ["2026-06-29.html"]
    # The emptied suite folder goes too; the index and the newer page stay.
    assert [p.name for p in (reports / "data_docs" / "validations").iterdir()] == ["raw_orders"]
    assert (reports / "data_docs" / "index.html").exists()
    assert (reports / "failures.jsonl").read_text().splitlines() == [
        json.dumps({"recorded_at": "2026-06-29T03:00:00+00:00", "task_id": "publish"}),
        "not json: kept",
    ]
    assert _rows(populated, "SELECT run_date FROM quality.validation_results") == [(NEW_DATE,)]


def test_a_dry_run_removes_nothing_and_counts_what_a_run_removes(populated: Settings):
    tables = """SELECT table_schema || '.' || table_name FROM information_schema.tables
                WHERE table_type = 'BASE TABLE' ORDER BY 1"""

    def contents() -> tuple:
        with connect(populated, read_only=True) as con:
            counts = {
                table: con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for (table,) in con.execute(tables).fetchall()
            }
        failures = (populated.reports_dir / "failures.jsonl").read_text()
        return counts, _files(populated), failures

    before = contents()
    dry = apply_retention(populated, TODAY, dry_run=True)
    assert contents() == before
    assert dry.dry_run and dry.rows_removed > 0 and dry.paths_removed > 0
    assert "dry run, nothing removed" in dry.summary()

    real = apply_retention(populated, TODAY)
    assert contents() != before
    for name, kind in dry.kinds.items():
        assert (kind.rows, kind.removed, kind.lines, kind.kept) == (
            real.kinds[name].rows,
            real.kinds[name].removed,
            real.kinds[name].lines,
            real.kinds[name].kept,
        ), name
    # Nothing older is left: a second run removes nothing.
    again = apply_retention(populated, TODAY)
    assert again.rows_removed == 0 and again.paths_removed == 0


def test_the_report_is_a_json_dict_and_a_short_summary(populated: Settings):
    report = apply_retention(populated, TODAY)
    as_dict = report.as_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["today"] == "2026-06-30"
    assert as_dict["kinds"]["exports"] == {
        "setting": "SEGFLOW_RETENTION_EXPORTS_DAYS",
        "days": 30,
        "cutoff": "2026-05-31",
        "rows": {},
        "removed": ["exports/2026-01-01", "exports/2026-05-30"],
        "lines": {},
        "kept": [],
    }
    summary = report.summary()
    assert summary.splitlines()[0].startswith("retention as of 2026-06-30: removed ")
    assert (
        "exports (SEGFLOW_RETENTION_EXPORTS_DAYS=30, before 2026-05-31): "
        "exports/2026-01-01, exports/2026-05-30"
    ) in summary


def test_the_limits_come_from_the_settings(populated: Settings):
    from ml.config import load_settings

    settings = load_settings(
        {
            "SEGFLOW_DATA_DIR": str(populated.data_dir),
            "SEGFLOW_LANDING_DIR": str(populated.landing_dir),
            "SEGFLOW_RETENTION_EXPORTS_DAYS": "365",
            "SEGFLOW_RETENTION_RAW_HISTORY_DAYS": "100",
        }
    )
    report = apply_retention(settings, TODAY)
    assert report.kinds["exports"].removed == []
    # c1's second version ended on 2026-01-01, more than 100 days before TODAY.
    assert report.kinds["raw_history"].rows["raw.customer_versions"] == 2


def test_housekeeping_command_prints_the_report(
    populated: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    from ml.cli import main

    monkeypatch.setenv("SEGFLOW_DATA_DIR", str(populated.data_dir))
    monkeypatch.setenv("SEGFLOW_LANDING_DIR", str(populated.landing_dir))
    assert main(["housekeeping", "--today", "2026-06-30", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("retention as of 2026-06-30: would remove (dry run, nothing removed)")
    assert (populated.exports_dir / "2026-01-01").exists()
    assert main(["housekeeping", "--today", "2026-06-30"]) == 0
    assert "retention as of 2026-06-30: removed" in capsys.readouterr().out
    assert not (populated.exports_dir / "2026-01-01").exists()
