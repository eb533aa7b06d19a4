"""The real serial transport (pyserial-asyncio 0.6) on a pty served by the emulator."""

from __future__ import annotations

import asyncio
import time

import pytest

from appliance.errors import ModemGone
from appliance.line.at import AtProtocol, Mode
from appliance.line.codec import DLE_ETX
from appliance.line.transport import open_transport
from appliance.sim.modem.pty import PtyModemServer, serve_forever

TIMEOUT_S = 10.0
PTY_BUFFER_BYTES = 18432  # §2 pty facts: what a pty absorbs before write() blocks


async def _wait(predicate, timeout_s: float = TIMEOUT_S, poll_s: float = 0.02) -> None:  # type: ignore[no-untyped-def]
    # Polling a condition with a deadline (not a fixed sleep): the transport has no event
    # for "buffer empty".
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 (no event exists for "buffer empty")
            await asyncio.sleep(poll_s)


async def test_big_write_drains_without_busy_loop() -> None:
    server = PtyModemServer(profile="conexant")
    path = await server.start()
    transport, at = await open_transport(path, lambda: AtProtocol(command_timeout_s=2.0))
    try:
        for cmd in ("ATE0", "AT+FCLASS=8", "AT+VLS=1", "AT+VSM=1,8000"):
            await at.command(cmd)
        await at.command("AT+VTX", expect=("CONNECT",))
        size = PTY_BUFFER_BYTES + 8000 + 2000  # > pty buffer + the modem's 1 s
        at.write_raw(b"\x80" * size)
        assert transport.get_write_buffer_size() > 0  # the port pushed back
        cpu0, wall0 = time.process_time(), time.monotonic()
        await _wait(lambda: transport.get_write_buffer_size() == 0)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        assert wall > 0.3  # really paced by the 8000 B/s modem
        assert cpu < 0.5 * wall + 0.05  # no busy loop (pyserial-asyncio-fast would spin)
        # §5.3: <DLE><ETX> → the modem plays out what it holds, then OK (no <DLE><ETX> back
        # after +VTX: the OK arrives in the voice stream and the link accepts it there).
        await at.stop_voice(DLE_ETX, timeout_s=TIMEOUT_S)
        assert at.mode is Mode.COMMAND
        assert server.sim.mode == "command"
        assert len(server.sim.played) == size
        assert await at.command("ATI0") == ["56000"]
    finally:
        transport.close()
        await server.stop()


async def test_unplug_pty_fails_link() -> None:
    server = PtyModemServer(profile="usr")
    path = await server.start()
    failed: list[str] = []
    transport, at = await open_transport(path, lambda: AtProtocol(command_timeout_s=2.0))
    at.link_failed = failed.append
    try:
        assert await at.command("ATI0") == ["5601"]
        server.unplug()
        await _wait(lambda: bool(failed))
        with pytest.raises(ModemGone):
            await at.command("AT")
    finally:
        transport.close()
        await server.stop()


async def test_serve_forever_links_and_cleans_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    link = tmp_path / "appliance-modem"
    task = asyncio.create_task(serve_forever("v253", link), name="sim-modem")
    await _wait(link.is_symlink)
    transport, at = await open_transport(str(link), lambda: AtProtocol(command_timeout_s=2.0))
    try:
        assert await at.command("ATI0") == ["V253"]
    finally:
        transport.close()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not link.exists()


async def test_writes_go_out_at_once_and_in_order() -> None:
    # DirectWriteSerialTransport: a write the tty can take leaves before the next loop turn;
    # one larger than the pty buffer is split — the rest queued — and arrives whole, in order.
    import os
    import pty
    import tty

    master, slave = pty.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    transport, _ = await open_transport(os.ttyname(slave), asyncio.Protocol)
    received = bytearray()
    try:
        transport.write(b"ATI0\r")
        assert transport.get_write_buffer_size() == 0, "written at once, nothing queued"
        assert os.read(master, 64) == b"ATI0\r"
        payload = bytes(range(256)) * 400  # 102 400 bytes, far more than the pty holds
        transport.write(payload[:60000])
        transport.write(payload[60000:])
        assert transport.get_write_buffer_size() > 0, "the tty pushed back"

        def drain() -> bool:
            while True:
                try:
                    chunk = os.read(master, 65536)
                except BlockingIOError:
                    break
                received.extend(chunk)
            return len(received) >= len(payload)

        await _wait(drain)
        assert bytes(received) == payload
        await _wait(lambda: transport.get_write_buffer_size() == 0)
    finally:
        transport.close()
        os.close(master)
        os.close(slave)
