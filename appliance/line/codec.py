"""Pure V.250/V.253 codecs: result-line framing, voice-stream DLE shielding, caller ID.

No I/O and no asyncio here: every class is a small state machine fed with bytes, so it can be
table- and property-tested at every split point (docs/v253.md §5.5: "events are not
atomic in reads"; field quirk #20: per-chunk parsers miss DLE pairs split across reads).

Written by hand because no maintained library implements V.253 DLE shielding or the modem
caller-ID report formats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

__all__ = [
    "CID_TAGS",
    "CR",
    "DLE",
    "DLE_ABORT_RX",
    "DLE_CAN",
    "DLE_END_DUPLEX",
    "DLE_ETX",
    "DTMF_DIGITS",
    "ETX",
    "LF",
    "MAX_LINE_BYTES",
    "SUB",
    "CallerId",
    "CallerIdAccumulator",
    "LineFramer",
    "VoiceChunk",
    "VoiceDecoder",
    "VoiceEncoder",
    "decode_cid_hex",
    "format_cid_lines",
    "parse_cid_line",
]

# --- bytes

DLE: Final = 0x10
"""Data Link Escape: shields events and data inside the V.253 voice stream (§5)."""
ETX: Final = 0x03
SUB: Final = 0x1A
CAN: Final = 0x18
CR: Final = 0x0D
LF: Final = 0x0A

DLE_ETX: Final = b"\x10\x03"
"""Host→modem: end of transmit stream; modem→host: end of voice stream (§5.2, §5.1)."""
DLE_CAN: Final = b"\x10\x18"
"""Host→modem: flush the transmit buffer now (§5.2)."""
DLE_ABORT_RX: Final = b"\x10!"
"""Host→modem: abort +VRX; the modem replies <DLE><ETX> then OK (§5.3)."""
DLE_END_DUPLEX: Final = b"\x10^"
"""Host→modem: leave +VTR; the modem replies <DLE><ETX> then OK (§5.3)."""

DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")
"""Characters a modem reports as DTMF digits after <DLE> (§5.1)."""
_SHIELD_START: Final = ord("/")
# §5.4 / quirk #15: end of DTMF shielding is '~' (0x7E) in most docs, <DEL> 0x7F on
# Si2493/Intel; accept both.
_SHIELD_END: Final = frozenset({ord("~"), 0x7F})

MAX_LINE_BYTES: Final = 1024
"""A result line longer than this is truncated (garbage protection); V.250 lines are short."""

_CONNECT: Final = "CONNECT"


# --- Layer 1a: result-line framing -----------------------------------------------------------


class LineFramer:
    """Split V.250 response bytes into lines; hand over to the voice stream after CONNECT.

    Contract:
        * Lines end at CR or LF; empty (all-whitespace) lines are dropped, so ``\\r\\n``
          framing, bare CR (echo ``AT…\\r``) and bare LF all work. Lines are decoded as
          UTF-8 with replacement and stripped; NUL bytes are removed.
        * Bytes beyond :data:`MAX_LINE_BYTES` in one line are dropped and counted in
          :attr:`overflow_bytes` (the result is the same for any split of the input).
        * ``<DLE>x`` pairs in command state (V.253 reports events there too, §5.1, e.g.
          ``<DLE>R`` rings in class 8, USR ``<DLE>H`` after ``+VLS=1``) are not put in lines:
          the event characters are collected and taken with :meth:`take_dle_events`.
          DTMF shielding (``<DLE>/ … <DLE>~``) collapses to one digit per block exactly as
          in the voice stream (:class:`VoiceDecoder`): a line held off-hook in voice command
          state without ``+VTR`` (line audio through ALSA, docs/line.md) still reports
          each key once.
        * When a line equals ``CONNECT`` the framer stops: ``feed`` returns the lines before it
          plus ``"CONNECT"`` and, as the second element, every byte after its terminator (the
          ``\\n`` of a ``\\r\\n`` pair included in the terminator even if it arrives in the next
          feed; the framer holds ``CONNECT`` back until it sees that byte). Those bytes
          belong to the voice stream. The framer is then reset and can be reused when the
          link returns to command state.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._after_dle = False
        self._connect_pending = False  # saw "CONNECT\r" at the end of the last feed
        self._dle_events: list[str] = []
        self._shield = _DtmfShield()
        self.overflow_bytes = 0

    def reset(self) -> None:
        """Forget any partial line and pending state (the link changed mode)."""
        self._buf.clear()
        self._after_dle = False
        self._connect_pending = False
        self._shield.reset()

    def take_dle_events(self) -> list[str]:
        """Return and clear the ``<DLE>x`` event characters seen in command state."""
        events, self._dle_events = self._dle_events, []
        return events

    def feed(self, data: bytes) -> tuple[list[str], bytes | None]:
        """Consume ``data``; return complete lines and, after CONNECT, the voice bytes.

        Returns:
            ``(lines, voice)`` where ``voice`` is None unless a ``CONNECT`` line completed in
            this call, in which case ``lines[-1] == "CONNECT"`` and ``voice`` holds every byte
            after the terminator (possibly empty).
        """
        lines: list[str] = []
        start = 0
        if self._connect_pending:
            if not data:
                return lines, None
            self._connect_pending = False
            # V.250: verbose results end with CR LF; the LF is terminator, not audio.
            if data[0] == LF:
                start = 1
            self.reset()
            return [_CONNECT], bytes(data[start:])
        buf = self._buf
        n = len(data)
        i = start
        while i < n:
            b = data[i]
            i += 1
            if self._after_dle:
                self._after_dle = False
                if b != DLE:  # <DLE><DLE> in command state is a stray data byte: ignore it
                    self._shield.event(b, self._dle_events)
                continue
            if b == DLE:
                self._after_dle = True
                continue
            if b not in (CR, LF):
                if len(buf) < MAX_LINE_BYTES:
                    buf.append(b)
                else:
                    self.overflow_bytes += 1
                continue
            line = _decode_line(buf)
            buf.clear()
            if not line:
                continue
            if line != _CONNECT:
                lines.append(line)
                continue
            if b == CR:
                if i >= n:
                    self._connect_pending = True
                    return lines, None
                if data[i] == LF:
                    i += 1
            self.reset()
            lines.append(_CONNECT)
            return lines, bytes(data[i:])
        return lines, None


