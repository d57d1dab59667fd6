"""The vLLM backend for real, on vLLM's CPU build, with the toy models (heads padded to 32).

- the sampler draws from the exact softmax (chi-square against transformers' distribution);
- vLLM's prompt log-probabilities equal transformers' in float32 (the full vocabulary listed);
- ``odiag run --set backend=vllm`` end to end, statistically consistent with ``backend=hf`` on the
  same questions and seeds (the draws differ: each backend has its own random stream);
- ``lm_eval --model vllm`` end to end with vLLM's own engine arguments and ``--gen_kwargs``;
- a real SIGKILL mid-run under vLLM, then the same command resumes to the uninterrupted results.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

vllm = pytest.importorskip("vllm")
if not hasattr(vllm, "LLM"):  # a directory named vllm on the path, not vLLM
    pytest.skip("vLLM is not installed", allow_module_level=True)
torch = pytest.importorskip("torch")

from harness.backends import STUDENT, ModelSpec, SampleRequest, ScoreRequest  # noqa: E402
from harness.toy import TOY_DIR  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STUDENT_DIR = str(TOY_DIR / "student")
VOCAB = 52
# a small diagnostic: 4 toy questions, one self-teacher, GKD only
RUN = ["task=odiag_toy", f"student={STUDENT_DIR}", "dtype=float32", "teachers=[toy-self-1c]", "algorithms=[gkd]",
       "limit=4", "n_initial=32", "n_target=16", "n_min=10", "k_window=3", "seed=0"]
Z_999 = 3.29  # two-sided 99.9%: consistency tests fail by chance once in a thousand runs


def _sets(items):
    return [a for item in items for a in ("--set", item)]


def _odiag(*args, **kw):
    return subprocess.run([str(BIN / "odiag"), *args], cwd=ROOT, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def engines():
    """One vLLM engine (the toy student, float32) and the exact hf backend on the same model."""
    from harness.backends.hf import HFBackend
    from harness.backends.vllm import VLLMBackend

    specs = {STUDENT: ModelSpec(STUDENT_DIR, dtype="float32")}
    backend = VLLMBackend(specs, score_with="vllm", score_logprobs=128, engine_options={"max_model_len": 512})
    return backend, HFBackend(specs, device="cpu", threads=1)


def _prompt():
    from harness.toy import chat_prompt, load

    _, tokenizer = load("student")
    # after the first digit, "+" and " " are both likely: the student writes half its lines spaced
    return np.array(chat_prompt(tokenizer, "sum 4829177") + tokenizer("4")["input_ids"])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_draws_from_the_exact_softmax(engines, temperature):
    """4000 one-token draws against transformers' softmax at T (bins under 5 expected pooled)."""
    from scipy import stats

    backend, exact = engines
    prefix, n = _prompt(), 4000
    (res,) = backend.sample([SampleRequest(prefix, n, seed=3, max_new_tokens=1, temperature=temperature)])
    (score,) = exact.score([ScoreRequest(prefix, np.array([0]), STUDENT, temperature, VOCAB)])
    ids, logp, _ = score.at(0)
    probs = np.zeros(VOCAB)
    probs[ids] = np.exp(logp)
    counts = np.bincount(np.concatenate(res.tokens), minlength=VOCAB)
    expected = probs * n
    big = expected >= 5
    assert big.sum() >= 2, "the test needs a distribution with at least two likely tokens"
    observed = np.append(counts[big], counts[~big].sum())
    expected = np.append(expected[big], expected[~big].sum())
    assert stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 1e-3


