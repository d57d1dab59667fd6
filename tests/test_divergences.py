"""Full-distribution divergences of SPEC.md §3: properties, scipy references, zeros, batching, top-k."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial.distance import jensenshannon
from scipy.special import log_softmax, rel_entr

from harness.core.divergences import (
    DIVERGENCES,
    all_divergences,
    forward_kl,
    js,
    prob_cosine,
    reverse_kl,
    topk_tail_divergences,
    tv,
)

LOG2 = math.log(2.0)
FAST = settings(max_examples=100, deadline=None)


def _log_softmax_with_zeros(logits_V, zero_V):
    """Log-probabilities with exact zeros (−inf) where `zero_V`, keeping each row's largest logit."""
    keep = np.argmax(logits_V, axis=-1)[..., None]
    zero_V = zero_V.copy()
    np.put_along_axis(zero_V, keep, False, axis=-1)
    return log_softmax(np.where(zero_V, -np.inf, logits_V), axis=-1)


@st.composite
def _pair(draw, allow_zeros=True):
    """Two log-probability vectors on one vocabulary, each possibly with zero probabilities."""
    size = draw(st.integers(1, 30))
    logits = arrays(np.float64, size, elements=st.floats(-30, 30))
    zeros = arrays(np.bool_, size) if allow_zeros else st.just(np.zeros(size, dtype=bool))
    return (
        _log_softmax_with_zeros(draw(logits), draw(zeros)),
        _log_softmax_with_zeros(draw(logits), draw(zeros)),
    )


def _random_pair(rng, shape, zero_fraction=0.0):
    logits = [rng.normal(size=shape) * 3 for _ in range(2)]
    return tuple(_log_softmax_with_zeros(x, rng.uniform(size=shape) < zero_fraction) for x in logits)


# --- properties ------------------------------------------------------------------------------------


@FAST
@given(_pair())
def test_identical_distributions(pair):
    logp, _ = pair
    assert forward_kl(logp, logp) == 0.0
    assert reverse_kl(logp, logp) == 0.0
    assert js(logp, logp) == pytest.approx(0.0, abs=1e-12)
    assert tv(logp, logp) == 0.0
    assert prob_cosine(logp, logp) == pytest.approx(1.0, abs=1e-12)


@FAST
@given(_pair())
def test_bounds_and_symmetry(pair):
    logp, logq = pair
    assert js(logp, logq) == pytest.approx(js(logq, logp), abs=1e-12)
    assert -1e-12 <= js(logp, logq) <= LOG2 + 1e-12
    assert tv(logp, logq) == pytest.approx(tv(logq, logp), abs=1e-12)
    assert -1e-12 <= tv(logp, logq) <= 1 + 1e-12
    assert -1e-12 <= prob_cosine(logp, logq) <= 1 + 1e-12
    assert forward_kl(logp, logq) >= -1e-12 and reverse_kl(logp, logq) >= -1e-12
    assert forward_kl(logp, logq) == reverse_kl(logq, logp)


@FAST
@given(_pair())
def test_zero_probabilities_give_true_values(pair):
    """No NaN ever; KL is +inf exactly when one side has mass where the other has none."""
    logp, logq = pair
    values = all_divergences(logp, logq)
    assert not any(np.isnan(v) for v in values.values())
    assert all(np.isfinite(values[name]) for name in ("js", "tv", "prob_cosine"))
    student_outside_teacher = np.any(np.isfinite(logp) & np.isneginf(logq))
    teacher_outside_student = np.any(np.isfinite(logq) & np.isneginf(logp))
    assert np.isinf(values["reverse_kl"]) == student_outside_teacher
    assert np.isinf(values["kl"]) == teacher_outside_student