class _DtmfShield:
    """§5.4 DTMF shielding state shared by the command-state and voice-stream decoders.

    ``<DLE>/`` opens a block, ``<DLE>~`` (or 0x7F, quirk #15) closes it; a digit repeated
    every 70 ms inside a block is reported once; anything else passes through.
    """

    __slots__ = ("in_shield", "reported")

    def __init__(self) -> None:
        self.in_shield = False
        self.reported = False

    def reset(self) -> None:
        self.in_shield = False
        self.reported = False

    def event(self, code: int, events: list[str]) -> None:
        """Append what the event byte ``code`` reports (if anything) to ``events``."""
        if code == _SHIELD_START:
            self.in_shield = True
            self.reported = False
            return
        if code in _SHIELD_END:
            self.in_shield = False
            return
        char = chr(code)
        if char in DTMF_DIGITS and self.in_shield:
            # §5.4: the digit is repeated every 70 ms while the tone lasts; report it once.
            if not self.reported:
                self.reported = True
                events.append(char)
            return
        events.append(char)


def _decode_line(buf: bytearray) -> str:
    return buf.replace(b"\x00", b"").decode("utf-8", errors="replace").strip()


# --- Layer 1b: voice stream


@dataclass(slots=True)
class VoiceChunk:
    """What one :meth:`VoiceDecoder.feed` call produced.

    Attributes:
        audio: sample bytes with all shielding removed (format unchanged).
        events: event characters in arrival order (DTMF digits collapsed per shield block).
        ended: ``<DLE><ETX>`` was seen: the voice stream is over.
        rest: bytes after ``<DLE><ETX>`` (command-state text again); empty unless ``ended``.
    """

    audio: bytes
    events: list[str] = field(default_factory=list)
    ended: bool = False
    rest: bytes = b""


