"""Gradients of SPEC.md §3: analytic formulas against torch autograd, estimators against their means."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from harness.core.gradients import (
    ALGORITHMS,
    NodeInputs,
    alignment_score,
    decision_support,
    drgrpo_gradient,
    forward_kl_gradient,
    gkd_gradient,
    ideal_gradient,
    jsd_gradient,
    minillm_gradient,
    reward_to_go,
    single_sample_gkd_gradient,
    teacher_advantage,
)

SIZES = [2, 3, 5, 17, 50]
SEEDS = [0, 1, 2]


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _node(size, seed):
    """Random logits of student and teacher (spread enough for small probabilities) and Q in [0, 1]."""
    rng = np.random.default_rng([size, seed])
    return rng.normal(size=size) * 2.0, rng.normal(size=size) * 2.0, rng.uniform(size=size)


def _autograd(objective, z):
    """∇_z objective(softmax(z)) in float64."""
    z_t = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    objective(torch.softmax(z_t, dim=0)).backward()
    return z_t.grad.numpy()


def _kl_t(p, q):
    return (p * (p.log() - q.log())).sum()


# --- analytic gradients equal autograd of their objectives ---------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_ideal_is_gradient_of_success_probability(size, seed):
    z, _, q = _node(size, seed)
    expected = _autograd(lambda pi: (pi * torch.tensor(q)).sum(), z)
    np.testing.assert_allclose(ideal_gradient(_softmax(z), q), expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_gkd_is_minus_gradient_of_reverse_kl(size, seed):
    z, z_teacher, _ = _node(size, seed)
    pi_teacher = _softmax(z_teacher)
    expected = _autograd(lambda pi: -_kl_t(pi, torch.tensor(pi_teacher)), z)
    np.testing.assert_allclose(gkd_gradient(_softmax(z), pi_teacher), expected, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_forward_kl_is_minus_gradient_of_forward_kl(size, seed):
    z, z_teacher, _ = _node(size, seed)
    pi_teacher = _softmax(z_teacher)
    expected = _autograd(lambda pi: -_kl_t(torch.tensor(pi_teacher), pi), z)
    np.testing.assert_allclose(forward_kl_gradient(_softmax(z), pi_teacher), expected, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_jsd_is_minus_gradient_of_generalised_jsd(beta, size, seed):
    z, z_teacher, _ = _node(size, seed)
    pi_teacher = _softmax(z_teacher)

    def minus_jsd(pi):
        p = torch.tensor(pi_teacher)
        mixture = beta * p + (1 - beta) * pi
        return -(beta * _kl_t(p, mixture) + (1 - beta) * _kl_t(pi, mixture))

    expected = _autograd(minus_jsd, z)
    np.testing.assert_allclose(jsd_gradient(_softmax(z), pi_teacher, beta), expected, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_minillm_is_gradient_of_its_surrogate(size, seed):
    """MiniLLM's direction is ∇_z [−KL(π̃‖π̃_T) + R log π̃_{y_k}] with R held constant (Gu et al. 2024)."""
    z, z_teacher, _ = _node(size, seed)
    pi_teacher = _softmax(z_teacher)
    path_action, future = seed % size, -1.7 + seed
    expected = _autograd(
        lambda pi: -_kl_t(pi, torch.tensor(pi_teacher)) + future * pi[path_action].log(), z
    )
    got = minillm_gradient(_softmax(z), pi_teacher, path_action, future)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-13)


