"""``run(config)``: the diagnostic of SPEC §4, top to bottom, resumable from its run directory.

1. initial rollouts of every question (one batched backend call);
2. representative correct and incorrect paths, chosen reproducibly from the seed (harness/questions.py);
3. one student pass and one pass per teacher over each path (the tree never depends on a teacher);
4. targeted rollouts window by window, every question's requests batched together;
5. a record per decision point x teacher x algorithm (harness/core/records.py);
6. aggregates (SPEC §5) into results.json (harness/results.py).

The config is first resolved into a checked plan (harness/plan.py); only then is the run directory
opened and locked (harness/rundir.py). Every step's output is a checked shard there, written
atomically once the backend call that produced it returns; a rerun loads finished shards and redoes
only the rest, and because every request carries a seed derived from ids, the redone work draws
exactly what it would have drawn. ``add_teacher`` and ``rescore`` reuse the stored tree: zero rollouts.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from harness.backends import STUDENT, Backend, SampleRequest, ScoreRequest, ScoreResult
from harness.backends.wrappers import CountingBackend, LazyBackend, NoRollouts
from harness.config import EXECUTION_FIELDS, SCORING_FIELDS, ConfigError, RunConfig, build, to_dict
from harness.core import Rollouts
from harness.core.allocation import STRATEGIES, AllocationParams, ScoredTokens, window_state
from harness.core.records import KEY_BITS, LogprobTable, RecordSettings, TeacherPass, path_records
from harness.core.tree import Exits, path_common_prefixes
from harness.plan import ADDED, RunPlan, build_backend, make_plan, model_name, model_specs, resolve_teacher, run_task, slug
from harness.questions import QuestionState, prepare, windows
from harness.results import build_results, json_ready, write_outputs
from harness.rundir import RunDir, RunDirError, ragged, score_arrays, score_result, unragged
from harness.seeds import derive_seed
from harness.tasks import OUTCOMES, Skip, Task
from harness.teachers import build_artefacts

__all__ = ["add_teacher", "json_ready", "model_specs", "rescore", "run", "run_task", "windows"]

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]


@dataclasses.dataclass
class RunContext:
    """What every phase of one invocation reads: the plan, its directory, the backend, the states."""

    plan: RunPlan
    rundir: RunDir
    backend: CountingBackend  # the tree's rollouts and the forward passes, counted
    artefact_backend: CountingBackend  # solutions and summaries for contexts, counted apart
    states: dict[str, QuestionState] = dataclasses.field(default_factory=dict)

    @property
    def cfg(self) -> RunConfig:
        return self.plan.config

    @property
    def task(self) -> Task:
        return self.plan.task


# 1. initial rollouts -----------------------------------------------------------------------------


def _initial_rollouts(ctx: RunContext, questions) -> None:
    cfg, task, todo = ctx.cfg, ctx.task, []
    for q in questions:
        if (shard := ctx.rundir.load(q.id, "initial")) is None:
            todo.append(q)
        else:
            ctx.states[q.id] = QuestionState(q, unragged(shard["tokens"], shard["offsets"]), shard["outcome"])
    requests = [
        SampleRequest(q.prompt_ids, cfg.n_initial, derive_seed(cfg.seed, q.id, "initial"), ctx.plan.max_new_tokens,
                      cfg.temperature, task.stop_ids)
        for q in todo
    ]
    for q, res in zip(todo, ctx.backend.sample(requests), strict=True):
        outcomes = np.asarray(task.outcomes(q, res.tokens, res.truncated), dtype=np.int8)
        tokens, offsets = ragged(res.tokens)
        ctx.rundir.save(q.id, "initial", tokens=tokens, offsets=offsets, outcome=outcomes)
        ctx.states[q.id] = QuestionState(q, res.tokens, outcomes)
    ctx.states = {q.id: ctx.states[q.id] for q in questions}


# 3. teacher passes -------------------------------------------------------------------------------


def _score_paths(ctx: RunContext) -> None:
    """One student pass and one pass per teacher (with the student as reference) over each path."""
    cfg, task, teachers = ctx.cfg, ctx.task, ctx.plan.specs
    # solutions by named models and summaries, generated once per question and cached in the run
    n_correct = max((t.correct_solutions for t in teachers), default=0)
    n_wrong = max((t.wrong_solutions for t in teachers), default=0)
    shown = {s.question.id: [x for c, w in s.solutions for x in (*c[:n_correct], *w[:n_wrong])] for s in ctx.states.values()}
    artefacts = build_artefacts(task, teachers, [s.question for s in ctx.states.values()], ctx.artefact_backend,
                                ctx.rundir.root / "artefacts", student_solutions=shown)
    pending, requests = [], []
    for s in ctx.states.values():
        for j, path in enumerate(s.paths):
            name = f"score-p{j}-{STUDENT}"
            if (shard := ctx.rundir.load(s.question.id, name)) is not None:
                s.scores[(j, STUDENT)] = score_result(shard)
            else:
                pending.append((s, j, STUDENT, name))
                requests.append(ScoreRequest(s.question.prompt_ids, path, STUDENT, cfg.temperature, cfg.score_top_k))
            correct, wrong = s.solutions[j]
            for t in teachers:
                name = f"score-p{j}-{slug(t.name)}"
                if (shard := ctx.rundir.load(s.question.id, name)) is not None:
                    s.scores[(j, t.name)] = Skip(str(shard["skip"])) if "skip" in shard else score_result(shard)
                    continue
                context = task.teacher_context(t, s.question, correct, wrong, artefacts, response_length=len(path))
                if isinstance(context, Skip):
                    s.scores[(j, t.name)] = context
                    ctx.rundir.save(s.question.id, name, skip=np.array(context.reason))
                    continue
                pending.append((s, j, t.name, name))
                requests.append(ScoreRequest(np.asarray(context), path, model_name(t), cfg.temperature, cfg.score_top_k,
                                             reference_model=STUDENT, reference_context=s.question.prompt_ids))
    for (s, j, key, name), req, res in zip(pending, requests, ctx.backend.score(requests), strict=True):
        s.scores[(j, key)] = res
        ctx.rundir.save(s.question.id, name, **score_arrays(res, req.context))


def _tables(s: QuestionState, j: int, teachers) -> tuple[LogprobTable, dict[str, ScoreResult], dict[str, LogprobTable]]:
    """The student's and each scored teacher's known log-probabilities along path ``j``."""
    own = s.scores[(j, STUDENT)]
    scored = {t.name: r for t in teachers if isinstance(r := s.scores.get((j, t.name)), ScoreResult)}
    student = LogprobTable.build([(own.ids, own.offsets, own.logprobs)]
                                 + [(r.ids, r.offsets, r.reference_logprobs) for r in scored.values()])
    return student, scored, {name: LogprobTable.build([(r.ids, r.offsets, r.logprobs)]) for name, r in scored.items()}


# 4. targeted rollouts ----------------------------------------------------------------------------


def _scored_tokens(s: QuestionState, j: int, planners) -> ScoredTokens:
    """What the forward passes say about every (position, token) read along path ``j``."""
    student, scored, tabs = _tables(s, j, planners)
    keys = np.unique(np.concatenate([student.keys, *(tab.keys for tab in tabs.values())]))
    pos, tok = keys >> KEY_BITS, keys & ((1 << KEY_BITS) - 1)
    # one column per planning teacher on every path; a teacher skipped on this path stays nan
    pi_teacher, reverse_kl = np.full((len(keys), len(planners)), np.nan), np.full((len(keys), len(planners)), np.nan)
    for i, t in enumerate(planners):
        if t.name in tabs:
            pi_teacher[:, i] = np.exp(tabs[t.name].get(pos, tok))
            reverse_kl[:, i] = scored[t.name].divergences["reverse_kl"][pos]
    return ScoredTokens(pos, tok, np.exp(student.get(pos, tok)), pi_teacher, reverse_kl)


def _plan_key(cfg: RunConfig, s: QuestionState) -> np.ndarray:
    """What a round's plan depends on besides the stored tree: the budget and the question's windows."""
    return np.array([-1 if cfg.budget is None else cfg.budget, len(s.spans)], dtype=np.int64)


def _same_plan(plan, shard: dict[str, np.ndarray]) -> bool:
    """Whether a stored round is exactly what ``plan`` asks for, rollout by rollout."""
    want = [np.repeat(x, plan.count_R) for x in (plan.path_R, plan.position_R + 1, plan.token_R)]
    have = (shard["target_path"], shard["forced_len"], shard["forced_token"])
    return all(len(x) == len(y) and np.array_equal(x, y) for x, y in zip(want, have, strict=True))


def _enrich_window(ctx: RunContext, w: int, params: AllocationParams) -> None:
    """Targeted rollouts of window ``w`` in rounds planned by ``cfg.strategy``, all questions batched.

    Round ``r`` of a question is the shard ``window{w}-round{r}``; on resume, stored rounds are
    replayed (their exits, never tokens) and planning continues from the same state, so a strategy
    plans exactly what it planned before. A round stored under another budget is replayed only if
    the plan under this budget is the same; otherwise it and every later round of the question are
    dropped and planned afresh, so a grown budget gives what a fresh run with it would.
    """
    cfg, task, max_new = ctx.cfg, ctx.task, ctx.plan.max_new_tokens
    active = {qid: s for qid, s in ctx.states.items() if w < len(s.spans)}
    for s in active.values():
        s.budget.append({"window": list(s.spans[w]), "rollouts": 0, "tokens_generated": 0, "rounds": 0})
    for r in itertools.count():
        jobs, requests = [], []
        for qid, s in list(active.items()):
            name, key = f"window{w}-round{r}", _plan_key(cfg, s)
            shard = ctx.rundir.load(qid, name)
            if shard is not None and np.array_equal(shard.get("plan_key", ()), key):
                _ingest_shard(s, shard)
                continue
            lo, hi = s.spans[w]
            scored = [_scored_tokens(s, j, ctx.plan.planners) for j in range(len(s.paths))]
            children = [s.tree.children(j) for j in range(len(s.paths))]
            state = window_state(w, len(s.spans), lo, hi, scored, children, path_common_prefixes(s.paths),
                                 sum(b["rollouts"] for b in s.budget[:-1]), s.budget[-1]["rollouts"])
            plan = STRATEGIES[cfg.strategy](state, params)
            if shard is not None and _same_plan(plan, shard):
                _ingest_shard(s, shard)
                continue
            if shard is not None:
                dropped = ctx.rundir.drop_rounds_from(qid, w, r)
                log.info("%s: %d stored round(s) from window %d round %d planned under another budget: redone", qid, dropped, w, r)
            if plan.total == 0:
                del active[qid]
                continue
            rows = list(zip(plan.path_R.tolist(), plan.position_R.tolist(), plan.token_R.tolist(), plan.count_R.tolist(), strict=True))
            jobs.append((s, name, rows, key))
            for j, k, a, n in rows:
                if a in task.stop_ids or max_new - (k + 1) <= 0:
                    continue  # the response is already complete (or at its limit): nothing to sample
                prefix = np.concatenate([s.question.prompt_ids, s.paths[j][:k], [a]]).astype(np.int64)
                seed = derive_seed(cfg.seed, qid, "target", j, k, a, w, r)
                requests.append(SampleRequest(prefix, n, seed, max_new - (k + 1), cfg.temperature, task.stop_ids))
        if not active:
            return
        results = iter(ctx.backend.sample(requests))
        for s, name, rows, key in jobs:
            _record_round(ctx, s, name, rows, results, (w, *s.spans[w]), key)


def _record_round(ctx: RunContext, s: QuestionState, name: str, rows, results, window, plan_key) -> None:
    """Score one round's rollouts, ingest them, and store them compactly as one shard."""
    task, max_new = ctx.task, ctx.plan.max_new_tokens
    conts, forced, target, forced_tok, truncated = [], [], [], [], []
    for j, k, a, n in rows:
        if a in task.stop_ids or max_new - (k + 1) <= 0:
            toks, trunc = [np.zeros(0, np.int64)] * n, np.full(n, a not in task.stop_ids)
            ctx.backend.count_complete(n)
        else:
            res = next(results)
            toks, trunc = res.tokens, np.asarray(res.truncated)
        conts += toks
        truncated.append(trunc)
        forced += [k + 1] * n
        target += [j] * n
        forced_tok += [a] * n
    full = [np.concatenate([s.paths[j][: f - 1], [a], c]).astype(np.int64)
            for j, f, a, c in zip(target, forced, forced_tok, conts, strict=True)]
    trunc = np.concatenate(truncated)
    reward = np.asarray(task.rewards(s.question, full, trunc), dtype=np.int64)
    batch = Rollouts.from_lists(conts, reward, forced, target, forced_tok)
    exits = s.tree.ingest(batch)
    ctx.rundir.save(
        s.question.id, name, forced_len=batch.forced_len, target_path=batch.target_path,
        forced_token=batch.forced_token, reward=reward, truncated=trunc,
        length=np.array([len(f) for f in full], dtype=np.int64),
        exit_lcp=np.stack([e.lcp for e in exits]), exit_token=np.stack([e.token for e in exits]),
        window=np.array(window), plan_key=plan_key,
    )
    _count(s, len(conts), int(sum(len(c) for c in conts)))


