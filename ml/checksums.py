"""The sha256 of a file's bytes: how the loader knows a landing file it has loaded, and how the
export manifests pin the files they list (and an erasure re-pins the files it rewrote)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file, read in blocks of 1 MiB (files may be larger than memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
