"""The emulated voice modem: the DCE side of the same V.253 link (ships in the product).

:class:`SimModem` speaks the dialects of the modems we target (docs/v253.md §11
checklist): E/V/Q flags and echo, ``+FCLASS``, ``+VLS``, ``+VSM`` (duplicates accepted, quirk #8),
``+VCID``, ``+VTX``/``+VRX``/``+VTR`` with a STATEFUL host-DLE parser (quirk #1), ``+VTS`` answering
``OK`` after the tone, ``+GCI``, ``+IFC``, ``ATZ``, ``ATI0/3``; unknown commands → ERROR; voice
commands outside ``+FCLASS=8`` → ERROR. Its voice clock runs on ``loop.time()`` at exactly 8000
samples/s both ways. The scripted caller drives it through the trigger methods (Mopidy
``trigger_fake_*`` style); tests assert on :attr:`commands`, :attr:`played` and hook waits.

A host reaches it only over a link: a pty (:mod:`appliance.sim.modem.pty`) or the in-process
loopback behind ``sim://`` URLs (:mod:`appliance.sim.modem.link`).

Written by hand: no library emulates a V.253 modem.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from appliance.audio.hybrid import Hybrid, HybridSpec, add_echo
from appliance.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE_HZ, bytes_per_sample, decode_voice
from appliance.audio.pcm import encode_voice as _encode_voice
from appliance.audio.tones import dtmf_samples
from appliance.line.codec import CAN, DLE, DTMF_DIGITS, ETX, VoiceEncoder, format_cid_lines
from appliance.line.commands import parse_vsm_list
from appliance.sim.modem.profiles import SILENCE_REPORT_S, profile_named

__all__ = ["SimCallee", "SimModem", "SimPort"]

_LOGGER = logging.getLogger(__name__)

TICK_S: Final = FRAME_SAMPLES / SAMPLE_RATE_HZ
"""The voice clock: one 160-sample frame every 20 ms."""
RING_PERIOD_S: Final = 5.0
"""Hungarian ringing: 1.25 s on / 3.75 s off → one RING every 5 s (§7.5, hw/ag1171.md)."""
CID_DELAY_S: Final = 1.75
"""Caller ID after the first ring: the 1.25 s burst plus ≈0.5 s of silence (§7.3)."""
DTMF_REPEAT_S: Final = 0.070
"""Shielded DTMF: the digit is repeated every 70 ms while the tone lasts (§5.4)."""
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
TX_BUFFER_MAX_S: Final = 1.0
"""The modem stops reading host bytes when this much audio is queued (back-pressure)."""

# §3 numeric result codes (V0).
_NUMERIC: Final = {
    "OK": "0", "CONNECT": "1", "RING": "2", "NO CARRIER": "3", "ERROR": "4",
    "NO DIALTONE": "6", "BUSY": "7", "NO ANSWER": "8", "VCON": "0",
}  # fmt: skip
# §3: these answer ERROR unless +FCLASS=8.
_VOICE_ONLY: Final = frozenset(
    {"VLS", "VSM", "VTX", "VRX", "VTR", "VTS", "VTD", "VSD", "VGT", "VGR", "VIT", "VRA", "VRN",
     "VDR", "VDT", "VNH", "VEM", "VIP", "VPR"}
)  # fmt: skip
# Stored-and-echoed extended parameters (value kept as text, default in brackets).
_STORED: Final = {
    "VSD": "128,0", "VGT": "128", "VGR": "128", "VIT": "0", "VRA": "50", "VRN": "10",
    "VDR": "0,0", "VDT": "0,0", "VNH": "0", "VEM": "", "VPR": "0", "VTD": "100",
    "IFC": "2,2", "GCI": "B5", "VCID": "0",
}  # fmt: skip
_BASIC_RE: Final = re.compile(r"(&?[A-Z])(\d*)")
_VTS_DUR_RE: Final = re.compile(r"\[([^\]]*)\]|\{([^}]*)\}|([0-9*#A-D!])")


class _Mode:
    COMMAND: Final = "command"
    VTX: Final = "vtx"
    VTX_DRAIN: Final = "vtx-drain"  # <DLE><ETX> received: play out the buffer, then OK
    VRX: Final = "vrx"
    VTR: Final = "vtr"


_DATA_MODES: Final = frozenset({_Mode.VTX, _Mode.VTX_DRAIN, _Mode.VRX, _Mode.VTR})
_TX_MODES: Final = frozenset({_Mode.VTX, _Mode.VTX_DRAIN, _Mode.VTR})
_RX_MODES: Final = frozenset({_Mode.VRX, _Mode.VTR})


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
class _Progress:
    """An outgoing call in the exchange: ringback until answered or given up."""

    callee: SimCallee
    start: float
    bursts_reported: int = 0
    answered: bool = False


class SimPort(Protocol):
    """What the emulator may ask of the port it is attached to."""

    def pause_reading(self) -> None:
        """Stop delivering host bytes (the modem's buffer is full)."""

    def resume_reading(self) -> None:
        """Deliver host bytes again."""

    def unplug(self) -> None:
        """Make the port vanish for the host."""


@dataclass(slots=True)
class _KeyPress:
    digit: str
    start: float
    end: float
    next_report: float
    tone: npt.NDArray[np.int16]
    tone_pos: int = 0
    started: bool = False


class SimModem:
    """The DCE side of a V.253 voice modem.

    Runs on the event loop; host bytes come in via :meth:`data_received`; bytes to the host
    go through the writer set by :meth:`attach`. Triggers (:meth:`ring`, :meth:`press_key`,
    :meth:`remote_hangup`, :meth:`stall`, :meth:`unplug` …) script the caller and faults;
    observation attributes (:attr:`commands`, :attr:`played`, :attr:`off_hook`,
    :attr:`first_tx_byte_at`) serve assertions.

    Args:
        profile: ``"conexant"`` (default), ``"usr"``, ``"v253"`` (or their long aliases).
        ring_period_s: time between RINGs (shrink in tests).
        cid_delay_s: caller ID this long after the first RING.
        echo: the line's hybrid (what the host plays returns in what it receives,
            :mod:`appliance.audio.hybrid`); None: no echo.
    """

    def __init__(
        self,
        profile: str = "conexant",
        *,
        ring_period_s: float = RING_PERIOD_S,
        cid_delay_s: float = CID_DELAY_S,
        echo: HybridSpec | None = None,
    ) -> None:
        self.profile = profile_named(profile)
        self.ring_period_s = ring_period_s
        self.cid_delay_s = cid_delay_s
        #: How long the exchange plays busy tone after the far end hangs up (then dial tone).
        self.exchange_busy_s = DIAL_TONE_AFTER_S
        self.commands: list[str] = []
        self._injected: list[str] = []
        self.first_tx_byte_at: float | None = None
        self.played_log: list[tuple[float, int]] = []
        self.stats: dict[str, int] = {
            "rx_bytes": 0, "tx_samples_played": 0, "underruns": 0,
            "late_ticks": 0, "rings": 0, "host_dle_ignored": 0,
        }  # fmt: skip
        self._vsm = {int(e.cml): e for e in parse_vsm_list(list(self.profile.vsm_list))}
        self._write: Callable[[bytes], None] | None = None
        self._port: SimPort | None = None
        self._tx_listeners: list[Callable[[npt.NDArray[np.int16], float], None]] = []
        self._played: list[npt.NDArray[np.int16]] = []
        self._source: Callable[[int], npt.NDArray[np.int16]] | None = None
        self._off_hook_event = asyncio.Event()
        self._on_hook_event = asyncio.Event()
        self._on_hook_event.set()
        self._ring_task: asyncio.Task[None] | None = None
        self._clock_task: asyncio.Task[None] | None = None
        self._vts_handle: asyncio.TimerHandle | None = None
        self._cmd_buf = bytearray()
        self._cmd_queue: deque[str] = deque()
        self._busy = False  # a deferred final result (+VTS, ATD) is pending
        self._stalled = False
        #: On-hook commands still to refuse while off-hook (None: every one); see
        #: :meth:`refuse_hang_up`.
        self._refuse_hang_ups: int | None = 0
        self.refused_hang_ups = 0
        self._callee = SimCallee()
        self.dialled: list[str] = []
        self._answered_event = asyncio.Event()
        self.hybrid: Hybrid | None = None
        self._echo: npt.NDArray[np.float64] | None = None
        self.set_echo(echo)
        self._reset_state()

    # --- wiring

    def attach(self, write: Callable[[bytes], None], *, port: SimPort | None = None) -> None:
        """Connect to a host: ``write(bytes)`` sends to it; ``port`` gets read pausing/unplug."""
        self._write = write
        self._port = port
        self._reading_paused = False

    def detach(self) -> None:
        """Disconnect from the host; timers stop; state is kept (like a powered modem)."""
        self._write = None
        self._port = None
        self._cancel_tasks()

    def set_echo(self, spec: HybridSpec | None) -> None:
        """Model the line's hybrid with ``spec`` from the next frame on (None: no echo).

        Changing the spec mid-call is an echo path change (the line's impedance changed).
        """
        if spec is None:
            self.hybrid, self._echo = None, None
        elif self.hybrid is None:
            self.hybrid = Hybrid(spec)
        else:
            self.hybrid.change(spec)

    # --- state

    def _reset_state(self) -> None:
        # ATZ / power-on defaults (§11 states).
        self.echo = True
        self.verbose = True
        self.quiet = False
        self.fclass = 0
        self.vls = 0
        self.vsm: tuple[int, int] = (next(iter(self._vsm)), SAMPLE_RATE_HZ)
        self.params: dict[str, str] = dict(_STORED)
        self._mode = _Mode.COMMAND
        self._host_after_dle = False
        self._txbuf = bytearray()
        self._tx_fed = False
        self._reading_paused = False
        self._key: _KeyPress | None = None
        self._hung_up_at: float | None = None
        self._next_busy_report = 0.0
        self._next_dial_report = 0.0
        self._next_silence_report = math.inf
        self._rx_index = 0
        self._progress: _Progress | None = None

    @property
    def off_hook(self) -> bool:
        """True while the modem holds the line (``+VLS`` ≠ 0 or ``ATA``)."""
        return self.vls != 0

    @property
    def ringing(self) -> bool:
        """True while the ring generator runs."""
        return self._ring_task is not None and not self._ring_task.done()

    @property
    def mode(self) -> str:
        """``command``, ``vtx``, ``vtx-drain``, ``vrx`` or ``vtr``."""
        return self._mode

    @property
    def voice_format(self) -> str:
        """The format of the current ``+VSM`` id."""
        entry = self._vsm.get(self.vsm[0])
        return entry.fmt if entry is not None and entry.fmt else "u8"

    @property
    def tx_buffered_s(self) -> float:
        """Seconds of host audio waiting in the modem's transmit buffer (the host's lead)."""
        return len(self._txbuf) / (SAMPLE_RATE_HZ * bytes_per_sample(self.voice_format))

    @property
    def played(self) -> npt.NDArray[np.int16]:
        """Every sample the host played, as the modem played it out, concatenated."""
        if not self._played:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._played)

    def clear_played(self) -> None:
        """Forget what was played (between test phases)."""
        self._played.clear()
        self.played_log.clear()

    async def wait_off_hook(self, timeout: float) -> None:  # noqa: ASYNC109 (public API name)
        """Wait until the host takes the line off-hook. Raises TimeoutError."""
        async with asyncio.timeout(timeout):
            await self._off_hook_event.wait()

    async def wait_on_hook(self, timeout: float) -> None:  # noqa: ASYNC109 (public API name)
        """Wait until the line is on-hook. Raises TimeoutError."""
        async with asyncio.timeout(timeout):
            await self._on_hook_event.wait()

    def add_tx_listener(self, cb: Callable[[npt.NDArray[np.int16], float], None]) -> None:
        """Call ``cb(samples, t_loop)`` for host audio as the modem plays it (8000/s)."""
        self._tx_listeners.append(cb)

    def remove_tx_listener(self, cb: Callable[[npt.NDArray[np.int16], float], None]) -> None:
        """Undo :meth:`add_tx_listener`."""
        with contextlib.suppress(ValueError):
            self._tx_listeners.remove(cb)

    # --- triggers

    def ring(
        self,
        number: str | None = None,
        name: str | None = None,
        *,
        withheld: bool = False,
        max_rings: int = 10,
        cid_before_first_ring: bool = False,
        when: datetime | None = None,
    ) -> None:
        """Start an incoming call: RING every ``ring_period_s`` with formatted caller ID.

        CID lines (if ``+VCID=1`` and a number, a name or ``withheld`` is given) come between the
        first and second RING, or before the first with ``cid_before_first_ring`` (§7.1).
        Stops when the host goes off-hook, after ``max_rings``, or on :meth:`stop_ringing` /
        :meth:`remote_hangup`.
        """
        self.stop_ringing()
        has_cid = number is not None or name is not None or withheld
        lines = (
            format_cid_lines(
                number,
                name,
                withheld=withheld,
                when=when or datetime.now(),
                spaced=self.profile.cid_spaced,
            )
            if has_cid
            else []
        )
        self._ring_task = asyncio.get_running_loop().create_task(
            self._run_ringing(lines, max_rings, cid_before_first_ring), name="sim-modem-ringing"
        )

    def stop_ringing(self) -> None:
        """Stop the ring generator (the caller gave up before an answer)."""
        if self._ring_task is not None:
            self._ring_task.cancel()
            self._ring_task = None

    def set_caller_audio(self, source: Callable[[int], npt.NDArray[np.int16]] | None) -> None:
        """Use ``source(n) → int16[n]`` as the caller's voice (None → silence)."""
        self._source = source

    def set_callee(self, callee: SimCallee | None) -> None:
        """Script the far end of the next ``ATD`` (None → the default: answer after 2 rings)."""
        self._callee = callee if callee is not None else SimCallee()

    @property
    def callee_answered(self) -> bool:
        """True once the dialled callee has answered (until the line goes on-hook)."""
        return self._progress is not None and self._progress.answered

    async def wait_callee_answered(self, timeout: float) -> None:  # noqa: ASYNC109 (public API)
        """Wait until the dialled callee answers. Raises TimeoutError."""
        async with asyncio.timeout(timeout):
            await self._answered_event.wait()

    def press_key(self, digit: str, duration_ms: int = 120) -> None:
        """The caller presses ``digit``: DLE framing in the RX stream plus the dual tone."""
        if digit not in DTMF_DIGITS:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        now = asyncio.get_running_loop().time()
        tone = dtmf_samples(digit, duration_ms)
        self._key = _KeyPress(digit, now, now + duration_ms / 1000, now, tone)
        if not self.off_hook:
            _LOGGER.debug("key %s pressed while on-hook: nothing to hear", digit)

    def remote_hangup(self) -> None:
        """The caller hangs up: busy tone in the RX audio; as the profile reports it
        (:attr:`SimProfile.hangup_report`): ``<DLE>b`` after the cadence is recognised
        (:attr:`SimProfile.busy_detect_s`) and every 4 s after, or only ``<DLE>s``, or
        nothing (§5.3)."""
        if not self.off_hook:
            self.stop_ringing()
            return
        self._network_busy(asyncio.get_running_loop().time())

    def report_event(self, code: str) -> None:
        """Send ``<DLE>code`` at the next clock tick, in any state (e.g. ``l``, ``L``, ``h``,
        ``H``: loop-current events a real line produces, docs/v253.md §5.1)."""
        if len(code) != 1:
            raise ValueError(f"a DLE event is one character: {code!r}")
        self._injected.append(code)

    def refuse_hang_up(self, count: int | None = 2) -> None:
        """Refuse the next ``count`` on-hook commands while off-hook (None: every one, until
        :meth:`accept_hang_up`): ``+VLS=0``, ``H``, ``Z`` answer ``ERROR`` and a DTR drop is
        ignored; the line stays off-hook. ``count=2`` is the fault found in the field: one
        hang-up whose ``AT+VLS=0`` and ``ATH0`` both answered ``ERROR``."""
        if count is not None and count < 0:
            raise ValueError(f"count must be ≥ 0 or None, not {count}")
        self._refuse_hang_ups = count

    def accept_hang_up(self) -> None:
        """Undo :meth:`refuse_hang_up`: on-hook commands work again."""
        self._refuse_hang_ups = 0

    def dtr_dropped(self) -> None:
        """The host dropped DTR: with ``&D2`` (the default) the modem hangs up."""
        if self._refusing_hang_up():
            return
        self._hang_up()

    def _refusing_hang_up(self) -> bool:
        """True if this on-hook command is refused (and counted)."""
        if not self.off_hook or self._refuse_hang_ups == 0:
            return False
        if self._refuse_hang_ups is not None:
            self._refuse_hang_ups -= 1
        self.refused_hang_ups += 1
        return True

    def inject(self, data: bytes) -> None:
        """Send ``data`` to the host as if the modem (or a noisy USB link) produced it."""
        self._send(data)

    def stall(self) -> None:
        """Stop answering commands (and stop the RX stream): a wedged modem."""
        self._stalled = True

    def unstall(self) -> None:
        """Answer commands again (what arrived meanwhile was lost)."""
        self._stalled = False
        self._cmd_buf.clear()

    def unplug(self) -> None:
        """The port vanishes for the host."""
        port = self._port
        self.detach()
        if port is not None:
            port.unplug()

    # --- host bytes in

    def data_received(self, data: bytes) -> None:
        """Bytes from the host (DTE)."""
        self.stats["rx_bytes"] += len(data)
        i, n = 0, len(data)
        while i < n:
            if self._mode in _DATA_MODES:
                i = self._data_bytes(data, i)
            else:
                i = self._command_bytes(data, i)

    def _command_bytes(self, data: bytes, i: int) -> int:
        n = len(data)
        start = i
        while i < n and self._mode not in _DATA_MODES:
            b = data[i]
            i += 1
            if self._stalled:
                continue
            if b == 0x0D:
                if self.echo:
                    self._send(data[start:i])
                start = i
                line = self._cmd_buf.decode("ascii", errors="replace").strip()
                self._cmd_buf.clear()
                if line:
                    self._cmd_queue.append(line)
                    self._process_queue()
            elif b in (0x0A, 0x00):
                continue
            elif b == 0x08 and self._cmd_buf:  # backspace (V.250 S5)
                self._cmd_buf.pop()
            elif len(self._cmd_buf) < 256:
                self._cmd_buf.append(b)
        if self.echo and not self._stalled and start < i:
            self._send(data[start:i])
        return i

    def _data_bytes(self, data: bytes, i: int) -> int:
        # Stateful host-DLE parser (quirk #1): an unpaired audio 0x10 swallows the next byte,
        # so a terminator right after it is taken as data — as on a real Conexant.
        n = len(data)
        while i < n and self._mode in _DATA_MODES:
            if self._host_after_dle:
                self._host_after_dle = False
                c = data[i]
                i += 1
                self._host_dle(c)
                continue
            j = data.find(DLE, i)
            end = n if j < 0 else j
            if end > i and self._mode in (_Mode.VTX, _Mode.VTR):
                self._tx_audio(data[i:end])
            if j < 0:
                return n
            self._host_after_dle = True
            i = j + 1
        return i

    def _host_dle(self, c: int) -> None:
        mode = self._mode
        if c == DLE:
            if mode in (_Mode.VTX, _Mode.VTR):
                self._tx_audio(b"\x10")
        elif c == ETX and mode == _Mode.VTX:
            self._mode = _Mode.VTX_DRAIN  # §5.3: play out, then OK (from the clock)
        elif c == CAN and mode in (_Mode.VTX, _Mode.VTR, _Mode.VTX_DRAIN):
            self._txbuf.clear()
        elif c == ord("!") and mode in (_Mode.VRX, _Mode.VTR):
            self._end_data_mode()  # §5.3: <DLE>! → <DLE><ETX> then OK
        elif c == ord("^") and mode == _Mode.VTR:
            self._end_data_mode()  # §5.3: <DLE>^ → <DLE><ETX> then OK
        else:
            self.stats["host_dle_ignored"] += 1

    def _end_data_mode(self) -> None:
        self._txbuf.clear()
        self._mode = _Mode.COMMAND
        self._send(b"\x10\x03")
        self._result("OK")
        self._resume_reading()
        self._process_queue()

    def _tx_audio(self, chunk: bytes) -> None:
        if self.first_tx_byte_at is None:
            self.first_tx_byte_at = asyncio.get_running_loop().time()
        self._txbuf += chunk
        self._tx_fed = True
        limit = int(TX_BUFFER_MAX_S * SAMPLE_RATE_HZ * bytes_per_sample(self.voice_format))
        if len(self._txbuf) > limit and not self._reading_paused and self._port is not None:
            self._reading_paused = True
            self._port.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            if self._port is not None:
                self._port.resume_reading()

    # --- commands

    def _process_queue(self) -> None:
        while self._cmd_queue and not self._busy and self._mode == _Mode.COMMAND:
            if self._stalled:
                self._cmd_queue.clear()
                return
            self._execute(self._cmd_queue.popleft())

    def _execute(self, line: str) -> None:
        self.commands.append(line)
        if line.upper() == "A/":
            return
        # V.250 §5.2.1: the DCE hunts for the "AT" prefix; what comes before it is discarded,
        # and a line without it is ignored.
        start = line.upper().find("AT")
        if start < 0:
            return
        line = line[start:]
        body = line[2:]
        if body[:1].upper() == "D":
            # V.250: D takes the rest of the line as its dial string.
            self._result_or_defer(self._cmd_dial(body[1:]))
            return
        final: str | None = "OK"
        pos = 0
        while pos < len(body):
            ch = body[pos]
            if ch in " ;":
                pos += 1
                continue
            if ch in "+#-!%":
                end = body.find(";", pos)
                end = len(body) if end < 0 else end
                final = self._extended(body[pos:end])
                pos = end
            else:
                m = _BASIC_RE.match(body.upper(), pos)
                if m is None:
                    final = "ERROR"
                    break
                final = self._basic(m.group(1), m.group(2))
                pos = m.end()
                if m.group(1) == "S":  # S-registers: Sn=v or Sn?
                    rest = re.match(r"(=\d*|\?)", body[pos:])
                    pos += rest.end() if rest else 0
            if final != "OK":
                break
        if final is not None:
            self._result(final)
        if final == "CONNECT":
            self._host_after_dle = False
            self._tx_fed = False

    def _basic(self, cmd: str, arg: str) -> str | None:
        value = int(arg) if arg else 0
        if cmd == "E":
            self.echo = value == 1
        elif cmd == "V":
            self.verbose = value == 1
        elif cmd == "Q":
            self.quiet = value == 1
        elif cmd in ("Z", "H") and self._refusing_hang_up():
            return "ERROR"
        elif cmd == "Z":
            was_vcid = self.params["VCID"]
            self._hang_up()
            self._reset_state()
            if not self.profile.vcid_lost_at_atz:
                self.params["VCID"] = was_vcid
        elif cmd == "I":
            answer = {0: self.profile.ati0, 3: self.profile.ati3}.get(value)
            if answer is None:
                return "OK"
            self._info(answer)
        elif cmd == "H":
            self._hang_up()
        elif cmd == "A":
            if self.fclass == 8:
                self._go_off_hook()
                return "VCON" if self.profile.name == "usr" else "OK"
            # Data class: no carrier on a voice call.
            self.stop_ringing()
            return "NO CARRIER"
        elif cmd in ("M", "L", "X", "S", "&F", "&W", "&C", "&D", "&K"):
            pass  # accepted, no effect here
        else:
            return "ERROR"
        return "OK"

    def _extended(self, text: str) -> str | None:
        upper = text.upper()
        m = re.match(r"^([+#\-!%][A-Z0-9]*)(=\?|\?|=(.*))?$", upper)
        if m is None:
            return "ERROR"
        name, form, arg = m.group(1), m.group(2), m.group(3)
        bare = name[1:]
        if name.startswith("+") and bare in _VOICE_ONLY and self.fclass != 8:
            return "ERROR"  # §3: voice-only commands need +FCLASS=8
        if name in ("-STE", "!4886", "!4892", "-SCID"):
            return "OK"  # Conexant vendor switches: accepted
        if not name.startswith("+"):
            return "ERROR"
        handler = {
            "FCLASS": self._cmd_fclass,
            "VLS": self._cmd_vls,
            "VSM": self._cmd_vsm,
            "VTX": self._cmd_voice_data,
            "VRX": self._cmd_voice_data,
            "VTR": self._cmd_voice_data,
            "VTS": self._cmd_vts,
            "GMI": self._cmd_identity,
            "GMM": self._cmd_identity,
            "GMR": self._cmd_identity,
            "VIP": self._cmd_vip,
        }.get(bare)
        if handler is not None:
            return handler(bare, form, arg)
        if bare.startswith(("VRX", "VTX")) and bare[3:].isdigit():
            return self._cmd_voice_data(bare[:3], form, arg)  # CX-HSF +VRX<n>
        if bare in _STORED:
            return self._cmd_stored(bare, form, arg)
        return "ERROR"

    def _info(self, text: str) -> None:
        self._send(b"\r\n" + text.encode("ascii", errors="replace") + b"\r\n")

    def _query(self, name: str, value: str) -> None:
        self._info(f"+{name}: {value}" if self.profile.info_prefix else value)

    def _cmd_stored(self, name: str, form: str | None, arg: str | None) -> str:
        if form == "?":
            self._query(name, self.params[name])
        elif form == "=?":
            ranges = {"VCID": "(0-2)", "GCI": "(00,09,0A,16,20,31,3C,51,59,73,B5)"}
            self._info(ranges.get(name, "(0-255)"))
        elif arg is not None:
            if name == "VCID" and arg not in ("0", "1", "2"):
                return "ERROR"
            if name == "VSD" and self.profile.name == "conexant":
                return "OK"  # quirk #3: accepted but not applied
            self.params[name] = arg
        return "OK"

    def _cmd_fclass(self, name: str, form: str | None, arg: str | None) -> str:
        if form == "?":
            self._info(str(self.fclass))  # §9.2: bare value even where others prefix
        elif form == "=?":
            self._info("0,1,8")
        elif arg in ("0", "1", "8"):
            self.fclass = int(arg)
        else:
            return "ERROR"
        return "OK"

    def _cmd_vls(self, name: str, form: str | None, arg: str | None) -> str:
        if form == "?":
            self._query(name, str(self.vls))
        elif form == "=?":
            self._info('0,"",B0804100,B0804100,B0804100')
            self._info('1,"T",0B8433C1,0FE431C1,0B8431C1')
        elif arg in ("0", "1", "5"):
            if arg == "0":
                if self._refusing_hang_up():
                    return "ERROR"
                self._hang_up()
            else:
                self._go_off_hook(int(arg))
                if self.profile.dle_h_after_off_hook:
                    # quirk #23: USR confirms with <DLE>H right after the OK.
                    asyncio.get_running_loop().call_soon(self._send, b"\x10H")
        else:
            return "ERROR"
        return "OK"

    def _cmd_vsm(self, name: str, form: str | None, arg: str | None) -> str:
        if form == "?":
            cml, rate = self.vsm
            self._query(name, f"{cml},{rate},0,0")
        elif form == "=?":
            for line in self.profile.vsm_list:
                self._info(line)
        elif arg is not None:
            parts = [p.strip() for p in arg.split(",")]
            try:
                cml = int(parts[0])
                rate = int(parts[1]) if len(parts) > 1 and parts[1] else SAMPLE_RATE_HZ
            except ValueError:
                return "ERROR"
            entry = self._vsm.get(cml)
            if entry is None or entry.fmt is None or rate != SAMPLE_RATE_HZ:
                return "ERROR"
            self.vsm = (cml, rate)  # quirk #8: duplicates are fine
        return "OK"

    def _cmd_voice_data(self, name: str, form: str | None, arg: str | None) -> str:
        if name == "VTR" and not self.profile.full_duplex:
            return "ERROR"
        if name == "VTR" and form == "=?" and not self.profile.vtr_test_command:
            return "ERROR"
        if form is not None:
            return "OK" if form == "=?" else "ERROR"
        if not self.off_hook:
            return "ERROR"
        self._mode = {"VTX": _Mode.VTX, "VRX": _Mode.VRX, "VTR": _Mode.VTR}[name]
        self._txbuf.clear()
        return "CONNECT"

    def _cmd_vts(self, name: str, form: str | None, arg: str | None) -> str | None:
        if arg is None:
            return "OK" if form == "=?" else "ERROR"
        total_s = 0.0
        default_s = int(self.params["VTD"] or "100") / 100
        parts: list[npt.NDArray[np.int16]] = []
        for m in _VTS_DUR_RE.finditer(arg or ""):
            group = m.group(1) or m.group(2)
            if group is not None:
                fields = [f.strip() for f in group.split(",")]
                dur = fields[-1] if len(fields) >= 2 else ""
                seconds = int(dur) / 100 if dur.isdigit() else default_s
                # [f1,f2,d]: one or two sines (0 or empty = none); {c,d}: not modelled (silence).
                freqs = ([int(f) for f in fields[:2] if f.isdigit() and int(f) > 0]
                         if m.group(1) is not None else [])
                parts.append(_tone_samples(freqs, seconds))
            else:
                seconds = default_s
                digit = m.group(3)
                parts.append(dtmf_samples(digit, seconds * 1000) if digit != "!"
                             else _tone_samples([], seconds))
            total_s += seconds
        if parts and self.off_hook:
            # The far end hears the tones (played in one piece; the OK below keeps the time).
            self._play(np.concatenate(parts), asyncio.get_running_loop().time())
        # §11 timers: OK only after the tones have been played.
        self._busy = True
        self._vts_handle = asyncio.get_running_loop().call_later(total_s, self._vts_done)
        return None

    def _result_or_defer(self, final: str | None) -> None:
        if final is not None:
            self._result(final)

    def _defer(self, delay_s: float, done: Callable[[], str]) -> None:
        """Hold the command queue for ``delay_s``, then send the result ``done()`` returns."""
        self._busy = True

        def finish() -> None:
            self._vts_handle = None
            self._busy = False
            self._result(done())
            self._process_queue()

        self._vts_handle = asyncio.get_running_loop().call_later(delay_s, finish)

    def _cmd_dial(self, text: str) -> str | None:
        # V.250 D: optional T/P (tone/pulse), digits, "," pauses, ";" = stay in command state.
        dial = text.strip().upper()
        if dial[:1] in ("T", "P"):
            dial = dial[1:]
        digits = "".join(ch for ch in dial if ch in DTMF_DIGITS)
        if not digits:
            return "ERROR"
        callee = self._callee
        if self.fclass != 8:
            # A data call to a voice number: nothing answers with a carrier.
            self._defer(DIAL_DIGIT_S * len(digits) + DIAL_TONE_WAIT_S, lambda: "NO CARRIER")
            return None
        if callee.kind == "no-dialtone":
            self._defer(DIAL_TONE_WAIT_S, lambda: "NO DIALTONE")
            return None
        self._go_off_hook(1)
        self.dialled.append(digits)
        self._answered_event.clear()

        def dialled() -> str:
            if not self.off_hook:
                return "NO CARRIER"
            now = asyncio.get_running_loop().time()
            self._progress = _Progress(callee, now)
            if callee.kind == "busy":
                if callee.busy_as_result:
                    self._hang_up()
                    return "BUSY"
                self._network_busy(now)
            return "VCON" if self.profile.name == "usr" else "OK"

        self._defer(DIAL_DIGIT_S * len(digits), dialled)
        return None

    def _network_busy(self, now: float) -> None:
        # Busy/congestion from the exchange: the same tone and reports as a remote hang-up.
        # A modem recognises the cadence only after a few cycles (busy_detect_s).
        self._hung_up_at = now
        kind = self.profile.hangup_report
        never = math.inf
        self._next_busy_report = now + self.profile.busy_detect_s if kind == "busy" else never
        self._next_dial_report = now + self.exchange_busy_s if kind == "busy" else never
        self._next_silence_report = (now + self.exchange_busy_s + SILENCE_REPORT_S
                                     if kind == "silence" else never)

    def _vts_done(self) -> None:
        self._vts_handle = None
        self._busy = False
        self._result("OK")
        self._process_queue()

    def _cmd_identity(self, name: str, form: str | None, arg: str | None) -> str:
        value = {"GMI": self.profile.gmi, "GMM": self.profile.ati3, "GMR": self.profile.ati3}
        self._query(name, value[name])
        return "OK"

    def _cmd_vip(self, name: str, form: str | None, arg: str | None) -> str:
        for key in ("VSD", "VGT", "VGR", "VIT", "VTD"):
            self.params[key] = _STORED[key]
        return "OK"

    def _result(self, code: str) -> None:
        if self.quiet:
            return
        if self.verbose:
            self._send(b"\r\n" + code.encode() + b"\r\n")
        else:
            self._send(_NUMERIC.get(code, "4").encode() + b"\r")

    # --- hook

    def _go_off_hook(self, label: int = 1) -> None:
        was = self.off_hook
        self.vls = label
        if was:
            return
        self.stop_ringing()
        self.first_tx_byte_at = None
        self._key = None
        self._hung_up_at = None
        self._on_hook_event.clear()
        self._off_hook_event.set()
        loop = asyncio.get_running_loop()
        self._clock_task = loop.create_task(self._run_clock(), name="sim-modem-clock")

    def _hang_up(self) -> None:
        self._mode = _Mode.COMMAND
        self._txbuf.clear()
        self._resume_reading()
        if not self.off_hook:
            return
        self.vls = 0
        self._hung_up_at = None
        self._key = None
        self._progress = None
        if self._clock_task is not None:
            self._clock_task.cancel()
            self._clock_task = None
        self._off_hook_event.clear()
        self._on_hook_event.set()

    def _cancel_tasks(self) -> None:
        self.stop_ringing()
        if self._clock_task is not None:
            self._clock_task.cancel()
            self._clock_task = None
        if self._vts_handle is not None:
            self._vts_handle.cancel()
            self._vts_handle = None
            self._busy = False

    # --- ringing

    async def _run_ringing(self, cid_lines: list[str], max_rings: int, cid_first: bool) -> None:
        def send_cid() -> None:
            if self.params["VCID"] == "1" and cid_lines:
                self._send(b"".join(b"\r\n" + line.encode() + b"\r\n" for line in cid_lines))

        if cid_first:
            send_cid()
        for count in range(max_rings):
            if self.off_hook:
                return
            self.stats["rings"] += 1
            if self.fclass == 8 and self.profile.dle_ring_in_voice_class:
                self._send(b"\x10R")  # quirk #27: rings as <DLE>R in voice class
            else:
                self._result("RING")
            if count == 0 and not cid_first:
                await asyncio.sleep(self.cid_delay_s)
                if self.off_hook:
                    return
                send_cid()
                await asyncio.sleep(max(0.0, self.ring_period_s - self.cid_delay_s))
            else:
                await asyncio.sleep(self.ring_period_s)

    # --- the voice clock

    async def _run_clock(self) -> None:
        # §8: the modem's codec clock defines real time. Ticks are scheduled on absolute
        # loop.time() targets (t0 + k·20 ms), so lateness is caught up, never accumulated.
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        k = 0
        while True:
            k += 1
            due = t0 + k * TICK_S
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -TICK_S:
                self.stats["late_ticks"] += 1
            try:
                self._tick(due)
            except Exception:
                _LOGGER.exception("simulated modem tick failed")

    def _due_events(self, now: float) -> list[str]:
        events: list[str] = list(self._injected)
        self._injected.clear()
        key = self._key
        if key is not None and now >= key.start:
            if self.profile.dtmf_shielded:
                # §5.4: <DLE>/ <DLE>d (repeat every 70 ms while the tone lasts) <DLE>~
                if not key.started:
                    key.started = True
                    events += ["/", key.digit]
                    key.next_report = now + DTMF_REPEAT_S
                elif now >= key.end:
                    events.append("~")
                    self._key = None
                elif now >= key.next_report:
                    events.append(key.digit)
                    key.next_report += DTMF_REPEAT_S
            else:
                if not key.started:
                    key.started = True
                    events.append(key.digit)
                if now >= key.end:
                    self._key = None
        progress = self._progress
        if progress is not None and not progress.answered and self._hung_up_at is None:
            events += self._progress_events(progress, now)
        if self._hung_up_at is not None:
            if now >= self._next_busy_report:
                events.append("b")
                self._next_busy_report += BUSY_REPORT_S
            if now >= self._next_dial_report:
                events.append("d")
                self._next_dial_report += DIAL_REPORT_S
            if now >= self._next_silence_report:
                events.append("s")  # once: the modem's silence timer ran out
                self._next_silence_report = math.inf
        return events

    def _progress_events(self, progress: _Progress, now: float) -> list[str]:
        callee = progress.callee
        t = now - progress.start
        if callee.kind == "answer" and t >= (
            (callee.rings - 1) * RINGBACK_PERIOD_S + RINGBACK_ON_S + ANSWER_AFTER_BURST_S
        ):
            progress.answered = True
            if callee.source is not None:
                self._source = callee.source
            self._answered_event.set()
            return []
        burst = int(t // RINGBACK_PERIOD_S)
        if callee.kind == "no-answer" and burst >= callee.rings:
            self._network_busy(now)  # the exchange gives up: congestion = busy in Hungary
            return []
        if burst >= progress.bursts_reported:
            progress.bursts_reported = burst + 1
            return ["r"]  # §5.1 (mgetty): ringback, once per burst
        return []

    def _caller_frame(self, now: float) -> npt.NDArray[np.int16]:
        n = FRAME_SAMPLES
        progress = self._progress
        if self._hung_up_at is None and progress is not None and not progress.answered:
            # The exchange's ringback in the line audio, 425 Hz 1250/3750 ms.
            offsets = np.arange(n) / SAMPLE_RATE_HZ
            since = (now - progress.start) + offsets
            on = (since % RINGBACK_PERIOD_S) < RINGBACK_ON_S
            phase = 2 * np.pi * BUSY_TONE_HZ * (self._rx_index / SAMPLE_RATE_HZ + offsets)
            self._rx_index += n
            out = BUSY_LEVEL * np.sin(phase) * on * 32767.0
            return np.clip(np.rint(out), -32768, 32767).astype(np.int16)
        if self._hung_up_at is not None:
            # The caller is gone: the exchange plays busy tone 425 Hz 300/300 ms, then dial
            # tone — which a modem that reports nothing does not tell apart: quiet line then.
            offsets = np.arange(n) / SAMPLE_RATE_HZ
            since = (now - self._hung_up_at) + offsets
            on = (since % (BUSY_ON_S + BUSY_OFF_S)) < BUSY_ON_S
            if self.profile.hangup_report != "busy":
                on &= since < self.exchange_busy_s
            phase = 2 * np.pi * BUSY_TONE_HZ * (self._rx_index / SAMPLE_RATE_HZ + offsets)
            mix = BUSY_LEVEL * np.sin(phase) * on
        else:
            source = self._source
            if source is None:
                mix = np.zeros(n)
            else:
                mix = np.asarray(source(n), dtype=np.float64).reshape(-1)[:n] / 32767.0
                if mix.size < n:
                    mix = np.pad(mix, (0, n - mix.size))
        out = mix * 32767.0
        key = self._key
        if key is not None and key.tone_pos < len(key.tone):
            # The dual tone is in the line audio too, so in-band detectors can be tested.
            part = key.tone[key.tone_pos : key.tone_pos + n].astype(np.float64)
            key.tone_pos += len(part)
            out[: len(part)] += part
        self._rx_index += n
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)

    def _tick(self, now: float) -> None:
        if self._stalled:
            return
        out = bytearray()
        fmt = self.voice_format
        events = self._due_events(now)
        if self._mode in _RX_MODES:
            # The echo of the previous frame played (the hybrid returns it as the next one
            # is sampled: audio/hybrid.py).
            rx = add_echo(self._caller_frame(now), self._echo)
            out += VoiceEncoder.encode(_encode_voice(rx, fmt))
        played: npt.NDArray[np.int16] | None = None
        for code in events:
            out += b"\x10" + code.encode("latin-1")
        if self._mode in _TX_MODES:
            frame_bytes = FRAME_SAMPLES * bytes_per_sample(fmt)
            take = bytes(self._txbuf[:frame_bytes])
            if bytes_per_sample(fmt) == 2 and len(take) % 2:
                take = take[:-1]  # keep an odd byte for the next tick
            del self._txbuf[: len(take)]
            if take:
                played = decode_voice(take, fmt)
                self._play(played, now)
            if len(take) < frame_bytes and self._mode != _Mode.VTX_DRAIN and self._tx_fed:
                # §6: buffer empty without <DLE><ETX> → <DLE>u, once per gap.
                self._tx_fed = False
                self.stats["underruns"] += 1
                out += b"\x10u"
            limit = int(TX_BUFFER_MAX_S * SAMPLE_RATE_HZ * bytes_per_sample(fmt))
            if self._reading_paused and len(self._txbuf) <= limit // 2:
                self._resume_reading()
            if self._mode == _Mode.VTX_DRAIN and not self._txbuf:
                self._mode = _Mode.COMMAND
                if out:
                    self._send(bytes(out))
                    out.clear()
                self._result("OK")
                self._resume_reading()
                self._process_queue()
        if self.hybrid is not None:
            # Silence is sent too when nothing is played: the tail of earlier echo goes on.
            sent = np.zeros(FRAME_SAMPLES, dtype=np.int16)
            if played is not None:
                sent[: len(played)] = played[:FRAME_SAMPLES]
            self._echo = self.hybrid.echo(sent)
        if out:
            self._send(bytes(out))

    def _play(self, samples: npt.NDArray[np.int16], now: float) -> None:
        self._played.append(samples)
        self.played_log.append((now, len(samples)))
        self.stats["tx_samples_played"] += len(samples)
        for cb in list(self._tx_listeners):
            try:
                cb(samples, now)
            except Exception:
                _LOGGER.exception("tx listener failed")

    def _send(self, data: bytes) -> None:
        if self._write is not None and data:
            self._write(data)


def _tone_samples(freqs_hz: list[int], seconds: float) -> npt.NDArray[np.int16]:
    """Sum of sines at -10 dBFS each (silence for no frequency), for ``AT+VTS=[f1,f2,d]``."""
    t = np.arange(round(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    x = sum((0.316 * np.sin(2 * np.pi * f * t) for f in freqs_hz), np.zeros_like(t))
    return np.clip(np.rint(x * 32767.0), -32768, 32767).astype(np.int16)
