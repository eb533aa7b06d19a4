"""Call-progress tones by tone zone, a sample-exact tone generator, and DTMF test signals.

The handset hears these tones from the appliance (dial tone when it lifts, busy when the
line is busy, a beep before recording…). Tones are described declaratively (:class:`Tone`)
and grouped per country (:class:`ToneZone`, :data:`TONE_ZONES`); :class:`ToneGenerator`
renders them frame by frame.

Level convention (see :mod:`appliance.audio.pcm`): ``level_dbfs`` is the **RMS level of the
whole tone while it is on**, relative to int16 full scale 32767; the frequencies of a
multi-frequency tone share it equally. A sum of k equal sines can peak at √(2k) times its
RMS, so it never clips when ``level_dbfs`` ≤ −10·log10(2k) (−3 dB for one frequency, −6 for
two, −9 for four); louder settings may clip (in :func:`~appliance.audio.pcm.float_to_int16`).

Generation is written by hand (a few numpy lines) because it must be sample-exact and
resumable across frames; no library offers cadenced, phase-continuous call-progress tones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import numpy as np
import numpy.typing as npt

from appliance.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE_HZ, float_to_int16

__all__ = [
    "DTMF_COLS_HZ",
    "DTMF_KEYPAD",
    "DTMF_ROWS_HZ",
    "TONE_ZONES",
    "Tone",
    "ToneGenerator",
    "ToneZone",
    "dtmf_freqs",
    "dtmf_samples",
    "dtmf_sequence",
    "one_shot",
    "tone_zone",
]

# ITU-T Q.23: DTMF low (row) and high (column) frequency groups.
DTMF_ROWS_HZ: Final = (697.0, 770.0, 852.0, 941.0)
DTMF_COLS_HZ: Final = (1209.0, 1336.0, 1477.0, 1633.0)
DTMF_KEYPAD: Final = ("123A", "456B", "789C", "*0#D")
"""Keypad layout: ``DTMF_KEYPAD[row][col]`` is the symbol for that row/column pair."""

DEFAULT_TONE_LEVEL_DBFS: Final = -13.0
HOWLER_LEVEL_DBFS: Final = -10.0
"""Off-hook warning is meant to be loud; a four-tone sum cannot clip below −9.03 dBFS RMS."""


@dataclass(frozen=True, slots=True)
class Tone:
    """A call-progress tone: frequencies played together, gated by a repeating cadence.

    Attributes:
        name: short identifier (``"busy"``) used in logs.
        freqs_hz: frequencies summed with equal amplitude (at least one, each > 0).
        cadence_ms: on/off durations in ms, repeated forever, starting with "on"; even
            length; ``()`` = continuous.
        level_dbfs: RMS level of the tone while on (dBFS, full scale 32767).
    """

    name: str
    freqs_hz: tuple[float, ...]
    cadence_ms: tuple[int, ...] = ()
    level_dbfs: float = DEFAULT_TONE_LEVEL_DBFS

    def __post_init__(self) -> None:
        """Validate the description so a bad tone table fails at import, not mid-call."""
        if not self.freqs_hz or any(not f > 0 for f in self.freqs_hz):
            raise ValueError(f"tone {self.name!r}: need positive frequencies, got {self.freqs_hz}")
        if len(self.cadence_ms) % 2 or any(ms < 0 for ms in self.cadence_ms):
            raise ValueError(
                f"tone {self.name!r}: cadence must be non-negative on/off pairs, "
                f"got {self.cadence_ms}"
            )
        if self.cadence_ms and sum(self.cadence_ms[0::2]) == 0:
            raise ValueError(f"tone {self.name!r}: cadence is never on: {self.cadence_ms}")


@dataclass(frozen=True, slots=True)
class ToneZone:
    """The set of tones the appliance plays for one country (tone zone).

    Attributes:
        name: zone key in :data:`TONE_ZONES` (``"hu"``).
        dial: dial tone (handset lifted, ready).
        busy: called party busy.
        congestion: network/appliance cannot complete the call.
        ringback: audible ringing tone heard by the caller.
        call_waiting: short burst over a call in progress.
        howler: off-hook warning (receiver left off the hook).
        beep: recording/voicemail beep; it repeats with a long gap, so a single beep is
            ``one_shot(zone.beep, zone.beep.cadence_ms[0])``.
    """

    name: str
    dial: Tone
    busy: Tone
    congestion: Tone
    ringback: Tone
    call_waiting: Tone
    howler: Tone
    beep: Tone


# Receiver-off-hook tone: 1400+2060+2450+2600 Hz, 0.1 s on / 0.1 s off (North American ROH,
# also BT's howler frequencies); no Hungarian value is documented (hw/ag1171.md §3).
_HOWLER: Final = Tone("howler", (1400.0, 2060.0, 2450.0, 2600.0), (100, 100), HOWLER_LEVEL_DBFS)

_ZONES: dict[str, ToneZone] = {
    # hw/ag1171.md §3 = Asterisk indications.conf [hu] = DAHDI zone 21 (ITU-T tones-0203).
    "hu": ToneZone(
        name="hu",
        dial=Tone("dial", (425.0,)),
        busy=Tone("busy", (425.0,), (300, 300)),
        # Identical to busy in Hungary: cannot be told apart by cadence (hw/ag1171.md §3).
        congestion=Tone("congestion", (425.0,), (300, 300)),
        ringback=Tone("ringback", (425.0,), (1250, 3750)),
        call_waiting=Tone("call_waiting", (425.0,), (40, 1960)),
        howler=_HOWLER,
        # [hu] record = 1400/400,0/15000 — marked "not specified" there, a filler value.
        beep=Tone("beep", (1400.0,), (400, 15000)),
    ),
    # CEPT-style comparison zone (425 Hz; busy 500/500, congestion 250/250, ringback
    # 1000/4000, call waiting as Asterisk [ch]); not a national standard, for tests and
    # comparison only.
    "eu": ToneZone(
        name="eu",
        dial=Tone("dial", (425.0,)),
        busy=Tone("busy", (425.0,), (500, 500)),
        congestion=Tone("congestion", (425.0,), (250, 250)),
        ringback=Tone("ringback", (425.0,), (1000, 4000)),
        call_waiting=Tone("call_waiting", (425.0,), (200, 200, 200, 4000)),
        howler=_HOWLER,
        beep=Tone("beep", (1400.0,), (500, 15000)),
    ),
    # Asterisk indications.conf [us] (North American precise tones).
    "us": ToneZone(
        name="us",
        dial=Tone("dial", (350.0, 440.0)),
        busy=Tone("busy", (480.0, 620.0), (500, 500)),
        congestion=Tone("congestion", (480.0, 620.0), (250, 250)),
        ringback=Tone("ringback", (440.0, 480.0), (2000, 4000)),
        call_waiting=Tone("call_waiting", (440.0,), (300, 10000)),
        howler=_HOWLER,
        beep=Tone("beep", (1400.0,), (500, 15000)),
    ),
}
TONE_ZONES: Final[Mapping[str, ToneZone]] = MappingProxyType(_ZONES)
"""Known tone zones by lower-case country key (read-only)."""


def tone_zone(name: str) -> ToneZone:
    """Return the tone zone called ``name`` (case-insensitive).

    Raises:
        KeyError: unknown zone; the message lists the known names.
    """
    try:
        return TONE_ZONES[name.lower()]
    except KeyError:
        raise KeyError(f"unknown tone zone {name!r}; known: {sorted(TONE_ZONES)}") from None


def _ms_to_samples(ms: float, sample_rate_hz: int) -> int:
    return round(ms * sample_rate_hz / 1000)


class ToneGenerator:
    """Render a :class:`Tone` frame by frame, sample-exact and phase-continuous.

    Each output sample is a pure function of its absolute index since the last
    :meth:`reset`, so any split into frames concatenates to exactly the one-shot rendering.
    The cadence starts with its first "on" segment at index 0. Not thread-safe; own it
    from one task.
    """

    def __init__(self, tone: Tone, sample_rate_hz: int = SAMPLE_RATE_HZ) -> None:
        """Prepare a generator for ``tone`` at ``sample_rate_hz``.

        Raises:
            ValueError: a frequency is at or above the Nyquist frequency.
        """
        if max(tone.freqs_hz) >= sample_rate_hz / 2:
            raise ValueError(f"tone {tone.name!r}: {max(tone.freqs_hz)} Hz ≥ Nyquist")
        self._tone = tone
        self._rate = sample_rate_hz
        # Equal share of the RMS level per frequency: k sines of amplitude a have RMS a·√(k/2).
        self._amplitude = math.sqrt(2.0 / len(tone.freqs_hz)) * 10.0 ** (tone.level_dbfs / 20.0)
        segments = [_ms_to_samples(ms, sample_rate_hz) for ms in tone.cadence_ms]
        self._seg_ends = np.cumsum(segments, dtype=np.int64)
        self._period = int(self._seg_ends[-1]) if segments else 0
        self._pos = 0

    @property
    def tone(self) -> Tone:
        """The tone being generated."""
        return self._tone

    @property
    def position(self) -> int:
        """Samples generated since construction or the last :meth:`reset`."""
        return self._pos

    def reset(self) -> None:
        """Restart at sample 0: phase 0 and the beginning of the first "on" segment."""
        self._pos = 0

    def next_frame(self, n: int = FRAME_SAMPLES) -> npt.NDArray[np.int16]:
        """Return the next ``n`` samples as int16 and advance by ``n``.

        Raises:
            ValueError: ``n`` is negative.
        """
        if n < 0:
            raise ValueError(f"frame length must be ≥ 0, got {n}")
        idx = self._pos + np.arange(n, dtype=np.int64)
        self._pos += n
        signal = np.zeros(n, dtype=np.float64)
        for freq in self._tone.freqs_hz:
            # Reduce f·i modulo the rate before scaling: keeps the phase argument small (and
            # precise) however long the generator runs.
            signal += np.sin((2.0 * np.pi / self._rate) * np.mod(freq * idx, self._rate))
        signal *= self._amplitude
        if self._period:
            # Segment number within the period; even segments are "on".
            seg = np.searchsorted(self._seg_ends, idx % self._period, side="right")
            signal[seg % 2 == 1] = 0.0
        return float_to_int16(signal)


def one_shot(
    tone: Tone, duration_ms: float, sample_rate_hz: int = SAMPLE_RATE_HZ
) -> npt.NDArray[np.int16]:
    """Render the first ``duration_ms`` of ``tone`` (rounded to whole samples) as int16."""
    n = _ms_to_samples(duration_ms, sample_rate_hz)
    return ToneGenerator(tone, sample_rate_hz).next_frame(n)


def dtmf_freqs(digit: str) -> tuple[float, float]:
    """Return the (row, column) frequencies of a DTMF symbol ``0-9 * # A-D`` (case-insensitive).

    Raises:
        ValueError: not a DTMF symbol.
    """
    key = digit.upper()
    for row, keys in enumerate(DTMF_KEYPAD):
        col = keys.find(key) if len(key) == 1 else -1
        if col >= 0:
            return DTMF_ROWS_HZ[row], DTMF_COLS_HZ[col]
    raise ValueError(f"not a DTMF symbol: {digit!r}")


def dtmf_samples(
    digit: str,
    duration_ms: float = 100,
    level_dbfs: float = -10.0,
    twist_db: float = 0.0,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
) -> npt.NDArray[np.int16]:
    """Render one DTMF symbol (row + column sine, both starting at phase 0) as int16.

    Args:
        digit: ``0-9``, ``*``, ``#`` or ``A-D``.
        duration_ms: tone length (rounded to whole samples).
        level_dbfs: RMS level of the two-tone sum.
        twist_db: column (high group) level minus row (low group) level.
        sample_rate_hz: output rate.

    Raises:
        ValueError: not a DTMF symbol.
    """
    row_hz, col_hz = dtmf_freqs(digit)
    total = 10.0 ** (level_dbfs / 20.0)
    ratio = 10.0 ** (twist_db / 20.0)
    # RMS² of the sum = (a_row² + a_col²) / 2 = total²  with  a_col = ratio · a_row.
    a_row = total * math.sqrt(2.0 / (1.0 + ratio * ratio))
    a_col = ratio * a_row
    t = np.arange(_ms_to_samples(duration_ms, sample_rate_hz)) / sample_rate_hz
    x = a_row * np.sin(2 * np.pi * row_hz * t) + a_col * np.sin(2 * np.pi * col_hz * t)
    return float_to_int16(x)


def dtmf_sequence(
    digits: str,
    on_ms: float = 100,
    off_ms: float = 100,
    level_dbfs: float = -10.0,
    twist_db: float = 0.0,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
) -> npt.NDArray[np.int16]:
    """Render ``digits`` as DTMF: each symbol ``on_ms`` of tone followed by ``off_ms`` silence.

    Raises:
        ValueError: a character is not a DTMF symbol.
    """
    gap = np.zeros(_ms_to_samples(off_ms, sample_rate_hz), dtype=np.int16)
    parts: list[npt.NDArray[np.int16]] = []
    for digit in digits:
        parts.append(dtmf_samples(digit, on_ms, level_dbfs, twist_db, sample_rate_hz))
        parts.append(gap)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
