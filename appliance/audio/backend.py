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
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

import numpy as np

from appliance.audio.buffers import (
    JITTER_MAX_FRAMES,
    CaptureFramer,
    FrameSource,
    SampleRing,
    silence,
)
from appliance.audio.hybrid import Hybrid, HybridSpec, add_echo
from appliance.audio.pcm import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE_HZ
from appliance.errors import AudioError

_LOGGER = logging.getLogger(__name__)

#: Playback ring for the real device: 200 ms is ample and bounds the added latency.
PLAYBACK_RING_SAMPLES: Final = SAMPLE_RATE_HZ // 5
#: The handset sound card's period (PortAudio blocksize). The earpiece takes the caller's voice
#: from the playback ring this often, so a frame from the line waits less than this for it;
#: and the capture is cut into frames at the block boundary just before the line's tick
#: (:class:`~appliance.audio.buffers.CaptureFramer`). A 20 ms period left either direction
#: waiting up to a whole frame (docs/performance.md, "Latency"). 5 ms periods are routine for
#: USB audio on ALSA; the callback then runs 200 times a second, each only copying a block
#: (the loop still gets one capture frame per 20 ms).
HANDSET_PERIOD_MS: Final = 5

CaptureCallback = Callable[[np.ndarray], None]


class HandsetAudio(Protocol):
    """The shop handset's audio path (see module docstring for the contract)."""

    stats: dict[str, int]

    async def start(self, on_capture: CaptureCallback) -> None: ...

    def play(self, frame: np.ndarray) -> None: ...

    async def stop(self) -> None: ...


class _CaptureSink(Protocol):
    _on_capture: CaptureCallback | None
    _capturing: bool


def _deliver_capture(backend: _CaptureSink, frame: np.ndarray) -> None:
    """Hand ``frame`` to the backend's ``on_capture``, marking the call so that a frame played
    from inside it (the idle player, the dial tone) is not taken for the line's clock."""
    if backend._on_capture is not None:
        backend._capturing = True
        try:
            backend._on_capture(frame)
        finally:
            backend._capturing = False


