"""The data contract's rules, row by row: a staged batch (ml/ingest/reading.py) is typed and
checked in SQL, and each row is written where it ends: `raw`, `quarantine.violations` or
`quarantine.held_rows` (ml/ingest/loader.py says what each means). A personal value is kept in
quarantine as its shape only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb

from ml.config import Settings
from ml.contract import OPT_IN_SPELLINGS, PERSONAL_COLUMNS, VERSION_ORDER, Column, Entity
from ml.ingest.reading import FileSchema
from ml.privacy.pseudonyms import CUSTOMER_ID, EMAIL, pseudonym_sql
from ml.warehouse.sql import identifier, literal, timestamp_literal

SHAPE_CHARACTERS = 40


def shape_sql(value: str) -> str:
    """SQL: what a (personal) value looks like without what it says: every run of letters is
    `a`, every run of digits `9`, other characters stay, then its length, e.g.
    `a.a@a.a (20 characters)` for an address. Enough to see a missing `@`, a stray blank or an
    id written as `42.0`; not enough to tell whose value it was. Null stays null."""
    letters = f"regexp_replace({value}, '[\\pL\\pM]+', 'a', 'g')"
    digits = f"regexp_replace({letters}, '\\pN+', '9', 'g')"
    return (
        f"CASE WHEN {value} IS NOT NULL THEN left({digits}, {SHAPE_CHARACTERS}) || ' (' "
        f"|| length({value}) || ' characters)' END"
    )


def is_personal_sql(column: str) -> str:
    """SQL: whether the column named by `column` is personal (PERSONAL_COLUMNS)."""
    return f"{column} IN ({', '.join(literal(c) for c in sorted(PERSONAL_COLUMNS))})"


ID_AS_INTEGER = r"^(-?[0-9]+)\.0+$"
"""An id written as a number with only zeros after the point is that integer (`42.0` -> `42`):
what pandas writes for an integer column that had a null."""


def _source_value(column: str, source_type: str | None) -> str:
    """The value as the file has it; text trimmed and empty text as null (SQL)."""
    ref = identifier(column)
    if source_type is None:
        return "NULL::VARCHAR"
    if source_type == "VARCHAR":
        return f"nullif(trim({ref}), '')"
    return ref


def spelling_sql(value: str) -> str:
    """contract.spelling in SQL."""
    return f"trim(regexp_replace(lower(trim({value}::VARCHAR)), '[^0-9a-z]+', '_', 'g'), '_')"


def _typed(column: Column, source_type: str | None) -> str:
    """The value cast to its contract type, null when it cannot be (SQL)."""
    if source_type is None:
        return f"NULL::{column.sql_type}"
    value = _source_value(column.name, source_type)
    if column.is_id:
        return f"regexp_replace({value}::VARCHAR, '{ID_AS_INTEGER}', '\\1')"
    if column.accepted:
        names = " ".join(
            f"WHEN {literal(name)} THEN {literal(meaning)}" for name, meaning in column.synonyms
        )
        spelled = spelling_sql(value)
        return f"CASE {spelled} {names} ELSE {spelled} END" if names else spelled
    if column.type == "boolean":
        names = " ".join(
            f"WHEN {literal(name)} THEN {str(meaning).lower()}"
            for name, meaning in OPT_IN_SPELLINGS.items()
        )
        return f"CASE {spelling_sql(value)} {names} END"
    if column.type == "timestamp":
        # Text without an offset is UTC; with an offset it is converted to UTC.
        return f"try_cast({value} AS TIMESTAMPTZ)::TIMESTAMP"
    return f"try_cast({value} AS {column.sql_type})"


@dataclass(frozen=True)
class _Rule:
    text: str
    broken: str
    """SQL, true when the rule is broken, on `t_<col>` (typed) and `s_<col>` (as delivered)."""
    action: str
    """rejected (the row), nulled or defaulted (the value), held (the row waits)."""


def _rules(column: Column, loaded_at: dt.datetime, settings: Settings) -> list[_Rule]:
    typed, text = identifier("t_" + column.name), identifier("s_" + column.name)
    on_value = "rejected" if column.rejects_row else "nulled"
    rules = []
    if column.required:
        rules.append(_Rule("required value is missing", f"{text} IS NULL", "rejected"))
    if column.type == "boolean":
        # Consent errs on the side of the customer: a value we cannot read means "no".
        rules.append(
            _Rule(
                "not a recognised yes/no value: taken as false (not e-mailable)",
                f"{text} IS NOT NULL AND {typed} IS NULL",
                "defaulted",
            )
        )
    elif column.type != "string":
        rules.append(
            _Rule(f"not a valid {column.type}", f"{text} IS NOT NULL AND {typed} IS NULL", on_value)
        )
    if column.accepted:
        allowed = ", ".join(literal(v) for v in column.accepted)
        rules.append(
            _Rule(
                f"must be one of {', '.join(column.accepted)}"
                + (" (or an e-mail tool's name for one)" if column.synonyms else ""),
                f"{typed} NOT IN ({allowed})",
                on_value,
            )
        )
    if column.minimum is not None:
        rules.append(
            _Rule(f"must be >= {column.minimum:g}", f"{typed} < {column.minimum}", on_value)
        )
    maximum = loaded_at.year if column.maximum_is_current_year else column.maximum
    if maximum is not None:
        rules.append(_Rule(f"must be <= {maximum:g}", f"{typed} > {maximum}", on_value))
    if column.pattern:
        rules.append(
            _Rule(
                f"must be {column.pattern_rule}",
                f"NOT regexp_full_match({typed}, {literal(column.pattern)})",
                on_value,
            )
        )
    if column.not_in_future:
        skew = settings.loading.clock_skew_hours
        tolerated = loaded_at + dt.timedelta(hours=skew)
        rules.append(
            _Rule(
                f"more than {skew:g} h later than the load time ({loaded_at:%Y-%m-%d %H:%M:%S} "
                "UTC; SEGFLOW_CLOCK_SKEW_HOURS)",
                f"{typed} > {timestamp_literal(tolerated)}",
                "rejected",
            )
        )
        rules.append(
            _Rule(
                "later than the load time: waits until that time has passed",
                f"{typed} > {timestamp_literal(loaded_at)} "
                f"AND {typed} <= {timestamp_literal(tolerated)}",
                "held",
            )
        )
    return rules


def _has_action(action: str) -> str:
    return f"list_contains(list_transform(_violations, lambda v: v.action), '{action}')"


REJECTED = _has_action("rejected")
HELD = f"({_has_action('held')} AND NOT {REJECTED})"
LOADED = f"(NOT {_has_action('held')} AND NOT {REJECTED} AND NOT _unchanged)"


def check_batch(
    con: duckdb.DuckDBPyConnection,
    entity: Entity,
    schema: FileSchema,
    loaded_at: dt.datetime,
    settings: Settings,
    retried: bool = False,
) -> None:
    """Turn `batch` into `checked`: the values as delivered (`s_`), typed (`t_`) and as they
    are kept (`v_`, after nulling), a list of violations per row, and `_unchanged`. Held rows
    tried again (`retried`) that waited too long become rejections."""
    selects, conditions, violations, kept = [], [], [], []
    for column in entity.columns:
        source_type = schema.source_types.get(column.name)
        source = identifier("s_" + column.name)
        typed = identifier("t_" + column.name)
        selects.append(f"{_source_value(column.name, source_type)} AS {source}")
        selects.append(f"{_typed(column, source_type)} AS {typed}")
        value_rules = {"nulled": [], "defaulted": []}
        for rule in _rules(column, loaded_at, settings):
            broken = f"coalesce({rule.broken}, false)"
            conditions.append(broken)
            violations.append(
                f"CASE WHEN {broken} THEN {{'column_name': {literal(column.name)}, "
                f"'rule': {literal(rule.text)}, 'value': {source}::VARCHAR, "
                f"'action': {literal(rule.action)}}} END"
            )
            if rule.action in value_rules:
                value_rules[rule.action].append(broken)
        value = typed
        if value_rules["defaulted"]:
            value = f"CASE WHEN {' OR '.join(value_rules['defaulted'])} THEN false ELSE {value} END"
        if value_rules["nulled"]:
            value = f"CASE WHEN {' OR '.join(value_rules['nulled'])} THEN NULL ELSE {value} END"
        kept.append(f"{value} AS {identifier('v_' + column.name)}")
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE checked AS
        SELECT *, {", ".join(kept)},
            -- Most rows break no rule: test that cheaply before building the list.
            CASE WHEN {" OR ".join(conditions) or "false"}
                 THEN list_filter([{", ".join(violations)}], lambda v: v IS NOT NULL)
                 ELSE [] END AS _violations,
            false AS _unchanged
        FROM (SELECT {", ".join(selects)}, _extra, _source_file, _source_row, _partition_date,
                     _held_since FROM batch)"""
    )
    _check_keys_and_references(con, entity)
    _reject_erased(con, entity)
    if retried:
        _expire_held_rows(con, loaded_at, settings.loading.hold_days)


