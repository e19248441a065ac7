"""Benchmark harness: run each stage at a scale in its own process, measure wall time and peak
memory, and write docs/benchmarks.json and docs/benchmarks.md.

    python bench/run.py --customers 1000000 [--days 365] [--stages generate,ingest]
                        [--work DIR]  # keep the data in DIR and reuse it in a later call

Each stage is a `segflow` command in a child process; its peak resident memory is that
process's own (wait4), so stages do not inherit each other's peaks. Results accumulate in the
JSON per scale, so a 100,000 and a 1,000,000 run both appear in the report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
RESULTS = PROJECT / "docs" / "benchmarks.json"
REPORT = PROJECT / "docs" / "benchmarks.md"
SEGFLOW = str(Path(sys.executable).with_name("segflow"))
END_DATE = dt.date(2026, 10, 31)
# The daily run's stages in order, each a segflow command taking the as-of date last.
STAGES_AFTER_GENERATE = {
    "ingest": ["ingest", "--as-of"],
    "raw_gate": ["gate", "raw", "--as-of"],
    "features": ["features", "--as-of"],
    "features_gate": ["gate", "features", "--as-of"],
    "train": ["train", "--as-of"],
    "score": ["score", "--as-of"],
    "segments_gate": ["gate", "segments", "--as-of"],
    "publish": ["publish", "--as-of"],
}


def measure(command: list[str], env: dict[str, str]) -> dict:
    """Wall seconds and peak RSS (MiB) of one child process; Linux counts in it the largest of
    the processes that child waited for, such as the dbt it runs."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{output[-4000:]}")
    return {
        "seconds": round(seconds, 1),
        "peak_mib": round(usage.ru_maxrss / 1024),
        "output": output,
    }


def landing_rows(landing: Path) -> dict[str, int]:
    import duckdb

    with duckdb.connect() as con:
        return {
            entity.name: con.execute(
                f"SELECT count(*) FROM read_parquet('{entity}/**/*.parquet')"
            ).fetchone()[0]
            for entity in sorted(landing.iterdir())
            if entity.is_dir()
        }


def run(customers: int, days: int, stages: list[str], work: Path) -> dict:
    env = {
        **os.environ,
        "SEGFLOW_DATA_DIR": str(work / "data"),
        "SEGFLOW_LANDING_DIR": str(work / "landing"),
    }
    results: dict = {"stages": {}}
    if "generate" in stages:
        results["stages"]["generate"] = measure(
            [
                SEGFLOW,
                "generate",
                "--customers",
                str(customers),
                "--days",
                str(days),
                "--end-date",
                END_DATE.isoformat(),
                "--seed",
                "7",
                "--out",
                str(work / "landing"),
                "--quiet",
            ],
            env,
        )
    results["rows"] = landing_rows(work / "landing")
    for stage, command in STAGES_AFTER_GENERATE.items():
        if stage in stages:
            results["stages"][stage] = measure([SEGFLOW, *command, END_DATE.isoformat()], env)
    for stage in results["stages"].values():
        stage.pop("output")
        stage["customers_per_second"] = round(customers / stage["seconds"])
    return results


def write_report(all_results: dict) -> None:
    lines = [
        "# Benchmarks",
        "",
        "Produced by `make bench` (`SCALE=<customers>`, default 1,000,000); numbers are one run",
        "each, wall time and the peak resident memory of the stage's own process. Raw results:",
        "`docs/benchmarks.json`. Reproduce with `make bench SCALE=1000000` (or any scale).",
        "",
    ]
    for key in sorted(all_results, key=lambda k: all_results[k]["customers"]):
        result = all_results[key]
        lines += [
            f"## {result['customers']:,} customers, {result['days']} days",
            "",
            f"Measured {result['measured_at']} on {result['machine']}.",
            "",
            "| entity | rows |",
            "|---|---:|",
            *[f"| {entity} | {rows:,} |" for entity, rows in sorted(result["rows"].items())],
            "",
            "| stage | wall time | peak memory | customers / s |",
            "|---|---:|---:|---:|",
            *[
                f"| {stage} | {m['seconds']:,.1f} s | {m['peak_mib']:,} MiB | {m['customers_per_second']:,} |"
                for stage, m in result["stages"].items()
            ],
            "",
        ]
    notes = PROJECT / "bench" / "notes.md"
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    REPORT.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--stages", default=",".join(["generate", *STAGES_AFTER_GENERATE]))
    parser.add_argument(
        "--work", type=Path, help="keep the data in this folder (and reuse what it holds)"
    )
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix=f"segflow-bench-{args.customers}-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args.customers, args.days, args.stages.split(","), work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result.update(
        customers=args.customers,
        days=args.days,
        measured_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=(
            f"{os.cpu_count()} cores, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
            f"{platform.python_implementation()} {platform.python_version()}"
        ),
    )
    all_results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    # A run of some stages updates those and keeps the scale's other measurements.
    key = f"{args.customers}x{args.days}"
    earlier = all_results.get(key, {"stages": {}})
    result["stages"] = {**earlier["stages"], **result["stages"]}
    result["rows"] = result["rows"] or earlier.get("rows", {})
    all_results[key] = result
    RESULTS.write_text(json.dumps(all_results, indent=2, sort_keys=True) + "\n")
    write_report(all_results)
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
