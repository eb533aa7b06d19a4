"""Recording quality per voice format: SNR of a caller, line → recording.

For each format some emulator profile offers (``+VSM=?``), a caller at a quiet (−30 dBFS) and a
normal (−15 dBFS) level speaks into the emulated line: band-limited noise (300–3400 Hz, the
telephone band, no period a lag search could lock onto) at that RMS level. The modem quantises
it in the chosen format, the host's driver decodes it (:class:`~appliance.line.modem.Modem`
over ``+VTR``), the product's :class:`~appliance.store.recorder.Recorder` writes it to FLAC,
and the caller channel read back from the file is compared with the ideal (unquantised) signal:
SNR = signal power / error power. The recording must also be sample-exact the format's own
codec round trip (``decode(encode(x))``) — and the shop's side, sent to the line in the same
call, sample-exact what the emulated modem played.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import soundfile

from appliance.audio.pcm import (
    FRAME_SAMPLES,
    SAMPLE_RATE_HZ,
    decode_voice,
    encode_voice,
    float_to_int16,
)
from appliance.bench.benchconfig import FSYNC_INTERVAL_S
from appliance.line.commands import DEFAULT_FORMAT_PREFERENCE, parse_vsm_list
from appliance.line.modem import Modem
from appliance.sim.modem.emulator import SimModem
from appliance.sim.modem.link import sim_url
from appliance.sim.modem.profiles import PROFILES
from appliance.store.recorder import Recorder

#: The caller levels measured (RMS, dBFS): a quiet and a normal talker.
LEVELS_DBFS: Final = (-30.0, -15.0)
#: Seconds of caller audio measured per format and level.
MEASURE_S: Final = 2.0
#: The telephone band the test signal is limited to.
BAND_HZ: Final = (300.0, 3400.0)
#: Received samples searched for the start of the caller's signal (the frames in flight when
#: ``+VTR`` began); the emulator starts the caller with the stream, so this is a safety margin.
MAX_LAG_SAMPLES: Final = 800


def caller_signal(level_dbfs: float, seconds: float, seed: int = 16) -> npt.NDArray[np.float64]:
    """Band-limited noise at ``level_dbfs`` RMS (full scale = 1.0), clipped to ±1."""
    n = int(seconds * SAMPLE_RATE_HZ)
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE_HZ)
    spectrum[(freqs < BAND_HZ[0]) | (freqs > BAND_HZ[1])] = 0
    x = np.fft.irfft(spectrum, n)
    x *= 10 ** (level_dbfs / 20) / np.sqrt(np.mean(x**2))
    return np.clip(x, -1.0, 1.0)


def offered_formats() -> dict[str, str]:
    """``{format: profile}``: each usable format and the first emulator profile offering it,
    in :data:`DEFAULT_FORMAT_PREFERENCE` order."""
    out: dict[str, str] = {}
    for fmt in DEFAULT_FORMAT_PREFERENCE:
        for name, profile in PROFILES.items():
            if any(e.fmt == fmt for e in parse_vsm_list(list(profile.vsm_list))):
                out[fmt] = name
                break
    return out


@dataclass(frozen=True, slots=True)
class FormatFigures:
    """One format at one level."""

    fmt: str
    level_dbfs: float
    snr_db: float
    #: The recording's caller channel is exactly ``decode(encode(x))`` of what the line carried.
    recording_exact: bool
    #: What the shop's side sent arrived at the modem exactly as the format carries it.
    transmit_exact: bool
    samples: int


def snr_db(ideal: npt.NDArray[np.float64], recorded: npt.NDArray[np.int16]) -> float:
    """Signal power over error power of ``recorded`` (int16) against ``ideal`` (±1.0)."""
    error = recorded.astype(np.float64) / 32767.0 - ideal
    noise = float(np.mean(error**2))
    signal = float(np.mean(ideal**2))
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def _find_lag(received: npt.NDArray[np.int16], sent: npt.NDArray[np.int16]) -> int:
    """Where ``sent`` starts in ``received`` (0..MAX_LAG_SAMPLES), by least squared error."""
    probe = sent[:FRAME_SAMPLES * 10].astype(np.float64)
    best, best_err = 0, math.inf
    for lag in range(0, min(MAX_LAG_SAMPLES, len(received) - len(probe)) + 1):
        err = float(np.sum((received[lag : lag + len(probe)] - probe) ** 2))
        if err < best_err:
            best, best_err = lag, err
            if err == 0:
                break
    return best


async def measure_format(fmt: str, profile: str, level_dbfs: float, work: Path,
                         seconds: float = MEASURE_S) -> FormatFigures:
    """One call on ``profile`` in ``fmt``: the caller at ``level_dbfs`` for ``seconds``."""
    ideal = caller_signal(level_dbfs, seconds)
    line = float_to_int16(ideal)  # what the emulated line carries, sample by sample
    sim = SimModem(profile, ring_period_s=0.1, cid_delay_s=0.03)
    pos = 0

    def source(n: int) -> npt.NDArray[np.int16]:
        nonlocal pos
        chunk = line[pos : pos + n]
        pos += n
        return np.pad(chunk, (0, n - len(chunk)))

    sim.set_caller_audio(source)
    modem = Modem(sim_url(sim), command_timeout_s=2.0, cid_settle_s=0.01,
                  audio_formats=(fmt,))
    shop = float_to_int16(caller_signal(-20.0, seconds, seed=17))
    received: list[npt.NDArray[np.int16]] = []
    enough = asyncio.Event()
    wanted = len(line) + MAX_LAG_SAMPLES + FRAME_SAMPLES

    def on_audio(frame: npt.NDArray[np.int16]) -> None:
        # Clocked by the modem, as the daemon's media is: one shop frame out per frame in.
        k = len(received)
        received.append(frame.copy())
        modem.send_audio(shop[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES])
        if k * FRAME_SAMPLES >= wanted:
            enough.set()

    try:
        await modem.open()
        if modem.voice_format != fmt:
            raise RuntimeError(f"profile {profile} did not give {fmt}: {modem.voice_format}")
        sim.ring("3612345678")
        await modem.answer()
        await modem.start_duplex(on_audio)
        await asyncio.wait_for(enough.wait(), seconds + 10.0)
        await modem.stop_duplex()
        await modem.hang_up()
    finally:
        await modem.close()
    rx = np.concatenate(received)
    recorder = Recorder(work, f"{abs(hash((fmt, level_dbfs))) % 10**8:08d}",
                        now=dt.datetime.now().astimezone(), fsync_interval_s=FSYNC_INTERVAL_S)
    for start in range(0, len(rx), FRAME_SAMPLES):
        frame = rx[start : start + FRAME_SAMPLES]
        recorder.write(np.stack([frame, np.zeros_like(frame)], axis=1))
    result = await recorder.finalize("flac")
    recorded, _ = await asyncio.to_thread(soundfile.read, result.path, dtype="int16")
    caller = recorded[:, 0]
    lag = _find_lag(caller, decode_voice(encode_voice(line, fmt), fmt))
    caller = caller[lag : lag + len(line)]
    expected = decode_voice(encode_voice(line, fmt), fmt)
    played = sim.played
    shop_expected = decode_voice(encode_voice(shop, fmt), fmt)
    n_tx = min(len(played), len(shop_expected))
    return FormatFigures(
        fmt=fmt, level_dbfs=level_dbfs, snr_db=round(snr_db(ideal, caller), 1),
        recording_exact=bool(len(caller) == len(line) and np.array_equal(caller, expected)),
        transmit_exact=bool(n_tx > len(shop) // 2
                            and np.array_equal(played[:n_tx], shop_expected[:n_tx])),
        samples=len(caller))


async def measure_formats(seconds: float = MEASURE_S) -> dict[str, Any]:
    """Every offered format at every level; flat bench keys.

    Keys: ``format_snr_db_<fmt>_<level>dbfs`` (e.g. ``format_snr_db_alaw_-30dbfs``),
    ``format_recording_exact`` and ``format_transmit_exact`` (all formats sample-exact each
    way), ``format_profiles`` (which emulator profile offered each format).
    """
    offered = offered_formats()
    with tempfile.TemporaryDirectory(prefix="appliance-bench-formats-") as tmp:
        figures = await asyncio.gather(*(
            measure_format(fmt, profile, level, Path(tmp), seconds)
            for fmt, profile in offered.items() for level in LEVELS_DBFS))
    out: dict[str, Any] = {"format_profiles": offered}
    for f in figures:
        out[f"format_snr_db_{f.fmt}_{f.level_dbfs:.0f}dbfs"] = f.snr_db
    out["format_recording_exact"] = all(f.recording_exact for f in figures)
    out["format_transmit_exact"] = all(f.transmit_exact for f in figures)
    return out
