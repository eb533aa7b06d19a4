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

import collections
import ctypes
import ctypes.util
import logging
import math
from typing import Final

import numpy as np
import numpy.typing as npt

from appliance.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE_HZ

_LOGGER = logging.getLogger(__name__)

#: The adaptive filter's length: the hybrid's tail (≤ 32 ms, docs/performance.md) plus the
#: converters' delay and DELAY_MARGIN_MS, after the bulk delay (the echo's round trip through
#: the buffers: ≈ 40–60 ms), which the reference's delay line takes up instead once measured
#: (:meth:`SpeexEchoCanceller.process`). Fewer taps converge and reconverge faster: 40 ms is
#: four of speexdsp's 10 ms blocks (48 ms would be five: 2–4 dB less after a path change).
FILTER_MS: Final = 40
#: The filter adapts once per 10 ms (two sub-frames per 20 ms frame): over the bench's
#: path changes it is 6 dB further back 0.5–1 s after the change than adapting once per
#: frame (mean of 30 conditions), and recovers better after double talk (docs/performance.md).
SUBFRAME_SAMPLES: Final = FRAME_SAMPLES // 2
#: The sampling rate speexdsp's echo state is told (the audio is 8 kHz all the same). The
#: library derives only two things from it: the time constants of its echo-leak estimate
#: (scaled by frame size / rate) and the radius of the DC notch it puts on the received
#: audio — 0.9 below 12 kHz, a high-pass reaching up to ≈ 300 Hz, 0.982 from 12 kHz. The
#: residual echo suppressor takes "received minus cancelled" for the echo, so whatever the
#: wide notch takes out of the near end's voice counts as echo and is suppressed during
#: double talk: with 12 kHz the near end keeps 22–30 dB segmental SNR in double talk instead
#: of 13–21 dB over the bench's 30 runs (docs/performance.md).
ECHO_STATE_RATE_HZ: Final = 12000
#: Bulk delays the estimator looks for (the reference is delayed by up to this much).
MAX_BULK_DELAY_MS: Final = 128
#: The estimate is the cross-correlation (300–3400 Hz, phase transform) of the received
#: against the sent audio over the last window of this length, once most of it had far-end
#: speech in it...
DELAY_WINDOW_MS: Final = 150
#: ...and counts only when its peak stands this many times above the correlation's mean
#: magnitude (noise alone peaks at ≈ 4; the bench's hybrids at 9–24).
DELAY_CONFIDENCE: Final = 6.0
#: ...and this many times above any peak more than DELAY_MARGIN_MS away from it.
DELAY_UNIQUE_RATIO: Final = 1.3
#: Tries on every eligible frame before trying only every tenth.
DELAY_EAGER_TRIES: Final = 25
#: The reference is delayed by the estimate less this, so the filter also sees the few
#: milliseconds of the echo's onset before its strongest tap; estimates this close agree.
DELAY_MARGIN_MS: Final = 2
#: Residual echo suppression (dB, negative) with the far end alone and during double talk.
#: Measured against each other (docs/performance.md): −60 dB with the far end alone takes
#: 0–3 dB more residual echo out than speexdsp's default −40 and leaves the near end's
#: double-talk segmental SNR unchanged; a deeper double-talk value (−25) costs the near end
#: 0.1–0.2 dB for 0–1 dB more, a shallower one (−6) gives it 0.2–1 dB for 1–4 dB less.
ECHO_SUPPRESS_DB: Final = -60
ECHO_SUPPRESS_ACTIVE_DB: Final = -15
#: The denoiser's noise attenuation (dB): next to none, the line noise is evidence too.
NOISE_SUPPRESS_DB: Final = -1
#: The echo path watch (two paths, docs/audio.md "Echo cancellation"). Once the main filter
#: has taken SHADOW_CONVERGED_DB out of what comes back for SHADOW_REARM_MS of far-end speech
#: in a row, a fall below SHADOW_SUSPECT_DB while the far end speaks (a path change, or the
#: near end talking) starts a fresh shadow filter beside it on the same delay, and has the
#: bulk delay measured again: a moved delay starts the shadow on the new one instead, and so
#: does a main filter adding more than SHADOW_HARM_DB to what comes back (its path is gone: a
#: held call, a handset put down). While the shadow's error is SHADOW_LEAD_DB below the main
#: filter's, its output is the one passed on (the main filter's again once it is no lower),
#: but the residual echo suppressor keeps working from the main filter's state: a young
#: filter's state gives it nothing to work from, the main one's echo estimate still has the
#: far end's spectrum and level. A shadow started on a fall that has not led for
#: SHADOW_TRIAL_MS of far-end speech is dropped (the near end talks, or the main filter has
#: caught up). Over the bench's 30 path changes this is 11 dB better on average 0.5–1 s
#: after the change than the main filter re-adapting alone, and better than a fresh filter
#: taking over (docs/performance.md). The shadow takes over for good when its error is
#: SHADOW_SWAP_DB below the main filter's for SHADOW_SWAP_MS of far-end speech in a row, once
#: it has heard SHADOW_MIN_MS of it (a harmful main filter is replaced at once) — a shadow
#: started on a fall only if it still does so at SHADOW_MAX_S (taking over sooner, after
#: double talk, lost more than it won) — and is dropped otherwise after SHADOW_MAX_S.
SHADOW_CONVERGED_DB: Final = 12.0
SHADOW_SUSPECT_DB: Final = 6.0
SHADOW_HARM_DB: Final = -10.0
SHADOW_LEAD_DB: Final = 3.0
SHADOW_SWAP_DB: Final = 3.0
SHADOW_SWAP_MS: Final = 60
SHADOW_MIN_MS: Final = 400
SHADOW_MAX_S: Final = 2.0
SHADOW_TRIAL_MS: Final = 200
SHADOW_REARM_MS: Final = 100
#: Smoothing (per far-end sub-frame) of the powers the watch compares: a few frames of memory.
SHADOW_SMOOTHING: Final = 0.5
#: A reference frame quieter than this (dBFS) does not count towards the ERLE estimate.
ERLE_FAR_MIN_DBFS: Final = -45.0
#: Smoothing of the ERLE estimate (per frame): about half a second of memory.
ERLE_SMOOTHING: Final = 0.96
#: The audio history (sent and received) lives in buffers this many frames longer than the
#: history itself: each frame is written after the last, and the history is moved back to
#: the buffers' start once every HISTORY_SLACK_FRAMES + 1 frames instead of every frame.
HISTORY_SLACK_FRAMES: Final = 16

