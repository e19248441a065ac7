"""The definition of every table segflow writes in the warehouse, and the one way to create them.

A step creates what it needs with `ensure(con, *tables)` before writing: the schemas, then each
table with `CREATE TABLE IF NOT EXISTS`, so a warehouse that has the tables keeps them and
their rows. A column added to a table after warehouses already held it is listed in the table's
`added_later`: `ensure` adds it to an older warehouse's table (`ADD COLUMN IF NOT EXISTS`).
Migrations that also rewrite data stay with the step that owns the data (ml/ingest/raw_tables.py).

What dbt builds (the `marts` tables, its views in `staging`) is defined in dbt_project/models/.

Plain data only: the DAG files and the quality suites read these definitions, so this module
imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ml.contract import ENTITIES, Entity
from ml.models.catalogue import MODELS, PERSONAS, SCORES
from ml.warehouse.sql import identifier

if TYPE_CHECKING:
    import duckdb


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    """The DuckDB type, e.g. `VARCHAR`, `DECIMAL(18, 2)`, `VARCHAR[]`."""
    not_null: bool = False
    default: str | None = None
    """An SQL expression: the value of the rows a table held when the column was added."""

    @property
    def sql(self) -> str:
        not_null = " NOT NULL" if self.not_null else ""
        default = f" DEFAULT {self.default}" if self.default is not None else ""
        return f"{identifier(self.name)} {self.type}{not_null}{default}"


@dataclass(frozen=True)
class Table:
    schema: str
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    added_later: tuple[str, ...] = ()
    """Columns older warehouses' tables lack: `ensure` adds them."""

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def definition(self) -> str:
        """The parenthesised column list (and key) of CREATE TABLE."""
        parts = [c.sql for c in self.columns]
        if self.primary_key:
            parts.append(f"PRIMARY KEY ({', '.join(map(identifier, self.primary_key))})")
        return "(\n    " + ",\n    ".join(parts) + "\n)"

    def in_schema(self, schema: str) -> Table:
        """The same table in another schema (staging and published share their columns)."""
        return replace(self, schema=schema)


def ensure(con: duckdb.DuckDBPyConnection, *tables: Table) -> None:
    """Create the schemas and tables that do not exist yet, and the columns older warehouses'
    tables lack; rows already there are kept."""
    for schema in dict.fromkeys(t.schema for t in tables):
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    for table in tables:
        con.execute(f"CREATE TABLE IF NOT EXISTS {table.qualified_name} {table.definition}")
        by_name = {c.name: c for c in table.columns}
        for name in table.added_later:
            con.execute(
                f"ALTER TABLE {table.qualified_name} ADD COLUMN IF NOT EXISTS {by_name[name].sql}"
            )


def _columns(*columns: Column | Iterable[Column]) -> tuple[Column, ...]:
    flat: list[Column] = []
    for item in columns:
        flat += [item] if isinstance(item, Column) else list(item)
    return tuple(flat)


# --------------------------------------------------------------------------- raw and quarantine


def raw_table(entity: Entity) -> Table:
    """The rows of an entity as loaded (every version, for versioned entities): the contract's
    columns, then where each row came from."""
    return Table(
        "raw",
        entity.table,
        _columns(
            (Column(c.name, c.sql_type) for c in entity.columns),
            Column("_extra", "JSON"),
            Column("_source_file", "VARCHAR", not_null=True),
            Column("_source_row", "BIGINT", not_null=True),
            Column("_loaded_at", "TIMESTAMP"),
            [Column("_version_at", "TIMESTAMP")] if entity.versioned else [],
        ),
    )


