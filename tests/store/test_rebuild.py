"""A reference is never issued twice and a recording never overwritten (issue 15 item 4):
the counter's high-water mark, exclusive recording files, ``appliance index rebuild``."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from appliance.cli.main import cli
from appliance.errors import StoreError
from appliance.store.callrecord import write_call_record
from appliance.store.db import Store
from appliance.store.highwater import read_mark, write_mark
from appliance.store.rebuild import rebuild_index
from appliance.store.recorder import PARTIAL_SUFFIX, Recorder, finalize_partial, sha256_file

from ..policies import default_config
from .callfactory import KEY, NAME, NUMBER, make_calls, state_paths

NOW = dt.datetime(2025, 3, 14, 9, 26, 53, tzinfo=dt.UTC)
#: The configured fsync interval (``recording.fsync_interval_s``; the recorder has none of its own).
FSYNC_S = default_config().recording.fsync_interval_s


def _drop_index(state: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path = Path(str(state / "appliance.db") + suffix)
        if path.exists():
            path.unlink()


def test_mark_round_trip_in_place(tmp_path: Path) -> None:
    assert read_mark(tmp_path) is None
    write_mark(tmp_path, 7)
    inode = (tmp_path / "reference.counter").stat().st_ino
    write_mark(tmp_path, 1234)
    assert read_mark(tmp_path) == 1234
    # Rewritten in place (no new blocks needed on a full disk), and private.
    assert (tmp_path / "reference.counter").stat().st_ino == inode
    assert (tmp_path / "reference.counter").stat().st_mode & 0o777 == 0o600
    (tmp_path / "reference.counter").write_text("garbage")
    with pytest.raises(StoreError, match="damaged"):
        read_mark(tmp_path)


async def test_counter_never_goes_below_the_mark(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "a.db")
    try:
        assert await store.next_counter() == 1
        assert await store.next_counter(at_least=41) == 41
        assert await store.next_counter(at_least=5) == 42
        assert store.counter() == 42
    finally:
        await store.close()


async def test_a_recording_is_never_overwritten(tmp_path: Path) -> None:
    first = Recorder(tmp_path, "60444644", now=NOW, fsync_interval_s=FSYNC_S)
    first.write(np.full((8000, 2), 1000, dtype=np.int16))
    result = await first.finalize("flac")
    digest = sha256_file(result.path)
    # A second recorder under the same reference refuses to start…
    with pytest.raises(StoreError, match="exists"):
        Recorder(tmp_path, "60444644", now=NOW, fsync_interval_s=FSYNC_S)
    # …and a partial that turns up anyway is never renamed over the first file.
    partial = result.path.with_name("60444644" + PARTIAL_SUFFIX)
    other = Recorder(tmp_path, "99999990", now=NOW, fsync_interval_s=FSYNC_S)
    other.write(np.full((4000, 2), -500, dtype=np.int16))
    await other._stop_writer()
    os.rename(other.partial_path, partial)
    with pytest.raises(StoreError, match="refusing to overwrite"):
        await asyncio.to_thread(finalize_partial, partial, "flac")
    assert sha256_file(result.path) == digest
    assert partial.exists(), "kept for a human"
    assert not list(tmp_path.rglob("*.tmp"))


async def test_finalize_rerun_after_a_crash_keeps_its_own_file(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, "12345674", now=NOW, fsync_interval_s=FSYNC_S)
    recorder.write(np.full((8000, 2), 700, dtype=np.int16))
    await recorder._stop_writer()
    saved = recorder.partial_path.read_bytes()
    result = await asyncio.to_thread(finalize_partial, recorder.partial_path, "flac")
    # A crash between the rename and the partial's deletion: the partial is back.
    recorder.partial_path.write_bytes(saved)
    again = await asyncio.to_thread(finalize_partial, recorder.partial_path, "flac")
    assert again.sha256 == result.sha256
    assert not recorder.partial_path.exists()


def test_rebuild_from_sidecars_after_the_index_is_lost(tmp_path: Path) -> None:
    state = tmp_path / "state"
    now = time.time()
    made = make_calls(state, [{"counter": 3, "ring_at": now - 60},
                              {"counter": 9, "ring_at": now - 30, "record_s": None}])
    db_path, recordings = state_paths(state)
    digest = sha256_file(made[0].recording)
    _drop_index(state)
    (state / "reference.key").write_bytes(KEY)
    report = rebuild_index(db_path, recordings, state, KEY, actor="cli:test")
    assert (report.sidecars, report.unrecorded, report.added, report.partials) == (2, 1, 2, 0)
    # The counter is past every reference found (9: call 9 left no recording, but its
    # record file names it), and nothing issued is missing from the rebuilt index.
    assert report.counter == 9
    assert read_mark(state) == 9
    store = Store.open(db_path)
    try:
        row = store.get_call(made[0].reference)
        assert row is not None
        assert row["outcome"] == "bridged"
        assert (row["caller_number"], row["caller_name"]) == (NUMBER, NAME)
        assert row["recording_decision"] == "recorded"
        assert row["recording_sha256"] == digest
        assert row["recording_path"] == str(made[0].recording)
        assert [e["state"] for e in store.events(made[0].reference)] == ["rebuilt"]
        declined = store.get_call(made[1].reference)
        assert declined is not None
        assert (declined["outcome"], declined["recording_decision"]) == ("bridged", "declined")
        assert declined["recording_path"] is None
        assert declined["ring_at"] == pytest.approx(now - 30)
        assert [e["action"] for e in store.audit_entries()] == ["index-rebuilt"]
        assert store.verify_audit_chain() == []
    finally:
        store.close_sync()
    # Idempotent.
    assert rebuild_index(db_path, recordings, state, KEY, actor="cli:test").added == 0


def test_rebuild_moves_a_corrupt_index_aside_and_keeps_the_mark(tmp_path: Path) -> None:
    state = tmp_path / "state"
    made = make_calls(state, [{"counter": 2, "ring_at": time.time()}])
    db_path, _recordings = state_paths(state)
    write_mark(state, 17)  # more references were issued than recordings show
    db_path.write_bytes(b"this is not a database" * 100)
    # An unfinished recording of a call the index no longer knows.
    partial = made[0].recording.with_name("11111110" + PARTIAL_SUFFIX)
    partial.write_bytes(b"RIFF")
    runner = CliRunner()
    result = runner.invoke(cli, ["--config", "/dev/null", "--state-dir", str(state), "index",
                                 "rebuild", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["moved_aside"]
    assert Path(report["moved_aside"]).read_bytes().startswith(b"this")
    assert report["counter"] == 17
    assert report["partials"] == 1
    assert report["not_indexed"] == 17 - 2
    store = Store.open(db_path)
    try:
        assert store.counter() == 17
        assert store.get_call("11111110")["outcome"] == "in_progress"
    finally:
        store.close_sync()


def test_rebuild_takes_unrecorded_calls_and_survives_a_hand_edited_record(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    db_path, recordings = state_paths(state)
    t = time.time()
    good = write_call_record(recordings, {
        "reference": "11111111", "direction": "in", "caller_number": NUMBER,
        "caller_name": "\x1b]0;X\x07", "outcome": "abandoned", "recording_decision": "none",
        "notice_completed": 0, "created_at": t, "ring_at": t - 5, "end_at": t + 9})
    # The control bytes of a caller name are escaped in the file (safe to `cat`).
    assert "\x1b" not in good.read_text(encoding="utf-8")
    bad = write_call_record(recordings, {
        "reference": "22222222", "outcome": "hacked", "recording_decision": "none",
        "created_at": None, "ring_at": t})
    report = rebuild_index(db_path, recordings, state, None, actor="cli:test")
    assert (report.sidecars, report.unrecorded, report.added) == (2, 2, 2)
    assert any("hacked" in p and str(bad) in p for p in report.problems)
    store = Store.open(db_path)
    try:
        row = store.get_call("11111111")
        assert row is not None
        assert (row["outcome"], row["recording_decision"]) == ("abandoned", "none")
        assert row["caller_name"] == "\x1b]0;X\x07"
        assert row["end_at"] == pytest.approx(t + 9)
        assert [e["detail"] for e in store.events("11111111")] == [
            "index rebuilt from the call's record file; its events are not known"]
        other = store.get_call("22222222")
        assert other is not None
        assert other["outcome"] == "unknown"
        assert other["created_at"] is not None
    finally:
        store.close_sync()
