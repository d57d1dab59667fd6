"""``odiag selfcheck``: the pipeline's estimates against exact ground truth on the synthetic model (SPEC §7).

The check runs what users run: :func:`harness.pipeline.run` on the synthetic task and backend, once
per allocation strategy of ``harness/core/allocation.py`` (``paper`` and ``settle``), and once more
with the paper's cascade counting. It then reads the run's own outputs (children.parquet holds every
decision point's children with their visits, successes and both models' probabilities) and compares,
at every decision point, the estimated ``Q``, ideal gradient and GKD alignment of each synthetic
teacher with the values computed from the exact ``Q`` on the same support.

Reported per run: the coverage of the Wilson intervals of ``Q``; per teacher the mean alignment
(per path, then per question, as the leaderboard averages) estimated and exact, their difference
(the *attenuation*: noise in ``Q̂`` pulls every cosine toward 0), and the coverage of each node's
posterior interval; and the on-path ``Q`` bias on correct and on incorrect paths. Two checks do not
lean on the code they check: at every decision point, the ideal and GKD gradients against central
finite differences of their definitions (the success probability Σ π̃ Q, minus KL(π̃ ‖ π̃_T)) in the
student's logits; and the run's published numbers (each node's alignment in ``nodes.parquet``, each
teacher's mean in ``results.json``) against this check's own recomputation from ``children.parquet``,
averaged here. The check fails when the Wilson intervals of ``Q`` cover the exact values less than 90%
of the time (default counting), a gradient departs from its definition, a published number from its
recomputation, or an exact mean alignment has the wrong sign for how its synthetic teacher is built
(the alignment score itself is shared by both sides of every other comparison).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

import numpy as np
from scipy.special import softmax

from harness.core import (
    alignment_score,
    gkd_gradient,
    ideal_gradient,
    t_ci,
    wilson_interval,
)
from harness.exact_lm import SyntheticLM
from harness.seeds import derive_seed
from harness.wording import plural

log = logging.getLogger(__name__)
COVERAGE_FLOOR = 0.90
GRADIENT_TOLERANCE = 1e-6  # central differences at step 1e-6 err by about 1e-10
PUBLISHED_TOLERANCE = 1e-9  # the same sums in another order
TEACHERS = {"synthetic-helpful": "helpful", "synthetic-misleading": "misleading"}
# (label, strategy, cascade): the two strategies users choose between, and the paper's counting
RUNS = (("paper", "paper", "unbiased"), ("settle", "settle", "unbiased"), ("cascade=paper", "paper", "paper"))


@dataclasses.dataclass(frozen=True)
class SelfcheckConfig:
    """Settings of the self-check; defaults finish in well under a minute on one core."""

    questions: int = 12  # synthetic questions (each its own random model)
    seed: int = 0  # every draw derives from it
    n_initial: int = 64  # initial rollouts per question (SPEC §4 step 1)
    paths_per_outcome: int = 2  # correct and incorrect representative paths per question
    n_target: int = 100  # visits each targeted child is enriched to
    posterior_draws: int = 400  # Beta draws per node for the alignment interval


def _run_config(cfg: SelfcheckConfig, strategy: str, cascade: str):
    from harness.config import RunConfig

    return RunConfig(
        task="synthetic", backend="synthetic", student="synthetic", teachers=tuple(TEACHERS), algorithms=("gkd",),
        seed=cfg.seed, limit=cfg.questions, n_initial=cfg.n_initial, paths_per_outcome=cfg.paths_per_outcome,
        n_target=cfg.n_target, strategy=strategy, cascade=cascade,
    )


def _path_means(rows: list[tuple[str, int, float]]) -> np.ndarray:
    """Mean per path, then per question, of (question, path, value) rows: the leaderboard's averaging."""
    by_path: dict[tuple[str, int], list[float]] = {}
    for q, p, v in rows:
        if np.isfinite(v):
            by_path.setdefault((q, p), []).append(v)
    by_question: dict[str, list[float]] = {}
    for (q, _), values in by_path.items():
        by_question.setdefault(q, []).append(float(np.mean(values)))
    return np.array([np.mean(v) for v in by_question.values()])


def _logit_gradient(objective, pi: np.ndarray, step: float = 1e-6) -> np.ndarray:
    """Central differences of ``objective(π̃)`` in the student's logits at z = log π̃ (π renormalised)."""
    z = np.log(pi / pi.sum())
    out = np.empty_like(z)
    for a in range(z.size):
        dz = np.zeros_like(z)
        dz[a] = step
        out[a] = (objective(softmax(z + dz)) - objective(softmax(z - dz))) / (2 * step)
    return out


