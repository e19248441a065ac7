"""The drift statistics (ml/monitoring/drift.py) against textbook computations."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from ml.monitoring import drift


def test_psi_is_the_textbook_sum_and_zero_for_equal_shares():
    reference = np.array([0.5, 0.3, 0.2])
    current = np.array([0.4, 0.4, 0.2])
    expected = (0.4 - 0.5) * np.log(0.4 / 0.5) + (0.4 - 0.3) * np.log(0.4 / 0.3)
    assert drift.psi(reference, current) == pytest.approx(expected)
    assert drift.psi(reference, reference) == 0.0
    # An emptied bin counts as the floor share, so the index stays finite and large.
    assert 0.5 < drift.psi(np.array([0.5, 0.5]), np.array([1.0, 0.0])) < 10


def test_ks_against_the_reference_quantiles_matches_the_exact_two_sample_statistic():
    rng = np.random.default_rng(3)
    reference = pd.Series(rng.normal(0, 1, 50_000))
    profile = drift.column_profile(reference)
    for shift in (0.0, 0.1, 0.5):
        current = rng.normal(shift, 1, 20_000)
        exact = ks_2samp(reference, current).statistic
        measured = drift.column_drift(profile, pd.Series(current)).ks
        # 1,001 quantiles stand in for the reference: off by at most a thousandth, plus ties.
        assert measured == pytest.approx(exact, abs=0.002), shift


def test_ks_on_counts_with_ties_matches_the_exact_statistic():
    rng = np.random.default_rng(4)
    reference = pd.Series(rng.poisson(1.0, 30_000))
    current = rng.poisson(0.6, 10_000)
    exact = ks_2samp(reference, current).statistic
    assert drift.column_drift(drift.column_profile(reference), pd.Series(current)).ks == (
        pytest.approx(exact, abs=0.002)
    )


def test_numeric_bins_are_fixed_on_the_reference_deciles_with_a_missing_bin():
    reference = pd.Series([float(v) for v in range(100)] + [np.nan] * 25)
    profile = drift.column_profile(reference)
    assert len(profile["edges"]) == 9
    assert profile["shares"][:-1] == pytest.approx([0.08] * 10)
    assert profile["shares"][-1] == pytest.approx(0.2)
    # Every current value below the reference's first decile: one bin holds them all.
    result = drift.column_drift(profile, pd.Series([-5.0] * 80 + [np.nan] * 20))
    expected_shares = np.array([0.8] + [0.0] * 9 + [0.2])
    assert result.psi == pytest.approx(drift.psi(np.array(profile["shares"]), expected_shares))
    assert (result.current_missing_share, result.reference_missing_share) == (0.2, 0.2)


def test_categories_unseen_in_the_reference_share_one_bin_and_booleans_are_categories():
    profile = drift.column_profile(pd.Series(["a"] * 60 + ["b"] * 40))
    assert profile == {"type": "categorical", "categories": ["a", "b"], "shares": [0.6, 0.4, 0, 0]}
    result = drift.column_drift(profile, pd.Series(["a"] * 50 + ["c"] * 25 + [None] * 25))
    assert result.ks is None
    assert result.psi == pytest.approx(
        drift.psi(np.array([0.6, 0.4, 0, 0]), np.array([0.5, 0.0, 0.25, 0.25]))
    )
    flags = drift.column_profile(pd.Series([True, False, True, True]))
    assert flags["categories"] == ["false", "true"]


def test_a_reference_profile_is_json_and_holds_no_row():
    rows = pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(500)],
            "orders_30d": np.arange(500) % 7,
            "country_code": ["DE", "FR"] * 250,
        }
    )
    profile = drift.reference_profile(
        rows, ["orders_30d", "country_code"], {"score": pd.Series(np.linspace(0, 1, 500))}, "test"
    )
    text = json.dumps(profile)
    assert "c1" not in text and "customer_id" not in text
    assert set(profile["features"]) == {"orders_30d", "country_code"}
    assert len(profile["scores"]["score"]["quantiles"]) == drift.KS_QUANTILES


def test_segment_mix_is_compared_with_the_mean_shares_of_the_previous_runs(tmp_path):
    import datetime as dt

    import duckdb

    from ml.config import load_settings
    from ml.monitoring.checks import segment_mix_drift
    from ml.warehouse import tables

    mixes = {  # date -> (persona shares over 100 customers, personas version)
        dt.date(2026, 7, 1): ({"a": 50, "b": 50}, 1),
        dt.date(2026, 7, 2): ({"a": 70, "b": 30}, 2),
        dt.date(2026, 7, 3): ({"a": 60, "b": 40}, 2),
        dt.date(2026, 7, 4): ({"a": 20, "b": 70, "c": 10}, 2),
    }
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    tables.ensure(con, *tables.PUBLISHED_SEGMENTS)
    for date, (counts, version) in mixes.items():
        for segment, n in counts.items():
            con.execute(
                f"""INSERT INTO published.customer_segments
                        (customer_id, as_of_date, segment, rfm_segment, personas_model_version)
                    SELECT 'c' || i, ?, ?, 'champions', ? FROM range({n}) t(i)""",
                [date, segment, version],
            )
    notes: list[str] = []
    thresholds = load_settings({}).monitoring
    rows = segment_mix_drift(con, dt.date(2026, 7, 4), {"personas": 2}, thresholds, notes)
    by_name = {row["name"]: row for row in rows}
    # Personas: only the earlier dates scored by the same version (2 July and 3 July).
    expected = drift.psi(np.array([0.65, 0.35, 0.0]), np.array([0.2, 0.7, 0.1]))
    assert by_name["segment"]["value"] == pytest.approx(expected)
    assert by_name["segment"]["level"] == "alert"
    assert (
        "2 previous published dates (2026-07-02 to 2026-07-03)"
        in by_name["segment"]["compared_with"]
    )
    # RFM segments: every earlier date, and the same single segment throughout.
    assert by_name["rfm_segment"]["value"] == 0.0
    assert "3 previous published dates" in by_name["rfm_segment"]["compared_with"]
    assert notes == []
