"""Life cycle under systemd: notify datagrams on a real AF_UNIX socket, watchdog vs loop lag.

The receiving end is a bound AF_UNIX datagram socket standing in for systemd's notify socket
(docs/audio.md §9). A reader thread timestamps each datagram on arrival, so the
"no WATCHDOG while the loop is blocked" assertion does not depend on the blocked loop itself.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.daemon.lifecycle import (
    LoopLagMonitor,
    dump_stacks,
    install_sigusr1_dump,
    ready,
    status,
    stopping,
    watchdog_interval_s,
)
from tests.conftest import TIMEOUT_S

#: A fresh daemon process (imports, prompts rendered by espeak-ng in a child process) on a
#: machine busy with other test workers: READY may take several seconds.
DAEMON_START_TIMEOUT_S = 30.0

HUNGARIAN = "kész — utolsó hívás 427-193-58, 14:32; hűtés ő ű"


@dataclass
class NotifySocket:
    """A bound datagram socket plus a thread recording ``(monotonic time, fields)``."""

    path: Path
    sock: socket.socket
    received: list[tuple[float, list[str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.arrived = threading.Condition(self.lock)

    def env(self, **extra: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path), **extra}

    def messages(self) -> list[tuple[float, list[str]]]:
        with self.lock:
            return list(self.received)

    def wait_for(
        self, predicate_count: int, needle: str, timeout_s: float = TIMEOUT_S
    ) -> list[tuple[float, list[str]]]:
        """Block (in a thread) until ``predicate_count`` datagrams contain ``needle``."""
        deadline = time.monotonic() + timeout_s
        with self.arrived:
            while True:
                hits = [m for m in self.received if needle in m[1]]
                if len(hits) >= predicate_count:
                    return hits
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"only {len(hits)} datagrams with {needle!r}")
                self.arrived.wait(left)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.05)
    ns = NotifySocket(path, sock)
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with ns.arrived:
                # Decoding strictly: anything but UTF-8 fails the test in the assertions.
                ns.received.append((time.monotonic(), data.decode("utf-8").split("\n")))
                ns.arrived.notify_all()

    thread = threading.Thread(target=reader, name="test-notify-reader", daemon=True)
    thread.start()
    try:
        yield ns
    finally:
        stop.set()
        thread.join(TIMEOUT_S)
        sock.close()


async def _wait(
    ns: NotifySocket, count: int, needle: str, timeout_s: float = TIMEOUT_S
) -> list[tuple[float, list[str]]]:
    return await asyncio.to_thread(ns.wait_for, count, needle, timeout_s)


# --- READY / STATUS / STOPPING ----------------------------------------------------------------


async def test_ready_and_status_arrive_in_utf8(notify_socket: NotifySocket) -> None:
    env = notify_socket.env()
    assert ready(HUNGARIAN, env=env)
    assert status("hívás folyamatban: 06 1 234 5678", env=env)
    assert stopping("leállás", env=env)
    msgs = [m[1] for m in await _wait(notify_socket, 1, "STOPPING=1")]
    all_msgs = [m[1] for m in notify_socket.messages()]
    assert all_msgs[0] == ["READY=1", f"STATUS={HUNGARIAN}"]
    assert all_msgs[1] == ["STATUS=hívás folyamatban: 06 1 234 5678"]
    assert msgs == [["STOPPING=1", "STATUS=leállás"]]


async def test_status_newline_cannot_inject_a_field(notify_socket: NotifySocket) -> None:
    assert status("név\nWATCHDOG=1", env=notify_socket.env())
    (_, fields), = await _wait(notify_socket, 1, "STATUS=név WATCHDOG=1")
    assert fields == ["STATUS=név WATCHDOG=1"]


def test_no_socket_means_false_and_no_error() -> None:
    assert status("x", env={}) is False
    assert ready(env={}) is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "garbage"}, None),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, None),  # not our PID
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval_s(env) == expected


def test_watchdog_pid_ours_is_accepted() -> None:
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval_s(env) == 2.0


# --- WATCHDOG ---------------------------------------------------------------------------------


async def test_watchdog_fed_at_half_the_period(notify_socket: NotifySocket) -> None:
    # WatchdogSec=0.4 s → pings every 0.2 s; ticks every 0.02 s.
    monitor = LoopLagMonitor(0.02, 0.15, env=notify_socket.env(WATCHDOG_USEC="400000"))
    assert monitor.ping_interval_s == pytest.approx(0.2)
    monitor.start()
    try:
        hits = await _wait(notify_socket, 4, "WATCHDOG=1")
    finally:
        await monitor.stop()
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(hits)]
    # Never faster than the ping interval (minus scheduling noise), never near the period.
    assert min(gaps) > 0.18
    assert max(gaps) < 0.4
    assert not monitor.running
    assert monitor.pings >= 4


async def test_no_watchdog_while_loop_blocked(notify_socket: NotifySocket) -> None:
    block_s = 0.5
    monitor = LoopLagMonitor(0.02, 0.1, warn_lag_s=0.05,
                             env=notify_socket.env(WATCHDOG_USEC="100000"))
    monitor.start()
    try:
        await _wait(notify_socket, 2, "WATCHDOG=1")
        loop = asyncio.get_running_loop()
        window: dict[str, float] = {}
        unblocked = asyncio.Event()

        def block() -> None:
            window["start"] = time.monotonic()
            time.sleep(block_s)  # on purpose: a stuck callback freezes the whole loop
            window["end"] = time.monotonic()
            unblocked.set()

        loop.call_soon(block)
        await asyncio.wait_for(unblocked.wait(), TIMEOUT_S)
        before = len(notify_socket.messages())
        # Feeding resumes once the loop is healthy again.
        await _wait(notify_socket, before + 1, "WATCHDOG=1")
    finally:
        await monitor.stop()

    times = [t for t, fields in notify_socket.messages() if "WATCHDOG=1" in fields]
    during = [t for t in times if window["start"] + 0.02 < t < window["end"]]
    assert during == []
    # The first tick after the stall measured the stall and withheld its ping.
    assert monitor.unhealthy_ticks >= 1
    assert monitor.max_seen_lag_s >= block_s * 0.8
    after = [t for t in times if t > window["end"]]
    last_before = max(t for t in times if t < window["start"] + 0.02)
    assert after[0] - last_before > block_s


async def test_persistently_slow_loop_starves_the_watchdog(notify_socket: NotifySocket) -> None:
    """A loop that keeps running but always late (every tick over the limit) sends nothing."""
    monitor = LoopLagMonitor(0.01, 0.05, env=notify_socket.env(WATCHDOG_USEC="40000"))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    slowed = asyncio.Event()
    rounds = 0

    def sluggish() -> None:
        nonlocal rounds
        rounds += 1
        time.sleep(0.08)  # on purpose: each callback hogs the loop beyond max_lag_s
        if rounds >= 8:
            slowed.set()
        if not stop.is_set():
            loop.call_soon(sluggish)

    loop.call_soon(sluggish)  # the loop is sluggish before the monitor's first tick
    monitor.start()
    await asyncio.wait_for(slowed.wait(), TIMEOUT_S)
    stop.set()
    await monitor.stop()
    pings = [f for _, f in notify_socket.messages() if "WATCHDOG=1" in f]
    # Only the unconditional start-up ping may have gone out.
    assert len(pings) <= 1
    assert monitor.unhealthy_ticks >= 3


async def test_without_watchdog_it_measures_but_sends_nothing(
    notify_socket: NotifySocket,
) -> None:
    monitor = LoopLagMonitor(0.01, 1.0, env=notify_socket.env())
    assert monitor.ping_interval_s is None
    monitor.start()
    monitor.start()  # idempotent
    try:
        for _ in range(200):
            if monitor.ticks >= 5:
                break
            await asyncio.sleep(0.01)
    finally:
        await monitor.stop()
    assert monitor.ticks >= 5
    assert monitor.pings == 0
    assert notify_socket.messages() == []


def test_rejects_nonsense_parameters() -> None:
    with pytest.raises(ValueError, match="positive"):
        LoopLagMonitor(0.0, 1.0)


# --- SIGUSR1 ----------------------------------------------------------------------------------


class _EventHandler(logging.Handler):
    def __init__(self, event: asyncio.Event) -> None:
        super().__init__(logging.WARNING)
        self.event = event
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.event.set()


async def test_sigusr1_logs_every_task_and_thread() -> None:
    logger = logging.getLogger("tests.lifecycle.dump")
    got = asyncio.Event()
    handler = _EventHandler(got)
    logger.addHandler(handler)
    parked = asyncio.Event()
    release = threading.Event()

    async def parked_call_flow() -> None:
        await parked.wait()

    task = asyncio.get_running_loop().create_task(parked_call_flow(), name="line-main-call")
    worker = threading.Thread(target=release.wait, name="sqlite-writer-test", daemon=True)
    worker.start()
    remove = install_sigusr1_dump(logger=logger)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.wait_for(got.wait(), TIMEOUT_S)
    finally:
        remove()
        logger.removeHandler(handler)
        parked.set()
        release.set()
        await task
        worker.join(TIMEOUT_S)
    text = handler.records[0].getMessage()
    assert "task 'line-main-call'" in text
    assert "parked_call_flow" in text
    assert "thread 'sqlite-writer-test'" in text
    assert "thread 'MainThread'" in text
    # After removal SIGUSR1 is no longer ours (default would kill; just check the handler).
    assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)


def test_dump_stacks_without_a_loop_lists_threads() -> None:
    text = dump_stacks()
    assert "=== 0 asyncio tasks ===" in text
    assert "thread 'MainThread'" in text


# --- the real daemon process under a notify socket --------------------------------------------


def _start_daemon(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    config = tmp_path / "config.toml"
    # espeak-ng renders the prompts: no Piper model needed; sim:// modem and handset (defaults).
    config.write_text('[speech]\nvoice = "espeak"\n', encoding="utf-8")
    full_env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock", **env}
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", "--config", str(config),
         "--state-dir", str(tmp_path / "state"), "run"],
        env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _terminate(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=TIMEOUT_S * 2)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise
    return proc.returncode, err


async def test_appliance_run_sends_ready_with_utf8_status(
    notify_socket: NotifySocket, tmp_path: Path
) -> None:
    proc = _start_daemon(tmp_path, notify_socket.env())
    try:
        (_, fields), = await _wait(notify_socket, 1, "READY=1", timeout_s=DAEMON_START_TIMEOUT_S)
    finally:
        code, err = _terminate(proc)
    status_fields = [f for f in fields if f.startswith("STATUS=")]
    # "ready — no calls yet": the em dash is outside latin-1, so this proves UTF-8 on the wire.
    assert status_fields, fields
    assert "—" in status_fields[0], status_fields
    assert code == 0, err


async def test_appliance_run_feeds_the_watchdog(
    notify_socket: NotifySocket, tmp_path: Path
) -> None:
    proc = _start_daemon(tmp_path, notify_socket.env(WATCHDOG_USEC="400000"))
    try:
        await _wait(notify_socket, 1, "READY=1", timeout_s=DAEMON_START_TIMEOUT_S)
        # WatchdogSec=0.4 s → a ping every 0.2 s; 2 s is ample.
        await _wait(notify_socket, 2, "WATCHDOG=1", timeout_s=2.0)
    finally:
        _terminate(proc)
