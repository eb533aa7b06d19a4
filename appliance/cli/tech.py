"""The technician's live commands: ``status``, ``play``, ``logs``, ``doctor``.

``status`` and ``play`` talk to the running daemon over its control socket (the daemon alone
owns the hardware); ``doctor`` checks everything a box needs and prints one pass/fail line per
check with the fix; ``logs`` filters the journal by call reference.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import click

# `status` exits EXIT_NOT_RUNNING when the daemon is not running (as `systemctl status` does).
from appliance.cli.context import DAMAGED_HINT, EXIT_NOT_RUNNING

MIN_FREE_HOURS = 24.0


def register(group: click.Group) -> None:
    group.add_command(status)
    group.add_command(play)
    group.add_command(logs)
    group.add_command(doctor)


def _ask_daemon(obj: Any, payload: dict[str, Any], *, exit_if_denied: bool = True
                ) -> dict[str, Any] | None:
    """The daemon's reply, or None when it is not running.

    Without permission on the socket: a message and exit 1, or with ``exit_if_denied`` False
    the PermissionError (doctor reports it as a failed check)."""
    from appliance.daemon.control import request, socket_path

    path = socket_path(obj.config().device.state_dir)
    try:
        return request(path, payload)
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    except PermissionError:
        if not exit_if_denied:
            raise
        click.echo(f"appliance: no permission to use {path} — run as the appliance user "
                   "(appliancectl) or join the 'appliance' group", err=True)
        sys.exit(1)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="The daemon's full state as JSON.")
@click.pass_obj
def status(obj: Any, as_json: bool) -> None:
    """Live state from the running daemon: lines, call in progress, LEDs, disk, audio.

    Exit code 3 when the daemon is not running.
    """
    reply = _ask_daemon(obj, {"cmd": "status"})
    if reply is None:
        if as_json:
            click.echo(json.dumps({"running": False}))
        else:
            click.echo("daemon not running (no control socket) — start it with "
                       "`sudo systemctl start appliance` or run `appliance run`")
        sys.exit(EXIT_NOT_RUNNING)
    if not reply.get("ok"):
        click.echo(f"appliance: daemon error: {reply.get('error')}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(reply, ensure_ascii=False, indent=2))
        return
    from appliance.text import printable

    click.echo(f"{reply['status']}   (pid {reply['pid']}, up {reply['uptime_s']:.0f} s, "
               f"version {reply['version']})")
    for line in reply["lines"]:
        state = line["state"] + (f" — FAULT: {line['fault']}" if line["fault"] else "")
        click.echo(f"line {line['name']:<8} {state}; modem {line['chipset'] or '—'} "
                   f"({line['voice_format'] or '—'}) link {line['link']} on {line['device']}")
        if line.get("audio", "modem") == "modem" and line.get("duplex_evidence"):
            click.echo(f"  full duplex {_DUPLEX_WORD[line.get('duplex')]}: "
                       f"{line['duplex_evidence']}")
        call = line["call"]
        if call:
            media = call["media"]
            click.echo(f"  call {call['reference']} {call['state']} from "
                       f"{printable(call['caller'] or 'unknown')}; frames rx {media['rx_frames']} "
                       f"tx {media['tx_frames']} recorded {media['recorded_frames']}; "
                       f"handset underruns {media['underruns']} overruns {media['overruns']}")
            if call.get("echo"):
                click.echo(f"  {echo_words(call['echo'])}")
    outbound = reply.get("outbound")
    if outbound:
        click.echo(f"outbound {outbound['state']} {outbound.get('number') or ''} on line "
                   f"{outbound.get('line') or '—'} (reference {outbound.get('reference') or '—'})")
    handset = reply["handset"]
    click.echo(f"handset  {'off-hook' if handset['off_hook'] else 'on-hook'}"
               f"{', ringing' if handset['ringing'] else ''}; audio underruns "
               f"{handset['audio'].get('underruns', 0)} overruns "
               f"{handset['audio'].get('overruns', 0)}")
    click.echo("LEDs     " + ", ".join(f"{k} {v}" for k, v in reply["panel"].items()))
    click.echo(f"relay    {reply['bypass_relay']}")
    last = reply["last_call"]
    if last:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(last["ring_at"] or 0))
        click.echo(f"last     {last['reference']} at {when} from "
                   f"{printable(last['caller'] or 'unknown')}"
                   f" ({last['outcome']}, {last['recording_decision']})")
    disk = reply["disk"]
    click.echo(f"disk     {disk['free_bytes'] / 1e9:.1f} GB free ≈ "
               f"{disk['recording_hours_left']:.0f} h of recording")
    if reply.get("loop_lag_ms") is not None:
        click.echo(f"loop lag {reply['loop_lag_ms']} ms (max {reply['loop_lag_max_ms']} ms)")
    if reply.get("speech_warning"):
        click.echo(f"speech   {reply['speech_warning']}")
    _archive_status(obj)
    _web_status(obj)


def _web_status(obj: Any) -> None:
    """The owner's page's line: where it is and its certificate's fingerprint, so the owner
    can compare it with what the browser shows (docs/web.md "HTTPS")."""
    from appliance.web.tls import cert_paths, fingerprint

    config = obj.config()
    if not config.web.tls:
        click.echo(f"web      http://{config.web.listen}:{config.web.port}/ (loopback only)")
        return
    try:
        print_ = fingerprint(cert_paths(config.web_dir)[0])
    except (OSError, ValueError):
        print_ = None
    click.echo(f"web      https://{_hostname()}.local/  certificate SHA-256 "
               f"{print_ or '— (none yet: appliance web cert)'}")


def _hostname() -> str:
    import socket

    return socket.gethostname().split(".")[0]


def _archive_status(obj: Any) -> None:
    """The archive queue's line (docs/archive.md), read from the index: the uploader is its
    own process, the daemon knows nothing of it."""
    from appliance.archive.queue import has_tables, summary
    from appliance.cli.archive import format_summary
    from appliance.store.db import _connect

    config = obj.config()
    if not config.archive.enabled or not config.db_path.exists():
        return
    conn = _connect(config.db_path)
    try:
        info = summary(conn) if has_tables(conn) else None
    finally:
        conn.close()
    click.echo(format_summary(info).replace("archive: ", "archive  ", 1))


@click.command()
@click.argument("reference")
@click.pass_obj
def play(obj: Any, reference: str) -> None:
    """Play a call's recording into the shop's handset (only while no call is in progress)."""
    from appliance.store.audit import current_actor

    reply = _ask_daemon(obj, {"cmd": "play", "reference": reference,
                              "actor": current_actor()})
    if reply is None:
        click.echo("appliance: the daemon is not running; it alone drives the handset", err=True)
        sys.exit(EXIT_NOT_RUNNING)
    if not reply.get("ok"):
        click.echo(f"appliance: {reply.get('error')}", err=True)
        sys.exit(1)
    click.echo(f"{reply['reference']}: {reply['seconds']:.1f} s — {reply['message']}")


@click.command()
@click.argument("reference", required=False)
@click.option("--lines", "-n", default=200, show_default=True, help="How many journal lines.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines.")
@click.pass_obj
def logs(obj: Any, reference: str | None, lines: int, follow: bool) -> None:
    """The daemon's journal, optionally only the lines of one call (REFERENCE).

    Every call-related log line carries the call reference, so this is the call's story.
    """
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        click.echo("appliance: journalctl not found (no systemd journal on this machine)",
                   err=True)
        sys.exit(1)
    cmd = [journalctl, "-u", "appliance", "-o", "short-iso", "--no-pager"]
    if follow:
        cmd.append("--follow")
    if reference:
        from appliance.errors import ReferenceFormatError
        from appliance.reference import parse_reference

        try:
            digits = parse_reference(reference)
        except ReferenceFormatError as exc:
            click.echo(f"appliance: {exc}", err=True)
            sys.exit(1)
        cmd += ["--grep", digits]
    else:
        cmd += ["-n", str(lines)]
    sys.exit(subprocess.call(cmd))


# --- doctor ----------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    level: str  # "pass" | "warn" | "fail"
    detail: str
    fix: str = ""


def _checks(obj: Any) -> list[Check]:
    from appliance.config import Config

    config: Config = obj.config()  # exits 78 with the key on a broken configuration
    out = [Check("config", "pass", "configuration is valid")]
    state = config.device.state_dir
    if not state.exists():
        out.append(Check("state dir", "warn", f"{state} does not exist yet",
                         "it is created at first start; or set --state-dir"))
    elif not os.access(state, os.W_OK | os.X_OK):
        out.append(Check("state dir", "fail", f"{state} is not writable by {os.getuid()}",
                         f"sudo chown -R appliance:appliance {state}"))
    else:
        mode = state.stat().st_mode & 0o777
        level = "pass" if not mode & 0o007 else "warn"
        out.append(Check("state dir", level, f"{state} mode {mode:o}",
                         "" if level == "pass" else f"chmod 0770 {state} (recordings are "
                         "personal data)"))
    out.extend(_check_index(config.db_path))
    out.extend(_check_recordings(config.recordings_dir))
    try:
        status = _ask_daemon(obj, {"cmd": "status"}, exit_if_denied=False)
    except PermissionError as exc:
        status = None
        out.append(Check("daemon", "fail", f"cannot ask the daemon: {exc.strerror}",
                         _AS_SERVICE_FIX))
    else:
        if status is None:
            out.append(Check("daemon", "warn", "not running",
                             "sudo systemctl start appliance; journalctl -u appliance"))
    for line in config.lines:
        out.append(_check_modem(line.name, line.device, status))
        if line.audio:  # the line's own sound card
            out.append(_check_audio(line.audio, f"line {line.name} audio", "lines[].audio",
                                    status))
    out.append(_check_audio(config.handset.audio, status=status))
    out.append(_check_pins(config.gpio.pin_factory, status))
    out.append(_check_voice(config))
    out.append(_check_disk(state if state.exists() else state.parent, config.recording.codec,
                           config.recording.min_free_mb))
    out.append(_check_clock())
    out.append(_check_web(config))
    from appliance.archive.doctor import archive_findings  # docs/archive.md

    out.extend(Check(*finding) for finding in archive_findings(config))
    return out


def _check_web(config: Any) -> Check:
    """The owner's page's certificate, with the fingerprint the owner compares."""
    from appliance.web.tls import cert_paths, fingerprint

    if not config.web.tls:
        return Check("web page", "pass", f"plain HTTP on {config.web.listen} (loopback only)")
    cert = cert_paths(config.web_dir)[0]
    try:
        print_ = fingerprint(cert)
    except (OSError, ValueError) as exc:
        return Check("web page", "fail", f"{cert}: {exc}",
                     "sudo appliance-webctl web cert --force")
    if print_ is None:
        return Check("web page", "warn", f"no TLS certificate at {cert}",
                     "sudo appliance-webctl web cert (setup.sh install makes it)")
    return Check("web page", "pass", f"https://{_hostname()}.local/ certificate SHA-256 {print_}")


#: The fix for a check that could not read what it checks: the service user can.
_AS_SERVICE_FIX = ("run the check as the service user: sudo appliancectl doctor (or "
                   "sudo -u appliance appliance doctor)")


def _check_index(path: Path) -> list[Check]:
    """The index opens, passes quick_check, lists its calls, and knows every reference issued
    (its counter is not behind the high-water mark kept beside the device key,
    docs/records.md); none yet is not a failure unless references were issued.

    What cannot be read is a failure, never a skipped check: the probe is a stat that tells
    "not there" (ENOENT) from "may not look" (EACCES).
    """
    from appliance.errors import StoreError
    from appliance.store.highwater import read_mark

    try:
        mark = read_mark(path.parent)
    except StoreError as exc:
        denied = isinstance(exc.__cause__, PermissionError)
        return [Check("index", "fail", str(exc), _AS_SERVICE_FIX if denied
                      else "restore reference.counter from a backup")]
    try:
        path.stat()
    except FileNotFoundError:
        if mark:
            return [Check("index", "fail", f"{path} is missing but {mark} references were "
                          "issued (the daemon does not answer)", DAMAGED_HINT)]
        return [Check("index", "pass", f"no index yet at {path} (created at the first call)")]
    except OSError as exc:
        return [Check("index", "fail", f"cannot read {path}: {exc.strerror}", _AS_SERVICE_FIX)]
    try:
        from appliance.store.db import Store

        store = Store.open(path)
        try:
            n = store.count_calls()
            issued = store.counter()
        finally:
            store.close_sync()
    except Exception as exc:
        from appliance.cli.context import classify_store_error

        what, fix = classify_store_error(path, exc, hint=_AS_SERVICE_FIX)
        return [Check("index", "fail", what, fix or DAMAGED_HINT)]
    if mark is not None and issued < mark:
        return [Check("index", "fail", f"{path} was lost or replaced: it knows {issued} "
                      f"references, {mark} were issued (the daemon does not answer)",
                      DAMAGED_HINT)]
    return [Check("index", "pass", f"{path} ok, {n} calls")]


def _check_recordings(path: Path) -> list[Check]:
    """A recordings tree this user cannot list or write is a failure; none yet is fine."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return []
    except OSError as exc:
        return [Check("recordings", "fail", f"cannot look into {path}: {exc.strerror}",
                      _AS_SERVICE_FIX)]
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        return [Check("recordings", "fail", f"{path} is not readable and writable by uid "
                      f"{os.getuid()}", _AS_SERVICE_FIX)]
    return []


