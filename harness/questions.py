"""What a run holds for one question, and the choices made from its initial rollouts (SPEC §4 steps 1-2).

Every choice is drawn from the run's seed and the question's id, so a resumed or grown run makes the
same choices for the same question whatever else it runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, MutableMapping

import numpy as np

from harness.backends import ScoreResult
from harness.config import RunConfig
from harness.core import Rollouts, TreeStats
from harness.seeds import derive_seed
from harness.tasks import CORRECT, OUTCOMES, WRONG, Question, Skip


class Passes(MutableMapping):
    """A question's forward passes over its paths by (path, teacher name or student): each a ScoreResult or a
    Skip. A pass given by its shard's name (`stored`) is read through ``read`` whenever it is asked for (a run's
    cache of passes, bounded in bytes), so a run holds a bounded number of them however many questions it has."""

    def __init__(self, read: Callable[[str], ScoreResult] | None = None):
        self._read = read
        self._items: dict[tuple[int, str], ScoreResult | Skip | str] = {}

    def stored(self, key: tuple[int, str], name: str) -> None:
        """The pass of ``key`` is the shard ``name``, read back when asked for."""
        self._items[key] = name

    def scored(self, key: tuple[int, str]) -> bool:
        """Whether ``key`` has a pass (not a Skip), without reading it."""
        return key in self._items and not isinstance(self._items[key], Skip)

    def skips(self) -> dict[tuple[int, str], Skip]:
        return {k: v for k, v in self._items.items() if isinstance(v, Skip)}

    def __getitem__(self, key: tuple[int, str]) -> ScoreResult | Skip:
        value = self._items[key]
        return self._read(value) if isinstance(value, str) else value

    def __setitem__(self, key: tuple[int, str], value: ScoreResult | Skip) -> None:
        self._items[key] = value

    def __delitem__(self, key: tuple[int, str]) -> None:
        del self._items[key]

    def __iter__(self) -> Iterator[tuple[int, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@dataclasses.dataclass
class QuestionState:
    """Everything the run holds for one question while it runs."""

    question: Question
    responses: list[np.ndarray]  # initial rollouts' response ids
    outcomes: np.ndarray  # int8 [n_initial]: codes into tasks.OUTCOMES
    paths: list[np.ndarray] = dataclasses.field(default_factory=list)  # representative paths
    path_outcome: list[int] = dataclasses.field(default_factory=list)  # each path's outcome code
    path_rollout: list[int] = dataclasses.field(default_factory=list)  # the initial rollout each path is
    solutions: list[tuple[list[np.ndarray], list[np.ndarray]]] = dataclasses.field(default_factory=list)  # per path: (correct, wrong) it may show
    tree: TreeStats | None = None
    scores: Passes = dataclasses.field(default_factory=Passes)  # (path, teacher|student): its pass over the path
    fills: Passes = dataclasses.field(default_factory=Passes)  # the same: passes over ids the records need besides
    budget: list[dict] = dataclasses.field(default_factory=list)  # rollouts and tokens per window
    spans: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # its depth windows
    note: str = ""  # why the question has no paths of one outcome, if so
    excluded_incorrect: int = 0  # rollouts scored 0 that may not serve as incorrect paths (truncated, ...)

    @property
    def rewards(self) -> np.ndarray:
        return (self.outcomes == CORRECT).astype(np.int64)

    @property
    def path_correct(self) -> list[bool]:
        return [o == CORRECT for o in self.path_outcome]

    def answers(self) -> dict[str, int]:
        """What the task's scorer made of the initial rollouts."""
        counts = np.bincount(self.outcomes, minlength=len(OUTCOMES))
        return {"scored": len(self.outcomes), **{name: int(counts[i]) for i, name in enumerate(OUTCOMES)}}


def windows(length: int, width: int) -> list[tuple[int, int]]:
    """Exponential depth windows ``[0,w), [w,3w), [3w,7w), ...`` covering ``length`` positions (SPEC §4)."""
    out, lo = [], 0
    while lo < length:
        hi = 2 * lo + width
        out.append((lo, min(hi, length)))
        lo = hi
    return out


def choose_paths(state: QuestionState, cfg: RunConfig) -> None:
    """Up to ``paths_per_outcome`` distinct correct and incorrect responses, chosen from the seed.

    Incorrect representatives are drawn from the outcomes ``cfg.incorrect_outcomes`` allows (wrong
    answers by default; truncated or unparseable ones only on request, SPEC §4 step 2).
    """
    incorrect = [OUTCOMES.index(name) for name in cfg.incorrect_outcomes]
    rng = np.random.default_rng(derive_seed(cfg.seed, state.question.id, "paths"))
    order = rng.permutation(len(state.responses))
    for allowed in ([CORRECT], incorrect):
        seen = set()
        for i in order:
            key = state.responses[i].tobytes()
            if state.outcomes[i] in allowed and key not in seen and len(seen) < cfg.paths_per_outcome:
                seen.add(key)
                state.paths.append(state.responses[i])
                state.path_outcome.append(int(state.outcomes[i]))
                state.path_rollout.append(int(i))
    state.excluded_incorrect = int(np.sum((state.outcomes != CORRECT) & ~np.isin(state.outcomes, incorrect)))
    kinds = set(state.path_correct)
    if kinds != {True, False}:
        have = "only correct" if True in kinds else "only incorrect" if kinds else "no"
        state.note = f"{have} paths among {len(state.responses)} rollouts"
        if state.excluded_incorrect and False not in kinds:
            state.note += f" ({state.excluded_incorrect} truncated or unparseable, not used as incorrect paths)"


def initial_tree(state: QuestionState, cascade: str) -> TreeStats:
    """The tree of the representative paths over the initial rollouts, each path's own rollout left out.

    A path is chosen *because of* its reward, so its own rollout would pull the on-path ``Q`` toward
    the path's outcome by about (r − Q)/n, in the direction of the correct-vs-incorrect contrast
    (SPEC §2). The path stays tracked; only its rollout is not counted.
    """
    tree = TreeStats(state.paths, cascade=cascade)
    own = set(state.path_rollout)
    others = [i for i in range(len(state.responses)) if i not in own]
    tree.ingest(Rollouts.from_lists([state.responses[i] for i in others], state.rewards[others]))
    return tree


def solutions(state: QuestionState, j: int, cfg: RunConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The student's own correct and wrong responses, never the scored path, in a seeded order.

    The order depends on the question and path, not the teacher, so every self-teacher on a path
    sees the same solutions (self-1c and self-sum-1c differ only in the summary).
    """
    rng = np.random.default_rng(derive_seed(cfg.seed, state.question.id, "solutions", j))
    scored = state.paths[j].tobytes()
    correct, wrong = [], []
    for i in rng.permutation(len(state.responses)):
        # a wrong solution shown to a teacher is a wrong answer, never a cut-off or unreadable response
        if state.responses[i].tobytes() == scored or state.outcomes[i] not in (CORRECT, WRONG):
            continue
        (correct if state.outcomes[i] == CORRECT else wrong).append(state.responses[i])
    return correct, wrong


def prepare(state: QuestionState, cfg: RunConfig) -> None:
    """Steps 1-2 from the initial rollouts: paths, the solutions each may show, the tree, the windows."""
    choose_paths(state, cfg)
    state.solutions = [solutions(state, j, cfg) for j in range(len(state.paths))]
    state.tree = initial_tree(state, cfg.cascade)
    state.spans = windows(max((len(p) for p in state.paths), default=0), cfg.window)
