"""Jitter buffers and frame sources: the pieces the bridge plugs together.

Everything here runs on the event loop, except :class:`SampleRing`, which is the one buffer the
PortAudio callback thread touches (preallocated; a lock only around the copy, per the
sounddevice callback contract: no allocation, no logging, no blocking in the callback).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np

from appliance.audio.pcm import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE_HZ

_LOGGER = logging.getLogger(__name__)

#: Frames a jitter buffer holds before it drops the oldest (5 × 20 ms = 100 ms).
JITTER_MAX_FRAMES: Final = 5
#: Level control (docs/audio.md "Jitter buffers"): when a buffer's level at every read of a
#: window this long stood STANDING_FRAMES or more above what the read takes, one frame is shed.
#: A loop stall bursts one clock's frames into the buffer and nothing else brings the level
#: down again: each stall would add its frames to the latency for the rest of the call.
LEVEL_WINDOW_MS: Final = 1000
#: Frames of excess that must stand for the whole window before one is shed.
STANDING_FRAMES: Final = 1
#: Once a shed is due, a quiet frame is waited for this long (speech pauses often); then the
#: quietest frame goes, its gap crossfaded.
SHED_QUIET_WAIT_MS: Final = 1000
#: A frame at most this loud (RMS, dBFS) is quiet: it is shed whole, with no crossfade.
SHED_QUIET_DBFS: Final = -45.0
#: A shed frame that is not quiet leaves a gap crossfaded over this many samples (5 ms): the
#: next frame fades in from where the shed one started, so the waveform does not jump.
SHED_FADE_SAMPLES: Final = 40

#: At the line's tick the handset's capture is taken from the card's ring (CapturePuller): a
#: call that starts takes the newest complete frame unless its last block came in less than
#: this before the tick (the next tick, seen a little earlier or with the card's block a little
#: later, would then not find the block that continues the frame).
CAPTURE_MARGIN_MS: Final = 2
#: A line that has not taken a frame for this long no longer drives the capture: the card's
#: own clock hands frames over again, and the next pull aligns afresh.
CAPTURE_PAUSE_MS: Final = 100
#: The capture taken at the line's ticks is moved a block newer when, over this many ticks, it
#: was always at least a block (and the margin) older than it needed to be: the two crystals
#: drifted a block apart (≈ 100 s at 50 ppm).
CAPTURE_PHASE_WINDOW_TICKS: Final = 50
#: The card's capture ring (250 ms): what the line has not taken survives a loop stall this
#: long without a gap in the shop's voice.
CAPTURE_RING_SAMPLES: Final = SAMPLE_RATE_HZ // 4

_QUIET_SUM_SQ: Final = FRAME_SAMPLES * (32767.0 * 10 ** (SHED_QUIET_DBFS / 20)) ** 2


@dataclass(frozen=True, slots=True)
class LevelPolicy:
    """When a buffer sheds a frame (the module's constants; tests inject their own).

    Attributes:
        window_frames: reads (one frame each) over which the level must stand.
        standing_frames: the excess, in frames, that must stand at every read of the window.
        quiet_wait_frames: reads a due shed waits for a quiet frame.
        quiet_sum_sq: a frame whose sum of squares (int16 units) is at most this is quiet.
        fade_samples: the crossfade over a gap left by a frame that was not quiet.
    """

    window_frames: int = LEVEL_WINDOW_MS // FRAME_MS
    standing_frames: int = STANDING_FRAMES
    quiet_wait_frames: int = SHED_QUIET_WAIT_MS // FRAME_MS
    quiet_sum_sq: float = _QUIET_SUM_SQ
    fade_samples: int = SHED_FADE_SAMPLES


def _sum_sq(frame: np.ndarray) -> float:
    x = frame.astype(np.float32)
    return float(x @ x)


def _log_shed(name: str, how: str, policy: LevelPolicy, count: int) -> None:
    _LOGGER.info("%s: shed one %s frame (the level had stood %d frame(s) above the reads for "
                 "%d ms); %d shed so far", name, how, policy.standing_frames,
                 policy.window_frames * FRAME_MS, count)


def crossfade(shed: np.ndarray, following: np.ndarray, fade_samples: int) -> np.ndarray:
    """``following`` with its first ``fade_samples`` faded in from ``shed``'s (a new array).

    ``shed`` continues what was heard before it, ``following`` what comes after: the fade
    joins the two without a step in the waveform.
    """
    out = following.copy()
    n = min(fade_samples, len(shed), len(following))
    if n:
        ramp = (np.arange(n, dtype=np.float32) + 0.5) / n
        mixed = shed[:n] * (1 - ramp) + following[:n] * ramp
        out[:n] = np.rint(mixed).astype(np.int16)
    return out


class LevelControl:
    """Decides when a buffer between two clocks sheds a frame (:class:`LevelPolicy`).

    The owner calls :meth:`observe` with its level (in frames, excess over what the read takes)
    once per frame read; it returns True when a shed is due: the level stood at or above
    ``standing_frames`` at every read of a whole window, and has not fallen since. The owner
    then sheds (a quiet frame, else after ``quiet_wait_frames`` the quietest) and calls
    :meth:`shed`. Deterministic: it counts reads, never looks at a clock.
    """

    def __init__(self, policy: LevelPolicy | None = None) -> None:
        self.policy = policy or LevelPolicy()
        self._reads = 0
        self._min_excess: int | None = None
        self._due_reads: int | None = None

    def reset(self) -> None:
        self._reads, self._min_excess, self._due_reads = 0, None, None

    def observe(self, excess: int) -> bool:
        """One read at ``excess`` frames above what it takes; True while a shed is due."""
        policy = self.policy
        if self._due_reads is not None:
            if excess < policy.standing_frames:
                self.reset()  # the level came down by itself (an underrun, a slower clock)
                return False
            self._due_reads += 1
            return True
        self._reads += 1
        self._min_excess = excess if self._min_excess is None else min(self._min_excess, excess)
        if self._reads >= policy.window_frames:
            stood = self._min_excess >= policy.standing_frames
            self.reset()
            if stood:
                self._due_reads = 0
                return True
        return False

    @property
    def waited_out(self) -> bool:
        """A due shed has waited ``quiet_wait_frames`` for a quiet frame: shed the quietest."""
        return self._due_reads is not None and self._due_reads >= self.policy.quiet_wait_frames

    def shed(self) -> None:
        """The owner shed a frame: start a new window."""
        self.reset()


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


class CapturePuller:
    """Which 20 ms of a sound card's capture the line takes at its tick (docs/audio.md §6).

    The handset's card and the line run on two clocks. The card's blocks (a period each) go
    into a ring as they come; at each line tick the call takes one frame from it
    (:meth:`take`): the frame that continues the one taken at the tick before, so the shop's
    voice has no gap and no repeat. The first tick of a call (or after a pause) takes the
    newest complete frame, or the one a block older when the newest block came in less than
    ``margin_ms`` before the tick. From then on the frame taken was complete between the
    margin and a block more before the tick: a frame waits at most that long for the line.
    What the two clocks' drift and jitter do to it:

    * a tick that finds the continuing frame not yet complete (the tick came early, the card's
      block late) takes the newest frame instead: a part of a block is repeated (counted in
      :attr:`repeats`), and the frames then end a block earlier than the tick;
    * when, over CAPTURE_PHASE_WINDOW_TICKS ticks, every frame taken was complete at least a
      block and the margin before its tick, the next one is taken a block newer (one block of
      the shop's voice skipped, counted in :attr:`skips`).

    Deterministic given the times (seconds on one monotonic clock); loop-side only.
    """

    def __init__(self, block_samples: int, *, margin_ms: float = CAPTURE_MARGIN_MS,
                 capacity: int = CAPTURE_RING_SAMPLES) -> None:
        self._block = block_samples
        self._block_s = block_samples / SAMPLE_RATE_HZ
        self._margin_s = margin_ms / 1000
        self._capacity = capacity
        self._end: int | None = None  # where the last frame taken ended (capture position)
        self._last_t = -math.inf
        self._pulls = 0
        self._min_slack = math.inf
        #: Ticks that started taking afresh (a call, or a pause over).
        self.aligns = 0
        #: Ticks that found the continuing frame incomplete and took the newest one.
        self.repeats = 0
        #: Blocks skipped to follow the clocks' drift.
        self.skips = 0

    def take(self, t: float, captured: int, newest_t: float) -> int | None:
        """The line's tick at ``t``: where the frame to take ends (a capture position), or
        None when there is none (the card has captured nothing since the last frame).

        Args:
            t: the tick's time.
            captured: samples the card has captured since it started (the ring's position).
            newest_t: when its newest block came in.
        """
        if captured < FRAME_SAMPLES:
            return None
        end = self._end
        if (end is None or t - self._last_t > CAPTURE_PAUSE_MS / 1000
                or captured - end > self._capacity - FRAME_SAMPLES):
            end = captured
            if t - newest_t < self._margin_s and end - self._block >= FRAME_SAMPLES:
                end -= self._block
            self.aligns += 1
            self._new_window()
        elif captured <= end:
            self._last_t = t
            return None
        else:
            end += FRAME_SAMPLES
            if end > captured:
                self.repeats += 1
                end = captured
                self._new_window()
            else:
                # How long before the tick the frame's last sample came in.
                slack = t - newest_t + (captured - end) / SAMPLE_RATE_HZ
                self._min_slack = min(self._min_slack, slack)
                self._pulls += 1
                if self._pulls >= CAPTURE_PHASE_WINDOW_TICKS:
                    if (self._min_slack >= self._block_s + self._margin_s
                            and end + self._block <= captured):
                        end += self._block
                        self.skips += 1
                    self._new_window()
        self._end = end
        self._last_t = t
        return end

    def _new_window(self) -> None:
        self._pulls = 0
        self._min_slack = math.inf


class CaptureRing:
    """A sound card's capture, preallocated, between its callback thread and the loop.

    The callback appends each block with :meth:`write` (a copy under a lock, no allocation);
    the loop reads where the card stands with :meth:`position` and copies a frame out with
    :meth:`frame`. Positions count samples since the card started.
    """

    def __init__(self, capacity: int = CAPTURE_RING_SAMPLES) -> None:
        self._buf = np.zeros(capacity, dtype=np.int16)
        self._cap = capacity
        self._written = 0
        self._newest_t = -math.inf
        self._lock = threading.Lock()

    def write(self, block: np.ndarray, t: float) -> None:
        """Append ``block`` (shorter than the ring), which came in at ``t``."""
        n = len(block)
        with self._lock:
            start = self._written % self._cap
            first = min(n, self._cap - start)
            self._buf[start : start + first] = block[:first]
            self._buf[: n - first] = block[first:]
            self._written += n
            self._newest_t = t

    def position(self) -> tuple[int, float]:
        """(samples captured so far, when the newest block came in)."""
        with self._lock:
            return self._written, self._newest_t

    def frame(self, end: int) -> np.ndarray:
        """A copy of the FRAME_SAMPLES ending at position ``end`` (within the ring's reach)."""
        out = np.empty(FRAME_SAMPLES, dtype=np.int16)
        with self._lock:
            start = (end - FRAME_SAMPLES) % self._cap
            first = min(FRAME_SAMPLES, self._cap - start)
            out[:first] = self._buf[start : start + first]
            out[first:] = self._buf[: FRAME_SAMPLES - first]
        return out


class JitterBuffer:
    """A bounded FIFO of frames between two clocks (loop-side only).

    ``push`` drops the oldest frame when full (counted as an overrun); ``read`` pads with
    silence when empty (counted as an underrun once audio has flowed). A level that stands a
    frame above what the reads take sheds a frame (:class:`LevelControl`, counted in
    :attr:`shed` and logged under ``name``): a loop stall costs its latency for about a
    second, not for the rest of the call.

    Args:
        max_frames: the most frames held.
        name: what the buffer is, for the log (``"call 1234-5678 capture"``).
        level: when to shed (:class:`LevelPolicy`; the module's constants by default).
    """

    def __init__(self, max_frames: int = JITTER_MAX_FRAMES, *, name: str = "jitter buffer",
                 level: LevelPolicy | None = None) -> None:
        self._frames: deque[np.ndarray] = deque()
        self._max = max_frames
        self._started = False
        self._level = LevelControl(level)
        self.name = name
        self.underruns = 0
        self.overruns = 0
        self.shed = 0

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
        self._level.reset()

    def read(self, n: int = FRAME_SAMPLES) -> np.ndarray:
        if self._started and self._level.observe(len(self._frames) - 1):
            self._shed_one()
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

    def _shed_one(self) -> None:
        """Shed the oldest quiet frame; none quiet and waited out: the quietest, crossfaded."""
        frames, policy = self._frames, self._level.policy
        sums = [_sum_sq(f) for f in frames]
        quiet = next((i for i, s in enumerate(sums) if s <= policy.quiet_sum_sq), None)
        if quiet is not None:
            del frames[quiet]
            how = "quiet"
        elif self._level.waited_out and len(frames) >= 2:
            # The frame after the shed one is there to fade into (the level stands ≥ 2).
            i = min(range(len(frames) - 1), key=sums.__getitem__)
            shed = frames[i]
            del frames[i]
            frames[i] = crossfade(shed, frames[i], policy.fade_samples)
            how = "crossfaded"
        else:
            return
        self.shed += 1
        self._level.shed()
        _log_shed(self.name, how, policy, self.shed)


class SampleRing:
    """Preallocated single-producer/single-consumer sample ring for a real-time callback.

    The producer (event loop) writes with :meth:`write`; the consumer (PortAudio thread) reads
    into its output buffer with :meth:`read_into`, padding with silence on underrun and
    counting it. The lock guards only the index arithmetic and copy. The level is controlled
    on the producer's side, as :class:`JitterBuffer`'s is (the callback only copies): a frame
    written while a frame's worth of samples has stood unread at every write of a window is
    shed (counted in :attr:`shed`, logged under ``name``).
    """

    def __init__(self, capacity: int, *, name: str = "sample ring",
                 level: LevelPolicy | None = None) -> None:
        self._buf = np.zeros(capacity, dtype=np.int16)
        self._cap = capacity
        self._read = 0
        self._count = 0
        self._lock = threading.Lock()
        self._level = LevelControl(level)
        self._fade_from: np.ndarray | None = None
        self._written = False  # no underrun counts before the first audio
        self.name = name
        self.underruns = 0
        self.overruns = 0
        self.shed = 0

    def __len__(self) -> int:
        return self._count

    def write(self, samples: np.ndarray) -> None:
        if self._fade_from is not None:
            samples = crossfade(self._fade_from, samples, self._level.policy.fade_samples)
            self._fade_from = None
        # The unread samples before this write: what stands beyond the reads (loop side; an
        # int read needs no lock).
        if self._level.observe(self._count // FRAME_SAMPLES) and self._shed(samples):
            return
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
            self._written = True

    def _shed(self, samples: np.ndarray) -> bool:
        """Shed ``samples`` (not written) if quiet, or if the wait for a quiet one is over
        (then the next write fades in from them); False: written as usual."""
        policy = self._level.policy
        if _sum_sq(samples) <= policy.quiet_sum_sq * len(samples) / FRAME_SAMPLES:
            how = "quiet"
        elif self._level.waited_out:
            self._fade_from = samples
            how = "crossfaded"
        else:
            return False
        self.shed += 1
        self._level.shed()
        _log_shed(self.name, how, policy, self.shed)
        return True

    def skip(self, n: int) -> None:
        """Drop the oldest ``n`` unread samples (fewer if fewer are unread); loop side."""
        with self._lock:
            n = min(n, self._count)
            self._read = (self._read + n) % self._cap
            self._count -= n

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
                if self._written:
                    self.underruns += 1
