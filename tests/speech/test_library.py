"""PromptLibrary: build, cache reuse, corruption, manifest load, reference assembly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from appliance.errors import ReferenceFormatError, SpeechError
from appliance.speech.condition import PHONE_RATE_HZ, dbfs_to_amplitude
from appliance.speech.library import (
    DIGIT_CLIPS,
    DIGIT_GAP_S,
    GROUP_GAP_S,
    INTRO_GAP_S,
    REFERENCE_PARTS,
    SPOKEN_EDGE_DBFS,
    PromptLibrary,
    clip_file_name,
    read_clip,
    trim_edges,
)
from appliance.speech.prompts import NOTICE_LAYERS, load_prompt_texts, render_notice_texts
from appliance.speech.tts import EspeakEngine, PiperEngine

from ..policies import default_config

#: The configured espeak-ng rate (``speech.espeak_wpm``): the engine has no default of its own.
ESPEAK_WPM = default_config().speech.espeak_wpm
REFERENCE = "42719358"


def _notice(lang: str, texts: dict[str, str]) -> dict[str, str]:
    purpose = "panaszkezelés" if lang == "hu" else "complaint handling"
    where = "üzletünkben" if lang == "hu" else "in our shop"
    basis = "jogos érdek" if lang == "hu" else "our legitimate interest"
    return render_notice_texts(
        texts, lang=lang, company="Kovács Bt.", purpose=purpose, legal_basis=basis,
        full_notice_at=where, retention_days=1825, optout_key="9", details_key="0")


@pytest.fixture(scope="module")
def hu_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PromptLibrary, list]:
    cache = tmp_path_factory.mktemp("cache")
    texts = load_prompt_texts("hu")
    events: list[tuple[str, bool]] = []
    seconds: dict[str, float] = {}

    def progress(name: str, reused: bool, length_s: float) -> None:
        events.append((name, reused))
        seconds[name] = length_s

    library = PromptLibrary.build(
        cache,
        lang="hu",
        engine=EspeakEngine("hu", ESPEAK_WPM),
        texts=texts,
        notice_texts=_notice("hu", texts),
        progress=progress,
    )
    # The progress callback reports each clip's length in seconds of 8 kHz audio.
    for name, length_s in seconds.items():
        assert length_s == library.clip(name).size / PHONE_RATE_HZ
    return cache, library, events


def _s(seconds: float) -> int:
    return round(seconds * PHONE_RATE_HZ)


def test_build_renders_every_clip(hu_build: tuple[Path, PromptLibrary, list]) -> None:
    cache, library, events = hu_build
    names = {name for name, _ in events}
    assert {*NOTICE_LAYERS, "reference_intro", "connecting", *DIGIT_CLIPS} <= names
    assert "last_call" not in names  # a template: rendered on demand by the CLI
    assert not any(reused for _, reused in events)
    assert len(list(cache.glob("*.wav"))) == len(events)
    for name in names:
        clip = library.clip(name)
        assert clip.dtype == np.int16
        assert clip.size > 0
    assert library.notice is library.clip("notice")
    assert len(library.notice) / PHONE_RATE_HZ > 5.0
    assert library.voice_id == "espeak-ng:hu"
    assert len(library.notice_version) == 64
    # Each layer has its own version; the first layer's is the library's notice version.
    versions = {layer: library.layer_version(layer) for layer in NOTICE_LAYERS}
    assert versions["notice"] == library.notice_version
    assert len(set(versions.values())) == len(NOTICE_LAYERS)
    assert library.notice_layer("notice_details").size > library.notice.size
    assert library.notice_layer("notice_short").size < library.notice.size


def test_second_build_renders_nothing(hu_build: tuple[Path, PromptLibrary, list]) -> None:
    cache, library, first_events = hu_build
    texts = load_prompt_texts("hu")
    events: list[tuple[str, bool]] = []
    again = PromptLibrary.build(
        cache,
        lang="hu",
        engine=EspeakEngine("hu", ESPEAK_WPM),
        texts=texts,
        notice_texts=_notice("hu", texts),
        progress=lambda name, reused, _seconds: events.append((name, reused)),
    )
    assert events == [(name, True) for name, _ in first_events]
    assert again.notice_version == library.notice_version
    assert np.array_equal(again.notice, library.notice)


def test_changed_text_renders_only_that_clip(tmp_path: Path) -> None:
    texts = load_prompt_texts("hu")
    engine = EspeakEngine("hu", ESPEAK_WPM)
    notice = _notice("hu", texts)
    PromptLibrary.build(tmp_path, lang="hu", engine=engine, texts=texts, notice_texts=notice)
    changed = load_prompt_texts("hu", {"goodbye": "Viszonthallásra!"})
    events: list[tuple[str, bool]] = []
    PromptLibrary.build(
        tmp_path,
        lang="hu",
        engine=engine,
        texts=changed,
        notice_texts=notice,
        progress=lambda name, reused, _seconds: events.append((name, reused)),
    )
    assert [name for name, reused in events if not reused] == ["goodbye"]


def test_corrupt_clip_is_rendered_again(tmp_path: Path) -> None:
    texts = load_prompt_texts("hu")
    engine = EspeakEngine("hu", ESPEAK_WPM)
    notice = _notice("hu", texts)
    PromptLibrary.build(tmp_path, lang="hu", engine=engine, texts=texts, notice_texts=notice)
    path = tmp_path / clip_file_name(texts["connecting"], engine.voice_id, engine.settings)
    good = read_clip(path)
    assert good is not None
    path.write_bytes(path.read_bytes()[:-100])  # truncated, e.g. by a failing SD card
    assert read_clip(path) is None
    events: list[tuple[str, bool]] = []
    PromptLibrary.build(
        tmp_path,
        lang="hu",
        engine=engine,
        texts=texts,
        notice_texts=notice,
        progress=lambda name, reused, _seconds: events.append((name, reused)),
    )
    assert [name for name, reused in events if not reused] == ["connecting"]
    repaired = read_clip(path)
    assert repaired is not None
    assert np.array_equal(repaired, good)
    assert not list(tmp_path.glob("*.tmp"))


def test_load_without_engine(hu_build: tuple[Path, PromptLibrary, list]) -> None:
    cache, library, _ = hu_build
    texts = load_prompt_texts("hu")
    loaded = PromptLibrary.load(cache, lang="hu", notice_texts=_notice("hu", texts))
    assert loaded.notice_version == library.notice_version
    assert loaded.voice_id == library.voice_id
    assert np.array_equal(loaded.reference_audio(REFERENCE), library.reference_audio(REFERENCE))
    with pytest.raises(SpeechError, match="no speech engine"):
        loaded.render_text("Szia")


def test_load_refuses_stale_notice(hu_build: tuple[Path, PromptLibrary, list]) -> None:
    cache, _, _ = hu_build
    with pytest.raises(SpeechError, match="sounds build"):
        PromptLibrary.load(cache, lang="hu",
                           notice_texts={**_notice("hu", load_prompt_texts("hu")),
                                         "notice_details": "Másik szöveg."})
    with pytest.raises(SpeechError, match="no prompt build"):
        PromptLibrary.load(cache, lang="en")


def test_reference_audio_structure(hu_build: tuple[Path, PromptLibrary, list]) -> None:
    _, library, _ = hu_build
    audio = library.reference_audio(REFERENCE)
    assert audio.dtype == np.int16

    def reading() -> list[np.ndarray]:
        parts: list[np.ndarray] = []
        for group in ("427", "193", "58"):
            if parts:
                parts.append(np.zeros(_s(GROUP_GAP_S), np.int16))
            for i, digit in enumerate(group):
                if i:
                    parts.append(np.zeros(_s(DIGIT_GAP_S), np.int16))
                parts.append(library.clip(digit))
        return parts

    # Read once (the repeat key and the end of the call read it again).
    expected = np.concatenate(
        [library.clip("reference_intro"), np.zeros(_s(INTRO_GAP_S), np.int16), *reading()]
    )
    assert np.array_equal(audio, expected)
    # Spot-check the gaps really are where the spec puts them: the group gap after "7".
    start = len(library.clip("reference_intro")) + _s(INTRO_GAP_S)
    start += sum(len(library.clip(d)) for d in "427") + 2 * _s(DIGIT_GAP_S)
    assert not audio[start : start + _s(GROUP_GAP_S)].any()
    assert np.array_equal(audio[start + _s(GROUP_GAP_S) :][:10], library.clip("1")[:10])


def test_reference_parts_are_cut_to_their_sound(
        hu_build: tuple[Path, PromptLibrary, list]) -> None:
    """The pauses of a reference are exactly the gaps: its clips start and end with sound,
    while the cache keeps each clip as conditioned (30 ms of silence at each end)."""
    cache, library, _ = hu_build
    edge = dbfs_to_amplitude(SPOKEN_EDGE_DBFS) * 32767
    for name in REFERENCE_PARTS:
        clip = library.clip(name)
        assert abs(int(clip[0])) > edge, name
        assert abs(int(clip[-1])) > edge, name
    loaded = PromptLibrary.load(cache, lang="hu")
    assert np.array_equal(loaded.clip("8"), library.clip("8"))
    files = json.loads(PromptLibrary.manifest_path(cache, "hu").read_text("utf-8"))["clips"]
    cached = read_clip(cache / files["8"])
    assert cached is not None
    assert cached.size > library.clip("8").size


def test_trim_edges() -> None:
    quiet, loud = 50, 2000
    audio = np.array([0, quiet, -loud, 0, quiet, loud, -quiet, 0], np.int16)
    assert trim_edges(audio).tolist() == [-loud, 0, quiet, loud]
    silent = np.array([0, quiet, 0], np.int16)
    assert trim_edges(silent) is silent


def test_digits_audio_is_one_reading(hu_build: tuple[Path, PromptLibrary, list]) -> None:
    _, library, _ = hu_build
    digits = library.digits_audio(REFERENCE)
    full = library.reference_audio(REFERENCE)
    assert np.array_equal(full[-len(digits) :], digits)
    expected_len = sum(len(library.clip(d)) for d in REFERENCE) + 5 * _s(DIGIT_GAP_S)
    assert len(digits) == expected_len + 2 * _s(GROUP_GAP_S)


@pytest.mark.parametrize("bad", ["4271935", "427193588", "4271935x", "४२७१९३५८", "427-193-58"])
def test_reference_audio_rejects_bad_references(
    hu_build: tuple[Path, PromptLibrary, list], bad: str
) -> None:
    _, library, _ = hu_build
    with pytest.raises(ReferenceFormatError):
        library.reference_audio(bad)


def test_reference_audio_is_the_same_every_time(hu_build: tuple[Path, PromptLibrary, list]) -> None:
    # How fast it is assembled is a bench figure (reference_assembly_ms), not a timed test.
    _, library, _ = hu_build
    assert np.array_equal(library.reference_audio(REFERENCE), library.reference_audio(REFERENCE))


def test_beep_clip(hu_build: tuple[Path, PromptLibrary, list]) -> None:
    _, library, _ = hu_build
    tone = library.clip("beep").astype(np.float64)
    assert len(tone) == _s(0.4)
    spectrum = np.abs(np.fft.rfft(tone))
    assert np.fft.rfftfreq(len(tone), 1 / PHONE_RATE_HZ)[np.argmax(spectrum)] == 1000
    assert abs(tone[0]) < 100  # ramped in: no click


def test_cue_clip_is_two_soft_pips(hu_build: tuple[Path, PromptLibrary, list]) -> None:
    _, library, _ = hu_build
    cue = library.clip("cue").astype(np.float64)
    pip = _s(0.06)
    assert len(cue) == 3 * pip
    assert not cue[pip : 2 * pip].any()  # the gap between the pips
    assert np.max(np.abs(cue)) < 32767 * 10 ** (-19 / 20)  # soft: at most −20 dBFS
    spectrum = np.abs(np.fft.rfft(cue[:pip]))
    assert abs(np.fft.rfftfreq(pip, 1 / PHONE_RATE_HZ)[np.argmax(spectrum)] - 1400) < 70


def test_clips_are_read_only(hu_build: tuple[Path, PromptLibrary, list]) -> None:
    _, library, _ = hu_build
    with pytest.raises(ValueError, match="read-only"):
        library.notice[0] = 1


def test_render_text_with_engine(hu_build: tuple[Path, PromptLibrary, list]) -> None:
    _, library, _ = hu_build
    texts = load_prompt_texts("hu")
    out = library.render_text(
        texts["last_call"].format(reference="4 2 7", caller="ismeretlen", time="ma")
    )
    assert out.dtype == np.int16
    assert len(out) > PHONE_RATE_HZ


def test_piper_english_library(tmp_path: Path, piper_joe: PiperEngine) -> None:
    # Only the clips a call needs (notice, connectives, digits): the full set is covered with
    # espeak above and would cost seconds more on a 2-vCPU runner.
    full = load_prompt_texts("en")
    texts = {"reference_intro": full["reference_intro"]}
    notice = _notice("en", full)
    library = PromptLibrary.build(
        tmp_path, lang="en", engine=piper_joe, texts=texts, notice_texts=notice
    )
    assert library.voice_id == "piper:en_US-joe-medium"
    assert len(library.notice) / PHONE_RATE_HZ > 5.0
    audio = library.reference_audio(REFERENCE)
    assert len(audio) / PHONE_RATE_HZ > 3.0
    events: list[tuple[str, bool]] = []
    again = PromptLibrary.build(
        tmp_path,
        lang="en",
        engine=piper_joe,
        texts=texts,
        notice_texts=notice,
        progress=lambda name, reused, _seconds: events.append((name, reused)),
    )
    assert events
    assert all(reused for _, reused in events)
    assert again.notice_version == library.notice_version
    assert np.array_equal(again.reference_audio(REFERENCE), audio)
