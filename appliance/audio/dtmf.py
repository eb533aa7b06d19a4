"""Streaming DTMF detector (numpy, block DFT at the eight DTMF frequencies).

Written by hand because no suitable library exists (docs/audio.md §7.1):
``dtmf`` 1.1.0 uses a wrong real-valued Goertzel, has no twist or duration checks, crashes
on digital silence and produced false digits on speech; ``pydtmf`` is GPL-2.0-only, pure
Python (0.8 s per 60 s of audio) and not streaming. The design follows §7.2 exactly:

* blocks of N = 102 samples (12.75 ms at 8 kHz, as in Asterisk); the single-bin DFT at
  697/770/852/941 and 1209/1336/1477/1633 Hz is computed for all complete blocks of a
  chunk at once, as one matrix product with a precomputed N × 8 complex-exponential matrix
  (equivalent to eight Goertzel filters);
* per block: energy above −45 dBFS; strongest row ≥ 8 dB over the second row, likewise for
  columns; twist: row ≤ +9 dB over column, column ≤ +6 dB over row; the two tones carry
  ≥ 60 % of the block energy (talk-off guard);
* a key is reported after ≥ 2 consecutive blocks with the same key (≥ 25.5 ms) and the
  detector re-arms after ≥ 2 blocks without a valid tone, so ``5555`` with gaps is four
  digits and a long press is one.

Consequence of the energy-share check: a block passes only when the tone fills ≥ ~60 % of
it, so tones under ~16 ms are never reported, 18–30 ms tones depend on block alignment, and
≥ 40 ms (ITU-T Q.24 minimum) is always detected (measured in the tests).

Measured here (2-vCPU x86_64 VM, numpy 2.4.6, best of 7): 60 s of audio takes ≈ 90 ms when
fed in 20 ms frames (per-call numpy overhead dominates; ≈ 0.15 % of one core in real time)
and ≈ 5–8 ms when fed as one chunk. With a ``reference`` (echo gate) the 20 ms-frame case
takes ≈ 0.35 s (a second matrix product and the sliding maximum per frame).

Echo gate. While the appliance plays a prompt to the line, the line hybrid
(the modem's 2-wire/4-wire converter; ``+VTR`` has no echo cancellation, docs/v253.md §4.1) sends
part of it back into the received audio. A prompt containing a DTMF-like chord would then be
"heard" as a key, and speech echo can look like a tone for a block or two. So
:meth:`DtmfDetector.feed` takes the transmitted audio as ``reference`` and applies this rule:

    A block may hold key (row *r*, column *c*) only if, at **both** of its frequencies, the
    received power exceeds what the echo of the transmitted audio could produce:
    ``rx(f) > max_tx(f) − TRANS_HYBRID_LOSS_DB + ECHO_MARGIN_DB`` (in dB, per DTMF frequency
    bin), where ``max_tx(f)`` is the largest transmitted power at ``f`` over the last
    ``ECHO_WINDOW_S`` (so an echo delayed by up to that much is still covered).

The echo is assumed at least :data:`TRANS_HYBRID_LOSS_DB` (6 dB) below the transmitted audio
— a worst case; the Ag1171 SLIC specifies 12–21 dB (hw/ag1171.md) and telephone hybrids are
typically 10–20 dB. With the default 3 dB margin a key is accepted during a prompt when it is
louder at its two frequencies than the prompt's echo at those frequencies plus 3 dB, i.e.
louder than 3 dB below the transmitted level there. A key under loud speech may also fail the
energy-share check (the "under louder speech" row of §7.3); that limit is not moved by the
gate. Without ``reference`` (or with silence as reference) the detector behaves exactly as
before.

Levels are dBFS relative to full scale 32767 / 1.0 (see :mod:`appliance.audio.pcm`).
"""

from __future__ import annotations

import logging
import math
from typing import Final

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from appliance.audio.pcm import FULL_SCALE, SAMPLE_RATE_HZ
from appliance.audio.tones import DTMF_COLS_HZ, DTMF_KEYPAD, DTMF_ROWS_HZ

__all__ = [
    "BLOCK_SAMPLES",
    "ECHO_MARGIN_DB",
    "ECHO_WINDOW_S",
    "TRANS_HYBRID_LOSS_DB",
    "DtmfDetector",
]

_LOGGER = logging.getLogger(__name__)