class VoiceDecoder:
    """Stateful modem→host voice-stream decoder (V.253 §5.1, §5.4, §5.5).

    * ``<DLE><DLE>`` → one 0x10 byte; ``<DLE><SUB>`` → two 0x10 bytes.
    * ``<DLE><ETX>`` → ``ended=True``; the bytes after it are returned in ``rest`` and any
      later feed returns its input unchanged in ``rest`` until :meth:`reset`.
    * ``<DLE>/ … <DLE>~`` (or 0x7F) DTMF shielding → ONE digit event per block, however many
      repeats the modem sends; a bare ``<DLE>5`` outside a shield → one digit.
    * every other ``<DLE>x`` → event ``x`` (unknown codes included; the link logs them).
    * A trailing DLE and the inside-shield state are kept across feeds.

    Args:
        fmt: the voice format in use (kept for diagnostics; DLE shielding is the same for
            every format, §8: "16-bit and companded streams can contain 0x10 too").
    """

    def __init__(self, fmt: str = "u8") -> None:
        self.fmt = fmt
        self._after_dle = False
        self._shield = _DtmfShield()
        self._ended = False

    def reset(self) -> None:
        """Start a new voice stream."""
        self._after_dle = False
        self._shield.reset()
        self._ended = False

    @property
    def ended(self) -> bool:
        """True after ``<DLE><ETX>`` until :meth:`reset`."""
        return self._ended

    def feed(self, data: bytes) -> VoiceChunk:
        """Decode ``data``; see the class docstring for the contract."""
        if self._ended:
            return VoiceChunk(b"", [], True, bytes(data))
        if not self._after_dle and DLE not in data:
            # Most 20 ms chunks hold no DLE at all: no copy into a bytearray and back.
            return VoiceChunk(bytes(data))
        out = bytearray()
        events: list[str] = []
        n = len(data)
        i = 0
        while i < n:
            if self._after_dle:
                self._after_dle = False
                c = data[i]
                i += 1
                if c == DLE:
                    out.append(DLE)
                elif c == SUB:
                    out += b"\x10\x10"
                elif c == ETX:
                    self._ended = True
                    self._shield.reset()
                    return VoiceChunk(bytes(out), events, True, bytes(data[i:]))
                else:
                    self._shield.event(c, events)
                continue
            j = data.find(DLE, i)
            if j < 0:
                out += data[i:]
                break
            out += data[i:j]
            self._after_dle = True
            i = j + 1
        return VoiceChunk(bytes(out), events, False, b"")

class VoiceEncoder:
    """Host→modem voice-stream shielding: every 0x10 in audio is doubled (§5.2).

    Terminators (``DLE_ETX``, ``DLE_END_DUPLEX`` …) are written by the link, not here.
    """

    @staticmethod
    def encode(data: bytes) -> bytes:
        """Return ``data`` with every 0x10 byte doubled."""
        return data.replace(b"\x10", b"\x10\x10")


# --- Layer 1c: caller ID

CID_TAGS: Final = ("DATE", "TIME", "NMBR", "NAME", "MESG", "DDN_NMBR", "DDN", "NDID", "ERRM")
"""Formatted caller-ID tags (§7.1)."""

# §7.1: anchored, spaces around '=' optional (Conexant "DATE = 0321", USR "DATE=1203");
# substring matching misclassifies names such as SPRINGFIELD or TIME WARNER.
_CID_RE: Final = re.compile(
    r"^\s*(DATE|TIME|NMBR|NAME|MESG|DDN_NMBR|DDN|NDID|ERRM)\s*=\s*(.*?)\s*$"
)

_WITHHELD: Final = "P"  # §7.1: NMBR/NAME value 'P' = private (withheld)
_UNAVAILABLE: Final = "O"  # 'O' = out of area (unavailable)


def parse_cid_line(line: str) -> tuple[str, str] | None:
    """Return ``(tag, value)`` if ``line`` is a formatted caller-ID line, else None."""
    m = _CID_RE.match(line)
    if m is None:
        return None
    return m.group(1), m.group(2)


@dataclass(frozen=True, slots=True)
class CallerId:
    """A caller-ID report.

    Attributes:
        number: calling number digits, None if absent, withheld or unavailable.
        name: listing name, None if absent, withheld or unavailable.
        withheld: the exchange said the number (or name) is private ('P').
        unavailable: the exchange said it is out of area / unavailable ('O').
        date: ``MMDD`` as reported, or None.
        time: ``HHMM`` (24 h) as reported, or None.
        raw: the report lines (or hex text) exactly as received.
    """

    number: str | None = None
    name: str | None = None
    withheld: bool = False
    unavailable: bool = False
    date: str | None = None
    time: str | None = None
    raw: tuple[str, ...] = ()


class CallerIdAccumulator:
    """Builds a :class:`CallerId` from formatted report lines arriving one by one.

    Lines may come before or after the first RING (§7.1, §7.7: Hungary unverified), so the
    accumulator does not care about rings; the owner calls :meth:`reset` when a call ends.
    """

    def __init__(self) -> None:
        self._fields: dict[str, str] = {}
        self._raw: list[str] = []

    def reset(self) -> None:
        """Forget everything (call over)."""
        self._fields.clear()
        self._raw.clear()

    def feed(self, line: str) -> bool:
        """Take ``line`` if it is a caller-ID line; return whether it was one."""
        parsed = parse_cid_line(line)
        if parsed is None:
            return False
        tag, value = parsed
        # Intel p.111: repeated packets are reported once; last value wins either way.
        self._fields[tag] = value
        self._raw.append(line.strip())
        return True

    @property
    def has_data(self) -> bool:
        """True once at least one line was taken."""
        return bool(self._raw)

    def result(self) -> CallerId | None:
        """Return the caller ID built so far, or None if no line was seen."""
        if not self._raw:
            return None
        return _build_caller_id(self._fields, tuple(self._raw))