def _values_hash(entity: Entity, prefix: str = "") -> str:
    """A hash of the values that make a version (all but `updated_at`, which only orders them)."""
    columns = [c.name for c in entity.columns if c.name != "updated_at"]
    return f"hash({', '.join(identifier(prefix + name) for name in columns)})"


def _check_keys_and_references(con: duckdb.DuckDBPyConnection, entity: Entity) -> None:
    """Unknown customers (held), and what a known key means: for customers and orders a new
    version unless the values equal the last delivered version (then unchanged); for the
    append-only entities unchanged when equal to the first delivery, else rejected."""
    key = identifier("v_" + entity.key)
    passing = f"NOT {REJECTED} AND NOT {_has_action('held')}"
    customer_columns = (
        ", v_customer_id, s_customer_id::VARCHAR AS s_customer_id"
        if entity.references_customers
        else ""
    )
    waiting = ""
    if entity.references_customers:
        waiting = """
            WHEN NOT EXISTS (SELECT 1 FROM raw.customer_versions known
                             WHERE known.customer_id = p.v_customer_id)
            THEN {'column_name': 'customer_id',
                  'rule': 'waits for its customer (no such customer_id delivered yet)',
                  'value': p.s_customer_id, 'action': 'held'}"""
    if entity.versioned:
        # Equal to the version delivered just before it: nothing new. Other values are a new
        # version, never an error.
        reference = "coalesce(p.previous, prior.last)"
        differs = "false"
    else:
        # The first delivery of an event is the event; a later one must repeat it exactly.
        reference = "CASE WHEN prior.k IS NULL AND p.is_first THEN NULL ELSE coalesce(prior.first, p.first) END"
        differs = f"p.h <> {reference}"
    prior_first = f"arg_min({_values_hash(entity)}, ({VERSION_ORDER.replace('_version_at, ', '')}))"
    prior_last = f"arg_max({_values_hash(entity)}, ({VERSION_ORDER.replace('_version_at, ', '')}))"
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE key_checks AS
        WITH passing AS (
            SELECT {key} AS k, {identifier("s_" + entity.key)}::VARCHAR AS s_key,
                   _source_file, _source_row, {_values_hash(entity, "v_")} AS h
                   {customer_columns}
            FROM checked WHERE {passing}
        ),
        sequenced AS (
            SELECT *,
                lag(h) OVER delivery AS previous,
                first_value(h) OVER delivery AS first,
                row_number() OVER delivery = 1 AS is_first
            FROM passing
            WINDOW delivery AS (PARTITION BY k ORDER BY _source_file, _source_row)
        ),
        prior AS (
            SELECT {identifier(entity.key)} AS k, {prior_first} AS first, {prior_last} AS last,
                   min(_source_file || ' row ' || _source_row) AS seen
            FROM raw.{entity.table}
            WHERE {identifier(entity.key)} IN (SELECT k FROM passing)
            GROUP BY 1
        )
        SELECT p._source_file, p._source_row,
            CASE
                {waiting}
                WHEN {differs}
                THEN {{'column_name': {literal(entity.key)},
                       'rule': 'delivered again with other values (first seen in '
                               || coalesce(prior.seen, p._source_file) || ')',
                       'value': p.s_key, 'action': 'rejected'}}
            END AS v,
            coalesce(p.h = {reference}, false) AS unchanged
        FROM sequenced p
        LEFT JOIN prior ON prior.k = p.k"""
    )
    con.execute(
        """UPDATE checked
        SET _violations = CASE WHEN e.v IS NULL THEN checked._violations
                               ELSE list_append(checked._violations, e.v) END,
            _unchanged = e.v IS NULL AND e.unchanged
        FROM key_checks e
        WHERE (e.v IS NOT NULL OR e.unchanged)
          AND checked._source_file = e._source_file AND checked._source_row = e._source_row"""
    )


ERASED_RULE = "names a forgotten customer (segflow forget): not loaded, values not kept"


def _reject_erased(con: duckdb.DuckDBPyConnection, entity: Entity) -> None:
    """A row of a customer segflow was asked to forget (by id or address, compared by keyed
    hash, ml/privacy/erasure.py) is rejected with this rule alone: no value of it is kept anywhere."""
    if not con.execute("SELECT count(*) FROM privacy.erased_identities").fetchone()[0]:
        return
    names = {column.name for column in entity.columns}
    matches = [
        f"""EXISTS (SELECT 1 FROM privacy.erased_identities e WHERE e.kind = '{kind}'
                    AND e.identity_hash = {pseudonym_sql(kind, identifier("v_" + kind))})"""
        for kind in (CUSTOMER_ID, EMAIL)
        if kind in names
    ]
    if not matches:
        return
    con.execute(
        f"""UPDATE checked SET _unchanged = false,
               _violations = [{{'column_name': '{CUSTOMER_ID if CUSTOMER_ID in names else EMAIL}',
                                'rule': {literal(ERASED_RULE)}, 'value': NULL::VARCHAR,
                                'action': 'rejected'}}]
            WHERE {" OR ".join(matches)}"""
    )


def _expire_held_rows(con: duckdb.DuckDBPyConnection, loaded_at: dt.datetime, days: float) -> None:
    """A row held for longer than SEGFLOW_HOLD_DAYS is rejected for what it waited for."""
    deadline = loaded_at - dt.timedelta(days=days)
    con.execute(
        f"""UPDATE checked SET _violations = list_transform(_violations, lambda v:
                CASE WHEN v.action = 'held'
                     THEN {{'column_name': v.column_name,
                           'rule': 'held since ' || strftime(_held_since, '%Y-%m-%d %H:%M')
                                   || ' for more than {days:g} days (SEGFLOW_HOLD_DAYS): '
                                   || v.rule,
                           'value': v.value, 'action': 'rejected'}}
                     ELSE v END)
        WHERE _held_since < {timestamp_literal(deadline)} AND {HELD}"""
    )


def _record_of(schema: FileSchema, for_people: bool) -> str:
    """SQL rebuilding a row's delivered values as JSON: for people (quarantine.violations) by
    the file's column names and without personal columns; for held rows whole and by contract
    names (to be read again)."""
    fields = [
        f"{literal(source if for_people else column)}: {identifier('s_' + column)}::VARCHAR"
        for column, source in schema.source_names.items()
        if source is not None and not (for_people and column in PERSONAL_COLUMNS)
    ]
    return f"to_json({{{', '.join(fields)}}})" if fields else "'{}'::JSON"


def write_checked(
    con: duckdb.DuckDBPyConnection,
    entity: Entity,
    schema: FileSchema,
    loaded_at: dt.datetime,
) -> dict[str, tuple[int, ...]]:
    """Append loaded rows to raw, violations to quarantine and held rows to the held table;
    counts per source file (rows, loaded, unchanged, held, rejected, values nulled)."""
    at = timestamp_literal(loaded_at)
    values = ", ".join(
        f"{identifier('v_' + c.name)} AS {identifier(c.name)}" for c in entity.columns
    )
    version = (
        f", coalesce(v_updated_at, _partition_date::TIMESTAMP, {at}) AS _version_at"
        if entity.versioned
        else ""
    )
    con.execute(
        f"""INSERT INTO raw.{entity.table} BY NAME
        SELECT {values}, _extra, _source_file, _source_row, {at} AS _loaded_at {version}
        FROM checked WHERE {LOADED}"""
    )
    # A personal value is kept as its shape only, and the record without personal columns:
    # also for a held row that waited too long (ml/ingest/loader.py).
    personal = is_personal_sql("v.column_name")
    # The pseudonym, not the id: an erasure finds the person's rejected rows by it.
    customer_key = (
        pseudonym_sql(CUSTOMER_ID, "s_customer_id")
        if any(column.name == CUSTOMER_ID for column in entity.columns)
        else "NULL::VARCHAR"
    )
    con.execute(
        f"""INSERT INTO quarantine.violations BY NAME
        SELECT {literal(entity.name)} AS entity, _source_file AS source_file,
               _source_row AS source_row, v.column_name AS column_name, v.rule AS rule,
               CASE WHEN {personal} THEN NULL ELSE v.value END AS value,
               CASE WHEN {personal} THEN {shape_sql("v.value")} END AS value_shape,
               v.action AS action, CASE WHEN v.rule = {literal(ERASED_RULE)} THEN '{{}}'::JSON
                                        ELSE _record END AS record, {at} AS loaded_at,
               CASE WHEN v.rule <> {literal(ERASED_RULE)} THEN _customer_key END AS customer_key
        FROM (SELECT _source_file, _source_row, {_record_of(schema, True)} AS _record,
                     {customer_key} AS _customer_key, unnest(_violations) AS v
              FROM checked WHERE len(_violations) > 0 AND NOT {HELD} AND NOT _unchanged)
        WHERE v.action <> 'held'
        ORDER BY _source_file, _source_row, v.column_name"""
    )
    con.execute(
        f"""INSERT INTO quarantine.held_rows
        SELECT {literal(entity.name)}, _source_file, _source_row,
               array_to_string(list_transform(list_filter(_violations,
                   lambda v: v.action = 'held'), lambda v: v.column_name || ': ' || v.rule), '; '),
               {_record_of(schema, False)}, _extra, coalesce(_held_since, {at}), {at}
        FROM checked WHERE {HELD}"""
    )
    nulled = "len(list_filter(_violations, lambda v: v.action IN ('nulled', 'defaulted')))"
    counts = con.execute(
        f"""SELECT _source_file, count(*),
                   count(*) FILTER (WHERE {LOADED}),
                   count(*) FILTER (WHERE _unchanged AND NOT {REJECTED}),
                   count(*) FILTER (WHERE {HELD}),
                   count(*) FILTER (WHERE {REJECTED}),
                   coalesce(sum({nulled}) FILTER (WHERE {LOADED}), 0)
            FROM checked GROUP BY _source_file"""
    ).fetchall()
    return {row[0]: tuple(int(n) for n in row[1:]) for row in counts}
