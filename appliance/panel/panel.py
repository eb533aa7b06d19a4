"""Front panel: four LEDs (ready, line, recording, fault) and one push button, on gpiozero.

LED patterns run on gpiozero's own threads (``LED.blink(background=True)`` and, for the fault blink
codes, ``LED.source`` fed from an endless value cycle); the event loop only calls those non-blocking
setters (docs/architecture.md, concurrency 3). The button's edge callbacks arrive on gpiozero's
thread and are posted to the loop with ``loop.call_soon_threadsafe``; debounce and the long-press
timer run on the loop (``loop.call_later``).

LED patterns per panel state (``LED_PATTERNS``; the lead copies this table into the docs):

| State           | ready          | line                         | fault                  |
|-----------------|----------------|------------------------------|------------------------|
| `STARTING`      | blink 0.5/0.5  | off                          | fault code, else off   |
| `IDLE`          | on             | off                          | fault code, else off   |
| `RINGING`       | on             | blink 1.25/3.75 (ring cadence) | fault code, else off |
| `NOTICE`        | on             | blink 0.25/0.25 (fast)       | fault code, else off   |
| `WAITING_AGENT` | on             | blink 1.25/3.75 (ring cadence) | fault code, else off |
| `IN_CALL`       | on             | on                           | fault code, else off   |
| `VOICEMAIL`     | on             | blink 0.5/0.5                | fault code, else off   |
| `FAULT`         | off            | off                          | fault code, else on    |

The **recording** LED is not part of the state table: :meth:`Panel.set_recording` drives it, and
it is lit exactly while audio is being recorded.

Fault blink codes (:meth:`Panel.set_fault`): the fault LED blinks N times (``fault_unit_s`` on,
``fault_unit_s`` off) then stays dark for ``FAULT_PAUSE_UNITS`` units, and repeats:

| Fault            | Blinks |
|------------------|--------|
| `modem-missing`  | 1      |
| `audio-missing`  | 2      |
| `disk-full`      | 3      |
| `voice-missing`  | 4      |
| `clock-unsynced` | 5      |
| `handset-off-hook` | 6    |
| `half-duplex`    | 7      |
| `index-lost`     | 8      |
| `line-off-hook`  | 9      |

An unknown fault name lights the fault LED steadily (and logs a warning).

Button: a press shorter than ``long_press_s`` is a ``"short"`` event, posted on release; holding
it ``long_press_s`` posts a ``"long"`` event at once (while still held) and nothing on release.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from gpiozero import LED, Button
from gpiozero.pins import Factory

_LOGGER = logging.getLogger(__name__)

LedPattern: TypeAlias = (
    Literal["on", "off"] | tuple[Literal["blink"], float, float] | tuple[Literal["code"], int]
)
"""``"on"``, ``"off"``, ``("blink", on_s, off_s)`` or ``("code", n)`` (n blinks, pause, repeat)."""

LED_NAMES: Final = ("ready", "line", "recording", "fault")

#: Hungarian ringing cadence (hw/ag1171.md §3): the line LED blinks in step with the handset ring.
RING_BLINK: Final[LedPattern] = ("blink", 1.25, 3.75)
#: Default length of one fault-code blink (on) and of one gap (off), seconds.
FAULT_UNIT_S: Final = 0.3
#: Dark units between repetitions of a fault code (5 × 0.3 s = 1.5 s), so codes are countable.
FAULT_PAUSE_UNITS: Final = 5

#: Fault name → number of blinks.
FAULT_CODES: Final[dict[str, int]] = {
    "modem-missing": 1,
    "audio-missing": 2,
    "disk-full": 3,
    "voice-missing": 4,
    "clock-unsynced": 5,
    "handset-off-hook": 6,
    "half-duplex": 7,
    "index-lost": 8,
    "line-off-hook": 9,
}


class PanelState(enum.Enum):
    """What the appliance is doing, as shown on the ready and line LEDs."""

    STARTING = "starting"
    IDLE = "idle"
    RINGING = "ringing"
    NOTICE = "notice"
    WAITING_AGENT = "waiting_agent"
    IN_CALL = "in_call"
    VOICEMAIL = "voicemail"
    FAULT = "fault"


#: State → pattern of the ready and line LEDs (recording and fault are driven separately).
LED_PATTERNS: Final[dict[PanelState, dict[str, LedPattern]]] = {
    PanelState.STARTING: {"ready": ("blink", 0.5, 0.5), "line": "off"},
    PanelState.IDLE: {"ready": "on", "line": "off"},
    PanelState.RINGING: {"ready": "on", "line": RING_BLINK},
    PanelState.NOTICE: {"ready": "on", "line": ("blink", 0.25, 0.25)},
    PanelState.WAITING_AGENT: {"ready": "on", "line": RING_BLINK},
    PanelState.IN_CALL: {"ready": "on", "line": "on"},
    PanelState.VOICEMAIL: {"ready": "on", "line": ("blink", 0.5, 0.5)},
    PanelState.FAULT: {"ready": "off", "line": "off"},
}


def describe(pattern: LedPattern) -> str:
    """Human-readable pattern for :attr:`Panel.history`: ``on``, ``blink 1.25/3.75``, ``code 3``."""
    if isinstance(pattern, str):
        return pattern
    if pattern[0] == "blink":
        return f"blink {pattern[1]:g}/{pattern[2]:g}"
    return f"code {pattern[1]}"


@dataclass(frozen=True, slots=True)
class PanelPins:
    """BCM GPIO numbers of the front panel (``panel.*_pin``; the pin map is in ``hw/``)."""

    ready: int
    line: int
    recording: int
    fault: int
    button: int
    """Push button to ground (internal pull-up; pressed = low)."""


@dataclass(frozen=True, slots=True)
class ButtonEvent:
    """A button press: ``kind`` ``"short"`` or ``"long"``; ``t``: loop time it was recognised."""

    kind: Literal["short", "long"]
    t: float


class Panel:
    """LEDs and button of the front panel.

    All methods are called from the event loop; button callbacks arrive on gpiozero's thread and
    are posted to the loop. Pins are claimed in :meth:`start` (initial state ``STARTING``) and
    released in :meth:`close`.

    Attributes:
        events: button events in order (unbounded).
        history: ``(loop time, led name, pattern)`` each time an LED's pattern changes, for
            assertions and the demo.
    """

    def __init__(
        self,
        pins: PanelPins,
        *,
        pin_factory: Factory | None,
        long_press_s: float,
        debounce_s: float = 0.05,
        fault_unit_s: float = FAULT_UNIT_S,
    ) -> None:
        """Configure the panel (no pin is touched until :meth:`start`).

        Args:
            pins: GPIO numbers.
            pin_factory: gpiozero pin factory (``MockFactory`` in tests); ``None`` = default.
            long_press_s: holding the button this long is a long press.
            debounce_s: the button level must be stable this long to count.
            fault_unit_s: length of one fault-code blink and of one gap.

        Raises:
            ValueError: if a duration is not positive or ``debounce_s >= long_press_s``.
        """
        if not 0 <= debounce_s < long_press_s or fault_unit_s <= 0:
            raise ValueError("need 0 <= debounce_s < long_press_s and fault_unit_s > 0")
        self._pins = pins
        self._pin_factory = pin_factory
        self._long_press_s = long_press_s
        self._debounce_s = debounce_s
        self._fault_unit_s = fault_unit_s

        self.events: asyncio.Queue[ButtonEvent] = asyncio.Queue()
        self.history: list[tuple[float, str, str]] = []

        self._loop: asyncio.AbstractEventLoop | None = None
        self._leds: dict[str, LED] = {}
        self._button: Button | None = None
        self._patterns: dict[str, LedPattern] = {}
        self._state: PanelState | None = None
        self._fault: str | None = None

        self._raw_pressed = False
        self._raw_edge_t = 0.0
        self._pressed = False
        self._held = False
        self._settle_timer: asyncio.TimerHandle | None = None
        self._long_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ lifetime

    async def start(self) -> None:
        """Claim the pins, show ``STARTING`` and listen to the button. Idempotent."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        for name in LED_NAMES:
            self._leds[name] = LED(getattr(self._pins, name), pin_factory=self._pin_factory)
            self._patterns[name] = "off"
        # No gpiozero bounce_time / hold_time: MockPin ignores bounce ("XXX Need to implement
        # this", gpiozero/pins/mock.py), and one loop-side timer for debounce and hold keeps the
        # button on the same clock as the rest of the state machine.
        self._button = Button(
            self._pins.button, pull_up=True, bounce_time=None, pin_factory=self._pin_factory
        )
        self._raw_pressed = self._pressed = bool(self._button.is_pressed)
        self._button.when_pressed = self._on_pressed_thread
        self._button.when_released = self._on_released_thread
        self.show(PanelState.STARTING)
        _LOGGER.info("panel started")

    async def close(self) -> None:
        """Turn every LED off, cancel timers and release the pins. Idempotent."""
        if self._loop is None:
            return
        if self._button is not None:
            self._button.when_pressed = None
            self._button.when_released = None
            self._button.close()
            self._button = None
        for timer in (self._settle_timer, self._long_timer):
            if timer is not None:
                timer.cancel()
        self._settle_timer = self._long_timer = None
        for name, led in self._leds.items():
            self._apply(name, "off")
            led.close()
        self._leds.clear()
        self._loop = None
        _LOGGER.info("panel closed")

    # ------------------------------------------------------------------ LEDs

    @property
    def state(self) -> PanelState | None:
        """The state last passed to :meth:`show` (``None`` before :meth:`start`)."""
        return self._state

    @property
    def fault(self) -> str | None:
        """The fault last passed to :meth:`set_fault`."""
        return self._fault

    def pattern(self, led: str) -> LedPattern:
        """The pattern an LED shows now (``"ready"``, ``"line"``, ``"recording"``, ``"fault"``)."""
        return self._patterns[led]

    def show(self, state: PanelState) -> None:
        """Show ``state`` on the ready and line LEDs (and the fault LED, see the table).

        Raises:
            RuntimeError: if the panel is not started.
        """
        self._require_started()
        if state is not self._state:
            _LOGGER.debug("panel %s → %s", self._state, state)
        self._state = state
        for name, pattern in LED_PATTERNS[state].items():
            self._apply(name, pattern)
        self._apply("fault", self._fault_pattern())

    def set_recording(self, on: bool) -> None:
        """Light the recording LED exactly while audio is being recorded."""
        self._require_started()
        self._apply("recording", "on" if on else "off")

    def set_fault(self, fault: str | None) -> None:
        """Blink the fault code for ``fault`` (see ``FAULT_CODES``), or clear it with ``None``."""
        self._require_started()
        if fault is not None and fault not in FAULT_CODES:
            _LOGGER.warning("unknown fault %r: fault LED on steadily", fault)
        self._fault = fault
        self._apply("fault", self._fault_pattern())

    def _fault_pattern(self) -> LedPattern:
        if self._fault is not None:
            code = FAULT_CODES.get(self._fault)
            return "on" if code is None else ("code", code)
        return "on" if self._state is PanelState.FAULT else "off"

    def _apply(self, name: str, pattern: LedPattern) -> None:
        """Drive one LED if its pattern changed; record the change in :attr:`history`."""
        assert self._loop is not None
        if self._patterns.get(name) == pattern:
            return  # restarting an identical blink would visibly reset its phase
        led = self._leds[name]
        led.source = None  # stop a running fault-code thread before anything else
        if pattern == "on":
            led.on()
        elif pattern == "off":
            led.off()
        elif pattern[0] == "blink":
            led.blink(on_time=pattern[1], off_time=pattern[2], background=True)
        else:
            led.off()
            led.source_delay = self._fault_unit_s
            led.source = self._code_values(pattern[1])
        self._patterns[name] = pattern
        self.history.append((self._loop.time(), name, describe(pattern)))

    @staticmethod
    def _code_values(blinks: int) -> Iterator[int]:
        """Endless LED values for a blink code, one per fault unit: n × (on, off), then a pause.

        gpiozero has no "n blinks then pause, repeat" pattern; ``LED.source`` plays this
        cycle on gpiozero's own thread, one value per ``source_delay``.
        """
        return itertools.cycle([1, 0] * blinks + [0] * FAULT_PAUSE_UNITS)

    # ------------------------------------------------------------------ button

    def _on_pressed_thread(self) -> None:
        """gpiozero thread: post the edge to the loop (docs/architecture.md, concurrency 3)."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._on_raw_edge, True)

    def _on_released_thread(self) -> None:
        """gpiozero thread: post the edge to the loop (docs/architecture.md, concurrency 3)."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._on_raw_edge, False)

    def _on_raw_edge(self, pressed: bool) -> None:
        if self._loop is None:
            return
        self._raw_pressed = pressed
        self._raw_edge_t = self._loop.time()
        if self._settle_timer is not None:
            self._settle_timer.cancel()
        self._settle_timer = self._loop.call_later(self._debounce_s, self._settle)

    def _settle(self) -> None:
        assert self._loop is not None
        self._settle_timer = None
        if self._raw_pressed == self._pressed:
            return  # contact bounce shorter than debounce_s
        self._pressed = self._raw_pressed
        if self._pressed:
            self._held = False
            delay_s = max(0.0, self._raw_edge_t + self._long_press_s - self._loop.time())
            self._long_timer = self._loop.call_later(delay_s, self._long_press)
            return
        if self._long_timer is not None:
            self._long_timer.cancel()
            self._long_timer = None
        if not self._held:
            self._post("short")
        self._held = False

    def _long_press(self) -> None:
        self._long_timer = None
        self._held = True
        self._post("long")

    def _post(self, kind: Literal["short", "long"]) -> None:
        assert self._loop is not None
        _LOGGER.debug("button %s press", kind)
        self.events.put_nowait(ButtonEvent(kind=kind, t=self._loop.time()))

    def _require_started(self) -> None:
        if self._loop is None:
            raise RuntimeError("Panel not started")
