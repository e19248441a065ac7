"""Point-in-time training sets: `customer_features` joined to `training_labels` at past dates.

For a training run as of date A:

- the validation snapshot is V = A - label_horizon_days, the newest date whose label window has
  fully passed by A; every model is evaluated on it, out of time;
- the training snapshots are V - k * snapshot_spacing_days for k = 1..training_snapshots,
  stacked. The spacing must be at least the horizon: then the label window of every training
  snapshot ends before V's features are taken, and no training label overlaps V's label window.

Each row holds a customer's features as of its snapshot date (only events before the next day)
and the labels of the horizon after it, joined on (customer_id, as_of_date), so no feature can
see its own label window. Snapshots missing from the warehouse are built with dbt in date order
(review texts are scored first, by a model trained only on reviews before that date). A snapshot
before the first order in the data is skipped.

Personas are fitted on the same training snapshots and judged on V like every other model, so
they need no frame of their own; V rather than A, because A's features may not be built yet
when training runs and clustering quality is then measured out of time as well.

The set is written as Parquet (one file per snapshot and a manifest) under
`<data dir>/training/<A>/`: training reads files, never the warehouse.

The files hold no customer id and no personal column (ml.contract.PERSONAL_COLUMNS, e-mail
addresses among them): each row carries `customer_key`, the customer's keyed pseudonym
(ml/privacy/pseudonyms.py), instead, so rows of one customer can be told apart and, with the key, a
forgotten customer's rows found, while the files alone name nobody.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ml.config import Settings
from ml.contract import PERSONAL_COLUMNS
from ml.errors import TrainingSetError
from ml.features.dbt import build_features, dbt_vars, run_dbt_commands
from ml.features.text_signal import score_review_sentiment
from ml.privacy.pseudonyms import CUSTOMER_ID, pseudonym_key, pseudonym_sql
from ml.warehouse.connection import connect, table_exists

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LABEL_COLUMNS = (
    "purchased",
    "orders_in_horizon",
    "revenue_in_horizon",
    "clicked_email",
    "was_active",
    "churned",
)
MIN_TRAINING_SNAPSHOTS = 2
CUSTOMER_KEY = "customer_key"
"""The customer's pseudonym, in place of `customer_id` (see the module's docstring)."""
DRIFT_REFERENCE = "drift_reference.parquet"
"""The customers' features as of the training date itself: the population a new version goes
live on, from which its drift reference is made (ml/monitoring/drift.py)."""


@dataclass(frozen=True)
class SnapshotPlan:
    as_of: dt.date
    validation: dt.date
    training: tuple[dt.date, ...]
    """Oldest first."""


@dataclass(frozen=True)
class TrainingSet:
    directory: Path
    manifest: dict
    frame: pd.DataFrame
    """Every snapshot's rows: features, labels and `snapshot_date`."""

    @property
    def drift_reference(self) -> pd.DataFrame:
        """The features as of the training date (no labels): see DRIFT_REFERENCE."""
        import pandas as pd

        return pd.read_parquet(self.directory / DRIFT_REFERENCE)

    @property
    def validation_date(self) -> dt.date:
        return dt.date.fromisoformat(self.manifest["validation_snapshot"])

    @property
    def training(self) -> pd.DataFrame:
        return self.frame[self.frame["snapshot_date"] < self.validation_date]

    @property
    def validation(self) -> pd.DataFrame:
        return self.frame[self.frame["snapshot_date"] == self.validation_date]


def plan_snapshots(settings: Settings, as_of: dt.date) -> SnapshotPlan:
    horizon = settings.label_horizon_days
    spacing = settings.models.snapshot_spacing_days
    if spacing < horizon:
        raise TrainingSetError(
            f"SEGFLOW_SNAPSHOT_SPACING_DAYS={spacing} is shorter than the label horizon "
            f"({horizon} days): a training snapshot's label window would overlap the validation "
            f"snapshot. Set SEGFLOW_SNAPSHOT_SPACING_DAYS to at least {horizon}."
        )
    validation = as_of - dt.timedelta(days=horizon)
    training = tuple(
        validation - dt.timedelta(days=k * spacing)
        for k in range(settings.models.training_snapshots, 0, -1)
    )
    return SnapshotPlan(as_of=as_of, validation=validation, training=training)


