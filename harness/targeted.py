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
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from harness.backends import STUDENT, SampleRequest, SampleResult, ScoreResult
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
# whole responses (path prefix, forced token, continuation) held at once to be scored and reduced to their
# exits: 128 MB as int64, however many rollouts a round draws (only the exits of a round are kept)
SCORE_CHUNK_TOKENS = 1 << 24
# a backend call of a round (or of the initial rollouts) samples at most this many rollouts and about this many
# tokens (judged by the question's initial responses; the initial ones by the length limit): a round of many
# questions would otherwise hold all their tokens at once, and a stop in the initial phase lose all of it.
# Large enough that the tail of a call's last long generations is a small share of a GPU's time on it
CALL_ROLLOUTS = 1 << 20
CALL_TOKENS = 1 << 26


def logprob_tables(
    s: QuestionState, j: int, teachers, fills: bool = False, window: tuple[int, int] | None = None,
) -> tuple[LogprobTable, dict[str, ScoreResult], dict[str, LogprobTable]]:
    """The student's and each scored teacher's known log-probabilities along path ``j`` (``window``: at its
    positions ``[lo, hi)`` only); with ``fills`` also those of the passes over ids the records need (planning
    never reads them: a grown run plans as a fresh one)."""
    own = s.scores[(j, STUDENT)]
    scored = {t.name: r for t in teachers if isinstance(r := s.scores.get((j, t.name)), ScoreResult)}
    n = len(own.offsets) - 1  # the path's positions
    lo, hi = (min(window[0], n), min(window[1], n)) if window is not None else (0, n)

    def cut(r: ScoreResult, logprobs: np.ndarray) -> tuple:
        a, b = r.offsets[lo], r.offsets[hi]
        return r.ids[a:b], r.offsets[lo:hi + 1] - a, logprobs[a:b]

    def parts(key: str) -> list[tuple]:
        return [cut(r, r.logprobs)] if fills and (r := s.fills.get((j, key))) is not None else []

    student = LogprobTable.build([cut(own, own.logprobs)] + [cut(r, r.reference_logprobs) for r in scored.values()]
                                 + parts(STUDENT), start=lo)
    tables = {name: LogprobTable.build([cut(r, r.logprobs), *parts(name)], start=lo) for name, r in scored.items()}
    return student, scored, tables


def _scored_tokens(s: QuestionState, j: int, planners, window: tuple[int, int]) -> ScoredTokens:
    """What the forward passes say about every (position, token) read along path ``j`` in ``window`` (``[lo, hi)``:
    a round plans one window, and the whole path's tokens took minutes and GiB per path of a long trace)."""
    student, scored, tabs = logprob_tables(s, j, planners, window=window)
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
        jobs, wanted, expected = [], [], []  # wanted: the round's sample requests, each built when its call is made
        for qid, s in list(active.items()):
            name, key = f"window{w}-round{r}", _plan_key(cfg, s)
            shard = ctx.rundir.load(qid, name)
            if shard is not None and np.array_equal(shard.get("plan_key", ()), key):
                _ingest_shard(ctx, s, shard)
                continue
            lo, hi = s.spans[w]
            scored = [_scored_tokens(s, j, ctx.plan.planners, (lo, hi)) for j in range(len(s.paths))]
            children = [s.tree.children(j) for j in range(len(s.paths))]
            state = window_state(w, len(s.spans), lo, hi, scored, children, path_common_prefixes(s.paths),
                                 sum(b["rollouts"] for b in s.budget[:-1]), s.budget[-1]["rollouts"])
            plan = STRATEGIES[cfg.strategy](state, params)
            if shard is not None and _same_plan(plan, shard):
                _ingest_shard(ctx, s, shard)
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
                wanted.append((s, j, k, a, n, derive_seed(cfg.seed, qid, "target", j, k, a, w, r)))
                # the path itself is one continuation of the prefix: its length, less the depth, is one draw of theirs
                expected.append(n * min(max(len(s.paths[j]) - (k + 1), 1), max_new - (k + 1)))
        if not active:
            return

        def request(item) -> SampleRequest:
            state, j, k, a, n, seed = item
            prefix = np.concatenate([state.question.prompt_ids, state.paths[j][:k], [a]]).astype(np.int64)
            return SampleRequest(prefix, n, seed, max_new - (k + 1), cfg.temperature, task.stop_ids)

        ctx.backend.plan_ahead(sum(n for _, _, rows, _ in jobs for *_, n in rows), sum(expected))  # the whole round, in any calls
        results = _sampled_in_calls(ctx.backend, wanted, expected, request)
        for s, name, rows, key in jobs:
            _record_round(ctx, s, name, rows, results, (w, *s.spans[w]), key)


