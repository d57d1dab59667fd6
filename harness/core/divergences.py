"""Divergences between the full next-token distributions π(.|s) and π_T(.|s) (SPEC.md §3, "Divergences").

Inputs are log-probabilities (log-softmax outputs) with the vocabulary on the last axis and any
leading shape, float32 or float64: `logp_student_..._V`, `logp_teacher_..._V`. Outputs are float64
arrays of the leading shape. A zero probability is a −inf log-probability: 0·log 0 = 0, so no NaN
and no inf appear where the true value is finite; KL is +inf exactly when the true value is (mass
where the other distribution has none). The functions run on chunks of rows, so each keeps only a
few temporaries of the input's size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Floor of a top-k tail bucket: a softmax never puts exactly zero mass off its top-k, but rounding
# of Σ known >= 1 would, and a zero bucket facing a positive one would make KL +inf.
_TAIL_FLOOR = 1e-12


def _float64(logp_V: np.ndarray) -> np.ndarray:
    return np.asarray(logp_V, dtype=np.float64)


def _kl(logp_V: np.ndarray, logq_V: np.ndarray, p_V: np.ndarray | None = None) -> np.ndarray:
    """KL(p ‖ q) = Σ_v p_v (log p_v − log q_v), with 0·log(0/q) = 0 and +inf iff p_v > 0 = q_v; ``p_V``:
    exp(``logp_V``), when it is at hand."""
    with np.errstate(invalid="ignore"):  # −inf − (−inf) and 0·(−inf) are fixed just below
        terms_V = logp_V - logq_V
        terms_V *= np.exp(logp_V) if p_V is None else p_V
    terms_V[np.isneginf(logp_V)] = 0.0
    # Test the supports directly: exp(log p) can underflow to 0 and turn the inf term into 0·inf.
    mass_where_q_is_zero = np.any(np.isneginf(logq_V) & np.isfinite(logp_V), axis=-1)
    return np.where(mass_where_q_is_zero, np.inf, terms_V.sum(axis=-1))


def forward_kl(logp_student: np.ndarray, logp_teacher: np.ndarray) -> np.ndarray:
    """KL(π_T ‖ π) = Σ_v π_T,v log(π_T,v / π_v): the supervised-KD direction (SPEC.md §3)."""
    return _kl(_float64(logp_teacher), _float64(logp_student))


def reverse_kl(logp_student: np.ndarray, logp_teacher: np.ndarray) -> np.ndarray:
    """KL(π ‖ π_T) = Σ_v π_v log(π_v / π_T,v): the on-policy distillation direction (SPEC.md §3)."""
    return _kl(_float64(logp_student), _float64(logp_teacher))


def js(logp_student: np.ndarray, logp_teacher: np.ndarray) -> np.ndarray:
    """JS = ½ KL(π ‖ m) + ½ KL(π_T ‖ m), m = ½(π + π_T); natural log, in [0, log 2] (SPEC.md §3).

    m > 0 wherever either distribution is, so JS is always finite.
    """
    return _js(_float64(logp_student), _float64(logp_teacher))


def _js(logp_V: np.ndarray, logq_V: np.ndarray, p_V: np.ndarray | None = None, q_V: np.ndarray | None = None) -> np.ndarray:
    logm_V = np.logaddexp(logp_V, logq_V) - np.log(2.0)
    return 0.5 * (_kl(logp_V, logm_V, p_V) + _kl(logq_V, logm_V, q_V))


def tv(logp_student: np.ndarray, logp_teacher: np.ndarray) -> np.ndarray:
    """TV = ½ Σ_v |π_v − π_T,v|, in [0, 1] (SPEC.md §3)."""
    return _tv(np.exp(_float64(logp_student)), np.exp(_float64(logp_teacher)))


def _tv(p_V: np.ndarray, q_V: np.ndarray) -> np.ndarray:
    diff_V = p_V - q_V
    return 0.5 * np.abs(diff_V, out=diff_V).sum(axis=-1)


def prob_cosine(logp_student: np.ndarray, logp_teacher: np.ndarray) -> np.ndarray:
    """cos(π, π_T) = <π, π_T> / (|π| |π_T|) of the probability vectors (SPEC.md §3)."""
    return _prob_cosine(np.exp(_float64(logp_student)), np.exp(_float64(logp_teacher)))


def _prob_cosine(p_V: np.ndarray, q_V: np.ndarray) -> np.ndarray:
    dot = np.einsum("...v,...v->...", p_V, q_V)
    return dot / np.sqrt(np.einsum("...v,...v->...", p_V, p_V) * np.einsum("...v,...v->...", q_V, q_V))


DIVERGENCES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "kl": forward_kl,
    "reverse_kl": reverse_kl,
    "js": js,
    "tv": tv,
    "prob_cosine": prob_cosine,
}
"""Every divergence by its name in results.json (SPEC.md §6); all take (logp_student, logp_teacher)."""


ROWS_AT_ONCE = 16  # rows of a large vocabulary computed together: a few temporaries of 16 x V float64


def all_divergences(logp_student: np.ndarray, logp_teacher: np.ndarray) -> dict[str, np.ndarray]:
    """{name: divergence(π, π_T)} for every entry of `DIVERGENCES`, equal to calling each. Each input is
    converted to float64 and exponentiated once for all five, ``ROWS_AT_ONCE`` rows at a time (a chunk of
    Qwen3 rows, 151,936 wide, would otherwise be converted ten times over, in temporaries of 300 MB)."""
    s_RV = np.asarray(logp_student)
    t_RV = np.asarray(logp_teacher)
    if s_RV.shape != t_RV.shape or s_RV.ndim == 0:
        raise ValueError(f"log-probabilities of one shape are compared, got {s_RV.shape} and {t_RV.shape}")
    lead = s_RV.shape[:-1]
    s_RV, t_RV = s_RV.reshape(-1, s_RV.shape[-1]), t_RV.reshape(-1, t_RV.shape[-1])
    out = {name: np.empty(len(s_RV)) for name in DIVERGENCES}
    starts = list(range(0, len(s_RV), ROWS_AT_ONCE)) or [0]  # no rows: one empty block
    if len(starts) > 1 and len(s_RV) - starts[-1] == 1:  # no block of one row among others: numpy's einsum
        starts.pop()  # sums a lone row another way, and a value would depend on the rows beside it
    for lo, hi in zip(starts, [*starts[1:], len(s_RV)], strict=True):
        rows = slice(lo, hi)
        lp_V, lq_V = _float64(s_RV[rows]), _float64(t_RV[rows])
        p_V, q_V = np.exp(lp_V), np.exp(lq_V)
        out["kl"][rows] = _kl(lq_V, lp_V, q_V)
        out["reverse_kl"][rows] = _kl(lp_V, lq_V, p_V)
        out["js"][rows] = _js(lp_V, lq_V, p_V, q_V)
        out["tv"][rows] = _tv(p_V, q_V)
        out["prob_cosine"][rows] = _prob_cosine(p_V, q_V)
    return {name: value.reshape(lead)[()] for name, value in out.items()}  # one row: a scalar, as each gives


def topk_tail_divergences(
    ids_student_K: np.ndarray,
    logp_student_K: np.ndarray,
    ids_teacher_K: np.ndarray,
    logp_teacher_K: np.ndarray,
) -> dict[str, float | bool]:
    """Approximate divergences from top-k log-probabilities plus one tail bucket (SPEC.md §3).

    Convention: both distributions are coarse-grained onto the same partition of the vocabulary,
    {each id in BOTH top-k lists} ∪ {tail}. An id in only one list goes into the tail for both sides,
    since the other side's probability of it is unknown; each side's tail mass is then known exactly
    as 1 − Σ of its probabilities on the common ids, floored at 1e-12. The result is `DIVERGENCES` of
    the two coarse-grained distributions, marked {"approximate": True}. By the data-processing
    inequality it is a lower bound on the full-vocabulary kl, reverse_kl, js and tv (up to the
    floor); prob_cosine has no such bound. With k = the whole vocabulary it is exact. Each id list
    must hold distinct ids.
    """
    _, student_idx, teacher_idx = np.intersect1d(
        ids_student_K, ids_teacher_K, assume_unique=True, return_indices=True
    )
    rows = topk_tail_divergences_rows(_float64(logp_student_K)[student_idx][None], _float64(logp_teacher_K)[teacher_idx][None])
    return {**{name: float(value[0]) for name, value in rows.items()}, "approximate": True}


def topk_tail_divergences_rows(common_student_RK: np.ndarray, common_teacher_RK: np.ndarray) -> dict[str, np.ndarray]:
    """`topk_tail_divergences` of many rows at once, from their common ids already aligned: entry ``[r, i]`` of
    each side is its log-probability of the ``i``-th id both lists of row ``r`` hold, and ``-inf`` on both sides
    where there is none (padding). Each side's tail bucket is 1 − Σ of its common probabilities, floored at
    1e-12; {name: float64 [R]} for every entry of `DIVERGENCES`."""
    coarse = []
    for common_RK in (_float64(common_student_RK), _float64(common_teacher_RK)):
        tail_R = np.maximum(1.0 - np.exp(common_RK).sum(axis=-1), _TAIL_FLOOR)
        coarse.append(np.concatenate([common_RK, np.log(tail_R)[..., None]], axis=-1))
    return {name: np.asarray(value, dtype=np.float64).reshape(len(coarse[0])) for name, value in all_divergences(*coarse).items()}
