"""Handset audio backends.

The ``alsa:`` backend is tested through the real sounddevice → PortAudio → ALSA path with an
ALSA ``type file`` PCM over ``null`` (docs/line.md, "Line audio through a sound card"): what the
backend plays lands in a raw file, what it captures is read from another. It runs in a child
process because PortAudio reads the ALSA configuration once, when sounddevice is imported.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.audio.backend import (
    EarpieceTrim,
    SimHandsetAudio,
    SoundDeviceAudio,
    open_handset_audio,
)
from appliance.audio.buffers import CAPTURE_PHASE_WINDOW_TICKS, SampleRing
from appliance.audio.tones import dtmf_samples
from appliance.errors import AudioError

TIMEOUT_S = 5.0


def portaudio_available() -> bool:
    import ctypes.util

    return ctypes.util.find_library("portaudio") is not None


class _ConstantMouth:
    def read(self, n: int) -> np.ndarray:
        return np.full(n, 1000, dtype=np.int16)


async def _play_one_frame_and_capture_five(
        backend: SimHandsetAudio) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Play one frame of 7s while the mouth says 1000s; return (heard, captured)."""
    heard: list[np.ndarray] = []
    captured: list[np.ndarray] = []
    got_enough = asyncio.Event()

    def on_capture(frame: np.ndarray) -> None:
        captured.append(frame)
        if len(captured) >= 5:
            got_enough.set()

    backend.connect_user(_ConstantMouth(), heard.append)
    await backend.start(on_capture)
    backend.play(np.full(160, 7, dtype=np.int16))
    await asyncio.wait_for(got_enough.wait(), TIMEOUT_S)
    await backend.stop()
    return heard, captured


async def test_sim_backend_delivers_capture_and_plays_to_the_ear() -> None:
    heard, captured = await _play_one_frame_and_capture_five(SimHandsetAudio())
    assert all(np.all(frame == 1000) for frame in captured)
    assert any(np.all(frame == 7) for frame in heard)


async def test_sim_backend_with_a_short_period_models_the_card() -> None:
    # A 5 ms card: the ear gets 5 ms blocks, the call still gets whole 20 ms frames.
    heard, captured = await _play_one_frame_and_capture_five(SimHandsetAudio(period_ms=5))
    assert all(len(frame) == 160 and np.all(frame == 1000) for frame in captured)
    assert {len(block) for block in heard} == {40}
    assert sum(int(np.count_nonzero(block == 7)) for block in heard) == 160


async def test_frames_played_from_the_capture_callback_do_not_move_the_capture() -> None:
    # The idle player and the dial tone play one frame per captured frame: paced by the
    # card's own clock, they must not be taken for the line's ticks (the capture would hold
    # frames back to align to itself, and the earpiece would run dry between them).
    backend = SimHandsetAudio(period_ms=5)
    captured: list[np.ndarray] = []
    got_enough = asyncio.Event()

    def on_capture(frame: np.ndarray) -> None:
        captured.append(frame)
        backend.play(np.full(160, 500, dtype=np.int16))
        if len(captured) >= CAPTURE_PHASE_WINDOW_TICKS:
            got_enough.set()

    await backend.start(on_capture)
    await asyncio.wait_for(got_enough.wait(), TIMEOUT_S)
    await backend.stop()
    assert backend.stats["underruns"] == 0
    # One frame per 20 ms of the card: four 5 ms periods each.
    assert backend.stats["frames"] == len(captured)


class _CountingMouth:
    """Says frame k as 160 samples of k (k = 1, 2, …)."""

    def __init__(self) -> None:
        self.frames = 0

    def read(self, n: int) -> np.ndarray:
        self.frames += 1
        return np.full(n, self.frames, dtype=np.int16)