def _ideal_error(pi: np.ndarray, q: np.ndarray) -> float:
    """Largest departure of `ideal_gradient` from the logit gradient of the success probability Σ π̃ Q."""
    return float(np.abs(ideal_gradient(pi, q) - _logit_gradient(lambda p: p @ q, pi)).max())


def _gkd_error(pi: np.ndarray, pit: np.ndarray) -> float:
    """Largest departure of `gkd_gradient` from the logit gradient of minus KL(π̃ ‖ π̃_T)."""
    teacher = pit / pit.sum()
    return float(np.abs(gkd_gradient(pi, pit) - _logit_gradient(lambda p: -(p * np.log(p / teacher)).sum(), pi)).max())


def _published_differences(out: Path, est_rows: dict) -> dict:
    """The run's own GKD alignments against this check's recomputation: per node (``nodes.parquet``) and per
    teacher mean (``results.json``); the largest absolute difference of each, inf where one is missing."""
    import json

    import pyarrow.parquet as pq

    def apart(a, b) -> float:  # undefined on both sides agrees; on one side only, it does not
        a, b = (np.nan if x is None else float(x) for x in (a, b))
        return 0.0 if np.isnan(a) and np.isnan(b) else np.inf if np.isnan(a) or np.isnan(b) else abs(a - b)

    mine = {(q, j, k, t): v for t, rows in est_rows.items() for q, j, k, v in rows}
    published = {(r["question_id"], r["path_id"], r["position"], r["teacher"]): r["alignment"]
                 for r in pq.read_table(out / "nodes.parquet").to_pylist() if r["algorithm"] == "gkd"}
    node = max((apart(published[k], v) for k, v in mine.items() if k in published), default=0.0)
    if set(published) != set(mine):
        node = np.inf
    rows = {r["teacher"]: r for r in json.loads((out / "results.json").read_text())["teachers"] if r["algorithm"] == "gkd"}
    mean = 0.0
    for t, values in est_rows.items():
        means = _path_means([(q, j, v) for q, j, _, v in values])
        said = rows.get(t, {}).get("alignment", {}).get("mean")
        mean = max(mean, apart(said, float(np.mean(means)) if means.size else None))
    return {"nodes": float(node), "means": float(mean)}


