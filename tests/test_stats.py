"""Tests of harness.core.stats: intervals, tests, within-path correlation, ranking, aggregation."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from harness.core.stats import (
    DIVERGENCES,
    Interval,
    aggregate,
    bootstrap_ci,
    jeffreys_interval,
    paired_test,
    rank_with_ties,
    t_ci,
    tie_key,
    clustered_difference,
    clustered_difference_test,
    wilson_interval,
    within_path_correlation,
)

nan = float("nan")


# --------------------------------------------------------------------------- binomial intervals


@pytest.mark.parametrize("interval", [wilson_interval, jeffreys_interval])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_binomial_interval_coverage_near_nominal(interval, p):
    """Over 2000 seeded Binomial(100, p) draws the 95% interval covers p about 95% of the time."""
    w = np.random.default_rng(1234).binomial(100, p, size=2000)
    lo, hi = interval(w, np.full_like(w, 100))
    coverage = np.mean((lo <= p) & (p <= hi))
    assert 0.92 <= coverage <= 0.98


def test_wilson_known_values():
    """Wilson 95% intervals from the closed form (and Newcombe 1998's published 0/10, 3/10)."""
    z = 1.959963984540054
    for w, n in [(0, 10), (3, 10), (5, 10), (17, 40)]:
        p = w / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        lo, hi = wilson_interval(w, n)
        assert lo == pytest.approx(max(0.0, centre - half), abs=1e-12)
        assert hi == pytest.approx(min(1.0, centre + half), abs=1e-12)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(3, 10) == pytest.approx((0.1078, 0.6032), abs=1e-4)


def test_jeffreys_known_values():
    """Jeffreys interval: Beta(w+½, n−w+½) quantiles; 0/10 upper end 0.2172 (Brown et al. 2001)."""
    lo, hi = jeffreys_interval(3, 10)
    assert lo == pytest.approx(sps.beta.ppf(0.025, 3.5, 7.5), rel=1e-12)
    assert hi == pytest.approx(sps.beta.ppf(0.975, 3.5, 7.5), rel=1e-12)
    assert jeffreys_interval(0, 10) == pytest.approx((0.0, 0.2172), abs=1e-4)


@pytest.mark.parametrize("interval", [wilson_interval, jeffreys_interval])
def test_binomial_interval_edges(interval):
    """n = 0 gives (0, 1); w = 0 starts at 0; w = n ends at 1; vectorised over arrays."""
    assert interval(0, 0) == (0.0, 1.0)
    lo, hi = interval(np.array([0, 10, 0, 4]), np.array([10, 10, 0, 8]))
    assert lo[0] == 0.0 and hi[1] == 1.0 and (lo[2], hi[2]) == (0.0, 1.0)
    assert 0 < lo[1] < 1 and 0 < hi[0] < 1 and lo[3] < 0.5 < hi[3]
    assert lo[3] + hi[3] == pytest.approx(1.0)  # symmetric at p = 1/2
    with pytest.raises(ValueError):
        interval(5, 3)


# --------------------------------------------------------------------------- intervals of a mean


def test_t_ci_matches_scipy_and_drops_nan():
    x = np.array([0.3, nan, -0.1, 0.8, 0.4, np.inf])
    finite = np.array([0.3, -0.1, 0.8, 0.4])
    lo, hi = sps.t.interval(0.95, df=3, loc=finite.mean(), scale=sps.sem(finite))
    got = t_ci(x)
    assert isinstance(got, Interval)
    assert got.n == 4 and got.mean == pytest.approx(finite.mean())
    assert (got.lo, got.hi) == pytest.approx((lo, hi), rel=1e-12)
    lo90, hi90 = sps.t.interval(0.9, df=3, loc=finite.mean(), scale=sps.sem(finite))
    assert t_ci(x, confidence=0.9)[1:3] == pytest.approx((lo90, hi90), rel=1e-12)


@pytest.mark.parametrize("ci", [t_ci, lambda x: bootstrap_ci(x, seed=0)])
def test_small_samples_give_nan_ends_not_errors(ci):
    empty, one = ci([]), ci([nan, 2.5, nan])
    assert empty.n == 0 and all(math.isnan(v) for v in empty[:3])
    assert one.n == 1 and one.mean == 2.5 and math.isnan(one.lo) and math.isnan(one.hi)


def test_bootstrap_seeded_and_sensible():
    x = np.random.default_rng(0).normal(1.0, 2.0, size=50)
    a, b, c = bootstrap_ci(x, seed=7), bootstrap_ci(x, seed=7), bootstrap_ci(x, seed=8)
    assert a == b and a != c
    assert a.lo < a.mean < a.hi and a.n == 50
    # The percentile bootstrap of a mean is close to the t interval for n = 50.
    t = t_ci(x)
    assert a.lo == pytest.approx(t.lo, abs=0.25) and a.hi == pytest.approx(t.hi, abs=0.25)
    assert bootstrap_ci(np.r_[x, nan], seed=7) == a  # nan dropped before resampling


# --------------------------------------------------------------------------- tests


def test_paired_matches_scipy():
    a = np.array([0.1, 0.5, nan, 0.3, 0.9, 0.2])
    b = np.array([0.0, 0.6, 0.4, nan, 0.5, -0.1])
    both = np.isfinite(a) & np.isfinite(b)
    assert paired_test(a, b) == pytest.approx(sps.ttest_rel(a[both], b[both]).pvalue)
    assert math.isnan(paired_test([1.0, nan], [2.0, 3.0]))


def test_clustered_test_matches_a_cluster_loop():
    """CR1 sandwich written out cluster by cluster (an independent computation of the same formula)."""
    v = np.array([0.3, -0.2, 0.6, -0.2, -0.1, 0.6, 0.1, nan, 0.4, 0.2])
    flag = np.array([0, 1, 0, 1, 1, 0, 1, 1, 0, 0], bool)
    cluster = np.array(["a", "a", "b", "b", "b", "c", "d", "d", "e", "e"])
    ok = np.isfinite(v)
    vv, ff, cc = v[ok], flag[ok], cluster[ok]
    beta = vv[ff].mean() - vv[~ff].mean()
    fitted = np.where(ff, vv[ff].mean(), vv[~ff].mean())
    x = np.stack([np.ones(ff.size), ff.astype(float)], 1)
    bread = np.linalg.inv(x.T @ x)
    meat = sum(np.outer(x[cc == g].T @ (vv - fitted)[cc == g], x[cc == g].T @ (vv - fitted)[cc == g])
               for g in np.unique(cc))
    n, g = vv.size, np.unique(cc).size
    var = g / (g - 1) * (n - 1) / (n - 2) * (bread @ meat @ bread)[1, 1]
    expected = 2 * sps.t.sf(abs(beta) / np.sqrt(var), g - 1)
    assert clustered_difference_test(v, flag, cluster) == pytest.approx(expected, rel=1e-10)
    assert math.isnan(clustered_difference_test(v[:2], flag[:2], cluster[:2]))  # one cluster
    assert math.isnan(clustered_difference_test(v, np.zeros(10, bool), cluster))  # one side empty

    # the interval of the same regression: beta -/+ t_{G-1} sqrt(V), the pooled difference over paths
    pooled, p = clustered_difference(v, flag, cluster)
    half = sps.t.ppf(0.975, g - 1) * np.sqrt(var)
    assert (pooled.mean, pooled.lo, pooled.hi, pooled.n) == pytest.approx((beta, beta - half, beta + half, g), rel=1e-10)
    assert p == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("value", [1.0, 0.1, 1 / 3, 0.7, -0.5])
def test_equal_values_give_no_test_and_no_interval(value):
    """Values that do not vary measure no spread: p and interval are nan, never a p-value of rounding
    residues (the regression's fitted difference and residuals were ~1e-16 apart, and their ratio gave
    p = 8e-5 on 24 questions of all-equal alignments, 5e-14 with one path dropped) nor a zero-width
    interval or p = 0 (paired differences all equal)."""
    cluster = np.repeat(np.arange(24), 4)
    flag = np.tile([False, False, True, True], 24)
    v = np.full(96, value)
    for keep in (slice(None), np.arange(96) != 3):
        pooled, p = clustered_difference(v[keep], flag[keep], cluster[keep])
        assert math.isnan(p) and math.isnan(pooled.lo) and math.isnan(pooled.hi) and abs(pooled.mean) < 1e-15
    # every question with the same paths: residuals, but each question's cancel, so no spread between clusters
    for paths in ([0.5, -0.5, 1.0, 0.0], [0.3, -0.1, 0.7, 0.1], [1.0, -1.0, 1.0, -1.0]):
        pooled, p = clustered_difference(np.tile(paths, 24), flag, cluster)
        assert math.isnan(p) and math.isnan(pooled.lo) and math.isnan(pooled.hi), paths
    assert math.isnan(paired_test(np.full(5, value), np.full(5, value)))
    assert math.isnan(paired_test([1, 1, 1], [-1, -1, -1]))  # d = 2 three times: scipy says p = 0
    for ci in (t_ci(np.full(12, value)), bootstrap_ci(np.full(12, value), seed=0)):
        assert ci.mean == pytest.approx(value) and math.isnan(ci.lo) and math.isnan(ci.hi)
    # one value apart is a spread: intervals and tests return
    w = np.full(12, value)
    w[0] += 0.25
    assert np.isfinite(t_ci(w).lo) and np.isfinite(bootstrap_ci(w, seed=0).lo)
    assert np.isfinite(paired_test(w, np.full(12, value)))


def test_the_bootstrap_needs_ten_values():
    """A percentile bootstrap of n values is about their range: 95% intervals covered a normal mean 51% of
    the time at n = 2, 82% at 5, 89% at 8. Below BOOTSTRAP_MIN_N none is given; the t interval still is."""
    from harness.core.stats import BOOTSTRAP_MIN_N

    x = np.random.default_rng(1).normal(size=BOOTSTRAP_MIN_N)
    assert BOOTSTRAP_MIN_N == 10
    assert np.isfinite(bootstrap_ci(x, seed=0).lo)
    for n in range(2, BOOTSTRAP_MIN_N):
        short = bootstrap_ci(x[:n], seed=0)
        assert math.isnan(short.lo) and math.isnan(short.hi) and short.n == n and short.mean == pytest.approx(x[:n].mean())
        assert np.isfinite(t_ci(x[:n]).lo)


def test_interval_coverage_by_question_count(monkeypatch):
    """How often 95% intervals of a normal mean hold it, 1,500 samples per question count: the t interval
    holds its level from 2 questions up, the percentile bootstrap only with many (what BOOTSTRAP_MIN_N and
    the README's statistics section rest on)."""
    import harness.core.stats as stats

    monkeypatch.setattr(stats, "BOOTSTRAP_MIN_N", 2)  # the bootstrap interval it would give
    rng = np.random.default_rng(11)
    covered = {}
    for n in (2, 5, 8, 24):
        hits_t = hits_boot = 0
        for i in range(1500):
            x = rng.normal(size=n)
            t, b = t_ci(x), bootstrap_ci(x, seed=[n, i], n_boot=400)
            hits_t += t.lo <= 0 <= t.hi
            hits_boot += b.lo <= 0 <= b.hi
        covered[n] = (hits_t / 1500, hits_boot / 1500)
    assert all(0.93 <= t <= 0.97 for t, _ in covered.values()), covered
    assert covered[2][1] < 0.6 and covered[5][1] < 0.88 and covered[8][1] < 0.91 and covered[24][1] > 0.91, covered


# --------------------------------------------------------------------------- correlations


def test_within_path_correlation_monotone_paths():
    """Monotone within each path (but not across) → Spearman 1; short paths are excluded."""
    key = np.repeat([10, 11, 12, 13], [6, 5, 4, 7])
    x = np.r_[np.arange(6), np.arange(5) + 100, np.arange(4), np.arange(7) - 50].astype(float)
    y = np.r_[np.exp(np.arange(6)), np.arange(5) ** 3, [1, 2, 3, 4], -np.arange(7)[::-1]]
    x[0] = nan  # path 10 keeps 5 finite pairs: still eligible
    got = within_path_correlation(key, key, x, y, min_points=5)
    assert got["spearman"]["n_paths"] == 3 and got["pearson"]["n_paths"] == 3
    assert got["spearman"]["mean"] == pytest.approx(1.0)
    # every path's Spearman is 1: no spread, so no interval (a zero-width one would claim certainty)
    assert all(math.isnan(v) for v in got["spearman"]["ci95"] + got["spearman"]["ci95_bootstrap"])
    assert 0 < got["pearson"]["mean"] < 1  # exp and cube are monotone but not linear
    assert got["spearman"]["n_questions"] == 3
    assert set(got["spearman"]) == {"mean", "ci95", "ci95_bootstrap", "n_paths", "n_questions"}


def test_within_path_correlation_excludes_constant_paths():
    key = np.repeat([0, 1, 2], 5)
    x = np.r_[np.arange(5), np.ones(5), np.arange(5)].astype(float)
    y = np.r_[np.arange(5), np.arange(5), np.full(5, 0.1)]
    got = within_path_correlation(key, key, x, y)
    assert got["pearson"]["n_paths"] == 1 and got["pearson"]["mean"] == pytest.approx(1.0)
    none = within_path_correlation(key, key, x, y, min_points=6)
    assert none["spearman"]["n_paths"] == 0 and math.isnan(none["spearman"]["mean"])


def test_within_path_ranks_tie_values_equal_up_to_rounding():
    """An alignment that is ±1 by construction comes out as ±1 or ±(1 − 2⁻⁵²): both tie, as the exact
    values do, so the within-path ρ is the exact values' ρ; a path of such values alone is constant."""
    key = np.repeat([0, 1], 6)
    x = np.r_[np.arange(6.0), np.arange(6.0)]
    exact = np.r_[[1.0, -1.0, 1.0, 1.0, -1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]]
    residue = exact * np.r_[[1.0, 1 - 2**-52, 1 - 2**-52, 1.0, 1.0, 1 - 2**-53], [1.0, 1 - 2**-52, 1.0, 1.0, 1 - 2**-52, 1.0]]
    want, got = within_path_correlation(key, key, x, exact), within_path_correlation(key, key, x, residue)
    assert got["spearman"]["n_paths"] == want["spearman"]["n_paths"] == 1
    assert got["spearman"]["mean"] == pytest.approx(want["spearman"]["mean"], abs=1e-12)



def test_a_path_key_shared_by_two_questions_is_refused_not_merged():
    """Path ids restart in every question (``nodes.parquet``'s path_id): passed as the path key they once
    merged two questions' paths into one path (ρ −0.74 over 1 path instead of 0 over 2)."""
    x, y = np.arange(12.0), np.r_[np.arange(6.0), -np.arange(6.0)]
    question = np.repeat(["q0", "q1"], 6)
    with pytest.raises(ValueError, match="more than one question"):
        within_path_correlation(np.zeros(12, int), question, x, y)
    with pytest.raises(ValueError, match="more than one question"):  # also where one question's rows are all undefined
        within_path_correlation(np.zeros(12, int), question, np.r_[x[:6], np.full(6, nan)], y)
    got = within_path_correlation(np.repeat([0, 1], 6), question, x, y)
    assert got["spearman"]["n_paths"] == 2 and got["spearman"]["mean"] == pytest.approx(0.0)


def test_tie_key_keeps_the_smallest_values():
    """Below ~1e-308 the rounding scale underflowed to 0 and the key became nan: a path holding such a
    divergence read as constant and left the correlations."""
    v = np.array([5e-324, 1e-310, -3e-320, 0.0, 1.0, nan])
    k = tie_key(v)
    assert np.isfinite(k[:5]).all() and np.isnan(k[5])
    assert np.array_equal(k[:4], v[:4])
    x = np.r_[5e-324, 1e-3, 2e-3, 3e-3, 4e-3]
    assert within_path_correlation(np.zeros(5, int), np.zeros(5, int), x, np.arange(5.0))["spearman"]["n_paths"] == 1

@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(-3, 3), st.integers(-3, 3)),
                min_size=0, max_size=40))
