"""The inbound call state machine (docs/design.md §3).

One :class:`InboundCall` per answered call. It owns no hardware: it talks to *ports* (the
Protocols below) that the daemon implements, and reacts to :mod:`appliance.call.events`
posted into its queue. Every transition goes through :meth:`InboundCall._transition`, which
checks it against :data:`TRANSITIONS`, logs it with the call reference and stores it as a
call event.

Invariants the flow guarantees (and the tests check):

* the call row is durable before the line goes off-hook (so before the reference is spoken);
* recording starts only after the notice has been played out completely — the first layer
  (or a returning caller's short form), the reference, and the second layer when the caller
  asked for it (details key) — and never when the caller refused (opt-out key, in any layer)
  or hung up during the notice;
* what the caller was told is stored with the call (``notice_form``, ``notice_layers``:
  each layer's version and whether it was played in full, docs/records.md);
* whatever ends the call (caller, shop, line loss, max length, an exception), the row is
  finalized with an outcome and the recording (if any) is closed, hashed and indexed;
* just before the row is finalized, the call's record file (the row as finalized, beside
  where its recording is or would be) is written, recorded or not, so a lost index loses no
  call (docs/records.md, "The call record file").
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import numpy as np

from appliance.call.events import (
    AgentOffHook,
    AgentOnHook,
    CallerHungUp,
    CallEvent,
    HandsetFree,
    KeyPressed,
    LineLost,
    PlaybackDone,
    RecordingFailed,
)
from appliance.errors import StoreError

if TYPE_CHECKING:
    from appliance.config import Config

_LOGGER = logging.getLogger(__name__)

#: How long the goodbye prompt may take before the line is dropped anyway.
GOODBYE_TIMEOUT_S: Final = 10.0
#: A voicemail ends after this much silence (the caller has finished or hung up unnoticed).
VOICEMAIL_SILENCE_S: Final = 8.0
#: The prompt played instead of the notice when a call is not recorded, and the
#: ``notice_version`` stored for such a call.
NOT_RECORDED_NOTICE: Final = "not_recorded"
#: How long the reference and goodbye after the shop hung up may take at most.
FAREWELL_TIMEOUT_S: Final = 20.0
SECONDS_PER_DAY: Final = 86400.0

#: Notice layers as the prompts name them (appliance/speech/prompts.py NOTICE_LAYERS).
LAYER_FIRST: Final = "notice"
LAYER_DETAILS: Final = "notice_details"
LAYER_SHORT: Final = "notice_short"
#: The reference as an entry of ``notice_layers`` (it has no version: digits, not a text).
LAYER_REFERENCE: Final = "reference"
#: ``notice_form``: the whole first layer, a returning caller's short form, or the "not
#: recorded" notice of a call that cannot be recorded (no layers, no details key).
FORM_FULL: Final = "full"
FORM_SHORT: Final = "short"
FORM_NOT_RECORDED: Final = NOT_RECORDED_NOTICE
#: ``played`` of a ``notice_layers`` entry.
PLAYED_FULL: Final = "full"
PLAYED_PARTIAL: Final = "partial"
PLAYED_NO: Final = "no"


class CallState(enum.Enum):
    RINGING = "ringing"
    ANSWERING = "answering"
    NOTICE = "notice"
    HOLDING = "holding"
    RINGING_AGENT = "ringing-agent"
    BRIDGED = "bridged"
    VOICEMAIL = "voicemail"
    FINALIZING = "finalizing"
    ENDED = "ended"


TRANSITIONS: Final[Mapping[CallState, frozenset[CallState]]] = {
    CallState.RINGING: frozenset({CallState.ANSWERING, CallState.FINALIZING}),
    CallState.ANSWERING: frozenset({CallState.NOTICE, CallState.FINALIZING}),
    CallState.NOTICE: frozenset(
        {CallState.HOLDING, CallState.RINGING_AGENT, CallState.BRIDGED, CallState.VOICEMAIL,
         CallState.FINALIZING}
    ),
    CallState.HOLDING: frozenset(
        {CallState.RINGING_AGENT, CallState.VOICEMAIL, CallState.FINALIZING}
    ),
    CallState.RINGING_AGENT: frozenset(
        {CallState.BRIDGED, CallState.VOICEMAIL, CallState.FINALIZING}
    ),
    CallState.BRIDGED: frozenset({CallState.FINALIZING}),
    CallState.VOICEMAIL: frozenset({CallState.FINALIZING}),
    CallState.FINALIZING: frozenset({CallState.ENDED}),
    CallState.ENDED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A transition not in :data:`TRANSITIONS` was attempted (a bug, never a caller's fault)."""


# --- ports ---------------------------------------------------------------------------------


class LinePort(Protocol):
    async def answer(self) -> None:
        """Take the line off-hook and start the call's audio (full duplex where possible)."""

    async def hang_up(self) -> None:
        """Stop audio and put the line on-hook; must not raise if the modem is gone."""

    @property
    def can_bridge(self) -> bool:
        """After :meth:`answer`: False when the line cannot carry the shop's voice to the
        caller (a modem without full duplex, docs/line.md). The call is then an answering
        machine: notice, reference, a message — the handset is never rung."""


