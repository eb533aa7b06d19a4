"""Tests for appliance.audio.dtmf: the streaming detector, on vectors generated here.

Cases follow docs/audio.md §7 (timing, noise, level, frequency error, repeated
digits, talk-off on Hungarian speech) plus chunking invariance.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.audio import tones
from appliance.audio.dtmf import DtmfDetector
from appliance.audio.pcm import FRAME_SAMPLES, float_to_int16

from ..policies import default_config

RATE_HZ = 8000
ALL_SYMBOLS = "1234567890*#ABCD"
HU_SENTENCE = (
    "Jó napot kívánok! Tájékoztatjuk, hogy a beszélgetést minőségbiztosítási célból "
    "rögzítjük. A hívás azonosítója: négy, kettő, hét, egy, kilenc, nulla, három, nyolc. "
    "Ha nem járul hozzá a felvételhez, kérjük, tegye le a kagylót, vagy jelezze ezt "
    "munkatársunknak, aki a felvételt azonnal leállítja, és az adatokat törli."
)


def dtmf_signal(
    digits: str,
    on_ms: int = 50,
    off_ms: int = 50,
    level_dbfs: float = -20.0,
    twist_db: float = 0.0,
    freq_factor: float = 1.0,
    rate_hz: int = RATE_HZ,
) -> np.ndarray:
    """Float test vector: per digit, row + column sine (optionally detuned), then silence."""
    total = 10 ** (level_dbfs / 20)
    ratio = 10 ** (twist_db / 20)
    a_row = total * np.sqrt(2 / (1 + ratio**2))
    t = np.arange(on_ms * rate_hz // 1000) / rate_hz
    parts = []
    for digit in digits:
        row, col = tones.dtmf_freqs(digit)
        parts.append(
            a_row * np.sin(2 * np.pi * row * freq_factor * t)
            + ratio * a_row * np.sin(2 * np.pi * col * freq_factor * t)
        )
        parts.append(np.zeros(off_ms * rate_hz // 1000))
    return np.concatenate(parts)


def detect(samples: np.ndarray, chunk: int = FRAME_SAMPLES, rate_hz: int = RATE_HZ) -> str:
    """Feed ``samples`` in ``chunk``-sized pieces (20 ms frames by default)."""
    detector = DtmfDetector(rate_hz)
    found: list[str] = []
    for start in range(0, len(samples), chunk):
        found += detector.feed(samples[start : start + chunk])
    return "".join(found)


def add_noise(x: np.ndarray, level_dbfs: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return x + rng.standard_normal(len(x)) * 10 ** (level_dbfs / 20)


@pytest.mark.parametrize(("on_ms", "off_ms"), [(50, 50), (40, 40), (100, 100)])
def test_all_symbols_at_various_timings(on_ms: int, off_ms: int) -> None:
    assert detect(dtmf_signal(ALL_SYMBOLS, on_ms, off_ms)) == ALL_SYMBOLS


def test_int16_input_from_the_tone_module() -> None:
    x = tones.dtmf_sequence(ALL_SYMBOLS, on_ms=50, off_ms=50, level_dbfs=-20.0)
    assert x.dtype == np.int16
    assert detect(x) == ALL_SYMBOLS


def test_repeated_digit_with_gaps_counts_each_press() -> None:
    assert detect(dtmf_signal("5555", 50, 50)) == "5555"


def test_long_press_is_one_digit() -> None:
    assert detect(dtmf_signal("7", on_ms=1500, off_ms=100)) == "7"


@pytest.mark.parametrize("offset", [0, 13, 51, 77, 101])
def test_too_short_tone_is_ignored(offset: int) -> None:
    # A block passes only if the tone fills ≥ ~60 % of it (the energy-share check), so two
    # passing blocks need ≥ ~124 samples of tone: 14 ms (112 samples) never makes it,
    # whatever the block alignment.
    x = np.concatenate([np.zeros(offset), dtmf_signal(ALL_SYMBOLS, on_ms=14, off_ms=60)])
    assert detect(x) == ""


@pytest.mark.parametrize("snr_db", [15, 6])
def test_white_noise(snr_db: float) -> None:
    x = add_noise(dtmf_signal(ALL_SYMBOLS), level_dbfs=-20.0 - snr_db)
    assert detect(x) == ALL_SYMBOLS


def test_quiet_level() -> None:
    assert detect(dtmf_signal(ALL_SYMBOLS, level_dbfs=-35.0)) == ALL_SYMBOLS


def test_below_energy_floor_is_ignored() -> None:
    assert detect(dtmf_signal(ALL_SYMBOLS, level_dbfs=-50.0)) == ""


@pytest.mark.parametrize("freq_factor", [1.015, 0.985])
def test_frequency_error(freq_factor: float) -> None:
    assert detect(dtmf_signal(ALL_SYMBOLS, freq_factor=freq_factor)) == ALL_SYMBOLS


@pytest.mark.parametrize("twist_db", [4.0, -7.0])
def test_twist_within_limits(twist_db: float) -> None:
    assert detect(dtmf_signal(ALL_SYMBOLS, twist_db=twist_db)) == ALL_SYMBOLS


def test_excessive_twist_is_rejected() -> None:
    # Column 10 dB over row exceeds the +6 dB limit for every symbol.
    assert detect(dtmf_signal(ALL_SYMBOLS, twist_db=10.0)) == ""


def test_other_sample_rate() -> None:
    x = dtmf_signal(ALL_SYMBOLS, 40, 40, rate_hz=16000)
    assert detect(x, chunk=320, rate_hz=16000) == ALL_SYMBOLS
    with pytest.raises(ValueError, match="too low"):
        DtmfDetector(3000)


def test_digital_silence_and_call_progress_tones_give_nothing() -> None:
    assert detect(np.zeros(RATE_HZ * 2, dtype=np.int16)) == ""
    assert detect(np.zeros(RATE_HZ * 2)) == ""
    dial_425 = 0.3 * np.sin(2 * np.pi * 425 * np.arange(RATE_HZ * 5) / RATE_HZ)
    assert detect(dial_425) == ""
    for zone in tones.TONE_ZONES.values():
        for tone in (zone.dial, zone.busy, zone.ringback, zone.howler, zone.beep):
            # Without its cadence, so the whole second is signal.
            steady = dataclasses.replace(tone, cadence_ms=())
            x = tones.ToneGenerator(steady).next_frame(RATE_HZ)
            assert detect(x) == "", (zone.name, tone.name)


def test_reset_drops_buffered_samples_and_state() -> None:
    x = dtmf_signal("9", on_ms=50, off_ms=0)
    detector = DtmfDetector()
    assert detector.feed(x[:150]) == []  # one whole block + 48 samples buffered
    detector.reset()
    # After reset only the remaining 250 samples count: still ≥ 2 blocks of '9'.
    assert detector.feed(x[150:]) == ["9"]
    detector.reset()
    assert detector.feed(x[:101]) == []
    detector.reset()
    assert detector.feed(np.zeros(0)) == []


SIGNAL_FOR_CHUNKING = float_to_int16(
    add_noise(
        np.concatenate(
            [
                dtmf_signal("1A#", 40, 40),
                dtmf_signal("5555", 45, 45, level_dbfs=-30.0),
                dtmf_signal("0*D", 60, 35, twist_db=3.0),
            ]
        ),
        level_dbfs=-40.0,
        seed=7,
    )
)
EXPECTED_FOR_CHUNKING = "1A#5555" + "0*D"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 700), min_size=1, max_size=30))
def test_chunking_does_not_change_the_result(sizes: list[int]) -> None:
    detector = DtmfDetector()
    found: list[str] = []
    start = 0
    i = 0
    while start < len(SIGNAL_FOR_CHUNKING):
        size = sizes[i % len(sizes)]
        found += detector.feed(SIGNAL_FOR_CHUNKING[start : start + size])
        start += size
        i += 1
    assert "".join(found) == detect(SIGNAL_FOR_CHUNKING, chunk=len(SIGNAL_FOR_CHUNKING))
    assert "".join(found) == EXPECTED_FOR_CHUNKING


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_talk_off_on_hungarian_speech() -> None:
    import soundfile
    import soxr

    wav = subprocess.run(
        ["espeak-ng", "-v", "hu", "--stdout", HU_SENTENCE],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    speech, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    speech_8k = soxr.resample(speech, rate, RATE_HZ, quality="HQ")
    assert len(speech_8k) > 10 * RATE_HZ  # a long sentence, not an empty render
    for gain in (1.0, 0.3, 2.0):
        assert detect(float_to_int16(speech_8k * gain)) == "", gain


def test_sixty_seconds_of_keys_are_all_found() -> None:
    # How fast is a bench figure (the media path's CPU per call), not a timed test.
    x = np.tile(tones.dtmf_sequence(ALL_SYMBOLS, 50, 50, -20.0), 38)[: 60 * RATE_HZ]
    found = detect(x)
    assert len(found) == 600
    assert found[:16] == ALL_SYMBOLS


# --- echo gate (issue 5 item 5) -------------------------------------------------------------

#: Where the test puts the prompt's DTMF-like chord and the caller's keys (fraction of length).
CHORD_AT = 0.5
KEY_POSITIONS = (0.15, 0.35, 0.65, 0.85)
CALLER_KEYS = "159#"
#: Echo delays covered by the default ECHO_WINDOW_S (100 ms): none, one block, 60 ms lead.
ECHO_DELAYS_MS = (0, 8, 60, 95)


def echo_of(tx: np.ndarray, loss_db: float, delay_ms: int) -> np.ndarray:
    """What the hybrid returns: ``tx`` delayed and attenuated, plus a −60 dBFS line noise."""
    delay = delay_ms * RATE_HZ // 1000
    delayed = np.concatenate([np.zeros(delay), tx[: len(tx) - delay]])
    return add_noise(delayed * 10 ** (-loss_db / 20), level_dbfs=-60.0, seed=3)


def detect_with_reference(rx: np.ndarray, tx: np.ndarray | None) -> str:
    """Feed received and transmitted audio frame by frame, as the media path does."""
    detector = DtmfDetector()
    found: list[str] = []
    for start in range(0, len(rx), FRAME_SAMPLES):
        ref = None if tx is None else tx[start : start + FRAME_SAMPLES]
        found += detector.feed(rx[start : start + FRAME_SAMPLES], reference=ref)
    return "".join(found)


@pytest.fixture(scope="module")
def prompt_with_chord() -> np.ndarray:
    """A real prompt as played to the line (espeak-ng, phone-conditioned, −3 dBFS peak) with a
    150 ms DTMF '9' chord at −6 dBFS in the middle, as a jingle or a tone sample could have."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    from appliance.speech.condition import condition_for_phone
    from appliance.speech.tts import EspeakEngine

    samples, rate = EspeakEngine("hu", default_config().speech.espeak_wpm).synthesize(HU_SENTENCE)
    tx = condition_for_phone(samples, rate).astype(np.float64) / 32767
    chord = dtmf_signal("9", on_ms=150, off_ms=0, level_dbfs=-6.0)
    at = int(CHORD_AT * len(tx))
    tx[at : at + len(chord)] = chord
    return tx


