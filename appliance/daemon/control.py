"""The control socket: how the CLI reaches the running daemon's live state.

One UNIX stream socket (``<state_dir>/control.sock``, mode 0660 so the ``appliance`` group can
use it). Protocol: the client sends one JSON object on one line (``{"cmd": "status"}``), the
daemon answers with one JSON object on one line (``{"ok": true, …}`` or ``{"ok": false,
"error": "…"}``) and closes. The daemon alone owns the hardware; the CLI never opens the modem
or the sound card while the daemon runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

_LOGGER = logging.getLogger(__name__)

SOCKET_NAME: Final = "control.sock"
#: A request larger than this is refused (the protocol carries small commands only).
MAX_REQUEST_BYTES: Final = 64 * 1024
CLIENT_TIMEOUT_S: Final = 5.0

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


class ControlServer:
    """Serves ``handlers[cmd](request) -> reply`` on the control socket (loop side)."""

    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self._handlers = handlers
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a killed daemon
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                       limit=MAX_REQUEST_BYTES)
        os.chmod(self.path, 0o660)
        _LOGGER.info("control socket at %s", self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(CLIENT_TIMEOUT_S):
                line = await reader.readline()
            reply = await self._dispatch(line)
        except (TimeoutError, ValueError, asyncio.LimitOverrunError) as exc:
            reply = {"ok": False, "error": f"bad request: {exc}"}
        try:
            writer.write(json.dumps(reply, ensure_ascii=False, default=str).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {"ok": False, "error": "not a JSON line"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "not a JSON object"}
        handler = self._handlers.get(str(request.get("cmd")))
        if handler is None:
            known = ", ".join(sorted(self._handlers))
            return {"ok": False, "error": f"unknown command (known: {known})"}
        try:
            return {"ok": True, **await handler(request)}
        except Exception as exc:  # a bad request must never take the daemon down
            _LOGGER.exception("control command %s failed", request.get("cmd"))
            return {"ok": False, "error": str(exc)}


def request(path: Path, payload: dict[str, Any], *,
            timeout_s: float = CLIENT_TIMEOUT_S) -> dict[str, Any]:
    """Client side (the CLI, blocking): send one request, return the reply.

    Raises:
        ConnectionRefusedError / FileNotFoundError: no daemon listening.
        PermissionError: the user may not use the socket (not in the appliance group).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    reply: dict[str, Any] = json.loads(data.decode("utf-8"))
    return reply
