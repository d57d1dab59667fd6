"""Backend options: ``student_args`` and a teacher's ``model_args``, checked against the backend,
outside the config hash unless they move a number."""

import subprocess
import sys
from pathlib import Path

import pytest

from harness.backends import check_options
from harness.config import ConfigError, resolve_run_config
from harness.plan import backend_options
from harness.teachers import load_teacher

ROOT = Path(__file__).resolve().parent.parent


def test_hf_options_reach_the_constructor_and_stay_out_of_the_hash():
    cfg = resolve_run_config(None, ["backend=hf", "student_args={batch_size: 8, score_chunk: 64}"])
    assert backend_options(cfg, []) == {"batch_size": 8, "score_chunk": 64}
    assert cfg.hash() == resolve_run_config(None, ["backend=hf"]).hash()


def test_options_that_move_numbers_are_hashed():
    base = resolve_run_config(None, ["backend=vllm"]).hash()
    assert resolve_run_config(None, ["backend=vllm", "student_args={score_with: vllm}"]).hash() != base
    assert resolve_run_config(None, ["backend=vllm", "student_args={gpu_memory_utilization: 0.3}"]).hash() == base


@pytest.mark.parametrize("args, message", [
    ("{batch_sise: 8}", "student_args: unknown key 'batch_sise' for the hf backend"),
    ("{dtype: float16}", "student_args: model-specific key 'dtype'"),
])
def test_unknown_keys_are_named(args, message):
    with pytest.raises(ConfigError, match=message):
        backend_options(resolve_run_config(None, ["backend=hf", f"student_args={args}"]), [])


@pytest.mark.parametrize("backend, args, message", [
    ("hf", "{batch_size: 0}", "student_args: batch_size must be a whole number >= 1, got 0"),
    ("hf", "{score_chunk: many}", "student_args: score_chunk must be a whole number >= 1, got 'many'"),
    ("hf", "{device: gpu}", "student_args: device 'gpu' is not a torch device"),
    ("hf", "{device: 'cuda:999'}", "student_args: device 'cuda:999': this machine's torch"),
    ("hf", "{attn_implementation: nosuch}", "student_args: attn_implementation 'nosuch' is not one this transformers .* has; "
                                            "choose eager, .*sdpa"),
    ("vllm", "{score_with: exact}", "student_args: score_with must be 'hf' or 'vllm', got 'exact'"),
    ("vllm", "{gpu_memory_utilization: 1.5}", "student_args: gpu_memory_utilization is a share of the device"),
    ("vllm", "{tensor_parallel_size: 0}", "student_args: tensor_parallel_size must be a whole number >= 1"),
])
def test_bad_values_are_named_before_a_model_loads(backend, args, message):
    """Values too, not only names: the backend's own check runs while planning (it ran in the constructor,
    after the run directory existed, as a traceback)."""
    with pytest.raises(ConfigError, match=message):
        backend_options(resolve_run_config(None, [f"backend={backend}", f"student_args={args}"]), [])


def test_vllm_engine_arguments_go_to_the_engines(monkeypatch):
    import harness.backends as backends

    monkeypatch.setattr(backends, "engine_argument_names", lambda: {"enable_chunked_prefill", "max_num_seqs"})
    out = check_options("vllm", {"score_with": "vllm", "enable_chunked_prefill": False, "max_num_seqs": 4})
    assert out == {"score_with": "vllm", "engine_options": {"enable_chunked_prefill": False, "max_num_seqs": 4}}
    with pytest.raises(ValueError, match="unknown key 'gpu_memory_utilisation'"):
        check_options("vllm", {"gpu_memory_utilisation": 0.1})


