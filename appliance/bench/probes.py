"""Measuring instruments: an instrumented emulator, test signals, detectors, statistics.

Everything here measures from outside the daemon: through the emulated modem (what the line
sees), through the simulated handset's mouth and ear (what the shop says and hears) and through
the finished recording. Written by hand: no library knows our emulator or our signals.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from appliance.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE_HZ, encode_voice, silence_byte
from appliance.sim.modem.emulator import SimModem

#: Host audio bytes kept per call for locating the first notice byte (8 s of 8-bit audio).
TX_HEAD_BYTES: Final = 64_000
#: The test noise uses int8 steps × 256 so 8-bit voice formats carry it exactly (u8 decodes
#: to multiples of 256), which makes a sample-exact comparison with the recording possible.
QUANTUM: Final = 256
#: Noise amplitude in quanta: ±8 × 256 ≈ −24 dBFS peak, well below the marker threshold.
NOISE_STEPS: Final = 8
#: Marker burst: one 20 ms frame of 1 kHz cosine at ≈ −4 dBFS (starts at its peak, so the
#: onset is the burst's first sample).
MARKER_HZ: Final = 1000.0
MARKER_LEVEL: Final = 20_000
#: A detector reports a marker at the first sample whose magnitude reaches this.
MARKER_THRESHOLD: Final = 8_000
#: After a detection, ignore this long (the rest of the burst).
MARKER_HOLDOFF_S: Final = 0.1
#: A detection is attributed to a marker emitted at most this long before it.
MARKER_MATCH_S: Final = 0.4
#: Samples per window when locating recorded audio in the produced stream (64 bits of noise).
ALIGN_WINDOW: Final = 32
#: How far (samples) a resync searches around the expected position (±10 s).
RESYNC_SPAN: Final = 10 * SAMPLE_RATE_HZ


def _marker() -> npt.NDArray[np.int16]:
    t = np.arange(FRAME_SAMPLES) / SAMPLE_RATE_HZ
    wave = MARKER_LEVEL * np.cos(2 * np.pi * MARKER_HZ * t)
    return (np.round(wave / QUANTUM) * QUANTUM).astype(np.int16)


MARKER: Final = _marker()


class BenchModem(SimModem):
    """The emulated modem plus timestamps the benchmark needs.

    Adds :attr:`off_hook_at` (loop time of the ``AT+VLS=1``/``ATA`` that took the line),
    :attr:`off_hooks` (count), :attr:`tx_log` (loop time, cumulative host audio bytes) and
    :attr:`tx_head` (the first :data:`TX_HEAD_BYTES` host audio bytes) for the call in progress,
    and :meth:`inject_garbage`. Overrides two private hooks of :class:`SimModem`
    (``_go_off_hook``, ``_tx_audio``): the emulator has no public off-hook or host-byte
    listener.
    """

    def __init__(self, profile: str = "conexant", **kwargs: Any) -> None:
        super().__init__(profile, **kwargs)
        self.off_hook_at: float | None = None
        self.off_hooks = 0
        self.tx_log: list[tuple[float, int]] = []
        self.tx_head = bytearray()
        self._tx_total = 0

    def _go_off_hook(self, label: int = 1) -> None:
        was = self.off_hook
        super()._go_off_hook(label)
        if not was:
            self.off_hook_at = asyncio.get_running_loop().time()
            self.off_hooks += 1
            self.tx_log = []
            self.tx_head = bytearray()
            self._tx_total = 0

    def _tx_audio(self, chunk: bytes) -> None:
        super()._tx_audio(chunk)
        if self.off_hook_at is not None and self._tx_total < TX_HEAD_BYTES:
            self._tx_total += len(chunk)
            self.tx_log.append((asyncio.get_running_loop().time(), self._tx_total))
            self.tx_head += chunk[: TX_HEAD_BYTES - len(self.tx_head)]

    def inject_garbage(self, data: bytes) -> None:
        """Send ``data`` to the host as if the modem (or a noisy USB link) produced it."""
        self.inject(data)


def notice_arrival_s(modem: BenchModem, notice: npt.NDArray[np.int16], fmt: str) -> float | None:
    """Seconds from off-hook until the first byte of ``notice`` reached the modem.

    The host sends digital silence (lead frames) before the notice; the notice is located in
    the logged host byte stream as the first non-silent byte minus the notice's own leading
    silence, checked against the encoded notice, and timed by the chunk that carried it.
    Returns None when the stream does not contain the notice (e.g. the call ended first).
    """
    if modem.off_hook_at is None or not modem.tx_log:
        return None
    quiet = silence_byte(fmt)
    encoded = encode_voice(notice, fmt)
    lead = next((i for i, b in enumerate(encoded) if b != quiet), None)
    head = bytes(modem.tx_head)
    first = next((i for i, b in enumerate(head) if b != quiet), None)
    if lead is None or first is None or first < lead:
        return None
    start = first - lead
    check = min(len(encoded), len(head) - start, 1600)
    if head[start : start + check] != encoded[:check]:
        return None
    for t, total in modem.tx_log:
        if total > start:
            return t - modem.off_hook_at
    return None


def first_tx_byte_s(modem: BenchModem) -> float | None:
    """Seconds from off-hook until the host's first audio byte (any audio) reached the modem."""
    if modem.off_hook_at is None or not modem.tx_log:
        return None
    return modem.tx_log[0][0] - modem.off_hook_at


