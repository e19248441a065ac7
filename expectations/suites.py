"""Great Expectations suites as code, one per gated table.

Every expectation carries `meta.severity`: `error` stops the run before anything is published,
`warn` is recorded and the run goes on. Thresholds come from configuration
(`ml.config.QualityThresholds`), never from here. Import this module inside tasks only:
importing Great Expectations takes about ten seconds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping

import great_expectations as gx
from great_expectations import expectations as gxe

from ml.config import QualityThresholds
from ml.contract import EMAIL_DEVICES, ENTITY_BY_NAME
from ml.features.vocabulary import AGE_BANDS, RFM_SEGMENTS
from ml.models import catalogue
from ml.segments.audiences import BANDS
from ml.segments.consent import SUPPRESSION_REASONS
from ml.warehouse import tables

ERROR, WARN = "error", "warn"

RATE_FEATURES = (
    "email_open_rate_90d",
    "email_click_rate_90d",
    "cart_abandonment_rate_30d",
    "avg_review_sentiment",
)
GUARDED_FEATURES = (
    "frequency",
    "monetary",
    "email_opens_90d",
    "web_sessions_30d",
    "email_open_rate_90d",
)
"""Features whose mean is held within a band learned from the previous runs."""


def _meta(severity: str, why: str) -> dict:
    return {"severity": severity, "why": why}


def _mean_guard(
    column: str, previous_means: Mapping[str, float], thresholds: QualityThresholds, runs: str
) -> list:
    """A warning when the column's mean leaves the band around its mean over the previous
    `runs`; nothing on a first run."""
    previous = previous_means.get(column)
    if previous is None:
        return []
    band = abs(previous) * thresholds.feature_mean_band
    return [
        gxe.ExpectColumnMeanToBeBetween(
            column=column,
            min_value=previous - band,
            max_value=previous + band,
            meta=_meta(
                WARN,
                f"mean within {thresholds.feature_mean_band:.0%} of the previous {runs}' {previous:.4g}",
            ),
        )
    ]


def raw_suite(entity_name: str, loaded_before: dt.datetime) -> gx.ExpectationSuite:
    """The contract, once more, on what ingestion loaded: a second line of defence (freshness,
    which no row can show, is ml.quality.gates's check)."""
    entity = ENTITY_BY_NAME[entity_name]
    bookkeeping = ["_extra", "_source_file", "_source_row", "_loaded_at"]
    if entity.versioned:
        bookkeeping.append("_version_at")
    checks = []
    checks.append(
        gxe.ExpectTableColumnsToMatchSet(
            column_set=[*entity.column_names, *bookkeeping],
            exact_match=True,
            meta=_meta(ERROR, "schema of the raw table"),
        )
    )
    # A customer or order has many versions; an event or review is delivered once.
    checks.append(
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=[entity.key, "_source_file", "_source_row"],
            meta=_meta(ERROR, "one row per delivered row"),
        )
        if entity.versioned
        else gxe.ExpectColumnValuesToBeUnique(column=entity.key, meta=_meta(ERROR, "primary key"))
    )
    for column in entity.columns:
        if column.required:
            checks.append(
                gxe.ExpectColumnValuesToNotBeNull(
                    column=column.name, meta=_meta(ERROR, "required by the data contract")
                )
            )
        if column.accepted:
            checks.append(
                gxe.ExpectColumnValuesToBeInSet(
                    column=column.name,
                    value_set=list(column.accepted),
                    meta=_meta(ERROR, "accepted values of the data contract"),
                )
            )
        if column.minimum is not None or column.maximum is not None:
            checks.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=column.name,
                    min_value=column.minimum,
                    max_value=column.maximum,
                    meta=_meta(ERROR, "range of the data contract"),
                )
            )
        if column.not_in_future:
            checks.append(
                gxe.ExpectColumnMaxToBeBetween(
                    column=column.name,
                    max_value=loaded_before,
                    meta=_meta(ERROR, "timestamps may not be later than the load"),
                )
            )
    return gx.ExpectationSuite(name=f"raw_{entity.name}", expectations=checks)


