"""End of call from the modem's loop and tone events (issue 3 item 4): every ``<DLE>`` code
that means the far end has gone, in every dialect, and the look-alikes that must not end a
call (the off-hook confirmation ``<DLE>H``, the answer reversal on a dialled call)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import numpy as np
import pytest

from appliance.line import modem as modem_module
from appliance.line.modem import CallProgress, DialResult, Dtmf, Modem, RemoteHangup
from appliance.sim.modem.emulator import SimModem
from appliance.sim.modem.link import sim_url
from appliance.sim.modem.profiles import SILENCE_REPORT_S
from tests.line.test_modem_calls import next_event

pytestmark = pytest.mark.timeout(30)

TIMEOUT_S = 5.0


async def _answered(profile: str) -> tuple[Modem, SimModem]:
    sim = SimModem(profile, ring_period_s=0.1, cid_delay_s=0.03)
    modem = Modem(sim_url(sim), command_timeout_s=1.0, cid_settle_s=0.01)
    await modem.open()
    sim.ring("3612345678")
    await modem.answer()
    while not modem.events.empty():  # the rings before the answer
        modem.events.get_nowait()
    return modem, sim


@pytest.fixture(params=["conexant", "usr", "v253"])
async def call(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Modem, SimModem]]:
    modem, sim = await _answered(request.param)
    try:
        yield modem, sim
    finally:
        await modem.hang_up()
        await modem.close()


@pytest.mark.parametrize(("code", "reason"), [
    ("b", "busy"), ("d", "dialtone"), ("s", "silence"), ("q", "silence"), ("l", "loop"),
    ("h", "loop"), ("L", "loop-reversal"),
])
@pytest.mark.parametrize("voice_state", ["command", "duplex", "record"])
async def test_each_far_end_gone_event_ends_the_call(
    call: tuple[Modem, SimModem], code: str, reason: str, voice_state: str
) -> None:
    modem, sim = call
    if voice_state == "duplex":
        await modem.start_duplex(lambda frame: None)
    elif voice_state == "record":
        await modem.start_record(lambda frame: None)
    sim.report_event(code)
    assert await next_event(modem, RemoteHangup) == RemoteHangup(reason)


async def test_h_right_after_off_hook_is_the_modems_confirmation(
    call: tuple[Modem, SimModem],
) -> None:
    modem, sim = call
    # Quirk #23: <DLE>H right after AT+VLS=1. The key pressed after it is the next event.
    sim.report_event("H")
    sim.report_event("5")
    event = await asyncio.wait_for(modem.events.get(), TIMEOUT_S)
    assert event == Dtmf("5")


async def test_h_later_in_the_call_ends_it_except_on_the_usr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(modem_module, "OFF_HOOK_CONFIRM_S", 0.05)
    for profile, ends in (("conexant", True), ("v253", True), ("usr", False)):
        modem, sim = await _answered(profile)
        try:
            frames = asyncio.Event()
            count = [0]

            def on_audio(frame: np.ndarray, count: list[int] = count,
                         frames: asyncio.Event = frames) -> None:
                count[0] += 1
                if count[0] == 10:  # 200 ms of the line's clock: past the confirmation window
                    frames.set()

            await modem.start_duplex(on_audio)
            await asyncio.wait_for(frames.wait(), TIMEOUT_S)
            sim.report_event("H")
            sim.report_event("7")
            first = await asyncio.wait_for(modem.events.get(), TIMEOUT_S)
            if ends:
                assert first == RemoteHangup("loop"), profile
            else:
                assert first == Dtmf("7"), profile  # the USR table drops <DLE>H altogether
        finally:
            await modem.hang_up()
            await modem.close()


async def test_on_a_dialled_call_the_first_reversal_is_the_answer() -> None:
    sim = SimModem("v253")
    modem = Modem(sim_url(sim), command_timeout_s=1.0)
    await modem.open()
    try:
        assert await modem.dial("0612345678") is DialResult.DIALLED
        sim.report_event("L")
        # The simulated network's ringback may be reported first on a slow machine.
        progress = await next_event(modem, CallProgress)
        while progress == CallProgress("ringback"):
            progress = await next_event(modem, CallProgress)
        assert progress == CallProgress("voice")
        sim.report_event("L")
        assert await next_event(modem, RemoteHangup) == RemoteHangup("loop-reversal")
    finally:
        await modem.hang_up()
        await modem.close()


@pytest.mark.realistic_hangup
@pytest.mark.parametrize(("profile", "detect_s"), [("conexant", 1.8), ("usr", 1.5),
                                                   ("v253", 2.0)])
async def test_busy_is_reported_only_once_the_cadence_is_recognised(
    profile: str, detect_s: float
) -> None:
    # A real modem says <DLE>b only after a few 300/300 ms busy cycles, not at the hang-up.
    modem, sim = await _answered(profile)
    try:
        assert sim.profile.busy_detect_s == detect_s
        await modem.start_duplex(lambda frame: None)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        sim.remote_hangup()
        assert await next_event(modem, RemoteHangup) == RemoteHangup("busy")
        assert detect_s <= loop.time() - t0 < detect_s + 1.0
    finally:
        await modem.hang_up()
        await modem.close()


@pytest.mark.parametrize("kind", ["silence", "none"])
async def test_a_modem_that_never_reports_busy(kind: str) -> None:
    # Busy tone in the audio, then a quiet line; "silence" modems say <DLE>s after their
    # silence timer, the others nothing at all.
    sim = SimModem("conexant", ring_period_s=0.1, cid_delay_s=0.03)
    sim.profile = dataclasses.replace(sim.profile, hangup_report=kind)
    sim.exchange_busy_s = 1.0
    modem = Modem(sim_url(sim), command_timeout_s=1.0, cid_settle_s=0.01)
    await modem.open()
    try:
        sim.ring("3612345678")
        await modem.answer()
        frames: list[np.ndarray] = []
        await modem.start_duplex(frames.append)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        sim.remote_hangup()
        if kind == "silence":
            event = await next_event(modem, RemoteHangup, SILENCE_REPORT_S + TIMEOUT_S)
            assert event == RemoteHangup("silence")
            assert loop.time() - t0 >= 1.0 + SILENCE_REPORT_S - 0.1
        else:
            n0 = len(frames)
            async with asyncio.timeout(TIMEOUT_S):
                while len(frames) < n0 + 100:  # noqa: ASYNC110 - 2 s of the line's clock
                    await asyncio.sleep(0.02)
            assert not any(isinstance(e, RemoteHangup) for e in _drain(modem))
        rx = np.concatenate(frames[-100:])
        busy_part = np.concatenate(frames[-100:-50])
        assert np.abs(busy_part).max() > 5000 or kind == "silence", "busy tone first"
        assert not rx[-160 * 20:].any(), "then a quiet line"
    finally:
        await modem.hang_up()
        await modem.close()


def _drain(modem: Modem) -> list[object]:
    out = []
    while not modem.events.empty():
        out.append(modem.events.get_nowait())
    return out
