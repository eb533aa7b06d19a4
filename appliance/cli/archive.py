"""``appliance archive …``: the chain's archive in S3-compatible object storage.

On the box: ``run`` (the uploader, systemd ``appliance-archive.service``), ``replicate``
(Litestream, ``appliance-litestream.service``), ``status``, ``verify``, ``restore``.
At the head office (read-only on the bucket): ``calls``, ``find``, ``export``.
docs/archive.md is the manual.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from appliance.cli.context import store_problem
from appliance.config import EXIT_CONFIG, Config
from appliance.errors import ConfigError, StoreError


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"appliance: {message}", err=True)
    sys.exit(code)


def _setup(obj: Any, *, need_enabled: bool = True) -> tuple[Config, Any]:
    """The configuration and the credentials, or exit 78 naming the key."""
    from appliance.archive.s3 import load_credentials

    config: Config = obj.config()
    a = config.archive
    try:
        if need_enabled and not a.enabled:
            raise ConfigError("archive.enabled", "true (and the [archive] keys set)", False)
        if not a.endpoint:
            raise ConfigError("archive.endpoint", "an http(s):// URL of the S3 service", "")
        if not a.bucket:
            raise ConfigError("archive.bucket", "an S3 bucket name", "")
        if a.ca_file and not Path(a.ca_file).is_file():
            raise ConfigError("archive.ca_file", "an existing PEM file", a.ca_file)
        credentials = load_credentials(Path(a.credentials_file))
    except ConfigError as exc:
        _fail(f"configuration error: {exc}", EXIT_CONFIG)
    return config, credentials


@contextlib.contextmanager
def _archive_errors() -> Iterator[None]:
    """An archive or index problem → its message; anything the S3 client raised → what it
    means (unreachable, refused, no bucket); exit 1 either way."""
    from appliance.archive.s3 import ArchiveError, classify

    try:
        yield
    except (ArchiveError, StoreError) as exc:
        _fail(str(exc))
    except Exception as exc:
        _fail(f"archive service: {classify(exc)}")


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "—"


@click.group()
def archive() -> None:
    """Every call encrypted into S3-compatible object storage (docs/archive.md)."""


@archive.command("run")
@click.option("--once", is_flag=True,
              help="One round (queue, upload, delete) and exit: 0 done, 1 the service failed.")
@click.pass_obj
def run_cmd(obj: Any, once: bool) -> None:
    """The uploader: encrypt and upload finalized calls, delete erased ones (systemd runs
    this as appliance-archive.service)."""
    from appliance.archive.s3 import box_prefix
    from appliance.archive.uploader import Uploader
    from appliance.logs import setup_logging

    config, credentials = _setup(obj)
    setup_logging(config.logging.level)
    if not config.db_path.exists():
        _fail(f"no index at {config.db_path} (the daemon creates it at its first start)")
    uploader = Uploader(config, credentials, box_prefix(config.archive))
    if once:
        uploader.open()
        try:
            uploader.step()
        finally:
            uploader.close()
        if uploader.service_error:
            _fail(f"archive service: {uploader.service_error}")
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: uploader.stop.set())
    uploader.run()


@archive.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_obj
def status_cmd(obj: Any, as_json: bool) -> None:
    """What is archived, what waits, the last error."""
    from appliance.archive import queue
    from appliance.store.db import _connect

    config: Config = obj.config()
    if not config.db_path.exists():
        _fail(f"no index at {config.db_path}")
    conn = _connect(config.db_path)
    try:
        info = queue.summary(conn) if queue.has_tables(conn) else None
    finally:
        conn.close()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(format_summary(info))


@archive.command("replicate")
@click.option("--once", is_flag=True, help="One sync and exit (e.g. before a box leaves "
                                           "service).")
@click.pass_obj
def replicate_cmd(obj: Any, once: bool) -> None:
    """Become Litestream replicating the index to <prefix>/index in the bucket (systemd runs
    this as appliance-litestream.service)."""
    from appliance.archive.replicate import exec_replicate, replicate_once
    from appliance.archive.s3 import ArchiveError, box_prefix

    config, credentials = _setup(obj)
    if not config.archive.replicate_index:
        _fail("configuration error: archive.replicate_index: expected true to replicate, "
              "found false", EXIT_CONFIG)
    if not config.db_path.exists():
        _fail(f"no index at {config.db_path} (the daemon creates it at its first start)")
    try:
        if once:
            replicate_once(config.archive, credentials, box_prefix(config.archive),
                           config.db_path)
            return
        exec_replicate(config.archive, credentials, box_prefix(config.archive),
                       config.db_path)
    except (ArchiveError, OSError) as exc:
        _fail(f"cannot start litestream: {exc}")


@archive.command("verify")
@click.option("--identity", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="age identity file: also decrypt every object and compare its SHA-256.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_obj
def verify_cmd(obj: Any, identity: Path | None, as_json: bool) -> None:
    """Compare the bucket with the index: missing, extra, altered objects (exit 1 on any)."""
    from appliance.archive.restore import load_identities
    from appliance.archive.s3 import ArchiveError, box_prefix, classify, make_client
    from appliance.archive.verify import verify_archive

    config, credentials = _setup(obj, need_enabled=False)
    try:
        config.db_path.stat()  # not Path.exists: an index it may not read is no pass
    except FileNotFoundError:
        _fail(f"no index at {config.db_path}")
    except OSError as exc:
        _fail(store_problem(config.db_path, exc))
    try:
        identities = load_identities(identity) if identity is not None else None
        report = verify_archive(config.db_path, make_client(config.archive, credentials),
                                config.archive.bucket, box_prefix(config.archive),
                                identities=identities,
                                expect_replica=config.archive.replicate_index)
    except ArchiveError as exc:
        _fail(str(exc))
    except (sqlite3.Error, StoreError) as exc:
        # What it must check could not be read: a failure with the reason, never a pass.
        _fail(store_problem(config.db_path, exc))
    except PermissionError as exc:
        _fail(store_problem(Path(exc.filename) if exc.filename else None, exc))
    except Exception as exc:
        _fail(f"archive service: {classify(exc)}")
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(f"{report.archived} calls archived, {report.objects} objects in the bucket, "
                   f"{report.waiting} calls waiting for upload")
        for label, items in (("missing", report.missing), ("extra", report.extra),
                             ("altered", report.altered)):
            for item in items:
                click.echo(f"{label}: {item}")
        click.echo("archive matches the index" if report.ok else "archive DIFFERS from the index")
    if not report.ok:
        sys.exit(1)


@archive.command("restore")
@click.option("--to", "to", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="New (empty) state directory, e.g. /var/lib/appliance on the new SD card.")
@click.option("--identity", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="age identity file: also restore the reference key and the recordings "
                   "(needed for the box to take calls again).")
@click.option("--prefix", help="Restore this box's folder (default: archive.prefix / the "
                               "host name).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_obj
def restore_cmd(obj: Any, to: Path, identity: Path | None, prefix: str | None,
                as_json: bool) -> None:
    """Rebuild a box's state (index; with --identity key and recordings) from the archive.
    The restored box never reissues a reference."""
    from appliance.archive.restore import restore_box
    from appliance.archive.s3 import box_prefix, make_client
    from appliance.store.audit import current_actor

    config, credentials = _setup(obj, need_enabled=False)
    with _archive_errors():
        report = restore_box(config, credentials, prefix or box_prefix(config.archive), to,
                             identity_file=identity, actor=current_actor(),
                             client=make_client(config.archive, credentials))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(f"restored {report.calls} calls into {report.state_dir}; "
                   f"{report.recordings} recordings; reference key "
                   f"{'restored' if report.key_restored else 'NOT restored (no --identity)'}; "
                   f"next call counter above {report.counter}")
        for problem in report.problems:
            click.echo(f"problem: {problem}")
        if not report.key_restored:
            click.echo("this state is for reading only: give --identity to take calls with it")
    if report.problems:
        sys.exit(1)


# --- the head office (read-only on the bucket) -----------------------------------------------


def _headoffice_rows(obj: Any, boxes: tuple[str, ...], **query: Any) -> list[dict[str, Any]]:
    from appliance.archive.headoffice import box_indexes, query_calls
    from appliance.archive.s3 import make_client

    config, credentials = _setup(obj, need_enabled=False)
    with _archive_errors():
        client = make_client(config.archive, credentials)
        with box_indexes(config.archive, credentials, client, list(boxes)) as indexes:
            return query_calls(indexes, **query)


def _print_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    from appliance.reference import display_reference
    from appliance.text import printable

    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        click.echo("no calls")
        return
    click.echo(f"{'box':<14} {'reference':<11} {'when':<19} {'caller':<16} {'outcome':<11} "
               f"{'recording':<9} {'archive':<8}")
    for r in rows:
        recording = ("erased" if r["erased_at"] else "purged" if r["recording_deleted_at"]
                     else r["recording_decision"] or "")
        click.echo(f"{printable(r['box']):<14} {display_reference(r['reference']):<11} "
                   f"{_when(r['ring_at']):<19} {printable(r['caller_number'] or 'unknown'):<16} "
                   f"{r['outcome'] or '':<11} {recording:<9} {r['archive_state'] or '—':<8}")


@archive.command("calls")
@click.option("--box", "boxes", multiple=True, help="Only this box (prefix); repeatable.")
@click.option("--limit", default=50, show_default=True, help="Newest calls first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON list.")
@click.pass_obj
def calls_cmd(obj: Any, boxes: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Head office: calls of every box, from their replicated indexes (read-only)."""
    _print_rows(_headoffice_rows(obj, boxes, limit=limit), as_json)


