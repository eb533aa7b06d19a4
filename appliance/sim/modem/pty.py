"""Serve the emulated modem on a pseudo-terminal: the real serial path without hardware.

:class:`PtyModemServer` puts a :class:`~appliance.sim.modem.emulator.SimModem` behind a pty so
pyserial opens it like ``/dev/ttyACM0`` (docs/v253.md §9.2), reading the master at the modem's
playback rate so back-pressure reaches the host (§2 pty facts). :func:`serve_forever` is
``appliance sim-modem`` without a script.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pty
import tty
from pathlib import Path
from typing import Final

from appliance.sim.modem.emulator import SimModem

__all__ = ["PTY_MAX_WRITE_BUFFER_BYTES", "PtyModemServer", "serve_forever"]

_LOGGER = logging.getLogger(__name__)

PTY_MAX_WRITE_BUFFER_BYTES: Final = 65536
"""Bytes to the host kept while it is not reading; beyond this the modem overruns (drops)."""


class PtyModemServer:
    """Serve a :class:`SimModem` on a pseudo-terminal; :attr:`path` opens like ``/dev/ttyACM0``.

    The master fd is non-blocking and driven by ``loop.add_reader``/``add_writer``; the outgoing
    buffer is bounded (:data:`PTY_MAX_WRITE_BUFFER_BYTES`, excess dropped like a modem overrun).
    The emulator's read pausing removes the reader, so the pty fills (18 432 bytes, §2) and the
    host's writes back up. The slave fd stays open here so the master never reads EIO when the
    host closes the port (§9.2).

    Args:
        sim: the emulator to serve; default a new ``SimModem(profile)``.
        profile: used when ``sim`` is None.
    """

    def __init__(self, sim: SimModem | None = None, *, profile: str = "conexant") -> None:
        self.sim = sim if sim is not None else SimModem(profile)
        self.path = ""
        self.dropped_bytes = 0
        self._master = -1
        self._slave = -1
        self._out = bytearray()
        self._reading = False
        self._writing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> str:
        """Open the pty and start serving; return the slave path (e.g. ``/dev/pts/7``)."""
        self._loop = asyncio.get_running_loop()
        self._master, self._slave = pty.openpty()
        tty.setraw(self._slave)  # no echo, no CR/LF translation: bytes as on a USB modem
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self.sim.attach(self._write, port=self)
        self.resume_reading()
        _LOGGER.info("simulated modem (%s) on %s", self.sim.profile.name, self.path)
        return self.path

    async def stop(self) -> None:
        """Stop serving and close the pty."""
        self.sim.detach()
        self._close_fds()

    # --- SimPort ---------------------------------------------------------------------------------

    def pause_reading(self) -> None:
        """Leave host bytes in the pty (back-pressure)."""
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self._master)
            self._reading = False

    def resume_reading(self) -> None:
        """Read host bytes again."""
        if not self._reading and self._loop is not None and self._master >= 0:
            self._loop.add_reader(self._master, self._read_ready)
            self._reading = True

    def unplug(self) -> None:
        """Close the pty: the host's next read fails as if the USB modem vanished."""
        self.sim.detach()
        self._close_fds()

    # --- fd plumbing

    def _read_ready(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            _LOGGER.warning("pty read failed: %s", exc)
            self.pause_reading()
            return
        if data:
            self.sim.data_received(data)

    def _write(self, data: bytes) -> None:
        if self._master < 0:
            return
        room = PTY_MAX_WRITE_BUFFER_BYTES - len(self._out)
        if len(data) > room:
            self.dropped_bytes += len(data) - max(room, 0)
            data = data[: max(room, 0)]
        self._out += data
        if not self._writing:
            self._write_ready()

    def _write_ready(self) -> None:
        while self._out:
            try:
                n = os.write(self._master, self._out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                _LOGGER.warning("pty write failed: %s", exc)
                self._out.clear()
                break
            del self._out[:n]
        loop = self._loop
        if loop is None or self._master < 0:
            return
        if self._out and not self._writing:
            loop.add_writer(self._master, self._write_ready)
            self._writing = True
        elif not self._out and self._writing:
            loop.remove_writer(self._master)
            self._writing = False

    def _close_fds(self) -> None:
        loop = self._loop
        if self._master >= 0:
            if loop is not None:
                loop.remove_reader(self._master)
                loop.remove_writer(self._master)
            os.close(self._master)
            self._master = -1
        if self._slave >= 0:
            os.close(self._slave)
            self._slave = -1
        self._reading = self._writing = False
        self._out.clear()


async def serve_forever(profile: str = "conexant", symlink: Path | None = None) -> None:
    """Serve an emulated modem on a pty until cancelled (``appliance sim-modem``).

    The path is logged (and linked from ``symlink`` if given); nothing is printed.
    """
    server = PtyModemServer(profile=profile)
    path = await server.start()
    try:
        if symlink is not None:
            _replace_symlink(symlink, path)
            _LOGGER.info("simulated modem linked at %s", symlink)
        await asyncio.Event().wait()
    finally:
        if symlink is not None:
            _replace_symlink(symlink, None)
        await server.stop()


def _replace_symlink(link: Path, target: str | None) -> None:
    # A stale link from a previous run must not block start-up.
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    if target is not None:
        link.symlink_to(target)