def _count(s: QuestionState, rollouts: int, tokens: int) -> None:
    s.budget[-1]["rollouts"] += rollouts
    s.budget[-1]["tokens_generated"] += tokens
    s.budget[-1]["rounds"] += 1


def _ingest_shard(s: QuestionState, shard: dict[str, np.ndarray]) -> None:
    """Replay a stored round: the compact exits, never the tokens (SPEC §6)."""
    exits = [Exits(lcp=shard["exit_lcp"][j], token=shard["exit_token"][j]) for j in range(len(s.paths))]
    s.tree.ingest_all_exits(exits, shard["forced_len"], shard["reward"])
    _count(s, len(shard["reward"]), int((shard["length"] - shard["forced_len"]).sum()))


# 5. per-node records -----------------------------------------------------------------------------


def _records(ctx: RunContext) -> tuple[list[dict], list[dict], dict[str, int]]:
    """Every path's node and child records (core/records.py), and what was skipped, summed."""
    cfg, teachers = ctx.cfg, ctx.plan.specs
    settings = RecordSettings(ctx.plan.n_min, cfg.gamma, cfg.jsd_beta, tuple(cfg.algorithms))
    nodes, children, skipped = [], [], {}
    for s in ctx.states.values():
        for j, path in enumerate(s.paths):
            student, scored, tabs = _tables(s, j, teachers)
            passes = [TeacherPass(t.name, tabs[t.name], scored[t.name].divergences, scored[t.name].approximate)
                      for t in teachers if t.name in scored]
            n, c, sk = path_records(s.question.id, j, path, OUTCOMES[s.path_outcome[j]], s.tree.children(j), student,
                                    passes, settings, ctx.task.token_texts)
            nodes += n
            children += c
            for k, v in sk.items():
                skipped[k] = skipped.get(k, 0) + v
    return nodes, children, skipped


