"""Line supervision and RING dispatch: one :class:`LineSession` per ``[[lines]]`` entry.

Contract: a session's supervisor task opens its modem (and the line's sound card, when it has
one), reopens it with back-off (:data:`REOPEN_BACKOFF_S`) whenever the link fails — USB modems
disappear — and shows why meanwhile as the line's ``fault``/``fault_code``. While the modem is
up the session's dispatcher reads its events: RINGs are counted (with the caller ID) until
``call.answer_after_rings``, then one :class:`~appliance.call.flow.InboundCall` runs on the
line; hang-up and DTMF events go to the call in progress, events of an outbound call go to
the outbound controller first. An idle modem is asked ``AT`` every
``lines[].liveness_interval_s``. One call at a time per line; the session reaches the rest
of the daemon only through :class:`LineHost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from appliance.audio.backend import SoundDeviceAudio
from appliance.call.events import CallerHungUp, CallEvent, LineLost
from appliance.call.flow import CallerInfo, CallPolicy, CallPorts, CallResult, InboundCall
from appliance.daemon.halfduplex import HalfDuplexAudio
from appliance.daemon.media import CallMedia
from appliance.daemon.outbound_control import RING_GONE_S
from appliance.daemon.shared_handset import CallHandset
from appliance.errors import (
    ApplianceError,
    AudioError,
    LineOffHook,
    ModemCommandError,
    ModemError,
    ModemStrayConnect,
    StoreError,
)
from appliance.handset.slic import RingCadence
from appliance.line.at import LinkState
from appliance.line.modem import CallerIdReceived, Dtmf, LinkDown, Modem, RemoteHangup, Ring

if TYPE_CHECKING:
    import numpy as np

    from appliance.audio.tones import ToneZone
    from appliance.config import Config, LineConfig
    from appliance.daemon.outbound_control import OutboundController
    from appliance.daemon.panel_board import PanelBoard
    from appliance.daemon.prompts import Prompts
    from appliance.daemon.shared_handset import SharedHandset
    from appliance.daemon.storage import Storage
    from appliance.line.codec import CallerId

_LOGGER = logging.getLogger(__name__)

#: Back-off between attempts to reopen a failed modem (USB modems come back).
REOPEN_BACKOFF_S: Final = (1.0, 2.0, 5.0, 10.0, 30.0)
#: The line fault shown while the modem holds the line and will not hang up (code 9).
LINE_OFF_HOOK_FAULT: Final = "the modem holds the line off-hook and refuses to hang up"
#: The line fault shown when the idle liveness check went unanswered (code 1, as unplugged).
MODEM_SILENT_FAULT: Final = "the modem stopped answering (no reply to AT while idle)"
#: The liveness check found the link in the data state with no call (an unsolicited CONNECT):
#: the modem spoke, but it takes no commands there.
MODEM_STRAY_CONNECT_FAULT: Final = ("the modem went into its data state by itself (an "
                                    "unsolicited CONNECT while idle)")


class LineHost(Protocol):
    """What a line needs of the rest of the daemon (the daemon's ``Application``)."""

    @property
    def config(self) -> Config: ...
    @property
    def policy(self) -> CallPolicy: ...
    @property
    def tone_zone(self) -> ToneZone: ...
    @property
    def outbound(self) -> OutboundController: ...
    @property
    def panel_board(self) -> PanelBoard: ...
    @property
    def handset(self) -> SharedHandset: ...
    @property
    def storage(self) -> Storage: ...
    def prompts_for(self, line: LineConfig) -> Prompts: ...
    def earpiece(self, reference: str, frame: np.ndarray) -> None: ...
    def mouthpiece(self, reference: str) -> None:
        """The call's line tick: it takes the mouthpiece's frame now (if it has the handset)."""
    def observe(self, reference: str, state: str, detail: str) -> None: ...
    def clock_synced(self) -> bool | None: ...
    def line_ready(self, session: LineSession) -> None:
        """The session's modem is up (and idle)."""
    def update_faults(self) -> None:
        """A line's fault changed."""
    def call_finished(self, result: CallResult) -> None:
        """An inbound call on a line ended with ``result`` (its row maybe not yet saved)."""


class _LinePort:
    """One call's line: call control by AT commands, audio from the modem or a sound card.

    With ``audio`` (``lines[].audio = "alsa:…"``, docs/line.md) the modem only holds the
    line in voice command state — its ``<DLE>`` hang-up and DTMF events still arrive
    (:meth:`Modem.answer`) — and the sound card is the call's audio and its clock: each
    captured frame drives ``media.on_line_audio`` exactly as a ``+VTR`` frame would, and
    ``media`` sends to its ``play`` (wired in ``LineSession._start_call``). It is opened at
    answer and closed at hang-up.

    A modem without full duplex (known at init, or ``+VTR`` refused now) gets
    :class:`HalfDuplexAudio` instead: ``+VTX`` for prompts, ``+VRX`` otherwise, and
    :attr:`can_bridge` is False, which makes the call an answering machine.
    """

    def __init__(self, modem: Modem, media: CallMedia,
                 audio: SoundDeviceAudio | None = None,
                 on_no_duplex: Callable[[], None] | None = None,
                 on_hung_up: Callable[[Modem, bool], None] | None = None) -> None:
        self._modem = modem
        self._media = media
        self._audio = audio
        self._on_no_duplex = on_no_duplex
        self._on_hung_up = on_hung_up
        self._half: HalfDuplexAudio | None = None

    @property
    def can_bridge(self) -> bool:
        return self._half is None

    async def answer(self) -> None:
        await self._modem.answer()
        if self._audio is not None:
            # Prime before the stream starts: its first block then already carries the notice.
            self._media.prime()
            await self._audio.start(self._media.on_line_audio)
            return
        if self._modem.full_duplex is not False:
            try:
                await self._modem.start_duplex(self._media.on_line_audio)
            except ModemCommandError:
                # A firmware whose +VTR=? lied: this call goes on in half duplex.
                if self._on_no_duplex is not None:
                    self._on_no_duplex()
            else:
                self._media.prime()
                return
        self._media.use_host_clocked_transmit()
        self._half = HalfDuplexAudio(self._modem, self._media, self._media.reference)
        self._half.start()

    async def hang_up(self) -> None:
        if self._audio is not None:
            with contextlib.suppress(AudioError, OSError):
                await self._audio.stop()
        else:
            if self._half is not None:
                await self._half.stop()
            with contextlib.suppress(ModemError, OSError):
                # A prompt still in the modem (the goodbye) is played out, not cut.
                await self._modem.stop_voice(flush=False)
        confirmed = await self._modem.hang_up()
        if self._on_hung_up is not None:
            self._on_hung_up(self._modem, confirmed)


@dataclass(slots=True)
class ActiveCall:
    """The call in progress on a line."""

    call: InboundCall
    media: CallMedia
    task: asyncio.Task[CallResult]
    #: The modem's counters when the call began (the call's own share is logged at its end).
    modem_stats: dict[str, int]


class LineSession:
    """One line: supervises its modem and runs its calls (one at a time)."""

    def __init__(self, app: LineHost, line: LineConfig) -> None:
        self.app = app
        self.line = line
        self.modem: Modem | None = None
        self.active: ActiveCall | None = None
        self.state = "starting"
        self.fault: str | None = None
        self.fault_code: str | None = None
        #: The modem has no full duplex (AT+VTR=? or AT+VTR refused; see _no_duplex): the
        #: line is an answering machine. Found again at every reopen.
        self.no_duplex = False
        self._caller: CallerId | None = None
        self._rings = 0
        self._last_ring_at = 0.0
        #: When the first RING of the current call came (wall clock).
        self._first_ring_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        #: Why the dispatcher was ended from inside (a hang-up that failed, a modem that
        #: stopped answering): the fault to show and its panel code, or no fault for a
        #: plain reopen (a hang-up that reset the modem). None: the link went down.
        self._down: tuple[str | None, str] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run_supervisor(), name=f"line-{self.line.name}")

    async def stop(self) -> None:
        if self.active is not None:
            self.active.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.active.task
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.modem is not None:
            with contextlib.suppress(Exception):
                await self.modem.close()

    async def _run_supervisor(self) -> None:
        attempt = 0
        while True:
            modem = Modem(self.line.device, country_code=self.line.country_code,
                          duplex=self.line.duplex, audio_formats=self.line.audio_formats)
            try:
                await modem.open()
                if self.line.audio:
                    # the line's sound card is part of the line being ready;
                    # without it the line bypasses the box and is retried like a modem.
                    await SoundDeviceAudio(self.line.audio.removeprefix("alsa:"),
                                           role=f"line {self.line.name}").check()
            except (ApplianceError, OSError) as exc:
                delay = REOPEN_BACKOFF_S[min(attempt, len(REOPEN_BACKOFF_S) - 1)]
                attempt += 1
                self.state = "fault"
                if isinstance(exc, LineOffHook):
                    self._set_fault(f"{LINE_OFF_HOOK_FAULT} ({exc})", code="line-off-hook")
                else:
                    self._set_fault(str(exc) if isinstance(exc, AudioError)
                                    else f"modem on {self.line.device} not ready: {exc}",
                                    code="audio-missing" if isinstance(exc, AudioError)
                                    else "modem-missing")
                _LOGGER.warning("line %s: cannot open modem %s (%s); retry in %.0f s",
                                self.line.name, self.line.device, exc, delay)
                with contextlib.suppress(Exception):
                    await modem.close()
                await asyncio.sleep(delay)
                continue
            attempt = 0
            self.modem = modem
            self.no_duplex = False
            _LOGGER.info("line %s: full duplex %s (%s)", self.line.name,
                         {True: "yes", False: "no", None: "unknown"}[modem.full_duplex],
                         modem.duplex_evidence)
            if modem.full_duplex is False and not self.line.audio:
                self._no_duplex()  # the relay never energises for such a line
            else:
                self._set_fault(None)
            self.state = "idle"
            _LOGGER.info("line %s: modem ready on %s (%s, %s)", self.line.name,
                         self.line.device, modem.chipset, modem.voice_format)
            self.app.line_ready(self)
            try:
                await self._dispatch(modem)
            except Exception:
                _LOGGER.exception("line %s: dispatcher failed; reopening", self.line.name)
            finally:
                self.modem = None
                with contextlib.suppress(Exception):
                    await modem.close()
            fault, code = self._down or ("modem link lost", "modem-missing")
            self._down = None
            self.state = "fault" if fault else "reopening"
            if fault:
                self._set_fault(fault, code=code)
            await asyncio.sleep(REOPEN_BACKOFF_S[0])

    def _reopen(self, modem: Modem, reason: str, fault: str | None,
                code: str = "modem-missing") -> None:
        """End the dispatcher of ``modem`` from inside: the supervisor closes and reopens it
        (whose open confirms the line on-hook), showing ``fault`` meanwhile (None: none)."""
        if self.modem is not modem or self._down is not None:
            return
        self._down = (fault, code)
        modem.events.put_nowait(LinkDown(reason))

    def hung_up(self, modem: Modem, confirmed: bool) -> None:
        """A call on ``modem`` was hung up (inbound or outbound); ``confirmed`` as
        :meth:`Modem.hang_up` returned it. An unconfirmed hang-up faults the line at once
        (the relay drops: the phone is on the line, not the stuck modem) and reopens the
        modem, which tries again and stays faulted with back-off while it cannot."""
        if not confirmed and modem.link_state is not LinkState.FAILED:
            _LOGGER.error("line %s: %s; the phone is put on the line", self.line.name,
                          LINE_OFF_HOOK_FAULT)
            self._reopen(modem, "hang-up not confirmed", LINE_OFF_HOOK_FAULT, "line-off-hook")
        elif confirmed and modem.reopen_needed:
            _LOGGER.info("line %s: the modem was reset to hang up; reopening", self.line.name)
            self._reopen(modem, "the modem was reset", None)

    def _set_fault(self, fault: str | None, *, code: str = "modem-missing") -> None:
        """Record the line's fault (None clears it); ``code`` is its panel blink code."""
        self.fault = fault
        self.fault_code = code if fault else None
        self.app.update_faults()

    async def _dispatch(self, modem: Modem) -> None:
        loop = asyncio.get_running_loop()
        answer_at: float | None = None  # set while waiting for caller ID before answering
        interval_s = self.line.liveness_interval_s
        check_at = loop.time() + interval_s  # the next idle liveness check
        while True:
            try:
                async with asyncio.timeout_at(answer_at if answer_at is not None else check_at):
                    event = await modem.events.get()
            except TimeoutError:
                if answer_at is None:
                    check_at = loop.time() + interval_s
                    if self._idle(modem) and not await self._alive(modem):
                        return
                    continue
                answer_at = None
                _LOGGER.info("line %s: no caller ID within %.1f s; answering", self.line.name,
                             self.app.config.call.cid_wait_s)
                await self._start_call(modem)
                continue
            if self.app.outbound.line_event(self, event):
                continue
            active = self.active
            if isinstance(event, LinkDown):
                _LOGGER.error("line %s: link down (%s)", self.line.name, event.reason)
                if active is not None:
                    active.call.events.put_nowait(LineLost(event.reason))
                return
            if active is not None:
                if isinstance(event, Dtmf):
                    active.media.key_reported(event.digit, "modem")
                elif isinstance(event, RemoteHangup):
                    active.call.events.put_nowait(CallerHungUp(event.reason))
                continue
            if isinstance(event, CallerIdReceived):
                self._caller = event.caller
                _LOGGER.info("line %s: caller ID %s", self.line.name, event.caller.number)
                if answer_at is not None:
                    answer_at = None
                    await self._start_call(modem)
            elif isinstance(event, Ring):
                if not self.app.outbound.ring_may_proceed(self):
                    continue
                now = time.monotonic()
                if now - self._last_ring_at > RING_GONE_S:
                    self._rings = 0
                    self._first_ring_at = time.time()
                self._last_ring_at = now
                self._rings += 1
                if event.caller is not None:
                    self._caller = event.caller
                _LOGGER.info("line %s: RING %d (caller %s)", self.line.name, self._rings,
                             self._caller.number if self._caller is not None else None)
                self.app.panel_board.report(f"line:{self.line.name}", "ringing")
                if self._rings < self._rings_to_answer() or answer_at:
                    continue
                cid_wait_s = self.app.config.call.cid_wait_s
                if self._caller is None and cid_wait_s > 0:
                    answer_at = loop.time() + cid_wait_s
                else:
                    await self._start_call(modem)

    def _idle(self, modem: Modem) -> bool:
        """Nothing uses the modem: no call, no outbound seizure, on-hook in command state."""
        return (self.active is None and self.line.name not in self.app.outbound.seized
                and not modem.off_hook and modem.voice_op is None)

    async def _alive(self, modem: Modem) -> bool:
        """The idle liveness check (issue: a modem silent while idle looked "ready"): a bare
        ``AT``. No reply → the line faults as for a missing modem and the supervisor reopens
        it with back-off; False then (the dispatcher ends). The fault says which it was: no
        reply, or a modem that went into its data state unasked."""
        try:
            await modem.check_alive()
        except ModemError as exc:
            fault = (MODEM_STRAY_CONNECT_FAULT if isinstance(exc, ModemStrayConnect)
                     else MODEM_SILENT_FAULT)
            _LOGGER.error("line %s: %s (%s); reopening", self.line.name, fault, exc)
            self._down = (fault, "modem-missing")
            return False
        return True

    def _rings_to_answer(self) -> int:
        call = self.app.config.call
        if self.no_duplex:
            # Answering machine: the phone (on the line through the bypass relay) rings first.
            return max(call.answer_after_rings, call.half_duplex_answer_after_rings)
        return call.answer_after_rings

    async def _start_call(self, modem: Modem) -> None:
        app = self.app
        caller = self._caller
        self._caller = None
        self._rings = 0
        if self.no_duplex and not app.config.call.voicemail:
            # nothing the box could do for this caller but talk at them; the
            # bypass relay has already put the phone on the line.
            _LOGGER.info("line %s: not answering (no full duplex and call.voicemail is off)",
                         self.line.name)
            app.panel_board.report(f"line:{self.line.name}", "idle")
            return
        if app.storage.index_lost_now():
            # The index is known to be lost: a reference issued now could be one issued
            # before. The relay has put the phone on the line; it rings as a plain phone.
            _LOGGER.error("line %s: not answering: %s", self.line.name, app.storage.index_fault)
            app.panel_board.report(f"line:{self.line.name}", "idle")
            return
        # a recording the disk cannot keep is not started, and the caller
        # hears the short "not recorded" notice instead of being told something false.
        record = app.storage.may_record()
        try:
            reference = await app.storage.allocate_reference()
        except StoreError as exc:
            # The index cannot take the call's row (a full disk): the row must be durable
            # before the line goes off-hook, so this call is not answered. The fault drops
            # the bypass relay: the phone rings as a plain phone.
            app.storage.storage_failed(f"the index cannot be written ({exc})", index=True)
            _LOGGER.error("line %s: not answering: the index cannot be written (%s)",
                          self.line.name, exc)
            app.panel_board.report(f"line:{self.line.name}", "idle")
            return
        events: asyncio.Queue[CallEvent] = asyncio.Queue()
        # lines[].audio = "alsa:<device>": the line's audio is a sound card.
        line_audio = (SoundDeviceAudio(self.line.audio.removeprefix("alsa:"),
                                       role=f"line {self.line.name}")
                      if self.line.audio else None)
        media = CallMedia.for_line(
            reference, app.config, self.line,
            send_to_line=modem.send_audio if line_audio is None else line_audio.play,
            play_to_earpiece=functools.partial(app.earpiece, reference),
            take_from_mouthpiece=functools.partial(app.mouthpiece, reference),
            events=events,
            tone_zone=app.tone_zone,
            hear_hang_up=True,
        )
        info = CallerInfo(
            line=self.line.name,
            number=caller.number if caller is not None else None,
            name=caller.name if caller is not None else None,
            withheld=caller is not None and caller.withheld,
            cid_date=caller.date if caller is not None else None,
            cid_time=caller.time if caller is not None else None,
            ring_at=self._first_ring_at if self._first_ring_at is not None else time.time(),
            clock_synced=app.clock_synced(),
            language=self.line.language or app.config.device.language,
        )
        handset = app.config.handset
        cadence = RingCadence(on_s=self.line.ring_on_s or handset.ring_on_s,
                              off_s=self.line.ring_off_s or handset.ring_off_s)
        app.handset.register(reference, events)
        app.panel_board.report(f"line:{self.line.name}", "idle")  # the call reports now
        ports = CallPorts(
            line=_LinePort(modem, media, line_audio, on_no_duplex=self._no_duplex,
                           on_hung_up=self.hung_up),
            handset=CallHandset(app.handset, reference, cadence),
            media=media,
            store=app.storage.store,
            prompts=app.prompts_for(self.line),
            panel=app.panel_board.port(reference),
            records=app.storage.call_records,
        )
        policy = app.policy if record else dataclasses.replace(app.policy, record=False)
        call = InboundCall(reference, info, ports, policy, events, observer=app.observe)
        task = asyncio.create_task(call.run(), name=f"call-{reference}")
        self.active = ActiveCall(call, media, task, modem.stats)
        self.state = "in-call"
        task.add_done_callback(lambda t: self._call_done(t))

    def _log_audio_counters(self, active: ActiveCall) -> None:
        """Say in the log how the call's audio went: frames each way, the
        modem's transmit underruns (``<DLE>u``), audio dropped, and the handset jitter
        buffer's under/overruns. A warning when anything was lost."""
        modem = self.modem
        now = modem.stats if modem is not None else active.modem_stats
        delta = {key: now.get(key, 0) - active.modem_stats.get(key, 0)
                 for key in ("tx_underruns", "tx_dropped_bytes", "garbage_lines", "resyncs")}
        media = {**active.media.stats, **active.media.capture_stats}
        lost = (delta["tx_underruns"] or delta["tx_dropped_bytes"] or media["underruns"]
                or media["overruns"])
        _LOGGER.log(logging.WARNING if lost else logging.INFO,
                    "call %s: audio %d frames in, %d out; modem underruns %d, dropped %d bytes, "
                    "garbage lines %d, resyncs %d; handset buffer underruns %d, overruns %d, "
                    "shed %d", active.call.reference, media["rx_frames"], media["tx_frames"],
                    delta["tx_underruns"], delta["tx_dropped_bytes"], delta["garbage_lines"],
                    delta["resyncs"], media["underruns"], media["overruns"], media["shed"])

    def _no_duplex(self) -> None:
        """The modem has no full duplex: the line becomes an answering machine.

        Without ``+VTR`` the bridge cannot carry the shop's voice. The box
        still does what the modem can: it lets the phone ring first (the line's fault drops
        the bypass relay, so the phone is on the line), then answers with the notice and the
        reference (``+VTX``) and records a message (``+VRX``). ``appliance status``/``doctor``
        and fault code 7 say why. Found again whenever the modem is reopened.

        With ``lines[].duplex = "full"`` a refusal changes nothing for later calls (the
        technician's word stands; :class:`Modem` logs the contradiction).
        """
        if self.line.duplex == "full":
            return
        if not self.no_duplex:
            _LOGGER.warning("line %s: the modem has no full duplex (AT+VTR): answering machine "
                            "only — the phone rings first, the box takes a message after %d "
                            "rings; use a full-duplex modem or set lines[].audio to the line's "
                            "sound card", self.line.name,
                            self.app.config.call.half_duplex_answer_after_rings)
        self.no_duplex = True
        evidence = self.modem.duplex_evidence if self.modem is not None else "AT+VTR refused"
        self._set_fault(f"modem has no full duplex ({evidence}): answering machine only, "
                        "the phone is on the line", code="half-duplex")

    def _call_done(self, task: asyncio.Task[CallResult]) -> None:
        active, self.active = self.active, None
        if active is not None:
            self.app.handset.release(active.call.reference)
            self._log_audio_counters(active)
        self.state = "idle"
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            _LOGGER.error("line %s: call task failed: %r", self.line.name, exc)
            return
        self.app.call_finished(task.result())
