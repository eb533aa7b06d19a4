"""``appliance index rebuild``: the index recovered from the call record files.

The recordings tree is self-describing (docs/design.md §5, docs/records.md "The call record
file"): every finished call has a JSON record ``<reference>.json`` holding its finalized row
(times, outcome, recording decision, the caller as received, what the caller was told) — the
recording's sidecar (file, SHA-256, length) when it was recorded, the same file without the
audio keys when it was not. When the index is lost (deleted, replaced by an empty or old copy)
or corrupt, this puts a row back for every call it no longer knows, raises the reference
counter above every reference ever issued (the high-water mark beside the device key, and every
reference found on disk), and audits what it did. A sidecar written before record files
existed gives its recording a row with the outcome ``unknown``; a call that left neither (from
before record files, or a record that could not be written) is counted in the report as issued
but not in the rebuilt index.

A corrupt index file is moved aside (``appliance.db.corrupt-<time>``), never deleted: it is
evidence, and a specialist may recover more from it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from appliance.errors import ReferenceFormatError, StoreError
from appliance.reference import COUNTER_SPACE, ReferenceCipher, is_canonical
from appliance.store.callrecord import CALL_KEY, read_record
from appliance.store.db import CALL_COLUMNS, DIRECTIONS, OUTCOMES, RECORDING_DECISIONS, Store
from appliance.store.highwater import read_mark, write_mark
from appliance.store.recorder import PARTIAL_SUFFIX

_LOGGER = logging.getLogger(__name__)

REBUILD_ACTION: Final = "index-rebuilt"
#: What every call row rebuilt from a sidecar says about itself (an event of the call).
REBUILT_EVENT: Final = "rebuilt"


@dataclass(slots=True)
class RebuildReport:
    """What :func:`rebuild_index` found and did.

    Attributes:
        moved_aside: where a corrupt index was moved, if it was.
        sidecars: record files (recording sidecars included) read.
        unrecorded: of those, records of calls without a recording.
        added: call rows added (recordings the index did not know, plus unfinished ones).
        partials: unfinished recordings (``*.wav.partial``) given a row, for the daemon's
            start-up recovery to finalize.
        counter: the reference counter now (the next call gets counter + 1).
        not_indexed: references issued (counter) minus calls in the rebuilt index: calls
            whose record is lost for good (they left no record file).
        problems: sidecars that could not be used, each with why.
    """

    moved_aside: Path | None = None
    sidecars: int = 0
    unrecorded: int = 0
    added: int = 0
    partials: int = 0
    counter: int = 0
    not_indexed: int = 0
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON view for ``--json``."""
        return {"moved_aside": None if self.moved_aside is None else str(self.moved_aside),
                "sidecars": self.sidecars, "unrecorded": self.unrecorded, "added": self.added,
                "partials": self.partials,
                "counter": self.counter, "not_indexed": self.not_indexed,
                "problems": list(self.problems)}


def open_or_move_aside(db_path: Path) -> tuple[Store, Path | None]:
    """Open the index; a corrupt one is renamed ``<name>.corrupt-<time>`` and a new one made.

    Returns:
        (the open store, where the corrupt file went or None).
    """
    try:
        return Store.open(db_path), None
    except StoreError as exc:
        if not db_path.exists():
            raise
        stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        aside = db_path.with_name(f"{db_path.name}.corrupt-{stamp}")
        _LOGGER.warning("index %s cannot be used (%s); moved to %s", db_path, exc, aside)
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(db_path) + suffix)
            if source.exists():
                os.replace(source, Path(str(aside) + suffix))
        return Store.open(db_path), aside


def rebuild_index(db_path: Path, recordings_dir: Path, state_dir: Path, key: bytes | None, *,
                  actor: str) -> RebuildReport:
    """Rebuild the index at ``db_path`` from the sidecars under ``recordings_dir``.

    Idempotent: a reference already indexed is left as it is. Run it with the daemon stopped
    (the daemon refuses to answer on an index it knows is lost, and recovers unfinished
    recordings at its next start).

    Args:
        db_path: the index (created if missing; moved aside and recreated if corrupt).
        recordings_dir: root of the recordings tree.
        state_dir: where the device key and the counter's high-water mark live.
        key: the device key (None if lost: the counter then only comes from the mark).
        actor: who rebuilt (the audit entry names them).

    Raises:
        StoreError: the index cannot be created or written, or the mark cannot be written.
    """
    report = RebuildReport()
    cipher = ReferenceCipher(key) if key else None
    counter = read_mark(state_dir) or 0
    rows: list[dict[str, Any]] = []
    root = Path(recordings_dir)
    sidecars = sorted(root.rglob("*.json")) if root.is_dir() else []
    for sidecar in sidecars:
        row = _row_from_sidecar(sidecar, report)
        if row is not None:
            rows.append(row)
    partials = sorted(root.rglob("*" + PARTIAL_SUFFIX)) if root.is_dir() else []
    for partial in partials:
        reference = partial.name[: -len(PARTIAL_SUFFIX)]
        if not is_canonical(reference):
            report.problems.append(f"{partial}: not named by a call reference")
            continue
        created = partial.stat().st_mtime
        # The daemon's start-up recovery finalizes it and marks the call interrupted.
        rows.append({"reference": reference, "outcome": "in_progress",
                     "recording_decision": "pending", "created_at": created})
        report.partials += 1
    if cipher is not None:
        for row in rows:
            with contextlib.suppress(ReferenceFormatError, ValueError):
                counter = max(counter, cipher.counter_of(row["reference"]))
    counter = min(counter, COUNTER_SPACE - 1)
    store, report.moved_aside = open_or_move_aside(db_path)
    try:
        report.added, _digest = store.rebuild_sync(rows, counter=counter, actor=actor, details={
            "sidecars": report.sidecars, "unrecorded": report.unrecorded,
            "partials": report.partials,
            "problems": len(report.problems),
            "moved_aside": None if report.moved_aside is None else report.moved_aside.name,
        })
        report.counter = store.counter()
        indexed = len(store.list_calls(None))
    finally:
        store.close_sync()
    write_mark(state_dir, report.counter)
    report.not_indexed = max(0, report.counter - indexed)
    _LOGGER.info("index rebuilt: %d sidecars, %d rows added, counter %d", report.sidecars,
                 report.added, report.counter)
    return report


