"""Finding a call's things: the spellings of a caller number, the recording's file.

Kept apart from :mod:`appliance.store.retention` (which needs the recorder, hence numpy) so
the owner's web page can search and serve recordings without loading the audio stack.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path
from typing import Final

#: Hungarian numbering: country code 36, national trunk prefix 06 (docs/legal.mdis about HU).
HU_COUNTRY_CODE: Final = "36"
HU_TRUNK_PREFIX: Final = "06"
#: Characters people type inside phone numbers that caller ID never sends.
_NUMBER_PUNCTUATION: Final = re.compile(r"[\s\-()./]")


def number_variants(number: str) -> list[str]:
    """Return the spellings under which one Hungarian caller number may be stored.

    Caller ID sends what the exchange sends (``06301234567``, ``+36301234567`` or
    ``36301234567`` all occur); a technician types any of them, maybe with spaces. Punctuation
    is removed, then the ``+36``/``0036``/``36``/``06`` forms of the same national number are
    generated. Numbers that are none of these are returned as typed (punctuation removed).
    """
    n = _NUMBER_PUNCTUATION.sub("", number)
    variants = [n]
    national: str | None = None
    if n.startswith("+" + HU_COUNTRY_CODE):
        national = n[3:]
    elif n.startswith("00" + HU_COUNTRY_CODE):
        national = n[4:]
    elif n.startswith(HU_TRUNK_PREFIX) or (n.startswith(HU_COUNTRY_CODE) and len(n) >= 10):
        # Both prefixes are two digits; "36…" only when long enough to be international.
        national = n[2:]
    if national:
        for prefix in ("+" + HU_COUNTRY_CODE, HU_COUNTRY_CODE, "00" + HU_COUNTRY_CODE,
                       HU_TRUNK_PREFIX):
            variants.append(prefix + national)
    return list(dict.fromkeys(variants))


def locate_recording(recordings_dir: Path, stored_path: str | None) -> Path | None:
    """Map an index ``recording_path`` to a file inside ``recordings_dir``, or None.

    Never returns a path outside the recordings tree, so a tampered index cannot make
    purge/erase delete anything else. A path from before the state directory moved is
    mapped by its ``YYYY/MM/DD/<file>`` tail.
    """
    if not stored_path:
        return None
    root = Path(recordings_dir).resolve()
    stored = Path(stored_path)
    candidates = [stored if stored.is_absolute() else root / stored]
    if len(stored.parts) >= 4:
        candidates.append(root.joinpath(*stored.parts[-4:]))
    inside = [r for r in (c.resolve() for c in candidates)
              if r != root and r.is_relative_to(root)]
    for resolved in inside:
        try:
            resolved.stat()
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
        # Present, or hidden from this user (EACCES): the caller's own access tells which.
        return resolved
    # None exists: still answer in-tree (verify reports it missing, erase finds leftovers).
    return inside[0] if inside else None


def sidecar_for(recording: Path) -> Path:
    """The JSON sidecar next to a recording (``<reference>.json``, see store.recorder)."""
    return recording.with_suffix(".json")
