"""The emulated modem's state, its link to the host and its hook: what every concern shares.

:class:`SimState` holds the settings (E/V/Q, ``+FCLASS``, ``+VLS``, ``+VSM``, stored
parameters), the voice mode, the transmit buffer, the call in progress and the observation
attributes tests assert on; it takes the line off-hook and puts it back. The concerns built on
it — the AT interpreter (:mod:`~appliance.sim.modem.at`), the voice clock
(:mod:`~appliance.sim.modem.clock`), the telephone network (:mod:`~appliance.sim.modem.network`)
and the test triggers (:mod:`~appliance.sim.modem.triggers`) — meet in
:class:`~appliance.sim.modem.emulator.SimModem`; what one asks of another is declared here as a
seam.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from appliance.audio.hybrid import Hybrid, HybridSpec
from appliance.audio.pcm import SAMPLE_RATE_HZ, bytes_per_sample
from appliance.line.commands import parse_vsm_list
from appliance.sim.modem.exchange import (
    CID_DELAY_S,
    DIAL_TONE_AFTER_S,
    RING_PERIOD_S,
    CallProgress,
    SimCallee,
)
from appliance.sim.modem.profiles import profile_named

__all__ = ["DATA_MODES", "RX_MODES", "STORED_DEFAULTS", "TX_BUFFER_MAX_S", "TX_MODES", "KeyPress",
           "SimPort", "SimState", "VoiceMode"]

TX_BUFFER_MAX_S: Final = 1.0
"""The modem stops reading host bytes when this much audio is queued (back-pressure)."""

# Stored-and-echoed extended parameters (value kept as text, default in brackets).
STORED_DEFAULTS: Final = {
    "VSD": "128,0", "VGT": "128", "VGR": "128", "VIT": "0", "VRA": "50", "VRN": "10",
    "VDR": "0,0", "VDT": "0,0", "VNH": "0", "VEM": "", "VPR": "0", "VTD": "100",
    "IFC": "2,2", "GCI": "B5", "VCID": "0",
}  # fmt: skip


class VoiceMode:
    """The modem's state on the link: commands, or one of the voice data states."""

    COMMAND: Final = "command"
    VTX: Final = "vtx"
    VTX_DRAIN: Final = "vtx-drain"  # <DLE><ETX> received: play out the buffer, then OK
    VRX: Final = "vrx"
    VTR: Final = "vtr"


DATA_MODES: Final = frozenset({VoiceMode.VTX, VoiceMode.VTX_DRAIN, VoiceMode.VRX, VoiceMode.VTR})
TX_MODES: Final = frozenset({VoiceMode.VTX, VoiceMode.VTX_DRAIN, VoiceMode.VTR})
RX_MODES: Final = frozenset({VoiceMode.VRX, VoiceMode.VTR})


class SimPort(Protocol):
    """What the emulator may ask of the port it is attached to."""

    def pause_reading(self) -> None:
        """Stop delivering host bytes (the modem's buffer is full)."""

    def resume_reading(self) -> None:
        """Deliver host bytes again."""

    def unplug(self) -> None:
        """Make the port vanish for the host."""


@dataclass(slots=True)
class KeyPress:
    digit: str
    start: float
    end: float
    next_report: float
    tone: npt.NDArray[np.int16]
    tone_pos: int = 0
    started: bool = False


class SimState:
    """State, host link and hook of the emulated modem (the concerns' common base).

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
        self.params: dict[str, str] = dict(STORED_DEFAULTS)
        self._mode = VoiceMode.COMMAND
        self._host_after_dle = False
        self._txbuf = bytearray()
        self._tx_fed = False
        self._reading_paused = False
        self._key: KeyPress | None = None
        self._hung_up_at: float | None = None
        self._next_busy_report = 0.0
        self._next_dial_report = 0.0
        self._next_silence_report = math.inf
        self._rx_index = 0
        self._progress: CallProgress | None = None

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

    # --- hook

    def stop_ringing(self) -> None:
        """Stop the ring generator (the caller gave up before an answer)."""
        if self._ring_task is not None:
            self._ring_task.cancel()
            self._ring_task = None

    def _refusing_hang_up(self) -> bool:
        """True if this on-hook command is refused (and counted)."""
        if not self.off_hook or self._refuse_hang_ups == 0:
            return False
        if self._refuse_hang_ups is not None:
            self._refuse_hang_ups -= 1
        self.refused_hang_ups += 1
        return True

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
        self._mode = VoiceMode.COMMAND
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

    def _resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            if self._port is not None:
                self._port.resume_reading()

    def _send(self, data: bytes) -> None:
        if self._write is not None and data:
            self._write(data)

    # --- seams: what one concern asks of another (provided by the mixins, see SimModem)

    def _result(self, code: str) -> None:
        """Send the final result ``code`` as the E/V/Q settings say (at.py)."""
        raise NotImplementedError

    def _process_queue(self) -> None:
        """Run the queued command lines while in command state (at.py)."""
        raise NotImplementedError

    def _defer(self, delay_s: float, done: Callable[[], str]) -> None:
        """Hold the command queue for ``delay_s``, then send ``done()``'s result (at.py)."""
        raise NotImplementedError

    def _cmd_dial(self, text: str) -> str | None:
        """``ATD``: dial ``text`` through the exchange (network.py)."""
        raise NotImplementedError

    def _network_busy(self, now: float) -> None:
        """The far end is gone or busy from ``now`` on: busy tone and reports (network.py)."""
        raise NotImplementedError

    async def _run_ringing(self, cid_lines: list[str], max_rings: int, cid_first: bool) -> None:
        """Ring the line with caller ID (network.py)."""
        raise NotImplementedError

    def _progress_events(self, progress: CallProgress, now: float) -> list[str]:
        """The ``<DLE>`` codes an outgoing call produces at ``now`` (network.py)."""
        raise NotImplementedError

    def _caller_frame(self, now: float) -> npt.NDArray[np.int16]:
        """The next 20 ms the line delivers to the modem (network.py)."""
        raise NotImplementedError

    async def _run_clock(self) -> None:
        """The voice clock while off-hook (clock.py)."""
        raise NotImplementedError

    def _play(self, samples: npt.NDArray[np.int16], now: float) -> None:
        """The modem plays ``samples`` to the line at ``now`` (clock.py)."""
        raise NotImplementedError
