"""In-band call-progress detection on the line audio while dialling out.

Modems differ in what they report during an outgoing voice call (docs/v253.md §5.1: ``<DLE>r``
ringback and ``<DLE>v`` voice exist only on some chipsets; ``<DLE>b``/``<DLE>d`` depend on the
``+GCI`` tone tables, §12). So the daemon also listens itself, as §12 recommends ("an own 425 Hz
cadence + energy detector … as the backstop"). :class:`CallProgressDetector` classifies each
20 ms frame as quiet, tone (most of its power at the zone's progress-tone frequency, 425 Hz in
Hungary) or other, and reports:

* ``ringback`` — a tone burst of at least :data:`RINGBACK_MIN_S` (Hungary: 1250 ms on);
* ``dialtone`` — continuous tone for :data:`DIALTONE_MIN_S` (the exchange is back to dial tone);
* ``busy`` — :data:`BUSY_MIN_CYCLES` short on/off cycles (Hungary: 300/300 ms; congestion is
  the same tone, hw/ag1171.md §3);
* ``voice`` — :data:`VOICE_MIN_S` of sound that is not the tone: somebody answered. Sound
  that could be the echo of what we send (the shop's voice through the line hybrid, no echo
  cancellation in ``+VTR``) does not count: a frame must be louder than the loudest recent
  transmitted frame minus :data:`ECHO_LOSS_DB` plus :data:`ECHO_MARGIN_DB` (the rule of the
  DTMF echo gate, audio/dtmf.py).

Written by hand (a single-bin DFT and a few counters): no library detects call-progress
cadences on a stream of 20 ms frames.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Final

import numpy as np
import numpy.typing as npt

from appliance.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE_HZ

__all__ = [
    "BUSY_MIN_CYCLES",
    "DIALTONE_MIN_S",
    "RINGBACK_MIN_S",
    "VOICE_MIN_S",
    "BusyCadenceDetector",
    "CallProgressDetector",
]

_LOGGER = logging.getLogger(__name__)

FRAME_S: Final = FRAME_SAMPLES / SAMPLE_RATE_HZ
QUIET_DBFS: Final = -45.0
"""Frames below this mean-square level are silence (line noise)."""
TONE_FRACTION: Final = 0.6
"""A frame is "tone" when at least this share of its power is at the tone frequency."""
RINGBACK_MIN_S: Final = 1.0
"""A tone burst this long is ringback (Hungary 1.25 s; busy bursts are 0.3 s)."""
DIALTONE_MIN_S: Final = 2.0
"""Continuous tone this long is dial tone (longer than any ringback burst)."""
BUSY_ON_RANGE_S: Final = (0.15, 0.6)
"""Tone bursts and gaps of this length are busy/congestion cadence (hu 0.3/0.3, eu 0.5/0.5)."""
BUSY_MIN_CYCLES: Final = 2
"""On/off cycles before busy is reported (≈ 1.2 s in Hungary)."""
VOICE_MIN_S: Final = 0.2
"""Non-tone sound this long within :data:`VOICE_WINDOW_S` means somebody talks (syllables
are 0.1–0.3 s with pauses; a click or a tone edge is one frame)."""
VOICE_WINDOW_S: Final = 1.0
ECHO_LOSS_DB: Final = 6.0
ECHO_MARGIN_DB: Final = 3.0
ECHO_FRAMES: Final = 5
"""Transmitted frames (100 ms) an echo may lag behind (as the DTMF gate's window)."""


class CallProgressDetector:
    """Classify line audio during an outgoing call; fed one 20 ms frame at a time.

    Not thread-safe: own it from the loop (the modem's receive callback). Each report is
    returned once per occurrence: ``ringback`` once per burst, ``busy`` and ``dialtone``
    once until a different signal is heard, ``voice`` once per stretch of speech.

    Args:
        tone_hz: the zone's progress-tone frequency (425 Hz in Hungary and most of Europe).
        sample_rate_hz: the line's rate (8 kHz).
    """

    def __init__(self, tone_hz: float = 425.0, sample_rate_hz: int = SAMPLE_RATE_HZ) -> None:
        self._rate = sample_rate_hz
        self._tone_hz = tone_hz
        self._basis_cache: dict[int, npt.NDArray[np.complex128]] = {}
        self._quiet = 10.0 ** (QUIET_DBFS / 10.0)
        self._echo_ratio = 10.0 ** ((ECHO_MARGIN_DB - ECHO_LOSS_DB) / 10.0)
        self._tx_powers: deque[float] = deque(maxlen=ECHO_FRAMES)
        self._kind = "quiet"
        self._held: str | None = None
        self._run_s = 0.0
        self._last_tone_s = 0.0
        self._last_gap_s = 0.0
        self._busy_cycles = 0
        self._reported: set[str] = set()
        self._recent: deque[str] = deque(maxlen=round(VOICE_WINDOW_S / FRAME_S))
        self.frames = 0

    def _basis(self, n: int) -> npt.NDArray[np.complex128]:
        basis = self._basis_cache.get(n)
        if basis is None:
            # The DFT evaluated exactly at the tone frequency (what a Goertzel filter computes).
            basis = np.exp(-2j * np.pi * self._tone_hz * np.arange(n) / self._rate)
            self._basis_cache[n] = basis
        return basis

    def classify(self, frame: npt.ArrayLike, reference: npt.ArrayLike | None = None) -> str:
        """``quiet``, ``tone`` or ``other`` for one frame (``reference``: what we sent)."""
        x = np.asarray(frame, dtype=np.float64).reshape(-1) / 32767.0
        if x.size == 0:
            return "quiet"
        power = float(np.mean(x * x))
        tx_power = 0.0
        if reference is not None:
            ref = np.asarray(reference, dtype=np.float64).reshape(-1) / 32767.0
            tx_power = float(np.mean(ref * ref)) if ref.size else 0.0
        self._tx_powers.append(tx_power)
        if power < self._quiet:
            return "quiet"
        # A sine of amplitude A has power A²/2 and |X| ≈ A·N/2, so its power is 2|X|²/N².
        tone_power = 2.0 * abs(complex(x @ self._basis(x.size))) ** 2 / (x.size * x.size)
        if tone_power >= TONE_FRACTION * power:
            return "tone"
        if power <= max(self._tx_powers) * self._echo_ratio:
            return "quiet"  # could be our own transmitted audio echoed by the hybrid
        return "other"

    def feed(self, frame: npt.ArrayLike, *, reference: npt.ArrayLike | None = None) -> list[str]:
        """Consume one received frame (``reference``: the frame sent meanwhile); return reports.

        A single frame that is not tone inside a tone burst (a frame lost to a late reader, a
        click) does not split the burst: the frame is held, and counted as tone if the next
        one is tone again. A burst's end is therefore known one frame (20 ms) later; the
        cadences' gaps are 15 frames and more, so none of them is bridged.
        """
        self.frames += 1
        kind = self.classify(frame, reference)
        reports: list[str] = []
        held, self._held = self._held, None
        if held is not None:
            self._extend("tone" if kind == "tone" else held, reports)
        if self._kind == "tone" and kind != "tone":
            self._held = kind
        else:
            self._extend(kind, reports)
        self._recent.append(kind)
        others = self._recent.count("other")
        if others == 0:
            self._reported.discard("voice")
        if kind == "other" and others * FRAME_S >= VOICE_MIN_S - 1e-9:
            self._report("voice", reports)
            self._busy_cycles = 0
        return reports

    def _extend(self, kind: str, reports: list[str]) -> None:
        """One more frame of ``kind``: end the current run if it differs, report tones."""
        if kind != self._kind:
            self._run_ended(self._kind, self._run_s, reports)
            self._kind = kind
            self._run_s = 0.0
        self._run_s += FRAME_S
        if kind == "tone":
            if self._run_s >= DIALTONE_MIN_S - 1e-9:
                self._report("dialtone", reports)
            elif self._run_s >= RINGBACK_MIN_S - 1e-9 and "ringback-run" not in self._reported:
                self._reported.add("ringback-run")
                reports.append("ringback")
                self._reported.discard("busy")

    def _report(self, what: str, reports: list[str]) -> None:
        if what not in self._reported:
            self._reported.add(what)
            reports.append(what)

    def _run_ended(self, kind: str, length_s: float, reports: list[str]) -> None:
        lo, hi = BUSY_ON_RANGE_S
        if kind == "tone":
            self._reported.discard("ringback-run")
            self._reported.discard("dialtone")
            if lo <= length_s <= hi and lo <= self._last_gap_s <= hi:
                self._busy_cycles += 1
                if self._busy_cycles >= BUSY_MIN_CYCLES:
                    self._report("busy", reports)
            elif length_s > hi:
                self._busy_cycles = 0
            self._last_tone_s = length_s
        elif kind == "quiet":
            self._last_gap_s = length_s
            if length_s > hi:
                self._busy_cycles = 0
                self._reported.discard("busy")


#: :class:`BusyCadenceDetector`: a frame is "on" within this many dB of the recent tone peak.
ON_WINDOW_DB: Final = 6.0
#: How fast the remembered peak follows a falling tone level (dB per 20 ms frame): slow
#: enough that an echo of the tone in the gaps (≥ 10 dB down) stays "off".
PEAK_DECAY_DB: Final = 0.2


class BusyCadenceDetector:
    """The exchange's busy (or congestion) tone on an answered call's line audio.

    Unlike :class:`CallProgressDetector` it judges the cadence by the tone's level relative
    to its recent peak, not by absolute quiet: on a real line the gaps of the busy tone are
    not quiet while the call is bridged — the tone goes to the shop's earpiece, returns
    through the handset's and the modem's hybrids and fills the gaps some 10–15 dB down
    (docs/line.md). :meth:`feed` returns True once, when :data:`BUSY_MIN_CYCLES` cycles of
    bursts and gaps in :data:`BUSY_ON_RANGE_S` have been heard (≈ 1.5 s in Hungary).

    Args:
        tone_hz: the zone's busy-tone frequency (425 Hz in Hungary).
        sample_rate_hz: the line's rate (8 kHz).
    """

    def __init__(self, tone_hz: float = 425.0, sample_rate_hz: int = SAMPLE_RATE_HZ) -> None:
        # The single-bin DFT as two real rows (cos, sin), scaled to full scale: one small
        # float32 product per frame on the int16 samples (it runs on every frame of a call).
        phase = 2 * np.pi * tone_hz * np.arange(FRAME_SAMPLES) / sample_rate_hz
        self._basis = (np.stack((np.cos(phase), np.sin(phase))) / 32767.0).astype(np.float32)
        self._quiet = 10.0 ** (QUIET_DBFS / 10.0)
        self._peak_db = -200.0
        self._on = False
        self._run_s = 0.0
        self._last_gap_s = 0.0
        self._cycles = 0
        self._reported = False

    def feed(self, frame: npt.ArrayLike) -> bool:
        """Consume one 20 ms frame; True the first time the busy cadence is recognised."""
        if isinstance(frame, np.ndarray) and frame.shape == (FRAME_SAMPLES,):
            x = frame.astype(np.float32)  # the line's frames: no reshape, no slice
        else:
            x = np.asarray(frame).reshape(-1)[:FRAME_SAMPLES].astype(np.float32)
            if x.size < FRAME_SAMPLES:
                return False
        return self.feed_float32(x, float(x @ x))

    def feed_float32(self, x: npt.NDArray[np.float32], sum_sq: float) -> bool:
        """:meth:`feed` for a frame of FRAME_SAMPLES already in float32 (int16 scale), with
        its sum of squares ``float(x @ x)``: a caller watching the same frame's level itself
        computes both once."""
        n = FRAME_SAMPLES
        power = sum_sq / (n * 32767.0**2)
        re, im = (self._basis @ x).tolist()
        tone = 2.0 * (re * re + im * im) / (n * n)
        tonal = tone >= self._quiet and tone >= TONE_FRACTION * power
        level_db = 10.0 * math.log10(tone) if tone > 0 else -200.0
        self._peak_db = max(level_db if tonal else -200.0, self._peak_db - PEAK_DECAY_DB)
        on = tonal and level_db >= self._peak_db - ON_WINDOW_DB
        if on != self._on:
            self._run_ended()
            self._on = on
            self._run_s = 0.0
        self._run_s += FRAME_S
        if self._cycles >= BUSY_MIN_CYCLES and not self._reported:
            self._reported = True
            return True
        return False

    def _run_ended(self) -> None:
        lo, hi = BUSY_ON_RANGE_S
        if self._on:
            if lo <= self._run_s <= hi and lo <= self._last_gap_s <= hi:
                self._cycles += 1
            elif not lo <= self._run_s <= hi:
                self._cycles = 0
        else:
            self._last_gap_s = self._run_s
            if self._run_s > hi:
                self._cycles = 0
