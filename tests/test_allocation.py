"""Targeted-rollout allocation (SPEC §4): the paper's selection exactly, budgets, and unbiasedness."""

import dataclasses
import importlib.util
import re
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.core.allocation import (
    STRATEGIES,
    AllocationParams,
    ScoredTokens,
    WindowState,
    gkd_magnitude,
    settle_visits,
    survey_rate,
    survey_sample,
    window_allowance,
    window_state,
)
from harness.core.gradients import alignment_score, gkd_gradient
from harness.core.tree import ChildTable, path_common_prefixes

_spec = importlib.util.spec_from_file_location("bench_allocation", Path(__file__).parents[1] / "bench" / "allocation.py")
bench = sys.modules.setdefault("bench_allocation", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(bench)


def _children(position, token, n, w) -> ChildTable:
    z = np.zeros(len(n), np.int64)
    return ChildTable(np.asarray(position, np.int64), np.asarray(token, np.int64), np.asarray(n, np.int64), np.asarray(w, np.int64), z, z)


def _scored(position, token, pi, pi_t, kl) -> ScoredTokens:
    return ScoredTokens(np.asarray(position), np.asarray(token), np.asarray(pi, float), np.asarray(pi_t, float), np.asarray(kl, float))


def _one_path_state(pi, pi_t, kl, n=None, w=None, budget_state=(0, 1, 0, 0)) -> WindowState:
    """Window [0, K) of one path with every token 0..V-1 scored at every position ([K, V] arrays)."""
    pi, pi_t, kl = np.asarray(pi, float), np.asarray(pi_t, float), np.asarray(kl, float)
    k, v = pi.shape
    pos, tok = np.repeat(np.arange(k), v), np.tile(np.arange(v), k)
    n = np.zeros(k * v, np.int64) if n is None else np.asarray(n, np.int64).ravel()
    w = np.zeros(k * v, np.int64) if w is None else np.asarray(w, np.int64).ravel()
    visited = n > 0
    window, n_windows, spent_q, spent_w = budget_state
    return window_state(
        window, n_windows, 0, k,
        [_scored(pos, tok, pi.ravel(), pi_t.reshape(k * v, -1), np.repeat(kl, v, axis=0))],
        [_children(pos[visited], tok[visited], n[visited], w[visited])],
        path_common_prefixes([np.zeros(k + 1, np.int64)]), spent_q, spent_w,
    )


def _plan_set(plan) -> dict:
    return {(int(j), int(k), int(a)): int(c) for j, k, a, c in zip(plan.path_R, plan.position_R, plan.token_R, plan.count_R, strict=True)}


def test_gkd_magnitude_is_the_full_vocabulary_gkd_component():
    rng = np.random.default_rng(0)
    pi, pi_t = rng.dirichlet(np.ones(7)), rng.dirichlet(np.ones(7))
    kl = float(pi @ (np.log(pi) - np.log(pi_t)))
    np.testing.assert_allclose(gkd_magnitude(pi, pi_t, kl), np.abs(gkd_gradient(pi, pi_t)), rtol=1e-12)


def test_paper_selects_spec_targets_and_enriches_them_to_n_target():
    """Pins SPEC §4 on a constructed window: candidates, both top-k lists (max over teachers), their union."""
    # two positions, five tokens, two teachers; reverse KL 0 keeps the GKD magnitude |π (log π_T − log π)|
    pi = np.array([[0.50, 0.30, 0.10, 0.06, 0.04], [0.70, 0.20, 0.04, 0.03, 0.03]])
    pi_t = np.stack([pi.copy(), pi.copy()], axis=-1)
    pi_t[0, :, 0] = [0.50, 0.30, 0.10, 0.06, 0.04]  # teacher 0 agrees at position 0
    pi_t[0, :, 1] = [0.20, 0.60, 0.10, 0.06, 0.04]  # teacher 1 moves mass from token 0 to 1
    pi_t[1, :, 0] = [0.70, 0.20, 0.035, 0.03, 0.035]  # |gap| <= τ everywhere: tokens 2-4 are no candidates
    pi_t[1, :, 1] = [0.70, 0.20, 0.04, 0.03, 0.03]
    kl = np.zeros((2, 2))
    n = np.zeros((2, 5), np.int64)
    n[0, 1] = 30  # already visited: enriched by the missing 70 only
    n[1, 0] = 150  # past n_target: selected but asks for nothing
    state = _one_path_state(pi, pi_t, kl, n=n, w=n // 2)
    params = AllocationParams(k_window=2, n_target=100, tau=0.05)
    gkd = np.abs(pi[..., None] * (np.log(pi_t) - np.log(pi)[..., None])).max(axis=-1)
    gap = np.abs(pi_t - pi[..., None]).max(axis=-1)
    cand = (pi > 0.05) | (gap > 0.05)
    assert cand.tolist() == [[True, True, True, True, False], [True, True, False, False, False]]
    top = lambda s: set(sorted(zip(*np.nonzero(cand)), key=lambda kt: (-s[kt], kt))[:2])
    expected = {(0, int(k), int(a)) for k, a in top(gkd) | top(gap)}
    assert expected == {(0, 0, 0), (0, 0, 1)}
    plan = STRATEGIES["paper"](state, params)
    assert _plan_set(plan) == {(0, 0, 0): 100, (0, 0, 1): 70}
    # one round: once the targets hold n_target visits the paper asks for nothing more
    n[0, 0], n[0, 1] = 100, 100
    assert STRATEGIES["paper"](_one_path_state(pi, pi_t, kl, n=n, w=n // 2), params).total == 0


def test_paper_plans_the_union_of_the_two_lists_where_they_disagree():
    """Pins SPEC §4's union where the lists differ: a low-π token the teacher raises from 0.03 to 0.20
    is second by probability gap, a likelier token is second by GKD magnitude; both are planned, and
    each list alone falls short of the plan."""
    pi = np.array([[0.50, 0.30, 0.12, 0.05, 0.03]])
    pi_t = np.array([[0.30, 0.38, 0.08, 0.04, 0.20]])[..., None]
    ell = np.log(pi_t[..., 0]) - np.log(pi)
    kl = -(pi * ell).sum(axis=1, keepdims=True)
    state = _one_path_state(pi, pi_t, kl)
    params = AllocationParams(k_window=2, n_target=100, tau=0.05)
    gkd = np.abs(pi * (ell - (pi * ell).sum(axis=1, keepdims=True)))  # full-vocabulary g_a, SPEC §3
    gap = np.abs(pi_t[..., 0] - pi)
    cand = (pi > 0.05) | (gap > 0.05)
    assert cand.tolist() == [[True, True, True, False, True]]

    def top(score):  # the k_window = 2 candidates of highest score, ties by place
        ranked = sorted(zip(*np.nonzero(cand)), key=lambda kt: (-score[kt], kt))
        return {(0, int(k), int(a)) for k, a in ranked[:2]}

    by_gkd, by_gap = top(gkd), top(gap)
    assert by_gkd == {(0, 0, 0), (0, 0, 1)} and by_gap == {(0, 0, 0), (0, 0, 4)}
    planned = _plan_set(STRATEGIES["paper"](state, params))
    assert planned == {key: 100 for key in by_gkd | by_gap}
    assert by_gkd < set(planned) and by_gap < set(planned)


def test_paper_picks_top_k_per_path_and_plans_a_shared_child_once():
    """Pins: top-k is per path and window; a child on a common prefix is enriched once, under the lowest path."""
    paths = [np.array([0, 1, 2, 3]), np.array([0, 1, 4, 4])]  # common prefix of length 2
    v = 3
    rng = np.random.default_rng(1)
    pi = {j: rng.dirichlet(np.ones(v), size=4) for j in range(2)}
    pi[1][:2] = pi[0][:2]  # same prefix, same distributions
    pi_t = {j: rng.dirichlet(np.ones(v), size=4) for j in range(2)}
    pi_t[1][:2] = pi_t[0][:2]
    scored = []
    for j in range(2):
        kl = (pi[j] * np.log(pi[j] / pi_t[j])).sum(axis=1)
        scored.append(_scored(np.repeat(np.arange(4), v), np.tile(np.arange(v), 4), pi[j].ravel(), pi_t[j].reshape(-1, 1), np.repeat(kl, v)[:, None]))
    empty = _children([], [], [], [])
    state = window_state(0, 1, 0, 4, scored, [empty, empty], path_common_prefixes(paths))
    plan = STRATEGIES["paper"](state, AllocationParams(k_window=3, tau=0.0))
    planned = _plan_set(plan)
    assert len(planned) == len(plan)  # no child twice
    assert all(j == 0 for (j, k, _) in planned if k < 2)  # shared nodes live under path 0
    for j in range(2):
        single = window_state(0, 1, 0, 4, [scored[j]], [empty], path_common_prefixes([paths[j]]))
        mine = {(k, a) for (_, k, a) in _plan_set(STRATEGIES["paper"](single, AllocationParams(k_window=3, tau=0.0)))}
        assert mine <= {(k, a) for (_, k, a) in planned}
    assert set(planned.values()) == {100}


def test_paper_under_a_budget_keeps_its_priority_order():
    pi = np.full((6, 4), 0.25)
    rng = np.random.default_rng(2)
    pi_t = rng.dirichlet(np.ones(4), size=6)[..., None]
    kl = (pi * np.log(pi / pi_t[..., 0])).sum(axis=1)[:, None]
    params = AllocationParams(k_window=5)
    full = STRATEGIES["paper"](_one_path_state(pi, pi_t, kl), params)
    cut = STRATEGIES["paper"](_one_path_state(pi, pi_t, kl), AllocationParams(k_window=5, budget=250))
    assert cut.total == 250
    np.testing.assert_array_equal(cut.token_R, full.token_R[: len(cut)])
    np.testing.assert_array_equal(cut.position_R, full.position_R[: len(cut)])
    np.testing.assert_array_equal(cut.count_R, [100, 100, 50])


def test_window_allowance_shares_what_earlier_windows_left():
    state = _one_path_state(np.full((1, 2), 0.5), np.full((1, 2, 1), 0.5), np.zeros((1, 1)), budget_state=(1, 4, 400, 50))
    assert window_allowance(state, AllocationParams(budget=1000)) == (1000 - 400) // 3 - 50
    assert window_allowance(state, AllocationParams(budget=1000), share=False) == 1000 - 400 - 50
    assert window_allowance(state, AllocationParams()) == np.inf
    last = _one_path_state(np.full((1, 2), 0.5), np.full((1, 2, 1), 0.5), np.zeros((1, 1)), budget_state=(3, 4, 900, 0))
    assert window_allowance(last, AllocationParams(budget=1000)) == 100


def _node_data(prefix: tuple, v: int, n_teachers: int):
    """Deterministic per-node data (a function of the prefix, so paths sharing a prefix agree)."""
    rng = np.random.default_rng(zlib.crc32(repr(prefix).encode()))
    pi = rng.dirichlet(np.full(v, 0.7))
    pi_t = rng.dirichlet(np.full(v, 0.7), size=n_teachers).T
    pi_t[rng.random((v, n_teachers)) < 0.1] = np.nan  # a teacher's top-k may miss a token
    kl = np.nansum(pi[:, None] * (np.log(pi)[:, None] - np.log(pi_t)), axis=0)
    n = rng.integers(0, 120, v) * (rng.random(v) < 0.6)
    w = rng.binomial(n, rng.random(v))
    return pi, pi_t, np.broadcast_to(kl, (v, n_teachers)), n, w


@st.composite
def window_states(draw):
    v, n_teachers = draw(st.integers(2, 5)), draw(st.integers(1, 2))
    length = draw(st.integers(2, 10))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    paths = [rng.integers(0, v, length) for _ in range(draw(st.integers(1, 3)))]
    for p in paths[1:]:
        shared = draw(st.integers(0, length))
        p[:shared] = paths[0][:shared]
    lo = draw(st.integers(0, length - 1))
    hi = draw(st.integers(lo + 1, length))
    scored, children = [], []
    for p in paths:
        rows = [_node_data(tuple(p[:k].tolist()), v, n_teachers) for k in range(length)]
        pos, tok = np.repeat(np.arange(length), v), np.tile(np.arange(v), length)
        pi, pi_t, kl, n, w = (np.concatenate([r[i] for r in rows]) for i in range(5))
        scored.append(_scored(pos, tok, pi, pi_t, kl))
        children.append(_children(pos[n > 0], tok[n > 0], n[n > 0], w[n > 0]))
    n_windows = draw(st.integers(1, 4))
    window = draw(st.integers(0, n_windows - 1))
    budget = draw(st.none() | st.integers(0, 3000))
    spent_q = draw(st.integers(0, budget or 0))
    spent_w = draw(st.integers(0, 400))
    state = window_state(window, n_windows, lo, hi, scored, children, path_common_prefixes(paths), spent_q, spent_w)
    params = AllocationParams(
        k_window=draw(st.integers(1, 4)), n_min=draw(st.integers(1, 30)), n_target=draw(st.integers(20, 150)),
        budget=budget, n_max=draw(st.integers(30, 1500)), tau=draw(st.sampled_from([0.0, 0.05, 0.3])), draws=64,
        price=draw(st.sampled_from([1e-3, 1e-6])),
    )
    return state, params


@settings(max_examples=60, deadline=None)
@given(window_states(), st.sampled_from(sorted(STRATEGIES)))
def test_no_strategy_asks_for_more_than_its_allowance(case, name):
    state, params = case
    plan = STRATEGIES[name](state, params)
    assert plan.total <= window_allowance(state, params, share=name != "paper")
    assert (plan.count_R > 0).all()
    keys = set(zip(plan.path_R.tolist(), plan.position_R.tolist(), plan.token_R.tolist(), strict=True))
    assert len(keys) == len(plan)  # each child named once
    assert set(plan.position_R.tolist()) <= set(state.position_R.tolist())
    again = STRATEGIES[name](state, params)  # a pure function of the state
    np.testing.assert_array_equal(again.count_R, plan.count_R)


TINY = bench.Shape("tiny", vocab_size=4, n_states=4, horizon=6, sharpness=1.0, window=2)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_question_never_exceeds_its_budget(name):
    shape = bench.SHAPES[1]
    for question in range(2):
        q = bench.prepare(shape, 0, question)
        unlimited = bench.enrich(q, _tree(q), name, AllocationParams(), seed=1)
        ref = bench.enrich(q, _tree(q), "paper", AllocationParams(), seed=1)
        budget = min(ref.rollouts, unlimited.rollouts) // 3
        out = bench.enrich(q, _tree(q), name, AllocationParams(budget=budget), seed=1)
        assert 0 < out.rollouts <= budget
        assert bench.enrich(q, _tree(q), name, AllocationParams(budget=unlimited.rollouts + 1), seed=1).rollouts <= unlimited.rollouts + 1


def _tree(q):
    from harness.core import TreeStats

    tree = TreeStats(q.paths)
    tree.ingest(q.initial)
    return tree


def test_survey_samples_every_position_with_the_same_probability():
    """A systematic grid with a uniform offset: inclusion probability = rate at every position, evenly spread."""
    position = np.arange(37)
    rate, draws = 5 / 37, 4000
    hits = np.zeros(len(position))
    for u in (np.arange(draws) + 0.5) / draws:
        sample = survey_sample(position, rate, u)
        assert sample.sum() in (4, 5) and (np.diff(np.flatnonzero(sample)) >= 7).all()
        hits += sample
    np.testing.assert_allclose(hits / draws, rate, atol=1 / draws)
    assert survey_sample(position, 1.0, 0.3).all()
    # one rate and offset per question, whatever the path: a shared prefix has one sample
    rate, u = survey_rate(np.array([40, 120, 80]), 16)
    assert rate == pytest.approx(16 / 80) and 0 <= u < 1 and survey_rate(np.array([40, 120, 80]), 16) == (rate, u)
    assert survey_rate(np.array([10, 12]), 64)[0] == 1.0


def test_survey_enriches_every_likely_child_of_sampled_positions_only():
    pi = np.array([[0.5, 0.3, 0.2, 0.0], [0.97, 0.01, 0.01, 0.01], [0.4, 0.4, 0.1, 0.1], [0.6, 0.3, 0.04, 0.06]])
    pi_t = pi.copy()[..., None]
    pi_t[3, :, 0] = [0.5, 0.2, 0.2, 0.1]  # the teacher makes token 2 likely at position 3
    kl = np.zeros((4, 1))
    n = np.zeros((4, 4), np.int64)
    n[0, 0] = 15  # topped up, not restarted
    state = _one_path_state(pi, pi_t, kl, n=n, w=n // 2)
    plan = _plan_set(STRATEGIES["survey"](state, AllocationParams(positions=100, n_min=20, tau=0.05)))
    # position 1 has one likely child: no decision point, nothing spent; unlikely tokens are left alone
    assert plan == {(0, 0, 0): 5, (0, 0, 1): 20, (0, 0, 2): 20, (0, 2, 0): 20, (0, 2, 1): 20, (0, 2, 2): 20, (0, 2, 3): 20,
                    (0, 3, 0): 20, (0, 3, 1): 20, (0, 3, 2): 20, (0, 3, 3): 20}
    assert _plan_set(STRATEGIES["survey"](state, AllocationParams(positions=100, visits=50)))[(0, 0, 1)] == 50
    few = _plan_set(STRATEGIES["survey"](state, AllocationParams(positions=1)))
    assert len({k for (_, k, _) in few}) <= 1  # one sampled position of the 5-position path (it may lie past the window)
    shared = window_state(0, 1, 0, 4, [_scored(np.repeat(np.arange(4), 4), np.tile(np.arange(4), 4), pi.ravel(),
                                                                pi_t.reshape(16, 1), np.zeros((16, 1)))] * 2,
                          [_children([], [], [], [])] * 2, path_common_prefixes([np.zeros(5, np.int64), np.zeros(5, np.int64)]))
    # two paths, one prefix: every child planned once (under path 0); no visits yet
    assert _plan_set(STRATEGIES["survey"](shared, AllocationParams(positions=100))) == {**plan, (0, 0, 0): 20}


def test_bench_is_deterministic():
    a = bench.run_seed(TINY, 0, 2, "survey", AllocationParams())
    b = bench.run_seed(TINY, 0, 2, "survey", AllocationParams())
    assert (a.rollouts, a.tokens, a.rounds) == (b.rollouts, b.tokens, b.rounds)
    np.testing.assert_array_equal(a.estimates["plain"]["mean"], b.estimates["plain"]["mean"])


def test_answering_zero_scores_the_rmse_the_bench_prints_for_it():
    results = [bench.run_seed(TINY, seed, 3, "survey", AllocationParams()) for seed in range(3)]
    zero = [dataclasses.replace(r, estimates={"plain": {**r.estimates["plain"], "mean": np.zeros_like(r.estimates["plain"]["mean"])}})
            for r in results]
    assert bench.score(results)["rmse_zero"] == pytest.approx(bench.score(zero)["rmse"])
    assert bench.score(results)["rmse_zero"] > 0.1  # the tiny shape's teachers are far from 0


def test_the_ratio_line_says_n_a_where_paper_is_no_better_than_answering_zero():
    """On a shape where paper's RMSE is at or above answering 0's, an RMSE no worse than paper's says nothing of a
    strategy (a --quick run printed survey 5.5x on the AIME-like shape so): the ratio reads n/a, not a number."""
    cheap = {"default": {"rmse": 0.02, "coverage": 0.95, "tokens": 10.0}}
    assert bench.ratio_at_equal_error({"rmse": 0.05, "rmse_zero": 0.3, "tokens": 100.0}, cheap) == "10.0x"
    assert bench.ratio_at_equal_error({"rmse": 0.021, "rmse_zero": 0.013, "tokens": 100.0}, cheap) == "n/a"
    assert bench.ratio_at_equal_error({"rmse": 0.021, "rmse_zero": 0.013, "tokens": 100.0}, {}) == "not run"


def test_a_seed_without_an_estimate_is_not_ranked_right():
    """``argsort`` puts nans in index order: a strategy that estimated nothing once scored "rank ok" 1.00
    wherever the exact order happened to be the index order."""
    results = [bench.run_seed(TINY, seed, 3, "survey", AllocationParams()) for seed in range(3)]
    blank = [dataclasses.replace(r, estimates={"plain": {**r.estimates["plain"], "mean": np.full_like(r.estimates["plain"]["mean"], np.nan)}})
             for r in results]
    assert bench.score(blank)["ranking"] == 0.0
    one = [dataclasses.replace(r, estimates={"plain": {**r.estimates["plain"], "mean": r.exact["mean"]}}) for r in results]
    assert bench.score(one)["ranking"] == 1.0  # the exact values themselves rank right


def test_bench_plain_estimate_does_not_depend_on_the_extra_estimators():
    both = bench.run_seed(TINY, 1, 2, "settle", AllocationParams(), extra=True)
    plain = bench.run_seed(TINY, 1, 2, "settle", AllocationParams())
    assert set(plain.estimates) == {"plain"} and set(both.estimates) == set(bench.ESTIMATORS)
    for key in ("mean", "lo", "hi", "diff"):
        np.testing.assert_array_equal(plain.estimates["plain"][key], both.estimates["plain"][key])


def test_survey_converges_to_the_exact_mean_alignment():
    """Exact ground truth on a tiny shape: with every position and many visits the per-teacher means match exact."""
    errors, crude = [], []
    for seed in range(3):
        r = bench.run_seed(TINY, seed, 3, "survey", AllocationParams(positions=100, visits=3000))
        errors.append(r.estimates["plain"]["mean"] - r.exact["mean"])
        c = bench.run_seed(TINY, seed, 3, "survey", AllocationParams(positions=100))
        crude.append(c.estimates["plain"]["mean"] - c.exact["mean"])
    # what remains at 3,000 visits: children outside the likely set that reached n_min anyway (A(s) is by visits)
    assert np.abs(np.array(errors)[..., 0]).mean() < 0.04 and np.abs(np.array(errors)[..., 0]).max() < 0.08
    assert np.abs(np.array(errors)[..., 0]).mean() < np.abs(np.array(crude)[..., 0]).mean()  # n_min visits attenuate


@pytest.mark.parametrize("coupling", [None, 123])
def test_simulated_rollouts_are_unbiased_for_exact_q_and_length(coupling):
    """The bench simulates a rollout only while it is on a tracked path: its Q and its generated tokens
    must still be those of full sampling (exact values; SyntheticLM.sample for the lengths). Coupled
    siblings (one uniform per completion and step for all children of a node) must be too."""
    q = bench.prepare(bench.SHAPES[1], 0, 0)
    rng = np.random.default_rng(0)
    path, states = q.paths[0], q.states[0]
    k = 3
    tokens = np.arange(q.world.pi.shape[2])
    tokens = tokens[q.world.pi[k, states[k]] > 0.05]
    count = 4000
    batch, generated = bench.sample_targets(q.world, q.paths, q.states, np.zeros(len(tokens), np.int64), np.full(len(tokens), k),
                                            tokens, np.full(len(tokens), count), rng, coupling)
    reward = batch.reward.reshape(len(tokens), count).mean(axis=1)
    exact = q.world.exact_q[k, states[k], tokens]
    assert (np.abs(reward - exact) < 4 * np.sqrt(exact * (1 - exact) / count) + 1e-9).all()
    full = [q.world.model.sample(list(path[:k]) + [int(a)], 2000, 7 + i)[0] for i, a in enumerate(tokens)]
    mean_len = np.mean([[len(t) for t in f] for f in full])
    assert abs(generated / (count * len(tokens)) - mean_len) < 0.05 * mean_len


def test_coupled_siblings_go_on_identically_from_a_shared_state_and_their_q_differences_are_less_noisy():
    """Completion i of every child of a node shares its uniforms: two children that enter the same state
    give the same reward completion by completion, and over a path's nodes the noise of the centred
    Q̂ vector (the ideal gradient's) is well below that of independent rollouts (long traces re-merge)."""
    q = bench.prepare(bench.SHAPES[1], 0, 0)
    w, path, states = q.world, q.paths[0], q.states[0]
    count, same, var = 400, 0, {True: 0.0, False: 0.0}
    for k in range(len(path)):
        likely = np.flatnonzero(w.pi[k, states[k]] > 0.05)
        likely = likely[likely != bench.EOS]
        if len(likely) < 2:
            continue
        r = {coupled: bench.sibling_rewards(q, 0, k, likely, count, 77 if coupled else None) for coupled in (True, False)}
        for coupled, r_A in r.items():
            var[coupled] += bench.gradient_noise(w.pi[k, states[k], likely], r_A)
        nxt = w.transition[states[k], likely]
        for a, b in zip(*np.triu_indices(len(likely), 1), strict=True):
            if nxt[a] == nxt[b]:
                assert np.array_equal(r[True][a], r[True][b])
                same += 1
    print(f"{same} same-state sibling pairs; noise coupled / independent: {var[True] / var[False]:.2f}")
    assert same > 0 and var[True] < 0.6 * var[False]


def test_coupling_noise_compares_the_same_nodes_coupled_and_independent():
    ratio, spread = bench.coupling_noise(TINY, seeds=1, questions=3, count=200)
    assert len(ratio) == len(spread) > 20 and (ratio >= 0).all() and (spread >= 0).all()
    assert ratio.mean() < 0.8  # 4 states: siblings re-merge often


def test_settle_visits_stops_when_settled_or_near_a_tie_and_grows_otherwise():
    pi = np.array([0.6, 0.4])
    pi_t = np.array([[0.2], [0.8]])
    params = AllocationParams()
    assert settle_visits(pi, pi_t, [200, 200], [180, 20], params) is None  # Q 0.9 vs 0.1: sign settled
    assert settle_visits(pi, pi_t, [400, 400], [200, 202], params) is None  # a near tie: not worth settling
    assert settle_visits(pi, pi_t, [20, 20], [13, 7], params) is None  # 0.65 vs 0.35: already settled at n = 20
    grown = settle_visits(pi, pi_t, [20, 20], [12, 8], params)  # 0.6 vs 0.4 at n = 20: worth more visits
    assert grown is not None and (grown >= 20).all() and grown.sum() > 40 and (grown <= params.n_max).all()


def test_settle_pairs_a_lone_target_with_the_likeliest_other_child_so_its_node_is_a_decision_point():
    """Pins `_pairs`: a target alone in its node's A(s) is worth nothing (no decision point), so the node's
    likeliest other child (the path's own token 0 here) is planned to ``n_min`` with it, topped up from
    what it has; a node that already holds a second child in A(s) gets no partner."""
    pi = np.array([[0.6, 0.3, 0.1]])
    pi_t = np.array([[0.3, 0.1, 0.6]])[..., None]  # the teacher moves mass to token 2
    kl = (pi * np.log(pi / pi_t[..., 0])).sum(axis=1, keepdims=True)
    params = AllocationParams(k_window=1, n_min=20, tau=0.05)
    # token 2 tops both lists (|g| 0.24 vs 0.16, 0.08; |π_T − π| 0.5 vs 0.3, 0.2): the only target
    assert np.argmax(gkd_magnitude(pi[0], pi_t[0, :, 0], kl[0, 0])) == np.argmax(np.abs(pi_t[0, :, 0] - pi[0])) == 2
    assert _plan_set(STRATEGIES["settle"](_one_path_state(pi, pi_t, kl), params)) == {(0, 0, 2): 20, (0, 0, 0): 20}
    n = np.array([[5, 0, 0]])
    assert _plan_set(STRATEGIES["settle"](_one_path_state(pi, pi_t, kl, n=n, w=n // 2), params)) == {(0, 0, 2): 20, (0, 0, 0): 15}
    n = np.array([[0, 20, 0]])  # token 1 already in A(s): the target completes the pair
    assert _plan_set(STRATEGIES["settle"](_one_path_state(pi, pi_t, kl, n=n, w=n // 2), params)) == {(0, 0, 2): 20}


def test_settle_grows_a_node_whose_children_show_one_q_to_n_target_and_stops_there():
    """Pins `_growth` on a tie at the start: equal Q̂ (at a win-or-lose node every child reads 1 at first)
    leave no alignment to settle yet, so the node is grown to ``n_target`` (capped by ``n_max``), where
    the paper would find a small difference; still tied at ``n_target``, it asks for nothing more."""
    pi = np.array([[0.6, 0.4]])
    pi_t = np.array([[0.2, 0.8]])[..., None]
    kl = (pi * np.log(pi / pi_t[..., 0])).sum(axis=1, keepdims=True)
    for w in ([[20, 20]], [[10, 10]]):
        state = _one_path_state(pi, pi_t, kl, n=[[20, 20]], w=w)  # both targets already hold n_min visits
        assert _plan_set(STRATEGIES["settle"](state, AllocationParams(n_target=100))) == {(0, 0, 0): 80, (0, 0, 1): 80}
        assert _plan_set(STRATEGIES["settle"](state, AllocationParams(n_target=100, n_max=60))) == {(0, 0, 0): 40, (0, 0, 1): 40}
    tied = _one_path_state(pi, pi_t, kl, n=[[100, 100]], w=[[50, 50]])
    assert STRATEGIES["settle"](tied, AllocationParams(n_target=100)).total == 0


def test_settle_visits_leaves_alone_a_spread_that_sampling_noise_explains():
    """Pins the positive-part James–Stein shrinkage of the projected Q. Q̂ 0.55 vs 0.45 is unsettled
    (its sign flips in about a quarter of the Jeffreys draws) but no larger than binomial noise
    (π-weighted spread 0.0024 against noise 0.006 at 20 visits, 0.003 at 40): projected at V̂, no
    count of visits settles it, so it is left alone. 0.6 vs 0.4 at 20 visits (spread 0.0096, 1.7 times
    the noise) is grown; projected at Q̂ itself, both would look settleable."""
    pi, pi_t = np.array([0.6, 0.4]), np.array([[0.2], [0.8]])
    params = AllocationParams()
    rng = np.random.default_rng(0)
    for n, w in ((20, 11), (40, 22)):
        flip = np.mean(rng.beta(w + 0.5, n - w + 0.5, 100_000) < rng.beta(n - w + 0.5, w + 0.5, 100_000))
        assert flip > 0.15  # two children: the cosine is ±1, settled only if the sign is
        assert settle_visits(pi, pi_t, [n, n], [w, n - w], params) is None
    assert settle_visits(pi, pi_t, [20, 20], [12, 8], params) is not None


def test_settle_visits_gives_the_children_neyman_shares_by_their_sway_on_the_alignment():
    """Pins the Neyman shares of growth: n_a ∝ σ_a √n_a, σ_a the spread of the cosine when only Q_a is
    drawn. A child holding 2% of π barely moves g* = π ⊙ (Q − V), so it gets (next to) no new visits
    while its likelier siblings, whose Q decide the alignment, are grown; equal shares would not tell them apart."""
    pi, pi_t = np.array([0.55, 0.43, 0.02]), np.array([[0.3], [0.6], [0.1]])
    n = np.array([20, 20, 20])
    grown = settle_visits(pi, pi_t, n, [12, 8, 10], AllocationParams())
    assert grown is not None and (grown >= n).all()
    extra = grown - n
    assert extra[:2].min() > 0 and extra[2] <= 0.1 * extra[:2].min()


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_q_intervals_keep_nominal_coverage_of_exact_values(name):
    """Each strategy's Q = w/n against exact Q on the synthetic model: 95% Wilson coverage stays near nominal.

    Adaptive stopping makes settle's visit counts depend on the rewards; this pins that the effect on
    Q's intervals and its mean error stays small (and that the bench's simulation is unbiased).
    """
    from harness.core import decision_support
    from harness.core.stats import wilson_interval

    covered = total = 0
    error = 0.0
    for shape, questions in ((bench.SHAPES[0], 8), (bench.SHAPES[1], 3)):
        for question in range(questions):
            q = bench.prepare(shape, 0, question)
            tree = _tree(q)
            bench.enrich(q, tree, name, AllocationParams(), seed=question)
            for j, states in enumerate(q.states):
                ch = tree.children(j)
                for k in np.unique(ch.position[ch.position < len(q.paths[j])]):
                    at = ch.position == k
                    support = decision_support(ch.n[at], ch.w[at] / np.maximum(ch.n[at], 1), 20)
                    if support is None:
                        continue
                    n, w, tok = ch.n[at][support], ch.w[at][support], ch.token[at][support]
                    exact = q.world.exact_q[k, states[k], tok]
                    lo, hi = wilson_interval(w, n)
                    covered += int(((lo <= exact) & (exact <= hi)).sum())
                    total += len(n)
                    error += float((w / n - exact).sum())
    assert total > 500
    assert 0.92 <= covered / total <= 0.99
    assert abs(error / total) < 0.01


def test_bench_row_option_reads_allocation_params_and_names_what_is_wrong():
    assert bench.parse_row("settle:price=0.00025,n_max=640") == ("settle", "price=0.00025,n_max=640", {"price": 0.00025, "n_max": 640})
    assert bench.parse_row("survey:visits=4") == ("survey", "visits=4", {"visits": 4})
    for row, says in [("foo:price=1", "unknown strategy 'foo'"), ("settle:prize=1", "'prize=1' is not KEY=VALUE"),
                      ("settle:budget=10", "'budget=10' is not KEY=VALUE"), ("paper:n_target=ten", "n_target takes a number (int)"),
                      # a value no strategy can run with: named, not run as a row of nan ranked "ok"
                      ("survey:visits=-4", "visits must be >= 1, got '-4'"), ("paper:n_target=0", "n_target must be >= 1"),
                      ("paper:tau=2", "tau must be in (0, 1)"), ("settle:price=inf", "price must be > 0 and finite"),
                      ("settle:confidence=1.5", "confidence must be in (0, 1)"), ("survey:coupled=7", "coupled must be 0 or 1")]:
        with pytest.raises(ValueError, match=re.escape(says)):
            bench.parse_row(row)
    import argparse

    assert bench.shape_names("short,aime-like") == ["short", "aime-like"] and bench.count("3") == 3
    for parse, text, says in [(bench.shape_names, "nope", "unknown shape 'nope'; choose from short, long"),
                              (bench.shape_names, ",", "names no shape"), (bench.count, "0", "must be >= 1, got '0'"),
                              (bench.count, "x", "expected an integer")]:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(says)):
            parse(text)


def test_bench_row_n_min_sets_the_support_rule_of_the_strategy_and_the_estimate_alike():
    strategy, _, knobs = bench.parse_row("survey:n_min=2,visits=2,positions=100")
    assert knobs == {"n_min": 2, "visits": 2, "positions": 100}
    row = bench._job((TINY, 0, 3, strategy, knobs, False))
    alike = bench.run_seed(dataclasses.replace(TINY, n_min=2), 0, 3, strategy, AllocationParams(visits=2, positions=100))
    assert row.tokens == alike.tokens and row.rollouts == alike.rollouts
    np.testing.assert_array_equal(row.estimates["plain"]["mean"], alike.estimates["plain"]["mean"])
    # at the shape's n_min (20) two visits never make a child of a sampled position count: another estimate
    shape_rule = bench._job((TINY, 0, 3, strategy, {"visits": 2, "positions": 100}, False))
    assert shape_rule.tokens == row.tokens
    assert not np.array_equal(shape_rule.estimates["plain"]["mean"], row.estimates["plain"]["mean"], equal_nan=True)


def test_half_cosines_match_the_cosine_without_noise_and_count_tied_halves_as_zero():
    rng = np.random.default_rng(0)
    pi, pi_t = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5])
    g_T = [gkd_gradient(pi, pi_t), gkd_gradient(pi, pi_t[::-1])]
    n = np.full(3, 2_000_000)
    w = (n * np.array([0.2, 0.5, 0.7])).astype(np.int64)
    exact = [float(bench._cosines(pi, (w / n)[None, :], g[None, :])[0, 0]) for g in g_T]
    np.testing.assert_allclose(bench.half_cosines(pi, n, w, g_T, rng), exact, atol=1e-3)
    assert np.all(bench.half_cosines(pi, np.full(3, 20), np.zeros(3, np.int64), g_T, rng) == 0.0)


def test_shrunk_cosine_silences_noise_where_q_ties_and_keeps_resolved_cosines():
    """`reliability` r̂: with equal exact Q (g* = 0) the plug-in cosine is pure noise and r̂·cos is far
    smaller; with a spread resolved many times over, r̂ ≈ 1 and r̂·cos is the exact cosine."""
    rng = np.random.default_rng(3)
    pi, pi_t = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5])
    g_T = gkd_gradient(pi, pi_t)
    n = np.full(3, 20)
    plain, shrunk = [], []
    for w in rng.binomial(20, 0.5, size=(4000, 3)):
        if w.min() < w.max():  # the pipeline's decision points
            g = bench.ideal_gradient(pi, w / n)
            cos = alignment_score(g, g_T)
            plain.append(cos)
            shrunk.append(bench.reliability(bench.debiased_norm2(pi, n, w), g @ g) * cos)
    assert len(plain) > 3000
    assert np.sqrt(np.mean(np.square(shrunk))) < 0.5 * np.sqrt(np.mean(np.square(plain)))
    assert np.sqrt(np.mean(np.square(plain))) > 0.5  # noise, not a spread the test forgot to tie
    q = np.array([0.2, 0.5, 0.7])
    n = np.full(3, 20_000)
    exact = alignment_score(bench.ideal_gradient(pi, q), g_T)
    estimates = []
    for w in rng.binomial(n, q, size=(200, 3)):
        g = bench.ideal_gradient(pi, w / n)
        r = bench.reliability(bench.debiased_norm2(pi, n, w), g @ g)
        assert 0.99 < r <= 1.0
        estimates.append(r * alignment_score(g, g_T))
    assert abs(np.mean(estimates) - exact) < 0.01
    tied = np.full(3, 7)
    assert bench.reliability(bench.debiased_norm2(pi, np.full(3, 20), tied), 0.0) == 0.0  # tied Q̂: no signal


def test_visits_to_resolve_is_where_the_ideal_gradients_noise_equals_its_square_norm():
    """At n = visits_to_resolve visits per child, binomial Q̂ give E|ĝ* − g*|² = |g*|² (simulated)."""
    rng = np.random.default_rng(5)
    pi_A, q_A = np.array([0.6, 0.25, 0.1, 0.05]), np.array([0.55, 0.4, 0.7, 0.2])
    n = bench.visits_to_resolve(pi_A, q_A)
    visits = round(n)
    g_A = bench.ideal_gradient(pi_A, q_A)
    q_D_A = rng.binomial(visits, q_A, size=(40_000, len(q_A))) / visits
    noise = np.mean([np.sum((bench.ideal_gradient(pi_A, q) - g_A) ** 2) for q in q_D_A])
    assert 10 < visits < 1000
    assert abs(noise * visits / n - g_A @ g_A) < 0.03 * (g_A @ g_A)


def test_resolvability_reads_every_estimand_position_of_the_paths():
    need, cos = bench.resolvability(TINY, seeds=1, questions=2, positions=1000)
    q = [bench.prepare(TINY, 0, i) for i in range(2)]
    count = sum(bench.exact_node(x.world, k, s[k]) is not None for x in q if x for p, s in zip(x.paths, x.states) for k in range(len(p)))
    assert len(need) == len(cos) == count > 0
    assert cos.shape[1] == len(bench.TEACHERS) and (need >= 0).all()  # 0 where every child's outcome is certain


def test_multilevel_differences_telescope_to_the_deep_cosine_and_spend_the_visits_asked():
    """E[cos(base)] + Σ_l E[Δ_l] = E[cos(base · 2^levels)]: the antithetic halves are draws of the level
    below, so the single-term estimator is unbiased for the deepest level (Monte Carlo tolerance)."""
    m = bench.multilevel(TINY, base=4, levels=3, draws=8000, seeds=1, questions=3, positions=1000)
    q = [bench.prepare(TINY, 0, i) for i in range(3)]
    nodes = [(x.world, k, s[k]) for x in q if x for p, s in zip(x.paths, x.states) for k in range(len(p))]
    assert len(m.exact_N_T) == m.per_seed == sum(bench.exact_node(*n) is not None for n in nodes) > 0
    assert m.tokens_per_visit >= 2 * m.per_seed  # every position has two likely children, each at least one token
    assert abs(m.base_bias + m.delta_N_L.sum(axis=1).mean() - m.deep_bias) < 0.01
    assert abs(m.deep_bias) < abs(m.base_bias)  # more visits, less attenuation
    p_L, se = bench.multilevel_error(m, base=4, visits=6)
    assert np.isclose(4 + p_L @ (4 * 2.0 ** np.arange(1, 4)), 6) and se > 0


def test_importance_moments_match_sampled_weighted_rollouts_and_the_posterior_has_no_variance():
    """`importance_moments` against Monte Carlo: continuations drawn from the even student-helpful
    mixture, weighted by ∏ π/q, have mean V and second moment E_q[(w·R)²]; the student as its own
    proposal gives plain rollouts, and π·Q/V gives every weighted reward exactly V."""
    q = next(x for x in (bench.prepare(TINY, 0, i) for i in range(4)) if x)
    w = q.world
    mix = 0.5 * (w.pi + w.teachers[bench.TEACHERS.index("helpful")])
    second, tokens = bench.importance_moments(w, mix)
    rng = np.random.default_rng(7)
    n, depth, start = 200_000, 1, 1
    state, weight, reward, length = np.full(n, start), np.ones(n), np.zeros(n), np.zeros(n)
    alive = np.ones(n, bool)
    for t in range(depth, TINY.horizon):
        a = (rng.random(n)[:, None] > np.cumsum(mix[t, state], axis=1)).sum(axis=1).clip(max=TINY.vocab_size - 1)
        weight = np.where(alive, weight * w.pi[t, state, a] / mix[t, state, a], weight)
        length += alive
        ended = alive & (a == bench.EOS)
        reward = np.where(ended, w.success[state], reward)
        alive &= a != bench.EOS
        state = np.where(alive, w.transition[state, a], state)
    est = weight * reward
    assert abs(est.mean() - w.value[depth, start]) < 4 * est.std() / np.sqrt(n)
    assert abs((est ** 2).mean() - second[depth, start]) < 0.05 * second[depth, start] + 1e-3
    assert abs(length.mean() - tokens[depth, start]) < 0.02 * tokens[depth, start]
    plain, plain_tokens = bench.importance_moments(w, w.pi)
    assert np.allclose(plain, w.value) and np.allclose(plain_tokens, w.remaining)  # E[R²] = E[R] = V
    ratios = bench.importance(TINY, seeds=1, questions=3, positions=1000)
    assert ratios["student"] == (1.0, 1.0)
    assert ratios["posterior π·Q/V"][0] > 1e6  # zero variance up to rounding