def test_within_path_correlation_matches_scipy_per_path(rows):
    """Vectorised within-path ranks (with ties) agree with scipy.stats.spearmanr/pearsonr."""
    key, x, y = (np.array(c, dtype=float) for c in zip(*rows)) if rows else (np.zeros(0),) * 3
    got = within_path_correlation(key.astype(int), key.astype(int), x, y, min_points=3)
    rho, r = [], []
    for k in np.unique(key):
        xs, ys = x[key == k], y[key == k]
        if xs.size >= 3 and np.ptp(xs) > 0 and np.ptp(ys) > 0:
            rho.append(sps.spearmanr(xs, ys).statistic)
            r.append(sps.pearsonr(xs, ys).statistic)
    assert got["spearman"]["n_paths"] == len(rho)
    if rho:
        assert got["spearman"]["mean"] == pytest.approx(np.mean(rho), abs=1e-9)
        assert got["pearson"]["mean"] == pytest.approx(np.mean(r), abs=1e-9)


# --------------------------------------------------------------------------- ranking


def test_rank_with_ties_rule():
    """Pins the tie rule: competition ranking by mean, no rank for a nan mean; ties = overlapping CIs."""
    means = [0.50, 0.10, 0.45, nan, 0.10, -0.5]
    lo = [0.40, 0.00, 0.30, nan, 0.05, -0.6]
    hi = [0.60, 0.20, 0.42, nan, 0.35, -0.4]
    rank, tied = rank_with_ties(means, lo, hi)
    assert rank == [1, 3, 2, None, 3, 5]
    # [0.30, 0.42] meets [0.40, 0.60] and [0.05, 0.35]; equal means 1 and 4 also overlap;
    # entry 5 is resolved from all; the nan entry claims nothing.
    assert tied == [[2], [4], [0, 4], [], [1, 2], []]
    assert all(isinstance(r, int) for r in rank if r is not None)
    # a mean without an interval (one question; values that do not vary) is resolved from no other
    # entry with a mean, and every such entry from it; an entry without a mean is not ranked against any
    rank, tied = rank_with_ties([0.68, -0.40, 0.1, nan], [nan, -0.5, 0.0, nan], [nan, -0.3, 0.2, nan])
    assert rank == [1, 3, 2, None] and tied == [[1, 2], [0], [0], []]
    # equal up to rounding is equal: -0.5 and -0.5000000000000001 share a rank (they were ranked 1, 1 and 3)
    assert rank_with_ties([-0.5, -0.5, -0.5000000000000001], [-1] * 3, [0] * 3)[0] == [1, 1, 1]


