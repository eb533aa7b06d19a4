"""Tests for the SQLite call index: migrations, durability, counter, reads, audit chain."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.errors import StoreError
from appliance.store.db import GENESIS_HASH, SCHEMA_VERSION, Store, audit_hash

FIXTURES = Path(__file__).parent / "databases"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh store in a not-yet-existing state directory."""
    s = Store.open(tmp_path / "state" / "appliance.db")
    try:
        yield s
    finally:
        await s.close()


def _raw(path: Path) -> sqlite3.Connection:
    """A second, independent connection (what another process would see)."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    return conn


# ---------------------------------------------------------------------- open / migrations


async def test_open_empty_creates_schema_and_version(tmp_path: Path) -> None:
    path = tmp_path / "state" / "appliance.db"
    store = Store.open(path)
    await store.close()
    with _raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"calls", "events", "audit", "meta"} <= tables
    assert {"idx_calls_caller_number", "idx_calls_ring_at"} <= indexes
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o770


@pytest.mark.parametrize(("before", "after"), [(0o644, 0o640), (0o600, 0o600), (0o000, 0o000)])
async def test_open_narrows_but_never_widens_the_file_mode(tmp_path: Path, before: int,
                                                           after: int) -> None:
    path = tmp_path / "appliance.db"
    await Store.open(path).close()
    path.chmod(before)
    # Root opens a 000 file anyway; anyone else gets a StoreError — never a chmod back.
    with contextlib.suppress(StoreError):
        await Store.open(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == after


async def test_reopen_is_idempotent_and_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "appliance.db"
    store = Store.open(path)
    await store.create_call("11111111", line="main")
    await store.close()
    store = Store.open(path)
    try:
        assert store.get_call("11111111") is not None
        assert len(store.list_calls()) == 1
    finally:
        await store.close()
    with _raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_fixture_v1_database_reopens_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "appliance.db"
    with sqlite3.connect(path) as conn:
        conn.executescript((FIXTURES / "schema_v1.sql").read_text())
    store = Store.open(path)
    try:
        call = store.get_call("42719038")
        assert call is not None
        assert call["caller_name"] == "KOVACS"
        assert call["outcome"] == "bridged"
        assert [e["state"] for e in store.events("42719038")] == ["ringing", "answered"]
        # The fixture's counter stood at 2.
        assert await store.next_counter() == 3
    finally:
        await store.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "appliance.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        Store.open(path)


def test_garbage_file_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "appliance.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        Store.open(path)


# ---------------------------------------------------------------------- writes


async def test_create_call_is_visible_to_a_second_connection(store: Store) -> None:
    call_id = await store.create_call(
        "42719038", line="main", direction="in", caller_number="+3611234567", ring_at=1.0
    )
    # No close, no checkpoint: the committed row must already be in the WAL.
    with _raw(store.path) as conn:
        row = conn.execute("SELECT * FROM calls WHERE reference = ?", ("42719038",)).fetchone()
    assert row is not None
    assert row["id"] == call_id
    assert row["caller_number"] == "+3611234567"
    assert row["recording_decision"] == "pending"
    assert row["outcome"] == "in_progress"
    assert row["created_at"] > 0


async def test_update_call_and_events(store: Store) -> None:
    await store.create_call("1", ring_at=10.0)
    await store.update_call("1", outcome="bridged", recording_decision="recorded", end_at=20.0)
    await store.add_event("1", "answered", t=12.0)
    await store.add_event("1", "ringing", "first ring", t=10.0)
    await store.add_event("1", "dtmf", "9")  # t defaults to now, after the others
    call = store.get_call("1")
    assert call is not None
    assert (call["outcome"], call["recording_decision"], call["end_at"]) == (
        "bridged", "recorded", 20.0
    )
    events = store.events("1")
    assert [(e["state"], e["detail"]) for e in events] == [
        ("ringing", "first ring"), ("answered", ""), ("dtmf", "9")
    ]


async def test_write_errors_are_store_errors(store: Store) -> None:
    await store.create_call("1")
    with pytest.raises(StoreError):
        await store.create_call("1")  # duplicate reference
    with pytest.raises(StoreError, match="unknown"):
        await store.create_call("2", not_a_column=1)
    with pytest.raises(StoreError):
        await store.update_call("1", outcome="exploded")  # CHECK constraint
    with pytest.raises(StoreError, match="no call"):
        await store.update_call("404", outcome="missed")
    with pytest.raises(StoreError, match="no call"):
        await store.add_event("404", "ringing")
    # A failed write leaves no transaction open: the next one works.
    await store.update_call("1", outcome="missed")
    assert store.get_call("1")["outcome"] == "missed"  # type: ignore[index]


async def test_counter_strictly_increases_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "appliance.db"
    seen: list[int] = []
    for _ in range(3):
        store = Store.open(path)
        try:
            seen += [await store.next_counter() for _ in range(4)]
        finally:
            await store.close()
    assert seen == list(range(1, 13))


async def test_concurrent_counter_calls_are_unique(store: Store) -> None:
    values = await asyncio.gather(*(store.next_counter() for _ in range(50)))
    assert sorted(values) == list(range(1, 51))


async def test_writes_run_on_the_single_writer_thread(store: Store) -> None:
    names: set[str] = set()
    original = store._create_call

    def spy(reference: str, fields: dict[str, object]) -> int:
        names.add(threading.current_thread().name)
        return original(reference, fields)

    store._create_call = spy  # type: ignore[method-assign]
    await asyncio.gather(*(store.create_call(str(i)) for i in range(10)))
    assert len(names) == 1
    assert names.pop().startswith("sqlite-writer")


# ---------------------------------------------------------------------- reads


async def test_list_calls_newest_first_with_filters(store: Store) -> None:
    await store.create_call("a", ring_at=100.0, caller_number="1", line="main")
    await store.create_call("b", ring_at=300.0, caller_number="2", line="main")
    await store.create_call("c", ring_at=200.0, caller_number="1", line="second")
    assert [c["reference"] for c in store.list_calls()] == ["b", "c", "a"]
    assert [c["reference"] for c in store.list_calls(2)] == ["b", "c"]
    assert [c["reference"] for c in store.list_calls(number="1")] == ["c", "a"]
    assert [c["reference"] for c in store.list_calls(line="main")] == ["b", "a"]
    assert [c["reference"] for c in store.list_calls(number="1", line="main")] == ["a"]
    last = store.last_call()
    assert last is not None
    assert last["reference"] == "b"
    assert store.get_call("zzz") is None
    assert store.events("zzz") == []


async def test_empty_store_reads(store: Store) -> None:
    assert store.last_call() is None
    assert store.list_calls() == []
    assert store.audit_entries() == []
    assert store.verify_audit_chain() == []


async def test_reads_from_another_thread(store: Store) -> None:
    await store.create_call("1")
    call = await asyncio.to_thread(store.get_call, "1")
    assert call is not None
    assert call["reference"] == "1"


# ---------------------------------------------------------------------- audit chain


async def test_audit_chain_links_and_verifies(store: Store) -> None:
    h1 = await store.append_audit("call_finalized", actor="daemon", reference="1",
                                  details={"sha256": "ab" * 32, "bytes": 123})
    h2 = await store.append_audit("config_changed", actor="cli:owner",
                                  details={"key": "retention_days", "old": 90, "new": 30})
    h3 = await asyncio.to_thread(store.append_audit_sync, "verified", actor="cli:tech")
    entries = store.audit_entries()
    assert [e["hash"] for e in entries] == [h1, h2, h3]
    assert entries[0]["prev_hash"] == GENESIS_HASH
    assert entries[1]["prev_hash"] == h1
    assert entries[2]["prev_hash"] == h2
    assert entries[1]["details"] == {"key": "retention_days", "old": 90, "new": 30}
    e = entries[0]
    assert h1 == audit_hash(GENESIS_HASH, e["t"], "call_finalized", "daemon", "1", e["details"])
    assert store.verify_audit_chain() == []


async def test_audit_tampering_is_reported(store: Store) -> None:
    for i in range(4):
        await store.append_audit("exported", actor="cli", reference=str(i), details={"n": i})
    with _raw(store.path) as conn:
        conn.execute("UPDATE audit SET details = ? WHERE id = 2", ('{"n":99}',))
    problems = store.verify_audit_chain()
    assert len(problems) == 1
    assert "row 2" in problems[0]
    assert "altered" in problems[0]


async def test_audit_deleted_row_is_reported(store: Store) -> None:
    for i in range(3):
        await store.append_audit("purged", actor="daemon", details={"n": i})
    with _raw(store.path) as conn:
        conn.execute("DELETE FROM audit WHERE id = 2")
    problems = store.verify_audit_chain()
    assert any("row 3" in p and "prev_hash" in p for p in problems)


async def test_audit_rejects_unserialisable_details(store: Store) -> None:
    with pytest.raises(StoreError, match="serialisable"):
        await store.append_audit("x", actor="a", details={"bad": object()})
    assert store.audit_entries() == []


async def test_close_drains_and_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "appliance.db"
    store = Store.open(path)
    await asyncio.gather(*(store.create_call(str(i)) for i in range(20)))
    await store.close()
    await store.close()  # idempotent
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    with _raw(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 20
    with pytest.raises(StoreError, match="closed"):
        await store.create_call("late")


async def test_two_writers_on_one_file_keep_one_chain(tmp_path: Path) -> None:
    """The daemon and the CLI (each with its own Store) append to the same chain."""
    path = tmp_path / "appliance.db"
    daemon = Store.open(path)
    cli = Store.open(path)
    try:
        for i in range(5):
            await daemon.append_audit("call_finalized", actor="daemon", details={"i": i})
            await asyncio.to_thread(cli.append_audit_sync, "exported", actor="cli",
                                    details={"i": i})
        assert len(daemon.audit_entries()) == 10
        assert daemon.verify_audit_chain() == []
        assert await cli.next_counter() == 1
        assert await daemon.next_counter() == 2
    finally:
        await daemon.close()
        await asyncio.to_thread(cli.close_sync)


def test_newest_first_uses_the_index(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "appliance.db")
    try:
        plan = store._query(  # the plan is what matters here, not the rows
            "EXPLAIN QUERY PLAN SELECT * FROM calls "
            "ORDER BY COALESCE(ring_at, created_at) DESC, id DESC LIMIT 1")
    finally:
        store.close_sync()
    assert any("idx_calls_newest" in str(row) for row in plan), plan


# ---------------------------------------------------------------------- the notice proof


async def test_last_informed_call_finds_only_a_whole_first_layer_in_the_window(
        store: Store) -> None:
    day = 86400.0
    now = 1_800_000_000.0
    layers = '[{"layer": "notice", "version": "v", "played": "full"}]'
    await store.create_call("11111111", caller_number="+361", ring_at=now - 3 * day,
                            notice_form="full", notice_first_heard=1, notice_layers=layers)
    await store.create_call("22222222", caller_number="+361", ring_at=now - 1 * day,
                            notice_form="full", notice_first_heard=0)  # hung up mid-notice
    await store.create_call("33333333", caller_number="+362", ring_at=now - 40 * day,
                            notice_form="full", notice_first_heard=1)
    found = store.last_informed_call("+361", now - 30 * day)
    assert found is not None
    assert found["reference"] == "11111111"
    assert found["notice_layers"] == layers
    assert store.last_informed_call("+361", now - 2 * day) is None
    assert store.last_informed_call("+362", now - 30 * day) is None  # too long ago
    assert store.last_informed_call("+363", now - 30 * day) is None
