"""Pure PCM conversions between the appliance's int16 frames and the modem's voice formats.

Everything in the appliance is 8 kHz mono ``np.int16`` in frames of :data:`FRAME_SAMPLES`
samples (20 ms). This module converts that to and from the byte formats a V.253 modem
streams (docs/v253.md §8), and measures levels. No I/O, no state.

Level convention used throughout the audio package: **dBFS is relative to int16 full scale
32767 (float 1.0)**, RMS levels included, so a full-scale square wave is 0 dBFS and a
full-scale sine is −3.01 dBFS RMS. :func:`float_to_int16` and :func:`int16_to_float` use the
same 32767 scale, so they are exact inverses on ``[-32767, 32767]``.

G.711 is implemented here by hand (vectorised table build + numpy lookup): the stdlib
``audioop`` module is deprecated and removed in Python 3.13 (Pi OS Trixie), and no small
maintained library offers µ-law/A-law on numpy arrays. The algorithm is the classic Sun
Microsystems ``g711.c`` one that ``audioop``, SoX and FFmpeg also use; the tests cross-check
against ``audioop`` where it still exists.
"""

from __future__ import annotations

import functools
import math
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "FORMATS",
    "FRAME_MS",
    "FRAME_SAMPLES",
    "SAMPLE_RATE_HZ",
    "bytes_per_sample",
    "decode_voice",
    "encode_voice",
    "float_to_int16",
    "int16_to_float",
    "peak_dbfs",
    "rms_dbfs",
    "silence_byte",
]

SAMPLE_RATE_HZ: Final = 8000
"""The one sample rate of the appliance's audio path (V.253 voice mode, 8 kHz)."""
FRAME_MS: Final = 20
"""Duration of one audio frame."""
FRAME_SAMPLES: Final = SAMPLE_RATE_HZ * FRAME_MS // 1000
"""Samples per frame (160)."""

FULL_SCALE: Final = 32767
"""int16 value that corresponds to float 1.0 and to 0 dBFS."""
SILENCE_DBFS: Final = -120.0
"""Level reported for digital silence instead of −inf (keeps arithmetic and logs finite)."""

FORMATS: Final = frozenset({"u8", "s8", "ulaw", "alaw", "s16le"})
"""Modem voice formats understood by :func:`decode_voice` / :func:`encode_voice`."""

# docs/v253.md §8: silence per format (8-bit unsigned 0x80, signed 0x00, µ-law 0xFF,
# A-law 0xD5, 16-bit linear 0).
_SILENCE_BYTE: Final[dict[str, int]] = {
    "u8": 0x80,
    "s8": 0x00,
    "ulaw": 0xFF,
    "alaw": 0xD5,
    "s16le": 0x00,
}
_BYTES_PER_SAMPLE: Final[dict[str, int]] = {"u8": 1, "s8": 1, "ulaw": 1, "alaw": 1, "s16le": 2}

# G.711 constants as in Sun's g711.c (the de-facto reference implementation).
_ULAW_BIAS: Final = 0x84  # 132: µ-law bias in 16-bit units (33 in 14-bit units)
_ULAW_CLIP_14: Final = 8159  # largest 14-bit magnitude µ-law can represent (before the bias)
# Upper segment ends (inclusive) of the 8 segments, in each law's native resolution.
_ULAW_SEG_END_14: Final = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEG_END_13: Final = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


#: The wire's 16-bit sample type, built once (a dtype string is parsed on every use).
_S16LE: Final = np.dtype("<i2")


def _check_fmt(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown voice format {fmt!r}; known: {sorted(FORMATS)}")


def bytes_per_sample(fmt: str) -> int:
    """Return how many bytes one sample occupies in ``fmt``.

    Raises:
        ValueError: ``fmt`` is not one of :data:`FORMATS`.
    """
    _check_fmt(fmt)
    return _BYTES_PER_SAMPLE[fmt]


def silence_byte(fmt: str) -> int:
    """Return the byte value that encodes digital silence in ``fmt``.

    For ``s16le`` this is 0x00 (both bytes of a zero sample).

    Raises:
        ValueError: ``fmt`` is not one of :data:`FORMATS`.
    """
    _check_fmt(fmt)
    return _SILENCE_BYTE[fmt]


# --- G.711 tables -------------------------------------------------------------------------


def _build_ulaw_decode() -> npt.NDArray[np.int16]:
    # G.711 µ-law: bytes are transmitted inverted; 3-bit segment, 4-bit mantissa; the
    # reconstruction value is the middle of the quantisation interval (Sun g711.c ulaw2linear).
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = ((u & 0x0F) << 3) + _ULAW_BIAS
    t = t << ((u & 0x70) >> 4)
    out = np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS)
    return out.astype(np.int16)


