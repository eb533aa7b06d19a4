"""Telephone conditioning: rate, band, level, trimming."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.errors import SpeechError
from appliance.speech.condition import PHONE_RATE_HZ, SILENCE_KEEP_S, condition_for_phone

RATE_HZ = 22050


def _tone(freq_hz: float, seconds: float, rate: int = RATE_HZ, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def _peak_dbfs(audio: np.ndarray) -> float:
    return float(20 * np.log10(np.max(np.abs(audio.astype(np.float64))) / 32767))


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))


def test_output_is_8k_int16_at_minus_3_dbfs() -> None:
    out = condition_for_phone(_tone(1000, 1.0), RATE_HZ)
    assert out.dtype == np.int16
    assert abs(len(out) - PHONE_RATE_HZ) < 0.01 * PHONE_RATE_HZ
    assert _peak_dbfs(out) == pytest.approx(-3.0, abs=0.1)


def test_full_scale_input_never_clips() -> None:
    # A full-scale square wave overshoots after the band-pass (audio-speech.md §4.2).
    square = np.sign(_tone(440, 0.5, amp=1.0)).astype(np.float32)
    out = condition_for_phone(square, RATE_HZ)
    assert np.max(np.abs(out.astype(np.int32))) < 32767
    assert _peak_dbfs(out) == pytest.approx(-3.0, abs=0.1)


def test_band_pass_removes_low_and_high_tones() -> None:
    mixed = _tone(100, 1.0, amp=0.3) + _tone(1000, 1.0, amp=0.3)
    out = condition_for_phone(mixed, RATE_HZ).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(out[1000:]))  # skip the filter's start-up transient
    freqs = np.fft.rfftfreq(len(out) - 1000, 1 / PHONE_RATE_HZ)
    at_100 = spectrum[np.argmin(np.abs(freqs - 100))]
    at_1000 = spectrum[np.argmin(np.abs(freqs - 1000))]
    # 4th-order Butterworth band-pass: ≥ 40 dB down at 100 Hz relative to the pass band.
    assert 20 * np.log10(at_100 / at_1000) < -40


def test_silence_trimmed_to_30_ms() -> None:
    quiet = np.zeros(RATE_HZ, dtype=np.float32)
    audio = np.concatenate([quiet, _tone(1000, 0.5), quiet])
    out = condition_for_phone(audio, RATE_HZ)
    keep = round(SILENCE_KEEP_S * PHONE_RATE_HZ)
    assert len(out) <= 0.5 * PHONE_RATE_HZ + 2 * keep + 200  # + filter ring-down
    loud = np.flatnonzero(np.abs(out) > 32767 * 10 ** (-50 / 20))
    assert loud[0] <= keep
    assert len(out) - 1 - loud[-1] <= keep


def test_int16_input_and_8k_passthrough() -> None:
    tone = (_tone(1000, 0.3, rate=PHONE_RATE_HZ) * 32767).astype(np.int16)
    out = condition_for_phone(tone, PHONE_RATE_HZ)
    assert _peak_dbfs(out) == pytest.approx(-3.0, abs=0.1)


def test_silent_or_bad_input_raises() -> None:
    with pytest.raises(SpeechError, match="silent"):
        condition_for_phone(np.zeros(1000, dtype=np.float32), RATE_HZ)
    with pytest.raises(SpeechError, match="mono"):
        condition_for_phone(np.zeros((10, 2), dtype=np.float32), RATE_HZ)
    with pytest.raises(SpeechError, match="rate"):
        condition_for_phone(np.ones(10, dtype=np.float32), 0)


@settings(max_examples=30, deadline=None)
@given(
    freq=st.floats(min_value=400, max_value=3000),
    amp=st.floats(min_value=0.01, max_value=1.0),
    rate=st.sampled_from([8000, 16000, 22050, 44100]),
)
def test_peak_always_minus_3_dbfs(freq: float, amp: float, rate: int) -> None:
    out = condition_for_phone(_tone(freq, 0.2, rate=rate, amp=amp), rate)
    assert _peak_dbfs(out) == pytest.approx(-3.0, abs=0.1)
    assert _rms(out) > 0
