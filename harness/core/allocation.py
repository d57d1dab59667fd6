"""Targeted-rollout allocation (SPEC §4 step 4): which children to enrich, with how many rollouts.

A strategy sees one question in one depth window and answers, round after round, how many more
targeted rollouts each child should get. The driver (``harness/pipeline.py``, ``bench/allocation.py``)
runs every window in rounds until the strategy has nothing left to ask for::

    params = AllocationParams(n_target=..., n_min=..., tau=..., k_window=..., budget=...)
    shared_prefix_P_P = path_common_prefixes(paths)
    spent_question = 0
    for window, (lo, hi) in enumerate(spans):           # [0,w), [w,3w), [3w,7w), ...
        spent_window = 0
        while True:
            state = window_state(window, len(spans), lo, hi, scored_P, [tree.children(j) ...],
                                 shared_prefix_P_P, spent_question, spent_window)
            plan = STRATEGIES[name](state, params)
            if plan.total == 0:
                break
            # plan row i: plan.count_R[i] completions of paths[plan.path_R[i]][:k] + [plan.token_R[i]],
            # k = plan.position_R[i], each a Rollout with F = k + 1 and target_path = plan.path_R[i]
            tree.ingest(sampled batch)
            spent_window += plan.total
        spent_question += spent_window

``scored_P[j]`` is a `ScoredTokens` for path ``j``: every token whose student (and, where known,
teacher) probability was read at a position of the path, with KL(π ‖ π_T) of the full distributions
there. A child shared by several paths (their common prefix) is planned once, under the lowest path
index: the plan names each child once, so no child is enriched twice.

Every strategy is a pure function of the state (no randomness beyond fixed tables of uniforms for
posterior draws and for survey's sample of positions), so a rerun plans exactly what the first run planned. ``params.budget`` is the most
targeted rollouts per question; `window_allowance` is what a window may still ask for and no plan
ever asks for more, so no strategy exceeds the budget.

Strategies (`STRATEGIES`):

* ``paper`` — SPEC §4 exactly: per path and window, candidates are tokens with π > τ or |π_T − π| > τ
  for some teacher; the top ``k_window`` by GKD gradient magnitude (`gkd_magnitude`, max over
  teachers) and the top ``k_window`` by |π_T − π| (max over teachers) are each enriched to
  ``n_target`` visits in one round. A budget truncates the list in priority order (window by
  window; within a window, rank in the better of the two lists, then path, position, token), so a
  budget at least the paper's spend changes nothing.
* ``settle`` — the same targets, each enriched only as far as settling its node is worth: targets
  go to ``n_min`` visits, paired where their node would otherwise hold fewer than two children in
  A(s) (a lone child makes no decision point); then each decision point of the window is grown
  (`settle_visits`) until every teacher's alignment is within ``tolerance`` of its estimate with
  posterior probability ``confidence`` (Jeffreys Beta draws of each Q), or until one more rollout
  would buy less than ``price`` of that probability (near ties, whose sign thousands of rollouts
  cannot settle, are left alone). Under a budget, what settling leaves of a window's allowance
  goes to new decision points (the next candidates in the paper's priority order, paired at
  ``n_min``), then to growth at a lower price; each window gets an equal share of what the
  earlier windows left, so the last windows are not starved.

* ``survey`` — what users read is a mean over positions (SPEC §5), so estimate it from a sample of
  positions: a systematic grid over depth (`survey_sample`) with ``positions`` positions per path on
  average, one rate and one fixed offset per question (`survey_rate`), so every position of every
  path has the same inclusion probability and the pipeline's unweighted mean over decision points
  stays an unbiased estimate of the mean over the path; and
  at each sampled node every likely child (π ≥ τ or π_T ≥ τ for some teacher) to ``visits``
  visits (``n_min`` by default), in one round per window. Its cost grows with the positions
  sampled, not with windows × ``k_window`` × ``n_target``; few visits per node leave the cosine
  attenuated toward 0, which ``bench/allocation.py`` measures.

Stopping on observed outcomes makes ``settle``'s visit counts depend on the rewards, so its
``Q = w/n`` is not exactly unbiased: by Wald's identity ``E[n (Q̂ − Q)] = 0``, so the bias of Q̂ is
``−Cov(n, Q̂) / E[n]``, small when few looks decide n. Visits grow in jumps of at least a doubling
(a handful of looks per node), and ``tests/test_allocation.py`` and ``bench/allocation.py`` measure the coverage of the
95% Wilson intervals of Q against exact values (near nominal for both strategies).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import numpy as np
from scipy.special import betaincinv
from scipy.stats import qmc

from harness.core.gradients import gkd_gradient
from harness.core.tree import ChildTable

_DRAWS_SEED = 20240917  # fixed uniforms for posterior draws: a strategy's plan is a function of its state
_KEY_BITS = 32  # row key = position << 32 | token, as in the tree's exit table


@dataclasses.dataclass(frozen=True)
class AllocationParams:
    """How much certainty a strategy buys, and the most it may spend (SPEC §4 defaults)."""

    n_target: int = 100
    """``paper``: visits each selected child is enriched to; ``settle``: visits a node whose A(s)
    shows a single Q̂ is grown to (so a small difference is found as often as ``paper`` finds it)."""
    n_min: int = 20
    """Visits a child needs to enter A(s) (SPEC §2)."""
    tau: float = 0.05
    """Candidate threshold on π and |π_T − π|."""
    k_window: int = 10
    """Top-k per path and window, by GKD gradient magnitude and by |π_T − π|."""
    budget: int | None = None
    """Most targeted rollouts per question over all windows; None: no limit."""
    confidence: float = 0.95
    """``settle``: posterior probability that each alignment is within ``tolerance`` of its estimate."""
    tolerance: float = 0.1
    """``settle``: half-width on the alignment score (cosine scale) that counts as settled."""
    n_max: int = 1280
    """``settle``: no child is enriched beyond this many visits."""
    price: float = 1 / 1000
    """``settle``: settled-probability a rollout must buy: 1/1000 grows a node by 100 rollouts only for +0.1."""
    draws: int = 256
    """``settle``: Beta posterior draws per node (a quasi-random table)."""
    positions: int = 64
    """``survey``: positions sampled per path, on average over the question's paths (a systematic sample)."""
    visits: int | None = None
    """``survey``: visits each likely child (π ≥ τ or π_T ≥ τ) of a sampled position gets; None: ``n_min``."""


