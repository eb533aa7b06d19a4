"""Whole-file writes: the old file or the new one, never a part, never a stray temporary."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.files import write_atomically


@settings(max_examples=30)
@given(st.binary(max_size=70_000), st.sampled_from([0o600, 0o640, 0o644]))
def test_the_file_is_the_data_with_its_mode(tmp_path_factory: pytest.TempPathFactory,
                                            data: bytes, mode: int) -> None:
    folder = tmp_path_factory.mktemp("w")
    path = folder / "key"
    path.write_bytes(b"old")
    write_atomically(path, data, mode)
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert os.listdir(folder) == ["key"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "accounts.json"
    path.write_bytes(b"old")
    (tmp_path / "accounts.json.d").mkdir()
    # The rename fails: the target is a directory now.
    with pytest.raises(OSError):
        write_atomically(tmp_path / "accounts.json.d", b"new", 0o600)
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["accounts.json", "accounts.json.d"]


def test_a_folder_that_is_gone_is_an_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomically(tmp_path / "gone" / "key", b"x", 0o600)
