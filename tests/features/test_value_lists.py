"""The value lists that the dbt project, the benchmark and the README repeat are equal to their
one definition in Python: the data contract (ml/contract.py) for what users bring, and
ml/features/vocabulary.py for what the features' named columns hold. dbt keeps its own copies
so that the project reads on its own; these tests fail the moment one copy changes alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ml.config import PROJECT_DIR
from ml.contract import (
    EMAIL_EVENT_TYPES,
    ENTITIES,
    ORDER_STATUSES,
    VERSION_ORDER,
    WEB_EVENT_TYPES,
)
from ml.features.vocabulary import AGE_BANDS, RFM_SEGMENTS
from ml.segments.consent import SUPPRESSING_EVENTS

DBT_PROJECT = PROJECT_DIR / "dbt_project"
MODELS = DBT_PROJECT / "models"
BENCH = PROJECT_DIR / "bench"
README = (PROJECT_DIR / "README.md").read_text()

EVENT_TYPES_OF_INPUT = {
    "stg_shop__email_events": EMAIL_EVENT_TYPES,
    "stg_shop__web_events": WEB_EVENT_TYPES,
}
"""The staging models that hold events, and the event types their rows can have."""


def accepted_values(model: str, column: str) -> list:
    """The values of the `accepted_values` test on a model's column in the dbt YAML."""
    for path in MODELS.rglob("*.yml"):
        for entry in yaml.safe_load(path.read_text()).get("models", []):
            if entry["name"] != model:
                continue
            for described in entry.get("columns", []):
                if described["name"] != column:
                    continue
                for test in described.get("data_tests", []):
                    if isinstance(test, dict) and "accepted_values" in test:
                        return test["accepted_values"]["arguments"]["values"]
    raise AssertionError(f"no accepted_values test on {model}.{column}")


def case_values(sql: str, column: str) -> list[str]:
    """The names a `case ... end as <column>` expression gives (each `then` and the `else`)."""
    case = re.search(rf"\bcase\b((?:(?!\bcase\b).)*?)\bend\s+as\s+{column}\b", sql, re.I | re.S)
    assert case, f"no case expression for {column}"
    return re.findall(r"\b(?:then|else)\s+'([^']*)'", case[1], re.I)


def compared_literals(sql: str, column: str) -> set[str]:
    """The literals the SQL compares a column with (`=`, `in (...)`) or puts in its place
    (`coalesce(column, ...)`), with or without a table prefix."""
    name = rf"\b(?:\w+\.)?{column}"
    found = set(re.findall(rf"{name}\s*(?:=|<>|!=)\s*'([^']*)'", sql, re.I))
    found |= set(re.findall(rf"coalesce\(\s*{name}\s*,\s*'([^']*)'\s*\)", sql, re.I))
    for listed in re.findall(rf"{name}\s+(?:not\s+)?in\s*\(([^)]*)\)", sql, re.I):
        found |= set(re.findall(r"'([^']*)'", listed))
    return found


def model_sql(name: str) -> str:
    (path,) = MODELS.rglob(f"{name}.sql")
    return path.read_text()


def bench_copies(column: str) -> list[tuple[Path, list[str]]]:
    """Every `case` expression for the column in the benchmark's SQL, wherever it is kept
    (inline in a script or in a .sql file)."""
    copies = []
    for path in sorted(BENCH.rglob("*")):
        if path.suffix not in {".py", ".sql"}:
            continue
        text = path.read_text()
        if re.search(rf"\bend\s+as\s+{column}\b", text, re.I):
            copies.append((path, case_values(text, column)))
    return copies


@pytest.mark.parametrize(
    ("model", "column", "values"),
    [
        ("stg_shop__orders", "order_status", ORDER_STATUSES),
        ("stg_shop__email_events", "event_type", EMAIL_EVENT_TYPES),
        ("stg_shop__web_events", "event_type", WEB_EVENT_TYPES),
        ("customer_features", "rfm_segment", RFM_SEGMENTS),
        ("customer_features", "age_band", AGE_BANDS),
    ],
)
def test_dbt_accepts_exactly_the_python_values(model: str, column: str, values: tuple):
    assert accepted_values(model, column) == list(values)


@pytest.mark.parametrize(
    ("model", "column", "values"),
    [
        ("int_customers_rfm_scored", "rfm_segment", RFM_SEGMENTS),
        ("customer_features", "age_band", AGE_BANDS),
    ],
)
def test_dbt_models_name_exactly_the_python_values(model: str, column: str, values: tuple):
    names = case_values(model_sql(model), column)
    assert len(names) == len(set(names))
    assert set(names) == set(values)


@pytest.mark.parametrize(
    ("column", "values"), [("rfm_segment", RFM_SEGMENTS), ("age_band", AGE_BANDS)]
)
def test_the_benchmark_sql_names_exactly_the_python_values(column: str, values: tuple):
    copies = bench_copies(column)
    assert copies, f"the benchmark's SQL for {column} was not found under bench/"
    for path, names in copies:
        assert set(names) == set(values), path


def test_dbt_models_compare_event_types_and_statuses_with_contract_values():
    compared = {"event_type": set(), "status": set()}
    for path in MODELS.rglob("*.sql"):
        sql = path.read_text()
        event_types = compared_literals(sql, "event_type")
        reads = [kinds for model, kinds in EVENT_TYPES_OF_INPUT.items() if f"'{model}'" in sql]
        assert not event_types or reads, f"{path.name} compares event types of no event model"
        assert event_types <= {kind for kinds in reads for kind in kinds}, path.name
        statuses = compared_literals(sql, "status") | compared_literals(sql, "order_status")
        assert statuses <= set(ORDER_STATUSES), path.name
        compared["event_type"] |= event_types
        compared["status"] |= statuses
    # The scan finds what it checks.
    assert {"click", "add_to_cart"} <= compared["event_type"] and "completed" in compared["status"]


def test_dbt_orders_versions_as_the_contract_does():
    macros = (DBT_PROJECT / "macros" / "versions.sql").read_text()
    (order,) = re.findall(
        r"window versions as \(partition by \{\{ key \}\} order by ([^)]*)\)", macros
    )
    assert order == VERSION_ORDER


def test_suppressing_events_are_contract_event_types():
    assert set(SUPPRESSING_EVENTS) <= set(EMAIL_EVENT_TYPES)


def test_the_readme_names_every_value():
    for entity in ENTITIES:
        table = README.split(f"**{entity.name}**", 1)[1].split("\n\n")[1]
        for column in (c for c in entity.columns if c.accepted):
            (row,) = re.findall(rf"^\| {column.name} \|.*$", table, re.MULTILINE)
            for value in column.accepted:
                assert re.search(rf"(?<![\w-]){re.escape(value)}(?![\w-])", row), (
                    f"{entity.name}.{column.name}: {value}"
                )
    prose = " ".join(README.split())
    for name in RFM_SEGMENTS:
        assert name in prose, name