@dataclasses.dataclass(frozen=True, eq=False)
class ScoredTokens:
    """What the forward passes over one path tell about tokens at its positions (any order, unique rows)."""

    position_S: np.ndarray
    """int [S]: depth k of the node path[:k]."""
    token_S: np.ndarray
    """int [S]: the child token a."""
    pi_S: np.ndarray
    """float [S]: student π(a | path[:k]); nan where unknown."""
    pi_teacher_S_T: np.ndarray
    """float [S, T]: each planning teacher's π_T(a | path[:k]); nan where unknown."""
    reverse_kl_S_T: np.ndarray
    """float [S, T]: KL(π ‖ π_T) of the full next-token distributions at position k; nan where unknown."""


@dataclasses.dataclass(frozen=True, eq=False)
class WindowState:
    """One question in one depth window: every scored or visited child at the window's positions.

    Rows are unique per (path, position, token); a child on a prefix shared by several paths appears
    once per path, with the same counts. Build it with `window_state`.
    """

    window: int
    """Index of this window among the question's windows."""
    n_windows: int
    """Number of windows of the question (the last gets whatever budget is left)."""
    path_R: np.ndarray
    """int [R]: tracked path of the row."""
    position_R: np.ndarray
    """int [R]: depth k of the node path[:k]."""
    token_R: np.ndarray
    """int [R]: the child a."""
    pi_R: np.ndarray
    """float [R]: π(a | s), nan where unknown."""
    pi_teacher_R_T: np.ndarray
    """float [R, T]: π_T(a | s) of each planning teacher, nan where unknown."""
    reverse_kl_R_T: np.ndarray
    """float [R, T]: KL(π ‖ π_T) of the full distributions at s, nan where unknown."""
    n_R: np.ndarray
    """int [R]: n(s, a), visits whose continuation after a was sampled (`TreeStats.children`)."""
    w_R: np.ndarray
    """int [R]: successes among those visits."""
    shared_prefix_P_P: np.ndarray
    """int [P, P]: longest common prefix of tracked paths i and j (`tree.path_common_prefixes`)."""
    spent_question: int = 0
    """Targeted rollouts of this question in earlier windows."""
    spent_window: int = 0
    """Targeted rollouts of this question in earlier rounds of this window."""

    def __post_init__(self):
        r = len(self.path_R)
        for name in ("position_R", "token_R", "pi_R", "n_R", "w_R"):
            if len(getattr(self, name)) != r:
                raise ValueError(f"WindowState.{name} has {len(getattr(self, name))} rows, path_R has {r}")
        if self.pi_teacher_R_T.shape != self.reverse_kl_R_T.shape or len(self.pi_teacher_R_T) != r:
            raise ValueError("WindowState.pi_teacher_R_T and reverse_kl_R_T must both be [R, T]")


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """Additional targeted rollouts for one round: ``count_R[i]`` completions of ``paths[path_R[i]][:k] + [token_R[i]]``."""

    path_R: np.ndarray
    """int [R]: tracked path whose prefix is forced (the lowest path holding that node)."""
    position_R: np.ndarray
    """int [R]: k; the rollout's forced length is F = k + 1."""
    token_R: np.ndarray
    """int [R]: the forced child a."""
    count_R: np.ndarray
    """int [R]: rollouts to sample, all > 0."""

    @property
    def total(self) -> int:
        """Targeted rollouts asked for in this round."""
        return int(self.count_R.sum())

    def __len__(self) -> int:
        return len(self.count_R)


