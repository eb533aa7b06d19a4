"""Reading the index of a daemon running in another process (the tests' only window into it)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from typing import Any

POLL_S = 0.05


def query(db: Path, sql: str, *args: Any) -> list[sqlite3.Row]:
    """Run one read on a fresh connection (the daemon owns the file and writes meanwhile)."""
    con = sqlite3.connect(db, timeout=5)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


async def wait_for_state(db: Path, state: str, timeout_s: float) -> sqlite3.Row:
    """Poll until some call has an event ``state``; its call row (plus ``event_t``)."""
    async with asyncio.timeout(timeout_s):
        while True:
            if os.path.exists(db):
                rows = query(db, "SELECT c.*, e.t AS event_t FROM events e JOIN calls c "
                                 "ON c.id = e.call_id WHERE e.state = ?", state)
                if rows:
                    return rows[0]
            await asyncio.sleep(POLL_S)
