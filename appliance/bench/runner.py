"""Put the benchmark together: one flat dict of figures, keys named with their units."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import resource
import time
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

from appliance.bench import SECTIONS
from appliance.bench.budget import measure_budget, priority
from appliance.bench.calls import CallFigures, CpuHog, clean, run_bridged_calls, run_lines
from appliance.bench.codecs import bytes_per_minute
from appliance.bench.daemonproc import measure_daemon
from appliance.bench.formats import measure_formats
from appliance.bench.halfduplex import measure_half_duplex
from appliance.bench.human import measure_time_to_human
from appliance.bench.index import measure_index
from appliance.bench.probes import percentile_ms
from appliance.bench.web import measure_web
from appliance.config import LINE_DEFAULTS, packaged_defaults

_LOGGER = logging.getLogger(__name__)

Progress = Callable[[str], None]


def machine() -> dict[str, Any]:
    """CPU model and count of this machine (/proc/cpuinfo, nproc)."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"machine_cpu": model, "machine_cpus": os.cpu_count(),
            "machine_python": platform.python_version()}


def _calls_figures(figs: list[CallFigures]) -> dict[str, Any]:
    def flat(name: str) -> list[float]:
        return [v for f in figs for v in getattr(f, name)]

    notice = [f.notice_latency_s for f in figs if f.notice_latency_s is not None]
    first = [f.first_tx_byte_s for f in figs if f.first_tx_byte_s is not None]
    l2h, h2l = flat("line_to_handset_s"), flat("handset_to_line_s")
    # The bench's lines keep the packaged transmit lead (bench_config sets no tx_lead_ms).
    lead_s = packaged_defaults()[LINE_DEFAULTS]["tx_lead_ms"] / 1000
    channels = [f.caller_channel for f in figs] + [f.shop_channel for f in figs
                                                   if f.shop_channel is not None]
    measured_min = sum(f.measured_s for f in figs) / 60
    return {
        "calls": len(figs),
        "outcomes": [f.outcome for f in figs],
        "notice_latency_ms_p50": percentile_ms(notice, 50),
        "notice_latency_ms_p95": percentile_ms(notice, 95),
        "first_tx_byte_ms_p50": percentile_ms(first, 50),
        "line_to_handset_latency_ms_p50": percentile_ms(l2h, 50),
        "line_to_handset_latency_ms_p95": percentile_ms(l2h, 95),
        "handset_to_line_latency_ms_p50": percentile_ms(h2l, 50),
        "handset_to_line_latency_ms_p95": percentile_ms(h2l, 95),
        "handset_to_line_tx_lead_ms": round(lead_s * 1000, 1),
        "handset_to_line_latency_minus_lead_ms_p50": percentile_ms([v - lead_s for v in h2l], 50),
        "latency_markers_sent": sum(f.markers_sent for f in figs),
        "latency_markers_matched_line_to_handset": len(l2h),
        "latency_markers_matched_handset_to_line": len(h2l),
        "bridged_minutes_checked": round(measured_min, 3),
        "recorded_samples_compared": sum(c.compared for c in channels),
        "dropped_samples": sum(c.dropped for c in channels),
        "duplicated_samples": sum(c.duplicated for c in channels),
        "inserted_samples": sum(c.inserted for c in channels),
        "corrupted_samples": sum(c.mismatched for c in channels),
        "channels_aligned": all(c.aligned for c in channels),
        "modem_underruns": sum(f.modem_underruns for f in figs),
        "modem_late_ticks": sum(f.modem_late_ticks for f in figs),
        "earpiece_underruns": sum(f.earpiece_underruns for f in figs),
        "earpiece_overruns": sum(f.earpiece_overruns for f in figs),
        "capture_underruns": sum(f.capture_underruns for f in figs),
        "capture_overruns": sum(f.capture_overruns for f in figs),
        "earpiece_shed_frames": sum(f.earpiece_shed for f in figs),
        "capture_shed_frames": sum(f.capture_shed for f in figs),
    }


def _clean_lines(levels: dict[int, list[CallFigures] | str], lines: int) -> int:
    """The most lines that ran at once with every call clean (1 when none was tried)."""
    passing = [n for n, fs in levels.items()
               if not isinstance(fs, str) and all(clean(f) for f in fs)]
    return max(passing, default=1 if lines >= 1 else 0)


