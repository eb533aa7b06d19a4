"""The call index: SQLite (the stdlib driver) with numbered migrations, one writer thread.

docs/design.md §5 and the concurrency rules (docs/architecture.md), as zigpy's ``appdb.py``: WAL,
ordered ``PRAGMA user_version`` migrations, an integrity check at open, and every write through ONE
worker. Here the worker is a single-thread executor: the event loop awaits each write via
``loop.run_in_executor``, and the write is committed before the await returns, so a returned
``create_call`` means a durable row (``synchronous=FULL``: call rows are few and precious).
Reads (the CLI, ``appliance show``/``verify``) go through a second connection guarded by a
lock; in WAL mode readers never block the writer and always see the last committed write.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

from appliance.errors import StoreError

_LOGGER = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Mode of the database file (and, by SQLite's rule, of its -wal/-shm files): docs/design.md §5,
#: plus group write: the owner's page runs as its own user in the ``appliance`` group and
#: appends to the audit chain (docs/web.md "Users and files").
DB_FILE_MODE: Final = 0o660
#: Mode of a state directory the store creates (group: the page creates -wal/-shm files too).
DB_DIR_MODE: Final = 0o770
#: How long a writer waits for another process's write lock (the CLI appending an audit row
#: while the daemon writes) before SQLITE_BUSY.
BUSY_TIMEOUT_MS: Final = 5000
#: prev_hash of the first audit row (docs/design.md §5: hash-chained audit).
GENESIS_HASH: Final = "0" * 64
#: meta key of the per-device call counter (docs/design.md §7: input of the reference permutation).
COUNTER_KEY: Final = "call_counter"

#: Values the CHECK constraints of schema v1 allow (docs/design.md §5; the brief adds
#: 'pending'/'in_progress' for a call still running and 'interrupted' for crash recovery).
DIRECTIONS: Final = ("in", "out")
RECORDING_DECISIONS: Final = ("recorded", "declined", "failed", "none", "pending")
OUTCOMES: Final = (
    "bridged",
    "voicemail",
    "abandoned",
    "missed",
    "error",
    "interrupted",
    "in_progress",
    # Schema v4: rebuilt from a sidecar after the index was lost (appliance index rebuild).
    "unknown",
)

#: Columns of ``calls`` a caller may set (everything but the primary key).
CALL_COLUMNS: Final = frozenset(
    {
        "reference",
        "line",
        "direction",
        "caller_number",
        "caller_name",
        "caller_withheld",
        "cid_date",
        "cid_time",
        "clock_synced",
        "ring_at",
        "answer_at",
        "notice_start_at",
        "notice_end_at",
        "notice_version",
        "notice_completed",
        "record_start_at",
        "agent_answer_at",
        "end_at",
        "recording_decision",
        "outcome",
        "recording_path",
        "recording_sha256",
        "recording_bytes",
        "duration_s",
        "language",
        "created_at",
        # Schema v2: the tombstone columns set by purge and erase.
        "recording_deleted_at",
        "purged_at",
        "erased_at",
        "erase_reason",
        # Schema v6 (the layered notice, docs/records.md "What the caller was told").
        "notice_form",
        "notice_form_reason",
        "notice_first_heard",
        "notice_layers",
    }
)

#: Columns holding the caller's personal data, cleared by erasure and by the metadata purge
#: (docs/legal.md: erasure per call; the tombstone keeps reference, times and outcome).
PERSONAL_COLUMNS: Final = ("caller_number", "caller_name")


def _sql_in(values: tuple[str, ...]) -> str:
    """Render a constant tuple as an SQL ``IN`` list (constants only, never user input)."""
    return "(" + ", ".join("'" + v + "'" for v in values) + ")"


# Schema v1 as DDL. sqlite-utils' create() cannot express CHECK constraints, so the schema is
# written out, as zigpy keeps appdb_schemas/schema_vN.sql.
_SCHEMA_V1: Final = (
    f"""
    CREATE TABLE calls (
        id INTEGER PRIMARY KEY,
        reference TEXT UNIQUE NOT NULL,
        line TEXT,
        direction TEXT CHECK (direction IS NULL OR direction IN {_sql_in(DIRECTIONS)}),
        caller_number TEXT,
        caller_name TEXT,
        caller_withheld INTEGER,
        cid_date TEXT,
        cid_time TEXT,
        clock_synced INTEGER,
        ring_at REAL,
        answer_at REAL,
        notice_start_at REAL,
        notice_end_at REAL,
        notice_version TEXT,
        notice_completed INTEGER,
        record_start_at REAL,
        agent_answer_at REAL,
        end_at REAL,
        recording_decision TEXT NOT NULL DEFAULT 'pending'
            CHECK (recording_decision IN {_sql_in(RECORDING_DECISIONS)}),
        outcome TEXT NOT NULL DEFAULT 'in_progress'
            CHECK (outcome IN {_sql_in(OUTCOMES[:-1])}),
        recording_path TEXT,
        recording_sha256 TEXT,
        recording_bytes INTEGER,
        duration_s REAL,
        language TEXT,
        created_at REAL NOT NULL
    )
    """,
    "CREATE INDEX idx_calls_caller_number ON calls (caller_number)",
    "CREATE INDEX idx_calls_ring_at ON calls (ring_at)",
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        call_id INTEGER NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
        t REAL NOT NULL,
        state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    )
    """,
    "CREATE INDEX idx_events_call_id ON events (call_id, t)",
    """
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        t REAL NOT NULL,
        action TEXT NOT NULL,
        actor TEXT NOT NULL,
        reference TEXT,
        details TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )
    """,
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
)


