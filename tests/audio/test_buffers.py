"""The jitter buffers' level control: deterministic, counted in reads and writes (no clock)."""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.audio.buffers import (
    CapturePuller,
    CaptureRing,
    JitterBuffer,
    LevelControl,
    LevelPolicy,
    SampleRing,
    crossfade,
)
from appliance.audio.pcm import FRAME_SAMPLES

#: A small window for the tests: 4 reads standing, then 2 more waiting for a quiet frame.
POLICY = LevelPolicy(window_frames=4, standing_frames=1, quiet_wait_frames=2)


def loud(value: int) -> np.ndarray:
    """A frame no level control calls quiet (``value`` ≥ 1000: −30 dBFS), told apart by its
    value."""
    assert abs(value) >= 1000
    return np.full(FRAME_SAMPLES, value, dtype=np.int16)


def quiet() -> np.ndarray:
    return np.zeros(FRAME_SAMPLES, dtype=np.int16)


def test_level_control_sheds_only_after_a_whole_window_standing() -> None:
    control = LevelControl(POLICY)
    assert [control.observe(1) for _ in range(3)] == [False, False, False]
    assert control.observe(1)  # the fourth read of the window: due
    assert not control.waited_out
    control.observe(1)
    control.observe(1)
    assert control.waited_out
    control.shed()
    assert not control.observe(1)  # a new window starts after a shed


def test_level_control_forgets_a_window_with_one_read_at_the_normal_level() -> None:
    control = LevelControl(POLICY)
    assert not any(control.observe(excess) for excess in (1, 1, 0, 1))
    assert not any(control.observe(1) for _ in range(3))
    assert control.observe(1)


def test_a_due_shed_is_called_off_when_the_level_falls_by_itself() -> None:
    control = LevelControl(POLICY)
    for _ in range(4):
        due = control.observe(2)
    assert due
    assert not control.observe(0)  # an underrun took the excess away
    assert not control.observe(1)  # and the window starts again


def test_steady_buffer_passes_every_frame_untouched() -> None:
    buf = JitterBuffer(level=POLICY)
    frames = [loud(1000 + i) for i in range(50)]
    out = []
    for frame in frames:
        buf.push(frame)
        out.append(buf.read())
    assert all(a is b for a, b in zip(out, frames, strict=True))
    assert (buf.shed, buf.underruns, buf.overruns) == (0, 0, 0)


def test_a_standing_quiet_frame_is_shed_after_the_window() -> None:
    buf = JitterBuffer(level=POLICY)
    buf.push(quiet())  # a stall's burst: one frame more than the reads take
    for _ in range(4):
        buf.push(quiet())
        buf.read()
    assert buf.shed == 1
    assert len(buf) == 0  # back to the normal level: each push read at once


def test_loud_frames_wait_for_a_quiet_one() -> None:
    buf = JitterBuffer(level=POLICY)
    buf.push(loud(1001))
    values = [1002, 1003, 1004, 1005, 0, 1007, 1008]  # 0: the quiet frame, during the wait
    out = []
    for v in values:
        buf.push(loud(v) if v else quiet())
        out.append(int(buf.read()[-1]))
    assert buf.shed == 1
    # The quiet frame went, nothing else: every loud frame was heard, whole and in order.
    assert out == [1001, 1002, 1003, 1004, 1005, 1007, 1008]


def test_without_a_quiet_frame_the_quietest_goes_crossfaded() -> None:
    buf = JitterBuffer(level=POLICY)
    buf.push(loud(1000))
    out = []
    for i in range(7):
        buf.push(loud(2000 + i))
        out.append(buf.read())
    assert buf.shed == 1
    heard = [int(f[-1]) for f in out]
    # Window of 4 reads, then 2 waiting: at the 6th read one frame goes (of the two buffered
    # the one with a frame after it, 2004), and 2005 fades in from where 2004 started.
    assert heard == [1000, 2000, 2001, 2002, 2003, 2005, 2006]
    faded = out[5]
    assert 2004 <= faded[0] <= 2005
    assert np.all(np.diff(faded[: POLICY.fade_samples]) >= 0)
    assert np.all(faded[POLICY.fade_samples :] == 2005)


def test_crossfade_does_not_touch_its_inputs() -> None:
    shed = np.full(FRAME_SAMPLES, -500, dtype=np.int16)
    following = np.full(FRAME_SAMPLES, 500, dtype=np.int16)
    out = crossfade(shed, following, 40)
    assert np.all(shed == -500)
    assert np.all(following == 500)
    assert -500 < out[0] < 0 < out[39] < 500
    assert np.all(out[40:] == 500)


