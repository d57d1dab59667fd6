"""``odiag plan``: parameter counts, memory per phase, rollouts and tokens, refusal when it does not fit."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import ConfigError, resolve_run_config
from harness.costplan import GiB, KNOWN_MODELS, describe_model, plan_for, throughput_from, windows
from harness.toy import TOY_DIR

ROOT = Path(__file__).resolve().parent.parent
PAPER = ["task=odiag_boolq", "backend=vllm", "student=Qwen/Qwen3-1.7B", "dtype=bfloat16", "limit=200",
         "teachers=[qwen3-4b, qwen3-8b, qwen3-14b, self-1c, self-1c1w, self-sum-1c, self-sum-1c1w, self-1c-32b]"]


def test_local_parameter_counts_match_the_checkpoints():
    torch = pytest.importorskip("torch")  # noqa: F841
    from harness.toy import load

    for name in ("student", "teacher"):
        model, _ = load(name)
        assert describe_model(str(TOY_DIR / name), "x", "float32").parameters == sum(p.numel() for p in model.parameters())


def test_known_hub_models_and_dtypes():
    m = describe_model("Qwen/Qwen3-8B", "teacher", "bfloat16")
    assert m.parameters == KNOWN_MODELS["Qwen/Qwen3-8B"][0] and m.weights == 2 * m.parameters
    assert describe_model("Qwen/Qwen3-8B", "teacher", "float32").weights == 4 * m.parameters
    assert describe_model("someone/unknown", "teacher", "auto").parameters is None


def test_windows_follow_the_doubling_rule():
    assert [windows(n, 50) for n in (1, 50, 51, 150, 151, 512)] == [1, 1, 2, 2, 3, 4]


def test_the_papers_boolq_plan_and_its_refusal():
    cfg = resolve_run_config(None, PAPER)
    plan = plan_for(cfg, throughput=5000)
    text = "\n".join(plan.lines)
    for model in ("Qwen/Qwen3-1.7B", "Qwen/Qwen3-4B", "Qwen/Qwen3-8B", "Qwen/Qwen3-14B", "Qwen/Qwen3-32B"):
        assert model in text
    assert "wall time" in text and "200 questions" in text
    assert "(512 per response at most;" in text  # every count grouped by thousands where it has them
    aime = "\n".join(plan_for(resolve_run_config(None, [*PAPER, "task=odiag_aime25"])).lines)
    assert "(30,000 per response at most;" in aime
    long = "\n".join(plan_for(resolve_run_config(None, [*PAPER, "task=odiag_aime25", "teachers=[self-1c]"]),
                               throughput=20000).lines)
    assert re.search(r"wall time: <= [0-9,]+\.[0-9] h \([0-9,]+\.[0-9] days\) at 20,000 generated tokens/s", long), long
    assert "(7.6 days) at 5,000" in text  # 182.5 h
    toy = [f"student={TOY_DIR / 'student'}", "task=odiag_toy", "backend=hf", "teachers=[toy-self-1c]", "limit=8"]
    short = "\n".join(plan_for(resolve_run_config(None, toy), throughput=1000).lines)
    assert re.search(r"wall time: <= [0-9.]+ h at 1,000 generated", short), short  # under 48 h: hours alone
    # extreme rates print in powers of ten, never as a number of hundreds of digits
    for rate, shown in ((1e-9, "(3.80e+13 days) at 1.00e-09 generated"), (1e300, "s at 1.00e+300 generated")):
        line = next(x for x in plan_for(cfg, throughput=rate).lines if x.startswith("wall time"))
        assert shown in line and len(line) < 160, line
    phases = dict(plan.phases)
    weights = sum(KNOWN_MODELS[m][0] for m in KNOWN_MODELS if m not in ("Qwen/Qwen3-0.6B",)) * 2
    assert phases["teacher scoring"] > weights  # the exact scorer holds every model, the engines more
    # vLLM starts an engine only where its KV cache holds one sequence of max_model_len (Qwen3: 40,960 positions,
    # 10 GiB for the 32B: 64 layers x 2 x 8 KV heads x 128 x 2 bytes per position)
    with pytest.raises(ConfigError, match=r"phase 'teacher contexts.*Qwen3-32B needs 72.5 GiB \(weights \+ 1.5 GiB \+ one "
                                          r"sequence of max_model_len 40,960\) but its engine gets 35.2"):
        plan_for(cfg, gpu_memory=141)  # by default the two sampling engines share half the device
    with pytest.raises(ConfigError, match=r"Qwen3-32B needs 63.0 GiB \(weights \+ 1.5 GiB \+ one sequence of max_model_len 2,048"):
        plan_for(resolve_run_config(None, [*PAPER, "student_args={max_model_len: 2048}"]), gpu_memory=141)
    with pytest.raises(ConfigError, match="phase 'teacher scoring' needs"):
        plan_for(resolve_run_config(None, [*PAPER, "student_args={gpu_memory_utilization: 0.45, max_model_len: 2048}"]), gpu_memory=141)
    with pytest.raises(ConfigError, match="phase 'teacher contexts"):  # the 32B engine cannot hold its weights
        plan_for(resolve_run_config(None, [*PAPER, "student_args={gpu_memory_utilization: 0.3}"]), gpu_memory=141)
    # a summariser only samples: the exact scorer holds the student alone beside the engines, not the 32B again
    summarised = dict(plan_for(resolve_run_config(None, [*PAPER, "teachers=[self-sum-1c]"])).phases)
    assert 0 < summarised["teacher scoring"] - summarised["teacher contexts (solutions, summaries)"] < 5 * GiB
    small = plan_for(resolve_run_config(None, [*PAPER, "teachers=[self-1c]", "student_args={score_with: vllm}"]),
                     gpu_memory=80)
    assert max(size for _, size in small.phases) <= 80 * GiB


def test_budget_caps_the_rollouts():
    toy = ["task=odiag_toy", "backend=hf", f"student={TOY_DIR / 'student'}", "teachers=[toy-self-1c]"]
    a = plan_for(resolve_run_config(None, toy))
    b = plan_for(resolve_run_config(None, [*toy, "budget=100"]))
    assert b.tokens < a.tokens


@pytest.mark.parametrize("sets, needle", [
    (["task=odiag_toy"], "task 'odiag_toy' on backend 'synthetic'"),
    (["task=nosuch"], "unknown task 'nosuch': available tasks are 'synthetic', "),  # not "on backend 'synthetic'"
    (["task=odiag_toy", "backend=hf", f"student={TOY_DIR / 'student'}", "teachers=[toy-self-1c]", "max_new_tokens=2000"],
     re.escape("max_new_tokens 2000 (the response length limit: --set max_new_tokens, or lm-eval's --gen_kwargs "
               "max_gen_toks) is not below the 512 positions of teacher toy-self-1c's model: lower it to at most")),
    (["task=odiag_toy", "backend=hf", f"student={TOY_DIR / 'student'}", "teachers=[toy-self-1c]", "max_new_tokens=500"],
     "with up to 500 response tokens it exceeds the model's 512 positions"),  # the tokenizer is at hand: checked as run does
    (["task=nosuch", "backend=hf", f"student={TOY_DIR / 'student'}", "teachers=[toy-self-1c]"], "unknown task 'nosuch'"),
    (["teachers=[toy-teacher]"], "toy-teacher.yaml: key 'model': model"),
    (["teachers=[synthetic-helpful,self-1c1w]"],
     re.escape("teacher self-1c1w: shows solutions in its context (correct_solutions 1")),
    (["temperature=0.5"], "temperature 0.5: backend synthetic samples its student at temperature 1 only"),
    (["task=odiag_toy", "backend=vllm", f"student={TOY_DIR / 'student'}", "teachers=[toy-self-1c]", "temperature=0.001"],
     "temperature 0.001: vLLM samples at temperatures of at least 0.01"),
    (["task=odiag_toy", "backend=hf", f"student={TOY_DIR / 'student'}", "teachers=[toy-self-1c]", "student_args={foo: 1}"],
     re.escape("student_args: unknown key 'foo' for the hf backend")),
    # a path that is no directory here is no hub id: it was planned as one, "size unknown", and run refused it
    (["task=odiag_toy", "backend=hf", f"student={TOY_DIR / 'nosuch'}", "teachers=[toy-self-1c]"],
     re.escape(f"cannot load the tokenizer of '{TOY_DIR / 'nosuch'}': no such directory")),
    (["task=odiag_toy", "backend=hf", f"student={TOY_DIR / 'student' / 'config.json'}", "teachers=[toy-self-1c]"],
     re.escape(f"cannot load the tokenizer of '{TOY_DIR / 'student' / 'config.json'}': a file, not a directory")),
])
def test_plan_refuses_what_run_would_refuse(sets, needle):
    with pytest.raises(ConfigError, match=needle):
        plan_for(resolve_run_config(None, sets))


def test_cli_refuses_in_one_line_with_exit_2():
    cmd = [sys.executable, "-m", "harness.cli", "plan", *[a for s in PAPER for a in ("--set", s)], "--gpu-memory", "80"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and out.stderr.startswith("odiag: error: plan: phase")
    assert "Qwen/Qwen3-14B" in out.stdout  # the plan itself is still shown


def test_run_prints_the_plan_once_its_directory_is_open(tmp_path, capsys):
    from harness import cli

    assert cli.main(["run", "--set", "limit=1", "--set", "n_target=20", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("plan: synthetic, student synthetic") and sum(line.startswith("plan: ") for line in err) == 1
    assert any("initial rollouts" in line for line in err[1:])
    assert cli.main(["run", "--set", "limit=1", "--set", "n_target=20", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_sizes_are_shown_in_the_unit_that_shows_them():
    from harness.costplan import _duration, _gib, parameters_text

    assert [parameters_text(n) for n in (14.77e9, 596e6, 151_360, 12)] == ["14.77B", "596M", "151k", "12"]
    assert [_gib(x) for x in (None, 0, 3.5 * GiB, 0.6 * 2**20, 69.3 * 2**20)] == ["?", "0.0 GiB", "3.5 GiB", "0.6 MiB", "69.3 MiB"]
    assert [_duration(h) for h in (182.5, 0.5, 154 / 3600, 54 / 3600, 0.2 / 3600)] == ["182.5 h", "30.0 min", "2.6 min", "54 s", "0.2 s"]


@pytest.mark.parametrize("teachers, expected", [
    ("[self-1c, qwen3-8b]", "2 teachers scored; teacher contexts generate nothing (their solutions are the student's own rollouts)"),
    ("[qwen3-8b]", "1 teacher scored; no teacher context to build"),
    ("[self-1c-32b]", "1 teacher scored; teacher contexts (solutions, summaries) generate <= 4,096 tokens"),
])
def test_the_per_question_line_says_what_teacher_contexts_generate(teachers, expected):
    cfg = resolve_run_config(None, ["task=odiag_boolq", "backend=vllm", "student=Qwen/Qwen3-0.6B", f"teachers={teachers}"])
    (line,) = [x for x in plan_for(cfg).lines if x.startswith("per question:")]
    assert line.endswith(expected)


def test_measurements_give_the_best_positive_rate_or_say_what_they_hold(tmp_path):
    """A gpu_check JSON of rows or of one row; a rate that is not a positive number is named."""
    path = tmp_path / "m.json"
    for data, expected in (({"rows": [{"sampled_tok_s": 900}, {"sampled_tok_s": 1200.5}]}, 1200.5),
                           ({"sampled_tok_s": 3000}, 3000.0)):
        path.write_text(json.dumps(data))
        assert throughput_from(str(path)) == expected
    for data, needle in (({"sampled_tok_s": -5}, "no positive, finite sampled_tok_s in it (found -5)"),
                         ({"rows": [{"sampled_tok_s": "abc"}]}, "(found 'abc')"),
                         ({"rows": []}, "no sampled_tok_s in it; write it with bash bench/gpu_check.sh --json FILE")):
        path.write_text(json.dumps(data))
        with pytest.raises(ConfigError, match=re.escape(needle)):
            throughput_from(str(path))


def test_measurements_that_are_no_regular_file_are_refused_unread(tmp_path):
    """A FIFO (or a device) was read until it ended, forever or out of memory."""
    import os

    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ConfigError, match=re.escape(f"--measurements {tmp_path / 'fifo'}: not a regular file")):
        throughput_from(str(tmp_path / "fifo"))


def test_measurements_of_another_student_or_backend_are_refused(tmp_path):
    """gpu_check measures the toy student by default: its rate says nothing of a Qwen3 student's."""
    path = tmp_path / "m.json"
    cfg = resolve_run_config(None, ["task=odiag_boolq", "backend=vllm", "student=Qwen/Qwen3-0.6B", "teachers=[self-1c]"])
    for data, needle in (
        ({"rows": [{"sampled_tok_s": 900}]}, "does not name the student it measured; measure it: bash bench/gpu_check.sh "
                                             f"--student Qwen/Qwen3-0.6B --backend vllm --json {path}"),
        ({"model": str(TOY_DIR / "student"), "backend": "vllm", "rows": [{"sampled_tok_s": 9e5}]},
         f"measured {TOY_DIR / 'student'}, and this run's student is Qwen/Qwen3-0.6B"),
        ({"model": "Qwen/Qwen3-0.6B", "backend": "hf", "rows": [{"sampled_tok_s": 900}]},
         "measured backend hf, and this run uses vllm"),
    ):
        path.write_text(json.dumps(data))
        with pytest.raises(ConfigError, match=re.escape(needle)):
            throughput_from(str(path), cfg)
    path.write_text(json.dumps({"model": "Qwen/Qwen3-0.6B", "backend": "vllm", "rows": [{"sampled_tok_s": 900}]}))
    assert throughput_from(str(path), cfg) == 900
    toy = resolve_run_config(None, ["task=odiag_toy", "backend=hf", "student=harness/toy_models/student", "teachers=[toy-self-1c]"])
    path.write_text(json.dumps({"model": str(TOY_DIR / "student"), "backend": "hf", "rows": [{"sampled_tok_s": 900}]}))
    assert throughput_from(str(path), toy) == 900  # one directory, named two ways


