"""Faults thrown at the run directory, as a careless or hostile user would (README "The run directory").

Every case ends one of two ways: one ``odiag: error: ...`` line, exit code 2 and the directory
byte-for-byte as it was (``_digest`` before and after), or results identical to a clean run's
(``_strip``: results.json without its creation time, versions and this invocation's counters).
Most cases call ``harness.cli.main`` in this process; a handful start the real command line.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.config import ConfigError, RunConfig
from harness.pipeline import add_teacher, rescore, run
from harness.rundir import FORMAT, LOCK_NAME, RunDir, RunLock
from harness.tasks.exact import SyntheticTask

ROOT = Path(__file__).resolve().parent.parent
TEACHERS = ROOT / "teachers"
SETTINGS = {"limit": 2, "n_initial": 16, "n_target": 40, "window": 2}
SETS = [arg for k, v in SETTINGS.items() for arg in ("--set", f"{k}={v}")]
CFG = RunConfig(**SETTINGS)


def _strip(results: dict) -> dict:
    out = json.loads(json.dumps(results))
    for key in ("created_at", "versions"):
        out.pop(key)
    for key in ("rollouts_this_invocation", "forward_passes_this_invocation", "artefact_samples_this_invocation"):
        out["counts"].pop(key)
    return out


def _results(out: Path) -> dict:
    return _strip(json.loads((out / "results.json").read_text()))


def _recomputed(out: Path) -> dict:
    """The results a plain run computes from the run directory's shards alone (results.json removed first): a
    shard still corrupt is refused, so these are the shards' numbers, not a results.json kept from before."""
    (out / "results.json").unlink()
    assert main(["run", *SETS, "--out", str(out), "--quiet"]) == 0
    return _results(out)


def _digest(root: Path) -> str:
    """Every path under ``root`` with its mode and bytes: equal digests, an unchanged directory."""
    h = hashlib.sha256()
    if not root.exists():
        return "absent"
    for p in sorted(root.rglob("*")):
        h.update(f"{p.relative_to(root)}|{p.stat().st_mode:o}|".encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _error(capsys, argv: list[str]) -> str:
    """Run the command line in-process; assert one ``odiag: error:`` line and exit code 2; return it."""
    capsys.readouterr()
    if argv[0] in ("run", "add-teacher", "rescore"):
        argv = [*argv, "--quiet"]  # progress lines would come before the error
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("odiag: error: ") and "\n" not in err, err
    return err


def _fill_disk_at(monkeypatch, at: str, stays_full: bool = False) -> list[str]:
    """A full disk from the first temporary file whose name starts with ``at`` (every write goes through one:
    `harness.rundir.staged`), for that write alone or, ``stays_full``, every later one; returns the refused names."""
    import tempfile

    real, refused = tempfile.mkstemp, []

    def filling(*args, prefix="", **kwargs):
        if (stays_full and refused) or prefix.startswith(at):
            refused.append(prefix)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", filling)
    return refused


def _refused(capsys, argv: list[str], root: Path, *expected: str) -> str:
    before = _digest(root)
    err = _error(capsys, argv)
    for text in expected:
        assert text in err, err
    assert _digest(root) == before, "a refused command changed the run directory"
    return err


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """A finished run with the default teachers: the reference every repaired run must equal."""
    out = tmp_path_factory.mktemp("clean") / "run"
    run(CFG, out)
    return out


@pytest.fixture
def copy(clean, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(clean, out)
    return out


def _teacher(tmp_path: Path, name: str, model: str = "helpful", sub: str = "t") -> Path:
    path = tmp_path / sub / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"description: a copy\nmodel: {model}\n")
    return path


# 1. the five silent corruptions --------------------------------------------------------------------


def test_a_run_named_after_its_teacher_reruns_from_where_it_was_started(tmp_path, monkeypatch):
    """``--out synthetic-helpful`` makes a folder of the teacher's name in the working directory: the same command
    again once read that folder as the teacher ("a directory, not a teacher YAML file"); a bare name is the
    shipped teacher unless a file of that name is there."""
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--set", "limit=1", "--set", "n_initial=16", "--set", "teachers=[synthetic-helpful]",
            "--out", "synthetic-helpful", "--quiet"]
    assert main(argv) == 0
    reference = _results(tmp_path / "synthetic-helpful")
    (tmp_path / "synthetic-helpful" / "results.json").unlink()
    assert main(argv) == 0
    assert _results(tmp_path / "synthetic-helpful") == reference


def test_a_relative_teacher_path_naming_another_file_here_is_refused_as_such(tmp_path, capsys, monkeypatch):
    """A run's config.yaml keeps a teacher's path as written; resumed from another directory where that relative
    path names another file, the refusal says so (not that the run's teacher "changed", to be restored)."""
    first, second = tmp_path / "a", tmp_path / "b"
    _teacher(first, "mine", sub="t")
    _teacher(second, "mine", model="misleading", sub="t")
    out = tmp_path / "run"
    monkeypatch.chdir(first)
    assert main(["run", *SETS, "--set", "limit=1", "--set", "teachers=[t/mine.yaml]", "--out", str(out), "--quiet"]) == 0
    monkeypatch.chdir(second)
    err = _refused(capsys, ["run", "--config", str(out / "config.yaml"), "--out", str(out)], out,
                   f"'t/mine.yaml' reads {second / 't' / 'mine.yaml'} here, the run read {first / 't' / 'mine.yaml'}",
                   "run from the directory the run was started in")
    assert "changed since" not in err

def test_a_teacher_given_by_another_absolute_path_is_refused_as_another_file(tmp_path, capsys):
    """Not "from this working directory" (an absolute path reads the same from any), nor "changed since"."""
    first, second = _teacher(tmp_path / "a", "mine"), _teacher(tmp_path / "b", "mine", model="misleading")
    out = tmp_path / "run"
    assert main(["run", *SETS, "--set", "limit=1", "--set", f"teachers=[{first}]", "--out", str(out), "--quiet"]) == 0
    err = _refused(capsys, ["run", *SETS, "--set", "limit=1", "--set", f"teachers=[{second}]", "--out", str(out)], out,
                   f"teacher 'mine' is another file than the run's: {str(second)!r} reads {second}, the run read {first}")
    assert "working directory" not in err and "changed since" not in err

def test_edited_planner_teacher_is_refused_with_both_hashes(tmp_path, capsys):
    """Silent corruption 1: an edited teacher YAML under its old name must not reuse the old scores."""
    t = _teacher(tmp_path, "mine")
    out = tmp_path / "run"
    run(RunConfig(**SETTINGS, teachers=(str(t), "synthetic-misleading")), out)
    old = json.loads((out / "config.json").read_text())["teachers"][0]["identity"]
    t.write_text("description: a copy\nmodel: misleading\n")
    err = _refused(capsys, ["run", *SETS, "--set", f"teachers=[{t},synthetic-misleading]", "--out", str(out)], out,
                   "teacher 'mine' changed", old)
    new = err.split(f"identity {old} there, ")[1][:16]
    assert new != old and len(new) == 16


def test_a_planner_file_edited_before_any_targeted_rollout_takes_over(tmp_path, monkeypatch):
    """A run stopped before its first targeted rollout (a teacher's template failing on real data, say)
    stores nothing its planners shaped: the corrected file is the corrected command, not a refusal, and
    the run equals a fresh one with that file (the edited teacher's passes redone, the rest kept)."""
    import harness.pipeline

    t = _teacher(tmp_path, "mine")
    cfg = RunConfig(**SETTINGS, teachers=(str(t), "synthetic-misleading"))
    out = tmp_path / "run"

    def stop(*args, **kwargs):
        raise ConfigError("stopped before the targeted rollouts")

    with monkeypatch.context() as m:
        m.setattr(harness.pipeline, "enrich_window", stop)
        with pytest.raises(ConfigError, match="stopped before"):
            run(cfg, out)
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*/*.npz")}
    assert "score-p0-mine.npz" in kept and not any(n.startswith("window") for n in kept)
    t.write_text("description: a copy\nmodel: misleading\n")
    resumed = run(cfg, out)
    assert _strip(resumed) == _strip(run(cfg, tmp_path / "fresh"))
    after = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*/*.npz")}
    assert after["initial.npz"] == kept["initial.npz"] and after["score-p0-mine.npz"] != kept["score-p0-mine.npz"]
    assert after["score-p0-synthetic-misleading.npz"] == kept["score-p0-synthetic-misleading.npz"]


def test_edited_added_teacher_is_refused_then_rescored_on_request(copy, tmp_path, capsys):
    """The same for a teacher added later: refused with both hashes; ``odiag rescore`` scores the new file."""
    t = _teacher(tmp_path, "extra")
    add_teacher(copy, str(t))
    t.write_text("description: now misleading\nmodel: misleading\n")
    _refused(capsys, ["run", *SETS, "--out", str(copy)], copy, "teacher 'extra' changed since it was scored", "odiag rescore")
    after = rescore(copy)
    assert after["counts"]["rollouts_this_invocation"] == 0
    # a clean run that added the edited file gives the same numbers
    fresh = tmp_path / "fresh"
    run(CFG, fresh)
    assert _strip(after) == _strip(add_teacher(fresh, str(t)))
    rows = {(r["teacher"], r["algorithm"]): r for r in after["teachers"]}
    assert rows[("extra", "gkd")]["alignment"] == rows[("synthetic-misleading", "gkd")]["alignment"]


