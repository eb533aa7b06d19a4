"""sd_notify, written by hand in UTF-8.

The ``sdnotify`` package encodes latin-1: Hungarian status text is garbled, and a character
outside latin-1 makes it drop the whole datagram silently — including a ``WATCHDOG=1`` sent
with it (docs/audio.md §9). systemd-python needs a C build. The protocol is one
datagram on a UNIX socket, so fifteen lines do it.
"""

from __future__ import annotations

import logging
import os
import socket

_LOGGER = logging.getLogger(__name__)


def sd_notify(*fields: str, env: dict[str, str] | None = None) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=…"``) to systemd; False without a socket.

    Never raises: a missing or broken notify socket must not stop the appliance.
    """
    address = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    message = "\n".join(fields).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as exc:
        _LOGGER.warning("sd_notify to %s failed: %s", address, exc)
        return False
    return True
