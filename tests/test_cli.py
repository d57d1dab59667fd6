"""What the command line shows a user (tier 1, plus tier 2 subprocess runs marked slow): live
progress, ``--version``, ``run --help`` generated from `RunConfig`, ``ls``, the terminal summary,
and ``odiag eval`` as ``lm_eval`` with odiag's tasks (passthrough and the refusals)."""

import dataclasses
import io
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pytest

from harness import __version__
from harness.cli import build_parser, main
from harness.config import ConfigError, RunConfig, field_docs, field_rules
from harness.discover import model_size, task_rows, teacher_rows
from harness.progress import Phases, PhaseProgress, Reporter, RunFinished, RunStarted, describe, eta, window_tokens, window_weights
from harness.report import no_decision_reason, summary_table

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STUDENT = ROOT / "harness" / "toy_models" / "student"
needs_toy = pytest.mark.skipif(not (STUDENT / "config.json").exists(), reason="toy models not built (python -m harness.toy)")


# discoverability --------------------------------------------------------------------------------


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"odiag {__version__}"


def test_run_help_lists_every_config_key_with_type_default_doc_and_allowed_values(capsys):
    """The epilog is `harness.config.field_docs` and `field_rules` of RunConfig, field by field."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = capsys.readouterr().out
    docs, rules = field_docs(RunConfig), field_rules(RunConfig)
    assert list(docs) == [f.name for f in dataclasses.fields(RunConfig)]
    for name, field in docs.items():
        assert field.doc, f"RunConfig.{name} has no doc"
        entry = re.search(rf"^  {name} \((.+?), default (.+?)\)\n((?:      .*\n?)+)", text, re.M)
        assert entry, f"{name} missing from odiag run --help"
        assert entry.group(1) == field.type
        body = " ".join(entry.group(3).split())
        assert body.startswith(field.doc), name
        if rules[name]:
            assert body.endswith(f"allowed: {rules[name]}"), name
    assert "  limit (int | None, default 8)" in text
    assert re.search(r"^  teachers \(list\[str\], default \[synthetic-helpful, synthetic-misleading\]\)$", text, re.M)


def test_ls_tasks_and_teachers(capsys):
    assert main(["ls", "tasks"]) == 0
    out = capsys.readouterr().out
    for name in ["synthetic", *(p.stem for p in (ROOT / "tasks").glob("*.yaml"))]:
        assert re.search(rf"^{name}\s", out, re.M), name
    assert main(["ls", "teachers"]) == 0
    out = capsys.readouterr().out
    for path in (ROOT / "teachers").glob("*.yaml"):
        assert re.search(rf"^{path.stem}\s", out, re.M), path.stem
    rows = {r["teacher"]: r for r in teacher_rows()}
    assert rows["qwen3-14b"]["model"] == "Qwen/Qwen3-14B (14B)"
    assert rows["self-sum-1c"]["summariser"] == "Qwen/Qwen3-32B (32B)"
    assert rows["self-1c1w"]["solutions"] == "1 correct + 1 wrong (the student's own)"
    assert rows["self-1c-32b"]["solutions"].startswith("1 correct (by Qwen/Qwen3-32B (32B)")
    assert rows["toy-self-sum-1c"]["summariser"] == "toy-summary (text function)"
    assert rows["toy-teacher"]["model"] == "harness/toy_models/teacher (448k)"
    assert {r["task"]: r for r in task_rows()}["odiag_aime25"]["max_new_tokens"] == "30,000"
    assert model_size("Qwen/Qwen3-0.6B") == "0.6B" and model_size("gpt2") == ""


def test_ls_lists_an_unreadable_task_or_teacher_file_as_such(tmp_path, monkeypatch, capsys):
    """A user's malformed YAML among the tasks or teachers is listed with why it cannot be read; the
    others are still listed (it was a traceback, or a refusal of the whole listing)."""
    import harness.tasks
    import harness.teachers

    tasks, teachers = tmp_path / "tasks", tmp_path / "teachers"
    tasks.mkdir(), teachers.mkdir()
    (tasks / "odiag_toy.yaml").write_text((ROOT / "tasks" / "odiag_toy.yaml").read_text())
    (tasks / "odiag_broken.yaml").write_text("task: odiag_broken\ndataset_path: [\n")
    (tasks / "odiag_short.yaml").write_text("task: odiag_short\ndataset_path: x\n")  # no max_gen_toks
    (teachers / "self-1c.yaml").write_text((ROOT / "teachers" / "self-1c.yaml").read_text())
    (teachers / "typo.yaml").write_text("model: student\ntemprature: 0.5\n")
    monkeypatch.setattr(harness.tasks, "TASKS_DIR", tasks)
    monkeypatch.setattr(harness.teachers, "TEACHER_DIR", teachers)
    rows = {r["task"]: r for r in task_rows()}
    assert rows["odiag_toy"]["max_new_tokens"] != "?" and rows["odiag_short"]["max_new_tokens"] == "?"
    assert rows["odiag_broken"]["description"].startswith("cannot be read: ")
    rows = {r["teacher"]: r for r in teacher_rows()}
    assert rows["self-1c"]["model"] == "the student"
    assert rows["typo"]["description"].startswith("cannot be read: unknown key 'temprature'")
    assert main(["ls", "tasks"]) == 0 and main(["ls", "teachers"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^odiag_broken\s.*cannot be read", out, re.M) and re.search(r"^typo\s.*cannot be read", out, re.M)


def test_a_task_file_that_is_not_read_as_its_task_says_why_under_run_and_ls_alike(tmp_path, monkeypatch, capsys):
    """A task YAML lm-eval would not index under its name (not valid YAML, not UTF-8, empty, another task: key, or
    a file not named odiag_*) is named with its problem by run and plan, and listed with it by ls tasks: it was
    "unknown task" with its own name among the tasks offered, or listed by ls as a task run refused."""
    import harness.tasks
    import harness.tasks.lmeval

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    toy = (ROOT / "tasks" / "odiag_toy.yaml").read_text()
    (tasks / "odiag_toy.yaml").write_text(toy)
    files = {  # name: (content, the refusal's problem, the start of ls's description)
        "odiag_synerr": ("task: odiag_synerr\nfoo: [1,\n", "not valid YAML: expected the node content, but found "
                         "'<stream end>' at line 3", "not valid YAML"),
        "odiag_binary": (b"task: \xff\n", "not UTF-8 text (byte 6)", "not UTF-8 text (byte 6)"),
        "odiag_empty": ("", "empty", "empty"),
        "odiag_mismatch": ("task: odiag_other\n", "task: is 'odiag_other', not 'odiag_mismatch' (a task is "
                           "tasks/odiag_<name>.yaml, its task: key the file's name)", "task: is 'odiag_other'"),
        "mytask": (toy.replace("task: odiag_toy", "task: mytask"), "not read as a task (a task is tasks/odiag_<name>.yaml, "
                   "its task: key the file's name): rename it odiag_mytask.yaml, with task: odiag_mytask", "not read as a task"),
        # lm-eval indexes these; odiag's own settings in them are wrong (ls listed them as runnable)
        "odiag_nometa": (re.sub(r"\n +answer_type: integer", "", toy.replace("task: odiag_toy", "task: odiag_nometa")),
                         "metadata.odiag.answer_type must be one of boolean, choice, integer, got None",
                         "metadata.odiag.answer_type must be"),
        "odiag_typo": (toy.replace("task: odiag_toy", "task: odiag_typo").replace("n_min:", "n_mim:"),
                       "unknown key 'metadata.odiag.n_mim'; did you mean 'n_min'? valid keys are answer_type, n_min, "
                       "thinking, shuffle_seed, description", "unknown key 'metadata.odiag.n_mim'"),
    }
    for name, (content, _, _) in files.items():
        (tasks / f"{name}.yaml").write_bytes(content if isinstance(content, bytes) else content.encode())
    monkeypatch.setattr(harness.tasks, "TASKS_DIR", tasks)
    monkeypatch.setattr(harness.tasks.lmeval, "TASKS_DIR", tasks)
    rows = {r["task"]: r["description"] for r in task_rows()}
    for name, (_, problem, listed) in files.items():
        assert main(["plan", "--config", str(ROOT / "harness" / "demo.yaml"), "--set", f"task={name}"]) == 2
        assert capsys.readouterr().err.strip() == f"odiag: error: --set: task {name!r}: {tasks / name}.yaml: {problem}"
        assert rows[name].startswith(f"cannot be read: {listed}"), rows[name]
    assert rows["odiag_toy"].startswith("toy running sum")
    config = tmp_path / "run.yaml"  # the file that named the task, as for any other key it sets
    config.write_text("task: odiag_nope\n")
    assert main(["plan", "--config", str(config)]) == 2
    assert capsys.readouterr().err.startswith(f"odiag: error: {config}: unknown task 'odiag_nope': available tasks are")


def test_a_task_files_odiag_metadata_is_refused_with_its_value_and_a_close_key(tmp_path, monkeypatch, capsys):
    import harness.tasks
    import harness.tasks.lmeval

    tasks = tmp_path / "tasks"
    shutil.copytree(ROOT / "tasks", tasks)
    toy = (tasks / "odiag_toy.yaml").read_text()
    monkeypatch.setattr(harness.tasks, "TASKS_DIR", tasks)
    monkeypatch.setattr(harness.tasks.lmeval, "TASKS_DIR", tasks)
    for edit, said in (
        (("answer_type: integer", "answer_type: int"), "metadata.odiag.answer_type must be one of boolean, choice, integer, "
                                                       "got 'int'"),
        (("n_min: 20", "n_mn: 20"), "unknown key 'metadata.odiag.n_mn'; did you mean 'n_min'? valid keys are answer_type, "
                                    "n_min, thinking, shuffle_seed, description"),
    ):
        (tasks / "odiag_toy.yaml").write_text(toy.replace(*edit))
        config = ROOT / "harness" / "demo.yaml"  # names the task: its file's settings are read as the config resolves
        assert main(["plan", "--config", str(config)]) == 2
        assert capsys.readouterr().err.strip() == f"odiag: error: {config}: task 'odiag_toy': {tasks / 'odiag_toy.yaml'}: {said}"


def test_a_teacher_typo_lists_the_teachers():
    from harness.teachers import load_teacher

    with pytest.raises(ConfigError, match=r"unknown teacher 'self-1cc': available teachers are .*'self-1c'.*'toy-teacher'"):
        load_teacher("self-1cc")
    with pytest.raises(ConfigError, match=re.escape("; several teachers are a list: teachers=[self-1c, toy-teacher]")):
        load_teacher("self-1c,toy-teacher")  # --set teachers=self-1c,toy-teacher: one name to YAML


# progress ---------------------------------------------------------------------------------------


def _event(**kw) -> PhaseProgress:
    base = dict(phase="targeted rollouts", unit="rollouts", done=500, planned=1000, expected=2000, rollouts=500,
                tokens=25_000, elapsed=10.0, budget=4000, spent=1000, step="window 2/3")
    return PhaseProgress(**{**base, **kw})


def test_a_progress_line_has_rates_eta_and_budget_share():
    line = describe(_event())
    assert line == ("targeted rollouts (window 2/3): 500/~2,000 rollouts (25%), 50 rollouts/s, 2,500 tokens/s, "
                    "ETA ~30 s, 25% of the budget spent (1,000/4,000)")
    assert describe(_event(done=0, tokens=0)) == ("targeted rollouts (window 2/3): ~2,000 rollouts planned so far, "
                                                  "25% of the budget spent (1,000/4,000)")
    # before a batch's first rollout finishes, the tokens its decoding steps reported are the progress
    assert describe(_event(done=0)) == ("targeted rollouts (window 2/3): ~2,000 rollouts planned so far, 25,000 tokens "
                                        "generated (2,500 tokens/s), 25% of the budget spent (1,000/4,000)")
    assert describe(_event(final=True, budget=None, elapsed=125)).startswith("targeted rollouts: done, 500 rollouts, 25,000 tokens in 2 min 05 s")
    # a rate from the first 1% of a phase says nothing of the rest (a vLLM engine ramps up): no ETA yet
    assert describe(_event(done=19)).endswith("rollouts/s, 2,500 tokens/s, 25% of the budget spent (1,000/4,000)")
    assert "ETA" in describe(_event(done=20))
    slow = describe(_event(phase="validate", unit="trainings", done=3, planned=12, expected=12, tokens=0, elapsed=40.0, budget=None, step=""))
    assert slow == "validate: 3/12 trainings (25%), 0.075 trainings/s, ETA 2 min 00 s"  # a slow phase's rate is not "0/s"
    # in its last window a phase planned round by round still cannot count the rounds to come: marked, never exact
    last = dict(planned=1000, expected=1000, step="window 3/3", rounds=True)
    assert describe(_event(done=0, **last)).startswith("targeted rollouts (window 3/3): 1,000 rollouts planned so far,")
    assert describe(_event(done=990, **last)).startswith("targeted rollouts (window 3/3): 990/~1,000 rollouts (99%)")
    assert ", ETA ~0.1 s," in describe(_event(done=990, **last))
    assert describe(_event(done=990, planned=1000, expected=1000, step="")).startswith("targeted rollouts: 990/1,000 rollouts")
    one = dict(phase="fill passes", unit="passes", planned=1, expected=None, rollouts=0, tokens=0, budget=None, step="")
    assert describe(_event(done=0, **one)) == "fill passes: 1 pass planned"  # not "1 passes"
    nothing_yet = dict(planned=0, expected=None, tokens=0, budget=None, rounds=True)
    assert describe(_event(done=0, **nothing_yet)) == "targeted rollouts (window 2/3): planning"  # not "0 rollouts planned"
    assert describe(_event(done=1, final=True, **one)).startswith("fill passes: done, 1 pass in ")


def test_phases_count_plan_and_estimate_later_steps():
    """Work per path seen in planned steps, times the paths of steps not yet entered; capped by the budget."""
    events = []
    phases = Phases(events.append, min_interval=0)

    class Wrapper:
        phase = None

    w = Wrapper()
    with phases.phase("targeted rollouts", w, steps=[10, 10, 5]) as ph:
        assert w.phase is ph
        ph.step(0, "window 1/3")
        ph.plan(100)
        ph.sampled(60, 600)
        assert events[-1].expected == 100 + 10 * 15 and events[-1].done == 60
        ph.sampled(40, 400)
        ph.step(1, "window 2/3")
        assert events[-1].expected == 100 + 10 * 15  # entered, not yet planned: still estimated
        ph.plan(300)
        assert events[-1].expected == 400 + round(400 / 20 * 5)
    assert w.phase is None and events[-1].final and events[-1].tokens == 1000 and events[-1].expected == 100
    with phases.phase("targeted rollouts", w, budget=150, steps=[1, 1, 1]) as ph:
        ph.plan(100)
        ph.sampled(100, 0)
        # uncapped, two more steps at 100 each would make 300; the budget leaves 50
        assert events[-1].expected == 150 and events[-1].spent == 100
    phases.run_finished("somewhere")
    assert [e.phase for e in phases.finals] == ["targeted rollouts"] * 2


def test_loading_the_models_is_counted_apart_from_the_phase_that_first_needs_them(monkeypatch):
    """A backend built on its first request (LazyBackend) loads before the work is planned: the phase's
    time, rates and ETA leave the loading out; the closing lines show it on a row of its own. On a clock
    of the test's own: loading takes 30 s, each sampling call 2 s."""
    from types import SimpleNamespace

    import harness.backends.wrappers as wrappers
    import harness.progress as progress
    from harness.backends.wrappers import CountingBackend, LazyBackend
    from harness.progress import closing_lines

    now = [1000.0]
    clock = SimpleNamespace(monotonic=lambda: now[0])
    monkeypatch.setattr(progress, "time", clock)
    monkeypatch.setattr(wrappers, "time", clock)

    class Slow:
        def sample(self, requests):
            now[0] += 2.0
            return [SimpleNamespace(tokens=[[1, 2]] * r.n) for r in requests]

    def build():
        now[0] += 30.0
        return Slow()

    events = []
    phases = Phases(events.append, min_interval=0)
    backend = CountingBackend(LazyBackend(build))
    with phases.phase("initial rollouts", backend):
        backend.sample([SimpleNamespace(n=4, model="student")])
        backend.sample([SimpleNamespace(n=4, model="student")])  # built once
    phases.run_finished("somewhere")
    first_planned = next(e for e in events if isinstance(e, PhaseProgress) and e.planned)
    final, finished = events[-2], events[-1]
    assert first_planned.elapsed == 0.0  # planned after the loading, on a clock that left it out
    assert final.final and final.planned == 8 and final.tokens == 16 and final.elapsed == 4.0
    assert finished.loading == 30.0 and finished.elapsed == 34.0
    lines = closing_lines([finished])
    assert lines[1].split() == ["loading", "models", "30", "s", "0", "0"] and lines[2].startswith("initial rollouts")

    # a phase planned whole before its calls (plan_ahead: the initial rollouts in bounded calls) is planned once
    # its first call has loaded the models, whole: loading is logged before the phase's first line
    events.clear()
    backend = CountingBackend(LazyBackend(lambda: events.append("built") or build()))
    with Phases(events.append, min_interval=0).phase("initial rollouts", backend):
        backend.plan_ahead(8)
        backend.sample([SimpleNamespace(n=4, model="student")])
        backend.sample([SimpleNamespace(n=4, model="student")])
    planned = [e for e in events if isinstance(e, PhaseProgress) and e.planned]
    assert events.index("built") < events.index(planned[0]) and {e.planned for e in planned} == {8}


