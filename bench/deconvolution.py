"""Deconvolved alignment: can an empirical-Bayes estimate of each position's cosine undo the
attenuation that makes few visits per child useless (SPEC §3, §5)?

The plug-in cosine of Q̂ is pulled toward 0 wherever a position's Q spread is below the noise of its
visits, and most positions are such (``python bench/allocation.py --resolvability``). A deconvolution
fits the distribution of the exact quantities across all positions of a run, with the binomial noise
as part of the model, and reports each position's posterior mean cosine instead. Averaged over
positions, posterior means are unbiased for the mean cosine when the fitted prior is right; this
bench measures whether it is, on the same synthetic questions, trees and exact values as
``bench/allocation.py``.

**Model**, per teacher, over every position of one run (all questions) with at least two children at
``n_min`` visits (tied Q̂ included: they say the spread is small). At a position with children A,
π̃ their renormalised probabilities, M = diag(π̃) − π̃ π̃ᵀ and g* = M Q (SPEC §3), only δ, the part of Q
orthogonal to 1, moves g*. It is ``ρ (a ê + √(1 − a²) v)``: ê the direction of the teacher's centred
log-ratio ℓ = log π̃_T − log π̃ (g_T = M ℓ), v uniform on the unit sphere orthogonal to ê and 1 (`DRAWS`
draws; with two children, δ = ±ρ ê), and (a, ρ) from a prior on a grid (`A_GRID` x `R_GRID`) fitted by
nonparametric maximum likelihood (EM), each EM step followed by a Gaussian smoothing of `SMOOTH` grid
steps along a and along log ρ (EMS; 0 is the plain NPMLE). The noise is Gaussian, Q̂ = Q + N(0, D),
D = diag(Q̃ (1 − Q̃) / n), Q̃ = (w + 1) / (n + 2). A position's estimate is the posterior mean of
cos(M δ, g_T); the rest is what the pipeline does (per path, per question, per teacher with a
Student-t 95% CI over questions).

The grid and smoothing are fixed, the same on every shape. The prior is fitted from the same run,
so the CI over questions does not carry its uncertainty.

What it finds (the README's strategy section has the tables): it helps on short traces, where most
positions are resolved at ``n_min`` visits, and overshoots on longer ones. At an unresolved position
the posterior follows the prior, which is extrapolated from the resolved positions, and those are
the more aligned ones. It is not an estimator of the pipeline.

    python bench/deconvolution.py                      # short, long, long-wide; 24 seeds x 8 questions
    python bench/deconvolution.py --shapes short --seeds 6
    python bench/deconvolution.py --shapes aime-like --row survey:positions=64   # the reference and one row
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import importlib.util
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.special import logsumexp

from harness.core import TreeStats, gkd_gradient
from harness.core.allocation import AllocationParams
from harness.exact_lm import derive_seed

_spec = importlib.util.spec_from_file_location("bench_allocation", Path(__file__).parent / "allocation.py")
bench = sys.modules.setdefault("bench_allocation", importlib.util.module_from_spec(_spec))
if not hasattr(bench, "SHAPES"):
    _spec.loader.exec_module(bench)

A_GRID = np.linspace(-1.0, 1.0, 40)  # a: the alignment of δ with the teacher's direction, in Q-space (never 0: with two children δ = ±ρ ê)
R_GRID = np.geomspace(2e-3, 1.0, 24)  # ρ = |δ|
DRAWS = 64
SMOOTH = (4.0, 2.0)  # EMS kernel, grid steps along a and log ρ
EM_STEPS = 300


class Position(NamedTuple):
    """One position of a run's tree: its question and path, and its children at ``n_min`` visits or more."""

    question: int
    path: int
    pi_A: np.ndarray
    n_A: np.ndarray
    w_A: np.ndarray
    pi_T_A: list[np.ndarray]  # per teacher


class Terms(NamedTuple):
    """One position under one teacher: log-likelihood of its Q̂ per prior cell and direction draw, and
    the cosine of each (a, draw)."""

    loglik_A_R_D: np.ndarray
    cos_A_D: np.ndarray


def off_one_basis(m: int) -> np.ndarray:
    """``[m, m-1]``: an orthonormal basis of the vectors orthogonal to 1 (what M sees)."""
    u, _, _ = np.linalg.svd(np.eye(m) - 1.0 / m)
    return u[:, : m - 1]


