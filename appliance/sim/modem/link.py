"""The in-process link to the emulator, and the ``sim://`` URLs the production modem opens.

The line room opens URLs and knows no emulator (docs/architecture.md, "Rooms"). This module
registers the ``sim://`` scheme with it (:func:`install`, :func:`sim_url`):

* ``sim://[profile]`` → a new :class:`~appliance.sim.modem.emulator.SimModem` of that profile
  (``conexant`` by default) — what ``line.device = "sim://"`` in the configuration means;
* ``sim_url(sim)`` → a URL naming that very emulator (``sim://conexant#7f…``), for a test or a
  tool that drives the emulator while the real :class:`~appliance.line.modem.Modem` opens it.

Either way the host gets a :class:`SimLoopbackTransport` whose ``write()`` reaches the modem via
``loop.call_soon`` (ordering like a real port) and which honours the modem's read pausing
(back-pressure, like a full tty buffer).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Final

from appliance.errors import ModemGone
from appliance.line.transport import DROP_DTR_EXTRA, register_link_scheme
from appliance.sim.modem.emulator import SimModem

__all__ = ["SIM_MODEM_EXTRA", "SIM_SCHEME", "SimLoopbackTransport", "install", "open_sim_link",
           "sim_url"]

_LOGGER = logging.getLogger(__name__)

SIM_SCHEME: Final = "sim://"
SIM_MODEM_EXTRA: Final = "sim_modem"
"""Extra-info name of the emulator behind a :class:`SimLoopbackTransport`."""
DEFAULT_PROFILE: Final = "conexant"
LOOPBACK_CHUNK_BYTES: Final = 1024
"""The loopback delivers host bytes in chunks this big, like a tty read."""
LOOPBACK_HIGH_WATER_BYTES: Final = 16384
LOOPBACK_LOW_WATER_BYTES: Final = 4096

#: Emulators named by :func:`sim_url`, while something else keeps them alive.
_NAMED: weakref.WeakValueDictionary[str, SimModem] = weakref.WeakValueDictionary()


class SimLoopbackTransport(asyncio.Transport):
    """Host side of the in-process link to a :class:`SimModem` (also its ``SimPort``).

    Host ``write()`` bytes queue here and reach ``sim.data_received`` from ``loop.call_soon``
    in chunks while the modem reads; modem bytes reach ``protocol.data_received`` the same way.
    ``pause_writing``/``resume_writing`` are called on the protocol at the water marks.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sim: SimModem, protocol: asyncio.Protocol
    ) -> None:
        super().__init__(extra={SIM_MODEM_EXTRA: sim, DROP_DTR_EXTRA: self.drop_dtr})
        self._loop = loop
        self._sim = sim
        self._protocol = protocol
        self._pending = bytearray()
        self._flush_scheduled = False
        self._sim_paused = False
        self._protocol_paused = False
        self._closing = False

    # --- host side (asyncio.Transport) --------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` for the modem."""
        if self._closing:
            return
        self._pending += data
        self._schedule_flush()
        if not self._protocol_paused and len(self._pending) > LOOPBACK_HIGH_WATER_BYTES:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        """Bytes the modem has not read yet."""
        return len(self._pending)

    def is_closing(self) -> bool:
        """True after close() or unplug()."""
        return self._closing

    def close(self) -> None:
        """Disconnect; ``connection_lost(None)`` follows on the protocol."""
        self._lose(None)

    def abort(self) -> None:
        """Same as close() (nothing to flush in process)."""
        self._lose(None)

    # --- modem side (SimPort) -----------------------------------------------------------------

    def to_host(self, data: bytes) -> None:
        """The modem writes ``data`` to the host."""
        if not self._closing:
            self._loop.call_soon(self._deliver_to_host, bytes(data))

    def pause_reading(self) -> None:
        """The modem's buffer is full: stop delivering host bytes."""
        self._sim_paused = True

    def resume_reading(self) -> None:
        """The modem can take more host bytes."""
        self._sim_paused = False
        self._schedule_flush()

    def drop_dtr(self) -> None:
        """The host drops DTR (V.250 ``&D2``): the modem hangs up."""
        if not self._closing:
            self._sim.dtr_dropped()

    def unplug(self) -> None:
        """The port vanishes: the host sees ``connection_lost`` with an error."""
        self._lose(ConnectionResetError("simulated modem unplugged"))

    # --- internals

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and not self._sim_paused and self._pending:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._pending and not self._sim_paused and not self._closing:
            chunk = bytes(self._pending[:LOOPBACK_CHUNK_BYTES])
            del self._pending[:LOOPBACK_CHUNK_BYTES]
            self._sim.data_received(chunk)
        if self._protocol_paused and len(self._pending) <= LOOPBACK_LOW_WATER_BYTES:
            self._protocol_paused = False
            self._protocol.resume_writing()

    def _deliver_to_host(self, data: bytes) -> None:
        if not self._closing:
            self._protocol.data_received(data)

    def _lose(self, exc: Exception | None) -> None:
        if self._closing:
            return
        self._closing = True
        self._pending.clear()
        self._sim.detach()
        self._loop.call_soon(self._protocol.connection_lost, exc)



def install() -> None:
    """Make ``sim://`` URLs openable by :func:`appliance.line.transport.open_transport`."""
    register_link_scheme(SIM_SCHEME, open_sim_link)


def sim_url(sim: SimModem) -> str:
    """A ``sim://`` URL that opens ``sim`` itself (and installs the scheme).

    The URL is valid while the caller keeps ``sim`` alive; opening it again after a close
    reattaches the same emulator (a reopened port finds the same modem).
    """
    install()
    url = f"{SIM_SCHEME}{sim.profile.name}#{id(sim):x}"
    _NAMED[url] = sim
    return url


async def open_sim_link(url: str, protocol: asyncio.Protocol) -> asyncio.Transport:
    """The ``sim://`` opener (:data:`appliance.line.transport.LinkOpener`).

    Raises:
        ModemGone: the URL names an emulator that no longer exists.
        ValueError: the profile is unknown.
    """
    if "#" in url:
        sim = _NAMED.get(url)
        if sim is None:
            raise ModemGone(f"no emulated modem {url} in this process")
    else:
        sim = SimModem(url[len(SIM_SCHEME):].strip("/") or DEFAULT_PROFILE)
    transport = SimLoopbackTransport(asyncio.get_running_loop(), sim, protocol)
    sim.attach(transport.to_host, port=transport)
    protocol.connection_made(transport)
    _LOGGER.info("modem link: simulated modem, profile %s", sim.profile.name)
    return transport