def test_a_shed_is_logged_under_the_buffer_s_name(caplog: pytest.LogCaptureFixture) -> None:
    buf = JitterBuffer(name="call 1234: handset capture", level=POLICY)
    buf.push(quiet())
    with caplog.at_level(logging.INFO, logger="appliance.audio.buffers"):
        for _ in range(4):
            buf.push(quiet())
            buf.read()
    assert any(r.getMessage().startswith("call 1234: handset capture: shed one quiet frame")
               for r in caplog.records)


def test_clear_forgets_the_level() -> None:
    buf = JitterBuffer(level=POLICY)
    buf.push(quiet())
    for _ in range(3):
        buf.push(quiet())
        buf.read()
    buf.clear()
    for _ in range(4):
        buf.push(quiet())
        buf.read()
    assert buf.shed == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["push", "read"]), max_size=300))
def test_any_interleaving_loses_only_the_frames_it_counts(ops: list[str]) -> None:
    # Whatever the two clocks do, what is read is what was pushed, in order, less exactly the
    # frames counted as shed or overrun (each read frame told apart by its last sample).
    buf = JitterBuffer(level=POLICY)
    pushed, heard, pads = 0, [], 0
    for op in ops:
        if op == "push":
            buf.push(loud(1000 + pushed))
            pushed += 1
        else:
            value = int(buf.read()[-1])
            if value:
                heard.append(value)
            else:
                pads += 1
    while len(buf):
        value = int(buf.read()[-1])
        if value:
            heard.append(value)
    assert heard == sorted(set(heard))
    assert pushed - len(heard) == buf.shed + buf.overruns
    assert buf.underruns <= pads


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=4), st.integers(min_value=0, max_value=400))
def test_a_burst_is_shed_back_to_the_normal_level(burst: int, steady: int) -> None:
    # A stall bursts ``burst`` extra frames in; with the clocks steady after it, each standing
    # frame goes within a window and a wait, and no frame more.
    buf = JitterBuffer(level=POLICY)
    for i in range(burst):
        buf.push(loud(1000 + i))
    for i in range(steady):
        buf.push(loud(2000 + i))
        buf.read()
    per_shed = POLICY.window_frames + POLICY.quiet_wait_frames
    assert buf.shed == min(burst, steady // per_shed)
    assert len(buf) == burst - buf.shed


def test_sample_ring_sheds_a_standing_quiet_frame_on_the_writer_side() -> None:
    ring = SampleRing(2000, level=POLICY)
    out = np.zeros(FRAME_SAMPLES, dtype=np.int16)
    ring.write(quiet())  # one frame more than the reads take
    # The first window holds that write, which saw nothing standing; the second stands whole.
    for _ in range(9):
        ring.write(quiet())
        ring.read_into(out)
    assert ring.shed == 1
    assert len(ring) == 0


def test_sample_ring_fades_the_next_write_in_from_a_shed_loud_frame() -> None:
    ring = SampleRing(2000, level=POLICY)
    out = np.zeros(FRAME_SAMPLES, dtype=np.int16)
    ring.write(loud(1000))
    heard = []
    for i in range(11):
        ring.write(loud(2000 + i))
        ring.read_into(out)
        heard.append(out.copy())
    assert ring.shed == 1
    # The first window held the first write, which saw nothing standing; the second stood
    # whole, two more writes waited: 2008 was not written, and 2009 fades in from it.
    assert [int(f[-1]) for f in heard] == [1000, *range(2000, 2008), 2009, 2010]
    assert 2008 <= heard[9][0] <= 2009
    assert np.all(heard[9][POLICY.fade_samples :] == 2009)
    assert len(ring) == 0


def test_sample_ring_with_blocks_smaller_than_a_frame_keeps_its_level() -> None:
    # A card reading 40 samples at a time: a frame's samples wait in the ring between writes
    # without ever standing a whole frame, so nothing is shed.
    ring = SampleRing(2000, level=POLICY)
    out = np.zeros(40, dtype=np.int16)
    for i in range(40):
        ring.write(loud(1000 + i))
        for _ in range(4):
            ring.read_into(out)
    assert (ring.shed, ring.underruns) == (0, 0)


BLOCK = 40  # a 5 ms card period
MS = 1e-3


def pull_ends(puller: CapturePuller, ticks: list[float], card_phase_s: float,
              card_rate: float = 1.0) -> list[tuple[float, int, float]]:
    """The line ticks at ``ticks``; the card's blocks come every 5 ms (scaled by
    ``card_rate``) from ``card_phase_s``. Returns (tick, frame end, slack) per frame taken,
    slack being how long before the tick the frame's last sample came in."""
    out = []
    for t in ticks:
        blocks = math.floor((t - card_phase_s) / (5 * MS / card_rate) + 1e-9) + 1
        newest_t = card_phase_s + (blocks - 1) * 5 * MS / card_rate
        end = puller.take(t, blocks * BLOCK, newest_t)
        if end is not None:
            slack = t - newest_t + (blocks * BLOCK - end) / 8000 / card_rate
            out.append((t, end, slack))
    return out


@pytest.mark.parametrize("card_phase_ms", [0.0, 1.0, 2.5, 3.3, 4.9])
def test_the_line_takes_continuous_frames_completed_just_before_its_tick(
        card_phase_ms: float) -> None:
    puller = CapturePuller(BLOCK, margin_ms=2)
    rng = np.random.default_rng(int(card_phase_ms * 10))
    # The line's ticks, seen by the loop 0–1 ms late.
    ticks = [1.0 + k * 20 * MS + float(rng.uniform(0, 1)) * MS for k in range(300)]
    taken = pull_ends(puller, ticks, card_phase_ms * MS)
    assert len(taken) == 300
    ends = [end for _, end, _ in taken]
    # Every frame continues the one before: no gap, no repeat.
    assert all(b - a == FRAME_SAMPLES for a, b in itertools.pairwise(ends))
    # Each was complete between the margin and a block before the tick, give or take the
    # loop's lateness (the first tick's and this one's).
    assert all(1 * MS - 1e-9 <= slack < 8 * MS for _, _, slack in taken)
    assert (puller.aligns, puller.repeats, puller.skips) == (1, 0, 0)


def test_a_tick_before_the_frame_is_complete_takes_the_newest() -> None:
    puller = CapturePuller(BLOCK, margin_ms=2)
    first = puller.take(1.0, 8000, 1.0 - 3 * MS)
    assert first == 8000  # the newest: its block came 3 ms before the tick
    # The next tick comes early: a block short of the continuing frame.
    assert puller.take(1.019, 8000 + 120, 1.0 + 12 * MS) == 8000 + 120
    assert puller.repeats == 1
    # From there it continues.
    assert puller.take(1.039, 8000 + 280, 1.0 + 32 * MS) == 8000 + 280


def test_a_newest_block_within_the_margin_is_left_for_the_next_tick() -> None:
    puller = CapturePuller(BLOCK, margin_ms=2)
    assert puller.take(1.0, 8000, 1.0 - 1 * MS) == 8000 - BLOCK


def test_drift_skips_a_block_and_a_pause_realigns() -> None:
    puller = CapturePuller(BLOCK, margin_ms=2)
    # The card runs 0.1 % fast: every 250 ticks it is a block further ahead.
    ticks = [1.0 + k * 20 * MS for k in range(2000)]
    taken = pull_ends(puller, ticks, 2.5 * MS, card_rate=1.001)
    assert puller.skips >= 6
    assert puller.repeats == 0
    # Never more than a window's drift beyond a block and the margin.
    assert max(slack for _, _, slack in taken) < 10 * MS
    # No tick for longer than CAPTURE_PAUSE_MS: the next one starts afresh at the newest.
    aligns = puller.aligns
    assert puller.take(100.0, 10**6, 100.0 - 3 * MS) == 10**6
    assert puller.aligns == aligns + 1


def test_nothing_new_captured_gives_no_frame() -> None:
    puller = CapturePuller(BLOCK, margin_ms=2)
    assert puller.take(1.0, 120, 1.0) is None  # not a frame captured yet
    assert puller.take(1.0, 800, 0.99) == 800
    assert puller.take(1.02, 800, 0.99) is None  # the card stopped


def test_capture_ring_returns_the_frame_ending_where_asked_across_its_wrap() -> None:
    ring = CaptureRing(capacity=1000)
    stream = np.arange(3000, dtype=np.int16)
    for i in range(0, 3000, BLOCK):
        ring.write(stream[i : i + BLOCK], i / 8000)
    assert ring.position() == (3000, 2960 / 8000)
    for end in (2200, 2999, 3000):
        assert np.array_equal(ring.frame(end), stream[end - FRAME_SAMPLES : end])
