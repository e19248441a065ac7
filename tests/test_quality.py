"""The run's gates over the warehouse: quarantine share, which rows are validated, sampling."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from ml.config import Settings
from ml.ingest import ingest_landing
from ml.quality import QuarantineTooLarge, check_quarantine, new_rows, run_raw_gate
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
    report = ingest_landing(lenient, as_of=SAMPLE_END, loaded_at=LOAD_TIME)
    summary = check_quarantine(lenient, report.loaded_at)
    assert "orders: " in summary and "amount: must be >= 0" in summary


def test_the_gate_sees_this_runs_files_and_the_as_of_partition(
    settings: Settings, landing_copy: Path
):
    earlier = SAMPLE_END - dt.timedelta(days=5)
    first = ingest_landing(settings, as_of=earlier, loaded_at=LOAD_TIME)
    second = ingest_landing(settings, as_of=SAMPLE_END, loaded_at=LOAD_TIME + dt.timedelta(days=1))
    seen = new_rows(settings, "orders", SAMPLE_END, second.loaded_at)
    partitions = {Path(f).parent.name for f in seen._source_file}
    assert partitions == {f"date={earlier + dt.timedelta(days=d)}" for d in range(1, 6)}
    # A re-run with nothing new still validates its date's partition.
    rerun = ingest_landing(settings, as_of=earlier, loaded_at=LOAD_TIME + dt.timedelta(days=2))
    assert {
        Path(f).parent.name
        for f in new_rows(settings, "orders", earlier, rerun.loaded_at)._source_file
    } == {f"date={earlier}"}
    assert first.entities["orders"].rows_loaded > 0


def test_large_row_sets_are_sampled_by_key(settings: Settings, landing_copy: Path):
    report = ingest_landing(settings, as_of=SAMPLE_END, loaded_at=LOAD_TIME)
    everything = new_rows(settings, "email_events", SAMPLE_END, report.loaded_at)
    small = dataclasses.replace(
        settings,
        quality=dataclasses.replace(settings.quality, gate_sample_rows=len(everything) // 4),
    )
    sample = new_rows(small, "email_events", SAMPLE_END, report.loaded_at)
    again = new_rows(small, "email_events", SAMPLE_END, report.loaded_at)
    assert 0.1 * len(everything) < len(sample) < 0.45 * len(everything)
    assert set(sample.event_id) == set(again.event_id) <= set(everything.event_id)
