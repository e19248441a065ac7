"""`segflow generate --as-exported`: the same shop, delivered the way real exports look."""

from __future__ import annotations

import collections
import datetime as dt
import gzip
import hashlib
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from ml.cli import main
from ml.contract import EMAIL_EVENT_SYNONYMS, EMAIL_EVENT_TYPES, OPT_IN_SPELLINGS, spelling
from ml.synthetic.deliveries import DeliveryReport, generate_as_exported
from ml.synthetic.shop import generate

END = dt.date(2026, 6, 30)
SHOP = {"customers": 3000, "days": 90, "end_date": END, "seed": 3}
FILE_NAMES = {
    "customers": {"customers.csv.gz"},
    "orders": {"orders.parquet"},
    "email_events": {"sendgrid-events.csv", "klaviyo-events.csv"},
    "web_events": {"events.jsonl"},
    "reviews": {"reviews.tsv"},
}
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
PARTITION = "regexp_extract(filename, 'date=([0-9-]+)', 1)::DATE"
"""The partition day of a row's file, in SQL."""
TIMES = {
    "orders": "ordered_at",
    "email_events": "occurred_at",
    "web_events": "occurred_at",
    "reviews": "created_at",
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, DeliveryReport, Path]:
    folder = tmp_path_factory.mktemp("exported")
    report_path = folder / "delivery-report.json"
    report = generate_as_exported(
        folder / "landing", **SHOP, report_path=report_path, progress=False
    )
    return folder / "landing", report, report_path


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain") / "landing"
    generate(out, **SHOP, progress=False)
    return out


@pytest.fixture(scope="module")
def delivered(exported) -> Iterator[duckdb.DuckDBPyConnection]:
    """Every entity as delivered (all files), each row with its file's name, as tables."""
    readers = {
        "customers": "read_csv('{}/customers/*/*.csv.gz', all_varchar = true",
        "orders": "read_parquet('{}/orders/*/*.parquet'",
        "email_events": "read_csv('{}/email_events/*/*.csv', all_varchar = true",
        # Timestamps as the text they are written as, in every format.
        "web_events": "read_json('{}/web_events/*/*.jsonl', format = 'newline_delimited', "
        "timestampformat = 'none'",
        "reviews": "read_csv('{}/reviews/*/*.tsv', delim = '\t', all_varchar = true",
    }
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        for entity, reader in readers.items():
            source = reader.format(exported[0]) + ", filename = true, hive_partitioning = false)"
            con.execute(f"CREATE TABLE {entity} AS SELECT * FROM {source}")
        yield con


