"""Dialling out: Modem.dial against the emulator's scripted callee, and the in-band
call-progress detector on the exchange tones the emulator plays (issue 9)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.audio.tones import ToneGenerator, tone_zone
from appliance.line.modem import (
    CallProgress,
    DialResult,
    LineEvent,
    Modem,
    RemoteHangup,
    dial_string,
)
from appliance.line.progress import CallProgressDetector
from appliance.sim.modem.emulator import SimModem
from appliance.sim.modem.exchange import SimCallee
from appliance.sim.modem.link import sim_url
from appliance.sim.modem.pty import PtyModemServer
from appliance.sim.world import voice_like_signal

TIMEOUT_S = 10.0
_T = TypeVar("_T")


async def next_event(modem: Modem, kind: type[_T], timeout_s: float = TIMEOUT_S) -> _T:
    async with asyncio.timeout(timeout_s):
        while True:
            event: LineEvent = await modem.events.get()
            if isinstance(event, kind):
                return event


@pytest.fixture(params=["sim", "pty"])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Modem, SimModem]]:
    sim = SimModem("conexant")
    server: PtyModemServer | None = None
    if request.param == "sim":
        modem = Modem(sim_url(sim), command_timeout_s=1.0)
    else:
        server = PtyModemServer(sim)
        modem = Modem(await server.start(), command_timeout_s=1.0)
    await modem.open()
    try:
        yield modem, sim
    finally:
        await modem.close()
        if server is not None:
            await server.stop()


class Listener:
    """Collects the line audio the host receives and classifies it like the daemon does."""

    def __init__(self) -> None:
        self.detector = CallProgressDetector()
        self.reports: list[str] = []
        self.frames: list[npt.NDArray[np.int16]] = []
        self.got: dict[str, asyncio.Event] = {}

    def __call__(self, frame: npt.NDArray[np.int16]) -> None:
        self.frames.append(frame.copy())
        for kind in self.detector.feed(frame):
            self.reports.append(kind)
            self.got.setdefault(kind, asyncio.Event()).set()

    async def wait(self, kind: str) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            await self.got.setdefault(kind, asyncio.Event()).wait()


async def test_dial_answered_hears_ringback_then_callee(rig: tuple[Modem, SimModem]) -> None:
    modem, sim = rig
    voice = voice_like_signal(3.0)
    pos = 0

    def callee_voice(n: int) -> npt.NDArray[np.int16]:
        nonlocal pos
        out = voice[pos : pos + n]
        pos += n
        return np.pad(out, (0, n - len(out)))

    sim.set_callee(SimCallee("answer", rings=1, source=callee_voice))
    assert await modem.dial("06 1 234-567") is DialResult.DIALLED
    assert sim.dialled == ["061234567"]
    assert modem.off_hook
    # V.253 voice dial: +FCLASS=8, ATDT…; (with +VRN=0 so OK comes right after the digits).
    assert "AT+VRN=0" in sim.commands
    assert sim.commands[-1] == "ATDT061234567;"
    listener = Listener()
    await modem.start_duplex(listener)
    assert await next_event(modem, CallProgress) == CallProgress("ringback")
    await listener.wait("ringback")
    await sim.wait_callee_answered(TIMEOUT_S)
    await listener.wait("voice")
    assert listener.reports.index("ringback") < listener.reports.index("voice")
    assert "busy" not in listener.reports
    # The ringback in the line audio: 425 Hz, one 1.25 s burst before the answer.
    audio = np.concatenate(listener.frames).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(audio[:8000]))
    assert abs(np.argmax(spectrum) * 8000 / 8000 - 425) < 5
    sim.remote_hangup()
    assert (await next_event(modem, RemoteHangup)).reason == "busy"
    await listener.wait("busy")
    await modem.hang_up()
    assert not sim.off_hook


async def test_dial_busy_in_band_and_dle_b(rig: tuple[Modem, SimModem]) -> None:
    modem, sim = rig
    sim.set_callee(SimCallee("busy"))
    assert await modem.dial("123") is DialResult.DIALLED
    listener = Listener()
    await modem.start_duplex(listener)
    assert (await next_event(modem, RemoteHangup)).reason == "busy"
    await listener.wait("busy")
    assert "ringback" not in listener.reports
    assert "voice" not in listener.reports
    await modem.hang_up()


async def test_dial_busy_as_result_code(rig: tuple[Modem, SimModem]) -> None:
    modem, sim = rig
    sim.set_callee(SimCallee("busy", busy_as_result=True))
    assert await modem.dial("123") is DialResult.BUSY
    assert not modem.off_hook
    assert not sim.off_hook
    assert sim.fclass == 0, "back to data class while idle (quirk #27)"


async def test_dial_no_dialtone(rig: tuple[Modem, SimModem]) -> None:
    modem, sim = rig
    sim.set_callee(SimCallee("no-dialtone"))
    assert await modem.dial("123") is DialResult.NO_DIALTONE
    assert not modem.off_hook
    assert not sim.off_hook
    assert sim.dialled == []


async def test_no_answer_rings_then_network_gives_up(rig: tuple[Modem, SimModem]) -> None:
    modem, sim = rig
    sim.set_callee(SimCallee("no-answer", rings=1))
    assert await modem.dial("5") is DialResult.DIALLED
    listener = Listener()
    await modem.start_duplex(listener)
    await listener.wait("ringback")
    assert (await next_event(modem, RemoteHangup)).reason == "busy"
    await listener.wait("busy")
    assert not sim.callee_answered
    await modem.hang_up()


async def test_dial_refuses_bad_numbers(rig: tuple[Modem, SimModem]) -> None:
    modem, sim = rig
    with pytest.raises(ValueError, match="not a diallable"):
        await modem.dial("06-1-ABC-X")
    assert not any(c.startswith("ATD") for c in sim.commands)


@given(st.text(alphabet="0123456789*#ABCD -.()", min_size=1, max_size=40))
def test_dial_string_keeps_only_keypad_symbols(number: str) -> None:
    keys = [ch for ch in number if ch not in " -.()"]
    if not keys or len(keys) > 32:
        with pytest.raises(ValueError):
            dial_string(number)
    else:
        assert dial_string(number) == "".join(keys)


# --- the detector on its own ----------------------------------------------------------------


def frames_of(signal: npt.NDArray[np.int16]) -> list[npt.NDArray[np.int16]]:
    n = len(signal) // 160
    return [signal[k * 160 : (k + 1) * 160] for k in range(n)]


def tone(kind: str, seconds: float, gain: float = 1.0) -> npt.NDArray[np.int16]:
    gen = ToneGenerator(getattr(tone_zone("hu"), kind))
    samples = gen.next_frame(int(seconds * 8000)).astype(np.float64) * gain
    return np.clip(samples, -32768, 32767).astype(np.int16)


def reports(signal: npt.NDArray[np.int16], tx: npt.NDArray[np.int16] | None = None) -> list[str]:
    detector = CallProgressDetector()
    out: list[str] = []
    for k, frame in enumerate(frames_of(signal)):
        ref = None if tx is None else tx[k * 160 : (k + 1) * 160]
        out += detector.feed(frame, reference=ref)
    return out


@settings(max_examples=25, deadline=None)
@given(gain=st.floats(0.05, 2.0), noise=st.floats(0.0, 30.0), seed=st.integers(0, 1000))
def test_ringback_is_ringback_at_any_level(gain: float, noise: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    signal = tone("ringback", 11.0, gain).astype(np.float64)
    signal += rng.normal(0, noise, len(signal))
    got = reports(signal.astype(np.int16))
    assert got.count("ringback") == 3  # bursts at 0, 5 and 10 s
    assert "voice" not in got
    assert "busy" not in got


@settings(max_examples=25, deadline=None)
@given(gain=st.floats(0.05, 2.0), zone=st.sampled_from(["hu", "eu"]))
def test_busy_is_busy_never_voice(gain: float, zone: str) -> None:
    gen = ToneGenerator(tone_zone(zone).busy)
    signal = np.clip(gen.next_frame(4 * 8000) * gain, -32768, 32767).astype(np.int16)
    got = reports(signal)
    assert got == ["busy"]


@settings(max_examples=20, deadline=None)
@given(f0=st.floats(90.0, 260.0), seed=st.integers(0, 100))
def test_speech_is_voice_never_a_tone(f0: float, seed: int) -> None:
    got = reports(voice_like_signal(3.0, f0_hz=f0, seed=seed))
    assert "voice" in got
    assert not set(got) & {"ringback", "busy", "dialtone"}


@settings(max_examples=25, deadline=None)
@given(at=st.integers(1, 60), zeroed=st.booleans())
def test_one_lost_frame_does_not_split_a_ringback_burst(at: int, zeroed: bool) -> None:
    # A frame the reader lost (zeros) or a click inside the 1.25 s burst (62 frames).
    signal = tone("ringback", 2.0)
    frame = signal[at * 160 : (at + 1) * 160]
    frame[:] = 0 if zeroed else np.random.default_rng(at).integers(-20000, 20000, 160)
    assert reports(signal) == ["ringback"]


@pytest.mark.parametrize("gap_frames", [2, 3])
def test_a_longer_gap_splits_the_burst(gap_frames: int) -> None:
    # 0.6 s of tone, a gap, 0.6 s: neither half is a ringback burst (≥ 1 s).
    signal = tone("dial", 1.2 + gap_frames * 0.02)
    signal[30 * 160 : (30 + gap_frames) * 160] = 0
    assert "ringback" not in reports(signal)


def test_continuous_tone_is_dialtone() -> None:
    assert reports(tone("dial", 3.0)) == ["ringback", "dialtone"]


def test_echo_of_what_we_send_is_not_an_answer() -> None:
    speech = voice_like_signal(2.0)
    echo = (speech.astype(np.float64) * 10 ** (-8 / 20)).astype(np.int16)  # 8 dB hybrid loss
    assert "voice" not in reports(echo, tx=speech)
    assert "voice" in reports(echo)