def test_add_teacher_with_a_different_file_under_a_taken_name_is_refused(copy, tmp_path, capsys):
    """Silent corruption 2: a different file named like a teacher of the run must not reuse its shards."""
    impostor = _teacher(tmp_path, "synthetic-helpful", model="misleading")
    _refused(capsys, ["add-teacher", str(copy), str(impostor)], copy, "a different teacher named 'synthetic-helpful'")


@pytest.mark.parametrize("teachers", [
    "[synthetic-helpful,synthetic-helpful]",
    f"[synthetic-helpful,{TEACHERS}/synthetic-helpful.yaml]",
])
def test_a_teacher_listed_twice_is_refused(tmp_path, capsys, teachers):
    """Silent corruption 3: a teacher listed twice must not be counted twice (nothing is created)."""
    out = tmp_path / "run"
    _refused(capsys, ["run", *SETS, "--set", f"teachers={teachers}", "--out", str(out)], out, "synthetic-helpful")
    assert not out.exists()


def test_the_same_teacher_under_another_name_is_refused(tmp_path, capsys):
    twin = tmp_path / "t" / "twin.yaml"
    twin.parent.mkdir()
    shutil.copy(TEACHERS / "synthetic-helpful.yaml", twin)
    out = tmp_path / "run"
    _refused(capsys, ["run", *SETS, "--set", f"teachers=[synthetic-helpful,{twin}]", "--out", str(out)], out, "the same teacher")


@pytest.mark.parametrize("second", ["dtype: float32\n", "revision: v2\n"])
def test_two_files_loading_one_model_with_other_settings_are_refused(tmp_path, capsys, second):
    """A run loads each model id once: the second file's dtype, revision or engine options must not be
    silently replaced by the first's (both would be scored with one copy)."""
    one = _teacher(tmp_path, "one")
    two = _teacher(tmp_path, "two")
    two.write_text(two.read_text() + second)
    out = tmp_path / "run"
    err = _refused(capsys, ["run", *SETS, "--set", f"teachers=[{one},{two}]", "--out", str(out)], out,
                   str(one), str(two), "'helpful'", "a run loads each model once")
    assert not out.exists() and second.split(":")[0] in err
    _refused(capsys, ["plan", *SETS, "--set", f"teachers=[{one},{two}]"], out, "a run loads each model once")


def test_solution_sources_follow_the_teacher_that_scores_with_their_model_and_may_not_disagree(tmp_path):
    from harness.plan import model_specs
    from harness.teachers import load_teacher

    specs = model_specs(RunConfig(), [load_teacher("toy-teacher"), load_teacher("toy-self-1c-teacher")])
    (key,) = [k for k in specs if k.endswith("toy_models/teacher")]
    assert specs[key].dtype == "float32"  # sampled from the copy toy-teacher scores with, as toy-teacher names it
    one = _teacher(tmp_path, "one", model="student")
    one.write_text(one.read_text() + "correct_solutions: 1\nsolution_source: /models/big\ncontext_template: '{{ question }} {{ correct[0] }}'\n")
    two = tmp_path / "t" / "two.yaml"
    two.write_text(one.read_text() + "solution_revision: v2\n")
    with pytest.raises(ConfigError, match=r"both load model '/models/big', with different settings \(revision None in one, 'v2'"):
        model_specs(RunConfig(), [load_teacher(str(one)), load_teacher(str(two))])


def test_two_files_loading_one_model_with_other_engine_options_are_refused(tmp_path):
    from harness.plan import backend_options
    from harness.teachers import load_teacher

    one = _teacher(tmp_path, "one", model="/models/teacher")
    two = _teacher(tmp_path, "two", model="/models/teacher")
    two.write_text(two.read_text() + "model_args: {max_model_len: 64}\n")
    with pytest.raises(ConfigError, match="both load model '/models/teacher', with different model_args"):
        backend_options(RunConfig(backend="vllm"), [load_teacher(str(one)), load_teacher(str(two))])
    assert backend_options(RunConfig(backend="vllm"), [load_teacher(str(two))])["model_args"] == {"/models/teacher": {"max_model_len": 64}}


def test_add_teacher_twice_or_of_a_config_teacher_adds_no_row(copy, capsys, caplog):
    before = _results(copy)
    files = _digest(copy)
    assert main(["add-teacher", str(copy), "synthetic-helpful", "--quiet"]) == 0
    assert _results(copy) == before
    assert _digest(copy) == files  # nothing written: results.json (and a validation of it) stay as they were
    with caplog.at_level("INFO", logger="harness"):
        assert main(["add-teacher", str(copy), "synthetic-helpful"]) == 0  # said, not silent
    assert f"teacher synthetic-helpful is already scored in {copy} (the same file): nothing to add" in caplog.messages
    twin = copy.parent / "twin.yaml"
    shutil.copy(TEACHERS / "synthetic-misleading.yaml", twin)
    _refused(capsys, ["add-teacher", str(copy), str(twin)], copy, "is the same teacher as 'synthetic-misleading'")


def test_two_concurrent_runs_with_different_configs(tmp_path):
    """Silent corruption 4: two ``odiag run`` on one --out; one is refused, and what remains is consistent."""
    out = tmp_path / "run"
    cmds = [[sys.executable, "-m", "harness.cli", "run", "--set", "limit=4", "--set", f"n_target={n}", "--out", str(out), "--quiet"]
            for n in (60, 70)]
    procs = [subprocess.Popen(c, cwd=ROOT, stderr=subprocess.PIPE, text=True) for c in cmds]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], errs
    refused = errs[[p.returncode for p in procs].index(2)].strip()
    assert refused.startswith("odiag: error:") and "\n" not in refused
    # the lock is held (its holder named, or "just starting" while the holder writes its name), or the
    # second command came after the first had finished
    assert any(x in refused for x in ("in use by odiag pid", "in use by another odiag process (just starting)",
                                      "different rollout tree")), refused
    saved = json.loads((out / "config.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert saved["config"] == results["config"] and saved["config_hash"] == results["config_hash"]
    assert not (out / LOCK_NAME).exists()


def test_a_held_directory_is_refused_naming_the_holder(copy, capsys):
    lock = RunLock(copy)
    lock.acquire()
    try:
        _refused(capsys, ["run", *SETS, "--out", str(copy)], copy, f"in use by odiag pid {os.getpid()} on", "since")
        _refused(capsys, ["add-teacher", str(copy), str(_teacher(copy.parent, "extra"))], copy, "in use by odiag pid")
        _refused(capsys, ["rescore", str(copy), "--set", "jsd_beta=0.9"], copy, "in use by odiag pid")
    finally:
        lock.release()
    assert main(["run", *SETS, "--out", str(copy), "--quiet"]) == 0


def test_a_killed_holder_releases_the_lock(copy):
    code = f"from harness.rundir import RunLock; from pathlib import Path; import time; RunLock(Path({str(copy)!r})).acquire(); print('held', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    proc.kill()
    proc.wait()
    assert (copy / LOCK_NAME).exists()  # left behind, but no longer held
    reference = _results(copy)
    assert _strip(run(CFG, copy)) == reference
    assert not (copy / LOCK_NAME).exists()


@pytest.mark.parametrize("teachers", ["[self-1cc]", "[synthetic-helpful,nope]", "[]", "[synthetic-helpful,teachers]"])
def test_a_typo_leaves_no_directory_and_the_corrected_command_runs(tmp_path, capsys, teachers):
    """Silent corruption 5: a bad teacher must not leave a directory that refuses the corrected command."""
    out = tmp_path / "run"
    _error(capsys, ["run", *SETS, "--set", f"teachers={teachers}", "--out", str(out)])
    assert not out.exists()
    assert main(["run", *SETS, "--set", "limit=1", "--out", str(out), "--quiet"]) == 0


@pytest.mark.parametrize("key", ["strategy=setle", "backend=synthetc", "algorithms=[gkd,bogus]", "executor=slurm", "algorithms=[gkd,gkd]"])
def test_a_bad_name_leaves_no_directory(tmp_path, capsys, key):
    out = tmp_path / "run"
    _error(capsys, ["run", *SETS, "--set", key, "--out", str(out)])
    assert not out.exists()


def test_a_typo_on_an_existing_run_changes_nothing(copy, capsys):
    _refused(capsys, ["run", *SETS, "--set", "teachers=[synthetic-helpful,self-1cc]", "--out", str(copy)], copy, "self-1cc")
    assert main(["run", *SETS, "--out", str(copy), "--quiet"]) == 0


class _Picky(SyntheticTask):
    """The synthetic task, refusing one teacher at load time (as a real task refuses a vocabulary)."""

    def check_teacher(self, teacher):
        if teacher.name == "picky":
            raise ConfigError(f"{teacher.file}: model 'helpful': vocabulary differs from the student's")


def test_add_teacher_checks_before_recording(copy, tmp_path):
    picky = _teacher(tmp_path, "picky")
    before = _digest(copy)
    with pytest.raises(ConfigError, match="vocabulary differs"):
        add_teacher(copy, str(picky), task=_Picky())
    assert _digest(copy) == before
    reference = _results(copy)
    (copy / "results.json").unlink()
    assert _strip(run(CFG, copy, task=_Picky())) == reference  # the original run still resumes


def test_add_teacher_that_fails_on_real_data_leaves_the_finished_run_as_it_was(copy, tmp_path, monkeypatch, capsys):
    """A teacher whose context fails only on a real question (found after its passes began) must not
    take the finished run's results with it: one error line, the directory as it was, the corrected
    add-teacher adds it."""
    import harness.pipeline

    extra = _teacher(tmp_path, "extra", model="misleading")
    before = _digest(copy)
    records = harness.pipeline._records

    def fail(*args, **kwargs):
        raise ConfigError(f"{extra}: key 'context_template': fails on question 00001")

    with monkeypatch.context() as m:
        m.setattr(harness.pipeline, "_records", fail)
        _error(capsys, ["add-teacher", str(copy), str(extra)])
    assert harness.pipeline._records is records
    assert _digest(copy) == before
    after = add_teacher(copy, str(extra))
    assert "extra" in {r["teacher"] for r in after["teachers"]}


@pytest.mark.parametrize("content", ["model: [unclosed\n", "modl: helpful\n", "- a list\n", "\x00\x01binary"])
def test_add_teacher_with_a_bad_file_records_nothing(copy, tmp_path, capsys, content):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content.encode())
    _refused(capsys, ["add-teacher", str(copy), str(bad)], copy, "bad.yaml")
    assert main(["run", *SETS, "--out", str(copy), "--quiet"]) == 0


def test_a_planner_check_failure_creates_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="vocabulary differs"):
        run(RunConfig(**SETTINGS, teachers=(str(_teacher(tmp_path, "picky")),)), out, task=_Picky())
    assert not out.exists()


