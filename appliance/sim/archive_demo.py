"""``appliance archive demo``: the chain's archive end to end on one machine.

A real S3 server (SeaweedFS, appliance.sim.objectstore) on loopback, an owner's age identity,
a credentials file (0600), the uploader running as in production while the real daemon takes
one simulated call (appliance.sim.demo); then Litestream replicates the index, the archive is
verified against it, and the box is restored into a fresh directory with the identity and
verified again. Everything is left under the state directory to look at.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from appliance.archive import queue
from appliance.archive.replicate import replicate_once
from appliance.archive.restore import load_identities, restore_box
from appliance.archive.s3 import Credentials, make_client, write_credentials
from appliance.archive.uploader import Uploader
from appliance.archive.verify import verify_archive
from appliance.config import load_config
from appliance.sim.objectstore import ObjectStore

#: The demo box's folder in the bucket.
DEMO_PREFIX: Final = "demo-shop"
DEMO_BUCKET: Final = "archive"
#: The uploader looks for finalized calls this often in the demo (production: 2 s).
DEMO_POLL_S: Final = 0.5
#: Upper bound for the call to be archived after the demo call ended.
ARCHIVE_TIMEOUT_S: Final = 60.0

Say = Callable[[str], None]


def archive_settings(server: ObjectStore, credentials_file: Path,
                     recipient: str) -> dict[str, Any]:
    """The ``[archive]`` table pointing at ``server``."""
    return {"enabled": True, "endpoint": server.endpoint, "bucket": DEMO_BUCKET,
            "prefix": DEMO_PREFIX, "credentials_file": str(credentials_file),
            "recipients": [recipient], "poll_s": DEMO_POLL_S, "retry_max_s": 5.0}


def write_config_file(path: Path, state_dir: Path, settings: dict[str, Any]) -> None:
    """A config.toml with ``[archive]`` for trying the CLI afterwards."""
    lines = ["[device]", f'state_dir = "{state_dir}"', "", "[archive]"]
    for key, value in settings.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, list):
            lines.append(f"{key} = [" + ", ".join(f'"{v}"' for v in value) + "]")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _migrated(db_path: Path) -> bool:
    """The daemon has created the index and brought it to this code's schema (the uploader
    must not race it through the migrations)."""
    import sqlite3

    from appliance.store.db import SCHEMA_VERSION

    if not db_path.exists():
        return False
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0]) >= SCHEMA_VERSION
    except sqlite3.Error:
        return False
    finally:
        conn.close()


def run_archive_demo(state_dir: Path, *, scenario: str = "answered", say: Say,
                     keep_server: Callable[[ObjectStore, Path], None] | None = None
                     ) -> dict[str, Any]:
    """Run the demo; return its figures (reference, latency, objects, verify, restore)."""
    import pyrage

    from appliance.sim.demo import run_demo

    state_dir.mkdir(parents=True, exist_ok=True)
    box_dir = state_dir / "box"
    server = ObjectStore(state_dir / "objectstore", buckets=(DEMO_BUCKET,))
    say(f"starting SeaweedFS (S3) on loopback, data in {server.directory}")
    server.start()
    try:
        identity = pyrage.x25519.Identity.generate()
        identity_file = state_dir / "owner.agekey"
        identity_file.write_text(f"# public key: {identity.to_public()}\n{identity}\n")
        identity_file.chmod(0o600)
        credentials = Credentials(server.access_key, server.secret_key)
        credentials_file = state_dir / "archive-credentials.toml"
        write_credentials(credentials_file, credentials)
        settings = archive_settings(server, credentials_file, str(identity.to_public()))
        config_file = state_dir / "config.toml"
        write_config_file(config_file, box_dir, settings)
        say(f"owner's age identity {identity_file} (public key {identity.to_public()})")

        uploader: Uploader | None = None
        worker: threading.Thread | None = None

        def on_entry(t: float, actor: str, what: str, detail: str) -> None:
            say(f"{t:7.2f}s  {actor:<9} {what:<22} {detail}")

        # The uploader runs as in production (its own loop, polling the index) while the
        # daemon takes the call; it starts once the daemon has created the index.
        config = load_config(Path("/dev/null"), state_dir=box_dir,
                             overrides={"archive": settings})

        def start_uploader() -> None:
            nonlocal uploader, worker
            deadline = time.monotonic() + ARCHIVE_TIMEOUT_S
            while not _migrated(config.db_path):
                if time.monotonic() > deadline or stop_waiting.is_set():
                    return
                time.sleep(0.05)
            uploader = Uploader(config, credentials, DEMO_PREFIX)
            worker = threading.Thread(target=uploader.run, name="archive-uploader")
            worker.start()

        stop_waiting = threading.Event()
        starter = threading.Thread(target=start_uploader, name="archive-starter")
        starter.start()
        try:
            demo = asyncio.run(run_demo(scenario, box_dir, on_entry=on_entry,
                                        config_extra={"archive": settings}))
        finally:
            stop_waiting.set()
            starter.join()
        summary = demo.summary
        reference = summary["reference_digits"]
        figures: dict[str, Any] = {"reference": summary["reference"],
                                   "recording": summary["recording_decision"]}
        try:
            conn = queue.open_queue(config.db_path)
            try:
                deadline = time.monotonic() + ARCHIVE_TIMEOUT_S
                while queue.state_of(conn, reference) != "archived":
                    if time.monotonic() > deadline or summary["recording_path"] is None:
                        break
                    time.sleep(0.05)
                row = conn.execute(
                    "SELECT a.state, a.archived_at, c.end_at FROM archive a JOIN calls c "
                    "USING (reference) WHERE reference = ?", (reference,)).fetchone()
                objects = queue.objects_of(conn, reference)
            finally:
                conn.close()
        finally:
            if uploader is not None and worker is not None:
                uploader.stop.set()
                worker.join()
        if row is not None and row[0] == "archived":
            figures["finalize_to_archived_s"] = round(row[1] - row[2], 2)
            figures["objects"] = [o.key for o in objects]
            say(f"archived call {summary['reference']}: {len(objects)} objects, "
                f"{sum(o.stored_bytes for o in objects)} bytes encrypted, "
                f"{figures['finalize_to_archived_s']:.2f} s after the call ended")
            for o in objects:
                say(f"  s3://{DEMO_BUCKET}/{o.key}  (plaintext sha-256 {o.plain_sha256[:16]}…)")
        else:
            say(f"call {summary['reference']} has no recording to archive "
                f"({summary['recording_decision']})")

        replicate_once(config.archive, credentials, DEMO_PREFIX, config.db_path)
        say(f"index replicated by Litestream to s3://{DEMO_BUCKET}/{DEMO_PREFIX}/index")
        client = make_client(config.archive, credentials)
        identities = load_identities(identity_file)
        report = verify_archive(config.db_path, client, DEMO_BUCKET, DEMO_PREFIX,
                                identities=identities)
        figures["verify_ok"] = report.ok
        say(f"verify: {report.archived} calls archived, {report.objects} objects — "
            + ("archive matches the index" if report.ok else f"DIFFERENT {report.to_dict()}"))
        restored_dir = state_dir / "restored"
        t0 = time.monotonic()
        restored = restore_box(config, credentials, DEMO_PREFIX, restored_dir,
                               identity_file=identity_file, actor="demo", client=client)
        figures["restore_s"] = round(time.monotonic() - t0, 2)
        figures["restored"] = restored.to_dict()
        say(f"restored into {restored_dir}: {restored.calls} calls, {restored.recordings} "
            f"recordings, key {'restored' if restored.key_restored else 'missing'}, counter "
            f"raised to {restored.counter} ({figures['restore_s']:.2f} s)")
        again = verify_archive(restored_dir / "appliance.db", client, DEMO_BUCKET, DEMO_PREFIX)
        figures["restored_verify_ok"] = again.ok
        say("verify of the restored box: " + ("archive matches the index" if again.ok
                                              else f"DIFFERENT {again.to_dict()}"))
        say(f"try: appliance --config {config_file} archive status | calls | verify")
        if keep_server is not None:
            keep_server(server, config_file)
        return figures
    finally:
        server.stop()