def _lines_tested(levels: dict[int, list[CallFigures] | str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n, fs in levels.items():
        if isinstance(fs, str):
            out[str(n)] = {"clean": False, "error": fs}
            continue
        out[str(n)] = {"clean": all(clean(f) for f in fs),
                       "modem_underruns": sum(f.modem_underruns for f in fs),
                       "dropped_or_duplicated_samples": sum(
                           f.caller_channel.dropped + f.caller_channel.duplicated for f in fs),
                       "aligned": all(f.caller_channel.aligned for f in fs)}
    return out


async def run_bench(work: Path, *, calls: int, lines: int, call_s: float, index_calls: int,
                    daemon_process: bool, progress: Progress,
                    only: Collection[str] | None = None) -> dict[str, Any]:
    """Run every measurement (or the sections named in ``only``, of
    :data:`~appliance.bench.SECTIONS`); return the figures (see docs/performance.md for each
    key).

    A section that fails (e.g. the daemon refuses its configuration) is reported as
    ``<section>_error`` and the others still run, so one fault does not lose the whole run.
    """
    started = time.monotonic()
    out: dict[str, Any] = machine()
    out["call_seconds"] = call_s

    async def calls_section() -> None:
        figs, timings = await run_bridged_calls(work, calls, call_s, progress=progress)
        out.update(_calls_figures(figs))
        out["reference_assembly_ms_p50"] = percentile_ms(timings["assembly"], 50)
        out["reference_assembly_ms_p95"] = percentile_ms(timings["assembly"], 95)
        out["reference_allocation_ms_p50"] = percentile_ms(timings["allocation"], 50)
        out["reference_allocation_ms_p95"] = percentile_ms(timings["allocation"], 95)
        out["bench_process_peak_rss_mb"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 2)

    async def daemon_section() -> None:
        out.update(await measure_daemon(work / "daemon", calls, call_s, progress=progress))

    async def budget_section() -> None:
        out.update(await measure_budget(work / "budget", call_s, progress=progress))

    async def codecs_section() -> None:
        progress("recording sizes per codec")
        out.update(await bytes_per_minute(work))

    async def lines_section() -> None:
        if lines < 2:
            levels = {}
        else:
            with priority(f"appliance-bench-{os.getpid()}-lines") as where:
                out["lines_priority"] = where
                levels = await run_lines(work, lines, call_s, progress=progress)
        out["max_lines_zero_underruns"] = _clean_lines(levels, lines)
        out["lines_tested"] = _lines_tested(levels)

    async def lines_under_load_section() -> None:
        if lines < 2:
            return
        progress("lines again, with a CPU hog on the other core")
        # The hog starts first: it must stay outside the bench's priority group.
        with CpuHog(), priority(f"appliance-bench-{os.getpid()}-lines"):
            levels = await run_lines(work / "under-load", lines, call_s, progress=progress)
        out["max_lines_zero_underruns_under_load"] = _clean_lines(levels, lines)
        out["lines_tested_under_load"] = _lines_tested(levels)

    async def human_section() -> None:
        out.update(await measure_time_to_human(work, progress=progress))

    async def half_duplex_section() -> None:
        progress("half-duplex transmit pacing (20 s prompt on the pty emulator)")
        out.update(await measure_half_duplex())

    async def formats_section() -> None:
        progress("recording SNR per voice format (quiet and normal caller)")
        out.update(await measure_formats())

    async def index_section() -> None:
        out.update(await asyncio.to_thread(measure_index, work, index_calls,
                                           progress=progress))

    async def web_section() -> None:
        # The owner's page on the index the index section filled (work/index).
        out.update(await asyncio.to_thread(measure_web, work / "index", index_calls,
                                           progress=progress))

    runs: dict[str, Callable[[], Awaitable[None]]] = {
        "calls": calls_section, "daemon": daemon_section, "pi-budget": budget_section,
        "time-to-human": human_section, "codecs": codecs_section, "lines": lines_section,
        "lines-under-load": lines_under_load_section, "half-duplex": half_duplex_section,
        "formats": formats_section, "index": index_section,
        # The owner's page reads the index the index section filled.
        "web": web_section}
    assert tuple(runs) == SECTIONS
    skipped = set() if daemon_process else {"daemon", "pi-budget"}
    if only is not None and "web" in only:
        only = {*only, "index"}
    sections = [(name, runs[name]) for name in SECTIONS
                if name not in skipped and (only is None or name in only)]
    for name, section in sections:
        try:
            await section()
        except Exception as exc:  # a benchmark reports what broke and goes on
            _LOGGER.exception("bench section %s failed", name)
            progress(f"{name} failed: {exc!r}")
            out[f"{name}_error"] = repr(exc)
    out["bench_wall_s"] = round(time.monotonic() - started, 1)
    return out


