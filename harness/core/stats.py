"""Statistics for odiag: binomial intervals, confidence intervals, tests, aggregation (SPEC.md §5).

Everything here is a pure function of numpy arrays. Randomness (the percentile bootstrap) comes only
from an explicit seed; the seeds `aggregate` uses are derived from the run seed and the statistic's
name with `zlib.crc32`, never Python's salted `hash()`, so results repeat across processes, and every
teacher x algorithm row resamples the same questions.

`aggregate` turns the per-node records (one row per decision point x teacher x algorithm) into the
per-teacher rows of `results.json` (SPEC.md §6). Grouping is done with `np.unique` /
`np.bincount`, never a Python loop over nodes.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats as sps

# the node-record columns aggregate() reads are defined with the record schema
from harness.core.records import NODE_COLUMNS

DIVERGENCES = ("kl", "reverse_kl", "js", "tv", "prob_cosine")


class Interval(NamedTuple):
    """A mean with a two-sided confidence interval over `n` finite observations."""

    mean: float
    """Sample mean (nan when n == 0)."""
    lo: float
    """Lower end (nan when n < 2 or every value is equal)."""
    hi: float
    """Upper end (nan when n < 2 or every value is equal)."""
    n: int
    """Number of finite observations used."""


# --------------------------------------------------------------------------- binomial intervals


def wilson_interval(w, n, confidence: float = 0.95):
    """Wilson score interval for a success probability from `w` successes in `n` visits.

    With `p = w/n` and `z` the normal quantile at `(1 + confidence)/2`:
    `centre = (p + z²/2n) / (1 + z²/n)`,
    `half = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²)`, interval `centre ± half` clipped to [0, 1]
    (exactly 0 at w = 0, 1 at w = n). Vectorised over broadcastable `w`, `n`; `n = 0` gives
    (0, 1). Used for `Q(s,a) = w/n` (SPEC §2).
    """
    w, n = np.asarray(w, dtype=float), np.asarray(n, dtype=float)
    if np.any(w < 0) or np.any(w > n):
        raise ValueError("wilson_interval needs 0 <= w <= n")
    z2 = sps.norm.ppf(0.5 + confidence / 2) ** 2
    n_safe = np.where(n > 0, n, 1.0)  # n = 0 is answered by the np.where below
    p = w / n_safe
    denom = 1 + z2 / n_safe
    centre = (p + z2 / (2 * n_safe)) / denom
    half = np.sqrt(z2) / denom * np.sqrt(p * (1 - p) / n_safe + z2 / (4 * n_safe**2))
    # At w = 0 (w = n) the lower (upper) end is exactly 0 (1); set it so rounding cannot move it.
    lo = np.where(w > 0, np.clip(centre - half, 0.0, 1.0), 0.0)
    hi = np.where(w < n, np.clip(centre + half, 0.0, 1.0), 1.0)
    return lo[()], hi[()]


def jeffreys_interval(w, n, confidence: float = 0.95):
    """Jeffreys interval: equal-tailed quantiles of the posterior `Beta(w + ½, n - w + ½)`.

    `lo = B⁻¹(α/2)`, `hi = B⁻¹(1 - α/2)` with `α = 1 - confidence`, except the usual conventions
    `lo = 0` when `w = 0` and `hi = 1` when `w = n` (so `n = 0` gives (0, 1)); Brown, Cai &
    DasGupta 2001. Vectorised over broadcastable `w`, `n` (SPEC §2).
    """
    w, n = np.asarray(w, dtype=float), np.asarray(n, dtype=float)
    if np.any(w < 0) or np.any(w > n):
        raise ValueError("jeffreys_interval needs 0 <= w <= n")
    alpha = 1 - confidence
    a, b = w + 0.5, n - w + 0.5
    lo = np.where(w > 0, sps.beta.ppf(alpha / 2, a, b), 0.0)
    hi = np.where(w < n, sps.beta.ppf(1 - alpha / 2, a, b), 1.0)
    return lo[()], hi[()]


# --------------------------------------------------------------------------- intervals of a mean


def _finite(x) -> np.ndarray:
    x = np.asarray(x, dtype=float).ravel()
    return x[np.isfinite(x)]


SPREAD_RESIDUE = 2.0**-40  # a spread at most this share of the values' scale is rounding: no spread


def no_spread(spread: float, values: np.ndarray) -> bool:
    """Whether ``spread`` (a standard deviation or error of ``values``) is 0 up to rounding. Values that
    are all equal (every alignment +1, say) measure no uncertainty, and an interval or test drawn from
    them would claim certainty: none is given."""
    return not spread > SPREAD_RESIDUE * max(float(np.max(np.abs(values), initial=0.0)), 1.0)


def t_ci(x, confidence: float = 0.95) -> Interval:
    """Student-t interval of the mean over the finite entries of `x` (SPEC §5).

    `mean ± t_{n-1}((1 + confidence)/2) * s / sqrt(n)`, `s` the sample standard deviation
    (ddof = 1). NaNs are dropped and not counted; n < 2, or values all equal (s 0 up to rounding),
    give lo = hi = nan: n values that do not vary say nothing of the spread of the mean.
    """
    x = _finite(x)
    mean = float(x.mean()) if x.size else float("nan")
    s = float(x.std(ddof=1)) if x.size >= 2 else 0.0
    if no_spread(s, x):
        return Interval(mean, float("nan"), float("nan"), int(x.size))
    half = sps.t.ppf(0.5 + confidence / 2, x.size - 1) * s / np.sqrt(x.size)
    return Interval(mean, float(mean - half), float(mean + half), int(x.size))


BOOTSTRAP_BLOCK = 1 << 22  # resampled entries held at once by bootstrap_ci (32 MB of indices)
# fewest values a percentile bootstrap interval is given for: below, it is about the range of a few values
# (95% intervals of a normal mean cover 51% of the time at n = 2, 82% at 5, 89% at 8, 93% at 24)
BOOTSTRAP_MIN_N = 10


def bootstrap_ci(x, seed, n_boot: int = 2000, confidence: float = 0.95) -> Interval:
    """Seeded percentile bootstrap interval of the mean over the finite entries of `x` (SPEC §5).

    Draw `n_boot` resamples of size n with replacement from `numpy.random.default_rng(seed)`
    (`seed`: anything `default_rng` accepts, e.g. an int or a list of ints); the interval is the
    `(1 ∓ confidence)/2` quantiles of the resampled means. NaNs are dropped; fewer than
    `BOOTSTRAP_MIN_N` values, or values all equal, give nan ends (the t interval is the one to read).
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a whole number of resamples, at least 1; got {n_boot!r}")
    x = _finite(x)
    mean = float(x.mean()) if x.size else float("nan")
    if x.size < BOOTSTRAP_MIN_N or no_spread(x.std(ddof=1), x):
        return Interval(mean, float("nan"), float("nan"), int(x.size))
    rng = np.random.default_rng(seed)
    # resamples drawn a block at a time (the same stream as all at once): n_boot x n indices of 100,000
    # questions would take 1.6 GB
    block = max(1, BOOTSTRAP_BLOCK // x.size)
    means_B = np.concatenate([x[rng.integers(0, x.size, size=(min(block, n_boot - b), x.size))].mean(axis=1)
                              for b in range(0, n_boot, block)])
    lo, hi = np.quantile(means_B, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return Interval(mean, float(lo), float(hi), int(x.size))


# --------------------------------------------------------------------------- tests


def paired_test(a, b) -> float:
    """Two-sided paired t-test p-value (`scipy.stats.ttest_rel`) over pairs where both are finite.

    `t = mean(d) / (sd(d) / sqrt(n))`, `d = a - b`, n - 1 degrees of freedom (SPEC §5:
    incorrect-minus-correct over questions having both). nan with fewer than 2 pairs, or when every
    `d` is equal (sd 0 up to rounding: no spread to test against, not p = 0).
    """
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    both = np.isfinite(a) & np.isfinite(b)
    d = a[both] - b[both]
    if d.size < 2 or no_spread(d.std(ddof=1), np.r_[a[both], b[both]]):
        return float("nan")
    with warnings.catch_warnings():  # scipy warns of precision where d barely varies
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(sps.ttest_rel(a[both], b[both]).pvalue)


def clustered_difference(values_P, flag_P, cluster_P, confidence: float = 0.95) -> tuple[Interval, float]:
    """mean(values | flag) − mean(values | ~flag) over paths, its cluster-robust interval and p-value.

    The OLS regression `v_p = α + β·flag_p + ε_p` over every path p with a finite value: β̂ is the
    difference of the two path means, formed as such, with residuals from each side's mean (so equal
    values leave none), and the CR1 sandwich variance clustered by `cluster_P` (questions):
    `V = c (XᵀX)⁻¹ [Σ_g X_gᵀ e_g e_gᵀ X_g] (XᵀX)⁻¹`, `c = G/(G−1) · (N−1)/(N−2)`, whose β entry is
    `c Σ_g (Σ_{p∈g} a_p e_p)²` with `a_p = flag_p/N₁ − (1 − flag_p)/N₀`; `t = β̂ / sqrt(V_ββ)` against
    Student t with G − 1 degrees of freedom (SPEC §5), the interval `β̂ ± t_{G−1} sqrt(V_ββ)`. Paths of
    one question share it and often prefixes; clustering lets their errors correlate arbitrarily, and
    questions with only one kind of path still count. So β is the pooled difference over paths, which
    also holds differences between questions (hard questions have more incorrect paths), not the
    within-question contrast of `paired_test`. The interval's `n` is the number of clusters. nan ends
    and p with fewer than 3 clusters, when a side is empty, or when no residual is above rounding.
    """
    v = np.asarray(values_P, dtype=float).ravel()
    ok = np.isfinite(v)
    v, flag = v[ok], np.asarray(flag_P, dtype=bool).ravel()[ok]
    _, cluster = np.unique(np.asarray(cluster_P).ravel()[ok], return_inverse=True)
    cluster = cluster.reshape(-1)
    n, n_clusters = v.size, int(cluster.max()) + 1 if v.size else 0
    nan = float("nan")
    if flag.all() or not flag.any():
        return Interval(nan, nan, nan, n_clusters), nan
    n1, n0 = int(flag.sum()), int((~flag).sum())
    m1, m0 = float(v[flag].mean()), float(v[~flag].mean())
    beta = m1 - m0
    if n_clusters < 3 or n < 3:
        return Interval(beta, nan, nan, n_clusters), nan
    e = v - np.where(flag, m1, m0)
    a = np.where(flag, 1.0 / n1, -1.0 / n0)
    correction = n_clusters / (n_clusters - 1) * (n - 1) / (n - 2)
    se = float(np.sqrt(correction * np.sum(np.bincount(cluster, a * e, minlength=n_clusters) ** 2)))
    # residuals that are rounding, or questions whose residuals cancel within each (every question with the
    # same paths): no spread between clusters to measure the difference against
    if no_spread(float(np.sqrt(np.mean(e**2))), v) or no_spread(se, v):
        return Interval(beta, nan, nan, n_clusters), nan
    half = float(sps.t.ppf(0.5 + confidence / 2, n_clusters - 1) * se)
    return Interval(beta, beta - half, beta + half, n_clusters), float(2 * sps.t.sf(abs(beta) / se, n_clusters - 1))


def clustered_difference_test(values_P, flag_P, cluster_P) -> float:
    """The p-value of :func:`clustered_difference`."""
    return clustered_difference(values_P, flag_P, cluster_P)[1]


# --------------------------------------------------------------------------- grouped helpers


def _group_mean(group_N, values_N, n_groups: int, weights_N=None) -> np.ndarray:
    """`Σ_i w_i v_i / Σ_i w_i` per group over finite values (and weights); nan for empty groups."""
    values_N = np.asarray(values_N, dtype=float)
    weights_N = np.ones_like(values_N) if weights_N is None else np.asarray(weights_N, float)
    ok = np.isfinite(values_N) & np.isfinite(weights_N)
    wsum_G = np.bincount(group_N[ok], weights_N[ok], minlength=n_groups)
    num_G = np.bincount(group_N[ok], weights_N[ok] * values_N[ok], minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(wsum_G > 0, num_G / np.where(wsum_G > 0, wsum_G, 1.0), np.nan)


TIE_DIGITS = 12  # significant digits two values must share to tie when ranked


def tie_key(v) -> np.ndarray:
    """``v`` rounded to `TIE_DIGITS` significant digits, for ranking: values equal up to floating-point
    residue tie, as the exact values do (an alignment that is ±1 by construction, |A(s)| = 2, comes out
    of the arithmetic as ±1 or ±(1 − 2⁻⁵²); two losses with the same alignment differ in the last bit)."""
    v = np.asarray(v, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(np.isfinite(v) & (v != 0), 10.0 ** np.floor(np.log10(np.abs(v))), 1.0)
    # below ~1e-308 the scale underflows to 0: such a value is kept as it is, not turned into nan
    return np.where(np.isfinite(v) & (scale > 0), np.round(v / np.where(scale > 0, scale, 1.0), TIE_DIGITS - 1) * scale, v)


def _group_ranks(group_N, v_N) -> np.ndarray:
    """Average ranks (1-based, ties share their mean rank) of `v` within each group, vectorised.

    Sort by (group, value); a run of equal values inside a group spanning sorted positions
    [start, end) gets rank `(start + end - 1)/2 - first_of_group + 1`, as `scipy.stats.rankdata`.
    """
    if group_N.size == 0:
        return np.empty(0)
    order = np.lexsort((v_N, group_N))
    g, v = group_N[order], v_N[order]
    idx = np.arange(g.size)
    new_group = np.r_[True, g[1:] != g[:-1]]
    new_run = new_group | np.r_[True, v[1:] != v[:-1]]
    group_first = np.maximum.accumulate(np.where(new_group, idx, 0))
    run_start = np.flatnonzero(new_run)
    run_end = np.r_[run_start[1:], g.size]
    run_rank = (run_start + run_end - 1) / 2 - group_first[run_start] + 1
    ranks = np.empty(g.size)
    ranks[order] = run_rank[np.cumsum(new_run) - 1]
    return ranks


def _group_varies(group_N, v_N, n_groups: int) -> np.ndarray:
    """Whether `max v > min v` within each group (exact, unlike a deviation from a float mean)."""
    lo_G, hi_G = np.full(n_groups, np.inf), np.full(n_groups, -np.inf)
    np.minimum.at(lo_G, group_N, v_N)
    np.maximum.at(hi_G, group_N, v_N)
    return hi_G > lo_G


def _group_pearson(group_N, x_N, y_N, n_groups: int) -> np.ndarray:
    """Pearson r per group: `Σ dx dy / sqrt(Σ dx² Σ dy²)` with deviations from the group means."""
    dx = x_N - _group_mean(group_N, x_N, n_groups)[group_N]
    dy = y_N - _group_mean(group_N, y_N, n_groups)[group_N]
    sxy = np.bincount(group_N, dx * dy, minlength=n_groups)
    sxx = np.bincount(group_N, dx * dx, minlength=n_groups)
    syy = np.bincount(group_N, dy * dy, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(sxy / np.sqrt(sxx * syy), -1.0, 1.0)


def _summary(x, seed, n_boot: int, bounds: tuple[float, float] = (-1.0, 1.0)) -> dict:
    """`{"mean", "ci95", "ci95_bootstrap", "n"}` of the finite entries of x (t and bootstrap).

    The t interval is intersected with `bounds`, the range the mean can take (a cosine's is [-1, 1]):
    with few questions `mean ± t s/√n` reaches past it, and the intersection still holds the mean
    whenever the interval did. A percentile bootstrap interval lies within the range already.
    """
    t, boot = t_ci(x), bootstrap_ci(x, seed, n_boot)
    return {"mean": t.mean, "ci95": _within(t, bounds), "ci95_bootstrap": [boot.lo, boot.hi], "n": t.n}


def _within(interval: Interval, bounds: tuple[float, float]) -> list[float]:
    """An interval's ends cut to ``bounds``, the range its mean can take; nan ends stay nan."""
    return [float(np.clip(v, *bounds)) if np.isfinite(v) else v for v in (interval.lo, interval.hi)]


def _renamed(summary: dict, count_key: str) -> dict:
    return {(count_key if k == "n" else k): v for k, v in summary.items()}


# --------------------------------------------------------------------------- correlations


def _check_one_question_per_path(path_key: np.ndarray, question_key: np.ndarray) -> None:
    """Raise ValueError when a path key occurs in more than one question (its rows would be one path)."""
    if path_key.size == 0:
        return
    _, path_N = np.unique(path_key, return_inverse=True)
    _, question_N = np.unique(question_key, return_inverse=True)
    pairs = np.unique(np.stack([path_N.reshape(-1), question_N.reshape(-1)]), axis=1)
    if pairs.shape[1] != np.unique(pairs[0]).size:
        raise ValueError("a path_key occurs in more than one question: key each path uniquely across "
                         "questions, e.g. by (question_id, path_id)")


def within_path_correlation(
    path_key, question_key, x, y, min_points: int = 5, seed=0, n_boot: int = 2000
) -> dict:
    """Within-path Spearman and Pearson correlation of x with y, per question, then over questions (SPEC §5).

    For each path (rows sharing `path_key`) with at least `min_points` rows where both x and y are
    finite, and with neither x nor y constant there, compute Pearson `r` and Spearman `ρ` (Pearson
    of within-path average ranks; values equal to `TIE_DIGITS` significant digits tie, `tie_key`).
    A question's value is the mean over its eligible paths; each
    correlation is summarised as the mean over questions with a 95% Student-t CI over questions and
    a seeded percentile bootstrap CI (a `path_key` must name one path across all questions, e.g. a
    global path index: one seen in two questions raises ValueError):
    `{"spearman": {"mean", "ci95", "ci95_bootstrap", "n_paths", "n_questions"}, "pearson": {...}}`.
    Correlating within paths removes between-path differences (e.g. correct vs incorrect paths);
    averaging per question first keeps the interval honest, because paths of one question share the
    question (and often prefixes) and are not independent draws.
    """
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    path_key, question_key = np.asarray(path_key).ravel(), np.asarray(question_key).ravel()
    _check_one_question_per_path(path_key, question_key)
    path_key, question_key = path_key[ok], question_key[ok]
    _, group = np.unique(path_key, return_inverse=True)
    group, x, y = group.reshape(-1), x[ok], y[ok]
    n_groups = int(group.max()) + 1 if group.size else 0
    count_G = np.bincount(group, minlength=n_groups)
    xk, yk = tie_key(x), tie_key(y)  # equal up to rounding: tied, and a path of such values is constant
    eligible_G = (count_G >= min_points) & _group_varies(group, xk, n_groups) & _group_varies(
        group, yk, n_groups)
    keep = eligible_G[group]
    pearson_G = _group_pearson(group, x, y, n_groups)[eligible_G]
    rx, ry = _group_ranks(group[keep], xk[keep]), _group_ranks(group[keep], yk[keep])
    spearman_G = _group_pearson(group[keep], rx, ry, n_groups)[eligible_G]
    # each path's question (a path lies in one question), then the mean per question
    question_of_G = np.zeros(n_groups, dtype=np.int64)
    _, question_N = np.unique(question_key, return_inverse=True)
    question_of_G[group] = question_N.reshape(-1)
    _, question_E = np.unique(question_of_G[eligible_G], return_inverse=True)
    question_E = question_E.reshape(-1)
    n_questions = int(question_E.max()) + 1 if question_E.size else 0

    def summary(values_E):
        per_question = _group_mean(question_E, values_E, n_questions)
        # One seed for both: the two summaries resample the same questions (common random numbers).
        out = _renamed(_summary(per_question, seed, n_boot), "n_questions")
        return {**out, "n_paths": int(values_E.size)}

    return {"spearman": summary(spearman_G), "pearson": summary(pearson_G)}


# --------------------------------------------------------------------------- ranking


RANK_ATOL = 1e-12  # means of cosines (in [-1, 1]) closer than this are one mean


def rank_with_ties(means, lo, hi):
    """Rank entries by mean and list, for each, the others whose confidence intervals overlap.

    Rule (pinned): `rank_i = 1 + #{j : mean_j > mean_i + RANK_ATOL}` — standard competition ranking
    ("1224"), highest mean first, equal means share a rank (equal up to rounding: alignments summed in
    another order differ in the 16th digit); an entry with a nan mean has no rank (None): there is
    no score to place it by. Ranks are never merged by CI overlap; instead `tied_with[i]` is the sorted list
    of indices `j != i` whose closed intervals intersect, `lo_i <= hi_j and lo_j <= hi_i`, so a
    reader sees both the order and which differences are not resolved (SPEC §5). An entry with a mean
    and no interval (one question, or values that do not vary) is resolved from no other: it overlaps
    every entry that has a mean. An entry without a mean is not ranked against any.
    """
    means = np.asarray(means, dtype=float)
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    finite = np.isfinite(means)
    above = (means[None, :] > means[:, None] + RANK_ATOL).sum(axis=1)  # comparisons with nan are False
    rank = [int(1 + a) if f else None for a, f in zip(above, finite, strict=True)]
    unknown = finite & ~(np.isfinite(lo) & np.isfinite(hi))
    overlap = ((lo[:, None] <= hi[None, :]) & (lo[None, :] <= hi[:, None])) | unknown[:, None] | unknown[None, :]
    overlap &= finite[:, None] & finite[None, :]
    np.fill_diagonal(overlap, False)
    return rank, [np.flatnonzero(row).tolist() for row in overlap]


# --------------------------------------------------------------------------- aggregation


def _derived_seed(seed: int, *names: str) -> list[int]:
    """A stable `default_rng` seed from the run seed and names (crc32: same in every process)."""
    return [int(seed), zlib.crc32("/".join(names).encode())]


def _path_index(nodes: Mapping[str, np.ndarray]):
    """Integer path id per row, with each path's question index and correctness.

    A path is a (question_id, path_id) pair; its correctness must agree on all its rows.
    """
    _, question_N = np.unique(nodes["question_id"], return_inverse=True)
    pairs = np.stack([question_N.reshape(-1), np.asarray(nodes["path_id"], dtype=np.int64)])
    uniq, path_N = np.unique(pairs, axis=1, return_inverse=True)
    path_N = path_N.reshape(-1)
    n_paths = uniq.shape[1]
    correct_N = np.asarray(nodes["path_correct"], dtype=bool)
    n_correct_P = np.bincount(path_N, correct_N, minlength=n_paths)
    n_rows_P = np.bincount(path_N, minlength=n_paths)
    if np.any((n_correct_P > 0) & (n_correct_P < n_rows_P)):
        raise ValueError("path_correct differs between rows of the same (question_id, path_id)")
    return path_N, uniq[0], n_correct_P > 0


def _teacher_row(rows, path_N, question_P, correct_P, seed: int, n_boot: int) -> dict:
    """Summaries of one teacher x algorithm over its node rows (SPEC §5, §6).

    Per path: mean alignment, |g*|-weighted mean, fraction positive (alignment > 0), mean teacher
    advantage, each over the path's rows where the value is finite. Per question: the mean over its
    correct paths, over its incorrect paths, and — its overall value — the mean over all its paths
    with a defined value (every path counts once, whatever its outcome). Per teacher: mean over
    questions with Student-t and bootstrap 95% CIs, each bootstrap seeded from the run seed and the
    statistic's name alone: every row resamples the same questions (common random numbers), so equal
    per-question values give equal intervals in every row, whatever the row's teacher or algorithm.
    """
    teacher, algorithm = str(rows["teacher"][0]), str(rows["algorithm"][0])
    n_paths, n_questions = correct_P.size, int(question_P.max()) + 1
    align = np.asarray(rows["alignment"], dtype=float)

    def per_path(values, weights=None):
        return _group_mean(path_N, values, n_paths, weights)

    def per_question(path_values, mask_P=None):
        mask_P = np.ones(n_paths, bool) if mask_P is None else mask_P
        return _group_mean(question_P[mask_P], path_values[mask_P], n_questions)

    def summary(name, question_values, bounds=(-1.0, 1.0)):
        return _renamed(_summary(question_values, _derived_seed(seed, name), n_boot, bounds), "n_questions")

    mean_P = per_path(align)
    positive_P = per_path(np.where(np.isnan(align), np.nan, align > 0))  # undefined stays out
    correct_Q, incorrect_Q = per_question(mean_P, correct_P), per_question(mean_P, ~correct_P)
    diff = _summary(incorrect_Q - correct_Q, _derived_seed(seed, "incorrect_minus_correct"), n_boot, (-2.0, 2.0))
    pooled, p_clustered = clustered_difference(mean_P, ~correct_P, question_P)
    n_actions = np.bincount(np.asarray(rows["n_actions"], dtype=np.int64))
    return {
        "teacher": teacher,
        "algorithm": algorithm,
        "alignment": summary("alignment", per_question(mean_P)),
        "weighted_alignment": summary(
            "weighted_alignment", per_question(per_path(align, rows["ideal_norm"]))),
        "alignment_correct": summary("alignment_correct", correct_Q),
        "alignment_incorrect": summary("alignment_incorrect", incorrect_Q),
        "incorrect_minus_correct": {
            "mean": diff["mean"], "ci95": diff["ci95"], "ci95_bootstrap": diff["ci95_bootstrap"],
            "p_paired": paired_test(incorrect_Q, correct_Q),
            "p_clustered": p_clustered,
            "n_questions": diff["n"],
            # what p_clustered tests: incorrect minus correct pooled over every path, questions with one
            # kind of path included (so it also holds differences between questions), CR1 interval
            "pooled": {"mean": pooled.mean, "ci95": _within(pooled, (-2.0, 2.0)), "n_questions": pooled.n},
        },
        "fraction_positive": summary("fraction_positive", per_question(positive_P), (0.0, 1.0)),
        "teacher_advantage": summary(
            "teacher_advantage", per_question(per_path(rows["teacher_advantage"]))),
        "divergence_correlations": {
            d: within_path_correlation(
                path_N, question_P[path_N], rows[d], align, seed=_derived_seed(seed, d),
                n_boot=n_boot)
            for d in DIVERGENCES
        },
        "n_decision_points": int(align.size),
        "n_undefined": int(np.isnan(align).sum()),
        "n_actions_hist": {str(k): int(c) for k, c in enumerate(n_actions) if c > 0},
    }


def aggregate(nodes: Mapping[str, Sequence], seed: int = 0, n_boot: int = 2000) -> list[dict]:
    """Per-node records -> one results row per teacher x algorithm (SPEC §5, §6).

    `nodes` maps each of `NODE_COLUMNS` to a 1-D array, one row per decision point x teacher x
    algorithm. Every row carries `alignment`, `weighted_alignment` (weight |g*| = `ideal_norm`),
    `alignment_correct`, `alignment_incorrect`, `fraction_positive`, `teacher_advantage` as
    `{"mean", "ci95", "ci95_bootstrap", "n_questions"}` over questions; `incorrect_minus_correct`
    (paired over questions with both outcomes; cluster-robust over path means, clustered by question); within-path
    `divergence_correlations`; counts and the |A(s)| histogram (SPEC §3). Within each algorithm,
    teachers are ranked by mean alignment with `rank_with_ties` on the t CIs; `tied_with` names
    CI-overlapping rows as "teacher/algorithm". Values are plain Python numbers (nan kept; the
    writer converts), rows sorted by (algorithm, rank, teacher); deterministic given `seed`.
    """
    missing = [c for c in NODE_COLUMNS if c not in nodes]
    if missing:
        raise ValueError(f"node table lacks columns {missing}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0 (the run's seed); got {seed!r}")
    bootstrap_ci([], seed, n_boot)  # refuses a bad n_boot up front, even for a table with no rows
    nodes = {c: np.asarray(nodes[c]) for c in NODE_COLUMNS}
    if len({a.shape for a in nodes.values()}) != 1 or nodes["alignment"].ndim != 1:
        raise ValueError("node columns must be 1-D arrays of one length")
    with np.errstate(invalid="ignore"):
        if np.any(np.abs(nodes["alignment"].astype(float)) > 1 + 1e-9):
            raise ValueError("alignment holds values outside [-1, 1]: each is a cosine (nan where undefined)")
        norm = nodes["ideal_norm"].astype(float)
        if np.any((norm < 0) | np.isinf(norm)):
            raise ValueError("ideal_norm holds a negative or infinite value: each is |g*|, finite and >= 0")
    if nodes["alignment"].size == 0:
        return []
    path_N, question_P, correct_P = _path_index(nodes)
    # One sort splits the table into teacher x algorithm blocks (no boolean mask per block).
    _, algorithm_N = np.unique(nodes["algorithm"].astype(str), return_inverse=True)
    _, teacher_N = np.unique(nodes["teacher"].astype(str), return_inverse=True)
    combo_N = algorithm_N.reshape(-1) * (teacher_N.max() + 1) + teacher_N.reshape(-1)
    order = np.argsort(combo_N, kind="stable")
    bounds = np.flatnonzero(np.diff(combo_N[order])) + 1
    rows = [
        _teacher_row({c: a[idx] for c, a in nodes.items()}, path_N[idx], question_P, correct_P,
                     seed, n_boot)
        for idx in np.split(order, bounds)
    ]
    ranked = []
    for algorithm in sorted({r["algorithm"] for r in rows}):
        group = [r for r in rows if r["algorithm"] == algorithm]
        rank, tied = rank_with_ties([r["alignment"]["mean"] for r in group],
                                    [r["alignment"]["ci95"][0] for r in group],
                                    [r["alignment"]["ci95"][1] for r in group])
        for r, k, t in zip(group, rank, tied, strict=True):
            names = [f"{group[j]['teacher']}/{algorithm}" for j in t]
            # Identity and rank lead each row so results.json reads top-down.
            ranked.append({"teacher": r["teacher"], "algorithm": algorithm, "rank": k,
                           "tied_with": names, **r})
    return sorted(ranked, key=lambda r: (r["algorithm"], r["rank"] is None, r["rank"] or 0, r["teacher"]))
