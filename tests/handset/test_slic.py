"""Slic on gpiozero's MockFactory: cadence, duty limit, ring-trip, hook classification."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Sequence

import pytest
from gpiozero.pins.mock import MockFactory, MockPin
from hypothesis import given
from hypothesis import strategies as st

from appliance.handset.slic import (
    RM_DUTY_MAX,
    HookEvent,
    RingCadence,
    Slic,
    SlicPins,
)
from tests.conftest import TIMEOUT_S
from tests.policies import default_config

#: The default configuration's pin map and ringing frequency (the driver has no defaults).
HANDSET = default_config().handset
PINS = SlicPins(rm=HANDSET.rm_pin, fr=HANDSET.fr_pin, shk=HANDSET.shk_pin)
DEBOUNCE_S = 0.005
# The pulse windows have the production margins (a 20 ms pulse may come up to 80 ms late, a
# digit's make up to 280 ms late) so a loaded machine cannot turn a pulse into a flash or
# split a digit; breaks and on-hook stay short so the tests stay quick.
PULSE_MAX_S = 0.1
FLASH_MAX_S = 0.3
ON_HOOK_S = 0.4
INTERDIGIT_S = 0.3
TRIP_GAP_S = 0.03
#: How late a loaded machine may run a loop timer without it being a fault of the driver.
LOOP_LATE_S = 0.2
#: A fast cadence (duty 25 %) so a two-burst test takes < 1 s.
FAST = RingCadence(on_s=0.2, off_s=0.6)


class EdgeClock:
    """The Slic's edge clock: :func:`drive` stamps each scripted edge with its planned time
    (MockPin calls the callbacks synchronously), so a loaded machine that runs the loop late
    cannot stretch a pulse or merge two edges; any other edge reads the monotonic clock."""

    def __init__(self) -> None:
        self.planned_t: float | None = None

    def __call__(self) -> float:
        return time.monotonic() if self.planned_t is None else self.planned_t


EDGE_CLOCK = EdgeClock()


@pytest.fixture
async def slic(mock_factory: MockFactory) -> AsyncIterator[Slic]:
    s = Slic(
        PINS,
        pin_factory=mock_factory,
        ring_hz=HANDSET.ring_hz,
        debounce_s=DEBOUNCE_S,
        pulse_max_break_s=PULSE_MAX_S,
        flash_max_s=FLASH_MAX_S,
        on_hook_after_s=ON_HOOK_S,
        interdigit_s=INTERDIGIT_S,
        ring_trip_gap_s=TRIP_GAP_S,
        edge_clock=EDGE_CLOCK,
    )
    await s.start()
    try:
        yield s
    finally:
        await s.close()


def pin(factory: MockFactory, n: int) -> MockPin:
    return factory.pin(n)  # type: ignore[no-any-return]


async def next_event(s: Slic) -> HookEvent:
    return await asyncio.wait_for(s.events.get(), TIMEOUT_S)


def drive(shk: MockPin, edges: Sequence[tuple[float, bool]]) -> asyncio.Future[None]:
    """Schedule SHK levels at offsets (s) from now on the loop; the future ends after the last.

    Each edge carries its planned time to the Slic (:class:`EdgeClock`), however late the loop
    runs it.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    start_t = loop.time()

    def set_level(level: bool, planned_t: float, last: bool) -> None:
        EDGE_CLOCK.planned_t = planned_t
        try:
            if level:
                shk.drive_high()
            else:
                shk.drive_low()
        finally:
            EDGE_CLOCK.planned_t = None
        if last and not done.done():
            done.set_result(None)

    for i, (at_s, level) in enumerate(edges):
        loop.call_later(at_s, set_level, level, start_t + at_s, i == len(edges) - 1)
    return done


def pulse_train(start_s: float, pulses: int, break_s: float = 0.02, make_s: float = 0.02):
    """Edges for ``pulses`` dial pulses (break then make) starting at ``start_s``."""
    edges: list[tuple[float, bool]] = []
    t = start_s
    for _ in range(pulses):
        edges.append((t, False))
        t += break_s
        edges.append((t, True))
        t += make_s
    return edges


