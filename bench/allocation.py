"""Targeted-rollout allocation strategies against exact ground truth (SPEC §4, §7).

Every strategy of ``harness.core.allocation.STRATEGIES`` is driven window by window, in rounds, on
synthetic questions (``harness.exact_lm.SyntheticLM``, exact Q and two teachers) of several shapes,
from the same initial rollouts and representative paths. At every decision point the GKD alignment
of each teacher (estimated Q on A(s)) is compared with the alignment from the exact Q on the same
A(s); a decision point is *accurate* when both teachers are within 0.1. Decision points whose exact
ideal gradient is 0 (every child of A(s) has the same exact Q) have no exact score and are counted
apart.

Printed per shape:
* every point of each strategy's certainty ladder (``paper``: ``n_target``; ``settle``: ``price``):
  targeted rollouts (all questions), decision points (DPs), accurate ones and their share, the share
  weighted by |exact g*| (SPEC §5's weight), rollouts per accurate DP, strategy rounds per window,
  the 95% Wilson coverage of exact Q over the children of A(s) and the mean error of Q (adaptive
  stopping could bias both), and the coverage of the 95% posterior intervals of the alignments;
* the rollouts at which 95% of DPs are accurate (interpolated in log(rollouts)), or that no point
  of the ladder gets there;
* for each paper point, the fewest rollouts at which an adaptive strategy has at least its accuracy
  and its number of DPs, and the ratio;
* fixed budgets per question, as shares of what ``paper`` spends at ``n_target = 100``: rollouts,
  DPs and accurate DPs against that paper run.

    python bench/allocation.py            # 12 questions per shape, about three minutes on one core
    python bench/allocation.py --quick    # 4 questions per shape, about one minute
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from harness.core import Rollouts, TreeStats, alignment_score, decision_support, gkd_gradient, ideal_gradient  # noqa: E402
from harness.core.allocation import STRATEGIES, AllocationParams, ScoredTokens, window_state  # noqa: E402
from harness.core.stats import wilson_interval  # noqa: E402
from harness.core.tree import path_common_prefixes  # noqa: E402
from harness.selfcheck import _representative_paths  # noqa: E402
from harness.exact_lm import EOS, TEACHERS, SyntheticLM, derive_seed  # noqa: E402

TOLERANCE = 0.1  # an alignment within this of the exact value is accurate
GOAL = 0.95  # share of decision points that must be accurate
N_INITIAL = 64
POSTERIOR_DRAWS = 400
PATHS_PER_OUTCOME = 2


@dataclasses.dataclass(frozen=True)
class Shape:
    """One family of synthetic questions and the depth windows used on it."""

    name: str
    vocab_size: int
    n_states: int
    horizon: int
    sharpness: float
    window: int  # first window width w

    def model(self, question: int) -> SyntheticLM:
        seed = derive_seed("allocation-bench", self.name, question)
        return SyntheticLM(seed=seed, vocab_size=self.vocab_size, n_states=self.n_states, horizon=self.horizon, sharpness=self.sharpness)


SHAPES = (
    Shape("short", vocab_size=6, n_states=8, horizon=10, sharpness=1.5, window=2),
    Shape("long", vocab_size=6, n_states=8, horizon=200, sharpness=1.5, window=8),
    Shape("long-wide", vocab_size=12, n_states=16, horizon=256, sharpness=1.0, window=8),
)
BUDGET_SHARES = (0.25, 1 / 3, 1.0)  # fixed budgets for the adaptive strategies, as shares of paper's default spend
# each strategy's certainty knob, from cheap to thorough
LADDERS = {
    "paper": ("n_target", (25, 50, 100, 200, 400, 800)),
    "settle": ("price", (1 / 250, 1 / 500, 1 / 1000, 1 / 2000, 1 / 4000)),
}


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One strategy on one question: what it spent and how good its decision points are."""

    rollouts: int  # targeted rollouts
    accurate: int  # decision points within TOLERANCE of exact for every teacher
    scored: int  # decision points with an exact score
    undefined: int  # decision points whose exact ideal gradient is 0
    q_covered: int  # children of A(s) whose 95% Wilson interval holds the exact Q
    q_children: int
    q_error_sum: float  # sum of (estimated - exact) Q over those children
    align_covered: int  # (decision point, teacher) pairs whose 95% posterior interval holds the exact alignment
    align_pairs: int
    stake_accurate: float  # sum of |exact g*| over accurate decision points
    stake: float  # sum of |exact g*| over scored decision points (SPEC §5's weight: what is at stake)
    windows: int
    rounds: int  # strategy calls that asked for rollouts, over all windows


