"""`segflow`: the command line of the platform."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import resource
import sys
import time
import traceback
from pathlib import Path
from urllib.parse import urlsplit

from ml.config import load_settings
from ml.errors import (
    AudienceError,
    ConfigError,
    ContractViolation,
    ErasureError,
    FeatureBuildError,
    MonitoringError,
    NoChampion,
    PublishError,
    QualityGateFailed,
    ReadoutError,
    ScoringError,
    TrainingSetError,
    TriggerError,
)
from ml.features.dbt import build_features, features_summary, run_dbt
from ml.models import tracking_server
from ml.privacy.permissions import secure_data_dir
from ml.privacy.secret_masking import mask_secrets

# The other commands import the modules they run inside their function: `segflow --help` and
# `segflow config` stay free of duckdb, pyarrow, pandas, scikit-learn and MLflow (dbt is
# imported only when a dbt command runs).


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a date (YYYY-MM-DD)") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must be at least 1")
    return value


def _peak_memory_mib() -> float:
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _utc_datetime(text: str) -> dt.datetime:
    """An ISO-8601 moment, UTC when it has no offset, not in the future."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a date and time (ISO-8601, e.g. 2026-12-01T14:15:00Z)"
        ) from None
    moment = moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment
    if moment > dt.datetime.now(dt.UTC):
        raise argparse.ArgumentTypeError(
            f"'{text}' is in the future: the loader would quarantine its orders "
            "(timestamps after the load time)"
        )
    return moment


def _positive_hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of hours") from None
    if not value * 60 >= 1:
        raise argparse.ArgumentTypeError(f"'{text}' must be at least one minute (1/60)")
    return value


GENERATE_DEFAULTS = {"customers": 20_000, "days": 540, "seed": 7}
HISTORY_ONLY = ("customers", "days", "end_date", "drift_from", "as_exported")
INCREMENT_ONLY = ("hours", "at")
EXPORTED_ONLY = ("snapshot_every_days", "delivery_report")


def cmd_generate(args: argparse.Namespace) -> None:
    def given(names: tuple[str, ...]) -> list[str]:
        return ["--" + n.replace("_", "-") for n in names if getattr(args, n) is not None]

    if args.increment:
        if given(HISTORY_ONLY + EXPORTED_ONLY):
            args.usage_error(
                f"{', '.join(given(HISTORY_ONLY + EXPORTED_ONLY))}: not used with --increment"
            )
        _generate_increment(args)
        return
    if given(INCREMENT_ONLY):
        args.usage_error(f"{', '.join(given(INCREMENT_ONLY))}: only with --increment")
    if not args.as_exported and given(EXPORTED_ONLY):
        args.usage_error(f"{', '.join(given(EXPORTED_ONLY))}: only with --as-exported")
    if args.end_date is None:
        args.usage_error("the following arguments are required: --end-date (or --increment)")
    shop = {
        "out": args.out,
        "customers": args.customers or GENERATE_DEFAULTS["customers"],
        "days": args.days or GENERATE_DEFAULTS["days"],
        "end_date": args.end_date,
        "seed": GENERATE_DEFAULTS["seed"] if args.seed is None else args.seed,
        "drift_from": args.drift_from,
        "progress": not args.quiet,
    }
    started = time.perf_counter()
    if args.as_exported:
        _generate_as_exported(args, shop, started)
        return
    from ml.synthetic.shop import generate

    report = generate(**shop)
    seconds = time.perf_counter() - started
    print(
        f"wrote {report.customers:,} customers, {report.first_day} .. {report.last_day}, "
        f"to {args.out} in {seconds:.1f} s (peak memory {_peak_memory_mib():,.0f} MiB)"
    )
    for entity, rows in sorted(report.rows.items()):
        print(f"  {entity:<13} {rows:>12,} rows")


def _generate_as_exported(args: argparse.Namespace, shop: dict, started: float) -> None:
    from ml.synthetic.deliveries import SNAPSHOT_EVERY_DAYS, generate_as_exported

    report = generate_as_exported(
        **shop,
        snapshot_every_days=args.snapshot_every_days or SNAPSHOT_EVERY_DAYS,
        report_path=args.delivery_report,
    )
    seconds = time.perf_counter() - started
    print(
        f"wrote {report.customers:,} customers as exports, {report.first_day} .. "
        f"{report.last_day}, to {args.out} in {seconds:.1f} s "
        f"(peak memory {_peak_memory_mib():,.0f} MiB)"
    )
    print(report.render())
    if args.delivery_report:
        print(f"  delivery report: {args.delivery_report}")