# 2. shards -----------------------------------------------------------------------------------------


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "pickle":
        path.write_bytes(b"\x80\x04\x95" + data[3:])
    elif how == "altered":  # a valid archive whose arrays no longer match their checksum
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        key = next(k for k in arrays if not k.startswith("_") and arrays[k].dtype.kind in "if" and arrays[k].size)
        arrays[key] = arrays[key].copy()
        arrays[key].flat[0] += 1
        np.savez(path, **arrays)
    elif how == "wrong-kind":
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["_kind"] = np.array("skip")
        np.savez(path, **arrays)


SHARDS = {"initial": "q000/initial.npz", "score": "q001/score-p0-synthetic-helpful.npz", "round": "q000/window1-round0.npz"}
HOWS = ("empty", "truncated", "garbage", "pickle", "altered", "wrong-kind")


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("kind", list(SHARDS))
def test_a_corrupt_shard_is_named(copy, capsys, kind, how):
    shard = copy / "shards" / SHARDS[kind]
    _corrupt(shard, how)
    err = _refused(capsys, ["run", *SETS, "--out", str(copy)], copy, str(shard), "corrupt shard", "--repair")
    assert "pickled" not in err
    # rescore has no --repair: the fix it is told is the run's, with the recorded settings
    fix = f"drop and recompute it with odiag run --config {copy / 'config.yaml'} --out {copy} --repair"
    assert fix in err and fix in _error(capsys, ["rescore", str(copy), "--set", "algorithms=[gkd]"])


@pytest.mark.parametrize("how", ["empty", "garbage", "altered"])
@pytest.mark.parametrize("kind", list(SHARDS))
def test_repair_drops_and_recomputes_a_corrupt_shard(copy, capsys, kind, how):
    reference = _results(copy)
    _corrupt(copy / "shards" / SHARDS[kind], how)
    (copy / "results.json").unlink()
    assert main(["run", *SETS, "--out", str(copy), "--repair", "--quiet"]) == 0
    assert _results(copy) == reference
    assert _recomputed(copy) == reference


def test_repair_after_many_corrupt_shards_equals_a_clean_run(copy):
    reference = _results(copy)
    for i, shard in enumerate(sorted((copy / "shards").rglob("*.npz"))):
        if i % 3 == 0:
            _corrupt(shard, HOWS[i % len(HOWS)])
    (copy / "results.json").unlink()
    assert _strip(run(CFG, copy, repair=True)) == reference
    assert _recomputed(copy) == reference


@pytest.fixture(scope="module")
def other_seed(tmp_path_factory) -> Path:
    """A finished run of another seed: every shard of it is well formed, and none is the reference run's."""
    out = tmp_path_factory.mktemp("other") / "run"
    run(RunConfig(**{**SETTINGS, "seed": 2}), out)
    return out


# (shard copied in from, to): another run's at the same place, another question's, another teacher's or path's
MOVES = {
    "another run's round": ("other:q000/window0-round0.npz", "q000/window0-round0.npz"),
    "another run's question": ("other:q001/initial.npz", "q001/initial.npz"),
    "another question's round": ("q001/window0-round0.npz", "q000/window0-round0.npz"),
    "another teacher's pass": ("q000/score-p0-synthetic-helpful.npz", "q000/score-p0-synthetic-misleading.npz"),
    "another path's pass": ("q000/score-p0-student.npz", "q000/score-p1-student.npz"),
}


@pytest.mark.parametrize("move", list(MOVES))
def test_a_well_formed_shard_of_another_place_is_refused_then_repaired(copy, other_seed, capsys, move):
    source, target = MOVES[move]
    source = other_seed / "shards" / source[6:] if source.startswith("other:") else copy / "shards" / source
    reference = _results(copy)
    shutil.copyfile(source, copy / "shards" / target)
    why = "written by another run" if "another run" in move else "a shard copied or renamed"
    _refused(capsys, ["run", *SETS, "--out", str(copy)], copy, str(copy / "shards" / target), why, "--repair")
    (copy / "results.json").unlink()
    assert main(["run", *SETS, "--out", str(copy), "--repair", "--quiet"]) == 0
    assert _results(copy) == reference
    assert _recomputed(copy) == reference


def test_a_pass_of_another_copy_of_the_run_is_refused_then_repaired(copy, tmp_path, capsys):
    """Two copies of one run share its id; each adds its own file under one teacher name. A pass of one moved into
    the other is bound to the other file, and is refused (then recomputed) as a shard of another place is."""
    twin = tmp_path / "twin"
    shutil.copytree(copy, twin)
    assert main(["add-teacher", str(copy), str(_teacher(tmp_path, "extra", "helpful", "a")), "--quiet"]) == 0
    reference = _results(copy)
    assert main(["add-teacher", str(twin), str(_teacher(tmp_path, "extra", "misleading", "b")), "--quiet"]) == 0
    target = copy / "shards" / "q000" / "score-p0-extra.npz"
    shutil.copyfile(twin / "shards" / "q000" / "score-p0-extra.npz", target)
    (copy / "results.json").unlink()
    _refused(capsys, ["run", *SETS, "--out", str(copy)], copy, str(target), "written for another file of its teacher",
             "a pass copied from another copy of this run", "--repair")
    assert main(["run", *SETS, "--out", str(copy), "--repair", "--quiet"]) == 0
    assert _results(copy) == reference


def test_a_run_keeps_its_id_when_it_grows(copy):
    before = json.loads((copy / "config.json").read_text())["run"]
    assert main(["run", *SETS, "--set", "limit=3", "--out", str(copy), "--quiet"]) == 0
    assert json.loads((copy / "config.json").read_text())["run"] == before


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]", b'{"format": "odiag.rundir/1"}',
                                     b'{"format": "odiag.rundir/2", "config": {}}', f'{{"format": "{FORMAT}", "config": {{}}}}'.encode(),
                                     b"\xff\xfe\x00binary"])
@pytest.mark.parametrize("command", ["run", "add-teacher", "rescore", "validate"])
def test_garbage_config_json_is_one_line(copy, capsys, content, command):
    (copy / "config.json").write_bytes(content)
    extra = str(_teacher(copy.parent, "extra"))
    argv = {"run": ["run", *SETS, "--out", str(copy)], "add-teacher": ["add-teacher", str(copy), extra],
            "rescore": ["rescore", str(copy)], "validate": ["validate", str(copy), "--quick"]}[command]
    err = _refused(capsys, argv, copy, "config.json")
    if command == "run":
        assert "restore it from a copy, or start afresh with another --out" in err or "cannot be resumed: use another --out" in err, err
    else:  # a command that takes no --out is not told to give another
        assert ("restore it from a copy, or start afresh with odiag run and another --out" in err
                or "cannot be read: run it afresh with odiag run and another --out" in err), err


@pytest.mark.parametrize("run_id", [None, 5, ""], ids=["no id", "a number", "empty"])
def test_a_config_json_without_the_runs_id_is_one_line(copy, capsys, run_id):
    """Every shard is bound to the run's id: without it none can be read, and the line says how to go on."""
    record = json.loads((copy / "config.json").read_text())
    record.pop("run") if run_id is None else record.update(run=run_id)
    (copy / "config.json").write_text(json.dumps(record))
    err = _refused(capsys, ["run", *SETS, "--out", str(copy)], copy, "config.json: not a valid run config",
                   "restore it from a copy, or start afresh with another --out")
    assert ("no 'run'" if run_id is None else "'run' is not the run's id") in err