def absolute(states: Sequence[tuple[float, bool]]) -> list[tuple[float, bool]]:
    """MockPin.states holds deltas between changes; turn them into times since clear_states."""
    times = itertools.accumulate(s[0] for s in states)
    return [(t, bool(s[1])) for t, s in zip(times, states, strict=True)]


async def go_off_hook(s: Slic, factory: MockFactory) -> None:
    pin(factory, PINS.shk).drive_high()
    ev = await next_event(s)
    assert ev.kind == "off_hook"
    assert s.off_hook


# ------------------------------------------------------------------ cadence and duty


def test_default_cadence_is_hungarian_and_within_duty() -> None:
    c = RingCadence()
    assert (c.on_s, c.off_s) == (1.25, 3.75)
    assert c.duty == pytest.approx(0.25)


def test_cadence_over_duty_limit_rejected() -> None:
    # kangp3/phone's 1 s / 1 s test cadence is 50 % (hardware.md §1.3).
    with pytest.raises(ValueError, match="duty"):
        RingCadence(on_s=1.0, off_s=1.0)


@given(
    on=st.floats(min_value=0.01, max_value=10, allow_nan=False),
    off=st.floats(min_value=0, max_value=30, allow_nan=False),
)
def test_cadence_accepts_exactly_duty_within_limit(on: float, off: float) -> None:
    try:
        c = RingCadence(on_s=on, off_s=off)
    except ValueError:
        assert on / (on + off) > RM_DUTY_MAX
    else:
        assert c.duty <= RM_DUTY_MAX


async def test_idle_levels_after_start(slic: Slic, mock_factory: MockFactory) -> None:
    assert pin(mock_factory, PINS.fr).state  # forward polarity
    assert not pin(mock_factory, PINS.rm).state
    assert not slic.off_hook


async def test_two_bursts_follow_cadence(slic: Slic, mock_factory: MockFactory) -> None:
    rm, fr = pin(mock_factory, PINS.rm), pin(mock_factory, PINS.fr)
    rm.clear_states()
    fr.clear_states()
    slic.start_ringing(FAST, bursts=2)
    assert slic.ringing
    await asyncio.wait_for(slic.ringing_finished(), TIMEOUT_S)
    assert slic.rings_started == 2
    assert not slic.ringing

    rm_abs = absolute(rm.states)
    assert [lvl for _, lvl in rm_abs] == [False, True, False, True, False]
    # RM high ≈ on_s per burst, low ≈ off_s between bursts. The cadence runs on the loop, so a
    # loaded machine makes each step late by up to LOOP_LATE_S; the duty limit holds regardless
    # (the next burst waits for it, measured from the real burst).
    highs = [rm_abs[i + 1][0] - rm_abs[i][0] for i in (1, 3)]
    low = rm_abs[3][0] - rm_abs[2][0]
    assert all(FAST.on_s <= high < FAST.on_s + LOOP_LATE_S for high in highs), highs
    assert FAST.off_s <= low < FAST.off_s + LOOP_LATE_S, low
    period = rm_abs[3][0] - rm_abs[1][0]
    assert max(highs) / period <= RM_DUTY_MAX

    # F/R toggles at 2 * ring_hz during each burst (25 Hz → 10 edges in 0.2 s) and ends high.
    fr_abs = absolute(fr.states)
    assert fr_abs[-1][1] is True
    for start, end in ((rm_abs[1][0], rm_abs[2][0]), (rm_abs[3][0], rm_abs[4][0])):
        edges = [t for t, _ in fr_abs[1:] if start <= t <= end + 0.005]
        expected = (end - start) * 2 * 25.0
        assert 0.6 * expected <= len(edges) <= expected + 2, (end - start, edges)
    # No toggling while RM is low.
    assert not [t for t, _ in fr_abs[1:] if rm_abs[2][0] + 0.005 < t < rm_abs[3][0] - 0.001]


async def test_stop_ringing_sets_fr_high_before_rm_low(
    slic: Slic, mock_factory: MockFactory
) -> None:
    rm, fr = pin(mock_factory, PINS.rm), pin(mock_factory, PINS.fr)
    slic.start_ringing(FAST)
    loop = asyncio.get_running_loop()
    stopped = loop.create_future()

    async def stop() -> None:
        await slic.stop_ringing()
        stopped.set_result(None)

    tasks: list[asyncio.Task[None]] = []
    loop.call_later(0.1, lambda: tasks.append(loop.create_task(stop(), name="test-stop")))
    rm.clear_states()
    fr.clear_states()
    await asyncio.wait_for(stopped, TIMEOUT_S)
    assert fr.state
    assert not rm.state
    assert not slic.ringing
    t_fr_high = absolute(fr.states)[-1][0]
    t_rm_low = absolute(rm.states)[-1][0]
    assert t_fr_high <= t_rm_low


