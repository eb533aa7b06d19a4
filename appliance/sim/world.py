"""The simulated world: a scripted caller on the emulated line and a shop assistant on the
simulated handset.

They act only through the same signals real people produce: the caller through the modem
emulator (ring with caller ID, audio into the line, DTMF keys, hanging up) and the assistant
through the SLIC pins (lifting = SHK high, hanging up = SHK low; hearing the ringer = RM/F/R
activity) and the handset audio. Like actors following a screenplay, they cue each other
(the caller answers after the assistant's greeting) through :class:`World`; they also watch
the appliance's published call states, as a person would notice "the line is through".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from appliance.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE_HZ
from appliance.sim.modem.emulator import SimModem

_LOGGER = logging.getLogger(__name__)

#: ``details``: the caller presses the details key as the first layer of the notice ends,
#: hears the second layer, talks to the shop, and the shop hangs up first (the caller then
#: hears the reference and goodbye, and the box hangs up).
SCENARIOS: Final = ("answered", "declined", "abandoned", "voicemail", "details")

#: What the people in the simulation say (Hungarian, like the shop's callers).
LINES_HU: Final = {
    "agent_greeting": "Példa Bolt, tessék!",
    "caller_complaint": "Jó napot, a tegnap vett kávéfőző nem működik.",
    "agent_reply": "Hozza be, és kicseréljük.",
    "caller_bye": "Köszönöm, viszlát!",
    "caller_message": "Jó napot, Kovács Anna vagyok, kérem, hívjanak vissza.",
}

#: Polling period for watching the ringer pins (the assistant's ears, not the product).
PIN_POLL_S: Final = 0.01
ACT_TIMEOUT_S: Final = 120.0
#: How fast the simulated people (the caller, the shop) speak through espeak-ng: a shade
#: slower than the box's own prompts (``speech.espeak_wpm``), as people on a phone do.
SIM_PEOPLE_WPM: Final = 150


def voice_like_signal(seconds: float, *, f0_hz: float = 140.0, seed: int = 1) -> np.ndarray:
    """A speech-like test signal (harmonics of ``f0_hz`` in syllable bursts, ≈ −16 dBFS).

    Used when espeak-ng is not installed, so the simulation still has two distinguishable
    voices with pauses.
    """
    n = int(seconds * SAMPLE_RATE_HZ)
    t = np.arange(n) / SAMPLE_RATE_HZ
    rng = np.random.default_rng(seed)
    wobble = 1.0 + 0.05 * np.sin(2 * np.pi * 3.0 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * f0_hz * np.cumsum(wobble) / SAMPLE_RATE_HZ
    wave = np.sum([np.sin(k * phase) / k for k in range(1, 12)], axis=0)
    syllables = (np.sin(2 * np.pi * 4.0 * t) > -0.3).astype(float)
    out = 0.16 * wave * syllables / np.max(np.abs(wave))
    speech: np.ndarray = (out * 32767).astype(np.int16)
    return speech


def render_speech(text: str, *, f0_hz: float, seed: int) -> np.ndarray:
    """Speak ``text`` with espeak-ng (Hungarian), 8 kHz telephone audio; test signal fallback."""
    try:
        from appliance.speech.condition import condition_for_phone
        from appliance.speech.tts import EspeakEngine, espeak_available

        if espeak_available():
            audio, rate = EspeakEngine("hu", SIM_PEOPLE_WPM).synthesize(text)
            return condition_for_phone(audio, rate)
    except Exception as exc:  # the simulation must run even without a speech engine
        _LOGGER.warning("espeak-ng unavailable for the simulated people (%s); using a test signal",
                        exc)
    words = max(1, len(text.split()))
    return voice_like_signal(0.35 * words, f0_hz=f0_hz, seed=seed)


class Mouth:
    """A frame source that says queued utterances, then silence; each say() can be awaited."""

    def __init__(self) -> None:
        self._queue: deque[tuple[np.ndarray, asyncio.Future[None]]] = deque()
        self._pos = 0
        self.speaking = False

    def say(self, audio: np.ndarray) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((audio, done))
        return done

    def read(self, n: int = FRAME_SAMPLES) -> np.ndarray:
        out = np.zeros(n, dtype=np.int16)
        filled = 0
        while filled < n and self._queue:
            audio, done = self._queue[0]
            take = min(n - filled, len(audio) - self._pos)
            out[filled : filled + take] = audio[self._pos : self._pos + take]
            filled += take
            self._pos += take
            if self._pos >= len(audio):
                self._queue.popleft()
                self._pos = 0
                if not done.done():
                    done.set_result(None)
        self.speaking = bool(self._queue)
        return out


@dataclass
class World:
    """Shared cues and the timeline of what the people did.

    Call states are kept per line (``state(name, line)``), so two callers on two lines each
    follow their own call; ``bridged_lines`` tells the shop assistant which line it has just
    been put through to.
    """

    t0: float = field(default_factory=time.monotonic)
    timeline: list[tuple[float, str, str, str]] = field(default_factory=list)
    states: dict[str, asyncio.Event] = field(default_factory=dict)
    cues: dict[str, asyncio.Event] = field(default_factory=dict)
    bridged_lines: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    answered_at: dict[str, float] = field(default_factory=dict)
    on_entry: Callable[[float, str, str, str], None] | None = None

    def log(self, actor: str, what: str, detail: str = "") -> None:
        entry = (time.monotonic() - self.t0, actor, what, detail)
        self.timeline.append(entry)
        if self.on_entry is not None:
            self.on_entry(*entry)

    def state(self, name: str, line: str = "main") -> asyncio.Event:
        return self.states.setdefault(f"{line}:{name}", asyncio.Event())

    def cue(self, name: str, line: str = "main") -> asyncio.Event:
        return self.cues.setdefault(f"{line}:{name}", asyncio.Event())

    def observe_call(self, reference: str, state: str, detail: str,
                     line: str | None = None) -> None:
        """Observer for the appliance's published call states."""
        line = line or "main"
        self.log("appliance", state, f"[{line}] {detail}".rstrip())
        self.state(state, line).set()
        if state == "notice":
            # The box has just gone off-hook: the caller's wait for a person starts.
            self.answered_at[line] = time.monotonic()
        if state == "bridged":
            answered = self.answered_at.get(line)
            if answered is not None:
                self.log("caller", "reaches a person",
                         f"[{line}] {time.monotonic() - answered:.1f} s after the box answered")
            self.bridged_lines.put_nowait(line)


