"""The landing watcher's trigger, run in-process on a folder (the triggerer runs the same
generator): what it fires for, and what it remembers across a restart."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from ml.orchestration.landing_watch import MAX_BUSY_POLLS, WATERMARK_KEY, LandingFilesTrigger

POLL_S = 0.02


@pytest.fixture(autouse=True)
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watcher reads the landing folder and its poll from the settings when it starts: in
    Airflow, those of the triggerer that runs it."""
    monkeypatch.setenv("SEGFLOW_LANDING_DIR", str(tmp_path))
    monkeypatch.setenv("SEGFLOW_LANDING_POLL_SECONDS", str(POLL_S))


class StateStore:
    """Airflow's asset state store as the triggerer hands it to a watcher (one asset)."""

    def __init__(self):
        self.values: dict = {}

    async def aget(self, key, default=None):
        return self.values.get(key, default)

    async def aset(self, key, value):
        self.values[key] = value


def write(landing: Path, relative: str, text: str = "event_id\n1\n") -> None:
    """Written under a hidden name, then renamed: what a careful writer does."""
    path = landing / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    hidden = path.with_name("." + path.name)
    hidden.write_text(text)
    hidden.rename(path)


async def events(trigger: LandingFilesTrigger, polls: int, during=None) -> list[dict]:
    """The events of `polls` polls; `during(poll)` runs before each poll."""
    found = []
    stream = trigger.run()

    async def collect():
        async for event in stream:
            found.append(event.payload)

    task = asyncio.create_task(collect())
    for poll in range(polls):
        if during:
            during(poll)
        await asyncio.sleep(POLL_S * 1.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return found


def test_new_files_fire_one_event_per_burst_and_history_none(tmp_path: Path):
    write(tmp_path, "orders/date=2026-11-30/part-0.parquet")
    store = StateStore()
    trigger = LandingFilesTrigger()
    trigger.asset_state_store = store

    def land(poll: int) -> None:
        if poll == 3:  # a burst: three entities at once
            for entity in ("orders", "web_events", "email_events"):
                write(tmp_path, f"{entity}/date=2026-12-01/increment-1.csv")
            (tmp_path / "orders" / "_SUCCESS").write_text("")  # a marker, not data
            (tmp_path / "orders" / ".part.csv").write_text("a")  # a write in progress
            (tmp_path / "notes").mkdir()
            (tmp_path / "notes" / "readme.csv").write_text("not an entity")

    fired = asyncio.run(events(trigger, 30, land))

    assert fired == [
        {
            "landing_dir": str(tmp_path),
            "files": [
                "email_events/date=2026-12-01/increment-1.csv",
                "orders/date=2026-12-01/increment-1.csv",
                "web_events/date=2026-12-01/increment-1.csv",
            ],
            "count": 3,
        }
    ]
    assert store.values[WATERMARK_KEY]["names"]  # remembered where Airflow keeps it


def test_an_erasure_request_fires_a_refresh_too(tmp_path: Path):
    """refresh_triggers forgets first: a request is honoured within minutes, not at 02:00."""
    write(tmp_path, "orders/date=2026-11-30/part-0.parquet")
    trigger = LandingFilesTrigger()
    trigger.asset_state_store = StateStore()

    def request(poll: int) -> None:
        if poll == 3:
            write(tmp_path, "erasure_requests/2026-12-01.csv", "email\njane@example.org\n")

    fired = asyncio.run(events(trigger, 30, request))

    assert [event["files"] for event in fired] == [["erasure_requests/2026-12-01.csv"]]


def test_a_restarted_watcher_fires_for_what_landed_meanwhile_and_not_again(tmp_path: Path):
    write(tmp_path, "orders/a.csv")
    store = StateStore()
    first = LandingFilesTrigger()
    first.asset_state_store = store
    assert asyncio.run(events(first, 3)) == []

    write(tmp_path, "orders/b.csv")  # while no watcher runs
    again = LandingFilesTrigger()
    again.asset_state_store = store
    assert [e["files"] for e in asyncio.run(events(again, 15))] == [["orders/b.csv"]]

    # A file rewritten in place changed: it is new again. Nothing else is.
    os.utime(tmp_path / "orders" / "a.csv")  # touches the change time too
    (tmp_path / "orders" / "a.csv").write_text("event_id\n2\n")
    third = LandingFilesTrigger()
    third.asset_state_store = store
    assert [e["files"] for e in asyncio.run(events(third, 15))] == [["orders/a.csv"]]


def test_a_stream_that_never_goes_quiet_still_fires(tmp_path: Path):
    trigger = LandingFilesTrigger()

    def land(poll: int) -> None:
        if poll:  # from the second poll on: the first look marks what is there as seen
            write(tmp_path, f"orders/{poll:02d}.csv")

    fired = asyncio.run(events(trigger, MAX_BUSY_POLLS + 6, land))
    assert fired, "a steady stream of files starved the watcher"
    assert fired[0]["files"][0] == "orders/01.csv"
