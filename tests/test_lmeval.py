"""odiag through lm-evaluation-harness (tier 2, CPU): ``lm_eval`` and ``odiag eval`` as subprocesses.

Both run the toy task on the tiny toy student with lm-eval's ``hf`` model, and their alignment
metrics must equal what ``odiag run`` gives for the same config and seed: lm-eval's mean over
questions of each question's record is odiag's per-teacher mean (SPEC §5).
"""

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")  # lm-eval's hf model needs it

from harness.config import ConfigError, RunConfig  # noqa: E402
from harness.lmeval_bridge import TASKS_DIR, _check_supported, metric_name, settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STUDENT = ROOT / "harness" / "toy_models" / "student"
BIN = Path(sys.executable).parent
SETTINGS = {"teachers": ["toy-teacher", "toy-self-1c"], "algorithms": ["gkd"], "n_initial": 16, "n_target": 20,
            "k_window": 2, "seed": 3, "threads": 1}
needs_toy = pytest.mark.skipif(not (STUDENT / "config.json").exists(), reason="toy models not built (python -m harness.toy)")


def test_settings_reject_unknown_keys():
    with pytest.raises(ConfigError, match="unknown key 'teacher'"):
        settings({"teacher": ["self-1c"], "version": 1.0})
    with pytest.raises(ConfigError, match="--limit"):
        settings({"limit": 3})
    assert settings({"teachers": ["a"], "pretrained": "x", "odiag": {}}, model_keys=["pretrained"]) == {"teachers": ["a"]}


def test_gen_kwargs_values_are_checked_as_their_fields_naming_the_gen_kwarg():
    """lm-eval hands --gen_kwargs values over as parsed text: a word or a fraction for a length was a
    traceback, or cut silently (1.7 -> 1); each is checked as the RunConfig field it sets."""
    from harness.lmeval_bridge import generation_settings

    where = "task odiag_toy"
    for kwargs, needle in (({"max_gen_toks": "abc"}, "--gen_kwargs max_gen_toks: key 'max_new_tokens' must be int"),
                           ({"max_gen_toks": 1.7}, "must be int | None, got 1.7"),
                           ({"max_gen_toks": -5}, "--gen_kwargs max_gen_toks: key 'max_new_tokens' must be >= 1, got -5"),
                           ({"temperature": "abc"}, "--gen_kwargs temperature: key 'temperature' must be float"),
                           ({"temperature": 0}, "key 'temperature' must be >= 0.0001 and <= 100.0, got 0")):
        with pytest.raises(ConfigError, match=re.escape(f"{where}: {needle}") if needle.startswith("--") else re.escape(needle)):
            generation_settings(kwargs, {}, where)
    assert generation_settings({"max_gen_toks": 12, "temperature": 0.7}, {}, where) == {"max_new_tokens": 12, "temperature": 0.7}


def test_a_metadata_temperature_taken_over_gen_kwargs_says_so(caplog):
    """--metadata's temperature and length win (README); lm-eval's results record its generation_kwargs' ones, so the
    run says which it sampled with. The same value says nothing."""
    from harness.lmeval_bridge import generation_settings

    with caplog.at_level("WARNING", logger="harness.lmeval_bridge"):
        assert generation_settings({"temperature": 0.5}, {"temperature": 0.8}, "task odiag_toy", warn=True) == {}
        generation_settings({"temperature": 0.8, "max_gen_toks": 96}, {"temperature": 0.8, "max_new_tokens": 50},
                            "task odiag_toy", {"max_gen_toks": 96}, warn=True)
        generation_settings({"temperature": 0.5}, {"temperature": 0.8}, "task odiag_toy")  # odiag eval's early check
    assert [r.getMessage() for r in caplog.records] == [
        "task odiag_toy: odiag runs with --metadata's temperature 0.8; lm-eval's generation_kwargs, which its results "
        "record, say temperature 0.5",
        "task odiag_toy: odiag runs with --metadata's max_new_tokens 50; lm-eval's generation_kwargs, which its results "
        "record, say max_gen_toks 96"]


def test_data_parallel_is_refused_with_a_pointer_to_odiag_run():
    class FakeVLLM:
        world_size, data_parallel_size = 1, 2

    with pytest.raises(ConfigError, match="odiag run"):
        _check_supported(FakeVLLM())


