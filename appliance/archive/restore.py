"""``appliance archive restore --to DIR``: a box's state rebuilt from the archive on a new SD
card (docs/archive.md, "Restore a box").

1. The index comes back from Litestream's replica (newest state, at most ~1 s behind).
2. With ``--identity`` (the owner's age identity): the reference key, then every archived
   recording and sidecar, decrypted and checked against the index's SHA-256.
3. The reference counter is raised so the restored box **never reissues a reference**: to
   above the highest counter found anywhere — the replica's counter, every reference in the
   index and every reference with objects in the bucket (decoded with the key) — plus
   :data:`RESTORE_COUNTER_MARGIN` for calls the dead box may have begun in the last second
   before it died, neither replicated nor uploaded. That spends 0.01 % of the ten-million
   counter space per restore. The same value is written as the counter's high-water mark
   beside the key (``reference.counter``, appliance.store.highwater), which the daemon checks
   at start and never issues at or below.
4. One ``archive-restore`` audit entry says what was restored from where.

Without ``--identity`` only the index comes back: enough to read and to answer a subject
access request with the head office's key, not to take calls (the daemon would make a new
key; docs/archive.md).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from appliance.archive import queue
from appliance.archive.s3 import (
    AGE_SUFFIX,
    ArchiveError,
    Credentials,
    S3Client,
    iter_objects,
    key_backup_key,
)
from appliance.config import Config
from appliance.files import write_atomically
from appliance.store.db import COUNTER_KEY, Store, _connect
from appliance.store.highwater import REFERENCE_KEY_FILE, write_mark
from appliance.store.recorder import DIR_MODE, FILE_MODE, sha256_file

_LOGGER = logging.getLogger(__name__)

#: Counters skipped after the highest one seen (see the module docstring).
RESTORE_COUNTER_MARGIN: Final = 1000
INDEX_FILE: Final = "appliance.db"
RECORDINGS_DIR: Final = "recordings"


@dataclass(slots=True)
class RestoreReport:
    """What :func:`restore_box` did."""

    state_dir: Path
    calls: int = 0
    recordings: int = 0
    key_restored: bool = False
    counter: int = 0
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"state_dir": str(self.state_dir), "calls": self.calls,
                "recordings": self.recordings, "key_restored": self.key_restored,
                "counter": self.counter, "problems": self.problems}


def load_identities(path: Path) -> list[Any]:
    """The age identities in ``path`` (``age-keygen`` format; ``#`` lines are comments).

    Raises:
        ArchiveError: unreadable or no identity in it.
    """
    import pyrage

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ArchiveError(f"cannot read the identity file {path}: {exc.strerror}") from exc
    identities = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                identities.append(pyrage.x25519.Identity.from_str(line))
            except pyrage.IdentityError as exc:
                raise ArchiveError(f"{path}: not an age identity: {exc}") from exc
    if not identities:
        raise ArchiveError(f"{path}: no age identity in it")
    return identities


def download_decrypt(client: S3Client, bucket: str, key: str, identities: list[Any],
                     target: Path) -> None:
    """Fetch ``key`` and decrypt it into ``target`` (0640, written whole or not at all).

    Raises:
        ArchiveError: missing object, or not decryptable with ``identities``.
    """
    import pyrage

    try:
        cipher = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        raise ArchiveError(f"cannot fetch {key}: {exc}") from exc
    try:
        plain = pyrage.decrypt(cipher, identities)
    except pyrage.DecryptError as exc:
        raise ArchiveError(f"cannot decrypt {key} with the identity given: {exc}") from exc
    write_atomically(target, plain, FILE_MODE)


def restore_box(config: Config, credentials: Credentials, prefix: str, to: Path, *,
                identity_file: Path | None, actor: str, client: S3Client) -> RestoreReport:
    """Rebuild the state of box ``prefix`` into the new (or empty) directory ``to``.

    Raises:
        ArchiveError: ``to`` is not empty, no replica of the index, wrong identity.
    """
    from appliance.archive.replicate import restore_index

    to = Path(to)
    if to.exists() and any(to.iterdir()):
        raise ArchiveError(f"{to} is not empty; restore into a new directory")
    to.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(to, DIR_MODE)
    report = RestoreReport(to)
    db_path = to / INDEX_FILE
    restore_index(config.archive, credentials, prefix, db_path)
    store = Store.open(db_path)  # quick_check and any pending migration
    store.close_sync()
    identities = load_identities(identity_file) if identity_file is not None else None
    key: bytes | None = None
    if identities is not None:
        key_file = to / REFERENCE_KEY_FILE
        download_decrypt(client, config.archive.bucket, key_backup_key(prefix), identities,
                         key_file)
        os.chmod(key_file, 0o600)
        key = key_file.read_bytes()
        report.key_restored = True
    conn = queue.open_queue(db_path)
    try:
        report.calls = conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        if identities is not None:
            _restore_recordings(conn, client, config.archive.bucket, identities,
                                to / RECORDINGS_DIR, report)
        report.counter = _raise_counter(conn, client, config.archive.bucket, prefix, key)
        # The high-water mark beside the key (appliance.store.highwater): the daemon never
        # issues a counter at or below it, and finds the index level with it.
        write_mark(to, report.counter)
        from appliance.store.db import _insert_audit

        with queue.transaction(conn):
            _insert_audit(conn, "archive-restore", actor, None, {
                "bucket": config.archive.bucket, "prefix": prefix, "calls": report.calls,
                "recordings": report.recordings, "key_restored": report.key_restored,
                "counter": report.counter, "problems": len(report.problems)})
    finally:
        conn.close()
    Store.open(db_path, check=False).close_sync()  # checkpoint: one self-contained file
    return report


def _restore_recordings(conn: sqlite3.Connection, client: S3Client, bucket: str,
                        identities: list[Any], recordings_dir: Path,
                        report: RestoreReport) -> None:
    """Every archived recording and sidecar back under ``recordings_dir/YYYY/MM/DD/``, checked
    against the plaintext SHA-256 the index kept."""
    rows = conn.execute(
        "SELECT o.reference, o.kind, o.key, o.plain_sha256, c.recording_path "
        "FROM archive_objects o JOIN archive a USING (reference) "
        "JOIN calls c USING (reference) "
        "WHERE a.state = 'archived' AND o.kind IN ('recording', 'sidecar') "
        "ORDER BY o.reference, o.kind").fetchall()
    for reference, kind, key, plain_sha256, recording_path in rows:
        tail = Path(recording_path).parts[-4:-1] if recording_path else ()
        directory = recordings_dir.joinpath(*tail)
        directory.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        name = (Path(recording_path).name if kind == "recording"
                else Path(recording_path).with_suffix(".json").name)
        target = directory / name
        try:
            download_decrypt(client, bucket, key, identities, target)
        except ArchiveError as exc:
            report.problems.append(f"call {reference}: {exc}")
            continue
        if sha256_file(target) != plain_sha256:
            report.problems.append(f"call {reference}: {kind} differs from its archived hash")
        elif kind == "recording":
            report.recordings += 1
        if kind == "recording" and recording_path:
            conn.execute("UPDATE calls SET recording_path = ? WHERE reference = ?",
                         (str(target), reference))


def _raise_counter(conn: sqlite3.Connection, client: S3Client, bucket: str, prefix: str,
                   key: bytes | None) -> int:
    """Set the call counter above every counter the old box can have used; return it."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (COUNTER_KEY,)).fetchone()
    highest = int(row[0]) if row else 0
    if key is not None:
        from appliance.errors import ReferenceFormatError
        from appliance.reference import ReferenceCipher

        cipher = ReferenceCipher(key)
        references = {r[0] for r in conn.execute("SELECT reference FROM calls")}
        calls_prefix = f"{prefix}/calls/"
        references.update(o["Key"][len(calls_prefix):].split("/", 1)[0]
                          for o in iter_objects(client, bucket, calls_prefix)
                          if o["Key"].endswith(AGE_SUFFIX))
        for reference in references:
            try:
                highest = max(highest, cipher.counter_of(reference))
            except (ReferenceFormatError, ValueError):
                continue  # not one of this key's references
    counter = highest + RESTORE_COUNTER_MARGIN
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                 "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                 (COUNTER_KEY, str(counter)))
    return counter


def restored_counter(db_path: Path) -> int:
    """The call counter of an index (tests, ``restore`` output)."""
    conn = _connect(db_path)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (COUNTER_KEY,)).fetchone()
        return int(row[0]) if row else 0
    finally:
        conn.close()
