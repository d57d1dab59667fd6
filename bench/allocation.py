"""Targeted-rollout allocation judged on what users read, in generated tokens (SPEC §4, §5, §7).

Users read each teacher's mean alignment with its 95% CI, the teacher ranking and the
incorrect-minus-correct difference. This bench scores every strategy of
``harness.core.allocation.STRATEGIES`` on exactly those numbers, against exact values on the
synthetic models (``harness.exact_lm.SyntheticLM``: exact Q by backward induction, two teachers).

**Estimand** (the same for every strategy). On each question's representative paths, at every
position k with at least two likely tokens (exact π ≥ τ or π_T ≥ τ for some teacher, ``TAU``)
and an exact ideal gradient that is not 0: the exact GKD alignment cos(g*, g_T) on that support. Averaged as the
leaderboard averages (SPEC §5): per path (unweighted, and weighted by exact |g*|), per question
over its paths, per teacher over questions; incorrect-minus-correct per question over questions
with both kinds of path.

**Estimate**: what the pipeline reports from the strategy's tree (``harness/pipeline.py``,
``harness/core/stats.py``): decision points with A(s) = {n ≥ n_min} and max Q̂ > min Q̂, the GKD
alignment of Q̂ on A(s), per path means (weight |ĝ*|), per question, per teacher with a Student-t
95% CI over questions. The initial rollouts enter the tree without the chosen paths' own rollouts,
and a question's windows are its own paths' windows (as the pipeline does).

**Error**, over repeated seeds (each seed: fresh questions, fresh rollouts, its own exact values):
RMSE of each teacher's mean alignment (both teachers pooled), unweighted and |g*|-weighted, RMSE of
incorrect-minus-correct, the share of seeds whose teacher ranking is right, and the share of
(seed, teacher) CIs that hold the exact value (a strategy is admissible at coverage ≥ 0.93).

**Cost**: targeted rollouts, rounds (backend calls: per window the most rounds any question
needed, since the pipeline batches questions), and generated tokens. A rollout is simulated only
while it stays on some tracked path (the tree needs nothing more: SPEC §6's compact record); after
it leaves every path, its reward is drawn from the exact value of the state it reached and its
remaining tokens are counted as their exact expectation. The AIME-like shape (traces of ~100 to
~2,000 tokens, windows 0-10) is affordable this way. ``tests/test_allocation.py`` checks that this
simulation gives exact Q and the expected lengths of full sampling.

The last line is the cost ratio at equal error: paper's generated tokens at ``n_target = 100``
divided by ``settle``'s (the README's recommendation for cheaper runs) at its default setting, when
that setting's RMSE of the per-teacher mean alignment is no worse than paper's and its coverage is at
least 0.93 (otherwise the ratio at the cheapest measured setting that is, marked ``*``; ``-`` when
none is; ``n/a`` on a shape where paper's RMSE is no better than answering 0 for every teacher). The lines before it give the same for the other strategies, paper's own other settings
included. ``--estimators`` also scores the split-half, halves, shrunk and shrunk-sqrt estimators on every
tree (`ESTIMATORS`; computed only then: they add 6-15% to a ``--quick`` run on 2 cores), with one more line
each: the same ratio for that estimate on any strategy's tree, against paper's plain estimate, naming the
row.

Read ratios from the full run: at ``--quick`` size (36 questions per row) RMSE differences under
about a quarter are noise, and a ratio can flip between ``-`` and 5x.

    python bench/allocation.py            # 24 seeds x 8 questions per shape
    python bench/allocation.py --quick    # 6 seeds x 6 questions per shape, without the slowest rows
    python bench/allocation.py --shapes short,long --row settle:price=0.0000625   # one more setting
    python bench/allocation.py --shapes short,long --row survey:coupled=1         # coupled siblings
    python bench/allocation.py --shapes aime-like --rows-only --row survey:n_min=2,visits=2,positions=256   # only paper and this
    python bench/allocation.py --coupling-noise   # what coupling does to the ideal gradient's noise, per shape
    python bench/allocation.py --resolvability    # how many visits each position's cosine needs, per shape
    python bench/allocation.py --multilevel       # what multilevel debiasing of the cosine would cost, per shape
    python bench/allocation.py --importance       # whether teacher-sampled, reweighted rollouts would cost less, per shape
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import dataclasses  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from typing import NamedTuple  # noqa: E402

import numpy as np  # noqa: E402

from harness.core import Rollouts, TreeStats, alignment_score, decision_support, gkd_gradient, ideal_gradient, t_ci  # noqa: E402
from harness.core.allocation import STRATEGIES, AllocationParams, ScoredTokens, _cosines, _uniform, window_state  # noqa: E402
from harness.core.tree import ChildTable, path_common_prefixes  # noqa: E402
from harness.cli import at_least  # noqa: E402
from harness.exact_lm import EOS, TEACHERS, SyntheticLM, derive_seed  # noqa: E402

TAU = 0.05  # the estimand's support: tokens with exact π ≥ TAU or π_T ≥ TAU for some teacher
N_INITIAL = 64
PATHS_PER_OUTCOME = 2
COVERAGE_FLOOR = 0.93
REFERENCE = ("paper", "n_target=100")  # the paper's strategy at the paper's setting: cost ratio 1
RECOMMENDED = "settle"  # the strategy the last line measures (the README's cheaper recommendation)


@dataclasses.dataclass(frozen=True)
class Shape:
    """One family of synthetic questions and the depth windows used on it."""

    name: str
    vocab_size: int
    n_states: int
    horizon: int
    sharpness: float
    window: int  # first window width w
    n_min: int = 20
    eos_offset: float = 0.0

    def model(self, seed: int, question: int) -> SyntheticLM:
        return SyntheticLM(
            seed=derive_seed("allocation-bench", self.name, seed, question), vocab_size=self.vocab_size,
            n_states=self.n_states, horizon=self.horizon, sharpness=self.sharpness, eos_offset=self.eos_offset,
        )


SHAPES = (
    Shape("short", vocab_size=6, n_states=8, horizon=10, sharpness=1.5, window=2),
    Shape("long", vocab_size=6, n_states=8, horizon=200, sharpness=1.5, window=8),
    Shape("long-wide", vocab_size=12, n_states=16, horizon=256, sharpness=1.0, window=8),
    # AIME-like: traces of hundreds to a few thousand tokens, windows 0-10, n_min 10 as for AIME
    Shape("aime-like", vocab_size=6, n_states=8, horizon=4096, sharpness=1.5, window=2, n_min=10, eos_offset=-4.0),
)
# every strategy's settings, the reference first; the recommended strategy's default is marked "default"
SETTINGS: dict[str, list[tuple[str, dict]]] = {
    "paper": [("n_target=100", {}), ("n_target=50", {"n_target": 50}), ("n_target=25", {"n_target": 25}),
              ("n_target=20", {"n_target": 20}), ("n_target=200", {"n_target": 200}), ("k_window=4", {"k_window": 4})],
    "settle": [("default", {})],
    "survey": [("default", {}), ("positions=8", {"positions": 8}), ("positions=32", {"positions": 32}),
               ("positions=128", {"positions": 128}), ("visits=4n_min", {"visits": -4})],
}
# --quick leaves out the slowest rows (settle plans each node with posterior draws: ~10 s per AIME-like question)
QUICK_SKIP = {("paper", "n_target=200"), ("settle", "default", "aime-like")}


# --------------------------------------------------------------------------- one question


class World:
    """One synthetic question: the exact tables the simulation and the ground truth read."""

    def __init__(self, model: SyntheticLM):
        self.model = model
        tab = model._tables  # transition and reward tables: the vectorised sampler needs them directly
        self.transition, self.success = tab["transition"], tab["success"]
        self.pi = np.exp(model.logp)  # [H, S, V]
        self.cdf = np.cumsum(self.pi, axis=-1)
        self.teachers = [np.exp(model.teacher_logp(t)) for t in TEACHERS]
        self.exact_q = model.exact_q
        h, s = self.pi.shape[:2]
        # value and expected generated tokens from depth t in state s (the horizon truncates: 0, 0)
        self.value = np.zeros((h + 1, s))
        self.remaining = np.zeros((h + 1, s))
        for t in range(h - 1, -1, -1):
            self.value[t] = (self.pi[t] * self.exact_q[t]).sum(axis=-1)
            after = np.where(np.arange(self.pi.shape[2]) == EOS, 0.0, self.remaining[t + 1][self.transition])
            self.remaining[t] = (self.pi[t] * (1.0 + after)).sum(axis=-1)


def sample_targets(world: World, paths: Sequence[np.ndarray], states: Sequence[np.ndarray], path_R, position_R, token_R,
                   count_R, rng: np.random.Generator, coupling: int | None = None) -> tuple[Rollouts, float]:
    """Targeted rollouts of children ``paths[j][:k] + [a]``, simulated while on a tracked path; (batch, tokens).

    Each continuation holds its tokens up to the first one that leaves every tracked path (all
    that its exits depend on); the reward is then drawn from the exact value of the state reached,
    and the remaining generated tokens are counted as their exact expectation.

    ``coupling`` (a round's key) couples siblings: completion ``i`` of every child of node ``(j, k)``
    draws the same uniform at each step after the forced child (inverse-CDF sampling from counter-based
    uniforms, as the ``hf`` backend would if siblings shared one seed), so siblings that reach the same
    state go on identically.
    Each rollout is still an exact on-policy sample; coupled rollouts run to the end.
    """
    h = world.pi.shape[0]
    row = np.repeat(np.arange(len(count_R)), count_R)
    j, k, a = path_R[row], position_R[row], token_R[row]
    n = len(row)
    lengths = np.array([len(p) for p in paths])
    padded = np.full((len(paths), lengths.max() + 1), -2, np.int64)
    for i, p in enumerate(paths):
        padded[i, : len(p)] = p
    prefix = path_common_prefixes(paths)
    before = np.array([states[jj][kk] for jj, kk in zip(j, k, strict=True)], np.int64)
    # tracked paths the rollout is on after its forced child: they share path j[:k] and take a at k
    on = (prefix[j] >= k[:, None]).T & (padded[:, k] == a)  # [P, R]
    reward = np.zeros(n, np.int64)
    tokens = np.zeros(n)
    eos = a == EOS
    reward[eos] = world.success[before[eos]]
    state = np.where(eos, before, world.transition[before, np.where(eos, 1, a)])
    depth = k + 1
    alive = ~eos & (depth < h)
    steps_i, steps_t = [], []
    if coupling is not None:  # completion i of every child of a node draws the same uniforms, step by step
        index = np.arange(n) - np.repeat(np.cumsum(count_R) - count_R, count_R)
    for _ in range(h):
        tracked = alive & on.any(axis=0)
        live = np.flatnonzero(alive if coupling is not None else tracked)
        if not live.size:
            break
        if coupling is None:
            u = rng.random(live.size)
        else:  # coupled rollouts are simulated to the end: an exact-value draw would break the coupling
            u = _uniform(coupling, j[live], k[live], index[live], depth[live] - k[live])
        tok = (u[:, None] > world.cdf[depth[live], state[live]]).sum(axis=1).clip(max=world.pi.shape[2] - 1)
        keep = slice(None) if coupling is None else tracked[live]  # the batch holds tokens only while on a path
        steps_i.append(live[keep])
        steps_t.append(tok[keep])
        tokens[live] += 1
        on[:, live] &= padded[:, np.minimum(depth[live], padded.shape[1] - 1)] == tok
        ended = tok == EOS
        reward[live[ended]] = world.success[state[live[ended]]]
        state[live[~ended]] = world.transition[state[live[~ended]], tok[~ended]]
        depth[live] += 1
        alive[live] = ~ended & (depth[live] < h)
    # off every path and still going: the exact value and expected length of the rest
    rest = np.flatnonzero(alive)
    reward[rest] = rng.random(rest.size) < world.value[depth[rest], state[rest]]
    tokens[rest] += world.remaining[depth[rest], state[rest]]
    idx = np.concatenate(steps_i) if steps_i else np.zeros(0, np.int64)
    tok = np.concatenate(steps_t) if steps_t else np.zeros(0, np.int64)
    order = np.argsort(idx, kind="stable")  # steps are in order, so each rollout's tokens stay in order
    count = np.bincount(idx, minlength=n)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(count, out=offsets[1:])
    batch = Rollouts(tokens=tok[order].astype(np.int64), offsets=offsets, reward=reward, forced_len=(k + 1).astype(np.int64),
                     target_path=j.astype(np.int64), forced_token=a.astype(np.int64))
    return batch, float(tokens.sum())


def scored_tokens(world: World, path: np.ndarray, states: np.ndarray) -> ScoredTokens:
    """Every token at every position of ``path``, as one student and one pass per teacher give them."""
    depth = np.arange(len(path))
    pi = world.pi[depth, states[: len(path)]]
    pi_t = np.stack([t[depth, states[: len(path)]] for t in world.teachers], axis=-1)
    reverse_kl = (pi[..., None] * (np.log(pi)[..., None] - np.log(pi_t))).sum(axis=1)
    v = pi.shape[1]
    return ScoredTokens(
        position_S=np.repeat(depth, v), token_S=np.tile(np.arange(v), len(path)), pi_S=pi.ravel(),
        pi_teacher_S_T=pi_t.reshape(-1, len(world.teachers)), reverse_kl_S_T=np.repeat(reverse_kl, v, axis=0),
    )


def windows(length: int, width: int) -> list[tuple[int, int]]:
    """``[0,w), [w,3w), [3w,7w), ...`` covering ``length`` positions (SPEC §4)."""
    out, lo = [], 0
    while lo < length:
        out.append((lo, min(2 * lo + width, length)))
        lo = 2 * lo + width
    return out


@dataclasses.dataclass
class Question:
    """A question after SPEC §4 steps 1-2: its paths, their outcomes, and a tree of the other initial rollouts."""

    world: World
    paths: list[np.ndarray]
    correct: list[bool]
    states: list[np.ndarray]
    initial: Rollouts
    window: int  # first window width w


def prepare(shape: Shape, seed: int, question: int) -> Question | None:
    """Initial rollouts and representative paths (correct, and wrong ones that ended: never truncated)."""
    model = shape.model(seed, question)
    world = World(model)
    toks, rewards, truncated = model.sample([], N_INITIAL, derive_seed("allocation-bench", shape.name, seed, question, "initial"))
    rng = np.random.default_rng(derive_seed("allocation-bench", shape.name, seed, question, "paths"))
    chosen, correct = [], []
    for outcome in (1, 0):
        seen = set()
        for i in rng.permutation(len(toks)):
            key = toks[i].tobytes()
            if rewards[i] == outcome and not truncated[i] and key not in seen and len(seen) < PATHS_PER_OUTCOME:
                seen.add(key)
                chosen.append(int(i))
                correct.append(bool(outcome))
    if not chosen:
        return None
    rest = [i for i in range(len(toks)) if i not in set(chosen)]  # a path's own rollout stays out of the tree
    initial = Rollouts.from_lists([toks[i] for i in rest], [int(rewards[i]) for i in rest])
    paths = [toks[i] for i in chosen]
    return Question(world, paths, correct, [model.states(p) for p in paths], initial, shape.window)


@dataclasses.dataclass(frozen=True)
class Spend:
    rollouts: int
    tokens: float
    rounds_W: tuple[int, ...]  # rounds per window


def enrich(q: Question, tree: TreeStats, strategy: str, params: AllocationParams, seed: int, coupled: bool = False) -> Spend:
    """Drive ``strategy`` window by window, in rounds, over the question's own windows (as the pipeline does)."""
    scored = [scored_tokens(q.world, p, s) for p, s in zip(q.paths, q.states, strict=True)]
    prefix = path_common_prefixes(q.paths)
    spans = windows(max(len(p) for p in q.paths), q.window)
    spent, tokens, rounds_W = 0, 0.0, []
    rng = np.random.default_rng(seed)
    for w, (lo, hi) in enumerate(spans):
        spent_window = 0
        for round_ in range(1000):
            state = window_state(w, len(spans), lo, hi, scored, [tree.children(j) for j in range(len(q.paths))], prefix, spent, spent_window)
            plan = STRATEGIES[strategy](state, params)
            if plan.total == 0:
                break
            batch, t = sample_targets(q.world, q.paths, q.states, plan.path_R, plan.position_R, plan.token_R, plan.count_R, rng,
                                      int(rng.integers(2**40)) if coupled else None)
            tree.ingest(batch)
            tokens += t
            spent_window += plan.total
        else:
            raise RuntimeError(f"{strategy} did not finish window {w} in 1000 rounds")
        rounds_W.append(round_)
        spent += spent_window
    return Spend(spent, tokens, tuple(rounds_W))


def sibling_rewards(q: Question, j: int, k: int, children: np.ndarray, count: int, coupling: int | None) -> np.ndarray:
    """``[A, count]`` rewards of ``count`` targeted rollouts of each child ``paths[j][:k] + [a]`` (`sample_targets`)."""
    n = len(children)
    batch, _ = sample_targets(q.world, q.paths, q.states, np.full(n, j), np.full(n, k), children, np.full(n, count),
                              np.random.default_rng(derive_seed("allocation-bench", "siblings", q.world.model.seed, j, k)), coupling)
    return batch.reward.reshape(n, count).astype(float)


def gradient_noise(pi_A: np.ndarray, r_A_N: np.ndarray) -> float:
    """The noise of ĝ* = π̃ ⊙ (r − π̃·r) over completions: Σ_a of its variance across the columns
    of ``r_A_N`` (completion ``i`` of every child), π̃ the children's renormalised probabilities."""
    p_A = pi_A / pi_A.sum()
    return float((p_A[:, None] * (r_A_N - p_A @ r_A_N)).var(axis=1).sum())


def coupling_noise(shape: Shape, seeds: int = 4, questions: int = 6, count: int = 400, positions: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Per node (about ``positions`` per path): the noise of ĝ* = π̃ ⊙ (Q̂ − π̃·Q̂) over the likely
    children (exact π ≥ `TAU`) with coupled siblings, over that with independent ones; and the node's
    exact Q spread over those children (``--coupling-noise``)."""
    ratio, spread = [], []
    for seed, question, q, j, k in path_positions(shape, seeds, questions, positions):
        state = q.states[j][k]
        likely = np.flatnonzero(q.world.pi[k, state] >= TAU)
        if len(likely) < 2:
            continue
        noise = [gradient_noise(q.world.pi[k, state, likely], sibling_rewards(q, j, k, likely, count, c))
                 for c in (derive_seed(seed, question, j, k), None)]
        if noise[1] > 0:
            ratio.append(noise[0] / noise[1])
            spread.append(np.ptp(q.world.exact_q[k, state, likely]))
    return np.array(ratio), np.array(spread)


def path_positions(shape: Shape, seeds: int, questions: int, positions: int) -> Iterator[tuple[int, int, Question, int, int]]:
    """``(seed, question, q, j, k)``: about ``positions`` evenly spaced depths ``k`` of every representative
    path ``j`` of ``questions`` questions per seed (the tree-free measurements' sample)."""
    for seed in range(seeds):
        for question in range(questions):
            q = prepare(shape, seed, question)
            if q is None:
                continue
            for j, path in enumerate(q.paths):
                for k in range(0, len(path), max(1, len(path) // positions)):
                    yield seed, question, q, j, k


# --------------------------------------------------------------------------- values per path


class ExactNode(NamedTuple):
    """One position of a path on the estimand's support: exact π, Q and ideal gradient there, and
    the exact GKD alignment per teacher."""

    pi_A: np.ndarray
    q_A: np.ndarray
    g_A: np.ndarray
    cos_T: list[float]


def estimand_support(w: World, k: int, state: int) -> np.ndarray:
    """The estimand's tokens at depth ``k`` in ``state``: exact π ≥ `TAU` or π_T ≥ `TAU` for some teacher."""
    return (w.pi[k, state] >= TAU) | np.any([t[k, state] >= TAU for t in w.teachers], axis=0)


def exact_node(w: World, k: int, state: int) -> ExactNode | None:
    """The estimand at depth ``k`` in ``state``, on the tokens with exact π ≥ `TAU` or π_T ≥ `TAU` for some
    teacher; None where those are fewer than two or the exact ideal gradient is 0 (no alignment)."""
    support = estimand_support(w, k, state)
    if support.sum() < 2:
        return None
    pi_A, q_A = w.pi[k, state, support], w.exact_q[k, state, support]
    if q_A.max() - q_A.min() <= 1e-12:
        return None
    g_A = ideal_gradient(pi_A, q_A)
    return ExactNode(pi_A, q_A, g_A, [alignment_score(g_A, gkd_gradient(pi_A, t[k, state, support])) for t in w.teachers])


def exact_path_values(q: Question) -> np.ndarray:
    """``[P, T, 2]`` exact mean alignment per path and teacher: unweighted, |g*|-weighted (nan: no position)."""
    w = q.world
    out = np.full((len(q.paths), len(TEACHERS), 2), np.nan)
    for j, (path, states) in enumerate(zip(q.paths, q.states, strict=True)):
        cos, norm = [], []
        for k in range(len(path)):
            node = exact_node(w, k, states[k])
            if node is not None:
                cos.append(node.cos_T)
                norm.append(np.linalg.norm(node.g_A))
        if cos:
            cos, norm = np.array(cos), np.array(norm)
            out[j, :, 0] = cos.mean(axis=0)
            out[j, :, 1] = norm @ cos / norm.sum()
    return out


def softmax_jacobian(pi_A: np.ndarray) -> np.ndarray:
    """M = diag(π̃) − π̃ π̃ᵀ, π̃ the renormalised probabilities: the ideal gradient is g* = M Q (SPEC §3)."""
    p_A = pi_A / pi_A.sum()
    return np.diag(p_A) - np.outer(p_A, p_A)


def noise_trace(m: np.ndarray, var_A: np.ndarray) -> float:
    """E|ĝ* − g*|² = tr(M D M) = Σ_a Var(Q̂_a) |M e_a|² for independent Q̂ with variances ``var_A``
    (D = diag(var_A), ĝ* = M Q̂, ``m`` = `softmax_jacobian`)."""
    return float(var_A @ (m * m).sum(axis=0))


def visits_to_resolve(pi_A: np.ndarray, q_A: np.ndarray) -> float:
    """Visits per child at which the noise of ĝ* equals |g*|²: `noise_trace` at one visit, Var Q̂_a =
    Q_a (1 − Q_a), over |g*|² (n visits divide the noise by n). Below it the plug-in cosine is mostly noise."""
    m = softmax_jacobian(pi_A)
    g_A = m @ q_A
    return noise_trace(m, q_A * (1 - q_A)) / float(g_A @ g_A)


RESOLVE_EDGES = (100, 1000)  # visits per child: paper's n_target, and ten times it


def resolvability(shape: Shape, seeds: int = 3, questions: int = 6, positions: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Per position of the estimand (about ``positions`` per path): `visits_to_resolve`, and the exact
    GKD alignment per teacher ``[N, T]`` (``--resolvability``)."""
    need, cos = [], []
    for _, _, q, j, k in path_positions(shape, seeds, questions, positions):
        node = exact_node(q.world, k, q.states[j][k])
        if node is not None:
            need.append(visits_to_resolve(node.pi_A, node.q_A))
            cos.append(node.cos_T)
    return np.array(need), np.array(cos)


class Multilevel(NamedTuple):
    """`multilevel`'s moments over the estimand's positions ``[N, ...]``, helpful teacher first."""

    exact_N_T: np.ndarray  # exact GKD alignment
    base_var_N: np.ndarray  # variance of the plug-in cosine at ``base`` visits per child (helpful teacher)
    delta_N_L: np.ndarray  # E[Δ_l], l = 1..levels (helpful teacher)
    delta2_N_L: np.ndarray  # E[Δ_l²]
    base_bias: float  # mean over positions of E[cos at base visits] − exact (helpful teacher)
    deep_bias: float  # the same at base · 2^levels visits
    per_seed: float  # positions per seed
    tokens_per_visit: float  # generated tokens per seed of one visit to every likely child of every position


def multilevel(shape: Shape, base: int = 10, levels: int = 5, draws: int = 600, seeds: int = 6,
               questions: int = 8, positions: int = 200) -> Multilevel:
    """The moments that decide whether randomised multilevel debiasing (Rhee and Glynn's single-term
    estimator) can make the plug-in cosine unbiased for the aggregate at a fraction of the visits
    (``--multilevel``).

    At every position of the estimand, each child's rewards come in 2^levels nested blocks of ``base``
    binomial draws from its exact Q; level l reads the first 2^l blocks. Its antithetic difference is
    Δ_l = cos(level l) − ½ (cos(first half) + cos(second half)), the halves being level l − 1 and the
    next 2^(l−1) blocks (a Q̂ that ties counts 0, as `half_cosines` does). The single-term estimator
    cos(base) + Δ_N / p_N, with level N drawn with probability p_N, is unbiased for the expected cosine
    at base · 2^levels visits; its variance is Var cos(base) + Σ_l E[Δ_l²] / p_l − (Σ_l E[Δ_l])².
    The moments come from about ``positions`` evenly spaced depths per path; ``per_seed`` and
    ``tokens_per_visit`` count every position (a visit to child a generates a and, after it, the exact
    expected remaining tokens).
    """
    rng = np.random.default_rng(derive_seed("allocation-bench", shape.name, "multilevel"))
    exact, base_var, delta, delta2, base_gap, deep_gap = [], [], [], [], [], []
    for _, _, q, j, k in path_positions(shape, seeds, questions, positions):
        w, state = q.world, q.states[j][k]
        node = exact_node(w, k, state)
        if node is None:
            continue
        support = estimand_support(w, k, state)
        g_T_A = np.stack([gkd_gradient(node.pi_A, t[k, state, support]) for t in w.teachers])
        wins_D_B_A = np.cumsum(rng.binomial(base, node.q_A, size=(draws, 2 ** levels, len(node.q_A))), axis=1)

        def cos_D(wins_D_A: np.ndarray, visits: int) -> np.ndarray:
            q_D_A = wins_D_A / visits
            tied_D = (q_D_A == q_D_A[:, :1]).all(axis=1)
            return np.where(tied_D, 0.0, _cosines(node.pi_A, q_D_A, g_T_A)[:, 0])

        level = [cos_D(wins_D_B_A[:, 2 ** l - 1], base * 2 ** l) for l in range(levels + 1)]
        d_L_D = np.stack([level[l] - 0.5 * (level[l - 1] + cos_D(wins_D_B_A[:, 2 ** l - 1] - wins_D_B_A[:, 2 ** (l - 1) - 1],
                                                                  base * 2 ** (l - 1)))
                          for l in range(1, levels + 1)])
        exact.append(node.cos_T)
        base_var.append(level[0].var())
        delta.append(d_L_D.mean(axis=1))
        delta2.append((d_L_D ** 2).mean(axis=1))
        base_gap.append(level[0].mean() - node.cos_T[0])
        deep_gap.append(level[-1].mean() - node.cos_T[0])
    counted, tokens = 0, 0.0
    for _, _, q, j, k in path_positions(shape, seeds, questions, shape.horizon):
        w, state = q.world, q.states[j][k]
        if exact_node(w, k, state) is not None:
            children = np.flatnonzero(estimand_support(w, k, state))
            after = np.where(children == EOS, 0.0, w.remaining[k + 1][w.transition[state, children]])
            counted, tokens = counted + 1, tokens + float((1.0 + after).sum())
    return Multilevel(np.array(exact), np.array(base_var), np.array(delta), np.array(delta2),
                      float(np.mean(base_gap)), float(np.mean(deep_gap)), counted / seeds, tokens / seeds)


def multilevel_error(m: Multilevel, base: int, visits: float) -> tuple[np.ndarray, float]:
    """The level probabilities p_l ∝ √(E[Δ_l²] / c_l) (c_l = base · 2^l visits per child, the optimum of
    variance times cost) scaled to spend ``visits`` per child at every position on average, and the
    standard error of a seed's mean over its positions: √(mean variance / positions per seed)."""
    d2_L = m.delta2_N_L.mean(axis=0)
    cost_L = base * 2.0 ** np.arange(1, len(d2_L) + 1)
    p_L = np.sqrt(d2_L / cost_L)
    p_L = np.minimum(p_L * (visits - base) / (p_L @ cost_L), 1.0)
    variance = m.base_var_N.mean() + (d2_L / p_L).sum() - (m.delta_N_L.mean(axis=0).sum()) ** 2
    return p_L, float(np.sqrt(variance / m.per_seed))


def importance_moments(w: World, proposal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For continuations sampled from ``proposal`` ``[H, S, V]`` instead of the student and weighted by
    the likelihood ratio ∏ π/q of their tokens: E_q[(w·R)²] and the expected generated tokens from depth
    t in state s, ``[H + 1, S]`` each (backward induction; a token the proposal never draws but the
    student does, on a path that can win, makes the second moment infinite)."""
    h, s, v = w.pi.shape
    second_H_S, tokens_H_S = np.zeros((h + 1, s)), np.zeros((h + 1, s))
    eos = np.arange(v) == EOS
    for t in range(h - 1, -1, -1):
        after_S_V = np.where(eos, w.success[:, None].astype(float), second_H_S[t + 1][w.transition])
        drawn_S_V = proposal[t] > 0
        ratio_S_V = np.where(drawn_S_V, w.pi[t] ** 2 / np.where(drawn_S_V, proposal[t], 1.0), 0.0)
        with np.errstate(over="ignore", invalid="ignore"):  # weights past the float range: an infinite moment
            second_H_S[t] = np.where(~drawn_S_V & (w.pi[t] > 0) & (after_S_V > 0), np.inf, ratio_S_V * after_S_V).sum(axis=-1)
        tokens_H_S[t] = (proposal[t] * (1.0 + np.where(eos, 0.0, tokens_H_S[t + 1][w.transition]))).sum(axis=-1)
    return second_H_S, tokens_H_S


IMPORTANCE_PROPOSALS = ("student", "helpful teacher", "half student, half helpful", "posterior π·Q/V")
"""``--importance``'s proposals for a targeted rollout's continuation: the student itself (plain
rollouts: the reference), the helpful teacher (which tilts toward high-Q tokens, as a teacher that
knows the solution does), their even mixture (a defensive proposal), and the student conditioned on
success, π·Q/V, which needs the exact Q: the zero-variance proposal, as a check of the arithmetic."""


def importance(shape: Shape, seeds: int = 3, questions: int = 6, positions: int = 200) -> dict[str, tuple[float, float]]:
    """Whether importance sampling the continuations of targeted rollouts from a teacher could make
    Q̂ cheaper (``--importance``): per proposal of `IMPORTANCE_PROPOSALS`, the variance of one weighted
    rollout's reward summed over every likely child (the estimand's support, EOS aside: its reward is
    known) of about ``positions`` depths per path, as a ratio to plain rollouts' (above 1: fewer
    rollouts for the same noise), and the generated tokens per rollout as a ratio to plain rollouts'
    (above 1: cheaper rollouts). A weighted rollout also needs the student's log-probabilities of the
    proposal's tokens, a scoring pass these ratios do not count."""
    plain_var = plain_tokens = 0.0
    var, tokens = dict.fromkeys(IMPORTANCE_PROPOSALS, 0.0), dict.fromkeys(IMPORTANCE_PROPOSALS, 0.0)
    world, moments = None, {}  # the question whose moments are at hand (positions come question by question)
    for _, _, q, j, k in path_positions(shape, seeds, questions, positions):
        w, state = q.world, q.states[j][k]
        if exact_node(w, k, state) is None:
            continue
        if w is not world:
            helpful = w.teachers[TEACHERS.index("helpful")]
            value = w.value[:-1, :, None]
            posterior = np.where(value > 0, w.pi * w.exact_q / np.where(value > 0, value, 1.0), w.pi)
            world, moments = w, {name: importance_moments(w, proposal) for name, proposal in zip(
                IMPORTANCE_PROPOSALS, (w.pi, helpful, 0.5 * (w.pi + helpful), posterior), strict=True)}
        children = np.flatnonzero(estimand_support(w, k, state) & (np.arange(w.pi.shape[2]) != EOS))
        after = w.transition[state, children]
        q_A = w.value[k + 1][after]
        plain_var += float((q_A * (1.0 - q_A)).sum())
        plain_tokens += float((1.0 + w.remaining[k + 1][after]).sum())
        for name, (second, tok) in moments.items():
            var[name] += float((second[k + 1][after] - q_A ** 2).sum())
            tokens[name] += float((1.0 + tok[k + 1][after]).sum())
    return {name: (plain_var / var[name] if var[name] > 0 else np.inf, plain_tokens / tokens[name]) for name in IMPORTANCE_PROPOSALS}


ESTIMATORS = ("plain", "split-half", "halves", "shrunk", "shrunk-sqrt")
"""``plain``: the pipeline's cosine of Q̂ (SPEC §3), weight |ĝ*|. ``split-half``: the cosine with |g*|
from the product of two independent halves of each child's visits, whose expectation is |g*|²
(computed in closed form: |ĝ*|² minus the trace of ĝ*'s estimated covariance), clipped to [-1, 1]
and undefined where that estimate is not positive; weighted as Σ <ĝ*, ĝ_T>/|ĝ_T| over Σ |g*| estimates
(clipped to [-1, 1] too: the sum of estimates can be near 0).
``halves``: Richardson extrapolation in the visits (a delete-half jackknife): if a node's expected
cosine at n visits is its exact value plus c/n, then 2·cos(n) − E[cos(n/2)] removes that term; E[cos(n/2)]
is the mean cosine over `HALF_DRAWS` random halves of each child's visits (hypergeometric wins; a half
whose Q̂ tie counts 0, no direction), on the pipeline's decision points, weighted as ``plain``.
``shrunk``: the plain cosine times the node's `reliability` r̂ (the share of |ĝ*|² that is signal), and
``shrunk-sqrt`` times √r̂: the other way from the two above, less noise for more attenuation. Where the Q̂
spread is within its noise the cosine is mostly noise and goes to 0; where it is resolved, r̂ ≈ 1 and the
cosine stays. Weighted as ``plain``."""


def scored_estimators(extra: bool) -> tuple[str, ...]:
    """The estimators a run scores: every one of `ESTIMATORS` with ``extra`` (``--estimators``), else ``plain``."""
    return ESTIMATORS if extra else ESTIMATORS[:1]


def debiased_norm2(pi_A: np.ndarray, n_A: np.ndarray, w_A: np.ndarray) -> float:
    """An unbiased estimate of |g*|²: |ĝ*|² − Σ_a V̂ar(Q̂_a) |M e_a|², M = diag(π̃) − π̃ π̃ᵀ (ĝ* = M Q̂).

    V̂ar(Q̂_a) = Q̂_a (1 − Q̂_a) / (n_a − 1) is unbiased for Q_a (1 − Q_a) / n_a, and the children's
    Q̂ are independent, so the expectation is |g*|²; the same value as the mean over splits of the
    visits into two halves of <ĝ*₁, ĝ*₂>.
    """
    m = softmax_jacobian(pi_A)
    q = w_A / n_A
    g = m @ q
    return float(g @ g) - noise_trace(m, q * (1 - q) / np.maximum(n_A - 1, 1))


def reliability(debiased: np.ndarray, norm2: np.ndarray) -> np.ndarray:
    """`debiased_norm2` over |ĝ*|² (``norm2``), clipped to [0, 1]: an estimate of |g*|² / (|g*|² + noise),
    the share of the plug-in ideal gradient's square norm that is not noise (0 where the Q̂ tie)."""
    debiased, norm2 = np.asarray(debiased, float), np.asarray(norm2, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norm2 > 0, np.clip(debiased / norm2, 0.0, 1.0), 0.0)


HALF_DRAWS = 64


def half_cosines(pi_A: np.ndarray, n_A: np.ndarray, w_A: np.ndarray, g_T_A: list[np.ndarray],
                 rng: np.random.Generator) -> np.ndarray:
    """``[T]``: per teacher, the mean GKD cosine over `HALF_DRAWS` random halves of each child's visits.

    A half whose Q̂ all tie (compared exactly, as `decision_support` does) has no direction: it counts 0.
    """
    half_A = n_A // 2
    q_D_A = rng.hypergeometric(w_A, n_A - w_A, half_A, size=(HALF_DRAWS, len(n_A))) / half_A
    tied_D = (q_D_A == q_D_A[:, :1]).all(axis=1)
    return np.where(tied_D[:, None], 0.0, _cosines(pi_A, q_D_A, np.stack(g_T_A))).mean(axis=0)


def path_nodes(ch: ChildTable, length: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(k, idx)``: each depth ``k < length`` of a path's child table ``ch`` (`TreeStats.children`, sorted by
    position) and the rows of its children there."""
    for idx in np.split(np.arange(len(ch.position)), np.flatnonzero(np.diff(ch.position)) + 1):
        if len(idx) and ch.position[idx[0]] < length:
            yield int(ch.position[idx[0]]), idx


def estimated_path_values(q: Question, tree: TreeStats, n_min: int, extra: bool = False) -> dict[str, np.ndarray]:
    """Per estimator of `scored_estimators`, ``[P, T, 2]`` per-path means over decision points (SPEC §2):
    unweighted, |g*|-weighted."""
    w = q.world
    out = {e: np.full((len(q.paths), len(TEACHERS), 2), np.nan) for e in scored_estimators(extra)}
    rng = np.random.default_rng(derive_seed("allocation-bench", "halves", q.world.model.seed))
    for j, (path, states) in enumerate(zip(q.paths, q.states, strict=True)):
        ch = tree.children(j)
        rows = []  # per decision point: plain cosines [T], |ĝ*|
        extras = []  # with extra: projections <ĝ*, ĝ_T>/|ĝ_T| [T], debiased |g*|², half cosines [T]
        for k, idx in path_nodes(ch, len(path)):
            n, wins, tok = ch.n[idx], ch.w[idx], ch.token[idx]
            support = decision_support(n, wins / np.maximum(n, 1), n_min)
            if support is None:
                continue
            n, wins, tok = n[support], wins[support], tok[support]
            pi = w.pi[k, states[k], tok]
            g = ideal_gradient(pi, wins / n)
            g_T = [gkd_gradient(pi, t[k, states[k], tok]) for t in w.teachers]
            rows.append(([alignment_score(g, gt) for gt in g_T], np.linalg.norm(g)))
            if extra:
                extras.append(([g @ gt / np.linalg.norm(gt) for gt in g_T], debiased_norm2(pi, n, wins), half_cosines(pi, n, wins, g_T, rng)))
        if not rows:
            continue
        cos = np.array([r[0] for r in rows])
        norm = np.array([r[1] for r in rows])
        ok = np.isfinite(cos).all(axis=1)
        if ok.any():
            out["plain"][j, :, 0] = cos[ok].mean(axis=0)
            out["plain"][j, :, 1] = norm[ok] @ cos[ok] / norm[ok].sum()
        if not extra:
            continue
        proj = np.array([x[0] for x in extras])
        d2 = np.array([x[1] for x in extras])
        if ok.any():
            extrapolated = 2 * cos[ok] - np.array([x[2] for x in extras])[ok]
            out["halves"][j, :, 0] = extrapolated.mean(axis=0)
            out["halves"][j, :, 1] = norm[ok] @ extrapolated / norm[ok].sum()
            r = reliability(d2, norm**2)[ok, None]  # the debiased |g*|² and |ĝ*|² both estimators already have
            for name, shrunk in (("shrunk", r * cos[ok]), ("shrunk-sqrt", np.sqrt(r) * cos[ok])):
                out[name][j, :, 0] = shrunk.mean(axis=0)
                out[name][j, :, 1] = norm[ok] @ shrunk / norm[ok].sum()
        pos = d2 > 0
        if pos.any():
            out["split-half"][j, :, 0] = np.clip(proj[pos] / np.sqrt(d2[pos])[:, None], -1, 1).mean(axis=0)
            out["split-half"][j, :, 1] = np.clip(proj.sum(axis=0) / np.sqrt(np.maximum(d2, 0)).sum(), -1, 1)
    return out


# --------------------------------------------------------------------------- one seed


def summarise(values: list[np.ndarray], correct: list[list[bool]]) -> dict:
    """Per-teacher means over questions (SPEC §5) with t CIs, and incorrect-minus-correct."""
    per_q = np.array([np.nanmean(v, axis=0) if np.isfinite(v).any() else np.full(v.shape[1:], np.nan) for v in values])  # [Q, T, 2]
    diff = []
    for v, c in zip(values, correct, strict=True):
        c = np.asarray(c)
        if c.any() and (~c).any():
            with warnings.catch_warnings():  # a path without decision points holds nan
                warnings.simplefilter("ignore", RuntimeWarning)
                diff.append(np.nanmean(v[~c, :, 0], axis=0) - np.nanmean(v[c, :, 0], axis=0))
    diff = np.array(diff) if diff else np.full((0, per_q.shape[1]), np.nan)
    mean, lo, hi = (np.full(per_q.shape[1:], np.nan) for _ in range(3))
    for t in range(per_q.shape[1]):
        for m in range(2):
            ci = t_ci(per_q[:, t, m])
            mean[t, m], lo[t, m], hi[t, m] = ci.mean, ci.lo, ci.hi
    with np.errstate(all="ignore"):
        return {"mean": mean, "lo": lo, "hi": hi, "diff": np.nanmean(diff, axis=0) if len(diff) else np.full(per_q.shape[1], np.nan)}


@dataclasses.dataclass
class SeedResult:
    exact: dict
    estimates: dict[str, dict]  # per estimator
    rollouts: int
    tokens: float
    rounds: int
    estimate: dict | None = None  # the one being scored


def question_trees(shape: Shape, seed: int, questions: int, strategy: str, params: AllocationParams,
                   cache: dict | None = None, coupled: bool = False) -> Iterator[tuple[Question, np.ndarray, TreeStats, Spend]]:
    """Per question of ``seed`` (those with a path): the question, its `exact_path_values`, and its tree after
    the initial rollouts and ``strategy``'s targeted ones (at the shape's ``n_min``), with their cost."""
    params = dataclasses.replace(params, n_min=shape.n_min)
    for question in range(questions):
        key = (shape.name, seed, question)
        if cache is not None and key in cache:
            q, ex = cache[key]
        else:
            q = prepare(shape, seed, question)
            ex = None if q is None else exact_path_values(q)
            if cache is not None:
                cache[key] = (q, ex)
        if q is None:
            continue
        tree = TreeStats(q.paths)
        tree.ingest(q.initial)
        spend = enrich(q, tree, strategy, params, derive_seed("allocation-bench", shape.name, seed, question, "targets"), coupled)
        yield q, ex, tree, spend


def run_seed(shape: Shape, seed: int, questions: int, strategy: str, params: AllocationParams,
             cache: dict | None = None, extra: bool = False, coupled: bool = False) -> SeedResult:
    """One strategy on ``questions`` fresh questions of ``shape``: its estimates (`scored_estimators`)
    against the exact values."""
    exact, est, correct = [], {e: [] for e in scored_estimators(extra)}, []
    rollouts, tokens, rounds = 0, 0.0, []
    for q, ex, tree, spend in question_trees(shape, seed, questions, strategy, params, cache, coupled):
        exact.append(ex)
        for e, v in estimated_path_values(q, tree, shape.n_min, extra).items():
            est[e].append(v)
        correct.append(q.correct)
        rollouts += spend.rollouts
        tokens += spend.tokens
        rounds.append(spend.rounds_W)
    width = max((len(r) for r in rounds), default=0)
    backend_calls = int(sum(max((r[w] for r in rounds if w < len(r)), default=0) for w in range(width)))
    return SeedResult(summarise(exact, correct), {e: summarise(v, correct) for e, v in est.items()}, rollouts, tokens, backend_calls)


def score(results: list[SeedResult], estimator: str = "plain") -> dict:
    """Errors over seeds: RMSE (teachers pooled), ranking, CI coverage of the exact value; mean cost per seed."""
    results = [dataclasses.replace(r, estimate=r.estimates[estimator]) for r in results]
    err = np.array([r.estimate["mean"] - r.exact["mean"] for r in results])  # [seeds, T, 2]
    diff = np.array([r.estimate["diff"] - r.exact["diff"] for r in results])
    covered = np.array([(r.estimate["lo"] <= r.exact["mean"]) & (r.exact["mean"] <= r.estimate["hi"]) for r in results])
    # a seed without an estimate for some teacher has no ranking (argsort would put its nans in the exact order)
    rank = [bool(np.isfinite(r.estimate["mean"][:, 0]).all())
            and np.array_equal(np.argsort(-r.estimate["mean"][:, 0]), np.argsort(-r.exact["mean"][:, 0])) for r in results]
    return {
        "rmse": float(np.sqrt(np.nanmean(err[..., 0] ** 2))), "rmse_weighted": float(np.sqrt(np.nanmean(err[..., 1] ** 2))),
        "bias_T": np.nanmean(err[..., 0], axis=0), "rmse_diff": float(np.sqrt(np.nanmean(diff**2))),
        "coverage": float(covered[..., 0].mean()), "coverage_weighted": float(covered[..., 1].mean()),
        "ranking": float(np.mean(rank)), "rollouts": float(np.mean([r.rollouts for r in results])),
        "tokens": float(np.mean([r.tokens for r in results])), "rounds": float(np.mean([r.rounds for r in results])),
        "exact": float(np.nanmean([r.exact["mean"][:, 0] for r in results])),
        # the RMSE of an estimate that knows nothing and answers 0 for every teacher: where paper's RMSE is above it,
        # no RMSE on this shape tells a strategy from an estimate pulled toward 0
        "rmse_zero": float(np.sqrt(np.nanmean(np.array([r.exact["mean"][:, 0] for r in results]) ** 2))),
    }


_CACHE: dict = {}  # prepared questions and their exact values, per worker process


def shape_knobs(shape: Shape, knobs: dict) -> dict:
    """``knobs`` with a negative ``visits`` read as that multiple of the shape's ``n_min`` (``visits=-4``)."""
    return {**knobs, "visits": -knobs["visits"] * shape.n_min} if knobs.get("visits", 0) < 0 else knobs


def _job(args) -> SeedResult:
    shape, seed, questions, strategy, knobs, extra = args
    if knobs.get("n_min"):  # the pipeline's A(s) rule, as a user's run sets it: strategy and estimate alike
        shape = dataclasses.replace(shape, n_min=knobs["n_min"])
    knobs = shape_knobs(shape, knobs)
    coupled = bool(knobs.get("coupled", 0))  # a sampling knob of the bench, not of the strategy
    knobs = {key: v for key, v in knobs.items() if key not in ("coupled", "n_min")}
    return run_seed(shape, seed, questions, strategy, AllocationParams(**knobs), _CACHE, extra, coupled)


def run_shape(shape: Shape, seeds: int, questions: int, settings: dict, jobs: int = 1,
              extra: bool = False) -> dict[tuple[str, str, str], dict]:
    """Every setting of every strategy on the same seeds (the same questions and initial rollouts), scored
    per (strategy, label, estimator of `scored_estimators`)."""
    keys = [(strategy, label, knobs) for strategy, rows in settings.items() for label, knobs in rows]
    work = [(shape, seed, questions, strategy, knobs, extra) for strategy, _, knobs in keys for seed in range(seeds)]
    if jobs > 1:
        with concurrent.futures.ProcessPoolExecutor(jobs) as pool:
            results = list(pool.map(_job, work, chunksize=max(1, seeds // 2)))
    else:
        results = [_job(w) for w in work]
    return {(strategy, label, e): score(results[i * seeds : (i + 1) * seeds], e)
            for i, (strategy, label, _) in enumerate(keys) for e in scored_estimators(extra)}


def ratio_at_equal_error(ref: dict, rows: dict[str, dict], named: bool = False) -> str:
    """Paper's tokens over a strategy's at its default, when its RMSE is no worse and its coverage at least
    COVERAGE_FLOOR; else at its cheapest setting that is (marked ``*``, and ``named``: followed by its label
    in brackets); ``-`` when none is, ``not run`` when the strategy had no row, ``n/a`` when paper's own RMSE
    is no better than answering 0 for every teacher (the shape cannot tell an estimate from one pulled to 0,
    so an RMSE no worse than paper's says nothing of a strategy)."""
    if not rows:
        return "not run"
    if ref["rmse"] >= ref["rmse_zero"]:
        return "n/a"
    ok = {label: r for label, r in rows.items() if r["rmse"] <= ref["rmse"] and r["coverage"] >= COVERAGE_FLOOR}
    if "default" in ok:
        return f"{ref['tokens'] / ok['default']['tokens']:.1f}x"
    if ok:
        label = min(ok, key=lambda label: ok[label]["tokens"])
        return f"{ref['tokens'] / ok[label]['tokens']:.1f}x*" + (f" ({label})" if named else "")
    return "-"


# what each --row value may be: (test, the range in words)
ROW_RANGES = {
    "n_target": (lambda v: v >= 1, ">= 1"), "n_min": (lambda v: v >= 0, ">= 0 (0: the shape's)"),
    "tau": (lambda v: 0 < v < 1, "in (0, 1)"), "k_window": (lambda v: v >= 1, ">= 1"),
    "confidence": (lambda v: 0 < v < 1, "in (0, 1)"), "tolerance": (lambda v: 0 < v < np.inf, "> 0 and finite"),
    "n_max": (lambda v: v >= 1, ">= 1"), "price": (lambda v: 0 < v < np.inf, "> 0 and finite"),
    "draws": (lambda v: v >= 1, ">= 1"), "positions": (lambda v: v >= 1, ">= 1"), "visits": (lambda v: v >= 1, ">= 1"),
    "coupled": (lambda v: v in (0, 1), "0 or 1"),
}


count = at_least(1)  # an argparse type: a whole number >= 1 (seeds, questions, worker processes)


def shape_names(text: str) -> list[str]:
    """An argparse type: comma-separated names of `SHAPES`, each known."""
    names, known = [n for n in text.split(",") if n], [s.name for s in SHAPES]
    if not names or (unknown := [n for n in names if n not in known]):
        what = f"unknown shape {unknown[0]!r}" if names else "names no shape"
        raise argparse.ArgumentTypeError(f"{what}; choose from {', '.join(known)}")
    return names


def parse_row(row: str) -> tuple[str, str, dict]:
    """``STRATEGY:KEY=VALUE,...`` as a strategy name, a row label and `AllocationParams` overrides (``--row``)."""
    strategy, _, spec = row.partition(":")
    if strategy not in SETTINGS:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(SETTINGS)}")
    fields = {f.name: f.default for f in dataclasses.fields(AllocationParams) if f.name != "budget"}  # none
    fields["n_min"] = 0  # the visits a child needs to enter A(s), for the strategy and the estimate alike; 0: the shape's
    fields["coupled"] = 0  # 1: siblings share their uniforms (`sample_targets`)
    knobs = {}
    for item in filter(None, spec.split(",")):
        key, eq, value = item.partition("=")
        if key not in fields or not eq:
            raise ValueError(f"{item!r} is not KEY=VALUE with KEY one of {', '.join(fields)}")
        kind = float if isinstance(fields[key], float) else int
        try:
            knobs[key] = kind(value)
        except ValueError:
            raise ValueError(f"{key} takes a number ({kind.__name__}), not {value!r}") from None
        test, words = ROW_RANGES.get(key, (lambda v: True, ""))
        if not test(knobs[key]):
            raise ValueError(f"{key} must be {words}, got {value!r}")
    return strategy, spec, knobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="6 seeds x 6 questions per shape instead of 24 x 8, fewer rows")
    parser.add_argument("--seeds", type=count, default=None)
    parser.add_argument("--questions", type=count, default=None)
    parser.add_argument("--shapes", type=shape_names, default=None, help="comma-separated shape names (default: all)")
    parser.add_argument("--estimators", action="store_true", help="also score the split-half, halves, shrunk and shrunk-sqrt estimators")
    parser.add_argument("--jobs", type=count, default=2, help="worker processes (default 2)")
    parser.add_argument("--row", action="append", default=[], metavar="STRATEGY:KEY=VALUE[,KEY=VALUE]",
                        help="one more setting to measure, e.g. settle:price=0.0000625 (AllocationParams fields; n_min, "
                             "the support rule A(s) of the strategy and the estimate alike; coupled=1 for siblings that "
                             "share their uniforms; repeatable)")
    parser.add_argument("--rows-only", action="store_true",
                        help="run only the reference (paper n_target=100) and the --row settings, not the built-in rows")
    parser.add_argument("--coupling-noise", action="store_true",
                        help="only measure how much coupled siblings cut the noise of the ideal gradient (`coupling_noise`)")
    parser.add_argument("--resolvability", action="store_true",
                        help="only measure how many visits per child each position of the estimand needs (`resolvability`)")
    parser.add_argument("--multilevel", action="store_true",
                        help="only measure what randomised multilevel debiasing of the cosine would cost (`multilevel`)")
    parser.add_argument("--importance", action="store_true",
                        help="only measure whether teacher-sampled, reweighted continuations would make Q̂ cheaper (`importance`)")
    args = parser.parse_args()
    if args.rows_only:
        if not args.row:
            parser.error("--rows-only needs at least one --row")
        SETTINGS.update({k: [(label, knobs) for label, knobs in rows if (k, label) == REFERENCE] for k, rows in SETTINGS.items()})
    for row in args.row:
        try:
            strategy, label, knobs = parse_row(row)
        except ValueError as e:
            parser.error(f"--row {row!r}: {e}")
        SETTINGS[strategy] = [*SETTINGS[strategy], (label, knobs)]
    seeds = args.seeds or (6 if args.quick else 24)
    questions = args.questions or (6 if args.quick else 8)
    shapes = [s for s in SHAPES if args.shapes is None or s.name in args.shapes]
    if args.coupling_noise:
        for shape in shapes:
            ratio, spread = coupling_noise(shape)
            print(f"[{shape.name}] noise of the centred Q̂ vector, coupled siblings over independent, at {len(ratio)} nodes: "
                  f"mean {ratio.mean():.2f}, median {np.median(ratio):.2f}; exact Q spread < 0.02: {ratio[spread < 0.02].mean():.2f}, "
                  f"> 0.3: {ratio[spread > 0.3].mean():.2f}")
        return
    if args.resolvability:
        for shape in shapes:
            need, cos = resolvability(shape)
            edges = (0, shape.n_min, *RESOLVE_EDGES, np.inf)
            print(f"[{shape.name}] {len(need)} positions; visits per child at which the ideal gradient's noise equals "
                  f"|g*|^2: median {np.median(need):,.0f}; share of positions above "
                  + ", ".join(f"{edge:,}: {(need > edge).mean():.2f}" for edge in edges[1:-1]))
            for lo, hi in zip(edges[:-1], edges[1:], strict=True):
                inside = (need >= lo) & (need < hi)
                if inside.any():
                    print(f"  {lo:>6,.0f} to {hi:>6,.0f}: {inside.mean():.2f} of positions, exact mean alignment "
                          f"helpful {cos[inside, 0].mean():+.3f}, misleading {cos[inside, 1].mean():+.3f}")
        return
    if args.multilevel:
        for shape in shapes:
            base = 10
            m = multilevel(shape, base=base)
            d2_L = m.delta2_N_L.mean(axis=0)
            print(f"[{shape.name}] {len(m.exact_N_T)} positions ({m.per_seed:.0f} per seed); bias of the plug-in cosine "
                  f"(helpful) at {base} visits per child {m.base_bias:+.3f}, at {base * 2 ** len(d2_L):,} {m.deep_bias:+.3f}; "
                  f"E[Δ²] per level " + " ".join(f"{d:.4f}" for d in d2_L)
                  + f", falling {(d2_L[0] / d2_L[-1]) ** (1 / (len(d2_L) - 1)):.2f}x per doubling of the visits")
            for visits in (15, 20, 40, 80):
                p_L, se = multilevel_error(m, base, visits)
                print(f"  {visits:>3} visits per child on average ({visits * m.tokens_per_visit:,.0f} tokens per seed): level "
                      "probabilities " + " ".join(f"{p:.4f}" for p in p_L) + f"; standard error of a seed's mean {se:.3f}")
        return
    if args.importance:
        for shape in shapes:
            print(f"[{shape.name}] per targeted rollout, against plain rollouts: variance ratio (above 1: fewer rollouts "
                  "for the same noise) and token ratio (above 1: shorter rollouts)")
            for name, (variance, tokens) in importance(shape).items():
                print(f"  {name:<28} variance {variance:10.3g}  tokens {tokens:.2f}")
        return
    start = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{seeds} seeds x {questions} questions per shape; GKD alignment against exact values on the same paths "
          f"(support: exact π or some π_T >= {TAU}); load average at start {load:.1f}")
    ratios = {}
    for shape in shapes:
        t0 = time.perf_counter()
        settings = {k: [(label, knobs) for label, knobs in rows
                        if not args.quick or ((k, label) not in QUICK_SKIP and (k, label, shape.name) not in QUICK_SKIP)]
                    for k, rows in SETTINGS.items()}
        res = run_shape(shape, seeds, questions, settings, args.jobs, args.estimators)
        print(f"\n[{shape.name}] vocab {shape.vocab_size}, states {shape.n_states}, horizon {shape.horizon}, first window "
              f"{shape.window}, n_min {shape.n_min}; exact mean alignment {res[REFERENCE + ('plain',)]['exact']:+.3f}; "
              f"answering 0 for every teacher: RMSE {res[REFERENCE + ('plain',)]['rmse_zero']:.3f}")
        print(f"  {'strategy':<8} {'setting':<24} {'tokens':>12} {'rollouts':>10} {'rounds':>6} {'RMSE':>6} {'bias (helpful/misl.)':>13} "
              f"{'RMSE|g*|':>8} {'RMSE i-c':>8} {'cover':>6} {'cov|g*|':>7} {'rank ok':>7}")
        for (s, label, e), r in res.items():
            print(f"  {s:<8} {label + ('' if e == 'plain' else ' ' + e):<24} {r['tokens']:>12,.0f} {r['rollouts']:>10,.0f} {r['rounds']:>6.1f} {r['rmse']:>6.3f} "
                  f"{r['bias_T'][0]:>+6.3f}/{r['bias_T'][1]:>+6.3f} {r['rmse_weighted']:>8.3f} {r['rmse_diff']:>8.3f} {r['coverage']:>6.2f} "
                  f"{r['coverage_weighted']:>7.2f} {r['ranking']:>7.2f}")
        ref = res[REFERENCE + ("plain",)]
        for candidate in SETTINGS:  # paper's own cheaper settings count as a candidate too
            ratios.setdefault(candidate, {})[shape.name] = ratio_at_equal_error(ref, {
                label: r for (s, label, e), r in res.items() if s == candidate and e == "plain" and (s, label) != REFERENCE})
        for estimator in scored_estimators(args.estimators)[1:]:  # against paper's plain estimate, any strategy's rows
            ratios.setdefault(estimator, {})[shape.name] = ratio_at_equal_error(ref, {
                f"{s} {label}": r for (s, label, e), r in res.items() if e == estimator}, named=True)
        print(f"  {time.perf_counter() - t0:.0f} s")
    cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    print(f"\n{time.perf_counter() - start:.0f} s wall, {cpu:.0f} s CPU in all processes ({args.jobs} workers); "
          f"load average now {os.getloadavg()[0]:.1f}")
    names = ("short", "long", "long-wide", "aime-like")
    for candidate in (c for c in SETTINGS if c != RECOMMENDED):
        print(f"{candidate}{', other settings' if candidate == REFERENCE[0] else ''}, the same measure: "
              + ", ".join(f"{s} {ratios[candidate].get(s, 'not run')}" for s in names))
    for estimator in scored_estimators(args.estimators)[1:]:
        print(f"the {estimator} estimate on any strategy's tree, the same measure: "
              + ", ".join(f"{s} {ratios[estimator].get(s, 'not run')}" for s in names))
    print("cost ratio at equal error (generated tokens, paper n_target=100 = 1): "
          + ", ".join(f"{s} {ratios[RECOMMENDED].get(s, 'not run')}" for s in names))


if __name__ == "__main__":
    main()
