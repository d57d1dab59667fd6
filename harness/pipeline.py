"""``run(config)``: the diagnostic of SPEC §4, top to bottom, resumable from its run directory.

1. initial rollouts of every question (one batched backend call);
2. representative correct and incorrect paths, chosen reproducibly from the seed;
3. one student pass and one pass per teacher over each path (the tree never depends on a teacher);
4. targeted rollouts window by window, every question's requests batched together;
5. a record per decision point x teacher x algorithm; 6. aggregates (SPEC §5) into results.json.

Every step's output is a shard in the run directory, written atomically once the backend call that
produced it returns; a rerun loads finished shards and redoes only the rest, and because every
request carries a seed derived from ids, the redone work draws exactly what it would have drawn.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import logging
import re
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from harness import __version__
from harness.backends import STUDENT, Backend, ModelSpec, SampleRequest, ScoreRequest, ScoreResult, load_backend
from harness.config import ConfigError, RunConfig, portable, to_dict
from harness.core import (
    ALGORITHMS,
    NodeInputs,
    Rollouts,
    TreeStats,
    aggregate,
    alignment_score,
    decision_support,
    ideal_gradient,
    reward_to_go,
    teacher_advantage,
)
from harness.core.allocation import STRATEGIES, AllocationParams, ScoredTokens, window_state
from harness.core.divergences import DIVERGENCES
from harness.core.tree import Exits, path_common_prefixes
from harness.rundir import RunDir, ragged, unragged, write_json
from harness.synthetic import derive_seed
from harness.tasks import Question, Skip, Task, load_task
from harness.teachers import Artefacts, TeacherConfig, artefact_models, build_artefacts, load_teacher

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]
SCHEMA_VERSION = "odiag.results/1"
_KEY_BITS = 32


@dataclasses.dataclass
class QuestionState:
    """Everything the run holds for one question while it runs."""

    question: Question
    responses: list[np.ndarray]  # initial rollouts' response ids
    rewards: np.ndarray  # int [n_initial]
    truncated: np.ndarray  # bool [n_initial]
    paths: list[np.ndarray] = dataclasses.field(default_factory=list)  # representative paths
    path_correct: list[bool] = dataclasses.field(default_factory=list)
    solutions: list[tuple[list[np.ndarray], list[np.ndarray]]] = dataclasses.field(default_factory=list)  # per path: (correct, wrong) it may show
    tree: TreeStats | None = None
    scores: dict[tuple[int, str], ScoreResult | Skip] = dataclasses.field(default_factory=dict)  # (path, teacher|student)
    budget: list[dict] = dataclasses.field(default_factory=list)  # rollouts and tokens per window
    note: str = ""  # why the question has no paths of one outcome, if so
    unparseable: int = 0  # initial rollouts whose answer could not be read (scored 0)

    def answers(self) -> dict[str, int]:
        """What the task's scorer made of the initial rollouts."""
        return {
            "scored": len(self.rewards), "correct": int(np.sum(self.rewards)),
            "unparseable": self.unparseable, "truncated": int(np.sum(self.truncated)),
        }


