"""A full disk while the real daemon answers (issue 15 item 1).

The daemon runs as its own process on a pty modem (as in test_crash.py). Its state
directory is a small tmpfs when the test can mount one (root, as in CI); otherwise the daemon
runs with RLIMIT_FSIZE, which makes the kernel refuse a file's growth past the limit (EFBIG)
the way a full disk refuses it (ENOSPC) — a real write failure in both cases, in the
recording and in the index.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.daemon.control import request, socket_path
from appliance.sim.modem.pty import PtyModemServer
from tests.system import daemon_proc
from tests.system.index_probe import query

pytestmark = pytest.mark.timeout(150)

TIMEOUT_S = 40.0
POLL_S = 0.1
#: The small disk: room for the index and the short prompts, then a few seconds of recording.
TMPFS_SIZE = "4m"
#: Free space left for the call once the daemon is up (≈ 8 s of live WAV).
LEFT_FREE_BYTES = 256 * 1024
#: Without a tmpfs: the largest file the daemon may write (≈ 8 s of live WAV).
FSIZE_LIMIT_BYTES = 256 * 1024


@dataclass
class SmallDisk:
    state_dir: Path
    mounted: bool  # a tmpfs (else the daemon runs under RLIMIT_FSIZE)
    filler: Path

    def fill(self) -> None:
        """Leave LEFT_FREE_BYTES free (tmpfs only)."""
        if not self.mounted:
            return
        free = shutil.disk_usage(self.state_dir).free
        with open(self.filler, "wb") as f:
            f.write(bytes(max(0, free - LEFT_FREE_BYTES)))

    def fill_up(self) -> None:
        """Take every byte left (tmpfs only): nothing at all can be written now."""
        if not self.mounted:
            return
        fd = os.open(self.filler.with_name("filler2"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, bytes(4096))
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)
        self.filler.with_name("filler2").unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    state = tmp_path / "state"
    state.mkdir()
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}",
                                  "tmpfs", str(state)], capture_output=True).returncode == 0
    try:
        yield SmallDisk(state, mounted, state / "filler")
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(state)], check=False)


def write_config(tmp_path: Path, device: str, min_free_mb: int) -> Path:
    return daemon_proc.write_config(tmp_path, device, "Rögzítjük.",
                                    f"[recording]\nmin_free_mb = {min_free_mb}")


def start_daemon(config: Path, disk: SmallDisk) -> subprocess.Popen[str]:
    def limit() -> None:
        if not disk.mounted:
            resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT_BYTES, FSIZE_LIMIT_BYTES))

    return daemon_proc.start_daemon(config, disk.state_dir, preexec_fn=limit)


async def status(state_dir: Path) -> dict[str, Any]:
    """The daemon's status (waits for its control socket)."""
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            with contextlib.suppress(OSError, ValueError):
                return await asyncio.to_thread(request, socket_path(state_dir),
                                               {"cmd": "status"})
            await asyncio.sleep(POLL_S)


async def until(predicate: Any) -> None:
    """Poll another process's state (no event crosses the process boundary)."""
    async with asyncio.timeout(TIMEOUT_S):
        while not await predicate():  # noqa: ASYNC110
            await asyncio.sleep(POLL_S)


def caller_voice(n: int) -> Any:
    import numpy as np

    return (np.random.default_rng(n).integers(-6000, 6000, n)).astype(np.int16)


@pytest.fixture
async def modem() -> Any:
    server = PtyModemServer(profile="conexant")
    await server.start()
    server.sim.set_caller_audio(caller_voice)
    try:
        yield server
    finally:
        await server.stop()


async def stop(daemon: subprocess.Popen[str]) -> str:
    daemon.send_signal(signal.SIGTERM)
    # In a thread: the emulated modem lives on this test's loop and must keep answering.
    _, err = await asyncio.to_thread(daemon.communicate, timeout=TIMEOUT_S)
    return err