def usable_training_snapshots(
    settings: Settings, plan: SnapshotPlan, first_order: dt.date
) -> list[dt.date]:
    """The planned training snapshots on or after the first order; refuses fewer than
    MIN_TRAINING_SNAPSHOTS, or a validation snapshot before any data."""
    if plan.validation < first_order:
        raise TrainingSetError(
            f"the validation snapshot {plan.validation} is before the first order "
            f"({first_order}): train as of a later date"
        )
    training = [snapshot for snapshot in plan.training if snapshot >= first_order]
    for snapshot in plan.training:
        if snapshot < first_order:
            log.info("snapshot %s is before the first order (%s): skipped", snapshot, first_order)
    if len(training) < MIN_TRAINING_SNAPSHOTS:
        raise TrainingSetError(
            f"only {len(training)} training snapshot(s) between the first order ({first_order}) "
            f"and the validation snapshot {plan.validation} (spacing "
            f"{settings.models.snapshot_spacing_days} days); at least {MIN_TRAINING_SNAPSHOTS} "
            f"are needed: train as of a later date or lower SEGFLOW_SNAPSHOT_SPACING_DAYS "
            f"(not below the label horizon)"
        )
    return training


def training_set_dir(settings: Settings, as_of: dt.date) -> Path:
    return settings.data_dir / "training" / as_of.isoformat()


def _dates(con, table: str) -> set[dt.date]:
    if not table_exists(con, "marts", table):
        return set()
    return {
        row[0] for row in con.execute(f"SELECT DISTINCT as_of_date FROM marts.{table}").fetchall()
    }


def _survey(settings: Settings) -> tuple[dt.date, dt.date, set[dt.date], set[dt.date]]:
    """First and newest order date in raw, the dates with features, and those with labels."""
    with connect(settings, read_only=True) as con:
        if not table_exists(con, "raw", "orders"):
            raise TrainingSetError("raw.orders does not exist: ingest data first (segflow ingest)")
        first, newest = con.execute(
            "SELECT min(ordered_at)::DATE, max(ordered_at)::DATE FROM raw.orders"
        ).fetchone()
        featured, labelled = _dates(con, "customer_features"), _dates(con, "training_labels")
    if first is None:
        raise TrainingSetError("raw.orders is empty: there is nothing to learn from yet")
    return first, newest, featured, labelled


def _build_snapshots(settings: Settings, snapshots: list[dt.date]) -> None:
    """Features and labels as of each snapshot with dbt: the two marts and their data tests,
    all in one dbt process. The staging and unit tests are left to the daily build: they do not
    depend on the date (the unit tests fix their own, which an explicit label date would
    override)."""
    log.info("building features and labels with dbt as of %s", ", ".join(map(str, snapshots)))
    # Scoring up to the newest snapshot scores every review an earlier one can see.
    score_review_sentiment(settings, max(snapshots))
    run_dbt_commands(
        settings,
        [
            [
                "build",
                "--select",
                "customer_features",
                "training_labels",
                "--exclude-resource-type",
                "unit_test",
                "--vars",
                dbt_vars(settings, snapshot, label_as_of=snapshot),
            ]
            for snapshot in sorted(snapshots)
        ],
    )


def _export(
    settings: Settings, snapshots: list[dt.date], as_of: dt.date, out: Path
) -> dict[str, dict]:
    """One Parquet file per snapshot; decimals become doubles, as duckdb's `.df()` gives them
    to scoring. Returns row counts and label rates per snapshot. The features as of `as_of`
    itself (no labels yet) go to DRIFT_REFERENCE. Every file has `customer_key` first, and
    neither `customer_id` nor any other personal column; rows are in key order (an order by
    id would let a reader line them up with a sorted list of ids)."""
    labels = ", ".join(
        f"CAST(l.{column} AS DOUBLE) AS {column}"
        if column == "revenue_in_horizon"
        else f"l.{column}"
        for column in LABEL_COLUMNS
    )
    stats = {}
    key = pseudonym_key(settings)
    with connect(settings, read_only=True) as con:
        key.install(con)
        columns = con.execute(
            """SELECT column_name, data_type FROM information_schema.columns
               WHERE table_schema = 'marts' AND table_name = 'customer_features'
               ORDER BY ordinal_position"""
        ).fetchall()
        left_out = [n for n, _ in columns if n in PERSONAL_COLUMNS and n != "customer_id"]
        if left_out:
            log.info("personal columns left out of the training set: %s", ", ".join(left_out))
        features = ", ".join(
            [f"{pseudonym_sql(CUSTOMER_ID, 'f.customer_id')} AS {CUSTOMER_KEY}"]
            + [
                f"CAST(f.{name} AS DOUBLE) AS {name}" if kind.startswith("DECIMAL") else f"f.{name}"
                for name, kind in columns
                if name not in PERSONAL_COLUMNS
            ]
        )
        con.execute(
            f"""COPY (SELECT {features} FROM marts.customer_features f
                      WHERE f.as_of_date = DATE '{as_of.isoformat()}' ORDER BY {CUSTOMER_KEY})
                TO '{out / DRIFT_REFERENCE}' (FORMAT parquet)"""
        )
        for snapshot in snapshots:
            query = f"""
                SELECT {features}, {labels}, f.as_of_date AS snapshot_date
                FROM marts.customer_features f
                JOIN marts.training_labels l USING (customer_id, as_of_date)
                WHERE f.as_of_date = DATE '{snapshot.isoformat()}'
                ORDER BY {CUSTOMER_KEY}"""
            path = out / f"{snapshot.isoformat()}.parquet"
            con.execute(f"COPY ({query}) TO '{path}' (FORMAT parquet)")
            rows, purchased, clicked, active, churned, revenue = con.execute(
                f"""SELECT count(*), avg(purchased), avg(clicked_email), avg(was_active::INT),
                           avg(churned), avg(revenue_in_horizon)
                    FROM read_parquet('{path}')"""
            ).fetchone()
            stats[snapshot.isoformat()] = {
                "rows": rows,
                "purchased_rate": round(purchased or 0.0, 4),
                "clicked_email_rate": round(clicked or 0.0, 4),
                "active_share": round(active or 0.0, 4),
                "churned_rate_of_active": round(churned or 0.0, 4),
                "mean_revenue_in_horizon": round(revenue or 0.0, 2),
            }
    return stats


