"""A modem without full duplex (issue 3 item 2): detected, said clearly, and the line
degrades to a plain phone (the bypass relay) instead of failing every call."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from appliance.audio.backend import SimHandsetAudio
from appliance.cli.tech import _check_audio, _check_modem
from appliance.config import load_config
from appliance.daemon.app import Application
from appliance.errors import ModemCommandError
from appliance.line.modem import Modem
from appliance.line.sim import SimModem

pytestmark = pytest.mark.timeout(60)

TIMEOUT_S = 20.0


def _half_duplex(sim: SimModem) -> None:
    sim.profile = dataclasses.replace(sim.profile, full_duplex=False)


@pytest.mark.parametrize("full", [True, False])
async def test_init_finds_out_whether_the_modem_has_full_duplex(full: bool) -> None:
    sim = SimModem("v253")
    if not full:
        _half_duplex(sim)
    modem = Modem("sim://", sim=sim, command_timeout_s=1.0)
    await modem.open()
    try:
        assert modem.full_duplex is full
        assert "AT+VTR=?" in sim.commands
    finally:
        await modem.close()


async def test_a_refused_vtr_raises_and_marks_the_modem_half_duplex() -> None:
    sim = SimModem("conexant")
    modem = Modem("sim://", sim=sim, command_timeout_s=1.0)
    await modem.open()
    try:
        assert modem.full_duplex is True
        _half_duplex(sim)  # e.g. a firmware whose +VTR=? lies
        sim.ring("3612345678")
        await modem.answer()
        with pytest.raises(ModemCommandError):
            await modem.start_duplex(lambda frame: None)
        assert modem.full_duplex is False
        await modem.hang_up()
        assert not sim.off_hook
    finally:
        await modem.close()


async def test_daemon_stops_answering_and_bypasses_when_vtr_is_refused(
    tmp_path: Path, mock_factory: Any
) -> None:
    config = load_config(Path("/dev/null"), state_dir=tmp_path / "state", overrides={
        "speech": {"voice": "espeak", "texts": {"notice": "Rögzítjük."}},
        "call": {"cid_wait_s": 0.0},
    })
    app = Application(config, pin_factory=mock_factory, handset_audio=SimHandsetAudio())
    try:
        await app.start()
        await app.wait_ready(TIMEOUT_S)
        session = app.lines[0]
        assert session.modem is not None
        sim = session.modem.sim
        assert sim is not None
        assert app.status_dict()["lines"][0]["duplex"] is True
        assert app.relay.energised
        _half_duplex(sim)
        sim.ring_period_s = 0.2
        sim.ring("+3612345678", None, cid_before_first_ring=True)
        result = await asyncio.wait_for(app.completed.get(), TIMEOUT_S)
        assert result.outcome == "error"
        await sim.wait_on_hook(TIMEOUT_S)  # the line was put back on-hook
        status = app.status_dict()["lines"][0]
        assert status["duplex"] is False
        assert status["audio"] == "modem"
        assert "full duplex" in (status["fault"] or "")
        assert not app.relay.energised, "the phone is on the line directly"
        # The next caller is not answered by the box: the phone rings through.
        sim.ring("+3687654321", None, cid_before_first_ring=True, max_rings=3)
        async with asyncio.timeout(TIMEOUT_S):
            while sim.ringing:  # noqa: ASYNC110 - the emulator has no "rings over" event
                await asyncio.sleep(0.05)
        assert not sim.off_hook
        assert app.completed.empty()
        check = _check_modem("main", "sim://", {"ok": True, **app.status_dict()})
    finally:
        await app.stop()
    assert check.level == "warn"
    assert "full-duplex" in check.detail
    assert "lines[].audio" in check.fix


def _portaudio_available() -> bool:
    import ctypes.util

    return ctypes.util.find_library("portaudio") is not None


@pytest.mark.skipif(not _portaudio_available(), reason="libportaudio2 is not installed")
async def test_a_missing_line_sound_card_is_a_line_fault_and_a_doctor_failure(
    tmp_path: Path, mock_factory: Any
) -> None:
    config = load_config(Path("/dev/null"), state_dir=tmp_path / "state", overrides={
        "lines": [{"name": "main", "device": "sim://", "country_code": "51",
                   "audio": "alsa:no-such-line-card"}],
        "speech": {"voice": "espeak", "texts": {"notice": "Rögzítjük."}},
    })
    app = Application(config, pin_factory=mock_factory, handset_audio=SimHandsetAudio())
    try:
        await app.start()
        session = app.lines[0]
        async with asyncio.timeout(TIMEOUT_S):
            while session.fault is None:  # noqa: ASYNC110 - set by the line's supervisor
                await asyncio.sleep(0.05)
        fault = session.fault
        assert session.modem is None, "the line is not ready without its sound card"
        assert not app.relay.energised, "the phone is on the line directly"
        assert app.fault_codes() == ["audio-missing"]  # blink code 2: a sound card is missing
    finally:
        await app.stop()
    assert "line main audio" in fault
    assert "no-such-line-card" in fault
    check = _check_audio("alsa:no-such-line-card", "line main audio", "lines[].audio")
    assert check.level == "fail"
    assert check.name == "line main audio"
    assert "lines[].audio" in check.fix
