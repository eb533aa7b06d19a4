"""The recording-quality instrument (appliance/bench/formats.py): every format the emulator
offers is carried sample-exactly line → recording and back, and the SNR ranks them."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.bench.formats import caller_signal, measure_formats, offered_formats, snr_db
from appliance.line.commands import DEFAULT_FORMAT_PREFERENCE

pytestmark = pytest.mark.timeout(60)


def test_the_test_signal_has_its_level_and_the_snr_its_meaning() -> None:
    x = caller_signal(-30.0, 1.0)
    assert abs(10 * np.log10(np.mean(x**2)) + 30.0) < 0.01
    assert snr_db(x, np.rint(x * 32767).astype(np.int16)) > 60
    noisy = np.rint((x + 10 ** (-50 / 20) * np.sign(x)) * 32767).astype(np.int16)
    assert abs(snr_db(x, noisy) - 20.0) < 0.5


async def test_every_offered_format_is_sample_exact_and_ranked() -> None:
    assert set(offered_formats()) == set(DEFAULT_FORMAT_PREFERENCE)
    figures = await measure_formats(seconds=0.5)
    assert figures["format_recording_exact"] is True
    assert figures["format_transmit_exact"] is True

    def snr(fmt: str, level: int) -> float:
        return float(figures[f"format_snr_db_{fmt}_{level}dbfs"])

    # A quiet caller: 16-bit linear ≫ G.711 (≈ 38 dB whatever the level) ≫ 8-bit linear.
    assert snr("s16le", -30) > 60
    assert 34 < snr("alaw", -30) < 41
    assert 34 < snr("ulaw", -30) < 41
    assert 19 < snr("u8", -30) < 26
    assert snr("s8", -30) == pytest.approx(snr("u8", -30), abs=1.0)
    # A normal caller: 8-bit linear catches up with G.711; 16-bit stays far ahead.
    assert snr("u8", -15) > snr("u8", -30) + 12
    assert snr("s16le", -15) > snr("alaw", -15) + 30
