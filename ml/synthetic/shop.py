"""Synthetic shop data worth segmenting, written as landing files of the data contract.

Every customer has a latent type (loyal high spender, bargain hunter, regular, engaged browser,
lapsing, dormant) and personal multipliers drawn once: orders, e-mail opens and clicks, web
sessions, devices, hours of day and reviews all follow from them, shaped by seasonality (Black
Friday, Christmas, January sales, a summer dip), the weekly rhythm, onboarding after signup and
churn. So future purchases are predictable from past behaviour, but noisily.

The generator walks the calendar one day at a time over all customers at once (numpy arrays,
no Python loop over customers), so memory stays flat in the number of days and 1,000,000
customers over a year fit in a few minutes. Each day's events land in `<entity>/date=<day>/`,
like the daily increments a shop would export. Events that a day causes later (an open the next
morning, a review two weeks after an order) are held back and written on the day they happen.
`ml/synthetic/deliveries.py` writes the same shop (`Shop`) the way real exports look instead.

`drift_from` changes behaviour from that date on (fewer opens, larger baskets, more mobile and
later hours, more browsing, bargain hunters buying less), so drift checks have something real to
find; before that date the output is identical to a run without drift.

`ml/synthetic/increments.py` adds the last few hours of the same kind of behaviour to an
existing landing folder.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.progress import Progress

log = logging.getLogger(__name__)

DAY_US = 86_400 * 1_000_000
HOUR_US = 3_600 * 1_000_000
EPOCH = dt.date(1970, 1, 1)
UTC_MICROS = pa.timestamp("us", tz="UTC")

CATEGORIES = np.array(
    ["apparel", "shoes", "beauty", "home", "electronics", "sports", "toys", "books"], dtype=object
)
DEVICES = np.array(["desktop", "mobile", "tablet", "other"], dtype=object)
COUNTRIES = np.array(["DE", "FR", "GB", "NL", "ES", "IT", "US", "PL", "SE", "AT"], dtype=object)
COUNTRY_WEIGHTS = np.array([0.24, 0.14, 0.14, 0.08, 0.09, 0.09, 0.08, 0.06, 0.04, 0.04])
CHANNELS = np.array(
    ["organic", "paid_search", "social", "referral", "email", "affiliate"], dtype=object
)
CHANNEL_WEIGHTS = np.array([0.32, 0.24, 0.18, 0.1, 0.08, 0.08])
GENDERS = np.array(["female", "male", "diverse", None], dtype=object)
GENDER_WEIGHTS = np.array([0.48, 0.44, 0.02, 0.06])

POSITIVE = np.array(
    [
        "love it",
        "great quality",
        "fast delivery",
        "exactly as described",
        "excellent value",
        "will buy again",
        "perfect fit",
        "highly recommend",
        "beautiful and well made",
        "super happy with this",
    ],
    dtype=object,
)
NEUTRAL = np.array(
    [
        "okay for the price",
        "arrived on time",
        "does the job",
        "average quality",
        "as expected",
        "nothing special",
    ],
    dtype=object,
)
NEGATIVE = np.array(
    [
        "broke after a week",
        "poor quality",
        "late delivery",
        "not as described",
        "waste of money",
        "customer service never answered",
        "returned it",
        "very disappointed",
    ],
    dtype=object,
)


@dataclass(frozen=True)
class CustomerType:
    name: str
    share: float
    orders_per_year: float
    order_value: float
    open_rate: float
    click_given_open: float
    sessions_per_year: float
    cart_rate: float
    device_weights: tuple[float, float, float, float]
    hour: float
    churn_per_year: float
    after_churn: float
    """How much of the buying rate is left after churn."""
    sale_sensitivity: float
    unsubscribe_rate: float
    review_rate: float
    rating: float
    birth_year: float


# fmt: off
TYPES = (
    # name                  share orders/yr value  open  click sessions cart  devices (desktop, mobile, tablet, other)  hour churn/yr after_churn sale  unsubscribe review rating born
    CustomerType("loyal_high_spender", 0.10, 24, 140, 0.55, 0.35, 22, 0.35, (0.6, 0.3, 0.1, 0.0),     20, 0.05, 0.2,  0.2, 0.001, 0.12, 4.5, 1976),
    CustomerType("bargain_hunter",     0.20,  9,  35, 0.32, 0.30, 16, 0.45, (0.2, 0.72, 0.06, 0.02),  8, 0.15, 0.15, 1.6, 0.003, 0.05, 3.8, 1992),
    CustomerType("regular",            0.20,  6,  70, 0.22, 0.20,  9, 0.3,  (0.5, 0.42, 0.08, 0.0),   13, 0.15, 0.15, 0.5, 0.002, 0.06, 4.1, 1983),
    CustomerType("engaged_browser",    0.15, 1.5, 60, 0.60, 0.45, 28, 0.55, (0.25, 0.65, 0.08, 0.02), 12, 0.1,  0.3,  0.6, 0.001, 0.05, 4.0, 1995),
    CustomerType("lapsing",            0.15, 10,  65, 0.30, 0.20,  9, 0.3,  (0.45, 0.47, 0.08, 0.0),  18, 0.0,  0.08, 0.5, 0.006, 0.07, 3.2, 1981),
    CustomerType("dormant",            0.20,  4,  55, 0.10, 0.10,  4, 0.25, (0.45, 0.45, 0.1, 0.0),   21, 0.0,  0.03, 0.3, 0.008, 0.04, 3.0, 1979),
)
# fmt: on
TYPE_NAMES = np.array([t.name for t in TYPES], dtype=object)
WEEKDAY_FACTOR = np.array([0.95, 0.92, 0.95, 1.0, 1.03, 1.05, 1.1])  # Monday .. Sunday
CAMPAIGN_WEEKDAYS = (1, 4)  # Tuesday and Friday
CAMPAIGN_REACH = 0.45
"""Share of e-mailable customers each campaign goes to (campaigns target sub-audiences)."""
ENTITY_NAMES = ("customers", "orders", "email_events", "web_events", "reviews")
HARD_BOUNCE_SHARE = 0.015
INVALID_ADDRESS_SHARE = 0.004


@dataclass(frozen=True)
class GenerationReport:
    customers: int
    rows: dict[str, int]
    first_day: dt.date
    last_day: dt.date


def _season(day: dt.date) -> tuple[float, float]:
    """(general demand factor, extra factor for sale-sensitive customers) on a day."""
    doy = day.timetuple().tm_yday
    black_friday = np.exp(-(((doy - 331) / 6.0) ** 2))
    christmas = np.exp(-(((doy - 352) / 9.0) ** 2))
    january_sale = np.exp(-(((doy - 10) / 8.0) ** 2))
    summer_dip = np.exp(-(((doy - 210) / 25.0) ** 2))
    general = 1.0 + 0.9 * black_friday + 0.6 * christmas - 0.2 * summer_dip
    sale = 1.2 * black_friday + 0.9 * january_sale
    return general, sale


def numbered_ids(prefix: str, start: int, count: int, width: int) -> pa.Array:
    """`count` ids `<prefix><number>`, numbered from `start` and zero-padded to `width`."""
    numbers = pc.cast(pa.array(np.arange(start, start + count, dtype=np.int64)), pa.string())
    return pc.binary_join_element_wise(prefix, pc.utf8_lpad(numbers, width, "0"), "")


def utc_timestamps(micros: np.ndarray) -> pa.Array:
    """Microseconds since the epoch as UTC timestamps."""
    return pa.array(micros.astype(np.int64), type=pa.int64()).cast(UTC_MICROS)


def _hour_micros(rng: np.random.Generator, hour: np.ndarray, spread: float) -> np.ndarray:
    """Microseconds into the day around each row's preferred hour."""
    hours = np.mod(np.rint(hour + rng.normal(0.0, spread, hour.size)), 24)
    return (hours * HOUR_US + rng.integers(0, HOUR_US, hour.size)).astype(np.int64)


