"""Removing forgotten customers from files: exports, training sets, reports, landing files.

A file is rewritten only when it holds one of the identities, under a hidden temporary name
renamed over the original, so a reader sees the old file or the new one, never half of one.
What is removed depends on the kind of file:
- CSV (audience and trigger exports, shop CSV/TSV): the records whose field equals an identity;
  every other line is kept byte for byte, and a `manifest.json` next to it gets the new row
  count and sha256 of the file and an `erasures` entry saying when and how many rows went.
- JSON lines and Parquet (landing files, training sets, drift references): the records with a
  value equal to an identity (or, in training sets, to its pseudonym).
- Other text (reports, Data Docs, failure records): the identity is replaced by `[erased]`.
- Anything else (MLflow's SQLite store, model files) is only searched: a hit is reported.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ml.checksums import file_sha256

ERASED = "[erased]"
# Characters that may belong to an id or an address: an identity found inside a longer run of
# them is another value (customer3@x.com inside acustomer3@x.com), not the identity.
NAME_CHARACTERS = r"A-Za-z0-9_.+\-@"


@dataclass(frozen=True)
class Identities:
    """Who is forgotten: their ids, their addresses (lower case) and the pseudonyms of the ids
    (training sets hold those)."""

    customer_ids: frozenset[str]
    emails: frozenset[str]
    pseudonyms: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.customer_ids or self.emails)

    def matches(self, value: object) -> bool:
        """Whether a field's value is one of the identities."""
        if not isinstance(value, str):
            return False
        text = value.strip()
        return text in self.customer_ids or text.lower() in self.emails or text in self.pseudonyms

    def alternatives(self) -> str:
        """The ids and addresses as regular-expression alternatives, longest first."""
        names = sorted((*self.customer_ids, *self.emails), key=len, reverse=True)
        return "|".join(re.escape(name) for name in names)

    def pattern(self) -> re.Pattern[str]:
        """Finds an identity inside text, case-insensitively, but not inside a longer name."""
        return re.compile(
            f"(?<![{NAME_CHARACTERS}])(?:{self.alternatives()})(?![{NAME_CHARACTERS}])",
            re.IGNORECASE,
        )


