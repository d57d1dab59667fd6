"""``odiag selfcheck``: the estimators against exact ground truth on the synthetic model (SPEC §7).

For each synthetic question: sample initial rollouts, pick representative correct and incorrect
paths, enrich every candidate child along them with targeted rollouts (SPEC §4, all positions: the
horizon is short), then compare at every decision point the estimated ``Q``, ideal gradient and
alignment score of each synthetic teacher with the values computed from the exact ``Q``. The
check fails when the 95% intervals of ``Q`` cover the exact values less than 90% of the time.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from harness.core import (
    Rollouts,
    TreeStats,
    alignment_score,
    decision_support,
    gkd_gradient,
    ideal_gradient,
    jeffreys_interval,
    t_ci,
    wilson_interval,
)
from harness.synthetic import TEACHERS, SyntheticLM, derive_seed

log = logging.getLogger(__name__)
COVERAGE_FLOOR = 0.90


@dataclasses.dataclass(frozen=True)
class SelfcheckConfig:
    """Settings of the self-check; defaults finish in seconds on one core."""

    questions: int = 12  # synthetic questions (each its own random model)
    seed: int = 0  # every draw derives from it
    n_initial: int = 64  # initial rollouts per question (SPEC §4 step 1)
    paths_per_outcome: int = 2  # correct and incorrect representative paths per question
    n_target: int = 100  # visits each candidate child is enriched to
    n_min: int = 20  # visits a child needs to enter A(s)
    tau: float = 0.05  # candidate threshold on pi and |pi_T - pi|
    posterior_draws: int = 400  # Beta draws per node for the alignment interval


@dataclasses.dataclass(frozen=True)
class NodeCheck:
    """Estimated versus exact values at one decision point, for one counting mode."""

    q_covered: np.ndarray  # bool [|A|]: the Wilson interval holds the exact Q
    q_error: np.ndarray  # float [|A|]: estimated minus exact Q
    ideal_cosine: float  # cos(estimated g*, exact g*)
    alignment: dict[str, tuple[float, float, bool]]  # teacher -> (estimated, exact, interval covers exact)


def _representative_paths(responses, rewards, k, rng) -> list[np.ndarray]:
    """Up to ``k`` distinct correct and ``k`` distinct incorrect responses, chosen by ``rng``."""
    chosen = []
    for outcome in (1, 0):
        seen, picks = set(), []
        for i in rng.permutation(len(responses)):
            key = tuple(responses[i])
            if rewards[i] == outcome and key not in seen and len(picks) < k:
                seen.add(key)
                picks.append(responses[i])
        chosen += picks
    return chosen


def _enrich(model: SyntheticLM, tree: TreeStats, cfg: SelfcheckConfig, question: int) -> list[Rollouts]:
    """Targeted rollouts: every candidate child along every path up to ``n_target`` visits.

    Each path's batch is ingested before the next path is planned (paths share prefixes); the
    batches are returned so a second tree can replay them.
    """
    batches = []
    pi_all = np.exp(model.logp)
    teachers = [np.exp(model.teacher_logp(t)) for t in TEACHERS]
    for j, path in enumerate(tree.paths):
        states = model.states(path)
        conts, rewards, forced, tokens = [], [], [], []
        for k in range(len(path)):
            pi = pi_all[k, states[k]]
            gap = np.max([np.abs(t[k, states[k]] - pi) for t in teachers], axis=0)
            cand = np.flatnonzero((pi > cfg.tau) | (gap > cfg.tau))
            need = cfg.n_target - tree.visits(j, np.full(len(cand), k), cand)
            for a, n in zip(cand, need, strict=True):
                if n <= 0:
                    continue
                prefix = list(path[:k]) + [int(a)]
                toks, rew, _ = model.sample(prefix, int(n), derive_seed(cfg.seed, question, j, k, int(a)))
                conts += toks
                rewards.append(rew)
                forced += [k + 1] * int(n)
                tokens += [int(a)] * int(n)
        if conts:
            batches.append(Rollouts.from_lists(conts, np.concatenate(rewards), forced, [j] * len(conts), tokens))
            tree.ingest(batches[-1])
    return batches


def _check_nodes(model: SyntheticLM, tree: TreeStats, cfg: SelfcheckConfig, rng) -> list[NodeCheck]:
    """Compare estimates with exact values at every decision point of every path."""
    out = []
    teachers = {t: np.exp(model.teacher_logp(t)) for t in TEACHERS}
    for j, path in enumerate(tree.paths):
        states = model.states(path)
        ch = tree.children(j)
        bounds = np.flatnonzero(np.diff(ch.position, prepend=-1, append=-1))
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            k = int(ch.position[lo])
            if k >= len(path) or k >= model.horizon:
                continue
            n, w, tok = ch.n[lo:hi], ch.w[lo:hi], ch.token[lo:hi]
            q_hat = w / np.maximum(n, 1)
            support = decision_support(n, q_hat, cfg.n_min)
            if support is None:
                continue
            tok, n, w, q_hat = tok[support], n[support], w[support], q_hat[support]
            q_true = model.exact_q[k, states[k], tok]
            pi = np.exp(model.logp[k, states[k], tok])
            lo_q, hi_q = wilson_interval(w, n)
            g_hat, g_true = ideal_gradient(pi, q_hat), ideal_gradient(pi, q_true)
            # posterior draws of Q give an interval for each alignment score (Jeffreys prior)
            q_draws = rng.beta(w + 0.5, n - w + 0.5, size=(cfg.posterior_draws, len(n)))
            alignment = {}
            for name, tl in teachers.items():
                g_t = gkd_gradient(pi, tl[k, states[k], tok])
                draws = np.array([alignment_score(ideal_gradient(pi, qd), g_t) for qd in q_draws])
                draws = draws[np.isfinite(draws)]
                exact = alignment_score(g_true, g_t)
                lo_a, hi_a = np.quantile(draws, [0.025, 0.975]) if draws.size else (np.nan, np.nan)
                alignment[name] = (alignment_score(g_hat, g_t), exact, bool(lo_a - 1e-12 <= exact <= hi_a + 1e-12))
            out.append(
                NodeCheck(
                    q_covered=(lo_q <= q_true) & (q_true <= hi_q),
                    q_error=q_hat - q_true,
                    ideal_cosine=alignment_score(g_hat, g_true),
                    alignment=alignment,
                )
            )
    return out


def run_selfcheck(cfg: SelfcheckConfig) -> dict:
    """Run the check for both counting modes; return a summary dict (see ``format_report``)."""
    summary = {"config": dataclasses.asdict(cfg), "modes": {}, "rollouts": 0}
    checks = {"unbiased": [], "paper": []}
    per_question = {mode: {t: [] for t in TEACHERS} for mode in checks}
    for question in range(cfg.questions):
        model = SyntheticLM(seed=derive_seed("selfcheck-question", cfg.seed, question))
        toks, rewards, _ = model.sample([], cfg.n_initial, derive_seed(cfg.seed, question, "initial"))
        rng = np.random.default_rng(derive_seed(cfg.seed, question, "paths"))
        paths = _representative_paths(toks, rewards, cfg.paths_per_outcome, rng)
        if not paths:
            continue
        initial = Rollouts.from_lists(toks, rewards)
        trees = {mode: TreeStats(paths, cascade=mode) for mode in checks}
        trees["unbiased"].ingest(initial)
        # targeted rollouts are drawn once (steered by the unbiased counts) and shared by both modes
        targeted = _enrich(model, trees["unbiased"], cfg, question)
        summary["rollouts"] += cfg.n_initial + sum(len(b) for b in targeted)
        for batch in [initial, *targeted]:
            trees["paper"].ingest(batch)
        for mode, tree in trees.items():
            nodes = _check_nodes(model, tree, cfg, np.random.default_rng(derive_seed(cfg.seed, question, mode)))
            checks[mode] += nodes
            for t in TEACHERS:
                err = [abs(nc.alignment[t][0] - nc.alignment[t][1]) for nc in nodes]
                per_question[mode][t].append((np.mean([nc.alignment[t][0] for nc in nodes]) if nodes else np.nan,
                                              np.mean([nc.alignment[t][1] for nc in nodes]) if nodes else np.nan,
                                              np.mean(err) if err else np.nan))
    for mode, nodes in checks.items():
        q_cov = np.concatenate([nc.q_covered for nc in nodes]) if nodes else np.zeros(0, bool)
        q_err = np.concatenate([nc.q_error for nc in nodes]) if nodes else np.zeros(0)
        teachers = {}
        for t in TEACHERS:
            est = np.array([nc.alignment[t][0] for nc in nodes])
            exact = np.array([nc.alignment[t][1] for nc in nodes])
            ok = np.isfinite(est) & np.isfinite(exact)
            ci = t_ci(np.array([row[0] for row in per_question[mode][t]]))
            exact_mean = float(np.nanmean([row[1] for row in per_question[mode][t]]))
            teachers[t] = {
                "mean_estimated": ci.mean,
                "ci95": [ci.lo, ci.hi],
                "mean_exact": exact_mean,
                "ci_covers_exact": bool(ci.lo <= exact_mean <= ci.hi),
                "mean_abs_error": float(np.mean(np.abs(est[ok] - exact[ok]))) if ok.any() else float("nan"),
                "interval_coverage": float(np.mean([nc.alignment[t][2] for nc in nodes])) if nodes else float("nan"),
            }
        cos = np.array([nc.ideal_cosine for nc in nodes])
        summary["modes"][mode] = {
            "decision_points": len(nodes),
            "q_children": int(q_cov.size),
            "q_coverage": float(q_cov.mean()) if q_cov.size else float("nan"),
            "q_mean_abs_error": float(np.abs(q_err).mean()) if q_err.size else float("nan"),
            "q_mean_error": float(q_err.mean()) if q_err.size else float("nan"),
            "ideal_cosine_mean": float(np.nanmean(cos)) if cos.size else float("nan"),
            "teachers": teachers,
        }
    summary["passed"] = bool(summary["modes"]["unbiased"]["q_coverage"] >= COVERAGE_FLOOR)
    return summary


def format_report(summary: dict) -> str:
    """The human-readable table printed by ``odiag selfcheck``."""
    lines = [f"odiag selfcheck: {summary['config']['questions']} synthetic questions, {summary['rollouts']} rollouts"]
    for mode, s in summary["modes"].items():
        lines.append(
            f"\n[cascade={mode}] decision points {s['decision_points']}, children in A(s) {s['q_children']}\n"
            f"  Q: 95% Wilson coverage {s['q_coverage']:.3f}, mean |error| {s['q_mean_abs_error']:.4f}, "
            f"mean error {s['q_mean_error']:+.4f}\n"
            f"  ideal gradient: mean cos(estimated, exact) {s['ideal_cosine_mean']:.4f}"
        )
        lines.append(f"  {'teacher':<11} {'mean est':>9} {'95% CI':>18} {'exact':>8} {'|err|/node':>11} {'node cov':>9}")
        for t, row in s["teachers"].items():
            ci = f"[{row['ci95'][0]:+.3f}, {row['ci95'][1]:+.3f}]"
            lines.append(
                f"  {t:<11} {row['mean_estimated']:>+9.3f} {ci:>18} {row['mean_exact']:>+8.3f} "
                f"{row['mean_abs_error']:>11.4f} {row['interval_coverage']:>9.3f}"
            )
    verdict = "PASS" if summary["passed"] else "FAIL"
    lines.append(
        f"\n{verdict}: Q coverage {summary['modes']['unbiased']['q_coverage']:.3f} "
        f"(floor {COVERAGE_FLOOR:.2f}) with unbiased counting"
    )
    return "\n".join(lines)
