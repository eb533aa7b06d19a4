"""Open the modem link from a URL: a tty path (pyserial-asyncio 0.6) or ``sim://`` (in process).

* ``/dev/ttyACM0``, ``/dev/pts/7``, ``/dev/appliance-modem`` … → pyserial-asyncio 0.6 at 115200 8N1,
  ``exclusive=True`` (not the ``-fast`` fork: it busy-loops after a partial write, reference
  docs/v253.md "Serial I/O under asyncio"). ``socket://`` and ``rfc2217://`` go to pyserial too.
* ``sim://[profile]`` → an in-process :class:`~appliance.line.sim.SimModem` behind a loopback
  transport whose ``write()`` reaches the modem via ``loop.call_soon`` (ordering like a real port)
  and which honours the modem's read pausing (back-pressure, like a full tty buffer).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import serial
import serial_asyncio

from appliance.errors import ConfigError, ModemGone

if TYPE_CHECKING:
    from appliance.line.sim import SimModem

__all__ = ["BAUD_RATE", "DTR_DROP_S", "SIM_SCHEME", "SimLoopbackTransport", "drop_dtr",
           "open_transport"]

_LOGGER = logging.getLogger(__name__)

BAUD_RATE: Final = 115200
"""§2: 8000 B/s of voice needs ≥ 80 000 bit/s on a real UART; nominal over USB CDC-ACM."""
SIM_SCHEME: Final = "sim://"
_PYSERIAL_SCHEMES: Final = ("socket://", "rfc2217://", "loop://")
LOOPBACK_CHUNK_BYTES: Final = 1024
"""The loopback delivers host bytes in chunks this big, like a tty read."""
LOOPBACK_HIGH_WATER_BYTES: Final = 16384
LOOPBACK_LOW_WATER_BYTES: Final = 4096
DTR_DROP_S: Final = 0.5
"""How long DTR is held low to make the modem hang up (V.250 ``&D2``: on-hook and command
state on an ON-to-OFF transition of DTR; well over the tens of ms a modem debounces)."""

_P = TypeVar("_P", bound=asyncio.Protocol)


class SimLoopbackTransport(asyncio.Transport):
    """Host side of the in-process link to a :class:`SimModem` (also its ``SimPort``).

    Host ``write()`` bytes queue here and reach ``sim.data_received`` from ``loop.call_soon``
    in chunks while the modem reads; modem bytes reach ``protocol.data_received`` the same way.
    ``pause_writing``/``resume_writing`` are called on the protocol at the water marks.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sim: SimModem, protocol: asyncio.Protocol
    ) -> None:
        super().__init__(extra={"sim_modem": sim})
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


class DirectWriteSerialTransport(serial_asyncio.SerialTransport):  # type: ignore[misc]
    """pyserial-asyncio's transport, writing at once when nothing is queued.

    The stock ``write`` always queues and registers a writer, so each 20 ms voice frame costs
    an extra event-loop turn and two ``epoll_ctl`` calls before it reaches the tty. asyncio's
    own socket transports try the write first (``_SelectorSocketTransport.write``); this does
    the same on a POSIX tty (pyserial opens it ``O_NONBLOCK``): what the tty does not take now
    — and everything while something is already queued, to keep the order — goes the stock
    way, with its flow control (``pause_writing``) unchanged.
    """

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` now if the tty takes it; queue the rest (never blocks)."""
        fd = getattr(self._serial, "fd", None)
        if self._closing or self._write_buffer or not isinstance(fd, int) or not data:
            super().write(data)
            return
        try:
            sent = os.write(fd, data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            super().write(data)  # the stock path reports the error (connection_lost)
            return
        if sent < len(data):
            super().write(bytes(data[sent:]))


async def drop_dtr(transport: asyncio.BaseTransport, seconds: float = DTR_DROP_S) -> bool:
    """Hold DTR low for ``seconds`` then raise it again: a modem set to ``&D2`` (the V.250
    default, and what ``ATZ`` restores) goes on-hook. The last resort of a hang-up before the
    port is reopened.

    Returns:
        False when the port has no DTR line to drop (a pty, a TCP link); True otherwise.
    """
    if isinstance(transport, SimLoopbackTransport):
        transport.drop_dtr()
        return True
    port = transport.get_extra_info("serial")
    if port is None:
        return False
    try:
        port.dtr = False
        await asyncio.sleep(seconds)
        port.dtr = True
    except (serial.SerialException, OSError, ValueError) as exc:
        # A pty or socket:// has no modem-control lines (pyserial's ioctl fails with ENOTTY).
        _LOGGER.info("cannot drop DTR on this port: %s", exc)
        return False
    return True


async def open_transport(
    url: str,
    protocol_factory: Callable[[], _P],
    *,
    sim: SimModem | None = None,
) -> tuple[asyncio.Transport, _P]:
    """Open the modem link named by ``url`` and connect ``protocol_factory()`` to it.

    Args:
        url: a filesystem path to a tty, ``socket://host:port``, or ``sim://[profile]``.
        protocol_factory: builds the host protocol (an :class:`~appliance.line.at.AtProtocol`).
        sim: for ``sim://``, use this emulator instead of building one (its profile wins).

    Returns:
        ``(transport, protocol)``. For ``sim://`` the emulator is
        ``transport.get_extra_info("sim_modem")``.

    Raises:
        ConfigError: the URL scheme is unknown.
        ModemGone: the port could not be opened.
    """
    loop = asyncio.get_running_loop()
    if url.startswith(SIM_SCHEME):
        from appliance.line.sim import SimModem  # lazy: only sim:// needs it

        profile = url[len(SIM_SCHEME) :].strip("/") or "conexant"
        modem = sim if sim is not None else SimModem(profile)
        protocol = protocol_factory()
        transport = SimLoopbackTransport(loop, modem, protocol)
        modem.attach(transport.to_host, port=transport)
        protocol.connection_made(transport)
        _LOGGER.info("modem link: simulated modem, profile %s", modem.profile.name)
        return transport, protocol
    if url.startswith("/") or url.startswith(_PYSERIAL_SCHEMES):
        kwargs: dict[str, Any] = {"baudrate": BAUD_RATE}
        if url.startswith("/"):
            kwargs["exclusive"] = True  # a second opener (ModemManager, §2) must fail
        try:
            port = serial.serial_for_url(url, **kwargs)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise ModemGone(f"cannot open modem port {url}: {exc}") from exc
        protocol = protocol_factory()
        transport = DirectWriteSerialTransport(loop, protocol, port)
        _LOGGER.info("modem link: %s at %d baud", url, BAUD_RATE)
        return transport, protocol
    raise ConfigError(
        "line.device",
        "a tty path (/dev/ttyACM0), socket://host:port or sim://[profile]",
        url,
    )
