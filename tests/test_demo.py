"""The offline demo end to end (tier 2, CPU): ``odiag demo`` on the toy task with every toy teacher.

Shrunk with ``--set`` so it runs in well under a minute; what ``make demo`` runs differs only in
those sizes. It goes through everything the demo needs: lm-eval's task loading, the hf backend on
the committed toy models, artefacts (the toy teacher's solutions, text summaries), every teacher's
scoring, targeted rollouts, results and the leaderboard site.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TOY_TEACHERS = sorted(p.stem for p in (ROOT / "teachers").glob("toy-*.yaml"))

pytest.importorskip("lm_eval")


@pytest.mark.slow
def test_demo_runs_every_toy_teacher_and_publishes_a_leaderboard(tmp_path):
    small = ["limit=3", "n_initial=24", "n_target=24", "k_window=2", "algorithms=[gkd,forward_kl]"]
    cmd = [BIN / "odiag", "demo", "--out", tmp_path / "run", "--site", tmp_path / "site", "--quiet"]
    done = subprocess.run([*cmd, *[x for s in small for x in ("--set", s)]], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("demo finished") and len(done.stdout.splitlines()) == 1, done.stdout  # --quiet: one line

    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["task"] == "odiag_toy" and sorted(results["teacher_info"]) == TOY_TEACHERS
    answers = results["counts"]["initial_answers"]
    assert answers["scored"] == 3 * 24 == sum(q["answers"]["scored"] for q in results["questions"])
    assert answers["correct"] == round(sum(q["initial_accuracy"] * 24 for q in results["questions"]))
    assert results["counts"]["decision_points"] > 0
    # the external teacher's solutions were sampled once per question for toy-self-1c-teacher
    assert results["counts"]["artefact_samples_this_invocation"] > 0
    assert (tmp_path / "run" / "artefacts").is_dir()
    scored = {r["teacher"] for r in results["teachers"] if r.get("n_decision_points")}
    assert scored, "no teacher reached a decision point"

    # published files name models inside the checkout relative to it, never by this machine's paths
    assert str(ROOT) not in (tmp_path / "run" / "results.json").read_text()
    assert results["config"]["student"] == "harness/toy_models/student"
    assert str(ROOT) not in (tmp_path / "site" / "leaderboard.json").read_text()

    board = json.loads((tmp_path / "site" / "leaderboard.json").read_text())
    assert {e["teacher"] for e in board["entries"]} == set(TOY_TEACHERS)
    assert (tmp_path / "site" / "index.html").stat().st_size > 0
