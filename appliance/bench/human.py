"""Time to a person: how long a caller waits, from the box going off-hook until caller and shop
can speak to each other (docs/performance.md, docs/speech.md "The layered notice").

The stack is :class:`~appliance.bench.calls.BenchStack` with the packaged (default) notice
rendered by espeak-ng. The shop lifts at the first ring of its handset, which rings as the
notice starts (``call.ring_during_notice``), so what is measured is the notice itself: the
first layer, the reference, and the few milliseconds of switching. A second call from the same
number with ``notice.returning_caller_days`` on gives the returning caller's figure.

Clock: the emulator's off-hook moment (``BenchModem.off_hook_at``) and the moment the daemon
publishes ``bridged`` (the observer), both on the event loop's clock. The audio path is
switched in the same loop turn as that publication.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from appliance.bench.calls import BenchStack
from appliance.reference import make_reference
from appliance.speech.condition import PHONE_RATE_HZ

_LOGGER = logging.getLogger(__name__)

#: The returning-caller window used for the second call (any positive value would do).
RETURNING_DAYS: Final = 30
#: References sampled for the spoken reference's length (its digits vary per call).
REFERENCE_SAMPLES: Final = 200
CALLER: Final = "+36301234567"

Progress = Callable[[str], None]


async def measure_time_to_human(work: Path, *, progress: Progress) -> dict[str, Any]:
    """Two calls from one number with the default notice: the first hears the first layer,
    the second (returning caller) the short form. See docs/performance.md for the keys."""
    async with BenchStack(work / "human", lines=1, notice=None,
                          returning_caller_days=RETURNING_DAYS) as stack:
        assert stack.app is not None
        library = stack.app.prompts.library
        progress("time to a person: the default notice, the shop lifting at the first ring")
        first_s, first_form = await stack.first_ring_call(CALLER)
        progress("time to a person: the same number again (returning caller)")
        again_s, again_form = await stack.first_ring_call(CALLER)
        key = b"bench-key-0123456789abcdef"
        lengths = [library.reference_audio(make_reference(n * 7919 % 9_999_999, key)).size
                   / PHONE_RATE_HZ for n in range(1, REFERENCE_SAMPLES + 1)]

        def seconds(layer: str) -> float:
            return round(library.notice_layer(layer).size / PHONE_RATE_HZ, 2)

        if (first_form, again_form) != ("full", "short"):
            _LOGGER.warning("time to a person: forms were %s, %s (expected full, short)",
                            first_form, again_form)
        return {
            "time_to_human_voice": library.voice_id,
            "time_to_human_s": round(first_s, 2),
            "time_to_human_returning_s": round(again_s, 2),
            "time_to_human_forms": [first_form, again_form],
            "notice_first_layer_s": seconds("notice"),
            "notice_short_s": seconds("notice_short"),
            "notice_details_s": seconds("notice_details"),
            "reference_s_mean": round(statistics.fmean(lengths), 2),
            "reference_s_max": round(max(lengths), 2),
        }