def build_training_set(settings: Settings, as_of: dt.date) -> Path:
    """Build (with dbt where missing) and export the snapshots of a training run as of
    `as_of`; return the folder holding them."""
    plan = plan_snapshots(settings, as_of)
    first, newest, featured, labelled = _survey(settings)
    freshness = settings.quality.freshness_max_days
    if newest < as_of - dt.timedelta(days=freshness):
        raise TrainingSetError(
            f"the newest order in raw is from {newest}, but labels of the validation snapshot "
            f"{plan.validation} need orders up to {as_of}: ingest data up to {as_of} first "
            f"(segflow ingest --as-of {as_of}), or train as of an earlier date"
        )
    training = usable_training_snapshots(settings, plan, first)
    snapshots = [*training, plan.validation]
    missing = [snapshot for snapshot in snapshots if snapshot not in featured & labelled]
    if missing:
        _build_snapshots(settings, missing)
    if as_of not in featured:
        # The drift reference: the features of the training date (its labels lie ahead).
        build_features(settings, as_of, select="customer_features")

    # Written next to the final folder and swapped in, so a reader never sees half a set.
    out = training_set_dir(settings, as_of)
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    stats = _export(settings, snapshots, as_of, staging)
    manifest = {
        "as_of": as_of.isoformat(),
        "label_horizon_days": settings.label_horizon_days,
        "snapshot_spacing_days": settings.models.snapshot_spacing_days,
        "validation_snapshot": plan.validation.isoformat(),
        "training_snapshots": [snapshot.isoformat() for snapshot in training],
        "skipped_snapshots": [s.isoformat() for s in plan.training if s not in training],
        "built_with_dbt": [snapshot.isoformat() for snapshot in missing],
        "snapshots": stats,
        "drift_reference": {"as_of": as_of.isoformat(), "file": DRIFT_REFERENCE},
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    # Renamed aside before it is removed: deleting file by file in place would leave half a set
    # where readers look if the process is killed meanwhile.
    previous = out.with_name(out.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    if out.exists():
        out.rename(previous)
    staging.rename(out)
    shutil.rmtree(previous, ignore_errors=True)
    log.info(
        "training set as of %s: %s training rows over %d snapshots, %s validation rows (%s)",
        as_of,
        f"{sum(stats[s.isoformat()]['rows'] for s in training):,}",
        len(training),
        f"{stats[plan.validation.isoformat()]['rows']:,}",
        out,
    )
    return out


def load_training_set(directory: Path, validation_only: bool = False) -> TrainingSet:
    """Read a folder written by build_training_set (only its validation snapshot if asked)."""
    import pandas as pd

    manifest_path = Path(directory) / MANIFEST
    if not manifest_path.exists():
        raise TrainingSetError(
            f"{directory} holds no training set ({MANIFEST} is missing): run build_training_set "
            "(the train_models DAG's first task) for that date"
        )
    manifest = json.loads(manifest_path.read_text())
    dates = [manifest["validation_snapshot"]]
    if not validation_only:
        dates = [*manifest["training_snapshots"], *dates]
    frame = pd.concat(
        [pd.read_parquet(Path(directory) / f"{date}.parquet") for date in dates],
        ignore_index=True,
    )
    frame["snapshot_date"] = pd.to_datetime(frame["snapshot_date"]).dt.date
    return TrainingSet(directory=Path(directory), manifest=manifest, frame=frame)
