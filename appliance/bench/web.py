"""The owner's page with a million calls: server time of the calls page and searches, the
time until a recording starts to flow, and the page process's memory.

Runs the real ``appliance web`` as a child process (plain HTTP on loopback) against the index
:mod:`appliance.bench.index` filled, logs in like a browser (login page, CSRF token, cookie),
and times each request over one keep-alive connection. "Server time" is the page's own
``Server-Timing: app;dur=…`` (request in → response head out); the wall time on loopback is
reported beside it. Playback start is the wall time from the audio request (``Range: bytes=0-``
as a browser's ``<audio>`` sends it) to the first body byte.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import numpy as np

from appliance.audio.pcm import SAMPLE_RATE_HZ
from appliance.bench.benchconfig import FSYNC_INTERVAL_S
from appliance.bench.index import synthetic_reference
from appliance.bench.probes import percentile_ms
from appliance.store.recorder import Recorder

#: Requests timed per kind.
REPEATS: Final = 30
#: Length of the recording whose playback start is timed.
RECORDING_S: Final = 60.0
SERVER_START_S: Final = 30.0
BENCH_ACCOUNT: Final = "bench"
BENCH_PASSWORD: Final = "bench-password-1"
_CSRF: Final = re.compile(r'name="csrf" value="([^"]+)"')
_TIMING: Final = re.compile(r"app;dur=([0-9.]+)")


def free_port() -> int:
    """A TCP port on loopback nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_process(args: list[str], port: int, *, env: dict[str, str] | None = None,
                  timeout_s: float = SERVER_START_S) -> subprocess.Popen[bytes]:
    """Start ``python -m appliance ARGS`` and return once it listens on ``port`` (loopback);
    its output goes to an unnamed temporary file (shown if it fails to start).

    Raises:
        RuntimeError: it exited or did not listen within ``timeout_s`` (its output attached).
    """
    # Output to a file, not a pipe nobody reads (a full pipe would stall the server); the
    # child keeps its own descriptor of it.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", "appliance", *args], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port),
                                                                        0.2):
                return proc
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_process(proc)
                log.seek(0)
                out = log.read().decode(errors="replace")
                raise RuntimeError(f"appliance {' '.join(args)} did not listen on {port}: {out}")
            time.sleep(0.05)  # polling a TCP port: no event to await across processes


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """SIGINT (a clean stop), then SIGKILL if it does not end within ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class _Client:
    """One keep-alive HTTP connection with a cookie jar of one session."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[http.client.HTTPResponse, float]:
        """Send; return the response (unread) and the seconds to its head."""
        hdrs = {"Accept": "text/html", **(headers or {})}
        if self.cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if body is not None:
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        t0 = time.perf_counter()
        self.conn.request(method, path, body=body, headers=hdrs)
        response = self.conn.getresponse()
        head_s = time.perf_counter() - t0
        for value in response.headers.get_all("set-cookie") or []:
            name, _, rest = value.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        return response, head_s

    def get(self, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, bytes, float, float]:
        """GET; ``(status, body, server ms, wall s)``."""
        t0 = time.perf_counter()
        response, _ = self.request("GET", path, headers=headers)
        body = response.read()
        wall = time.perf_counter() - t0
        match = _TIMING.search(response.headers.get("server-timing", ""))
        return response.status, body, float(match.group(1)) if match else float("nan"), wall


def _add_recording(state_dir: Path, reference: str) -> None:
    """A real FLAC recording of :data:`RECORDING_S` for the newest synthetic call."""
    recordings = state_dir / "recordings"
    recorder = Recorder(recordings, reference, now=dt.datetime.now(dt.UTC),
                        fsync_interval_s=FSYNC_INTERVAL_S)
    rng = np.random.default_rng(7)
    frames = int(RECORDING_S * SAMPLE_RATE_HZ)
    recorder.write(rng.integers(-3000, 3000, size=(frames, 2), dtype=np.int16))
    import asyncio

    result = asyncio.run(recorder.finalize("flac"))
    with sqlite3.connect(state_dir / "appliance.db") as conn:
        conn.execute("UPDATE calls SET recording_path = ?, recording_sha256 = ?, "
                     "recording_bytes = ? WHERE reference = ?",
                     (str(result.path), result.sha256, result.bytes, reference))