class _DayBuckets:
    """Rows per entity and day, held until the walk has passed the day."""

    def __init__(self, first_day: dt.date, days: int):
        self.days = days
        self.pending: dict[tuple[str, int], list[pa.Table]] = defaultdict(list)
        self.first_us = (first_day - EPOCH).days * DAY_US

    def add(self, entity: str, table: pa.Table, time_column: str, micros: np.ndarray) -> None:
        day_index = (micros - self.first_us) // DAY_US
        if table.num_rows == 0:
            return
        for index in np.unique(day_index):
            if index >= self.days:
                continue  # happens after the end date: not exported yet
            self.pending[(entity, int(index))].append(table.filter(pa.array(day_index == index)))

    def take(self, day_index: int) -> dict[str, pa.Table]:
        """A passed day's rows, by entity (only the entities it has rows of)."""
        return {
            entity: pa.concat_tables(self.pending.pop((entity, day_index)))
            for entity in ENTITY_NAMES
            if (entity, day_index) in self.pending
        }


class _Population:
    """Per-customer latent state, drawn once."""

    def __init__(self, rng: np.random.Generator, n: int, first_day: dt.date, days: int):
        self.n = n
        shares = np.array([t.share for t in TYPES])
        self.type = rng.choice(len(TYPES), size=n, p=shares / shares.sum())
        param = lambda attr: np.array([getattr(t, attr) for t in TYPES])[self.type]  # noqa: E731

        first = (first_day - EPOCH).days
        # 60% of customers signed up before the window (up to 3 years), the rest during it,
        # with growth towards the end.
        existing = rng.random(n) < 0.6
        during = first + np.floor(days * np.sqrt(rng.random(n))).astype(np.int64)
        before = first - 1 - rng.integers(0, 3 * 365, n)
        self.signup_day = np.where(existing, before, during)
        self.signup_us = self.signup_day * DAY_US + rng.integers(0, DAY_US, n)

        self.order_rate = param("orders_per_year") / 365.0 * rng.gamma(2.0, 0.5, n)
        self.order_value = param("order_value") * rng.lognormal(0.0, 0.3, n)
        self.open_p = np.clip(param("open_rate") * rng.lognormal(0.0, 0.45, n), 0.0, 0.95)
        self.click_p = np.clip(param("click_given_open") * rng.lognormal(0.0, 0.4, n), 0.0, 0.9)
        self.session_rate = param("sessions_per_year") / 365.0 * rng.gamma(2.0, 0.5, n)
        self.cart_p = np.clip(param("cart_rate") * rng.lognormal(0.0, 0.3, n), 0.0, 0.95)
        self.sale_sensitivity = param("sale_sensitivity")
        self.unsubscribe_p = param("unsubscribe_rate")
        self.review_p = param("review_rate")
        self.rating = param("rating")
        self.after_churn = param("after_churn")
        self.hour = np.mod(param("hour") + rng.normal(0.0, 2.0, n), 24)
        weights = np.array([t.device_weights for t in TYPES])[self.type]
        self.device = (rng.random((n, 1)) > np.cumsum(weights, axis=1)).sum(axis=1).clip(0, 3)
        self.category = rng.integers(0, len(CATEGORIES), n)
        # Drawn always, used only after a drift date, so the random stream does not depend on it.
        self.drift_device = np.where(rng.random(n) < 0.5, 1, self.device)

        # Churn: lapsing customers stop during the window, dormant ones mostly before it;
        # the others churn at a small yearly hazard.
        churn_after = rng.exponential(365.0 / np.maximum(param("churn_per_year"), 1e-9))
        lapsing = TYPE_NAMES[self.type] == "lapsing"
        dormant = TYPE_NAMES[self.type] == "dormant"
        churn_after = np.where(lapsing, 60 + rng.integers(0, days + 120, n), churn_after)
        churn_after = np.where(dormant, rng.integers(20, 300, n), churn_after)
        self.churn_day = self.signup_day + churn_after.astype(np.int64)

        self.has_bad_address = rng.random(n) < HARD_BOUNCE_SHARE
        opt_in_draw = rng.random(n)
        self.opt_in = np.where(opt_in_draw < 0.07, False, True)
        self.opt_in_missing = opt_in_draw > 0.95
        self.invalid_address = rng.random(n) < INVALID_ADDRESS_SHARE
        self.birth_year = np.rint(param("birth_year") + rng.normal(0, 11, n)).clip(1935, 2008)
        self.birth_year_missing = rng.random(n) < 0.08
        self.country = rng.choice(len(COUNTRIES), size=n, p=COUNTRY_WEIGHTS)
        self.gender = rng.choice(len(GENDERS), size=n, p=GENDER_WEIGHTS)
        self.channel = rng.choice(len(CHANNELS), size=n, p=CHANNEL_WEIGHTS)
        self.unsubscribed = np.zeros(n, dtype=bool)
        self.bounced = np.zeros(n, dtype=bool)
        self.ids = numbered_ids("C", 1, n, 7)

    def customers_table(self) -> pa.Table:
        n = self.n
        numbers = np.arange(1, n + 1)
        emails = np.char.add(np.char.add("customer", numbers.astype(str)), "@example.com").astype(
            object
        )
        emails[self.invalid_address] = "not-an-address"
        birth = pa.array(self.birth_year.astype(np.int64), mask=self.birth_year_missing)
        opt_in = pa.array(self.opt_in, mask=self.opt_in_missing)
        return pa.table(
            {
                "customer_id": self.ids,
                "email": pa.array(emails, type=pa.string()),
                "signup_at": utc_timestamps(self.signup_us),
                "country": pa.array(COUNTRIES[self.country], type=pa.string()),
                "birth_year": birth,
                "gender": pa.array(GENDERS[self.gender], type=pa.string()),
                "acquisition_channel": pa.array(CHANNELS[self.channel], type=pa.string()),
                "email_opt_in": opt_in,
            }
        )