def test_an_hf_decode_batch_counts_the_longest_prompt_in_its_kv_cache():
    """Rows are left-padded to the longest prompt: each holds it and the response (a BoolQ passage is longer
    than many responses)."""
    toy = ["task=odiag_toy", "backend=hf", f"student={TOY_DIR / 'student'}", "teachers=[toy-self-1c]", "limit=4"]
    cfg = resolve_run_config(None, toy)
    from harness.plan import make_plan as run_plan

    task = run_plan(cfg, installed=False).task
    longest = max(len(q.prompt_ids) for q in task.questions(4))
    length = task.max_new_tokens
    layout = next(line for line in plan_for(cfg).lines if line.startswith("layout"))
    assert f"at {longest + length:,} positions per row (the longest prompt, {longest:,}, and the response)" in layout
    c = json.loads((TOY_DIR / "student" / "config.json").read_text())
    kv = 64 * (longest + length) * c["num_hidden_layers"] * 2 * c["num_key_value_heads"] * c["head_dim"] * 4
    assert f"holds {kv / 2**20:.1f} MiB of KV cache" in layout


def test_an_hf_decode_batch_of_solutions_or_summaries_counts_their_own_row_length(tmp_path):
    """A solution source writes up to its solution_max_new_tokens, and a model summariser reads the question, a whole
    solution and its prompt before it writes: rows longer than the student's, whose KV cache the plan must hold."""
    from harness.plan import make_plan as run_plan

    teacher = TOY_DIR / "teacher"
    (tmp_path / "src.yaml").write_text(f"model: student\nsolution_source: {teacher}\ndtype: float32\ncorrect_solutions: 1\n"
                                       "solution_max_new_tokens: 400\ncontext_template: '{{ question }} {{ correct[0] }}'\n")
    (tmp_path / "sum.yaml").write_text(f"model: student\ncorrect_solutions: 1\nsummarizer: {teacher}\ndtype: float32\n"
                                       "summary_prompt: 'say {{ question }}: {{ solution }}'\nsummary_max_new_tokens: 300\n"
                                       "context_template: '{{ question }} {{ correct_summaries[0] }}'\n")
    base = ["task=odiag_toy", "backend=hf", f"student={TOY_DIR / 'student'}", "limit=4"]
    task = run_plan(resolve_run_config(None, [*base, "teachers=[toy-self-1c]"]), installed=False).task
    longest, length = max(len(q.prompt_ids) for q in task.questions(4)), task.max_new_tokens
    c = json.loads((teacher / "config.json").read_text())
    for name, row in (("src", longest + 400), ("sum", longest + length + len("say {{ question }}: {{ solution }}") + 300)):
        cfg = resolve_run_config(None, [*base, f"teachers=[{tmp_path / (name + '.yaml')}]"])
        layout = next(line for line in plan_for(cfg).lines if line.startswith("layout"))
        assert f"at {row:,} positions per row of {teacher} (" in layout, layout
        kv = 64 * row * c["num_hidden_layers"] * 2 * c["num_key_value_heads"] * c["head_dim"] * 4
        assert f"holds {kv / 2**20:.1f} MiB of KV cache" in layout, layout


