"""Handset audio backends.

The ``alsa:`` backend is tested through the real sounddevice → PortAudio → ALSA path with an
ALSA ``type file`` PCM over ``null`` (docs/line.md, "Line audio through a sound card"): what the
backend plays lands in a raw file, what it captures is read from another. It runs in a child
process because PortAudio reads the ALSA configuration once, when sounddevice is imported.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from appliance.audio.backend import SimHandsetAudio, open_handset_audio
from appliance.audio.buffers import CAPTURE_ALIGN_TICKS
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
        if len(captured) >= 2 * CAPTURE_ALIGN_TICKS:
            got_enough.set()

    await backend.start(on_capture)
    await asyncio.wait_for(got_enough.wait(), TIMEOUT_S)
    await backend.stop()
    assert backend.stats["underruns"] == 0
    # One frame per 20 ms of the card: four 5 ms periods each.
    assert backend.stats["frames"] == len(captured)


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
