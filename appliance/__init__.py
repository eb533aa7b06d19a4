"""The call-recording telephone appliance for small shops."""

from __future__ import annotations

__version__ = "0.1.0"