BLOCK_SAMPLES: Final = 102
"""Analysis block length at 8 kHz (docs/audio.md §7.2); scaled for other rates."""
ENERGY_FLOOR_DBFS: Final = -45.0
"""Blocks quieter than this (mean-square level) never hold a digit."""
DOMINANCE_DB: Final = 8.0
"""Strongest row (column) must exceed the second-strongest row (column) by this much."""
MAX_ROW_OVER_COL_DB: Final = 9.0
"""Largest allowed excess of the row (low group) over the column (high group) tone."""
MAX_COL_OVER_ROW_DB: Final = 6.0
"""Largest allowed excess of the column (high group) over the row (low group) tone."""
MIN_TONE_FRACTION: Final = 0.6
"""Share of the block energy the two tones must carry (rejects speech and noise)."""
MIN_ON_BLOCKS: Final = 2
"""Consecutive blocks with the same key before it is reported (2 × 12.75 ms)."""
MIN_OFF_BLOCKS: Final = 2
"""Blocks without a valid key before the next key can be reported."""

TRANS_HYBRID_LOSS_DB: Final = 6.0
"""Assumed minimum loss from transmitted audio to its echo in the received audio (brief)."""
ECHO_MARGIN_DB: Final = 3.0
"""A key must beat the worst-case echo at both its frequencies by this much."""
ECHO_WINDOW_S: Final = 0.100
"""How far back transmitted audio can still echo: covers a transmit lead of up to
3 × 20 ms (lines[].tx_lead_ms), modem buffering and the line's round trip."""

_KEYS: Final = tuple(DTMF_KEYPAD[r][c] for r in range(4) for c in range(4))
_NO_KEY: Final = -1
_GROUPS: Final = np.arange(2)[np.newaxis, :]  # rows, columns: for indexing per block


def _db_to_power_ratio(db: float) -> float:
    return float(10.0 ** (db / 10.0))