class HandsetPort(Protocol):
    """The shop's handset as one call sees it (it may be shared by several lines)."""

    @property
    def off_hook(self) -> bool:
        """Off-hook *for this call* (False while another call has the handset)."""

    @property
    def available(self) -> bool:
        """True when this call may ring/use the handset (free, or already this call's)."""

    def start_ringing(self) -> None: ...

    async def stop_ringing(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    path: str
    sha256: str
    bytes: int
    duration_s: float


class CallAudioPort(Protocol):
    """What every call (inbound or outbound) needs of its line-clocked audio (``CallMedia``)."""

    def play_to_line(self, token: str, *clips: np.ndarray) -> None:
        """Replace what the far end hears; post ``PlaybackDone(token)`` when played out."""

    def play_to_handset(self, token: str, *clips: np.ndarray) -> None: ...

    def bridge(self) -> None: ...

    def unbridge(self) -> None: ...

    async def start_recording(self) -> None: ...

    @property
    def recording(self) -> bool: ...

    async def finish_recording(self) -> RecordingInfo | None: ...


class MediaPort(CallAudioPort, Protocol):
    """Audio routing for one inbound call, clocked by the line (see ``daemon/media.py``)."""

    def queue_to_line(self, token: str, *clips: np.ndarray) -> None:
        """Play ``clips`` right after what the line is playing now (no gap); post
        ``PlaybackDone(token)`` when they have been played out."""

    def monitor_line(self, on: bool) -> None:
        """While not bridged, let the earpiece hear what the caller hears, quietly."""

    def line_tone(self, kind: str) -> None:
        """``ringback`` or ``silence`` to the caller."""

    def handset_tone(self, kind: str) -> None:
        """``busy`` or ``silence`` in the shop's earpiece."""

    def whisper_to_handset(self, clip: np.ndarray) -> None: ...

    def watch_silence(self, seconds: float) -> None:
        """Post ``CallerHungUp("silence")`` after ``seconds`` of silence (0 = stop watching)."""

    async def discard_recording(self) -> None: ...


class StorePort(Protocol):
    async def create_call(self, reference: str, **fields: Any) -> int: ...

    async def update_call(self, reference: str, **fields: Any) -> None: ...

    async def add_event(
        self, reference: str, state: str, detail: str = "", t: float | None = None
    ) -> None: ...

    async def append_audit(
        self,
        action: str,
        *,
        actor: str,
        reference: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> str: ...

    def last_informed_call(self, number: str, since: float) -> Mapping[str, Any] | None:
        """The newest call from ``number`` since ``since`` whose caller heard the whole first
        layer of the notice, or None."""


class RecordPort(Protocol):
    async def save(self, row: Mapping[str, Any]) -> None:
        """Write the call's record file (the finalized row), durably when this returns.

        Raises:
            StoreError: it cannot be written (a full disk).
        """


class PromptPort(Protocol):
    @property
    def notice(self) -> np.ndarray: ...

    @property
    def notice_version(self) -> str: ...

    def notice_layer(self, layer: str) -> np.ndarray: ...

    def layer_version(self, layer: str) -> str: ...

    def clip(self, name: str) -> np.ndarray: ...

    def reference_audio(self, reference: str) -> np.ndarray: ...


class PanelPort(Protocol):
    def show(self, state: str) -> None: ...

    def set_recording(self, on: bool) -> None: ...


@dataclass(slots=True)
class CallPorts:
    line: LinePort
    handset: HandsetPort
    media: MediaPort
    store: StorePort
    prompts: PromptPort
    panel: PanelPort
    #: The record file writer (None: no record files, as in the flow's unit tests).
    records: RecordPort | None = None


# --- the call ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallPolicy:
    """The parts of the configuration the flow obeys.

    No field has a default: the configuration (``appliance/defaults.toml`` under the user's
    file) is the one source of every value, and :meth:`from_config` is the one place that
    reads it. Tests change single fields with :func:`dataclasses.replace`.
    """

    #: ``call.ring_during_notice``: the shop's phone rings while the caller hears the notice.
    ring_during_notice: bool
    #: ``call.optout_key``: the caller's key for "do not record me".
    optout_key: str
    #: ``call.repeat_key``: the caller's key for hearing the reference again.
    repeat_key: str
    #: ``call.details_key``: the caller's key for the controller's details.
    details_key: str
    #: ``call.reference_at_end``: read the reference again when the shop hangs up first.
    reference_at_end: bool
    #: ``notice.returning_caller_days``: a caller heard the full notice this recently gets
    #: the short one (0: everyone gets the full notice).
    returning_caller_days: int
    #: ``call.agent_timeout_s``: how long the shop may take to answer before voicemail.
    agent_timeout_s: float
    #: ``call.voicemail``: take a message when the shop does not answer.
    voicemail: bool
    #: ``call.voicemail_max_s``: the longest message.
    voicemail_max_s: float
    #: ``call.max_call_s``: the longest call; the box hangs up after it.
    max_call_s: float
    #: ``call.whisper_reference``: the shop hears the reference before the caller is put through.
    whisper_reference: bool
    #: ``call.hold_max_s``: the longest hold before the caller is offered voicemail.
    hold_max_s: float
    #: ``call.hold_reassure_s``: how often a caller on hold hears that the line is alive.
    hold_reassure_s: float
    #: More than one ``[[lines]]``: the shop hears which line the call came in on.
    whisper_line: bool
    #: ``call.silence_hangup_s``: a line silent this long is hung up.
    silence_hangup_s: float
    #: False: this call is not recorded (too little free space, ``recording.min_free_mb``);
    #: the caller hears the short "not recorded" notice instead, and no voicemail is taken.
    #: :meth:`from_config` sets True; the daemon replaces it per call.
    record: bool

    @classmethod
    def from_config(cls, config: Config) -> CallPolicy:
        """The policy of ``config``: every field from its key (see each field's comment)."""
        call = config.call
        return cls(
            ring_during_notice=call.ring_during_notice,
            optout_key=call.optout_key,
            repeat_key=call.repeat_key,
            details_key=call.details_key,
            reference_at_end=call.reference_at_end,
            returning_caller_days=config.notice.returning_caller_days,
            agent_timeout_s=call.agent_timeout_s,
            voicemail=call.voicemail,
            voicemail_max_s=call.voicemail_max_s,
            max_call_s=call.max_call_s,
            whisper_reference=call.whisper_reference,
            hold_max_s=call.hold_max_s,
            hold_reassure_s=call.hold_reassure_s,
            whisper_line=len(config.lines) > 1,
            silence_hangup_s=call.silence_hangup_s,
            record=True,
        )


@dataclass(frozen=True, slots=True)
class CallerInfo:
    """What the exchange told us before we answered, and the language the call speaks."""

    line: str
    #: The line's ``language``, else ``device.language``: no default here, the configuration
    #: is the one source.
    language: str
    number: str | None = None
    name: str | None = None
    withheld: bool = False
    cid_date: str | None = None
    cid_time: str | None = None
    ring_at: float = field(default_factory=time.time)
    clock_synced: bool | None = None


@dataclass(slots=True)
class CallResult:
    reference: str
    outcome: str
    recording_decision: str
    notice_completed: bool
    recording: RecordingInfo | None
    duration_s: float
    #: When the final row update could not be written (a full disk): the ``calls`` fields
    #: and the ``call-finalized`` audit details still to write; the daemon retries them.
    unsaved: dict[str, Any] | None = None
    unsaved_audit: dict[str, Any] | None = None
    #: The call's record (the whole finalized row) when its file could not be written.
    unsaved_record: dict[str, Any] | None = None


class _CallOver(Exception):
    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(outcome, reason)
        self.outcome = outcome
        self.reason = reason


class InboundCall:
    """One answered inbound call, from the allocation of its reference to its index row.

    All methods run on the event loop. ``events`` is fed by the daemon; ``observer`` (if
    given) is called with ``(reference, state, detail)`` on every stored event, for the
    demo's timeline and ``appliance status``.
    """

    def __init__(
        self,
        reference: str,
        caller: CallerInfo,
        ports: CallPorts,
        policy: CallPolicy,
        events: asyncio.Queue[CallEvent],
        *,
        clock: Callable[[], float] = time.time,
        observer: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.reference = reference
        self.caller = caller
        self.ports = ports
        self.policy = policy
        self.events = events
        self.state = CallState.RINGING
        self._clock = clock
        self._observer = observer
        self._declined = False
        self._notice_completed = False
        self._agent_lifted = False
        self._ringing = False
        self._answer_at: float | None = None
        self._deadline: float | None = None
        self._reference_audio: np.ndarray | None = None
        self._store_failing = False
        #: Row fields a mid-call update could not write (written with the final update).
        self._unsaved: dict[str, Any] = {}
        #: Every field given to the row (written or not): the call's record file.
        self._row: dict[str, Any] = {}
        self._recording_failed = False
        self._form = FORM_FULL
        self._form_reason = ""
        #: What the caller was told, in order: {"layer", "version"?, "played"} (docs/records.md).
        self._layers: list[dict[str, str]] = []
        #: Tokens queued on the line and not yet played out, in playing order, with the
        #: ``_layers`` entry each one completes (None: a prompt that is not a layer).
        self._queued: list[tuple[str, dict[str, str] | None]] = []
        self._details_asked = False
        self._repeats = 0

    # -- helpers --------------------------------------------------------------------------

    def _store_failed(self, exc: StoreError) -> None:
        """The index cannot be written (a full disk): said once per call, never fatal.

        The call goes on; row fields not written are kept and written with the final
        update, which the daemon retries until it succeeds (``CallResult.unsaved``).
        """
        if not self._store_failing:
            self._store_failing = True
            _LOGGER.error("call %s: the index cannot be written (%s); the call goes on, its "
                          "row is finalized as soon as it can be", self.reference, exc)

    async def _save_event(self, state: str, detail: str) -> None:
        try:
            await self.ports.store.add_event(self.reference, state, detail, self._clock())
        except StoreError as exc:
            self._store_failed(exc)

    async def _update(self, **fields: Any) -> None:
        """Set columns of this call's row mid-call; what cannot be written is kept for later."""
        self._row.update(fields)
        try:
            await self.ports.store.update_call(self.reference, **fields)
        except StoreError as exc:
            self._store_failed(exc)
            self._unsaved.update(fields)

    async def _event(self, state: str, detail: str = "") -> None:
        _LOGGER.info("call %s: %s %s", self.reference, state, detail)
        if self._observer is not None:
            self._observer(self.reference, state, detail)
        await self._save_event(state, detail)

    async def _transition(self, new: CallState, reason: str) -> None:
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.state.value} → {new.value} ({reason})")
        _LOGGER.info("call %s: %s → %s (%s)", self.reference, self.state.value, new.value, reason)
        self.state = new
        if self._observer is not None:
            self._observer(self.reference, new.value, reason)
        await self._save_event(new.value, reason)
        self.ports.panel.show(new.value)

    async def _next(self, timeout_s: float | None = None) -> CallEvent | None:
        """The next event, or None when ``timeout_s`` passes; enforces ``max_call_s``."""
        loop = asyncio.get_running_loop()
        if self._deadline is not None:
            left = self._deadline - loop.time()
            if left <= 0:
                raise _CallOver(self._outcome_now(), "maximum call length reached")
            timeout_s = left if timeout_s is None else min(timeout_s, left)
        try:
            async with asyncio.timeout(timeout_s):
                return await self.events.get()
        except TimeoutError:
            if self._deadline is not None and loop.time() >= self._deadline:
                raise _CallOver(self._outcome_now(), "maximum call length reached") from None
            return None

    def _outcome_now(self) -> str:
        return {
            CallState.BRIDGED: "bridged",
            CallState.VOICEMAIL: "voicemail",
            CallState.RINGING_AGENT: "missed",
            CallState.HOLDING: "missed",
        }.get(self.state, "abandoned")

    async def _ring_agent(self) -> None:
        handset = self.ports.handset
        if not self.ports.line.can_bridge:
            return  # the shop could lift but never be heard: do not call it to the phone
        if not self._ringing and handset.available and not handset.off_hook:
            self.ports.handset.start_ringing()
            self._ringing = True
            await self._event("handset-ringing")

    async def _stop_ringing(self) -> None:
        if self._ringing:
            self._ringing = False
            await self.ports.handset.stop_ringing()

    async def _common(self, event: CallEvent) -> bool:
        """Handle events that mean the same in every phase; True if consumed."""
        if isinstance(event, LineLost):
            # The modem vanished (USB pulled): the call is over, its audio so far is kept.
            await self._event("line-lost", event.reason)
            raise _CallOver("interrupted", f"line lost: {event.reason}")
        if isinstance(event, CallerHungUp):
            raise _CallOver(self._outcome_now(), f"caller hung up ({event.reason})")
        if isinstance(event, RecordingFailed):
            # The call goes on; the audio written so far is kept (media finalizes it).
            self._recording_failed = True
            self.ports.panel.set_recording(False)
            await self._event("recording-failed", event.reason)
            return True
        return False

    # -- the flow -------------------------------------------------------------------------

    async def run(self) -> CallResult:
        """Run the call to its end; never raises for anything a caller or line can do."""
        outcome, reason = "error", "internal error"
        try:
            await self._answer()
            await self._notice()
            await self._after_notice()
        except _CallOver as over:
            outcome, reason = over.outcome, over.reason
        except asyncio.CancelledError:
            # The daemon is stopping (SIGTERM). Before the shop was asked for, nobody hung
            # up: the call was interrupted, not abandoned.
            outcome = ("interrupted" if self.state in (CallState.RINGING, CallState.ANSWERING,
                                                       CallState.NOTICE)
                       else self._outcome_now())
            reason = "daemon stopping"
            with contextlib.suppress(asyncio.CancelledError):
                return await asyncio.shield(self._finalize(outcome, reason))
            raise
        except Exception:
            _LOGGER.exception("call %s: unexpected error", self.reference)
            outcome, reason = "error", "internal error (see log)"
        return await self._finalize(outcome, reason)

    def _choose_form(self) -> None:
        """Full first layer, or the short form for a caller informed recently (GDPR Art.
        13(4): the person already has the information). Withheld or unknown numbers always
        get the full first layer: nobody can say they heard it before."""
        c, days = self.caller, self.policy.returning_caller_days
        if not self.policy.record:
            self._form = FORM_NOT_RECORDED
            self._form_reason = "not recorded: too little free space (recording.min_free_mb)"
            return
        if days <= 0:
            self._form_reason = "returning-caller form off"
            return
        if c.withheld or not c.number:
            self._form_reason = "number withheld or unknown"
            return
        try:
            before = self.ports.store.last_informed_call(
                c.number, self._clock() - days * SECONDS_PER_DAY)
        except Exception:
            # The index answers from disk: a failed read costs the caller ten seconds, never
            # the call.
            _LOGGER.exception("call %s: returning-caller lookup failed", self.reference)
            self._form_reason = "lookup failed"
            return
        if before is None:
            self._form_reason = f"not informed within {days} days"
            return
        self._form = FORM_SHORT
        self._form_reason = (f"heard the whole first layer in call {before['reference']} "
                             f"within {days} days")

    def _first_version(self) -> str:
        """The version of the first thing the caller hears (stored as ``notice_version``)."""
        if self._form == FORM_NOT_RECORDED:
            return NOT_RECORDED_NOTICE
        return self.ports.prompts.layer_version(
            LAYER_SHORT if self._form == FORM_SHORT else LAYER_FIRST)

    def _play(self, token: str, *clips: np.ndarray, layer: str | None = None,
              replace: bool = False) -> None:
        """Play ``clips`` to the line (``replace``: instead of what plays now, else after it,
        with no gap), remembering the token and the notice layer it plays."""
        entry: dict[str, str] | None = None
        if layer is not None:
            entry = {"layer": layer, "played": PLAYED_NO}
            if layer == NOT_RECORDED_NOTICE:
                entry["version"] = NOT_RECORDED_NOTICE
            elif layer != LAYER_REFERENCE:
                entry["version"] = self.ports.prompts.layer_version(layer)
            self._layers.append(entry)
        if replace:
            self._cut_queue()
            self.ports.media.play_to_line(token, *clips)
        else:
            self.ports.media.queue_to_line(token, *clips)
        self._queued.append((token, entry))

    def _cut_queue(self) -> None:
        """What is queued is being replaced: the one playing now was heard in part."""
        if self._queued and self._queued[0][1] is not None:
            self._queued[0][1]["played"] = PLAYED_PARTIAL
        self._queued.clear()

    def _played(self, token: str) -> bool:
        """``token`` has been played out; True when nothing is queued any more. Tokens of
        replaced prompts (a late ``PlaybackDone``) are ignored."""
        for index, (queued, _entry) in enumerate(self._queued):
            if queued == token:
                for _, done in self._queued[: index + 1]:
                    if done is not None:
                        done["played"] = PLAYED_FULL
                del self._queued[: index + 1]
                break
        return not self._queued

    def _notice_proof(self) -> dict[str, Any]:
        first = next((e for e in self._layers if e["layer"] in (LAYER_FIRST, LAYER_SHORT)),
                     None)
        return {
            "notice_form": self._form,
            "notice_form_reason": self._form_reason,
            "notice_first_heard": int(first is not None and first["layer"] == LAYER_FIRST
                                      and first["played"] == PLAYED_FULL),
            "notice_layers": json.dumps(self._layers, ensure_ascii=False),
        }

    async def _answer(self) -> None:
        c = self.caller
        self._choose_form()
        # The row is durable before we go off-hook: nothing about an answered call is lost.
        self._row = {
            "reference": self.reference,
            "line": c.line,
            "direction": "in",
            "caller_number": c.number,
            "caller_name": c.name,
            "caller_withheld": int(c.withheld),
            "cid_date": c.cid_date,
            "cid_time": c.cid_time,
            "clock_synced": None if c.clock_synced is None else int(c.clock_synced),
            "ring_at": c.ring_at,
            "notice_version": self._first_version(),
            "notice_form": self._form,
            "notice_form_reason": self._form_reason,
            "notice_completed": 0,
            "recording_decision": "pending",
            "outcome": "in_progress",
            "language": c.language,
            "created_at": self._clock(),
        }
        await self.ports.store.create_call(
            self.reference, **{k: v for k, v in self._row.items() if k != "reference"})
        await self._transition(CallState.ANSWERING, f"caller {c.number or 'unknown'}")
        if self._form == FORM_SHORT:
            await self._event("notice-form", f"short: {self._form_reason}")
        # Queue the notice before going off-hook, so the very first frames sent after CONNECT
        # are the notice itself (docs/design.md §9: off-hook → first notice audio ≤ 20 ms): the
        # first layer (or the short form), then the reference once, with no gap between.
        prompts = self.ports.prompts
        self._reference_audio = prompts.reference_audio(self.reference)
        if self.policy.record:
            first = LAYER_SHORT if self._form == FORM_SHORT else LAYER_FIRST
            self._play("notice", prompts.notice_layer(first), layer=first, replace=True)
        else:
            # The caller is told nothing false: a call that will not be recorded hears so.
            self._play("notice", prompts.clip(NOT_RECORDED_NOTICE), layer=NOT_RECORDED_NOTICE,
                       replace=True)
        self._play("reference", self._reference_audio, layer=LAYER_REFERENCE)
        await self.ports.line.answer()
        self._answer_at = self._clock()
        self._deadline = asyncio.get_running_loop().time() + self.policy.max_call_s
        await self._update(answer_at=self._answer_at)

    async def _notice(self) -> None:
        ports, policy = self.ports, self.policy
        await self._transition(CallState.NOTICE, "line off-hook")
        await self._update(notice_start_at=self._clock())
        if policy.ring_during_notice:
            await self._ring_agent()
        while True:
            event = await self._next()
            if event is None or await self._common(event):
                continue
            if isinstance(event, PlaybackDone):
                if self._played(event.token):
                    break
            elif isinstance(event, KeyPressed):
                await self._event("dtmf", f"{event.digit} ({event.source})")
                await self._notice_key(event.digit)
            elif isinstance(event, AgentOffHook):
                if not ports.line.can_bridge:
                    await self._event("agent-off-hook", "ignored: the line cannot carry the "
                                                        "shop's voice")
                    continue
                await self._agent_lifted_early()
            elif isinstance(event, AgentOnHook):
                self._agent_lifted = False
                ports.media.monitor_line(False)
                await self._event("agent-on-hook", "put down during the notice")
                if policy.ring_during_notice:
                    await self._ring_agent()
            elif isinstance(event, HandsetFree):
                await self._event("handset-free", "the other call has ended")
                if policy.ring_during_notice:
                    await self._ring_agent()
        self._notice_completed = True
        await self._update(notice_end_at=self._clock(), notice_completed=1,
                           **self._notice_proof())
        await self._event("notice-finished", "declined" if self._declined else "")

    async def _notice_key(self, digit: str) -> None:
        """A key during the notice: opt-out (any layer), details (second layer), repeat."""
        policy, prompts = self.policy, self.ports.prompts
        reference_heard = any(e["layer"] == LAYER_REFERENCE and e["played"] == PLAYED_FULL
                              for e in self._layers)
        if digit == policy.optout_key and not self._declined:
            self._declined = True
            playing = self._queued[0][1] if self._queued else None
            where = playing["layer"] if playing is not None else "the notice"
            await self._event("recording-declined", f"opt-out key during {where}")
            # Stop the notice; still give the reference (a unique ID for complaints,
            # docs/legal.md) unless it was heard already, after confirming that nothing
            # will be recorded.
            self._play("optout", prompts.clip("optout_confirm"), replace=True)
            if not reference_heard:
                self._play("reference", self._repeat_audio(), layer=LAYER_REFERENCE)
        elif (digit == policy.details_key and not self._details_asked and not self._declined
              and policy.record):
            self._details_asked = True
            # After the first layer and the reference (already queued): nothing is cut, and
            # recording waits until the second layer has been played out.
            self._play("details", prompts.notice_layer(LAYER_DETAILS), layer=LAYER_DETAILS)
            await self._event("details-requested", "the second layer follows the reference")
        elif digit == policy.repeat_key:
            # While the reference is still to come (the first layer plays) it is not queued
            # twice; while it plays or after it, it is read again after what is queued.
            upcoming = any(entry is not None and entry["layer"] == LAYER_REFERENCE
                           for _, entry in self._queued[1:])
            if not upcoming:
                self._repeats += 1
                self._play(f"repeat-{self._repeats}", self._repeat_audio())
                await self._event("reference-repeated", "repeat key")

    async def _agent_lifted_early(self) -> None:
        self._agent_lifted = True
        self._ringing = False
        await self.ports.handset.stop_ringing()
        await self._update(agent_answer_at=self._clock())
        await self._event("agent-off-hook", "caller is still hearing the notice")
        # The shop never holds a silent phone: a whisper, then the notice the caller hears,
        # quietly, until the caller is put through (docs/speech.md "The shop during the
        # notice").
        self.ports.media.play_to_handset("whisper", self.ports.prompts.clip("whisper_notice"))
        self.ports.media.monitor_line(True)

    async def _start_recording(self) -> None:
        try:
            await self.ports.media.start_recording()
        except StoreError as exc:
            # The file cannot be created (a disk filled since the check before answering):
            # the call goes on without recording.
            _LOGGER.error("call %s: recording cannot start: %s", self.reference, exc)
            self._recording_failed = True
            await self._event("recording-failed", str(exc))
            return
        self.ports.panel.set_recording(True)
        await self._update(recording_decision="recorded", record_start_at=self._clock())
        await self._event("recording-started")

    async def _after_notice(self) -> None:
        if self._declined:
            await self._update(recording_decision="declined")
        elif not self.policy.record:
            await self._event("not-recorded", "too little free space (recording.min_free_mb)")
        else:
            await self._start_recording()
        if not self.ports.line.can_bridge:
            await self._voicemail("the line cannot carry the shop's voice (no full duplex)")
            return
        if self._agent_lifted and self.ports.handset.off_hook:
            await self._bridged("shop already on the line")
            return
        if not self.ports.handset.available:
            await self._hold()
        await self._transition(CallState.RINGING_AGENT, "waiting for the shop")
        media = self.ports.media
        # The shop has not lifted yet: say so once, then ringback (when it had lifted early,
        # the caller was put through above with no extra prompt).
        media.play_to_line("connecting", self.ports.prompts.clip("connecting"))
        await self._ring_agent()
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.policy.agent_timeout_s
        while True:
            event = await self._next(max(0.0, give_up_at - loop.time()))
            if event is None:
                await self._voicemail()
                return
            if await self._common(event):
                continue
            if isinstance(event, PlaybackDone) and event.token in ("connecting", "repeat"):
                media.line_tone("ringback")
            if isinstance(event, AgentOffHook):
                await self._update(agent_answer_at=self._clock())
                await self._bridged("shop lifted the handset")
                return
            if isinstance(event, AgentOnHook):
                # The shop put the phone down (e.g. after the previous caller): ring now.
                self._ringing = False
                await self._ring_agent()
            if isinstance(event, KeyPressed):
                await self._event("dtmf", f"{event.digit} ({event.source})")
                if event.digit == self.policy.repeat_key:
                    media.play_to_line("repeat", self._repeat_audio())
                    await self._event("reference-repeated", "repeat key, waiting for the shop")
                elif event.digit == self.policy.optout_key and not self._declined:
                    self._declined = True
                    await self.ports.media.discard_recording()
                    self.ports.panel.set_recording(False)
                    await self._update(recording_decision="declined")
                    await self._event("recording-declined", "opt-out key before the shop answered")

    async def _hold(self) -> None:
        """The handset is busy with another line's call: hold, reassure, or take a message."""
        await self._transition(CallState.HOLDING, "the shop is on another call")
        media, prompts = self.ports.media, self.ports.prompts
        media.play_to_line("hold", prompts.clip("hold"))
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.policy.hold_max_s
        reassure_at: float | None = None
        while True:
            until = give_up_at if reassure_at is None else min(give_up_at, reassure_at)
            event = await self._next(max(0.0, until - loop.time()))
            if event is None:
                if loop.time() >= give_up_at:
                    await self._voicemail()
                    return
                reassure_at = None
                media.play_to_line("hold", prompts.clip("hold_reassure"))
                continue
            if await self._common(event):
                continue
            if isinstance(event, HandsetFree):
                await self._event("handset-free", "putting the caller through")
                return
            if isinstance(event, PlaybackDone) and event.token == "hold":
                reassure_at = loop.time() + self.policy.hold_reassure_s
            elif isinstance(event, KeyPressed):
                await self._event("dtmf", f"{event.digit} ({event.source})")
                if event.digit == self.policy.repeat_key:
                    # The reassurance timer restarts when the reference has been read.
                    reassure_at = None
                    media.play_to_line("hold", self._repeat_audio())
                    await self._event("reference-repeated", "repeat key, on hold")

    def _repeat_audio(self) -> np.ndarray:
        assert self._reference_audio is not None  # assembled before going off-hook
        return self._reference_audio

    async def _bridged(self, reason: str) -> None:
        await self._stop_ringing()
        await self._transition(CallState.BRIDGED, reason)
        media = self.ports.media
        whisper: list[np.ndarray] = []
        if self._agent_lifted:
            # The shop has been listening to the notice: a soft cue says "the caller is here".
            whisper.append(self.ports.prompts.clip("cue"))
        if self.policy.whisper_line:
            whisper.append(self.ports.prompts.clip("whisper_line"))
        if self.policy.whisper_reference:
            whisper += [self.ports.prompts.clip("whisper_reference"),
                        self.ports.prompts.reference_audio(self.reference)]
        if whisper:
            # Into the earpiece only, over the caller's voice; the caller does not hear it.
            media.whisper_to_handset(np.concatenate(whisper))
        media.bridge()
        if self.policy.silence_hangup_s:
            media.watch_silence(self.policy.silence_hangup_s)
        while True:
            event = await self._next()
            if event is None or await self._common(event):
                continue
            if isinstance(event, AgentOnHook):
                await self._farewell()
                raise _CallOver("bridged", "shop hung up")
            if isinstance(event, KeyPressed):
                # Keys during the conversation are for the humans, not for the box.
                await self._event("dtmf", f"{event.digit} ({event.source}, ignored while bridged)")

    async def _farewell(self) -> None:
        """The shop hung up first and the caller is still there: the reference again and a
        goodbye (``reference_at_end``), then the box hangs up. Ends early if the caller
        hangs up meanwhile (``_CallOver`` from :meth:`_common`)."""
        if not self.policy.reference_at_end:
            return
        media = self.ports.media
        media.unbridge()
        media.play_to_line("farewell", self._repeat_audio(), self.ports.prompts.clip("goodbye"))
        await self._event("farewell", "shop hung up first: reference and goodbye to the caller")
        await self._last_words("farewell", FAREWELL_TIMEOUT_S)

    async def _say_goodbye(self) -> None:
        self.ports.media.play_to_line("goodbye", self.ports.prompts.clip("goodbye"))
        await self._last_words("goodbye", GOODBYE_TIMEOUT_S)

    async def _last_words(self, token: str, timeout_s: float) -> None:
        """Return when the goodbye playing as ``token`` has been played out, or after
        ``timeout_s``. The box still talks, so the repeat key works here too: the reference,
        then the goodbye again (the caller may be writing the reference down)."""
        media = self.ports.media
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout_s
        repeats = 0
        while True:
            event = await self._next(max(0.0, until - loop.time()))
            if event is None or (isinstance(event, PlaybackDone) and event.token == token):
                return
            if await self._common(event) or not isinstance(event, KeyPressed):
                continue
            await self._event("dtmf", f"{event.digit} ({event.source})")
            if event.digit == self.policy.repeat_key:
                # A new token: the end of what is cut off must not end the goodbye.
                repeats += 1
                token = f"goodbye-repeat-{repeats}"
                media.play_to_line(token, self._repeat_audio(),
                                   self.ports.prompts.clip("goodbye"))
                until = loop.time() + FAREWELL_TIMEOUT_S
                await self._event("reference-repeated", "repeat key, before the goodbye")

    async def _voicemail(self, reason: str = "nobody answered") -> None:
        await self._stop_ringing()
        if (not self.policy.voicemail or self._declined or self._recording_failed
                or not self.ports.media.recording):
            # A caller who refused recording is not recorded as voicemail either, and a
            # message nobody records is not asked for.
            await self._event("no-answer", reason)
            await self._say_goodbye()
            raise _CallOver("missed", reason)
        await self._transition(CallState.VOICEMAIL, reason)
        prompt = (self.ports.prompts.clip("voicemail"), self.ports.prompts.clip("beep"))
        self.ports.media.play_to_line("voicemail", *prompt)
        while True:
            event = await self._next()
            if event is None or await self._common(event):
                continue
            if isinstance(event, PlaybackDone) and event.token == "voicemail":
                break
            if isinstance(event, KeyPressed):
                await self._event("dtmf", f"{event.digit} ({event.source})")
                if event.digit == self.policy.repeat_key:
                    # Before the beep the box still talks: the reference, then the prompt
                    # again (after the beep the caller's keys are part of the message).
                    self.ports.media.play_to_line("voicemail", self._repeat_audio(), *prompt)
                    await self._event("reference-repeated", "repeat key, before the message")
        await self._event("voicemail-recording", f"up to {self.policy.voicemail_max_s:.0f} s")
        if self.policy.silence_hangup_s:
            self.ports.media.watch_silence(min(self.policy.silence_hangup_s, VOICEMAIL_SILENCE_S))
        loop = asyncio.get_running_loop()
        until = loop.time() + self.policy.voicemail_max_s
        while True:
            event = await self._next(max(0.0, until - loop.time()))
            if event is None:
                break
            await self._common(event)
        await self._say_goodbye()
        raise _CallOver("voicemail", "message length limit reached")

    async def _finalize(self, outcome: str, reason: str) -> CallResult:
        """Put the line on-hook, close the recording, write the row and the audit entry.

        The hang-up comes first and nothing before it can fail the call's end (event writes
        are best effort): a full disk must never leave the line off-hook. A row or audit
        write that fails is returned in ``CallResult.unsaved*`` for the daemon to retry.
        """
        ports = self.ports
        if self.state is not CallState.FINALIZING:
            with contextlib.suppress(IllegalTransition):
                await self._transition(CallState.FINALIZING, reason)
        recording: RecordingInfo | None = None
        unsaved: dict[str, Any] | None = None
        unsaved_audit: dict[str, Any] | None = None
        try:
            with contextlib.suppress(Exception):
                await self._stop_ringing()
            ports.media.unbridge()
            ports.panel.set_recording(False)
            try:
                await ports.line.hang_up()
            except Exception:
                _LOGGER.exception("call %s: hang-up failed", self.reference)
            if ports.media.recording:
                try:
                    recording = await ports.media.finish_recording()
                except Exception:
                    _LOGGER.exception("call %s: the recording cannot be finalized",
                                      self.reference)
        finally:
            end_at = self._clock()
            decision = "declined" if self._declined else ("recorded" if recording else "none")
            if (not self._declined and not recording and self._notice_completed
                    and self.policy.record):
                decision = "failed"
            duration = end_at - self._answer_at if self._answer_at is not None else 0.0
            if not self._notice_completed:
                self._cut_queue()  # the caller left (or the line was lost) mid-notice
            fields: dict[str, Any] = {
                **self._unsaved,
                "end_at": end_at,
                "outcome": outcome,
                "recording_decision": decision,
                "notice_completed": int(self._notice_completed),
                "duration_s": round(duration, 3),
                **self._notice_proof(),
            }
            if recording is not None:
                fields.update(
                    recording_path=recording.path,
                    recording_sha256=recording.sha256,
                    recording_bytes=recording.bytes,
                )
            audit = {"outcome": outcome, "recording_decision": decision,
                     "sha256": recording.sha256 if recording else None}
            unsaved_record = await self._save_record(fields)
            try:
                await ports.store.update_call(self.reference, **fields)
            except StoreError as exc:
                self._store_failed(exc)
                unsaved, unsaved_audit = fields, audit
            else:
                try:
                    await ports.store.append_audit("call-finalized", actor="appliance",
                                                   reference=self.reference, details=audit)
                except StoreError as exc:
                    self._store_failed(exc)
                    unsaved_audit = audit
            with contextlib.suppress(IllegalTransition):
                await self._transition(CallState.ENDED, f"{outcome}: {reason}")
            ports.panel.show("idle")
        return CallResult(
            reference=self.reference,
            outcome=outcome,
            recording_decision=decision,
            notice_completed=self._notice_completed,
            recording=recording,
            duration_s=round(duration, 3),
            unsaved=unsaved,
            unsaved_audit=unsaved_audit,
            unsaved_record=unsaved_record,
        )

    async def _save_record(self, fields: Mapping[str, Any]) -> dict[str, Any] | None:
        """Write the call's record file (the row as it is being finalized), before the row:
        a reader of the index (the archive's uploader) never sees the row final without it.
        Returns the record when it could not be written (the daemon retries it)."""
        self._row.update(fields)
        record = {**self._row, "reference": self.reference}
        if self.ports.records is None:
            return None
        try:
            await self.ports.records.save(record)
        except StoreError as exc:
            self._store_failed(exc)
            return record
        return None
