"""Line audio through a sound card: a real daemon, a real pty modem for call control, and the
call's audio through sounddevice → PortAudio → ALSA.

The line's sound card is an ALSA ``asym`` PCM (docs/line.md, "Line audio through a sound card",
as in tests/audio/test_backend.py): playback is a ``file`` PCM over ``null`` writing a raw file;
capture is a ``file`` PCM whose ``infile`` is a FIFO this test writes the caller's voice into at
8000 samples/s. ``null`` alone has no clock (PortAudio would run the call thousands of times
faster than real time); the FIFO makes the capture — and so the whole call, which is clocked by
the line's received audio — run at the caller's real pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile

from appliance.sim.modem.pty import PtyModemServer
from appliance.speech.library import PromptLibrary
from appliance.store.recorder import sha256_file
from tests.system import index_probe
from tests.system.index_probe import query

pytestmark = pytest.mark.timeout(120)

TIMEOUT_S = 45.0
POLL_S = 0.05
FRAME_SAMPLES = 160
FRAME_S = 0.02
#: Caller audio recorded before the caller hangs up (frames written after recording starts).
RECORD_FRAMES = 100
NOTICE = "Tájékoztatjuk, hogy a hívást rögzítjük."


def portaudio_available() -> bool:
    import ctypes.util

    return ctypes.util.find_library("portaudio") is not None


def write_asound_conf(tmp_path: Path, fifo: Path) -> Path:
    conf = tmp_path / "asound.conf"
    conf.write_text(textwrap.dedent(f"""
        pcm.telplay {{ type file  slave.pcm "null"  file "{tmp_path / 'playback.raw'}"
                       format "raw"  perm 0644 }}
        pcm.telcap  {{ type file  slave.pcm "null"  file "/dev/null"
                       infile "{fifo}"  format "raw" }}
        pcm.telline {{ type asym  playback.pcm "telplay"  capture.pcm "telcap" }}
    """))
    return conf


def write_config(tmp_path: Path, device: str) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f"""
[call]
cid_wait_s = 0.0
agent_timeout_s = 60.0
[[lines]]
name = "main"
device = "{device}"
country_code = "51"
audio = "alsa:telline"
# The test compares the recording with the captured audio sample for sample.
echo_cancel = false
[gpio]
pin_factory = "mock"
[speech]
voice = "espeak"
texts = {{ notice = "{NOTICE}" }}
""", encoding="utf-8")
    return config


def start_daemon(config: Path, state_dir: Path, log: Path,
                 env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("w") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "appliance", "--config", str(config), "--state-dir",
             str(state_dir), "run"],
            stdout=subprocess.DEVNULL, stderr=log_file, env=env,
        )


async def wait_for_state(db: Path, state: str) -> sqlite3.Row:
    return await index_probe.wait_for_state(db, state, TIMEOUT_S)


async def wait_for_log(log: Path, text: str) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        while not (log.exists() and text in log.read_text(errors="replace")):  # noqa: ASYNC110
            await asyncio.sleep(POLL_S)


class CallerMouth:
    """Writes the caller's voice into the capture FIFO at 8000 samples/s (absolute times)."""

    def __init__(self, fd: int, voice: np.ndarray) -> None:
        self.fd = fd
        self.voice = voice
        self.frames = 0
        self._waiters: list[tuple[int, asyncio.Event]] = []

    def after(self, frames: int) -> asyncio.Event:
        """An event set once ``frames`` more frames have been written."""
        event = asyncio.Event()
        self._waiters.append((self.frames + frames, event))
        return event

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        data = self.voice.tobytes()
        frame_bytes = FRAME_SAMPLES * 2
        while (self.frames + 1) * frame_bytes <= len(data):
            chunk = data[self.frames * frame_bytes : (self.frames + 1) * frame_bytes]
            with contextlib.suppress(BlockingIOError):  # nobody reads: the FIFO is full
                os.write(self.fd, chunk)
            self.frames += 1
            for target, event in self._waiters:
                if self.frames >= target:
                    event.set()
            await asyncio.sleep(max(0.0, t0 + self.frames * FRAME_S - loop.time()))


def silence_inserted(expected: np.ndarray, played: np.ndarray) -> int | None:
    """How many zero samples ``played`` has in addition to ``expected`` played in order, or
    None when a sample differs (underrun padding is the only difference allowed)."""
    i = j = inserted = 0
    while i < len(expected):
        if j >= len(played):
            return None
        if played[j] == expected[i]:
            i += 1
        elif played[j] == 0:
            inserted += 1
        else:
            return None
        j += 1
    return inserted


