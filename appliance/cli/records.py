"""The records commands: ``purge``, ``export``, ``erase``, ``verify``, ``find``.

Registered on the main group by :func:`register`. Heavy imports stay inside the commands so
``appliance last``/``show`` keep their start-up time. Exit codes as in
:mod:`appliance.cli.context`.

The write commands open the index read-write and must run as the ``appliance`` user (the
database is 0640): ``sudo -u appliance appliance erase …``. The audit entry then names the
person from ``$SUDO_USER``, not the service account (see
:func:`appliance.store.audit.current_actor`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from appliance.cli.context import CliContext, fail, guard_store_errors, open_store, row_view

if TYPE_CHECKING:
    from appliance.config import Config
    from appliance.store.db import Store


def parse_when(text: str, *, end: bool = False) -> float:
    """Parse ``--since``/``--until``: ``YYYY-MM-DD`` or an ISO 8601 datetime → epoch seconds.

    A bare date is local midnight starting that day, or with ``end`` the midnight ending it
    (``--until 2024-05-01`` includes all of 1 May). A datetime without an offset is local
    time. A valid date beyond what a timestamp holds (``--until 9999-12-31`` ends in year
    10000) is the open end of the range: ±infinity, which SQLite compares as a REAL.

    Raises:
        click.BadParameter: neither form.
    """
    text = text.strip()
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            if end and day == dt.date.max:
                return math.inf
            if end:
                day += dt.timedelta(days=1)
            moment = dt.datetime.combine(day, dt.time())
        else:
            moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: expected YYYY-MM-DD or an ISO datetime such as 2024-05-01T14:30"
        ) from None
    try:
        if moment.tzinfo is None:
            moment = moment.astimezone()  # naive = local time
        return moment.timestamp()
    except (OverflowError, OSError, ValueError):
        return math.inf if moment.year >= dt.MAXYEAR // 2 else -math.inf


def _open(obj: CliContext, *, check: bool = False) -> tuple[Config, Store]:
    """Load the configuration and open the index (exit 1 with a message if it cannot be).

    ``check``: run SQLite's quick_check first (the commands that promise a check)."""
    return obj.config(), open_store(obj, check=check, hint=_ACCESS_HINT)


_ACCESS_HINT = ("Records commands change the index: run them as the service user "
                "(sudo -u appliance appliance …).")
_guard_store_errors = guard_store_errors(_ACCESS_HINT)


def _config_source(obj: CliContext) -> str | None:
    from appliance.config import DEFAULT_CONFIG_PATH, ENV_CONFIG

    if obj.config_path is not None:
        return str(obj.config_path)
    if os.environ.get(ENV_CONFIG):
        return os.environ[ENV_CONFIG]
    return str(DEFAULT_CONFIG_PATH) if DEFAULT_CONFIG_PATH.exists() else None


def _audit_config(obj: CliContext, config: Config, store: Store, actor: str) -> None:
    """Record a configuration change in the chain before acting under that configuration."""
    from appliance.store.audit import record_config

    record_config(store, config.to_dict(), actor=actor, source=_config_source(obj))


def _parse_ref(store: Store, text: str) -> str:
    """Canonical reference from what the technician typed; exit 1 with candidates if wrong."""
    from appliance.errors import ReferenceFormatError
    from appliance.reference import known_candidates, parse_reference

    try:
        return parse_reference(text)
    except ReferenceFormatError as exc:
        known = known_candidates(exc, lambda c: store.get_call(c) is not None)
        hint = f" — did you mean {', '.join(known)}?" if known else ""
        fail(f"{exc.text!r}: {exc.reason}{hint}")


def calls_table(rows: list[dict[str, Any]]) -> None:
    """Print calls as the ``calls``/``find`` table; caller ID escaped (it comes from the line)."""
    from appliance.reference import display_reference
    from appliance.text import printable

    # The archive column only on a box that archives (rows carry "archive", docs/archive.md).
    archived = any("archive" in r for r in rows)
    click.echo(f"{'reference':<11} {'when':<19} {'line':<6} {'caller':<16} {'outcome':<11} "
               f"{'recording':<9} {'dur':>6}" + (f" {'archive':<8}" if archived else ""))
    for r in rows:
        when = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["ring_at"]))
                if r["ring_at"] else "—")
        recording = r["recording_decision"] or ""
        if r.get("erased_at"):
            recording = "erased"
        elif r.get("recording_deleted_at"):
            recording = "purged"
        click.echo(f"{display_reference(r['reference']):<11} {when:<19} {r['line'] or '':<6} "
                   f"{printable(r['caller_number'] or 'unknown'):<16} {r['outcome'] or '':<11} "
                   f"{recording:<9} {(r['duration_s'] or 0):6.1f}"
                   + (f" {(r.get('archive') or {}).get('state', '—'):<8}" if archived else ""))


