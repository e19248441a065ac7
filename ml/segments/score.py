"""Scoring a date's customers with the champion models into `staging.customer_segments`.

Each model is loaded by its `champion` alias and every row records the version behind each
score. Customers are read and scored in chunks of `SEGFLOW_SCORING_CHUNK_ROWS` (by ranges of
customer_id), and each chunk's scores go straight into the warehouse, so memory stays flat as
the customer base grows. The rest (bands, send hour, consent, audiences and holdouts) is SQL
over the whole date.

- segment: the persona of the customer's cluster (`personas` model).
- purchase_propensity, engagement_propensity: probabilities in [0, 1]; churn_risk likewise, but
  only for active customers (a completed order in the 365 days before the date); it is null for
  the others, for whom churn is not defined.
- predicted_clv: the `customer_value` model's revenue, clipped at 0.
- bands: by rank within the date, as e-mail tools present scores: `high` for the top 20%,
  `medium` for the next 30%, `low` for the rest; tied scores share the better band.
- best_send_hour: the customer's own most frequent open/click hour; else the most common one of
  their persona on the date, else of everyone, else 10:00 (UTC).
- is_emailable / suppression_reason: the first of unsubscribed, complaint, hard_bounce,
  no_opt_in, invalid_address that applies; none means e-mailable.
- holdout_audiences: the audiences (audiences.yml) in which the customer is in the holdout;
  the members of each audience go to `staging.audience_members`.

A model marked not applicable in the registry (the data cannot support it, ml/models/registry.py) is
not loaded: its score, band and model version are null for every customer, and the reason goes
to `staging.not_applicable_models`. An audience filter on a null score matches nobody.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable

import duckdb
import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import OrdinalEncoder

from ml.config import PublishSettings, Settings
from ml.errors import ScoringError
from ml.models import catalogue
from ml.models.registry import NotApplicable, load_champion, not_applicable_models
from ml.segments.audiences import Audience, audience_definitions, build_members, load_audiences
from ml.warehouse import tables
from ml.warehouse.connection import connect, table_exists

log = logging.getLogger(__name__)


def not_applicable_on(con: duckdb.DuckDBPyConnection, schema: str, as_of: dt.date) -> dict:
    """The models not applicable when the date was scored, in `schema` (staging or published):
    model kind -> reason."""
    if not table_exists(con, schema, "not_applicable_models"):
        return {}
    return dict(
        con.execute(
            f"""SELECT model_kind, reason FROM {schema}.not_applicable_models
                WHERE as_of_date = ? ORDER BY model_kind""",
            [as_of],
        ).fetchall()
    )


def _chunk_bounds(con: duckdb.DuckDBPyConnection, as_of: dt.date, chunk_rows: int) -> list[str]:
    """The first customer_id of each chunk, in key order."""
    return [
        row[0]
        for row in con.execute(
            f"""SELECT customer_id FROM (
                    SELECT customer_id, row_number() OVER (ORDER BY customer_id) - 1 AS position
                    FROM marts.customer_features WHERE as_of_date = ?)
                WHERE position % {chunk_rows} = 0 ORDER BY customer_id""",
            [as_of],
        ).fetchall()
    ]


def _model_input(frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """The model's columns as training saw them (from Parquet): DuckDB hands nullable integers
    over as pandas' Int64 with pd.NA, the models were fitted on float64 with NaN."""
    data = frame[features]
    nullable = {
        column: "float64"
        for column, dtype in data.dtypes.items()
        if isinstance(dtype, pd.api.extensions.ExtensionDtype)
        and pd.api.types.is_numeric_dtype(dtype)
    }
    return data.astype(nullable) if nullable else data


