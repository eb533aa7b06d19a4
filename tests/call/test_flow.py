"""The inbound call flow against in-memory ports: the ordering invariants of docs/design.md §3.

These are the flow's own unit tests (the ports are the flow's seams, not hardware); the whole
daemon on the simulator is exercised in tests/system/.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

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
from appliance.call.flow import (
    NOT_RECORDED_NOTICE,
    TRANSITIONS,
    CallerInfo,
    CallPolicy,
    CallPorts,
    CallResult,
    CallState,
    InboundCall,
    RecordingInfo,
)
from appliance.errors import StoreError

from ..policies import call_policy, default_config

TIMEOUT_S = 5.0
#: The language a call speaks when its line names none (``device.language``).
LANGUAGE = default_config().device.language


class Log:
    def __init__(self) -> None:
        self.entries: list[str] = []

    def add(self, entry: str) -> None:
        self.entries.append(entry)

    def index(self, entry: str) -> int:
        return self.entries.index(entry)


class FakeLine:
    def __init__(self, log: Log, *, can_bridge: bool = True) -> None:
        self.log = log
        self.can_bridge = can_bridge

    async def answer(self) -> None:
        self.log.add("line:answer")

    async def hang_up(self) -> None:
        self.log.add("line:hang_up")


class FakeHandset:
    def __init__(self, log: Log) -> None:
        self.log = log
        self.off_hook = False
        self.available = True

    def start_ringing(self) -> None:
        self.log.add("handset:ring")

    async def stop_ringing(self) -> None:
        self.log.add("handset:stop")


class FakeMedia:
    def __init__(self, log: Log) -> None:
        self.log = log
        self.line_plays: list[str] = []
        self._recording = False
        self.bridged = False
        self.appended = asyncio.Event()

    def play_to_line(self, token: str, *clips: np.ndarray) -> None:
        self.line_plays.append(token)
        self.log.add(f"media:play:{token}")

    def queue_to_line(self, token: str, *clips: np.ndarray) -> None:
        self.line_plays.append(token)
        self.log.add(f"media:queue:{token}")
        self.appended.set()

    def monitor_line(self, on: bool) -> None:
        self.log.add(f"media:monitor:{on}")

    def line_tone(self, kind: str) -> None:
        self.log.add(f"media:tone:{kind}")

    def play_to_handset(self, token: str, *clips: np.ndarray) -> None:
        self.log.add(f"media:handset:{token}")

    def handset_tone(self, kind: str) -> None:
        self.log.add(f"media:handset-tone:{kind}")

    def whisper_to_handset(self, clip: np.ndarray) -> None:
        self.log.add("media:whisper")

    def watch_silence(self, seconds: float) -> None:
        self.log.add(f"media:silence:{seconds:g}")

    def bridge(self) -> None:
        self.bridged = True
        self.log.add("media:bridge")

    def unbridge(self) -> None:
        self.bridged = False

    async def start_recording(self) -> None:
        self._recording = True
        self.log.add("media:record")

    @property
    def recording(self) -> bool:
        return self._recording

    async def finish_recording(self) -> RecordingInfo | None:
        self._recording = False
        self.log.add("media:finish")
        return RecordingInfo(path="/x.flac", sha256="ab" * 32, bytes=10, duration_s=1.0)

    async def discard_recording(self) -> None:
        self._recording = False
        self.log.add("media:discard")


class FakeStore:
    def __init__(self, log: Log, informed: Mapping[str, float] | None = None) -> None:
        self.log = log
        self.rows: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[str, str]] = []
        self.audit: list[str] = []
        #: caller number → ring time of an earlier call that heard the whole first layer.
        self.informed = dict(informed or {})
        self.lookups: list[tuple[str, float]] = []

    def last_informed_call(self, number: str, since: float) -> Mapping[str, Any] | None:
        self.lookups.append((number, since))
        ring_at = self.informed.get(number)
        if ring_at is None or ring_at < since:
            return None
        return {"reference": "87654321", "ring_at": ring_at}

    async def create_call(self, reference: str, **fields: Any) -> int:
        self.log.add("store:create")
        self.rows[reference] = dict(fields)
        return 1

    async def update_call(self, reference: str, **fields: Any) -> None:
        self.rows[reference].update(fields)

    async def add_event(self, reference: str, state: str, detail: str = "",
                        t: float | None = None) -> None:
        self.events.append((state, detail))

    async def append_audit(self, action: str, *, actor: str, reference: str | None = None,
                           details: Mapping[str, Any] | None = None) -> str:
        self.audit.append(action)
        return "0" * 64


class FakePrompts:
    notice = np.zeros(80, dtype=np.int16)
    notice_version = "v1"

    def notice_layer(self, layer: str) -> np.ndarray:
        return np.zeros(80, dtype=np.int16)

    def layer_version(self, layer: str) -> str:
        return f"{layer}-v1"

    def clip(self, name: str) -> np.ndarray:
        return np.zeros(8, dtype=np.int16)

    def reference_audio(self, reference: str) -> np.ndarray:
        return np.zeros(16, dtype=np.int16)


class FakePanel:
    def __init__(self) -> None:
        self.recording: list[bool] = []

    def show(self, state: str) -> None:
        pass

    def set_recording(self, on: bool) -> None:
        self.recording.append(on)


class Harness:
    def __init__(self, policy: CallPolicy | None = None, *, can_bridge: bool = True,
                 caller: CallerInfo | None = None,
                 informed: Mapping[str, float] | None = None) -> None:
        self.log = Log()
        self.events: asyncio.Queue[CallEvent] = asyncio.Queue()
        self.handset = FakeHandset(self.log)
        self.media = FakeMedia(self.log)
        self.store = FakeStore(self.log, informed)
        self.panel = FakePanel()
        self.states: list[str] = []
        self._seen: dict[str, asyncio.Event] = {}
        ports = CallPorts(line=FakeLine(self.log, can_bridge=can_bridge), handset=self.handset,
                          media=self.media, store=self.store, prompts=FakePrompts(),
                          panel=self.panel)
        self.call = InboundCall(
            "12345678",
            caller or CallerInfo(line="main", language=LANGUAGE, number="+3612345"),
            ports,
            policy or call_policy(agent_timeout_s=0.2, voicemail_max_s=0.2), self.events,
            observer=self._observe,
        )
        self.task: asyncio.Task[CallResult] = asyncio.create_task(self.call.run())

    def _observe(self, reference: str, state: str, detail: str) -> None:
        self.states.append(state)
        self._seen.setdefault(state, asyncio.Event()).set()

    async def until_state(self, state: str) -> None:
        await asyncio.wait_for(self._seen.setdefault(state, asyncio.Event()).wait(), TIMEOUT_S)

    def post(self, event: CallEvent) -> None:
        self.events.put_nowait(event)

    async def drain(self) -> None:
        """Return once the call has handled every event posted so far (a key nobody uses is
        posted last, and its dtmf event awaited)."""
        self.post(KeyPressed("5"))
        async with asyncio.timeout(TIMEOUT_S):
            while ("dtmf", "5 (modem)") not in self.store.events:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        self.store.events.remove(("dtmf", "5 (modem)"))

    def layers(self) -> list[dict[str, str]]:
        """The call's stored notice proof (``notice_layers``), decoded."""
        return json.loads(self.store.rows["12345678"]["notice_layers"])

    def shop_hangs_up(self) -> None:
        """The shop hangs up while bridged; the caller hears the reference and goodbye."""
        self.post(AgentOnHook())
        self.post(PlaybackDone("farewell"))

    def finish_notice(self) -> None:
        """The first layer and the reference have been played out."""
        self.post(PlaybackDone("notice"))
        self.post(PlaybackDone("reference"))

    async def result(self) -> CallResult:
        # Not wait_for: on a timeout it cancels the call, whose finalization then returns a
        # result, and a call that hung would pass.
        done, _ = await asyncio.wait({self.task}, timeout=TIMEOUT_S)
        assert done, "the call did not end by itself"
        return self.task.result()


