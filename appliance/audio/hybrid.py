"""A simulated 2-wire/4-wire hybrid: the echo a real line and a real SLIC give back.

A telephone line carries both directions on one pair; the hybrid (in the modem's DAA and in
the handset's SLIC) separates them only as well as its balance network matches the line, so
part of what the box sends comes back in what it receives: the modem returns the shop's voice
in the caller channel, the SLIC returns the caller's voice in the shop's mouthpiece. The echo
is the sent signal through a short impulse response: a flat delay, then a few milliseconds of
dispersion decaying over the tail, band-limited to the telephone band, ``erl_db`` below the
sent signal (echo return loss: typically 6–20 dB on a real line, docs/performance.md).

The emulator (:class:`appliance.sim.modem.emulator.SimModem`) and the simulated handset
(:class:`appliance.audio.backend.SimHandsetAudio`) each run one :class:`Hybrid` when given a
:class:`HybridSpec`; the demo turns both on (docs/line.md, "Echo").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from appliance.audio.pcm import SAMPLE_RATE_HZ

#: The modem's hybrid as the demo models it: 10 dB down, 16 ms of tail after 1 ms of delay
#: (a DAA on a few hundred metres of copper; G.168's test echo paths are 6–20 dB, ≤ 64 ms).
LINE_ERL_DB: Final = 10.0
LINE_TAIL_MS: Final = 16.0
#: The SLIC's hybrid with the shop's handset: a shorter loop, a better-matched balance.
HANDSET_ERL_DB: Final = 14.0
HANDSET_TAIL_MS: Final = 8.0
#: Flat delay before the first echo tap (the converters' group delay).
DELAY_MS: Final = 1.0
#: The envelope of the dispersive part falls by this much from its start to the tail's end.
TAIL_DECAY_DB: Final = 40.0
#: Echo return losses a hybrid may be given: below 0 dB it would amplify; above 60 dB it is
#: not an echo worth modelling.
ERL_RANGE_DB: Final = (0.0, 60.0)
#: Tail lengths a hybrid may be given (a canceller is specified for ≤ 64 ms; G.168).
TAIL_RANGE_MS: Final = (1.0, 64.0)
#: Longest flat delay a hybrid may be given.
MAX_DELAY_MS: Final = 32.0
_MAX_TAPS: Final = round((TAIL_RANGE_MS[1] + MAX_DELAY_MS) * SAMPLE_RATE_HZ / 1000)


@dataclass(frozen=True, slots=True)
class HybridSpec:
    """One echo path.

    Attributes:
        erl_db: echo return loss (sent level minus echo level, white-noise power), dB.
        tail_ms: length of the dispersive part of the impulse response.
        delay_ms: flat delay before it.
        seed: which random impulse response of that shape (a different seed is a different
            path: the shop moving the handset, a different line).
    """

    erl_db: float = LINE_ERL_DB
    tail_ms: float = LINE_TAIL_MS
    delay_ms: float = DELAY_MS
    seed: int = 0

    def __post_init__(self) -> None:
        lo, hi = ERL_RANGE_DB
        if not lo <= self.erl_db <= hi:
            raise ValueError(f"echo return loss {self.erl_db} dB outside {lo}–{hi} dB")
        lo, hi = TAIL_RANGE_MS
        if not lo <= self.tail_ms <= hi:
            raise ValueError(f"echo tail {self.tail_ms} ms outside {lo}–{hi} ms")
        if not 0.0 <= self.delay_ms <= MAX_DELAY_MS:
            raise ValueError(f"echo delay {self.delay_ms} ms outside 0–{MAX_DELAY_MS:g} ms")

    def impulse_response(self) -> npt.NDArray[np.float64]:
        """The echo path's impulse response at 8 kHz (flat delay, then the decaying tail).

        Deterministic for a given spec; its energy is exactly ``10^(-erl_db/10)``, so white
        noise returns ``erl_db`` down.
        """
        from scipy.signal import butter, lfilter

        delay = round(self.delay_ms * SAMPLE_RATE_HZ / 1000)
        tail = max(1, round(self.tail_ms * SAMPLE_RATE_HZ / 1000))
        rng = np.random.default_rng(self.seed)
        n = np.arange(tail)
        # Exponential decay by TAIL_DECAY_DB over the tail (amplitude envelope).
        envelope = 10 ** (-TAIL_DECAY_DB / 20 * n / tail)
        raw = rng.standard_normal(tail) * envelope
        # Telephone band: the hybrid's mismatch is shaped by the line's 300–3400 Hz filters.
        b, a = butter(2, [300.0, 3400.0], btype="bandpass", fs=SAMPLE_RATE_HZ)
        shaped = lfilter(b, a, raw)
        h = np.concatenate((np.zeros(delay), shaped))
        energy = float(np.sum(h**2))
        response: npt.NDArray[np.float64] = h * np.sqrt(10 ** (-self.erl_db / 10) / energy)
        return response


def parse_hybrid(text: str, *, default: HybridSpec) -> HybridSpec | None:
    """``off`` → None; ``on`` → ``default``; ``ERL[,TAIL_MS[,SEED]]`` → that path.

    The form of the ``--echo`` options (``appliance sim-modem``, ``appliance demo``).

    Raises:
        ValueError: not one of those forms, or out of range.
    """
    text = text.strip().lower()
    if text in ("off", "none", "0"):
        return None
    if text in ("on", "default"):
        return default
    parts = [p.strip() for p in text.split(",")]
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"echo {text!r}: expected off, on or ERL_DB[,TAIL_MS[,SEED]]")
    try:
        erl = float(parts[0])
        tail = float(parts[1]) if len(parts) > 1 else default.tail_ms
        seed = int(parts[2]) if len(parts) > 2 else default.seed
    except ValueError as exc:
        raise ValueError(f"echo {text!r}: expected off, on or ERL_DB[,TAIL_MS[,SEED]]") from exc
    return HybridSpec(erl_db=erl, tail_ms=tail, delay_ms=default.delay_ms, seed=seed)


class Hybrid:
    """A running echo path: each sent block in, the echo of it (and of what came before) out.

    The filter state spans blocks, so feeding 20 ms frames one by one gives the same echo as
    convolving the whole signal. :meth:`change` swaps the path mid-call (the echo of samples
    already sent goes through the new path from then on, as when a handset is moved).
    """

    def __init__(self, spec: HybridSpec) -> None:
        self.spec = spec
        self._h = spec.impulse_response()
        # Enough past input for the longest path, so a path change sees the true history.
        self._history = np.zeros(_MAX_TAPS)

    def change(self, spec: HybridSpec) -> None:
        """Use another echo path from the next block on."""
        self.spec, self._h = spec, spec.impulse_response()

    def echo(self, sent: npt.NDArray[np.int16] | npt.NDArray[np.float64]) -> npt.NDArray[
            np.float64]:
        """The echo (float samples, int16 scale) returned while ``sent`` goes out."""
        x = np.asarray(sent, dtype=np.float64)
        keep = len(self._h) - 1
        buf = np.concatenate((self._history[len(self._history) - keep :] if keep else
                              self._history[:0], x))
        out = np.convolve(buf, self._h, mode="valid")
        self._history = np.concatenate((self._history, x))[-_MAX_TAPS:]
        return out


def add_echo(frame: npt.NDArray[np.int16],
             echo: npt.NDArray[np.float64] | None) -> npt.NDArray[np.int16]:
    """``frame`` with ``echo`` added, rounded and clipped to int16 (None: unchanged)."""
    if echo is None:
        return frame
    mixed = frame.astype(np.float64)
    mixed[: len(echo)] += echo[: len(mixed)]
    return np.clip(np.rint(mixed), -32768, 32767).astype(np.int16)
