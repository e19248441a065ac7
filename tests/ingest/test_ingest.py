"""Landing files into raw: idempotence, the contract's file-level errors and row-level quarantine."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from ml.config import Settings
from ml.errors import ContractViolation
from ml.ingest.loader import ingest_landing, quarantine_lines, raw_summary
from ml.ingest.raw_tables import ensure_raw_tables

LOAD_TIME = dt.datetime(2026, 7, 1, 12, 0)
CUSTOMERS = [
    {"customer_id": "c1", "email": "one@example.com", "signup_at": "2026-01-01T10:00:00Z"},
    {"customer_id": "c2", "email": "two@example.com", "signup_at": "2026-01-02 08:30"},
]
ORDERS = [
    {"order_id": "o1", "customer_id": "c1", "ordered_at": "2026-06-01 10:00", "amount": "19.99"},
    {"order_id": "o2", "customer_id": "c2", "ordered_at": "2026-06-02 11:00", "amount": "5"},
]


def write_csv(
    landing: Path, relative: str, rows: list[dict], header: list[str] | None = None
) -> Path:
    path = landing / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    header = header or list(rows[0])
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def minimal_landing(landing: Path) -> None:
    write_csv(landing, "customers/customers.csv", CUSTOMERS)
    write_csv(landing, "orders/date=2026-06-02/part-0.csv", ORDERS)


def ingest(settings: Settings, as_of: dt.date | None = None):
    return ingest_landing(settings, as_of=as_of, loaded_at=LOAD_TIME)


def query(settings: Settings, sql: str) -> list[tuple]:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(sql).fetchall()


def violations(settings: Settings) -> list[tuple]:
    return query(
        settings,
        "SELECT entity, source_file, source_row, column_name, rule, value, action "
        "FROM quarantine.violations ORDER BY ALL",
    )


def table_snapshot(settings: Settings) -> dict[str, list[tuple]]:
    tables = ["customers", "orders", "email_events", "web_events", "reviews"]
    snapshot = {t: query(settings, f"SELECT * FROM raw.{t} ORDER BY ALL") for t in tables}
    snapshot["violations"] = violations(settings)
    return snapshot


# --------------------------------------------------------------------------- idempotence


def test_loading_the_same_files_twice_gives_the_same_raw_rows(
    settings: Settings, landing_copy: Path
):
    first = ingest(settings)
    before = table_snapshot(settings)
    second = ingest(settings)
    assert table_snapshot(settings) == before
    assert first.entities["orders"].rows_loaded > 0
    assert first.entities["orders"].rows_loaded == len(before["orders"])
    assert second.entities["orders"].rows_loaded == 0
    assert second.entities["orders"].files_unchanged == first.entities["orders"].files_loaded


def test_a_touched_but_identical_file_is_not_reloaded(settings: Settings):
    minimal_landing(settings.landing_dir)
    ingest(settings)
    path = settings.landing_dir / "orders/date=2026-06-02/part-0.csv"
    os.utime(path, (1, 1))  # new mtime, same content: recognised by checksum
    report = ingest(settings)
    assert report.entities["orders"].files_unchanged == 1
    assert query(settings, "SELECT count(*) FROM raw.orders") == [(2,)]


def test_a_changed_file_replaces_the_rows_it_loaded(settings: Settings):
    minimal_landing(settings.landing_dir)
    ingest(settings)
    corrected = [dict(ORDERS[0], amount="25.00")]
    write_csv(settings.landing_dir, "orders/date=2026-06-02/part-0.csv", corrected)
    report = ingest(settings)
    assert report.entities["orders"].files_replaced == 1
    assert query(settings, "SELECT order_id, amount::VARCHAR FROM raw.orders") == [("o1", "25.00")]


def test_every_raw_row_keeps_its_source_file_and_row(settings: Settings):
    minimal_landing(settings.landing_dir)
    ingest(settings)
    assert query(
        settings, "SELECT order_id, _source_file, _source_row FROM raw.orders ORDER BY 1"
    ) == [
        ("o1", "orders/date=2026-06-02/part-0.csv", 1),
        ("o2", "orders/date=2026-06-02/part-0.csv", 2),
    ]


def test_partitions_after_the_as_of_date_wait_for_their_run(settings: Settings):
    minimal_landing(settings.landing_dir)
    later = [
        {"order_id": "o3", "customer_id": "c1", "ordered_at": "2026-06-03 09:00", "amount": "1"}
    ]
    write_csv(settings.landing_dir, "orders/date=2026-06-03/part-0.csv", later)
    ingest(settings, as_of=dt.date(2026, 6, 2))
    assert query(settings, "SELECT order_id FROM raw.orders ORDER BY 1") == [("o1",), ("o2",)]
    ingest(settings, as_of=dt.date(2026, 6, 3))
    assert query(settings, "SELECT order_id FROM raw.orders ORDER BY 1") == [
        ("o1",),
        ("o2",),
        ("o3",),
    ]


# --------------------------------------------------------------------------- formats and names


def test_csv_and_parquet_mix_with_case_insensitive_headers_and_extra_columns(settings: Settings):
    landing = settings.landing_dir
    write_csv(
        landing,
        "customers/a.csv",
        [dict(CUSTOMERS[0], loyalty_tier="gold")],
        header=["customer_id", "email", "signup_at", "loyalty_tier"],
    )
    # Same header in other cases and spellings: `Customer ID` is customer_id.
    (landing / "customers/b.csv").write_text(
        "Customer ID,EMAIL,Signup-At\nc2,two@example.com,2026-01-02\n"
    )
    orders = pd.DataFrame(
        {
            "ORDER_ID": ["o1"],
            "Customer_Id": ["c2"],
            "ordered_at": [pd.Timestamp("2026-06-01 10:00", tz="Europe/Berlin")],
            "amount": [12.5],
            "coupon": ["SUMMER"],
        }
    )
    (landing / "orders").mkdir()
    orders.to_parquet(landing / "orders/orders.parquet")
    ingest(settings)
    # Columns beyond the contract are named, their values not kept (they may be personal).
    assert query(settings, "SELECT customer_id, _extra::VARCHAR FROM raw.customers ORDER BY 1") == [
        ("c1", '["loyalty_tier"]'),
        ("c2", None),
    ]
    # A timestamp with a zone is stored in UTC.
    assert query(
        settings,
        "SELECT order_id, customer_id, ordered_at, amount::VARCHAR, _extra::VARCHAR FROM raw.orders",
    ) == [("o1", "c2", dt.datetime(2026, 6, 1, 8, 0), "12.50", '["coupon"]')]


def test_timestamps_without_offset_are_utc_and_offsets_are_converted(settings: Settings):
    minimal_landing(settings.landing_dir)
    ingest(settings)
    assert query(settings, "SELECT customer_id, signup_at FROM raw.customers ORDER BY 1") == [
        ("c1", dt.datetime(2026, 1, 1, 10, 0)),
        ("c2", dt.datetime(2026, 1, 2, 8, 30)),
    ]


# --------------------------------------------------------------------------- optional entities


def test_optional_entities_may_be_absent(settings: Settings):
    minimal_landing(settings.landing_dir)
    report = ingest(settings)
    assert report.entities["orders"].rows_loaded == 2
    for optional in ("email_events", "web_events", "reviews"):
        assert report.entities[optional].rows_loaded == 0
        # The table exists (empty), so downstream models can always read it.
        assert query(settings, f"SELECT count(*) FROM raw.{optional}") == [(0,)]


# --------------------------------------------------------------------------- file-level errors


def test_a_missing_required_entity_names_the_folder(settings: Settings):
    write_csv(settings.landing_dir, "customers/c.csv", CUSTOMERS)
    with pytest.raises(ContractViolation) as error:
        ingest(settings)
    assert "orders" in str(error.value)
    assert "required entity 'orders' has no landing files" in str(error.value)


def bad_files(settings: Settings) -> list[tuple]:
    return query(
        settings, "SELECT source_file, column_name, reason FROM quarantine.files ORDER BY ALL"
    )


def test_a_missing_required_column_sets_that_file_aside_and_the_others_load(settings: Settings):
    write_csv(settings.landing_dir, "customers/c.csv", CUSTOMERS)
    rows = [{k: v for k, v in o.items() if k != "amount"} for o in ORDERS]
    write_csv(settings.landing_dir, "orders/date=2026-06-02/part-0.csv", rows)
    write_csv(settings.landing_dir, "orders/date=2026-06-03/part-0.csv", [bad_order(order_id="o3")])
    report = ingest(settings)
    assert bad_files(settings) == [
        (
            "orders/date=2026-06-02/part-0.csv",
            "amount",
            "required column of orders is missing (the file has: order_id, customer_id, ordered_at)",
        )
    ]
    assert report.bad_files == ["orders/date=2026-06-02/part-0.csv"]
    assert query(settings, "SELECT count(*) FROM raw.customers") == [(2,)]
    assert query(settings, "SELECT order_id FROM raw.orders") == [("o3",)]
    # Set aside once: the same bytes are not judged (or reported) again on the next run.
    assert ingest(settings).bad_files == []
    assert len(bad_files(settings)) == 1


def test_a_replaced_bad_file_loads_and_leaves_quarantine(settings: Settings):
    write_csv(settings.landing_dir, "customers/c.csv", CUSTOMERS)
    rows = [{k: v for k, v in o.items() if k != "amount"} for o in ORDERS]
    write_csv(settings.landing_dir, "orders/date=2026-06-02/part-0.csv", rows)
    ingest(settings)
    write_csv(settings.landing_dir, "orders/date=2026-06-02/part-0.csv", ORDERS)
    ingest(settings)
    assert bad_files(settings) == []
    assert query(settings, "SELECT count(*) FROM raw.orders") == [(2,)]


UNSUBSCRIBE = {
    "event_id": "e1",
    "customer_id": "c2",
    "campaign_id": "k1",
    "event_type": "unsubscribe",
    "occurred_at": "2026-06-01 10:00",
}


@pytest.mark.parametrize(
    ("name", "content", "rule"),
    [
        ("empty.csv", b"", "is empty or has no header line"),
        ("latin.csv", "event_id,customer_id\nx,Jos\xe9\n".encode("latin-1"), "line 2 is not UTF-8"),
        ("broken.parquet", b"PAR1 this is not parquet", "cannot be parsed as PARQUET"),
        (
            "ragged.csv",
            b"event_id,customer_id,campaign_id,event_type,occurred_at\n"
            b"e8,c1,k,open,2026-06-01\ne9,c1,k,open,2026-06-01,secret@example.com\n",
            "cannot be parsed as CSV",
        ),
        ("twice.csv", b"event_id,Event ID,customer_id\n1,2,c1\n", "appears twice in the header"),
        ("broken.csv.gz", b"not gzip at all", "cannot be"),
    ],
)
def test_one_unreadable_file_never_blocks_the_others(
    settings: Settings, name: str, content: bytes, rule: str
):
    minimal_landing(settings.landing_dir)
    write_csv(settings.landing_dir, "email_events/date=2026-06-01/a.csv", [UNSUBSCRIBE])
    (settings.landing_dir / "email_events/date=2026-06-01" / name).write_bytes(content)
    ingest(settings)
    [(source_file, _, reason)] = bad_files(settings)
    assert source_file == f"email_events/date=2026-06-01/{name}"
    assert rule in reason
    assert "secret@example.com" not in reason  # the content is never echoed
    # The unsubscribe in the good file took effect.
    assert query(settings, "SELECT event_id FROM raw.email_events") == [("e1",)]


def test_a_csv_with_a_ragged_row_names_the_file(settings: Settings):
    minimal_landing(settings.landing_dir)
    (settings.landing_dir / "orders/date=2026-06-02/ragged.csv").write_text(
        "order_id,customer_id,ordered_at,amount\no9,c1,2026-06-01,1\no10,c1,2026-06-01,1,extra,fields\n"
    )
    ingest(settings)
    [(source_file, _, reason)] = bad_files(settings)
    assert source_file == "orders/date=2026-06-02/ragged.csv"
    assert "cannot be parsed as CSV" in reason
    assert query(settings, "SELECT count(*) FROM raw.orders") == [(2,)]


def test_semicolon_separated_csv_is_read(settings: Settings):
    write_csv(settings.landing_dir, "customers/c.csv", CUSTOMERS)
    (settings.landing_dir / "orders").mkdir()
    (settings.landing_dir / "orders/o.csv").write_text(
        "order_id;customer_id;ordered_at;amount\no1;c1;2026-06-01 10:00;3.5\n"
    )
    ingest(settings)
    assert query(settings, "SELECT order_id, amount::VARCHAR FROM raw.orders") == [("o1", "3.50")]


def test_a_partition_that_is_not_a_date_is_refused(settings: Settings):
    minimal_landing(settings.landing_dir)
    write_csv(settings.landing_dir, "orders/date=2026-13-01/part-0.csv", ORDERS)
    ingest(settings)
    assert bad_files(settings) == [
        (
            "orders/date=2026-13-01/part-0.csv",
            None,
            "partition folder 'date=2026-13-01' is not a date (date=YYYY-MM-DD)",
        )
    ]
    assert query(settings, "SELECT count(*) FROM raw.orders") == [(2,)]


# --------------------------------------------------------------------------- row-level quarantine


def bad_order(**changes) -> dict:
    row = {
        "order_id": "bad",
        "customer_id": "c1",
        "ordered_at": "2026-06-01 10:00",
        "amount": "3",
        "items": "",
        "status": "",
    }
    row.update(changes)
    return row


@pytest.mark.parametrize(
    ("changes", "column", "rule", "action"),
    [
        ({"amount": "-3.50"}, "amount", "must be >= 0", "rejected"),
        ({"amount": "€3"}, "amount", "not a valid decimal", "rejected"),
        ({"ordered_at": "yesterday"}, "ordered_at", "not a valid timestamp", "rejected"),
        (
            {"ordered_at": "2026-07-02 12:00:01"},
            "ordered_at",
            "more than 24 h later than the load time (2026-07-01 12:00:00 UTC; "
            "SEGFLOW_CLOCK_SKEW_HOURS)",
            "rejected",
        ),
        ({"order_id": ""}, "order_id", "required value is missing", "rejected"),
        (
            {"status": "pending"},
            "status",
            "must be one of completed, cancelled, refunded",
            "rejected",
        ),
        ({"items": "0"}, "items", "must be >= 1", "nulled"),
        ({"items": "two"}, "items", "not a valid integer", "nulled"),
    ],
)
def test_each_row_violation_is_quarantined_with_its_reason(
    settings: Settings, changes: dict, column: str, rule: str, action: str
):
    minimal_landing(settings.landing_dir)
    write_csv(settings.landing_dir, "orders/date=2026-06-02/part-1.csv", [bad_order(**changes)])
    report = ingest(settings)
    found = [v for v in violations(settings) if v[1].endswith("part-1.csv")]
    assert [(v[3], v[4], v[6]) for v in found] == [(column, rule, action)]
    assert found[0][2] == 1  # the file's first data row
    loaded = query(
        settings, "SELECT order_id FROM raw.orders WHERE _source_file LIKE '%part-1.csv'"
    )
    if action == "rejected":
        assert loaded == []
        assert report.entities["orders"].rows_rejected == 1
    else:
        # An optional value that breaks its rule is nulled; the row itself is kept.
        assert loaded == [(changes.get("order_id", "bad"),)]
        assert query(settings, "SELECT items FROM raw.orders WHERE order_id = 'bad'") == [(None,)]
        assert report.entities["orders"].values_nullified == 1


def test_quarantine_keeps_the_record_without_its_personal_values(settings: Settings):
    minimal_landing(settings.landing_dir)
    write_csv(settings.landing_dir, "orders/date=2026-06-02/part-1.csv", [bad_order(amount="-1")])
    ingest(settings)
    record = query(
        settings,
        "SELECT record->>'amount', record->>'order_id', record->>'customer_id', value, value_shape "
        "FROM quarantine.violations",
    )
    assert record == [("-1", "bad", None, "-1", None)]


SECRET_ADDRESS = "rosa.quarantine@example.org"


def test_a_rejected_customer_row_keeps_no_address_or_id(settings: Settings):
    """What a person needs to fix the file (file, line, column, rule, the impersonal values) and
    nothing that says whose row it was."""
    write_csv(
        settings.landing_dir,
        "customers/c.csv",
        [
            CUSTOMERS[0],
            dict(
                CUSTOMERS[1],
                customer_id="cust-secret-77",
                email=SECRET_ADDRESS,
                signup_at="yesterday",
                country="Germany",
                birth_year="1851",
                gender="f",
            ),
        ],
        header=["customer_id", "email", "signup_at", "country", "birth_year", "gender"],
    )
    write_csv(settings.landing_dir, "orders/o.csv", ORDERS[:1])
    ingest(settings)
    rows = query(
        settings,
        """SELECT source_file, source_row, column_name, rule, value, value_shape, action,
                  record::VARCHAR FROM quarantine.violations ORDER BY column_name""",
    )
    assert [row[:7] for row in rows] == [
        ("customers/c.csv", 2, "birth_year", "must be >= 1900", None, "9 (4 characters)", "nulled"),
        ("customers/c.csv", 2, "country", "must be ISO-3166 alpha-2", "Germany", None, "nulled"),
        ("customers/c.csv", 2, "signup_at", "not a valid timestamp", "yesterday", None, "rejected"),
    ]
    assert all(
        json.loads(row[7]) == {"signup_at": "yesterday", "country": "Germany"} for row in rows
    )
    everything = str(query(settings, "SELECT * FROM quarantine.violations"))
    for secret in (SECRET_ADDRESS, "example.org", "cust-secret-77", "1851"):
        assert secret not in everything
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        summary = "\n".join(quarantine_lines(con))
    assert (
        "1 customers.signup_at: not a valid timestamp -> row rejected "
        "(first: customers/c.csv row 2, value 'yesterday')" in summary
    )
    assert (
        "customers.birth_year: must be >= 1900 -> row nulled "
        "(first: customers/c.csv row 2, a value like 9 (4 characters))" in summary
    )
    assert "1851" not in summary and "cust-secret-77" not in summary


@pytest.mark.parametrize(
    ("entity", "row", "column", "rule"),
    [
        (
            "email_events",
            {
                "event_id": "e1",
                "customer_id": "c1",
                "campaign_id": "k1",
                "event_type": "deferred",
                "occurred_at": "2026-06-01 10:00",
            },
            "event_type",
            "must be one of sent, delivered, open, click, bounce, unsubscribe, complaint "
            "(or an e-mail tool's name for one)",
        ),
        (
            "web_events",
            {
                "event_id": "w1",
                "customer_id": "c1",
                "session_id": "s1",
                "event_type": "wishlist",
                "occurred_at": "2026-06-01 10:00",
            },
            "event_type",
            "must be one of page_view, product_view, add_to_cart, checkout, search",
        ),
        (
            "reviews",
            {"review_id": "r1", "customer_id": "c1", "created_at": "2026-06-01", "rating": "7"},
            "rating",
            "must be <= 5",
        ),
    ],
)
def test_optional_entities_are_checked_too(
    settings: Settings, entity: str, row: dict, column: str, rule: str
):
    minimal_landing(settings.landing_dir)
    write_csv(settings.landing_dir, f"{entity}/date=2026-06-01/part-0.csv", [row])
    ingest(settings)
    assert [(v[0], v[3], v[4], v[6]) for v in violations(settings)] == [
        (entity, column, rule, "rejected")
    ]
    assert query(settings, f"SELECT count(*) FROM raw.{entity}") == [(0,)]


def test_an_event_delivered_again_is_skipped_and_with_other_values_rejected(settings: Settings):
    minimal_landing(settings.landing_dir)
    write_csv(settings.landing_dir, "email_events/date=2026-06-01/a.csv", [UNSUBSCRIBE])
    ingest(settings)
    write_csv(
        settings.landing_dir,
        "email_events/date=2026-06-02/a.csv",
        [UNSUBSCRIBE, dict(UNSUBSCRIBE, occurred_at="2026-06-02 10:00")],
    )
    report = ingest(settings).entities["email_events"]
    assert (report.rows_unchanged, report.rows_rejected, report.rows_loaded) == (1, 1, 0)
    assert [(v[1], v[2], v[3], v[4]) for v in violations(settings)] == [
        (
            "email_events/date=2026-06-02/a.csv",
            2,
            "event_id",
            "delivered again with other values (first seen in "
            "email_events/date=2026-06-01/a.csv row 1)",
        )
    ]
    assert query(settings, "SELECT count(*) FROM raw.email_events") == [(1,)]


def test_opt_in_spellings_are_understood_and_an_unclear_one_means_not_emailable(
    settings: Settings,
):
    spellings = {
        "c1": "maybe",
        "c2": "No",
        "c3": "off",
        "c4": "UNSUBSCRIBED",
        "c5": "Yes",
        "c6": "subscribed",
        "c7": "1",
        "c8": "",
    }
    customers = [
        dict(CUSTOMERS[0], customer_id=key, email_opt_in=value) for key, value in spellings.items()
    ]
    write_csv(settings.landing_dir, "customers/c.csv", customers)
    write_csv(settings.landing_dir, "orders/o.csv", ORDERS[:1])
    ingest(settings)
    assert query(settings, "SELECT customer_id, email_opt_in FROM raw.customers ORDER BY 1") == [
        ("c1", False),
        ("c2", False),
        ("c3", False),
        ("c4", False),
        ("c5", True),
        ("c6", True),
        ("c7", True),
        ("c8", None),
    ]
    assert [(v[2], v[3], v[5], v[6]) for v in violations(settings)] == [
        (1, "email_opt_in", "maybe", "defaulted")
    ]


def test_the_email_tools_event_names_are_the_contracts_types(settings: Settings):
    minimal_landing(settings.landing_dir)
    names = [
        "spamreport",
        "group_unsubscribe",
        "dropped",
        "cleaned",
        "Unsubscribed",
        "Marked Email as Spam",
        "Bounced Email",
        "Opened Email",
    ]
    events = [dict(UNSUBSCRIBE, event_id=f"e{i}", event_type=name) for i, name in enumerate(names)]
    write_csv(settings.landing_dir, "email_events/e.csv", events)
    ingest(settings)
    assert query(settings, "SELECT event_type FROM raw.email_events ORDER BY event_id") == [
        ("complaint",),
        ("unsubscribe",),
        ("bounce",),
        ("bounce",),
        ("unsubscribe",),
        ("complaint",),
        ("bounce",),
        ("open",),
    ]


def test_customer_attributes_that_break_a_rule_are_nulled_not_dropped(settings: Settings):
    customers = [
        dict(CUSTOMERS[0], country="Germany", birth_year="1850", email_opt_in="maybe"),
        CUSTOMERS[1],
    ]
    write_csv(settings.landing_dir, "customers/c.csv", customers)
    write_csv(settings.landing_dir, "orders/o.csv", ORDERS)
    ingest(settings)
    # The customer stays (so their orders are not orphaned); the bad values are kept in quarantine.
    assert query(
        settings,
        "SELECT customer_id, country, birth_year, email_opt_in FROM raw.customers ORDER BY 1",
    ) == [("c1", None, None, False), ("c2", None, None, None)]
    assert [(v[3], v[4], v[5], v[6]) for v in violations(settings)] == [
        ("birth_year", "must be >= 1900", None, "nulled"),  # personal: its shape only
        ("country", "must be ISO-3166 alpha-2", "Germany", "nulled"),
        (
            "email_opt_in",
            "not a recognised yes/no value: taken as false (not e-mailable)",
            "maybe",
            "defaulted",
        ),
    ]
    assert query(settings, "SELECT count(*) FROM raw.orders") == [(2,)]


def test_a_warehouse_from_before_is_minimised_once(settings: Settings):
    """Quarantine rows with whole records and extra values in raw, as earlier versions kept
    them: personal values become their shape, records lose personal fields (by the file's
    spelling of them), extra columns keep their names only."""
    from ml.ingest.raw_tables import ensure_raw_tables

    minimal_landing(settings.landing_dir)
    ingest(settings)
    with duckdb.connect(str(settings.warehouse_path)) as con:
        con.execute("ALTER TABLE quarantine.violations DROP COLUMN value_shape")
        con.execute("ALTER TABLE quarantine.violations DROP COLUMN customer_key")
        con.execute(
            """INSERT INTO quarantine.violations VALUES
               ('customers', 'customers/old.csv', 3, 'customer_id', 'some rule', 'c-99',
                'rejected', '{"Customer ID": "c-99", "EMAIL": "old@example.com",
                              "signup_at": "never", "Birth-Year": "1970"}', now()),
               ('orders', 'orders/old.csv', 4, 'amount', 'must be >= 0', '-2', 'rejected',
                '{"order_id": "o7", "customer_id": "c-99", "amount": "-2"}', now())"""
        )
        con.execute(
            """UPDATE raw.customer_versions SET _extra = '{"phone": "+49 151 000"}'
               WHERE customer_id = 'c1'"""
        )
    with duckdb.connect(str(settings.warehouse_path)) as con:
        ensure_raw_tables(con)
        ensure_raw_tables(con)  # once only: nothing left to do the second time
    rows = query(
        settings,
        """SELECT column_name, value, value_shape, record::VARCHAR FROM quarantine.violations
           WHERE source_file LIKE '%old.csv' ORDER BY source_row""",
    )
    assert [(c, v, shape, json.loads(r)) for c, v, shape, r in rows] == [
        ("customer_id", None, "a-9 (4 characters)", {"signup_at": "never"}),
        ("amount", "-2", None, {"order_id": "o7", "amount": "-2"}),
    ]
    assert query(
        settings, "SELECT _extra::VARCHAR FROM raw.customers WHERE customer_id = 'c1'"
    ) == [('["phone"]',)]


def test_a_csv_without_header_line_is_set_aside_without_repeating_its_first_row(
    settings: Settings,
):
    minimal_landing(settings.landing_dir)
    (settings.landing_dir / "customers/no_header.csv").write_text(
        "c7,first.row@example.com,2026-01-01\nc8,second@example.com,2026-01-02\n"
    )
    ingest(settings)
    [(source_file, column, reason)] = bad_files(settings)
    assert (source_file, column) == ("customers/no_header.csv", None)
    assert "is the header line missing?" in reason
    assert "first.row@example.com" not in reason and "c7" not in reason


def test_summary_reports_tables_and_quarantine(settings: Settings):
    minimal_landing(settings.landing_dir)
    write_csv(settings.landing_dir, "orders/date=2026-06-02/part-1.csv", [bad_order(amount="-1")])
    ingest(settings)
    summary = raw_summary(settings)
    assert (
        "  orders                   2 rows (2 versions) from     2 files, "
        "ordered_at 2026-06-01 .. 2026-06-02" in summary
    )
    assert "1 orders.amount: must be >= 0 -> row rejected" in summary


def test_a_raw_rows_load_time_is_never_rewritten_by_a_later_ingest(tmp_path: Path):
    """Each ingest makes sure of the raw tables; the one-time migration of an older warehouse
    (rows stamped with their file's load time) must not run again over today's rows, where a
    held row loaded days after its file keeps the day it was loaded."""
    file_loaded, row_loaded = dt.datetime(2026, 6, 1), dt.datetime(2026, 6, 5)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        ensure_raw_tables(con)
        con.execute(
            """INSERT INTO raw.loaded_files (entity, source_file, sha256, size_bytes, mtime_ns,
                   rows_in_file, rows_loaded, rows_rejected, values_nullified, loaded_at)
               VALUES ('email_events', 'email_events/a.csv', 'x', 1, 1, 1, 1, 0, 0, ?)""",
            [file_loaded],
        )
        con.execute(
            "INSERT INTO raw.email_events (_source_file, _source_row, _loaded_at) VALUES (?, 1, ?)",
            ["email_events/a.csv", row_loaded],
        )
        ensure_raw_tables(con)
        assert con.execute("SELECT _loaded_at FROM raw.email_events").fetchone()[0] == row_loaded