@archive.command("find")
@click.option("--number", required=True, help="Caller number, any spelling (+36…, 06…).")
@click.option("--box", "boxes", multiple=True, help="Only this box (prefix); repeatable.")
@click.option("--json", "as_json", is_flag=True, help="One JSON list.")
@click.pass_obj
def find_cmd(obj: Any, number: str, boxes: tuple[str, ...], as_json: bool) -> None:
    """Head office: every call from one number across all boxes (read-only). Exit 1 if none."""
    from appliance.store.retention import number_variants

    rows = _headoffice_rows(obj, boxes, numbers=number_variants(number), limit=None)
    _print_rows(rows, as_json)
    if not rows:
        sys.exit(1)


@archive.command("export")
@click.argument("reference")
@click.option("--identity", required=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="age identity file matching one of the boxes' archive.recipients.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Directory to put the export in.")
@click.option("--box", help="The box (prefix) the call belongs to (default: searched).")
@click.option("--zip", "as_zip", is_flag=True, help="One .zip file instead of a directory.")
@click.pass_obj
def export_cmd(obj: Any, reference: str, identity: Path, out_dir: Path, box: str | None,
               as_zip: bool) -> None:
    """Head office: decrypt one call into the export package the box makes (`appliance
    export`): WAV, original, metadata, proof, summary, SHA256SUMS."""
    from appliance.archive.headoffice import box_indexes, export_from_archive, query_calls
    from appliance.archive.restore import load_identities
    from appliance.archive.s3 import make_client
    from appliance.errors import ReferenceFormatError
    from appliance.reference import parse_reference
    from appliance.store.audit import current_actor

    try:
        ref = parse_reference(reference)
    except ReferenceFormatError as exc:
        _fail(f"{exc.text!r}: {exc.reason}")
    config, credentials = _setup(obj, need_enabled=False)
    with _archive_errors():
        identities = load_identities(identity)
        client = make_client(config.archive, credentials)
        with box_indexes(config.archive, credentials, client,
                         [box] if box else None) as indexes:
            found = {r["box"] for r in query_calls(indexes, reference=ref, limit=None)}
            if not found:
                _fail(f"no call with reference {reference} in any box's index")
            if len(found) > 1:
                _fail(f"reference {reference} is in several boxes ({', '.join(sorted(found))})"
                      "; name one with --box")
            index = next(i for i in indexes if i.prefix in found)
            result = export_from_archive(config.archive, client, index, ref, identities,
                                         out_dir, actor=f"headoffice:{current_actor()}",
                                         as_zip=as_zip)
    click.echo(f"exported call {reference} of {index.prefix} to {result.path}")
    for problem in result.problems:
        click.echo(f"problem: {problem}")