async def test_ring_trip_order_and_gap(slic: Slic, mock_factory: MockFactory) -> None:
    rm, fr, shk = (pin(mock_factory, n) for n in (PINS.rm, PINS.fr, PINS.shk))
    slic.start_ringing(RingCadence(on_s=0.5, off_s=1.5))
    rm.clear_states()
    fr.clear_states()
    drive(shk, [(0.15, True)])  # lifted mid-burst
    ev = await next_event(slic)
    assert ev.kind == "off_hook"
    await asyncio.wait_for(slic.ringing_finished(), TIMEOUT_S)
    assert fr.state
    assert not rm.state
    t_fr_high = absolute(fr.states)[-1][0]
    t_rm_low = absolute(rm.states)[-1][0]
    # hardware.md §1.3: RM low more than 10 ms and less than 500 ms after F/R high.
    assert 0.010 < t_rm_low - t_fr_high < 0.5
    # The burst was cut short (< on_s) and no second burst began.
    assert t_rm_low < 0.45
    assert slic.rings_started == 1


async def test_stop_ringing_during_trip_keeps_gap(slic: Slic, mock_factory: MockFactory) -> None:
    rm, fr, shk = (pin(mock_factory, n) for n in (PINS.rm, PINS.fr, PINS.shk))
    slic.start_ringing(RingCadence(on_s=0.5, off_s=1.5))
    rm.clear_states()
    fr.clear_states()
    drive(shk, [(0.1, True)])
    assert (await next_event(slic)).kind == "off_hook"
    await asyncio.wait_for(slic.stop_ringing(), TIMEOUT_S)  # consumer reacts at once
    assert not rm.state
    gap = absolute(rm.states)[-1][0] - absolute(fr.states)[-1][0]
    assert gap > 0.010


async def test_lifting_between_bursts_stops_cadence(slic: Slic, mock_factory: MockFactory) -> None:
    rm, shk = pin(mock_factory, PINS.rm), pin(mock_factory, PINS.shk)
    rm.clear_states()
    slic.start_ringing(FAST)
    drive(shk, [(0.4, True)])  # during the first 0.6 s pause
    assert (await next_event(slic)).kind == "off_hook"
    await asyncio.wait_for(slic.ringing_finished(), TIMEOUT_S)
    assert slic.rings_started == 1
    rm.assert_states([False, True, False])
    assert len(rm.states) == 3


async def test_never_rings_while_off_hook(slic: Slic, mock_factory: MockFactory) -> None:
    rm = pin(mock_factory, PINS.rm)
    await go_off_hook(slic, mock_factory)
    rm.clear_states()
    slic.start_ringing(FAST, bursts=1)
    slic.short_ring()
    assert not slic.ringing
    assert slic.rings_started == 0
    await asyncio.wait_for(slic.ringing_finished(), TIMEOUT_S)
    assert len(rm.states) == 1  # never went high


async def test_short_ring_is_two_short_bursts(slic: Slic, mock_factory: MockFactory) -> None:
    rm = pin(mock_factory, PINS.rm)
    rm.clear_states()
    slic.short_ring()
    await asyncio.wait_for(slic.ringing_finished(), TIMEOUT_S)
    assert slic.rings_started == 2
    rm.assert_states([False, True, False, True, False])
    assert len(rm.states) == 5


def test_bad_timings_rejected(mock_factory: MockFactory) -> None:
    with pytest.raises(ValueError, match="ring_hz"):
        Slic(PINS, pin_factory=mock_factory, ring_hz=50)
    with pytest.raises(ValueError, match="flash_max_s"):
        Slic(PINS, pin_factory=mock_factory, ring_hz=HANDSET.ring_hz, flash_max_s=0.8,
             on_hook_after_s=0.5)
    with pytest.raises(ValueError, match="ring_trip_gap_s"):
        Slic(PINS, pin_factory=mock_factory, ring_hz=HANDSET.ring_hz, ring_trip_gap_s=0.005)


