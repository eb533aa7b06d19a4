"""Echo cancellers measured on simulated hybrids (the method behind docs/performance.md,
"Echo cancellation", and the choice in docs/architecture.md).

Each candidate library runs the same script at 8 kHz in 20 ms frames against a
:class:`appliance.audio.hybrid.Hybrid` of a given echo return loss and tail, behind a bulk
delay like the product's buffers add: the far end (the simulation's espeak-ng shop voice)
speaks alone, then both talk (the caller's voice as near end), then the far end alone again,
then the echo path changes (another impulse response) and the far end speaks on. The near end
carries a −75 dBFS noise floor (a quiet line; it bounds the measurable ERLE). Figures:

* ``erle_1s_db``: ERLE (echo power in / residual echo out) over the second second of far-end
  speech — "within 1 s of the far end speaking"; ``erle_db``: over seconds 2–4;
* ``dt_segsnr_in_db`` / ``dt_segsnr_db``: segmental SNR of the near end's speech during
  double talk, before cancellation (against the clean speech) and after it (against the same
  canceller's output for the near end alone: what the echo and the double talk cost);
* ``erle_after_dt_db``: ERLE over the far-end-alone stretch after double talk (divergence
  shows as a drop against ``erle_db``);
* ``path_change_erle_1s_db``: ERLE over the second half-second to 1 s after the path changed;
* ``us_per_frame``: CPU time per 20 ms frame (process time, this machine).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from appliance.audio.hybrid import Hybrid, HybridSpec
from appliance.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE_HZ

#: (ERL dB, tail ms) conditions of the table: the issue's 6–20 dB, 4–32 ms corners and middle.
CONDITIONS: Final = ((6.0, 4.0), (6.0, 32.0), (12.0, 16.0), (20.0, 4.0), (20.0, 32.0))
#: Bulk delay between the reference and the echo in the product (the modem's transmit lead and
#: its receive frame: about two frames, measured in the demo).
BULK_DELAY_MS: Final = 40.0
FAR_ALONE_S: Final = 4.0
DOUBLE_TALK_S: Final = 4.0
AFTER_DT_S: Final = 2.0
AFTER_CHANGE_S: Final = 3.0
NOISE_DBFS: Final = -75.0
#: A 100 ms block counts for ERLE when its echo is louder than this.
ECHO_MIN_DBFS: Final = -55.0
SEGSNR_RANGE_DB: Final = (-10.0, 35.0)


class Canceller(Protocol):
    def process(self, near: npt.NDArray[np.int16],
                far: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]: ...


def _speexdsp_pypi() -> Canceller:
    from speexdsp import EchoCanceller  # PyPI ``speexdsp`` (SWIG over libspeexdsp)

    ec = EchoCanceller.create(FRAME_SAMPLES, 1024, SAMPLE_RATE_HZ)

    class Adapter:
        def process(self, near: npt.NDArray[np.int16],
                    far: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
            out = ec.process(near.astype(np.int16).tobytes(), far.astype(np.int16).tobytes())
            return np.frombuffer(out, dtype=np.int16)

    return Adapter()


def _speex_ctypes(residual: bool) -> Callable[[], Canceller]:
    def make() -> Canceller:
        from appliance.audio.echo import SpeexEchoCanceller

        return SpeexEchoCanceller(residual_suppression=residual)

    return make


def _livekit_apm() -> Canceller:
    from livekit import rtc  # WebRTC AudioProcessingModule (AEC3) through livekit's FFI

    apm = rtc.AudioProcessingModule(echo_cancellation=True)
    half = FRAME_SAMPLES // 2  # the APM takes 10 ms frames

    class Adapter:
        def process(self, near: npt.NDArray[np.int16],
                    far: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
            out = []
            for i in (0, half):
                rev = rtc.AudioFrame(far[i : i + half].astype(np.int16).tobytes(),
                                     SAMPLE_RATE_HZ, 1, half)
                apm.process_reverse_stream(rev)
                cap = rtc.AudioFrame(near[i : i + half].astype(np.int16).tobytes(),
                                     SAMPLE_RATE_HZ, 1, half)
                apm.set_stream_delay_ms(int(BULK_DELAY_MS))
                apm.process_stream(cap)
                out.append(np.frombuffer(bytes(cap.data), dtype=np.int16))
            return np.concatenate(out)

    return Adapter()


def _pyaec() -> Canceller:
    from pyaec import Aec  # aec-rs, a Rust port of speexdsp's canceller

    aec = Aec(FRAME_SAMPLES, 1024, SAMPLE_RATE_HZ, True)

    class Adapter:
        def process(self, near: npt.NDArray[np.int16],
                    far: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
            return np.asarray(aec.cancel_echo(near.tolist(), far.tolist()), dtype=np.int16)

    return Adapter()


#: name → (factory, where it comes from).
CANDIDATES: Final[dict[str, tuple[Callable[[], Canceller], str]]] = {
    "speexdsp+res (ctypes)": (_speex_ctypes(True),
                              "libspeexdsp1 (Debian) via ctypes: MDF filter + residual "
                              "echo suppressor"),
    "speexdsp linear (ctypes)": (_speex_ctypes(False),
                                 "libspeexdsp1 via ctypes: MDF filter alone"),
    "speexdsp (PyPI)": (_speexdsp_pypi, "PyPI speexdsp 0.1.1 (SWIG, builds against "
                                        "libspeexdsp-dev): MDF filter alone"),
    "webrtc aec3 (livekit)": (_livekit_apm, "PyPI livekit 1.2 AudioProcessingModule "
                                            "(WebRTC AEC3 over its FFI)"),
    "pyaec": (_pyaec, "PyPI pyaec 1.0.1 (aec-rs, Rust port of speexdsp)"),
}


@dataclass(frozen=True, slots=True)
class Signals:
    far: npt.NDArray[np.int16]
    near: npt.NDArray[np.float64]
    #: Sample indices of the script's phases.
    dt_start: int
    dt_end: int
    change_at: int


def _speech(seconds: float, keys: tuple[str, ...], f0_hz: float) -> npt.NDArray[np.int16]:
    from appliance.sim.world import LINES_HU, render_speech

    clips = [render_speech(LINES_HU[k], f0_hz=f0_hz, seed=len(k)) for k in keys]
    n = int(seconds * SAMPLE_RATE_HZ)
    out = np.zeros(n, dtype=np.int16)
    gap = int(0.3 * SAMPLE_RATE_HZ)
    pos, i = 0, 0
    while pos < n:
        clip = clips[i % len(clips)]
        take = min(len(clip), n - pos)
        out[pos : pos + take] = clip[:take]
        pos += take + gap
        i += 1
    return out


def script_signals() -> Signals:
    """The far end's and the near end's speech along the measuring script."""
    total_s = FAR_ALONE_S + DOUBLE_TALK_S + AFTER_DT_S + AFTER_CHANGE_S
    far = _speech(total_s, ("agent_greeting", "agent_reply"), 190.0)
    n = len(far)
    dt_start = int(FAR_ALONE_S * SAMPLE_RATE_HZ)
    dt_end = dt_start + int(DOUBLE_TALK_S * SAMPLE_RATE_HZ)
    talk = _speech(DOUBLE_TALK_S, ("caller_complaint", "caller_message"), 110.0)
    near = np.zeros(n)
    near[dt_start:dt_end] = talk
    noise = np.random.default_rng(9).standard_normal(n) * 32767 * 10 ** (NOISE_DBFS / 20)
    near += noise
    change_at = dt_end + int(AFTER_DT_S * SAMPLE_RATE_HZ)
    return Signals(far=far, near=near, dt_start=dt_start, dt_end=dt_end, change_at=change_at)


def _erle(echo: npt.NDArray[np.float64], residual: npt.NDArray[np.float64]) -> float:
    block = SAMPLE_RATE_HZ // 10
    n = len(echo) // block
    e = echo[: n * block].reshape(n, block)
    r = residual[: n * block].reshape(n, block)
    pe = np.mean(e**2, axis=1)
    live = pe > (32767 * 10 ** (ECHO_MIN_DBFS / 20)) ** 2
    if not np.any(live):
        return float("nan")
    return 10 * math.log10(float(np.sum(pe[live])) / max(float(np.sum(np.mean(
        r**2, axis=1)[live])), 1e-9))


def _segsnr(clean: npt.NDArray[np.float64], got: npt.NDArray[np.float64]) -> float:
    n = len(clean) // FRAME_SAMPLES
    c = clean[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)
    g = got[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)
    pc = np.mean(c**2, axis=1)
    active = pc > (32767 * 10 ** (-45 / 20)) ** 2
    snr = 10 * np.log10(pc[active] / np.maximum(np.mean((g - c) ** 2, axis=1)[active], 1e-9))
    return float(np.mean(np.clip(snr, *SEGSNR_RANGE_DB)))


def _run_alone(factory: Callable[[], Canceller],
               near: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The canceller's output for the near end alone (no far end, no echo).

    Every canceller filters and delays a little even with nothing to cancel (speexdsp's DC
    notch and overlapping windows, the APM's band split), so the near end's survival in double
    talk is judged against this, not against the raw input.
    """
    canceller = factory()
    n = len(near) // FRAME_SAMPLES * FRAME_SAMPLES
    out = np.zeros(n)
    silent = np.zeros(FRAME_SAMPLES, dtype=np.int16)
    for start in range(0, n, FRAME_SAMPLES):
        mic = np.clip(np.rint(near[start : start + FRAME_SAMPLES]), -32768, 32767)
        out[start : start + FRAME_SAMPLES] = canceller.process(mic.astype(np.int16), silent)
    close = getattr(canceller, "close", None)
    if close is not None:
        close()
    return out


