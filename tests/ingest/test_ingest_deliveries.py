"""Data as shops really deliver it: versions of customers and orders, held rows, any key type,
the formats people export, and the files a loader must not take."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import json
import os

import pandas as pd
import pytest

import ml.ingest.loader
from ml.config import Settings
from tests.ingest.test_ingest import (
    CUSTOMERS,
    LOAD_TIME,
    ORDERS,
    UNSUBSCRIBE,
    bad_files,
    ingest,
    minimal_landing,
    query,
    violations,
    write_csv,
)


def counts_add_up(settings: Settings) -> None:
    """Every delivered row is loaded, unchanged, held or rejected: nothing is lost."""
    for entity, rows, accounted in query(
        settings,
        """SELECT entity, sum(rows_in_file),
                  sum(rows_loaded + rows_unchanged + rows_held + rows_rejected)
           FROM raw.loaded_files GROUP BY entity""",
    ):
        assert rows == accounted, entity
    held = query(settings, "SELECT entity, count(*) FROM quarantine.held_rows GROUP BY entity")
    recorded = query(
        settings,
        "SELECT entity, sum(rows_held) FROM raw.loaded_files GROUP BY entity HAVING sum(rows_held) > 0",
    )
    assert sorted(held) == sorted(recorded)


# --------------------------------------------------------------------------- versions


def test_a_customer_delivered_again_is_a_new_version_only_when_a_value_differs(
    settings: Settings,
):
    landing = settings.landing_dir
    write_csv(landing, "customers/date=2026-06-01/snapshot.csv", CUSTOMERS)
    write_csv(landing, "orders/date=2026-06-02/part-0.csv", ORDERS)
    ingest(settings)
    # The next day's full snapshot: c1 has a new address, c2 is unchanged.
    changed = [dict(CUSTOMERS[0], email="new@example.com"), CUSTOMERS[1]]
    write_csv(landing, "customers/date=2026-06-02/snapshot.csv", changed)
    report = ingest(settings).entities["customers"]
    assert (report.rows_loaded, report.rows_unchanged) == (1, 1)
    opted_out = [dict(CUSTOMERS[0], email="new@example.com", email_opt_in="no"), CUSTOMERS[1]]
    write_csv(landing, "customers/date=2026-06-03/snapshot.csv", opted_out)
    ingest(settings)
    assert query(
        settings,
        "SELECT customer_id, email, email_opt_in, _version_at FROM raw.customer_versions "
        "ORDER BY customer_id, _version_at",
    ) == [
        ("c1", "one@example.com", None, dt.datetime(2026, 6, 1)),
        ("c1", "new@example.com", None, dt.datetime(2026, 6, 2)),
        ("c1", "new@example.com", False, dt.datetime(2026, 6, 3)),
        ("c2", "two@example.com", None, dt.datetime(2026, 6, 1)),
    ]
    # raw.customers is the latest version of each.
    assert query(
        settings, "SELECT customer_id, email, email_opt_in FROM raw.customers ORDER BY 1"
    ) == [
        ("c1", "new@example.com", False),
        ("c2", "two@example.com", None),
    ]
    counts_add_up(settings)


def test_updated_at_orders_versions_whatever_the_delivery_order(settings: Settings):
    landing = settings.landing_dir
    newer = dict(CUSTOMERS[0], email="newer@example.com", updated_at="2026-05-02T00:00:00Z")
    older = dict(CUSTOMERS[0], email="older@example.com", updated_at="2026-05-01T00:00:00Z")
    write_csv(landing, "customers/a.csv", [newer])
    write_csv(landing, "customers/b.csv", [older])  # delivered later, but older
    write_csv(landing, "orders/o.csv", ORDERS[:1])
    ingest(settings)
    assert query(settings, "SELECT email FROM raw.customers") == [("newer@example.com",)]


def test_an_order_delivered_again_with_a_new_status_is_a_new_version(settings: Settings):
    minimal_landing(settings.landing_dir)
    ingest(settings)
    refunded = [dict(ORDERS[0], status="refunded")]
    write_csv(settings.landing_dir, "orders/date=2026-06-05/changes.csv", refunded)
    report = ingest(settings).entities["orders"]
    assert (report.rows_loaded, report.rows_rejected) == (1, 0)
    assert query(settings, "SELECT order_id, status FROM raw.orders ORDER BY 1") == [
        ("o1", "refunded"),
        ("o2", None),
    ]
    assert query(settings, "SELECT count(*) FROM raw.order_versions") == [(3,)]


def test_a_full_snapshot_with_few_changes_adds_only_the_changes(settings: Settings):
    customers = [
        {"customer_id": f"c{i}", "email": f"x{i}@example.com", "signup_at": "2026-01-01"}
        for i in range(1, 2001)
    ]
    write_csv(settings.landing_dir, "customers/date=2026-06-01/all.csv", customers)
    write_csv(settings.landing_dir, "orders/o.csv", ORDERS)
    ingest(settings)
    customers[10] = dict(customers[10], email="changed@example.com")
    customers[20] = dict(customers[20], email_opt_in="false")
    write_csv(
        settings.landing_dir,
        "customers/date=2026-06-02/all.csv",
        customers,
        header=["customer_id", "email", "signup_at", "email_opt_in"],
    )
    report = ingest(settings).entities["customers"]
    assert (report.rows_loaded, report.rows_unchanged) == (2, 1998)
    assert query(settings, "SELECT count(*) FROM raw.customer_versions") == [(2002,)]


# --------------------------------------------------------------------------- held rows


def test_an_unsubscribe_before_its_customer_is_held_and_loads_when_the_customer_arrives(
    settings: Settings,
):
    minimal_landing(settings.landing_dir)
    early = dict(UNSUBSCRIBE, customer_id="c3")
    write_csv(settings.landing_dir, "email_events/date=2026-06-01/a.csv", [early])
    report = ingest(settings).entities["email_events"]
    assert (report.rows_held, report.rows_rejected) == (1, 0)
    assert query(settings, "SELECT reason FROM quarantine.held_rows") == [
        ("customer_id: waits for its customer (no such customer_id delivered yet)",)
    ]
    counts_add_up(settings)
    late_customer = [dict(CUSTOMERS[0], customer_id="c3")]
    write_csv(settings.landing_dir, "customers/date=2026-06-03/new.csv", late_customer)
    report = ingest(settings).entities["email_events"]
    assert report.held_rows_loaded == 1
    assert query(settings, "SELECT customer_id, event_type FROM raw.email_events") == [
        ("c3", "unsubscribe")
    ]
    assert query(settings, "SELECT count(*) FROM quarantine.held_rows") == [(0,)]
    counts_add_up(settings)
    # Its file is judged by the raw gate again: it brought rows no gate has seen.
    assert query(
        settings, "SELECT gated_at FROM raw.loaded_files WHERE entity = 'email_events'"
    ) == [(None,)]


def test_a_timestamp_a_little_after_the_load_time_waits_until_that_time(settings: Settings):
    minimal_landing(settings.landing_dir)
    skewed = dict(UNSUBSCRIBE, customer_id="c1", occurred_at="2026-07-01 12:05")  # 5 min ahead
    write_csv(settings.landing_dir, "email_events/date=2026-07-01/a.csv", [skewed])
    assert ingest(settings).entities["email_events"].rows_held == 1
    later = ml.ingest.loader.ingest_landing(
        settings, loaded_at=LOAD_TIME + dt.timedelta(minutes=10)
    )
    assert later.entities["email_events"].held_rows_loaded == 1
    assert query(settings, "SELECT occurred_at FROM raw.email_events") == [
        (dt.datetime(2026, 7, 1, 12, 5),)
    ]
    counts_add_up(settings)


def test_a_row_held_too_long_becomes_a_rejection(settings: Settings):
    minimal_landing(settings.landing_dir)
    write_csv(
        settings.landing_dir,
        "orders/date=2026-06-03/a.csv",
        [dict(ORDERS[0], order_id="o9", customer_id="ghost")],
    )
    ingest(settings)
    # While it waits, the held row is whole: it is loaded when its customer arrives.
    assert query(settings, "SELECT record->>'customer_id' FROM quarantine.held_rows") == [
        ("ghost",)
    ]
    ml.ingest.loader.ingest_landing(settings, loaded_at=LOAD_TIME + dt.timedelta(days=8))
    assert [(v[3], v[4], v[5], v[6]) for v in violations(settings)] == [
        (
            "customer_id",
            "held since 2026-07-01 12:00 for more than 7 days (SEGFLOW_HOLD_DAYS): "
            "waits for its customer (no such customer_id delivered yet)",
            None,
            "rejected",
        )
    ]
    # A rejection now: minimised like any other (no id, its shape; the record without it).
    assert query(
        settings, "SELECT value_shape, record::VARCHAR LIKE '%ghost%' FROM quarantine.violations"
    ) == [("a (5 characters)", False)]
    assert query(settings, "SELECT record->>'order_id' FROM quarantine.violations") == [("o9",)]
    assert query(settings, "SELECT count(*) FROM quarantine.held_rows") == [(0,)]
    counts_add_up(settings)


# --------------------------------------------------------------------------- keys and formats


def test_integer_and_float_ids_are_the_same_text_ids(settings: Settings):
    landing = settings.landing_dir
    (landing / "customers").mkdir(parents=True)
    pd.DataFrame(
        {"customer_id": [42, 43], "email": ["a@example.com", None], "signup_at": ["2026-01-01"] * 2}
    ).to_parquet(landing / "customers/c.parquet")
    (landing / "orders").mkdir()
    pd.DataFrame(
        {
            "order_id": [1, 2],
            "customer_id": [42.0, 43.0],
            "ordered_at": ["2026-06-01"] * 2,
            "amount": [1.5, 2.0],
        }
    ).to_parquet(landing / "orders/o.parquet")
    (landing / "email_events").mkdir()
    (landing / "email_events/e.csv").write_text(
        "event_id,customer_id,campaign_id,event_type,occurred_at\n7,42.0,9,open,2026-06-01\n"
    )
    ingest(settings)
    assert query(settings, "SELECT customer_id FROM raw.customers ORDER BY 1") == [("42",), ("43",)]
    assert query(settings, "SELECT order_id, customer_id FROM raw.orders ORDER BY 1") == [
        ("1", "42"),
        ("2", "43"),
    ]
    assert query(settings, "SELECT event_id, customer_id FROM raw.email_events") == [("7", "42")]
    assert violations(settings) == []


def test_gzip_tsv_json_lines_and_a_byte_order_mark_load(settings: Settings):
    landing = settings.landing_dir
    (landing / "customers").mkdir(parents=True)
    with gzip.open(landing / "customers/c.csv.gz", "wt") as handle:
        handle.write("customer_id,email,signup_at\nc1,a@example.com,2026-01-01\n")
    (landing / "customers/d.tsv").write_text("customer_id\temail\tsignup_at\nc2,x\t\t2026-01-01\n")
    (landing / "orders").mkdir()
    (landing / "orders/o.csv").write_bytes(
        "\ufefforder_id,customer_id,ordered_at,amount\no1,c1,2026-06-01,1\n".encode()
    )
    (landing / "web_events").mkdir()
    event = {
        "event_id": "w1",
        "customer_id": 42,
        "session_id": "s",
        "event_type": "search",
        "occurred_at": "2026-06-01T10:00:00+02:00",
        "context": {"page": "/"},
    }
    (landing / "web_events/w.jsonl").write_text(json.dumps(dict(event, customer_id="c1")) + "\n")
    with gzip.open(landing / "web_events/v.ndjson.gz", "wt") as handle:
        handle.write(json.dumps(dict(event, event_id="w2", customer_id="c2,x")) + "\n")
    ingest(settings)
    assert bad_files(settings) == []
    assert query(settings, "SELECT customer_id FROM raw.customers ORDER BY 1") == [
        ("c1",),
        ("c2,x",),
    ]
    assert query(settings, "SELECT order_id FROM raw.orders") == [("o1",)]
    assert query(
        settings, "SELECT event_id, occurred_at, _extra::VARCHAR FROM raw.web_events ORDER BY 1"
    ) == [
        ("w1", dt.datetime(2026, 6, 1, 8, 0), '["context"]'),
        ("w2", dt.datetime(2026, 6, 1, 8, 0), '["context"]'),
    ]


def test_another_encoding_loads_under_its_setting(settings: Settings):
    latin = dataclasses.replace(
        settings, loading=dataclasses.replace(settings.loading, encoding="latin-1")
    )
    write_csv(settings.landing_dir, "orders/o.csv", ORDERS)
    (settings.landing_dir / "customers").mkdir()
    (settings.landing_dir / "customers/c.csv").write_bytes(
        "customer_id,email,signup_at,gender\nc1,a@example.com,2026-01-01,m\xe4nnlich\n".encode(
            "latin-1"
        )
    )
    ml.ingest.loader.ingest_landing(latin, loaded_at=LOAD_TIME)
    assert query(settings, "SELECT gender FROM raw.customers") == [("männlich",)]


def test_writers_temporaries_markers_and_hidden_folders_are_not_data(settings: Settings):
    minimal_landing(settings.landing_dir)
    orders = settings.landing_dir / "orders"
    for relative in (
        "_temporary/0/part-9.csv",
        ".staging/part-9.csv",
        "date=2026-06-02/.part-9.csv",
    ):
        write_csv(orders, relative, [dict(ORDERS[0], order_id="ghost")])
    (orders / "_SUCCESS").write_text("")
    (orders / "part-0.csv.crc").write_bytes(b"\x00")
    (orders / "notes.xlsx").write_bytes(b"PK")
    report = ingest(settings)
    assert query(settings, "SELECT count(*) FROM raw.orders WHERE order_id = 'ghost'") == [(0,)]
    assert report.ignored_files == ["orders/notes.xlsx"]  # reported, not silently skipped
    assert bad_files(settings) == []


def test_a_name_with_glob_characters_is_read_literally(settings: Settings):
    minimal_landing(settings.landing_dir)
    write_csv(settings.landing_dir, "orders/*.csv", [dict(ORDERS[0], order_id="star")])
    ingest(settings)
    assert query(settings, "SELECT order_id, _source_file FROM raw.orders ORDER BY 1") == [
        ("o1", "orders/date=2026-06-02/part-0.csv"),
        ("o2", "orders/date=2026-06-02/part-0.csv"),
        ("star", "orders/*.csv"),
    ]


def test_a_link_out_of_the_landing_folder_is_refused_unread(settings: Settings, tmp_path):
    minimal_landing(settings.landing_dir)
    secret = tmp_path / "secret.csv"
    secret.write_text("order_id,customer_id,ordered_at,amount\nroot:x:0:0,c1,2026-06-01,1\n")
    (settings.landing_dir / "orders/leak.csv").symlink_to(secret)
    inside = settings.landing_dir / "orders/date=2026-06-02/part-0.csv"
    (settings.landing_dir / "orders/alias.csv").symlink_to(inside)
    ingest(settings)
    assert bad_files(settings) == [
        ("orders/leak.csv", None, "is a symbolic link that leaves the landing folder: not read")
    ]
    assert "root:x" not in str(query(settings, "SELECT * FROM quarantine.files"))
    assert query(settings, "SELECT count(*) FROM raw.orders WHERE order_id LIKE 'root%'") == [(0,)]


def test_a_file_still_being_written_is_left_for_the_next_run(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    minimal_landing(settings.landing_dir)
    growing = settings.landing_dir / "orders/date=2026-06-02/part-1.csv"
    write_csv(
        settings.landing_dir, "orders/date=2026-06-02/part-1.csv", [dict(ORDERS[0], order_id="o3")]
    )
    real_checksum = ml.ingest.loader.checksum
    appended = []

    def checksum_while_a_writer_appends(file, encoding):
        result = real_checksum(file, encoding)
        if file.path == growing and not appended:
            appended.append(True)
            with growing.open("a") as handle:  # the writer goes on after the checksum
                handle.write("o4,c1,2026-06-01 10:00,2\r\n")
            os.utime(growing, ns=(0, growing.stat().st_mtime_ns + 1_000_000))
        return result

    monkeypatch.setattr(ml.ingest.loader, "checksum", checksum_while_a_writer_appends)
    report = ingest(settings)
    assert report.entities["orders"].files_still_changing == 1
    assert query(settings, "SELECT order_id FROM raw.orders ORDER BY 1") == [("o1",), ("o2",)]
    ingest(settings)
    assert query(settings, "SELECT order_id FROM raw.orders ORDER BY 1") == [
        ("o1",),
        ("o2",),
        ("o3",),
        ("o4",),
    ]
    counts_add_up(settings)


def test_a_snapshot_repeating_a_bad_value_reports_it_once(settings: Settings):
    landing = settings.landing_dir
    customers = [dict(CUSTOMERS[0], country="Germany"), CUSTOMERS[1]]
    write_csv(landing, "orders/o.csv", ORDERS)
    for day in ("2026-06-01", "2026-06-02", "2026-06-03"):
        write_csv(landing, f"customers/date={day}/snapshot.csv", customers)
        ingest(settings)
    assert [(v[1], v[3], v[6]) for v in violations(settings)] == [
        ("customers/date=2026-06-01/snapshot.csv", "country", "nulled")
    ]
    assert query(settings, "SELECT count(*) FROM raw.customer_versions") == [(2,)]


def test_consent_is_a_log_of_every_signal(settings: Settings):
    landing = settings.landing_dir
    write_csv(landing, "customers/date=2026-06-01/s.csv", [dict(CUSTOMERS[0], email_opt_in="yes")])
    write_csv(landing, "orders/o.csv", ORDERS[:1])
    ingest(settings)
    write_csv(landing, "customers/date=2026-06-02/s.csv", [dict(CUSTOMERS[0], email_opt_in="no")])
    write_csv(landing, "email_events/e.csv", [dict(UNSUBSCRIBE, customer_id="c1")])
    ingest(settings)
    assert query(
        settings, "SELECT changed_at, signal FROM raw.consent_log ORDER BY changed_at NULLS FIRST"
    ) == [
        (None, "opted_in"),  # the first version: since always
        (dt.datetime(2026, 6, 1, 10, 0), "unsubscribed"),
        (dt.datetime(2026, 6, 2), "opted_out"),
    ]
