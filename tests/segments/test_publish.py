"""Write-audit-publish and exports, on staged rows made here (no models needed)."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ml.quality.gates
import ml.segments.publish
from ml.config import Settings
from ml.errors import PublishError, QualityGateFailed
from ml.ingest.raw_tables import ensure_raw_tables
from ml.segments.audiences import Audience, Filter
from ml.segments.publish import publish_segments
from ml.segments.score import stage_scored_segments
from ml.warehouse.connection import connect, table_exists

AS_OF = dt.date(2026, 6, 30)
CUSTOMERS = 3_000
REASONS = ["unsubscribed", "complaint", "hard_bounce", "no_opt_in", "invalid_address"]
AUDIENCES = [
    # Everyone with a score: suppressed customers match too, and must still never be exported.
    Audience("everyone", "", 0.2, (Filter("purchase_propensity", ">=", 0.0),)),
    Audience("buyers", "", 0.1, (Filter("segment", "in", ("Regular buyers",)),)),
    Audience("nobody", "", 0.1, (Filter("predicted_clv", ">", 1e9),)),
]


def scored_frame(seed: int) -> pd.DataFrame:
    """One date's scored rows as scoring leaves them (before holdouts)."""
    rng = np.random.default_rng(seed)
    ids = [f"C{i:06d}" for i in range(CUSTOMERS)]
    reason = np.where(rng.random(CUSTOMERS) < 0.3, rng.choice(REASONS, CUSTOMERS), None)
    churn = np.where(rng.random(CUSTOMERS) < 0.4, np.nan, rng.random(CUSTOMERS))

    def band(score):
        return np.where(score >= 0.8, "high", np.where(score >= 0.5, "medium", "low"))

    purchase, engagement = rng.random(CUSTOMERS), rng.random(CUSTOMERS)
    return pd.DataFrame(
        {
            "customer_id": ids,
            "as_of_date": AS_OF,
            "segment": rng.choice(["Regular buyers", "Dormant", "Bargain hunters"], CUSTOMERS),
            "rfm_segment": rng.choice(["Loyal", "Lost", "New"], CUSTOMERS),
            "purchase_propensity": purchase,
            "purchase_propensity_band": band(purchase),
            "churn_risk": churn,
            "churn_risk_band": np.where(np.isnan(churn), None, band(churn)),
            "engagement_propensity": engagement,
            "engagement_propensity_band": band(engagement),
            "predicted_clv": rng.gamma(2.0, 40.0, CUSTOMERS),
            "best_send_hour": rng.integers(0, 24, CUSTOMERS),
            "send_hour_source": "customer",
            "is_emailable": pd.isna(reason),
            "suppression_reason": reason,
            "personas_model_version": 1,
            "purchase_propensity_model_version": 2,
            "churn_risk_model_version": 3,
            "engagement_propensity_model_version": 4,
            "customer_value_model_version": 5,
        }
    )


def stage(settings: Settings, frame: pd.DataFrame) -> None:
    with connect(settings) as con:
        con.register("frame", frame)
        con.execute("CREATE OR REPLACE TEMP TABLE scored_segments AS SELECT * FROM frame")
        stage_scored_segments(con, AS_OF, AUDIENCES)


@pytest.fixture
def staged(settings: Settings) -> Settings:
    frame = scored_frame(seed=1)
    with connect(settings) as con:
        ensure_raw_tables(con)
        emails = pd.DataFrame(  # noqa: F841  (read by name in SQL)
            {
                "customer_id": frame.customer_id,
                "email": np.where(
                    frame.suppression_reason == "invalid_address",
                    "not-an-address",
                    frame.customer_id.str.lower() + "@example.com",
                ),
            }
        )
        con.execute(
            """INSERT INTO raw.customer_versions
                   (customer_id, email, email_opt_in, signup_at, _source_file, _source_row)
               SELECT customer_id, email, true, TIMESTAMP '2025-01-01', 'customers.csv', 0
               FROM emails"""
        )
    stage(settings, frame)
    return settings


def published_rows(settings: Settings) -> dict[str, list]:
    with connect(settings, read_only=True) as con:
        return {
            table: con.execute(
                f"SELECT * FROM published.{table} WHERE as_of_date = ? ORDER BY ALL", [AS_OF]
            ).fetchall()
            for table in ("customer_segments", "audience_members", "audience_definitions")
        }