class SimHandsetAudio:
    """``sim://``: an in-memory handset on its own clock, a sound card of ``period_ms``.

    The simulated shop assistant plugs in with :meth:`connect_user`: its *mouth* is a frame
    source read once per captured frame, its *ear* receives each block the earpiece takes
    (``period_ms`` of audio; a frame at the default 20 ms).

    With a period shorter than a frame it models :class:`SoundDeviceAudio`'s card: the
    earpiece takes a block per period from the playback ring, and a captured frame is cut at
    the period boundary just before the line's tick (:class:`CaptureFramer`; the mouth
    simply speaks its next frame a block later, as the card's newest samples would be).

    Args:
        echo: the SLIC's hybrid (what the earpiece plays returns in the mouthpiece capture,
            :mod:`appliance.audio.hybrid`); None: no echo.
        period_ms: the card's period; it must divide 20 ms. The 20 ms default costs one
            timer a frame (the daemon on ``sim://``); the bench models the handset's card
            (HANDSET_PERIOD_MS).
    """

    def __init__(self, *, echo: HybridSpec | None = None, period_ms: int = FRAME_MS) -> None:
        if period_ms <= 0 or FRAME_MS % period_ms:
            raise ValueError(f"period_ms must divide {FRAME_MS} ms, not {period_ms}")
        self.stats: dict[str, int] = {"underruns": 0, "overruns": 0, "shed": 0, "frames": 0}
        self._period_s = period_ms / 1000
        self._block = period_ms * SAMPLE_RATE_HZ // 1000
        self._playback = SampleRing(JITTER_MAX_FRAMES * FRAME_SAMPLES, name="earpiece")
        self._framer = CaptureFramer(self._block)
        self._captured = 0  # samples the card has captured since the last frame was cut
        self._capturing = False  # in on_capture: a frame played now is this clock's
        self._heard = np.zeros(FRAME_SAMPLES, dtype=np.int16)  # the earpiece's last 20 ms
        self._mouth: FrameSource | None = None
        self._ear: Callable[[np.ndarray], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._next_tick = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
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
        self._loop = loop
        self._next_tick = loop.time() + self._period_s
        self._timer = loop.call_at(self._next_tick, self._tick, loop)

    def play(self, frame: np.ndarray) -> None:
        if self._loop is not None and not self._capturing:
            # The line's tick: the call plays the earpiece's frame as it takes the mouthpiece's.
            # A frame played from within the capture callback is paced by this card's own
            # clock (the idle player, the dial tone) and says nothing about the line's.
            self._framer.line_tick(self._loop.time())
        self._playback.write(frame)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        # A timer callback per period, not a task sleeping: one loop turn per tick instead of
        # two (the sleep's timer, then the task's wake-up). Scheduled on absolute times so the
        # simulated clock does not drift with load, and before the work so that a failing
        # callback (logged by the loop) does not stop the clock.
        now = self._next_tick
        self._next_tick += self._period_s
        self._timer = loop.call_at(self._next_tick, self._tick, loop)
        block = self._block
        out = np.empty(block, dtype=np.int16)
        self._playback.read_into(out)
        if self._ear is not None:
            self._ear(out)
        heard = self._heard
        if block == FRAME_SAMPLES:
            heard = out
        else:
            heard[:-block] = heard[block:]
            heard[-block:] = out
        self.stats["underruns"] = self._playback.underruns
        self.stats["overruns"] = self._playback.overruns
        self.stats["shed"] = self._playback.shed
        self._captured += block
        if not self._framer.due(now, self._captured):
            return
        self._captured = 0
        frame = self._mouth.read(FRAME_SAMPLES) if self._mouth is not None else silence()
        if self.hybrid is not None:
            # The earpiece's previous 20 ms return through the SLIC's hybrid now.
            frame = add_echo(frame, self._echo)
            self._echo = self.hybrid.echo(heard.copy())
        self.stats["frames"] += 1
        _deliver_capture(self, frame)


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
        # The handset's card runs short periods, its capture cut into frames aligned to the
        # line's clock; a line's own card clocks the call itself: a frame per period.
        period_ms = HANDSET_PERIOD_MS if role == "handset" else FRAME_MS
        self._block = period_ms * SAMPLE_RATE_HZ // 1000
        self._framer = CaptureFramer(self._block) if self._block < FRAME_SAMPLES else None
        # Captured samples not yet cut into a frame (callback thread only; preallocated).
        self._captured = np.zeros(2 * FRAME_SAMPLES, dtype=np.int16)
        self._captured_n = 0
        self._capturing = False
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
                blocksize=self._block,
                callback=self._callback,
            )
            self._stream.start()
        except Exception as exc:  # sounddevice raises PortAudioError/ValueError
            raise AudioError(f"cannot open {self.role} audio {self.device!r}: {exc}") from exc
        _LOGGER.info("%s audio open on %s", self.role, self.device)

    def _callback(self, indata: np.ndarray, outdata: np.ndarray, frames: int, time_info: Any,
                  status: Any) -> None:
        # Real-time thread: no logging, no allocation beyond the capture copy handed over.
        if status:
            self.stats["status"] += 1
        self._ring.read_into(outdata[:, 0])
        self.stats["frames"] += 1
        loop = self._loop
        if loop is None or self._on_capture is None:
            return
        framer = self._framer
        if framer is None:
            loop.call_soon_threadsafe(self._deliver, indata[:, 0].copy())
            return
        captured, n, block = self._captured, self._captured_n, len(indata)
        if n + block > len(captured):  # keep the newest (a frame cut late skips the oldest)
            keep = len(captured) - block
            captured[:keep] = captured[n - keep : n]
            n = keep
        captured[n : n + block] = indata[:, 0]
        n += block
        if framer.due(time.monotonic(), n):
            loop.call_soon_threadsafe(self._deliver, captured[n - FRAME_SAMPLES : n].copy())
            n = 0
        self._captured_n = n

    def _deliver(self, frame: np.ndarray) -> None:
        """One captured frame to ``on_capture`` (on the loop)."""
        _deliver_capture(self, frame)

    def play(self, frame: np.ndarray) -> None:
        if self._framer is not None and not self._capturing:
            # The line's tick (the loop's clock); not a frame played from within on_capture,
            # paced by this card's own clock (SimHandsetAudio.play says why).
            self._framer.line_tick(time.monotonic())
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
