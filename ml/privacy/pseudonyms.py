"""Keyed pseudonyms: a customer's stand-in where a key is needed but the person is not.

Training sets, drift references and the record of forgotten customers hold
`pseudonym(customer id)` instead of the id, and the hashes of forgotten addresses instead of
the addresses. Without the key nobody can tell whose row it is or test a guessed address
against a hash; with it segflow can recognise a forgotten customer whose landing rows are
delivered again.

The pseudonym is a nested keyed SHA-256, H(outer || H(inner || kind:value)), with inner and
outer derived from the key (the construction of HMAC, in a form DuckDB's `sha256` computes
too, so a million rows are pseudonymised inside a query). Python and SQL give the same value.
The key comes from SEGFLOW_PSEUDONYM_KEY, or is generated once into
`<data dir>/keys/pseudonym.key` (owner-only). A lost key only means new pseudonyms: training
sets are rebuilt on every training run.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ml.config import Settings

KEY_FILE = "pseudonym.key"
HEX_DIGITS = 32
"""128 bits: no two of a shop's customers share a pseudonym."""

CUSTOMER_ID = "customer_id"
EMAIL = "email"


@dataclass(frozen=True)
class PseudonymKey:
    inner: str
    outer: str

    def of(self, kind: str, value: str) -> str:
        """The pseudonym of `value` (a customer id, or an address) of `kind`."""
        text = f"{kind}:{normalised(kind, value)}"
        inner = hashlib.sha256((self.inner + text).encode()).hexdigest()
        return hashlib.sha256((self.outer + inner).encode()).hexdigest()[:HEX_DIGITS]

    def install(self, con: duckdb.DuckDBPyConnection) -> None:
        """Make `pseudonym_sql` usable on `con`. The derived keys travel as variables, never
        in query text, so no DuckDB error message can show them."""
        con.execute("SET VARIABLE segflow_pseudonym_inner = ?", [self.inner])
        con.execute("SET VARIABLE segflow_pseudonym_outer = ?", [self.outer])


def normalised(kind: str, value: str) -> str:
    """Ids compare as delivered without surrounding blanks; addresses case-insensitively."""
    value = value.strip()
    return value.lower() if kind == EMAIL else value


def pseudonym_sql(kind: str, expression: str) -> str:
    """SQL for the pseudonym of `expression` (after `PseudonymKey.install` on the connection);
    null stays null."""
    value = f"trim(CAST({expression} AS VARCHAR))"
    if kind == EMAIL:
        value = f"lower({value})"
    inner = f"sha256(getvariable('segflow_pseudonym_inner') || '{kind}:' || {value})"
    return f"substr(sha256(getvariable('segflow_pseudonym_outer') || {inner}), 1, {HEX_DIGITS})"


def pseudonym_key(settings: Settings) -> PseudonymKey:
    """The shop's key: SEGFLOW_PSEUDONYM_KEY, else the generated key file (created on first
    use, readable by its owner only)."""
    secret = settings.pseudonym_key or _key_from_file(settings.keys_dir / KEY_FILE)
    return PseudonymKey(
        inner=hashlib.sha256(f"inner:{secret}".encode()).hexdigest(),
        outer=hashlib.sha256(f"outer:{secret}".encode()).hexdigest(),
    )


def _key_from_file(path: Path) -> str:
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        written = path.with_name(f".{path.name}.{os.getpid()}")
        descriptor = os.open(written, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        try:
            # A link fails if the name exists: two processes starting together agree on the
            # first complete key, and nobody reads half a file.
            os.link(written, path)
        except FileExistsError:
            pass
        finally:
            written.unlink()
    secret = path.read_text().strip()
    if not secret:
        raise ValueError(f"{path} is empty: delete it to generate a new pseudonym key")
    return secret
