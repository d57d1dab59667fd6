"""Scoring a finished run's stored tree again: one more teacher, or new scoring settings; zero rollouts."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from harness.backends import Backend
from harness.config import EXECUTION_FIELDS, SCORING_FIELDS, ConfigError, RunConfig, apply_overrides, build, to_dict
from harness.errors import OdiagError
from harness.plan import ADDED, backend_options, check_backend, make_plan, resolve_teacher
from harness.rundir import RunDir, RunDirError, RunLocked
from harness.wording import finish_command
from harness.tasks import Task

log = logging.getLogger(__name__)


def _finished(out: str | Path, stopped: bool = False, overrides: Sequence[str] = (), dropping: bool = False) -> RunConfig:
    """The recorded config of a finished run. ``stopped``: also of a run stopped while a teacher was added.
    A rescore that changes no setting (it drops a teacher, or rescores one whose file changed) finishes it:
    ``run`` names that rescore as the way out when the added teacher's file is gone or edited. A rescore
    whose ``overrides`` are the scoring settings the run records finishes a rescore stopped before its end,
    and one ``dropping`` teachers a stopped drop. A run stopped while its tree was drawn is none of these,
    except for a drop alone (it needs no whole tree)."""
    try:
        RunDir.finished_results(out)
    except RunLocked:
        raise
    except RunDirError:
        if RunDir.set_aside_unrecorded(out):  # killed before it recorded a thing: finished, as RunDir.open finds it
            return RunDir.load_config(out)
        recorded = not overrides or _records(out, overrides)
        if not ((stopped and _has_added_teachers(out)) or (overrides and recorded)
                or (dropping and recorded and RunDir.pending_drop(out))):
            raise
        if RunDir.stopped_drawing(out) and not (dropping and not overrides):  # a drop needs no whole tree
            raise RunDirError(f"{out}: odiag run stopped while it drew the rollout tree, which this command needs whole; "
                              f"finish it first: {finish_command(out)}") from None
    return RunDir.load_config(out)


def _records(out: str | Path, overrides: Sequence[str]) -> bool:
    """Whether the run records the scoring settings ``overrides`` set (a stopped rescore of them, rerun)."""
    try:
        stored = RunDir.load_config(out)
        data = to_dict(stored)
        apply_overrides(data, overrides)
        cfg = build(RunConfig, data, f"{out}/config.json with --set")
    except OdiagError:
        return False
    return all(getattr(cfg, k) == getattr(stored, k) for k in SCORING_FIELDS)


def _has_added_teachers(out: str | Path) -> bool:
    try:
        return any(t.get("role") == ADDED for t in RunDir.read_saved(out)["teachers"] if isinstance(t, dict))
    except ConfigError:
        return False


def add_teacher(
    out: str | Path, teacher: str, on_progress=None, backend: Backend | None = None,
    task: Task | None = None,
) -> dict:
    """Score one more teacher on a finished run: its forward passes, zero new tree rollouts (the solutions
    or summaries its context shows are sampled if the run has not made them yet).

    The teacher is loaded and checked against the task before it is recorded in the run directory
    (by resolved file and identity), so rerunning the original command keeps it, from any directory.
    """
    ref = resolve_teacher(teacher, ADDED)  # the file alone first: a bad teacher is named before the run is read
    prepared_from = RunDir.record_bytes(out)
    cfg = _finished(out, stopped=True)  # a stopped add-teacher, run again, finishes
    if (done := _already_scored(out, ref)) is not None:
        return done
    plan = make_plan(cfg, task, RunDir.stored_teacher_files(out), built=backend is None)
    check_backend(cfg, [ref.config], built=backend is None)
    plan.task.check_teacher(ref.config)
    backend_options(cfg, [*plan.specs, ref.config])  # its model_args against the backend
    from harness.pipeline import _execute, check_prompts

    check_prompts(out, plan)  # its contexts would read other questions than the tree answered
    with RunDir.open(out, plan, add=ref, prepared_from=prepared_from) as rundir:
        try:
            return _execute(rundir, on_progress, backend, frozen=True)
        except Exception as exc:  # a context that fails on real data, a model that will not load: the finished run
            rundir.undo(ref.name, cause=exc)  # stays as it was (a stop, rerun, finishes the add instead)
            raise


def _already_scored(out: str | Path, ref) -> dict | None:
    """A finished run's results when ``ref`` (the same name and file) is already scored in it: adding it again
    changes nothing, and writes nothing (results.json, and a validation of it, stay as they are). None otherwise."""
    results = Path(out) / "results.json"
    saved = [t for t in RunDir.read_saved(out)["teachers"] if isinstance(t, dict)]
    if not results.is_file() or not any(t.get("name") == ref.name and t.get("identity") == ref.identity for t in saved):
        return None
    log.info("teacher %s is already scored in %s (the same file): nothing to add", ref.name, out)
    return json.loads(results.read_text(encoding="utf-8"))


def rescore(
    out: str | Path, overrides: Sequence[str] = (), on_progress=None,
    backend: Backend | None = None, task: Task | None = None, drop: Sequence[str] = (),
) -> dict:
    """Rescore a finished run's stored trees under new scoring settings, zero rollouts.

    ``overrides`` (``key=value``) may change only scoring settings (``algorithms``, ``jsd_beta``,
    ``gamma``); teachers added to the run whose file changed are scored again from the new file, and
    those named in ``drop`` leave the run with their passes. The results equal a fresh run's with the
    same settings and teachers.
    """
    prepared_from = RunDir.record_bytes(out)
    stored = _finished(out, stopped=not overrides, overrides=overrides, dropping=bool(drop))
    if drop and not (Path(out) / "results.json").is_file():  # a stopped drop, run again: the names it already removed
        recorded = {t.get("name") for t in RunDir.read_saved(out)["teachers"] if isinstance(t, dict)}
        removed = set(RunDir.pending_drop(out))
        drop = [name for name in drop if name in recorded or name not in removed]
    data = to_dict(stored)
    given = apply_overrides(data, overrides, "jsd_beta=0.9")
    # a key --set gives is named as --set's; the keys offered are the ones a rescore may change
    cfg = build(RunConfig, data, f"{out}/config.json", dict.fromkeys(given, "--set"), named=(*SCORING_FIELDS, *EXECUTION_FIELDS))
    if moved := [k for k in data if getattr(cfg, k) != getattr(stored, k) and k not in (*SCORING_FIELDS, *EXECUTION_FIELDS)]:
        raise ConfigError(
            f"rescore: {moved[0]!r} shapes the rollout tree or its extent; rescore changes only {', '.join(SCORING_FIELDS)} "
            "(grow a run with odiag run, or start another --out)"
        )
    plan = make_plan(cfg, task, RunDir.stored_teacher_files(out), built=backend is None)
    from harness.pipeline import _execute, check_prompts

    check_prompts(out, plan)
    with RunDir.open(out, plan, rescore=True, drop=tuple(drop), prepared_from=prepared_from) as rundir:
        if drop and RunDir.stopped_drawing(out):  # dropped; the tree is odiag run's to finish
            raise RunDirError(f"{out}: dropped {', '.join(drop)}; the run stopped while odiag run drew its tree: finish "
                              f"it with {finish_command(out)}")
        try:
            return _execute(rundir, on_progress, backend, frozen=True)
        except Exception as exc:  # a backend or model that cannot start, a corrupt shard: the run as it was (RunDir.open
            rundir.undo(cause=exc)  # says what)
            raise
