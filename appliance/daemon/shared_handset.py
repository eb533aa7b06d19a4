"""Handset sharing: one shop handset for every line.

Contract: the first call (or outbound session) to ask for the handset owns it until it
releases it; later askers wait in FIFO order and the next one gets ``HandsetFree`` on its event
queue when the owner releases. Ringing, hook state, the earpiece and the mouthpiece belong to
the owner only (:class:`CallHandset` is one call's view), so two calls never hear each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from appliance.call.events import CallEvent, HandsetFree
from appliance.handset.slic import RingCadence, Slic

_LOGGER = logging.getLogger(__name__)


class SharedHandset:
    """One handset for every line: first come, first served; later calls hold.

    The call that first asks to ring the handset owns it until it ends; a call that asks
    while it is owned waits in FIFO order and gets ``HandsetFree`` when its turn comes. Hook
    events, the earpiece and the mouthpiece belong to the owner only, so two calls never hear
    each other.
    """

    def __init__(self, slic: Slic) -> None:
        self.slic = slic
        self.owner: str | None = None
        self._waiting: deque[str] = deque()
        self._queues: dict[str, asyncio.Queue[CallEvent]] = {}

    def register(self, reference: str, events: asyncio.Queue[CallEvent]) -> None:
        """A new call: it queues for the handset at once if another call has it."""
        self._queues[reference] = events
        if self.owner is not None and self.owner != reference:
            self._waiting.append(reference)

    def request(self, reference: str) -> bool:
        if self.owner is None:
            self.owner = reference
        if self.owner != reference and reference not in self._waiting:
            self._waiting.append(reference)
        return self.owner == reference

    def release(self, reference: str) -> None:
        self._queues.pop(reference, None)
        with contextlib.suppress(ValueError):
            self._waiting.remove(reference)
        if self.owner != reference:
            return
        self.owner = None
        while self._waiting:
            nxt = self._waiting.popleft()
            queue = self._queues.get(nxt)
            if queue is not None:
                self.owner = nxt
                queue.put_nowait(HandsetFree())
                _LOGGER.info("call %s: the handset is free for it now", nxt)
                return


class CallHandset:
    """The shared handset as one call sees it (implements the flow's HandsetPort)."""

    def __init__(self, shared: SharedHandset, reference: str, cadence: RingCadence) -> None:
        self._shared = shared
        self._reference = reference
        self._cadence = cadence

    @property
    def off_hook(self) -> bool:
        return self._shared.owner == self._reference and self._shared.slic.off_hook

    @property
    def available(self) -> bool:
        return self._shared.owner in (None, self._reference)

    def start_ringing(self) -> None:
        if self._shared.request(self._reference):
            self._shared.slic.start_ringing(self._cadence)

    async def stop_ringing(self) -> None:
        if self._shared.owner == self._reference:
            await self._shared.slic.stop_ringing()
