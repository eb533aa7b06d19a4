"""Make calls in a real state directory exactly as the daemon does (Store + Recorder).

Shared by tests/store/test_records.py and tests/cli/test_records.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.reference import make_reference
from appliance.store.callrecord import write_call_record
from appliance.store.db import Store
from appliance.store.recorder import Recorder

from ..policies import default_config

#: A fixed device key so references are stable across runs.
KEY = b"records-test-key"
DAY_S = 86400.0
#: A caller number that occurs nowhere else in the test data (the erase test greps for it).
NUMBER = "+36305550123"
NAME = "KOVACS JANOS"


@dataclass(frozen=True, slots=True)
class MadeCall:
    """A call the factory made."""

    reference: str
    recording: Path | None


def state_paths(state_dir: Path) -> tuple[Path, Path]:
    """``(db_path, recordings_dir)`` of a state directory (config.py's layout)."""
    return state_dir / "appliance.db", state_dir / "recordings"


def audio(seconds: float, seed: int) -> np.ndarray:
    """Deterministic noisy 2-channel int16 audio."""
    rng = np.random.default_rng(seed)
    return rng.integers(-8000, 8000, size=(int(seconds * 8000), 2), dtype=np.int16)


async def make_call(store: Store, recordings_dir: Path, counter: int, *, ring_at: float,
                    number: str = NUMBER, name: str = NAME, outcome: str = "bridged",
                    record_s: float | None = 1.0) -> MadeCall:
    """Create one finished call: row before "off-hook", events, recording, finalize, audit.

    Mirrors call/flow.py ``_answer``/``_finalize`` and daemon/media.py: the row carries the
    caller's number and name, the ANSWERING event detail names the number, the recording is
    finalized to FLAC and indexed, the call's record file is written just before the row is
    finalized, and a ``call-finalized`` audit entry names its hash.
    """
    ref = make_reference(counter, KEY)
    await store.create_call(ref, line="main", direction="in", caller_number=number,
                            caller_name=name, caller_withheld=0, ring_at=ring_at,
                            notice_version="v1", notice_completed=0,
                            recording_decision="pending", outcome="in_progress",
                            language="hu", created_at=ring_at)
    await store.add_event(ref, "answering", f"caller {number}", t=ring_at + 1)
    fields: dict[str, object] = {"end_at": ring_at + 30, "outcome": outcome,
                                 "notice_completed": 1, "duration_s": 29.0}
    recording: Path | None = None
    sha: str | None = None
    if record_s is not None:
        recorder = Recorder(recordings_dir, ref,
                            now=dt.datetime.fromtimestamp(ring_at, tz=dt.UTC),
                            fsync_interval_s=default_config().recording.fsync_interval_s)
        recorder.write(audio(record_s, counter))
        result = await recorder.finalize("flac")
        recording, sha = result.path, result.sha256
        fields.update(recording_decision="recorded", recording_path=str(result.path),
                      recording_sha256=result.sha256, recording_bytes=result.bytes)
    else:
        fields["recording_decision"] = "declined"
    row = store.get_call(ref)
    assert row is not None
    write_call_record(recordings_dir, {**row, **fields})
    await store.update_call(ref, **fields)
    await store.add_event(ref, "ended", f"{outcome}: caller hung up", t=ring_at + 30)
    await store.append_audit("call-finalized", actor="appliance", reference=ref,
                             details={"outcome": outcome,
                                      "recording_decision": fields["recording_decision"],
                                      "sha256": sha})
    return MadeCall(ref, recording)


def make_calls(state_dir: Path, specs: list[dict[str, object]]) -> list[MadeCall]:
    """Synchronously make several calls (each spec = make_call keyword arguments plus
    ``counter``), opening and closing the index like a daemon run."""

    async def run() -> list[MadeCall]:
        db_path, recordings_dir = state_paths(state_dir)
        store = Store.open(db_path)
        try:
            return [await make_call(store, recordings_dir, **spec)  # type: ignore[arg-type]
                    for spec in specs]
        finally:
            await store.close()

    return asyncio.run(run())