def test_transition_table_is_closed() -> None:
    for state, targets in TRANSITIONS.items():
        assert state not in targets
        if state is not CallState.ENDED:
            assert CallState.FINALIZING in targets or state is CallState.FINALIZING


async def test_answered_call_row_before_answer_record_after_notice() -> None:
    h = Harness()
    await h.until_state("notice")
    assert h.log.index("store:create") < h.log.index("line:answer")
    assert "media:record" not in h.log.entries
    h.finish_notice()
    await h.until_state("ringing-agent")
    assert h.log.index("media:record") > h.log.index("media:play:notice")
    h.handset.off_hook = True
    h.post(AgentOffHook())
    await h.until_state("bridged")
    h.post(CallerHungUp("busy"))
    result = await h.result()
    assert result.outcome == "bridged"
    assert result.recording_decision == "recorded"
    assert result.notice_completed
    row = h.store.rows["12345678"]
    assert row["outcome"] == "bridged"
    assert row["recording_sha256"] == "ab" * 32
    assert h.store.audit == ["call-finalized"]
    assert h.panel.recording[0] is True
    assert h.panel.recording[-1] is False
    assert h.states[-1] == "ended"


async def test_optout_during_notice_never_records_but_speaks_reference() -> None:
    h = Harness()
    await h.until_state("notice")
    h.post(KeyPressed("9"))
    await h.until_state("recording-declined")
    # The first layer is cut: the confirmation, then the reference (not heard yet).
    assert h.media.line_plays == ["notice", "reference", "optout", "reference"]
    h.post(PlaybackDone("notice"))  # late: from the prompt that was replaced
    h.post(PlaybackDone("optout"))
    h.post(PlaybackDone("reference"))
    await h.until_state("ringing-agent")
    h.handset.off_hook = True
    h.post(AgentOffHook())
    await h.until_state("bridged")
    h.shop_hangs_up()
    result = await h.result()
    assert result.recording_decision == "declined"
    assert "media:record" not in h.log.entries
    assert result.recording is None