def _encode_by_distinct_values(encoder: OrdinalEncoder, data: pd.DataFrame) -> np.ndarray:
    """`encoder.transform(data)`, computed on each column's distinct values and spread to the
    rows: the encoder looks values up one by one in Python (1.5 s per 250,000 rows and model),
    while it maps each value on its own, so encoding the distinct ones is the same."""
    positions, distinct = {}, {}
    for column in data.columns:
        positions[column], uniques = pd.factorize(data[column])  # -1: missing
        missing = data[column][data[column].isna()]
        # The distinct values, then the column's own missing value (what the rows hold).
        distinct[column] = [*uniques, missing.iloc[0] if len(missing) else None]
    height = max(map(len, distinct.values()))
    padded = pd.DataFrame(
        {
            column: pd.Series(values + [values[-1]] * (height - len(values)), dtype=object)
            for column, values in distinct.items()
        }
    )
    encoded = encoder.transform(padded)
    codes = np.empty((len(data), len(data.columns)))
    for index, column in enumerate(data.columns):
        values = distinct[column]
        # Position -1 (missing) picks the last entry: the missing value's code.
        lookup = np.append(encoded[: len(values) - 1, index], encoded[len(values) - 1, index])
        codes[:, index] = lookup[positions[column]]
    return codes


def _prepare(columns: ColumnTransformer, data: pd.DataFrame) -> np.ndarray:
    """`columns.transform(data)` with its ordinal encoders applied by distinct values."""
    parts = []
    for _, transformer, selected in columns.transformers_:
        if transformer == "drop":
            continue
        if isinstance(transformer, OrdinalEncoder):
            parts.append(_encode_by_distinct_values(transformer, data[selected]))
        else:
            parts.append(np.asarray(transformer.transform(data[selected]), dtype=float))
    return np.hstack(parts)


def _preparation_keys(champions: dict) -> dict[str, str]:
    """Each model's key for its preparation: models whose preparation was fitted alike (the
    supervised ones usually) get the same key, the hash of the fitted steps (joblib.hash)."""
    return {
        kind: joblib.hash((champion.features, champion.model[:-1]))
        for kind, champion in champions.items()
    }


def _final_inputs(
    frame: pd.DataFrame, champions: dict, keys: dict[str, str]
) -> dict[str, np.ndarray]:
    """Each model's input to its last step, computed once per preparation key."""
    prepared: dict[str, np.ndarray] = {}
    for kind, champion in champions.items():
        if keys[kind] not in prepared:
            data = _model_input(frame, champion.features)
            first, *rest = [step for _, step in champion.model[:-1].steps]
            if isinstance(first, ColumnTransformer):
                data = _prepare(first, data)
            for step in rest:
                data = step.transform(data)
            prepared[keys[kind]] = data
    return {kind: prepared[keys[kind]] for kind in champions}


def _score_chunk(frame: pd.DataFrame, champions: dict, keys: dict[str, str]) -> pd.DataFrame:
    """The chunk's scores; a model missing from `champions` (not applicable) scores NaN."""
    inputs = _final_inputs(frame, champions, keys)
    personas = champions[catalogue.PERSONAS.kind]
    labels = personas.model[-1].predict(inputs[catalogue.PERSONAS.kind])
    names = pd.Series(personas.persona_names).loc[labels].to_numpy()
    scores = pd.DataFrame(
        {"customer_id": frame["customer_id"].to_numpy(), catalogue.PERSONAS.output_column: names}
    )
    active = (frame["orders_365d"] > 0).to_numpy()
    for model in catalogue.SCORES:
        output = np.full(len(frame), np.nan)
        rows = active if model.active_only else np.ones(len(frame), dtype=bool)
        if model.kind in champions and rows.any():
            final, x = champions[model.kind].model[-1], inputs[model.kind][rows]
            if model.probability:
                output[rows] = final.predict_proba(x)[:, 1]
            else:
                output[rows] = np.clip(final.predict(x), 0, None)  # revenue is never below 0
        scores[model.output_column] = output
    return scores


