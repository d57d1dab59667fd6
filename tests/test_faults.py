"""Fault injection: bad values, bad files and abusive templates, thrown at ``odiag`` as a careless or
hostile user would.

Every case asserts the one error path (harness/cli.py): exactly one stderr line, starting
``odiag: error:``, exit code 2, naming what was wrong, and nothing changed on disk (the test's
directory is snapshotted before and after; ``odiag run`` must not even create its ``--out``).
Almost every case calls ``harness.cli.main`` in this process; a few run the real entry point.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from harness import cli
from harness.config import ConfigError, RunConfig, field_docs, field_rules, resolve_run_config, to_dict
from harness.leaderboard.merge import COLUMNS, RESULTS_SCHEMA
from harness.safeio import EXCERPT_CHARS, MAX_YAML_BYTES, excerpt, render_template

REPO = Path(__file__).resolve().parent.parent


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size, mode and modification time."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (p.is_dir(), st.st_size, st.st_mode, st.st_mtime_ns)
    return out


@pytest.fixture
def odiag(tmp_path, capsys, monkeypatch):
    """``odiag(*argv)`` runs the CLI in this process from ``tmp_path``; returns (exit code, stderr lines, unchanged)."""
    monkeypatch.chdir(tmp_path)

    def invoke(*argv: str) -> tuple[int, list[str], bool]:
        capsys.readouterr()
        before = snapshot(tmp_path)
        code = cli.main([str(a) for a in argv])
        err = capsys.readouterr().err
        return code, err.splitlines(), snapshot(tmp_path) == before

    return invoke


def assert_one_line(result: tuple[int, list[str], bool], *needles: str) -> str:
    code, lines, unchanged = result
    assert code == 2, (code, lines)
    assert len(lines) == 1, lines
    assert lines[0].startswith("odiag: error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert unchanged, "the failed command changed the directory"
    return lines[0]


# RunConfig: every range, enum and type rule, each bad value through --set ----------------------------

BAD_VALUES = [
    ("window", "0"), ("window", "-3"), ("k_window", "0"), ("n_initial", "1"), ("n_initial", "0"),
    ("paths_per_outcome", "0"), ("n_target", "-5"), ("n_target", "0"), ("n_min", "0"), ("n_min", "-1"),
    ("tau", "0"), ("tau", "1"), ("tau", "2"), ("tau", "-0.1"), ("gamma", "5"), ("gamma", "-0.1"),
    ("jsd_beta", "1.5"), ("jsd_beta", "-1"), ("confidence", "0"), ("confidence", "1"), ("tolerance", "0"),
    ("tolerance", "-1"), ("n_max", "0"), ("price", "-0.001"), ("seed", "-1"), ("seed", str(2**63)),
    ("limit", "0"), ("limit", "-1"), ("temperature", "0"), ("temperature", "-1"), ("temperature", ".nan"),
    ("temperature", ".inf"), ("max_new_tokens", "0"), ("budget", "0"), ("budget", "-1"), ("score_top_k", "0"),
    ("num_workers", "0"), ("threads", "0"), ("teachers", "[]"), ("teachers", "[a, a]"),
    ("backend", "foo"), ("dtype", "float8"), ("cascade", "biased"), ("strategy", "greedy"), ("executor", "slurm"),
    ("algorithms", "[bogus]"), ("algorithms", "[]"), ("algorithms", "[gkd, gkd]"), ("algorithms", "[gkd, bogus]"),
    ("task", "''"), ("student", "''"), ("student_revision", "''"),
    # past 64-bit arithmetic, or memory for the initial rollouts: refused, not an overflow after the directory exists
    ("budget", "1e19"), ("n_target", "1e19"), ("survey_visits", "1e19"), ("n_initial", "1e9"), ("n_max", str(2**64)),
    # visits of one child, held in memory at once
    ("n_target", "1000001"), ("n_min", "1e9"), ("survey_visits", "1e7"), ("n_max", "2000000"),
    # what YAML reads as words, not as its .nan and .inf
    ("temperature", "nan"), ("temperature", "-inf"), ("jsd_beta", "NaN"),
]
BAD_TYPES = [
    ("window", "1.5"), ("window", "true"), ("window", "abc"), ("tau", "fast"), ("tau", "[0.1]"),
    ("teachers", "{a: 1}"), ("teachers", "[1, 2]"), ("algorithms", "5"), ("limit", "[1]"), ("seed", "'3'"),
    ("n_min", "1.5"), ("student", "[a]"), ("backend", "1"), ("gamma", "2024-01-01"),
]


@pytest.mark.parametrize("value", ["nan", "-inf", ".nan", "Infinity"])
def test_a_number_that_is_not_finite_is_refused_as_such(odiag, tmp_path, value):
    """YAML reads "nan" and "inf" as words and ".nan" as a float: either way the line says a finite number is
    wanted (a NaN is a float, so "must be float" misled)."""
    assert_one_line(odiag("run", "--set", f"temperature={value}", "--out", tmp_path / "out"),
                    "key 'temperature' must be a finite number")

@pytest.mark.parametrize(("key", "value"), BAD_VALUES + BAD_TYPES, ids=[f"{k}={v}" for k, v in BAD_VALUES + BAD_TYPES])
def test_bad_set_value_is_refused_before_the_run_directory_exists(odiag, tmp_path, key, value):
    line = assert_one_line(odiag("run", "--set", f"{key}={value}", "--out", tmp_path / "out"), "--set", f"'{key}'", "must be")
    assert not (tmp_path / "out").exists()
    assert len(line) < 400


def test_every_field_has_a_doc_and_every_bounded_field_a_rule():
    """field_docs is what ``odiag run --help`` shows: a one-line doc per field, its type and default."""
    docs, rules = field_docs(RunConfig), field_rules(RunConfig)
    assert list(docs) == [f.name for f in dataclasses.fields(RunConfig)]
    for name, (type_, default, doc) in docs.items():
        assert doc and "\n" not in doc, name
        assert type_ and default == getattr(RunConfig(), name)
    assert rules["window"] == ">= 1; <= 1,000,000,000" and rules["limit"] == "None or >= 1; <= 1,000,000,000" and "vllm" in rules["backend"]
    assert rules["n_initial"] == ">= 2; <= 1,000,000"
    # one child's rollouts of a round are one request, held in memory at once (n_target 1e9 once failed
    # allocating 60 GiB inside the run, leaving a directory its corrected command was refused by)
    for visits in ("n_target", "n_max"):
        assert rules[visits] == ">= 1; <= 1,000,000", visits
    for visits in ("n_min", "survey_visits"):
        assert rules[visits] == "None or >= 1; <= 1,000,000", visits
    bounded = {k for k, _ in BAD_VALUES}
    assert all(rules[k] for k in bounded)


def test_a_student_named_by_a_relative_directory_is_recorded_absolute(tmp_path, monkeypatch):
    """``student=stud`` in two working directories is two models: recorded as the absolute path, so a run
    resumed from elsewhere and a leaderboard merging runs never take one for the other. Paths inside the
    checkout stay relative to it, and names that are no directory here (hub ids) are left alone."""
    from harness.config import REPOSITORY

    (tmp_path / "stud").mkdir()
    (tmp_path / "synthetic").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_run_config(None, ["backend=hf", "student=stud"]).student == str(tmp_path / "stud")
    assert resolve_run_config(None, ["backend=hf", "student=./stud/"]).student == str(tmp_path / "stud")
    assert resolve_run_config(None, ["backend=hf", "student=Qwen/Qwen3-8B"]).student == "Qwen/Qwen3-8B"
    assert resolve_run_config(None, []).student == "synthetic"  # the synthetic backend's model, not the folder
    # odiag's own configs name its toy models inside the checkout (harness/demo.yaml), from any directory
    assert resolve_run_config(REPOSITORY / "harness" / "demo.yaml", []).student == str(REPOSITORY / "harness" / "toy_models" / "student")
    monkeypatch.chdir(REPOSITORY)
    toy = "harness/toy_models/student"
    assert resolve_run_config(None, ["backend=hf", f"student={toy}"]).student == toy
    # from a folder inside the checkout the checkout-relative spelling would not open: the absolute path
    monkeypatch.chdir(REPOSITORY / "harness")
    assert resolve_run_config(None, ["backend=hf", "student=toy_models/student"]).student == str(REPOSITORY / toy)


def test_a_run_recorded_before_its_task_was_or_from_elsewhere_keeps_its_results_and_validation(tmp_path):
    """A record that says the same in other words (made before runs recorded their task; a model inside the
    checkout spelled from another directory) was taken for new settings: the first command on a finished run
    removed its results and its odiag validate panel."""
    from harness.config import REPOSITORY
    from harness.rundir import same_settings

    out = tmp_path / "run"
    assert cli.main(["run", "--set", "limit=1", "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({k: v for k, v in record.items() if k != "task"}))
    (out / "validation.json").write_text("{}")
    for argv in (["run", "--config", str(out / "config.yaml"), "--out", str(out)], ["rescore", str(out)]):
        assert cli.main([*argv, "--quiet"]) == 0
        assert (out / "validation.json").exists() and (out / "results.json").exists()
    assert json.loads((out / "config.json").read_text()) == record  # recorded now, as a new run records it
    toy = "harness/toy_models/student"
    assert same_settings({"config": {"student": str(REPOSITORY / toy)}}, {"config": {"student": toy}})
    assert not same_settings({"config": {"student": "/elsewhere/student"}}, {"config": {"student": toy}})


def test_a_run_resumed_with_its_teachers_spelled_otherwise_keeps_its_hash_results_and_validation(tmp_path, monkeypatch):
    """The config hash counts teachers as spelled: a finished run resumed with ``teachers/x.yaml`` (or an absolute
    path) for ``x`` was recorded under another hash, its results redone and its odiag validate panel dropped.
    The same files keep the run's own spelling; another file under the same name is still new settings."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    assert cli.main(["run", "--set", "limit=1", "--set", "teachers=[synthetic-helpful, synthetic-misleading]",
                     "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "config.json").read_text())
    results = json.loads((out / "results.json").read_text())
    (out / "validation.json").write_text("{}")
    for spelled in ("teachers/synthetic-helpful.yaml", str(REPO / "teachers" / "synthetic-helpful.yaml")):
        assert cli.main(["run", "--set", "limit=1", "--set", f"teachers=[{spelled}, synthetic-misleading]",
                         "--out", str(out), "--quiet"]) == 0
        assert json.loads((out / "config.json").read_text()) == record
        assert json.loads((out / "results.json").read_text())["config_hash"] == results["config_hash"]
        assert (out / "validation.json").exists()
    copy = tmp_path / "synthetic-helpful.yaml"  # the same content elsewhere: another file, recorded as such
    copy.write_bytes((REPO / "teachers" / "synthetic-helpful.yaml").read_bytes())
    assert cli.main(["run", "--set", "limit=1", "--set", f"teachers=[{copy}, synthetic-misleading]", "--out", str(out),
                     "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["config"]["teachers"][0] == str(copy)


def test_a_run_with_a_teacher_named_by_a_path_inside_the_checkout_resumes_from_anywhere(tmp_path, monkeypatch):
    """A teacher given as an absolute path inside the checkout, the run made elsewhere: rescore and a resume
    of its config.yaml open it again from any working directory."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    teachers = f"teachers=[{REPO / 'teachers' / 'synthetic-helpful.yaml'}, synthetic-misleading]"
    assert cli.main(["run", "--set", "limit=1", "--set", teachers, "--out", str(out), "--quiet"]) == 0
    assert cli.main(["rescore", str(out), "--set", "gamma=0.9", "--quiet"]) == 0
    assert cli.main(["run", "--config", str(out / "config.yaml"), "--out", str(out), "--quiet"]) == 0


@pytest.mark.slow
def test_a_run_refuses_a_task_or_answer_checker_changed_under_it(odiag, tmp_path, monkeypatch):
    """The stored rollouts were judged by the task's answer checker against each question's reference answer,
    cut at its length limit, and the tree planned with its n_min. Any of these changed between two commands
    on one run (the task file edited, a data file's answer corrected, another version of odiag's answer
    extraction) would judge or plan new responses apart from the stored ones: refused in one line naming
    what changed, by run, rescore and add-teacher alike, with nothing changed; put back, the run goes on."""
    import shutil

    from harness.tasks import lmeval, scoring

    tasks = tmp_path / "tasks"
    shutil.copytree(REPO / "tasks", tasks)
    monkeypatch.setattr(lmeval, "TASKS_DIR", tasks)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # the copy's odiag_utils.py leaves no __pycache__ in the run's dir
    fixture = (Path(__file__).parent / "fixtures" / "boolq_validation.jsonl").read_text().splitlines()
    (tmp_path / "d.jsonl").write_text("\n".join(fixture[:2]) + "\n")
    student = REPO / "harness" / "toy_models" / "student"
    sets = [x for s in ("task=odiag_boolq", "backend=hf", f"student={student}", "teachers=[toy-self-1c]",
                        "data_files=d.jsonl", "n_initial=2", "max_new_tokens=4", "budget=1", "threads=1")
            for x in ("--set", s)]
    assert odiag("run", "--out", "r", *sets, "--set", "limit=1", "--quiet")[0] == 0

    def refused(argv, *needles):  # the run's files as they were (the refusal comes with the run's lock held)
        before = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
        code, lines, _ = odiag(*argv)
        assert_one_line((code, lines, True), *needles)
        assert {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()} == before

    commands = (("run", "--out", "r", *sets, "--set", "limit=2", "--quiet"), ("rescore", "r", "--quiet"),
                ("add-teacher", "r", "toy-self-1c1w", "--quiet"))
    yaml_text = (tasks / "odiag_boolq.yaml").read_text()
    edits = {"n_min: 20": ("n_min: 10", "n_min (metadata.odiag.n_min): 20 there, 10 now"),
             "until: [": ('until: ["<|im_start|>", ', "stop ids"),
             "answer_type: boolean": ("answer_type: choice", "metadata.odiag.answer_type: 'boolean' there, 'choice' now")}
    for old, (new, needle) in edits.items():
        assert old in yaml_text
        (tasks / "odiag_boolq.yaml").write_text(yaml_text.replace(old, new))
        for argv in commands:
            refused(argv, "r: the task changed since the run was made (", needle,
                            "restore tasks/odiag_boolq.yaml, or use another --out")
    (tasks / "odiag_boolq.yaml").write_text(yaml_text)
    monkeypatch.setattr(scoring, "VERSION", scoring.VERSION + 1)
    for argv in (commands[0], commands[2]):
        refused(argv, f"version of odiag's answer extraction (harness/tasks/scoring.py): {scoring.VERSION - 1} "
                      f"there, {scoring.VERSION} now", f"use an odiag whose answer extraction is version "
                      f"{scoring.VERSION - 1}, or use another --out")
    # a rescore of the finished run judges no response: taken, and the run still records the checker that judged it
    assert odiag("rescore", "r", "--set", "gamma=0.9", "--quiet")[0] == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["task"]["answer_checker"] == scoring.VERSION - 1
    assert json.loads((tmp_path / "r" / "results.json").read_text())["task_settings"]["answer_checker"] == scoring.VERSION - 1
    (tmp_path / "r" / "results.json").unlink()  # as a rescore stopped part-way leaves it: the same command finishes it
    assert odiag("rescore", "r", "--set", "gamma=0.9", "--quiet")[0] == 0 and (tmp_path / "r" / "results.json").exists()
    refused(commands[0], f"{scoring.VERSION - 1} there, {scoring.VERSION} now",
            f"use an odiag whose answer extraction is version {scoring.VERSION - 1}")
    monkeypatch.setattr(scoring, "VERSION", scoring.VERSION - 1)
    assert odiag("rescore", "r", "--set", "gamma=0.95", "--quiet")[0] == 0  # the default again
    record = json.loads(fixture[0])
    (tmp_path / "d.jsonl").write_text("\n".join([json.dumps({**record, "answer": not record["answer"]}), fixture[1]]) + "\n")
    for argv in commands:
        refused(argv, "question 00000 has another reference answer now ('True') than the one its stored "
                        "rollouts were judged against ('False')")
    (tmp_path / "d.jsonl").write_text("\n".join(fixture[:2]) + "\n")
    assert odiag(*commands[0])[0] == 0


@pytest.mark.slow
def test_a_rescore_under_a_new_answer_checker_judges_no_solution_anew(odiag, tmp_path, monkeypatch):
    """A rescore under another answer extraction goes on with the run's record: it judges none of the tree's
    responses. A named model's solution it would have to sample and judge anew (its cache gone, as after an
    add-teacher stopped before it) is refused where it would be made, not judged by another checker."""
    from harness.tasks import scoring

    student = REPO / "harness" / "toy_models" / "student"
    sets = [x for s in ("task=odiag_toy", "backend=hf", f"student={student}", "dtype=float32", "teachers=[toy-self-1c-teacher]",
                        "limit=1", "n_initial=8", "budget=20", "threads=1") for x in ("--set", s)]
    assert odiag("run", "--out", "r", *sets, "--quiet")[0] == 0
    monkeypatch.setattr(scoring, "VERSION", scoring.VERSION + 1)
    assert odiag("rescore", "r", "--set", "gamma=0.9", "--quiet")[0] == 0  # every solution cached: nothing judged
    for cached in (tmp_path / "r" / "artefacts" / "solutions").rglob("*.json"):
        cached.unlink()
    code, lines, _ = odiag("rescore", "r", "--set", "gamma=0.8", "--quiet")
    assert_one_line((code, lines, True), "teacher 'toy-self-1c-teacher' needs solutions of", "judged by answer extraction "
                    f"version {scoring.VERSION - 1}, not this odiag's; use an odiag whose answer extraction is version "
                    f"{scoring.VERSION - 1}")
    assert not list((tmp_path / "r" / "artefacts" / "solutions").rglob("*.json"))


@pytest.mark.slow
def test_a_corrupt_cached_solution_or_summary_is_one_line_and_repair_makes_it_again(odiag, tmp_path):
    """A cached solution or summary file that cannot be read was a JSONDecodeError traceback, and --repair
    could not mend it. Now it is named with the command that mends it, and --repair makes it again from the
    same seeds: the results are those of the run before."""
    teacher = tmp_path / "msum.yaml"
    teacher.write_text(json.dumps({
        "description": "model summaries of the toy teacher's correct solution", "model": "student",
        "solution_source": str(REPO / "harness" / "toy_models" / "teacher"), "correct_solutions": 1,
        "summarizer": str(REPO / "harness" / "toy_models" / "teacher"), "summary_prompt": "{{ question }} {{ solution }}",
        "summary_chat_template_options": {}, "summary_max_new_tokens": 32,
        "context_template": "{{ question }}\nright: {{ correct_summaries[0] }}"}))
    student = REPO / "harness" / "toy_models" / "student"
    sets = [x for s in ("task=odiag_toy", "backend=hf", f"student={student}", "dtype=float32", f"teachers=[{teacher}]",
                        "limit=1", "n_initial=8", "budget=20", "threads=1") for x in ("--set", s)]
    assert odiag("run", "--out", "r", *sets, "--quiet")[0] == 0
    before = json.loads((tmp_path / "r" / "results.json").read_text())["teachers"]
    for kind in ("solutions", "summaries"):
        (cached,) = (tmp_path / "r" / "artefacts" / kind).rglob("*.json")
        cached.write_text("garbage{")
        code, lines, _ = odiag("run", "--out", "r", *sets, "--quiet")
        assert_one_line((code, lines, True), f"{cached.relative_to(tmp_path)}: corrupt cached {kind} (",
                        "remove it and give the command again (they are made again from the same seeds), or drop and "
                        "make them again with odiag run --config r/config.yaml --out r --repair")
        assert odiag("run", "--out", "r", *sets, "--repair", "--quiet")[0] == 0
        assert json.loads(cached.read_text())[kind]
        cached.unlink()  # as the line says: removed, it is made again (add-teacher, which has no --repair, too)
        assert odiag("run", "--out", "r", *sets, "--quiet")[0] == 0
        assert json.loads((tmp_path / "r" / "results.json").read_text())["teachers"] == before


@pytest.mark.slow
def test_a_run_refuses_questions_whose_data_changed_under_it(odiag, tmp_path):
    """A data file edited between two commands on one run: the stored rollouts answered other prompts, so
    the grown run is refused in one line, not mixed. The file is recorded by its absolute path, so the
    run resumes from any directory."""
    fixture = (Path(__file__).parent / "fixtures" / "boolq_validation.jsonl").read_text().splitlines()
    (tmp_path / "d.jsonl").write_text("\n".join(fixture[:2]) + "\n")
    student = Path(__file__).resolve().parents[1] / "harness" / "toy_models" / "student"
    sets = [x for s in ("task=odiag_boolq", "backend=hf", f"student={student}", "teachers=[toy-self-1c]",
                        "data_files=d.jsonl", "n_initial=2", "max_new_tokens=4", "budget=1", "threads=1")
            for x in ("--set", s)]
    assert odiag("run", "--out", "r", *sets, "--set", "limit=1", "--quiet")[0] == 0
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["data_files"] == str(tmp_path / "d.jsonl")
    (tmp_path / "d.jsonl").write_text("\n".join(fixture[5:7]) + "\n")
    for argv in (("run", "--out", "r", *sets, "--set", "limit=2", "--quiet"), ("rescore", "r", "--quiet"),
                 ("add-teacher", "r", "toy-self-1c1w", "--quiet")):
        assert_one_line(odiag(*argv), "question 00000 reads another prompt now than the one its stored rollouts answered")
    # data files that are no data of the task: one line naming the file, before anything is written
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "columns.jsonl").write_text('{"a": 1, "b": 2}\n')
    for name, needle in (("empty.jsonl", "(no records)"), ("columns.jsonl", "not in the dataset")):
        assert_one_line(odiag("run", "--out", "e", *sets, "--set", f"data_files={name}", "--quiet"),
                        f"task 'odiag_boolq': cannot load its data from data_files '{tmp_path / name}'", needle)
    mmlu = tmp_path / "mmlu.jsonl"
    mmlu.write_text((Path(__file__).parent / "fixtures" / "mmlu_test.jsonl").read_text().splitlines()[0] + "\n")
    assert_one_line(odiag("run", "--out", "e", *[x if not x.startswith("task=") else "task=odiag_aime25" for x in sets],
                          "--set", f"data_files={mmlu}", "--quiet"),
                    "task 'odiag_aime25': cannot load its data from data_files", "'problem' is undefined")
    assert not (tmp_path / "e").exists()


def test_direct_construction_and_replace_are_validated():
    with pytest.raises(ConfigError, match="'window' must be >= 1, got 0"):
        RunConfig(window=0)
    with pytest.raises(ConfigError, match="'tau'"):
        dataclasses.replace(RunConfig(), tau=2.0)
    cfg = RunConfig(teachers=["synthetic-helpful"], gamma=1)  # lists become tuples, ints floats
    assert cfg.teachers == ("synthetic-helpful",) and isinstance(cfg.gamma, float)
    assert cfg.hash() == RunConfig(teachers=("synthetic-helpful",), gamma=1.0).hash()


def test_jsd_beta_at_an_end_is_refused_only_with_jsd(odiag, tmp_path):
    """JSD(β) vanishes at β = 0 and 1: with jsd a run would have failed after its rollouts; without it β is unused."""
    for beta in ("0", "1"):
        assert_one_line(odiag("run", "--set", "algorithms=[gkd,jsd]", "--set", f"jsd_beta={beta}", "--out", tmp_path / "out"),
                        "key 'jsd_beta' must be > 0 and < 1 with algorithm jsd", "forward_kl and gkd")
        assert not (tmp_path / "out").exists()
        assert RunConfig(algorithms=("gkd",), jsd_beta=float(beta)).jsd_beta == float(beta)


def test_config_file_values_name_the_file(odiag, tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text("window: 0\n")
    assert_one_line(odiag("run", "--config", bad, "--out", tmp_path / "out"), str(bad), "'window'", ">= 1")
    # a --set fixes the file's value; a later --set names --set as the source of the bad one
    assert resolve_run_config(bad, ["window=3"]).window == 3
    with pytest.raises(ConfigError, match=r"^--set: key 'tau'"):
        resolve_run_config(bad, ["window=3", "tau=7"])


def test_numbers_in_exponent_notation_are_numbers_in_files_and_in_set(tmp_path):
    """YAML 1.2 floats: PyYAML alone reads 1e-3 (no dot) and 2.5e3 (no exponent sign) as strings."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text("price: 1e-4\ntolerance: 2.5e-1\n")
    got = resolve_run_config(cfg, ["confidence=9e-1", "gamma=1E0", "budget=2e5"])
    assert (got.price, got.tolerance, got.confidence, got.gamma) == (1e-4, 0.25, 0.9, 1.0)
    assert got.budget == 200_000 and isinstance(got.budget, int)  # a whole float is an int
    with pytest.raises(ConfigError, match="key 'n_target' must be int"):
        resolve_run_config(cfg, ["n_target=2.55e1"])


# --set syntax ---------------------------------------------------------------------------------------

BAD_SETS = [
    ("window", "expected KEY=VALUE"),
    ("=3", "expected KEY=VALUE"),
    ("teachers=[a,", "not valid YAML"),
    ("window={", "not valid YAML"),
    ("window=*a", "not valid YAML"),
    ("window: 3=4", "unknown key"),
    ("n_targt=3", "did you mean 'n_target'"),
    ("teachers=!!python/object/apply:os.system [ls]", "not valid YAML"),
    ("seed=1" + "0" * 5000, "bad YAML value"),
    ("teachers=" + "a" * 70000, "longer than"),
    ("teachers=[" + "[" * 20000 + "]" * 20000 + "]", "nested deeper"),
    ("student_args={a: 1, a: 2}", "key 'a' appears twice; keep one"),
]


@pytest.mark.parametrize(("item", "needle"), BAD_SETS, ids=[s[:30] for s, _ in BAD_SETS])
def test_bad_set_syntax(odiag, tmp_path, item, needle):
    line = assert_one_line(odiag("run", "--set", item, "--out", tmp_path / "out"), "--set", needle)
    assert not (tmp_path / "out").exists()
    assert len(line) < 600  # the value is excerpted, never printed whole


# config YAML files ----------------------------------------------------------------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
) + "window: *i\n"