async def test_a_line_pulling_takes_the_capture_at_its_ticks_with_no_timer_per_frame() -> None:
    backend = SimHandsetAudio(period_ms=5)
    mouth = _CountingMouth()
    heard_at: list[float] = []
    heard: list[np.ndarray] = []

    def ear(block: np.ndarray) -> None:
        heard_at.append(backend.time())
        heard.append(block)

    captured: list[np.ndarray] = []
    backend.connect_user(mouth, ear)
    await backend.start(captured.append)
    loop = asyncio.get_running_loop()
    ticks = 60
    per_pull: list[int] = []
    timers_while_pulled: list[bool] = []
    done = asyncio.Event()
    t0 = loop.time() + 0.05

    def tick(k: int) -> None:
        # As CallMedia does at a line frame: take the mouthpiece's frame, play the earpiece's.
        before = len(captured)
        backend.pull()
        per_pull.append(len(captured) - before)
        backend.play(np.full(160, 7, dtype=np.int16))
        timers_while_pulled.append(backend._timer is None)
        if k + 1 < ticks:
            loop.call_at(t0 + (k + 1) * 0.02, tick, k + 1)
        else:
            done.set()

    loop.call_at(t0, tick, 0)
    await asyncio.wait_for(done.wait(), TIMEOUT_S)
    # Each tick took exactly one frame, the mouth's next; nothing came between the ticks,
    # and the card's own clock (a timer per block) did not run.
    assert per_pull == [1] * ticks
    first = len(captured) - ticks
    assert [int(f[0]) for f in captured[first:]] == list(range(first + 1, len(captured) + 1))
    assert all(timers_while_pulled)
    # The ear heard every block on the card's clock, 5 ms apart, and each 7 played.
    assert all(abs(b - a - 0.005) < 1e-6 for a, b in itertools.pairwise(heard_at))
    sevens = sum(int(np.count_nonzero(block == 7)) for block in heard)
    assert 160 * (ticks - 2) <= sevens <= 160 * ticks
    # The line stopped: the card's own clock hands frames over again.
    resumed = len(captured) + 3

    async def resumes() -> None:
        while len(captured) < resumed:  # noqa: ASYNC110 - frames from the card's own timer
            await asyncio.sleep(0.01)

    await asyncio.wait_for(resumes(), TIMEOUT_S)
    await backend.stop()


class _FakeStream:
    """sounddevice.Stream as the backend uses it; the test runs its callback."""

    last: _FakeStream | None = None

    def __init__(self, *, callback: Any, blocksize: int, **_: Any) -> None:
        self.callback = callback
        self.blocksize = blocksize
        _FakeStream.last = self

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


async def test_the_card_s_callback_only_fills_the_ring_while_a_line_pulls(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake_sd = types.SimpleNamespace(check_input_settings=lambda **_: None,
                                    check_output_settings=lambda **_: None, Stream=_FakeStream)
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sd)
    backend = SoundDeviceAudio("fake")
    captured: list[np.ndarray] = []
    await backend.start(captured.append)
    stream = _FakeStream.last
    assert stream is not None
    assert stream.blocksize == 40
    source = np.arange(1, 8001, dtype=np.int16)
    pos = 0
    out = np.zeros((40, 1), dtype=np.int16)

    def card(blocks: int) -> None:
        nonlocal pos
        for _ in range(blocks):
            stream.callback(source[pos : pos + 40].reshape(40, 1), out, 40, None, None)
            pos += 40

    # No line: the card's own clock posts a frame per 20 ms to the loop.
    card(8)
    async with asyncio.timeout(TIMEOUT_S):
        while len(captured) < 2:  # noqa: ASYNC110 - posted by call_soon_threadsafe
            await asyncio.sleep(0)
    assert np.array_equal(np.concatenate(captured), source[:320])
    # A line pulls at its ticks: one frame each, continuous, nothing posted in between.
    captured.clear()
    backend.pull()
    for _ in range(10):
        card(4)
        await asyncio.sleep(0)  # anything posted would run now
        backend.pull()
    assert len(captured) == 11
    taken = np.concatenate(captured)
    start = int(taken[0]) - 1
    assert np.array_equal(taken, source[start : start + len(taken)])
    assert backend.stats["capture_repeats"] == 0
    await backend.stop()


