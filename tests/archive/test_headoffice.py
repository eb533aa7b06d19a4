"""The head office over two boxes' replicated indexes in one bucket (read-only): list, find a
caller across boxes, export one call into the box's own export package."""

from __future__ import annotations

import json
import time
from pathlib import Path

from click.testing import CliRunner

from appliance.cli.main import cli
from appliance.sim.objectstore import ObjectStore
from appliance.store.recorder import sha256_file
from tests.archive.conftest import CHAIN_BUCKET, Box, make_box
from tests.store.callfactory import NUMBER, make_calls

NOW = time.time()


def run(box: Box, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--config", str(box.config_file), "archive", *args])
    return result.exit_code, result.output


def test_head_office_lists_finds_and_exports_across_boxes(
        tmp_path: Path, objectstore: ObjectStore) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    office = make_box(tmp_path / "a", objectstore, prefix="shop-a", bucket=CHAIN_BUCKET)
    office_key = str(office.identity.to_public())
    other = make_box(tmp_path / "b", objectstore, prefix="shop-b", bucket=CHAIN_BUCKET,
                     recipients=[office_key])
    make_calls(office.state_dir, [{"counter": 41, "ring_at": NOW - 300},
                                  {"counter": 42, "ring_at": NOW - 200, "number": "+3612345"}])
    (b_call,) = make_calls(other.state_dir, [{"counter": 43, "ring_at": NOW - 100,
                                              "number": "06305550123"}])
    for box in (office, other):
        assert run(box, "run", "--once")[0] == 0
        assert run(box, "replicate", "--once")[0] == 0

    code, out = run(office, "calls", "--json")
    assert code == 0, out
    rows = json.loads(out)
    assert [(r["box"], r["archive_state"]) for r in rows] == [
        ("shop-b", "archived"), ("shop-a", "archived"), ("shop-a", "archived")]

    code, out = run(office, "find", "--number", NUMBER)
    assert code == 0, out
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["shop-b", "shop-a"]
    assert run(office, "find", "--number", "+3699999")[0] == 1

    code, out = run(office, "export", b_call.reference, "--identity",
                    str(office.identity_file), "--out", str(tmp_path / "out"))
    assert code == 0, out
    package = Path(out.split(" to ")[-1].strip())
    names = sorted(p.name for p in package.iterdir())
    assert {"metadata.json", "proof.json", "SUMMARY.txt", "SHA256SUMS"} <= set(names)
    assert b_call.recording is not None
    original = package / (package.name + ".flac")
    assert sha256_file(original) == sha256_file(b_call.recording)
    proof = json.loads((package / "proof.json").read_text())
    assert proof["original"]["matches_index"] is True
    assert proof["audit_chain"]["intact"] is True
