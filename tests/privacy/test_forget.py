"""The right to erasure end to end: a customer who went through training, a daily publication,
a trigger refresh and a readout is forgotten, and then not one byte of their id or address is
left under the data folder (warehouse, MLflow store, training sets, exports, reports, landing
files), while everyone else's published rows and exports stay as they were. The next daily run
and a re-delivery of the original landing files do not bring them back.

The warehouse is kept uncompressed (SEGFLOW_DUCKDB_UNCOMPRESSED), so that the byte search can
see values at all: it does find them before the erasure.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from ml.config import Settings, load_settings
from ml.errors import ErasureError
from ml.features.dbt import build_features
from ml.ingest.loader import ingest_landing
from ml.ingest.row_rules import ERASED_RULE
from ml.privacy.erasure import forget, forget_requested, rebuild_warehouse
from ml.privacy.pseudonyms import CUSTOMER_ID, EMAIL, pseudonym_key
from ml.segments.publish import publish_segments
from ml.segments.readout import readout
from ml.segments.score import score_customers
from ml.triggers.exports import refresh_now
from ml.warehouse.connection import connect
from tests.conftest import PROJECT_DIR, TRAINED_AS_OF

PUBLISHED_AS_OF = TRAINED_AS_OF - dt.timedelta(days=14)
"""Published and read out 7 days later: the landing data reaches TRAINED_AS_OF."""


def byte_hits(root: Path, needles: list[str]) -> dict[str, list[str]]:
    """Every file under `root` whose bytes contain a needle (case-insensitive)."""
    wanted = [needle.lower().encode() for needle in needles]
    hits: dict[str, list[str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        content = path.read_bytes().lower()
        found = [needle.decode() for needle in wanted if needle in content]
        if found:
            hits[path.relative_to(root).as_posix()] = found
    return hits


def exported_lines(exports: Path) -> dict[str, list[str]]:
    return {
        path.relative_to(exports).as_posix(): path.read_text().splitlines()
        for path in sorted(exports.rglob("*.csv"))
    }


def published_rows(settings: Settings) -> pd.DataFrame:
    with connect(settings, read_only=True) as con:
        return con.execute(
            "SELECT * FROM published.customer_segments ORDER BY as_of_date, customer_id"
        ).df()


@pytest.fixture
def shop(trained_settings: Settings, tmp_path: Path) -> Settings:
    """The trained shop copied whole (warehouse, MLflow store, training sets, landing files
    under the data folder, as in the default layout), its warehouse rewritten uncompressed."""
    data = tmp_path / "data"
    shutil.copytree(trained_settings.data_dir, data)
    shutil.copytree(trained_settings.landing_dir, data / "landing")
    settings = load_settings(
        {
            "SEGFLOW_DATA_DIR": str(data),
            "SEGFLOW_LANDING_DIR": str(data / "landing"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{data / 'mlflow' / 'mlflow.db'}",
            "SEGFLOW_DUCKDB_UNCOMPRESSED": "true",
            "SEGFLOW_AUDIENCES_PATH": str(PROJECT_DIR / "audiences.yml"),
        }
    )
    with connect(settings) as con:
        rebuild_warehouse(con, settings.warehouse_path)
    return settings


def land_order(settings: Settings, customer: str, at: dt.datetime) -> None:
    folder = settings.landing_dir / "orders" / f"date={at.date()}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "web-shop.csv").write_text(
        "order_id,customer_id,ordered_at,amount,category,status\n"
        f"O-NEW-1,{customer},{at:%Y-%m-%d %H:%M:%S},42.00,shoes,completed\n"
        # Rejected (no amount): quarantine keeps the row under the customer's pseudonym.
        f"O-NEW-2,{customer},{at:%Y-%m-%d %H:%M:%S},,shoes,completed\n"
    )


@pytest.mark.slow
def test_a_forgotten_customer_is_gone_down_to_the_bytes(shop: Settings, tmp_path: Path) -> None:
    build_features(shop, PUBLISHED_AS_OF)
    score_customers(shop, PUBLISHED_AS_OF)
    publish_segments(shop, PUBLISHED_AS_OF, run_id="daily", gate_passed=True)
    with connect(shop, read_only=True) as con:
        customer, address, audience = con.execute(
            """SELECT s.customer_id, c.email, m.audience
               FROM published.customer_segments s
               JOIN published.audience_members m USING (as_of_date, customer_id)
               JOIN raw.customers c USING (customer_id)
               WHERE s.as_of_date = ? AND s.is_emailable AND NOT m.is_holdout
               ORDER BY s.customer_id LIMIT 1""",
            [PUBLISHED_AS_OF],
        ).fetchone()
    assert readout(shop, audience, PUBLISHED_AS_OF, window_days=7).treatment.customers > 0
    # A purchase an hour ago: the trigger refresh enters them as a recent buyer.
    original_landing = tmp_path / "original-landing"
    shutil.copytree(shop.landing_dir, original_landing)
    land_order(shop, customer, dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(hours=1))
    refresh = refresh_now(shop)
    with connect(shop, read_only=True) as con:
        assert (
            con.execute(
                "SELECT count(*) FROM published.trigger_members WHERE customer_id = ?", [customer]
            ).fetchone()[0]
            == 1
        )
    assert address in (Path(refresh["exports_dir"]) / "recent_buyer.csv").read_text()
    key = pseudonym_key(shop)
    rejected = "SELECT count(*) FROM quarantine.violations WHERE customer_key = ?"
    with connect(shop, read_only=True) as con:
        assert con.execute(rejected, [key.of(CUSTOMER_ID, customer)]).fetchone()[0] == 1

    before = byte_hits(shop.data_dir, [customer, address])
    assert "warehouse.duckdb" in before, "the byte search must be able to see the warehouse"
    assert any(path.startswith("exports/") for path in before)
    assert any(path.startswith("landing/") for path in before)
    others_rows = published_rows(shop).query("customer_id != @customer")
    others_lines = {
        name: [line for line in lines if customer not in line]
        for name, lines in exported_lines(shop.exports_dir).items()
    }

    # A person asks by address; the command line does it, as an operator would.
    erased = subprocess.run(
        [str(PROJECT_DIR / ".venv" / "bin" / "segflow"), "forget", "--email", address.upper()],
        env={**os.environ, **_environment(shop)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert erased.returncode == 0, erased.stderr
    assert customer not in erased.stdout + erased.stderr
    assert address not in erased.stdout + erased.stderr

    assert byte_hits(shop.data_dir, [customer, address]) == {}
    assert published_rows(shop).reset_index(drop=True).equals(others_rows.reset_index(drop=True))
    assert exported_lines(shop.exports_dir) == others_lines
    with connect(shop, read_only=True) as con:
        assert con.execute(rejected, [key.of(CUSTOMER_ID, customer)]).fetchone()[0] == 0
        logged = con.execute(
            "SELECT identities_requested, customers_found, rows_deleted FROM privacy.erasures"
        ).fetchall()
        hashes = set(con.execute("SELECT identity_hash FROM privacy.erased_identities").fetchall())
    assert logged[0][:2] == (1, 1) and '"raw.customer_versions": 1' in logged[0][2]
    assert {(key.of(CUSTOMER_ID, customer),), (key.of(EMAIL, address),)} <= hashes

    # The next daily run, then the shop delivers the original files again.
    build_features(shop, TRAINED_AS_OF)
    score_customers(shop, TRAINED_AS_OF)
    publish_segments(shop, TRAINED_AS_OF, run_id="next", gate_passed=True)
    shutil.rmtree(shop.landing_dir)
    shutil.copytree(original_landing, shop.landing_dir)
    report = ingest_landing(shop)
    assert report.entities["customers"].rows_rejected >= 1
    with connect(shop, read_only=True) as con:
        assert (
            con.execute(
                "SELECT count(*) FROM raw.customer_versions WHERE customer_id = ?", [customer]
            ).fetchone()[0]
            == 0
        )
        erased_rows = con.execute(
            "SELECT count(*), count(value), count(*) FILTER (WHERE record::VARCHAR <> '{}') "
            "FROM quarantine.violations WHERE rule = ?",
            [ERASED_RULE],
        ).fetchone()
    assert erased_rows[0] > 0 and erased_rows[1:] == (0, 0)
    shutil.rmtree(shop.landing_dir)  # the re-delivered copies are the shop's again
    assert byte_hits(shop.data_dir, [customer, address]) == {}


def _environment(settings: Settings) -> dict[str, str]:
    return {
        "SEGFLOW_DATA_DIR": str(settings.data_dir),
        "SEGFLOW_LANDING_DIR": str(settings.landing_dir),
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "SEGFLOW_DUCKDB_UNCOMPRESSED": "true",
    }


def test_erasure_requests_in_the_landing_folder_are_honoured_and_deleted(
    landing_copy: Path, settings: Settings
) -> None:
    ingest_landing(settings)
    with connect(settings, read_only=True) as con:
        (address,) = con.execute(
            "SELECT email FROM raw.customers ORDER BY customer_id LIMIT 1"
        ).fetchone()
    requests = landing_copy / "erasure_requests"
    requests.mkdir()
    (requests / "2026-07-01.csv").write_text(f"email,requested_at\n{address},2026-07-01\n")
    result = forget_requested(settings)
    assert result is not None and result.customers_found == 1 and result.complete
    assert not (requests / "2026-07-01.csv").exists()
    assert forget_requested(settings) is None
    with connect(settings, read_only=True) as con:
        assert (
            con.execute("SELECT count(*) FROM raw.customers WHERE email = ?", [address]).fetchone()[
                0
            ]
            == 0
        )


def test_a_request_file_without_identities_names_the_file_and_line(
    landing_copy: Path, settings: Settings
) -> None:
    ingest_landing(settings)
    requests = landing_copy / "erasure_requests"
    requests.mkdir()
    (requests / "batch.csv").write_text("customer_id,email\n,\n")
    with pytest.raises(ErasureError, match=r"batch.csv, line 2: neither customer_id nor email"):
        forget_requested(settings)
    assert (requests / "batch.csv").exists()


def test_freed_blocks_keep_deleted_values_until_the_file_is_rebuilt(tmp_path: Path) -> None:
    """Why forget rebuilds the file: DuckDB leaves deleted rows' bytes in freed blocks."""
    path = tmp_path / "w.duckdb"
    con = duckdb.connect(str(path))
    con.execute("SET force_compression = 'uncompressed'")
    con.execute(
        "CREATE TABLE t AS SELECT 'person' || i || '@example.org' AS email FROM range(50000) r(i)"
    )
    con.execute("CHECKPOINT")
    con.execute("DELETE FROM t WHERE email = 'person4242@example.org'")
    con.execute("CHECKPOINT")
    assert b"person4242@example.org" in path.read_bytes()
    rebuild_warehouse(con, path)
    con.close()
    assert b"person4242@example.org" not in path.read_bytes()
    assert b"person4243@example.org" in path.read_bytes()
    assert duckdb.connect(str(path)).execute("SELECT count(*) FROM t").fetchone()[0] == 49999


