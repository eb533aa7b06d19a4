"""``appliance verify``: every recording against its hash, every file against the index, the
audit chain against itself — problems reported by call reference.

docs/records.md and docs/legal.md (accountability: integrity proof). Three independent
witnesses of a recording's hash exist: the index row, the JSON sidecar and the
``call-finalized`` audit entry (hash-chained, so it cannot be edited unnoticed). A file that
matches an index someone rewrote along with it still disagrees with the chain.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from appliance.store.db import Store
from appliance.store.recorder import PARTIAL_SUFFIX, sha256_file
from appliance.store.retention import locate_recording, sidecar_for

_LOGGER = logging.getLogger(__name__)

VERIFY_ACTION: Final = "verify"
#: The daemon's audit action when a recording is indexed (call/flow.py, daemon/storage.py).
FINALIZED_ACTION: Final = "call-finalized"
_AUDIT_ROW: Final = re.compile(r"audit row (\d+)")

# Problem kinds (stable strings: ``--json`` consumers match on them).
MISSING: Final = "missing"
ALTERED: Final = "altered"
OUTSIDE: Final = "outside-tree"
SIDECAR_MISSING: Final = "sidecar-missing"
SIDECAR_MISMATCH: Final = "sidecar-mismatch"
INDEX_MISMATCH: Final = "index-differs-from-audit"
#: The row's recording decision or outcome differs from its last ``call-finalized`` entry.
DECISION_MISMATCH: Final = "decision-differs-from-audit"
ORPHAN: Final = "orphan-file"
#: A call's record file (store/callrecord.py) says another outcome or recording decision than
#: its index row.
RECORD_MISMATCH: Final = "record-differs-from-index"
CHAIN: Final = "audit-chain"
#: A file or directory verify had to look at but could not (permissions, I/O error): never
#: a pass — what could not be read was not checked.
UNREADABLE: Final = "unreadable"


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding.

    Attributes:
        reference: the call concerned (None for a chain row without one).
        kind: one of the module's kind constants (``missing``, ``altered`` …).
        message: a sentence for a human.
    """

    reference: str | None
    kind: str
    message: str


@dataclass(slots=True)
class VerifyReport:
    """Result of :func:`verify_records`.

    Attributes:
        recordings_checked: recordings whose hash was recomputed.
        audit_entries: rows of the audit chain checked.
        problems: everything found; empty means clean.
    """

    recordings_checked: int = 0
    audit_entries: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON view for ``appliance verify --json``."""
        return {
            "ok": self.ok,
            "recordings_checked": self.recordings_checked,
            "audit_entries": self.audit_entries,
            "problems": [{"reference": p.reference, "kind": p.kind, "message": p.message}
                         for p in self.problems],
        }


def verify_records(store: Store, recordings_dir: Path, *, actor: str | None = None
                   ) -> VerifyReport:
    """Check every recording, every file under ``recordings_dir`` and the audit chain.

    Per indexed recording (not deleted): the file exists inside the tree, its SHA-256 equals
    the index's, the sidecar exists and agrees, and the last ``call-finalized`` audit entry
    naming a hash agrees. An indexed call's record file (``<reference>.json``, recorded or not)
    must say the row's outcome and recording decision. Any other file in the tree is an orphan
    (audio nobody indexes is personal data nobody can erase), except the live files of a call
    in progress. Then the whole audit chain is recomputed.

    Args:
        store: the open index.
        recordings_dir: root of the recordings tree.
        actor: when given, a ``verify`` audit entry (counts only) is appended afterwards.
    """
    report = VerifyReport()
    entries = store.audit_entries()
    report.audit_entries = len(entries)
    finalized: dict[str, str] = {}
    #: reference → details of its last call-finalized entry (what the chain says happened).
    last_final: dict[str, dict[str, Any]] = {}
    for entry in entries:
        details = entry["details"]
        if entry["action"] == FINALIZED_ACTION and entry["reference"] and isinstance(
                details, dict):
            last_final[entry["reference"]] = details
            if details.get("sha256"):
                finalized[entry["reference"]] = details["sha256"]

    known: set[Path] = set()
    live: set[str] = set()
    rows: dict[str, dict[str, Any]] = {}
    for row in store.list_calls(None):
        ref = row["reference"]
        rows[ref] = row
        if row["outcome"] == "in_progress":
            live.add(ref)
        _check_decision(report, row, last_final.get(ref))
        if row["recording_deleted_at"] is not None:
            continue
        if row["recording_path"] is None:
            if row["recording_decision"] == "recorded":
                report.problems.append(Problem(ref, MISSING,
                                               "recorded, but the index names no file"))
            continue
        _check_recording(report, recordings_dir, row, finalized.get(ref), known)

    root = Path(recordings_dir)
    for path in _tree_files(root, report):
        ref = path.name.split(".", 1)[0]
        if path.name == f"{ref}.json" and ref in rows:
            _check_record(report, path, rows[ref])  # recorded or not: the call's record
            continue
        if path.resolve() in known:
            continue
        if ref in live:
            continue  # the recorder's .wav.partial / encoder's .tmp of a running call
        what = ("an unfinished recording (the daemon recovers it at start-up)"
                if path.name.endswith(PARTIAL_SUFFIX) else "a file the index does not know")
        report.problems.append(Problem(ref, ORPHAN, f"{path}: {what}"))

    by_id = {e["id"]: e["reference"] for e in entries}
    for message in store.verify_audit_chain():
        match = _AUDIT_ROW.match(message)
        ref = by_id.get(int(match.group(1))) if match else None
        report.problems.append(Problem(ref, CHAIN, message))

    if actor is not None:
        store.append_audit_sync(VERIFY_ACTION, actor=actor, details={
            "recordings_checked": report.recordings_checked,
            "audit_entries": report.audit_entries,
            "problems": len(report.problems),
            "ok": report.ok,
        })
    for problem in report.problems:
        _LOGGER.warning("verify: %s %s: %s", problem.reference, problem.kind, problem.message)
    return report


def _tree_files(root: Path, report: VerifyReport) -> list[Path]:
    """Every regular file under ``root``, sorted; a directory that cannot be listed is an
    :data:`UNREADABLE` problem (``Path.rglob`` would skip it silently). No tree at all is an
    empty list: the index's own rows then report their files missing."""
    try:
        root.stat()
    except FileNotFoundError:
        return []
    except OSError as exc:
        report.problems.append(Problem(None, UNREADABLE, f"{root}: {exc.strerror}"))
        return []

    def unreadable(exc: OSError) -> None:
        report.problems.append(Problem(None, UNREADABLE,
                                       f"{exc.filename}: {exc.strerror} (not checked)"))

    files: list[Path] = []
    for top, _dirs, names in os.walk(root, onerror=unreadable):
        for name in names:
            path = Path(top) / name
            if path.is_file():
                files.append(path)
    return sorted(files)


