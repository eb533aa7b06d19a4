"""The application: wires the rooms together, starts them in order, stops them in reverse.

Start order: state dir → store (+ start-up recovery) → prompts → panel → handset (SLIC +
audio) → lines. Stop in reverse, in ``finally``. Each line has a supervisor loop that reopens
its modem with back-off when the link fails (USB modems disappear), and dispatches the modem's
events to the call in progress. Hardware is chosen by URL in the configuration and can be
injected (``pin_factory``, ``handset_audio``) by the demo and the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from appliance.audio.backend import HandsetAudio, open_handset_audio
from appliance.audio.buffers import ClipPlayer
from appliance.audio.pcm import FRAME_SAMPLES
from appliance.audio.tones import tone_zone
from appliance.call.events import (
    AgentOffHook,
    AgentOnHook,
    CallEvent,
)
from appliance.call.flow import CallPolicy, CallResult
from appliance.config import Config, LineConfig
from appliance.daemon.control import ControlServer, socket_path
from appliance.daemon.line_session import ActiveCall, LineSession
from appliance.daemon.outbound_control import OutboundController
from appliance.daemon.panel_board import PanelBoard
from appliance.daemon.prompts import Prompts, PromptShelf
from appliance.daemon.shared_handset import SharedHandset
from appliance.errors import (
    AudioError,
    StoreError,
)
from appliance.handset.slic import Slic, SlicPins
from appliance.languages.registry import for_config as languages_for
from appliance.panel.panel import Panel, PanelPins
from appliance.panel.relay import BypassRelay
from appliance.reference import COUNTER_SPACE, format_reference, make_reference, spoken_groups
from appliance.speech.prompts import load_prompt_texts
from appliance.store.audit import record_config
from appliance.store.db import DB_DIR_MODE, Store
from appliance.store.highwater import REFERENCE_KEY_FILE, read_mark, write_mark
from appliance.store.recorder import recover_leftovers

if TYPE_CHECKING:
    pass

_LOGGER = logging.getLogger(__name__)

#: Storage per hour of a 2-channel 8 kHz call by codec (docs/audio.md §5.2, ×2 channels).
BYTES_PER_HOUR: Final = {"wav": 115_200_000, "flac": 72_000_000, "opus": 19_000_000}
#: Less free space than this many hours of recording is the "disk-full" fault.
DISK_FULL_HOURS: Final = 24.0
HEALTH_INTERVAL_S: Final = 60.0
#: A call row that could not be finalized (a full disk) is retried this often.
UNSAVED_RETRY_S: Final = 5.0
#: Size of the write that proves storage works again after a failure (half a minute of
#: live recording).
PROBE_BYTES: Final = 1_000_000
#: ``recording.min_free_mb`` counts megabytes of 10^6 bytes (as df -H and SD cards do).
BYTES_PER_MB: Final = 1_000_000

CallObserver = Callable[[str, str, str], None]


def make_pin_factory(name: str) -> Any:
    """The gpiozero pin factory named in ``gpio.pin_factory`` ("" = gpiozero's own choice)."""
    if name == "":
        return None
    if name == "mock":
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        return MockFactory(pin_class=MockPWMPin)
    if name == "lgpio":
        from gpiozero.pins.lgpio import LGPIOFactory

        return LGPIOFactory()
    if name == "rpigpio":
        from gpiozero.pins.rpigpio import RPiGPIOFactory

        return RPiGPIOFactory()
    if name == "pigpio":
        from gpiozero.pins.pigpio import PiGPIOFactory

        return PiGPIOFactory()
    from gpiozero.pins.native import NativeFactory

    return NativeFactory()


def load_or_create_key(state_dir: Path) -> bytes:
    """The per-device reference key (32 random bytes, 0600), created at first start."""
    path = state_dir / REFERENCE_KEY_FILE
    try:
        key = path.read_bytes()
        if len(key) >= 16:
            return key
        raise StoreError(f"{path} is damaged ({len(key)} bytes); restore it from a backup")
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return key



class Application:
    """The whole daemon. All methods run on the event loop."""

    def __init__(
        self,
        config: Config,
        *,
        pin_factory: Any = None,
        handset_audio: HandsetAudio | None = None,
        slic_timings: dict[str, float] | None = None,
        on_status: Callable[[str], object] | None = None,
    ) -> None:
        self.config = config
        self._on_status = on_status
        self.policy = CallPolicy.from_config(config)
        self.tone_zone = tone_zone(config.tones.zone)
        self.pin_factory = pin_factory if pin_factory is not None else make_pin_factory(
            config.gpio.pin_factory)
        self.handset_audio: HandsetAudio = handset_audio or open_handset_audio(
            config.handset.audio)
        self._slic_timings = slic_timings or {}
        self.observers: list[CallObserver] = []
        self.completed: asyncio.Queue[CallResult] = asyncio.Queue()
        self.last_result: CallResult | None = None
        self.prompt_shelf = PromptShelf(config, self.tone_zone)
        self.lines: list[LineSession] = []
        #: Set at start when the index is behind the reference counter's high-water mark.
        self.index_fault: str | None = None
        #: A recording or index write failed (a full disk): the disk-full fault until the
        #: writes succeed again and free space is back above ``recording.min_free_mb``.
        self.storage_error: str | None = None
        #: The index itself could not be written: the box cannot answer (relay released).
        self.index_unwritable = False
        #: Finished calls whose final row update or audit entry is not written yet.
        self._unsaved: list[CallResult] = []
        self._unsaved_added = asyncio.Event()
        #: How often kept rows are retried (tests shorten it).
        self.unsaved_retry_s = UNSAVED_RETRY_S
        self._recording_allowed = True
        self.recovered: list[str] = []
        self._ready = asyncio.Event()
        self._started = False
        self._handset_player: ClipPlayer | None = None
        # After a short ring: what to say when the handset is lifted ("last-call", "health",
        # "clip" = _announce_clip, a recording being played back).
        self.announce_on_lift: str | None = None
        self._announce_clip: np.ndarray | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started_at = time.monotonic()
        #: Set by the outbound controller after a minute of unanswered dial tone.
        self.handset_left_off_hook = False
        self.loop_monitor: Any = None  # set by `appliance run` (LoopLagMonitor)
        self.control: ControlServer | None = None

    # -- start / stop -----------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        cfg.device.state_dir.mkdir(parents=True, exist_ok=True, mode=DB_DIR_MODE)
        self.store = Store.open(cfg.db_path)
        self._key = load_or_create_key(cfg.device.state_dir)
        self.index_fault = self._check_index()
        if self.index_fault is None:
            await self._recover()
        # The configuration in force is evidence too: audit any change since the last start.
        await asyncio.to_thread(record_config, self.store, cfg.to_dict(), actor="appliance")
        await asyncio.to_thread(self.prompt_shelf.build)
        self.panel = Panel(
            PanelPins(ready=cfg.panel.ready_pin, line=cfg.panel.line_pin,
                      recording=cfg.panel.recording_pin, fault=cfg.panel.fault_pin,
                      button=cfg.panel.button_pin),
            pin_factory=self.pin_factory,
            long_press_s=cfg.panel.long_press_s,
        )
        await self.panel.start()
        self.panel_board = PanelBoard(self.panel)
        self.relay = BypassRelay(cfg.panel.bypass_relay_pin, pin_factory=self.pin_factory)
        self.relay.start()
        self.slic = Slic(
            SlicPins(rm=cfg.handset.rm_pin, fr=cfg.handset.fr_pin, shk=cfg.handset.shk_pin),
            pin_factory=self.pin_factory,
            ring_hz=cfg.handset.ring_hz,
            **self._slic_timings,
        )
        await self.slic.start()
        self.handset = SharedHandset(self.slic)
        try:
            await self.handset_audio.start(self._on_handset_capture)
            self.audio_fault: str | None = None
        except AudioError as exc:
            # Without handset audio the shop cannot talk through the box: show the fault and
            # keep the relay released (plain phone) rather than crash-looping.
            _LOGGER.error("handset audio unavailable: %s", exc)
            self.audio_fault = str(exc)
        self.outbound = OutboundController(self)
        self._tasks = [
            asyncio.create_task(self._run_hook_events(), name="hook-events"),
            asyncio.create_task(self._run_button_events(), name="button-events"),
            asyncio.create_task(self._run_health(), name="health"),
            asyncio.create_task(self._run_unsaved(), name="unsaved-rows"),
        ]
        for line in cfg.lines:
            session = LineSession(self, line)
            self.lines.append(session)
            session.start()
        self.control = ControlServer(socket_path(cfg.device.state_dir),
                                     {"status": self._cmd_status, "play": self._cmd_play})
        await self.control.start()
        self._started = True
        self.update_faults()

    async def stop(self) -> None:
        """Stop in reverse order; a call in progress is finalized first."""
        if hasattr(self, "relay"):
            # First thing: hand the line back to the phone while we finish up.
            self.relay.close()
        if self.control is not None:
            await self.control.stop()
        if hasattr(self, "outbound"):
            await self.outbound.stop()
        for session in reversed(self.lines):
            await session.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.handset_audio.stop()
        if hasattr(self, "slic"):
            await self.slic.close()
        if hasattr(self, "panel"):
            await self.panel.close()
        if hasattr(self, "store"):
            await self.store.close()

    async def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Wait until every line's modem is initialized."""
        async with asyncio.timeout(timeout_s):
            await self._ready.wait()

    def line_ready(self, session: LineSession) -> None:
        if all(s.modem is not None for s in self.lines):
            self._ready.set()
        self.publish_status()

    def publish_status(self) -> None:
        """Tell systemd (STATUS=) what ``systemctl status`` should show."""
        if self._on_status is not None and hasattr(self, "store"):
            self._on_status(self.status_line())

    def status_line(self) -> str:
        faults = [s.fault for s in self.lines if s.fault]
        if getattr(self, "index_fault", None):
            faults.insert(0, f"index: {self.index_fault}")
        if getattr(self, "storage_error", None):
            faults.insert(0, f"disk full: {self.storage_error}")
        elif hasattr(self, "store") and not self.recording_space_ok():
            faults.insert(0, "disk full: calls are answered but not recorded "
                             "(free space below recording.min_free_mb)")
        if faults:
            return "fault — " + "; ".join(faults)
        last = self.store.last_call() if hasattr(self, "store") else None
        if last:
            from appliance.reference import format_reference

            when = time.strftime("%H:%M", time.localtime(last["ring_at"] or 0))
            return f"ready — last call {format_reference(last['reference'])} at {when}"
        return "ready — no calls yet"

    def update_faults(self) -> None:
        if not self._started:
            return
        line_fault = next((s.fault for s in self.lines if s.fault), None)
        faults = self.fault_codes()
        # Blink the most serious fault (panel fault codes, hw/pinout.md).
        self.panel.set_fault(faults[0] if faults else None)
        # In the line only while every line can answer and the shop can hear the caller;
        # otherwise the relay drops and the shop has a plain phone.
        self.relay.set_healthy(line_fault is None and self.audio_fault is None
                               and self.index_fault is None and not self.index_unwritable
                               and all(s.modem is not None for s in self.lines))
        if line_fault is None and all(s.state == "idle" for s in self.lines):
            self.panel_board.report("daemon", "idle")
        self.publish_status()

    def fault_codes(self) -> list[str]:
        """Current faults as panel codes, most serious first."""
        import shutil

        codes = []
        if getattr(self, "index_fault", None):
            codes.append("index-lost")
        if any(s.fault and s.fault_code == "line-off-hook" for s in self.lines):
            codes.append("line-off-hook")
        if any(s.fault and s.fault_code == "modem-missing" for s in self.lines):
            codes.append("modem-missing")
        if getattr(self, "audio_fault", None) or any(
                s.fault and s.fault_code == "audio-missing" for s in self.lines):
            codes.append("audio-missing")
        if any(s.fault and s.fault_code == "half-duplex" for s in self.lines):
            codes.append("half-duplex")
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(self.config.device.state_dir).free
            per_hour = BYTES_PER_HOUR.get(self.config.recording.codec, BYTES_PER_HOUR["wav"])
            if (free < DISK_FULL_HOURS * per_hour or self.storage_error
                    or not self.recording_space_ok()):
                codes.append("disk-full")
        if self.speech_warning:
            codes.append("voice-missing")
        if self.clock_synced() is False:
            codes.append("clock-unsynced")
        if self.handset_left_off_hook:
            codes.append("handset-off-hook")
        return codes

    def free_bytes(self) -> int:
        """Free bytes where the recordings go (the state directory's file system)."""
        import shutil

        try:
            return shutil.disk_usage(self.config.device.state_dir).free
        except OSError:
            return 0

    def recording_space_ok(self) -> bool:
        """Whether free space is at or above ``recording.min_free_mb``."""
        return self.free_bytes() >= self.config.recording.min_free_mb * BYTES_PER_MB

    def may_record(self) -> bool:
        """Whether the call about to be answered may be recorded (enough free space).

        Logged once when recording stops being possible and once when it is again, not per
        call; the disk-full fault shows it meanwhile.
        """
        allowed = self.recording_space_ok()
        if allowed != self._recording_allowed:
            self._recording_allowed = allowed
            if allowed:
                _LOGGER.info("free space is back above recording.min_free_mb: recording again")
            else:
                _LOGGER.error("free space %.1f MB is below recording.min_free_mb = %d: calls "
                              "are answered but not recorded", self.free_bytes() / BYTES_PER_MB,
                              self.config.recording.min_free_mb)
            self.update_faults()
        return allowed

    def storage_failed(self, what: str, *, index: bool = False) -> None:
        """A recording or index write failed: the disk-full fault (and, for the index, the
        relay released: a call that cannot be indexed is not answered)."""
        changed = self.storage_error != what or (index and not self.index_unwritable)
        self.storage_error = what
        self.index_unwritable = self.index_unwritable or index
        if changed:
            self.update_faults()
        self._unsaved_added.set()  # the retry loop clears the fault when writes work again

    def call_finished(self, result: CallResult) -> None:
        """An inbound call ended: its result is published (and kept if its row is unsaved)."""
        if result.unsaved is not None or result.unsaved_audit is not None:
            self.keep_unsaved(result)
        self.last_result = result
        self.completed.put_nowait(result)
        self.publish_status()

    def keep_unsaved(self, result: CallResult) -> None:
        """Keep a finished call whose row could not be finalized; retried until it is."""
        self._unsaved.append(result)
        self.storage_failed("a call's row could not be finalized", index=True)

    async def _run_unsaved(self) -> None:
        """Finalize kept rows as soon as the index can be written again,
        and clear the storage fault once nothing is pending and space is back."""
        while True:
            if not self._unsaved and self.storage_error is None:
                self._unsaved_added.clear()
                await self._unsaved_added.wait()
            await asyncio.sleep(self.unsaved_retry_s)
            for result in list(self._unsaved):
                try:
                    if result.unsaved is not None:
                        await self.store.update_call(result.reference, **result.unsaved)
                        result.unsaved = None
                    if result.unsaved_audit is not None:
                        await self.store.append_audit("call-finalized", actor="appliance",
                                                      reference=result.reference,
                                                      details=result.unsaved_audit)
                        result.unsaved_audit = None
                except StoreError:
                    break  # still full: try again later, in order
                self._unsaved.remove(result)
                _LOGGER.info("call %s: row finalized now (%s, %s)", result.reference,
                             result.outcome, result.recording_decision)
            if (not self._unsaved and self.storage_error and self.recording_space_ok()
                    and await asyncio.to_thread(self._probe_write)):
                _LOGGER.info("storage writable again: disk-full fault cleared")
                self.storage_error = None
                self.index_unwritable = False
                self.update_faults()
            elif not self._unsaved and self.storage_error:
                await asyncio.sleep(HEALTH_INTERVAL_S)

    def _probe_write(self) -> bool:
        """Whether a recording-sized write succeeds now where the recordings go (a thread).

        Free space alone does not prove it (quotas, file size limits, a read-only remount);
        PROBE_BYTES written, fsync'ed and deleted do.
        """
        directory = self.config.recordings_dir
        probe = directory / ".write-probe"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, bytes(PROBE_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
            return True
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()

    async def _run_health(self) -> None:
        """Re-check the slow-changing faults (disk, clock) every HEALTH_INTERVAL_S."""
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            self.index_lost_now()
            self.update_faults()

    # -- helpers ----------------------------------------------------------------------------

    def prompts_for(self, line: LineConfig) -> Prompts:
        """The prompts of ``line`` (a line may speak another company name or language)."""
        return self.prompt_shelf.for_line(line)

    @property
    def prompts(self) -> Prompts:
        """The default line's prompts."""
        return self.prompt_shelf.for_line(self.config.lines[0])

    @property
    def speech_warning(self) -> str | None:
        """Why the prompts are not in the configured voice (None: they are)."""
        return self.prompt_shelf.speech_warning

    async def _recover(self) -> None:
        """Finalize recordings a crash (or a full disk) left behind; finish unfinished calls.

        A recovered recording joins its row; a row already finalized (the disk was full
        when its call ended) keeps its outcome. A row still ``in_progress`` becomes
        ``interrupted`` with an end time (its last event: the last moment known) and, like
        every finished call, a ``call-finalized`` audit entry.
        """
        results = await asyncio.to_thread(
            recover_leftovers, self.config.recordings_dir, self.config.recording.codec)
        for result in results:
            ref = result.reference
            row = self.store.get_call(ref)
            if row is None:
                _LOGGER.warning("call %s: recovered a recording the index does not know; "
                                "`appliance index rebuild` indexes it", ref)
                continue
            self.recovered.append(ref)
            _LOGGER.warning("call %s: recovered an interrupted recording (%.1f s)", ref,
                            result.duration_s)
            fields: dict[str, Any] = {
                "recording_decision": "recorded", "recording_path": str(result.path),
                "recording_sha256": result.sha256, "recording_bytes": result.bytes}
            outcome = row["outcome"]
            if outcome == "in_progress":
                outcome = "interrupted"
                fields.update(self._interrupted_fields(row), outcome=outcome)
            await self.store.update_call(ref, **fields)
            await self.store.add_event(ref, "recording-recovered",
                                       f"{result.duration_s:.1f} s finalized at start-up")
            await self.store.append_audit("call-finalized", actor="appliance", reference=ref,
                                          details={"outcome": outcome,
                                                   "recording_decision": "recorded",
                                                   "sha256": result.sha256, "recovered": True})
        for row in self.store.list_calls(limit=1000, outcome="in_progress"):
            ref = row["reference"]
            decision = row["recording_decision"]
            decision = "none" if decision == "pending" else decision
            await self.store.update_call(ref, outcome="interrupted", recording_decision=decision,
                                         **self._interrupted_fields(row))
            await self.store.add_event(ref, "interrupted", "daemon stopped mid-call")
            await self.store.append_audit("call-finalized", actor="appliance", reference=ref,
                                          details={"outcome": "interrupted",
                                                   "recording_decision": decision,
                                                   "sha256": None, "recovered": True})
            _LOGGER.warning("call %s: marked interrupted (daemon stopped mid-call)", ref)

    def _interrupted_fields(self, row: dict[str, Any]) -> dict[str, Any]:
        """End time and length of a call the daemon did not see end: its last event."""
        times = [e["t"] for e in self.store.events(row["reference"])]
        answered = row["answer_at"]
        end = max([*times, answered or row["ring_at"] or row["created_at"]])
        # As the flow counts it: from off-hook, 0 for a call never answered.
        return {"end_at": end, "duration_s": round(end - answered, 3) if answered else 0.0}

    def _check_index(self) -> str | None:
        """Compare the index's reference counter with the high-water mark beside the key.

        Returns the fault text when the index is behind the mark (it was deleted, emptied or
        restored from an old copy): answering on it would issue references again and
        overwrite their recordings, so the daemon does not answer until ``appliance index
        rebuild``. A missing mark (first start, or an index from before
        the mark existed) is written from the index.
        """
        state_dir = self.config.device.state_dir
        mark = read_mark(state_dir)
        issued = self.store.counter()
        if mark is None:
            write_mark(state_dir, issued)
            return None
        if issued >= mark:
            return None
        fault = (f"the index was lost or replaced: it knows {issued} references, "
                 f"{mark} were issued — not answering; run `appliance index rebuild`")
        _LOGGER.error("%s (%s)", fault, self.config.db_path)
        return fault

    def index_lost_now(self) -> bool:
        """Whether the daemon must not issue references: the index was found lost at start,
        or its file was deleted or replaced while running (checked here, before each call,
        and by the health loop)."""
        if self.index_fault is None and self.store.file_replaced():
            self.index_fault = ("the index file was deleted or replaced while running — not "
                                "answering; stop the daemon, run `appliance index rebuild`, "
                                "start it")
            _LOGGER.error("%s (%s)", self.index_fault, self.config.db_path)
            self.update_faults()
        return self.index_fault is not None

    async def allocate_reference(self) -> str:
        """The next call's reference; its counter is durable beside the key before use.

        Raises:
            StoreError: the index is lost (:meth:`index_lost_now`), cannot be written, or the
                reference space is exhausted.
        """
        if self.index_lost_now():
            raise StoreError(self.index_fault or "index lost")
        state_dir = self.config.device.state_dir
        mark = await asyncio.to_thread(read_mark, state_dir)
        counter = await self.store.next_counter(at_least=(mark or 0) + 1)
        if counter >= COUNTER_SPACE:
            raise StoreError("call reference space exhausted (10^7 calls)")
        await asyncio.to_thread(write_mark, state_dir, counter)
        return make_reference(counter, self._key)

    def clock_synced(self) -> bool | None:
        """Whether the system clock is NTP-synchronised (None when unknown)."""
        # systemd-timesyncd touches this file on every successful sync.
        marker = Path("/run/systemd/timesync/synchronized")
        if marker.parent.exists():
            return marker.exists()
        return None

    def observe(self, reference: str, state: str, detail: str) -> None:
        if state == "recording-failed":
            self.storage_failed(f"a recording stopped: {detail}")
        for observer in list(self.observers):
            observer(reference, state, detail)

    def _owner(self) -> ActiveCall | None:
        """The call that has the handset, if any."""
        owner = self.handset.owner if hasattr(self, "handset") else None
        return next((s.active for s in self.lines
                     if s.active is not None and s.active.call.reference == owner), None)

    def handset_owner_events(self) -> asyncio.Queue[CallEvent] | None:
        """The event queue of the inbound call that has the handset (the outbound port)."""
        owner = self._owner()
        return None if owner is None else owner.call.events

    def earpiece(self, reference: str, frame: np.ndarray) -> None:
        """A call's frame for the earpiece: heard only if that call has the handset."""
        if self.handset.owner == reference:
            self.handset_audio.play(frame)

    def line_of(self, reference: str) -> str | None:
        return next((s.line.name for s in self.lines
                     if s.active is not None and s.active.call.reference == reference), None)

    def _on_handset_capture(self, frame: np.ndarray) -> None:
        """One frame from the handset: to the call, or clock the idle earpiece player."""
        if self.outbound.on_handset_capture(frame):
            return
        owner = self._owner()
        if owner is not None:
            owner.media.on_handset_capture(frame)
            return
        player = self._handset_player
        if player is not None:
            # Outside calls the handset's own clock paces what the earpiece hears.
            self.handset_audio.play(player.read(FRAME_SAMPLES))
            if player.finished:
                self._handset_player = None

    def play_to_idle_handset(self, clip: np.ndarray) -> None:
        """Play ``clip`` into the earpiece when no call is in progress."""
        self._handset_player = ClipPlayer(clip)

    @property
    def in_call(self) -> bool:
        return any(s.active is not None for s in self.lines)

    def faults(self) -> list[str]:
        """Human-readable faults (status, the spoken health summary)."""
        out = [f"{s.line.name}: {s.fault}" for s in self.lines if s.fault]
        if getattr(self, "audio_fault", None):
            out.append(f"handset audio: {self.audio_fault}")
        if getattr(self, "index_fault", None):
            out.append(f"index: {self.index_fault}")
        if getattr(self, "storage_error", None):
            out.append(f"storage: {self.storage_error}")
        codes = self.fault_codes() if self._started else []
        if "disk-full" in codes:
            out.append("disk nearly full")
        if "clock-unsynced" in codes:
            out.append("clock not synchronised")
        return out

    def last_call_text(self) -> str:
        """The sentence the button speaks (template ``last_call`` / ``no_calls_yet``)."""

        language = languages_for(self.config).get(self.config.device.language)
        texts = load_prompt_texts(language.code, self.config.speech.texts,
                                  languages_for(self.config))
        last = self.store.last_call()
        if last is None:
            return texts["no_calls_yet"]
        reference = ", ".join(" ".join(group) for group in spoken_groups(last["reference"]))
        number = last["caller_number"]
        caller = (" ".join(number.lstrip("+")) if number
                  else language.words["unknown_caller"])
        when = time.localtime(last["ring_at"] or 0)
        spoken_time = language.grammar.spoken_time(when.tm_hour, when.tm_min)
        return texts["last_call"].format(reference=reference, caller=caller, time=spoken_time)

    def health_text(self) -> str:

        texts = load_prompt_texts(self.config.device.language, self.config.speech.texts,
                                  languages_for(self.config))
        faults = self.faults()
        if not faults:
            return texts["health_ok"]
        return texts["health_fault"].format(fault="; ".join(faults))

    async def _speak_to_shop(self, what: str) -> None:
        """Render ``last-call`` or ``health`` and say it into the earpiece (never to a caller)."""
        text = self.last_call_text() if what == "last-call" else self.health_text()
        try:
            clip = await asyncio.to_thread(self.prompt_shelf.render_text, text)
        except Exception:
            _LOGGER.exception("cannot render the %s announcement", what)
            return
        owner = self._owner()
        if owner is not None:
            owner.media.whisper_to_handset(clip)
        else:
            self.play_to_idle_handset(clip)
        _LOGGER.info("front panel: %s announced to the shop", what)

    # -- control socket commands ----------------------------------------------------------

    async def _cmd_status(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.status_dict()

    def status_dict(self) -> dict[str, Any]:
        """Live state for ``appliance status`` (JSON-able)."""
        import shutil

        from appliance import __version__

        lines = []
        for session in self.lines:
            modem = session.modem
            active = session.active
            lines.append({
                "name": session.line.name,
                "device": session.line.device,
                "state": session.state,
                "fault": session.fault,
                "fault_code": session.fault_code,
                "chipset": modem.chipset if modem else None,
                "voice_format": modem.voice_format if modem else None,
                "voice_format_reason": modem.voice_format_reason if modem else None,
                "audio": session.line.audio or "modem",
                "duplex": modem.full_duplex if modem else None,
                "duplex_evidence": modem.duplex_evidence if modem else None,
                "link": modem.link_state.value if modem else "down",
                "modem_stats": dict(modem.stats) if modem else {},
                "call": None if active is None else {
                    "reference": format_reference(active.call.reference),
                    "state": active.call.state.value,
                    "caller": active.call.caller.number,
                    "media": {**active.media.stats, **active.media.capture_stats},
                    "echo": active.media.echo_status,
                },
            })
        disk = shutil.disk_usage(self.config.device.state_dir)
        bytes_per_hour = BYTES_PER_HOUR.get(self.config.recording.codec, BYTES_PER_HOUR["wav"])
        last = self.store.last_call()
        monitor = self.loop_monitor
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self._started_at, 1),
            "status": self.status_line(),
            "lines": lines,
            "handset": {"off_hook": self.slic.off_hook, "ringing": self.slic.ringing,
                        "audio": dict(self.handset_audio.stats)},
            "panel": {led: str(self.panel.pattern(led))
                      for led in ("ready", "line", "recording", "fault")},
            "bypass_relay": "in line" if self.relay.energised else "bypassed",
            "faults": self.faults(),
            "outbound": self.outbound.status() if hasattr(self, "outbound") else None,
            "speech_warning": self.speech_warning,
            "last_call": None if last is None else {
                "reference": format_reference(last["reference"]),
                "ring_at": last["ring_at"], "caller": last["caller_number"],
                "outcome": last["outcome"], "recording_decision": last["recording_decision"]},
            "disk": {"free_bytes": disk.free,
                     "recording_hours_left": round(disk.free / bytes_per_hour, 1)},
            "loop_lag_ms": None if monitor is None else round(monitor.lag_s * 1000, 2),
            "loop_lag_max_ms": None if monitor is None else round(
                monitor.max_seen_lag_s * 1000, 2),
        }

    async def _cmd_play(self, request: dict[str, Any]) -> dict[str, Any]:
        """Play a recording into the earpiece (technician/owner listening back), when idle."""
        import soundfile

        from appliance.reference import parse_reference

        if self.in_call:
            raise RuntimeError("a call is in progress; try again when the line is idle")
        reference = parse_reference(str(request.get("reference", "")))
        row = self.store.get_call(reference)
        if row is None or not row["recording_path"]:
            raise RuntimeError(f"no recording for {format_reference(reference)}")
        audio, rate = await asyncio.to_thread(soundfile.read, row["recording_path"],
                                              dtype="int16", always_2d=True)
        if rate != 8000:
            raise RuntimeError(f"unexpected sample rate {rate}")
        # Both sides into the one earpiece.
        mono = np.clip(audio.astype(np.int32).sum(axis=1), -32768, 32767).astype(np.int16)
        if self.slic.off_hook:
            self.play_to_idle_handset(mono)
            where = "playing into the handset"
        else:
            self._announce_clip = mono
            self.announce_on_lift = "clip"
            self.slic.short_ring()
            where = "the handset rings briefly; lift it to listen"
        await self.store.append_audit("played", actor=str(request.get("actor", "cli")),
                                      reference=reference, details={"to": "handset"})
        return {"reference": format_reference(reference), "seconds": len(mono) / 8000,
                "message": where}

    async def _run_button_events(self) -> None:
        while True:
            event = await self.panel.events.get()
            if self.outbound.on_button(event):
                continue
            what = "last-call" if event.kind == "short" else "health"
            _LOGGER.info("front panel: %s press → %s", event.kind, what)
            if self._owner() is not None or self.slic.off_hook:
                await self._speak_to_shop(what)
            else:
                # On-hook: ring briefly; the announcement waits until the handset is lifted.
                self.announce_on_lift = what
                self.slic.short_ring()

    async def _run_hook_events(self) -> None:
        while True:
            event = await self.slic.events.get()
            call = self._owner()
            if call is None:
                if self.outbound.on_idle_hook(event):
                    continue
                _LOGGER.info("handset %s while idle", event.kind)
                if event.kind == "off_hook" and self.announce_on_lift:
                    what, self.announce_on_lift = self.announce_on_lift, None
                    await self.slic.stop_ringing()
                    if what == "clip" and self._announce_clip is not None:
                        self.play_to_idle_handset(self._announce_clip)
                        self._announce_clip = None
                    else:
                        await self._speak_to_shop(what)
                elif event.kind == "on_hook":
                    self._handset_player = None
                continue
            if event.kind == "off_hook":
                call.call.events.put_nowait(AgentOffHook())
            elif event.kind == "on_hook":
                call.call.events.put_nowait(AgentOnHook())