async def test_start_ringing_requires_start(mock_factory: MockFactory) -> None:
    s = Slic(PINS, pin_factory=mock_factory, ring_hz=HANDSET.ring_hz)
    with pytest.raises(RuntimeError):
        s.start_ringing()


# ------------------------------------------------------------------ hook state machine


async def test_off_hook_then_on_hook(slic: Slic, mock_factory: MockFactory) -> None:
    shk = pin(mock_factory, PINS.shk)
    await go_off_hook(slic, mock_factory)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    shk.drive_low()
    ev = await next_event(slic)
    assert ev.kind == "on_hook"
    assert ev.t - t0 >= ON_HOOK_S
    assert not slic.off_hook


async def test_glitch_shorter_than_debounce_is_ignored(
    slic: Slic, mock_factory: MockFactory
) -> None:
    shk = pin(mock_factory, PINS.shk)
    shk.drive_high()
    shk.drive_low()  # bounce: never stable high → no off-hook
    shk.drive_high()
    assert (await next_event(slic)).kind == "off_hook"
    # A break shorter than the debounce (here: two edges in one loop callback, so loop
    # jitter cannot stretch it) is swallowed; the next event is the real flash.
    loop = asyncio.get_running_loop()
    loop.call_soon(lambda: (shk.drive_low(), shk.drive_high()))
    await drive(shk, [(0.05, False), (0.25, True)])
    ev = await next_event(slic)
    assert ev.kind == "flash"
    assert slic.off_hook


async def test_flash(slic: Slic, mock_factory: MockFactory) -> None:
    shk = pin(mock_factory, PINS.shk)
    await go_off_hook(slic, mock_factory)
    drive(shk, [(0.0, False), (0.2, True)])  # 200 ms break: between pulse and on-hook
    ev = await next_event(slic)
    assert ev.kind == "flash"
    assert slic.off_hook


@pytest.mark.parametrize(("pulses", "digit"), [(1, "1"), (3, "3"), (10, "0")])
async def test_pulse_digit(slic: Slic, mock_factory: MockFactory, pulses: int, digit: str) -> None:
    shk = pin(mock_factory, PINS.shk)
    await go_off_hook(slic, mock_factory)
    drive(shk, pulse_train(0.0, pulses))
    ev = await next_event(slic)
    assert ev == HookEvent(kind="digit", t=ev.t, digit=digit)
    assert slic.off_hook


async def test_two_digits_then_hang_up(slic: Slic, mock_factory: MockFactory) -> None:
    shk = pin(mock_factory, PINS.shk)
    await go_off_hook(slic, mock_factory)
    # "2", a 500 ms make (> interdigit), "4", then a long break.
    first = pulse_train(0.0, 2)
    second = pulse_train(first[-1][0] + 0.5, 4)
    drive(shk, [*first, *second, (second[-1][0] + 0.5, False)])
    kinds = [await next_event(slic) for _ in range(3)]
    assert [(e.kind, e.digit) for e in kinds] == [
        ("digit", "2"),
        ("digit", "4"),
        ("on_hook", None),
    ]
    assert kinds[0].t < kinds[1].t < kinds[2].t


async def test_initially_off_hook_posts_event(mock_factory: MockFactory) -> None:
    pin(mock_factory, PINS.shk).drive_high()
    s = Slic(PINS, pin_factory=mock_factory, ring_hz=HANDSET.ring_hz)
    await s.start()
    try:
        assert s.off_hook
        assert (await next_event(s)).kind == "off_hook"
    finally:
        await s.close()


async def test_a_late_loop_still_counts_every_pulse(slic: Slic, mock_factory: MockFactory) -> None:
    shk = pin(mock_factory, PINS.shk)
    await go_off_hook(slic, mock_factory)
    drive(shk, pulse_train(0.0, 4))
    # The loop stalls for 150 ms (a busy moment on a Pi): all eight edges reach it together,
    # late. Judged by the loop's clock they would be one glitch; by their own times, 4 pulses.
    time.sleep(0.15)  # noqa: ASYNC251 - the stall is the point
    ev = await next_event(slic)
    assert (ev.kind, ev.digit) == ("digit", "4")
    assert slic.off_hook
