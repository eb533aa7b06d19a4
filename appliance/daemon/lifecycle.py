"""Daemon life cycle under systemd: watchdog fed by a loop-lag monitor, STATUS, stack dumps.

systemd's watchdog (``WatchdogSec=`` in ``systemd/appliance.service``) restarts the daemon when
``WATCHDOG=1`` stops arriving. A timer that pings blindly would keep a sick daemon alive, so the
ping is tied to the health of the one thing that owns every piece of state: the asyncio loop
(docs/design.md "One asyncio loop owns all state"). :class:`LoopLagMonitor` sleeps ``interval_s``
over and over and measures by how much each wake-up overshoots; it feeds the watchdog only
after a tick whose lag stayed below ``max_lag_s``. A loop that is stuck (a blocking call, a
CPU-bound callback) cannot run the monitor at all, and a loop that is merely crawling measures
lags above the threshold — in both cases the pings stop and systemd restarts the service, which
also drops the bypass relay (hw/README.md) so the shop keeps a plain phone meanwhile.

Everything goes through :func:`appliance.daemon.notify.sd_notify`, which encodes UTF-8 so
Hungarian ``STATUS=`` text arrives intact (docs/audio.md §9).

Usage in the daemon's ``run`` command (the lead wires it)::

    async def _main() -> None:
        app = Application(config)
        monitor = LoopLagMonitor()
        remove_dump = install_sigusr1_dump()
        monitor.start()
        try:
            await app.start()
            ready(app.status_line())          # READY=1 + STATUS=ready — …
            await stop.wait()                 # SIGTERM
            stopping("leállás — hívás lezárása")
        finally:
            await app.stop()
            await monitor.stop()
            remove_dump()

Contract: all functions and methods are called from the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Final

from appliance.daemon.notify import sd_notify

_LOGGER = logging.getLogger(__name__)

#: How often the monitor wakes up to measure the loop's lag (seconds).
LOOP_LAG_INTERVAL_S: Final[float] = 0.5
#: A wake-up later than this stops the watchdog ping for that tick (seconds). Calls already
#: suffer at 0.25 s (the jitter buffers hold ≈0.2 s, docs/audio.md), but killing the daemon
#: mid-call for one slow SQLite commit is worse than a glitch; 5 s of a stuck loop is a fault.
MAX_LOOP_LAG_S: Final[float] = 5.0
#: Lags above this are logged as warnings (seconds) even while the watchdog is still fed.
WARN_LOOP_LAG_S: Final[float] = 0.25
#: sd_watchdog_enabled(3): "it is recommended that a daemon sends a keep-alive notification
#: message to the service manager every half of the time returned here".
WATCHDOG_PING_FRACTION: Final[float] = 0.5
#: The STATUS= line is one field of a newline-separated datagram (sd_notify(3)).
_STATUS_MAX_CHARS: Final[int] = 200


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog period systemd asked for, in seconds, or None when there is no watchdog.

    Mirrors sd_watchdog_enabled(3): ``$WATCHDOG_USEC`` holds the period in microseconds; when
    ``$WATCHDOG_PID`` is set it must be our PID (a child process must not feed its parent's
    watchdog). Malformed values mean "no watchdog", logged once here.

    Args:
        env: the environment to read; ``None`` means ``os.environ`` (tests pass a dict).
    """
    environ = os.environ if env is None else env
    raw = environ.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(raw)
    except ValueError:
        _LOGGER.warning("ignoring malformed WATCHDOG_USEC=%r", raw)
        return None
    return usec / 1e6 if usec > 0 else None


def _one_line(text: str) -> str:
    # sd_notify(3): fields are separated by newlines, so a newline inside the status text
    # would start a new field — "STATUS=x\nWATCHDOG=1" must never come from a caller's name.
    flat = " ".join(text.split())
    return flat[:_STATUS_MAX_CHARS]