def test_vllm_completion_bar_reports_each_request_with_its_tokens_and_draws_nothing(capsys):
    """Used the way vLLM's ``_run_engine`` uses its ``use_tqdm`` callable (vLLM itself is not needed): it gives the
    bar its running count of output tokens only as that count over the bar's elapsed seconds, rounded to two
    decimals. The bar hears each request's own tokens, and the call's last report settles what it did not."""
    from harness.backends.vllm import completion_bar

    heard, reported = [], [0]
    bar = completion_bar(lambda n, tokens: heard.append((n, tokens)), reported)(
        total=3, desc="Processed prompts", dynamic_ncols=True, postfix=f"est. speed input: {0:.2f} toks/s, output: {0:.2f} toks/s")
    total_in, total_out = 0, 0
    for n, prompt, out in [(1, 40, 17), (2, 40, 1234), (1, 3, 5)]:
        total_in, total_out = total_in + prompt * n, total_out + out
        in_spd, out_spd = total_in / bar.format_dict["elapsed"], total_out / bar.format_dict["elapsed"]
        bar.postfix = f"est. speed input: {in_spd:.2f} toks/s, output: {out_spd:.2f} toks/s"
        bar.update(n)
    if bar.n == 3:
        bar.refresh()
    bar.close()
    assert heard == [(1, 17), (2, 1234), (1, 5)] and reported == [1256]
    # a bar told no speed reports completions alone, and the call's end reports the tokens
    heard.clear()
    silent = completion_bar(lambda n, tokens: heard.append((n, tokens)))(total=1, desc="Processed prompts")
    silent.update(1)
    silent.close()
    assert heard == [(1, 0)]
    assert capsys.readouterr() == ("", "")