# --------------------------------------------------------------------------- aggregation

# One hand-built path table for teacher A / algorithm gkd (question, path, correct, alignment,
# ideal_norm, advantage, n_actions). Other teacher x algorithm blocks transform its alignment.
PATHS = [
    ("q1", 0, True, [0.2, 0.4, nan], [1, 3, 2], [0.1, 0.1, 0.1], [2, 3, 2]),
    ("q1", 1, False, [-0.5, 0.1], [1, 1], [-0.2, 0.0], [2, 2]),
    ("q2", 0, True, [0.6], [2], [0.3], [4]),
    ("q2", 1, False, [0.0, -0.4], [1, 3], [0.0, 0.0], [2, 2]),
    ("q2", 2, False, [-0.6, 0.2, 0.1], [1, 1, 2], [0.2, 0.2, 0.2], [3, 2, 2]),
    ("q3", 0, True, [0.4, 0.5, 0.6, 0.7, 0.8], [1] * 5, [0.4] * 5, [2] * 5),
]
BLOCKS = {("A", "gkd"): 1.0, ("B", "gkd"): -1.0, ("A", "fkl"): 0.5, ("B", "fkl"): 0.5}


NODE_FIELDS = ("question_id", "path_id", "path_correct", "position", "teacher", "algorithm",
               "alignment", "ideal_norm", "teacher_advantage", "n_actions")


