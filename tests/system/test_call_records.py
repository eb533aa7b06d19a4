"""A lost index loses no answered call: every call leaves its record file, recorded or not.

The real daemon on the modem emulator (a real pty opened by pyserial), MockFactory pins: a
recorded call, a caller who opts out during the notice and one who hangs up during it. Then
the index is deleted and ``appliance index rebuild`` puts every row back with its outcome,
recording decision, caller as received and notice proof; an erasure leaves no caller data in
any file and its tombstone survives the next rebuild (docs/records.md, "The call record file").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.audio.backend import SimHandsetAudio
from appliance.call.flow import CallResult
from appliance.config import Config, load_config
from appliance.daemon.app import Application
from appliance.sim.modem.emulator import SimModem
from appliance.sim.modem.pty import PtyModemServer
from appliance.store.db import Store
from appliance.store.highwater import REFERENCE_KEY_FILE
from appliance.store.rebuild import rebuild_index
from appliance.store.retention import erase_call

pytestmark = pytest.mark.timeout(180)

TIMEOUT_S = 60.0
NOTICE = "Tájékoztatjuk, hogy a hívást rögzítjük."
#: Caller ID as received, control bytes and all: the record keeps it as the index does.
HOSTILE_NAME = "\x1b]0;PWNED\x07\x1b[2J"
#: Columns a rebuilt row cannot have as before: the row id, and the recording's path (the
#: rebuild takes it from where the file lies; compared resolved below).
NOT_COMPARED = ("id", "recording_path")


@pytest.fixture
async def box(tmp_path: Path, mock_factory: Any) -> AsyncIterator[tuple[Application,
                                                                        PtyModemServer]]:
    server = PtyModemServer(SimModem("conexant", ring_period_s=1.0, cid_delay_s=0.3))
    device = await server.start()
    config_path = tmp_path / "config.toml"
    config_path.write_text(
        f'[speech]\nvoice = "espeak"\n[speech.texts]\nnotice = "{NOTICE}"\n'
        '[gpio]\npin_factory = "mock"\n[call]\nagent_timeout_s = 30.0\ncid_wait_s = 0.0\n'
        f'[[lines]]\nname = "main"\ndevice = "{device}"\ncountry_code = "51"\n',
        encoding="utf-8")
    config = load_config(config_path, state_dir=tmp_path / "state")
    app = Application(config, pin_factory=mock_factory, handset_audio=SimHandsetAudio())
    try:
        await app.start()
        await app.wait_ready(TIMEOUT_S)
        yield app, server
    finally:
        await app.stop()
        await server.stop()


async def _call(app: Application, sim: SimModem, number: str, name: str | None,
                until: str, act: Callable[[], None] = lambda: None,
                then: str | None = None) -> CallResult:
    """A caller rings; when the daemon reaches event ``until``, ``act``; when it reaches
    ``then`` (if given), hang up."""
    seen: dict[str, asyncio.Event] = {until: asyncio.Event(), str(then): asyncio.Event()}

    def observe(ref: str, state: str, detail: str) -> None:
        if state in seen:
            seen[state].set()

    app.observers.append(observe)
    try:
        sim.ring(number, name, cid_before_first_ring=True)
        await asyncio.wait_for(seen[until].wait(), TIMEOUT_S)
        act()
        if then is not None:
            await asyncio.wait_for(seen[then].wait(), TIMEOUT_S)
        sim.remote_hangup()
        result = await asyncio.wait_for(app.completed.get(), TIMEOUT_S)
        await sim.wait_on_hook(TIMEOUT_S)
        return result
    finally:
        app.observers.remove(observe)


def _drop_index(config: Config) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(config.db_path) + suffix).unlink(missing_ok=True)


def _rebuild(config: Config) -> dict[str, dict[str, Any]]:
    state = config.device.state_dir
    report = rebuild_index(config.db_path, config.recordings_dir, state,
                           (state / REFERENCE_KEY_FILE).read_bytes(), actor="cli:test")
    assert report.not_indexed == 0, report
    assert report.problems == []
    store = Store.open(config.db_path)
    try:
        return {row["reference"]: row for row in store.list_calls(None)}
    finally:
        store.close_sync()


def _same(before: dict[str, Any], after: dict[str, Any]) -> None:
    for key, value in before.items():
        if key not in NOT_COMPARED:
            assert after[key] == value, (before["reference"], key)
    if before["recording_path"] is None:
        assert after["recording_path"] is None
    else:
        assert Path(after["recording_path"]).resolve() == Path(before["recording_path"]).resolve()


async def test_every_call_comes_back_after_the_index_is_lost(
    box: tuple[Application, PtyModemServer],
) -> None:
    app, server = box
    sim = server.sim
    config = app.config
    recorded = await _call(app, sim, "+3611111111", HOSTILE_NAME, "recording-started")
    declined = await _call(app, sim, "+3622222222", "OPT OUT", "notice",
                           lambda: sim.press_key(app.policy.optout_key), "recording-declined")
    abandoned = await _call(app, sim, "+3633333333", None, "notice")
    assert (recorded.recording_decision, declined.recording_decision,
            abandoned.recording_decision) == ("recorded", "declined", "none")
    assert abandoned.outcome == "abandoned"
    refs = [recorded.reference, declined.reference, abandoned.reference]
    before = {ref: app.store.get_call(ref) for ref in refs}
    await app.stop()

    _drop_index(config)
    rows = _rebuild(config)
    assert set(rows) == set(refs)
    for ref in refs:
        _same(before[ref], rows[ref])
    assert rows[recorded.reference]["caller_name"] == HOSTILE_NAME  # as received

    # An erasure leaves the call's tombstone in its record and the caller nowhere on disk;
    # the next rebuild restores the tombstone, not the caller.
    store = Store.open(config.db_path)
    try:
        erase_call(store, config.recordings_dir, recorded.reference, reason="request #1",
                   actor="cli:test")
        erased = store.get_call(recorded.reference)
    finally:
        store.close_sync()
    assert erased is not None
    for path in config.recordings_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"+3611111111" not in data, path
            assert b"PWNED" not in data, path
    assert not list(config.recordings_dir.rglob(f"{recorded.reference}.flac"))
    _drop_index(config)
    rows = _rebuild(config)
    assert rows[recorded.reference]["erased_at"] == erased["erased_at"]
    assert (rows[recorded.reference]["caller_number"],
            rows[recorded.reference]["recording_path"]) == (None, None)
    _same(before[declined.reference], rows[declined.reference])
