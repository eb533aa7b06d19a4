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
