"""Campaign audiences: the marketer's definitions (YAML), their members and stable holdouts.

An audience is a set of filters over the published segment columns plus a holdout share. Its
members are the e-mailable customers of a date that match every filter; a member is in the
holdout when `md5(audience || ':' || customer_id)`, read as a fraction of [0, 1) from its first
32 bits, is below the share. The hash, not a random draw, decides: a customer stays in
treatment or control for an audience across runs and dates (only a changed share moves people,
and then only across the new boundary), and any tool can recompute it.

The file (`SEGFLOW_AUDIENCES_PATH`, default `audiences.yml` in the project):

    audiences:
      - name: vip_offer                      # letters, digits, _ and -; names the export file
        description: Early access for our best customers
        holdout_share: 0.10                  # 0 <= share < 1
        filters:                             # all must hold (AND)
          segment: [Loyal high spenders]     # a list: one of these values
          purchase_propensity: {">=": 0.6}   # operators: in, not in, ==, !=, >=, >, <=, <
          churn_risk_band: high              # a single value: equals

A filter on `churn_risk` or its band matches active customers only (others have no churn risk);
a filter on the score of a model that is not applicable (null for everyone) matches nobody.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import yaml

from ml.errors import AudienceError
from ml.features.vocabulary import RFM_SEGMENTS
from ml.models import catalogue

BANDS = ("low", "medium", "high")
SEND_HOUR_SOURCES = ("customer", "segment")

TEXT, NUMBER, HOUR = "text", "number", "hour"
AUDIENCE_COLUMNS = {
    catalogue.PERSONAS.output_column: TEXT,
    "rfm_segment": TEXT,
    **{
        column: kind
        for model in catalogue.SCORES
        for column, kind in (
            (model.output_column, NUMBER),
            *([(model.band_column, TEXT)] if model.band_column else []),
        )
    },
    "best_send_hour": HOUR,
    "send_hour_source": TEXT,
}
"""The published columns an audience may filter on, and what their values are."""
PROBABILITY_COLUMNS = frozenset(model.output_column for model in catalogue.PROBABILITIES)

OPERATORS = ("in", "not in", "==", "!=", ">=", ">", "<=", "<")
ORDERING = (">=", ">", "<=", "<")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
AUDIENCE_FIELDS = ("name", "description", "holdout_share", "filters")

HOLDOUT_FRACTION_SQL = (
    "('0x' || left(md5({audience} || ':' || customer_id), 8))::UBIGINT / 4294967296.0"
)
"""The customer's place in [0, 1) for an audience: md5's first 32 bits as a fraction (the same
in Python: int(hashlib.md5(f"{audience}:{customer_id}".encode()).hexdigest()[:8], 16) / 2**32)."""


@dataclass(frozen=True)
class Filter:
    column: str
    operator: str
    value: str | float | tuple

    def sql(self) -> tuple[str, list]:
        """The condition with `?` placeholders and its parameters (the column is from the
        allow-list, never from the file's text)."""
        if self.operator in ("in", "not in"):
            placeholders = ", ".join("?" for _ in self.value)
            negation = "NOT " if self.operator == "not in" else ""
            return f"{self.column} {negation}IN ({placeholders})", list(self.value)
        return f"{self.column} {'=' if self.operator == '==' else self.operator} ?", [self.value]


@dataclass(frozen=True)
class Audience:
    name: str
    description: str
    holdout_share: float
    filters: tuple[Filter, ...]

    def where_sql(self) -> tuple[str, list]:
        parts, params = [], []
        for condition in self.filters:
            text, values = condition.sql()
            parts.append(f"({text})")
            params += values
        return " AND ".join(parts) or "true", params


def filter_vocabulary() -> dict[str, tuple[str, ...]]:
    """The values a text column can hold, so that a typo is an error, not an empty audience."""
    return {
        "segment": tuple(catalogue.PERSONA_NAMES),
        "rfm_segment": RFM_SEGMENTS,
        **{model.band_column: BANDS for model in catalogue.PROBABILITIES},
        "send_hour_source": SEND_HOUR_SOURCES,
    }


def _check_value(where: str, column: str, value, vocabulary: dict) -> str | float:
    kind = AUDIENCE_COLUMNS[column]
    if kind == TEXT:
        if not isinstance(value, str):
            raise AudienceError(f"{where}: expected text, got {value!r}")
        allowed = vocabulary[column]
        if value not in allowed:
            raise AudienceError(
                f"{where}: {value!r} is not a value of {column} (one of: {', '.join(allowed)})"
            )
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AudienceError(f"{where}: expected a number, got {value!r}")
    if kind == HOUR and not (isinstance(value, int) and 0 <= value <= 23):
        raise AudienceError(f"{where}: expected an hour 0..23, got {value!r}")
    if column in PROBABILITY_COLUMNS and not 0 <= value <= 1:
        raise AudienceError(f"{where}: {column} is a probability, {value!r} is not in [0, 1]")
    return float(value) if kind == NUMBER else value


def parse_filters(where: str, raw, vocabulary: dict) -> tuple[Filter, ...]:
    if not isinstance(raw, dict) or not raw:
        raise AudienceError(
            f"{where}: expected a mapping of column to condition, e.g. "
            "{segment: [Regular buyers], purchase_propensity: {'>=': 0.5}}"
        )
    filters = []
    for column, condition in raw.items():
        at = f"{where}.{column}"
        if column not in AUDIENCE_COLUMNS:
            raise AudienceError(
                f"{at}: unknown column {column!r}; audiences can filter on: "
                f"{', '.join(AUDIENCE_COLUMNS)}"
            )
        if isinstance(condition, list):
            condition = {"in": condition}
        elif not isinstance(condition, dict):
            condition = {"==": condition}
        if not condition:
            raise AudienceError(f"{at}: empty condition")
        for operator, value in condition.items():
            if operator not in OPERATORS:
                raise AudienceError(
                    f"{at}: unknown operator {operator!r} (use one of: {', '.join(OPERATORS)})"
                )
            if operator in ("in", "not in"):
                if not isinstance(value, list) or not value:
                    raise AudienceError(f"{at}: '{operator}' needs a non-empty list")
                checked = tuple(_check_value(at, column, v, vocabulary) for v in value)
                filters.append(Filter(column, operator, checked))
                continue
            if operator in ORDERING and AUDIENCE_COLUMNS[column] == TEXT:
                raise AudienceError(f"{at}: '{operator}' compares numbers; {column} is text")
            filters.append(Filter(column, operator, _check_value(at, column, value, vocabulary)))
    return tuple(filters)


def parse_entry(file: Path, kind: str, index: int, raw, fields: tuple[str, ...]) -> tuple[str, str]:
    """The name of the `index`th entry of a list (an audience, a trigger) and the prefix of its
    error messages, once its name and the set of its fields are checked."""
    if not isinstance(raw, dict):
        raise AudienceError(f"{file}: {kind} #{index + 1}: expected a mapping with name, filters")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise AudienceError(
            f"{file}: {kind} #{index + 1}: field 'name': {name!r} is not a usable name "
            "(letters, digits, _ and -, at most 64; it names the export file)"
        )
    where = f"{file}: {kind} '{name}': field"
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise AudienceError(f"{where} '{unknown[0]}': unknown field (fields: {', '.join(fields)})")
    return name, where


def _parse_audience(file: Path, index: int, raw, vocabulary: dict) -> Audience:
    name, where = parse_entry(file, "audience", index, raw, AUDIENCE_FIELDS)
    share = parse_holdout_share(where, raw.get("holdout_share"))
    description = parse_description(where, raw.get("description", ""))
    filters = parse_filters(f"{where} 'filters'", raw.get("filters"), vocabulary)
    return Audience(name, description, share, filters)


def parse_holdout_share(where: str, share) -> float:
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share < 1:
        raise AudienceError(
            f"{where} 'holdout_share': expected a share in [0, 1), e.g. 0.1, got {share!r}"
        )
    return float(share)


def parse_description(where: str, description) -> str:
    if not isinstance(description, str):
        raise AudienceError(f"{where} 'description': expected text")
    return description.strip()


def read_audience_file(path: Path) -> dict:
    """The audience file's YAML document (a mapping); AudienceError when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AudienceError(
            f"{path}: audience file not found (set SEGFLOW_AUDIENCES_PATH or create it)"
        ) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise AudienceError(f"{path}: not valid YAML{at}: {problem}") from None
    if not isinstance(document, dict):
        raise AudienceError(f"{path}: expected a mapping with an 'audiences:' list")
    return document


def load_audiences(path: Path) -> list[Audience]:
    """Read and validate the audience file; raise AudienceError naming what is wrong."""
    path = Path(path)
    document = read_audience_file(path)
    if not isinstance(document.get("audiences"), list):
        raise AudienceError(f"{path}: expected a top-level 'audiences:' list")
    vocabulary = filter_vocabulary()
    audiences = [
        _parse_audience(path, i, raw, vocabulary) for i, raw in enumerate(document["audiences"])
    ]
    check_unique_names(path, "audience", [audience.name for audience in audiences])
    return audiences


def check_unique_names(path: Path, kind: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name.lower() in seen:
            raise AudienceError(
                f"{path}: {kind} '{name}': field 'name': used twice "
                "(names are compared case-insensitively, as file names may be)"
            )
        seen.add(name.lower())


def audience_definitions(audiences: list[Audience]) -> list[tuple[str, str, float, str]]:
    """(name, description, holdout share, filters as JSON) per audience, for the record of what
    an audience meant on a date."""
    return [
        (
            a.name,
            a.description,
            a.holdout_share,
            json.dumps([[f.column, f.operator, f.value] for f in a.filters]),
        )
        for a in audiences
    ]


def build_members(
    con: duckdb.DuckDBPyConnection, audiences: list[Audience], segments: str, target: str
) -> None:
    """Fill `target` (as_of_date, audience, customer_id, is_holdout) with each audience's
    members among the rows of `segments` (one date's scored customers)."""
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE {target} (
            as_of_date DATE, audience VARCHAR, customer_id VARCHAR, is_holdout BOOLEAN)"""
    )
    for audience in audiences:
        where, params = audience.where_sql()
        fraction = HOLDOUT_FRACTION_SQL.format(audience="?")
        con.execute(
            f"""INSERT INTO {target}
                SELECT as_of_date, ?, customer_id, {fraction} < ?
                FROM {segments} WHERE is_emailable AND {where}""",
            [audience.name, audience.name, audience.holdout_share, *params],
        )


def audience_counts(
    con: duckdb.DuckDBPyConnection, schema: str, as_of: dt.date
) -> list[tuple[str, str, float, int, int]]:
    """Per audience of the date in `schema` (staging or published): name, description, holdout
    share, treatment and holdout members; an audience with no members counts zero."""
    return con.execute(
        f"""SELECT d.audience, d.description, d.holdout_share,
                   count(m.customer_id) FILTER (WHERE NOT m.is_holdout),
                   count(m.customer_id) FILTER (WHERE m.is_holdout)
            FROM {schema}.audience_definitions d
            LEFT JOIN {schema}.audience_members m
                ON m.as_of_date = d.as_of_date AND m.audience = d.audience
            WHERE d.as_of_date = ? GROUP BY ALL ORDER BY d.audience""",
        [as_of],
    ).fetchall()
