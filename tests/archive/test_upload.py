"""The uploader against a real S3 server: archive, verify, survive the server's death,
refuse wrong credentials and a missing bucket, and follow erasure and purge."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyrage
import pytest

from appliance.archive import queue
from appliance.archive.s3 import call_key, make_client
from appliance.archive.uploader import Uploader
from appliance.config import RetentionConfig
from appliance.sim.objectstore import ObjectStore
from appliance.store.db import Store
from appliance.store.retention import erase_call, purge
from tests.archive.conftest import BUCKET, Box, make_box
from tests.store.callfactory import DAY_S, make_calls

NOW = time.time()
#: Upper bound for the uploader to reach a state in the threaded tests.
WAIT_S = 30.0


def wait_for(what: str, predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def uploader(box: Box) -> Uploader:
    up = Uploader(box.config, box.credentials, box.prefix)
    up.open()
    return up


def state(box: Box, reference: str) -> str | None:
    conn = queue.open_queue(box.config.db_path)
    try:
        return queue.state_of(conn, reference)
    finally:
        conn.close()


def service_error(box: Box) -> str | None:
    conn = queue.open_queue(box.config.db_path)
    try:
        return (queue.summary(conn)["service"] or {"error": "never checked"})["error"]
    finally:
        conn.close()


def fetch(box: Box, key: str) -> bytes:
    client = make_client(box.config.archive, box.credentials)
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


@pytest.mark.parametrize("verify", ["etag", "download"])
def test_finalized_calls_are_encrypted_uploaded_verified_and_audited(
        tmp_path: Path, objectstore: ObjectStore, verify: str) -> None:
    box = make_box(tmp_path, objectstore, verify=verify)
    recorded, declined = make_calls(box.state_dir, [
        {"counter": 1, "ring_at": NOW - 60},
        {"counter": 2, "ring_at": NOW - 30, "record_s": None},
    ])
    up = uploader(box)
    try:
        worked = up.step()
        assert up.service_error is None
        assert worked
    finally:
        up.close()
    assert state(box, recorded.reference) == "archived"
    assert state(box, declined.reference) is None  # nothing to archive
    assert recorded.recording is not None
    cipher = fetch(box, call_key(box.prefix, recorded.reference, "recording", ".flac"))
    assert cipher.startswith(b"age-encryption.org/v1")
    assert pyrage.decrypt(cipher, [box.identity]) == recorded.recording.read_bytes()
    store = Store.open(box.config.db_path)
    try:
        entries = [e for e in store.audit_entries(recorded.reference)
                   if e["action"] == "archive"]
        assert store.verify_audit_chain() == []
        row = store.get_call(recorded.reference)
    finally:
        store.close_sync()
    assert len(entries) == 1
    assert entries[0]["details"]["verify"] == verify
    kinds = {o["kind"]: o for o in entries[0]["details"]["objects"]}
    assert set(kinds) == {"recording", "sidecar", "proof"}
    assert kinds["recording"]["plain_sha256"] == row["recording_sha256"]
    proof = pyrage.decrypt(fetch(box, call_key(box.prefix, recorded.reference, "proof")),
                           [box.identity])
    assert row["recording_sha256"].encode() in proof


def test_wrong_credentials_pause_the_queue_without_blaming_a_call(
        tmp_path: Path, objectstore: ObjectStore) -> None:
    box = make_box(tmp_path, objectstore, secret_key="not-the-secret")
    (call,) = make_calls(box.state_dir, [{"counter": 3, "ring_at": NOW}])
    up = uploader(box)
    try:
        up.step()
    finally:
        up.close()
    assert up.service_failures == 1
    assert "secret key is wrong" in (up.service_error or "") or "403" in (up.service_error or "")
    conn = queue.open_queue(box.config.db_path)
    try:
        row = conn.execute("SELECT state, attempts FROM archive WHERE reference = ?",
                           (call.reference,)).fetchone()
        service = queue.summary(conn)["service"]
    finally:
        conn.close()
    assert tuple(row) == ("queued", 0)
    # Another process (`archive status`, `doctor`) can tell why the queue waits.
    assert service["error"] == up.service_error
    assert service["since"] is not None


def test_missing_bucket_is_named(tmp_path: Path, objectstore: ObjectStore) -> None:
    box = make_box(tmp_path, objectstore, bucket="no-such-bucket")
    make_calls(box.state_dir, [{"counter": 4, "ring_at": NOW}])
    up = uploader(box)
    try:
        up.step()
    finally:
        up.close()
    assert "bucket 'no-such-bucket' does not exist" in (up.service_error or "")


def test_server_killed_mid_upload_then_back(tmp_path: Path) -> None:
    server = ObjectStore(tmp_path / "s3", buckets=(BUCKET,))
    server.start()
    try:
        # 2 s of noise is ~58 kB of FLAC; at 160 kbit/s its upload takes ~3 s.
        box = make_box(tmp_path, server, bandwidth_kbit_s=160)
        (call,) = make_calls(box.state_dir, [{"counter": 5, "ring_at": NOW, "record_s": 2.0}])
        up = Uploader(box.config, box.credentials, box.prefix)
        worker = threading.Thread(target=up.run, name="uploader")
        worker.start()
        try:
            wait_for("the upload to start", lambda: up.bytes_sent > 16_000)
            server.stop(kill=True)
            wait_for("the uploader to notice", lambda: up.service_failures >= 1)
            assert state(box, call.reference) == "queued"
            server.start()
            wait_for("the call to be archived", lambda: state(box, call.reference) == "archived")
            wait_for("the service to be recorded reachable again",
                     lambda: service_error(box) is None)
        finally:
            up.stop.set()
            worker.join(WAIT_S)
        assert call.recording is not None
        cipher = fetch(box, call_key(box.prefix, call.reference, "recording", ".flac"))
        assert pyrage.decrypt(cipher, [box.identity]) == call.recording.read_bytes()
    finally:
        server.stop()


def test_erase_and_purge_delete_every_archived_version(
        tmp_path: Path, objectstore: ObjectStore) -> None:
    box = make_box(tmp_path, objectstore)
    client = make_client(box.config.archive, box.credentials)
    client.put_bucket_versioning(Bucket=BUCKET,
                                 VersioningConfiguration={"Status": "Enabled"})
    old, erased = make_calls(box.state_dir, [
        {"counter": 6, "ring_at": NOW - 400 * DAY_S},
        {"counter": 7, "ring_at": NOW - 60},
    ])
    up = uploader(box)
    try:
        up.step()
        assert state(box, erased.reference) == "archived"
        # A second version of one object (as a re-upload would leave).
        key = call_key(box.prefix, erased.reference, "sidecar")
        client.put_object(Bucket=BUCKET, Key=key, Body=fetch(box, key))
        store = Store.open(box.config.db_path)
        try:
            erase_call(store, box.config.recordings_dir, erased.reference,
                       reason="request 2026/17", actor="cli:test")
            purge(store, box.config.recordings_dir, RetentionConfig(365, 365, 730),
                  actor="cli:test", now=NOW)
        finally:
            store.close_sync()
        up.step()
    finally:
        up.close()
    for call in (old, erased):
        assert state(box, call.reference) == "deleted"
        listing = client.list_object_versions(Bucket=BUCKET,
                                              Prefix=f"{box.prefix}/calls/{call.reference}/")
        assert not listing.get("Versions")
        assert not listing.get("DeleteMarkers")
    store = Store.open(box.config.db_path)
    try:
        deletes = {e["reference"]: e["details"] for e in store.audit_entries()
                   if e["action"] == "archive-delete"}
        assert store.verify_audit_chain() == []
    finally:
        store.close_sync()
    assert deletes[erased.reference]["because"] == "erased"
    assert deletes[erased.reference]["versions_deleted"] >= 4
    assert deletes[old.reference]["because"] == "purged"


@pytest.mark.parametrize("bad", ["age1xyz", "ssh-ed25519 AAAA"])
def test_bad_recipient_is_a_config_error(bad: str) -> None:
    from appliance.config import load_config
    from appliance.errors import ConfigError

    with pytest.raises(ConfigError, match=r"archive\.recipients\[0\]"):
        load_config(None, overrides={"archive": {"recipients": [bad]}})


def test_run_exits_78_naming_the_key(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from appliance.cli.main import cli

    creds = tmp_path / "creds.toml"
    creds.write_text('access_key_id = "a"\nsecret_access_key = "b"\n')
    creds.chmod(0o644)
    recipient = str(pyrage.x25519.Identity.generate().to_public())
    config = tmp_path / "config.toml"
    base = ('[archive]\nendpoint = "http://127.0.0.1:9"\nbucket = "archive"\n'
            f'recipients = ["{recipient}"]\ncredentials_file = "{creds}"\n')
    config.write_text(base)
    result = CliRunner().invoke(cli, ["--config", str(config), "--state-dir", str(tmp_path),
                                      "archive", "run"])
    assert result.exit_code == 78
    assert "archive.enabled" in result.output
    config.write_text(base + "enabled = true\n")
    result = CliRunner().invoke(cli, ["--config", str(config), "--state-dir", str(tmp_path),
                                      "archive", "run"])
    assert result.exit_code == 78
    assert "archive.credentials_file" in result.output
    assert "0644" in result.output


def test_an_altered_recording_is_not_archived(tmp_path: Path,
                                               objectstore: ObjectStore) -> None:
    box = make_box(tmp_path, objectstore)
    (call,) = make_calls(box.state_dir, [{"counter": 8, "ring_at": NOW}])
    assert call.recording is not None
    with call.recording.open("r+b") as f:  # one byte changed after it was indexed
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    up = uploader(box)
    try:
        up.step()
    finally:
        up.close()
    assert up.service_error is None  # the service is fine; this one call is not
    conn = queue.open_queue(box.config.db_path)
    try:
        row = conn.execute("SELECT state, attempts, last_error FROM archive").fetchone()
    finally:
        conn.close()
    assert row[:2] == ("queued", 1)
    assert "differs from the index" in row[2]
    client = make_client(box.config.archive, box.credentials)
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{box.prefix}/calls/")
    assert not listing.get("KeyCount")


def test_calls_finalized_while_it_runs_are_found_without_a_full_scan(
        tmp_path: Path, objectstore: ObjectStore) -> None:
    box = make_box(tmp_path, objectstore)
    make_calls(box.state_dir, [{"counter": 9, "ring_at": NOW - 60}])
    up = uploader(box)
    try:
        up.step()  # the full reconcile at start
        full_at = up._full_at
        (later,) = make_calls(box.state_dir, [{"counter": 10, "ring_at": NOW}])
        up.step()  # found through its call-finalized audit entry
        assert up._full_at == full_at
    finally:
        up.close()
    assert state(box, later.reference) == "archived"


def test_the_bandwidth_cap_paces_the_body(tmp_path: Path) -> None:
    """100 kB at 80 kbit/s (10 kB/s) must be paced over ~10 s. A recording Event answers the
    reader's waits at once, so no test time passes and each wait is how far the body is ahead
    of its schedule since the start: the last one is the whole body's ~10 s."""
    from appliance.archive.uploader import Stopped, _Throttled

    class Recording(threading.Event):
        def __init__(self) -> None:
            super().__init__()
            self.waits: list[float] = []

        def wait(self, timeout: float | None = None) -> bool:
            self.waits.append(timeout or 0.0)
            return False

    body = tmp_path / "body"
    body.write_bytes(b"x" * 100_000)
    stop = Recording()
    with body.open("rb") as raw:
        reader = _Throttled(raw, 80 * 1000 / 8, stop)  # type: ignore[arg-type]
        received = b"".join(iter(lambda: reader.read(8192), b""))
    assert len(received) == 100_000
    assert stop.waits == sorted(stop.waits)
    assert 9.0 <= stop.waits[-1] <= 10.0
    stop.set()
    with body.open("rb") as raw, pytest.raises(Stopped):  # stop is set: the upload ends
        _Throttled(raw, 0, stop).read(8192)  # type: ignore[arg-type]
