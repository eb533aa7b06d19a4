"""Layer 2: the AT link — an ``asyncio.Protocol`` speaking V.250 commands and V.253 voice.

As bellows ``ash.py`` and pyserial ``examples/at_protocol.py`` do it: one command in
flight under an ``asyncio.Lock`` (V.250 has no tags), the exchange shielded so a cancelled caller
cannot let a late ``OK`` match the next command, URCs classified by content, an explicit link
state with SUSPECT (resync with ``AT``) and FAILED (every pending future fails with
:class:`ModemGone`).

Written by hand: no maintained asyncio library speaks V.253 voice mode.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from appliance.audio.pcm import (
    FRAME_SAMPLES,
    SAMPLE_RATE_HZ,
    bytes_per_sample,
    decode_voice,
    encode_voice,
)
from appliance.errors import ModemCommandError, ModemError, ModemGone, ModemTimeout
from appliance.line.codec import LineFramer, VoiceDecoder, VoiceEncoder, parse_cid_line
from appliance.line.transport import open_transport

__all__ = [
    "COMMAND_TIMEOUT_S",
    "FINAL_RESULTS",
    "MAX_CONSECUTIVE_TIMEOUTS",
    "AtProtocol",
    "LinkState",
    "Mode",
    "is_urc",
    "open_transport",
]

_LOGGER = logging.getLogger(__name__)
_WIRE = logging.getLogger("appliance.line.wire")

COMMAND_TIMEOUT_S: Final = 2.0
"""Default time for a command's final result."""
MAX_CONSECUTIVE_TIMEOUTS: Final = 3
"""This many timeouts in a row (resync attempts included) → FAILED."""
STOP_VOICE_TIMEOUT_S: Final = 2.0
"""Time for ``<DLE><ETX>`` + ``OK`` after a stop sequence (§5.3)."""
TX_MAX_BUFFERED_BYTES: Final = 32000
"""Voice bytes allowed to wait in the transport (4 s of 8-bit, 2 s of 16-bit audio) before
``send_voice`` drops frames: the caller must pace (§8 recommendation), this only bounds memory."""

# V.250 / §3: final result codes. CONNECT and VCON end a command too (data state follows).
FINAL_RESULTS: Final = frozenset(
    {
        "OK",
        "ERROR",
        "CONNECT",
        "VCON",
        "NO CARRIER",
        "BUSY",
        "NO DIALTONE",
        "NO DIAL TONE",
        "NO ANSWER",
    }
)
# §3 / mgetty analyze.c: RING, RING1…RING5, "RING 1", "RING A"…
_RING_RE: Final = re.compile(r"^RING(?:\s?[0-9A-E])?$")
_URC_PREFIXES: Final = ("DRON=", "DROF=", "CPON=", "CPOF=", "CWON", "CWOF")
_DLE_OK_RE: Final = re.compile(rb"(?:\r\n|\r|\n)(?:OK|VCON)\r?\n")


def is_urc(line: str) -> bool:
    """True if ``line`` is unsolicited by content: RING, caller-ID, ring-cadence reports."""
    return (
        _RING_RE.match(line) is not None
        or parse_cid_line(line) is not None
        or line.startswith(_URC_PREFIXES)
    )


def _is_final(line: str) -> bool:
    return line in FINAL_RESULTS or line.startswith("+CME ERROR")


class LinkState(enum.Enum):
    """Health of the link."""

    CONNECTED = "connected"
    SUSPECT = "suspect"  # a command timed out: resync with AT before the next one
    FAILED = "failed"  # port gone or too many timeouts: reopen needed


class Mode(enum.Enum):
    """What the bytes from the modem are."""

    COMMAND = "command"
    VOICE = "voice"


@dataclass(slots=True)
class _Pending:
    command: str
    future: asyncio.Future[tuple[str, list[str]]]
    lines: list[str]


