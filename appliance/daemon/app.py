"""The application: builds the daemon's parts, starts them in order, stops them in reverse.

Contract: ``Application(config)`` builds every part without touching hardware or files
(hardware is chosen by URL in the configuration and can be injected — ``pin_factory``,
``handset_audio`` — by the demo and the tests). :meth:`Application.start` starts the parts in
this order, recording each one as it starts: the index (:mod:`~appliance.daemon.storage`:
key, index check, start-up recovery) → every line's prompts (:mod:`~appliance.daemon.prompts`)
→ the front panel → the SLIC → the handset audio → the background tasks → the lines
(:mod:`~appliance.daemon.line_session`) → the outbound controller → the control socket → the
bypass relay. :meth:`Application.stop` stops what was started in reverse order, so the relay
hands the line back to the phone first and the index closes last, after any call in progress
was finalized. The parts talk to the application through Protocols (``LineHost``,
``OutboundHost``, ``ShopHost``, ``DaemonState``), never by importing this module; what is
left here are the few answers those ports ask of the daemon as a whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from appliance.audio.backend import HandsetAudio, open_handset_audio
from appliance.audio.tones import tone_zone
from appliance.call.events import CallEvent
from appliance.call.flow import CallPolicy, CallResult
from appliance.config import Config, LineConfig
from appliance.daemon import status
from appliance.daemon.control import ControlServer, socket_path
from appliance.daemon.line_session import LineSession
from appliance.daemon.outbound_control import OutboundController
from appliance.daemon.panel_board import PanelBoard
from appliance.daemon.prompts import Prompts, PromptShelf
from appliance.daemon.shared_handset import SharedHandset
from appliance.daemon.shop_handset import ShopHandset
from appliance.daemon.status import LoopLag
from appliance.daemon.storage import HEALTH_INTERVAL_S, Storage
from appliance.errors import AudioError
from appliance.handset.slic import Slic, SlicPins
from appliance.panel.panel import Panel, PanelPins
from appliance.panel.relay import BypassRelay
from appliance.store.callrecord import CallRecords
from appliance.store.db import Store

_LOGGER = logging.getLogger(__name__)

CallObserver = Callable[[str, str, str], None]
#: Undoes one started part (see Application.start).
_Stop = Callable[[], Awaitable[object]]


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


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class Application:
    """The whole daemon. All methods run on the event loop."""

    def __init__(
        self,
        config: Config,
        *,
        pin_factory: Any = None,
        handset_audio: HandsetAudio | None = None,
        slic_timings: dict[str, Any] | None = None,
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
        self.observers: list[CallObserver] = []
        self.completed: asyncio.Queue[CallResult] = asyncio.Queue()
        self.last_result: CallResult | None = None
        # The parts, built here and started by start(); none touches a pin or a file yet.
        self.storage = Storage(config, on_change=self.update_faults)
        self.prompt_shelf = PromptShelf(config, self.tone_zone)
        cfg = config
        self.panel = Panel(
            PanelPins(ready=cfg.panel.ready_pin, line=cfg.panel.line_pin,
                      recording=cfg.panel.recording_pin, fault=cfg.panel.fault_pin,
                      button=cfg.panel.button_pin),
            pin_factory=self.pin_factory,
            long_press_s=cfg.panel.long_press_s,
        )
        self.panel_board = PanelBoard(self.panel)
        self.relay = BypassRelay(cfg.panel.bypass_relay_pin, pin_factory=self.pin_factory)
        self.slic = Slic(
            SlicPins(rm=cfg.handset.rm_pin, fr=cfg.handset.fr_pin, shk=cfg.handset.shk_pin),
            pin_factory=self.pin_factory,
            ring_hz=cfg.handset.ring_hz,
            **(slic_timings or {}),
        )
        self.handset = SharedHandset(self.slic)
        self.outbound = OutboundController(self)
        self.lines: list[LineSession] = [LineSession(self, line) for line in cfg.lines]
        self.shop = ShopHandset(self)
        self.control = ControlServer(socket_path(cfg.device.state_dir),
                                     {"status": self._cmd_status, "play": self.shop.play_recording})
        #: What stop() undoes, in start order: (the part's name, how to stop it).
        self._running: list[tuple[str, _Stop]] = []
        self._started = False
        self._started_at = time.monotonic()
        self._ready = asyncio.Event()
        #: Why the handset audio could not be opened at start (None: it is open).
        self.audio_fault: str | None = None
        #: Set by the outbound controller after a minute of unanswered dial tone.
        self.handset_left_off_hook = False
        self.loop_monitor: LoopLag | None = None  # set by `appliance run` (LoopLagMonitor)

    # -- start / stop -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the parts in order (module docstring); each is recorded once it runs."""
        await self.storage.open()
        self._running.append(("index", self.storage.close))
        await asyncio.to_thread(self.prompt_shelf.build)
        await self.panel.start()
        self._running.append(("front panel", self.panel.close))
        await self.slic.start()
        self._running.append(("SLIC", self.slic.close))
        try:
            await self.handset_audio.start(self.shop.on_handset_capture)
        except AudioError as exc:
            # Without handset audio the shop cannot talk through the box: show the fault and
            # keep the relay released (plain phone) rather than crash-looping.
            _LOGGER.error("handset audio unavailable: %s", exc)
            self.audio_fault = str(exc)
        else:
            self._running.append(("handset audio", self.handset_audio.stop))
        for name, job in (("hook-events", self.shop.run_hook_events),
                          ("button-events", self.shop.run_button_events),
                          ("health", self._run_health),
                          ("unsaved-rows", self.storage.run_unsaved)):
            task = asyncio.create_task(job(), name=name)
            self._running.append((name, functools.partial(_cancel, task)))
        for session in self.lines:
            session.start()
            self._running.append((f"line {session.line.name}", session.stop))
        # Nothing to start: the controller is offered events from here on; stopping it ends
        # an outbound call while its line still runs.
        self._running.append(("outbound", self.outbound.stop))
        await self.control.start()
        self._running.append(("control socket", self.control.stop))
        # The box goes into the line last and leaves it first: stopping hands the line back
        # to the phone before anything else (the relay energises once update_faults says so).
        self.relay.start()
        self._running.append(("bypass relay", self._release_relay))
        self._started = True
        self.update_faults()

    async def stop(self) -> None:
        """Stop the started parts in reverse order; a call in progress is finalized when its
        line stops. A part that fails to stop is logged and the others still stop."""
        while self._running:
            name, stop = self._running.pop()
            try:
                await stop()
            except Exception:
                _LOGGER.exception("stopping the %s failed", name)

    async def _release_relay(self) -> None:
        self.relay.close()

    async def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Wait until every line's modem is initialized."""
        async with asyncio.timeout(timeout_s):
            await self._ready.wait()

    def line_ready(self, session: LineSession) -> None:
        if all(s.modem is not None for s in self.lines):
            self._ready.set()
        self.publish_status()

    # -- faults and status (daemon/status.py) -----------------------------------------------

    @property
    def started(self) -> bool:
        return self._started

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self._started_at

    def publish_status(self) -> None:
        """Tell systemd (STATUS=) what ``systemctl status`` should show."""
        if self._on_status is not None and self.storage.opened:
            self._on_status(self.status_line())

    def status_line(self) -> str:
        return status.status_line(self)

    def update_faults(self) -> None:
        """A fault may have changed: show it on the panel and the relay, and to systemd."""
        if not self._started:
            return
        status.show_faults(self)
        self.publish_status()

    def fault_codes(self) -> list[str]:
        """Current faults as panel codes, most serious first."""
        return status.fault_codes(self)

    def clock_synced(self) -> bool | None:
        return status.clock_synced()

    async def _run_health(self) -> None:
        """Re-check the slow-changing faults (disk, clock) every HEALTH_INTERVAL_S."""
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            self.storage.index_lost_now()
            self.update_faults()

    # -- what the parts ask of the daemon ----------------------------------------------------

    @property
    def store(self) -> Store:
        return self.storage.store

    @property
    def call_records(self) -> CallRecords:
        return self.storage.call_records

    async def allocate_reference(self) -> str:
        """The next call's reference (:meth:`Storage.allocate_reference`)."""
        return await self.storage.allocate_reference()

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

    def call_finished(self, result: CallResult) -> None:
        """An inbound call ended: its result is published (and kept if its row is unsaved)."""
        if (result.unsaved is not None or result.unsaved_audit is not None
                or result.unsaved_record is not None):
            self.storage.keep_unsaved(result)
        self.last_result = result
        self.completed.put_nowait(result)
        self.publish_status()

    def observe(self, reference: str, state: str, detail: str) -> None:
        if state == "recording-failed":
            self.storage.storage_failed(f"a recording stopped: {detail}")
        for observer in list(self.observers):
            observer(reference, state, detail)

    def handset_owner_events(self) -> asyncio.Queue[CallEvent] | None:
        """The event queue of the inbound call that has the handset (the outbound port)."""
        return self.shop.handset_owner_events()

    def earpiece(self, reference: str, frame: np.ndarray) -> None:
        """A call's frame for the earpiece: heard only if that call has the handset."""
        self.shop.earpiece(reference, frame)

    def mouthpiece(self, reference: str) -> None:
        """A call's line tick: the mouthpiece's frame, if that call has the handset."""
        self.shop.mouthpiece(reference)

    @property
    def announce_on_lift(self) -> str | None:
        """What the shop was rung to hear when lifting (then a lift is not a dial-out)."""
        return self.shop.announce_on_lift

    def render_text(self, text: str) -> np.ndarray:
        """Speak ``text`` now, rendered in a child process (blocks: call it in a thread)."""
        return self.prompt_shelf.render_text(text)

    def line_of(self, reference: str) -> str | None:
        """The name of the line the inbound call ``reference`` is on (None: no such call)."""
        return next((s.line.name for s in self.lines
                     if s.active is not None and s.active.call.reference == reference), None)

    @property
    def in_call(self) -> bool:
        """Whether an inbound call is in progress on any line."""
        return any(s.active is not None for s in self.lines)

    def faults(self) -> list[str]:
        """Human-readable faults (status, the spoken health summary)."""
        return status.faults(self)

    # -- control socket commands ----------------------------------------------------------

    async def _cmd_status(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.status_dict()

    def status_dict(self) -> dict[str, Any]:
        """Live state for ``appliance status`` (JSON-able)."""
        return status.status_dict(self)
