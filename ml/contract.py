"""The data contract as data: entities, columns, types and rules.

The loader enforces exactly what is declared here, and the README's contract table is written
from the same facts, so there is one definition of what a user must bring.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

VERSION_ORDER = "_version_at, _loaded_at, _source_file, _source_row"
"""The order of a customer's or order's versions: when each took effect (`updated_at` when the
export has it, else the start of its file's partition date, else its load time), then delivery
order. dbt's stg_shop__*_versions models order them the same way."""
VERSION_ORDER_DESC = "_version_at DESC, _loaded_at DESC, _source_file DESC, _source_row DESC"

_LOCAL_CHARACTERS = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_DOMAIN_LABEL = "[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
PLAIN_ADDRESS_PATTERN = (
    f"[A-Za-z0-9_][{_LOCAL_CHARACTERS}]*(\\.[{_LOCAL_CHARACTERS}]+)*"
    f"@({_DOMAIN_LABEL}\\.)+[A-Za-z]{{2,}}"
)
"""What counts as an e-mail address: a customer whose (trimmed, lower-cased) address does not
match the whole of it is not e-mailable (`invalid_address`). A plain address only:

- the local part is dot-separated runs of letters, digits and ``!#$%&'*+/=?^_`{|}~-`` (no
  quotes, spaces, brackets, commas or other characters, no leading, trailing or double dot),
  and it starts with a letter, a digit or `_`, never with `=`, `+`, `-` or `@`: an address
  that a spreadsheet would run as a formula (`=HYPERLINK("http://x")@x.com`, which the
  earlier "anything@anything.tld" check let through) is never exported;
- the domain is dot-separated labels of letters, digits and inner hyphens, ending in a top
  level domain of two or more letters (no IP literals).

It is deliberately narrower than RFC 5322: quoted local parts, IP-literal domains and
internationalised (non-ASCII) addresses are valid there but rare, handled unevenly by e-mail
tools, and cannot be told from malformed input. Consent errs on the side of the customer:
unclear means do not e-mail. This is the one definition: ml/segments/consent.py applies it in DuckDB,
and dbt's `is_valid_email` macro (the features' `has_valid_email`) reads it from
SEGFLOW_PLAIN_ADDRESS_PATTERN, which segflow sets for every dbt run (ml/features/dbt.py).
Both DuckDB (RE2) and Python's `re` read it the same way."""

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
    """Later than the load time: held while within the clock-skew tolerance, else rejected."""
    is_id: bool = False
    """An identifier: kept as text, and a number is written as an integer where it is one
    (`42`, `42.0` and the Parquet integer 42 are all `42`)."""
    synonyms: tuple[tuple[str, str], ...] = ()
    """Other tools' names for accepted values, by normalised spelling (see `spelling`)."""
    reject_row: bool | None = None
    """What a broken rule does: reject the row into quarantine, or (False) keep the row with
    this value set to null. Default: reject when the column is required."""
    personal: bool = False
    """The value identifies or describes a person (an id, an address, a birth year, free text
    a customer wrote): quarantine, quality results and Data Docs never keep it (see
    PERSONAL_COLUMNS)."""

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
    versioned: bool = False
    """A row delivered again for a known key is a new version when any value differs (raw
    keeps every version in `raw.<singular>_versions`); otherwise the entity is append-only and
    a known key with other values is rejected."""

    @property
    def table(self) -> str:
        """The raw table rows are appended to."""
        return f"{self.name.removesuffix('s')}_versions" if self.versioned else self.name

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def must_have(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required) + self.present_columns


EMAIL_EVENT_TYPES = ("sent", "delivered", "open", "click", "bounce", "unsubscribe", "complaint")
EMAIL_EVENT_SYNONYMS = {
    # SendGrid's event webhook and activity exports
    "processed": "sent",
    "dropped": "bounce",
    "spamreport": "complaint",
    "group_unsubscribe": "unsubscribe",
    # Mailchimp's webhooks and activity exports
    "send": "sent",
    "hard_bounce": "bounce",
    "cleaned": "bounce",
    "unsub": "unsubscribe",
    "abuse": "complaint",
    # Klaviyo's metrics
    "received_email": "delivered",
    "opened_email": "open",
    "clicked_email": "click",
    "bounced_email": "bounce",
    "dropped_email": "bounce",
    "unsubscribed": "unsubscribe",
    "unsubscribed_from_email_marketing": "unsubscribe",
    "marked_email_as_spam": "complaint",
    # Segment's e-mail spec and other common spellings
    "email_sent": "sent",
    "email_delivered": "delivered",
    "email_opened": "open",
    "opened": "open",
    "email_link_clicked": "click",
    "clicked": "click",
    "email_bounced": "bounce",
    "bounced": "bounce",
    "email_marked_as_spam": "complaint",
    "spam": "complaint",
    "spam_complaint": "complaint",
    "delivery": "delivered",
}
"""The e-mail tools' names for the contract's event types, by their normalised spelling
(lower case, every run of other characters an underscore: `Marked Email as Spam` is
`marked_email_as_spam`). A name the contract knows itself needs no entry. Soft bounces and
deferrals are not listed: they suppress nobody and are rejected as unknown types."""
OPT_IN_SPELLINGS = {
    **dict.fromkeys(("true", "t", "yes", "y", "1", "on", "opted_in", "opt_in", "subscribed"), True),
    **dict.fromkeys(
        (
            "false",
            "f",
            "no",
            "n",
            "0",
            "off",
            "opted_out",
            "opt_out",
            "unsubscribed",
            "not_subscribed",
            "non_subscribed",
            "cleaned",
        ),
        False,
    ),
}
"""What `email_opt_in` values mean, by their normalised spelling (as for event types). Any
other value makes the customer not e-mailable and is reported in quarantine."""
WEB_EVENT_TYPES = ("page_view", "product_view", "add_to_cart", "checkout", "search")
ORDER_STATUSES = ("completed", "cancelled", "refunded")
EMAIL_DEVICES = ("desktop", "mobile", "tablet", "other")

CUSTOMERS = Entity(
    name="customers",
    required=True,
    key="customer_id",
    references_customers=False,
    versioned=True,
    # An address may be missing (the customer is then not e-mailable), but the column may not.
    present_columns=("email",),
    columns=(
        Column("customer_id", "string", required=True, is_id=True, personal=True),
        Column("email", "string", personal=True),
        Column("signup_at", "timestamp", required=True, not_in_future=True),
        Column("country", "string", pattern=r"^[A-Za-z]{2}$", pattern_rule="ISO-3166 alpha-2"),
        Column("birth_year", "integer", minimum=1900, maximum_is_current_year=True, personal=True),
        Column("gender", "string", personal=True),
        Column("acquisition_channel", "string"),
        Column("email_opt_in", "boolean", reject_row=False),
        Column("updated_at", "timestamp"),
    ),
)

ORDERS = Entity(
    name="orders",
    required=True,
    key="order_id",
    versioned=True,
    columns=(
        Column("order_id", "string", required=True, is_id=True),
        Column("customer_id", "string", required=True, is_id=True, personal=True),
        Column("ordered_at", "timestamp", required=True, not_in_future=True),
        Column("amount", "decimal", required=True, minimum=0),
        Column("items", "integer", minimum=1),
        Column("category", "string"),
        Column("status", "string", accepted=ORDER_STATUSES, reject_row=True),
        Column("updated_at", "timestamp"),
    ),
)

EMAIL_EVENTS = Entity(
    name="email_events",
    required=False,
    key="event_id",
    columns=(
        Column("event_id", "string", required=True, is_id=True),
        Column("customer_id", "string", required=True, is_id=True, personal=True),
        Column("campaign_id", "string", required=True, is_id=True),
        Column(
            "event_type",
            "string",
            required=True,
            accepted=EMAIL_EVENT_TYPES,
            synonyms=tuple(EMAIL_EVENT_SYNONYMS.items()),
        ),
        Column("occurred_at", "timestamp", required=True, not_in_future=True),
        Column("device", "string", accepted=EMAIL_DEVICES),
    ),
)

WEB_EVENTS = Entity(
    name="web_events",
    required=False,
    key="event_id",
    columns=(
        Column("event_id", "string", required=True, is_id=True),
        Column("customer_id", "string", required=True, is_id=True, personal=True),
        Column("session_id", "string", required=True, is_id=True),
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
        Column("review_id", "string", required=True, is_id=True),
        Column("customer_id", "string", required=True, is_id=True, personal=True),
        Column("created_at", "timestamp", required=True, not_in_future=True),
        Column("rating", "integer", minimum=1, maximum=5, reject_row=True),
        Column("text", "string", personal=True),
    ),
)

# An unknown status must not default to "completed" and count as a purchase, and a rating
# outside 1..5 says the review row is garbage: both reject the row although optional.

# Load order matters: customers first, so that references to them can be checked.
ENTITIES: tuple[Entity, ...] = (CUSTOMERS, ORDERS, EMAIL_EVENTS, WEB_EVENTS, REVIEWS)
ENTITY_BY_NAME = {e.name: e for e in ENTITIES}
PERSONAL_COLUMNS = frozenset(
    {"customer_id", "email", *(c.name for e in ENTITIES for c in e.columns if c.personal)}
)
"""Names of columns whose values identify or describe a person, wherever they appear (raw
tables, features, segments, trigger members): such values are never kept as examples of a
broken rule. Records of rows are kept without them; extra columns beyond the contract are not
kept at all (their names only), since nobody can say what they hold."""


def spelling(value: str) -> str:
    """The normalised spelling of a name or value: `Order ID`, `order-id` and `ORDER_ID` are all
    `order_id`; `Marked Email as Spam` is `marked_email_as_spam`."""
    return re.sub(r"[^0-9a-z]+", "_", value.strip().lower()).strip("_")


def as_of_cutoff(as_of: dt.date) -> dt.datetime:
    """The first instant no longer "as of" the date, the start of the next day: what is computed
    as of a date sees only rows before it (dbt's `as_of_cutoff` macro)."""
    return dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time())