class TestSignal:
    """A frame source: exact low-level noise (optional), marker bursts on request; logs all.

    Args:
        seed: noise seed (each source its own, so the two directions differ).
        clock: the time to stamp markers with (the loop's clock).
        noise: start with the noise on (else digital silence until :meth:`start_noise`).
    """

    __test__ = False  # not a pytest class

    def __init__(self, seed: int, clock: Callable[[], float], *, noise: bool = True) -> None:
        self._rng = np.random.default_rng(seed)
        self._clock = clock
        self.noise = noise
        self.produced: list[npt.NDArray[np.int16]] = []
        self.markers: list[float] = []
        self._marker_pending = False

    def start_noise(self) -> None:
        self.noise = True

    def arm_marker(self) -> None:
        """Put a marker burst at the start of the next frame read."""
        self._marker_pending = True

    def read(self, n: int = FRAME_SAMPLES) -> npt.NDArray[np.int16]:
        if self.noise:
            frame = (self._rng.integers(-NOISE_STEPS, NOISE_STEPS, n) * QUANTUM).astype(np.int16)
        else:
            frame = np.zeros(n, dtype=np.int16)
        if self._marker_pending and n >= len(MARKER):
            frame[: len(MARKER)] = MARKER  # replaced, not added: the values stay exact
            self.markers.append(self._clock())
            self._marker_pending = False
        self.produced.append(frame)
        return frame

    __call__ = read

    def stream(self) -> npt.NDArray[np.int16]:
        """Everything produced so far, concatenated."""
        if not self.produced:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self.produced)


