"""Each suite passes a known-good frame, and each known-bad frame fails exactly the expectation
it targets, with an error that names it."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

import duckdb
import pandas as pd
import pytest

from ml.config import Settings
from ml.contract import ENTITY_BY_NAME
from ml.errors import GateFailed

AS_OF = dt.date(2026, 6, 30)
LOADED = dt.datetime(2026, 7, 1, 3, 0)


@pytest.fixture(scope="module")
def gx_modules():
    """Great Expectations takes ~10 s to import: once per module."""
    from expectations import runner, suites

    return suites, runner


def good_raw(entity: str) -> pd.DataFrame:
    times = pd.to_datetime(["2026-06-28 10:00", "2026-06-29 11:00", "2026-06-30 12:00"])
    base = {
        "customers": {
            "customer_id": ["c1", "c2", "c3"],
            "email": ["a@x.io", None, "c@x.io"],
            "signup_at": times,
            "country": ["DE", None, "FR"],
            "birth_year": [1980, None, 1990],
            "gender": [None] * 3,
            "acquisition_channel": ["organic"] * 3,
            "email_opt_in": [True, None, False],
            "updated_at": [None] * 3,
        },
        "orders": {
            "order_id": ["o1", "o2", "o3"],
            "customer_id": ["c1", "c1", "c2"],
            "ordered_at": times,
            "amount": [10.0, 0.0, 99.5],
            "items": [1, None, 3],
            "category": ["shoes", None, "toys"],
            "status": ["completed", None, "refunded"],
            "updated_at": [None] * 3,
        },
        "email_events": {
            "event_id": ["e1", "e2", "e3"],
            "customer_id": ["c1"] * 3,
            "campaign_id": ["k"] * 3,
            "event_type": ["sent", "delivered", "open"],
            "occurred_at": times,
            "device": [None, None, "mobile"],
        },
        "web_events": {
            "event_id": ["w1", "w2", "w3"],
            "customer_id": ["c1"] * 3,
            "session_id": ["s"] * 3,
            "event_type": ["page_view", "add_to_cart", "checkout"],
            "occurred_at": times,
            "device": ["mobile"] * 3,
            "category": [None, "toys", "toys"],
        },
        "reviews": {
            "review_id": ["r1", "r2", "r3"],
            "customer_id": ["c1"] * 3,
            "created_at": times,
            "rating": [5, 1, 3],
            "text": ["great", None, "ok"],
        },
    }[entity]
    frame = pd.DataFrame(base)
    frame["_extra"] = None
    frame["_source_file"] = f"{entity}/date=2026-06-30/part-0.parquet"
    frame["_source_row"] = [1, 2, 3]
    frame["_loaded_at"] = pd.Timestamp("2026-07-01")
    if ENTITY_BY_NAME[entity].versioned:
        frame["_version_at"] = pd.Timestamp("2026-06-30")
    return frame


def good_features(rows: int = 40) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(rows)],
            "recency_days": [i % 30 for i in range(rows)],
            "frequency": [1 + i % 5 for i in range(rows)],
            "monetary": [50.0 + i for i in range(rows)],
            "days_since_signup": [100 + i for i in range(rows)],
            "email_opens_90d": [i % 4 for i in range(rows)],
            "web_sessions_30d": [i % 3 for i in range(rows)],
            "email_open_rate_90d": [(i % 10) / 10 for i in range(rows)],
            "email_click_rate_90d": [(i % 5) / 10 for i in range(rows)],
            "cart_abandonment_rate_30d": [None if i % 2 else 0.5 for i in range(rows)],
            "avg_review_sentiment": [None] * rows,
            "preferred_hour": [i % 24 for i in range(rows)],
            "preferred_device": ["mobile", "desktop"] * (rows // 2),
            "rfm_segment": ["Champions", "Lost", "No purchase yet", "New"] * (rows // 4),
            "age_band": ["25-34", "unknown"] * (rows // 2),
        }
    )


def previous_means() -> dict[str, float]:
    frame = good_features()
    return {
        c: float(frame[c].mean())
        for c in (
            "frequency",
            "monetary",
            "email_opens_90d",
            "web_sessions_30d",
            "email_open_rate_90d",
        )
    }


def changed(frame: pd.DataFrame, column: str, row: int, value) -> pd.DataFrame:
    frame = frame.copy()
    frame[column] = frame[column].astype(object)
    frame.loc[row, column] = value
    return frame


RAW_CASES: list[tuple[str, str, Callable[[pd.DataFrame], pd.DataFrame], str, str | None, str]] = [
    # entity, case, how to break the good frame, expectation, column, words of its reason
    (
        "orders",
        "missing customer",
        lambda f: changed(f, "customer_id", 0, None),
        "expect_column_values_to_not_be_null",
        "customer_id",
        "required",
    ),
    (
        "orders",
        "negative amount",
        lambda f: changed(f, "amount", 2, -5.0),
        "expect_column_values_to_be_between",
        "amount",
        "range",
    ),
    (
        "orders",
        "unknown status",
        lambda f: changed(f, "status", 0, "pending"),
        "expect_column_values_to_be_in_set",
        "status",
        "accepted values",
    ),
    (
        "orders",
        "order after the load",
        lambda f: changed(f, "ordered_at", 2, pd.Timestamp("2026-07-02")),
        "expect_column_max_to_be_between",
        "ordered_at",
        "later than the load",
    ),
    (
        "orders",
        "schema drift",
        lambda f: f.drop(columns=["category"]),
        "expect_table_columns_to_match_set",
        None,
        "schema",
    ),
    (
        "email_events",
        "unknown event type",
        lambda f: changed(f, "event_type", 2, "opened"),
        "expect_column_values_to_be_in_set",
        "event_type",
        "accepted values",
    ),
    (
        "email_events",
        "unknown device",
        lambda f: changed(f, "device", 2, "watch"),
        "expect_column_values_to_be_in_set",
        "device",
        "accepted values",
    ),
    (
        "web_events",
        "unknown event type",
        lambda f: changed(f, "event_type", 0, "wishlist"),
        "expect_column_values_to_be_in_set",
        "event_type",
        "accepted values",
    ),
    (
        "reviews",
        "rating out of range",
        lambda f: changed(f, "rating", 1, 9),
        "expect_column_values_to_be_between",
        "rating",
        "range",
    ),
    (
        "customers",
        "birth year before 1900",
        lambda f: changed(f, "birth_year", 0, 1850),
        "expect_column_values_to_be_between",
        "birth_year",
        "range",
    ),
    (
        "customers",
        "one delivered row twice",
        lambda f: f.assign(customer_id=["c1", "c2", "c1"], _source_row=[1, 2, 1]),
        "expect_compound_columns_to_be_unique",
        None,
        "one row per delivered row",
    ),
    (
        "email_events",
        "duplicate event",
        lambda f: changed(f, "event_id", 2, "e1"),
        "expect_column_values_to_be_unique",
        "event_id",
        "primary key",
    ),
]


def failures(report) -> list[tuple[str, str | None, str]]:
    return [(o.expectation, o.column, o.why) for o in report.outcomes if not o.success]


@pytest.mark.parametrize("entity", sorted(ENTITY_BY_NAME))
def test_good_raw_frames_pass(gx_modules, settings: Settings, entity: str):
    suites, runner = gx_modules
    report = runner.validate_frame(
        settings, good_raw(entity), suites.raw_suite(entity, LOADED), AS_OF
    )
    assert failures(report) == []
    report.raise_on_errors()


@pytest.mark.parametrize(
    ("entity", "case", "breaks", "expectation", "column", "why"),
    RAW_CASES,
    ids=[f"{c[0]}: {c[1]}" for c in RAW_CASES],
)
def test_each_bad_raw_frame_fails_exactly_its_expectation(
    gx_modules, settings: Settings, entity, case, breaks, expectation, column, why
):
    suites, runner = gx_modules
    suite = suites.raw_suite(entity, LOADED)
    report = runner.validate_frame(settings, breaks(good_raw(entity)), suite, AS_OF)
    found = failures(report)
    assert len(found) == 1, found
    assert found[0][:2] == (expectation, column)
    assert why in found[0][2]
    with pytest.raises(GateFailed) as error:
        report.raise_on_errors()
    message = str(error.value)
    assert f"gate 'raw_{entity}' failed for {AS_OF}" in message
    assert expectation in message and (column is None or f"on {column}" in message)
    assert "Data Docs: " in message


FEATURE_CASES = [
    ("a customer missing", lambda f: f.iloc[:-1], "expect_table_row_count_to_equal", None, "error"),
    (
        "a customer twice",
        lambda f: changed(f, "customer_id", 1, "c0"),
        "expect_column_values_to_be_unique",
        "customer_id",
        "error",
    ),
    (
        "rate above 1",
        lambda f: changed(f, "email_open_rate_90d", 0, 1.2),
        "expect_column_values_to_be_between",
        "email_open_rate_90d",
        "error",
    ),
    (
        "hour 24",
        lambda f: changed(f, "preferred_hour", 0, 24),
        "expect_column_values_to_be_between",
        "preferred_hour",
        "error",
    ),
    (
        "unknown RFM segment",
        lambda f: changed(f, "rfm_segment", 0, "VIP"),
        "expect_column_values_to_be_in_set",
        "rfm_segment",
        "error",
    ),
    (
        "mean far from previous runs",
        lambda f: f.assign(monetary=f.monetary * 3),
        "expect_column_mean_to_be_between",
        "monetary",
        "warn",
    ),
    (
        "mostly null",
        lambda f: f.assign(web_sessions_30d=[None] * 38 + [1, 1]),
        "expect_column_proportion_of_non_null_values_to_be_between",
        "web_sessions_30d",
        "warn",
    ),
]


def test_good_features_pass(gx_modules, settings: Settings):
    suites, runner = gx_modules
    report = runner.validate_frame(
        settings,
        good_features(),
        suites.features_suite(40, previous_means(), settings.quality),
        AS_OF,
    )
    assert failures(report) == []


@pytest.mark.parametrize(
    ("case", "breaks", "expectation", "column", "severity"),
    FEATURE_CASES,
    ids=[c[0] for c in FEATURE_CASES],
)
def test_each_bad_features_frame_fails_exactly_its_expectation(
    gx_modules, settings: Settings, case, breaks, expectation, column, severity
):
    suites, runner = gx_modules
    suite = suites.features_suite(40, previous_means(), settings.quality)
    report = runner.validate_frame(settings, breaks(good_features()), suite, AS_OF)
    found = [o for o in report.outcomes if not o.success]
    assert [(o.expectation, o.column, o.severity) for o in found] == [
        (expectation, column, severity)
    ]
    if severity == "warn":
        report.raise_on_errors()  # recorded, but the run goes on
    else:
        with pytest.raises(GateFailed, match=expectation):
            report.raise_on_errors()


def test_every_outcome_is_stored_and_a_rerun_replaces_it(gx_modules, settings: Settings):
    suites, runner = gx_modules
    suite = suites.raw_suite("orders", LOADED)
    bad = changed(good_raw("orders"), "amount", 2, -5.0)
    report = runner.validate_frame(settings, bad, suite, AS_OF)
    runner.validate_frame(settings, bad, suites.raw_suite("orders", LOADED), AS_OF)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        rows = con.execute(
            """SELECT suite, expectation, column_name, severity, success, unexpected_count, examples
               FROM quality.validation_results WHERE run_date = ? ORDER BY ALL""",
            [AS_OF],
        ).fetchall()
    assert len(rows) == len(report.outcomes)  # replaced, not appended
    failed = [r for r in rows if not r[4]]
    assert failed == [
        (
            "raw_orders",
            "expect_column_values_to_be_between",
            "amount",
            "error",
            False,
            1,
            json.dumps(["-5.0"]),
        )
    ]
    assert (settings.reports_dir / "data_docs" / "index.html").exists()


SECRET_ID = "cust-8841"
SECRET_ADDRESS = "jane..doe@@example.com"


def test_no_customer_id_or_address_reaches_results_data_docs_or_messages(
    gx_modules, settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog
):
    """A failing gate over a frame with a bad address, a delivered row twice and a personal
    value out of range: GX's results and Data Docs keep counts only, and segflow's message,
    log and stored results name the file's rule and column but no value of a person."""
    import great_expectations as gx
    from great_expectations import expectations as gxe
    from great_expectations.checkpoint.checkpoint import Checkpoint

    suites, runner = gx_modules
    results = []
    run = Checkpoint.run

    def capturing(self, *args, **kwargs):
        results.append(run(self, *args, **kwargs))
        return results[-1]

    monkeypatch.setattr(Checkpoint, "run", capturing)
    frame = good_raw("customers")
    frame = changed(frame, "email", 0, SECRET_ADDRESS)
    frame = changed(frame, "birth_year", 0, 1850)
    frame = frame.assign(customer_id=[SECRET_ID, "c2", SECRET_ID], _source_row=[1, 2, 1])
    checks = suites.raw_suite("customers", LOADED).expectations
    checks = [
        *checks,
        gxe.ExpectColumnValuesToMatchRegex(
            column="email", regex=r"^[^@]+@[^@]+$", meta={"severity": "error", "why": "address"}
        ),
    ]
    suite = gx.ExpectationSuite(name="raw_customers", expectations=checks)
    with caplog.at_level("INFO"):
        report = runner.validate_frame(settings, frame, suite, AS_OF)
        with pytest.raises(GateFailed) as error:
            report.raise_on_errors()
    assert {(o.expectation, o.column) for o in report.outcomes if not o.success} == {
        ("expect_compound_columns_to_be_unique", None),
        ("expect_column_values_to_be_between", "birth_year"),
        ("expect_column_values_to_match_regex", "email"),
    }
    message = str(error.value)
    assert "expect_column_values_to_match_regex on email (address): 1 of 3 rows" in message
    assert "birth_year" in message and "e.g." not in message

    validation = json.dumps(
        [r.to_json_dict() for result in results for r in result.run_results.values()],
        default=str,
    )
    assert '"unexpected_count": 1' in validation
    docs = [p for p in (settings.reports_dir / "data_docs").rglob("*.html")]
    assert any("validations" in p.parts for p in docs)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        stored = str(con.execute("SELECT * FROM quality.validation_results").fetchall())
    for text in (validation, message, caplog.text, stored, *(p.read_text() for p in docs)):
        for secret in (SECRET_ADDRESS, "@@example", SECRET_ID, "1850"):
            assert secret not in text