class CountingBackend:
    """Counts what a run asks of its backend: rollouts, generated tokens, forward passes per model."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.rollouts = 0
        self.tokens = 0
        self.passes: dict[str, int] = {}

    def sample(self, requests):
        results = self.inner.sample(requests) if requests else []
        self.rollouts += sum(r.n for r in requests)
        self.tokens += sum(len(t) for res in results for t in res.tokens)
        return results

    def count_complete(self, n: int) -> None:
        """Rollouts whose forced prefix already ended them (a stop id, or the length limit): no sampling."""
        self.rollouts += n

    def score(self, requests):
        for r in requests:
            self.passes[r.model] = self.passes.get(r.model, 0) + 1
        return self.inner.score(requests) if requests else []

    def describe(self):
        return self.inner.describe()


def windows(length: int, width: int) -> list[tuple[int, int]]:
    """Exponential depth windows ``[0,w), [w,3w), [3w,7w), ...`` covering ``length`` positions (SPEC §4)."""
    out, lo = [], 0
    while lo < length:
        hi = 2 * lo + width
        out.append((lo, min(hi, length)))
        lo = hi
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _model_name(teacher: TeacherConfig) -> str:
    return STUDENT if teacher.is_self else teacher.model


def _backend(cfg: RunConfig, teachers: Sequence[TeacherConfig]) -> Backend:
    """The configured backend, in this process or spread over Ray workers."""
    # hf draws from counter-based randomness, so its thread count never moves a number
    options = {"threads": cfg.threads} if cfg.backend == "hf" and cfg.threads else {}
    options |= backend_options(cfg, teachers)
    if cfg.executor == "ray":
        from harness.distributed import RayBackendPool

        return RayBackendPool(cfg.backend, model_specs(cfg, teachers), cfg.num_workers, cfg.ray_address, **options)
    if cfg.executor != "local":
        raise ConfigError(f"executor must be 'local' or 'ray', got {cfg.executor!r}")
    return load_backend(cfg.backend, model_specs(cfg, teachers), **options)


def backend_options(cfg: RunConfig, teachers: Sequence[TeacherConfig]) -> dict:
    """``student_args`` and the teachers' ``model_args``, checked against the backend (one-line errors)."""
    from harness.backends import check_options

    if cfg.backend != "vllm" and any(t.model_args and not t.is_self for t in teachers):
        raise ConfigError(f"teachers' model_args are engine options of the vllm backend, not {cfg.backend}")
    try:
        options = check_options(cfg.backend, cfg.student_args) if cfg.student_args else {}
        per_model = {t.model: check_options(cfg.backend, t.model_args, f"teacher {t.name}: model_args")
                     for t in teachers if t.model_args and not t.is_self}
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if any(t.model_args and t.is_self for t in teachers):
        raise ConfigError("a self-teacher reads with the student's model: set its options in student_args")
    if per_model:
        from harness.backends import engine_argument_names

        options["model_args"] = {m: {**o.pop("engine_options", {}), **o} for m, o in per_model.items()}
        engine = engine_argument_names()
        for t in teachers:
            odd = sorted(set(options["model_args"].get(t.model, {})) - engine) if engine else []
            if odd:
                raise ConfigError(f"teacher {t.name}: model_args key {odd[0]!r} is not a vLLM engine argument "
                                  "(backend-wide options go in student_args)")
    return options


def run_task(cfg: RunConfig) -> Task:
    """The task a run config names, with its tokenizer, data source and length limit."""
    if cfg.task == "synthetic":
        return load_task(cfg.task)
    return load_task(
        cfg.task, tokenizer=cfg.student, revision=cfg.student_revision, data_files=cfg.data_files,
        max_new_tokens=cfg.max_new_tokens,
    )


def model_specs(cfg: RunConfig, teachers: Sequence[TeacherConfig]) -> dict[str, ModelSpec]:
    """The models the backend loads: the student, every external teacher, solution sources, summarisers."""
    specs = {STUDENT: ModelSpec(cfg.student, cfg.student_revision, cfg.dtype)}
    for t in teachers:
        if not t.is_self:
            specs[t.model] = ModelSpec(t.model, t.revision, t.dtype)
    return {**artefact_models(teachers), **specs}


# 1. initial rollouts -----------------------------------------------------------------------------


def _initial_rollouts(cfg, task, questions, backend, rundir, max_new) -> dict[str, QuestionState]:
    states, todo = {}, []
    for q in questions:
        shard = rundir.load(q.id, "initial")
        if shard is None:
            todo.append(q)
            continue
        responses = unragged(shard["tokens"], shard["offsets"])
        states[q.id] = QuestionState(q, responses, shard["reward"], shard["truncated"], unparseable=int(shard["unparseable"]))
    requests = [
        SampleRequest(q.prompt_ids, cfg.n_initial, derive_seed(cfg.seed, q.id, "initial"), max_new, cfg.temperature, task.stop_ids)
        for q in todo
    ]
    for q, res in zip(todo, backend.sample(requests), strict=True):
        before = task.answer_counts["unparseable"]
        rewards = np.asarray(task.rewards(q, res.tokens, res.truncated), dtype=np.int64)
        unparseable = task.answer_counts["unparseable"] - before
        tokens, offsets = ragged(res.tokens)
        rundir.save(
            q.id, "initial", tokens=tokens, offsets=offsets, reward=rewards, truncated=res.truncated,
            unparseable=np.int64(unparseable),
        )
        states[q.id] = QuestionState(q, res.tokens, rewards, np.asarray(res.truncated), unparseable=unparseable)
    return {q.id: states[q.id] for q in questions}