class DtmfDetector:
    """Detect DTMF symbols in a stream of mono samples fed in chunks of any size.

    Samples that do not fill a whole block are kept for the next :meth:`feed`, so the
    result does not depend on how the stream is chunked. Not thread-safe: own it from one
    task (it is cheap; create one per call leg).
    """

    def __init__(
        self,
        sample_rate_hz: int = SAMPLE_RATE_HZ,
        *,
        trans_hybrid_loss_db: float = TRANS_HYBRID_LOSS_DB,
        echo_margin_db: float = ECHO_MARGIN_DB,
        echo_window_s: float = ECHO_WINDOW_S,
    ) -> None:
        """Prepare a detector for ``sample_rate_hz`` (8 kHz in the appliance).

        Args:
            sample_rate_hz: rate of the received (and reference) samples.
            trans_hybrid_loss_db: assumed minimum echo loss for the echo gate.
            echo_margin_db: how much a key must beat the worst-case echo by.
            echo_window_s: longest echo delay the gate covers (rounded up to whole blocks).

        Raises:
            ValueError: the rate is too low to carry the 1633 Hz column tone, or the echo
                window is negative.
        """
        if sample_rate_hz <= 2 * max(DTMF_COLS_HZ):
            raise ValueError(f"sample rate {sample_rate_hz} Hz is too low for DTMF")
        if echo_window_s < 0:
            raise ValueError(f"echo window must be ≥ 0 s, got {echo_window_s}")
        self._rate = sample_rate_hz
        # Keep the block duration (12.75 ms) and thus the bin width at other rates.
        self._n = round(BLOCK_SAMPLES * sample_rate_hz / SAMPLE_RATE_HZ)
        freqs = np.array(DTMF_ROWS_HZ + DTMF_COLS_HZ)
        n = np.arange(self._n)
        # X_k = Σ x[n]·e^{-j2πf_k n/fs}: the DFT evaluated exactly at each DTMF frequency
        # (not the nearest FFT bin), i.e. what a Goertzel filter computes.
        basis = np.exp(-2j * np.pi * np.outer(n, freqs) / sample_rate_hz)
        # As one real matrix, cosines then sines (N × 16): a real product per chunk, no
        # complex copy of the samples (the detector runs on every frame of a prompt).
        self._basis: npt.NDArray[np.float64] = np.ascontiguousarray(
            np.concatenate((basis.real, basis.imag), axis=1))
        self._floor = _db_to_power_ratio(ENERGY_FLOOR_DBFS)
        self._dominance = _db_to_power_ratio(DOMINANCE_DB)
        self._row_over_col = _db_to_power_ratio(MAX_ROW_OVER_COL_DB)
        self._col_over_row = _db_to_power_ratio(MAX_COL_OVER_ROW_DB)
        # Echo gate: received power must exceed (max recent transmitted power) × this ratio.
        self._echo_ratio = _db_to_power_ratio(echo_margin_db - trans_hybrid_loss_db)
        # Blocks of transmitted history compared with each received block (incl. itself).
        self._echo_blocks = 1 + math.ceil(echo_window_s * sample_rate_hz / self._n)
        self._pending: npt.NDArray[np.float64] = np.zeros(0)
        # The transmitted samples kept with _pending; None: as many zeros (nothing was sent).
        self._pending_tx: npt.NDArray[np.float64] | None = None
        self._tx_history: npt.NDArray[np.float64] = np.zeros((self._echo_blocks - 1, 8))
        self._tx_history_silent = True  # _tx_history is all zeros
        self._candidate = _NO_KEY
        self._run = 0
        self._off_run = MIN_OFF_BLOCKS
        self._armed = True

    def reset(self) -> None:
        """Forget buffered samples, echo history and debounce state (e.g. at call start)."""
        self._pending = np.zeros(0)
        self._pending_tx = None
        self._tx_history = np.zeros_like(self._tx_history)
        self._tx_history_silent = True
        self._candidate = _NO_KEY
        self._run = 0
        self._off_run = MIN_OFF_BLOCKS
        self._armed = True

    def feed(self, samples: npt.ArrayLike, *, reference: npt.ArrayLike | None = None) -> list[str]:
        """Consume the next chunk of the stream and return the symbols that completed in it.

        Args:
            samples: 1-D mono received samples; integer input is int16 scale, float input
                ±1.0 scale. Any length, including 0.
            reference: the audio sent to the line during the same interval (same length as
                ``samples``, same scale rules), for the echo gate described in the module
                docstring; None means nothing was sent (silence). Its echo may lag by up to
                the constructor's ``echo_window_s``, so passing the frame sent just before
                or just after the received one is equally fine.

        Returns:
            The symbols (``"0"``–``"9"``, ``"*"``, ``"#"``, ``"A"``–``"D"``) reported in this
            chunk, in order; usually empty.

        Raises:
            ValueError: ``reference`` is given with a different length than ``samples``.
        """
        x = _as_float(samples)
        tx = None if reference is None else _as_float(reference)
        if tx is not None and len(tx) != len(x):
            raise ValueError(
                f"reference has {len(tx)} samples, the received chunk {len(x)}: "
                "pass the transmitted audio of the same interval"
            )
        pending = self._pending
        buf = np.concatenate((pending, x)) if pending.size else x
        # Nothing sent now nor pending: the transmitted side stays None (zeros, not computed).
        tx_buf: npt.NDArray[np.float64] | None = None
        if tx is not None or self._pending_tx is not None:
            before = self._pending_tx if self._pending_tx is not None else np.zeros(pending.size)
            now = tx if tx is not None else np.zeros(x.size)
            tx_buf = np.concatenate((before, now)) if before.size else now
        n_blocks = len(buf) // self._n
        used = n_blocks * self._n
        self._pending = buf[used:].copy()
        self._pending_tx = None if tx_buf is None else tx_buf[used:].copy()
        if n_blocks == 0:
            return []
        shape = (n_blocks, self._n)
        keys = self._classify(buf[:used].reshape(shape),
                              None if tx_buf is None else tx_buf[:used].reshape(shape))
        found: list[str] = []
        for key in keys.tolist():
            symbol = self._debounce(key)
            if symbol is not None:
                found.append(symbol)
        if found:
            _LOGGER.debug("DTMF detected: %s", "".join(found))
        return found

    def _power(self, blocks: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """|X|² at the eight DTMF frequencies per block, shape (blocks, 8)."""
        spectrum = blocks @ self._basis
        re, im = spectrum[:, :8], spectrum[:, 8:]
        power: npt.NDArray[np.float64] = re * re + im * im
        return power

    def _classify(
        self, blocks: npt.NDArray[np.float64], tx_blocks: npt.NDArray[np.float64] | None
    ) -> npt.NDArray[np.intp]:
        """Return per block the key index 0–15 (row·4 + column) or -1 for "no valid tone".

        ``tx_blocks`` None: nothing was sent during these blocks (all zeros)."""
        recent = self._recent_tx(tx_blocks, len(blocks))
        energy = np.einsum("ij,ij->i", blocks, blocks)
        ok = energy >= self._floor * self._n
        if not ok.any():  # a quiet line (most of a call): no spectrum needed
            return np.full(len(blocks), _NO_KEY, dtype=np.intp)
        # Shape (blocks, group, 4): group 0 = rows (low), group 1 = columns (high).
        power = self._power(blocks).reshape(-1, 2, 4)
        ranked = np.sort(power, axis=2)
        best, second = ranked[:, :, -1], ranked[:, :, -2]
        row_best, col_best = best[:, 0], best[:, 1]
        ok &= np.all(best >= self._dominance * second, axis=1)
        ok &= row_best <= self._row_over_col * col_best
        ok &= col_best <= self._col_over_row * row_best
        # A sine of amplitude A gives |X|² ≈ (A·N/2)² and Σx² ≈ A²·N/2, so its share of the
        # block energy is 2·|X|²/N.
        ok &= (2.0 / self._n) * (row_best + col_best) >= MIN_TONE_FRACTION * energy
        idx = np.argmax(power, axis=2)
        ok &= self._above_echo(recent, best, idx)
        return np.where(ok, idx[:, 0] * 4 + idx[:, 1], _NO_KEY)

    def _recent_tx(self, tx_blocks: npt.NDArray[np.float64] | None,
                   n_blocks: int) -> npt.NDArray[np.float64] | None:
        """Advance the transmitted history by ``n_blocks``; return per block the largest
        transmitted power per frequency over it and the blocks before it (the echo window),
        shape (blocks, 8) — or None when all of that is zero (nothing sent)."""
        if tx_blocks is None:
            if self._tx_history_silent:
                return None  # zeros in, zeros kept: nothing to compute
            tx_power = np.zeros((n_blocks, 8))
        else:
            tx_power = self._power(tx_blocks)
        stacked = np.concatenate((self._tx_history, tx_power))
        self._tx_history = stacked[len(stacked) - len(self._tx_history) :].copy()
        self._tx_history_silent = not self._tx_history.any()
        width = self._echo_blocks
        if n_blocks == 1:
            recent: npt.NDArray[np.float64] = stacked.max(axis=0, keepdims=True)
        else:
            recent = sliding_window_view(stacked, width, axis=0).max(axis=2)
        return recent

    def _above_echo(
        self,
        recent: npt.NDArray[np.float64] | None,
        best: npt.NDArray[np.float64],
        idx: npt.NDArray[np.intp],
    ) -> npt.NDArray[np.bool_]:
        """Echo gate: per block, whether both chosen tones beat the worst-case echo.

        Args:
            recent: from :meth:`_recent_tx` (None: nothing was sent within the window).
            best: received power of the strongest row and column, shape (blocks, 2).
            idx: which row and column those are (0–3 each), shape (blocks, 2).
        """
        # Strict ">": digital silence on both sides (0 > 0) is rejected anyway by the floor.
        if recent is None:
            silent: npt.NDArray[np.bool_] = np.all(best > 0.0, axis=1)
            return silent
        # The strongest received row/column decides the key; compare it at that frequency.
        grouped = recent.reshape(-1, 2, 4)
        tx_at_key = grouped[np.arange(len(grouped))[:, np.newaxis], _GROUPS, idx]
        keys: npt.NDArray[np.bool_] = np.all(best > self._echo_ratio * tx_at_key, axis=1)
        return keys

    def _debounce(self, key: int) -> str | None:
        """Advance the per-block state machine; return a symbol when one is confirmed."""
        if key == _NO_KEY:
            self._off_run += 1
            self._candidate = _NO_KEY
            self._run = 0
            if self._off_run >= MIN_OFF_BLOCKS:
                self._armed = True
            return None
        self._off_run = 0
        if key == self._candidate:
            self._run += 1
        else:
            self._candidate = key
            self._run = 1
        if self._armed and self._run >= MIN_ON_BLOCKS:
            # One report per press: a key held on, or changing without a gap, stays silent
            # until MIN_OFF_BLOCKS quiet blocks re-arm the detector.
            self._armed = False
            return _KEYS[key]
        return None


def _as_float(samples: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Flatten to float64 at ±1.0 scale (int16 input divided by 32767, as pcm.int16_to_float)."""
    arr = np.asarray(samples).reshape(-1)
    out: npt.NDArray[np.float64] = arr.astype(np.float64)
    if arr.dtype.kind in "iu":
        out *= 1.0 / FULL_SCALE
    return out