def test_results_kept_from_before_lose_values_of_people(gx_modules, settings: Settings):
    """Data Docs pages and stored examples from before values were left out: the pages go, and
    examples survive only for value rules on columns that identify nobody."""
    suites, runner = gx_modules
    old_page = settings.reports_dir / "data_docs" / "validations" / "raw_orders" / "old.html"
    old_page.parent.mkdir(parents=True)
    old_page.write_text(f"<td>{SECRET_ID}</td>")
    settings.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(settings.warehouse_path)) as con:
        con.execute("CREATE SCHEMA quality")
        con.execute(
            """CREATE TABLE quality.validation_results (
                run_date DATE NOT NULL, suite VARCHAR NOT NULL, expectation VARCHAR NOT NULL,
                column_name VARCHAR, severity VARCHAR NOT NULL, success BOOLEAN NOT NULL,
                observed_value VARCHAR, unexpected_count BIGINT, element_count BIGINT,
                examples JSON, validated_at TIMESTAMP NOT NULL)"""
        )
        for expectation, column, examples in (
            ("expect_column_values_to_be_unique", "customer_id", [SECRET_ID]),
            ("expect_compound_columns_to_be_unique", None, [{"customer_id": SECRET_ID}]),
            ("expect_column_values_to_be_between", "birth_year", ["1850"]),
            ("expect_column_values_to_be_in_set", "status", ["pending"]),
        ):
            con.execute(
                "INSERT INTO quality.validation_results VALUES "
                "('2026-06-01', 'raw_x', ?, ?, 'error', false, NULL, 1, 3, ?, now())",
                [expectation, column, json.dumps(examples)],
            )

    runner.validate_frame(settings, good_raw("orders"), suites.raw_suite("orders", LOADED), AS_OF)

    assert not old_page.exists()
    assert (settings.reports_dir / "data_docs" / "index.html").exists()
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        kept = con.execute(
            """SELECT column_name, examples::VARCHAR FROM quality.validation_results
               WHERE suite = 'raw_x' ORDER BY expectation"""
        ).fetchall()
    assert sorted(kept, key=str) == sorted(
        [("birth_year", "[]"), ("status", '["pending"]'), (None, "[]"), ("customer_id", "[]")],
        key=str,
    )