def export_files(settings: Settings) -> dict[str, bytes]:
    folder = settings.exports_dir / AS_OF.isoformat()
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def test_exports_hold_only_emailable_treatment_members(staged: Settings):
    result = publish_segments(staged, AS_OF, run_id="run-1", gate_passed=True)
    folder = staged.exports_dir / AS_OF.isoformat()
    with connect(staged, read_only=True) as con:
        segments = con.execute(
            "SELECT * FROM published.customer_segments WHERE as_of_date = ?", [AS_OF]
        ).df()
        members = con.execute(
            "SELECT * FROM published.audience_members WHERE as_of_date = ?", [AS_OF]
        ).df()
    suppressed = set(segments.customer_id[~segments.is_emailable])
    assert len(suppressed) > 500 and set(segments.suppression_reason.dropna()) == set(REASONS)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["run_id"] == "run-1" and manifest["customers"] == CUSTOMERS
    assert set(manifest["audiences"]) == {"everyone", "buyers", "nobody"}

    for spec in AUDIENCES:
        path = folder / f"{spec.name}.csv"
        export = pd.read_csv(path, dtype=str, keep_default_na=False)
        chosen = members[members.audience == spec.name]
        treatment = set(chosen.customer_id[~chosen.is_holdout])
        assert set(export.customer_id) == treatment
        assert not set(export.customer_id) & suppressed
        assert not set(export.customer_id) & set(chosen.customer_id[chosen.is_holdout])
        assert list(export.customer_id) == sorted(export.customer_id)
        assert (export.email == export.customer_id.str.lower() + "@example.com").all()
        entry = manifest["audiences"][spec.name]
        assert entry["rows"] == entry["treatment"] == len(export)
        assert entry["holdout"] == int(chosen.is_holdout.sum())
        assert entry["sha256"] == ml.segments.publish.file_sha256(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The broad audience: every e-mailable customer, minus a holdout near its share.
    everyone = members[members.audience == "everyone"]
    assert len(everyone) == CUSTOMERS - len(suppressed)
    assert abs(everyone.is_holdout.mean() - 0.2) < 0.03
    assert manifest["audiences"]["nobody"]["rows"] == 0
    assert (folder / "nobody.csv").read_text().startswith("customer_id,email,segment")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    # Holdout flags on the segment rows agree with the members table.
    holdouts = {
        (a, c)
        for c, audiences in zip(segments.customer_id, segments.holdout_audiences, strict=True)
        for a in audiences
    }
    held = members[members.is_holdout]
    assert holdouts == set(zip(held.audience, held.customer_id, strict=True))
    assert result["rows"] == CUSTOMERS and result["emailable"] == CUSTOMERS - len(suppressed)
    assert Path(result["exports_dir"]) == folder and Path(result["manifest"]).is_file()
    assert result["model_versions"] == {
        "personas": 1,
        "purchase_propensity": 2,
        "churn_risk": 3,
        "engagement_propensity": 4,
        "customer_value": 5,
    }


def test_republishing_a_date_is_byte_identical(staged: Settings):
    publish_segments(staged, AS_OF, run_id="run-1", gate_passed=True)
    rows, files = published_rows(staged), export_files(staged)
    stage(staged, scored_frame(seed=1))
    publish_segments(staged, AS_OF, run_id="run-2", gate_passed=True)

    assert published_rows(staged) == rows
    again = export_files(staged)
    assert (
        again.keys()
        == files.keys()
        == {"everyone.csv", "buyers.csv", "nobody.csv", "manifest.json"}
    )
    assert all(again[name] == files[name] for name in files if name.endswith(".csv"))
    manifests = [json.loads(f["manifest.json"]) for f in (files, again)]
    assert [m.pop("run_id") for m in manifests] == ["run-1", "run-2"]
    assert manifests[0] == manifests[1]
    with connect(staged, read_only=True) as con:
        log = con.execute(
            "SELECT run_id FROM published.publications ORDER BY published_at"
        ).fetchall()
    assert log == [("run-1",), ("run-2",)]


def _raise(*_args, **_kwargs):
    raise OSError("injected failure")


def _after(original):
    def wrapped(*args, **kwargs):
        original(*args, **kwargs)
        raise OSError("injected failure")

    return wrapped


@pytest.mark.parametrize("step", ["gate", "exports", "tables", "after_swap"])
def test_a_failure_between_staging_and_swap_leaves_the_previous_publication(
    staged: Settings, monkeypatch: pytest.MonkeyPatch, step: str
):
    publish_segments(staged, AS_OF, run_id="good", gate_passed=True)
    rows, files = published_rows(staged), export_files(staged)
    stage(staged, scored_frame(seed=2))  # new scores, new members

    if step == "gate":
        monkeypatch.setattr(
            ml.quality.gates,
            "run_segments_gate",
            lambda *_: (_ for _ in ()).throw(QualityGateFailed("injected gate failure")),
        )
    elif step == "exports":
        monkeypatch.setattr(ml.segments.publish, "file_sha256", _raise)
    elif step == "tables":
        monkeypatch.setattr(
            ml.segments.publish,
            "_replace_published_rows",
            _after(ml.segments.publish._replace_published_rows),
        )
    else:
        monkeypatch.setattr(
            ml.segments.publish, "_swap_exports", _after(ml.segments.publish._swap_exports)
        )

    with pytest.raises((OSError, QualityGateFailed), match="injected"):
        publish_segments(staged, AS_OF, run_id="bad", gate_passed=step != "gate")

    assert published_rows(staged) == rows
    assert export_files(staged) == files
    assert [p.name for p in staged.exports_dir.iterdir()] == [AS_OF.isoformat()]
    with connect(staged, read_only=True) as con:
        assert con.execute("SELECT run_id FROM published.publications").fetchall() == [("good",)]


def test_a_failed_first_publication_leaves_nothing_behind(
    staged: Settings, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(
        ml.segments.publish, "_swap_exports", _after(ml.segments.publish._swap_exports)
    )
    with pytest.raises(OSError, match="injected"):
        publish_segments(staged, AS_OF, run_id="bad", gate_passed=True)
    assert list(staged.exports_dir.iterdir()) == []
    with connect(staged, read_only=True) as con:
        assert not table_exists(con, "published", "customer_segments")


def test_publishing_without_staged_rows_says_to_score_first(settings: Settings):
    with pytest.raises(PublishError, match="nothing staged for 2026-06-30: run scoring"):
        publish_segments(settings, AS_OF, run_id="r", gate_passed=True)


def test_an_interrupted_swap_is_repaired_by_the_next_publish(staged: Settings):
    publish_segments(staged, AS_OF, run_id="good", gate_passed=True)
    files = export_files(staged)
    final = staged.exports_dir / AS_OF.isoformat()
    # A process killed mid-swap: the old folder aside, a half-built one, nothing in place.
    final.rename(staged.exports_dir / f".{AS_OF}.dead.previous")
    (staged.exports_dir / f".{AS_OF}.dead2.building").mkdir()
    publish_segments(staged, AS_OF, run_id="again", gate_passed=True)
    assert [p.name for p in staged.exports_dir.iterdir()] == [AS_OF.isoformat()]
    assert {k: v for k, v in export_files(staged).items() if k != "manifest.json"} == {
        k: v for k, v in files.items() if k != "manifest.json"
    }


NO_CLICKS = "0 of 3,000 customers clicked an e-mail in the 30 days after 2026-05-01"


def without_engagement(frame: pd.DataFrame) -> pd.DataFrame:
    """Scored rows as scoring leaves them when the engagement model is not applicable."""
    return frame.assign(
        engagement_propensity=np.nan,
        engagement_propensity_band=None,
        engagement_propensity_model_version=pd.array([None] * len(frame), dtype="Int64"),
    )


def test_a_model_not_applicable_is_published_with_its_reason_and_its_filters_select_nobody(
    staged: Settings,
):
    from ml.models.registry import NotApplicable

    audiences = [
        *AUDIENCES,
        Audience("clickers", "", 0.1, (Filter("engagement_propensity", ">=", 0.0),)),
        Audience("not_low", "", 0.1, (Filter("engagement_propensity_band", "not in", ("low",)),)),
    ]
    with connect(staged) as con:
        con.register("frame", without_engagement(scored_frame(seed=1)))
        con.execute("CREATE OR REPLACE TEMP TABLE scored_segments AS SELECT * FROM frame")
        stage_scored_segments(
            con, AS_OF, audiences, [NotApplicable("engagement_propensity", NO_CLICKS, "2026-06-30")]
        )

    result = publish_segments(staged, AS_OF, run_id="run-1", gate_passed=True)

    manifest = json.loads(Path(result["manifest"]).read_text())
    assert manifest["not_applicable"] == {"engagement_propensity": NO_CLICKS}
    assert manifest["model_versions"] == {
        "personas": 1,
        "purchase_propensity": 2,
        "churn_risk": 3,
        "customer_value": 5,
    }
    with connect(staged, read_only=True) as con:
        assert con.execute("SELECT * FROM published.not_applicable_models").fetchall() == [
            (AS_OF, "engagement_propensity", NO_CLICKS, dt.date(2026, 6, 30))
        ]
    # A filter on the missing score matches nobody; the other audiences are as before.
    counts = {
        name: (entry["treatment"], entry["holdout"])
        for name, entry in manifest["audiences"].items()
    }
    assert counts["clickers"] == counts["not_low"] == (0, 0)
    assert counts["everyone"][0] > 1000
    export = pd.read_csv(Path(result["exports_dir"]) / "everyone.csv", dtype=str)
    assert (
        export["engagement_propensity"].isna().all() and export["purchase_propensity"].notna().all()
    )


def test_scores_without_a_model_version_are_published_only_for_a_model_not_applicable(
    staged: Settings,
):
    stage(staged, without_engagement(scored_frame(seed=1)))
    with pytest.raises(
        PublishError,
        match="hold 0 versions in engagement_propensity_model_version",
    ):
        publish_segments(staged, AS_OF, run_id="run-1", gate_passed=True)
