"""The telephone network around the emulated line: Hungarian cadences and who answers a call.

Constants of the exchange the emulator's line is connected to (ringing, ringback, busy and
dial tone, docs/v253.md §7 and hw/ag1171.md), :class:`SimCallee` (the far end of an outgoing
call) and :class:`CallProgress` (that call in the exchange). The behaviour that uses them is
:mod:`appliance.sim.modem.network`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["CID_DELAY_S", "RING_PERIOD_S", "CallProgress", "SimCallee"]

RING_PERIOD_S: Final = 5.0
"""Hungarian ringing: 1.25 s on / 3.75 s off → one RING every 5 s (§7.5, hw/ag1171.md)."""
CID_DELAY_S: Final = 1.75
"""Caller ID after the first ring: the 1.25 s burst plus ≈0.5 s of silence (§7.3)."""
BUSY_TONE_HZ: Final = 425.0
BUSY_ON_S: Final = 0.300
BUSY_OFF_S: Final = 0.300
"""Hungarian busy tone 425 Hz 300/300 ms (§7.7, hw/ag1171.md)."""
BUSY_LEVEL: Final = 0.3
BUSY_REPORT_S: Final = 4.0
"""``<DLE>b`` repeated every 4 s while busy is present (§5.1, Rockwell/ZyXEL)."""
DIAL_TONE_AFTER_S: Final = 30.0
"""After this long of busy the exchange returns dial tone: ``<DLE>d`` every 3 s [INF]."""
DIAL_REPORT_S: Final = 3.0
RINGBACK_ON_S: Final = 1.25
RINGBACK_PERIOD_S: Final = 5.0
"""Hungarian ringback 425 Hz 1250 ms on / 3750 ms off (hw/ag1171.md §3, Asterisk [hu])."""
ANSWER_AFTER_BURST_S: Final = 0.5
"""A callee lifts in the pause after a ringback burst (the exchange stops ringback then)."""
DIAL_DIGIT_S: Final = 0.2
"""Tone dialling: 100 ms DTMF + 100 ms gap per digit (S11/+VTD defaults)."""
DIAL_TONE_WAIT_S: Final = 2.0
"""How long the modem listens for dial tone before ``NO DIALTONE`` (S6; real: 2–5 s)."""


@dataclass(frozen=True, slots=True)
class SimCallee:
    """Who answers when the host dials out (the far end plus the exchange in between).

    Attributes:
        kind: ``answer`` (after ``rings`` ringback bursts), ``busy``, ``no-answer`` (the
            exchange gives up after ``rings`` bursts and plays busy/congestion, which are the
            same tone in Hungary) or ``no-dialtone`` (a dead line: ``NO DIALTONE``).
        rings: ringback bursts before the callee answers or the exchange gives up.
        source: the callee's voice once answered (``source(n) → int16[n]``); None keeps
            whatever :meth:`SimModem.set_caller_audio` set.
        busy_as_result: report busy as the ``ATD`` result ``BUSY`` (progress detection in the
            modem) instead of ``OK`` followed by ``<DLE>b`` and the in-band tone.
    """

    kind: str = "answer"
    rings: int = 2
    source: Callable[[int], npt.NDArray[np.int16]] | None = None
    busy_as_result: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("answer", "busy", "no-answer", "no-dialtone"):
            raise ValueError(f"unknown callee behaviour {self.kind!r}")
        if self.rings < 1:
            raise ValueError(f"rings must be >= 1, got {self.rings}")


@dataclass(slots=True)
class CallProgress:
    """An outgoing call in the exchange: ringback until answered or given up."""

    callee: SimCallee
    start: float
    bursts_reported: int = 0
    answered: bool = False