#: How ``status``/``doctor`` name a line's full-duplex finding (``Modem.full_duplex``).
_DUPLEX_WORD: Final = {True: "yes", False: "no", None: "not known yet"}


def _check_modem(name: str, device: str, status: dict[str, Any] | None) -> Check:
    label = f"modem {name}"
    if status is not None and status.get("ok"):
        line = next((x for x in status["lines"] if x["name"] == name), None)
        if line and line.get("fault_code") == "line-off-hook":
            return Check(label, "fail", f"{device}: {line['fault']}",
                         "the relay has put the phone on the line; unplug and re-plug the "
                         "modem (a power cycle releases the line); the daemon retries by "
                         "itself and clears the fault once the line is on-hook")
        if line and line["link"] == "connected":
            on_modem = line.get("audio", "modem") == "modem"
            evidence = line.get("duplex_evidence") or "AT+VTR refused"
            if line.get("duplex") is False and on_modem:
                # without +VTR the bridge cannot carry the shop's voice.
                return Check(label, "warn", f"{line['chipset']} answers on {device} but has "
                             f"no full-duplex voice ({evidence}): the shop cannot talk to "
                             "callers through it, so the box only takes messages after the "
                             "phone has rung" + (f"; {line['fault']}" if line.get("fault")
                                                 else ""),
                             "use a full-duplex modem (`appliance modem probe` shows it) or "
                             "set lines[].audio to the line's sound card")
            duplex = (f"; full duplex {_DUPLEX_WORD[line.get('duplex')]} ({evidence})"
                      if on_modem and line.get("duplex_evidence") else "")
            return Check(label, "pass", f"{line['chipset']} ({line['voice_format']}) answers "
                         f"on {device}{duplex}")
        return Check(label, "fail", f"{device}: {line['fault'] if line else 'unknown line'}",
                     "check the USB cable and `ls -l /dev/serial/by-id/`; the udev rule "
                     "hw/99-appliance-modem.rules gives /dev/appliance-modem")
    if device.startswith("sim://"):
        return Check(label, "pass", "built-in emulated modem (sim://)")
    if not Path(device).exists():
        return Check(label, "fail", f"{device} does not exist",
                     "plug in the modem; `ls -l /dev/serial/by-id/`; set lines[].device")
    if not os.access(device, os.R_OK | os.W_OK):
        return Check(label, "fail", f"no permission on {device}",
                     "add the user to the dialout group (setup.sh install does)")
    return Check(label, "pass", f"{device} present (start the daemon for a full check)")


