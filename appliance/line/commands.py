"""Declarative per-chipset command tables and the ``+VSM=?`` format chooser.

Like bellows' ``ezsp/vN/commands.py``: data, not code paths. The modem layer probes the chipset
(``ATI0``/``ATI3``) and picks a :class:`Chipset`; the voice format comes from the modem's own
``+VSM=?`` list (docs/v253.md §4.3: compression ids are vendor specific).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CHIPSETS",
    "DEFAULT_FORMAT_PREFERENCE",
    "FORMAT_NAMES",
    "SAMPLE_RATE_HZ",
    "Chipset",
    "VsmEntry",
    "choose_voice_format",
    "detect_chipset",
    "explain_voice_format",
    "parse_vsm_list",
]

SAMPLE_RATE_HZ: Final = 8000
"""The one voice sample rate the appliance uses (§8)."""


@dataclass(frozen=True, slots=True)
class Chipset:
    """What differs between modem families.

    Attributes:
        name: ``"conexant"``, ``"usr"`` or ``"generic"``.
        vsm_suffix: appended after ``<cml>,8000`` (field practice: Conexant ``AT+VSM=1,8000,0,0``).
        answer_commands: extra commands sent before ``AT+VLS=1`` (silence detection per §12 /
            quirk #26: Conexant ``+VSD=0,0`` always, USR ``128,0`` while answering).
        ignored_dle: ``<DLE>`` event codes to drop (quirk #23: USR ``<DLE>H`` right after
            ``+VLS=1`` is a self-confirmation, not a hang-up; quirk #10: spurious ``i``).
    """

    name: str
    vsm_suffix: str = ""
    answer_commands: tuple[str, ...] = ()
    ignored_dle: frozenset[str] = frozenset()


CHIPSETS: Final[dict[str, Chipset]] = {
    "conexant": Chipset(
        name="conexant",
        vsm_suffix=",0,0",
        answer_commands=("AT+VSD=0,0",),  # quirk #3: silence detection does not work anyway
    ),
    "usr": Chipset(
        name="usr",
        answer_commands=("AT+VSD=128,0",),
        ignored_dle=frozenset({"H", "i"}),
    ),
    "generic": Chipset(name="generic"),
}

# §2: ATI0 → 5601 on USR5637, 56000 on Conexant (Zoom 3095, Dell RD02-D400).
_ATI0_CHIPSET: Final = {"56000": "conexant", "5601": "usr"}


def detect_chipset(ati0: list[str], ati3: list[str]) -> str:
    """Return the chipset name from the ``ATI0`` and ``ATI3`` answers (info lines)."""
    for line in ati0:
        name = _ATI0_CHIPSET.get(line.strip())
        if name is not None:
            return name
    text = " ".join(ati3).upper()
    if "ROBOTICS" in text or "USR" in text:
        return "usr"
    if "CONEXANT" in text or "CX93" in text:
        return "conexant"
    return "generic"


@dataclass(frozen=True, slots=True)
class VsmEntry:
    """One line of ``AT+VSM=?``: ``<cml>,"<name>",<bits>,<tm>,(<rates>),…``."""

    cml: int
    name: str
    bits: int
    rates: tuple[int, ...]
    fmt: str | None
    """The appliance format (``u8``, ``s8``, ``ulaw``, ``alaw``, ``s16le``) or None if unusable."""


_VSM_RE: Final = re.compile(
    r'^\s*(?:\+VSM:\s*)?(\d+)\s*,\s*"([^"]*)"\s*,\s*(\d+)\s*,\s*[^,]*,\s*\(([^)]*)\)'
)


def _format_for(name: str, bits: int) -> str | None:
    # Explicit table after vgetty's V253_querry_compressions (§4.3), case-insensitive because
    # lower-case +VSM=? strings exist in the field (quirk #14).
    upper = name.upper()
    if bits == 8 and ("UNSIGNED PCM" in upper or "8-BIT LINEAR" in upper):
        # Field practice (§4.3): USR5637 cml 128 "8-BIT LINEAR" carries unsigned samples.
        return "u8"
    if bits == 8 and "SIGNED PCM" in upper:
        return "s8"
    if "ULAW" in upper or "G.711U" in upper or "G711U" in upper or "MU-LAW" in upper:
        return "ulaw"
    if "ALAW" in upper or "G.711A" in upper or "G711A" in upper or "A-LAW" in upper:
        return "alaw"
    if bits == 16 and ("LINEAR" in upper or "SIGNED PCM" in upper):
        return "s16le"
    return None


def _parse_rates(text: str) -> tuple[int, ...]:
    rates: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, _, hi = part.partition("-")
            if lo.strip().isdigit() and hi.strip().isdigit():
                # A range such as (4800-11025): record its ends; 8000 inside counts.
                lo_i, hi_i = int(lo), int(hi)
                if lo_i <= SAMPLE_RATE_HZ <= hi_i:
                    rates.append(SAMPLE_RATE_HZ)
                rates += [lo_i, hi_i]
        elif part.isdigit():
            rates.append(int(part))
    return tuple(rates)


def parse_vsm_list(lines: list[str]) -> list[VsmEntry]:
    """Parse the info lines of ``AT+VSM=?``; lines that do not parse are skipped."""
    entries: list[VsmEntry] = []
    for line in lines:
        m = _VSM_RE.match(line)
        if m is None:
            continue
        bits = int(m.group(3))
        entries.append(
            VsmEntry(
                cml=int(m.group(1)),
                name=m.group(2),
                bits=bits,
                rates=_parse_rates(m.group(4)),
                fmt=_format_for(m.group(2), bits),
            )
        )
    return entries


DEFAULT_FORMAT_PREFERENCE: Final = ("s16le", "alaw", "ulaw", "u8", "s8")
"""Best audio first (recordings are evidence): 16-bit linear, then G.711 A-law (the
Hungarian network's own companding, ≈ 38 dB SNR over its whole range), µ-law, and the 8-bit
linear formats last (≈ 48 dB of range: a quiet caller at −30 dBFS keeps about 20 dB SNR).
``lines[].audio_formats`` changes it per line; docs/performance.md has the measured SNR."""

FORMAT_NAMES: Final = {
    "s16le": "16-bit linear",
    "alaw": "G.711 A-law",
    "ulaw": "G.711 µ-law",
    "u8": "8-bit unsigned linear",
    "s8": "8-bit signed linear",
}
"""How a person reads each appliance format name."""


def _offered(entry: VsmEntry, fmt: str) -> bool:
    return entry.fmt == fmt and (not entry.rates or SAMPLE_RATE_HZ in entry.rates)


def choose_voice_format(
    entries: list[VsmEntry], preferred: str | None = None,
    order: tuple[str, ...] = DEFAULT_FORMAT_PREFERENCE,
) -> tuple[int, str] | None:
    """Pick ``(cml, fmt)`` at 8000 Hz from the modem's list.

    ``preferred`` (an appliance format name) wins if offered; otherwise the first of
    ``order`` (:data:`DEFAULT_FORMAT_PREFERENCE`, or ``lines[].audio_formats``) the modem
    offers; among equal formats the first listed id wins (unlike vgetty's last-match rule,
    quirk #7: V.253 cml 1 before vendor 130). Formats outside ``order`` are never chosen.
    Returns None if nothing usable is offered.
    """
    for fmt in ((preferred,) if preferred else ()) + tuple(order):
        for entry in entries:
            if _offered(entry, fmt):
                return entry.cml, fmt
    return None


def explain_voice_format(entries: list[VsmEntry], fmt: str,
                         order: tuple[str, ...] = DEFAULT_FORMAT_PREFERENCE) -> str:
    """Why ``fmt`` was chosen from ``entries``: its rank in ``order`` and what ranked above
    it but is not offered at 8000 Hz (for ``modem probe`` and the log)."""
    above = list(order[: order.index(fmt)]) if fmt in order else []
    missing = [f for f in above if not any(_offered(e, f) for e in entries)]
    why = f"{FORMAT_NAMES.get(fmt, fmt)}, the best the modem offers in the order " + " > ".join(
        order)
    if missing:
        why += f" (not offered: {', '.join(missing)})"
    return why


# §4.2: one +VLS=? line per label: <label>,"<primitives>",<tx-events>,<rx-events>,<idle-events>
# (some modems prefix "+VLS: ").
_VLS_RE: Final = re.compile(r'^(?:\+VLS:\s*)?(\d+)\s*,\s*"([^"]*)"')
#: V.253 §4.2: label 1 = "T", the modem off-hook on the telephone line.
DEFAULT_LINE_LABEL: Final = 1


def parse_vls_list(lines: list[str]) -> dict[int, str]:
    """Parse ``AT+VLS=?`` lines into ``{label: primitives}`` (unparseable lines skipped)."""
    labels: dict[int, str] = {}
    for line in lines:
        match = _VLS_RE.match(line.strip())
        if match:
            labels[int(match.group(1))] = match.group(2).upper()
    return labels


def choose_line_label(labels: dict[int, str]) -> int:
    """The ``+VLS`` label that puts the modem alone on the line (primitives ``"T"``).

    V.253 numbers it 1; legacy firmwares number differently (§4.2), so the modem's own list
    decides. Without a list (``+VLS=?`` refused) or without a ``"T"`` entry: 1.
    """
    for label, primitives in sorted(labels.items()):
        if primitives == "T":
            return label
    return DEFAULT_LINE_LABEL