def node_table():
    cols = {c: [] for c in (*NODE_FIELDS, *DIVERGENCES)}
    for (teacher, algorithm), scale in BLOCKS.items():
        for q, pid, correct, align, norm, adv, n_act in PATHS:
            for pos, (a, g, v, k) in enumerate(zip(align, norm, adv, n_act, strict=True)):
                values = (q, pid, correct, pos, teacher, algorithm, scale * a, g, scale * v, k)
                for c, val in zip(NODE_FIELDS, values, strict=True):
                    cols[c].append(val)
                # Divergences: kl increasing, reverse_kl decreasing in alignment; js undefined.
                cols["kl"].append(2 * a)
                cols["reverse_kl"].append(-a)
                cols["js"].append(nan)
                cols["tv"].append(a ** 3)
                cols["prob_cosine"].append(1.0)
    return {c: np.array(v) for c, v in cols.items()}


def wide_node_table(copies: int = 4):
    """`node_table` with each question copied ``copies`` times under new ids, cosines shrunk by 0.9 per
    copy: enough questions (12) for percentile bootstrap intervals."""
    nodes = node_table()
    parts = []
    for k in range(copies):
        part = dict(nodes)
        part["question_id"] = np.array([f"{q}-{k}" for q in nodes["question_id"]])
        part["alignment"] = nodes["alignment"] * 0.9 ** k
        parts.append(part)
    return {c: np.concatenate([p[c] for p in parts]) for c in nodes}