def test_an_hf_runs_rate_is_the_row_of_its_batch_size(tmp_path):
    """gpu_check measures batches of 16 to 1,024; larger batches sample faster, so the best row overstates
    the rate of a run decoding 64 rows at a time and understates its wall time."""
    path = tmp_path / "m.json"
    rows = [{"batch": b, "sampled_tok_s": rate} for b, rate in ((16, 100.0), (64, 300.0), (256, 800.0), (1024, 1500.0))]
    path.write_text(json.dumps({"model": str(TOY_DIR / "student"), "backend": "hf", "rows": rows}))
    toy = ["task=odiag_toy", "backend=hf", f"student={TOY_DIR / 'student'}", "teachers=[toy-self-1c]"]
    for batch, rate in ((None, 300.0), (64, 300.0), (100, 300.0), (256, 800.0), (4096, 1500.0), (8, 100.0)):
        sets = toy if batch is None else [*toy, f"student_args={{batch_size: {batch}}}"]
        assert throughput_from(str(path), resolve_run_config(None, sets)) == rate, batch
    assert throughput_from(str(path)) == 1500.0  # no run to match: the best row


def test_a_revision_for_a_local_student_is_refused():
    """A hub revision pins nothing in a local directory: refused rather than silently ignored."""
    toy = [f"student={TOY_DIR / 'student'}", "task=odiag_toy", "backend=hf", "teachers=[toy-self-1c]", "student_revision=v2"]
    with pytest.raises(ConfigError, match=f"key 'student_revision' pins a hub model's revision, and {TOY_DIR / 'student'} "
                                          "is a local directory: remove it"):
        plan_for(resolve_run_config(None, toy))