def _score_in_chunks(
    con: duckdb.DuckDBPyConnection, as_of: dt.date, champions: dict, chunk_rows: int
) -> None:
    """Model scores of every customer of the date into the temp table `model_scores`."""
    scores = ", ".join(f"{model.output_column} DOUBLE" for model in catalogue.SCORES)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE model_scores "
        f"(customer_id VARCHAR, {catalogue.PERSONAS.output_column} VARCHAR, {scores})"
    )
    features = sorted({f for champion in champions.values() for f in champion.features})
    columns = ", ".join(
        ["customer_id", "orders_365d", *(f for f in features if f != "orders_365d")]
    )
    bounds = _chunk_bounds(con, as_of, chunk_rows)
    keys = _preparation_keys(champions)
    for index, first in enumerate(bounds):
        started = time.perf_counter()
        upper = "AND customer_id < ?" if index + 1 < len(bounds) else ""
        params = [as_of, first] + ([bounds[index + 1]] if upper else [])
        frame = con.execute(
            f"""SELECT {columns} FROM marts.customer_features
                WHERE as_of_date = ? AND customer_id >= ? {upper} ORDER BY customer_id""",
            params,
        ).df()
        chunk = _score_chunk(frame, champions, keys)  # noqa: F841  (read by name in SQL)
        con.execute("INSERT INTO model_scores BY NAME SELECT * FROM chunk")
        log.info(
            "scored chunk %d/%d: %d customers in %.1fs",
            index + 1,
            len(bounds),
            len(frame),
            time.perf_counter() - started,
        )


def _band(score: str, publishing: PublishSettings) -> str:
    rank, count = f"{score}_rank", f"{score}_count"
    high, medium = publishing.band_high_share, publishing.band_medium_share
    return f"""CASE WHEN {score} IS NULL THEN NULL
                    WHEN {rank} - 1 < {high} * {count} THEN 'high'
                    WHEN {rank} - 1 < {high + medium} * {count} THEN 'medium'
                    ELSE 'low' END"""