def _migrate_to_1(conn: sqlite3.Connection) -> None:
    """Create schema v1 (calls, events, audit, meta) in an empty database."""
    for statement in _SCHEMA_V1:
        conn.execute(statement)


def _migrate_to_2(conn: sqlite3.Connection) -> None:
    """Add the tombstone columns (retention purge and erasure).

    ``recording_deleted_at``: when the audio and sidecar were removed (purge or erase);
    ``purged_at``: when retention cleared the personal fields; ``erased_at``/``erase_reason``:
    an erasure on request (GDPR Art. 17). Columns, not new CHECK values: SQLite cannot alter a
    CHECK constraint without rebuilding the table, and the decision/outcome must stay as they
    were (they are part of what the tombstone proves).
    """
    for statement in (
        "ALTER TABLE calls ADD COLUMN recording_deleted_at REAL",
        "ALTER TABLE calls ADD COLUMN purged_at REAL",
        "ALTER TABLE calls ADD COLUMN erased_at REAL",
        "ALTER TABLE calls ADD COLUMN erase_reason TEXT",
        "CREATE INDEX idx_audit_reference ON audit (reference)",
    ):
        conn.execute(statement)


#: Ordered migrations: ``_MIGRATIONS[n]`` takes the schema from version n to n + 1.
def _migrate_to_3(conn: sqlite3.Connection) -> None:
    """Index the "newest first" order, so ``last``/``calls`` stay instant at 10^6 calls
    (without it ``appliance last`` sorted the whole table: 3.1 s in ``appliance bench``)."""
    conn.execute(
        "CREATE INDEX IF NOT EXISTS idx_calls_newest "
        "ON calls (COALESCE(ring_at, created_at) DESC, id DESC)"
    )


def _migrate_to_4(conn: sqlite3.Connection) -> None:
    """Allow the outcome ``unknown``: a call rebuilt from its recording's sidecar after the
    index was lost (``appliance index rebuild``) has a recording but no known outcome.

    SQLite cannot alter a CHECK constraint; widening an IN list changes no stored data, so
    the table's SQL is edited in ``sqlite_master`` under ``writable_schema`` — the procedure
    SQLite's ALTER TABLE documentation gives for such changes — with the schema version
    bumped so every connection reloads it.
    """
    row = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'calls'").fetchone()
    old = "'interrupted', 'in_progress')"
    if "'unknown'" in row[0]:
        return
    if old not in row[0]:
        raise StoreError("unexpected calls table definition; cannot add outcome 'unknown'")
    version = conn.execute("PRAGMA schema_version").fetchone()[0]
    conn.execute("PRAGMA writable_schema=ON")
    try:
        conn.execute(
            "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'calls'",
            (row[0].replace(old, "'interrupted', 'in_progress', 'unknown')"),))
        conn.execute(f"PRAGMA schema_version={version + 1}")
    finally:
        conn.execute("PRAGMA writable_schema=OFF")


def _migrate_to_5(conn: sqlite3.Connection) -> None:
    """Index the outcome in newest-first order: the owner's page filters by outcome, and a
    rare one (``error``) made SQLite walk all of ``idx_calls_newest`` — 0.7 s at 10^6 calls
    against the page's 150 ms (docs/performance.md)."""
    conn.execute(
        "CREATE INDEX IF NOT EXISTS idx_calls_outcome_newest "
        "ON calls (outcome, COALESCE(ring_at, created_at) DESC, id DESC)"
    )


