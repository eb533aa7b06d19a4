"""Logging set-up: no timestamps (journald adds them), one line per record.

Under systemd (``JOURNAL_STREAM`` set) each line gets a syslog ``<N>`` priority prefix so
journald stores the level (``SyslogLevelPrefix=`` is on by default for stdout/stderr).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Final

from appliance.text import printable

_SYSLOG_PRIORITY: Final = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class _Formatter(logging.Formatter):
    """One line per message, nothing raw from the line.

    A log message can carry caller ID or modem output (``caller ID %s``): its control
    characters are escaped (:func:`appliance.text.printable`), newlines too, so a caller can
    neither drive the reader's terminal nor forge a log line. A traceback keeps its line
    breaks (we wrote them) but is escaped otherwise.
    """

    def format(self, record: logging.LogRecord) -> str:
        # logging.Formatter.format, with the message and any traceback escaped. The
        # traceback text is not cached on the record: another handler may show it raw.
        record.message = printable(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        extra = []
        if record.exc_info:
            extra.append(record.exc_text or self.formatException(record.exc_info))
        elif record.exc_text:
            extra.append(record.exc_text)
        if record.stack_info:
            extra.append(self.formatStack(record.stack_info))
        for block in extra:
            text += "\n" + printable(block.rstrip("\n"), keep_newlines=True)
        return text


class _JournalFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>"
        return prefix + super().format(record)


def setup_logging(level: str = "INFO", *, stream: object = None) -> None:
    """Configure the root logger once; safe to call again (replaces our handler)."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    fmt = "%(levelname)s %(name)s: %(message)s"
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter(fmt))
    else:
        handler.setFormatter(_Formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_appliance", False):
            root.removeHandler(old)
    handler._appliance = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
