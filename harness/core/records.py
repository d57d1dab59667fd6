"""Per-node records (SPEC §4 step 5): one schema, and a pure function from a path's tree to its records.

``NodeRecord`` is the one definition of a row of ``nodes.parquet``: the writer, the leaderboard, the
lm-eval bridge and the ``evaluate`` metric all take their column names from here. ``NODE_COLUMNS``
is the part of it that :func:`harness.core.stats.aggregate` reads.

:func:`path_records` turns one representative path (its children in the tree, the student's and each
teacher's known log-probabilities along it, and the scoring settings) into one record per decision
point x teacher x algorithm, plus one row per decision point x teacher x child for the viewer, as
columns (one array per field, not a dict per row: a 250-question, 50-teacher run's records took 0.5 GB
instead of 1.2 GB).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from harness.core.divergences import DIVERGENCES
from harness.core.gradients import (
    ALGORITHMS,
    NodeInputs,
    alignment_score,
    decision_support,
    ideal_gradient,
    reward_to_go,
    teacher_advantage,
)
from harness.core.tree import ChildTable

KEY_BITS = 32  # LogprobTable keys: position << KEY_BITS | token


@dataclasses.dataclass(frozen=True)
class NodeRecord:
    """One row of ``nodes.parquet``: a decision point x teacher x algorithm (SPEC §4 step 5)."""

    question_id: str
    path_id: int  # index of the representative path within its question
    path_correct: bool  # the path's outcome is correct
    path_outcome: str  # correct, wrong, truncated or unparseable
    position: int  # depth k of the decision point on the path
    teacher: str
    algorithm: str
    alignment: float  # cos(g*, g_algorithm) on A(s) (SPEC §3)
    ideal_norm: float  # |g*|
    teacher_advantage: float  # E_{pi_T}[Q] - E_pi[Q] on A(s)
    n_actions: int  # |A(s)|
    value: float  # E_pi[Q] on A(s), pi renormalised
    visits: int  # sum of n over A(s)
    kl: float  # divergences of the full distributions at the position (the teacher's pass)
    reverse_kl: float
    js: float
    tv: float
    prob_cosine: float
    approximate: bool  # read from top-k lists (score_with: vllm): divergences from top-k tails, an unlisted child at its bound


NODE_FIELDS = tuple(f.name for f in dataclasses.fields(NodeRecord))
# each field's column type in Arrow / datasets terms (the evaluate metric's features)
NODE_DTYPES = {f.name: {"str": "string", "int": "int64", "bool": "bool", "float": "float64"}[f.type]
               for f in dataclasses.fields(NodeRecord)}
# what aggregate() reads; the rest of a record is for readers of nodes.parquet
NODE_COLUMNS = (
    "question_id", "path_id", "path_correct", "position", "teacher", "algorithm",
    "alignment", "ideal_norm", "teacher_advantage", "n_actions", *DIVERGENCES,
)
CHILD_DTYPES = {"question_id": "string", "path_id": "int64", "position": "int64", "teacher": "string", "token": "int64",
                "text": "string", "n": "int64", "w": "int64", "q": "float64", "pi": "float64", "pi_teacher": "float64"}
CHILD_FIELDS = tuple(CHILD_DTYPES)
assert set(NODE_COLUMNS) <= set(NODE_FIELDS) and set(DIVERGENCES) <= set(NODE_FIELDS)
_NUMPY = {"string": object, "int64": np.int64, "bool": bool, "float64": np.float64}  # strings stay Python str objects


def columns(values: Mapping[str, Sequence], dtypes: Mapping[str, str]) -> dict[str, np.ndarray]:
    """A table as one 1-D array per field of ``dtypes`` (Arrow type names), from ``values``' lists."""
    return {f: np.array(values[f], dtype=_NUMPY[t]) if len(values[f]) else np.zeros(0, _NUMPY[t]) for f, t in dtypes.items()}


def concat(parts: Sequence[Mapping[str, np.ndarray]], dtypes: Mapping[str, str]) -> dict[str, np.ndarray]:
    """The tables ``parts`` (each from :func:`columns`) one after another."""
    return {f: np.concatenate([p[f] for p in parts]) if parts else np.zeros(0, _NUMPY[t]) for f, t in dtypes.items()}


@dataclasses.dataclass(frozen=True)
class LogprobTable:
    """Known log-probabilities along one path, looked up by (position, token)."""

    keys: np.ndarray  # int64 [N], sorted: position << KEY_BITS | token
    logp: np.ndarray  # float [N]

    @staticmethod
    def build(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], start: int = 0) -> LogprobTable:
        """From (ids, offsets, logprobs-on-those-ids) triples of scoring passes, whose first position is ``start``
        (a window of the path); the first wins on overlap."""
        keys, vals = [], []
        for ids, offsets, lp in parts:
            pos = np.repeat(np.arange(start, start + len(offsets) - 1), np.diff(offsets))
            keys.append((pos << KEY_BITS) | np.asarray(ids).astype(np.int64))
            vals.append(lp)
        allk = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        uniq, first = np.unique(allk, return_index=True)
        return LogprobTable(uniq, np.concatenate(vals)[first] if keys else np.zeros(0))

    def get(self, position: np.ndarray, token: np.ndarray) -> np.ndarray:
        """Log-probabilities at (position, token); nan where unknown."""
        q = (np.asarray(position, np.int64) << KEY_BITS) | np.asarray(token, np.int64)
        at = np.clip(np.searchsorted(self.keys, q), 0, max(len(self.keys) - 1, 0))
        found = (self.keys[at] == q) if len(self.keys) else np.zeros(len(q), bool)
        return np.where(found, self.logp[at] if len(self.keys) else np.nan, np.nan)


