"""The line never looks ready while it is dead: the real daemon, the modem emulator on a real
pty opened by pyserial, MockFactory pins.

* a hang-up the modem refuses once is retried, and the next caller is answered;
* a modem that refuses every hang-up faults the line (code 9, relay released, never "ready")
  until it lets go;
* a modem that stops answering while idle is noticed by the liveness check, faults the line
  like a missing modem, and the line recovers when it answers again; doctor says so;
* a modem that sends CONNECT while idle is not called silent: the fault says what happened.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import soundfile
from click.testing import CliRunner

from appliance.audio.backend import SimHandsetAudio
from appliance.call.flow import CallResult
from appliance.cli.main import cli
from appliance.config import load_config
from appliance.daemon.app import Application
from appliance.daemon.line_session import (
    LINE_OFF_HOOK_FAULT,
    MODEM_SILENT_FAULT,
    MODEM_STRAY_CONNECT_FAULT,
)
from appliance.sim.modem.emulator import SimModem
from appliance.sim.modem.pty import PtyModemServer

pytestmark = pytest.mark.timeout(180)

TIMEOUT_S = 60.0
SHORT_NOTICE = {"notice": "Tájékoztatjuk, hogy a hívást rögzítjük."}


def _config_file(tmp_path: Path, device: str, liveness_interval_s: float) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        '[speech]\nvoice = "espeak"\n[speech.texts]\n'
        f'notice = "{SHORT_NOTICE["notice"]}"\n'
        '[gpio]\npin_factory = "mock"\n'
        '[call]\nagent_timeout_s = 30.0\ncid_wait_s = 0.0\n'
        f'[[lines]]\nname = "main"\ndevice = "{device}"\ncountry_code = "51"\n'
        f"liveness_interval_s = {liveness_interval_s}\n", encoding="utf-8")
    return path


@pytest.fixture
async def box(tmp_path: Path, mock_factory: Any,
              request: pytest.FixtureRequest) -> AsyncIterator[tuple[Application, PtyModemServer,
                                                                      Path]]:
    """A running daemon on one emulated modem; ``request.param`` is the liveness interval."""
    server = PtyModemServer(SimModem("conexant", ring_period_s=1.0, cid_delay_s=0.3))
    path = await server.start()
    config_path = _config_file(tmp_path, path, getattr(request, "param", 30.0))
    config = load_config(config_path, state_dir=tmp_path / "state")
    app = Application(config, pin_factory=mock_factory, handset_audio=SimHandsetAudio())
    try:
        await app.start()
        await app.wait_ready(TIMEOUT_S)
        yield app, server, config_path
    finally:
        await app.stop()
        await server.stop()


async def _until(predicate: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - state set by the daemon's own tasks
            await asyncio.sleep(0.05)


async def _call(app: Application, server: PtyModemServer, number: str,
                before_hangup: Callable[[], None] = lambda: None) -> CallResult:
    """A caller rings, hears the notice, is recorded a moment, and hangs up."""
    recording = asyncio.Event()

    def observe(ref: str, state: str, detail: str) -> None:
        if state == "recording-started":
            recording.set()

    app.observers.append(observe)
    try:
        server.sim.ring(number, None)
        await asyncio.wait_for(recording.wait(), TIMEOUT_S)
        before_hangup()
        server.sim.remote_hangup()
        return await asyncio.wait_for(app.completed.get(), TIMEOUT_S)
    finally:
        app.observers.remove(observe)


def _assert_recorded(app: Application, result: CallResult) -> None:
    row = app.store.get_call(result.reference)
    assert row is not None
    assert row["end_at"] is not None
    assert row["recording_decision"] == "recorded"
    assert result.recording is not None
    info = soundfile.info(result.recording.path)
    assert info.channels == 2
    assert info.samplerate == 8000


async def test_the_next_caller_is_answered_after_a_refused_hang_up(
    box: tuple[Application, PtyModemServer, Path],
) -> None:
    app, server, _ = box
    sim = server.sim
    first = await _call(app, server, "+3611111111", lambda: sim.refuse_hang_up(2))
    _assert_recorded(app, first)
    await sim.wait_on_hook(TIMEOUT_S)
    assert sim.refused_hang_ups == 2, "AT+VLS=0 and ATH0 were refused"
    assert app.fault_codes() == []
    # The next caller is answered (and hangs up during the notice).
    sim.ring("+3622222222", None)
    await sim.wait_off_hook(TIMEOUT_S)
    sim.remote_hangup()
    second = await asyncio.wait_for(app.completed.get(), TIMEOUT_S)
    assert second.outcome == "abandoned"
    assert second.reference != first.reference
    assert app.store.get_call(second.reference) is not None
    await sim.wait_on_hook(TIMEOUT_S)
    assert app.status_line().startswith("ready")
    assert app.relay.energised
    assert app.panel.pattern("fault") == "off"


async def test_a_modem_that_never_hangs_up_faults_the_line(
    box: tuple[Application, PtyModemServer, Path],
) -> None:
    app, server, config_path = box
    sim = server.sim
    ready_seen: list[str] = []
    result = await _call(app, server, "+3611111111", lambda: sim.refuse_hang_up(None))
    _assert_recorded(app, result)  # the evidence is kept whatever the modem does
    await _until(lambda: "line-off-hook" in app.fault_codes())
    assert sim.off_hook
    assert not app.relay.energised, "the phone is on the line, not the stuck modem"
    assert app.panel.pattern("fault") == ("code", 9)
    doctor = await asyncio.to_thread(
        CliRunner().invoke, cli, ["--config", str(config_path), "--state-dir",
                                  str(app.config.device.state_dir), "doctor", "--json"])
    modem = next(c for c in json.loads(doctor.output) if c["name"] == "modem main")
    assert modem["level"] == "fail"
    assert "re-plug" in modem["fix"]
    session = app.lines[0]
    assert session.fault is not None
    assert LINE_OFF_HOOK_FAULT in session.fault
    # The supervisor keeps trying (back-off 1 s, 2 s …): never "ready" meanwhile.
    loop = asyncio.get_running_loop()
    until = loop.time() + 4.0
    while loop.time() < until:
        if app.status_line().startswith("ready") or app.relay.energised:
            ready_seen.append(app.status_line())
        await asyncio.sleep(0.05)
    assert not ready_seen
    assert sim.refused_hang_ups > 5, "it tried again"
    # The modem lets go (re-plugged): the next reopen hangs up and the line is ready again.
    sim.accept_hang_up()
    await _until(lambda: session.fault is None and session.state == "idle")
    assert not sim.off_hook
    assert app.relay.energised
    assert app.status_line().startswith("ready")


@pytest.mark.parametrize("box", [0.5], indirect=True)
async def test_a_modem_silent_while_idle_is_noticed_and_recovers(
    box: tuple[Application, PtyModemServer, Path],
) -> None:
    app, server, config_path = box
    session = app.lines[0]
    server.sim.stall()  # the modem stops answering while idle
    await _until(lambda: session.fault is not None)
    assert session.fault == MODEM_SILENT_FAULT
    assert app.fault_codes()[0] == "modem-missing"
    assert app.status_line().startswith("fault")
    assert not app.relay.energised
    state_dir = str(Path(app.config.device.state_dir))
    doctor = await asyncio.to_thread(
        CliRunner().invoke, cli,
        ["--config", str(config_path), "--state-dir", state_dir, "doctor", "--json"])
    modem = next(c for c in json.loads(doctor.output) if c["name"] == "modem main")
    assert doctor.exit_code == 1
    assert modem["level"] == "fail"
    server.sim.unstall()
    await _until(lambda: session.fault is None and session.state == "idle")
    assert app.status_line().startswith("ready")
    assert app.relay.energised
    doctor = await asyncio.to_thread(
        CliRunner().invoke, cli,
        ["--config", str(config_path), "--state-dir", state_dir, "doctor", "--json"])
    modem = next(c for c in json.loads(doctor.output) if c["name"] == "modem main")
    assert modem["level"] == "pass", modem
    # And it answers a call again.
    server.sim.ring("+3633333333", None)
    await server.sim.wait_off_hook(TIMEOUT_S)
    server.sim.remote_hangup()
    result = await asyncio.wait_for(app.completed.get(), TIMEOUT_S)
    assert app.store.get_call(result.reference) is not None
    await server.sim.wait_on_hook(TIMEOUT_S)


@pytest.mark.parametrize("box", [0.5], indirect=True)
async def test_a_stray_connect_while_idle_is_named_as_such(
    box: tuple[Application, PtyModemServer, Path],
) -> None:
    app, server, _ = box
    session = app.lines[0]
    faults: list[str] = []

    def watch() -> bool:
        if session.fault is not None:
            faults.append(session.fault)
        return bool(faults)

    # The modem goes into its data state unasked: it spoke, it is not silent.
    server.sim.inject(b"\r\nCONNECT\r\n")
    await _until(watch)
    assert faults[0] == MODEM_STRAY_CONNECT_FAULT
    assert MODEM_SILENT_FAULT not in faults
    assert app.fault_codes()[0] == "modem-missing"
    # The reopen leaves the data state: the line is ready and answers again.
    await _until(lambda: session.fault is None and session.state == "idle")
    assert app.status_line().startswith("ready")
    server.sim.ring("+3644444444", None)
    await server.sim.wait_off_hook(TIMEOUT_S)
    server.sim.remote_hangup()
    result = await asyncio.wait_for(app.completed.get(), TIMEOUT_S)
    assert app.store.get_call(result.reference) is not None
