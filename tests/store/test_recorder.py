"""Tests for the crash-safe recorder: round trip, codecs, abort, header repair, kill -9."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.errors import StoreError
from appliance.store.recorder import (
    PARTIAL_SUFFIX,
    Recorder,
    recover_leftovers,
    repair_wav_header,
    sha256_file,
)

from ..conftest import TIMEOUT_S
from ..policies import default_config

NOW = dt.datetime(2025, 3, 14, 9, 26, 53, tzinfo=dt.UTC)
#: The configured fsync interval (``recording.fsync_interval_s``; the recorder has none of its own).
FSYNC_S = default_config().recording.fsync_interval_s
RATE_HZ = 8000
REPO_ROOT = Path(__file__).resolve().parents[2]


def pattern(start: int, n: int) -> np.ndarray:
    """Deterministic 2-channel test audio: frame i is (f(i), -f(i) - 1), distinct per channel."""
    i = np.arange(start, start + n, dtype=np.int64)
    ch0 = ((i * 7919) % 65536 - 32768).astype(np.int16)
    ch1 = (-ch0.astype(np.int32) - 1).astype(np.int16)
    return np.stack([ch0, ch1], axis=1)


async def test_round_trip_flac_in_random_blocks(tmp_path: Path) -> None:
    frames = int(3.3 * RATE_HZ)
    audio = pattern(0, frames)
    rng = np.random.default_rng(1234)
    rec = Recorder(tmp_path, "42719038", now=NOW, fsync_interval_s=FSYNC_S)
    assert rec.partial_path == tmp_path / "2025" / "03" / "14" / ("42719038" + PARTIAL_SUFFIX)
    assert stat.S_IMODE(rec.partial_path.stat().st_mode) == 0o640
    pos = 0
    while pos < frames:
        n = int(rng.integers(1, 800))
        rec.write(audio[pos : pos + n])
        pos += n
    result = await rec.finalize()

    assert result.path == rec.directory / "42719038.flac"
    assert result.codec == "flac"
    assert result.frames == frames == rec.frames_written
    assert result.duration_s == pytest.approx(3.3)
    decoded, rate = sf.read(result.path, dtype="int16", always_2d=True)
    assert rate == RATE_HZ
    np.testing.assert_array_equal(decoded, audio)
    assert result.sha256 == sha256_file(result.path)
    assert result.bytes == result.path.stat().st_size

    sidecar = json.loads((rec.directory / "42719038.json").read_text())
    assert sidecar["sha256"] == sha256_file(result.path)
    assert sidecar["frames"] == frames
    assert sidecar["reference"] == "42719038"
    assert sidecar["channels"] == ["caller", "shop"]
    assert sidecar["rate"] == RATE_HZ
    assert sidecar["codec"] == "flac"
    assert sidecar["created"] == NOW.isoformat()

    assert not rec.partial_path.exists()
    assert sorted(p.name for p in rec.directory.iterdir()) == ["42719038.flac", "42719038.json"]
    for p in (result.path, rec.directory / "42719038.json"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o640
    for d in (tmp_path / "2025", tmp_path / "2025" / "03", rec.directory):
        assert stat.S_IMODE(d.stat().st_mode) == 0o770


@pytest.mark.parametrize(("codec", "ext"), [("wav", "wav"), ("opus", "opus")])
async def test_other_codecs(tmp_path: Path, codec: str, ext: str) -> None:
    audio = pattern(0, RATE_HZ)
    rec = Recorder(tmp_path, "1", now=NOW, fsync_interval_s=FSYNC_S)
    rec.write(audio)
    result = await rec.finalize(codec)
    assert result.path.name == f"1.{ext}"
    info = sf.info(result.path)
    assert (info.samplerate, info.channels) == (RATE_HZ, 2)
    if codec == "wav":
        np.testing.assert_array_equal(sf.read(result.path, dtype="int16")[0], audio)
    else:
        assert info.format == "OGG"
        assert info.subtype == "OPUS"
    assert json.loads((rec.directory / "1.json").read_text())["codec"] == codec


async def test_write_does_no_io_on_the_caller_thread(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, "1", now=NOW, fsync_interval_s=FSYNC_S)
    names: set[str] = set()
    original = rec._sf.write

    def spy(data: np.ndarray) -> None:
        names.add(threading.current_thread().name)
        original(data)

    rec._sf.write = spy  # type: ignore[method-assign]
    rec.write(pattern(0, 160))
    await rec.finalize()
    assert names == {"recorder-1"}


async def test_live_file_header_is_valid_while_recording(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, "1", now=NOW, fsync_interval_s=0.05)
    rec.write(pattern(0, 4000))
    # Poll the writer's progress, bounded by TIMEOUT_S (no fixed sleep).
    async with asyncio.timeout(TIMEOUT_S):
        while rec.frames_written < 4000:  # noqa: ASYNC110 - progress lives on another thread
            await asyncio.sleep(0.005)
    # SFC_SET_UPDATE_HEADER_AUTO: even Python's strict `wave` module reads the live file.
    with wave.open(str(rec.partial_path), "rb") as w:
        assert w.getnframes() == 4000
        assert w.getnchannels() == 2
    await rec.finalize()


async def test_abort_deletes_everything(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, "1", now=NOW, fsync_interval_s=FSYNC_S)
    rec.write(pattern(0, 1000))
    await rec.abort()
    assert list(rec.directory.iterdir()) == []
    with pytest.raises(StoreError):
        rec.write(pattern(0, 10))


async def test_write_rejects_bad_blocks(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, "1", now=NOW, fsync_interval_s=FSYNC_S)
    with pytest.raises(ValueError):
        rec.write(np.zeros((10,), dtype=np.int16))
    with pytest.raises(ValueError):
        rec.write(np.zeros((10, 2), dtype=np.float32))
    await rec.abort()


async def test_existing_partial_is_not_overwritten(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, "1", now=NOW, fsync_interval_s=FSYNC_S)
    with pytest.raises(StoreError):
        Recorder(tmp_path, "1", now=NOW, fsync_interval_s=FSYNC_S)
    await rec.abort()


async def test_empty_recording_finalizes(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, "1", now=NOW, fsync_interval_s=FSYNC_S)
    result = await rec.finalize()
    assert result.frames == 0
    assert result.codec == "wav"  # no valid empty FLAC exists
    assert sf.info(result.path).frames == 0


# ---------------------------------------------------------------------- header repair


def _write_wav_with_sizes(path: Path, audio: np.ndarray, claimed_frames: int,
                          extra_bytes: bytes = b"") -> None:
    """A PCM WAV whose header claims ``claimed_frames`` though the file holds more."""
    sf.write(path, audio, RATE_HZ, format="WAV", subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    data_at = raw.index(b"data")
    struct.pack_into("<I", raw, data_at + 4, claimed_frames * 4)
    struct.pack_into("<I", raw, 4, data_at + 8 + claimed_frames * 4 - 8)
    path.write_bytes(bytes(raw) + extra_bytes)


@settings(max_examples=25, deadline=None)
@given(
    frames=st.integers(min_value=0, max_value=2000),
    claimed=st.integers(min_value=0, max_value=2000),
    torn=st.integers(min_value=0, max_value=3),
)
def test_repair_recovers_all_whole_frames(tmp_path_factory: pytest.TempPathFactory,
                                          frames: int, claimed: int, torn: int) -> None:
    path = tmp_path_factory.mktemp("repair") / "x.wav.partial"
    audio = pattern(0, frames)
    _write_wav_with_sizes(path, audio, min(claimed, frames), b"\x01" * torn)
    assert repair_wav_header(path) == frames
    decoded = sf.read(path, dtype="int16", always_2d=True)[0]
    np.testing.assert_array_equal(decoded, audio.reshape(-1, 2))
    with wave.open(str(path), "rb") as w:
        assert w.getnframes() == frames


def test_repair_rejects_non_wav(tmp_path: Path) -> None:
    path = tmp_path / "x.wav.partial"
    path.write_bytes(b"not a wav at all")
    with pytest.raises(StoreError):
        repair_wav_header(path)


def test_recover_leftovers_repairs_a_short_header(tmp_path: Path) -> None:
    day = tmp_path / "2025" / "03" / "14"
    day.mkdir(parents=True)
    audio = pattern(0, 5000)
    _write_wav_with_sizes(day / ("55555555" + PARTIAL_SUFFIX), audio, 1000, b"\x7f\x00")
    (tmp_path / "junk.wav.partial").write_bytes(b"garbage")  # logged and left in place
    results = recover_leftovers(tmp_path)
    assert [r.reference for r in results] == ["55555555"]
    assert results[0].frames == 5000
    np.testing.assert_array_equal(sf.read(results[0].path, dtype="int16")[0], audio)
    assert not (day / ("55555555" + PARTIAL_SUFFIX)).exists()
    assert (tmp_path / "junk.wav.partial").exists()
    assert recover_leftovers(tmp_path / "2025") == []


# ---------------------------------------------------------------------- kill -9


_CHILD = """
import datetime as dt, sys, time
from pathlib import Path
import numpy as np
from appliance.store.recorder import Recorder
{pattern_src}