def _replace(path: Path, write: Callable[[io.BufferedWriter], None], keep_mtime: bool) -> None:
    """Write a new version of `path` beside it and rename it over the original, with the same
    permissions (and, for landing files, the same modification time)."""
    stat = path.stat()
    temporary = path.with_name(f".{path.name}.erasing")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.st_mode & 0o777)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
        if keep_mtime:
            os.utime(temporary, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _open_text(path: Path, encoding: str) -> io.TextIOWrapper:
    # The caller's with-statement closes the wrapper, and with it the file.
    raw = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")  # noqa: SIM115
    return io.TextIOWrapper(raw, encoding=encoding, newline="")


def _replace_text(path: Path, text: str, encoding: str, keep_mtime: bool) -> None:
    """`path` replaced by `text`, gzipped again when its name says so."""

    def write(handle: io.BufferedWriter) -> None:
        data = text.encode(encoding)
        if path.name.lower().endswith(".gz"):
            with gzip.GzipFile(fileobj=handle, mode="wb", mtime=0) as compressed:
                compressed.write(data)
        else:
            handle.write(data)

    _replace(path, write, keep_mtime)


def _mentions(path: Path, encoding: str, pattern: re.Pattern[str]) -> bool:
    with _open_text(path, encoding) as text:
        return any(pattern.search(line) for line in text)


def remove_csv_records(
    path: Path, identities: Identities, encoding: str = "utf-8", keep_mtime: bool = False
) -> int:
    """Drop the records with a field equal to an identity; return how many went. Every other
    record keeps its exact text."""
    if not _mentions(path, encoding, identities.pattern()):
        return 0
    delimiter = "\t" if ".tsv" in path.name.lower() else None
    with _open_text(path, encoding) as text:
        lines = text.readlines()
    if delimiter is None:
        header = lines[0] if lines else ""
        delimiter = max((",", ";", "\t", "|"), key=header.count)
    kept: list[str] = []
    removed = 0
    position = 0
    reader = csv.reader(lines, delimiter=delimiter)
    for record in reader:
        # line_num counts the physical lines read so far: a quoted field may span several.
        text_of_record = lines[position : reader.line_num]
        position = reader.line_num
        if kept and any(identities.matches(field) for field in record):
            removed += 1
        else:
            kept.extend(text_of_record)
    if removed:
        _replace_text(path, "".join(kept), encoding, keep_mtime)
    return removed


def remove_json_lines(
    path: Path, identities: Identities, encoding: str = "utf-8", keep_mtime: bool = False
) -> int:
    """Drop the JSON lines with a top-level value equal to an identity."""
    if not _mentions(path, encoding, identities.pattern()):
        return 0
    with _open_text(path, encoding) as text:
        lines = text.readlines()
    kept: list[str] = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            kept.append(line)  # not a record: the loader reports it, erasure leaves it
            continue
        values = record.values() if isinstance(record, dict) else ()
        if not any(identities.matches(value) for value in values):
            kept.append(line)
    removed = len(lines) - len(kept)
    if removed:
        _replace_text(path, "".join(kept), encoding, keep_mtime)
    return removed


def remove_parquet_rows(path: Path, identities: Identities, keep_mtime: bool = False) -> int:
    """Drop the rows with a text value equal to an identity or its pseudonym."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    text_columns = [
        field.name
        for field in pq.read_schema(path)
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type)
    ]
    # Only the text columns are compared; the whole file is read only when it must be rewritten.
    table = pq.read_table(path, columns=text_columns)
    exact = pa.array(sorted({*identities.customer_ids, *identities.pseudonyms}), pa.string())
    lowered = pa.array(sorted(identities.emails), pa.string())
    hit = None
    for column in table.column_names:
        values = pc.utf8_trim_whitespace(table[column].cast(pa.string()))
        matched = pc.or_(
            pc.fill_null(pc.is_in(values, value_set=exact), False),
            pc.fill_null(pc.is_in(pc.utf8_lower(values), value_set=lowered), False),
        )
        hit = matched if hit is None else pc.or_(hit, matched)
    if hit is None:
        return 0
    removed = pc.sum(hit).as_py() or 0
    if removed:
        kept = pq.read_table(path).filter(pc.invert(hit))
        _replace(path, lambda handle: pq.write_table(kept, handle), keep_mtime)
    return removed


def redact_text(path: Path, identities: Identities) -> int:
    """Replace the identities in a text file by `[erased]`; return how many were replaced.
    A file that is not UTF-8 text is left alone (0)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return 0
    redacted, replaced = identities.pattern().subn(ERASED, text)
    if replaced:
        _replace(path, lambda handle: handle.write(redacted.encode("utf-8")), keep_mtime=False)
    return replaced


def holds_identity(path: Path, identities: Identities) -> bool:
    """A byte search of the file (binary files included) for any identity."""
    pattern = re.compile(identities.pattern().pattern.encode(), re.IGNORECASE)
    needles = [name.lower().encode() for name in (*identities.customer_ids, *identities.emails)]
    overlap = max(len(needle) for needle in needles) + 1
    with path.open("rb") as handle:
        tail = b""
        for block in iter(lambda: handle.read(1 << 24), b""):
            window = tail + block
            lowered = window.lower()
            # A plain find first: the regex (which knows where a name ends) is slow on
            # megabytes of binary, and most blocks hold no identity at all.
            if any(needle in lowered for needle in needles) and pattern.search(window):
                return True
            tail = block[-overlap:]
    return False


def update_manifest(folder: Path, removed: dict[str, int], erased_at: dt.datetime) -> None:
    """The manifest next to rewritten export files: their rows and sha256 as they are now, and
    an `erasures` entry (when, rows per file) so a reader knows the files changed after
    publication."""
    path = folder / "manifest.json"
    if not path.exists():
        return
    manifest = json.loads(path.read_text())

    def visit(node: object) -> None:
        if isinstance(node, dict):
            if node.get("file") in removed and "sha256" in node:
                node["rows"] = node.get("rows", 0) - removed[node["file"]]
                node["sha256"] = file_sha256(folder / node["file"])
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(manifest)
    manifest.setdefault("erasures", []).append(
        {"erased_at": erased_at.isoformat(timespec="seconds"), "rows_removed": removed}
    )
    _replace(
        path,
        lambda handle: handle.write(
            (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        ),
        keep_mtime=False,
    )


def files_under(root: Path, skip: Iterable[Path]) -> list[Path]:
    """Every regular file under `root`, except under the `skip` paths."""
    skipped = [path.resolve() for path in skip]
    found = []
    for top, folders, names in os.walk(root):
        here = Path(top).resolve()
        folders[:] = [name for name in folders if (here / name) not in skipped]
        found.extend(here / name for name in names if (here / name) not in skipped)
    return sorted(found)
