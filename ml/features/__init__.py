"""Features: the dbt marts built for an as-of date, and the review text signal they use."""
