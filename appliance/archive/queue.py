"""The durable archive queue: two tables in the index, so it survives restarts and power cuts
and travels with the index (Litestream replicates it; a restored box knows what is archived).

``archive`` has one row per call that has (or had) a recording::

    queued   ──upload ok──▶ archived ──recording gone (purge/erase)──▶ deleting ──▶ deleted
      └──────────recording gone before it was uploaded──────────────────▲

``archive_objects`` lists what was uploaded for a call (key, plaintext and stored SHA-256,
sizes, ETag): ``appliance archive verify`` compares it with the bucket.

The queue is *derived* from the calls table by :func:`reconcile`: a finalized call with a
recording is queued; a call whose recording was deleted (retention purge, erasure on request —
from the CLI, the web page or anywhere else that goes through appliance.store.retention) is
moved to ``deleting``. So no path that finalizes or deletes a call needs to know the archive
exists, and a box offline for a week catches up by the same rule.

The tables are created here (``CREATE … IF NOT EXISTS``), not by a numbered store migration:
they belong to the optional archive, and a box that never archives never has them.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from appliance.store.db import _connect, _insert_audit

#: Queue states (the CHECK constraint).
STATES: Final = ("queued", "archived", "deleting", "deleted")

_SCHEMA: Final = (
    f"""
    CREATE TABLE IF NOT EXISTS archive (
        reference TEXT PRIMARY KEY,
        state TEXT NOT NULL CHECK (state IN {STATES!r}),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_try_at REAL NOT NULL DEFAULT 0,
        last_error TEXT,
        queued_at REAL NOT NULL,
        archived_at REAL,
        deleted_at REAL
    )
    """,
    "CREATE INDEX IF NOT EXISTS idx_archive_due ON archive (state, next_try_at)",
    """
    CREATE TABLE IF NOT EXISTS archive_objects (
        reference TEXT NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        plain_sha256 TEXT NOT NULL,
        plain_bytes INTEGER NOT NULL,
        stored_sha256 TEXT NOT NULL,
        stored_bytes INTEGER NOT NULL,
        etag TEXT NOT NULL,
        uploaded_at REAL NOT NULL,
        PRIMARY KEY (reference, kind)
    )
    """,
    # One row: why the whole queue is paused (service unreachable, credentials refused, no
    # bucket), so `archive status` in another process can say so. NULL error = reachable.
    """
    CREATE TABLE IF NOT EXISTS archive_service (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        error TEXT,
        since REAL,
        checked_at REAL NOT NULL
    )
    """,
)

# A call is "live" while the box keeps its recording; the archive holds it exactly as long.
_LIVE: Final = ("c.recording_path IS NOT NULL AND c.recording_deleted_at IS NULL "
                "AND c.erased_at IS NULL AND c.outcome != 'in_progress'")
_GONE: Final = ("c.recording_deleted_at IS NOT NULL OR c.erased_at IS NOT NULL "
                "OR c.purged_at IS NOT NULL")


@dataclass(frozen=True, slots=True)
class Job:
    reference: str
    state: str
    attempts: int


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    kind: str
    key: str
    plain_sha256: str
    plain_bytes: int
    stored_sha256: str
    stored_bytes: int
    etag: str


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """An IMMEDIATE transaction (the write lock up front, as the store's writer takes it),
    committed at the end of the block, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def open_queue(db_path: Path) -> sqlite3.Connection:
    """A connection to the index with the archive tables in place (WAL, busy timeout)."""
    conn = _connect(Path(db_path))
    with transaction(conn):
        for statement in _SCHEMA:
            conn.execute(statement)
    return conn


def has_tables(conn: sqlite3.Connection) -> bool:
    """Whether this index has ever been archived from (read-only callers must not create)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'archive'").fetchone() \
        is not None


def reconcile(conn: sqlite3.Connection, now: float | None = None,
              references: Collection[str] | None = None) -> tuple[int, int]:
    """Queue newly finalized recordings; move calls whose recording went to ``deleting``.

    Args:
        conn: a connection from :func:`open_queue`.
        now: the queue time to record (default: now).
        references: only these calls (what changed, see :func:`changed_since`); None scans
            every call (0.7 s with 10^6 calls in ``appliance bench``: at start and hourly).

    Returns:
        (calls newly queued for upload, calls newly queued for deletion).
    """
    now = time.time() if now is None else now
    chunks: list[list[str]] = ([[]] if references is None else
                               [list(references)[i:i + 500]
                                for i in range(0, len(references), 500)])
    added = gone = 0
    with transaction(conn):
        for chunk in chunks:
            if references is not None and not chunk:
                continue
            only = ("" if references is None else
                    " AND c.reference IN (" + ", ".join("?" * len(chunk)) + ")")
            added += conn.execute(  # constant fragments, values bound
                "INSERT INTO archive (reference, state, queued_at) "  # noqa: S608
                f"SELECT c.reference, 'queued', ? FROM calls c WHERE {_LIVE}{only} "
                "AND NOT EXISTS (SELECT 1 FROM archive a WHERE a.reference = c.reference)",
                (now, *chunk),
            ).rowcount
            gone += conn.execute(  # constant fragments, values bound
                "UPDATE archive SET state = 'deleting', attempts = 0, next_try_at = 0, "  # noqa: S608
                "last_error = NULL WHERE state IN ('queued', 'archived') AND reference IN "
                f"(SELECT c.reference FROM calls c WHERE ({_GONE}){only})",
                tuple(chunk),
            ).rowcount
    return added, gone


def audit_head(conn: sqlite3.Connection) -> int:
    """The newest audit row's id (0 for none): where :func:`changed_since` starts."""
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM audit").fetchone()[0])


def changed_since(conn: sqlite3.Connection, after_id: int) -> tuple[int, set[str]]:
    """The calls with an audit entry after row ``after_id`` — every finalize
    (``call-finalized``), erasure and purge writes one, in the same transaction as the row
    change or after it — and the newest id seen.

    Audit ids grow in commit order (one writer at a time, rowid = max + 1), so nothing
    committed before the returned id is missed by the next call.
    """
    rows = conn.execute("SELECT id, reference FROM audit WHERE id > ? ORDER BY id",
                        (after_id,)).fetchall()
    if not rows:
        return after_id, set()
    return int(rows[-1][0]), {r[1] for r in rows if r[1] is not None}


def due(conn: sqlite3.Connection, now: float, limit: int = 16) -> list[Job]:
    """Jobs whose back-off has passed: deletions first (they are owed), then oldest uploads."""
    rows = conn.execute(
        "SELECT reference, state, attempts FROM archive "
        "WHERE state IN ('queued', 'deleting') AND next_try_at <= ? "
        "ORDER BY state = 'queued', queued_at, reference LIMIT ?",
        (now, limit),
    ).fetchall()
    return [Job(r[0], r[1], r[2]) for r in rows]


def state_of(conn: sqlite3.Connection, reference: str) -> str | None:
    row = conn.execute("SELECT state FROM archive WHERE reference = ?", (reference,)).fetchone()
    return None if row is None else str(row[0])


def mark_archived(conn: sqlite3.Connection, reference: str, objects: Iterable[ObjectRecord],
                  *, actor: str, details: dict[str, Any]) -> str:
    """Record a verified upload and its ``archive`` audit entry in ONE transaction.

    Returns:
        The audit entry's hash.
    """
    now = time.time()
    with transaction(conn):
        conn.execute("DELETE FROM archive_objects WHERE reference = ?", (reference,))
        conn.executemany(
            "INSERT INTO archive_objects (reference, kind, key, plain_sha256, plain_bytes, "
            "stored_sha256, stored_bytes, etag, uploaded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(reference, o.kind, o.key, o.plain_sha256, o.plain_bytes, o.stored_sha256,
              o.stored_bytes, o.etag, now) for o in objects],
        )
        conn.execute(
            "UPDATE archive SET state = 'archived', archived_at = ?, last_error = NULL "
            "WHERE reference = ? AND state = 'queued'", (now, reference))
        return _insert_audit(conn, "archive", actor, reference, details)