@pytest.mark.parametrize("delay_ms", ECHO_DELAYS_MS)
def test_echo_of_own_prompt_chord_is_not_a_key(
    prompt_with_chord: np.ndarray, delay_ms: int
) -> None:
    rx = echo_of(prompt_with_chord, loss_db=6.0, delay_ms=delay_ms)
    # Without the reference the echoed chord is a perfectly good '9': the gate is what stops it.
    assert detect_with_reference(rx, None) == "9"
    assert detect_with_reference(rx, prompt_with_chord) == ""


def test_echo_with_more_hybrid_loss_is_not_a_key(prompt_with_chord: np.ndarray) -> None:
    rx = echo_of(prompt_with_chord, loss_db=16.0, delay_ms=20)
    assert detect_with_reference(rx, prompt_with_chord) == ""


@pytest.mark.parametrize("level_dbfs", [-10.0, -15.0, -20.0])
@pytest.mark.parametrize("delay_ms", [8, 60])
def test_real_keys_during_the_prompt_are_reported(
    prompt_with_chord: np.ndarray, level_dbfs: float, delay_ms: int
) -> None:
    rx = echo_of(prompt_with_chord, loss_db=6.0, delay_ms=delay_ms)
    for key, position in zip(CALLER_KEYS, KEY_POSITIONS, strict=True):
        tone = dtmf_signal(key, on_ms=80, off_ms=0, level_dbfs=level_dbfs)
        at = int(position * len(rx))
        rx[at : at + len(tone)] += tone
    assert detect_with_reference(rx, prompt_with_chord) == CALLER_KEYS


