"""The benchmark's report: docs/benchmarks.md and the scaling plot docs/benchmarks-scaling.png,
written from every scale's results (docs/benchmarks.json, which bench/run.py keeps)."""

from __future__ import annotations

import re

from stages import (
    DAILY_DATE,
    END_DATE,
    GB,
    HISTORY_STAGES,
    MIB,
    PROJECT,
    SNAPSHOT_CHANGE_SHARE,
)

REPORT = PROJECT / "docs" / "benchmarks.md"
PLOT = PROJECT / "docs" / "benchmarks-scaling.png"
NOTES = PROJECT / "bench" / "notes.md"
TARGETS_SCALE = 1_000_000
"""The scale the targets are set for."""
TRIGGER_TARGET_SCALE, TRIGGER_TARGET_S = 100_000, 120
REFRESH_TASKS = ("ingest", "raw_gate", "evaluate", "triggers_gate", "publish")
"""The refresh_triggers tasks whose durations the report shows."""


def targets(result: dict) -> list[tuple[str, str, str, bool | None]]:
    """(target, limit, measured, met) for the issue's targets; met is None when unmeasured."""
    stages, comparisons = result["stages"], result.get("comparisons", {})
    daily = result.get("daily_run")
    rows: list[tuple[str, str, str, bool | None]] = []
    if daily:
        rows.append(
            (
                "whole daily run, warm models",
                "≤ 10 min, ≤ 8 GB",
                f"{daily['seconds'] / 60:.1f} min, {daily['peak_mib'] * MIB / GB:.1f} GB",
                daily["seconds"] <= 600 and daily["peak_mib"] * MIB <= 8 * GB,
            )
        )
    if {"dbt_features", "duckdb_query"} <= comparisons.keys():
        ratio = comparisons["dbt_features"]["seconds"] / comparisons["duckdb_query"]["seconds"]
        rows.append(("dbt feature build / DuckDB query", "≤ 1.5x", f"{ratio:.2f}x", ratio <= 1.5))
    if "score" in stages:
        command = result["customers"] / stages["score"]["seconds"]
        alone = result["customers"] / stages["score"]["scoring_seconds"]
        rows.append(
            (
                "scoring (the score command; its scoring without imports and model loading)",
                "≥ 100,000 customers/s",
                f"{command:,.0f} /s; {alone:,.0f} /s",
                alone >= 100_000,
            )
        )
    if "train" in stages:
        minutes = stages["train"]["seconds"] / 60
        rows.append(("weekly training", "≤ 15 min", f"{minutes:.1f} min", minutes <= 15))
    return rows


def _stage_row(name: str, m: dict, customers: int) -> str:
    return (
        f"| {name} | {m['seconds']:,.1f} s | {m['peak_mib']:,} MiB "
        f"| {customers / m['seconds']:,.0f} |"
    )


def _ratio(seconds: float, floor: float | None) -> str:
    return f"{seconds / floor:.2f}x" if floor else "n/a"


def trigger_section(result: dict) -> list[str]:
    refresh = result.get("trigger_refresh")
    if not refresh:
        return []
    met = ""
    if result["customers"] == TRIGGER_TARGET_SCALE:
        verdict = "met" if refresh["max_seconds"] <= TRIGGER_TARGET_S else "missed"
        met = f" (target: under {TRIGGER_TARGET_S} s at {TRIGGER_TARGET_SCALE:,}: {verdict})"
    increments = [refresh["warmup"], *refresh["increments"]]
    return [
        f"Event-driven refresh, measured {refresh['measured_at']} (`refresh_triggers` under "
        "`airflow standalone`, the landing "
        f"watcher polling every {refresh['poll_seconds']:g} s): an increment of the last 3 "
        "hours (`segflow generate --increment`) dropped into the landing zone, timed from its "
        "last file to the published delta's manifest. The first also evaluates every "
        "historical file and publishes the full suppression list. Latency of the "
        f"{len(refresh['increments'])} after it: **median {refresh['median_seconds']:,.1f} s, "
        f"max {refresh['max_seconds']:,.1f} s**{met}.",
        "",
        "| increment | rows | landed → run queued | "
        + " | ".join(REFRESH_TASKS)
        + " | landed → published | members | new suppressions |",
        "|---|---:|---:|" + "---:|" * len(REFRESH_TASKS) + "---:|---|---:|",
        *[
            f"| {'warm-up' if i == 0 else i} | {inc['rows']:,} | {inc['run_queued_after']:.1f} s | "
            + " | ".join(f"{dict(inc['tasks']).get(task, 0):.1f} s" for task in REFRESH_TASKS)
            + f" | {inc['seconds']:.1f} s | "
            + ", ".join(f"{name} {n}" for name, n in inc["members"].items())
            + f" | {inc['new_suppressions']:,} |"
            for i, inc in enumerate(increments)
        ],
        "",
    ]


