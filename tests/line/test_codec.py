"""Layer 1 codecs: tables and hypothesis properties (split anywhere, round trip)."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.line.codec import (
    DLE_ETX,
    CallerId,
    CallerIdAccumulator,
    LineFramer,
    VoiceDecoder,
    VoiceEncoder,
    decode_cid_hex,
    format_cid_lines,
    parse_cid_line,
)

# --- framer tables --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "lines", "voice"),
    [
        (b"\r\nOK\r\n", ["OK"], None),
        (b"\r\n0\r\n\r\nOK\r\n", ["0", "OK"], None),
        (b"ATV1\r\r\nOK\r\n", ["ATV1", "OK"], None),  # E1 echo (thess/callattendant#2)
        (b"\r\nCONNECT\r\n\x80\x81\x10\x10", ["CONNECT"], b"\x80\x81\x10\x10"),
        (b"\r\nCONNECT\r\n", ["CONNECT"], b""),
        (b"\r\nRING\r\n\r\nDATE = 0321\r\n", ["RING", "DATE = 0321"], None),
        (b"\r\nCONNECT 9600\r\n", ["CONNECT 9600"], None),  # not a voice CONNECT
        (b"\x00\x00\r\nO\x00K\r\n", ["OK"], None),
        (b"\xff\xfe\r\n", ["\ufffd\ufffd"], None),
    ],
)
def test_framer_table(data: bytes, lines: list[str], voice: bytes | None) -> None:
    framer = LineFramer()
    assert framer.feed(data) == (lines, voice)


def test_framer_connect_lf_in_next_feed_is_terminator() -> None:
    framer = LineFramer()
    assert framer.feed(b"\r\nCONNECT\r") == ([], None)
    assert framer.feed(b"\n\x80\x80") == (["CONNECT"], b"\x80\x80")


def test_framer_connect_cr_only_then_audio() -> None:
    framer = LineFramer()
    assert framer.feed(b"CONNECT\r") == ([], None)
    assert framer.feed(b"\x80") == (["CONNECT"], b"\x80")


def test_framer_dle_events_in_command_state() -> None:
    framer = LineFramer()
    lines, voice = framer.feed(b"\r\nOK\r\n\x10H\x10R")
    assert lines == ["OK"]
    assert voice is None
    assert framer.take_dle_events() == ["H", "R"]
    assert framer.take_dle_events() == []


def test_framer_truncates_huge_lines() -> None:
    framer = LineFramer()
    lines, _ = framer.feed(b"X" * 5000 + b"\r\nOK\r\n")
    assert lines[0] == "X" * 1024
    assert lines[1] == "OK"
    assert framer.overflow_bytes == 5000 - 1024


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, prev = [], 0
    for p in [*points, len(data)]:
        chunks.append(data[prev:p])
        prev = p
    return chunks


def _run_framer(chunks: list[bytes]) -> tuple[list[str], bytes | None, list[str]]:
    framer = LineFramer()
    lines: list[str] = []
    voice: bytes | None = None
    for chunk in chunks:
        if voice is not None:
            voice += chunk
            continue
        new, voice = framer.feed(chunk)
        lines += new
    return lines, voice, framer.take_dle_events()


_TEXTISH = st.lists(
    st.sampled_from([b"OK", b"RING", b"\r", b"\n", b"\r\n", b"CONNECT", b"\x10", b"H", b"\x00"])
    | st.binary(max_size=6),
    max_size=30,
).map(b"".join)


@given(data=_TEXTISH, cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_framer_split_anywhere_same_result(data: bytes, cuts: list[int]) -> None:
    assert _run_framer(_split(data, cuts)) == _run_framer([data])


@given(data=_TEXTISH)
def test_framer_one_byte_at_a_time(data: bytes) -> None:
    chunks = [data[i : i + 1] for i in range(len(data))]
    assert _run_framer(chunks) == _run_framer([data])


# --- voice decoder tables -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "audio", "events", "ended", "rest"),
    [
        (b"\x80\x10\x10\x81", b"\x80\x10\x81", [], False, b""),
        (b"\x10\x1a", b"\x10\x10", [], False, b""),
        (b"\x80\x10\x03\r\nOK\r\n", b"\x80", [], True, b"\r\nOK\r\n"),
        (b"\x10/\x105\x105\x10~", b"", ["5"], False, b""),
        (b"\x10/\x105\x105\x10\x7f", b"", ["5"], False, b""),  # quirk #15
        (b"\x105\x105", b"", ["5", "5"], False, b""),  # bare: one per <DLE>digit
        (b"\x10b\x10d\x10u", b"", ["b", "d", "u"], False, b""),
        (b"\x10/\x10b\x101\x10~", b"", ["b", "1"], False, b""),
        (b"\x10\x12", b"", ["\x12"], False, b""),
    ],
)
def test_decoder_table(
    data: bytes, audio: bytes, events: list[str], ended: bool, rest: bytes
) -> None:
    chunk = VoiceDecoder("u8").feed(data)
    assert (chunk.audio, chunk.events, chunk.ended, chunk.rest) == (audio, events, ended, rest)


def test_decoder_after_end_passes_everything_as_rest() -> None:
    dec = VoiceDecoder()
    assert dec.feed(DLE_ETX).ended
    chunk = dec.feed(b"OK")
    assert chunk.ended
    assert chunk.rest == b"OK"
    dec.reset()
    assert dec.feed(b"\x80").audio == b"\x80"


def _run_decoder(chunks: list[bytes]) -> tuple[bytes, list[str], bool, bytes]:
    dec = VoiceDecoder("u8")
    audio, events, rest = b"", [], b""
    ended = False
    for chunk in chunks:
        out = dec.feed(chunk)
        audio += out.audio
        events += out.events
        rest += out.rest
        ended = ended or out.ended
    return audio, events, ended, rest


_VOICEISH = st.lists(
    st.sampled_from([b"\x10", b"\x10\x10", b"\x03", b"/", b"~", b"5", b"\x1a", b"\x80"])
    | st.binary(max_size=5),
    max_size=40,
).map(b"".join)


@given(data=_VOICEISH, cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_decoder_split_anywhere_same_result(data: bytes, cuts: list[int]) -> None:
    assert _run_decoder(_split(data, cuts)) == _run_decoder([data])


@given(data=st.binary(max_size=300))
def test_encode_decode_round_trip(data: bytes) -> None:
    chunk = VoiceDecoder().feed(VoiceEncoder.encode(data))
    assert chunk.audio == data
    assert chunk.events == []
    assert not chunk.ended


@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(min_value=0), max_size=6))
def test_encode_then_end_split_anywhere(data: bytes, cuts: list[int]) -> None:
    stream = VoiceEncoder.encode(data) + DLE_ETX + b"\r\nOK\r\n"
    audio, events, ended, rest = _run_decoder(_split(stream, cuts))
    assert (audio, events, ended, rest) == (data, [], True, b"\r\nOK\r\n")


# --- caller ID ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        ("DATE = 0321", ("DATE", "0321")),
        ("DATE=1203", ("DATE", "1203")),
        ("NMBR = 504551234", ("NMBR", "504551234")),
        ("NAME = A N OTHER ", ("NAME", "A N OTHER")),
        ("DDN_NMBR= 2042333251", ("DDN_NMBR", "2042333251")),
        ("DDN=2042333251", ("DDN", "2042333251")),
        ("SPRINGFIELD", None),
        ("RING", None),
        ("TIME WARNER", None),
        ("NAME = TIME WARNER", ("NAME", "TIME WARNER")),
    ],
)
def test_parse_cid_line(line: str, parsed: tuple[str, str] | None) -> None:
    assert parse_cid_line(line) == parsed


def test_accumulator_builds_caller() -> None:
    acc = CallerIdAccumulator()
    assert acc.result() is None
    for line in ["DATE = 0321", "TIME = 1405", "RING", "NMBR = 3612345678", "NAME = TEST"]:
        acc.feed(line)
    assert acc.result() == CallerId(
        number="3612345678",
        name="TEST",
        date="0321",
        time="1405",
        raw=("DATE = 0321", "TIME = 1405", "NMBR = 3612345678", "NAME = TEST"),
    )


@pytest.mark.parametrize(
    ("lines", "number", "withheld", "unavailable"),
    [
        (["NMBR=P"], None, True, False),
        (["NMBR=O"], None, False, True),
        (["NAME=O", "DDN=2042333251"], "2042333251", False, True),
    ],
)
def test_accumulator_withheld_unavailable(
    lines: list[str], number: str | None, withheld: bool, unavailable: bool
) -> None:
    acc = CallerIdAccumulator()
    for line in lines:
        assert acc.feed(line)
    caller = acc.result()
    assert caller is not None
    assert (caller.number, caller.withheld, caller.unavailable) == (number, withheld, unavailable)


def test_decode_cid_hex_sdmf() -> None:
    caller = decode_cid_hex("0412303332323234303539313435353132333435")
    assert (caller.date, caller.time, caller.number) == ("0322", "2405", "9145512345")


def test_decode_cid_hex_mdmf() -> None:
    caller = decode_cid_hex(
        "801E01083130313532303338020A37303835353530303031070C552E532E524F424F5449435322"
    )
    assert caller.number == "7085550001"
    assert caller.name == "U.S.ROBOTICS"
    assert (caller.date, caller.time) == ("1015", "2038")


@pytest.mark.parametrize("text", ["", "zz", "05021234"])
def test_decode_cid_hex_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        decode_cid_hex(text)


@given(
    number=st.text(alphabet="0123456789", min_size=1, max_size=15) | st.none(),
    name=st.text(alphabet="ABCDEFGHIJ XYZ.", min_size=1, max_size=20).map(str.strip).filter(bool)
    | st.none(),
    withheld=st.booleans(),
    spaced=st.booleans(),
)
def test_format_then_accumulate_round_trip(
    number: str | None, name: str | None, withheld: bool, spaced: bool
) -> None:
    when = datetime(2024, 3, 21, 14, 5)
    acc = CallerIdAccumulator()
    for line in format_cid_lines(number, name, withheld=withheld, when=when, spaced=spaced):
        assert acc.feed(line)
    caller = acc.result()
    assert caller is not None
    assert (caller.date, caller.time) == ("0321", "1405")
    if withheld:
        assert caller.withheld
        assert caller.number is None
    else:
        assert caller.number == number
        assert caller.unavailable == (number is None)
        assert caller.name == name