class Shop:
    """The simulated shop: its customers, drawn at once, and their events one day at a time.
    `generate` writes it as the demo's Parquet partitions, `ml.synthetic.deliveries` as real exports."""

    def __init__(
        self,
        customers: int,
        days: int,
        end_date: dt.date,
        seed: int = 7,
        drift_from: dt.date | None = None,
    ):
        if customers < 1 or days < 1:
            raise ValueError("customers and days must be at least 1")
        self.days, self.drift_from = days, drift_from
        self.first_day = end_date - dt.timedelta(days=days - 1)
        self.rng = np.random.default_rng(seed)
        self.people = _Population(self.rng, customers, self.first_day, days)
        self.buckets = _DayBuckets(self.first_day, days)
        self.counters: dict[str, int] = defaultdict(int)

    def walk(self, progress: bool = True) -> Iterator[tuple[int, dict[str, pa.Table]]]:
        """Each day's index and its rows by entity, once no later day can add to them."""
        first = (self.first_day - EPOCH).days
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(f"generating {self.people.n:,} customers", total=self.days)
            for index in range(self.days):
                day = self.first_day + dt.timedelta(days=index)
                drifted = self.drift_from is not None and day >= self.drift_from
                _simulate_day(
                    self.rng, self.people, self.buckets, self.counters, day, first + index, drifted
                )
                yield index, self.buckets.take(index)
                bar.advance(task)


