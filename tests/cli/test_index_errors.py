"""``run``, ``calls``, ``last``, ``show`` on a damaged, read-only or unreadable index, and
``calls`` with extreme arguments: a message and an exit code, never a traceback."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from appliance.cli.context import classify_store_error
from appliance.cli.main import cli
from appliance.errors import StoreError

from ..store.callfactory import make_calls


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    make_calls(path, [{"counter": 1, "ring_at": time.time(), "record_s": None},
                      {"counter": 2, "ring_at": time.time() - 86_400, "record_s": None}])
    return path


def run(state: Path, *args: str) -> Result:
    # catch_exceptions=False: a traceback fails the test instead of becoming exit code 1.
    return CliRunner().invoke(cli, ["--state-dir", str(state), *args], catch_exceptions=False)


READ_COMMANDS = [("calls",), ("last",), ("show", "000-000-00")]


@pytest.mark.parametrize("args", [*READ_COMMANDS, ("run",), ("verify",)])
def test_a_damaged_index_is_a_message(state: Path, args: tuple[str, ...]) -> None:
    (state / "appliance.db").write_bytes(b"this is not an SQLite database\n" * 200)
    result = run(state, *args)
    assert result.exit_code == 1, result.output
    assert "is damaged" in result.output
    assert "appliance index rebuild" in result.output


@pytest.mark.unprivileged
@pytest.mark.parametrize("args", [*READ_COMMANDS, ("run",)])
def test_a_read_only_state_dir_is_a_message(state: Path, args: tuple[str, ...]) -> None:
    state.chmod(0o555)
    try:
        result = run(state, *args)
    finally:
        state.chmod(0o750)
    assert result.exit_code == 1, result.output
    assert "is not writable" in result.output


@pytest.mark.unprivileged
@pytest.mark.parametrize("args", [*READ_COMMANDS, ("run",)])
def test_an_unreadable_index_is_a_message(state: Path, args: tuple[str, ...]) -> None:
    (state / "appliance.db").chmod(0)
    try:
        result = run(state, *args)
    finally:
        (state / "appliance.db").chmod(0o640)
    assert result.exit_code == 1, result.output
    assert "sudo -u appliance" in result.output


def test_a_full_disk_is_named_as_such(tmp_path: Path) -> None:
    # A full file system cannot be made here without mounting one; the two ways it shows
    # (SQLite's text, and ENOSPC from a file write) are classified from the real exceptions.
    db = tmp_path / "appliance.db"
    for error in (StoreError(f"{db}: database or disk is full"),
                  OSError(errno.ENOSPC, "No space left on device", str(db))):
        what, fix = classify_store_error(db, error)
        assert what.startswith("the disk is full"), what
        assert "appliance purge" in fix


def _refs(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [row["reference"] for row in json.loads(result.output)]


def test_open_ended_dates_and_a_huge_limit_list_everything(state: Path) -> None:
    everything = _refs(run(state, "calls", "--json"))
    assert len(everything) == 2
    assert _refs(run(state, "calls", "--json", "--until", "9999-12-31")) == everything
    assert _refs(run(state, "calls", "--json", "--since", "0001-01-01")) == everything
    assert _refs(run(state, "calls", "--json", "--since", "9999-12-31")) == []
    assert _refs(run(state, "calls", "--json", "--limit", str(10**30))) == everything
    assert _refs(run(state, "calls", "--json", "--limit", "1")) == everything[:1]


@pytest.mark.parametrize("limit", ["0", "-5", "many"])
def test_a_limit_below_one_is_a_usage_error(state: Path, limit: str) -> None:
    result = CliRunner().invoke(cli, ["--state-dir", str(state), "calls", "--limit", limit])
    assert result.exit_code == 2
    assert "--limit" in result.output