async def test_hangup_during_notice_is_abandoned_unrecorded() -> None:
    h = Harness()
    await h.until_state("notice")
    h.post(CallerHungUp("busy"))
    result = await h.result()
    assert result.outcome == "abandoned"
    assert not result.notice_completed
    assert result.recording_decision == "none"
    assert "media:record" not in h.log.entries
    assert "line:hang_up" in h.log.entries


async def test_agent_lifting_during_notice_hears_whisper_then_is_bridged() -> None:
    h = Harness()
    await h.until_state("notice")
    h.handset.off_hook = True
    h.post(AgentOffHook())
    await h.until_state("agent-off-hook")
    assert "media:handset:whisper" in h.log.entries
    assert not h.media.bridged
    h.finish_notice()
    await h.until_state("bridged")
    assert h.log.index("media:record") < h.log.index("media:bridge")
    h.shop_hangs_up()
    assert (await h.result()).outcome == "bridged"


async def test_nobody_answers_voicemail_then_goodbye() -> None:
    h = Harness()
    await h.until_state("notice")
    h.finish_notice()
    await h.until_state("voicemail")
    h.post(PlaybackDone("voicemail"))
    await h.until_state("voicemail-recording")
    h.post(CallerHungUp("busy"))
    result = await h.result()
    assert result.outcome == "voicemail"
    assert result.recording_decision == "recorded"


async def test_a_line_that_cannot_bridge_takes_a_message_without_ringing_the_shop() -> None:
    # Issue 3 item 2: a half-duplex modem — notice, reference, then a message; the shop's
    # handset is never rung (it could not be heard), even if it is lifted meanwhile.
    h = Harness(can_bridge=False)
    await h.until_state("notice")
    h.handset.off_hook = True
    h.post(AgentOffHook())
    h.finish_notice()
    await h.until_state("voicemail")
    assert "handset:ring" not in h.log.entries
    assert "media:handset:whisper" not in h.log.entries
    assert "agent_answer_at" not in h.store.rows["12345678"]
    assert h.log.index("media:record") < h.log.index("media:play:voicemail")
    h.post(PlaybackDone("voicemail"))
    await h.until_state("voicemail-recording")
    h.post(CallerHungUp("silence"))
    result = await h.result()
    assert result.outcome == "voicemail"
    assert result.recording_decision == "recorded"
    assert not h.media.bridged
    assert ("voicemail", "the line cannot carry the shop's voice (no full duplex)") in \
        h.store.events


async def test_a_line_that_cannot_bridge_respects_the_opt_out() -> None:
    h = Harness(can_bridge=False)
    await h.until_state("notice")
    h.post(KeyPressed("9"))
    await h.until_state("recording-declined")
    h.finish_notice()
    await h.until_state("no-answer")
    assert "voicemail" not in h.states
    h.post(PlaybackDone("goodbye"))
    result = await h.result()
    assert result.outcome == "missed"
    assert result.recording_decision == "declined"
    assert "media:record" not in h.log.entries
    assert "handset:ring" not in h.log.entries


