"""Faults and status: what the daemon shows of itself, computed from its parts.

Contract: the functions here only read the daemon (:class:`DaemonState`), except
:func:`show_faults`, which is the one place that turns faults into the fault LED's blink code
(the most serious first: :func:`fault_codes`) and into the bypass relay (the box is in the
line only while every line can answer, the shop can hear the caller and the index can take
the call's row). :func:`status_line` is systemd's ``STATUS=`` and the first line of
``appliance status``; :func:`status_dict` is the whole ``appliance status`` reply (JSON-able);
:func:`faults` is the readable list the spoken health summary reads out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from appliance.reference import format_reference

if TYPE_CHECKING:
    from appliance.audio.backend import HandsetAudio
    from appliance.config import Config
    from appliance.daemon.line_session import LineSession
    from appliance.daemon.outbound_control import OutboundController
    from appliance.daemon.panel_board import PanelBoard
    from appliance.daemon.storage import Storage
    from appliance.handset.slic import Slic
    from appliance.panel.panel import Panel
    from appliance.panel.relay import BypassRelay

#: Storage per hour of a 2-channel 8 kHz call by codec (docs/audio.md §5.2, ×2 channels).
BYTES_PER_HOUR: Final = {"wav": 115_200_000, "flac": 72_000_000, "opus": 19_000_000}
#: Less free space than this many hours of recording is the "disk-full" fault.
DISK_FULL_HOURS: Final = 24.0
#: systemd-timesyncd touches this file on every successful sync.
TIMESYNC_MARKER: Final = Path("/run/systemd/timesync/synchronized")


class LoopLag(Protocol):
    """The event loop's measured lag (``lifecycle.LoopLagMonitor``)."""

    @property
    def lag_s(self) -> float: ...
    @property
    def max_seen_lag_s(self) -> float: ...


class DaemonState(Protocol):
    """The parts of the daemon its status is read from (the daemon's ``Application``)."""

    @property
    def config(self) -> Config: ...
    @property
    def storage(self) -> Storage: ...
    @property
    def lines(self) -> Sequence[LineSession]: ...
    @property
    def panel(self) -> Panel: ...
    @property
    def panel_board(self) -> PanelBoard: ...
    @property
    def relay(self) -> BypassRelay: ...
    @property
    def slic(self) -> Slic: ...
    @property
    def handset_audio(self) -> HandsetAudio: ...
    @property
    def outbound(self) -> OutboundController: ...
    @property
    def speech_warning(self) -> str | None: ...
    @property
    def audio_fault(self) -> str | None:
        """Why the handset audio could not be opened (None: it is open)."""
    @property
    def handset_left_off_hook(self) -> bool: ...
    @property
    def loop_monitor(self) -> LoopLag | None: ...
    @property
    def started(self) -> bool:
        """Whether every part has started."""
    @property
    def uptime_s(self) -> float: ...


def clock_synced() -> bool | None:
    """Whether the system clock is NTP-synchronised (None when unknown)."""
    if TIMESYNC_MARKER.parent.exists():
        return TIMESYNC_MARKER.exists()
    return None


def fault_codes(daemon: DaemonState) -> list[str]:
    """Current faults as panel codes, most serious first."""
    storage, lines, cfg = daemon.storage, daemon.lines, daemon.config
    codes = []
    if storage.index_fault:
        codes.append("index-lost")
    if any(s.fault and s.fault_code == "line-off-hook" for s in lines):
        codes.append("line-off-hook")
    if any(s.fault and s.fault_code == "modem-missing" for s in lines):
        codes.append("modem-missing")
    if daemon.audio_fault or any(s.fault and s.fault_code == "audio-missing" for s in lines):
        codes.append("audio-missing")
    if any(s.fault and s.fault_code == "half-duplex" for s in lines):
        codes.append("half-duplex")
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(cfg.device.state_dir).free
        per_hour = BYTES_PER_HOUR.get(cfg.recording.codec, BYTES_PER_HOUR["wav"])
        if (free < DISK_FULL_HOURS * per_hour or storage.storage_error
                or not storage.recording_space_ok()):
            codes.append("disk-full")
    if daemon.speech_warning:
        codes.append("voice-missing")
    if clock_synced() is False:
        codes.append("clock-unsynced")
    if daemon.handset_left_off_hook:
        codes.append("handset-off-hook")
    return codes