def scale_section(result: dict) -> list[str]:
    customers = result["customers"]
    lines = [
        f"## {customers:,} customers, {result['days']} days",
        "",
        f"Measured {result['measured_at']} on {result['machine']}.",
        "",
        "| entity | rows |",
        "|---|---:|",
        *[f"| {entity} | {rows:,} |" for entity, rows in sorted(result["rows"].items())],
        "",
        f"Each stage on the whole history, as of {END_DATE}:",
        "",
        "| stage | wall time | peak memory | customers / s |",
        "|---|---:|---:|---:|",
        *[
            _stage_row(stage, result["stages"][stage], customers)
            for stage in ("generate", *HISTORY_STAGES)
            if stage in result["stages"]
        ],
        "",
    ]
    daily = result.get("daily_run")
    if daily:
        lines += [
            f"The daily run for {DAILY_DATE} (`airflow dags test segment_pipeline`, one day's "
            f"increment, warm models): **{daily['seconds']:,.1f} s, peak {daily['peak_mib']:,} "
            "MiB**. Its tasks (the ephemeral dbt models, inlined into the marts, take no time "
            "of their own and are left out):",
            "",
            "| task | seconds |",
            "|---|---:|",
            *[f"| {task} | {seconds:,.1f} |" for task, seconds in daily["tasks"]],
            "",
        ]
    lines += trigger_section(result)
    snapshot = result.get("customer_snapshot")
    if snapshot:
        lines += [
            f"A full daily snapshot of the customers table ({snapshot['rows']:,} rows, gzip CSV, "
            f"{snapshot['file_mib']:,} MiB) with {SNAPSHOT_CHANGE_SHARE:.1%} of them changed, "
            f"loaded by `segflow ingest`: **{snapshot['seconds']:,.1f} s, peak "
            f"{snapshot['peak_mib']:,} MiB**; {snapshot['new_versions']:,} new versions, "
            f"{snapshot['unchanged']:,} rows unchanged.",
            "",
        ]
    erased = result.get("erasure")
    if erased:
        lines += [
            f"`segflow forget` of {erased['customers']:,} customers at once (half by id, half "
            f"by address; every landing file, export, training set and report searched, the "
            f"{erased['warehouse_gib']:,} GiB warehouse file rebuilt): **{erased['seconds']:,.1f}"
            f" s, peak {erased['peak_mib']:,} MiB**:",
            "",
            "```",
            *erased["summary"],
            "```",
            "",
        ]
    exported = result.get("exported_ingest")
    if exported:
        lines += [
            f"The same shop as shops export it (`segflow generate --as-exported`, "
            f"{exported['landing_gib']:,} GiB of landing files): generated in "
            f"{exported['generate']['seconds']:,.1f} s, loaded by one `segflow ingest` in "
            f"**{exported['ingest']['seconds']:,.1f} s, peak {exported['ingest']['peak_mib']:,} "
            "MiB**:",
            "",
            "```",
            *[re.sub(r"^.*\] +", "", line).strip() for line in exported["summary"]],
            "```",
            "",
        ]
    comparisons = result.get("comparisons", {})
    if comparisons:
        floor = comparisons.get("duckdb_query", {}).get("seconds")
        lines += [
            f"The `customer_features` mart as of {END_DATE}, three ways:",
            "",
            "| build | wall time | peak memory | vs. DuckDB query |",
            "|---|---:|---:|---:|",
            *[
                f"| {name} | {m['seconds']:,.1f} s | {m['peak_mib']:,} MiB "
                f"| {_ratio(m['seconds'], floor)} |"
                for name, m in comparisons.items()
            ],
            "",
        ]
        if "dbt_features" in comparisons:
            lines += [
                f"Of dbt's {comparisons['dbt_features']['seconds']:,.1f} s, the model's SQL took "
                f"{comparisons['dbt_features']['model_seconds']:,.1f} s (run_results.json); the "
                "rest is the dbt process: start, parse, connection.",
                "",
            ]
    rows = targets(result) if customers == TARGETS_SCALE else []
    if rows:
        lines += [
            "| target | limit | measured | met |",
            "|---|---|---|---|",
            *[
                f"| {name} | {limit} | {measured} | {'yes' if met else 'no'} |"
                for name, limit, measured, met in rows
            ],
            "",
        ]
    return lines


