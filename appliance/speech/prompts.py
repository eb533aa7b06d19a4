"""Prompt texts per language, the notice filled from configuration, and number inflection.

Where the texts live: the single source is package data, ``appliance/speech/prompts/
prompts.<lang>.toml`` (shipped in the wheel via ``package-data = **/*.toml``), so the installed
daemon and the repository read the same file. ``sounds/README.md`` points there. A shop changes a
text through the configuration (``[speech.texts]``, same names), passed here as ``overrides``;
editing the packaged files is for translators.

Each TOML file holds one table, ``[texts]``, of named ``str.format`` templates; every language
must define exactly :data:`PROMPT_NAMES`.

Hungarian numbers, durations and key names are inflected by code, not hand-written per value
(docs/design.md §6: "öt évig", "kilencven napig", "kilences gombot"). ``num2words`` would cover the
cardinals but is not a project dependency and does not produce the attributive "két" or the
case-suffixed forms, so the small tables below are written by hand.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Mapping
from importlib import resources
from typing import TYPE_CHECKING, Final

from appliance.config import LANGUAGES
from appliance.errors import ConfigError

if TYPE_CHECKING:
    from appliance.config import Config

_LOGGER = logging.getLogger(__name__)

DEFAULT_LANG: Final[str] = "hu"

#: Every prompt name a language file must define (and the only names overrides may use).
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

#: Keys a caller can press for the opt-out (DTMF 0-9, *, #).
OPTOUT_KEYS: Final[frozenset[str]] = frozenset("0123456789*#")

#: The layered notice (docs/speech.md "The layered notice"): the first layer every caller
#: hears before recording, the second layer (the full Art. 13 text) on the details key, and
#: the returning caller's short form. Each is a template filled from the configuration.
NOTICE_FIRST: Final[str] = "notice"
NOTICE_DETAILS: Final[str] = "notice_details"
NOTICE_SHORT: Final[str] = "notice_short"
NOTICE_LAYERS: Final[tuple[str, ...]] = (NOTICE_FIRST, NOTICE_DETAILS, NOTICE_SHORT)
#: The placeholders a notice template may use.
NOTICE_PLACEHOLDERS: Final[tuple[str, ...]] = (
    "company", "company_with_article", "purpose", "legal_basis", "retention", "full_notice_at",
    "optout_key_phrase", "optout_key_name", "details_key_phrase", "details_key_name",
)  # fmt: skip

#: Package data directory (no ``__init__``; the name is shared with this module on purpose,
#: as the brief places the texts in ``appliance/speech/prompts/``).
_PROMPTS_ANCHOR: Final[str] = "appliance.speech"
_PROMPTS_DIR: Final[str] = "prompts"
_DAYS_PER_YEAR: Final[int] = 365
_DAYS_PER_MONTH: Final[int] = 30
_MAX_NUMBER: Final[int] = 9999


def prompt_file_name(lang: str) -> str:
    """Return the packaged file name for ``lang`` (``prompts.hu.toml``)."""
    return f"prompts.{lang}.toml"


def load_prompt_texts(lang: str, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Load the packaged prompt templates of ``lang`` and apply configured overrides.

    Args:
        lang: language code, one of :data:`LANGUAGES`.
        overrides: texts from the configuration (``speech.texts``), by prompt name.

    Returns:
        A new dict with exactly the names in :data:`PROMPT_NAMES`.

    Raises:
        ConfigError: ``speech.language`` is unknown, an override name is unknown
            (key ``speech.texts.<name>``) or an override is not a non-empty string.
    """
    if lang not in LANGUAGES:
        raise ConfigError("speech.language", "one of " + ", ".join(LANGUAGES), lang)
    source = resources.files(_PROMPTS_ANCHOR).joinpath(_PROMPTS_DIR, prompt_file_name(lang))
    data = tomllib.loads(source.read_text(encoding="utf-8"))
    texts = data.get("texts", {})
    missing = PROMPT_NAMES - texts.keys()
    extra = texts.keys() - PROMPT_NAMES
    if missing or extra:
        # A packaging bug, not a user error: fail loudly with what is wrong.
        raise ConfigError(
            f"{prompt_file_name(lang)}[texts]",
            "exactly " + ", ".join(sorted(PROMPT_NAMES)),
            {"missing": sorted(missing), "unknown": sorted(extra)},
        )
    result = {name: str(text) for name, text in texts.items()}
    for name, text in (overrides or {}).items():
        key = f"speech.texts.{name}"
        if name not in PROMPT_NAMES:
            raise ConfigError(key, "a prompt name (" + ", ".join(sorted(PROMPT_NAMES)) + ")", name)
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(key, "a non-empty string", text)
        _LOGGER.debug("Prompt %s overridden by configuration", name)
        result[name] = text
    return result