def check_run(out: Path, cfg: SelfcheckConfig) -> dict:
    """Compare one finished synthetic run directory with the exact model."""
    import pyarrow.parquet as pq

    from harness.tasks.exact import SyntheticTask

    models = {q.id: SyntheticLM(seed=q.doc["seed"]) for q in SyntheticTask().questions(cfg.questions)}
    paths = {(p["question_id"], p["path_id"]): (np.array(p["tokens"]), p["outcome"])
             for p in pq.read_table(out / "paths.parquet").to_pylist()}
    children = pq.read_table(out / "children.parquet").to_pylist()
    nodes: dict[tuple, list[dict]] = {}
    for c in children:
        nodes.setdefault((c["question_id"], c["path_id"], c["position"], c["teacher"]), []).append(c)
    rng = np.random.default_rng(derive_seed("selfcheck", cfg.seed))
    q_covered, q_error, ideal_cos, ideal_errors, gkd_errors = [], [], [], [], []
    est_rows = {t: [] for t in TEACHERS}
    exact_rows = {t: [] for t in TEACHERS}
    node_cover = {t: [] for t in TEACHERS}
    for (qid, j, k, teacher), kids in sorted(nodes.items()):
        model, (path, _) = models[qid], paths[(qid, j)]
        state = model.states(path)[k]
        tok = np.array([c["token"] for c in kids])
        n, w = np.array([c["n"] for c in kids]), np.array([c["w"] for c in kids])
        pi, pit = np.array([c["pi"] for c in kids]), np.array([c["pi_teacher"] for c in kids])
        q_hat, q_true = w / n, model.exact_q[k, state, tok]
        g_hat, g_true, g_t = ideal_gradient(pi, q_hat), ideal_gradient(pi, q_true), gkd_gradient(pi, pit)
        estimated, exact = alignment_score(g_hat, g_t), alignment_score(g_true, g_t)
        est_rows[teacher].append((qid, j, k, estimated))
        exact_rows[teacher].append((qid, j, exact))
        gkd_errors.append(_gkd_error(pi, pit))
        # posterior draws of Q give an interval for the alignment score (Jeffreys prior)
        draws = rng.beta(w + 0.5, n - w + 0.5, size=(cfg.posterior_draws, len(n)))
        scores = np.array([alignment_score(ideal_gradient(pi, d), g_t) for d in draws])
        scores = scores[np.isfinite(scores)]
        if scores.size and np.isfinite(exact):
            lo, hi = np.quantile(scores, [0.025, 0.975])
            node_cover[teacher].append(lo - 1e-12 <= exact <= hi + 1e-12)
        if teacher == next(iter(TEACHERS)):  # Q and g* do not depend on the teacher: count each node once
            lo_q, hi_q = wilson_interval(w, n)
            q_covered.append((lo_q <= q_true) & (q_true <= hi_q))
            q_error.append(q_hat - q_true)
            ideal_cos.append(alignment_score(g_hat, g_true))
            ideal_errors.append(_ideal_error(pi, q_true))
    teachers = {}
    for t, short in TEACHERS.items():
        est, exact = _path_means([(q, j, v) for q, j, _, v in est_rows[t]]), _path_means(exact_rows[t])
        ci = t_ci(est)
        lo, hi = (float(v) for v in np.clip([ci.lo, ci.hi], -1.0, 1.0))  # a mean of cosines lies in [-1, 1]
        teachers[short] = {
            "mean_estimated": ci.mean, "ci95": [lo, hi], "mean_exact": float(np.mean(exact)) if exact.size else np.nan,
            "attenuation": float(np.mean(est - exact)) if est.size else np.nan,
            "attenuation_ci95": [float(v) for v in np.clip(t_ci(est - exact)[1:3], -2.0, 2.0)],  # of two means in [-1, 1]
            # None where there is no interval (fewer than two questions, or values that do not vary) or no exact value
            "ci_covers_exact": bool(ci.lo <= np.mean(exact) <= ci.hi) if exact.size and np.isfinite([ci.lo, ci.hi]).all() else None,
            "interval_coverage": float(np.mean(node_cover[t])) if node_cover[t] else np.nan,
        }
    q_cov = np.concatenate(q_covered) if q_covered else np.zeros(0, bool)
    q_err = np.concatenate(q_error) if q_error else np.zeros(0)
    return {
        "decision_points": len(q_covered),
        "q_children": int(q_cov.size),
        "q_coverage": float(q_cov.mean()) if q_cov.size else np.nan,
        "q_mean_abs_error": float(np.abs(q_err).mean()) if q_err.size else np.nan,
        "q_mean_error": float(q_err.mean()) if q_err.size else np.nan,
        "ideal_cosine_mean": float(np.nanmean(ideal_cos)) if ideal_cos else np.nan,
        "on_path_q_bias": _on_path_bias(children, models, paths),
        "teachers": teachers,
        # largest |formula − finite differences of its definition| over decision points: ideal, GKD
        "gradient_error": [float(np.max(e)) if e else 0.0 for e in (ideal_errors, gkd_errors)],
        "published_difference": _published_differences(out, est_rows),
    }


def _mode_passes(s: dict) -> bool:
    """A run's gradients follow their definitions (a NaN does not), its published numbers its children, and its
    exact alignments have the signs the synthetic teachers are built with: the helpful one tilts the student toward
    the exact ``Q``, the misleading one away, so a cosine of the wrong sign shows on both sides alike."""
    exact = {t: row["mean_exact"] for t, row in s["teachers"].items()}
    return bool(np.max(s["gradient_error"]) <= GRADIENT_TOLERANCE
                and np.max(list(s["published_difference"].values())) <= PUBLISHED_TOLERANCE
                and exact["helpful"] > 0 > exact["misleading"])


def _on_path_bias(children: list[dict], models: dict, paths: dict) -> dict:
    """Mean (Q̂ − exact Q) of the on-path children at decision points, on correct and on incorrect paths.

    A path chosen for its reward must not pull its own on-path Q toward that reward (SPEC §2).
    """
    errors: dict[str, list[float]] = {"correct": [], "incorrect": []}
    seen = set()
    for c in children:
        key = (c["question_id"], c["path_id"], c["position"])
        path, outcome = paths[key[:2]]
        if key in seen or c["token"] != path[c["position"]]:
            continue
        seen.add(key)
        model = models[c["question_id"]]
        q_true = model.exact_q[c["position"], model.states(path)[c["position"]], c["token"]]
        errors["correct" if outcome == "correct" else "incorrect"].append(c["q"] - q_true)
    return {kind: {"mean": t.mean, "ci95": [t.lo, t.hi], "n": t.n} for kind, e in errors.items() for t in [t_ci(e)]}


