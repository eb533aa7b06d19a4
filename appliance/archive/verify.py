"""``appliance archive verify``: the bucket against the index — missing, extra, altered.

* **missing** — the index says a call is archived, its object is not in the bucket;
* **extra** — an object under ``<prefix>/calls/`` the index does not list as archived: a
  call erased or purged whose copies are not deleted yet, or something nobody put there;
* **altered** — size or ETag differ from what was uploaded; with ``--identity`` every object
  is also decrypted and its plaintext SHA-256 compared with the index's (slow: a download).

Calls still waiting for upload are reported apart (a queue, not a difference). Read-only on
both sides.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.archive import queue
from appliance.archive.s3 import (
    S3Client,
    index_path,
    iter_objects,
    key_backup_key,
)
from appliance.store.db import _connect
from appliance.store.highwater import REFERENCE_KEY_FILE


@dataclass(slots=True)
class VerifyReport:
    archived: int = 0
    objects: int = 0
    waiting: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.altered)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "archived_calls": self.archived, "objects": self.objects,
                "waiting": self.waiting, "missing": self.missing, "extra": self.extra,
                "altered": self.altered}


def verify_archive(db_path: Path, client: S3Client, bucket: str, prefix: str, *,
                   identities: list[Any] | None = None,
                   expect_replica: bool = True) -> VerifyReport:
    """Compare ``<prefix>/calls/`` in ``bucket`` with the index at ``db_path``; also report
    a missing backup of the reference key and a missing replica of the index (a restore
    needs both; ``expect_replica`` False when ``archive.replicate_index`` is off)."""
    report = VerifyReport()
    # Expected: the archived calls whose recording the box still keeps (an erased or purged
    # call's copies are "extra" until the uploader has deleted them).
    conn = _connect(Path(db_path))
    try:
        expected: dict[str, tuple[int, str, str]] = {}
        if queue.has_tables(conn):
            for key, size, etag, plain_sha in conn.execute(
                    "SELECT o.key, o.stored_bytes, o.etag, o.plain_sha256 "
                    "FROM archive_objects o JOIN archive a USING (reference) "
                    "JOIN calls c USING (reference) WHERE a.state = 'archived' AND "
                    "c.recording_deleted_at IS NULL AND c.erased_at IS NULL "
                    "AND c.purged_at IS NULL"):
                expected[key] = (size, etag, plain_sha)
            report.archived = conn.execute(
                "SELECT COUNT(*) FROM archive a JOIN calls c USING (reference) "
                "WHERE a.state = 'archived' AND c.recording_deleted_at IS NULL "
                "AND c.erased_at IS NULL AND c.purged_at IS NULL").fetchone()[0]
            report.waiting = conn.execute(
                "SELECT COUNT(*) FROM archive WHERE state = 'queued'").fetchone()[0]
    finally:
        conn.close()
    seen: set[str] = set()
    for obj in iter_objects(client, bucket, f"{prefix}/calls/"):
        key = obj["Key"]
        report.objects += 1
        if key not in expected:
            report.extra.append(key)
            continue
        seen.add(key)
        size, etag, plain_sha = expected[key]
        if int(obj["Size"]) != size or str(obj.get("ETag", "")).strip('"') != etag:
            report.altered.append(f"{key}: {obj['Size']} bytes, ETag {obj.get('ETag')} "
                                  f"(uploaded {size} bytes, ETag {etag})")
        elif identities is not None and not _plaintext_matches(client, bucket, key, plain_sha,
                                                               identities):
            report.altered.append(f"{key}: decrypted content differs from the index's "
                                  "SHA-256 (or does not decrypt)")
    report.missing = sorted(set(expected) - seen)
    # What a restore needs besides the calls: the key (if this box has one) and the replica.
    if (Path(db_path).parent / REFERENCE_KEY_FILE).exists() and not _exists(
            client, bucket, key_backup_key(prefix)):
        report.missing.append(f"{key_backup_key(prefix)} (the reference key's backup)")
    if expect_replica and not _exists(client, bucket, index_path(prefix) + "/"):
        report.missing.append(f"{index_path(prefix)}/ (no Litestream replica of the index)")
    return report


def _exists(client: S3Client, bucket: str, key_or_prefix: str) -> bool:
    """An object ``key_or_prefix`` exists (or, ending in ``/``, anything under it)."""
    answer = client.list_objects_v2(Bucket=bucket, Prefix=key_or_prefix, MaxKeys=1)
    return bool(answer.get("KeyCount", 0))


def _plaintext_matches(client: S3Client, bucket: str, key: str, plain_sha256: str,
                       identities: list[Any]) -> bool:
    import pyrage

    cipher = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    try:
        plain = pyrage.decrypt(cipher, identities)
    except pyrage.DecryptError:
        return False
    return hashlib.sha256(plain).hexdigest() == plain_sha256
