"""`odiag selfcheck`: the pipeline's own strategies against exact synthetic values, near-nominal coverage."""

import json

import numpy as np
import pytest

from harness import cli
from harness.selfcheck import SelfcheckConfig, run_selfcheck


@pytest.fixture(scope="module")
def summary():
    return run_selfcheck(SelfcheckConfig())


@pytest.mark.parametrize("mode", ["paper", "settle"])
def test_q_interval_coverage_is_near_nominal(summary, mode):
    s = summary["modes"][mode]
    assert s["decision_points"] >= 150 and s["q_children"] >= 500
    assert 0.92 <= s["q_coverage"] <= 0.985
    assert abs(s["q_mean_error"]) < 0.02
    assert summary["passed"]


@pytest.mark.parametrize("mode", ["paper", "settle"])
def test_alignment_tracks_exact_values_per_teacher(summary, mode):
    teachers = summary["modes"][mode]["teachers"]
    assert teachers["helpful"]["mean_exact"] > 0.3 > -0.3 > teachers["misleading"]["mean_exact"]
    for row in teachers.values():
        assert row["ci_covers_exact"]
        assert 0.88 <= row["interval_coverage"] <= 1.0
        # attenuation is measured and reported: estimated minus exact, toward 0 for both signs
        assert np.isfinite(row["attenuation"]) and abs(row["attenuation"]) < 0.2
    assert teachers["helpful"]["attenuation"] < 0 < teachers["misleading"]["attenuation"]


def test_on_path_bias_does_not_separate_correct_from_incorrect(summary):
    """Each path's own rollout is left out, so on-path Q bias does not follow the path's outcome (paper strategy)."""
    bias = summary["modes"]["paper"]["on_path_q_bias"]
    assert abs(bias["correct"]["mean"] - bias["incorrect"]["mean"]) < 0.02


def test_paper_counting_loses_coverage(summary):
    """Pins the default: the paper's cascade counts forced visits and under-covers exact Q (SPEC §2)."""
    assert summary["modes"]["cascade=paper"]["q_coverage"] < summary["modes"]["paper"]["q_coverage"] - 0.1