def _build_caller_id(fields: dict[str, str], raw: tuple[str, ...]) -> CallerId:
    number = fields.get("NMBR") or fields.get("DDN_NMBR") or fields.get("DDN") or None
    name = fields.get("NAME") or None
    withheld = _WITHHELD in (number, name)
    unavailable = _UNAVAILABLE in (number, name)
    if number in (_WITHHELD, _UNAVAILABLE):
        number = None
    if name in (_WITHHELD, _UNAVAILABLE):
        name = None
    return CallerId(
        number=number,
        name=name,
        withheld=withheld,
        unavailable=unavailable,
        date=fields.get("DATE") or None,
        time=fields.get("TIME") or None,
        raw=raw,
    )


# §7.2 / ETSI EN 300 659-3 MDMF parameter types.
_SDMF: Final = 0x04
_MDMF: Final = 0x80
_P_DATETIME: Final = 0x01
_P_NUMBER: Final = 0x02
_P_NUMBER_ABSENT: Final = 0x04
_P_NAME: Final = 0x07
_P_NAME_ABSENT: Final = 0x08


def decode_cid_hex(text: str) -> CallerId:
    """Decode an unformatted (``+VCID=2``) caller-ID report: SDMF or MDMF as ASCII hex (§7.2).

    The checksum byte is not verified (the modem reports the packet as received). Truncated
    parameters are decoded as far as they go.

    Raises:
        ValueError: not hex, empty, or an unknown message type.
    """
    hex_text = "".join(text.split())
    try:
        packet = bytes.fromhex(hex_text)
    except ValueError as exc:
        raise ValueError(f"caller-ID report is not hex: {text!r}") from exc
    if len(packet) < 2:
        raise ValueError(f"caller-ID report too short: {text!r}")
    kind, length = packet[0], packet[1]
    # The length byte is trusted unless the packet is visibly longer (the MDMF example in §7.2
    # declares 0x1E but carries 36 parameter bytes): then everything but the checksum counts.
    body = packet[2 : max(2 + length, len(packet) - 1)]
    fields: dict[str, str] = {}
    if kind == _SDMF:
        # SDMF: MMDDhhmm then the number (or 'P' / 'O').
        stamp = body[:8].decode("ascii", errors="replace")
        if len(stamp) == 8:
            fields["DATE"], fields["TIME"] = stamp[:4], stamp[4:]
        number = body[8:].decode("ascii", errors="replace")
        if number:
            fields["NMBR"] = number
    elif kind == _MDMF:
        i = 0
        while i + 2 <= len(body):
            ptype, plen = body[i], body[i + 1]
            value = body[i + 2 : i + 2 + plen].decode("ascii", errors="replace")
            i += 2 + plen
            if ptype == _P_DATETIME and len(value) >= 8:
                fields["DATE"], fields["TIME"] = value[:4], value[4:8]
            elif ptype == _P_NUMBER:
                fields["NMBR"] = value
            elif ptype == _P_NUMBER_ABSENT:
                fields.setdefault("NMBR", value[:1])
            elif ptype == _P_NAME:
                fields["NAME"] = value
            elif ptype == _P_NAME_ABSENT:
                fields.setdefault("NAME", value[:1])
    else:
        raise ValueError(f"unknown caller-ID message type 0x{kind:02X} in {text!r}")
    return _build_caller_id(fields, (text.strip(),))


def format_cid_lines(
    number: str | None,
    name: str | None,
    *,
    withheld: bool = False,
    when: datetime | None = None,
    spaced: bool = True,
) -> list[str]:
    """Return the formatted report lines a modem prints for a call (§7.1).

    Args:
        number: calling number; None → the NMBR line says 'O' (unavailable).
        name: listing name; None → no NAME line (common outside North America).
        withheld: report 'P' for the number (and the name if given).
        when: the call time for DATE/TIME; None → no DATE/TIME lines.
        spaced: ``DATE = 0321`` (Rockwell/Conexant) or ``DATE=1203`` (USR5637), quirk #16.
    """
    eq = " = " if spaced else "="
    lines: list[str] = []
    if when is not None:
        lines.append(f"DATE{eq}{when:%m%d}")
        lines.append(f"TIME{eq}{when:%H%M}")
    if withheld:
        lines.append(f"NMBR{eq}{_WITHHELD}")
        if name is not None:
            lines.append(f"NAME{eq}{_WITHHELD}")
        return lines
    lines.append(f"NMBR{eq}{number if number is not None else _UNAVAILABLE}")
    if name is not None:
        lines.append(f"NAME{eq}{name}")
    return lines
