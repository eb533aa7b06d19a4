"""Telephone conditioning: any TTS output → 8 kHz mono int16 ready for the line.

Pipeline (docs/audio.md §4): soxr HQ resampling to 8 kHz → 4th-order Butterworth
band-pass 300–3400 Hz as second-order sections → peak normalised to −3 dBFS → leading and
trailing silence below −50 dBFS trimmed to 30 ms → int16. The band-pass comes before the level
step so the headroom goes to the telephone band (§4.2); normalising last also means the filter's
overshoot can never clip (piper's full-scale output clips after filtering, §4.2).

No code here is hand-written DSP: soxr resamples, scipy designs and runs the filter.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from appliance.errors import SpeechError

_LOGGER = logging.getLogger(__name__)

#: Bump whenever the pipeline changes: it is part of every cache key (library.py).
CONDITIONING_VERSION: Final[str] = "phone-v1"

PHONE_RATE_HZ: Final[int] = 8000
BAND_LOW_HZ: Final[float] = 300.0
BAND_HIGH_HZ: Final[float] = 3400.0
BAND_ORDER: Final[int] = 4
PEAK_DBFS: Final[float] = -3.0
SILENCE_DBFS: Final[float] = -50.0
SILENCE_KEEP_S: Final[float] = 0.030
INT16_FULL_SCALE: Final[int] = 32767

# The filter depends only on constants: design it once.
@functools.cache
def _band_sos() -> Any:
    """The band-pass as second-order sections, designed on first use.

    scipy and soxr are imported here, not at module load: the daemon only conditions audio
    when a prompt is missing from the cache, and importing scipy.signal alone costs ≈ 88 MB
    of RSS (measured), more than the daemon's whole memory target (docs/design.md §9: 60 MB).
    """
    from scipy import signal

    return signal.butter(
        BAND_ORDER, [BAND_LOW_HZ, BAND_HIGH_HZ], btype="bandpass", fs=PHONE_RATE_HZ, output="sos"
    )


def dbfs_to_amplitude(dbfs: float) -> float:
    """Convert a level in dBFS to a linear amplitude (full scale = 1.0)."""
    return float(10.0 ** (dbfs / 20.0))


def condition_for_phone(audio: npt.ArrayLike, rate: int) -> npt.NDArray[np.int16]:
    """Turn synthesised speech into telephone audio.

    Args:
        audio: mono samples, float in [-1, 1] (any float dtype) or int16.
        rate: sample rate of ``audio`` in Hz.

    Returns:
        8 kHz mono int16 samples with peak at −3 dBFS (never clipped), content limited
        to 300–3400 Hz, and at most 30 ms of sub −50 dBFS silence at either end.

    Raises:
        SpeechError: the input is not mono, has a bad rate, or is silent.
    """
    samples = np.asarray(audio)
    if samples.ndim != 1:
        raise SpeechError(f"expected mono audio, got shape {samples.shape}")
    if rate <= 0:
        raise SpeechError(f"bad sample rate {rate}")
    if samples.dtype == np.int16:
        floats = samples.astype(np.float64) / INT16_FULL_SCALE
    else:
        floats = samples.astype(np.float64)
    if rate != PHONE_RATE_HZ:
        # docs/audio.md §4.1: soxr HQ, −143 dB aliasing; np.interp would alias
        # 4–11 kHz into the band and can fake DTMF tones.
        import soxr  # late: see _band_sos

        floats = soxr.resample(floats, rate, PHONE_RATE_HZ, quality="HQ")
    from scipy import signal

    filtered = signal.sosfilt(_band_sos(), floats)
    peak = float(np.max(np.abs(filtered))) if filtered.size else 0.0
    if peak <= dbfs_to_amplitude(SILENCE_DBFS):
        raise SpeechError("synthesised audio is silent")
    scaled = filtered * (dbfs_to_amplitude(PEAK_DBFS) / peak)
    trimmed = _trim_silence(scaled)
    # Peak is ≈0.708 of full scale, so rounding cannot leave the int16 range.
    return np.round(trimmed * INT16_FULL_SCALE).astype(np.int16)


def _trim_silence(audio: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    loud = np.flatnonzero(np.abs(audio) > dbfs_to_amplitude(SILENCE_DBFS))
    keep = round(SILENCE_KEEP_S * PHONE_RATE_HZ)
    start = max(int(loud[0]) - keep, 0)
    stop = min(int(loud[-1]) + 1 + keep, audio.size)
    return audio[start:stop]