def _absent(path: Path) -> str | None:
    """None when ``path`` exists; :data:`MISSING` when it does not; otherwise why it cannot be
    looked at (a file in a directory verify may not enter is neither there nor missing)."""
    try:
        path.stat()
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return MISSING
        return f"cannot be read: {exc.strerror}"
    return None


def _check_decision(report: VerifyReport, row: dict[str, Any],
                    final: dict[str, Any] | None) -> None:
    """The row's recording decision and outcome agree with its last call-finalized entry
    (the chain cannot be edited unnoticed; the row can)."""
    if final is None:
        return
    for key in ("recording_decision", "outcome"):
        chained = final.get(key)
        if chained is not None and chained != row[key]:
            report.problems.append(Problem(
                row["reference"], DECISION_MISMATCH,
                f"index {key} {row[key]!r} differs from the audit chain's {chained!r}"))


def _check_record(report: VerifyReport, path: Path, row: dict[str, Any]) -> None:
    """The call's record file says what its row says (outcome, recording decision)."""
    try:
        call = json.loads(path.read_text(encoding="utf-8")).get("call")
    except OSError as exc:
        report.problems.append(Problem(row["reference"], UNREADABLE,
                                       f"{path} cannot be read: {exc.strerror}"))
        return
    except (ValueError, AttributeError) as exc:
        report.problems.append(Problem(row["reference"], RECORD_MISMATCH,
                                       f"{path}: unreadable ({exc})"))
        return
    if not isinstance(call, dict):
        return  # a recording's sidecar from before record files: checked as a sidecar
    for key in ("outcome", "recording_decision"):
        if key in call and call[key] != row[key] and row["outcome"] != "in_progress":
            report.problems.append(Problem(
                row["reference"], RECORD_MISMATCH,
                f"{path}: {key} {call[key]!r} differs from the index's {row[key]!r}"))


def _check_recording(report: VerifyReport, recordings_dir: Path, row: dict[str, Any],
                     audit_sha: str | None, known: set[Path]) -> None:
    """Check one indexed recording; add problems to ``report``; add its files to ``known``."""
    ref = row["reference"]
    index_sha = row["recording_sha256"]
    path = locate_recording(recordings_dir, row["recording_path"])
    if path is None:
        report.problems.append(Problem(ref, OUTSIDE, f"indexed path {row['recording_path']} "
                                                     "is outside the recordings tree"))
        return
    sidecar = sidecar_for(path)
    known.update({path, sidecar})
    absent = _absent(path)
    if absent == MISSING:
        report.problems.append(Problem(ref, MISSING, f"{path} is missing"))
    elif absent is not None:
        report.problems.append(Problem(ref, UNREADABLE, f"{path} {absent}"))
    else:
        try:
            actual = sha256_file(path)
        except OSError as exc:
            actual = None
            report.problems.append(Problem(ref, UNREADABLE,
                                           f"{path} cannot be read: {exc.strerror}"))
        else:
            report.recordings_checked += 1
        if actual is not None and actual != index_sha:
            report.problems.append(Problem(
                ref, ALTERED, f"{path}: SHA-256 {actual} differs from the index's {index_sha}"))
    if audit_sha is not None and audit_sha != index_sha:
        report.problems.append(Problem(
            ref, INDEX_MISMATCH,
            f"index SHA-256 {index_sha} differs from the audit chain's {audit_sha}"))
    absent = _absent(sidecar)
    if absent == MISSING:
        report.problems.append(Problem(ref, SIDECAR_MISSING, f"{sidecar} is missing"))
        return
    try:
        side_sha = json.loads(sidecar.read_text(encoding="utf-8")).get("sha256")
    except OSError as exc:
        report.problems.append(Problem(ref, UNREADABLE,
                                       f"{sidecar} cannot be read: {exc.strerror}"))
        return
    except (ValueError, AttributeError) as exc:
        report.problems.append(Problem(ref, SIDECAR_MISMATCH, f"{sidecar}: unreadable ({exc})"))
        return
    if side_sha != index_sha:
        report.problems.append(Problem(
            ref, SIDECAR_MISMATCH, f"{sidecar}: SHA-256 {side_sha} differs from the index's"))