def test_window_weights_count_paths_by_the_share_of_a_first_window_they_cover():
    spans = [(0, 50), (50, 150), (150, 350)]
    assert window_weights([66, 300, 20], spans) == [2 + 20 / 50, 16 / 50 + 1, 1]
    # weighted by a rollout's tokens there: the path's length less the mean depth of the positions it covers, less
    # the forced token
    assert window_tokens([66, 300, 20], spans) == pytest.approx([
        (66 - 49 / 2 - 1) + (300 - 49 / 2 - 1) + 20 / 50 * (20 - 19 / 2 - 1),
        16 / 50 * (66 - (50 + 65) / 2 - 1) + (300 - (50 + 149) / 2 - 1),
        300 - (150 + 299) / 2 - 1,
    ])


def test_the_eta_counts_the_tokens_left_at_the_tokens_per_second_so_far(monkeypatch):
    """A rollout forced deep into a path generates fewer tokens than one near its start: rollouts/s rises through
    the targeted phase while tokens/s holds, and an ETA by rollouts ran about twice too long. The ETA is the
    tokens left at the tokens/s so far: of the planned round, its own estimate less the tokens generated (here
    200 rollouts, 20,000 tokens), giving way as they finish to its rollouts left at its mean estimate; of a window
    not yet planned, its estimated rollouts at its tokens per rollout (100 at 20); each scaled by what finished
    windows generated against their estimates."""
    import harness.progress as progress
    from types import SimpleNamespace

    now = [0.0]
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: now[0]))
    events = []
    with Phases(events.append, min_interval=0).phase("targeted rollouts", steps=[2, 1], costs=[100, 20], rounds=True) as ph:
        ph.step(0, "window 1/2")
        ph.plan(200, 20_000)
        now[0] = 10.0
        ph.sampled(100, 10_000)
        ev = events[-1]
        assert ev.expected == 300 and ev.tokens_left == pytest.approx(0.25 * 10_000 + 0.75 * 100 * 100 + 100 * 20)
        assert eta(ev) == pytest.approx(12.0)  # by rollouts alone: 200 more at 10/s, 20 s
        assert describe(ev).endswith("ETA ~12 s")
        assert eta(ev, 15.0) == pytest.approx(18.0)  # nothing heard for 5 s: the rate so far falls
        ph.sampled(100, 12_000)  # the window generated 10% more than its estimate
        ph.step(1, "window 2/2")
        assert events[-1].tokens_left == pytest.approx(1.1 * 100 * 20)  # not yet planned: at its tokens per rollout
        ph.plan(100, 3_000)
        now[0] = 22.0
        ph.sampled(50, 1_000)
        left = 0.25 * (1.1 * 3_000 - 1_000) + 0.75 * 50 * 33
        assert events[-1].tokens_left == pytest.approx(left) and eta(events[-1]) == pytest.approx(left / (23_000 / 22.0))

    def ratios(wrong: float) -> list[float]:
        """ETA over the true time left through one round whose estimate is ``wrong`` times its tokens."""
        out = []
        with Phases(events.append, min_interval=0).phase("targeted rollouts", steps=[1], costs=[1000], rounds=True) as ph:
            ph.plan(1000, wrong * 1_000_000)
            for done in range(100, 1000, 100):
                now[0] += 10.0
                ph.sampled(100, 100_000)
                out.append(eta(events[-1]) / ((1000 - done) / 10))
        return out

    for wrong in (1.1, 0.8, 1.5):  # never worse than 1.25 times the estimate's error; that error alone at the end
        assert all(abs(r - 1) <= 1.25 * abs(wrong - 1) + 1e-9 for r in ratios(wrong))
        assert ratios(wrong)[-1] == pytest.approx(wrong, abs=0.1 * abs(wrong - 1))
    # a round planned without an estimate (every rollout complete before any token) costs its step's tokens each
    with Phases(events.append, min_interval=0).phase("targeted rollouts", steps=[1, 1], costs=[100, 50], rounds=True) as ph:
        ph.plan(100, 10_000)
        ph.sampled(100, 10_000)
        ph.step(1, "window 2/2")
        ph.plan(100, 0.0)
        ph.sampled(60, 0)
        assert events[-1].tokens_left == pytest.approx(40 * 50)
    # without estimates, by rollouts
    with Phases(events.append, min_interval=0).phase("targeted rollouts", steps=[2, 1], rounds=True) as ph:
        ph.plan(200)
        now[0] += 10.0
        ph.sampled(100, 10_000)
        assert events[-1].tokens_left is None and eta(events[-1]) == pytest.approx(20.0)


def test_plain_lines_come_at_least_every_interval_even_without_events():
    stream = io.StringIO()
    reporter = Reporter(interval=0.3, stream=stream, tty=False)
    reporter(RunStarted("odiag_toy", 8, 64, 6, "runs/x"))
    reporter(_event(done=0, elapsed=0.0))
    reporter(_event(done=100, elapsed=0.1))  # within the interval: no line
    time.sleep(1.2)  # no event at all: the timer writes the running phase's state
    reporter(_event(final=True))
    reporter(RunFinished("runs/x", (_event(final=True),), 12.0))
    reporter.close()
    lines = stream.getvalue().splitlines()
    assert "odiag: diagnosing 8 of 64 questions of odiag_toy with 6 teachers -> runs/x" in lines[0]
    assert len([x for x in lines if "100/~2,000 rollouts" in x and "ETA" in x]) >= 2
    assert "targeted rollouts: done" in lines[-1]
    closing = reporter.closing_lines()
    assert closing[-1] == "results: runs/x/results.json" and closing[1].startswith("targeted rollouts")


def test_terminal_bars_have_units_and_no_empty_or_prefilled_bar():
    stream = io.StringIO()
    reporter = Reporter(stream=stream, tty=True)
    reporter(_event(phase="artefacts", unit="samples", done=0, planned=0, expected=0, step=""))
    reporter(_event(phase="artefacts", unit="samples", done=0, planned=0, expected=0, step="", final=True))
    assert stream.getvalue() == ""  # a phase with nothing to do draws no bar
    reporter(_event(done=0))
    assert "0/2000" in stream.getvalue() and "100%" not in stream.getvalue()
    reporter(_event(done=2000, final=True))
    reporter.close()
    text = stream.getvalue()
    assert "rollouts/s" in text and "it/s" not in text and "done 1/1" not in text


def test_a_log_line_on_a_terminal_goes_above_the_bars_not_through_them(monkeypatch):
    """A log line while a bar is drawn clears the bar's line first (tqdm.write) and the bar is drawn again
    below it; the console handler is put back when the reporter closes."""
    import logging

    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stderr", terminal)
    handler = logging.StreamHandler(sys.stderr)
    log = logging.getLogger("harness.test_progress")
    logging.root.addHandler(handler)
    try:
        reporter = Reporter(stream=sys.stderr, tty=True)
        reporter(_event(done=100))
        log.warning("a note while the bar is drawn")
        reporter(_event(done=2000, final=True))
        reporter.close()
        assert handler in logging.root.handlers and not handler.filters
        # two reporters closed in the order they were opened: each takes back what it put on the handler
        first, second = Reporter(stream=sys.stderr, tty=True), Reporter(stream=sys.stderr, tty=True)
        first.close()
        second.close()
        assert not handler.filters
    finally:
        logging.root.removeHandler(handler)
    text = terminal.getvalue()
    before = text[: text.index("a note while the bar is drawn")]
    assert "/2000" in before and before.endswith("\r"), repr(text[-300:])  # the bar's line cleared first
    assert "100/2000" in text[text.index("a note"):]  # and drawn again below the note



def test_a_librarys_own_log_handler_configured_after_the_reporter_goes_above_the_bars_too(monkeypatch):
    """vLLM logs through a handler of its own logger (not passed to the root), configured when it is imported,
    which may be after the reporter started: its lines too clear the bar's line first."""
    import logging

    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stderr", terminal)
    log = logging.getLogger("harness.test_progress_library")
    log.propagate = False
    try:
        reporter = Reporter(stream=sys.stderr, tty=True)
        log.addHandler(handler := logging.StreamHandler(sys.stderr))
        reporter(_event(done=100))
        log.warning("a library's note while the bar is drawn")
        reporter(_event(done=2000, final=True))
        reporter.close()
        assert not handler.filters
    finally:
        log.handlers.clear()
        log.propagate = True
    text = terminal.getvalue()
    before = text[: text.index("a library's note")]
    assert "/2000" in before and before.endswith("\r"), repr(text[-300:])
    assert "100/2000" in text[text.index("a library's note"):]

# the terminal summary ---------------------------------------------------------------------------


def _row(teacher, algorithm, mean, rank):
    return {"teacher": teacher, "algorithm": algorithm, "rank": rank, "n_decision_points": 5,
            "alignment": {"mean": mean, "ci95": [mean - 0.1, mean + 0.1], "n_questions": 4},
            "incorrect_minus_correct": {"mean": 0.01, "p_paired": 0.5}, "teacher_advantage": {"mean": 0.02}}


def _results(rows, decision_points=10, questions=()):
    return {"config": {"algorithms": ["gkd", "drgrpo", "jsd"], "n_min": 20}, "teachers": rows,
            "questions": list(questions),
            "counts": {"questions": 4, "paths": 16, "decision_points": decision_points, "rollouts": 1000,
                       "tokens_generated": 9000, "teacher_forward_passes": 32,
                       "skipped_nodes": {"below_n_min": 7, "equal_q": 2}}}


