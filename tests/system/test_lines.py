"""Several lines in one box (issue 10): the real daemon with two and four emulated modems on
real ptys, one shared handset.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from appliance.audio.backend import SimHandsetAudio
from appliance.config import load_config
from appliance.daemon.app import Application
from appliance.sim.demo import run_demo
from appliance.sim.modem.pty import PtyModemServer

pytestmark = pytest.mark.timeout(180)

SHORT_NOTICE = {"speech": {"texts": {"notice": "Tájékoztatjuk, hogy a hívást rögzítjük."}}}
TIMEOUT_S = 90.0
LOUD_DBFS = -40.0


def frame_levels(channel: np.ndarray) -> np.ndarray:
    n = len(channel) // 160
    frames = channel[: n * 160].reshape(n, 160).astype(np.float64) / 32767.0
    return 20 * np.log10(np.maximum(np.sqrt(np.mean(frames**2, axis=1)), 1e-6))


async def test_two_lines_second_caller_holds_then_is_put_through(tmp_path: Path) -> None:
    result = await run_demo("two-lines", tmp_path / "state", config_extra=SHORT_NOTICE)
    first, second = result.summaries
    assert first["line"] == "main"
    assert second["line"] == "second"
    assert first["caller_number"] != second["caller_number"]
    for summary in (first, second):
        assert summary["outcome"] == "bridged"
        assert summary["recording_decision"] == "recorded"
    states = [e["state"] for e in second["events"]]
    assert states.index("holding") < states.index("handset-free") < states.index("bridged")
    # No cross-talk: while the second caller held, the shop was talking to the first caller;
    # none of that is in the second recording's shop channel before it was put through.
    audio, _ = soundfile.read(second["recording_path"], dtype="int16")
    bridged_t = next(e["t"] for e in second["events"] if e["state"] == "bridged")
    record_t = next(e["t"] for e in second["events"] if e["state"] == "recording-started")
    held_frames = int((bridged_t - record_t) * 50)
    shop_levels = frame_levels(audio[:, 1])
    assert held_frames > 50
    assert np.all(shop_levels[: held_frames - 5] < LOUD_DBFS)
    assert np.count_nonzero(shop_levels[held_frames:] > LOUD_DBFS) > 50
    # The shop heard which line rang: the second line's distinct ring burst (0.8 s).
    rm = result.summary["pins"]["ring_rm"]
    bursts = []
    start = None
    for t, state in rm:
        if state and start is None:
            start = t
        elif not state and start is not None:
            bursts.append(t - start)
            start = None
    assert any(abs(b - 1.25) < 0.15 for b in bursts)
    assert any(abs(b - 0.8) < 0.15 for b in bursts)


def tone_source(freq_hz: float) -> Any:
    pos = 0

    def read(n: int) -> np.ndarray:
        nonlocal pos
        t = (np.arange(n) + pos) / 8000
        pos += n
        return (8000 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)

    return read


async def test_four_lines_at_once_each_recording_has_only_its_caller(
    tmp_path: Path, mock_factory: Any
) -> None:
    freqs = [500.0, 700.0, 1100.0, 1300.0]
    servers = [PtyModemServer(profile="conexant") for _ in freqs]
    paths = [await server.start() for server in servers]
    lines = [{"name": f"l{i}", "device": path, "country_code": "51"}
             for i, path in enumerate(paths)]
    config = load_config(Path("/dev/null"), state_dir=tmp_path / "state", overrides={
        **SHORT_NOTICE,
        "lines": lines,
        "speech": {"voice": "espeak", "texts": SHORT_NOTICE["speech"]["texts"]},
        "call": {"agent_timeout_s": 2.0, "hold_max_s": 2.0, "hold_reassure_s": 1.0,
                 "voicemail_max_s": 3.0, "cid_wait_s": 0.0},
    })
    app = Application(config, pin_factory=mock_factory, handset_audio=SimHandsetAudio())
    try:
        await app.start()
        await app.wait_ready(30.0)
        for i, (server, freq) in enumerate(zip(servers, freqs, strict=True)):
            server.sim.set_caller_audio(tone_source(freq))
            server.sim.ring(f"+3610000000{i}", None, cid_before_first_ring=True)
        results = []
        async with asyncio.timeout(TIMEOUT_S):
            while len(results) < len(freqs):
                results.append(await app.completed.get())
        rows = {r.reference: app.store.get_call(r.reference) for r in results}
    finally:
        await app.stop()
        for server in servers:
            await server.stop()
    by_line = {}
    for result in results:
        row = rows[result.reference]
        assert row is not None
        by_line[row["line"]] = (result, row)
    assert sorted(by_line) == ["l0", "l1", "l2", "l3"]
    for i, freq in enumerate(freqs):
        result, row = by_line[f"l{i}"]
        assert result.outcome == "voicemail", (row["line"], result)
        assert row["caller_number"] == f"+3610000000{i}"
        audio, rate = soundfile.read(result.recording.path, dtype="int16")
        caller = audio[:, 0].astype(np.float64)
        spectrum = np.abs(np.fft.rfft(caller))
        peak_hz = np.fft.rfftfreq(len(caller), 1 / rate)[int(np.argmax(spectrum))]
        assert abs(peak_hz - freq) < 5, (row["line"], peak_hz, freq)
        # Nobody else's tone leaks in: the other callers' frequencies are ≥ 40 dB down.
        for other in freqs:
            if other != freq:
                k = round(other * len(caller) / rate)
                assert spectrum[k - 2 : k + 3].max() < spectrum.max() / 100
        assert np.all(frame_levels(audio[:, 1]) < LOUD_DBFS), "no shop audio on any line"


async def test_fault_on_one_line_never_disturbs_a_call_on_another(
    tmp_path: Path, mock_factory: Any
) -> None:
    servers = [PtyModemServer(profile="conexant") for _ in range(2)]
    paths = [await server.start() for server in servers]
    config = load_config(Path("/dev/null"), state_dir=tmp_path / "state", overrides={
        "lines": [{"name": "a", "device": paths[0], "country_code": "51"},
                  {"name": "b", "device": paths[1], "country_code": "51"}],
        "speech": {"voice": "espeak", "texts": SHORT_NOTICE["speech"]["texts"]},
        "call": {"agent_timeout_s": 30.0, "cid_wait_s": 0.0},
    })
    app = Application(config, pin_factory=mock_factory, handset_audio=SimHandsetAudio())
    recording = asyncio.Event()
    app.observers.append(
        lambda ref, state, detail: recording.set() if state == "recording-started" else None)
    try:
        await app.start()
        await app.wait_ready(30.0)
        servers[0].sim.set_caller_audio(tone_source(600.0))
        servers[0].sim.ring("+3611111111", None)
        await asyncio.wait_for(recording.wait(), TIMEOUT_S)
        servers[1].unplug()  # line b's USB modem is pulled mid-call on line a
        async with asyncio.timeout(TIMEOUT_S):
            while app.lines[1].fault is None:  # noqa: ASYNC110 - state set by a supervisor
                await asyncio.sleep(0.05)
        assert app.lines[0].active is not None, "the call on line a goes on"
        assert not app.relay.energised, "a line that cannot answer bypasses the box"
        await asyncio.sleep(2.5)  # line a keeps talking while line b is gone
        servers[0].sim.remote_hangup()
        result = await asyncio.wait_for(app.completed.get(), TIMEOUT_S)
    finally:
        await app.stop()
        for server in servers:
            await server.stop()
    assert result.outcome == "missed"
    assert result.recording is not None
    audio, _ = soundfile.read(result.recording.path, dtype="int16")
    assert len(audio) / 8000 > 2.5
    assert np.all(frame_levels(audio[:, 0])[5:-60] > LOUD_DBFS), "no gap in line a's audio"