def measure_web(state_dir: Path, n: int, *, progress: Any) -> dict[str, Any]:
    """Time the page against the filled index in ``state_dir`` (``n`` synthetic calls)."""
    from appliance.web.accounts import Accounts

    newest = synthetic_reference(n - 1)
    progress("web: a 60 s recording for the newest call, an account")
    _add_recording(state_dir, newest)
    accounts = Accounts.in_dir(state_dir / "web")
    if accounts.get(BENCH_ACCOUNT) is None:
        accounts.add(BENCH_ACCOUNT, "owner", BENCH_PASSWORD)
    port = free_port()
    proc = start_process(["--config", "/dev/null", "--state-dir", str(state_dir), "web",
                          "--listen", "127.0.0.1", "--port", str(port), "--http"], port)
    try:
        idle_rss_kb = _rss_kb(proc.pid, "VmRSS")
        client = _Client(port)
        _, page, _, _ = client.get("/login")
        token = _CSRF.search(page.decode()).group(1)  # type: ignore[union-attr]
        response, _ = client.request("POST", "/login", body=urlencode(
            {"csrf": token, "account": BENCH_ACCOUNT, "password": BENCH_PASSWORD, "next": "/"}))
        response.read()
        if response.status != 303:
            raise RuntimeError(f"bench login failed: HTTP {response.status}")
        progress("web: calls page, searches and playback start")
        number = f"+3630{(n // 2) % 10_000_000:07d}"
        middle = synthetic_reference(n // 2)
        kinds = {
            "calls_page": "/calls",
            "calls_page_100": "/calls?page=100",
            "search_number": "/calls?" + urlencode({"q": number}),
            "search_reference": "/calls?" + urlencode({"q": middle}),
            "search_typo": "/calls?" + urlencode({"q": middle[:-1] + str(
                (int(middle[-1]) + 1) % 10)}),
            # No synthetic call has this outcome: the whole index must be searched.
            "search_rare_outcome": "/calls?outcome=error",
            "search_outcome_dates": "/calls?" + urlencode({
                "outcome": "bridged", "from": "2025-06-01", "to": "2025-06-07"}),
            "call_page": f"/calls/{newest}",
        }
        out: dict[str, Any] = {}
        for name, path in kinds.items():
            server, wall = [], []
            for _ in range(REPEATS):
                status, _body, ms, w = client.get(path)
                if status not in (200, 303):
                    raise RuntimeError(f"{path}: HTTP {status}")
                server.append(ms / 1000)
                wall.append(w)
            out[f"web_{name}_server_ms_p50"] = percentile_ms(server, 50)
            out[f"web_{name}_server_ms_p95"] = percentile_ms(server, 95)
            out[f"web_{name}_wall_ms_p50"] = percentile_ms(wall, 50)
        starts = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            response, _ = client.request("GET", f"/calls/{newest}/audio",
                                         headers={"Range": "bytes=0-", "Accept": "*/*"})
            response.read(1)
            starts.append(time.perf_counter() - t0)
            response.read()
        out["web_playback_first_byte_ms_p50"] = percentile_ms(starts, 50)
        out["web_playback_first_byte_ms_p95"] = percentile_ms(starts, 95)
        out["web_rss_idle_mb"] = round(idle_rss_kb / 1024, 1)
        out["web_rss_after_mb"] = round(_rss_kb(proc.pid, "VmRSS") / 1024, 1)
        out["web_rss_peak_mb"] = round(_rss_kb(proc.pid, "VmHWM") / 1024, 1)
        return out
    finally:
        stop_process(proc)