RAW_ROWS = tuple(raw_table(entity) for entity in ENTITIES)
LOADED_FILES = Table(
    "raw",
    "loaded_files",
    (
        Column("entity", "VARCHAR", not_null=True),
        Column("source_file", "VARCHAR", not_null=True),
        Column("sha256", "VARCHAR", not_null=True),
        Column("size_bytes", "BIGINT", not_null=True),
        Column("mtime_ns", "BIGINT", not_null=True),
        Column("partition_date", "DATE"),
        Column("rows_in_file", "BIGINT", not_null=True),
        Column("rows_loaded", "BIGINT", not_null=True),
        Column("rows_rejected", "BIGINT", not_null=True),
        Column("values_nullified", "BIGINT", not_null=True),
        Column("loaded_at", "TIMESTAMP", not_null=True),
        Column("rows_unchanged", "BIGINT", default="0"),
        Column("rows_held", "BIGINT", default="0"),
        # When a raw gate passed the file's rows; null until one has (ml/quality/gates.py).
        Column("gated_at", "TIMESTAMP"),
    ),
    primary_key=("entity", "source_file"),
    added_later=("rows_unchanged", "rows_held", "gated_at"),
)
QUARANTINED_VALUES = Table(
    "quarantine",
    "violations",
    (
        Column("entity", "VARCHAR", not_null=True),
        Column("source_file", "VARCHAR", not_null=True),
        Column("source_row", "BIGINT", not_null=True),
        Column("column_name", "VARCHAR", not_null=True),
        Column("rule", "VARCHAR", not_null=True),
        Column("value", "VARCHAR"),
        Column("value_shape", "VARCHAR"),
        Column("action", "VARCHAR", not_null=True),
        Column("record", "JSON", not_null=True),
        Column("loaded_at", "TIMESTAMP", not_null=True),
        Column("customer_key", "VARCHAR"),
    ),
    # value_shape is added by the loader's migration, which rewrites the rows as well.
    added_later=("customer_key",),
)
HELD_ROWS = Table(
    "quarantine",
    "held_rows",
    (
        Column("entity", "VARCHAR", not_null=True),
        Column("source_file", "VARCHAR", not_null=True),
        Column("source_row", "BIGINT", not_null=True),
        Column("reason", "VARCHAR", not_null=True),
        Column("record", "JSON", not_null=True),
        Column("extra", "JSON"),
        Column("held_since", "TIMESTAMP", not_null=True),
        Column("last_tried_at", "TIMESTAMP", not_null=True),
    ),
    primary_key=("entity", "source_file", "source_row"),
)
QUARANTINED_FILES = Table(
    "quarantine",
    "files",
    (
        Column("entity", "VARCHAR", not_null=True),
        Column("source_file", "VARCHAR", not_null=True),
        Column("sha256", "VARCHAR"),
        Column("column_name", "VARCHAR"),
        Column("reason", "VARCHAR", not_null=True),
        Column("found_at", "TIMESTAMP", not_null=True),
        Column("accepted_at", "TIMESTAMP"),
        Column("accepted_note", "VARCHAR"),
    ),
    primary_key=("entity", "source_file"),
)
INGESTION = (*RAW_ROWS, LOADED_FILES, QUARANTINED_VALUES, HELD_ROWS, QUARANTINED_FILES)

# --------------------------------------------------------------------------- privacy

ERASED_IDENTITIES = Table(
    "privacy",
    "erased_identities",
    (
        Column("kind", "VARCHAR", not_null=True),
        Column("identity_hash", "VARCHAR", not_null=True),
        Column("erasure_id", "VARCHAR", not_null=True),
        Column("erased_at", "TIMESTAMP", not_null=True),
    ),
    primary_key=("kind", "identity_hash"),
)
ERASURES = Table(
    "privacy",
    "erasures",
    (
        Column("erasure_id", "VARCHAR"),
        Column("erased_at", "TIMESTAMP", not_null=True),
        Column("source", "VARCHAR", not_null=True),
        Column("identities_requested", "INTEGER", not_null=True),
        Column("customers_found", "INTEGER", not_null=True),
        Column("rows_deleted", "JSON", not_null=True),
        Column("values_redacted", "JSON", not_null=True),
        Column("files_rewritten", "JSON", not_null=True),
        Column("landing_files_left", "INTEGER", not_null=True),
        Column("files_still_holding", "INTEGER", not_null=True),
        Column("seconds", "DOUBLE", not_null=True),
    ),
    primary_key=("erasure_id",),
)
PRIVACY = (ERASED_IDENTITIES, ERASURES)

# --------------------------------------------------------------------------- features and quality

REVIEW_SENTIMENT = Table(
    "derived",
    "review_sentiment",
    (
        Column("review_id", "VARCHAR"),
        Column("positive_probability", "DOUBLE", not_null=True),
        Column("trained_on_reviews_before", "TIMESTAMP", not_null=True),
    ),
    primary_key=("review_id",),
)
VALIDATION_RESULTS = Table(
    "quality",
    "validation_results",
    (
        Column("run_date", "DATE", not_null=True),
        Column("suite", "VARCHAR", not_null=True),
        Column("expectation", "VARCHAR", not_null=True),
        Column("column_name", "VARCHAR"),
        Column("severity", "VARCHAR", not_null=True),
        Column("success", "BOOLEAN", not_null=True),
        Column("observed_value", "VARCHAR"),
        Column("unexpected_count", "BIGINT"),
        Column("element_count", "BIGINT"),
        Column("examples", "JSON"),
        Column("validated_at", "TIMESTAMP", not_null=True),
    ),
)

# --------------------------------------------------------------------------- segments