def test_every_teacher_of_a_shared_model_is_named_with_it(tmp_path):
    """Two teachers reading one model: one model line (loaded once), naming both readers."""
    for name in ("tx", "ty"):
        (tmp_path / f"{name}.yaml").write_text(f"description: a copy\nmodel: helpful\nchat_template_options: {{{name}: 1}}\n")
    plan = plan_for(resolve_run_config(None, [f"teachers=[{tmp_path / 'tx.yaml'}, {tmp_path / 'ty.yaml'}]"]))
    assert [line for line in plan.lines if line.startswith("  helpful")] == ["  helpful (size unknown): teachers tx, ty"]


def test_gpu_check_refuses_what_it_cannot_do_before_measuring(tmp_path):
    """A device torch cannot use, vLLM missing, or a --json folder that cannot be written: one usage line,
    before any device time is spent (the measurement would run first, then fail to write)."""
    script = ROOT / "bench" / "gpu_check.py"
    cases = [(["--device", "tpu"], "--device tpu: torch here runs on cpu"),
             (["--json", str(tmp_path / "no" / "x.json")], "its folder does not exist or cannot be written"),
             (["--json", str(tmp_path)], "is a folder"),
             (["--student", str(tmp_path / "no-model")], "no such model folder")]
    if importlib.util.find_spec("vllm") is None:
        cases.append((["--backend", "vllm"], "--backend vllm: vllm is not installed"))
    for flags, needle in cases:
        done = subprocess.run([sys.executable, script, "--device", "cpu", "--quick", *flags], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr and needle in done.stderr, done.stderr[-1500:]
        assert "batch" not in done.stdout  # nothing was measured


def test_gpu_check_sh_reads_paths_from_the_folder_it_is_started_in(tmp_path):
    """gpu_check.sh once changed to the repository first: `--json sub/out.json` given in the user's
    folder was checked (and would be written) under the repository, and refused there."""
    (tmp_path / "sub").mkdir()  # --json passes its check here; the missing student is then refused before measuring
    done = subprocess.run(["bash", ROOT / "bench" / "gpu_check.sh", "--device", "cpu", "--json", "sub/out.json",
                           "--student", "./no-model"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 2 and "--student ./no-model: no such model folder" in done.stderr, done.stderr[-1500:]
    assert "--json" not in done.stderr.splitlines()[-1]


def _targeted_line(sets) -> str:
    return next(x for x in plan_for(resolve_run_config(None, sets)).lines if x.startswith("per question:"))


@pytest.mark.parametrize("sets", [
    ["strategy=survey", "n_target=1"],  # n_target bounds paper only
    ["strategy=settle", "n_target=1", "budget=3000"],
    ["strategy=paper", "n_target=40"],
])
def test_a_run_stays_within_the_targeted_rollouts_its_plan_bounds(tmp_path, sets):
    """Each strategy's own bound: survey's sampled positions x likely children x visits, settle's budget
    (settle ignores n_target), paper's targets x n_target. The synthetic run's spend is checked against it."""
    from harness import cli

    sets = ["limit=2", "n_initial=32", *sets]
    bound = int(re.search(r"targeted rollouts <= ([0-9,]+)", _targeted_line(sets)).group(1).replace(",", ""))
    out = tmp_path / "run"
    assert cli.main(["run", *[a for s in sets for a in ("--set", s)], "--out", str(out), "--quiet"]) == 0
    spent = json.loads((out / "results.json").read_text())["counts"]["rollouts"] - 2 * 32
    assert 0 < spent <= 2 * bound


def test_the_host_memory_of_the_scoring_passes_is_what_a_run_holds_at_most(tmp_path):
    """The plan bounds the bytes of every path's passes (a paper-size AIME plan's take tens of GiB) and what a run
    holds of them (at most HELD_PASS_BYTES, the rest read back from their shards, and one scoring call's). On the
    toy vocabulary of 52 ids every position keeps every id, so each pass holds exactly its positions times the
    plan's bytes per position."""
    import numpy as np

    from harness import cli
    from harness.costplan import held_pass_bytes

    sets = ["task=odiag_toy", "backend=hf", f"student={TOY_DIR / 'student'}", "dtype=float32", "teachers=[toy-self-1c]",
            "limit=2", "n_initial=16", "budget=10", "threads=1"]
    line = next(x for x in plan_for(resolve_run_config(None, sets)).lines if x.startswith("host memory:"))
    assert "4 paths x 2 passes x <= 128 positions per question, <= 52 ids per position (score_top_k 64)" in line
    out = tmp_path / "run"
    assert cli.main(["run", *[a for x in sets for a in ("--set", x)], "--out", str(out), "--quiet"]) == 0
    held, student = 0, held_pass_bytes(64, 0, 52)
    for shard in sorted(out.glob("shards/*/score-p*.npz")):
        arrays = np.load(shard)
        size = sum(arrays[k].nbytes for k in arrays.files if k not in ("context", "approximate") and k[0] != "_")
        per_position = held_pass_bytes(64, 1, 52) - student if "reference_logprobs" in arrays.files else student
        assert size == (len(arrays["offsets"]) - 1) * per_position + 8, shard  # and the offsets' closing entry
        held += size
    bound = 2 * 4 * 128 * held_pass_bytes(64, 1, 52)
    assert 0 < held <= bound and f"take <= {bound / 2**20:.1f} MiB (" in line
    assert f"held: <= {bound / 2**20:.1f} MiB of them (the rest read back from their shards)" in line
    paper = next(x for x in plan_for(resolve_run_config(None, ["task=odiag_aime25", "backend=vllm", "student=Qwen/Qwen3-8B",
                                                                 "teachers=[self-1c, self-1c1w]"])).lines
                 if x.startswith("host memory:"))
    assert "held: <= 2.0 GiB of them" in paper, paper


def test_settle_without_a_budget_has_no_bound_and_says_how_to_give_one():
    line = _targeted_line(["strategy=settle", "n_target=1"])
    assert "not bounded without a budget" in line and "set budget=N" in line
    text = "\n".join(plan_for(resolve_run_config(None, ["strategy=settle"]), throughput=100).lines)
    assert "total: targeted rollouts not bounded without a budget" in text
    assert "wall time: not bounded: set budget=N to bound the targeted rollouts" in text  # not a silently ignored rate


def _total_rollouts(lines) -> int:
    return int(re.search(r"total: <= ([0-9,]+) rollouts", "\n".join(lines)).group(1).replace(",", ""))


@pytest.mark.slow
def test_a_run_with_model_summaries_stays_within_its_plan(tmp_path):
    """A model summarises every solution shown on any path (the largest counts any teacher shows, on each of
    the 2 x paths_per_outcome paths), not only the counts of one teacher: the plan bounded 56 rollouts for a
    run that made 70."""
    from harness import cli

    teacher = tmp_path / "msum.yaml"
    teacher.write_text(json.dumps({
        "description": "the student reading model summaries of one correct and one wrong solution", "model": "student",
        "correct_solutions": 1, "wrong_solutions": 1, "summarizer": str(TOY_DIR / "teacher"),
        "summary_prompt": "{{ question }} {{ solution }}", "summary_chat_template_options": {}, "summary_max_new_tokens": 128,
        "context_template": "{{ question }}\nright: {{ correct_summaries[0] }}\nwrong: {{ wrong_summaries[0] }}"}))
    sets = ["task=odiag_toy", "backend=hf", f"student={TOY_DIR / 'student'}", "dtype=float32", f"teachers=[{teacher}]",
            "limit=2", "n_initial=16", "paths_per_outcome=3", "budget=10", "threads=1"]
    bound = _total_rollouts(plan_for(resolve_run_config(None, sets)).lines)
    out = tmp_path / "run"
    assert cli.main(["run", *[a for x in sets for a in ("--set", x)], "--out", str(out), "--quiet"]) == 0
    counts = json.loads((out / "results.json").read_text())["counts"]
    made = counts["rollouts"] + counts["artefact_samples_this_invocation"]
    assert counts["artefact_samples_this_invocation"] > 2 * 2  # more than one teacher's counts per question
    assert made <= bound, (made, bound)


def test_the_plan_of_a_run_counts_the_teachers_added_to_it(tmp_path, capsys):
    """Grown or resumed, a run scores the teachers added to it on every new question: the plan it prints, and
    odiag plan of its config.yaml, count them (their models, memory and contexts), not the config's alone."""
    from harness import cli

    out = tmp_path / "run"
    assert cli.main(["run", "--set", "limit=1", "--set", "teachers=[synthetic-helpful]", "--out", str(out), "--quiet"]) == 0
    assert cli.main(["add-teacher", str(out), "synthetic-misleading", "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["plan", "--config", str(out / "config.yaml")]) == 0
    assert "backend synthetic, 2 teachers" in capsys.readouterr().out
    assert cli.main(["run", "--config", str(out / "config.yaml"), "--set", "limit=2", "--out", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("plan: synthetic, student synthetic (auto), backend synthetic, 2 teachers, 2 questions"), err[0]
    assert any("misleading" in line and "synthetic-misleading" in line for line in err[:6]), err[:6]


def test_a_model_loaded_for_two_roles_is_counted_once_and_the_hf_cache_is_counted(tmp_path):
    """The hf backend loads one copy per model id: a teacher's model that is also its solution source is one
    line and one set of weights. A decode batch's KV cache is part of the memory: 64 rows of AIME's 30,000
    positions do not fit 24 GiB, and the advice names what the hf backend can change."""
    (tmp_path / "q32.yaml").write_text("description: the 32B as a teacher\nmodel: Qwen/Qwen3-32B\ndtype: bfloat16\n")
    sets = ["task=odiag_boolq", "backend=hf", "student=Qwen/Qwen3-0.6B", "dtype=bfloat16",
            f"teachers=[self-1c-32b, {tmp_path / 'q32.yaml'}]"]
    plan = plan_for(resolve_run_config(None, sets))
    assert sum(line.startswith("  Qwen/Qwen3-32B") for line in plan.lines) == 1
    weights = (KNOWN_MODELS["Qwen/Qwen3-32B"][0] + KNOWN_MODELS["Qwen/Qwen3-0.6B"][0]) * 2
    assert weights < dict(plan.phases)["teacher scoring"] < weights + 12 * GiB  # + the 32B sampler's cache, the scorer's chunk
    plan_for(resolve_run_config(None, sets), gpu_memory=80)  # fits: one copy of the 32B
    aime = ["task=odiag_aime25", "backend=hf", "student=Qwen/Qwen3-0.6B", "teachers=[self-1c]"]
    with pytest.raises(ConfigError, match=r"needs 2\d\d\.\d GiB.*lower batch_size in student_args"):
        plan_for(resolve_run_config(None, aime), gpu_memory=24)
    plan_for(resolve_run_config(None, [*aime, "student_args={batch_size: 4}"]), gpu_memory=24)


def test_score_with_vllm_starts_an_engine_per_scored_model_and_refuses_one_too_small():
    sets = ["task=odiag_boolq", "backend=vllm", "student=Qwen/Qwen3-0.6B", "dtype=bfloat16",
            "teachers=[qwen3-8b, qwen3-14b]", "student_args={score_with: vllm}"]
    with pytest.raises(ConfigError, match=r"Qwen/Qwen3-14B needs 35\.3 GiB \(weights \+ 1\.5 GiB \+ one sequence of max_model_len 40,960\) but its engine gets 22\.7 GiB"):
        plan_for(resolve_run_config(None, sets), gpu_memory=80)
    plan = plan_for(resolve_run_config(None, [*sets, "teachers=[qwen3-8b]"]), gpu_memory=80)
    assert dict(plan.phases)["teacher scoring"] == pytest.approx(2 * 0.425 * 80 * GiB)  # two engines, nothing else


def test_the_question_count_and_response_length_are_the_tasks_when_it_is_at_hand():
    toy = ["task=odiag_toy", "backend=hf", f"student={TOY_DIR / 'student'}", "teachers=[toy-self-1c]"]
    text = "\n".join(plan_for(resolve_run_config(None, [*toy, "limit=null"]), throughput=1000).lines)
    assert "64 questions" in text and "total: <=" in text and "wall time: <=" in text
    assert "64 questions" in "\n".join(plan_for(resolve_run_config(None, [*toy, "limit=1000"])).lines)
    synthetic = "\n".join(plan_for(resolve_run_config(None, ["max_new_tokens=40", "window=3"])).lines)
    assert "(10 per response at most;" in synthetic and "<= 640 tokens" in synthetic  # the horizon, not 40


def test_plan_refuses_a_teacher_listed_twice_whatever_the_student(tmp_path):
    (tmp_path / "h2.yaml").write_text((ROOT / "teachers" / "synthetic-helpful.yaml").read_text())
    with pytest.raises(ConfigError, match="are the same teacher"):
        plan_for(resolve_run_config(None, [f"teachers=[synthetic-helpful, {tmp_path / 'h2.yaml'}]"]))
    (tmp_path / "student.yaml").write_text("description: named like the student\nname: student\nmodel: helpful\n")
    with pytest.raises(ConfigError, match="the student's"):
        plan_for(resolve_run_config(None, [f"teachers=[{tmp_path / 'student.yaml'}]"]))


@pytest.mark.parametrize("args, needle", [
    (["--gpu-memory", "1e308"], "--gpu-memory: must be at most 1,048,576"),
    (["--throughput", "5", "--measurements", "/nonexistent"], "not allowed with argument"),
    (["--gpu-memory", "80", "--gpu-memory", "40"], "--gpu-memory: given twice"),
])
def test_plan_options_out_of_range_or_in_conflict_are_one_line(args, needle):
    out = subprocess.run([sys.executable, "-m", "harness.cli", "plan", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_an_absurd_measured_rate_prints_no_infinite_wall_time():
    line = next(x for x in plan_for(resolve_run_config(None, []), throughput=5e-324).lines if x.startswith("wall time"))
    assert "inf" not in line and line.startswith("wall time: beyond")


def test_a_ray_plan_says_its_memory_is_per_worker_and_divides_the_wall_time():
    local = plan_for(resolve_run_config(None, ["limit=8"]), throughput=10)
    spread = plan_for(resolve_run_config(None, ["limit=8", "executor=ray", "num_workers=4"]), throughput=10)
    assert any(line.startswith("executor ray: 4 workers") for line in spread.lines)
    hours = [float(re.search(r"wall time: <= ([0-9.]+) h", x).group(1)) for p in (local, spread) for x in p.lines
             if x.startswith("wall time")]
    assert hours[0] == pytest.approx(4 * hours[1], rel=0.05) and "per worker x 4" in spread.lines[-1]


def test_sampling_engines_share_half_the_device_by_default_under_exact_scoring():
    """A teacher that samples solutions from a model of its own adds an engine: the two split the half
    the scorer leaves (each would take half, and the scorer would get nothing)."""
    from harness.plan import backend_options
    from harness.teachers import load_teacher

    sets = ["task=odiag_toy", "backend=vllm", f"student={TOY_DIR / 'student'}", "teachers=[toy-self-1c-teacher]"]
    cfg = resolve_run_config(None, sets)
    teachers = [load_teacher(t) for t in cfg.teachers]
    assert backend_options(cfg, teachers)["gpu_memory_utilization"] == 0.25
    assert "gpu_memory_utilization=0.25 of the device (20.0 GiB each)" in "\n".join(plan_for(cfg, gpu_memory=80).lines)
    alone = resolve_run_config(None, [*sets, "teachers=[toy-self-1c]"])
    assert "gpu_memory_utilization" not in backend_options(alone, [load_teacher("toy-self-1c")])  # the backend's 0.5
    given = resolve_run_config(None, [*sets, "student_args={gpu_memory_utilization: 0.4}"])
    assert backend_options(given, teachers)["gpu_memory_utilization"] == 0.4


def test_a_rate_measured_on_short_completions_is_called_a_lower_bound_for_long_responses(tmp_path):
    """gpu_check measures 64-token completions unless told otherwise; a plan for responses of thousands of tokens
    took that rate as theirs. It now says the wall time is a lower bound, and how to measure at length."""
    from harness.costplan import length_note

    path = tmp_path / "m.json"
    long = resolve_run_config(None, ["task=odiag_boolq", "backend=vllm", "student=Qwen/Qwen3-0.6B", "teachers=[self-1c]",
                                     "max_new_tokens=4096"])
    short = resolve_run_config(None, ["task=odiag_boolq", "backend=vllm", "student=Qwen/Qwen3-0.6B", "teachers=[self-1c]",
                                      "max_new_tokens=256"])
    path.write_text(json.dumps({"model": "Qwen/Qwen3-0.6B", "backend": "vllm", "rows": [{"sampled_tok_s": 900}]}))
    note = length_note(str(path), long)
    assert note and "measured 64-token completions" in note and "responses run to 4,096 tokens" in note
    assert f"--quick --student Qwen/Qwen3-0.6B --backend vllm --new-tokens 4096 --json {path}" in note  # as it is checked
    assert length_note(str(path), short) is None
    path.write_text(json.dumps({"model": "Qwen/Qwen3-0.6B", "backend": "vllm", "new_tokens": 4096,
                                "rows": [{"sampled_tok_s": 900}]}))
    assert length_note(str(path), long) is None  # measured at length
