"""Safe exports: the spreadsheet formula rule on every CSV segflow writes, and the address rule
that keeps an address which is not a plain address from being e-mailed (real DuckDB, no mocks)."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from ml.config import Settings
from ml.contract import PLAIN_ADDRESS_PATTERN
from ml.csv_exports import (
    FORMULA_PREFIXES,
    FORMULA_RULE,
    STARTS_LIKE_A_FORMULA,
    WrittenCsv,
    write_csv,
    write_frame_csv,
)
from ml.features.dbt import run_dbt
from ml.ingest.raw_tables import ensure_raw_tables
from ml.segments.consent import create_current_suppressions, is_plain_address_sql
from ml.segments.publish import publish_segments
from ml.warehouse.connection import connect
from tests.segments.test_publish import AS_OF, scored_frame, stage, staged  # noqa: F401  (a fixture)
from tests.triggers.test_triggers import T0, land, order, published, read_export, refresh  # noqa: F401

FORMULA_ADDRESS = '=HYPERLINK("http://evil")@x.com'


def test_text_cells_that_start_like_a_formula_get_a_quote_and_numbers_stay(tmp_path: Path):
    con = duckdb.connect()
    con.execute(
        """CREATE TABLE cells AS SELECT * FROM (VALUES
            (1, '=HYPERLINK("http://evil","x")', -3.5, DATE '2026-06-30', -7),
            (2, '+1', 2.25, NULL, 0),
            (3, '-2', -0.5, DATE '2026-01-01', -1),
            (4, '@x', 0.0, NULL, NULL),
            (5, chr(9) || 'tabbed', 1.0, NULL, 3),
            (6, chr(13) || 'returned', 1.0, NULL, 3),
            (7, 'normal text, with a comma', NULL, NULL, 3),
            (8, 'a=b-c', -1e10, NULL, 3),
            (9, NULL, -0.001, NULL, 3)
        ) v(id, label, amount, day, n)"""
    )
    path = tmp_path / "cells.csv"

    written = write_csv(con, "SELECT * FROM cells WHERE id > ? ORDER BY id DESC", [0], path)

    assert written == WrittenCsv(rows=9, cells_neutralised=6)
    assert path.read_bytes() == (
        b"id,label,amount,day,n\n"
        b"9,,-0.001,,3\n"
        b"8,a=b-c,-10000000000.0,,3\n"
        b'7,"normal text, with a comma",,,3\n'
        b'6,"\'\rreturned",1.0,,3\n'
        b"5,'\ttabbed,1.0,,3\n"
        b"4,'@x,0.0,,\n"
        b"3,'-2,-0.5,2026-01-01,-1\n"
        b"2,'+1,2.25,,0\n"
        b'1,"\'=HYPERLINK(""http://evil"",""x"")",-3.5,2026-06-30,-7\n'
    )
    assert path.stat().st_mode & 0o077 == 0


def test_the_rule_is_exactly_the_formula_prefixes():
    """Of every ASCII character and a few others, those that start a formula and no other."""
    con = duckdb.connect()
    characters = [chr(code) for code in range(1, 128)] + ["é", "＝", "\u00a0"]
    starts = con.execute(
        f"""SELECT c FROM unnest(?::VARCHAR[]) AS t(c)
            WHERE regexp_matches(c || 'x', '{STARTS_LIKE_A_FORMULA}')""",
        [characters],
    ).fetchall()
    assert sorted(c for (c,) in starts) == sorted(FORMULA_PREFIXES)


def test_a_large_export_keeps_the_selects_order(tmp_path: Path):
    """The rule is a projection over the select: DuckDB writes the rows in the select's order
    even when it splits the work between threads."""
    con = duckdb.connect()
    con.execute(
        """CREATE TABLE big AS
           SELECT printf('C%07d', 500000 - i) AS id,
                  CASE WHEN i % 3 = 0 THEN '=x' WHEN i % 3 = 1 THEN '-y' ELSE 'z' END AS v,
                  -i AS n
           FROM range(500000) r(i)"""
    )
    path = tmp_path / "big.csv"
    written = write_csv(con, "SELECT * FROM big ORDER BY id", [], path)
    ids = [line.split(",", 1)[0] for line in path.read_text().splitlines()[1:]]
    assert written.rows == len(ids) == 500_000 and ids == sorted(ids)
    assert written.cells_neutralised == 500_000 - 500_000 // 3


def test_a_data_frame_is_written_through_the_same_rule(tmp_path: Path):
    """Model reports (ml/models/train.py): their columns, not the index; numbers as numbers."""
    frame = pd.DataFrame(
        {"feature": ["=cmd|' /C calc'!A0", "orders_365d"], "importance": [-0.25, np.nan]},
        index=[5, 6],
    )
    path = tmp_path / "report.csv"
    assert write_frame_csv(frame, path) == WrittenCsv(rows=2, cells_neutralised=1)
    assert path.read_text() == "feature,importance\n'=cmd|' /C calc'!A0,-0.25\norders_365d,\n"


PLAIN = [
    "a@b.co",
    "jane.doe+shop@mail.example.com",
    "o'brien@example.ie",
    "_x@sub.ex-ample.de",
    "customer1@example.com",
    "a=b@example.com",
]
NOT_PLAIN = [
    FORMULA_ADDRESS,
    "=1+1@example.com",
    "+1@example.com",
    "-a@example.com",
    "@a@example.com",
    "a..b@example.com",
    ".a@example.com",
    "a b@example.com",
    'a"b@example.com',
    "a@-x.com",
    "a@x.c",
    "a@[127.0.0.1]",
    "jürgen@example.de",
    "not-an-address",
    "",
    None,
]


def test_the_address_rule_reads_the_same_in_python_and_duckdb():
    con = duckdb.connect()
    addresses = PLAIN + NOT_PLAIN
    in_duckdb = [
        con.execute(f"SELECT {is_plain_address_sql('?')}", [address]).fetchone()[0]
        for address in addresses
    ]
    in_python = [bool(re.fullmatch(PLAIN_ADDRESS_PATTERN, a or "")) for a in addresses]
    expected = [True] * len(PLAIN) + [False] * len(NOT_PLAIN)
    assert in_duckdb == in_python == expected


def test_dbt_finds_a_formula_address_not_valid(settings: Settings):
    """The staging model the features come from, on raw rows: a formula address is no address,
    so scoring records `invalid_address` for the customer (ml/segments/score.py)."""
    with connect(settings) as con:
        ensure_raw_tables(con)
        con.executemany(
            """INSERT INTO raw.customer_versions
                   (customer_id, email, email_opt_in, signup_at, _source_file, _source_row)
               VALUES (?, ?, true, TIMESTAMP '2025-01-01', 'customers.csv', ?)""",
            [
                ["evil", FORMULA_ADDRESS, 1],
                ["quoted", "o'brien@example.ie", 2],
                ["plain", "Plain@Example.com ", 3],
            ],
        )
    result = run_dbt(
        settings,
        "show",
        "--inline",
        "select customer_id, has_valid_email "
        "from {{ ref('stg_shop__customer_versions') }} order by customer_id",
        "--output",
        "json",
        "--log-format",
        "json",
    )
    previews = [
        json.loads(json.loads(line)["data"]["preview"])
        for line in result.stdout.splitlines()
        if '"preview"' in line
    ]
    assert previews == [
        [
            {"customer_id": "evil", "has_valid_email": False},
            {"customer_id": "plain", "has_valid_email": True},
            {"customer_id": "quoted", "has_valid_email": True},
        ]
    ]


def test_a_formula_address_is_never_exported_and_the_manifest_states_the_rule(
    staged: Settings,  # noqa: F811
):
    frame = scored_frame(seed=1)
    ok = frame[frame.is_emailable]
    evil = ok.customer_id.iloc[0]
    # Segment names a spreadsheet would run: written quoted, and counted.
    frame.loc[ok.index[1:4], "rfm_segment"] = "=Lost"
    frame.loc[ok.index[4:6], "rfm_segment"] = "-New"
    stage(staged, frame)
    with connect(staged) as con:
        con.execute(
            "UPDATE raw.customer_versions SET email = ? WHERE customer_id = ?",
            [FORMULA_ADDRESS, evil],
        )
        create_current_suppressions(con, empty_opt_in_emailable=False)
        reason = con.execute(
            "SELECT reason FROM current_suppressions WHERE customer_id = ?", [evil]
        ).fetchone()

    result = publish_segments(staged, AS_OF, run_id="run-1", gate_passed=True)

    assert reason == ("invalid_address",)
    folder = Path(result["exports_dir"])
    exports = {p.name: p.read_text() for p in folder.glob("*.csv")}
    assert exports and not any(evil in text or "HYPERLINK" in text for text in exports.values())
    everyone = pd.read_csv(folder / "everyone.csv", dtype=str, keep_default_na=False)
    quoted = everyone.rfm_segment.isin(["'=Lost", "'-New"])
    assert quoted.sum() > 0 and not everyone.rfm_segment.isin(["=Lost", "-New"]).any()
    manifest = json.loads((folder / "manifest.json").read_text())
    rule = manifest["spreadsheet_formula_rule"]
    by_file = rule["cells_neutralised_by_file"]
    assert rule["applied"] is True and rule["rule"] == FORMULA_RULE
    assert by_file["everyone.csv"] == quoted.sum()
    assert set(by_file) == {"everyone.csv", "buyers.csv", "nobody.csv"}
    assert rule["cells_neutralised"] == sum(by_file.values())


def test_a_trigger_export_neither_mails_a_formula_address_nor_runs_a_formula(
    published: Settings,  # noqa: F811
):
    with connect(published, read_only=True) as con:
        ok = [
            row[0]
            for row in con.execute(
                """SELECT customer_id FROM published.customer_segments
                   WHERE is_emailable ORDER BY customer_id LIMIT 40"""
            ).fetchall()
        ]
    evil, buyers = ok[0], ok[1:]
    with connect(published) as con:
        con.execute(
            "UPDATE raw.customer_versions SET email = ? WHERE customer_id = ?",
            [FORMULA_ADDRESS, evil],
        )
    rows = [order(c, T0 - dt.timedelta(minutes=30)) for c in [evil, *buyers]]
    for row in rows[1:4]:
        row["category"] = "=cmd|' /C calc'!A0"
    land(published, "orders", "orders/date=2026-07-01/increment-1.csv", rows)

    manifest = refresh(published, T0)

    folder = Path(manifest["exports_dir"])
    recent = read_export(folder, "recent_buyer.csv")
    assert evil not in set(recent.customer_id) and len(recent) > 5
    assert not recent.event_detail.str.startswith("=").any()
    neutralised = int((recent.event_detail == "'=cmd|' /C calc'!A0").sum())
    assert neutralised > 0
    suppressions = read_export(folder, "suppressions.csv").set_index("customer_id")
    assert suppressions.reason[evil] == "invalid_address"
    rule = json.loads((folder / "manifest.json").read_text())["spreadsheet_formula_rule"]
    assert rule["applied"] is True and rule["rule"] == FORMULA_RULE
    assert rule["cells_neutralised_by_file"]["recent_buyer.csv"] == neutralised
    assert rule["cells_neutralised_by_file"]["suppressions.csv"] == 0
    assert rule["cells_neutralised"] == neutralised
