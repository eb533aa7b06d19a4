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
from pathlib import Path
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
#: The hybrids' impulse responses (seeds) before and after the path change: the table's pair,
#: and the pairs the spread summary runs over too (one pair's path-change figures depend much
#: on how the two random responses happen to differ: 6–40 dB for the same canceller).
PATH_SEEDS: Final = ((3, 4), (5, 6), (7, 8), (11, 12), (13, 14), (17, 18))
#: The figures the spread summary gives the worst and the mean of.
SPREAD_FIGURES: Final = ("erle_1s_db", "dt_segsnr_db", "erle_after_dt_db",
                         "path_change_erle_1s_db", "path_change_erle_2s_db", "us_per_frame")
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
            signals: Signals, seeds: tuple[int, int] = PATH_SEEDS[0]) -> dict[str, float]:
    """Run one canceller through the script against one hybrid (``seeds``: its impulse
    response before and after the path change); its figures."""
    alone = _run_alone(factory, signals.near)
    canceller = factory()
    delay = int(BULK_DELAY_MS * SAMPLE_RATE_HZ / 1000)
    spec = HybridSpec(erl_db=erl_db, tail_ms=tail_ms, delay_ms=0.0, seed=seeds[0])
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
            hybrid.change(HybridSpec(erl_db=erl_db, tail_ms=tail_ms, delay_ms=0.0,
                                     seed=seeds[1]))
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
        result["candidates"][name] = {"origin": origin, "rows": rows,
                                      "spread": spread(factory, signals, progress)}
    return result


def spread(factory: Callable[[], Canceller], signals: Signals,
           progress: Callable[[str], None] | None = None) -> dict[str, dict[str, float]]:
    """Worst and mean of SPREAD_FIGURES over every condition and every PATH_SEEDS pair."""
    runs = []
    for seeds in PATH_SEEDS:
        if progress is not None:
            progress(f"echo: spread, hybrid seeds {seeds[0]} → {seeds[1]}")
        runs += [measure(factory, erl_db, tail_ms, signals, seeds)
                 for erl_db, tail_ms in CONDITIONS]
    # The worst ERLE or SNR is the lowest; the worst CPU time the highest.
    return {key: {"worst": round((max if key == "us_per_frame" else min)(
                      r[key] for r in runs), 1),
                  "mean": round(sum(r[key] for r in runs) / len(runs), 1),
                  "runs": len(runs)} for key in SPREAD_FIGURES}


