"""The emulated modem's AT interpreter: host bytes in, commands run, result codes out.

E/V/Q flags and echo, ``+FCLASS``, ``+VLS``, ``+VSM`` (duplicates accepted, quirk #8),
``+VCID``, ``+VTX``/``+VRX``/``+VTR`` with a STATEFUL host-DLE parser (quirk #1), ``+VTS``
answering ``OK`` after the tone, ``+GCI``, ``+IFC``, ``ATZ``, ``ATI0/3``; unknown commands →
ERROR; voice commands outside ``+FCLASS=8`` → ERROR (docs/v253.md §3, §5, §11).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

from appliance.audio.pcm import SAMPLE_RATE_HZ, bytes_per_sample
from appliance.audio.tones import dtmf_samples
from appliance.line.codec import CAN, DLE, ETX
from appliance.sim.modem.state import (
    DATA_MODES,
    STORED_DEFAULTS,
    TX_BUFFER_MAX_S,
    SimState,
    VoiceMode,
)

__all__ = ["AtInterpreter"]

# §3 numeric result codes (V0).
_NUMERIC: Final = {
    "OK": "0", "CONNECT": "1", "RING": "2", "NO CARRIER": "3", "ERROR": "4",
    "NO DIALTONE": "6", "BUSY": "7", "NO ANSWER": "8", "VCON": "0",
}  # fmt: skip
# §3: these answer ERROR unless +FCLASS=8.
_VOICE_ONLY: Final = frozenset(
    {"VLS", "VSM", "VTX", "VRX", "VTR", "VTS", "VTD", "VSD", "VGT", "VGR", "VIT", "VRA", "VRN",
     "VDR", "VDT", "VNH", "VEM", "VIP", "VPR"}
)  # fmt: skip
_BASIC_RE: Final = re.compile(r"(&?[A-Z])(\d*)")
_VTS_DUR_RE: Final = re.compile(r"\[([^\]]*)\]|\{([^}]*)\}|([0-9*#A-D!])")


class AtInterpreter(SimState):
    """The DCE's command and voice-data parser (host bytes in via :meth:`data_received`)."""

    # --- host bytes in

    def data_received(self, data: bytes) -> None:
        """Bytes from the host (DTE)."""
        self.stats["rx_bytes"] += len(data)
        i, n = 0, len(data)
        while i < n:
            if self._mode in DATA_MODES:
                i = self._data_bytes(data, i)
            else:
                i = self._command_bytes(data, i)

    def _command_bytes(self, data: bytes, i: int) -> int:
        n = len(data)
        start = i
        while i < n and self._mode not in DATA_MODES:
            b = data[i]
            i += 1
            if self._stalled:
                continue
            if b == 0x0D:
                if self.echo:
                    self._send(data[start:i])
                start = i
                line = self._cmd_buf.decode("ascii", errors="replace").strip()
                self._cmd_buf.clear()
                if line:
                    self._cmd_queue.append(line)
                    self._process_queue()
            elif b in (0x0A, 0x00):
                continue
            elif b == 0x08 and self._cmd_buf:  # backspace (V.250 S5)
                self._cmd_buf.pop()
            elif len(self._cmd_buf) < 256:
                self._cmd_buf.append(b)
        if self.echo and not self._stalled and start < i:
            self._send(data[start:i])
        return i

    def _data_bytes(self, data: bytes, i: int) -> int:
        # Stateful host-DLE parser (quirk #1): an unpaired audio 0x10 swallows the next byte,
        # so a terminator right after it is taken as data — as on a real Conexant.
        n = len(data)
        while i < n and self._mode in DATA_MODES:
            if self._host_after_dle:
                self._host_after_dle = False
                c = data[i]
                i += 1
                self._host_dle(c)
                continue
            j = data.find(DLE, i)
            end = n if j < 0 else j
            if end > i and self._mode in (VoiceMode.VTX, VoiceMode.VTR):
                self._tx_audio(data[i:end])
            if j < 0:
                return n
            self._host_after_dle = True
            i = j + 1
        return i

    def _host_dle(self, c: int) -> None:
        mode = self._mode
        if c == DLE:
            if mode in (VoiceMode.VTX, VoiceMode.VTR):
                self._tx_audio(b"\x10")
        elif c == ETX and mode == VoiceMode.VTX:
            self._mode = VoiceMode.VTX_DRAIN  # §5.3: play out, then OK (from the clock)
        elif c == CAN and mode in (VoiceMode.VTX, VoiceMode.VTR, VoiceMode.VTX_DRAIN):
            self._txbuf.clear()
        elif c == ord("!") and mode in (VoiceMode.VRX, VoiceMode.VTR):
            self._end_data_mode()  # §5.3: <DLE>! → <DLE><ETX> then OK
        elif c == ord("^") and mode == VoiceMode.VTR:
            self._end_data_mode()  # §5.3: <DLE>^ → <DLE><ETX> then OK
        else:
            self.stats["host_dle_ignored"] += 1

    def _end_data_mode(self) -> None:
        self._txbuf.clear()
        self._mode = VoiceMode.COMMAND
        self._send(b"\x10\x03")
        self._result("OK")
        self._resume_reading()
        self._process_queue()

    def _tx_audio(self, chunk: bytes) -> None:
        if self.first_tx_byte_at is None:
            self.first_tx_byte_at = asyncio.get_running_loop().time()
        self._txbuf += chunk
        self._tx_fed = True
        limit = int(TX_BUFFER_MAX_S * SAMPLE_RATE_HZ * bytes_per_sample(self.voice_format))
        if len(self._txbuf) > limit and not self._reading_paused and self._port is not None:
            self._reading_paused = True
            self._port.pause_reading()

    # --- commands

    def _process_queue(self) -> None:
        while self._cmd_queue and not self._busy and self._mode == VoiceMode.COMMAND:
            if self._stalled:
                self._cmd_queue.clear()
                return
            self._execute(self._cmd_queue.popleft())

    def _execute(self, line: str) -> None:
        self.commands.append(line)
        if line.upper() == "A/":
            return
        # V.250 §5.2.1: the DCE hunts for the "AT" prefix; what comes before it is discarded,
        # and a line without it is ignored.
        start = line.upper().find("AT")
        if start < 0:
            return
        line = line[start:]
        body = line[2:]
        if body[:1].upper() == "D":
            # V.250: D takes the rest of the line as its dial string.
            self._result_or_defer(self._cmd_dial(body[1:]))
            return
        final: str | None = "OK"
        pos = 0
        while pos < len(body):
            ch = body[pos]
            if ch in " ;":
                pos += 1
                continue
            if ch in "+#-!%":
                end = body.find(";", pos)
                end = len(body) if end < 0 else end
                final = self._extended(body[pos:end])
                pos = end
            else:
                m = _BASIC_RE.match(body.upper(), pos)
                if m is None:
                    final = "ERROR"
                    break
                final = self._basic(m.group(1), m.group(2))
                pos = m.end()
                if m.group(1) == "S":  # S-registers: Sn=v or Sn?
                    rest = re.match(r"(=\d*|\?)", body[pos:])
                    pos += rest.end() if rest else 0
            if final != "OK":
                break
        if final is not None:
            self._result(final)
        if final == "CONNECT":
            self._host_after_dle = False
            self._tx_fed = False

    def _basic(self, cmd: str, arg: str) -> str | None:
        value = int(arg) if arg else 0
        if cmd == "E":
            self.echo = value == 1
        elif cmd == "V":
            self.verbose = value == 1
        elif cmd == "Q":
            self.quiet = value == 1
        elif cmd in ("Z", "H") and self._refusing_hang_up():
            return "ERROR"
        elif cmd == "Z":
            was_vcid = self.params["VCID"]
            self._hang_up()
            self._reset_state()
            if not self.profile.vcid_lost_at_atz:
                self.params["VCID"] = was_vcid
        elif cmd == "I":
            answer = {0: self.profile.ati0, 3: self.profile.ati3}.get(value)
            if answer is None:
                return "OK"
            self._info(answer)
        elif cmd == "H":
            self._hang_up()
        elif cmd == "A":
            if self.fclass == 8:
                self._go_off_hook()
                return "VCON" if self.profile.name == "usr" else "OK"
            # Data class: no carrier on a voice call.
            self.stop_ringing()
            return "NO CARRIER"
        elif cmd in ("M", "L", "X", "S", "&F", "&W", "&C", "&D", "&K"):
            pass  # accepted, no effect here
        else:
            return "ERROR"
        return "OK"

    def _extended(self, text: str) -> str | None:
        upper = text.upper()
        m = re.match(r"^([+#\-!%][A-Z0-9]*)(=\?|\?|=(.*))?$", upper)
        if m is None:
            return "ERROR"
        name, form, arg = m.group(1), m.group(2), m.group(3)
        bare = name[1:]
        if name.startswith("+") and bare in _VOICE_ONLY and self.fclass != 8:
            return "ERROR"  # §3: voice-only commands need +FCLASS=8
        if name in ("-STE", "!4886", "!4892", "-SCID"):
            return "OK"  # Conexant vendor switches: accepted
        if not name.startswith("+"):
            return "ERROR"
        handler = {
            "FCLASS": self._cmd_fclass,
            "VLS": self._cmd_vls,
            "VSM": self._cmd_vsm,
            "VTX": self._cmd_voice_data,
            "VRX": self._cmd_voice_data,
            "VTR": self._cmd_voice_data,
            "VTS": self._cmd_vts,
            "GMI": self._cmd_identity,
            "GMM": self._cmd_identity,
            "GMR": self._cmd_identity,
            "VIP": self._cmd_vip,
        }.get(bare)
        if handler is not None:
            return handler(bare, form, arg)
        if bare.startswith(("VRX", "VTX")) and bare[3:].isdigit():
            return self._cmd_voice_data(bare[:3], form, arg)  # CX-HSF +VRX<n>
        if bare in STORED_DEFAULTS:
            return self._cmd_stored(bare, form, arg)
        return "ERROR"

    def _info(self, text: str) -> None:
        self._send(b"\r\n" + text.encode("ascii", errors="replace") + b"\r\n")

    def _query(self, name: str, value: str) -> None:
        self._info(f"+{name}: {value}" if self.profile.info_prefix else value)

    def _cmd_stored(self, name: str, form: str | None, arg: str | None) -> str:
        if form == "?":
            self._query(name, self.params[name])
        elif form == "=?":
            ranges = {"VCID": "(0-2)", "GCI": "(00,09,0A,16,20,31,3C,51,59,73,B5)"}
            self._info(ranges.get(name, "(0-255)"))
        elif arg is not None:
            if name == "VCID" and arg not in ("0", "1", "2"):
                return "ERROR"
            if name == "VSD" and self.profile.name == "conexant":
                return "OK"  # quirk #3: accepted but not applied
            self.params[name] = arg
        return "OK"

    def _cmd_fclass(self, name: str, form: str | None, arg: str | None) -> str:
        if form == "?":
            self._info(str(self.fclass))  # §9.2: bare value even where others prefix
        elif form == "=?":
            self._info("0,1,8")
        elif arg in ("0", "1", "8"):
            self.fclass = int(arg)
        else:
            return "ERROR"
        return "OK"

    def _cmd_vls(self, name: str, form: str | None, arg: str | None) -> str:
        if form == "?":
            self._query(name, str(self.vls))
        elif form == "=?":
            self._info('0,"",B0804100,B0804100,B0804100')
            self._info('1,"T",0B8433C1,0FE431C1,0B8431C1')
        elif arg in ("0", "1", "5"):
            if arg == "0":
                if self._refusing_hang_up():
                    return "ERROR"
                self._hang_up()
            else:
                self._go_off_hook(int(arg))
                if self.profile.dle_h_after_off_hook:
                    # quirk #23: USR confirms with <DLE>H right after the OK.
                    asyncio.get_running_loop().call_soon(self._send, b"\x10H")
        else:
            return "ERROR"
        return "OK"

    def _cmd_vsm(self, name: str, form: str | None, arg: str | None) -> str:
        if form == "?":
            cml, rate = self.vsm
            self._query(name, f"{cml},{rate},0,0")
        elif form == "=?":
            for line in self.profile.vsm_list:
                self._info(line)
        elif arg is not None:
            parts = [p.strip() for p in arg.split(",")]
            try:
                cml = int(parts[0])
                rate = int(parts[1]) if len(parts) > 1 and parts[1] else SAMPLE_RATE_HZ
            except ValueError:
                return "ERROR"
            entry = self._vsm.get(cml)
            if entry is None or entry.fmt is None or rate != SAMPLE_RATE_HZ:
                return "ERROR"
            self.vsm = (cml, rate)  # quirk #8: duplicates are fine
        return "OK"

    def _cmd_voice_data(self, name: str, form: str | None, arg: str | None) -> str:
        if name == "VTR" and not self.profile.full_duplex:
            return "ERROR"
        if name == "VTR" and form == "=?" and not self.profile.vtr_test_command:
            return "ERROR"
        if form is not None:
            return "OK" if form == "=?" else "ERROR"
        if not self.off_hook:
            return "ERROR"
        self._mode = {"VTX": VoiceMode.VTX, "VRX": VoiceMode.VRX, "VTR": VoiceMode.VTR}[name]
        self._txbuf.clear()
        return "CONNECT"

    def _cmd_vts(self, name: str, form: str | None, arg: str | None) -> str | None:
        if arg is None:
            return "OK" if form == "=?" else "ERROR"
        total_s = 0.0
        default_s = int(self.params["VTD"] or "100") / 100
        parts: list[npt.NDArray[np.int16]] = []
        for m in _VTS_DUR_RE.finditer(arg or ""):
            group = m.group(1) or m.group(2)
            if group is not None:
                fields = [f.strip() for f in group.split(",")]
                dur = fields[-1] if len(fields) >= 2 else ""
                seconds = int(dur) / 100 if dur.isdigit() else default_s
                # [f1,f2,d]: one or two sines (0 or empty = none); {c,d}: not modelled (silence).
                freqs = ([int(f) for f in fields[:2] if f.isdigit() and int(f) > 0]
                         if m.group(1) is not None else [])
                parts.append(_tone_samples(freqs, seconds))
            else:
                seconds = default_s
                digit = m.group(3)
                parts.append(dtmf_samples(digit, seconds * 1000) if digit != "!"
                             else _tone_samples([], seconds))
            total_s += seconds
        if parts and self.off_hook:
            # The far end hears the tones (played in one piece; the OK below keeps the time).
            self._play(np.concatenate(parts), asyncio.get_running_loop().time())
        # §11 timers: OK only after the tones have been played.
        self._busy = True
        self._vts_handle = asyncio.get_running_loop().call_later(total_s, self._vts_done)
        return None

    def _result_or_defer(self, final: str | None) -> None:
        if final is not None:
            self._result(final)

    def _defer(self, delay_s: float, done: Callable[[], str]) -> None:
        """Hold the command queue for ``delay_s``, then send the result ``done()`` returns."""
        self._busy = True

        def finish() -> None:
            self._vts_handle = None
            self._busy = False
            self._result(done())
            self._process_queue()

        self._vts_handle = asyncio.get_running_loop().call_later(delay_s, finish)

    def _vts_done(self) -> None:
        self._vts_handle = None
        self._busy = False
        self._result("OK")
        self._process_queue()

    def _cmd_identity(self, name: str, form: str | None, arg: str | None) -> str:
        value = {"GMI": self.profile.gmi, "GMM": self.profile.ati3, "GMR": self.profile.ati3}
        self._query(name, value[name])
        return "OK"

    def _cmd_vip(self, name: str, form: str | None, arg: str | None) -> str:
        for key in ("VSD", "VGT", "VGR", "VIT", "VTD"):
            self.params[key] = STORED_DEFAULTS[key]
        return "OK"

    def _result(self, code: str) -> None:
        if self.quiet:
            return
        if self.verbose:
            self._send(b"\r\n" + code.encode() + b"\r\n")
        else:
            self._send(_NUMERIC.get(code, "4").encode() + b"\r")


def _tone_samples(freqs_hz: list[int], seconds: float) -> npt.NDArray[np.int16]:
    """Sum of sines at -10 dBFS each (silence for no frequency), for ``AT+VTS=[f1,f2,d]``."""
    t = np.arange(round(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    x = sum((0.316 * np.sin(2 * np.pi * f * t) for f in freqs_hz), np.zeros_like(t))
    return np.clip(np.rint(x * 32767.0), -32768, 32767).astype(np.int16)
