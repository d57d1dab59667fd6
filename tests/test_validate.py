"""``odiag validate``: the statistics (tier 1) and the command on the toy models (tier 2).

Tier 1 checks the two-way bootstrap of a gain and the Spearman bootstrap against constructions
whose answer is known. Tier 2 builds a small demo run (3 questions, 2 teachers), validates it with
``--quick`` shrunk further by ``--set``, and checks what the command promises: held-out questions
disjoint from the diagnosed ones, the teacher contexts the diagnostic scored, every arm and seed,
resume, the leaderboard panel only where a validation exists, and one-line errors.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from harness.core.validation import (
    bootstrap_draws,
    gain_interval,
    gain_replicates,
    question_means,
    rank_correlations,
    spearman_rows,
)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


# tier 1: statistics -------------------------------------------------------------------------------


def test_gain_interval_mean_and_two_way_coverage():
    """The point is the plain mean; the seeds x questions t interval covers the true gain near 95% of the
    time when both seeds and questions carry noise."""
    rng = np.random.default_rng(0)
    covered, trials = 0, 200
    for _ in range(trials):
        diff = 0.1 + rng.normal(0, 0.03, (8, 1)) + rng.normal(0, 0.1, (1, 40)) + rng.normal(0, 0.05, (8, 40))
        ci = gain_interval(diff)
        assert ci.mean == pytest.approx(diff.mean()) and ci.lo < ci.mean < ci.hi and ci.n == 320
        covered += ci.lo <= 0.1 <= ci.hi
    assert 0.9 <= covered / trials <= 0.99


def test_gain_interval_holds_its_level_where_seeds_vary():
    """Three seeds whose gains differ by 0.1 (sd), 40 questions: the two-way percentile bootstrap it replaces
    covered 81% (600 samples; 71% at two seeds); the t interval with Satterthwaite's degrees of freedom
    keeps near 95% because its few seed degrees of freedom widen it."""
    rng = np.random.default_rng(31)
    covered, trials = 0, 600
    for _ in range(trials):
        diff = 0.1 * rng.standard_normal((3, 1)) + 0.1 * rng.standard_normal((1, 40)) + 0.135 * rng.standard_normal((3, 40))
        ci = gain_interval(diff)
        covered += ci.lo <= 0 <= ci.hi
    assert covered / trials >= 0.9


def test_gain_interval_carries_seed_noise():
    """Seed-to-seed spread widens the interval: the CI is not over questions alone."""
    rng = np.random.default_rng(1)
    questions = rng.normal(0, 0.05, (1, 30))
    flat = gain_interval(np.repeat(questions, 4, axis=0))
    noisy = gain_interval(np.repeat(questions, 4, axis=0) + np.array([[-0.2], [0.2], [-0.1], [0.1]]))
    assert (noisy.hi - noisy.lo) > 3 * (flat.hi - flat.lo)


def test_gain_interval_edge_cases():
    """One seed (training noise unmeasured), one question, one cell, or gains that do not vary (the control's
    own row, which was published as 0 [0, 0]): no interval."""
    for diff in (np.linspace(-1, 1, 20)[None], np.linspace(-1, 1, 3)[:, None], np.array([[0.3]]), np.zeros((3, 40))):
        ci = gain_interval(diff)
        assert ci.mean == pytest.approx(diff.mean()) and np.isnan(ci.lo) and np.isnan(ci.hi)
    with pytest.raises(ValueError):
        gain_interval(np.array([[0.1, np.nan]]))


def test_gain_interval_uses_satterthwaite_degrees_of_freedom():
    """Pins the t quantile's degrees of freedom on a grid worked by hand: 4 seeds x 3 questions, gains
    ``0.05 + a_s + b_q``. MS_s = 3 (0.01 + 0.01 + 0.04 + 0.04) / 3 = 0.1 and MS_q = 4 (0.01 + 0 + 0.01) / 2
    = 0.04, so df = 0.14² / (0.1²/3 + 0.04²/2) = 147/31, not the 3 of the seeds alone."""
    a, b = np.array([-0.1, 0.1, -0.2, 0.2]), np.array([-0.1, 0.0, 0.1])
    diff = 0.05 + a[:, None] + b[None, :]
    n_seeds, n_questions = diff.shape
    ms_seed = n_questions * sum(x * x for x in a) / (n_seeds - 1)
    ms_question = n_seeds * sum(x * x for x in b) / (n_questions - 1)
    df = (ms_seed + ms_question) ** 2 / (ms_seed**2 / (n_seeds - 1) + ms_question**2 / (n_questions - 1))
    assert (ms_seed, ms_question, df) == pytest.approx((0.1, 0.04, 147 / 31), abs=1e-12)
    half = sps.t.ppf(0.975, 147 / 31) * np.sqrt((0.1 + 0.04) / 12)
    ci = gain_interval(diff)
    assert ci.mean == pytest.approx(0.05, abs=1e-12) and ci.n == 12
    assert ci.lo == pytest.approx(0.05 - half, abs=1e-9) and ci.hi == pytest.approx(0.05 + half, abs=1e-9)


def test_gain_replicates_are_weighted_means_of_the_resampled_grid():
    diff = np.random.default_rng(2).normal(size=(2, 3, 5))
    draws = bootstrap_draws(3, 5, 0, 4, seed=3)
    reps = gain_replicates(diff, draws)
    for b in range(4):
        s = np.repeat(np.arange(3), draws.seeds_BS[b])
        q = np.repeat(np.arange(5), draws.heldout_BQ[b])
        for p in range(2):
            assert reps[b, p] == pytest.approx(diff[p][np.ix_(s, q)].mean())


def test_spearman_rows_matches_scipy_with_ties_and_nan_when_constant():
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 4, (5, 9)).astype(float), rng.normal(size=(5, 9))
    ours = spearman_rows(x, y)
    for b in range(5):
        assert ours[b] == pytest.approx(sps.spearmanr(x[b], y[b]).statistic)
    assert np.isnan(spearman_rows(np.ones((1, 5)), np.arange(5.0)[None])[0])
    assert np.isnan(spearman_rows(np.arange(2.0)[None], np.arange(2.0)[None])[0])
    # two losses with the same alignment differ in the last bits: they tie, as their exact values do
    x = np.array([[-0.11111111111111106, -0.11111111111111115, 0.11111111111111112, 0.11111111111111106]])
    y = np.array([[0.1, 0.3, 0.2, 0.4]])
    assert spearman_rows(x, y)[0] == pytest.approx(sps.spearmanr([-1, -1, 1, 1], y[0]).statistic)


def test_question_means_leave_undefined_values_out():
    values = np.array([[1.0, np.nan, 3.0], [np.nan, np.nan, np.nan]])
    out = question_means(values, np.array([[1, 1, 1], [0, 3, 0]]))
    assert out[0, 0] == pytest.approx(2.0) and np.isnan(out[1, 0]) and np.isnan(out[0, 1])


def _pairs(n_pairs=8, n_diag=20, seeds=3, heldout=30, slope=1.0, seed=5):
    """Predictors per pair and question, and gains that rise with alignment by ``slope``."""
    rng = np.random.default_rng(seed)
    level = np.linspace(-0.5, 0.5, n_pairs)
    align = level[:, None] + rng.normal(0, 0.05, (n_pairs, n_diag))
    diff = slope * level[:, None, None] + rng.normal(0, 0.05, (n_pairs, seeds, heldout))
    return align, diff


def test_rank_correlations_find_a_known_monotone_relation_and_its_reverse():
    align, diff = _pairs()
    up = rank_correlations({"alignment": align}, diff, seed=0, n_boot=500)["alignment"]
    assert up["spearman"] == pytest.approx(1.0) and up["ci95"][0] > 0.5 and up["n_pairs"] == 8
    assert up["x"] == pytest.approx(align.mean(axis=1).tolist())
    down = rank_correlations({"alignment": align}, -diff, seed=0, n_boot=500)["alignment"]
    assert down["spearman"] == pytest.approx(-1.0) and down["ci95"][1] < -0.5


def test_rank_correlations_null_relation_has_an_interval_holding_zero():
    align, diff = _pairs(slope=0.0)
    out = rank_correlations({"alignment": align}, diff, seed=1, n_boot=500)["alignment"]
    assert out["ci95"][0] < 0 < out["ci95"][1]


def test_rank_correlations_compare_predictors_on_shared_replicates():
    """A predictor that ranks the gains exactly beats a noisy one; a predictor identical to the
    reference differs by exactly 0 in every replicate (the replicates are shared)."""
    align, diff = _pairs()
    rng = np.random.default_rng(6)
    noisy = align + rng.normal(0, 0.6, (8, 1))
    out = rank_correlations({"alignment": noisy, "alignment_incorrect": align, "teacher_advantage": noisy.copy()},
                            diff, seed=2, n_boot=500)
    assert "minus_alignment" not in out["alignment"]
    assert out["alignment_incorrect"]["minus_alignment"]["verdict"] == "better"
    same = out["teacher_advantage"]["minus_alignment"]
    assert same["mean"] == 0 and same["ci95"] == [0.0, 0.0] and same["verdict"] == "not resolved"


def test_rank_correlations_call_a_difference_worse_only_when_its_interval_lies_below_zero():
    """A noisy predictor against an exact reference is ``worse`` (its interval below 0). Two predictors that
    each tie one pair of neighbouring gains, one at the bottom and one at the top, differ by -δ, 0 or +δ
    from replicate to replicate: the interval holds 0 strictly inside and the difference is ``not resolved``,
    not ``worse`` for its negative lower end."""
    align, diff = _pairs()
    noisy = align + np.random.default_rng(6).normal(0, 0.6, (8, 1))
    worse = rank_correlations({"alignment": align, "noisy": noisy}, diff, seed=2, n_boot=500)["noisy"]["minus_alignment"]
    assert worse["mean"] < 0 and worse["ci95"][1] < 0 and worse["verdict"] == "worse"
    bottom, top = align.copy(), align.copy()
    bottom[1] -= align[1].mean() - align[0].mean()
    top[7] -= align[7].mean() - align[6].mean()
    out = rank_correlations({"alignment": bottom, "top": top}, diff, seed=2, n_boot=500)
    tied = out["top"]["minus_alignment"]
    assert out["alignment"]["spearman"] == out["top"]["spearman"] < 1
    assert tied["ci95"][0] < 0 < tied["ci95"][1] and tied["verdict"] == "not resolved"


@pytest.mark.parametrize("algorithm", ["gkd", "forward_kl", "jsd"])
def test_training_losses_descend_along_the_gradients_the_diagnostic_scores(algorithm):
    """Pinned: minus the autograd gradient of each training loss with respect to the student's logits
    is the gradient the diagnostic scores for that algorithm (SPEC §3, on the full vocabulary), so
    `odiag validate` trains with exactly the update whose alignment the run measured."""
    torch = pytest.importorskip("torch")
    from harness.core.gradients import ALGORITHMS, NodeInputs
    from harness.validate import token_losses

    rng = np.random.default_rng(7)
    for _ in range(5):
        z = torch.tensor(rng.normal(0, 2, 9), requires_grad=True)
        zt = torch.tensor(rng.normal(0, 2, 9))
        loss = token_losses(algorithm, torch.log_softmax(z, -1)[None, None], torch.log_softmax(zt, -1)[None, None], beta=0.3)
        loss.sum().backward()
        pi, pit = torch.softmax(z, -1).detach().numpy(), torch.softmax(zt, -1).numpy()
        inputs = NodeInputs(pi, pit, np.zeros(9), np.zeros(9), np.zeros(9), -1, 0.0, 0.3)
        assert -z.grad.numpy() == pytest.approx(ALGORITHMS[algorithm](inputs), abs=1e-10)


def test_a_bfloat16_student_trains_in_float32():
    """In bfloat16, AdamW's step of about lr = 1e-4 is below half the spacing of a weight of 1.0 (2^-8):
    a norm's weights would never move. The training check upcasts the student, and so every arm."""
    torch = pytest.importorskip("torch")
    from harness.validate import in_float32

    def step(model):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.0)
        model(torch.ones(1, 4, dtype=model.weight.dtype)).sum().backward()
        opt.step()
        return model.weight.detach().float()

    layer = torch.nn.Linear(4, 1, bias=False)
    torch.nn.init.ones_(layer.weight)
    assert torch.equal(step(layer.to(torch.bfloat16)), torch.ones(1, 4))  # lost in bfloat16
    model, upcast = in_float32(layer)
    assert upcast and model.weight.dtype == torch.float32
    assert (step(model) < 1).all()
    assert in_float32(torch.nn.Linear(2, 1))[1] is False  # a float32 checkpoint: as it was