# kind -> (file contents, text the one-line error must contain)
CONFIG_TEXTS = {
    "list": ("- window: 3\n- tau: 0.1\n", "expected a mapping"),
    "scalar": ("just text\n", "expected a mapping"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "binary"),
    "latin-1": ("window: 3 # caf\xe9\n".encode("latin-1"), "not UTF-8"),
    "too large": ("# padding\n" * (MAX_YAML_BYTES // 10 + 1), "too large"),
    "bomb": (BOMB, "aliases expand"),
    "recursive alias": ("teachers: &a [*a]\n", "alias"),
    "deep nesting": ("teachers: " + "[" * 300000 + "]" * 300000 + "\n", "nested deeper"),
    "syntax": ("window: [3\ntau: 0.1\n", "not valid YAML"),
    "tab": ("window:\n\t3\n", "not valid YAML"),
    "two documents": ("window: 3\n---\ntau: 0.1\n", "not valid YAML"),
    "integer key": ("1: 2\n", "is not a name"),
    "unknown key": ("windw: 3\n", "did you mean 'window'"),
    "python tag": ("window: !!python/name:os.system\n", "not valid YAML"),
    "duplicate key": ("limit: 2\nseed: 1\nlimit: 3\n", "key 'limit' appears twice (lines 1 and 3); keep one"),
    "duplicate key on one line": ("limit: 2\nstudent_args: {batch_size: 2, batch_size: 4}\n",
                                  "key 'batch_size' appears twice (line 2); keep one"),
    "one line, no newline": ("student_args: {batch_size: 2, batch_size: 4}", "key 'batch_size' appears twice (line 1)"),
}


def _config_case(tmp_path: Path, kind: str) -> tuple[Path, str]:
    p = tmp_path / "run.yaml"
    if kind in CONFIG_TEXTS:
        text, expected = CONFIG_TEXTS[kind]
        p.write_bytes(text) if isinstance(text, bytes) else p.write_text(text)
        return p, expected
    if kind == "directory":
        p.mkdir()
        return p, "is a directory"
    if kind == "missing":
        return p, "no such file"
    if kind == "device":
        return Path("/dev/zero"), "not a regular file"
    raise AssertionError(kind)


CONFIG_CASES = ["list", "scalar", "directory", "binary", "latin-1", "too large", "bomb", "recursive alias", "deep nesting",
                "syntax", "tab", "two documents", "integer key", "unknown key", "python tag", "duplicate key",
                "duplicate key on one line", "one line, no newline", "missing", "device"]


@pytest.mark.parametrize("kind", CONFIG_CASES)
def test_bad_config_file(odiag, tmp_path, kind):
    path, needle = _config_case(tmp_path, kind)
    started = time.monotonic()
    assert_one_line(odiag("run", "--config", path, "--out", tmp_path / "out"), str(path), needle)
    assert time.monotonic() - started < 10  # refused, not expanded (a bomb), read (/dev/zero) or recursed
    assert not (tmp_path / "out").exists()


def test_bomb_errors_show_excerpts_only():
    """An expanded value is never formatted whole: excerpt() costs the same for any size."""
    huge = [["x" * 1000] * 1000] * 1000
    started = time.monotonic()
    text = excerpt(huge)
    assert len(text) <= EXCERPT_CHARS + 20 and time.monotonic() - started < 0.1
    assert len(excerpt("y" * 10**7)) <= EXCERPT_CHARS + 20
    assert "bits" in excerpt(7**20000)


# templates: resource abuse in a teacher file --------------------------------------------------------

TEMPLATES = {
    "string repetition": "{{ question }}{{ 'a' * 10**9 }}",
    "huge power": "{{ question }}{{ 7 ** 99999999 }}",
    "nested loops": "{{ question }}{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
    "huge range": "{{ question }}{{ range(10**9) | list }}",
    "10 MB context": "{{ question }}{% for i in range(10000) %}{{ 'x' * 1000 }}{% endfor %}",
    "doubling macro": "{% macro f(s, n) %}{{ f(s ~ s, n - 1) if n else s }}{% endmacro %}{{ question }}{{ f('ab', 64) }}",
    "format width": "{{ question }}{{ '%0999999999d' % 1 }}",
    "str.format width": "{{ question }}{{ '{:>999999999}'.format(1) }}",
    "center": "{{ question }}{{ question.center(10**8) }}",
    "replace": "{{ question }}{{ ('a' * 100000) | replace('a', 'b' * 100) }}",
    "wordwrap": "{{ question }}{{ ('a ' * 100000) | wordwrap(1, wrapstring='x' * 1000) }}",
    "indent": "{{ question }}{{ ('a\\n' * 300000) | indent('x' * 100) }}",
    "join": "{{ question }}{{ ([question] * 1000) | join('x' * 10000) }}",
    "expandtabs": "{{ question }}{{ ('\\t' * 1000).expandtabs(100000) }}",
    "literal loop": "{{ question }}{% for i in range(10000) %}" + "x" * 500 + "{% endfor %}",
    "recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ question }}{{ f() }}",
    "attribute escape": "{{ question }}{{ question.__class__.__mro__ }}",
    "mutation": "{{ question }}{% set l = [] %}{{ l.append(1) }}",
    "division by zero": "{{ question }}{{ 1 / 0 }}",
    "syntax": "{{ question }}{% for %}",
}


def _fake_run(root: Path, teachers: list[dict] | None = None) -> Path:
    """A finished run directory as the readers see it: config, results and empty tables."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = RunConfig()
    (root / "config.json").write_text(json.dumps({"config": to_dict(cfg), "config_hash": cfg.hash()}))
    rows = teachers if teachers is not None else [{"teacher": "t", "algorithm": "gkd", "rank": None, "n_decision_points": 0}]
    results = {"schema_version": RESULTS_SCHEMA, "task": "synthetic", "student": "synthetic", "config": to_dict(cfg),
               "config_hash": cfg.hash(), "versions": {}, "teachers": rows, "questions": [],
               "counts": {"questions": 0, "paths": 0, "decision_points": 0, "rollouts": 0, "tokens_generated": 0}}
    (root / "results.json").write_text(json.dumps(results))
    for table, columns in COLUMNS.items():
        pq.write_table(pa.table({c: pa.array([], pa.string()) for c in columns}), root / f"{table}.parquet")
    return root


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_abusive_teacher_template(odiag, tmp_path, name):
    run = _fake_run(tmp_path / "run")
    teacher = tmp_path / "abuse.yaml"
    teacher.write_text(json.dumps({"context_template": TEMPLATES[name]}))  # JSON is YAML
    started = time.monotonic()
    assert_one_line(odiag("add-teacher", run, teacher, "--quiet"), str(teacher), "'context_template'")
    assert time.monotonic() - started < 10


def test_abusive_summary_prompt(tmp_path):
    teacher = tmp_path / "summary.yaml"
    teacher.write_text(json.dumps({
        "correct_solutions": 1, "summarizer": "some/model",
        "context_template": "{{ question }} {{ correct_summaries[0] }}",
        "summary_prompt": "{{ question }}{{ solution }}{{ 'a' * 10**9 }}",
    }))
    from harness.teachers import load_teacher

    cfg = load_teacher(str(teacher))  # the file alone passes: the prompt is rendered per solution
    with pytest.raises(ConfigError, match=r"summary.yaml: key 'summary_prompt': template limit"):
        render_template(cfg.summary_prompt, f"{teacher}: key 'summary_prompt'", question="q", solution="s")


def test_teacher_file_of_10_mb(odiag, tmp_path):
    run = _fake_run(tmp_path / "run")
    teacher = tmp_path / "big.yaml"
    teacher.write_text("context_template: '{{ question }}" + "x" * 10_000_000 + "'\n")
    assert_one_line(odiag("add-teacher", run, teacher), str(teacher), "too large")


def test_template_wall_time_limit(monkeypatch):
    """Work that stays under every size limit still stops at the wall-time limit (here made tiny)."""
    import harness.safeio as safeio

    monkeypatch.setattr(safeio, "RENDER_SECONDS", 0.0)
    with pytest.raises(ConfigError, match=r"^t.yaml: key 'context_template': template limit: rendering took longer"):
        render_template("{% for i in range(100) %}{{ i }}{% endfor %}", "t.yaml: key 'context_template'")


def test_templates_render_as_before():
    """The limits change nothing for a real template: output as Jinja's plain sandbox renders it."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    plain = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
    variables = {"question": "2+2?\n", "correct": ["4", "four"], "wrong": ["5"]}
    for source in [
        "Q: {{ question }}\n{% for c in correct %}{{ loop.index }}. {{ c }}\n{% endfor %}",
        "{{ correct | join('\\n---\\n') }}{{ '%s/%d' % (wrong[0], 3) }}{{ '{}!'.format(question | trim) }}\n",
        "{%- if wrong %} W {{ wrong[0] | upper }}{% endif -%}\n\n{% set x %}a{{ question }}{% endset %}{{ x ~ 'z' }}",
        *(yaml_template for yaml_template in _repository_templates()),
    ]:
        assert render_template(source, "t", **variables, correct_summaries=["s"], wrong_summaries=["w"], solution="x") == \
            plain.from_string(source).render(**variables, correct_summaries=["s"], wrong_summaries=["w"], solution="x")


def _repository_templates() -> list[str]:
    import yaml

    out = []
    for path in sorted((REPO / "teachers").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        out += [data[k] for k in ("context_template", "summary_prompt") if data.get(k)]
    assert out
    return out


# malformed results for leaderboard and model-card ---------------------------------------------------


def _break_results(run: Path, kind: str) -> str:
    path = run / "results.json"
    good = json.loads(path.read_text())
    if kind == "garbage bytes":
        path.write_bytes(os.urandom(64) + b"\x00")
        return "binary"
    if kind == "empty":
        path.write_text("")
        return "empty"
    if kind == "truncated":
        path.write_text(json.dumps(good)[:40])
        return "not valid JSON"
    if kind == "a list":
        path.write_text("[1, 2]")
        return "expected an object"
    if kind == "old schema":
        path.write_text(json.dumps({**good, "schema_version": "odiag.results/0"}))
        return "schema_version"
    if kind == "no teachers":
        path.write_text(json.dumps({k: v for k, v in good.items() if k != "teachers"}))
        return "'teachers'"
    if kind == "row not an object":
        path.write_text(json.dumps({**good, "teachers": ["gkd"]}))
        return "teachers[0]"
    if kind == "counts without rollouts":
        path.write_text(json.dumps({**good, "counts": {"questions": 1}}))
        return "counts."
    if kind == "mean not a number":
        path.write_text(json.dumps({**good, "teachers": [{"teacher": "t", "algorithm": "gkd", "alignment": {"mean": "high"}}]}))
        return "numeric mean"
    if kind in BAD_FIELDS:
        field, value, needle = BAD_FIELDS[kind]
        row = {"teacher": "t", "algorithm": "gkd", "rank": 1, "alignment": {"mean": 0.2, "ci95": [0.1, 0.3], "n_questions": 2}}
        if field == "rank":
            row["rank"] = value
        else:
            row["alignment"][field] = value
        path.write_text(json.dumps({**good, "teachers": [row]}))  # NaN as JSON's NaN: what Python reads and odiag never writes
        return needle
    if kind == "deep nesting":
        path.write_text("[" * 100000 + "]" * 100000)
        return "nested too deeply"
    raise AssertionError(kind)


BAD_FIELDS = {
    "mean NaN": ("mean", float("nan"), "finite numeric mean"),
    "ci95 a string": ("ci95", "ab", "teachers[0].alignment.ci95"),
    "ci95 of strings": ("ci95", ["a", "b"], "teachers[0].alignment.ci95"),
    "ci95 of three": ("ci95", [0.1, 0.2, 0.3], "teachers[0].alignment.ci95"),
    "rank a word": ("rank", "first", "teachers[0].rank"),
    "p a word": ("p_paired", "x", "teachers[0].alignment.p_paired"),
    "n_questions a word": ("n_questions", "many", "teachers[0].alignment.n_questions"),
}
RESULTS_CASES = ["garbage bytes", "empty", "truncated", "a list", "old schema", "no teachers", "row not an object",
                 "counts without rollouts", "mean not a number", *BAD_FIELDS, "deep nesting"]


@pytest.mark.parametrize("command", ["leaderboard", "model-card"])
@pytest.mark.parametrize("kind", RESULTS_CASES)
def test_malformed_results(odiag, tmp_path, command, kind):
    run = _fake_run(tmp_path / "run")
    needle = _break_results(run, kind)
    argv = [command, run] + (["--out", tmp_path / "site"] if command == "leaderboard" else [])
    assert_one_line(odiag(*argv), str(run / "results.json"), needle)


def _break_table(run: Path, kind: str) -> tuple[str, str]:
    path = run / "nodes.parquet"
    if kind == "garbage":
        path.write_bytes(b"PAR1" + os.urandom(200))
        return "nodes.parquet", "not a readable parquet"
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return "nodes.parquet", "not a readable parquet"
    if kind == "empty file":
        path.write_bytes(b"")
        return "nodes.parquet", "not a readable parquet"
    if kind == "missing column":
        pq.write_table(pa.table({"teacher": pa.array([], pa.string())}), path)
        return "nodes.parquet", "missing column"
    if kind == "a directory":
        path.unlink()
        path.mkdir()
        return "nodes.parquet", "nodes.parquet"
    if kind == "children without values":
        pq.write_table(pa.table({c: ["x"] for c in COLUMNS["children"]}), run / "children.parquet")
        return "children.parquet", "missing column"
    if kind == "json as parquet":
        (run / "paths.parquet").write_text("{}")
        return "paths.parquet", "not a readable parquet"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty file", "missing column", "a directory",
                                  "children without values", "json as parquet"])
def test_malformed_parquet_for_leaderboard(odiag, tmp_path, kind):
    run = _fake_run(tmp_path / "run")
    name, needle = _break_table(run, kind)
    assert_one_line(odiag("leaderboard", run, "--out", tmp_path / "site"), name, needle)
    assert not (tmp_path / "site").exists()


# paths odiag cannot write ---------------------------------------------------------------------------


def test_run_out_at_a_file(odiag, tmp_path):
    (tmp_path / "taken").write_text("a file\n")
    assert_one_line(odiag("run", "--set", "limit=1", "--out", tmp_path / "taken"), str(tmp_path / "taken"))


def test_run_out_where_nothing_may_be_written(odiag, tmp_path):
    assert_one_line(odiag("run", "--set", "limit=1", "--out", "/sys/odiag-fault/run"), "/sys/odiag-fault")


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """A finished synthetic run, with numbers to publish and the tables that give them (the leaderboard and a
    model card recompute a run's headline numbers from its node records; a model card of a run without any
    number is refused)."""
    from harness.pipeline import run

    out = tmp_path_factory.mktemp("published") / "run"
    run(RunConfig(limit=2, algorithms=("gkd",)), out)
    return out


def test_model_card_out_on_a_full_disk(odiag, tmp_path, published):
    run = shutil.copytree(published, tmp_path / "run")
    assert_one_line(odiag("model-card", run, "--out", "/dev/full"), "/dev/full", "No space left")


def test_model_card_out_at_a_directory(odiag, tmp_path, published):
    run = shutil.copytree(published, tmp_path / "run")
    assert_one_line(odiag("model-card", run, "--out", tmp_path), str(tmp_path))


def test_model_card_out_in_a_missing_directory(odiag, tmp_path, published):
    run = shutil.copytree(published, tmp_path / "run")
    assert_one_line(odiag("model-card", run, "--out", tmp_path / "no" / "card.yaml"),
                    f"{tmp_path / 'no'} does not exist; create it first")
    (tmp_path / "file").write_text("")
    assert_one_line(odiag("model-card", run, "--out", tmp_path / "file" / "card.yaml"),
                    f"{tmp_path / 'file'} is a file, not a folder; give a path in a folder")


def test_model_card_out_replaces_a_file_whole_and_writes_through_a_link(tmp_path, published):
    run = shutil.copytree(published, tmp_path / "run")
    card, link = tmp_path / "card.yaml", tmp_path / "link.yaml"
    card.write_text("an older card\n")
    assert cli.main(["model-card", str(run), "--out", str(card)]) == 0
    from harness.leaderboard.modelcard import model_index

    first = model_index(json.loads((run / "results.json").read_text()))[0]["results"][0]["metrics"][0]["value"]
    assert yaml.safe_load(card.read_text())["model-index"][0]["results"][0]["metrics"][0]["value"] == first
    assert not list(tmp_path.glob(".card.yaml.*"))  # no temporary file left
    card.write_text("an older card\n")
    link.symlink_to(card)
    assert cli.main(["model-card", str(run), "--out", str(link)]) == 0
    assert link.is_symlink() and "model-index" in card.read_text()


def test_a_model_card_through_a_link_into_a_run_is_refused_and_a_replaced_file_keeps_its_mode(odiag, tmp_path, published):
    run = shutil.copytree(published, tmp_path / "run")
    before = (run / "results.json").read_bytes()
    (tmp_path / "link.yaml").symlink_to(run / "results.json")
    assert_one_line(odiag("model-card", run, "--out", tmp_path / "link.yaml"), "lies in the run directory")
    assert (run / "results.json").read_bytes() == before
    card = tmp_path / "card.yaml"
    card.write_text("private\n")
    card.chmod(0o600)
    assert odiag("model-card", run, "--out", card)[0] == 0
    assert card.stat().st_mode & 0o777 == 0o600 and "model-index" in card.read_text()


def test_a_model_card_that_cannot_be_written_whole_leaves_the_old_one(odiag, tmp_path, published, monkeypatch):
    run = shutil.copytree(published, tmp_path / "run")
    card = tmp_path / "card.yaml"
    card.write_text("an older card\n")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    assert_one_line(odiag("model-card", run, "--out", card), str(card), "No space left")
    assert card.read_text() == "an older card\n" and not list(tmp_path.glob(".card.yaml.*"))


def test_leaderboard_out_at_a_file(odiag, tmp_path):
    run = _fake_run(tmp_path / "run")
    (tmp_path / "site").write_text("a file\n")
    assert_one_line(odiag("leaderboard", run, "--out", tmp_path / "site"), str(tmp_path / "site"))


@pytest.mark.parametrize("sets, needle", [
    (["backend=synthetic", "task=synthetic", "teachers=[toy-teacher]"],
     "teachers/toy-teacher.yaml: key 'model': model 'harness/toy_models/teacher' is not one backend synthetic has"),
    (["backend=synthetic", "task=synthetic", "teachers=[synthetic-helpful,toy-self-1c1w]"],
     "teacher toy-self-1c1w: shows solutions in its context (correct_solutions 1, wrong_solutions 1), which the synthetic "
     "task has no text for: it would be skipped on every question"),
    (["backend=synthetic", "task=odiag_toy", "teachers=[synthetic-helpful]"],
     "task 'odiag_toy' on backend 'synthetic': the synthetic task runs only on backend synthetic"),
    (["backend=hf", "task=odiag_toy", "student=harness/toy_models/student", "teachers=[synthetic-helpful]"],
     "teacher synthetic-helpful: reads the synthetic model 'helpful', which only backend synthetic has"),
    (["temperature=1e-3"], "temperature 0.001: backend synthetic samples its student at temperature 1 only"),
    (["backend=vllm", "task=odiag_toy", "student=harness/toy_models/student", "teachers=[toy-self-1c]", "temperature=0.001"],
     "temperature 0.001: vLLM samples at temperatures of at least 0.01"),
])
def test_a_teacher_or_task_the_backend_cannot_hold_is_one_line_and_no_directory(odiag, tmp_path, sets, needle):
    """Refused while planning, before any directory exists: the corrected command then runs."""
    sets = [s.replace("student=harness", f"student={REPO}/harness") for s in sets]
    assert_one_line(odiag("run", *[a for s in sets for a in ("--set", s)], "--out", tmp_path / "run"), needle)
    assert not (tmp_path / "run").exists()


def test_every_sampled_temperature_is_checked_against_the_backend():
    """The student's temperature, and those of teachers whose solutions or summaries a model samples."""
    from harness.plan import sampling_temperatures
    from harness.teachers import load_teacher

    teachers = [load_teacher(n) for n in ("self-1c", "self-1c-32b", "self-sum-1c", "qwen3-8b")]
    assert sampling_temperatures(RunConfig(temperature=0.9), teachers) == [
        ("temperature", 0.9), ("teacher self-1c-32b: solution_temperature", 0.6), ("teacher self-sum-1c: summary_temperature", 0.7)]


def test_add_teacher_the_backend_cannot_hold_is_one_line(odiag, tmp_path):
    out = tmp_path / "run"
    assert cli.main(["run", "--set", "limit=1", "--set", "n_target=10", "--out", str(out), "--quiet"]) == 0
    assert_one_line(odiag("add-teacher", out, "toy-teacher"), "toy-teacher.yaml: key 'model': model 'harness/toy_models/teacher' is not one backend synthetic has")
    assert_one_line(odiag("add-teacher", out, "toy-self-1c"), "teacher toy-self-1c: shows solutions in its context")


def test_demo_refuses_a_site_it_may_not_write_before_it_runs(odiag, tmp_path):
    """`odiag demo --site` is checked before minutes of work: nothing of the run is written."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "index.html").write_text("<html>my page</html>")
    (tmp_path / "afile").write_text("a file\n")
    for site, needle in (("mine", "--site {}: holds an index.html that is not an odiag leaderboard's"),
                         ("afile", "--site {}: exists and is not a directory")):
        assert_one_line(odiag("demo", "--out", tmp_path / "run", "--site", tmp_path / site), needle.format(tmp_path / site))
        assert not (tmp_path / "run").exists()
    assert (tmp_path / "mine" / "index.html").read_text() == "<html>my page</html>"


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_a_site_that_cannot_be_written_is_refused_before_the_run(tmp_path, capsys, monkeypatch, code):
    """A read-only folder or file system for the site is found before the run, not after it: the file
    system is asked (a root user passes every permission bit), and nothing is written."""
    import tempfile

    real = tempfile.mkstemp

    def deny(*args, dir=None, **kwargs):
        if str(dir).startswith(str(tmp_path / "ro")):
            raise OSError(code, os.strerror(code))
        return real(*args, dir=dir, **kwargs)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", deny)
    for site in (tmp_path / "ro", tmp_path / "ro" / "new" / "site"):
        assert cli.main(["demo", "--out", str(tmp_path / "run"), "--site", str(site)]) == 2
        err = capsys.readouterr().err
        assert err == f"odiag: error: --site {site}: cannot write in {tmp_path / 'ro'} ({os.strerror(code)}); choose a directory you can write\n"
        assert not (tmp_path / "run").exists() and not list((tmp_path / "ro").iterdir())
    (tmp_path / "afile").write_text("a file\n")
    assert cli.main(["demo", "--out", str(tmp_path / "run"), "--site", str(tmp_path / "afile" / "site")]) == 2
    assert f"--site {tmp_path / 'afile' / 'site'}: lies under {tmp_path / 'afile'}, which is not a directory" in capsys.readouterr().err


def test_leaderboard_refuses_to_rank_rows_that_measure_different_things(odiag, tmp_path):
    """Another temperature is another student distribution; other incorrect_outcomes other incorrect paths;
    another cascade another count; another jsd_beta or gamma another loss: ranked together they would mix. Settings an algorithm the runs lack does not read are no reason to refuse."""
    def run(name: str, algorithm: str = "gkd", **config) -> Path:
        root = _fake_run(tmp_path / name, [{"teacher": f"t-{name}", "algorithm": algorithm, "rank": None, "n_decision_points": 0}])
        results = json.loads((root / "results.json").read_text())
        results["config"].update(config)
        (root / "results.json").write_text(json.dumps(results))
        return root

    a, b = run("a", "jsd"), run("b", "jsd", jsd_beta=0.9)
    assert_one_line(odiag("leaderboard", a, b, "--out", "site"),
                    f"runs {a} and {b} (synthetic, student synthetic) differ in jsd_beta (0.5 and 0.9), so their jsd rows "
                    "measure different things", f"or odiag rescore {b} with --set jsd_beta=0.5")
    assert_one_line(odiag("leaderboard", run("c"), run("d", temperature=0.7), "--out", "site"),
                    "differ in temperature (1.0 and 0.7), so their rows measure different things; put them on separate")
    assert_one_line(odiag("leaderboard", run("g"), run("h", incorrect_outcomes=["wrong", "truncated"]), "--out", "site"),
                    "differ in incorrect_outcomes (['wrong'] and ['wrong', 'truncated']), so their rows measure different things")
    assert_one_line(odiag("leaderboard", run("i"), run("j", cascade="paper"), "--out", "site"),
                    "differ in cascade (unbiased and paper), so their rows measure different things")
    assert cli.main(["leaderboard", str(run("e", gamma=0.5)), str(run("f", jsd_beta=0.9)), "--out", str(tmp_path / "site")]) == 0
    both = lambda name, **config: _fake_run(tmp_path / name, [  # noqa: E731
        {"teacher": f"t-{name}", "algorithm": a, "rank": None, "n_decision_points": 0} for a in ("jsd", "minillm")])
    k, m = both("k"), both("m")
    results = json.loads((m / "results.json").read_text())
    results["config"].update(jsd_beta=0.3, gamma=0.9)
    (m / "results.json").write_text(json.dumps(results))
    # both loss settings differ: the rescore named is the one that makes them comparable, not the first of two
    assert_one_line(odiag("leaderboard", k, m, "--out", "site"), f"or odiag rescore {m} with --set jsd_beta=0.5 --set gamma=0.95")
    # how a row is estimated: another strategy picks other decision points, another n_min another support, another
    # budget or window other visits, an approximate scorer other probabilities: the settings would rank the teachers
    for n, (key, value, shown) in enumerate((("strategy", "settle", "paper and settle"), ("n_min", 5, "None and 5"),
                                             ("window", 5, "50 and 5"), ("budget", 100, "None and 100"),
                                             ("student_args", {"score_with": "vllm", "gpu_memory_utilization": 0.5},
                                              "{} and {'score_with': 'vllm'}"))):
        assert_one_line(odiag("leaderboard", run(f"p{n}"), run(f"q{n}", **{key: value}), "--out", "site"),
                        f"differ in {key} ({shown}), so their rows measure different things; put them on separate")
    # a setting the runs' strategy never reads, a seed, a limit, where it ran: the same measurement; incorrect
    # outcomes in another order, and n_min left to the task against the same value given, are the same settings
    assert cli.main(["leaderboard", str(run("r1", incorrect_outcomes=["wrong", "truncated"])),
                     str(run("r2", price=0.5, seed=7, limit=3, threads=2, incorrect_outcomes=["truncated", "wrong"],
                             student_args={"gpu_memory_utilization": 0.5})), "--out", str(tmp_path / "site")]) == 0

    def task(name, checker=1, **config):
        root = run(name, **config)
        results = json.loads((root / "results.json").read_text())
        results["task_settings"] = {"name": "synthetic", "n_min": 20, "max_new_tokens": 10, "answer_checker": checker}
        (root / "results.json").write_text(json.dumps(results))
        return root

    assert cli.main(["leaderboard", str(task("s1")), str(task("s2", n_min=20)), "--out", str(tmp_path / "site")]) == 0
    # results written before task_settings were (n_min resolved in counts, no resolved length limit) beside ones since
    old = run("s6")
    results = json.loads((old / "results.json").read_text())
    results["counts"]["n_min"] = 20
    (old / "results.json").write_text(json.dumps(results))
    assert cli.main(["leaderboard", str(task("s5")), str(old), "--out", str(tmp_path / "site")]) == 0
    assert_one_line(odiag("leaderboard", task("s3"), task("s4", checker=2), "--out", "site"),
                    "differ in answer_checker (1 and 2), so their rows measure different things")


def test_leaderboard_refuses_a_teacher_scored_twice_on_the_same_rollouts(odiag, tmp_path):
    """A run and its copy (or a copy grown, or given a teacher with add-teacher) hold the same rollouts: ranked
    together each teacher they share counted twice, tied with itself. Another seed draws other rollouts."""
    rows = [{"teacher": "t", "algorithm": "gkd", "rank": None, "n_decision_points": 0}]
    a = _fake_run(tmp_path / "a", rows)
    results = json.loads((a / "results.json").read_text())
    results["questions"] = [{"id": "q000"}, {"id": "q001"}]
    (a / "results.json").write_text(json.dumps(results))
    shutil.copytree(a, tmp_path / "copy")
    assert_one_line(odiag("leaderboard", a, tmp_path / "copy", "--out", "site"),
                    f"runs {a} and {tmp_path / 'copy'} both score teacher 't' on the same rollouts (seed 0, question q000 and 1 more)",
                    "give one of them (odiag add-teacher adds teachers to one run), or draw the other with another --set seed")
    for name, key, value in (("other", "seed", 1), ("data", "data_files", "/elsewhere/d.jsonl")):
        other = _fake_run(tmp_path / name, rows)  # other rollouts; other documents under the same question ids
        (other / "results.json").write_text(json.dumps({**results, "config": {**results["config"], key: value}}))
        assert cli.main(["leaderboard", str(a), str(other), "--out", str(tmp_path / "site")]) == 0


def test_a_second_leaderboard_build_into_one_site_waits_its_turn(odiag, tmp_path):
    """Two builds into one site: the second removed the first's staged figures as a killed build's leftovers,
    and the first failed half-way. While one builds, another is one line naming who holds the site."""
    import fcntl

    run = _fake_run(tmp_path / "run")
    assert odiag("leaderboard", run, "--out", "site")[0] == 0
    held = os.open(tmp_path / "site" / ".odiag-site.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(held, json.dumps({"pid": 4242, "host": "h", "started": "2026-01-01T00:00:00+00:00"}).encode())
        code, lines, _ = odiag("leaderboard", run, "--out", "site")
        assert_one_line((code, lines, True), "site: in use by odiag pid 4242 on h since 2026-01-01T00:00:00+00:00; wait for it")
    finally:
        os.close(held)
    assert odiag("leaderboard", run, "--out", "site")[0] == 0
    assert not (tmp_path / "site" / ".odiag-site.lock").exists()  # nothing of the lock left in the published site


def test_a_leaderboard_build_removes_what_a_killed_build_left(tmp_path):
    """A build killed part-way (SIGKILL: no clean-up runs) left its staged figures, the figures it was
    replacing and half-written files in the site for good; the next build removes them, and only them."""
    run = _fake_run(tmp_path / "run")
    site = tmp_path / "site"
    assert cli.main(["leaderboard", str(run), "--out", str(site)]) == 0
    left = [".figures.abc123.tmp", ".figures.old.4242", ".leaderboard.json.x1y2.tmp", ".index.html.q9.tmp", ".odiag-site.k.tmp"]
    for name in left:
        if name.startswith(".figures"):
            (site / name).mkdir()
            (site / name / "ranking.svg").write_text("<svg/>")
        else:
            (site / name).write_text("half")
    (site / ".mine.tmp").write_text("a user's file")
    (site / "notes.txt").write_text("a user's file")
    assert cli.main(["leaderboard", str(run), "--out", str(site)]) == 0
    assert sorted(p.name for p in site.iterdir()) == [".mine.tmp", "figures", "index.html", "leaderboard.json", "notes.txt"]


def test_leaderboard_never_overwrites_a_page_it_did_not_write(odiag, tmp_path):
    run = _fake_run(tmp_path / "run")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.html").write_text("<html>my own page</html>")
    assert_one_line(odiag("leaderboard", run, "--out", mine), f"--out {mine}: holds an index.html that is not an odiag leaderboard's")
    (mine / "leaderboard.json").write_text('{"schema_version": "something else"}')
    assert_one_line(odiag("leaderboard", run, "--out", mine), "holds an index.html")
    (mine / "index.html").unlink()
    assert_one_line(odiag("leaderboard", run, "--out", mine), "holds a leaderboard.json")
    assert cli.main(["leaderboard", str(run), "--out", str(tmp_path / "site")]) == 0
    assert cli.main(["leaderboard", str(run), "--out", str(tmp_path / "site")]) == 0  # its own site: rebuilt


def test_a_model_folder_without_weights_is_refused_by_the_plan_and_an_add_that_fails_to_load_leaves_the_run(odiag, tmp_path):
    """A student or teacher folder whose weights were not copied is named by the plan, before a run directory opens;
    a teacher model that passes the plan and still fails to load (a library's OSError, not odiag's own error) leaves
    the finished run as it was, so the corrected add-teacher goes on."""
    from harness.config import REPOSITORY

    demo = REPOSITORY / "harness" / "demo.yaml"
    empty = tmp_path / "empty"
    shutil.copytree(REPOSITORY / "harness" / "toy_models" / "teacher", empty, ignore=shutil.ignore_patterns("*.safetensors"))
    teacher = tmp_path / "t" / "unweighted.yaml"
    teacher.parent.mkdir()
    teacher.write_text(f"model: {empty}\n")
    fix = "holds no weights (no *.safetensors, *.bin or their shard index): give the directory a model was saved to"
    assert_one_line(odiag("plan", "--config", demo, "--set", f"student={empty}"), f"student '{empty}': the directory {fix}")
    assert_one_line(odiag("run", "--config", demo, "--set", f"teachers=[{teacher}]", "--out", "r"),
                    f"teacher unweighted ({teacher}): model '{empty}' {fix}")
    assert not (tmp_path / "r").exists()
    assert odiag("run", "--config", demo, "--set", "limit=1", "--set", "teachers=[toy-teacher]", "--set", "budget=100",
                 "--out", "r", "--quiet")[0] == 0
    assert_one_line(odiag("add-teacher", "r", teacher), f"model '{empty}' {fix}")
    (empty / "weights.pt").write_bytes(b"not a model")  # weights by name: the plan passes, transformers refuses
    files = lambda: {p: p.read_bytes() for p in sorted((tmp_path / "r").rglob("*")) if p.is_file()}  # noqa: E731
    before = files()
    code, lines, _ = odiag("add-teacher", "r", teacher, "--quiet")
    assert code == 2 and lines[-1].startswith("odiag: error: ") and str(empty) in lines[-1], lines
    assert files() == before  # the run's files as they were (its folder's time stamp moves: a lock was taken)
    assert odiag("add-teacher", "r", "toy-self-1c", "--quiet")[0] == 0


def test_rescore_and_validate_refusals_name_their_own_keys_and_where_a_value_came_from(odiag, tmp_path):
    """A rescore offers the keys it may change (not every run key) and blames --set for a value --set gave (not the
    run's config.json); a malformed --set is shown a setting of the command's own."""
    assert odiag("run", "--set", "limit=2", "--out", "r", "--quiet")[0] == 0
    assert_one_line(odiag("rescore", "r", "--set", "algorithmz=[gkd]"),
                    "odiag: error: --set: unknown key 'algorithmz'; did you mean 'algorithms'? valid keys are algorithms, "
                    "jsd_beta, gamma, executor, ray_address, num_workers, threads, student_args")
    assert_one_line(odiag("rescore", "r", "--set", "algorithms=[gkdd]"), "odiag: error: --set: key 'algorithms' must be")
    assert_one_line(odiag("rescore", "r", "--set", "jsd_beta"), "--set 'jsd_beta': expected KEY=VALUE, e.g. --set jsd_beta=0.9")
    assert_one_line(odiag("validate", "r", "--set", "steps"), "--set 'steps': expected KEY=VALUE, e.g. --set steps=32")


def test_leaderboard_never_replaces_a_figures_folder_it_did_not_write(odiag, tmp_path):
    """A build replaces its site's figures folder: a user's own (no odiag leaderboard.json beside it), a run directory
    there, a link there, and a page that is a folder are refused before anything is written."""
    run = _fake_run(tmp_path / "run")
    mine = tmp_path / "mine"
    (mine / "figures").mkdir(parents=True)
    (mine / "figures" / "plot.png").write_bytes(b"a user's figure")
    assert_one_line(odiag("leaderboard", run, "--out", mine), f"--out {mine}: holds a figures folder but no leaderboard.json")
    parent = tmp_path / "parent"
    shutil.copytree(run, parent / "figures")
    assert_one_line(odiag("leaderboard", parent / "figures", "--out", parent), "its figures folder is a run directory")
    site = tmp_path / "site"
    assert cli.main(["leaderboard", str(run), "--out", str(site)]) == 0
    shutil.rmtree(site / "figures")
    (tmp_path / "elsewhere").mkdir()
    (site / "figures").symlink_to(tmp_path / "elsewhere")
    assert_one_line(odiag("leaderboard", run, "--out", site), f"--out {site}: holds a link named figures")
    (site / "figures").unlink()
    (site / "index.html").unlink()
    (site / "index.html").mkdir()
    assert_one_line(odiag("leaderboard", run, "--out", site), f"--out {site}: holds index.html that is not a file")
    (site / "index.html").rmdir()
    assert cli.main(["leaderboard", str(run), "--out", str(site)]) == 0


def test_a_first_build_stopped_between_its_page_and_figures_leaves_a_site_it_rebuilds(odiag, tmp_path, monkeypatch):
    """A first build puts its page in place before its figures: stopped between the two, its folder reads as odiag's
    and the next build goes on (the other order left a figures folder that the next build could not tell from a user's)."""
    import harness.leaderboard as leaderboard

    run, site = _fake_run(tmp_path / "run"), tmp_path / "site"
    swap = leaderboard._swap_figures
    monkeypatch.setattr(leaderboard, "_swap_figures", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        leaderboard.build([run], site)
    assert (site / "leaderboard.json").is_file() and not (site / "figures").exists()
    monkeypatch.setattr(leaderboard, "_swap_figures", swap)
    assert cli.main(["leaderboard", str(run), "--out", str(site)]) == 0
    assert (site / "figures").is_dir() and not [p for p in site.iterdir() if p.name.startswith(".figures")]


def test_leaderboard_refuses_a_run_given_twice(odiag, tmp_path):
    run = _fake_run(tmp_path / "run")
    assert_one_line(odiag("leaderboard", run, f"{run}/", "--out", tmp_path / "site"),
                    f"leaderboard: run directory {run}/ is given twice")
    assert not (tmp_path / "site").exists()


def test_not_a_run_directory(odiag, tmp_path):
    """Each command that reads a finished run says what the directory given is instead: absent, a file, not a
    run, or a run not finished (and how to finish it)."""
    (tmp_path / "file").write_text("x\n")
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "config.json").write_text("{}\n")
    cases = {tmp_path / "nowhere": "no such directory", tmp_path / "file": "not a directory",
             tmp_path: "not an odiag run directory (no config.json)",
             tmp_path / "started": "the run has not finished (no results.json); run the command that started it"}
    for where, needle in cases.items():
        for cmd in (["model-card", where], ["leaderboard", where, "--out", tmp_path / "site"], ["rescore", where],
                    ["add-teacher", where, "synthetic-helpful"], ["validate", where]):
            assert_one_line(odiag(*cmd), f"{where}: {needle}")
    assert not (tmp_path / "site").exists()


# the command line itself ----------------------------------------------------------------------------

USAGE = [
    ([], "required: command"),
    (["nope"], "invalid choice"),
    (["run"], "--out"),
    (["run", "--out", "x", "--bogus"], "unrecognized arguments: --bogus (see 'odiag run --help')"),
    (["leaderboard", "r", "--out", "s", "extra", "--also"], "unrecognized arguments: extra --also (see 'odiag leaderboard --help')"),
    (["run", "--out", ""], "empty"),
    (["selfcheck", "--questions", "0"], ">= 1"),
    (["selfcheck", "--questions", "many"], "integer"),
    (["selfcheck", "--seed", "-1"], ">= 0"),
    (["leaderboard", "r", "--out", "s", "--viewer-mb", "-1"], ">= 0"),
    (["leaderboard", "r", "--out", "s", "--viewer-mb", "nan"], ">= 0"),
    (["leaderboard", "r", "--out", "s", "--viewer-mb", "inf"], "must be >= 0 and finite, got 'inf'"),
    (["leaderboard", "--out", "s"], "RUN_DIR"),
    (["plan", "--throughput", "0"], "argument --throughput: must be > 0 and finite, got '0'"),
    (["plan", "--gpu-memory", "0"], "argument --gpu-memory: must be > 0 and finite, got '0'"),
    (["plan", "--throughput", "inf"], "must be > 0 and finite"),
    (["model-card"], "dir"),
    (["tasks-dir", "extra"], "unrecognized arguments"),
    (["add-teacher", "only-a-dir"], "teacher"),
]


@pytest.mark.parametrize(("argv", "needle"), USAGE, ids=[" ".join(a) or "(none)" for a, _ in USAGE])
def test_usage_errors(odiag, argv, needle):
    assert_one_line(odiag(*argv), needle, "--help")


def test_debug_shows_the_traceback(odiag, tmp_path):
    for argv in (["--debug", "run"], ["run", "--debug"]):
        code, lines, unchanged = odiag(*argv, "--set", "window=0", "--out", tmp_path / "out")
        assert code == 2 and lines[0].startswith("Traceback") and lines[-1].startswith("odiag: error: --set")
        assert unchanged and not (tmp_path / "out").exists()


def test_a_bug_keeps_its_traceback(odiag, monkeypatch):
    def broken(args):
        raise KeyError("an internal bug")

    monkeypatch.setattr(cli, "_tasks_dir", broken)
    code, lines, _ = odiag("tasks-dir")
    assert code == 1 and lines[0].startswith("Traceback") and "KeyError" in "\n".join(lines)
    assert lines[-1].startswith("odiag: internal error:")


def test_help_exits_zero(odiag, capsys):
    code, lines, _ = odiag("run", "--help")
    assert code == 0 and not lines


# the real entry point -------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["run", "--set", "algorithms=[bogus]", "--out", "OUT"],
    ["run", "--config", "BOMB", "--out", "OUT"],
    ["run", "--set", "window", "--out", "OUT"],
    ["nope"],
    # transformers' note on a text longer than the tokenizer's limit came before odiag's own line
    ["plan", "--set", "task=odiag_toy", "--set", "backend=hf", "--set", f"student={REPO / 'harness' / 'toy_models' / 'student'}",
     "--set", "teachers=[LONG]"],
], ids=["bad value", "yaml bomb", "bad --set", "usage", "context too long"])
def test_entry_point(tmp_path, argv):
    (tmp_path / "bomb.yaml").write_text(BOMB)
    (tmp_path / "long.yaml").write_text(f"model: student\ncontext_template: '{'word ' * 800}{{{{ question }}}}'\n")
    argv = [str(tmp_path / "out") if a == "OUT" else str(tmp_path / "bomb.yaml") if a == "BOMB" else a for a in argv]
    argv = [a.replace("LONG", str(tmp_path / "long.yaml")) for a in argv]
    before = snapshot(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *argv], capture_output=True, text=True, timeout=60, env=env)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("odiag: error: "), proc.stderr
    assert snapshot(tmp_path) == before and not proc.stdout


