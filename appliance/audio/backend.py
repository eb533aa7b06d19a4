"""Handset audio endpoints, chosen by URL: ``sim://`` or ``alsa:<device>``.

Contract shared by every backend (8 kHz mono int16, 20 ms frames):

* ``await start(on_capture)`` opens the device; from then on ``on_capture(frame)`` is called
  on the event loop with each captured frame (what the shop says into the mouthpiece);
* ``pull()``, on the loop, is a line's tick: the call is about to take the mouthpiece's frame
  (and play the earpiece's). The freshest frame is handed to ``on_capture`` at once, taken
  from the card's capture (:class:`~appliance.audio.buffers.CapturePuller`). While a line
  pulls, the card hands over nothing by itself — the loop wakes once per frame, for the line
  — and ``CAPTURE_PAUSE_MS`` after the last pull the card's own clock hands frames over
  again (the dial tone, the idle player: docs/audio.md §6);
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
    CAPTURE_PAUSE_MS,
    JITTER_MAX_FRAMES,
    CapturePuller,
    CaptureRing,
    FrameSource,
    LevelControl,
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
#: and the line's tick takes the capture's freshest frame, complete at a block boundary (less
#: than a block and CAPTURE_MARGIN_MS before the tick). A 20 ms period left either direction
#: waiting up to a whole frame (docs/performance.md, "Latency"). 5 ms periods are routine for
#: USB audio on ALSA; the callback then runs 200 times a second, each only copying a block.
HANDSET_PERIOD_MS: Final = 5
#: While a line pulls, the simulated card looks this often whether it still does (its own
#: clock resumes when not): a timer five times a second instead of one per frame.
SIM_PULL_WATCH_MS: Final = 200

CaptureCallback = Callable[[np.ndarray], None]


class EarpieceTrim:
    """Keeps the earpiece's playback ring from standing blocks behind the line's frames.

    The card reads a block per period on its own clock; the line writes a frame per tick,
    each as late as the loop runs it. A write late by more than the unread samples leaves
    the card a block short (an underrun, padded), and every later frame then waits that
    block longer: the level ratchets up by the loop's worst lateness, up to a frame less a
    block, which the ring's whole-frame level control never sheds. So when at every write of
    a LEVEL_WINDOW_MS window at least a block stood unread, the oldest block is skipped
    (5 ms of the caller's voice, counted in :attr:`trims`). Loop side, at each line write.
    """

    def __init__(self, block_samples: int) -> None:
        self._block = block_samples
        self._level = LevelControl()
        #: Blocks skipped.
        self.trims = 0

    def before_write(self, ring: SampleRing) -> None:
        """The line is about to write a frame into ``ring``."""
        if self._level.observe(len(ring) // self._block) and len(ring) >= self._block:
            ring.skip(self._block)
            self._level.shed()
            self.trims += 1


class HandsetAudio(Protocol):
    """The shop handset's audio path (see module docstring for the contract)."""

    stats: dict[str, int]

    async def start(self, on_capture: CaptureCallback) -> None: ...

    def pull(self) -> None: ...

    def play(self, frame: np.ndarray) -> None: ...

    async def stop(self) -> None: ...


class SimHandsetAudio:
    """``sim://``: an in-memory handset, a sound card of ``period_ms``.

    The simulated shop assistant plugs in with :meth:`connect_user`: its *mouth* is a frame
    source read once per captured frame, its *ear* receives each block the earpiece takes
    (``period_ms`` of audio; a frame at the default 20 ms). Both are called with the card's
    clock at that block in :meth:`time`.

    The card's clock is virtual: blocks at fixed times on the loop's clock. With no line
    pulling it is a timer per period, a captured frame every 20 ms. While a line pulls
    (:meth:`pull`), it runs no timer per frame: each pull (and each frame played) first plays
    and captures whatever blocks the card would have by the loop's time, then the line takes
    its frame as from a card's ring (:class:`CapturePuller`, the mouth speaking its next frame
    at the block where that frame ends). A timer every SIM_PULL_WATCH_MS notices when the
    line stopped; the card's own clock then resumes.

    Args:
        echo: the SLIC's hybrid (what the earpiece plays returns in the mouthpiece capture,
            :mod:`appliance.audio.hybrid`); None: no echo.
        period_ms: the card's period; it must divide 20 ms. The bench models the handset's
            card (HANDSET_PERIOD_MS).
    """

    def __init__(self, *, echo: HybridSpec | None = None, period_ms: int = FRAME_MS) -> None:
        if period_ms <= 0 or FRAME_MS % period_ms:
            raise ValueError(f"period_ms must divide {FRAME_MS} ms, not {period_ms}")
        self.stats: dict[str, int] = {"underruns": 0, "overruns": 0, "shed": 0, "frames": 0,
                                      "capture_repeats": 0, "capture_skips": 0,
                                      "earpiece_trims": 0}
        self._period_s = period_ms / 1000
        self._block = period_ms * SAMPLE_RATE_HZ // 1000
        self._playback = SampleRing(JITTER_MAX_FRAMES * FRAME_SAMPLES, name="earpiece")
        self._puller = CapturePuller(self._block)
        # A 20 ms card's level is the ring's own (whole frames).
        self._trim = EarpieceTrim(self._block) if self._block < FRAME_SAMPLES else None
        self._heard = np.zeros(FRAME_SAMPLES, dtype=np.int16)  # the earpiece's last 20 ms
        self._mouth: FrameSource | None = None
        self._ear: Callable[[np.ndarray], None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # the card's own clock
        self._watch: asyncio.TimerHandle | None = None  # while a line pulls
        self._next_tick = 0.0  # the next block's time
        self._now = 0.0  # the block being played/captured
        self._in_block = False
        self._captured = 0  # samples captured since the start
        self._cut = 0  # where the card's own clock cut its last frame
        self._pulled_at = -1e9
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_capture: CaptureCallback | None = None
        self.hybrid: Hybrid | None = None
        self._echo: np.ndarray | None = None
        self.set_echo(echo)

    def set_echo(self, spec: HybridSpec | None) -> None:
        """Model the SLIC's hybrid with ``spec`` from the next frame on (None: no echo).

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

    def time(self) -> float:
        """The card's clock: inside the mouth and the ear, the time of the block being
        captured/played (the card's, however late the loop runs it); else the loop's."""
        if self._in_block or self._loop is None:
            return self._now
        return self._loop.time()

    async def start(self, on_capture: CaptureCallback) -> None:
        self._on_capture = on_capture
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._next_tick = loop.time() + self._period_s
        self._timer = loop.call_at(self._next_tick, self._tick, loop)

    def pull(self) -> None:
        loop = self._loop
        if loop is None:
            return
        t = loop.time()
        self._pulled_at = t
        if self._timer is not None:  # a line drives now: the card's own clock stops
            self._timer.cancel()
            self._timer = None
        if self._watch is None:
            self._watch = loop.call_at(t + SIM_PULL_WATCH_MS / 1000, self._watch_pulls, loop)
        # Where the card stands at t: the blocks due by then, the newest one's time.
        due = int((t - self._next_tick) // self._period_s) + 1 if t >= self._next_tick else 0
        newest_t = self._next_tick + (due - 1) * self._period_s
        end = self._puller.take(t, self._captured + due * self._block, newest_t)
        frame = None
        if end is not None:
            while self._captured < end:  # the card up to the block where the frame ends
                self._play_block(self._next_tick)
                self._next_tick += self._period_s
            frame = self._capture_frame()
        self._catch_up(t)
        self.stats["capture_repeats"] = self._puller.repeats
        self.stats["capture_skips"] = self._puller.skips
        if frame is not None and self._on_capture is not None:
            self._on_capture(frame)

    def play(self, frame: np.ndarray) -> None:
        if self._watch is not None and self._loop is not None:
            # A line drives: the blocks the card took before now read the ring as it was.
            self._catch_up(self._loop.time())
            if self._trim is not None:
                self._trim.before_write(self._playback)
                self.stats["earpiece_trims"] = self._trim.trims
        self._playback.write(frame)

    async def stop(self) -> None:
        for handle in (self._timer, self._watch):
            if handle is not None:
                handle.cancel()
        self._timer = self._watch = None

    def _catch_up(self, t: float) -> None:
        """Play and capture every block due by ``t`` (while a line drives)."""
        while self._next_tick <= t:
            self._play_block(self._next_tick)
            self._next_tick += self._period_s
        self._cut = self._captured

    def _watch_pulls(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        if now - self._pulled_at < CAPTURE_PAUSE_MS / 1000:
            self._watch = loop.call_at(self._pulled_at + SIM_PULL_WATCH_MS / 1000,
                                       self._watch_pulls, loop)
            return
        # The line stopped pulling: the card's own clock again, from the next block on.
        self._watch = None
        self._catch_up(now)
        self._timer = loop.call_at(self._next_tick, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        # A timer callback per period, not a task sleeping: one loop turn per tick instead of
        # two (the sleep's timer, then the task's wake-up). Scheduled on absolute times so the
        # simulated clock does not drift with load, and before the work so that a failing
        # callback (logged by the loop) does not stop the clock.
        now = self._next_tick
        self._next_tick += self._period_s
        self._timer = loop.call_at(self._next_tick, self._tick, loop)
        self._play_block(now)
        if self._captured - self._cut < FRAME_SAMPLES:
            return
        self._cut = self._captured
        frame = self._capture_frame()
        if self._on_capture is not None:
            self._on_capture(frame)

    def _play_block(self, t: float) -> None:
        """The card's block at ``t``: the earpiece takes one from the playback ring, the
        mouthpiece captures one."""
        block = self._block
        out = np.empty(block, dtype=np.int16)
        self._playback.read_into(out)
        self._now = t
        if self._ear is not None:
            self._in_block = True
            try:
                self._ear(out)
            finally:
                self._in_block = False
        heard = self._heard
        if block == FRAME_SAMPLES:
            self._heard = out
        else:
            heard[:-block] = heard[block:]
            heard[-block:] = out
        self.stats["underruns"] = self._playback.underruns
        self.stats["overruns"] = self._playback.overruns
        self.stats["shed"] = self._playback.shed
        self._captured += block

    def _capture_frame(self) -> np.ndarray:
        """The mouth's next frame, captured at the newest block, with the earpiece's echo."""
        self._in_block = True
        try:
            frame = self._mouth.read(FRAME_SAMPLES) if self._mouth is not None else silence()
        finally:
            self._in_block = False
        if self.hybrid is not None:
            # The earpiece's previous 20 ms return through the SLIC's hybrid now.
            frame = add_echo(frame, self._echo)
            self._echo = self.hybrid.echo(self._heard.copy())
        self.stats["frames"] += 1
        return frame


class SoundDeviceAudio:
    """``alsa:<device>``: a duplex 8 kHz sound card through PortAudio/ALSA.

    The USB sound card wired to the SLIC (the handset), or a line's own sound card (an FXO
    board or modem exposing the line audio, ``lines[].audio``; then its capture clocks the
    call, a frame per period posted to the loop). The PortAudio callback touches only
    preallocated rings: it reads the earpiece's block from the playback :class:`SampleRing`
    and appends the mouthpiece's to the :class:`CaptureRing`. The loop takes the capture from
    that ring at the line's tick (:meth:`pull`); only while no line pulls does the callback
    post a frame to the loop every 20 ms (a copy; sounddevice's callback contract).

    Args:
        device: the PortAudio/ALSA device name (``plughw:CARD=Device``, a PCM name).
        role: what it is, for logs and errors (``"handset"``, ``"line main"``).
    """

    def __init__(self, device: str, *, role: str = "handset") -> None:
        self.device = device
        self.role = role
        self.stats: dict[str, int] = {"underruns": 0, "overruns": 0, "shed": 0, "frames": 0,
                                      "status": 0, "capture_repeats": 0, "capture_skips": 0,
                                      "earpiece_trims": 0}
        self._ring = SampleRing(PLAYBACK_RING_SAMPLES, name=f"{role} playback")
        # The handset's card runs short periods, its capture taken at the line's ticks; a
        # line's own card clocks the call itself: a frame per period.
        period_ms = HANDSET_PERIOD_MS if role == "handset" else FRAME_MS
        self._block = period_ms * SAMPLE_RATE_HZ // 1000
        #: A line's card posts every block: its capture is the call's clock.
        self._clocks_the_call = role != "handset"
        self._capture = CaptureRing()
        self._puller = CapturePuller(self._block)
        self._trim = EarpieceTrim(self._block) if self._block < FRAME_SAMPLES else None
        self._cut = 0  # where the card's own clock cut its last frame (callback thread)
        #: Until when (time.monotonic) a line drives the capture: set by each pull on the loop,
        #: read by the callback (a float attribute: one atomic load).
        self._pulled_until = -1e9
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
        # Real-time thread: no logging; no allocation but the copy posted while no line pulls.
        if status:
            self.stats["status"] += 1
        self._ring.read_into(outdata[:, 0])
        self.stats["frames"] += 1
        loop = self._loop
        if loop is None or self._on_capture is None:
            return
        if self._clocks_the_call:
            loop.call_soon_threadsafe(self._deliver, indata[:, 0].copy())
            return
        now = time.monotonic()
        capture = self._capture
        capture.write(indata[:, 0], now)
        captured, _ = capture.position()
        if now < self._pulled_until:
            self._cut = captured  # a line takes the frames at its ticks
        elif captured - self._cut >= FRAME_SAMPLES:
            # No line drives: the card's own clock hands a frame over every 20 ms.
            self._cut = captured
            loop.call_soon_threadsafe(self._deliver, capture.frame(captured))

    def _deliver(self, frame: np.ndarray) -> None:
        """One captured frame to ``on_capture`` (on the loop)."""
        if not self._clocks_the_call and time.monotonic() < self._pulled_until:
            return  # posted just before a line started pulling: the line takes its own
        if self._on_capture is not None:
            self._on_capture(frame)

    def pull(self) -> None:
        if self._on_capture is None or self._clocks_the_call:
            return
        now = time.monotonic()
        self._pulled_until = now + CAPTURE_PAUSE_MS / 1000
        captured, newest_t = self._capture.position()
        end = self._puller.take(now, captured, newest_t)
        self.stats["capture_repeats"] = self._puller.repeats
        self.stats["capture_skips"] = self._puller.skips
        if end is not None:
            self._on_capture(self._capture.frame(end))

    def play(self, frame: np.ndarray) -> None:
        if self._trim is not None and time.monotonic() < self._pulled_until:
            self._trim.before_write(self._ring)  # a line's frame (EarpieceTrim)
            self.stats["earpiece_trims"] = self._trim.trims
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