def generate(
    out: Path,
    customers: int,
    days: int,
    end_date: dt.date,
    seed: int = 7,
    drift_from: dt.date | None = None,
    progress: bool = True,
) -> GenerationReport:
    """Write the five contract entities for `customers` over the `days` ending on `end_date`."""
    shop = Shop(customers, days, end_date, seed, drift_from)
    people, first_us = shop.people, (shop.first_day - EPOCH).days * DAY_US
    # Customers who signed up before the window arrive in the first day's export.
    shop.buckets.add(
        "customers", people.customers_table(), "signup_at", np.maximum(people.signup_us, first_us)
    )
    rows: dict[str, int] = defaultdict(int)
    for index, tables in shop.walk(progress):
        day = shop.first_day + dt.timedelta(days=index)
        for entity, table in tables.items():
            folder = out / entity / f"date={day.isoformat()}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, folder / "part-0.parquet", compression="zstd")
            rows[entity] += table.num_rows
    return GenerationReport(customers, dict(rows), shop.first_day, end_date)


def _simulate_day(
    rng: np.random.Generator,
    people: _Population,
    buckets: _DayBuckets,
    counters: dict[str, int],
    day: dt.date,
    day_number: int,
    drifted: bool,
) -> None:
    day_us = day_number * DAY_US
    general, sale = _season(day)
    weekday = WEEKDAY_FACTOR[day.weekday()]
    signed_up = people.signup_day <= day_number
    churned = day_number >= people.churn_day
    onboarding = 1.0 + 1.5 * ((day_number - people.signup_day) < 30)
    life = np.where(churned, people.after_churn, 1.0) * onboarding * signed_up

    order_rate = people.order_rate * (general + people.sale_sensitivity * sale) * weekday * life
    order_value = people.order_value
    open_p, session_rate, hour, device = (
        people.open_p,
        people.session_rate,
        people.hour,
        people.device,
    )
    if drifted:
        bargain = TYPE_NAMES[people.type] == "bargain_hunter"
        order_rate = order_rate * np.where(bargain, 0.3, 1.0)
        order_value = order_value * 1.6
        open_p = open_p * 0.35
        session_rate = session_rate * 2.5
        hour = np.mod(hour + 3.0, 24)
        device = people.drift_device
    open_p = open_p * np.where(churned, 0.35, 1.0)

    orders_per_customer = rng.poisson(order_rate)
    buyer = np.repeat(np.arange(people.n), orders_per_customer)
    order_us = day_us + _hour_micros(rng, hour[buyer], 2.5)
    order_us = np.maximum(order_us, people.signup_us[buyer] + 60_000_000)
    _orders(rng, people, buckets, counters, buyer, order_us, order_value)
    _web_sessions(
        rng,
        people,
        buckets,
        counters,
        day_us,
        session_rate * weekday * life,
        hour,
        device,
        buyer,
        order_us,
    )
    if day.weekday() in CAMPAIGN_WEEKDAYS:
        _campaign(
            rng, people, buckets, counters, day, day_us, signed_up, churned, open_p, hour, device
        )


