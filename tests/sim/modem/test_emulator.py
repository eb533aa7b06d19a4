"""SimModem against the §11 emulator checklist, driven byte by byte as a host would."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from appliance.audio.pcm import decode_voice
from appliance.line.codec import VoiceDecoder
from appliance.sim.modem.emulator import SimModem

TIMEOUT_S = 5.0


class Host:
    """Collects what the emulator writes; waits for byte patterns."""

    def __init__(self, sim: SimModem) -> None:
        self.sim = sim
        self.out = bytearray()
        self.grew = asyncio.Event()
        sim.attach(self._write)

    def _write(self, data: bytes) -> None:
        self.out += data
        self.grew.set()

    def send(self, data: bytes) -> None:
        self.sim.data_received(data)

    async def wait_for(self, needle: bytes, timeout_s: float = TIMEOUT_S) -> None:
        async with asyncio.timeout(timeout_s):
            while needle not in self.out:
                self.grew.clear()
                await self.grew.wait()

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data


@pytest.fixture
def host() -> Host:
    return Host(SimModem("conexant", ring_period_s=0.05, cid_delay_s=0.01))


async def test_echo_and_verbose_flags(host: Host) -> None:
    host.send(b"ATI0\r")
    assert host.take() == b"ATI0\r\r\n56000\r\n\r\nOK\r\n"  # E1 echo (§3)
    host.send(b"ATE0V0\r")
    assert host.take() == b"ATE0V0\r0\r"  # echo before the change, numeric OK after
    host.send(b"AT+BOGUS\r")
    assert host.take() == b"4\r"


async def test_fclass_and_voice_only_commands(host: Host) -> None:
    host.send(b"ATE0\r")
    host.take()
    host.send(b"AT+FCLASS?\r")
    assert host.take() == b"\r\n0\r\n\r\nOK\r\n"  # §9.2: bare value
    host.send(b"AT+VSD?\r")
    assert host.take() == b"\r\nERROR\r\n"  # §3: voice-only outside +FCLASS=8
    host.send(b"AT+FCLASS=8;+VSM=130,8000\r")
    host.send(b"AT+VSM=130,8000\r")  # quirk #8: duplicates accepted
    assert host.take() == b"\r\nOK\r\n\r\nOK\r\n"
    assert host.sim.vsm == (130, 8000)
    host.send(b"AT+VSM=129,8000\r")  # ADPCM: not offered as usable
    assert host.take() == b"\r\nERROR\r\n"
    host.send(b"AT+VTX\r")  # on-hook
    assert host.take() == b"\r\nERROR\r\n"


async def test_vcid_lost_at_atz_on_conexant(host: Host) -> None:
    host.send(b"ATE0\rAT+VCID=1\rATZ\rATE0\rAT+VCID?\r")
    assert host.take().endswith(b"\r\n0\r\n\r\nOK\r\n")  # quirk #4


async def test_vts_answers_after_the_tone(host: Host) -> None:
    loop = asyncio.get_running_loop()
    host.send(b"ATE0\rAT+FCLASS=8\r")
    host.take()
    start = loop.time()
    host.send(b"AT+VTS=[933,0,15]\rATI0\r")
    await host.wait_for(b"56000")
    elapsed = loop.time() - start
    assert host.take() == b"\r\nOK\r\n\r\n56000\r\n\r\nOK\r\n"  # queued command after the OK
    assert elapsed >= 0.14


async def test_vtx_plays_then_ok_and_underrun(host: Host) -> None:
    host.send(b"ATE0\rAT+FCLASS=8\rAT+VLS=1\rAT+VSM=1,8000\rAT+VTX\r")
    await host.wait_for(b"CONNECT\r\n")
    host.take()
    audio = bytes(range(256)) * 4  # 1024 samples, 0x10 included
    host.send(audio.replace(b"\x10", b"\x10\x10"))
    await host.wait_for(b"\x10u")  # §6: empty without <DLE><ETX> → <DLE>u
    np.testing.assert_array_equal(host.sim.played, decode_voice(audio, "u8"))
    host.send(b"\x80" * 320 + b"\x10\x03")
    await host.wait_for(b"\r\nOK\r\n")
    assert host.sim.mode == "command"
    assert len(host.sim.played) == 1024 + 320
    assert host.sim.first_tx_byte_at is not None


async def test_vrx_streams_at_8000_per_second_and_aborts(host: Host) -> None:
    loop = asyncio.get_running_loop()
    host.sim.set_caller_audio(lambda n: np.full(n, 256 * (0x10 - 128), dtype=np.int16))
    host.send(b"ATE0\rAT+FCLASS=8\rAT+VLS=1\rAT+VRX\r")
    await host.wait_for(b"CONNECT\r\n")
    host.take()
    start = loop.time()
    decoder = VoiceDecoder()
    samples = 0
    async with asyncio.timeout(TIMEOUT_S):
        while samples < 4000:
            host.grew.clear()
            await host.grew.wait()
            chunk = decoder.feed(host.take())
            assert set(chunk.audio) <= {0x10}
            samples += len(chunk.audio)
    elapsed = loop.time() - start
    # 4000 samples at 8000/s in 20 ms ticks: never faster than real time (0.5 s less one
    # tick); later only by how long a loaded machine keeps the loop from running.
    assert 0.45 <= elapsed <= 2.0
    host.send(b"\x10!")
    assert host.take() == b"\x10\x03\r\nOK\r\n"  # §5.3


async def test_shielded_and_bare_dtmf() -> None:
    for profile, expect in (("conexant", [b"\x10/\x109", b"\x109", b"\x10~"]), ("v253", None)):
        host = Host(SimModem(profile))
        host.send(b"ATE0\rAT+FCLASS=8\rAT+VLS=1\r")
        host.take()
        host.sim.press_key("9", duration_ms=150)
        await host.wait_for(b"\x10~" if profile == "conexant" else b"\x109")
        if expect:
            data = host.take()
            assert data.startswith(expect[0])
            assert 2 <= data.count(b"\x109") <= 3  # initial + a repeat every 70 ms while on
        host.sim.detach()
    host = Host(SimModem("usr"))
    host.send(b"ATE0\rAT+FCLASS=8\rAT+VLS=1\r")
    await host.wait_for(b"\x10H")  # quirk #23
    host.sim.detach()


async def test_ring_cid_and_stop_on_off_hook(host: Host) -> None:
    host.send(b"ATE0\rAT+VCID=1\r")
    host.take()
    host.sim.ring("3612345678", "TEST CALLER", max_rings=50)
    await host.wait_for(b"NAME = TEST CALLER\r\n")
    data = host.take()
    assert data.index(b"RING") < data.index(b"NMBR = 3612345678")  # after the first RING
    host.send(b"AT+FCLASS=8\rAT+VLS=1\r")
    await host.sim.wait_off_hook(TIMEOUT_S)
    assert not host.sim.ringing


async def test_remote_hangup_reports_busy(host: Host) -> None:
    host.send(b"ATE0\rAT+FCLASS=8\rAT+VLS=1\rAT+VTR\r")
    await host.wait_for(b"CONNECT\r\n")
    host.take()
    host.sim.remote_hangup()
    await host.wait_for(b"\x10b")
    chunk = VoiceDecoder().feed(host.take())
    assert "b" in chunk.events
    host.send(b"\x10^")
    await host.wait_for(b"\x10\x03\r\nOK\r\n")
    host.send(b"AT+VLS=0\r")
    await host.sim.wait_on_hook(TIMEOUT_S)
