"""The prompt library: every prompt pre-rendered to 8 kHz telephone audio, cached on disk.

``appliance sounds build`` calls :meth:`PromptLibrary.build` with an engine; the daemon calls
:meth:`PromptLibrary.load`, which needs no engine and no model (docs/design.md §6). Call references
are assembled from pre-rendered digit clips at call time: pure array concatenation, no synthesis.

Cache layout (``cache_dir``):

* ``<sha256>.wav`` — one clip, 8 kHz mono PCM_16; the name is the SHA-256 of the text, the
  voice id, the engine settings and :data:`~appliance.speech.condition.CONDITIONING_VERSION`,
  so any change to what would be heard gives a new file and an unchanged clip is reused.
* ``library.<lang>.json`` — manifest of the last build: clip name → file, voice, the filled
  notice layers and the version of each.

Every file is written to a temporary name, fsync'ed and renamed (atomic on POSIX), so a power
cut leaves either the old file or the new one. A cached clip that does not read back as a
well-formed 8 kHz mono PCM_16 WAV is rendered again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import string
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Final

import numpy as np
import numpy.typing as npt
import soundfile

from appliance.errors import SpeechError
from appliance.languages.registry import Registry
from appliance.reference import spoken_groups
from appliance.speech.condition import (
    CONDITIONING_VERSION,
    INT16_FULL_SCALE,
    PHONE_RATE_HZ,
    SILENCE_DBFS,
    condition_for_phone,
    dbfs_to_amplitude,
)
from appliance.speech.prompts import NOTICE_FIRST, NOTICE_LAYERS, digit_word
from appliance.speech.tts import TtsEngine

_LOGGER = logging.getLogger(__name__)

#: Pause between digits of one group. The digit clips and the intro are cut to their sound
#: (:data:`SPOKEN_EDGE_DBFS`), so these pauses are the whole silence the caller hears between
#: words (docs/speech.md "The reference, once").
DIGIT_GAP_S: Final[float] = 0.150
#: Pause between groups ("4 2 7 — 1 9 3 — 5 8"): the reference is read once, so each group
#: gets time to be written down before the next one.
GROUP_GAP_S: Final[float] = 0.450
#: Pause after the intro ("Azonosító:") before the first digit.
INTRO_GAP_S: Final[float] = 0.200
#: The parts of a spoken reference are cut where their sound starts and ends, at the level
#: below which conditioning counts audio as silence (it keeps 30 ms of it at each end, which
#: would add up to ≈ 0.4 s over an intro and eight digits).
SPOKEN_EDGE_DBFS: Final[float] = SILENCE_DBFS
#: Clip names of the digit words.
DIGIT_CLIPS: Final[tuple[str, ...]] = tuple("0123456789")
#: The clips only ever spoken as parts of a reference, between pauses of known length: kept
#: cut to their sound (:func:`trim_edges`).
REFERENCE_PARTS: Final[tuple[str, ...]] = ("reference_intro", *DIGIT_CLIPS)
NOTICE_CLIP: Final[str] = NOTICE_FIRST
#: The voicemail beep ("A sípszó után…"): generated, not synthesised, so always present.
BEEP_CLIP: Final[str] = "beep"
BEEP_FREQ_HZ: Final[float] = 1000.0
BEEP_S: Final[float] = 0.400
#: Below the speech peak (−3 dBFS): a pure tone at the same peak sounds much louder.
BEEP_PEAK_DBFS: Final[float] = -9.0
#: Raised-cosine ramps avoid clicks (spectral splatter) at the tone's edges.
BEEP_RAMP_S: Final[float] = 0.010
#: 2: the layered notice (``notice_texts``/``notice_versions`` per layer).
MANIFEST_VERSION: Final[int] = 2
#: The cue a shop that lifted during the notice hears when the caller is put through
#: (docs/speech.md "The shop during the notice"): two soft pips, generated like the beep.
CUE_CLIP: Final[str] = "cue"
CUE_FREQ_HZ: Final[float] = 1400.0
CUE_PIP_S: Final[float] = 0.060
CUE_PEAK_DBFS: Final[float] = -20.0
_WAV_HEADER_MIN_BYTES: Final[int] = 44

#: ``progress(clip_name, reused, seconds)`` — called once per clip during a build, with the
#: clip's length in seconds of 8 kHz audio (``appliance sounds build`` prints it).
ProgressCallback = Callable[[str, bool, float], None]


def _silence(seconds: float) -> npt.NDArray[np.int16]:
    return np.zeros(round(seconds * PHONE_RATE_HZ), dtype=np.int16)


def trim_edges(audio: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    """Return ``audio`` without the samples at either end at or below
    :data:`SPOKEN_EDGE_DBFS` (all of it when nothing is louder)."""
    loud = np.flatnonzero(np.abs(audio.astype(np.int32))
                          > dbfs_to_amplitude(SPOKEN_EDGE_DBFS) * INT16_FULL_SCALE)
    if loud.size == 0:
        return audio
    return audio[int(loud[0]) : int(loud[-1]) + 1]


def beep() -> npt.NDArray[np.int16]:
    """Return the voicemail beep: 1 kHz, 400 ms, −9 dBFS peak, 10 ms ramps, 8 kHz int16."""
    samples: npt.NDArray[np.int16] = np.round(
        _tone(BEEP_FREQ_HZ, BEEP_S, BEEP_PEAK_DBFS)).astype(np.int16)
    return samples


def _tone(freq_hz: float, seconds: float, peak_dbfs: float) -> npt.NDArray[np.float64]:
    t = np.arange(round(seconds * PHONE_RATE_HZ)) / PHONE_RATE_HZ
    tone = np.sin(2 * np.pi * freq_hz * t)
    ramp = round(BEEP_RAMP_S * PHONE_RATE_HZ)
    envelope = np.ones_like(tone)
    envelope[:ramp] = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    envelope[-ramp:] = envelope[:ramp][::-1]
    result: npt.NDArray[np.float64] = tone * envelope * 10.0 ** (peak_dbfs / 20.0) * 32767
    return result


def connect_cue() -> npt.NDArray[np.int16]:
    """Return the "caller is through" cue: two 60 ms pips at 1.4 kHz, 60 ms apart, −20 dBFS."""
    pip = _tone(CUE_FREQ_HZ, CUE_PIP_S, CUE_PEAK_DBFS)
    gap = np.zeros(round(CUE_PIP_S * PHONE_RATE_HZ))
    samples: npt.NDArray[np.int16] = np.round(np.concatenate((pip, gap, pip))).astype(np.int16)
    return samples


def _sha256_hex(*parts: str) -> str:
    # JSON-encode the parts so no two different tuples can concatenate to the same string.
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()


def _settings_json(settings: Mapping[str, object]) -> str:
    return json.dumps(dict(settings), sort_keys=True, ensure_ascii=False, default=str)


def clip_file_name(text: str, voice_id: str, settings: Mapping[str, object]) -> str:
    """Return the cache file name of a clip: SHA-256 of everything that shapes its sound."""
    return _sha256_hex(text, voice_id, _settings_json(settings), CONDITIONING_VERSION) + ".wav"


def notice_version(notice_text: str, voice_id: str, settings: Mapping[str, object]) -> str:
    """Return the version of one notice layer stored per call: SHA-256 of its filled text +
    voice + settings (the same text spoken by another voice is another version)."""
    return _sha256_hex(notice_text, voice_id, _settings_json(settings))


def is_template(text: str) -> bool:
    """Return whether ``text`` still has ``{placeholders}`` (it can't be pre-rendered)."""
    return any(field is not None for _, field, _, _ in string.Formatter().parse(text))


@contextmanager
def _atomic_open(path: Path, *, replace: bool = True) -> Iterator[IO[bytes]]:
    """Open a temporary file next to ``path``; on success fsync and rename it to ``path``.

    With ``replace`` False the file is linked into place instead, which fails with
    FileExistsError if anything is at ``path`` by then (nothing is ever overwritten)."""
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(temp, path)
        else:
            os.link(temp, path)
            temp.unlink()
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    # The rename is durable only once the directory entry is on disk.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_clip(path: Path, audio: npt.NDArray[np.int16], *, replace: bool = True) -> None:
    """Atomically write ``audio`` as an 8 kHz mono PCM_16 WAV; with ``replace`` False an
    existing ``path`` is left alone (FileExistsError)."""
    with _atomic_open(path, replace=replace) as file:
        soundfile.write(file, audio, PHONE_RATE_HZ, subtype="PCM_16", format="WAV")


def read_clip(path: Path) -> npt.NDArray[np.int16] | None:
    """Read a cached clip, or return None if it is missing or not well-formed.

    Well-formed: RIFF size field matches the file length (a truncated file fails this even
    though libsndfile would read what is there, docs/audio.md §5.3), 8 kHz, mono,
    PCM_16, at least one frame.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(raw) < _WAV_HEADER_MIN_BYTES or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        return None
    if int.from_bytes(raw[4:8], "little") != len(raw) - 8:
        return None
    try:
        with soundfile.SoundFile(path) as wav:
            if (wav.samplerate, wav.channels, wav.subtype) != (PHONE_RATE_HZ, 1, "PCM_16"):
                return None
            audio = wav.read(dtype="int16")
    except (soundfile.LibsndfileError, RuntimeError):
        return None
    return audio if audio.ndim == 1 and audio.size > 0 else None


class PromptLibrary:
    """Pre-rendered prompt clips (8 kHz mono int16) for one language and voice.

    Immutable after construction; safe to share between tasks and threads. Every method
    except :meth:`render_text` is allocation-only (no I/O, no synthesis).
    """

    def __init__(
        self,
        *,
        lang: str,
        voice_id: str,
        notice_versions: Mapping[str, str],
        clips: Mapping[str, npt.NDArray[np.int16]],
        engine: TtsEngine | None = None,
    ) -> None:
        """Wrap already-rendered clips; use :meth:`build` or :meth:`load` instead.

        Raises:
            SpeechError: a notice layer, its version, the reference intro or a digit clip is
                missing.
        """
        required = {*NOTICE_LAYERS, "reference_intro", *DIGIT_CLIPS}
        missing = (required - clips.keys()) | (set(NOTICE_LAYERS) - notice_versions.keys())
        if missing:
            raise SpeechError("prompt library lacks clips: " + ", ".join(sorted(missing)))
        self.lang = lang
        self._voice_id = voice_id
        self._notice_versions = dict(notice_versions)
        self._clips = dict(clips)
        for name in REFERENCE_PARTS:
            self._clips[name] = trim_edges(self._clips[name])
        self._clips.setdefault(BEEP_CLIP, beep())
        self._clips.setdefault(CUE_CLIP, connect_cue())
        for clip in self._clips.values():
            clip.setflags(write=False)  # shared by every call: nobody may edit it in place
        self._engine = engine
        self._digit_gap = _silence(DIGIT_GAP_S)
        self._group_gap = _silence(GROUP_GAP_S)
        self._intro_gap = _silence(INTRO_GAP_S)

    # --- construction ------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        cache_dir: Path,
        *,
        lang: str,
        engine: TtsEngine,
        texts: Mapping[str, str],
        notice_texts: Mapping[str, str],
        progress: ProgressCallback | None = None,
        languages: Registry | None = None,
    ) -> PromptLibrary:
        """Render (or reuse) every clip into ``cache_dir`` and write the manifest.

        Rendered: every text of ``texts`` without placeholders, the notice layers (already
        filled, see :func:`~appliance.speech.prompts.render_notice_texts`) and the digit words
        0–9 of ``lang``. Templates with placeholders (``last_call``, ``health_fault``) are
        skipped: the CLI fills and renders them with :meth:`render_text`.

        Args:
            cache_dir: created if missing.
            lang: language of ``texts``; selects the digit words.
            engine: the speech engine.
            texts: prompt templates from ``load_prompt_texts``.
            notice_texts: the filled notice layers, by name (:data:`NOTICE_LAYERS`).
            progress: called as ``progress(name, reused, seconds)`` once per clip, right
                after it was rendered or found in the cache.
            languages: where ``lang`` is looked up (None = the built-in languages).

        Raises:
            SpeechError: the engine failed or produced silence.
        """
        cache_dir.mkdir(parents=True, exist_ok=True)
        voice_id = engine.voice_id
        settings = dict(engine.settings)
        sources: dict[str, str] = {
            name: text
            for name, text in texts.items()
            if name not in NOTICE_LAYERS and not is_template(text)
        }
        missing = set(NOTICE_LAYERS) - notice_texts.keys()
        if missing:
            raise SpeechError("notice layers not given: " + ", ".join(sorted(missing)))
        for layer in NOTICE_LAYERS:
            sources[layer] = notice_texts[layer]
        for digit in DIGIT_CLIPS:
            sources[digit] = digit_word(lang, digit, languages)
        clips: dict[str, npt.NDArray[np.int16]] = {}
        files: dict[str, str] = {}
        for name, text in sources.items():
            file_name = clip_file_name(text, voice_id, settings)
            path = cache_dir / file_name
            audio = read_clip(path)
            reused = audio is not None
            if audio is None:
                if path.exists():
                    _LOGGER.warning("Cached clip %s (%s) is corrupt; rendering again", name, path)
                samples, rate = engine.synthesize(text)
                audio = condition_for_phone(samples, rate)
                write_clip(path, audio)
            _LOGGER.debug("Clip %s: %s (%s)", name, file_name, "reused" if reused else "rendered")
            if name in REFERENCE_PARTS:
                audio = trim_edges(audio)  # as the caller hears it (the cache keeps it whole)
            if progress is not None:
                progress(name, reused, audio.size / PHONE_RATE_HZ)
            clips[name] = audio
            files[name] = file_name
        versions = {layer: notice_version(notice_texts[layer], voice_id, settings)
                    for layer in NOTICE_LAYERS}
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "lang": lang,
            "voice_id": voice_id,
            "settings": json.loads(_settings_json(settings)),
            "conditioning": CONDITIONING_VERSION,
            "notice_version": versions[NOTICE_FIRST],
            "notice_versions": versions,
            "notice_texts": {layer: notice_texts[layer] for layer in NOTICE_LAYERS},
            "clips": files,
        }
        with _atomic_open(cls.manifest_path(cache_dir, lang)) as file:
            file.write(json.dumps(manifest, ensure_ascii=False, indent=2).encode("utf-8"))
        return cls(lang=lang, voice_id=voice_id, notice_versions=versions, clips=clips,
                   engine=engine)

    @classmethod
    def load(cls, cache_dir: Path, *, lang: str,
             notice_texts: Mapping[str, str] | None = None) -> PromptLibrary:
        """Load the last build for ``lang`` without any speech engine (the daemon's path).

        Args:
            cache_dir: the directory :meth:`build` wrote.
            lang: language to load.
            notice_texts: the notice layers the current configuration would speak; if given
                and any differs from the built one, loading fails so a stale notice is never
                played.

        Raises:
            SpeechError: no build, a stale notice, or a missing/corrupt clip (run
                ``appliance sounds build``).
        """
        path = cls.manifest_path(cache_dir, lang)
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SpeechError(f"no prompt build for {lang!r} in {cache_dir}: {exc}") from exc
        if manifest.get("manifest_version") != MANIFEST_VERSION:
            raise SpeechError(f"{path}: unsupported manifest version; rebuild the prompts")
        if notice_texts is not None and manifest.get("notice_texts") != dict(notice_texts):
            raise SpeechError(
                f"{path}: the rendered notice differs from the configured one; "
                "run `appliance sounds build`"
            )
        clips: dict[str, npt.NDArray[np.int16]] = {}
        for name, file_name in manifest["clips"].items():
            audio = read_clip(cache_dir / file_name)
            if audio is None:
                raise SpeechError(f"prompt clip {name!r} ({file_name}) is missing or corrupt")
            clips[name] = audio
        return cls(
            lang=lang,
            voice_id=manifest["voice_id"],
            notice_versions=manifest["notice_versions"],
            clips=clips,
        )

    @staticmethod
    def manifest_path(cache_dir: Path, lang: str) -> Path:
        """Return where the manifest of ``lang`` lives in ``cache_dir``."""
        return cache_dir / f"library.{lang}.json"

    # --- use ---------------------------------------------------------------------------

    @property
    def voice_id(self) -> str:
        """The voice the clips were rendered with."""
        return self._voice_id

    @property
    def notice(self) -> npt.NDArray[np.int16]:
        """The rendered first layer of the notice (read-only array)."""
        return self._clips[NOTICE_CLIP]

    @property
    def notice_version(self) -> str:
        """The first layer's version (SHA-256 hex of text + voice id + settings)."""
        return self._notice_versions[NOTICE_FIRST]

    def notice_layer(self, layer: str) -> npt.NDArray[np.int16]:
        """The rendered notice layer ``layer`` (one of :data:`NOTICE_LAYERS`).

        Raises:
            KeyError: not a notice layer.
        """
        if layer not in NOTICE_LAYERS:
            raise KeyError(f"not a notice layer: {layer!r}")
        return self._clips[layer]

    def layer_version(self, layer: str) -> str:
        """The version of notice layer ``layer``; stored with each call that played it.

        Raises:
            KeyError: not a notice layer.
        """
        return self._notice_versions[layer]

    @property
    def names(self) -> frozenset[str]:
        """Every clip name in the library."""
        return frozenset(self._clips)

    def clip(self, name: str) -> npt.NDArray[np.int16]:
        """Return the clip ``name`` (read-only).

        Names: every prompt without placeholders, the notice layers, the digits "0".."9",
        "beep" and "cue" (generated tones).

        Raises:
            KeyError: no such clip (templates like ``last_call`` are never pre-rendered).
        """
        try:
            return self._clips[name]
        except KeyError:
            raise KeyError(f"no prompt clip {name!r}") from None

    def reference_audio(self, reference: str) -> npt.NDArray[np.int16]:
        """Assemble "<intro> 4 2 7 — 1 9 3 — 5 8", read once.

        :data:`DIGIT_GAP_S` between digits, :data:`GROUP_GAP_S` between groups (3-3-2), no
        synthesis: a concatenation of cached arrays (≈50 µs on the x86 dev VM). The caller
        hears it again on the repeat key and, when the shop hangs up first, at the end.

        Args:
            reference: the canonical 8 digits (what :func:`appliance.reference.parse_reference`
                returns for what a person typed); the check digit is not verified here.

        Raises:
            ReferenceFormatError: not 8 ASCII digits.
        """
        parts = [self._clips["reference_intro"], self._intro_gap, *self._digits_parts(reference)]
        return np.concatenate(parts)

    def digits_audio(self, reference: str) -> npt.NDArray[np.int16]:
        """Assemble one reading of the digits only, "4 2 7 — 1 9 3 — 5 8".

        For the whisper to the shop (``whisper_reference`` clip, then this), where the
        caller-facing intro would waste the agent's time.

        Raises:
            ReferenceFormatError: not 8 digits.
        """
        return np.concatenate(self._digits_parts(reference))

    def _digits_parts(self, reference: str) -> list[npt.NDArray[np.int16]]:
        """The clips and gaps of one reading, grouped as :func:`spoken_groups` groups."""
        parts: list[npt.NDArray[np.int16]] = []
        for group_index, group in enumerate(spoken_groups(reference)):
            if group_index:
                parts.append(self._group_gap)
            for offset, digit in enumerate(group):
                if offset:
                    parts.append(self._digit_gap)
                parts.append(self._clips[digit])
        return parts

    def render_text(self, text: str) -> npt.NDArray[np.int16]:
        """Render arbitrary text now (CLI only: needs the engine the library was built with).

        Raises:
            SpeechError: the library was loaded without an engine, or synthesis failed.
        """
        if self._engine is None:
            raise SpeechError("this prompt library has no speech engine (loaded, not built)")
        samples, rate = self._engine.synthesize(text)
        return condition_for_phone(samples, rate)

    def __repr__(self) -> str:
        return (
            f"PromptLibrary(lang={self.lang!r}, voice_id={self._voice_id!r}, "
            f"clips={len(self._clips)})"
        )
