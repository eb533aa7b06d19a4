"""Fuzz the line layers: the modem's bytes to the host are random bytes mixed with valid V.253
fragments, idle and mid-call, and the host must neither fail nor believe a line on-hook that
the modem holds.

A stream is a list of chunks the emulator sends to the host (:meth:`SimModem.inject`) while
the real :class:`~appliance.line.modem.Modem` and :class:`~appliance.line.at.AtProtocol` run
over the in-process link. Per stream (:func:`run_stream`):

1. idle: the chunks arrive while the line is idle; then the liveness check (``AT``, as the
   daemon's) and, if the link is wedged, a reopen — as the daemon's supervisor does;
2. mid-call: the line is answered and in full duplex (the emulator's caller audio flowing);
   the chunks arrive in the middle of it;
3. the host hangs up.

What must hold (:class:`FuzzTally`): nothing raises out of the receive path
(``receive_errors`` = 0), and when ``hang_up()`` says on-hook the emulator is on-hook; when it
cannot confirm, the reopen that follows must leave the line on-hook (``left_off_hook`` = 0).
The test suite runs a bounded number through hypothesis (tests/sim/test_line_fuzz.py);
``appliance bench --fuzz-streams N`` runs N seeded streams (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from appliance.errors import ModemError
from appliance.line.modem import LinkDown, Modem
from appliance.sim.modem.emulator import SimModem
from appliance.sim.modem.link import sim_url

__all__ = ["FRAGMENTS", "FuzzTally", "FuzzWorker", "random_stream", "run_streams"]

#: Valid V.250/V.253 pieces a modem sends (results, URCs, caller ID, <DLE> events and stop
#: sequences, a CONNECT out of nowhere), mixed into the random bytes.
FRAGMENTS: Final = (
    b"\r\nOK\r\n", b"\r\nERROR\r\n", b"\r\nRING\r\n", b"RING\r\n", b"\r\nNO CARRIER\r\n",
    b"\r\nCONNECT\r\n", b"\r\nVCON\r\n", b"\r\nBUSY\r\n", b"\r\n+VLS: 1\r\n", b"\r\n0\r\n",
    b"\r\nDATE = 0101\r\nTIME = 1200\r\nNMBR = 301234567\r\nNAME = X\r\n",
    b"\r\nNMBR=P\r\n", b"\x10b", b"\x10d", b"\x10s", b"\x10q", b"\x10h", b"\x10H", b"\x10L",
    b"\x10l", b"\x105", b"\x10#", b"\x10R", b"\x10u", b"\x10\x03", b"\x10\x10", b"\x10",
    b"\x10\x03\r\nOK\r\n", b"AT\r", b"\x80" * 160, b"\xff\x00" * 40, b"\r", b"\n",
)
#: Command and voice-stop timeouts of the fuzzed modem: the emulator answers in microseconds,
#: and a stream that wedges the link should cost milliseconds, not the product's seconds.
FUZZ_TIMEOUT_S: Final = 0.05
#: A stream that takes longer than this (hang-up included) counts as stuck.
STREAM_LIMIT_S: Final = 10.0


@dataclass(slots=True)
class FuzzTally:
    """What the streams did; ``ok`` when nothing that must not happen did."""

    streams: int = 0
    chunks: int = 0
    bytes: int = 0
    receive_errors: int = 0
    hang_ups_confirmed: int = 0
    hang_ups_unconfirmed: int = 0
    reopens: int = 0
    link_downs: int = 0
    left_off_hook: int = 0
    stuck: int = 0
    answer_failures: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.receive_errors or self.left_off_hook or self.stuck)

    def add(self, other: FuzzTally) -> None:
        for name in ("streams", "chunks", "bytes", "receive_errors", "hang_ups_confirmed",
                     "hang_ups_unconfirmed", "reopens", "link_downs", "left_off_hook", "stuck",
                     "answer_failures"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failures.extend(other.failures[: max(0, 20 - len(self.failures))])


def random_stream(rng: random.Random, max_chunks: int = 12) -> list[bytes]:
    """A stream of up to ``max_chunks`` chunks: random bytes, fragments, or both spliced."""
    chunks = []
    for _ in range(rng.randint(1, max_chunks)):
        kind = rng.random()
        if kind < 0.35:
            chunks.append(rng.randbytes(rng.randint(1, 64)))
        elif kind < 0.8:
            chunks.append(rng.choice(FRAGMENTS))
        else:
            data = bytearray(rng.choice(FRAGMENTS))
            cut = rng.randint(0, len(data))
            data[cut:cut] = rng.randbytes(rng.randint(1, 8))
            chunks.append(bytes(data))
    return chunks


class FuzzWorker:
    """One emulator and one modem, reused stream after stream (as one line is call after
    call); reopened when a stream wedged the link."""

    def __init__(self) -> None:
        self.sim = SimModem("conexant", ring_period_s=0.05, cid_delay_s=0.01)
        self.modem: Modem | None = None
        self._receive_errors_seen = 0

    async def _open(self) -> Modem:
        modem = Modem(sim_url(self.sim), command_timeout_s=FUZZ_TIMEOUT_S,
                      stop_timeout_s=FUZZ_TIMEOUT_S, cid_settle_s=0.01)
        await modem.open()
        self.modem = modem
        self._receive_errors_seen = 0
        return modem

    async def _reopen(self, tally: FuzzTally) -> Modem | None:
        """Close and open again, as the daemon's supervisor does; None if the open fails
        (:class:`~appliance.errors.LineOffHook`: the modem will not let go of the line)."""
        tally.reopens += 1
        if self.modem is not None:
            self._count_errors(tally)
            await self.modem.close()
            self.modem = None
        try:
            return await self._open()
        except ModemError as exc:
            tally.failures.append(f"reopen failed: {exc}")
            if self.modem is not None:
                await self.modem.close()
                self.modem = None
            return None

    def _count_errors(self, tally: FuzzTally) -> None:
        if self.modem is not None:
            errors = self.modem.stats["receive_errors"]
            tally.receive_errors += errors - self._receive_errors_seen
            self._receive_errors_seen = errors

    async def _inject(self, chunks: list[bytes], tally: FuzzTally) -> None:
        for chunk in chunks:
            self.sim.inject(chunk)
            tally.chunks += 1
            tally.bytes += len(chunk)
            await asyncio.sleep(0)  # delivered one by one, as a tty read returns them
        await asyncio.sleep(0)

    def _drain(self, modem: Modem, tally: FuzzTally) -> None:
        while not modem.events.empty():
            if isinstance(modem.events.get_nowait(), LinkDown):
                tally.link_downs += 1

    async def run_stream(self, idle: list[bytes], call: list[bytes]) -> FuzzTally:
        """One stream: ``idle`` chunks while idle, ``call`` chunks mid-call, then hang up."""
        tally = FuzzTally(streams=1)
        try:
            async with asyncio.timeout(STREAM_LIMIT_S):
                await self._stream(idle, call, tally)
        except TimeoutError:
            tally.stuck += 1
            tally.failures.append(f"stuck: idle={idle!r} call={call!r}")
            self.sim.accept_hang_up()
            await self._reopen(tally)
        return tally

    async def _stream(self, idle: list[bytes], call: list[bytes], tally: FuzzTally) -> None:
        modem = self.modem or await self._open()
        await self._inject(idle, tally)
        try:
            await modem.check_alive()  # the daemon's idle liveness check
        except ModemError:
            reopened = await self._reopen(tally)
            if reopened is None:
                tally.left_off_hook += int(self.sim.off_hook)
                return
            modem = reopened
        self._drain(modem, tally)
        try:
            await modem.answer()
            await modem.start_duplex(lambda frame: None)
        except ModemError:
            tally.answer_failures += 1
        await self._inject(call, tally)
        confirmed = await modem.hang_up()
        self._count_errors(tally)
        self._drain(modem, tally)
        if confirmed:
            tally.hang_ups_confirmed += 1
            if self.sim.off_hook:
                tally.left_off_hook += 1
                tally.failures.append(f"on-hook claimed, line held: idle={idle!r} "
                                      f"call={call!r}")
                await self._reopen(tally)
        else:
            tally.hang_ups_unconfirmed += 1
            await self._reopen(tally)  # the daemon reopens; open() confirms on-hook
            if self.sim.off_hook:
                tally.left_off_hook += 1
                tally.failures.append(f"off-hook after reopen: idle={idle!r} call={call!r}")
        if modem is self.modem and modem.reopen_needed:
            await self._reopen(tally)

    async def close(self) -> None:
        if self.modem is not None:
            await self.modem.close()
            self.modem = None


async def run_streams(count: int, *, seed: int = 15, workers: int = 50,
                      progress: Callable[[str], None] | None = None) -> FuzzTally:
    """``count`` seeded random streams over ``workers`` modems running at once."""
    rng = random.Random(seed)  # noqa: S311 (a reproducible fuzz, not security)
    streams = [(random_stream(rng), random_stream(rng)) for _ in range(count)]
    total = FuzzTally()
    queue: asyncio.Queue[tuple[list[bytes], list[bytes]]] = asyncio.Queue()
    for stream in streams:
        queue.put_nowait(stream)
    step = max(1, count // 10)

    async def work() -> None:
        worker = FuzzWorker()
        try:
            while not queue.empty():
                idle, call = queue.get_nowait()
                total.add(await worker.run_stream(idle, call))
                if progress is not None and total.streams % step == 0:
                    progress(f"fuzz: {total.streams}/{count} streams")
        finally:
            await worker.close()

    await asyncio.gather(*(work() for _ in range(min(workers, count))))
    return total
