"""Distillation gradients at a decision point, with respect to the student's logits (SPEC.md §3).

Every vector lives on the support A(s) = {a : n(s,a) >= n_min} (suffix `_A`). Probability inputs are
the student's and the teacher's next-token probabilities restricted to A(s); every function
renormalises them itself, π̃ = π / Σ_{b in A(s)} π_b, so callers pass the raw restricted values.

A "gradient" here is the direction a training step moves the logits z_a, a in A(s): plus the
gradient of the success probability, minus the gradient of a distillation loss. Through the softmax
Jacobian ∂π̃_b/∂z_a = π̃_b (δ_ab − π̃_a), a per-action gradient u_a wrt the probabilities becomes
π̃_a (u_a − Σ_b π̃_b u_b) on the logits, and an on-policy draw of a gives ∇_z log π̃_a = e_a − π̃.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Probabilities on A(s) come from a softmax and are > 0, but underflow can still produce an exact
# 0; flooring before the log keeps ℓ finite, and the π̃_a in front of every ℓ_a zeroes such a term.
_LOG_FLOOR = 1e-300


def _renormalise(p_A: np.ndarray) -> np.ndarray:
    """π̃ = p / Σ p on A(s) (SPEC.md §2)."""
    p_A = np.asarray(p_A, dtype=np.float64)
    return p_A / p_A.sum()


def _log(p_A: np.ndarray) -> np.ndarray:
    """log max(p, 1e-300): finite even where a probability underflowed to 0."""
    return np.log(np.maximum(p_A, _LOG_FLOOR))


def _through_softmax(pi_A: np.ndarray, u_A: np.ndarray) -> np.ndarray:
    """g_a = π̃_a (u_a − Σ_b π̃_b u_b): the logit gradient of Σ_a π̃_a u_a with u held fixed."""
    return pi_A * (u_A - pi_A @ u_A)


def _score_sum(pi_A: np.ndarray, w_A: np.ndarray) -> np.ndarray:
    """Σ_a w_a (e_a − π̃): weights on the score function ∇_z log π̃_a = e_a − π̃."""
    return w_A - pi_A * w_A.sum()


def ideal_gradient(pi: np.ndarray, q: np.ndarray) -> np.ndarray:
    """g*_a = π̃_a (Q_a − V), V = Σ_a π̃_a Q_a (SPEC.md §3, "Ideal").

    The softmax-Jacobian gradient of the success probability Σ_a π̃_a Q_a, formed as
    π̃_a Σ_b π̃_b (Q_a − Q_b): every term is a difference of success rates, so g* is exactly 0 only where
    every Q ties, and keeps its direction at any scale (Q_a − V itself would lose the π̃_b (Q_a − Q_b)
    of a child with π̃_b below the rounding of V).
    """
    pi_A, q_A = _renormalise(pi), np.asarray(q, dtype=np.float64)
    return pi_A * ((q_A[:, None] - q_A[None, :]) @ pi_A)


def gkd_gradient(pi: np.ndarray, pi_teacher: np.ndarray) -> np.ndarray:
    """g_a = π̃_a (ℓ_a − Σ_b π̃_b ℓ_b), ℓ_a = log π̃_T,a − log π̃_a (SPEC.md §3, "GKD / reverse KL").

    Minus the logit gradient of KL(π̃ ‖ π̃_T); the "+1" from differentiating π̃ log π̃ is a constant
    and cancels through the softmax. Zero probabilities are floored at 1e-300 before the log.
    """
    pi_A, pi_teacher_A = _renormalise(pi), _renormalise(pi_teacher)
    return _through_softmax(pi_A, _log(pi_teacher_A) - _log(pi_A))


def single_sample_gkd_gradient(pi: np.ndarray, pi_teacher: np.ndarray, m: np.ndarray) -> np.ndarray:
    """ĝ = (1/M) Σ_i ℓ_{a_i} (e_{a_i} − π̃) = (1/M) Σ_a m_a ℓ_a (e_a − π̃), M = Σ_a m_a (SPEC.md §3).

    The on-policy distillation estimator: `m` counts on-policy draws of each action in A(s) and the
    sampled token's advantage is ℓ_a = log π̃_T,a − log π̃_a. E[ĝ] = gkd_gradient because
    E_{a~π̃}[ℓ_a (e_a − π̃)] = π̃ ⊙ ℓ − π̃ (π̃ · ℓ). Zero vector when M = 0.
    """
    pi_A, pi_teacher_A = _renormalise(pi), _renormalise(pi_teacher)
    m_A = np.asarray(m, dtype=np.float64)
    n_draws = m_A.sum()
    if n_draws == 0:
        return np.zeros_like(pi_A)
    return _score_sum(pi_A, m_A * (_log(pi_teacher_A) - _log(pi_A)) / n_draws)


def drgrpo_gradient(pi: np.ndarray, m: np.ndarray, m_success: np.ndarray) -> np.ndarray:
    """ĝ = (1/M) Σ_i (r_i − r̄)(e_{a_i} − π̃) = (s ⊙ M − m ⊙ S) / M², S = Σ s, M = Σ m (SPEC.md §3).

    Dr. GRPO on the M on-policy draws at s that took an action in A(s) (`m`), `m_success` = s the
    successes among them: no std or length normalisation, so as M grows ĝ_a → π̃_a (Q_a − V) = g*_a.
    Draws of actions outside A(s) are left out of M, S and r̄ alike: the estimate is Dr. GRPO on the
    draws whose action the comparison can see. The mean baseline makes Σ_a (s_a − m_a r̄) = 0, so the
    −π̃ part of the score function vanishes exactly and ĝ = (s ⊙ M − m ⊙ S) / M². The numerator is
    formed in integers: when every draw took one action, or every drawn action has the same success
    rate, ĝ is exactly 0 (no rounding residue for a cosine to read a direction into). Zero when M = 0.
    """
    del pi  # π̃ does not enter ĝ: its term cancels exactly (kept for the common signature of ALGORITHMS)
    m_A = np.asarray(m, dtype=np.int64)
    successes_A = np.asarray(m_success, dtype=np.int64)
    n_draws, n_success = int(m_A.sum()), int(successes_A.sum())
    if n_draws == 0:
        return np.zeros(len(m_A))
    numerator_A = successes_A * n_draws - m_A * n_success  # exact: |.| <= M² fits int64 for M < 3e9
    return numerator_A / float(n_draws) ** 2


def reward_to_go(log_ratio_K: np.ndarray, gamma: float = 0.95) -> np.ndarray:
    """R_k = Σ_{t>k} γ^{t−k−1} ℓ_t along one path, ℓ_t = log π_T(y_t|s_t) − log π(y_t|s_t) (SPEC.md §3).

    Backward recursion R_k = ℓ_{k+1} + γ R_{k+1} with R_{K−1} = 0: the token at k is excluded
    because its own ℓ_k enters MiniLLM through the single-step (GKD) term instead.
    """
    log_ratio_K = np.asarray(log_ratio_K, dtype=np.float64)
    reward_to_go_K = np.zeros_like(log_ratio_K)
    for k in range(len(log_ratio_K) - 2, -1, -1):
        reward_to_go_K[k] = log_ratio_K[k + 1] + gamma * reward_to_go_K[k + 1]
    return reward_to_go_K


def minillm_gradient(
    pi: np.ndarray, pi_teacher: np.ndarray, path_action: int, reward_to_go: float
) -> np.ndarray:
    """g = g_GKD + R_k (e_{y_k} − π̃) (SPEC.md §3, "MiniLLM").

    Gu et al. 2024 ("MiniLLM: Knowledge Distillation of Large Language Models", §2.2, single-step
    decomposition) split the policy gradient of KL(q_θ ‖ p) into a single-step term, the exact
    gradient of the per-step reverse KL (here g_GKD = gkd_gradient(pi, pi_teacher)), and a
    long-term term R_{t+1} ∇ log q_θ(y_t), with R_{t+1} = Σ_{t'>t} γ^{t'−t−1} log(p(y_t')/q_θ(y_t'))
    the reward-to-go of the rest of the path (our R_k, see `reward_to_go`). We use their un-mixed,
    on-policy form: no teacher-mixed sampling, no importance weights, no length normalisation.

    `path_action` is the index of the path's own token y_k within A(s), or −1 when y_k ∉ A(s); then
    e_{y_k} restricted to A(s) is 0 and the long-term term is −R_k π̃.
    """
    pi_A = _renormalise(pi)
    if not -1 <= path_action < len(pi_A):
        raise ValueError(f"path_action must be in [-1, {len(pi_A)}), got {path_action}")
    path_onehot_A = np.zeros_like(pi_A)
    if path_action >= 0:
        path_onehot_A[path_action] = 1.0
    return gkd_gradient(pi, pi_teacher) + reward_to_go * (path_onehot_A - pi_A)


def forward_kl_gradient(pi: np.ndarray, pi_teacher: np.ndarray) -> np.ndarray:
    """g_a = π̃_T,a − π̃_a: minus the logit gradient of KL(π̃_T ‖ π̃) (SPEC.md §3, supervised KD)."""
    return _renormalise(pi_teacher) - _renormalise(pi)


def jsd_gradient(pi: np.ndarray, pi_teacher: np.ndarray, beta: float = 0.5) -> np.ndarray:
    """g_a = Q_a (u_a − Σ_b Q_b u_b), u = (1−β) log(M/Q) (SPEC.md §3, generalised JSD(β)).

    Minus the logit gradient of GKD's (Agarwal et al. 2024) generalised Jensen–Shannon divergence
    D = β KL(P ‖ M) + (1−β) KL(Q ‖ M), M = βP + (1−β)Q, with P = π̃_T (teacher), Q = π̃ (student);
    the same convention as TRL's `generalized_jsd_loss`, β = 0.5 the symmetric JS.
    ∂D/∂Q_a = (1−β) log(Q_a/M_a): the terms from differentiating M sum to the constant −(1−β).
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd beta must be in the open interval (0, 1), got {beta}")
    q_A, p_A = _renormalise(pi), _renormalise(pi_teacher)
    log_m_A = _log(beta * p_A + (1.0 - beta) * q_A)
    return _through_softmax(q_A, (1.0 - beta) * (log_m_A - _log(q_A)))


