"""The shop's handset and button outside a call's own flow.

Contract: hook events and mouthpiece frames go to whoever has the handset — the inbound call
that owns it (:class:`~appliance.daemon.shared_handset.SharedHandset`), else the outbound
controller, which starts a dial-out on a lift — and a call's earpiece frames are heard only
while that call owns it. When nobody does, the front-panel button speaks to the shop: a short
press says the last call, a long press the box's health (rendered in a child process, never
played to a caller); on-hook the handset first rings briefly and the sentence waits for the
lift. ``appliance play`` (the control socket's ``play``) puts a recording into the earpiece
the same way. A call that has the handset takes the mouthpiece's frames at its line's ticks
(:meth:`ShopHandset.mouthpiece`); outside calls the handset's own capture clock paces what the
earpiece hears.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from appliance.audio.buffers import ClipPlayer
from appliance.audio.pcm import FRAME_SAMPLES
from appliance.call.events import AgentOffHook, AgentOnHook, CallEvent
from appliance.reference import format_reference
from appliance.speech.prompts import health_sentence, last_call_sentence

if TYPE_CHECKING:
    from appliance.audio.backend import HandsetAudio
    from appliance.config import Config
    from appliance.daemon.line_session import ActiveCall, LineSession
    from appliance.daemon.outbound_control import OutboundController
    from appliance.daemon.shared_handset import SharedHandset
    from appliance.daemon.storage import Storage
    from appliance.handset.slic import Slic
    from appliance.panel.panel import Panel

_LOGGER = logging.getLogger(__name__)


class ShopHost(Protocol):
    """What the shop's handset needs of the daemon (the daemon's ``Application``)."""

    @property
    def config(self) -> Config: ...
    @property
    def storage(self) -> Storage: ...
    @property
    def slic(self) -> Slic: ...
    @property
    def panel(self) -> Panel: ...
    @property
    def handset_audio(self) -> HandsetAudio: ...
    @property
    def handset(self) -> SharedHandset: ...
    @property
    def lines(self) -> Sequence[LineSession]: ...
    @property
    def outbound(self) -> OutboundController: ...
    def faults(self) -> list[str]:
        """The readable faults the health announcement says."""
    def render_text(self, text: str) -> np.ndarray:
        """Speak ``text`` (blocks: called in a thread)."""


class ShopHandset:
    """Routes the shop's handset and speaks to it outside calls. All methods run on the loop."""

    def __init__(self, host: ShopHost) -> None:
        self._host = host
        self._handset_player: ClipPlayer | None = None
        #: After a short ring: what to say when the handset is lifted ("last-call", "health",
        #: "clip" = a recording being played back).
        self.announce_on_lift: str | None = None
        self._announce_clip: np.ndarray | None = None

    def handset_owner_events(self) -> asyncio.Queue[CallEvent] | None:
        """The event queue of the inbound call that has the handset (the outbound port)."""
        owner = self.owner()
        return None if owner is None else owner.call.events

    def earpiece(self, reference: str, frame: np.ndarray) -> None:
        """A call's frame for the earpiece: heard only if that call has the handset."""
        if self._host.handset.owner == reference:
            self._host.handset_audio.play(frame)

    def mouthpiece(self, reference: str) -> None:
        """A call's line tick: if that call has the handset, its card hands the mouthpiece's
        freshest frame over now (to :meth:`on_handset_capture`); the line clocks the capture."""
        if self._host.handset.owner == reference:
            self._host.handset_audio.pull()

    def owner(self) -> ActiveCall | None:
        """The call that has the handset, if any."""
        owner = self._host.handset.owner
        return next((s.active for s in self._host.lines
                     if s.active is not None and s.active.call.reference == owner), None)

    def on_handset_capture(self, frame: np.ndarray) -> None:
        """One frame from the handset: to the call, or clock the idle earpiece player."""
        if self._host.outbound.on_handset_capture(frame):
            return
        owner = self.owner()
        if owner is not None:
            owner.media.on_handset_capture(frame)
            return
        player = self._handset_player
        if player is not None:
            # Outside calls the handset's own clock paces what the earpiece hears.
            self._host.handset_audio.play(player.read(FRAME_SAMPLES))
            if player.finished:
                self._handset_player = None

    def play_to_idle_handset(self, clip: np.ndarray) -> None:
        """Play ``clip`` into the earpiece when no call is in progress."""
        self._handset_player = ClipPlayer(clip)

    def last_call_text(self) -> str:
        """The sentence the button speaks (template ``last_call`` / ``no_calls_yet``)."""
        return last_call_sentence(self._host.config, self._host.storage.store.last_call())

    def health_text(self) -> str:
        """The sentence a long press speaks: all well, or the faults."""
        return health_sentence(self._host.config, self._host.faults())

    async def _speak_to_shop(self, what: str) -> None:
        """Render ``last-call`` or ``health`` and say it into the earpiece (never to a caller)."""
        text = self.last_call_text() if what == "last-call" else self.health_text()
        try:
            clip = await asyncio.to_thread(self._host.render_text, text)
        except Exception:
            _LOGGER.exception("cannot render the %s announcement", what)
            return
        owner = self.owner()
        if owner is not None:
            owner.media.whisper_to_handset(clip)
        else:
            self.play_to_idle_handset(clip)
        _LOGGER.info("front panel: %s announced to the shop", what)

    async def play_recording(self, request: dict[str, Any]) -> dict[str, Any]:
        """Play a recording into the earpiece (technician/owner listening back), when idle."""
        import soundfile

        from appliance.reference import parse_reference

        if any(s.active is not None for s in self._host.lines):
            raise RuntimeError("a call is in progress; try again when the line is idle")
        reference = parse_reference(str(request.get("reference", "")))
        store = self._host.storage.store
        row = store.get_call(reference)
        if row is None or not row["recording_path"]:
            raise RuntimeError(f"no recording for {format_reference(reference)}")
        audio, rate = await asyncio.to_thread(soundfile.read, row["recording_path"],
                                              dtype="int16", always_2d=True)
        if rate != 8000:
            raise RuntimeError(f"unexpected sample rate {rate}")
        # Both sides into the one earpiece.
        mono = np.clip(audio.astype(np.int32).sum(axis=1), -32768, 32767).astype(np.int16)
        if self._host.slic.off_hook:
            self.play_to_idle_handset(mono)
            where = "playing into the handset"
        else:
            self._announce_clip = mono
            self.announce_on_lift = "clip"
            self._host.slic.short_ring()
            where = "the handset rings briefly; lift it to listen"
        await store.append_audit("played", actor=str(request.get("actor", "cli")),
                                 reference=reference, details={"to": "handset"})
        return {"reference": format_reference(reference), "seconds": len(mono) / 8000,
                "message": where}

    async def run_button_events(self) -> None:
        while True:
            event = await self._host.panel.events.get()
            if self._host.outbound.on_button(event):
                continue
            what = "last-call" if event.kind == "short" else "health"
            _LOGGER.info("front panel: %s press → %s", event.kind, what)
            if self.owner() is not None or self._host.slic.off_hook:
                await self._speak_to_shop(what)
            else:
                # On-hook: ring briefly; the announcement waits until the handset is lifted.
                self.announce_on_lift = what
                self._host.slic.short_ring()

    async def run_hook_events(self) -> None:
        while True:
            event = await self._host.slic.events.get()
            call = self.owner()
            if call is None:
                if self._host.outbound.on_idle_hook(event):
                    continue
                _LOGGER.info("handset %s while idle", event.kind)
                if event.kind == "off_hook" and self.announce_on_lift:
                    what, self.announce_on_lift = self.announce_on_lift, None
                    await self._host.slic.stop_ringing()
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