def test_summary_leads_with_the_headline_algorithm_by_teacher():
    rows = [_row("a", "gkd", 0.2, 2), _row("b", "gkd", 0.4, 1), _row("a", "drgrpo", 0.9, 1), _row("b", "drgrpo", 0.9, 1),
            _row("a", "jsd", 0.1, 2), _row("b", "jsd", 0.3, 1)]
    lines = summary_table(_results(rows)).splitlines()
    assert lines[0].startswith("gkd: teachers by mean gradient alignment")
    assert lines[2].split()[:3] == ["1", "b", "+0.400"] and lines[3].split()[:3] == ["2", "a", "+0.200"]
    assert not any(line.startswith("\u2248") for line in lines)  # no tie: no mark, no legend
    # a rank whose CI overlaps another's is marked as the leaderboard page marks it, with a legend
    tied = [{**r, "tied_with": ["a/gkd" if r["teacher"] == "b" else "b/gkd"]} if r["algorithm"] == "gkd" else r for r in rows]
    marked = summary_table(_results(tied)).splitlines()
    assert marked[2].split()[:2] == ["1\u2248", "b"] and marked[3].split()[:2] == ["2\u2248", "a"]
    assert marked[4].startswith("\u2248: its 95% CI overlaps another teacher's") and marked[2].index("+0.400") == lines[2].index("+0.400")
    assert "drgrpo: +0.900 for every teacher (it does not read the teacher)" in lines
    assert sum("drgrpo" in x for x in lines) == 1 and any(x.split()[-1:] == ["jsd"] for x in lines)
    # a loss that reads the teacher but measured the same for both is not said to ignore the teacher
    same = summary_table(_results([*rows[:4], _row("a", "jsd", 1.0, 1), _row("b", "jsd", 1.0, 1)])).splitlines()
    assert "jsd: +1.000 for every teacher (it reads the teacher; here every teacher scored alike)" in same
    assert lines[-1] == ("4 questions, 16 paths, 10 decision points, 1,000 rollouts, 9,000 tokens generated in the tree, "
                         "32 teacher forward passes")
    # a teacher named longer than the column: the column widens, every row's numbers stay aligned
    long = "self-distillation-with-two-correct-solutions"
    wide = summary_table(_results([_row(long, "gkd", 0.2, 2), _row("b", "gkd", 0.4, 1), _row(long, "jsd", 0.1, 2),
                                   _row("b", "jsd", 0.3, 1)])).splitlines()
    header, first, second = wide[1], wide[2], wide[3]
    assert header.index("alignment") + len("alignment") == first.index("+0.400") + 6 == second.index("+0.200") + 6
    other = wide.index("other algorithms, mean alignment:")
    assert wide[other + 1].index("jsd") + 3 == wide[other + 2].index("+0.300") + 6 == wide[other + 3].index("+0.100") + 6
    # wide characters take two columns on a terminal: the numbers after them stay in their column
    cjk = "hélpful teacher 名字"
    wide = summary_table(_results([_row(cjk, "gkd", 0.2, 2), _row("b", "gkd", 0.4, 1)])).splitlines()
    columns = [sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line[:line.index("+0.")]) for line in wide[2:4]]
    assert columns[0] == columns[1], wide[1:4]
    one = _results(rows, decision_points=1)
    one["counts"] |= {"questions": 1, "paths": 1, "rollouts": 1, "tokens_generated": 1, "teacher_forward_passes": 1}
    assert summary_table(one).splitlines()[-1] == (
        "1 question, 1 path, 1 decision point, 1 rollout, 1 token generated in the tree, 1 teacher forward pass")
    # the student's passes are named apart, so the footer adds up to the closing table's teacher phase
    one["counts"] |= {"teacher_forward_passes": 48, "student_forward_passes": 8}
    assert summary_table(one).splitlines()[-1].endswith("in the tree, 48 teacher and 8 student forward passes")


def test_no_decision_point_is_explained_in_one_line_with_counts():
    questions = [{"note": "only correct rollouts among 64"}, {"note": ""}, {"note": "only incorrect rollouts among 64"}, {"note": ""}]
    text = summary_table(_results([{"teacher": "a", "algorithm": "gkd", "rank": None, "n_decision_points": 0}], 0, questions))
    first = text.splitlines()[0]
    assert first == no_decision_reason(_results([], 0, questions))
    assert first.startswith("no decision point: 4 questions, 1 with only correct and 1 with only incorrect initial rollouts, "
                            "7 nodes with a second child below n_min=20 visits, 2 with equal Q on every child")
    assert "nan" not in text
    # a run that left n_min to its task names the value it applied, which it stores with its counts
    default = _results([], 0, questions)
    default["config"]["n_min"] = None
    assert "below n_min visits" in no_decision_reason(default)
    default["counts"]["n_min"] = 16
    assert "below n_min=16 visits" in no_decision_reason(default)
    # the hint names what brings a child to n_min under the run's strategy
    for strategy, fix in ((None, "raise budget or n_target, or lower n_min"), ("paper", "budget or n_target"),
                          ("survey", "raise budget or survey_visits, or lower n_min"),
                          ("settle", "(raise budget, or lower n_min)")):
        results = _results([], 0, questions)
        results["config"]["strategy"] = strategy
        assert fix in no_decision_reason(results), strategy
    # every rollout cut off: said as such, with what lets such questions have paths (not "use easier questions")
    cut = _results([], 0, [{"note": "no paths among 4 rollouts (4 truncated or unparseable, not used as incorrect paths)"}] * 2)
    cut["counts"]["skipped_nodes"] = {}
    assert no_decision_reason(cut) == (
        "no decision point: 2 questions, 2 whose initial rollouts were all truncated or unparseable, 0 nodes with a second "
        "child below n_min=20 visits (raise max_new_tokens, or count truncated and unparseable rollouts as incorrect with "
        "incorrect_outcomes)")


def test_a_run_without_decision_points_counts_why_per_node(tmp_path):
    """Nodes with a second visited child that are no decision point are counted by reason; with an
    unreachable n_min every such node is below it and the summary says so instead of nan rows."""
    from harness.config import resolve_run_config
    from harness.pipeline import run
    from harness.tasks import load_task

    results = run(resolve_run_config(None, ["limit=2", "n_min=1000000", "algorithms=[gkd]"]), tmp_path / "run")
    skipped = results["counts"]["skipped_nodes"]
    assert results["counts"]["decision_points"] == 0
    assert skipped["below_n_min"] > 0 and skipped["equal_q"] == 0
    first = summary_table(results).splitlines()[0]
    assert first.startswith("no decision point: 2 questions") and f"{skipped['below_n_min']} nodes with a second child" in first
    assert "below n_min=1000000 visits" in first and results["counts"]["n_min"] == 1000000
    reached = run(resolve_run_config(None, ["limit=2", "algorithms=[gkd]"]), tmp_path / "reached")
    assert reached["counts"]["decision_points"] > 0 and reached["counts"]["skipped_nodes"]["below_n_min"] > 0
    assert reached["config"]["n_min"] is None and reached["counts"]["n_min"] == load_task("synthetic").n_min


