"""Audience files: validation that names the audience and field, filters, stable holdouts."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from ml.config import PROJECT_DIR
from ml.errors import AudienceError
from ml.segments.audiences import build_members, load_audiences

AS_OF = dt.date(2026, 6, 30)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "audiences.yml"
    path.write_text(text)
    return path


def audience(filters: str, name: str = "spring", share: str = "0.1") -> str:
    return f"audiences:\n  - name: {name}\n    holdout_share: {share}\n    filters: {filters}\n"


def reference_fraction(audience_name: str, customer_id: str) -> float:
    """The documented holdout rule, computed independently of the SQL."""
    digest = hashlib.md5(f"{audience_name}:{customer_id}".encode()).hexdigest()
    return int(digest[:8], 16) / 2**32


def segments_frame(customers: int, seed: int, as_of: dt.date = AS_OF) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "customer_id": [f"C{i:07d}" for i in range(customers)],
            "as_of_date": as_of,
            "segment": rng.choice(["Regular buyers", "Dormant", "New customers"], customers),
            "purchase_propensity": rng.random(customers),
            "churn_risk": np.where(rng.random(customers) < 0.3, np.nan, rng.random(customers)),
            "is_emailable": rng.random(customers) < 0.9,
        }
    )


def members(frame: pd.DataFrame, audiences) -> pd.DataFrame:
    with duckdb.connect() as con:
        con.register("frame", frame)
        con.execute("CREATE TEMP TABLE segments AS SELECT * FROM frame")
        build_members(con, audiences, "segments", "members")
        return con.execute("SELECT * FROM members ORDER BY audience, customer_id").df()


def test_the_default_audience_file_is_valid():
    audiences = load_audiences(PROJECT_DIR / "audiences.yml")
    assert {a.name for a in audiences} == {"vip_offer", "win_back", "second_order", "browse_to_buy"}
    assert all(0 < a.holdout_share < 1 and a.filters for a in audiences)


def test_shorthands_and_operators_become_filters(tmp_path: Path):
    path = write(
        tmp_path,
        audience("{segment: [Dormant], rfm_segment: Lost, churn_risk: {'>=': 0.2, '<': 0.9}}"),
    )
    (parsed,) = load_audiences(path)
    assert [(f.column, f.operator, f.value) for f in parsed.filters] == [
        ("segment", "in", ("Dormant",)),
        ("rfm_segment", "==", "Lost"),
        ("churn_risk", ">=", 0.2),
        ("churn_risk", "<", 0.9),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("audiences:\n  - name: x\n   holdout_share: [", "not valid YAML at line 3"),
        ("audiences: {}", "expected a top-level 'audiences:' list"),
        (
            audience("{segmnt: [Dormant]}"),
            "audience 'spring': field 'filters'.segmnt: unknown column",
        ),
        (
            audience("{segment: [Loyal high spender]}"),
            "audience 'spring': field 'filters'.segment: 'Loyal high spender' is not a value of segment",
        ),
        (audience("{purchase_propensity: {'=>': 0.6}}"), "unknown operator '=>'"),
        (audience("{purchase_propensity: {'>=': high}}"), "expected a number, got 'high'"),
        (audience("{purchase_propensity: {'>=': 60}}"), "is a probability, 60 is not in [0, 1]"),
        (audience("{segment: {'>=': Dormant}}"), "'>=' compares numbers; segment is text"),
        (audience("{best_send_hour: 24}"), "expected an hour 0..23"),
        (audience("{segment: {in: []}}"), "'in' needs a non-empty list"),
        (audience("{segment: [Dormant]}", share="1.0"), "field 'holdout_share': expected a share"),
        (audience("{segment: [Dormant]}", name="'VIP offer!'"), "field 'name': 'VIP offer!'"),
        (audience("[]"), "audience 'spring': field 'filters': expected a mapping"),
        (
            audience("{segment: [Dormant]}") + "    audience_size: 10\n",
            "field 'audience_size': unknown field",
        ),
        (
            audience("{segment: [Dormant]}") + audience("{segment: [Dormant]}", name="Spring")[11:],
            "audience 'Spring': field 'name': used twice",
        ),
    ],
)
def test_a_broken_audience_file_names_the_file_audience_and_field(
    tmp_path: Path, text: str, expected: str
):
    path = write(tmp_path, text)
    with pytest.raises(AudienceError) as error:
        load_audiences(path)
    assert str(error.value).startswith(f"{path}: ")
    assert expected in str(error.value)


def test_a_missing_file_says_which_and_how_to_point_elsewhere(tmp_path: Path):
    with pytest.raises(AudienceError, match="audience file not found.*SEGFLOW_AUDIENCES_PATH"):
        load_audiences(tmp_path / "nope.yml")


def test_members_are_emailable_customers_matching_every_filter(tmp_path: Path):
    frame = segments_frame(2_000, seed=1)
    path = write(
        tmp_path,
        audience("{segment: {not in: [Dormant]}, churn_risk: {'>=': 0.5}}", share="0"),
    )
    found = members(frame, load_audiences(path))
    expected = frame[
        frame.is_emailable & (frame.segment != "Dormant") & (frame.churn_risk >= 0.5)
    ].customer_id
    assert sorted(found.customer_id) == sorted(expected)
    assert not found.is_holdout.any()  # share 0: everyone is treated
    # Customers without a churn risk (inactive) never match a churn filter.
    assert frame.set_index("customer_id").loc[found.customer_id].churn_risk.notna().all()


def test_holdout_shares_are_within_a_point_stable_and_the_documented_hash(tmp_path: Path):
    path = write(
        tmp_path,
        audience("{purchase_propensity: {'>=': 0}}", name="ten", share="0.10")
        + audience("{purchase_propensity: {'>=': 0}}", name="quarter", share="0.25")[11:],
    )
    audiences = load_audiences(path)
    frame = segments_frame(20_000, seed=2).assign(is_emailable=True)
    first = members(frame, audiences)
    for spec in audiences:
        chosen = first[first.audience == spec.name]
        assert len(chosen) == 20_000
        assert abs(chosen.is_holdout.mean() - spec.holdout_share) < 0.01
        reference = [
            reference_fraction(spec.name, c) < spec.holdout_share for c in chosen.customer_id
        ]
        assert chosen.is_holdout.tolist() == reference

    # A second run (another day: new scores, some customers gone) keeps everyone on their side.
    later = segments_frame(20_000, seed=3, as_of=AS_OF + dt.timedelta(days=1)).assign(
        is_emailable=True
    )
    second = members(later.iloc[5_000:], audiences)
    joined = first.merge(second, on=["audience", "customer_id"], suffixes=("_1", "_2"))
    assert len(joined) == 2 * 15_000
    assert (joined.is_holdout_1 == joined.is_holdout_2).all()
