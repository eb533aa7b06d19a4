"""The language registry: finds the language folders, checks them, and hands them out.

A language is one folder named by its code (``hu``, ``en``) holding (docs/languages.md):

* ``prompts.toml`` — ``[texts]``: every prompt of :data:`PROMPT_NAMES` as a ``str.format``
  template;
* ``language.toml`` — its name, its espeak-ng voice, the words the announcements fill in
  (``[words]``) and the export summary's wording (``[export]``), with exactly the keys the
  reference language (:data:`REFERENCE_LANGUAGE`) has;
* ``grammar.py`` — the functions of :class:`~appliance.languages.base.Grammar` (numbers,
  durations, key names, articles, the time of day).

The built-in folders sit next to this module; ``speech.languages_dir`` adds a directory of
further folders (docs/configuration.md). Everything is loaded and checked when a registry is
built, so a broken language stops the configuration from loading, with a
:class:`~appliance.errors.ConfigError` naming the language, the file and the key, instead of
failing in the middle of a call.

Nothing here imports the configuration: config.py asks this module, not the other way round.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, Final, Protocol, cast

from appliance.errors import ConfigError
from appliance.languages.base import GRAMMAR_FUNCTIONS, Grammar

#: The language whose ``language.toml`` keys every other language must have; listed first.
#: (The configured default is ``device.language`` in defaults.toml, also Hungarian.)
REFERENCE_LANGUAGE: Final[str] = "hu"
#: Where the built-in language folders are.
BUILTIN_DIR: Final[Path] = Path(__file__).resolve().parent
PROMPTS_FILE: Final[str] = "prompts.toml"
LANGUAGE_FILE: Final[str] = "language.toml"
GRAMMAR_FILE: Final[str] = "grammar.py"
#: A folder name that is a language code: lower-case letters, optionally ``-`` and a region
#: or variant ("hu", "en", "de-at"); also used in cache file names, so nothing else.
_CODE_RE: Final = re.compile(r"^[a-z]{2,8}(-[a-z0-9]{1,8})*$")

#: Every prompt a language's ``prompts.toml`` must define (and the only names
#: ``speech.texts`` overrides may use).
PROMPT_NAMES: Final[frozenset[str]] = frozenset(
    {
        "notice",
        "notice_details",
        "notice_short",
        "reference_intro",
        "optout_confirm",
        "not_recorded",
        "connecting",
        "hold",
        "hold_reassure",
        "whisper_notice",
        "whisper_line",
        "whisper_reference",
        "voicemail",
        "goodbye",
        "last_call",
        "no_calls_yet",
        "health_ok",
        "health_fault",
    }
)


@dataclass(frozen=True, slots=True)
class Language:
    """One language, loaded and checked; immutable.

    Attributes:
        code: the folder name ("hu").
        name: the language's name for itself ("Magyar").
        espeak_voice: the espeak-ng voice that reads it ("hu", "en-us").
        texts: the prompt templates, exactly :data:`PROMPT_NAMES`.
        words: words the spoken announcements fill in (``[words]``).
        export: the export summary's wording (``[export]``, with sub-tables).
        grammar: the ``grammar.py`` module.
        directory: the folder it was loaded from.
    """

    code: str
    name: str
    espeak_voice: str
    texts: Mapping[str, str]
    words: Mapping[str, str]
    export: Mapping[str, Any]
    grammar: Grammar
    directory: Path


class Registry:
    """The languages one configuration can speak, by code; immutable."""

    def __init__(self, languages: Mapping[str, Language]) -> None:
        """Wrap loaded languages (use :func:`registry`)."""
        # Hungarian first, then alphabetical: error messages and --lang choices read so.
        order = sorted(languages, key=lambda code: (code != REFERENCE_LANGUAGE, code))
        self._languages = {code: languages[code] for code in order}

    @property
    def codes(self) -> tuple[str, ...]:
        """Every language code, :data:`REFERENCE_LANGUAGE` first."""
        return tuple(self._languages)

    def get(self, code: str, *, key: str = "device.language") -> Language:
        """Return the language ``code``.

        Raises:
            ConfigError: no such language; ``key`` names the setting that asked for it.
        """
        try:
            return self._languages[code]
        except KeyError:
            raise ConfigError(key, "one of " + ", ".join(self._languages), code) from None

    def __contains__(self, code: object) -> bool:
        return code in self._languages

    def __iter__(self) -> Iterator[Language]:
        return iter(self._languages.values())

    def __repr__(self) -> str:
        return f"Registry({', '.join(self._languages)})"


@functools.cache
def registry(extra_dir: str | Path = "") -> Registry:
    """The built-in languages plus those in ``extra_dir`` ("" = built-in only), cached.

    Raises:
        ConfigError: ``extra_dir`` is not a directory (key ``speech.languages_dir``), a folder
            there repeats a built-in code, or any language is incomplete or malformed.
    """
    languages = _discover(BUILTIN_DIR, builtin=True)
    if str(extra_dir):
        directory = Path(extra_dir).expanduser()
        if not directory.is_dir():
            raise ConfigError("speech.languages_dir", "a directory of language folders",
                              str(directory))
        for code, language in _discover(directory, builtin=False).items():
            if code in languages:
                raise ConfigError(f"speech.languages_dir ({directory / code})",
                                  "a language that is not built in", code)
            languages[code] = language
    reference = languages[REFERENCE_LANGUAGE]
    for language in languages.values():
        _check_like(language, reference)
    return Registry(languages)


def builtin() -> Registry:
    """The languages shipped with the appliance."""
    return registry("")


class _SpeechSettings(Protocol):
    @property
    def languages_dir(self) -> str: ...


class _Configuration(Protocol):
    """What :func:`for_config` reads of a :class:`~appliance.config.Config` (a Protocol, so
    this module does not import the configuration that imports it)."""

    @property
    def speech(self) -> _SpeechSettings: ...


def for_config(config: _Configuration) -> Registry:
    """The languages ``config`` can use (built-in plus ``speech.languages_dir``)."""
    return registry(config.speech.languages_dir)


def _discover(directory: Path, *, builtin: bool) -> dict[str, Language]:
    languages = {}
    for folder in sorted(directory.iterdir()):
        if not folder.is_dir() or folder.name.startswith(("_", ".")):
            continue  # __pycache__, hidden folders
        if not _CODE_RE.match(folder.name):
            raise ConfigError(f"language folder {folder}",
                              "a language code as its name (hu, en, de-at)", folder.name)
        languages[folder.name] = _load(folder, builtin=builtin)
    return languages


def _where(folder: Path, file_name: str) -> str:
    return f"language {folder.name!r} ({folder / file_name})"


def _read_toml(folder: Path, file_name: str) -> dict[str, Any]:
    path = folder / file_name
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(_where(folder, file_name), "the file", "missing") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(_where(folder, file_name), "readable UTF-8 TOML", str(exc)) from exc


def _load(folder: Path, *, builtin: bool) -> Language:
    prompts = _read_toml(folder, PROMPTS_FILE)
    texts = prompts.get("texts")
    if not isinstance(texts, dict):
        raise ConfigError(_where(folder, PROMPTS_FILE), "a [texts] table", "none")
    for name in sorted(PROMPT_NAMES):
        value = texts.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{_where(folder, PROMPTS_FILE)} [texts] {name}",
                              "a non-empty prompt text", "missing" if value is None else value)
    unknown = sorted(texts.keys() - PROMPT_NAMES)
    if unknown:
        raise ConfigError(f"{_where(folder, PROMPTS_FILE)} [texts] {unknown[0]}",
                          "a prompt name (" + ", ".join(sorted(PROMPT_NAMES)) + ")", unknown[0])
    meta = _read_toml(folder, LANGUAGE_FILE)
    for key in ("name", "espeak_voice"):
        if not isinstance(meta.get(key), str) or not meta[key].strip():
            raise ConfigError(f"{_where(folder, LANGUAGE_FILE)} {key}", "a non-empty string",
                              meta.get(key, "missing"))
    for table in ("words", "export"):
        if not isinstance(meta.get(table), dict):
            raise ConfigError(f"{_where(folder, LANGUAGE_FILE)} [{table}]", "a table", "missing")
    # Read-only views: one Language is shared by every caller of the cached registry.
    return Language(code=folder.name, name=meta["name"], espeak_voice=meta["espeak_voice"],
                    texts=MappingProxyType(dict(texts)), words=MappingProxyType(meta["words"]),
                    export=MappingProxyType(meta["export"]),
                    grammar=_grammar(folder, builtin=builtin), directory=folder)


def _grammar(folder: Path, *, builtin: bool) -> Grammar:
    module: ModuleType
    where = _where(folder, GRAMMAR_FILE)
    if builtin and folder.name.isidentifier():
        # The package's own module, so the one the tests and type checker see is the one used.
        module = importlib.import_module(f"{__package__}.{folder.name}.{GRAMMAR_FILE[:-3]}")
    else:
        path = folder / GRAMMAR_FILE
        if not path.is_file():
            raise ConfigError(where, "the file", "missing")
        # A private module name per folder: two extra directories never share a module.
        name = f"_appliance_language_{folder.name.replace('-', '_')}_{abs(hash(str(path)))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(where, "a Python module", str(path))
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # anything a foreign module raises: report, don't crash
            raise ConfigError(where, "a module that imports cleanly",
                              f"{type(exc).__name__}: {exc}") from exc
    for function in GRAMMAR_FUNCTIONS:
        if not callable(getattr(module, function, None)):
            raise ConfigError(f"{where} {function}()", "a function (docs/languages.md)",
                              "missing")
    return cast(Grammar, module)


def _check_like(language: Language, reference: Language) -> None:
    """``language.toml`` tables have exactly the reference language's keys (recursively)."""
    where = _where(language.directory, LANGUAGE_FILE)

    def walk(mine: Mapping[str, Any], theirs: Mapping[str, Any], path: str) -> None:
        for key, value in theirs.items():
            own = mine.get(key)
            if isinstance(value, dict):
                if not isinstance(own, dict):
                    raise ConfigError(f"{where} [{path}.{key}]", "a table", own or "missing")
                walk(own, value, f"{path}.{key}")
            elif not isinstance(own, str) or not own:
                raise ConfigError(f"{where} [{path}] {key}", "a non-empty string",
                                  "missing" if own is None else own)
        extra = sorted(mine.keys() - theirs.keys())
        if extra:
            raise ConfigError(f"{where} [{path}] {extra[0]}",
                              f"only the keys language {reference.code!r} has", extra[0])

    walk(language.words, reference.words, "words")
    walk(language.export, reference.export, "export")
