"""``run(config)``: the diagnostic of SPEC §4, top to bottom, resumable from its run directory.

1. initial rollouts of every question (one batched backend call);
2. representative correct and incorrect paths, chosen reproducibly from the seed (harness/questions.py);
3. one student pass and one pass per teacher over each path (the tree never depends on a teacher);
4. targeted rollouts window by window, every question's requests batched together (harness/targeted.py);
5. a record per decision point x teacher x algorithm (harness/core/records.py);
6. aggregates (SPEC §5) into results.json (harness/results.py).

The config is first resolved into a checked plan (harness/plan.py); only then is the run directory
opened and locked (harness/rundir.py). Every step's output is a checked shard there, written
atomically once the backend call that produced it returns; a rerun loads finished shards and redoes
only the rest, and because every request carries a seed derived from ids, the redone work draws
exactly what it would have drawn. ``add_teacher`` and ``rescore`` (harness/rescore.py) reuse the stored tree: zero rollouts.

Every entry point reports to one progress callback (harness/progress.py): the run's start before any
model loads, one phase per step (initial rollouts, artefacts, teacher passes, targeted rollouts by
window), fed from inside backend calls by the counting wrapper, and the run's end.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from harness.backends import STUDENT, Backend, SampleRequest, ScoreRequest, ScoreResult
from harness.backends.wrappers import CountingBackend, LazyBackend, NoRollouts
from harness.config import RunConfig, numeric_options
from harness.core.allocation import AllocationParams
from harness.core.records import (
    CHILD_DTYPES,
    NODE_DTYPES,
    RecordSettings,
    TeacherPass,
    concat,
    path_records,
    support_children,
)
from harness.plan import RunPlan, build_backend, make_plan, model_name, model_specs, run_task, slug
from harness.progress import Callback, Phase, Phases, window_tokens, window_weights
from harness.questions import Passes, QuestionState, prepare, windows
from harness.rescore import add_teacher, rescore
from harness.results import build_results, json_ready, write_outputs
from harness.rundir import (DRAWING, DROPPED, PassCache, RunDir, RunDirError, another, ragged, score_arrays, score_result,
                            unragged)
from harness.seeds import derive_seed
from harness.targeted import call_spans, enrich_window, logprob_tables
from harness.tasks import OUTCOMES, Skip, Task
from harness.teachers import Artefacts, build_artefacts
from harness.teachers.artefacts import shown_counts
from harness.wording import finish_command, plural

__all__ = ["add_teacher", "json_ready", "model_specs", "rescore", "run", "run_task", "windows"]

log = logging.getLogger(__name__)
# a backend call of the teacher or fill passes scores at most this many positions per Ray worker (about 1 GiB of
# passes at score_top_k 64; one pass at least), each call's passes stored as it returns
CALL_POSITIONS = 1 << 19


@dataclasses.dataclass
class RunContext:
    """What every phase of one invocation reads: the plan, its directory, the backend, the states."""

    plan: RunPlan
    rundir: RunDir
    backend: CountingBackend  # the tree's rollouts and the forward passes, counted
    artefact_backend: CountingBackend  # solutions and summaries for contexts, counted apart
    passes: PassCache  # the forward passes over the paths, a bounded number held, the rest read from their shards
    states: dict[str, QuestionState] = dataclasses.field(default_factory=dict)

    @property
    def cfg(self) -> RunConfig:
        return self.plan.config

    @property
    def task(self) -> Task:
        return self.plan.task


# 1. initial rollouts -----------------------------------------------------------------------------


def _warn_below_n_min(cfg: RunConfig, n_min: int) -> None:
    """Warn (not refuse) when the strategy enriches a child to fewer visits than ``A(s)`` needs: such a
    child never enters it on its own visits, and its forced rollouts inform only the nodes below it."""
    key = {"paper": "n_target", "settle": "n_max", "survey": "survey_visits"}.get(cfg.strategy)
    visits = getattr(cfg, key) if key else None
    if visits is not None and visits < n_min:
        log.warning("%s %d is below n_min %d: a child enriched to %d visits never enters A(s) on its own; raise %s, "
                    "or lower n_min", key, visits, n_min, visits, key)


def _warn_two_students(cfg: RunConfig) -> None:
    """Warn (not refuse: the checkpoint may hold what the engines run) when the engines sample a student whose
    weights or KV cache are quantized while the exact scorer reads the checkpoint's own; not for a checkpoint
    saved quantized, whose weights transformers loads so too."""
    options = numeric_options(cfg)
    formats = {k: options[k] for k in ("quantization", "kv_cache_dtype") if options.get(k) not in (None, "auto")}
    if "quantization" in formats:
        from harness.backends import ModelSpec
        from harness.backends.vllm import checkpoint_quantization

        if checkpoint_quantization(ModelSpec(cfg.student, cfg.student_revision, cfg.dtype)) not in (None, "unknown"):
            del formats["quantization"]
    if cfg.backend == "vllm" and formats and options.get("score_with", "hf") == "hf":
        given = ", ".join(f"{k} {v}" for k, v in formats.items())
        log.warning("student_args: the engines sample the student under %s, while the exact scorer (score_with: hf) "
                    "scores its checkpoint as transformers loads it: the tree's success rates and the gradients' "
                    "probabilities then come from two slightly different students; score_with: vllm scores with the "
                    "engines themselves", given)


def _first(ids: list[str], shown: int = 3) -> str:
    """``00000, 00001, 00002 and 5 more``: the first few of a list of question ids."""
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return (", ".join(ids[:shown]) + more) if ids else "no question"


def check_prompts(out: str | Path, plan, flag: str = "--out") -> None:
    """Refuse, before the run directory changes, a run whose stored rollouts answered other prompts than
    its questions read now: the task's data changed under it (a data file edited, another revision of
    the data set, another chat template). Shards written before prompts were stored are not checked."""
    root = Path(out)
    if not (root / "shards").is_dir():
        return
    try:
        recorded = RunDir.read_saved(root)["config"].get("task")
    except RunDirError:
        recorded = None  # unreadable or absent: the run directory names that once it opens
    if recorded is not None and recorded != plan.config.task:
        return  # another task's questions: refused as a different rollout tree once the run opens
    questions = plan.task.questions(plan.config.limit)
    ids = {q.id for q in questions}
    stored = [p.name for p in (root / "shards").iterdir() if p.is_dir()]
    # more questions than these settings read is a smaller limit, refused as such once the run is open
    if (other := sorted(q for q in stored if q not in ids)) and len(stored) <= len(ids):
        # lm-eval's --samples picks documents; the run's record keeps only their number (limit)
        raise RunDirError(f"{root}: holds rollouts of question {other[0]}, which these settings do not read (they read "
                          f"{_first(sorted(ids))}): lm_eval --samples picks documents, while odiag run, rescore and "
                          f"add-teacher read a task's first `limit`; resume it with the same lm_eval command, or use "
                          f"{another(flag)} for these questions")
    if (changed := changed_question(RunDir(root, plan=None), questions)) is not None:
        raise RunDirError(f"{root}: {changed} (the task's data changed since: data_files, the data set or the chat "
                          f"template); use {another(flag)} for these questions")


def reference_bytes(question) -> np.ndarray:
    """A question's reference answer as stored with its initial rollouts (empty for the synthetic task's)."""
    return np.frombuffer(str(question.doc.get("target", "")).encode(), dtype=np.uint8)


def changed_question(reader: RunDir, questions) -> str | None:
    """How the first of ``questions`` whose stored initial rollouts answered another prompt, or were judged
    against another reference answer, than it has now differs; None when none does. Shards written before
    prompts (or reference answers) were stored are not checked for them."""
    for q in questions:
        try:
            shard = reader.load(q.id, "initial")
        except RunDirError:
            continue  # a corrupt shard is named, or repaired, once the run holds the directory
        if shard is not None and "prompt" in shard and not np.array_equal(shard["prompt"], q.prompt_ids):
            return f"question {q.id} reads another prompt now than the one its stored rollouts answered"
        if shard is not None and "reference" in shard and not np.array_equal(shard["reference"], reference_bytes(q)):
            then = bytes(shard["reference"]).decode(errors="replace")
            return (f"question {q.id} has another reference answer now ({q.doc.get('target')!r}) than the one its "
                    f"stored rollouts were judged against ({then!r})")
    return None


def _initial_rollouts(ctx: RunContext, questions) -> None:
    cfg, task, todo = ctx.cfg, ctx.task, []
    for q in questions:
        if (shard := ctx.rundir.load(q.id, "initial")) is None:
            todo.append(q)
        else:
            ctx.states[q.id] = _state(ctx, q, unragged(shard["tokens"], shard["offsets"]), shard["outcome"])
    requests = [
        SampleRequest(q.prompt_ids, cfg.n_initial, derive_seed(cfg.seed, q.id, "initial"), ctx.plan.max_new_tokens,
                      cfg.temperature, task.stop_ids)
        for q in todo
    ]
    # in calls of a bounded size, each call's questions stored as it returns: a stop loses one call, not the phase
    ctx.backend.plan_ahead(sum(r.n for r in requests))
    for start, stop in call_spans([r.n for r in requests], [r.n * r.max_new_tokens for r in requests]):
        shards = []
        for q, res in zip(todo[start:stop], ctx.backend.sample(requests[start:stop]), strict=True):
            outcomes = np.asarray(task.outcomes(q, res.tokens, res.truncated), dtype=np.int8)
            tokens, offsets = ragged(res.tokens)
            shards.append((q.id, "initial", {"tokens": tokens, "offsets": offsets, "outcome": outcomes,
                                             "prompt": np.asarray(q.prompt_ids, np.int64), "reference": reference_bytes(q)}))
            ctx.states[q.id] = _state(ctx, q, res.tokens, outcomes)
        ctx.rundir.save_all(shards)
    ctx.states = {q.id: ctx.states[q.id] for q in questions}


def _state(ctx: RunContext, q, responses: list[np.ndarray], outcomes: np.ndarray) -> QuestionState:
    read = ctx.passes.reader(q.id)
    return QuestionState(q, responses, outcomes, scores=Passes(read), fills=Passes(read))


# 3. teacher passes -------------------------------------------------------------------------------


def _artefacts(ctx: RunContext) -> Artefacts:
    """Solutions by named models and summaries, generated once per question and cached in the run."""
    teachers = ctx.plan.specs
    n_correct, n_wrong = shown_counts(teachers)
    shown = {s.question.id: [x for c, w in s.solutions for x in (*c[:n_correct], *w[:n_wrong])] for s in ctx.states.values()}
    return build_artefacts(ctx.task, teachers, [s.question for s in ctx.states.values()], ctx.artefact_backend,
                           ctx.rundir.root / "artefacts", ctx.cfg.seed, ctx.rundir.run_id, student_solutions=shown, repair=ctx.rundir.repair,
                           judged_by=ctx.plan.recorded_task)


def _score_paths(ctx: RunContext, artefacts: Artefacts) -> None:
    """One student pass and one pass per teacher (with the student as reference) over each path."""
    cfg, task, teachers = ctx.cfg, ctx.task, ctx.plan.specs
    pending, requests = [], []
    for s in ctx.states.values():
        for j, path in enumerate(s.paths):
            name = f"score-p{j}-{STUDENT}"
            if (shard := ctx.rundir.load(s.question.id, name)) is not None:
                _stored(ctx, s, (j, STUDENT), name, score_result(shard))
            else:
                pending.append((s, (j, STUDENT), name))
                requests.append(ScoreRequest(s.question.prompt_ids, path, STUDENT, cfg.temperature, cfg.score_top_k))
            correct, wrong = s.solutions[j]
            for t in teachers:
                name = f"score-p{j}-{slug(t.name)}"
                if (shard := ctx.rundir.load(s.question.id, name)) is not None:
                    if "skip" in shard:
                        s.scores[(j, t.name)] = Skip(str(shard["skip"]))
                    else:
                        _stored(ctx, s, (j, t.name), name, score_result(shard))
                    continue
                context = task.teacher_context(t, s.question, correct, wrong, artefacts, response_length=len(path))
                if isinstance(context, Skip):
                    s.scores[(j, t.name)] = context
                    ctx.rundir.save(s.question.id, name, skip=np.array(context.reason))
                    continue
                pending.append((s, (j, t.name), name))
                requests.append(ScoreRequest(np.asarray(context), path, model_name(t), cfg.temperature, cfg.score_top_k,
                                             reference_model=STUDENT, reference_context=s.question.prompt_ids))
    _score_in_calls(ctx, pending, [len(r.response) for r in requests], requests.__getitem__)


def _score_in_calls(ctx: RunContext, pending: list[tuple], positions: list[int], request: Callable[[int], ScoreRequest],
                    fill: bool = False) -> None:
    """Score the passes ``pending`` (each one's question state, key and shard name; ``positions[i]`` its
    response's length; ``request(i)`` builds its request when its call is made) in calls of at most
    `CALL_POSITIONS` positions (per Ray worker), each call's passes stored as it returns: a stop loses one call,
    and a run holds one call's requests and passes besides the passes its cache keeps."""
    ctx.backend.plan_ahead(len(pending))
    most = CALL_POSITIONS * (ctx.cfg.num_workers if ctx.cfg.executor == "ray" else 1)
    for start, stop in call_spans([1] * len(pending), positions, most_tokens=most):
        requests = [request(i) for i in range(start, stop)]
        results = ctx.backend.score(requests)
        ctx.rundir.save_all([(s.question.id, name, score_arrays(res, req.context))
                             for (s, _, name), req, res in zip(pending[start:stop], requests, results, strict=True)])
        for (s, key, name), res in zip(pending[start:stop], results, strict=True):
            _stored(ctx, s, key, name, res, fill)
        del results  # not held through the next call


def _stored(ctx: RunContext, s: QuestionState, key: tuple[int, str], name: str, res: ScoreResult, fill: bool = False) -> None:
    (s.fills if fill else s.scores).stored(key, name)
    ctx.passes.put(s.question.id, name, res)


def _fill_passes(ctx: RunContext, phases: Phases) -> None:
    """Score the ids the records read that a path's passes did not keep (SPEC §4 step 5: every teacher at
    every decision point). A child enriched for one teacher can lie outside another teacher's top ids
    and the student's; without its probability that teacher would be scored on fewer decision points.

    A fill is a pass over the path's context and response at those ids only, stored as ``fill-p<j>-<who>``
    with the ids of any earlier fill kept. Planning never reads fills, so a grown run plans as a fresh one.
    """
    cfg, teachers = ctx.cfg, ctx.plan.specs
    by_name = {t.name: t for t in teachers}
    pending, missing_ids = [], []  # each fill's missing (positions, tokens): its request is built when its call is made
    for s in ctx.states.values():
        for j, path in enumerate(s.paths):
            for key in (STUDENT, *(t.name for t in teachers if s.scores.scored((j, t.name)))):
                if (shard := ctx.rundir.load(s.question.id, _fill_name(j, key))) is not None:
                    _stored(ctx, s, (j, key), _fill_name(j, key), score_result(shard), fill=True)
            position, token = support_children(s.tree.children(j), len(path), ctx.plan.n_min)
            student, _, tables = logprob_tables(s, j, teachers, fills=True)
            for key, table in ((STUDENT, student), *tables.items()):
                missing = np.isnan(table.get(position, token))
                if not missing.any():
                    continue
                pending.append((s, (j, key), _fill_name(j, key)))
                missing_ids.append((position[missing], token[missing]))
    if pending and not ctx.rundir.models_checked:
        raise RunDirError(
            f"{ctx.rundir.root}: its stored passes lack log-probabilities its records read ({len(pending)} fill "
            f"{plural(len(pending), 'pass', 'passes')} to make; scored by an odiag before this one); make them with "
            f"{finish_command(ctx.rundir.root)}, which checks the models first"
        )
    if not pending:
        return

    def request(i: int) -> ScoreRequest:
        """Fill ``i``: over the context its path's pass was scored with, at the missing ids and any earlier fill's."""
        (s, (j, key), _), (position, token) = pending[i], missing_ids[i]
        stored = ctx.rundir.load_again(s.question.id, f"score-p{j}-{slug(key)}")  # read when the fill was found missing
        model = STUDENT if key == STUDENT else model_name(by_name[key])
        extra = _extra_ids(s.paths[j], position, token, s.fills.get((j, key)))
        return ScoreRequest(stored["context"], s.paths[j], model, cfg.temperature, 0, extra_ids=extra)

    with phases.phase("fill passes", ctx.backend, unit="passes"):
        _score_in_calls(ctx, pending, [len(s.paths[j]) for s, (j, _), _ in pending], request, fill=True)


def _fill_name(j: int, key: str) -> str:
    return f"fill-p{j}-{slug(key)}"


def _extra_ids(path: np.ndarray, position: np.ndarray, token: np.ndarray, before: ScoreResult | None) -> np.ndarray:
    """``extra_ids`` [P, E] of a fill: the missing tokens and any earlier fill's ids at each position,
    a short row padded with the path's own token (scored anyway)."""
    rows = [{int(a)} for a in path]
    for k, a in zip(position.tolist(), token.tolist(), strict=True):
        rows[k].add(a)
    if before is not None:
        for k in range(len(path)):
            rows[k].update(before.ids[before.offsets[k]:before.offsets[k + 1]].tolist())
    width = max(len(r) for r in rows)
    return np.array([sorted(r) + [int(a)] * (width - len(r)) for r, a in zip(rows, path, strict=True)], dtype=np.int64)


# 5. per-node records -----------------------------------------------------------------------------


def _records(ctx: RunContext, phase: Phase) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, int]]:
    """Every path's node and child records (core/records.py), as one table each, and what was skipped,
    summed; ``phase`` hears of each path done."""
    cfg, teachers = ctx.cfg, ctx.plan.specs
    settings = RecordSettings(ctx.plan.n_min, cfg.gamma, cfg.jsd_beta, tuple(cfg.algorithms))
    nodes, children, skipped = [], [], {}
    for s in ctx.states.values():
        for j, path in enumerate(s.paths):
            student, scored, tabs = logprob_tables(s, j, teachers, fills=True)
            passes = [TeacherPass(t.name, tabs[t.name], scored[t.name].divergences, scored[t.name].approximate)
                      for t in teachers if t.name in scored]
            n, c, sk = path_records(s.question.id, j, path, OUTCOMES[s.path_outcome[j]], s.tree.children(j), student,
                                    passes, settings, ctx.task.token_texts)
            nodes.append(n)
            children.append(c)
            for k, v in sk.items():
                skipped[k] = skipped.get(k, 0) + v
            phase.advance(1)
    return concat(nodes, NODE_DTYPES), concat(children, CHILD_DTYPES), skipped


