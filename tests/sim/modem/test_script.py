"""Scripted calls (appliance/sim/modem/script.py): parsing, caller audio, and whole calls played
against a real host (the Modem driver) on the emulator."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from hypothesis import given
from hypothesis import strategies as st

from appliance.errors import ConfigError
from appliance.line.modem import (
    CallerIdReceived,
    Dtmf,
    LineEvent,
    Modem,
    RemoteHangup,
    Ring,
)
from appliance.sim.modem.emulator import SimModem
from appliance.sim.modem.link import sim_url
from appliance.sim.modem.script import (
    CallScript,
    ScriptedCall,
    ScriptedKey,
    audio_source,
    load_script,
    parse_script,
    play_script,
)

TIMEOUT_S = 5.0
EXAMPLE = Path(__file__).resolve().parents[3] / "docs" / "examples" / "sim-calls.toml"
_T = TypeVar("_T")


def _dominant_hz(samples: npt.NDArray[Any], rate: int = 8000) -> float:
    x = samples.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x - x.mean()))
    return float(np.argmax(spectrum) * rate / len(x))


# --- parsing ---------------------------------------------------------------------------------


def test_example_script_parses() -> None:
    script = load_script(EXAMPLE)
    first, second = script.calls
    assert first == ScriptedCall(at_s=1.0, number="3612345678", name="TEST CALLER",
                                 audio="tone:440", keys=(ScriptedKey(3.0, "9"),),
                                 hangup_after_s=20.0)
    assert second.withheld
    assert second.cid_before_first_ring
    assert second.max_rings == 3
    assert second.hangup_after_s is None
    assert script.base_dir == EXAMPLE.parent


def test_calls_are_ordered_by_start_time() -> None:
    script = parse_script({"calls": [{"at_s": 9, "number": "2"}, {"at_s": 1, "number": "1"}]})
    assert [c.number for c in script.calls] == ["1", "2"]


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({}, "calls"),
        ({"calls": []}, "calls"),
        ({"calls": [{}], "extra": 1}, "extra"),
        ({"calls": [{"at_s": -1}]}, "calls[0].at_s"),
        ({"calls": [{"at_s": "soon"}]}, "calls[0].at_s"),
        ({"calls": [{"cid": "during"}]}, "calls[0].cid"),
        ({"calls": [{"withheld": "yes"}]}, "calls[0].withheld"),
        ({"calls": [{"number": 3612345678}]}, "calls[0].number"),
        ({"calls": [{"audio": "tone:x"}]}, "calls[0].audio"),
        ({"calls": [{"audio": "tone:5000"}]}, "calls[0].audio"),
        ({"calls": [{"keys": [{"at_s": 1, "digit": "x"}]}]}, "calls[0].keys[0].digit"),
        ({"calls": [{"keys": [{"at_s": 1, "digit": "12"}]}]}, "calls[0].keys[0].digit"),
        ({"calls": [{"keys": [{"digit": "1"}]}]}, "calls[0].keys[0].at_s"),
        ({"calls": [{"keys": "123"}]}, "calls[0].keys"),
        ({"calls": [{"hangup_after": 3}]}, "calls[0].hangup_after"),
        ({"calls": [{"max_rings": 0}]}, "calls[0].max_rings"),
    ],
)
def test_bad_scripts_name_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_script(data)
    assert info.value.key == key


def test_missing_wav_and_bad_toml_are_reported(tmp_path: Path) -> None:
    script = tmp_path / "calls.toml"
    script.write_text('[[calls]]\naudio = "nope.wav"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_script(script)
    assert info.value.key == "calls[0].audio"
    script.write_text("[[calls]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="valid TOML"):
        load_script(script)
    with pytest.raises(ConfigError, match="readable"):
        load_script(tmp_path / "absent.toml")


@given(st.lists(st.sampled_from(sorted("0123456789*#ABCD")), min_size=1, max_size=8),
       st.lists(st.floats(0, 100), min_size=8, max_size=8))
def test_any_valid_keys_round_trip(digits: list[str], times: list[float]) -> None:
    keys = [{"at_s": t, "digit": d} for d, t in zip(digits, times, strict=False)]
    call = parse_script({"calls": [{"keys": keys}]}).calls[0]
    assert sorted(k.digit for k in call.keys) == sorted(digits)
    assert [k.at_s for k in call.keys] == sorted(k.at_s for k in call.keys)


# --- caller audio ----------------------------------------------------------------------------


def test_tone_source_is_continuous() -> None:
    source = audio_source("tone:440", Path())
    samples = np.concatenate([source(160) for _ in range(50)])  # phase kept across frames
    assert abs(_dominant_hz(samples) - 440) < 5
    # No click at frame joins: no step steeper than the sine's own slope (A·2πf/fs ≈ 3397).
    assert np.max(np.abs(np.diff(samples.astype(np.int32)))) <= 3400


def test_wav_source_resamples_then_falls_silent(tmp_path: Path) -> None:
    t = np.arange(16000) / 16000  # one second at 16 kHz, stereo
    tone = 0.5 * np.sin(2 * np.pi * 600 * t)
    soundfile.write(tmp_path / "voice.wav", np.stack([tone, tone], axis=1), 16000)
    source = audio_source("voice.wav", tmp_path)
    first = source(8000)
    assert abs(_dominant_hz(first) - 600) < 5
    assert np.max(np.abs(first)) > 10000
    assert not np.any(source(800)[-400:])  # after its one second: silence


def test_silence_source() -> None:
    assert not np.any(audio_source(None, Path())(160))


# --- whole calls -----------------------------------------------------------------------------


async def _next(modem: Modem, kind: type[_T]) -> _T:
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            event: LineEvent = await modem.events.get()
            if isinstance(event, kind):
                return event


async def test_script_plays_a_call_against_the_driver() -> None:
    sim = SimModem("conexant", ring_period_s=0.2, cid_delay_s=0.05)
    modem = Modem(sim_url(sim), command_timeout_s=1.0, cid_settle_s=0.01)
    await modem.open()
    script = CallScript((
        ScriptedCall(at_s=0.05, number="3612345678", name="TEST CALLER", audio="tone:440",
                     keys=(ScriptedKey(0.3, "5"),), hangup_after_s=0.8),
    ))  # fmt: skip
    events: list[tuple[str, dict[str, Any]]] = []
    player = asyncio.create_task(
        play_script(sim, script, on_event=lambda k, d: events.append((k, d))), name="script"
    )
    try:
        cid = await _next(modem, CallerIdReceived)
        assert (cid.caller.number, cid.caller.name) == ("3612345678", "TEST CALLER")
        await _next(modem, Ring)
        await modem.answer()
        received: list[npt.NDArray[np.int16]] = []
        await modem.start_duplex(received.append)
        modem.send_audio(np.full(1600, 8000, dtype=np.int16))  # 0.2 s the caller hears
        assert await _next(modem, Dtmf) == Dtmf("5")
        assert await _next(modem, RemoteHangup) == RemoteHangup("busy")
        await modem.hang_up()
        async with asyncio.timeout(TIMEOUT_S):
            results = await player
    finally:
        player.cancel()
        await modem.close()
    (result,) = results
    assert result.answered
    assert result.keys_sent == "5"
    assert result.caller_hung_up
    assert result.host_hung_up
    assert result.heard_s >= 0.2
    assert [k for k, _ in events] == ["ringing", "answered", "key", "caller_hangup",
                                      "host_hangup", "done"]
    # The caller's voice from the answer on: the first received frames carry the 440 Hz tone
    # (DTMF and busy tone come later).
    voice = np.concatenate(received)[:1600]
    assert abs(_dominant_hz(voice) - 440) < 10


async def test_unanswered_call_gives_up_and_the_next_one_rings() -> None:
    sim = SimModem("usr", ring_period_s=0.05, cid_delay_s=0.01)
    modem = Modem(sim_url(sim), command_timeout_s=1.0, cid_settle_s=0.01)
    await modem.open()
    script = CallScript((
        ScriptedCall(at_s=0.0, number="1111", max_rings=2),
        ScriptedCall(at_s=0.0, withheld=True, cid_before_first_ring=True, hangup_after_s=0.1),
    ))  # fmt: skip
    player = asyncio.create_task(play_script(sim, script), name="script")
    try:
        # Ignore the first call; answer the second (its caller ID comes before its RING).
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                cid = await _next(modem, CallerIdReceived)
                if cid.caller.number != "1111":
                    break
        assert cid.caller.withheld
        await _next(modem, Ring)
        await modem.answer()
        await _next(modem, RemoteHangup)
        await modem.hang_up()
        async with asyncio.timeout(TIMEOUT_S):
            first, second = await player
    finally:
        player.cancel()
        await modem.close()
    assert not first.answered
    assert second.answered
    assert second.host_hung_up