def test_settings_resolve_defaults_then_quick_then_flags_then_set():
    from harness.config import ConfigError
    from harness.validate import QUICK, ValidateConfig, resolve_validate_config

    assert resolve_validate_config() == ValidateConfig()
    cfg = resolve_validate_config(True, ["steps=5", "algorithms=[jsd]"], seeds=7, teachers=("a",))
    assert (cfg.seeds, cfg.steps, cfg.eval_samples, cfg.teachers, cfg.algorithms) == (7, 5, QUICK["eval_samples"], ("a",), ("jsd",))
    with pytest.raises(ConfigError, match="unknown key 'stepz'"):
        resolve_validate_config(False, ["stepz=3"])
    with pytest.raises(ConfigError, match="'heldout' must be >= 1"):
        resolve_validate_config(False, ["heldout=0"])
    for item, needle in (("threads=-1", "'threads' must be >= 1 or null, got -1"), ("threads=0", "'threads' must be >= 1"),
                         ("seed=-1", "'seed' must be >= 0 and < 2**63, got -1")):  # torch and numpy raised these later
        with pytest.raises(ConfigError, match=re.escape(needle)):
            resolve_validate_config(False, [item])
    assert resolve_validate_config(False, ["heldout=1e3"]).heldout == 1000  # as odiag run reads --set limit=1e3
    with pytest.raises(ConfigError, match="names no teacher"):
        resolve_validate_config(False, [], teachers=())  # --teachers ,
    with pytest.raises(ConfigError, match="names no teacher"):
        resolve_validate_config(False, ["teachers=[]"])
    # a pair listed twice would be trained twice and count twice in every correlation
    with pytest.raises(ConfigError, match="key 'teachers' lists 'a' twice"):
        resolve_validate_config(False, [], teachers=("a", "b", "a"))
    with pytest.raises(ConfigError, match="key 'algorithms' lists 'gkd' twice"):
        resolve_validate_config(False, ["algorithms=[gkd,jsd,gkd]"])
    # a key given as a flag and through --set is refused, not settled silently by the order
    with pytest.raises(ConfigError, match=r"--seeds and --set seeds=\.\.\. both set key 'seeds'; give it once"):
        resolve_validate_config(False, ["seeds=3"], seeds=2)
    with pytest.raises(ConfigError, match="--teachers and --set teachers"):
        resolve_validate_config(False, ["teachers=[b]"], teachers=("a",))
    # --set values are read as odiag run reads them: malformed YAML and a key written twice are one line
    for item, needle in (("steps=[", "--set steps: not valid YAML"), ("steps={a: 1, a: 2}", "key 'a' appears twice"),
                         ("=3", "expected KEY=VALUE")):
        with pytest.raises(ConfigError, match=re.escape(needle)):
            resolve_validate_config(False, [item])


