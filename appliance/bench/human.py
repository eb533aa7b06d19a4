"""Time to a person: how long a caller waits, from the box going off-hook until caller and shop
can speak to each other (docs/performance.md, docs/speech.md "The layered notice").

The stack is :class:`~appliance.bench.calls.BenchStack` with the packaged (default) notice
rendered by espeak-ng. The shop lifts at the first ring of its handset, which rings as the
notice starts (``call.ring_during_notice``), so what is measured is the notice itself: the
first layer, the reference, and the few milliseconds of switching. A second call from the same
number with ``notice.returning_caller_days`` on gives the returning caller's figure.

The reference's digits are spoken words of different lengths ("öt" 0.18 s, "nyolc" 0.47 s),
so the figure moves with the call's reference. Two more calls are given the two references
that take longest to say (:func:`longest_references`): the longest to a number that has not
called yet (the worst case of a first-time caller), the next longest to the first number
again (near the worst case of a returning caller). ``*_mean`` figures put the mean reference (over
:data:`REFERENCE_SAMPLES` issued ones) in place of the call's own.

Clock: the emulator's off-hook moment (``BenchModem.off_hook_at``) and the moment the daemon
publishes ``bridged`` (the observer), both on the event loop's clock. The audio path is
switched in the same loop turn as that publication.
"""

from __future__ import annotations

import heapq
import logging
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from appliance.bench.calls import BenchStack, FirstRingCall
from appliance.reference import damm_check_digit, make_reference
from appliance.speech.condition import PHONE_RATE_HZ
from appliance.speech.library import PromptLibrary

_LOGGER = logging.getLogger(__name__)

#: The returning-caller window used for the second call (any positive value would do).
RETURNING_DAYS: Final = 30
#: References sampled for the spoken reference's mean length (its digits vary per call).
REFERENCE_SAMPLES: Final = 200
CALLER: Final = "+36301234567"
#: The caller of the worst-case calls (a number the first calls have not informed).
WORST_CALLER: Final = "+36301234568"
#: Digits a reference is issued with; the eighth is the Damm check digit.
_PAYLOAD_DIGITS: Final = 7

Progress = Callable[[str], None]


def longest_references(seconds: Mapping[str, float], count: int = 2) -> list[str]:
    """The ``count`` valid references whose digit words take longest to say, longest first.

    Every 7-digit payload is issued by some counter (the keyed permutation is a bijection),
    and the check digit depends only on the Damm state after the payload; so keeping the
    ``count`` longest prefixes per Damm state, digit by digit, finds them exactly without
    trying 10^7 payloads.

    Args:
        seconds: digit "0".."9" → the length of its clip.
    """
    best: dict[str, list[tuple[float, str]]] = {"": [(0.0, "")]}
    for _ in range(_PAYLOAD_DIGITS):
        grown: dict[str, list[tuple[float, str]]] = {}
        for prefixes in best.values():
            for length, prefix in prefixes:
                for digit, digit_s in seconds.items():
                    payload = prefix + digit
                    grown.setdefault(damm_check_digit(payload), []).append(
                        (length + digit_s, payload))
        best = {state: heapq.nlargest(count, options) for state, options in grown.items()}
    whole = [(length + seconds[state], payload + state)
             for state, prefixes in best.items() for length, payload in prefixes]
    return [reference for _, reference in heapq.nlargest(count, whole)]


def _reference_s(library: PromptLibrary, reference: str) -> float:
    return library.reference_audio(reference).size / PHONE_RATE_HZ


async def measure_time_to_human(work: Path, *, progress: Progress) -> dict[str, Any]:
    """Four calls with the default notice: a first-time and a returning caller with the
    references the calls are issued, then both again with the longest references to say.
    See docs/performance.md for the keys."""
    async with BenchStack(work / "human", lines=1, notice=None,
                          returning_caller_days=RETURNING_DAYS) as stack:
        assert stack.app is not None
        library = stack.app.prompts.library
        progress("time to a person: the default notice, the shop lifting at the first ring")
        first = await stack.first_ring_call(CALLER)
        progress("time to a person: the same number again (returning caller)")
        again = await stack.first_ring_call(CALLER)
        digits = {d: library.clip(d).size / PHONE_RATE_HZ for d in "0123456789"}
        longest, next_longest = longest_references(digits)
        # Counters only go up: the reference with the lower counter is issued first. The
        # first number is a returning caller by now, the other has never called.
        worst_calls = [(longest, WORST_CALLER, "first time"),
                       (next_longest, CALLER, "returning caller")]
        worst_calls.sort(key=lambda call: stack.counter_of(call[0]))
        measured: dict[str, FirstRingCall] = {}
        for reference, number, who in worst_calls:
            progress(f"time to a person: a long reference to say, {reference}, {who}")
            stack.issue_next(reference)
            measured[number] = await stack.first_ring_call(number)
        worst, worst_again = measured[WORST_CALLER], measured[CALLER]
        key = b"bench-key-0123456789abcdef"
        lengths = [_reference_s(library, make_reference(n * 7919 % 9_999_999, key))
                   for n in range(1, REFERENCE_SAMPLES + 1)]
        mean_reference_s = statistics.fmean(lengths)

        def seconds(layer: str) -> float:
            return library.notice_layer(layer).size / PHONE_RATE_HZ

        def switching_s(call: FirstRingCall) -> float:
            """What the call took beyond its audio (queueing, the last frames, bridging)."""
            layer = "notice_short" if call.form == "short" else "notice"
            return call.to_human_s - seconds(layer) - _reference_s(library, call.reference)

        def mean_s(call: FirstRingCall) -> float:
            """The call's figure with the mean reference in place of its own."""
            return call.to_human_s - _reference_s(library, call.reference) + mean_reference_s

        calls = (first, again, worst, worst_again)
        forms = [call.form for call in calls]
        if forms != ["full", "short", "full", "short"]:
            _LOGGER.warning("time to a person: forms were %s (expected full, short, full, "
                            "short)", forms)
        return {
            "time_to_human_voice": library.voice_id,
            "time_to_human_s": round(first.to_human_s, 2),
            "time_to_human_s_mean": round(mean_s(first), 2),
            "time_to_human_s_worst": round(worst.to_human_s, 2),
            "time_to_human_returning_s": round(again.to_human_s, 2),
            "time_to_human_returning_s_mean": round(mean_s(again), 2),
            "time_to_human_returning_s_worst": round(worst_again.to_human_s, 2),
            "time_to_human_forms": forms,
            "time_to_human_references": [call.reference for call in calls],
            "time_to_human_switching_ms_max": round(max(map(switching_s, calls)) * 1000, 1),
            "answer_delay_s": round(first.answer_s, 2),
            "shop_lifted_after_off_hook_s": (None if first.shop_lifted_s is None
                                             else round(first.shop_lifted_s, 2)),
            "notice_first_layer_s": round(seconds("notice"), 2),
            "notice_short_s": round(seconds("notice_short"), 2),
            "notice_details_s": round(seconds("notice_details"), 2),
            "reference_s_mean": round(mean_reference_s, 2),
            "reference_s_max": round(_reference_s(library, longest), 2),
        }
