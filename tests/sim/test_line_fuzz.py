"""Property-based fuzz of the line layers (appliance/sim/line_fuzz.py): whatever the modem sends —
random bytes mixed with valid V.253 fragments, idle and mid-call — nothing raises out of the
receive path, and a hang-up the host calls confirmed leaves the emulated line on-hook (a
wedged link is reopened, and the reopen leaves it on-hook). A bounded count here;
``appliance bench --fuzz-streams 100000`` runs the long one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.sim.line_fuzz import FRAGMENTS, FuzzWorker

pytestmark = pytest.mark.timeout(120)

chunk = st.one_of(
    st.binary(min_size=1, max_size=48),
    st.sampled_from(FRAGMENTS),
    st.tuples(st.sampled_from(FRAGMENTS), st.binary(max_size=6)).map(lambda t: t[0] + t[1]),
)
stream = st.lists(chunk, max_size=10)


@pytest.fixture(scope="module")
def worker() -> Iterator[tuple[asyncio.AbstractEventLoop, FuzzWorker]]:
    """One loop and one emulated line for every example (a line lives call after call)."""
    loop = asyncio.new_event_loop()
    fuzz = loop.run_until_complete(_worker())
    try:
        yield loop, fuzz
    finally:
        loop.run_until_complete(fuzz.close())
        loop.close()


async def _worker() -> FuzzWorker:
    return FuzzWorker()


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(idle=stream, call=stream)
def test_no_stream_breaks_the_line(worker: tuple[asyncio.AbstractEventLoop, FuzzWorker],
                                   idle: list[bytes], call: list[bytes]) -> None:
    loop, fuzz = worker
    tally = loop.run_until_complete(fuzz.run_stream(idle, call))
    assert tally.receive_errors == 0, tally.failures
    assert tally.left_off_hook == 0, tally.failures
    assert tally.stuck == 0, tally.failures
    assert tally.hang_ups_confirmed + tally.hang_ups_unconfirmed == 1
    assert not fuzz.sim.off_hook


def test_a_refused_hang_up_mid_stream_is_caught(
    worker: tuple[asyncio.AbstractEventLoop, FuzzWorker],
) -> None:
    # The invariant can fail: a modem refusing every way on-hook is "unconfirmed", and the
    # reopen cannot hang up either — the tally says so instead of calling the line on-hook.
    loop, fuzz = worker
    fuzz.sim.refuse_hang_up(None)
    try:
        tally = loop.run_until_complete(fuzz.run_stream([b"\r\nERROR\r\n"], [b"\x10b"]))
    finally:
        fuzz.sim.accept_hang_up()
    assert tally.hang_ups_unconfirmed == 1
    assert tally.left_off_hook == 1 or tally.stuck == 1
    assert not tally.ok
    loop.run_until_complete(fuzz.run_stream([], []))  # the line recovers afterwards
    assert not fuzz.sim.off_hook