def _generate_increment(args: argparse.Namespace) -> None:
    from ml.synthetic.increments import generate_increment

    at = args.at or dt.datetime.now(dt.UTC)
    try:
        report = generate_increment(args.out, at, args.hours or 3.0, args.seed)
    except (ValueError, FileExistsError) as error:
        raise SystemExit(f"segflow: {error}") from None
    start = report.at - dt.timedelta(hours=report.hours)
    print(f"increment {start:%Y-%m-%d %H:%M:%S} .. {report.at:%Y-%m-%d %H:%M:%S} UTC:")
    for path in report.files:
        entity = path.relative_to(args.out).parts[0]
        print(f"  {report.rows[entity]:>8,} rows  {path}")
    for label, ids in (
        ("unsubscribed", report.unsubscribed),
        ("bounced", report.bounced),
        ("complained", report.complained),
    ):
        if ids:
            print(f"  {label}: {', '.join(ids)}")


def cmd_ingest(args: argparse.Namespace) -> None:
    from ml.ingest.loader import ingest_landing

    ingest_landing(load_settings(), as_of=args.as_of)  # logs its summary


def cmd_features(args: argparse.Namespace) -> None:
    build_features(load_settings(), as_of=args.as_of, label_as_of=args.label_as_of)
    print(f"customer_features built for {args.as_of}, training_labels for its label date")


def cmd_gate(args: argparse.Namespace) -> None:
    from ml.quality.gates import (
        latest_load_time,
        run_features_gate,
        run_raw_gate,
        run_segments_gate,
    )

    settings = load_settings()
    if args.table == "raw":
        reports = run_raw_gate(settings, args.as_of, latest_load_time(settings))
    elif args.table == "features":
        reports = [run_features_gate(settings, args.as_of)]
    else:
        reports = [run_segments_gate(settings, args.as_of)]
    for report in reports:
        print(
            f"{report.suite}: passed ({len(report.outcomes)} expectations, {report.rows_validated:,} rows)"
        )


def cmd_train(args: argparse.Namespace) -> None:
    from ml.models.train import train_all, training_summary

    settings = load_settings()
    train_all(settings, args.as_of)  # logs each model's evaluation and promotion decision
    print(training_summary(settings))


def cmd_models(_: argparse.Namespace) -> None:
    from ml.models.train import training_summary

    print(training_summary(load_settings()))


def cmd_score(args: argparse.Namespace) -> None:
    from ml.segments.score import score_customers

    rows = score_customers(load_settings(), args.as_of)
    print(f"scored {rows:,} customers as of {args.as_of} into staging.customer_segments")


def cmd_publish(args: argparse.Namespace) -> None:
    from ml.segments.publish import publish_segments
    from ml.segments.report import write_segment_report

    settings = load_settings()
    result = publish_segments(settings, args.as_of, run_id=args.run_id, gate_passed=False)
    print(json.dumps(result, indent=2, default=str))
    print(f"segment report: {write_segment_report(settings, args.as_of)}")


def cmd_segments(args: argparse.Namespace) -> None:
    from ml.segments.report import segments_summary

    print(segments_summary(load_settings(), args.as_of))


def cmd_drift(args: argparse.Namespace) -> None:
    from ml.monitoring.monitor import monitor, monitoring_summary

    settings = load_settings()
    if args.run:
        if args.as_of is None:
            raise MonitoringError("--run needs --as-of: the published date to check")
        monitor(settings, args.as_of)
    print(monitoring_summary(settings, args.as_of))


def cmd_triggers(args: argparse.Namespace) -> None:
    from ml.triggers.exports import refresh_now, refreshes_summary

    settings = load_settings()
    if args.refresh:
        print(json.dumps(refresh_now(settings), indent=2, default=str))
    print(refreshes_summary(settings))


def cmd_readout(args: argparse.Namespace) -> None:
    from ml.segments.readout import readout

    print(readout(load_settings(), args.audience, args.as_of, args.window_days).render())