_SAMPLES_PER_MS: Final = SAMPLE_RATE_HZ // 1000
_SPEEX_ECHO_SET_SAMPLING_RATE: Final = 24
_SPEEX_PREPROCESS_SET_DENOISE: Final = 0
_SPEEX_PREPROCESS_SET_AGC: Final = 2
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
        lib.speex_echo_state_init.restype = void_p
        lib.speex_echo_state_init.argtypes = [c_int, c_int]
        lib.speex_echo_state_destroy.restype = None
        lib.speex_echo_state_destroy.argtypes = [void_p]
        lib.speex_echo_state_reset.restype = None
        lib.speex_echo_state_reset.argtypes = [void_p]
        lib.speex_echo_cancellation.restype = None
        # Buffers are passed as addresses (ints): no ctypes casts per frame.
        lib.speex_echo_cancellation.argtypes = [void_p, void_p, void_p, void_p]
        lib.speex_echo_ctl.restype = c_int
        lib.speex_echo_ctl.argtypes = [void_p, c_int, void_p]
        lib.speex_preprocess_state_init.restype = void_p
        lib.speex_preprocess_state_init.argtypes = [c_int, c_int]
        lib.speex_preprocess_state_destroy.restype = None
        lib.speex_preprocess_state_destroy.argtypes = [void_p]
        lib.speex_preprocess_ctl.restype = c_int
        lib.speex_preprocess_ctl.argtypes = [void_p, c_int, void_p]
        lib.speex_preprocess_run.restype = c_int
        lib.speex_preprocess_run.argtypes = [void_p, void_p]
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
    frame-aligned with the receive stream; the echo may come back up to
    ``MAX_BULK_DELAY_MS`` later, with a tail of up to ``filter_ms`` after it.

    The bulk delay is measured on the call's own audio (:attr:`bulk_delay_ms`): until it is,
    the filter covers the first ``filter_ms``; once it is, the reference goes through a delay
    line and the filter starts again on the tail alone.

    An echo path that changes mid-call (the shop moves the handset) is followed by a second,
    fresh filter run beside the main one, whose output is passed on while it does better
    (:attr:`passing_shadow`); a bulk delay that moves, or a path that is gone, likewise. The
    shadow takes over for good when it keeps doing clearly better (SHADOW_* above); every
    hand-over fades over one sub-frame. :attr:`swaps` counts the takeovers.

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
        self._taps = filter_ms * SAMPLE_RATE_HZ // 1000
        self._echo = self._new_state()
        if residual_suppression:
            self._pre = lib.speex_preprocess_state_init(SUBFRAME_SAMPLES, SAMPLE_RATE_HZ)
            # The echo suppressor is part of the denoiser's gain: the denoiser stays on with
            # its noise attenuation at NOISE_SUPPRESS_DB (next to none). The VAD is off by
            # default (setting it only prints a warning).
            for key, value in ((_SPEEX_PREPROCESS_SET_DENOISE, 1),
                               (_SPEEX_PREPROCESS_SET_NOISE_SUPPRESS, NOISE_SUPPRESS_DB),
                               (_SPEEX_PREPROCESS_SET_AGC, 0),
                               (_SPEEX_PREPROCESS_SET_DEREVERB, 0),
                               (_SPEEX_PREPROCESS_SET_ECHO_SUPPRESS, ECHO_SUPPRESS_DB),
                               (_SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE,
                                ECHO_SUPPRESS_ACTIVE_DB)):
                v = ctypes.c_int(value)
                lib.speex_preprocess_ctl(self._pre, key, ctypes.byref(v))
            lib.speex_preprocess_ctl(self._pre, _SPEEX_PREPROCESS_SET_ECHO_STATE,
                                     ctypes.c_void_p(self._echo))
        self._max_delay = MAX_BULK_DELAY_MS * SAMPLE_RATE_HZ // 1000
        self._window = DELAY_WINDOW_MS * SAMPLE_RATE_HZ // 1000
        # The sent audio of the last window plus the longest delay, and the received audio of
        # the last window: the delay line and the estimator's input. ``_sent`` and
        # ``_received`` are views of that history into two buffers allocated once, starting
        # at ``_start`` (:meth:`_push`); the library is given addresses into the buffers.
        slack = HISTORY_SLACK_FRAMES * FRAME_SAMPLES
        self._sent_buf = np.zeros(self._window + self._max_delay + slack, dtype=np.int16)
        self._received_buf = np.zeros(self._window + slack, dtype=np.int16)
        self._sent_base = int(self._sent_buf.ctypes.data)
        self._received_base = int(self._received_buf.ctypes.data)
        self._start = 0
        self._sent = self._sent_buf[: self._window + self._max_delay]
        self._received = self._received_buf[: self._window]
        self._out = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self._out_addr = int(self._out.ctypes.data)
        # The reference's delay (samples) and whether it is measured for good.
        self._delay = 0
        self._confirmed = False
        self._tries = 0
        # Which of the window's frames had far-end speech in them (a ring: frame n at
        # n % its length; bytes, read and written without numpy), and how many.
        self._far_active = bytearray(self._window // FRAME_SAMPLES)
        self._far_count = 0
        # The estimator's fixed parts: FFT size, the telephone band, the lags' indices.
        n, lags = self._window, self._max_delay
        self._fft_size = size = 1 << (2 * n + lags - 1).bit_length()
        freq = np.fft.rfftfreq(size, 1 / SAMPLE_RATE_HZ)
        self._out_of_band = (freq < 300.0) | (freq > 3400.0)
        self._lag_index = (np.arange(lags + 1) - lags) % size
        # Recent estimates (frame, delay): one counts when a later window agrees.
        self._candidates: collections.deque[tuple[int, int]] = collections.deque(
            maxlen=4 * len(self._far_active))
        self._in_power = 0.0
        self._out_power = 0.0
        self.frames = 0
        # The echo path watch: the shadow filter (None when not running), its reference's
        # delay and age (sub-frames run), and the smoothed powers of the received audio, the main
        # filter's and the shadow's output over far-end frames.
        self._shadow: int | None = None
        self._shadow_delay = 0
        self._shadow_frames = 0
        self._shadow_wins = 0
        self._shadow_heard = 0
        self._moved_delay: int | None = None
        self._suspect_frames = 0
        # Whether the shadow was started on a mere fall (not a moved delay or a path gone),
        # whether its error leads the main filter's, and whether its output is passed on.
        self._shadow_suspected = False
        self._shadow_leads = False
        self._passing_shadow = False
        self._shadow_idle = 0
        self._armed = False
        self._converged_run = 0
        self._shadow_out = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self._shadow_addr = int(self._shadow_out.ctypes.data)
        self._watch = [0.0, 0.0, 0.0]
        self._converged = False
        self._ramp = (np.arange(SUBFRAME_SAMPLES, dtype=np.float32) + 0.5) / SUBFRAME_SAMPLES
        #: Times a shadow filter took over (a path change followed), and at which frame last.
        self.swaps = 0
        self.last_swap_frame: int | None = None

    def _new_state(self) -> int:
        """A fresh speexdsp echo state of this canceller's size."""
        state: int | None = self._lib.speex_echo_state_init(SUBFRAME_SAMPLES, self._taps)
        if not state:
            raise EchoCancellerUnavailable("speex_echo_state_init failed")
        rate = ctypes.c_int(ECHO_STATE_RATE_HZ)
        self._lib.speex_echo_ctl(state, _SPEEX_ECHO_SET_SAMPLING_RATE, ctypes.byref(rate))
        return state

    @property
    def bulk_delay_ms(self) -> float | None:
        """The reference's delay (ms) once the bulk delay is measured; None before."""
        return self._delay * 1000 / SAMPLE_RATE_HZ if self._confirmed else None

    def _estimate_delay(self) -> int | None:
        """The bulk delay (samples) by the phase-transform cross-correlation, or None."""
        if not self._received.any():
            # Digital silence received (a muted or absent microphone): the correlation is
            # zero everywhere, which the test below turns down anyway; no FFTs for it.
            return None
        size = self._fft_size
        spectrum = (np.fft.rfft(self._received.astype(np.float64), size)
                    * np.conj(np.fft.rfft(self._sent.astype(np.float64), size)))
        spectrum /= np.maximum(np.abs(spectrum), 1e-9)
        # Only the telephone band: outside it there is line noise and no echo.
        spectrum[self._out_of_band] = 0.0
        corr = np.abs(np.fft.irfft(spectrum, size))
        # received[i] lines up with sent[i + lags - lag]: correlation index lag - lags.
        by_lag = corr[self._lag_index]
        peak, mean = int(np.argmax(by_lag)), float(np.mean(by_lag))
        if mean <= 0.0 or by_lag[peak] < DELAY_CONFIDENCE * mean:  # silence, or no clear echo
            return None
        # Voiced speech repeats every pitch period: a rival peak elsewhere (a period off the
        # true delay) as high as this one makes the estimate ambiguous.
        near_peak = DELAY_MARGIN_MS * SAMPLE_RATE_HZ // 1000
        rivals = np.concatenate((by_lag[: max(0, peak - near_peak)], by_lag[peak + near_peak :]))
        if rivals.size and by_lag[peak] < DELAY_UNIQUE_RATIO * float(np.max(rivals)):
            return None
        return max(0, peak - DELAY_MARGIN_MS * SAMPLE_RATE_HZ // 1000)

    def _update_delay(self) -> None:
        """Estimate the bulk delay on the last window (mostly far-end speech).

        A confident estimate is used at once (the filter starts again on the tail); it is
        kept for the call when an estimate a window later (independent audio) agrees, and
        replaced when a later confident one differs (a chance peak in noise, double talk).
        """
        found = self._estimate_delay()
        if found is None:
            return
        window = len(self._far_active)
        slack = DELAY_MARGIN_MS * SAMPLE_RATE_HZ // 1000
        self._confirmed = any(abs(delay - found) <= slack and self.frames - frame >= window
                              for frame, delay in self._candidates)
        self._candidates.append((self.frames, found))
        if abs(found - self._delay) > slack:
            # What was learnt is for the reference delayed otherwise: start again.
            self._lib.speex_echo_state_reset(self._echo)
            self._delay = found
        if self._confirmed:
            _LOGGER.debug("echo bulk delay %.1f ms", self.bulk_delay_ms)

    def process(self, near: npt.NDArray[np.int16],
                far: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        """The near-end frame with the echo of ``far`` (and of earlier frames) removed."""
        if self._echo is None:
            raise RuntimeError("echo canceller used after close()")
        start = self._push(near, far)
        sent = self._sent
        far32 = sent[-FRAME_SAMPLES:].astype(np.float32)
        far_power = float(far32 @ far32) / (FRAME_SAMPLES * 32767.0**2)
        far_active = _db(far_power) > ERLE_FAR_MIN_DBFS
        history = self._far_active
        slot = self.frames % len(history)
        self._far_count += far_active - history[slot]
        history[slot] = far_active
        if (not self._confirmed and self.frames * FRAME_SAMPLES >= len(sent)
                and self._far_count >= 0.6 * len(history)):
            self._tries += 1
            # Each try costs ≈ 100 µs: every frame at first, then every tenth (a path with
            # no echo to find never confirms one); none once the delay is confirmed.
            if self._tries <= DELAY_EAGER_TRIES or self._tries % 10 == 0:
                self._update_delay()
        lib, step = self._lib, 2 * SUBFRAME_SAMPLES  # bytes
        # Addresses of this frame in the buffers: the received frame, and the sent audio's
        # end less a frame (the reference is that, less the delay).
        near_addr = self._received_base + 2 * (start + len(self._received) - FRAME_SAMPLES)
        sent_addr = self._sent_base + 2 * (start + len(sent) - FRAME_SAMPLES)
        for k in range(FRAME_SAMPLES // SUBFRAME_SAMPLES):
            # The delay may change between sub-frames (a shadow on another delay took over).
            ref_addr = sent_addr - 2 * self._delay
            lib.speex_echo_cancellation(self._echo, near_addr + k * step,
                                        ref_addr + k * step, self._out_addr + k * step)
            if self._shadow is not None:
                shadow_ref = sent_addr - 2 * self._shadow_delay
                lib.speex_echo_cancellation(self._shadow, near_addr + k * step,
                                            shadow_ref + k * step,
                                            self._shadow_addr + k * step)
                self._shadow_frames += 1
            if self._confirmed:
                self._watch_path(k * SUBFRAME_SAMPLES)
            if self._pre is not None:
                lib.speex_preprocess_run(self._pre, self._out_addr + k * step)
        self.frames += 1
        cleaned = self._out.copy()
        if far_active:
            a = ERLE_SMOOTHING
            near32 = self._received[-FRAME_SAMPLES:].astype(np.float32)
            out32 = cleaned.astype(np.float32)
            self._in_power = a * self._in_power + (1 - a) * float(near32 @ near32) / FRAME_SAMPLES
            self._out_power = a * self._out_power + (1 - a) * float(out32 @ out32) / FRAME_SAMPLES
        return cleaned

    def _push(self, near: npt.NDArray[np.int16], far: npt.NDArray[np.int16]) -> int:
        """Append a frame to the sent and received history; return where the history (the
        views ``_sent`` and ``_received``) now starts in the buffers.

        The history moves back to the buffers' start only when the next frame would not fit
        after it (once every HISTORY_SLACK_FRAMES + 1 frames); otherwise the views step on.
        """
        sent_len, received_len = len(self._sent), len(self._received)
        start = self._start + FRAME_SAMPLES
        if start + sent_len > len(self._sent_buf):
            keep = sent_len - FRAME_SAMPLES
            self._sent_buf[:keep] = self._sent_buf[start : start + keep]
            keep = received_len - FRAME_SAMPLES
            self._received_buf[:keep] = self._received_buf[start : start + keep]
            start = 0
        self._start = start
        self._sent = self._sent_buf[start : start + sent_len]
        self._received = self._received_buf[start : start + received_len]
        self._sent[-FRAME_SAMPLES:] = far
        self._received[-FRAME_SAMPLES:] = near
        return start

    def _watch_path(self, offset: int) -> None:
        """The echo path watch (SHADOW_* above), on this sub-frame's linear outputs; picks the
        linear output passed on to the residual echo suppressor."""
        part = slice(offset, offset + SUBFRAME_SAMPLES)
        end = len(self._sent) - self._delay - FRAME_SAMPLES + offset
        ref32 = self._sent[end : end + SUBFRAME_SAMPLES].astype(np.float32)
        if float(ref32 @ ref32) / (SUBFRAME_SAMPLES * 32767.0**2) <= 10 ** (
                ERLE_FAR_MIN_DBFS / 10):
            # No far-end speech for this sub-frame's echo: nothing to judge by.
            self._age_shadow(part)
            self._pass_on(part)
            return
        a, watch = SHADOW_SMOOTHING, self._watch
        near = len(self._received) - FRAME_SAMPLES + offset
        near32 = self._received[near : near + SUBFRAME_SAMPLES].astype(np.float32)
        main32 = self._out[part].astype(np.float32)
        watch[0] = a * watch[0] + (1 - a) * float(near32 @ near32)
        watch[1] = a * watch[1] + (1 - a) * float(main32 @ main32)
        removed_db = _db(watch[0]) - _db(watch[1])
        if removed_db >= SHADOW_CONVERGED_DB:
            self._converged = True
            self._converged_run += 1
            if self._converged_run * SUBFRAME_SAMPLES >= SHADOW_REARM_MS * _SAMPLES_PER_MS:
                self._armed = True
        else:
            self._converged_run = 0
        if removed_db < SHADOW_SUSPECT_DB:
            self._follow_delay()
            if self._armed and (self._shadow is None or (self._shadow_suspected
                                                         and self._shadow_frames > 0
                                                         and not self._shadow_leads)):
                # The path changed, or the near end talks: a fresh filter shows which (one
                # from an earlier fall has learnt the old path). One per fall: the next only
                # once the main filter has converged again.
                self._start_shadow(self._delay, suspected=True)
                self._armed = False
        if self._shadow is None and self._converged and removed_db < SHADOW_HARM_DB:
            self._start_shadow(self._delay)
        if self._shadow is None or self._shadow_frames == 0:
            # None running, or one just started (it has no output to judge yet; one it
            # replaced may have been passed on).
            self._pass_on(part)
            return
        shadow32 = self._shadow_out[part].astype(np.float32)
        watch[2] = a * watch[2] + (1 - a) * float(shadow32 @ shadow32)
        self._shadow_heard += 1
        lead_db = _db(watch[1]) - _db(watch[2])
        self._shadow_leads = lead_db >= (0.0 if self._shadow_leads else SHADOW_LEAD_DB)
        self._shadow_idle = 0 if self._shadow_leads else self._shadow_idle + 1
        self._shadow_wins = self._shadow_wins + 1 if lead_db >= SHADOW_SWAP_DB else 0
        if (self._shadow_suspected and removed_db >= SHADOW_HARM_DB
                and self._shadow_idle * SUBFRAME_SAMPLES >= SHADOW_TRIAL_MS * _SAMPLES_PER_MS):
            # Not better for a while: the near end talks (or the main filter has caught up).
            self._drop_shadow()
            self._pass_on(part)
            return
        # A young filter has not started tracking its own echo estimate yet (which the
        # residual echo suppressor works from): it takes over early only from a main
        # filter that adds more than it removes, and one started on a mere fall only at
        # the end of its time (_age_shadow).
        ready = (removed_db < SHADOW_HARM_DB
                 or (not self._shadow_suspected
                     and self._shadow_heard * SUBFRAME_SAMPLES >= SHADOW_MIN_MS * _SAMPLES_PER_MS))
        if ready and self._shadow_wins * SUBFRAME_SAMPLES >= SHADOW_SWAP_MS * _SAMPLES_PER_MS:
            self._swap(part)
            return
        self._age_shadow(part)
        self._pass_on(part)

    def _pass_on(self, part: slice) -> None:
        """Put the shadow's output in the main filter's place while the shadow leads, fading
        over this sub-frame when that changes (no click)."""
        leads = self._shadow is not None and self._shadow_leads
        if leads and self._passing_shadow:
            self._out[part] = self._shadow_out[part]
        elif leads != self._passing_shadow:
            ramp = self._ramp if leads else 1 - self._ramp
            mixed = self._out[part] * (1 - ramp) + self._shadow_out[part] * ramp
            self._out[part] = np.rint(mixed)
        self._passing_shadow = leads

    def _follow_delay(self) -> None:
        """While the main filter removes little, measure the bulk delay again (about one
        window per DELAY_WINDOW_MS of far-end speech): two windows in a row agreeing on another
        delay than the main filter's start a shadow filter on it (a moved delay: a modem
        underrun, a re-routed call). Only the shadow moves, and it takes over only when it
        does better, so a wrong estimate (double talk) costs nothing audible."""
        self._suspect_frames += 1
        window = len(self._far_active)
        if (self._suspect_frames % (window * FRAME_SAMPLES // SUBFRAME_SAMPLES)
                or np.count_nonzero(self._far_active) < 0.6 * window):
            return
        found = self._estimate_delay()
        slack = DELAY_MARGIN_MS * SAMPLE_RATE_HZ // 1000
        known = [self._delay] + ([self._shadow_delay] if self._shadow is not None else [])
        if found is None or any(abs(found - d) <= slack for d in known):
            self._moved_delay = None
        elif self._moved_delay is not None and abs(found - self._moved_delay) <= slack:
            _LOGGER.debug("echo bulk delay moved to %.1f ms: shadow filter on it",
                          found * 1000 / SAMPLE_RATE_HZ)
            self._start_shadow(found)
        else:
            self._moved_delay = found

    def _start_shadow(self, delay: int, *, suspected: bool = False) -> None:
        if self._shadow is not None:
            self._lib.speex_echo_state_destroy(self._shadow)
        self._shadow = self._new_state()
        self._shadow_delay, self._shadow_frames, self._shadow_wins = delay, 0, 0
        self._shadow_heard = self._shadow_idle = 0
        self._shadow_suspected = suspected
        self._shadow_leads = False
        self._moved_delay = None
        # Until it has learnt anything the shadow passes what comes back through.
        self._watch[2] = self._watch[0]

    def _age_shadow(self, part: slice) -> None:
        """At SHADOW_MAX_S: a shadow whose output is in use takes over, another is dropped."""
        if (self._shadow is None
                or self._shadow_frames * SUBFRAME_SAMPLES < SHADOW_MAX_S * SAMPLE_RATE_HZ):
            return
        if self._shadow_wins * SUBFRAME_SAMPLES >= SHADOW_SWAP_MS * _SAMPLES_PER_MS:
            self._swap(part)
            return
        self._drop_shadow()

    def _drop_shadow(self) -> None:
        assert self._shadow is not None
        self._lib.speex_echo_state_destroy(self._shadow)
        self._shadow = None
        self._shadow_leads = False

    def _swap(self, part: slice) -> None:
        """The shadow takes over: its output fades in over this sub-frame (no click)."""
        shadow = self._shadow
        assert shadow is not None
        assert self._echo is not None
        if not self._passing_shadow:
            mixed = self._out[part] * (1 - self._ramp) + self._shadow_out[part] * self._ramp
            self._out[part] = np.rint(mixed)
        else:
            self._out[part] = self._shadow_out[part]
        self._passing_shadow = self._shadow_leads = False
        self._lib.speex_echo_state_destroy(self._echo)
        self._echo, self._shadow = shadow, None
        self._delay = self._shadow_delay
        if self._pre is not None:
            self._lib.speex_preprocess_ctl(self._pre, _SPEEX_PREPROCESS_SET_ECHO_STATE,
                                           ctypes.c_void_p(shadow))
        self._watch[1] = self._watch[2]
        # The new filter has to show it converged before its own fall starts a shadow.
        self._converged = False
        self.swaps += 1
        self.last_swap_frame = self.frames
        _LOGGER.debug("echo path changed: the shadow filter took over (%d)", self.swaps)

    @property
    def shadow_running(self) -> bool:
        """True while a shadow filter runs beside the main one (a second filter's cost)."""
        return self._shadow is not None

    @property
    def passing_shadow(self) -> bool:
        """True while the shadow filter's output is the one passed on (it leads)."""
        return self._passing_shadow

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
        self._sent_buf[:] = 0
        self._received_buf[:] = 0
        self._start = 0
        self._sent = self._sent_buf[: len(self._sent)]
        self._received = self._received_buf[: len(self._received)]
        self._delay, self._confirmed, self._tries, self.frames = 0, False, 0, 0
        self._far_active[:] = bytes(len(self._far_active))
        self._far_count = 0
        self._candidates.clear()
        if self._shadow is not None:
            self._lib.speex_echo_state_destroy(self._shadow)
            self._shadow = None
        self._watch = [0.0, 0.0, 0.0]
        self._converged = self._armed = False
        self._converged_run = 0
        self._shadow_leads = self._passing_shadow = False
        self.swaps, self.last_swap_frame = 0, None
        self._moved_delay, self._suspect_frames = None, 0

    def close(self) -> None:
        """Free the library's state (idempotent)."""
        if getattr(self, "_shadow", None) is not None:
            self._lib.speex_echo_state_destroy(self._shadow)
            self._shadow = None
        if self._pre is not None:
            self._lib.speex_preprocess_state_destroy(self._pre)
            self._pre = None
        if self._echo is not None:
            self._lib.speex_echo_state_destroy(self._echo)
            self._echo = None

    def __del__(self) -> None:
        self.close()
