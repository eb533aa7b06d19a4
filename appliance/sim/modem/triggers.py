"""The emulated modem's test triggers: what a scripted caller, a test or a fault does to it.

Mopidy ``trigger_fake_*`` style: :meth:`~Triggers.ring`, :meth:`~Triggers.press_key`,
:meth:`~Triggers.remote_hangup`, :meth:`~Triggers.refuse_hang_up`, :meth:`~Triggers.stall`,
:meth:`~Triggers.unplug` … drive the emulator from outside the serial link; the host still
sees only bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

import numpy as np
import numpy.typing as npt

from appliance.audio.tones import dtmf_samples
from appliance.line.codec import DTMF_DIGITS, format_cid_lines
from appliance.sim.modem.exchange import SimCallee
from appliance.sim.modem.state import KeyPress, SimState

__all__ = ["Triggers"]

_LOGGER = logging.getLogger(__name__)


class Triggers(SimState):
    """Script the caller, the callee and the faults."""

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
        self._key = KeyPress(digit, now, now + duration_ms / 1000, now, tone)
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
