"""The Pi-budget quota arithmetic and the lines figures' handling of a failed level."""

from __future__ import annotations

from pathlib import Path

from appliance.bench.budget import CpuQuota
from appliance.bench.calls import CallFigures
from appliance.bench.probes import Continuity
from appliance.bench.runner import _clean_lines, _lines_tested


def test_v1_quota_keeps_the_short_period_until_the_1_ms_minimum(tmp_path: Path) -> None:
    quota = CpuQuota(tmp_path, 1)
    quota.set_pct(50)
    assert (tmp_path / "cpu.cfs_period_us").read_text() == "10000"
    assert (tmp_path / "cpu.cfs_quota_us").read_text() == "5000"
    quota.set_pct(5)  # 0.5 ms per 10 ms is below the kernel's minimum: stretch the period
    assert (tmp_path / "cpu.cfs_period_us").read_text() == "20000"
    assert (tmp_path / "cpu.cfs_quota_us").read_text() == "1000"


def test_v2_quota_is_one_line(tmp_path: Path) -> None:
    CpuQuota(tmp_path, 2).set_pct(12.5)
    assert (tmp_path / "cpu.max").read_text() == "1250 10000"


def test_a_level_that_raised_is_reported_not_counted() -> None:
    exact = Continuity()
    exact.aligned, exact.compared = True, 1000
    clean_call = CallFigures(line="line1", caller_channel=exact)
    levels: dict[int, list[CallFigures] | str] = {2: [clean_call, clean_call],
                                                  4: "TimeoutError()"}
    assert _clean_lines(levels, 4) == 2
    tested = _lines_tested(levels)
    assert tested["2"]["clean"] is True
    assert tested["4"] == {"clean": False, "error": "TimeoutError()"}