rec = Recorder(Path({root!r}), "31415926", now=dt.datetime(2025, 3, 14), fsync_interval_s=0.2)
block, pos = 160, 0
while pos < 3 * 8000:  # 3 s as fast as possible
    rec.write(pattern(pos, block)); pos += block
while rec.frames_written < pos:
    time.sleep(0.005)
print("READY", flush=True)
while pos < 300 * 8000:  # keep the writer busy so the kill lands mid-write
    rec.write(pattern(pos, block)); pos += block
time.sleep(60)
"""


def test_sigkill_mid_recording_is_recovered(tmp_path: Path) -> None:
    code = _CHILD.format(root=str(tmp_path), pattern_src=inspect.getsource(pattern))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env,
                             cwd=REPO_ROOT, text=True)
    try:
        # readline() blocks until READY (or EOF if the child died); the test timeout bounds it.
        line = child.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "READY"
        # Let the writer get past 4 s so the kill lands in a burst of writes, not in a pause.
        partial = tmp_path / "2025" / "03" / "14" / ("31415926" + PARTIAL_SUFFIX)
        deadline = time.monotonic() + TIMEOUT_S
        while partial.stat().st_size < 4 * RATE_HZ * 4:
            assert time.monotonic() < deadline, "child stopped writing"
            time.sleep(0.001)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=TIMEOUT_S) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()  # type: ignore[union-attr]

    results = recover_leftovers(tmp_path)
    assert len(results) == 1
    result = results[0]
    assert result.reference == "31415926"
    assert result.codec == "flac"
    # The brief: all but at most 1 s of what was written (the child had written > 4 s; the
    # page cache survives a process kill, so in practice every whole frame is there).
    assert result.frames >= 3 * RATE_HZ
    decoded = sf.read(result.path, dtype="int16", always_2d=True)[0]
    np.testing.assert_array_equal(decoded, pattern(0, result.frames))
    sidecar = json.loads(result.path.with_suffix(".json").read_text())
    assert sidecar["sha256"] == sha256_file(result.path)
    assert not list(tmp_path.rglob("*" + PARTIAL_SUFFIX))