def _migrate_to_6(conn: sqlite3.Connection) -> None:
    """The layered notice: what each caller was told (docs/records.md).

    ``notice_form``: ``full`` (the first layer) or ``short`` (a returning caller's form);
    ``notice_form_reason``: why; ``notice_first_heard``: 1 when the whole first layer was
    played (what makes a later call from that number a returning caller's);
    ``notice_layers``: JSON list of the layers played, each with its version and whether it
    was played in full. ``notice_version`` stays the version of the first thing said.
    """
    for statement in (
        "ALTER TABLE calls ADD COLUMN notice_form TEXT",
        "ALTER TABLE calls ADD COLUMN notice_form_reason TEXT",
        "ALTER TABLE calls ADD COLUMN notice_first_heard INTEGER",
        "ALTER TABLE calls ADD COLUMN notice_layers TEXT",
    ):
        conn.execute(statement)


_MIGRATIONS: Final[tuple[Callable[[sqlite3.Connection], None], ...]] = (
    _migrate_to_1,
    _migrate_to_2,
    _migrate_to_3,
    _migrate_to_4,
    _migrate_to_5,
    _migrate_to_6,
)
#: The schema version this code writes.
SCHEMA_VERSION: Final = len(_MIGRATIONS)


def canonical_json(value: object) -> str:
    """Serialise ``value`` deterministically (sorted keys, no spaces, no NaN) for hashing."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def audit_hash(prev_hash: str, t: float, action: str, actor: str, reference: str | None,
               details: Mapping[str, Any]) -> str:
    """Return the chain hash of one audit row: sha256(prev_hash ‖ canonical JSON of its content).

    Args:
        prev_hash: hex hash of the previous row, or :data:`GENESIS_HASH` for the first.
        t: epoch seconds of the entry (stored as REAL, which round-trips a Python float exactly).
        action: what happened (``call_finalized``, ``exported``, ``erased`` …).
        actor: who did it (``daemon``, ``cli:<user>``).
        reference: the call concerned, if any.
        details: JSON-serialisable mapping.
    """
    content = canonical_json(
        {"t": t, "action": action, "actor": actor, "reference": reference,
         "details": dict(details)}
    )
    return hashlib.sha256((prev_hash + content).encode("utf-8")).hexdigest()


def _connect(path: Path) -> sqlite3.Connection:
    """Open one connection with the pragmas every connection needs."""
    # isolation_level=None: the driver never opens implicit transactions; writes use explicit
    # BEGIN IMMEDIATE (our own).
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                           timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


class Store:
    """The SQLite call index.

    Contract: async write methods are called from the event loop; each runs on the store's
    single writer thread and is committed when the await returns. Sync read methods may be
    called from any thread (they use a separate, lock-guarded read connection).
    ``append_audit_sync`` is for the CLI only (it blocks until the writer thread committed).
    Create with :meth:`open`, end with :meth:`close`.
    """

    def __init__(self, path: Path, writer: sqlite3.Connection, reader: sqlite3.Connection) -> None:
        """Use :meth:`open`; this only wires already-opened connections."""
        self.path = path
        self._wconn = writer
        self._rconn = reader
        self._rlock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._closed = False
        # The file this store writes: deleted or replaced under a running daemon, the
        # daemon would go on writing an unlinked inode nobody can read (file_replaced()).
        st = os.stat(path)
        self._identity = (st.st_dev, st.st_ino)

    # ------------------------------------------------------------------ open / close

    @classmethod
    def open(cls, path: Path, *, check: bool = True) -> Store:
        """Open (creating if needed) the index at ``path``, check it and migrate it.

        Creates the parent directory (0770) if missing; the database file is 0660. Runs
        ``PRAGMA quick_check`` (unless ``check`` is False: the CLI's quick reads skip the
        full-file scan, which takes seconds on a large index; the daemon checks at start and
        ``appliance verify`` / ``doctor`` check too) and every pending migration.

        Raises:
            StoreError: the file is not a database, is damaged, or has a newer schema than
                this code knows.
        """
        path = Path(path)
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=DB_DIR_MODE)
            os.chmod(path.parent, DB_DIR_MODE)  # mkdir's mode is masked by the umask
        created = not path.exists()
        if created:
            # Create the file ourselves so it is 0660 from the first byte; SQLite gives the
            # -wal and -shm files the database file's mode.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, DB_FILE_MODE))
        mode = path.stat().st_mode & 0o777
        # A new file gets exactly 0660 (the umask may have narrowed it). An existing file only
        # loses bits beyond 0660, never gains any: an owner who made it unreadable meant it,
        # and a check must then fail on it — widening it back made `appliance verify` pass on
        # an index it had been denied.
        wanted = DB_FILE_MODE if created else mode & DB_FILE_MODE
        if mode != wanted:
            # Only the owner may chmod; a technician in the appliance group opening the
            # daemon's file must not fail here (a clear message, not EPERM).
            with contextlib.suppress(PermissionError):
                os.chmod(path, wanted)
        writer: sqlite3.Connection | None = None
        reader: sqlite3.Connection | None = None
        try:
            writer = _connect(path)
            problems = ([row[0] for row in writer.execute("PRAGMA quick_check")] if check
                        else ["ok"])
            if problems != ["ok"]:
                raise StoreError(f"{path}: quick_check failed: {'; '.join(problems[:5])}")
            mode = writer.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{path}: cannot enable WAL (journal_mode={mode})")
            # docs/design.md §5: synchronous=FULL — a committed call row survives a power cut.
            writer.execute("PRAGMA synchronous=FULL")
            _migrate(writer, path)
            reader = _connect(path)
        except sqlite3.DatabaseError as exc:
            for conn in (writer, reader):
                if conn is not None:
                    conn.close()
            raise StoreError(f"{path}: {exc}") from exc
        except BaseException:
            for conn in (writer, reader):
                if conn is not None:
                    conn.close()
            raise
        return cls(path, writer, reader)

    def file_replaced(self) -> bool:
        """Whether the index file at :attr:`path` is no longer the one this store writes
        (deleted, renamed away or replaced since :meth:`open`)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        except OSError:
            return False  # cannot tell (no permission): not evidence of a lost index
        return (st.st_dev, st.st_ino) != self._identity

    async def close(self) -> None:
        """Drain pending writes, checkpoint the WAL into the main file, close both connections.

        Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._close_writer)
        finally:
            # The executor is empty now; shutting it down does not block the loop.
            self._executor.shutdown(wait=True)
            with self._rlock:
                self._rconn.close()

    def close_sync(self) -> None:
        """Blocking :meth:`close` for the CLI (never call from the event loop)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._executor.submit(self._close_writer).result()
        finally:
            self._executor.shutdown(wait=True)
            with self._rlock:
                self._rconn.close()

    def _close_writer(self) -> None:
        try:
            # zigpy appdb: checkpoint at shutdown so the main file is self-contained.
            self._wconn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._wconn.close()

    # ------------------------------------------------------------------ writer plumbing

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(*args)`` on the writer thread and await its result."""
        if self._closed:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    @contextlib.contextmanager
    def _write_txn(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction on the writer connection (writer thread only).

        IMMEDIATE takes the write lock up front, so a read-then-write (audit chain, counter)
        cannot be interleaved by another process (the CLI) between its read and its write.
        """
        conn = self._wconn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot start a write: {exc}") from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # Also a failed COMMIT (disk full, I/O error): never leave the writer connection
            # inside a transaction, or every later write would fail.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(str(exc)) from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ async writes

    async def create_call(self, reference: str, **fields: Any) -> int:
        """Insert a call row; return its id. Durable when this returns.

        Args:
            reference: the call reference (unique).
            **fields: any other ``calls`` column; ``created_at`` defaults to now.

        Raises:
            StoreError: unknown column, duplicate reference or a CHECK violation.
        """
        return await self._run(self._create_call, reference, fields)

    def _create_call(self, reference: str, fields: dict[str, Any]) -> int:
        _check_columns(fields)
        record = {**fields, "reference": reference}
        record.setdefault("created_at", time.time())
        with self._write_txn() as conn:
            return _insert(conn, "calls", record)

    async def update_call(self, reference: str, **fields: Any) -> None:
        """Set columns of the call ``reference``. Durable when this returns.

        Raises:
            StoreError: unknown reference or column, or a CHECK violation.
        """
        await self._run(self._update_call, reference, fields)

    def _update_call(self, reference: str, fields: dict[str, Any]) -> None:
        _check_columns(fields)
        if "reference" in fields:
            raise StoreError("a call's reference cannot change")
        if not fields:
            return
        with self._write_txn() as conn:
            call_id = self._call_id(conn, reference)
            _update_call_row(conn, call_id, fields)

    async def add_event(self, reference: str, state: str, detail: str = "",
                        t: float | None = None) -> None:
        """Append a timeline event to the call ``reference`` (``t`` defaults to now).

        Raises:
            StoreError: unknown reference.
        """
        await self._run(self._add_event, reference, state, detail,
                        time.time() if t is None else t)

    def _add_event(self, reference: str, state: str, detail: str, t: float) -> None:
        with self._write_txn() as conn:
            call_id = self._call_id(conn, reference)
            _insert(conn, "events",
                    {"call_id": call_id, "t": t, "state": state, "detail": detail})

    async def next_counter(self, at_least: int = 1) -> int:
        """Atomically increment the per-device call counter and return it (first value 1).

        Survives reopen and is safe against other processes writing the same file.

        Args:
            at_least: the smallest value to return (one above the high-water mark kept
                beside the device key, :mod:`appliance.store.highwater`); the counter jumps
                to it when it is behind.
        """
        return await self._run(self._next_counter, at_least)

    def _next_counter(self, at_least: int) -> int:
        with self._write_txn() as conn:
            row = conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = MAX(CAST(value AS INTEGER) + 1, ?) "
                "RETURNING value",
                (COUNTER_KEY, str(max(1, at_least)), at_least),
            ).fetchone()
        return int(row[0])

    def counter(self) -> int:
        """The last call counter issued according to the index (0 when none was)."""
        rows = self._query("SELECT value FROM meta WHERE key = ?", (COUNTER_KEY,))
        return int(rows[0]["value"]) if rows else 0

    def rebuild_sync(self, rows: Sequence[Mapping[str, Any]], *, counter: int, actor: str,
                     details: Mapping[str, Any]) -> tuple[int, str]:
        """Add rebuilt call rows, raise the counter to ``counter``, audit it: ONE transaction.

        For ``appliance index rebuild`` (CLI only). A row whose reference is already indexed
        is left as it is (the index knows more than a sidecar).

        Args:
            rows: ``calls`` columns per call (``reference`` included).
            counter: the counter becomes at least this.
            actor: who rebuilt.
            details: audit details (counts, no personal data).

        Returns:
            (rows added, the audit row's hash).
        """
        for row in rows:
            _check_columns({k: v for k, v in row.items() if k != "reference"})
        _audit_details_json(details)
        if self._closed:
            raise StoreError("store is closed")
        return self._executor.submit(self._rebuild, rows, counter, actor, details).result()

    def _rebuild(self, rows: Sequence[Mapping[str, Any]], counter: int, actor: str,
                 details: Mapping[str, Any]) -> tuple[int, str]:
        added = 0
        with self._write_txn() as conn:
            for row in rows:
                record = dict(row)
                record.setdefault("created_at", time.time())
                columns = ", ".join(record)
                cursor = conn.execute(
                    f"INSERT OR IGNORE INTO calls ({columns}) "  # noqa: S608 (checked columns)
                    f"VALUES ({', '.join('?' * len(record))})",
                    tuple(record.values()),
                )
                if cursor.rowcount:
                    added += 1
                    conn.execute(
                        "INSERT INTO events (call_id, t, state, detail) VALUES "
                        "((SELECT id FROM calls WHERE reference = ?), ?, 'rebuilt', ?)",
                        (record["reference"], time.time(), _rebuilt_detail(record)),
                    )
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = MAX(CAST(value AS INTEGER), ?)",
                (COUNTER_KEY, str(counter), counter),
            )
            digest = _insert_audit(conn, "index-rebuilt", actor, None,
                                   {**details, "added": added})
        return added, digest

    async def append_audit(self, action: str, *, actor: str, reference: str | None = None,
                           details: Mapping[str, Any] | None = None) -> str:
        """Append a hash-chained audit row; return its hash. Durable when this returns.

        Raises:
            StoreError: ``details`` is not JSON-serialisable.
        """
        return await self._run(self._append_audit, action, actor, reference, details)

    def append_audit_sync(self, action: str, *, actor: str, reference: str | None = None,
                          details: Mapping[str, Any] | None = None) -> str:
        """Blocking :meth:`append_audit` for the CLI (never call from the event loop)."""
        if self._closed:
            raise StoreError("store is closed")
        return self._executor.submit(
            self._append_audit, action, actor, reference, details
        ).result()

    def _append_audit(self, action: str, actor: str, reference: str | None,
                      details: Mapping[str, Any] | None) -> str:
        _audit_details_json(details)  # fail before taking the write lock
        with self._write_txn() as conn:
            return _insert_audit(conn, action, actor, reference, details)

    # ------------------------------------------------------------------ records

    def tombstone_sync(self, reference: str, *, action: str, actor: str,
                       details: Mapping[str, Any] | None = None,
                       recording_deleted: bool = False, personal_deleted: bool = False,
                       fields: Mapping[str, Any] | None = None,
                       now: float | None = None) -> str:
        """Turn (part of) a call into a tombstone and audit it, in ONE transaction (CLI only).

        The caller deletes the files first (a crash then leaves a row pointing at missing
        files, which ``verify`` reports and a re-run completes, never audio nobody indexes).

        Args:
            reference: the call.
            action: audit action (``erase``, ``purge``).
            actor: who did it (:func:`appliance.store.audit.current_actor`).
            details: audit details; must not hold personal data (the chain is append-only).
            recording_deleted: set ``recording_deleted_at`` = now and ``recording_path`` NULL.
            personal_deleted: NULL the :data:`PERSONAL_COLUMNS` and blank every event detail
                of the call (details such as "caller +36…" carry the number).
            fields: further ``calls`` columns to set (``purged_at``, ``erased_at`` …).
            now: the time of the deletion (default: now); the caller passes the time its
                rewritten record file says (:func:`tombstone_fields`).

        Returns:
            The audit row's hash.

        Raises:
            StoreError: unknown reference or column, or the write failed.
        """
        fields = dict(fields or {})
        _check_columns(fields)
        _audit_details_json(details)
        if self._closed:
            raise StoreError("store is closed")
        return self._executor.submit(
            self._tombstone, reference, action, actor, details, recording_deleted,
            personal_deleted, fields, now,
        ).result()

    def _tombstone(self, reference: str, action: str, actor: str,
                   details: Mapping[str, Any] | None, recording_deleted: bool,
                   personal_deleted: bool, fields: dict[str, Any], now: float | None) -> str:
        fields.update(tombstone_fields(time.time() if now is None else now,
                                       recording_deleted=recording_deleted,
                                       personal_deleted=personal_deleted))
        # secure_delete: SQLite overwrites the freed cells with zeros, so the old number does
        # not linger in free pages of the file (the erase test greps the raw bytes).
        self._wconn.execute("PRAGMA secure_delete=ON")
        with self._write_txn() as conn:
            call_id = self._call_id(conn, reference)
            if fields:
                _update_call_row(conn, call_id, fields)
            if personal_deleted:
                conn.execute("UPDATE events SET detail = '' WHERE call_id = ?", (call_id,))
            return _insert_audit(conn, action, actor, reference, details)

    def compare_and_audit_sync(
        self, meta_key: str, value: str, *, action: str, actor: str,
        details_for: Callable[[str | None], Mapping[str, Any] | None],
    ) -> str | None:
        """Store ``value`` under ``meta_key`` and audit the change, atomically (CLI only).

        Inside one write transaction: read the old value; if it equals ``value`` do nothing;
        else call ``details_for(old)`` for the audit details, append the audit row, store
        ``value``. Used for the configuration fingerprint.

        Returns:
            The new audit row's hash, or None when nothing changed.
        """
        if self._closed:
            raise StoreError("store is closed")
        return self._executor.submit(
            self._compare_and_audit, meta_key, value, action, actor, details_for
        ).result()

    def _compare_and_audit(self, meta_key: str, value: str, action: str, actor: str,
                           details_for: Callable[[str | None], Mapping[str, Any] | None]
                           ) -> str | None:
        with self._write_txn() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (meta_key,)).fetchone()
            old = None if row is None else str(row[0])
            if old == value:
                return None
            digest = _insert_audit(conn, action, actor, None, details_for(old))
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (meta_key, value),
            )
            return digest

    def compact_sync(self) -> bool:
        """VACUUM the index and truncate the WAL, so erased bytes leave the files (CLI only).

        Returns:
            True when the WAL was fully checkpointed and truncated; False when another
            connection (a running daemon mid-read) kept part of it, in which case the next
            checkpoint (at the latest the daemon's close) finishes the job.
        """
        if self._closed:
            raise StoreError("store is closed")
        return self._executor.submit(self._compact).result()

    def _compact(self) -> bool:
        conn = self._wconn
        try:
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("VACUUM")
            busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot compact the index: {exc}") from exc
        return int(busy) == 0

    @staticmethod
    def _call_id(conn: sqlite3.Connection, reference: str) -> int:
        row = conn.execute("SELECT id FROM calls WHERE reference = ?", (reference,)).fetchone()
        if row is None:
            raise StoreError(f"no call with reference {reference!r}")
        return int(row[0])

    # ------------------------------------------------------------------ sync reads

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._rlock:
            try:
                cursor = self._rconn.execute(sql, params)
                names = [d[0] for d in cursor.description or ()]
                return [dict(zip(names, row, strict=True)) for row in cursor]
            except sqlite3.Error as exc:
                raise StoreError(str(exc)) from exc

    def get_call(self, reference: str) -> dict[str, Any] | None:
        """Return the call row ``reference`` as a dict, or None."""
        rows = self._query("SELECT * FROM calls WHERE reference = ?", (reference,))
        return rows[0] if rows else None

    def list_calls(self, limit: int | None = 50, *, number: str | None = None,
                   line: str | None = None, numbers: Sequence[str] | None = None,
                   since: float | None = None, until: float | None = None,
                   outcome: str | None = None) -> list[dict[str, Any]]:
        """Return up to ``limit`` calls (None = all), newest first, optionally filtered.

        "Newest" is by ring time (creation time for rows without one), then insertion order.

        Args:
            limit: most rows returned; None for no limit.
            number: exactly this caller number.
            line: only this line.
            numbers: any of these caller numbers (spellings of one number, see
                :func:`appliance.store.retention.number_variants`).
            since: ring time ≥ this epoch second.
            until: ring time < this epoch second.
            outcome: only this outcome.
        """
        where: list[str] = []
        params: list[Any] = []
        if number is not None:
            where.append("caller_number = ?")
            params.append(number)
        if numbers is not None:
            where.append("caller_number IN (" + ", ".join("?" * len(numbers)) + ")"
                         if numbers else "0")
            params.extend(numbers)
        if line is not None:
            where.append("line = ?")
            params.append(line)
        if since is not None:
            where.append("COALESCE(ring_at, created_at) >= ?")
            params.append(float(since))
        if until is not None:
            where.append("COALESCE(ring_at, created_at) < ?")
            params.append(float(until))
        if outcome is not None:
            where.append("outcome = ?")
            params.append(outcome)
        sql = "SELECT * FROM calls"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY COALESCE(ring_at, created_at) DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return self._query(sql, tuple(params))

    def count_calls(self) -> int:
        """How many calls the index holds (a count, not the rows: 10^6 rows as dicts would
        take over a gigabyte)."""
        return int(self._query("SELECT COUNT(*) AS n FROM calls")[0]["n"])

    def last_informed_call(self, number: str, since: float) -> dict[str, Any] | None:
        """The newest call from ``number`` ringing at or after ``since`` in which the caller
        heard the whole first layer of the notice, or None (the returning-caller check).

        An erased or purged call no longer has its number, so it never counts.
        """
        rows = self._query(
            "SELECT * FROM calls WHERE caller_number = ? AND notice_first_heard = 1 "
            "AND COALESCE(ring_at, created_at) >= ? "
            "ORDER BY COALESCE(ring_at, created_at) DESC, id DESC LIMIT 1",
            (number, since),
        )
        return rows[0] if rows else None

    def last_call(self) -> dict[str, Any] | None:
        """Return the newest call, or None if there is none."""
        rows = self.list_calls(1)
        return rows[0] if rows else None

    def events(self, reference: str) -> list[dict[str, Any]]:
        """Return the call's events in time order (``id``, ``call_id``, ``t``, ``state``,
        ``detail``); empty for an unknown reference."""
        return self._query(
            "SELECT e.* FROM events e JOIN calls c ON c.id = e.call_id "
            "WHERE c.reference = ? ORDER BY e.t, e.id",
            (reference,),
        )

    def audit_entries(self, reference: str | None = None) -> list[dict[str, Any]]:
        """Return every audit row (or only those of ``reference``) in chain order;
        ``details`` decoded from JSON."""
        if reference is None:
            rows = self._query("SELECT * FROM audit ORDER BY id")
        else:
            rows = self._query("SELECT * FROM audit WHERE reference = ? ORDER BY id",
                               (reference,))
        for row in rows:
            # Left as stored if unreadable; verify_audit_chain reports it.
            with contextlib.suppress(TypeError, ValueError):
                row["details"] = json.loads(row["details"])
        return rows

    def verify_audit_chain(self) -> list[str]:
        """Recompute the audit hash chain; return the problems found (empty list = intact).

        Detects an altered row (its hash no longer matches its content), a deleted or
        inserted row (the next row's prev_hash no longer matches), and a broken genesis.
        """
        problems: list[str] = []
        prev_hash = GENESIS_HASH
        prev_id: int | None = None
        for row in self._query("SELECT * FROM audit ORDER BY id"):
            rid = row["id"]
            if row["prev_hash"] != prev_hash:
                after = "genesis" if prev_id is None else f"row {prev_id}"
                problems.append(f"audit row {rid}: prev_hash does not match {after} "
                                "(row deleted, inserted or reordered)")
            try:
                details = json.loads(row["details"])
                expected = audit_hash(row["prev_hash"], row["t"], row["action"], row["actor"],
                                      row["reference"], details)
            except (TypeError, ValueError) as exc:
                problems.append(f"audit row {rid}: unreadable content ({exc})")
            else:
                if expected != row["hash"]:
                    problems.append(f"audit row {rid}: hash does not match content "
                                    "(row altered)")
            prev_hash = row["hash"]
            prev_id = rid
        return problems