def test_quick_help_names_every_setting_quick_changes(capsys):
    from harness.cli import main
    from harness.validate import QUICK

    assert main(["validate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    start = text.rindex("--quick")  # its help, not the usage line
    quick = text[start:text.index("--seeds", start)]
    words = {"seeds": "seeds", "steps": "steps", "prompts_per_step": "questions", "heldout": "held-out questions",
             "eval_samples": "samples", "n_boot": "bootstrap replicates"}
    assert set(words) == set(QUICK)
    for key, word in words.items():
        assert f"{QUICK[key]:,} {word}" in quick, (key, quick)


def test_statistics_import_with_model_libraries_blocked():
    """harness.core.validation is core (numpy, scipy); harness.validate loads torch only when it trains."""
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'transformers', 'vllm', 'lm_eval'}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import harness.core.validation, harness.validate\n"
        "harness.validate.resolve_validate_config(True, ['seeds=4'])\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# tier 2: the command on the toy models ------------------------------------------------------------

SMALL_RUN = ["limit=3", "teachers=[toy-self-1c,toy-teacher]", "n_initial=24", "n_target=24", "k_window=2",
             "algorithms=[gkd,forward_kl]"]
TINY = ["steps=3", "prompts_per_step=3", "samples_per_prompt=2", "heldout=8", "eval_samples=4", "n_boot=200"]


def _odiag(*args, cwd):
    return subprocess.run([BIN / "odiag", *map(str, args)], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    pytest.importorskip("lm_eval")
    pytest.importorskip("torch")
    tmp = tmp_path_factory.mktemp("validate")
    done = _odiag("demo", "--out", tmp / "run", "--site", tmp / "site", "--quiet",
                  *[x for s in SMALL_RUN for x in ("--set", s)], cwd=tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    return tmp / "run"


def test_a_run_of_another_backend_is_refused_naming_the_run_to_validate(tmp_path, capsys):
    from harness.cli import main
    from harness.config import RunConfig
    from harness.pipeline import run

    run(RunConfig(limit=2), tmp_path / "run")
    capsys.readouterr()
    assert main(["validate", str(tmp_path / "run"), "--quick"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"odiag: error: {tmp_path / 'run'}: odiag validate trains transformers models; this run used backend "
        "'synthetic': validate a run made with backend hf (odiag demo makes one)")


@pytest.mark.slow
def test_heldout_above_the_questions_left_holds_out_all_of_them_and_says_so(small_run, caplog):
    """heldout is a cap: above what the task leaves it ran silently, with every question left held out."""
    from harness.validate import _checked_run, _questions, resolve_validate_config

    cfg = resolve_validate_config(False, ["heldout=1000"])
    run = _checked_run(small_run, cfg)
    with caplog.at_level("WARNING", logger="harness.validate"):
        _, train_q, heldout_q = _questions(small_run, run, cfg)
    assert len(train_q) + len(heldout_q) == 64
    assert [r.getMessage() for r in caplog.records] == [
        f"odiag validate: heldout 1000: task odiag_toy leaves {len(heldout_q)} questions after the {len(train_q)} the run "
        f"diagnosed; all {len(heldout_q)} are held out"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="harness.validate"):
        assert len(_questions(small_run, run, resolve_validate_config(False, ["heldout=8"]))[2]) == 8
    assert not caplog.records


@pytest.mark.slow
def test_validate_quick_on_the_toy_models(small_run, capsys):
    from harness.leaderboard import build
    from harness.leaderboard.merge import load_runs, merge
    from harness.leaderboard.site import render
    from harness.pipeline import json_ready

    run = small_run
    runs = load_runs([run])
    assert 'id="validation"' not in render(json_ready(merge(runs)), runs, [])  # no validation, no panel

    done = _odiag("validate", run, "--quick", "--seeds", "2", *[x for s in TINY for x in ("--set", s)], "--quiet", cwd=run.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Spearman(gain, alignment)" in done.stdout
    assert "it/s" not in done.stderr and "Loading" not in done.stderr, done.stderr[-2000:]  # --quiet: no library bars
    v = json.loads((run / "validation.json").read_text())
    results = json.loads((run / "results.json").read_text())
    assert v["schema_version"] == "odiag.validation/1" and v["settings"]["steps"] == 3 and v["settings"]["seeds"] == 2
    assert v["run"]["config_hash"] == results["config_hash"] and v["versions"]["torch"]
    # trained on the diagnosed questions, evaluated on others of the same task
    assert v["questions"]["training"] == [q["id"] for q in results["questions"]]
    assert len(v["questions"]["heldout"]) == 8 and not set(v["questions"]["heldout"]) & set(v["questions"]["training"])
    arms = {(r["teacher"], r["algorithm"]) for r in v["rows"]}
    assert arms == {("toy-self-1c", "gkd"), ("toy-self-1c", "forward_kl"), ("toy-teacher", "gkd"),
                    ("toy-teacher", "forward_kl"), (None, "drgrpo"), (None, "control"), (None, "control_fresh_draws")}
    for r in v["rows"]:
        assert len(r["accuracy"]["per_seed"]) == 2
        if r["algorithm"] == "control":  # its gain over itself is 0 in every cell: no interval
            assert r["gain"]["ci95"] == [None, None]
        else:
            assert r["gain"]["ci95"][0] <= r["gain"]["mean"] <= r["gain"]["ci95"][1]
        if r["kind"] == "distillation":
            row = next(x for x in results["teachers"] if (x["teacher"], x["algorithm"]) == (r["teacher"], r["algorithm"]))
            assert r["alignment"]["mean"] == row["alignment"]["mean"]
            assert all(t["loss_first"] is not None and t["loss_last"] is not None for t in r["training"])
    control = next(r for r in v["rows"] if r["algorithm"] == "control")
    assert control["gain"]["mean"] == 0.0  # the reference itself
    assert set(v["correlation"]) == {"alignment", "alignment_incorrect", "teacher_advantage"}
    assert v["correlation"]["alignment"]["n_pairs"] == 4
    # the predictors recomputed per question from nodes.parquet aggregate to results.json's means
    distilled = [r for r in v["rows"] if r["kind"] == "distillation"]
    for name in ("alignment", "alignment_incorrect", "teacher_advantage"):
        nan = lambda xs: [float("nan") if x is None else x for x in xs]
        assert nan(v["correlation"][name]["x"]) == pytest.approx(nan([r[name]["mean"] for r in distilled]), nan_ok=True)
    assert (run / "validation.svg").stat().st_size > 0 and (run / "validation.png").stat().st_size > 0

    # every (arm, seed) was stored: the same command resumes without training again, same numbers
    stored = list((run / "validation").glob("*/*/*.json"))
    assert len(stored) == 7 * 2
    from harness.cli import main

    # one training lost: the resumed command trains and counts that one only, the stored ones are read back
    lost = next(p for p in sorted(stored) if p.parent.name != "-")  # a teacher's: trained again, to the same numbers
    lost.unlink()
    capsys.readouterr()
    assert main(["validate", str(run), "--quick", "--seeds", "2", *[x for s in TINY for x in ("--set", s)]]) == 0
    err = capsys.readouterr().err
    assert "validate: done, 1 training in" in err, err
    assert lost.is_file() and len(list((run / "validation").glob("*/*/*.json"))) == 7 * 2
    v2 = json.loads((run / "validation.json").read_text())
    assert [r["gain"] for r in v2["rows"]] == [r["gain"] for r in v["rows"]]

    board = build([run], run.parent / "site-after")
    html = (run.parent / "site-after" / "index.html").read_text()
    assert 'id="validation"' in html and "Does alignment predict training?" in html and board["entries"]
    assert (run.parent / "site-after" / "figures" / "run--validation.svg").is_file()

    # new settings make the validation stale: it goes with the results it measured; the stored arms stay
    import shutil

    copy = run.parent / "rescored"
    shutil.copytree(run, copy)
    assert main(["rescore", str(copy), "--set", "algorithms=[gkd]", "--quiet"]) == 0
    assert not [p.name for p in copy.glob("validation.*")] and len(list((copy / "validation").glob("*/*/*.json"))) == 7 * 2
    same = run.parent / "same"  # the same settings again change nothing: the validation still holds
    shutil.copytree(run, same)
    assert main(["rescore", str(same), "--quiet"]) == 0 and json.loads((same / "validation.json").read_text()) == v2


@pytest.mark.slow
def test_a_teacher_is_validated_as_the_run_scored_it(small_run, tmp_path, capsys, caplog):
    """Training uses the teacher file the run scored: an edited or missing file is refused, as odiag run
    refuses it, and a different teacher under a name used before trains anew (results are stored by
    the teacher's identity). The leaderboard shows no panel whose alignments are not the run's now."""
    import shutil

    from harness.cli import main
    from harness.leaderboard import build

    run = tmp_path / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("validation*"))
    text = (ROOT / "teachers" / "toy-self-1c.yaml").read_text() + "# its own file, not toy-self-1c's\n"
    tx = tmp_path / "tx.yaml"
    tx.write_text(text)
    assert main(["add-teacher", str(run), str(tx), "--quiet"]) == 0
    sets = ["--teachers", "tx", "--seeds", "1", *[x for s in TINY for x in ("--set", s)], "--set", "baseline=false", "--quiet"]
    assert main(["validate", str(run), *sets]) == 0
    (first,) = {p.parent.name for p in (run / "validation").glob("*/tx-*/*.json")}

    tx.write_text(text + "# edited\n")
    assert main(["validate", str(run), *sets]) == 2
    err = capsys.readouterr().err
    assert "teacher 'tx' changed since it was scored" in err and f"odiag rescore {run}" in err, err
    tx.unlink()
    assert main(["validate", str(run), *sets]) == 2
    assert "which no longer exists; restore it, or leave the teacher out with --teachers" in capsys.readouterr().err

    # another file under the same name: rescored, then validated anew, not from the stored arms of the first
    tx.write_text(text + "# edited\n")
    assert main(["rescore", str(run), "--quiet"]) == 0
    assert main(["validate", str(run), *sets]) == 0
    assert len({p.parent.name for p in (run / "validation").glob("*/tx-*/*.json")} - {first}) == 1

    # a validation.json whose alignments are not the run's, or that is not JSON, has no panel: a warning says why
    v = json.loads((run / "validation.json").read_text())
    next(r for r in v["rows"] if r["teacher"] == "tx")["alignment"]["mean"] += 0.5
    for bad in (json.dumps(v), "garbage{"):
        (run / "validation.json").write_text(bad)
        caplog.clear()
        build([run], tmp_path / "site")
        assert 'id="validation"' not in (tmp_path / "site" / "index.html").read_text()
        assert any("its panel is left out" in r.getMessage() for r in caplog.records), caplog.text


@pytest.mark.slow
def test_gains_do_not_depend_on_the_teachers_order_and_damaged_or_stale_files_are_never_read(small_run, tmp_path, capsys,
                                                                                             monkeypatch):
    """A gain's bootstrap follows its arm's name, not its place in --teachers; a damaged stored arm is one
    line naming it; a full disk leaves the earlier validation whole, and a validation whose figure cannot be
    written leaves no figure of other settings."""
    import shutil

    from harness.cli import main

    run = tmp_path / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("validation*"))
    sets = ["--seeds", "1", *[x for s in TINY for x in ("--set", s)], "--set", "baseline=false", "--quiet"]
    gains = {}
    for order in ("toy-self-1c,toy-teacher", "toy-teacher,toy-self-1c"):
        assert main(["validate", str(run), "--teachers", order, *sets]) == 0
        v = json.loads((run / "validation.json").read_text())
        gains[order] = {(r["teacher"], r["algorithm"]): r["gain"] for r in v["rows"]}
    assert gains["toy-self-1c,toy-teacher"] == gains["toy-teacher,toy-self-1c"]

    import errno
    import tempfile

    outputs = ("validation.json", "validation.svg", "validation.png")
    earlier, real = {name: (run / name).read_bytes() for name in outputs}, tempfile.mkstemp

    def full(*args, prefix="", **kwargs):
        if prefix.startswith(".validation.png."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", full)
    assert main(["validate", str(run), *sets, "--set", "n_boot=300"]) == 2
    assert "validation.png: cannot write (No space left on device)" in capsys.readouterr().err
    assert {name: (run / name).read_bytes() for name in outputs} == earlier
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()

    (run / "validation.svg").unlink()
    (run / "validation.svg").mkdir()  # the figure cannot be written: the earlier one must not stay
    assert main(["validate", str(run), *sets, "--set", "n_boot=300"]) == 2
    assert "validation.svg" in capsys.readouterr().err and not (run / "validation.png").exists()
    assert json.loads((run / "validation.json").read_text())["settings"]["n_boot"] == 300
    (run / "validation.svg").rmdir()

    arm = next((run / "validation").glob("*/toy-teacher-*/gkd--seed0.json"))
    for damage in ('{"accuracy": [1', json.dumps({"accuracy": [1.0], "losses": [], "seconds": 1.0})):
        arm.write_text(damage)
        assert main(["validate", str(run), *sets]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"odiag: error: {arm}: not a stored validation arm") and len(err.splitlines()) == 1, err
        assert "delete it and run the same command again" in err
    arm.unlink()
    left = [run / ".validation.json.k1ll3d.tmp", arm.with_name(f".{arm.name}.k1ll3d.tmp")]  # as a kill -9 leaves them
    for p in left:
        p.write_text("{half")
    assert main(["validate", str(run), *sets]) == 0 and arm.is_file()
    assert not [p for p in left if p.exists()]

    # trainings that would round differently are not mixed with those stored: another thread count is refused
    capsys.readouterr()
    assert main(["validate", str(run), *sets, "--set", "threads=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("odiag: error: odiag validate: ") and len(err.splitlines()) == 1, err
    assert "was trained on cpu with 1 thread, and this command runs on cpu with 2 threads" in err
    assert "resume with --set threads=1, or delete" in err, err
    saved = json.loads(arm.read_text())
    assert saved["numerics"] == {"device": "cpu", "threads": 1}
    saved["numerics"]["threads"] = 3
    arm.write_text(json.dumps(saved))
    assert main(["validate", str(run), *sets]) == 2
    assert f"{arm} was trained on cpu with 3 threads" in capsys.readouterr().err
    del saved["numerics"]  # an arm stored before odiag recorded how it rounded is read as it is
    arm.write_text(json.dumps(saved))
    assert main(["validate", str(run), *sets]) == 0


@pytest.mark.slow
def test_validate_errors_are_one_line(small_run, tmp_path, capsys):
    from harness.cli import main

    for args, needle in (
        ([small_run, "--teachers", "nope"], "no teacher 'nope'"),
        ([small_run, "--set", "algorithms=[minillm]"], "unknown algorithm 'minillm'"),
        ([small_run, "--set", "steps=0"], "'steps' must be >= 1"),
        ([small_run, "--set", "n_boot=1"], "key 'n_boot' must be >= 100 (bootstrap replicates of a 95% interval), got 1"),
        ([small_run, "--set", "n_boot=1000000000000"], "key 'n_boot' must be at most 100,000, got 1,000,000,000,000"),
        ([small_run, "--teachers", ","], "names no teacher"),
        ([small_run, "--teachers", "a,a"], "key 'teachers' lists 'a' twice"),
        ([small_run, "--set", "device=tpu"], "key 'device' must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        ([small_run, "--set", "learning_rate=1e300"], "key 'learning_rate' must be > 0 and <= 1, got 1e+300"),
        *([([small_run, "--set", "device=cuda:0"], "torch sees no CUDA device here")] if not _cuda() else []),
        ([tmp_path], "not an odiag run directory (no config.json)"),
    ):
        assert main(["validate", *map(str, args), "--quick"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("odiag: error:") and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "validation.json").exists() and not (tmp_path / "validation").exists()
    # held-out gains judged by another answer checker than the run's alignments were made under
    from harness.tasks import scoring

    scoring.VERSION += 1
    try:
        assert main(["validate", str(small_run), "--quick"]) == 2
    finally:
        scoring.VERSION -= 1
    err = capsys.readouterr().err
    assert err.startswith("odiag: error:") and len(err.strip().splitlines()) == 1, err
    assert f"version of odiag's answer extraction (harness/tasks/scoring.py): {scoring.VERSION} there, {scoring.VERSION + 1} now" in err
    # a run another process holds (growing, say) is not validated meanwhile: its results may be gone by the end
    from harness.rundir import RunLock

    lock = RunLock(small_run)
    lock.acquire()
    try:
        assert main(["validate", str(small_run), "--quick"]) == 2
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert err.startswith("odiag: error:") and f"in use by odiag pid {os.getpid()}" in err, err
    # the error arrives before torch is needed: through the console script as well
    done = _odiag("validate", small_run, "--teachers", "nope", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("odiag: error:") and "Traceback" not in done.stderr


def test_a_student_that_training_made_diverge_is_named_as_such_not_as_its_dtype(small_run, monkeypatch, capsys):
    """Logits that turn NaN or inf once training began point at the learning rate (the student as the run read it had
    finite ones): the dtype advice, for a key validate does not take, was wrong there."""
    from harness.backends.hf import HFBackend
    from harness.cli import main
    from harness.errors import NonFiniteLogits

    sample, calls = HFBackend.sample, []

    def diverging(self, requests):
        calls.append(1)
        if len(calls) > 3:  # the control's and fresh draws' evaluations, the first training step, then this
            raise NonFiniteLogits("the model's next-token logits are not finite (NaN or inf)")
        return sample(self, requests)

    monkeypatch.setattr(HFBackend, "sample", diverging)
    assert main(["validate", str(small_run), "--quick", "--set", "seeds=1", "--set", "learning_rate=0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress lines
    assert err == ("odiag: error: odiag validate: the student's logits became NaN or inf after 1 training step at "
                   "learning_rate 0.5: training diverged; lower it (--set learning_rate=..., default 1e-4)"), err


@pytest.mark.slow
def test_a_run_without_decision_points_says_why_there_is_nothing_to_validate(tmp_path, capsys):
    """Said as such, with the run's own reason, not as an algorithm the run lacks."""
    from harness.cli import main

    student = ROOT / "harness" / "toy_models" / "student"
    sets = ["task=odiag_toy", "backend=hf", f"student={student}", "dtype=float32", "limit=1", "threads=1",
            "teachers=[toy-self-1c]", "algorithms=[gkd]", "n_initial=8", "budget=100", "n_min=1000000"]
    assert main(["run", "--out", str(tmp_path / "run"), "--quiet", *[x for s in sets for x in ("--set", s)]]) == 0
    assert main(["validate", str(tmp_path / "run"), "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"odiag: error: {tmp_path / 'run'}: nothing to validate, the run has no decision point: 1 question"), err
    assert not (tmp_path / "run" / "validation.json").exists()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_the_report_widens_its_teacher_column_to_the_longest_name():
    from harness.validate import format_report

    long = "self-distillation-with-two-correct-solutions"
    row = lambda teacher, gain: {"teacher": teacher, "algorithm": "gkd", "alignment": {"mean": 0.3, "ci95": [0.2, 0.4]},  # noqa: E731
                                 "gain": {"mean": gain, "ci95": [gain - 0.1, gain + 0.1]}, "accuracy": {"mean": 0.5}}
    v = {"rows": [row(long, 0.25), row("short", -0.125), {**row(None, 0.0), "algorithm": "control"}],
         "questions": {"heldout": [1, 2], "eval_samples": 4}, "settings": {"seeds": 2}, "control_accuracy": {"mean": 0.5},
         "correlation": {}, "timing": {"seconds": 1, "threads": 1, "device": "cpu", "load_average_before": [0.0],
                                       "load_average_after": [0.0]}}
    header, *rows = format_report(v).splitlines()[:4]
    end = header.index("accuracy") + len("accuracy")
    assert [len(r) for r in rows] == [end] * 3, [header, *rows]  # every row ends under the last column's header
    assert rows[0].startswith(long + " ") and rows[1].index("-0.125") == rows[0].index("+0.250")
    assert "no intervals with one seed" not in format_report(v)
    one = {**v, "settings": {"seeds": 1}, "rows": [{**r, "gain": {**r["gain"], "ci95": [None, None]}} for r in v["rows"]]}
    assert "no intervals with one seed: training noise cannot be measured from one draw (--seeds 2 or more)" in format_report(one)


def test_a_replicate_missing_a_pairs_only_questions_is_undefined_not_ranked_without_it():
    """A pair whose predictor is defined on one diagnosed question: a replicate that does not draw it ranked
    the other pairs alone (median ρ 1.0 there against 0.4 with all four, mixed into one interval). Such
    replicates are now undefined and counted; with one seed no interval is given at all."""
    align, diff = _pairs(n_pairs=4, n_diag=24)
    align[0, 1:] = np.nan  # pair 0 defined on question 0 alone
    out = rank_correlations({"alignment": align}, diff, seed=2, n_boot=600)["alignment"]
    draws = bootstrap_draws(diff.shape[1], diff.shape[2], 24, 600, seed=2)
    assert out["undefined_replicates"] == int((draws.diagnosed_BN[:, 0] == 0).sum()) > 100
    assert out["n_pairs"] == 4 and np.isfinite(out["ci95"]).all()
    one_seed = rank_correlations({"alignment": align, "other": -align}, diff[:, :1], seed=2, n_boot=200)
    assert np.isnan(one_seed["alignment"]["ci95"]).all() and np.isnan(one_seed["other"]["minus_alignment"]["ci95"]).all()
    assert one_seed["other"]["minus_alignment"]["verdict"] == "not resolved"
