"""Data quality gates: which rows each Great Expectations suite sees, and what stops a run."""