@FAST
@given(_pair(), st.floats(-50, 50), st.randoms(use_true_random=False))
def test_invariances(pair, shift, random):
    """prob_cosine ignores the scale of the probability vectors (a shift of log p); all ignore the token order."""
    logp, logq = pair
    assert prob_cosine(logp + shift, logq) == pytest.approx(prob_cosine(logp, logq), rel=1e-9)
    order = list(range(len(logp)))
    random.shuffle(order)
    permuted = all_divergences(logp[order], logq[order])
    for name, value in all_divergences(logp, logq).items():
        assert permuted[name] == pytest.approx(value, rel=1e-9, abs=1e-12)


def test_underflowed_probability_still_gives_infinite_kl():
    """Pins the support test: exp(−800) underflows to 0, yet that token has mass where the teacher has none."""
    logp = np.array([0.0, -800.0, -np.inf])
    logq = np.array([0.0, -np.inf, -np.inf])
    assert reverse_kl(logp, logq) == np.inf
    assert forward_kl(logp, logq) == 0.0


# --- scipy references -----------------------------------------------------------------------------


@pytest.mark.parametrize("zero_fraction", [0.0, 0.3])
@pytest.mark.parametrize("seed", range(5))
def test_against_scipy(seed, zero_fraction):
    logp, logq = _random_pair(np.random.default_rng(seed), 40, zero_fraction)
    p, q = np.exp(logp), np.exp(logq)
    assert forward_kl(logp, logq) == pytest.approx(rel_entr(q, p).sum(), rel=1e-10)
    assert reverse_kl(logp, logq) == pytest.approx(rel_entr(p, q).sum(), rel=1e-10)
    assert js(logp, logq) == pytest.approx(jensenshannon(p, q) ** 2, rel=1e-9, abs=1e-14)
    assert tv(logp, logq) == pytest.approx(0.5 * np.abs(p - q).sum(), rel=1e-12)
    assert prob_cosine(logp, logq) == pytest.approx(p @ q / np.linalg.norm(p) / np.linalg.norm(q), rel=1e-12)


# --- batches, dtypes, memory ------------------------------------------------------------------------


def test_batched_equals_per_row_loop():
    logp, logq = _random_pair(np.random.default_rng(0), (3, 4, 50), zero_fraction=0.2)
    for name, value in all_divergences(logp, logq).items():
        assert value.shape == (3, 4) and value.dtype == np.float64
        for i, j in np.ndindex(3, 4):
            assert value[i, j] == DIVERGENCES[name](logp[i, j], logq[i, j]) or (
                np.isinf(value[i, j]) and np.isinf(DIVERGENCES[name](logp[i, j], logq[i, j]))
            )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_at_once_equals_each_divergence_bit_for_bit(dtype):
    """all_divergences converts and exponentiates once for the five, a block of rows at a time: the same
    values as each divergence called alone, to the last bit, for any number of rows and leading shape."""
    from harness.core.divergences import ROWS_AT_ONCE

    for shape in [(ROWS_AT_ONCE * 2 + 3, 60), (2, ROWS_AT_ONCE, 9), (30,), (ROWS_AT_ONCE + 1, 151_936), (1, 151_936),
                  (0, 40)]:  # Qwen3's width: numpy's einsum sums a lone row another way; no rows: empty values
        logp, logq = (x.astype(dtype) for x in _random_pair(np.random.default_rng(len(shape)), shape, zero_fraction=0.2))
        for name, value in all_divergences(logp, logq).items():
            alone = DIVERGENCES[name](logp, logq)
            assert np.shape(value) == shape[:-1]
            np.testing.assert_array_equal(value, alone)
    with pytest.raises(ValueError, match="of one shape"):
        all_divergences(np.zeros((2, 3)), np.zeros((3, 3)))


@pytest.mark.parametrize("rows", [64, 4])
def test_all_at_once_holds_few_temporaries(rows):
    """Peak extra memory of all_divergences on a (rows, 4096) float64 chunk: within 5 copies of one input, or of
    one block of rows where the chunk holds more."""
    from harness.core.divergences import ROWS_AT_ONCE

    logp, logq = _random_pair(np.random.default_rng(2), (rows, 4096), zero_fraction=0.1)
    tracemalloc.start()
    all_divergences(logp, logq)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak <= 8 * 4096 * (2 + 8 * min(rows, ROWS_AT_ONCE))


