"""CallMedia: one received frame moves one frame along every path; silence ends calls."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from appliance.audio.buffers import LEVEL_WINDOW_MS
from appliance.audio.pcm import FRAME_MS
from appliance.audio.tones import dtmf_samples, tone_zone
from appliance.call.events import CallerHungUp, CallEvent, KeyPressed, PlaybackDone
from appliance.config import Config, load_config
from appliance.daemon.media import CallMedia


def media_config(tmp_path: Path, *, echo_cancel: bool, **line: Any) -> Config:
    """The default configuration, state in ``tmp_path``, both cancellers as the test needs and
    ``line`` laid on its one line."""
    table = {"name": "main", "device": "sim://", "country_code": "51",
             "echo_cancel": echo_cancel, **line}
    return load_config(Path(os.devnull), state_dir=tmp_path, overrides={
        "lines": [table], "handset": {"echo_cancel": echo_cancel}})


def make(tmp_path: Path, *, echo_cancel: bool = False, hear_hang_up: bool = False) -> tuple[
        CallMedia, list[np.ndarray], list[np.ndarray], asyncio.Queue[CallEvent]]:
    """A call's media; the routing tests use exact sample values, so no cancellers there."""
    sent: list[np.ndarray] = []
    heard: list[np.ndarray] = []
    events: asyncio.Queue[CallEvent] = asyncio.Queue()
    config = media_config(tmp_path, echo_cancel=echo_cancel)
    media = CallMedia.for_line("12345678", config, config.lines[0], send_to_line=sent.append,
                               play_to_earpiece=heard.append, events=events,
                               tone_zone=tone_zone("hu"), hear_hang_up=hear_hang_up)
    return media, sent, heard, events


def frames(value: int, n: int) -> list[np.ndarray]:
    return [np.full(160, value, dtype=np.int16) for _ in range(n)]


async def test_prompt_plays_then_signals_done(tmp_path: Path) -> None:
    media, sent, _, events = make(tmp_path)
    media.play_to_line("notice", np.full(800, 1234, dtype=np.int16))
    media.prime()
    assert len(sent) == media_config(tmp_path, echo_cancel=False).lines[0].tx_lead_ms // 20
    for frame in frames(0, 5):
        media.on_line_audio(frame)
    played = np.concatenate(sent)
    assert np.count_nonzero(played == 1234) == 800
    assert events.get_nowait() == PlaybackDone("notice")


async def test_bridge_routes_both_ways_and_records_aligned(tmp_path: Path) -> None:
    media, sent, heard, _ = make(tmp_path)
    await media.start_recording()
    media.bridge()
    for i in range(50):
        media.on_handset_capture(np.full(160, 100 + i, dtype=np.int16))
        media.on_line_audio(np.full(160, -(100 + i), dtype=np.int16))
    # The shop's voice went to the line, the caller's to the earpiece, frame for frame.
    assert [int(f[0]) for f in sent] == [100 + i for i in range(50)]
    assert [int(f[0]) for f in heard] == [-(100 + i) for i in range(50)]
    info = await media.finish_recording()
    assert info is not None
    audio, _ = soundfile.read(info.path, dtype="int16")
    assert audio.shape == (50 * 160, 2)
    assert np.array_equal(audio[::160, 0], [-(100 + i) for i in range(50)])
    assert np.array_equal(audio[::160, 1], [100 + i for i in range(50)])


async def test_a_standing_capture_frame_is_shed_counted_and_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A loop stall left one mouthpiece frame more in the capture buffer than the line's reads
    # take: after the level control's window it is shed (a quiet one: whole), the shop is
    # back to the normal latency, and the call's log says so.
    media, sent, _, _ = make(tmp_path)
    media.bridge()
    media.on_handset_capture(np.zeros(160, dtype=np.int16))
    with caplog.at_level(logging.INFO, logger="appliance.audio.buffers"):
        for i in range(2 * LEVEL_WINDOW_MS // FRAME_MS):
            media.on_handset_capture(np.full(160, 1000 + i, dtype=np.int16) if i % 2
                                     else np.zeros(160, dtype=np.int16))
            media.on_line_audio(np.zeros(160, dtype=np.int16))
    assert media.capture_stats == {"underruns": 0, "overruns": 0, "shed": 1}
    assert int(sent[-1][0]) == 1000 + 2 * LEVEL_WINDOW_MS // FRAME_MS - 1  # no frame behind
    assert any(r.getMessage().startswith("call 12345678: handset capture: shed one quiet")
               for r in caplog.records)


async def test_whisper_reaches_only_the_earpiece(tmp_path: Path) -> None:
    media, sent, heard, _ = make(tmp_path)
    media.bridge()
    media.whisper_to_handset(np.full(320, 50, dtype=np.int16))
    for frame in frames(7, 3):
        media.on_line_audio(frame)
    assert int(heard[0][0]) == 57  # caller + whisper
    assert int(heard[2][0]) == 7  # whisper over
    assert all(int(f[0]) == 0 for f in sent)  # the caller hears only the (silent) shop


async def test_silence_watch_reports_once_and_speech_resets_it(tmp_path: Path) -> None:
    media, _, _, events = make(tmp_path)
    media.watch_silence(1.0)
    for frame in frames(0, 49) + frames(3000, 1) + frames(0, 49):
        media.on_line_audio(frame)
    assert events.empty(), "speech in between restarts the count"
    for frame in frames(0, 10):
        media.on_line_audio(frame)
    assert events.get_nowait() == CallerHungUp("silence")
    assert events.empty()


async def test_inband_key_and_modem_report_are_one_key(tmp_path: Path) -> None:
    media, _, _, events = make(tmp_path)
    media.key_reported("9", "modem")
    tone = dtmf_samples("9", duration_ms=120, level_dbfs=-10.0)
    tone = np.concatenate([tone, np.zeros(160 * 3 - len(tone) % 160 + 160, dtype=np.int16)])
    for i in range(0, len(tone) - 159, 160):
        media.on_line_audio(tone[i : i + 160])
    assert events.get_nowait() == KeyPressed("9", "modem")
    assert events.empty()


def level_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.asarray(x, dtype=np.float64) ** 2) + 1e-9))