def _check_audio(url: str, label: str = "handset audio", key: str = "handset.audio",
                 status: dict[str, Any] | None = None) -> Check:
    """The sound card: while the daemon runs it holds the card (opening it here could only
    fail with "busy", or for a user without the audio group — the owner's page), so its own
    report decides; otherwise the card must open at 8 kHz mono."""
    if url == "sim://":
        return Check(label, "pass", "simulated handset (sim://)")
    device = url.removeprefix("alsa:")
    if status is not None:
        fault = next((f for f in status.get("faults") or [] if str(f).startswith(label)), None)
        if fault:
            return Check(label, "fail", f"the daemon reports: {fault}",
                         f"`aplay -l` lists the cards; set {key} = \"alsa:plughw:CARD=…\"")
        return Check(label, "pass", f"{device} in use by the daemon")
    try:
        import sounddevice as sd

        sd.check_output_settings(device=device, samplerate=8000, channels=1, dtype="int16")
        sd.check_input_settings(device=device, samplerate=8000, channels=1, dtype="int16")
    except Exception as exc:
        return Check(label, "fail", f"{device}: {exc}",
                     f"`aplay -l` lists the cards; set {key} = \"alsa:plughw:CARD=…\"")
    return Check(label, "pass", f"{device} opens at 8 kHz mono")


