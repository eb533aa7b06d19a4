"""CallMedia: one received frame moves one frame along every path; silence ends calls."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import soundfile

from appliance.audio.tones import dtmf_samples, tone_zone
from appliance.call.events import CallerHungUp, CallEvent, KeyPressed, PlaybackDone
from appliance.daemon.media import TX_LEAD_FRAMES, CallMedia


def make(tmp_path: Path) -> tuple[CallMedia, list[np.ndarray], list[np.ndarray],
                                  asyncio.Queue[CallEvent]]:
    sent: list[np.ndarray] = []
    heard: list[np.ndarray] = []
    events: asyncio.Queue[CallEvent] = asyncio.Queue()
    media = CallMedia("12345678", send_to_line=sent.append, play_to_earpiece=heard.append,
                      events=events, tone_zone=tone_zone("hu"), recordings_dir=tmp_path)
    return media, sent, heard, events


def frames(value: int, n: int) -> list[np.ndarray]:
    return [np.full(160, value, dtype=np.int16) for _ in range(n)]


async def test_prompt_plays_then_signals_done(tmp_path: Path) -> None:
    media, sent, _, events = make(tmp_path)
    media.play_to_line("notice", np.full(800, 1234, dtype=np.int16))
    media.prime()
    assert len(sent) == TX_LEAD_FRAMES
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
