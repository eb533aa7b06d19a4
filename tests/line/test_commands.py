"""The per-chipset tables and the probe parsers (issue 3 items 1 and 2): chipset detection,
``+VSM=?`` → voice format, ``+VLS=?`` → the line label. Table tests with the strings real
modems print (v253-modem.md §2, §4.2, §4.3) and property tests that garbage never raises."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.line.commands import (
    CHIPSETS,
    choose_line_label,
    choose_voice_format,
    detect_chipset,
    explain_voice_format,
    parse_vls_list,
    parse_vsm_list,
)
from appliance.sim.modem.profiles import PROFILES

#: The Conexant host-processed / USR list (§4.3), as the emulator prints it.
HSF_VSM = list(PROFILES["conexant"].vsm_list)
CX_VLS = [
    '0,"",B0804100,B0804100,B0804100',
    '1,"T",0B8433C1,0FE431C1,0B8431C1',
    '2,"L",00000000,00000000,00000000',
    '3,"LT",0B8433C1,0FE431C1,0B8431C1',
    '4,"S",00000000,00000000,00000000',
    '5,"ST",0B8433C1,0FE431C1,0B8431C1',
]


@pytest.mark.parametrize(("ati0", "ati3", "chipset"), [
    (["56000"], [], "conexant"),
    (["5601"], [], "usr"),
    ([], ["U.S. Robotics 56K FAX USB V1.2.23"], "usr"),
    ([], ["CX93001-EIS_V0.2002-V92"], "conexant"),
    (["V253"], ["Strict V.253 emulator"], "generic"),
    ([], [], "generic"),
])
def test_detect_chipset(ati0: list[str], ati3: list[str], chipset: str) -> None:
    assert detect_chipset(ati0, ati3) == chipset
    assert chipset in CHIPSETS


def test_usr_table_drops_its_off_hook_confirmation() -> None:
    assert "H" in CHIPSETS["usr"].ignored_dle  # quirk #23
    assert CHIPSETS["conexant"].vsm_suffix == ",0,0"  # AT+VSM=1,8000,0,0 (§4.3)


def test_the_line_order_decides_and_the_reason_says_why() -> None:
    entries = parse_vsm_list(list(HSF_VSM))
    assert choose_voice_format(entries, order=("ulaw", "u8")) == (131, "ulaw")
    assert choose_voice_format(entries, order=("s8",)) is None, "only what the line allows"
    v253 = parse_vsm_list(['1,"UNSIGNED PCM",8,0,(8000),(0),(0)',
                           '5,"G.711A",8,0,(8000),(0),(0)'])
    why = explain_voice_format(v253, "alaw")
    assert why.startswith("G.711 A-law")
    assert "s16le > alaw > ulaw > u8 > s8" in why
    assert "not offered: s16le" in why
    assert "not offered" not in explain_voice_format(entries, "s16le")


@pytest.mark.parametrize(("lines", "preferred", "chosen"), [
    (HSF_VSM, None, (133, "s16le")),  # the best audio first (recordings are evidence)
    (HSF_VSM, "ulaw", (131, "ulaw")),
    (HSF_VSM, "u8", (1, "u8")),  # V.253 id 1 before vendor 130 (quirk #7)
    (['0,"SIGNED PCM",8,0,(8000),(0),(0)', '4,"G.711U",8,0,(8000),(0),(0)'], None,
     (4, "ulaw")),
    (['0,"SIGNED PCM",8,0,(8000),(0),(0)', '4,"G.711U",8,0,(8000),(0),(0)',
      '5,"G.711A",8,0,(8000),(0),(0)'], None, (5, "alaw")),  # A-law before µ-law
    (['+VSM: 5,"G.711A",8,0,(8000),(0),(0)'], None, (5, "alaw")),
    (['1,"unsigned pcm",8,0,(7200,8000,11025),(0),(0)'], None, (1, "u8")),  # quirk #14
    (['1,"UNSIGNED PCM",8,0,(4800-11025),(0),(0)'], None, (1, "u8")),
    (['1,"UNSIGNED PCM",8,0,(7200),(0),(0)'], None, None),  # no 8 kHz
    (['129,"ADPCM",4,0,(8000),(0),(0)'], None, None),
    ([], None, None),
])
def test_voice_format_from_vsm_list(lines: list[str], preferred: str | None,
                                    chosen: tuple[int, str] | None) -> None:
    assert choose_voice_format(parse_vsm_list(lines), preferred) == chosen


@pytest.mark.parametrize(("lines", "label"), [
    (CX_VLS, 1),
    (['+VLS: 0,"",0,0,0', '+VLS: 1,"T",0,0,0'], 1),
    (['0,"T",0,0,0', '1,"L",0,0,0'], 0),  # a legacy numbering: the list decides
    (['0,"",0,0,0', '2,"L",0,0,0'], 1),  # no "T": V.253's default
    ([], 1),  # +VLS=? refused
])
def test_line_label_from_vls_list(lines: list[str], label: int) -> None:
    assert choose_line_label(parse_vls_list(lines)) == label


def test_vls_list_parses_labels_and_primitives() -> None:
    assert parse_vls_list(CX_VLS) == {0: "", 1: "T", 2: "L", 3: "LT", 4: "S", 5: "ST"}


@given(st.lists(st.text(max_size=60), max_size=8))
def test_probe_parsers_never_raise_on_garbage(lines: list[str]) -> None:
    entries = parse_vsm_list(lines)
    chosen = choose_voice_format(entries)
    assert chosen is None or chosen[1] in ("u8", "ulaw", "alaw", "s16le", "s8")
    labels = parse_vls_list(lines)
    assert choose_line_label(labels) in {1, *labels}