# 6. run ------------------------------------------------------------------------------------------


def run(
    cfg: RunConfig, out: str | Path, on_progress: Callback | None = None, backend: Backend | None = None,
    task: Task | None = None, repair: bool = False, out_flag: str = "--out",
) -> dict:
    """Run (or resume, or grow) the diagnostic of ``cfg`` in ``out``; return the results dict also written there.

    ``cfg`` is resolved into a checked plan before the directory is touched; ``repair`` drops
    corrupt shards and recomputes them instead of refusing them. ``on_progress`` receives the
    events of `harness.progress` (the command line renders them); ``out_flag`` names ``out`` in a refusal.
    """
    plan = make_plan(cfg, task, RunDir.stored_teacher_files(out), built=backend is None)
    check_prompts(out, plan, out_flag)
    with RunDir.open(out, plan, repair=repair, flag=out_flag) as rundir:
        _warn_below_n_min(cfg, plan.n_min)  # once the directory is held: a refused command prints its error alone
        _warn_two_students(cfg)
        return _execute(rundir, on_progress, backend)


def _execute(rundir: RunDir, on_progress: Callback | None, backend: Backend | None, frozen: bool = False) -> dict:
    """SPEC §4 on a held run directory; ``frozen``: the tree must be stored whole (no rollout drawn)."""
    plan, cfg = rundir.plan, rundir.plan.config
    phases = Phases(on_progress)
    if backend is None:  # built on its first request: the first progress line comes before the models load
        backend = LazyBackend(lambda: build_backend(cfg, plan.specs), rundir.last_backend)
    ctx = RunContext(plan, rundir, CountingBackend(NoRollouts(backend, str(rundir.root)) if frozen else backend),
                     CountingBackend(backend), PassCache(rundir))
    questions = plan.task.questions(cfg.limit)
    phases.run_started(cfg.task, len(questions), getattr(plan.task, "n_available", None), len(plan.specs), rundir.root)

    with phases.phase("initial rollouts", ctx.backend):
        _initial_rollouts(ctx, questions)
    for s in ctx.states.values():
        prepare(s, cfg)

    # context artefacts are not rollouts of the tree: counted apart, so add-teacher can prove it drew none
    with phases.phase("artefacts", ctx.artefact_backend, unit="samples"):
        artefacts = _artefacts(ctx)
    with phases.phase("teacher passes", ctx.backend, unit="passes"):
        _score_paths(ctx, artefacts)

    params = AllocationParams(
        n_target=cfg.n_target, n_min=plan.n_min, tau=cfg.tau, k_window=cfg.k_window, budget=cfg.budget,
        confidence=cfg.confidence, tolerance=cfg.tolerance, n_max=cfg.n_max, price=cfg.price,
        positions=cfg.survey_positions, visits=cfg.survey_visits,
    )
    states = list(ctx.states.values())
    n_windows = max((len(s.spans) for s in states), default=0)
    if stored := sum(len(rundir.rounds(s.question.id)) for s in states):  # read back before anything is drawn
        log.info("reading back %d stored %s of targeted rollouts (an earlier invocation's)", stored, plural(stored, "round"))
    weights, costs = _window_weights(states, n_windows)
    with phases.phase(
        "targeted rollouts", ctx.backend, budget=cfg.budget * len(states) if cfg.budget else None,
        steps=weights, costs=costs, rounds=True,
    ) as phase:
        for w in range(n_windows):
            phase.step(w, f"window {w + 1}/{n_windows}")
            enrich_window(ctx, w, params)
    (rundir.root / DRAWING).unlink(missing_ok=True)  # the tree is whole
    _fill_passes(ctx, phases)

    # node records of every path, then the aggregates and the files: minutes for many questions and teachers
    with phases.phase("records and results", unit="paths") as phase:
        phase.plan(sum(len(s.paths) for s in ctx.states.values()))
        nodes, children, skipped = _records(ctx, phase)
        phase.step(1, "aggregates")  # SPEC §5: the intervals, tests and correlations of every row
        results = build_results(cfg, plan.specs, ctx.states.values(), nodes, skipped, ctx.backend,
                                ctx.artefact_backend.rollouts, plan.n_min, plan.task_record(),
                                {t.name: t.identity for t in plan.teachers}, rundir.fingerprints())
        paths = [
            {"question_id": s.question.id, "path_id": j, "correct": s.path_correct[j], "outcome": OUTCOMES[s.path_outcome[j]],
             "tokens": p.tolist(), "text": plan.task.token_texts(p), "prompt": "".join(plan.task.token_texts(s.question.prompt_ids))}
            for s in ctx.states.values() for j, p in enumerate(s.paths)
        ]
        phase.step(2, "files")
        write_outputs(rundir.root, results, nodes, children, paths)
    (rundir.root / DROPPED).unlink(missing_ok=True)  # a finished run: no stopped drop to finish
    phases.run_finished(rundir.root)
    return results


def _window_weights(states: list[QuestionState], n_windows: int) -> tuple[list[float], list[float]]:
    """Each depth window's expected share of the targeted rollouts, summed over the questions that reach it
    (every question has its own windows, from its longest path), and the tokens a rollout there generates
    on average (about a path's length less the depth), for the ETA."""
    weights, tokens = [0.0] * n_windows, [0.0] * n_windows
    for s in states:
        lengths = [len(p) for p in s.paths]
        for w, (x, t) in enumerate(zip(window_weights(lengths, s.spans), window_tokens(lengths, s.spans))):
            weights[w] += x
            tokens[w] += t
    return weights, [t / x if x > 0 else 0.0 for x, t in zip(weights, tokens)]