# --- Hungarian -------------------------------------------------------------------------

_HU_UNITS: Final[tuple[str, ...]] = (
    "nulla", "egy", "kettő", "három", "négy", "öt", "hat", "hét", "nyolc", "kilenc",
)  # fmt: skip
#: Round tens standing alone ("húsz") and as a prefix before a unit ("huszon-egy").
_HU_TENS_ALONE: Final[tuple[str, ...]] = (
    "", "tíz", "húsz", "harminc", "negyven", "ötven", "hatvan", "hetven", "nyolcvan", "kilencven",
)  # fmt: skip
_HU_TENS_PREFIX: Final[tuple[str, ...]] = (
    "", "tizen", "huszon", "harminc", "negyven", "ötven", "hatvan", "hetven", "nyolcvan",
    "kilencven",
)  # fmt: skip
_HU_VOWELS: Final[frozenset[str]] = frozenset("aáeéiíoóöőuúüűAÁEÉIÍOÓÖŐUÚÜŰ")
#: Key names as adjectives ("kilences gomb"): vowel harmony is irregular enough
#: (hármas, hatos, hetes, ötös) that a table is clearer than rules.
_HU_KEY_ADJECTIVES: Final[Mapping[str, str]] = {
    "0": "nullás", "1": "egyes", "2": "kettes", "3": "hármas", "4": "négyes",
    "5": "ötös", "6": "hatos", "7": "hetes", "8": "nyolcas", "9": "kilences",
    "*": "csillag", "#": "kettőskereszt",
}  # fmt: skip


def _hu_below_100(n: int) -> str:
    tens, units = divmod(n, 10)
    if tens == 0:
        return _HU_UNITS[units]
    if units == 0:
        return _HU_TENS_ALONE[tens]
    return _HU_TENS_PREFIX[tens] + _HU_UNITS[units]