class MarkerDetector:
    """Finds marker onsets in frames as they are played; disarmed until :attr:`armed`."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.armed = False
        self.detections: list[float] = []
        self._holdoff_until = -math.inf

    def feed(self, frame: npt.NDArray[np.int16], _t: float | None = None) -> None:
        """One played frame; its first sample plays now (the loop's clock)."""
        if not self.armed:
            return
        now = self._clock()
        if now < self._holdoff_until:
            return
        loud = np.flatnonzero(np.abs(frame.astype(np.int32)) >= MARKER_THRESHOLD)
        if loud.size:
            onset = now + int(loud[0]) / SAMPLE_RATE_HZ
            self.detections.append(onset)
            self._holdoff_until = onset + MARKER_HOLDOFF_S


def match_latencies(emitted: Sequence[float], detected: Sequence[float]) -> list[float]:
    """Pair each detection with the latest unused marker emitted before it; return delays."""
    out: list[float] = []
    used: set[int] = set()
    for d in detected:
        best = None
        for i, e in enumerate(emitted):
            if e <= d and d - e <= MARKER_MATCH_S and i not in used:
                best = i
        if best is not None:
            used.add(best)
            out.append(d - emitted[best])
    return out


@dataclass(slots=True)
class Continuity:
    """Result of comparing a recorded channel with the signal that was sent into it.

    Attributes:
        compared: recorded samples checked against the source.
        dropped: source samples missing from the recording (gaps).
        duplicated: source samples that appear twice (repeats).
        inserted: recorded samples not from the source inside the checked span (padding).
        mismatched: samples at the right place with the wrong value (corruption).
        aligned: whether the source was found in the recording at all.
    """

    compared: int = 0
    dropped: int = 0
    duplicated: int = 0
    inserted: int = 0
    mismatched: int = 0
    aligned: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _find(haystack: bytes, needle: bytes, lo: int, hi: int) -> int:
    """Sample index of ``needle`` (int16 bytes) in ``haystack`` between samples lo..hi, or -1."""
    start = max(0, lo) * 2
    end = min(len(haystack), (hi + ALIGN_WINDOW) * 2)
    while True:
        pos = haystack.find(needle, start, end)
        if pos < 0:
            return -1
        if pos % 2 == 0:
            return pos // 2
        start = pos + 1


def check_continuity(recorded: npt.NDArray[np.int16], source: npt.NDArray[np.int16]
                     ) -> Continuity:
    """Compare ``recorded`` with ``source`` sample by sample after aligning them.

    The first recorded window of :data:`ALIGN_WINDOW` non-silent samples is located in the
    source; from there both advance together. At a difference the next recorded window is
    searched near the expected place: found later → a gap (dropped), earlier → a repeat
    (duplicated), nowhere → recorded samples not from the source (inserted, e.g. silence
    padding); a foreign tail after the last match (the end of the call) is not counted.
    """
    result = Continuity()
    rec = np.ascontiguousarray(recorded, dtype=np.int16)
    src = np.ascontiguousarray(source, dtype=np.int16)
    src_bytes = src.tobytes()
    w = ALIGN_WINDOW
    r = 0
    s = -1
    while r + w <= len(rec):
        window = rec[r : r + w]
        if np.count_nonzero(window) >= w // 2:
            s = _find(src_bytes, window.tobytes(), 0, len(src))
            if s >= 0:
                break
        r += w
    if s < 0:
        return result
    result.aligned = True
    # The window search steps by a whole window; extend the match back to where it starts.
    while r > 0 and s > 0 and rec[r - 1] == src[s - 1]:
        r -= 1
        s -= 1
    pending_insert = 0
    while r < len(rec) and s < len(src):
        n = min(len(rec) - r, len(src) - s)
        diff = np.flatnonzero(rec[r : r + n] != src[s : s + n])
        if diff.size == 0:
            result.compared += n
            result.inserted += pending_insert
            pending_insert = 0
            break
        m = int(diff[0])
        if m:
            result.compared += m
            result.inserted += pending_insert
            pending_insert = 0
        r += m
        s += m
        if r + w > len(rec):
            break
        found = _find(src_bytes, rec[r : r + w].tobytes(), s - RESYNC_SPAN, s + RESYNC_SPAN)
        if found < 0:
            # Not from the source here: padding, or a single corrupted sample.
            if r + 1 + w <= len(rec) and np.array_equal(rec[r + 1 : r + 1 + w],
                                                        src[s + 1 : s + 1 + w]):
                result.mismatched += 1
                result.compared += 1
                r += 1
                s += 1
            else:
                pending_insert += 1
                r += 1
            continue
        if found > s:
            result.dropped += found - s
        elif found < s:
            result.duplicated += s - found
        s = found
    return result


def percentile_ms(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile of ``values`` (seconds) in milliseconds, 3 decimals; None if empty."""
    if not values:
        return None
    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)) * 1000, 3)


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (/proc/<pid>/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the ")" the state is field 3, so utime (14) and stime (15) are at 11 and 12.
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of process ``pid`` in MiB, from /proc/<pid>/status."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = round(int(value.split()[0]) / 1024, 2)
    return out