def test_a_model_class_built_on_lm_evals_hf_model_is_refused_under_plain_lm_eval():
    """It inherits the diagnostic's method (lm-eval's steered or multimodal models), but not the model odiag samples."""
    from lm_eval.models.huggingface import HFLM

    class SteeredModel(HFLM):
        def __init__(self):  # not loaded: only its class is asked
            pass

    with pytest.raises(ConfigError, match=re.escape("SteeredModel: odiag's diagnostic runs under lm-eval's hf and vllm "
                                                    "models only")):
        _check_supported(SteeredModel())


GOOD_ENGINE = {"dtype": "torch.float32", "max_model_len": 512, "device": "cpu", "enable_chunked_prefill": False,
               "max_logprobs": 20, "vocab_size": 52}


@pytest.mark.parametrize("engine, student_args, needle", [
    ({"dtype": "torch.bfloat16"}, {}, r"engine runs toy in bfloat16 and odiag reads it in float32 \(the checkpoint's dtype\)"
                                      ": .* give --model_args dtype=float32"),
    ({"max_model_len": 100}, {}, r"max_model_len 100, below the longest prompt and its response \(164 positions\)"
                                 ": .* give --model_args max_model_len=164 or more"),
    ({"enable_chunked_prefill": True}, {}, "give --model_args enable_chunked_prefill=False"),
    # a quantized engine (weights or KV cache) the run's settings cannot record under lm-eval
    ({"quantization": "fp8"}, {}, r"samples toy quantized \(fp8\), .* drop quantization from --model_args, or run it "
                                  r"with odiag run --set 'student_args=\{quantization: fp8\}'"),
    ({"kv_cache_dtype": "fp8_e4m3"}, {}, r"KV cache in fp8_e4m3, .* drop kv_cache_dtype from --model_args"),
    ({}, {"score_with": "vllm"}, "lists at most 20 log-probabilities per position .* asks for 52 .* "
                                 "--model_args max_logprobs=52, or student_args score_logprobs: 20"),
    ({}, {"max_model_len": 512}, r"student_args \['max_model_len'\]: lm-eval builds the student's engine"),
    ({}, {"engine_options": {"enforce_eager": True}}, r"student_args \['engine_options'\]"),
    # lm-eval's default share of a GPU leaves the exact scorer's transformers copies no room
    ({"device": "cuda", "gpu_memory_utilization": 0.9}, {}, "reserves 0.9 of the GPU, and the exact scorer .* give "
                                                            "--model_args gpu_memory_utilization=0.5 or less"),
])
def test_lm_evals_vllm_engine_is_checked_against_what_odiag_run_would_build(engine, student_args, needle):
    """lm-eval builds the student's engine: a dtype other than the one scored, a length that cuts responses, a
    prefill the CPU build cannot seed, a log-prob cap below the scorer's depth, and engine options odiag
    would not apply are refused, not run with other numbers under the same config."""
    from harness.lmeval_bridge import check_engine

    cfg = RunConfig(task="odiag_toy", backend="vllm", student="toy", teachers=("toy-self-1c",), student_args=student_args)
    with pytest.raises(ConfigError, match=needle):
        check_engine(GOOD_ENGINE | engine, cfg, "float32", 164)
    check_engine(GOOD_ENGINE, RunConfig(task="odiag_toy", backend="vllm", student="toy", teachers=("toy-self-1c",)),
                 "float32", 164)
    check_engine(GOOD_ENGINE | {"device": "cuda", "gpu_memory_utilization": 0.5}, dataclasses.replace(cfg, student_args={}),
                 "float32", 164)
    # a checkpoint saved quantized runs quantized in both (vLLM names its method, perhaps a faster kernel's)
    check_engine(GOOD_ENGINE | {"quantization": "awq_marlin", "kv_cache_dtype": "auto"}, dataclasses.replace(cfg, student_args={}),
                 "float32", 164, "awq")
    check_engine(GOOD_ENGINE | {"quantization": "fp8"}, dataclasses.replace(cfg, student_args={}), "float32", 164, "unknown")
    # the approximate scorer at the engine's cap, asked for, is what odiag run would read
    check_engine(GOOD_ENGINE, dataclasses.replace(cfg, student_args={"score_with": "vllm", "score_logprobs": 20}),
                 "float32", 164)


