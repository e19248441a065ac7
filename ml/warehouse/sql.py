"""SQL text segflow writes itself: names and constants quoted the way DuckDB reads them.

What a query can take as a parameter is passed as one. What it cannot (a column named in a
landing file's header, a file's path in COPY or a table function, a pattern inside a macro or
a generated CASE) is quoted here, never pasted in as it is.
"""

from __future__ import annotations

import datetime as dt


def identifier(name: str) -> str:
    """A column or table name in double quotes, a double quote inside it doubled."""
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    """A string constant in single quotes, a single quote inside it doubled."""
    return "'" + value.replace("'", "''") + "'"


def timestamp_literal(value: dt.datetime) -> str:
    """A TIMESTAMP constant, to the second."""
    return f"TIMESTAMP '{value:%Y-%m-%d %H:%M:%S}'"