def mark_deleted(conn: sqlite3.Connection, reference: str, *, actor: str,
                 details: dict[str, Any]) -> str:
    """Record that a call's archived objects are gone, with its ``archive-delete`` audit
    entry, in ONE transaction."""
    now = time.time()
    with transaction(conn):
        conn.execute("DELETE FROM archive_objects WHERE reference = ?", (reference,))
        conn.execute("UPDATE archive SET state = 'deleted', deleted_at = ?, last_error = NULL "
                     "WHERE reference = ?", (now, reference))
        return _insert_audit(conn, "archive-delete", actor, reference, details)


def mark_failed(conn: sqlite3.Connection, reference: str, error: str, retry_at: float) -> None:
    """One failed attempt of a job: count it, keep the error, retry at ``retry_at``."""
    conn.execute("UPDATE archive SET attempts = attempts + 1, last_error = ?, next_try_at = ? "
                 "WHERE reference = ?", (error[:500], retry_at, reference))


def objects_of(conn: sqlite3.Connection, reference: str) -> list[ObjectRecord]:
    rows = conn.execute(
        "SELECT kind, key, plain_sha256, plain_bytes, stored_sha256, stored_bytes, etag "
        "FROM archive_objects WHERE reference = ? ORDER BY kind", (reference,)).fetchall()
    return [ObjectRecord(*r) for r in rows]


