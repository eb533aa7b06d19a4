"""Records you can prove: migration v2, actor, config audit, retention, erasure, verify, export.

Real files, real SQLite: every call is made with Store + Recorder as the daemon makes it
(tests/store/callfactory.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given
from hypothesis import strategies as st

from appliance.config import RetentionConfig
from appliance.errors import StoreError
from appliance.store import verify as v
from appliance.store.audit import config_changes, current_actor, record_config
from appliance.store.db import SCHEMA_VERSION, Store
from appliance.store.export import ExportError, display_reference, export_call, notice_lines
from appliance.store.retention import (
    AlreadyErased,
    RecordNotFound,
    erase_call,
    locate_recording,
    number_variants,
    plan_purge,
    purge,
)

from .callfactory import DAY_S, NAME, NUMBER, audio, make_calls, state_paths

FIXTURES = Path(__file__).parent / "databases"
NOW = 1_750_000_000.0
RETENTION = RetentionConfig(recordings_days=365, voicemail_days=90, metadata_days=730)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def _open(state_dir: Path) -> Store:
    return Store.open(state_paths(state_dir)[0])


@pytest.fixture
def opened(state: Path) -> Iterator[Store]:
    """The index of ``state`` (calls must be made before the fixture is requested)."""
    store = _open(state)
    try:
        yield store
    finally:
        store.close_sync()


def _grep(root: Path, needle: str) -> list[Path]:
    """Every file under ``root`` whose raw bytes contain ``needle``."""
    data = needle.encode("utf-8")
    return [p for p in root.rglob("*") if p.is_file() and data in p.read_bytes()]


# ---------------------------------------------------------------------- schema v2


def test_v1_database_migrates_to_v2_with_tombstone_columns(tmp_path: Path) -> None:
    path = tmp_path / "appliance.db"
    with sqlite3.connect(path) as conn:
        conn.executescript((FIXTURES / "schema_v1.sql").read_text())
    store = Store.open(path)
    try:
        call = store.get_call("42719038")
        assert call is not None
        assert call["caller_name"] == "KOVACS"
        assert (call["recording_deleted_at"], call["purged_at"], call["erased_at"],
                call["erase_reason"]) == (None, None, None, None)
    finally:
        store.close_sync()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master "
                                               "WHERE type='index'")}
        # Schema v4 widened the outcome CHECK in place: 'unknown' is accepted, junk is not.
        conn.execute("UPDATE calls SET outcome = 'unknown' WHERE reference = '42719038'")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("UPDATE calls SET outcome = 'nonsense'")
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert "idx_audit_reference" in indexes


# ---------------------------------------------------------------------- actor, numbers


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"USER": "x", "SUDO_USER": "anna"}, "cli:anna"),
        ({"SUDO_USER": "anna", "SSH_CONNECTION": "192.0.2.7 51022 192.0.2.1 22"},
         "cli:anna@192.0.2.7"),
        ({"SUDO_USER": "bela", "SSH_CLIENT": "2001:db8::5 40000 22"}, "cli:bela@2001:db8::5"),
    ],
)
def test_current_actor(env: dict[str, str], expected: str) -> None:
    assert current_actor(env) == expected


def test_current_actor_without_sudo_is_the_login_user() -> None:
    import getpass

    assert current_actor({}) == f"cli:{getpass.getuser()}"


def test_number_variants_cover_hungarian_spellings() -> None:
    expected = {"+36301234567", "36301234567", "0036301234567", "06301234567"}
    for typed in ("+36 30 123 4567", "06-30-123-4567", "0036301234567", "(06) 30/123 4567"):
        assert set(number_variants(typed)) == expected
    assert number_variants("1234") == ["1234"]


@given(st.from_regex(r"[1-9][0-9]{7,8}", fullmatch=True))
def test_number_variants_are_one_equivalence_class(national: str) -> None:
    variants = set(number_variants("06" + national))
    assert "06" + national in variants
    assert "+36" + national in variants
    for spelling in variants:
        assert set(number_variants(spelling)) == variants


# ---------------------------------------------------------------------- config audit


def test_config_change_is_audited_once_with_the_changed_keys(state: Path) -> None:
    store = _open(state)
    try:
        base = {"retention": {"recordings_days": 1825}, "lines": [{"name": "main"}]}
        first = record_config(store, base, actor="cli:anna", source="/etc/x.toml")
        assert first is not None
        assert record_config(store, base, actor="cli:anna") is None
        changed = {"retention": {"recordings_days": 365}, "lines": [{"name": "main"}]}
        second = record_config(store, changed, actor="cli:bela")
        entries = store.audit_entries()
        assert [e["hash"] for e in entries] == [first, second]
        assert entries[0]["details"]["first"] is True
        assert entries[1]["actor"] == "cli:bela"
        assert entries[1]["details"]["changed"] == {"retention.recordings_days": [1825, 365]}
        assert store.verify_audit_chain() == []
    finally:
        store.close_sync()


def test_config_changes_flattens_lists_of_tables() -> None:
    assert config_changes({"lines": [{"name": "a"}]}, {"lines": [{"name": "b"}]}) == {
        "lines[0].name": ["a", "b"]}


# ---------------------------------------------------------------------- retention


def _retention_state(state: Path) -> dict[str, str]:
    made = make_calls(state, [
        {"counter": 1, "ring_at": NOW - 800 * DAY_S},                        # everything due
        {"counter": 2, "ring_at": NOW - 400 * DAY_S},                        # audio due
        {"counter": 3, "ring_at": NOW - 100 * DAY_S, "outcome": "voicemail"},  # voicemail due
        {"counter": 4, "ring_at": NOW - 100 * DAY_S},                        # kept
        {"counter": 5, "ring_at": NOW - 1 * DAY_S},                          # kept
        {"counter": 6, "ring_at": NOW - 800 * DAY_S, "record_s": None},      # declined, old
    ])
    return {name: m.reference for name, m in zip(
        ("ancient", "old", "voicemail", "recent", "new", "declined"), made, strict=True)}


def test_purge_by_date_per_kind(state: Path) -> None:
    refs = _retention_state(state)
    _db, recordings = state_paths(state)
    store = _open(state)
    try:
        before = {r: store.get_call(r) for r in refs.values()}
        plan = {i.reference: (i.delete_recording, i.delete_personal)
                for i in plan_purge(store, RETENTION, NOW)}
        assert plan == {refs["ancient"]: (True, True), refs["old"]: (True, False),
                        refs["voicemail"]: (True, False), refs["declined"]: (False, True)}

        dry = purge(store, recordings, RETENTION, actor="cli:test", now=NOW, dry_run=True)
        assert len(dry.items) == 4
        assert dry.files_deleted == []
        assert store.audit_entries()[-1]["action"] == "call-finalized"  # nothing audited
        for ref in refs.values():
            assert store.get_call(ref) == before[ref]

        report = purge(store, recordings, RETENTION, actor="cli:test", now=NOW)
        assert report.errors == []
        assert report.compacted
        for name in ("ancient", "old", "voicemail"):
            row = store.get_call(refs[name])
            assert row is not None
            assert row["recording_path"] is None
            assert row["recording_deleted_at"] is not None
            assert not Path(before[refs[name]]["recording_path"]).exists()
            # The sidecar stays as the call's record: the tombstone, without the audio keys.
            record = json.loads(Path(before[refs[name]]["recording_path"]).with_suffix(
                ".json").read_text(encoding="utf-8"))
            assert "file" not in record
            assert "sha256" not in record
            assert record["call"]["recording_deleted_at"] == row["recording_deleted_at"]
            assert record["call"]["outcome"] == row["outcome"]
            # The tombstone keeps what proves the call happened.
            assert row["outcome"] == before[refs[name]]["outcome"]
            assert row["recording_decision"] == "recorded"
            assert row["recording_sha256"] == before[refs[name]]["recording_sha256"]
        for name in ("recent", "new"):
            row = store.get_call(refs[name])
            assert row == before[refs[name]]
            assert Path(row["recording_path"]).exists()
        for name in ("ancient", "declined"):
            row = store.get_call(refs[name])
            assert (row["caller_number"], row["caller_name"]) == (None, None)
            assert row["purged_at"] == NOW
            assert all(e["detail"] == "" for e in store.events(refs[name]))
            assert [e["state"] for e in store.events(refs[name])] == ["answering", "ended"]
        # No record file keeps a number the index no longer has (the declined call's record
        # holds its tombstone); the calls whose metadata is kept keep it.
        purged = {refs["ancient"], refs["declined"]}
        assert {p.stem for p in recordings.rglob("*.json")} == set(refs.values())
        for path in recordings.rglob("*.json"):
            assert (NUMBER in path.read_text(encoding="utf-8")) == (path.stem not in purged)
        assert store.get_call(refs["old"])["caller_number"] == NUMBER

        purges = [e for e in store.audit_entries() if e["action"].startswith("purge")]
        assert [e["action"] for e in purges] == ["purge"] * 4 + ["purge-run"]
        assert purges[-1]["details"]["recordings_deleted"] == 3
        assert purges[-1]["details"]["personal_deleted"] == 2
        assert NUMBER not in json.dumps([e["details"] for e in purges])
        assert store.verify_audit_chain() == []
        # Idempotent: nothing more is due; the run is still audited.
        again = purge(store, recordings, RETENTION, actor="cli:test", now=NOW)
        assert again.items == []
        assert store.audit_entries()[-1]["action"] == "purge-run"
        assert v.verify_records(store, recordings).ok
    finally:
        store.close_sync()


def test_purge_never_touches_a_call_in_progress(state: Path) -> None:
    refs = _retention_state(state)
    store = _open(state)
    try:
        asyncio.run(store.update_call(refs["ancient"], outcome="in_progress"))
        plan = {i.reference for i in plan_purge(store, RETENTION, NOW)}
        assert refs["ancient"] not in plan
    finally:
        store.close_sync()


def test_locate_recording_stays_inside_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    (root / "2025" / "01" / "02").mkdir(parents=True)
    inside = root / "2025" / "01" / "02" / "12345678.flac"
    inside.write_bytes(b"x")
    assert locate_recording(root, str(inside)) == inside.resolve()
    # The state directory moved: the YYYY/MM/DD/file tail still finds it.
    assert locate_recording(root, "/old/state/recordings/2025/01/02/12345678.flac") == \
        inside.resolve()
    assert locate_recording(root, "/etc/passwd") is None
    assert locate_recording(root, str(root / ".." / ".." / "etc" / "passwd")) is None
    assert locate_recording(root, None) is None


# ---------------------------------------------------------------------- erasure


def test_erase_leaves_no_personal_data_in_the_state_directory(state: Path) -> None:
    made = make_calls(state, [{"counter": 1, "ring_at": NOW - DAY_S},
                              {"counter": 2, "ring_at": NOW, "number": "+3611111111",
                               "name": "OTHER"}])
    ref = made[0].reference
    _db, recordings = state_paths(state)
    assert _grep(state, NUMBER)  # the test can fail: the number is there before
    store = _open(state)
    try:
        result = erase_call(store, recordings, ref, reason="GDPR Art. 17 request #4",
                            actor="cli:anna")
        assert result.compacted
        assert {p.suffix for p in result.files_deleted} == {".flac"}
        # The sidecar was rewritten as the call's tombstone record: what the index keeps.
        (record_file,) = recordings.rglob(f"{ref}.json")
        record = json.loads(record_file.read_text(encoding="utf-8"))
        assert "file" not in record
        assert "sha256" not in record
        assert record["call"]["erase_reason"] == "GDPR Art. 17 request #4"
        assert (record["call"]["caller_number"], record["call"]["caller_name"]) == (None, None)
        row = store.get_call(ref)
        assert row is not None
        assert (row["caller_number"], row["caller_name"], row["recording_path"]) == (
            None, None, None)
        assert row["erase_reason"] == "GDPR Art. 17 request #4"
        assert row["erased_at"] is not None
        assert (row["outcome"], row["recording_decision"]) == ("bridged", "recorded")
        assert [e["detail"] for e in store.events(ref)] == ["", ""]
        entry = store.audit_entries()[-1]
        assert (entry["action"], entry["actor"], entry["reference"]) == (
            "erase", "cli:anna", ref)
        # The other caller is untouched.
        assert store.get_call(made[1].reference)["caller_number"] == "+3611111111"
        assert v.verify_records(store, recordings).ok
    finally:
        store.close_sync()
    assert _grep(state, NUMBER) == []
    assert _grep(state, NAME) == []
    assert _grep(state, NUMBER[3:]) == []  # not even the national digits
    assert _grep(state, "+3611111111")


def test_erase_refuses_without_reason_and_unknown_reference(state: Path) -> None:
    made = make_calls(state, [{"counter": 1, "ring_at": NOW}])
    _db, recordings = state_paths(state)
    store = _open(state)
    try:
        with pytest.raises(ValueError, match="reason"):
            erase_call(store, recordings, made[0].reference, reason="  ", actor="a")
        with pytest.raises(RecordNotFound):
            erase_call(store, recordings, "00000000", reason="x", actor="a")
        assert made[0].recording is not None
        assert made[0].recording.exists()
    finally:
        store.close_sync()


# ---------------------------------------------------------------------- verify


def test_verify_clean_then_each_kind_of_tampering(state: Path) -> None:
    made = make_calls(state, [{"counter": i, "ring_at": NOW + i} for i in range(1, 6)])
    _db, recordings = state_paths(state)
    store = _open(state)
    try:
        report = v.verify_records(store, recordings, actor="cli:test")
        assert report.ok
        assert report.recordings_checked == 5
        assert store.audit_entries()[-1]["action"] == "verify"
        assert store.audit_entries()[-1]["details"]["ok"] is True

        flac = made[0].recording
        assert flac is not None
        data = bytearray(flac.read_bytes())
        data[len(data) // 2] ^= 0x01  # one bit of one byte
        flac.write_bytes(bytes(data))
        assert made[1].recording is not None
        made[1].recording.unlink()
        made[2].recording.with_suffix(".json").unlink()  # type: ignore[union-attr]
        (made[3].recording.parent / "99999999.flac").write_bytes(b"stray")  # type: ignore[union-attr]
        # The index rewritten to match an altered file still disagrees with the chain.
        assert made[4].recording is not None
        made[4].recording.write_bytes(b"replaced")
        fake = hashlib.sha256(b"replaced").hexdigest()
        with sqlite3.connect(store.path) as conn:
            conn.execute("UPDATE calls SET recording_sha256 = ? WHERE reference = ?",
                         (fake, made[4].reference))
            conn.execute("UPDATE audit SET actor = 'someone' WHERE id = 1")

        found = {(p.reference, p.kind) for p in v.verify_records(store, recordings).problems}
        first_ref = store.audit_entries()[0]["reference"]
        assert found == {
            (made[0].reference, v.ALTERED),
            (made[1].reference, v.MISSING),
            (made[2].reference, v.SIDECAR_MISSING),
            ("99999999", v.ORPHAN),
            (made[4].reference, v.INDEX_MISMATCH),
            (made[4].reference, v.SIDECAR_MISMATCH),  # the sidecar still has the old hash
            (first_ref, v.CHAIN),
        }
    finally:
        store.close_sync()


def test_verify_reports_files_left_after_a_deletion(state: Path) -> None:
    made = make_calls(state, [{"counter": 1, "ring_at": NOW}])
    _db, recordings = state_paths(state)
    store = _open(state)
    try:
        assert made[0].recording is not None
        kept = made[0].recording.read_bytes()
        erase_call(store, recordings, made[0].reference, reason="test", actor="a")
        made[0].recording.write_bytes(kept)  # as if the unlink had not happened
        problems = v.verify_records(store, recordings).problems
        assert [(p.reference, p.kind) for p in problems] == [(made[0].reference, v.ORPHAN)]
    finally:
        store.close_sync()


# ---------------------------------------------------------------------- export


def test_export_directory_contents(state: Path, tmp_path: Path) -> None:
    made = make_calls(state, [{"counter": 7, "ring_at": NOW, "record_s": 0.5}])
    ref = made[0].reference
    shown = display_reference(ref)
    _db, recordings = state_paths(state)
    store = _open(state)
    try:
        result = export_call(store, recordings, ref, tmp_path / "out", actor="cli:anna")
        with pytest.raises(ExportError, match="exists"):
            export_call(store, recordings, ref, tmp_path / "out", actor="cli:anna")
        last = store.audit_entries()[-1]
    finally:
        store.close_sync()
    out = tmp_path / "out" / shown
    assert result.path == out
    assert result.problems == ()
    assert result.matches_index is True
    assert sorted(p.name for p in out.iterdir()) == sorted([
        f"{shown}.wav", f"{shown}.flac", "metadata.json", "proof.json", "SUMMARY.txt",
        "SHA256SUMS"])
    assert not list((tmp_path / "out").glob(".*"))  # no temporary directory left
    # The WAV plays anywhere: 16-bit PCM, 2 channels, the same samples as recorded.
    info = sf.info(out / f"{shown}.wav")
    assert (info.format, info.subtype, info.channels, info.samplerate) == (
        "WAV", "PCM_16", 2, 8000)
    wav, _rate = sf.read(out / f"{shown}.wav", dtype="int16")
    np.testing.assert_array_equal(wav, audio(0.5, 7))
    assert (out / f"{shown}.flac").read_bytes() == made[0].recording.read_bytes()  # type: ignore[union-attr]
    proof = json.loads((out / "proof.json").read_text())
    assert proof["original"]["sha256"] == hashlib.sha256(
        (out / f"{shown}.flac").read_bytes()).hexdigest()
    assert proof["original"]["matches_index"] is True
    assert [e["action"] for e in proof["audit_entries"]] == ["call-finalized", "export"]
    assert proof["audit_entries"][-1]["hash"] == last["hash"] == result.audit_hash
    assert proof["audit_chain"]["intact"] is True
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["call"]["caller_number"] == NUMBER
    assert [e["state"] for e in meta["events"]] == ["answering", "ended"]
    summary = (out / "SUMMARY.txt").read_text()
    for text in (shown, "hívásazonosító", "reference",
                 "Felvétel", "Recording", NUMBER, proof["original"]["sha256"]):
        assert text in summary
    for line in (out / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert last["action"] == "export"
    assert last["actor"] == "cli:anna"


def test_export_zip_and_a_call_without_audio(state: Path, tmp_path: Path) -> None:
    made = make_calls(state, [{"counter": 8, "ring_at": NOW, "record_s": None}])
    ref = made[0].reference
    _db, recordings = state_paths(state)
    store = _open(state)
    try:
        result = export_call(store, recordings, ref, tmp_path, actor="a", as_zip=True)
    finally:
        store.close_sync()
    shown = display_reference(ref)
    assert result.path == tmp_path / f"{shown}.zip"
    assert result.original_sha256 is None
    with zipfile.ZipFile(result.path) as zf:
        names = sorted(zf.namelist())
        summary = zf.read(f"{shown}/SUMMARY.txt").decode()
    assert names == sorted(f"{shown}/{n}" for n in (
        "metadata.json", "proof.json", "SUMMARY.txt", "SHA256SUMS"))
    assert "elutasította" in summary
    assert "declined" in summary


def test_export_of_an_altered_recording_says_so(state: Path, tmp_path: Path) -> None:
    made = make_calls(state, [{"counter": 9, "ring_at": NOW}])
    assert made[0].recording is not None
    data = bytearray(made[0].recording.read_bytes())
    data[-10] ^= 0xFF
    made[0].recording.write_bytes(bytes(data))
    _db, recordings = state_paths(state)
    store = _open(state)
    try:
        result = export_call(store, recordings, made[0].reference, tmp_path, actor="a")
    finally:
        store.close_sync()
    assert result.matches_index is False
    assert any("differs" in p for p in result.problems)
    assert "NEM egyezik" in (result.path / "SUMMARY.txt").read_text()


def test_tombstone_rejects_unknown_reference(state: Path) -> None:
    make_calls(state, [])
    store = _open(state)
    try:
        with pytest.raises(StoreError, match="no call"):
            store.tombstone_sync("nope", action="erase", actor="a", personal_deleted=True)
        assert store.audit_entries() == []  # rolled back with the failed update
    finally:
        store.close_sync()


def test_list_calls_time_and_outcome_filters(state: Path) -> None:
    made = make_calls(state, [
        {"counter": 1, "ring_at": NOW - 2 * DAY_S},
        {"counter": 2, "ring_at": NOW - DAY_S, "outcome": "voicemail"},
        {"counter": 3, "ring_at": NOW},
    ])
    refs = [m.reference for m in made]
    store = _open(state)
    try:
        assert [r["reference"] for r in store.list_calls(since=NOW - DAY_S)] == [
            refs[2], refs[1]]
        assert [r["reference"] for r in store.list_calls(until=NOW - DAY_S)] == [refs[0]]
        assert [r["reference"] for r in store.list_calls(outcome="voicemail")] == [refs[1]]
        assert store.list_calls(numbers=[]) == []
        assert len(store.list_calls(None, numbers=number_variants("06 30 555 0123"))) == 3
    finally:
        store.close_sync()


# ---------------------------------------------------------------------- issue 15 item 9


def test_erasing_twice_is_refused_and_the_first_reason_stays(state: Path) -> None:
    made = make_calls(state, [{"counter": 1, "ring_at": NOW}])
    ref = made[0].reference
    _db, recordings = state_paths(state)
    store = _open(state)
    try:
        erase_call(store, recordings, ref, reason="request #1", actor="cli:anna")
        entries = len(store.audit_entries())
        with pytest.raises(AlreadyErased, match="already erased"):
            erase_call(store, recordings, ref, reason="request #2", actor="cli:bob")
        assert store.get_call(ref)["erase_reason"] == "request #1"
        assert len(store.audit_entries()) == entries, "nothing happened, nothing audited"
    finally:
        store.close_sync()


def test_verify_compares_the_decision_and_outcome_with_the_chain(state: Path) -> None:
    made = make_calls(state, [{"counter": 1, "ring_at": NOW}, {"counter": 2, "ring_at": NOW}])
    db, recordings = state_paths(state)
    with sqlite3.connect(db) as conn:
        # Someone rewrites the row to say the caller declined, and another call's outcome.
        conn.execute("UPDATE calls SET recording_decision = 'declined' WHERE reference = ?",
                     (made[0].reference,))
        conn.execute("UPDATE calls SET outcome = 'missed' WHERE reference = ?",
                     (made[1].reference,))
    store = _open(state)
    try:
        report = v.verify_records(store, recordings)
    finally:
        store.close_sync()
    found = {(p.reference, p.kind): p.message for p in report.problems}
    assert len(report.problems) == 4
    first, second = made[0].reference, made[1].reference
    assert "'declined' differs from the audit chain's 'recorded'" in found[
        first, v.DECISION_MISMATCH]
    assert "outcome 'missed'" in found[second, v.DECISION_MISMATCH]
    # The call record files still say what happened, and so differ from the rewritten rows.
    assert "recording_decision 'recorded' differs from the index's 'declined'" in found[
        first, v.RECORD_MISMATCH]
    assert "outcome 'bridged' differs from the index's 'missed'" in found[
        second, v.RECORD_MISMATCH]


def test_a_failed_export_is_audited_as_a_failure(state: Path, tmp_path: Path) -> None:
    made = make_calls(state, [{"counter": 1, "ring_at": NOW}])
    ref = made[0].reference
    db, recordings = state_paths(state)
    # A damaged row (SQLite keeps any value in any column): the summary cannot be written,
    # after the export was audited.
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE calls SET duration_s = 'garbage' WHERE reference = ?", (ref,))
    out = tmp_path / "out"
    store = _open(state)
    try:
        with pytest.raises(ValueError):
            export_call(store, recordings, ref, out, actor="cli:anna", as_zip=True)
        entries = store.audit_entries(ref)
        assert [e["action"] for e in entries][-2:] == ["export", "export-failed"]
        assert entries[-1]["details"]["export_hash"] == entries[-2]["hash"]
        assert entries[-1]["details"]["error"].startswith("ValueError")
        assert store.verify_audit_chain() == []
    finally:
        store.close_sync()
    assert list(out.iterdir()) == [], "no half-written copy of personal data left"


def test_summary_lists_what_the_caller_was_told() -> None:
    row = {"notice_layers": '[{"layer": "notice", "version": "v1", "played": "full"}, '
                            '{"layer": "reference", "played": "full"}, '
                            '{"layer": "notice_details", "version": "v2", "played": "partial"}]'}
    assert notice_lines(row, "en") == [
        "  - first layer (short notice): played in full (version v1)",
        "  - call reference: played in full",
        "  - second layer (full notice): played in part (version v2)",
    ]
    assert notice_lines(row, "hu")[2] == (
        "  - második réteg (teljes tájékoztatás): részben lejátszva (változat v2)")
    # A call stored before the layered notice, or a damaged value: no lines, no error.
    assert notice_lines({"notice_layers": None}, "en") == []
    assert notice_lines({"notice_layers": "{not json"}, "hu") == []
