"""Tree statistics (SPEC §2): exact counts, order independence, and why the default counting differs."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.core import Rollouts, TreeStats, wilson_interval
from harness.exact_lm import SyntheticLM


def _random_case(rng, vocab=3, length=12):
    paths = [rng.integers(0, vocab, length) for _ in range(3)]
    paths[1][:4] = paths[0][:4]  # tracked paths share prefixes, as real paths do
    paths[2][:7] = paths[0][:7]
    full, cont, rew, forced, target, token = [], [], [], [], [], []
    for _ in range(600):
        if rng.random() < 0.3:
            y = list(rng.integers(0, vocab, rng.integers(0, 15)))
            if rng.random() < 0.5:
                y = list(paths[0][: rng.integers(0, length)]) + y
            c, f, t, a = y, 0, -1, -1
        else:
            t, k, a = int(rng.integers(0, 3)), int(rng.integers(0, length)), int(rng.integers(0, vocab))
            c = list(paths[t][k + 1 : k + 1 + rng.integers(0, 6)]) if a == paths[t][k] else []
            c += list(rng.integers(0, vocab, rng.integers(0, 5)))
            y, f = list(paths[t][:k]) + [a] + c, k + 1
        full.append(y), cont.append(c), rew.append(int(rng.random() < 0.5))
        forced.append(f), target.append(t), token.append(a)
    return paths, full, Rollouts.from_lists(cont, rew, forced, target, token)


def _brute_force(path, full, rewards, forced, cascade):
    """Walk every rollout down the path token by token: the definition in SPEC §2, literally."""
    ref = {}
    for y, r, f in zip(full, rewards, forced, strict=True):
        for k in range(min(len(y), len(path) + 1)):
            if list(y[:k]) != list(path[:k]):
                break
            c = ref.setdefault((k, int(y[k])), [0, 0, 0, 0])
            if cascade == "paper" or f <= k + 1:
                c[0], c[1] = c[0] + 1, c[1] + r
            if f <= k:
                c[2], c[3] = c[2] + 1, c[3] + r
    return {key: v for key, v in ref.items() if v[0] > 0}


def _as_dict(ch):
    rows = zip(ch.position, ch.token, ch.n, ch.w, ch.m, ch.m_success, strict=True)
    return {(int(k), int(a)): [int(x) for x in v] for k, a, *v in rows}


def test_counts_match_the_definition_in_both_modes():
    rng = np.random.default_rng(0)
    paths, full, batch = _random_case(rng)
    for cascade in ("unbiased", "paper"):
        tree = TreeStats(paths, cascade=cascade)
        tree.ingest(batch)
        for j, path in enumerate(paths):
            ref = _brute_force(path, full, batch.reward, batch.forced_len, cascade)
            assert _as_dict(tree.children(j)) == ref
            keys = list(ref)
            got = tree.visits(j, [k for k, _ in keys], [a for _, a in keys])
            assert got.tolist() == [ref[key][0] for key in keys]


def test_unvisited_children_have_zero_visits():
    tree = TreeStats([[1, 2, 3]])
    tree.ingest(Rollouts.from_lists([[1, 2, 0]], [1]))
    assert tree.visits(0, [0, 2, 2, 5], [1, 3, 0, 1]).tolist() == [1, 0, 1, 0]


def test_a_rollout_forced_past_where_its_path_leaves_another_is_no_child_of_the_other():
    """Paths 0 and 1 share two tokens. A rollout forced three tokens down path 1 passed path 0's exit
    child ``(2, path1[2])`` on given tokens, so it is no visit there (SPEC §2): path 0 lists no child at
    all, not one with n = 0 and Q = 0/0, and path 1 has the forced child alone."""
    paths = [[0, 1, 2, 3], [0, 1, 5, 6]]
    tree = TreeStats(paths)
    batch = Rollouts.from_lists([[]], [1], forced_len=[4], target_path=[1], forced_token=[7])
    tree.ingest(batch)
    full = [[0, 1, 5, 7]]
    for j, path in enumerate(paths):
        assert _as_dict(tree.children(j)) == _brute_force(path, full, batch.reward, batch.forced_len, "unbiased")
    assert _as_dict(tree.children(0)) == {} and _as_dict(tree.children(1)) == {(3, 7): [1, 1, 0, 0]}
    assert tree.visits(0, [2], [5]).tolist() == [0]


def _subset(batch, idx):
    conts = [batch.tokens[batch.offsets[i] : batch.offsets[i + 1]] for i in idx]
    return Rollouts.from_lists(conts, batch.reward[idx], batch.forced_len[idx], batch.target_path[idx], batch.forced_token[idx])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), splits=st.integers(1, 6), cascade=st.sampled_from(["unbiased", "paper"]))
def test_ingest_is_order_and_batching_independent(seed, splits, cascade):
    rng = np.random.default_rng(seed)
    paths, _, batch = _random_case(rng)
    whole = TreeStats(paths, cascade=cascade)
    whole.ingest(batch)
    pieces = TreeStats(paths, cascade=cascade)
    for part in np.array_split(rng.permutation(len(batch)), splits):
        pieces.ingest(_subset(batch, part))
    for a, b in zip(whole.state(), pieces.state(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_long_responses_cost_their_matched_length_only():
    """A 30,000-token response leaving the path early is resolved without scanning its tail."""
    path = np.arange(30_000) % 97
    tail = np.full(30_000, 5)
    tree = TreeStats([path])
    responses = [np.concatenate([path[:3], tail]), path.copy(), np.concatenate([path[:20_000], tail])]
    tree.ingest(Rollouts.from_lists(responses, [1, 0, 1]))
    ex = tree.exits(Rollouts.from_lists(responses, [1, 0, 1]), 0)
    assert ex.lcp.tolist() == [3, 30_000, 20_000]
    assert ex.token.tolist() == [5, -1, 5]
    on = tree.on_path_counts(0)
    assert on[0, 0] == 3 and on[10, 0] == 2 and on[25_000, 0] == 1


def test_paper_cascade_is_biased_where_unbiased_counting_is_not():
    """Pins why `cascade: unbiased` is the default (SPEC §2).

    Targeted rollouts forced two tokens deep on a losing child pass through the root's on-path
    child on tokens that were never sampled; counting them there (the paper's cascade) drags that
    child's Q toward the forced child's outcome. The unbiased count ignores them and stays within
    its Wilson interval of the exact value.
    """
    model = SyntheticLM(seed=11)
    rng_seed = 1
    toks, rewards, _ = model.sample([], 400, rng_seed)
    path = max(toks, key=len)
    states = model.states(path)
    q_root = model.exact_q[0, 0, path[0]]
    worst = int(np.argmax(np.abs(model.exact_q[2, states[2]] - q_root)))
    assert abs(model.exact_q[2, states[2], worst] - q_root) > 0.2  # the constructed case has a gap to expose
    forced_prefix = list(path[:2]) + [worst]
    conts, rew, _ = model.sample(forced_prefix, 3000, rng_seed + 1)
    targeted = Rollouts.from_lists(conts, rew, [3] * len(conts), [0] * len(conts), [worst] * len(conts))
    estimates = {}
    for cascade in ("unbiased", "paper"):
        tree = TreeStats([path], cascade=cascade)
        tree.ingest(Rollouts.from_lists(toks, rewards))
        tree.ingest(targeted)
        n, w = tree.on_path_counts(0)[0, :2]
        estimates[cascade] = (w / n, *wilson_interval(w, n))
    est, lo, hi = estimates["unbiased"]
    assert lo <= q_root <= hi
    est_p, lo_p, hi_p = estimates["paper"]
    assert not lo_p <= q_root <= hi_p
    assert abs(est_p - q_root) > 0.1