def windows(length: int, width: int) -> list[tuple[int, int]]:
    """``[0,w), [w,3w), [3w,7w), ...`` covering ``length`` positions (SPEC §4)."""
    out, lo = [], 0
    while lo < length:
        out.append((lo, min(2 * lo + width, length)))
        lo = 2 * lo + width
    return out


def sample_targets(model: SyntheticLM, paths, path_R, position_R, token_R, count_R, seed: int) -> Rollouts:
    """Targeted rollouts of many (path, position, token) children at once: forced prefix ``path[:k] + [a]``.

    The same process as ``SyntheticLM.sample`` (inverse-CDF draws from the student's π, EOS ends
    with the state's reward, the horizon truncates with reward 0), advanced for all rollouts together
    because the synthetic sampler takes one prefix per call.
    """
    tables = model._tables  # the transition and reward tables: the vectorised sampler needs them directly
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(np.exp(model.logp), axis=-1)
    row = np.repeat(np.arange(len(count_R)), count_R)
    states = [model.states(p) for p in paths]
    k = position_R[row]
    a = token_R[row]
    before = np.array([states[j][kk] for j, kk in zip(path_R[row], k, strict=True)], dtype=np.int64)
    state = np.where(a == EOS, before, tables["transition"][before, a])
    depth = k + 1
    alive = (a != EOS) & (depth < model.horizon)
    reward = np.where(a == EOS, tables["success"][before], False)
    steps = max(model.horizon - int(depth.min(initial=model.horizon)), 0)
    tokens = np.full((len(row), steps), -1, dtype=np.int8)
    for s in range(steps):
        live = np.flatnonzero(alive)
        if not live.size:
            break
        u = rng.random(live.size)
        tok = (u[:, None] > cdf[depth[live], state[live]]).sum(axis=1).clip(max=model.vocab_size - 1)
        tokens[live, s] = tok
        ended = tok == EOS
        reward[live[ended]] = tables["success"][state[live[ended]]]
        state[live[~ended]] = tables["transition"][state[live[~ended]], tok[~ended]]
        depth[live] += 1
        alive[live] = ~ended & (depth[live] < model.horizon)
    lengths = (tokens >= 0).sum(axis=1)
    offsets = np.zeros(len(row) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Rollouts(
        tokens=tokens[tokens >= 0].astype(np.int64), offsets=offsets, reward=reward.astype(np.int64),
        forced_len=(k + 1).astype(np.int64), target_path=path_R[row].astype(np.int64), forced_token=a.astype(np.int64),
    )


def scored_tokens(model: SyntheticLM, path: np.ndarray, teacher_logp: list[np.ndarray]) -> ScoredTokens:
    """Every token at every position of ``path``, as one student and one pass per teacher give them."""
    states = model.states(path)[: len(path)]
    depth = np.arange(len(path))
    logp = model.logp[depth, states]  # [K, V]
    logp_t = np.stack([t[depth, states] for t in teacher_logp], axis=-1)  # [K, V, T]
    pi, pi_t = np.exp(logp), np.exp(logp_t)
    reverse_kl = (pi[..., None] * (logp[..., None] - logp_t)).sum(axis=1)  # [K, T]
    v = model.vocab_size
    return ScoredTokens(
        position_S=np.repeat(depth, v), token_S=np.tile(np.arange(v), len(path)), pi_S=pi.ravel(),
        pi_teacher_S_T=pi_t.reshape(-1, len(teacher_logp)), reverse_kl_S_T=np.repeat(reverse_kl, v, axis=0),
    )


def initial_tree(model: SyntheticLM, question_seed: int) -> tuple[TreeStats, list[np.ndarray]]:
    """Initial rollouts and representative paths (SPEC §4 steps 1-2), the same for every strategy."""
    toks, rewards, _ = model.sample([], N_INITIAL, derive_seed(question_seed, "initial"))
    paths = _representative_paths(toks, rewards, PATHS_PER_OUTCOME, np.random.default_rng(derive_seed(question_seed, "paths")))
    tree = TreeStats(paths)
    if paths:
        tree.ingest(Rollouts.from_lists(toks, rewards))
    return tree, paths


def enrich(model: SyntheticLM, tree: TreeStats, strategy: str, params: AllocationParams, width: int, seed: int) -> tuple[int, int, int]:
    """Drive ``strategy`` window by window, in rounds, as the pipeline does; return (rollouts, windows, rounds)."""
    paths = tree.paths
    teacher_logp = [model.teacher_logp(t) for t in TEACHERS]
    scored = [scored_tokens(model, p, teacher_logp) for p in paths]
    prefix = path_common_prefixes(paths)
    spans = windows(max(len(p) for p in paths), width)
    spent = rounds = 0
    for w, (lo, hi) in enumerate(spans):
        spent_window = 0
        for round_ in range(1000):
            state = window_state(w, len(spans), lo, hi, scored, [tree.children(j) for j in range(len(paths))], prefix, spent, spent_window)
            plan = STRATEGIES[strategy](state, params)
            if plan.total == 0:
                break
            tree.ingest(sample_targets(model, paths, plan.path_R, plan.position_R, plan.token_R, plan.count_R, derive_seed(seed, w, round_)))
            spent_window += plan.total
            rounds += 1
        else:
            raise RuntimeError(f"{strategy} did not finish window {w} in 1000 rounds")
        spent += spent_window
    return spent, len(spans), rounds


def evaluate(model: SyntheticLM, tree: TreeStats, n_min: int) -> dict:
    """Every distinct decision point against exact values: accurate, scored, undefined, Q coverage."""
    paths = tree.paths
    prefix = path_common_prefixes(paths)
    teachers = [np.exp(model.teacher_logp(t)) for t in TEACHERS]
    out = {"accurate": 0, "scored": 0, "undefined": 0, "q_covered": 0, "q_children": 0, "q_error_sum": 0.0,
           "stake_accurate": 0.0, "stake": 0.0, "align_covered": 0, "align_pairs": 0}
    rng = np.random.default_rng(derive_seed("allocation-bench", "posterior"))
    for j, path in enumerate(paths):
        states = model.states(path)
        ch = tree.children(j)
        cuts = np.flatnonzero(np.diff(ch.position)) + 1
        for idx in np.split(np.arange(len(ch.position)), cuts):
            k = int(ch.position[idx[0]])
            if k >= len(path) or (j > 0 and (prefix[:j, j] >= k).any()):
                continue  # past the path's end, or the same node on a lower path: counted there
            n, w, tok = ch.n[idx], ch.w[idx], ch.token[idx]
            support = decision_support(n, w / np.maximum(n, 1), n_min)
            if support is None:
                continue
            n, w, tok = n[support], w[support], tok[support]
            q_hat, q_true = w / n, model.exact_q[k, states[k], tok]
            pi = np.exp(model.logp[k, states[k], tok])
            lo, hi = wilson_interval(w, n)
            out["q_covered"] += int(((lo <= q_true) & (q_true <= hi)).sum())
            out["q_children"] += len(n)
            out["q_error_sum"] += float((q_hat - q_true).sum())
            g_hat, g_true = ideal_gradient(pi, q_hat), ideal_gradient(pi, q_true)
            g_T = [gkd_gradient(pi, t[k, states[k], tok]) for t in teachers]
            errors = [abs(alignment_score(g_hat, g) - alignment_score(g_true, g)) for g in g_T]
            if not np.isfinite(errors).all():
                out["undefined"] += 1
                continue
            out["scored"] += 1
            out["accurate"] += int(max(errors) <= TOLERANCE)
            # the 95% interval of each alignment under Jeffreys posterior draws of Q, as odiag selfcheck reports it
            q_D = rng.beta(w + 0.5, n - w + 0.5, size=(POSTERIOR_DRAWS, len(n)))
            pi_n = pi / pi.sum()
            g_D = pi_n * (q_D - (q_D @ pi_n)[:, None])
            for g in g_T:
                cos_D = (g_D @ g) / (np.linalg.norm(g_D, axis=1) * np.linalg.norm(g))
                lo_a, hi_a = np.nanquantile(cos_D, [0.025, 0.975])
                out["align_covered"] += int(lo_a - 1e-12 <= alignment_score(g_true, g) <= hi_a + 1e-12)
                out["align_pairs"] += 1
            out["stake"] += float(np.linalg.norm(g_true))
            out["stake_accurate"] += float(np.linalg.norm(g_true)) * (max(errors) <= TOLERANCE)
    return out


def run_one(shape: Shape, question: int, strategy: str, params: AllocationParams) -> Outcome | None:
    """One strategy on one question of ``shape``, from that question's initial rollouts."""
    model = shape.model(question)
    question_seed = derive_seed("allocation-bench", shape.name, question)
    tree, paths = initial_tree(model, question_seed)
    if not paths:
        return None
    rollouts, n_windows, rounds = enrich(model, tree, strategy, params, shape.window, derive_seed(question_seed, strategy, "targets"))
    return Outcome(rollouts=rollouts, windows=n_windows, rounds=rounds, **evaluate(model, tree, params.n_min))


def pooled(outcomes: list[Outcome]) -> dict:
    """Sums over questions, with the accurate share and Q coverage."""
    total = {f.name: sum(getattr(o, f.name) for o in outcomes) for f in dataclasses.fields(Outcome)}
    total["accuracy"] = total["accurate"] / max(total["scored"], 1)
    total["stake_accuracy"] = total["stake_accurate"] / max(total["stake"], 1e-300)
    total["q_coverage"] = total["q_covered"] / max(total["q_children"], 1)
    total["align_coverage"] = total["align_covered"] / max(total["align_pairs"], 1)
    total["decision_points"] = total["scored"] + total["undefined"]
    return total


def rollouts_at(points: list[tuple[int, float]], level: float) -> float:
    """Rollouts at which accuracy first reaches ``level`` along a ladder, interpolated in log(rollouts); inf if never."""
    points = sorted(points)
    for i, (r1, a1) in enumerate(points):
        if a1 >= level:
            if i == 0:
                return float(r1)
            r0, a0 = points[i - 1]
            t = (level - a0) / (a1 - a0) if a1 > a0 else 1.0
            return float(np.exp(np.log(r0) + t * (np.log(r1) - np.log(r0))))
    return float("inf")


def rollouts_to_match(rows: list[dict], ref: dict) -> float:
    """Fewest rollouts at which a ladder has at least ``ref``'s accuracy and decision points; inf if never.

    The cheapest point with both; when the point below it has the decision points but not the
    accuracy, interpolated between the two in log(rollouts).
    """
    rows = sorted(rows, key=lambda p: p["rollouts"])
    for i, p in enumerate(rows):
        if p["accuracy"] >= ref["accuracy"] and p["decision_points"] >= ref["decision_points"]:
            prev = rows[i - 1] if i else None
            if prev is None or prev["decision_points"] < ref["decision_points"]:
                return float(p["rollouts"])
            return rollouts_at([(prev["rollouts"], prev["accuracy"]), (p["rollouts"], p["accuracy"])], ref["accuracy"])
    return float("inf")


def ladder(shape: Shape, strategy: str, questions: int, budget_of: dict[int, int] | None = None) -> list[tuple[str, dict]]:
    """Every point of ``strategy``'s certainty ladder on ``questions`` questions of ``shape``: (label, pooled)."""
    knob, values = LADDERS[strategy]
    rows = []
    for v in values:
        params = AllocationParams(**{knob: v})
        outs = [o for q in range(questions) if (o := run_one(shape, q, strategy, params)) is not None]
        rows.append((f"{knob}={_fmt(v)}", pooled(outs)))
    return rows


def _fmt(v: float) -> str:
    return f"1/{round(1 / v)}" if 0 < v < 1 else str(v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 questions per shape instead of 12")
    parser.add_argument("--questions", type=int, default=None, help="questions per shape")
    args = parser.parse_args()
    questions = args.questions or (4 if args.quick else 12)
    start = time.perf_counter()
    print(f"{questions} questions per shape; a decision point is accurate when every teacher's GKD alignment "
          f"is within {TOLERANCE} of exact")
    for shape in SHAPES:
        print(f"\n[{shape.name}] vocab {shape.vocab_size}, states {shape.n_states}, horizon {shape.horizon}, "
              f"sharpness {shape.sharpness}, first window {shape.window}")
        print(f"  {'strategy':<8} {'knob':<16} {'rollouts':>9} {'DPs':>5} {'accurate':>8} {'acc %':>6} "
              f"{'|g*|-wtd %':>10} {'R/acc DP':>8} {'rounds/w':>8} {'Q cov':>6} {'Q bias':>7} {'align cov':>9}")
        points = {s: ladder(shape, s, questions) for s in LADDERS}
        for s, rows in points.items():
            for label, p in rows:
                bias = p["q_error_sum"] / max(p["q_children"], 1)
                print(f"  {s:<8} {label:<16} {p['rollouts']:>9,} {p['decision_points']:>5} {p['accurate']:>8} "
                      f"{100 * p['accuracy']:>6.1f} {100 * p['stake_accuracy']:>10.1f} {p['rollouts'] / max(p['accurate'], 1):>8.0f} "
                      f"{p['rounds'] / max(p['windows'], 1):>8.1f} {p['q_coverage']:>6.3f} {bias:>+7.4f} {p['align_coverage']:>9.3f}")
        best = {s: max(rows, key=lambda r: r[1]["accuracy"]) for s, rows in points.items()}
        for s, rows in points.items():
            at = rollouts_at([(p["rollouts"], p["accuracy"]) for _, p in rows], GOAL)
            print(f"  {s}: {GOAL:.0%} of decision points accurate " + (
                f"at {at:,.0f} rollouts" if np.isfinite(at) else
                f"never reached (best {100 * best[s][1]['accuracy']:.1f}% at {best[s][0]})"))
        # equal accuracy with no fewer decision points, against each paper point
        for s, rows in points.items():
            if s == "paper":
                continue
            for label, ref in points["paper"]:
                at = rollouts_to_match([p for _, p in rows], ref)
                print(f"  {s} vs paper {label:<14}: paper {ref['rollouts']:>9,} rollouts for {100 * ref['accuracy']:.1f}% "
                      f"of {ref['decision_points']} DPs; {s} " + (
                          f"{at:>9,.0f} -> {ref['rollouts'] / at:.2f}x fewer" if np.isfinite(at) else
                          f"not matched on its ladder (at most {max(p['decision_points'] for _, p in rows)} DPs)"))
        # fixed budgets: per question, a share of what paper spends at its defaults
        default = AllocationParams()
        ref = {q: o for q in range(questions) if (o := run_one(shape, q, "paper", default)) is not None}
        base = pooled(list(ref.values()))
        print(f"  fixed budget per question, as a share of paper's spend at n_target=100 ({base['rollouts']:,} rollouts, "
              f"{base['decision_points']} DPs, {base['accurate']} accurate, {100 * base['accuracy']:.1f}%):")
        for s in STRATEGIES:
            for share in (BUDGET_SHARES if s != "paper" else ()):
                runs = [run_one(shape, q, s, dataclasses.replace(default, budget=int(share * o.rollouts))) for q, o in ref.items()]
                p = pooled(runs)
                print(f"    {s:<8} x{share:<5.2f} rollouts {p['rollouts']:>9,} ({base['rollouts'] / max(p['rollouts'], 1):.2f}x fewer) "
                      f"DPs {p['decision_points']:>5} ({p['decision_points'] / max(base['decision_points'], 1):.2f}x) "
                      f"accurate {p['accurate']:>5} ({p['accurate'] / max(base['accurate'], 1):.2f}x, {100 * p['accuracy']:.1f}%)")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
