"""Statistics of ``odiag validate``: training gains with CIs, and how well a diagnostic score ranks them.

Pure numpy and scipy. The data are accuracies on held-out questions, ``acc[p, s, q]`` for pair ``p``
(teacher x algorithm) trained with seed ``s`` and evaluated on question ``q``, and the do-nothing
control's ``control[s, q]`` evaluated with the same draws (common random numbers), so the gain of a
pair is ``mean_{s,q} (acc[p,s,q] - control[s,q])``.

Uncertainty comes from two sources that a CI must carry: which training seeds were drawn, and which
held-out questions. A gain's interval is a t interval for a grid of both (`gain_interval`). The
rank correlations resample both at once (a two-way bootstrap: seeds with replacement, questions
with replacement, independently), and every pair is resampled with the same draws, so the rank
correlation of the pairs' gains with their alignment is taken on one consistent replicate at a
time. The alignment side resamples the diagnosed questions in the same replicate. Resampled means are weighted sums (``einsum`` with bootstrap counts), never Python loops.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from scipy import stats as sps

from harness.core.stats import Interval, no_spread, tie_key


class Draws(NamedTuple):
    """Bootstrap counts: how often each seed, held-out question and diagnosed question is drawn."""

    seeds_BS: np.ndarray  # int [B, S]
    heldout_BQ: np.ndarray  # int [B, Q]
    diagnosed_BN: np.ndarray  # int [B, N]


def bootstrap_draws(n_seeds: int, n_heldout: int, n_diagnosed: int, n_boot: int, seed) -> Draws:
    """``n_boot`` replicates: each draws seeds, held-out questions and diagnosed questions with
    replacement (multinomial counts), from ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)

    def counts(n: int) -> np.ndarray:
        if n == 0:
            return np.zeros((n_boot, 0), np.int64)
        return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)

    return Draws(counts(n_seeds), counts(n_heldout), counts(n_diagnosed))


def gain_replicates(diff_PSQ: np.ndarray, draws: Draws) -> np.ndarray:
    """Mean gain of each pair in each replicate, [B, P]: ``Σ_{s,q} c_s c_q d[p,s,q] / (S Q)``."""
    diff_PSQ = np.asarray(diff_PSQ, float)
    _, s, q = diff_PSQ.shape
    return np.einsum("psq,bs,bq->bp", diff_PSQ, draws.seeds_BS, draws.heldout_BQ) / (s * q)


def gain_interval(diff_SQ: np.ndarray, confidence: float = 0.95) -> Interval:
    """Mean of ``diff[s, q]`` (a pair's gain over the control) with a t interval for seeds and
    held-out questions both drawn at random.

    From the two-way analysis of variance of the grid (no replication): the mean squares of seeds,
    ``MS_s = Q Σ_s (d̄_s − d̄)² / (S − 1)``, and of questions, ``MS_q = S Σ_q (d̄_q − d̄)² / (Q − 1)``;
    the mean's variance is taken as ``(MS_s + MS_q) / (S Q)`` (its expectation exceeds the true
    ``σ_s²/S + σ_q²/Q + σ_e²/(S Q)`` by ``σ_e²/(S Q)``: a little wide, never narrow), with
    Satterthwaite's degrees of freedom ``(MS_s + MS_q)² / (MS_s²/(S − 1) + MS_q²/(Q − 1))``. A
    two-way percentile bootstrap of 2-3 seeds ran narrow: 76-81% coverage where seeds vary by 0.1-0.2.
    nan ends with one seed or one question (that source's variance cannot be measured: an interval
    over questions alone says nothing of training noise), or when neither the seeds' nor the questions'
    mean gains vary (the control's own row: every cell 0). ``n`` is the number of (seed, question) cells.
    """
    diff_SQ = np.asarray(diff_SQ, float)
    if diff_SQ.ndim != 2 or not np.all(np.isfinite(diff_SQ)):
        raise ValueError("diff must be a finite [seeds, questions] array")
    n_seeds, n_questions = diff_SQ.shape
    mean = float(diff_SQ.mean()) if diff_SQ.size else float("nan")
    nan = float("nan")
    if n_seeds < 2 or n_questions < 2:
        return Interval(mean, nan, nan, int(diff_SQ.size))
    ms_seed = n_questions * float(((diff_SQ.mean(axis=1) - mean) ** 2).sum()) / (n_seeds - 1)
    ms_question = n_seeds * float(((diff_SQ.mean(axis=0) - mean) ** 2).sum()) / (n_questions - 1)
    se = np.sqrt((ms_seed + ms_question) / diff_SQ.size)
    if no_spread(se, diff_SQ):
        return Interval(mean, nan, nan, int(diff_SQ.size))
    df = (ms_seed + ms_question) ** 2 / (ms_seed**2 / (n_seeds - 1) + ms_question**2 / (n_questions - 1))
    half = float(sps.t.ppf(0.5 + confidence / 2, df) * se)
    return Interval(mean, mean - half, mean + half, int(diff_SQ.size))


def spearman_rows(x_BP: np.ndarray, y_BP: np.ndarray) -> np.ndarray:
    """Spearman's ρ of each row pair: Pearson correlation of average ranks (ties share their mean
    rank, as ``scipy.stats.spearmanr``; values equal up to rounding tie, `tie_key`); nan where a row
    is constant or has fewer than 3 finite pairs."""
    x_BP, y_BP = np.atleast_2d(np.asarray(x_BP, float)), np.atleast_2d(np.asarray(y_BP, float))
    out = np.full(x_BP.shape[0], np.nan)
    for b in range(x_BP.shape[0]):
        ok = np.isfinite(x_BP[b]) & np.isfinite(y_BP[b])
        if ok.sum() < 3:
            continue
        rx, ry = sps.rankdata(tie_key(x_BP[b, ok])), sps.rankdata(tie_key(y_BP[b, ok]))
        dx, dy = rx - rx.mean(), ry - ry.mean()
        denom = np.sqrt((dx * dx).sum() * (dy * dy).sum())
        if denom > 0:
            out[b] = float(np.clip((dx * dy).sum() / denom, -1.0, 1.0))
    return out


