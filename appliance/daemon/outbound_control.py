"""Everything outbound on the daemon side: dial tone, digits, the line, the call.

:class:`OutboundController` is created by ``Application.start`` and offered, first, every
handset event, handset frame, front-panel press and the modem events of the line it uses.
While the box is idle, lifting the handset starts a session (one :class:`OutboundCall`):

* **Dial tone within 100 ms.** The tone is clocked by the handset (as the idle earpiece
  player): each captured 20 ms frame pushes one tone frame to the earpiece, so the first tone
  frame leaves one handset tick after the debounced off-hook event.
* **Digits**: DTMF detected on the handset capture (``DtmfDetector``) and pulse digits from the
  SLIC (``HookEvent(kind="digit")``) both become ``DigitDialled``.
* **The handset** is taken in :class:`~appliance.daemon.shared_handset.SharedHandset` under
  :data:`OWNER`, so an inbound call on another line holds instead of ringing an
  off-hook phone; a RING on a line while the shop has not dialled a digit wins: the session
  ends and the inbound call finds the shop already off-hook.
* **The line**: a free line (modem up, no call, no RING in the last ``RING_GONE_S``) is seized
  and dialled; once the modem has dialled, duplex audio runs through :class:`CallMedia` bridged
  both ways, so the shop hears the network's ringback, busy tone or the callee. Progress comes
  from the modem (``<DLE>r``/``<DLE>b``…) and from :class:`CallProgressDetector` on the line
  audio; an answer is "voice heard" or ringback gone for :data:`RINGBACK_GONE_S` (the host-side
  analogue of the modem's ``+VRA`` timer, docs/v253.md §4.1).
* **No dial tone** on the line: congestion tone in the earpiece and the line's state in
  ``appliance status`` says so until the line next works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import numpy as np

from appliance.audio.dtmf import DtmfDetector
from appliance.audio.tones import ToneGenerator
from appliance.call.events import (
    AgentOffHook,
    AgentOnHook,
    CallerHungUp,
    DigitDialled,
    KeyPressed,
    LineLost,
    LineProgress,
    OutboundEvent,
    RecordRequested,
)
from appliance.call.flow import RecordingInfo, RecordPort
from appliance.call.outbound_flow import OutboundCall, OutboundPolicy, OutboundPorts, OutboundResult
from appliance.daemon.media import CallMedia
from appliance.errors import ModemError
from appliance.line.modem import (
    CallProgress,
    DialResult,
    Dtmf,
    LineEvent,
    LinkDown,
    RemoteHangup,
)
from appliance.line.progress import CallProgressDetector
from appliance.panel.panel import PanelState

if TYPE_CHECKING:
    from appliance.audio.backend import HandsetAudio
    from appliance.audio.tones import ToneZone
    from appliance.call.events import CallEvent
    from appliance.call.flow import PromptPort
    from appliance.config import Config, LineConfig
    from appliance.handset.slic import HookEvent, Slic
    from appliance.line.modem import Modem
    from appliance.panel.panel import ButtonEvent, Panel
    from appliance.store.db import Store

_LOGGER = logging.getLogger(__name__)

#: The SharedHandset owner name of an outbound session (references are digits only).
OWNER: Final = "outbound"
#: Seconds after the last RING before a ringing-but-unanswered call counts as gone: an
#: inbound call is then missed, and only then is the line free for an outbound call (going
#: off-hook earlier would answer it).
RING_GONE_S: Final = 8.0
#: Ringback heard, then none for this long (> one 5 s Hungarian cadence): answered.
RINGBACK_GONE_S: Final = 6.5
#: Fault-LED name while the handset is left off the hook (steady on: not a FAULT_CODES code).
OFFHOOK_FAULT: Final = "handset-off-hook"
_DIAL_RESULT: Final = {
    DialResult.DIALLED: "dialled",
    DialResult.BUSY: "busy",
    DialResult.NO_DIALTONE: "no-dialtone",
    DialResult.NO_ANSWER: "no-answer",
    DialResult.NO_CARRIER: "failed",
}


class OutboundLine(Protocol):
    """What the controller needs of one line's supervisor (the daemon's ``LineSession``)."""

    state: str

    @property
    def line(self) -> LineConfig: ...
    @property
    def modem(self) -> Modem | None: ...
    @property
    def active(self) -> object | None:
        """The inbound call on this line, if any (the controller only asks whether one is)."""
    @property
    def no_duplex(self) -> bool: ...
    def hung_up(self, modem: Modem, confirmed: bool) -> None:
        """The call on ``modem`` was hung up; an unconfirmed hang-up faults the line."""


class HandsetClaim(Protocol):
    """The shared handset's arbitration: first come, first served."""

    def request(self, reference: str) -> bool: ...
    def release(self, reference: str) -> None: ...