async def test_disk_full_mid_call(modem: Any, small_disk: SmallDisk, tmp_path: Path) -> None:
    """The recording stops, the call goes on, the line goes on-hook when the caller hangs
    up, one log line, the disk-full fault; the row is finalized once space is back."""
    db = small_disk.state_dir / "appliance.db"
    daemon = start_daemon(write_config(tmp_path, modem.path, 0), small_disk)
    try:
        await status(small_disk.state_dir)
        small_disk.fill()
        modem.sim.ring("+3611234567", "\x1b]0;PWNED\x07")
        await modem.sim.wait_off_hook(TIMEOUT_S)

        async def recording_stopped() -> bool:
            reply = await status(small_disk.state_dir)
            return any("recording stopped" in f for f in reply["faults"])

        await until(recording_stopped)
        reply = await status(small_disk.state_dir)
        assert reply["status"].startswith("fault — disk full"), reply["status"]
        assert reply["panel"]["fault"] == str(("code", 3))
        assert reply["panel"]["recording"] == "off"
        assert reply["lines"][0]["call"] is not None, "the call goes on"
        small_disk.fill_up()  # the end of the call cannot write the row either
        modem.sim.remote_hangup()
        await modem.sim.wait_on_hook(TIMEOUT_S)
        reference = query(db, "SELECT reference FROM calls")[0]["reference"]
        if small_disk.mounted:
            # Space comes back: the row is finalized without a restart.
            small_disk.free()

            async def finalized() -> bool:
                rows = query(db, "SELECT outcome FROM calls WHERE reference = ?", reference)
                return rows[0]["outcome"] != "in_progress"

            await until(finalized)
            row = query(db, "SELECT * FROM calls WHERE reference = ?", reference)[0]
            assert row["outcome"] == "missed"
            if row["recording_decision"] == "recorded":
                # What was written before the disk filled, encoded and indexed.
                assert Path(row["recording_path"]).is_file()
            else:
                # It could not be encoded on the full disk: the partial is kept (finalized
                # at the next start) and the row says the recording failed meanwhile.
                assert row["recording_decision"] == "failed", dict(row)
                assert list(small_disk.state_dir.rglob("*.wav.partial"))
            assert row["end_at"] is not None
            audit = query(db, "SELECT details FROM audit WHERE reference = ? AND "
                              "action = 'call-finalized'", reference)
            assert len(audit) == 1
            assert json.loads(audit[0]["details"])["outcome"] == "missed"
    finally:
        err = await stop(daemon)
    assert daemon.returncode == 0, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("ERROR")]
    assert 1 <= len(errors) <= 4, errors  # recording stopped (+ index, finalize): not thousands
    assert "\x1b" not in err


async def test_below_the_floor_the_call_is_answered_unrecorded(
        modem: Any, small_disk: SmallDisk, tmp_path: Path) -> None:
    """Less free space than recording.min_free_mb: the short "not recorded" notice, no
    recording, the disk-full fault; the caller is told nothing false."""
    db = small_disk.state_dir / "appliance.db"
    # 999 999 MB: more than any test machine's disk has free (the tmpfs has 4 MB).
    daemon = start_daemon(write_config(tmp_path, modem.path, 999_999), small_disk)
    try:
        reply = await status(small_disk.state_dir)
        assert reply["status"].startswith("fault — disk full"), reply["status"]
        assert reply["panel"]["fault"] == str(("code", 3))
        modem.sim.ring("+3611234567", None)
        await modem.sim.wait_off_hook(TIMEOUT_S)

        async def asked_for_the_shop() -> bool:
            return bool(os.path.exists(db) and query(
                db, "SELECT 1 FROM events WHERE state = 'ringing-agent'"))

        await until(asked_for_the_shop)
        modem.sim.remote_hangup()
        await modem.sim.wait_on_hook(TIMEOUT_S)

        async def ended() -> bool:
            return bool(query(db, "SELECT 1 FROM calls WHERE outcome != 'in_progress'"))

        await until(ended)
    finally:
        err = await stop(daemon)
    assert daemon.returncode == 0, err
    row = query(db, "SELECT * FROM calls")[0]
    assert row["notice_version"] == "not_recorded"
    assert row["recording_decision"] == "none"
    assert row["recording_path"] is None
    states = [r["state"] for r in query(db, "SELECT state FROM events ORDER BY id")]
    assert "not-recorded" in states
    assert "recording-started" not in states
    # No audio; only the call's record file (docs/records.md).
    (record,) = (small_disk.state_dir / "recordings").rglob("*.*")
    assert record.name == f"{row['reference']}.json"
    assert json.loads(record.read_text(encoding="utf-8"))["call"]["recording_decision"] == "none"
