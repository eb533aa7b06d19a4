"""The Pi-class CPU budget: the daemon child under a CPU quota, bisected to the smallest one.

A Raspberry Pi core runs CPython several times slower than the development machine's, so "how
much of one core here" is the figure that carries over (docs/performance.md, "Pi-class
budget"). The daemon child (:mod:`appliance.bench.worker`) starts unconstrained (prompt
rendering is set-up, not the budget), is then moved into a cgroup with a CPU quota, and runs
two simultaneous calls on two lines — the shop lifts for the first (bridged), the second is
recorded while the one handset is busy — at each quota level. A level passes when neither
emulated modem reported a transmit underrun and both recordings hold the caller's test noise
sample for sample (a level that fails is tried once more: on a shared machine one stall of
another process's making can cost an underrun at any quota). The quota is bisected
(geometrically) between a level that passes and one that fails.

The quota is a cgroup ``cpu`` controller limit: ``cpu.max`` on cgroup v2, or
``cpu.cfs_quota_us``/``cpu.cfs_period_us`` on v1. The period is short
(:data:`PERIOD_US`, so a throttled daemon waits at most a fraction of a 20 ms frame), and is
stretched only where the kernel's 1 ms minimum quota needs it. Needs write access to the
cgroup file system (root here); without it the figure is ``None`` with a note saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from appliance.bench.daemonproc import (
    HANGUP_TIMEOUT_S,
    NOTICE_ALLOWANCE_S,
    DaemonProcess,
    ModemSlot,
)
from appliance.bench.probes import TestSignal, check_continuity

_LOGGER = logging.getLogger(__name__)

#: Quota period: 10 ms, half a frame, so throttling stretches a frame's work, not whole frames.
PERIOD_US: Final = 10_000
#: The kernel refuses quotas below 1 ms per period.
MIN_QUOTA_US: Final = 1_000
#: Bisection bounds, percent of one core: the top must pass, the bottom is taken to fail.
TOP_PCT: Final = 100.0
BOTTOM_PCT: Final = 2.0
#: Simultaneous calls per level (issue: two bridged-and-recorded calls).
CALLS_AT_ONCE: Final = 2
#: Underruns count from this long after off-hook (the call's first frames are its edge).
SETTLE_S: Final = 1.0
#: How long the finished calls' rows and recordings may take to appear in the index.
FINALIZE_TIMEOUT_S: Final = 60.0
#: The group's CPU weight (cgroup v2 scale, 100 = a nice-0 process; v1 shares ×10.24): ten
#: times a normal process, so other work on a shared machine does not starve the daemon below
#: its quota — on the appliance the other services run at Nice=10 for the same reason.
PRIORITY_WEIGHT: Final = 1000
V2_ROOT: Final = Path("/sys/fs/cgroup")
V1_ROOT: Final = Path("/sys/fs/cgroup/cpu")

Progress = Callable[[str], None]


class CpuQuota:
    """One cgroup with a CPU quota; :meth:`create` finds the hierarchy, :meth:`remove` cleans up.

    Use :func:`CpuQuota.create` (returns None and a reason where no quota is possible).
    """

    def __init__(self, path: Path, version: int) -> None:
        self.path = path
        self.version = version
        self.period_us = PERIOD_US

    @classmethod
    def create(cls, name: str) -> tuple[CpuQuota | None, str]:
        """A fresh cgroup ``name`` under the cpu hierarchy, or (None, why not)."""
        reasons = []
        controllers = V2_ROOT / "cgroup.controllers"
        if controllers.exists() and "cpu" in controllers.read_text().split():
            try:
                subtree = V2_ROOT / "cgroup.subtree_control"
                if "cpu" not in subtree.read_text().split():
                    subtree.write_text("+cpu")
                path = V2_ROOT / name
                path.mkdir(exist_ok=True)
                (path / "cpu.weight").write_text(str(PRIORITY_WEIGHT))
                return cls(path, 2), f"cgroup v2 {path}"
            except OSError as exc:
                reasons.append(f"cgroup v2: {exc}")
        if (V1_ROOT / "cpu.cfs_quota_us").exists():
            try:
                path = V1_ROOT / name
                path.mkdir(exist_ok=True)
                (path / "cpu.shares").write_text(str(PRIORITY_WEIGHT * 1024 // 100))
                return cls(path, 1), f"cgroup v1 {path}"
            except OSError as exc:
                reasons.append(f"cgroup v1: {exc}")
        return None, "; ".join(reasons) or "no cgroup cpu controller on this machine"

    def set_pct(self, pct: float) -> None:
        """Limit the group to ``pct`` percent of one core (period stretched for tiny quotas)."""
        self.period_us = max(PERIOD_US, math.ceil(MIN_QUOTA_US * 100 / pct))
        quota = max(MIN_QUOTA_US, round(self.period_us * pct / 100))
        if self.version == 2:
            (self.path / "cpu.max").write_text(f"{quota} {self.period_us}")
        else:
            # v1 checks the quota against the current period: set the period first, with no
            # quota in the way.
            (self.path / "cpu.cfs_quota_us").write_text("-1")
            (self.path / "cpu.cfs_period_us").write_text(str(self.period_us))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))

    def unlimit(self) -> None:
        if self.version == 2:
            (self.path / "cpu.max").write_text(f"max {PERIOD_US}")
        else:
            (self.path / "cpu.cfs_quota_us").write_text("-1")

    def add(self, pid: int) -> None:
        """Move process ``pid`` (all its threads; children it starts later follow it)."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttled(self) -> int:
        """Periods in which the group ran out of quota so far (cpu.stat nr_throttled)."""
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "nr_throttled":
                return int(value)
        return 0

    def remove(self) -> None:
        """Move any process left back to the root group and delete the group."""
        root = V2_ROOT if self.version == 2 else V1_ROOT
        with contextlib.suppress(OSError):
            for pid in (self.path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (root / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            self.path.rmdir()


@contextlib.contextmanager
def priority(name: str) -> Iterator[str]:
    """Run this process with :data:`PRIORITY_WEIGHT` (no quota) while the ``with`` lasts.

    Yields where (or why not). On the appliance the daemon competes only with its own
    background services, which run at ``Nice=10`` (a tenth of its weight); on a shared
    development machine the other users' load would otherwise decide the figure.
    """
    group, where = CpuQuota.create(name)
    if group is not None:
        group.add(os.getpid())
    try:
        yield where
    finally:
        if group is not None:
            group.remove()


async def _two_calls(slots: list[ModemSlot], talk_s: float,
                     seed: int) -> tuple[list[TestSignal], int]:
    """Ring every slot at once, talk ``talk_s`` after off-hook, hang up.

    Returns the callers' signals and the transmit underruns the modems counted from
    :data:`SETTLE_S` after off-hook until the hang-up (the first frames after going off-hook
    and the last ones are the call's edges, not its steady state).
    """
    clock = asyncio.get_running_loop().time
    signals = [TestSignal(seed + i, clock) for i in range(len(slots))]
    underruns = 0

    async def one(slot: ModemSlot, signal: TestSignal, i: int) -> None:
        nonlocal underruns
        modem = slot.modem
        modem.set_caller_audio(signal.read)
        modem.ring(f"+3630{seed % 1000:03d}{i:04d}", "BUDGET", cid_before_first_ring=True)
        await modem.wait_off_hook(HANGUP_TIMEOUT_S)
        await asyncio.sleep(SETTLE_S)
        before = modem.stats["underruns"]
        await asyncio.sleep(talk_s - SETTLE_S)
        underruns += modem.stats["underruns"] - before
        modem.remote_hangup()
        await modem.wait_on_hook(HANGUP_TIMEOUT_S)

    try:
        await asyncio.gather(*(one(s, sig, i) for i, (s, sig) in enumerate(zip(slots, signals,
                                                                               strict=True))))
    finally:
        for slot in slots:
            slot.modem.set_caller_audio(None)
    return signals, underruns


def _recordings(db: Path, since: float, lines: int) -> list[dict[str, Any]] | None:
    """The ``lines`` newest finished calls created after ``since``, or None while any is not."""
    from appliance.store.db import Store

    store = Store.open(db, check=False)
    try:
        rows = store.list_calls(None, since=since)
    finally:
        store.close_sync()
    done = [r for r in rows if r["outcome"] != "in_progress" and r["recording_path"]]
    return done if len(done) >= lines and len(rows) == len(done) else None


def _read(path: str) -> npt.NDArray[np.int16]:
    import soundfile

    audio, _rate = soundfile.read(path, dtype="int16", always_2d=True)
    return np.asarray(audio[:, 0], dtype=np.int16)


async def _level(daemon: DaemonProcess, quota: CpuQuota, slots: list[ModemSlot], pct: float,
                 talk_s: float, seed: int) -> dict[str, Any]:
    """Run the calls at ``pct``; return what happened (``clean`` says whether it passed)."""
    quota.set_pct(pct)
    throttled0 = quota.throttled()
    since = time.time()
    signals, underruns = await _two_calls(slots, talk_s, seed)
    throttled = quota.throttled() - throttled0
    # The finalize (FLAC) runs under the same quota; wait for it, bounded.
    db = daemon.state_dir / "appliance.db"
    rows = None
    async with asyncio.timeout(FINALIZE_TIMEOUT_S):
        while rows is None:
            rows = await asyncio.to_thread(_recordings, db, since, len(slots))
            if rows is None:
                await asyncio.sleep(0.5)
    by_line = {r["line"]: r for r in rows}  # bench_config names the lines line1, line2, …
    exact = 0
    for i, signal in enumerate(signals):
        row = by_line.get(f"line{i + 1}")
        if row is None:
            continue
        audio = await asyncio.to_thread(_read, row["recording_path"])
        c = await asyncio.to_thread(check_continuity, audio, signal.stream())
        _LOGGER.info("pi budget %.1f %%, %s: %s", pct, row["line"], c.to_dict())
        if c.aligned and not (c.dropped or c.duplicated or c.inserted or c.mismatched):
            exact += 1
    return {"cpu_pct": round(pct, 2), "period_ms": quota.period_us / 1000,
            "modem_underruns": underruns, "recordings_exact": exact,
            "throttled_periods": throttled,
            "clean": underruns == 0 and exact == len(slots)}


async def measure_budget(work: Path, call_s: float, *, steps: int = 4,
                         progress: Progress) -> dict[str, Any]:
    """``pi_budget_min_cpu_pct`` and the levels tried (see the module docstring)."""
    quota, where = CpuQuota.create(f"appliance-bench-{os.getpid()}")
    if quota is None:
        progress(f"pi budget skipped: {where}")
        return {"pi_budget_min_cpu_pct": None, "pi_budget_note": f"no CPU quota: {where}"}
    # The emulated modems (this process) get the same priority, but no quota: a late
    # emulator tick would count as the daemon's underrun.
    with priority(f"appliance-bench-{os.getpid()}-modems"):
        return await _measure(quota, where, work, call_s, steps, progress)


async def _measure(quota: CpuQuota, where: str, work: Path, call_s: float, steps: int,
                   progress: Progress) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (set-up)
    slots = [ModemSlot(work / f"modem{i}") for i in range(CALLS_AT_ONCE)]
    daemon = DaemonProcess(work / "state", [str(s.link) for s in slots], echo_cancel=False)
    talk_s = NOTICE_ALLOWANCE_S + call_s
    levels: list[dict[str, Any]] = []
    try:
        for slot in slots:
            await slot.plug()
        progress("pi budget: starting the daemon (unconstrained for set-up)")
        await daemon.start()
        quota.add(daemon.pid)
        lo, hi = BOTTOM_PCT, TOP_PCT
        pct: float | None = TOP_PCT
        n = 0
        while pct is not None:
            progress(f"pi budget: {CALLS_AT_ONCE} calls under {pct:.1f} % of one core")
            result = await _level(daemon, quota, slots, pct, talk_s, 700 + 10 * n)
            if not result["clean"]:
                # One more try: on a shared machine a stall of another process's making can
                # cost one underrun at any quota (seen unconstrained); the quota's own
                # shortfall fails both tries.
                retry = await _level(daemon, quota, slots, pct, talk_s, 705 + 10 * n)
                retry["first_try"] = result
                result = retry
            levels.append(result)
            if result["clean"]:
                hi = pct
            elif pct == TOP_PCT:
                break  # fails unconstrained: no budget figure
            else:
                lo = pct
            n += 1
            pct = math.sqrt(lo * hi) if n <= steps else None
    finally:
        with contextlib.suppress(OSError):
            quota.unlimit()
        await daemon.stop()
        for slot in slots:
            await slot.close()
        quota.remove()
    passing = [lv["cpu_pct"] for lv in levels if lv["clean"]]
    return {"pi_budget_min_cpu_pct": min(passing) if passing else None,
            "pi_budget_highest_failing_cpu_pct": max(
                (lv["cpu_pct"] for lv in levels if not lv["clean"]), default=None),
            "pi_budget_quota": where, "pi_budget_levels": levels}
