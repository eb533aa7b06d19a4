"""The emulator's modem dialects: identification, voice formats and the quirks each one has.

A :class:`SimProfile` is what differs between the modems the appliance targets (docs/v253.md
§11 checklist); :data:`PROFILES` holds the three the emulator speaks, :func:`profile_named`
finds one by name or alias.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["HANGUP_REPORTS", "PROFILES", "PROFILE_ALIASES", "SILENCE_REPORT_S", "SimProfile",
           "profile_named"]

HANGUP_REPORTS: Final = ("busy", "silence", "none")
"""How a profile reports the far end hanging up (:attr:`SimProfile.hangup_report`)."""
SILENCE_REPORT_S: Final = 5.0
"""``hangup_report = "silence"``: ``<DLE>s`` after this long of quiet line (a typical +VSD
silence time; the busy tone before it is not quiet)."""


_HSF_VSM: Final = (
    # §4.3 Conexant host-processed / USR softmodem list (the emulator default).
    '1,"UNSIGNED PCM",8,0,(8000),(0),(0)',
    '128,"8-BIT LINEAR",8,0,(8000),(0),(0)',
    '129,"ADPCM",4,0,(8000),(0),(0)',
    '130,"UNSIGNED PCM",8,0,(8000),(0),(0)',
    '131,"ULAW",8,0,(8000),(0),(0)',
    '132,"ALAW",8,0,(8000),(0),(0)',
    '133,"LINEAR",16,0,(8000),(0),(0)',
)
_V253_VSM: Final = (
    # ITU-T V.253 Table 17 ids.
    '0,"SIGNED PCM",8,0,(8000),(0),(0)',
    '1,"UNSIGNED PCM",8,0,(8000),(0),(0)',
    '4,"G.711U",8,0,(8000),(0),(0)',
    '5,"G.711A",8,0,(8000),(0),(0)',
)


@dataclass(frozen=True, slots=True)
class SimProfile:
    """One modem dialect.

    Attributes:
        name: profile name.
        ati0 / ati3 / gmi: identification answers (§2).
        vsm_list: ``AT+VSM=?`` lines.
        cid_spaced: ``DATE = 0321`` (Conexant) vs ``DATE=1203`` (USR), quirk #16.
        dtmf_shielded: ``<DLE>/<DLE>5…<DLE>~`` with 70 ms repeats, or bare ``<DLE>5`` (§5.4).
        dle_h_after_off_hook: USR sends ``<DLE>H`` right after ``AT+VLS=1`` (quirk #23).
        info_prefix: information text as ``+VCID: 1`` instead of a bare ``1`` (§3).
        vcid_lost_at_atz: ``+VCID`` resets to 0 at ``ATZ`` (quirk #4).
        dle_ring_in_voice_class: on-hook rings as ``<DLE>R`` in ``+FCLASS=8`` (quirk #27).
        full_duplex: ``+VTR`` exists; False models a half-duplex voice modem that answers
            ``ERROR`` to ``AT+VTR`` and ``AT+VTR=?`` (§3).
        vtr_test_command: ``AT+VTR=?`` answers ``OK``; False models the modems that answer
            ``ERROR`` to the test form yet accept ``AT+VTR`` (V.250 leaves test forms of
            action commands to the vendor; docs/line.md).
        busy_detect_s: from the start of the busy tone to the first ``<DLE>b``: a modem
            reports busy only once it has recognised the cadence (a few 300/300 ms cycles).
            Assumed per dialect, not measured (no datasheet gives it; docs/line.md).
        hangup_report: ``busy`` (``<DLE>b`` after :attr:`busy_detect_s`, ``<DLE>d`` once
            dial tone returns), ``silence`` (never busy: the busy tone, then quiet line and
            ``<DLE>s`` after :data:`SILENCE_REPORT_S`) or ``none`` (nothing at all: only the
            busy tone, then quiet line).
    """

    name: str
    ati0: str
    ati3: str
    gmi: str
    vsm_list: tuple[str, ...]
    cid_spaced: bool = True
    dtmf_shielded: bool = True
    dle_h_after_off_hook: bool = False
    info_prefix: bool = False
    vcid_lost_at_atz: bool = False
    dle_ring_in_voice_class: bool = False
    full_duplex: bool = True
    vtr_test_command: bool = True
    busy_detect_s: float = 1.8
    hangup_report: str = "busy"

    def __post_init__(self) -> None:
        if self.hangup_report not in HANGUP_REPORTS:
            raise ValueError(f"hangup_report must be one of {HANGUP_REPORTS}")
        if self.busy_detect_s < 0:
            raise ValueError("busy_detect_s must be ≥ 0")


PROFILES: Final[dict[str, SimProfile]] = {
    "conexant": SimProfile(
        name="conexant",
        ati0="56000",
        ati3="CX93001-EIS_V0.2002-V92",
        gmi="CONEXANT",
        vsm_list=_HSF_VSM,
        vcid_lost_at_atz=True,
        dle_ring_in_voice_class=True,
    ),
    "usr": SimProfile(
        name="usr",
        ati0="5601",
        ati3="U.S. Robotics 56K FAX USB V1.2.23",
        gmi="U.S. Robotics",
        vsm_list=_HSF_VSM,
        cid_spaced=False,
        dle_h_after_off_hook=True,
        busy_detect_s=1.5,
    ),
    "v253": SimProfile(
        name="v253",
        ati0="V253",
        ati3="Strict V.253 emulator",
        gmi="APPLIANCE",
        vsm_list=_V253_VSM,
        info_prefix=True,
        busy_detect_s=2.0,
    ),
}
PROFILE_ALIASES: Final = {
    "conexant-cx93010": "conexant",
    "usr5637": "usr",
    "strict-v253": "v253",
}


def profile_named(name: str) -> SimProfile:
    """The profile called ``name`` (a :data:`PROFILES` key or a :data:`PROFILE_ALIASES` alias).

    Raises:
        ValueError: no such profile.
    """
    key = PROFILE_ALIASES.get(name, name)
    if key not in PROFILES:
        raise ValueError(f"unknown modem profile {name!r}; known: {sorted(PROFILES)}")
    return PROFILES[key]
