"""Fake transports between a host protocol and the emulator (house style §2.5, bellows test_ash).

Each :class:`FakeLink` joins an ``asyncio.Protocol`` (the host) and a ``SimModem`` (the DCE) with a
delivery policy applied in BOTH directions:

* ``loopback`` — whole writes, delivered with ``loop.call_soon`` (like a real port);
* ``one_byte`` — every write split into single bytes;
* ``random_split`` — writes cut at seeded random points (DLE-boundary bugs);
* ``delayed`` — whole writes delivered via ``loop.call_later(0, …)`` (callback vs await order).

:class:`ScriptedTransport` records what the host wrote and lets a test feed modem bytes by hand.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable

from appliance.sim.modem.emulator import SimModem

POLICIES = ("loopback", "one_byte", "random_split", "delayed")


class _Side(asyncio.Transport):
    def __init__(self, link: FakeLink) -> None:
        super().__init__(extra={"sim_modem": link.sim})
        self._link = link

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._link.host_to_modem(bytes(data))

    def is_closing(self) -> bool:
        return self._link.closed

    def close(self) -> None:
        self._link.lose(None)

    def get_write_buffer_size(self) -> int:
        return 0


class FakeLink:
    """A host protocol and a SimModem joined by a fake transport with a delivery ``policy``."""

    def __init__(self, protocol: asyncio.Protocol, sim: SimModem, policy: str, seed: int = 1):
        if policy not in POLICIES:
            raise ValueError(policy)
        self.loop = asyncio.get_running_loop()
        self.protocol = protocol
        self.sim = sim
        self.policy = policy
        self.closed = False
        self._rng = random.Random(seed)
        self.transport = _Side(self)
        sim.attach(self.modem_to_host, port=self)
        protocol.connection_made(self.transport)

    # SimPort: reading is never paused here (the loopback and pty tests cover back-pressure).
    def pause_reading(self) -> None:
        """Ignored by the fakes."""

    def resume_reading(self) -> None:
        """Ignored by the fakes."""

    def unplug(self) -> None:
        """The port vanishes."""
        self.lose(ConnectionResetError("fake port unplugged"))

    def lose(self, exc: Exception | None) -> None:
        """Close both ends; the host gets ``connection_lost(exc)``."""
        if self.closed:
            return
        self.closed = True
        self.sim.detach()
        self.loop.call_soon(self.protocol.connection_lost, exc)

    def host_to_modem(self, data: bytes) -> None:
        """Deliver host bytes to the emulator per the policy."""
        self._deliver(data, self.sim.data_received)

    def modem_to_host(self, data: bytes) -> None:
        """Deliver emulator bytes to the host per the policy."""
        self._deliver(data, self.protocol.data_received)

    def _deliver(self, data: bytes, sink: Callable[[bytes], None]) -> None:
        if self.closed or not data:
            return

        def guarded(chunk: bytes) -> None:
            if not self.closed:
                sink(chunk)

        for chunk in self._chunks(data):
            if self.policy == "delayed":
                self.loop.call_later(0, guarded, chunk)
            else:
                self.loop.call_soon(guarded, chunk)

    def _chunks(self, data: bytes) -> list[bytes]:
        if self.policy == "one_byte":
            return [data[i : i + 1] for i in range(len(data))]
        if self.policy == "random_split" and len(data) > 1:
            cuts = sorted(self._rng.sample(range(1, len(data)), k=min(3, len(data) - 1)))
            bounds = [0, *cuts, len(data)]
            return [data[a:b] for a, b in itertools.pairwise(bounds)]
        return [data]


class ScriptedTransport(asyncio.Transport):
    """Records host writes; the test plays the modem by calling ``protocol.data_received``."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.wrote = asyncio.Event()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data
        self.wrote.set()

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    async def wait_written(self, needle: bytes, timeout_s: float = 5.0) -> None:
        """Wait until ``needle`` appears in what the host wrote."""
        async with asyncio.timeout(timeout_s):
            while needle not in self.written:
                self.wrote.clear()
                await self.wrote.wait()