# --- the commands ----------------------------------------------------------------------------


@click.command()
@click.option("--dry-run", is_flag=True, help="Only list what is due; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_obj
@_guard_store_errors
def purge(obj: CliContext, dry_run: bool, as_json: bool) -> None:
    """Delete recordings and personal data past their retention (the daily timer runs this).

    Periods come from [retention]: recordings_days, voicemail_days (voicemail calls),
    metadata_days (caller number, name, event details). Each call keeps a tombstone row and
    an audit entry without personal data.
    """
    from appliance.reference import display_reference
    from appliance.store.audit import current_actor
    from appliance.store.retention import purge as do_purge

    config = obj.config()
    try:
        exists = config.db_path.exists()
    except PermissionError as exc:
        fail(f"cannot open {config.db_path}: {exc.strerror}. {_ACCESS_HINT}")
    if not exists:
        # A fresh box has no index yet: nothing is due, and the timer must not fail daily.
        if as_json:
            click.echo(json.dumps({"dry_run": dry_run, "calls": [], "files_deleted": [],
                                   "errors": [], "compacted": False}))
        else:
            click.echo("no index yet; nothing to purge")
        return
    config, store = _open(obj)
    try:
        actor = current_actor()
        if not dry_run:
            _audit_config(obj, config, store, actor)
        report = do_purge(store, config.recordings_dir, config.retention, actor=actor,
                          dry_run=dry_run)
    finally:
        store.close_sync()
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        verb = "would purge" if dry_run else "purged"
        for item in report.items:
            what = " + ".join(
                w for w, on in (("recording", item.delete_recording),
                                ("personal data", item.delete_personal)) if on)
            click.echo(f"{verb} {display_reference(item.reference)}  "
                       f"{dt.date.fromtimestamp(item.ring_at)}  {item.outcome:<11} {what}")
        for ref, error in report.errors:
            click.echo(f"FAILED {display_reference(ref)}: {error}", err=True)
        click.echo(f"{len(report.items) - len(report.errors)} call(s) {verb}, "
                   f"{len(report.files_deleted)} file(s) deleted"
                   + (" (dry run: nothing changed)" if dry_run else ""))
    if report.errors:
        sys.exit(1)


@click.command()
@click.argument("reference")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Directory to write the export into (created if missing).")
@click.option("--zip", "as_zip", is_flag=True, help="One .zip file instead of a directory.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_obj
@_guard_store_errors
def export(obj: CliContext, reference: str, out_dir: Path, as_zip: bool, as_json: bool) -> None:
    """Export one call for its caller: WAV + original + metadata + hash proof + summary.

    The summary (SUMMARY.txt) is in Hungarian and English (after device.language if that is
    another one); SHA256SUMS lets anyone re-check
    the files with `sha256sum -c SHA256SUMS`. The export is recorded in the audit chain.
    """
    from appliance.languages.registry import for_config
    from appliance.store.audit import current_actor
    from appliance.store.export import export_call, summary_languages

    config, store = _open(obj)
    try:
        ref = _parse_ref(store, reference)
        actor = current_actor()
        _audit_config(obj, config, store, actor)
        result = export_call(store, config.recordings_dir, ref, out_dir, actor=actor,
                             as_zip=as_zip, summary=summary_languages(
                                 for_config(config), config.device.language))
    finally:
        store.close_sync()
    if as_json:
        click.echo(json.dumps({"reference": result.reference, "path": str(result.path),
                               "files": list(result.files),
                               "original_sha256": result.original_sha256,
                               "matches_index": result.matches_index,
                               "audit_hash": result.audit_hash,
                               "problems": list(result.problems)}, indent=2))
    else:
        click.echo(f"exported to {result.path}")
        for name in result.files:
            click.echo(f"  {name}")
        if result.original_sha256:
            click.echo(f"sha-256 of the original: {result.original_sha256}")
    for problem in result.problems:
        click.echo(f"appliance: WARNING: {problem}", err=True)
    if result.problems:
        sys.exit(1)


@click.command()
@click.argument("reference")
@click.option("--reason", required=True,
              help="Why (e.g. 'GDPR Art. 17 request of 2024-05-02, ticket 17'); kept in the "
                   "tombstone and the audit chain — do not put personal data in it.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation on a terminal.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_obj
@_guard_store_errors
def erase(obj: CliContext, reference: str, reason: str, yes: bool, as_json: bool) -> None:
    """Erase one call's audio, sidecar and personal data; keep an audited tombstone.

    Irreversible. The reference, times, outcome and recording decision stay (they prove what
    happened); the caller's number and name, the event details, the recording and its
    sidecar go, and the index is vacuumed so no copy remains in the database file.
    """
    from appliance.reference import display_reference
    from appliance.store.audit import current_actor
    from appliance.store.retention import erase_call

    if not reason.strip():
        raise click.UsageError("--reason must not be empty")
    config, store = _open(obj)
    try:
        ref = _parse_ref(store, reference)
        if store.get_call(ref) is None:
            fail(f"no call with reference {reference}")
        if not yes and sys.stdin.isatty():
            click.confirm(f"Erase call {display_reference(ref)} for good?", abort=True)
        actor = current_actor()
        _audit_config(obj, config, store, actor)
        result = erase_call(store, config.recordings_dir, ref, reason=reason, actor=actor)
    finally:
        store.close_sync()
    if as_json:
        click.echo(json.dumps({"reference": result.reference,
                               "files_deleted": [str(p) for p in result.files_deleted],
                               "audit_hash": result.audit_hash,
                               "compacted": result.compacted}, indent=2))
    else:
        click.echo(f"erased {display_reference(ref)}: {len(result.files_deleted)} file(s) "
                   "deleted, personal fields cleared, tombstone kept")
    if not result.compacted:
        click.echo("appliance: note: the running daemon holds part of the database log; it "
                   "is cleared at its next checkpoint (at the latest when it stops)", err=True)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_obj
@_guard_store_errors
def verify(obj: CliContext, as_json: bool) -> None:
    """Recompute every recording's SHA-256, look for missing and unknown files, check the
    audit chain. Exit 1 on any problem (each named by reference), 0 when clean."""
    from appliance.reference import display_reference
    from appliance.store.audit import current_actor
    from appliance.store.verify import verify_records

    config, store = _open(obj, check=True)
    try:
        actor = current_actor()
        _audit_config(obj, config, store, actor)
        report = verify_records(store, config.recordings_dir, actor=actor)
    finally:
        store.close_sync()
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        for p in report.problems:
            ref = display_reference(p.reference) if p.reference else "-"
            click.echo(f"PROBLEM {ref:<11} {p.kind:<24} {p.message}")
        state = "OK" if report.ok else f"{len(report.problems)} problem(s)"
        click.echo(f"checked {report.recordings_checked} recording(s) and "
                   f"{report.audit_entries} audit entries: {state}")
    if not report.ok:
        sys.exit(1)


@click.command()
@click.option("--number", required=True,
              help="Caller number in any usual spelling (+36 30 123 4567, 06301234567 …).")
@click.option("--json", "as_json", is_flag=True, help="One JSON list.")
@click.pass_obj
@_guard_store_errors
def find(obj: CliContext, number: str, as_json: bool) -> None:
    """List every call from one caller number (for an access or erasure request)."""
    from appliance.store.retention import number_variants

    _config, store = _open(obj)
    try:
        rows = store.list_calls(None, numbers=number_variants(number))
    finally:
        store.close_sync()
    if as_json:
        click.echo(json.dumps([row_view(r) for r in rows], ensure_ascii=False, indent=2))
        return
    if not rows:
        click.echo(f"no calls from {number}")
        sys.exit(1)
    calls_table(rows)


def register(group: click.Group) -> None:
    """Add the records commands to the ``appliance`` group."""
    for command in (purge, export, erase, verify, find):
        group.add_command(command)