def test_a_block_standing_in_the_earpiece_ring_for_a_second_is_skipped() -> None:
    ring = SampleRing(1600)
    trim = EarpieceTrim(40)
    out = np.zeros(160, dtype=np.int16)
    ring.write(np.zeros(40, dtype=np.int16))  # a late write once left a block standing
    for i in range(49):
        trim.before_write(ring)
        ring.write(np.full(160, i, dtype=np.int16))
        ring.read_into(out)
    assert (trim.trims, len(ring)) == (0, 40)
    trim.before_write(ring)  # the 50th write of the window: the block has stood a second
    assert (trim.trims, len(ring)) == (1, 0)
    # A level that dips to nothing within the window is left alone.
    ring.write(np.zeros(40, dtype=np.int16))
    for i in range(60):
        trim.before_write(ring)
        ring.write(np.full(160, i, dtype=np.int16))
        ring.read_into(out)
        if i == 30:
            ring.read_into(out[:40])
    assert trim.trims == 1


def test_sim_backend_period_must_divide_a_frame() -> None:
    with pytest.raises(ValueError, match="divide"):
        SimHandsetAudio(period_ms=7)


def test_unknown_url_is_a_clear_error() -> None:
    with pytest.raises(AudioError, match="sim:// or alsa:"):
        open_handset_audio("pulse://x")


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    import numpy as np
    from appliance.audio.backend import SoundDeviceHandsetAudio

    async def main():
        backend = SoundDeviceHandsetAudio("telfile")
        captured = []
        done = asyncio.Event()
        def on_capture(frame):
            captured.append(frame)
            if len(captured) >= 100:
                done.set()
        tone = np.load(sys.argv[1])
        await backend.start(on_capture)
        # One write: the ring's lock makes it atomic, so the callback thread cannot take
        # part of the tone and pad the rest with silence when the machine is loaded.
        backend.play(tone)
        await asyncio.wait_for(done.wait(), 10)
        await backend.stop()
        np.save(sys.argv[2], np.concatenate(captured))

    asyncio.run(main())
    """
)


@pytest.mark.skipif(not portaudio_available(), reason="libportaudio2 is not installed")
def test_alsa_backend_through_real_portaudio_and_alsa(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    infile = (rng.standard_normal(8000 * 4) * 3000).astype("<i2")
    (tmp_path / "capture.raw").write_bytes(infile.tobytes())
    conf = tmp_path / "asound.conf"
    # One `file` PCM for both directions writes the captured stream into its output file
    # too (both streams tap to "file"), so playback and capture get a PCM each under asym.
    conf.write_text(textwrap.dedent(f"""
        pcm.telplay {{ type file  slave.pcm "null"  file "{tmp_path / 'playback.raw'}"
                       format "raw"  perm 0644 }}
        pcm.telcap  {{ type file  slave.pcm "null"  file "/dev/null"
                       infile "{tmp_path / 'capture.raw'}"  format "raw" }}
        pcm.telfile {{ type asym  playback.pcm "telplay"  capture.pcm "telcap" }}
    """))
    # Within the 200 ms playback ring, so nothing is dropped however the callback runs.
    tone = dtmf_samples("5", duration_ms=150, level_dbfs=-10.0)
    np.save(tmp_path / "tone.npy", tone)
    env = dict(os.environ)
    env["ALSA_CONFIG_PATH"] = f"/usr/share/alsa/alsa.conf:{conf}"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "tone.npy"), str(tmp_path / "cap.npy")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    captured = np.load(tmp_path / "cap.npy")
    # Capture is sample-exact from the ALSA file's infile.
    assert np.array_equal(captured[:8000], infile[:8000])
    # What was played reached the ALSA file: locate the tone (PortAudio primes with zeros).
    played = np.frombuffer((tmp_path / "playback.raw").read_bytes(), dtype="<i2")
    corr = np.correlate(played.astype(np.float64), tone.astype(np.float64), mode="valid")
    start = int(np.argmax(corr))
    assert np.array_equal(played[start : start + len(tone)], tone)
