"""Events the call flow reacts to, in the call's own words.

The daemon translates hardware events (modem ``<DLE>`` codes, SHK edges, in-band DTMF) into
these, so ``call/`` never imports ``line/``, ``handset/`` or ``audio/``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KeyPressed:
    """The caller pressed a DTMF key (``source``: ``modem`` report or ``inband`` detector)."""

    digit: str
    source: str = "modem"


@dataclass(frozen=True, slots=True)
class CallerHungUp:
    """The far end went away (busy/dial tone, loop break, silence, NO CARRIER)."""

    reason: str


@dataclass(frozen=True, slots=True)
class LineLost:
    """The modem link failed (USB pulled, port gone): the call cannot continue."""

    reason: str


@dataclass(frozen=True, slots=True)
class AgentOffHook:
    """The shop lifted the handset."""


@dataclass(frozen=True, slots=True)
class AgentOnHook:
    """The shop put the handset down (SHK on-hook longer than 500 ms)."""


@dataclass(frozen=True, slots=True)
class HandsetFree:
    """The shared handset became free for this call (another line's call has ended)."""


@dataclass(frozen=True, slots=True)
class PlaybackDone:
    """A prompt queued with ``token`` has been played out completely."""

    token: str


@dataclass(frozen=True, slots=True)
class RecordingFailed:
    """The recording stopped mid-call (the disk is full, a write failed); the call goes on
    unrecorded. ``reason`` is the error, for the log and the call's events."""

    reason: str


CallEvent = (
    KeyPressed | CallerHungUp | LineLost | AgentOffHook | AgentOnHook | HandsetFree | PlaybackDone
    | RecordingFailed
)


# --- outbound calls: added alongside, the inbound union above is unchanged --------


@dataclass(frozen=True, slots=True)
class DigitDialled:
    """The shop dialled a digit on the handset (``source``: ``dtmf`` in-band or ``pulse``)."""

    digit: str
    source: str = "dtmf"


@dataclass(frozen=True, slots=True)
class LineProgress:
    """Call progress on an outgoing call: ``ringback``, ``busy``, ``dialtone`` or ``answered``.

    ``source``: ``modem`` (a ``<DLE>`` report) or ``inband`` (the daemon's own detector).
    """

    kind: str
    source: str = "inband"


@dataclass(frozen=True, slots=True)
class RecordRequested:
    """The shop asked to record the outgoing call (front-panel button or ``**``)."""

    source: str


OutboundEvent = CallEvent | DigitDialled | LineProgress | RecordRequested