# Every gradient above is built from probabilities and success rates in [0, 1] (and log-ratios
# of probabilities): unit scale. A vector whose largest component is this far below the scale of
# its inputs is the rounding residue of an exact zero (e.g. s_a − m_a·(S/M) in floating point leaves
# ~1e-18 where the exact value is 0), and a cosine would read a spurious ±1 direction into it.
ZERO_RTOL = 2.0**-40  # ≈ 9.1e-13: 2^12 ulps of the unit scale, far above residue, far below 1/M² for M < 1e6


def alignment_score(g_ref: np.ndarray, g: np.ndarray, scale_ref: float = 1.0, scale: float = 1.0) -> float:
    """cos(g*, g) = <g*, g> / (|g*| |g|); nan when either vector is 0 (SPEC.md §3, "Alignment score").

    "Zero" is relative to the scale of the inputs a vector was computed from (`scale_ref`, `scale`;
    1 for the probability-valued gradients of this module): a vector with max |component| at most
    `ZERO_RTOL · scale` is treated as the exact zero it rounds. A scale of 0 reads only an exact zero
    as zero: right for `ideal_gradient`'s g*, which has no rounding residue. Both vectors are then divided by
    their largest |component| so that |g|² cannot underflow or overflow; the cosine is unchanged by
    that positive scaling.
    """
    g_ref, g = np.asarray(g_ref, dtype=np.float64), np.asarray(g, dtype=np.float64)
    size_ref, size = np.max(np.abs(g_ref)), np.max(np.abs(g))
    if not (size_ref > ZERO_RTOL * scale_ref and size > ZERO_RTOL * scale):
        return float("nan")
    u, v = g_ref / size_ref, g / size
    return float(u @ v / np.sqrt((u @ u) * (v @ v)))