def test_inputs_are_renormalised_on_the_support():
    """Restricted, unnormalised probabilities give the same gradient as their renormalisation."""
    z, z_teacher, q = _node(7, 0)
    pi, pi_teacher = _softmax(z), _softmax(z_teacher)
    for function, args in [
        (ideal_gradient, (q,)),
        (gkd_gradient, (pi_teacher,)),
        (forward_kl_gradient, (pi_teacher,)),
        (jsd_gradient, (pi_teacher, 0.3)),
        (single_sample_gkd_gradient, (pi_teacher, np.arange(7))),
        (drgrpo_gradient, (np.arange(7), np.arange(7) // 2)),
    ]:
        np.testing.assert_allclose(function(0.4 * pi, *args), function(pi, *args), rtol=1e-12)
    np.testing.assert_allclose(gkd_gradient(pi, 0.01 * pi_teacher), gkd_gradient(pi, pi_teacher), rtol=1e-12)
    assert teacher_advantage(3 * pi, 0.2 * pi_teacher, q) == pytest.approx(teacher_advantage(pi, pi_teacher, q))


def test_gkd_finite_with_zero_probabilities():
    """An underflowed probability on A(s) is floored inside the log: no nan or inf escapes."""
    pi, pi_teacher = np.array([0.5, 0.5, 0.0]), np.array([0.0, 0.3, 0.7])
    for g in (
        gkd_gradient(pi, pi_teacher),
        single_sample_gkd_gradient(pi, pi_teacher, np.array([3, 4, 0])),
        jsd_gradient(pi, pi_teacher),
        minillm_gradient(pi, pi_teacher, 1, 0.5),
    ):
        assert np.all(np.isfinite(g))


# --- finite-sample estimators converge to their expectations -------------------------------------


def _draws(pi, q, n_draws, rng):
    """On-policy action counts m ~ Multinomial(M, π̃) and Bernoulli(Q_a) successes among them."""
    m = rng.multinomial(n_draws, pi)
    return m, rng.binomial(m, q)


@pytest.mark.parametrize("size", [2, 5, 17])
@pytest.mark.parametrize("seed", SEEDS)
def test_single_sample_gkd_converges_to_gkd(size, seed):
    z, z_teacher, q = _node(size, seed)
    pi, pi_teacher = _softmax(z), _softmax(z_teacher)
    rng = np.random.default_rng(seed)
    expected = gkd_gradient(pi, pi_teacher)
    # E|ĝ − g|² <= E|ℓ_a (e_a − π̃)|² / M for one draw's second moment; allow 5 standard errors.
    ell = np.log(pi_teacher) - np.log(pi)
    second_moment = sum(pi[a] * ell[a] ** 2 * np.sum((np.eye(size)[a] - pi) ** 2) for a in range(size))
    errors = {}
    for n_draws in (1_000, 100_000):
        m, _ = _draws(pi, q, n_draws, rng)
        errors[n_draws] = np.linalg.norm(single_sample_gkd_gradient(pi, pi_teacher, m) - expected)
        assert errors[n_draws] < 5 * math.sqrt(second_moment / n_draws)
    assert errors[100_000] < errors[1_000]


def test_single_sample_gkd_error_shrinks_like_inverse_sqrt():
    """Mean error over seeds drops by about sqrt(100) = 10 from M = 10^3 to 10^5; require > 4."""
    z, z_teacher, q = _node(10, 0)
    pi, pi_teacher = _softmax(z), _softmax(z_teacher)
    expected = gkd_gradient(pi, pi_teacher)
    rng = np.random.default_rng(7)
    mean_error = {
        n_draws: np.mean([
            np.linalg.norm(single_sample_gkd_gradient(pi, pi_teacher, _draws(pi, q, n_draws, rng)[0]) - expected)
            for _ in range(50)
        ])
        for n_draws in (1_000, 100_000)
    }
    assert 4 < mean_error[1_000] / mean_error[100_000] < 25


@pytest.mark.parametrize("size", [3, 5, 10])
@pytest.mark.parametrize("seed", SEEDS)
def test_drgrpo_alignment_with_ideal_tends_to_one(size, seed):
    z, _, q = _node(size, seed)
    z = z / 2  # keep every action visited at small M
    pi = _softmax(z)
    rng = np.random.default_rng(seed)
    ideal = ideal_gradient(pi, q)
    mean_alignment = {
        n_draws: np.nanmean([alignment_score(ideal, drgrpo_gradient(pi, *_draws(pi, q, n_draws, rng))) for _ in range(20)])
        for n_draws in (100, 100_000)
    }
    assert mean_alignment[100_000] > 0.99
    assert mean_alignment[100_000] > mean_alignment[100]


def test_drgrpo_mean_matches_ideal():
    """At large M, ĝ_a = (s_a − m_a r̄)/M itself approaches π̃_a (Q_a − V), not only in direction."""
    z, _, q = _node(5, 3)
    pi = _softmax(z / 2)
    g = drgrpo_gradient(pi, *_draws(pi, q, 1_000_000, np.random.default_rng(0)))
    np.testing.assert_allclose(g, ideal_gradient(pi, q), atol=3e-3)


def test_estimators_are_zero_without_draws():
    pi, pi_teacher = np.array([0.2, 0.8]), np.array([0.6, 0.4])
    np.testing.assert_array_equal(single_sample_gkd_gradient(pi, pi_teacher, np.zeros(2)), np.zeros(2))
    np.testing.assert_array_equal(drgrpo_gradient(pi, np.zeros(2), np.zeros(2)), np.zeros(2))


def test_single_sample_gkd_with_one_draw():
    """One draw of action a gives exactly ℓ_a (e_a − π̃)."""
    pi, pi_teacher = np.array([0.2, 0.5, 0.3]), np.array([0.6, 0.3, 0.1])
    ell = np.log(pi_teacher / pi)
    got = single_sample_gkd_gradient(pi, pi_teacher, np.array([0, 1, 0]))
    np.testing.assert_allclose(got, ell[1] * (np.array([0.0, 1.0, 0.0]) - pi))


# --- alignment, teacher advantage, decision points ------------------------------------------------


def test_alignment_nan_on_zero_vectors():
    g = np.array([1.0, -2.0, 0.5])
    assert math.isnan(alignment_score(np.zeros(3), g))
    assert math.isnan(alignment_score(g, np.zeros(3)))
    assert math.isnan(alignment_score(np.zeros(3), np.zeros(3)))


def test_alignment_defined_for_tiny_vectors():
    """Pins the rescaling: gradients of size 1e-200 from inputs of that scale still get their cosine,
    not nan from underflow; at the unit scale of probability gradients they are rounding residue."""
    tiny_ref, tiny = np.array([1e-200, -1e-200]), np.array([3e-210, -3e-210])
    assert alignment_score(tiny_ref, tiny, scale_ref=1e-200, scale=1e-210) == pytest.approx(1.0)
    assert math.isnan(alignment_score(tiny_ref, tiny))


@pytest.mark.parametrize("seed", SEEDS)
def test_alignment_is_plus_or_minus_one_on_two_actions(seed):
    z, z_teacher, q = _node(2, seed)
    pi, pi_teacher = _softmax(z), _softmax(z_teacher)
    ideal = ideal_gradient(pi, q)
    for g in (gkd_gradient(pi, pi_teacher), forward_kl_gradient(pi, pi_teacher), jsd_gradient(pi, pi_teacher)):
        assert abs(alignment_score(ideal, g)) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_teacher_advantage_identities(size, seed):
    """Adv_T = <π̃_T − π̃, Q> = Σ π̃_T Q − V = Σ_a (π̃_T,a / π̃_a) g*_a, and Σ g* = 0, <g*, Q> = Var_π̃(Q)."""
    z, z_teacher, q = _node(size, seed)
    pi, pi_teacher = _softmax(z), _softmax(z_teacher)
    ideal = ideal_gradient(pi, q)
    value = pi @ q
    advantage = teacher_advantage(pi, pi_teacher, q)
    assert advantage == pytest.approx(forward_kl_gradient(pi, pi_teacher) @ q, abs=1e-12)
    assert advantage == pytest.approx(pi_teacher @ q - value, abs=1e-12)
    assert advantage == pytest.approx(np.sum(pi_teacher / pi * ideal), abs=1e-10)
    assert advantage == pytest.approx(teacher_advantage(pi, pi_teacher, q + 0.3), abs=1e-12)
    assert teacher_advantage(pi, pi, q) == 0.0
    assert ideal.sum() == pytest.approx(0.0, abs=1e-14)
    assert ideal @ q == pytest.approx(pi @ (q - value) ** 2, abs=1e-12)


def test_decision_support_cases():
    n = np.array([25, 20, 19, 0])
    np.testing.assert_array_equal(
        decision_support(n, np.array([0.2, 0.4, 0.9, np.nan]), n_min=20), [True, True, False, False]
    )
    # Q differs only on a child below n_min: not a decision point.
    assert decision_support(n, np.array([0.5, 0.5, 0.9, np.nan]), n_min=20) is None
    # Fewer than two supported children.
    assert decision_support(n, np.array([0.2, 0.4, 0.9, np.nan]), n_min=21) is None
    assert decision_support(np.zeros(3), np.zeros(3), n_min=1) is None
    np.testing.assert_array_equal(decision_support(n, np.array([0.2, 0.4, 0.9, 0.0]), n_min=0), [True] * 4)


# --- MiniLLM and reward-to-go ---------------------------------------------------------------------


@pytest.mark.parametrize("path_action", [-1, 0, 2])
def test_minillm_without_future_is_gkd(path_action):
    pi, pi_teacher = np.array([0.2, 0.5, 0.3]), np.array([0.6, 0.3, 0.1])
    np.testing.assert_array_equal(minillm_gradient(pi, pi_teacher, path_action, 0.0), gkd_gradient(pi, pi_teacher))


def test_minillm_path_token_outside_support():
    """y_k ∉ A(s): e_{y_k} restricted to A(s) is 0, so the long-term term is −R π̃."""
    pi, pi_teacher = np.array([1.0, 2.5, 1.5]), np.array([0.6, 0.3, 0.1])
    got = minillm_gradient(pi, pi_teacher, -1, 0.8)
    np.testing.assert_allclose(got, gkd_gradient(pi, pi_teacher) - 0.8 * pi / pi.sum())
    with pytest.raises(ValueError, match="path_action"):
        minillm_gradient(pi, pi_teacher, 3, 0.8)
    with pytest.raises(ValueError, match="path_action"):
        minillm_gradient(pi, pi_teacher, -2, 0.8)


@pytest.mark.parametrize("length", [0, 1, 2, 9, 40])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.95, 1.0])
def test_reward_to_go_matches_double_loop(length, gamma):
    log_ratio = np.random.default_rng(length).normal(size=length)
    expected = [sum(gamma ** (t - k - 1) * log_ratio[t] for t in range(k + 1, length)) for k in range(length)]
    got = reward_to_go(log_ratio, gamma)
    assert got.shape == (length,)
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_reward_to_go_default_gamma_and_last_position():
    log_ratio = np.array([0.3, -1.0, 2.0])
    np.testing.assert_allclose(reward_to_go(log_ratio), [-1.0 + 0.95 * 2.0, 2.0, 0.0])


