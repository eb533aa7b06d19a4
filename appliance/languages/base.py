"""What a language's ``grammar.py`` provides (:class:`Grammar`) and helpers it may share.

A language folder's ``grammar.py`` is a module whose top-level functions implement
:class:`Grammar`: number words, the retention period, key names, the article before a name and
the time of day, each as spoken in that language. Everything else a language says is data
(``prompts.toml``, ``language.toml``). docs/languages.md describes the folder.
"""

from __future__ import annotations

from typing import Final, Protocol

#: The telephone keys a prompt may name (DTMF 0-9, *, #).
TELEPHONE_KEYS: Final[frozenset[str]] = frozenset("0123456789*#")
#: The largest number a grammar must be able to say (a retention of 9999 days).
MAX_NUMBER: Final[int] = 9999
_DAYS_PER_YEAR: Final[int] = 365
_DAYS_PER_MONTH: Final[int] = 30


class Grammar(Protocol):
    """The spoken forms the prompts need that a template alone cannot give.

    Every function raises ValueError for a value it cannot say (never a wrong word).
    """

    def number_words(self, n: int) -> str:
        """Spell a cardinal 0..:data:`MAX_NUMBER` as it stands alone."""
        ...

    def digit_word(self, digit: str) -> str:
        """The word one digit of a call reference is read as ("4")."""
        ...

    def duration(self, days: int) -> str:
        """The retention period as it fits the notice templates' ``{retention}``."""
        ...

    def key_name(self, key: str) -> str:
        """A telephone key as ``{optout_key_name}`` / ``{details_key_name}`` say it."""
        ...

    def key_phrase(self, key: str) -> str:
        """A telephone key as ``{optout_key_phrase}`` / ``{details_key_phrase}`` say it."""
        ...

    def key_word(self, key: str) -> str:
        """A telephone key in one word, as ``{optout_key_word}`` / ``{details_key_word}`` say
        it: the returning caller's short form, who heard the keys named in full before."""
        ...

    def with_article(self, name: str) -> str:
        """``name`` with the article it takes (``{company_with_article}``)."""
        ...

    def spoken_time(self, hour: int, minute: int) -> str:
        """A time of day as the ``last_call`` announcement says it."""
        ...


#: The functions a ``grammar.py`` must define (checked when the language is loaded).
GRAMMAR_FUNCTIONS: Final[tuple[str, ...]] = (
    "number_words", "digit_word", "duration", "key_name", "key_phrase", "key_word",
    "with_article", "spoken_time",
)  # fmt: skip


def split_duration(days: int) -> tuple[int, str]:
    """Split a retention period into the unit it is said in: ``(count, "year"|"month"|"day")``.

    Whole years (365·k days) are said in years, else whole months (30·k) in months, else in
    days: 1825 → (5, "year"), 90 → (3, "month"), 45 → (45, "day").

    Raises:
        ValueError: ``days`` < 1.
    """
    if days < 1:
        raise ValueError(f"a retention period needs at least one day, got {days}")
    if days % _DAYS_PER_YEAR == 0:
        return days // _DAYS_PER_YEAR, "year"
    if days % _DAYS_PER_MONTH == 0:
        return days // _DAYS_PER_MONTH, "month"
    return days, "day"


def digit_value(digit: str) -> int:
    """The value of one decimal digit character.

    Raises:
        ValueError: not a single digit.
    """
    if len(digit) != 1 or not digit.isdigit():
        raise ValueError(f"not a single digit: {digit!r}")
    return int(digit)


def check_number(n: int) -> None:
    """Raise ValueError unless 0 ≤ ``n`` ≤ :data:`MAX_NUMBER`."""
    if not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"number words cover 0..{MAX_NUMBER}, got {n}")


def check_key(key: str) -> None:
    """Raise ValueError unless ``key`` is one of :data:`TELEPHONE_KEYS`."""
    if key not in TELEPHONE_KEYS:
        raise ValueError(f"not a telephone key: {key!r}")