def run_selfcheck(cfg: SelfcheckConfig, workdir: str | Path | None = None) -> dict:
    """Run the pipeline per strategy on the synthetic task and check each run; a summary dict."""
    from harness.pipeline import run

    summary = {"config": dataclasses.asdict(cfg), "modes": {}, "rollouts": {}}
    with tempfile.TemporaryDirectory(prefix="odiag-selfcheck-", dir=workdir) as tmp:
        for label, strategy, cascade in RUNS:
            out = Path(tmp) / label
            results = run(_run_config(cfg, strategy, cascade), out)
            summary["rollouts"][label] = results["counts"]["rollouts"]
            summary["modes"][label] = check_run(out, cfg)
            log.info("selfcheck %s: %s rollouts", label, f"{results['counts']['rollouts']:,}")
    summary["passed"] = bool(
        all(summary["modes"][label]["q_coverage"] >= COVERAGE_FLOOR for label, _, cascade in RUNS if cascade == "unbiased")
        and all(_mode_passes(s) for s in summary["modes"].values())
    )
    return summary


def format_report(summary: dict) -> str:
    """The human-readable table printed by ``odiag selfcheck``."""
    cfg = summary["config"]
    lines = [f"odiag selfcheck: {cfg['questions']} synthetic {plural(cfg['questions'], 'question')}, "
             "the pipeline's own runs (GKD alignment)"]
    for mode, s in summary["modes"].items():
        bias = s["on_path_q_bias"]
        lines.append(
            f"\n[{mode}] {summary['rollouts'][mode]:,} rollouts, decision points {s['decision_points']}, "
            f"children in A(s) {s['q_children']}\n"
            f"  Q: 95% Wilson coverage {s['q_coverage']:.3f}, mean |error| {s['q_mean_abs_error']:.4f}, "
            f"mean error {s['q_mean_error']:+.4f}\n"
            f"  on-path Q bias: correct paths {bias['correct']['mean']:+.4f}, incorrect paths {bias['incorrect']['mean']:+.4f}\n"
            f"  ideal gradient: mean cos(estimated, exact) {s['ideal_cosine_mean']:.4f}\n"
            f"  formulas: ideal and GKD gradients against finite differences of their definitions, largest error "
            f"{np.max(s['gradient_error']):.1e}\n"
            f"  published: nodes.parquet and results.json against this recomputation, largest difference "
            f"{np.max(list(s['published_difference'].values())):.1e}"
        )
        lines.append(f"  {'teacher':<11} {'mean est':>9} {'95% CI':>18} {'exact':>8} {'est-exact':>10} {'node cov':>9}")
        for t, row in s["teachers"].items():
            ci = "n/a" if np.isnan(row["ci95"]).any() else f"[{row['ci95'][0]:+.3f}, {row['ci95'][1]:+.3f}]"
            lines.append(
                f"  {t:<11} {row['mean_estimated']:>+9.3f} {ci:>18} {row['mean_exact']:>+8.3f} "
                f"{row['attenuation']:>+10.4f} {row['interval_coverage']:>9.3f}"
            )
    verdict = "PASS" if summary["passed"] else "FAIL"
    coverage = ", ".join(f"{m} {s['q_coverage']:.3f}" for m, s in summary["modes"].items() if not m.startswith("cascade"))
    lines.append("\nest-exact: estimated minus exact mean alignment (noise in Q pulls cosines toward 0)")
    formulas = np.max([s["gradient_error"] for s in summary["modes"].values()])
    published = np.max([list(s["published_difference"].values()) for s in summary["modes"].values()])
    signs = all(s["teachers"]["helpful"]["mean_exact"] > 0 > s["teachers"]["misleading"]["mean_exact"]
                for s in summary["modes"].values())
    lines.append(f"{verdict}: Q coverage {coverage} (floor {COVERAGE_FLOOR:.2f}) with the default counting; gradients "
                 f"against their definitions {formulas:.1e} (at most {GRADIENT_TOLERANCE:.0e}); published numbers against "
                 f"their recomputation {published:.1e} (at most {PUBLISHED_TOLERANCE:.0e}); exact alignment of the helpful "
                 f"teacher above 0 and of the misleading one below: {'yes' if signs else 'no'}")
    return "\n".join(lines)
