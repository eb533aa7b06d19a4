"""``appliance sim-modem`` (the emulator on a pty, optionally scripted) and ``appliance modem
probe`` (what a real modem supports).

``modem probe`` needs the port to itself: it refuses while the daemon runs (its control socket
answers) or while something else holds the port (the daemon's exclusive lock, a UUCP lock file
from mgetty/minicom). It only asks questions (``ATI``, ``=?`` and ``?`` forms); the one setting
it changes, ``+FCLASS=8`` (voice commands answer ERROR outside it, docs/v253.md §3), it puts
back to ``+FCLASS=0`` before closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import click

from appliance.cli.context import check_output_path, fail
from appliance.config import EXIT_CONFIG
from appliance.errors import ConfigError, ModemCommandError, ModemError

if TYPE_CHECKING:
    from appliance.audio.hybrid import HybridSpec

__all__ = ["DIALECTS", "ProbeReport", "port_lock_holder", "probe_modem", "register",
           "wire_emulator"]

DIALECTS: Final = {"usr5637": "usr", "cx93010": "conexant", "v253": "v253"}
"""``--dialect`` names → :data:`appliance.sim.modem.profiles.PROFILES` keys."""
_PROFILE_DIALECT: Final = {profile: dialect for dialect, profile in DIALECTS.items()}
PROBE_TIMEOUT_S: Final = 2.0
"""Per-command timeout while probing (a healthy modem answers in milliseconds)."""
UUCP_LOCK_DIRS: Final = (Path("/var/lock"), Path("/run/lock"))
"""Where mgetty, minicom and friends put ``LCK..<tty>`` files (FHS)."""


def wire_emulator(devices: Iterable[str]) -> None:
    """Make ``sim://`` modem URLs open the in-process emulator when any of ``devices`` is one.

    The daemon and the line room know no emulator (docs/architecture.md, "Rooms"); the command
    that runs them wires it in, and only when configured, so a box on real modems never loads
    it.
    """
    if any(device.startswith("sim://") for device in devices):
        from appliance.sim.modem.link import install

        install()


def register(cli: click.Group) -> None:
    """Add ``sim-modem`` and the ``modem`` group to the ``appliance`` command."""
    cli.add_command(sim_modem)
    cli.add_command(modem)


# --- sim-modem -------------------------------------------------------------------------------


#: Where the kernel's ptys live: a symlink into it at ``--link`` is an earlier run's.
PTY_DIR: Final = "/dev/pts/"


def _claim_link(link: Path | None, force: bool) -> None:
    """Make room for the ``--link`` symlink, or exit 1 without touching anything.

    A symlink into /dev/pts is an earlier sim-modem's stale link and is replaced (it must
    never block start-up); a regular file only with ``--force``; anything else never.
    """
    if link is None:
        return
    with contextlib.suppress(OSError):
        if link.is_symlink() and os.readlink(link).startswith(PTY_DIR):
            link.unlink()
            return
    if check_output_path(link, force=force, option="--link"):
        link.unlink()


def _link(link: Path | None, target: str) -> None:
    """Create the ``--link`` symlink (claimed by :func:`_claim_link`; never replaces)."""
    if link is not None:
        link.symlink_to(target)


def _unlink_ours(link: Path | None, target: str) -> None:
    """Remove the ``--link`` symlink if it is still the one pointing at our pty."""
    with contextlib.suppress(OSError):
        if link is not None and os.readlink(link) == target:
            link.unlink()


@click.command("sim-modem")
@click.option("--dialect", type=click.Choice(sorted(DIALECTS)), default=None,
              help="Which real modem to imitate: usr5637 (USRobotics), cx93010 (Conexant: "
                   "Zoom 3095, StarTech), v253 (strict generic). [default: cx93010]")
@click.option("--profile", type=click.Choice(sorted(_PROFILE_DIALECT)), hidden=True,
              help="Old spelling of --dialect (conexant, usr, v253).")
@click.option("--script", "script_path", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML file of scripted incoming calls (docs/line.md).")
@click.option("--link", type=click.Path(path_type=Path),
              help="Also create this symlink to the pty (e.g. /tmp/modem); an earlier run's "
                   "stale link is replaced, anything else refused.")
@click.option("--force", is_flag=True,
              help="Let --link replace an existing regular file (never anything else).")
@click.option("--ring-period", "ring_period_s", type=click.FloatRange(min=0.05),
              default=5.0, show_default=True,
              help="Seconds from one RING to the next (Hungary: 1.25 s on, 3.75 s off).")
@click.option("--half-duplex", is_flag=True,
              help="Imitate a modem without full duplex (AT+VTR and AT+VTR=? answer ERROR); "
                   "the appliance then works as an answering machine (docs/line.md).")
@click.option("--echo", "echo", default="off", show_default=True, metavar="off|on|ERL[,TAIL]",
              help="Model the line's hybrid: what the host plays returns in what it receives, "
                   "ERL dB down through a TAIL ms impulse response (on: 10 dB, 16 ms).")
@click.option("--no-vtr-test", "no_vtr_test", is_flag=True,
              help="Answer ERROR to the test command AT+VTR=? but accept AT+VTR, as many "
                   "real modems do (docs/line.md).")
@click.option("--hangup-report", type=click.Choice(["busy", "silence", "none"]),
              default=None, help="How the far end's hang-up is reported: <DLE>b once the busy "
              "cadence is recognised (busy), only <DLE>s after the busy tone (silence), or not "
              "at all (none). [default: busy]")
@click.option("--busy-detect", "busy_detect_s", type=click.FloatRange(min=0.0), default=None,
              help="Seconds of busy tone before <DLE>b. [default: the dialect's, 1.5–2.0]")
@click.option("--json", "as_json", is_flag=True,
              help="JSON lines on stdout: {event: serving, pty, …}, then one per script step.")
@click.option("--verbose", "-v", is_flag=True, help="Log the emulator's work on stderr.")
def sim_modem(dialect: str | None, profile: str | None, script_path: Path | None,
              link: Path | None, force: bool, ring_period_s: float, half_duplex: bool,
              echo: str, no_vtr_test: bool, hangup_report: str | None,
              busy_detect_s: float | None, as_json: bool, verbose: bool) -> None:
    """Serve the emulated V.253 voice modem on a pty until Ctrl-C or SIGTERM.

    The first line on stdout is the pty path: point any modem software at it (vgetty with
    port pts/N and toggle-dtr no, or `appliance run` with lines[0].device set to it). With
    --script the emulator rings and plays the scripted callers against whatever opened it.
    """
    from appliance.logs import setup_logging

    setup_logging("INFO" if verbose else "WARNING")
    if dialect is None:
        dialect = _PROFILE_DIALECT[profile] if profile else "cx93010"
    from appliance.audio.hybrid import LINE_ERL_DB, LINE_TAIL_MS, HybridSpec, parse_hybrid

    try:
        echo_spec = parse_hybrid(echo, default=HybridSpec(LINE_ERL_DB, LINE_TAIL_MS))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--echo") from exc
    script = None
    if script_path is not None:
        from appliance.sim.modem.script import load_script

        try:
            script = load_script(script_path)
        except ConfigError as exc:
            click.echo(f"appliance: script error: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
    _claim_link(link, force)
    asyncio.run(_serve(dialect, script, link, ring_period_s, as_json,
                       half_duplex=half_duplex, echo=echo_spec, vtr_test=not no_vtr_test,
                       hangup={k: v for k, v in (("hangup_report", hangup_report),
                                                 ("busy_detect_s", busy_detect_s))
                               if v is not None}))


async def _serve(dialect: str, script: Any, link: Path | None, ring_period_s: float,
                 as_json: bool, *, half_duplex: bool = False,
                 echo: HybridSpec | None = None, vtr_test: bool = True,
                 hangup: dict[str, Any] | None = None) -> None:
    from appliance.sim.modem.emulator import SimModem
    from appliance.sim.modem.exchange import CID_DELAY_S
    from appliance.sim.modem.pty import PtyModemServer
    from appliance.sim.modem.script import ScriptedCallResult, play_script

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sim = SimModem(DIALECTS[dialect], ring_period_s=ring_period_s,
                   cid_delay_s=min(CID_DELAY_S, ring_period_s / 2), echo=echo)
    sim.profile = dataclasses.replace(sim.profile, full_duplex=not half_duplex,
                                      vtr_test_command=vtr_test, **(hangup or {}))
    server = PtyModemServer(sim)
    path = await server.start()
    t0 = loop.time()

    def out(data: dict[str, Any], text: str) -> None:
        # stdout carries the path (and JSON lines); human progress goes to stderr.
        if as_json:
            click.echo(json.dumps(data, ensure_ascii=False))
        else:
            click.echo(text, err=True)

    def on_event(kind: str, detail: dict[str, Any]) -> None:
        t = loop.time() - t0
        pairs = " ".join(f"{k}={v}" for k, v in detail.items() if v not in (None, False))
        out({"event": kind, "t_s": round(t, 3), **detail}, f"{t:8.2f}s  {kind:<13} {pairs}")

    player: asyncio.Task[list[ScriptedCallResult]] | None = None
    try:
        try:
            _link(link, path)
        except FileExistsError:
            fail(f"{link} appeared while starting; left alone")
        if as_json:
            click.echo(json.dumps({"event": "serving", "pty": path, "dialect": dialect,
                                   "full_duplex": not half_duplex,
                                   "vtr_test_command": vtr_test,
                                   "hangup_report": sim.profile.hangup_report,
                                   "busy_detect_s": sim.profile.busy_detect_s,
                                   "link": str(link) if link else None}))
        else:
            click.echo(path)
            click.echo(f"serving the emulated {dialect} modem"
                       + (" (half duplex: no +VTR)" if half_duplex else "")
                       + (" (AT+VTR=? refused, AT+VTR works)" if not vtr_test
                          and not half_duplex else "")
                       + (f", linked as {link}" if link else "")
                       + ("; playing the script" if script else "") + "; Ctrl-C stops",
                       err=True)
        if script is not None:
            player = asyncio.create_task(play_script(sim, script, on_event=on_event),
                                         name="sim-modem-script")

            def summary(task: asyncio.Task[list[ScriptedCallResult]]) -> None:
                if task.cancelled():
                    return
                if task.exception() is not None:
                    click.echo(f"appliance: script failed: {task.exception()}", err=True)
                    return
                for r in task.result():
                    out({"event": "result", **r.as_dict()},
                        f"call {r.index}: " + ("answered" if r.answered else "unanswered")
                        + (f", keys {r.keys_sent}" if r.keys_sent else "")
                        + f", heard {r.heard_s:.1f} s of the host")

            player.add_done_callback(summary)
        await stop.wait()
    finally:
        if player is not None:
            player.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await player
        _unlink_ours(link, path)
        await server.stop()


# --- modem probe -----------------------------------------------------------------------------


@dataclass(slots=True)
class ProbeReport:
    """What ``modem probe`` found (JSON-ready via :meth:`as_dict`)."""

    device: str
    chipset: str = "generic"
    ati0: list[str] = field(default_factory=list)
    ati3: list[str] = field(default_factory=list)
    voice_formats: list[dict[str, Any]] = field(default_factory=list)
    """One per ``+VSM=?`` line: cml, name, bits, rates, format (None if unusable)."""
    chosen_format: dict[str, Any] | None = None
    vls_labels: list[str] = field(default_factory=list)
    full_duplex: bool | None = None
    """True: ``AT+VTR=?`` answered OK or ``AT+VTR`` connected (``--try-vtr``); False:
    ``AT+VTR`` refused; None: not known (a refused test command proves nothing)."""
    duplex_evidence: str = "not asked"
    """What :attr:`full_duplex` rests on, in words."""
    caller_id: str | None = None
    """The ``AT+VCID=?`` range, None if refused."""
    country: str | None = None
    countries: str | None = None
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return asdict(self)


async def probe_modem(device: str, *, timeout_s: float = PROBE_TIMEOUT_S,
                      try_vtr: bool = False,
                      audio_formats: tuple[str, ...] | None = None) -> ProbeReport:
    """Open ``device`` (tty path, ``socket://…`` or ``sim://profile``) and ask what it supports.

    With ``try_vtr``, a modem that does not answer ``AT+VTR=?`` with OK is taken off-hook
    for a moment (``AT+VLS``, ``AT+VTR``, ``<DLE>^``, ``AT+VLS=0``) to find out whether it
    has full duplex: the only test that counts (docs/line.md). ``audio_formats`` is the
    line's order of preference (default: the driver's), for "would use" and its reason.

    Raises:
        ModemGone: the port cannot be opened (missing, or locked by another program).
        ModemError: the modem does not answer at all.
    """
    from appliance.line.at import AtProtocol
    from appliance.line.commands import (
        DEFAULT_FORMAT_PREFERENCE,
        choose_voice_format,
        detect_chipset,
        explain_voice_format,
        parse_vsm_list,
    )
    from appliance.line.transport import open_transport

    wire_emulator((device,))
    transport, at = await open_transport(device, lambda: AtProtocol(command_timeout_s=timeout_s))
    report = ProbeReport(device)

    async def ask(cmd: str) -> list[str] | None:
        try:
            return await at.command(cmd)
        except ModemCommandError as exc:
            report.errors.append(f"{cmd} → {exc.result}")
            return None

    try:
        # Echo off and verbose results first, so information lines are the modem's answers.
        await at.command("ATE0")
        await at.command("ATV1")
        report.ati0 = await ask("ATI0") or []
        report.ati3 = await ask("ATI3") or []
        report.chipset = detect_chipset(report.ati0, report.ati3)
        report.country = _bare(await ask("AT+GCI?"), "+GCI")
        report.countries = _bare(await ask("AT+GCI=?"), "+GCI")
        # docs/v253.md §3: voice commands answer ERROR unless +FCLASS=8.
        if await ask("AT+FCLASS=8") is not None:
            entries = parse_vsm_list(await ask("AT+VSM=?") or [])
            report.voice_formats = [
                {"cml": e.cml, "name": e.name, "bits": e.bits, "rates": list(e.rates),
                 "format": e.fmt} for e in entries
            ]
            order = audio_formats or DEFAULT_FORMAT_PREFERENCE
            chosen = choose_voice_format(entries, order=order)
            if chosen is not None:
                report.chosen_format = {"cml": chosen[0], "format": chosen[1],
                                        "reason": explain_voice_format(entries, chosen[1],
                                                                       order)}
            report.vls_labels = await ask("AT+VLS=?") or []
            if await ask("AT+VTR=?") is not None:
                report.full_duplex = True
                report.duplex_evidence = "AT+VTR=? answered OK"
            else:
                report.duplex_evidence = ("AT+VTR=? refused, which proves nothing (test "
                                          "commands are optional); the daemon's first call "
                                          "tries AT+VTR")
                if try_vtr and chosen is not None:
                    await _try_vtr(at, report, chosen, ask)
            report.caller_id = _bare(await ask("AT+VCID=?"), "+VCID")
            await ask("AT+FCLASS=0")  # idle in data class, as the daemon and vgetty do
    finally:
        transport.close()
    return report


async def _try_vtr(at: Any, report: ProbeReport, chosen: tuple[int, str],
                   ask: Any) -> None:
    """Go off-hook for a moment and try ``AT+VTR``; back on-hook whatever happens."""
    from appliance.line.codec import DLE_END_DUPLEX
    from appliance.line.commands import choose_line_label, parse_vls_list

    cml, fmt = chosen
    if await ask(f"AT+VSM={cml},8000") is None:
        return
    at.set_voice_format(fmt)
    label = choose_line_label(parse_vls_list(report.vls_labels))
    try:
        if await ask(f"AT+VLS={label}") is None:
            return
        try:
            await at.command("AT+VTR", expect=("CONNECT",))
        except ModemCommandError as exc:
            report.full_duplex = False
            report.duplex_evidence = f"AT+VTR refused off-hook ({exc.result})"
            report.errors.append(f"AT+VTR → {exc.result}")
        else:
            report.full_duplex = True
            report.duplex_evidence = "AT+VTR=? refused, but AT+VTR connected off-hook"
            await at.stop_voice(DLE_END_DUPLEX)
    finally:
        await ask("AT+VLS=0")


def _bare(lines: list[str] | None, prefix: str) -> str | None:
    """The value of a one-line answer, without a ``+CMD:`` prefix (docs/v253.md §3)."""
    if not lines:
        return None
    value = lines[0].strip()
    if value.upper().startswith(prefix + ":"):
        value = value[len(prefix) + 1 :].strip()
    return value


def port_lock_holder(device: str, lock_dirs: tuple[Path, ...] = UUCP_LOCK_DIRS) -> int | None:
    """The pid holding a live UUCP lock (``LCK..ttyACM0``) on ``device``, else None.

    mgetty, minicom and ModemManager-era tools lock this way (mgetty: ``LCK..pts_N`` for
    ``/dev/pts/N``); a lock whose process is gone is stale and ignored.
    """
    if not device.startswith("/"):
        return None
    names = {Path(device).name}
    if device.startswith("/dev/"):
        names.add(device[len("/dev/") :].replace("/", "_"))
        with contextlib.suppress(OSError):
            names.add(Path(os.path.realpath(device)).name)
    for folder in lock_dirs:
        for name in names:
            try:
                text = (folder / f"LCK..{name}").read_text(encoding="ascii", errors="replace")
            except OSError:
                continue
            try:
                pid = int(text.split()[0])
            except (ValueError, IndexError):
                continue
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            except PermissionError:
                pass  # alive, owned by someone else
            return pid
    return None


def _daemon_answers(state_dir: Path) -> bool:
    from appliance.daemon.control import socket_path

    path = socket_path(state_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return False  # no socket, or a stale one from a killed daemon
        except OSError:
            return path.exists()  # e.g. no permission: a daemon we may not talk to
    return True


@click.group()
def modem() -> None:
    """Inspect the voice modem."""


@modem.command("probe")
@click.option("--device", help="Port to probe (tty path, socket://host:port or sim://dialect); "
                               "default: the first line's device from the configuration.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=PROBE_TIMEOUT_S,
              show_default=True, help="Seconds to wait for each answer.")
@click.option("--try-vtr", "try_vtr", is_flag=True,
              help="If AT+VTR=? is refused, take the line off-hook for a moment and try "
                   "AT+VTR itself (the line is busy for callers meanwhile).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_obj
def probe(obj: Any, device: str | None, timeout_s: float, try_vtr: bool,
          as_json: bool) -> None:
    """Ask the modem what it is and what it supports: dialect, firmware strings, voice
    formats, +VLS labels, full duplex, caller ID, country.

    Needs the port to itself: refuses (exit 1) while the daemon runs or the port is locked.
    """
    from appliance.errors import ModemGone

    config = obj.config()
    if _daemon_answers(config.device.state_dir):
        click.echo("appliance: the daemon is running and owns the modem — stop it first "
                   "(sudo systemctl stop appliance); `appliance status` shows the modem it "
                   "found", err=True)
        sys.exit(1)
    if device is None:
        if not config.lines:
            click.echo("appliance: no [[lines]] configured; give --device", err=True)
            sys.exit(1)
        device = config.lines[0].device
    # The formats in the order of the line that uses this device (its own preference).
    audio_formats = next((line.audio_formats for line in config.lines
                          if line.device == device), None)
    holder = port_lock_holder(device)
    if holder is not None:
        click.echo(f"appliance: {device} is locked by process {holder} (mgetty, minicom or "
                   "another tool); stop it first", err=True)
        sys.exit(1)
    started = time.monotonic()
    try:
        report = asyncio.run(probe_modem(device, timeout_s=timeout_s, try_vtr=try_vtr,
                                         audio_formats=audio_formats))
    except ModemGone as exc:
        reason = str(exc)
        if "lock" in reason.lower() or "busy" in reason.lower():
            click.echo(f"appliance: {device} is in use by another program: {reason}", err=True)
        else:
            click.echo(f"appliance: {reason}", err=True)
        sys.exit(1)
    except (ModemError, ConfigError) as exc:
        click.echo(f"appliance: {device}: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
        return
    _print_report(report, time.monotonic() - started)


def _print_report(r: ProbeReport, took_s: float) -> None:
    def row(key: str, value: str) -> None:
        click.echo(f"{key:<15} {value}")

    row("device", r.device)
    row("dialect", f"{r.chipset} (ATI0 {' '.join(r.ati0) or '—'})")
    row("firmware", " / ".join(r.ati3) or "—")
    if r.voice_formats:
        for i, f in enumerate(r.voice_formats):
            usable = f["format"] or "not usable"
            row("voice formats" if i == 0 else "",
                f"{f['cml']:>3} {f['name']} ({f['bits']} bit) → {usable}")
    else:
        row("voice formats", "none (no voice mode: AT+FCLASS=8 or AT+VSM=? refused)")
    chosen = r.chosen_format
    row("would use", f"AT+VSM={chosen['cml']},8000 ({chosen['format']}): {chosen['reason']}"
        if chosen else "— (nothing usable in lines[].audio_formats is offered)")
    row("+VLS labels", "; ".join(r.vls_labels) or "—")
    if r.full_duplex:
        row("full duplex", f"yes ({r.duplex_evidence}) — the bridge can carry both voices")
    elif r.full_duplex is None:
        row("full duplex", f"not known: {r.duplex_evidence}; `--try-vtr` finds out now, "
                           'lines[].duplex = "full" or "half" says it')
    else:
        row("full duplex", f"NO ({r.duplex_evidence}) — the shop cannot talk to callers "
                           "through this modem; "
                           "the appliance is then an answering machine behind the phone "
                           "(notice, reference, message; docs/line.md)")
    row("caller ID", f"yes, AT+VCID {r.caller_id}" if r.caller_id else "no (AT+VCID refused)")
    country = r.country or "—"
    hint = "" if (r.country or "").upper() == "51" else " (Hungary is 51: AT+GCI=51)"
    row("country", f"{country}{hint}")
    if r.countries:
        row("countries", r.countries)
    for err in r.errors:
        row("refused", err)
    click.echo(f"probed in {took_s:.1f} s")