# --- JSD argument checks and the per-node interface -----------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 1.0, -0.1, 1.5])
def test_jsd_rejects_beta_outside_open_unit_interval(beta):
    with pytest.raises(ValueError, match="beta"):
        jsd_gradient(np.array([0.5, 0.5]), np.array([0.3, 0.7]), beta)


def test_jsd_half_is_symmetric_js_direction():
    """At β = 0.5 the JSD gradient has the sign of the GKD and forward-KL gradients on two actions."""
    pi, pi_teacher = np.array([0.8, 0.2]), np.array([0.3, 0.7])
    g = jsd_gradient(pi, pi_teacher)
    assert g[1] > 0 > g[0]
    assert alignment_score(g, gkd_gradient(pi, pi_teacher)) == pytest.approx(1.0)


def test_algorithms_registry_calls_the_functions():
    z, z_teacher, q = _node(6, 1)
    pi, pi_teacher = _softmax(z), _softmax(z_teacher)
    m, m_success = np.array([5, 0, 3, 9, 1, 2]), np.array([2, 0, 3, 1, 1, 0])
    node = NodeInputs(pi, pi_teacher, q, m, m_success, path_action=3, reward_to_go=-0.4, jsd_beta=0.2)
    assert set(ALGORITHMS) == {"gkd", "gkd_single_sample", "drgrpo", "minillm", "forward_kl", "jsd"}
    expected = {
        "gkd": gkd_gradient(pi, pi_teacher),
        "gkd_single_sample": single_sample_gkd_gradient(pi, pi_teacher, m),
        "drgrpo": drgrpo_gradient(pi, m, m_success),
        "minillm": minillm_gradient(pi, pi_teacher, 3, -0.4),
        "forward_kl": forward_kl_gradient(pi, pi_teacher),
        "jsd": jsd_gradient(pi, pi_teacher, 0.2),
    }
    for name, algorithm in ALGORITHMS.items():
        np.testing.assert_array_equal(algorithm(node), expected[name])