def test_float32_input():
    logp, logq = _random_pair(np.random.default_rng(1), (5, 100), zero_fraction=0.1)
    exact = all_divergences(logp, logq)
    for name, value in all_divergences(logp.astype(np.float32), logq.astype(np.float32)).items():
        assert value.dtype == np.float64
        np.testing.assert_allclose(value, exact[name], rtol=1e-4, atol=1e-5)
        assert not np.any(np.isnan(value))


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_temporaries_stay_few(name):
    """Peak extra memory on a (64, 4096) float64 chunk stays within 5 copies of one input."""
    logp, logq = _random_pair(np.random.default_rng(2), (64, 4096), zero_fraction=0.1)
    tracemalloc.start()
    DIVERGENCES[name](logp, logq)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak <= 5 * logp.nbytes


def test_registry_names():
    assert set(DIVERGENCES) == {"kl", "reverse_kl", "js", "tv", "prob_cosine"}
    logp, logq = _random_pair(np.random.default_rng(3), 10)
    assert set(all_divergences(logp, logq)) == set(DIVERGENCES)


# --- top-k plus tail --------------------------------------------------------------------------------


@pytest.mark.parametrize("zero_fraction", [0.0, 0.2])
@pytest.mark.parametrize("seed", range(4))
def test_topk_with_whole_vocabulary_is_exact(seed, zero_fraction):
    rng = np.random.default_rng(seed)
    logp, logq = _random_pair(rng, 60, zero_fraction)
    ids_student, ids_teacher = rng.permutation(60), rng.permutation(60)
    got = topk_tail_divergences(ids_student, logp[ids_student], ids_teacher, logq[ids_teacher])
    assert got["approximate"] is True
    for name, value in all_divergences(logp, logq).items():
        assert got[name] == pytest.approx(float(value), rel=1e-9, abs=1e-10)


@pytest.mark.parametrize("k", [1, 3, 10, 40])
@pytest.mark.parametrize("seed", range(4))
def test_topk_is_finite_lower_bound(seed, k):
    """Coarse-graining onto common ids + tail can only lose divergence (data processing); never inf or nan."""
    rng = np.random.default_rng(seed)
    logp, logq = _random_pair(rng, 200)
    ids_student, ids_teacher = np.argsort(-logp)[:k], np.argsort(-logq)[:k]
    got = topk_tail_divergences(ids_student, logp[ids_student], ids_teacher, logq[ids_teacher])
    exact = all_divergences(logp, logq)
    for name in DIVERGENCES:
        assert np.isfinite(got[name])
    for name in ("kl", "reverse_kl", "js", "tv"):
        assert -1e-12 <= got[name] <= exact[name] + 1e-9


def test_topk_disjoint_lists_collapse_to_tail():
    """Pins the convention: ids known to one side only go to the tail of both, so disjoint top-k see no difference."""
    got = topk_tail_divergences(
        np.array([0, 1]), np.log([0.6, 0.3]), np.array([2, 3]), np.log([0.5, 0.4])
    )
    assert got["kl"] == 0.0 and got["reverse_kl"] == 0.0 and got["tv"] == 0.0


def test_topk_tail_value():
    """Common ids {1}: student (0.5 | 0.5), teacher (0.2 | 0.8)."""
    got = topk_tail_divergences(
        np.array([1, 0]), np.log([0.5, 0.3]), np.array([5, 1]), np.log([0.7, 0.2])
    )
    p, q = np.array([0.5, 0.5]), np.array([0.2, 0.8])
    assert got["reverse_kl"] == pytest.approx(rel_entr(p, q).sum())
    assert got["kl"] == pytest.approx(rel_entr(q, p).sum())
    assert got["tv"] == pytest.approx(0.3)