def plot_scaling(all_results: dict) -> bool:
    """Daily run time (log-log) and peak memory against customers; False with < 2 scales."""
    points = sorted(
        (r["customers"], r["daily_run"]) for r in all_results.values() if r.get("daily_run")
    )
    if len(points) < 2:
        return False
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    customers = [c for c, _ in points]
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
    parts = {
        "whole run": lambda daily: daily["seconds"],
        "dbt (marts and tests)": lambda daily: sum(
            seconds for task, seconds in daily["tasks"] if task.startswith("features.")
        ),
        "score": lambda daily: dict(daily["tasks"])["score"],
    }
    for label, part in parts.items():
        time_axis.plot(customers, [part(d) for _, d in points], "o-", label=label)
    time_axis.axhline(600, color="grey", linestyle="--", label="target at 1M: 10 min")
    time_axis.set(title="daily run: wall time", xlabel="customers", ylabel="seconds")
    memory_axis.plot(customers, [d["peak_mib"] * MIB / GB for _, d in points], "o-")
    memory_axis.axhline(8, color="grey", linestyle="--", label="target at 1M: 8 GB")
    memory_axis.set(title="daily run: peak memory", xlabel="customers", ylabel="GB")
    time_axis.set_yscale("log")
    time_axis.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    memory_axis.set_ylim(bottom=0)
    for axis in (time_axis, memory_axis):
        axis.set_xscale("log")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(PLOT, dpi=100)
    plt.close(figure)
    return True


def scaling_section(all_results: dict) -> list[str]:
    scales = sorted(
        (r for r in all_results.values() if r.get("daily_run")), key=lambda r: r["customers"]
    )
    if len(scales) < 2:
        return []
    lines = [
        "## Scaling: the daily run at each scale",
        "",
        "| customers | daily run | peak memory | µs per customer |",
        "|---:|---:|---:|---:|",
        *[
            f"| {r['customers']:,} | {r['daily_run']['seconds']:,.1f} s "
            f"| {r['daily_run']['peak_mib']:,} MiB "
            f"| {r['daily_run']['seconds'] / r['customers'] * 1e6:,.0f} |"
            for r in scales
        ],
        "",
    ]
    if plot_scaling(all_results):
        lines += [f"![daily run against customers]({PLOT.name})", ""]
    return lines


def write_report(all_results: dict) -> None:
    lines = [
        "# Benchmarks",
        "",
        "Produced by `make bench` (`SCALE=<customers>`, default 100,000); one run each, wall",
        "time and the peak resident memory of the stage's own process. Raw results:",
        "`docs/benchmarks.json`. Reproduce the big run with `make bench SCALE=1000000`, the",
        "scaling curve with `make bench SCALE=10000` and `make bench` beside it.",
        "",
    ]
    ordered = sorted(all_results.values(), key=lambda r: -r["customers"])
    for result in ordered:
        lines += scale_section(result)
    lines += scaling_section(all_results)
    if NOTES.exists():
        lines += [NOTES.read_text().rstrip(), ""]
    REPORT.write_text("\n".join(lines))
