"""Panel on gpiozero's MockFactory: state patterns, recording LED, fault codes, button presses."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from appliance.panel.panel import (
    FAULT_CODES,
    FAULT_PAUSE_UNITS,
    LED_PATTERNS,
    ButtonEvent,
    Panel,
    PanelPins,
    PanelState,
    describe,
)
from tests.conftest import TIMEOUT_S
from tests.policies import default_config

#: The default configuration's pin map (the driver has no defaults).
_PANEL = default_config().panel
PINS = PanelPins(ready=_PANEL.ready_pin, line=_PANEL.line_pin, recording=_PANEL.recording_pin,
                 fault=_PANEL.fault_pin, button=_PANEL.button_pin)
LONG_PRESS_S = 0.3
DEBOUNCE_S = 0.01
FAULT_UNIT_S = 0.02


@pytest.fixture
async def panel(mock_factory: MockFactory) -> AsyncIterator[Panel]:
    p = Panel(
        PINS,
        pin_factory=mock_factory,
        long_press_s=LONG_PRESS_S,
        debounce_s=DEBOUNCE_S,
        fault_unit_s=FAULT_UNIT_S,
    )
    await p.start()
    try:
        yield p
    finally:
        await p.close()


def pin(factory: MockFactory, n: int) -> MockPin:
    return factory.pin(n)  # type: ignore[no-any-return]


async def wait_until(pred: Callable[[], bool]) -> None:
    """Poll a condition set by a gpiozero thread (no loop event exists for it), bounded."""
    async with asyncio.timeout(TIMEOUT_S):
        # ASYNC110 suppressed: MockPin output changes have no callback we could turn into an Event.
        while not pred():  # noqa: ASYNC110
            await asyncio.sleep(0.002)


async def next_event(p: Panel) -> ButtonEvent:
    return await asyncio.wait_for(p.events.get(), TIMEOUT_S)


# ------------------------------------------------------------------ LEDs


async def test_starts_in_starting_state(panel: Panel) -> None:
    assert panel.state is PanelState.STARTING
    assert ("ready", "blink 0.5/0.5") in [(n, p) for _, n, p in panel.history]


@pytest.mark.parametrize("state", list(PanelState))
async def test_patterns_per_state(
    panel: Panel, mock_factory: MockFactory, state: PanelState
) -> None:
    panel.show(state)
    assert panel.state is state
    for name in ("ready", "line"):
        expected = LED_PATTERNS[state][name]
        assert panel.pattern(name) == expected
        led_pin = pin(mock_factory, getattr(PINS, name))
        if expected == "on":
            assert led_pin.state
        elif expected == "off":
            assert not led_pin.state
        else:  # a blink starts lit (gpiozero blink begins with on_time)
            await wait_until(lambda p=led_pin: bool(p.state))
    fault_expected = "on" if state is PanelState.FAULT else "off"
    assert panel.pattern("fault") == fault_expected
    assert bool(pin(mock_factory, PINS.fault).state) is (fault_expected == "on")


def test_table_covers_every_state_and_line_follows_ring_cadence() -> None:
    assert set(LED_PATTERNS) == set(PanelState)
    assert LED_PATTERNS[PanelState.RINGING]["line"] == ("blink", 1.25, 3.75)
    assert LED_PATTERNS[PanelState.WAITING_AGENT]["line"] == ("blink", 1.25, 3.75)
    assert LED_PATTERNS[PanelState.IN_CALL]["line"] == "on"
    assert all("recording" not in leds for leds in LED_PATTERNS.values())


async def test_history_records_changes_only(panel: Panel) -> None:
    panel.history.clear()
    panel.show(PanelState.IN_CALL)
    panel.show(PanelState.IN_CALL)
    changes = [(n, p) for _, n, p in panel.history]
    assert changes == [("ready", "on"), ("line", "on")]
    times = [t for t, _, _ in panel.history]
    assert times == sorted(times)
    assert times[0] <= asyncio.get_running_loop().time()


async def test_recording_led_follows_set_recording(panel: Panel, mock_factory: MockFactory) -> None:
    rec = pin(mock_factory, PINS.recording)
    rec.clear_states()
    panel.show(PanelState.IN_CALL)
    assert not rec.state  # the state table never lights it
    panel.set_recording(True)
    assert rec.state
    panel.show(PanelState.VOICEMAIL)  # state changes do not touch it
    assert rec.state
    panel.set_recording(False)
    assert not rec.state
    panel.show(PanelState.IN_CALL)
    rec.assert_states([False, True, False])
    assert len(rec.states) == 3
    assert [p for _, n, p in panel.history if n == "recording"] == ["on", "off"]


@pytest.mark.parametrize(("fault", "blinks"), sorted(FAULT_CODES.items()))
async def test_fault_blink_codes(
    panel: Panel, mock_factory: MockFactory, fault: str, blinks: int
) -> None:
    led = pin(mock_factory, PINS.fault)
    led.clear_states()
    panel.set_fault(fault)
    assert panel.pattern("fault") == ("code", blinks)
    # Wait for the first blink of the second repetition.
    await wait_until(lambda: sum(1 for s in led.states if s.state) >= blinks + 1)
    panel.set_fault(None)
    assert panel.pattern("fault") == "off"
    await wait_until(lambda: not led.state)
    # Off-gaps (time from a falling edge to the next rising edge): short inside a code,
    # long (pause) between repetitions.
    times = list(itertools.accumulate(s.timestamp for s in led.states))
    levels = [s.state for s in led.states]
    rises = [times[i] for i in range(1, len(levels)) if levels[i] and not levels[i - 1]]
    falls = [times[i] for i in range(1, len(levels)) if not levels[i] and levels[i - 1]]
    gaps = [r - f for f, r in zip(falls, rises[1:], strict=False)]
    pause_s = (FAULT_PAUSE_UNITS + 1) * FAULT_UNIT_S
    long_gaps = [i for i, g in enumerate(gaps) if g > pause_s / 2]
    assert long_gaps == [blinks - 1], gaps  # exactly `blinks` flashes before the first pause


async def test_unknown_fault_is_steady_and_fault_state_without_code(
    panel: Panel, mock_factory: MockFactory
) -> None:
    panel.set_fault("gremlins")
    assert panel.pattern("fault") == "on"
    assert pin(mock_factory, PINS.fault).state
    panel.set_fault(None)
    panel.show(PanelState.FAULT)
    assert panel.pattern("fault") == "on"
    assert not pin(mock_factory, PINS.ready).state
    panel.set_fault("disk-full")
    assert panel.pattern("fault") == ("code", 3)
    panel.set_fault(None)
    assert panel.pattern("fault") == "on"  # still in FAULT state
    panel.show(PanelState.IDLE)
    assert panel.pattern("fault") == "off"


def test_describe() -> None:
    assert describe("on") == "on"
    assert describe(("blink", 1.25, 3.75)) == "blink 1.25/3.75"
    assert describe(("code", 2)) == "code 2"


async def test_show_requires_start(mock_factory: MockFactory) -> None:
    p = Panel(PINS, pin_factory=mock_factory, long_press_s=LONG_PRESS_S)
    with pytest.raises(RuntimeError):
        p.show(PanelState.IDLE)


async def test_close_turns_leds_off(mock_factory: MockFactory) -> None:
    p = Panel(PINS, pin_factory=mock_factory, long_press_s=LONG_PRESS_S)
    await p.start()
    p.show(PanelState.IN_CALL)
    p.set_recording(True)
    before = len(p.history)
    await p.close()
    assert [(n, pat) for _, n, pat in p.history[before:]] == [
        ("ready", "off"),
        ("line", "off"),
        ("recording", "off"),
    ]
    await p.close()  # idempotent


# ------------------------------------------------------------------ button


async def test_short_press(panel: Panel, mock_factory: MockFactory) -> None:
    btn = pin(mock_factory, PINS.button)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    btn.drive_low()
    loop.call_later(0.05, btn.drive_high)
    ev = await next_event(panel)
    assert ev.kind == "short"
    assert ev.t - t0 < LONG_PRESS_S


async def test_long_press_fires_while_held_and_not_again_on_release(
    panel: Panel, mock_factory: MockFactory
) -> None:
    btn = pin(mock_factory, PINS.button)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    btn.drive_low()
    ev = await next_event(panel)
    assert ev.kind == "long"
    assert ev.t - t0 >= LONG_PRESS_S
    assert not btn.state  # still held
    btn.drive_high()
    # The release adds nothing: the next event is the following short press.
    loop.call_later(0.05, btn.drive_low)
    loop.call_later(0.1, btn.drive_high)
    assert (await next_event(panel)).kind == "short"


async def test_bouncing_contacts_give_one_short_press(
    panel: Panel, mock_factory: MockFactory
) -> None:
    btn = pin(mock_factory, PINS.button)
    loop = asyncio.get_running_loop()
    for i, level in enumerate([False, True, False, True, False]):  # 1 ms bounces on press
        loop.call_later(i * 0.001, btn.drive_high if level else btn.drive_low)
    loop.call_later(0.08, btn.drive_high)
    loop.call_later(0.081, btn.drive_low)  # bounce on release
    loop.call_later(0.082, btn.drive_high)
    # A second, clean press afterwards to bound the wait without a fixed sleep.
    loop.call_later(0.2, btn.drive_low)
    loop.call_later(0.25, btn.drive_high)
    first = await next_event(panel)
    second = await next_event(panel)
    assert (first.kind, second.kind) == ("short", "short")
    assert second.t - first.t > 0.1  # the bounces did not produce an extra event
