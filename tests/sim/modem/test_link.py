"""The emulator's ``sim://`` URLs, opened by the production line room's ``open_transport``."""

from __future__ import annotations

import gc

import pytest

from appliance.errors import ModemGone
from appliance.line.at import AtProtocol
from appliance.line.modem import Modem
from appliance.line.transport import drop_dtr, open_transport
from appliance.sim.modem.emulator import SimModem
from appliance.sim.modem.link import SIM_MODEM_EXTRA, sim_url


async def test_a_profile_url_opens_a_new_emulator_of_that_dialect() -> None:
    transport, at = await open_transport("sim://usr", lambda: AtProtocol(command_timeout_s=1.0))
    try:
        assert transport.get_extra_info(SIM_MODEM_EXTRA).profile.name == "usr"
        assert await at.command("ATI3") == ["U.S. Robotics 56K FAX USB V1.2.23"]
    finally:
        transport.close()


async def test_a_named_url_reopens_the_same_emulator() -> None:
    sim = SimModem("v253")
    url = sim_url(sim)
    for _ in range(2):
        modem = Modem(url, command_timeout_s=1.0)
        await modem.open()
        await modem.close()
    assert sim.commands.count("ATZ") == 2, "both opens reached the one emulator"


async def test_dtr_reaches_the_emulator_through_the_link() -> None:
    sim = SimModem("conexant")
    transport, at = await open_transport(sim_url(sim), lambda: AtProtocol(command_timeout_s=1.0))
    try:
        await at.command("AT+FCLASS=8")
        await at.command("AT+VLS=1")
        assert sim.off_hook
        assert await drop_dtr(transport, 0.0) is True
        assert not sim.off_hook
    finally:
        transport.close()


async def test_the_url_of_an_emulator_that_is_gone_is_modem_gone() -> None:
    url = sim_url(SimModem("conexant"))
    gc.collect()
    with pytest.raises(ModemGone, match="no emulated modem"):
        await open_transport(url, AtProtocol)