# --- cosine properties ----------------------------------------------------------------------------

_vectors = arrays(
    np.float64, st.integers(2, 20), elements=st.floats(-1e3, 1e3, allow_subnormal=False)
).filter(lambda v: np.any(np.abs(v) > 1e-6))


@settings(max_examples=100, deadline=None)
@given(data=st.data(), scale=st.floats(1e-3, 1e3))
def test_cosine_scale_and_sign(data, scale):
    g_ref = data.draw(_vectors)
    g = data.draw(arrays(np.float64, g_ref.shape, elements=st.floats(-1e3, 1e3, allow_subnormal=False)).filter(
        lambda v: np.any(np.abs(v) > 1e-6)
    ))
    score = alignment_score(g_ref, g)
    assert -1 - 1e-12 <= score <= 1 + 1e-12
    assert alignment_score(scale * g_ref, g) == pytest.approx(score, abs=1e-12)
    assert alignment_score(g_ref, scale * g) == pytest.approx(score, abs=1e-12)
    assert alignment_score(-g_ref, g) == pytest.approx(-score, abs=1e-12)
    assert alignment_score(g_ref, -g) == pytest.approx(-score, abs=1e-12)
    assert alignment_score(g, g_ref) == pytest.approx(score, abs=1e-12)


# --- the TRL GKDTrainer mapping (README table) ---------------------------------------------------


