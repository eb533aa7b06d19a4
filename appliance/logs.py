"""Logging set-up: no timestamps (journald adds them), one line per record.

Under systemd (``JOURNAL_STREAM`` set) each line gets a syslog ``<N>`` priority prefix so
journald stores the level (``SyslogLevelPrefix=`` is on by default for stdout/stderr).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Final

_SYSLOG_PRIORITY: Final = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class _JournalFormatter(logging.Formatter):
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
        handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_appliance", False):
            root.removeHandler(old)
    handler._appliance = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
