"""Targeted rollouts (SPEC §4 step 4): window by window, in rounds a strategy plans, every question batched.

Round ``r`` of window ``w`` of a question is the shard ``window{w}-round{r}``. On resume, stored
rounds are replayed (their exits, never tokens) and planning continues from the same state, so a
strategy plans exactly what it planned before. A round stored under another budget (or other
windows) is replayed only if the plan now is the same; otherwise it and every later round of the
question are dropped and planned afresh, so a grown budget gives what a fresh run with it would.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING

import numpy as np

from harness.backends import STUDENT, SampleRequest, ScoreResult
from harness.config import RunConfig
from harness.core import Rollouts
from harness.core.allocation import STRATEGIES, AllocationParams, ScoredTokens, window_state
from harness.core.records import KEY_BITS, LogprobTable
from harness.core.tree import Exits, path_common_prefixes
from harness.questions import QuestionState
from harness.seeds import derive_seed
from harness.wording import plural

if TYPE_CHECKING:
    from harness.pipeline import RunContext

log = logging.getLogger(__name__)
# whole responses (path prefix, forced token, continuation) held at once to be scored: 128 MB as int64,
# however many rollouts a round draws (a round of long traces would otherwise hold each prefix once per rollout)
SCORE_CHUNK_TOKENS = 1 << 24


def logprob_tables(
    s: QuestionState, j: int, teachers, fills: bool = False,
) -> tuple[LogprobTable, dict[str, ScoreResult], dict[str, LogprobTable]]:
    """The student's and each scored teacher's known log-probabilities along path ``j``; with ``fills``
    also those of the passes over ids the records need (planning never reads them: a grown run plans
    as a fresh one)."""
    own = s.scores[(j, STUDENT)]
    scored = {t.name: r for t in teachers if isinstance(r := s.scores.get((j, t.name)), ScoreResult)}

    def parts(key: str) -> list[tuple]:
        return [(r.ids, r.offsets, r.logprobs)] if fills and (r := s.fills.get((j, key))) is not None else []

    student = LogprobTable.build([(own.ids, own.offsets, own.logprobs)]
                                 + [(r.ids, r.offsets, r.reference_logprobs) for r in scored.values()] + parts(STUDENT))
    tables = {name: LogprobTable.build([(r.ids, r.offsets, r.logprobs), *parts(name)]) for name, r in scored.items()}
    return student, scored, tables


def _scored_tokens(s: QuestionState, j: int, planners) -> ScoredTokens:
    """What the forward passes say about every (position, token) read along path ``j``."""
    student, scored, tabs = logprob_tables(s, j, planners)
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


def enrich_window(ctx: RunContext, w: int, params: AllocationParams) -> None:
    """Targeted rollouts of window ``w`` in rounds planned by ``cfg.strategy``, all questions batched."""
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
                log.info("%s: %d stored %s from window %d round %d planned under another budget: redone",
                         qid, dropped, plural(dropped, "round"), w, r)
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
    rewards, lengths = [], []
    full, cut, held = [], [], 0  # whole responses not yet scored: a bounded number of tokens at a time

    def score() -> None:
        nonlocal held
        if full:
            rewards.append(np.asarray(task.rewards(s.question, full, np.concatenate(cut)), dtype=np.int64))
            lengths.append(np.fromiter(map(len, full), dtype=np.int64, count=len(full)))
            full.clear(), cut.clear()
            held = 0

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
        head = np.concatenate([s.paths[j][:k], [a]]).astype(np.int64)  # the path to the forced token, and it
        full += [np.concatenate([head, c]).astype(np.int64) for c in toks]
        cut.append(trunc)
        held += n * len(head) + sum(map(len, toks))
        if held >= SCORE_CHUNK_TOKENS:
            score()
    score()
    trunc = np.concatenate(truncated)
    reward = np.concatenate(rewards) if rewards else np.zeros(0, np.int64)
    batch = Rollouts.from_lists(conts, reward, forced, target, forced_tok)
    exits = s.tree.ingest(batch)
    ctx.rundir.save(
        s.question.id, name, forced_len=batch.forced_len, target_path=batch.target_path,
        forced_token=batch.forced_token, reward=reward, truncated=trunc,
        length=np.concatenate(lengths) if lengths else np.zeros(0, np.int64),
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