def _trl_generalized_jsd(student_logits, teacher_logits, beta):
    """TRL's ``GKDTrainer.generalized_jsd_loss`` for one position, written as TRL writes it (F.kl_div)."""
    import torch.nn.functional as F

    s, t = F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1)
    if beta == 0:
        return F.kl_div(s, t, reduction="sum", log_target=True)
    if beta == 1:
        return F.kl_div(t, s, reduction="sum", log_target=True)
    b = torch.tensor(beta, dtype=s.dtype)
    mixture = torch.logsumexp(torch.stack([s + torch.log(1 - b), t + torch.log(b)]), dim=0)
    return b * F.kl_div(mixture, t, reduction="sum", log_target=True) + (1 - b) * F.kl_div(
        mixture, s, reduction="sum", log_target=True)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_odiag_algorithms_equal_minus_trl_generalized_jsd_gradient(beta, seed):
    """odiag's jsd(β) is TRL's generalized_jsd_loss at the same β; gkd is TRL β=1, forward_kl TRL β=0."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=7)
    z_teacher = rng.normal(size=7) * 2
    z_t = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    _trl_generalized_jsd(z_t, torch.tensor(z_teacher, dtype=torch.float64), beta).backward()
    expected = -z_t.grad.numpy()
    pi, pi_teacher = np.exp(z - np.logaddexp.reduce(z)), np.exp(z_teacher - np.logaddexp.reduce(z_teacher))
    if beta == 0.0:
        got = forward_kl_gradient(pi, pi_teacher)
    elif beta == 1.0:
        got = gkd_gradient(pi, pi_teacher)
    else:
        got = jsd_gradient(pi, pi_teacher, beta)
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_a_decision_point_whose_child_the_student_all_but_never_picks_keeps_its_alignment():
    """A teacher-favoured child with student probability 1e-13 beside a near-certain path token: g* has
    size ~4e-14, below the residue rule for distillation gradients, yet it is no residue (its Q differ),
    and its direction is exact. The record keeps the alignment (±1 on two actions) instead of nan."""
    from harness.core.records import LogprobTable, RecordSettings, TeacherPass, path_records
    from harness.core.stats import DIVERGENCES
    from harness.core.tree import ChildTable

    path = np.array([5, 9])
    children = ChildTable(
        position=np.array([0, 0]), token=np.array([5, 7]), n=np.array([40, 40]), w=np.array([20, 36]),
        m=np.array([40, 0]), m_success=np.array([20, 0]),
    )
    table = lambda logp: LogprobTable.build([(np.array([5, 7]), np.array([0, 2]), np.log(np.array(logp)))])  # noqa: E731
    student = table([1.0, 1e-13])
    teacher = TeacherPass("t", table([0.5, 0.5]), {d: np.zeros(2) for d in DIVERGENCES}, approximate=False)
    settings = RecordSettings(n_min=20, gamma=0.95, jsd_beta=0.5, algorithms=("gkd", "forward_kl"))
    nodes, _, _ = path_records("q", 0, path, "correct", children, student, [teacher], settings, lambda t: [str(x) for x in t])
    g_star = ideal_gradient(np.array([1.0, 1e-13]), np.array([0.5, 0.9]))
    assert 0 < np.max(np.abs(g_star)) < 2.0**-40
    assert g_star[0] < 0 < g_star[1]
    assert nodes["alignment"].tolist() == [pytest.approx(1.0), pytest.approx(1.0)]
    # a text per child, or no records: columns of different lengths would only fail when written
    with pytest.raises(ValueError, match="1 texts for 2 tokens"):
        path_records("q", 0, path, "correct", children, student, [teacher], settings, lambda t: ["only-one"])