def show_faults(daemon: DaemonState) -> None:
    """Show the current faults: the fault LED's code, the bypass relay, the idle panel."""
    lines, storage = daemon.lines, daemon.storage
    line_fault = next((s.fault for s in lines if s.fault), None)
    codes = fault_codes(daemon)
    # Blink the most serious fault (panel fault codes, hw/pinout.md).
    daemon.panel.set_fault(codes[0] if codes else None)
    # In the line only while every line can answer and the shop can hear the caller;
    # otherwise the relay drops and the shop has a plain phone.
    daemon.relay.set_healthy(line_fault is None and daemon.audio_fault is None
                             and storage.index_fault is None and not storage.index_unwritable
                             and all(s.modem is not None for s in lines))
    if line_fault is None and all(s.state == "idle" for s in lines):
        daemon.panel_board.report("daemon", "idle")


def faults(daemon: DaemonState) -> list[str]:
    """Human-readable faults (status, the spoken health summary)."""
    storage = daemon.storage
    out = [f"{s.line.name}: {s.fault}" for s in daemon.lines if s.fault]
    if daemon.audio_fault:
        out.append(f"handset audio: {daemon.audio_fault}")
    if storage.index_fault:
        out.append(f"index: {storage.index_fault}")
    if storage.storage_error:
        out.append(f"storage: {storage.storage_error}")
    codes = fault_codes(daemon) if daemon.started else []
    if "disk-full" in codes:
        out.append("disk nearly full")
    if "clock-unsynced" in codes:
        out.append("clock not synchronised")
    return out


def status_line(daemon: DaemonState) -> str:
    """One line: ``ready — …`` or ``fault — …`` (systemd's STATUS=)."""
    storage = daemon.storage
    shown = [s.fault for s in daemon.lines if s.fault]
    if storage.index_fault:
        shown.insert(0, f"index: {storage.index_fault}")
    if storage.storage_error:
        shown.insert(0, f"disk full: {storage.storage_error}")
    elif storage.opened and not storage.recording_space_ok():
        shown.insert(0, "disk full: calls are answered but not recorded "
                        "(free space below recording.min_free_mb)")
    if shown:
        return "fault — " + "; ".join(shown)
    last = storage.store.last_call() if storage.opened else None
    if last:
        when = time.strftime("%H:%M", time.localtime(last["ring_at"] or 0))
        return f"ready — last call {format_reference(last['reference'])} at {when}"
    return "ready — no calls yet"


def _line_status(session: LineSession) -> dict[str, Any]:
    modem = session.modem
    active = session.active
    return {
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
    }


def status_dict(daemon: DaemonState) -> dict[str, Any]:
    """Live state for ``appliance status`` (JSON-able); only once the daemon has started."""
    from appliance import __version__

    cfg = daemon.config
    disk = shutil.disk_usage(cfg.device.state_dir)
    bytes_per_hour = BYTES_PER_HOUR.get(cfg.recording.codec, BYTES_PER_HOUR["wav"])
    last = daemon.storage.store.last_call()
    monitor = daemon.loop_monitor
    slic, panel = daemon.slic, daemon.panel
    return {
        "version": __version__,
        "pid": os.getpid(),
        "uptime_s": round(daemon.uptime_s, 1),
        "status": status_line(daemon),
        "lines": [_line_status(session) for session in daemon.lines],
        "handset": {"off_hook": slic.off_hook, "ringing": slic.ringing,
                    "audio": dict(daemon.handset_audio.stats)},
        "panel": {led: str(panel.pattern(led))
                  for led in ("ready", "line", "recording", "fault")},
        "bypass_relay": "in line" if daemon.relay.energised else "bypassed",
        "faults": faults(daemon),
        "outbound": daemon.outbound.status(),
        "speech_warning": daemon.speech_warning,
        "last_call": None if last is None else {
            "reference": format_reference(last["reference"]),
            "ring_at": last["ring_at"], "caller": last["caller_number"],
            "outcome": last["outcome"], "recording_decision": last["recording_decision"]},
        "disk": {"free_bytes": disk.free,
                 "recording_hours_left": round(disk.free / bytes_per_hour, 1)},
        "loop_lag_ms": None if monitor is None else round(monitor.lag_s * 1000, 2),
        "loop_lag_max_ms": None if monitor is None else round(monitor.max_seen_lag_s * 1000, 2),
    }
