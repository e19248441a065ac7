"""Validate a pandas DataFrame against a suite, record every result, build Data Docs.

Great Expectations runs in an ephemeral context over a pandas DataFrame (its SQL datasource
over DuckDB is known to break). Every expectation's outcome goes to the warehouse table
`quality.validation_results`, Data Docs are written under `<data dir>/reports/data_docs/`, and
the caller gets a `GateReport`; `GateReport.raise_on_errors()` turns failed `error`
expectations into one readable `GateFailed`. What a failure means for the run is the DAG's
decision, not this module's.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ml.config import Settings
from ml.quality import QualityGateFailed
from ml.warehouse import connect

log = logging.getLogger(__name__)

EXAMPLES_PER_FAILURE = 5


class GateFailed(QualityGateFailed):
    """A data quality gate found `error` expectations failing; the message lists them."""


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


def _outcome(suite_name: str, result) -> ExpectationOutcome:
    config = result.expectation_config
    details = result.result or {}
    observed = details.get("observed_value")
    examples = [
        str(v) for v in (details.get("partial_unexpected_list") or [])[:EXAMPLES_PER_FAILURE]
    ]
    meta = config.meta or {}
    return ExpectationOutcome(
        suite=suite_name,
        expectation=config.type,
        column=config.kwargs.get("column"),
        severity=meta.get("severity", "error"),
        why=meta.get("why", ""),
        success=bool(result.success),
        observed_value=None if observed is None else str(observed),
        unexpected_count=details.get("unexpected_count"),
        element_count=details.get("element_count"),
        examples=examples,
    )


def _context(settings: Settings):
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    docs_dir = settings.reports_dir / "data_docs"
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
            result_format={
                "result_format": "SUMMARY",
                "partial_unexpected_count": EXAMPLES_PER_FAILURE,
            },
        )
    )
    run = checkpoint.run(batch_parameters={"dataframe": frame})
    results = next(iter(run.run_results.values()))
    outcomes = [_outcome(suite.name, r) for r in results.results]
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
        con.execute("CREATE SCHEMA IF NOT EXISTS quality")
        con.execute(
            """CREATE TABLE IF NOT EXISTS quality.validation_results (
                run_date DATE NOT NULL, suite VARCHAR NOT NULL, expectation VARCHAR NOT NULL,
                column_name VARCHAR, severity VARCHAR NOT NULL, success BOOLEAN NOT NULL,
                observed_value VARCHAR, unexpected_count BIGINT, element_count BIGINT,
                examples JSON, validated_at TIMESTAMP NOT NULL)"""
        )
        con.execute("BEGIN TRANSACTION")
        con.execute(
            "DELETE FROM quality.validation_results WHERE run_date = ? AND suite = ?",
            [report.run_date, report.suite],
        )
        if len(rows):
            con.execute("INSERT INTO quality.validation_results BY NAME SELECT * FROM rows")
        con.execute("COMMIT")
