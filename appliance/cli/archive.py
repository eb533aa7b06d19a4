"""``appliance archive …``: the chain's archive in S3-compatible object storage.

On the box: ``run`` (the uploader, systemd ``appliance-archive.service``), ``replicate``
(Litestream, ``appliance-litestream.service``), ``status``, ``verify``, ``restore``.
At the head office (read-only on the bucket): ``calls``, ``find``, ``export``.
docs/archive.md is the manual.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from appliance.config import EXIT_CONFIG, Config
from appliance.errors import ConfigError


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
    if not config.db_path.exists():
        _fail(f"no index at {config.db_path}")
    try:
        identities = load_identities(identity) if identity is not None else None
        report = verify_archive(config.db_path, make_client(config.archive, credentials),
                                config.archive.bucket, box_prefix(config.archive),
                                identities=identities)
    except ArchiveError as exc:
        _fail(str(exc))
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
    from appliance.archive.s3 import ArchiveError, box_prefix, classify, make_client
    from appliance.store.audit import current_actor

    config, credentials = _setup(obj, need_enabled=False)
    try:
        report = restore_box(config, credentials, prefix or box_prefix(config.archive), to,
                             identity_file=identity, actor=current_actor(),
                             client=make_client(config.archive, credentials))
    except ArchiveError as exc:
        _fail(str(exc))
    except Exception as exc:
        _fail(f"archive service: {classify(exc)}")
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


def format_summary(info: dict[str, Any] | None) -> str:
    """One line for ``archive status`` and ``appliance status``."""
    if info is None:
        return "archive: nothing archived from this index yet"
    line = (f"archive: {info['archived']} archived, {info['queued']} waiting, "
            f"{info['deleting']} to delete, {info['deleted']} deleted; last upload "
            f"{_when(info['last_archived_at'])}")
    if info["oldest_queued_at"]:
        line += f"; oldest waiting since {_when(info['oldest_queued_at'])}"
    if info["last_error"]:
        line += (f"\n  last error (call {info['last_error']['reference']}): "
                 f"{info['last_error']['error']}")
    return line


def register(group: click.Group) -> None:
    """Add ``archive`` to the ``appliance`` group."""
    group.add_command(archive)
