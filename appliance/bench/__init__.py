"""``appliance bench``: measure the real stack on simulated hardware.

Modules: :mod:`probes` (instrumented emulator, test signals, detectors, statistics),
:mod:`calls` (whole calls through the in-process daemon: latencies, continuity, lines),
:mod:`worker` / :mod:`daemonproc` (the daemon as a separate process: CPU, RSS, fault soak),
:mod:`index` (index look-ups with 10^6 calls), :mod:`codecs` (bytes per call-minute),
:mod:`runner` (puts the figures together).
"""

from __future__ import annotations

from typing import Final

#: The benchmark's sections in running order (``appliance bench --only NAME``); ``daemon`` and
#: ``pi-budget`` run only with the daemon child (not ``--no-daemon-process``).
SECTIONS: Final[tuple[str, ...]] = (
    "calls", "daemon", "pi-budget", "time-to-human", "codecs", "lines", "lines-under-load",
    "half-duplex", "formats", "index", "web",
)