def measure(factory: Callable[[], Canceller], erl_db: float, tail_ms: float,
            signals: Signals) -> dict[str, float]:
    """Run one canceller through the script against one hybrid; its figures."""
    alone = _run_alone(factory, signals.near)
    canceller = factory()
    delay = int(BULK_DELAY_MS * SAMPLE_RATE_HZ / 1000)
    spec = HybridSpec(erl_db=erl_db, tail_ms=tail_ms, delay_ms=0.0, seed=3)
    hybrid = Hybrid(spec)
    far = signals.far
    n = len(far) // FRAME_SAMPLES * FRAME_SAMPLES
    delayed = np.concatenate((np.zeros(delay), far.astype(np.float64)))[:n]
    echo = np.zeros(n)
    out = np.zeros(n)
    cpu = 0.0
    for start in range(0, n, FRAME_SAMPLES):
        end = start + FRAME_SAMPLES
        if start == signals.change_at:
            hybrid.change(HybridSpec(erl_db=erl_db, tail_ms=tail_ms, delay_ms=0.0, seed=4))
        echo[start:end] = hybrid.echo(delayed[start:end])
        mic = np.clip(np.rint(signals.near[start:end] + echo[start:end]), -32768, 32767)
        t = time.process_time()
        cleaned = canceller.process(mic.astype(np.int16), far[start:end])
        cpu += time.process_time() - t
        out[start:end] = cleaned
    close = getattr(canceller, "close", None)
    if close is not None:
        close()
    residual = out - signals.near[:n]
    s = SAMPLE_RATE_HZ

    def erle(a: int, b: int) -> float:
        return round(_erle(echo[a:b], residual[a:b]), 1)

    dt = slice(signals.dt_start, signals.dt_end)
    mic_all = signals.near[:n] + echo
    return {
        "erle_1s_db": erle(1 * s, 2 * s),
        "erle_db": erle(2 * s, signals.dt_start),
        "dt_segsnr_db": round(_segsnr(alone[dt], out[dt]), 1),
        "dt_segsnr_in_db": round(_segsnr(signals.near[dt], mic_all[dt]), 1),
        "erle_after_dt_db": erle(signals.dt_end + s // 2, signals.change_at),
        "path_change_erle_1s_db": erle(signals.change_at + s // 2, signals.change_at + s),
        "path_change_erle_2s_db": erle(signals.change_at + s, signals.change_at + 2 * s),
        "us_per_frame": round(cpu / (n // FRAME_SAMPLES) * 1e6, 1),
    }


def measure_all(progress: Callable[[str], None] | None = None,
                names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every candidate (that imports here) over every condition; per-candidate rows."""
    signals = script_signals()
    result: dict[str, Any] = {"bulk_delay_ms": BULK_DELAY_MS, "candidates": {}}
    for name, (factory, origin) in CANDIDATES.items():
        if names is not None and name not in names:
            continue
        try:
            factory()
        except Exception as exc:  # not installed / not buildable here: say so in the table
            result["candidates"][name] = {"origin": origin, "error": f"{exc}"[:120]}
            continue
        rows = []
        for erl_db, tail_ms in CONDITIONS:
            if progress is not None:
                progress(f"echo: {name}, ERL {erl_db:g} dB, tail {tail_ms:g} ms")
            rows.append({"erl_db": erl_db, "tail_ms": tail_ms,
                         **measure(factory, erl_db, tail_ms, signals)})
        result["candidates"][name] = {"origin": origin, "rows": rows}
    return result


def table(result: dict[str, Any]) -> str:
    """The comparison as a Markdown table (docs/performance.md)."""
    head = ("| canceller | ERL dB | tail ms | ERLE 1–2 s | ERLE 2–4 s | double-talk segSNR "
            "in→out | ERLE after DT | path change ERLE 0.5–1 s / 1–2 s | µs/frame |")
    lines = [head, "|" + "---|" * 9]
    for name, cand in result["candidates"].items():
        if "error" in cand:
            lines.append(f"| {name} | — | — | not available: {cand['error']} | | | | | |")
            continue
        for r in cand["rows"]:
            lines.append(
                f"| {name} | {r['erl_db']:g} | {r['tail_ms']:g} | {r['erle_1s_db']} | "
                f"{r['erle_db']} | {r['dt_segsnr_in_db']} → {r['dt_segsnr_db']} | "
                f"{r['erle_after_dt_db']} | {r['path_change_erle_1s_db']} / "
                f"{r['path_change_erle_2s_db']} | {r['us_per_frame']} |")
    return "\n".join(lines)
