"""``appliance demo --scenario outbound``: the shop calls a customer through the real daemon.

The simulated shop assistant lifts the handset (SHK high on MockFactory pins), listens for dial
tone, dials by DTMF tones into the mouthpiece audio, hears the network's ringback through the
line, talks with the simulated callee (the modem emulator's ``SimCallee``, answering after one
ringback burst), and hangs up when the callee has hung up. The line is the emulator on a real
pty opened by pyserial, as in :mod:`appliance.sim.demo`; the summary has the same shape as
``run_demo``'s, plus the outbound specifics (``direction``, ``dialled_number``, ``result``,
``index_outcome``, ``dial_tone_latency_ms``, ``heard``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy as np

from appliance.audio.backend import SimHandsetAudio
from appliance.audio.hybrid import HybridSpec
from appliance.audio.tones import dtmf_sequence
from appliance.daemon.app import Application
from appliance.line.progress import CallProgressDetector
from appliance.reference import format_reference
from appliance.sim.demo import (
    DEMO_HANDSET_ECHO,
    DEMO_LINE_ECHO,
    DemoResult,
    _pin_history,
    demo_config,
)
from appliance.sim.modem.emulator import SimModem
from appliance.sim.modem.exchange import SimCallee
from appliance.sim.modem.pty import PtyModemServer
from appliance.sim.world import Mouth, World, render_speech

__all__ = ["DIALLED_NUMBER", "LINES_OUT_HU", "ScriptedCallee", "ScriptedShop",
           "run_outbound_demo"]

_LOGGER = logging.getLogger(__name__)

DIALLED_NUMBER: Final = "06301234567"
DEMO_TIMEOUT_S: Final = 120.0
ACT_TIMEOUT_S: Final = 60.0
#: What the people say (Hungarian, like the shop and its customers).
LINES_OUT_HU: Final = {
    "callee_hello": "Halló, Kovács Anna.",
    "shop_news": "Jó napot, a Példa Bolttól hívom: megérkezett a rendelt kávéfőzője.",
    "callee_bye": "Nagyszerű, holnap megyek érte. Viszonthallásra!",
}


async def _wait(event: asyncio.Event, timeout_s: float = ACT_TIMEOUT_S) -> None:
    async with asyncio.timeout(timeout_s):
        await event.wait()


class ScriptedShop:
    """The assistant: lifts, waits for dial tone, dials by DTMF, talks, hangs up at the end."""

    def __init__(self, world: World, *, pin_factory: Any, shk_pin: int, number: str,
                 speech: dict[str, np.ndarray]) -> None:
        self.world = world
        self.factory = pin_factory
        self.shk_pin = shk_pin
        self.number = number
        self.speech = speech
        self.mouth = Mouth()
        self.heard: list[str] = []
        self.dial_tone_latency_s: float | None = None
        self._detector = CallProgressDetector()
        self._lifted_at: float | None = None
        self._dial_tone = asyncio.Event()
        self._busy = asyncio.Event()

    def ear(self, frame: np.ndarray) -> None:
        """The earpiece: notice dial tone, ringback and busy as a person would."""
        if (self._lifted_at is not None and not self._dial_tone.is_set()
                and float(np.sqrt(np.mean(frame.astype(np.float64) ** 2))) > 300):
            self.dial_tone_latency_s = time.monotonic() - self._lifted_at
            self._dial_tone.set()
            self.world.log("shop", "hears dial tone",
                           f"{self.dial_tone_latency_s * 1000:.0f} ms after lifting")
        for kind in self._detector.feed(frame):
            if kind in ("ringback", "busy") and kind not in self.heard:
                self.heard.append(kind)
                self.world.log("shop", f"hears {kind}")
                if kind == "busy":
                    self._busy.set()

    async def run(self) -> None:
        w = self.world
        shk = self.factory.pin(self.shk_pin)
        w.log("shop", "lifts the handset")
        self._lifted_at = time.monotonic()
        shk.drive_high()  # AG1171 SHK: high = off-hook
        try:
            await _wait(self._dial_tone, 5.0)
            w.log("shop", "dials", f"{self.number}# by DTMF")
            await asyncio.wait_for(self.mouth.say(dtmf_sequence(self.number + "#", 80, 80)),
                                   ACT_TIMEOUT_S)
            await _wait(w.cue("callee_greeted"))
            w.log("shop", "says", "news")
            await asyncio.wait_for(self.mouth.say(self.speech["shop_news"]), ACT_TIMEOUT_S)
            w.cue("shop_spoke").set()
            # The callee hangs up; the shop hears busy (or notices the call ended) and hangs up.
            done = asyncio.ensure_future(w.state("ended").wait())
            busy = asyncio.ensure_future(self._busy.wait())
            await asyncio.wait({done, busy}, timeout=ACT_TIMEOUT_S,
                               return_when=asyncio.FIRST_COMPLETED)
            for fut in (done, busy):
                fut.cancel()
        finally:
            w.log("shop", "hangs up")
            shk.drive_low()


class ScriptedCallee:
    """The customer: answers after one ringback burst, greets, listens, says goodbye, hangs up."""

    def __init__(self, modem: SimModem, world: World, speech: dict[str, np.ndarray]) -> None:
        self.modem = modem
        self.world = world
        self.speech = speech
        self.mouth = Mouth()
        modem.set_callee(SimCallee("answer", rings=1, source=self.mouth.read))

    async def run(self) -> None:
        w = self.world
        await self.modem.wait_callee_answered(ACT_TIMEOUT_S)
        w.log("callee", "answers", ", ".join(self.modem.dialled))
        w.log("callee", "says", "hello")
        await asyncio.wait_for(self.mouth.say(self.speech["callee_hello"]), ACT_TIMEOUT_S)
        w.cue("callee_greeted").set()
        await _wait(w.cue("shop_spoke"))
        w.log("callee", "says", "bye")
        await asyncio.wait_for(self.mouth.say(self.speech["callee_bye"]), ACT_TIMEOUT_S)
        w.log("callee", "hangs up")
        self.modem.remote_hangup()


async def run_outbound_demo(
    state_dir: Path,
    *,
    on_entry: Callable[[float, str, str, str], None] | None = None,
    config_extra: dict[str, Any] | None = None,
    profile: str = "conexant",
    number: str = DIALLED_NUMBER,
    line_echo: HybridSpec | None = DEMO_LINE_ECHO,
    handset_echo: HybridSpec | None = DEMO_HANDSET_ECHO,
) -> DemoResult:
    """Run one simulated outgoing call end to end; return its summary and timeline.

    ``line_echo`` / ``handset_echo``: the hybrids of the modem and of the SLIC, as in
    :func:`appliance.sim.demo.run_demo`.
    """
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    world = World(on_entry=on_entry)
    speech = await asyncio.to_thread(
        lambda: {k: render_speech(v, f0_hz=110.0 if k.startswith("callee") else 190.0,
                                  seed=len(k)) for k, v in LINES_OUT_HU.items()})
    server = PtyModemServer(SimModem(profile, echo=line_echo))
    path = await server.start()
    world.log("sim", "modem emulator on pty", path)
    config = demo_config(state_dir, "outbound", [path], config_extra)
    factory = MockFactory(pin_class=MockPWMPin)
    handset = SimHandsetAudio(echo=handset_echo)
    app = Application(config, pin_factory=factory, handset_audio=handset)
    app.observers.append(world.observe_call)
    t_start = time.monotonic()
    try:
        await app.start()
        await app.wait_ready(30.0)
        world.log("appliance", "ready", f"modem {server.sim.profile.name}")
        shop = ScriptedShop(world, pin_factory=factory, shk_pin=config.handset.shk_pin,
                            number=number, speech=speech)
        handset.connect_user(shop.mouth, shop.ear)
        callee = ScriptedCallee(server.sim, world, speech)
        actors = [asyncio.create_task(callee.run(), name="sim-callee"),
                  asyncio.create_task(shop.run(), name="sim-shop")]
        try:
            async with asyncio.timeout(DEMO_TIMEOUT_S):
                result = await app.outbound.completed.get()
            await asyncio.wait(actors, timeout=5.0)
        finally:
            for task in actors:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        reference = result.reference or ""
        row = app.store.get_call(reference) or {}
        events = app.store.events(reference) if reference else []
        pins = {
            name: [(round(t, 3), bool(s)) for t, s in _pin_history(factory, pin)]
            for name, pin in (("ring_rm", config.handset.rm_pin),
                              ("led_recording", config.panel.recording_pin),
                              ("led_line", config.panel.line_pin))
        }
        t0 = events[0]["t"] if events else 0.0
        rec = result.recording
        summary = {
            "scenario": "outbound",
            "line": result.line,
            "direction": row.get("direction", "out"),
            "reference": format_reference(reference) if reference else None,
            "reference_digits": reference or None,
            "caller_number": row.get("caller_number"),
            "caller_name": row.get("caller_name"),
            "dialled_number": result.number,
            "outcome": result.outcome,
            "result": result.outcome,
            "index_outcome": row.get("outcome"),
            "recording_decision": result.recording_decision,
            "notice_completed": bool(row.get("notice_completed")),
            "notice_version": row.get("notice_version"),
            "recording_path": rec.path if rec else None,
            "recording_sha256": rec.sha256 if rec else None,
            "recording_bytes": rec.bytes if rec else None,
            "recording_duration_s": rec.duration_s if rec else None,
            "duration_s": result.duration_s,
            "db_path": str(config.db_path),
            "modem": {"device": path, "profile": profile,
                      "commands": len(server.sim.commands), "dialled": list(server.sim.dialled)},
            "dial_tone_latency_ms": None if shop.dial_tone_latency_s is None
            else round(shop.dial_tone_latency_s * 1000, 1),
            "heard": list(shop.heard),
            "wall_time_s": round(time.monotonic() - t_start, 2),
            "speech_warning": app.speech_warning,
            "events": [{"t": round(e["t"] - t0, 3), "state": e["state"], "detail": e["detail"]}
                       for e in events],
            "pins": pins,
        }
        return DemoResult(summary=summary, timeline=world.timeline, summaries=[summary])
    finally:
        await app.stop()
        await server.stop()
        factory.close()