CUSTOMER_SEGMENTS = Table(
    "published",
    "customer_segments",
    _columns(
        Column("customer_id", "VARCHAR", not_null=True),
        Column("as_of_date", "DATE", not_null=True),
        Column(PERSONAS.output_column, "VARCHAR"),
        Column("rfm_segment", "VARCHAR"),
        (
            column
            for model in SCORES
            for column in (
                Column(model.output_column, "DOUBLE"),
                *([Column(model.band_column, "VARCHAR")] if model.band_column else []),
            )
        ),
        Column("best_send_hour", "INTEGER"),
        Column("send_hour_source", "VARCHAR"),
        Column("is_emailable", "BOOLEAN"),
        Column("suppression_reason", "VARCHAR"),
        Column("holdout_audiences", "VARCHAR[]"),
        (Column(model.version_column, "INTEGER") for model in MODELS),
    ),
)
"""One row per customer and date: persona, scores, send hour, consent, holdouts, and the
version of each model behind its output (ml/segments/score.py)."""
AUDIENCE_MEMBERS = Table(
    "published",
    "audience_members",
    (
        Column("as_of_date", "DATE", not_null=True),
        Column("audience", "VARCHAR", not_null=True),
        Column("customer_id", "VARCHAR", not_null=True),
        Column("is_holdout", "BOOLEAN", not_null=True),
    ),
)
AUDIENCE_DEFINITIONS = Table(
    "published",
    "audience_definitions",
    (
        Column("as_of_date", "DATE", not_null=True),
        Column("audience", "VARCHAR", not_null=True),
        Column("description", "VARCHAR", not_null=True),
        Column("holdout_share", "DOUBLE", not_null=True),
        Column("filters", "JSON", not_null=True),
    ),
)
"""What each audience meant on the date."""
NOT_APPLICABLE_MODELS = Table(
    "published",
    "not_applicable_models",
    (
        Column("as_of_date", "DATE", not_null=True),
        Column("model_kind", "VARCHAR", not_null=True),
        Column("reason", "VARCHAR", not_null=True),
        Column("training_as_of", "DATE"),
    ),
)
"""The models that scored nobody on the date, and why."""
PUBLISHED_SEGMENTS = (
    CUSTOMER_SEGMENTS,
    AUDIENCE_MEMBERS,
    AUDIENCE_DEFINITIONS,
    NOT_APPLICABLE_MODELS,
)
"""A date's rows, by `as_of_date`: scoring writes them to staging, publishing swaps them in."""
STAGED_SEGMENTS = tuple(t.in_schema("staging") for t in PUBLISHED_SEGMENTS)
PUBLICATIONS = Table(
    "published",
    "publications",
    (
        Column("as_of_date", "DATE", not_null=True),
        Column("run_id", "VARCHAR", not_null=True),
        Column("published_at", "TIMESTAMP", not_null=True),
        Column("rows", "BIGINT", not_null=True),
        Column("emailable", "BIGINT", not_null=True),
        Column("model_versions", "JSON", not_null=True),
        Column("audiences", "JSON", not_null=True),
        Column("exports_dir", "VARCHAR", not_null=True),
    ),
)
CAMPAIGN_READOUTS = Table(
    "published",
    "campaign_readouts",
    (
        Column("as_of_date", "DATE", not_null=True),
        Column("audience", "VARCHAR", not_null=True),
        Column("sent_on", "DATE", not_null=True),
        Column("window_days", "INTEGER", not_null=True),
        Column("treatment_customers", "BIGINT", not_null=True),
        Column("treatment_converters", "BIGINT", not_null=True),
        Column("treatment_revenue", "DOUBLE", not_null=True),
        Column("holdout_customers", "BIGINT", not_null=True),
        Column("holdout_converters", "BIGINT", not_null=True),
        Column("holdout_revenue", "DOUBLE", not_null=True),
        Column("conversion_difference", "DOUBLE"),
        Column("conversion_difference_low", "DOUBLE"),
        Column("conversion_difference_high", "DOUBLE"),
        Column("relative_lift", "DOUBLE"),
        Column("relative_lift_low", "DOUBLE"),
        Column("relative_lift_high", "DOUBLE"),
        Column("revenue_per_customer_difference", "DOUBLE"),
        Column("revenue_per_customer_difference_low", "DOUBLE"),
        Column("revenue_per_customer_difference_high", "DOUBLE"),
        Column("computed_at", "TIMESTAMP", not_null=True),
    ),
)

# --------------------------------------------------------------------------- triggers