def test_a_stop_says_work_is_kept_only_where_a_run_directory_was_opened(odiag, monkeypatch, tmp_path):
    """Ctrl-C while the command line loads, or before the run directory exists, is one line that claims
    no kept work; once the directory is open the line says where to resume."""
    def parse_stopped(argv):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(cli, "_parse", parse_stopped)
        assert odiag("run", "--out", "r", "--set", "limit=2") == (130, ["odiag: interrupted"], True)

    def stopped(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run", stopped)
    assert odiag("run", "--out", "r", "--set", "limit=2") == (130, ["odiag: interrupted"], True)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text("{}")
    code, lines, _ = odiag("run", "--out", "r", "--set", "limit=2")
    assert (code, lines) == (130, ["odiag: interrupted; finished work is kept in r: run the same command again to resume"])


def test_a_second_ctrl_c_while_stopping_is_ignored_not_a_traceback(capsys, monkeypatch, tmp_path):
    """After the first Ctrl-C the process ignores SIGINT while it prints its line and exits (a second one
    raised tracebacks in the stop line and in libraries' exit hooks); an in-process caller gets it back."""
    import signal

    monkeypatch.chdir(tmp_path)

    def stopped(args):
        assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run", stopped)
    handler = signal.getsignal(signal.SIGINT)
    try:
        assert cli.main(["run", "--out", "r"]) == 130
        assert signal.getsignal(signal.SIGINT) is handler  # given back to this process's caller
        monkeypatch.setattr(sys, "argv", ["odiag", "run", "--out", "r"])
        assert cli.main() == 130
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # the program itself now only exits
    finally:
        signal.signal(signal.SIGINT, handler)
    assert capsys.readouterr().err.splitlines() == ["odiag: interrupted"] * 2


def test_a_stopped_add_teacher_or_rescore_finishes_when_run_again(odiag, monkeypatch, tmp_path):
    """Once add-teacher or rescore has recorded its settings the run reads as unfinished: the same command,
    run again, finishes it (as does odiag run on the recorded config), as the stop line says."""
    import harness.pipeline

    assert odiag("run", "--out", "r", "--set", "limit=1", "--set", "teachers=[synthetic-helpful]", "--quiet")[0] == 0
    real = harness.pipeline._execute

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    for argv in (("add-teacher", "r", "synthetic-misleading"), ("rescore", "r", "--set", "algorithms=[gkd]")):
        monkeypatch.setattr(harness.pipeline, "_execute", stopped)
        code, lines, _ = odiag(*argv)
        assert (code, lines) == (130, ["odiag: interrupted; finished work is kept in r: run the same command again to "
                                       "resume"]), argv
        monkeypatch.setattr(harness.pipeline, "_execute", real)
        assert odiag(*argv, "--quiet")[0] == 0
    monkeypatch.setattr(harness.pipeline, "_execute", stopped)
    assert odiag("rescore", "r", "--set", "algorithms=[gkd,jsd]")[0] == 130
    monkeypatch.setattr(harness.pipeline, "_execute", real)
    assert odiag("run", "--config", "r/config.yaml", "--out", "r", "--quiet")[0] == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert {(t["teacher"], t["algorithm"]) for t in results["teachers"]} == {
        (t, a) for t in ("synthetic-helpful", "synthetic-misleading") for a in ("gkd", "jsd")}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_refused_rescore_leaves_the_run_as_it_was_and_a_stopped_drop_finishes(odiag, monkeypatch, tmp_path):
    """A rescore that fails once its settings are recorded (a corrupt shard) puts the finished run back: it
    removed results.json and recorded the refused settings, so the error's own fix then failed. A stopped
    --drop-teacher, run again, finishes (the teacher was no longer recorded, and the same command was refused)."""
    import harness.pipeline

    assert odiag("run", "--out", "r", "--set", "limit=2", "--set", "teachers=[synthetic-helpful]", "--quiet")[0] == 0
    assert odiag("add-teacher", "r", "synthetic-misleading", "--quiet")[0] == 0
    before = _files(tmp_path / "r")
    shard = next(p for p in sorted((tmp_path / "r" / "shards").rglob("window*.npz")))
    good = shard.read_bytes()
    shard.write_bytes(b"garbage")
    code, lines, _ = odiag("rescore", "r", "--set", "algorithms=[gkd]")
    assert code == 2 and lines[-1].startswith("odiag: error: ") and "corrupt shard" in lines[-1], lines
    shard.write_bytes(good)
    assert _files(tmp_path / "r") == before
    # where it runs, when it needs no pass: no model loads, so no cluster is asked (tests/test_distributed.py
    # refuses one nothing answers at), and the settings are recorded; another rescore takes them back
    code, lines, _ = odiag("rescore", "r", "--set", "executor=ray", "--set", "ray_address=127.0.0.1:1", "--quiet")
    assert code == 0, lines
    assert odiag("rescore", "r", "--set", "executor=local", "--set", "ray_address=null", "--quiet")[0] == 0

    real = harness.pipeline._execute
    monkeypatch.setattr(harness.pipeline, "_execute", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert odiag("rescore", "r", "--drop-teacher", "synthetic-misleading")[0] == 130
    monkeypatch.setattr(harness.pipeline, "_execute", real)
    # a name the stopped drop never held is still a mistake
    stopped = _files(tmp_path / "r")
    code, lines, _ = odiag("rescore", "r", "--drop-teacher", "synthetic-misleadin")
    assert code == 2 and "'synthetic-misleadin' is not in this run" in lines[-1] and _files(tmp_path / "r") == stopped
    assert odiag("rescore", "r", "--drop-teacher", "synthetic-misleading", "--quiet")[0] == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert {t["teacher"] for t in results["teachers"]} == {"synthetic-helpful"}
    assert not (tmp_path / "r" / ".dropped").exists()

    # a rescore of an edited teacher refused by a corrupt shard keeps the new file: odiag run --repair finishes it
    (tmp_path / "t3.yaml").write_text("description: t3\nmodel: misleading\n")
    assert odiag("add-teacher", "r", "t3.yaml", "--quiet")[0] == 0
    (tmp_path / "t3.yaml").write_text("description: t3, edited\nmodel: helpful\n")
    shard.write_bytes(b"garbage")
    code, lines, _ = odiag("rescore", "r")
    assert code == 2 and "corrupt shard" in lines[-1] and "--repair" in lines[-1], lines
    assert odiag("run", "--config", "r/config.yaml", "--out", "r", "--repair", "--quiet")[0] == 0
    assert odiag("rescore", "r", "--drop-teacher", "t3", "--quiet")[0] == 0
    # a drop refused by a corrupt shard stays done: its file may be gone, and odiag run --repair then finishes
    (tmp_path / "late.yaml").write_text("description: late\nmodel: misleading\n")
    assert odiag("add-teacher", "r", "late.yaml", "--quiet")[0] == 0
    (tmp_path / "late.yaml").unlink()
    shard.write_bytes(b"garbage")
    code, lines, _ = odiag("rescore", "r", "--drop-teacher", "late")
    assert code == 2 and "corrupt shard" in lines[-1] and "--repair" in lines[-1], lines
    assert odiag("run", "--config", "r/config.yaml", "--out", "r", "--repair", "--quiet")[0] == 0
    assert {t["teacher"] for t in json.loads((tmp_path / "r" / "results.json").read_text())["teachers"]} == {
        "synthetic-helpful"}
    # killed between its marker and its record, a new run leaves a directory the same command takes
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / ".drawing").write_bytes(b"")
    assert odiag("run", "--out", "fresh", "--set", "limit=1", "--quiet")[0] == 0


def test_rescore_and_add_teacher_refuse_a_run_stopped_while_its_tree_was_drawn_and_change_nothing(odiag, monkeypatch,
                                                                                                  tmp_path):
    """A grow stopped during its targeted rollouts leaves an incomplete tree; a run with an added teacher
    then read as a stopped add-teacher, so rescore --drop-teacher deleted the teacher's passes and its record
    before refusing. Refused first now, naming the command that finishes the tree."""
    import harness.pipeline

    assert odiag("run", "--out", "r", "--set", "limit=2", "--set", "teachers=[synthetic-helpful]", "--quiet")[0] == 0
    assert odiag("add-teacher", "r", "synthetic-misleading", "--quiet")[0] == 0
    real = harness.pipeline.enrich_window

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(harness.pipeline, "enrich_window", stopped)
    assert odiag("run", "--config", "r/config.yaml", "--set", "limit=4", "--out", "r")[0] == 130
    monkeypatch.setattr(harness.pipeline, "enrich_window", real)
    (tmp_path / "h2.yaml").write_text("description: another helpful teacher\nmodel: helpful\n")
    for argv in (("rescore", "r"), ("add-teacher", "r", "h2.yaml")):
        assert_one_line(odiag(*argv), "r: odiag run stopped while it drew the rollout tree",
                        "odiag run --config r/config.yaml --out r")
    # a drop needs no whole tree (odiag run names it when the teacher's file is gone): done, then the tree's turn
    code, lines, _ = odiag("rescore", "r", "--drop-teacher", "synthetic-misleading", "--quiet")
    assert code == 2 and lines[-1].endswith("r: dropped synthetic-misleading; the run stopped while odiag run drew its "
                                            "tree: finish it with odiag run --config r/config.yaml --out r"), lines
    assert odiag("run", "--config", "r/config.yaml", "--out", "r", "--quiet")[0] == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert {t["teacher"] for t in results["teachers"]} == {"synthetic-helpful"}
    assert results["counts"]["questions"] == 4
    assert not (tmp_path / "r" / ".drawing").exists() and not (tmp_path / "r" / ".dropped").exists()


def test_enrichment_below_n_min_is_warned_not_refused(odiag, caplog):
    """A child enriched to fewer visits than A(s) needs never enters it on its own visits (its forced rollouts
    still inform deeper nodes): the run goes on, with a warning naming the setting and the fix."""
    import logging

    for strategy, key in (("paper", "n_target"), ("survey", "survey_visits"), ("settle", "n_max")):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert odiag("run", "--out", f"r-{strategy}", "--set", "limit=1", "--set", f"strategy={strategy}",
                         "--set", f"{key}=5", "--set", "n_min=20", "--quiet")[0] == 0
        assert f"{key} 5 is below n_min 20: a child enriched to 5 visits never enters A(s) on its own; raise {key}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert odiag("run", "--out", "fine", "--set", "limit=1", "--set", "n_target=20", "--set", "n_min=20", "--quiet")[0] == 0
    assert "below n_min" not in caplog.text


def test_a_librarys_info_lines_show_only_with_verbose(odiag, monkeypatch):
    """odiag's own INFO lines are the run's log; a library's (torch's cache statistics at exit) are not."""
    import logging

    def logs(args):
        logging.getLogger("a_library.cache").info("cache stats:")
        logging.getLogger("a_library").warning("a library warning")
        logging.getLogger("harness.pipeline").info("odiag's own line")
        return 0

    monkeypatch.setattr(cli, "_run", logs)
    root = logging.getLogger()  # basicConfig configures a root without handlers, as a fresh `odiag` has
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(logging.getLogger("harness"), "level", logging.getLogger("harness").level)
    code, lines, _ = odiag("run", "--out", "r")
    assert code == 0 and lines == ["WARNING a_library: a library warning", "INFO harness.pipeline: odiag's own line"], lines


def test_a_synthetic_limit_past_what_it_generates_is_refused_before_anything(odiag, tmp_path):
    """The synthetic task makes its questions up front: a limit of 10^23 would fill memory before the first
    progress line. odiag run and odiag plan refuse it alike, and nothing is written."""
    for argv in (("plan",), ("run", "--out", tmp_path / "r")):  # plan first: it fails fast where run would fill memory
        assert_one_line(odiag(*argv, "--set", "limit=99999999999999999999999"),
                        "key 'limit' must be <= 1,000,000,000, got 99999999999999999999999")
        assert_one_line(odiag(*argv, "--set", "limit=200000"),
                        "key 'limit' must be <= 100,000 with task synthetic", "got 200,000")
    assert not (tmp_path / "r").exists()
    assert odiag("plan", "--set", "limit=100000")[0] == 0
    assert_one_line(odiag("selfcheck", "--questions", "1000000000"), "--questions must be <= 100,000", "got 1,000,000,000")


def test_outputs_that_cannot_be_what_they_name_are_one_line_each(odiag, tmp_path):
    """A link to nowhere as a run's --out, a directory as a model card's --out, a run directory as a
    leaderboard's --out, data files for a task that generates its questions: one line each, naming the
    flag or key and the fix, and nothing written."""
    (tmp_path / "nowhere-link").symlink_to(tmp_path / "nowhere")
    assert_one_line(odiag("run", "--out", "nowhere-link", "--set", "limit=1"),
                    "--out nowhere-link: a link to", "which does not exist; remove the link or create the directory")
    assert not (tmp_path / "nowhere").exists()
    assert odiag("run", "--out", "r", "--set", "limit=1", "--quiet")[0] == 0
    assert_one_line(odiag("model-card", "r", "--out", "r"), "--out r: is a directory; give a file, e.g. r/model-index.yaml")
    assert_one_line(odiag("leaderboard", "r", "--out", "r"), "--out r: is a run directory; give the site a directory of its own")
    assert_one_line(odiag("demo", "--site", "r", "--out", "d"), "--site r: is a run directory")
    for argv in (("run", "--out", "s"), ("plan",)):
        assert_one_line(odiag(*argv, "--set", "data_files=x.jsonl"), "task 'synthetic' generates its questions: data_files does not apply")
        assert_one_line(odiag(*argv, "--set", "student_revision=abc"),
                        "key 'student_revision' pins a hub model's revision, and the synthetic student has no revisions")


def test_nothing_is_written_into_a_run_directory_but_the_run(odiag, tmp_path):
    """A model card or a page never replaces a run's files or lands inside its folders; a demo's site is
    refused before the run when it is the run's own --out or lies in it; --config and --out given twice
    are refused, not the first silently dropped."""
    assert odiag("run", "--set", "limit=2", "--out", "r", "--quiet")[0] == 0
    for out in ("r/config.json", "r/results.json", "r/shards/card.md"):
        assert_one_line(odiag("model-card", "r", "--out", out), f"--out {out}: lies in the run directory", "outside the run")
    assert_one_line(odiag("leaderboard", "r", "--out", "r/shards/site"), "--out r/shards/site: lies in the run directory")
    (tmp_path / "into-shards").symlink_to(tmp_path / "r" / "shards")  # a link into the run: where it leads counts
    assert_one_line(odiag("leaderboard", "r", "--out", "into-shards"), "--out into-shards: lies in the run directory")
    assert_one_line(odiag("model-card", "r", "--out", "into-shards/card.md"), "lies in the run directory")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "figures").write_text("notes")  # found once the run and its figures were done
    assert_one_line(odiag("leaderboard", "r", "--out", "site"), "--out site: holds a file named figures")
    # d does not exist yet: it is the run's own directory, not "a run directory"
    assert_one_line(odiag("demo", "--out", "d", "--site", "d"), "--site d: is the run's own directory; give the site a")
    assert_one_line(odiag("demo", "--out", "d", "--site", "d/site"), "--site d/site: lies in the run's own directory d; give")
    (tmp_path / "real").mkdir()
    (tmp_path / "runs").symlink_to(tmp_path / "real")  # the run named through a link, the site through its target
    assert_one_line(odiag("demo", "--out", "runs/d", "--site", "real/d/site"), "--site real/d/site: lies in the run's own")
    (tmp_path / "a.yaml").write_text("limit: 1\n")
    assert_one_line(odiag("run", "--config", "a.yaml", "--config", "a.yaml", "--out", "x"), "argument --config: given twice")
    assert_one_line(odiag("plan", "--config", "a.yaml", "--config", "a.yaml"), "argument --config: given twice")
    assert_one_line(odiag("run", "--out", "x", "--out", "y"), "argument --out: given twice; give it once (see")
    for argv in (["model-card", "r", "--out", "c1", "--out", "c2"], ["leaderboard", "r", "--out", "s1", "--out", "s2"],
                 ["demo", "--out", "d1", "--out", "d2"], ["demo", "--site", "s1", "--site", "s2"],
                 ["validate", "r", "--seeds", "1", "--seeds", "2"], ["validate", "r", "--teachers", "a", "--teachers", "b"]):
        assert_one_line(odiag(*argv), f"argument {argv[-2]}: given twice")
    assert odiag("model-card", "r", "--out", "card.md")[0] == 0 and (tmp_path / "card.md").is_file()