async def test_line_lost_while_bridged_still_finalizes() -> None:
    h = Harness()
    await h.until_state("notice")
    h.finish_notice()
    h.handset.off_hook = True
    h.post(AgentOffHook())
    await h.until_state("bridged")
    h.post(LineLost("port vanished"))
    result = await h.result()
    assert result.outcome == "interrupted"
    assert result.recording is not None
    assert "media:finish" in h.log.entries


async def test_max_call_length_ends_the_call() -> None:
    h = Harness(call_policy(max_call_s=0.3, agent_timeout_s=10))
    await h.until_state("notice")
    h.finish_notice()
    h.handset.off_hook = True
    h.post(AgentOffHook())
    result = await h.result()
    assert result.outcome == "bridged"
    assert any("maximum call length" in detail for _, detail in h.store.events)


@pytest.mark.parametrize("key_after", ["nothing", "first layer"])
async def test_details_key_at_the_last_moment_plays_the_whole_second_layer_first(
        key_after: str) -> None:
    # The caller presses the details key as the first layer ends: the key may be detected
    # just before or just after its last sample. Either way the reference (already queued)
    # and then the whole second layer are played, and only then does recording start.
    h = Harness()
    await h.until_state("notice")
    if key_after == "first layer":
        h.post(PlaybackDone("notice"))
    h.post(KeyPressed("0"))
    if key_after == "nothing":
        h.post(PlaybackDone("notice"))
    h.post(PlaybackDone("reference"))
    await h.until_state("details-requested")
    await h.drain()
    assert h.media.line_plays == ["notice", "reference", "details"]
    assert "media:record" not in h.log.entries
    assert "notice-finished" not in h.states
    h.post(PlaybackDone("details"))
    await h.until_state("ringing-agent")
    assert h.log.index("media:record") > h.log.index("media:queue:details")
    assert [(e["layer"], e["played"]) for e in h.layers()] == [
        ("notice", "full"), ("reference", "full"), ("notice_details", "full")]
    assert h.layers()[2]["version"] == "notice_details-v1"
    h.handset.off_hook = True
    h.post(AgentOffHook())
    await h.until_state("bridged")
    h.post(CallerHungUp("busy"))
    assert (await h.result()).recording_decision == "recorded"


async def test_details_key_twice_plays_the_second_layer_once() -> None:
    h = Harness()
    await h.until_state("notice")
    h.post(KeyPressed("0"))
    await h.until_state("details-requested")
    h.post(KeyPressed("1"))  # another key between, so the two 0s are two presses
    h.post(KeyPressed("0"))
    await h.drain()
    assert h.media.line_plays.count("details") == 1
    h.post(CallerHungUp("busy"))
    await h.result()


async def test_optout_in_the_second_layer_stops_it_and_never_records() -> None:
    h = Harness()
    await h.until_state("notice")
    h.post(KeyPressed("0"))
    h.finish_notice()
    await h.until_state("details-requested")
    await h.drain()
    h.post(KeyPressed("9"))
    await h.until_state("recording-declined")
    assert ("recording-declined", "opt-out key during notice_details") in h.store.events
    # The reference was heard already: only the confirmation replaces the second layer.
    assert h.media.line_plays == ["notice", "reference", "details", "optout"]
    h.post(PlaybackDone("details"))  # late, from the prompt that was replaced: ignored
    await h.drain()
    assert "notice-finished" not in h.states
    h.post(PlaybackDone("optout"))
    await h.until_state("ringing-agent")
    assert [(e["layer"], e["played"]) for e in h.layers()] == [
        ("notice", "full"), ("reference", "full"), ("notice_details", "partial")]
    h.post(CallerHungUp("busy"))
    result = await h.result()
    assert result.recording_decision == "declined"
    assert "media:record" not in h.log.entries


