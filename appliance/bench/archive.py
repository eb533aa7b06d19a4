"""The archive's figures (docs/performance.md, "The archive"): finalize → archived latency,
the uploader's CPU and memory per call-minute, restore times.

Against a real SeaweedFS server on loopback (appliance.sim.objectstore), so network time is
loopback's: on a shop's uplink the upload takes what the bytes take (``bytes_per_call_minute``
says how many), the CPU and memory figures stay. The uploader runs as in production: its own
process (``appliance archive run``), production poll interval; calls are finalized the way the
daemon finalizes them (Recorder → FLAC + sidecar, index row, audit entry).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from appliance.audio.pcm import SAMPLE_RATE_HZ
from appliance.bench.probes import percentile_ms, proc_cpu_s, proc_memory_mb
from appliance.store.highwater import REFERENCE_KEY_FILE

Progress = Callable[[str], None]

#: Calls finalized one after another to time finalize → archived.
LATENCY_CALLS: Final = 5
LATENCY_CALL_S: Final = 10.0
#: Call lengths (minutes) whose upload CPU and memory are measured.
CALL_MINUTES: Final = (1.0, 10.0)
#: Upper bound for one call to be archived.
ARCHIVE_TIMEOUT_S: Final = 300.0
#: The reference key of the bench box (fixed: reproducible references).
BENCH_KEY: Final = b"archive-bench-key-32-bytes......"


def speechlike(seconds: float, seed: int) -> npt.NDArray[np.int16]:
    """Two channels of band-limited noise in talk spurts, one side at a time (what FLAC sees
    in a call: compresses like speech, not like white noise or silence)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE_HZ)
    noise = rng.standard_normal((n, 2))
    # A two-pole low-pass (~1 kHz) by a cumulative mean: the spectrum of voiced speech.
    kernel = np.ones(4) / 4
    for ch in range(2):
        noise[:, ch] = np.convolve(noise[:, ch], kernel, mode="same")
    spurt = (np.arange(n) // (3 * SAMPLE_RATE_HZ)) % 2  # 3 s turns
    envelope = np.stack([spurt == 0, spurt == 1], axis=1) * 0.9 + 0.02
    return np.clip(noise * envelope * 6000, -32768, 32767).astype(np.int16)


async def _finalize_call(store: Any, recordings_dir: Path, counter: int,
                         seconds: float) -> tuple[str, float]:
    """One call finalized as the daemon does it; return (reference, finalized-at epoch)."""
    from appliance.bench.benchconfig import FSYNC_INTERVAL_S
    from appliance.reference import make_reference
    from appliance.store.recorder import Recorder

    ref = make_reference(counter, BENCH_KEY)
    now = time.time()
    await store.create_call(ref, line="main", direction="in", caller_number="+36305550000",
                            ring_at=now - seconds, recording_decision="pending",
                            outcome="in_progress", created_at=now - seconds)
    recorder = Recorder(recordings_dir, ref, now=dt.datetime.now(dt.UTC),
                        fsync_interval_s=FSYNC_INTERVAL_S)
    block = SAMPLE_RATE_HZ * 10
    audio = speechlike(seconds, counter)
    for start in range(0, len(audio), block):
        recorder.write(audio[start:start + block])
    result = await recorder.finalize("flac")
    await store.update_call(ref, outcome="bridged", recording_decision="recorded",
                            recording_path=str(result.path), recording_sha256=result.sha256,
                            recording_bytes=result.bytes, duration_s=seconds, end_at=time.time())
    finalized = time.time()
    await store.append_audit("call-finalized", actor="appliance", reference=ref,
                             details={"outcome": "bridged", "sha256": result.sha256})
    return ref, finalized


def _wait_archived(db_path: Path, reference: str) -> float:
    """Poll the queue (read-only) until ``reference`` is archived; return its archived_at."""
    deadline = time.monotonic() + ARCHIVE_TIMEOUT_S
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        while time.monotonic() < deadline:
            try:
                row = conn.execute("SELECT state, archived_at FROM archive WHERE reference = ?",
                                   (reference,)).fetchone()
            except sqlite3.OperationalError:
                row = None  # the uploader has not created its tables yet
            if row is not None and row[0] == "archived":
                return float(row[1])
            time.sleep(0.02)
    finally:
        conn.close()
    raise TimeoutError(f"call {reference} not archived within {ARCHIVE_TIMEOUT_S:.0f} s")


def _full_restore(work: Path, config: Any, credentials: Any, identity_file: Path, client: Any,
                  n: int, progress: Progress) -> dict[str, Any]:
    """Archive ``n`` calls of 1 s each (rows as bench.index makes them, real FLAC files and
    sidecars, uploaded by the real uploader in-process), then restore them all."""
    import dataclasses
    import hashlib
    import json

    import soundfile as sf

    from appliance.archive.replicate import replicate_once
    from appliance.archive.restore import restore_box
    from appliance.archive.uploader import Uploader
    from appliance.bench.index import fill, synthetic_reference

    state = work / "state"
    state.mkdir(parents=True)
    (state / REFERENCE_KEY_FILE).write_bytes(BENCH_KEY)
    db = state / "appliance.db"
    progress(f"archive: {n} calls of 1 s for a full restore")
    fill(db, n, progress)
    day = state / "recordings" / "2025" / "06" / "15"
    day.mkdir(parents=True)
    conn = sqlite3.connect(db)
    try:
        with conn:
            for i in range(n):
                ref = synthetic_reference(i)
                path = day / f"{ref}.flac"
                sf.write(path, speechlike(1.0, i), SAMPLE_RATE_HZ, format="FLAC")
                data = path.read_bytes()
                path.with_suffix(".json").write_text(json.dumps({"reference": ref}))
                conn.execute("UPDATE calls SET recording_path = ?, recording_sha256 = ?, "
                             "recording_bytes = ? WHERE reference = ?",
                             (str(path), hashlib.sha256(data).hexdigest(), len(data), ref))
    finally:
        conn.close()
    archive = dataclasses.replace(config.archive, prefix="many")
    box = dataclasses.replace(config, archive=archive,
                              device=dataclasses.replace(config.device, state_dir=state))
    progress(f"archive: uploading {n} calls")
    uploader = Uploader(box, credentials, "many")
    uploader.open()
    t0 = time.perf_counter()
    try:
        uploader.step()
    finally:
        uploader.close()
    upload_s = time.perf_counter() - t0
    replicate_once(archive, credentials, "many", db)
    progress(f"archive: full restore of {n} calls")
    t0 = time.perf_counter()
    report = restore_box(box, credentials, "many", work / "restored",
                         identity_file=identity_file, actor="bench", client=client)
    restore_s = time.perf_counter() - t0
    return {f"upload_s_{n}_short_calls": round(upload_s, 1),
            f"restore_full_s_{n}_short_calls": round(restore_s, 1),
            f"restore_full_recordings_{n}_short_calls": report.recordings,
            "restore_full_ms_per_call": round(1000 * restore_s / n, 1)}


def measure_archive(work: Path, *, restore_calls: int, progress: Progress) -> dict[str, Any]:
    """Run the archive bench in ``work``; return flat figures with units in their names."""
    import pyrage

    from appliance.archive.replicate import replicate_once, restore_index
    from appliance.archive.restore import restore_box
    from appliance.archive.s3 import Credentials, make_client, write_credentials
    from appliance.bench.index import fill
    from appliance.config import load_config
    from appliance.sim.archive_demo import write_config_file
    from appliance.sim.objectstore import ObjectStore
    from appliance.store.db import Store

    figures: dict[str, Any] = {}
    server = ObjectStore(work / "s3", buckets=("archive",))
    progress("archive: starting SeaweedFS")
    server.start()
    try:
        identity = pyrage.x25519.Identity.generate()
        identity_file = work / "owner.agekey"
        identity_file.write_text(f"{identity}\n")
        credentials = Credentials(server.access_key, server.secret_key)
        write_credentials(work / "credentials.toml", credentials)
        settings = {"enabled": True, "endpoint": server.endpoint, "bucket": "archive",
                    "prefix": "bench", "credentials_file": str(work / "credentials.toml"),
                    "recipients": [str(identity.to_public())]}
        box = work / "box"
        box.mkdir()
        (box / REFERENCE_KEY_FILE).write_bytes(BENCH_KEY)
        config_file = work / "config.toml"
        write_config_file(config_file, box, settings)
        config = load_config(config_file)
        store = Store.open(config.db_path)
        uploader = subprocess.Popen(
            [sys.executable, "-m", "appliance", "--config", str(config_file), "archive", "run"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            counter = 0
            latencies: list[float] = []
            progress(f"archive: finalize → archived, {LATENCY_CALLS} calls of "
                     f"{LATENCY_CALL_S:.0f} s")
            for _ in range(LATENCY_CALLS):
                counter += 1
                ref, finalized = asyncio.run(_finalize_call(store, config.recordings_dir,
                                                            counter, LATENCY_CALL_S))
                latencies.append(_wait_archived(config.db_path, ref) - finalized)
            figures["finalize_to_archived_ms_p50"] = percentile_ms(latencies, 50)
            figures["finalize_to_archived_ms_max"] = percentile_ms(latencies, 100)
            figures["archive_poll_s"] = config.archive.poll_s
            figures["uploader_rss_after_first_calls_mb"] = proc_memory_mb(uploader.pid)["VmRSS"]
            for minutes in CALL_MINUTES:
                counter += 1
                progress(f"archive: upload CPU and memory, one {minutes:g}-minute call")
                cpu0 = proc_cpu_s(uploader.pid)
                ref, finalized = asyncio.run(_finalize_call(store, config.recordings_dir,
                                                            counter, minutes * 60))
                archived_at = _wait_archived(config.db_path, ref)
                cpu = proc_cpu_s(uploader.pid) - cpu0
                row = store.get_call(ref)
                if row is None:
                    raise RuntimeError(f"the bench's call {ref} is not in the index")
                tag = f"{minutes:g}min_call"
                figures[f"upload_cpu_s_per_call_minute_{tag}"] = round(cpu / minutes, 3)
                figures[f"finalize_to_archived_s_{tag}"] = round(archived_at - finalized, 2)
                figures[f"recording_bytes_per_call_minute_{tag}"] = round(
                    row["recording_bytes"] / minutes)
                figures[f"uploader_rss_peak_mb_after_{tag}"] = \
                    proc_memory_mb(uploader.pid)["VmHWM"]
        finally:
            uploader.send_signal(signal.SIGTERM)
            uploader.wait(30)
            store.close_sync()
        client = make_client(config.archive, credentials)
        replicate_once(config.archive, credentials, "bench", config.db_path)
        progress("archive: full restore (index, key, recordings) of the bench box")
        t0 = time.perf_counter()
        report = restore_box(config, credentials, "bench", work / "restored",
                             identity_file=identity_file, actor="bench", client=client)
        restore_s = time.perf_counter() - t0
        minutes_restored = (LATENCY_CALLS * LATENCY_CALL_S / 60 + sum(CALL_MINUTES))
        figures["restore_full_s"] = round(restore_s, 2)
        figures["restore_full_calls"] = report.recordings
        figures["restore_full_s_per_call_minute"] = round(restore_s / minutes_restored, 3)

        full_calls = max(1, restore_calls // 10)
        figures.update(_full_restore(work / "many", config, credentials, identity_file,
                                     client, full_calls, progress))

        progress(f"archive: index restore with {restore_calls} calls")
        big = work / "big" / "appliance.db"
        big.parent.mkdir()
        fill(big, restore_calls, progress)
        replicate_once(config.archive, credentials, "big", big)
        t0 = time.perf_counter()
        restore_index(config.archive, credentials, "big", work / "big-restored.db")
        figures[f"restore_index_s_{restore_calls}_calls"] = round(time.perf_counter() - t0, 2)
        figures[f"index_bytes_{restore_calls}_calls"] = os.path.getsize(big)
    finally:
        server.stop()
    return figures
