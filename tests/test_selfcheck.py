"""`odiag selfcheck`: estimates converge to the exact synthetic values with near-nominal coverage."""

import json

import pytest

from harness import cli
from harness.selfcheck import SelfcheckConfig, run_selfcheck


@pytest.fixture(scope="module")
def summary():
    return run_selfcheck(SelfcheckConfig())


def test_q_interval_coverage_is_near_nominal(summary):
    unbiased = summary["modes"]["unbiased"]
    assert unbiased["decision_points"] >= 200 and unbiased["q_children"] >= 800
    assert 0.92 <= unbiased["q_coverage"] <= 0.985
    assert abs(unbiased["q_mean_error"]) < 0.01
    assert summary["passed"]


def test_alignment_tracks_exact_values_per_teacher(summary):
    teachers = summary["modes"]["unbiased"]["teachers"]
    assert teachers["helpful"]["mean_exact"] > 0.3 > -0.3 > teachers["misleading"]["mean_exact"]
    for row in teachers.values():
        assert row["ci_covers_exact"]
        assert 0.88 <= row["interval_coverage"] <= 1.0


def test_paper_counting_loses_coverage(summary):
    """Pins the default: the paper's cascade counts forced visits and under-covers exact Q (SPEC §2)."""
    assert summary["modes"]["paper"]["q_coverage"] < summary["modes"]["unbiased"]["q_coverage"] - 0.1


def test_cli_reports_and_exits_zero(capsys):
    assert cli.main(["selfcheck", "--questions", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["modes"]) == {"unbiased", "paper"}