Strategy = Callable[[WindowState, AllocationParams], Plan]


# --------------------------------------------------------------------------- pure scoring functions


def gkd_magnitude(pi: np.ndarray, pi_teacher: np.ndarray, reverse_kl: np.ndarray) -> np.ndarray:
    """|g_a| = |π_a (ℓ_a + KL(π ‖ π_T))|, ℓ_a = log π_T,a − log π_a (SPEC §4 candidate ranking).

    The GKD gradient component of token a on the full vocabulary, before A(s) is known:
    g_a = π_a (ℓ_a − Σ_b π_b ℓ_b) and Σ_b π_b ℓ_b = −KL(π ‖ π_T). Broadcasts; nan stays nan.
    """
    pi, pi_teacher = np.asarray(pi, dtype=np.float64), np.asarray(pi_teacher, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(pi * (np.log(pi_teacher) - np.log(pi) + reverse_kl))


def candidate_mask(pi_R: np.ndarray, pi_teacher_R_T: np.ndarray, tau: float) -> np.ndarray:
    """Candidates of SPEC §4: π > τ or |π_T − π| > τ for some teacher (unknown values never qualify)."""
    with np.errstate(invalid="ignore"):
        gap = np.abs(pi_teacher_R_T - pi_R[:, None]) > tau
    return (np.nan_to_num(pi_R, nan=0.0) > tau) | gap.any(axis=1)


def window_allowance(state: WindowState, params: AllocationParams, share: bool = True) -> float:
    """Rollouts this window may still ask for under ``params.budget`` (inf without a budget).

    ``share``: an equal share of what the earlier windows left,
    ``floor((budget − spent_question) / (n_windows − window)) − spent_window`` (the last window's share
    is all that is left); otherwise all that is left, ``budget − spent_question − spent_window``.
    Never negative; either way the question never exceeds ``budget``.
    """
    if params.budget is None:
        return np.inf
    left = params.budget - state.spent_question
    if share:
        left //= max(state.n_windows - state.window, 1)
    return float(max(left - state.spent_window, 0))


def window_state(
    window: int,
    n_windows: int,
    lo: int,
    hi: int,
    scored: Sequence[ScoredTokens],
    children: Sequence[ChildTable],
    shared_prefix_P_P: np.ndarray,
    spent_question: int = 0,
    spent_window: int = 0,
) -> WindowState:
    """The state of window [lo, hi): scored tokens and visited children of every path, merged by (position, token).

    ``scored[j]`` and ``children[j]`` (``TreeStats.children(j)``) describe path ``j``; a scored token
    never visited gets n = w = 0, a visited child never scored gets nan probabilities.
    """
    n_teachers = next((s.pi_teacher_S_T.shape[1] for s in scored), 0)
    cols: list[list[np.ndarray]] = [[] for _ in range(8)]
    for j, (sc, ch) in enumerate(zip(scored, children, strict=True)):
        in_sc = (sc.position_S >= lo) & (sc.position_S < hi)
        in_ch = (ch.position >= lo) & (ch.position < hi)
        keys_sc = (np.asarray(sc.position_S, np.int64)[in_sc] << _KEY_BITS) | np.asarray(sc.token_S, np.int64)[in_sc]
        keys_ch = (ch.position[in_ch] << _KEY_BITS) | ch.token[in_ch]
        keys = np.union1d(keys_sc, keys_ch)
        pi, n, w = np.full(len(keys), np.nan), np.zeros(len(keys), np.int64), np.zeros(len(keys), np.int64)
        pi_t, kl = np.full((len(keys), n_teachers), np.nan), np.full((len(keys), n_teachers), np.nan)
        at = np.searchsorted(keys, keys_sc)
        pi[at], pi_t[at], kl[at] = sc.pi_S[in_sc], sc.pi_teacher_S_T[in_sc], sc.reverse_kl_S_T[in_sc]
        at = np.searchsorted(keys, keys_ch)
        n[at], w[at] = ch.n[in_ch], ch.w[in_ch]
        row = (np.full(len(keys), j, np.int64), keys >> _KEY_BITS, keys & ((1 << _KEY_BITS) - 1), pi, pi_t, kl, n, w)
        for col, values in zip(cols, row, strict=True):
            col.append(values)
    empty = (np.int64, np.int64, np.int64, np.float64, np.float64, np.float64, np.int64, np.int64)
    path, position, token, pi, pi_t, kl, n, w = (
        np.concatenate(c) if c else np.zeros((0, n_teachers) if k in (4, 5) else 0, empty[k]) for k, c in enumerate(cols)
    )
    return WindowState(
        window=window, n_windows=n_windows, path_R=path, position_R=position, token_R=token, pi_R=pi,
        pi_teacher_R_T=pi_t, reverse_kl_R_T=kl, n_R=n, w_R=w, shared_prefix_P_P=np.asarray(shared_prefix_P_P, np.int64),
        spent_question=spent_question, spent_window=spent_window,
    )


# --------------------------------------------------------------------------- distinct children


@dataclasses.dataclass(frozen=True, eq=False)
class _Children:
    """The window's distinct children, a child on a prefix shared by several paths named once.

    Children are sorted by (node, token); node ``i`` holds children ``start_N[i]:start_N[i + 1]``.
    """

    row_C: np.ndarray  # int [C]: a state row holding the child (the first one)
    path_C: np.ndarray  # int [C]: lowest path holding the node (where the plan forces the prefix)
    node_C: np.ndarray  # int [C]: node index
    start_N: np.ndarray  # int [N + 1]: first child of each node
    child_R: np.ndarray  # int [R]: child index of every state row


def _distinct_children(state: WindowState) -> _Children:
    """Group rows by child: path j' holds node path_j[:k] iff their common prefix is at least k."""
    if not len(state.path_R):
        empty = np.zeros(0, np.int64)
        return _Children(empty, empty, empty, np.zeros(1, np.int64), empty)
    canon_R = np.argmax(state.shared_prefix_P_P[state.path_R] >= state.position_R[:, None], axis=1)
    _, node_R = np.unique(np.stack([canon_R, state.position_R], axis=1), axis=0, return_inverse=True)
    node_R = node_R.ravel()
    child_keys, row_C, child_R = np.unique(
        np.stack([node_R, state.token_R], axis=1), axis=0, return_index=True, return_inverse=True
    )
    node_C = child_keys[:, 0]
    start_N = np.searchsorted(node_C, np.arange(node_C.max() + 2))
    return _Children(row_C, canon_R[row_C], node_C, start_N, child_R.ravel())


def _paper_priority(state: WindowState, params: AllocationParams, children: _Children) -> tuple[np.ndarray, np.ndarray]:
    """Every candidate child in priority order and its rank: ``(child_X, rank_X)``.

    Per path, a candidate's rank is its place in the better of the two lists of SPEC §4 (GKD
    gradient magnitude and max |π_T − π|, both max over teachers; ties broken by position, then
    token); SPEC §4 selects rank < ``k_window``. Order: rank, then path, position, token; a child
    shared by several paths keeps its best place.
    """
    cand = np.flatnonzero(candidate_mask(state.pi_R, state.pi_teacher_R_T, params.tau))
    pi, pi_t = state.pi_R[cand, None], state.pi_teacher_R_T[cand]
    with np.errstate(invalid="ignore"):
        scores = (gkd_magnitude(pi, pi_t, state.reverse_kl_R_T[cand]), np.abs(pi_t - pi))
    path, pos, tok = state.path_R[cand], state.position_R[cand], state.token_R[cand]
    rank = np.full(len(cand), np.iinfo(np.int64).max)
    for score_X_T in scores:
        # a candidate no teacher scored ranks last in both lists (it qualified through π > τ alone)
        score = np.where(np.isnan(score_X_T), -1.0, score_X_T).max(axis=1, initial=-1.0)
        order = np.lexsort((tok, pos, -score, path))
        first = np.r_[True, path[order][1:] != path[order][:-1]]
        place = np.empty(len(order), np.int64)
        place[order] = np.arange(len(order)) - np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
        rank = np.minimum(rank, place)
    order = np.lexsort((tok, pos, path, rank))
    child = children.child_R[cand[order]]
    _, first = np.unique(child, return_index=True)
    keep = np.sort(first)
    return child[keep], rank[order][keep]


def _truncate(count: np.ndarray, allowance: float) -> np.ndarray:
    """Counts clipped in order so that their sum never exceeds ``allowance``."""
    if not np.isfinite(allowance):
        return count
    before = np.cumsum(count) - count
    return np.clip(allowance - before, 0, count).astype(np.int64)


def _plan(state: WindowState, children: _Children, child: np.ndarray, count: np.ndarray, allowance: float) -> Plan:
    """The plan for ``child`` (priority order, distinct) truncated to the allowance; zero counts dropped."""
    child = np.asarray(child, np.int64)
    count = _truncate(np.asarray(count, np.int64), allowance)
    keep = count > 0
    rows = children.row_C[child[keep]]
    return Plan(children.path_C[child[keep]], state.position_R[rows], state.token_R[rows], count[keep])


# --------------------------------------------------------------------------- paper


def paper(state: WindowState, params: AllocationParams) -> Plan:
    """SPEC §4: top ``k_window`` by GKD magnitude and by |π_T − π| per path, each to ``n_target`` visits."""
    children = _distinct_children(state)
    ranked, rank = _paper_priority(state, params, children)
    targets = ranked[rank < params.k_window]
    need = np.maximum(params.n_target - state.n_R[children.row_C[targets]], 0)
    return _plan(state, children, targets, need, window_allowance(state, params, share=False))


# --------------------------------------------------------------------------- settle


@functools.lru_cache(maxsize=64)
def _uniforms(draws: int, width: int) -> np.ndarray:
    """A fixed ``[draws, width]`` scrambled Sobol table: the same counts always give the same draws,
    and a quasi-random table pins a probability down with fewer draws than independent uniforms."""
    u = qmc.Sobol(d=width, scramble=True, seed=_DRAWS_SEED).random(draws)
    u.flags.writeable = False
    return u


def _cosines(pi_A: np.ndarray, q_D_A: np.ndarray, g_T_A: np.ndarray) -> np.ndarray:
    """cos(g*(Q_d), g_T) for every row d of ``q_D_A`` and teacher T: ``[D, T]``, nan where g* = 0."""
    pi_A = pi_A / pi_A.sum()
    g_D_A = pi_A * (q_D_A - (q_D_A @ pi_A)[:, None])
    norm_D = np.linalg.norm(g_D_A, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (g_D_A @ g_T_A.T) / (norm_D[:, None] * np.linalg.norm(g_T_A, axis=1)[None, :])


def _miss_any(cos_D_T: np.ndarray, estimate_T: np.ndarray, tolerance: float) -> float:
    """Share of draws in which some teacher's cosine is more than ``tolerance`` from its estimate (nan: a miss)."""
    return float((~(np.abs(cos_D_T - estimate_T) <= tolerance)).any(axis=1).mean())


def settle_visits(
    pi_A: np.ndarray, pi_teacher_A_T: np.ndarray, n_A: np.ndarray, w_A: np.ndarray, params: AllocationParams
) -> np.ndarray | None:
    """Visits per child of A(s) worth buying to settle one decision point's alignments; None: stop here.

    The value of a node is the probability that every teacher's alignment is within ``tolerance``
    of its estimate, under Jeffreys posterior draws Q_a ~ Beta(w + ½, n − w + ½) (inverse CDF of a
    fixed quasi-random table, so equal counts give equal answers). The node is settled, and gets
    nothing more, once that probability reaches ``confidence``. Otherwise more visits are projected
    at the same w/n: the children get Neyman shares of a total 2, 4, 8, ... times the current one
    (share of child a proportional to σ_a √n_a, σ_a the posterior spread of the cosines when only
    Q_a is drawn, so n_a ∝ the sensitivity of the score to Q_a), capped at ``n_max``. The projection
    that gains the most probability net of ``price`` per rollout is returned; a near tie, whose sign
    a few thousand rollouts cannot settle, gains too little per rollout and is left as it is.
    """
    n_A = np.asarray(n_A, np.int64)
    key = tuple(np.ascontiguousarray(x, np.float64).tobytes() for x in (pi_A, pi_teacher_A_T, n_A, w_A))
    out = _settle_visits(*key, len(n_A), params)
    return None if out is None else np.frombuffer(out, np.int64).copy()


@functools.lru_cache(maxsize=1 << 16)
def _settle_visits(pi_b: bytes, pi_t_b: bytes, n_b: bytes, w_b: bytes, width: int, params: AllocationParams) -> bytes | None:
    """`settle_visits` on byte keys: a node whose counts did not change since the last round costs nothing."""
    pi_A, n_A, w_A = (np.frombuffer(b, np.float64) for b in (pi_b, n_b, w_b))
    pi_teacher_A_T = np.frombuffer(pi_t_b, np.float64).reshape(width, -1)
    q_hat_A = w_A / n_A
    g_T_A = np.stack([gkd_gradient(pi_A, pi_teacher_A_T[:, t]) for t in range(pi_teacher_A_T.shape[1])])
    estimate_T = _cosines(pi_A, q_hat_A[None, :], g_T_A)[0]
    u_D_A = _uniforms(params.draws, width)

    def miss(q_A: np.ndarray, n_new: np.ndarray) -> float:
        q_D_A = betaincinv(q_A * n_new + 0.5, (1 - q_A) * n_new + 0.5, u_D_A)
        return _miss_any(_cosines(pi_A, q_D_A, g_T_A), estimate_T, params.tolerance)

    cap = np.maximum(n_A, params.n_max)
    if miss(q_hat_A, n_A) <= 1 - params.confidence or (n_A >= cap).all():
        return None
    # Projections shrink Q̂ toward V̂ by the share of its spread that sampling noise cannot explain
    # (positive-part James–Stein): a spread that is mostly noise would otherwise look settleable.
    # Scaling Q − V leaves the cosine, hence the estimate, unchanged.
    pi_norm_A = pi_A / pi_A.sum()
    v_hat = pi_norm_A @ q_hat_A
    spread = pi_norm_A @ (q_hat_A - v_hat) ** 2
    q_smooth_A = (w_A + 0.5) / (n_A + 1)
    noise = pi_norm_A * (1 - pi_norm_A) @ (q_smooth_A * (1 - q_smooth_A) / n_A)
    q_proj_A = v_hat + max(0.0, 1 - noise / spread) * (q_hat_A - v_hat)
    now = miss(q_proj_A, n_A)
    q_D_A = betaincinv(w_A + 0.5, n_A - w_A + 0.5, u_D_A)
    sigma_A = np.empty(width)
    for a in range(width):
        one_D_A = np.repeat(q_hat_A[None, :], params.draws, axis=0)
        one_D_A[:, a] = q_D_A[:, a]
        sigma_A[a] = np.nan_to_num(np.nanstd(_cosines(pi_A, one_D_A, g_T_A), axis=0), nan=1.0).max()
    share_A = sigma_A * np.sqrt(n_A)
    share_A = share_A / share_A.sum() if share_A.sum() > 0 else np.full(width, 1 / width)
    best, best_value, total = None, 0.0, n_A.sum()
    while True:
        total *= 2
        n_new = np.clip(np.ceil(total * share_A), n_A, cap)
        value = (now - miss(q_proj_A, n_new)) - params.price * (n_new - n_A).sum()
        if value > best_value:
            best, best_value = n_new, value
        elif best is not None or (n_new >= cap).all():
            break  # past the best projection (gains saturate, the cost does not), or nothing left to add
    return None if best is None else best.astype(np.int64).tobytes()


def _growth(state: WindowState, params: AllocationParams, children: _Children, node: int) -> tuple[np.ndarray, np.ndarray]:
    """Extra visits for the children in A(s) of one node: ``(child, count)``, empty when settled or given up.

    A node whose A(s) shows one Q̂ only (no decision point yet: at a win-or-lose node every Q̂
    reads 0 or 1 at first) is grown to ``n_target``, so a small difference is found as often as the
    paper finds it.
    """
    nothing = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    kids = np.arange(children.start_N[node], children.start_N[node + 1])
    kids = kids[state.n_R[children.row_C[kids]] >= params.n_min]
    rows = children.row_C[kids]
    if len(kids) < 2:
        return nothing
    n, w = state.n_R[rows], state.w_R[rows]
    if (w * n[0] == w[0] * n).all():  # every Q̂ equal, compared exactly
        return kids, np.maximum(min(params.n_target, params.n_max) - n, 0)
    pi, pi_t = state.pi_R[rows], state.pi_teacher_R_T[rows]
    teachers = np.flatnonzero(~np.isnan(pi_t).any(axis=0))
    if np.isnan(pi).any() or not len(teachers):
        return nothing  # its alignment cannot be scored; nothing to settle
    target = settle_visits(pi, pi_t[:, teachers], n, w, params)
    return nothing if target is None else (kids, target - n)


def _partner(state: WindowState, children: _Children, node: int, exclude: set) -> int | None:
    """The likeliest child of ``node`` (known π) not in ``exclude``: the student's own alternative.

    Ties go to the lower token.
    """
    kids = [c for c in range(children.start_N[node], children.start_N[node + 1]) if c not in exclude]
    kids = [c for c in kids if not np.isnan(state.pi_R[children.row_C[c]])]
    return max(kids, key=lambda c: (state.pi_R[children.row_C[c]], -state.token_R[children.row_C[c]]), default=None)


def _pairs(
    state: WindowState, params: AllocationParams, children: _Children, chosen: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``chosen`` children to ``n_min`` visits, node by node, each node completed to two children in A(s).

    A chosen child is worth nothing alone: a node is a decision point only with two children in
    A(s). Where a node would still hold fewer, its likeliest other child (the path's own token,
    typically) joins right after the node's chosen children.
    """
    n_C = state.n_R[children.row_C]
    chosen_set = set(chosen.tolist())
    by_node: dict[int, list[int]] = {}
    for c in chosen.tolist():
        by_node.setdefault(int(children.node_C[c]), []).append(c)
    out = []
    for node, mine in by_node.items():
        out += mine
        kids = range(children.start_N[node], children.start_N[node + 1])
        if sum(1 for c in kids if n_C[c] >= params.n_min or c in chosen_set) < 2:
            if (p := _partner(state, children, node, chosen_set)) is not None:
                out.append(p)
    out = np.asarray(out, np.int64)
    return out, np.maximum(params.n_min - n_C[out], 0)


def _new_pairs(
    state: WindowState, params: AllocationParams, children: _Children, ranked: np.ndarray, spend: float
) -> tuple[np.ndarray, np.ndarray]:
    """New decision points within ``spend``: nodes in the paper's priority order (beyond its top-k),
    each with its best-ranked candidate and its likeliest other child at ``n_min`` visits."""
    n_C = state.n_R[children.row_C]
    first: dict[int, int] = {}
    for c in ranked.tolist():
        first.setdefault(int(children.node_C[c]), c)
    out: list[int] = []
    for node, c in first.items():
        kids = np.arange(children.start_N[node], children.start_N[node + 1])
        if (n_C[kids] >= params.n_min).sum() >= 2 or (p := _partner(state, children, node, {c})) is None:
            continue
        need = int(np.maximum(params.n_min - n_C[[c, p]], 0).sum())
        if need > spend:
            break
        spend -= need
        out += [c, p]
    out = np.asarray(out, np.int64)
    return out, np.maximum(params.n_min - n_C[out], 0)


def _all_growth(state: WindowState, params: AllocationParams, children: _Children, skip: set) -> tuple[np.ndarray, np.ndarray]:
    """`_growth` of every node of the window not in ``skip``, cheapest node first (under a budget,
    truncation then settles as many nodes as the allowance buys)."""
    grow = [_growth(state, params, children, node) for node in range(len(children.start_N) - 1) if node not in skip]
    grow = sorted((g for g in grow if g[1].sum() > 0), key=lambda g: int(g[1].sum()))
    if not grow:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate([g[0] for g in grow]), np.concatenate([g[1] for g in grow])


def settle(state: WindowState, params: AllocationParams) -> Plan:
    """The paper's targets, each enriched only as far as settling its node's alignments is worth.

    Each round asks for the first of these that asks for anything:
    (1) the paper's targets, paired (`_pairs`), to ``n_min`` visits, and every decision point of
        the window not being paired grown by `settle_visits` at ``price`` (together);
    (2) under a budget only: new decision points (`_new_pairs`) with at most half of what is left
        of the window's allowance (the next rounds settle them);
    (3) under a budget only: growth at half the price, a quarter, ... (the budget is meant to be spent).
    """
    allowance = window_allowance(state, params)
    children = _distinct_children(state)
    ranked, rank = _paper_priority(state, params, children)
    child, count = _pairs(state, params, children, ranked[rank < params.k_window])
    child, count = child[count > 0], count[count > 0]
    pending = set(children.node_C[child].tolist())  # their A(s) is about to change: grow them next round
    grow_child, grow_count = _all_growth(state, params, children, pending)
    child, count = np.concatenate([child, grow_child]), np.concatenate([count, grow_count])
    if count.sum() > 0 or not np.isfinite(allowance) or allowance < 1:
        return _plan(state, children, child, count, allowance)
    child, count = _new_pairs(state, params, children, ranked, allowance // 2 if allowance >= 8 * params.n_min else allowance)
    price = params.price
    while count.sum() == 0 and price > params.price / 2**12:
        price /= 2
        child, count = _all_growth(state, dataclasses.replace(params, price=price), children, set())
    return _plan(state, children, child, count, allowance)


# --------------------------------------------------------------------------- survey


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fixed, well-mixed 64-bit hash of each integer (vectorised)."""
    x = np.asarray(x, np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniform(*keys: np.ndarray) -> np.ndarray:
    """A fixed uniform in [0, 1) per key tuple: the same keys always give the same number."""
    h = np.full(np.broadcast(*keys).shape, _DRAWS_SEED, np.uint64)
    for k in keys:
        h = _mix64(h ^ np.asarray(k, np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def survey_sample(position: np.ndarray, rate: float, u: float) -> np.ndarray:
    """Positions on a systematic grid of step ``1 / rate`` with offset ``u``: ``floor(u + (k+1) rate) > floor(u + k rate)``.

    With ``u`` uniform on [0, 1) every position has inclusion probability ``rate`` (all of them at
    rate 1), so an unweighted mean over the sample estimates the mean over the path without bias,
    and the sample is spread evenly over depth. The grid depends on the position only, so paths that
    share a prefix share its sample.
    """
    k = np.asarray(position, np.float64)
    return np.floor(u + (k + 1) * rate) > np.floor(u + k * rate)


def survey_rate(length_P: np.ndarray, positions: int) -> tuple[float, float]:
    """The question's sampling rate, ``positions`` per path on average, and its grid offset.

    One rate for all the question's paths keeps each path's sample self-weighting on prefixes it
    shares with others; the offset is a fixed uniform of the paths' lengths (a question-specific
    draw that a rerun repeats).
    """
    rate = min(1.0, positions / max(float(np.mean(length_P)), 1.0))
    return rate, float(_uniform(*(np.uint64(n) for n in length_P))[()]) if len(length_P) else 0.0


def survey(state: WindowState, params: AllocationParams) -> Plan:
    """Every likely child (π ≥ τ or π_T ≥ τ for some teacher) at a systematic sample of positions
    (``positions`` per path on average), to ``visits`` visits.

    The alignment users read is a mean over a path's positions; a sample of positions estimates it
    without bias, and each sampled node needs only enough visits for every likely child to enter
    A(s). One round per window.
    """
    children = _distinct_children(state)
    visits = params.visits or params.n_min
    rate, u = survey_rate(np.diag(state.shared_prefix_P_P), params.positions)
    with np.errstate(invalid="ignore"):
        likely = (np.nan_to_num(state.pi_R, nan=0.0) >= params.tau) | (state.pi_teacher_R_T >= params.tau).any(axis=1)
    chosen = np.unique(children.child_R[survey_sample(state.position_R, rate, u) & likely])
    # a node with a single likely child makes no decision point
    per_node = np.bincount(children.node_C[chosen], minlength=len(children.start_N) - 1)
    child = chosen[per_node[children.node_C[chosen]] >= 2]
    # under a budget, truncation keeps a random subset of nodes
    child = child[np.argsort(_uniform(children.node_C[child], np.uint64(1)), kind="stable")]
    need = np.maximum(visits - state.n_R[children.row_C[child]], 0)
    return _plan(state, children, child, need, window_allowance(state, params))


STRATEGIES: dict[str, Strategy] = {
    "paper": paper,
    "settle": settle,
    "survey": survey,
}
"""Allocation strategies by name (``RunConfig.strategy``); ``paper`` is the default and SPEC §4 exactly."""