def cmd_quarantine(args: argparse.Namespace) -> None:
    from ml.ingest.loader import accept_bad_file, quarantine_lines
    from ml.warehouse.connection import connect

    settings = load_settings()
    if args.accept:
        if not args.note:
            raise ConfigError("--accept needs --note: say why the file may stay unloaded")
        accept_bad_file(settings, args.accept, args.note)
        print(f"accepted unloaded: {args.accept} ({args.note})")
        return
    with connect(settings, read_only=True) as con:
        print("\n".join(quarantine_lines(con)))


def cmd_forget(args: argparse.Namespace) -> None:
    from ml.privacy.erasure import forget, forget_requested, read_identities

    settings = load_settings()
    ids, addresses = set(args.customer_id), set(args.email)
    for path in args.from_file:
        more_ids, more_addresses = read_identities(Path(path), settings.loading.encoding)
        ids |= more_ids
        addresses |= more_addresses
    if not (ids or addresses or args.requests):
        raise ErasureError("give --customer-id, --email, --from-file or --requests")
    results = []
    if args.requests:
        requested = forget_requested(settings)
        print(requested.render() if requested else "no erasure request files are waiting")
        results.append(requested)
    if ids or addresses:
        results.append(forget(settings, ids, addresses))
        print(results[-1].render())
    if any(result is not None and not result.complete for result in results):
        raise ErasureError(
            "the customers are gone from the warehouse and segflow's files, but the files "
            "listed above still hold them: delete or re-export them"
        )


def cmd_dbt(args: argparse.Namespace) -> None:
    result = run_dbt(load_settings(), *args.dbt_args)
    print(result.stdout, end="")


def cmd_status(_: argparse.Namespace) -> None:
    from ml.ingest.loader import raw_summary
    from ml.models.train import training_summary
    from ml.monitoring.monitor import monitoring_summary
    from ml.quality.gates import quality_summary
    from ml.segments.report import segments_summary

    settings = load_settings()
    print(raw_summary(settings))
    print(quality_summary(settings))
    print(features_summary(settings))
    print(training_summary(settings))
    print(segments_summary(settings))
    print(monitoring_summary(settings))


def cmd_housekeeping(args: argparse.Namespace) -> None:
    from ml.privacy.retention import apply_retention

    today = args.today or dt.datetime.now(dt.UTC).date()
    print(apply_retention(load_settings(), today, dry_run=args.dry_run).summary())


SHOWN_SETTINGS = (
    "data_dir",
    "landing_dir",
    "warehouse_path",
    "label_horizon_days",
    "mlflow_tracking_uri",
    "airflow_home",
    "duckdb_memory_limit",
)


def cmd_config(args: argparse.Namespace) -> None:
    settings = load_settings()
    if args.get:
        print(getattr(settings, args.get))
        return
    for name in SHOWN_SETTINGS:
        value = getattr(settings, name)
        print(f"{name:<20} {mask_secrets(str(value))}")
    webhook = settings.alerts.webhook_url
    # Only where alerts go, never the whole URL: a webhook's path often carries its token.
    shown = f"{urlsplit(webhook).scheme}://{urlsplit(webhook).hostname}/..." if webhook else "-"
    print(f"{'alert_webhook':<20} {shown}")
    print(f"{'alert_emails':<20} {', '.join(settings.alerts.emails) or '-'}")