def teacher_advantage(pi: np.ndarray, pi_teacher: np.ndarray, q: np.ndarray) -> float:
    """Adv_T(s) = Σ_{a in A(s)} (π̃_T,a − π̃_a) Q_a (SPEC.md §3, "Teacher advantage")."""
    return float((_renormalise(pi_teacher) - _renormalise(pi)) @ np.asarray(q, dtype=np.float64))


def decision_support(n: np.ndarray, q: np.ndarray, n_min: int) -> np.ndarray | None:
    """A(s) = {a : n(s,a) >= n_min} as a mask over the children, or None if s is no decision point.

    s is a decision point iff |A(s)| >= 2 and max Q − min Q > 0 over A(s) (SPEC.md §2). Q is read
    on A(s) only, so children with too few visits may hold nan.
    """
    support = np.asarray(n) >= n_min
    if support.sum() < 2:
        return None
    q_A = np.asarray(q, dtype=np.float64)[support]
    return support if q_A.max() - q_A.min() > 0 else None


@dataclass(frozen=True, eq=False)  # eq=False: == on array fields has no single truth value
class NodeInputs:
    """Everything any algorithm in `ALGORITHMS` reads at one decision point, arrays on A(s)."""

    pi: np.ndarray
    """Student next-token probabilities on A(s) (renormalised inside each function)."""
    pi_teacher: np.ndarray
    """Teacher next-token probabilities on A(s) (renormalised inside each function)."""
    q: np.ndarray
    """Q(s,a) = w/n, estimated success probability after each action."""
    m: np.ndarray
    """On-policy draws of each action at s (rollouts with F <= k)."""
    m_success: np.ndarray
    """Successes among those on-policy draws."""
    path_action: int
    """Index in A(s) of the path's own next token y_k, or −1 when y_k is not in A(s)."""
    reward_to_go: float
    """MiniLLM's R_k along the path (see `reward_to_go`)."""
    jsd_beta: float = 0.5
    """β of the generalised JSD(β), in (0, 1)."""


ALGORITHMS: dict[str, Callable[[NodeInputs], np.ndarray]] = {
    "gkd": lambda x: gkd_gradient(x.pi, x.pi_teacher),
    "gkd_single_sample": lambda x: single_sample_gkd_gradient(x.pi, x.pi_teacher, x.m),
    "drgrpo": lambda x: drgrpo_gradient(x.pi, x.m, x.m_success),
    "minillm": lambda x: minillm_gradient(x.pi, x.pi_teacher, x.path_action, x.reward_to_go),
    "forward_kl": lambda x: forward_kl_gradient(x.pi, x.pi_teacher),
    "jsd": lambda x: jsd_gradient(x.pi, x.pi_teacher, x.jsd_beta),
}
"""Distillation directions compared against `ideal_gradient`; one pure function per algorithm."""
TEACHER_FREE = frozenset({"drgrpo"})
"""Algorithms whose direction reads no teacher (the reward alone): one value for every teacher."""
