"""Prompt provisioning: every line's prompts, ready before the first call.

Contract: :meth:`PromptShelf.build` runs once at start (in a thread) and leaves one
:class:`Prompts` per line — the call flow's ``PromptPort`` — loaded from the prompt cache.
Prompts missing from the cache, or rendered with another voice, are rendered first; the daemon
never loads a speech engine itself: rendering (espeak-ng or Piper, soxr, scipy) happens in a
spawned child process (:func:`render_library`, :func:`render_text`), so the daemon stays small
(scipy alone is ≈ 88 MB RSS; docs/design.md §9 targets 60 MB) and the GPL-3 Piper code runs in
its own process (docs/audio.md §1.7). A voice that is not installed falls back to espeak-ng and
leaves :attr:`PromptShelf.speech_warning` set (the "voice-missing" fault).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from appliance.audio.tones import ToneZone, one_shot
from appliance.errors import SpeechError
from appliance.languages.registry import for_config, registry
from appliance.speech.library import PromptLibrary
from appliance.speech.prompts import load_prompt_texts, notice_texts_for
from appliance.speech.tts import espeak_voice_for, find_piper_voice, select_engine

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    from appliance.config import Config, LineConfig

_LOGGER = logging.getLogger(__name__)


def render_library(cache_dir: str, lang: str, voice: str, wpm: int, texts: dict[str, str],
                   notice_texts: dict[str, str], languages_dir: str) -> None:
    """Render a prompt library into ``cache_dir`` (runs in a spawned child process).

    ``languages_dir`` is ``speech.languages_dir``: the child finds ``lang`` where the daemon did.
    """
    languages = registry(languages_dir)
    engine, _warning = select_engine(lang, voice, speed_wpm=wpm, languages=languages)
    PromptLibrary.build(Path(cache_dir), lang=lang, engine=engine, texts=texts,
                        notice_texts=notice_texts, languages=languages)


def render_text(lang: str, voice: str, wpm: int, text: str, languages_dir: str) -> np.ndarray:
    """Synthesize and condition one sentence (runs in a spawned child process)."""
    from appliance.speech.condition import condition_for_phone

    engine, _warning = select_engine(lang, voice, speed_wpm=wpm,
                                     languages=registry(languages_dir))
    audio, rate = engine.synthesize(text)
    return condition_for_phone(audio, rate)


def _render_pool() -> ProcessPoolExecutor:
    """A one-process pool (spawned, so the child starts clean) for rendering speech.

    multiprocessing is imported here, not at the top: the daemon needs it only on the rare
    render path, and it and pickle are RSS the daemon carries for ever (docs/performance.md).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


class Prompts:
    """The call flow's view of the prompt library, plus the tones it needs as clips."""

    def __init__(self, library: PromptLibrary, zone: ToneZone,
                 extra: dict[str, np.ndarray] | None = None) -> None:
        self._library = library
        self._beep = one_shot(zone.beep, 400)
        self._extra = dict(extra or {})

    @property
    def library(self) -> PromptLibrary:
        return self._library

    @property
    def notice(self) -> np.ndarray:
        return self._library.notice

    @property
    def notice_version(self) -> str:
        return self._library.notice_version

    def notice_layer(self, layer: str) -> np.ndarray:
        return self._library.notice_layer(layer)

    def layer_version(self, layer: str) -> str:
        return self._library.layer_version(layer)

    def clip(self, name: str) -> np.ndarray:
        if name == "beep":
            return self._beep
        if name in self._extra:
            return self._extra[name]
        return self._library.clip(name)

    def reference_audio(self, reference: str) -> np.ndarray:
        return self._library.reference_audio(reference)


