"""Replicate the index with Litestream, verify the archive against it, restore a box into a
fresh state directory — all against a real S3 server, through the CLI."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.archive import queue
from appliance.archive.restore import RESTORE_COUNTER_MARGIN, restored_counter
from appliance.archive.s3 import call_key, make_client
from appliance.archive.uploader import Uploader
from appliance.cli.main import cli
from appliance.reference import ReferenceCipher, make_reference
from appliance.sim.objectstore import ObjectStore
from appliance.store.db import Store
from appliance.store.highwater import read_mark
from appliance.store.recorder import sha256_file
from appliance.store.retention import erase_call
from tests.archive.conftest import BUCKET, Box, make_box
from tests.store.callfactory import KEY, make_calls

NOW = time.time()


def run(box: Box, *args: str, state_dir: Path | None = None) -> tuple[int, str]:
    argv = ["--config", str(box.config_file)]
    if state_dir is not None:
        argv += ["--state-dir", str(state_dir)]
    result = CliRunner().invoke(cli, [*argv, "archive", *args])
    return result.exit_code, result.output


def test_replicate_verify_restore(tmp_path: Path, objectstore: ObjectStore) -> None:
    box = make_box(tmp_path, objectstore)
    box.state_dir.mkdir(parents=True)
    (box.state_dir / "reference.key").write_bytes(KEY)  # the key callfactory's references use
    calls = make_calls(box.state_dir, [
        {"counter": 11, "ring_at": NOW - 300},
        {"counter": 12, "ring_at": NOW - 200},
        {"counter": 13, "ring_at": NOW - 100, "record_s": None},
        {"counter": 14, "ring_at": NOW - 50},
    ])
    assert run(box, "run", "--once")[0] == 0
    store = Store.open(box.config.db_path)
    try:
        erase_call(store, box.config.recordings_dir, calls[1].reference, reason="request",
                   actor="cli:test")
    finally:
        store.close_sync()
    code, out = run(box, "verify")
    assert code == 1, out
    assert f"extra: {box.prefix}/calls/{calls[1].reference}/" in out  # not deleted yet
    assert run(box, "run", "--once")[0] == 0
    code, out = run(box, "verify")
    assert code == 1
    assert f"missing: {box.prefix}/index/ (no Litestream replica of the index)" in out
    assert run(box, "replicate", "--once")[0] == 0
    code, out = run(box, "verify", "--identity", str(box.identity_file))
    assert (code, out.splitlines()[-1]) == (0, "archive matches the index"), out

    fresh = tmp_path / "new-sd-card"
    code, out = run(box, "restore", "--to", str(fresh), "--identity", str(box.identity_file),
                    "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["calls"] == 4
    assert report["recordings"] == 2  # the erased call's recording is not restored
    assert (fresh / "reference.key").read_bytes() == KEY
    assert (fresh / "reference.key").stat().st_mode & 0o777 == 0o600
    restored = Store.open(fresh / "appliance.db")
    try:
        for call in (calls[0], calls[3]):
            row = restored.get_call(call.reference)
            assert sha256_file(Path(row["recording_path"])) == row["recording_sha256"]
            assert Path(row["recording_path"]).is_relative_to(fresh / "recordings")
        assert restored.get_call(calls[1].reference)["erased_at"] is not None
        assert restored.verify_audit_chain() == []
        assert [e["action"] for e in restored.audit_entries()][-1] == "archive-restore"
        assert restored.counter() >= read_mark(fresh)  # the daemon would answer on it
    finally:
        restored.close_sync()
    cipher = ReferenceCipher(KEY)
    counter = restored_counter(fresh / "appliance.db")
    assert counter >= max(cipher.counter_of(c.reference) for c in calls) + RESTORE_COUNTER_MARGIN
    assert read_mark(fresh) == counter  # the daemon's high-water mark agrees with the index

    async def next_reference() -> str:  # as Application.allocate_reference does
        store = Store.open(fresh / "appliance.db")
        try:
            issued = await store.next_counter(at_least=(read_mark(fresh) or 0) + 1)
        finally:
            await store.close()
        return make_reference(issued, (fresh / "reference.key").read_bytes())

    assert asyncio.run(next_reference()) not in {c.reference for c in calls}
    # The restored state passes verify against the same bucket.
    code, out = run(box, "verify", state_dir=fresh)
    assert code == 0, out

    # Differences: an object altered, one missing, one that nobody indexed.
    client = make_client(box.config.archive, box.credentials)
    client.put_object(Bucket=BUCKET, Key=call_key(box.prefix, calls[0].reference, "sidecar"),
                      Body=b"not what was uploaded")
    client.delete_object(Bucket=BUCKET, Key=call_key(box.prefix, calls[3].reference, "proof"))
    client.put_object(Bucket=BUCKET, Key=f"{box.prefix}/calls/99999999/x.age", Body=b"?")
    code, out = run(box, "verify", "--json")
    assert code == 1
    found = json.loads(out)
    assert found["missing"] == [call_key(box.prefix, calls[3].reference, "proof")]
    assert found["extra"] == [f"{box.prefix}/calls/99999999/x.age"]
    assert len(found["altered"]) == 1
    assert call_key(box.prefix, calls[0].reference, "sidecar") in found["altered"][0]


def test_restore_refuses_a_non_empty_target_and_a_wrong_identity(
        tmp_path: Path, objectstore: ObjectStore) -> None:
    box = make_box(tmp_path, objectstore)
    box.state_dir.mkdir(parents=True)
    (box.state_dir / "reference.key").write_bytes(KEY)
    make_calls(box.state_dir, [{"counter": 21, "ring_at": NOW}])
    assert run(box, "run", "--once")[0] == 0
    assert run(box, "replicate", "--once")[0] == 0
    code, out = run(box, "restore", "--to", str(box.state_dir))
    assert code == 1
    assert "not empty" in out
    (tmp_path / "other").mkdir()
    other = make_box(tmp_path / "other", objectstore)  # a different owner's identity
    code, out = run(box, "restore", "--to", str(tmp_path / "x"), "--identity",
                    str(other.identity_file))
    assert code == 1
    assert "cannot decrypt" in out


def test_status_calls_and_show_tell_the_archive_state(tmp_path: Path,
                                                     objectstore: ObjectStore) -> None:
    box = make_box(tmp_path, objectstore)
    make_calls(box.state_dir, [{"counter": 31, "ring_at": NOW}, {"counter": 32, "ring_at": NOW}])
    up = Uploader(box.config, box.credentials, box.prefix)
    up.open()
    try:
        queue.reconcile(up._conn)
    finally:
        up.close()
    code, out = run(box, "status")
    assert code == 0
    assert "0 archived, 2 waiting" in out
    result = CliRunner().invoke(cli, ["--config", str(box.config_file), "calls", "--json"])
    assert [r["archive"]["state"] for r in json.loads(result.output)] == ["queued", "queued"]
    result = CliRunner().invoke(cli, ["--config", str(box.config_file), "calls"])
    assert result.output.splitlines()[0].split()[-1] == "archive"
    assert result.output.splitlines()[1].split()[-1] == "queued"
    ref = json.loads(CliRunner().invoke(cli, ["--config", str(box.config_file), "last",
                                              "--json"]).output)["reference"]
    result = CliRunner().invoke(cli, ["--config", str(box.config_file), "show", ref])
    assert any(line.split()[:2] == ["archive", "queued"] for line in result.output.splitlines())


@pytest.mark.unprivileged
def test_verify_fails_on_an_index_it_cannot_read(tmp_path: Path,
                                                 objectstore: ObjectStore) -> None:
    box = make_box(tmp_path, objectstore)
    box.state_dir.mkdir(parents=True)
    (box.state_dir / "reference.key").write_bytes(KEY)
    make_calls(box.state_dir, [{"counter": 21, "ring_at": NOW - 60}])
    assert run(box, "run", "--once")[0] == 0
    box.config.db_path.chmod(0)
    try:
        code, out = run(box, "verify")
    finally:
        box.config.db_path.chmod(0o640)
    assert code == 1, out
    assert "sudo -u appliance" in out
    assert "matches" not in out


@pytest.mark.skipif(shutil.which("openssl") is None,
                    reason="openssl(1) makes the test CA (setup.sh test installs it)")
def test_https_with_the_configured_ca(tmp_path: Path) -> None:
    """archive.ca_file is what both the uploader (boto3) and Litestream trust; without it the
    service's certificate is refused."""
    server = ObjectStore(tmp_path / "s3", buckets=(BUCKET,), tls=True)
    server.start()
    try:
        (tmp_path / "untrusting").mkdir()
        untrusting = make_box(tmp_path / "untrusting", server)
        make_calls(untrusting.state_dir, [{"counter": 51, "ring_at": NOW}])
        code, out = run(untrusting, "run", "--once")
        assert code == 1
        assert "certificate" in out.lower()
        box = make_box(tmp_path, server, ca_file=str(server.ca_file))
        make_calls(box.state_dir, [{"counter": 52, "ring_at": NOW}])
        assert run(box, "run", "--once")[0] == 0
        assert run(box, "replicate", "--once")[0] == 0
        code, out = run(box, "restore", "--to", str(tmp_path / "restored"), "--json")
        assert code == 0, out
        assert json.loads(out)["calls"] == 1
        code, out = run(box, "verify")
        assert code == 0, out
    finally:
        server.stop()


def test_doctor_reports_the_archive(tmp_path: Path, objectstore: ObjectStore) -> None:
    def archive_lines(box: Box) -> dict[str, tuple[str, str]]:
        result = CliRunner().invoke(cli, ["--config", str(box.config_file), "doctor",
                                          "--json"])
        return {c["name"]: (c["level"], c["detail"]) for c in json.loads(result.output)
                if c["name"].startswith("archive")}

    box = make_box(tmp_path, objectstore)
    make_calls(box.state_dir, [{"counter": 61, "ring_at": NOW}])
    found = archive_lines(box)
    assert found["archive"][0] == "pass"
    assert found["archive queue"] == ("warn", "the uploader has never run on this index")
    assert run(box, "run", "--once")[0] == 0
    assert archive_lines(box)["archive queue"] == ("pass", "1 archived, 0 waiting, 0 to delete")
    (tmp_path / "wrong").mkdir()
    wrong = make_box(tmp_path / "wrong", objectstore, secret_key="wrong")
    level, detail = archive_lines(wrong)["archive"]
    assert level == "fail"
    assert "secret key is wrong" in detail or "refused" in detail
