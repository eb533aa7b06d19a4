"""The half-duplex voice states through the Modem API (``+VTX`` play, ``+VRX`` record) and tones
(``+VTS``) against the emulator, in process and over a pty (issue 3 item 1: play; record;
tones)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import numpy as np
import numpy.typing as npt
import pytest

from appliance.audio.dtmf import DtmfDetector
from appliance.audio.pcm import FRAME_SAMPLES, decode_voice, encode_voice
from appliance.line.at import LinkState
from appliance.line.modem import Dtmf, Modem, RemoteHangup
from appliance.sim.modem.emulator import SimModem
from appliance.sim.modem.link import sim_url
from appliance.sim.modem.pty import PtyModemServer
from tests.line.test_modem_calls import next_event

pytestmark = pytest.mark.timeout(30)

TIMEOUT_S = 5.0


def _tone(n: int, hz: float = 441.0) -> npt.NDArray[np.int16]:
    # Near full scale: every u8 code, 0x10 included, occurs (DLE doubling on transmit).
    t = np.arange(n) / 8000.0
    return (31000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


@pytest.fixture(params=["sim", "pty"])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Modem, SimModem]]:
    """An answered call on a half-duplex emulator (in process or over a real pty)."""
    sim = SimModem("conexant", ring_period_s=0.1, cid_delay_s=0.03)
    sim.profile = dataclasses.replace(sim.profile, full_duplex=False)
    server: PtyModemServer | None = None
    if request.param == "sim":
        modem = Modem(sim_url(sim), command_timeout_s=1.0, cid_settle_s=0.01)
    else:
        server = PtyModemServer(sim)
        modem = Modem(await server.start(), command_timeout_s=1.0, cid_settle_s=0.01)
    await modem.open()
    try:
        assert modem.full_duplex is None  # AT+VTR=? refused: unknown until AT+VTR
        sim.ring("3612345678")
        await modem.answer()
        await sim.wait_off_hook(TIMEOUT_S)
        yield modem, sim
    finally:
        await modem.close()
        if server is not None:
            await server.stop()


async def test_play_drains_then_returns_to_command_state(rig: tuple[Modem, SimModem]) -> None:
    modem, sim = rig
    await modem.start_play()
    assert modem.voice_op == "play"
    assert sim.mode == "vtx"
    tone = _tone(4000)  # 0.5 s: fits the modem's 1 s buffer, so no pacing is needed here
    for k in range(0, len(tone), FRAME_SAMPLES):
        modem.send_audio(tone[k : k + FRAME_SAMPLES])
    await modem.stop_play()
    # <DLE><ETX> means "play out what you hold": OK comes only after the last sample.
    expected = decode_voice(encode_voice(tone, modem.voice_format), modem.voice_format)
    np.testing.assert_array_equal(sim.played, expected)
    assert modem.voice_op is None
    assert sim.mode == "command"
    await modem.hang_up()  # the link is in command state: AT commands work again
    await sim.wait_on_hook(TIMEOUT_S)


async def test_keys_and_hang_up_are_reported_while_playing(rig: tuple[Modem, SimModem]) -> None:
    modem, sim = rig
    await modem.start_play()
    sim.press_key("9")
    assert await next_event(modem, Dtmf) == Dtmf("9")
    sim.remote_hangup()
    assert await next_event(modem, RemoteHangup) == RemoteHangup("busy")
    await modem.hang_up()
    await sim.wait_on_hook(TIMEOUT_S)


async def test_hang_up_while_playing_flushes_the_modem_buffer(
    rig: tuple[Modem, SimModem],
) -> None:
    modem, sim = rig
    await modem.start_play()
    tone = _tone(6400)  # 0.8 s queued in the modem
    for k in range(0, len(tone), FRAME_SAMPLES):
        modem.send_audio(tone[k : k + FRAME_SAMPLES])
    await modem.hang_up()  # <DLE><CAN><DLE><ETX>: no waiting for the rest to play out
    await sim.wait_on_hook(TIMEOUT_S)
    assert len(sim.played) < len(tone)
    assert sim.commands[-3:] == ["AT+VLS=0", "AT+VLS?", "AT+FCLASS=0"]


async def test_record_delivers_frames_and_ignores_audio_sent_meanwhile(
    rig: tuple[Modem, SimModem],
) -> None:
    modem, sim = rig
    sim.set_caller_audio(lambda n: _tone(n, 700.0) // 2)
    frames: list[npt.NDArray[np.int16]] = []
    enough = asyncio.Event()

    def on_audio(frame: npt.NDArray[np.int16]) -> None:
        frames.append(frame)
        if len(frames) >= 25:
            enough.set()

    await modem.start_record(on_audio)
    assert modem.voice_op == "record"
    assert sim.mode == "vrx"
    modem.send_audio(_tone(FRAME_SAMPLES))  # must not reach a modem in +VRX
    async with asyncio.timeout(TIMEOUT_S):
        await enough.wait()
    assert modem.stats["tx_dropped_bytes"] == FRAME_SAMPLES
    assert all(f.shape == (FRAME_SAMPLES,) and f.dtype == np.int16 for f in frames)
    assert max(int(np.abs(f).max()) for f in frames) > 10000  # the caller's tone
    await modem.stop_record()
    assert modem.voice_op is None
    assert sim.mode == "command"
    count = len(frames)
    await modem.start_play()  # the next state starts cleanly after <DLE>!
    await modem.stop_play()
    assert len(frames) == count, "no audio after the record state ended"
    await modem.hang_up()
    await sim.wait_on_hook(TIMEOUT_S)


async def test_remote_hang_up_while_recording(rig: tuple[Modem, SimModem]) -> None:
    modem, sim = rig
    await modem.start_record(lambda frame: None)
    sim.remote_hangup()
    assert await next_event(modem, RemoteHangup) == RemoteHangup("busy")
    await modem.hang_up()  # leaves +VRX with <DLE>!, then on-hook
    await sim.wait_on_hook(TIMEOUT_S)
    assert modem.link_state is LinkState.CONNECTED, "the link never had to resync"
    assert modem.voice_op is None


async def test_tones_from_command_state_reach_the_line(rig: tuple[Modem, SimModem]) -> None:
    modem, sim = rig
    loop = asyncio.get_running_loop()
    started = loop.time()
    await modem.play_tone(933, duration_s=0.3)  # vgetty's beep: OK only after it played
    assert loop.time() - started >= 0.25
    beep = sim.played.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(beep))
    assert abs(np.argmax(spectrum) * 8000 / len(beep) - 933) < 10
    sim.clear_played()
    await modem.send_dtmf("16#", tone_ms=80)
    assert "AT+VTD=8" in sim.commands
    detector = DtmfDetector()
    heard = detector.feed(np.concatenate([sim.played, np.zeros(800, dtype=np.int16)]))
    assert "".join(heard) == "16#"
    with pytest.raises(ValueError, match="200–3000"):
        await modem.play_tone(100, duration_s=0.1)
    with pytest.raises(ValueError, match="DTMF"):
        await modem.send_dtmf("12x")


@pytest.mark.parametrize("state", ["play", "record"])
async def test_hang_up_while_a_voice_state_is_being_entered(
    rig: tuple[Modem, SimModem], state: str
) -> None:
    # The caller hangs up just as the call switches state: the task entering it is cancelled
    # while AT+VTX/AT+VRX is in flight. The command completes anyway (shielded); hang-up must
    # still leave that state and put the line on-hook, without the link turning SUSPECT.
    modem, sim = rig
    entering = asyncio.create_task(
        modem.start_play() if state == "play" else modem.start_record(lambda frame: None))
    await asyncio.sleep(0)  # one loop turn: the command is written, its CONNECT not yet read
    entering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await entering
    await modem.hang_up()
    await sim.wait_on_hook(TIMEOUT_S)
    assert sim.mode == "command"
    assert modem.link_state is LinkState.CONNECTED
    assert modem.voice_op is None
    assert sim.commands[-3:] == ["AT+VLS=0", "AT+VLS?", "AT+FCLASS=0"]
