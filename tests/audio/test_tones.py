"""Tests for appliance.audio.tones: tone zones, the cadenced generator, DTMF rendering."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.audio import tones
from appliance.audio.pcm import rms_dbfs
from appliance.audio.tones import Tone, ToneGenerator

RATE_HZ = 8000
ZONE_TONE_FIELDS = [f.name for f in dataclasses.fields(tones.ToneZone) if f.name != "name"]
ALL_ZONE_TONES = [
    pytest.param(zone, field, id=f"{zone}-{field}")
    for zone in sorted(tones.TONE_ZONES)
    for field in ZONE_TONE_FIELDS
]


def fft_peaks_hz(x: np.ndarray, k: int) -> list[float]:
    """The k strongest spectral peaks (1 Hz bins for a 1 s signal at 8 kHz)."""
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64)))
    freqs = np.fft.rfftfreq(len(x), 1 / RATE_HZ)
    return sorted(float(f) for f in freqs[np.argsort(spectrum)[-k:]])


def expected_gate(cadence_ms: tuple[int, ...], n: int) -> np.ndarray:
    """Independent reference for the cadence: True where the tone is on."""
    gate = np.zeros(n, dtype=bool)
    t = 0
    on = True
    while t < n:
        for ms in cadence_ms:
            length = ms * RATE_HZ // 1000
            gate[t : t + length] = on
            t += length
            on = not on
    return gate


def test_hungarian_zone_matches_hardware_reference() -> None:
    # hardware.md §3 (Asterisk [hu], DAHDI zone 21).
    hu = tones.tone_zone("hu")
    assert hu.dial == Tone("dial", (425.0,), ())
    assert hu.busy.freqs_hz == (425.0,)
    assert hu.busy.cadence_ms == (300, 300)
    assert hu.congestion.cadence_ms == (300, 300)
    assert hu.ringback.cadence_ms == (1250, 3750)
    assert hu.call_waiting.cadence_ms == (40, 1960)
    assert hu.beep.freqs_hz == (1400.0,)
    assert hu.beep.cadence_ms[0] == 400
    assert hu.howler.freqs_hz == (1400.0, 2060.0, 2450.0, 2600.0)
    assert tones.tone_zone("HU") is hu


def test_zones_present_and_unknown_zone_lists_known() -> None:
    assert {"hu", "eu", "us"} <= set(tones.TONE_ZONES)
    assert tones.tone_zone("us").dial.freqs_hz == (350.0, 440.0)
    with pytest.raises(KeyError, match=r"'eu'.*'hu'.*'us'"):
        tones.tone_zone("xx")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"freqs_hz": ()},
        {"freqs_hz": (0.0,)},
        {"freqs_hz": (425.0,), "cadence_ms": (300,)},
        {"freqs_hz": (425.0,), "cadence_ms": (300, -1)},
        {"freqs_hz": (425.0,), "cadence_ms": (0, 300)},
    ],
)
def test_bad_tone_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="tone 'bad'"):
        Tone("bad", **kwargs)  # type: ignore[arg-type]


def test_frequency_above_nyquist_rejected() -> None:
    with pytest.raises(ValueError, match="Nyquist"):
        ToneGenerator(Tone("x", (4000.0,)))


@pytest.mark.parametrize(("zone", "field"), ALL_ZONE_TONES)
def test_zone_tone_frequencies_by_fft(zone: str, field: str) -> None:
    tone: Tone = getattr(tones.tone_zone(zone), field)
    steady = dataclasses.replace(tone, cadence_ms=())
    x = ToneGenerator(steady).next_frame(RATE_HZ)
    assert fft_peaks_hz(x, len(tone.freqs_hz)) == sorted(tone.freqs_hz)


@pytest.mark.parametrize(("zone", "field"), ALL_ZONE_TONES)
def test_zone_tone_cadence_and_level(zone: str, field: str) -> None:
    tone: Tone = getattr(tones.tone_zone(zone), field)
    n = 2 * (sum(tone.cadence_ms) * RATE_HZ // 1000) or RATE_HZ
    x = ToneGenerator(tone).next_frame(n)
    gate = expected_gate(tone.cadence_ms, n) if tone.cadence_ms else np.ones(n, dtype=bool)
    # Sample-exact cadence: silent exactly where the cadence is off, and the "on" samples
    # equal a continuous rendering of the same tone, sample for sample.
    assert np.all(x[~gate] == 0)
    steady = ToneGenerator(dataclasses.replace(tone, cadence_ms=())).next_frame(n)
    assert np.array_equal(x[gate], steady[gate])
    assert rms_dbfs(x[gate]) == pytest.approx(tone.level_dbfs, abs=0.5)


def test_busy_cadence_boundaries_are_sample_exact() -> None:
    x = ToneGenerator(tones.tone_zone("hu").busy).next_frame(3 * 4800)
    on = np.abs(x) > 0
    # 300 ms on = 2400 samples; the last on-sample is 2399, the next on-period starts at 4800.
    assert on[2390:2400].any()
    assert not on[2400:4800].any()
    assert on[4800:4810].any()
    assert not on[7200:9600].any()


def test_one_shot_beep_is_a_single_beep() -> None:
    beep = tones.tone_zone("hu").beep
    x = tones.one_shot(beep, 400)
    assert len(x) == 3200
    assert np.all(np.abs(x[1:-1]).reshape(-1, 2).max(axis=1) > 0)  # on throughout
    longer = tones.one_shot(beep, 600)
    assert not np.any(longer[3200:])  # then silent
    assert fft_peaks_hz(np.concatenate([x, np.zeros(4800, np.int16)]), 1) == [1400.0]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 700), min_size=1, max_size=20), st.sampled_from(ZONE_TONE_FIELDS))
def test_frames_concatenate_to_one_long_generation(sizes: list[int], field: str) -> None:
    tone: Tone = getattr(tones.tone_zone("hu"), field)
    gen = ToneGenerator(tone)
    pieces = [gen.next_frame(n) for n in sizes]
    assert gen.position == sum(sizes)
    whole = ToneGenerator(tone).next_frame(sum(sizes))
    assert np.array_equal(np.concatenate(pieces), whole)


def test_default_frame_and_reset() -> None:
    gen = ToneGenerator(tones.tone_zone("hu").ringback)
    first = gen.next_frame()
    assert first.dtype == np.int16
    assert len(first) == 160
    gen.next_frame(1234)
    gen.reset()
    assert gen.position == 0
    assert np.array_equal(gen.next_frame(), first)
    with pytest.raises(ValueError, match="≥ 0"):
        gen.next_frame(-1)


def test_phase_stays_precise_after_a_long_run() -> None:
    # Reduction modulo the rate keeps late samples identical to early ones for an integer
    # frequency: 425 Hz repeats every 8000/gcd(425, 8000) = 320 samples.
    gen = ToneGenerator(tones.tone_zone("hu").dial)
    start = gen.next_frame(320)
    gen._pos = 320 * 10_000_000  # white-box jump: about 4.5 days of audio later
    assert np.array_equal(gen.next_frame(320), start)


@pytest.mark.parametrize("digit", list("0123456789*#ABCD"))
def test_dtmf_samples_frequencies_and_level(digit: str) -> None:
    x = tones.dtmf_samples(digit, duration_ms=1000, level_dbfs=-10.0)
    assert x.dtype == np.int16
    assert len(x) == RATE_HZ
    assert fft_peaks_hz(x, 2) == list(tones.dtmf_freqs(digit))
    assert rms_dbfs(x) == pytest.approx(-10.0, abs=0.5)


def test_dtmf_keypad_mapping() -> None:
    assert tones.dtmf_freqs("1") == (697.0, 1209.0)
    assert tones.dtmf_freqs("0") == (941.0, 1336.0)
    assert tones.dtmf_freqs("#") == (941.0, 1477.0)
    assert tones.dtmf_freqs("d") == (941.0, 1633.0)
    for bad in ("E", "", "12", " "):
        with pytest.raises(ValueError, match="DTMF"):
            tones.dtmf_freqs(bad)


@pytest.mark.parametrize("twist_db", [-8.0, 0.0, 4.0])
def test_dtmf_twist(twist_db: float) -> None:
    x = tones.dtmf_samples("5", duration_ms=1000, level_dbfs=-12.0, twist_db=twist_db)
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64)))
    row, col = tones.dtmf_freqs("5")
    measured = 20 * np.log10(spectrum[int(col)] / spectrum[int(row)])
    assert measured == pytest.approx(twist_db, abs=0.1)
    assert rms_dbfs(x) == pytest.approx(-12.0, abs=0.5)


def test_dtmf_sequence_layout() -> None:
    x = tones.dtmf_sequence("12#", on_ms=50, off_ms=30)
    assert len(x) == 3 * (400 + 240)
    for i, digit in enumerate("12#"):
        start = i * 640
        assert np.array_equal(x[start : start + 400], tones.dtmf_samples(digit, 50))
        assert not np.any(x[start + 400 : start + 640])
    assert len(tones.dtmf_sequence("")) == 0
    with pytest.raises(ValueError, match="DTMF"):
        tones.dtmf_sequence("1x")