def test_key_on_the_same_chord_as_the_prompt_needs_to_beat_the_echo() -> None:
    # TX plays '5' at −10 dBFS; its echo comes back at −16 dBFS. A caller pressing '5' at
    # −22 dBFS is below the gate (rx ≤ tx − 6 + 3 dB at both frequencies); at −6 dBFS it is
    # clearly louder than anything the echo could be, and is reported.
    tx = dtmf_signal("5", on_ms=300, off_ms=100, level_dbfs=-10.0)
    echo = echo_of(tx, loss_db=6.0, delay_ms=0)
    assert detect_with_reference(echo, tx) == ""
    assert detect_with_reference(echo + dtmf_signal("5", 300, 100, level_dbfs=-6.0), tx) == "5"


def test_reference_of_silence_changes_nothing() -> None:
    x = add_noise(dtmf_signal(ALL_SYMBOLS), level_dbfs=-35.0)
    assert detect_with_reference(x, np.zeros(len(x))) == ALL_SYMBOLS
    assert detect_with_reference(x, None) == ALL_SYMBOLS


def test_int16_reference_is_scaled_like_samples() -> None:
    tx = tones.dtmf_sequence("5", on_ms=300, off_ms=100, level_dbfs=-10.0)
    echo = np.round(tx * 10 ** (-6 / 20)).astype(np.int16)
    assert detect_with_reference(echo, None) == "5"
    assert detect_with_reference(echo, tx) == ""


