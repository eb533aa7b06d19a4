"""The records commands through click's CliRunner over a real state directory."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st

from appliance.cli.main import cli
from appliance.cli.records import parse_when
from appliance.reference import display_reference
from appliance.store.db import OUTCOMES

from ..store.callfactory import DAY_S, NUMBER, make_calls

ENV = {"SUDO_USER": "anna", "SSH_CONNECTION": "192.0.2.7 51022 192.0.2.1 22"}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text("[retention]\nrecordings_days = 365\nvoicemail_days = 90\n"
                    "metadata_days = 730\n")
    return path


def run(state: Path, config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), "--state-dir", str(state), *args],
                              env=ENV, catch_exceptions=False)


def _audit(state: Path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(state / "appliance.db")
    conn.row_factory = sqlite3.Row
    with conn:
        return conn.execute("SELECT * FROM audit ORDER BY id").fetchall()


def test_verify_clean_then_a_flipped_byte_names_the_reference(tmp_path: Path,
                                                              config_file: Path) -> None:
    state = tmp_path / "state"
    made = make_calls(state, [{"counter": 1, "ring_at": time.time()},
                              {"counter": 2, "ring_at": time.time()}])
    ok = run(state, config_file, "verify")
    assert ok.exit_code == 0, ok.output
    assert "checked 2 recording(s)" in ok.output
    assert made[1].recording is not None
    data = bytearray(made[1].recording.read_bytes())
    data[len(data) // 2] ^= 0x40
    made[1].recording.write_bytes(bytes(data))
    bad = run(state, config_file, "verify")
    assert bad.exit_code == 1
    assert display_reference(made[1].reference) in bad.output
    assert display_reference(made[0].reference) not in bad.output
    as_json = run(state, config_file, "verify", "--json")
    assert as_json.exit_code == 1
    report = json.loads(as_json.output)
    assert report["ok"] is False
    assert [(p["reference"], p["kind"]) for p in report["problems"]] == [
        (made[1].reference, "altered")]
    actions = [(r["action"], r["actor"]) for r in _audit(state)]
    assert ("config-changed", "cli:anna@192.0.2.7") in actions
    assert actions.count(("verify", "cli:anna@192.0.2.7")) == 3


def test_purge_by_date_with_dry_run(tmp_path: Path, config_file: Path) -> None:
    state = tmp_path / "state"
    now = time.time()
    made = make_calls(state, [{"counter": 1, "ring_at": now - 400 * DAY_S},
                              {"counter": 2, "ring_at": now - 10 * DAY_S}])
    dry = run(state, config_file, "purge", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    planned = json.loads(dry.output)
    assert [c["reference"] for c in planned["calls"]] == [made[0].reference]
    assert made[0].recording is not None
    assert made[0].recording.exists()
    done = run(state, config_file, "purge")
    assert done.exit_code == 0, done.output
    assert f"purged {display_reference(made[0].reference)}" in done.output
    assert not made[0].recording.exists()
    assert made[1].recording is not None
    assert made[1].recording.exists()
    assert _audit(state)[-1]["action"] == "purge-run"
    assert run(state, config_file, "verify").exit_code == 0


def test_purge_without_an_index_is_a_quiet_success(tmp_path: Path, config_file: Path) -> None:
    result = run(tmp_path / "empty", config_file, "purge")
    assert result.exit_code == 0
    assert "nothing to purge" in result.output


def test_export_directory_and_zip(tmp_path: Path, config_file: Path) -> None:
    state = tmp_path / "state"
    made = make_calls(state, [{"counter": 3, "ring_at": time.time()}])
    shown = display_reference(made[0].reference)
    result = run(state, config_file, "export", shown, "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    out = tmp_path / "out" / shown
    assert {p.name for p in out.iterdir()} == {
        f"{shown}.wav", f"{shown}.flac", "metadata.json", "proof.json", "SUMMARY.txt",
        "SHA256SUMS"}
    zipped = run(state, config_file, "export", made[0].reference.replace("", " ").strip(),
                 "--out", str(tmp_path / "z"), "--zip", "--json")
    assert zipped.exit_code == 0, zipped.output
    assert Path(json.loads(zipped.output)["path"]) == tmp_path / "z" / f"{shown}.zip"
    exports = [r for r in _audit(state) if r["action"] == "export"]
    assert len(exports) == 2
    assert {r["reference"] for r in exports} == {made[0].reference}
    again = run(state, config_file, "export", shown, "--out", str(tmp_path / "out"))
    assert again.exit_code == 1
    assert "already exists" in again.output


def test_export_with_a_mistyped_reference_suggests_the_real_one(tmp_path: Path,
                                                                config_file: Path) -> None:
    state = tmp_path / "state"
    made = make_calls(state, [{"counter": 4, "ring_at": time.time(), "record_s": None}])
    ref = made[0].reference
    typo = ref[:-1] + str((int(ref[-1]) + 1) % 10)
    result = run(state, config_file, "export", typo, "--out", str(tmp_path / "o"))
    assert result.exit_code == 1
    assert display_reference(ref) in result.output
    assert not (tmp_path / "o").exists()


def test_erase_needs_a_reason_then_leaves_no_trace(tmp_path: Path, config_file: Path) -> None:
    state = tmp_path / "state"
    made = make_calls(state, [{"counter": 5, "ring_at": time.time()}])
    shown = display_reference(made[0].reference)
    refused = run(state, config_file, "erase", shown)
    assert refused.exit_code == 2
    assert "--reason" in refused.output
    empty = run(state, config_file, "erase", shown, "--reason", " ")
    assert empty.exit_code == 2
    assert made[0].recording is not None
    assert made[0].recording.exists()

    done = run(state, config_file, "erase", shown, "--reason", "GDPR request 2025-06-15")
    assert done.exit_code == 0, done.output
    assert not made[0].recording.exists()
    erase_rows = [r for r in _audit(state) if r["action"] == "erase"]
    assert len(erase_rows) == 1
    assert erase_rows[0]["actor"] == "cli:anna@192.0.2.7"
    # grep the whole state directory, database bytes included
    for path in state.rglob("*"):
        if path.is_file():
            assert NUMBER.encode() not in path.read_bytes(), path
    shown_call = run(state, config_file, "show", shown, "--json")
    assert json.loads(shown_call.output)["caller_number"] is None
    assert run(state, config_file, "verify").exit_code == 0


def test_find_by_any_spelling_of_the_number(tmp_path: Path, config_file: Path) -> None:
    state = tmp_path / "state"
    now = time.time()
    made = make_calls(state, [
        {"counter": 6, "ring_at": now - 60},
        {"counter": 7, "ring_at": now, "number": "+3611111111"},
        {"counter": 8, "ring_at": now - 30, "number": "06305550123", "record_s": None},
    ])
    result = run(state, config_file, "find", "--number", "+36 30 555 0123", "--json")
    assert result.exit_code == 0, result.output
    assert [r["reference"] for r in json.loads(result.output)] == [
        display_reference(made[2].reference), display_reference(made[0].reference)]
    table = run(state, config_file, "find", "--number", "06 30 555 0123")
    assert table.exit_code == 0
    assert display_reference(made[1].reference) not in table.output
    none = run(state, config_file, "find", "--number", "+3620000000")
    assert none.exit_code == 1
    assert "no calls" in none.output


def test_calls_since_until_outcome(tmp_path: Path, config_file: Path) -> None:
    state = tmp_path / "state"
    day = time.mktime((2025, 5, 10, 12, 0, 0, 0, 0, -1))  # local noon, 10 May 2025
    made = make_calls(state, [
        {"counter": 1, "ring_at": day - DAY_S},
        {"counter": 2, "ring_at": day, "outcome": "voicemail"},
        {"counter": 3, "ring_at": day + DAY_S},
    ])
    refs = [display_reference(m.reference) for m in made]

    def listed(*args: str) -> list[str]:
        result = run(state, config_file, "calls", "--json", *args)
        assert result.exit_code == 0, result.output
        return [r["reference"] for r in json.loads(result.output)]

    assert listed("--since", "2025-05-10") == [refs[2], refs[1]]
    assert listed("--until", "2025-05-10") == [refs[1], refs[0]]  # a date is inclusive
    assert listed("--since", "2025-05-10", "--until", "2025-05-10") == [refs[1]]
    assert listed("--since", "2025-05-10T13:00") == [refs[2]]
    assert listed("--outcome", "voicemail") == [refs[1]]
    bad = run(state, config_file, "calls", "--since", "last tuesday")
    assert bad.exit_code == 2
    assert "YYYY-MM-DD" in bad.output


def test_calls_outcome_choices_match_the_schema() -> None:
    option = next(p for p in cli.commands["calls"].params if p.name == "outcome")
    assert tuple(option.type.choices) == OUTCOMES  # type: ignore[attr-defined]


@pytest.mark.unprivileged
def test_unreadable_index_is_a_message_not_a_traceback(tmp_path: Path,
                                                       config_file: Path) -> None:
    state = tmp_path / "state"
    make_calls(state, [{"counter": 1, "ring_at": time.time(), "record_s": None}])
    (state / "appliance.db").chmod(0)
    try:
        result = run(state, config_file, "verify")
        mode = (state / "appliance.db").stat().st_mode & 0o777
    finally:
        (state / "appliance.db").chmod(0o640)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "sudo -u appliance" in result.output
    assert mode == 0  # the owner's "unreadable" stands: nothing widened it to pass


@pytest.mark.unprivileged
@pytest.mark.parametrize("what", ["recording", "sidecar", "directory", "tree"])
def test_verify_fails_on_what_it_cannot_read(tmp_path: Path, config_file: Path,
                                             what: str) -> None:
    from appliance.store.retention import sidecar_for

    state = tmp_path / "state"
    made = make_calls(state, [{"counter": 1, "ring_at": time.time()}])
    recording = made[0].recording
    assert recording is not None
    denied = {"recording": recording, "sidecar": sidecar_for(recording),
              "directory": recording.parent, "tree": state / "recordings"}[what]
    mode = denied.stat().st_mode & 0o777
    denied.chmod(0)
    try:
        result = run(state, config_file, "verify", "--json")
    finally:
        denied.chmod(mode)
    assert result.exit_code == 1, result.output
    kinds = {p["kind"] for p in json.loads(result.output)["problems"]}
    assert "unreadable" in kinds
    assert "missing" not in kinds  # a file it may not look at is not reported as gone
    assert run(state, config_file, "verify").exit_code == 0


@pytest.mark.unprivileged
@pytest.mark.parametrize("denied", ["appliance.db", "."])
def test_doctor_fails_on_an_index_it_cannot_read(tmp_path: Path, config_file: Path,
                                                 denied: str) -> None:
    state = tmp_path / "state"
    make_calls(state, [{"counter": 1, "ring_at": time.time(), "record_s": None}])
    # The state dir from the file: click itself refuses an unreadable --state-dir.
    config_file.write_text(config_file.read_text(encoding="utf-8")
                           + f'[device]\nstate_dir = "{state}"\n', encoding="utf-8")
    (state / denied).chmod(0)
    try:
        result = CliRunner().invoke(cli, ["--config", str(config_file), "doctor", "--json"],
                                    env=ENV, catch_exceptions=False)
    finally:
        (state / denied).chmod(0o750)
    checks = {c["name"]: c for c in json.loads(result.output)}
    assert checks["index"]["level"] == "fail", checks["index"]
    assert "appliancectl" in checks["index"]["fix"]
    assert result.exit_code == 1


@given(st.dates(min_value=dt.date(1980, 1, 1), max_value=dt.date(2100, 12, 31)))
def test_parse_when_a_date_spans_one_local_day(day: dt.date) -> None:
    start = parse_when(day.isoformat())
    end = parse_when(day.isoformat(), end=True)
    assert 23 * 3600 <= end - start <= 25 * 3600  # DST days are 23 or 25 hours long
    assert parse_when(day.isoformat() + "T00:00") == start
    assert dt.datetime.fromtimestamp(start).date() == day


@given(st.text(max_size=12).filter(lambda t: not t.strip()[:1].isdigit()))
def test_parse_when_rejects_non_dates(text: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_when(text)


HOSTILE_NAME = "\x1b]0;PWNED\x07\x1b[2J"
HOSTILE_NUMBER = "+3630\x1b[31m555"


def test_caller_id_from_the_line_is_shown_escaped_everywhere(tmp_path: Path,
                                                             config_file: Path) -> None:
    """Issue 15 item 5: stored as received; escaped in tables, details, summaries; valid in
    --json."""
    state = tmp_path / "state"
    made = make_calls(state, [{"counter": 1, "ring_at": time.time(), "number": HOSTILE_NUMBER,
                               "name": HOSTILE_NAME}])
    ref = made[0].reference
    outputs = {
        "show": run(state, config_file, "show", ref),
        "last": run(state, config_file, "last"),
        "calls": run(state, config_file, "calls"),
        "find": run(state, config_file, "find", "--number", HOSTILE_NUMBER),
    }
    for name, result in outputs.items():
        assert result.exit_code == 0, (name, result.output)
        assert "\x1b" not in result.output, name
        assert "\x07" not in result.output, name
        assert "\\x1b[31m" in result.output, name
    assert "\\x1b]0;PWNED\\x07\\x1b[2J" in outputs["show"].output
    for args in (("show", ref, "--json"), ("last", "--json")):
        view = json.loads(run(state, config_file, *args).output)
        assert view["caller_name"] == HOSTILE_NAME  # as received, a valid JSON string
        assert view["caller_number"] == HOSTILE_NUMBER
    rows = json.loads(run(state, config_file, "calls", "--json").output)
    assert rows[0]["caller_name"] == HOSTILE_NAME
    out = tmp_path / "export"
    assert run(state, config_file, "export", ref, "--out", str(out)).exit_code == 0
    folder = out / display_reference(ref)
    summary = (folder / "SUMMARY.txt").read_text(encoding="utf-8")
    assert "\x1b" not in summary
    assert "\x07" not in summary
    assert "\\x1b]0;PWNED\\x07\\x1b[2J" in summary
    metadata = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["call"]["caller_name"] == HOSTILE_NAME
