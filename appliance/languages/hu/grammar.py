"""Hungarian numbers, durations, key names, articles and times, inflected by code.

Not hand-written per value (docs/design.md §6: "öt évig", "kilencven napig", "kilences gombot").
``num2words`` would cover the cardinals but is not a project dependency and does not produce
the attributive "két" or the case-suffixed forms, so the small tables below are written by
hand. The module implements :class:`appliance.languages.base.Grammar`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from appliance.languages.base import check_key, check_number, digit_value, split_duration

_UNITS: Final[tuple[str, ...]] = (
    "nulla", "egy", "kettő", "három", "négy", "öt", "hat", "hét", "nyolc", "kilenc",
)  # fmt: skip
#: Round tens standing alone ("húsz") and as a prefix before a unit ("huszon-egy").
_TENS_ALONE: Final[tuple[str, ...]] = (
    "", "tíz", "húsz", "harminc", "negyven", "ötven", "hatvan", "hetven", "nyolcvan", "kilencven",
)  # fmt: skip
_TENS_PREFIX: Final[tuple[str, ...]] = (
    "", "tizen", "huszon", "harminc", "negyven", "ötven", "hatvan", "hetven", "nyolcvan",
    "kilencven",
)  # fmt: skip
_VOWELS: Final[frozenset[str]] = frozenset("aáeéiíoóöőuúüűAÁEÉIÍOÓÖŐUÚÜŰ")
#: Key names as adjectives ("kilences gomb"): vowel harmony is irregular enough
#: (hármas, hatos, hetes, ötös) that a table is clearer than rules.
_KEY_ADJECTIVES: Final[Mapping[str, str]] = {
    "0": "nullás", "1": "egyes", "2": "kettes", "3": "hármas", "4": "négyes",
    "5": "ötös", "6": "hatos", "7": "hetes", "8": "nyolcas", "9": "kilences",
    "*": "csillag", "#": "kettőskereszt",
}  # fmt: skip
_DURATION_NOUNS: Final[Mapping[str, str]] = {"year": "évig", "month": "hónapig", "day": "napig"}


def _below_100(n: int) -> str:
    tens, units = divmod(n, 10)
    if tens == 0:
        return _UNITS[units]
    if units == 0:
        return _TENS_ALONE[tens]
    return _TENS_PREFIX[tens] + _UNITS[units]


def _below_1000(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    head = ""
    if hundreds:
        # "száz", not "egyszáz"; "kétszáz", not "kettőszáz" (két before a multiplier).
        head = ("" if hundreds == 1 else _attr(_UNITS[hundreds])) + "száz"
    if rest == 0:
        return head or _UNITS[0]
    return head + _below_100(rest)


def _attr(word: str) -> str:
    # "kettő" is the standalone form; in compounds and before a noun it is "két".
    return word[: -len("kettő")] + "két" if word.endswith("kettő") else word


def number_words(n: int, *, attributive: bool = False) -> str:
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
    check_number(n)
    thousands, rest = divmod(n, 1000)
    if thousands == 0:
        words = _below_1000(rest)
    else:
        head = ("" if thousands == 1 else _attr(_UNITS[thousands])) + "ezer"
        if rest == 0:
            words = head
        else:
            # Hungarian orthography (AkH.): above 2000, groups of three digits are hyphenated.
            joiner = "-" if n > 2000 else ""
            words = head + joiner + _below_1000(rest)
    return _attr(words) if attributive else words


def article(word: str) -> str:
    """Return the Hungarian definite article for ``word``: "az" before a vowel, else "a"."""
    return "az" if word[:1] in _VOWELS else "a"


def with_article(name: str) -> str:
    """``name`` after its definite article ("a Kovács Bt.", "az Alfa Kft.")."""
    return f"{article(name)} {name}"


def duration(days: int) -> str:
    """Say a retention period with the terminative "-ig" ("öt évig").

    1825 → "öt évig", 90 → "három hónapig", 45 → "negyvenöt napig"
    (:func:`~appliance.languages.base.split_duration` picks the unit).

    Raises:
        ValueError: ``days`` < 1 or the count is beyond :func:`number_words`.
    """
    count, unit = split_duration(days)
    return f"{number_words(count, attributive=True)} {_DURATION_NOUNS[unit]}"


def key_accusative(key: str) -> str:
    """Name a telephone key in the accusative ("9" → "kilences gombot").

    Raises:
        ValueError: ``key`` is not one of 0-9, ``*``, ``#``.
    """
    check_key(key)
    return f"{_KEY_ADJECTIVES[key]} gombot"


def key_phrase(key: str) -> str:
    """The accusative with its article, as after "nyomja meg" ("9" → "a kilences gombot").

    Raises:
        ValueError: ``key`` is not one of 0-9, ``*``, ``#``.
    """
    return with_article(key_accusative(key))


def key_name(key: str) -> str:
    """Name a telephone key in the nominative ("9" → "kilences gomb", "*" → "csillag gomb").

    Raises:
        ValueError: ``key`` is not one of 0-9, ``*``, ``#``.
    """
    check_key(key)
    return f"{_KEY_ADJECTIVES[key]} gomb"


def key_word(key: str) -> str:
    """Name a telephone key in one word, as a menu says it ("9" → "kilences").

    Raises:
        ValueError: ``key`` is not one of 0-9, ``*``, ``#``.
    """
    check_key(key)
    return _KEY_ADJECTIVES[key]


def digit_word(digit: str) -> str:
    """Return the word a single digit is read as in a call reference ("2" → "kettő")."""
    return _UNITS[digit_value(digit)]


def spoken_time(hour: int, minute: int) -> str:
    """A time of day as said in the announcement ("14 óra 5 perc")."""
    return f"{hour} óra {minute} perc"