async def _wait(event: asyncio.Event, timeout_s: float = ACT_TIMEOUT_S) -> None:
    async with asyncio.timeout(timeout_s):
        await event.wait()


class ScriptedCaller:
    """A caller who rings with caller ID, listens, maybe presses keys, talks and hangs up."""

    def __init__(
        self,
        modem: SimModem,
        world: World,
        scenario: str,
        *,
        number: str = "+36301234567",
        name: str | None = "KOVACS ANNA",
        optout_key: str,
        details_key: str,
        details_at_s: float = 0.0,
        cid_before_first_ring: bool = True,
        line: str = "main",
        speech: dict[str, np.ndarray],
    ) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
        self.modem = modem
        self.world = world
        self.scenario = scenario
        self.number = number
        self.name = name
        self.optout_key = optout_key
        self.details_key = details_key
        #: ``details``: press the details key after hearing this much of the call's audio.
        self.details_at_s = details_at_s
        self.cid_before_first_ring = cid_before_first_ring
        self.line = line
        self.speech = speech
        self.mouth = Mouth()
        self.heard_samples = 0
        self.heard: list[np.ndarray] = []
        self._heard_enough: list[tuple[int, asyncio.Event]] = []

    def _ear(self, samples: np.ndarray, _t: float) -> None:
        self.heard_samples += len(samples)
        self.heard.append(samples.copy())
        for need, event in self._heard_enough:
            if self.heard_samples >= need:
                event.set()

    async def _hear_for(self, seconds: float) -> None:
        event = asyncio.Event()
        self._heard_enough.append((self.heard_samples + int(seconds * SAMPLE_RATE_HZ), event))
        await _wait(event)

    async def _say(self, key: str) -> None:
        self.world.log(self.actor, "says", key.replace("caller_", ""))
        await asyncio.wait_for(self.mouth.say(self.speech[key]), ACT_TIMEOUT_S)

    @property
    def actor(self) -> str:
        return "caller" if self.line == "main" else f"caller@{self.line}"

    def _hang_up(self) -> None:
        self.world.log(self.actor, "hangs up")
        self.modem.remote_hangup()

    async def run(self) -> None:
        w, line = self.world, self.line
        self.modem.set_caller_audio(self.mouth.read)
        self.modem.add_tx_listener(self._ear)
        w.log(self.actor, "dials", f"{self.number} ({self.name or 'no name'})")
        # ETSI EN 300 659 caller ID before the first ring (the European method; Hungary's is
        # unverified, docs/v253.md §7.7). The daemon also copes with CID after it.
        self.modem.ring(self.number, self.name, cid_before_first_ring=self.cid_before_first_ring)
        await self.modem.wait_off_hook(ACT_TIMEOUT_S)
        w.log(self.actor, "hears the box answer")
        if self.scenario == "abandoned":
            await self._hear_for(3.0)
            self._hang_up()
            return
        if self.scenario == "declined":
            await self._hear_for(2.5)
            w.log(self.actor, "presses", self.optout_key)
            self.modem.press_key(self.optout_key)
        if self.scenario == "details":
            await self._hear_for(self.details_at_s)
            w.log(self.actor, "presses", f"{self.details_key} (the details)")
            self.modem.press_key(self.details_key)
        if self.scenario == "voicemail":
            await _wait(w.state("voicemail-recording", line))
            await self._say("caller_message")
            self._hang_up()
            return
        await _wait(w.state("bridged", line))
        await _wait(w.cue("agent_greeted", line))
        await self._say("caller_complaint")
        w.cue("caller_spoke", line).set()
        await _wait(w.cue("agent_replied", line))
        await self._say("caller_bye")
        if self.scenario == "details":
            # The shop hangs up first; the caller stays and hears the reference and goodbye.
            w.cue("caller_said_bye", line).set()
            await _wait(w.state("ended", line))
            w.log(self.actor, "heard the box hang up")
            return
        self._hang_up()


