"""The synthetic shop delivered the way real exports look (`segflow generate --as-exported`).

The same shop as `generate` writes (same seed: same customers, orders and events; the export's
own draws come from a random stream of their own), delivered the way a shop database and two
e-mail tools export it, for tests and benchmarks of a loader that must take real exports:

- customers: a full snapshot of the customers table every `snapshot_every_days` days and on
  the last day (`customers/date=<day>/customers.csv.gz`), with `updated_at`. Between
  snapshots a small share of customers change their address or opt out or in, spelled as
  e-mail tools and databases spell it; everyone else is delivered again exactly as before.
- orders: Parquet with integer ids and `updated_at`; some completed orders are delivered
  again, refunded, 1-10 partitions after their first delivery.
- email_events: one CSV per tool and day (SendGrid sends Tuesday's campaigns, Klaviyo
  Friday's) with the tools' event names; some files write customer ids as floats (`100042.0`),
  as pandas does when the column had nulls.
- web_events: JSON lines; reviews: tab-separated.
- customer ids are integers: 100,000 plus the shop's number (C0000042 is 100042).
- a share of event rows arrive 1-3 partitions late (at the latest in the last one); rows of a
  new customer that arrive before the first snapshot holding the customer are early.

Every file is written under a hidden name and renamed into place. The report counts every
delivered row (first deliveries, unchanged and changed re-deliveries, late and early rows), so
a test can check that each one is loaded, held or rejected.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, astuple, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ml.synthetic.shop import DAY_US, EPOCH, UTC_MICROS, Shop

CUSTOMER_ID_BASE = 100_000
SNAPSHOT_EVERY_DAYS = 7
CHANGE_SHARES = {"email": 0.004, "opt_out": 0.003, "opt_in": 0.003}
"""Share of the customers of the previous snapshot who get a new address, or an opt-in value
written as an opt-out or an opt-in, by the next snapshot."""
OPT_OUT_VALUES = np.array(["no", "off", "unsubscribed", "false", "0", "N", "opted_out"], object)
OPT_IN_VALUES = np.array(["yes", "subscribed", "1", "TRUE"], object)
LATE_SHARE = 0.03
LATE_DAYS = (1, 3)
REFUND_SHARE = 0.03
REFUND_DAYS = (1, 10)
"""A refund is delivered this many partitions after its order was."""
FLOAT_ID_SHARE = 0.5
"""Share of e-mail event files whose customer ids are written as floats."""
DROPPED_SHARE = 0.3
"""Share of SendGrid's bounces it reports as `dropped` (an address it knew to bounce)."""

# Klaviyo has no metric for a send, so its campaigns' sends keep the contract's own name.
TOOL_EVENT_NAMES = {
    "sendgrid": {
        "sent": "processed",
        "delivered": "delivered",
        "open": "open",
        "click": "click",
        "bounce": "bounce",
        "unsubscribe": "group_unsubscribe",
        "complaint": "spamreport",
    },
    "klaviyo": {
        "sent": "sent",
        "delivered": "Received Email",
        "open": "Opened Email",
        "click": "Clicked Email",
        "bounce": "Bounced Email",
        "unsubscribe": "Unsubscribed",
        "complaint": "Marked Email as Spam",
    },
}
KLAVIYO_CAMPAIGNS = "-B"
"""Klaviyo sends the campaigns whose id ends so (Friday's), SendGrid all others."""

FILES = {
    # stream: (entity folder, file name in each date partition)
    "customers": ("customers", "customers.csv.gz"),
    "orders": ("orders", "orders.parquet"),
    "sendgrid": ("email_events", "sendgrid-events.csv"),
    "klaviyo": ("email_events", "klaviyo-events.csv"),
    "web_events": ("web_events", "events.jsonl"),
    "reviews": ("reviews", "reviews.tsv"),
}
EVENT_STREAMS = ("orders", "sendgrid", "klaviyo", "web_events", "reviews")
ENTITIES = ("customers", "orders", "email_events", "web_events", "reviews")


@dataclass
class EntityDeliveries:
    files: int = 0
    rows: int = 0
    """Rows in the files: first_deliveries + unchanged_redeliveries + changed_redeliveries."""
    first_deliveries: int = 0
    """Rows whose key is delivered for the first time."""
    unchanged_redeliveries: int = 0
    """Customers delivered again exactly as in the previous snapshot."""
    changed_redeliveries: int = 0
    """New versions of rows delivered before: changed customers, orders' status changes."""
    late: int = 0
    """Rows delivered 1-3 partitions after the day they happened."""
    early: int = 0
    """Rows delivered in a partition before the first snapshot that holds their customer."""


