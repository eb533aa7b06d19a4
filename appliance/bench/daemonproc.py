"""The daemon in a child process: CPU per call-minute, RSS, and the fault soak.

The benchmark process serves the emulated modems on ptys behind stable symlinks (so a modem
can be "unplugged" and a new one plugged in under the same name, as udev's by-id link does)
and plays the callers; the child (:mod:`appliance.bench.worker`) is the daemon. CPU time and
memory are read from ``/proc/<pid>`` (no psutil).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from appliance import DAEMON_ENVIRONMENT
from appliance.bench.probes import (
    BenchModem,
    TestSignal,
    percentile_ms,
    proc_cpu_s,
    proc_memory_mb,
)
from appliance.sim.modem.pty import PtyModemServer

_LOGGER = logging.getLogger(__name__)

#: How long the child may take to print READY (prompt rendering with espeak-ng included).
READY_TIMEOUT_S: Final = 90.0
#: Off-hook → the shop is on the line: the bench's one-sentence notice and the reference
#: (was ≈17 s with the reference read twice; an upper bound, not a figure).
NOTICE_ALLOWANCE_S: Final = 20.0
#: Upper bound for the line to come back on-hook after the caller hangs up.
HANGUP_TIMEOUT_S: Final = 30.0
#: Idle time after READY before the idle RSS is read.
IDLE_SETTLE_S: Final = 1.0

Progress = Callable[[str], None]


class DaemonProcess:
    """One ``appliance.bench.worker`` child."""

    def __init__(self, state_dir: Path, devices: list[str], codec: str = "flac", *,
                 echo_cancel: bool = True, soak: bool = False) -> None:
        self.state_dir = state_dir
        self.devices = devices
        self.codec = codec
        self.echo_cancel = echo_cancel
        self.soak = soak
        self.proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        """Start the child and wait for READY. Raises TimeoutError / RuntimeError."""
        # The child's log (warnings and up) is appended beside its state dir for post-mortems.
        log = self.state_dir.parent / "worker.log"
        with open(log, "a", encoding="utf-8") as err:  # noqa: ASYNC230 (set-up, not measured)
            self.proc = subprocess.Popen(  # noqa: ASYNC220 (stdout read in a thread below)
                [sys.executable, "-m", "appliance.bench.worker", str(self.state_dir),
                 "--codec", self.codec, *([] if self.echo_cancel else ["--no-echo-cancel"]),
                 *(["--soak"] if self.soak else []), *self.devices],
                stdout=subprocess.PIPE, stderr=err, text=True,
                # The environment systemd/appliance.service gives the daemon (its RSS).
                env={**os.environ, **DAEMON_ENVIRONMENT},
            )
        proc = self.proc
        assert proc.stdout is not None
        async with asyncio.timeout(READY_TIMEOUT_S):
            # In a thread: the emulated modems live on this loop and must keep answering.
            line = await asyncio.to_thread(proc.stdout.readline)
        if line.strip() != "READY":
            raise RuntimeError(f"bench worker did not start (exit {proc.poll()}; see {log})")

    def kill9(self) -> None:
        """SIGKILL: a power cut / OOM kill for the daemon."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> int | None:
        """SIGTERM and wait (the daemon finalizes a call in progress)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(proc.wait, HANGUP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            return await asyncio.to_thread(proc.wait)


class ModemSlot:
    """An emulated modem behind a symlink that survives unplug/replug."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.server: PtyModemServer | None = None

    @property
    def modem(self) -> BenchModem:
        assert self.server is not None
        sim = self.server.sim
        assert isinstance(sim, BenchModem)
        return sim

    async def plug(self) -> None:
        """Serve a fresh emulated modem and point the link at it."""
        self.server = PtyModemServer(BenchModem("conexant"))
        path = await self.server.start()
        tmp = self.link.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(path)
        os.replace(tmp, self.link)

    def unplug(self) -> None:
        """The USB modem vanishes (the host's next read fails)."""
        if self.server is not None:
            self.server.unplug()
            self.server = None
        self.link.unlink(missing_ok=True)

    async def close(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None
        self.link.unlink(missing_ok=True)


async def _one_call(slot: ModemSlot, talk_s: float, seed: int) -> tuple[float, float]:
    """Ring, wait off-hook, talk ``talk_s``, hang up, wait on-hook; return off-hook seconds
    and the seconds from the caller's hang-up to the line on-hook again.

    The emulator reports the hang-up as its profile does (docs/line.md): ``<DLE>b`` only after
    recognising the busy cadence, or never; the daemon also hears the busy tone itself."""
    modem = slot.modem
    modem.set_caller_audio(TestSignal(seed, asyncio.get_running_loop().time).read)
    modem.ring("+36301234567", "BENCH ELEK", cid_before_first_ring=True)
    await modem.wait_off_hook(HANGUP_TIMEOUT_S)
    t0 = time.monotonic()
    await asyncio.sleep(talk_s)
    hung_up = time.monotonic()
    modem.remote_hangup()
    await modem.wait_on_hook(HANGUP_TIMEOUT_S)
    done = time.monotonic()
    return done - t0, done - hung_up


async def measure_daemon(state_dir: Path, calls: int, call_s: float, *,
                         progress: Progress) -> dict[str, Any]:
    """CPU seconds per call-minute and RSS of the daemon process over ``calls`` calls."""
    state_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (set-up, not measured)
    slot = ModemSlot(state_dir / "modem0")
    await slot.plug()
    daemon = DaemonProcess(state_dir / "state", [str(slot.link)])
    try:
        progress("daemon process: starting")
        await daemon.start()
        await asyncio.sleep(IDLE_SETTLE_S)
        idle = proc_memory_mb(daemon.pid)
        cpu0 = proc_cpu_s(daemon.pid)
        call_wall = 0.0
        hangups: list[float] = []
        for n in range(calls):
            progress(f"daemon process: call {n + 1}/{calls}")
            wall, hangup = await _one_call(slot, NOTICE_ALLOWANCE_S + call_s, 500 + n)
            call_wall += wall
            hangups.append(hangup)
        cpu = proc_cpu_s(daemon.pid) - cpu0
        peak = proc_memory_mb(daemon.pid)
        # One more call on a modem that never reports the hang-up: only the busy tone tells.
        progress("daemon process: a call on a modem that reports no busy")
        modem = slot.modem
        reporting = modem.profile
        modem.profile = dataclasses.replace(reporting, hangup_report="none")
        _, silent = await _one_call(slot, NOTICE_ALLOWANCE_S + 2.0, 600)
        modem.profile = reporting
    finally:
        await daemon.stop()
        await slot.close()
    minutes = call_wall / 60
    return {
        "daemon_cpu_s": round(cpu, 3),
        "daemon_call_minutes": round(minutes, 3),
        "cpu_s_per_call_minute": round(cpu / minutes, 4) if minutes else None,
        "cpu_percent_of_one_core_in_call": round(100 * cpu / call_wall, 2) if call_wall else None,
        "daemon_rss_idle_mb": idle.get("VmRSS"),
        "daemon_rss_peak_mb": peak.get("VmHWM"),
        "hangup_busy_detect_ms": round(reporting.busy_detect_s * 1000),
        "hangup_to_on_hook_ms_p50": percentile_ms(hangups, 50),
        "hangup_to_on_hook_ms_max": round(max(hangups) * 1000, 1) if hangups else None,
        "hangup_to_on_hook_silent_modem_ms": round(silent * 1000, 1),
    }


# --- the fault soak ---------------------------------------------------------------------------

#: One fault per call, drawn at random (docs/performance.md, "Fault soak").
FAULTS: Final = ("none", "kill9", "unplug", "garbage", "refuse-hangup", "silent-idle",
                 "disk-full", "index-deleted")
#: The caller-ID name of every fourth call: a terminal title and clear-screen sequence.
HOSTILE_NAME: Final = "\x1b]0;PWNED\x07\x1b[2J"
#: The soak's state dir is a tmpfs this big, so "disk full" is a real ENOSPC.
SOAK_TMPFS: Final = "512m"
#: Free bytes left on the tmpfs while the disk is "full" (less than one second of WAV).
DISK_FULL_LEFT_BYTES: Final = 4096
#: How long the daemon may take to show an injected fault, and to clear it.
FAULT_SEEN_TIMEOUT_S: Final = 40.0
POLL_S: Final = 0.2


class SoakState:
    """The daemon child of the soak, its state dir (a tmpfs when it can be mounted) and the
    control-socket probes the soak reads its faults through."""

    def __init__(self, work: Path, link: Path) -> None:
        self.dir = work / "state"
        self.link = link
        self.mounted = False
        self.daemon: DaemonProcess | None = None

    def mount(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self.mounted = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={SOAK_TMPFS},mode=0750", "tmpfs",
                 str(self.dir)], capture_output=True, check=False).returncode == 0

    def umount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.dir)], capture_output=True, check=False)

    async def start(self) -> None:
        self.daemon = DaemonProcess(self.dir, [str(self.link)], soak=True)
        await self.daemon.start()

    async def stop(self, *, kill: bool = False) -> None:
        if self.daemon is not None:
            if kill:
                self.daemon.kill9()
            await self.daemon.stop()
            self.daemon = None

    async def status(self) -> dict[str, Any] | None:
        from appliance.daemon.control import request, socket_path

        try:
            return await asyncio.to_thread(request, socket_path(self.dir), {"cmd": "status"})
        except (OSError, ValueError):
            return None

    async def faults(self) -> set[str]:
        """The fault names the daemon shows now: line fault codes and the panel's."""
        status = await self.status()
        if status is None:
            return set()
        codes = {line.get("fault_code") for line in status.get("lines", [])}
        # The status line names what stops recording or answering ("disk nearly full" in
        # the fault list is only the 24 h forecast, always shown on the soak's small tmpfs).
        text = str(status.get("status", ""))
        if "disk full" in text:
            codes.add("disk-full")
        if "index:" in text:
            codes.add("index-lost")
        return {c for c in codes if c}

    async def wait_fault(self, wanted: set[str], *, present: bool) -> bool:
        """Wait until one of ``wanted`` is shown (or, ``present=False``, none is)."""
        deadline = time.monotonic() + FAULT_SEEN_TIMEOUT_S
        while time.monotonic() < deadline:
            shown = await self.faults()
            if bool(shown & wanted) == present:
                return True
            await asyncio.sleep(POLL_S)
        return False

    async def wait_ready(self) -> bool:
        """Wait until the line is idle with no fault (``appliance status`` says ready)."""
        deadline = time.monotonic() + FAULT_SEEN_TIMEOUT_S
        while time.monotonic() < deadline:
            status = await self.status()
            if status is not None and str(status.get("status", "")).startswith("ready") \
                    and all(line.get("state") == "idle" for line in status["lines"]):
                return True
            await asyncio.sleep(POLL_S)
        return False

    def fill(self) -> None:
        """Take all but DISK_FULL_LEFT_BYTES of the tmpfs."""
        if not self.mounted:
            return
        free = shutil.disk_usage(self.dir).free
        with open(self.dir / "soak-filler", "wb") as f:
            f.truncate(0)
            for _ in range(max(0, free - DISK_FULL_LEFT_BYTES) // (1 << 20)):
                f.write(bytes(1 << 20))
            with contextlib.suppress(OSError):
                f.write(bytes(max(0, shutil.disk_usage(self.dir).free - DISK_FULL_LEFT_BYTES)))

    def unfill(self) -> None:
        (self.dir / "soak-filler").unlink(missing_ok=True)

    def delete_index(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            (self.dir / f"appliance.db{suffix}").unlink(missing_ok=True)

    def rebuild_index(self) -> dict[str, Any] | None:
        """``appliance index rebuild --json`` (what doctor advises); its report, None if it
        failed."""
        proc = subprocess.run(
            [sys.executable, "-m", "appliance", "--config", "/dev/null", "--state-dir",
             str(self.dir), "index", "rebuild", "--json"],
            capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            return None
        try:
            report: dict[str, Any] = json.loads(proc.stdout)
        except ValueError:
            return None
        return report


async def run_soak(work: Path, minutes: float, *, progress: Progress,
                   seed: int = 8, faults: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Calls with one random fault each (drawn from ``faults``, default all of
    :data:`FAULTS`) for ``minutes``; then recover, verify and count.

    Faults (:data:`FAULTS`): kill -9 of the daemon mid-call (restarted), the modem unplugged
    mid-call (a new one plugged in under the same link), 200 garbage bytes from the modem
    mid-call, the modem refusing the hang-up (2–5 on-hook commands), the modem silent for a
    while after the call, the disk full mid-call (the state dir is a tmpfs, filled), the index
    deleted after the call (then a restart, which must refuse to answer, `appliance index
    rebuild`, restart). Every fourth caller's name is :data:`HOSTILE_NAME`. After every call the
    soak waits for the line to be on-hook and records whether it was; a fault the daemon must
    show (status over the control socket) is counted when seen.
    """
    rng = random.Random(seed)  # noqa: S311 (reproducible fault schedule, not security)
    work.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (set-up)
    slot = ModemSlot(work / "modem0")
    await slot.plug()
    soak = SoakState(work, slot.link)
    soak.mount()
    injected = dict.fromkeys(FAULTS, 0)
    seen: dict[str, int] = {}
    on_hook: list[bool] = []
    answered = 0
    attempts = 0
    hostile = 0
    not_answered: list[str] = []
    rebuilds: list[dict[str, Any]] = []

    def saw(kind: str, ok: bool) -> None:
        if ok:
            seen[kind] = seen.get(kind, 0) + 1
        else:
            progress(f"soak: {kind} was not shown by the daemon")

    deadline = time.monotonic() + minutes * 60
    try:
        await soak.start()
        while time.monotonic() < deadline:
            attempts += 1
            fault = rng.choice(faults or FAULTS)
            modem = slot.modem
            modem.set_caller_audio(TestSignal(rng.randrange(1 << 30),
                                              asyncio.get_running_loop().time).read)
            name = "SOAK"
            if attempts % 4 == 0:
                name = HOSTILE_NAME
                hostile += 1
            modem.ring("+36301234567", name, cid_before_first_ring=True)
            try:
                await modem.wait_off_hook(HANGUP_TIMEOUT_S)
            except TimeoutError:
                shown = await soak.faults()
                not_answered.append(f"call {attempts}: faults {sorted(shown)}")
                progress(f"soak call {attempts}: not answered (faults {sorted(shown)})")
                modem.stop_ringing()
                await soak.wait_ready()
                continue
            answered += 1
            await asyncio.sleep(rng.uniform(2.0, NOTICE_ALLOWANCE_S + 5.0))
            injected[fault] += 1
            progress(f"soak call {attempts}: fault {fault}")
            if fault == "kill9":
                await soak.stop(kill=True)
                # The emulated modem has no DTR: it holds the line (in +VTR) until the new
                # daemon's open() leaves the data state and hangs up.
                await soak.start()
            elif fault == "unplug":
                slot.unplug()
                await slot.plug()
                saw("modem-missing", await soak.wait_fault({"modem-missing"}, present=True))
            else:
                if fault == "garbage":
                    modem.inject_garbage(bytes(rng.randrange(256) for _ in range(200)))
                    await asyncio.sleep(1.0)
                elif fault == "refuse-hangup":
                    # 2: the fault found in the field; 5: more than the ladder on a pty
                    # (no DTR): the line faults (line-off-hook) until the reopen hangs up.
                    modem.refuse_hang_up(rng.choice((2, 3, 4, 5)))
                elif fault == "disk-full":
                    await asyncio.to_thread(soak.fill)
                    await asyncio.sleep(3.0)  # the recorder hits ENOSPC mid-call
                modem.remote_hangup()
            with contextlib.suppress(TimeoutError):
                await slot.modem.wait_on_hook(HANGUP_TIMEOUT_S)
            on_hook.append(not slot.modem.off_hook)
            if fault == "refuse-hangup" and slot.modem.refused_hang_ups:
                saw("refused-hangups", True)
            if fault == "disk-full":
                saw("disk-full", await soak.wait_fault({"disk-full"}, present=True))
                soak.unfill()
                saw("disk-full-cleared",
                    await soak.wait_fault({"disk-full"}, present=False))
            elif fault == "silent-idle":
                slot.modem.stall()
                saw("modem-missing", await soak.wait_fault({"modem-missing"}, present=True))
                slot.modem.unstall()
            elif fault == "index-deleted":
                soak.delete_index()
                # The running daemon writes to the deleted file until it restarts (the
                # daily reboot, a crash): then it must refuse to answer until a rebuild.
                await soak.stop()
                await soak.start()
                saw("index-lost", await soak.wait_fault({"index-lost"}, present=True))
                await soak.stop()
                report = await asyncio.to_thread(soak.rebuild_index)
                saw("index-rebuilt", report is not None)
                if report is not None:
                    rebuilds.append({key: report.get(key) for key in
                                     ("sidecars", "unrecorded", "added", "not_indexed")})
                await soak.start()
            if not await soak.wait_ready():
                progress(f"soak call {attempts}: the line did not come back ready")
        progress("soak: stopping, restarting once for start-up recovery")
        await soak.stop()
        await soak.start()
        await soak.stop()
        checks = _check_soak(soak.dir, answered)
        checks.update(_check_hostile(soak.dir, work / "worker.log"))
    finally:
        await soak.stop()
        soak.umount()
        await slot.close()
    return {"minutes": minutes, "fault_kinds": list(faults or FAULTS), "attempts": attempts,
            "answered": answered,
            "not_answered": not_answered, "faults_injected": injected, "faults_seen": seen,
            "disk_full_injected_on_tmpfs": soak.mounted, "hostile_caller_ids": hostile,
            "index_rebuilds": rebuilds,
            "on_hook_after_call": "".join("1" if ok else "0" for ok in on_hook),
            "left_off_hook": on_hook.count(False), **checks}


def _check_hostile(state: Path, log: Path) -> dict[str, Any]:
    """What a person reads must carry no raw escape byte: ``calls``, ``last``, the log."""
    outputs = []
    for args in (["calls", "--limit", "1000"], ["last"]):
        proc = subprocess.run(
            [sys.executable, "-m", "appliance", "--config", "/dev/null", "--state-dir",
             str(state), *args], capture_output=True, text=True, check=False)
        outputs.append(proc.stdout)
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    return {"raw_escapes_in_cli": sum(o.count("\x1b") + o.count("\x07") for o in outputs),
            "raw_escapes_in_log": text.count("\x1b") + text.count("\x07")}


def _check_soak(state: Path, answered: int) -> dict[str, Any]:
    """Every answered call indexed and final; recordings and audit chain verify."""
    from appliance.store.db import Store

    store = Store.open(state / "appliance.db")
    try:
        rows = store.list_calls(None)
        chain = store.verify_audit_chain()
    finally:
        store.close_sync()
    in_progress = sum(1 for r in rows if r["outcome"] == "in_progress")
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", "--config", "/dev/null", "--state-dir", str(state),
         "verify", "--json"], capture_output=True, text=True, check=False)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        report = {"problems": [{"message": proc.stderr.strip()[-300:]}]}
    outcomes: dict[str, int] = {}
    for r in rows:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    return {
        "calls_indexed": len(rows),
        "calls_lost": max(0, answered - len(rows)),
        "calls_left_in_progress": in_progress,
        "outcomes": outcomes,
        "verify_ok": proc.returncode == 0,
        "verify_problems": len(report.get("problems", [])),
        "audit_chain_problems": len(chain),
    }