class OutboundHost(Protocol):
    """The narrow port through which the controller reaches the rest of the daemon.

    The daemon's ``Application`` implements it; the controller never touches its internals,
    so this module does not depend on ``daemon/app.py`` (which creates the controller).
    """

    #: Set while the handset is left off the hook after an outbound call (a fault LED).
    handset_left_off_hook: bool
    @property
    def announce_on_lift(self) -> str | None:
        """Something the owner was rung to hear when lifting (then a lift is not a dial-out)."""
    @property
    def config(self) -> Config: ...
    @property
    def tone_zone(self) -> ToneZone: ...
    @property
    def store(self) -> Store: ...
    @property
    def call_records(self) -> RecordPort: ...
    @property
    def prompts(self) -> PromptPort: ...
    @property
    def handset_audio(self) -> HandsetAudio: ...
    @property
    def panel(self) -> Panel: ...
    @property
    def slic(self) -> Slic: ...
    @property
    def handset(self) -> HandsetClaim: ...
    @property
    def lines(self) -> Sequence[OutboundLine]: ...
    @property
    def in_call(self) -> bool: ...
    def observe(self, reference: str, state: str, detail: str) -> None: ...
    def update_faults(self) -> None: ...
    async def allocate_reference(self) -> str: ...
    def publish_status(self) -> None: ...
    def handset_owner_events(self) -> asyncio.Queue[CallEvent] | None:
        """The event queue of the inbound call that has the handset, if any."""


class _MediaPort:
    """The flow's media port: the call's CallMedia once the line carries audio, else no-ops."""

    def __init__(self) -> None:
        self.target: CallMedia | None = None

    def play_to_line(self, token: str, *clips: np.ndarray) -> None:
        if self.target is not None:
            self.target.play_to_line(token, *clips)

    def play_to_handset(self, token: str, *clips: np.ndarray) -> None:
        if self.target is not None:
            self.target.play_to_handset(token, *clips)

    def bridge(self) -> None:
        if self.target is not None:
            self.target.bridge()

    def unbridge(self) -> None:
        if self.target is not None:
            self.target.unbridge()

    async def start_recording(self) -> None:
        if self.target is not None:
            await self.target.start_recording()

    @property
    def recording(self) -> bool:
        return self.target is not None and self.target.recording

    async def finish_recording(self) -> RecordingInfo | None:
        if self.target is None:
            return None
        return await self.target.finish_recording()


