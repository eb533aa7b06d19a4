"""A call on a modem without full duplex: transmit while the caller has something to hear,
receive the rest of the time ("degrade to what is possible").

A half-duplex voice modem has ``+VTX`` (play) and ``+VRX`` (record) but no ``+VTR``
(docs/v253.md §3). The shop's voice cannot reach the caller, so the
call is an answering machine (see ``InboundCall._after_notice``): the notice and the
reference in ``+VTX``, then the message in ``+VRX``, and ``+VTX`` again for the goodbye.
:class:`HalfDuplexAudio` switches the modem between the two states as :class:`CallMedia`
asks: whenever the media has something for the line (``line_busy`` / ``line_wanted``) the
modem transmits; otherwise it receives.

Pacing in the transmit state: there is no received audio to clock the transmit side, so frames
go out on the host's monotonic clock against absolute deadlines (``t0 + k·20 ms``, lateness is
caught up, never accumulated) with a bounded lead of :data:`TX_LEAD_S` ahead of real time
(100–200 ms), and nothing is written while the port throttles us
(``pause_writing``). The two crystals differ by ≤ 50 ppm — 3 ms per minute of prompt — well
inside the lead; a modem whose buffer still runs dry reports ``<DLE>u`` (counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final, Protocol

import numpy as np

from appliance.errors import ModemError

_LOGGER = logging.getLogger(__name__)

#: Audio kept queued ahead of real time while transmitting (100–200 ms). It
#: absorbs scheduling jitter of the host; every frame of it delays what the caller hears
#: after a key press (e.g. the opt-out confirmation) by 20 ms.
TX_LEAD_S: Final = 0.12
#: A prompt that follows another within this time stays in the same ``+VTX`` (the flow takes
#: a few database writes between the notice and the message prompt; leaving and re-entering
#: the transmit state would cost two command round trips of gap). Counted from the moment the
#: last frame was queued, while the modem still plays the lead, so a holdover no longer than
#: the lead does not delay listening after the beep: the caller starts speaking right then.
HOLDOVER_S: Final = 0.1
FRAME_S: Final = 0.02


class HalfDuplexModem(Protocol):
    """The :class:`appliance.line.modem.Modem` operations a half-duplex call uses."""

    async def start_play(self) -> None: ...

    async def stop_play(self, *, flush: bool = False) -> None: ...

    async def start_record(self, on_audio: Callable[[np.ndarray], None]) -> None: ...

    async def stop_record(self) -> None: ...

    def send_audio(self, samples: np.ndarray) -> None: ...

    @property
    def writing_paused(self) -> bool: ...


class HalfDuplexMedia(Protocol):
    """The :class:`appliance.daemon.media.CallMedia` side of a half-duplex call."""

    line_wanted: asyncio.Event

    @property
    def line_busy(self) -> bool: ...

    def transmit_frame(self) -> np.ndarray: ...

    def on_line_audio(self, frame: np.ndarray) -> None: ...


class HalfDuplexAudio:
    """Runs one call's audio on a half-duplex modem until :meth:`stop`.

    Args:
        modem: the off-hook modem (voice command state).
        media: the call's media, already switched to host-clocked transmit.
        reference: the call reference, for the log.
        lead_s: see :data:`TX_LEAD_S`.
        holdover_s: see :data:`HOLDOVER_S`.
    """

    def __init__(self, modem: HalfDuplexModem, media: HalfDuplexMedia, reference: str, *,
                 lead_s: float = TX_LEAD_S, holdover_s: float = HOLDOVER_S) -> None:
        self._modem = modem
        self._media = media
        self.reference = reference
        self._lead_frames = max(1, round(lead_s / FRAME_S))
        self._holdover_s = holdover_s
        self._task: asyncio.Task[None] | None = None
        #: Transmit/receive switches (``play``/``record`` entries), for status and tests.
        self.states: list[str] = []
        #: The largest lead seen while transmitting, in frames.
        self.max_lead_frames = 0

    def start(self) -> None:
        """Start switching (the first state is ``+VTX`` when a prompt is already queued)."""
        self._task = asyncio.create_task(self._run(), name=f"half-duplex-{self.reference}")

    async def stop(self) -> None:
        """Stop switching; the modem is left in whatever voice state it is in (the caller
        hangs up with ``Modem.stop_voice``/``hang_up``). Never raises."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self) -> None:
        try:
            while True:
                if self._media.line_busy:
                    await self._transmit()
                else:
                    await self._receive()
        except ModemError as exc:
            # The modem vanished or wedged: the line's LinkDown ends the call; nothing to add.
            _LOGGER.warning("call %s: half-duplex audio stopped: %s", self.reference, exc)
        except Exception:
            _LOGGER.exception("call %s: half-duplex audio failed", self.reference)

    async def _transmit(self) -> None:
        self.states.append("play")
        _LOGGER.debug("call %s: transmitting (+VTX)", self.reference)
        await self._modem.start_play()
        loop = asyncio.get_running_loop()
        lead = self._lead_frames
        start = loop.time()
        sent = 0
        idle_since: float | None = None
        while True:
            now = loop.time()
            if self._media.line_busy:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= self._holdover_s:
                break
            played = int((now - start) / FRAME_S)  # frames the modem has played by now
            if sent < played:
                # We fell behind (host stalled, or the port throttled us): the modem ran dry
                # and says so with <DLE>u. Re-anchor rather than burst: the lead stays bounded.
                start = now - sent * FRAME_S
                played = sent
            while sent < played + lead and not self._modem.writing_paused:
                self._modem.send_audio(self._media.transmit_frame())
                sent += 1
            self.max_lead_frames = max(self.max_lead_frames, sent - played)
            # Absolute deadline of the next frame boundary: no drift from sleeping late.
            await asyncio.sleep(max(0.0, start + (played + 1) * FRAME_S - loop.time()))
        # <DLE><ETX>: the modem plays out the lead it holds, then OK (V.253 §5.3).
        await self._modem.stop_play()

    async def _receive(self) -> None:
        wanted = self._media.line_wanted
        wanted.clear()
        if self._media.line_busy:
            return
        self.states.append("record")
        _LOGGER.debug("call %s: receiving (+VRX)", self.reference)
        await self._modem.start_record(self._media.on_line_audio)
        await wanted.wait()
        # <DLE>! → <DLE><ETX> + OK: the caller hears the next prompt a command later.
        await self._modem.stop_record()
