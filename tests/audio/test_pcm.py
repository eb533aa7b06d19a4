"""Tests for appliance.audio.pcm: modem voice codecs, float conversion, levels."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.audio import pcm

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)
ALL_BYTES = bytes(range(256))

int16_lists = st.lists(st.integers(-32768, 32767), max_size=400)

try:  # audioop (stdlib until 3.12) is an independent G.711 implementation to compare with.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
except ImportError:  # pragma: no cover - Python ≥ 3.13
    audioop = None  # type: ignore[assignment]


def test_frame_constants() -> None:
    assert pcm.SAMPLE_RATE_HZ == 8000
    assert pcm.FRAME_MS == 20
    assert pcm.FRAME_SAMPLES == 160


@pytest.mark.parametrize(
    ("fmt", "byte", "size"),
    [("u8", 0x80, 1), ("s8", 0x00, 1), ("ulaw", 0xFF, 1), ("alaw", 0xD5, 1), ("s16le", 0, 2)],
)
def test_silence_and_sizes(fmt: str, byte: int, size: int) -> None:
    # v253-modem.md §8 silence column.
    assert pcm.silence_byte(fmt) == byte
    assert pcm.bytes_per_sample(fmt) == size
    assert pcm.encode_voice(np.zeros(3, np.int16), fmt) == bytes([byte]) * (3 * size)
    decoded = pcm.decode_voice(bytes([byte]) * (3 * size), fmt)
    assert decoded.dtype == np.int16
    # A-law has no zero code: its silence decodes to the smallest step, +8.
    assert np.all(np.abs(decoded) <= 8)


@pytest.mark.parametrize("call", [pcm.bytes_per_sample, pcm.silence_byte])
def test_unknown_format_raises(call: object) -> None:
    with pytest.raises(ValueError, match="gsm"):
        call("gsm")  # type: ignore[operator]
    with pytest.raises(ValueError, match="gsm"):
        pcm.decode_voice(b"\x00", "gsm")
    with pytest.raises(ValueError, match="gsm"):
        pcm.encode_voice(np.zeros(1, np.int16), "gsm")


def test_s16le_odd_length_and_float_input_rejected() -> None:
    with pytest.raises(ValueError, match="even"):
        pcm.decode_voice(b"\x00\x01\x02", "s16le")
    with pytest.raises(TypeError):
        pcm.encode_voice(np.zeros(2, np.float32), "u8")


@pytest.mark.parametrize(
    ("fmt", "samples", "expected"),
    [
        # u8/s8: nearest multiple of 256, half rounds up, clipped at the top.
        (
            "u8",
            [0, 127, 128, -128, -129, 32767, -32768, 256],
            bytes([128, 128, 129, 128, 127, 255, 0, 129]),
        ),
        ("s8", [0, 127, 128, -129, 32767, -32768], bytes([0, 0, 1, 0xFF, 127, 0x80])),
        # G.711 µ-law: zero → 0xFF, full scale → 0x80 / 0x00 (Sun g711.c, ITU-T G.711 table 2a).
        ("ulaw", [0, 32767, -32768, 3, 8, -8], bytes([0xFF, 0x80, 0x00, 0xFF, 0xFE, 0x7E])),
        # G.711 A-law: +0 → 0xD5, −1 → 0x55, full scale → 0xAA / 0x2A.
        ("alaw", [0, -1, 32767, -32768], bytes([0xD5, 0x55, 0xAA, 0x2A])),
        ("s16le", [1, -2, 0x1234], bytes([1, 0, 0xFE, 0xFF, 0x34, 0x12])),
    ],
)
def test_encode_table(fmt: str, samples: list[int], expected: bytes) -> None:
    assert pcm.encode_voice(np.array(samples, dtype=np.int16), fmt) == expected


@pytest.mark.parametrize(
    ("fmt", "data", "expected"),
    [
        ("u8", bytes([0, 128, 255, 129]), [-32768, 0, 32512, 256]),
        ("s8", bytes([0x80, 0, 0x7F, 0xFF]), [-32768, 0, 32512, -256]),
        ("ulaw", bytes([0xFF, 0x7F, 0x80, 0x00, 0xFE]), [0, 0, 32124, -32124, 8]),
        ("alaw", bytes([0xD5, 0x55, 0xAA, 0x2A]), [8, -8, 32256, -32256]),
    ],
)
def test_decode_table(fmt: str, data: bytes, expected: list[int]) -> None:
    assert pcm.decode_voice(data, fmt).tolist() == expected


def test_wider_integers_are_clipped() -> None:
    assert pcm.encode_voice(np.array([40000, -40000]), "s16le") == pcm.encode_voice(
        np.array([32767, -32768], np.int16), "s16le"
    )


@pytest.mark.parametrize("fmt", ["ulaw", "alaw"])
def test_g711_decode_is_odd_and_monotonic(fmt: str) -> None:
    decoded = pcm.decode_voice(ALL_BYTES, fmt).astype(int)
    values = np.unique(decoded)
    # µ-law has +0 and −0 (255 distinct values); A-law has no zero (256 distinct values).
    assert len(values) == (255 if fmt == "ulaw" else 256)
    assert np.array_equal(values, -values[::-1])
    # Encoding is monotonic non-decreasing in the decoded domain.
    rt = pcm.decode_voice(pcm.encode_voice(ALL_INT16, fmt), fmt).astype(int)
    assert np.all(np.diff(rt) >= 0)


@pytest.mark.parametrize("fmt", ["ulaw", "alaw"])
def test_g711_quantisation_error_bounded(fmt: str) -> None:
    # G.711 intervals double per segment: the error is at most one step of the segment,
    # i.e. ≤ 1/16 of the magnitude plus the smallest step (plus the clipping at the top).
    rt = pcm.decode_voice(pcm.encode_voice(ALL_INT16, fmt), fmt).astype(int)
    err = np.abs(rt - ALL_INT16.astype(int))
    top = np.abs(ALL_INT16.astype(int)) > 32124
    assert np.all(err[~top] <= np.abs(ALL_INT16.astype(int))[~top] / 16 + 16)


@pytest.mark.skipif(audioop is None, reason="audioop was removed in Python 3.13")
@pytest.mark.parametrize("fmt", ["ulaw", "alaw"])
def test_g711_matches_audioop(fmt: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if fmt == "ulaw":
            lin2, to_lin = audioop.lin2ulaw, audioop.ulaw2lin
        else:
            lin2, to_lin = audioop.lin2alaw, audioop.alaw2lin
        assert pcm.encode_voice(ALL_INT16, fmt) == lin2(ALL_INT16.astype("<i2").tobytes(), 2)
        expected = np.frombuffer(to_lin(ALL_BYTES, 2), dtype="<i2")
    assert np.array_equal(pcm.decode_voice(ALL_BYTES, fmt), expected)


@pytest.mark.parametrize("fmt", ["ulaw", "alaw"])
def test_g711_decode_encode_decode_is_identity_for_every_byte(fmt: str) -> None:
    decoded = pcm.decode_voice(ALL_BYTES, fmt)
    assert np.array_equal(pcm.decode_voice(pcm.encode_voice(decoded, fmt), fmt), decoded)


@pytest.mark.parametrize("fmt", ["u8", "s8", "alaw", "s16le"])
def test_every_byte_round_trips_exactly(fmt: str) -> None:
    # µ-law is excluded: 0x7F (−0) re-encodes as 0xFF (+0).
    data = ALL_BYTES if fmt != "s16le" else ALL_INT16.astype("<i2").tobytes()
    assert pcm.encode_voice(pcm.decode_voice(data, fmt), fmt) == data


@given(int16_lists, st.sampled_from(["u8", "s8"]))
def test_8bit_linear_round_trip_within_half_step(values: list[int], fmt: str) -> None:
    x = np.array(values, dtype=np.int16)
    data = pcm.encode_voice(x, fmt)
    assert len(data) == len(values)
    rt = pcm.decode_voice(data, fmt).astype(int)
    err = np.abs(rt - x.astype(int))
    # Rounding: ≤ half a step (128); only the clipped top (> 127.5 steps) may be off by more.
    assert np.all(err[x <= 32639] <= 128)
    assert np.all(err <= 255)


@given(int16_lists, st.sampled_from(sorted(pcm.FORMATS)))
def test_decode_encode_decode_is_stable(values: list[int], fmt: str) -> None:
    once = pcm.decode_voice(pcm.encode_voice(np.array(values, dtype=np.int16), fmt), fmt)
    twice = pcm.decode_voice(pcm.encode_voice(once, fmt), fmt)
    assert np.array_equal(once, twice)
    assert len(once) == len(values)


@given(int16_lists)
def test_s16le_round_trip_exact(values: list[int]) -> None:
    x = np.array(values, dtype=np.int16)
    assert np.array_equal(pcm.decode_voice(pcm.encode_voice(x, "s16le"), "s16le"), x)


def test_float_conversions() -> None:
    f = np.array([0.0, 1.0, -1.0, 2.0, -3.0, 0.5, np.nan])
    assert pcm.float_to_int16(f).tolist() == [0, 32767, -32767, 32767, -32767, 16384, 0]
    back = pcm.int16_to_float(np.array([0, 32767, -32767], np.int16))
    assert back.dtype == np.float32
    assert back.tolist() == [0.0, 1.0, -1.0]


@given(st.lists(st.integers(-32767, 32767), max_size=200))
def test_float_int16_round_trip(values: list[int]) -> None:
    x = np.array(values, dtype=np.int16)
    assert np.array_equal(pcm.float_to_int16(pcm.int16_to_float(x)), x)


def test_levels() -> None:
    assert pcm.rms_dbfs(np.zeros(160, np.int16)) == pcm.SILENCE_DBFS == -120.0
    assert pcm.peak_dbfs(np.zeros(160, np.int16)) == -120.0
    assert pcm.rms_dbfs(np.array([], np.int16)) == -120.0
    assert pcm.rms_dbfs(np.full(160, 32767, np.int16)) == pytest.approx(0.0)
    assert pcm.peak_dbfs(np.array([0, -16384, 100], np.int16)) == pytest.approx(
        20 * math.log10(16384 / 32767)
    )
    t = np.arange(8000) / 8000
    sine = np.sin(2 * np.pi * 1000 * t)
    assert pcm.rms_dbfs(sine) == pytest.approx(-3.0103, abs=1e-3)
    assert pcm.rms_dbfs(pcm.float_to_int16(sine * 0.1)) == pytest.approx(-23.0103, abs=1e-2)
    assert pcm.peak_dbfs(sine * 0.1) == pytest.approx(-20.0, abs=1e-6)
