"""``status``/``play`` through the real control socket of a running Application; ``doctor``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from appliance.audio.backend import SimHandsetAudio
from appliance.cli.main import cli
from appliance.config import load_config
from appliance.daemon.app import Application
from appliance.daemon.control import request, socket_path

TIMEOUT_S = 10.0


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text('[speech]\nvoice = "espeak"\n[gpio]\npin_factory = "mock"\n',
                    encoding="utf-8")
    return path


async def invoke(tmp_path: Path, *args: str) -> Result:
    # The CLI blocks on the socket; the daemon lives on this loop, so run the CLI in a thread.
    return await asyncio.to_thread(
        CliRunner().invoke, cli,
        ["--config", str(config_file(tmp_path)), "--state-dir", str(tmp_path / "state"), *args])


@pytest.fixture
async def daemon(tmp_path: Path, mock_factory: Any) -> Any:
    config = load_config(config_file(tmp_path), state_dir=tmp_path / "state")
    app = Application(config, pin_factory=mock_factory, handset_audio=SimHandsetAudio())
    await app.start()
    await app.wait_ready(TIMEOUT_S)
    try:
        yield app
    finally:
        await app.stop()


async def test_status_reads_live_state(daemon: Any, tmp_path: Path) -> None:
    result = await invoke(tmp_path, "status")
    assert result.exit_code == 0, result.output
    assert "line main" in result.output
    assert "idle" in result.output
    assert "relay    in line" in result.output
    result = await invoke(tmp_path, "status", "--json")
    data = json.loads(result.output)
    assert data["lines"][0]["link"] == "connected"
    assert data["lines"][0]["chipset"] == "conexant"
    assert data["handset"]["off_hook"] is False
    assert data["disk"]["recording_hours_left"] > 0


async def test_play_without_recording_is_a_clear_error(daemon: Any, tmp_path: Path) -> None:
    result = await invoke(tmp_path, "play", "427-193-53")
    assert result.exit_code == 1
    assert "no recording for 427-193-53" in result.output


async def test_garbage_on_the_control_socket_is_refused(daemon: Any, tmp_path: Path) -> None:
    path = socket_path(tmp_path / "state")
    reply = await asyncio.to_thread(request, path, {"cmd": "format-disk"})
    assert reply["ok"] is False
    assert "unknown command" in reply["error"]
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(b"\xff\xfe not json\n")
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), TIMEOUT_S)
    writer.close()
    assert json.loads(line)["ok"] is False
    # The daemon is still fine.
    result = await invoke(tmp_path, "status", "--json")
    assert json.loads(result.output)["ok"] is True


async def test_status_without_daemon_exits_3(tmp_path: Path) -> None:
    result = await invoke(tmp_path, "status")
    assert result.exit_code == 3
    assert "not running" in result.output


async def test_doctor_lists_checks_with_fixes(tmp_path: Path) -> None:
    result = await invoke(tmp_path, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(result.output)}
    assert checks["config"]["level"] == "pass"
    assert checks["modem main"]["level"] == "pass"
    assert checks["daemon"]["level"] == "warn"
    assert checks["daemon"]["fix"]
    assert result.exit_code == 0


async def test_doctor_fails_on_a_missing_modem(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[lines]]\nname = "main"\ndevice = "/dev/ttyACM9"\ncountry_code = "51"\n'
                    '[gpio]\npin_factory = "mock"\n', encoding="utf-8")
    result = await asyncio.to_thread(
        CliRunner().invoke, cli,
        ["--config", str(path), "--state-dir", str(tmp_path / "s"), "doctor"])
    assert result.exit_code == 1
    assert "FAIL  modem main" in result.output
    assert "fix:" in result.output


def test_demo_accepts_its_own_state_dir_option() -> None:
    result = CliRunner().invoke(cli, ["demo", "--help"])
    assert result.exit_code == 0
    assert "--state-dir" in result.output
    assert "two-lines" in result.output


def test_status_words_for_the_echo_cancellers() -> None:
    from appliance.cli.tech import echo_words

    assert echo_words({"line_echo_cancel": True, "line_erle_db": 31.4,
                       "handset_echo_cancel": True, "handset_erle_db": None}) == (
        "echo cancelled: line ERLE 31 dB, handset learning")
    assert echo_words({"line_echo_cancel": False, "line_erle_db": None,
                       "handset_echo_cancel": True, "handset_erle_db": 40.0}) == (
        "echo cancelled: line off, handset ERLE 40 dB")


def test_doctor_leaves_the_sound_card_to_a_running_daemon() -> None:
    from appliance.cli.tech import _check_audio

    # No such card here: only the daemon's own report can make these pass or fail.
    ok = _check_audio("alsa:plughw:CARD=Nowhere", status={"faults": []})
    assert ok.level == "pass"
    assert "in use by the daemon" in ok.detail
    bad = _check_audio("alsa:plughw:CARD=Nowhere",
                       status={"faults": ["handset audio: device unplugged"]})
    assert bad.level == "fail"
    assert "device unplugged" in bad.detail
    assert _check_audio("alsa:plughw:CARD=Nowhere").level == "fail"  # no daemon: opened here


async def test_doctor_fails_below_the_recording_floor(tmp_path: Path) -> None:
    """Issue 15 item 1: below recording.min_free_mb calls are answered but not recorded."""
    path = tmp_path / "floor.toml"
    path.write_text('[recording]\nmin_free_mb = 999999\n[gpio]\npin_factory = "mock"\n',
                    encoding="utf-8")
    result = await asyncio.to_thread(
        CliRunner().invoke, cli,
        ["--config", str(path), "--state-dir", str(tmp_path / "s"), "doctor", "--json"])
    assert result.exit_code == 1
    disk = {c["name"]: c for c in json.loads(result.stdout)}["disk"]
    assert disk["level"] == "fail"
    assert "NOT recorded" in disk["detail"]