async def test_optout_in_the_first_layer_is_proven_as_a_partial_first_layer() -> None:
    h = Harness()
    await h.until_state("notice")
    h.post(KeyPressed("9"))
    await h.until_state("recording-declined")
    assert ("recording-declined", "opt-out key during notice") in h.store.events
    h.post(KeyPressed("0"))  # details after refusing: nothing to explain, not played
    h.post(PlaybackDone("optout"))
    h.post(PlaybackDone("reference"))
    await h.until_state("notice-finished")
    assert "details" not in h.media.line_plays
    assert [(e["layer"], e["played"]) for e in h.layers()] == [
        ("notice", "partial"), ("reference", "no"), ("reference", "full")]
    assert h.store.rows["12345678"]["notice_first_heard"] == 0
    h.post(CallerHungUp("busy"))
    await h.result()


async def test_repeat_key_reads_the_reference_again_before_recording() -> None:
    h = Harness()
    await h.until_state("notice")
    h.post(KeyPressed("*"))  # during the first layer: the reference is next anyway
    await h.drain()
    assert h.media.line_plays == ["notice", "reference"]
    h.post(PlaybackDone("notice"))
    h.post(KeyPressed("*"))  # during the reference: once more after it
    await h.until_state("reference-repeated")
    assert h.media.line_plays == ["notice", "reference", "repeat-1"]
    h.post(PlaybackDone("reference"))
    await h.drain()
    assert "media:record" not in h.log.entries
    h.post(PlaybackDone("repeat-1"))
    await h.until_state("ringing-agent")
    assert h.layers()[-1] == {"layer": "reference", "played": "full"}
    # While waiting for the shop, the repeat key reads it again, then ringback resumes.
    assert h.media.line_plays[-1] == "connecting"
    h.post(PlaybackDone("connecting"))
    h.post(KeyPressed("*"))
    await h.drain()
    assert h.media.line_plays[-1] == "repeat"
    h.post(PlaybackDone("repeat"))
    await h.drain()
    assert h.log.entries.count("media:tone:ringback") == 2
    h.post(CallerHungUp("busy"))
    await h.result()


async def test_repeat_key_before_the_voicemail_beep_reads_the_reference() -> None:
    h = Harness()
    await h.until_state("notice")
    h.finish_notice()
    await h.until_state("voicemail")
    h.post(KeyPressed("*"))
    await h.until_state("reference-repeated")
    assert h.media.line_plays[-2:] == ["voicemail", "voicemail"]  # reference + prompt again
    h.post(PlaybackDone("voicemail"))
    await h.until_state("voicemail-recording")
    h.post(CallerHungUp("busy"))
    assert (await h.result()).outcome == "voicemail"


async def test_repeat_key_on_hold_reads_the_reference() -> None:
    h = Harness(call_policy(agent_timeout_s=5, hold_max_s=5, hold_reassure_s=5))
    h.handset.available = False
    await h.until_state("notice")
    h.finish_notice()
    await h.until_state("holding")
    h.post(KeyPressed("*"))
    await h.until_state("reference-repeated")
    assert h.media.line_plays[-2:] == ["hold", "hold"]
    h.post(CallerHungUp("busy"))
    await h.result()


DAY_S = 86400.0


@pytest.mark.parametrize(
    ("caller", "heard_days_ago", "form"),
    [
        (CallerInfo(line="main", language=LANGUAGE, number="+3612345"), 3, "short"),
        # Outside the window, then another number.
        (CallerInfo(line="main", language=LANGUAGE, number="+3612345"), 31, "full"),
        (CallerInfo(line="main", language=LANGUAGE, number="+3699999"), 3, "full"),
        # A withheld number never gets the short form, whatever the exchange sent along.
        (CallerInfo(line="main", language=LANGUAGE, number="+3612345", withheld=True), 3, "full"),
        (CallerInfo(line="main", language=LANGUAGE, number=None), 3, "full"),
    ],
)
async def test_returning_caller_form(caller: CallerInfo, heard_days_ago: float,
                                     form: str) -> None:
    h = Harness(call_policy(returning_caller_days=30), caller=caller,
                informed={"+3612345": time.time() - heard_days_ago * DAY_S})
    await h.until_state("notice")
    row = h.store.rows["12345678"]
    assert row["notice_form"] == form
    first = "notice_short" if form == "short" else "notice"
    assert row["notice_version"] == f"{first}-v1"
    h.finish_notice()
    await h.until_state("notice-finished")
    assert h.layers()[0] == {"layer": first, "version": f"{first}-v1", "played": "full"}
    # Only a full first layer heard in full makes the next call a returning caller's.
    assert h.store.rows["12345678"]["notice_first_heard"] == int(form == "full")
    if form == "short":
        assert any(state == "notice-form" and "87654321" in detail
                   for state, detail in h.store.events)
    if caller.withheld or caller.number is None:
        assert h.store.lookups == []
        assert row["notice_form_reason"] == "number withheld or unknown"
    h.post(CallerHungUp("busy"))
    await h.result()


