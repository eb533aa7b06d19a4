"""The ``appliance`` command: the daemon, the demo, and the technician's tools.

Exit codes: see :mod:`appliance.cli.context` (also printed by ``appliance --help``).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from appliance import __version__
from appliance.cli.context import (
    CONFIG_HELP,
    EXIT_CODES_HELP,
    STATE_DIR_HELP,
    CliContext,
    CommonOptionsGroup,
    guard_store_errors,
    open_store,
    row_view,
)
from appliance.config import EXIT_CONFIG
from appliance.errors import ConfigError, ReferenceFormatError
from appliance.logs import setup_logging

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=CommonOptionsGroup, context_settings=CONTEXT_SETTINGS, epilog=EXIT_CODES_HELP)
@click.version_option(__version__, prog_name="appliance")
@click.option("--config", "config_path", type=click.Path(path_type=Path), envvar="APPLIANCE_CONFIG",
              help=CONFIG_HELP)
@click.option("--state-dir", type=click.Path(path_type=Path), envvar="APPLIANCE_STATE_DIR",
              help=STATE_DIR_HELP)
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, state_dir: Path | None) -> None:
    """Call-recording telephone appliance: answers, tells the caller, records, indexes.

    \b
    Quick start:   appliance demo                 a whole simulated call
    Technician:    appliance calls | last | show REF | config show
    Service:       appliance run                  (systemd starts this)

    --config and --state-dir may also be given after the subcommand.
    """
    ctx.obj = CliContext(config_path, state_dir)


# --- the daemon ------------------------------------------------------------------------------


@cli.command()
@click.pass_obj
@guard_store_errors()
def run(obj: CliContext) -> None:
    """Run the daemon in the foreground (what the systemd service starts)."""
    config = obj.config()
    setup_logging(config.logging.level)

    from appliance.cli.modem import wire_emulator

    wire_emulator(line.device for line in config.lines)

    async def _main() -> None:
        from appliance.daemon.app import Application
        from appliance.daemon.lifecycle import (
            LoopLagMonitor,
            install_sigusr1_dump,
            ready,
            status,
            stopping,
        )

        app = Application(config, on_status=status)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        monitor = LoopLagMonitor()
        app.loop_monitor = monitor
        remove_dump = install_sigusr1_dump()
        monitor.start()
        try:
            await app.start()
            # READY after hardware init; a missing modem is a fault shown in STATUS and on
            # the LED while its supervisor keeps retrying, not a reason to fail start-up.
            ready(app.status_line())
            await stop.wait()
            stopping("stopping — finalizing any call in progress")
        finally:
            await app.stop()
            await monitor.stop()
            remove_dump()

    asyncio.run(_main())


# --- the demo --------------------------------------------------------------------------------


@cli.command()
@click.option("--scenario",
              type=click.Choice(["answered", "declined", "abandoned", "voicemail", "details",
                                 "two-lines", "outbound", "half-duplex"]),
              default="answered", show_default=True,
              help="answered: the shop talks to the caller; declined: the caller presses 9 "
                   "during the notice; abandoned: hangs up during the notice; voicemail: "
                   "nobody lifts, the caller leaves a message; details: the caller presses 0 "
                   "for the full notice, and the shop hangs up first; two-lines: two callers "
                   "on two lines share the one handset (the second holds); outbound: the shop "
                   "lifts, dials by DTMF and talks with the called customer; half-duplex: "
                   "the modem has no full duplex, so the phone rings first and the box "
                   "answers as an answering machine.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--profile", type=click.Choice(["conexant", "usr", "v253"]), default="conexant",
              show_default=True, help="Which real modem the emulator imitates.")
@click.option("--line-echo", default="on", show_default=True, metavar="off|on|ERL[,TAIL]",
              help="The modem's hybrid: the shop's voice returns in the caller channel ERL dB "
                   "down with a TAIL ms impulse response (on: 10 dB, 16 ms; docs/line.md).")
@click.option("--handset-echo", default="on", show_default=True, metavar="off|on|ERL[,TAIL]",
              help="The SLIC's hybrid: the caller's voice returns in the mouthpiece (on: "
                   "14 dB, 8 ms).")
@click.option("--verbose", "-v", is_flag=True, help="Show the daemon's log on stderr.")
@click.option("--state-dir", "demo_state_dir", type=click.Path(path_type=Path),
              help="Keep the index and recordings here (default: a new temporary directory).")
@click.option("--web", "with_web", is_flag=True,
              help="Afterwards keep the owner's page up on http://127.0.0.1:8080/ with a demo "
                   "account (Ctrl-C stops it).")
@click.option("--web-port", type=int, default=8080, show_default=True,
              help="Loopback port of the page with --web.")
@click.pass_obj
def demo(obj: CliContext, scenario: str, as_json: bool, profile: str, line_echo: str,
         handset_echo: str, verbose: bool, demo_state_dir: Path | None, with_web: bool,
         web_port: int) -> None:
    """Run one whole simulated call through the real daemon.

    The line is the V.253 modem emulator on a real pty opened by pyserial; the handset is the
    SLIC driver on simulated GPIO pins with a simulated shop assistant. The result is a real
    SQLite row and a real recording under --state-dir (a temporary directory by default).
    """
    setup_logging("INFO" if verbose else "WARNING")
    state_dir = (demo_state_dir or obj.state_dir
                 or Path(tempfile.mkdtemp(prefix="appliance-demo-")))
    from appliance.audio.hybrid import parse_hybrid
    from appliance.sim.demo import DEMO_HANDSET_ECHO, DEMO_LINE_ECHO, run_demo

    try:
        line_spec = parse_hybrid(line_echo, default=DEMO_LINE_ECHO)
        handset_spec = parse_hybrid(handset_echo, default=DEMO_HANDSET_ECHO)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc

    def on_entry(t: float, actor: str, what: str, detail: str) -> None:
        if not as_json:
            click.echo(f"{t:7.2f}s  {actor:<9} {what:<22} {detail}")

    if not as_json:
        click.echo(f"appliance demo — scenario {scenario!r}, state dir {state_dir}")
        click.echo(f"{'offset':>8}  {'who':<9} {'what':<22} detail")
    try:
        if scenario == "outbound":
            from appliance.sim.outbound_demo import run_outbound_demo

            result = asyncio.run(run_outbound_demo(state_dir, on_entry=on_entry,
                                                   profile=profile, line_echo=line_spec,
                                                   handset_echo=handset_spec))
        else:
            result = asyncio.run(run_demo(scenario, state_dir, on_entry=on_entry,
                                          profile=profile, line_echo=line_spec,
                                          handset_echo=handset_spec))
    except ConfigError as exc:
        click.echo(f"appliance: configuration error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    if as_json:
        data: Any = result.summaries if scenario == "two-lines" else result.summary
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    from appliance.text import printable

    for s in result.summaries:
        click.echo("")
        click.echo(f"Summary — line {s['line']}")
        rows = [
            ("reference", s["reference"]),
            ("caller", f"{s['caller_number']} ({s['caller_name'] or 'no name'})"),
            ("outcome", s["outcome"]),
            ("recording", s["recording_decision"]),
            ("notice completed", "yes" if s["notice_completed"] else "no"),
            ("notice", f"{s.get('notice_form')}: " + ", ".join(
                f"{layer['layer']} {layer['played']}" for layer in s.get("notice_layers", []))),
            ("time to a person", "—" if s.get("time_to_human_s") is None
             else f"{s['time_to_human_s']:.1f} s after the box answered"),
            ("recording file", s["recording_path"] or "—"),
            ("sha-256", s["recording_sha256"] or "—"),
            ("call duration", f"{s['duration_s']:.1f} s"),
            ("index", s["db_path"]),
        ]
        if s.get("speech_warning"):
            rows.append(("speech", s["speech_warning"]))
        for key, value in rows:
            click.echo(f"  {key:<17} {printable(value)}")
    click.echo("")
    click.echo(f"Look again later: appliance --state-dir {state_dir} last")
    if with_web:
        from appliance.cli.web import demo_web
        from appliance.config import load_config

        demo_web(load_config(state_dir=state_dir), port=web_port)


# --- configuration ---------------------------------------------------------------------------


@cli.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of TOML.")
@click.pass_obj
def config_show(obj: CliContext, as_json: bool) -> None:
    """Print the effective configuration (defaults + file + overrides)."""
    data = obj.config().to_dict()
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    click.echo(_to_toml(data))


def _to_toml(data: dict[str, Any]) -> str:
    """The configuration as TOML that ``load_config`` reads back; unset (None) keys left out."""
    import tomli_w

    def drop_unset(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: drop_unset(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [drop_unset(v) for v in value]
        return value

    return str(tomli_w.dumps(drop_unset(data)))


# --- reading the index -----------------------------------------------------------------------


#: The largest integer SQLite binds (a larger Python int raises OverflowError).
SQLITE_MAX_INT = 2**63 - 1


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "—"


@cli.command()
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1),
              help="Newest calls first; more than the index holds lists them all.")
@click.option("--number", help="Only calls from this caller number.")
@click.option("--line", "line_name", help="Only calls on this line.")
@click.option("--since", help="Only calls ringing at or after this (YYYY-MM-DD or ISO datetime).")
@click.option("--until", help="Only calls ringing before this (a date includes that whole day).")
# The outcomes of store.db.OUTCOMES, spelled out so `calls` does not import the store at
# start-up (tests/cli/test_records.py checks they agree).
@click.option("--outcome", type=click.Choice(["bridged", "voicemail", "abandoned", "missed",
                                              "error", "interrupted", "in_progress",
                                              "unknown"]),
              help="Only calls with this outcome.")
@click.option("--json", "as_json", is_flag=True, help="One JSON list.")
@click.pass_obj
@guard_store_errors()
def calls(obj: CliContext, limit: int, number: str | None, line_name: str | None,
          since: str | None, until: str | None, outcome: str | None, as_json: bool) -> None:
    """List calls from the index, newest first."""
    from appliance.cli.records import parse_when

    since_t = None if since is None else parse_when(since)
    until_t = None if until is None else parse_when(until, end=True)
    store = open_store(obj)
    limit = min(limit, SQLITE_MAX_INT)  # SQLite's LIMIT is a signed 64-bit integer
    raw = store.list_calls(limit, number=number, line=line_name, since=since_t, until=until_t,
                           outcome=outcome)
    rows = [row_view(r) for r in raw]
    from appliance.archive.queue import states

    archive = states(store.path, [r["reference"] for r in raw])
    if archive:  # only on a box that archives (docs/archive.md)
        for row, r in zip(rows, raw, strict=True):
            row["archive"] = archive.get(r["reference"])
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        click.echo("no calls")
        return
    from appliance.cli.records import calls_table

    calls_table(rows)


def _print_call(store: Any, row: dict[str, Any], as_json: bool) -> None:
    from appliance.archive.queue import states

    events = store.events(row["reference"])
    archive = states(store.path, [row["reference"]]).get(row["reference"])
    if as_json:
        view = row_view(row)
        view["events"] = events
        if archive is not None:
            view["archive"] = archive
        click.echo(json.dumps(view, ensure_ascii=False, indent=2))
        return
    from appliance.text import printable

    view = row_view(row)
    # Caller ID (and event details quoting it) is whatever the line sent: shown escaped.
    for key in ("reference", "line", "direction", "caller_number", "caller_name", "outcome",
                "recording_decision", "notice_completed", "notice_version", "recording_path",
                "recording_sha256", "recording_bytes", "duration_s"):
        click.echo(f"{key:<19} {printable(view.get(key))}")
    if view.get("notice_form"):
        click.echo(f"{'notice_form':<19} {view['notice_form']} ({view['notice_form_reason']})")
    for layer in view.get("notice_layers") or []:
        version = f"  version {layer['version']}" if layer.get("version") else ""
        click.echo(f"  {layer['layer']:<17} played {layer['played']}{version}")
    for key in ("ring_at", "answer_at", "notice_start_at", "notice_end_at", "record_start_at",
                "agent_answer_at", "end_at"):
        click.echo(f"{key:<19} {_when(row.get(key))}")
    if archive is not None:
        click.echo(f"{'archive':<19} {archive['state']}"
                   + (f" {_when(archive['archived_at'])}" if archive["archived_at"] else "")
                   + (f" (last error: {archive['last_error']})" if archive["last_error"]
                      else ""))
    click.echo("events:")
    t0 = events[0]["t"] if events else 0.0
    for e in events:
        click.echo(f"  +{e['t'] - t0:7.2f}s  {printable(e['state']):<20} "
                   f"{printable(e['detail'])}")


@cli.command()
@click.argument("reference")
@click.option("--json", "as_json", is_flag=True, help="One JSON object with its events.")
@click.pass_obj
@guard_store_errors()
def show(obj: CliContext, reference: str, as_json: bool) -> None:
    """Show one call by REFERENCE (427-193-53, 42719353 and "427 193 53" all work)."""
    from appliance.reference import known_candidates, parse_reference

    store = open_store(obj)
    try:
        ref = parse_reference(reference)
    except ReferenceFormatError as exc:
        known = known_candidates(exc, lambda c: store.get_call(c) is not None)
        hint = f" — did you mean {', '.join(known)}?" if known else ""
        click.echo(f"appliance: {exc.text!r}: {exc.reason}{hint}", err=True)
        sys.exit(1)
    row = store.get_call(ref)
    if row is None:
        click.echo(f"appliance: no call with reference {reference}", err=True)
        sys.exit(1)
    _print_call(store, row, as_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object with its events.")
@click.pass_obj
@guard_store_errors()
def last(obj: CliContext, as_json: bool) -> None:
    """Show the most recent call."""
    store = open_store(obj)
    row = store.last_call()
    if row is None:
        click.echo("no calls yet")
        sys.exit(1)
    _print_call(store, row, as_json)


from appliance.cli import records  # noqa: E402

records.register(cli)
from appliance.cli import sounds  # noqa: E402

sounds.register(cli)

from appliance.cli import tech  # noqa: E402

tech.register(cli)

from appliance.cli import bench  # noqa: E402

bench.register(cli)

from appliance.cli import modem as modem_cli  # noqa: E402

modem_cli.register(cli)

from appliance.cli import archive as archive_cli  # noqa: E402

archive_cli.register(cli)

from appliance.cli import index as index_cli  # noqa: E402

index_cli.register(cli)

from appliance.cli import web as web_cli  # noqa: E402

web_cli.register(cli)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="appliance")