class SimulatedAgent:
    """The shop assistant: lifts after N ring bursts, greets, answers, hangs up at the end."""

    def __init__(
        self,
        world: World,
        *,
        pin_factory: Any,
        rm_pin: int,
        shk_pin: int,
        lift_after_rings: int | None,
        speech: dict[str, np.ndarray],
        hangs_up_first: bool = False,
    ) -> None:
        self.world = world
        #: Put the phone down after the caller's goodbye, before the caller does.
        self.hangs_up_first = hangs_up_first
        self.factory = pin_factory
        self.rm_pin = rm_pin
        self.shk_pin = shk_pin
        self.lift_after_rings = lift_after_rings
        self.speech = speech
        self.mouth = Mouth()
        self.heard: list[np.ndarray] = []
        self.rings_heard = 0

    def ear(self, frame: np.ndarray) -> None:
        self.heard.append(frame)

    async def _count_rings(self, until: int) -> None:
        rm = self.factory.pin(self.rm_pin)
        last = bool(rm.state)
        while self.rings_heard < until:
            await asyncio.sleep(PIN_POLL_S)
            now = bool(rm.state)
            if now and not last:
                self.rings_heard += 1
                self.world.log("shop", "handset rings", f"burst {self.rings_heard}")
            last = now

    async def _say(self, key: str) -> None:
        self.world.log("shop", "says", key.replace("agent_", ""))
        await asyncio.wait_for(self.mouth.say(self.speech[key]), ACT_TIMEOUT_S)

    async def run(self, calls: int = 1) -> None:
        """Take ``calls`` calls one after the other (lift, talk, hang up)."""
        for _ in range(calls):
            if not await self._take_one_call():
                return

    async def _take_one_call(self) -> bool:
        w = self.world
        shk = self.factory.pin(self.shk_pin)
        if self.lift_after_rings is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._count_rings(10_000), ACT_TIMEOUT_S)
            return False
        ended = asyncio.ensure_future(self._all_ended())
        rings = asyncio.ensure_future(self._count_rings(self.rings_heard + self.lift_after_rings))
        await asyncio.wait({rings, ended}, timeout=ACT_TIMEOUT_S,
                           return_when=asyncio.FIRST_COMPLETED)
        lifted_in_time = rings.done() and not rings.cancelled() and not ended.done()
        for fut in (rings, ended):
            fut.cancel()
        if not lifted_in_time:
            return False  # the caller gave up before the shop got to the phone
        w.log("shop", "lifts the handset")
        shk.drive_high()  # AG1171 SHK: high = off-hook
        try:
            line = await asyncio.wait_for(w.bridged_lines.get(), ACT_TIMEOUT_S)
        except TimeoutError:
            shk.drive_low()
            return False
        try:
            if not w.state("ended", line).is_set():
                await self._say("agent_greeting")
                w.cue("agent_greeted", line).set()
                await _wait(w.cue("caller_spoke", line))
                await self._say("agent_reply")
                w.cue("agent_replied", line).set()
            if self.hangs_up_first:
                await _wait(w.cue("caller_said_bye", line))
                return True
            await _wait(w.state("finalizing", line))
        finally:
            w.log("shop", "hangs up")
            shk.drive_low()
        return True

    async def _all_ended(self) -> None:
        """Resolves when every call the world has seen has ended (nobody left to answer)."""
        while True:
            started = {k.split(":")[0] for k in self.world.states if k.endswith(":answering")}
            if started and all(self.world.state("ended", line).is_set() for line in started):
                return
            await asyncio.sleep(PIN_POLL_S)
