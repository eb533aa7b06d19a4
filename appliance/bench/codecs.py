"""Recording bytes per call-minute for each codec, through the product's own recorder.

The content matters for FLAC and Opus, so the figure is taken on a speech-like two-sided
conversation (the simulation's Hungarian espeak-ng voices, alternating with pauses, as in
a real call), not on the benchmark's noise test signal.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Final

import numpy as np

from appliance.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE_HZ
from appliance.bench.benchconfig import FSYNC_INTERVAL_S
from appliance.config import CODECS
from appliance.sim.world import LINES_HU, render_speech
from appliance.store.recorder import Recorder

#: Length of the synthetic conversation.
CONVERSATION_S: Final = 60.0
#: Pause between turns.
TURN_GAP_S: Final = 0.6


def conversation(seconds: float = CONVERSATION_S) -> np.ndarray:
    """A (n, 2) int16 conversation: caller and shop take turns speaking, the other silent."""
    clips = [render_speech(text, f0_hz=110.0 if key.startswith("caller") else 190.0,
                           seed=len(key)) for key, text in LINES_HU.items()]
    n = int(seconds * SAMPLE_RATE_HZ)
    out = np.zeros((n, 2), dtype=np.int16)
    pos, turn = 0, 0
    gap = int(TURN_GAP_S * SAMPLE_RATE_HZ)
    while pos < n:
        clip = clips[turn % len(clips)]
        take = min(len(clip), n - pos)
        out[pos : pos + take, turn % 2] = clip[:take]
        pos += take + gap
        turn += 1
    return out


async def bytes_per_minute(work: Path) -> dict[str, Any]:
    """Record the conversation once per codec with :class:`Recorder`; bytes per minute each."""
    audio = conversation()
    minutes = len(audio) / SAMPLE_RATE_HZ / 60
    out: dict[str, Any] = {}
    for i, codec in enumerate(CODECS):
        recorder = Recorder(work / "codecs", f"9999999{i}",
                            now=dt.datetime.now().astimezone(),
                            fsync_interval_s=FSYNC_INTERVAL_S)
        for start in range(0, len(audio), FRAME_SAMPLES):
            recorder.write(audio[start : start + FRAME_SAMPLES])
        result = await recorder.finalize(codec)
        out[f"recording_bytes_per_call_minute_{codec}"] = round(result.bytes / minutes)
    return out
