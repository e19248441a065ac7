"""What the benchmark runs (bench/run.py) and reports (bench/report.py): the date it runs as
of, its stages in order, and the scenarios both name."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
END_DATE = dt.date(2026, 10, 31)
DAILY_DATE = END_DATE + dt.timedelta(days=1)
GB = 10**9
MIB = 2**20

# The stages as of END_DATE, in order: each a segflow command taking the date last.
HISTORY_STAGES = {
    "ingest": ["ingest", "--as-of"],
    "raw_gate": ["gate", "raw", "--as-of"],
    "features": ["features", "--as-of"],
    "features_gate": ["gate", "features", "--as-of"],
    "snapshots": None,  # the training snapshots' features and labels: see snapshot_commands
    "train": ["train", "--as-of"],
    "score": ["score", "--as-of"],
    "segments_gate": ["gate", "segments", "--as-of"],
    "publish": ["publish", "--as-of"],
    "drift": ["drift", "--run", "--as-of"],
}
COMPARISONS = ("dbt_features", "duckdb_query", "pandas")
ALL_STAGES = (
    "generate",
    *HISTORY_STAGES,
    *COMPARISONS,
    "daily_run",
    "trigger_refresh",
    "customer_snapshot",
    "erasure",
    "exported_ingest",
)
SNAPSHOT_CHANGE_SHARE = 0.001
"""customer_snapshot: the share of customers whose row differs from their last version."""