def _build_alaw_decode() -> npt.NDArray[np.int16]:
    # G.711 A-law: even bits inverted (XOR 0x55); sign bit set = positive
    # (Sun g711.c alaw2linear).
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    out = np.where(a & 0x80, t, -t)
    return out.astype(np.int16)


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    # Index = int16 value + 32768. Sun g711.c linear2ulaw on the 14-bit value.
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), _ULAW_CLIP_14) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END_14, mag, side="left")
    uval = (seg << 4) | ((mag >> np.minimum(seg + 1, 15)) & 0x0F)
    # The clipped, biased magnitude can reach 0x2000, past the last segment: saturate.
    uval = np.where(seg >= 8, 0x7F, uval)
    return (uval ^ mask).astype(np.uint8)


def _build_alaw_encode() -> npt.NDArray[np.uint8]:
    # Index = int16 value + 32768. Sun g711.c linear2alaw on the 13-bit value; negative
    # values use the one's complement magnitude (-x - 1), as the standard's tables do.
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(_ALAW_SEG_END_13, mag, side="left")
    shift = np.where(seg < 2, 1, seg)
    aval = (seg << 4) | ((mag >> np.minimum(shift, 15)) & 0x0F)
    # Above the last segment end the code saturates at the largest magnitude (0x7F).
    aval = np.where(seg >= 8, 0x7F, aval)
    return (aval ^ mask).astype(np.uint8)


# The tables are built on first use, not at import: building the 64 Ki encode tables takes
# ≈ 1 MB of temporaries that count in the daemon's peak RSS, and a line in u8 never needs them.


@functools.cache
def _decode_table(fmt: str) -> npt.NDArray[np.int16]:
    table = _build_ulaw_decode() if fmt == "ulaw" else _build_alaw_decode()
    table.flags.writeable = False  # shared between callers; make mutation an error
    return table


@functools.cache
def _encode_table(fmt: str) -> npt.NDArray[np.uint8]:
    table = _build_ulaw_encode() if fmt == "ulaw" else _build_alaw_encode()
    table.flags.writeable = False
    return table


# --- codecs -------------------------------------------------------------------------------


def decode_voice(data: bytes, fmt: str) -> npt.NDArray[np.int16]:
    """Decode modem voice bytes (DLE already removed) into int16 samples.

    Args:
        data: raw sample bytes in ``fmt``; for ``s16le`` the length must be even (the caller
            keeps an odd trailing byte for the next chunk).
        fmt: one of :data:`FORMATS`.

    Returns:
        A new, writable ``np.int16`` array with one element per sample. 8-bit linear formats
        are scaled by 256 (0x80 → 0 for ``u8``).

    Raises:
        ValueError: unknown ``fmt``, or an odd number of bytes for ``s16le``.
    """
    _check_fmt(fmt)
    raw = np.frombuffer(data, dtype=np.uint8)
    if fmt == "u8":
        return ((raw.astype(np.int16) - 128) << 8).astype(np.int16)
    if fmt == "s8":
        return raw.view(np.int8).astype(np.int16) << 8
    if fmt == "ulaw":
        return _decode_table("ulaw")[raw]
    if fmt == "alaw":
        return _decode_table("alaw")[raw]
    if len(data) % 2:
        raise ValueError(f"s16le data must have an even length, got {len(data)} bytes")
    return np.frombuffer(data, dtype=_S16LE).astype(np.int16)


