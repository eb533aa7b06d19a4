"""Shared fixtures: gpiozero's MockFactory, short timeouts."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# gpiozero must never look for real pins in tests.
os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")

#: Upper bound for awaiting an event in tests; never a fixed sleep.
TIMEOUT_S = 5.0


@pytest.fixture
def mock_factory() -> Iterator[object]:
    """A fresh gpiozero MockFactory, closed afterwards (pins are reserved per factory)."""
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    factory = MockFactory(pin_class=MockPWMPin)
    try:
        yield factory
    finally:
        factory.close()
