"""Access to the DuckDB warehouse file.

DuckDB allows one writing process at a time. Writers are serialised by Airflow's `warehouse`
pool (size 1); readers open read-only and briefly. Both wait a bounded time for a lock held by
another process (a user's query, a dbt run finishing) instead of failing at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

from ml.config import Settings
from ml.privacy.permissions import secure_data_dir

log = logging.getLogger(__name__)

LOCK_WAIT_SECONDS = 120.0


def _is_lock_conflict(error: duckdb.Error) -> bool:
    return "lock" in str(error).lower()


@contextmanager
def connect(
    settings: Settings, *, read_only: bool = False, lock_wait_seconds: float = LOCK_WAIT_SECONDS
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse (creating it, owner-only, for writers), always in UTC and within the
    configured memory limit, and close it afterwards."""
    path = settings.warehouse_path
    if read_only and not path.exists():
        raise FileNotFoundError(
            f"warehouse {path} does not exist yet: run the pipeline (make run AS_OF=...) first"
        )
    # Every pipeline run opens the warehouse first: a data folder an older segflow left
    # readable by others is repaired here, whichever process (CLI, Airflow task) comes first.
    secure_data_dir(settings)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    deadline = time.monotonic() + lock_wait_seconds
    delay = 0.2
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as error:
            if not _is_lock_conflict(error) or time.monotonic() >= deadline:
                raise
            log.info("warehouse %s is locked by another process; retrying in %.1fs", path, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    try:
        # Timestamps inside the warehouse are UTC; never let the machine's zone leak in.
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar = false")
        con.execute(f"SET memory_limit = '{settings.duckdb_memory_limit}'")
        if settings.duckdb_uncompressed and not read_only:
            con.execute("SET force_compression = 'uncompressed'")
        yield con
    finally:
        con.close()


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(
        con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [schema, table],
        ).fetchone()[0]
    )
