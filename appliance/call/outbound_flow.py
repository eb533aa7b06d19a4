"""The outbound call state machine: the shop lifts the handset and calls out.

One :class:`OutboundCall` per lift of the handset while the box is idle. Like
:class:`~appliance.call.flow.InboundCall` it owns no hardware: it talks to ports the daemon
implements (``daemon/outbound_control.py``) and reacts to events posted into its queue
(:mod:`appliance.call.events`: ``DigitDialled``, ``LineProgress``, ``RecordRequested`` plus the
shared ``AgentOnHook``, ``CallerHungUp``, ``LineLost``, ``KeyPressed``, ``PlaybackDone``).

States (every transition checked against :data:`TRANSITIONS`, logged and stored once a row
exists)::

    IDLE_OFFHOOK ──digit──▶ DIALLING ──number complete, line dialled──▶ CALLING
      dial tone              '#' or inter-digit timeout ends the number     the shop hears the
      60 s: howler, silence  on-hook: back to idle, no row                  network's progress
                                                                            ──answered──▶ CONNECTED
    any of DIALLING/CALLING/CONNECTED ──▶ FINALIZING ──▶ ENDED

Invariants (tested): no row and no line seized unless a number was dialled; a row exists
before the modem dials; recording of an outbound call starts only when the policy allows it,
after the shop asked (button or ``**``) once the callee answered and after the notice and
reference were played to both sides; whatever ends the call, the row is finalized with an
outcome and the line is put on-hook.

Index outcomes: the store's ``outcome`` column has a fixed vocabulary (CHECK constraint in
schema v1, store/db.py), so the outbound result (:data:`OUTBOUND_OUTCOMES`) is mapped onto it
(:data:`INDEX_OUTCOME`), and the exact result is stored as a call event named after it
(``busy``, ``no-answer`` …) and in the ``call-finalized`` audit details (``result``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import numpy as np

from appliance.call.events import (
    AgentOffHook,
    AgentOnHook,
    CallerHungUp,
    DigitDialled,
    KeyPressed,
    LineLost,
    LineProgress,
    OutboundEvent,
    PlaybackDone,
    RecordRequested,
)
from appliance.call.flow import (
    CallAudioPort,
    PanelPort,
    PromptPort,
    RecordingInfo,
    RecordPort,
    StorePort,
)
from appliance.errors import StoreError

if TYPE_CHECKING:
    from appliance.config import Config

__all__ = [
    "INDEX_OUTCOME",
    "MAX_DIALLED_DIGITS",
    "OUTBOUND_OUTCOMES",
    "TRANSITIONS",
    "DialLinePort",
    "EarpiecePort",
    "IllegalOutboundTransition",
    "OutboundCall",
    "OutboundMediaPort",
    "OutboundPolicy",
    "OutboundPorts",
    "OutboundResult",
    "OutboundState",
    "ReferencePort",
]

_LOGGER = logging.getLogger(__name__)

#: The results an outbound call can have.
OUTBOUND_OUTCOMES: Final = ("answered", "busy", "no-answer", "no-dialtone", "abandoned",
                            "no-line", "error")
#: Result → the index's ``outcome`` vocabulary (store/db.py OUTCOMES, fixed by a CHECK).
INDEX_OUTCOME: Final[Mapping[str, str]] = {
    "answered": "bridged",
    "busy": "missed",
    "no-answer": "missed",
    "no-dialtone": "error",
    "abandoned": "abandoned",
    "no-line": "error",
    "error": "error",
}
#: What the shop hears after a failed call until it hangs up (a real exchange does the same).
TONE_AFTER: Final[Mapping[str, str]] = {
    "busy": "busy",
    "no-answer": "busy",
    "answered": "busy",
    "no-dialtone": "congestion",
    "no-line": "congestion",
    "error": "congestion",
}
#: The most digits a dialled number may have: E.164's 15 plus room for an international or
#: carrier prefix. Not a setting: nobody dials more, and it bounds what the flow collects.
MAX_DIALLED_DIGITS: Final = 24
#: ``LineProgress`` kinds that mean the far end will not answer.
_FAILED_PROGRESS: Final = frozenset({"busy", "dialtone"})


class OutboundState(enum.Enum):
    IDLE_OFFHOOK = "idle-offhook"
    DIALLING = "dialling"
    CALLING = "calling"
    CONNECTED = "connected"
    FINALIZING = "finalizing"
    ENDED = "ended"


TRANSITIONS: Final[Mapping[OutboundState, frozenset[OutboundState]]] = {
    OutboundState.IDLE_OFFHOOK: frozenset({OutboundState.DIALLING, OutboundState.ENDED}),
    OutboundState.DIALLING: frozenset(
        {OutboundState.CALLING, OutboundState.FINALIZING, OutboundState.ENDED}
    ),
    OutboundState.CALLING: frozenset({OutboundState.CONNECTED, OutboundState.FINALIZING}),
    OutboundState.CONNECTED: frozenset({OutboundState.FINALIZING}),
    OutboundState.FINALIZING: frozenset({OutboundState.ENDED}),
    OutboundState.ENDED: frozenset(),
}


class IllegalOutboundTransition(RuntimeError):
    """A transition not in :data:`TRANSITIONS` was attempted (a bug)."""


# --- ports ---------------------------------------------------------------------------------


class DialLinePort(Protocol):
    """The landline side of one outbound call."""

    async def seize(self) -> str | None:
        """Reserve a free line for this call; its name, or None when no line is free."""

    async def dial(self, reference: str, number: str) -> str:
        """Dial on the seized line and start duplex audio on success.

        Returns ``dialled`` (progress follows as events), ``busy``, ``no-dialtone``,
        ``no-answer`` or ``failed``; never raises for what a line or modem can do.
        """

    async def hang_up(self) -> None:
        """Stop audio, put the line on-hook and free it; must not raise."""


class EarpiecePort(Protocol):
    """Tones the box itself plays into the earpiece while no line audio reaches it."""

    def tone(self, kind: str) -> None:
        """``dial``, ``howler``, ``busy``, ``congestion`` or ``silence``."""


class ReferencePort(Protocol):
    async def allocate(self) -> str:
        """A fresh call reference (the same space as inbound calls)."""


#: An outbound call needs only the audio operations every call has.
OutboundMediaPort = CallAudioPort


@dataclass(slots=True)
class OutboundPorts:
    line: DialLinePort
    earpiece: EarpiecePort
    media: OutboundMediaPort
    store: StorePort
    prompts: PromptPort
    panel: PanelPort
    references: ReferencePort
    #: The record file writer (call/flow.py RecordPort; None: no record files).
    records: RecordPort | None = None


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """The ``[outbound]`` configuration the flow obeys.

    No field has a default: the configuration is the one source of every value, and
    :meth:`from_config` is the one place that reads it.
    """

    #: ``outbound.interdigit_timeout_s``: the number is complete at "#" or this long after
    #: the last digit.
    interdigit_timeout_s: float
    #: ``outbound.offhook_warning_s``: dial tone this long without a digit → the howler.
    offhook_warning_s: float
    #: ``outbound.howler_s``: how long the howler sounds before silence and the fault LED.
    howler_s: float
    #: ``outbound.no_answer_s``: an outgoing call nobody answers is given up after this long.
    no_answer_s: float
    #: ``outbound.failure_listen_s``: the longest the shop hears the network's tone after busy.
    failure_listen_s: float
    #: ``outbound.record``: the shop may ask for an answered outbound call to be recorded.
    record: bool
    #: ``outbound.record_code``: the keys that ask for it (besides the front-panel button).
    record_code: str
    #: ``call.optout_key``: the callee refuses recording (the notice names it, as inbound).
    optout_key: str
    #: ``call.details_key``: the callee asks for the second layer of the notice.
    details_key: str
    #: The most digits a dialled number may have (:data:`MAX_DIALLED_DIGITS`).
    max_digits: int
    #: ``call.max_call_s``: the longest call, either direction.
    max_call_s: float
    #: ``device.language``: the language of the prompts and the call's row.
    language: str

    @classmethod
    def from_config(cls, config: Config) -> OutboundPolicy:
        """The policy of ``config``: every field from its key (see each field's comment)."""
        outbound = config.outbound
        return cls(
            interdigit_timeout_s=outbound.interdigit_timeout_s,
            offhook_warning_s=outbound.offhook_warning_s,
            howler_s=outbound.howler_s,
            no_answer_s=outbound.no_answer_s,
            failure_listen_s=outbound.failure_listen_s,
            record=outbound.record,
            record_code=outbound.record_code,
            optout_key=config.call.optout_key,
            details_key=config.call.details_key,
            max_digits=MAX_DIALLED_DIGITS,
            max_call_s=config.call.max_call_s,
            language=config.device.language,
        )


@dataclass(slots=True)
class OutboundResult:
    """How one lift of the handset ended. ``reference`` is None when no number was dialled."""

    reference: str | None
    number: str
    outcome: str
    recording_decision: str
    recording: RecordingInfo | None
    duration_s: float
    line: str | None = None


class _CallOver(Exception):
    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(outcome, reason)
        self.outcome = outcome
        self.reason = reason


class OutboundCall:
    """One lift of the handset: dial tone, digits, the call, its index row.

    All methods run on the event loop. ``events`` is fed by the daemon; ``observer`` is called
    with ``(reference or "", state, detail)`` for every step (demo timeline, status).
    """

    def __init__(
        self,
        ports: OutboundPorts,
        policy: OutboundPolicy,
        events: asyncio.Queue[OutboundEvent],
        *,
        clock: Callable[[], float] = time.time,
        observer: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.ports = ports
        self.policy = policy
        self.events = events
        self.state = OutboundState.IDLE_OFFHOOK
        self.reference: str | None = None
        self.number = ""
        self.line: str | None = None
        self.on_hook = False
        self._clock = clock
        self._observer = observer
        self._answer_at: float | None = None
        #: Every field given to the row: the call's record file.
        self._row: dict[str, Any] = {}
        self._ringback = False
        self._result = "error"
        self._recording_requested = False
        self._notice_completed = False
        self._declined = False
        self._keys = ""

    @property
    def digits_dialled(self) -> bool:
        """True once the shop has dialled at least one digit (an incoming RING then waits)."""
        return self.state is not OutboundState.IDLE_OFFHOOK

    # -- helpers --------------------------------------------------------------------------

    async def _event(self, state: str, detail: str = "") -> None:
        _LOGGER.info("outbound %s: %s %s", self.reference or "-", state, detail)
        if self._observer is not None:
            self._observer(self.reference or "", state, detail)
        if self.reference is not None:
            await self.ports.store.add_event(self.reference, state, detail, self._clock())

    async def _transition(self, new: OutboundState, reason: str) -> None:
        if new not in TRANSITIONS[self.state]:
            raise IllegalOutboundTransition(f"{self.state.value} → {new.value} ({reason})")
        _LOGGER.info("outbound %s: %s → %s (%s)", self.reference or "-", self.state.value,
                     new.value, reason)
        self.state = new
        if self._observer is not None:
            self._observer(self.reference or "", new.value, reason)
        if self.reference is not None:
            await self.ports.store.add_event(self.reference, new.value, reason, self._clock())
        self.ports.panel.show(new.value)

    async def _next(self, timeout_s: float | None = None) -> OutboundEvent | None:
        try:
            async with asyncio.timeout(timeout_s):
                event = await self.events.get()
        except TimeoutError:
            return None
        if isinstance(event, AgentOnHook):
            self.on_hook = True
        elif isinstance(event, AgentOffHook):
            self.on_hook = False
        return event

    # -- the flow -------------------------------------------------------------------------

    async def run(self) -> OutboundResult:
        """Run from the lift to the hang-up; never raises for anything a person or line does."""
        try:
            number = await self._collect_number()
            if number is None:
                if self.state is not OutboundState.ENDED:
                    await self._transition(OutboundState.ENDED, "handset put down")
                return OutboundResult(None, self.number, "abandoned", "none", None, 0.0)
            outcome, reason = await self._place_call(number)
        except asyncio.CancelledError:
            if self.reference is None:
                raise
            with contextlib.suppress(asyncio.CancelledError):
                return await asyncio.shield(self._finalize("error", "daemon stopping"))
            raise
        except _CallOver as over:
            outcome, reason = over.outcome, over.reason
        except Exception:
            _LOGGER.exception("outbound %s: unexpected error", self.reference or "-")
            outcome, reason = "error", "internal error (see log)"
        result = await self._finalize(outcome, reason)
        await self._after_call(result.outcome)
        return result

    async def _collect_number(self) -> str | None:
        """Dial tone, then digits until ``#`` or the inter-digit timeout; None on hang-up."""
        ports, policy = self.ports, self.policy
        ports.earpiece.tone("dial")
        await self._event("dial-tone")
        while True:
            event = await self._next(policy.offhook_warning_s)
            if event is None:
                await self._left_off_hook()
                return None
            if isinstance(event, AgentOnHook):
                ports.earpiece.tone("silence")
                return None
            if isinstance(event, DigitDialled) and event.digit != "#":
                ports.earpiece.tone("silence")  # the first digit stops the dial tone
                self.number = event.digit
                await self._transition(OutboundState.DIALLING, f"first digit ({event.source})")
                break
        while len(self.number) < policy.max_digits:
            event = await self._next(policy.interdigit_timeout_s)
            if event is None:
                await self._event("number-complete", "inter-digit timeout")
                return self.number
            if isinstance(event, AgentOnHook):
                await self._event("hung-up-while-dialling", self.number)
                await self._transition(OutboundState.ENDED, "handset put down while dialling")
                return None
            if isinstance(event, DigitDialled):
                if event.digit == "#":
                    await self._event("number-complete", "#")
                    return self.number
                self.number += event.digit
        await self._event("number-complete", f"{policy.max_digits} digits")
        return self.number

    async def _left_off_hook(self) -> None:
        """Dial tone for too long: howler, then silence and the LED, until put down."""
        ports = self.ports
        await self._event("left-off-hook", f"{self.policy.offhook_warning_s:.0f} s of dial tone")
        ports.earpiece.tone("howler")
        ports.panel.show("offhook-warning")
        event: OutboundEvent | None = None
        loop = asyncio.get_running_loop()
        until = loop.time() + self.policy.howler_s
        while not self.on_hook:
            event = await self._next(max(0.0, until - loop.time()))
            if event is None:
                break
        if not self.on_hook:
            ports.earpiece.tone("silence")
            await self._event("howler-ended", "silent until the handset is put down")
            while not self.on_hook:
                await self._next()
        ports.earpiece.tone("silence")
        ports.panel.show("offhook-cleared")

    async def _place_call(self, number: str) -> tuple[str, str]:
        ports, policy = self.ports, self.policy
        self.line = await ports.line.seize()
        if self.line is None:
            await self._event("no-line", "every line is busy or down")
            raise _CallOver("no-line", "no free line")
        self.reference = await ports.references.allocate()
        # The row is durable before the modem dials (as for inbound calls before off-hook).
        self._row = {"line": self.line, "direction": "out", "caller_number": number,
                     "ring_at": self._clock(), "notice_completed": 0,
                     "recording_decision": "pending", "outcome": "in_progress",
                     "language": policy.language, "created_at": self._clock()}
        await ports.store.create_call(self.reference, **self._row)
        await self._event("dialling", f"{number} on line {self.line}")
        result = await ports.line.dial(self.reference, number)
        if result != "dialled":
            await self._event(result if result in OUTBOUND_OUTCOMES else "error",
                              f"modem: {result}")
            raise _CallOver(result if result in OUTBOUND_OUTCOMES else "error",
                            f"modem reported {result}")
        # Bridged at once: the shop hears the network's own ringback, busy tone or callee.
        ports.media.bridge()
        await self._transition(OutboundState.CALLING, "digits sent")
        await self._calling()
        return await self._connected()

    async def _calling(self) -> None:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.policy.no_answer_s
        while True:
            event = await self._next(max(0.0, give_up_at - loop.time()))
            if event is None:
                await self._event("no-answer", f"{self.policy.no_answer_s:.0f} s")
                raise _CallOver("no-answer", "nobody answered")
            if isinstance(event, AgentOnHook):
                raise _CallOver("abandoned", "shop hung up before the answer")
            if isinstance(event, LineLost):
                raise _CallOver("error", f"line lost: {event.reason}")
            if isinstance(event, LineProgress):
                if event.kind == "ringback" and not self._ringback:
                    self._ringback = True
                    await self._event("ringback", event.source)
                elif event.kind == "answered":
                    self._answer_at = self._clock()
                    await self._update(answer_at=self._answer_at)
                    await self._transition(OutboundState.CONNECTED, f"answered ({event.source})")
                    return
                elif event.kind in _FAILED_PROGRESS:
                    await self._far_end_failed(event.kind)
            elif isinstance(event, CallerHungUp):
                await self._far_end_failed(event.reason)
            elif isinstance(event, DigitDialled | RecordRequested):
                await self._event("ignored", f"{event!r} before the answer")

    async def _far_end_failed(self, reason: str) -> None:
        """Busy (or the network gave up after ringing): the shop listens, then we let go."""
        outcome = "no-answer" if self._ringback else "busy"
        await self._event(outcome, reason)
        loop = asyncio.get_running_loop()
        until = loop.time() + self.policy.failure_listen_s
        while not self.on_hook:
            event = await self._next(max(0.0, until - loop.time()))
            if event is None:
                break
        raise _CallOver(outcome, f"far end: {reason}")

    async def _connected(self) -> tuple[str, str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.max_call_s
        while True:
            event = await self._next(max(0.0, deadline - loop.time()))
            if event is None:
                return "answered", "maximum call length reached"
            if isinstance(event, AgentOnHook):
                return "answered", "shop hung up"
            if isinstance(event, CallerHungUp):
                return "answered", f"callee hung up ({event.reason})"
            if isinstance(event, LineLost):
                return "answered", f"line lost: {event.reason}"
            if isinstance(event, LineProgress) and event.kind in _FAILED_PROGRESS:
                return "answered", f"callee hung up ({event.kind}, {event.source})"
            if isinstance(event, RecordRequested):
                await self._record(event.source)
            elif isinstance(event, DigitDialled):
                self._keys = (self._keys + event.digit)[-len(self.policy.record_code):]
                if self._keys == self.policy.record_code:
                    self._keys = ""
                    await self._record(self.policy.record_code)

    async def _record(self, source: str) -> None:
        """Tell both sides first (the notice and the reference, then the second layer when the
        callee pressed the details key), then record — unless the callee pressed the opt-out
        key: the notice names both keys, and here they do what it says (docs/outbound.md)."""
        ports, policy = self.ports, self.policy
        if not policy.record:
            await self._event("record-refused", f"{source}: outbound recording is off")
            return
        if self._declined:
            await self._event("record-refused", f"{source}: the callee refused recording")
            return
        if self._recording_requested:
            return
        self._recording_requested = True
        reference = self.reference or ""
        prompts = ports.prompts
        await self._event("record-requested", source)
        await self._update(notice_start_at=self._clock(), notice_version=prompts.notice_version)
        notice = {"layer": "notice", "version": prompts.layer_version("notice"), "played": "no"}
        spoken = {"layer": "reference", "played": "no"}
        layers = [notice, spoken]
        ports.media.unbridge()
        playing = self._play_both("notice", prompts.notice, prompts.reference_audio(reference))
        details: dict[str, str] | None = None
        while True:
            event = await self._next()
            if isinstance(event, PlaybackDone) and event.token == playing:
                if playing == "notice":
                    notice["played"] = spoken["played"] = "full"
                elif playing == "details" and details is not None:
                    details["played"] = "full"
                if playing == "notice" and details is not None:
                    playing = self._play_both("details", prompts.notice_layer("notice_details"))
                    continue
                break
            if isinstance(event, AgentOnHook):
                await self._save_layers(layers)
                raise _CallOver("answered", "shop hung up during the notice")
            if isinstance(event, CallerHungUp | LineLost) or (
                    isinstance(event, LineProgress) and event.kind in _FAILED_PROGRESS):
                await self._save_layers(layers)
                raise _CallOver("answered", "callee hung up during the notice")
            if not isinstance(event, KeyPressed):
                continue
            await self._event("dtmf", f"{event.digit} ({event.source}) during the notice")
            if event.digit == policy.optout_key and not self._declined:
                self._declined = True
                await self._event("recording-declined", f"opt-out key during the {playing}")
                cut = notice if playing == "notice" else details
                if cut is not None:
                    cut["played"] = "partial"  # (the reference too, when it was playing)
                # Confirmed to both; the callee still gets the reference it has not heard.
                clips = [prompts.clip("optout_confirm")]
                if spoken["played"] != "full":
                    clips.append(prompts.reference_audio(reference))
                    spoken = {"layer": "reference", "played": "no"}
                    layers.append(spoken)
                playing = self._play_both("optout", *clips)
            elif (event.digit == policy.details_key and details is None
                  and not self._declined):
                details = {"layer": "notice_details",
                           "version": prompts.layer_version("notice_details"), "played": "no"}
                layers.append(details)
                await self._event("details-requested", "the second layer follows the reference")
        if playing == "optout":
            spoken["played"] = "full"
        await self._save_layers(layers)
        if self._declined:
            await self._update(recording_decision="declined")
            ports.media.bridge()
            return
        self._notice_completed = True
        await self._update(notice_end_at=self._clock(), notice_completed=1)
        await ports.media.start_recording()
        ports.panel.set_recording(True)
        ports.media.bridge()
        await self._update(recording_decision="recorded", record_start_at=self._clock())
        await self._event("recording-started", "after the notice to both sides")

    def _play_both(self, token: str, *clips: np.ndarray) -> str:
        """Play ``clips`` to the callee and, as the same words, to the shop; ``token``'s
        ``PlaybackDone`` comes from the line."""
        self.ports.media.play_to_line(token, *clips)
        self.ports.media.play_to_handset(f"{token}-shop", *clips)
        return token

    async def _save_layers(self, layers: list[dict[str, str]]) -> None:
        """What the callee was told, as an inbound call stores it (docs/records.md)."""
        await self._update(notice_form="full",
                           notice_layers=json.dumps(layers, ensure_ascii=False))

    async def _finalize(self, outcome: str, reason: str) -> OutboundResult:
        ports = self.ports
        self._result = outcome
        if self.reference is None:
            # Nothing was dialled on a line (no free line): no row, nothing to close.
            with contextlib.suppress(IllegalOutboundTransition):
                await self._transition(OutboundState.ENDED, f"{outcome}: {reason}")
            return OutboundResult(None, self.number, outcome, "none", None, 0.0, self.line)
        with contextlib.suppress(IllegalOutboundTransition):
            await self._transition(OutboundState.FINALIZING, reason)
        recording: RecordingInfo | None = None
        try:
            ports.media.unbridge()
            ports.panel.set_recording(False)
            try:
                await ports.line.hang_up()
            except Exception:
                _LOGGER.exception("outbound %s: hang-up failed", self.reference)
            if ports.media.recording:
                recording = await ports.media.finish_recording()
        finally:
            end_at = self._clock()
            decision = "recorded" if recording else "none"
            if self._recording_requested and recording is None:
                decision = "failed" if self._notice_completed else "none"
            if self._declined:
                decision = "declined"
            duration = end_at - self._answer_at if self._answer_at is not None else 0.0
            fields: dict[str, object] = {
                "end_at": end_at,
                "outcome": INDEX_OUTCOME.get(outcome, "error"),
                "recording_decision": decision,
                "notice_completed": int(self._notice_completed),
                "duration_s": round(duration, 3),
            }
            if recording is not None:
                fields.update(recording_path=recording.path, recording_sha256=recording.sha256,
                              recording_bytes=recording.bytes)
            await self._save_record(fields)
            await ports.store.update_call(self.reference, **fields)
            await ports.store.add_event(self.reference, "outcome", outcome, end_at)
            await ports.store.append_audit(
                "call-finalized",
                actor="appliance",
                reference=self.reference,
                details={"direction": "out", "outcome": INDEX_OUTCOME.get(outcome, "error"),
                         "result": outcome, "recording_decision": decision,
                         "sha256": recording.sha256 if recording else None},
            )
            with contextlib.suppress(IllegalOutboundTransition):
                await self._transition(OutboundState.ENDED, f"{outcome}: {reason}")
        return OutboundResult(self.reference, self.number, outcome, decision, recording,
                              round(duration, 3), self.line)

    async def _update(self, **fields: Any) -> None:
        """Set columns of this call's row (and remember them for its record file)."""
        self._row.update(fields)
        await self.ports.store.update_call(self.reference or "", **fields)

    async def _save_record(self, fields: Mapping[str, Any]) -> None:
        """Write the call's record file just before its row is finalized (as call/flow.py
        does); a failure is logged once — the row is still finalized."""
        self._row.update(fields)
        if self.ports.records is None or self.reference is None:
            return
        try:
            await self.ports.records.save({**self._row, "reference": self.reference})
        except StoreError as exc:
            _LOGGER.error("outbound %s: %s", self.reference, exc)

    async def _after_call(self, outcome: str) -> None:
        """Until the shop puts the handset down it hears busy or congestion, as from an exchange."""
        if self.on_hook or outcome == "abandoned":
            return
        self.ports.earpiece.tone(TONE_AFTER.get(outcome, "busy"))
        loop = asyncio.get_running_loop()
        until = loop.time() + self.policy.offhook_warning_s
        while not self.on_hook:
            if await self._next(max(0.0, until - loop.time())) is None:
                await self._left_off_hook()
                return
        self.ports.earpiece.tone("silence")
