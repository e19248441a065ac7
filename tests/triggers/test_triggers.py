"""Trigger refreshes on a warehouse made here: a daily publication, then events loaded as files,
evaluated and published as delta exports (no Airflow, no models)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from ml.config import Settings
from ml.contract import ENTITY_BY_NAME, PLAIN_ADDRESS_PATTERN
from ml.errors import AudienceError, GateFailed, TriggerError
from ml.features.dbt import DBT_PROJECT_DIR, dbt_environment
from ml.segments.publish import publish_segments
from ml.triggers.exports import publish_refresh
from ml.triggers.refresh import load_triggers, stage_refresh
from ml.warehouse.connection import connect
from tests.segments.test_publish import AS_OF, export_files, staged  # noqa: F401  (a fixture)

T0 = dt.datetime(2026, 7, 1, 12, 0, 0)
TRIGGERS_YAML = """
audiences: []
triggers:
  - name: recent_buyer
    event: orders.completed
    holdout_share: 0.5
  - name: cart_abandoner
    event: web_events.add_to_cart
    unless_followed_by: [web_events.checkout, orders.completed]
    within_hours: 1
  - name: win_back_open
    event: email_events.open
    filters: {churn_risk_band: [high]}
    cooldown_hours: 0
"""


@pytest.fixture
def published(staged: Settings, tmp_path: Path, monkeypatch) -> Settings:  # noqa: F811
    """The daily publication of AS_OF (3,000 customers, some suppressed) and the triggers above."""
    publish_segments(staged, AS_OF, run_id="daily", gate_passed=True)
    config = tmp_path / "audiences.yml"
    config.write_text(TRIGGERS_YAML)
    publishing = staged.publishing.__class__(
        **{**staged.publishing.__dict__, "audiences_path": config}
    )
    return staged.__class__(**{**staged.__dict__, "publishing": publishing})


def segments(settings: Settings) -> pd.DataFrame:
    with connect(settings, read_only=True) as con:
        return con.execute("SELECT * FROM published.customer_segments ORDER BY customer_id").df()


def land(settings: Settings, entity: str, file: str, rows: list[dict], loaded_at=T0) -> None:
    """Rows as if ingest had loaded them from `file`."""
    frame = pd.DataFrame(rows).assign(_source_file=file)  # noqa: F841  (read in SQL)
    frame["_source_row"] = range(1, len(rows) + 1)
    with connect(settings) as con:
        con.execute(
            f"INSERT INTO raw.{ENTITY_BY_NAME[entity].table} BY NAME "
            "SELECT *, ?::TIMESTAMP AS _loaded_at FROM frame",
            [loaded_at],
        )
        con.execute(
            """INSERT INTO raw.loaded_files (entity, source_file, sha256, size_bytes, mtime_ns,
                   partition_date, rows_in_file, rows_loaded, rows_rejected, values_nullified,
                   loaded_at)
               VALUES (?, ?, ?, 1, 1, NULL, ?, ?, 0, 0, ?)""",
            [
                entity,
                file,
                hashlib.sha256(file.encode()).hexdigest(),
                len(rows),
                len(rows),
                loaded_at,
            ],
        )


def order(customer: str, at: dt.datetime, status: str | None = "completed") -> dict:
    return {
        "order_id": f"O-{customer}-{at:%H%M%S}",
        "customer_id": customer,
        "ordered_at": at,
        "amount": 10,
        "category": "shoes",
        "status": status,
    }


def web(customer: str, kind: str, at: dt.datetime) -> dict:
    return {
        "event_id": f"W-{customer}-{kind}-{at:%d%H%M%S}",
        "customer_id": customer,
        "session_id": "S1",
        "event_type": kind,
        "occurred_at": at,
        "category": "toys",
    }


def mail(customer: str, kind: str, at: dt.datetime) -> dict:
    return {
        "event_id": f"E-{customer}-{kind}-{at:%d%H%M%S}",
        "customer_id": customer,
        "campaign_id": "CMP-1",
        "event_type": kind,
        "occurred_at": at,
    }


def read_export(folder: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(folder / name, dtype=str, keep_default_na=False)


def holdout(trigger: str, customer: str) -> float:
    return int(hashlib.md5(f"{trigger}:{customer}".encode()).hexdigest()[:8], 16) / 2**32


def refresh(settings: Settings, at: dt.datetime) -> dict:
    summary = stage_refresh(settings, at)
    return publish_refresh(settings, summary["refresh_id"], run_id=f"run-{at:%H%M%S}")


def test_a_refresh_exports_exactly_the_customers_its_new_events_enter(published: Settings):
    rows = segments(published)
    ok = rows[rows.is_emailable]
    buyers = list(ok.customer_id[:40])
    suppressed = rows[~rows.is_emailable].customer_id.iloc[0]
    high = list(ok[ok.churn_risk_band == "high"].customer_id[-3:])
    low = ok[ok.churn_risk_band == "low"].customer_id.iloc[-1]
    carts = list(ok.customer_id[100:104])
    h = dt.timedelta(hours=1)
    land(
        published,
        "orders",
        "orders/date=2026-07-01/increment-1.csv",
        [order(c, T0 - 0.5 * h) for c in buyers]
        + [order(suppressed, T0 - h)]  # suppressed by the publication: never exported
        + [order(carts[3], T0 - 30 * h)]  # older than the lookback: no trigger
        + [order(carts[2], T0 - 1.5 * h, status="cancelled")],
    )
    land(
        published,
        "web_events",
        "web_events/date=2026-07-01/increment-1.csv",
        [
            web(carts[0], "add_to_cart", T0 - 2 * h),  # abandoned: no checkout within an hour
            web(carts[1], "add_to_cart", T0 - 2 * h),
            web(carts[1], "checkout", T0 - 1.5 * h),  # checked out: not abandoned
            web(carts[2], "add_to_cart", T0 - 2 * h),  # a cancelled order is no purchase
            web(carts[3], "add_to_cart", T0 - 0.5 * h),  # not an hour ago yet
        ],
    )
    land(
        published,
        "email_events",
        "email_events/date=2026-07-01/increment-1.csv",
        [mail(c, "open", T0 - 0.2 * h) for c in [*high, low]]
        + [mail(high[0], "unsubscribe", T0 - 0.1 * h)],  # opened, then left: suppressed
    )

    manifest = refresh(published, T0)

    folder = published.trigger_exports_dir / "20260701T120000Z"
    assert manifest["exports_dir"] == str(folder)
    recent = read_export(folder, "recent_buyer.csv")
    expected = sorted(c for c in buyers if holdout("recent_buyer", c) >= 0.5)
    assert 5 < len(expected) < len(buyers)  # the holdout is real, and not everyone
    assert list(recent.customer_id) == expected
    assert set(recent.columns) == {
        "customer_id", "email", "event_at", "event_detail", "segment", "rfm_segment",
        "best_send_hour",
    }  # fmt: skip
    assert (
        recent.event_at == (T0 - 0.5 * dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    ).all()
    assert list(recent.email) == [c.lower() + "@example.com" for c in expected]
    assert list(read_export(folder, "cart_abandoner.csv").customer_id) == [carts[0], carts[2]]
    assert list(read_export(folder, "win_back_open.csv").customer_id) == sorted(high[1:])
    suppressions = read_export(folder, "suppressions.csv")
    # The first refresh sends the whole list: the publication's suppressed and the new one.
    assert high[0] in set(suppressions.customer_id)
    assert set(rows[~rows.is_emailable].customer_id) <= set(suppressions.customer_id)
    assert "email" not in suppressions.columns
    assert suppressions.set_index("customer_id").reason[high[0]] == "unsubscribed"

    written = json.loads((folder / "manifest.json").read_text())
    assert written["triggers"]["recent_buyer"]["rows"] == len(expected)
    assert written["triggers"]["recent_buyer"]["holdout"] == len(buyers) - len(expected)
    assert written["new_files"] == 3  # the three increments
    assert (
        hashlib.sha256((folder / "cart_abandoner.csv").read_bytes()).hexdigest()
        == written["triggers"]["cart_abandoner"]["sha256"]
    )

    # A second refresh: nothing new but carts[3]'s deadline passing, and one new unsubscribe.
    land(
        published,
        "email_events",
        "email_events/date=2026-07-01/increment-2.csv",
        [mail(buyers[0], "unsubscribe", T0 + 0.5 * h)],
    )
    second = refresh(published, T0 + h)
    folder = Path(second["exports_dir"])
    assert list(read_export(folder, "cart_abandoner.csv").customer_id) == [carts[3]]
    assert list(read_export(folder, "recent_buyer.csv").customer_id) == []  # evaluated before
    assert list(read_export(folder, "suppressions.csv").customer_id) == [buyers[0]]

    # The daily exports published from now on leave the unsubscribed customers out too.
    publish_segments(published, AS_OF, run_id="daily-again", gate_passed=True)
    daily = export_files(published)
    everyone = pd.read_csv(
        published.exports_dir / AS_OF.isoformat() / "everyone.csv", dtype=str
    ).customer_id
    assert buyers[0] not in set(everyone) and high[0] not in set(everyone)
    daily_manifest = json.loads(daily["manifest.json"])
    entry = daily_manifest["audiences"]["everyone"]
    assert entry["rows"] == len(everyone) and entry["suppressed_since"] >= 1


def test_nothing_new_publishes_no_folder_and_an_old_refresh_is_refused(published: Settings):
    first = refresh(published, T0)  # the full suppression list
    assert Path(first["exports_dir"]).is_dir()
    quiet = refresh(published, T0 + dt.timedelta(minutes=5))
    assert quiet["exports_dir"] is None and quiet["members"] == quiet["suppressions"] == 0
    assert sorted(p.name for p in published.trigger_exports_dir.iterdir()) == ["20260701T120000Z"]
    with pytest.raises(TriggerError, match="published already"):
        stage_refresh(published, T0 + dt.timedelta(minutes=1))
    # Publishing the same refresh again (a retried task) changes nothing.
    again = publish_refresh(published, quiet["refresh_id"], run_id="retry")
    assert again["already_published"]


def test_consent_at_publish_time_wins_over_the_evaluation(published: Settings):
    ok = segments(published).query("is_emailable").customer_id
    buyer, other = ok.iloc[0], ok.iloc[1]
    land(
        published,
        "orders",
        "orders/date=2026-07-01/a.csv",
        [order(buyer, T0 - dt.timedelta(minutes=5)), order(other, T0 - dt.timedelta(minutes=5))],
    )
    summary = stage_refresh(published, T0)
    assert (
        summary["members"]["recent_buyer"]["treatment"]
        + summary["members"]["recent_buyer"]["holdout"]
        == 2
    )
    # Between the evaluation and the publish, a daily ingest loads the buyer's unsubscribe.
    land(
        published,
        "email_events",
        "email_events/date=2026-07-01/b.csv",
        [mail(buyer, "unsubscribe", T0 - dt.timedelta(minutes=1))],
    )
    manifest = publish_refresh(published, summary["refresh_id"], run_id="r")
    assert manifest["left_out_by_newer_consent"] == 1
    with connect(published, read_only=True) as con:
        members = con.execute("SELECT customer_id FROM published.trigger_members").fetchall()
    assert members == [(other,)]


def test_before_any_daily_publication_filters_match_nobody(staged: Settings, tmp_path: Path):  # noqa: F811
    config = tmp_path / "audiences.yml"
    config.write_text(TRIGGERS_YAML)
    settings = staged.__class__(
        **{
            **staged.__dict__,
            "publishing": staged.publishing.__class__(
                **{**staged.publishing.__dict__, "audiences_path": config}
            ),
        }
    )
    customers = ["C000001", "C000002"]
    land(
        settings,
        "orders",
        "orders/a.csv",
        [order(c, T0 - dt.timedelta(minutes=9)) for c in customers],
    )
    land(settings, "email_events", "email_events/a.csv", [mail(c, "open", T0) for c in customers])
    summary = stage_refresh(settings, T0)
    assert summary["daily_as_of"] is None
    staged_members = summary["members"]["recent_buyer"]
    assert staged_members["treatment"] + staged_members["holdout"] == 2
    assert "win_back_open" not in summary["members"]


def test_cooldown_keeps_a_customer_from_entering_twice(published: Settings):
    customer = segments(published).query("is_emailable").customer_id.iloc[5]
    land(published, "orders", "orders/a.csv", [order(customer, T0 - dt.timedelta(minutes=5))])
    refresh(published, T0)
    later = T0 + dt.timedelta(hours=2)
    land(published, "orders", "orders/b.csv", [order(customer, later - dt.timedelta(minutes=5))])
    second = stage_refresh(published, later)
    assert second["members"].get("recent_buyer") is None  # within the 24 h cooldown


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{name: x, event: email_events.unsubscribe}", "always suppress"),
        ("{name: x, event: web_events.add_to_cart, within_hours: 1}", "go together"),
        ("{name: x, event: orders.completed, filters: {segment: [Nobody]}}", "not a value"),
        ("{name: x, event: orders.completed, cooldown: 3}", "unknown field"),
        ("{name: suppressions, event: orders.completed}", "taken by the suppression list"),
        ("{name: x, event: orders.completed, lookback_hours: -1}", "number of hours"),
    ],
)
def test_a_bad_trigger_definition_names_the_file_trigger_and_field(
    tmp_path: Path, entry: str, message: str
):
    path = tmp_path / "audiences.yml"
    path.write_text(f"audiences: []\ntriggers:\n  - {entry}\n")
    with pytest.raises(AudienceError, match=message) as error:
        load_triggers(path)
    assert str(path) in str(error.value)


def test_the_project_triggers_load():
    names = [t.name for t in load_triggers(DBT_PROJECT_DIR.parent / "audiences.yml")]
    assert names == ["recent_buyer", "cart_abandoner", "browse_abandoner", "win_back_open"]


def test_the_address_rule_is_the_features_rule(settings: Settings):
    """dbt's address check reads segflow's one rule from the environment segflow gives it."""
    macros = (DBT_PROJECT_DIR / "macros" / "adapters" / "duckdb.sql").read_text()
    check = re.search(r"duckdb__is_valid_email.*?regexp_full_match\((.*?)\{%", macros, re.S)
    assert check and 'env_var("SEGFLOW_PLAIN_ADDRESS_PATTERN")' in check.group(1)
    assert dbt_environment(settings)["SEGFLOW_PLAIN_ADDRESS_PATTERN"] == PLAIN_ADDRESS_PATTERN


def test_the_gate_stops_a_refresh_that_would_mail_a_suppressed_customer(published: Settings):
    from ml.quality.gates import run_triggers_gate

    rows = segments(published)
    buyer = rows.query("is_emailable").customer_id.iloc[0]
    suppressed = rows.query("not is_emailable").customer_id.iloc[0]
    land(published, "orders", "orders/a.csv", [order(buyer, T0 - dt.timedelta(minutes=3))])
    summary = stage_refresh(published, T0)
    assert len(run_triggers_gate(published, summary["refresh_id"])) == 2  # members, suppressions
    with connect(published) as con:  # what a bug in the evaluation would stage
        con.execute(
            """INSERT INTO staging.trigger_members
               SELECT refresh_id, trigger, ?, event_at, event_detail, false, evaluated_at
               FROM staging.trigger_members LIMIT 1""",
            [suppressed],
        )
    with pytest.raises(GateFailed, match="consent: nobody suppressed enters a trigger"):
        run_triggers_gate(published, summary["refresh_id"])
    with connect(published, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM published.trigger_members").fetchone()[0] == 0


def test_segflow_triggers_refresh_runs_one_refresh_without_airflow(
    settings: Settings, landing_copy: Path, monkeypatch, capsys
):
    from ml.cli import main
    from ml.ingest.loader import ingest_landing
    from ml.synthetic.increments import generate_increment

    monkeypatch.setenv("SEGFLOW_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("SEGFLOW_LANDING_DIR", str(landing_copy))
    ingest_landing(settings, as_of=AS_OF)  # the history, as the daily runs loaded it
    increment = generate_increment(landing_copy, dt.datetime.now(dt.UTC), hours=3, seed=3)

    assert main(["triggers", "--refresh"]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads(printed[: printed.rindex("}") + 1])
    folder = Path(manifest["exports_dir"])
    # The first refresh lists everyone suppressed: the increment's opt-outs and the history's.
    suppressed = set(read_export(folder, "suppressions.csv").customer_id)
    assert set(increment.unsubscribed) <= suppressed
    orders = next(path for path in increment.files if path.parts[-3] == "orders")
    buyers = set(pd.read_parquet(orders).customer_id) - suppressed
    expected = sorted(c for c in buyers if holdout("recent_buyer", c) >= 0.05)
    assert list(read_export(folder, "recent_buyer.csv").customer_id) == expected
    assert f"{manifest['refresh_id']} published" in printed