def test_reference_length_must_match() -> None:
    detector = DtmfDetector()
    with pytest.raises(ValueError, match="reference has 10 samples"):
        detector.feed(np.zeros(160), reference=np.zeros(10))
    with pytest.raises(ValueError, match="echo window"):
        DtmfDetector(echo_window_s=-1.0)


def test_reset_forgets_echo_history() -> None:
    tx = dtmf_signal("5", on_ms=100, off_ms=0, level_dbfs=-6.0)
    key = dtmf_signal("5", on_ms=100, off_ms=100, level_dbfs=-15.0)
    detector = DtmfDetector()
    detector.feed(np.zeros(len(tx)), reference=tx)
    # Right after a loud TX '5' the history still covers it: a quieter '5' is echo-like.
    assert detector.feed(key) == []
    detector.reset()
    assert detector.feed(key) == ["5"]


ECHO_TX = dtmf_signal("3A", 200, 100, level_dbfs=-6.0)
# Echo of "3A" (30 ms late) under a caller's "7D": '7' starts 30 ms before the echo and is
# reported; the echoes of '3' and 'A' are gated; 'D' shares 1633 Hz with the echoed 'A' and is
# not louder there, so it is gated too. Without the reference all four would be reported.
ECHO_RX = float_to_int16(
    echo_of(ECHO_TX, loss_db=6.0, delay_ms=30) + dtmf_signal("7D", 150, 150, level_dbfs=-12.0)
)
ECHO_EXPECTED = "7"


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 700), min_size=1, max_size=30))
def test_chunking_with_reference_does_not_change_the_result(sizes: list[int]) -> None:
    detector = DtmfDetector()
    found: list[str] = []
    start = 0
    i = 0
    while start < len(ECHO_RX):
        size = sizes[i % len(sizes)]
        chunk = slice(start, start + size)
        found += detector.feed(ECHO_RX[chunk], reference=ECHO_TX[chunk])
        start += size
        i += 1
    assert "".join(found) == ECHO_EXPECTED
    assert "".join(DtmfDetector().feed(ECHO_RX)) == "73DA"
