"""The outbound call flow against in-memory ports (issue 9): digits, outcomes, recording order.

The ports are the flow's seams, not hardware; the whole daemon on the simulator is exercised in
tests/system/test_outbound.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.call.events import (
    AgentOnHook,
    CallerHungUp,
    DigitDialled,
    KeyPressed,
    LineProgress,
    OutboundEvent,
    PlaybackDone,
    RecordRequested,
)
from appliance.call.flow import RecordingInfo
from appliance.call.outbound_flow import (
    INDEX_OUTCOME,
    OUTBOUND_OUTCOMES,
    TRANSITIONS,
    OutboundCall,
    OutboundPolicy,
    OutboundPorts,
    OutboundResult,
    OutboundState,
)
from appliance.store.db import OUTCOMES

from ..policies import outbound_policy

TIMEOUT_S = 5.0
FAST = outbound_policy(interdigit_timeout_s=0.2, offhook_warning_s=0.3, howler_s=0.2,
                       no_answer_s=2.0, failure_listen_s=0.2)


class Rig:
    """Every port of the flow, logging what the flow asks for."""

    def __init__(self, dial_result: str = "dialled", free_line: bool = True) -> None:
        self.log: list[str] = []
        self.dial_result = dial_result
        self.free_line = free_line
        self.rows: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[str, str]] = []
        self.audits: list[dict[str, Any]] = []
        self.tones: list[str] = []
        self.recording = False
        self.queue: asyncio.Queue[OutboundEvent] = asyncio.Queue()
        self.changed = asyncio.Event()
        self.saved: dict[str, Any] = {}

    # line
    async def seize(self) -> str | None:
        self.log.append("line:seize")
        return "main" if self.free_line else None

    async def dial(self, reference: str, number: str) -> str:
        assert reference in self.rows, "the row exists before the modem dials"
        self.log.append(f"line:dial {number}")
        return self.dial_result

    async def hang_up(self) -> None:
        self.log.append("line:hang_up")

    # earpiece
    def tone(self, kind: str) -> None:
        self.tones.append(kind)
        self.log.append(f"tone:{kind}")
        self.changed.set()

    # media
    def play_to_line(self, token: str, *clips: np.ndarray) -> None:
        self.log.append(f"media:line {token}")
        self.changed.set()

    def play_to_handset(self, token: str, *clips: np.ndarray) -> None:
        self.log.append(f"media:handset {token}")
        self.changed.set()

    def bridge(self) -> None:
        self.log.append("media:bridge")
        self.changed.set()

    def unbridge(self) -> None:
        self.log.append("media:unbridge")

    async def start_recording(self) -> None:
        self.recording = True
        self.log.append("media:record")

    async def finish_recording(self) -> RecordingInfo | None:
        self.recording = False
        self.log.append("media:finish")
        return RecordingInfo(path="/x.flac", sha256="ab" * 32, bytes=10, duration_s=1.0)

    # store
    async def create_call(self, reference: str, **fields: Any) -> int:
        self.rows[reference] = dict(fields)
        self.log.append("store:create")
        return 1

    async def update_call(self, reference: str, **fields: Any) -> None:
        self.rows[reference].update(fields)

    async def add_event(self, reference: str, state: str, detail: str = "",
                        t: float | None = None) -> None:
        self.events.append((state, detail))
        self.changed.set()

    async def append_audit(self, action: str, *, actor: str, reference: str | None = None,
                           details: Mapping[str, Any] | None = None) -> str:
        self.audits.append({"action": action, **(details or {})})
        return "h"

    # prompts
    notice = np.zeros(8, dtype=np.int16)
    notice_version = "v1"

    def clip(self, name: str) -> np.ndarray:
        return np.zeros(8, dtype=np.int16)

    def notice_layer(self, layer: str) -> np.ndarray:
        return np.zeros(8, dtype=np.int16)

    def layer_version(self, layer: str) -> str:
        return f"{layer}-v1"

    def reference_audio(self, reference: str) -> np.ndarray:
        return np.zeros(8, dtype=np.int16)

    # panel
    def show(self, state: str) -> None:
        self.log.append(f"panel:{state}")

    def set_recording(self, on: bool) -> None:
        self.log.append(f"panel:recording {on}")

    # references
    async def allocate(self) -> str:
        return "12345678"

    # records (the call's record file, docs/records.md)
    async def save(self, row: Mapping[str, Any]) -> None:
        self.log.append(f"records:save {row['outcome']}")
        self.saved = dict(row)

    def start(self, policy: OutboundPolicy = FAST) -> tuple[OutboundCall,
                                                           asyncio.Task[OutboundResult]]:
        ports = OutboundPorts(line=self, earpiece=self, media=self, store=self, prompts=self,
                              panel=self, references=self, records=self)
        call = OutboundCall(ports, policy, self.queue)
        return call, asyncio.create_task(call.run())

    def put(self, *events: OutboundEvent) -> None:
        for event in events:
            self.queue.put_nowait(event)

    async def until(self, predicate: Any) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    def states(self) -> list[str]:
        return [state for state, _ in self.events]


def digits(number: str, source: str = "dtmf") -> list[DigitDialled]:
    return [DigitDialled(d, source) for d in number]


async def finish(task: asyncio.Task[OutboundResult]) -> OutboundResult:
    return await asyncio.wait_for(task, TIMEOUT_S)


def test_transition_table_is_closed() -> None:
    for state, targets in TRANSITIONS.items():
        assert state is OutboundState.ENDED or targets
        assert all(t in TRANSITIONS for t in targets)
    assert OutboundState.ENDED in TRANSITIONS[OutboundState.FINALIZING]


def test_every_outcome_maps_onto_the_index_vocabulary() -> None:
    assert set(INDEX_OUTCOME) == set(OUTBOUND_OUTCOMES)
    assert set(INDEX_OUTCOME.values()) <= set(OUTCOMES)


async def test_answered_call_unrecorded_by_default() -> None:
    rig = Rig()
    call, task = rig.start()
    await rig.until(lambda: "tone:dial" in rig.log)
    rig.put(*digits("0612"), DigitDialled("#"))
    await rig.until(lambda: call.state is OutboundState.CALLING)
    rig.put(LineProgress("ringback", "modem"), LineProgress("answered", "inband"))
    await rig.until(lambda: call.state is OutboundState.CONNECTED)
    rig.put(DigitDialled("*"), DigitDialled("*"), RecordRequested("button"), AgentOnHook())
    result = await finish(task)
    assert result.outcome == "answered"
    assert result.number == "0612"
    assert result.recording_decision == "none"
    row = rig.rows["12345678"]
    assert row["direction"] == "out"
    assert row["caller_number"] == "0612"
    assert row["outcome"] == "bridged"
    assert row["recording_decision"] == "none"
    assert row["answer_at"] is not None
    assert row["end_at"] >= row["answer_at"]
    assert "media:record" not in rig.log
    assert rig.states().count("record-refused") == 2
    log = rig.log
    assert log.index("tone:silence") < log.index("line:seize") < log.index("store:create")
    assert log.index("store:create") < log.index("line:dial 0612") < log.index("media:bridge")
    assert log[-1] != "line:dial 0612"
    assert "line:hang_up" in log
    assert ("outcome", "answered") in rig.events
    assert rig.audits[-1]["result"] == "answered"
    # The record file holds the finalized row, written just before the row was finalized.
    assert rig.saved == {**row, "reference": "12345678"}
    assert log.index("line:hang_up") < log.index("records:save bridged")


async def test_interdigit_timeout_completes_the_number() -> None:
    rig = Rig()
    _call, task = rig.start()
    rig.put(*digits("123", "pulse"))
    await rig.until(lambda: any(line.startswith("line:dial") for line in rig.log))
    assert "line:dial 123" in rig.log
    rig.put(AgentOnHook())
    result = await finish(task)
    assert result.outcome == "abandoned"  # put down before the answer
    assert rig.rows["12345678"]["outcome"] == "abandoned"


async def test_hang_up_while_dialling_leaves_no_row() -> None:
    rig = Rig()
    _call, task = rig.start()
    rig.put(*digits("06"), AgentOnHook())
    result = await finish(task)
    assert result.reference is None
    assert result.outcome == "abandoned"
    assert rig.rows == {}
    assert "line:seize" not in rig.log


async def test_left_off_hook_howler_then_silence_no_line() -> None:
    rig = Rig()
    _call, task = rig.start()
    await rig.until(lambda: "tone:howler" in rig.log)
    assert "panel:offhook-warning" in rig.log
    await rig.until(lambda: rig.tones[-1] == "silence")
    assert not task.done(), "silent until the handset is put down"
    rig.put(AgentOnHook())
    result = await finish(task)
    assert result.reference is None
    assert "line:seize" not in rig.log
    assert rig.tones[:2] == ["dial", "howler"]


@pytest.mark.parametrize(("dial_result", "outcome", "index", "after"), [
    ("busy", "busy", "missed", "busy"),
    ("no-dialtone", "no-dialtone", "error", "congestion"),
    ("no-answer", "no-answer", "missed", "busy"),
    ("failed", "error", "error", "congestion"),
])
async def test_modem_results(dial_result: str, outcome: str, index: str, after: str) -> None:
    rig = Rig(dial_result)
    _call, task = rig.start()
    rig.put(*digits("55"), DigitDialled("#"))
    await rig.until(lambda: after in rig.tones)
    assert not task.done(), "the shop hears the tone until it hangs up"
    rig.put(AgentOnHook())
    result = await finish(task)
    assert result.outcome == outcome
    assert rig.rows["12345678"]["outcome"] == index
    assert (outcome, f"modem: {dial_result}") in rig.events
    assert "media:bridge" not in rig.log
    assert "line:hang_up" in rig.log


async def test_busy_reported_in_band_after_dialling() -> None:
    rig = Rig()
    _call, task = rig.start()
    rig.put(*digits("7"), DigitDialled("#"))
    await rig.until(lambda: "media:bridge" in rig.log)
    rig.put(CallerHungUp("busy"))
    await rig.until(lambda: "busy" in rig.tones)
    rig.put(AgentOnHook())
    result = await finish(task)
    assert result.outcome == "busy"
    assert "busy" in rig.states()


async def test_network_gives_up_after_ringback_is_no_answer() -> None:
    rig = Rig()
    _call, task = rig.start()
    rig.put(*digits("7"), DigitDialled("#"))
    await rig.until(lambda: "media:bridge" in rig.log)
    rig.put(LineProgress("ringback", "inband"), LineProgress("busy", "inband"), AgentOnHook())
    result = await finish(task)
    assert result.outcome == "no-answer"


async def test_no_free_line_gives_congestion_and_no_row() -> None:
    rig = Rig(free_line=False)
    _call, task = rig.start()
    rig.put(*digits("7"), DigitDialled("#"))
    await rig.until(lambda: "congestion" in rig.tones)
    rig.put(AgentOnHook())
    result = await finish(task)
    assert result.outcome == "no-line"
    assert rig.rows == {}


@pytest.mark.parametrize("ask", ["button", "**"])
async def test_recording_only_after_notice_to_both_sides(ask: str) -> None:
    rig = Rig()
    policy = outbound_policy(interdigit_timeout_s=0.2, record=True)
    call, task = rig.start(policy)
    rig.put(*digits("1"), DigitDialled("#"))
    await rig.until(lambda: call.state is OutboundState.CALLING)
    rig.put(RecordRequested("button"))  # before the answer: ignored
    rig.put(LineProgress("answered", "inband"))
    await rig.until(lambda: call.state is OutboundState.CONNECTED)
    rig.put(*(digits("**") if ask == "**" else [RecordRequested("button")]))
    await rig.until(lambda: "media:line notice" in rig.log)
    assert "media:handset notice-shop" in rig.log
    assert "media:record" not in rig.log, "nothing recorded before the notice has played"
    rig.put(PlaybackDone("notice"))
    await rig.until(lambda: "media:record" in rig.log)
    rig.put(CallerHungUp("busy"))
    await rig.until(lambda: "busy" in rig.tones)
    rig.put(AgentOnHook())
    result = await finish(task)
    log = rig.log
    assert log.index("media:unbridge") < log.index("media:line notice") < log.index(
        "media:record")
    assert log.index("media:record") < len(log) - 1 - log[::-1].index("media:bridge")
    assert result.recording_decision == "recorded"
    row = rig.rows["12345678"]
    assert row["notice_completed"] == 1
    assert row["record_start_at"] >= row["notice_end_at"] >= row["notice_start_at"]
    assert row["recording_sha256"] == "ab" * 32


async def connected_and_asked_to_record(rig: Rig) -> tuple[OutboundCall,
                                                             asyncio.Task[OutboundResult]]:
    """An answered outbound call whose shop has asked for recording: the notice plays."""
    call, task = rig.start(outbound_policy(interdigit_timeout_s=0.2, record=True))
    rig.put(*digits("1"), DigitDialled("#"))
    await rig.until(lambda: call.state is OutboundState.CALLING)
    rig.put(LineProgress("answered", "inband"), RecordRequested("button"))
    await rig.until(lambda: "media:line notice" in rig.log)
    return call, task


async def test_callee_opt_out_key_during_the_notice_means_no_recording() -> None:
    """The notice tells the callee how to refuse; on an outbound call that key works too."""
    rig = Rig()
    _call, task = await connected_and_asked_to_record(rig)
    rig.put(KeyPressed("9", "modem"))
    await rig.until(lambda: "media:line optout" in rig.log)
    assert "media:handset optout-shop" in rig.log  # the shop hears it was refused
    rig.put(PlaybackDone("notice"))  # late: from the notice the refusal cut off
    rig.put(PlaybackDone("optout"))
    await rig.until(lambda: rig.log[-1] == "media:bridge")
    rig.put(RecordRequested("button"))  # asking again does not override the callee
    await rig.until(lambda: "record-refused" in rig.states())
    rig.put(AgentOnHook())
    result = await finish(task)
    assert result.recording_decision == "declined"
    assert "media:record" not in rig.log
    row = rig.rows["12345678"]
    assert row["recording_decision"] == "declined"
    assert [(e["layer"], e["played"]) for e in json.loads(row["notice_layers"])] == [
        ("notice", "partial"), ("reference", "no"), ("reference", "full")]


async def test_callee_details_key_plays_the_second_layer_before_recording() -> None:
    rig = Rig()
    _call, task = await connected_and_asked_to_record(rig)
    rig.put(KeyPressed("0", "modem"))
    await rig.until(lambda: "details-requested" in rig.states())
    rig.put(PlaybackDone("notice"))
    await rig.until(lambda: "media:line details" in rig.log)
    assert "media:handset details-shop" in rig.log
    assert "media:record" not in rig.log, "the second layer is heard before recording"
    rig.put(PlaybackDone("details"))
    await rig.until(lambda: "media:record" in rig.log)
    rig.put(AgentOnHook())
    result = await finish(task)
    assert result.recording_decision == "recorded"
    layers = json.loads(rig.rows["12345678"]["notice_layers"])
    assert [(e["layer"], e["played"]) for e in layers] == [
        ("notice", "full"), ("reference", "full"), ("notice_details", "full")]
    assert layers[2]["version"] == "notice_details-v1"


async def test_shop_hangs_up_during_notice_nothing_recorded() -> None:
    rig = Rig()
    call, task = rig.start(outbound_policy(interdigit_timeout_s=0.2, record=True))
    rig.put(*digits("1"), DigitDialled("#"))
    await rig.until(lambda: call.state is OutboundState.CALLING)
    rig.put(LineProgress("answered", "inband"), RecordRequested("button"))
    await rig.until(lambda: "media:line notice" in rig.log)
    rig.put(AgentOnHook())
    result = await finish(task)
    assert result.recording_decision == "none"
    assert "media:record" not in rig.log


@given(number=st.text(alphabet="0123456789*", min_size=1, max_size=10))
def test_digits_then_hash_dial_exactly_that_number(number: str) -> None:
    async def scenario() -> OutboundResult:
        rig = Rig("busy")
        _call, task = rig.start(outbound_policy(interdigit_timeout_s=5.0, failure_listen_s=0.1))
        rig.put(*digits(number), DigitDialled("#"))
        await rig.until(lambda: "busy" in rig.tones)
        assert f"line:dial {number}" in rig.log
        rig.put(AgentOnHook())
        return await finish(task)

    assert asyncio.run(scenario()).number == number
