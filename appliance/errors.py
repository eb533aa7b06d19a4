"""The appliance's exception hierarchy.

Each error multiply-inherits the matching builtin (as gpiozero's ``exc.py`` does), so code
that only knows ``TimeoutError`` or ``ConnectionError`` still catches it.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of every error the appliance raises on purpose."""


class ConfigError(ApplianceError, ValueError):
    """A configuration key is unknown or has a bad value.

    Attributes:
        key: dotted path of the offending key (``line.device``, ``lines[1].name``).
        expected: what would have been accepted.
        found: what was found instead (repr).
    """

    def __init__(self, key: str, expected: str, found: object) -> None:
        self.key = key
        self.expected = expected
        self.found = found
        super().__init__(f"{key}: expected {expected}, found {found!r}")


class ModemError(ApplianceError):
    """Something went wrong talking to the voice modem."""


class ModemTimeout(ModemError, TimeoutError):
    """The modem did not answer a command in time."""


class ModemCommandError(ModemError):
    """The modem answered a command with an error result."""

    def __init__(self, command: str, result: str) -> None:
        self.command = command
        self.result = result
        super().__init__(f"{command!r} → {result}")


class ModemStrayConnect(ModemError):
    """The modem went into its data (voice) state by itself while idle: an unsolicited
    ``CONNECT``. It takes no commands there, so the line is as dead as with a silent modem,
    but the modem did speak (docs/line.md, "Liveness")."""


class ModemGone(ModemError, ConnectionError):
    """The modem's port disappeared or the link failed; the supervisor will reopen it."""


class LineOffHook(ModemError):
    """The modem holds the line off-hook and refuses every way of hanging up (docs/line.md,
    "Hanging up"): nobody can call in while it does; the line is faulted."""


class AudioError(ApplianceError):
    """An audio device could not be opened or failed."""


class SpeechError(ApplianceError):
    """A prompt could not be rendered."""


class StoreError(ApplianceError):
    """The call index or the recordings could not be read or written."""


class ReferenceFormatError(ApplianceError, ValueError):
    """A call reference typed by a human does not parse or has a wrong check digit.

    Attributes:
        text: what was typed.
        candidates: valid references one typo away (substitution or adjacent swap), sorted.
    """

    def __init__(self, text: str, reason: str, candidates: list[str] | None = None) -> None:
        self.text = text
        self.reason = reason
        self.candidates = candidates or []
        message = f"{text!r}: {reason}"
        if self.candidates:
            message += " — did you mean " + ", ".join(self.candidates) + "?"
        super().__init__(message)