def test_teacher_model_args_need_vllm(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("model: Qwen/Qwen3-32B\nmodel_args: {tensor_parallel_size: 2}\n")
    teacher = load_teacher(str(path))
    assert teacher.model_args == {"tensor_parallel_size": 2}
    with pytest.raises(ConfigError, match=f"^{path}: key 'model_args': engine options of the vllm backend, not hf"):
        backend_options(resolve_run_config(None, ["backend=hf"]), [teacher])
    path.write_text("model: student\ncontext_template: '{{ question }} Think.'\nmodel_args: {tensor_parallel_size: 2}\n")
    with pytest.raises(ConfigError, match=f"^{path}: key 'model_args': a self-teacher reads with the student's model"):
        backend_options(resolve_run_config(None, ["backend=vllm"]), [load_teacher(str(path))])


def test_cli_error_is_one_line_and_leaves_no_directory(tmp_path):
    cmd = [sys.executable, "-m", "harness.cli", "run", "--set", "backend=synthetic", "--set", "student_args={nope: 1}",
           "--out", str(tmp_path / "run"), "--quiet"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("odiag: error: ")
    assert not (tmp_path / "run").exists()


def test_the_plan_refuses_a_bad_option_before_the_directory_opens(tmp_path):
    from harness.backends.exact import SyntheticBackend
    from harness.pipeline import run

    cfg = resolve_run_config(None, ["limit=1", "student_args={nope: 1}"])
    with pytest.raises(ConfigError, match="student_args: unknown key 'nope'"):  # a given backend skips no check
        run(cfg, tmp_path / "run", backend=SyntheticBackend({}))
    assert not (tmp_path / "run").exists()


def test_numeric_options_shape_the_tree_the_rest_does_not():
    from harness.config import tree_fields

    base = tree_fields(resolve_run_config(None, ["backend=vllm"]))
    scorer = tree_fields(resolve_run_config(None, ["backend=vllm", "student_args={score_with: vllm, max_model_len: 512}"]))
    memory = tree_fields(resolve_run_config(None, ["backend=vllm", "student_args={gpu_memory_utilization: 0.3}"]))
    assert scorer == {**base, "student_args": {"score_with": "vllm"}}
    assert memory == base
    # a weight or cache format given among the engines' own arguments reaches the same engines: it shaped no
    # tree there, so a run could resume under another quantization and mix the two students' rollouts
    nested = resolve_run_config(None, ["backend=vllm", "student_args={engine_options: {quantization: fp8, enforce_eager: true}}"])
    beside = resolve_run_config(None, ["backend=vllm", "student_args={quantization: fp8}"])
    assert tree_fields(nested) == tree_fields(beside) == {**base, "student_args": {"quantization": "fp8"}}
    assert nested.hash() == beside.hash()
    both = resolve_run_config(None, ["backend=vllm", "student_args={kv_cache_dtype: auto, engine_options: {kv_cache_dtype: fp8}}"])
    assert tree_fields(both)["student_args"] == {"kv_cache_dtype": "fp8"}  # the nested one reaches the engines


def test_the_corrected_command_runs_after_a_bad_option(tmp_path):
    base = [sys.executable, "-m", "harness.cli", "run", "--set", "limit=2", "--set", "n_target=20",
            "--out", str(tmp_path / "run"), "--quiet"]
    bad = subprocess.run([*base, "--set", "student_args={nope: 1}"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    subprocess.run(base, cwd=ROOT, check=True, capture_output=True)
    assert (tmp_path / "run" / "results.json").exists()


def test_a_run_directory_refuses_a_changed_scorer_and_resumes_with_new_engine_settings(tmp_path):
    from harness.backends.exact import SyntheticBackend
    from harness.pipeline import run
    from harness.rundir import RunDirError

    base = ["backend=vllm", "limit=1", "n_target=20"]
    first = run(resolve_run_config(None, [*base, "student_args={score_with: hf}"]), tmp_path / "run", backend=SyntheticBackend())
    with pytest.raises(RunDirError, match="student_args"):
        run(resolve_run_config(None, [*base, "student_args={score_with: vllm}"]), tmp_path / "run", backend=SyntheticBackend())
    with pytest.raises(RunDirError, match="student_args"):
        run(resolve_run_config(None, [*base, "student_args={score_with: hf, engine_options: {quantization: fp8}}"]),
            tmp_path / "run", backend=SyntheticBackend())
    again = run(resolve_run_config(None, [*base, "student_args={score_with: hf, max_model_len: 512}"]), tmp_path / "run",
                backend=SyntheticBackend())
    assert again["teachers"] == first["teachers"]


@pytest.mark.parametrize("student_args, warned", [
    ("{engine_options: {quantization: fp8}}", "quantization fp8"),  # vLLM's own arguments beside them need vLLM here
    ("{engine_options: {kv_cache_dtype: fp8_e5m2}}", "kv_cache_dtype fp8_e5m2"),
    ("{engine_options: {kv_cache_dtype: auto}}", None),
    ("{score_with: vllm, engine_options: {quantization: fp8}}", None),
])
def test_a_quantized_engine_beside_the_exact_scorer_is_warned_of(tmp_path, caplog, student_args, warned):
    """The engines sample a quantized student while the exact scorer scores the checkpoint: said once, at the start."""
    from harness.backends.exact import SyntheticBackend
    from harness.pipeline import run

    cfg = resolve_run_config(None, ["backend=vllm", "limit=1", "n_target=20", f"student_args={student_args}"])
    run(cfg, tmp_path / "run", backend=SyntheticBackend())
    said = [r.getMessage() for r in caplog.records if "two slightly different students" in r.getMessage()]
    assert len(said) == (warned is not None) and all(warned in m for m in said)


def test_a_checkpoint_saved_quantized_is_not_warned_of(tmp_path, caplog):
    """Its weights are quantized in transformers too: the engines and the scorer read one student."""
    import json
    import shutil

    from harness.pipeline import _warn_two_students
    from harness.toy import TOY_DIR

    saved = tmp_path / "awq"
    shutil.copytree(TOY_DIR / "student", saved)
    sets = ["backend=vllm", "student_args={engine_options: {quantization: awq}}"]
    for student, warned in ((TOY_DIR / "student", True), (saved, False)):
        if student == saved:
            config = json.loads((saved / "config.json").read_text())
            (saved / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "awq"}}))
        caplog.clear()
        _warn_two_students(resolve_run_config(None, [*sets, f"student={student}"]))
        assert any("two slightly different students" in r.getMessage() for r in caplog.records) == warned


def test_a_run_recorded_before_nested_engine_options_counted_resumes_with_the_same_settings(tmp_path):
    """A run whose quantization was given inside engine_options was recorded with a tree that lacked it: the
    same settings resume it (not "student_args: None there, {'quantization': 'fp8'} now"); others are refused."""
    import json

    from harness.backends.exact import SyntheticBackend
    from harness.pipeline import run
    from harness.rundir import RunDirError

    base = ["backend=vllm", "limit=1", "n_target=20"]
    nested = resolve_run_config(None, [*base, "student_args={engine_options: {quantization: fp8}}"])
    first = run(nested, tmp_path / "run", backend=SyntheticBackend())
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    del record["tree"]["student_args"]  # as the earlier rule recorded it
    record["tree_hash"] = "0" * len(record["tree_hash"])
    (tmp_path / "run" / "config.json").write_text(json.dumps(record))
    (tmp_path / "run" / "results.json").unlink()
    assert run(nested, tmp_path / "run", backend=SyntheticBackend())["teachers"] == first["teachers"]
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    del record["tree"]["student_args"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(record))
    with pytest.raises(RunDirError, match="student_args"):
        run(resolve_run_config(None, [*base, "student_args={engine_options: {quantization: awq}}"]), tmp_path / "run",
            backend=SyntheticBackend())


def test_backend_vllm_without_vllm_installed_is_one_line_and_writes_nothing(tmp_path, capsys):
    import importlib.util

    from harness import cli
    from harness.toy import TOY_DIR

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    sets = ["task=odiag_toy", "backend=vllm", f"student={TOY_DIR / 'student'}", "teachers=[toy-self-1c]", "limit=1"]
    assert cli.main(["run", *[a for s in sets for a in ("--set", s)], "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("odiag: error: backend vllm: vLLM is not installed in this environment") and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()
    assert cli.main(["plan", *[a for s in sets for a in ("--set", s)]]) == 0  # a plan sizes a run for elsewhere


def test_a_checkpoint_dtype_of_auto_is_the_checkpoints_own():
    from harness.backends import ModelSpec
    from harness.backends.vllm import checkpoint_dtype
    from harness.toy import TOY_DIR

    assert checkpoint_dtype(ModelSpec(str(TOY_DIR / "student"))) == "float32"  # not vLLM's bfloat16 for "auto"
    assert checkpoint_dtype(ModelSpec(str(TOY_DIR / "student"), dtype="bfloat16")) == "bfloat16"
    assert checkpoint_dtype(ModelSpec("/nonexistent/model")) == "auto"


def test_a_damaged_checkpoint_is_one_line_naming_it(tmp_path, capsys):
    import shutil

    from harness import cli
    from harness.toy import TOY_DIR

    bad = tmp_path / "student"
    shutil.copytree(TOY_DIR / "student", bad)
    (bad / "model.safetensors").write_bytes((TOY_DIR / "student" / "model.safetensors").read_bytes()[:1000])
    sets = ["task=odiag_toy", "backend=hf", f"student={bad}", "teachers=[toy-self-1c]", "limit=1", "n_initial=4"]
    assert cli.main(["run", *[a for s in sets for a in ("--set", s)], "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"odiag: error: model {bad}: its weights cannot be read") and len(err.splitlines()) == 1, err


def test_an_attention_implementation_this_machine_lacks_is_one_line_and_the_corrected_command_runs(tmp_path, capsys):
    """flash_attention_2 is one transformers knows; without its package the model cannot load: one line naming
    the option (it was a traceback, after the run directory was written), and the same run with sdpa goes on."""
    import importlib.util

    from harness import cli
    from harness.toy import TOY_DIR

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here: flash_attention_2 may load")
    sets = ["task=odiag_toy", "backend=hf", f"student={TOY_DIR / 'student'}", "teachers=[toy-self-1c]", "limit=1",
            "n_initial=4", "n_target=10"]
    argv = ["run", *[a for s in sets for a in ("--set", s)], "--out", str(tmp_path / "r"), "--quiet"]
    assert cli.main([*argv, "--set", "student_args={attn_implementation: flash_attention_2}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("odiag: error: student_args: attn_implementation 'flash_attention_2' cannot load ") \
        and len(err.splitlines()) == 1, err
    assert cli.main([*argv, "--set", "student_args={attn_implementation: sdpa}"]) == 0


@pytest.mark.parametrize("hf_options, threads", [(None, 3), ("{threads: 5}", 5)])
def test_threads_reach_the_vllm_backends_exact_scorer_and_stay_out_of_the_hash(monkeypatch, hf_options, threads):
    """The vllm backend scores exactly in transformers: ``threads`` sets its torch threads, as the hf backend's
    (it reached nothing there); a ``threads`` in student_args' hf_options is the more specific, and wins."""
    import harness.plan as plan

    built = {}
    monkeypatch.setattr(plan, "load_backend", lambda name, models, **options: built.update(options) or object())
    sets = ["backend=vllm", "threads=3", *([f"student_args={{hf_options: {hf_options}}}"] if hf_options else [])]
    cfg = resolve_run_config(None, sets)
    plan.build_backend(cfg, [])
    assert built["hf_options"]["threads"] == threads
    assert cfg.hash() == resolve_run_config(None, [s for s in sets if not s.startswith("threads")]).hash()