def position_terms(pos: Position, rng: np.random.Generator) -> list[Terms]:
    """Per teacher: `Terms` of one position under the model of the module docstring."""
    m = len(pos.pi_A)
    p_A = pos.pi_A / pos.pi_A.sum()
    mix = bench.softmax_jacobian(pos.pi_A)
    basis = off_one_basis(m)
    smoothed = (pos.w_A + 1) / (pos.n_A + 2)  # a child with Q̂ = 0 or 1 still has noise
    chol = np.linalg.cholesky(basis.T @ np.diag(smoothed * (1 - smoothed) / pos.n_A) @ basis)
    y = np.linalg.solve(chol, basis.T @ (pos.w_A / pos.n_A))  # whitened observation
    out = []
    for pi_T in pos.pi_T_A:
        ell = np.log(np.maximum(pi_T / pi_T.sum(), 1e-300)) - np.log(p_A)
        e = basis.T @ ell
        e /= np.linalg.norm(e)
        if m == 2:  # one direction: δ = ±ρ ê
            dir_A_D = np.sign(A_GRID)[:, None, None] * e[None, None, :]
        else:
            rest = np.linalg.svd(np.eye(m - 1) - np.outer(e, e))[0][:, : m - 2]
            z = rng.standard_normal((DRAWS, m - 2))
            v = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ rest.T
            dir_A_D = A_GRID[:, None, None] * e + np.sqrt(1 - A_GRID**2)[:, None, None] * v[None]
        white = np.linalg.solve(chol, dir_A_D.reshape(-1, m - 1).T).T.reshape(dir_A_D.shape)
        b_A_D, f_A_D = white @ y, (white * white).sum(-1)
        r = R_GRID[None, :, None]
        loglik = -0.5 * (y @ y - 2 * r * b_A_D[:, None, :] + r * r * f_A_D[:, None, :])
        g_A_D = (dir_A_D @ basis.T) @ mix
        g_T = gkd_gradient(pos.pi_A, pi_T)  # = M ℓ
        cos = g_A_D @ g_T / np.maximum(np.linalg.norm(g_A_D, axis=-1) * np.linalg.norm(g_T), 1e-300)
        out.append(Terms(loglik, cos))
    return out


def fit_prior(terms: list[Terms], smooth: tuple[float, float] = SMOOTH) -> np.ndarray:
    """``[A, R]`` prior weights maximising Σ_i log Σ_c w_c L_i(c) (EM), smoothed after every step."""
    loglik = np.array([logsumexp(t.loglik_A_R_D, axis=-1) for t in terms]).reshape(len(terms), -1)  # Σ over draws: v's mean, up to a constant
    like = np.exp(loglik - loglik.max(axis=1, keepdims=True))
    w = np.full(like.shape[1], 1.0 / like.shape[1])
    for _ in range(EM_STEPS):
        post = like * w
        w = (post / post.sum(axis=1, keepdims=True)).mean(axis=0)
        if any(smooth):
            w = gaussian_filter(w.reshape(len(A_GRID), len(R_GRID)), smooth, mode="nearest").ravel()
            w /= w.sum()
    return w.reshape(len(A_GRID), len(R_GRID))


def posterior_cosine(t: Terms, prior_A_R: np.ndarray) -> float:
    """E[cos(M δ, g_T) | Q̂] under the prior."""
    joint = np.exp(t.loglik_A_R_D - t.loglik_A_R_D.max()) * prior_A_R[:, :, None]
    return float((joint * t.cos_A_D[:, None, :]).sum() / joint.sum())


def run_positions(q: bench.Question, tree: TreeStats, question: int, n_min: int) -> list[Position]:
    """Every position of ``q``'s paths with at least two children at ``n_min`` visits."""
    out = []
    for j, (path, states) in enumerate(zip(q.paths, q.states, strict=True)):
        ch = tree.children(j)
        for k, idx in bench.path_nodes(ch, len(path)):
            visited = idx[ch.n[idx] >= n_min]
            if len(visited) >= 2:
                tok = ch.token[visited]
                out.append(Position(question, j, q.world.pi[k, states[k], tok], ch.n[visited].astype(float),
                                    ch.w[visited].astype(float), [t[k, states[k], tok] for t in q.world.teachers]))
    return out


