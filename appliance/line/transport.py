"""Open the modem link from a URL: a tty path (pyserial-asyncio 0.6) or a registered scheme.

* ``/dev/ttyACM0``, ``/dev/pts/7``, ``/dev/appliance-modem`` … → pyserial-asyncio 0.6 at 115200 8N1,
  ``exclusive=True`` (not the ``-fast`` fork: it busy-loops after a partial write, reference
  docs/v253.md "Serial I/O under asyncio"). ``socket://`` and ``rfc2217://`` go to pyserial too.
* a scheme registered with :func:`register_link_scheme` → its opener. The modem emulator
  registers ``sim://`` (its in-process loopback) when the CLI wires it in; the line room itself
  knows no emulator (docs/architecture.md, "Rooms"), as pyserial knows its URL handlers only
  by registration.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import serial
import serial_asyncio

from appliance.errors import ConfigError, ModemGone

__all__ = [
    "BAUD_RATE",
    "DROP_DTR_EXTRA",
    "DTR_DROP_S",
    "LinkOpener",
    "drop_dtr",
    "open_transport",
    "register_link_scheme",
]

_LOGGER = logging.getLogger(__name__)

BAUD_RATE: Final = 115200
"""§2: 8000 B/s of voice needs ≥ 80 000 bit/s on a real UART; nominal over USB CDC-ACM."""
_PYSERIAL_SCHEMES: Final = ("socket://", "rfc2217://", "loop://")
DROP_DTR_EXTRA: Final = "drop_dtr"
"""Extra-info name under which a link that models DTR itself offers ``drop_dtr()``."""
DTR_DROP_S: Final = 0.5
"""How long DTR is held low to make the modem hang up (V.250 ``&D2``: on-hook and command
state on an ON-to-OFF transition of DTR; well over the tens of ms a modem debounces)."""

_P = TypeVar("_P", bound=asyncio.Protocol)

LinkOpener = Callable[[str, asyncio.Protocol], Awaitable[asyncio.Transport]]
"""Opens the link a URL of a registered scheme names, connects ``protocol`` to it (its
``connection_made`` has been called) and returns the transport. Raises ModemGone when the
link cannot be opened, ConfigError when the rest of the URL is wrong."""

_LINK_SCHEMES: dict[str, LinkOpener] = {}


def register_link_scheme(scheme: str, opener: LinkOpener) -> None:
    """Let :func:`open_transport` open URLs starting with ``scheme`` (``"sim://"``) by ``opener``.

    Registering the same scheme again replaces its opener (idempotent for the same one).
    """
    _LINK_SCHEMES[scheme] = opener



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

    def _read_ready(self) -> None:
        """Hand what the tty holds to the protocol, read with one ``os.read``.

        pyserial's ``read`` wraps it in a loop of two ``select`` calls and a timeout object
        per 20 ms voice frame; the tty is ``O_NONBLOCK`` and the loop has already said it is
        readable. Failures end the transport as the stock path does: an error, or a readable
        tty that returns nothing (the USB modem is gone).
        """
        fd = getattr(self._serial, "fd", None)
        if not isinstance(fd, int):
            super()._read_ready()
            return
        try:
            data = os.read(fd, self._max_read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close(exc=serial.SerialException(f"read failed: {exc}"))
            return
        if not data:
            self._close(exc=serial.SerialException(
                "device reports readiness to read but returned no data (device disconnected "
                "or multiple access on port?)"))
            return
        self._protocol.data_received(data)


async def drop_dtr(transport: asyncio.BaseTransport, seconds: float = DTR_DROP_S) -> bool:
    """Hold DTR low for ``seconds`` then raise it again: a modem set to ``&D2`` (the V.250
    default, and what ``ATZ`` restores) goes on-hook. The last resort of a hang-up before the
    port is reopened.

    Returns:
        False when the port has no DTR line to drop (a pty, a TCP link); True otherwise.
    """
    own_dtr = transport.get_extra_info(DROP_DTR_EXTRA)
    if callable(own_dtr):
        own_dtr()
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
) -> tuple[asyncio.Transport, _P]:
    """Open the modem link named by ``url`` and connect ``protocol_factory()`` to it.

    Args:
        url: a filesystem path to a tty, ``socket://host:port``, or a URL of a scheme given to
            :func:`register_link_scheme` (``sim://[profile]`` once the emulator is wired in).
        protocol_factory: builds the host protocol (an :class:`~appliance.line.at.AtProtocol`).

    Returns:
        ``(transport, protocol)``.

    Raises:
        ConfigError: the URL scheme is unknown (or not registered in this process).
        ModemGone: the port could not be opened.
    """
    loop = asyncio.get_running_loop()
    for scheme, opener in _LINK_SCHEMES.items():
        if url.startswith(scheme):
            protocol = protocol_factory()
            return await opener(url, protocol), protocol
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
    schemes = "".join(f", {scheme}…" for scheme in _LINK_SCHEMES)
    raise ConfigError(
        "line.device",
        f"a tty path (/dev/ttyACM0), socket://host:port{schemes} (sim://[profile] is the "
        "emulator, wired in by the appliance command)",
        url,
    )
