"""Third-party interop: Debian's vgetty (package ``mgetty-voice``) on the emulator's pty.

docs/v253.md §9: an established V.253 client must answer a ringing call on the
emulator, play its greeting, record the caller's message, notice the hang-up and write its
``.rmd`` file. vgetty runs as a real child process on the pty (§9.2: port ``pts/N``,
``toggle-dtr no``).

vgetty reads its configuration only from the compiled-in ``/etc/mgetty`` and writes to
``/var/spool/voice``, ``/var/log/mgetty`` and ``/var/lock``; the test never touches those:
it runs vgetty in a private mount namespace (``unshare``) with temporary directories
bind-mounted over them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from appliance.sim.modem.emulator import SimModem
from appliance.sim.modem.pty import PtyModemServer

VGETTY = shutil.which("vgetty") or ("/usr/sbin/vgetty" if os.path.exists("/usr/sbin/vgetty")
                                     else None)
UNSHARE = shutil.which("unshare")

pytestmark = pytest.mark.skipif(
    VGETTY is None,
    reason="vgetty not installed (Debian package mgetty-voice: apt-get install mgetty-voice)",
)

TIMEOUT_S = 15.0
RING_PERIOD_S = 0.6
"""Rings come fast so vgetty (``rings 2``) answers within a second."""
CID_DELAY_S = 0.2
GREETING_S = 0.5
GREETING_HZ = 1000.0
CALLER_HZ = 440.0
CALLER_TALK_S = 1.0
"""How long the caller speaks into vgetty's recording before hanging up."""
RATE_HZ = 8000
RMD_HEADER_BYTES = 32
"""vgetty's RMD1 header: magic, modem type[16], compression (BE16), speed (BE16), bits, pad[7]."""
NUMBER = "3612345678"
NAME = "TEST CALLER"

# The namespaced directories: (mount point, sub-directory of the test's tmp dir).
_BINDS = (
    ("/etc/mgetty", "etc"),
    ("/var/spool/voice", "spool"),
    ("/var/log/mgetty", "log"),
    ("/run/lock", "lock"),  # /var/lock → /run/lock on Debian
)


def _rmd(samples_u8: bytes) -> bytes:
    """A vgetty raw-modem-data file: V253modem, 8-bit linear (vgetty id 8), 8000 Hz.

    Written by hand: pvftools is a separate package and this header is 32 bytes.
    """
    header = b"RMD1" + b"V253modem".ljust(16, b"\0") + struct.pack(">HHB", 8, RATE_HZ, 8)
    return header.ljust(RMD_HEADER_BYTES, b"\0") + samples_u8


def _tone_u8(hz: float, seconds: float) -> bytes:
    t = np.arange(int(seconds * RATE_HZ)) / RATE_HZ
    return (128 + 60 * np.sin(2 * np.pi * hz * t)).astype(np.uint8).tobytes()


def _dominant_hz(samples: npt.NDArray[np.float64]) -> float:
    spectrum = np.abs(np.fft.rfft(samples - samples.mean()))
    return float(np.argmax(spectrum) * RATE_HZ / len(samples))


def _write_config(root: Path, port: str) -> None:
    etc = root / "etc"
    # mgetty.config: §9.2 — the pty has no DTR to toggle; data-only skips the fax init.
    (etc / "mgetty.config").write_text(
        f"port {port}\n"
        "  toggle-dtr no\n"
        "  data-only yes\n"
        '  init-chat "" ATZ OK\n'
        "  rings 2\n"
        "  speed 115200\n"
        "  debug 6\n",
        encoding="ascii",
    )
    # voice.conf: the generic V.253 driver (forceV253, §9.1), spool in the tmp dir, short
    # beep and command delay so the test stays fast, no host-side silence trimming.
    (etc / "voice.conf").write_text(
        "part generic\n"
        "voice_log_level 6\n"
        "voice_dir /var/spool/voice\n"
        "phone_owner root\n"
        "phone_group root\n"
        "phone_mode 0660\n"
        "message_dir messages\n"
        "receive_dir incoming\n"
        "message_list Index\n"
        "backup_message standard.rmd\n"
        "port_speed 115200\n"
        "command_delay 10\n"
        "beep_length 200\n"
        "rec_min_len 0\n"
        "rec_max_len 20\n"
        "rec_silence_len 0\n"
        "rec_remove_silence false\n"
        "forceV253 TRUE\n"
        "program vgetty\n"
        "rings 2\n"
        "answer_mode voice\n"
        "rec_always_keep TRUE\n",
        encoding="ascii",
    )


