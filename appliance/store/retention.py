"""Retention purge and erasure on request: audio goes, a tombstone without personal data stays.

docs/legal.md: recordings are kept only as long as the purpose needs, then deleted; a
caller may have their call erased; the controller must be able to prove both (docs/records.md).
Every deletion is one audit entry hash-chained with the rest (no personal data in
it: the chain is append-only and can never be erased itself).

Order of work, for crash safety: rewrite the call's record file as the tombstone will be
(store/callrecord.py: it must never keep what the index drops), delete the other files, then
write the tombstone and the audit entry in one transaction. A crash in between leaves a row
pointing at a missing file — ``appliance verify`` reports it and re-running the purge/erase
completes it — never audio on disk that nothing indexes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from appliance.config import RetentionConfig
from appliance.errors import StoreError
from appliance.store.callrecord import record_path, write_call_record
from appliance.store.db import Store, tombstone_fields
from appliance.store.lookup import locate_recording as locate_recording  # re-exports
from appliance.store.lookup import number_variants as number_variants
from appliance.store.lookup import sidecar_for as sidecar_for
from appliance.store.recorder import _fsync_dir

_LOGGER = logging.getLogger(__name__)

SECONDS_PER_DAY: Final = 86400.0
#: Audit actions written here.
PURGE_ACTION: Final = "purge"
PURGE_RUN_ACTION: Final = "purge-run"
ERASE_ACTION: Final = "erase"


class RecordNotFound(StoreError):
    """No call with that reference in the index."""


class AlreadyErased(StoreError):
    """The call was erased before: its tombstone (and the first reason) stay as they are."""


# ---------------------------------------------------------------------- files


def _reference_files(directory: Path, reference: str) -> list[Path]:
    """Every file of ``reference`` in one directory: audio, sidecar, leftovers (.tmp, partial)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob(reference + ".*") if p.is_file())


def delete_files(paths: Iterable[Path]) -> list[Path]:
    """Unlink ``paths`` (missing ones are fine) and fsync their directories; return the
    ones actually deleted.

    Raises:
        StoreError: a file exists but cannot be deleted (permissions).
    """
    deleted: list[Path] = []
    dirs: set[Path] = set()
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(f"cannot delete {path}: {exc.strerror}") from exc
        deleted.append(path)
        dirs.add(path.parent)
    for directory in dirs:
        # The deletion must survive a power cut like the recording did (recorder.py).
        with contextlib.suppress(OSError):
            _fsync_dir(directory)
    return deleted


def call_files(recordings_dir: Path, row: dict[str, Any], *, search: bool = False
               ) -> list[Path]:
    """Files on disk belonging to the call ``row``.

    Args:
        recordings_dir: root of the recordings tree.
        row: the call row.
        search: also walk the whole tree for ``<reference>.*`` (erasure must find a file
            even if the index lost its path; purge relies on the index).
    """
    found: set[Path] = set()
    recording = locate_recording(recordings_dir, row.get("recording_path"))
    if recording is not None:
        found.update(_reference_files(recording.parent, row["reference"]))
        found.add(recording)
    if search and Path(recordings_dir).is_dir():
        found.update(p for p in Path(recordings_dir).rglob(row["reference"] + ".*")
                     if p.is_file())
    return sorted(found)


def _rewrite_record(recordings_dir: Path, row: dict[str, Any], fields: dict[str, Any],
                    now: float, *, recording_deleted: bool, personal_deleted: bool,
                    path: Path | None = None) -> Path:
    """Rewrite the call's record file as the row will be after the tombstone (same columns,
    same time), where the record of the row as it is now lies; return that path."""
    after = {**row, **fields, **tombstone_fields(now, recording_deleted=recording_deleted,
                                                 personal_deleted=personal_deleted)}
    where = path if path is not None else record_path(recordings_dir, row)
    return write_call_record(recordings_dir, after, path=where)


# ---------------------------------------------------------------------- purge


@dataclass(frozen=True, slots=True)
class PurgeItem:
    """What the purge does (or would do) to one call.

    Attributes:
        reference: the call.
        ring_at: its ring time (epoch s) — what its age is measured from.
        outcome: its outcome (``voicemail`` uses ``retention.voicemail_days``).
        delete_recording: the audio and sidecar are past their retention.
        delete_personal: the caller's number/name and event details are past
            ``retention.metadata_days``.
        retention_days: the recording period that applied (recordings or voicemail).
    """

    reference: str
    ring_at: float
    outcome: str
    delete_recording: bool
    delete_personal: bool
    retention_days: int


