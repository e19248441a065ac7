"""Validate a pandas DataFrame against a suite, record every result, build Data Docs.

Great Expectations runs in an ephemeral context over a pandas DataFrame (its SQL datasource
over DuckDB is known to break). Every expectation's outcome goes to the warehouse table
`quality.validation_results`, Data Docs are written under `<data dir>/reports/data_docs/`, and
the caller gets a `GateReport`; `GateReport.raise_on_errors()` turns failed `error`
expectations into one readable `GateFailed`. What a failure means for the run is the DAG's
decision, not this module's.

No value of a validated row reaches Great Expectations' results or Data Docs: the result format
(RESULT_FORMAT) keeps counts and percentages and drops unexpected values, rows and indices, for
every expectation (GX applies one result format to a whole validation; an expectation's own is
overridden). Examples of unexpected values, which help to fix a file, are taken by segflow itself
(`examples_of`) and only for value rules (accepted values, ranges) on columns that identify
nobody: never for customer ids, addresses or other personal columns (ml.contract.
PERSONAL_COLUMNS). They appear in the gate's message, its log lines and
`quality.validation_results`, not in Data Docs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ml.config import Settings
from ml.contract import PERSONAL_COLUMNS
from ml.errors import GateFailed
from ml.warehouse import tables
from ml.warehouse.connection import connect

log = logging.getLogger(__name__)

EXAMPLES_PER_FAILURE = 5
RESULT_FORMAT = {
    "result_format": "SUMMARY",
    "partial_unexpected_count": 0,
    "exclude_unexpected_values": True,
    "include_unexpected_rows": False,
    "return_unexpected_index_query": False,
}
"""Counts and percentages of unexpected values, none of the values (see the module docstring)."""
VALUE_RULES = ("expect_column_values_to_be_in_set", "expect_column_values_to_be_between")
"""The expectations whose unexpected values segflow gives examples of (on columns that identify
nobody)."""
NO_VALUES_MARKER = ".segflow-no-unexpected-values"
"""Written into the Data Docs folder once pages from before RESULT_FORMAT (which could show
unexpected values) are removed."""


@dataclass(frozen=True)
class ExpectationOutcome:
    suite: str
    expectation: str
    column: str | None
    severity: str
    why: str
    success: bool
    observed_value: str | None
    unexpected_count: int | None
    element_count: int | None
    examples: list[str]

    def describe(self) -> str:
        where = f" on {self.column}" if self.column else ""
        counts = (
            f": {self.unexpected_count:,} of {self.element_count:,} rows"
            if self.unexpected_count is not None and self.element_count is not None
            else ""
        )
        observed = f", observed {self.observed_value}" if self.observed_value is not None else ""
        examples = f", e.g. {', '.join(self.examples)}" if self.examples else ""
        return f"{self.expectation}{where} ({self.why}){counts}{observed}{examples}"


@dataclass(frozen=True)
class GateReport:
    suite: str
    run_date: dt.date
    rows_validated: int
    outcomes: list[ExpectationOutcome]
    data_docs: Path | None

    @property
    def failed_errors(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success and o.severity == "error"]

    @property
    def failed_warnings(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success and o.severity != "error"]

    def raise_on_errors(self) -> None:
        failed = self.failed_errors
        if not failed:
            return
        lines = [
            f"data quality gate '{self.suite}' failed for {self.run_date} "
            f"({len(failed)} of {len(self.outcomes)} error-level expectations, "
            f"{self.rows_validated:,} rows validated):"
        ]
        lines += [f"  - {o.describe()}" for o in failed]
        if self.data_docs:
            lines.append(f"Data Docs: {self.data_docs}")
        raise GateFailed("\n".join(lines))


def may_show_values(expectation: str, column: str | None) -> bool:
    """Whether examples of unexpected values may be kept: value rules on a column that
    identifies nobody."""
    return expectation in VALUE_RULES and column is not None and column not in PERSONAL_COLUMNS


def examples_of(frame: pd.DataFrame, expectation: str, kwargs: dict) -> list[str]:
    """Up to EXAMPLES_PER_FAILURE distinct unexpected values of a value rule, in row order, as
    text; none for any other expectation or a personal column (may_show_values)."""
    column = kwargs.get("column")
    if not may_show_values(expectation, column) or column not in frame.columns:
        return []
    values = frame[column].dropna()
    try:
        if expectation == "expect_column_values_to_be_in_set":
            unexpected = values[~values.isin(list(kwargs.get("value_set") or []))]
        else:
            numbers = pd.to_numeric(values, errors="coerce")
            low, high = kwargs.get("min_value"), kwargs.get("max_value")
            outside = pd.Series(False, index=values.index)
            if low is not None:
                outside |= numbers < low
            if high is not None:
                outside |= numbers > high
            unexpected = values[outside.fillna(False).astype(bool)]
        return [str(v) for v in unexpected.drop_duplicates().head(EXAMPLES_PER_FAILURE)]
    except (TypeError, ValueError):  # values that do not compare: the counts must do
        return []


def _outcome(suite_name: str, result, frame: pd.DataFrame) -> ExpectationOutcome:
    config = result.expectation_config
    details = result.result or {}
    observed = details.get("observed_value")
    meta = config.meta or {}
    column = config.kwargs.get("column")
    success = bool(result.success)
    return ExpectationOutcome(
        suite=suite_name,
        expectation=config.type,
        column=column,
        severity=meta.get("severity", "error"),
        why=meta.get("why", ""),
        success=success,
        observed_value=None if observed is None else str(observed),
        unexpected_count=details.get("unexpected_count"),
        element_count=details.get("element_count"),
        examples=[] if success else examples_of(frame, config.type, config.kwargs),
    )


def _context(settings: Settings):
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    docs_dir = settings.reports_dir / "data_docs"
    _remove_pages_with_values(docs_dir)
    context.add_data_docs_site(
        "segflow",
        {
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    return context, docs_dir


def _remove_pages_with_values(docs_dir: Path) -> None:
    """Data Docs built before RESULT_FORMAT may show unexpected values (customer ids among
    them): their validation pages go, once; the index is rebuilt from what is left."""
    if (docs_dir / NO_VALUES_MARKER).exists():
        return
    shutil.rmtree(docs_dir / "validations", ignore_errors=True)
    docs_dir.mkdir(parents=True, exist_ok=True)
    (docs_dir / NO_VALUES_MARKER).write_text(
        "Data Docs pages here show counts of unexpected values, never the values.\n"
    )


def validate_frame(settings: Settings, frame: pd.DataFrame, suite, run_date: dt.date) -> GateReport:
    """Run `suite` on `frame`, store every outcome for `run_date`, and build Data Docs."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    context, docs_dir = _context(settings)
    suite = context.suites.add(suite)
    batch = (
        context.data_sources.add_pandas("segflow")
        .add_dataframe_asset(suite.name)
        .add_batch_definition_whole_dataframe("run")
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=suite.name, data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=suite.name,
            validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="data_docs", site_names=["segflow"])],
            result_format=RESULT_FORMAT,
        )
    )
    run = checkpoint.run(batch_parameters={"dataframe": frame})
    results = next(iter(run.run_results.values()))
    outcomes = [_outcome(suite.name, r, frame) for r in results.results]
    index = docs_dir / "index.html"
    report = GateReport(
        suite.name, run_date, len(frame), outcomes, index if index.exists() else None
    )
    store_outcomes(settings, report)
    for warning in report.failed_warnings:
        log.warning("quality warning in %s: %s", suite.name, warning.describe())
    log.info(
        "gate %s for %s: %d expectations, %d failed errors, %d warnings, %d rows",
        suite.name,
        run_date,
        len(outcomes),
        len(report.failed_errors),
        len(report.failed_warnings),
        len(frame),
    )
    return report


