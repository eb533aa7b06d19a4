"""Writing a whole small file so that a crash or power cut leaves the old one or the new one.

The box keeps a few files whose loss or half-written state costs evidence: the reference key
and its high-water mark, the web accounts, restored recordings. They are all written the same
way — a temporary file beside the target, written whole, fsync'ed, renamed over the target,
then the directory fsync'ed so the rename itself survives (docs/records.md, "A lost index").
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["fsync_dir", "write_atomically"]


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable (fsync of the directory)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` by a file of ``data`` with permission bits ``mode``, all at once.

    Readers see the old file or the new one, never a part; when this returns the new file is
    on the disk. On failure ``path`` is left as it was and no temporary file remains.

    Raises:
        OSError: the file cannot be written (a full disk, a read-only folder, ...).
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        try:
            os.fchmod(fd, mode)
            rest = memoryview(data)
            while rest:  # a short write (a disk filling up) is not the whole file
                rest = rest[os.write(fd, rest):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
