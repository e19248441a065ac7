"""The landing zone's watcher: the Airflow trigger that starts a refresh when files land.

`refresh_triggers` is scheduled on the asset `landing_files`, whose asset watcher runs
`LandingFilesTrigger` in Airflow's triggerer. Every SEGFLOW_LANDING_POLL_SECONDS it lists the
contract entities' folders in SEGFLOW_LANDING_DIR (the settings of the triggerer, the process
that lists the files, read when the watcher starts). When files have appeared or changed since
its last event and none has changed for one poll (a copy in progress does not count; a burst of
files is one event), it fires an event naming them; Airflow records it as an event of the
asset, which starts a refresh run.

Files are told new by their change time (ctime), which a rename or copy sets to the moment it
happens, whatever modification time the file keeps: a writer that writes `.part.parquet` and
renames it, or `cp -p`, are both seen. What the watcher has fired for is kept in Airflow's
asset state store (the newest change time, and the names at exactly that time), so a restarted
triggerer neither fires again for old files nor misses those that landed while it was down. Its
first start marks what is there as seen: the history is the daily run's to load.

Imported when the DAG is parsed and by the triggerer: no heavy imports here.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from ml.config import load_settings
from ml.contract import ENTITIES
from ml.ingest.landing import ERASURE_REQUESTS, is_writer_artifact, landing_format

WATERMARK_KEY = "landing_watermark"
MAX_BUSY_POLLS = 10
"""Polls a stream of arriving files may keep the watcher waiting for a quiet moment."""
EVENT_FILES_LISTED = 50
"""An event names at most this many files (all are counted); the refresh loads every new one."""

Stat = tuple[int, int]
"""(size, ctime_ns) of a file."""


def scan_landing(landing_dir: Path) -> dict[str, Stat]:
    """Every landing file of a contract entity, and every erasure request (a refresh honours
    those first, so a person is forgotten within minutes), by path inside the landing folder."""
    found: dict[str, Stat] = {}
    for name in [entity.name for entity in ENTITIES] + [ERASURE_REQUESTS]:
        folder = landing_dir / name
        for root, folders, names in os.walk(folder):
            folders[:] = [name for name in folders if not is_writer_artifact(name)]
            for name in names:
                if landing_format(name) is None:
                    continue
                path = Path(root, name)
                try:
                    stat = path.stat()
                except FileNotFoundError:  # renamed or removed meanwhile
                    continue
                found[path.relative_to(landing_dir).as_posix()] = (stat.st_size, stat.st_ctime_ns)
    return found


def watermark_of(files: dict[str, Stat], previous: dict | None = None) -> dict:
    """The newest change time among `files` and the names changed at exactly that time (merged
    with `previous` when it is the same time)."""
    newest = max((ctime for _, ctime in files.values()), default=0)
    names = {name for name, (_, ctime) in files.items() if ctime == newest}
    if previous and previous["ctime_ns"] == newest:
        names |= set(previous["names"])
    if previous and previous["ctime_ns"] > newest:
        return previous
    return {"ctime_ns": newest, "names": sorted(names)}


def unseen(files: dict[str, Stat], watermark: dict) -> dict[str, Stat]:
    """The files changed after the watermark."""
    seen_at, seen = watermark["ctime_ns"], set(watermark["names"])
    return {
        name: stat
        for name, stat in files.items()
        if stat[1] > seen_at or (stat[1] == seen_at and name not in seen)
    }


def ready_files(
    fresh: dict[str, Stat], last_poll: dict[str, Stat], busy_polls: int
) -> dict[str, Stat]:
    """The unseen files to fire for: all of them once none changed since the last poll, so a
    burst of files makes one event (and one refresh). When files keep arriving for
    MAX_BUSY_POLLS polls, the settled ones older than any still changing: the watermark may
    move past those without skipping a file that is not ready."""
    settled = {name: stat for name, stat in fresh.items() if last_poll.get(name) == stat}
    if len(settled) == len(fresh):
        return settled
    if busy_polls < MAX_BUSY_POLLS:
        return {}
    changing = min(stat[1] for name, stat in fresh.items() if name not in settled)
    return {name: stat for name, stat in settled.items() if stat[1] < changing}


class LandingFilesTrigger(BaseEventTrigger):
    """Fires when settled new or changed files are in the landing folder (see the module)."""

    def __init__(self):
        super().__init__()
        # Kept here too, for a watcher run without a state store (outside a triggerer).
        self._watermark: dict | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {}

    async def _load_watermark(self) -> dict | None:
        if self.asset_state_store is None:
            return self._watermark
        return await self.asset_state_store.aget(WATERMARK_KEY)

    async def _save_watermark(self, watermark: dict) -> None:
        self._watermark = watermark
        if self.asset_state_store is not None:
            await self.asset_state_store.aset(WATERMARK_KEY, watermark)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        settings = load_settings()
        landing = settings.landing_dir
        watermark = await self._load_watermark()
        last_poll: dict[str, Stat] = {}
        busy_polls = 0
        while True:
            files = await asyncio.to_thread(scan_landing, landing)
            if watermark is None:
                watermark = watermark_of(files)
                await self._save_watermark(watermark)
                self.log.info(
                    "watching %s: %d files there already count as seen", landing, len(files)
                )
            fresh = unseen(files, watermark)
            ready = ready_files(fresh, last_poll, busy_polls)
            busy_polls = busy_polls + 1 if fresh and not ready else 0
            if ready:
                names = sorted(ready)
                self.log.info("%d new or changed landing files: %s", len(names), names[:5])
                yield TriggerEvent(
                    {
                        "landing_dir": str(landing),
                        "files": names[:EVENT_FILES_LISTED],
                        "count": len(names),
                    }
                )
                # After the event: a triggerer killed in between fires it again (the refresh
                # loads nothing twice), rather than never.
                watermark = watermark_of(ready, watermark)
                await self._save_watermark(watermark)
            last_poll = fresh
            await asyncio.sleep(settings.landing_poll_seconds)
