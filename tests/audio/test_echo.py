"""The echo canceller's bulk delay estimate (libspeexdsp underneath, real signals)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from appliance.audio.echo import DELAY_MARGIN_MS, SpeexEchoCanceller
from appliance.audio.hybrid import Hybrid, HybridSpec
from appliance.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE_HZ
from appliance.bench.echo import measure, script_signals


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



def test_a_moved_bulk_delay_is_followed_without_a_click() -> None:
    # The echo's bulk delay grows from 40 to 60 ms after 5 s (a frame more in the modem's
    # buffer): the estimate runs again, a shadow filter on the new delay takes over.
    far = script_signals().far
    n, change = len(far) // FRAME_SAMPLES * FRAME_SAMPLES, 5 * SAMPLE_RATE_HZ
    x = far[:n].astype(np.float64)
    sent = np.concatenate((np.zeros(320), x))[:n]
    sent[change:] = np.concatenate((np.zeros(480), x))[change:n]
    echo = Hybrid(HybridSpec(erl_db=12.0, tail_ms=16.0, delay_ms=1.0, seed=3)).echo(sent)
    noise = np.random.default_rng(1).standard_normal(n) * 3.0
    mic = np.rint(echo + noise).astype(np.int16)
    canceller = SpeexEchoCanceller()
    out = np.zeros(n)
    for start in range(0, n, FRAME_SAMPLES):
        part = slice(start, start + FRAME_SAMPLES)
        out[part] = canceller.process(mic[part], far[part])
        if start == change - FRAME_SAMPLES:
            assert canceller.bulk_delay_ms is not None
            assert abs(canceller.bulk_delay_ms - 40.0) <= 2 * DELAY_MARGIN_MS
    assert canceller.bulk_delay_ms is not None
    assert abs(canceller.bulk_delay_ms - 60.0) <= 2 * DELAY_MARGIN_MS
    swap = canceller.last_swap_frame
    assert swap is not None
    assert swap * FRAME_SAMPLES > change
    # No click: across the hand-over the output moves no faster than what came in.
    around = slice((swap - 1) * FRAME_SAMPLES, (swap + 2) * FRAME_SAMPLES)
    assert np.max(np.abs(np.diff(out[around]))) < np.max(np.abs(np.diff(mic[around].astype(
        np.float64))))
    late = slice(change + 2 * SAMPLE_RATE_HZ, change + 3 * SAMPLE_RATE_HZ)
    erle_db = 10 * np.log10(np.sum(echo[late] ** 2) / np.sum((out[late] - noise[late]) ** 2))
    assert erle_db > 25.0
    canceller.close()


def test_an_echo_path_change_is_reconverged_within_a_second() -> None:
    # The bench's script (fixed seeds): far end alone, double talk, far end alone, then the
    # hybrid's impulse response changes. This pair with 6 dB ERL and a 32 ms tail was the
    # worst of the bench's 30 runs while the main filter re-adapted alone (6 dB).
    class Watched(SpeexEchoCanceller):
        """Notes, frame by frame, whether a shadow filter ran."""

        def __init__(self) -> None:
            super().__init__()
            self.shadow_frames: list[bool] = []

        def process(self, near: npt.NDArray[np.int16],
                    far: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
            cleaned = super().process(near, far)
            self.shadow_frames.append(self.shadow_running)
            return cleaned

    made: list[Watched] = []

    def factory() -> SpeexEchoCanceller:
        made.append(Watched())
        return made[-1]

    signals = script_signals()
    figures = measure(factory, 6.0, 32.0, signals, seeds=(5, 6))
    assert figures["path_change_erle_1s_db"] >= 25.0, "0.5-1 s after the change"
    assert figures["path_change_erle_2s_db"] >= 30.0
    assert figures["erle_after_dt_db"] >= 30.0, "no divergence after double talk"
    assert figures["dt_segsnr_db"] > 20.0, "the near end survives double talk"
    # Double talk handed nothing over to a fresh filter, and its trials ran for a part of it.
    swap = made[-1].last_swap_frame
    assert swap is None or swap * FRAME_SAMPLES >= signals.change_at
    in_double_talk = made[-1].shadow_frames[signals.dt_start // FRAME_SAMPLES
                                            : signals.dt_end // FRAME_SAMPLES]
    assert 0 < sum(in_double_talk) < 0.5 * len(in_double_talk)


def test_a_changed_path_is_cancelled_by_the_fresh_filter_without_a_click() -> None:
    # Far end alone; after 3 s the handset moves (another impulse response, same delay). The
    # main filter re-adapting alone took 7.5 dB out 0.5-1 s after this change.
    far = script_signals().far
    n, change = 5 * SAMPLE_RATE_HZ, 3 * SAMPLE_RATE_HZ
    sent = np.concatenate((np.zeros(320), far[:n].astype(np.float64)))[:n]
    hybrid = Hybrid(HybridSpec(erl_db=12.0, tail_ms=16.0, delay_ms=1.0, seed=17))
    echo = np.concatenate((hybrid.echo(sent[:change]), np.zeros(n - change)))
    hybrid.change(HybridSpec(erl_db=12.0, tail_ms=16.0, delay_ms=1.0, seed=18))
    echo[change:] = hybrid.echo(sent[change:])
    noise = np.random.default_rng(1).standard_normal(n) * 3.0
    mic = np.rint(echo + noise).astype(np.int16)
    canceller = SpeexEchoCanceller()
    out = np.zeros(n)
    passed = []
    for start in range(0, n, FRAME_SAMPLES):
        part = slice(start, start + FRAME_SAMPLES)
        out[part] = canceller.process(mic[part], far[part])
        passed.append(canceller.passing_shadow)
    # The fresh filter's output was passed on soon after the change, never before it.
    first = passed.index(True)
    assert change <= first * FRAME_SAMPLES <= change + SAMPLE_RATE_HZ // 2
    late = slice(change + SAMPLE_RATE_HZ // 2, change + SAMPLE_RATE_HZ)
    erle_db = 10 * np.log10(np.sum(echo[late] ** 2) / np.sum((out[late] - noise[late]) ** 2))
    assert erle_db >= 25.0, "within 1 s of the change"
    # No click: the output moves no faster than what came in, hand-overs included.
    after = slice(change, n)
    assert np.max(np.abs(np.diff(out[after]))) < np.max(np.abs(np.diff(
        mic[after].astype(np.float64))))
    canceller.close()


def test_a_path_gone_is_dropped_at_once_not_cancelled_into_silence() -> None:
    # The SLIC's path disappears after 3 s (the handset is another call's now): a filter
    # that goes on subtracting its echo estimate would put the far end into a silent line.
    far = script_signals().far
    n, gone = len(far) // FRAME_SAMPLES * FRAME_SAMPLES, 3 * SAMPLE_RATE_HZ
    sent = np.concatenate((np.zeros(320), far[:n].astype(np.float64)))[:n]
    echo = Hybrid(HybridSpec(erl_db=14.0, tail_ms=8.0, delay_ms=1.0, seed=2)).echo(sent)
    echo[gone:] = 0.0
    noise = np.random.default_rng(1).standard_normal(n) * 0.5
    mic = np.rint(echo + noise).astype(np.int16)
    canceller = SpeexEchoCanceller()
    out = np.zeros(n)
    for start in range(0, n, FRAME_SAMPLES):
        part = slice(start, start + FRAME_SAMPLES)
        out[part] = canceller.process(mic[part], far[part])
    assert canceller.swaps == 1
    assert canceller.last_swap_frame is not None
    assert 0 < canceller.last_swap_frame * FRAME_SAMPLES - gone <= SAMPLE_RATE_HZ // 5
    frames = out[gone:].reshape(-1, FRAME_SAMPLES) / 32767.0
    level_dbfs = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    assert np.all(level_dbfs < -40.0)
    assert np.all(level_dbfs[25:] < -60.0)
    canceller.close()