async def test_both_hybrids_echo_is_cancelled_before_forwarding_and_recording(
        tmp_path: Path) -> None:
    # The shop talks into the mouthpiece, the line returns it through a hybrid (10 dB, 16 ms,
    # two frames late); the caller talks meanwhile into the line, and the earpiece's caller
    # voice returns into the mouthpiece through the SLIC's hybrid (14 dB, 8 ms).
    from appliance.audio.hybrid import Hybrid, HybridSpec
    from appliance.sim.world import voice_like_signal

    media, sent, heard, _ = make(tmp_path, echo_cancel=True)
    line = Hybrid(HybridSpec(erl_db=10.0, tail_ms=16.0, seed=1))
    slic = Hybrid(HybridSpec(erl_db=14.0, tail_ms=8.0, seed=2))
    shop_voice = voice_like_signal(8.0, f0_hz=190.0, seed=3)
    caller_voice = voice_like_signal(8.0, f0_hz=110.0, seed=4)
    caller_voice[: 5 * 8000] = 0  # the caller is silent for 5 s, then talks over the shop
    media.bridge()
    await media.start_recording()
    line_echo = [np.zeros(160)] * 2
    slic_echo = np.zeros(160)
    for k in range(len(shop_voice) // 160):
        part = slice(k * 160, (k + 1) * 160)
        mouthpiece = np.clip(shop_voice[part] + slic_echo, -32768, 32767).astype(np.int16)
        media.on_handset_capture(mouthpiece)
        received = np.clip(caller_voice[part] + line_echo.pop(0), -32768, 32767)
        media.on_line_audio(received.astype(np.int16))
        line_echo.append(line.echo(sent[-1]))
        slic_echo = slic.echo(heard[-1])
    recording = await media.finish_recording()
    assert recording is not None
    audio, _ = soundfile.read(recording.path, dtype="int16")
    caller_ch, shop_ch = audio[:, 0], audio[:, 1]
    # Seconds 2–5: only the shop talks. The caller channel held its echo 10 dB down; after
    # cancellation it is at least 25 dB further down (ERLE), and so is what the shop hears.
    quiet = slice(2 * 8000, 5 * 8000)
    assert level_db(shop_ch[quiet]) - level_db(caller_ch[quiet]) > 10.0 + 25.0
    # Double talk (seconds 5–8): the caller's speech survives in its channel (the residual
    # echo suppressor attenuates it somewhat while both talk: docs/performance.md).
    talk = slice(5 * 8000 + 1600, 8 * 8000)
    assert abs(level_db(caller_ch[talk]) - level_db(caller_voice[talk])) < 8.0
    status = media.echo_status
    assert status["line_echo_cancel"]
    assert status["handset_echo_cancel"]
    assert isinstance(status["line_erle_db"], float)


async def test_a_quiet_key_under_the_prompts_echo_is_found_on_the_cancelled_signal(
        tmp_path: Path) -> None:
    # A prompt plays to the line; the line returns it 6 dB down (a poor hybrid); the caller
    # presses a quiet key in the middle of it. The echo gate alone would refuse this key
    # (it is not clearly louder than the echo could be); the cancelled signal has it clean.
    from appliance.audio.hybrid import Hybrid, HybridSpec
    from appliance.sim.world import voice_like_signal

    media, sent, _, events = make(tmp_path, echo_cancel=True)
    prompt = voice_like_signal(6.0, f0_hz=190.0, seed=7)
    media.play_to_line("prompt", prompt)
    line = Hybrid(HybridSpec(erl_db=6.0, tail_ms=16.0, seed=3))
    key = np.zeros(len(prompt))
    tone = dtmf_samples("5", duration_ms=100, level_dbfs=-26.0)
    key[4 * 8000 : 4 * 8000 + len(tone)] = tone
    echo = [np.zeros(160)] * 2
    for k in range(len(prompt) // 160):
        rx = np.clip(np.rint(key[k * 160 : (k + 1) * 160] + echo.pop(0)), -32768, 32767)
        media.on_line_audio(rx.astype(np.int16))
        echo.append(line.echo(sent[-1]))
    keys = []
    while not events.empty():
        event = events.get_nowait()
        if isinstance(event, KeyPressed):
            keys.append(event)
    assert keys == [KeyPressed("5", "inband")]


def _tone_frames(on_s: float, off_s: float, seconds: float, level: float = 0.3) -> list[np.ndarray]:
    t = np.arange(int(seconds * 8000)) / 8000
    on = (t % (on_s + off_s)) < on_s
    x = np.rint(level * 32767 * np.sin(2 * np.pi * 425 * t) * on).astype(np.int16)
    return [x[i : i + 160] for i in range(0, len(x) - 159, 160)]


async def test_busy_tone_on_the_line_ends_the_call_once(tmp_path: Path) -> None:
    # A modem that never reports busy (docs/line.md): the exchange's 300/300 ms tone is heard.
    media, _, _, events = make(tmp_path, hear_hang_up=True)
    busy = _tone_frames(0.3, 0.3, 3.0)
    heard_s = 0.0
    for frame in busy:
        media.on_line_audio(frame)
        heard_s += 0.02
        if not events.empty():
            break
    assert events.get_nowait() == CallerHungUp("busy (in-band)")
    assert heard_s <= 1.6, "three bursts (two full cadence cycles) suffice"
    for frame in busy:
        media.on_line_audio(frame)
    assert events.empty(), "reported once"
    quiet, _, _, events = make(tmp_path / "dialled")  # a dialled call: its own detector
    for frame in busy:
        quiet.on_line_audio(frame)
    assert events.empty()


async def test_busy_tone_is_heard_through_its_own_echo(tmp_path: Path) -> None:
    # Bridged, the tone returns through the earpiece and both hybrids and fills the gaps
    # ≈ 13 dB down, 180 ms late (as the demo's line measures): the gaps are not quiet.
    media, _, _, events = make(tmp_path, hear_hang_up=True)
    busy = np.concatenate(_tone_frames(0.3, 0.3, 3.0))
    echo = np.concatenate([np.zeros(1440), busy[:-1440]]) * 10 ** (-13 / 20)
    line = np.rint(busy + echo).astype(np.int16)
    for start in range(0, len(line) - 159, 160):
        media.on_line_audio(line[start : start + 160])
    assert events.get_nowait() == CallerHungUp("busy (in-band)")


async def test_ringback_and_voice_on_the_line_are_not_a_hang_up(tmp_path: Path) -> None:
    media, _, _, events = make(tmp_path, hear_hang_up=True)
    rng = np.random.default_rng(3)
    voice = [np.rint(rng.normal(0, 3000, 160)).astype(np.int16) for _ in range(100)]
    for frame in _tone_frames(1.25, 3.75, 10.0) + voice:
        media.on_line_audio(frame)
    assert events.empty()


async def test_the_shop_channel_is_silent_until_the_shop_is_put_through(tmp_path: Path) -> None:
    # A held call may get the handset the moment the other call ends, while the shop is
    # still speaking to that caller: none of it belongs in this call's recording.
    media, _, _, _ = make(tmp_path)
    await media.start_recording()
    for k in range(20):
        if k == 10:
            media.bridge()
        media.on_handset_capture(np.full(160, 700, dtype=np.int16))
        media.on_line_audio(np.full(160, 300, dtype=np.int16))
    recording = await media.finish_recording()
    assert recording is not None
    audio, _ = soundfile.read(recording.path, dtype="int16")
    assert not audio[:10 * 160, 1].any()
    assert np.all(audio[12 * 160 :, 1] == 700)
    assert np.all(audio[:, 0] == 300)


async def test_the_line_s_transmit_lead_comes_from_the_configuration(tmp_path: Path) -> None:
    # Inbound and outbound calls both build their media with for_line: a line configured for
    # a longer lead (a modem that underruns) gets it on every call.
    config = media_config(tmp_path, echo_cancel=True, tx_lead_ms=60)
    sent: list[np.ndarray] = []
    media = CallMedia.for_line("12345678", config, config.lines[0], send_to_line=sent.append,
                               play_to_earpiece=lambda frame: None, events=asyncio.Queue(),
                               tone_zone=tone_zone("hu"))
    media.prime()
    assert len(sent) == 3
