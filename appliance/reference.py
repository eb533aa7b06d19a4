"""Call references: 8 digits a customer can read back over the phone.

The one definition of a reference's shape (:data:`REFERENCE_DIGITS`, spoken and printed in
:data:`REFERENCE_GROUPS`), of how it is issued, formatted and parsed: the call, the prompt
library, the store, the owner's page, the bench and the CLI all import it from here. It sits at
the top of the package, beside ``text.py``, because every room may import it and it imports
nothing but ``errors``.

docs/design.md §7. A reference is a 7-digit value from a keyed permutation of the per-device call
counter, followed by one Damm check digit:

* **Unique by construction** — the permutation is a bijection on ``[0, COUNTER_SPACE)``, so
  distinct counters give distinct references (until the counter space of ten million calls is
  used up; callers must not pass a counter ≥ ``COUNTER_SPACE``).
* **Not guessable** from the previous one without the device key (a keyed Feistel network whose
  round function is HMAC-SHA256).
* **Typo-proof** — the Damm check digit catches every single-digit substitution and every
  adjacent transposition, so a misread reference is rejected, never resolved to another call.
  :func:`suggest_references` lists the valid references one such typo away.

Everything here is a pure function of its arguments: no I/O, no module-level mutable state.
:class:`ReferenceCipher` is the same permutation bound to one key with a memo of round-function
values, for callers that issue or check many references with one key.

Hand-written on purpose: the Damm table is 100 integers (python-stdnum has it, but is not a
dependency and would bring a large package for one table), and NIST FF1/FF3-1 format-preserving
encryption would need an AES library (also not a dependency) for what the brief fixes as an
HMAC-SHA256 Feistel network: a dozen lines over 3163² values, easy to audit.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import unicodedata
from collections.abc import Callable
from typing import Final

from appliance.errors import ReferenceFormatError

__all__ = [
    "COUNTER_SPACE",
    "KEY_BYTES",
    "REFERENCE_DIGITS",
    "REFERENCE_GROUPS",
    "REFERENCE_SEPARATOR",
    "ReferenceCipher",
    "damm_check_digit",
    "damm_valid",
    "display_reference",
    "format_reference",
    "is_canonical",
    "known_candidates",
    "make_reference",
    "new_key",
    "parse_reference",
    "permute",
    "spoken_groups",
    "suggest_references",
    "unpermute",
]

#: Digits in a reference: 7 permuted counter digits + 1 Damm check digit.
REFERENCE_DIGITS: Final = 8
#: Number of distinct counters (and references) a device can issue: 10^7.
COUNTER_SPACE: Final = 10_000_000
#: Length of a key made by :func:`new_key`, in bytes (the HMAC-SHA256 block-friendly 256 bits).
KEY_BYTES: Final = 32

#: Digits of the permuted counter (the reference minus its check digit).
_VALUE_DIGITS: Final = REFERENCE_DIGITS - 1
#: Spoken/printed grouping, 3-3-2 (docs/design.md §7: "Spoken in groups (3-3-2), digit by digit").
REFERENCE_GROUPS: Final[tuple[int, ...]] = (3, 3, 2)
#: What :func:`format_reference` puts between the groups: ``427-193-53``.
REFERENCE_SEPARATOR: Final = "-"

# Damm, H. M. (2004): "Total anti-symmetrische Quasigruppen", dissertation, Philipps-Universität
# Marburg — the weakly totally anti-symmetric quasigroup of order 10 with a zero diagonal, as
# printed there and reproduced in every implementation (e.g. python-stdnum ``stdnum/damm.py``).
# Row = interim digit, column = next input digit. The zero diagonal means a codeword is valid
# exactly when the interim digit after its last digit is 0.
_DAMM_TABLE: Final[tuple[tuple[int, ...], ...]] = (
    (0, 3, 1, 7, 5, 9, 8, 6, 4, 2),
    (7, 0, 9, 2, 1, 5, 4, 8, 6, 3),
    (4, 2, 0, 6, 8, 7, 1, 3, 5, 9),
    (1, 7, 5, 0, 9, 8, 3, 4, 2, 6),
    (6, 1, 2, 3, 0, 4, 5, 9, 7, 8),
    (3, 6, 7, 4, 2, 0, 9, 5, 8, 1),
    (5, 8, 6, 9, 7, 2, 0, 1, 3, 4),
    (8, 9, 4, 5, 3, 6, 2, 0, 1, 7),
    (9, 4, 3, 8, 6, 1, 7, 2, 0, 5),
    (2, 5, 8, 1, 4, 3, 6, 7, 9, 0),
)

# Feistel parameters. Each half lives in Z_3163; 3163 = ceil(sqrt(10^7)) is the smallest balanced
# half that covers the counter space (3163² = 10_004_569). With halves of 10^4 the domain would be
# 10^8 and cycle-walking would need ~10 encryptions per reference; here a walk step is needed for
# only 0.05 % of inputs.
_HALF_DOMAIN: Final = math.isqrt(COUNTER_SPACE - 1) + 1
_FEISTEL_DOMAIN: Final = _HALF_DOMAIN * _HALF_DOMAIN
# Luby–Rackoff: 4 rounds already give a strong pseudo-random permutation for random round
# functions; the brief asks for ≥ 8, and small domains are where extra rounds matter most
# (Patarin's attacks need fewer queries when the halves are small), so 10.
_ROUNDS: Final = 10
# Bytes of the HMAC output reduced modulo the half-domain: 2^64 / 3163 leaves a bias < 2^-52.
_ROUND_DIGEST_BYTES: Final = 8

# Characters that separate digit groups in human spellings besides whitespace and Unicode dash
# punctuation (category Pd): "427.193.58", "427/193/58", "427_193_58".
_SEPARATORS: Final = frozenset("./_,'")
# A leading label a human might type or paste in front of the digits: "#", "№", "ref", "ref.",
# "Ref:", "reference", "no.", "nr", "call", "id", and the Hungarian "hivatkozás(i szám)",
# "azonosító", "szám", "sz." (the appliance serves Hungarian shops, docs/design.md §6). Matched
# case-insensitively after NFKC normalisation; repeated so "Ref. no.: #" works.
_LABEL_RE: Final = re.compile(
    r"""^(?:
        (?:reference|referencia|ref|call|number|no|nr|num|id
          |hivatkozási|hivatkozás|azonosító|szám|sz)
        (?![^\W\d_])          # a whole word: "no" must not eat the start of "nope"
        \.?
      | [#№:]
      | \s+
    )+""",
    re.IGNORECASE | re.VERBOSE,
)
# Punctuation a sentence may leave after the digits: "It is 427-193-58."
_TRAILING_PUNCTUATION: Final = ".,;:!?)]"


# ---------------------------------------------------------------------------------------------
# Damm check digit
# ---------------------------------------------------------------------------------------------


def _is_ascii_digits(digits: str) -> bool:
    """Whether ``digits`` is non-empty and made of ASCII ``0``–``9`` only.

    ``str.isdigit`` alone would accept superscripts and other scripts' digits.
    """
    return bool(digits) and digits.isascii() and digits.isdigit()


def _damm_interim(digits: str) -> int:
    """Run the Damm quasigroup over ``digits`` (ASCII digits, already checked)."""
    interim = 0
    for char in digits:
        interim = _DAMM_TABLE[interim][ord(char) - 48]
    return interim


def damm_check_digit(digits: str) -> str:
    """Return the Damm check digit to append to ``digits``.

    Args:
        digits: one or more ASCII digits.

    Returns:
        A single ASCII digit ``c`` such that ``damm_valid(digits + c)``.

    Raises:
        ValueError: ``digits`` is empty or has a character other than ``0``–``9``.
    """
    if not _is_ascii_digits(digits):
        raise ValueError(f"Damm check digit needs ASCII digits, got {digits!r}")
    # Zero diagonal: appending the interim digit itself drives the interim to 0.
    return str(_damm_interim(digits))


def damm_valid(digits: str) -> bool:
    """Whether ``digits`` (payload followed by its check digit) passes the Damm check.

    Never raises: an empty string or one with non-ASCII-digit characters is simply not valid.
    """
    return len(digits) >= 2 and _is_ascii_digits(digits) and _damm_interim(digits) == 0


# ---------------------------------------------------------------------------------------------
# Keyed permutation of the counter
# ---------------------------------------------------------------------------------------------


def new_key() -> bytes:
    """Return a fresh random device key (``KEY_BYTES`` bytes from :mod:`secrets`).

    Generated once at install time and kept with the device's configuration; losing it makes
    references unrecoverable to counters (they stay unique and valid).
    """
    return secrets.token_bytes(KEY_BYTES)


class ReferenceCipher:
    """The keyed permutation of ``[0, COUNTER_SPACE)`` bound to one key.

    A balanced Feistel network over ``Z_3163 × Z_3163`` (``_ROUNDS`` rounds, round function
    ``HMAC-SHA256(key, round ‖ half) mod 3163``) with cycle-walking (Black & Rogaway, "Ciphers
    with Arbitrary Finite Domains", CT-RSA 2002) down to ``[0, 10^7)``. Every Feistel network is
    a bijection whatever its round function, and cycle-walking a bijection of a superset keeps it
    a bijection of the subset, so references are unique by construction.

    Round-function values are memoised per instance (at most ``_ROUNDS × 3163`` entries), which
    makes issuing or checking many references with one key cheap. Not thread-safe for concurrent
    first use of the same entry, but every entry is deterministic, so a race only recomputes it.
    """

    __slots__ = ("_key", "_memo")

    def __init__(self, key: bytes) -> None:
        """Bind the permutation to ``key``.

        Args:
            key: the device key, any non-empty byte string (normally from :func:`new_key`).

        Raises:
            TypeError: ``key`` is not bytes-like.
            ValueError: ``key`` is empty.
        """
        if not isinstance(key, bytes | bytearray | memoryview):
            raise TypeError(f"key must be bytes, got {type(key).__name__}")
        key = bytes(key)
        if not key:
            raise ValueError("key must not be empty")
        self._key = key
        self._memo: dict[int, int] = {}

    def __repr__(self) -> str:
        # Never show the key: it is what makes references unguessable.
        return f"{type(self).__name__}(key=<{len(self._key)} bytes>)"

    def _round(self, round_index: int, half: int) -> int:
        """The round function F_i(half) = HMAC-SHA256(key, i ‖ half) mod 3163."""
        slot = round_index * _HALF_DOMAIN + half
        value = self._memo.get(slot)
        if value is None:
            # round index as 1 byte, half as 2 big-endian bytes (3163 < 2^16): fixed width, so
            # distinct (round, half) pairs never produce the same HMAC message.
            message = bytes((round_index,)) + half.to_bytes(2, "big")
            digest = hmac.digest(self._key, message, hashlib.sha256)
            value = int.from_bytes(digest[:_ROUND_DIGEST_BYTES], "big") % _HALF_DOMAIN
            self._memo[slot] = value
        return value

    def _encrypt(self, value: int) -> int:
        """One pass of the Feistel network on ``[0, 3163²)``."""
        left, right = divmod(value, _HALF_DOMAIN)
        for round_index in range(_ROUNDS):
            # (L, R) → (R, L + F_i(R) mod n): invertible because L is recovered as
            # R' − F_i(L') mod n whatever F_i is.
            left, right = right, (left + self._round(round_index, right)) % _HALF_DOMAIN
        return left * _HALF_DOMAIN + right

    def _decrypt(self, value: int) -> int:
        """Inverse of :meth:`_encrypt`."""
        left, right = divmod(value, _HALF_DOMAIN)
        for round_index in reversed(range(_ROUNDS)):
            left, right = (right - self._round(round_index, left)) % _HALF_DOMAIN, left
        return left * _HALF_DOMAIN + right

    def permute(self, counter: int) -> int:
        """Map a call counter to its 7-digit value; a bijection on ``[0, COUNTER_SPACE)``.

        Raises:
            TypeError: ``counter`` is not an int.
            ValueError: ``counter`` is outside ``[0, COUNTER_SPACE)``.
        """
        value = self._encrypt(_check_in_space(counter, "counter"))
        # Cycle-walking: re-encrypt until back inside the counter space. Terminates because the
        # cycle of the Feistel permutation through ``counter`` contains ``counter`` itself.
        while value >= COUNTER_SPACE:
            value = self._encrypt(value)
        return value

    def unpermute(self, value: int) -> int:
        """Recover the counter from a permuted value: the inverse of :meth:`permute`.

        Raises:
            TypeError: ``value`` is not an int.
            ValueError: ``value`` is outside ``[0, COUNTER_SPACE)``.
        """
        counter = self._decrypt(_check_in_space(value, "value"))
        while counter >= COUNTER_SPACE:
            counter = self._decrypt(counter)
        return counter

    def make_reference(self, counter: int) -> str:
        """The 8-digit reference of ``counter``: 7 zero-padded permuted digits + Damm digit.

        Raises:
            TypeError: ``counter`` is not an int.
            ValueError: ``counter`` is outside ``[0, COUNTER_SPACE)``.
        """
        payload = f"{self.permute(counter):0{_VALUE_DIGITS}d}"
        return payload + damm_check_digit(payload)

    def counter_of(self, reference: str) -> int:
        """Recover the counter of a canonical reference (as :meth:`make_reference` returns).

        Raises:
            ReferenceFormatError: ``reference`` is not 8 ASCII digits with a valid check digit.
        """
        _check_canonical(reference)
        if not damm_valid(reference):
            raise ReferenceFormatError(reference, "check digit wrong")
        return self.unpermute(int(reference[:_VALUE_DIGITS]))


def _check_in_space(number: int, name: str) -> int:
    """Return ``number`` if it is an int in ``[0, COUNTER_SPACE)``, else raise."""
    # bool is an int subclass, but True as a counter is a bug in the caller.
    if isinstance(number, bool) or not isinstance(number, int):
        raise TypeError(f"{name} must be an int, got {type(number).__name__}")
    if not 0 <= number < COUNTER_SPACE:
        raise ValueError(f"{name} must be in [0, {COUNTER_SPACE}), got {number}")
    return number


def permute(counter: int, key: bytes) -> int:
    """Map a call counter to its keyed 7-digit value; a bijection on ``[0, COUNTER_SPACE)``.

    Args:
        counter: the per-device call counter, ``0 <= counter < COUNTER_SPACE``.
        key: the device key (non-empty).

    Returns:
        The permuted value in ``[0, COUNTER_SPACE)``.

    Raises:
        ValueError: counter out of range or empty key.
        TypeError: counter not an int or key not bytes.
    """
    return ReferenceCipher(key).permute(counter)


def unpermute(value: int, key: bytes) -> int:
    """Inverse of :func:`permute`: the counter whose permuted value is ``value``.

    Raises:
        ValueError: value out of range or empty key.
        TypeError: value not an int or key not bytes.
    """
    return ReferenceCipher(key).unpermute(value)


def make_reference(counter: int, key: bytes) -> str:
    """The 8-digit reference for ``counter``: zero-padded permuted value + Damm check digit.

    Raises:
        ValueError: counter out of range or empty key.
        TypeError: counter not an int or key not bytes.
    """
    return ReferenceCipher(key).make_reference(counter)


# ---------------------------------------------------------------------------------------------
# Presentation
# ---------------------------------------------------------------------------------------------


def is_canonical(ref: str) -> bool:
    """Whether ``ref`` has the shape of a stored reference: exactly 8 ASCII digits.

    Only the shape: the check digit is not verified (a file or row named by 8 digits is
    named by a reference, whether or not a typo made it).
    """
    return len(ref) == REFERENCE_DIGITS and _is_ascii_digits(ref)


def _check_canonical(ref: str) -> None:
    """Raise ReferenceFormatError unless ``ref`` is exactly 8 ASCII digits."""
    if not is_canonical(ref):
        raise ReferenceFormatError(
            ref, f"expected a canonical reference of {REFERENCE_DIGITS} ASCII digits"
        )


def spoken_groups(ref: str) -> list[str]:
    """Split a canonical reference into its 3-3-2 groups: ``"42719353"`` → ``["427", "193", "53"]``.

    docs/design.md §7: the prompt speaks each group digit by digit (TTS would read "42719358" as one
    large number).

    Raises:
        ReferenceFormatError: ``ref`` is not exactly 8 ASCII digits (the check digit is not
            verified; pass what :func:`make_reference` or :func:`parse_reference` returned).
    """
    _check_canonical(ref)
    groups: list[str] = []
    start = 0
    for size in REFERENCE_GROUPS:
        groups.append(ref[start : start + size])
        start += size
    return groups


def format_reference(ref: str) -> str:
    """Format a canonical reference for display: ``"42719353"`` → ``"427-193-53"``.

    Raises:
        ReferenceFormatError: ``ref`` is not exactly 8 ASCII digits.
    """
    return REFERENCE_SEPARATOR.join(spoken_groups(ref))


def display_reference(ref: str) -> str:
    """``"42719353"`` → ``"427-193-53"``; anything not canonical is returned as stored.

    For showing what an index row or a file name holds: never raises, so a damaged row is
    shown rather than hidden. Pass the result through :func:`appliance.text.printable` when it
    came from outside.
    """
    return format_reference(ref) if is_canonical(ref) else ref


# ---------------------------------------------------------------------------------------------
# Parsing what a human typed
# ---------------------------------------------------------------------------------------------


def _normalise_char(char: str) -> str:
    """Map any Unicode decimal digit (Arabic-Indic, Devanagari…) to its ASCII digit."""
    if char.isdecimal() and not char.isascii():
        return str(unicodedata.decimal(char))
    return char


def _is_separator(char: str) -> bool:
    """Whether ``char`` may separate digit groups (space, any dash, ``.``, ``/``…)."""
    return char.isspace() or char in _SEPARATORS or unicodedata.category(char) == "Pd"


def suggest_references(digits: str) -> list[str]:
    """Valid references one typo away from ``digits``, formatted, sorted, deduplicated.

    A typo is one single-digit substitution or one swap of two adjacent (different) digits —
    exactly the errors the Damm digit is guaranteed to catch, so the intended reference is in
    this list whenever the human made one such error. ``digits`` itself is never included.

    Args:
        digits: exactly 8 ASCII digits (normally with a wrong check digit).

    Returns:
        Formatted references (``"427-193-53"``); for an invalid input at most 8 substitution
        candidates (the quasigroup fixes one digit per position) plus at most 7 swaps.

    Raises:
        ReferenceFormatError: ``digits`` is not exactly 8 ASCII digits.
    """
    _check_canonical(digits)
    candidates: set[str] = set()
    for position, original in enumerate(digits):
        head, tail = digits[:position], digits[position + 1 :]
        for replacement in "0123456789":
            if replacement != original:
                candidate = head + replacement + tail
                if damm_valid(candidate):
                    candidates.add(candidate)
    for position in range(REFERENCE_DIGITS - 1):
        first, second = digits[position], digits[position + 1]
        if first != second:
            candidate = digits[:position] + second + first + digits[position + 2 :]
            if damm_valid(candidate):
                candidates.add(candidate)
    return sorted(format_reference(candidate) for candidate in candidates)


def parse_reference(text: str) -> str:
    """Parse a reference as a human typed it and return the canonical 8 digits.

    Accepted: digits in any grouping and with any separators (``"427-193-53"``, ``"42719353"``,
    ``"427 193 53"``, ``" 427.193.53 "``, en dashes, non-breaking spaces), full-width and other
    scripts' decimal digits, a leading label (``"#"``, ``"ref"``, ``"Ref. no.:"``,
    ``"hivatkozási szám:"``…) and trailing sentence punctuation.

    Args:
        text: what the human typed.

    Returns:
        The canonical reference, 8 ASCII digits, with a valid check digit.

    Raises:
        ReferenceFormatError: a character is neither a digit nor a separator, or the number of
            digits is not 8 (no candidates); or the check digit is wrong, with reason
            ``"check digit wrong"`` and ``candidates`` = :func:`suggest_references`.
    """
    # NFKC folds full-width digits and letters ("４２７", "ＲＥＦ") and compatibility spaces to
    # their plain forms; other scripts' decimal digits are mapped explicitly afterwards.
    normalised = "".join(_normalise_char(char) for char in unicodedata.normalize("NFKC", text))
    body = normalised.strip().rstrip(_TRAILING_PUNCTUATION).rstrip()
    label = _LABEL_RE.match(body)
    if label is not None:
        body = body[label.end() :]

    digits: list[str] = []
    for char in body:
        if "0" <= char <= "9":
            digits.append(char)
        elif not _is_separator(char):
            raise ReferenceFormatError(text, f"{char!r} is not a digit")
    reference = "".join(digits)
    if len(reference) != REFERENCE_DIGITS:
        raise ReferenceFormatError(
            text, f"expected {REFERENCE_DIGITS} digits, found {len(reference)}"
        )
    if not damm_valid(reference):
        raise ReferenceFormatError(
            text, "check digit wrong", candidates=suggest_references(reference)
        )
    return reference


def known_candidates(error: ReferenceFormatError, exists: Callable[[str], bool]) -> list[str]:
    """The "did you mean" list: ``error.candidates`` that name a call ``exists`` knows.

    One rule for every place a human types a reference (the CLI, the owner's page): only
    references of real calls are suggested, so a typo never leads to a stranger's call by way
    of a made-up one.

    Args:
        error: what :func:`parse_reference` raised.
        exists: canonical 8 digits → whether the index has that call.

    Returns:
        Formatted references (``"427-193-53"``), in ``error.candidates`` order.
    """
    return [c for c in error.candidates if exists(c.replace(REFERENCE_SEPARATOR, ""))]