def call_spans(rollouts: list[int], expected: list[float], most_tokens: float | None = None) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` of consecutive requests (``rollouts[i]`` rollouts, about ``expected[i]`` tokens each)
    that one backend call samples: at most CALL_ROLLOUTS rollouts and about ``most_tokens`` (CALL_TOKENS)
    tokens, at least one request (completion i of a request draws from its own seed, so how requests are split
    into calls never changes a draw)."""
    most_tokens = CALL_TOKENS if most_tokens is None else most_tokens
    start = 0
    while start < len(rollouts):
        stop, n, tokens = start + 1, rollouts[start], expected[start]
        while stop < len(rollouts) and n + rollouts[stop] <= CALL_ROLLOUTS and tokens + expected[stop] <= most_tokens:
            n, tokens, stop = n + rollouts[stop], tokens + expected[stop], stop + 1
        yield start, stop
        start = stop


def _sampled_in_calls(backend, wanted: list[tuple], expected: list[float], request) -> Iterator[SampleResult]:
    """The results of the requests ``wanted`` (``request(item)`` builds one; its rollouts are ``item[4]``) in
    order, sampled in the calls of :func:`call_spans`; a call's requests are built when it is made and each
    result is let go once it is taken."""
    for start, stop in call_spans([item[4] for item in wanted], expected):
        results = backend.sample([request(item) for item in wanted[start:stop]])
        for i in range(len(results)):
            result, results[i] = results[i], None
            yield result


def _record_round(ctx: RunContext, s: QuestionState, name: str, rows, results, window, plan_key) -> None:
    """Score one round's rollouts a bounded number of tokens at a time, keep only their exits, ingest
    them, and store them compactly as one shard."""
    task, max_new = ctx.task, ctx.plan.max_new_tokens
    kept: dict[str, list[np.ndarray]] = {k: [] for k in ("forced_len", "target_path", "forced_token", "reward",
                                                       "truncated", "length")}
    exits: list[list[Exits]] = [[] for _ in s.paths]
    conts, forced, target, forced_tok, cut, full, held = [], [], [], [], [], [], 0

    def reduce() -> None:
        """The held responses' rewards and exits; their tokens let go."""
        nonlocal held
        if not conts:
            return
        truncated = np.concatenate(cut)
        reward = np.asarray(task.rewards(s.question, full, truncated), dtype=np.int64)
        batch = Rollouts.from_lists(conts, reward, forced, target, forced_tok)
        for j, path_exits in enumerate(exits):
            path_exits.append(s.tree.exits(batch, j))
        for k, v in (("forced_len", batch.forced_len), ("target_path", batch.target_path), ("reward", reward),
                     ("forced_token", batch.forced_token), ("truncated", truncated),
                     ("length", np.fromiter(map(len, full), dtype=np.int64, count=len(full)))):
            kept[k].append(v)
        for held_list in (conts, forced, target, forced_tok, cut, full):
            held_list.clear()
        held = 0

    for j, k, a, n in rows:
        if a in task.stop_ids or max_new - (k + 1) <= 0:
            toks, trunc = [np.zeros(0, np.int64)] * n, np.full(n, a not in task.stop_ids)
            ctx.backend.count_complete(n)
        else:
            res = next(results)
            toks, trunc = res.tokens, np.asarray(res.truncated)
        conts += toks
        cut.append(trunc)
        forced += [k + 1] * n
        target += [j] * n
        forced_tok += [a] * n
        head = np.concatenate([s.paths[j][:k], [a]]).astype(np.int64)  # the path to the forced token, and it
        full += [np.concatenate([head, c]).astype(np.int64) for c in toks]
        held += n * len(head) + sum(map(len, toks))
        if held >= SCORE_CHUNK_TOKENS:
            reduce()
    reduce()
    none = [np.zeros(0, np.int64)]
    col = {k: np.concatenate(v or none) for k, v in kept.items()}
    joined = [Exits(lcp=np.concatenate([e.lcp for e in ex] or none), token=np.concatenate([e.token for e in ex] or none))
              for ex in exits]
    s.tree.ingest_all_exits(joined, col["forced_len"], col["reward"])
    ctx.rundir.save(
        s.question.id, name, forced_len=col["forced_len"], target_path=col["target_path"],
        forced_token=col["forced_token"], reward=col["reward"], truncated=col["truncated"].astype(bool),
        length=col["length"], exit_lcp=np.stack([e.lcp for e in joined]), exit_token=np.stack([e.token for e in joined]),
        window=np.array(window), plan_key=plan_key,
    )
    _count(s, col)


def _count(s: QuestionState, round_: dict[str, np.ndarray]) -> None:
    """A recorded or replayed round in the question's budget: its rollouts and the tokens they generated."""
    s.budget[-1]["rollouts"] += len(round_["forced_len"])
    s.budget[-1]["tokens_generated"] += int((round_["length"] - round_["forced_len"]).sum())
    s.budget[-1]["rounds"] += 1


def _ingest_shard(ctx: RunContext, s: QuestionState, shard: dict[str, np.ndarray]) -> None:
    """Replay a stored round: the compact exits, never the tokens (SPEC §6)."""
    ctx.backend.replayed(len(shard["reward"]))
    exits = [Exits(lcp=shard["exit_lcp"][j], token=shard["exit_token"][j]) for j in range(len(s.paths))]
    s.tree.ingest_all_exits(exits, shard["forced_len"], shard["reward"])
    _count(s, shard)
