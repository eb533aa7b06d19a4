"""The reference counter's high-water mark, kept beside the device key (``reference.counter``).

A reference is the keyed permutation of the per-device call counter (docs/design.md §7). The
counter lives in the index (``meta.call_counter``), and an index lost, deleted or restored from
an old backup would start it again from a lower value: with ``reference.key`` kept, the same
references would be issued again and their recordings overwritten. The last
counter issued is therefore also written here, fsync'ed before the reference is used; the
daemon never issues a counter at or below it, and an index whose counter is below it is known
to be lost (the daemon faults and does not answer until ``appliance index rebuild``).

The file holds one decimal number padded to a fixed width, rewritten in place: once the file
exists, an update needs no new disk blocks (it must work on a full disk) and is one small
write that cannot leave a half-written number.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from appliance.errors import StoreError
from appliance.files import write_atomically

#: The device's reference key in the state directory (made at first start, never replaced).
REFERENCE_KEY_FILE: Final = "reference.key"
#: The counter's high-water mark, beside the key.
MARK_FILE: Final = "reference.counter"
#: Mode of the mark file: like the key, only the service user needs it.
MARK_FILE_MODE: Final = 0o600
#: Digits of the stored number (the counter space is 10^7; room to spare).
_WIDTH: Final = 12


def mark_path(state_dir: Path) -> Path:
    """Where the mark of the state directory ``state_dir`` lives."""
    return Path(state_dir) / MARK_FILE


def read_mark(state_dir: Path) -> int | None:
    """The last counter issued on this device, or None when no mark was ever written.

    Raises:
        StoreError: the file exists but does not hold a number (restore it, or delete it if
            the index is known to be complete: the daemon then writes it from the index).
    """
    path = mark_path(state_dir)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: unreadable ({exc})") from exc
    if not text.isdigit():
        raise StoreError(f"{path} is damaged ({text[:20]!r}); it holds the last reference "
                         "counter issued — restore it from a backup")
    return int(text)


def write_mark(state_dir: Path, counter: int) -> None:
    """Durably record ``counter`` as the last one issued (fsync'ed when this returns).

    The first write creates the file (temporary file, fsync, rename, fsync of the directory);
    later writes overwrite the fixed-width number in place and fsync.

    Raises:
        StoreError: the mark cannot be written (the caller must not use the counter).
    """
    path = mark_path(state_dir)
    data = f"{counter:0{_WIDTH}d}\n".encode("ascii")
    try:
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            write_atomically(path, data, MARK_FILE_MODE)
            return
        try:
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StoreError(f"cannot record the reference counter in {path}: {exc}") from exc