def set_service_error(conn: sqlite3.Connection, error: str | None) -> None:
    """Record the service's state after a round: ``error`` None = reachable. ``since`` keeps
    the time the current error began."""
    now = time.time()
    conn.execute(
        "INSERT INTO archive_service (id, error, since, checked_at) VALUES (1, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at, "
        "since = CASE WHEN excluded.error IS NULL THEN NULL "
        "WHEN archive_service.error IS NULL THEN excluded.since "
        "ELSE archive_service.since END, error = excluded.error",
        (None if error is None else error[:500], None if error is None else now, now))


def summary(conn: sqlite3.Connection) -> dict[str, Any]:
    """Counts by state, the oldest waiting job and the last error (``status``, ``archive
    status``)."""
    counts = dict.fromkeys(STATES, 0)
    for state, n in conn.execute("SELECT state, COUNT(*) FROM archive GROUP BY state"):
        counts[state] = n
    oldest = conn.execute("SELECT MIN(queued_at) FROM archive WHERE state = 'queued'"
                          ).fetchone()[0]
    last = conn.execute("SELECT MAX(archived_at) FROM archive").fetchone()[0]
    err = conn.execute("SELECT reference, last_error FROM archive WHERE last_error IS NOT NULL "
                       "AND state IN ('queued', 'deleting') ORDER BY next_try_at DESC LIMIT 1"
                       ).fetchone()
    service = conn.execute("SELECT error, since, checked_at FROM archive_service").fetchone()
    return {**counts, "oldest_queued_at": oldest, "last_archived_at": last,
            "last_error": None if err is None else {"reference": err[0], "error": err[1]},
            "service": None if service is None else {"error": service[0], "since": service[1],
                                                     "checked_at": service[2]}}


def states(db_path: Path, references: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``reference → {state, archived_at, attempts, last_error}`` for the CLI's ``calls`` and
    ``show``; empty when this index was never archived from (opens nothing for writing)."""
    refs = list(references)
    if not refs or not Path(db_path).exists():
        return {}
    conn = _connect(Path(db_path))
    try:
        if not has_tables(conn):
            return {}
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(refs), 500):
            chunk = refs[start:start + 500]
            for row in conn.execute(  # placeholders only, values bound
                "SELECT reference, state, archived_at, attempts, last_error FROM archive "  # noqa: S608
                f"WHERE reference IN ({', '.join('?' * len(chunk))})", chunk):
                out[row[0]] = {"state": row[1], "archived_at": row[2], "attempts": row[3],
                               "last_error": row[4]}
        return out
    finally:
        conn.close()