def spread_table(result: dict[str, Any]) -> str:
    """The spread summaries as a Markdown table (worst / mean per figure)."""
    names = ("ERLE 1–2 s", "double-talk segSNR out", "ERLE after DT",
             "path change ERLE 0.5–1 s", "path change ERLE 1–2 s", "µs/frame")
    lines = ["| canceller | runs | " + " | ".join(f"{n} worst / mean" for n in names) + " |",
             "|" + "---|" * (len(names) + 2)]
    for name, cand in result["candidates"].items():
        if "spread" not in cand:
            continue
        sp = cand["spread"]
        cells = [f"{sp[k]['worst']} / {sp[k]['mean']}" for k in SPREAD_FIGURES]
        lines.append(f"| {name} | {sp[SPREAD_FIGURES[0]]['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


# --- the product's path: cross-talk in the recorded channels, DTMF under a prompt's echo ------

#: The demo's hybrids (docs/line.md, "Echo"), two frames of bulk delay on the line.
LINE_DELAY_FRAMES: Final = 2
ACTIVE_DBFS: Final = -40.0
SILENT_DBFS: Final = -60.0


def _frame_dbfs(x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    n = len(x) // FRAME_SAMPLES
    f = np.asarray(x[: n * FRAME_SAMPLES], dtype=np.float64).reshape(n, FRAME_SAMPLES)
    levels: npt.NDArray[np.float64] = 10 * np.log10(np.mean(f**2, axis=1) / 32767.0**2 + 1e-12)
    return levels


def cross_talk(*, echo_cancel: bool, line: HybridSpec, handset: HybridSpec,
               seconds: float = 30.0) -> dict[str, float]:
    """``cross_talk_db`` per recorded channel of a bridged call through :class:`CallMedia`.

    The caller and the shop take turns (the simulation's voices); the line returns the shop's
    voice through ``line`` two frames late, the SLIC returns the caller's through ``handset``.
    For each channel: the level of what is in it while only the other party talks, against
    that party's own level (dB; more negative is better).
    """
    import asyncio

    from appliance.audio.tones import tone_zone
    from appliance.bench.benchconfig import bench_config
    from appliance.bench.codecs import conversation
    from appliance.daemon.media import CallMedia

    talk = conversation(seconds)
    sent: list[npt.NDArray[np.int16]] = []
    heard: list[npt.NDArray[np.int16]] = []
    # Nothing is recorded: the state directory is never written.
    config = bench_config(Path("/nonexistent"), ["sim://"], echo_cancel=echo_cancel)
    media = CallMedia.for_line("00000000", config, config.lines[0], send_to_line=sent.append,
                               play_to_earpiece=heard.append, events=asyncio.Queue(),
                               tone_zone=tone_zone("hu"))
    media.bridge()
    line_path, slic_path = Hybrid(line), Hybrid(handset)
    line_echo = [np.zeros(FRAME_SAMPLES)] * LINE_DELAY_FRAMES
    slic_echo = np.zeros(FRAME_SAMPLES)
    cpu = 0.0
    frames = len(talk) // FRAME_SAMPLES
    for k in range(frames):
        part = slice(k * FRAME_SAMPLES, (k + 1) * FRAME_SAMPLES)
        mouth = np.clip(np.rint(talk[part, 1] + slic_echo), -32768, 32767).astype(np.int16)
        rx = np.clip(np.rint(talk[part, 0] + line_echo.pop(0)), -32768, 32767).astype(np.int16)
        t = time.process_time()
        media.on_handset_capture(mouth)
        media.on_line_audio(rx)
        cpu += time.process_time() - t
        line_echo.append(line_path.echo(sent[-1]))
        slic_echo = slic_path.echo(heard[-1])
    caller_ch = np.concatenate(heard)  # bridged: the earpiece gets the recorded caller frame
    shop_ch = np.concatenate(sent)  # and the line the recorded shop frame
    clean_caller, clean_shop = _frame_dbfs(talk[:, 0]), _frame_dbfs(talk[:, 1])
    got_caller, got_shop = _frame_dbfs(caller_ch), _frame_dbfs(shop_ch)
    n = min(len(clean_caller), len(got_caller))
    shop_only = (clean_shop[:n] > ACTIVE_DBFS) & (clean_caller[:n] < SILENT_DBFS)
    caller_only = (clean_caller[:n] > ACTIVE_DBFS) & (clean_shop[:n] < SILENT_DBFS)

    def mean_db(levels: npt.NDArray[np.float64], mask: npt.NDArray[np.bool_]) -> float:
        return float(10 * np.log10(np.mean(10 ** (levels[:n][mask] / 10))))

    return {
        "caller_channel_cross_talk_db": round(mean_db(got_caller, shop_only)
                                              - mean_db(clean_shop, shop_only), 1),
        "shop_channel_cross_talk_db": round(mean_db(got_shop, caller_only)
                                            - mean_db(clean_caller, caller_only), 1),
        # The call's media path per 20 ms frame (both directions, cancellers included).
        "media_us_per_frame": round(cpu / frames * 1e6, 1),
    }


#: Keys pressed under a prompt: level of each key (dBFS) against the line's ERL.
DTMF_KEY_LEVELS_DBFS: Final = (-10.0, -20.0, -26.0)
DTMF_ERLS_DB: Final = (6.0, 10.0, 20.0)
DTMF_KEY_EVERY_S: Final = 1.3
DTMF_MATCH_S: Final = 0.3


def dtmf_under_prompt(*, erl_db: float, key_dbfs: float, seconds: float = 40.0,
                      ) -> dict[str, dict[str, int]]:
    """Keys pressed while a prompt plays, with the prompt's echo in the received audio.

    Detectors compared: ``gate`` (today's: the received frame, the frame sent before it as
    the echo gate's reference), ``cancelled`` (the line canceller's output, no gate) and
    ``cancelled+gate``. Each: keys pressed, missed, and false keys.
    """
    from appliance.audio.dtmf import DtmfDetector
    from appliance.audio.echo import SpeexEchoCanceller
    from appliance.audio.tones import dtmf_samples

    prompt = _speech(seconds, ("caller_message", "agent_reply", "caller_complaint"), 190.0)
    n = len(prompt) // FRAME_SAMPLES * FRAME_SAMPLES
    keys_in = np.zeros(n)
    pressed: list[tuple[float, str]] = []
    digits = "0123456789*#"
    t = 0.5
    while t + 0.2 < n / SAMPLE_RATE_HZ:
        digit = digits[len(pressed) % len(digits)]
        tone = dtmf_samples(digit, 100, level_dbfs=key_dbfs).astype(np.float64)
        at = int(t * SAMPLE_RATE_HZ)
        keys_in[at : at + len(tone)] += tone
        pressed.append((t, digit))
        t += DTMF_KEY_EVERY_S
    hybrid = Hybrid(HybridSpec(erl_db=erl_db, tail_ms=16.0, seed=5))
    delay = LINE_DELAY_FRAMES * FRAME_SAMPLES
    echo = hybrid.echo(np.concatenate((np.zeros(delay), prompt.astype(np.float64)))[:n])
    noise = np.random.default_rng(2).standard_normal(n) * 32767 * 10 ** (NOISE_DBFS / 20)
    rx = np.clip(np.rint(keys_in + echo + noise), -32768, 32767).astype(np.int16)
    detectors = {"gate": DtmfDetector(), "cancelled": DtmfDetector(),
                 "cancelled+gate": DtmfDetector()}
    found: dict[str, list[tuple[float, str]]] = {name: [] for name in detectors}
    aec = SpeexEchoCanceller()
    previous = np.zeros(FRAME_SAMPLES, dtype=np.int16)
    for start in range(0, n, FRAME_SAMPLES):
        frame = rx[start : start + FRAME_SAMPLES]
        tx = prompt[start : start + FRAME_SAMPLES]
        clean = aec.process(frame, tx)
        at_s = start / SAMPLE_RATE_HZ
        for name, (x, ref) in (("gate", (frame, previous)), ("cancelled", (clean, None)),
                               ("cancelled+gate", (clean, previous))):
            found[name] += [(at_s, digit) for digit in detectors[name].feed(x, reference=ref)]
        previous = tx
    aec.close()
    result = {}
    for name, hits in found.items():
        unmatched = list(hits)
        missed = 0
        for t_key, digit in pressed:
            match = next((h for h in unmatched
                          if h[1] == digit and 0 <= h[0] - t_key <= DTMF_MATCH_S), None)
            if match is None:
                missed += 1
            else:
                unmatched.remove(match)
        result[name] = {"pressed": len(pressed), "missed": missed, "false": len(unmatched)}
    return result


def product_figures(progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Cross-talk before/after on the demo's hybrids, and the DTMF comparison."""
    from appliance.audio.hybrid import (
        HANDSET_ERL_DB,
        HANDSET_TAIL_MS,
        LINE_ERL_DB,
        LINE_TAIL_MS,
    )

    line = HybridSpec(erl_db=LINE_ERL_DB, tail_ms=LINE_TAIL_MS, seed=0)
    handset = HybridSpec(erl_db=HANDSET_ERL_DB, tail_ms=HANDSET_TAIL_MS, seed=100)
    if progress is not None:
        progress("echo: cross-talk in a bridged call, cancellers off and on")
    out: dict[str, Any] = {
        "cross_talk_before": cross_talk(echo_cancel=False, line=line, handset=handset),
        "cross_talk_after": cross_talk(echo_cancel=True, line=line, handset=handset),
        "dtmf": [],
    }
    for erl_db in DTMF_ERLS_DB:
        for key_dbfs in DTMF_KEY_LEVELS_DBFS:
            if progress is not None:
                progress(f"echo: DTMF under a prompt, ERL {erl_db:g} dB, keys {key_dbfs:g} dBFS")
            out["dtmf"].append({"erl_db": erl_db, "key_dbfs": key_dbfs,
                                **dtmf_under_prompt(erl_db=erl_db, key_dbfs=key_dbfs)})
    return out


def product_table(figures: dict[str, Any]) -> str:
    """Cross-talk before/after and the DTMF comparison as Markdown (docs/performance.md)."""
    before, after = figures["cross_talk_before"], figures["cross_talk_after"]
    lines = ["| figure | cancellers off | on |", "|---|---|---|"]
    for key, name in (("caller_channel_cross_talk_db", "caller (shop's voice in it)"),
                      ("shop_channel_cross_talk_db", "shop (caller's voice in it)"),
                      ("media_us_per_frame", "media path, µs per 20 ms frame")):
        lines.append(f"| {name} | {before[key]} | {after[key]} |")
    lines += ["", "| ERL dB | key dBFS | echo gate: missed / false | cancelled: missed / false "
                  "| cancelled + gate: missed / false |", "|---|---|---|---|---|"]
    for row in figures["dtmf"]:
        cells = [f"{row[k]['missed']} / {row[k]['false']} of {row[k]['pressed']}"
                 for k in ("gate", "cancelled", "cancelled+gate")]
        lines.append(f"| {row['erl_db']:g} | {row['key_dbfs']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
