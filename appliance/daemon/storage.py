"""The index and the disk as the daemon guards them: references, recovery, storage faults.

Contract: :meth:`Storage.open` opens the index (``Store``), the per-device reference key and
checks the index against the reference counter's high-water mark: an index that is behind it
(deleted, emptied, restored from an old copy) is the ``index_fault`` and no reference is issued
until ``appliance index rebuild`` — a reference issued twice would overwrite a recording.
Otherwise recordings a crash left behind are finalized and unfinished rows marked
``interrupted`` before the first call. While running, :meth:`Storage.allocate_reference` makes
each call's counter durable beside the key before use; a failed recording or index write is the
disk-full fault (``storage_error``; ``index_unwritable`` when calls cannot be indexed, which
keeps the box out of the line) until writes work again and free space is back above
``recording.min_free_mb``; rows that could not be finalized are kept and retried
(:meth:`Storage.run_unsaved`). Every change of a fault calls ``on_change``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from appliance.errors import StoreError
from appliance.files import write_atomically
from appliance.reference import COUNTER_SPACE, make_reference
from appliance.store.audit import record_config
from appliance.store.callrecord import CallRecords
from appliance.store.db import DB_DIR_MODE, Store
from appliance.store.highwater import REFERENCE_KEY_FILE, read_mark, write_mark
from appliance.store.recorder import recover_leftovers

if TYPE_CHECKING:
    from appliance.call.flow import CallResult
    from appliance.config import Config

_LOGGER = logging.getLogger(__name__)

#: How often the slow-changing faults (disk, clock, the index file) are re-checked.
HEALTH_INTERVAL_S: Final = 60.0
#: A call row that could not be finalized (a full disk) is retried this often.
UNSAVED_RETRY_S: Final = 5.0
#: Size of the write that proves storage works again after a failure (half a minute of
#: live recording).
PROBE_BYTES: Final = 1_000_000
#: ``recording.min_free_mb`` counts megabytes of 10^6 bytes (as df -H and SD cards do).
BYTES_PER_MB: Final = 1_000_000


def load_or_create_key(state_dir: Path) -> bytes:
    """The per-device reference key (32 random bytes, 0600), created at first start."""
    path = state_dir / REFERENCE_KEY_FILE
    try:
        key = path.read_bytes()
        if len(key) >= 16:
            return key
        raise StoreError(f"{path} is damaged ({len(key)} bytes); restore it from a backup")
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    write_atomically(path, key, 0o600)
    return key


class Storage:
    """The daemon's index, reference key and storage faults. All methods run on the loop."""

    def __init__(self, config: Config, on_change: Callable[[], None]) -> None:
        self._config = config
        self._on_change = on_change
        self._store: Store | None = None
        #: Every finished call's record file (store/callrecord.py).
        self.call_records = CallRecords(config.recordings_dir)
        self._key = b""
        #: Set at start when the index is behind the reference counter's high-water mark,
        #: or while running when its file was deleted or replaced.
        self.index_fault: str | None = None
        #: A recording or index write failed (a full disk): the disk-full fault until the
        #: writes succeed again and free space is back above ``recording.min_free_mb``.
        self.storage_error: str | None = None
        #: The index itself could not be written: the box cannot answer (relay released).
        self.index_unwritable = False
        #: Finished calls whose final row update or audit entry is not written yet.
        self._unsaved: list[CallResult] = []
        self._unsaved_added = asyncio.Event()
        #: How often kept rows are retried (tests shorten it).
        self.unsaved_retry_s = UNSAVED_RETRY_S
        self._recording_allowed = True
        #: References whose recording was finalized at start-up.
        self.recovered: list[str] = []

    @property
    def opened(self) -> bool:
        """Whether :meth:`open` has opened the index (it stays True after :meth:`close`)."""
        return self._store is not None

    @property
    def store(self) -> Store:
        """The index (closed after :meth:`close`).

        Raises:
            RuntimeError: before :meth:`open`.
        """
        if self._store is None:
            raise RuntimeError("the index is not open yet")
        return self._store

    async def open(self) -> None:
        """Open the index and the key; check the index and recover what a crash left."""
        cfg = self._config
        cfg.device.state_dir.mkdir(parents=True, exist_ok=True, mode=DB_DIR_MODE)
        self._store = Store.open(cfg.db_path)
        try:
            self._key = load_or_create_key(cfg.device.state_dir)
            self.index_fault = self._check_index()
            if self.index_fault is None:
                await self._recover()
            # The configuration in force is evidence too: audit any change since the last
            # start.
            await asyncio.to_thread(record_config, self.store, cfg.to_dict(), actor="appliance")
        except BaseException:
            await self._store.close()  # the daemon does not start: nothing else will close it
            raise

    async def close(self) -> None:
        await self.store.close()

    async def _recover(self) -> None:
        """Finalize recordings a crash (or a full disk) left behind; finish unfinished calls.

        A recovered recording joins its row; a row already finalized (the disk was full
        when its call ended) keeps its outcome. A row still ``in_progress`` becomes
        ``interrupted`` with an end time (its last event: the last moment known) and, like
        every finished call, a ``call-finalized`` audit entry. Each changed row's record file
        is rewritten first (store/callrecord.py).
        """
        results = await asyncio.to_thread(
            recover_leftovers, self._config.recordings_dir, self._config.recording.codec)
        for result in results:
            ref = result.reference
            row = self.store.get_call(ref)
            if row is None:
                _LOGGER.warning("call %s: recovered a recording the index does not know; "
                                "`appliance index rebuild` indexes it", ref)
                continue
            self.recovered.append(ref)
            _LOGGER.warning("call %s: recovered an interrupted recording (%.1f s)", ref,
                            result.duration_s)
            fields: dict[str, Any] = {
                "recording_decision": "recorded", "recording_path": str(result.path),
                "recording_sha256": result.sha256, "recording_bytes": result.bytes}
            outcome = row["outcome"]
            if outcome == "in_progress":
                outcome = "interrupted"
                fields.update(self._interrupted_fields(row), outcome=outcome)
            await self._save_record({**row, **fields})
            await self.store.update_call(ref, **fields)
            await self.store.add_event(ref, "recording-recovered",
                                       f"{result.duration_s:.1f} s finalized at start-up")
            await self.store.append_audit("call-finalized", actor="appliance", reference=ref,
                                          details={"outcome": outcome,
                                                   "recording_decision": "recorded",
                                                   "sha256": result.sha256, "recovered": True})
        for row in self.store.list_calls(limit=1000, outcome="in_progress"):
            ref = row["reference"]
            decision = row["recording_decision"]
            decision = "none" if decision == "pending" else decision
            fields = {"outcome": "interrupted", "recording_decision": decision,
                      **self._interrupted_fields(row)}
            await self._save_record({**row, **fields})
            await self.store.update_call(ref, **fields)
            await self.store.add_event(ref, "interrupted", "daemon stopped mid-call")
            await self.store.append_audit("call-finalized", actor="appliance", reference=ref,
                                          details={"outcome": "interrupted",
                                                   "recording_decision": decision,
                                                   "sha256": None, "recovered": True})
            _LOGGER.warning("call %s: marked interrupted (daemon stopped mid-call)", ref)

    async def _save_record(self, row: dict[str, Any]) -> None:
        """Rewrite a recovered call's record file; a failure is logged, never fatal (the
        row is the index's; the file follows at the call's next change)."""
        try:
            await self.call_records.save(row)
        except StoreError as exc:
            _LOGGER.error("call %s: %s", row["reference"], exc)

    def _interrupted_fields(self, row: dict[str, Any]) -> dict[str, Any]:
        """End time and length of a call the daemon did not see end: its last event."""
        times = [e["t"] for e in self.store.events(row["reference"])]
        answered = row["answer_at"]
        end = max([*times, answered or row["ring_at"] or row["created_at"]])
        # As the flow counts it: from off-hook, 0 for a call never answered.
        return {"end_at": end, "duration_s": round(end - answered, 3) if answered else 0.0}

    def _check_index(self) -> str | None:
        """Compare the index's reference counter with the high-water mark beside the key.

        Returns the fault text when the index is behind the mark (it was deleted, emptied or
        restored from an old copy): answering on it would issue references again and
        overwrite their recordings, so the daemon does not answer until ``appliance index
        rebuild``. A missing mark (first start, or an index from before
        the mark existed) is written from the index.
        """
        state_dir = self._config.device.state_dir
        mark = read_mark(state_dir)
        issued = self.store.counter()
        if mark is None:
            write_mark(state_dir, issued)
            return None
        if issued >= mark:
            return None
        fault = (f"the index was lost or replaced: it knows {issued} references, "
                 f"{mark} were issued — not answering; run `appliance index rebuild`")
        _LOGGER.error("%s (%s)", fault, self._config.db_path)
        return fault

    def index_lost_now(self) -> bool:
        """Whether the daemon must not issue references: the index was found lost at start,
        or its file was deleted or replaced while running (checked here, before each call,
        and by the health loop)."""
        if self.index_fault is None and self.store.file_replaced():
            self.index_fault = ("the index file was deleted or replaced while running — not "
                                "answering; stop the daemon, run `appliance index rebuild`, "
                                "start it")
            _LOGGER.error("%s (%s)", self.index_fault, self._config.db_path)
            self._on_change()
        return self.index_fault is not None

    async def allocate_reference(self) -> str:
        """The next call's reference; its counter is durable beside the key before use.

        Raises:
            StoreError: the index is lost (:meth:`index_lost_now`), cannot be written, or the
                reference space is exhausted.
        """
        if self.index_lost_now():
            raise StoreError(self.index_fault or "index lost")
        state_dir = self._config.device.state_dir
        mark = await asyncio.to_thread(read_mark, state_dir)
        counter = await self.store.next_counter(at_least=(mark or 0) + 1)
        if counter >= COUNTER_SPACE:
            raise StoreError("call reference space exhausted (10^7 calls)")
        await asyncio.to_thread(write_mark, state_dir, counter)
        return make_reference(counter, self._key)

    def free_bytes(self) -> int:
        """Free bytes where the recordings go (the state directory's file system)."""
        import shutil

        try:
            return shutil.disk_usage(self._config.device.state_dir).free
        except OSError:
            return 0

    def recording_space_ok(self) -> bool:
        """Whether free space is at or above ``recording.min_free_mb``."""
        return self.free_bytes() >= self._config.recording.min_free_mb * BYTES_PER_MB

    def may_record(self) -> bool:
        """Whether the call about to be answered may be recorded (enough free space).

        Logged once when recording stops being possible and once when it is again, not per
        call; the disk-full fault shows it meanwhile.
        """
        allowed = self.recording_space_ok()
        if allowed != self._recording_allowed:
            self._recording_allowed = allowed
            if allowed:
                _LOGGER.info("free space is back above recording.min_free_mb: recording again")
            else:
                _LOGGER.error("free space %.1f MB is below recording.min_free_mb = %d: calls "
                              "are answered but not recorded", self.free_bytes() / BYTES_PER_MB,
                              self._config.recording.min_free_mb)
            self._on_change()
        return allowed

    def storage_failed(self, what: str, *, index: bool = False) -> None:
        """A recording or index write failed: the disk-full fault (and, for the index, the
        relay released: a call that cannot be indexed is not answered)."""
        changed = self.storage_error != what or (index and not self.index_unwritable)
        self.storage_error = what
        self.index_unwritable = self.index_unwritable or index
        if changed:
            self._on_change()
        self._unsaved_added.set()  # the retry loop clears the fault when writes work again

    def keep_unsaved(self, result: CallResult) -> None:
        """Keep a finished call whose row could not be finalized; retried until it is."""
        self._unsaved.append(result)
        self.storage_failed("a call's row could not be finalized", index=True)

    async def run_unsaved(self) -> None:
        """Finalize kept rows as soon as the index can be written again,
        and clear the storage fault once nothing is pending and space is back."""
        while True:
            if not self._unsaved and self.storage_error is None:
                self._unsaved_added.clear()
                await self._unsaved_added.wait()
            await asyncio.sleep(self.unsaved_retry_s)
            for result in list(self._unsaved):
                try:
                    if result.unsaved_record is not None:
                        await self.call_records.save(result.unsaved_record)
                        result.unsaved_record = None
                    if result.unsaved is not None:
                        await self.store.update_call(result.reference, **result.unsaved)
                        result.unsaved = None
                    if result.unsaved_audit is not None:
                        await self.store.append_audit("call-finalized", actor="appliance",
                                                      reference=result.reference,
                                                      details=result.unsaved_audit)
                        result.unsaved_audit = None
                except StoreError:
                    break  # still full: try again later, in order
                self._unsaved.remove(result)
                _LOGGER.info("call %s: row finalized now (%s, %s)", result.reference,
                             result.outcome, result.recording_decision)
            if (not self._unsaved and self.storage_error and self.recording_space_ok()
                    and await asyncio.to_thread(self._probe_write)):
                _LOGGER.info("storage writable again: disk-full fault cleared")
                self.storage_error = None
                self.index_unwritable = False
                self._on_change()
            elif not self._unsaved and self.storage_error:
                await asyncio.sleep(HEALTH_INTERVAL_S)

    def _probe_write(self) -> bool:
        """Whether a recording-sized write succeeds now where the recordings go (a thread).

        Free space alone does not prove it (quotas, file size limits, a read-only remount);
        PROBE_BYTES written, fsync'ed and deleted do.
        """
        directory = self._config.recordings_dir
        probe = directory / ".write-probe"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, bytes(PROBE_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
            return True
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