def features_suite(
    known_customers: int, previous_means: Mapping[str, float], thresholds: QualityThresholds
) -> gx.ExpectationSuite:
    """`customer_features` for one date: complete, in range, and not far from recent runs."""
    checks = []
    checks.append(
        gxe.ExpectTableRowCountToEqual(
            value=known_customers, meta=_meta(ERROR, "one row per customer known on the date")
        )
    )
    checks.append(
        gxe.ExpectColumnValuesToBeUnique(
            column="customer_id", meta=_meta(ERROR, "one row per customer")
        )
    )
    checks.append(gxe.ExpectColumnValuesToNotBeNull(column="customer_id", meta=_meta(ERROR, "key")))
    for column in RATE_FEATURES:
        checks.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=column, min_value=0, max_value=1, meta=_meta(ERROR, "a rate lies in [0, 1]")
            )
        )
    for column in ("recency_days", "frequency", "monetary", "days_since_signup"):
        checks.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=column, min_value=0, meta=_meta(ERROR, "counts, amounts and ages are >= 0")
            )
        )
    checks.append(
        gxe.ExpectColumnValuesToBeBetween(
            column="preferred_hour",
            min_value=0,
            max_value=23,
            meta=_meta(ERROR, "an hour of the day"),
        )
    )
    checks.append(
        gxe.ExpectColumnValuesToBeInSet(
            column="rfm_segment",
            value_set=list(RFM_SEGMENTS),
            meta=_meta(ERROR, "named RFM segments"),
        )
    )
    checks.append(
        gxe.ExpectColumnValuesToBeInSet(
            column="age_band", value_set=list(AGE_BANDS), meta=_meta(ERROR, "age bands")
        )
    )
    checks.append(
        gxe.ExpectColumnValuesToBeInSet(
            column="preferred_device",
            value_set=list(EMAIL_DEVICES),
            meta=_meta(WARN, "devices the e-mail tools know"),
        )
    )
    for column in GUARDED_FEATURES:
        checks.append(
            gxe.ExpectColumnProportionOfNonNullValuesToBeBetween(
                column=column,
                min_value=1 - thresholds.feature_max_null_share,
                meta=_meta(WARN, f"at most {thresholds.feature_max_null_share:.0%} nulls"),
            )
        )
        checks += _mean_guard(column, previous_means, thresholds, "runs")
    return gx.ExpectationSuite(name="customer_features", expectations=checks)


GUARDED_SCORES = tuple(m.output_column for m in catalogue.SCORES if not m.active_only)
"""Scores whose mean is held within a band of the previous publications (warn): a model that
suddenly scores everyone high or low is worth a look before a marketer notices. The scores every
customer gets (churn risk: active customers only)."""


