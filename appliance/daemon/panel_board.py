"""Panel aggregation: one front panel shared by every line and every call.

Contract: each line and each call reports its own state under its own key (a line name, a
call reference, ``"daemon"``); the LEDs show the most active state reported (in call >
voicemail > notice > waiting > ringing > idle), and the recording LED is lit while any key
records. A call sees the board through :meth:`PanelBoard.port` (the flow's ``PanelPort``).
"""

from __future__ import annotations

from typing import Final

from appliance.panel.panel import Panel, PanelState


class PanelBoard:
    """The one front panel shared by every line: shows the busiest line's state.

    Each line (and each call) reports its own state under a key; the LEDs show the most
    active one (in call > voicemail > notice > waiting > ringing > idle), and the recording
    LED is lit while any call records.
    """

    _STATES: Final = {
        "idle": PanelState.IDLE,
        "ended": PanelState.IDLE,
        "ringing": PanelState.RINGING,
        "answering": PanelState.NOTICE,
        "notice": PanelState.NOTICE,
        "holding": PanelState.WAITING_AGENT,
        "ringing-agent": PanelState.WAITING_AGENT,
        "bridged": PanelState.IN_CALL,
        "voicemail": PanelState.VOICEMAIL,
        "finalizing": PanelState.IN_CALL,
    }
    _PRIORITY: Final = (PanelState.IDLE, PanelState.RINGING, PanelState.WAITING_AGENT,
                        PanelState.NOTICE, PanelState.VOICEMAIL, PanelState.IN_CALL)

    def __init__(self, panel: Panel) -> None:
        self._panel = panel
        self._states: dict[str, PanelState] = {}
        self._recording: set[str] = set()

    def report(self, key: str, state: str) -> None:
        panel_state = self._STATES.get(state, PanelState.IN_CALL)
        if panel_state is PanelState.IDLE:
            self._states.pop(key, None)
        else:
            self._states[key] = panel_state
        shown = max(self._states.values(), key=self._PRIORITY.index, default=PanelState.IDLE)
        self._panel.show(shown)

    def recording(self, key: str, on: bool) -> None:
        if on:
            self._recording.add(key)
        else:
            self._recording.discard(key)
        self._panel.set_recording(bool(self._recording))

    def port(self, key: str) -> _PanelPort:
        return _PanelPort(self, key)


class _PanelPort:
    """One call's view of the shared panel (implements the flow's PanelPort)."""

    def __init__(self, board: PanelBoard, key: str) -> None:
        self._board = board
        self._key = key

    def show(self, state: str) -> None:
        self._board.report(self._key, state)

    def set_recording(self, on: bool) -> None:
        self._board.recording(self._key, on)
