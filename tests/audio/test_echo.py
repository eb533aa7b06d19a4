"""The echo canceller's bulk delay estimate (libspeexdsp underneath, real signals)."""

from __future__ import annotations

import numpy as np

from appliance.audio.echo import DELAY_MARGIN_MS, SpeexEchoCanceller
from appliance.audio.hybrid import Hybrid, HybridSpec
from appliance.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE_HZ
from appliance.bench.echo import script_signals


def _run(bulk_ms: float, *, echo: bool = True,
         seconds: float = 2.0) -> tuple[SpeexEchoCanceller, float]:
    """A canceller after ``seconds`` of far-end speech; its ERLE (dB) over the last second."""
    far = script_signals().far[: int(seconds * SAMPLE_RATE_HZ)]
    delay = int(bulk_ms * SAMPLE_RATE_HZ / 1000)
    hybrid = Hybrid(HybridSpec(erl_db=12.0, tail_ms=16.0, delay_ms=1.0, seed=3))
    sent = np.concatenate((np.zeros(delay), far.astype(np.float64)))[: len(far)]
    noise = np.random.default_rng(1).standard_normal(len(far)) * 3.0
    received = hybrid.echo(sent) * echo + noise
    canceller = SpeexEchoCanceller()
    out = np.zeros(len(far))
    for start in range(0, len(far) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        part = slice(start, start + FRAME_SAMPLES)
        out[part] = canceller.process(np.rint(received[part]).astype(np.int16), far[part])
    last = slice(len(far) - SAMPLE_RATE_HZ, len(far))
    erle_db = 10 * np.log10(np.sum(received[last] ** 2) / np.sum(out[last] ** 2))
    return canceller, float(erle_db)


def test_the_bulk_delay_is_measured_and_taken_up_by_the_reference() -> None:
    canceller, erle_db = _run(40.0)
    assert canceller.bulk_delay_ms is not None
    # The echo's first tap is 41 ms late: the reference waits about that less the margin,
    # never past the first tap (the filter would miss the echo's onset).
    assert 41.0 - 2 * DELAY_MARGIN_MS - 1.0 <= canceller.bulk_delay_ms <= 41.0
    assert erle_db > 25.0, "cancelled within 1 s of the far end speaking"
    canceller.reset()
    assert canceller.bulk_delay_ms is None
    canceller.close()


def test_no_delay_is_taken_from_audio_without_echo() -> None:
    canceller, _ = _run(40.0, echo=False)
    assert canceller.bulk_delay_ms is None
    canceller.close()

