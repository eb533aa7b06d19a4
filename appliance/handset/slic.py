"""AG1171 ringing-SLIC driver: ringing with cadence, ring-trip, hook, flash and pulse digits.

The Silvertel Ag1171 (or a KS0835F clone) powers and rings the shop's handset. It has three
logic pins (hw/ag1171.md §1.1):

* **RM** (ringing mode, output): H only while a ring burst is on; the RM duty cycle must stay
  ≤ 33 % (datasheet absolute maximum, §1.2).
* **F/R** (forward/reverse, output): H = forward polarity (idle); toggled at the ring frequency
  during a burst to make the ringing signal (§1.3).
* **SHK** (switch hook, input): H = off-hook; pulses during pulse dialling and on ring-trip, so it
  is debounced (10 ms, §1.2/§2).

All methods run on the asyncio event loop. gpiozero calls the SHK edge callbacks on its own thread;
they only read the time of the edge and post both to the loop with
``loop.call_soon_threadsafe`` (docs/architecture.md, concurrency 3). Debounce, the hook state
machine and every timer run on the loop (``loop.call_later``), so tests drive SHK with
``MockPin.drive_high()/drive_low()`` and await events from :attr:`Slic.events` with a timeout.
Debounce and classification use the edges' own times, never the time the loop got round to
them: a loop that is 30 ms late must not merge a 20 ms dial pulse into a glitch.

Break classification of the debounced SHK while off-hook (hw/ag1171.md §2, "Synthesis"):

=====================================  =========================================
break (SHK low) duration                meaning
=====================================  =========================================
< ``pulse_max_break_s`` (0.1 s)         one dial pulse; a make > ``interdigit_s``
                                        ends the digit (10 pulses = "0")
< ``flash_max_s`` (0.5 s)               hook flash (register recall)
≥ ``on_hook_after_s`` (0.5 s)           on-hook (hang-up)
=====================================  =========================================
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from gpiozero import DigitalInputDevice, DigitalOutputDevice
from gpiozero.pins import Factory

_LOGGER = logging.getLogger(__name__)

#: Datasheet absolute maximum for the RM (ringing mode) duty cycle (hw/ag1171.md §1.2).
RM_DUTY_MAX: Final = 0.33
#: Ring frequency window whose edge slopes the Ag1171 is designed for (hw/ag1171.md §1.2).
RING_HZ_MIN: Final = 20.0
RING_HZ_MAX: Final = 25.0
#: Ring-trip: RM must go low more than 10 ms and less than 500 ms after F/R is set H (§1.3).
RING_TRIP_GAP_MIN_S: Final = 0.010
RING_TRIP_GAP_MAX_S: Final = 0.500
#: Default ring-trip gap: comfortably inside the datasheet window even with loop jitter.
RING_TRIP_GAP_S: Final = 0.050
#: More than 10 pulses cannot be a digit (10 pulses = "0").
MAX_PULSES: Final = 10

HookKind = Literal["off_hook", "on_hook", "flash", "digit"]


@dataclass(frozen=True, slots=True)
class SlicPins:
    """BCM GPIO numbers wired to the SLIC (``handset.*_pin``; the pin map is in ``hw/``)."""

    rm: int
    """Ringing mode output (H only during a ring burst)."""
    fr: int
    """Forward/reverse output (H = forward; toggled to ring)."""
    shk: int
    """Switch-hook input (H = off-hook)."""


@dataclass(frozen=True, slots=True)
class RingCadence:
    """A ring cadence: bursts of ``on_s`` separated by ``off_s`` of silence.

    The default is the Hungarian ringing cadence 1.25 s / 3.75 s (Asterisk ``[hu]``
    ``ringcadence=1250,3750``, hw/ag1171.md §3), an RM duty of 25 %.

    Raises:
        ValueError: if ``on_s`` ≤ 0, ``off_s`` < 0 or the RM duty cycle
            ``on_s / (on_s + off_s)`` exceeds 33 % (Ag1171 absolute maximum, hw/ag1171.md §1.2).
    """

    on_s: float = 1.25
    """Length of one ring burst (RM high, F/R toggling), seconds."""
    off_s: float = 3.75
    """Silence between bursts (RM low, F/R high), seconds."""

    def __post_init__(self) -> None:
        if self.on_s <= 0 or self.off_s < 0:
            raise ValueError(f"ring cadence needs on_s > 0 and off_s >= 0, got {self!r}")
        if self.duty > RM_DUTY_MAX:
            raise ValueError(
                f"ring cadence {self.on_s}/{self.off_s} s has RM duty {self.duty:.0%}; "
                f"the Ag1171 allows at most {RM_DUTY_MAX:.0%}"
            )

    @property
    def duty(self) -> float:
        """RM duty cycle of this cadence (0…1)."""
        return self.on_s / (self.on_s + self.off_s)


#: The Hungarian cadence (the default of :class:`RingCadence`).
HUNGARIAN_RING_CADENCE: Final = RingCadence()
#: Two short bursts: a distinctive "owner, look here" ring (duty 25 %).
SHORT_RING_CADENCE: Final = RingCadence(on_s=0.2, off_s=0.6)
SHORT_RING_BURSTS: Final = 2


@dataclass(frozen=True, slots=True)
class HookEvent:
    """Something the handset did, as recognised from the debounced SHK line.

    ``kind`` is ``"off_hook"``, ``"on_hook"``, ``"flash"`` or ``"digit"`` (then ``digit`` is
    ``"0"``…``"9"``); ``t`` is the loop time (``loop.time()``) at which the event was recognised.
    """

    kind: HookKind
    t: float
    digit: str | None = field(default=None)


class Slic:
    """AG1171 driver.

    Methods run on the event loop; pin callbacks arrive on gpiozero's thread and are posted to
    the loop. Pins are claimed in :meth:`start` and released in :meth:`close`; after ``start``
    F/R idles HIGH (forward polarity) and RM LOW.

    Attributes:
        events: hook events in the order they were recognised (unbounded).
        rings_started: ring bursts begun since the last :meth:`start_ringing`/:meth:`short_ring`.
    """

    def __init__(
        self,
        pins: SlicPins,
        *,
        pin_factory: Factory | None,
        ring_hz: float,
        debounce_s: float = 0.010,
        on_hook_after_s: float = 0.5,
        pulse_max_break_s: float = 0.1,
        flash_max_s: float = 0.5,
        interdigit_s: float = 0.3,
        ring_trip_gap_s: float = RING_TRIP_GAP_S,
        edge_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Configure the driver (no pin is touched until :meth:`start`).

        Args:
            pins: GPIO numbers.
            pin_factory: gpiozero pin factory (``MockFactory`` in tests, lgpio on the Pi);
                ``None`` means gpiozero's default selection.
            ring_hz: ringing frequency; F/R toggles at twice this rate (20–25 Hz, §1.2;
                25 Hz assumed for Hungary, UNVERIFIED §5).
            debounce_s: SHK must be stable this long before a level counts (10 ms, §1.2).
            on_hook_after_s: a break at least this long is a hang-up (blue_pot 500 ms, §2).
            pulse_max_break_s: a shorter break is a dial pulse (blue_pot ≤ 100 ms, §2).
            flash_max_s: a break shorter than this (and not a pulse) is a hook flash;
                must be ≤ ``on_hook_after_s``; breaks between the two are ignored.
            interdigit_s: a make (SHK high) longer than this ends a pulse digit.
            ring_trip_gap_s: delay between F/R high and RM low on ring-trip (10–500 ms, §1.3).
            edge_clock: read on gpiozero's thread when SHK changes: the edge's time, on the
                event loop's clock (asyncio's default loop runs on ``time.monotonic``).
                Tests that script edges pass a clock that returns each edge's intended time.

        Raises:
            ValueError: if the timings are inconsistent or outside the datasheet windows.
        """
        if not RING_HZ_MIN <= ring_hz <= RING_HZ_MAX:
            raise ValueError(f"ring_hz {ring_hz} outside the Ag1171 20–25 Hz window")
        if not 0 < pulse_max_break_s <= flash_max_s <= on_hook_after_s:
            raise ValueError(
                "need 0 < pulse_max_break_s <= flash_max_s <= on_hook_after_s, got "
                f"{pulse_max_break_s}, {flash_max_s}, {on_hook_after_s}"
            )
        if debounce_s < 0 or interdigit_s <= 0:
            raise ValueError("debounce_s must be >= 0 and interdigit_s > 0")
        if not RING_TRIP_GAP_MIN_S < ring_trip_gap_s < RING_TRIP_GAP_MAX_S:
            raise ValueError(f"ring_trip_gap_s {ring_trip_gap_s} outside (10 ms, 500 ms)")
        self._pins = pins
        self._pin_factory = pin_factory
        self._ring_hz = ring_hz
        self._debounce_s = debounce_s
        self._on_hook_after_s = on_hook_after_s
        self._pulse_max_break_s = pulse_max_break_s
        self._flash_max_s = flash_max_s
        self._interdigit_s = interdigit_s
        self._ring_trip_gap_s = ring_trip_gap_s

        self.events: asyncio.Queue[HookEvent] = asyncio.Queue()
        self.rings_started = 0

        self._loop: asyncio.AbstractEventLoop | None = None
        self._rm: DigitalOutputDevice | None = None
        self._fr: DigitalOutputDevice | None = None
        self._shk: DigitalInputDevice | None = None

        self._edge_clock = edge_clock
        # Debounce: the raw edge not yet stable for debounce_s (level, time) and its timer.
        self._pending_edge: tuple[bool, float] | None = None
        self._settle_timer: asyncio.TimerHandle | None = None
        # Hook state machine (debounced).
        self._level = False
        self._off_hook = False
        self._break_t: float | None = None
        self._pulses = 0
        self._on_hook_timer: asyncio.TimerHandle | None = None
        self._interdigit_timer: asyncio.TimerHandle | None = None
        # Ringing.
        self._ring_task: asyncio.Task[None] | None = None
        self._trip_task: asyncio.Task[None] | None = None
        self._burst_t: float | None = None
        self._ring_ok_at = 0.0

    # ------------------------------------------------------------------ lifetime

    async def start(self) -> None:
        """Claim the pins: F/R HIGH (forward), RM LOW; read the initial hook state.

        If the handset is already off-hook, an ``off_hook`` event is posted.
        """
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        # F/R idles H = forward polarity per the datasheet (§1.1; idle level UNVERIFIED, §1.5).
        self._fr = DigitalOutputDevice(
            self._pins.fr, initial_value=True, pin_factory=self._pin_factory
        )
        self._rm = DigitalOutputDevice(
            self._pins.rm, initial_value=False, pin_factory=self._pin_factory
        )
        # SHK has an internal 3.3 kΩ pull-up in the SLIC (§1.2): leave the Pi pin floating.
        # No gpiozero bounce_time: MockPin ignores it ("XXX Need to implement this" in
        # gpiozero/pins/mock.py), so we debounce on the loop where tests can exercise it.
        self._shk = DigitalInputDevice(
            self._pins.shk,
            pull_up=None,
            active_state=True,
            bounce_time=None,
            pin_factory=self._pin_factory,
        )
        self._level = bool(self._shk.is_active)
        if self._level:
            self._off_hook = True
            self._post("off_hook")
        self._shk.when_activated = self._on_shk_high_thread
        self._shk.when_deactivated = self._on_shk_low_thread
        _LOGGER.info("SLIC started (RM=%d F/R=%d SHK=%d)", *self._pin_numbers())

    async def close(self) -> None:
        """Stop ringing (F/R high, RM low), cancel timers and release the pins. Idempotent."""
        if self._loop is None:
            return
        if self._shk is not None:
            self._shk.when_activated = None
            self._shk.when_deactivated = None
        await self.stop_ringing()
        for timer in (self._settle_timer, self._on_hook_timer, self._interdigit_timer):
            if timer is not None:
                timer.cancel()
        self._settle_timer = self._on_hook_timer = self._interdigit_timer = None
        for dev in (self._shk, self._rm, self._fr):
            if dev is not None:
                dev.close()
        self._shk = self._rm = self._fr = None
        self._loop = None
        _LOGGER.info("SLIC closed")

    # ------------------------------------------------------------------ state

    @property
    def off_hook(self) -> bool:
        """True while the handset is off-hook (debounced; short breaks do not clear it)."""
        return self._off_hook

    @property
    def ringing(self) -> bool:
        """True while a cadence runs or a ring-trip is still completing."""
        return any(t is not None and not t.done() for t in (self._ring_task, self._trip_task))

    # ------------------------------------------------------------------ ringing

    def start_ringing(
        self, cadence: RingCadence = HUNGARIAN_RING_CADENCE, *, bursts: int | None = None
    ) -> None:
        """Ring the handset with ``cadence``: ``bursts`` bursts, or until stopped/answered.

        A running cadence is replaced. Never rings while off-hook: the call is ignored (with a
        warning) if the handset is off-hook, and lifting it ends the cadence (ring-trip).
        Consecutive bursts are spaced so that RM duty never exceeds 33 %, even across calls.

        Raises:
            RuntimeError: if the driver is not started.
        """
        loop = self._require_started()
        if self._off_hook:
            _LOGGER.warning("not ringing: handset is off-hook")
            return
        if bursts is not None and bursts < 1:
            raise ValueError(f"bursts must be >= 1 or None, got {bursts}")
        self._cancel_cadence()
        if self._rm is not None and self._rm.value and self._trip_task is None:
            self._end_burst()  # replacing a cadence mid-burst: end it in the datasheet order
        self.rings_started = 0
        self._ring_task = loop.create_task(
            self._run_cadence(cadence, bursts), name="slic-ring-cadence"
        )

    def short_ring(self) -> None:
        """A short distinctive ring to get the owner's attention (two 0.2 s bursts)."""
        self.start_ringing(SHORT_RING_CADENCE, bursts=SHORT_RING_BURSTS)

    async def stop_ringing(self) -> None:
        """Stop ringing: F/R high, then RM low (ring-trip order, §1.3).

        If a ring-trip is in progress, waits for it so RM still drops > 10 ms after F/R.
        """
        task = self._ring_task
        self._cancel_cadence()
        if task is not None:
            # asyncio.wait does not re-raise the task's CancelledError, so our own
            # cancellation still propagates.
            await asyncio.wait({task})
        if self._trip_task is not None:
            await asyncio.wait({self._trip_task})
        elif self._rm is not None and self._rm.value:
            self._end_burst()

    async def ringing_finished(self) -> None:
        """Wait until the cadence has ended (bursts done, stopped or ring-tripped) and RM is low."""
        for task in (self._ring_task, self._trip_task):
            if task is not None:
                await asyncio.wait({task})
        # A ring-trip may have started while we waited for the cadence task.
        if self._trip_task is not None:
            await asyncio.wait({self._trip_task})

    async def _run_cadence(self, cadence: RingCadence, bursts: int | None) -> None:
        """Cadence task: burst, silence, repeat. Never touches pins after being cancelled:
        whoever cancels (stop_ringing or ring-trip) sets F/R and RM in the right order."""
        loop = self._require_started()
        n = 0
        while bursts is None or n < bursts:
            wait_s = self._ring_ok_at - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            if self._off_hook:
                break
            self._begin_burst()
            n += 1
            await asyncio.sleep(cadence.on_s)
            self._end_burst()
            if bursts is not None and n >= bursts:
                break
            await asyncio.sleep(cadence.off_s)
        _LOGGER.debug("ring cadence done after %d bursts", n)

    def _begin_burst(self) -> None:
        """RM high, then toggle F/R at ring_hz on gpiozero's blink thread (§1.3)."""
        assert self._rm is not None
        assert self._fr is not None
        assert self._loop is not None
        self.rings_started += 1
        self._burst_t = self._loop.time()
        self._rm.on()
        half_period_s = 1.0 / (2.0 * self._ring_hz)
        self._fr.blink(on_time=half_period_s, off_time=half_period_s, background=True)
        _LOGGER.debug("ring burst %d", self.rings_started)

    def _end_burst(self) -> None:
        """End of burst: F/R permanently high, then RM low (§1.3)."""
        assert self._rm is not None
        assert self._fr is not None
        self._fr.on()  # stops the blink thread, F/R = H (forward)
        self._rm.off()
        self._note_rm_low()

    def _note_rm_low(self) -> None:
        """Remember when the next burst may start so RM duty stays ≤ 33 % (§1.2)."""
        assert self._loop is not None
        if self._burst_t is None:
            return
        now = self._loop.time()
        burst_s = now - self._burst_t
        self._ring_ok_at = now + burst_s * (1.0 / RM_DUTY_MAX - 1.0)
        self._burst_t = None

    def _cancel_cadence(self) -> None:
        if self._ring_task is not None and not self._ring_task.done():
            self._ring_task.cancel()

    def _ring_trip(self) -> None:
        """Handset lifted during a burst: F/R high now, RM low after the trip gap (§1.3)."""
        assert self._fr is not None
        assert self._loop is not None
        self._cancel_cadence()
        self._fr.on()
        self._trip_task = self._loop.create_task(self._finish_trip(), name="slic-ring-trip")
        _LOGGER.info("ring-trip: F/R high, RM low in %.0f ms", self._ring_trip_gap_s * 1000)

    async def _finish_trip(self) -> None:
        try:
            await asyncio.sleep(self._ring_trip_gap_s)
        finally:
            # Even when cancelled (close), RM must not stay high.
            if self._rm is not None:
                self._rm.off()
                self._note_rm_low()
            self._trip_task = None

    # ------------------------------------------------------------------ SHK edges

    def _on_shk_high_thread(self) -> None:
        """gpiozero thread: post the edge and its time to the loop (docs/architecture.md,
        concurrency 3)."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._on_raw_edge, True, self._edge_clock())

    def _on_shk_low_thread(self) -> None:
        """gpiozero thread: post the edge and its time to the loop (docs/architecture.md,
        concurrency 3)."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._on_raw_edge, False, self._edge_clock())

    def _on_raw_edge(self, level: bool, edge_t: float) -> None:
        """Loop: a raw SHK edge at ``edge_t``; a level counts once stable for debounce_s.

        Stability is judged from the edges' times, so edges that reach a late loop together
        are still told apart: the pending edge counts if this one came debounce_s or more
        after it, and was a glitch otherwise.
        """
        if self._loop is None:
            return
        if self._settle_timer is not None:
            self._settle_timer.cancel()
            self._settle_timer = None
        pending, self._pending_edge = self._pending_edge, None
        if pending is not None and edge_t - pending[1] >= self._debounce_s:
            self._apply_level(*pending)
        if level == self._level:
            return  # back to the counted level: the pending edge (if any) was a glitch
        self._pending_edge = (level, edge_t)
        delay_s = max(0.0, edge_t + self._debounce_s - self._loop.time())
        self._settle_timer = self._loop.call_later(delay_s, self._settle)

    def _settle(self) -> None:
        """Loop: the pending edge stayed stable for debounce_s; it counts."""
        self._settle_timer = None
        pending, self._pending_edge = self._pending_edge, None
        if pending is not None:
            self._apply_level(*pending)

    def _apply_level(self, level: bool, edge_t: float) -> None:
        """A debounced level change; durations run from raw edge times, so the debounce
        delay does not bias pulse/flash classification."""
        if level == self._level:
            return
        self._level = level
        if level:
            self._on_make(edge_t)
        else:
            self._on_break(edge_t)

    def _on_make(self, edge_t: float) -> None:
        """Debounced SHK H: off-hook, or the end of a break (pulse / flash)."""
        assert self._loop is not None
        if not self._off_hook:
            self._off_hook = True
            if self._rm is not None and self._rm.value:
                self._ring_trip()
            else:
                self._cancel_cadence()  # lifted between bursts: just stop the cadence
            self._post("off_hook")
            return
        if self._break_t is None:
            return
        break_s = edge_t - self._break_t
        self._break_t = None
        if self._on_hook_timer is not None:
            self._on_hook_timer.cancel()
            self._on_hook_timer = None
        if break_s < self._pulse_max_break_s:
            self._pulses += 1
            delay_s = max(0.0, edge_t + self._interdigit_s - self._loop.time())
            self._interdigit_timer = self._loop.call_later(delay_s, self._end_digit)
        elif break_s < self._flash_max_s:
            self._end_digit()
            self._post("flash")
        else:
            self._end_digit()
            _LOGGER.debug("ignored %.0f ms break (neither flash nor on-hook)", break_s * 1000)

    def _on_break(self, edge_t: float) -> None:
        """Debounced SHK L while off-hook: start timing the break."""
        assert self._loop is not None
        if not self._off_hook:
            return
        self._break_t = edge_t
        if self._interdigit_timer is not None:
            self._interdigit_timer.cancel()
            self._interdigit_timer = None
        delay_s = max(0.0, edge_t + self._on_hook_after_s - self._loop.time())
        self._on_hook_timer = self._loop.call_later(delay_s, self._went_on_hook)

    def _went_on_hook(self) -> None:
        self._on_hook_timer = None
        self._break_t = None
        self._end_digit()
        self._off_hook = False
        self._post("on_hook")

    def _end_digit(self) -> None:
        """Emit the pending pulse digit, if any (10 pulses = "0")."""
        self._interdigit_timer = None
        pulses, self._pulses = self._pulses, 0
        if pulses == 0:
            return
        if pulses > MAX_PULSES:
            _LOGGER.warning("dropped pulse train of %d pulses (max %d)", pulses, MAX_PULSES)
            return
        self._post("digit", str(pulses % MAX_PULSES))

    # ------------------------------------------------------------------ helpers

    def _post(self, kind: HookKind, digit: str | None = None) -> None:
        assert self._loop is not None
        event = HookEvent(kind=kind, t=self._loop.time(), digit=digit)
        _LOGGER.debug("hook event %s %s", kind, digit or "")
        self.events.put_nowait(event)

    def _require_started(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("Slic not started")
        return self._loop

    def _pin_numbers(self) -> tuple[int, int, int]:
        return (self._pins.rm, self._pins.fr, self._pins.shk)