def _orders(rng, people, buckets, counters, buyer, order_us, order_value) -> None:
    n = buyer.size
    amount = np.round(order_value[buyer] * rng.lognormal(0.0, 0.35, n), 2)
    items = 1 + rng.poisson(np.maximum(amount / 60.0 - 0.5, 0.05))
    category = np.where(
        rng.random(n) < 0.65, people.category[buyer], rng.integers(0, len(CATEGORIES), n)
    )
    status = np.select(
        [rng.random(n) < 0.04, rng.random(n) < 0.04], ["cancelled", "refunded"], "completed"
    )
    table = pa.table(
        {
            "order_id": numbered_ids("O", counters["orders"] + 1, n, 10),
            "customer_id": people.ids.take(pa.array(buyer)),
            "ordered_at": utc_timestamps(order_us),
            "amount": pa.array(amount).cast(pa.decimal128(12, 2)),
            "items": pa.array(items.astype(np.int64)),
            "category": pa.array(CATEGORIES[category], type=pa.string()),
            "status": pa.array(status.astype(object), type=pa.string()),
        }
    )
    counters["orders"] += n
    buckets.add("orders", table, "ordered_at", order_us)
    _reviews(
        rng,
        people,
        buckets,
        counters,
        buyer[status == "completed"],
        order_us[status == "completed"],
    )