def _check_pins(name: str, status: dict[str, Any] | None) -> Check:
    if status is not None:
        return Check("gpio", "pass", f"pin factory {name or 'auto'} in use by the daemon")
    try:
        from appliance.daemon.app import make_pin_factory

        factory = make_pin_factory(name)
        if factory is not None:
            factory.close()
    except Exception as exc:
        return Check("gpio", "fail", f"pin factory {name or 'auto'}: {exc}",
                     "on a Pi: sudo ./setup.sh install (lgpio); elsewhere gpio.pin_factory = "
                     "\"mock\"")
    return Check("gpio", "pass", f"pin factory {name or 'auto'} loads")


def _check_voice(config: Any) -> Check:
    from appliance.languages.registry import for_config
    from appliance.speech.tts import espeak_available, select_engine

    if not espeak_available():
        return Check("speech", "fail", "espeak-ng is not installed (the fallback voice)",
                     "sudo apt-get install espeak-ng")
    engine, warning = select_engine(config.device.language, config.speech.voice,
                                    speed_wpm=config.speech.espeak_wpm,
                                    languages=for_config(config))
    if warning:
        return Check("speech", "warn", warning,
                     "sudo ./setup.sh install downloads the Hungarian Piper voice; or set "
                     "speech.voice")
    return Check("speech", "pass", f"voice {engine.voice_id}")


