"""The real daemon as a separate process, for the system tests that kill it or fill its disk."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from appliance import DAEMON_ENVIRONMENT


def write_config(tmp_path: Path, device: str, notice: str, extra: str = "") -> Path:
    """A one-line configuration on ``device`` with a short ``notice``; ``extra`` is more TOML."""
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[call]
cid_wait_s = 0.0
agent_timeout_s = 60.0
{extra}
[[lines]]
name = "main"
device = "{device}"
country_code = "51"
[gpio]
pin_factory = "mock"
[speech]
voice = "espeak"
texts = {{ notice = "{notice}" }}
""",
        encoding="utf-8",
    )
    return config


def start_daemon(config: Path, state_dir: Path,
                 preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen[str]:
    """``python -m appliance run`` with its stderr kept for the test to show on failure."""
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", "--config", str(config), "--state-dir",
         str(state_dir), "run"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn,
        env={**os.environ, **DAEMON_ENVIRONMENT},  # as systemd/appliance.service runs it
    )
