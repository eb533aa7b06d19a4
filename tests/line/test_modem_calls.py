"""Whole calls through the Modem API against the emulator, in process (sim://) and over a pty."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import pytest

from appliance.audio.pcm import decode_voice, encode_voice
from appliance.line.modem import (
    CallerIdReceived,
    Dtmf,
    LineEvent,
    LinkDown,
    Modem,
    RemoteHangup,
    Ring,
)
from appliance.sim.modem.emulator import SimModem
from appliance.sim.modem.link import sim_url
from appliance.sim.modem.pty import PtyModemServer

TIMEOUT_S = 5.0
_T = TypeVar("_T")


async def next_event(modem: Modem, kind: type[_T], timeout_s: float = TIMEOUT_S) -> _T:
    """Return the next event of ``kind``, skipping others."""
    async with asyncio.timeout(timeout_s):
        while True:
            event: LineEvent = await modem.events.get()
            if isinstance(event, kind):
                return event


def _fast_sim(profile: str = "conexant") -> SimModem:
    return SimModem(profile, ring_period_s=0.1, cid_delay_s=0.03)


@pytest.fixture(params=["sim", "pty"])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Modem, SimModem]]:
    """A Modem opened on a fast emulator, in process or over a real pty."""
    sim = _fast_sim()
    server: PtyModemServer | None = None
    if request.param == "sim":
        modem = Modem(sim_url(sim), command_timeout_s=1.0, cid_settle_s=0.01)
    else:
        server = PtyModemServer(sim)
        path = await server.start()
        modem = Modem(path, command_timeout_s=1.0, cid_settle_s=0.01)
    await modem.open()
    try:
        yield modem, sim
    finally:
        await modem.close()
        if server is not None:
            await server.stop()


def _test_tone(n: int) -> npt.NDArray[np.int16]:
    # Near full scale so every u8 code, 0x10 included, occurs (exercises DLE doubling).
    t = np.arange(n) / 8000.0
    return (31000 * np.sin(2 * np.pi * 441.0 * t)).astype(np.int16)


async def test_whole_call(rig: tuple[Modem, SimModem]) -> None:
    modem, sim = rig
    assert modem.chipset == "conexant"
    assert modem.voice_format == "s16le"  # the best the emulator offers (133 LINEAR, 16 bit)

    sim.ring("3612345678", "TEST CALLER")
    first = await next_event(modem, Ring)
    assert first == Ring(1, None)
    cid = await next_event(modem, CallerIdReceived)
    assert cid.caller.number == "3612345678"
    assert cid.caller.name == "TEST CALLER"
    second = await next_event(modem, Ring)
    assert second.count == 2
    assert second.caller == cid.caller

    await modem.answer()
    await sim.wait_off_hook(TIMEOUT_S)
    assert modem.off_hook
    assert "AT+VLS=1" in sim.commands

    received: list[npt.NDArray[np.int16]] = []
    await modem.start_duplex(received.append)

    heard: list[npt.NDArray[np.int16]] = []
    all_heard = asyncio.Event()

    def listener(samples: npt.NDArray[np.int16], _t: float) -> None:
        heard.append(samples)
        if sum(len(h) for h in heard) >= 8000:
            all_heard.set()

    sim.add_tx_listener(listener)
    tone = _test_tone(8000)
    for k in range(50):
        modem.send_audio(tone[k * 160 : (k + 1) * 160])
    async with asyncio.timeout(TIMEOUT_S):
        await all_heard.wait()
    expected = decode_voice(encode_voice(tone, modem.voice_format), modem.voice_format)
    np.testing.assert_array_equal(np.concatenate(heard)[:8000], expected)

    sim.press_key("9")
    assert await next_event(modem, Dtmf) == Dtmf("9")

    sim.remote_hangup()
    assert await next_event(modem, RemoteHangup) == RemoteHangup("busy")

    await modem.stop_duplex()
    await modem.hang_up()
    await sim.wait_on_hook(TIMEOUT_S)
    assert not modem.off_hook
    assert received
    assert all(frame.shape == (160,) and frame.dtype == np.int16 for frame in received)
    assert sim.commands[-3:] == ["AT+VLS=0", "AT+VLS?", "AT+FCLASS=0"]


async def test_caller_audio_reaches_host(rig: tuple[Modem, SimModem]) -> None:
    modem, sim = rig
    sim.set_caller_audio(lambda n: np.full(n, 12800, dtype=np.int16))
    await modem.answer()
    frames: list[npt.NDArray[np.int16]] = []
    enough = asyncio.Event()

    def on_audio(frame: npt.NDArray[np.int16]) -> None:
        frames.append(frame)
        if len(frames) >= 5:
            enough.set()

    await modem.start_duplex(on_audio)
    async with asyncio.timeout(TIMEOUT_S):
        await enough.wait()
    assert all(np.all(frame == 12800) for frame in frames[:5])
    await modem.hang_up()  # stops duplex itself
    await sim.wait_on_hook(TIMEOUT_S)


async def test_unplug_during_duplex_gives_link_down(rig: tuple[Modem, SimModem]) -> None:
    modem, sim = rig
    await modem.answer()
    await modem.start_duplex(lambda _frame: None)
    sim.unplug()
    down = await next_event(modem, LinkDown)
    assert down.reason
    modem.send_audio(np.zeros(160, dtype=np.int16))  # must not raise
    await modem.hang_up()  # must not raise
    assert not modem.off_hook


async def test_withheld_cid_before_first_ring() -> None:
    sim = SimModem("usr", ring_period_s=0.1, cid_delay_s=0.03)
    modem = Modem(sim_url(sim), command_timeout_s=1.0, cid_settle_s=0.01)
    await modem.open()
    try:
        assert modem.chipset == "usr"
        sim.ring(withheld=True, cid_before_first_ring=True)
        ring = await next_event(modem, Ring)
        assert ring.count == 1
        assert ring.caller is not None
        assert ring.caller.withheld
        assert ring.caller.number is None
        await modem.answer()  # USR <DLE>H after +VLS=1 must not be a hang-up (quirk #23)
        await modem.start_duplex(lambda _frame: None)
        sim.press_key("#")
        assert await next_event(modem, Dtmf) == Dtmf("#")
        await modem.hang_up()
        assert "AT+VSM=133,8000" in sim.commands
    finally:
        await modem.close()


async def test_stop_duplex_waits_for_audio_sent_ahead(caplog: pytest.LogCaptureFixture) -> None:
    # A host that bursts 3 s of audio: the <DLE>^ queues behind it (the modem stops reading
    # at 1 s buffered), so the stop must allow for the backlog rather than time out.
    sim = _fast_sim()
    # u8: the byte counts below (3 s burst, 1 s modem buffer, transport bound) are 8-bit ones.
    modem = Modem(sim_url(sim), command_timeout_s=1.0, voice_format="u8")
    await modem.open()
    try:
        await modem.answer()
        await modem.start_duplex(lambda _frame: None)
        burst = _test_tone(24000)
        for k in range(0, len(burst), 160):
            modem.send_audio(burst[k : k + 160])
        await modem.stop_duplex()
        assert sim.mode == "command"
        assert "ignored voice stop" not in caplog.text  # first attempt, no quirk-#1 retry
        assert len(sim.played) > 16000  # most of it was played before the stop took effect
        await modem.hang_up()
        assert modem.link_state.value == "connected"
    finally:
        await modem.close()