PERSONAS = ["Loyal high spenders", "Dormant"]


def good_segments(rows: int = 40) -> pd.DataFrame:
    emailable = [i % 4 != 0 for i in range(rows)]
    frame = pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(rows)],
            "as_of_date": [AS_OF] * rows,
            "segment": [PERSONAS[i % 2] for i in range(rows)],
            "rfm_segment": ["Champions", "Lost"] * (rows // 2),
            "purchase_propensity": [i / rows for i in range(rows)],
            "purchase_propensity_band": ["low", "medium", "high", "low"] * (rows // 4),
            "churn_risk": [None if i % 3 == 0 else 0.3 for i in range(rows)],
            "churn_risk_band": [None if i % 3 == 0 else "medium" for i in range(rows)],
            "engagement_propensity": [0.2] * rows,
            "engagement_propensity_band": ["low"] * rows,
            "predicted_clv": [float(i) for i in range(rows)],
            "best_send_hour": [i % 24 for i in range(rows)],
            "send_hour_source": ["customer", "segment"] * (rows // 2),
            "is_emailable": emailable,
            "suppression_reason": [None if ok else "unsubscribed" for ok in emailable],
            "holdout_audiences": [[] for _ in range(rows)],
        }
    )
    for kind in (
        "personas",
        "purchase_propensity",
        "churn_risk",
        "engagement_propensity",
        "customer_value",
    ):
        frame[f"{kind}_model_version"] = 3
    return frame


SEGMENT_MEANS = {"purchase_propensity": 0.4875, "engagement_propensity": 0.2, "predicted_clv": 19.5}

SEGMENT_CASES = [
    (
        "a customer unscored",
        lambda f: f.iloc[:-1],
        "expect_table_row_count_to_equal",
        None,
        "error",
    ),
    (
        "a customer twice",
        lambda f: changed(f, "customer_id", 1, "c0"),
        "expect_column_values_to_be_unique",
        "customer_id",
        "error",
    ),
    (
        "probability above 1",
        lambda f: changed(f, "purchase_propensity", 0, 1.5),
        "expect_column_values_to_be_between",
        "purchase_propensity",
        "error",
    ),
    (
        "churn risk below 0",
        lambda f: changed(f, "churn_risk", 1, -0.1),
        "expect_column_values_to_be_between",
        "churn_risk",
        "error",
    ),
    (
        "send hour 24",
        lambda f: changed(f, "best_send_hour", 0, 24),
        "expect_column_values_to_be_between",
        "best_send_hour",
        "error",
    ),
    (
        "unknown persona",
        lambda f: changed(f, "segment", 0, "Whales"),
        "expect_column_values_to_be_in_set",
        "segment",
        "error",
    ),
    (
        "unknown band",
        lambda f: changed(f, "engagement_propensity_band", 0, "very high"),
        "expect_column_values_to_be_in_set",
        "engagement_propensity_band",
        "error",
    ),
    (
        "unknown suppression reason",
        lambda f: changed(
            changed(f, "suppression_reason", 0, "spam trap"), "is_emailable", 0, False
        ),
        "expect_column_values_to_be_in_set",
        "suppression_reason",
        "error",
    ),
    (
        "suppressed customer marked e-mailable",
        lambda f: changed(f, "is_emailable", 0, True),
        "expect_column_values_to_be_null",
        "suppression_reason",
        "error",
    ),
    (
        "suppressed without a reason",
        lambda f: changed(f, "suppression_reason", 0, None),
        "expect_column_values_to_not_be_null",
        "suppression_reason",
        "error",
    ),
    (
        "score without its model version",
        lambda f: changed(f, "churn_risk_model_version", 5, None),
        "expect_column_values_to_not_be_null",
        "churn_risk_model_version",
        "error",
    ),
    (
        "everyone suddenly likely to buy",
        lambda f: f.assign(purchase_propensity=0.95),
        "expect_column_mean_to_be_between",
        "purchase_propensity",
        "warn",
    ),
]


def test_good_segments_pass(gx_modules, settings: Settings):
    suites, runner = gx_modules
    suite = suites.segments_suite(40, PERSONAS, SEGMENT_MEANS, settings.quality)
    report = runner.validate_frame(settings, good_segments(), suite, AS_OF)
    assert failures(report) == []


@pytest.mark.parametrize(
    ("case", "breaks", "expectation", "column", "severity"),
    SEGMENT_CASES,
    ids=[c[0] for c in SEGMENT_CASES],
)
def test_each_bad_segments_frame_fails_exactly_its_expectation(
    gx_modules, settings: Settings, case, breaks, expectation, column, severity
):
    suites, runner = gx_modules
    suite = suites.segments_suite(40, PERSONAS, SEGMENT_MEANS, settings.quality)
    report = runner.validate_frame(settings, breaks(good_segments()), suite, AS_OF)
    found = [o for o in report.outcomes if not o.success]
    assert [(o.expectation, o.column, o.severity) for o in found] == [
        (expectation, column, severity)
    ]
    if severity == "warn":
        report.raise_on_errors()
    else:
        with pytest.raises(GateFailed) as error:
            report.raise_on_errors()
        assert f"gate 'customer_segments' failed for {AS_OF}" in str(error.value)
        assert expectation in str(error.value)
