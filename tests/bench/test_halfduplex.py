"""The bench's half-duplex pacing section, on a short prompt (the figures are asserted against
issue 3 item 5: a lead of about 100–200 ms, no underrun, the prompt arrives whole)."""

from __future__ import annotations

import pytest

from appliance.bench.halfduplex import measure_half_duplex

pytestmark = pytest.mark.timeout(60)


async def test_half_duplex_section_reports_a_bounded_lead() -> None:
    figures = await measure_half_duplex(prompt_s=3.0)
    assert figures["half_duplex_prompt_exact"] is True
    assert figures["half_duplex_underruns"] == 0
    assert figures["half_duplex_lead_ms_max"] <= 200.0
    assert figures["half_duplex_lead_ms_min"] >= 20.0, "never close to running dry"
    assert 0.0 < figures["half_duplex_cpu_pct"] < 100.0