_TRIGGER_MEMBER_COLUMNS = (
    Column("refresh_id", "VARCHAR", not_null=True),
    Column("trigger", "VARCHAR", not_null=True),
    Column("customer_id", "VARCHAR", not_null=True),
    Column("event_at", "TIMESTAMP", not_null=True),
    Column("event_detail", "VARCHAR"),
    Column("is_holdout", "BOOLEAN", not_null=True),
    Column("evaluated_at", "TIMESTAMP", not_null=True),
)
_EVALUATED_FILE_COLUMNS = (
    Column("refresh_id", "VARCHAR", not_null=True),
    Column("entity", "VARCHAR", not_null=True),
    Column("source_file", "VARCHAR", not_null=True),
    Column("sha256", "VARCHAR", not_null=True),
)
_SUPPRESSION_COLUMNS = (
    Column("refresh_id", "VARCHAR", not_null=True),
    Column("customer_id", "VARCHAR", not_null=True),
    Column("reason", "VARCHAR", not_null=True),
    Column("occurred_at", "TIMESTAMP"),
)
_REFRESH_COLUMNS = (
    Column("refresh_id", "VARCHAR", not_null=True),
    Column("evaluated_at", "TIMESTAMP", not_null=True),
    Column("previous_evaluated_at", "TIMESTAMP"),
    Column("daily_as_of", "DATE"),
    Column("definitions", "JSON", not_null=True),
)
STAGED_TRIGGER_MEMBERS = Table("staging", "trigger_members", _TRIGGER_MEMBER_COLUMNS)
PUBLISHED_TRIGGER_MEMBERS = STAGED_TRIGGER_MEMBERS.in_schema("published")
STAGED_EVALUATED_FILES = Table("staging", "trigger_evaluated_files", _EVALUATED_FILE_COLUMNS)
PUBLISHED_EVALUATED_FILES = STAGED_EVALUATED_FILES.in_schema("published")
STAGED_SUPPRESSIONS = Table("staging", "trigger_suppressions", _SUPPRESSION_COLUMNS)
PUBLISHED_SUPPRESSIONS = Table("published", "suppressions", _SUPPRESSION_COLUMNS)
STAGED_REFRESHES = Table("staging", "trigger_refreshes", _REFRESH_COLUMNS)
PUBLISHED_REFRESHES = Table(
    "published",
    "trigger_refreshes",
    (
        *_REFRESH_COLUMNS,
        Column("run_id", "VARCHAR", not_null=True),
        Column("published_at", "TIMESTAMP", not_null=True),
        Column("members", "BIGINT", not_null=True),
        Column("exported", "BIGINT", not_null=True),
        Column("suppressions", "BIGINT", not_null=True),
        Column("exports_dir", "VARCHAR"),
    ),
    primary_key=("refresh_id",),
)
TRIGGERS = (
    STAGED_TRIGGER_MEMBERS,
    STAGED_EVALUATED_FILES,
    PUBLISHED_TRIGGER_MEMBERS,
    PUBLISHED_EVALUATED_FILES,
    STAGED_SUPPRESSIONS,
    PUBLISHED_SUPPRESSIONS,
    STAGED_REFRESHES,
    PUBLISHED_REFRESHES,
)

# --------------------------------------------------------------------------- monitoring

DRIFT_METRICS = Table(
    "monitoring",
    "drift_metrics",
    (
        Column("as_of_date", "DATE", not_null=True),
        Column("check_name", "VARCHAR", not_null=True),
        Column("model_kind", "VARCHAR"),
        Column("model_version", "INTEGER"),
        Column("name", "VARCHAR", not_null=True),
        Column("statistic", "VARCHAR", not_null=True),
        Column("value", "DOUBLE"),
        Column("warn_at", "DOUBLE"),
        Column("alert_at", "DOUBLE"),
        Column("level", "VARCHAR", not_null=True),
        Column("compared_with", "VARCHAR", not_null=True),
        Column("rows", "BIGINT", not_null=True),
    ),
)
MODEL_PERFORMANCE = Table(
    "monitoring",
    "model_performance",
    (
        Column("as_of_date", "DATE", not_null=True),
        Column("scored_date", "DATE", not_null=True),
        Column("model_kind", "VARCHAR", not_null=True),
        Column("model_version", "INTEGER", not_null=True),
        Column("customers", "BIGINT", not_null=True),
        Column("metric", "VARCHAR", not_null=True),
        Column("realized", "DOUBLE"),
        Column("validation", "DOUBLE"),
        Column("change", "DOUBLE"),
        Column("alert_at", "DOUBLE"),
        Column("level", "VARCHAR", not_null=True),
    ),
)
DRIFT_ALERTS = Table(
    "monitoring",
    "drift_alerts",
    (
        Column("as_of_date", "DATE", not_null=True),
        Column("raised", "BOOLEAN", not_null=True),
        Column("models", "VARCHAR[]", not_null=True),
        Column("reasons", "JSON", not_null=True),
        Column("report", "VARCHAR", not_null=True),
    ),
)
MONITORING = (DRIFT_METRICS, MODEL_PERFORMANCE, DRIFT_ALERTS)

TABLES: tuple[Table, ...] = (
    *INGESTION,
    *PRIVACY,
    REVIEW_SENTIMENT,
    VALIDATION_RESULTS,
    *STAGED_SEGMENTS,
    *PUBLISHED_SEGMENTS,
    PUBLICATIONS,
    CAMPAIGN_READOUTS,
    *TRIGGERS,
    *MONITORING,
)
"""Every table segflow writes outside dbt."""