def query(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def test_files_look_like_real_exports(exported):
    landing, report, _ = exported
    assert sorted(p.name for p in landing.iterdir()) == sorted(FILE_NAMES)
    for entity, names in FILE_NAMES.items():
        files = [p for p in (landing / entity).rglob("*") if p.is_file()]
        assert {p.name for p in files} == names, entity
        assert all(p.parent.name.startswith("date=") for p in files)
    assert not [p for p in landing.rglob("*") if p.name.startswith(".")]
    # A snapshot every 7 days and on the last day, each a whole customers table.
    snapshots = sorted(p.name for p in (landing / "customers").iterdir())
    days = [dt.date.fromisoformat(name[5:]) for name in snapshots]
    assert days == report.snapshot_days
    assert days[0] == report.first_day and days[-1] == END
    assert {(b - a).days for a, b in zip(days[:-2], days[1:-1], strict=True)} == {7}
    with gzip.open(landing / "customers" / snapshots[-1] / "customers.csv.gz", "rt") as handle:
        header, first = handle.readline().strip().split(","), handle.readline().split(",")
    assert header[0] == "customer_id" and header[-1] == "updated_at"
    assert first[0].isdigit() and ISO_UTC.match(first[2])

    schema = pq.read_schema(next((landing / "orders").rglob("*.parquet")))
    assert str(schema.field("order_id").type) == str(schema.field("customer_id").type) == "int64"
    assert "updated_at" in schema.names
    with next((landing / "web_events").rglob("*.jsonl")).open() as handle:
        event = json.loads(handle.readline())
    assert isinstance(event["customer_id"], int) and ISO_UTC.match(event["occurred_at"])


def test_email_events_speak_the_tools_language(delivered):
    # Some files write customer ids as floats, the others as integers; event ids are text.
    spellings = query(
        delivered,
        """SELECT DISTINCT bool_and(customer_id LIKE '%.0'), bool_or(customer_id LIKE '%.0'),
                           bool_and(regexp_full_match(customer_id, '[0-9]+(\\.0)?')),
                           bool_and(event_id LIKE 'E%')
           FROM email_events GROUP BY filename""",
    )
    assert sorted(spellings) == [(False, False, True, True), (True, True, True, True)]
    names = dict(query(delivered, "SELECT event_type, count(*) FROM email_events GROUP BY ALL"))
    sendgrid = {"processed", "delivered", "open", "click", "bounce", "dropped"}
    klaviyo = {"Received Email", "Opened Email", "Clicked Email", "Bounced Email"}
    opt_outs = {"group_unsubscribe", "spamreport", "Unsubscribed", "Marked Email as Spam"}
    assert set(names) == sendgrid | klaviyo | opt_outs | {"sent"}
    # Every name is one the loader knows.
    assert all(
        spelling(name) in EMAIL_EVENT_SYNONYMS or name in EMAIL_EVENT_TYPES for name in names
    )


def meaning(opt_in: str | None) -> bool | None:
    return None if opt_in is None else OPT_IN_SPELLINGS[spelling(opt_in)]


def test_customers_change_between_snapshots_and_nobody_else_does(exported, delivered):
    report = exported[1]
    opt_ins = {r[0] for r in query(delivered, "SELECT DISTINCT email_opt_in FROM customers")}
    spellings = {"no", "off", "unsubscribed", "false", "0", "N", "opted_out"}
    assert opt_ins == spellings | {"yes", "subscribed", "1", "TRUE", "true", None}
    assert all(spelling(value) in OPT_IN_SPELLINGS for value in opt_ins - {None})

    rows = query(delivered, f"SELECT {PARTITION}, * EXCLUDE (filename) FROM customers ORDER BY 1")
    first, unchanged, changed = 0, 0, collections.Counter()
    previous: dict[str, tuple] = {}
    for day, snapshot in itertools.groupby(rows, key=lambda row: row[0]):
        snapshot = list(snapshot)
        current = {row[1]: row[1:] for row in snapshot}
        assert len(current) == len(snapshot)  # nobody twice
        assert previous.keys() <= current.keys()  # a snapshot holds everyone signed up
        for customer, row in current.items():
            before = previous.get(customer)
            if before is None:
                first += 1
            elif before == row:
                unchanged += 1
            else:
                # Only the address or the opt-in changed, with a later updated_at.
                differs = {i for i, (a, b) in enumerate(zip(before, row, strict=True)) if a != b}
                assert differs in ({1, 8}, {7, 8}), (before, row)
                assert before[8] < row[8] and row[8][:10] <= day.isoformat()
                consent, now = meaning(before[7]), meaning(row[7])
                what = "email" if 1 in differs else "respelled" if consent == now else None
                changed[what or ("opt_in" if now else "opt_out")] += 1
        previous = current
    counts = report.entities["customers"]
    assert (first, unchanged, changed.total()) == (
        counts.first_deliveries,
        counts.unchanged_redeliveries,
        counts.changed_redeliveries,
    )
    assert first == SHOP["customers"] and changed == report.customer_changes
    assert min(report.customer_changes.values()) > 0
    assert all(str(r[0]).isdigit() for r in previous.values())


def test_report_counts_match_the_files(exported, delivered):
    _, report, report_path = exported
    assert json.loads(report_path.read_text()) == json.loads(report.to_json())
    first_snapshot = f"""(SELECT customer_id::DOUBLE::BIGINT AS customer, min({PARTITION}) AS day
                          FROM customers GROUP BY ALL)"""
    for entity, counts in report.entities.items():
        [(rows, files)] = query(
            delivered, f"SELECT count(*), count(DISTINCT filename) FROM {entity}"
        )
        assert (rows, files) == (counts.rows, counts.files), entity
        assert rows == (
            counts.first_deliveries + counts.unchanged_redeliveries + counts.changed_redeliveries
        )
        if entity == "customers":
            assert counts.late == counts.early == 0
            continue
        happened = f"left({TIMES[entity]}::VARCHAR, 10)::DATE"
        # Late: delivered in a partition after the day it happened; a refund is not late but
        # a re-delivery (its updated_at is its own).
        first_delivery = "updated_at = ordered_at" if entity == "orders" else "true"
        [(late, early)] = query(
            delivered,
            f"""SELECT count(*) FILTER (WHERE {happened} < {PARTITION} AND {first_delivery}),
                       count(*) FILTER (WHERE {PARTITION} < s.day)
                FROM {entity} JOIN {first_snapshot} s
                  ON s.customer = {entity}.customer_id::DOUBLE::BIGINT""",
        )
        assert late == counts.late > 0, entity
        assert early == counts.early, entity
    assert min(report.entities[e].early for e in ("orders", "email_events", "web_events")) > 0

    # A completed order is re-delivered refunded 1-10 partitions later, at most once.
    [refunds] = query(
        delivered,
        f"""SELECT count(*), count(*) FILTER (WHERE {PARTITION} - n.first_day BETWEEN 1 AND 10
                                             AND updated_at::DATE = {PARTITION})
            FROM orders JOIN (SELECT order_id, min({PARTITION}) AS first_day, count(*) AS copies
                              FROM orders GROUP BY ALL) n USING (order_id)
            WHERE updated_at > ordered_at""",
    )
    assert refunds[0] == refunds[1] == report.entities["orders"].changed_redeliveries > 0
    copies = query(delivered, "SELECT DISTINCT count(*) FROM orders GROUP BY order_id ORDER BY 1")
    assert copies == [(1,), (2,)]
    statuses = query(
        delivered,
        """SELECT DISTINCT a.status FROM orders a JOIN orders b USING (order_id)
           WHERE b.updated_at > a.updated_at""",
    )
    assert statuses == [("completed",)]

    early_unsubscribes = query(
        delivered,
        f"""SELECT count(*) FROM email_events e JOIN {first_snapshot} s
              ON s.customer = e.customer_id::DOUBLE::BIGINT
            WHERE event_type IN ('group_unsubscribe', 'Unsubscribed') AND {PARTITION} < s.day""",
    )
    assert early_unsubscribes == [(report.early_unsubscribes,)] and report.early_unsubscribes > 0


def tree_digest(folder: Path) -> str:
    """sha256 over every file's path and sha256, in path order."""
    lines = [
        f"{path.relative_to(folder)} {hashlib.sha256(path.read_bytes()).hexdigest()}\n"
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


# Of `segflow generate --customers 200 --days 30 --end-date 2026-06-30 --seed 5` as written
# before --as-exported existed (pyarrow 25.0.1: another pyarrow may write other Parquet bytes).
PLAIN_DIGEST = "931778764b11cfbac3cbba39933869dc7bf9b1fcb09c3f14f60acfaeacc0bb1c"


def test_without_the_option_the_output_is_byte_identical(tmp_path: Path):
    shop = ["--customers", "200", "--days", "30", "--end-date", "2026-06-30", "--seed", "5"]
    main(["generate", *shop, "--out", str(tmp_path / "plain"), "--quiet"])
    assert tree_digest(tmp_path / "plain") == PLAIN_DIGEST


def test_cli_writes_what_the_api_writes(exported, tmp_path: Path, capsys):
    landing, report, report_path = exported
    shop = ["--customers", "3000", "--days", "90", "--end-date", "2026-06-30", "--seed", "3"]
    main(
        ["generate", *shop, "--as-exported", "--out", str(tmp_path / "landing")]
        + ["--delivery-report", str(tmp_path / "report.json"), "--quiet"]
    )
    assert tree_digest(tmp_path / "landing") == tree_digest(landing)  # same seed, same bytes
    assert (tmp_path / "report.json").read_text() == report_path.read_text()
    printed = capsys.readouterr().out
    assert "wrote 3,000 customers as exports, 2026-04-02 .. 2026-06-30" in printed
    orders = report.entities["orders"]
    assert f"  orders {orders.files:>18,}{orders.rows:>12,}" in printed
    for wrong, message in (
        (["--increment", "--as-exported"], "--as-exported: not used with --increment"),
        (["--end-date", "2026-06-30", "--snapshot-every-days", "3"], "only with --as-exported"),
    ):
        with pytest.raises(SystemExit):
            main(["generate", *wrong, "--out", str(tmp_path / "refused")])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def contract_type(name: str) -> str:
    return name if name in EMAIL_EVENT_TYPES else EMAIL_EVENT_SYNONYMS[spelling(name)]


def test_the_exports_deliver_the_same_shop_as_generate(delivered, plain: Path):
    """Each row of the plain shop is delivered once as it was (ids as integers, timestamps as
    text), and nothing else but customers' and orders' later versions."""
    iso = "strftime({}, '%Y-%m-%dT%H:%M:%S.%fZ')"
    number = "100000 + substr(customer_id, 2)::BIGINT"
    shop = {
        "customers": f"""SELECT {number}, email, {iso.format("signup_at")}, country, birth_year,
                                gender, acquisition_channel, email_opt_in::VARCHAR FROM t""",
        "orders": f"""SELECT substr(order_id, 2)::BIGINT, {number}, ordered_at, amount, items,
                             category, status FROM t""",
        "email_events": f"""SELECT event_id, {number}, campaign_id, event_type,
                                   {iso.format("occurred_at")}, device FROM t""",
        "web_events": f"""SELECT event_id, {number}, session_id, event_type,
                                 {iso.format("occurred_at")}, device, category FROM t""",
        "reviews": f"SELECT review_id, {number}, {iso.format('created_at')}, rating, text FROM t",
    }
    as_delivered = {
        "customers": """SELECT customer_id::BIGINT, email, signup_at, country,
                               birth_year::BIGINT, gender, acquisition_channel, email_opt_in
                        FROM customers QUALIFY row_number() OVER (PARTITION BY customer_id
                                                                  ORDER BY filename) = 1""",
        "orders": """SELECT * EXCLUDE (filename, updated_at) FROM orders
                     WHERE updated_at = ordered_at""",
        "email_events": """SELECT event_id, customer_id::DOUBLE::BIGINT, campaign_id,
                                  event_type, occurred_at, device FROM email_events""",
        "web_events": "SELECT * EXCLUDE (filename) FROM web_events",
        "reviews": """SELECT review_id, customer_id::BIGINT, created_at, rating::BIGINT, text
                      FROM reviews""",
    }
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        for entity, sql in shop.items():
            con.execute(
                f"CREATE OR REPLACE VIEW t AS SELECT * FROM read_parquet('{plain}/{entity}/*/*.parquet')"
            )
            expected = sorted(con.execute(sql).fetchall(), key=str)
            got = query(delivered, as_delivered[entity])
            if entity == "email_events":
                got = [(*row[:3], contract_type(row[3]), *row[4:]) for row in got]
            assert sorted(got, key=str) == expected, entity


@pytest.mark.slow  # a daily ingest for every day of the delivery
def test_a_delivery_as_exported_loads_day_by_day_with_nothing_lost(exported, tmp_path):
    """The loader on the whole delivery, a daily run at a time: every row is loaded,
    unchanged, held or rejected, the held ones load once their customer arrives, and raw keeps
    exactly the versions the generator changed."""
    from ml.config import load_settings
    from ml.ingest.loader import ingest_landing

    landing, report, _ = exported
    settings = load_settings(
        {"SEGFLOW_DATA_DIR": str(tmp_path / "data"), "SEGFLOW_LANDING_DIR": str(landing)}
    )
    day = report.first_day
    while day <= report.last_day:
        # The run for a day loads its partition the next morning.
        ingest_landing(settings, as_of=day, loaded_at=dt.datetime.combine(day, dt.time(23, 59)))
        day += dt.timedelta(days=1)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        counts = {
            entity: (rows, loaded, unchanged, held, rejected)
            for entity, rows, loaded, unchanged, held, rejected in con.execute(
                """SELECT entity, sum(rows_in_file), sum(rows_loaded), sum(rows_unchanged),
                          sum(rows_held), sum(rows_rejected) FROM raw.loaded_files GROUP BY 1"""
            ).fetchall()
        }
        versions = dict(
            con.execute(
                """SELECT 'customers', count(*) FROM raw.customer_versions
                   UNION ALL SELECT 'orders', count(*) FROM raw.order_versions"""
            ).fetchall()
        )
        (held_now,) = con.execute("SELECT count(*) FROM quarantine.held_rows").fetchone()
        (bad_files,) = con.execute("SELECT count(*) FROM quarantine.files").fetchone()
    assert bad_files == 0
    for entity, delivered in report.entities.items():
        rows, loaded, unchanged, held, rejected = counts[entity]
        assert rows == delivered.rows, entity
        assert loaded + unchanged + held + rejected == rows, entity  # nothing lost
        assert rejected == 0, entity
    # Customers: a new version for each change the generator made, none for a respelling.
    respelled = report.customer_changes["respelled"]
    changed = report.entities["customers"].changed_redeliveries - respelled
    assert versions["customers"] == report.entities["customers"].first_deliveries + changed
    # Orders: the refunds are second versions.
    orders = report.entities["orders"]
    assert versions["orders"] == orders.first_deliveries + orders.changed_redeliveries
    # Early rows waited for their customers and all of them have loaded by the last day.
    assert held_now == 0
    early = sum(e.early for e in report.entities.values())
    assert early > 0 and report.early_unsubscribes > 0