def test_seeded_draws_repeat_and_stop_ids_end_them(engines):
    backend, _ = engines
    prefix = _prompt()
    requests = [SampleRequest(prefix, 6, 11, 40, 1.0, stop_ids=(2,)), SampleRequest(prefix[:-3], 4, 12, 5, 0.8)]
    first, again = backend.sample(requests), backend.sample(requests)
    for a, b in zip(first, again, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
    for t, truncated in zip(first[0].tokens, first[0].truncated, strict=True):
        assert 2 not in t[:-1] and truncated == (t[-1] != 2)
    assert all(len(t) == 5 for t in first[1].tokens) and first[1].truncated.all()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_scores_equal_transformers_in_float32(engines, temperature):
    """score_logprobs=128 is capped at the 52-id vocabulary, so vLLM lists every id: its tempered
    log-probabilities and divergences equal the exact ones up to float32 kernel differences."""
    backend, exact = engines
    prompt = _prompt()
    req = ScoreRequest(prompt, np.array([43, 6, 15, 44, 6, 15]), STUDENT, temperature, 8, STUDENT, prompt[-12:])
    (got,), (want,) = backend.score([req]), exact.score([req])
    assert got.approximate and not want.approximate
    for k in range(len(req.response)):
        ids_g, lp_g, _ = got.at(k)
        ids_w, lp_w, _ = want.at(k)
        common, ig, iw = np.intersect1d(ids_g, ids_w, return_indices=True)
        assert len(common) >= len(ids_w) - 1
        np.testing.assert_allclose(lp_g[ig], lp_w[iw], atol=2e-3)
    for name in ("kl", "tv"):
        np.testing.assert_allclose(got.divergences[name], want.divergences[name], atol=2e-3)
    # a fill pass (no top-k, given ids at each position) reads the same values as transformers
    fill = ScoreRequest(prompt, req.response, STUDENT, temperature, 0, extra_ids=np.array([[3, 7, 50]] * len(req.response)))
    (got,), (want,) = backend.score([fill]), exact.score([fill])
    for k in range(len(req.response)):
        ids_g, lp_g, _ = got.at(k)
        ids_w, lp_w, _ = want.at(k)
        np.testing.assert_array_equal(ids_g, np.union1d([3, 7, 50], [req.response[k]]))
        np.testing.assert_array_equal(ids_g, ids_w)
        np.testing.assert_allclose(lp_g, lp_w, atol=2e-3)
    info = backend.describe()
    assert info["score_logprobs"] == VOCAB
    (engine,) = info["engines"].values()
    assert engine["max_logprobs"] == 128 and engine["vocab_size"] == VOCAB
    assert engine["enable_chunked_prefill"] is False and info["vllm"] and "cpu" in info["vllm"]
    assert engine["quantization"] is None and engine["kv_cache_dtype"] == "auto"  # where lm-eval's engine is checked


# -- odiag run end to end ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same small diagnostic under vllm (a subprocess, as a user runs it) and hf (in process)."""
    from harness.config import resolve_run_config
    from harness.pipeline import run

    root = tmp_path_factory.mktemp("runs")
    started = time.monotonic()
    out = _odiag("run", *_sets([*RUN, "backend=vllm", "student_args={max_model_len: 512}"]),
                 "--out", str(root / "vllm"), timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    (root / "vllm-closing-lines.txt").write_text(out.stdout)
    (root / "vllm-progress.txt").write_text(out.stderr)
    vllm_seconds = time.monotonic() - started
    run(resolve_run_config(None, [*RUN, "backend=hf", "threads=1"]), root / "hf")
    load = lambda name: json.loads((root / name / "results.json").read_text())  # noqa: E731
    return load("vllm"), load("hf"), root, vllm_seconds


def _accuracy(results):
    n = results["config"]["n_initial"]
    right = sum(round(q["initial_accuracy"] * n) for q in results["questions"])
    return right, n * len(results["questions"])


def test_odiag_run_under_vllm_is_consistent_with_hf(runs):
    """Initial accuracy: a two-proportion z-test; GKD alignment: the difference of the two means
    within 3.29 combined standard errors (from each run's 95% CI). Both at the 0.1% level."""
    vllm, hf, _, _ = runs
    assert vllm["versions"]["backend"]["backend"] == "vllm" and hf["versions"]["backend"]["backend"] == "hf"
    assert [q["id"] for q in vllm["questions"]] == [q["id"] for q in hf["questions"]]
    (rv, nv), (rh, nh) = _accuracy(vllm), _accuracy(hf)
    pooled = (rv + rh) / (nv + nh)
    se = np.sqrt(pooled * (1 - pooled) * (1 / nv + 1 / nh))
    assert abs(rv / nv - rh / nh) <= Z_999 * se + 1e-12, (rv, nv, rh, nh)
    (av,), (ah,) = vllm["teachers"], hf["teachers"]
    sv = (av["alignment"]["ci95"][1] - av["alignment"]["ci95"][0]) / (2 * 1.96)
    sh = (ah["alignment"]["ci95"][1] - ah["alignment"]["ci95"][0]) / (2 * 1.96)
    diff = av["alignment"]["mean"] - ah["alignment"]["mean"]
    assert abs(diff) <= Z_999 * np.hypot(sv, sh), (av["alignment"], ah["alignment"])
    print(json.dumps({"vllm": {"accuracy": [rv, nv], "gkd": av["alignment"]},
                      "hf": {"accuracy": [rh, nh], "gkd": ah["alignment"]}}))


def test_starting_vllm_engines_is_counted_apart_from_the_first_phase(runs):
    """The engine starts before the first phase plans its rollouts (its start is logged before the phase's
    first line), and the closing lines give that start a row of its own."""
    _, _, root, _ = runs
    progress = (root / "vllm-progress.txt").read_text()
    started = progress.index("starting a vLLM engine for")
    planned = re.search(r"\] initial rollouts: [\d,]+ rollouts planned", progress)
    assert planned and started < planned.start(), progress[-3000:]
    lines = (root / "vllm-closing-lines.txt").read_text().splitlines()
    assert any(line.startswith("loading models") for line in lines), lines


def test_sigkill_under_vllm_then_resume_gives_the_same_results(runs, tmp_path):
    """A real `kill -9` once the first shards are written, then the same command again."""
    reference, _, root, _ = runs
    out = tmp_path / "killed"
    cmd = [str(BIN / "odiag"), "run", *_sets([*RUN, "backend=vllm", "student_args={max_model_len: 512}"]),
           "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    shards = out / "shards"
    while time.monotonic() < deadline and proc.poll() is None and not list(shards.glob("*/window0-round0.npz")):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["counts"]["rollouts_this_invocation"] < resumed["counts"]["rollouts"]
    assert resumed["counts"]["rollouts"] == reference["counts"]["rollouts"]
    assert resumed["teachers"] == reference["teachers"]
    assert not list(out.rglob("*.tmp"))


def test_ctrl_c_to_the_process_group_under_vllm_stops_cleanly_and_resumes(runs, tmp_path):
    """A terminal's Ctrl-C reaches vLLM's engine process too, which may die before odiag hears of it:
    still the stop line and exit 130, and the same command resumes to the uninterrupted results."""
    reference, _, _, _ = runs
    out = tmp_path / "interrupted"
    cmd = [str(BIN / "odiag"), "run", *_sets([*RUN, "backend=vllm", "student_args={max_model_len: 512}"]),
           "--out", str(out), "--quiet"]
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}  # vLLM's default: an engine process
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None and not list((out / "shards").glob("*/window0-round0.npz")):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "odiag: interrupted" in err and "internal error" not in err, err[-3000:]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["teachers"] == reference["teachers"]


@pytest.mark.parametrize("args, needle", [
    ("{gpu_memory_utilisation: 0.1}", "student_args: unknown key 'gpu_memory_utilisation'"),
    ("{hf_options: {nope: 1}}", "student_args: hf_options: unknown key 'nope' for the hf backend"),
    ("{engine_options: {no_such: 1}}", "student_args: engine_options: unknown vLLM engine argument 'no_such'"),
    ("{max_model_len: x}", "max_model_len must be a whole number >= 1, got 'x'"),
    ("{gpu_memory_utilization: true}", "gpu_memory_utilization is a share of the device, in (0, 1], got True"),
    ("{max_model_len: 64}", "student_args: max_model_len 64 is below the longest prompt"),
])
def test_a_bad_backend_option_is_one_line_before_anything_is_written(tmp_path, args, needle):
    """Before an engine starts or the run directory is made: a key or value the engines would refuse
    later (after the initial rollouts, where a changed hf_options then makes another tree), or a
    max_model_len that would cut every response short (vLLM shortens max_tokens to fit)."""
    out = _odiag("run", *_sets([*RUN, "backend=vllm", f"student_args={args}"]), "--out", str(tmp_path / "x"), timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith("odiag: error: ") and needle in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "x").exists()


def test_an_engine_that_cannot_start_for_memory_is_one_line_and_the_corrected_command_runs(tmp_path):
    """vLLM refuses to start an engine whose KV cache does not fit. Its engine process (vLLM's default, which
    this tier otherwise turns off) logs the cause's traceback to standard output, prints it to standard error,
    and the parent hears only "Engine core initialization failed": one odiag line naming the cause and the
    settings, no traceback on either, exit 2, and the same --out then takes the corrected command."""
    out = tmp_path / "x"
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}  # it would override the option
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    tight = _odiag("run", *_sets([*RUN, "limit=1", "backend=vllm", "student_args={engine_options: {kv_cache_memory_bytes: 4096}}"]),
                   "--out", str(out), timeout=600, env=env)
    assert tight.returncode == 2, tight.stderr[-3000:]
    line = tight.stderr.strip().splitlines()[-1]
    assert line.startswith("odiag: error: vLLM could not start an engine for ") and "raise gpu_memory_utilization" in line
    assert "(ValueError: No available memory for the cache blocks)" in line, line
    assert "Traceback" not in tight.stdout + tight.stderr and "internal error" not in tight.stderr, tight.stderr[-3000:]
    fixed = _odiag("run", *_sets([*RUN, "limit=1", "backend=vllm"]), "--out", str(out), timeout=900)
    assert fixed.returncode == 0 and (out / "results.json").is_file(), fixed.stderr[-3000:]


def test_engine_arguments_vllm_refuses_are_one_line_naming_them(tmp_path):
    """A max_model_len above what the model holds passes odiag's checks (which bound it from below) and vLLM's
    validation of its config refuses it as the engine is built: one line with vLLM's reason, naming student_args,
    not a traceback called a bug in odiag."""
    out = _odiag("run", *_sets([*RUN, "limit=1", "backend=vllm", "student_args={max_model_len: 100000}"]),
                 "--out", str(tmp_path / "x"), timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("odiag: error: vLLM refused the engine configuration for ") and (
        "max_model_len (100000) is greater than the derived max_model_len") in line and line.endswith(
        "check the model and the engine options in student_args"), line
    assert "Traceback" not in out.stdout + out.stderr, out.stderr[-3000:]


def test_an_engine_in_its_own_process_runs_with_its_output_relayed(tmp_path):
    """vLLM's default runs the engine core in a process of its own, whose output odiag relays while the engine
    starts (to hold back a refused start's tracebacks): a run there goes through, the engine process's log lines
    reach standard output, and the command exits."""
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    done = _odiag("run", *_sets([*RUN, "limit=1", "backend=vllm"]), "--out", str(tmp_path / "x"), timeout=600, env=env)
    assert done.returncode == 0 and (tmp_path / "x" / "results.json").is_file(), done.stderr[-3000:]
    assert "(EngineCore" in done.stdout and "Traceback" not in done.stdout + done.stderr


@contextlib.contextmanager
def _engine_starting(tmp_path):
    """``odiag run`` on vLLM with its engine in processes of their own (vLLM's default), once those processes
    exist (spawned as the engine's start begins; the start takes about 20 s more): the run, its engines' processes
    and its standard error's file. Whatever is left of them is killed at the end."""
    import psutil

    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    log = tmp_path / "err"
    with log.open("w") as err:
        proc = subprocess.Popen([str(BIN / "odiag"), "run", *_sets([*RUN, "backend=vllm"]), "--out", str(tmp_path / "x")],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
    engines = []
    try:
        deadline = time.monotonic() + 300
        while not engines and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            engines = [p for p in psutil.Process(proc.pid).children(recursive=True) if "VLLM::" in " ".join(p.cmdline())]
        assert engines, log.read_text()[-3000:]
        yield proc, engines, log
    finally:
        proc.kill()
        for p in [*engines, *psutil.Process().children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                if "VLLM::" in " ".join(p.cmdline()):
                    p.kill()


def test_a_kill_9_of_odiag_alone_ends_its_engines_processes(tmp_path):
    """vLLM's engine core and worker run in processes of their own (its default); a kill -9 of odiag alone (not its
    process group) left them running, holding their share of the device, so the resume found no memory for its
    engines. A watcher odiag starts with its first engine ends them."""
    import psutil

    with _engine_starting(tmp_path) as (proc, engines, log):
        time.sleep(15)  # started and sampling (an engine still starting ends when its parent does)
        assert proc.poll() is None, log.read_text()[-3000:]
        proc.kill()
        proc.wait(30)
        gone, alive = psutil.wait_procs(engines, timeout=20)
        assert not alive, [p.pid for p in alive]


@pytest.mark.parametrize("how", ["Ctrl-C of odiag alone", "SIGTERM"])
def test_a_stop_while_an_engine_starts_stops_odiag(tmp_path, how):
    """vLLM catches a KeyboardInterrupt raised while it waits for its engine's handshake, then waits up to minutes
    for the engine's ready message: a Ctrl-C then was lost (the run went on). It now stops odiag in seconds, with
    its one line, the engine ended with it."""
    import psutil

    with _engine_starting(tmp_path) as (proc, engines, log):
        time.sleep(3)  # waiting for the engine's handshake or its ready message: checked below, by no phase line
        assert proc.poll() is None and not (tmp_path / "x" / "results.json").exists(), log.read_text()[-3000:]
        proc.send_signal(signal.SIGINT if how.startswith("Ctrl-C") else signal.SIGTERM)
        assert proc.wait(60) == (130 if how.startswith("Ctrl-C") else 143), log.read_text()[-3000:]
        lines = log.read_text().splitlines()
        assert lines[-1].startswith("odiag: interrupted" if how.startswith("Ctrl-C") else "odiag: terminated"), lines[-5:]
        assert "Traceback" not in log.read_text()
        # stopped while the engine started: no phase ever planned its first rollouts
        assert not any(re.match(r"\[ *[0-9.]+s\] initial rollouts", line) for line in lines), lines[-10:]
        gone, alive = psutil.wait_procs(engines, timeout=20)
        assert not alive, [p.pid for p in alive]


def test_a_float32_checkpoint_runs_in_float32_when_its_dtype_is_auto():
    """vLLM's own "auto" runs a float32 checkpoint in bfloat16, transformers' in float32: the tree would be
    drawn from another pi than the one scored."""
    from harness.backends.vllm import VLLMBackend

    backend = VLLMBackend({STUDENT: ModelSpec(STUDENT_DIR)}, engine_options={"max_model_len": 512})
    backend.sample([SampleRequest(_prompt(), 1, seed=0, max_new_tokens=2)])
    assert backend.describe()["engines"][STUDENT_DIR]["dtype"] == "torch.float32"


# -- lm-eval -------------------------------------------------------------------------------------


LMEVAL_ENGINE = ("gpu_memory_utilization=0.1,enforce_eager=True,max_model_len=512,distributed_executor_backend=uni,"
                 "enable_chunked_prefill=False")


def _lm_eval(tmp_path, model_args: str, metadata: dict, *extra: str):
    tasks = _odiag("tasks-dir").stdout.strip()
    cmd = [str(BIN / "lm_eval"), "--include_path", tasks, "--tasks", "odiag_toy", "--model", "vllm",
           "--model_args", f"pretrained={STUDENT_DIR},{model_args}", *extra,
           "--metadata", json.dumps(metadata), "--output_path", str(tmp_path / "out")]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)


def test_lm_eval_with_vllm_gives_odiag_runs_numbers(runs, tmp_path):
    """vLLM's own engine arguments in --model_args, a temperature in --gen_kwargs, odiag's keys in
    --metadata: lm-eval's engine samples and odiag scores exactly, as ``odiag run --set backend=vllm``
    does, so the same settings give the same numbers (lm-eval's default scorer was once vLLM's
    20 listed log-probabilities, under the same config hash)."""
    settings = dict(item.split("=", 1) for item in RUN)
    metadata = {"teachers": ["toy-self-1c"], "algorithms": ["gkd"], "out": str(tmp_path / "run"),
                **{k: int(settings[k]) for k in ("n_initial", "n_target", "n_min", "k_window", "seed")}}
    out = _lm_eval(tmp_path, f"dtype=float32,{LMEVAL_ENGINE}", metadata,
                   "--limit", settings["limit"], "--gen_kwargs", "temperature=1.0")
    assert out.returncode == 0, out.stderr[-3000:]
    (path,) = list((tmp_path / "out").rglob("results_*.json"))
    metrics = json.loads(path.read_text())["results"]["odiag_toy"]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    reference = runs[0]
    assert results["config_hash"] == reference["config_hash"]
    assert json.dumps(results["teachers"], sort_keys=True) == json.dumps(reference["teachers"], sort_keys=True)
    for key in ("questions", "paths", "decision_points", "rollouts", "tokens_generated"):
        assert results["counts"][key] == reference["counts"][key]
    (teacher,) = results["teachers"]
    assert metrics["alignment/toy-self-1c/gkd,none"] == pytest.approx(teacher["alignment"]["mean"])
    backend = results["versions"]["backend"]
    (engine,) = backend["engines"].values()
    assert backend["score_with"] == "hf" and engine["gpu_memory_utilization"] == 0.1


@pytest.mark.parametrize("model_args, needle", [
    (LMEVAL_ENGINE, "lm-eval's engine runs .* in bfloat16 and odiag reads it in float32"),
    (f"dtype=float32,{LMEVAL_ENGINE.replace(',enable_chunked_prefill=False', '')}",
     "give --model_args enable_chunked_prefill=False"),
])
def test_lm_evals_engine_that_odiag_run_would_not_build_is_one_line_before_the_run(tmp_path, model_args, needle):
    """vLLM's own dtype auto samples the float32 toy in bfloat16; its CPU build prefills in chunks by default,
    which kills a seeded request. Both read from the real engine, refused before the run directory is made."""
    out = _lm_eval(tmp_path, model_args, {"teachers": ["toy-self-1c"], "out": str(tmp_path / "run")}, "--limit", "1")
    assert out.returncode == 2, out.stderr[-3000:]
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("odiag: error:")]
    assert re.search(needle, line) and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()