def nan_to_none(obj):
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [nan_to_none(v) for v in obj]
    return None if isinstance(obj, float) and math.isnan(obj) else obj


def assert_plain(obj):
    """Only plain Python containers and scalars (no numpy types) reach the JSON writer."""
    if isinstance(obj, dict):
        assert all(type(k) is str for k in obj)
        for v in obj.values():
            assert_plain(v)
    elif isinstance(obj, list):
        for v in obj:
            assert_plain(v)
    else:
        assert type(obj) in (str, int, float, bool, type(None)), (obj, type(obj))


def test_aggregate_hand_computed_values():
    rows = aggregate(node_table(), seed=3, n_boot=500)
    by = {(r["teacher"], r["algorithm"]): r for r in rows}
    a = by["A", "gkd"]
    # Path means: q1 0.3, -0.2 | q2 0.6, -0.2, -0.1 | q3 0.6. Question = mean of its paths.
    q_align = [(0.3 - 0.2) / 2, (0.6 - 0.2 - 0.1) / 3, 0.6]
    assert a["alignment"]["mean"] == pytest.approx(np.mean(q_align))
    assert a["alignment"]["mean"] == pytest.approx(0.25)
    assert a["alignment"]["n_questions"] == 3
    lo, hi = sps.t.interval(0.95, 2, loc=np.mean(q_align), scale=sps.sem(q_align))
    # the t interval reaches past 1, where no mean of cosines lies: it is cut at the range's end
    assert hi > 1 and a["alignment"]["ci95"] == pytest.approx([lo, 1.0])
    # three questions: fewer than BOOTSTRAP_MIN_N, no percentile interval (it would be about their range)
    assert all(math.isnan(v) for v in a["alignment"]["ci95_bootstrap"])
    # Weighted by |g*|: q1 paths 0.35, -0.2; q2 0.6, -0.3, -0.05; q3 0.6.
    q_weighted = [(0.35 - 0.2) / 2, (0.6 - 0.3 - 0.05) / 3, 0.6]
    assert a["weighted_alignment"]["mean"] == pytest.approx(np.mean(q_weighted))
    assert a["alignment_correct"]["mean"] == pytest.approx((0.3 + 0.6 + 0.6) / 3)
    assert a["alignment_incorrect"]["mean"] == pytest.approx((-0.2 - 0.15) / 2)
    assert a["alignment_incorrect"]["n_questions"] == 2
    imc = a["incorrect_minus_correct"]
    assert imc["mean"] == pytest.approx(((-0.2 - 0.3) + (-0.15 - 0.6)) / 2)
    assert imc["n_questions"] == 2
    assert imc["p_paired"] == pytest.approx(sps.ttest_rel([-0.2, -0.15], [0.3, 0.6]).pvalue)
    assert imc["p_clustered"] == pytest.approx(clustered_difference_test(
        [0.3, -0.2, 0.6, -0.2, -0.1, 0.6], [0, 1, 0, 1, 1, 0], [1, 1, 2, 2, 2, 3]))
    # Fraction positive (0 is not positive; the nan node is left out): q1 1, .5; q2 1, 0, 2/3.
    assert a["fraction_positive"]["mean"] == pytest.approx(
        np.mean([(1 + 0.5) / 2, (1 + 0 + 2 / 3) / 3, 1.0]))
    assert a["teacher_advantage"]["mean"] == pytest.approx(np.mean([0.0, 0.5 / 3, 0.4]))
    assert a["n_decision_points"] == 16 and a["n_undefined"] == 1
    assert a["n_actions_hist"] == {"2": 13, "3": 2, "4": 1}
    # Only q3's path has >= 5 points; kl rises and reverse_kl falls with alignment there.
    corr = a["divergence_correlations"]
    assert corr["kl"]["spearman"]["mean"] == pytest.approx(1.0)
    assert corr["reverse_kl"]["pearson"]["mean"] == pytest.approx(-1.0)
    assert corr["kl"]["spearman"]["n_paths"] == 1 and corr["js"]["spearman"]["n_paths"] == 0
    assert corr["prob_cosine"]["pearson"]["n_paths"] == 0  # constant divergence
    # Teacher B / gkd is A with alignment negated; the fkl blocks are A halved (identical).
    b = by["B", "gkd"]
    assert b["alignment"]["mean"] == pytest.approx(-0.25)
    assert b["incorrect_minus_correct"]["mean"] == pytest.approx(-imc["mean"])
    assert by["A", "fkl"]["weighted_alignment"]["mean"] == pytest.approx(np.mean(q_weighted) / 2)


