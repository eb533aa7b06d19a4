"""Whole calls through the real daemon, in this process, with instruments on both sides.

The stack is the demo's (appliance/sim/demo.py): :class:`~appliance.daemon.app.Application`
with its modems on real ptys served by the emulator (here :class:`BenchModem`) and opened by
pyserial, the AG1171 driver on gpiozero MockFactory pins, the in-memory handset audio. The
simulated people are replaced by measuring ones: the caller sends exact test noise with
marker bursts and listens for the shop's markers; the shop lifts when its handset rings
(during the notice), sends its own noise and markers and listens for the caller's.

Clock: every time stamp is the event loop's clock (``time.monotonic``) at the moment an
endpoint hands a frame over (emulator tick, handset card block — the simulated card's time for
that block, :meth:`SimHandsetAudio.time`), so the two directions are measured the same way. A
frame's first sample is taken to play at that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import soundfile

from appliance.audio.backend import HANDSET_PERIOD_MS, SimHandsetAudio
from appliance.bench.benchconfig import BENCH_NOTICE, bench_config
from appliance.bench.probes import (
    BenchModem,
    Continuity,
    MarkerDetector,
    TestSignal,
    check_continuity,
    first_tx_byte_s,
    match_latencies,
    notice_arrival_s,
)
from appliance.daemon.app import Application
from appliance.sim.modem.pty import PtyModemServer

_LOGGER = logging.getLogger(__name__)

#: One marker each way this often while bridged (longer than any plausible latency).
MARKER_PERIOD_S: Final = 0.5
#: After "bridged" is published, wait this long before sending noise and markers (the bridge
#: itself is switched a store write later, and clears the capture buffer when it is).
SETTLE_S: Final = 0.3
#: Upper bound for any one step of a call (ring → off-hook, → bridged, → finalized).
STEP_TIMEOUT_S: Final = 60.0
#: How often the shop's "ears" look at the ringer pin (the sim agent's polling period).
RING_POLL_S: Final = 0.01
#: Seconds nobody lifts before voicemail in the many-lines run.
LINES_AGENT_TIMEOUT_S: Final = 1.0

Progress = Callable[[str], None]


@dataclass(slots=True)
class CallFigures:
    """What one call measured (times in seconds, counts in samples/events)."""

    line: str
    reference: str | None = None
    outcome: str | None = None
    notice_latency_s: float | None = None
    first_tx_byte_s: float | None = None
    line_to_handset_s: list[float] = field(default_factory=list)
    handset_to_line_s: list[float] = field(default_factory=list)
    markers_sent: int = 0
    caller_channel: Continuity = field(default_factory=Continuity)
    shop_channel: Continuity | None = None
    modem_underruns: int = 0
    modem_late_ticks: int = 0
    earpiece_underruns: int = 0
    earpiece_overruns: int = 0
    capture_underruns: int = 0
    capture_overruns: int = 0
    #: Frames the level control shed (audio/buffers.py): each is 160 samples the shop's
    #: recorded channel (capture) or the earpiece lacks, on purpose.
    earpiece_shed: int = 0
    capture_shed: int = 0
    measured_s: float = 0.0
    recording_bytes: int | None = None
    recording_s: float | None = None


@dataclass(frozen=True, slots=True)
class FirstRingCall:
    """What :meth:`BenchStack.first_ring_call` measured (seconds, loop clock)."""

    reference: str
    #: ``notice_form`` of the call's row (``full``, ``short``).
    form: str | None
    #: Off-hook → bridged: the time to a person.
    to_human_s: float
    #: First RING → off-hook (the box answering).
    answer_s: float
    #: Off-hook → the shop lifting at its handset's first ring.
    shop_lifted_s: float | None


class BenchStack:
    """The daemon with ``lines`` emulated modems and the measuring people around it.

    Use as ``async with BenchStack(...) as stack``; then :meth:`bridged_call` /
    :meth:`voicemail_calls`.
    """

    def __init__(self, state_dir: Path, *, lines: int = 1, codec: str | None = None,
                 agent_timeout_s: float | None = None, voicemail_max_s: float | None = None,
                 notice: str | None = BENCH_NOTICE, returning_caller_days: int | None = None,
                 echo_cancel: bool | None = None) -> None:
        """Arguments left None keep the packaged default (see ``bench_config``)."""
        self.state_dir = state_dir
        self.n_lines = lines
        self.codec = codec
        self._notice = notice
        self._returning_caller_days = returning_caller_days
        #: Loop time at which each (line, state) was last published.
        self.state_at: dict[tuple[str, str], float] = {}
        self._agent_timeout_s = agent_timeout_s
        self._voicemail_max_s = voicemail_max_s
        self._echo_cancel = echo_cancel
        self.servers: list[PtyModemServer] = []
        self.modems: list[BenchModem] = []
        self._states: dict[tuple[str, str], asyncio.Event] = {}
        self._ref_line: dict[str, str] = {}
        self._loop = asyncio.get_running_loop()
        self.app: Application | None = None
        self._factory: Any = None

    async def __aenter__(self) -> BenchStack:
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        for _ in range(self.n_lines):
            modem = BenchModem("conexant")
            server = PtyModemServer(modem)
            await server.start()
            self.modems.append(modem)
            self.servers.append(server)
        self.config = bench_config(self.state_dir, [s.path for s in self.servers],
                                   codec=self.codec, agent_timeout_s=self._agent_timeout_s,
                                   voicemail_max_s=self._voicemail_max_s, notice=self._notice,
                                   returning_caller_days=self._returning_caller_days,
                                   echo_cancel=self._echo_cancel)
        self._factory = MockFactory(pin_class=MockPWMPin)
        # The handset modelled as its sound card runs (short periods, capture aligned to the
        # line's clock), not as the daemon's 20 ms sim:// timer.
        self.handset = SimHandsetAudio(period_ms=HANDSET_PERIOD_MS)
        self.app = Application(self.config, pin_factory=self._factory,
                               handset_audio=self.handset)
        self.app.observers.append(self._observe)
        await self.app.start()
        await self.app.wait_ready(30.0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.app is not None:
            await self.app.stop()
        for server in self.servers:
            await server.stop()
        if self._factory is not None:
            self._factory.close()

    # -- observation ---------------------------------------------------------------------

    def _observe(self, reference: str, state: str, detail: str) -> None:
        assert self.app is not None
        line = self._ref_line.get(reference)
        if line is None:
            for session in self.app.lines:
                if session.active is not None and session.active.call.reference == reference:
                    line = session.line.name
                    self._ref_line[reference] = line
        if line is not None:
            self.state_at[(line, state)] = self._loop.time()
            self._state(line, state).set()

    def _state(self, line: str, state: str) -> asyncio.Event:
        return self._states.setdefault((line, state), asyncio.Event())

    async def _wait_state(self, line: str, state: str) -> None:
        async with asyncio.timeout(STEP_TIMEOUT_S):
            await self._state(line, state).wait()

    def _reset_line(self, line: str) -> None:
        for key in [k for k in self._states if k[0] == line]:
            del self._states[key]

    # -- calls ---------------------------------------------------------------------------

    def _shk(self) -> Any:
        return self._factory.pin(self.config.handset.shk_pin)

    async def bridged_call(self, call_s: float) -> CallFigures:
        """One call on line 1: notice, the shop lifts during it, ``call_s`` bridged with
        markers both ways, the shop hangs up. Returns the call's figures."""
        assert self.app is not None
        app, modem, clock = self.app, self.modems[0], self._loop.time
        line = self.config.lines[0].name
        self._reset_line(line)
        fig = CallFigures(line=line)
        caller = TestSignal(101, clock)
        # The shop's side on its card's clock: a block is spoken/heard at the card's time for
        # it, however late the loop runs the simulated card (a line pulling catches it up).
        shop = TestSignal(202, self.handset.time, noise=False)
        line_ear = MarkerDetector(clock)
        shop_ear = MarkerDetector(self.handset.time)
        modem.set_caller_audio(caller.read)
        modem.add_tx_listener(line_ear.feed)
        self.handset.connect_user(shop, shop_ear.feed)
        session = app.lines[0]
        fmt = session.modem.voice_format if session.modem is not None else "u8"
        try:
            modem.ring("+36301234567", "BENCH ELEK", cid_before_first_ring=True)
            await self._wait_state(line, "notice")
            self._shk().drive_high()  # AG1171 SHK high = off-hook: the shop lifts
            await self._wait_state(line, "bridged")
            await asyncio.sleep(SETTLE_S)
            shop.start_noise()
            line_ear.armed = shop_ear.armed = True
            before = self._snapshot(0)
            t0 = clock()
            while clock() - t0 < call_s:
                caller.arm_marker()
                shop.arm_marker()
                fig.markers_sent += 1
                await asyncio.sleep(MARKER_PERIOD_S)
            fig.measured_s = clock() - t0
            self._diff(fig, before, self._snapshot(0))
            line_ear.armed = shop_ear.armed = False
            self._shk().drive_low()
            async with asyncio.timeout(STEP_TIMEOUT_S):
                result = await app.completed.get()
        finally:
            self._shk().drive_low()
            modem.remove_tx_listener(line_ear.feed)
            modem.set_caller_audio(None)
            self.handset.connect_user(None, None)
        fig.reference, fig.outcome = result.reference, result.outcome
        fig.notice_latency_s = notice_arrival_s(modem, app.prompts.notice, fmt)
        fig.first_tx_byte_s = first_tx_byte_s(modem)
        fig.line_to_handset_s = match_latencies(caller.markers, shop_ear.detections)
        fig.handset_to_line_s = match_latencies(shop.markers, line_ear.detections)
        if result.recording is not None:
            fig.recording_bytes = result.recording.bytes
            fig.recording_s = result.recording.duration_s
            audio = await asyncio.to_thread(_read_recording, Path(result.recording.path))
            fig.caller_channel = await asyncio.to_thread(check_continuity, audio[:, 0],
                                                         caller.stream())
            fig.shop_channel = await asyncio.to_thread(check_continuity, audio[:, 1],
                                                       shop.stream())
        return fig

    async def first_ring_call(self, number: str) -> FirstRingCall:
        """One call on line 1 from ``number``; the shop lifts at the first ring of its
        handset, the caller hangs up once through. Returns its times (loop clock)."""
        assert self.app is not None
        modem, line = self.modems[0], self.config.lines[0].name
        self._reset_line(line)
        lifted_at: list[float] = []
        shop = asyncio.create_task(self._lift_at_first_ring(lifted_at))
        try:
            rung_at = self._loop.time()
            modem.ring(number, "BENCH ELEK", cid_before_first_ring=True)
            await self._wait_state(line, "bridged")
            assert modem.off_hook_at is not None
            off_hook_at = modem.off_hook_at
            waited = self.state_at[(line, "bridged")] - off_hook_at
            modem.remote_hangup()
            async with asyncio.timeout(STEP_TIMEOUT_S):
                result = await self.app.completed.get()
        finally:
            shop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await shop
            self._shk().drive_low()
        # The shop has put the phone down only once the SLIC says so (its on-hook debounce):
        # a call ringing before that would find the handset still off-hook.
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while self.app.slic.off_hook:  # noqa: ASYNC110 - the SLIC's state, no event
                await asyncio.sleep(RING_POLL_S)
        row = self.app.store.get_call(result.reference) or {}
        return FirstRingCall(
            reference=result.reference, form=row.get("notice_form"), to_human_s=waited,
            answer_s=off_hook_at - rung_at,
            shop_lifted_s=lifted_at[0] - off_hook_at if lifted_at else None)

    def counter_of(self, reference: str) -> int:
        """The call counter this stack's device issues ``reference`` for."""
        from appliance.daemon.storage import load_or_create_key
        from appliance.reference import ReferenceCipher

        key = load_or_create_key(self.config.device.state_dir)
        return ReferenceCipher(key).counter_of(reference)

    def issue_next(self, reference: str) -> None:
        """Make ``reference`` the next call's, for measuring a chosen reference's length: the
        counter's high-water mark is set just below its counter, and the daemon never issues
        a counter at or below the mark (appliance/store/highwater.py).

        Raises:
            ValueError: its counter is not above the last one issued (a counter is never
                issued twice).
        """
        from appliance.store.highwater import read_mark, write_mark

        assert self.app is not None
        state_dir = self.config.device.state_dir
        counter = self.counter_of(reference)
        issued = max(read_mark(state_dir) or 0, self.app.store.counter())
        if counter <= issued:
            raise ValueError(f"reference {reference} has counter {counter}, already issued "
                             f"(last {issued})")
        write_mark(state_dir, counter - 1)

    async def _lift_at_first_ring(self, lifted_at: list[float]) -> None:
        """The shop: off-hook (SHK high) at the first rising edge of the ringer's RM pin;
        appends the loop time to ``lifted_at``."""
        rm = self._factory.pin(self.config.handset.rm_pin)
        while not rm.state:  # noqa: ASYNC110 - a pin, polled like the sim agent hears it
            await asyncio.sleep(RING_POLL_S)
        lifted_at.append(self._loop.time())
        self._shk().drive_high()

    async def voicemail_calls(self, call_s: float) -> list[CallFigures]:
        """One call on every line at once; nobody lifts, so each call records the caller for
        ``call_s`` after the notice (voicemail, or held while the one shared handset is
        busy), then the caller hangs up. Returns per-line figures."""
        assert self.app is not None
        clock = self._loop.time
        callers = [TestSignal(300 + i, clock) for i in range(self.n_lines)]

        async def one(i: int) -> CallFigures:
            assert self.app is not None
            modem = self.modems[i]
            line = self.config.lines[i].name
            self._reset_line(line)
            fig = CallFigures(line=line)
            caller = callers[i]
            modem.set_caller_audio(caller.read)
            modem.ring(f"+3630{i:07d}", None, cid_before_first_ring=True)
            # Recording starts after the notice whatever follows (voicemail, or holding while
            # the one handset is busy), so that is where the measured span begins.
            await self._wait_state(line, "recording-started")
            before = self._snapshot(i)
            t0 = clock()
            await asyncio.sleep(call_s)
            fig.measured_s = clock() - t0
            self._diff(fig, before, self._snapshot(i))
            modem.remote_hangup()
            await self._wait_state(line, "ended")
            fig.caller_channel = Continuity()
            return fig

        figs = await asyncio.gather(*(one(i) for i in range(self.n_lines)))
        # Results arrive in completion order; pair them with lines by reference.
        by_line = {f.line: f for f in figs}
        for _ in figs:
            async with asyncio.timeout(STEP_TIMEOUT_S):
                result = await self.app.completed.get()
            line = self._ref_line.get(result.reference)
            if line in by_line:
                fig = by_line[line]
                fig.reference, fig.outcome = result.reference, result.outcome
                if result.recording is not None:
                    fig.recording_bytes = result.recording.bytes
                    fig.recording_s = result.recording.duration_s
                    audio = await asyncio.to_thread(_read_recording,
                                                    Path(result.recording.path))
                    index = [c.name for c in self.config.lines].index(line)
                    fig.caller_channel = await asyncio.to_thread(
                        check_continuity, audio[:, 0], callers[index].stream())
        for modem in self.modems:
            modem.set_caller_audio(None)
        return list(figs)

    def _snapshot(self, i: int) -> dict[str, int]:
        assert self.app is not None
        modem = self.modems[i]
        session = self.app.lines[i]
        capture = session.active.media.capture_stats if session.active is not None else {}
        return {
            "modem_underruns": modem.stats["underruns"],
            "modem_late_ticks": modem.stats["late_ticks"],
            "earpiece_underruns": self.handset.stats["underruns"],
            "earpiece_overruns": self.handset.stats["overruns"],
            "capture_underruns": capture.get("underruns", 0),
            "capture_overruns": capture.get("overruns", 0),
            "earpiece_shed": self.handset.stats["shed"],
            "capture_shed": capture.get("shed", 0),
        }

    @staticmethod
    def _diff(fig: CallFigures, before: dict[str, int], after: dict[str, int]) -> None:
        for key, value in after.items():
            setattr(fig, key, value - before[key])


