"""Handset audio endpoints, chosen by URL: ``sim://`` or ``alsa:<device>``.

Contract shared by every backend (8 kHz mono int16, 20 ms frames):

* ``await start(on_capture)`` opens the device; from then on ``on_capture(frame)`` is called
  on the event loop with each captured frame (what the shop says into the mouthpiece);
* ``play(frame)`` queues a frame for the earpiece without blocking (bounded buffer: a late
  consumer drops the oldest audio rather than growing latency);
* ``await stop()`` closes; ``stats`` counts underruns/overruns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final, Protocol

import numpy as np

from appliance.audio.buffers import FrameSource, JitterBuffer, SampleRing, silence
from appliance.audio.hybrid import Hybrid, HybridSpec, add_echo
from appliance.audio.pcm import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE_HZ
from appliance.errors import AudioError

_LOGGER = logging.getLogger(__name__)

FRAME_S: Final = FRAME_MS / 1000
#: Playback ring for the real device: 200 ms is ample and bounds the added latency.
PLAYBACK_RING_SAMPLES: Final = SAMPLE_RATE_HZ // 5

CaptureCallback = Callable[[np.ndarray], None]


class HandsetAudio(Protocol):
    """The shop handset's audio path (see module docstring for the contract)."""

    stats: dict[str, int]

    async def start(self, on_capture: CaptureCallback) -> None: ...

    def play(self, frame: np.ndarray) -> None: ...

    async def stop(self) -> None: ...