def _as_int16(samples: npt.ArrayLike) -> npt.NDArray[np.int16]:
    if isinstance(samples, np.ndarray) and samples.dtype == np.int16 and samples.ndim == 1:
        return samples  # a frame as the daemon sends it (every 20 ms): nothing to convert
    arr = np.asarray(samples)
    if arr.dtype == np.int16:
        return np.asarray(arr.reshape(-1), dtype=np.int16)
    if not np.issubdtype(arr.dtype, np.integer):
        # Refuse floats: their scale (±1.0 or ±32767?) is ambiguous; see float_to_int16().
        raise TypeError(f"expected integer samples, got dtype {arr.dtype}; use float_to_int16()")
    clipped: npt.NDArray[np.int64] = np.clip(arr.reshape(-1).astype(np.int64), -32768, 32767)
    return clipped.astype(np.int16)


def encode_voice(samples: npt.ArrayLike, fmt: str) -> bytes:
    """Encode int16 samples into modem voice bytes (DLE doubling is the link's job).

    Args:
        samples: 1-D integer samples; ``np.int16`` is expected, wider integer types are
            clipped to the int16 range first.
        fmt: one of :data:`FORMATS`.

    Returns:
        ``bytes_per_sample(fmt) * len(samples)`` bytes. The 8-bit linear formats round to the
        nearest step of 256 (not truncate) and clip at the top; G.711 follows the standard
        quantiser (decode gives the middle of the decision interval).

    Raises:
        ValueError: unknown ``fmt``.
        TypeError: ``samples`` is not an integer array.
    """
    _check_fmt(fmt)
    x = _as_int16(samples)
    if fmt in ("u8", "s8"):
        # Round half up to the nearest multiple of 256, then clip: 32767 would round to 128.
        s8: npt.NDArray[np.int32] = np.clip((x.astype(np.int32) + 128) >> 8, -128, 127)
        if fmt == "u8":
            return (s8 + 128).astype(np.uint8).tobytes()
        return s8.astype(np.int8).tobytes()
    if fmt == "ulaw":
        return _encode_table("ulaw")[x.astype(np.int32) + 32768].tobytes()
    if fmt == "alaw":
        return _encode_table("alaw")[x.astype(np.int32) + 32768].tobytes()
    # Little-endian hosts (the Pi, x86) need no conversion: the samples' own bytes.
    return x.astype(_S16LE, copy=False).tobytes()


# --- float <-> int16 and levels -----------------------------------------------------------


def float_to_int16(x: npt.ArrayLike) -> npt.NDArray[np.int16]:
    """Convert float samples in [-1, 1] to int16.

    Values are clipped to [-1, 1], scaled by 32767 and rounded to nearest (half to even), so
    1.0 → 32767 and −1.0 → −32767. NaN becomes 0.
    """
    arr = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0)
    return np.rint(np.clip(arr, -1.0, 1.0) * FULL_SCALE).astype(np.int16)


def int16_to_float(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Convert int16 samples to float32 with 32767 → 1.0 (−32768 maps to −1.00003)."""
    return (np.asarray(x, dtype=np.float32) / np.float32(FULL_SCALE)).astype(np.float32)


def _as_unit_float(samples: npt.ArrayLike) -> npt.NDArray[np.float64]:
    arr = np.asarray(samples)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float64) / FULL_SCALE
    return arr.astype(np.float64)


def _to_dbfs(value: float) -> float:
    if not value > 0.0 or not math.isfinite(value):
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 20.0 * math.log10(value))


def rms_dbfs(samples: npt.ArrayLike) -> float:
    """Return the RMS level in dBFS (full scale = 32767 or 1.0; a full-scale sine is −3.01).

    Integer input is taken as int16 scale, float input as ±1.0 scale. Digital silence and an
    empty array give :data:`SILENCE_DBFS` (−120.0), never −inf; the result is never lower.
    """
    x = _as_unit_float(samples)
    if x.size == 0:
        return SILENCE_DBFS
    return _to_dbfs(math.sqrt(float(np.mean(x * x))))


def peak_dbfs(samples: npt.ArrayLike) -> float:
    """Return the peak (max absolute sample) level in dBFS; −120.0 for silence or empty input."""
    x = _as_unit_float(samples)
    if x.size == 0:
        return SILENCE_DBFS
    return _to_dbfs(float(np.max(np.abs(x))))
