"""The emulated modem's voice clock: one 20 ms frame each way while off-hook.

Runs on ``loop.time()`` at exactly 8000 samples/s both ways (docs/v253.md §8): each tick sends
the line's next frame (with the hybrid's echo of what was played) and the due ``<DLE>``
events to the host, and plays the next frame of host audio to the line — ``<DLE>u`` when the
host let the buffer run dry.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Final

import numpy as np
import numpy.typing as npt

from appliance.audio.hybrid import add_echo
from appliance.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE_HZ, bytes_per_sample, decode_voice
from appliance.audio.pcm import encode_voice as _encode_voice
from appliance.line.codec import VoiceEncoder
from appliance.sim.modem.exchange import BUSY_REPORT_S, DIAL_REPORT_S
from appliance.sim.modem.state import RX_MODES, TX_BUFFER_MAX_S, TX_MODES, SimState, VoiceMode

__all__ = ["TICK_S", "VoiceClock"]

_LOGGER = logging.getLogger(__name__)

TICK_S: Final = FRAME_SAMPLES / SAMPLE_RATE_HZ
"""The voice clock: one 160-sample frame every 20 ms."""
DTMF_REPEAT_S: Final = 0.070
"""Shielded DTMF: the digit is repeated every 70 ms while the tone lasts (§5.4)."""


class VoiceClock(SimState):
    """The codec clock: frames to and from the host while the line is off-hook."""

    async def _run_clock(self) -> None:
        # §8: the modem's codec clock defines real time. Ticks are scheduled on absolute
        # loop.time() targets (t0 + k·20 ms), so lateness is caught up, never accumulated.
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        k = 0
        while True:
            k += 1
            due = t0 + k * TICK_S
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -TICK_S:
                self.stats["late_ticks"] += 1
            try:
                self._tick(due)
            except Exception:
                _LOGGER.exception("simulated modem tick failed")

    def _due_events(self, now: float) -> list[str]:
        events: list[str] = list(self._injected)
        self._injected.clear()
        key = self._key
        if key is not None and now >= key.start:
            if self.profile.dtmf_shielded:
                # §5.4: <DLE>/ <DLE>d (repeat every 70 ms while the tone lasts) <DLE>~
                if not key.started:
                    key.started = True
                    events += ["/", key.digit]
                    key.next_report = now + DTMF_REPEAT_S
                elif now >= key.end:
                    events.append("~")
                    self._key = None
                elif now >= key.next_report:
                    events.append(key.digit)
                    key.next_report += DTMF_REPEAT_S
            else:
                if not key.started:
                    key.started = True
                    events.append(key.digit)
                if now >= key.end:
                    self._key = None
        progress = self._progress
        if progress is not None and not progress.answered and self._hung_up_at is None:
            events += self._progress_events(progress, now)
        if self._hung_up_at is not None:
            if now >= self._next_busy_report:
                events.append("b")
                self._next_busy_report += BUSY_REPORT_S
            if now >= self._next_dial_report:
                events.append("d")
                self._next_dial_report += DIAL_REPORT_S
            if now >= self._next_silence_report:
                events.append("s")  # once: the modem's silence timer ran out
                self._next_silence_report = math.inf
        return events

    def _tick(self, now: float) -> None:
        if self._stalled:
            return
        out = bytearray()
        fmt = self.voice_format
        events = self._due_events(now)
        if self._mode in RX_MODES:
            # The echo of the previous frame played (the hybrid returns it as the next one
            # is sampled: audio/hybrid.py).
            rx = add_echo(self._caller_frame(now), self._echo)
            out += VoiceEncoder.encode(_encode_voice(rx, fmt))
        played: npt.NDArray[np.int16] | None = None
        for code in events:
            out += b"\x10" + code.encode("latin-1")
        if self._mode in TX_MODES:
            frame_bytes = FRAME_SAMPLES * bytes_per_sample(fmt)
            take = bytes(self._txbuf[:frame_bytes])
            if bytes_per_sample(fmt) == 2 and len(take) % 2:
                take = take[:-1]  # keep an odd byte for the next tick
            del self._txbuf[: len(take)]
            if take:
                played = decode_voice(take, fmt)
                self._play(played, now)
            if len(take) < frame_bytes and self._mode != VoiceMode.VTX_DRAIN and self._tx_fed:
                # §6: buffer empty without <DLE><ETX> → <DLE>u, once per gap.
                self._tx_fed = False
                self.stats["underruns"] += 1
                out += b"\x10u"
            limit = int(TX_BUFFER_MAX_S * SAMPLE_RATE_HZ * bytes_per_sample(fmt))
            if self._reading_paused and len(self._txbuf) <= limit // 2:
                self._resume_reading()
            if self._mode == VoiceMode.VTX_DRAIN and not self._txbuf:
                self._mode = VoiceMode.COMMAND
                if out:
                    self._send(bytes(out))
                    out.clear()
                self._result("OK")
                self._resume_reading()
                self._process_queue()
        if self.hybrid is not None:
            # Silence is sent too when nothing is played: the tail of earlier echo goes on.
            sent = np.zeros(FRAME_SAMPLES, dtype=np.int16)
            if played is not None:
                sent[: len(played)] = played[:FRAME_SAMPLES]
            self._echo = self.hybrid.echo(sent)
        if out:
            self._send(bytes(out))

    def _play(self, samples: npt.NDArray[np.int16], now: float) -> None:
        self._played.append(samples)
        self.played_log.append((now, len(samples)))
        self.stats["tx_samples_played"] += len(samples)
        for cb in list(self._tx_listeners):
            try:
                cb(samples, now)
            except Exception:
                _LOGGER.exception("tx listener failed")
