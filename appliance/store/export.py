"""Subject access: one call exported with its proof (``appliance export REF --out DIR``).

docs/legal.md (GDPR Art. 15, NAIH 2018): the caller may get a copy of the recording, free,
within a month. the audio as WAV (plays anywhere), the original file as the
device stored it, the metadata, the hash proof (SHA-256 of the original and the audit
entries for the call with their chain hashes) and a short summary in Hungarian and English.

The export is assembled in a hidden temporary directory next to the target, audited, then
renamed (or zipped) into place, so a failed export leaves no half-written copy of personal
data behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import soundfile as sf

from appliance.audio.pcm import SAMPLE_RATE_HZ
from appliance.errors import StoreError
from appliance.languages.registry import Language, Registry, builtin
from appliance.reference import display_reference
from appliance.store.db import Store
from appliance.store.recorder import (
    CHANNEL_LAYOUT,
    DIR_MODE,
    ENCODE_BLOCK_FRAMES,
    FILE_MODE,
    sha256_file,
)
from appliance.store.retention import RecordNotFound, locate_recording, sidecar_for
from appliance.text import printable

_LOGGER = logging.getLogger(__name__)

EXPORT_ACTION: Final = "export"
#: Audited when an export already audited could not be completed (no copy left behind).
EXPORT_FAILED_ACTION: Final = "export-failed"
METADATA_NAME: Final = "metadata.json"
PROOF_NAME: Final = "proof.json"
SUMMARY_NAME: Final = "SUMMARY.txt"
#: sha256sum(1) check file: ``sha256sum -c SHA256SUMS`` re-checks the whole export anywhere.
SUMS_NAME: Final = "SHA256SUMS"

#: SUMMARY.txt is always written in these (the supervisory authority's language and a common
#: one); a device speaking another language gets its own first (:func:`summary_languages`).
SUMMARY_LANGUAGES: Final[tuple[str, ...]] = ("hu", "en")
#: Width of the summary's label column (the value starts one space after it).
_LABEL_WIDTH: Final = 21


def summary_languages(languages: Registry | None = None,
                      device_language: str = "") -> tuple[Language, ...]:
    """The languages of SUMMARY.txt, in order: :data:`SUMMARY_LANGUAGES`, preceded by
    ``device_language`` when that is another one ("" = none; looked up in ``languages``,
    None = the built-in ones).

    Raises:
        ConfigError: ``device_language`` is not in ``languages``.
    """
    known = languages or builtin()
    first = (device_language,) if device_language not in ("", *SUMMARY_LANGUAGES) else ()
    return tuple(known.get(code, key="device.language") for code in (*first, *SUMMARY_LANGUAGES))


class ExportError(StoreError):
    """The export cannot be made (target exists, unknown reference …)."""


@dataclass(frozen=True, slots=True)
class ExportResult:
    """A finished export.

    Attributes:
        reference: the call (canonical digits).
        path: the export directory, or the ``.zip`` with ``--zip``.
        files: names of the exported files.
        original_sha256: SHA-256 of the original recording now (None without one).
        matches_index: that hash equals the index's (None without a recording).
        audit_hash: the ``export`` audit entry's hash.
        problems: what is wrong with the exported evidence (missing or altered file); the
            export is still made, and says so in its summary.
    """

    reference: str
    path: Path
    files: tuple[str, ...]
    original_sha256: str | None
    matches_index: bool | None
    audit_hash: str
    problems: tuple[str, ...]


def _when(t: float | None) -> str:
    """Local time with its UTC offset (a summary may be read in another time zone)."""
    if t is None:
        return "—"
    return dt.datetime.fromtimestamp(t).astimezone().isoformat(sep=" ", timespec="seconds")


def _write_bytes(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, FILE_MODE)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, value: Any) -> None:
    _write_bytes(path, (json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True)
                        + "\n").encode("utf-8"))


def _to_wav(source: Path, target: Path) -> None:
    """Decode ``source`` (FLAC/Opus/WAV) into a 16-bit 2-channel WAV, block by block."""
    with sf.SoundFile(source) as src, sf.SoundFile(
        target, mode="w", samplerate=src.samplerate, channels=src.channels, format="WAV",
        subtype="PCM_16",
    ) as dst:
        for block in src.blocks(ENCODE_BLOCK_FRAMES, dtype="int16", always_2d=True):
            dst.write(block)
    os.chmod(target, FILE_MODE)


def export_call(store: Store, recordings_dir: Path, reference: str, out_dir: Path, *,
                actor: str, as_zip: bool = False,
                summary: Sequence[Language] | None = None) -> ExportResult:
    """Export one call into ``out_dir/<427-193-53>/`` (or ``out_dir/<427-193-53>.zip``).

    Files: ``<ref>.wav`` (16-bit PCM, left = caller, right = shop), ``<ref>.<ext>`` (the
    original, byte for byte), ``metadata.json`` (the call row, its events, the sidecar),
    ``proof.json`` (SHA-256 of the original now and at indexing, the call's audit entries with
    their chain hashes — the ``export`` entry itself included — and the chain's state),
    ``SUMMARY.txt`` (in ``summary``'s languages) and ``SHA256SUMS``. A call without audio
    (declined, erased, purged) exports its tombstone and summary only.

    Args:
        store: the open index.
        recordings_dir: root of the recordings tree.
        reference: canonical digits.
        out_dir: where to put the export (created 0750 if missing).
        actor: see :func:`appliance.store.audit.current_actor`.
        as_zip: one ``.zip`` instead of a directory.
        summary: the languages of SUMMARY.txt, in order; None = :func:`summary_languages`.

    Raises:
        RecordNotFound: unknown reference.
        ExportError: the target already exists or cannot be written.
    """
    row = store.get_call(reference)
    if row is None:
        raise RecordNotFound(f"no call with reference {reference}")
    shown = display_reference(reference)
    out_dir = Path(out_dir)
    target = out_dir / (shown + (".zip" if as_zip else ""))
    if os.path.lexists(target):  # also a dangling symlink: nothing there is replaced
        raise ExportError(f"{target} already exists; choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        work = Path(_mkdtemp(out_dir, f".{shown}.export-"))
    except OSError as exc:
        raise ExportError(f"cannot write to {out_dir}: {exc.strerror}") from exc
    try:
        result = _assemble(store, recordings_dir, row, work, shown, actor, as_zip, target,
                           tuple(summary or summary_languages()))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return result


def _mkdtemp(parent: Path, prefix: str) -> str:
    """A private temporary directory inside ``parent`` (same file system: rename is atomic)."""
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.chmod(path, DIR_MODE)
    return path


def _assemble(store: Store, recordings_dir: Path, row: dict[str, Any], work: Path, shown: str,
              actor: str, as_zip: bool, target: Path,
              summary: tuple[Language, ...]) -> ExportResult:
    reference = row["reference"]
    problems: list[str] = []
    files: list[str] = []
    original_sha: str | None = None
    wav_name: str | None = None
    original_name: str | None = None
    sidecar: dict[str, Any] | None = None

    recording = (locate_recording(recordings_dir, row["recording_path"])
                 if row["recording_deleted_at"] is None else None)
    if row["recording_path"] and row["recording_deleted_at"] is None:
        if recording is None or not recording.exists():
            problems.append(f"the indexed recording {row['recording_path']} is missing")
        else:
            original_name = f"{shown}{recording.suffix}"
            shutil.copyfile(recording, work / original_name)
            os.chmod(work / original_name, FILE_MODE)
            files.append(original_name)
            original_sha = sha256_file(work / original_name)
            if original_sha != row["recording_sha256"]:
                problems.append(f"the recording's SHA-256 {original_sha} differs from the "
                                f"one indexed when it was made ({row['recording_sha256']})")
            with contextlib.suppress(OSError, ValueError):
                sidecar = json.loads(sidecar_for(recording).read_text(encoding="utf-8"))
            if recording.suffix.lower() == ".wav":
                wav_name = original_name  # already plays anywhere; one copy is enough
            else:
                wav_name = f"{shown}.wav"
                try:
                    _to_wav(recording, work / wav_name)
                    files.append(wav_name)
                except (sf.LibsndfileError, RuntimeError) as exc:
                    problems.append(f"the recording cannot be decoded: {exc}")
                    wav_name = None
    matches = None if original_sha is None else original_sha == row["recording_sha256"]

    events = store.events(reference)
    metadata = {
        "reference": shown,
        "call": row,
        "events": events,
        "sidecar": sidecar,
        "channels": {"left": CHANNEL_LAYOUT[0], "right": CHANNEL_LAYOUT[1]},
        "sample_rate_hz": SAMPLE_RATE_HZ,
        "exported_at": time.time(),
    }
    _write_json(work / METADATA_NAME, metadata)
    files.append(METADATA_NAME)

    # The export is audited before the proof is written, so the proof carries its own entry.
    audit_hash = store.append_audit_sync(EXPORT_ACTION, actor=actor, reference=reference,
                                         details={"format": "zip" if as_zip else "directory",
                                                  "original_sha256": original_sha,
                                                  "matches_index": matches,
                                                  "files": sorted(files)})
    try:
        return _finish(store, row, work, shown, as_zip, target, files, problems, original_sha,
                       matches, original_name, wav_name, audit_hash, summary)
    except Exception as exc:
        # The entry above said "export"; the chain must also say it did not happen.
        store.append_audit_sync(EXPORT_FAILED_ACTION, actor=actor, reference=reference,
                                details={"export_hash": audit_hash,
                                         "error": f"{type(exc).__name__}: {exc}"})
        raise


def _finish(store: Store, row: dict[str, Any], work: Path, shown: str, as_zip: bool,
            target: Path, files: list[str], problems: list[str], original_sha: str | None,
            matches: bool | None, original_name: str | None, wav_name: str | None,
            audit_hash: str, summary: tuple[Language, ...]) -> ExportResult:
    """Write the proof, summary and sums into ``work``, then move it (or its zip) into place
    without replacing anything."""
    reference = row["reference"]
    entries = store.audit_entries(reference)
    chain_problems = store.verify_audit_chain()
    all_entries = store.audit_entries()
    proof = {
        "reference": shown,
        "original": None if original_name is None else {
            "file": original_name,
            "sha256": original_sha,
            "sha256_at_indexing": row["recording_sha256"],
            "bytes": (work / original_name).stat().st_size,
            "matches_index": matches,
        },
        "audit_entries": [
            {k: e[k] for k in ("id", "t", "action", "actor", "reference", "details",
                               "prev_hash", "hash")}
            for e in entries
        ],
        "audit_chain": {
            "entries": len(all_entries),
            "head_hash": all_entries[-1]["hash"] if all_entries else None,
            "intact": not chain_problems,
            "problems": chain_problems,
            "hash_rule": "hash = sha256(prev_hash + canonical JSON of {t, action, actor, "
                         "reference, details}); keys sorted, no spaces, UTF-8",
        },
        "problems": problems,
    }
    _write_json(work / PROOF_NAME, proof)
    files.append(PROOF_NAME)
    _write_bytes(work / SUMMARY_NAME, _summary(row, shown, original_name, wav_name,
                                               original_sha, matches, problems,
                                               audit_hash, summary).encode("utf-8"))
    files.append(SUMMARY_NAME)
    sums = "".join(f"{sha256_file(work / name)}  {name}\n" for name in sorted(files))
    _write_bytes(work / SUMS_NAME, sums.encode("ascii"))
    files.append(SUMS_NAME)

    # Into place without replacing anything that appeared meanwhile: link(2) fails on an
    # existing name, and a directory is renamed only over the empty one made exclusively here.
    try:
        if as_zip:
            partial = work / target.name  # inside the private work dir, never beside target
            fd = os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
            with (os.fdopen(fd, "wb") as raw,
                  zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf):
                for name in sorted(files):
                    zf.write(work / name, f"{shown}/{name}")
            os.link(partial, target)
            shutil.rmtree(work, ignore_errors=True)
        else:
            os.mkdir(target, DIR_MODE)
            os.rename(work, target)
    except FileExistsError as exc:
        raise ExportError(f"{target} already exists; choose another --out") from exc
    _LOGGER.info("Call %s exported to %s", reference, target)
    return ExportResult(reference, target, tuple(sorted(files)), original_sha, matches,
                        audit_hash, tuple(problems))


def notice_lines(row: Mapping[str, Any], lang: str | Language) -> list[str]:
    """What the caller was told, one line per notice layer (``lang``: a built-in code or a
    :class:`~appliance.languages.registry.Language`).

    From ``notice_layers`` (docs/records.md); empty for a call stored before it existed.
    """
    words = (builtin().get(lang) if isinstance(lang, str) else lang).export
    try:
        layers = json.loads(row.get("notice_layers") or "[]")
    except ValueError:
        return []
    out = []
    for layer in layers:
        name = words["layers"].get(layer.get("layer"), layer.get("layer"))
        played = words["played"].get(layer.get("played"), layer.get("played"))
        version = layer.get("version")
        tail = words["layer_version"].format(version=version) if version else ""
        out.append(f"  - {name}: {played}{tail}")
    return out


def _summary(row: dict[str, Any], shown: str, original_name: str | None,
             wav_name: str | None, original_sha: str | None, matches: bool | None,
             problems: list[str], audit_hash: str, languages: tuple[Language, ...]) -> str:
    """The human summary: one block per language (:func:`summary_languages`), the first
    followed by the problems and the export time, the others after a rule."""
    # Caller ID is whatever the line sent: escaped, so the summary cannot drive a terminal
    # (`cat SUMMARY.txt`); metadata.json keeps it as received, as a JSON string.
    number = printable(row["caller_number"]) if row["caller_number"] else None
    name = printable(row["caller_name"]) if row["caller_name"] else None
    duration = f"{row['duration_s']:.1f} s" if row["duration_s"] is not None else "—"

    def block(language: Language) -> list[str]:
        words = language.export

        def field(label: str, value: str) -> str:
            return f"{words[label]:<{_LABEL_WIDTH}} {value}"

        answer = words["yes"] if row["notice_completed"] else words["no"]
        out = [
            words["title"].format(reference=shown),
            "",
            field("when", _when(row["ring_at"] or row["created_at"])),
            field("caller_number", number or words["unknown"]),
            field("caller_name", name or words["unknown"]),
            field("outcome", words["outcomes"].get(row["outcome"], row["outcome"])),
            field("recording", words["decisions"].get(row["recording_decision"],
                                                      row["recording_decision"])),
            field("notice_played", words["notice_version"].format(
                answer=answer, version=row["notice_version"] or "—")),
            *notice_lines(row, language),
            field("call_length", duration),
        ]
        if row["erased_at"] is not None:
            out.append(words["erased"].format(when=_when(row["erased_at"])))
        elif row["recording_deleted_at"] is not None:
            out.append(words["deleted"].format(when=_when(row["recording_deleted_at"])))
        out += ["", words["files"]]
        if wav_name:
            out.append(f"  {wav_name}  {words['file_wav']}")
        if original_name and original_name != wav_name:
            out.append(f"  {original_name}  {words['file_original']}")
        out += [f"  {METADATA_NAME}  {words['file_metadata']}",
                f"  {PROOF_NAME}  {words['file_proof']}",
                f"  {SUMS_NAME}  " + words["file_sums"].format(sums=SUMS_NAME)]
        if original_sha:
            check = ("" if matches is None
                     else words["sha256_matches"] if matches else words["sha256_differs"])
            out += ["", words["original_sha256"].format(sha256=original_sha), check]
        out.append(words["audit_hash"].format(hash=audit_hash))
        return out

    def joined(key: str) -> str:
        return " / ".join(language.export[key] for language in languages)

    blocks = [block(language) for language in languages]
    text = blocks[0]
    if problems:
        text += ["", joined("problems") + ":"] + [f"  - {p}" for p in problems]
    text += ["", f"{joined('exported')}: {_when(time.time())}"]
    for other in blocks[1:]:
        text += ["", "-" * 72, "", *other]
    return "\n".join(text).rstrip() + "\n"