@archive.command("demo")
@click.option("--scenario", default="answered", show_default=True,
              type=click.Choice(["answered", "voicemail", "declined"]),
              help="The simulated call (appliance demo --scenario).")
@click.option("--dir", "demo_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Keep everything here (default: a new temporary directory).")
@click.option("--keep", is_flag=True, help="Leave the S3 server running until Ctrl-C, to try "
                                           "the archive commands against it.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
def demo_cmd(scenario: str, demo_dir: Path | None, keep: bool, as_json: bool) -> None:
    """The archive end to end on this machine: a real S3 server (SeaweedFS) on loopback, one
    simulated call through the real daemon, uploaded encrypted, the index replicated,
    verified, restored into a fresh directory and verified again."""
    import tempfile

    from appliance.logs import setup_logging
    from appliance.sim.archive_demo import run_archive_demo

    setup_logging("WARNING")
    directory = demo_dir or Path(tempfile.mkdtemp(prefix="appliance-archive-demo-"))

    def say(text: str) -> None:
        if not as_json:
            click.echo(text)

    def hold(server: Any, config_file: Path) -> None:
        click.echo(f"S3 server on {server.endpoint} (Ctrl-C stops it); e.g.\n"
                   f"  appliance --config {config_file} archive calls")
        with contextlib.suppress(KeyboardInterrupt):
            signal.sigwait({signal.SIGINT, signal.SIGTERM})

    say(f"appliance archive demo — everything under {directory}")
    figures = run_archive_demo(directory, scenario=scenario, say=say,
                               keep_server=hold if keep else None)
    if as_json:
        click.echo(json.dumps(figures, indent=2))
    if not (figures.get("verify_ok") and figures.get("restored_verify_ok")):
        sys.exit(1)


def format_summary(info: dict[str, Any] | None) -> str:
    """One line for ``archive status`` and ``appliance status``."""
    if info is None:
        return "archive: nothing archived from this index yet"
    line = (f"archive: {info['archived']} archived, {info['queued']} waiting, "
            f"{info['deleting']} to delete, {info['deleted']} deleted; last upload "
            f"{_when(info['last_archived_at'])}")
    if info["oldest_queued_at"]:
        line += f"; oldest waiting since {_when(info['oldest_queued_at'])}"
    service = info.get("service")
    if service and service["error"]:
        line += (f"\n  service unusable since {_when(service['since'])} (last try "
                 f"{_when(service['checked_at'])}): {service['error']}")
    if info["last_error"]:
        line += (f"\n  last error (call {info['last_error']['reference']}): "
                 f"{info['last_error']['error']}")
    return line


def register(group: click.Group) -> None:
    """Add ``archive`` to the ``appliance`` group."""
    group.add_command(archive)