def test_cli_reports_and_exits_zero(capsys):
    assert cli.main(["selfcheck", "--questions", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["modes"]) == {"paper", "settle", "cascade=paper"}
    assert set(out["modes"]["settle"]["teachers"]["helpful"]) >= {"attenuation", "mean_exact", "mean_estimated"}


def test_cli_json_is_strict_where_an_interval_is_undefined(capsys):
    """One question has no interval: JSON null, which strict parsers read, not a bare NaN."""
    cli.main(["selfcheck", "--questions", "1", "--json"])

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    out = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert out["modes"]["paper"]["teachers"]["helpful"]["ci95"] == [None, None]
    cli.main(["selfcheck", "--questions", "1"])
    assert "+nan" not in (text := capsys.readouterr().out) and " n/a " in text  # the table says so, not [+nan, +nan]


def test_cli_intervals_lie_in_their_statistics_range(capsys):
    """Two questions give a t interval far wider than [-1, 1]: cut to the range a mean of cosines can take
    (and [-2, 2] for estimated minus exact), as results.json's intervals are."""
    cli.main(["selfcheck", "--questions", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    for mode in out["modes"].values():
        for row in mode["teachers"].values():
            assert -1 <= row["ci95"][0] <= row["ci95"][1] <= 1 and -2 <= row["attenuation_ci95"][0] <= row["attenuation_ci95"][1] <= 2


def test_a_one_question_selfcheck_has_no_interval_to_cover_and_says_question():
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "harness.cli", "selfcheck", "--questions", "1", "--json"], cwd=root,
                         capture_output=True, text=True, check=False)
    summary = json.loads(out.stdout)
    rows = [row for mode in summary["modes"].values() for row in mode["teachers"].values()]
    assert rows and all(row["ci95"] == [None, None] and row["ci_covers_exact"] is None for row in rows)
    seed = subprocess.run([sys.executable, "-m", "harness.cli", "selfcheck", "--seed", str(2**63)], cwd=root,
                          capture_output=True, text=True, check=False)
    assert seed.returncode == 2 and "argument --seed: must be at most 9223372036854775807" in seed.stderr


def test_gradients_follow_their_definitions_and_published_numbers_their_children(summary):
    for mode, s in summary["modes"].items():
        assert max(s["gradient_error"]) < 1e-8, mode
        assert set(s["published_difference"]) == {"nodes", "means"}, mode
        assert max(s["published_difference"].values()) < 1e-12, mode


def test_a_gradient_formula_that_departs_from_its_definition_fails_the_check(monkeypatch):
    """Estimated and exact alignments both come from the same formulas, so a wrong one moved both alike and the
    check passed with the helpful teacher anti-aligned: finite differences of the definition catch it."""
    import harness.selfcheck as selfcheck

    real = selfcheck.gkd_gradient
    monkeypatch.setattr(selfcheck, "gkd_gradient", lambda pi, pit: -real(pi, pit))
    summary = run_selfcheck(SelfcheckConfig(questions=2))
    assert not summary["passed"]
    assert all(s["gradient_error"][1] > 0.01 and s["gradient_error"][0] < 1e-8 for s in summary["modes"].values())


@pytest.mark.parametrize("where", ["nodes.parquet", "nodes.parquet, undefined", "results.json"])
def test_a_published_alignment_other_than_its_recomputation_fails_the_check(tmp_path, where):
    """A wrong sign (or any number) between the children and the published alignment, in a node or in a teacher's
    mean, is found: the check recomputes both from children.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from harness.pipeline import run
    from harness.selfcheck import PUBLISHED_TOLERANCE, _run_config, check_run

    cfg = SelfcheckConfig(questions=2)
    out = tmp_path / "run"
    run(_run_config(cfg, "paper", "unbiased"), out)
    assert max(check_run(out, cfg)["published_difference"].values()) == 0.0
    if where.startswith("nodes.parquet"):
        table = pq.read_table(out / "nodes.parquet")
        i = table.schema.get_field_index("alignment")
        edited = (pa.compute.negate(table["alignment"]) if where == "nodes.parquet"
                  else pa.array([float("nan")] * table.num_rows))  # a node said undefined where it is not
        pq.write_table(table.set_column(i, "alignment", edited), out / "nodes.parquet")
    else:
        results = json.loads((out / where).read_text())
        results["teachers"][0]["alignment"]["mean"] += 0.01
        (out / where).write_text(json.dumps(results))
    said = check_run(out, cfg)["published_difference"]
    assert said["nodes" if where.startswith("nodes.parquet") else "means"] > PUBLISHED_TOLERANCE


def test_an_alignment_score_of_the_wrong_sign_fails_the_check(monkeypatch):
    """Both sides of every other comparison share the cosine: the signs the synthetic teachers are built with (the
    helpful one toward the exact Q, the misleading one away) are what a flipped one cannot keep."""
    import harness.selfcheck as selfcheck

    real = selfcheck.alignment_score
    monkeypatch.setattr(selfcheck, "alignment_score", lambda g, h: -real(g, h))
    summary = run_selfcheck(SelfcheckConfig(questions=2))
    assert not summary["passed"] and summary["modes"]["paper"]["teachers"]["helpful"]["mean_exact"] < 0


def test_a_gradient_error_that_is_not_a_number_fails_the_check(monkeypatch):
    """A formula giving NaN at some decision points is no departure below the tolerance (Python's max skipped it)."""
    import harness.selfcheck as selfcheck

    real, calls = selfcheck._ideal_error, []

    def sometimes_nan(*args):
        calls.append(1)
        return float("nan") if len(calls) % 10 == 5 else real(*args)

    monkeypatch.setattr(selfcheck, "_ideal_error", sometimes_nan)
    summary = run_selfcheck(SelfcheckConfig(questions=2))
    assert not summary["passed"] and np.isnan(summary["modes"]["paper"]["gradient_error"][0])