def _hu_below_1000(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    head = ""
    if hundreds:
        # "száz", not "egyszáz"; "kétszáz", not "kettőszáz" (két before a multiplier).
        head = ("" if hundreds == 1 else _hu_attr(_HU_UNITS[hundreds])) + "száz"
    if rest == 0:
        return head or _HU_UNITS[0]
    return head + _hu_below_100(rest)


def _hu_attr(word: str) -> str:
    # "kettő" is the standalone form; in compounds and before a noun it is "két".
    return word[: -len("kettő")] + "két" if word.endswith("kettő") else word


def hu_number_words(n: int, *, attributive: bool = False) -> str:
    """Spell a cardinal 0..9999 in Hungarian, following the AkH. spelling rules.

    "ezer" and "száz" take no "egy"; 2 is "két" before "száz"/"ezer" and "kettő" at the end;
    above 2000 the thousands are joined to the rest with a hyphen ("kétezer-huszonöt"),
    up to 2000 the number is written as one word ("ezerkilencszázkilencvenkilenc").

    Args:
        n: the number, 0 ≤ n ≤ 9999.
        attributive: the form used before a noun ("két év", "huszonkét nap").

    Raises:
        ValueError: ``n`` is out of range.
    """
    if not 0 <= n <= _MAX_NUMBER:
        raise ValueError(f"hu_number_words supports 0..{_MAX_NUMBER}, got {n}")
    thousands, rest = divmod(n, 1000)
    if thousands == 0:
        words = _hu_below_1000(rest)
    else:
        head = ("" if thousands == 1 else _hu_attr(_HU_UNITS[thousands])) + "ezer"
        if rest == 0:
            words = head
        else:
            # Hungarian orthography (AkH.): above 2000, groups of three digits are hyphenated.
            joiner = "-" if n > 2000 else ""
            words = head + joiner + _hu_below_1000(rest)
    return _hu_attr(words) if attributive else words


def hu_article(word: str) -> str:
    """Return the Hungarian definite article for ``word``: "az" before a vowel, else "a"."""
    return "az" if word[:1] in _HU_VOWELS else "a"


def hu_duration(days: int) -> str:
    """Say a retention period in Hungarian with the terminative "-ig" ("öt évig").

    Whole years (365·k days) are said in years, else whole months (30·k) in months,
    else in days: 1825 → "öt évig", 90 → "három hónapig", 45 → "negyvenöt napig".

    Raises:
        ValueError: ``days`` < 1 or the count is beyond :func:`hu_number_words`.
    """
    count, unit = _split_duration(days)
    noun = {"year": "évig", "month": "hónapig", "day": "napig"}[unit]
    return f"{hu_number_words(count, attributive=True)} {noun}"


def hu_key_phrase(key: str) -> str:
    """Name a telephone key in the accusative ("9" → "kilences gombot").

    Raises:
        ValueError: ``key`` is not one of 0-9, ``*``, ``#``.
    """
    if key not in _HU_KEY_ADJECTIVES:
        raise ValueError(f"not a telephone key: {key!r}")
    return f"{_HU_KEY_ADJECTIVES[key]} gombot"


def hu_key_name(key: str) -> str:
    """Name a telephone key in the nominative ("9" → "kilences gomb", "*" → "csillag gomb").

    Raises:
        ValueError: ``key`` is not one of 0-9, ``*``, ``#``.
    """
    if key not in _HU_KEY_ADJECTIVES:
        raise ValueError(f"not a telephone key: {key!r}")
    return f"{_HU_KEY_ADJECTIVES[key]} gomb"


def hu_digit_word(digit: str) -> str:
    """Return the word a single digit is read as in a call reference ("2" → "kettő")."""
    return _HU_UNITS[_digit_value(digit)]


# --- English ---------------------------------------------------------------------------

_EN_UNITS: Final[tuple[str, ...]] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)  # fmt: skip
_EN_TENS: Final[tuple[str, ...]] = (
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
)  # fmt: skip
_EN_KEY_NAMES: Final[Mapping[str, str]] = {"*": "star", "#": "hash"}


def en_number_words(n: int) -> str:
    """Spell a cardinal 0..9999 in English ("two thousand and twenty-five").

    Raises:
        ValueError: ``n`` is out of range.
    """
    if not 0 <= n <= _MAX_NUMBER:
        raise ValueError(f"en_number_words supports 0..{_MAX_NUMBER}, got {n}")
    if n < 20:
        return _EN_UNITS[n]
    if n < 100:
        tens, units = divmod(n, 10)
        return _EN_TENS[tens] + (f"-{_EN_UNITS[units]}" if units else "")
    base, name = (1000, "thousand") if n >= 1000 else (100, "hundred")
    big, rest = divmod(n, base)
    head = f"{_EN_UNITS[big]} {name}"
    if rest == 0:
        return head
    # British usage: "and" before a final part below one hundred.
    joiner = " and " if rest < 100 else " "
    return head + joiner + en_number_words(rest)


def en_duration(days: int) -> str:
    """Say a retention period in English (1825 → "five years", 90 → "three months")."""
    count, unit = _split_duration(days)
    return f"{en_number_words(count)} {unit}{'' if count == 1 else 's'}"


def en_key_phrase(key: str) -> str:
    """Name a telephone key as said after "press" ("9" → "nine", "#" → "hash").

    Raises:
        ValueError: ``key`` is not one of 0-9, ``*``, ``#``.
    """
    if key not in OPTOUT_KEYS:
        raise ValueError(f"not a telephone key: {key!r}")
    return _EN_KEY_NAMES.get(key) or _EN_UNITS[int(key)]


def en_digit_word(digit: str) -> str:
    """Return the word a single digit is read as in a call reference ("0" → "zero")."""
    return _EN_UNITS[_digit_value(digit)]


# --- shared ----------------------------------------------------------------------------


