"""English numbers, durations, key names and times (British usage).

The module implements :class:`appliance.languages.base.Grammar`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from appliance.languages.base import check_key, check_number, digit_value, split_duration

_UNITS: Final[tuple[str, ...]] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)  # fmt: skip
_TENS: Final[tuple[str, ...]] = (
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
)  # fmt: skip
_KEY_NAMES: Final[Mapping[str, str]] = {"*": "star", "#": "hash"}


def number_words(n: int) -> str:
    """Spell a cardinal 0..9999 in English ("two thousand and twenty-five").

    Raises:
        ValueError: ``n`` is out of range.
    """
    check_number(n)
    if n < 20:
        return _UNITS[n]
    if n < 100:
        tens, units = divmod(n, 10)
        return _TENS[tens] + (f"-{_UNITS[units]}" if units else "")
    base, name = (1000, "thousand") if n >= 1000 else (100, "hundred")
    big, rest = divmod(n, base)
    head = f"{_UNITS[big]} {name}"
    if rest == 0:
        return head
    # British usage: "and" before a final part below one hundred.
    joiner = " and " if rest < 100 else " "
    return head + joiner + number_words(rest)


def duration(days: int) -> str:
    """Say a retention period (1825 → "five years", 90 → "three months")."""
    count, unit = split_duration(days)
    return f"{number_words(count)} {unit}{'' if count == 1 else 's'}"


def key_phrase(key: str) -> str:
    """Name a telephone key as said after "press" ("9" → "nine", "#" → "hash").

    Raises:
        ValueError: ``key`` is not one of 0-9, ``*``, ``#``.
    """
    check_key(key)
    return _KEY_NAMES.get(key) or _UNITS[int(key)]


def key_name(key: str) -> str:
    """The same as :func:`key_phrase`: English needs no case ending."""
    return key_phrase(key)


def key_word(key: str) -> str:
    """The same as :func:`key_phrase` ("nine"): already one word."""
    return key_phrase(key)


def with_article(name: str) -> str:
    """A company name takes no article in English: ``name`` unchanged."""
    return name


def digit_word(digit: str) -> str:
    """Return the word a single digit is read as in a call reference ("0" → "zero")."""
    return _UNITS[digit_value(digit)]


def spoken_time(hour: int, minute: int) -> str:
    """A time of day as said in the announcement ("14 05")."""
    return f"{hour} {minute:02d}"
