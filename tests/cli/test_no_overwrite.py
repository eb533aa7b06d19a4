"""No command overwrites what it did not create: ``sim-modem --link``, ``export --out``,
``bench --keep`` (``sounds say --out`` is in test_sounds.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from appliance.cli.main import cli
from appliance.cli.modem import _claim_link
from appliance.reference import display_reference

from ..store.callfactory import make_calls


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_sim_modem_link_refuses_a_regular_file(tmp_path: Path) -> None:
    mine = tmp_path / "notes.txt"
    mine.write_text("do not delete", encoding="utf-8")
    result = invoke("sim-modem", "--link", str(mine))
    assert result.exit_code == 1
    assert "--force" in result.output
    assert mine.read_text(encoding="utf-8") == "do not delete"


@pytest.mark.parametrize("force", [False, True])
def test_sim_modem_link_never_replaces_a_node_or_directory(tmp_path: Path, force: bool) -> None:
    fifo, directory = tmp_path / "fifo", tmp_path / "dir"
    os.mkfifo(fifo)
    directory.mkdir()
    for path in (fifo, directory):
        args = ["sim-modem", "--link", str(path), *(["--force"] if force else [])]
        result = invoke(*args)
        assert result.exit_code == 1
        assert "not replaced" in result.output
    assert fifo.is_fifo()
    assert directory.is_dir()


def test_sim_modem_link_claims_only_what_it_may(tmp_path: Path) -> None:
    stale = tmp_path / "modem"
    stale.symlink_to("/dev/pts/999")  # an earlier run's link: replaced without --force
    _claim_link(stale, force=False)
    assert not os.path.lexists(stale)
    other = tmp_path / "other"
    other.symlink_to(tmp_path)  # someone else's symlink: never
    with pytest.raises(SystemExit):
        _claim_link(other, force=True)
    assert other.is_symlink()
    regular = tmp_path / "file"
    regular.write_bytes(b"x")
    _claim_link(regular, force=True)  # --force: a regular file may go
    assert not regular.exists()


@pytest.fixture
def one_call(tmp_path: Path) -> tuple[Path, Path, str]:
    state = tmp_path / "state"
    made = make_calls(state, [{"counter": 1, "ring_at": time.time()}])
    config = tmp_path / "config.toml"
    config.write_text("", encoding="utf-8")
    return state, config, display_reference(made[0].reference)


@pytest.mark.parametrize("as_zip", [False, True])
def test_export_never_replaces_an_existing_target(tmp_path: Path, one_call: tuple[Path, Path, str],
                                                 as_zip: bool) -> None:
    state, config, ref = one_call
    out = tmp_path / "out"
    out.mkdir()
    name = ref + (".zip" if as_zip else "")
    (out / name).symlink_to(tmp_path / "nowhere")  # dangling: exists() says False
    (out / f"{name}.tmp").write_bytes(b"someone's file")  # was truncated by the zip export
    zip_flag = ["--zip"] if as_zip else []
    result = CliRunner().invoke(cli, ["--config", str(config), "--state-dir", str(state),
                                      "export", ref, "--out", str(out), *zip_flag],
                                env={"SUDO_USER": "anna"}, catch_exceptions=False)
    assert result.exit_code == 1
    assert "already exists" in result.output
    assert (out / name).is_symlink()
    assert (out / f"{name}.tmp").read_bytes() == b"someone's file"
    assert sorted(p.name for p in out.iterdir()) == sorted([name, f"{name}.tmp"])


def test_export_zip_leaves_files_beside_it_alone(tmp_path: Path,
                                                 one_call: tuple[Path, Path, str]) -> None:
    state, config, ref = one_call
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{ref}.zip.tmp").write_bytes(b"someone's file")
    result = CliRunner().invoke(cli, ["--config", str(config), "--state-dir", str(state),
                                      "export", ref, "--out", str(out), "--zip"],
                                env={"SUDO_USER": "anna"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (out / f"{ref}.zip").is_file()
    assert (out / f"{ref}.zip.tmp").read_bytes() == b"someone's file"


def test_bench_keep_refuses_a_directory_with_files(tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "results.json").write_text("{}", encoding="utf-8")
    result = invoke("bench", "--keep", str(keep), "--calls", "1")
    assert result.exit_code == 1
    assert "--force" in result.output
    assert (keep / "results.json").read_text(encoding="utf-8") == "{}"