def digit_word(lang: str, digit: str) -> str:
    """Return the spoken word for one reference digit in ``lang``."""
    return hu_digit_word(digit) if lang == "hu" else en_digit_word(digit)


def _digit_value(digit: str) -> int:
    if len(digit) != 1 or not digit.isdigit():
        raise ValueError(f"not a single digit: {digit!r}")
    return int(digit)


def _split_duration(days: int) -> tuple[int, str]:
    if days < 1:
        raise ValueError(f"a retention period needs at least one day, got {days}")
    if days % _DAYS_PER_YEAR == 0:
        return days // _DAYS_PER_YEAR, "year"
    if days % _DAYS_PER_MONTH == 0:
        return days // _DAYS_PER_MONTH, "month"
    return days, "day"


def render_notice_texts(
    texts: Mapping[str, str],
    *,
    lang: str,
    company: str,
    purpose: str,
    legal_basis: str,
    full_notice_at: str,
    retention_days: int,
    optout_key: str,
    details_key: str,
) -> dict[str, str]:
    """Fill the three notice templates (:data:`NOTICE_LAYERS`) from the configuration.

    The same values drive the behaviour (purge after ``retention_days``, opt-out on
    ``optout_key``, the second layer on ``details_key``), so the spoken notice cannot
    contradict the box.

    Args:
        texts: prompt templates from :func:`load_prompt_texts`.
        lang: language of ``texts`` (selects the inflection).
        company: controller's name as it should be spoken.
        purpose: purpose noun phrase in ``lang`` ("panaszkezelés").
        legal_basis: the legal basis as spoken ("jogos érdek").
        full_notice_at: where the written notice is ("üzletünkben").
        retention_days: retention period in days.
        optout_key: DTMF key that stops the recording.
        details_key: DTMF key that plays the second layer.

    Returns:
        ``{"notice": …, "notice_details": …, "notice_short": …}``, ready to be rendered.

    Raises:
        ConfigError: a value cannot be spoken (bad key, retention, or an unknown placeholder
            in an overridden template); ``key`` names the offending setting.
    """
    for name, key in (("optout_key", optout_key), ("details_key", details_key)):
        if key not in OPTOUT_KEYS:
            raise ConfigError(name, "one of 0-9, *, #", key)
    try:
        if lang == "hu":
            retention = hu_duration(retention_days)
            names = {k: hu_key_name(k) for k in (optout_key, details_key)}
            phrases = {k: f"{hu_article(p)} {p}" for k in (optout_key, details_key)
                       for p in (hu_key_phrase(k),)}
            company_with_article = f"{hu_article(company)} {company}"
        else:
            retention = en_duration(retention_days)
            names = phrases = {k: en_key_phrase(k) for k in (optout_key, details_key)}
            company_with_article = company
    except ValueError as exc:
        raise ConfigError(
            "retention_days", "1..9999 days, months or years", retention_days
        ) from exc
    values = {
        "company": company,
        "company_with_article": company_with_article,
        "purpose": purpose,
        "legal_basis": legal_basis,
        "retention": retention,
        "full_notice_at": full_notice_at,
        "optout_key_phrase": phrases[optout_key],
        "optout_key_name": names[optout_key],
        "details_key_phrase": phrases[details_key],
        "details_key_name": names[details_key],
    }
    out: dict[str, str] = {}
    for layer in NOTICE_LAYERS:
        try:
            out[layer] = texts[layer].format(**values)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"speech.texts.{layer}",
                "placeholders among " + ", ".join("{" + p + "}" for p in NOTICE_PLACEHOLDERS),
                str(exc),
            ) from exc
    return out


def notice_texts_for(config: Config, texts: Mapping[str, str], *, lang: str,
                     company: str) -> dict[str, str]:
    """:func:`render_notice_texts` with the values of ``config`` (the daemon's and the CLI's
    one way to fill the notice, so both render the same text)."""
    return render_notice_texts(
        texts, lang=lang, company=company, purpose=config.notice.purpose,
        legal_basis=config.notice.legal_basis, full_notice_at=config.notice.full_notice_at,
        retention_days=config.retention.recordings_days, optout_key=config.call.optout_key,
        details_key=config.call.details_key)
