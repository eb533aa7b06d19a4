"""Prompt texts per language with the configured overrides, and the notice filled in.

Where the texts live: each language's folder, ``appliance/languages/<lang>/prompts.toml``
(package data, so the installed daemon and the repository read the same file; a
``speech.languages_dir`` may add languages, docs/languages.md). A shop changes a text through
the configuration (``[speech.texts]``, same names), passed here as ``overrides``; editing the
language files is for translators.

Every language defines exactly :data:`PROMPT_NAMES`, as ``str.format`` templates; the
inflection that fills the notice (numbers, durations, key names) is the language's
``grammar.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from appliance.errors import ConfigError
from appliance.languages.base import TELEPHONE_KEYS
from appliance.languages.registry import (
    PROMPT_NAMES,
    Registry,
    builtin,
    for_config,
)
from appliance.reference import spoken_groups

if TYPE_CHECKING:
    from appliance.config import Config

_LOGGER = logging.getLogger(__name__)


#: Keys a caller can press for the opt-out (DTMF 0-9, *, #).
OPTOUT_KEYS: Final[frozenset[str]] = TELEPHONE_KEYS

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
    "optout_key_word", "details_key_word",
)  # fmt: skip


def load_prompt_texts(lang: str, overrides: Mapping[str, str] | None = None,
                      languages: Registry | None = None) -> dict[str, str]:
    """Return the prompt templates of ``lang`` with configured overrides applied.

    Args:
        lang: language code, one of ``languages``.
        overrides: texts from the configuration (``speech.texts``), by prompt name.
        languages: where ``lang`` is looked up (``languages.for_config(config)``); None =
            the built-in languages.

    Returns:
        A new dict with exactly the names in :data:`PROMPT_NAMES`.

    Raises:
        ConfigError: ``speech.language`` is unknown, an override name is unknown
            (key ``speech.texts.<name>``) or an override is not a non-empty string.
    """
    result = dict((languages or builtin()).get(lang, key="speech.language").texts)
    for name, text in (overrides or {}).items():
        key = f"speech.texts.{name}"
        if name not in PROMPT_NAMES:
            raise ConfigError(key, "a prompt name (" + ", ".join(sorted(PROMPT_NAMES)) + ")", name)
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(key, "a non-empty string", text)
        _LOGGER.debug("Prompt %s overridden by configuration", name)
        result[name] = text
    return result


def digit_word(lang: str, digit: str, languages: Registry | None = None) -> str:
    """Return the spoken word for one reference digit in ``lang``."""
    return (languages or builtin()).get(lang, key="speech.language").grammar.digit_word(digit)


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
    languages: Registry | None = None,
) -> dict[str, str]:
    """Fill the three notice templates (:data:`NOTICE_LAYERS`) from the configuration.

    The same values drive the behaviour (purge after ``retention_days``, opt-out on
    ``optout_key``, the second layer on ``details_key``), so the spoken notice cannot
    contradict the box.

    Args:
        texts: prompt templates from :func:`load_prompt_texts`.
        lang: language of ``texts`` (its ``grammar.py`` inflects the values).
        company: controller's name as it should be spoken.
        purpose: purpose noun phrase in ``lang`` ("panaszkezelés").
        legal_basis: the legal basis as spoken ("jogos érdek").
        full_notice_at: where the written notice is ("üzletünkben").
        retention_days: retention period in days.
        optout_key: DTMF key that stops the recording.
        details_key: DTMF key that plays the second layer.
        languages: where ``lang`` is looked up; None = the built-in languages.

    Returns:
        ``{"notice": …, "notice_details": …, "notice_short": …}``, ready to be rendered.

    Raises:
        ConfigError: a value cannot be spoken (bad key, retention, or an unknown placeholder
            in an overridden template); ``key`` names the offending setting.
    """
    for name, key in (("optout_key", optout_key), ("details_key", details_key)):
        if key not in OPTOUT_KEYS:
            raise ConfigError(name, "one of 0-9, *, #", key)
    grammar = (languages or builtin()).get(lang, key="speech.language").grammar
    keys = (optout_key, details_key)
    try:
        retention = grammar.duration(retention_days)
        names = {k: grammar.key_name(k) for k in keys}
        phrases = {k: grammar.key_phrase(k) for k in keys}
        words = {k: grammar.key_word(k) for k in keys}
        company_with_article = grammar.with_article(company)
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
        "optout_key_word": words[optout_key],
        "details_key_word": words[details_key],
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
        details_key=config.call.details_key, languages=for_config(config))


def last_call_sentence(config: Config, last: Mapping[str, Any] | None) -> str:
    """The front panel's "last call" sentence in ``device.language`` (templates ``last_call``
    and ``no_calls_yet``): the reference in its spoken groups, the caller's number digit by
    digit (or the language's word for unknown), the time of day as the language says it.

    Args:
        config: the configuration (language, overrides, ``speech.languages_dir``).
        last: the newest call row (``reference``, ``caller_number``, ``ring_at``), or None.
    """
    languages = for_config(config)
    language = languages.get(config.device.language)
    texts = load_prompt_texts(language.code, config.speech.texts, languages)
    if last is None:
        return texts["no_calls_yet"]
    reference = ", ".join(" ".join(group) for group in spoken_groups(last["reference"]))
    number = last["caller_number"]
    caller = " ".join(number.lstrip("+")) if number else language.words["unknown_caller"]
    when = time.localtime(last["ring_at"] or 0)
    spoken_time = language.grammar.spoken_time(when.tm_hour, when.tm_min)
    return texts["last_call"].format(reference=reference, caller=caller, time=spoken_time)


def health_sentence(config: Config, faults: Sequence[str]) -> str:
    """The front panel's health sentence in ``device.language`` (``health_ok``, or
    ``health_fault`` with ``faults`` joined)."""
    texts = load_prompt_texts(config.device.language, config.speech.texts, for_config(config))
    if not faults:
        return texts["health_ok"]
    return texts["health_fault"].format(fault="; ".join(faults))
