"""``appliance doctor``'s archive lines: configured, credentials usable, bucket reachable,
queue moving (docs/archive.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Final

from appliance.config import Config
from appliance.errors import ConfigError

#: A call waiting this long for upload is worth a warning (the uplink or the service is down).
WAITING_WARN_S: Final = 3600.0

#: (name, level "pass"/"warn"/"fail", detail, fix)
Finding = tuple[str, str, str, str]


def archive_findings(config: Config) -> list[Finding]:
    """What ``doctor`` says about the archive; one network request (HEAD bucket)."""
    from appliance.archive import queue
    from appliance.archive.s3 import ArchiveError, check_bucket, load_credentials, make_client
    from appliance.store.db import _connect

    a = config.archive
    if not a.enabled:
        return [("archive", "pass", "off (archive.enabled = false)", "")]
    fix_units = "sudo systemctl enable --now appliance-archive appliance-litestream"
    try:
        credentials = load_credentials(Path(a.credentials_file))
    except ConfigError as exc:
        return [("archive", "fail", str(exc),
                 f"write {a.credentials_file} (access_key_id, secret_access_key), "
                 "chown appliance, chmod 0600")]
    try:
        check_bucket(make_client(a, credentials), a.bucket)
    except ArchiveError as exc:
        return [("archive", "fail", f"{a.endpoint} bucket {a.bucket}: {exc}",
                 "check archive.endpoint, archive.bucket, the credentials and the network")]
    out: list[Finding] = [("archive", "pass", f"{a.endpoint} bucket {a.bucket} reachable", "")]
    if not config.db_path.exists():
        return out
    conn = _connect(config.db_path)
    try:
        info = queue.summary(conn) if queue.has_tables(conn) else None
    finally:
        conn.close()
    if info is None:
        out.append(("archive queue", "warn", "the uploader has never run on this index",
                    fix_units))
        return out
    waiting_s = time.time() - info["oldest_queued_at"] if info["oldest_queued_at"] else 0.0
    detail = (f"{info['archived']} archived, {info['queued']} waiting, "
              f"{info['deleting']} to delete")
    service_error = (info["service"] or {}).get("error")
    if waiting_s > WAITING_WARN_S or info["last_error"] or service_error:
        error = (service_error or (info["last_error"] or {}).get("error")
                 or "no error recorded")
        out.append(("archive queue", "warn",
                    f"{detail}; oldest waiting {waiting_s / 3600:.1f} h; {error}",
                    f"appliance archive status; journalctl -u appliance-archive; {fix_units}"))
    else:
        out.append(("archive queue", "pass", detail, ""))
    return out