async def test_returning_caller_form_is_off_by_default() -> None:
    h = Harness(informed={"+3612345": time.time()})
    await h.until_state("notice")
    assert h.store.rows["12345678"]["notice_form"] == "full"
    assert h.store.lookups == []
    h.post(CallerHungUp("busy"))
    await h.result()


async def bridged_then_shop_hangs_up(policy: CallPolicy | None = None) -> Harness:
    """A call through the notice to the shop, which then hangs up first."""
    h = Harness(policy)
    await h.until_state("notice")
    h.finish_notice()
    h.handset.off_hook = True
    h.post(AgentOffHook())
    await h.until_state("bridged")
    h.post(AgentOnHook())
    return h


async def test_shop_hanging_up_first_gives_the_caller_the_reference_and_goodbye() -> None:
    h = await bridged_then_shop_hangs_up()
    await h.until_state("farewell")
    assert h.media.line_plays[-1] == "farewell"
    assert not h.media.bridged  # the caller hears the box, not the shop's dead handset
    await asyncio.sleep(0.05)
    assert "line:hang_up" not in h.log.entries  # not before the farewell has been played
    h.post(PlaybackDone("farewell"))
    result = await h.result()
    assert result.outcome == "bridged"
    assert h.states[-1] == "ended"
    assert ("ended", "bridged: shop hung up") in h.store.events


async def test_caller_hanging_up_during_the_farewell_ends_the_call() -> None:
    h = await bridged_then_shop_hangs_up()
    await h.until_state("farewell")
    h.post(CallerHungUp("busy"))
    assert (await h.result()).outcome == "bridged"


async def test_repeat_key_during_the_farewell_reads_the_reference_and_goodbye_again() -> None:
    h = await bridged_then_shop_hangs_up()
    await h.until_state("farewell")
    h.post(KeyPressed("*"))
    await h.until_state("reference-repeated")
    assert h.media.line_plays[-1] == "goodbye-repeat-1"
    h.post(PlaybackDone("farewell"))  # late: from the farewell the repeat cut off
    await h.drain()
    assert "line:hang_up" not in h.log.entries
    h.post(PlaybackDone("goodbye-repeat-1"))
    assert (await h.result()).outcome == "bridged"
    assert ("reference-repeated", "repeat key, before the goodbye") in h.store.events


async def test_repeat_key_during_the_no_answer_goodbye_reads_the_reference() -> None:
    h = Harness(call_policy(agent_timeout_s=0.05, voicemail=False))
    await h.until_state("notice")
    h.finish_notice()
    await h.until_state("no-answer")
    assert h.media.line_plays[-1] == "goodbye"
    h.post(KeyPressed("*"))
    await h.until_state("reference-repeated")
    assert h.media.line_plays[-1] == "goodbye-repeat-1"
    h.post(KeyPressed("*"))  # again, while the first repeat plays
    await h.drain()
    assert h.media.line_plays[-1] == "goodbye-repeat-2"
    h.post(PlaybackDone("goodbye"))
    h.post(PlaybackDone("goodbye-repeat-1"))
    await h.drain()
    assert "line:hang_up" not in h.log.entries
    h.post(PlaybackDone("goodbye-repeat-2"))
    result = await h.result()
    assert result.outcome == "missed"


async def test_farewell_can_be_turned_off() -> None:
    h = await bridged_then_shop_hangs_up(call_policy(reference_at_end=False))
    assert (await h.result()).outcome == "bridged"
    assert "farewell" not in h.media.line_plays


async def test_shop_lifting_early_hears_the_notice_and_a_cue_and_is_bridged_at_its_end() -> None:
    h = Harness()
    await h.until_state("notice")
    h.handset.off_hook = True
    h.post(AgentOffHook())
    await h.until_state("agent-off-hook")
    assert h.log.entries[-2:] == ["media:handset:whisper", "media:monitor:True"]
    h.finish_notice()
    await h.until_state("bridged")
    # No "connecting" prompt: the caller goes straight to the shop; the shop gets the cue.
    assert "connecting" not in h.media.line_plays
    assert h.log.index("media:whisper") > h.log.index("media:record")
    h.post(CallerHungUp("busy"))
    await h.result()


