"""Shared fixtures: gpiozero's MockFactory, short timeouts."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# gpiozero must never look for real pins in tests.
os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")

#: Upper bound for awaiting an event in tests; never a fixed sleep.
TIMEOUT_S = 5.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.unprivileged`` tests as root (root reads any file, so a denied read
    cannot be staged); ``./setup.sh test`` as root runs them again as an unprivileged user."""
    if os.geteuid() != 0:
        return
    skip = pytest.mark.skip(reason="root reads any file; ./setup.sh test runs this as an "
                                   "unprivileged user (setup.sh run_unprivileged_tests)")
    for item in items:
        if item.get_closest_marker("unprivileged") is not None:
            item.add_marker(skip)


@pytest.fixture
def mock_factory() -> Iterator[object]:
    """A fresh gpiozero MockFactory, closed afterwards (pins are reserved per factory)."""
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    factory = MockFactory(pin_class=MockPWMPin)
    try:
        yield factory
    finally:
        factory.close()