def _build_segments(
    con: duckdb.DuckDBPyConnection, as_of: dt.date, versions: dict, publishing: PublishSettings
) -> None:
    """The date's segment rows (without holdouts) into the temp table `scored_segments`."""
    ranks = ", ".join(
        f"rank() OVER (ORDER BY {k} DESC NULLS LAST) AS {k}_rank, count({k}) OVER () AS {k}_count"
        for k in (model.output_column for model in catalogue.PROBABILITIES)
    )
    scores = ", ".join(f"s.{model.output_column}" for model in catalogue.SCORES)
    scores_and_bands = ",\n".join(
        f"{m.output_column}, {_band(m.output_column, publishing)} AS {m.band_column}"
        if m.band_column
        else m.output_column
        for m in catalogue.SCORES
    )
    version_columns = ", ".join(
        f"{'NULL' if version is None else int(version)}::INTEGER AS {kind}_model_version"
        for kind, version in versions.items()
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE scored_segments AS
        WITH base AS (
            SELECT f.customer_id, f.as_of_date, s.segment, f.rfm_segment, {scores},
                   f.preferred_hour, f.is_unsubscribed, f.has_complained, f.has_hard_bounced,
                   f.is_opted_in, f.has_valid_email
            FROM marts.customer_features f JOIN model_scores s USING (customer_id)
            WHERE f.as_of_date = ?
        ),
        hour_counts AS (
            SELECT segment, preferred_hour AS hour, count(*) AS customers
            FROM base WHERE preferred_hour IS NOT NULL GROUP BY ALL
        ),
        segment_hours AS (
            SELECT segment, arg_max(hour, (customers, -hour)) AS hour
            FROM hour_counts GROUP BY segment
        ),
        overall_hour AS (
            SELECT arg_max(hour, (customers, -hour)) AS hour
            FROM (SELECT hour, sum(customers) AS customers FROM hour_counts GROUP BY hour)
        ),
        ranked AS (
            SELECT base.*, {ranks},
                   CASE WHEN is_unsubscribed THEN 'unsubscribed'
                        WHEN has_complained THEN 'complaint'
                        WHEN has_hard_bounced THEN 'hard_bounce'
                        WHEN NOT is_opted_in THEN 'no_opt_in'
                        WHEN NOT has_valid_email THEN 'invalid_address' END AS suppression_reason
            FROM base
        )
        SELECT customer_id, as_of_date, ranked.segment, rfm_segment,
               {scores_and_bands},
               CAST(coalesce(preferred_hour, segment_hours.hour, (SELECT hour FROM overall_hour),
                             {publishing.default_send_hour}) AS INTEGER) AS best_send_hour,
               CASE WHEN preferred_hour IS NOT NULL THEN 'customer' ELSE 'segment' END
                   AS send_hour_source,
               suppression_reason IS NULL AS is_emailable,
               suppression_reason,
               {version_columns}
        FROM ranked LEFT JOIN segment_hours ON segment_hours.segment = ranked.segment""",
        [as_of],
    )


def stage_scored_segments(
    con: duckdb.DuckDBPyConnection,
    as_of: dt.date,
    audiences: list[Audience],
    not_applicable: Iterable[NotApplicable] = (),
) -> None:
    """From the temp table `scored_segments` (the date's rows, all columns but the holdouts):
    each audience's members and holdouts, then in one transaction the date's staged rows,
    members, audience definitions and the models `not_applicable` are replaced."""
    build_members(con, audiences, "scored_segments", "scored_members")
    con.execute("BEGIN TRANSACTION")
    try:
        tables.ensure(con, *tables.STAGED_SEGMENTS)
        for table in tables.STAGED_SEGMENTS:
            con.execute(f"DELETE FROM {table.qualified_name} WHERE as_of_date = ?", [as_of])
        con.execute(
            """INSERT INTO staging.customer_segments BY NAME
            SELECT s.*, coalesce(h.audiences, []::VARCHAR[]) AS holdout_audiences
            FROM scored_segments s
            LEFT JOIN (SELECT customer_id, list(audience ORDER BY audience) AS audiences
                       FROM scored_members WHERE is_holdout GROUP BY customer_id) h
                USING (customer_id)
            ORDER BY customer_id"""
        )
        con.execute(
            """INSERT INTO staging.audience_members
            SELECT * FROM scored_members ORDER BY audience, customer_id"""
        )
        if audiences:
            con.executemany(
                "INSERT INTO staging.audience_definitions VALUES (?, ?, ?, ?, ?)",
                [[as_of, *definition] for definition in audience_definitions(audiences)],
            )
        for model in not_applicable:
            con.execute(
                "INSERT INTO staging.not_applicable_models VALUES (?, ?, ?, ?)",
                [as_of, model.kind, model.reason, model.as_of],
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def score_customers(settings: Settings, as_of: dt.date) -> int:
    """Score every customer of `as_of` with the champions into `staging.customer_segments`
    (replacing the date's staged rows) and stage the audiences' members. Returns the rows
    staged. Raises ml.errors.NoChampion when a model that is not marked not applicable has no
    champion (train first)."""
    # Audiences first: a broken audience file should stop the run before minutes of scoring.
    audiences = load_audiences(settings.publishing.audiences_path)
    not_applicable = not_applicable_models(settings)
    champions = {
        kind: load_champion(settings, kind)
        for kind in catalogue.MODEL_KINDS
        if kind not in not_applicable
    }
    versions = {
        kind: champions[kind].version if kind in champions else None
        for kind in catalogue.MODEL_KINDS
    }
    started = time.perf_counter()
    with connect(settings) as con:
        customers = con.execute(
            "SELECT count(*) FROM marts.customer_features WHERE as_of_date = ?", [as_of]
        ).fetchone()[0]
        if not customers:
            raise ScoringError(
                f"no customer_features for {as_of}: build the features for that date first "
                f"(segflow features --as-of {as_of})"
            )
        _score_in_chunks(con, as_of, champions, settings.publishing.scoring_chunk_rows)
        _build_segments(con, as_of, versions, settings.publishing)
        stage_scored_segments(con, as_of, audiences, not_applicable.values())
    seconds = time.perf_counter() - started
    log.info(
        "scored %d customers as of %s in %.1fs (%.0f per second); model versions %s",
        customers,
        as_of,
        seconds,
        customers / seconds,
        versions,
    )
    return customers
