"""``appliance bench``: measure the real stack on simulated hardware.

Modules: :mod:`probes` (instrumented emulator, test signals, detectors, statistics),
:mod:`calls` (whole calls through the in-process daemon: latencies, continuity, lines),
:mod:`worker` / :mod:`daemonproc` (the daemon as a separate process: CPU, RSS, fault soak),
:mod:`index` (index look-ups with 10^6 calls), :mod:`codecs` (bytes per call-minute),
:mod:`runner` (puts the figures together).
"""

from __future__ import annotations
