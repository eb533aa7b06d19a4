"""Real espeak-ng and Piper rendering, and engine selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.errors import SpeechError
from appliance.speech.condition import PHONE_RATE_HZ, condition_for_phone
from appliance.speech.tts import (
    JOE_VOICE,
    EspeakEngine,
    PiperEngine,
    TtsEngine,
    find_piper_voice,
    select_engine,
)

from ..policies import default_config

#: The configured espeak-ng rate (``speech.espeak_wpm``): the engine has no default of its own.
ESPEAK_WPM = default_config().speech.espeak_wpm
HU_TEXT = "A hívás azonosítója: négy, kettő, hét. Kérjük, tartsa a vonalat."


def _band_energy_ratio(audio: np.ndarray, below_hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(audio.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / PHONE_RATE_HZ)
    return float(spectrum[freqs < below_hz].sum() / spectrum.sum())


def test_espeak_hungarian_renders_phone_audio(espeak_hu: EspeakEngine) -> None:
    samples, rate = espeak_hu.synthesize(HU_TEXT)
    assert samples.dtype == np.float32
    assert rate == 22050
    out = condition_for_phone(samples, rate)
    assert out.dtype == np.int16
    assert len(out) / PHONE_RATE_HZ > 1.0
    peak_dbfs = 20 * np.log10(np.max(np.abs(out.astype(np.float64))) / 32767)
    assert peak_dbfs == pytest.approx(-3.0, abs=0.1)
    # Band-pass 300–3400 Hz: under 1 % of the energy may remain below 200 Hz.
    assert _band_energy_ratio(out, 200) < 0.01


def test_espeak_text_starting_with_dash_is_text(espeak_hu: EspeakEngine) -> None:
    samples, _ = espeak_hu.synthesize("-v en mínusz öt")
    assert len(samples) > 0


def test_espeak_identity(espeak_hu: EspeakEngine) -> None:
    assert isinstance(espeak_hu, TtsEngine)
    assert espeak_hu.voice_id == "espeak-ng:hu"
    settings = espeak_hu.settings
    assert settings["speed_wpm"] == ESPEAK_WPM
    assert str(settings["version"])[:1].isdigit()


def test_espeak_errors_carry_stderr() -> None:
    with pytest.raises(SpeechError, match="voice does not exist"):
        EspeakEngine("xx-nonexistent", ESPEAK_WPM).synthesize("hello")
    with pytest.raises(SpeechError, match="not installed"):
        EspeakEngine("hu", ESPEAK_WPM, executable="espeak-ng-missing-binary").synthesize("hello")


def test_piper_joe_is_deterministic(piper_joe: PiperEngine) -> None:
    first, rate = piper_joe.synthesize("Your call reference is four, two, seven. Again.")
    second, _ = piper_joe.synthesize("Your call reference is four, two, seven. Again.")
    assert rate == 22050
    assert len(first) / rate > 1.0
    assert first.tobytes() == second.tobytes()


def test_piper_reads_hungarian_with_espeak_override(joe_model: Path) -> None:
    # audio-speech.md §1.5: CI runs the Hungarian text path with the English model.
    engine = PiperEngine(joe_model, espeak_voice="hu")
    samples, rate = engine.synthesize("A hívás azonosítója: négy, kettő, hét.")
    assert len(samples) / rate > 1.0
    assert engine.settings["espeak_voice"] == "hu"


def test_piper_identity(piper_joe: PiperEngine) -> None:
    assert piper_joe.voice_id == "piper:en_US-joe-medium"
    # docs/audio.md §1.2: the pinned hash of the packaged model.
    assert piper_joe.settings["model_sha256"] == (
        "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06"
    )


def test_piper_missing_model(tmp_path: Path) -> None:
    with pytest.raises(SpeechError, match="missing"):
        PiperEngine(tmp_path / "nope.onnx")


def test_select_named_piper_voice() -> None:
    engine, warning = select_engine("en", JOE_VOICE, voice_dirs=(), speed_wpm=ESPEAK_WPM)
    assert isinstance(engine, PiperEngine)
    assert warning is None


def test_select_voice_from_voice_dir(tmp_path: Path, joe_model: Path) -> None:
    (tmp_path / "hu_HU-anna-medium.onnx").symlink_to(joe_model)
    (tmp_path / "hu_HU-anna-medium.onnx.json").symlink_to(
        joe_model.with_name(joe_model.name + ".json")
    )
    assert find_piper_voice("hu_HU-anna-medium", [tmp_path / "empty", tmp_path]) == (
        tmp_path / "hu_HU-anna-medium.onnx"
    )
    engine, warning = select_engine("hu", "hu_HU-anna-medium", voice_dirs=[tmp_path],
                                    speed_wpm=ESPEAK_WPM)
    assert isinstance(engine, PiperEngine)
    assert engine.voice_id == "piper:hu_HU-anna-medium"
    assert warning is None


def test_select_path_to_onnx(joe_model: Path) -> None:
    engine, warning = select_engine("en", str(joe_model), speed_wpm=ESPEAK_WPM)
    assert isinstance(engine, PiperEngine)
    assert warning is None


def test_missing_voice_falls_back_to_espeak(tmp_path: Path) -> None:
    engine, warning = select_engine("hu", "hu_HU-anna-medium", voice_dirs=[tmp_path],
                                    speed_wpm=ESPEAK_WPM)
    assert isinstance(engine, EspeakEngine)
    assert engine.lang == "hu"
    assert warning is not None
    assert "hu_HU-anna-medium" in warning
    assert "espeak-ng" in warning


def test_missing_onnx_path_falls_back(tmp_path: Path) -> None:
    engine, warning = select_engine("en", str(tmp_path / "gone.onnx"), speed_wpm=ESPEAK_WPM)
    assert isinstance(engine, EspeakEngine)
    assert warning is not None
    assert "gone.onnx" in warning


@pytest.mark.parametrize("voice", [None, "espeak"])
def test_espeak_requested(voice: str | None) -> None:
    engine, warning = select_engine("en", voice, speed_wpm=ESPEAK_WPM)
    assert isinstance(engine, EspeakEngine)
    assert engine.espeak_voice == "en-us"
    assert warning is None