# 6. run ------------------------------------------------------------------------------------------


def run(
    cfg: RunConfig, out: str | Path, on_progress: Progress | None = None, backend: Backend | None = None,
    task: Task | None = None, repair: bool = False,
) -> dict:
    """Run (or resume, or grow) the diagnostic of ``cfg`` in ``out``; return the results dict also written there.

    ``cfg`` is resolved into a checked plan before the directory is touched; ``repair`` drops
    corrupt shards and recomputes them instead of refusing them.
    """
    plan = make_plan(cfg, task, RunDir.stored_teacher_files(out))
    with RunDir.open(out, plan, repair=repair) as rundir:
        return _execute(rundir, on_progress, backend)


def _execute(rundir: RunDir, on_progress: Progress | None, backend: Backend | None, frozen: bool = False) -> dict:
    """SPEC §4 on a held run directory; ``frozen``: the tree must be stored whole (no rollout drawn)."""
    plan, cfg = rundir.plan, rundir.plan.config
    progress = on_progress or (lambda stage, done, total: None)
    if backend is None:
        backend = LazyBackend(lambda: build_backend(cfg, plan.specs), _last_backend(rundir.root))
    ctx = RunContext(plan, rundir, CountingBackend(NoRollouts(backend, str(rundir.root)) if frozen else backend),
                     CountingBackend(backend))
    questions = plan.task.questions(cfg.limit)

    progress("initial rollouts", 0, len(questions))
    _initial_rollouts(ctx, questions)
    for s in ctx.states.values():
        prepare(s, cfg)
    progress("initial rollouts", len(questions), len(questions))

    _score_paths(ctx)
    progress("teacher passes", len(questions), len(questions))

    params = AllocationParams(
        n_target=cfg.n_target, n_min=plan.n_min, tau=cfg.tau, k_window=cfg.k_window, budget=cfg.budget,
        confidence=cfg.confidence, tolerance=cfg.tolerance, n_max=cfg.n_max, price=cfg.price,
    )
    n_windows = max((len(s.spans) for s in ctx.states.values()), default=0)
    for w in range(n_windows):
        _enrich_window(ctx, w, params)
        progress("targeted rollouts", w + 1, n_windows)

    nodes, children, skipped = _records(ctx)
    results = build_results(cfg, plan.specs, ctx.states.values(), nodes, skipped, ctx.backend, ctx.artefact_backend.rollouts)
    paths = [
        {"question_id": s.question.id, "path_id": j, "correct": s.path_correct[j], "outcome": OUTCOMES[s.path_outcome[j]],
         "tokens": p.tolist(), "text": plan.task.token_texts(p), "prompt": "".join(plan.task.token_texts(s.question.prompt_ids))}
        for s in ctx.states.values() for j, p in enumerate(s.paths)
    ]
    write_outputs(rundir.root, results, nodes, children, paths)
    progress("done", 1, 1)
    return results


