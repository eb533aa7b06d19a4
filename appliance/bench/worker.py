"""The daemon as its own process for the CPU/RSS figures and the fault soak.

``python -m appliance.bench.worker STATE_DIR [--codec C] [--no-echo-cancel] [--soak] DEVICE
[DEVICE …]`` runs the real :class:`~appliance.daemon.app.Application` on the given serial
devices (ptys served by the benchmark process) with the benchmark configuration, MockFactory
pins and the in-memory handset. The shop is event-driven (no polling, so it costs the process
nothing measurable): it lifts the handset when a call enters the notice and puts it down when
the call has ended. Prints ``READY`` on stdout once every modem is initialised; SIGTERM stops it
cleanly. With ``--soak`` the idle liveness check runs every :data:`SOAK_LIVENESS_S` and the
free-space floor is :data:`SOAK_MIN_FREE_MB` (the soak's state dir is a small tmpfs).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from appliance.audio.backend import SimHandsetAudio
from appliance.bench.benchconfig import bench_config
from appliance.daemon.app import Application

READY_LINE = "READY"
#: The soak's ``lines[].liveness_interval_s``: a silent modem is noticed within seconds.
SOAK_LIVENESS_S = 2.0
#: The soak's ``recording.min_free_mb`` (its state dir is a tmpfs of a few hundred MB).
SOAK_MIN_FREE_MB = 8


async def _main(state_dir: Path, devices: list[str], codec: str, echo_cancel: bool,
                soak: bool) -> None:
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    config = bench_config(
        state_dir, devices, codec=codec, echo_cancel=echo_cancel,
        line_extra={"liveness_interval_s": SOAK_LIVENESS_S} if soak else None,
        recording_extra={"min_free_mb": SOAK_MIN_FREE_MB} if soak else None)
    factory: Any = MockFactory(pin_class=MockPWMPin)
    shk = factory.pin(config.handset.shk_pin)

    def shop(reference: str, state: str, detail: str) -> None:
        # The shop lifts as soon as the handset rings (during the notice) and hangs up after.
        if state == "notice":
            shk.drive_high()
        elif state == "ended":
            shk.drive_low()

    app = Application(config, pin_factory=factory, handset_audio=SimHandsetAudio())
    app.observers.append(shop)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
        await app.wait_ready(60.0)
        sys.stdout.write(READY_LINE + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await app.stop()
        factory.close()


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``STATE_DIR [--codec C] [--no-echo-cancel] [--soak] DEVICE …``."""
    args = list(sys.argv[1:] if argv is None else argv)
    echo_cancel = "--no-echo-cancel" not in args
    if not echo_cancel:
        args.remove("--no-echo-cancel")
    codec = "flac"
    soak = "--soak" in args
    if soak:
        args.remove("--soak")
    if "--codec" in args:
        i = args.index("--codec")
        codec = args[i + 1]
        del args[i : i + 2]
    asyncio.run(_main(Path(args[0]), args[1:], codec, echo_cancel, soak))


if __name__ == "__main__":
    main()
