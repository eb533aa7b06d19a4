"""``appliance demo --web``: after the demo call the page stays up on loopback with a demo
account whose password is printed, and the demo's call is on it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from appliance.bench.web import free_port, stop_process


def test_demo_keeps_the_page_up_with_a_demo_account(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "demo", "--scenario", "abandoned", "--state-dir",
         str(tmp_path / "state"), "--web", "--web-port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines: list[str] = []
        password = None
        assert proc.stdout is not None
        for line in proc.stdout:  # ends when the demo prints the page's details (or exits)
            lines.append(line)
            if line.strip().startswith("password"):
                password = line.split()[-1]
                break
        output = "".join(lines)
        assert password, output
        assert f"http://127.0.0.1:{port}/" in output
        reference = re.search(r"reference\s+(\d{3}-\d{3}-\d{2})", output).group(1)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            page = client.get("/login").text
            token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
            reply = client.post("/login", data={"csrf": token, "account": "demo",
                                                "password": password, "next": "/"})
            assert reply.status_code == 303, reply.text
            assert reference in client.get("/calls").text
    finally:
        stop_process(proc)