def _read_recording(path: Path) -> np.ndarray:
    audio: np.ndarray
    audio, _rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    return audio


async def measure_reference_assembly(app: Application, samples: int = 200) -> list[float]:
    """Seconds to assemble the spoken reference for ``samples`` fresh references."""
    from appliance.reference import make_reference

    key = b"bench-key-0123456789abcdef"
    out = []
    for counter in range(1, samples + 1):
        ref = make_reference(counter * 7919 % 9_999_999, key)
        t0 = time.perf_counter()
        app.prompts.reference_audio(ref)
        out.append(time.perf_counter() - t0)
    return out


async def measure_reference_allocation(app: Application, samples: int = 20) -> list[float]:
    """Seconds for ``allocate_reference`` (durable counter write + permutation)."""
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        await app.allocate_reference()
        out.append(time.perf_counter() - t0)
    return out


async def run_bridged_calls(state_dir: Path, calls: int, call_s: float, *,
                            progress: Progress) -> tuple[list[CallFigures], dict[str, list[float]]]:
    """``calls`` bridged calls on one line, plus reference assembly/allocation timings."""
    async with BenchStack(state_dir / "calls", lines=1) as stack:
        assert stack.app is not None
        timings = {
            "assembly": await measure_reference_assembly(stack.app),
            "allocation": await measure_reference_allocation(stack.app),
        }
        figures = []
        for n in range(calls):
            progress(f"call {n + 1}/{calls}: {call_s:.0f} s bridged with markers")
            figures.append(await stack.bridged_call(call_s))
    return figures, timings