def _check_disk(path: Path, codec: str, min_free_mb: int) -> Check:
    from appliance.daemon.status import BYTES_PER_HOUR
    from appliance.daemon.storage import BYTES_PER_MB

    free = shutil.disk_usage(path).free
    hours = free / BYTES_PER_HOUR.get(codec, BYTES_PER_HOUR["wav"])
    detail = f"{free / 1e9:.1f} GB free ≈ {hours:.0f} h of {codec} recording"
    if free < min_free_mb * BYTES_PER_MB:
        # below the floor the daemon answers without recording.
        return Check("disk", "fail", f"{detail}: below recording.min_free_mb = {min_free_mb}, "
                     "calls are answered but NOT recorded",
                     "appliance purge; a larger SD card")
    level = "pass" if hours >= MIN_FREE_HOURS else "fail"
    return Check("disk", level, detail,
                 "" if level == "pass" else "appliance purge; a larger SD card")


def _check_clock() -> Check:
    marker = Path("/run/systemd/timesync/synchronized")
    if marker.exists():
        return Check("clock", "pass", "synchronised by systemd-timesyncd")
    if marker.parent.exists():
        return Check("clock", "warn", "not (yet) synchronised — call times may be wrong",
                     "check the network and `timedatectl timesync-status`")
    return Check("clock", "warn", "synchronisation unknown (no systemd-timesyncd)",
                 "install systemd-timesyncd or chrony; a Pi has no battery clock")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON list of checks.")
@click.pass_obj
def doctor(obj: Any, as_json: bool) -> None:
    """Check everything the box needs; one line per check with the fix. Exit 1 on a failure."""
    checks = _checks(obj)
    failed = any(c.level == "fail" for c in checks)
    if as_json:
        click.echo(json.dumps([asdict(c) for c in checks], ensure_ascii=False, indent=2))
    else:
        for c in checks:
            mark = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}[c.level]
            click.echo(f"{mark}  {c.name:<14} {c.detail}")
            if c.fix and c.level != "pass":
                click.echo(f"      {'':<14} fix: {c.fix}")
    sys.exit(1 if failed else 0)


def echo_words(echo: dict[str, Any]) -> str:
    """A call's echo cancellers for ``status``: each one's ERLE now, or why there is none."""
    def one(path: str) -> str:
        if not echo.get(f"{path}_echo_cancel"):
            return f"{path} off"
        erle = echo.get(f"{path}_erle_db")
        return f"{path} learning" if erle is None else f"{path} ERLE {erle:.0f} dB"

    return "echo cancelled: " + ", ".join(one(path) for path in ("line", "handset"))