class AtProtocol(asyncio.Protocol):
    """The host (DTE) side of the modem link.

    All methods run on the event loop. Callbacks are plain attributes set by the owner:

    * ``urc_received(line)`` — RING, caller-ID lines, DRON/DROF…, NO CARRIER while idle;
    * ``voice_received(frame)`` — one ``np.int16`` frame of :data:`FRAME_SAMPLES` samples;
    * ``dle_event_received(code)`` — a ``<DLE>x`` event char, in voice or command state;
    * ``link_failed(reason)`` — the link entered FAILED (once per connection).

    Callbacks must not raise; if they do, the error is logged and the link carries on
    (garbage from the modem must never raise out of :meth:`data_received`).

    Args:
        command_timeout_s: default timeout of :meth:`command`.
        max_timeouts: consecutive timeouts that make the link FAILED.
        voice_format: the ``+VSM`` format of the voice stream (:mod:`appliance.audio.pcm`).
        tx_max_buffered_bytes: :meth:`send_voice` drops audio beyond this many queued bytes.
        stop_timeout_s: default time :meth:`stop_voice` waits for each stop sequence's answer.
    """

    def __init__(
        self,
        *,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
        max_timeouts: int = MAX_CONSECUTIVE_TIMEOUTS,
        voice_format: str = "u8",
        tx_max_buffered_bytes: int = TX_MAX_BUFFERED_BYTES,
        stop_timeout_s: float = STOP_VOICE_TIMEOUT_S,
    ) -> None:
        self.urc_received: Callable[[str], None] | None = None
        self.voice_received: Callable[[npt.NDArray[np.int16]], None] | None = None
        self.dle_event_received: Callable[[str], None] | None = None
        self.link_failed: Callable[[str], None] | None = None
        self.command_timeout_s = command_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.max_timeouts = max_timeouts
        self.tx_max_buffered_bytes = tx_max_buffered_bytes
        self.voice_format = voice_format
        self.state = LinkState.CONNECTED
        self.mode = Mode.COMMAND
        self.writing_paused = False
        self.stats: dict[str, int] = {
            "rx_bytes": 0,
            "rx_frames": 0,
            "tx_bytes": 0,
            "tx_dropped_bytes": 0,
            "dle_events": 0,
            "garbage_lines": 0,
            "echo_lines": 0,
            "urcs": 0,
            "timeouts": 0,
            "resyncs": 0,
            "receive_errors": 0,
        }
        self._transport: asyncio.Transport | None = None
        self._framer = LineFramer()
        self._decoder = VoiceDecoder(voice_format)
        self._rx_audio = bytearray()
        self._lock = asyncio.Lock()
        self._pending: _Pending | None = None
        self._stop_future: asyncio.Future[None] | None = None
        self._stop_tail = b""
        self._timeouts = 0
        self._voice_started_at = 0.0
        self._voice_tx_bytes = 0
        self._tasks: set[asyncio.Task[object]] = set()
        self._made = asyncio.Event()
        self._lost = asyncio.Event()

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Store the transport (asyncio callback)."""
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._made.set()

    def connection_lost(self, exc: Exception | None) -> None:
        """The port vanished or was closed: FAIL everything pending (asyncio callback)."""
        self._transport = None
        self._lost.set()
        self._fail(f"port gone: {exc}" if exc else "port closed")

    def pause_writing(self) -> None:
        """The transport's buffer is above its high-water mark (asyncio callback)."""
        self.writing_paused = True

    def resume_writing(self) -> None:
        """The transport drained below its low-water mark (asyncio callback)."""
        self.writing_paused = False

    def data_received(self, data: bytes) -> None:
        """Route modem bytes to the framer or the voice decoder. Never raises."""
        if _WIRE.isEnabledFor(logging.DEBUG):
            _WIRE.debug("< %s", data.hex(" "))
        self.stats["rx_bytes"] += len(data)
        try:
            if self.mode is Mode.VOICE:
                self._feed_voice(data)
            else:
                self._feed_command(data)
        except Exception:
            # Boundary: a bug in a callback or a codec must not kill the transport's reader.
            self.stats["receive_errors"] += 1
            _LOGGER.exception("error while handling %d bytes from the modem", len(data))

    # --- public API ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the transport is up and the link is not FAILED."""
        return self._transport is not None and self.state is not LinkState.FAILED

    async def wait_closed(self) -> None:
        """Return once the connection is lost or closed."""
        await self._lost.wait()

    def set_voice_format(self, fmt: str) -> None:
        """Use ``fmt`` for the next voice stream (chosen from ``+VSM=?``)."""
        bytes_per_sample(fmt)  # validates
        self.voice_format = fmt
        self._decoder.fmt = fmt

    async def command(
        self,
        cmd: str,
        *,
        timeout_s: float | None = None,
        expect: Iterable[str] = ("OK",),
    ) -> list[str]:
        """Send ``cmd`` (without CR) and return its information lines.

        Args:
            cmd: e.g. ``"AT+VLS=1"``.
            timeout_s: time for the final result; default :attr:`command_timeout_s`.
            expect: final results that count as success (``("CONNECT",)`` for ``+VTR``).

        Raises:
            ModemCommandError: the final result is not in ``expect`` (ERROR, NO CARRIER…).
            ModemTimeout: no final result in time (the link becomes SUSPECT).
            ModemGone: the link is FAILED or failed meanwhile.
            ModemError: the link is in voice mode (stop the voice stream first).
        """
        _final, lines = await self.command_result(cmd, timeout_s=timeout_s, expect=expect)
        return lines

    async def command_result(
        self,
        cmd: str,
        *,
        timeout_s: float | None = None,
        expect: Iterable[str] = ("OK",),
    ) -> tuple[str, list[str]]:
        """Like :meth:`command` but also return the final result code.

        For commands whose success has several spellings, e.g. ``ATD`` in voice mode, which
        ends with ``OK``/``VCON`` or a call-progress result (``BUSY``, ``NO DIALTONE`` …,
        docs/v253.md §3); list every acceptable one in ``expect``.

        Raises:
            The same as :meth:`command`.
        """
        timeout = self.command_timeout_s if timeout_s is None else timeout_s
        task = asyncio.create_task(
            self._locked_command(cmd, timeout, tuple(expect)), name=f"at-command {cmd}"
        )
        self._keep(task)
        # Shielded: if our caller is cancelled the exchange still completes under the lock,
        # so a late OK can never be taken as the answer to the next command.
        return await asyncio.shield(task)

    async def stop_voice(self, sequence: bytes, *, timeout_s: float | None = None) -> None:
        """End the voice stream with ``sequence`` (``DLE_END_DUPLEX``, ``DLE_ABORT_RX`` …).

        Waits for ``<DLE><ETX>`` and ``OK``, accepting either alone (quirk #2, §5.3). If nothing
        comes, sends the triple-DLE form once (quirk #1: works whatever the modem's DLE parser
        state). Returns at once if not in voice mode.

        Raises:
            ModemTimeout: the modem never left voice mode (the link becomes SUSPECT and is
                forced back to command mode).
            ModemGone: the link failed.
        """
        # Audio queued ahead of the stop sequence (transport, tty, modem buffer) must play out
        # before the modem even reads the sequence: allow for the backlog sent ahead of real time.
        timeout_s = (self.stop_timeout_s if timeout_s is None else timeout_s) + self.tx_backlog_s()
        task = asyncio.create_task(self._locked_stop(sequence, timeout_s), name="at-stop-voice")
        self._keep(task)
        await asyncio.shield(task)

    def send_voice(self, samples: npt.NDArray[np.int16]) -> int:
        """Encode, DLE-double and write ``samples``; return the bytes written (0 if dropped).

        Non-blocking. Drops (and counts) audio outside voice mode, with no transport, or when
        more than ``tx_max_buffered_bytes`` already wait in the transport.
        """
        data = VoiceEncoder.encode(encode_voice(samples, self.voice_format))
        transport = self._transport
        if (
            self.mode is not Mode.VOICE
            or transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size() > self.tx_max_buffered_bytes
        ):
            self.stats["tx_dropped_bytes"] += len(data)
            return 0
        self._write(data)
        self._voice_tx_bytes += len(data)
        return len(data)

    def tx_backlog_s(self) -> float:
        """Seconds of voice sent ahead of real time in this voice stream (0 when paced)."""
        if self.mode is not Mode.VOICE:
            return 0.0
        rate = SAMPLE_RATE_HZ * bytes_per_sample(self.voice_format)
        elapsed = asyncio.get_running_loop().time() - self._voice_started_at
        return max(0.0, self._voice_tx_bytes / rate - elapsed)

    async def wait_connected(self, timeout_s: float = 5.0) -> None:
        """Wait until the transport has called ``connection_made`` (it may come a tick late).

        Raises:
            ModemGone: the port did not come up in time.
        """
        try:
            async with asyncio.timeout(timeout_s):
                await self._made.wait()
        except TimeoutError:
            raise ModemGone("the modem port did not open") from None

    def write_raw(self, data: bytes) -> None:
        """Write ``data`` as is (no shielding).

        Raises:
            ModemGone: no transport.
        """
        self._write(data)

    def close(self) -> None:
        """Close the transport (``connection_lost`` follows)."""
        if self._transport is not None:
            self._transport.close()

    # --- command exchange

    def _keep(self, task: asyncio.Task[object]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the awaiting caller (if any) already got it

    def _usable(self, what: str) -> None:
        if self.state is LinkState.FAILED or self._transport is None:
            raise ModemGone(f"{what}: link is down")

    async def _locked_command(
        self, cmd: str, timeout_s: float, expect: tuple[str, ...]
    ) -> tuple[str, list[str]]:
        async with self._lock:
            self._usable(cmd)
            if self.mode is Mode.VOICE:
                raise ModemError(f"{cmd!r}: the link is in voice mode")
            if self.state is LinkState.SUSPECT:
                await self._resync()
            return await self._exchange(cmd, timeout_s, expect)

    async def _resync(self) -> None:
        # After a timeout, "AT" until OK so stale replies are drained. Each
        # failed attempt counts as a timeout, so FAILED bounds the loop.
        while True:
            self.stats["resyncs"] += 1
            _LOGGER.info("link suspect: resyncing with AT")
            try:
                await self._exchange("AT", self.command_timeout_s, ("OK",))
            except ModemTimeout:
                continue
            except ModemCommandError:
                continue  # garbage in the modem's line buffer gave ERROR: try again
            self._set_state(LinkState.CONNECTED, "resync OK")
            return

    async def _exchange(
        self, cmd: str, timeout_s: float, expect: tuple[str, ...]
    ) -> tuple[str, list[str]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[str, list[str]]] = loop.create_future()
        self._pending = _Pending(cmd, future, [])
        try:
            self._write(cmd.encode("ascii", errors="replace") + b"\r")
            async with asyncio.timeout(timeout_s):
                final, lines = await future
        except TimeoutError:
            self._timeouts += 1
            self.stats["timeouts"] += 1
            if self._timeouts >= self.max_timeouts:
                reason = f"{self._timeouts} consecutive command timeouts (last {cmd!r})"
                self._fail(reason)
                raise ModemGone(reason) from None
            self._set_state(LinkState.SUSPECT, f"{cmd!r} timed out")
            raise ModemTimeout(f"{cmd!r}: no final result within {timeout_s} s") from None
        finally:
            self._pending = None
        self._timeouts = 0
        if final not in expect:
            raise ModemCommandError(cmd, final)
        return final, lines

    async def _locked_stop(self, sequence: bytes, timeout_s: float) -> None:
        async with self._lock:
            if self.mode is Mode.COMMAND:
                return
            self._usable("stop voice")
            loop = asyncio.get_running_loop()
            # First the plain sequence, then (quirk #1) <DLE><DLE> + sequence: in the normal
            # parser state the extra pair is one 0x10 sample; after an unpaired DLE it
            # completes that pair so the terminator is seen.
            for attempt, data in enumerate((sequence, b"\x10\x10" + sequence)):
                self._stop_future = loop.create_future()
                self._stop_tail = b""
                try:
                    self._write(data)
                    async with asyncio.timeout(timeout_s):
                        await self._stop_future
                    return
                except TimeoutError:
                    # The reader task switches the mode while we wait.
                    if self.mode is Mode.COMMAND:  # type: ignore[comparison-overlap]
                        _LOGGER.debug("voice stream ended without OK (accepted, quirk #2)")
                        return
                    _LOGGER.warning("modem ignored voice stop (attempt %d)", attempt + 1)
                finally:
                    self._stop_future = None
            self._leave_voice()
            self._set_state(LinkState.SUSPECT, "voice stop ignored")
            raise ModemTimeout("the modem did not leave voice mode")

    # --- receive paths

    def _feed_command(self, data: bytes) -> None:
        lines, voice = self._framer.feed(data)
        for line in lines:
            self._line_received(line)
        for code in self._framer.take_dle_events():
            self._dle_event(code)
        if voice is not None:
            self._enter_voice()
            if voice:
                self._feed_voice(voice)

    def _line_received(self, line: str) -> None:
        if line[:2].upper() == "AT":
            self.stats["echo_lines"] += 1  # E1 echo (§3) before ATE0 took effect
            return
        pending = self._pending
        stop = self._stop_future
        if stop is not None and not stop.done() and line in ("OK", "VCON"):
            stop.set_result(None)  # §5.3: the OK after <DLE><ETX>
            return
        if is_urc(line) or (line == "NO CARRIER" and pending is None):
            self.stats["urcs"] += 1
            self._call(self.urc_received, line)
            return
        if pending is None:
            self.stats["garbage_lines"] += 1
            _LOGGER.debug("unsolicited line ignored: %r", line)
            return
        if _is_final(line):
            if not pending.future.done():
                pending.future.set_result((line, pending.lines))
            return
        pending.lines.append(line)

    def _enter_voice(self) -> None:
        self.mode = Mode.VOICE
        self._voice_started_at = asyncio.get_running_loop().time()
        self._voice_tx_bytes = 0
        self._decoder.reset()
        self._decoder.fmt = self.voice_format
        self._rx_audio.clear()
        _LOGGER.debug("voice mode (%s)", self.voice_format)

    def _leave_voice(self) -> None:
        self.mode = Mode.COMMAND
        self._framer.reset()
        self._rx_audio.clear()
        _LOGGER.debug("command mode")

    def _feed_voice(self, data: bytes) -> None:
        chunk = self._decoder.feed(data)
        if chunk.audio:
            self._audio_received(chunk.audio)
        for code in chunk.events:
            self._dle_event(code)
        if chunk.ended:
            self._leave_voice()
            if chunk.rest:
                self._feed_command(chunk.rest)

    def _audio_received(self, audio: bytes) -> None:
        stop = self._stop_future
        if stop is not None and not stop.done():
            # quirk #2: a modem may answer the stop with OK but no <DLE><ETX>; the text then
            # sits in the voice stream.
            window = self._stop_tail + audio
            if _DLE_OK_RE.search(window):
                self._leave_voice()
                stop.set_result(None)
                return
            self._stop_tail = window[-8:]
        frame_bytes = FRAME_SAMPLES * bytes_per_sample(self.voice_format)
        buf = self._rx_audio
        if not buf and len(audio) % frame_bytes == 0:
            # Whole frames with nothing left over (a modem writing 20 ms at a time): decoded
            # straight from the chunk, not through the reassembly buffer.
            n_frames, whole = len(audio) // frame_bytes, audio
        else:
            buf += audio
            n_frames = len(buf) // frame_bytes
            if not n_frames:
                return
            whole = bytes(buf[: n_frames * frame_bytes])
            del buf[: n_frames * frame_bytes]
        samples = decode_voice(whole, self.voice_format)
        for k in range(n_frames):
            self.stats["rx_frames"] += 1
            self._call(self.voice_received, samples[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES])

    def _dle_event(self, code: str) -> None:
        self.stats["dle_events"] += 1
        self._call(self.dle_event_received, code)

    # --- helpers

    def _call(self, callback: Callable[..., None] | None, arg: object) -> None:
        if callback is None:
            return
        try:
            callback(arg)
        except Exception:
            _LOGGER.exception("link callback %r failed", callback)

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ModemGone("the modem port is closed")
        if _WIRE.isEnabledFor(logging.DEBUG):
            _WIRE.debug("> %s", data.hex(" "))
        self.stats["tx_bytes"] += len(data)
        transport.write(data)

    def _set_state(self, state: LinkState, reason: str) -> None:
        if state is self.state:
            return
        _LOGGER.info("link %s → %s (%s)", self.state.value, state.value, reason)
        self.state = state

    def _fail(self, reason: str) -> None:
        if self.state is LinkState.FAILED:
            return
        self._set_state(LinkState.FAILED, reason)
        gone = ModemGone(reason)
        if self._pending is not None and not self._pending.future.done():
            self._pending.future.set_exception(gone)
        if self._stop_future is not None and not self._stop_future.done():
            self._stop_future.set_exception(gone)
        self._call(self.link_failed, reason)
