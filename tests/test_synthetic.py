"""The exact synthetic model (SPEC §7): its Q is exact, its sampler draws from its pi."""


import numpy as np

from harness.exact_lm import EOS, TEACHERS, SyntheticLM


def _enumerated_value(model, prefix=()):
    """Success probability by enumerating every response: the tree, not the (depth, state) DP."""
    if len(prefix) and prefix[-1] == EOS:
        return float(model.reward(list(prefix)))
    if len(prefix) == model.horizon:
        return 0.0
    pi = np.exp(model.logp[len(prefix), model.states(list(prefix))[-1]])
    return sum(pi[a] * _enumerated_value(model, prefix + (a,)) for a in range(model.vocab_size))


def test_exact_q_equals_full_enumeration():
    model = SyntheticLM(seed=4, vocab_size=3, n_states=4, horizon=6)
    for prefix in [(), (1,), (2, 1), (1, 1, 2)]:
        state = model.states(list(prefix))[-1]
        for a in range(model.vocab_size):
            assert np.isclose(model.exact_q[len(prefix), state, a], _enumerated_value(model, prefix + (a,)))


def test_sampler_matches_exact_values():
    model = SyntheticLM(seed=3)
    pi = np.exp(model.logp[0, 0])
    value = (pi * model.exact_q[0, 0]).sum()
    toks, rewards, truncated = model.sample([], 40_000, seed=1)
    se = np.sqrt(value * (1 - value) / len(rewards))
    assert abs(rewards.mean() - value) < 5 * se
    first = np.bincount([t[0] for t in toks], minlength=model.vocab_size) / len(toks)
    assert np.abs(first - pi).max() < 0.02
    assert all(model.reward(t) == r for t, r in zip(toks[:3000], rewards[:3000], strict=True))
    assert truncated.any() and not truncated.all()


def test_model_has_many_distinct_decision_points():
    """Not a trivial chain: Q varies across children at most nodes, across many states."""
    model = SyntheticLM(seed=0)
    spread = model.exact_q.max(axis=-1) - model.exact_q.min(axis=-1)
    assert (spread[:-1] > 0.1).mean() > 0.5
    assert len(np.unique(np.round(model.exact_q, 6))) > 50


def test_teachers_point_opposite_ways():
    model = SyntheticLM(seed=2)
    pi = np.exp(model.logp)
    value = (pi * model.exact_q).sum(-1)
    adv = {t: ((np.exp(model.teacher_logp(t)) - pi) * model.exact_q).sum(-1) for t in TEACHERS}
    assert adv["helpful"].mean() > 0 > adv["misleading"].mean()
    assert np.all(np.isfinite(value))


def test_same_seed_same_samples_and_forced_eos():
    model = SyntheticLM(seed=5)
    a, ra, _ = model.sample([1, 2], 50, seed=9)
    b, rb, _ = model.sample([1, 2], 50, seed=9)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)) and np.array_equal(ra, rb)
    toks, rew, trunc = model.sample([1, EOS], 4, seed=0)
    assert all(len(t) == 0 for t in toks) and len(set(rew.tolist())) == 1 and not trunc.any()


def test_batched_rewards_equal_one_by_one():
    model = SyntheticLM(seed=7)
    toks, rewards, _ = model.sample([], 500, seed=3)
    toks += [np.zeros(0, np.int64), np.array([3, 1])]  # empty and EOS-less responses score 0
    assert model.rewards(toks).tolist() == [model.reward(list(t)) for t in toks]


def test_a_seed_from_numpy_scalars_is_the_seed_from_the_numbers_they_hold():
    """Pins derive_seed on numpy scalars: ids taken from arrays derive the seeds the same ids as Python numbers do."""
    from harness.seeds import derive_seed

    assert derive_seed(0, "q1", np.int64(5), np.int32(3), np.float64(0.5)) == derive_seed(0, "q1", 5, 3, 0.5)
    assert derive_seed(0, "q1", 5) != derive_seed(0, "q1", 6)
