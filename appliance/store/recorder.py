"""Crash-safe two-channel call recorder and start-up recovery of interrupted recordings.

docs/audio.md §5.4 (recommended crash-safe recorder) and docs/design.md §5:

* While a call runs, audio goes to ``<reference>.wav.partial``, WAV PCM_16 at 8 kHz, written
  by the recorder's own thread (``write`` only enqueues). libsndfile's
  ``SFC_SET_UPDATE_HEADER_AUTO`` rewrites the RIFF/data sizes after every write, and the file
  is fsync'ed at least every ``fsync_interval_s``: that interval is what a power cut can lose.
* At the end the WAV is encoded (FLAC by default), verified by decoding, fsync'ed, renamed
  atomically, the directory fsync'ed; a JSON sidecar makes the archive self-describing; the
  partial is deleted.
* At start-up :func:`recover_leftovers` repairs and finalizes every ``*.wav.partial`` (a kill
  between libsndfile's data write and its header rewrite leaves a header claiming fewer frames
  than the file holds; docs/audio.md §5.3).

Channel layout: 0 = caller (line), 1 = shop (handset).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import hashlib
import json
import logging
import os
import queue
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

import numpy as np
import numpy.typing as npt
import soundfile as sf

from appliance.audio.pcm import SAMPLE_RATE_HZ
from appliance.errors import StoreError
from appliance.files import write_atomically

_LOGGER = logging.getLogger(__name__)

#: Channel 0 = caller (line), 1 = shop (handset).
CHANNELS: Final = 2
CHANNEL_LAYOUT: Final = ("caller", "shop")
#: PCM_16: 2 bytes per sample, so one 2-channel frame is 4 bytes.
BYTES_PER_FRAME: Final = 2 * CHANNELS
#: Mode of recording files and directories (docs/design.md §5); directories are group-writable so
#: the owner's page (its own user in the ``appliance`` group) can erase a call (docs/web.md).
FILE_MODE: Final = 0o640
DIR_MODE: Final = 0o770
PARTIAL_SUFFIX: Final = ".wav.partial"
#: Frames per read/write block while encoding (1 s of audio; bounded memory for long calls).
ENCODE_BLOCK_FRAMES: Final = SAMPLE_RATE_HZ
#: libsndfile command: rewrite the header after every write (sndfile.h SFC_SET_UPDATE_HEADER_AUTO;
#: soundfile has no wrapper, docs/audio.md §5.3).
SFC_SET_UPDATE_HEADER_AUTO: Final = 0x1061
#: Opus decodes may differ from the source length by its pre-skip/padding; allow one 20 ms
#: Opus frame each way (in 8 kHz frames) when verifying a lossy encode.
OPUS_LENGTH_TOLERANCE_FRAMES: Final = 160

#: codec name → (file extension, soundfile format, subtype, lossless)
_CODECS: Final[dict[str, tuple[str, str, str, bool]]] = {
    "flac": ("flac", "FLAC", "PCM_16", True),
    "opus": ("opus", "OGG", "OPUS", False),
    "wav": ("wav", "WAV", "PCM_16", True),
}

_STOP: Final = object()


@dataclass(frozen=True, slots=True)
class RecordingResult:
    """A finalized recording.

    Attributes:
        path: the encoded file (``<reference>.<ext>``).
        sha256: hex SHA-256 of that file.
        bytes: its size in bytes.
        frames: audio frames (samples per channel).
        duration_s: frames / 8000.
        codec: ``flac``, ``opus`` or ``wav``.
        reference: the call reference (from the file name).
    """

    path: Path
    sha256: str
    bytes: int
    frames: int
    duration_s: float
    codec: str
    reference: str = ""


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of the file at ``path``."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync_dir(path: Path) -> None:
    """fsync a directory so a rename/create/unlink in it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, root: Path) -> None:
    """Create ``path`` (and parents up to ``root``) with mode 0770 despite the umask."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p == root or p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=DIR_MODE)
        os.chmod(d, DIR_MODE)


def _create_file(path: Path, *, exclusive: bool) -> int:
    """Create ``path`` with mode 0640 (umask-proof) and return an O_RDWR descriptor."""
    flags = os.O_CREAT | os.O_RDWR | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


class Recorder:
    """Records one call to a crash-safe live WAV, then encodes it.

    Contract: ``write`` never blocks on I/O (it copies the block into a queue read by the
    recorder's thread) and may be called from any one thread (normally the event loop);
    ``finalize``/``abort`` are awaited from the event loop, once. When a write fails (a full
    disk), the writer logs it once, keeps what it wrote, and from then on ``write`` drops
    frames without raising (it is called once per 20 ms frame); :attr:`error` tells.
    """

    def __init__(self, recordings_dir: Path, reference: str, *, now: dt.datetime,
                 fsync_interval_s: float) -> None:
        """Create ``<recordings_dir>/YYYY/MM/DD/<reference>.wav.partial`` and start the writer.

        Args:
            recordings_dir: root of the recordings tree.
            reference: the call reference (file stem).
            now: the call's start time; picks the date directories and the sidecar's
                ``created``.
            fsync_interval_s: the most audio a power cut may lose
                (``recording.fsync_interval_s``; no default here, the configuration's).

        Raises:
            StoreError: the file cannot be created (e.g. it already exists).
        """
        self.reference = reference
        self.created = now
        self.directory = Path(recordings_dir) / f"{now:%Y}" / f"{now:%m}" / f"{now:%d}"
        self.partial_path = self.directory / (reference + PARTIAL_SUFFIX)
        self._fsync_interval_s = fsync_interval_s
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._frames_written = 0
        self._error: BaseException | None = None
        self._closed = False  # no more write() accepted
        try:
            make_dirs(self.directory, Path(recordings_dir))
            existing = sorted(p.name for p in self.directory.glob(reference + ".*"))
            if existing:
                # Never record over another call's evidence (a reference issued twice).
                raise FileExistsError(errno.EEXIST, f"a recording named {reference} exists "
                                      f"({', '.join(existing)})", str(self.directory))
            self._fd = _create_file(self.partial_path, exclusive=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self.partial_path}: {exc}") from exc
        try:
            self._sf = sf.SoundFile(self._fd, mode="w", samplerate=SAMPLE_RATE_HZ,
                                    channels=CHANNELS, format="WAV", subtype="PCM_16",
                                    closefd=False)
            # docs/audio.md §5.3: with the auto header every write leaves valid
            # RIFF/data sizes, so any reader (even Python's `wave`) opens a killed file.
            ok = sf._snd.sf_command(self._sf._file, SFC_SET_UPDATE_HEADER_AUTO,
                                    sf._ffi.NULL, 1)
            if ok != 1:
                _LOGGER.warning("%s: libsndfile refused SFC_SET_UPDATE_HEADER_AUTO",
                                self.partial_path)
        except (OSError, sf.LibsndfileError) as exc:
            os.close(self._fd)
            with contextlib.suppress(OSError):
                self.partial_path.unlink()
            raise StoreError(f"cannot open {self.partial_path}: {exc}") from exc
        self._thread = threading.Thread(target=self._writer, name=f"recorder-{reference}",
                                        daemon=True)
        self._thread.start()

    @property
    def frames_written(self) -> int:
        """Frames the writer thread has written to the live WAV so far."""
        return self._frames_written

    @property
    def error(self) -> BaseException | None:
        """Why the writer stopped writing (None while it works)."""
        return self._error

    def write(self, frames: npt.NDArray[np.int16]) -> None:
        """Queue one block of audio; returns at once (no file I/O on the caller's thread).

        Args:
            frames: shape (n, 2) int16; column 0 = caller, 1 = shop. Copied, so the caller
                may reuse its buffer.

        Raises:
            ValueError: wrong shape or dtype.
            StoreError: the recorder is finalized/aborted.
        """
        if self._closed:
            raise StoreError(f"recorder {self.reference} is closed")
        if self._error is not None:
            return  # the writer has failed (logged once): nothing more is recorded
        if frames.ndim != 2 or frames.shape[1] != CHANNELS or frames.dtype != np.int16:
            raise ValueError(f"expected (n, 2) int16 frames, got {frames.shape} {frames.dtype}")
        self._queue.put(frames.copy())

    def _writer(self) -> None:
        """Writer thread: drain the queue into the WAV, fsync at least every interval."""
        last_sync = time.monotonic()
        dirty = False
        try:
            # Make the new file's directory entry durable here, not on the caller's thread
            # (an fsync on an SD card can take tens of ms).
            os.fsync(self._fd)
            _fsync_dir(self.directory)
            while True:
                timeout = max(0.0, last_sync + self._fsync_interval_s - time.monotonic())
                try:
                    item = self._queue.get(timeout=timeout if dirty else None)
                except queue.Empty:
                    item = None
                if item is _STOP:
                    break
                if item is not None and self._error is None:
                    self._sf.write(item)
                    self._frames_written += len(item)
                    dirty = True
                if dirty and time.monotonic() - last_sync >= self._fsync_interval_s:
                    os.fsync(self._fd)
                    last_sync = time.monotonic()
                    dirty = False
        except (OSError, AssertionError, sf.LibsndfileError) as exc:
            # A full disk (ENOSPC) or a file grown past its limit (EFBIG) — soundfile reports
            # libsndfile's short write as an AssertionError. One line, not a traceback per
            # frame; what was written so far stays in the partial.
            reason = self._write_error(exc)
            _LOGGER.error("call %s: recording stopped after %.1f s: %s", self.reference,
                          self._frames_written / SAMPLE_RATE_HZ, reason)
            code = getattr(exc, "errno", None)
            self._error = OSError(code, reason) if code else OSError(reason)
            while self._queue.get() is not _STOP:
                pass
        except BaseException as exc:  # thread boundary: record, report on finalize
            _LOGGER.exception("Recorder %s: writer failed", self.reference)
            self._error = exc
            # Keep draining so the STOP sentinel is still seen and nobody waits forever.
            while self._queue.get() is not _STOP:
                pass
        finally:
            with contextlib.suppress(Exception):
                self._sf.close()
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)

    def _write_error(self, exc: BaseException) -> str:
        """A readable reason for a failed write (libsndfile keeps the system error)."""
        if isinstance(exc, OSError):
            return exc.strerror or str(exc)
        with contextlib.suppress(Exception):
            text = str(sf._ffi.string(sf._snd.sf_strerror(self._sf._file)).decode(
                errors="replace"))
            if text:
                return text
        return str(exc) or type(exc).__name__

    async def _stop_writer(self) -> None:
        if self._closed and not self._thread.is_alive():
            return
        self._closed = True
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    async def finalize(self, codec: str = "flac") -> RecordingResult:
        """Drain and close the live WAV, then encode, verify, rename and index it on disk.

        Args:
            codec: ``flac`` (lossless, default), ``opus`` (OGG/Opus) or ``wav`` (keep PCM).

        Returns:
            The finished recording (after a writer failure: what was written before it); the
            sidecar JSON is written and the partial deleted.

        Raises:
            StoreError: encoding/verification failed, e.g. on a disk still full (the partial
                is kept for :func:`recover_leftovers`).
        """
        if codec not in _CODECS:
            raise ValueError(f"unknown codec {codec!r}; expected one of {sorted(_CODECS)}")
        await self._stop_writer()
        try:
            return await asyncio.to_thread(
                finalize_partial, self.partial_path, codec, created=self.created
            )
        except StoreError as exc:
            if self._error is not None:
                raise StoreError(f"recorder {self.reference} failed ({self._error}) and what "
                                 f"it wrote cannot be finalized now: {exc}") from exc
            raise

    async def abort(self) -> None:
        """Stop recording and delete the live file (nothing of this call may be kept)."""
        await self._stop_writer()
        await asyncio.to_thread(self._delete_partial)

    def _delete_partial(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.partial_path.unlink()
        _fsync_dir(self.directory)


# ---------------------------------------------------------------------- WAV header repair


def repair_wav_header(path: Path) -> int:
    """Make a PCM WAV's RIFF and data sizes match the file length; return the data frames.

    A writer killed between libsndfile's data write and its header rewrite leaves sizes
    that claim too little (docs/audio.md §5.3). The data size becomes the bytes
    after the ``data`` chunk header rounded down to whole frames, and a torn trailing frame
    is cut off. Hand-written because no library repairs a WAV in place (``sox
    --ignore-length`` copies, and is not a dependency).

    Raises:
        StoreError: not a RIFF/WAVE file, or no ``fmt ``/``data`` chunk.
    """
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        header = f.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            raise StoreError(f"{path}: not a RIFF/WAVE file")
        block_align = 0
        offset = 12
        while True:
            chunk = _read_at(f, offset, 8)
            if len(chunk) < 8:
                raise StoreError(f"{path}: no data chunk")
            chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"fmt ":
                fmt = _read_at(f, offset + 8, 16)
                # WAVEFORMAT: tag(2) channels(2) rate(4) byte rate(4) block align(2) bits(2)
                block_align = struct.unpack("<H", fmt[12:14])[0]
            elif chunk_id == b"data":
                break
            # RIFF chunks are word-aligned.
            offset += 8 + chunk_size + (chunk_size & 1)
        if block_align == 0:
            raise StoreError(f"{path}: no fmt chunk before data")
        data_start = offset + 8
        data_bytes = max(0, size - data_start)
        data_bytes -= data_bytes % block_align
        riff_size = data_start + data_bytes - 8
        if size != data_start + data_bytes:
            f.truncate(data_start + data_bytes)
        if (struct.unpack("<I", header[4:8])[0] != riff_size
                or chunk_size != data_bytes):
            _LOGGER.warning("%s: header claimed %d data bytes, file holds %d; repaired",
                            path, chunk_size, data_bytes)
            f.seek(4)
            f.write(struct.pack("<I", riff_size))
            f.seek(offset + 4)
            f.write(struct.pack("<I", data_bytes))
        f.flush()
        os.fsync(f.fileno())
    return data_bytes // block_align


def _read_at(f: BinaryIO, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


# ---------------------------------------------------------------------- encoding


def finalize_partial(partial: Path, codec: str = "flac", *,
                     created: dt.datetime | None = None) -> RecordingResult:
    """Encode a (closed) live WAV into its final file, verify it, write the sidecar.

    Steps (docs/design.md §5): repair the header from the file length; encode into
    ``<reference>.<ext>.tmp``; decode it back and compare (frame count and PCM digest for
    lossless codecs, length within one Opus frame for Opus); fsync; rename to
    ``<reference>.<ext>``; fsync the directory; write ``<reference>.json`` atomically;
    delete the partial. Safe to re-run after a crash at any step.

    Args:
        partial: ``…/<reference>.wav.partial``.
        codec: ``flac``, ``opus`` or ``wav``; an empty recording is always kept as ``wav``
            (libsndfile cannot write a valid empty FLAC/Ogg), as the result's codec says.
        created: recording start for the sidecar; defaults to the partial's mtime.

    Raises:
        StoreError: unreadable input or a failed verification (the partial is kept).
    """
    if codec not in _CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {sorted(_CODECS)}")
    if not partial.name.endswith(PARTIAL_SUFFIX):
        raise ValueError(f"{partial} is not a {PARTIAL_SUFFIX} file")
    reference = partial.name[: -len(PARTIAL_SUFFIX)]
    directory = partial.parent
    if created is None:
        created = dt.datetime.fromtimestamp(partial.stat().st_mtime, tz=dt.UTC)
    tmp: Path | None = None
    try:
        frames = repair_wav_header(partial)
        if frames == 0 and codec != "wav":
            # libsndfile writes a 0-byte FLAC (and an unreadable Ogg) for no audio; an empty
            # WAV is at least a valid file, so keep that and say so in the result.
            _LOGGER.info("Recording %s is empty; kept as WAV instead of %s", reference, codec)
            codec = "wav"
        ext, fmt, subtype, lossless = _CODECS[codec]
        final = directory / f"{reference}.{ext}"
        tmp = directory / f"{reference}.{ext}.tmp"
        source_digest = _encode(partial, tmp, fmt, subtype)
        _verify(tmp, frames, source_digest if lossless else None)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _place_exclusively(tmp, final, frames, source_digest if lossless else None)
        _fsync_dir(directory)
    except (OSError, sf.LibsndfileError, RuntimeError) as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise StoreError(f"cannot finalize {partial}: {exc}") from exc
    result = RecordingResult(
        path=final,
        sha256=sha256_file(final),
        bytes=final.stat().st_size,
        frames=frames,
        duration_s=frames / SAMPLE_RATE_HZ,
        codec=codec,
        reference=reference,
    )
    _write_sidecar(directory / f"{reference}.json", result, created)
    partial.unlink()
    _fsync_dir(directory)
    _LOGGER.info("Recording %s finalized: %s, %d frames, %d bytes", reference, final.name,
                 frames, result.bytes)
    return result


def _place_exclusively(tmp: Path, final: Path, frames: int, pcm_digest: str | None) -> None:
    """Move ``tmp`` to ``final`` unless ``final`` exists: a recording is never overwritten.

    ``link`` + ``unlink`` is the atomic "rename unless the target exists" (``os.replace``
    would replace another call's recording; a reference is never reused). An existing ``final``
    that decodes to exactly this audio is this recording's own, left by a crash between the
    rename and the deletion of the partial: it is kept and the re-run goes on.

    Raises:
        FileExistsError: ``final`` holds another recording (or, for a lossy codec, one that
            cannot be proven to be this one); ``tmp`` is deleted, the caller keeps the
            partial for a human.
    """
    try:
        os.link(tmp, final)
    except FileExistsError:
        same = False
        if pcm_digest is not None:
            with contextlib.suppress(OSError, sf.LibsndfileError, RuntimeError):
                _verify(final, frames, pcm_digest)
                same = True
        tmp.unlink()
        if not same:
            raise FileExistsError(
                errno.EEXIST, "another recording already has this name; refusing to "
                "overwrite it", str(final)) from None
        _LOGGER.info("%s already holds this recording (finalized before a restart)", final)
        return
    tmp.unlink()


def _encode(source: Path, target: Path, fmt: str, subtype: str) -> str:
    """Copy ``source`` into ``target`` in the given format block by block; return the
    SHA-256 of the source PCM (int16, interleaved)."""
    digest = hashlib.sha256()
    os.close(_create_file(target, exclusive=False))
    with sf.SoundFile(source) as src, sf.SoundFile(
        target, mode="w", samplerate=SAMPLE_RATE_HZ, channels=CHANNELS, format=fmt,
        subtype=subtype,
    ) as dst:
        if src.samplerate != SAMPLE_RATE_HZ or src.channels != CHANNELS:
            raise RuntimeError(f"{source}: {src.samplerate} Hz × {src.channels} channels, "
                               f"expected {SAMPLE_RATE_HZ} × {CHANNELS}")
        for block in src.blocks(ENCODE_BLOCK_FRAMES, dtype="int16", always_2d=True):
            digest.update(block.tobytes())
            dst.write(block)
    return digest.hexdigest()


def _verify(path: Path, frames: int, pcm_digest: str | None) -> None:
    """Decode ``path`` fully; check its length (and, if given, its PCM digest)."""
    digest = hashlib.sha256()
    decoded = 0
    with sf.SoundFile(path) as f:
        for block in f.blocks(ENCODE_BLOCK_FRAMES, dtype="int16", always_2d=True):
            digest.update(block.tobytes())
            decoded += len(block)
    if pcm_digest is not None:
        if decoded != frames:
            raise RuntimeError(f"{path}: decoded {decoded} frames, wrote {frames}")
        if digest.hexdigest() != pcm_digest:
            raise RuntimeError(f"{path}: decoded audio differs from the source")
    elif abs(decoded - frames) > OPUS_LENGTH_TOLERANCE_FRAMES:
        raise RuntimeError(f"{path}: decoded {decoded} frames, wrote {frames}")


def _write_sidecar(path: Path, result: RecordingResult, created: dt.datetime) -> None:
    """Write the self-describing JSON sidecar atomically (temp, fsync, rename, fsync dir).

    A ``call`` section already in the file (the call's record, store/callrecord.py: a call
    whose recording is finalized only at the next start, after a full disk) is kept.
    """
    sidecar: dict[str, Any] = {
        "reference": result.reference,
        "file": result.path.name,
        "channels": list(CHANNEL_LAYOUT),
        "rate": SAMPLE_RATE_HZ,
        "frames": result.frames,
        "duration_s": result.duration_s,
        "codec": result.codec,
        "bytes": result.bytes,
        "sha256": result.sha256,
        "created": created.isoformat(),
    }
    with contextlib.suppress(OSError, ValueError, AttributeError):
        call = json.loads(path.read_text(encoding="utf-8")).get("call")
        if isinstance(call, dict):
            sidecar["call"] = call
    write_json_atomically(path, sidecar)


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` durably and whole (``appliance.files.write_atomically``,
    mode 0640). Escapes everything outside ASCII, so a caller name full of control bytes reads
    safely in a terminal.

    Raises:
        OSError: it cannot be written; TypeError/ValueError: ``data`` is not JSON.
    """
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    write_atomically(path, text.encode("utf-8"), FILE_MODE)


def recover_leftovers(recordings_dir: Path, codec: str = "flac") -> list[RecordingResult]:
    """Finalize every ``*.wav.partial`` under ``recordings_dir`` (run once at start-up).

    Each result's ``reference`` comes from the file name, so the daemon can mark those calls
    ``interrupted``. A partial that cannot be finalized is logged and left in place for a
    human; the others still proceed.
    """
    results: list[RecordingResult] = []
    for partial in sorted(Path(recordings_dir).rglob("*" + PARTIAL_SUFFIX)):
        try:
            results.append(finalize_partial(partial, codec))
        except StoreError:
            _LOGGER.exception("Cannot recover %s; left in place", partial)
    return results
