"""Calling out through the whole daemon (issue 9), one test per behaviour.

Real Application on the in-process modem emulator (``sim://``) with a scripted callee, the
SLIC driver on MockFactory pins (SHK driven like a handset), the simulated handset audio with a
"shop" that dials DTMF into the mouthpiece and listens to the earpiece through the same
call-progress detector the daemon uses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile

from appliance.audio.backend import SimHandsetAudio
from appliance.audio.tones import dtmf_sequence
from appliance.call.outbound_flow import OutboundResult
from appliance.config import load_config
from appliance.daemon.app import Application
from appliance.handset.slic import HookEvent
from appliance.line.progress import CallProgressDetector
from appliance.sim.modem.emulator import SimModem
from appliance.sim.modem.exchange import SimCallee
from appliance.sim.modem.link import sim_url
from appliance.sim.world import Mouth, voice_like_signal

pytestmark = pytest.mark.timeout(60)

TIMEOUT_S = 15.0
SHORT_NOTICE = {"notice": "A hívást rögzítjük."}


class Shop:
    """The person at the handset: a mouth for DTMF and speech, an ear that recognises tones."""

    def __init__(self, app: Application, factory: Any) -> None:
        self.app = app
        self.shk = factory.pin(app.config.handset.shk_pin)
        self.mouth = Mouth()
        self.detector = CallProgressDetector()
        self.heard: list[str] = []
        self.frames: list[npt.NDArray[np.int16]] = []
        self.lifted_at: float | None = None
        self.first_sound_at: float | None = None
        self._changed = asyncio.Event()
        handset = app.handset_audio
        assert isinstance(handset, SimHandsetAudio)
        handset.connect_user(self.mouth, self.ear)

    def ear(self, frame: npt.NDArray[np.int16]) -> None:
        self.frames.append(frame.copy())
        if (self.lifted_at is not None and self.first_sound_at is None
                and np.abs(frame).max() > 1000):
            self.first_sound_at = time.monotonic()
        self.heard += self.detector.feed(frame)
        self._changed.set()

    def lift(self) -> None:
        self.lifted_at = time.monotonic()
        self.shk.drive_high()

    async def lift_and_hear_dial_tone(self) -> None:
        """Lift and wait for the dial tone, as a person does before dialling.

        Digits sent before the daemon has seen the lift (the SLIC's hook debounce) would be
        lost on a loaded machine, as they would be by a real exchange.
        """
        self.first_sound_at = None
        self.lift()
        await until(lambda: self.first_sound_at is not None)

    def hang_up(self) -> None:
        self.shk.drive_low()

    async def dial(self, keys: str) -> None:
        await asyncio.wait_for(self.mouth.say(dtmf_sequence(keys, 80, 80)), TIMEOUT_S)

    async def hears(self, kind: str) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            while kind not in self.heard:
                self._changed.clear()
                await self._changed.wait()

    def level_db(self, last_frames: int, freqs: tuple[float, ...]) -> float:
        """Power at ``freqs`` over the last frames, relative to full scale."""
        audio = np.concatenate(self.frames[-last_frames:]).astype(np.float64) / 32767.0
        spectrum = np.abs(np.fft.rfft(audio)) / len(audio)
        bins = [round(f * len(audio) / 8000) for f in freqs]
        return 10 * np.log10(sum(spectrum[b] ** 2 for b in bins) + 1e-12)


def make_config(tmp_path: Path, device: str, **outbound: Any) -> Any:
    overrides = {
        "lines": [{"name": "main", "device": device, "country_code": "51"}],
        "speech": {"voice": "espeak", "texts": SHORT_NOTICE},
        "gpio": {"pin_factory": "mock"},
        "outbound": {"interdigit_timeout_s": 1.0, "failure_listen_s": 1.0, **outbound},
    }
    return load_config(Path("/dev/null"), state_dir=tmp_path / "state", overrides=overrides)


@pytest.fixture
def outbound_config() -> dict[str, Any]:
    return {}


@pytest.fixture
async def rig(tmp_path: Path, mock_factory: Any,
              outbound_config: dict[str, Any]) -> AsyncIterator[tuple[Application, Shop, SimModem]]:
    sim = SimModem("conexant")
    app = Application(make_config(tmp_path, sim_url(sim), **outbound_config),
                      pin_factory=mock_factory,
                      handset_audio=SimHandsetAudio())
    await app.start()
    await app.wait_ready(TIMEOUT_S)
    try:
        yield app, Shop(app, mock_factory), sim
    finally:
        await app.stop()


async def result_of(app: Application) -> OutboundResult:
    return await asyncio.wait_for(app.outbound.completed.get(), TIMEOUT_S)


async def until(predicate: Any, timeout_s: float = TIMEOUT_S) -> None:
    async with asyncio.timeout(timeout_s):
        # Pins and daemon state offer no change callback to await; poll with a deadline.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def talker(seconds: float) -> Any:
    voice = voice_like_signal(seconds)
    pos = 0

    def read(n: int) -> npt.NDArray[np.int16]:
        nonlocal pos
        out = voice[pos : pos + n]
        pos += n
        return np.pad(out, (0, n - len(out)))

    return read


async def test_dial_tone_then_dtmf_call_answered(rig: Any) -> None:
    app, shop, sim = rig
    sim.set_callee(SimCallee("answer", rings=1, source=talker(4.0)))
    shop.lift()
    await until(lambda: shop.first_sound_at is not None)
    # The latency itself is a bench figure (dial_tone_latency_ms); here only that nothing is
    # waited for (a loaded CI machine may stall the loop for a second, so the bound is wide).
    assert shop.first_sound_at - shop.lifted_at < 5.0, "dial tone at once"
    await until(lambda: len(shop.frames) > 20)
    assert shop.level_db(10, (425.0,)) > -20, "the dial tone is 425 Hz (hu zone)"
    await shop.dial("0612#")
    await shop.hears("ringback")  # the network's own ringback, through the line
    await sim.wait_callee_answered(TIMEOUT_S)
    await shop.hears("voice")  # the callee, through the bridge
    await until(lambda: app.outbound.session is not None
                and app.outbound.session.call.state.value == "connected")
    # The panel port names the line's state right after the flow's transition.
    await until(lambda: app.lines[0].state == "outbound connected")
    shop.hang_up()
    result = await result_of(app)
    assert result.outcome == "answered"
    assert sim.dialled == ["0612"]
    row = app.store.get_call(result.reference)
    assert row["direction"] == "out"
    assert row["caller_number"] == "0612"
    assert row["line"] == "main"
    assert row["outcome"] == "bridged"
    assert row["recording_decision"] == "none"
    assert row["end_at"] >= row["answer_at"] >= row["ring_at"]
    states = [e["state"] for e in app.store.events(result.reference)]
    assert states.index("calling") < states.index("ringback") < states.index("connected")
    assert states[-2:] == ["outcome", "ended"]
    await until(lambda: not sim.off_hook and app.lines[0].state == "idle")
    assert app.handset.owner is None


async def test_pulse_dialling_busy_number(rig: Any) -> None:
    app, shop, sim = rig
    sim.set_callee(SimCallee("busy"))
    shop.lift()
    await until(lambda: app.outbound.session is not None)
    for digit in "47":  # what the SLIC reports after counting SHK breaks
        app.slic.events.put_nowait(HookEvent("digit", 0.0, digit))
    await shop.hears("busy")  # the network's busy tone, heard through the line
    await until(lambda: app.outbound.session is not None
                and "busy" in [e["state"] for e in app.store.events(
                    app.outbound.session.reference or "")])
    shop.hang_up()
    result = await result_of(app)
    assert result.outcome == "busy"
    assert sim.dialled == ["47"]
    assert app.store.get_call(result.reference)["outcome"] == "missed"


async def test_hang_up_while_dialling_returns_to_idle(rig: Any) -> None:
    app, shop, sim = rig
    await shop.lift_and_hear_dial_tone()
    await shop.dial("06")
    shop.hang_up()
    result = await result_of(app)
    assert result.reference is None
    assert app.store.last_call() is None, "no row without a dialled call"
    assert not sim.off_hook
    assert app.handset.owner is None
    shop.first_sound_at = None
    shop.lift()  # idle again: a fresh dial tone
    await until(lambda: shop.first_sound_at is not None)
    shop.hang_up()
    await result_of(app)


async def test_ring_before_any_digit_wins(rig: Any) -> None:
    app, shop, sim = rig
    shop.lift()
    await until(lambda: shop.first_sound_at is not None)
    sim.set_caller_audio(talker(2.0))
    sim.ring("+36301234567", "KOVACS ANNA", cid_before_first_ring=True)
    await until(lambda: app.lines[0].active is not None)
    assert app.outbound.session is None, "the dial tone gave way"
    # The shop is already off-hook: the inbound call bridges without ringing the handset.
    # (after the notice and the reference, spoken by espeak: allow for their length)
    await until(lambda: app.lines[0].active is not None
                and app.lines[0].active.call.state.value == "bridged", 45.0)
    sim.remote_hangup()
    call = await asyncio.wait_for(app.completed.get(), TIMEOUT_S)
    assert call.outcome == "bridged"
    assert app.store.get_call(call.reference)["direction"] == "in"
    shop.hang_up()


async def test_ring_after_a_digit_waits(rig: Any) -> None:
    app, shop, sim = rig
    sim.ring_period_s = 0.3
    await shop.lift_and_hear_dial_tone()
    await shop.dial("5")
    await until(lambda: app.outbound.session is not None
                and app.outbound.session.call.digits_dialled)
    sim.ring("+36301234567", max_rings=4)
    await until(lambda: sim.stats["rings"] >= 3)
    assert app.lines[0].active is None, "no inbound call while the shop is dialling"
    shop.hang_up()
    result = await result_of(app)
    assert result.reference is None


@pytest.mark.parametrize("outbound_config", [{"offhook_warning_s": 0.3, "howler_s": 0.4}])
async def test_left_off_hook_howler_then_silence(rig: Any, mock_factory: Any) -> None:
    app, shop, sim = rig
    fault_led = mock_factory.pin(app.config.panel.fault_pin)
    shop.lift()
    await until(lambda: app.panel.fault == "handset-off-hook")
    assert fault_led.state
    await until(lambda: len(shop.frames) > 30)
    await until(lambda: shop.level_db(5, (1400.0, 2060.0, 2450.0, 2600.0)) > -25)  # howler
    await until(lambda: np.abs(np.concatenate(shop.frames[-5:])).max() == 0)  # then silence
    assert sim.dialled == []
    assert not sim.off_hook, "no line is seized"
    assert app.store.last_call() is None
    shop.hang_up()
    await result_of(app)
    assert app.panel.fault is None
    assert not fault_led.state


async def test_no_dial_tone_congestion_and_status(rig: Any) -> None:
    app, shop, sim = rig
    sim.set_callee(SimCallee("no-dialtone"))
    await shop.lift_and_hear_dial_tone()
    await shop.dial("12#")
    await shop.hears("busy")  # congestion = busy cadence in Hungary, played by the box
    status = app.status_dict()
    assert "no dial tone" in status["lines"][0]["state"]
    shop.hang_up()
    result = await result_of(app)
    assert result.outcome == "no-dialtone"
    row = app.store.get_call(result.reference)
    assert row["outcome"] == "error"
    assert "no-dialtone" in [e["state"] for e in app.store.events(result.reference)]


@pytest.mark.parametrize("outbound_config", [{"record": True}])
async def test_recording_after_star_star_tells_both_sides(rig: Any) -> None:
    app, shop, sim = rig
    sim.set_callee(SimCallee("answer", rings=1, source=talker(30.0)))
    await shop.lift_and_hear_dial_tone()
    await shop.dial("77#")
    await sim.wait_callee_answered(TIMEOUT_S)
    await until(lambda: app.outbound.session is not None
                and app.outbound.session.call.state.value == "connected")
    sim.clear_played()
    await shop.dial("**")
    reference = app.outbound.session.reference
    # Notice + the reference said twice (≈ 15 s of speech) precede the recording.
    await until(lambda: "recording-started" in [e["state"] for e in app.store.events(reference)],
                timeout_s=45.0)
    played = sim.played.astype(np.float64)
    assert np.sqrt(np.mean(played**2)) > 300, "the callee heard the notice"
    assert app.panel.pattern("recording") == "on"
    sim.remote_hangup()
    result = await result_of_after_hang_up(app, shop)
    assert result.recording_decision == "recorded"
    row = app.store.get_call(result.reference)
    assert row["record_start_at"] >= row["notice_end_at"] >= row["notice_start_at"]
    info = soundfile.info(row["recording_path"])
    assert info.channels == 2


async def result_of_after_hang_up(app: Application, shop: Shop) -> OutboundResult:
    await shop.hears("busy")
    shop.hang_up()
    return await result_of(app)
