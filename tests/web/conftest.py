"""Fixtures of the owner's page: a real state directory with real calls, real accounts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.web.accounts import Accounts
from tests.store.callfactory import DAY_S, MadeCall, make_calls, state_paths

#: Account name → (role, password) of every test account.
USERS = {"olga": ("owner", "owner-pass-1"), "sam": ("staff", "staff-pass-1"),
         "tina": ("technician", "tech-pass-1")}
#: A caller-ID name a hostile caller could send (HTML and script).
HOSTILE_NAME = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@dataclass(frozen=True, slots=True)
class Shop:
    """A state directory with three calls and three accounts."""

    state_dir: Path
    db_path: Path
    recordings_dir: Path
    web_dir: Path
    calls: list[MadeCall]
    hostile: MadeCall


def make_shop(state_dir: Path) -> Shop:
    """Three calls (newest last): recorded, declined, recorded with a hostile name."""
    now = time.time()
    made = make_calls(state_dir, [
        {"counter": 1, "ring_at": now - 2 * DAY_S},
        {"counter": 2, "ring_at": now - DAY_S, "number": "06301112233", "record_s": None,
         "outcome": "abandoned"},
        {"counter": 3, "ring_at": now - 3600, "number": "+36307778899", "name": HOSTILE_NAME},
    ])
    db_path, recordings_dir = state_paths(state_dir)
    web_dir = state_dir / "web"
    accounts = Accounts.in_dir(web_dir)
    for name, (role, password) in USERS.items():
        accounts.add(name, role, password)
    return Shop(state_dir, db_path, recordings_dir, web_dir, made, made[2])


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    return make_shop(tmp_path / "state")