def _rebuilt_detail(record: Mapping[str, Any]) -> str:
    """The ``rebuilt`` event's detail: what the row was rebuilt from, and what is not known."""
    if record.get("outcome") == "in_progress":
        return ("index rebuilt: an unfinished recording was found; the daemon finalizes it "
                "at its next start")
    if record.get("outcome") == "unknown":
        return ("index rebuilt from the recording's sidecar: caller, outcome and times other "
                "than the recording's are not known")
    return "index rebuilt from the call's record file; its events are not known"


def tombstone_fields(now: float, *, recording_deleted: bool, personal_deleted: bool
                     ) -> dict[str, Any]:
    """The columns a purge or an erasure sets besides its own (``purged_at``, ``erased_at`` …):
    the recording's path gone and its deletion time, the caller's personal data cleared."""
    fields: dict[str, Any] = {}
    if recording_deleted:
        fields.update(recording_deleted_at=now, recording_path=None)
    if personal_deleted:
        fields.update(dict.fromkeys(PERSONAL_COLUMNS))
    return fields


def _audit_details_json(details: Mapping[str, Any] | None) -> str:
    """Canonical JSON of audit details, or StoreError if they are not serialisable."""
    try:
        return canonical_json(dict(details or {}))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"audit details not serialisable: {exc}") from exc