class _Session:
    """One lift of the handset: implements the OutboundCall's ports on the daemon."""

    def __init__(self, controller: OutboundController) -> None:
        self.controller = controller
        self.app = controller.app
        self.events: asyncio.Queue[OutboundEvent] = asyncio.Queue()
        self.media = _MediaPort()
        self.line_session: OutboundLine | None = None
        self.reference: str | None = None
        self.handed_over = False
        self.no_dialtone = False
        self._tone: ToneGenerator | None = None
        self._dtmf = DtmfDetector()
        self._progress = CallProgressDetector(
            tone_hz=self.app.tone_zone.ringback.freqs_hz[0])
        self._last_tx = np.zeros(0, dtype=np.int16)
        self._line_audio = False
        self._ringback_at: float | None = None
        self._answered = False
        self.tone("dial")  # at once: the flow's own first step follows within a loop turn
        ports = OutboundPorts(
            line=self,
            earpiece=self,
            media=self.media,
            store=self.app.store,
            prompts=self.app.prompts,
            panel=self,
            references=self,
            records=self.app.call_records,
        )
        self.call = OutboundCall(ports, controller.policy, self.events,
                                 observer=self.app.observe)
        self.task: asyncio.Task[OutboundResult] = asyncio.create_task(
            self.call.run(), name="outbound-call")

    # -- EarpiecePort: handset-clocked tones while no line audio reaches the earpiece -------

    def tone(self, kind: str) -> None:
        self._tone = None if kind == "silence" else ToneGenerator(
            getattr(self.app.tone_zone, kind))

    def on_handset_capture(self, frame: np.ndarray) -> None:
        """One frame from the mouthpiece: digits, then the line or the tone clock."""
        for digit in self._dtmf.feed(frame):
            self.events.put_nowait(DigitDialled(digit, "dtmf"))
        target = self.media.target
        if self._line_audio and target is not None:
            target.on_handset_capture(frame)
            return
        # Outside the line's clock the handset's own clock paces the earpiece (as shop_handset.py's
        # idle player): one tone frame per captured frame.
        if self._tone is not None:
            self.app.handset_audio.play(self._tone.next_frame(len(frame)))

    # -- PanelPort ------------------------------------------------------------------------

    def show(self, state: str) -> None:
        panel = self.app.panel
        if self.line_session is not None and state not in ("ended", "offhook-warning",
                                                           "offhook-cleared"):
            self.line_session.state = f"outbound {state}"
        if state in ("calling", "connected", "finalizing"):
            panel.show(PanelState.IN_CALL)
        elif state == "offhook-warning":
            # the LED shows a handset left off the hook.
            self.app.handset_left_off_hook = True
            self.app.update_faults()
        elif state in ("offhook-cleared", "ended"):
            self.app.handset_left_off_hook = False
            self.app.update_faults()
            if not self.app.in_call:
                panel.show(PanelState.IDLE)

    def set_recording(self, on: bool) -> None:
        self.app.panel.set_recording(on)

    # -- ReferencePort --------------------------------------------------------------------

    async def allocate(self) -> str:
        self.reference = await self.app.allocate_reference()
        return self.reference

    # -- DialLinePort ---------------------------------------------------------------------

    async def seize(self) -> str | None:
        session = self.controller.free_line()
        if session is None:
            return None
        self.line_session = session
        session.state = "outbound"
        self.controller.seized[session.line.name] = self
        return session.line.name

    async def dial(self, reference: str, number: str) -> str:
        session = self.line_session
        modem = session.modem if session is not None else None
        if session is None or modem is None:
            return "failed"
        app = self.app
        # The line's own transmit lead too (lines[].tx_lead_ms): an outbound call once had
        # the driver's 20 ms on a line configured for more.
        self.media.target = CallMedia.for_line(
            reference, app.config, session.line,
            send_to_line=self._send_to_line,
            play_to_earpiece=app.handset_audio.play,  # this session owns the handset
            take_from_mouthpiece=app.handset_audio.pull,
            events=self.events,  # type: ignore[arg-type]  # CallEvent ⊂ OutboundEvent
            tone_zone=app.tone_zone,
        )
        try:
            result = _DIAL_RESULT[await modem.dial(number)]
        except ValueError as exc:
            _LOGGER.warning("outbound %s: %s", reference, exc)
            return "failed"
        except ModemError as exc:
            _LOGGER.warning("outbound %s: dialling failed: %s", reference, exc)
            return "failed"
        if result == "no-dialtone":
            self.no_dialtone = True
        if result != "dialled":
            return result
        try:
            await modem.start_duplex(self._on_line_audio)
        except ModemError as exc:
            _LOGGER.warning("outbound %s: no duplex audio: %s", reference, exc)
            return "failed"
        self._line_audio = True
        self.media.target.prime()
        return "dialled"

    async def hang_up(self) -> None:
        self._line_audio = False
        session = self.line_session
        if session is None:
            return
        modem = session.modem
        if modem is not None:
            with contextlib.suppress(ModemError, OSError):
                await modem.stop_duplex()
            session.hung_up(modem, await modem.hang_up())
        self.release_line()

    def release_line(self) -> None:
        session, self.line_session = self.line_session, None
        if session is None:
            return
        self.controller.seized.pop(session.line.name, None)
        if self.no_dialtone:
            # `appliance status` says why the last outbound call failed.
            session.state = time.strftime(
                "idle — no dial tone on the line at %H:%M (outbound call)")
        else:
            session.state = "idle"
        self.app.publish_status()

    # -- line audio (the modem's receive callback: quick, never raises) -------------------

    def _send_to_line(self, frame: np.ndarray) -> None:
        self._last_tx = frame
        session = self.line_session
        if session is not None and session.modem is not None:
            session.modem.send_audio(frame)

    def _on_line_audio(self, frame: np.ndarray) -> None:
        target = self.media.target
        if target is not None:
            target.on_line_audio(frame)
        for kind in self._progress.feed(frame, reference=self._last_tx):
            self.progress(kind, "inband")
        if (not self._answered and self._ringback_at is not None
                and time.monotonic() - self._ringback_at > RINGBACK_GONE_S):
            self.progress("voice", "ringback-gone")

    def progress(self, kind: str, source: str) -> None:
        """Translate a progress report (in-band or modem) into the flow's event."""
        if kind == "ringback":
            self._ringback_at = time.monotonic()
            self.events.put_nowait(LineProgress("ringback", source))
        elif kind == "voice":
            if not self._answered:
                self._answered = True
                self.events.put_nowait(LineProgress("answered", source))
        elif kind in ("busy", "dialtone"):
            self._ringback_at = None
            self.events.put_nowait(LineProgress(kind, source))