@dataclass
class DeliveryReport:
    customers: int
    first_day: dt.date
    last_day: dt.date
    snapshot_days: list[dt.date]
    entities: dict[str, EntityDeliveries]
    customer_changes: dict[str, int]
    """Changed versions of customers by what changed: `email` a new address, `opt_out` and
    `opt_in` the consent (from the other value or from none), `respelled` the same consent in
    another spelling (`true` as `yes`), which a loader that knows the spellings finds
    unchanged."""
    early_unsubscribes: int
    """Unsubscribes among the early e-mail events."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=dt.date.isoformat, indent=2)

    def render(self) -> str:
        columns = ("files", "rows", "first", "unchanged", "changed", "late", "early")
        lines = ["  entity       " + "".join(f"{c:>12}" for c in columns)]
        for entity, counts in self.entities.items():
            lines.append(f"  {entity:<13}" + "".join(f"{n:>12,}" for n in astuple(counts)))
        changes = self.customer_changes
        lines.append(
            f"  snapshots: {len(self.snapshot_days)}; customers changed: {changes['email']:,} "
            f"addresses, {changes['opt_out']:,} opt-outs, {changes['opt_in']:,} opt-ins, "
            f"{changes['respelled']:,} consents respelled; "
            f"early unsubscribes: {self.early_unsubscribes:,}"
        )
        return "\n".join(lines)


def generate_as_exported(
    out: Path,
    customers: int,
    days: int,
    end_date: dt.date,
    seed: int = 7,
    drift_from: dt.date | None = None,
    snapshot_every_days: int = SNAPSHOT_EVERY_DAYS,
    report_path: Path | None = None,
    progress: bool = True,
) -> DeliveryReport:
    """Write the shop `generate` would write as exports into `out`; the report also goes to
    `report_path` (JSON) when given."""
    if snapshot_every_days < 1:
        raise ValueError("snapshot_every_days must be at least 1")
    shop = Shop(customers, days, end_date, seed, drift_from)
    exports = _Exports(out, shop, snapshot_every_days, np.random.SeedSequence(seed).spawn(1)[0])
    for index, tables in shop.walk(progress):
        exports.happened(index, tables)
        exports.deliver(index)
    report = exports.report(end_date)
    if report_path is not None:
        _write_atomically(report_path, lambda path: path.write_text(report.to_json() + "\n"))
    return report


class _Exports:
    """The shop's rows in the partitions they are delivered in, written as the walk passes."""

    def __init__(self, out: Path, shop: Shop, every: int, seed: np.random.SeedSequence):
        people = shop.people
        self.out, self.first_day, self.last, self.n = out, shop.first_day, shop.days - 1, people.n
        self.first_number = (shop.first_day - EPOCH).days
        self.rng = np.random.default_rng(seed)
        self.snapshot_days = sorted({*range(0, shop.days, every), self.last})
        # Day index on which each customer is in the shop's table (the first day for those who
        # signed up before the window), and the first snapshot that holds them.
        self.arrival = np.maximum(people.signup_day - self.first_number, 0)
        self.first_snapshot = np.minimum(-(-self.arrival // every) * every, self.last)
        self.customers = _customers_table(people.customers_table())
        self.in_previous = np.zeros(self.n, dtype=bool)
        self.previous_snapshot = 0
        self.pending: dict[tuple[str, int], list[pa.Table]] = defaultdict(list)
        self.entities = {entity: EntityDeliveries() for entity in ENTITIES}
        self.customer_changes = dict.fromkeys((*CHANGE_SHARES, "respelled"), 0)
        # The consent each customer's email_opt_in means: 1 in, 0 out, -1 none given.
        self.consent = np.where(people.opt_in_missing, -1, people.opt_in).astype(np.int8)
        self.early_unsubscribes = 0

    def report(self, end_date: dt.date) -> DeliveryReport:
        return DeliveryReport(
            customers=self.n,
            first_day=self.first_day,
            last_day=end_date,
            snapshot_days=[self.first_day + dt.timedelta(days=d) for d in self.snapshot_days],
            entities=self.entities,
            customer_changes=self.customer_changes,
            early_unsubscribes=self.early_unsubscribes,
        )

    # ---------------------------------------------------------------- rows as they happen

    def happened(self, index: int, tables: dict[str, pa.Table]) -> None:
        """Queue the rows that happened on a day for the partitions that deliver them."""
        if "orders" in tables:
            self._orders(index, tables["orders"])
        if "email_events" in tables:
            self._email_events(index, tables["email_events"])
        for entity in ("web_events", "reviews"):
            if entity in tables:
                table = _with_integer_customers(tables[entity])
                self._queue(entity, entity, index, table, self._delivery_days(index, table))

    def _delivery_days(self, index: int, table: pa.Table) -> np.ndarray:
        late = self.rng.random(table.num_rows) < LATE_SHARE
        delay = self.rng.integers(LATE_DAYS[0], LATE_DAYS[1] + 1, table.num_rows)
        return np.minimum(index + np.where(late, delay, 0), self.last)

    def _queue(
        self, stream: str, entity: str, index: int, table: pa.Table, delivery: np.ndarray
    ) -> np.ndarray:
        """Queue rows that happened on day `index` (first deliveries) for their partitions;
        returns which are early."""
        counts = self.entities[entity]
        counts.first_deliveries += table.num_rows
        counts.late += int((delivery > index).sum())
        early = self._early(table, delivery)
        counts.early += int(early.sum())
        self._split(stream, table, delivery)
        return early

    def _early(self, table: pa.Table, delivery: np.ndarray) -> np.ndarray:
        customer = table["customer_id"].to_numpy() - CUSTOMER_ID_BASE - 1
        return delivery < self.first_snapshot[customer]

    def _split(self, stream: str, table: pa.Table, delivery: np.ndarray) -> None:
        for day in np.unique(delivery):
            self.pending[(stream, int(day))].append(table.filter(pa.array(delivery == day)))

    def _orders(self, index: int, shop_orders: pa.Table) -> None:
        table = _with_integer_customers(shop_orders)
        order_id = pc.cast(pc.utf8_slice_codeunits(table["order_id"], 1), pa.int64())
        table = table.set_column(0, "order_id", order_id)
        table = table.append_column("updated_at", table["ordered_at"])
        delivery = self._delivery_days(index, table)
        self._queue("orders", "orders", index, table, delivery)

        # Some completed orders are refunded: delivered again later, if still in the window.
        completed = pc.equal(table["status"], "completed").to_numpy(zero_copy_only=False)
        refunded = completed & (self.rng.random(table.num_rows) < REFUND_SHARE)
        later = self.rng.integers(REFUND_DAYS[0], REFUND_DAYS[1] + 1, table.num_rows)
        refunded &= delivery + later <= self.last
        refund_day = (delivery + later)[refunded]
        refund_us = (self.first_number + refund_day) * DAY_US
        refund_us += self.rng.integers(0, DAY_US, refund_day.size)
        refunds = table.filter(pa.array(refunded))
        status = pa.array(np.full(refunds.num_rows, "refunded", object), pa.string())
        refunds = _replace_column(refunds, "status", status)
        refunds = _replace_column(
            refunds, "updated_at", pa.array(refund_us, pa.int64()).cast(UTC_MICROS)
        )
        counts = self.entities["orders"]
        counts.changed_redeliveries += refunds.num_rows
        counts.early += int(self._early(refunds, refund_day).sum())
        self._split("orders", refunds, refund_day)

    def _email_events(self, index: int, shop_events: pa.Table) -> None:
        table = _with_integer_customers(shop_events)
        delivery = self._delivery_days(index, table)
        klaviyo = pc.ends_with(table["campaign_id"], KLAVIYO_CAMPAIGNS).to_numpy(
            zero_copy_only=False
        )
        for tool, by_tool in (("sendgrid", ~klaviyo), ("klaviyo", klaviyo)):
            events = table.filter(pa.array(by_tool))
            kinds = events["event_type"]
            names = TOOL_EVENT_NAMES[tool]
            tool_kinds = pa.array(list(names.values()), pa.string()).take(
                pc.index_in(kinds, value_set=pa.array(list(names)))
            )
            if tool == "sendgrid":
                bounce = pc.equal(kinds, "bounce").to_numpy(zero_copy_only=False)
                dropped = bounce & (self.rng.random(events.num_rows) < DROPPED_SHARE)
                tool_kinds = pc.if_else(pa.array(dropped), "dropped", tool_kinds)
            events = _replace_column(events, "event_type", tool_kinds)
            early = self._queue(tool, "email_events", index, events, delivery[by_tool])
            unsubscribe = pc.equal(kinds, "unsubscribe").to_numpy(zero_copy_only=False)
            self.early_unsubscribes += int((early & unsubscribe).sum())

    # ------------------------------------------------------------- partitions as delivered

    def deliver(self, index: int) -> None:
        """Write the partition of day `index`: the snapshot if it is one, and queued rows."""
        if index in self.snapshot_days:
            self._snapshot(index)
        for stream in EVENT_STREAMS:
            parts = self.pending.pop((stream, index), None)
            if parts:
                self._write(stream, index, pa.concat_tables(parts))

    def _snapshot(self, index: int) -> None:
        changed = self._change_customers(index)
        in_snapshot = self.arrival <= index
        counts = self.entities["customers"]
        counts.first_deliveries += int((in_snapshot & ~self.in_previous).sum())
        counts.changed_redeliveries += int(changed.sum())
        counts.unchanged_redeliveries += int((self.in_previous & ~changed).sum())
        self._write("customers", index, self.customers.filter(pa.array(in_snapshot)))
        self.in_previous, self.previous_snapshot = in_snapshot, index

    def _change_customers(self, index: int) -> np.ndarray:
        """Change a few customers of the previous snapshot by day `index`; which changed."""
        candidates = np.flatnonzero(self.in_previous)
        kind = np.searchsorted(
            np.cumsum(list(CHANGE_SHARES.values())), self.rng.random(candidates.size), "right"
        )
        changed = np.zeros(self.n, dtype=bool)
        day = self.first_day + dt.timedelta(days=index)
        current_opt_in = self.customers["email_opt_in"]
        for number, change in enumerate(CHANGE_SHARES):
            who = candidates[kind == number]
            if change == "email":
                numbers = pc.cast(pa.array(who + 1), pa.string())
                values = pc.binary_join_element_wise(
                    "customer", numbers, f".{day:%Y%m%d}@example.net", ""
                )
                self.customer_changes["email"] += who.size
            else:
                opting_in = change == "opt_in"
                spellings = OPT_IN_VALUES if opting_in else OPT_OUT_VALUES
                values = spellings[self.rng.integers(0, spellings.size, who.size)]
                # Only a different value is a change (an opt-out spelled as it was is not).
                different = values != current_opt_in.take(who).to_numpy(zero_copy_only=False)
                who, values = who[different], pa.array(values[different], pa.string())
                respelled = int((self.consent[who] == opting_in).sum())
                self.customer_changes["respelled"] += respelled
                self.customer_changes[change] += who.size - respelled
                self.consent[who] = opting_in
            column = "email" if change == "email" else "email_opt_in"
            self.customers = _replace_rows(self.customers, column, who, values)
            changed[who] = True
        # Each change happened after the previous snapshot's day, by the end of this one.
        who = np.flatnonzero(changed)
        since_us = (self.first_number + self.previous_snapshot + 1) * DAY_US
        updated_us = since_us + self.rng.integers(
            0, (index - self.previous_snapshot) * DAY_US, who.size
        )
        updated_at = _iso(pa.array(updated_us, pa.int64()).cast(UTC_MICROS))
        self.customers = _replace_rows(self.customers, "updated_at", who, updated_at)
        return changed

    def _write(self, stream: str, index: int, table: pa.Table) -> None:
        entity, name = FILES[stream]
        day = self.first_day + dt.timedelta(days=index)
        target = self.out / entity / f"date={day.isoformat()}" / name
        if stream == "customers":
            _write_atomically(target, lambda path: _write_csv_gzip(table, path))
        elif stream == "orders":
            _write_atomically(target, lambda path: pq.write_table(table, path, compression="zstd"))
        elif entity == "email_events":
            floats = self.rng.random() < FLOAT_ID_SHARE
            _write_atomically(target, lambda path: _write_email_csv(table, path, floats))
        elif stream == "web_events":
            _write_atomically(target, lambda path: _write_json_lines(table, path))
        else:
            _write_atomically(target, lambda path: _write_tsv(table, path))
        counts = self.entities[entity]
        counts.files += 1
        counts.rows += table.num_rows


def _customers_table(shop_customers: pa.Table) -> pa.Table:
    """The shop's customers as its database exports them: integer ids, ISO-8601 text
    timestamps, opt-ins as text, and updated_at (the signup, until they change)."""
    numbers = np.arange(1, shop_customers.num_rows + 1, dtype=np.int64)
    signup_at = _iso(shop_customers["signup_at"])
    table = _replace_column(shop_customers, "customer_id", pa.array(CUSTOMER_ID_BASE + numbers))
    table = _replace_column(table, "signup_at", signup_at)
    table = _replace_column(table, "email_opt_in", pc.cast(table["email_opt_in"], pa.string()))
    return table.append_column("updated_at", signup_at)


def _with_integer_customers(table: pa.Table) -> pa.Table:
    """The shop's `C0000042` as the export's 100042."""
    number = pc.cast(pc.utf8_slice_codeunits(table["customer_id"], 1), pa.int64())
    return _replace_column(table, "customer_id", pc.add(number, CUSTOMER_ID_BASE))


def _replace_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def _replace_rows(table: pa.Table, name: str, rows: np.ndarray, values: pa.Array) -> pa.Table:
    """`table` with column `name` set to `values` in `rows` (ascending)."""
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[rows] = True
    column = pc.replace_with_mask(table[name].combine_chunks(), pa.array(mask), values)
    return _replace_column(table, name, column)


def _iso(times: pa.Array) -> pa.Array:
    """ISO-8601 UTC text of timestamps: 2026-06-30T10:15:05.123456Z."""
    # Text of a zoneless timestamp is ten times faster to make than of a UTC one.
    text = pc.cast(pc.cast(times, pa.timestamp("us")), pa.string())
    return pc.binary_join_element_wise(pc.binary_replace_slice(text, 10, 11, "T"), "Z", "")


def _with_text_times(table: pa.Table) -> pa.Table:
    for name, kind in zip(table.column_names, table.schema.types, strict=True):
        if pa.types.is_timestamp(kind):
            table = _replace_column(table, name, _iso(table[name]))
    return table


def _write_csv_gzip(table: pa.Table, path: Path) -> None:
    # Level 1: a million customers in a second; no file name or time in the gzip header.
    with path.open("wb") as raw, gzip.GzipFile("", "wb", 1, raw, mtime=0) as handle:
        _write_delimited(table, handle, ",")


def _write_email_csv(table: pa.Table, path: Path, float_ids: bool) -> None:
    table = _with_text_times(table)
    if float_ids:
        text = pc.cast(table["customer_id"], pa.string())
        table = _replace_column(table, "customer_id", pc.binary_join_element_wise(text, ".0", ""))
    with path.open("wb") as handle:
        _write_delimited(table, handle, ",")


def _write_tsv(table: pa.Table, path: Path) -> None:
    with path.open("wb") as handle:
        _write_delimited(_with_text_times(table), handle, "\t")


def _write_delimited(table: pa.Table, handle: BinaryIO, delimiter: str) -> None:
    """Header and values unquoted, as pandas and most exports write them: no value holds a
    separator, quote or line break (pyarrow's writer would refuse one)."""
    handle.write((delimiter.join(table.column_names) + "\n").encode())
    options = pacsv.WriteOptions(include_header=False, delimiter=delimiter, quoting_style="none")
    pacsv.write_csv(table, handle, options)


def _write_json_lines(table: pa.Table, path: Path) -> None:
    """One JSON object a line, made column-wise. The values are ids, names and numbers without
    quotes, backslashes or control characters, so none needs escaping."""
    pieces: list[str | pa.ChunkedArray] = []
    for position, name in enumerate(table.column_names):
        column = _with_text_times(table.select([name]))[0]
        if pa.types.is_string(column.type):
            column = pc.binary_join_element_wise('"', column, '"', "")
        else:
            column = pc.cast(column, pa.string())
        pieces += [("{" if position == 0 else ",") + f'"{name}":', pc.fill_null(column, "null")]
    lines = pc.binary_join_element_wise(*pieces, "}\n", "")
    with path.open("wb") as handle:
        for chunk in lines.chunks:
            # The text of all lines lies back to back in the chunk's data buffer.
            offsets = np.frombuffer(chunk.buffers()[1], np.int32, len(chunk) + 1, chunk.offset * 4)
            handle.write(memoryview(chunk.buffers()[2])[offsets[0] : offsets[-1]])


def _write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Write under a hidden name beside `target` (the loader skips it), then rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    try:
        write(temporary)
        temporary.replace(target)
    finally:
        temporary.unlink(missing_ok=True)