def status(text: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send ``STATUS=<text>`` (shown by ``systemctl status appliance``); False without systemd.

    The text is flattened to one line (newlines would inject further fields) and cut to 200
    characters. UTF-8 on the wire, so "hívás folyamatban" arrives intact.
    """
    return sd_notify(f"STATUS={_one_line(text)}", env=dict(env) if env is not None else None)


def ready(text: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """Send ``READY=1`` (with ``STATUS=<text>`` in the same datagram); call after hardware init.

    With ``Type=notify`` systemd keeps ``systemctl start`` waiting until this arrives.
    """
    fields = ["READY=1"]
    if text is not None:
        fields.append(f"STATUS={_one_line(text)}")
    return sd_notify(*fields, env=dict(env) if env is not None else None)


def stopping(text: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """Send ``STOPPING=1`` (with an optional status) when a clean stop begins."""
    fields = ["STOPPING=1"]
    if text is not None:
        fields.append(f"STATUS={_one_line(text)}")
    return sd_notify(*fields, env=dict(env) if env is not None else None)


class LoopLagMonitor:
    """Measure the event loop's lag and feed systemd's watchdog only while it is healthy.

    Every ``interval_s`` the monitor's task wakes up and records ``lag_s``, how much later
    than asked it woke. When the lag is below ``max_lag_s`` and at least half the watchdog
    period has passed since the last ping, it sends ``WATCHDOG=1``. Without ``$WATCHDOG_USEC``
    it still measures (``appliance status`` shows the lag) but sends nothing.

    Contract: :meth:`start` and :meth:`stop` are called from the loop; the attributes are
    read from the loop. Timeouts and intervals are parameters so tests shrink them.
    """

    def __init__(
        self,
        interval_s: float = LOOP_LAG_INTERVAL_S,
        max_lag_s: float = MAX_LOOP_LAG_S,
        *,
        warn_lag_s: float = WARN_LOOP_LAG_S,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Configure the monitor; nothing runs until :meth:`start`.

        Args:
            interval_s: sleep between measurements (seconds, > 0).
            max_lag_s: a tick whose lag reaches this sends no ping (seconds, > 0).
            warn_lag_s: lags from this up are logged as warnings (seconds).
            env: environment with ``NOTIFY_SOCKET``/``WATCHDOG_USEC``; ``None`` = os.environ.

        Raises:
            ValueError: a non-positive interval or threshold.
        """
        if interval_s <= 0 or max_lag_s <= 0:
            raise ValueError("interval_s and max_lag_s must be positive")
        self.interval_s = interval_s
        self.max_lag_s = max_lag_s
        self.warn_lag_s = warn_lag_s
        self._env: dict[str, str] | None = dict(env) if env is not None else None
        watchdog = watchdog_interval_s(self._env)
        #: Seconds between pings (half the watchdog period), or None without a watchdog.
        self.ping_interval_s: float | None = (
            watchdog * WATCHDOG_PING_FRACTION if watchdog is not None else None
        )
        #: Lag of the latest tick (seconds).
        self.lag_s: float = 0.0
        #: Largest lag seen since start (seconds).
        self.max_seen_lag_s: float = 0.0
        #: Ticks measured / ticks whose ping was withheld because of lag.
        self.ticks: int = 0
        self.unhealthy_ticks: int = 0
        #: WATCHDOG=1 datagrams sent successfully.
        self.pings: int = 0
        self._last_ping: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """True while the monitor task is alive."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the monitor task (named ``loop-lag-monitor``); a second call is a no-op."""
        if self.running:
            return
        if self.ping_interval_s is not None and self.ping_interval_s < self.interval_s:
            # A ping can only leave on a tick; ticks sparser than pings would starve systemd.
            _LOGGER.warning("watchdog ping every %.3f s but ticks every %.3f s; ticking faster",
                            self.ping_interval_s, self.interval_s)
            self.interval_s = self.ping_interval_s
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag-monitor")

    async def stop(self) -> None:
        """Cancel the task and wait for it; pings stop (systemd stops expecting them on exit)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._tick_ok(0.0, loop.time())  # feed once at start: the loop demonstrably runs
        while True:
            asked = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            now = loop.time()
            self._tick_ok(max(0.0, now - asked), now)

    def _tick_ok(self, lag_s: float, now: float) -> None:
        self.ticks += 1
        self.lag_s = lag_s
        self.max_seen_lag_s = max(self.max_seen_lag_s, lag_s)
        if lag_s >= self.max_lag_s:
            self.unhealthy_ticks += 1
            _LOGGER.error("event loop lagged %.3f s (limit %.3f s): watchdog not fed this tick",
                          lag_s, self.max_lag_s)
            return
        if lag_s >= self.warn_lag_s:
            _LOGGER.warning("event loop lagged %.3f s", lag_s)
        if self.ping_interval_s is None:
            return
        if self._last_ping is not None and now - self._last_ping < self.ping_interval_s:
            return
        if sd_notify("WATCHDOG=1", env=self._env):
            self.pings += 1
        # Counted as sent even when the socket failed: retrying every tick would flood the log
        # with sd_notify's warning, and systemd will act on the missing pings anyway.
        self._last_ping = now


def dump_stacks() -> str:
    """Text with the stack of every asyncio task of the running loop and every thread.

    Tasks come first (name, coroutine, where it is suspended), then threads from
    ``sys._current_frames()`` — the thread list includes the PortAudio, gpiozero and SQLite
    writer threads (docs/design.md: threads only at the edges), which is where a hang usually is.
    """
    out = io.StringIO()
    try:
        tasks = sorted(asyncio.all_tasks(), key=lambda t: t.get_name())
    except RuntimeError:  # no running loop: only threads
        tasks = []
    out.write(f"=== {len(tasks)} asyncio tasks ===\n")
    for task in tasks:
        out.write(f"--- task {task.get_name()!r}: {task.get_coro()!r}\n")
        # Task.print_stack shows the suspended frames of the coroutine chain.
        task.print_stack(file=out)
    frames = sys._current_frames()
    threads = {t.ident: t for t in threading.enumerate()}
    out.write(f"=== {len(frames)} threads ===\n")
    for ident, frame in sorted(frames.items(), key=lambda item: item[0]):
        thread = threads.get(ident)
        name = thread.name if thread is not None else "?"
        daemon = " daemon" if thread is not None and thread.daemon else ""
        out.write(f"--- thread {name!r} (ident {ident}{daemon})\n")
        out.write("".join(traceback.format_stack(frame)))
    return out.getvalue()


def install_sigusr1_dump(
    loop: asyncio.AbstractEventLoop | None = None,
    *,
    logger: logging.Logger | None = None,
) -> Callable[[], None]:
    """On SIGUSR1, log every task's and every thread's stack; returns a function that removes it.

    ``systemctl kill -s USR1 appliance`` then ``journalctl -u appliance`` shows where a stuck
    daemon is (Mopidy's ``process.py`` does the same for threads). The handler runs on the
    loop through ``loop.add_signal_handler`` — so it cannot show a loop that is blocked; for
    that, the watchdog restart and ``py-spy dump`` are the tools (docs/install.md).

    Args:
        loop: the loop to install on; ``None`` = the running loop.
        logger: where the dump goes (WARNING level, one record); default this module's logger.
    """
    the_loop = loop if loop is not None else asyncio.get_running_loop()
    log = logger if logger is not None else _LOGGER

    def _dump() -> None:
        started = time.monotonic()
        text = dump_stacks()
        # WARNING, not INFO: the technician asked for it, it must pass any configured level.
        log.warning("SIGUSR1 stack dump (%.1f ms):\n%s",
                    (time.monotonic() - started) * 1000.0, text)

    the_loop.add_signal_handler(signal.SIGUSR1, _dump)

    def _remove() -> None:
        the_loop.remove_signal_handler(signal.SIGUSR1)

    return _remove