def question_means(values_PN: np.ndarray, counts_BN: np.ndarray) -> np.ndarray:
    """Mean over resampled questions of each pair's per-question values, [B, P]; nan values are
    left out of both sums (a question where a score is undefined does not count for that pair)."""
    values_PN = np.asarray(values_PN, float)
    ok_PN = np.isfinite(values_PN)
    num_BP = np.einsum("bn,pn->bp", counts_BN, np.where(ok_PN, values_PN, 0.0))
    den_BP = np.einsum("bn,pn->bp", counts_BN, ok_PN.astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den_BP > 0, num_BP / np.where(den_BP > 0, den_BP, 1.0), np.nan)


def rank_correlations(
    predictors: Mapping[str, np.ndarray],
    diff_PSQ: np.ndarray,
    reference: str = "alignment",
    seed=0,
    n_boot: int = 2000,
    confidence: float = 0.95,
) -> dict:
    """Spearman ρ between each predictor and the pairs' gains, with bootstrap CIs, and each
    predictor's ρ minus the reference predictor's ρ.

    ``predictors[name]`` is a [P, N] array: the predictor's value per pair and diagnosed question
    (nan where undefined); its point value for a pair is the mean over questions that define it
    (how ``results.json`` aggregates, SPEC §5). ``diff_PSQ`` are gains over the control. Each
    replicate resamples seeds, held-out questions and diagnosed questions (``bootstrap_draws``),
    recomputes every pair's predictor and gain, and their ρ; all predictors share the replicates, so
    the difference of two ρ has its own interval. Replicates where ρ is undefined (a constant
    resample, or one that drew no question defining one of the pairs) are dropped and counted. With
    one training seed the intervals are nan (resampling cannot show training noise; as the gains').
    ``verdict`` of a difference: ``better`` / ``worse`` when its interval lies above / below 0, else
    ``not resolved``.

    The interval is for ρ of these pairs as measured, noisy gains and noisy predictors: noise
    scrambles ranks, so ρ and its replicates sit below the ρ of exact values (a relation monotone in
    truth, 12 pairs of demo-like noise: point ρ 0.78, the interval's median 0.69); and the pairs are
    fixed, not resampled, so ρ speaks of these teachers, not of teachers in general.
    """
    diff_PSQ = np.asarray(diff_PSQ, float)
    n_pairs, n_seeds, n_heldout = diff_PSQ.shape
    n_diag = next(iter(predictors.values())).shape[1] if predictors else 0
    draws = bootstrap_draws(n_seeds, n_heldout, n_diag, n_boot, seed)
    gain_P = diff_PSQ.mean(axis=(1, 2))
    gain_BP = gain_replicates(diff_PSQ, draws)
    q = [0.5 - confidence / 2, 0.5 + confidence / 2]
    rho, rho_B = {}, {}
    out: dict[str, dict] = {}
    for name, values_PN in predictors.items():
        values_PN = np.asarray(values_PN, float)
        if values_PN.shape != (n_pairs, n_diag):
            raise ValueError(f"predictor {name!r} has shape {values_PN.shape}, expected {(n_pairs, n_diag)}")
        with warnings.catch_warnings():  # a pair with no defined value is nan, as intended
            warnings.simplefilter("ignore", RuntimeWarning)
            point_P = np.nanmean(values_PN, axis=1) if n_diag else np.full(n_pairs, np.nan)
        rho[name] = float(spearman_rows(point_P[None], gain_P[None])[0])
        x_BP = question_means(values_PN, draws.diagnosed_BN)
        rho_B[name] = spearman_rows(x_BP, gain_BP)
        # a replicate that drew none of the questions defining a pair would rank the others alone: undefined
        rho_B[name][np.isnan(x_BP[:, np.isfinite(point_P)]).any(axis=1)] = np.nan
        ok = np.isfinite(rho_B[name])
        lo, hi = _percentiles(rho_B[name][ok], q, measured=n_seeds > 1)
        out[name] = {"spearman": rho[name], "ci95": [float(lo), float(hi)], "n_pairs": int(np.isfinite(point_P).sum()),
                     "n_boot": n_boot, "undefined_replicates": int((~ok).sum()), "x": point_P.tolist()}
    for name in predictors:
        if name == reference or reference not in predictors:
            continue
        d_B = rho_B[name] - rho_B[reference]
        lo, hi = _percentiles(d_B[np.isfinite(d_B)], q, measured=n_seeds > 1)
        verdict = "better" if lo > 0 else "worse" if hi < 0 else "not resolved"
        out[name][f"minus_{reference}"] = {"mean": rho[name] - rho[reference], "ci95": [float(lo), float(hi)],
                                           "verdict": verdict}
    return out


def _percentiles(values_B: np.ndarray, q: list[float], measured: bool = True) -> tuple[float, float]:
    """The ``q`` quantiles of the defined replicates; nan where there are none, or where the replicates
    do not carry every source of noise (``measured`` False: one training seed). Replicates that all
    agree keep their interval: ρ = 1 in every resample is what the resampling says of these pairs."""
    if not values_B.size or not measured:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values_B, q)
    return float(lo), float(hi)
