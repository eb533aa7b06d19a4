"""Line audio through a sound card (issue 3 item 8): configuration, and the modem's events
while it holds the line in voice command state without ``+VTR``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.config import load_config
from appliance.errors import ConfigError
from appliance.line.codec import LineFramer
from appliance.line.modem import Dtmf, LineEvent, Modem, RemoteHangup
from appliance.sim.modem.emulator import SimModem
from appliance.sim.modem.link import sim_url

TIMEOUT_S = 5.0
_T = TypeVar("_T")


def _line(audio: object) -> dict[str, object]:
    return {"lines": [{"name": "main", "device": "sim://", "country_code": "51",
                       "audio": audio}]}


def test_line_audio_defaults_to_the_modem_stream(tmp_path: Path) -> None:
    config = load_config(Path("/dev/null"), state_dir=tmp_path)
    assert config.lines[0].audio == ""


def test_line_audio_accepts_an_alsa_device(tmp_path: Path) -> None:
    config = load_config(Path("/dev/null"), state_dir=tmp_path,
                         overrides=_line("alsa:plughw:CARD=FXO"))
    assert config.lines[0].audio == "alsa:plughw:CARD=FXO"


@pytest.mark.parametrize("bad", ["alsa:", "alsa:  ", "pulse:x", "sim://", "plughw:0"])
def test_bad_line_audio_names_the_key(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(Path("/dev/null"), state_dir=tmp_path, overrides=_line(bad))
    assert info.value.key == "lines[0].audio"
    assert info.value.found == bad


def test_line_audio_must_be_a_string(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(Path("/dev/null"), state_dir=tmp_path, overrides=_line(3))
    assert "lines[0].audio" in str(info.value)


# --- command-state DLE events ---------------------------------------------------------------


def _events(chunks: list[bytes]) -> list[str]:
    framer = LineFramer()
    out: list[str] = []
    for chunk in chunks:
        framer.feed(chunk)
        out += framer.take_dle_events()
    return out


def test_shielded_dtmf_in_command_state_is_one_key_per_block() -> None:
    # §5.4: <DLE>/ then the digit every 70 ms while the tone lasts, then <DLE>~.
    data = b"\x10/\x105\x105\x105\x10~\x10b\x10/\x105\x10\x7f\x107"
    assert _events([data]) == ["5", "b", "5", "7"]


@given(st.lists(st.integers(min_value=1, max_value=30), max_size=12))
def test_command_state_events_do_not_depend_on_how_reads_split(cuts: list[int]) -> None:
    data = b"\r\nOK\r\n\x10/\x10#\x10#\x10~\x10H\r\nRING\r\n\x10/\x10A\x10~\x10d"
    chunks, pos = [], 0
    for cut in cuts:
        chunks.append(data[pos : pos + cut])
        pos += cut
    chunks.append(data[pos:])
    assert _events(chunks) == ["#", "H", "A", "d"]


async def _next(modem: Modem, kind: type[_T]) -> _T:
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            event: LineEvent = await modem.events.get()
            if isinstance(event, kind):
                return event


@pytest.mark.parametrize("profile", ["conexant", "usr", "v253"])
async def test_off_hook_without_vtr_still_reports_keys_and_hang_up(profile: str) -> None:
    sim = SimModem(profile, ring_period_s=0.1, cid_delay_s=0.03)
    modem = Modem(sim_url(sim), command_timeout_s=1.0, cid_settle_s=0.01)
    await modem.open()
    try:
        sim.ring("3612345678")
        await modem.answer()
        assert sim.off_hook
        assert sim.mode == "command"  # voice command state, no +VTR
        sim.press_key("5", duration_ms=300)  # shielded: repeated every 70 ms (conexant)
        assert await _next(modem, Dtmf) == Dtmf("5")
        async with asyncio.timeout(TIMEOUT_S):
            while sim._key is not None:  # noqa: ASYNC110 - the emulator has no key-up event
                await asyncio.sleep(0.01)
        sim.remote_hangup()
        # One key per press: the repeats inside the shield were not reported again.
        before = _drain(modem)
        assert not any(isinstance(e, Dtmf) for e in before), before
        assert await _next(modem, RemoteHangup) == RemoteHangup("busy")
        await modem.hang_up()
        assert not sim.off_hook
        assert "AT+VTR" not in sim.commands
    finally:
        await modem.close()


def _drain(modem: Modem) -> list[LineEvent]:
    out = []
    while not modem.events.empty():
        out.append(modem.events.get_nowait())
    return out
