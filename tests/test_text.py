"""appliance.text.printable: nothing from the line reaches a terminal raw."""

from __future__ import annotations

import io
import logging
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from appliance.logs import setup_logging
from appliance.text import printable

#: The caller name of issue 15: retitles the terminal (OSC 0) and clears it (CSI 2 J).
HOSTILE = "\x1b]0;PWNED\x07\x1b[2J"


def _controls(text: str) -> list[str]:
    """Characters that can steer a display: controls, format characters (bidi overrides
    among them), surrogates, private use, unassigned, line/paragraph separators."""
    return [c for c in text
            if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")]


def test_hostile_name_is_escaped_and_readable() -> None:
    assert printable(HOSTILE) == "\\x1b]0;PWNED\\x07\\x1b[2J"
    assert printable("Kovács Jánosné Őrsi") == "Kovács Jánosné Őrsi"
    assert printable("a\u202eevil") == "a\\u202eevil"
    assert printable("two\nlines\r") == "two\\nlines\\r"
    assert printable("tb\nline", keep_newlines=True) == "tb\nline"
    assert printable("back\\x1b") == "back\\\\x1b"  # a typed "\x1b" is not an escape we made
    assert printable(None) == "None"


@given(st.text())
def test_nothing_controlling_survives(text: str) -> None:
    assert not _controls(printable(text))


@given(st.text(alphabet=st.characters(categories=("L", "M", "N", "Zs"))))
def test_names_in_any_script_pass_unchanged(text: str) -> None:
    assert printable(text) == text


def test_log_lines_escape_what_the_line_sent() -> None:
    stream = io.StringIO()
    setup_logging("INFO", stream=stream)
    log = logging.getLogger("appliance.test")
    try:
        log.info("line main: caller ID %s", HOSTILE + "\nINFO appliance: forged line")
        try:
            raise ValueError(HOSTILE)
        except ValueError:
            log.exception("call 12345678: failed")
    finally:
        for handler in list(logging.getLogger().handlers):
            if getattr(handler, "_appliance", False):
                logging.getLogger().removeHandler(handler)
    out = stream.getvalue()
    assert "\x1b" not in out
    assert "\x07" not in out
    assert "caller ID \\x1b]0;PWNED\\x07\\x1b[2J\\nINFO appliance: forged line" in out
    # One line for the message; the traceback keeps its own line breaks.
    assert out.splitlines()[0].startswith("INFO appliance.test: line main: caller ID")
    assert "Traceback (most recent call last):" in out
