"""Transmit pacing on a modem without full duplex (the answering machine, docs/line.md).

A prompt is played through :class:`~appliance.daemon.halfduplex.HalfDuplexAudio` (``+VTX``,
host-clocked) to the emulated half-duplex modem served on a real pty and opened by pyserial.
The emulator consumes at 8000 samples/s; after every 20 ms it played, the audio waiting in its
buffer is sampled: that is the lead the host keeps (target 100–200 ms), and a buffer that runs
dry is an underrun (``<DLE>u``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from appliance.audio.pcm import SAMPLE_RATE_HZ
from appliance.audio.tones import tone_zone
from appliance.bench.benchconfig import bench_config
from appliance.bench.probes import percentile_ms
from appliance.call.events import CallEvent, PlaybackDone
from appliance.daemon.halfduplex import HalfDuplexAudio
from appliance.daemon.media import CallMedia
from appliance.line.modem import Modem
from appliance.sim.modem.emulator import SimModem
from appliance.sim.modem.pty import PtyModemServer

#: Leads sampled during the first second are the ramp-up, not the steady state.
RAMP_UP_FRAMES = 50


async def measure_half_duplex(prompt_s: float = 20.0) -> dict[str, Any]:
    """Play a ``prompt_s`` tone in ``+VTX``; return the lead and underrun figures.

    Keys: ``half_duplex_lead_ms_p50``/``_max``/``_min`` (at the modem, from the end of the
    first second until the last frame was queued),
    ``half_duplex_underruns``, ``half_duplex_prompt_exact`` (every sample arrived, in order),
    ``half_duplex_cpu_pct`` (this process — host *and* emulator — over the prompt).
    """
    sim = SimModem("conexant", ring_period_s=0.1)
    sim.profile = dataclasses.replace(sim.profile, full_duplex=False)
    server = PtyModemServer(sim)
    modem = Modem(await server.start(), command_timeout_s=2.0, cid_settle_s=0.01)
    leads: list[float] = []
    try:
        await modem.open()
        sim.ring("3612345678")
        await modem.answer()
        events: asyncio.Queue[CallEvent] = asyncio.Queue()
        with tempfile.TemporaryDirectory(prefix="appliance-bench-hd-") as tmp:
            config = bench_config(Path(tmp), ["sim://"])
            media = CallMedia.for_line("00000000", config, config.lines[0],
                                       send_to_line=modem.send_audio,
                                       play_to_earpiece=lambda frame: None, events=events,
                                       tone_zone=tone_zone("hu"))
            media.use_host_clocked_transmit()
            t = np.arange(int(prompt_s * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
            # u8-exact values (multiples of 256), so arrival can be checked sample by sample.
            prompt = (np.round(20000 * np.cos(2 * np.pi * 500 * t) / 256) * 256).astype(np.int16)
            sim.add_tx_listener(lambda samples, now: leads.append(sim.tx_buffered_s))
            audio = HalfDuplexAudio(modem, media, "00000000")
            loop = asyncio.get_running_loop()
            wall0, cpu0 = loop.time(), time.process_time()
            media.play_to_line("prompt", prompt)
            audio.start()
            try:
                done = await asyncio.wait_for(events.get(), prompt_s + 10.0)
                assert done == PlaybackDone("prompt")
                # The last frame is queued: from here the modem plays out its lead (drain).
                sending = len(leads)
                async with asyncio.timeout(5.0):
                    while sim.mode != "vrx":  # noqa: ASYNC110 - the emulator has no mode event
                        await asyncio.sleep(0.02)
                cpu_pct = 100.0 * (time.process_time() - cpu0) / (loop.time() - wall0)
            finally:
                await audio.stop()
        played = sim.played
        nonzero = np.flatnonzero(played)
        start = int(nonzero[0]) if len(nonzero) else 0
        exact = bool(np.array_equal(played[start : start + len(prompt)], prompt))
        steady = leads[RAMP_UP_FRAMES:sending] or leads
        return {
            "half_duplex_lead_ms_p50": percentile_ms(steady, 50),
            "half_duplex_lead_ms_max": round(max(steady) * 1000, 1),
            "half_duplex_lead_ms_min": round(min(steady) * 1000, 1),
            "half_duplex_underruns": sim.stats["underruns"],
            "half_duplex_prompt_exact": exact,
            "half_duplex_cpu_pct": round(cpu_pct, 2),
        }
    finally:
        await modem.hang_up()
        await modem.close()
        await server.stop()
