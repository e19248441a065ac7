"""The drift statistics (ml/drift.py) against textbook computations."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from ml import drift


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
