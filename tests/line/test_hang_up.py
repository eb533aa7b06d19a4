"""A hang-up that fails is not a hang-up: the on-hook ladder (``AT+VLS=0``, ``ATH0``, ``ATH``,
``ATZ``, DTR), its confirmation by ``AT+VLS?``, and a modem left off-hook found at open.

Found in the field: one hang-up whose ``AT+VLS=0`` and ``ATH0`` both answered ``ERROR`` was
logged "line on-hook" while the modem held the line, and nobody could call in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from appliance.errors import LineOffHook
from appliance.line.modem import HANG_UP_LADDER, Modem
from appliance.sim.modem.emulator import SimModem
from appliance.sim.modem.link import sim_url
from appliance.sim.modem.pty import PtyModemServer

pytestmark = pytest.mark.timeout(60)


def _sim() -> SimModem:
    return SimModem("conexant", ring_period_s=0.1, cid_delay_s=0.03)


@pytest.fixture(params=["sim", "pty"])
async def answered(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Modem, SimModem, str]]:
    """A Modem off-hook on an emulator, in process (DTR reaches the emulator) or over a real
    pty (no DTR line: pyserial cannot drop it on a pty)."""
    sim = _sim()
    server: PtyModemServer | None = None
    if request.param == "sim":
        url = sim_url(sim)
        modem = Modem(url, command_timeout_s=1.0, cid_settle_s=0.01)
    else:
        server = PtyModemServer(sim)
        url = await server.start()
        modem = Modem(url, command_timeout_s=1.0, cid_settle_s=0.01)
    await modem.open()
    await modem.answer()
    await modem.start_duplex(lambda frame: None)
    assert sim.off_hook
    try:
        yield modem, sim, request.param
    finally:
        await modem.close()
        if server is not None:
            await server.stop()


async def test_a_refused_hang_up_is_retried_until_on_hook(
    answered: tuple[Modem, SimModem, str],
) -> None:
    modem, sim, _ = answered
    sim.refuse_hang_up(2)  # the fault found in the field: AT+VLS=0 and ATH0 both ERROR
    assert await modem.hang_up() is True
    assert not sim.off_hook, "the line is on-hook: the next caller can ring in"
    assert sim.refused_hang_ups == 2
    tail = sim.commands[sim.commands.index("AT+VLS=0"):]
    assert tail == ["AT+VLS=0", "ATH0", "ATH", "AT+VLS?", "AT+FCLASS=0"]
    assert not modem.reopen_needed


async def test_a_plain_hang_up_is_confirmed(answered: tuple[Modem, SimModem, str]) -> None:
    modem, sim, _ = answered
    assert await modem.hang_up() is True
    assert sim.commands[-3:] == ["AT+VLS=0", "AT+VLS?", "AT+FCLASS=0"]
    assert sim.refused_hang_ups == 0


async def test_reset_then_dtr_are_the_last_resorts(answered: tuple[Modem, SimModem, str]) -> None:
    modem, sim, kind = answered
    sim.refuse_hang_up(3)  # AT+VLS=0, ATH0, ATH: ATZ works, and the modem must be reopened
    assert await modem.hang_up() is True
    assert not sim.off_hook
    assert modem.reopen_needed
    if kind != "sim":
        return
    # In process the emulator sees DTR: with ATZ refused too, the DTR drop hangs up.
    await modem.close()
    modem = Modem(sim_url(sim), command_timeout_s=1.0)
    await modem.open()
    await modem.answer()
    sim.refuse_hang_up(4)
    assert await modem.hang_up() is True
    assert not sim.off_hook
    assert modem.reopen_needed
    await modem.close()


async def test_a_modem_that_never_hangs_up_is_not_ready(
    answered: tuple[Modem, SimModem, str],
) -> None:
    modem, sim, kind = answered
    sim.refuse_hang_up(None)
    assert await modem.hang_up() is False, "never 'on-hook' while the modem holds the line"
    assert sim.off_hook
    refused = sim.refused_hang_ups
    assert refused == len(HANG_UP_LADDER) - (kind == "pty")  # no DTR line on a pty
    url = modem.url
    await modem.close()
    # Reopening (the daemon's supervisor) finds the line still held and refuses to be ready.
    again = Modem(url, command_timeout_s=1.0)
    with pytest.raises(LineOffHook):
        await again.open()
    await again.close()
    assert sim.off_hook
    # Once the modem lets go, the next open hangs up and is ready, on-hook.
    sim.accept_hang_up()
    again = Modem(url, command_timeout_s=1.0)
    await again.open()
    assert not sim.off_hook
    assert not again.reopen_needed, "the open's own init ran again after the reset"
    await again.close()


async def test_a_modem_left_off_hook_is_hung_up_at_open() -> None:
    # A daemon killed mid-call leaves the modem holding the line: the next open hangs up.
    sim = _sim()
    modem = Modem(sim_url(sim), command_timeout_s=1.0)
    await modem.open()
    await modem.answer()
    await modem.close()  # no hang-up, as after kill -9
    assert sim.off_hook
    modem = Modem(sim_url(sim), command_timeout_s=1.0)
    await modem.open()
    assert not sim.off_hook
    await modem.close()