class PromptShelf:
    """Every line's :class:`Prompts`, keyed by the line (a line may speak another company
    name or language); built by :meth:`build`, read by :meth:`for_line`."""

    def __init__(self, config: Config, zone: ToneZone) -> None:
        self._config = config
        self._zone = zone
        self._prompts: dict[tuple[tuple[str, str], str], Prompts] = {}
        #: Set when the configured voice is not installed (prompts fell back to espeak-ng).
        self.speech_warning: str | None = None

    @staticmethod
    def _prompt_key(line: LineConfig, config: Config) -> tuple[str, str]:
        return (line.language or config.device.language, line.company or config.device.company)

    def for_line(self, line: LineConfig) -> Prompts:
        """The prompts of ``line``; only after :meth:`build`."""
        return self._prompts[(self._prompt_key(line, self._config), line.name)]

    def build(self) -> None:
        """Load every line's prompts from the cache, rendering missing ones in a child process.

        Runs in a thread (it reads files and waits for the child).
        """
        cfg = self._config
        default_key = (cfg.device.language, cfg.device.company)
        for line in cfg.lines:
            key = self._prompt_key(line, cfg)
            lang, company = key
            texts = load_prompt_texts(lang, cfg.speech.texts, for_config(cfg))
            notice_texts = notice_texts_for(cfg, texts, lang=lang, company=company)
            wanted = dict(texts)
            if len(cfg.lines) > 1:
                for other in cfg.lines:
                    if self._prompt_key(other, cfg) == key:
                        wanted[f"whisper_line@{other.name}"] = texts["whisper_line"].format(
                            line=other.name)
            # The default voice/company shares `appliance sounds build`'s cache directory.
            slug = hashlib.sha256(f"{lang}|{company}".encode()).hexdigest()[:12]
            cache = cfg.prompt_cache_dir if key == default_key else cfg.prompt_cache_dir / slug
            library = self._load_or_render(cache, lang, wanted, notice_texts)
            extra = {}
            if len(cfg.lines) > 1:
                extra["whisper_line"] = library.clip(f"whisper_line@{line.name}")
            self._prompts[(key, line.name)] = Prompts(library, self._zone, extra)

    def _wanted_voice(self, lang: str) -> tuple[str, str | None]:
        """(voice id the configuration asks for, warning if it falls back to espeak-ng)."""
        voice = self._config.speech.voice
        espeak_id = f"espeak-ng:{espeak_voice_for(lang, for_config(self._config))}"
        if voice in ("", "espeak"):
            return espeak_id, None
        path = Path(voice).expanduser() if (voice.endswith(".onnx") or "/" in voice) else (
            find_piper_voice(voice))
        if path is None or not path.is_file():
            return espeak_id, (
                f"Piper voice {voice!r} is not installed; prompts are rendered with espeak-ng "
                f"({lang}) instead — sudo ./setup.sh install fetches it")
        return f"piper:{path.name.removesuffix('.onnx')}", None

    def _load_or_render(self, cache: Path, lang: str, texts: dict[str, str],
                        notice_texts: dict[str, str]) -> PromptLibrary:
        voice_id, warning = self._wanted_voice(lang)
        self.speech_warning = self.speech_warning or warning
        if warning:
            _LOGGER.warning("%s", warning)
        try:
            library = PromptLibrary.load(cache, lang=lang, notice_texts=notice_texts)
            missing = [name for name in texts
                       if "{" not in texts[name] and name not in library.names]
            if library.voice_id == voice_id and not missing:
                return library
            _LOGGER.info("prompts in %s are out of date (voice %s, missing %s); rendering",
                         cache, library.voice_id, missing[:3])
        except SpeechError as exc:
            _LOGGER.info("prompts not yet rendered (%s); rendering", exc)
        started = time.monotonic()
        with _render_pool() as pool:
            pool.submit(render_library, str(cache), lang, self._config.speech.voice,
                        self._config.speech.espeak_wpm, texts, notice_texts,
                        self._config.speech.languages_dir).result()
        _LOGGER.info("prompts rendered in %.1f s (child process)", time.monotonic() - started)
        return PromptLibrary.load(cache, lang=lang, notice_texts=notice_texts)

    def render_text(self, text: str) -> np.ndarray:
        """Speak ``text`` now (button announcements), rendered in a child process.

        Blocks until the child is done: call it in a thread.
        """
        cfg = self._config
        with _render_pool() as pool:
            return pool.submit(render_text, cfg.device.language, cfg.speech.voice,
                               cfg.speech.espeak_wpm, text, cfg.speech.languages_dir).result()