def test_aggregate_ranking_and_order():
    rows = aggregate(node_table(), n_boot=200)
    assert [(r["algorithm"], r["rank"], r["teacher"]) for r in rows] == [
        ("fkl", 1, "A"), ("fkl", 1, "B"), ("gkd", 1, "A"), ("gkd", 2, "B")]
    assert rows[0]["tied_with"] == ["B/fkl"] and rows[1]["tied_with"] == ["A/fkl"]
    # With 3 questions the gkd CIs are wide and overlap, so the ranks come with a tie mark.
    assert rows[2]["tied_with"] == ["B/gkd"] and rows[3]["tied_with"] == ["A/gkd"]


def test_a_teacher_whose_alignments_are_all_undefined_has_no_rank():
    """A row without a mean has no place in a ranking by mean: rank None, listed after the ranked."""
    nodes = node_table()
    c_teacher = nodes["teacher"] == "C"
    assert not c_teacher.any()
    block = (nodes["teacher"] == "A") & (nodes["algorithm"] == "gkd")
    extra = {c: v[block].copy() for c, v in nodes.items()}
    extra["teacher"][:] = "C"
    extra["alignment"][:] = nan
    rows = aggregate({c: np.concatenate([nodes[c], extra[c]]) for c in nodes}, n_boot=200)
    gkd = [(r["teacher"], r["rank"]) for r in rows if r["algorithm"] == "gkd"]
    assert gkd == [("A", 1), ("B", 2), ("C", None)]
    assert math.isnan([r for r in rows if r["teacher"] == "C"][0]["alignment"]["mean"])