def cmd_tracking_server(args: argparse.Namespace) -> None:
    tracking_server.start(args.host, args.port, args.workers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser(
        "generate",
        help="write synthetic landing data (--increment: the last hours into existing data)",
    )
    generate.add_argument("--customers", type=_positive, help="default 20,000")
    generate.add_argument("--days", type=_positive, help="default 540")
    generate.add_argument(
        "--end-date", type=_date, help="last day, YYYY-MM-DD (required without --increment)"
    )
    generate.add_argument("--seed", type=int, help="default 7 (--increment: random)")
    generate.add_argument("--out", type=Path, required=True, help="landing folder to write")
    generate.add_argument("--drift-from", type=_date, help="shift behaviour from this date on")
    generate.add_argument("--quiet", action="store_true", help="no progress bar")
    generate.add_argument(
        "--increment",
        action="store_true",
        help="add the last hours of behaviour of the customers already in --out",
    )
    generate.add_argument(
        "--hours", type=_positive_hours, help="with --increment: hours up to --at (default 3)"
    )
    generate.add_argument(
        "--at",
        type=_utc_datetime,
        help="with --increment: end of the hours, ISO-8601, UTC without an offset (default now)",
    )
    generate.add_argument(
        "--as-exported",
        action="store_true",
        default=None,  # None when not given, like the other options checked in cmd_generate
        help="write the same shop the way real shop and e-mail tool exports look "
        "(customers snapshots, tools' event names, late and early rows; ml/synthetic/deliveries.py)",
    )
    generate.add_argument(
        "--snapshot-every-days",
        type=_positive,
        help="with --as-exported: days between customers snapshots (default 7, and the last day)",
    )
    generate.add_argument(
        "--delivery-report",
        type=Path,
        help="with --as-exported: also write the delivery report (rows per entity) here as JSON",
    )
    generate.set_defaults(handler=cmd_generate, usage_error=generate.error)

    ingest = commands.add_parser("ingest", help="load landing files into the warehouse")
    ingest.add_argument(
        "--as-of", type=_date, help="load partitions up to this date (default: all)"
    )
    ingest.set_defaults(handler=cmd_ingest)

    quarantine = commands.add_parser(
        "quarantine",
        help="bad files set aside, held rows and rejected rows; --accept a bad file",
    )
    quarantine.add_argument(
        "--accept", metavar="FILE", help="a bad file (as listed) the daily run may go on without"
    )
    quarantine.add_argument("--note", help="why (kept with the acceptance, and logged)")
    quarantine.set_defaults(handler=cmd_quarantine)

    features = commands.add_parser("features", help="build the feature marts with dbt for a date")
    features.add_argument("--as-of", type=_date, required=True)
    features.add_argument(
        "--label-as-of", type=_date, help="date to label (default: as-of minus the label horizon)"
    )
    features.set_defaults(handler=cmd_features)

    gate = commands.add_parser("gate", help="run a data quality gate for a date")
    gate.add_argument("table", choices=("raw", "features", "segments"))
    gate.add_argument("--as-of", type=_date, required=True)
    gate.set_defaults(handler=cmd_gate)

    train = commands.add_parser(
        "train", help="train, evaluate, register and promote every model as of a date"
    )
    train.add_argument("--as-of", type=_date, required=True)
    train.set_defaults(handler=cmd_train)

    models = commands.add_parser("models", help="the champion of each model and its metrics")
    models.set_defaults(handler=cmd_models)

    score = commands.add_parser("score", help="score a date's customers into staging")
    score.add_argument("--as-of", type=_date, required=True)
    score.set_defaults(handler=cmd_score)

    publish = commands.add_parser(
        "publish", help="gate the staged scores, publish them and write the audience exports"
    )
    publish.add_argument("--as-of", type=_date, required=True)
    publish.add_argument("--run-id", default="manual", help="recorded in the manifest")
    publish.set_defaults(handler=cmd_publish)

    segments = commands.add_parser("segments", help="the published segments of a date")
    segments.add_argument("--as-of", type=_date, help="default: the newest publication")
    segments.set_defaults(handler=cmd_segments)

    drift = commands.add_parser(
        "drift", help="the drift monitor's verdict for a date (--run: check the date first)"
    )
    drift.add_argument("--as-of", type=_date, help="default: the newest monitored date")
    drift.add_argument(
        "--run", action="store_true", help="run the checks for a published date (needs --as-of)"
    )
    drift.set_defaults(handler=cmd_drift)

    triggers = commands.add_parser(
        "triggers",
        help="the newest trigger refreshes (--refresh: run one now, as refresh_triggers does)",
    )
    triggers.add_argument(
        "--refresh",
        action="store_true",
        help="ingest new landing files, evaluate the triggers and publish the delta export",
    )
    triggers.set_defaults(handler=cmd_triggers)

    readout_parser = commands.add_parser(
        "readout", help="conversion and revenue of an audience's treatment against its holdout"
    )
    readout_parser.add_argument("--audience", required=True)
    readout_parser.add_argument("--as-of", type=_date, required=True, help="the publication date")
    readout_parser.add_argument(
        "--window-days", type=_positive, default=14, help="days after the send to count orders"
    )
    readout_parser.set_defaults(handler=cmd_readout)

    forget_parser = commands.add_parser(
        "forget",
        help="forget customers everywhere segflow keeps data (the right to erasure)",
    )
    forget_parser.add_argument(
        "--customer-id", action="append", default=[], metavar="ID", help="repeatable"
    )
    forget_parser.add_argument(
        "--email", action="append", default=[], metavar="ADDRESS", help="repeatable"
    )
    forget_parser.add_argument(
        "--from-file",
        action="append",
        default=[],
        metavar="CSV",
        help="a CSV with a customer_id column, an email column or both (repeatable)",
    )
    forget_parser.add_argument(
        "--requests",
        action="store_true",
        help="the erasure request files waiting in <landing>/erasure_requests/",
    )
    forget_parser.set_defaults(handler=cmd_forget)

    dbt = commands.add_parser(
        "dbt", help="run any dbt command on the project, configured for this warehouse"
    )
    dbt.add_argument("dbt_args", nargs=argparse.REMAINDER, help="e.g. docs generate")
    dbt.set_defaults(handler=cmd_dbt)

    status = commands.add_parser("status", help="what the warehouse holds, and the quarantine")
    status.set_defaults(handler=cmd_status)

    housekeeping = commands.add_parser(
        "housekeeping",
        help="remove what is older than its retention limit (SEGFLOW_RETENTION_*), as the "
        "daily run's last task does",
    )
    housekeeping.add_argument(
        "--today", type=_date, help="the date the limits count back from (default: today, UTC)"
    )
    housekeeping.add_argument(
        "--dry-run", action="store_true", help="say what would be removed, remove nothing"
    )
    housekeeping.set_defaults(handler=cmd_housekeeping)

    config = commands.add_parser("config", help="print the settings in force")
    config.add_argument("--get", choices=SHOWN_SETTINGS, help="print only this setting's value")
    config.set_defaults(handler=cmd_config)

    server = commands.add_parser(
        "tracking-server",
        help="the production stack's MLflow server: Postgres, served artifacts, basic auth",
    )
    server.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    server.add_argument("--port", type=int, default=5000)
    server.add_argument("--workers", type=int, default=2, help="server processes")
    server.set_defaults(handler=cmd_tracking_server)
    return parser


# Errors a person can act on: said in one message, without a traceback.
EXPLAINED_ERRORS: dict[type[Exception], tuple[str, int]] = {
    ConfigError: ("configuration error: ", 2),
    ContractViolation: ("landing data breaks the contract: ", 1),
    FeatureBuildError: ("dbt failed:\n", 1),
    QualityGateFailed: ("", 1),
    AudienceError: ("audience definitions: ", 2),
    TrainingSetError: ("cannot build the training set: ", 1),
    NoChampion: ("", 1),
    ScoringError: ("scoring: ", 1),
    PublishError: ("publishing: ", 1),
    ReadoutError: ("readout: ", 1),
    MonitoringError: ("drift monitor: ", 1),
    TriggerError: ("trigger refresh: ", 1),
    ErasureError: ("erasure: ", 3),
}


def _print_masked_traceback(kind: type[BaseException], error: BaseException, tb) -> None:
    """An unexpected error's traceback, as Python prints it, with its secrets masked."""
    text = "".join(traceback.format_exception(kind, error, tb))
    print(mask_secrets(text), end="", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    # Log lines are masked by the record factory `import ml` installed (ml/privacy/secret_masking.py).
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.excepthook = _print_masked_traceback
    args = build_parser().parse_args(argv)
    # What an older segflow left readable by others is repaired before any command runs
    # (`make run` and `make up` start with `segflow config`). Unusable settings are reported
    # by the commands that need them.
    with contextlib.suppress(ConfigError):
        secure_data_dir(load_settings())
    try:
        args.handler(args)
    except tuple(EXPLAINED_ERRORS) as error:
        prefix, exit_code = next(
            explained for kind, explained in EXPLAINED_ERRORS.items() if isinstance(error, kind)
        )
        print(mask_secrets(f"segflow: {prefix}{error}"), file=sys.stderr)
        return exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
