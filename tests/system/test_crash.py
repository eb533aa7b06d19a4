"""A real daemon process, a real pty modem, and the worst moments to stop it.

The test process serves the emulated modem on a pty; the daemon (``python -m appliance run``)
opens it with pyserial as it would a USB modem. A caller rings and talks; once the daemon is
recording, the test kills it with SIGKILL (power cut, OOM kill) or SIGTERM (systemctl stop).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from appliance.sim.modem.pty import PtyModemServer
from appliance.store.recorder import sha256_file
from tests.system import daemon_proc, index_probe
from tests.system.daemon_proc import start_daemon
from tests.system.index_probe import query

pytestmark = pytest.mark.timeout(120)

TIMEOUT_S = 30.0
POLL_S = 0.1


def write_config(tmp_path: Path, device: str) -> Path:
    return daemon_proc.write_config(tmp_path, device, "Tájékoztatjuk, hogy a hívást rögzítjük.")


async def wait_for_state(db: Path, state: str) -> sqlite3.Row:
    return await index_probe.wait_for_state(db, state, TIMEOUT_S)


def caller_voice(n: int) -> np.ndarray:
    t = (np.arange(n) + caller_voice.pos) / 8000  # type: ignore[attr-defined]
    caller_voice.pos += n  # type: ignore[attr-defined]
    return (6000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


caller_voice.pos = 0  # type: ignore[attr-defined]


@pytest.fixture
async def modem() -> Any:
    server = PtyModemServer(profile="conexant")
    await server.start()
    server.sim.set_caller_audio(caller_voice)
    try:
        yield server
    finally:
        await server.stop()


async def test_kill_9_mid_call_loses_at_most_one_second(modem: Any, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    db = state_dir / "appliance.db"
    config = write_config(tmp_path, modem.path)
    daemon = start_daemon(config, state_dir)
    try:
        await asyncio.sleep(0)
        modem.sim.ring("+3611234567", "TESZT ELEK")
        await modem.sim.wait_off_hook(TIMEOUT_S)
        row = await wait_for_state(db, "recording-started")
        # Let it record a few seconds of the caller, then pull the plug.
        await asyncio.sleep(3.0)
        killed_at = time.time()
        daemon.send_signal(signal.SIGKILL)
        await asyncio.to_thread(daemon.wait, TIMEOUT_S)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    reference = row["reference"]
    recorded_s = killed_at - row["record_start_at"]
    assert list(state_dir.rglob("*.wav.partial")), "the live recording is on disk"

    # The modem notices its host is gone; a new call can come. Restart the daemon.
    daemon = start_daemon(config, state_dir)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                rows = query(db, "SELECT * FROM calls WHERE reference = ?", reference)
                if rows and rows[0]["outcome"] == "interrupted" and rows[0]["recording_sha256"]:
                    break
                await asyncio.sleep(POLL_S)
        # The modem was left in duplex by the killed daemon; the new one takes it back and
        # answers the next call (a lost line would lose every later caller).
        await modem.sim.wait_on_hook(TIMEOUT_S)
        modem.sim.ring("+3619999999", None)
        await modem.sim.wait_off_hook(TIMEOUT_S)
        second = await wait_for_state(db, "notice")
        assert second["reference"] != reference or len(
            query(db, "SELECT * FROM calls")) == 2
    finally:
        daemon.send_signal(signal.SIGTERM)
        # In a thread: the emulated modem lives on this test's loop and must keep answering.
        _, err = await asyncio.to_thread(daemon.communicate, timeout=TIMEOUT_S)
    assert daemon.returncode == 0, err
    call = query(db, "SELECT * FROM calls WHERE reference = ?", reference)[0]
    path = Path(call["recording_path"])
    assert os.path.exists(path)
    assert sha256_file(path) == call["recording_sha256"]
    audio, rate = soundfile.read(path, dtype="int16")
    duration = len(audio) / rate
    # All but at most the last second of what was recorded survived.
    assert duration >= recorded_s - 1.0, (duration, recorded_s)
    # And it is the caller's audio on the caller's channel.
    assert np.sqrt(np.mean(audio[:, 0].astype(float) ** 2)) > 1000
    audit = query(db, "SELECT action, details FROM audit WHERE reference = ?", reference)
    assert any(a["action"] == "call-finalized" and "interrupted" in a["details"] for a in audit)
    assert not list(state_dir.rglob("*.wav.partial"))


async def test_sigterm_mid_call_finalizes_the_call(modem: Any, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    db = state_dir / "appliance.db"
    daemon = start_daemon(write_config(tmp_path, modem.path), state_dir)
    try:
        modem.sim.ring("+3611234567", None)
        await modem.sim.wait_off_hook(TIMEOUT_S)
        row = await wait_for_state(db, "recording-started")
        await asyncio.sleep(1.0)
    finally:
        daemon.send_signal(signal.SIGTERM)
        # In a thread: the emulated modem lives on this test's loop and must keep answering.
        _, err = await asyncio.to_thread(daemon.communicate, timeout=TIMEOUT_S)
    assert daemon.returncode == 0, err
    call = query(db, "SELECT * FROM calls WHERE reference = ?", row["reference"])[0]
    assert call["outcome"] == "missed"  # the shop never lifted before the stop
    assert call["recording_decision"] == "recorded"
    assert call["end_at"] is not None
    path = Path(call["recording_path"])
    assert path.suffix == ".flac"
    assert sha256_file(path) == call["recording_sha256"]
    assert soundfile.info(path).duration > 0.5
    # The line was put back on-hook on the way out.
    assert not modem.sim.off_hook, err
    assert not os.listdir(state_dir / "recordings") or not list(state_dir.rglob("*.partial"))


async def test_modem_unplugged_mid_call_is_interrupted_with_audio_so_far(
    modem: Any, tmp_path: Path, mock_factory: Any
) -> None:
    from appliance.audio.backend import SimHandsetAudio
    from appliance.config import load_config
    from appliance.daemon.app import Application

    config = load_config(write_config(tmp_path, modem.path), state_dir=tmp_path / "state")
    app = Application(config, pin_factory=mock_factory, handset_audio=SimHandsetAudio())
    recording = asyncio.Event()
    app.observers.append(
        lambda ref, state, detail: recording.set() if state == "recording-started" else None)
    try:
        await app.start()
        await app.wait_ready(TIMEOUT_S)
        modem.sim.ring("+3611234567", None)
        await asyncio.wait_for(recording.wait(), TIMEOUT_S)
        await asyncio.sleep(2.0)
        modem.unplug()  # the USB modem is pulled out
        result = await asyncio.wait_for(app.completed.get(), TIMEOUT_S)
        row = app.store.get_call(result.reference)
        # The supervisor notices and keeps trying to reopen; the panel shows the fault.
        async with asyncio.timeout(TIMEOUT_S):
            while "modem-missing" not in app.fault_codes():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        await app.stop()
    assert result.outcome == "interrupted"
    assert row is not None
    assert row["outcome"] == "interrupted"
    assert result.recording is not None
    assert result.recording.duration_s > 1.5
    assert sha256_file(Path(result.recording.path)) == row["recording_sha256"]