def test_aggregate_schema_json_and_determinism():
    rows = aggregate(node_table(), seed=11, n_boot=300)
    summary_keys = {"mean", "ci95", "ci95_bootstrap", "n_questions"}
    for r in rows:
        assert {"teacher", "algorithm", "rank", "tied_with", "alignment", "weighted_alignment",
                "alignment_correct", "alignment_incorrect", "incorrect_minus_correct",
                "fraction_positive", "teacher_advantage", "divergence_correlations",
                "n_decision_points", "n_undefined", "n_actions_hist"} <= set(r)
        for k in ("alignment", "weighted_alignment", "alignment_correct", "alignment_incorrect",
                  "fraction_positive", "teacher_advantage"):
            assert set(r[k]) == summary_keys
        assert {"mean", "ci95", "p_paired", "p_clustered", "n_questions"} <= set(
            r["incorrect_minus_correct"])
        assert set(r["divergence_correlations"]) == set(DIVERGENCES)
        for d in r["divergence_correlations"].values():
            assert set(d["spearman"]) == set(d["pearson"]) == {
                "mean", "ci95", "ci95_bootstrap", "n_paths", "n_questions"}
        assert_plain(r)
    text = json.dumps(nan_to_none(rows), allow_nan=False)
    assert text == json.dumps(nan_to_none(aggregate(node_table(), seed=11, n_boot=300)),
                              allow_nan=False)



def test_the_run_seed_reaches_every_bootstrap_interval():
    """The same seed gives the same percentile intervals; another seed moves their ends, and no other
    number (on 12 questions: three would give none, nan ends, which compare unequal to anything)."""
    def boot_ends(rs):
        return np.array([[r[k]["ci95_bootstrap"] for k in ("alignment", "weighted_alignment",
                                                           "fraction_positive", "teacher_advantage")]
                         for r in rs])

    first, again, other = (aggregate(wide_node_table(), seed=s, n_boot=300) for s in (11, 11, 12))
    assert np.isfinite(boot_ends(first)).all()
    assert np.array_equal(boot_ends(first), boot_ends(again))
    assert not np.array_equal(boot_ends(first), boot_ends(other))
    assert [r["alignment"]["mean"] for r in other] == [r["alignment"]["mean"] for r in first]
    assert [r["alignment"]["ci95"] for r in other] == [r["alignment"]["ci95"] for r in first]


def test_aggregate_independent_of_row_order():
    """Shuffled rows give the same ranks, means and percentile intervals (12 questions: finite ends)."""
    nodes = wide_node_table()
    perm = np.random.default_rng(5).permutation(len(nodes["alignment"]))
    shuffled = aggregate({c: v[perm] for c, v in nodes.items()}, seed=2, n_boot=300)
    plain = aggregate(nodes, seed=2, n_boot=300)
    for r, s in zip(plain, shuffled, strict=True):
        assert (r["teacher"], r["algorithm"], r["rank"]) == (s["teacher"], s["algorithm"],
                                                             s["rank"])
        for k in ("alignment", "weighted_alignment", "teacher_advantage"):
            assert np.isfinite(r[k]["ci95_bootstrap"]).all()
            assert r[k]["ci95_bootstrap"] == pytest.approx(s[k]["ci95_bootstrap"], abs=1e-12)
        assert r["weighted_alignment"]["mean"] == pytest.approx(s["weighted_alignment"]["mean"])


def test_equal_values_get_equal_bootstrap_intervals_in_every_row():
    """A teacher's advantage does not depend on the algorithm, nor a teacher-free algorithm's alignment
    (Dr. GRPO's) on the teacher. Seeded by the row's name, one teacher advantage once showed six
    bootstrap intervals on a run of six algorithms. Every row now resamples the same questions (the seed
    follows the statistic's name only), and shuffled rows give the same intervals up to rounding, at a
    size where sums in another order differ in their last bits."""
    rng = np.random.default_rng(0)
    q = 300
    n = q * 3 * 4  # questions x 3 paths x 4 decision points
    base = {"question_id": np.repeat([f"q{i:03d}" for i in range(q)], 12), "path_id": np.tile(np.repeat([0, 1, 2], 4), q),
            "path_correct": np.tile(np.repeat([True, False, True], 4), q), "position": np.tile(np.arange(4), 3 * q),
            "alignment": rng.uniform(-1, 1, n), "ideal_norm": rng.uniform(0.1, 1, n),
            "teacher_advantage": rng.normal(0.1, 0.2, n), "n_actions": np.full(n, 3),
            **{d: rng.uniform(0, 1, n) for d in DIVERGENCES}}
    blocks = [("A", "gkd", 1.0, 1.0), ("A", "other", 0.3, 1.0), ("A", "free", 1.0, 1.0), ("B", "free", 1.0, -1.0)]
    table = {c: [] for c in (*base, "teacher", "algorithm")}
    for teacher, algorithm, align_scale, advantage_scale in blocks:
        for c, v in base.items():
            table[c].append(v * align_scale if c == "alignment" else v * advantage_scale if c == "teacher_advantage" else v)
        table["teacher"].append(np.full(n, teacher))
        table["algorithm"].append(np.full(n, algorithm))
    table = {c: np.concatenate(v) for c, v in table.items()}
    for order in (np.arange(4 * n), rng.permutation(4 * n)):
        rows = aggregate({c: v[order] for c, v in table.items()}, seed=4, n_boot=400)
        by = {(r["teacher"], r["algorithm"]): r for r in rows}

        def same(*keys, stat):  # equal up to the order of summation (shuffled rows)
            first = by[keys[0]][stat]
            for k in keys[1:]:
                other = by[k][stat]
                assert other["n_questions"] == first["n_questions"]
                for field in ("mean", "ci95", "ci95_bootstrap"):
                    assert other[field] == pytest.approx(first[field], abs=1e-12), (k, stat, field)

        same(("A", "gkd"), ("A", "other"), ("A", "free"), stat="teacher_advantage")
        same(("A", "free"), ("B", "free"), ("A", "gkd"), stat="alignment")
        # the same resamples in every row: values scaled by 0.3 give an interval scaled by 0.3
        assert by["A", "other"]["alignment"]["ci95_bootstrap"] == pytest.approx(
            [0.3 * v for v in by["A", "gkd"]["alignment"]["ci95_bootstrap"]], abs=1e-12)