def _insert_audit(conn: sqlite3.Connection, action: str, actor: str, reference: str | None,
                  details: Mapping[str, Any] | None) -> str:
    """Append one chained audit row inside the caller's IMMEDIATE transaction; return its hash.

    Reading the last hash and inserting under the same write lock keeps one chain even with
    the daemon and the CLI writing the same file.
    """
    details = dict(details or {})
    details_json = _audit_details_json(details)
    t = time.time()
    last = conn.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    prev_hash = last[0] if last else GENESIS_HASH
    digest = audit_hash(prev_hash, t, action, actor, reference, details)
    conn.execute(
        "INSERT INTO audit (t, action, actor, reference, details, prev_hash, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (t, action, actor, reference, details_json, prev_hash, digest),
    )
    return digest


# The store writes with the stdlib driver, not sqlite-utils: that package pulls in click,
# pluggy, dateutil and numpy-type mapping the daemon never uses (≈ 5 MB of its RSS,
# docs/performance.md). Column names reaching these two helpers are checked against the
# schema first (_check_columns) or fixed here, so they are safe as SQL identifiers.

def _sql_value(value: Any) -> Any:
    """A value as SQLite stores it: containers as JSON text, everything else as given."""
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=repr, ensure_ascii=False)
    return value


def _insert(conn: sqlite3.Connection, table: str, record: Mapping[str, Any]) -> int:
    """INSERT one row into ``table``; return its rowid."""
    columns = ", ".join(f'"{c}"' for c in record)
    marks = ", ".join("?" * len(record))
    cursor = conn.execute(f'INSERT INTO "{table}" ({columns}) VALUES ({marks})',  # noqa: S608
                          [_sql_value(v) for v in record.values()])
    return int(cursor.lastrowid or 0)


def _update_call_row(conn: sqlite3.Connection, call_id: int, fields: Mapping[str, Any]) -> None:
    """UPDATE the ``calls`` row ``call_id`` with ``fields`` (names already checked)."""
    sets = ", ".join(f'"{c}" = ?' for c in fields)
    conn.execute(f"UPDATE calls SET {sets} WHERE id = ?",  # noqa: S608
                 [*(_sql_value(v) for v in fields.values()), call_id])


def _check_columns(fields: Mapping[str, Any]) -> None:
    """Reject column names outside the schema (they become SQL identifiers)."""
    unknown = set(fields) - CALL_COLUMNS
    if unknown:
        raise StoreError(f"unknown calls column(s): {', '.join(sorted(unknown))}")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION`, one committed step per migration."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: schema version {version} is newer than this software ({SCHEMA_VERSION})"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        _LOGGER.info("Migrating %s to schema version %d", path, target)
        # DDL is transactional in SQLite: a crash mid-migration leaves the old version.
        conn.execute("BEGIN IMMEDIATE")
        try:
            _MIGRATIONS[target - 1](conn)
            conn.execute(f"PRAGMA user_version={target}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