@dataclasses.dataclass(frozen=True)
class TeacherPass:
    """One teacher's forward pass over a path, as the records need it."""

    name: str
    table: LogprobTable  # its log-probabilities along the path
    divergences: Mapping[str, np.ndarray]  # each of DIVERGENCES per position
    approximate: bool


@dataclasses.dataclass(frozen=True)
class RecordSettings:
    """The scoring settings a record depends on (never the tree's)."""

    n_min: int  # visits a child needs to enter A(s)
    gamma: float  # MiniLLM reward-to-go discount
    jsd_beta: float  # generalised JSD mixture weight
    algorithms: tuple[str, ...]


def support_children(children: ChildTable, length: int, n_min: int) -> tuple[np.ndarray, np.ndarray]:
    """(position, token) of every child in A(s) at the decision points of a path of ``length`` tokens:
    the (position, token) pairs whose student and teacher probabilities `path_records` reads."""
    bounds = np.flatnonzero(np.diff(children.position, prepend=-1, append=-1))
    keep = np.zeros(len(children.position), dtype=bool)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        if children.position[lo] < length and (support := decision_support(children.n[lo:hi], children.q()[lo:hi], n_min)) is not None:
            keep[lo:hi] = support
    return children.position[keep], children.token[keep]


def path_records(
    question_id: str,
    path_id: int,
    path: np.ndarray,
    outcome: str,
    children: ChildTable,
    student: LogprobTable,
    teachers: Sequence[TeacherPass],
    settings: RecordSettings,
    token_texts: Callable[[np.ndarray], list[str]],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, int]]:
    """Records of one path: (node table, one array per NODE_FIELDS; child table, one per CHILD_FIELDS; skipped counts).

    A position is a decision point when at least two children are in A(s) (``decision_support``);
    one whose student (or teacher) probability is unknown for a child in A(s) is skipped and counted.
    A position with a second visited child that is no decision point is counted too: ``below_n_min``
    (fewer than two children with ``n_min`` visits) or ``equal_q`` (enough visits, one Q for all),
    so a run without decision points can say why.
    """
    nodes: dict[str, list] = {f: [] for f in NODE_FIELDS}
    rows: dict[str, list] = {f: [] for f in CHILD_FIELDS}
    skipped = {"missing_student_logprob": 0, "missing_teacher_logprob": 0, "below_n_min": 0, "equal_q": 0}
    k_all = np.arange(len(path))
    rtg = {t.name: reward_to_go(t.table.get(k_all, path) - student.get(k_all, path), settings.gamma) for t in teachers}
    ch = children
    bounds = np.flatnonzero(np.diff(ch.position, prepend=-1, append=-1))
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        k = int(ch.position[lo])
        if k >= len(path):
            continue
        n, w = ch.n[lo:hi], ch.w[lo:hi]
        q = w / np.maximum(n, 1)
        support = decision_support(n, q, settings.n_min)
        if support is None:
            if (n > 0).sum() >= 2:
                skipped["below_n_min" if (n >= settings.n_min).sum() < 2 else "equal_q"] += 1
            continue
        tok, n, w, q = ch.token[lo:hi][support], n[support], w[support], q[support]
        m, ms = ch.m[lo:hi][support], ch.m_success[lo:hi][support]
        pi = np.exp(student.get(np.full(len(tok), k), tok))
        if not np.all(np.isfinite(pi)):
            skipped["missing_student_logprob"] += 1
            continue
        g_star = ideal_gradient(pi, q)
        where = np.flatnonzero(tok == path[k])
        path_action = int(where[0]) if where.size else -1
        texts = None
        for t in teachers:
            pit = np.exp(t.table.get(np.full(len(tok), k), tok))
            if not np.all(np.isfinite(pit)):
                skipped["missing_teacher_logprob"] += 1
                continue
            inputs = NodeInputs(pi, pit, q, m, ms, path_action, float(rtg[t.name][k]), settings.jsd_beta)
            base = dict(
                question_id=question_id, path_id=path_id, path_correct=outcome == "correct", path_outcome=outcome,
                position=k, teacher=t.name, ideal_norm=float(np.linalg.norm(g_star)),
                teacher_advantage=teacher_advantage(pi, pit, q), n_actions=len(tok),
                value=float(pi @ q / pi.sum()), visits=int(n.sum()),
                **{d: float(t.divergences[d][k]) for d in DIVERGENCES}, approximate=bool(t.approximate),
            )
            for algo in settings.algorithms:
                # g* is 0 only where every Q ties, never at a decision point: no residue rule for it (scale 0)
                alignment = alignment_score(g_star, ALGORITHMS[algo](inputs), scale_ref=0.0)
                for f, v in NodeRecord(**base, algorithm=algo, alignment=alignment).__dict__.items():
                    nodes[f].append(v)
            texts = texts if texts is not None else token_texts(tok)
            if len(texts) != len(tok):
                raise ValueError(f"token_texts gave {len(texts)} texts for {len(tok)} tokens")
            child = dict(question_id=[question_id] * len(tok), path_id=[path_id] * len(tok), position=[k] * len(tok),
                         teacher=[t.name] * len(tok), token=tok.tolist(), text=texts, n=n.tolist(), w=w.tolist(),
                         q=(w / n).tolist(), pi=pi.tolist(), pi_teacher=pit.tolist())
            for f in CHILD_FIELDS:
                rows[f] += child[f]
    return columns(nodes, NODE_DTYPES), columns(rows, CHILD_DTYPES), skipped