class OutboundController:
    """Owns everything outbound on the daemon side. All methods run on the event loop.

    Attributes:
        completed: the result of every session (lift → hang-up), in order.
        seized: line name → the session using it.
    """

    def __init__(self, app: OutboundHost) -> None:
        self.app = app
        self.policy = OutboundPolicy.from_config(app.config)
        self.completed: asyncio.Queue[OutboundResult] = asyncio.Queue()
        self.seized: dict[str, _Session] = {}
        self.session: _Session | None = None
        self._handover = False
        self._rang_at: dict[str, float] = {}
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()

    # -- offered by Application -----------------------------------------------------------

    def on_idle_hook(self, event: HookEvent) -> bool:
        """A hook event while no inbound call owns the handset; True if consumed here."""
        session = self.session
        if session is not None:
            if event.kind == "on_hook":
                session.events.put_nowait(AgentOnHook())
            elif event.kind == "off_hook":
                session.events.put_nowait(AgentOffHook())
            elif event.kind == "digit" and event.digit is not None:
                session.events.put_nowait(DigitDialled(event.digit, "pulse"))
            return True
        if event.kind == "on_hook":
            self._handover = False
            return False
        if event.kind != "off_hook" or self._stopping:
            return False
        if self.app.announce_on_lift:
            return False  # the owner was rung for an announcement: shop_handset.py says it
        if not self.app.handset.request(OWNER):
            return False
        _LOGGER.info("handset lifted while idle: dial tone")
        self.session = _Session(self)
        self.session.task.add_done_callback(self._session_done)
        return True

    def on_handset_capture(self, frame: np.ndarray) -> bool:
        """A mouthpiece frame; True if an outbound session consumed it."""
        if self._handover:
            owner_events = self.app.handset_owner_events()
            if owner_events is not None:
                # The inbound call that won over the dial tone: the shop is already listening.
                self._handover = False
                if self.app.slic.off_hook:
                    owner_events.put_nowait(AgentOffHook())
            return False
        session = self.session
        if session is None:
            return False
        session.on_handset_capture(frame)
        return True

    def line_event(self, line: OutboundLine, event: LineEvent) -> bool:
        """A modem event of ``line``; True if it belongs to an outbound call (consumed)."""
        session = self.seized.get(line.line.name)
        if session is None:
            return False
        if isinstance(event, LinkDown):
            session.events.put_nowait(LineLost(event.reason))
            return False  # the line's dispatcher must still see it and reopen the modem
        if isinstance(event, RemoteHangup):
            session.events.put_nowait(CallerHungUp(event.reason))
        elif isinstance(event, Dtmf):
            session.events.put_nowait(KeyPressed(event.digit, "modem"))
        elif isinstance(event, CallProgress):
            session.progress(event.kind, "modem")
        return True

    def ring_may_proceed(self, line: OutboundLine) -> bool:
        """A RING on ``line``: the incoming call wins only if no digit was dialled yet."""
        self._rang_at[line.line.name] = time.monotonic()
        session = self.session
        if session is None or session.line_session is not None:
            return True  # idle, or our call is on another line: the inbound call holds
        if session.call.digits_dialled:
            _LOGGER.info("line %s: RING ignored, the shop is dialling", line.line.name)
            return False
        _LOGGER.info("line %s: RING while the shop hears dial tone: the incoming call wins",
                     line.line.name)
        self._handover = True
        session.handed_over = True
        session.task.cancel()
        return True

    def on_button(self, event: ButtonEvent) -> bool:
        """A front-panel press; during an outbound session it asks for recording."""
        session = self.session
        if session is None:
            return False
        session.events.put_nowait(RecordRequested("button"))
        return True

    async def stop(self) -> None:
        """End a session in progress (its row is finalized); no new sessions start."""
        self._stopping = True
        session = self.session
        if session is not None:
            session.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await session.task
            if session.line_session is not None:
                await session.hang_up()

    # -- helpers --------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.session is not None

    def free_line(self) -> OutboundLine | None:
        """A line whose modem is up, with no call and no RING in the last RING_GONE_S.

        A line without full duplex never carries an outbound call: the shop could not be
        heard (its phone is on that line through the bypass relay instead, docs/line.md).
        """
        now = time.monotonic()
        for line in self.app.lines:
            name = line.line.name
            if (line.modem is not None and line.active is None and name not in self.seized
                    and not line.no_duplex
                    and now - self._rang_at.get(name, -RING_GONE_S) >= RING_GONE_S):
                return line
        return None

    def _session_done(self, task: asyncio.Task[OutboundResult]) -> None:
        session, self.session = self.session, None
        self.app.handset.release(OWNER)
        if session is not None and session.line_session is not None:
            # Cancelled before the flow could hang up (a RING won, the daemon stops).
            hang_up = asyncio.create_task(session.hang_up(), name="outbound-hang-up")
            self._tasks.add(hang_up)
            hang_up.add_done_callback(self._tasks.discard)
        if task.cancelled():
            _LOGGER.info("outbound session ended (%s)",
                         "an incoming call won" if session and session.handed_over
                         else "cancelled")
            return
        exc = task.exception()
        if exc is not None:
            _LOGGER.error("outbound session failed: %r", exc)
            return
        result = task.result()
        _LOGGER.info("outbound session ended: %s %s (%s)", result.reference or "-",
                     result.outcome, result.number)
        self.completed.put_nowait(result)
        self.app.publish_status()

    def status(self) -> dict[str, Any] | None:
        """The session in progress for status displays (None when idle)."""
        session = self.session
        if session is None:
            return None
        return {"state": session.call.state.value, "number": session.call.number,
                "reference": session.reference,
                "line": session.line_session.line.name if session.line_session else None}
