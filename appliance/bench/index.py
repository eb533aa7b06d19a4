"""Index look-ups with a million calls: ``Store.get_call``/``last_call`` and CLI wall time.

The rows are inserted with sqlite3 directly (one transaction, ``synchronous=OFF``: this is
set-up, not what is measured) into a database the real :class:`Store` created, so the schema,
indexes and migrations are the product's.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from appliance.bench.probes import percentile_ms
from appliance.reference import damm_check_digit, format_reference
from appliance.store.db import Store

#: Rows per executemany batch while filling.
BATCH: Final = 50_000
#: Random ``get_call`` look-ups timed, and ``last_call`` repetitions.
LOOKUPS: Final = 1000
LAST_REPEATS: Final = 50
#: CLI invocations timed per command (each is a fresh Python process).
CLI_REPEATS: Final = 5
#: Synthetic calls are a minute apart, going back from this epoch second.
T_END: Final = 1_750_000_000.0

Progress = Callable[[str], None]


def synthetic_reference(i: int) -> str:
    """A valid 8-digit reference (7 digits + Damm check digit) for synthetic row ``i``."""
    body = f"{i:07d}"
    return body + damm_check_digit(body)


def _rows(n: int) -> Iterator[tuple[Any, ...]]:
    for i in range(n):
        t = T_END - (n - i) * 60.0
        yield (synthetic_reference(i), "main", "in", f"+3630{i % 10_000_000:07d}", t, t + 2,
               t + 30, 1, "recorded", "bridged", 180.0, t)


def fill(db: Path, n: int, progress: Progress) -> None:
    """Create ``db`` with the Store schema and ``n`` synthetic finished calls."""
    Store.open(db).close_sync()
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        sql = ("INSERT INTO calls (reference, line, direction, caller_number, ring_at, "
               "answer_at, end_at, notice_completed, recording_decision, outcome, duration_s, "
               "created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")
        rows = _rows(n)
        done = 0
        with conn:
            while done < n:
                batch = [next(rows) for _ in range(min(BATCH, n - done))]
                conn.executemany(sql, batch)
                done += len(batch)
                progress(f"index: {done}/{n} synthetic calls")
    finally:
        conn.close()


def _cli_wall_s(state_dir: Path, *args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "appliance", "--config", "/dev/null", "--state-dir",
                    str(state_dir), *args], capture_output=True, check=True)
    return time.perf_counter() - t0


def measure_index(work: Path, n: int, *, progress: Progress) -> dict[str, Any]:
    """Fill an index with ``n`` calls; time look-ups in-process and through the CLI."""
    state_dir = work / "index"
    state_dir.mkdir(parents=True, exist_ok=True)
    db = state_dir / "appliance.db"
    t0 = time.perf_counter()
    fill(db, n, progress)
    fill_s = time.perf_counter() - t0
    rng = random.Random(1)  # noqa: S311 (reproducible sample of references)
    refs = [synthetic_reference(rng.randrange(n)) for _ in range(LOOKUPS)]
    store = Store.open(db)
    try:
        get_s = []
        for ref in refs:
            t = time.perf_counter()
            row = store.get_call(ref)
            get_s.append(time.perf_counter() - t)
            assert row is not None
        last_s = []
        for _ in range(LAST_REPEATS):
            t = time.perf_counter()
            store.last_call()
            last_s.append(time.perf_counter() - t)
    finally:
        store.close_sync()
    progress("index: timing `appliance show` and `appliance last`")
    ref = refs[0]
    show = [_cli_wall_s(state_dir, "show", format_reference(ref))
            for _ in range(CLI_REPEATS)]
    last = [_cli_wall_s(state_dir, "last") for _ in range(CLI_REPEATS)]
    return {
        "index_calls": n,
        "index_fill_s": round(fill_s, 2),
        "index_db_bytes": db.stat().st_size,
        "get_call_ms_p50": percentile_ms(get_s, 50),
        "get_call_ms_p95": percentile_ms(get_s, 95),
        "last_call_ms_p50": percentile_ms(last_s, 50),
        "last_call_ms_p95": percentile_ms(last_s, 95),
        "cli_show_wall_ms_p50": percentile_ms(show, 50),
        "cli_show_wall_ms_max": percentile_ms(show, 100),
        "cli_last_wall_ms_p50": percentile_ms(last, 50),
        "cli_last_wall_ms_max": percentile_ms(last, 100),
    }
