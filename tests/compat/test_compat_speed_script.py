"""`benchmarks/compat_speed.py` runs (tiny settings): both paths train, the ratio is reported."""

from __future__ import annotations

from benchmarks import compat_speed


def test_the_benchmark_measures_both_paths_and_reports_their_ratio() -> None:
    report = compat_speed.main(
        ["--mode", "processes", "--repeats", "1", "--rounds", "1", "--clients", "4"]
        + ["--samples", "20", "--workers", "2"]
    )
    result = report["processes"]
    assert len(result["own_s"]) == len(result["compat_s"]) == 1
    assert result["ratio"] > 0
