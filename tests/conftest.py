"""Shared fixtures: gpiozero's MockFactory, short timeouts."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

# gpiozero must never look for real pins in tests.
os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")

#: Upper bound for awaiting an event in tests; never a fixed sleep.
TIMEOUT_S = 5.0

# No per-example deadline: the suite runs on loaded CI machines, where one example can take
# 300 ms instead of 1 ms; speed is measured by `appliance bench`, never by a test.
settings.register_profile("appliance", deadline=None)
settings.load_profile("appliance")


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


@pytest.fixture(autouse=True, scope="session")
def _sim_modem_urls() -> None:
    """``sim://`` modem URLs (the default ``lines[0].device``) open the in-process emulator, as
    under ``appliance run``, which wires it in (appliance/cli/modem.py ``wire_emulator``)."""
    from appliance.sim.modem.link import install

    install()


@pytest.fixture(autouse=True)
def _instant_busy_detection(request: pytest.FixtureRequest,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process emulators report busy at once, so the many tests that end calls by a
    remote hang-up do not each wait the realistic 1.5–2 s cadence recognition. Tests marked
    ``@pytest.mark.realistic_hangup`` (and emulators in other processes) keep the profiles'
    delays; docs/line.md says what they are."""
    if request.node.get_closest_marker("realistic_hangup") is not None:
        return
    import dataclasses

    from appliance.sim.modem.profiles import PROFILES

    for name, profile in list(PROFILES.items()):
        monkeypatch.setitem(PROFILES, name, dataclasses.replace(profile, busy_detect_s=0.0))


@pytest.fixture
def mock_factory() -> Iterator[object]:
    """A fresh gpiozero MockFactory, closed afterwards (pins are reserved per factory)."""
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    factory = MockFactory(pin_class=MockPWMPin)
    try:
        yield factory
    finally:
        factory.close()