async def run_lines(state_dir: Path, max_lines: int, call_s: float, *,
                    progress: Progress) -> dict[int, list[CallFigures] | str]:
    """Simultaneous voicemail calls on 2, 4, … up to ``max_lines`` lines; stops at the first
    level with an underrun, dropped or duplicated sample, or an error.

    A level that raises (a step timing out on an overloaded machine) is that level's result,
    as ``repr`` of the exception: the section reports it and never ends in the exception.
    """
    levels = []
    n = 2
    while n < max_lines:
        levels.append(n)
        n *= 2
    if max_lines >= 2:
        levels.append(max_lines)
    out: dict[int, list[CallFigures] | str] = {}
    for n in levels:
        progress(f"{n} lines at once: {call_s:.0f} s voicemail each")
        try:
            # Cancellers off: the caller channel is compared sample for sample (bench_config).
            async with BenchStack(state_dir / f"lines{n}", lines=n,
                                  agent_timeout_s=LINES_AGENT_TIMEOUT_S,
                                  voicemail_max_s=call_s + 30.0, echo_cancel=False) as stack:
                figs = await stack.voicemail_calls(call_s)
        except Exception as exc:  # the level failed; the figure says how
            _LOGGER.warning("%d lines at once failed: %r", n, exc)
            out[n] = repr(exc)
            break
        out[n] = figs
        if not all(clean(f) for f in figs):
            break
    return out


class CpuHog:
    """A process that keeps one core busy (``while True: pass``) while the ``with`` lasts.

    The lines run under load with it: on the appliance the archive, a web page or a backup
    may take a core at any time.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> CpuHog:
        self._proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()


def clean(fig: CallFigures) -> bool:
    """True when the call had no underrun, overrun, drop, repeat or padding."""
    channels = [fig.caller_channel] + ([fig.shop_channel] if fig.shop_channel else [])
    # The earpiece and the shop's capture count only when the shop is on the call: with
    # several lines in voicemail every call still feeds the one shared earpiece.
    handset_ok = fig.shop_channel is None or (
        fig.capture_underruns == 0 and fig.capture_overruns == 0
        and fig.earpiece_underruns == 0 and fig.earpiece_overruns == 0)
    return (fig.modem_underruns == 0 and handset_ok
            and all(c.aligned and not (c.dropped or c.duplicated or c.inserted or c.mismatched)
                    for c in channels))