def test_stale_temporary_files_are_removed(copy):
    reference = _results(copy)
    stale = [copy / ".results.json.abc123.tmp", copy / "shards" / "q000" / ".initial.npz.x_y9z.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    assert _strip(run(CFG, copy)) == reference
    assert not any(p.exists() for p in stale)


def test_files_are_group_readable_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        run(RunConfig(**{**SETTINGS, "limit": 1}), tmp_path / "run")
    finally:
        os.umask(old)
    for p in (tmp_path / "run").rglob("*"):
        assert p.stat().st_mode & 0o777 == (0o775 if p.is_dir() else 0o664), p


# 3. --out ------------------------------------------------------------------------------------------


def test_out_at_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("mine\n")
    _refused(capsys, ["run", *SETS, "--out", str(target)], tmp_path, "exists and is not a directory")


def test_out_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("mine\n")
    _refused(capsys, ["run", *SETS, "--out", str(tmp_path / "file" / "run")], tmp_path, "file")


def test_out_at_a_foreign_directory(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine\n")
    _refused(capsys, ["run", *SETS, "--out", str(tmp_path)], tmp_path, "not an odiag run")


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS, errno.ENOSPC])
def test_out_unwritable(tmp_path, capsys, monkeypatch, code):
    """A read-only directory, a read-only file system, a full disk: the first write fails, one line."""
    import tempfile as tf

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tf, "mkstemp", fail)
    err = _error(capsys, ["run", *SETS, "--out", str(tmp_path / "run")])
    assert os.strerror(code) in err and "cannot write" in err
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    monkeypatch.undo()
    assert main(["run", *SETS, "--set", "limit=1", "--out", str(tmp_path / "run"), "--quiet"]) == 0


def test_a_lock_that_cannot_be_written_is_one_line_and_holds_nothing(tmp_path, capsys, monkeypatch):
    """A full disk when the lock records its holder: one line naming the lock file, no lock file left in the
    finished run, and the lock released (the same command in the same process goes on once there is room)."""
    run_dir = tmp_path / "run"
    assert main(["run", *SETS, "--set", "limit=1", "--out", str(run_dir), "--quiet"]) == 0

    def full(fd, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "ftruncate", full)
    err = _error(capsys, ["rescore", str(run_dir), "--set", "jsd_beta=0.3"])
    assert f"{run_dir / LOCK_NAME}: cannot write (No space left on device); free some space and give the same command again" in err, err
    assert not (run_dir / LOCK_NAME).exists()
    monkeypatch.undo()
    assert main(["rescore", str(run_dir), "--set", "jsd_beta=0.3", "--quiet"]) == 0


def test_a_run_directory_odiag_may_not_write_is_one_line_saying_what_to_do(tmp_path, capsys, monkeypatch):
    """A run copied from another user (or a read-only mount): the lock cannot be opened; the line says how to go
    on, not only that it cannot write."""
    run_dir = tmp_path / "run"
    assert main(["run", *SETS, "--set", "limit=1", "--out", str(run_dir), "--quiet"]) == 0
    real = os.open

    def denied(path, flags, *args, **kwargs):
        if str(path).endswith(LOCK_NAME):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    err = _error(capsys, ["run", *SETS, "--set", "limit=1", "--out", str(run_dir)])
    assert f"{run_dir / LOCK_NAME}: cannot write (Permission denied); make its folder writable for you" in err, err