# 2. representative paths -------------------------------------------------------------------------


def _choose_paths(state: QuestionState, cfg: RunConfig) -> None:
    """Up to ``paths_per_outcome`` distinct correct and incorrect responses, chosen from the seed."""
    rng = np.random.default_rng(derive_seed(cfg.seed, state.question.id, "paths"))
    order = rng.permutation(len(state.responses))
    for outcome in (1, 0):
        seen = set()
        for i in order:
            key = state.responses[i].tobytes()
            if state.rewards[i] == outcome and key not in seen and len(seen) < cfg.paths_per_outcome:
                seen.add(key)
                state.paths.append(state.responses[i])
                state.path_correct.append(bool(outcome))
    kinds = set(state.path_correct)
    if kinds != {True, False}:
        state.note = f"only {'correct' if True in kinds else 'incorrect' if kinds else 'no'} rollouts among {len(state.responses)}"


def _solutions(state: QuestionState, j: int, cfg: RunConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The student's own correct and wrong responses, never the scored path, in a seeded order.

    The order depends on the question and path, not the teacher, so every self-teacher on a path
    sees the same solutions (self-1c and self-sum-1c differ only in the summary).
    """
    rng = np.random.default_rng(derive_seed(cfg.seed, state.question.id, "solutions", j))
    scored = state.paths[j].tobytes()
    correct, wrong = [], []
    for i in rng.permutation(len(state.responses)):
        if state.responses[i].tobytes() == scored or state.truncated[i]:
            continue
        (correct if state.rewards[i] else wrong).append(state.responses[i])
    return correct, wrong


# 3. teacher passes -------------------------------------------------------------------------------


def _artefacts(task, teachers, states, backend, rundir) -> Artefacts:
    """Solutions by named models and summaries, generated once per question and cached in the run."""
    n_correct = max((t.correct_solutions for t in teachers), default=0)
    n_wrong = max((t.wrong_solutions for t in teachers), default=0)
    shown = {
        s.question.id: [x for correct, wrong in s.solutions for x in (*correct[:n_correct], *wrong[:n_wrong])]
        for s in states.values()
    }
    questions = [s.question for s in states.values()]
    return build_artefacts(task, teachers, questions, backend, rundir.root / "artefacts", student_solutions=shown)


def _score_paths(cfg, task, teachers, states, backend, rundir, artefacts) -> None:
    """One student pass and one pass per teacher (with the student as reference) over each path."""
    pending, requests = [], []
    for s in states.values():
        for j, path in enumerate(s.paths):
            name = f"score-p{j}-{STUDENT}"
            if (shard := rundir.load(s.question.id, name)) is not None:
                s.scores[(j, STUDENT)] = _score_from_arrays(shard)
            else:
                pending.append((s, j, STUDENT, name))
                requests.append(ScoreRequest(s.question.prompt_ids, path, STUDENT, cfg.temperature, cfg.score_top_k))
            correct, wrong = s.solutions[j]
            for t in teachers:
                name = f"score-p{j}-{_slug(t.name)}"
                if (shard := rundir.load(s.question.id, name)) is not None:
                    s.scores[(j, t.name)] = Skip(str(shard["skip"])) if "skip" in shard else _score_from_arrays(shard)
                    continue
                context = task.teacher_context(t, s.question, correct, wrong, artefacts, response_length=len(path))
                if isinstance(context, Skip):
                    s.scores[(j, t.name)] = context
                    rundir.save(s.question.id, name, skip=np.array(context.reason))
                    continue
                pending.append((s, j, t.name, name))
                requests.append(
                    ScoreRequest(
                        np.asarray(context), path, _model_name(t), cfg.temperature, cfg.score_top_k,
                        reference_model=STUDENT, reference_context=s.question.prompt_ids,
                    )
                )
    for (s, j, key, name), req, res in zip(pending, requests, backend.score(requests), strict=True):
        s.scores[(j, key)] = res
        rundir.save(s.question.id, name, **_score_to_arrays(res, req.context))


def _score_to_arrays(res: ScoreResult, context: np.ndarray) -> dict[str, np.ndarray]:
    out = {"ids": res.ids, "offsets": res.offsets, "logprobs": res.logprobs, "context": np.asarray(context)}
    out["approximate"] = np.array(res.approximate)
    if res.reference_logprobs is not None:
        out["reference_logprobs"] = res.reference_logprobs
    for k, v in (res.divergences or {}).items():
        out[f"div_{k}"] = v
    return out


def _score_from_arrays(a: dict[str, np.ndarray]) -> ScoreResult:
    divs = {k[4:]: v for k, v in a.items() if k.startswith("div_")}
    return ScoreResult(
        ids=a["ids"], offsets=a["offsets"], logprobs=a["logprobs"],
        reference_logprobs=a.get("reference_logprobs"), divergences=divs or None,
        approximate=bool(a["approximate"]),
    )


@dataclasses.dataclass(frozen=True)
class LogprobTable:
    """Known log-probabilities along one path, looked up by (position, token)."""

    keys: np.ndarray  # int64 [N], sorted: position << 32 | token
    logp: np.ndarray  # float [N]

    @staticmethod
    def build(parts: Sequence[tuple[ScoreResult, np.ndarray]]) -> LogprobTable:
        """From (result, logprobs-on-its-ids) pairs; the first part wins where they overlap."""
        keys, vals = [], []
        for res, lp in parts:
            pos = np.repeat(np.arange(len(res.offsets) - 1), np.diff(res.offsets))
            keys.append((pos << _KEY_BITS) | res.ids.astype(np.int64))
            vals.append(lp)
        allk = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        uniq, first = np.unique(allk, return_index=True)
        return LogprobTable(uniq, np.concatenate(vals)[first] if keys else np.zeros(0))

    def get(self, position: np.ndarray, token: np.ndarray) -> np.ndarray:
        """Log-probabilities at (position, token); nan where unknown."""
        q = (np.asarray(position, np.int64) << _KEY_BITS) | np.asarray(token, np.int64)
        at = np.clip(np.searchsorted(self.keys, q), 0, max(len(self.keys) - 1, 0))
        found = (self.keys[at] == q) if len(self.keys) else np.zeros(len(q), bool)
        return np.where(found, self.logp[at] if len(self.keys) else np.nan, np.nan)


def _tables(s: QuestionState, j: int, teachers) -> tuple[LogprobTable, dict[str, LogprobTable]]:
    """The student's and each teacher's known log-probabilities along path ``j``."""
    own = s.scores[(j, STUDENT)]
    scored = [(t.name, s.scores[(j, t.name)]) for t in teachers if isinstance(s.scores.get((j, t.name)), ScoreResult)]
    student = LogprobTable.build([(own, own.logprobs)] + [(r, r.reference_logprobs) for _, r in scored])
    return student, {name: LogprobTable.build([(r, r.logprobs)]) for name, r in scored}


# 4. targeted rollouts ----------------------------------------------------------------------------


def _scored_tokens(s: QuestionState, j: int, planners: Sequence[TeacherConfig]) -> ScoredTokens:
    """What the forward passes say about every (position, token) read along path ``j``."""
    student, tabs = _tables(s, j, planners)
    keys = np.unique(np.concatenate([student.keys, *(tab.keys for tab in tabs.values())]))
    pos, tok = keys >> _KEY_BITS, keys & ((1 << _KEY_BITS) - 1)
    # one column per planning teacher on every path; a teacher skipped on this path stays nan
    shape = (len(keys), len(planners))
    pi_teacher, reverse_kl = np.full(shape, np.nan), np.full(shape, np.nan)
    for i, name in enumerate(t.name for t in planners):
        if name not in tabs:
            continue
        pi_teacher[:, i] = np.exp(tabs[name].get(pos, tok))
        reverse_kl[:, i] = s.scores[(j, name)].divergences["reverse_kl"][pos]
    return ScoredTokens(pos, tok, np.exp(student.get(pos, tok)), pi_teacher, reverse_kl)


def _enrich_window(cfg, task, planners, states, backend, rundir, w, spans, max_new, params) -> None:
    """Targeted rollouts of window ``w`` in rounds planned by ``cfg.strategy``, all questions batched.

    Round ``r`` of a question is the shard ``window{w}-round{r}``; on resume, stored rounds are
    replayed (their exits, never tokens) and planning continues from the same state, so a strategy
    plans exactly what it planned before.
    """
    lo, hi = spans[w]
    active = {qid: s for qid, s in states.items() if any(lo < len(p) for p in s.paths)}
    for s in active.values():
        s.budget.append({"window": [lo, hi], "rollouts": 0, "tokens_generated": 0, "rounds": 0})
    for r in itertools.count():
        jobs, requests = [], []
        for qid, s in list(active.items()):
            name = f"window{w}-round{r}"
            if (shard := rundir.load(qid, name)) is not None:
                _ingest_shard(s, shard)
                continue
            scored = [_scored_tokens(s, j, planners) for j in range(len(s.paths))]
            children = [s.tree.children(j) for j in range(len(s.paths))]
            spent_q = sum(b["rollouts"] for b in s.budget[:-1])
            state = window_state(w, len(spans), lo, min(hi, max(map(len, s.paths))), scored, children,
                                 path_common_prefixes(s.paths), spent_q, s.budget[-1]["rollouts"])
            plan = STRATEGIES[cfg.strategy](state, params)
            if plan.total == 0:
                del active[qid]
                continue
            rows = list(zip(plan.path_R.tolist(), plan.position_R.tolist(), plan.token_R.tolist(), plan.count_R.tolist(), strict=True))
            jobs.append((s, name, rows))
            for j, k, a, n in rows:
                left = max_new - (k + 1)
                if a in task.stop_ids or left <= 0:
                    continue  # the response is already complete (or at its limit): nothing to sample
                prefix = np.concatenate([s.question.prompt_ids, s.paths[j][:k], [a]]).astype(np.int64)
                seed = derive_seed(cfg.seed, qid, "target", j, k, a, w, r)
                requests.append(SampleRequest(prefix, n, seed, left, cfg.temperature, task.stop_ids))
        if not active:
            return
        results = iter(backend.sample(requests))
        for s, name, rows in jobs:
            _record_round(s, name, rows, results, task, backend, rundir, max_new, (w, lo, hi))


def _record_round(s, name, rows, results, task, backend, rundir, max_new, window) -> None:
    """Score one round's rollouts, ingest them, and store them compactly as one shard."""
    conts, forced, target, forced_tok, truncated = [], [], [], [], []
    for j, k, a, n in rows:
        left = max_new - (k + 1)
        if a in task.stop_ids or left <= 0:
            toks, trunc = [np.zeros(0, np.int64)] * n, np.full(n, a not in task.stop_ids)
            backend.count_complete(n)
        else:
            res = next(results)
            toks, trunc = res.tokens, np.asarray(res.truncated)
        conts += toks
        truncated.append(trunc)
        forced += [k + 1] * n
        target += [j] * n
        forced_tok += [a] * n
    full = [
        np.concatenate([s.paths[j][: f - 1], [a], c]).astype(np.int64)
        for j, f, a, c in zip(target, forced, forced_tok, conts, strict=True)
    ]
    trunc = np.concatenate(truncated)
    reward = np.asarray(task.rewards(s.question, full, trunc), dtype=np.int64)
    batch = Rollouts.from_lists(conts, reward, forced, target, forced_tok)
    exits = s.tree.ingest(batch)
    rundir.save(
        s.question.id, name, forced_len=batch.forced_len, target_path=batch.target_path,
        forced_token=batch.forced_token, reward=reward, truncated=trunc,
        length=np.array([len(f) for f in full], dtype=np.int64),
        exit_lcp=np.stack([e.lcp for e in exits]), exit_token=np.stack([e.token for e in exits]),
        window=np.array(window),
    )
    _count(s, len(conts), int(sum(len(c) for c in conts)))


def _count(s: QuestionState, rollouts: int, tokens: int) -> None:
    s.budget[-1]["rollouts"] += rollouts
    s.budget[-1]["tokens_generated"] += tokens
    s.budget[-1]["rounds"] += 1


def _ingest_shard(s: QuestionState, shard: dict[str, np.ndarray]) -> None:
    """Replay a stored window: the compact exits, never the tokens (SPEC §6)."""
    exits = [Exits(lcp=shard["exit_lcp"][j], token=shard["exit_token"][j]) for j in range(len(s.paths))]
    s.tree.ingest_all_exits(exits, shard["forced_len"], shard["reward"])
    _count(s, len(shard["reward"]), int((shard["length"] - shard["forced_len"]).sum()))


# 5. per-node records -----------------------------------------------------------------------------


def _node_records(cfg, teachers, s: QuestionState, n_min: int, token_texts: Callable[[np.ndarray], list[str]]) -> tuple[list[dict], list[dict], dict]:
    """One record per decision point x teacher x algorithm, and the children of every decision point."""
    nodes, children = [], []
    skipped = {"missing_student_logprob": 0, "missing_teacher_logprob": 0}
    for j, path in enumerate(s.paths):
        student, teacher_tabs = _tables(s, j, teachers)
        ch = s.tree.children(j)
        rtg = {}
        for name, tab in teacher_tabs.items():
            k_all = np.arange(len(path))
            rtg[name] = reward_to_go(tab.get(k_all, path) - student.get(k_all, path), cfg.gamma)
        bounds = np.flatnonzero(np.diff(ch.position, prepend=-1, append=-1))
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            k = int(ch.position[lo])
            if k >= len(path):
                continue
            n, w = ch.n[lo:hi], ch.w[lo:hi]
            q = w / np.maximum(n, 1)
            support = decision_support(n, q, n_min)
            if support is None:
                continue
            tok, n, w, q = ch.token[lo:hi][support], n[support], w[support], q[support]
            m, ms = ch.m[lo:hi][support], ch.m_success[lo:hi][support]
            pi = np.exp(student.get(np.full(len(tok), k), tok))
            if not np.all(np.isfinite(pi)):
                skipped["missing_student_logprob"] += 1
                continue
            g_star = ideal_gradient(pi, q)
            where = np.flatnonzero(tok == path[k])
            path_action = int(where[0]) if where.size else -1
            for t in teachers:
                res = s.scores.get((j, t.name))
                if not isinstance(res, ScoreResult):
                    continue
                pit = np.exp(teacher_tabs[t.name].get(np.full(len(tok), k), tok))
                if not np.all(np.isfinite(pit)):
                    skipped["missing_teacher_logprob"] += 1
                    continue
                inputs = NodeInputs(pi, pit, q, m, ms, path_action, float(rtg[t.name][k]), cfg.jsd_beta)
                base = {
                    "question_id": s.question.id, "path_id": j, "path_correct": s.path_correct[j], "position": k,
                    "teacher": t.name, "ideal_norm": float(np.linalg.norm(g_star)),
                    "teacher_advantage": teacher_advantage(pi, pit, q), "n_actions": len(tok),
                    "value": float(pi @ q / pi.sum()), "visits": int(n.sum()),
                    **{d: float(res.divergences[d][k]) for d in DIVERGENCES},
                    "approximate": bool(res.approximate),
                }
                for algo in cfg.algorithms:
                    nodes.append({**base, "algorithm": algo, "alignment": alignment_score(g_star, ALGORITHMS[algo](inputs))})
                for a, text, na, wa, pa, pta in zip(tok, token_texts(tok), n, w, pi, pit, strict=True):
                    children.append({
                        "question_id": s.question.id, "path_id": j, "position": k, "teacher": t.name,
                        "token": int(a), "text": text, "n": int(na), "w": int(wa), "q": float(wa / na),
                        "pi": float(pa), "pi_teacher": float(pta),
                    })
    return nodes, children, skipped


# 6. run ------------------------------------------------------------------------------------------


def _columns(rows: list[dict], names: Sequence[str]) -> dict[str, np.ndarray]:
    return {k: np.array([r[k] for r in rows]) for k in names}


def _versions(backend) -> dict:
    import scipy

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"odiag": __version__, "git_commit": commit, "numpy": np.__version__, "scipy": scipy.__version__,
            "backend": backend.describe()}


