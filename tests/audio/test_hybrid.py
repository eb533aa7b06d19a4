"""The simulated hybrid: echo level and shape, streaming, and where the emulators return it."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.audio.backend import SimHandsetAudio
from appliance.audio.hybrid import Hybrid, HybridSpec, add_echo, parse_hybrid
from appliance.audio.pcm import decode_voice
from appliance.line.codec import VoiceDecoder
from appliance.sim.modem.emulator import SimModem

TIMEOUT_S = 5.0


def level_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.asarray(x, dtype=np.float64) ** 2))


@pytest.mark.parametrize(("erl_db", "tail_ms"), [(6.0, 4.0), (12.0, 16.0), (20.0, 32.0)])
def test_white_noise_returns_erl_down_within_the_tail(erl_db: float, tail_ms: float) -> None:
    spec = HybridSpec(erl_db=erl_db, tail_ms=tail_ms)
    h = spec.impulse_response()
    assert len(h) == round((spec.delay_ms + tail_ms) * 8)
    assert np.all(h[: round(spec.delay_ms * 8)] == 0), "flat delay first"
    x = np.random.default_rng(5).standard_normal(80_000) * 3000
    echo = Hybrid(spec).echo(x)
    assert level_db(x) - level_db(echo) == pytest.approx(erl_db, abs=0.5)
    # Dispersion decays: the last quarter of the tail holds little of the energy.
    assert np.sum(h[-len(h) // 4 :] ** 2) < 0.05 * np.sum(h**2)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=1, max_size=8), st.integers(0, 3))
def test_blockwise_echo_equals_whole_convolution(blocks: list[int], seed: int) -> None:
    spec = HybridSpec(erl_db=8.0, tail_ms=12.0, seed=seed)
    x = np.random.default_rng(seed).integers(-20000, 20000, sum(blocks)).astype(np.int16)
    hybrid = Hybrid(spec)
    parts, pos = [], 0
    for n in blocks:
        parts.append(hybrid.echo(x[pos : pos + n]))
        pos += n
    whole = np.convolve(x.astype(np.float64), spec.impulse_response())[: len(x)]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-6)


def test_path_change_swaps_the_response_and_keeps_the_history() -> None:
    a, b = HybridSpec(seed=1), HybridSpec(seed=2, tail_ms=30.0)
    x = np.random.default_rng(0).standard_normal(1000) * 1000
    hybrid = Hybrid(a)
    first = hybrid.echo(x[:500])
    hybrid.change(b)
    second = hybrid.echo(x[500:])
    np.testing.assert_allclose(first, np.convolve(x, a.impulse_response())[:500], atol=1e-6)
    np.testing.assert_allclose(second, np.convolve(x, b.impulse_response())[500:1000],
                               atol=1e-6)


def test_parse_and_ranges() -> None:
    default = HybridSpec(erl_db=10.0, tail_ms=16.0)
    assert parse_hybrid("off", default=default) is None
    assert parse_hybrid("on", default=default) == default
    assert parse_hybrid("6,32", default=default) == HybridSpec(erl_db=6.0, tail_ms=32.0)
    for bad in ("loud", "6,", "-3", "10,200", "1,2,3,4"):
        with pytest.raises(ValueError, match="echo"):
            parse_hybrid(bad, default=default)


def test_add_echo_clips() -> None:
    frame = np.array([32000, -32000, 5], dtype=np.int16)
    out = add_echo(frame, np.array([2000.0, -2000.0, 0.4]))
    assert out.tolist() == [32767, -32768, 5]
    assert add_echo(frame, None) is frame


async def test_emulator_returns_what_it_plays_in_what_it_sends() -> None:
    spec = HybridSpec(erl_db=10.0, tail_ms=8.0)
    sim = SimModem("conexant", echo=spec)
    received = bytearray()
    enough = asyncio.Event()

    def write(data: bytes) -> None:
        received.extend(data)
        if len(received) > 6000:
            enough.set()

    sim.attach(write)
    sim.data_received(b"ATE0\rAT+FCLASS=8\rAT+VLS=1\rAT+VSM=133,8000\rAT+VTR\r")
    tone = (8000 * np.sin(2 * np.pi * 1000 * np.arange(4000) / 8000)).astype("<i2")
    sim.data_received(tone.tobytes().replace(b"\x10", b"\x10\x10"))
    await asyncio.wait_for(enough.wait(), TIMEOUT_S)
    sim.data_received(b"\x10!")
    start = bytes(received).index(b"CONNECT\r\n") + len(b"CONNECT\r\n")
    audio = VoiceDecoder().feed(bytes(received[start:])).audio
    rx = decode_voice(audio[: len(audio) // 2 * 2], "s16le")
    # The caller is silent: everything received is the echo of the tone, about 10 dB down
    # (a 1 kHz tone meets the band-pass flank: within a few dB of the white-noise ERL).
    loud = rx[np.abs(rx) > 0]
    assert len(loud) > 1000
    assert 4.0 < level_db(tone) - level_db(loud[160:-160]) < 16.0
    # It starts one frame after the first played frame, not before.
    assert np.all(rx[:160] == 0)


async def test_sim_handset_returns_the_earpiece_in_the_mouthpiece() -> None:
    backend = SimHandsetAudio(echo=HybridSpec(erl_db=14.0, tail_ms=8.0))
    captured: list[np.ndarray] = []
    enough = asyncio.Event()

    def on_capture(frame: np.ndarray) -> None:
        captured.append(frame)
        if len(captured) >= 6:
            enough.set()

    await backend.start(on_capture)
    noise = np.random.default_rng(1).integers(-8000, 8000, 160 * 6).astype(np.int16)
    for i in range(6):
        backend.play(noise[i * 160 : (i + 1) * 160])
    await asyncio.wait_for(enough.wait(), TIMEOUT_S)
    await backend.stop()
    assert np.all(captured[0] == 0), "echo of the first earpiece frame comes with the next"
    mouthpiece = np.concatenate(captured[1:])
    assert level_db(noise) - level_db(mouthpiece) == pytest.approx(14.0, abs=3.0)
    backend.set_echo(None)
    assert backend.hybrid is None
