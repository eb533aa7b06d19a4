"""Line and handset echo cancellation: libspeexdsp's echo canceller, bound through ctypes.

Each bridged call runs two cancellers (:mod:`appliance.daemon.media`): one takes the shop's
voice out of what the line returns (the modem's hybrid), one takes the caller's voice out of
the mouthpiece (the SLIC's hybrid). Why speexdsp, and the figures it was chosen by, are in
docs/architecture.md ("Echo cancellation") and docs/performance.md.

The library is Xiph's libspeexdsp (Debian/Raspberry Pi OS package ``libspeexdsp1``): its
multi-delay block frequency-domain adaptive filter (``speex_echo_cancellation``) followed by
its preprocessor's residual echo suppressor (``speex_preprocess_run`` with
``SPEEX_PREPROCESS_SET_ECHO_STATE``; its noise suppressor, AGC and VAD are switched off, so
nothing but echo is taken out of the evidence). The binding is ctypes over the C API, which
has been stable since 2008: nothing to compile on the Pi.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
from typing import Final

import numpy as np
import numpy.typing as npt

from appliance.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE_HZ

_LOGGER = logging.getLogger(__name__)

#: The adaptive filter's length: covers the echo's round trip through the buffers (the
#: modem's transmit lead and clock, the sound card's periods: ≈ 40–60 ms measured) plus a
#: hybrid tail of up to 32 ms, with room (docs/performance.md, "Echo cancellation").
FILTER_MS: Final = 128
#: Residual echo suppression (dB, negative) with the far end alone and during double talk
#: (the speexdsp defaults; the double-talk value keeps the near end's speech intact).
ECHO_SUPPRESS_DB: Final = -40
ECHO_SUPPRESS_ACTIVE_DB: Final = -15
#: The denoiser's noise attenuation (dB): next to none, the line noise is evidence too.
NOISE_SUPPRESS_DB: Final = -1
#: A reference frame quieter than this (dBFS) does not count towards the ERLE estimate.
ERLE_FAR_MIN_DBFS: Final = -45.0
#: Smoothing of the ERLE estimate (per frame): about half a second of memory.
ERLE_SMOOTHING: Final = 0.96

_SPEEX_ECHO_SET_SAMPLING_RATE: Final = 24
_SPEEX_PREPROCESS_SET_DENOISE: Final = 0
_SPEEX_PREPROCESS_SET_AGC: Final = 2
_SPEEX_PREPROCESS_SET_VAD: Final = 4
_SPEEX_PREPROCESS_SET_DEREVERB: Final = 8
_SPEEX_PREPROCESS_SET_NOISE_SUPPRESS: Final = 18
_SPEEX_PREPROCESS_SET_ECHO_SUPPRESS: Final = 20
_SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE: Final = 22
_SPEEX_PREPROCESS_SET_ECHO_STATE: Final = 24

_LIB: ctypes.CDLL | None = None


class EchoCancellerUnavailable(RuntimeError):
    """libspeexdsp is not installed (``apt install libspeexdsp1``; setup.sh does)."""


def _library() -> ctypes.CDLL:
    global _LIB
    if _LIB is not None:
        return _LIB
    names = [ctypes.util.find_library("speexdsp"), "libspeexdsp.so.1", "libspeexdsp.so"]
    for name in names:
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        void_p, c_int = ctypes.c_void_p, ctypes.c_int
        i16_p = ctypes.POINTER(ctypes.c_int16)
        lib.speex_echo_state_init.restype = void_p
        lib.speex_echo_state_init.argtypes = [c_int, c_int]
        lib.speex_echo_state_destroy.restype = None
        lib.speex_echo_state_destroy.argtypes = [void_p]
        lib.speex_echo_state_reset.restype = None
        lib.speex_echo_state_reset.argtypes = [void_p]
        lib.speex_echo_cancellation.restype = None
        lib.speex_echo_cancellation.argtypes = [void_p, i16_p, i16_p, i16_p]
        lib.speex_echo_ctl.restype = c_int
        lib.speex_echo_ctl.argtypes = [void_p, c_int, void_p]
        lib.speex_preprocess_state_init.restype = void_p
        lib.speex_preprocess_state_init.argtypes = [c_int, c_int]
        lib.speex_preprocess_state_destroy.restype = None
        lib.speex_preprocess_state_destroy.argtypes = [void_p]
        lib.speex_preprocess_ctl.restype = c_int
        lib.speex_preprocess_ctl.argtypes = [void_p, c_int, void_p]
        lib.speex_preprocess_run.restype = c_int
        lib.speex_preprocess_run.argtypes = [void_p, i16_p]
        _LIB = lib
        return lib
    raise EchoCancellerUnavailable(
        "libspeexdsp is not installed (apt install libspeexdsp1): echo cancellation is off")


def echo_canceller_available() -> bool:
    """True when libspeexdsp can be loaded."""
    try:
        _library()
    except EchoCancellerUnavailable:
        return False
    return True


def _db(power: float) -> float:
    return 10 * math.log10(max(power, 1e-12))


class SpeexEchoCanceller:
    """One echo path's canceller: 20 ms frames of 8 kHz int16, no added latency.

    :meth:`process` takes the frame received (near end: what came back, with the other
    party's voice) and the frame sent at the same time (far end: the reference) and returns
    the received frame with the echo taken out. The reference must be what was sent,
    frame-aligned with the receive stream; the echo may come back up to ``filter_ms`` later.

    Args:
        filter_ms: the adaptive filter's length.
        residual_suppression: run speexdsp's residual echo suppressor after the linear
            filter (on in the product; off only to measure the linear filter alone).
    """

    def __init__(self, *, filter_ms: int = FILTER_MS, residual_suppression: bool = True) -> None:
        self._echo: int | None = None
        self._pre: int | None = None
        lib = _library()
        self._lib = lib
        taps = filter_ms * SAMPLE_RATE_HZ // 1000
        self._echo = lib.speex_echo_state_init(FRAME_SAMPLES, taps)
        if not self._echo:
            raise EchoCancellerUnavailable("speex_echo_state_init failed")
        rate = ctypes.c_int(SAMPLE_RATE_HZ)
        lib.speex_echo_ctl(self._echo, _SPEEX_ECHO_SET_SAMPLING_RATE, ctypes.byref(rate))
        if residual_suppression:
            self._pre = lib.speex_preprocess_state_init(FRAME_SAMPLES, SAMPLE_RATE_HZ)
            # The echo suppressor is part of the denoiser's gain: the denoiser stays on with
            # its noise attenuation at NOISE_SUPPRESS_DB (next to none).
            for key, value in ((_SPEEX_PREPROCESS_SET_DENOISE, 1),
                               (_SPEEX_PREPROCESS_SET_NOISE_SUPPRESS, NOISE_SUPPRESS_DB),
                               (_SPEEX_PREPROCESS_SET_AGC, 0),
                               (_SPEEX_PREPROCESS_SET_VAD, 0), (_SPEEX_PREPROCESS_SET_DEREVERB, 0),
                               (_SPEEX_PREPROCESS_SET_ECHO_SUPPRESS, ECHO_SUPPRESS_DB),
                               (_SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE,
                                ECHO_SUPPRESS_ACTIVE_DB)):
                v = ctypes.c_int(value)
                lib.speex_preprocess_ctl(self._pre, key, ctypes.byref(v))
            lib.speex_preprocess_ctl(self._pre, _SPEEX_PREPROCESS_SET_ECHO_STATE,
                                     ctypes.c_void_p(self._echo))
        self._out = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self._in_power = 0.0
        self._out_power = 0.0
        self.frames = 0

    def process(self, near: npt.NDArray[np.int16],
                far: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        """The near-end frame with the echo of ``far`` (and of earlier frames) removed."""
        if self._echo is None:
            raise RuntimeError("echo canceller used after close()")
        near = np.ascontiguousarray(near, dtype=np.int16)
        far = np.ascontiguousarray(far, dtype=np.int16)
        out = np.empty(FRAME_SAMPLES, dtype=np.int16)
        i16_p = ctypes.POINTER(ctypes.c_int16)
        self._lib.speex_echo_cancellation(self._echo, near.ctypes.data_as(i16_p),
                                          far.ctypes.data_as(i16_p), out.ctypes.data_as(i16_p))
        if self._pre is not None:
            self._lib.speex_preprocess_run(self._pre, out.ctypes.data_as(i16_p))
        self.frames += 1
        far_power = float(np.mean(far.astype(np.float64) ** 2)) / 32767.0**2
        if _db(far_power) > ERLE_FAR_MIN_DBFS:
            a = ERLE_SMOOTHING
            self._in_power = a * self._in_power + (1 - a) * float(
                np.mean(near.astype(np.float64) ** 2))
            self._out_power = a * self._out_power + (1 - a) * float(
                np.mean(out.astype(np.float64) ** 2))
        return out

    @property
    def erle_db(self) -> float | None:
        """Echo return loss enhancement now (dB): received vs cancelled power while the far
        end speaks, smoothed over ≈ 0.5 s; None before the far end has spoken. It reads low
        during double talk (the near end's voice is, rightly, not removed)."""
        if self._in_power <= 0.0:
            return None
        return round(_db(self._in_power) - _db(self._out_power + 1.0), 1)

    def reset(self) -> None:
        """Forget the learnt echo path (a new call on the same canceller)."""
        if self._echo is not None:
            self._lib.speex_echo_state_reset(self._echo)
        self._in_power = self._out_power = 0.0

    def close(self) -> None:
        """Free the library's state (idempotent)."""
        if self._pre is not None:
            self._lib.speex_preprocess_state_destroy(self._pre)
            self._pre = None
        if self._echo is not None:
            self._lib.speex_echo_state_destroy(self._echo)
            self._echo = None

    def __del__(self) -> None:
        self.close()
