"""The benchmark's instruments: continuity check, marker matching, exact test signal."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.audio.pcm import decode_voice, encode_voice
from appliance.bench.probes import (
    MARKER,
    MarkerDetector,
    TestSignal,
    check_continuity,
    match_latencies,
    percentile_ms,
)


def _stream(frames: int = 300) -> np.ndarray:
    sig = TestSignal(7, lambda: 0.0)
    for _ in range(frames):
        sig.read()
    return sig.stream()


SOURCE = _stream()


def test_signal_is_exact_in_8_bit_formats() -> None:
    sig = TestSignal(1, lambda: 0.0)
    sig.arm_marker()
    frames = np.concatenate([sig.read() for _ in range(5)])
    for fmt in ("u8", "s8"):
        assert np.array_equal(decode_voice(encode_voice(frames, fmt), fmt), frames)


def test_clean_copy_has_no_faults() -> None:
    result = check_continuity(np.concatenate([np.zeros(500, np.int16), SOURCE[1000:40000]]),
                              SOURCE)
    assert result.aligned
    assert result.compared == 39000
    assert (result.dropped, result.duplicated, result.inserted, result.mismatched) == (0, 0, 0, 0)


@settings(max_examples=30, deadline=None)
@given(cut=st.integers(2000, 30000), gap=st.integers(1, 400), kind=st.sampled_from(
    ["drop", "dup", "insert"]))
def test_faults_are_counted_exactly(cut: int, gap: int, kind: str) -> None:
    head, tail = SOURCE[1000:cut], SOURCE[cut:45000]
    if kind == "drop":
        rec = np.concatenate([head, tail[gap:]])
    elif kind == "dup":
        rec = np.concatenate([head, SOURCE[cut - gap : cut], tail])
    else:
        # Not a multiple of 256, so it cannot be mistaken for a repeat of the signal.
        rec = np.concatenate([head, np.ones(gap, np.int16), tail])
    result = check_continuity(rec, SOURCE)
    got = {"drop": result.dropped, "dup": result.duplicated, "insert": result.inserted}
    assert got[kind] == gap
    assert sum(got.values()) == gap


def test_unrelated_audio_does_not_align() -> None:
    other = TestSignal(99, lambda: 0.0)
    rec = np.concatenate([other.read() for _ in range(20)])
    assert not check_continuity(rec, SOURCE).aligned


def test_detector_finds_marker_onset_inside_a_frame() -> None:
    now = [10.0]
    det = MarkerDetector(lambda: now[0])
    frame = np.zeros(160, np.int16)
    det.feed(frame)
    det.armed = True
    frame[40:] = MARKER[:120]
    det.feed(frame)
    assert det.detections == [10.0 + 40 / 8000]
    now[0] = 10.02
    det.feed(frame)  # the rest of the same burst: held off
    assert len(det.detections) == 1


def test_match_latencies_pairs_each_marker_once() -> None:
    assert match_latencies([1.0, 1.5, 2.0], [1.07, 1.57, 2.9]) == [
        np.float64(1.07) - 1.0, np.float64(1.57) - 1.5]
    assert percentile_ms([], 50) is None
    assert percentile_ms([0.010, 0.020, 0.030], 50) == 20.0
