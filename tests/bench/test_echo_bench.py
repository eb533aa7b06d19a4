"""The echo canceller measurements of ``appliance bench --echo`` (figures, not timings)."""

from __future__ import annotations

from appliance.audio.echo import SpeexEchoCanceller
from appliance.audio.hybrid import HybridSpec
from appliance.bench.echo import cross_talk, measure, product_table, script_signals, table


def test_the_chosen_canceller_meets_its_erle_on_a_middle_hybrid() -> None:
    figures = measure(SpeexEchoCanceller, 12.0, 16.0, script_signals())
    assert figures["erle_1s_db"] >= 25.0
    assert figures["erle_after_dt_db"] >= figures["erle_db"] - 3.0, "no divergence"
    assert figures["dt_segsnr_db"] > 6.0, "the near end survives double talk"
    text = table({"candidates": {"speexdsp": {"origin": "x", "rows": [
        {"erl_db": 12.0, "tail_ms": 16.0, **figures}]}}})
    assert "| speexdsp | 12 | 16 |" in text


def test_cross_talk_falls_when_the_cancellers_run() -> None:
    line, handset = HybridSpec(10.0, 16.0, seed=0), HybridSpec(14.0, 8.0, seed=100)
    before = cross_talk(echo_cancel=False, line=line, handset=handset, seconds=12.0)
    after = cross_talk(echo_cancel=True, line=line, handset=handset, seconds=12.0)
    for key in ("caller_channel_cross_talk_db", "shop_channel_cross_talk_db"):
        assert before[key] > -16.0, "the hybrids leak each party into the other's channel"
        assert after[key] < before[key] - 10.0
    assert after["media_us_per_frame"] > before["media_us_per_frame"]
    text = product_table({"cross_talk_before": before, "cross_talk_after": after, "dtmf": []})
    assert "caller (shop's voice in it)" in text


def test_the_spread_summary_gives_worst_and_mean_per_figure() -> None:
    from appliance.bench.echo import SPREAD_FIGURES, spread_table

    summary = {key: {"worst": 1.5, "mean": 2.5, "runs": 30} for key in SPREAD_FIGURES}
    text = spread_table({"candidates": {"x": {"origin": "o", "rows": [], "spread": summary},
                                        "y": {"origin": "o", "error": "absent"}}})
    assert "| x | 30 | 1.5 / 2.5 |" in text
    assert "| y |" not in text
