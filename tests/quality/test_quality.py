"""The run's gates over the warehouse: quarantine share, which rows are validated, sampling."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from ml.config import Settings
from ml.errors import BadFilesWaiting, QuarantineTooLarge, StaleData
from ml.ingest.loader import accept_bad_file, ingest_landing
from ml.quality.gates import (
    check_quarantine,
    new_rows,
    run_raw_gate,
)
from ml.warehouse.connection import connect
from tests.conftest import SAMPLE_END

LOAD_TIME = dt.datetime(2026, 7, 1, 6, 0)


def corrupt_amounts(landing: Path, day: dt.date, share: float) -> int:
    """Make `share` of a day's orders negative; returns how many."""
    path = landing / "orders" / f"date={day}" / "part-0.parquet"
    orders = pd.read_parquet(path)
    broken = int(len(orders) * share)
    orders.loc[: broken - 1, "amount"] = -orders.loc[: broken - 1, "amount"].abs() - 1
    orders.to_parquet(path)
    return broken


def test_a_clean_run_passes_every_raw_gate(settings: Settings, landing_copy: Path):
    report = ingest_landing(settings, as_of=SAMPLE_END, loaded_at=LOAD_TIME)
    reports = run_raw_gate(settings, SAMPLE_END, report.loaded_at)
    assert {r.suite for r in reports} == {
        f"raw_{e}" for e in ("customers", "orders", "email_events", "web_events", "reviews")
    }
    assert all(not r.failed_errors for r in reports)


def test_quarantine_above_the_threshold_stops_the_run_and_says_why(
    settings: Settings, landing_copy: Path
):
    # The daily run for the last date loads that day's files; 40% of its orders are broken.
    ingest_landing(settings, as_of=SAMPLE_END - dt.timedelta(days=1), loaded_at=LOAD_TIME)
    run_raw_gate(settings, SAMPLE_END - dt.timedelta(days=1), LOAD_TIME)
    broken = corrupt_amounts(landing_copy, SAMPLE_END, 0.4)
    report = ingest_landing(settings, as_of=SAMPLE_END, loaded_at=LOAD_TIME + dt.timedelta(days=1))
    assert broken > 0
    with pytest.raises(QuarantineTooLarge) as error:
        run_raw_gate(settings, SAMPLE_END, report.loaded_at)
    message = str(error.value)
    assert "quarantine above SEGFLOW_QUARANTINE_MAX_SHARE=5.0% for orders" in message
    assert f"{broken:,} amount: must be >= 0" in message


def test_quarantine_below_the_threshold_is_summarised_only(settings: Settings, landing_copy: Path):
    corrupt_amounts(landing_copy, SAMPLE_END, 0.4)
    lenient = dataclasses.replace(
        settings, quality=dataclasses.replace(settings.quality, quarantine_max_share=0.999)
    )
    ingest_landing(lenient, as_of=SAMPLE_END, loaded_at=LOAD_TIME)
    summary = check_quarantine(lenient)
    assert "orders: " in summary and "amount: must be >= 0" in summary


def test_the_gate_judges_every_file_no_gate_has_passed_whoever_loaded_it(
    settings: Settings, landing_copy: Path
):
    # `segflow ingest` (or a trigger refresh) loaded the files before the daily run.
    ingest_landing(settings, as_of=SAMPLE_END, loaded_at=LOAD_TIME)
    loaded = len(new_rows(settings, "orders"))
    assert loaded > 0
    # The daily run's own ingest finds nothing new, yet its gate judges those rows.
    rerun = ingest_landing(settings, as_of=SAMPLE_END, loaded_at=LOAD_TIME + dt.timedelta(hours=1))
    assert rerun.entities["orders"].files_loaded == 0
    reports = run_raw_gate(settings, SAMPLE_END, rerun.loaded_at)
    [orders] = [r for r in reports if r.suite == "raw_orders"]
    assert orders.rows_validated == loaded
    # Once passed, a file is not judged again; a new file is.
    assert new_rows(settings, "orders").empty


def test_a_failed_gate_fails_again_on_a_rerun(settings: Settings, landing_copy: Path):
    ingest_landing(settings, as_of=SAMPLE_END, loaded_at=LOAD_TIME)
    with connect(settings) as con:  # rows that break the contract got into raw somehow
        con.execute("UPDATE raw.order_versions SET amount = -1 WHERE _source_row = 1")
    for hours in (1, 2):
        with pytest.raises(Exception, match="raw_orders"):
            run_raw_gate(settings, SAMPLE_END, LOAD_TIME + dt.timedelta(hours=hours))


def test_stale_data_stops_the_run_even_without_new_files(settings: Settings, landing_copy: Path):
    ingest_landing(settings, as_of=SAMPLE_END, loaded_at=LOAD_TIME)
    run_raw_gate(settings, SAMPLE_END, LOAD_TIME)
    month_later = SAMPLE_END + dt.timedelta(days=30)
    nothing_new = ingest_landing(
        settings, as_of=month_later, loaded_at=LOAD_TIME + dt.timedelta(days=30)
    )
    assert sum(e.files_loaded for e in nothing_new.entities.values()) == 0
    with pytest.raises(StaleData, match="the newest order is from"):
        run_raw_gate(settings, month_later, nothing_new.loaded_at)
    publish_anyway = dataclasses.replace(
        settings, loading=dataclasses.replace(settings.loading, stale_data="publish")
    )
    run_raw_gate(publish_anyway, month_later, nothing_new.loaded_at)


def test_a_bad_file_stops_the_daily_gate_until_accepted_but_not_a_refresh(
    settings: Settings, landing_copy: Path
):
    bad = landing_copy / "orders" / f"date={SAMPLE_END}" / "broken.parquet"
    bad.write_bytes(b"PAR1 broken")
    report = ingest_landing(settings, as_of=SAMPLE_END, loaded_at=LOAD_TIME)
    name = f"orders/date={SAMPLE_END}/broken.parquet"
    assert report.bad_files == [name]
    run_raw_gate(settings, SAMPLE_END, LOAD_TIME, daily=False)  # a trigger refresh goes on
    with pytest.raises(BadFilesWaiting, match=f"{name}: cannot be parsed as PARQUET"):
        run_raw_gate(settings, SAMPLE_END, LOAD_TIME)
    accept_bad_file(settings, name, "test export, not needed")
    run_raw_gate(settings, SAMPLE_END, LOAD_TIME)


def test_large_row_sets_are_sampled_by_key(settings: Settings, landing_copy: Path):
    ingest_landing(settings, as_of=SAMPLE_END, loaded_at=LOAD_TIME)
    everything = new_rows(settings, "email_events")
    small = dataclasses.replace(
        settings,
        quality=dataclasses.replace(settings.quality, gate_sample_rows=len(everything) // 4),
    )
    sample = new_rows(small, "email_events")
    again = new_rows(small, "email_events")
    assert 0.1 * len(everything) < len(sample) < 0.45 * len(everything)
    assert set(sample.event_id) == set(again.event_id) <= set(everything.event_id)
