"""Showing text that came from outside (the telephone line) to a person.

Caller ID is whatever the exchange — or anyone on the line — sends: a caller name such as
``ESC ] 0 ; PWNED BEL ESC [ 2 J`` would retitle and clear the technician's terminal if printed
raw. The index stores what was received, byte for byte (it is evidence); everything a person
reads — CLI tables and details, export summaries, ``appliance status``, the log, web pages —
shows it through :func:`printable`, the one escaping function. JSON output needs nothing more:
``json.dumps`` escapes control characters itself.
"""

from __future__ import annotations

import unicodedata
from typing import Final

__all__ = ["printable"]

#: Characters that are printable by Unicode's rules but still steer a display: bidirectional
#: embeddings, overrides and isolates reorder what follows them ("Trojan Source",
#: CVE-2021-42574), so a name could make the text after it read backwards.
_BIDI_CONTROLS: Final = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


#: The escapes everyone reads at a glance.
_SHORT_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: object, *, keep_newlines: bool = False) -> str:
    """Return ``text`` safe to show to a person: no character in it can control a display.

    Control characters (C0, DEL, C1 — ESC, BEL, CR, LF …), bidirectional controls, line and
    paragraph separators, and unassigned or surrogate code points are written as Python-style
    escapes (``\\x1b``, ``\\n``, ``\\u202e``); a backslash is doubled, so an escape shown
    can never be mistaken for one a caller typed. Letters of any script, accents and symbols
    stay as they are: a Hungarian name reads as written. ``str(text)`` is used for
    non-strings, so None reads ``None``.

    Args:
        text: what to show (normally a ``str`` from the index or the line).
        keep_newlines: keep ``\\n`` as a line break (for multi-line text we produced
            ourselves, such as a traceback); everything else is still escaped.
    """
    text = text if isinstance(text, str) else str(text)
    if text.isprintable() and "\\" not in text and not _BIDI_CONTROLS.intersection(text):
        return text  # the common case: nothing to do
    out: list[str] = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif ((char == "\n" and keep_newlines)
              or (char.isprintable() and char not in _BIDI_CONTROLS)
              # other spaces (no-break space …) are harmless as they are
              or unicodedata.category(char) == "Zs"):
            out.append(char)
        else:
            out.append(_escape(char))
    return "".join(out)