@pytest.fixture
def vgetty_root(tmp_path: Path) -> Path:
    root = tmp_path / "vgetty"
    for _, sub in _BINDS:
        (root / sub).mkdir(parents=True)
    for sub in ("spool/messages", "spool/incoming"):
        (root / sub).mkdir(parents=True)
    (root / "spool/messages/standard.rmd").write_bytes(_rmd(_tone_u8(GREETING_HZ, GREETING_S)))
    return root


def _vgetty_argv(root: Path, port: str) -> list[str]:
    assert VGETTY is not None
    mounts = " && ".join(f"mount --bind {root / sub} {target}" for target, sub in _BINDS)
    script = f"{mounts} && exec {VGETTY} -x 6 {port}"
    if os.geteuid() == 0:
        return [str(UNSHARE), "--mount", "--propagation", "private", "sh", "-c", script]
    # Unprivileged: a user namespace maps us to root so the bind mounts are allowed.
    return [str(UNSHARE), "--user", "--map-root-user", "--mount", "sh", "-c", script]


def _wchan(pid: int) -> str:
    """``poll`` while the process blocks in select/poll, ``gone`` once it has exited, else
    the kernel's wait channel."""
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return "gone"
    return "poll" if "poll" in wchan or "select" in wchan else wchan


#: How often the test starts vgetty before giving up, as init would respawn it: on a loaded
#: machine its init can time out and it exits before it ever waits for a call.
VGETTY_STARTS = 3


