"""What the owner's page reads from the call index: search, one call, the audit trail.

The store's own reads (:class:`appliance.store.db.Store`: one call, its events, the audit
chain and its verification) are used as they are; the page adds only what a browser needs
and the CLI does not: a paginated search that answers in milliseconds at 10^6 calls
(docs/performance.md). Every query walks an index: newest-first order rides
``idx_calls_newest`` (schema v3), a number search ``idx_calls_caller_number``, a date range
the same expression index.

What the owner types in the one search box is read as a reference when it has exactly eight
digits (a Hungarian phone number has more), else as a caller number in any spelling
(:func:`appliance.store.lookup.number_variants`). A reference with a wrong check digit is
answered with the CLI's "did you mean" (:func:`appliance.reference.known_candidates`).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from appliance.errors import ReferenceFormatError, StoreError
from appliance.reference import REFERENCE_DIGITS, known_candidates, parse_reference
from appliance.store.db import BUSY_TIMEOUT_MS, OUTCOMES
from appliance.store.lookup import number_variants

PAGE_SIZE: Final = 50
AUDIT_PAGE_SIZE: Final = 200
#: The columns a list row shows (the list never needs the whole row).
_LIST_COLUMNS: Final = ("reference, line, direction, caller_number, caller_name, ring_at, "
                        "created_at, outcome, recording_decision, duration_s, erased_at, "
                        "recording_deleted_at")
_NEWEST: Final = "COALESCE(ring_at, created_at)"


@dataclass(frozen=True, slots=True)
class Search:
    """One search as the form sent it (all optional)."""

    text: str = ""
    since: float | None = None
    until: float | None = None
    outcome: str = ""
    line: str = ""
    page: int = 1


@dataclass(slots=True)
class SearchResult:
    """A page of calls, newest first, and what the search text was read as."""

    rows: list[dict[str, Any]]
    page: int
    has_next: bool
    reference: str | None = None
    """The canonical reference when the text was one."""
    error: str | None = None
    """Why the text is not a valid reference (with ``suggestions``)."""
    suggestions: list[str] = field(default_factory=list)


class CallIndex:
    """Read-only queries on the index file (a connection of its own, ``query_only``)."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(db_path)
        try:
            self._conn = sqlite3.connect(str(self.path), check_same_thread=False,
                                         isolation_level=None,
                                         timeout=BUSY_TIMEOUT_MS / 1000)
            self._conn.execute("PRAGMA query_only=ON")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        with self._lock:
            try:
                return [dict(r) for r in self._conn.execute(sql, params)]
            except sqlite3.Error as exc:
                raise StoreError(str(exc)) from exc

    def exists(self, reference: str) -> bool:
        """True when the index has the call ``reference`` (canonical digits)."""
        return bool(self._rows("SELECT 1 FROM calls WHERE reference = ?", (reference,)))

    def audit_page(self, *, before: int | None = None, limit: int = AUDIT_PAGE_SIZE
                   ) -> tuple[list[dict[str, Any]], int]:
        """The newest ``limit`` audit rows with ``id < before`` (newest first, ``details``
        decoded) and the chain's length; the store's ``audit_entries`` reads the whole chain,
        which at 10^6 calls is 10^6 rows."""
        sql = "SELECT * FROM audit"
        params: tuple[Any, ...] = ()
        if before is not None:
            sql += " WHERE id < ?"
            params = (int(before),)
        rows = self._rows(sql + " ORDER BY id DESC LIMIT ?", (*params, int(limit)))
        for row in rows:
            with contextlib.suppress(TypeError, ValueError):
                row["details"] = json.loads(row["details"])
        total = self._rows("SELECT COUNT(*) AS n FROM audit", ())[0]["n"]
        return rows, int(total)

    def search(self, query: Search) -> SearchResult:
        """One page of calls matching ``query``, newest first.

        Raises:
            StoreError: the index cannot be read.
        """
        page = max(1, query.page)
        where: list[str] = []
        params: list[Any] = []
        result = SearchResult(rows=[], page=page, has_next=False)
        text = query.text.strip()
        if text:
            digits = sum(ch.isdigit() for ch in text)
            # A reference's digit count, or none at all (a typo such as "42O-..." still gets the
            # reference parser's message rather than an empty number search).
            if digits in (REFERENCE_DIGITS, 0) and not text.lstrip().startswith("+"):
                try:
                    result.reference = parse_reference(text)
                except ReferenceFormatError as exc:
                    result.error = exc.reason
                    result.suggestions = known_candidates(exc, self.exists)
                    return result
                where.append("reference = ?")
                params.append(result.reference)
            else:
                variants = number_variants(text)
                where.append("caller_number IN (" + ", ".join("?" * len(variants)) + ")")
                params.extend(variants)
        if query.since is not None:
            where.append(f"{_NEWEST} >= ?")
            params.append(float(query.since))
        if query.until is not None:
            where.append(f"{_NEWEST} < ?")
            params.append(float(query.until))
        if query.outcome:
            if query.outcome not in OUTCOMES:
                raise StoreError(f"unknown outcome {query.outcome!r}")
            where.append("outcome = ?")
            params.append(query.outcome)
        if query.line:
            where.append("line = ?")
            params.append(query.line)
        sql = f"SELECT {_LIST_COLUMNS} FROM calls"  # noqa: S608 - constants; values are ? params
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {_NEWEST} DESC, id DESC LIMIT ? OFFSET ?"
        params += [PAGE_SIZE + 1, (page - 1) * PAGE_SIZE]
        rows = self._rows(sql, tuple(params))
        result.has_next = len(rows) > PAGE_SIZE
        result.rows = rows[:PAGE_SIZE]
        return result