@dataclass(slots=True)
class PurgeReport:
    """Result of :func:`purge`.

    Attributes:
        items: every call due (acted on unless listed in ``errors`` or a dry run).
        dry_run: nothing was changed.
        files_deleted: paths removed.
        errors: ``(reference, message)`` for calls that could not be purged (left as they
            were; the next run retries).
        compacted: the index was vacuumed and its WAL truncated (after personal data went).
    """

    items: list[PurgeItem] = field(default_factory=list)
    dry_run: bool = False
    files_deleted: list[Path] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    compacted: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON view for ``appliance purge --json``."""
        return {
            "dry_run": self.dry_run,
            "calls": [
                {"reference": i.reference, "ring_at": i.ring_at, "outcome": i.outcome,
                 "delete_recording": i.delete_recording, "delete_personal": i.delete_personal,
                 "retention_days": i.retention_days}
                for i in self.items
            ],
            "files_deleted": [str(p) for p in self.files_deleted],
            "errors": [{"reference": r, "error": e} for r, e in self.errors],
            "compacted": self.compacted,
        }


def plan_purge(store: Store, retention: RetentionConfig, now: float) -> list[PurgeItem]:
    """List what retention requires at ``now`` (changes nothing).

    A recording expires ``recordings_days`` (``voicemail_days`` for outcome ``voicemail``)
    after its call rang; the caller's number, name and event details expire after
    ``metadata_days``. The two are independent, as configured. A call still in progress is
    never touched. Age is measured from ``ring_at`` (``created_at`` when absent).
    """
    shortest = min(retention.recordings_days, retention.voicemail_days,
                   retention.metadata_days)
    items: list[PurgeItem] = []
    for row in store.list_calls(None, until=now - shortest * SECONDS_PER_DAY):
        if row["outcome"] == "in_progress":
            continue
        rang = row["ring_at"] if row["ring_at"] is not None else row["created_at"]
        age_days = (now - rang) / SECONDS_PER_DAY
        days = (retention.voicemail_days if row["outcome"] == "voicemail"
                else retention.recordings_days)
        delete_recording = (row["recording_path"] is not None
                            and row["recording_deleted_at"] is None and age_days >= days)
        delete_personal = (row["purged_at"] is None and row["erased_at"] is None
                           and age_days >= retention.metadata_days)
        if delete_recording or delete_personal:
            items.append(PurgeItem(row["reference"], rang, row["outcome"], delete_recording,
                                   delete_personal, days))
    items.reverse()  # oldest first: the order a reader of the audit chain expects
    return items


def purge(store: Store, recordings_dir: Path, retention: RetentionConfig, *, actor: str,
          now: float | None = None, dry_run: bool = False) -> PurgeReport:
    """Apply retention: delete expired audio and personal data, leave audited tombstones.

    Each purged call gets one ``purge`` audit entry (what went, which period applied — no
    number, no name); the run gets one ``purge-run`` entry with the counts and the periods,
    even when nothing expired, so the chain proves the schedule ran. After personal data
    went, the index is vacuumed so no copy lingers in free pages or the WAL.

    Args:
        store: the open index.
        recordings_dir: root of the recordings tree.
        retention: the configured periods.
        actor: see :func:`appliance.store.audit.current_actor`.
        now: epoch seconds (tests pass a fixed time); default ``time.time()``.
        dry_run: report only; no file, row or audit entry changes.
    """
    now = time.time() if now is None else now
    report = PurgeReport(items=plan_purge(store, retention, now), dry_run=dry_run)
    if dry_run:
        return report
    done: list[PurgeItem] = []
    for item in report.items:
        try:
            row = store.get_call(item.reference)
            if row is None:
                raise RecordNotFound(f"no call with reference {item.reference}")
            fields = {"purged_at": now} if item.delete_personal else {}
            # The record file first (it must not keep what the index is about to drop),
            # then the audio, then the tombstone: a crash in between is finished by a re-run.
            record = _rewrite_record(recordings_dir, row, fields, now,
                                     recording_deleted=item.delete_recording,
                                     personal_deleted=item.delete_personal)
            if item.delete_recording:
                files = [f for f in call_files(recordings_dir, row) if f != record]
                report.files_deleted.extend(delete_files(files))
            store.tombstone_sync(
                item.reference,
                action=PURGE_ACTION,
                actor=actor,
                details={"recording_deleted": item.delete_recording,
                         "personal_deleted": item.delete_personal,
                         "outcome": item.outcome,
                         "retention_days": (item.retention_days if item.delete_recording
                                            else None)},
                recording_deleted=item.delete_recording,
                personal_deleted=item.delete_personal,
                fields=fields or None,
                now=now,
            )
        except StoreError as exc:
            _LOGGER.error("Purge of %s failed: %s", item.reference, exc)
            report.errors.append((item.reference, str(exc)))
            continue
        done.append(item)
    if any(i.delete_personal for i in done):
        report.compacted = store.compact_sync()
    store.append_audit_sync(
        PURGE_RUN_ACTION,
        actor=actor,
        details={
            "recordings_deleted": sum(i.delete_recording for i in done),
            "personal_deleted": sum(i.delete_personal for i in done),
            "errors": len(report.errors),
            "recordings_days": retention.recordings_days,
            "voicemail_days": retention.voicemail_days,
            "metadata_days": retention.metadata_days,
        },
    )
    _LOGGER.info("Purge: %d calls, %d files deleted, %d errors", len(done),
                 len(report.files_deleted), len(report.errors))
    return report


# ---------------------------------------------------------------------- erasure


@dataclass(frozen=True, slots=True)
class EraseResult:
    """Result of :func:`erase_call`.

    Attributes:
        reference: the call.
        files_deleted: paths removed.
        audit_hash: the ``erase`` audit entry's hash.
        compacted: the index was vacuumed and the WAL fully truncated; False means a running
            daemon held part of the WAL, which its next checkpoint clears.
    """

    reference: str
    files_deleted: tuple[Path, ...]
    audit_hash: str
    compacted: bool


def erase_call(store: Store, recordings_dir: Path, reference: str, *, reason: str,
               actor: str) -> EraseResult:
    """Erase one call on request (GDPR Art. 17): audio, personal fields; keep a tombstone
    (reference, times, outcome, decision, ``erased_at``, ``erase_reason``) in the index and
    in the call's record file, which is rewritten without the caller and the audio keys.

    The whole recordings tree is searched for the reference's files, not only the indexed
    path. A call already erased is refused (:class:`AlreadyErased`): a second erasure would
    overwrite the first one's reason and time, which are the record of the request. A crash
    mid-erasure leaves no ``erased_at`` (the tombstone is written last), so a re-run finishes it.

    Args:
        store: the open index.
        recordings_dir: root of the recordings tree.
        reference: the call (canonical 8 digits).
        reason: why (required; stored in the row and the audit entry — must not itself hold
            personal data).
        actor: see :func:`appliance.store.audit.current_actor`.

    Raises:
        ValueError: empty reason.
        RecordNotFound: unknown reference.
        AlreadyErased: the call was erased before (nothing is changed or audited).
        StoreError: the call is still in progress, or a file/row could not be changed.
    """
    reason = reason.strip()
    if not reason:
        raise ValueError("an erasure needs a reason")
    row = store.get_call(reference)
    if row is None:
        raise RecordNotFound(f"no call with reference {reference}")
    if row["outcome"] == "in_progress":
        raise StoreError(f"call {reference} is in progress; erase it after it ends")
    if row["erased_at"] is not None:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["erased_at"]))
        raise AlreadyErased(f"call {reference} was already erased on {when} (reason: "
                            f"{row['erase_reason']!r}); nothing changed")
    now = time.time()
    fields = {"erased_at": now, "erase_reason": reason}
    files = call_files(recordings_dir, row, search=True)
    record = record_path(recordings_dir, row)
    recording_deleted = row["recording_path"] is not None or any(f != record for f in files)
    # The call's record file becomes the tombstone first (no caller, no audio keys), then
    # every other file of the reference goes, then the index row.
    _rewrite_record(recordings_dir, row, fields, now, recording_deleted=recording_deleted,
                    personal_deleted=True, path=record)
    deleted = delete_files(f for f in files if f != record)
    digest = store.tombstone_sync(
        reference,
        action=ERASE_ACTION,
        actor=actor,
        details={"reason": reason, "files_deleted": len(deleted),
                 "had_recording": row["recording_path"] is not None},
        recording_deleted=recording_deleted,
        personal_deleted=True,
        fields=fields,
        now=now,
    )
    compacted = store.compact_sync()
    _LOGGER.info("Call %s erased (%d files)", reference, len(deleted))
    return EraseResult(reference, tuple(deleted), digest, compacted)