def test_run_rescore_and_add_teacher_report_progress(tmp_path):
    """One callback for every entry point: a run's phases with its rollouts, then a rescore and an
    added teacher, which draw no rollout and report only the passes they make."""
    from harness.config import resolve_run_config
    from harness.pipeline import add_teacher, rescore, run

    def events(call, *args, **kwargs):
        heard = []
        call(*args, on_progress=heard.append, **kwargs)
        assert isinstance(heard[0], RunStarted) and isinstance(heard[-1], RunFinished)
        return heard[0], [e for e in heard if isinstance(e, PhaseProgress)], heard[-1]

    out = tmp_path / "run"
    started, progress, finished = events(run, resolve_run_config(None, ["limit=2", "algorithms=[gkd]"]), out)
    assert (started.questions, started.teachers) == (2, 2)
    finals = {e.phase: e for e in finished.phases}
    assert list(finals) == ["initial rollouts", "artefacts", "teacher passes", "targeted rollouts", "records and results"]
    assert finals["initial rollouts"].rollouts == 2 * RunConfig().n_initial
    # the node records and aggregates (minutes for many questions and teachers) are a phase, path by path
    paths = json.loads((out / "results.json").read_text())["counts"]["paths"]
    assert finals["records and results"].done == finals["records and results"].planned == paths > 0
    assert finals["teacher passes"].done == finals["teacher passes"].planned > 0
    assert finals["targeted rollouts"].rollouts > 0
    assert any(e.step.startswith("window 1/") for e in progress if e.phase == "targeted rollouts")
    # its rounds are planned one by one: every total it reports is an estimate, the others' are counts
    assert all(e.rounds == (e.phase == "targeted rollouts") for e in progress)

    _, _, finished = events(rescore, out, ["jsd_beta=0.9"])
    # everything read from the run directory: no rollout, no pass (only its records made anew)
    assert sum(e.rollouts + e.done for e in finished.phases if e.phase != "records and results") == 0

    added = tmp_path / "helpful-copy.yaml"
    added.write_text((ROOT / "teachers" / "synthetic-helpful.yaml").read_text().replace("description:", "description: a copy,", 1))
    started, _, finished = events(add_teacher, out, str(added))
    finals = {e.phase: e for e in finished.phases}
    assert started.teachers == 3 and sum(e.rollouts for e in finished.phases) == 0
    assert finals["teacher passes"].done == finals["teacher passes"].planned > 0


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(tmp_path):
    """`odiag run | head -1`: the summary's write fails once the reader is gone; the run is finished and
    kept, and the command ends with the status of a closed pipe (141), not an error blaming the run."""
    out = tmp_path / "run"
    proc = subprocess.Popen([BIN / "odiag", "run", "--out", out, "--set", "limit=2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the summary is written
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert "error" not in err and "Exception" not in err and (out / "results.json").is_file()


def test_an_ascii_locale_gets_escapes_not_a_traceback(tmp_path):
    """Under LC_ALL=C (stdout in ASCII) the help, the task list, a run's summary and the leaderboard's files
    are written: what the terminal cannot show is escaped on it, and files are UTF-8 whatever the locale."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "LANG", "LC_CTYPE")}
    env.update(LC_ALL="C", PYTHONUTF8="0")
    (tmp_path / "another.yaml").write_text("description: a second misleading teacher, named \u00a7 3\nmodel: misleading\n",
                                           encoding="utf-8")
    for command in (["run", "--help"], ["ls", "tasks"], ["run", "--out", "r", "--set", "limit=2"],
                    ["add-teacher", "r", "another.yaml"], ["leaderboard", "r", "--out", "site"]):
        done = subprocess.run([BIN / "odiag", *command], cwd=tmp_path, env=env, capture_output=True, timeout=300)
        assert done.returncode == 0, (command, done.stderr.decode(errors="replace")[-2000:])
    listed = subprocess.run([BIN / "odiag", "ls", "tasks"], env=env, capture_output=True, timeout=60).stdout
    assert b"SPEC \\xa7" in listed  # the section sign, escaped
    html = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "\u00b1" in html and "\\xb1" not in html  # a plus-minus sign, as itself


def test_a_path_whose_bytes_are_not_utf8_is_written_back_as_it_came(tmp_path):
    """A run directory named with a byte that is not UTF-8, on a UTF-8 terminal (stdout strict): the run's
    closing lines, a refusal naming it and a leaderboard of it failed with a traceback."""
    import os

    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUTF8": "0"}
    odiag = lambda *a: subprocess.run([BIN / "odiag", *a], cwd=tmp_path, env=env, capture_output=True, timeout=300)  # noqa: E731
    done = odiag("run", "--out", b"bad\xffrun", "--set", "limit=2")
    assert done.returncode == 0 and b"bad\xffrun/results.json" in done.stdout, done.stderr[-2000:]
    refused = odiag("rescore", b"bad\xffmissing")
    assert refused.returncode == 2 and refused.stderr.startswith(b"odiag: error: ") and b"bad\xffmissing" in refused.stderr, \
        refused.stderr
    assert len(refused.stderr.splitlines()) == 1
    site = odiag("leaderboard", b"bad\xffrun", "--out", "site")
    assert site.returncode == 0, site.stderr[-2000:]
    assert "bad\\xffrun" in (tmp_path / "site" / "index.html").read_bytes().decode("utf-8")  # valid UTF-8, the byte shown


def test_a_suggested_command_pastes_into_a_shell_as_it_reads(tmp_path):
    """A run directory named with a space and a dollar: the command a refusal suggests is quoted, and
    pasted into a shell it finishes the run (unquoted, the shell split the name and expanded $x)."""
    import shlex

    done = subprocess.run([BIN / "odiag", "run", "--out", "my run $x", "--set", "limit=2"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (tmp_path / "my run $x" / "results.json").unlink()
    refused = subprocess.run([BIN / "odiag", "rescore", "my run $x"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "odiag run --config 'my run $x/config.yaml' --out 'my run $x'" in refused.stderr, refused.stderr
    pasted = refused.stderr[refused.stderr.index("odiag run --config"):].split(" (its ")[0]
    again = subprocess.run(["bash", "-c", f"{shlex.quote(str(BIN / 'odiag'))} {pasted.removeprefix('odiag ')} -q"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and (tmp_path / "my run $x" / "results.json").is_file(), again.stderr[-2000:]


@needs_toy
def test_a_home_relative_student_in_a_config_file_is_the_users_home(tmp_path):
    """``student: ~/stud`` in a YAML file reaches odiag unexpanded (the shell expands only the command line):
    it is recorded as written and loaded from the user's home (the tokenizer got '~/stud' and refused it)."""
    import os
    import shutil

    shutil.copytree(STUDENT, tmp_path / "home" / "stud")
    (tmp_path / "run.yaml").write_text("task: odiag_toy\nbackend: hf\nstudent: ~/stud\ndtype: float32\nlimit: 1\n"
                                       "threads: 1\nteachers: [toy-self-1c]\nalgorithms: [gkd]\nn_initial: 8\nbudget: 100\n")
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    done = subprocess.run([BIN / "odiag", "run", "--config", "run.yaml", "--out", "r", "-q"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "r" / "results.json").read_text())["config"]["student"] == "~/stud"


@pytest.mark.parametrize("command", [["run", "--out", "x"], ["demo"], ["rescore", "x"], ["add-teacher", "x", "t.yaml"],
                                     ["validate", "x"]])
def test_every_quiet_command_takes_q_for_quiet(command):
    assert build_parser().parse_args([*command, "-q"]).quiet
    assert not build_parser().parse_args(command).quiet


@needs_toy
def test_a_quiet_run_prints_nothing(tmp_path):
    """--quiet: no progress, no summary, and no log line (the model loading note included)."""
    sets = ["task=odiag_toy", "backend=hf", f"student={STUDENT}", "dtype=float32", "limit=1", "threads=1",
            "teachers=[toy-self-1c]", "algorithms=[gkd]", "n_initial=8", "budget=100"]
    cmd = [BIN / "odiag", "run", "--out", tmp_path / "run", "--quiet", *[x for s in sets for x in ("--set", s)]]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and (tmp_path / "run" / "results.json").is_file(), done.stderr[-3000:]
    assert (done.stdout, done.stderr) == ("", "")


@needs_toy
@pytest.mark.slow
def test_a_piped_run_prints_periodic_progress_with_rate_and_eta(tmp_path):
    """The toy task on the hf backend, output in a pipe: during the targeted phase, lines with
    rollouts/s and an ETA at least every interval, from inside the backend calls (done moves within
    one window's round); the first line says how many questions of how many; the last lines say
    wall time per phase and where the results are."""
    sets = ["task=odiag_toy", "backend=hf", f"student={STUDENT}", "dtype=float32", "limit=2", "threads=1",
            "teachers=[toy-self-1c]", "algorithms=[gkd]", "n_initial=16", "budget=1000"]
    cmd = [BIN / "odiag", "run", "--out", tmp_path / "run", "--progress-interval", "0.2",
           *[x for s in sets for x in ("--set", s)]]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    err = done.stderr.splitlines()
    progress = [x for x in err if re.match(r"\[\s*[\d.]+s\] ", x)]
    assert "odiag: diagnosing 2 of 64 questions of odiag_toy with 1 teacher" in progress[0]
    targeted = [x for x in progress if x.split("] ", 1)[1].startswith("targeted rollouts (window")]
    periodic = [x for x in targeted if "rollouts/s" in x and "ETA" in x and "tokens/s" in x and "% of the budget spent" in x]
    assert len(periodic) >= 2, "\n".join(progress)
    stamps = [float(re.match(r"\[\s*([\d.]+)s\]", x).group(1)) for x in targeted]
    assert max(b - a for a, b in zip(stamps, stamps[1:])) < 5  # never silent for long
    done_counts = [int(re.search(r": ([\d,]+)/", x).group(1).replace(",", "")) for x in periodic]
    assert len(set(done_counts)) >= 2  # done moves between lines: reports from inside backend calls
    assert any(x.split("] ", 1)[1].startswith("targeted rollouts: done") for x in progress)
    out = done.stdout.splitlines()
    assert out[-1] == f"results: {tmp_path / 'run'}/results.json"
    assert any(x.startswith("targeted rollouts") and " s " in x for x in out[-7:])
    assert not any("it/s" in x for x in progress) and "Loading weights" not in done.stderr


# odiag eval: lm-eval parity ---------------------------------------------------------------------


lm_eval = pytest.importorskip("lm_eval")

from harness.lmeval_bridge import TASKS_DIR, DiagnosticTask, check_eval_options, generation_settings, lm_eval_argv  # noqa: E402


def test_eval_arguments_gain_the_include_path_after_the_subcommand():
    inc = ["--include_path", str(TASKS_DIR)]
    assert lm_eval_argv(["run", "--tasks", "odiag_toy"]) == ["run", *inc, "--tasks", "odiag_toy"]
    assert lm_eval_argv(["--tasks", "odiag_toy"]) == ["run", *inc, "--tasks", "odiag_toy"]  # lm_eval's legacy form
    assert lm_eval_argv(["ls", "tasks"]) == ["ls", *inc, "tasks"]
    assert lm_eval_argv(["validate", "--tasks", "odiag_toy"]) == ["validate", *inc, "--tasks", "odiag_toy"]
    assert lm_eval_argv(["--help"]) == ["--help"] and lm_eval_argv([]) == [] and lm_eval_argv(["run"]) == ["run"]
    assert lm_eval_argv(["run", "--include_path", "x", "--tasks", "t"]) == ["run", "--include_path", "x", "--tasks", "t"]


@pytest.mark.parametrize("flags, needle", [
    (["--num_fewshot", "3"], "--num_fewshot 3"),
    (["--apply_chat_template"], "--apply_chat_template"),
    (["--system_instruction", "be brief"], "--system_instruction"),
    (["--gen_kwargs", "top_p=0.9"], "--gen_kwargs top_p=0.9"),
    (["--gen_kwargs", "do_sample=False"], "--gen_kwargs do_sample=False"),
    # a cached request carries the settings of the command that wrote it: a second command ran the first's
    (["--cache_requests", "true"], "--cache_requests: odiag's requests carry the run's settings"),
])
def test_options_odiag_cannot_honour_are_refused(flags, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        check_eval_options(lm_eval_argv(["--tasks", "odiag_toy", "--model", "hf", *flags]))
    check_eval_options(lm_eval_argv(["--tasks", "hellaswag", "--model", "hf", *flags]))  # other tasks keep them


@pytest.mark.parametrize("metadata, needle", [
    ({"teachers": ["toy-self-1c"], "n_initail": 8}, "--metadata: unknown key 'n_initail'; did you mean 'n_initial'?"),
    ({"teachers": ["toy-self-1c"], "n_initial": -8}, "--metadata: key 'n_initial' must be >= 2, got -8"),
    ({"teachers": ["no-such-teacher"]}, "unknown teacher 'no-such-teacher'"),
    ({"limit": 3}, "--metadata: key 'limit' is set by"),
    ({"teachers": ["toy-self-1c"], "site": str(ROOT / "README.md")}, "--metadata: site " + str(ROOT / "README.md")
     + ": exists and is not a directory"),
    ({"teachers": ["toy-self-1c"], "out": str(ROOT / "README.md")}, "--metadata: key 'out' " + str(ROOT / "README.md")
     + ": exists and is not a directory"),
    ({"teachers": ["toy-self-1c"], "out": str(ROOT / "README.md" / "run")}, "--metadata: key 'out' "
     + str(ROOT / "README.md" / "run") + f": lies under {ROOT / 'README.md'}, which is not a directory"),
    ({"teachers": ["toy-self-1c"], "out": ""}, "--metadata: key 'out' must be a directory path, got '' (leave it out for "
     "the default runs/lmeval/<task>-<config hash>)"),
    ({"teachers": ["toy-self-1c"], "site": 3}, "--metadata: key 'site' must be a directory path, got 3"),
    # a model's argument is read from --model_args alone: in --metadata it was recorded by lm-eval, and not used
    ({"teachers": ["toy-self-1c"], "pretrained": "/x"}, "--metadata key 'pretrained' is an argument of the model: give "
     "it in --model_args"),
    ({"teachers": ["toy-self-1c"], "odiag": {"answer_type": "boolean"}}, "--metadata key 'odiag': the task's own "
     "settings (answer type, n_min, ...) are its YAML's"),
    ({"teachers": ["toy-self-1c"], "student_args": {"bogus": 1}}, "--metadata key student_args: unknown key 'bogus' for "
     "the hf backend"),
    ({"teachers": ["toy-self-1c"], "out": "/proc/odiag-run"}, "--metadata: key 'out' /proc/odiag-run: cannot write in "
     "/proc"),
])
def test_metadata_odiag_cannot_use_is_refused_before_a_model_loads(metadata, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        check_eval_options(lm_eval_argv(["--tasks", "odiag_toy", "--model", "hf", "--metadata", json.dumps(metadata)]))
    check_eval_options(lm_eval_argv(["--tasks", "hellaswag", "--model", "hf", "--metadata", json.dumps(metadata)]))
    # odiag's own task YAMLs name no teachers: without them in --metadata the run is refused before a model loads
    with pytest.raises(ConfigError, match=re.escape("--metadata: odiag needs its teachers")):
        check_eval_options(lm_eval_argv(["--tasks", "odiag_toy", "--metadata", json.dumps({"n_initial": 8})]))
    # a task directory of the user's may add them in its YAML's metadata, merged in later: only the task requires them
    check_eval_options(lm_eval_argv(["--tasks", "odiag_toy", "--include_path", str(TASKS_DIR.parent / "elsewhere"),
                                     "--metadata", json.dumps({"n_initial": 8})]))


def test_a_model_lm_eval_has_but_odiag_cannot_run_under_is_refused_before_it_loads():
    """Another model class, or a subclass of lm-eval's hf model (which inherits the diagnostic's method); the hf
    model's own aliases are lm-eval's hf model, whose student_args are checked as hf's."""
    for model in ("dummy", "steered"):
        with pytest.raises(ConfigError, match=re.escape(f"task odiag_toy: --model {model}: odiag's diagnostic runs under "
                                                        "lm-eval's hf and vllm models only")):
            check_eval_options(lm_eval_argv(["--tasks", "odiag_toy", "--model", model, "--metadata", '{"teachers": ["x"]}']))
    with pytest.raises(ConfigError, match=re.escape("--metadata key student_args: unknown key 'bogus' for the hf backend")):
        check_eval_options(lm_eval_argv(["--tasks", "odiag_toy", "--model", "hf-auto", "--metadata",
                                         '{"teachers": ["toy-self-1c"], "student_args": {"bogus": 1}}']))


def test_a_temperature_vllm_cannot_sample_at_is_refused_before_a_model_loads():
    """vLLM raises temperatures below 0.01 silently; hf samples at any positive one; --metadata's wins."""
    def argv(model, gen, metadata):
        return lm_eval_argv(["--tasks", "odiag_toy", "--model", model, "--gen_kwargs", gen, "--metadata", json.dumps(metadata)])

    with pytest.raises(ConfigError, match="temperature 0.001: vLLM samples at temperatures of at least 0.01"):
        check_eval_options(argv("vllm", "temperature=0.001", {"teachers": ["toy-self-1c"]}))
    check_eval_options(argv("hf", "temperature=0.001", {"teachers": ["toy-self-1c"]}))
    check_eval_options(argv("vllm", "temperature=0.001", {"teachers": ["toy-self-1c"], "temperature": 0.5}))
    with pytest.raises(ConfigError, match="temperature 0.005: vLLM"):
        check_eval_options(argv("vllm", "temperature=0.9", {"teachers": ["toy-self-1c"], "temperature": 0.005}))


def test_lm_eval_options_that_would_be_recorded_and_not_used_are_refused_before_a_model_loads(tmp_path):
    """lm-eval's --seed (odiag's draws follow the run seed), a stop string of --gen_kwargs (responses are judged
    whole), one run directory named for several odiag tasks, and a student lm-eval would fail to build with a
    traceback (a local folder that is not there, a dtype torch lacks) are refused in one line, not ignored."""
    def check(*args, metadata=None):
        check_eval_options(lm_eval_argv(["--model", "hf", *args, "--metadata",
                                         json.dumps({"teachers": ["toy-self-1c"], **(metadata or {})})]))

    for args, metadata, needle in (
        (["--tasks", "odiag_toy", "--seed", "7"], None, "task odiag_toy: --seed 7,7,7,7: odiag's draws are seeded by its "
         "own run seed"),
        (["--tasks", "odiag_toy", "--seed", "3,1234,1234,1234"], None, "--seed 3,1234,1234,1234: "),
        (["--tasks", "odiag_toy", "--gen_kwargs", "until=5"], None, "task odiag_toy: --gen_kwargs until=5: odiag ends a "
         "response at the student's own end-of-turn tokens"),
        (["--tasks", "odiag_boolq", "--gen_kwargs", "until=<|im_end|>"], None, "--gen_kwargs until='<|im_end|>'"),
        (["--tasks", "odiag_toy,odiag_boolq"], {"out": "runs/x"}, "tasks odiag_toy, odiag_boolq: --metadata key 'out' "
         "names one run directory for 2 odiag tasks"),
        (["--tasks", "odiag_toy", "--model_args", f"pretrained={tmp_path / 'gone'}"], None,
         f"--model_args pretrained={tmp_path / 'gone'}: no such directory"),
        (["--tasks", "odiag_toy", "--model_args", "pretrained=org/model,dtype=float33"], None,
         "--model_args dtype=float33: not a torch dtype; give auto, float32, bfloat16 or float16"),
    ):
        with pytest.raises(ConfigError, match=re.escape(needle)):
            check(*args, metadata=metadata)
    check("--tasks", "odiag_toy", "--seed", "7", metadata={"seed": 7})  # the run's own seed given
    check("--tasks", "odiag_toy", "--gen_kwargs", "until=<|im_end|>")  # the YAML's one stop string, as lm-eval reads it
    # a task YAML that names no stop string: lm-eval fills in its own, which the user did not give
    assert generation_settings({"until": ["\n\n"], "max_gen_toks": 8}, {}, "task t", {}, given=False) == {"max_new_tokens": 8}
    with pytest.raises(ConfigError, match=re.escape("task t: --gen_kwargs until=['\\n\\n']")):
        generation_settings({"until": ["\n\n"]}, {}, "task t", {})
    check("--tasks", "odiag_toy", "--seed", "0,1234,1234,1234")  # lm-eval's default, spelt out
    check("--tasks", "odiag_boolq", "--gen_kwargs", "max_gen_toks=64")  # the YAML's own stop strings, untouched
    check("--tasks", "odiag_toy,odiag_boolq", "--model_args", "pretrained=org/model,dtype=bfloat16")


def test_several_odiag_tasks_under_one_lm_eval_command_are_planned_before_any_runs(monkeypatch, tmp_path):
    """lm-eval hands every odiag task's requests to one call: one --metadata 'out' for two tasks was found only once
    the first task had run (and the fix it named could not be given); one 'site' showed the last task alone."""
    from types import SimpleNamespace

    import harness.lmeval_bridge as bridge
    import harness.leaderboard
    import harness.pipeline
    import harness.teachers

    runs, sites = [], []
    task = SimpleNamespace(config=SimpleNamespace(task="t"), metric_names=lambda: [])
    instances = [SimpleNamespace(task_name=name, args=(None, SimpleNamespace(task=task))) for name in ("a", "b")]
    monkeypatch.setattr(bridge, "_doc_index", lambda task, inst: 0)
    monkeypatch.setattr(bridge, "_odiag_task", lambda *a: None)
    monkeypatch.setattr(bridge, "_backend", lambda *a: None)
    monkeypatch.setattr(bridge, "_read_nodes", lambda *a: {})
    monkeypatch.setattr(bridge, "question_records", lambda *a: {})
    monkeypatch.setattr(harness.teachers, "load_teacher", lambda name: SimpleNamespace(name=name))
    monkeypatch.setattr(harness.pipeline, "run", lambda cfg, out, **k: runs.append(str(out)) or {
        "counts": {"decision_points": 1}, "questions": []})
    monkeypatch.setattr(harness.leaderboard, "build", lambda outs, site, _: sites.append((list(outs), site)))
    lm = type("HFLM", (), {})()
    cfg = RunConfig(teachers=("x",))

    monkeypatch.setattr(bridge, "run_config", lambda task, lm, n: (cfg, {"out": str(tmp_path / "one")}))
    with pytest.raises(ConfigError, match=re.escape("tasks a, b: --metadata key 'out' names one run directory for 2")):
        bridge._diagnose(lm, instances)
    assert runs == []
    monkeypatch.setattr(bridge, "run_config", lambda task, lm, n: (cfg, {"site": str(tmp_path / "site")}))
    bridge._diagnose(lm, instances)
    assert [outs for outs, _ in sites] == [runs[:1], runs] and len(set(runs)) == 2


def test_gen_kwargs_odiag_maps_are_accepted():
    assert generation_settings({"max_gen_toks": 64, "do_sample": True, "temperature": 0.5}, {}, "--gen_kwargs") == {
        "max_new_tokens": 64, "temperature": 0.5}
    check_eval_options(lm_eval_argv(["--tasks", "odiag_toy", "--num_fewshot", "0", "--gen_kwargs", "max_gen_toks=64",
                                     "--metadata", json.dumps({"teachers": ["toy-self-1c"]})]))


def test_every_metric_reads_higher_is_better():
    """Incorrect-minus-correct above 0 is a teacher aligned best where the student fails (README): good."""
    names = ["alignment/t/gkd", "incorrect_minus_correct/t/gkd", "teacher_advantage/t/gkd"]
    task = type("Task", (), {"metric_names": lambda self: names})()
    assert DiagnosticTask.higher_is_better(task) == {**dict.fromkeys(names, True), "no_decision_point": None}


def test_responses_are_json_and_read_back():
    record = {"metrics": {"alignment/t/gkd": 0.5, "teacher_advantage/t/gkd": None}, "question": {}}
    assert DiagnosticTask.process_results(None, {}, [json.dumps(record)]) == {"alignment/t/gkd": 0.5}
    why = {**record, "no_decision_point": "no decision point: 1 question, ..."}
    assert DiagnosticTask.process_results(None, {}, [json.dumps(why)]) == {"no_decision_point": why["no_decision_point"]}


def _odiag(*args, timeout=300):
    return subprocess.run([BIN / "odiag", *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_eval_passes_subcommands_and_help_through():
    listed = _odiag("eval", "ls", "tasks")
    assert listed.returncode == 0 and re.search(r"\|\s*odiag_toy\s*\|", listed.stdout)
    helped = _odiag("eval", "--help")
    assert helped.returncode == 0 and "lm-eval run --model hf" in helped.stdout
    run_help = _odiag("eval", "run", "--help")
    assert run_help.returncode == 0 and "--num_fewshot" in run_help.stdout
    # lm_eval's own refusal of its arguments: one line, not its usage text
    for bad, line in ((["--limit", "abc"], "argument --limit/-L: invalid float value: 'abc'"),
                      (["--bogus"], "unrecognized arguments: --bogus")):
        refused = _odiag("eval", "--tasks", "odiag_toy", "--model", "hf", *bad)
        assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
            f"odiag: error: lm_eval run: {line} (see 'odiag eval run --help')"], refused.stderr
    refused = _odiag("eval", "run", "--tasks", "odiag_toy", "--model", "hf", "--num_fewshot", "2")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "odiag: error: task odiag_toy: --num_fewshot 2: odiag's prompts are zero-shot (a diagnostic of the student's own prompt)"]


@pytest.mark.slow
def test_a_model_lm_eval_cannot_build_under_odiag_eval_is_one_line(tmp_path):
    """`odiag eval --model hf` given a folder that holds no model, and `--model vllm` where vLLM is not installed:
    the user's arguments, refused where lm_eval builds the model (they were a traceback called a bug in odiag)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    metadata = json.dumps({"teachers": ["toy-teacher"]})
    refused = _odiag("eval", "--tasks", "odiag_toy", "--model", "hf", "--model_args", f"pretrained={empty}",
                     "--limit", "1", "--metadata", metadata)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith(f"odiag: error: lm_eval: ValueError: Unrecognized model in {empty}")
    if importlib.util.find_spec("vllm") is None:
        refused = _odiag("eval", "--tasks", "odiag_toy", "--model", "vllm", "--model_args", f"pretrained={empty}",
                         "--limit", "1", "--metadata", metadata)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert refused.stderr.strip().splitlines()[-1].endswith("pip install vllm there (in a checkout: make install-vllm, then .venv-vllm/bin/odiag eval ...)")


@needs_toy
@pytest.mark.slow
def test_plain_lm_eval_refuses_from_inside_the_task(tmp_path):
    done = subprocess.run(
        [BIN / "lm_eval", "--include_path", TASKS_DIR, "--tasks", "odiag_toy", "--model", "hf", "--model_args",
         f"pretrained={STUDENT},dtype=float32", "--device", "cpu", "--limit", "1", "--gen_kwargs", "top_k=5",
         "--metadata", json.dumps({"teachers": ["toy-self-1c"]})],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("odiag: error: task odiag_toy: --gen_kwargs top_k=5 would not sample from the student's distribution")
    assert "Traceback" not in done.stderr


def test_one_question_and_one_teacher_read_in_the_singular():
    from harness.config import resolve_run_config
    from harness.costplan import plan_for
    from harness.progress import RunStarted, run_started_line

    results = _results([_row("a", "gkd", 0.2, 1)])
    results["counts"]["questions"] = 1
    assert summary_table(results).splitlines()[-1].startswith("1 question, 16 paths")
    assert run_started_line(RunStarted("synthetic", 1, None, 1, "d")) == "odiag: diagnosing 1 question of synthetic with 1 teacher -> d"
    assert run_started_line(RunStarted("t", 1, 64, 2, "d")) == "odiag: diagnosing 1 of 64 questions of t with 2 teachers -> d"
    cfg = resolve_run_config(None, ["limit=1", "teachers=[synthetic-helpful]"])
    assert plan_for(cfg).lines[0].endswith("backend synthetic, 1 teacher, 1 question")


def test_a_library_failing_of_the_ctrl_c_it_got_first_is_the_stop_not_a_bug(monkeypatch, capsys):
    """vLLM's engine process gets the terminal's Ctrl-C too and may die first: odiag then sees the engine's
    error (EngineDeadError), not a KeyboardInterrupt. Still the stop line and exit 130."""
    import argparse
    import os
    import signal

    from harness import cli

    def engine_call(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            signal.pthread_sigmask(signal.SIG_BLOCK, [])  # a pending handler runs here at the latest
        except KeyboardInterrupt:
            pass  # the library swallows it, then fails of its dead engine
        raise RuntimeError("EngineCore encountered an issue")

    args = argparse.Namespace(func=engine_call, verbose=False, quiet=True, out="runs/x", debug=False, command="run")
    monkeypatch.setattr(cli, "_parse", lambda argv: args)
    assert cli.main(["run"]) == 130
    err = capsys.readouterr().err
    assert "odiag: interrupted" in err and "internal error" not in err and "Traceback" not in err, err


def test_a_device_out_of_memory_is_one_line_naming_the_settings_that_size_a_run(monkeypatch, capsys, tmp_path):
    """torch's OutOfMemoryError (a run too big for its GPU) is an expected failure: one line, exit 2, where
    finished work is kept and what to lower; not a traceback reported as a bug in odiag."""
    import argparse

    torch = pytest.importorskip("torch")
    from harness import cli

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text("{}")

    def scoring(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity "
                                     "of 79.15 GiB of which 1.2 GiB is free.\nOf the allocated memory ...")

    args = argparse.Namespace(func=scoring, verbose=False, quiet=True, out=str(tmp_path / "r"), debug=False, command="run")
    monkeypatch.setattr(cli, "_parse", lambda argv: args)
    assert cli.main(["run"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (f"odiag: error: the device ran out of memory (CUDA out of memory); finished work is kept in "
                    f"{tmp_path / 'r'}; size the run with odiag plan --gpu-memory GIB, lower student_args batch_size "
                    "or score_chunk (hf) or gpu_memory_utilization (vllm), and run the same command again")


def test_a_deleted_working_directory_closed_stderr_and_a_full_stdout_are_met_plainly(tmp_path):
    """Where odiag is started matters: from a directory since removed, one line (torch's libraries would fail
    to load there with a fatal error of their own); with stderr closed (a cron job's `2>&-`), the run goes on;
    a model card sent to a full standard output says so, not that the run directory failed."""
    gone = tmp_path / "gone"
    gone.mkdir()
    done = subprocess.run(f"cd {gone} && rmdir {gone} && {BIN / 'odiag'} ls tasks", shell=True, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == (
        "odiag: error: the current directory no longer exists (it was removed); cd to one that does and give the "
        "command again"), done.stderr
    out = tmp_path / "run"
    closed = subprocess.run(f"{BIN / 'odiag'} run --set limit=1 --out {out} 2>&-", shell=True, capture_output=True,
                            text=True, timeout=300)
    assert closed.returncode == 0 and (out / "results.json").is_file(), closed.stdout
    full = subprocess.run(f"{BIN / 'odiag'} model-card {out} > /dev/full", shell=True, capture_output=True, text=True,
                          timeout=120)
    assert full.returncode == 2 and full.stderr.strip() == (
        "odiag: error: standard output: cannot write the model card (No space left on device)"), full.stderr


def test_small_refusals_read_as_meant(capsys):
    """-v after the command as before it (as --debug); an empty teacher argument, an option a backend does not
    take and a limit printed in full each read as what they are."""
    from harness.cli import _parse, main

    for argv in (["-v", "run", "--out", "x"], ["run", "-v", "--out", "x"], ["run", "--out", "x", "--verbose"]):
        assert _parse(argv).verbose is True, argv
    assert _parse(["run", "--out", "x"]).verbose is False
    for argv, line in (
        (["add-teacher", "runs/x", ""], "odiag: error: argument teacher: expected a path, got an empty string"),
        (["plan", "--gpu-memory", "1e9"], "odiag: error: argument --gpu-memory: must be at most 1,048,576, got '1e9'"),
        (["plan", "--set", "student_args={foo: 1}"], "student_args: unknown key 'foo' for the synthetic backend; it takes no options"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert line in err and "\n" not in err, err


def test_an_empty_config_and_another_tasks_run_are_refused_as_such(tmp_path, capsys):
    """--config '' (an unset shell variable) and a config file with no settings are refused, not run as every
    default (a run that then blocked the corrected command); a run directory of another task is refused as a
    different rollout tree, not as lm-eval documents these settings do not read."""
    from harness.cli import main

    out = tmp_path / "run"
    empty, commented = tmp_path / "empty.yaml", tmp_path / "commented.yaml"
    empty.write_text("")
    commented.write_text("# limit: 2\n")
    for argv, line in (
        (["run", "--config", "", "--out", str(out)], "odiag: error: argument --config: expected a path, got an empty string"),
        (["plan", "--config", " "], "odiag: error: argument --config: expected a path, got an empty string"),
        (["run", "--config", str(empty), "--out", str(out)],
         f"odiag: error: {empty}: holds no settings (empty, or only comments); leave out --config to run the defaults"),
        (["plan", "--config", str(commented)],
         f"odiag: error: {commented}: holds no settings (empty, or only comments); leave out --config to run the defaults"),
    ):
        assert main(argv) == 2, argv
        assert capsys.readouterr().err.strip().startswith(line), argv
        assert not out.exists()
    assert main(["run", "--out", str(out), "-q"]) == 0  # the synthetic task's 8 questions
    capsys.readouterr()
    assert main(["run", "--config", str(ROOT / "harness" / "demo.yaml"), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"odiag: error: {out} holds a run with a different rollout tree (task: 'synthetic' there, "
                          "'odiag_toy' now;") and "lm_eval" not in err, err


def test_names_no_file_system_holds_are_refused_as_the_setting_they_are(tmp_path, capsys):
    """A task, teacher, student or data file named past the file system's limit (255 bytes a name) is one line
    naming the setting with the value shortened, not the OS's 'File name too long' with the whole name; the
    synthetic student on another backend is named as such, not looked for on the hub."""
    from harness.cli import main

    long = "x" * 300
    shown = f"'{long[:37]}...{long[:38]}' (300 characters)"
    toy = ["--set", "backend=hf", "--set", "task=odiag_toy", "--set", "teachers=[toy-teacher]"]
    for argv, line in (
        (["plan", "--set", f"task={long}"], f"--set: unknown task {shown}: available tasks are 'synthetic', "),
        (["plan", "--set", f"teachers=[{long}]"], f"teacher {shown}: File name too long (a teacher is a name under "),
        (["plan", *toy, "--set", f"student={long}"], f"--set: student {shown}: File name too long"),
        (["plan", *toy, "--set", f"data_files={long}/a.jsonl"], "--set: data_files 'xxx"),
        (["plan", *toy], "student 'synthetic' is the synthetic model, which only backend synthetic has: set student to "),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"odiag: error: {line}") and "\n" not in err and len(err) < 400, err
    out = tmp_path / "run"
    assert main(["run", "--set", "limit=1", "--out", str(out), "-q"]) == 0
    assert main(["add-teacher", str(out), long]) == 2
    assert capsys.readouterr().err.strip().startswith(f"odiag: error: teacher {shown}: File name too long")


def test_a_refused_student_args_names_the_file_or_set_that_gave_it(tmp_path, capsys):
    """student_args is checked against its backend only once a plan loads it; its refusal still names where it
    was set, under run, plan and demo alike, and the refused run leaves no directory behind."""
    from harness.cli import main

    config = tmp_path / "run.yaml"
    config.write_text("limit: 1\nstudent_args:\n  bogus_key: 3\n")
    out = tmp_path / "run"
    said = "student_args: unknown key 'bogus_key' for the synthetic backend; it takes no options"
    for argv, where in (
        (["plan", "--config", str(config)], str(config)),
        (["run", "--config", str(config), "--out", str(out), "-q"], str(config)),
        (["plan", "--config", str(config), "--set", "student_args={bogus_key: 3}"], "--set"),
        (["run", "--set", "student_args={bogus_key: 3}", "--out", str(out), "-q"], "--set"),
    ):
        assert main(argv) == 2, argv
        assert capsys.readouterr().err.strip() == f"odiag: error: {where}: {said}", argv
        assert not out.exists()
    assert main(["run", "--set", "limit=1", "--out", str(out), "-q"]) == 0
    capsys.readouterr()
    assert main(["rescore", str(out), "--set", "student_args={bogus_key: 3}"]) == 2
    assert capsys.readouterr().err.strip() == f"odiag: error: --set: {said}"
    assert main(["demo", "--set", "student_args={bogus_key: 3}", "--out", str(out), "--site", str(tmp_path / "site")]) == 2
    assert capsys.readouterr().err.strip().startswith("odiag: error: --set: student_args: unknown key 'bogus_key' for the hf")


def test_odiag_eval_without_a_network_says_how_to_work_offline(monkeypatch, capsys):
    """A data set lm_eval cannot fetch (no network) is one line with what to do offline, under odiag eval as under odiag run."""
    import harness.lmeval_bridge
    from harness.cli import main

    def unreachable(argv):
        raise ConnectionError("Couldn't reach 'aps/super_glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(harness.lmeval_bridge, "main_eval", unreachable)
    assert main(["eval", "--tasks", "odiag_boolq", "--model", "hf"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("odiag: error: Couldn't reach 'aps/super_glue' on the Hub") and "HF_DATASETS_OFFLINE=1" in line
    assert "odiag run (--set data_files=PATH" in line


def test_odiag_eval_keeps_the_hubs_retry_warnings_out_of_its_one_line(monkeypatch, caplog):
    """lm_eval loading a data set the hub cannot serve logged each of huggingface_hub's retries (22 lines before
    the error, about 45 s); odiag run logs none. The hub's errors still reach the log."""
    import logging

    import lm_eval.__main__

    from harness.lmeval_bridge import main_eval

    def evaluate():
        hub = logging.getLogger("huggingface_hub.utils._http")
        hub.warning("Retrying in 1s [Retry 1/5].")
        hub.error("gave up")
        raise SystemExit(2)

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", evaluate)
    with caplog.at_level(logging.INFO):
        assert main_eval(["ls", "tasks"]) == 2
    assert [r.getMessage() for r in caplog.records if r.name.startswith("huggingface_hub")] == ["gave up"]
    assert logging.getLogger("huggingface_hub").level == logging.NOTSET or logging.getLogger("huggingface_hub").level < logging.ERROR


def test_odiag_eval_tells_lm_evals_refusals_from_a_closed_pipe_and_a_full_device(monkeypatch, capsys):
    """What lm_eval (or a library under it) raises while building its model is the user's input, one line; a device
    out of memory there keeps odiag's sizing advice, and a reader gone from the pipe is not called a network error."""
    torch = pytest.importorskip("torch")
    import harness.lmeval_bridge
    from harness.cli import main

    def raising_inside_lm_eval(exc):
        frame = {"exc": exc}
        exec(compile("def build(argv):\n    raise exc\n", "/site-packages/lm_eval/models/fake.py", "exec"), frame)
        return frame["build"]

    for exc, expected in (
        (ValueError("Unrecognized model in /tmp/empty."), "odiag: error: lm_eval: Unrecognized model in /tmp/empty."),
        (AssertionError("Torch not compiled with CUDA enabled"), "odiag: error: lm_eval: AssertionError: Torch not compiled"),
        # a --model_args key the model class lacks (it was a traceback called a bug in odiag)
        (TypeError("Qwen3ForCausalLM.__init__() got an unexpected keyword argument 'foo'"), "odiag: error: lm_eval: "
         "Qwen3ForCausalLM.__init__() got an unexpected keyword argument 'foo': --model_args takes only the model class's"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "odiag: error: the device ran out of memory"),
    ):
        monkeypatch.setattr(harness.lmeval_bridge, "main_eval", raising_inside_lm_eval(exc))
        assert main(["eval", "--tasks", "odiag_toy", "--model", "hf"]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(expected), line
    monkeypatch.setattr(harness.lmeval_bridge, "main_eval", raising_inside_lm_eval(BrokenPipeError(32, "Broken pipe")))
    main(["eval", "ls", "tasks"])
    assert "offline" not in capsys.readouterr().err