def _reviews(rng, people, buckets, counters, buyer, order_us) -> None:
    writes = rng.random(buyer.size) < people.review_p[buyer]
    who, when = (
        buyer[writes],
        order_us[writes] + rng.integers(2 * DAY_US, 20 * DAY_US, writes.sum()),
    )
    n = who.size
    rating = np.clip(np.rint(rng.normal(people.rating[who], 0.9)), 1, 5).astype(np.int64)
    first = np.where(
        rating >= 4,
        POSITIVE[rng.integers(0, POSITIVE.size, n)],
        np.where(
            rating == 3,
            NEUTRAL[rng.integers(0, NEUTRAL.size, n)],
            NEGATIVE[rng.integers(0, NEGATIVE.size, n)],
        ),
    )
    second = np.where(
        rating >= 4,
        POSITIVE[rng.integers(0, POSITIVE.size, n)],
        NEGATIVE[rng.integers(0, NEGATIVE.size, n)],
    )
    text = np.where(
        rng.random(n) < 0.5,
        first,
        np.char.add(np.char.add(first.astype(str), ", "), second.astype(str)).astype(object),
    )
    text = np.where(rng.random(n) < 0.15, None, text)
    table = pa.table(
        {
            "review_id": numbered_ids("R", counters["reviews"] + 1, n, 9),
            "customer_id": people.ids.take(pa.array(who)),
            "created_at": utc_timestamps(when),
            "rating": pa.array(rating),
            "text": pa.array(text, type=pa.string()),
        }
    )
    counters["reviews"] += n
    buckets.add("reviews", table, "created_at", when)


def _device_column(rng, device: np.ndarray) -> pa.Array:
    """Each row's device: the customer's own most of the time."""
    own = rng.random(device.size) < 0.8
    return pa.array(
        DEVICES[np.where(own, device, rng.integers(0, 3, device.size))], type=pa.string()
    )


def _web_sessions(
    rng, people, buckets, counters, day_us, session_rate, hour, device, buyer, order_us
) -> None:
    browsing = np.repeat(np.arange(people.n), rng.poisson(session_rate))
    # Most orders come with a checkout session that ends just before them.
    checkout = rng.random(buyer.size) < 0.8
    session_customer = np.concatenate([browsing, buyer[checkout]])
    is_checkout = np.concatenate([np.zeros(browsing.size, bool), np.ones(checkout.sum(), bool)])
    s = session_customer.size
    page_views = 1 + rng.poisson(1.2, s)
    product_views = rng.poisson(np.where(is_checkout, 1.5, 1.0), s)
    searches = (rng.random(s) < 0.3).astype(np.int64)
    carts = (is_checkout | (rng.random(s) < people.cart_p[session_customer] * 0.5)).astype(np.int64)
    kinds = np.array(
        ["page_view", "product_view", "search", "add_to_cart", "checkout"], dtype=object
    )
    # Events of a session come in this order, so a checkout is its session's last event.
    per_kind = np.stack(
        [page_views, product_views, searches, carts, is_checkout.astype(np.int64)], axis=1
    )
    events_per_session = per_kind.sum(axis=1)
    session_of_event = np.repeat(np.arange(s), events_per_session)
    kind_of_event = np.repeat(np.tile(np.arange(5), s), per_kind.ravel())
    # Events within a session follow each other by 10 s to 3 min.
    gaps = rng.integers(10, 180, session_of_event.size) * 1_000_000
    offset = offsets_within(gaps, events_per_session)
    duration = np.zeros(s, dtype=np.int64)
    np.maximum.at(duration, session_of_event, offset)
    start = np.concatenate(
        [
            day_us + _hour_micros(rng, hour[browsing], 3.0),
            order_us[checkout] - duration[browsing.size :] - 30_000_000,
        ]
    )
    event_us = start[session_of_event] + offset
    session_device = _device_column(rng, device[session_customer])
    customer = session_customer[session_of_event]
    category = np.where(
        rng.random(customer.size) < 0.6,
        people.category[customer],
        rng.integers(0, len(CATEGORIES), customer.size),
    )
    session_ids = numbered_ids("S", counters["sessions"] + 1, s, 10)
    table = pa.table(
        {
            "event_id": numbered_ids("W", counters["web_events"] + 1, customer.size, 11),
            "customer_id": people.ids.take(pa.array(customer)),
            "session_id": session_ids.take(pa.array(session_of_event)),
            "event_type": pa.array(kinds[kind_of_event], type=pa.string()),
            "occurred_at": utc_timestamps(event_us),
            "device": session_device.take(pa.array(session_of_event)),
            "category": pa.array(
                np.where(np.isin(kind_of_event, (1, 3, 4)), CATEGORIES[category], None),
                type=pa.string(),
            ),
        }
    )
    counters["sessions"] += s
    counters["web_events"] += customer.size
    buckets.add("web_events", table, "occurred_at", event_us)