def segments_suite(
    feature_rows: int,
    persona_names: list[str],
    previous_means: Mapping[str, float],
    thresholds: QualityThresholds,
    not_applicable: Collection[str] = (),
) -> gx.ExpectationSuite:
    """The scored segments of one date, in staging, before they are published. A model kind in
    `not_applicable` scored nobody: its score and model version columns must be empty."""
    empty = {catalogue.model(kind).output_column for kind in not_applicable}
    checks = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=list(tables.CUSTOMER_SEGMENTS.column_names),
            exact_match=True,
            meta=_meta(ERROR, "the published segments' columns"),
        ),
        gxe.ExpectTableRowCountToEqual(
            value=feature_rows, meta=_meta(ERROR, "one scored row per feature row of the date")
        ),
        gxe.ExpectColumnValuesToBeUnique(
            column="customer_id", meta=_meta(ERROR, "one row per customer")
        ),
    ]
    # Every output but churn risk (active customers only) is every customer's.
    for column in (
        "customer_id",
        catalogue.PERSONAS.output_column,
        "rfm_segment",
        *(model.output_column for model in catalogue.SCORES if not model.active_only),
        "best_send_hour",
        "is_emailable",
    ):
        if column in empty:
            continue
        checks.append(
            gxe.ExpectColumnValuesToNotBeNull(
                column=column, meta=_meta(ERROR, "every customer is scored")
            )
        )
    for model in catalogue.PROBABILITIES:
        checks.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=model.output_column,
                min_value=0,
                max_value=1,
                meta=_meta(ERROR, "a probability lies in [0, 1]"),
            )
        )
        checks.append(
            gxe.ExpectColumnValuesToBeInSet(
                column=model.band_column, value_set=list(BANDS), meta=_meta(ERROR, "bands")
            )
        )
    checks += [
        *(
            gxe.ExpectColumnValuesToBeBetween(
                column=model.output_column, min_value=0, meta=_meta(ERROR, "revenue is >= 0")
            )
            for model in catalogue.SCORES
            if not model.probability
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="best_send_hour", min_value=0, max_value=23, meta=_meta(ERROR, "an hour")
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="segment", value_set=persona_names, meta=_meta(ERROR, "persona names")
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="rfm_segment", value_set=list(RFM_SEGMENTS), meta=_meta(ERROR, "RFM names")
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="suppression_reason",
            value_set=list(SUPPRESSION_REASONS),
            meta=_meta(ERROR, "suppression reasons"),
        ),
        # Consent: an e-mailable customer has no suppression reason, any other has one.
        gxe.ExpectColumnValuesToBeNull(
            column="suppression_reason",
            row_condition="is_emailable == True",
            condition_parser="pandas",
            meta=_meta(ERROR, "e-mailable customers have no suppression reason"),
        ),
        gxe.ExpectColumnValuesToNotBeNull(
            column="suppression_reason",
            row_condition="is_emailable == False",
            condition_parser="pandas",
            meta=_meta(ERROR, "a suppressed customer says why"),
        ),
    ]
    for kind in not_applicable:
        model = catalogue.model(kind)
        for column in (model.output_column, model.version_column):
            checks.append(
                gxe.ExpectColumnValuesToBeNull(
                    column=column, meta=_meta(ERROR, "a model not applicable scores nobody")
                )
            )
    for model in (model for model in catalogue.MODELS if model.kind not in not_applicable):
        checks.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=model.version_column,
                min_value=1,
                meta=_meta(ERROR, "every score names the model version behind it"),
            )
        )
        checks.append(
            gxe.ExpectColumnValuesToNotBeNull(
                column=model.version_column,
                meta=_meta(ERROR, "every score names the model version behind it"),
            )
        )
    for column in (column for column in GUARDED_SCORES if column not in empty):
        checks += _mean_guard(column, previous_means, thresholds, "publications")
    return gx.ExpectationSuite(name="customer_segments", expectations=checks)


TRIGGER_MEMBER_COLUMNS = (*tables.STAGED_TRIGGER_MEMBERS.column_names, "suppression_reason")
"""A refresh's staged members, with each one's consent as the warehouse knows it now."""


def trigger_members_suite(trigger_names: list[str]) -> gx.ExpectationSuite:
    """A trigger refresh's staged members, with each one's consent as the warehouse knows it now
    (`suppression_reason`), before the delta export is published."""
    checks = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=list(TRIGGER_MEMBER_COLUMNS),
            exact_match=True,
            meta=_meta(ERROR, "the trigger members' columns"),
        ),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=["trigger", "customer_id"],
            meta=_meta(ERROR, "a customer enters a trigger once per refresh"),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="trigger", value_set=trigger_names, meta=_meta(ERROR, "configured triggers")
        ),
        gxe.ExpectColumnValuesToBeNull(
            column="suppression_reason",
            meta=_meta(ERROR, "consent: nobody suppressed enters a trigger"),
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="evaluated_at",
            column_B="event_at",
            or_equal=True,
            meta=_meta(ERROR, "no event after the evaluation"),
        ),
    ]
    for column in ("customer_id", "event_at", "is_holdout", "evaluated_at"):
        checks.append(
            gxe.ExpectColumnValuesToNotBeNull(column=column, meta=_meta(ERROR, "required"))
        )
    return gx.ExpectationSuite(name="trigger_members", expectations=checks)


def suppressions_suite() -> gx.ExpectationSuite:
    """A trigger refresh's new suppressions, before they are published."""
    return gx.ExpectationSuite(
        name="trigger_suppressions",
        expectations=[
            gxe.ExpectColumnValuesToBeUnique(
                column="customer_id", meta=_meta(ERROR, "one suppression per customer")
            ),
            gxe.ExpectColumnValuesToNotBeNull(column="customer_id", meta=_meta(ERROR, "key")),
            gxe.ExpectColumnValuesToBeInSet(
                column="reason",
                value_set=list(SUPPRESSION_REASONS),
                meta=_meta(ERROR, "suppression reasons"),
            ),
            gxe.ExpectColumnValuesToNotBeNull(
                column="reason", meta=_meta(ERROR, "a suppression says why")
            ),
        ],
    )