def test_an_empty_request_is_refused(settings: Settings) -> None:
    with pytest.raises(ErasureError, match="nothing to forget"):
        forget(settings, set(), {" "})


def test_files_lose_exactly_the_forgotten_records(tmp_path: Path) -> None:
    """Every other record keeps its exact text (a quoted field may span lines); a longer id
    or address that contains the forgotten one is someone else's."""
    import gzip
    import json

    from ml.privacy.erasure_files import (
        Identities,
        redact_text,
        remove_csv_records,
        remove_json_lines,
        update_manifest,
    )

    forgotten = Identities(frozenset({"C7"}), frozenset({"jane@example.org"}))
    csv_text = (
        "customer_id,email,note\n"
        'C7,x@example.org,"two\nlines"\n'
        "C70,ajane@example.org,keep me\n"
        'C8,JANE@example.org ,""\n'
        'C9,c9@example.org,"quoted, with comma"\n'
    )
    plain = tmp_path / "audience.csv"
    plain.write_text(csv_text)
    zipped = tmp_path / "orders.csv.gz"
    zipped.write_bytes(gzip.compress(csv_text.encode()))
    lines = tmp_path / "events.jsonl"
    lines.write_text('{"customer_id": "C7"}\n{"customer_id": "C70"}\n')
    (tmp_path / "manifest.json").write_text(
        json.dumps({"audiences": {"a": {"file": "audience.csv", "rows": 4, "sha256": "old"}}})
    )
    expected = (
        "customer_id,email,note\n"
        "C70,ajane@example.org,keep me\n"
        'C9,c9@example.org,"quoted, with comma"\n'
    )

    assert remove_csv_records(plain, forgotten) == 2
    assert plain.read_text() == expected
    assert remove_csv_records(zipped, forgotten) == 2
    assert gzip.decompress(zipped.read_bytes()).decode() == expected
    assert remove_json_lines(lines, forgotten) == 1
    assert lines.read_text() == '{"customer_id": "C70"}\n'
    update_manifest(tmp_path, {"audience.csv": 2}, dt.datetime(2026, 12, 1, 9))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["audiences"]["a"]["rows"] == 2
    assert manifest["audiences"]["a"]["sha256"] == hashlib.sha256(plain.read_bytes()).hexdigest()
    assert manifest["erasures"] == [
        {"erased_at": "2026-12-01T09:00:00", "rows_removed": {"audience.csv": 2}}
    ]
    report = tmp_path / "report.html"
    report.write_text("<td>C7</td><td>C70</td><td>Jane@Example.org</td>")
    assert redact_text(report, forgotten) == 2
    assert report.read_text() == "<td>[erased]</td><td>C70</td><td>[erased]</td>"
