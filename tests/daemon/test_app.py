"""The daemon's own behaviour outside calls: bypass relay, front-panel button, start-up checks.

Real Application on the in-process emulated modem (``sim://``), MockFactory pins, the
simulated handset audio.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.audio.backend import SimHandsetAudio
from appliance.config import load_config
from appliance.daemon.app import Application

TIMEOUT_S = 10.0


def make_config(tmp_path: Path, **extra: Any) -> Any:
    overrides = {
        "speech": {"voice": "espeak"},
        "gpio": {"pin_factory": "mock"},
        "panel": {"long_press_s": 0.3},
        **extra,
    }
    return load_config(Path("/dev/null"), state_dir=tmp_path / "state", overrides=overrides)


class Ear:
    def __init__(self) -> None:
        self.loud_frames = 0
        self.heard = asyncio.Event()

    def __call__(self, frame: np.ndarray) -> None:
        if np.abs(frame).max() > 1000:
            self.loud_frames += 1
            if self.loud_frames >= 25:  # half a second of speech
                self.heard.set()


@pytest.fixture
async def app(tmp_path: Path, mock_factory: Any) -> Any:
    handset = SimHandsetAudio()
    application = Application(make_config(tmp_path), pin_factory=mock_factory,
                              handset_audio=handset)
    await application.start()
    await application.wait_ready(TIMEOUT_S)
    try:
        yield application
    finally:
        await application.stop()


async def until(predicate: Any) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        # Mock output pins offer no change callback to await; poll with a deadline.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_bypass_relay_energised_only_while_healthy(app: Any, mock_factory: Any) -> None:
    relay_pin = mock_factory.pin(app.config.panel.bypass_relay_pin)
    await until(lambda: relay_pin.state)
    assert app.relay.energised
    await app.stop()
    assert not relay_pin.state, "stopping hands the line back to the phone"


async def test_a_start_that_fails_part_way_stops_only_what_started(
    tmp_path: Path, mock_factory: Any
) -> None:
    # A state directory too deep for a unix socket's path (108 bytes): start fails at the
    # control socket, after the index, the panel, the SLIC, the tasks and the line started.
    from gpiozero import DigitalOutputDevice

    config = load_config(Path("/dev/null"), state_dir=tmp_path / ("d" * 100) / "state",
                         overrides={"speech": {"voice": "espeak"}})
    app = Application(config, pin_factory=mock_factory, handset_audio=SimHandsetAudio())
    with pytest.raises(OSError):
        await app.start()
    assert app.store.counter() == 0, "the index had opened"
    await app.stop()
    names = {task.get_name() for task in asyncio.all_tasks()}
    assert not names & {"line-main", "hook-events", "button-events", "health", "unsaved-rows"}
    # The panel and the SLIC gave their pins back; the relay, never started, never energised.
    for pin in (config.panel.ready_pin, config.panel.fault_pin, config.handset.rm_pin,
                config.handset.fr_pin):
        DigitalOutputDevice(pin, pin_factory=mock_factory).close()
    assert not mock_factory.pin(config.panel.bypass_relay_pin).state
    await app.stop()  # nothing left to stop: a second stop is harmless


class _AudioThatFailsToStop(SimHandsetAudio):
    """A handset sound card whose closing fails (a USB card pulled out at shutdown)."""

    async def stop(self) -> None:
        await super().stop()
        raise OSError("the sound card is gone")


async def test_a_part_that_fails_to_stop_does_not_keep_the_others_running(
    tmp_path: Path, mock_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from gpiozero import DigitalOutputDevice

    config = make_config(tmp_path)
    app = Application(config, pin_factory=mock_factory, handset_audio=_AudioThatFailsToStop())
    await app.start()
    await app.wait_ready(TIMEOUT_S)
    await app.stop()
    assert "stopping the handset audio failed" in caplog.text
    # The SLIC and the panel, started before the audio, still stopped: their pins are free.
    for pin in (config.handset.rm_pin, config.panel.ready_pin):
        DigitalOutputDevice(pin, pin_factory=mock_factory).close()


async def test_short_press_on_hook_rings_then_speaks_last_call_when_lifted(
    app: Any, mock_factory: Any
) -> None:
    ear = Ear()
    app.handset_audio.connect_user(None, ear)
    button = mock_factory.pin(app.config.panel.button_pin)
    loop = asyncio.get_running_loop()
    button.drive_low()
    loop.call_later(0.1, button.drive_high)
    # The short distinctive ring: its bursts counted, not its pin sampled (a loaded loop's
    # poll could miss a 0.2 s burst).
    await until(lambda: app.slic.rings_started >= 1)
    mock_factory.pin(app.config.handset.shk_pin).drive_high()  # the owner lifts
    await asyncio.wait_for(ear.heard.wait(), TIMEOUT_S)
    assert "Még nem volt hívás" in app.shop.last_call_text()


async def test_long_press_off_hook_speaks_health(app: Any, mock_factory: Any) -> None:
    ear = Ear()
    app.handset_audio.connect_user(None, ear)
    mock_factory.pin(app.config.handset.shk_pin).drive_high()
    await until(lambda: app.slic.off_hook)
    button = mock_factory.pin(app.config.panel.button_pin)
    button.drive_low()
    await asyncio.wait_for(ear.heard.wait(), TIMEOUT_S)
    button.drive_high()
    from appliance.speech.prompts import load_prompt_texts

    assert not app.faults()
    assert app.shop.health_text() == load_prompt_texts("hu")["health_ok"]


async def test_missing_handset_audio_is_a_fault_and_bypasses(
    tmp_path: Path, mock_factory: Any
) -> None:
    config = make_config(tmp_path, handset={"audio": "alsa:no-such-card"})
    application = Application(config, pin_factory=mock_factory)
    await application.start()
    try:
        await application.wait_ready(TIMEOUT_S)
        assert application.fault_codes()[0] == "audio-missing"
        assert any("handset audio" in f for f in application.faults())
        assert not application.relay.energised, "the shop keeps a plain phone"
        assert not mock_factory.pin(config.panel.bypass_relay_pin).state
    finally:
        await application.stop()


async def test_lost_index_is_a_fault_and_no_reference_is_issued_again(
    tmp_path: Path, mock_factory: Any
) -> None:
    """Issue 15 item 4: appliance.db emptied with reference.key kept. The daemon does not
    answer on it (fault code index-lost, relay released, status says what to do); after
    ``appliance index rebuild`` the next reference is a new one."""
    from click.testing import CliRunner

    from appliance.cli.main import cli

    config = make_config(tmp_path)
    first = Application(config, pin_factory=mock_factory, handset_audio=SimHandsetAudio())
    await first.start()
    try:
        issued = {await first.allocate_reference() for _ in range(3)}
    finally:
        await first.stop()
    for suffix in ("", "-wal", "-shm"):
        Path(str(config.db_path) + suffix).unlink(missing_ok=True)
    lost = Application(config, pin_factory=mock_factory, handset_audio=SimHandsetAudio())
    await lost.start()
    try:
        await lost.wait_ready(TIMEOUT_S)
        assert lost.fault_codes()[0] == "index-lost"
        assert "appliance index rebuild" in lost.status_line()
        assert not lost.relay.energised, "the phone is on the line, the box does not answer"
        busy = await asyncio.to_thread(
            CliRunner().invoke, cli, ["--config", "/dev/null", "--state-dir",
                                      str(config.device.state_dir), "index", "rebuild"])
        assert busy.exit_code == 1
        assert "stop it first" in busy.output
    finally:
        await lost.stop()
    doctor = CliRunner().invoke(cli, ["--config", "/dev/null", "--state-dir",
                                      str(config.device.state_dir), "doctor"])
    assert "index rebuild" in doctor.output
    rebuilt = CliRunner().invoke(cli, ["--config", "/dev/null", "--state-dir",
                                       str(config.device.state_dir), "index", "rebuild"])
    assert rebuilt.exit_code == 0, rebuilt.output
    again = Application(config, pin_factory=mock_factory, handset_audio=SimHandsetAudio())
    await again.start()
    try:
        assert "index-lost" not in again.fault_codes()
        assert await again.allocate_reference() not in issued
    finally:
        await again.stop()


async def test_a_row_the_full_disk_kept_from_the_index_is_finalized_later(app: Any) -> None:
    """Issue 15 item 1: a finished call whose row could not be written is the disk-full
    fault (relay released) until the write succeeds; then the fault clears."""
    from appliance.call.flow import CallResult

    app.storage.unsaved_retry_s = 0.05
    reference = await app.allocate_reference()
    await app.store.create_call(reference, outcome="in_progress")
    result = CallResult(reference, "missed", "failed", True, None, 12.0,
                        unsaved={"outcome": "missed", "recording_decision": "failed",
                                 "end_at": 1.0e9},
                        unsaved_audit={"outcome": "missed", "recording_decision": "failed",
                                       "sha256": None})
    app.storage.keep_unsaved(result)
    assert "disk-full" in app.fault_codes()
    assert app.status_line().startswith("fault — disk full")
    assert not app.relay.energised, "a box that cannot index calls does not answer them"
    await until(lambda: app.storage.storage_error is None)
    row = app.store.get_call(reference)
    assert (row["outcome"], row["recording_decision"]) == ("missed", "failed")
    assert [e["action"] for e in app.store.audit_entries(reference)] == ["call-finalized"]
    assert "disk-full" not in app.fault_codes()
    assert app.relay.energised


async def test_start_up_recovery_ends_an_interrupted_call_and_audits_it(
    tmp_path: Path, mock_factory: Any
) -> None:
    """Issue 15 item 9: kill -9 during the notice left a row in_progress with no end time
    and no call-finalized entry; the next start gives it both."""
    from appliance.store.db import Store

    config = make_config(tmp_path)
    config.device.state_dir.mkdir(parents=True)
    store = Store.open(config.db_path)
    try:
        await store.create_call("12345674", ring_at=1000.0, answer_at=1001.0,
                                outcome="in_progress", recording_decision="pending")
        await store.add_event("12345674", "notice", "line off-hook", t=1001.5)
        await store.add_event("12345674", "dtmf", "5 (inband)", t=1007.25)
    finally:
        await store.close()
    app = Application(config, pin_factory=mock_factory, handset_audio=SimHandsetAudio())
    await app.start()
    try:
        row = app.store.get_call("12345674")
        assert (row["outcome"], row["recording_decision"]) == ("interrupted", "none")
        assert row["end_at"] == 1007.25, "the last moment known"
        assert row["duration_s"] == 6.25
        entries = app.store.audit_entries("12345674")
        assert [e["action"] for e in entries] == ["call-finalized"]
        assert entries[0]["details"]["outcome"] == "interrupted"
    finally:
        await app.stop()


async def test_index_deleted_while_running_stops_answering(app: Any) -> None:
    """The index file deleted under the running daemon: it would go on writing an unlinked
    file nobody can read. Found before the next call: index-lost, no reference issued."""
    from appliance.errors import StoreError

    await app.allocate_reference()
    assert not app.storage.index_lost_now()
    for suffix in ("", "-wal", "-shm"):
        Path(str(app.config.db_path) + suffix).unlink(missing_ok=True)
    assert app.storage.index_lost_now()
    assert app.fault_codes()[0] == "index-lost"
    assert not app.relay.energised
    with pytest.raises(StoreError, match="deleted or replaced"):
        await app.allocate_reference()