def test_a_checkpoint_saved_quantized_is_told_from_one_in_plain_weights(tmp_path):
    """An engine's quantization is accepted where the checkpoint was saved so (transformers loads it so too)."""
    import json
    import shutil

    from harness.backends import ModelSpec
    from harness.backends.vllm import checkpoint_quantization
    from harness.toy import TOY_DIR

    assert checkpoint_quantization(ModelSpec(str(TOY_DIR / "student"), None, "auto")) is None
    saved = tmp_path / "awq"
    shutil.copytree(TOY_DIR / "student", saved)
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "awq", "bits": 4}}))
    assert checkpoint_quantization(ModelSpec(str(saved), None, "auto")) == "awq"
    assert checkpoint_quantization(ModelSpec(str(tmp_path / "absent"), None, "auto")) == "unknown"  # not held against it
    # a model with code of its own (transformers cannot read its config without running it) in plain weights:
    # its config is read as written, so an engine quantizing it is still refused
    custom = tmp_path / "custom"
    shutil.copytree(TOY_DIR / "student", custom)
    (custom / "config.json").write_text(json.dumps({**config, "model_type": "mine", "auto_map": {"AutoConfig": "x.Y"}}))
    assert checkpoint_quantization(ModelSpec(str(custom), None, "auto")) is None


def test_a_device_out_of_memory_under_lm_eval_is_one_line(monkeypatch, capsys):
    """Under plain lm_eval too: torch's OutOfMemoryError is one odiag: error line and exit 2, not lm-eval's traceback."""
    torch = pytest.importorskip("torch")
    import harness.lmeval_bridge as bridge

    def scoring(self, instances):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB.")

    monkeypatch.setattr(bridge, "_diagnose", scoring)
    with pytest.raises(SystemExit) as stop:
        bridge.odiag_diagnose(object(), [])
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("odiag: error: the device ran out of memory (CUDA out of memory); finished work is kept")