def _row_from_sidecar(sidecar: Path, report: RebuildReport) -> dict[str, Any] | None:
    """The call row a record file describes, or None (with a problem noted) if it cannot be
    used. The ``call`` section gives the row; a recording sidecar's audio keys give (and
    override) the recording's path, hash and size — the recording must lie beside it."""
    try:
        data = read_record(sidecar)
        reference = str(data["reference"])
        created = dt.datetime.fromisoformat(str(data["created"])).timestamp()
        call = data.get(CALL_KEY)
        if call is not None and not isinstance(call, dict):
            raise ValueError(f"{CALL_KEY!r} is not an object")
        if "file" not in data and call is None:
            raise KeyError("file")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        report.problems.append(f"{sidecar}: not a call record ({exc})")
        return None
    report.sidecars += 1
    if not is_canonical(reference):
        report.problems.append(f"{sidecar}: names {reference!r}, not a call reference")
        return None
    row = _row_from_call(sidecar, call or {}, report)
    if row.get("created_at") is None:
        row["created_at"] = created  # NOT NULL in the index
    if "file" not in data:
        report.unrecorded += 1
        row.setdefault("outcome", "unknown")
        row.setdefault("recording_decision", "none")
        return {**row, "reference": reference, "recording_path": None}
    try:
        audio = sidecar.with_name(str(data["file"]))
        sha256 = str(data["sha256"])
    except (KeyError, TypeError, ValueError) as exc:
        report.problems.append(f"{sidecar}: not a recording sidecar ({exc})")
        return None
    if audio.parent != sidecar.parent or "/" in str(data["file"]):
        report.problems.append(f"{sidecar}: names {reference!r} / {data['file']!r}, not a "
                               "recording beside it")
        return None
    if not audio.is_file():
        report.problems.append(f"{sidecar}: its recording {audio.name} is missing")
        return None
    duration_s = float(data.get("duration_s") or 0.0)
    recorded = {
        "reference": reference,
        "recording_path": str(audio),
        # The sidecar's hash is the witness from when the recording was made; `appliance
        # verify` compares the file with it.
        "recording_sha256": sha256,
        "recording_bytes": int(data.get("bytes") or audio.stat().st_size),
        "recording_decision": "recorded",
    }
    if not call:
        # A sidecar from before record files: only the recording is known.
        recorded.update({
            "duration_s": duration_s,
            "outcome": "unknown",
            "record_start_at": created,
            "end_at": created + duration_s,
            # A recording only ever starts after the notice was played out completely
            # (call/flow.py invariant), so its existence proves the notice.
            "notice_completed": 1,
        })
    return {**row, **recorded}


def _row_from_call(sidecar: Path, call: dict[str, Any], report: RebuildReport
                   ) -> dict[str, Any]:
    """The columns of a record's ``call`` section the index can take: known columns with
    plain values, and outcome, decision and direction among the allowed ones (a hand-edited
    file must not make the whole rebuild fail on a CHECK constraint)."""
    row: dict[str, Any] = {}
    for key, value in call.items():
        if key in ("reference", "recording_path") or key not in CALL_COLUMNS:
            continue
        if value is not None and not isinstance(value, str | int | float):
            report.problems.append(f"{sidecar}: {key} is not a plain value; left out")
            continue
        row[key] = value
    for key, allowed in (("outcome", OUTCOMES), ("recording_decision", RECORDING_DECISIONS),
                         ("direction", DIRECTIONS)):
        if key in row and row[key] not in allowed and row[key] is not None:
            report.problems.append(f"{sidecar}: {key} {row[key]!r} is not one the index "
                                   "knows; left out")
            del row[key]
    if row.get("outcome") is None:
        row.pop("outcome", None)
    if row.get("recording_decision") is None:
        row.pop("recording_decision", None)
    return row
