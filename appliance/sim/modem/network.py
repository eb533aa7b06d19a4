"""The simulated telephone network behind the emulated line.

Rings the line with caller ID (docs/v253.md §7), dials out through the exchange (ringback,
the scripted callee answering, busy or no answer, ``NO DIALTONE``), plays busy then dial tone
once the far end is gone, and builds the audio the line delivers each frame: the caller's
voice, ringback or busy tone, and the tones of the keys pressed.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
import numpy.typing as npt

from appliance.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE_HZ
from appliance.line.codec import DTMF_DIGITS
from appliance.sim.modem.exchange import (
    ANSWER_AFTER_BURST_S,
    BUSY_LEVEL,
    BUSY_OFF_S,
    BUSY_ON_S,
    BUSY_TONE_HZ,
    DIAL_DIGIT_S,
    DIAL_TONE_WAIT_S,
    RINGBACK_ON_S,
    RINGBACK_PERIOD_S,
    CallProgress,
)
from appliance.sim.modem.profiles import SILENCE_REPORT_S
from appliance.sim.modem.state import SimState

__all__ = ["Network"]


class Network(SimState):
    """The exchange and the far end: ringing, dialling, progress tones and the line audio."""

    async def _run_ringing(self, cid_lines: list[str], max_rings: int, cid_first: bool) -> None:
        def send_cid() -> None:
            if self.params["VCID"] == "1" and cid_lines:
                self._send(b"".join(b"\r\n" + line.encode() + b"\r\n" for line in cid_lines))

        if cid_first:
            send_cid()
        for count in range(max_rings):
            if self.off_hook:
                return
            self.stats["rings"] += 1
            if self.fclass == 8 and self.profile.dle_ring_in_voice_class:
                self._send(b"\x10R")  # quirk #27: rings as <DLE>R in voice class
            else:
                self._result("RING")
            if count == 0 and not cid_first:
                await asyncio.sleep(self.cid_delay_s)
                if self.off_hook:
                    return
                send_cid()
                await asyncio.sleep(max(0.0, self.ring_period_s - self.cid_delay_s))
            else:
                await asyncio.sleep(self.ring_period_s)

    def _cmd_dial(self, text: str) -> str | None:
        # V.250 D: optional T/P (tone/pulse), digits, "," pauses, ";" = stay in command state.
        dial = text.strip().upper()
        if dial[:1] in ("T", "P"):
            dial = dial[1:]
        digits = "".join(ch for ch in dial if ch in DTMF_DIGITS)
        if not digits:
            return "ERROR"
        callee = self._callee
        if self.fclass != 8:
            # A data call to a voice number: nothing answers with a carrier.
            self._defer(DIAL_DIGIT_S * len(digits) + DIAL_TONE_WAIT_S, lambda: "NO CARRIER")
            return None
        if callee.kind == "no-dialtone":
            self._defer(DIAL_TONE_WAIT_S, lambda: "NO DIALTONE")
            return None
        self._go_off_hook(1)
        self.dialled.append(digits)
        self._answered_event.clear()

        def dialled() -> str:
            if not self.off_hook:
                return "NO CARRIER"
            now = asyncio.get_running_loop().time()
            self._progress = CallProgress(callee, now)
            if callee.kind == "busy":
                if callee.busy_as_result:
                    self._hang_up()
                    return "BUSY"
                self._network_busy(now)
            return "VCON" if self.profile.name == "usr" else "OK"

        self._defer(DIAL_DIGIT_S * len(digits), dialled)
        return None

    def _network_busy(self, now: float) -> None:
        # Busy/congestion from the exchange: the same tone and reports as a remote hang-up.
        # A modem recognises the cadence only after a few cycles (busy_detect_s).
        self._hung_up_at = now
        kind = self.profile.hangup_report
        never = math.inf
        self._next_busy_report = now + self.profile.busy_detect_s if kind == "busy" else never
        self._next_dial_report = now + self.exchange_busy_s if kind == "busy" else never
        self._next_silence_report = (now + self.exchange_busy_s + SILENCE_REPORT_S
                                     if kind == "silence" else never)

    def _progress_events(self, progress: CallProgress, now: float) -> list[str]:
        callee = progress.callee
        t = now - progress.start
        if callee.kind == "answer" and t >= (
            (callee.rings - 1) * RINGBACK_PERIOD_S + RINGBACK_ON_S + ANSWER_AFTER_BURST_S
        ):
            progress.answered = True
            if callee.source is not None:
                self._source = callee.source
            self._answered_event.set()
            return []
        burst = int(t // RINGBACK_PERIOD_S)
        if callee.kind == "no-answer" and burst >= callee.rings:
            self._network_busy(now)  # the exchange gives up: congestion = busy in Hungary
            return []
        if burst >= progress.bursts_reported:
            progress.bursts_reported = burst + 1
            return ["r"]  # §5.1 (mgetty): ringback, once per burst
        return []

    def _caller_frame(self, now: float) -> npt.NDArray[np.int16]:
        n = FRAME_SAMPLES
        progress = self._progress
        if self._hung_up_at is None and progress is not None and not progress.answered:
            # The exchange's ringback in the line audio, 425 Hz 1250/3750 ms.
            offsets = np.arange(n) / SAMPLE_RATE_HZ
            since = (now - progress.start) + offsets
            on = (since % RINGBACK_PERIOD_S) < RINGBACK_ON_S
            phase = 2 * np.pi * BUSY_TONE_HZ * (self._rx_index / SAMPLE_RATE_HZ + offsets)
            self._rx_index += n
            out = BUSY_LEVEL * np.sin(phase) * on * 32767.0
            return np.clip(np.rint(out), -32768, 32767).astype(np.int16)
        if self._hung_up_at is not None:
            # The caller is gone: the exchange plays busy tone 425 Hz 300/300 ms, then dial
            # tone — which a modem that reports nothing does not tell apart: quiet line then.
            offsets = np.arange(n) / SAMPLE_RATE_HZ
            since = (now - self._hung_up_at) + offsets
            on = (since % (BUSY_ON_S + BUSY_OFF_S)) < BUSY_ON_S
            if self.profile.hangup_report != "busy":
                on &= since < self.exchange_busy_s
            phase = 2 * np.pi * BUSY_TONE_HZ * (self._rx_index / SAMPLE_RATE_HZ + offsets)
            mix = BUSY_LEVEL * np.sin(phase) * on
        else:
            source = self._source
            if source is None:
                mix = np.zeros(n)
            else:
                mix = np.asarray(source(n), dtype=np.float64).reshape(-1)[:n] / 32767.0
                if mix.size < n:
                    mix = np.pad(mix, (0, n - mix.size))
        out = mix * 32767.0
        key = self._key
        if key is not None and key.tone_pos < len(key.tone):
            # The dual tone is in the line audio too, so in-band detectors can be tested.
            part = key.tone[key.tone_pos : key.tone_pos + n].astype(np.float64)
            key.tone_pos += len(part)
            out[: len(part)] += part
        self._rx_index += n
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)
