"""The head office's view: every box's replicated index in the bucket, read-only.

``appliance archive calls`` / ``archive find --number N`` restore each box's index from its
Litestream replica into a private temporary directory and query the copies; ``archive export
REF --identity FILE --out DIR`` also fetches and decrypts that call's recording and sidecar and
hands everything to the box's own exporter (appliance.store.export), so the package is the
same one ``appliance export`` makes on the box. Nothing is written to the bucket.

The export's audit entry lands in the temporary copy of the index (the proof inside the
package carries it, with the box's chain up to then); the box's own chain is not touched.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.archive.restore import download_decrypt
from appliance.archive.s3 import ArchiveError, Credentials, S3Client, index_path
from appliance.config import ArchiveConfig
from appliance.store.recorder import DIR_MODE


@dataclass(frozen=True, slots=True)
class BoxIndex:
    prefix: str
    path: Path


def list_boxes(client: S3Client, bucket: str) -> list[str]:
    """Every box prefix with a replicated index in ``bucket``."""
    boxes: list[str] = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            prefix = common["Prefix"].rstrip("/")
            probe = client.list_objects_v2(Bucket=bucket, Prefix=index_path(prefix) + "/",
                                           MaxKeys=1)
            if probe.get("KeyCount", 0):
                boxes.append(prefix)
    return sorted(boxes)


@contextlib.contextmanager
def box_indexes(archive: ArchiveConfig, credentials: Credentials, client: S3Client,
                boxes: list[str] | None = None) -> Iterator[list[BoxIndex]]:
    """Restore the indexes of ``boxes`` (default: every box) into a temporary directory that
    is removed afterwards.

    Raises:
        ArchiveError: a named box has no replica.
    """
    from appliance.archive.replicate import restore_index

    prefixes = boxes if boxes else list_boxes(client, archive.bucket)
    with tempfile.TemporaryDirectory(prefix="appliance-headoffice-") as work:
        out: list[BoxIndex] = []
        for prefix in prefixes:
            path = Path(work) / prefix / "appliance.db"
            path.parent.mkdir(mode=DIR_MODE)
            restore_index(archive, credentials, prefix, path)
            out.append(BoxIndex(prefix, path))
        yield out


def _read_only(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def query_calls(indexes: list[BoxIndex], *, numbers: list[str] | None = None,
                reference: str | None = None, limit: int | None = 50) -> list[dict[str, Any]]:
    """Calls over every box, newest first, each with its ``box`` and ``archive`` state."""
    rows: list[dict[str, Any]] = []
    for index in indexes:
        conn = _read_only(index.path)
        try:
            has_archive = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'archive'").fetchone() is not None
            sql = ("SELECT c.*, " + ("a.state AS archive_state " if has_archive
                                      else "NULL AS archive_state ")
                   + "FROM calls c "
                   + ("LEFT JOIN archive a USING (reference) " if has_archive else ""))
            where: list[str] = []
            params: list[Any] = []
            if numbers is not None:
                where.append("c.caller_number IN (" + ", ".join("?" * len(numbers)) + ")"
                             if numbers else "0")
                params.extend(numbers)
            if reference is not None:
                where.append("c.reference = ?")
                params.append(reference)
            if where:
                sql += "WHERE " + " AND ".join(where) + " "
            for row in conn.execute(sql, params):
                item = dict(row)
                item["box"] = index.prefix
                rows.append(item)
        finally:
            conn.close()
    rows.sort(key=lambda r: (r["ring_at"] or r["created_at"] or 0.0), reverse=True)
    return rows if limit is None else rows[:limit]


def export_from_archive(archive: ArchiveConfig, client: S3Client, index: BoxIndex,
                        reference: str, identities: list[Any], out_dir: Path, *,
                        actor: str, as_zip: bool = False) -> Any:
    """Decrypt one call of ``index``'s box and export it as the box would.

    Returns:
        The :class:`appliance.store.export.ExportResult`.

    Raises:
        ArchiveError: the call has no archived copy, or the identity does not fit.
    """
    from appliance.archive import queue
    from appliance.store.db import Store
    from appliance.store.export import export_call

    with tempfile.TemporaryDirectory(prefix="appliance-headoffice-") as work:
        # A private copy: export_call appends its audit entry, the restored index stays as is.
        copy = Path(work) / "appliance.db"
        copy.write_bytes(index.path.read_bytes())
        store = Store.open(copy, check=False)
        try:
            row = store.get_call(reference)
            if row is None:
                raise ArchiveError(f"no call {reference} in the index of {index.prefix}")
            recordings = Path(work) / "recordings"
            conn = queue.open_queue(copy)
            try:
                objects = {o.kind: o for o in queue.objects_of(conn, reference)}
            finally:
                conn.close()
            if row["recording_path"] and row["recording_deleted_at"] is None:
                if "recording" not in objects:
                    raise ArchiveError(f"call {reference} of {index.prefix} has no archived "
                                       "recording (not uploaded yet?)")
                tail = Path(row["recording_path"]).parts[-4:]
                target = recordings.joinpath(*tail)
                target.parent.mkdir(parents=True, mode=DIR_MODE)
                download_decrypt(client, archive.bucket, objects["recording"].key, identities,
                                 target)
                if "sidecar" in objects:
                    download_decrypt(client, archive.bucket, objects["sidecar"].key,
                                     identities, target.with_suffix(".json"))
            return export_call(store, recordings, reference, out_dir, actor=actor,
                               as_zip=as_zip)
        finally:
            store.close_sync()