async def test_busy_handset_holds_the_caller_then_rings_when_free() -> None:
    h = Harness(call_policy(agent_timeout_s=5, hold_max_s=5, hold_reassure_s=0.05))
    h.handset.available = False
    await h.until_state("notice")
    assert "handset:ring" not in h.log.entries  # the other line's call has the handset
    h.finish_notice()
    await h.until_state("holding")
    assert h.media.line_plays[-1] == "hold"
    h.post(PlaybackDone("hold"))  # then, after hold_reassure_s, a reassurance
    async with asyncio.timeout(TIMEOUT_S):
        while h.media.line_plays.count("hold") < 2:  # noqa: ASYNC110 - fake has no event
            await asyncio.sleep(0.01)
    h.handset.available = True
    h.post(HandsetFree())
    await h.until_state("ringing-agent")
    assert "handset:ring" in h.log.entries
    h.handset.off_hook = True
    h.post(AgentOffHook())
    await h.until_state("bridged")
    h.shop_hangs_up()
    result = await h.result()
    assert result.outcome == "bridged"
    assert result.recording_decision == "recorded"


async def test_hold_too_long_goes_to_voicemail() -> None:
    h = Harness(call_policy(hold_max_s=0.2, voicemail_max_s=0.2))
    h.handset.available = False
    await h.until_state("notice")
    h.finish_notice()
    await h.until_state("voicemail")
    h.post(CallerHungUp("busy"))
    assert (await h.result()).outcome == "voicemail"


# --- a full disk (issue 15 item 1) -------------------------------------------------------------


class FullStore(FakeStore):
    """The index once the disk is full: every write after the row's creation fails."""

    def __init__(self, log: Log) -> None:
        super().__init__(log)
        self.full = False

    async def update_call(self, reference: str, **fields: Any) -> None:
        if self.full:
            raise StoreError("database or disk is full")
        await super().update_call(reference, **fields)

    async def add_event(self, reference: str, state: str, detail: str = "",
                        t: float | None = None) -> None:
        if self.full:
            raise StoreError("database or disk is full")
        await super().add_event(reference, state, detail, t)

    async def append_audit(self, action: str, *, actor: str, reference: str | None = None,
                           details: Mapping[str, Any] | None = None) -> str:
        if self.full:
            raise StoreError("database or disk is full")
        return await super().append_audit(action, actor=actor, reference=reference,
                                          details=details)


