"""The values the features' named columns take, as the dbt models compute them.

dbt keeps its own copies (the models' `case` expressions and `accepted_values` tests), so that
the project reads on its own; tests/features/test_value_lists.py keeps them equal to these.
"""

from __future__ import annotations

RFM_SEGMENTS = (
    "Champions",
    "Loyal",
    "Potential loyalist",
    "New",
    "Promising",
    "Need attention",
    "About to sleep",
    "At risk",
    "Cannot lose them",
    "Hibernating",
    "Lost",
    "No purchase yet",
)
"""The names `rfm_segment` takes: the recency x frequency grid of
dbt_project/models/intermediate/int_customers_rfm_scored.sql, and `No purchase yet` for a
customer without a completed order."""

AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+", "unknown")
"""The bands `age_band` takes (dbt_project/models/marts/customer_features.sql): `unknown`
without a birth year."""
