"""The landing folder as the loader sees it: which files are data, how each is read, and why a
file that cannot be read is set aside whole.

- Files: `.csv`, `.tsv`, `.parquet`, `.jsonl` and `.ndjson`, the text formats also gzipped
  (`.csv.gz`). Hidden and `_`-prefixed files and folders (`_SUCCESS`, Spark's and Hadoop's
  `_temporary/`, a writer's `.part-0.tmp`), `.crc` checksums and names ending in `.tmp`,
  `.partial`, `.inprogress` or `~` are writers' markers and temporaries, never data. Any other
  file in an entity folder is reported and left alone.
- Names are read literally: a file called `orders[1].csv` or `*.csv` is that one file, never a
  pattern (it is read through a hard link with a plain name).
- A symbolic link is followed only while it stays inside the landing folder; one that leaves
  it is refused, and nothing of what it points at is read or echoed.
- A file is taken only when it has stopped changing: its size and modification time are the
  same before and after its checksum is computed, and again when its rows are committed, so the
  checksum is of the bytes loaded. A file still being written is left for a later run.
- Text files are UTF-8, with or without a byte order mark; another encoding is an error naming
  the file and the line (or set `SEGFLOW_LANDING_ENCODING`, e.g. `latin-1`, for a landing
  folder whose exports all use it). A header that names a column twice is refused.
- A file that breaks any of this is not loaded: it is recorded in `quarantine.files` with the
  reason, and the other files load (ml/ingest/loader.py).
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import gzip
import hashlib
import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ml.checksums import file_sha256
from ml.contract import ENTITIES
from ml.errors import BadFile, ContractViolation, StillChanging

log = logging.getLogger(__name__)

PARTITION_PATTERN = re.compile(r"^date=(.+)$")
FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".jsonl": "json",
    ".ndjson": "json",
}
"""The landing formats by suffix (any case); the text formats may also be gzipped (`.gz`)."""
TEMPORARY_SUFFIXES = (".crc", ".tmp", ".temp", ".partial", ".inprogress", "~")
CSV_DELIMITERS = (",", ";", "\t", "|")
ERASURE_REQUESTS = "erasure_requests"
"""The landing folder of erasure requests (ml/privacy/erasure.py): not an entity, never loaded."""
GLOB_CHARACTERS = re.compile(r"[*?\[\]{}]")


def is_writer_artifact(name: str) -> bool:
    """A marker or temporary of a writer (or a hidden file): never data."""
    lowered = name.lower()
    return name.startswith((".", "_")) or lowered.endswith(TEMPORARY_SUFFIXES)


def landing_format(name: str) -> tuple[str, str | None] | None:
    """(format, compression) of a landing file by its name, or None when it is not data."""
    if is_writer_artifact(name):
        return None
    suffixes = [s.lower() for s in Path(name).suffixes]
    compression = None
    if suffixes and suffixes[-1] == ".gz":
        compression = "gzip"
        suffixes.pop()
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None or (fmt == "parquet" and compression):
        return None
    return fmt, compression


@dataclass(frozen=True)
class LandingFile:
    entity: str
    path: Path
    relative: str
    """Path inside the landing folder: how raw rows and quarantine name their source."""
    format: str
    compression: str | None
    partition_date: dt.date | None

    @property
    def delimiter_hint(self) -> str | None:
        return "\t" if ".tsv" in self.path.name.lower() else None


@dataclass
class Discovery:
    files: dict[str, list[LandingFile]]
    refused: list[BadFile]
    """Files that must not be read at all (a link out of the landing folder, a partition
    folder that is not a date): recorded as bad files, never opened."""
    ignored: list[str]
    """Files of unknown formats in entity folders: reported, not loaded."""


def _partition_date(relative: Path) -> dt.date | None:
    for part in relative.parts[:-1]:
        match = PARTITION_PATTERN.match(part)
        if match:
            try:
                return dt.date.fromisoformat(match.group(1))
            except ValueError:
                raise BadFile(
                    relative.as_posix(),
                    None,
                    f"partition folder '{part}' is not a date (date=YYYY-MM-DD)",
                ) from None
    return None


def discover(landing_dir: Path) -> Discovery:
    """Every landing file per contract entity, sorted by path (which fixes the load order)."""
    if not landing_dir.is_dir():
        raise ContractViolation(str(landing_dir), None, "landing folder does not exist")
    root = landing_dir.resolve()
    known = {e.name for e in ENTITIES} | {ERASURE_REQUESTS}
    for child in sorted(landing_dir.iterdir()):
        if child.is_dir() and child.name not in known and not is_writer_artifact(child.name):
            log.warning("landing folder %s is not a contract entity; ignored", child)
    discovery = Discovery({}, [], [])
    for entity in ENTITIES:
        folder = landing_dir / entity.name
        files = discovery.files.setdefault(entity.name, [])
        if not folder.is_dir():
            continue
        # os.walk does not descend into linked folders: a link is judged as a file below.
        for top, folders, names in os.walk(folder):
            folders[:] = sorted(
                name
                for name in folders
                if not is_writer_artifact(name) and not Path(top, name).is_symlink()
            )
            linked = [name for name in os.listdir(top) if Path(top, name).is_symlink()]
            for name in sorted(set(names) | set(linked)):
                path = Path(top, name)
                relative = path.relative_to(landing_dir)
                fmt = landing_format(name)
                if fmt is None:
                    if not is_writer_artifact(name):
                        discovery.ignored.append(relative.as_posix())
                    continue
                if path.is_symlink() and not path.resolve().is_relative_to(root):
                    discovery.refused.append(
                        BadFile(
                            relative.as_posix(),
                            None,
                            "is a symbolic link that leaves the landing folder: not read",
                        )
                    )
                    continue
                if not path.is_file():
                    continue
                try:
                    partition = _partition_date(relative)
                except BadFile as bad:
                    discovery.refused.append(bad)
                    continue
                files.append(LandingFile(entity.name, path, relative.as_posix(), *fmt, partition))
        files.sort(key=lambda f: f.relative)
    for name in discovery.ignored:
        log.warning(
            "%s: not a landing format (.csv, .tsv, .parquet, .jsonl, .ndjson, "
            "text formats also .gz); not loaded",
            name,
        )
    return discovery


# --------------------------------------------------------------------------- taking a file


@dataclass(frozen=True)
class Fingerprint:
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> Fingerprint:
        stat = path.stat()
        return cls(stat.st_size, stat.st_mtime_ns)


def _open_text_bytes(file: LandingFile):
    opened = file.path.open("rb")
    return gzip.GzipFile(fileobj=opened) if file.compression == "gzip" else opened


def checksum(file: LandingFile, encoding: str) -> tuple[str, Fingerprint]:
    """sha256 of the file's bytes, and its fingerprint, which must not change while they are
    read; a text file's bytes are decoded on the way, so a wrong encoding is found here with
    its line number (and without quoting the line)."""
    before = Fingerprint.of(file.path)
    digest = file_sha256(file.path)
    if file.format in ("csv", "json") and encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        _check_utf8(file)
    if Fingerprint.of(file.path) != before:
        raise StillChanging(file.relative)
    return digest, before


def _check_utf8(file: LandingFile) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    try:
        with _open_text_bytes(file) as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as error:
                    line += block.count(b"\n", 0, error.start)
                    raise BadFile(
                        file.relative,
                        None,
                        f"line {line} is not UTF-8 (byte {error.object[error.start]:#04x}); "
                        "save the export as UTF-8, or set SEGFLOW_LANDING_ENCODING to the "
                        "encoding all landing files use",
                    ) from None
                line += block.count(b"\n")
            decoder.decode(b"", final=True)
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise BadFile(file.relative, None, f"cannot be decompressed: {error}") from None
    except UnicodeDecodeError:
        raise BadFile(file.relative, None, f"line {line} ends inside a UTF-8 character") from None


def csv_header(file: LandingFile, encoding: str) -> tuple[str, list[str]]:
    """The delimiter and the column names of a CSV file's header line.

    The delimiter is the one the header uses most (DuckDB's sniffer, left alone, may decide
    that a file with one ragged row has no header and skip rows silently)."""
    try:
        with _open_text_bytes(file) as raw:
            text = io.TextIOWrapper(raw, encoding=encoding, errors="strict", newline="")
            header = text.readline().removeprefix("\ufeff")
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as error:
        raise BadFile(
            file.relative, None, f"cannot be read as text: {type(error).__name__}"
        ) from None
    if not header.strip():
        raise BadFile(file.relative, None, "is empty or has no header line")
    delimiter = file.delimiter_hint or max(CSV_DELIMITERS, key=header.count)
    names = next(csv.reader([header.rstrip("\r\n")], delimiter=delimiter))
    return delimiter, names


def readable_path(file: LandingFile, staging: Path) -> Path:
    """A path DuckDB reads as exactly this file: DuckDB expands `*`, `?`, `[..]` and `{..}` in
    a name, so such a name is read through a hard link (or a copy) with a plain one."""
    if not GLOB_CHARACTERS.search(str(file.path)):
        return file.path
    staging.mkdir(mode=0o700, parents=True, exist_ok=True)
    digest = hashlib.sha256(file.relative.encode()).hexdigest()[:16]
    plain = staging / f"{digest}{''.join(file.path.suffixes[-2:])}"
    plain.unlink(missing_ok=True)
    try:
        os.link(file.path, plain)
    except OSError:
        plain.write_bytes(file.path.read_bytes())
    return plain
