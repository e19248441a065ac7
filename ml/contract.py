"""The data contract (shared/data-contract.md) as data: entities, columns, types and rules.

The loader enforces exactly what is declared here, and the README's contract table is written
from the same facts, so there is one definition of what a user must bring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

LANDING_SUFFIXES = {".csv": "csv", ".parquet": "parquet"}
"""The file formats of the landing zone, by suffix (any case)."""


def landing_format(name: str) -> str | None:
    """The format of a landing file by its name, or None when it is not one: hidden and
    underscore names are writers' temporaries or markers (_SUCCESS), never data."""
    if name.startswith((".", "_")):
        return None
    return LANDING_SUFFIXES.get(Path(name).suffix.lower())


# Warehouse types of the contract's logical types.
SQL_TYPES = {
    "string": "VARCHAR",
    "timestamp": "TIMESTAMP",  # naive, always UTC inside the warehouse
    "decimal": "DECIMAL(18, 2)",
    "integer": "BIGINT",
    "boolean": "BOOLEAN",
}


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    required: bool = False
    """The column must be present in every file and the value must not be empty."""
    accepted: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    maximum_is_current_year: bool = False
    pattern: str | None = None
    """A regular expression the (trimmed) value must match."""
    pattern_rule: str = ""
    not_in_future: bool = False
    reject_row: bool | None = None
    """What a broken rule does: reject the row into quarantine, or (False) keep the row with
    this value set to null. Default: reject when the column is required."""

    @property
    def rejects_row(self) -> bool:
        return self.required if self.reject_row is None else self.reject_row

    @property
    def sql_type(self) -> str:
        return SQL_TYPES[self.type]


@dataclass(frozen=True)
class Entity:
    name: str
    required: bool
    columns: tuple[Column, ...]
    key: str
    references_customers: bool = True
    present_columns: tuple[str, ...] = field(default=())
    """Columns whose header must be present even though their values may be empty."""

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def must_have(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required) + self.present_columns


EMAIL_EVENT_TYPES = ("sent", "delivered", "open", "click", "bounce", "unsubscribe", "complaint")
WEB_EVENT_TYPES = ("page_view", "product_view", "add_to_cart", "checkout", "search")
ORDER_STATUSES = ("completed", "cancelled", "refunded")
EMAIL_DEVICES = ("desktop", "mobile", "tablet", "other")

CUSTOMERS = Entity(
    name="customers",
    required=True,
    key="customer_id",
    references_customers=False,
    # An address may be missing (the customer is then not e-mailable), but the column may not.
    present_columns=("email",),
    columns=(
        Column("customer_id", "string", required=True),
        Column("email", "string"),
        Column("signup_at", "timestamp", required=True, not_in_future=True),
        Column("country", "string", pattern=r"^[A-Za-z]{2}$", pattern_rule="ISO-3166 alpha-2"),
        Column("birth_year", "integer", minimum=1900, maximum_is_current_year=True),
        Column("gender", "string"),
        Column("acquisition_channel", "string"),
        Column("email_opt_in", "boolean"),
    ),
)

ORDERS = Entity(
    name="orders",
    required=True,
    key="order_id",
    columns=(
        Column("order_id", "string", required=True),
        Column("customer_id", "string", required=True),
        Column("ordered_at", "timestamp", required=True, not_in_future=True),
        Column("amount", "decimal", required=True, minimum=0),
        Column("items", "integer", minimum=1),
        Column("category", "string"),
        Column("status", "string", accepted=ORDER_STATUSES, reject_row=True),
    ),
)

EMAIL_EVENTS = Entity(
    name="email_events",
    required=False,
    key="event_id",
    columns=(
        Column("event_id", "string", required=True),
        Column("customer_id", "string", required=True),
        Column("campaign_id", "string", required=True),
        Column("event_type", "string", required=True, accepted=EMAIL_EVENT_TYPES),
        Column("occurred_at", "timestamp", required=True, not_in_future=True),
        Column("device", "string", accepted=EMAIL_DEVICES),
    ),
)

WEB_EVENTS = Entity(
    name="web_events",
    required=False,
    key="event_id",
    columns=(
        Column("event_id", "string", required=True),
        Column("customer_id", "string", required=True),
        Column("session_id", "string", required=True),
        Column("event_type", "string", required=True, accepted=WEB_EVENT_TYPES),
        Column("occurred_at", "timestamp", required=True, not_in_future=True),
        Column("device", "string"),
        Column("category", "string"),
    ),
)

REVIEWS = Entity(
    name="reviews",
    required=False,
    key="review_id",
    columns=(
        Column("review_id", "string", required=True),
        Column("customer_id", "string", required=True),
        Column("created_at", "timestamp", required=True, not_in_future=True),
        Column("rating", "integer", minimum=1, maximum=5, reject_row=True),
        Column("text", "string"),
    ),
)

# An unknown status must not default to "completed" and count as a purchase, and a rating
# outside 1..5 says the review row is garbage: both reject the row although optional.

# Load order matters: customers first, so that references to them can be checked.
ENTITIES: tuple[Entity, ...] = (CUSTOMERS, ORDERS, EMAIL_EVENTS, WEB_EVENTS, REVIEWS)
ENTITY_BY_NAME = {e.name: e for e in ENTITIES}