def _last_backend(root: Path) -> dict | None:
    """The backend description of the run's last results (reported when this invocation loads no model)."""
    try:
        return json.loads((root / "results.json").read_text())["versions"]["backend"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _finished(out: str | Path) -> RunConfig:
    cfg = RunDir.load_config(out)
    if not (Path(out) / "results.json").exists():
        raise RunDirError(f"{out}: the run has not finished (no results.json); resume it with odiag run first")
    return cfg


def add_teacher(
    out: str | Path, teacher: str, on_progress: Progress | None = None, backend: Backend | None = None,
    task: Task | None = None,
) -> dict:
    """Score one more teacher on a finished run: its forward passes only, zero new rollouts.

    The teacher is loaded and checked against the task before it is recorded in the run directory
    (by resolved file and identity), so rerunning the original command keeps it, from any directory.
    """
    cfg = _finished(out)
    ref = resolve_teacher(teacher, ADDED)
    plan = make_plan(cfg, task, RunDir.stored_teacher_files(out))
    plan.task.check_teacher(ref.config)
    with RunDir.open(out, plan, add=ref) as rundir:
        return _execute(rundir, on_progress, backend, frozen=True)


def rescore(
    out: str | Path, overrides: Sequence[str] = (), on_progress: Progress | None = None,
    backend: Backend | None = None, task: Task | None = None,
) -> dict:
    """Rescore a finished run's stored trees under new scoring settings, zero rollouts.

    ``overrides`` (``key=value``) may change only scoring settings (``algorithms``, ``jsd_beta``,
    ``gamma``); teachers added to the run whose file changed are scored again from the new file.
    The results equal a fresh run's with the same settings.
    """
    import yaml

    stored = _finished(out)
    data = to_dict(stored)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value")
        try:
            data[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {item[:80]!r}: the value is not valid YAML") from None
    cfg = build(RunConfig, data, f"{out}/config.json with --set")
    if moved := [k for k in data if getattr(cfg, k) != getattr(stored, k) and k not in (*SCORING_FIELDS, *EXECUTION_FIELDS)]:
        raise ConfigError(
            f"rescore: {moved[0]!r} shapes the rollout tree or its extent; rescore changes only {', '.join(SCORING_FIELDS)} "
            "(grow a run with odiag run, or start another --out)"
        )
    plan = make_plan(cfg, task, RunDir.stored_teacher_files(out))
    with RunDir.open(out, plan, rescore=True) as rundir:
        return _execute(rundir, on_progress, backend, frozen=True)
