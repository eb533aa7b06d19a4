"""Jitter buffers and frame sources: the pieces the bridge plugs together.

Everything here runs on the event loop, except :class:`SampleRing`, which is the one buffer the
PortAudio callback thread touches (preallocated; a lock only around the copy, per the
sounddevice callback contract: no allocation, no logging, no blocking in the callback).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol

import numpy as np

from appliance.audio.pcm import FRAME_SAMPLES

#: Frames a jitter buffer holds before it drops the oldest (5 × 20 ms = 100 ms).
JITTER_MAX_FRAMES: Final = 5


class FrameSource(Protocol):
    """Something that yields audio one frame at a time (8 kHz int16)."""

    def read(self, n: int) -> np.ndarray:
        """Return exactly ``n`` int16 samples (silence when there is nothing to say)."""
        ...


def silence(n: int = FRAME_SAMPLES) -> np.ndarray:
    return np.zeros(n, dtype=np.int16)


class Silence:
    """A source of digital silence."""

    def read(self, n: int) -> np.ndarray:
        return silence(n)


class ClipPlayer:
    """Plays a queue of clips once, then silence, calling ``on_done`` exactly once.

    Clips may be appended while playing (the notice's layers follow each other with no gap);
    an appended clip may carry its own callback, called when its last sample has been read.
    ``on_done`` fires when the last queued sample has been read.
    """

    def __init__(self, *clips: np.ndarray, on_done: Callable[[], None] | None = None) -> None:
        self._clips: deque[tuple[np.ndarray, Callable[[], None] | None]] = deque(
            (np.asarray(c, dtype=np.int16), None) for c in clips)
        self._pos = 0
        self._on_done = on_done
        self.samples_played = 0
        self.finished = False

    def append(self, clip: np.ndarray, on_done: Callable[[], None] | None = None) -> None:
        """Queue ``clip`` after the others; ``on_done`` is called when it has been read."""
        self._clips.append((np.asarray(clip, dtype=np.int16), on_done))
        self.finished = False

    @property
    def remaining_samples(self) -> int:
        return sum(len(c) for c, _ in self._clips) - self._pos

    def read(self, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.int16)
        filled = 0
        while filled < n and self._clips:
            clip, clip_done = self._clips[0]
            take = min(n - filled, len(clip) - self._pos)
            out[filled : filled + take] = clip[self._pos : self._pos + take]
            filled += take
            self._pos += take
            if self._pos >= len(clip):
                self._clips.popleft()
                self._pos = 0
                if clip_done is not None:
                    clip_done()
        self.samples_played += filled
        if not self._clips and not self.finished:
            self.finished = True
            if self._on_done is not None:
                self._on_done()
        return out


class JitterBuffer:
    """A bounded FIFO of frames between two clocks (loop-side only).

    ``push`` drops the oldest frame when full (counted as an overrun); ``read`` pads with
    silence when empty (counted as an underrun once audio has flowed).
    """

    def __init__(self, max_frames: int = JITTER_MAX_FRAMES) -> None:
        self._frames: deque[np.ndarray] = deque()
        self._max = max_frames
        self._started = False
        self.underruns = 0
        self.overruns = 0

    def push(self, frame: np.ndarray) -> None:
        if len(self._frames) >= self._max:
            self._frames.popleft()
            self.overruns += 1
        self._frames.append(frame)
        self._started = True

    def __len__(self) -> int:
        return len(self._frames)

    def clear(self) -> None:
        self._frames.clear()
        self._started = False

    def read(self, n: int = FRAME_SAMPLES) -> np.ndarray:
        if self._frames:
            frame = self._frames.popleft()
            if len(frame) == n:
                return frame
            out = np.zeros(n, dtype=np.int16)
            out[: min(n, len(frame))] = frame[:n]
            return out
        if self._started:
            self.underruns += 1
        return silence(n)


class SampleRing:
    """Preallocated single-producer/single-consumer sample ring for a real-time callback.

    The producer (event loop) writes with :meth:`write`; the consumer (PortAudio thread) reads
    into its output buffer with :meth:`read_into`, padding with silence on underrun and
    counting it. The lock guards only the index arithmetic and copy.
    """

    def __init__(self, capacity: int) -> None:
        self._buf = np.zeros(capacity, dtype=np.int16)
        self._cap = capacity
        self._read = 0
        self._count = 0
        self._lock = threading.Lock()
        self.underruns = 0
        self.overruns = 0

    def __len__(self) -> int:
        return self._count

    def write(self, samples: np.ndarray) -> None:
        with self._lock:
            n = len(samples)
            if n > self._cap:
                samples = samples[-self._cap :]
                n = self._cap
            free = self._cap - self._count
            if n > free:  # drop the oldest samples: a late reader must not grow latency
                drop = n - free
                self._read = (self._read + drop) % self._cap
                self._count -= drop
                self.overruns += 1
            start = (self._read + self._count) % self._cap
            first = min(n, self._cap - start)
            self._buf[start : start + first] = samples[:first]
            self._buf[: n - first] = samples[first:]
            self._count += n

    def read_into(self, out: np.ndarray) -> None:
        """Fill ``out`` (int16, preallocated) — called from the audio callback thread."""
        n = len(out)
        with self._lock:
            take = min(n, self._count)
            first = min(take, self._cap - self._read)
            out[:first] = self._buf[self._read : self._read + first]
            out[first:take] = self._buf[: take - first]
            self._read = (self._read + take) % self._cap
            self._count -= take
            if take < n:
                out[take:] = 0
                self.underruns += 1
