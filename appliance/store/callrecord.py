"""The call record file: every finished call leaves ``<reference>.json`` in the recordings tree.

docs/records.md ("The call record file"): the index is one SQLite file; when it is lost, the
recordings tree is what ``appliance index rebuild`` rebuilds it from. A recording's JSON sidecar
describes the audio (file, SHA-256, length); this module adds the call itself to it — the
index row as finalized (reference, times, outcome, recording decision, the caller as received,
what the caller was told) under the key ``call`` — and writes the same file, without the audio
keys, for a call that left no recording (opted out, hung up during the notice, not recorded
for lack of space, missed). So every answered call has a durable record beside where its
recording would be, and a lost index loses no call.

The file always says what the index row says: it is written (temp file, fsync, rename, fsync
of the directory) just before the row is finalized, and rewritten before a retention purge or
an erasure changes the row (:mod:`appliance.store.retention`), so the tombstone the index keeps
is all the file keeps: no caller number or name after the metadata purge or an erasure, no
audio keys once the recording is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from appliance.errors import StoreError
from appliance.store.lookup import locate_recording, sidecar_for
from appliance.store.recorder import make_dirs, write_json_atomically

#: The key of the call's row in a record file.
CALL_KEY: Final = "call"
#: Keys of a recording sidecar that describe the audio (store/recorder.py); dropped once the
#: recording is deleted.
AUDIO_KEYS: Final = ("file", "channels", "rate", "frames", "duration_s", "codec", "bytes",
                     "sha256")
#: Row columns a record does not carry: the row id is the index's own, and the recording's
#: path is where the record itself lies (``file`` names it).
_NOT_RECORDED: Final = frozenset({"id", "recording_path"})
#: Row times whose date directories may hold a call's record (the recorder files a recording
#: under the local date its recording started; a call without one under its creation date).
_DATED: Final = ("record_start_at", "created_at", "ring_at", "answer_at", "end_at")


def record_of_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The ``call`` section of a record: the row's columns but the id and the recording's path."""
    return {k: v for k, v in row.items() if k not in _NOT_RECORDED}


def _date_dir(recordings_dir: Path, t: float, tz: dt.tzinfo | None) -> Path:
    day = dt.datetime.fromtimestamp(t, tz=tz)
    return Path(recordings_dir) / f"{day:%Y}" / f"{day:%m}" / f"{day:%d}"


def record_path(recordings_dir: Path, row: Mapping[str, Any]) -> Path:
    """Where the record of ``row`` is (or is to be written).

    Beside the recording when the row names one (the recording's sidecar is the record); else
    an existing ``<reference>.json`` in the date directory of one of the call's times (a
    recording since deleted left its record where it was); else the local date directory of
    the call's creation.
    """
    name = f"{row['reference']}.json"
    recording = locate_recording(recordings_dir, row.get("recording_path"))
    if recording is not None:
        return sidecar_for(recording)
    candidates: list[Path] = []
    for key in _DATED:
        t = row.get(key)
        if isinstance(t, int | float):
            for tz in (None, dt.UTC):
                path = _date_dir(recordings_dir, float(t), tz) / name
                if path not in candidates:
                    candidates.append(path)
    for path in candidates:
        if path.is_file():
            return path
    created = row.get("created_at")
    t = float(created) if isinstance(created, int | float) else _first_time(row)
    return _date_dir(recordings_dir, t, None) / name


def _first_time(row: Mapping[str, Any]) -> float:
    for key in _DATED:
        t = row.get(key)
        if isinstance(t, int | float):
            return float(t)
    return 0.0


def read_record(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``.

    Raises:
        OSError: unreadable.
        ValueError: not a JSON object.
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def write_call_record(recordings_dir: Path, row: Mapping[str, Any], *,
                      path: Path | None = None) -> Path:
    """Write (or rewrite) the record of the call ``row``, durably; return its path.

    The audio keys of an existing recording sidecar are kept while the row still has its
    recording, and dropped once it has not (purged, erased, or never made).

    Args:
        recordings_dir: root of the recordings tree.
        row: the call's row as it is (or is about to be) in the index.
        path: where (default :func:`record_path` of ``row``; a purge passes where the record
            of the row *before* the purge is, beside the recording it is about to delete).

    Raises:
        StoreError: the file cannot be written (a full disk, permissions).
    """
    reference = str(row["reference"])
    if path is None:
        path = record_path(recordings_dir, row)
    existing: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        existing = read_record(path)
    has_recording = row.get("recording_path") is not None and row.get(
        "recording_deleted_at") is None
    data = {k: v for k, v in existing.items()
            if k != CALL_KEY and (has_recording or k not in AUDIO_KEYS)}
    data["reference"] = reference
    if "created" not in data:
        created = row.get("record_start_at") or row.get("created_at") or _first_time(row)
        data["created"] = dt.datetime.fromtimestamp(float(created)).astimezone().isoformat()
    data[CALL_KEY] = record_of_row(row)
    try:
        make_dirs(path.parent, Path(recordings_dir))
        write_json_atomically(path, data)
    except (OSError, TypeError, ValueError) as exc:
        raise StoreError(f"call {reference}: cannot write its record {path}: {exc}") from exc
    return path


class CallRecords:
    """The daemon's port for record files (:class:`appliance.call.flow.RecordPort`)."""

    def __init__(self, recordings_dir: Path) -> None:
        self.recordings_dir = Path(recordings_dir)

    async def save(self, row: Mapping[str, Any]) -> None:
        """Write the call's record in a thread (fsyncs); durable when this returns.

        Raises:
            StoreError: it cannot be written.
        """
        await asyncio.to_thread(write_call_record, self.recordings_dir, dict(row))