def run_seed(shape: bench.Shape, seed: int, questions: int, strategy: str, knobs: dict) -> bench.SeedResult:
    """``strategy`` on ``questions`` questions of ``shape`` (the allocation bench's questions, trees and exact
    values), estimated ``plain`` and ``deconvolved``."""
    params = AllocationParams(**bench.shape_knobs(shape, knobs))
    exact, plain, correct, positions = [], [], [], []
    rollouts, tokens = 0, 0.0
    for q, ex, tree, spend in bench.question_trees(shape, seed, questions, strategy, params):
        rollouts, tokens = rollouts + spend.rollouts, tokens + spend.tokens
        exact.append(ex)
        plain.append(bench.estimated_path_values(q, tree, shape.n_min)["plain"])
        correct.append(q.correct)
        positions += run_positions(q, tree, len(exact) - 1, shape.n_min)
    rng = np.random.default_rng(derive_seed("deconvolution-bench", shape.name, seed))
    terms = [position_terms(p, rng) for p in positions]
    priors = [fit_prior([t[i] for t in terms]) for i in range(len(bench.TEACHERS))]
    cos_N_T = np.array([[posterior_cosine(t[i], prior) for i, prior in enumerate(priors)] for t in terms])
    by_path: dict[tuple[int, int], list[np.ndarray]] = {}
    for pos, cos_T in zip(positions, cos_N_T, strict=True):
        by_path.setdefault((pos.question, pos.path), []).append(cos_T)
    deconvolved = [np.full_like(e, np.nan) for e in exact]
    for (question, j), cos in by_path.items():
        deconvolved[question][j, :, 0] = np.mean(cos, axis=0)  # unweighted only: the |g*|-weighted column stays nan
    with warnings.catch_warnings():  # that nan column
        warnings.simplefilter("ignore", RuntimeWarning)
        estimates = {"plain": bench.summarise(plain, correct), "deconvolved": bench.summarise(deconvolved, correct)}
    return bench.SeedResult(bench.summarise(exact, correct), estimates, rollouts, tokens, 0)


ROWS = (("paper", "n_target=100", {}), ("paper", "n_target=50", {"n_target": 50}), ("paper", "n_target=25", {"n_target": 25}),
        ("survey", "default", {}))  # the first is the reference: its plain estimate is the allocation bench's ratio 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=bench.count, default=24)
    parser.add_argument("--questions", type=bench.count, default=8)
    parser.add_argument("--shapes", type=bench.shape_names, default="short,long,long-wide", help="comma-separated shape names")
    parser.add_argument("--jobs", type=bench.count, default=2, help="worker processes (default 2)")
    parser.add_argument("--row", action="append", default=[], metavar="STRATEGY:KEY=VALUE[,KEY=VALUE]",
                        help="measure this setting instead of the default rows (after the reference; repeatable)")
    args = parser.parse_args()
    rows = list(ROWS)
    if args.row:
        rows = [ROWS[0]]
        for row in args.row:
            try:
                strategy, label, knobs = bench.parse_row(row)
            except ValueError as e:
                parser.error(f"--row {row!r}: {e}")
            if knobs.pop("coupled", 0):
                parser.error(f"--row {row!r}: coupled siblings are measured by bench/allocation.py only")
            if "n_min" in knobs:  # every row here is estimated at the shape's n_min
                parser.error(f"--row {row!r}: n_min is the shape's here; bench/allocation.py measures other values")
            rows.append((strategy, label, knobs))
    print(f"{args.seeds} seeds x {args.questions} questions per shape; prior grid {len(A_GRID)} x {len(R_GRID)}, "
          f"{DRAWS} direction draws, smoothing {SMOOTH}")
    ratios = {}
    for shape in (s for s in bench.SHAPES if s.name in args.shapes):
        t0 = time.perf_counter()
        print(f"\n[{shape.name}]  {'strategy':<8} {'setting':<13} {'estimator':<12} {'tokens':>12} {'RMSE':>6} "
              f"{'bias (helpful/misl.)':>20} {'cover':>6}")
        scores = {}
        for strategy, label, knobs in rows:
            with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
                seed_job = functools.partial(run_seed, shape, questions=args.questions, strategy=strategy, knobs=knobs)
                results = list(pool.map(seed_job, range(args.seeds)))
            for estimator in ("plain", "deconvolved"):
                with warnings.catch_warnings():  # the deconvolved estimate's |g*|-weighted column is nan
                    warnings.simplefilter("ignore", RuntimeWarning)
                    r = scores[strategy, label, estimator] = bench.score(results, estimator)
                print(f"  {'':<{len(shape.name) + 2}}{strategy:<8} {label:<13} {estimator:<12} {r['tokens']:>12,.0f} "
                      f"{r['rmse']:>6.3f} {r['bias_T'][0]:>+9.3f}/{r['bias_T'][1]:>+7.3f} {r['coverage']:>9.2f}")
        ref = scores[ROWS[0][0], ROWS[0][1], "plain"]
        ratios[shape.name] = bench.ratio_at_equal_error(ref, {f"{s} {label}": r for (s, label, e), r in scores.items() if e == "deconvolved"})
        print(f"  {time.perf_counter() - t0:.0f} s")
    print("deconvolved, cost ratio at equal error (generated tokens, paper n_target=100 plain = 1; * cheapest qualifying row): "
          + ", ".join(f"{name} {ratio}" for name, ratio in ratios.items()))


if __name__ == "__main__":
    main()