def store_outcomes(settings: Settings, report: GateReport) -> None:
    """Replace the suite's results for the run date in `quality.validation_results`."""
    rows = pd.DataFrame(  # noqa: F841  (read by name in the SQL below)
        [
            {
                "run_date": report.run_date,
                "suite": o.suite,
                "expectation": o.expectation,
                "column_name": o.column,
                "severity": o.severity,
                "success": o.success,
                "observed_value": o.observed_value,
                "unexpected_count": o.unexpected_count,
                "element_count": o.element_count,
                "examples": json.dumps(o.examples),
                "validated_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
            }
            for o in report.outcomes
        ]
    )
    with connect(settings) as con:
        tables.ensure(con, tables.VALIDATION_RESULTS)
        con.execute("BEGIN TRANSACTION")
        # Results stored before examples were limited to value rules on impersonal columns
        # may hold customer ids: they keep their counts and lose their examples.
        personal = ", ".join(f"'{name}'" for name in sorted(PERSONAL_COLUMNS))
        rules = ", ".join(f"'{name}'" for name in VALUE_RULES)
        con.execute(
            f"""UPDATE quality.validation_results SET examples = '[]'
                WHERE examples IS NOT NULL AND examples::VARCHAR <> '[]'
                  AND (expectation NOT IN ({rules}) OR column_name IS NULL
                       OR column_name IN ({personal}))"""
        )
        con.execute(
            "DELETE FROM quality.validation_results WHERE run_date = ? AND suite = ?",
            [report.run_date, report.suite],
        )
        if len(rows):
            con.execute("INSERT INTO quality.validation_results BY NAME SELECT * FROM rows")
        con.execute("COMMIT")
