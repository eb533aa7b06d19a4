"""``appliance modem probe`` and ``appliance sim-modem`` (appliance/cli/modem.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import serial
from click.testing import CliRunner, Result

from appliance.audio.backend import SimHandsetAudio
from appliance.cli.main import cli
from appliance.cli.modem import port_lock_holder
from appliance.config import load_config
from appliance.daemon.app import Application
from appliance.line.at import AtProtocol
from appliance.line.modem import CallerIdReceived, Dtmf, LineEvent, Modem, RemoteHangup
from appliance.line.transport import open_transport
from appliance.sim.modem.pty import PtyModemServer

TIMEOUT_S = 10.0
_T = TypeVar("_T")


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text('[speech]\nvoice = "espeak"\n[gpio]\npin_factory = "mock"\n',
                    encoding="utf-8")
    return path


def _args(tmp_path: Path, *args: str) -> list[str]:
    return ["--config", str(config_file(tmp_path)), "--state-dir", str(tmp_path / "state"), *args]


async def invoke(tmp_path: Path, *args: str) -> Result:
    # The CLI runs its own asyncio loop (and blocks); the emulator or daemon lives on this
    # loop, so the CLI runs in a thread.
    return await asyncio.to_thread(CliRunner().invoke, cli, _args(tmp_path, *args))


# --- modem probe -----------------------------------------------------------------------------


def test_probe_sim_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, _args(tmp_path, "modem", "probe", "--device", "sim://v253",
                                           "--json"))
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ati0"] == ["V253"]
    assert report["chipset"] == "generic"
    assert {f["format"] for f in report["voice_formats"]} == {"s8", "u8", "ulaw", "alaw"}
    assert report["chosen_format"]["cml"] == 5  # no 16-bit on this profile: A-law
    assert report["chosen_format"]["format"] == "alaw"
    assert "not offered: s16le" in report["chosen_format"]["reason"]
    assert report["vls_labels"][1].startswith('1,"T"')
    assert report["full_duplex"] is True
    assert report["caller_id"] == "(0-2)"
    assert report["country"] == "B5"  # the strict profile prefixes "+GCI: " — stripped
    assert "51" in report["countries"]


async def test_probe_pty_text_and_leaves_data_class(tmp_path: Path) -> None:
    server = PtyModemServer(profile="conexant")
    path = await server.start()
    try:
        result = await invoke(tmp_path, "modem", "probe", "--device", path)
    finally:
        await server.stop()
    assert result.exit_code == 0, result.output
    out = result.output
    assert "dialect         conexant (ATI0 56000)" in out
    assert "CX93001" in out
    assert "would use       AT+VSM=133,8000 (s16le): 16-bit linear, the best" in out
    assert "full duplex     yes" in out
    assert "caller ID       yes" in out
    assert "Hungary is 51" in out
    commands = server.sim.commands
    assert "AT+VSM=?" in commands
    assert commands[-1] == "AT+FCLASS=0"
    assert server.sim.fclass == 0
    assert not server.sim.off_hook  # probing never takes the line


@pytest.mark.parametrize("has_vtr", [True, False])
async def test_probe_try_vtr_finds_out_off_hook(tmp_path: Path, has_vtr: bool) -> None:
    # AT+VTR=? refused proves nothing; --try-vtr takes the line off-hook for a moment and
    # tries AT+VTR itself, then puts it back on-hook.
    server = PtyModemServer(profile="usr")
    server.sim.profile = dataclasses.replace(server.sim.profile, vtr_test_command=False,
                                             full_duplex=has_vtr)
    path = await server.start()
    try:
        plain = await invoke(tmp_path, "modem", "probe", "--device", path)
        tried = await invoke(tmp_path, "modem", "probe", "--device", path, "--try-vtr",
                             "--json")
    finally:
        await server.stop()
    assert plain.exit_code == 0, plain.output
    assert "full duplex     not known: AT+VTR=? refused" in plain.output
    assert "--try-vtr" in plain.output
    assert tried.exit_code == 0, tried.output
    report = json.loads(tried.output)
    assert report["full_duplex"] is has_vtr
    assert ("connected" if has_vtr else "AT+VTR refused") in report["duplex_evidence"]
    commands = server.sim.commands
    assert commands.count("AT+VTR") == 1
    assert commands.index("AT+VLS=1") < commands.index("AT+VTR") < commands.index("AT+VLS=0")
    assert commands[-1] == "AT+FCLASS=0"
    assert not server.sim.off_hook


@pytest.fixture
async def daemon(tmp_path: Path, mock_factory: Any) -> AsyncIterator[Application]:
    config = load_config(config_file(tmp_path), state_dir=tmp_path / "state")
    app = Application(config, pin_factory=mock_factory, handset_audio=SimHandsetAudio())
    await app.start()
    await app.wait_ready(TIMEOUT_S)
    try:
        yield app
    finally:
        await app.stop()


async def test_probe_refuses_while_daemon_runs(daemon: Application, tmp_path: Path) -> None:
    server = PtyModemServer(profile="conexant")
    path = await server.start()
    try:
        result = await invoke(tmp_path, "modem", "probe", "--device", path)
    finally:
        await server.stop()
    assert result.exit_code == 1
    assert "daemon is running" in result.output
    assert server.sim.commands == []  # the port was never touched


async def test_probe_refuses_a_port_held_exclusively(tmp_path: Path) -> None:
    server = PtyModemServer(profile="usr")
    path = await server.start()
    holder = serial.Serial(path, exclusive=True)  # what the daemon's open does (flock)
    try:
        result = await invoke(tmp_path, "modem", "probe", "--device", path)
    finally:
        holder.close()
        await server.stop()
    assert result.exit_code == 1
    assert "in use by another program" in result.output


def test_uucp_lock_holder(tmp_path: Path) -> None:
    # mgetty names the lock of /dev/pts/7 LCK..pts_7 (seen in vgetty's log, §9.2).
    (tmp_path / "LCK..pts_7").write_text(f"{os.getpid():>10}\n", encoding="ascii")
    assert port_lock_holder("/dev/pts/7", (tmp_path,)) == os.getpid()
    (tmp_path / "LCK..ttyACM0").write_text("999999999\n", encoding="ascii")  # stale
    assert port_lock_holder("/dev/ttyACM0", (tmp_path,)) is None
    assert port_lock_holder("/dev/ttyACM1", (tmp_path,)) is None
    assert port_lock_holder("sim://usr", (tmp_path,)) is None


def test_probe_missing_device(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, _args(tmp_path, "modem", "probe", "--device",
                                           str(tmp_path / "ttyACM9")))
    assert result.exit_code == 1
    assert "cannot open modem port" in result.output


# --- sim-modem -------------------------------------------------------------------------------


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "appliance", "sim-modem", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def _line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(TIMEOUT_S):
        line = await proc.stdout.readline()
    assert line, "sim-modem closed stdout"
    return line.decode().strip()


async def _stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(TIMEOUT_S):
        return await proc.wait()


async def test_sim_modem_prints_path_serves_and_stops(tmp_path: Path) -> None:
    link = tmp_path / "modem"
    proc = await _spawn("--dialect", "usr5637", "--link", str(link))
    try:
        path = await _line(proc)
        assert path.startswith("/dev/pts/")
        assert os.path.realpath(link) == path
        transport, at = await open_transport(str(link), lambda: AtProtocol())
        try:
            assert await at.command("ATI0") == ["5601"]
        finally:
            transport.close()
    finally:
        rc = await _stop(proc)
    assert rc == 0
    assert not link.is_symlink()  # removed on SIGTERM


async def test_sim_modem_half_duplex_refuses_vtr(tmp_path: Path) -> None:
    proc = await _spawn("--half-duplex", "--json")
    try:
        serving = json.loads(await _line(proc))
        assert serving["full_duplex"] is False
        modem = Modem(serving["pty"], command_timeout_s=2.0)
        await modem.open()
        try:
            # AT+VTR=? answered ERROR: unknown until a call tries AT+VTR.
            assert modem.full_duplex is None
            assert "AT+VTR=? refused" in modem.duplex_evidence
        finally:
            await modem.close()
    finally:
        assert await _stop(proc) == 0


async def _next(modem: Modem, kind: type[_T]) -> _T:
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            event: LineEvent = await modem.events.get()
            if isinstance(event, kind):
                return event


async def test_sim_modem_plays_a_script_against_the_driver(tmp_path: Path) -> None:
    script = tmp_path / "calls.toml"
    script.write_text(
        "[[calls]]\n"
        # The driver opens the port first (≈ 0.5 s with the init script); a call ringing
        # before +VCID=1 would, as on a real line, lose its caller ID.
        "at_s = 1.5\n"
        'number = "3612345678"\n'
        'name = "TEST CALLER"\n'
        'audio = "tone:440"\n'
        'keys = [{ at_s = 0.2, digit = "7" }]\n'
        "hangup_after_s = 0.6\n",
        encoding="utf-8",
    )
    proc = await _spawn("--dialect", "v253", "--script", str(script), "--ring-period", "0.3",
                        "--json")
    try:
        serving = json.loads(await _line(proc))
        assert serving["event"] == "serving"
        assert serving["dialect"] == "v253"
        modem = Modem(serving["pty"], command_timeout_s=2.0, cid_settle_s=0.01)
        await modem.open()
        try:
            cid = await _next(modem, CallerIdReceived)
            assert cid.caller.number == "3612345678"
            await modem.answer()
            await modem.start_duplex(lambda frame: None)
            modem.send_audio(np.zeros(800, dtype=np.int16))
            assert await _next(modem, Dtmf) == Dtmf("7")
            await _next(modem, RemoteHangup)
            await modem.hang_up()
            events: list[dict[str, Any]] = []
            while not events or events[-1]["event"] != "result":
                events.append(json.loads(await _line(proc)))
        finally:
            await modem.close()
    finally:
        rc = await _stop(proc)
    assert rc == 0
    kinds = [e["event"] for e in events]
    assert kinds == ["ringing", "answered", "key", "caller_hangup", "host_hangup", "done",
                     "result"]
    result = events[-1]
    assert result["answered"] is True
    assert result["keys_sent"] == "7"
    assert result["host_hung_up"] is True


def test_sim_modem_bad_script_is_a_config_error(tmp_path: Path) -> None:
    script = tmp_path / "calls.toml"
    script.write_text('[[calls]]\nkeys = [{ at_s = 1, digit = "x" }]\n', encoding="utf-8")
    result = CliRunner().invoke(cli, ["sim-modem", "--script", str(script)])
    assert result.exit_code == 78
    assert "calls[0].keys[0].digit" in result.output