async def _wait(predicate: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
    # Polling a condition with a deadline: vgetty's progress is only visible in the
    # emulator's state (commands, mode), which has no event of its own for these steps.
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 (no event exists for these states)
            await asyncio.sleep(0.02)


async def _waits_for_ring(proc: asyncio.subprocess.Process, sim: SimModem) -> bool:
    """True once vgetty waits for RING; False if it exited first.

    vgetty idles in data class after its init (§9.1: … AT+FCLASS=0, AT), drains the line with
    a 0.3 s tty read, then blocks in select() waiting for RING. A RING during the drain is
    swallowed with the caller ID, so wait for the select (kernel wchan).
    """
    seen = len(sim.commands)
    await _wait(lambda: "AT+FCLASS=0" in [c.upper() for c in sim.commands[seen:]]
                or _wchan(proc.pid) == "gone")
    await _wait(lambda: _wchan(proc.pid) != "poll")
    await _wait(lambda: _wchan(proc.pid) in ("poll", "gone"))
    return _wchan(proc.pid) == "poll"


@contextlib.asynccontextmanager
async def _vgetty_on(sim: SimModem, root: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """Serve ``sim`` on a pty, run vgetty on it, yield once vgetty waits for RING."""
    server = PtyModemServer(sim)
    path = await server.start()
    port = path.removeprefix("/dev/")  # §9.2: mgetty prefixes /dev/ itself
    _write_config(root, port)
    log = root / "log" / f"vg_{port.replace('/', '-')}.log"
    proc: asyncio.subprocess.Process | None = None
    try:
        for _ in range(VGETTY_STARTS):
            proc = await asyncio.create_subprocess_exec(
                *_vgetty_argv(root, port),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            if await _waits_for_ring(proc, sim):
                break
            await proc.wait()
        else:
            pytest.fail(f"vgetty exited before waiting for a call, {VGETTY_STARTS} times")
        yield proc
        async with asyncio.timeout(TIMEOUT_S):
            await proc.wait()  # vgetty exits after each call (init would respawn it)
    finally:
        if proc is not None and proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TIMEOUT_S):
                    await proc.wait()
        await server.stop()
        if log.exists():
            # pytest shows captured output only when the test fails: vgetty's own account.
            print(log.read_text(errors="replace")[-20000:])  # noqa: T201


def _tone_source(hz: float, consumed: list[int]) -> Callable[[int], npt.NDArray[np.int16]]:
    """The caller's voice: a steady tone; ``consumed[0]`` counts the samples taken."""
    t = np.arange(RATE_HZ * 30) / RATE_HZ
    voice = (0.4 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)

    def source(n: int) -> npt.NDArray[np.int16]:
        out = voice[consumed[0] : consumed[0] + n]
        consumed[0] += n
        return out

    return source


@pytest.mark.skipif(UNSHARE is None, reason="unshare (util-linux) is missing")
# Every dialect vgetty can work with. Not "usr": vgetty would pick its legacy US_Robotics
# driver by ATI0, and with forceV253 the USR's <DLE>H right after AT+VLS=1 (quirk #23) is, for
# vgetty, the handset going off-hook — see test_vgetty_hangs_up_on_usr_self_confirmation and
# the evidence in docs/line.md. The caller's hang-up is reported as a real modem does, after
# the busy cadence has been recognised.
@pytest.mark.realistic_hangup
@pytest.mark.parametrize("profile", ["v253", "conexant"])
async def test_vgetty_answers_plays_records_and_hangs_up(
    vgetty_root: Path, profile: str
) -> None:
    sim = SimModem(profile, ring_period_s=RING_PERIOD_S, cid_delay_s=CID_DELAY_S)
    heard: list[npt.NDArray[np.int16]] = []
    sim.add_tx_listener(lambda samples, _t: heard.append(samples.copy()))
    consumed = [0]
    async with _vgetty_on(sim, vgetty_root) as proc:
        sim.ring(NUMBER, NAME)
        await sim.wait_off_hook(TIMEOUT_S)
        # The greeting: played through +VTX at the modem's real rate.
        await _wait(lambda: sum(len(h) for h in heard) >= GREETING_S * RATE_HZ)
        await _wait(lambda: sim.mode == "vrx")
        sim.set_caller_audio(_tone_source(CALLER_HZ, consumed))
        await _wait(lambda: consumed[0] >= CALLER_TALK_S * RATE_HZ)
        sim.remote_hangup()  # busy tone, <DLE>b 1.8–2 s later (§5.3): vgetty must hang up
        await sim.wait_on_hook(TIMEOUT_S)
    assert proc.returncode == 0

    commands = [c.upper() for c in sim.commands]
    for expected in ("AT+VLS=1", "AT+VTX", "AT+VRX", "AT+VLS=0"):
        assert expected in commands
    played = np.concatenate(heard).astype(np.float64)
    assert abs(_dominant_hz(played[: int(GREETING_S * RATE_HZ)]) - GREETING_HZ) < 20
    messages = list((vgetty_root / "spool" / "incoming").glob("*.rmd"))
    assert len(messages) == 1, messages
    assert messages[0].name.endswith(f"-{NUMBER}.rmd")  # vgetty took the caller ID
    data = messages[0].read_bytes()
    assert data[:4] == b"RMD1"
    assert data[4:13] == b"V253modem"
    audio = np.frombuffer(data[RMD_HEADER_BYTES:], dtype=np.uint8).astype(np.float64)
    assert len(audio) >= 0.5 * CALLER_TALK_S * RATE_HZ
    assert abs(_dominant_hz(audio) - CALLER_HZ) < 20


@pytest.mark.skipif(UNSHARE is None, reason="unshare (util-linux) is missing")
async def test_vgetty_hangs_up_on_usr_self_confirmation(vgetty_root: Path) -> None:
    # Quirk #23 reproduced: the USR profile confirms AT+VLS=1 with <DLE>H, which a generic
    # V.253 client (vgetty event.c: HANDSET_OFF_HOOK → stop + hang up) takes at its word.
    # Kept on purpose: the field evidence says a real USR5637 does this (docs/line.md).
    sim = SimModem("usr", ring_period_s=RING_PERIOD_S, cid_delay_s=CID_DELAY_S)
    async with _vgetty_on(sim, vgetty_root) as proc:
        sim.ring(NUMBER, NAME)
        await sim.wait_off_hook(TIMEOUT_S)
        await sim.wait_on_hook(TIMEOUT_S)
    assert proc.returncode == 0
    assert "AT+VRX" not in [c.upper() for c in sim.commands]
    assert not list((vgetty_root / "spool" / "incoming").glob("*.rmd"))