def offsets_within(gaps: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Running sum of `gaps` restarting at each group of `lengths` rows, starting at 0."""
    if gaps.size == 0:
        return gaps
    running = np.cumsum(gaps)
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    return running - np.repeat(running[starts], lengths)


def _campaign(
    rng, people, buckets, counters, day, day_us, signed_up, churned, open_p, hour, device
) -> None:
    reachable = (
        signed_up & people.opt_in & ~people.unsubscribed & ~people.bounced & ~people.invalid_address
    )
    reached = np.flatnonzero(reachable & (rng.random(people.n) < CAMPAIGN_REACH))
    campaign_id = f"CMP-{day:%Y%m%d}-{'A' if day.weekday() == CAMPAIGN_WEEKDAYS[0] else 'B'}"
    sent_us = day_us + 10 * HOUR_US + rng.integers(0, HOUR_US, reached.size)
    bounces = people.has_bad_address[reached]
    delivered = reached[~bounces]
    opened_mask = rng.random(delivered.size) < open_p[delivered]
    opened = delivered[opened_mask]
    # An open happens at the customer's usual hour, today if that is after the send, else tomorrow.
    open_in_day = _hour_micros(rng, hour[opened], 1.5)
    open_us = day_us + open_in_day + np.where(open_in_day < 11 * HOUR_US, DAY_US, 0)
    open_us = np.maximum(open_us, sent_us[~bounces][opened_mask] + 60_000_000)
    clicked_mask = rng.random(opened.size) < people.click_p[opened]
    clicked, click_us = (
        opened[clicked_mask],
        open_us[clicked_mask] + rng.integers(5, 600, clicked_mask.sum()) * 1_000_000,
    )
    unsubscribing_mask = rng.random(delivered.size) < people.unsubscribe_p[delivered] * np.where(
        churned[delivered], 3.0, 1.0
    )
    unsubscribing = delivered[unsubscribing_mask]
    complaining = delivered[rng.random(delivered.size) < 0.0002]
    people.unsubscribed[unsubscribing] = True
    people.unsubscribed[complaining] = True
    people.bounced[reached[bounces]] = True

    delivered_us = sent_us[~bounces] + rng.integers(1, 120, delivered.size) * 1_000_000
    groups = [
        ("sent", reached, sent_us),
        ("delivered", delivered, delivered_us),
        ("bounce", reached[bounces], sent_us[bounces] + 30_000_000),
        ("open", opened, open_us),
        ("click", clicked, click_us),
        ("unsubscribe", unsubscribing, delivered_us[unsubscribing_mask] + HOUR_US),
        ("complaint", complaining, day_us + 14 * HOUR_US + np.zeros(complaining.size, np.int64)),
    ]
    customer = np.concatenate([g[1] for g in groups])
    when = np.concatenate([g[2] for g in groups]).astype(np.int64)
    kind = np.repeat(np.array([g[0] for g in groups], dtype=object), [g[1].size for g in groups])
    # Sends and deliveries have no device; opens and clicks carry the reader's device.
    device_values = _device_column(rng, device[customer]).to_numpy(zero_copy_only=False)
    device_values = np.where(np.isin(kind, ("open", "click")), device_values, None)
    n = customer.size
    table = pa.table(
        {
            "event_id": numbered_ids("E", counters["email_events"] + 1, n, 12),
            "customer_id": people.ids.take(pa.array(customer)),
            "campaign_id": pa.array(np.full(n, campaign_id, dtype=object), type=pa.string()),
            "event_type": pa.array(kind, type=pa.string()),
            "occurred_at": utc_timestamps(when),
            "device": pa.array(device_values, type=pa.string()),
        }
    )
    counters["email_events"] += n
    buckets.add("email_events", table, "occurred_at", when)