def json_ready(obj):
    """nan/inf to None, numpy scalars to Python: strict JSON."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def run(
    cfg: RunConfig,
    out: str | Path,
    on_progress: Progress | None = None,
    backend: Backend | None = None,
    task: Task | None = None,
) -> dict:
    """Run (or resume) the diagnostic of ``cfg`` in ``out``; return the results dict also written there."""
    progress = on_progress or (lambda stage, done, total: None)
    rundir = RunDir.open(out, cfg)
    names = list(cfg.teachers) + [t for t in rundir.added_teachers() if t not in cfg.teachers]
    teachers = [load_teacher(t) for t in names]
    # candidates come from the config's teachers only, so adding a teacher never changes the tree
    planners = teachers[: len(cfg.teachers)]
    task = task or run_task(cfg)
    for t in teachers:  # load-time checks: vocabulary, chat template, variables, context length
        task.check_teacher(t)
    backend = CountingBackend(backend or _backend(cfg, teachers))
    n_min = cfg.n_min or task.n_min
    max_new = cfg.max_new_tokens or task.max_new_tokens
    questions = task.questions(cfg.limit)

    progress("initial rollouts", 0, len(questions))
    states = _initial_rollouts(cfg, task, questions, backend, rundir, max_new)
    for s in states.values():
        _choose_paths(s, cfg)
        s.solutions = [_solutions(s, j, cfg) for j in range(len(s.paths))]
        s.tree = TreeStats(s.paths, cascade=cfg.cascade)
        s.tree.ingest(Rollouts.from_lists(s.responses, s.rewards))
    progress("initial rollouts", len(questions), len(questions))

    # context artefacts are not rollouts of the tree: counted apart, so add-teacher can prove it drew none
    artefact_backend = CountingBackend(backend.inner)
    artefacts = _artefacts(task, teachers, states, artefact_backend, rundir)
    _score_paths(cfg, task, teachers, states, backend, rundir, artefacts)
    progress("teacher passes", len(questions), len(questions))

    longest = max((len(p) for s in states.values() for p in s.paths), default=0)
    spans = windows(longest, cfg.window)
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {sorted(STRATEGIES)}, got {cfg.strategy!r}")
    params = AllocationParams(
        n_target=cfg.n_target, n_min=n_min, tau=cfg.tau, k_window=cfg.k_window, budget=cfg.budget,
        confidence=cfg.confidence, tolerance=cfg.tolerance, n_max=cfg.n_max, price=cfg.price,
    )
    for w in range(len(spans)):
        _enrich_window(cfg, task, planners, states, backend, rundir, w, spans, max_new, params)
        progress("targeted rollouts", w + 1, len(spans))

    nodes, children, skipped = [], [], {}
    for s in states.values():
        n, c, sk = _node_records(cfg, teachers, s, n_min, task.token_texts)
        nodes += n
        children += c
        for k, v in sk.items():
            skipped[k] = skipped.get(k, 0) + v
    results = _results(cfg, teachers, states, nodes, skipped, backend, rundir)
    results["counts"]["artefact_samples_this_invocation"] = artefact_backend.rollouts
    _write_tables(rundir, nodes, children, states, task)
    results = portable(json_ready(results))
    write_json(rundir.root / "results.json", results)
    progress("done", 1, 1)
    return results


NODE_FIELDS = (
    "question_id", "path_id", "path_correct", "position", "teacher", "algorithm", "alignment", "ideal_norm",
    "teacher_advantage", "n_actions", "value", "visits", *DIVERGENCES, "approximate",
)


def _results(cfg, teachers, states, nodes, skipped, backend, rundir) -> dict:
    table = _columns(nodes, NODE_FIELDS)
    rows = aggregate(table, seed=cfg.seed) if nodes else []
    found = {(r["teacher"], r["algorithm"]) for r in rows}
    for t in teachers:  # a teacher with no decision point still gets a row, saying so
        for a in cfg.algorithms:
            if (t.name, a) not in found:
                rows.append({"teacher": t.name, "algorithm": a, "rank": None, "n_decision_points": 0})
    descriptions = {t.name: {"description": t.description, "model": t.model, "file": t.file} for t in teachers}
    rollouts = sum(len(s.responses) + sum(b["rollouts"] for b in s.budget) for s in states.values())
    tokens = sum(int(sum(len(r) for r in s.responses)) + sum(b["tokens_generated"] for b in s.budget) for s in states.values())
    scored = [v for s in states.values() for (j, k), v in s.scores.items() if k != STUDENT]
    decision_points = len({(r["question_id"], r["path_id"], r["position"]) for r in nodes})
    answers = [s.answers() for s in states.values()]
    return {
        "schema_version": SCHEMA_VERSION,
        "config": to_dict(cfg),
        "config_hash": cfg.hash(),
        "versions": _versions(backend),
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "task": cfg.task,
        "student": cfg.student,
        "counts": {
            "questions": len(states),
            "paths": sum(len(s.paths) for s in states.values()),
            "decision_points": decision_points,
            "rollouts": rollouts,
            "tokens_generated": tokens,
            "teacher_forward_passes": sum(isinstance(v, ScoreResult) for v in scored),
            "student_forward_passes": sum(len(s.paths) for s in states.values()),
            "rollouts_this_invocation": backend.rollouts,
            "forward_passes_this_invocation": backend.passes,
            "skipped_nodes": skipped,
            "initial_answers": {k: sum(a[k] for a in answers) for k in answers[0]} if answers else {},
        },
        "teacher_info": descriptions,
        "teachers": rows,
        "questions": [
            {
                "id": s.question.id,
                "initial_accuracy": float(np.mean(s.rewards)) if len(s.rewards) else None,
                "answers": s.answers(),
                "paths": len(s.paths),
                "correct_paths": int(sum(s.path_correct)),
                "note": s.note,
                "budget": s.budget,
                "skipped_teachers": {k: v.reason for (j, k), v in s.scores.items() if isinstance(v, Skip) and j == 0},
            }
            for s in states.values()
        ],
    }


def _write_tables(rundir: RunDir, nodes, children, states, task: Task) -> None:
    """nodes.parquet, children.parquet and paths.parquet beside results.json."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from harness.rundir import atomic_write

    def write(name, rows, fields=None):
        table = pa.Table.from_pylist(rows) if rows else pa.table({f: [] for f in (fields or [])})
        atomic_write(rundir.root / name, lambda f: pq.write_table(table, f))

    write("nodes.parquet", nodes, NODE_FIELDS)
    write("children.parquet", children, ["question_id", "path_id", "position", "teacher", "token"])
    paths = [
        {"question_id": s.question.id, "path_id": j, "correct": s.path_correct[j], "tokens": p.tolist(),
         "text": task.token_texts(p), "prompt": "".join(task.token_texts(s.question.prompt_ids))}
        for s in states.values()
        for j, p in enumerate(s.paths)
    ]
    write("paths.parquet", paths, ["question_id", "path_id", "correct", "tokens", "text", "prompt"])


def add_teacher(out: str | Path, teacher: str, on_progress: Progress | None = None, backend: Backend | None = None) -> dict:
    """Score one more teacher on a finished run: its forward passes only, zero new rollouts.

    The teacher is recorded in the run directory, so rerunning the original command keeps it.
    """
    cfg = RunDir.load_config(out)
    if not (Path(out) / "results.json").exists():
        raise ConfigError(f"{out}: the run has not finished (no results.json); resume it with odiag run first")
    spec = load_teacher(teacher)
    RunDir(Path(out), cfg).add_teacher(spec.file if Path(teacher).exists() else teacher)
    results = run(cfg, out, on_progress=on_progress, backend=backend)
    if results["counts"]["rollouts_this_invocation"] != 0:
        raise RuntimeError("adding a teacher drew new rollouts: the stored tree was incomplete")
    return results