@pytest.mark.skipif(not portaudio_available(), reason="libportaudio2 is not installed")
async def test_call_audio_through_alsa_with_call_control_on_the_modem(tmp_path: Path) -> None:
    fifo = tmp_path / "capture.fifo"
    os.mkfifo(fifo)
    # Read-write and non-blocking: a writer exists from the start, so PortAudio's probe and
    # the stream open the FIFO without blocking, and this loop never blocks on it.
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    env = dict(os.environ)
    env["ALSA_CONFIG_PATH"] = f"/usr/share/alsa/alsa.conf:{write_asound_conf(tmp_path, fifo)}"
    voice = (np.random.default_rng(11).standard_normal(8000 * 60) * 3000).astype("<i2")
    mouth = CallerMouth(fd, voice)
    server = PtyModemServer(profile="conexant")
    await server.start()
    state_dir = tmp_path / "state"
    db = state_dir / "appliance.db"
    log = tmp_path / "daemon.log"
    mouth_task: asyncio.Task[None] | None = None
    daemon = start_daemon(write_config(tmp_path, server.path), state_dir, log, env)
    try:
        await wait_for_log(log, "line main: modem ready")
        server.sim.ring("+3611234567", None, cid_before_first_ring=True)
        await server.sim.wait_off_hook(TIMEOUT_S)
        # The caller starts talking once the line's sound card is open (a FIFO backlog would
        # reach the call as one burst; a real card starts capturing at open).
        await wait_for_log(log, "line main audio open on telline")
        mouth_task = asyncio.create_task(mouth.run(), name="caller-mouth")
        row = await wait_for_state(db, "recording-started")
        await asyncio.wait_for(mouth.after(RECORD_FRAMES).wait(), TIMEOUT_S)
        # Call control stays on the modem: the hang-up arrives as <DLE>b in voice command
        # state; the mouth keeps talking so PortAudio can close the capture stream.
        server.sim.remote_hangup()
        await server.sim.wait_on_hook(TIMEOUT_S)
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                call = query(db, "SELECT * FROM calls WHERE reference = ?", row["reference"])[0]
                if call["outcome"] != "in_progress" and call["recording_sha256"]:
                    break
                await asyncio.sleep(POLL_S)
    finally:
        if mouth_task is not None:
            mouth_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mouth_task
        daemon.terminate()
        # In a thread: the emulated modem lives on this loop and must keep answering.
        await asyncio.to_thread(daemon.wait, TIMEOUT_S)
        await server.stop()
        os.close(fd)
    errors = log.read_text(errors="replace")
    assert daemon.returncode == 0, errors
    # Call control only on the modem: off-hook in voice mode, never +VTR.
    commands = server.sim.commands
    assert any(c.startswith("AT+VLS=1") for c in commands)
    assert "AT+VTR" not in commands, commands
    # The call is indexed, with its recording.
    assert call["line"] == "main"
    assert call["caller_number"] == "+3611234567"
    assert call["outcome"] == "missed"  # the shop never lifted; the caller hung up
    assert call["recording_decision"] == "recorded"
    assert call["notice_completed"] == 1
    events = query(db, "SELECT state, detail FROM events WHERE call_id = ?", call["id"])
    assert any("busy" in (e["detail"] or "") for e in events), [dict(e) for e in events]
    path = Path(call["recording_path"])
    assert sha256_file(path) == call["recording_sha256"]
    audio, rate = soundfile.read(path, dtype="int16")
    assert rate == 8000
    # The caller channel is the capture stream, sample-exact: a contiguous stretch of what
    # the caller said, from where recording started to the hang-up.
    caller = np.ascontiguousarray(audio[:, 0]).astype("<i2")
    assert len(caller) >= RECORD_FRAMES * FRAME_SAMPLES // 2
    offset = voice.tobytes().find(caller[:FRAME_SAMPLES].tobytes())
    assert offset >= 0, "the recording's caller channel is not the captured audio"
    assert offset % 2 == 0
    start = offset // 2
    assert np.array_equal(caller, voice[start : start + len(caller)])
    # The notice went out through the sound card, sample-exact: every sample, in order. A
    # machine loaded enough to make the daemon late may make the card play silence in between
    # (an underrun: the ring pads with zeros and drops nothing), which is all that may differ.
    notice = PromptLibrary.load(state_dir / "prompt-cache", lang="hu").notice
    played = np.frombuffer((tmp_path / "playback.raw").read_bytes(), dtype="<i2")
    first = int(np.flatnonzero(np.abs(notice) > 100)[0])
    probe = notice[first : first + FRAME_SAMPLES]
    at = played.tobytes().find(probe.tobytes())
    assert at >= 0, "the notice is not in what the sound card played"
    begin = at // 2 - first
    inserted = silence_inserted(notice[first:], played[at // 2 :])
    assert inserted is not None, "the notice was not played sample-exact"
    assert inserted <= 8000, f"{inserted} samples of underrun silence in the notice"
    if inserted == 0:
        assert np.array_equal(played[begin : begin + len(notice)], notice)
