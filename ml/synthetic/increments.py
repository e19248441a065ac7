"""The last few hours of a shop's behaviour, dropped into an existing landing folder.

`generate_increment` writes, up to a moment (now, for a live demo): web sessions (some carts
abandoned, some checked out), an order after each checkout, opens and clicks of a live campaign
and a few opt-outs, all by customers already in the landing files, at rates proportional to
their number and never after that moment. Each entity gets one new file
`<entity>/date=<day>/increment-<time>Z.parquet`, written under a hidden name and renamed into
place, with ids prefixed by the time so they never collide.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ml.contract import spelling
from ml.ingest.landing import CSV_DELIMITERS, landing_format
from ml.synthetic.shop import (
    CATEGORIES,
    DEVICES,
    HOUR_US,
    numbered_ids,
    offsets_within,
    utc_timestamps,
)

LIVE_PER_CUSTOMER_YEAR = {
    # kind: (expected per customer and year, at least this many per increment)
    "browse": (7.0, 6),  # web sessions without a cart
    "abandoned": (3.0, 3),  # sessions that add to the cart and leave
    "checkout": (6.0, 3),  # sessions that check out, each followed by its order
    "open": (14.0, 6),  # opens of the live campaign
    "unsubscribe": (0.15, 1),
    "bounce": (0.05, 0),
    "complaint": (0.01, 0),
}
LIVE_DEVICE_WEIGHTS = (0.38, 0.52, 0.08, 0.02)
ORDER_DELAY_US = (20_000_000, 40_000_000)
"""An order follows its checkout event by 20 to 40 seconds."""


@dataclass(frozen=True)
class IncrementReport:
    at: dt.datetime
    hours: float
    files: list[Path]
    rows: dict[str, int]
    unsubscribed: list[str]
    bounced: list[str]
    complained: list[str]


def _landing_customer_ids(landing_dir: Path, last_day: dt.date) -> np.ndarray:
    """Distinct customer_ids of the customers files in partitions up to `last_day`."""
    folder, chunks = landing_dir / "customers", []
    for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
        parts = path.relative_to(folder).parts
        later = any(p.startswith("date=") and p[5:] > last_day.isoformat() for p in parts[:-1])
        fmt, compression = landing_format(path.name) or (None, None)
        if fmt not in ("csv", "parquet") or later:
            continue
        if fmt == "parquet":
            names = pq.read_schema(path).names
        else:
            opener = gzip.open if compression else open
            with opener(path, "rt", encoding="utf-8-sig", errors="replace") as handle:
                header = handle.readline()
            delimiter = max(CSV_DELIMITERS, key=header.count)
            names = next(csv.reader([header], delimiter=delimiter))
        name = next((n for n in names if spelling(n) == "customer_id"), None)
        if name is None:
            continue  # the loader rejects such a file anyway
        if fmt == "parquet":
            column = pq.read_table(path, columns=[name]).column(0)
        else:
            column = pacsv.read_csv(
                path,
                parse_options=pacsv.ParseOptions(delimiter=delimiter),
                convert_options=pacsv.ConvertOptions(
                    include_columns=[name], column_types={name: pa.string()}
                ),
            ).column(0)
        chunks.extend(pc.utf8_trim_whitespace(column.cast(pa.string())).chunks)
    ids = pc.unique(pa.chunked_array(chunks, pa.string())).drop_null()
    return ids.filter(pc.not_equal(ids, "")).to_numpy(zero_copy_only=False)


def generate_increment(
    landing_dir: Path, at: dt.datetime, hours: float = 3.0, seed: int | None = None
) -> IncrementReport:
    """Web sessions, orders and e-mail engagement of the existing customers in the `hours` up to
    `at` (aware; cut to the second), as one new file per entity in `at`'s date partition."""
    if at.utcoffset() is None:
        raise ValueError(f"at must be timezone-aware (UTC), got {at.isoformat()}")
    if not hours * 3600 >= 60:
        raise ValueError(f"hours must cover at least a minute, got {hours}")
    at = at.astimezone(dt.UTC).replace(microsecond=0)
    ids = _landing_customer_ids(landing_dir, at.date())
    if ids.size == 0:
        raise ValueError(
            f"no customers in {landing_dir / 'customers'}: run `segflow generate` first"
        )
    rng = np.random.default_rng(seed)
    end_us = (at - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    window_us = int(hours * HOUR_US)

    def count(kind: str) -> int:
        rate, floor = LIVE_PER_CUSTOMER_YEAR[kind]
        return max(int(rng.poisson(rate * ids.size * hours / (365 * 24))), floor)

    stamp = f"{at:%Y%m%dT%H%M%S}"
    web, orders = _live_sessions(rng, ids, count, stamp, end_us, window_us)
    # The campaign went out before the window; its opens and clicks trickle in.
    campaign = f"CMP-{at - dt.timedelta(hours=hours):%Y%m%d}-LIVE"
    email, opted_out = _live_email(rng, ids, count, stamp, campaign, end_us - window_us, end_us)
    tables = {"orders": orders, "email_events": email, "web_events": web}

    name = f"increment-{at:%Y%m%dT%H%M%SZ}.parquet"
    targets = {e: landing_dir / e / f"date={at.date()}" / name for e in tables if len(tables[e])}
    for target in targets.values():
        if target.exists():
            raise FileExistsError(f"{target} exists already: not overwritten")
    for entity, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{name}.tmp")  # hidden: discovery skips it
        try:
            pq.write_table(tables[entity], temporary, compression="zstd")
            temporary.replace(target)
        finally:
            temporary.unlink(missing_ok=True)
    rows = {entity: tables[entity].num_rows for entity in targets}
    return IncrementReport(at, hours, list(targets.values()), rows, *opted_out)


def _live_sessions(rng, ids, count, stamp, end_us, window_us) -> tuple[pa.Table, pa.Table]:
    # Sessions that browse, abandon a cart or check out; events in the order of `kinds`.
    kind = np.repeat([0, 1, 2], [count("browse"), count("abandoned"), count("checkout")])
    s, carts, checkout = kind.size, (kind >= 1).astype(np.int64), (kind == 2).astype(np.int64)
    per_kind = np.stack(
        [
            1 + rng.poisson(1.2, s),
            carts + rng.poisson(1.0, s),
            (rng.random(s) < 0.3).astype(np.int64),
            carts * (1 + (rng.random(s) < 0.3)),
            checkout,
        ],
        axis=1,
    )
    kinds = np.array(["page_view", "product_view", "search", "add_to_cart", "checkout"], object)
    events_per_session = per_kind.sum(axis=1)
    session_of_event = np.repeat(np.arange(s), events_per_session)
    kind_of_event = np.repeat(np.tile(np.arange(5), s), per_kind.ravel())
    offset = offsets_within(
        rng.integers(10, 180, session_of_event.size) * 1_000_000, events_per_session
    )
    # A session and its order fit in the window: squeezed if the window is very short.
    room = window_us - ORDER_DELAY_US[1]
    duration = offset[np.cumsum(events_per_session) - 1]
    scale = np.minimum(1.0, room / np.maximum(duration, 1))
    offset = (offset * scale[session_of_event]).astype(np.int64)
    duration = (duration * scale).astype(np.int64)
    start = end_us - window_us + (rng.random(s) * (room - duration)).astype(np.int64)
    event_us = start[session_of_event] + offset
    customer = rng.integers(0, ids.size, s)
    session_category = rng.integers(0, len(CATEGORIES), s)
    category = np.where(
        (kind_of_event == 1) & (rng.random(kind_of_event.size) < 0.4),
        rng.integers(0, len(CATEGORIES), kind_of_event.size),
        session_category[session_of_event],
    )
    device = DEVICES[rng.choice(len(DEVICES), s, p=LIVE_DEVICE_WEIGHTS)]
    web = pa.table(
        {
            "event_id": numbered_ids(f"W-{stamp}-", 1, session_of_event.size, 6),
            "customer_id": pa.array(ids[customer[session_of_event]], type=pa.string()),
            "session_id": numbered_ids(f"S-{stamp}-", 1, s, 6).take(pa.array(session_of_event)),
            "event_type": pa.array(kinds[kind_of_event], type=pa.string()),
            "occurred_at": utc_timestamps(event_us),
            "device": pa.array(device[session_of_event], type=pa.string()),
            "category": pa.array(
                np.where(np.isin(kind_of_event, (1, 3, 4)), CATEGORIES[category], None),
                type=pa.string(),
            ),
        }
    )
    # One completed order per checkout, shortly after it.
    checkouts = np.flatnonzero(kind_of_event == 4)
    n = checkouts.size
    order_us = event_us[checkouts] + rng.integers(*ORDER_DELAY_US, n, endpoint=True)
    amount = np.maximum(np.round(rng.lognormal(np.log(55.0), 0.6, n), 2), 1.0)
    orders = pa.table(
        {
            "order_id": numbered_ids(f"O-{stamp}-", 1, n, 6),
            "customer_id": pa.array(ids[customer[session_of_event[checkouts]]], type=pa.string()),
            "ordered_at": utc_timestamps(order_us),
            "amount": pa.array(amount).cast(pa.decimal128(12, 2)),
            "items": pa.array(1 + rng.poisson(np.maximum(amount / 60.0 - 0.5, 0.05))),
            "category": pa.array(CATEGORIES[category[checkouts]], type=pa.string()),
            "status": pa.array(np.full(n, "completed", dtype=object), type=pa.string()),
        }
    )
    return web, orders


def _live_email(rng, ids, count, stamp, campaign, start_us, end_us) -> tuple[pa.Table, list]:
    """Opens and clicks of the campaign (a click some seconds after its open), and opt-outs."""
    opens = count("open")
    clicks = min(max(int(rng.binomial(opens, 0.3)), 2), opens)
    opener = rng.integers(0, ids.size, opens)
    open_us = start_us + (rng.random(opens) * (end_us - start_us)).astype(np.int64)
    click_us = np.minimum(open_us[:clicks] + rng.integers(5, 600, clicks) * 1_000_000, end_us)
    reader_device = DEVICES[rng.choice(len(DEVICES), opens, p=LIVE_DEVICE_WEIGHTS)]
    wanted = [count("unsubscribe"), count("bounce"), count("complaint")]
    chosen = rng.choice(ids.size, size=min(sum(wanted), ids.size), replace=False)
    opted_out = np.split(chosen, np.cumsum(wanted)[:2])
    groups = [("open", opener, open_us), ("click", opener[:clicks], click_us)] + [
        (kind, who, start_us + (rng.random(who.size) * (end_us - start_us)).astype(np.int64))
        for kind, who in zip(("unsubscribe", "bounce", "complaint"), opted_out, strict=True)
    ]
    customer = np.concatenate([g[1] for g in groups])
    kind = np.repeat(np.array([g[0] for g in groups], object), [g[1].size for g in groups])
    n = customer.size
    device = np.full(n, None, dtype=object)
    device[: opens + clicks] = np.concatenate([reader_device, reader_device[:clicks]])
    table = pa.table(
        {
            "event_id": numbered_ids(f"E-{stamp}-", 1, n, 6),
            "customer_id": pa.array(ids[customer], type=pa.string()),
            "campaign_id": pa.array(np.full(n, campaign, object), type=pa.string()),
            "event_type": pa.array(kind, type=pa.string()),
            "occurred_at": utc_timestamps(np.concatenate([g[2] for g in groups])),
            "device": pa.array(device, type=pa.string()),
        }
    )
    return table, [ids[who].tolist() for who in opted_out]
