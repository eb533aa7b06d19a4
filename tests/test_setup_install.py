"""`./setup.sh install --root DIR` / `uninstall`: staged files, modes, plan, idempotence, voice pin.

The staged install is the real script with every system step (apt, useradd, chown, pip,
network, systemctl) recorded in DIR/.install-plan instead of run; the files it writes are the
files a Pi gets. The voice download is exercised through a ``file://`` mirror (no network).
The unit file is checked with the real ``systemd-analyze verify`` against the staged tree.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from appliance.config import load_config

REPO = Path(__file__).resolve().parent.parent
SETUP = REPO / "setup.sh"
SCRIPT_TIMEOUT_S = 60.0
#: The pinned Hungarian Piper voices (the default voice is one of them).
HU_VOICES = "appliance/languages/hu/voices.toml"

#: What a Pi must end up with: path → octal mode (docs/install.md, "Files and where they live").
EXPECTED_MODES: dict[str, int] = {
    "etc/appliance": 0o750,
    "etc/appliance/config.toml": 0o640,
    "etc/appliance/config.toml.example": 0o644,
    "etc/systemd/system/appliance.service": 0o644,
    "etc/udev/rules.d/99-appliance-modem.rules": 0o644,
    "etc/udev/rules.d/99-appliance-gpio.rules": 0o644,
    "etc/asound.conf": 0o644,
    "var/lib/appliance": 0o770,
    "opt/appliance": 0o755,
    "opt/appliance/doc/install.md": 0o644,
    "opt/appliance/doc/hw/README.md": 0o644,
    "usr/share/appliance/voices": 0o755,
    "usr/local/bin/appliancectl": 0o755,
}

#: Owners the plan must set (the staged tree cannot: the user does not exist there).
EXPECTED_OWNERS: dict[str, str] = {
    "/etc/appliance": "root:appliance",
    "/etc/appliance/config.toml": "root:appliance",
    "/var/lib/appliance": "appliance:appliance",
    "/etc/systemd/system/appliance.service": "root:root",
    "/etc/udev/rules.d/99-appliance-modem.rules": "root:root",
    "/usr/local/bin/appliancectl": "root:root",
}


def run_setup(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run setup.sh from the repository (as the technician would) and capture its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        ["bash", str(SETUP), *args], cwd=REPO, env=full_env, capture_output=True, text=True,
        timeout=SCRIPT_TIMEOUT_S, check=False,
    )


def install(root: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = run_setup("install", "--root", str(root), env=env)
    assert result.returncode == 0, result.stderr
    return result


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under root → (mode, mtime_ns, sha256 of content or '' for dirs)."""
    out: dict[str, tuple[int, int, str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        out[str(path.relative_to(root))] = (st.st_mode & 0o7777, st.st_mtime_ns, digest)
    return out


def plan(root: Path) -> list[str]:
    return (root / ".install-plan").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pi-root")
    install(root)
    return root


# --- files and modes --------------------------------------------------------------------------


@pytest.mark.parametrize(("rel", "mode"), sorted(EXPECTED_MODES.items()))
def test_staged_file_has_mode(staged: Path, rel: str, mode: int) -> None:
    path = staged / rel
    assert path.exists(), rel
    assert path.stat().st_mode & 0o7777 == mode, f"{rel}: {oct(path.stat().st_mode & 0o7777)}"


def test_staged_files_are_the_repository_files(staged: Path) -> None:
    pairs = {
        "etc/systemd/system/appliance.service": "systemd/appliance.service",
        "etc/udev/rules.d/99-appliance-modem.rules": "hw/99-appliance-modem.rules",
        "etc/asound.conf": "hw/asound.conf",
        "etc/appliance/config.toml": "hw/config.toml",
    }
    for dest, src in pairs.items():
        assert (staged / dest).read_bytes() == (REPO / src).read_bytes(), dest
    # Every unit in systemd/ (the purge timer too) is installed.
    for unit in [*(REPO / "systemd").glob("*.service"), *(REPO / "systemd").glob("*.timer")]:
        assert (staged / "etc/systemd/system" / unit.name).is_file(), unit.name


@pytest.mark.parametrize(("path", "owner"), sorted(EXPECTED_OWNERS.items()))
def test_plan_sets_owner(staged: Path, path: str, owner: str) -> None:
    assert f"chown {owner} {path}" in plan(staged)


def test_plan_has_the_system_steps(staged: Path) -> None:
    text = "\n".join(plan(staged))
    assert "apt-get install" in text
    for pkg in ("libportaudio2", "libspeexdsp1", "espeak-ng", "alsa-utils", "python3-venv"):
        assert pkg in text
    assert "groupadd --system gpio" in text
    assert re.search(r"useradd --system .*appliance$", text, re.MULTILINE)
    assert "usermod --append --groups dialout,audio,gpio appliance" in text
    assert "python3 -m venv /opt/appliance/venv" in text
    assert "[pi,archive]'" in text
    assert "systemctl enable appliance.service" in text
    assert "sounds build" in text
    assert "doctor" in text
    # The pinned v1.0.0 URL and its SHA-256, never `main`.
    assert ("https://huggingface.co/rhasspy/piper-voices/resolve/v1.0.0/hu/hu_HU/anna/medium/"
            "hu_HU-anna-medium.onnx") in text
    assert "968c0c3a66cb667811242cc88653bff9247395fc7a0517fbeef7d8c08cdae62a" in text
    assert "/resolve/main/" not in text


def test_ctl_wrapper_runs_as_service_user(staged: Path) -> None:
    text = (staged / "usr/local/bin/appliancectl").read_text(encoding="utf-8")
    assert "runuser -u appliance -- /opt/appliance/venv/bin/appliance" in text
    assert "--config /etc/appliance/config.toml" in text


# --- idempotence and the config -----------------------------------------------------------------


def test_second_run_changes_nothing(tmp_path: Path) -> None:
    install(tmp_path)
    before = snapshot(tmp_path)
    second = install(tmp_path)
    assert snapshot(tmp_path) == before
    assert "installed " not in second.stderr


def test_edited_config_is_never_overwritten(tmp_path: Path) -> None:
    install(tmp_path)
    config = tmp_path / "etc/appliance/config.toml"
    edited = config.read_text(encoding="utf-8").replace("Példa Bolt", "Kovács Virág Kft.")
    config.write_text(edited, encoding="utf-8")
    config.chmod(0o600)  # a technician's slip: the daemon could no longer read it
    result = install(tmp_path)
    assert config.read_text(encoding="utf-8") == edited
    assert config.stat().st_mode & 0o777 == 0o640
    assert "keeping /etc/appliance/config.toml" in result.stderr
    # The template is refreshed beside it for diffing.
    example = tmp_path / "etc/appliance/config.toml.example"
    assert example.read_bytes() == (REPO / "hw/config.toml").read_bytes()


def test_foreign_asound_conf_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    foreign = "pcm.!default { type hw card 1 }\n"
    (tmp_path / "etc/asound.conf").write_text(foreign, encoding="utf-8")
    result = install(tmp_path)
    assert (tmp_path / "etc/asound.conf").read_text(encoding="utf-8") == foreign
    assert "not ours" in result.stderr


# As root the script would really install: ./setup.sh test runs this as an unprivileged user
# on a copy of the checkout that user can read (a clone in /root is not).
@pytest.mark.unprivileged
def test_real_install_needs_root_or_root_dir() -> None:
    result = subprocess.run(["bash", str(SETUP), "install"], cwd=REPO, capture_output=True,
                            text=True, timeout=SCRIPT_TIMEOUT_S, check=False)
    assert result.returncode != 0
    assert "sudo ./setup.sh install" in result.stderr


def test_unknown_option_is_refused(tmp_path: Path) -> None:
    result = run_setup("install", "--root", str(tmp_path), "--frobnicate")
    assert result.returncode != 0
    assert "unknown option" in result.stderr


# --- the template config and the hardware files -------------------------------------------------


def test_config_template_loads_and_points_at_real_hardware(tmp_path: Path) -> None:
    config = load_config(REPO / "hw/config.toml", state_dir=tmp_path)
    assert config.lines[0].device == "/dev/appliance-modem"
    assert config.lines[0].country_code == "51"
    assert config.handset.audio == "alsa:appliance_handset"
    assert config.gpio.pin_factory == ""
    # The template repeats the packaged pin defaults: hw/README.md documents one pin map.
    defaults = tomllib.loads((REPO / "appliance/defaults.toml").read_text(encoding="utf-8"))
    for section in ("handset", "panel"):
        for key, value in defaults[section].items():
            if key.endswith("_pin"):
                assert getattr(getattr(config, section), key) == value, f"{section}.{key}"


def test_readme_pin_map_matches_defaults() -> None:
    defaults = tomllib.loads((REPO / "appliance/defaults.toml").read_text(encoding="utf-8"))
    readme = (REPO / "hw/README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| [^|]+ \| `(\w+)\.(\w+_pin)` \| (\d+) \| (\d+) \|", readme, re.MULTILINE)
    documented = {f"{s}.{k}": int(bcm) for s, k, bcm, _ in rows}
    expected = {f"{s}.{k}": v for s in ("handset", "panel")
                for k, v in defaults[s].items() if k.endswith("_pin")}
    assert documented == expected
    # BCM → physical header pin of the 40-pin header (Raspberry Pi pinout).
    header = {5: 29, 6: 31, 12: 32, 13: 33, 19: 35, 23: 16, 24: 18, 25: 22, 26: 37}
    for _, _, bcm, phys in rows:
        assert header[int(bcm)] == int(phys)


#: USB IDs of known voice modems, as hw/99-appliance-modem.rules lists them.
KNOWN_MODEMS = [("0803", "3095"), ("0572", "1321"), ("0572", "1324"), ("0572", "1328"),
                ("0572", "1329"), ("0572", "1340"), ("0572", "1349"), ("0baf", "0303")]


def test_udev_rule_covers_known_modems_and_ignores_modemmanager() -> None:
    rules = [line for line in (REPO / "hw/99-appliance-modem.rules").read_text(
        encoding="utf-8").splitlines() if line.startswith("ATTRS")]
    found = {tuple(re.findall(r'ATTRS\{id(?:Vendor|Product)\}=="([0-9a-f]{4})"', r))
             for r in rules}
    assert found == set(KNOWN_MODEMS)
    for rule in rules:
        assert 'ENV{ID_MM_DEVICE_IGNORE}="1"' in rule
        assert 'SYMLINK+="appliance-modem"' in rule
        assert 'GROUP="dialout"' in rule
        # udev syntax: KEY{attr}=="v" or KEY="v" / KEY+="v", comma separated.
        for part in rule.split(", "):
            assert re.fullmatch(r'[A-Z_]+(\{[A-Za-z_]+\})?(==|!=|=|\+=)"[^"]*"', part), part


def test_asound_conf_parses_and_defines_the_handset_pcm(tmp_path: Path) -> None:
    if shutil.which("aplay") is None or not Path("/usr/share/alsa/alsa.conf").exists():
        # ./setup.sh test installs alsa-utils; a bare pytest elsewhere may lack it.
        pytest.skip("alsa-utils not installed: cannot ask ALSA to parse hw/asound.conf")
    env = {**os.environ,
           "ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{REPO / 'hw/asound.conf'}"}
    result = subprocess.run(["aplay", "-L"], env=env, capture_output=True, text=True,
                            timeout=SCRIPT_TIMEOUT_S, check=False)
    assert "appliance_handset" in result.stdout.splitlines()
    assert "ALSA lib" not in result.stderr  # a syntax error is reported this way


def test_voices_pin_files() -> None:
    pinned = {}
    for path in sorted(REPO.glob("appliance/languages/*/voices.toml")):
        pins = tomllib.loads(path.read_text(encoding="utf-8"))
        assert pins["base_url"].endswith("/resolve/v1.0.0/")
        for name, voice in pins["voices"].items():
            assert re.fullmatch(r"[0-9a-f]{64}", voice["onnx_sha256"]), name
            assert voice["path"].endswith(name)
            assert name not in pinned, f"{name} pinned twice"
            pinned[name] = voice
    defaults = tomllib.loads((REPO / "appliance/defaults.toml").read_text(encoding="utf-8"))
    assert defaults["speech"]["voice"] in pinned, "the default voice is pinned"


# --- the voice download (file:// mirror, no network) ------------------------------------------


def _mirror(tmp_path: Path, onnx: bytes) -> tuple[str, Path]:
    pins = tomllib.loads((REPO / HU_VOICES).read_text(encoding="utf-8"))
    rel = pins["voices"]["hu_HU-anna-medium"]["path"]
    base = tmp_path / "mirror"
    (base / rel).parent.mkdir(parents=True)
    (base / f"{rel}.onnx").write_bytes(onnx)
    (base / f"{rel}.onnx.json").write_text('{"audio": {"sample_rate": 22050}}', encoding="utf-8")
    return f"file://{base}/", base


def test_voice_hash_mismatch_is_refused_and_removed(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    url, _ = _mirror(tmp_path, b"not the anna model")
    root = tmp_path / "root"
    result = run_setup("install", "--root", str(root), env={"APPLIANCE_VOICE_MIRROR": url})
    assert result.returncode != 0
    assert "SHA-256 mismatch" in result.stderr
    assert "968c0c3a66cb667811242cc88653bff9247395fc7a0517fbeef7d8c08cdae62a" in result.stderr
    leftovers = list((root / "usr/share/appliance/voices").iterdir())
    assert leftovers == []


def test_voice_with_matching_hash_is_installed(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    model = b"a stand-in model for the pin check"
    url, _ = _mirror(tmp_path, model)
    pins = (REPO / HU_VOICES).read_text(encoding="utf-8").replace(
        "968c0c3a66cb667811242cc88653bff9247395fc7a0517fbeef7d8c08cdae62a",
        hashlib.sha256(model).hexdigest())
    (tmp_path / "voices.toml").write_text(pins, encoding="utf-8")
    env = {"APPLIANCE_VOICE_MIRROR": url, "APPLIANCE_VOICES_TOML": str(tmp_path / "voices.toml")}
    root = tmp_path / "root"
    install(root, env=env)
    voices = root / "usr/share/appliance/voices"
    assert (voices / "hu_HU-anna-medium.onnx").read_bytes() == model
    assert (voices / "hu_HU-anna-medium.onnx").stat().st_mode & 0o777 == 0o644
    assert (voices / "hu_HU-anna-medium.onnx.json").is_file()
    assert not list(voices.glob("*.part"))
    # Present and matching: the second run downloads nothing.
    before = snapshot(root)
    install(root, env=env)
    assert snapshot(root) == before


# --- uninstall ------------------------------------------------------------------------------


def test_uninstall_keeps_recordings_unless_purged(tmp_path: Path) -> None:
    install(tmp_path)
    recording = tmp_path / "var/lib/appliance/recordings/2025/call.flac"
    recording.parent.mkdir(parents=True)
    recording.write_bytes(b"fLaC")
    result = run_setup("uninstall", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert recording.read_bytes() == b"fLaC"
    assert (tmp_path / "etc/appliance/config.toml").is_file()
    for gone in ("etc/systemd/system/appliance.service",
                 "etc/udev/rules.d/99-appliance-modem.rules", "etc/asound.conf", "opt/appliance",
                 "usr/local/bin/appliancectl", "usr/share/appliance"):
        assert not (tmp_path / gone).exists(), gone
    assert "systemctl disable --now appliance.service 2>/dev/null || true" in plan(tmp_path)
    assert not any("userdel" in line for line in plan(tmp_path))
    # Idempotent: uninstalling again is fine.
    assert run_setup("uninstall", "--root", str(tmp_path)).returncode == 0

    result = run_setup("uninstall", "--purge-data", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "var/lib/appliance").exists()
    assert not (tmp_path / "etc/appliance").exists()
    assert any("userdel appliance" in line for line in plan(tmp_path))


# --- the unit file ----------------------------------------------------------------------------


@pytest.mark.parametrize("unit_name", ["appliance.service", "appliance-web.service"])
def test_unit_verifies_with_systemd_analyze(staged: Path, tmp_path: Path, unit_name: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd) — unit not verified")
    system_units = Path("/usr/lib/systemd/system")
    if not (system_units / "sysinit.target").exists():
        pytest.skip("no systemd unit tree at /usr/lib/systemd/system to verify against")
    # A copy of the staged tree plus the host's system units (verify --root resolves
    # dependencies such as sysinit.target inside the root) and a stand-in for the venv's
    # entry point (verify checks that ExecStart is executable).
    root = tmp_path / "root"
    shutil.copytree(staged, root, symlinks=True)
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    exe = root / "opt/appliance/venv/bin/appliance"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n", encoding="utf-8")
    exe.chmod(0o755)
    unit = root / "etc/systemd/system" / unit_name
    result = subprocess.run([analyze, "verify", f"--root={root}", str(unit)],
                            capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S, check=False)
    # Clean means no complaint at all: unknown keys are only warnings, exit code 0.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_unit_has_the_required_settings() -> None:
    text = (REPO / "systemd/appliance.service").read_text(encoding="utf-8")
    settings = [line.strip() for line in text.splitlines() if "=" in line and not
                line.lstrip().startswith("#")]
    for needed in ("Type=notify", "WatchdogSec=30", "Restart=always", "User=appliance",
                   "StateDirectory=appliance", "RuntimeDirectory=appliance",
                   "ConfigurationDirectory=appliance", "NoNewPrivileges=yes",
                   "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                   "RestrictAddressFamilies=AF_UNIX", "DevicePolicy=closed",
                   "DeviceAllow=char-ttyACM rw", "DeviceAllow=char-ttyUSB rw",
                   "DeviceAllow=char-alsa rw", "DeviceAllow=char-gpiochip rw",
                   "ExecStart=/opt/appliance/venv/bin/appliance --config "
                   "/etc/appliance/config.toml run"):
        assert needed in settings, needed
    assert "PrivateDevices=yes" not in settings  # would hide the modem, sound card and GPIO


def test_the_web_unit_runs_as_its_own_user_hardened() -> None:
    text = (REPO / "systemd/appliance-web.service").read_text(encoding="utf-8")
    settings = {line.strip() for line in text.splitlines()
                if "=" in line and not line.lstrip().startswith("#")}
    for needed in ("User=appliance-web", "Group=appliance", "SupplementaryGroups=systemd-journal",
                   "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                   "PrivateTmp=yes", "PrivateDevices=yes",
                   "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
                   "StateDirectoryMode=0770",
                   "ExecStart=/opt/appliance/venv/bin/appliance --config "
                   "/etc/appliance/config.toml web"):
        assert needed in settings, needed


def test_install_makes_the_web_user_certificate_and_mdns(staged: Path) -> None:
    text = "\n".join(plan(staged))
    assert re.search(r"useradd --system .*appliance-web$", text, re.MULTILINE)
    assert "useradd --system --gid appliance" in text
    assert "usermod --gid appliance --append --groups systemd-journal appliance-web" in text
    assert "runuser -u appliance-web -- /opt/appliance/venv/bin/appliance --config " \
           "/etc/appliance/config.toml web cert" in text
    assert "systemctl enable appliance-web.service" in text
    assert "avahi-daemon" in text
    assert "chown appliance-web:appliance /var/lib/appliance/web" in text
    wrapper = (staged / "usr/local/bin/appliance-webctl").read_text(encoding="utf-8")
    assert "runuser -u appliance-web -- /opt/appliance/venv/bin/appliance" in wrapper
