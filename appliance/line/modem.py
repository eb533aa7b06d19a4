"""Layer 3: voice-modem operations (open/init, answer, duplex audio, hang up) and line events.

The rest of the appliance uses only :class:`Modem` and the :data:`LineEvent` types. Events flow up
through ``Modem.events`` (an ``asyncio.Queue`` the link never awaits);
commands flow down as awaited methods. Sequences follow docs/v253.md §12.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from appliance.errors import (
    LineOffHook,
    ModemCommandError,
    ModemError,
    ModemGone,
    ModemStrayConnect,
    ModemTimeout,
)
from appliance.line.at import STOP_VOICE_TIMEOUT_S, AtProtocol, LinkState, Mode
from appliance.line.codec import (
    DLE_ABORT_RX,
    DLE_CAN,
    DLE_END_DUPLEX,
    DLE_ETX,
    DTMF_DIGITS,
    CallerId,
    CallerIdAccumulator,
)
from appliance.line.commands import (
    CHIPSETS,
    DEFAULT_FORMAT_PREFERENCE,
    DEFAULT_LINE_LABEL,
    SAMPLE_RATE_HZ,
    Chipset,
    choose_line_label,
    choose_voice_format,
    detect_chipset,
    explain_voice_format,
    parse_vls_list,
    parse_vsm_list,
)
from appliance.line.transport import drop_dtr, open_transport

__all__ = [
    "CallProgress",
    "CallerIdReceived",
    "DialResult",
    "Dtmf",
    "LineEvent",
    "LinkDown",
    "Modem",
    "RemoteHangup",
    "Ring",
    "dial_string",
]

_LOGGER = logging.getLogger(__name__)

INIT_TIMEOUT_S: Final = 5.0
#: :meth:`Modem.close` waits this long at most for the port to be released.
CLOSE_TIMEOUT_S: Final = 1.0
#: Every way out of a voice data state a previous host may have left the modem in (a daemon
#: killed mid-call never sent its <DLE>^): end duplex, abort receive, end transmit
#: (docs/v253.md §5.2/§5.3). In command state a modem ignores these non-AT bytes.
LEAVE_DATA_STATE: Final = b"\x10^\x10!\x10\x03\r"
#: Time for the modem to answer LEAVE_DATA_STATE (its <DLE><ETX>/OK is then drained).
LEAVE_DATA_SETTLE_S: Final = 0.3
"""ATZ may take a moment on a real modem (reset)."""
CID_SETTLE_S: Final = 0.3
"""Caller-ID lines arrive in a burst; report them this long after the last one."""
RING_GAP_RESET_S: Final = 12.0
"""No RING for this long (> two Hungarian cadences) → the next RING starts a new call."""

DIAL_TIMEOUT_BASE_S: Final = 10.0
"""ATD: waiting for dial tone (S6, 2–5 s on Hayes modems) and a margin, before the digits."""
DIAL_PER_DIGIT_S: Final = 0.25
"""ATD: tone dialling takes ≈ 100 ms tone + 100 ms gap per digit (+VTD/S11 defaults)."""
DIAL_CHARS: Final = frozenset("0123456789*#ABCD")
"""What a tone-dial string may carry (V.250 D command; pauses are not offered to the shop)."""
MAX_DIAL_DIGITS: Final = 32

# §5.1: call-progress <DLE> codes while dialling out (mgetty: r ringback, v/V voice detected).
_PROGRESS_DLE: Final = {"r": "ringback", "v": "voice", "V": "voice"}
# §3: final results of ATD in voice class and what they mean for the call.
_DIAL_FINALS: Final = ("OK", "VCON", "BUSY", "NO DIALTONE", "NO DIAL TONE", "NO ANSWER",
                       "NO CARRIER")

# §5.1 / §9.3: modem events that mean the far end has gone. `h` is the loop current breaking
# (USR-SM p.129: "local handset on-hook", i.e. line current break): the exchange released us.
_HANGUP_DLE: Final = {
    "b": "busy",
    "d": "dialtone",
    "l": "loop",
    "h": "loop",
    "s": "silence",
    "q": "silence",
}
#: Tries of leaving a voice state that began under one hang-up command (see :meth:`Modem.hang_up`).
HANG_UP_ATTEMPTS: Final = 3
#: The ways on-hook, in the order :meth:`Modem.hang_up` tries them, each confirmed before the
#: next is tried (docs/line.md, "Hanging up"): V.253 ``+VLS=0``, V.250 ``H0`` and its bare form
#: (some firmware parses only one), ``Z`` (a reset is on-hook), then a DTR drop (``&D2``).
HANG_UP_LADDER: Final = ("AT+VLS=0", "ATH0", "ATH", "ATZ", "DTR")
_VLS_VALUE_RE: Final = re.compile(r"(\d+)\s*$")
#: `<DLE>H` (line current detected) within this time of our own off-hook is the modem
#: confirming it (quirk #23, seen on the USR5637, whose table drops `H` altogether); later it
#: means the loop changed under a call, which ends it.
OFF_HOOK_CONFIRM_S: Final = 2.0
#: ``lines[].duplex``: ``auto`` finds out (``AT+VTR=?`` at init, ``AT+VTR`` at the first
#: call); ``full``/``half`` are the technician's word and skip the finding out.
DUPLEX_SETTINGS: Final = ("auto", "full", "half")


@dataclass(frozen=True, slots=True)
class Ring:
    """The line rings (one RING per cadence). ``count`` starts at 1 for each call."""

    count: int
    caller: CallerId | None


@dataclass(frozen=True, slots=True)
class CallerIdReceived:
    """A caller-ID report arrived (before or after the first RING)."""

    caller: CallerId


@dataclass(frozen=True, slots=True)
class Dtmf:
    """The caller pressed a key (from a ``<DLE>`` event)."""

    digit: str


@dataclass(frozen=True, slots=True)
class RemoteHangup:
    """The far end hung up: ``busy``, ``dialtone``, ``loop``, ``silence`` or ``no-carrier``."""

    reason: str


@dataclass(frozen=True, slots=True)
class LinkDown:
    """The modem port vanished or the link FAILED; close and reopen the Modem."""

    reason: str


@dataclass(frozen=True, slots=True)
class CallProgress:
    """Call progress while dialling out: ``ringback`` (``<DLE>r``) or ``voice`` (``<DLE>v``).

    Only some modems report these (docs/v253.md §5.1, mgetty codes); the daemon also runs
    its own in-band detector (:mod:`appliance.line.progress`) on the received audio.
    """

    kind: str


LineEvent = Ring | CallerIdReceived | Dtmf | RemoteHangup | LinkDown | CallProgress


class DialResult(enum.Enum):
    """How ``ATD`` ended (docs/v253.md §3 result codes).

    ``DIALLED``: the digits went out and the modem returned to voice command state (``OK``,
    or ``VCON`` on IS-101/USR); whether the far end rings, is busy or answers is then heard
    in-band and reported as ``<DLE>r`` / ``<DLE>b`` events. The others are final: the modem
    detected the condition itself (with ``X4``-style progress detection) and is on-hook.
    """

    DIALLED = "dialled"
    BUSY = "busy"
    NO_DIALTONE = "no-dialtone"
    NO_ANSWER = "no-answer"
    NO_CARRIER = "no-carrier"


_DIAL_RESULT_OF: Final = {
    "OK": DialResult.DIALLED,
    "VCON": DialResult.DIALLED,
    "BUSY": DialResult.BUSY,
    "NO DIALTONE": DialResult.NO_DIALTONE,
    "NO DIAL TONE": DialResult.NO_DIALTONE,
    "NO ANSWER": DialResult.NO_ANSWER,
    "NO CARRIER": DialResult.NO_CARRIER,
}


def dial_string(number: str) -> str:
    """Return ``number`` as a tone-dial string (spaces, dashes, dots and brackets dropped).

    Raises:
        ValueError: empty, too long, or a character a DTMF keypad cannot send.
    """
    digits = "".join(ch for ch in number.upper() if ch not in " -.()/")
    if not digits or len(digits) > MAX_DIAL_DIGITS or any(ch not in DIAL_CHARS for ch in digits):
        raise ValueError(f"not a diallable number: {number!r}")
    return digits


class Modem:
    """One voice modem. Every method runs on the event loop. Events flow up through ``events``.

    Lifecycle: ``open()`` → idle (``+FCLASS=0``, rings and caller ID become events) →
    ``answer()`` → ``start_duplex(on_audio)`` / ``send_audio()`` → ``stop_duplex()`` →
    ``hang_up()`` → idle … ``close()``. After :class:`LinkDown`, ``close()`` then ``open()``
    again (the supervisor's job). A modem without full duplex uses the half-duplex voice
    states instead, one at a time: ``start_play()`` / ``send_audio()`` / ``stop_play()``
    (``+VTX``) and ``start_record(on_audio)`` / ``stop_record()`` (``+VRX``).

    Args:
        url: a tty path, ``socket://…`` or a URL of a registered link scheme (``sim://…``,
            the emulator's: :func:`~appliance.line.transport.register_link_scheme`).
        country_code: T.35 country for ``AT+GCI`` (Hungary = 51, §7.7).
        command_timeout_s: per-command timeout.
        voice_format: force an appliance format (``u8``, ``ulaw`` …) if the modem offers it.
        duplex: ``auto`` (find out), ``full`` or ``half`` (:data:`DUPLEX_SETTINGS`).
        audio_formats: the voice formats in order of preference (``lines[].audio_formats``;
            default :data:`~appliance.line.commands.DEFAULT_FORMAT_PREFERENCE`, best first).
        cid_settle_s: caller-ID burst settle time.
        ring_gap_reset_s: silence after which the ring count restarts.
        stop_timeout_s: time for the answer to each voice stop sequence (V.253 §5.3).
    """

    def __init__(
        self,
        url: str,
        *,
        country_code: str = "51",
        command_timeout_s: float = 2.0,
        voice_format: str | None = None,
        cid_settle_s: float = CID_SETTLE_S,
        ring_gap_reset_s: float = RING_GAP_RESET_S,
        duplex: str = "auto",
        stop_timeout_s: float = STOP_VOICE_TIMEOUT_S,
        audio_formats: tuple[str, ...] = DEFAULT_FORMAT_PREFERENCE,
    ) -> None:
        if duplex not in DUPLEX_SETTINGS:
            raise ValueError(f"duplex must be one of {DUPLEX_SETTINGS}, not {duplex!r}")
        self.url = url
        self.duplex_setting = duplex
        self.country_code = country_code
        self.command_timeout_s = command_timeout_s
        self.requested_format = voice_format
        self.audio_formats = tuple(audio_formats)
        #: Why :attr:`voice_format` was chosen, in words (``status``, the log).
        self.voice_format_reason = "not chosen yet"
        self.cid_settle_s = cid_settle_s
        self.ring_gap_reset_s = ring_gap_reset_s
        self.stop_timeout_s = stop_timeout_s
        self.events: asyncio.Queue[LineEvent] = asyncio.Queue()
        self.chipset = "generic"
        self.voice_format = voice_format or "u8"
        self.vsm_id = 1
        #: ``AT+VLS=?`` as ``{label: primitives}`` and the label used to go off-hook (§4.2).
        self.line_labels: dict[int, str] = {}
        self.line_label = DEFAULT_LINE_LABEL
        #: Full-duplex voice (``+VTR``): True once ``AT+VTR=?`` answered OK or ``AT+VTR``
        #: connected; None (unknown) while neither happened — a refused *test* command proves
        #: nothing (V.250 leaves test forms of action commands to the vendor); False once
        #: ``AT+VTR`` itself is refused, until the modem is reopened. ``duplex="full"`` /
        #: ``"half"`` fix it from the start. :attr:`duplex_evidence` says what it rests on.
        self.full_duplex: bool | None = None
        self.duplex_evidence = "not asked yet"
        self._stats: dict[str, int] = {
            "rx_frames": 0,
            "tx_bytes": 0,
            "tx_dropped_bytes": 0,
            "dle_events": 0,
            "garbage_lines": 0,
            "resyncs": 0,
            "timeouts": 0,
            "receive_errors": 0,
            "tx_underruns": 0,
            "unknown_dle": 0,
        }
        self._protocol: AtProtocol | None = None
        self._transport: asyncio.Transport | None = None
        self._table: Chipset = CHIPSETS["generic"]
        self._off_hook = False
        self._on_audio: Callable[[npt.NDArray[np.int16]], None] | None = None
        self._voice_op: str | None = None
        self._cid = CallerIdAccumulator()
        self._cid_reported = 0
        self._cid_timer: asyncio.TimerHandle | None = None
        self._ring_count = 0
        self._last_ring_at = 0.0
        self._hangup_reported = False
        self._link_down_reported = False
        self._dialled = False
        self._off_hook_at = 0.0
        self._reversals = 0
        #: The last hang-up reset the modem (``ATZ`` or DTR): its settings are gone, so the
        #: owner must reopen it (close, open: the init script runs again).
        self.reopen_needed = False

    # --- lifecycle

    async def open(self) -> None:
        """Open the port and run the init script (§12); idle in ``+FCLASS=0`` afterwards.

        Raises:
            ModemGone: the port cannot be opened or the modem does not answer.
            ModemCommandError: an essential command (``ATE0``, ``ATV1``) was refused.
        """
        self._link_down_reported = False
        protocol = AtProtocol(command_timeout_s=self.command_timeout_s,
                              stop_timeout_s=self.stop_timeout_s)
        protocol.urc_received = self._urc_received
        protocol.dle_event_received = self._dle_event_received
        protocol.voice_received = self._voice_received
        protocol.link_failed = self._link_failed
        transport, _ = await open_transport(self.url, lambda: protocol)
        self._transport, self._protocol = transport, protocol
        try:
            try:
                await self._init_script(protocol)
            except ModemCommandError:
                # A modem holding the line refuses ATZ on some firmware (and in the emulator's
                # refuse_hang_up): say so rather than "init failed".
                await self._refuse_if_off_hook()
                raise
            # A modem left off-hook (a previous hang-up that failed, a host killed mid-call)
            # must not be taken for a ready line: nobody could call in.
            await self._refuse_if_off_hook()
        except ModemTimeout as exc:
            raise ModemGone(f"modem at {self.url} does not answer: {exc}") from exc

    async def _refuse_if_off_hook(self) -> None:
        """Raise :class:`LineOffHook` if the modem holds the line and will not hang up."""
        at = self._at()
        await self._optional(at, "AT+FCLASS=8")  # +VLS? is a voice command (§3)
        if await self._hook_state(at) is False:
            _LOGGER.warning("the modem holds the line off-hook at open; hanging up")
            self.reopen_needed = False
            if not await self.hang_up():
                raise LineOffHook(f"the modem at {self.url} holds the line off-hook and "
                                  "refuses to hang up")
            if self.reopen_needed:
                await self._init_script(at)  # the hang-up reset it: its settings are gone
                self.reopen_needed = False
        await self._optional(at, "AT+FCLASS=0")  # quirk #27: idle in data class

    async def _init_script(self, at: AtProtocol) -> None:
        await at.wait_connected()
        at.write_raw(LEAVE_DATA_STATE)
        await asyncio.sleep(LEAVE_DATA_SETTLE_S)  # let a stale <DLE><ETX>/OK arrive and drain
        await at.command("ATZ", timeout_s=max(INIT_TIMEOUT_S, self.command_timeout_s))
        await at.command("ATE0")  # echo off first: later lines need no echo filtering
        await at.command("ATV1")
        await self._optional(at, f"AT+GCI={self.country_code}")
        # quirk #4: +VCID=1 is lost at ATZ on some Conexant dongles: send it every init.
        await self._optional(at, "AT+VCID=1")
        ati0 = await self._optional(at, "ATI0")
        ati3 = await self._optional(at, "ATI3")
        self.chipset = detect_chipset(ati0, ati3)
        self._table = CHIPSETS[self.chipset]
        await at.command("AT+FCLASS=8")
        entries = parse_vsm_list(await self._optional(at, "AT+VSM=?"))
        chosen = choose_voice_format(entries, self.requested_format, self.audio_formats)
        if chosen is None:
            # §9.3 last resort (vgetty detect.c): V.253 unsigned PCM.
            chosen = (1, "u8")
            self.voice_format_reason = "assumed: no usable +VSM=? list (V.253 id 1)"
            _LOGGER.warning("no usable +VSM=? list; assuming V.253 id 1 (unsigned PCM)")
        elif chosen[1] == self.requested_format:
            self.voice_format_reason = "requested"
        else:
            self.voice_format_reason = explain_voice_format(entries, chosen[1],
                                                            self.audio_formats)
        self.vsm_id, self.voice_format = chosen
        at.set_voice_format(self.voice_format)
        # §4.2: which +VLS label is "off-hook on the line" ("T"); 1 unless the modem says else.
        self.line_labels = parse_vls_list(await self._optional(at, "AT+VLS=?"))
        self.line_label = choose_line_label(self.line_labels)
        if self.line_label != DEFAULT_LINE_LABEL:
            _LOGGER.info("the modem's line label is +VLS=%d", self.line_label)
        await self._find_duplex(at)
        # quirk #27: idle in data class so rings arrive as text RING.
        await at.command("AT+FCLASS=0")
        _LOGGER.info(
            "modem ready: chipset %s, voice format %s (+VSM=%d: %s)",
            self.chipset,
            self.voice_format,
            self.vsm_id,
            self.voice_format_reason,
        )

    async def _find_duplex(self, at: AtProtocol) -> None:
        """Set :attr:`full_duplex` at init: the setting, else what ``AT+VTR=?`` shows.

        Without ``+VTR`` the bridge cannot carry the shop's voice, so ``status``/``doctor``
        say it before the first call when they can. Only an OK is taken as an answer: real
        modems answer ``ERROR`` to the test form and still accept ``AT+VTR`` (docs/line.md),
        so a refusal leaves the question to the first call's ``AT+VTR``.
        """
        if self.duplex_setting != "auto":
            self.full_duplex = self.duplex_setting == "full"
            self.duplex_evidence = f'lines[].duplex = "{self.duplex_setting}" (configured)'
            return
        try:
            await at.command("AT+VTR=?")
        except ModemCommandError:
            self.full_duplex = None
            self.duplex_evidence = ("AT+VTR=? refused, which proves nothing (test commands "
                                    "are optional); the first call tries AT+VTR")
        except ModemTimeout:
            self.full_duplex = None
            self.duplex_evidence = "AT+VTR=? unanswered; the first call tries AT+VTR"
        else:
            self.full_duplex = True
            self.duplex_evidence = "AT+VTR=? answered OK"
            return
        _LOGGER.info("full duplex not known yet: %s", self.duplex_evidence)

    async def _optional(self, at: AtProtocol, cmd: str) -> list[str]:
        try:
            return await at.command(cmd)
        except ModemCommandError as exc:
            _LOGGER.info("optional command refused: %s", exc)
            return []

    async def close(self) -> None:
        """Close the port. Never raises."""
        self._cancel_cid_timer()
        protocol = self._protocol
        self._protocol = None
        self._off_hook = False
        if protocol is not None:
            protocol.link_failed = None  # a deliberate close is not a LinkDown
            protocol.close()
            # The port is released when the transport has gone (a tty's exclusive lock):
            # wait for that, so an open right after this one finds it free.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await protocol.wait_closed()

    # --- call operations

    @property
    def off_hook(self) -> bool:
        """True between a successful ``answer()`` and ``hang_up()``."""
        return self._off_hook

    @property
    def link_state(self) -> LinkState:
        """The AT link's state (FAILED when closed)."""
        return self._protocol.state if self._protocol is not None else LinkState.FAILED

    async def answer(self) -> None:
        """Take the line off-hook in voice mode: ``+FCLASS=8``, ``+VSM``, ``+VLS=1`` (§12).

        The modem stays in voice command state: hang-up (``<DLE>b``/``d``/``s``/``q``/``l``,
        ``NO CARRIER``) and DTMF (``<DLE>5``, shielded blocks collapsed to one key) arrive on
        :attr:`events` from here on, with or without :meth:`start_duplex` — a line whose
        audio flows through a sound card (``lines[].audio = "alsa:…"``) never enters
        ``+VTR`` and relies on exactly that.

        Raises:
            ModemError: a command failed (the line may still be on-hook).
        """
        at = self._at()
        await at.command("AT+FCLASS=8")
        await at.command(f"AT+VSM={self.vsm_id},{SAMPLE_RATE_HZ}{self._table.vsm_suffix}")
        for cmd in self._table.answer_commands:
            await self._optional(at, cmd)
        self._hangup_reported = False
        self._dialled = False
        # §3: VCON on IS-101/USR.
        await at.command(f"AT+VLS={self.line_label}", expect=("OK", "VCON"))
        self._off_hook = True
        self._off_hook_at = asyncio.get_running_loop().time()
        self._reversals = 0
        self._reset_call()
        _LOGGER.info("line off-hook")

    async def dial(self, number: str, *, timeout_s: float | None = None) -> DialResult:
        """Dial ``number`` in voice mode; on ``DIALLED`` the line is off-hook like after answer.

        Sequence (docs/v253.md §4.1, §12): ``AT+FCLASS=8``, ``AT+VSM``, the chipset's answer
        commands, ``AT+VRN=0`` (optional), ``ATDT<digits>;``. Real V.253 modems hold the
        ``OK`` of a voice ``ATD`` until ringback has gone away for ``+VRA`` (0.1 s units,
        answer assumed) or never appeared within ``+VRN`` (1 s units, default 10 s) — audio
        cannot flow meanwhile, so the shop would hear nothing. ``+VRN=0`` asks for the ``OK``
        right after the digits; the ``;`` keeps the modem in command state (Hayes). Then
        ``start_duplex`` lets the shop hear the network's own ringback, busy tone or the
        callee, and progress arrives as ``<DLE>r``/``<DLE>b`` (:class:`CallProgress`,
        :class:`RemoteHangup`). A modem that ignores ``+VRN=0`` still works, only later. With
        progress detection on, a modem may end ATD with ``BUSY``/``NO DIALTONE``/
        ``NO ANSWER`` instead; it is then on-hook again and this returns that result.
        Which of these the CX93010 does is to be verified on hardware (§13).

        Args:
            number: digits to dial (see :func:`dial_string`).
            timeout_s: for the ``ATD`` result; default grows with the number's length.

        Raises:
            ValueError: ``number`` is not diallable.
            ModemError: a command failed or timed out (the line may be off-hook: hang up).
        """
        digits = dial_string(number)
        at = self._at()
        await at.command("AT+FCLASS=8")
        await at.command(f"AT+VSM={self.vsm_id},{SAMPLE_RATE_HZ}{self._table.vsm_suffix}")
        for cmd in self._table.answer_commands:
            await self._optional(at, cmd)
        # quirk #9: timer ranges differ per modem (vgetty's +VRA=70 exceeds MT5634's 0–50);
        # a refusal only means we hear the ringback later.
        await self._optional(at, "AT+VRN=0")
        self._hangup_reported = False
        self._reset_call()
        # Progress (<DLE>b, <DLE>r) may arrive as soon as the digits are out.
        self._off_hook = True
        self._dialled = True
        self._off_hook_at = asyncio.get_running_loop().time()
        self._reversals = 0
        if timeout_s is None:
            timeout_s = max(self.command_timeout_s,
                            DIAL_TIMEOUT_BASE_S + DIAL_PER_DIGIT_S * len(digits))
        try:
            final, _ = await at.command_result(f"ATDT{digits};", timeout_s=timeout_s,
                                               expect=_DIAL_FINALS)
        except BaseException:
            self._off_hook = False
            raise
        result = _DIAL_RESULT_OF[final]
        _LOGGER.info("dialled %d digits: %s (%s)", len(digits), result.value, final)
        if result is not DialResult.DIALLED:
            # Hayes: after BUSY/NO DIALTONE/NO ANSWER the modem is on-hook; idle in class 0
            # again (quirk #27).
            self._off_hook = False
            await self._optional(at, "AT+FCLASS=0")
        return result

    @property
    def voice_op(self) -> str | None:
        """The voice data state the modem is in: ``duplex`` (``+VTR``), ``play`` (``+VTX``),
        ``record`` (``+VRX``), or None in command state."""
        at = self._protocol
        if at is None or at.mode is not Mode.VOICE:
            return None
        return self._voice_op

    async def play_tone(self, freq_hz: int, *, freq2_hz: int = 0, duration_s: float) -> None:
        """Play a tone to the line from voice command state: ``AT+VTS=[f1,f2,d]``.

        V.253 §5.1 ``+VTS``: frequencies 0 or 200–3000 Hz, the duration in 10 ms units
        (0–255, so at most 2.55 s per tone); the modem answers ``OK`` once the tone has
        played, so this returns then (vgetty's beep is ``AT+VTS=[933,,150]``).

        Raises:
            ValueError: a frequency or the duration is out of range.
            ModemError: refused or timed out.
        """
        units = round(duration_s * 100)
        for hz in (freq_hz, freq2_hz):
            if hz != 0 and not 200 <= hz <= 3000:
                raise ValueError(f"+VTS frequency must be 0 or 200–3000 Hz, not {hz}")
        if not 1 <= units <= 255:
            raise ValueError(f"+VTS duration must be 0.01–2.55 s, not {duration_s}")
        await self._at().command(f"AT+VTS=[{freq_hz},{freq2_hz},{units}]",
                                 timeout_s=self.command_timeout_s + units / 100)

    async def send_dtmf(self, digits: str, *, tone_ms: int = 100) -> None:
        """Send DTMF to the line from voice command state: ``AT+VTD``, ``AT+VTS=1,2,3``.

        Raises:
            ValueError: a character a keypad cannot send, or ``tone_ms`` outside 50–2550 ms.
            ModemError: refused or timed out.
        """
        if not digits or any(ch not in DIAL_CHARS for ch in digits.upper()):
            raise ValueError(f"not DTMF digits: {digits!r}")
        if not 50 <= tone_ms <= 2550:
            raise ValueError(f"DTMF tone length must be 50–2550 ms, not {tone_ms}")
        at = self._at()
        await self._optional(at, f"AT+VTD={tone_ms // 10}")  # refused: the modem's default
        # An explicit pause ([0,0,d]: no frequency for d·10 ms) between digits: without one a
        # modem may play them back to back, and a receiver hears one long changing tone.
        gap = f",[0,0,{tone_ms // 10}],"
        await at.command("AT+VTS=" + gap.join(digits.upper()),
                         timeout_s=self.command_timeout_s + 2 * len(digits) * tone_ms / 1000)

    async def start_duplex(self, on_audio: Callable[[npt.NDArray[np.int16]], None]) -> None:
        """Start full-duplex voice (``AT+VTR`` → CONNECT).

        ``on_audio(frame)`` is called with each received ``np.int16`` frame of 160 samples
        (20 ms) from the protocol's receive path: it must be quick and must not raise. DTMF
        and hang-up events go to :attr:`events`.

        Raises:
            ModemCommandError: the modem refused ``+VTR`` (half-duplex modem); afterwards
                :attr:`full_duplex` is False (unless ``duplex="full"``). An accepted ``+VTR``
                makes an unknown :attr:`full_duplex` True.
        """
        at = self._at()
        self._on_audio = on_audio
        # Set before the command: if our caller is cancelled while it is in flight, the
        # (shielded) command still completes and the state must then name the right way out.
        # Outside voice mode :attr:`voice_op` reads None whatever this says.
        self._voice_op = "duplex"
        try:
            await at.command("AT+VTR", expect=("CONNECT",))
        except ModemCommandError:
            self._on_audio = None
            if self.duplex_setting == "full":
                # The technician's word stands (the next call tries again); this call cannot
                # carry audio both ways.
                _LOGGER.error('the modem refused AT+VTR although lines[].duplex = "full"')
                raise
            if self.full_duplex is not False:
                # Said once per modem: every later call would fail the same way.
                _LOGGER.warning("the modem refused AT+VTR: no full-duplex voice on this modem")
            self.full_duplex = False
            self.duplex_evidence = "AT+VTR refused at a call"
            raise
        if self.full_duplex is None:
            _LOGGER.info("the modem accepted AT+VTR: full duplex")
            self.full_duplex = True
            self.duplex_evidence = "AT+VTR accepted at a call"

    async def start_play(self) -> None:
        """Start transmit-only voice (``AT+VTX`` → CONNECT); then :meth:`send_audio`.

        V.253 §5.1: in the transmit state the modem still reports DTMF and hang-up as
        ``<DLE>`` events (they arrive on :attr:`events`); nothing is received from the line.
        The modem consumes at its own 8000 samples/s and throttles the port when its buffer
        is full; a buffer that runs dry is reported as ``<DLE>u`` (counted in
        ``stats["tx_underruns"]``). The sender keeps a bounded lead (:meth:`tx_backlog_s`).

        Raises:
            ModemError: refused or timed out (the modem stays in command state).
        """
        at = self._at()
        self._voice_op = "play"  # before the command: see start_duplex
        await at.command("AT+VTX", expect=("CONNECT",))

    async def stop_play(self, *, flush: bool = False) -> None:
        """End ``+VTX``: ``<DLE><ETX>``; the modem plays out what it holds, then ``OK``.

        Args:
            flush: drop what the modem still holds first (``<DLE><CAN>``, as vgetty's
                interrupt): for hang-up, not for the end of a prompt.

        Raises:
            ModemTimeout: the modem never left the transmit state (the link turns SUSPECT).
        """
        if self.voice_op != "play":
            return
        assert self._protocol is not None
        await self._protocol.stop_voice(DLE_CAN + DLE_ETX if flush else DLE_ETX)
        self._voice_op = None

    async def start_record(self, on_audio: Callable[[npt.NDArray[np.int16]], None]) -> None:
        """Start receive-only voice (``AT+VRX`` → CONNECT).

        ``on_audio`` is called as in :meth:`start_duplex`; nothing may be sent meanwhile
        (:meth:`send_audio` drops it: some modems end ``+VRX`` on any host byte, §11).

        Raises:
            ModemError: refused or timed out.
        """
        at = self._at()
        self._on_audio = on_audio
        self._voice_op = "record"  # before the command: see start_duplex
        try:
            await at.command("AT+VRX", expect=("CONNECT",))
        except ModemError:
            self._on_audio = None
            raise

    async def stop_record(self) -> None:
        """End ``+VRX``: ``<DLE>!`` → ``<DLE><ETX>`` + ``OK`` (§5.3)."""
        self._on_audio = None
        if self.voice_op != "record":
            return
        assert self._protocol is not None
        await self._protocol.stop_voice(DLE_ABORT_RX)
        self._voice_op = None

    async def stop_voice(self, *, flush: bool = True) -> None:
        """Leave whichever voice data state the modem is in (no-op in command state).

        Args:
            flush: for ``+VTX``, drop the audio the modem still holds (see :meth:`stop_play`).
        """
        op = self.voice_op
        if op == "play":
            await self.stop_play(flush=flush)
        elif op == "record":
            await self.stop_record()
        else:
            await self.stop_duplex()

    def tx_backlog_s(self) -> float:
        """Seconds of audio sent ahead of real time in the current voice state (0 outside)."""
        return self._protocol.tx_backlog_s() if self._protocol is not None else 0.0

    @property
    def writing_paused(self) -> bool:
        """The port is throttling us (the modem's buffer is full): send nothing until False."""
        return self._protocol is not None and self._protocol.writing_paused

    def send_audio(self, samples: npt.NDArray[np.int16]) -> None:
        """Queue ``samples`` (int16) to the line during duplex or play. Non-blocking; the
        caller paces at 8000 samples/s with a small lead (§8). Audio outside those states
        (command state, ``+VRX``) is dropped and counted."""
        at = self._protocol
        if at is None:
            return
        if self.voice_op == "record":
            self._stats["tx_dropped_bytes"] += len(samples)
            return
        written = at.send_voice(samples)
        if written:
            self._stats["tx_bytes"] += written
        else:
            self._stats["tx_dropped_bytes"] += len(samples)

    async def stop_duplex(self) -> None:
        """Leave duplex: ``<DLE>^`` → ``<DLE><ETX>`` + ``OK`` (either alone accepted, §5.3)."""
        self._on_audio = None
        at = self._protocol
        if at is None or at.mode is not Mode.VOICE:
            return
        await at.stop_voice(DLE_END_DUPLEX)
        self._voice_op = None

    async def hang_up(self) -> bool:
        """Put the line on-hook and confirm it; True once confirmed.

        Tries each way in :data:`HANG_UP_LADDER` until one is confirmed: the modem answers
        ``OK`` and, where it answers ``AT+VLS?``, reports label 0 (on-hook); a refused or
        unconfirmed way moves on to the next. After ``ATZ`` or a DTR drop the modem has lost
        its settings and :attr:`reopen_needed` is set. False means the modem may still hold
        the line — nobody can call in: the owner faults the line (which releases the bypass
        relay) and reopens the modem. Never raises; with the port gone it returns False.
        """
        self._off_hook = False
        self._reset_call()
        at = self._protocol
        if at is None or not at.connected:
            _LOGGER.warning("hang up: modem link is down")
            return False
        for way in HANG_UP_LADDER:
            try:
                if not await self._hang_up_once(at, way):
                    continue
                state = await self._hook_state(at)
            except ModemGone as exc:
                _LOGGER.warning("hang up: %s", exc)
                return False
            except ModemError as exc:
                _LOGGER.warning("hang up: %s failed (%s)", way, exc)
                if isinstance(exc, ModemTimeout):
                    # No answer: the modem may still be in a voice data state the host
                    # thinks it left (a stray <DLE><ETX> mid-call, found by the line fuzz),
                    # where our commands are audio to it. Leave it, as open() does.
                    with contextlib.suppress(ModemError):
                        at.write_raw(LEAVE_DATA_STATE)
                        await asyncio.sleep(LEAVE_DATA_SETTLE_S)
                continue
            if state is False:
                _LOGGER.warning("hang up: %s done, but the modem still holds the line", way)
                continue
            if way in ("ATZ", "DTR"):
                self.reopen_needed = True
            else:
                try:
                    await at.command("AT+FCLASS=0")  # quirk #27: idle in data class
                except ModemError as exc:
                    _LOGGER.warning("hang up: AT+FCLASS=0 failed (%s); the line is on-hook",
                                    exc)
                    self.reopen_needed = True
            _LOGGER.info("line on-hook (%s)", way)
            return True
        _LOGGER.error("hang up failed: the modem refused every way on-hook (%s)",
                      ", ".join(HANG_UP_LADDER))
        return False

    async def _hang_up_once(self, at: AtProtocol, way: str) -> bool:
        """One way on-hook; False when this port cannot do it (no DTR line).

        Raises:
            ModemError: refused, timed out, or the link failed.
        """
        if way == "DTR":
            if at.mode is Mode.VOICE:
                await self.stop_voice()
            return self._transport is not None and await drop_dtr(self._transport)
        for attempt in range(HANG_UP_ATTEMPTS):
            if at.mode is Mode.VOICE:
                await self.stop_voice()
            try:
                # ATZ resets the modem, which takes a moment on real hardware (init).
                await at.command(way, timeout_s=max(INIT_TIMEOUT_S, self.command_timeout_s)
                                 if way == "ATZ" else None)
                return True
            except ModemError:
                # A voice state began while we waited for the link: a +VTX/+VRX/+VTR that
                # was in flight when its caller was cancelled completes anyway (shielded).
                # Leave it, then hang up again.
                if at.mode is not Mode.VOICE or attempt == HANG_UP_ATTEMPTS - 1:
                    raise
        return False  # not reached: the last attempt returns or raises

    async def _hook_state(self, at: AtProtocol) -> bool | None:
        """``AT+VLS?``: True on-hook (label 0), False off-hook, None when the modem does not
        say (refused — e.g. in data class, or no read form — or an answer without a number).

        Raises:
            ModemGone, ModemTimeout: as :meth:`AtProtocol.command`.
        """
        try:
            lines = await at.command("AT+VLS?")
        except ModemCommandError:
            return None
        for line in lines:
            m = _VLS_VALUE_RE.search(line)
            if m is not None:
                return int(m.group(1)) == 0
        return None

    async def check_alive(self) -> None:
        """Liveness: a bare ``AT`` must be answered (``ERROR`` counts: the modem spoke).

        A timeout is asked again once: the second ``AT`` resyncs the link (SUSPECT), and
        the consecutive timeouts then make it FAILED (:class:`LinkDown` follows).

        Raises:
            ModemTimeout, ModemGone: the modem does not answer.
            ModemStrayConnect: the link is in the data state with no voice operation asked
                for (the modem sent ``CONNECT`` unasked): ``AT`` would only be taken as
                audio, so it is not sent.
        """
        at = self._at()
        if at.mode is Mode.VOICE and self._voice_op is None:
            raise ModemStrayConnect("the modem sent CONNECT while idle and is in its data "
                                    "state; it takes no commands there")
        for attempt in range(2):
            try:
                await at.command("AT")
                return
            except ModemCommandError:
                return
            except ModemTimeout:
                if attempt == 1:
                    raise

    # --- event plumbing

    def _at(self) -> AtProtocol:
        if self._protocol is None or not self._protocol.connected:
            raise ModemGone("modem is not open")
        return self._protocol

    def _put(self, event: LineEvent) -> None:
        _LOGGER.debug("line event %r", event)
        self.events.put_nowait(event)

    def _reset_call(self) -> None:
        self._ring_count = 0
        self._cid.reset()
        self._cid_reported = 0
        self._cancel_cid_timer()

    def _cancel_cid_timer(self) -> None:
        if self._cid_timer is not None:
            self._cid_timer.cancel()
            self._cid_timer = None

    def _urc_received(self, line: str) -> None:
        loop = asyncio.get_running_loop()
        if line.startswith("RING"):
            self._ring(loop.time())
        elif self._cid.feed(line):
            if self._off_hook:
                # §7.6: a CID block while off-hook is call waiting; not a new call.
                _LOGGER.info("call-waiting caller ID ignored: %s", line)
                return
            self._cancel_cid_timer()
            self._cid_timer = loop.call_later(self.cid_settle_s, self._report_cid)
        elif line == "NO CARRIER":
            if self._off_hook:
                self._remote_hangup("no-carrier")
        else:
            _LOGGER.debug("URC ignored: %s", line)

    def _ring(self, now: float) -> None:
        if self._off_hook:
            return
        if self._ring_count and now - self._last_ring_at > self.ring_gap_reset_s:
            self._reset_call()  # a new call: forget the previous caller
        self._last_ring_at = now
        self._ring_count += 1
        self._report_cid()
        self._put(Ring(self._ring_count, self._cid.result()))

    def _report_cid(self) -> None:
        self._cancel_cid_timer()
        caller = self._cid.result()
        if caller is not None and len(caller.raw) != self._cid_reported:
            self._cid_reported = len(caller.raw)
            self._put(CallerIdReceived(caller))

    def _dle_event_received(self, code: str) -> None:
        self._stats["dle_events"] += 1
        if code in self._table.ignored_dle:
            return
        if code in DTMF_DIGITS:
            if self._off_hook:
                self._put(Dtmf(code))
            return
        reason = _HANGUP_DLE.get(code)
        if reason is not None:
            if self._off_hook:
                self._remote_hangup(reason)
            return
        if code in ("L", "H"):
            if self._off_hook:
                self._loop_changed(code)
            return
        progress = _PROGRESS_DLE.get(code)
        if progress is not None:
            if self._off_hook:
                self._put(CallProgress(progress))
            return
        if code == "R":
            # quirk #27: a ring reported as <DLE>R in voice class.
            self._ring(asyncio.get_running_loop().time())
        elif code == "u":
            self._stats["tx_underruns"] += 1  # §8: a pacing bug on our side
        else:
            self._stats["unknown_dle"] += 1
            _LOGGER.debug("DLE event %r ignored", code)

    def _loop_changed(self, code: str) -> None:
        now = asyncio.get_running_loop().time()
        if code == "H":
            if now - self._off_hook_at < OFF_HOOK_CONFIRM_S:
                return  # quirk #23: the modem confirming our own off-hook
            self._remote_hangup("loop")
            return
        # <DLE>L, loop polarity reversal (mgetty IS_101.c). On a call we dialled the exchange
        # reverses the loop when the callee answers (answer supervision) and back when they
        # hang up; on a call we answered, a reversal is the exchange signalling the caller's
        # release.
        self._reversals += 1
        if self._dialled and self._reversals == 1:
            self._put(CallProgress("voice"))
        else:
            self._remote_hangup("loop-reversal")

    def _remote_hangup(self, reason: str) -> None:
        if not self._hangup_reported:
            self._hangup_reported = True
            self._put(RemoteHangup(reason))

    def _voice_received(self, frame: npt.NDArray[np.int16]) -> None:
        self._stats["rx_frames"] += 1
        if self._on_audio is not None:
            self._on_audio(frame)

    def _link_failed(self, reason: str) -> None:
        self._off_hook = False
        self._voice_op = None
        if not self._link_down_reported:
            self._link_down_reported = True
            self._put(LinkDown(reason))

    @property
    def stats(self) -> dict[str, int]:
        """Counters: operations (rx_frames, tx_bytes, dle_events, tx_underruns…) merged with
        the link's (garbage_lines, resyncs, timeouts, receive_errors). A fresh dict."""
        merged = dict(self._stats)
        if self._protocol is not None:
            for key in ("garbage_lines", "resyncs", "timeouts", "receive_errors"):
                merged[key] = self._protocol.stats[key]
        return merged