def test_aggregate_rejects_bad_tables():
    nodes = node_table()
    with pytest.raises(ValueError, match="lacks columns"):
        aggregate({c: v for c, v in nodes.items() if c != "ideal_norm"})
    bad = dict(nodes, path_correct=nodes["path_correct"].copy())
    bad["path_correct"][0] = not bad["path_correct"][0]
    with pytest.raises(ValueError, match="path_correct"):
        aggregate(bad)
    assert aggregate({c: v[:0] for c, v in nodes.items()}) == []
    for column, value, message in (("alignment", 1.5, "outside"), ("ideal_norm", -1.0, "negative"),
                                   ("ideal_norm", np.inf, "infinite")):
        bad = dict(nodes, **{column: nodes[column].astype(float).copy()})
        bad[column][0] = value
        with pytest.raises(ValueError, match=message):
            aggregate(bad)
    for options, message in (({"seed": 1.5}, "seed"), ({"seed": -1}, "seed"), ({"seed": True}, "seed"),
                             ({"n_boot": 0}, "n_boot"), ({"n_boot": 2.5}, "n_boot")):
        with pytest.raises(ValueError, match=message):
            aggregate(nodes, **options)
        with pytest.raises(ValueError, match=message):  # an empty table too
            aggregate({c: v[:0] for c, v in nodes.items()}, **options)


def test_intervals_stay_within_the_range_of_their_statistic():
    """Two questions give a t quantile of 12.7: the raw intervals of a cosine mean, a fraction and a
    difference of cosine means reach far past [-1, 1], [0, 1] and [-2, 2]; each is cut at its range."""
    rows = aggregate(node_table(), seed=0, n_boot=200)
    a = next(r for r in rows if (r["teacher"], r["algorithm"]) == ("A", "gkd"))
    imc = a["incorrect_minus_correct"]
    diffs = [-0.2 - 0.3, -0.15 - 0.6]
    lo, hi = sps.t.interval(0.95, 1, loc=np.mean(diffs), scale=sps.sem(diffs))
    assert lo < -2 and imc["ci95"] == pytest.approx([-2.0, hi])
    for key, (low, high) in {"alignment": (-1, 1), "weighted_alignment": (-1, 1), "alignment_correct": (-1, 1),
                             "alignment_incorrect": (-1, 1), "fraction_positive": (0, 1),
                             "teacher_advantage": (-1, 1)}.items():
        ci = a[key]["ci95"]
        assert low <= ci[0] <= a[key]["mean"] <= ci[1] <= high, (key, ci)


@pytest.mark.parametrize("size", [10, 37, 5000])
def test_the_bootstrap_drawn_block_by_block_is_the_bootstrap_drawn_at_once(size, monkeypatch):
    """Resamples are drawn a block at a time (100,000 questions held 3.2 GB of indices, 8.7 s; now 0.16 GB, 1 s):
    any block size gives the interval of one draw of n_boot x n indices (the same indices; a block of one row may
    sum its mean in another order, a last-bit difference), so no published interval moves."""
    import harness.core.stats as stats

    x = np.random.default_rng(size).uniform(-1, 1, size)
    rng = np.random.default_rng([3, 4])
    means = x[rng.integers(0, size, size=(500, size))].mean(axis=1)
    at_once = np.quantile(means, [0.025, 0.975])
    for block in (1, 7, size * 3 + 1, 10**9):
        monkeypatch.setattr(stats, "BOOTSTRAP_BLOCK", block)
        ci = stats.bootstrap_ci(x, [3, 4], 500)
        assert (ci.lo, ci.hi) == pytest.approx(tuple(at_once), rel=1e-15, abs=0), block