def test_a_stop_under_lm_eval_is_one_line_naming_where_work_is_kept(monkeypatch, capsys, tmp_path):
    """Ctrl-C while an odiag task runs under lm_eval: one line saying where finished work is kept (the run
    directory the task opened), exit 130, not lm-eval's traceback; before any directory is opened, no such claim."""
    import harness.lmeval_bridge as bridge

    def stopped_after_opening(self, instances):
        bridge._OPENED.append(tmp_path / "run")
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(bridge, "_OPENED", [])
    monkeypatch.setattr(bridge, "_diagnose", lambda self, instances: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(SystemExit) as stop:
        bridge.odiag_diagnose(object(), [])
    assert stop.value.code == 130 and capsys.readouterr().err.splitlines() == ["odiag: interrupted"]
    monkeypatch.setattr(bridge, "_diagnose", stopped_after_opening)
    with pytest.raises(SystemExit) as stop:
        bridge.odiag_diagnose(object(), [])
    assert stop.value.code == 130
    assert capsys.readouterr().err.splitlines() == [
        f"odiag: interrupted; finished work is kept in {tmp_path / 'run'}: run the same command again to resume"]


def _results(out: Path) -> dict:
    (path,) = sorted(out.rglob("results_*.json"))
    return json.loads(path.read_text())["results"]["odiag_toy"]


@needs_toy
@pytest.mark.slow
def test_lm_eval_and_odiag_eval_match_odiag_run(tmp_path):
    sets = [f"{k}={json.dumps(v)}" for k, v in SETTINGS.items()]
    subprocess.run(
        [BIN / "odiag", "run", "--set", "task=odiag_toy", "--set", "backend=hf", "--set", f"student={STUDENT}",
         "--set", "dtype=float32", "--set", "limit=2", *[x for s in sets for x in ("--set", s)], "--out", tmp_path / "run", "--quiet"],
        check=True, cwd=ROOT,
    )
    expected = json.loads((tmp_path / "run" / "results.json").read_text())
    common = ["--tasks", "odiag_toy", "--model", "hf", "--model_args", f"pretrained={STUDENT},dtype=float32",
              "--limit", "2", "--device", "cpu", "--log_samples"]
    for name, cmd in (
        ("lm_eval", [BIN / "lm_eval", "--include_path", TASKS_DIR]),
        ("odiag_eval", [BIN / "odiag", "eval"]),
    ):
        meta = {**SETTINGS, "out": str(tmp_path / f"{name}-run")}
        done = subprocess.run([*cmd, *common, "--metadata", json.dumps(meta), "--output_path", tmp_path / name],
                              cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        # the run's progress and closing lines, as under odiag run
        assert "odiag: diagnosing 2 of 64 questions of odiag_toy with 2 teachers" in done.stderr
        assert "targeted rollouts: done" in done.stderr and f"results: {meta['out']}/results.json" in done.stderr
        got = _results(tmp_path / name)
        (samples,) = sorted((tmp_path / name).rglob("samples_odiag_toy_*.jsonl"))
        for line in samples.read_text().splitlines():  # each response is the question's record, as JSON
            record = json.loads(json.loads(line)["resps"][0][0])
            assert record["run_dir"] == meta["out"] and "metrics" in record
        ran = json.loads((tmp_path / f"{name}-run" / "results.json").read_text())
        assert ran["config"] == expected["config"] and ran["config_hash"] == expected["config_hash"]
        assert ran["versions"]["backend"]["threads"] == expected["versions"]["backend"]["threads"] == 1  # the metadata's
        for row in expected["teachers"]:
            key = metric_name("alignment", row["teacher"], row["algorithm"]) + ",none"
            want = (row.get("alignment") or {}).get("mean")
            if want is None or (isinstance(want, float) and math.isnan(want)):
                assert key not in got or got[key] in (None, "N/A")
            else:
                assert got[key] == pytest.approx(want, abs=1e-9), (name, key)
                assert f"{metric_name('alignment', row['teacher'], row['algorithm'])}_stderr,none" in got


@needs_toy
@pytest.mark.slow
def test_plain_lm_eval_refuses_bad_metadata_in_one_line(tmp_path):
    """Under plain ``lm_eval`` (not ``odiag eval``, which checks first), metadata odiag cannot run, and a run
    directory that refuses the settings, end in one ``odiag: error:`` line and exit code 2, no traceback."""
    common = [BIN / "lm_eval", "--include_path", TASKS_DIR, "--tasks", "odiag_toy", "--model", "hf",
              "--model_args", f"pretrained={STUDENT},dtype=float32", "--limit", "1", "--device", "cpu"]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("someone's")
    for meta, needle in (({"out": "x"}, "odiag needs its teachers"),
                         ({**SETTINGS, "budgett": 3}, "unknown key 'budgett'"),
                         ({**SETTINGS, "out": "taken"},  # named as the user gave it: a metadata key, not --out
                          "task odiag_toy: --metadata key 'out' taken: a directory that is not an odiag run"),
                         # lm-eval loaded the student in float32: a dtype in --metadata alone was recorded, not used
                         ({**SETTINGS, "dtype": "bfloat16", "out": "bf16"},
                          "in float32 and odiag reads it in bfloat16 (the run's dtype): the run would record other "
                          "numbers than its settings give; give --model_args dtype=bfloat16"),
                         # lm-eval merges --metadata over --model_args: recorded, not loaded
                         ({**SETTINGS, "pretrained": "/x"}, f"key 'pretrained' is '/x', but lm-eval loaded '{STUDENT}'"),
                         ({**SETTINGS, "odiag": {"answer_type": "boolean"}}, "task odiag_toy: metadata.odiag differs "
                          "from odiag's own"),
                         # a cached request would carry an earlier command's settings
                         ({**SETTINGS, "out": "cached", "cache": True}, "--cache_requests: odiag's requests carry")):
        cache = ["--cache_requests", "true"] if meta.pop("cache", False) else []
        done = subprocess.run([*common, *cache, "--metadata", json.dumps(meta)], cwd=tmp_path, capture_output=True,
                              text=True, env={**os.environ, "LM_HARNESS_CACHE_PATH": str(tmp_path / "cache")})
        assert done.returncode == 2, done.stderr[-2000:]
        assert "Traceback" not in done.stderr, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("odiag: error: ") and needle in last, last
    assert not (tmp_path / "bf16").exists() and not (tmp_path / "cached").exists()


def test_the_task_refuses_lm_evals_seed_and_stop_strings_under_plain_lm_eval(capsys):
    """Under plain ``lm_eval`` (``odiag eval`` refuses them before a model loads) --seed reaches the task only as its
    few-shot seed, and --gen_kwargs until as its generation_kwargs: each ran, recorded by lm-eval and unused."""
    from types import SimpleNamespace

    from harness.lmeval_bridge import DiagnosticTask, run_config

    task = object.__new__(DiagnosticTask)  # as lm-eval's evaluator hands it over: only what these calls read
    task._config = SimpleNamespace(task="odiag_toy", metadata={"teachers": ["toy-self-1c"]})
    task._run_settings = RunConfig()
    task.set_fewshot_seed(7)  # lm-eval's --seed 7 sets all four of its seeds
    with pytest.raises(ConfigError, match=re.escape("task odiag_toy: lm-eval's --seed 7: odiag's draws are seeded by "
                                                    "its own run seed")):
        run_config(task, None, 1)
    task._config.metadata["seed"] = 7  # the run's seed given: lm-eval's is its own business
    with pytest.raises(ConfigError, match="needs --model_args pretrained"):  # past the seed, to the (absent) model
        run_config(task, None, 1)
    # a YAML that names no stop string: lm-eval fills in its own ("\n\n"), which no user gave
    from harness.lmeval_bridge import task_yaml

    task._config.metadata["odiag"] = task_yaml("odiag_toy")["metadata"]["odiag"]
    task._config.generation_kwargs = {"until": ["\n\n"], "do_sample": True}
    cfg, _ = run_config(task, SimpleNamespace(pretrained=str(STUDENT)), 1)
    assert cfg.task == "odiag_toy" and cfg.seed == 7
    with pytest.raises(SystemExit) as stopped:
        task.set_config("generation_kwargs", {"until": 5}, update=True)
    assert stopped.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [
        "odiag: error: task odiag_toy: --gen_kwargs until=5: odiag ends a response at the student's own end-of-turn "
        "tokens and judges it whole (a stop string would cut it short); leave until to the task's YAML"]


@needs_toy
@pytest.mark.slow
def test_plain_lm_eval_refuses_a_model_odiag_cannot_run_or_would_cut(tmp_path):
    """A hf max_length below a response was recorded by lm-eval and not applied; a model class with no diagnostic
    method of its own failed with a traceback. One line each, exit code 2, no run directory."""
    for args, needle in (
        (["--model", "hf", "--model_args", f"pretrained={STUDENT},dtype=float32,max_length=40"],
         "--model_args max_length=40: below the longest prompt and its response (164 positions)"),
        (["--model", "dummy"], "DummyLM: odiag's diagnostic runs under lm-eval's hf and vllm models only"),
    ):
        done = subprocess.run([BIN / "lm_eval", "--include_path", TASKS_DIR, "--tasks", "odiag_toy", *args, "--limit", "1",
                               "--device", "cpu", "--metadata", json.dumps({**SETTINGS, "out": str(tmp_path / "run")})],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("odiag: error: ") and needle in last, last
        assert not (tmp_path / "run").exists()


@needs_toy
@pytest.mark.slow
def test_a_task_of_another_include_path_is_refused_not_recorded_as_odiags(tmp_path):
    """A YAML under odiag's task name that asks other questions was run and recorded as odiag's task (same config hash,
    other questions); one under a name of its own failed as an unknown task after the model loaded."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "odiag_utils.py").write_text((TASKS_DIR / "odiag_utils.py").read_text())
    toy = (TASKS_DIR / "odiag_toy.yaml").read_text()
    assert "toy_digits: 7" in toy
    (mine / "odiag_toy.yaml").write_text(toy.replace("toy_digits: 7", "toy_digits: 3"))
    (mine / "odiag_mine.yaml").write_text(toy.replace("task: odiag_toy", "task: odiag_mine"))
    other = tmp_path / "other"  # the same questions, its own metadata.odiag: recorded by lm-eval, not read by odiag
    other.mkdir()
    (other / "odiag_utils.py").write_text((TASKS_DIR / "odiag_utils.py").read_text())
    assert "n_min: 20" in toy
    (other / "odiag_toy.yaml").write_text(toy.replace("n_min: 20", "n_min: 10"))
    for where, task, needle in (
        (mine, "odiag_toy", f"task odiag_toy: the YAML lm-eval read gives document 0 another question than odiag's "
                            f"{TASKS_DIR / 'odiag_toy.yaml'}"),
        (mine, "odiag_mine", f"task odiag_mine: not one of odiag's task YAMLs ({TASKS_DIR})"),
        (other, "odiag_toy", f"task odiag_toy: metadata.odiag differs from odiag's own {TASKS_DIR / 'odiag_toy.yaml'} "
                             "(given in --metadata, or by the YAML lm-eval read)"),
    ):
        done = subprocess.run([BIN / "odiag", "eval", "--include_path", where, "--tasks", task, "--model", "hf",
                               "--model_args", f"pretrained={STUDENT},dtype=float32", "--limit", "1", "--device", "cpu",
                               "--metadata", json.dumps({**SETTINGS, "out": str(tmp_path / task)})],
                              cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert done.stderr.strip().splitlines()[-1].startswith(f"odiag: error: {needle}"), done.stderr[-1000:]
        assert not (tmp_path / task).exists()


def test_default_run_directories_tell_documents_chosen_by_samples_from_the_first_ones():
    """--limit 1 and --samples '{"t": [5]}' have one config hash (one question each): the default run directory of
    the second was the first's, refused as holding another question."""
    from harness.lmeval_bridge import _documents

    assert _documents([0]) == _documents([0, 1, 2]) == ""
    assert _documents([5]).startswith("-docs") and len(_documents([5])) == 13
    assert len({_documents([5]), _documents([4]), _documents([4, 5]), _documents([1, 0])}) == 4


@needs_toy
@pytest.mark.slow
def test_samples_diagnose_the_documents_chosen(tmp_path):
    """lm-eval's --samples numbers the chosen documents 0..k-1 in its requests: the run must diagnose the
    chosen document, under its own id, not the split's first."""
    import pyarrow.parquet as pq

    meta = {"teachers": ["toy-self-1c"], "algorithms": ["gkd"], "n_initial": 8, "budget": 50, "out": str(tmp_path / "run")}
    done = subprocess.run([BIN / "odiag", "eval", "--tasks", "odiag_toy", "--model", "hf", "--model_args",
                           f"pretrained={STUDENT},dtype=float32", "--device", "cpu", "--samples", '{"odiag_toy": [3]}',
                           "--metadata", json.dumps(meta), "--log_samples", "--output_path", tmp_path / "out"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (samples,) = sorted((tmp_path / "out").rglob("samples_odiag_toy_*.jsonl"))
    (line,) = samples.read_text().splitlines()
    logged = json.loads(line)
    record = json.loads(logged["resps"][0][0])
    assert record["question_id"] == "00003"
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [q["id"] for q in results["questions"]] == ["00003"]
    from harness.tasks import load_task

    task = load_task("odiag_toy", tokenizer=str(STUDENT))
    (q,) = [q for q in task.questions(None) if q.id == "00003"]
    assert logged["doc"] == q.doc["record"]  # the document lm-eval logged is the one diagnosed
    assert set(pq.read_table(tmp_path / "run" / "paths.parquet").column("question_id").to_pylist()) <= {"00003"}
    # odiag's own commands read the task's first questions: refused before the finished run changes
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    for argv in (["add-teacher", tmp_path / "run", "toy-teacher"], ["rescore", tmp_path / "run", "--set", "gamma=0.5"],
                 ["run", "--config", tmp_path / "run" / "config.yaml", "--out", tmp_path / "run"]):
        refused = subprocess.run([BIN / "odiag", *argv], cwd=tmp_path, capture_output=True, text=True)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr[-2000:]
        assert "holds rollouts of question 00003, which these settings do not read" in refused.stderr, refused.stderr
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before
    # the same directory with another tree: the refusal's fix names the key the user gave it as, not --out
    meta["n_initial"] = 16
    again = subprocess.run([BIN / "lm_eval", "--include_path", TASKS_DIR, "--tasks", "odiag_toy", "--model", "hf",
                            "--model_args", f"pretrained={STUDENT},dtype=float32", "--device", "cpu", "--samples",
                            '{"odiag_toy": [3]}', "--metadata", json.dumps(meta)], cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 2, again.stderr[-2000:]
    last = again.stderr.strip().splitlines()[-1]
    assert "a different rollout tree (n_initial: 8 there, 16 now)" in last, last
    assert "use another --metadata key 'out', or the same settings to resume" in last and "--out" not in last, last