class SimHandsetAudio:
    """``sim://``: an in-memory handset on its own 20 ms clock.

    The simulated shop assistant plugs in with :meth:`connect_user`: its *mouth* is a frame
    source read once per tick, its *ear* receives each frame played to the earpiece.

    Args:
        echo: the SLIC's hybrid (what the earpiece plays returns in the mouthpiece capture,
            :mod:`appliance.audio.hybrid`); None: no echo.
    """

    def __init__(self, *, echo: HybridSpec | None = None) -> None:
        self.stats: dict[str, int] = {"underruns": 0, "overruns": 0, "shed": 0, "frames": 0}
        self._playback = JitterBuffer(name="earpiece")
        self._mouth: FrameSource | None = None
        self._ear: Callable[[np.ndarray], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._next_tick = 0.0
        self._on_capture: CaptureCallback | None = None
        self.hybrid: Hybrid | None = None
        self._echo: np.ndarray | None = None
        self.set_echo(echo)

    def set_echo(self, spec: HybridSpec | None) -> None:
        """Model the SLIC's hybrid with ``spec`` from the next tick on (None: no echo).

        Changing it mid-call is an echo path change (the shop moved the handset).
        """
        if spec is None:
            self.hybrid, self._echo = None, None
        elif self.hybrid is None:
            self.hybrid = Hybrid(spec)
        else:
            self.hybrid.change(spec)

    def connect_user(
        self, mouth: FrameSource | None, ear: Callable[[np.ndarray], None] | None
    ) -> None:
        self._mouth = mouth
        self._ear = ear

    async def start(self, on_capture: CaptureCallback) -> None:
        self._on_capture = on_capture
        loop = asyncio.get_running_loop()
        self._next_tick = loop.time() + FRAME_S
        self._timer = loop.call_at(self._next_tick, self._tick, loop)

    def play(self, frame: np.ndarray) -> None:
        self._playback.push(frame)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        # A timer callback per 20 ms, not a task sleeping: one loop turn per tick instead of
        # two (the sleep's timer, then the task's wake-up). Scheduled on absolute times so the
        # simulated clock does not drift with load, and before the work so that a failing
        # callback (logged by the loop) does not stop the clock.
        self._next_tick += FRAME_S
        self._timer = loop.call_at(self._next_tick, self._tick, loop)
        out = self._playback.read(FRAME_SAMPLES)
        if self._ear is not None:
            self._ear(out)
        frame = self._mouth.read(FRAME_SAMPLES) if self._mouth is not None else silence()
        if self.hybrid is not None:
            # The earpiece's previous frame returns through the SLIC's hybrid now.
            frame = add_echo(frame, self._echo)
            self._echo = self.hybrid.echo(out)
        self.stats["frames"] += 1
        self.stats["underruns"] = self._playback.underruns
        self.stats["overruns"] = self._playback.overruns
        self.stats["shed"] = self._playback.shed
        if self._on_capture is not None:
            self._on_capture(frame)


class SoundDeviceAudio:
    """``alsa:<device>``: a duplex 8 kHz sound card through PortAudio/ALSA.

    The USB sound card wired to the SLIC (the handset), or a line's own sound card (an FXO
    board or modem exposing the line audio, ``lines[].audio``; then its capture clocks the
    call). The PortAudio callback touches only the preallocated :class:`SampleRing` for
    playback and posts a copy of each captured block to the loop (sounddevice's callback
    contract).

    Args:
        device: the PortAudio/ALSA device name (``plughw:CARD=Device``, a PCM name).
        role: what it is, for logs and errors (``"handset"``, ``"line main"``).
    """

    def __init__(self, device: str, *, role: str = "handset") -> None:
        self.device = device
        self.role = role
        self.stats: dict[str, int] = {"underruns": 0, "overruns": 0, "shed": 0, "frames": 0,
                                      "status": 0}
        self._ring = SampleRing(PLAYBACK_RING_SAMPLES, name=f"{role} playback")
        self._stream: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_capture: CaptureCallback | None = None

    async def check(self) -> None:
        """Check that the device takes 8 kHz mono int16 both ways, without opening a stream.

        Raises:
            AudioError: PortAudio is missing or the device is absent or unsuitable.
        """
        await asyncio.to_thread(self._check_settings)

    def _check_settings(self) -> None:
        try:
            import sounddevice as sd  # imported late: PortAudio reads ALSA config at import
        except OSError as exc:  # libportaudio2 missing
            raise AudioError(f"PortAudio is not available: {exc}") from exc
        try:
            sd.check_input_settings(device=self.device, samplerate=SAMPLE_RATE_HZ, channels=1,
                                    dtype="int16")
            sd.check_output_settings(device=self.device, samplerate=SAMPLE_RATE_HZ, channels=1,
                                     dtype="int16")
        except Exception as exc:  # sounddevice raises PortAudioError/ValueError
            raise AudioError(f"cannot open {self.role} audio {self.device!r}: {exc}") from exc

    async def start(self, on_capture: CaptureCallback) -> None:
        try:
            import sounddevice as sd  # imported late: PortAudio reads ALSA config at import
        except OSError as exc:  # libportaudio2 missing
            raise AudioError(f"PortAudio is not available: {exc}") from exc
        self._loop = asyncio.get_running_loop()
        self._on_capture = on_capture
        try:
            sd.check_input_settings(device=self.device, samplerate=SAMPLE_RATE_HZ, channels=1,
                                    dtype="int16")
            sd.check_output_settings(device=self.device, samplerate=SAMPLE_RATE_HZ, channels=1,
                                     dtype="int16")
            self._stream = sd.Stream(
                device=self.device,
                samplerate=SAMPLE_RATE_HZ,
                channels=1,
                dtype="int16",
                blocksize=FRAME_SAMPLES,
                callback=self._callback,
            )
            self._stream.start()
        except Exception as exc:  # sounddevice raises PortAudioError/ValueError
            raise AudioError(f"cannot open {self.role} audio {self.device!r}: {exc}") from exc
        _LOGGER.info("%s audio open on %s", self.role, self.device)

    def _callback(self, indata: np.ndarray, outdata: np.ndarray, frames: int, time: Any,
                  status: Any) -> None:
        # Real-time thread: no logging, no allocation beyond the capture copy handed over.
        if status:
            self.stats["status"] += 1
        self._ring.read_into(outdata[:, 0])
        self.stats["frames"] += 1
        loop = self._loop
        if loop is not None and self._on_capture is not None:
            loop.call_soon_threadsafe(self._on_capture, indata[:, 0].copy())

    def play(self, frame: np.ndarray) -> None:
        self._ring.write(frame)
        self.stats["underruns"] = self._ring.underruns
        self.stats["overruns"] = self._ring.overruns
        self.stats["shed"] = self._ring.shed

    async def stop(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await asyncio.to_thread(stream.close)


#: The earlier name, kept working.
SoundDeviceHandsetAudio = SoundDeviceAudio


def open_handset_audio(url: str) -> HandsetAudio:
    """Build the backend named by ``url`` (``sim://`` or ``alsa:<device>``)."""
    if url == "sim://":
        return SimHandsetAudio()
    if url.startswith("alsa:") and len(url) > len("alsa:"):
        return SoundDeviceHandsetAudio(url[len("alsa:") :])
    raise AudioError(f"unknown handset audio URL {url!r} (expected sim:// or alsa:<device>)")