def test_a_new_run_stopped_between_its_two_records_does_not_block_the_same_command(tmp_path, capsys, monkeypatch):
    """A full disk after config.yaml, before config.json, of a new run: the same command runs there once there is
    room (the two files are the run's own beside .drawing); a config.yaml of the user's own is still refused."""
    _fill_disk_at(monkeypatch, ".config.json.")
    err = _error(capsys, ["run", *SETS, "--set", "limit=1", "--out", str(tmp_path / "run")])
    assert "config.json: cannot write (No space left on device)" in err, err
    assert (tmp_path / "run" / "config.yaml").is_file()
    monkeypatch.undo()
    assert main(["run", *SETS, "--set", "limit=1", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.yaml").write_text("limit: 1\n")
    _refused(capsys, ["run", *SETS, "--out", str(tmp_path / "mine")], tmp_path / "mine", "not an odiag run", "config.yaml")


def test_an_os_error_without_errno_keeps_its_own_message(tmp_path, capsys, monkeypatch):
    """A library's network error is an OSError with no errno: its message, not "[Errno None] None: DIR"."""
    import harness.cli

    def unreachable(args):
        raise ConnectionError("Couldn't reach 'cais/mmlu' on the Hub")

    monkeypatch.setattr(harness.cli, "_run", unreachable)
    err = _error(capsys, ["run", *SETS, "--out", str(tmp_path / "run")])
    assert err == "odiag: error: Couldn't reach 'cais/mmlu' on the Hub"


def test_out_read_only_directory(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.open

    def deny(path, *args, **kwargs):
        if str(path).startswith(str(ro)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    _refused(capsys, ["run", *SETS, "--out", str(ro)], ro, "Permission denied")


# 4. growth and rescoring -----------------------------------------------------------------------------


def test_a_larger_limit_reuses_finished_questions(copy, tmp_path):
    grown = run(RunConfig(**{**SETTINGS, "limit": 3}), copy)
    fresh = run(RunConfig(**{**SETTINGS, "limit": 3}), tmp_path / "fresh")
    assert _strip(grown) == _strip(fresh)
    one = fresh["questions"][2]
    assert grown["counts"]["rollouts_this_invocation"] == one["answers"]["scored"] + sum(b["rollouts"] for b in one["budget"])


@pytest.mark.parametrize("strategy", ["paper", "settle"])
def test_a_larger_budget_continues_allocation(tmp_path, strategy):
    # unlimited, both questions spend 2600-2800 targeted rollouts: 2000 binds in a later window, 3000 never
    small = RunConfig(**{**SETTINGS, "strategy": strategy, "budget": 2000})
    large = RunConfig(**{**SETTINGS, "strategy": strategy, "budget": 3000})
    first = run(small, tmp_path / "grown")
    grown = run(large, tmp_path / "grown")
    fresh = run(large, tmp_path / "fresh")
    assert _strip(grown) == _strip(fresh)
    assert first["counts"]["rollouts"] < fresh["counts"]["rollouts"]
    if strategy == "paper":  # a budget only truncates the paper's plan: rounds before it bound are kept
        targeted = fresh["counts"]["rollouts"] - sum(q["answers"]["scored"] for q in fresh["questions"])
        assert grown["counts"]["rollouts_this_invocation"] < 0.6 * targeted


def test_a_smaller_budget_or_limit_is_refused(tmp_path, capsys):
    """A run grows, it never shrinks: a smaller limit rewrote results.json with fewer questions."""
    out = tmp_path / "run"
    run(RunConfig(**{**SETTINGS, "budget": 300}), out)
    _refused(capsys, ["run", *SETS, "--set", "budget=200", "--out", str(out)], out, "budget 200 is below the run's 300",
             "never shrinks")
    _refused(capsys, ["run", *SETS, "--set", "budget=300", "--set", "limit=1", "--out", str(out)], out,
             "limit 1 is below the run's 2", "never shrinks", "another --out for fewer questions")
    unlimited = tmp_path / "unlimited"
    run(RunConfig(**SETTINGS), unlimited)
    _refused(capsys, ["run", *SETS, "--set", "budget=200", "--out", str(unlimited)], unlimited,
             "the run has no budget (unlimited), and budget 200 would shrink it")


def test_rescore_new_algorithms_and_beta_with_zero_rollouts(copy, tmp_path):
    after = rescore(copy, ["algorithms=[gkd,jsd,minillm]", "jsd_beta=0.9", "gamma=0.5"])
    assert after["counts"]["rollouts_this_invocation"] == 0 and after["counts"]["forward_passes_this_invocation"] == {}
    fresh = run(RunConfig(**SETTINGS, algorithms=("gkd", "jsd", "minillm"), jsd_beta=0.9, gamma=0.5), tmp_path / "fresh")
    assert _strip(after) == _strip(fresh)


def test_a_run_changed_while_a_command_prepared_is_refused(copy, tmp_path, capsys, monkeypatch):
    """rescore and add-teacher plan from the run's settings before they hold it: another command that changed
    them in the meantime (here a rescore that finishes while this one checks its prompts) is not undone, the
    later command is refused in one line, and given again it goes on from what the run records."""
    import harness.pipeline

    real, other = harness.pipeline.check_prompts, iter([["jsd_beta=0.3"], ["gamma=0.5"]])

    def meanwhile(out, plan):
        monkeypatch.setattr(harness.pipeline, "check_prompts", real)
        rescore(out, next(other))
        return real(out, plan)

    monkeypatch.setattr(harness.pipeline, "check_prompts", meanwhile)
    assert "changed the run while this one prepared" in _error(capsys, ["rescore", str(copy), "--set", "gamma=0.9"])
    assert json.loads((copy / "results.json").read_text())["config"]["jsd_beta"] == 0.3
    monkeypatch.setattr(harness.pipeline, "check_prompts", meanwhile)
    extra = str(_teacher(tmp_path, "extra", "misleading"))
    assert "changed the run while this one prepared" in _error(capsys, ["add-teacher", str(copy), extra])
    assert main(["rescore", str(copy), "--set", "gamma=0.9", "--quiet"]) == 0
    config = json.loads((copy / "results.json").read_text())["config"]
    assert (config["jsd_beta"], config["gamma"]) == (0.3, 0.9)


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
@pytest.mark.parametrize("command", ["add-teacher", "rescore"])
@pytest.mark.parametrize("first", [".config.yaml.", ".config.json.", ".results.json."])
def test_a_disk_that_fills_during_add_teacher_or_rescore_leaves_the_finished_run_whole(copy, tmp_path, capsys, monkeypatch,
                                                                                        command, first, links):
    """The disk fills at a write of the record or of the results (and stays full): the finished run is put back
    as it was by renames, which need no space, the line names the write that failed, and the same command
    finishes once there is room (the run's results were lost, and the corrected command refused as unfinished).
    Without hard links, the results are moved aside rather than linked; once the tables were rewritten they are
    not kept, and the same command finishes the run."""
    def no_link(src, dst):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    argv = ([command, str(copy), str(_teacher(tmp_path, "extra", "misleading"))] if command == "add-teacher"
            else [command, str(copy), "--set", "jsd_beta=0.3"])
    full = _fill_disk_at(monkeypatch, first, stays_full=True)
    if not links:
        monkeypatch.setattr(os, "link", no_link)
    cause = f"{first[1:-1]}: cannot write (No space left on device)"
    if links:
        _refused(capsys, argv, copy, cause)
    else:  # config.yaml, rewritten, has no room to be put back: it is gone (the next command writes it from config.json)
        before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
        assert cause in _error(capsys, argv)
        after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
        if first != ".results.json.":  # once the tables were rewritten, the run is left for the same command to finish
            assert {k: v for k, v in after.items() if k.name != "config.yaml"} == {
                k: v for k, v in before.items() if k.name != "config.yaml"}
            assert after.get(Path("config.yaml"), before[Path("config.yaml")]) == before[Path("config.yaml")]
    assert full, "the disk never filled"
    assert not [p.name for p in copy.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert main([*argv, "--quiet"]) == 0


def test_a_rescore_stopped_while_keeping_the_run_or_rewriting_an_old_record_loses_no_results(copy, capsys, monkeypatch):
    """What add-teacher and rescore keep for putting the run back is recorded file by file: a Ctrl-C part-way (here
    without hard links, files already moved aside) puts back what was kept. A rescore that only rewrites an older
    record (no task settings in it) keeps the results too, which the command rewrites; a full disk then leaves
    them whole."""

    files = lambda: {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}  # noqa: E731
    before = files()

    def no_link_then_stop(src, dst):
        if str(dst).endswith(".nodes.parquet.before.tmp"):
            raise KeyboardInterrupt
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_link_then_stop)
    assert main(["rescore", str(copy), "--set", "jsd_beta=0.3", "--quiet"]) == 130
    assert files() == before
    monkeypatch.undo()

    record = json.loads((copy / "config.json").read_text())
    del record["task"]  # as a run made before the record held its task settings
    (copy / "config.json").write_text(json.dumps(record, indent=2) + "\n")
    _fill_disk_at(monkeypatch, ".results.json.")
    assert "results.json: cannot write (No space left on device)" in _error(capsys, ["rescore", str(copy)])
    assert (copy / "results.json").read_bytes() == before[Path("results.json")]
    monkeypatch.undo()
    assert main(["rescore", str(copy), "--quiet"]) == 0


def test_rescore_cli_then_the_rescored_command_resumes(copy, capsys):
    assert main(["rescore", str(copy), "--set", "jsd_beta=0.75", "--quiet"]) == 0
    assert json.loads((copy / "results.json").read_text())["config"]["jsd_beta"] == 0.75
    assert main(["run", *SETS, "--set", "jsd_beta=0.75", "--out", str(copy), "--quiet"]) == 0


@pytest.mark.parametrize("key", ["n_target=50", "seed=1", "limit=3", "teachers=[synthetic-helpful]", "n_initial=8"])
def test_rescore_refuses_what_shapes_the_tree(copy, capsys, key):
    _refused(capsys, ["rescore", str(copy), "--set", key], copy, key.split("=")[0])


def test_run_with_other_scoring_settings_points_to_rescore(copy, capsys):
    _refused(capsys, ["run", *SETS, "--set", "jsd_beta=0.9", "--out", str(copy)], copy, "scoring settings differ", "odiag rescore")


def test_run_with_another_tree_is_refused(copy, capsys, caplog):
    _refused(capsys, ["run", *SETS, "--set", "n_target=50", "--out", str(copy)], copy, "n_target: 40 there, 50 now")
    # settings a run warns about (n_target below n_min) and then refuses: the error alone, no warning before it
    caplog.clear()
    _refused(capsys, ["run", *SETS, "--set", "n_target=5", "--out", str(copy)], copy, "n_target: 40 there, 5 now")
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_rescore_and_add_teacher_need_a_finished_run(tmp_path, capsys):
    out = tmp_path / "run"
    run(CFG, out)
    (out / "results.json").unlink()
    _refused(capsys, ["rescore", str(out)], out, "has not finished")
    _refused(capsys, ["add-teacher", str(out), str(_teacher(tmp_path, "extra"))], out, "has not finished")
    _refused(capsys, ["rescore", str(tmp_path / "none")], tmp_path, "no such directory")
    _refused(capsys, ["rescore", str(tmp_path)], tmp_path, "no config.json")
    # while a command holds it, an unfinished run is in use, not abandoned: the same words as odiag run's
    lock = RunLock(out)
    lock.acquire()
    try:
        for argv in (["rescore", str(out)], ["add-teacher", str(out), str(_teacher(tmp_path, "extra"))],
                     ["model-card", str(out)], ["validate", str(out), "--quick"]):
            assert f"in use by odiag pid {os.getpid()} on" in _error(capsys, argv), argv
    finally:
        lock.release()


def _stop_rescore(monkeypatch, out: Path, overrides: list[str]) -> None:
    """A rescore of ``out`` stopped (Ctrl-C) once it has recorded its settings, before any pass."""
    import harness.pipeline

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(harness.pipeline, "_execute", stopped)
        with pytest.raises(KeyboardInterrupt):
            rescore(out, overrides)


def test_a_rescore_stopped_after_recording_its_settings_leaves_a_run_that_reads_unfinished(copy, capsys, monkeypatch):
    """The record of a run's settings and its results never disagree: results.json goes before config.json
    takes new settings, so a rescore killed between them publishes nothing, and running it again finishes."""
    _stop_rescore(monkeypatch, copy, ["algorithms=[gkd]"])
    assert json.loads((copy / "config.json").read_text())["config"]["algorithms"] == ["gkd"]
    assert not (copy / "results.json").exists()
    err = _error(capsys, ["model-card", str(copy)])
    assert f"has not finished (no results.json); run the command that started it again to finish it, or odiag run " \
           f"--config {copy / 'config.yaml'} --out {copy} (its recorded settings)" in err, err
    # the recorded settings finish it, with the rescore's algorithms and zero new rollouts
    assert main(["run", "--config", str(copy / "config.yaml"), "--out", str(copy), "--quiet"]) == 0
    finished = json.loads((copy / "results.json").read_text())
    assert {r["algorithm"] for r in finished["teachers"]} == {"gkd"} and finished["counts"]["rollouts_this_invocation"] == 0
    # the same command on an unchanged record keeps the finished results until it rewrites them
    before = (copy / "results.json").read_bytes()
    _stop_rescore(monkeypatch, copy, ["algorithms=[gkd]"])
    assert (copy / "results.json").read_bytes() == before


def test_a_stopped_rescore_finishes_when_run_again_and_the_fixes_named_work(copy, tmp_path, capsys, monkeypatch):
    """The same rescore command finishes a rescore stopped after recording its settings; the original run
    command is told to finish with the recorded settings (rescore reads finished runs only); and a
    config.yaml torn from config.json by a kill between the two writes is rewritten from config.json."""
    _stop_rescore(monkeypatch, copy, ["jsd_beta=0.9"])
    _refused(capsys, ["run", *SETS, "--out", str(copy)], copy, "scoring settings differ (jsd_beta: 0.9 there, 0.5 now)",
             f"the run has not finished: finish it with the settings it records (odiag run --config {copy}/config.yaml --out {copy})")
    _refused(capsys, ["rescore", str(copy), "--set", "jsd_beta=0.8"], copy, "has not finished")  # other settings: still refused
    assert main(["rescore", str(copy), "--set", "jsd_beta=0.9", "--quiet"]) == 0
    fresh = run(RunConfig(**SETTINGS, jsd_beta=0.9), tmp_path / "fresh")
    assert _results(copy) == _strip(fresh)
    (copy / "results.json").unlink()
    (copy / "config.yaml").write_text((copy / "config.yaml").read_text().replace("jsd_beta: 0.9", "jsd_beta: 0.5"))
    assert main(["run", "--config", str(copy / "config.yaml"), "--out", str(copy), "--quiet"]) == 2
    assert "jsd_beta: 0.9" in (copy / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["run", "--config", str(copy / "config.yaml"), "--out", str(copy), "--quiet"]) == 0
    assert _results(copy) == _strip(fresh)


KILLED_BEFORE_RECORDING = """
import os, sys
import harness.rundir as rundir
if os.environ.get("NO_LINKS"):  # a file system that makes no hard link: the record is kept as bytes in memory
    def no_link(src, dst, **kwargs):
        raise OSError(1, "Operation not permitted")
    rundir.os.link = no_link
real = rundir.write_json
def killed(path, obj):  # kill -9 there: no clean-up, no undo
    if path.name == "config.json":
        os._exit(137)
    return real(path, obj)
rundir.write_json = killed
from harness.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_rescore_or_add_teacher_killed_before_it_recorded_its_settings_is_finished_by_the_same_command(clean, tmp_path, capsys):
    """Killed (kill -9) after it set the finished run's results aside and before its settings were recorded, the
    run read as unfinished under its old settings: the same command refused it ("run the command that started it
    again") and only odiag run put it right. The same command now finds the run finished, and finishes."""
    late = _teacher(tmp_path, "late", model="misleading")
    for links, (command, fresh) in itertools.product(("", "1"), (
            (["rescore", "{run}", "--set", "jsd_beta=0.9", "--quiet"], lambda out: run(RunConfig(**SETTINGS, jsd_beta=0.9), out)),
            (["add-teacher", "{run}", str(late), "--quiet"],
             lambda out: (shutil.copytree(clean, out), add_teacher(out, str(late)))[1]))):
        out = tmp_path / f"{command[0]}{links}"
        shutil.copytree(clean, out)
        argv = [a.format(run=out) for a in command]
        killed = subprocess.run([sys.executable, "-c", KILLED_BEFORE_RECORDING, *argv], capture_output=True, text=True,
                                env={**os.environ, "NO_LINKS": links})
        assert killed.returncode == 137, killed.stderr[-2000:]
        assert not (out / "results.json").exists() and (out / ".results.json.before.tmp").is_file()
        # a command that only reads the run says what happened and what puts it back
        assert _error(capsys, ["model-card", str(out)]).startswith(
            f"odiag: error: {out}: an odiag add-teacher or rescore that was killed set the finished results aside before "
            f"it recorded its settings; give that command again, or odiag run --config {out / 'config.yaml'} --out {out}")
        assert main(argv) == 0
        assert _results(out) == _strip(fresh(tmp_path / f"{command[0]}{links}-fresh"))
        assert not [p.name for p in out.iterdir() if p.name.endswith(".before.tmp")]


def test_resume_from_another_directory(tmp_path, monkeypatch):
    """Teachers are stored resolved: a relative teacher path and an added teacher load from any cwd."""
    home = tmp_path / "home"
    _teacher(home, "mine")
    _teacher(home, "late", model="misleading")
    monkeypatch.chdir(home)
    cfg = RunConfig(**SETTINGS, teachers=("t/mine.yaml",))
    first = run(cfg, tmp_path / "run")
    add_teacher(tmp_path / "run", "t/late.yaml")
    monkeypatch.chdir(tmp_path)
    again = run(cfg, tmp_path / "run")
    assert again["counts"]["rollouts_this_invocation"] == 0
    assert {r["teacher"] for r in again["teachers"]} == {"mine", "late"}
    mine = [r["alignment"] for r in again["teachers"] if r["teacher"] == "mine"]
    assert json.dumps(mine) == json.dumps([r["alignment"] for r in first["teachers"]])


def test_rescore_refuses_an_edited_planner(tmp_path, capsys):
    """A teacher that planned the tree cannot be rescored from a new file: the tree would differ."""
    t = _teacher(tmp_path, "mine")
    out = tmp_path / "run"
    run(RunConfig(**SETTINGS, teachers=(str(t),)), out)
    t.write_text("description: a copy\nmodel: misleading\n")
    _refused(capsys, ["rescore", str(out)], out, "teacher 'mine' changed", "plans the targeted rollouts")


@pytest.mark.parametrize("key", ["algorithms=[bogus]", "jsd_beta=[1", "algorithms", "gamma=fast"])
def test_rescore_with_a_bad_value_changes_nothing(copy, capsys, key):
    _refused(capsys, ["rescore", str(copy), "--set", key], copy)


def test_growing_a_run_with_an_added_teacher_scores_it_on_the_new_questions(copy, tmp_path):
    late = _teacher(tmp_path, "late", model="misleading")
    add_teacher(copy, str(late))
    grown = run(RunConfig(**{**SETTINGS, "limit": 3}), copy)
    fresh = tmp_path / "fresh"
    run(RunConfig(**{**SETTINGS, "limit": 3}), fresh)
    assert _strip(grown) == _strip(add_teacher(fresh, str(late)))
    assert grown["counts"]["forward_passes_this_invocation"]["misleading"] == 2 * grown["questions"][2]["paths"]


def test_added_teacher_file_removed_is_refused(copy, tmp_path, capsys):
    t = _teacher(tmp_path, "gone")
    add_teacher(copy, str(t))
    t.unlink()
    _refused(capsys, ["run", *SETS, "--out", str(copy)], copy, "no longer exists")


# 5. malformed runs given to leaderboard and model-card --------------------------------------------------


def _break(root: Path, how: str) -> None:
    results = json.loads((root / "results.json").read_text())
    if how == "results-not-json":
        (root / "results.json").write_text("{truncated")
    elif how == "results-list":
        (root / "results.json").write_text("[]")
    elif how == "results-binary":
        (root / "results.json").write_bytes(b"\xff\xfe\x00\x01")
    elif how == "results-schema":
        (root / "results.json").write_text(json.dumps({**results, "schema_version": "odiag.results/0"}))
    elif how == "teachers-not-list":
        (root / "results.json").write_text(json.dumps({**results, "teachers": {"a": 1}}))
    elif how == "row-without-teacher":
        rows = [{k: v for k, v in r.items() if k != "teacher"} for r in results["teachers"]]
        (root / "results.json").write_text(json.dumps({**results, "teachers": rows}))
    elif how == "alignment-not-object":
        rows = [{**r, "alignment": "high"} for r in results["teachers"]]
        (root / "results.json").write_text(json.dumps({**results, "teachers": rows}))
    elif how == "correct-not-number":  # read by the correct-vs-incorrect figure
        rows = [{**r, "alignment_correct": {"mean": "x"}} for r in results["teachers"]]
        (root / "results.json").write_text(json.dumps({**results, "teachers": rows}))
    elif how == "window-not-int":  # read by the depth figure
        (root / "results.json").write_text(json.dumps({**results, "config": {**results["config"], "window": "x"}}))
    elif how == "correlations-not-object":
        rows = [{**r, "divergence_correlations": {"kl": [1]}} for r in results["teachers"]]
        (root / "results.json").write_text(json.dumps({**results, "teachers": rows}))
    elif how == "teacher-rows-removed":  # the tables, untouched, still hold its nodes
        gone = results["teachers"][0]["teacher"]
        rows = [r for r in results["teachers"] if r["teacher"] != gone]
        (root / "results.json").write_text(json.dumps({**results, "teachers": rows}))
    elif how == "no-counts":
        (root / "results.json").write_text(json.dumps({k: v for k, v in results.items() if k != "counts"}))
    elif how == "nodes-garbage":
        (root / "nodes.parquet").write_bytes(os.urandom(300))
    elif how == "nodes-truncated":
        data = (root / "nodes.parquet").read_bytes()
        (root / "nodes.parquet").write_bytes(data[: len(data) // 2])
    elif how == "nodes-missing-column":
        import pyarrow.parquet as pq

        table = pq.read_table(root / "nodes.parquet")
        pq.write_table(table.drop(["alignment"]), root / "nodes.parquet")
    elif how == "children-empty":
        (root / "children.parquet").write_bytes(b"")
    elif how == "paths-garbage":
        (root / "paths.parquet").write_text("question_id,path_id\n")


RESULTS_BREAKS = ("results-not-json", "results-list", "results-binary", "results-schema", "teachers-not-list",
                  "row-without-teacher", "alignment-not-object", "no-counts", "correct-not-number", "window-not-int",
                  "correlations-not-object")
TABLE_BREAKS = ("teacher-rows-removed", "nodes-garbage", "nodes-truncated", "nodes-missing-column", "children-empty", "paths-garbage")


@pytest.mark.parametrize("how", RESULTS_BREAKS + TABLE_BREAKS)
def test_leaderboard_refuses_a_malformed_run(copy, tmp_path, capsys, how):
    _break(copy, how)
    site = tmp_path / "site"
    _refused(capsys, ["leaderboard", str(copy), "--out", str(site)], copy, str(copy))
    assert not site.exists()


@pytest.mark.parametrize("how", RESULTS_BREAKS)
def test_model_card_refuses_a_malformed_run(copy, capsys, how):
    _break(copy, how)
    _refused(capsys, ["model-card", str(copy)], copy, "results.json")


def test_leaderboard_of_a_file_or_nothing(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    _error(capsys, ["leaderboard", str(tmp_path / "f"), "--out", str(tmp_path / "site")])
    _error(capsys, ["model-card", str(tmp_path / "nothing")])
    assert not (tmp_path / "site").exists()


# 6. the real command line --------------------------------------------------------------------------


def test_cli_corrupt_shard_then_repair(copy):
    reference = _results(copy)
    _corrupt(copy / "shards" / SHARDS["round"], "truncated")
    cmd = [sys.executable, "-m", "harness.cli", "run", *SETS, "--out", str(copy), "--quiet"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "corrupt shard" in out.stderr
    (copy / "results.json").unlink()
    subprocess.run([*cmd, "--repair"], cwd=ROOT, check=True)
    assert _results(copy) == reference
    assert _recomputed(copy) == reference


def test_cli_rescore_and_typo(tmp_path, copy):
    out = subprocess.run([sys.executable, "-m", "harness.cli", "run", *SETS, "--set", "teachers=[self-1cc]",
                          "--out", str(tmp_path / "new")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("odiag: error:") and out.stderr.count("\n") == 1
    assert not (tmp_path / "new").exists()
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "harness.cli", "rescore", str(copy), "--set", "algorithms=[gkd]", "--quiet"],
                   cwd=ROOT, check=True)
    assert time.monotonic() - started < 60
    assert {r["algorithm"] for r in json.loads((copy / "results.json").read_text())["teachers"]} == {"gkd"}


def test_load_config_of_a_run(copy):
    assert RunDir.load_config(copy) == CFG


# models by content --------------------------------------------------------------------------------

TOY_STUDENT = ROOT / "harness" / "toy_models" / "student"
TOY_TEACHER = ROOT / "harness" / "toy_models" / "teacher"


def _retrain(model: Path) -> None:
    """New weights under the same path: one tensor scaled, saved as training would save it."""
    from safetensors.numpy import load_file, save_file

    weights = load_file(model / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] * 1.01
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.skipif(not (TOY_STUDENT / "model.safetensors").exists(), reason="toy models not built")
def test_a_model_whose_files_changed_is_refused_until_restored(tmp_path, capsys):
    """Retrained weights under the student's path: every command that would compute with them is refused,
    a rescore from the stored trees is not, and restoring the files lets the run go on."""
    pytest.importorskip("torch")
    student = tmp_path / "student"
    shutil.copytree(TOY_STUDENT, student)
    sets = ["task=odiag_toy", "backend=hf", f"student={student}", "teachers=[toy-self-1c]", "limit=1", "n_initial=8",
            "n_target=10"]
    argv = ["run", *[a for s in sets for a in ("--set", s)], "--out", str(tmp_path / "run")]
    assert main([*argv, "--quiet"]) == 0
    models = json.loads((tmp_path / "run" / "config.json").read_text())["models"]
    assert set(models) == {str(student)} and models[str(student)]["files"]["model.safetensors"][0] > 0
    saved = tmp_path / "saved"
    shutil.copytree(student, saved)
    _retrain(student)
    for cmd in (argv, ["add-teacher", str(tmp_path / "run"), "toy-teacher"]):
        _refused(capsys, cmd, tmp_path / "run", f"model {student} changed since the run used it (model.safetensors differs",
                 "restore its files, or use another --out")
    # validate only reads the run: its fix is the files (it has no --out)
    err = _refused(capsys, ["validate", str(tmp_path / "run"), "--quick"], tmp_path / "run",
                   f"model {student} changed since the run used it (model.safetensors differs", "now): restore its files")
    assert "--out" not in err
    assert main(["rescore", str(tmp_path / "run"), "--set", "algorithms=[gkd]", "--quiet"]) == 0
    shutil.rmtree(student)
    shutil.copytree(saved, student)  # the same bytes, new times: read through once, then recorded again
    assert main([*argv, "--set", "algorithms=[gkd]", "--set", "limit=2", "--quiet"]) == 0


@pytest.mark.skipif(not (TOY_STUDENT / "model.safetensors").exists(), reason="toy models not built")
def test_a_dropped_teachers_model_leaves_the_runs_record(tmp_path, capsys):
    """A run with a teacher dropped records only the models it reads, as a run that never had it: the dropped
    teacher's model may then change, or go, and validate does not refuse the run for it."""
    pytest.importorskip("torch")
    model = tmp_path / "tm"
    shutil.copytree(TOY_TEACHER, model)
    teacher = tmp_path / "mine.yaml"
    teacher.write_text(f"model: {model}\ndtype: float32\n")
    sets = ["task=odiag_toy", "backend=hf", f"student={TOY_STUDENT}", "teachers=[toy-self-1c]", "limit=1", "n_initial=8",
            "n_target=10", "dtype=float32"]
    run = tmp_path / "run"
    assert main(["run", *[a for s in sets for a in ("--set", s)], "--out", str(run), "--quiet"]) == 0
    before = json.loads((run / "results.json").read_text())
    assert main(["add-teacher", str(run), str(teacher), "--quiet"]) == 0
    assert str(model) in json.loads((run / "config.json").read_text())["models"]
    assert main(["rescore", str(run), "--drop-teacher", "mine", "--quiet"]) == 0
    after = json.loads((run / "results.json").read_text())
    assert set(json.loads((run / "config.json").read_text())["models"]) == set(after["models"]) == set(before["models"])
    assert after["versions"]["backend"]["models"].keys() == before["versions"]["backend"]["models"].keys()
    _retrain(model)
    RunDir.verify_models(run)  # not refused for a model the run no longer reads
    # an option that moves a number is the tree's: rescore's refusal says what rescore changes (it has no --out)
    err = _refused(capsys, ["rescore", str(run), "--set", "student_args={attn_implementation: eager}"], run,
                   "holds a run with a different rollout tree (", "odiag rescore changes only algorithms, jsd_beta, gamma "
                   "and options that move no number: give the run's own value, or start a new run under another --out")
    assert "or the same settings to resume" not in err


def test_the_last_backend_description_keeps_a_model_recorded_relative_to_the_checkout(tmp_path):
    """results.json writes a model inside the checkout relative to it: the description a rescore reuses keeps it
    (compared with the plan's absolute path), and leaves out only a model the run no longer reads."""
    from harness.backends import ModelSpec
    from harness.rundir import _described

    inside = ROOT / "harness" / "toy_models" / "teacher"
    (tmp_path / "results.json").write_text(json.dumps({"versions": {"backend": {"backend": "vllm", "models": {
        "student": {}, "harness/toy_models/teacher": {}, "/gone/teacher": {}},
        "engines": {"harness/toy_models/teacher": {}, "/gone/teacher": {}}}}}))
    specs = {"student": ModelSpec(str(ROOT / "harness" / "toy_models" / "student")), str(inside): ModelSpec(str(inside))}
    described = _described(tmp_path, specs)
    assert set(described["models"]) == {"student", "harness/toy_models/teacher"}
    assert set(described["engines"]) == {"harness/toy_models/teacher"}


def test_model_files_identify_a_model_by_content(tmp_path):
    from harness.modelfiles import changed_file, fingerprint, is_local_path, model_dir, model_files

    model = tmp_path / "m"
    (model / "checkpoint-500").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "weights.bin").write_bytes(b"\0" * 10_000)
    (model / "merges.txt").write_text("a b")
    (model / "README.md").write_text("docs")
    (model / ".gitattributes").write_text("*")
    (model / "checkpoint-500" / "weights.bin").write_text("an earlier state")
    files = model_files(model)
    assert sorted(files) == ["config.json", "merges.txt", "weights.bin"]  # docs, hidden files and folders are not the model
    assert model_dir(str(model)) == model and model_dir("synthetic") is None and model_dir(str(tmp_path / "no")) is None
    assert [is_local_path(n) for n in ("/abs/m", "./m", "~/m", "a/b/c", "Qwen/Qwen3-8B", "gpt2")] == [True] * 4 + [False] * 2
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    os.utime(copy / "config.json", ns=(1, 1))
    assert fingerprint(model_files(copy)) == fingerprint(files) and changed_file(files, model_files(copy)) is None
    (copy / "weights.bin").write_bytes(b"\0" * 9_999 + b"\1")
    assert changed_file(files, model_files(copy)) == "weights.bin"
    (copy / "extra.py").write_text("code")
    assert changed_file(files, model_files(copy)) == "extra.py"
    assert changed_file({**files, "config.json": "edited by hand"}, files) == "config.json"
    # a recorded hash is reused while size and time match (only then): the record is a cache, not a trust
    stale = {name: [size, mtime, "0" * 64] for name, (size, mtime, _) in model_files(model).items()}
    assert {v[2] for v in model_files(model, stale).values()} == {"0" * 64}
    os.utime(model / "config.json", ns=(2, 2))
    assert model_files(model, stale)["config.json"][2] == files["config.json"][2]


def test_a_hub_branch_that_moved_is_refused_naming_the_snapshot_to_pin(tmp_path, monkeypatch):
    """An unpinned hub model resolves through the cache's refs/main; when main moves to another commit,
    the run names the commit it used."""
    import huggingface_hub.constants

    from harness.modelfiles import model_dir
    from harness.backends import ModelSpec
    from harness.rundir import RunDirError, model_records

    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny"
    for commit, weights in (("a" * 40, b"old"), ("b" * 40, b"new")):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
        (repo / "snapshots" / commit / "model.safetensors").write_bytes(weights)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert model_dir("org/tiny") == repo / "snapshots" / ("a" * 40)
    assert model_dir("org/tiny", "b" * 40) == repo / "snapshots" / ("b" * 40) and model_dir("org/absent") is None
    specs = [ModelSpec("org/tiny"), ModelSpec("synthetic")]
    first = model_records(specs, {}, "run")
    assert list(first) == ["org/tiny"] and first["org/tiny"]["snapshot"] == "a" * 40
    assert model_records(specs, first, "run") == first
    (repo / "refs" / "main").write_text("b" * 40)
    with pytest.raises(RunDirError, match=f"model org/tiny changed since the run used it .*pin revision {'a' * 40}"):
        model_records(specs, first, "run")


# results.json and its tables --------------------------------------------------------------------------


def test_tables_of_another_invocation_are_refused_not_mixed(tmp_path, monkeypatch, capsys):
    """A grow stopped between its tables and results.json leaves a run that reads as unfinished (not the
    old results with the new tables), and a table that is not the one results.json was written with is
    refused by the leaderboard."""
    import harness.rundir

    out = tmp_path / "run"
    run(CFG, out)
    results = json.loads((out / "results.json").read_text())
    assert set(results["tables"]) == {"nodes.parquet", "children.parquet", "paths.parquet"}
    real = harness.rundir.write_json

    def stop_before_results(path, obj):
        if Path(path).name == "results.json":
            raise KeyboardInterrupt
        real(path, obj)

    monkeypatch.setattr(harness.rundir, "write_json", stop_before_results)
    with pytest.raises(KeyboardInterrupt):
        run(RunConfig(**{**SETTINGS, "limit": 3}), out)
    monkeypatch.undo()
    assert not (out / "results.json").exists()
    _refused(capsys, ["leaderboard", str(out), "--out", str(tmp_path / "site")], out, "the run has not finished")
    run(RunConfig(**{**SETTINGS, "limit": 3}), out)  # the same command again finishes it
    assert main(["leaderboard", str(out), "--out", str(tmp_path / "site")]) == 0

    other = tmp_path / "other"
    run(RunConfig(**{**SETTINGS, "seed": 1}), other)
    shutil.copy(other / "nodes.parquet", out / "nodes.parquet")
    _refused(capsys, ["leaderboard", str(out), "--out", str(tmp_path / "site2")], out,
             f"{out / 'nodes.parquet'}: not the table results.json was written with",
             f"or the file was edited or replaced since); wait for that command, or write the run's tables again with "
             f"odiag run --config {out / 'config.yaml'} --out {out}")
    assert main(["run", "--config", str(out / "config.yaml"), "--out", str(out), "--quiet"]) == 0  # the fix named
    assert main(["leaderboard", str(out), "--out", str(tmp_path / "site2")]) == 0


def test_a_table_replaced_after_its_check_is_not_read(tmp_path, monkeypatch):
    """The leaderboard parses each table from the bytes it hashed: a command that replaces nodes.parquet
    between the check and the read (simulated by the parser swapping the file on disk first) cannot
    slip another run's nodes in."""
    import pyarrow.parquet as pq

    from harness.leaderboard.merge import load_run

    out, other = tmp_path / "run", tmp_path / "other"
    run(CFG, out)
    run(RunConfig(**{**SETTINGS, "seed": 1}), other)
    expected = load_run(out, "run").nodes
    assert not np.array_equal(expected["alignment"], load_run(other, "other").nodes["alignment"], equal_nan=True)
    real, swapped = pq.read_table, []

    def swap_then_parse(source, *args, **kwargs):
        if not swapped:  # nodes.parquet is read first
            shutil.copy(other / "nodes.parquet", out / "nodes.parquet")
            swapped.append(True)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", swap_then_parse)
    got = load_run(out, "run").nodes
    assert swapped and got.keys() == expected.keys()
    assert all(np.array_equal(got[k], expected[k], equal_nan=got[k].dtype.kind == "f") for k in expected)


def test_a_run_stopped_before_computing_anything_takes_the_corrected_settings(clean, tmp_path, capsys, monkeypatch):
    """A directory that holds only its recorded settings (stopped before the first shard) pins nothing:
    the corrected command, a smaller limit here, runs as on a fresh directory. Once a shard exists the
    recorded settings hold again."""
    import harness.pipeline

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(harness.pipeline, "_execute", stopped)
        with pytest.raises(KeyboardInterrupt):
            run(RunConfig(**{**SETTINGS, "limit": 50}), out)
    assert sorted(p.name for p in out.iterdir()) == [".drawing", "config.json", "config.yaml"]
    assert _strip(run(CFG, out)) == _results(clean)
    _refused(capsys, ["run", *SETS, "--set", "limit=1", "--out", str(out)], out, "a run grows, it never shrinks")


def test_a_setting_the_strategy_never_reads_leaves_the_run_as_it_is(copy, clean, capsys, tmp_path):
    """settle's and survey's settings under paper shape nothing: the run resumes with zero rollouts and
    the same numbers, and records the new values. Under settle the same price is its own, and refused."""
    unread = ["--set", "confidence=0.5", "--set", "price=0.01", "--set", "survey_positions=8"]
    assert main(["run", *SETS, *unread, "--out", str(copy), "--quiet"]) == 0
    after = json.loads((copy / "results.json").read_text())
    assert after["counts"]["rollouts_this_invocation"] == 0
    assert after["teachers"] == _results(clean)["teachers"] and after["config"]["price"] == 0.01
    assert main(["run", *SETS, "--out", str(copy), "--quiet"]) == 0  # and back
    _refused(capsys, ["run", *SETS, "--set", "n_target=50", "--out", str(copy)], copy, "n_target: 40 there, 50 now")
    # settings a run warns about (n_target below n_min) and then refuses: the error alone, no warning before it
    _refused(capsys, ["run", *SETS, "--set", "n_target=5", "--out", str(copy)], copy, "n_target: 40 there, 5 now")
    settle = tmp_path / "settle"
    assert main(["run", *SETS, "--set", "strategy=settle", "--out", str(settle), "--quiet"]) == 0
    _refused(capsys, ["run", *SETS, "--set", "strategy=settle", "--set", "price=0.01", "--out", str(settle)], settle,
             "price: 0.001 there, 0.01 now")


def test_an_added_teacher_whose_file_is_gone_can_be_dropped(copy, clean, tmp_path, capsys):
    """An added teacher's deleted file blocks the run until it is restored, or the teacher is dropped:
    then the run is the clean run again, its passes gone. The config's teachers cannot be dropped."""
    late = _teacher(tmp_path, "late", model="misleading")
    add_teacher(copy, str(late))
    late.unlink()
    err = _refused(capsys, ["run", *SETS, "--out", str(copy)], copy, "which no longer exists; restore it, or remove the "
                   f"teacher with odiag rescore {copy} --drop-teacher late")
    _refused(capsys, ["rescore", str(copy), "--drop-teacher", "synthetic-helpful"], copy,
             "--drop-teacher synthetic-helpful: 'synthetic-helpful' plans the rollout tree and cannot leave it; "
             "teachers added with odiag add-teacher: late")
    _refused(capsys, ["rescore", str(copy), "--drop-teacher", "nobody"], copy, "'nobody' is not in this run")
    assert main(["rescore", str(copy), "--drop-teacher", "late", "--quiet"]) == 0, err
    assert _results(copy) == _results(clean)
    assert not list(copy.glob("shards/*/score-p*-late.npz"))
    assert "late" not in {t["name"] for t in json.loads((copy / "config.json").read_text())["teachers"]}
    assert main(["run", *SETS, "--out", str(copy), "--quiet"]) == 0
    # an add-teacher stopped before it finished (no results.json), then its file edited: rescored, or gone: dropped
    late = _teacher(tmp_path, "late", model="misleading")
    add_teacher(copy, str(late))
    (copy / "results.json").unlink()
    late.write_text(late.read_text().replace("misleading", "helpful"))
    _refused(capsys, ["run", *SETS, "--out", str(copy)], copy, f"rescore it with odiag rescore {copy}")
    assert main(["rescore", str(copy), "--quiet"]) == 0
    (copy / "results.json").unlink()
    late.unlink()
    _refused(capsys, ["rescore", str(copy), "--set", "gamma=0.5", "--drop-teacher", "late"], copy, "the run has not finished")
    assert main(["rescore", str(copy), "--drop-teacher", "late", "--quiet"]) == 0
    assert _results(copy) == _results(clean)


def test_dropping_a_teacher_leaves_one_whose_name_ends_in_its_name(copy, tmp_path):
    """``--drop-teacher late`` removes the passes of 'late' only, not those of 'x-late' (whose shard names
    end in '-late' too): the run equals the one that never had 'late', with no pass redone."""
    add_teacher(copy, str(_teacher(tmp_path, "x-late", model="misleading")))
    before, kept = _results(copy), sorted(copy.glob("shards/*/*-x-late.npz"))
    add_teacher(copy, str(_teacher(tmp_path, "late")))
    assert main(["rescore", str(copy), "--drop-teacher", "late", "--quiet"]) == 0
    after = json.loads((copy / "results.json").read_text())
    assert _strip(after) == before and sorted(copy.glob("shards/*/*-x-late.npz")) == kept
    assert after["counts"]["forward_passes_this_invocation"] == {}


def test_teacher_names_that_would_share_stored_passes_are_refused(copy, tmp_path, capsys):
    """A teacher's passes are stored under its name made file-safe: 'my teacher' and 'my_teacher' would
    read each other's numbers, and 'student' would be the student's own passes. Refused in one line, at
    the start of a run and before add-teacher records anything."""
    spaced, underscored = _teacher(tmp_path, "my teacher"), _teacher(tmp_path, "my_teacher", model="misleading")
    student = _teacher(tmp_path, "student")
    both = ["run", *SETS, "--set", f"teachers=['{spaced}', '{underscored}']", "--out", str(tmp_path / "new")]
    assert "'my teacher' and 'my_teacher' differ only in characters a file name cannot hold" in _error(capsys, both)
    assert "the name 'student' is the student's" in _error(
        capsys, ["run", *SETS, "--set", f"teachers=[{student}]", "--out", str(tmp_path / "new")])
    assert not (tmp_path / "new").exists()
    _refused(capsys, ["add-teacher", str(copy), str(student)], copy, "the name 'student' is the student's")
    assert main(["add-teacher", str(copy), str(spaced), "--quiet"]) == 0
    _refused(capsys, ["add-teacher", str(copy), str(underscored)], copy, "both are stored as 'my_teacher'")