async def test_a_full_index_never_keeps_the_line_off_hook(caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    h = Harness(call_policy(agent_timeout_s=10))
    store = FullStore(h.log)
    store.rows = h.store.rows
    h.call.ports.store = store
    await h.until_state("notice")
    store.full = True
    h.finish_notice()
    await h.until_state("ringing-agent")
    h.post(CallerHungUp("busy"))
    result = await h.result()
    assert "line:hang_up" in h.log.entries, "on-hook whatever the index says"
    assert result.outcome == "missed"
    # What could not be written is handed back for the daemon to retry, nothing lost.
    assert result.unsaved is not None
    assert result.unsaved["outcome"] == "missed"
    assert result.unsaved["recording_decision"] == "recorded"
    assert result.unsaved["notice_end_at"] is not None  # a mid-call update kept for later
    assert result.unsaved_audit == {"outcome": "missed", "recording_decision": "recorded",
                                    "sha256": "ab" * 32}
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "12345678" in errors[0].getMessage()


async def test_too_little_space_answers_with_the_not_recorded_notice() -> None:
    h = Harness(call_policy(agent_timeout_s=0.2, record=False))
    await h.until_state("notice")
    h.finish_notice()
    await h.until_state("no-answer")
    h.post(PlaybackDone("goodbye"))
    result = await h.result()
    assert "media:record" not in h.log.entries
    assert result.recording_decision == "none"
    assert result.outcome == "missed", "no voicemail is asked for when nothing records it"
    row = h.store.rows["12345678"]
    assert row["notice_version"] == NOT_RECORDED_NOTICE
    assert ("not-recorded", "too little free space (recording.min_free_mb)") in h.store.events
    # The proof says which notice it was; such a call never counts as having heard the first
    # layer (a returning-caller short form must not follow from it).
    assert row["notice_form"] == "not_recorded"
    assert row["notice_first_heard"] == 0
    assert [(e["layer"], e["played"]) for e in json.loads(row["notice_layers"])] == [
        ("not_recorded", "full"), ("reference", "full")]


async def test_no_details_layer_when_the_call_is_not_recorded() -> None:
    h = Harness(call_policy(agent_timeout_s=0.2, record=False, returning_caller_days=30),
                informed={"+3612345": time.time()})
    await h.until_state("notice")
    assert h.store.lookups == []  # no short form either: the caller must hear "not recorded"
    h.post(KeyPressed("0"))
    await h.drain()
    assert "details" not in h.media.line_plays
    h.post(CallerHungUp("busy"))
    await h.result()


async def test_a_recording_that_fails_mid_call_turns_the_led_off_and_the_call_goes_on() -> None:
    h = Harness(call_policy(agent_timeout_s=10))
    await h.until_state("notice")
    h.finish_notice()
    await h.until_state("ringing-agent")
    h.post(RecordingFailed("No space left on device"))
    await h.until_state("recording-failed")
    assert h.panel.recording[-1] is False
    h.handset.off_hook = True
    h.post(AgentOffHook())
    await h.until_state("bridged")
    h.post(CallerHungUp("busy"))
    result = await h.result()
    assert result.outcome == "bridged"


async def test_daemon_stopping_during_the_notice_is_interrupted_not_abandoned() -> None:
    """Issue 15 item 9: SIGTERM during the notice; the caller did not hang up."""
    h = Harness()
    await h.until_state("notice")
    h.task.cancel()
    result = await h.result()
    assert result.outcome == "interrupted"
    assert h.store.rows["12345678"]["outcome"] == "interrupted"
    assert ("ended", "interrupted: daemon stopping") in h.store.events
    assert "line:hang_up" in h.log.entries


# --- the call's record file (docs/records.md, "The call record file") -------------------------


class FakeRecords:
    """The record port: keeps what it was given, in the shared log's order; fails on demand."""

    def __init__(self, log: Log, store: FakeStore) -> None:
        self.log = log
        self.store = store
        self.saved: list[dict[str, Any]] = []
        self.full = False

    async def save(self, row: Mapping[str, Any]) -> None:
        if self.full:
            raise StoreError("No space left on device")
        # What the index held when the record was written: still the row before its end.
        self.log.add(f"records:save (index outcome {self.store.rows['12345678']['outcome']})")
        self.saved.append(dict(row))


async def test_the_record_is_written_just_before_the_row_is_finalized() -> None:
    h = Harness(call_policy(agent_timeout_s=10))
    records = FakeRecords(h.log, h.store)
    h.call.ports.records = records
    await h.until_state("notice")
    h.post(KeyPressed("9"))  # opted out: nothing is recorded, the record is still written
    h.finish_notice()
    await h.until_state("ringing-agent")
    h.post(CallerHungUp("busy"))
    result = await h.result()
    assert "records:save (index outcome in_progress)" in h.log.entries
    (record,) = records.saved
    row = h.store.rows["12345678"]
    # The record is the whole finalized row: what the index says, and the caller.
    assert {k: record[k] for k in row} == row
    assert record["reference"] == "12345678"
    assert (record["outcome"], record["recording_decision"]) == (result.outcome, "declined")
    assert record["caller_number"] == "+3612345"
    assert json.loads(record["notice_layers"])[0]["layer"] == "notice"
    assert result.unsaved_record is None


async def test_a_record_that_cannot_be_written_is_handed_back() -> None:
    h = Harness(call_policy(agent_timeout_s=10))
    records = FakeRecords(h.log, h.store)
    records.full = True
    h.call.ports.records = records
    await h.until_state("notice")
    h.post(CallerHungUp("busy"))
    result = await h.result()
    assert result.outcome == "abandoned"
    assert "line:hang_up" in h.log.entries
    assert result.unsaved_record is not None
    assert result.unsaved_record["outcome"] == "abandoned"
    assert h.store.rows["12345678"]["outcome"] == "abandoned"  # the row is finalized anyway
