"""Tasks as the pipeline sees them: questions as prompt token ids, and a reward for responses.

Prompts, chat templates and answer extraction live here and in the task YAMLs (``tasks/``); only
token ids reach a backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from harness.teachers import TeacherConfig


@dataclasses.dataclass(frozen=True)
class Question:
    """One question of a task."""

    id: str  # stable id (used in seeds, file names and results)
    prompt_ids: np.ndarray  # int [C]: the student's prompt, chat template applied
    doc: dict  # the task's record (question text, gold answer, ...) for teacher contexts


@dataclasses.dataclass(frozen=True)
class Skip:
    """Why a teacher is skipped on a question (recorded, never papered over)."""

    reason: str


class Task(Protocol):
    """What the pipeline needs from a task."""

    name: str
    max_new_tokens: int  # response length limit
    n_min: int  # visits a child needs to enter A(s)
    stop_ids: tuple[int, ...]  # ids that end a response

    def questions(self, limit: int | None) -> list[Question]:
        """The first ``limit`` questions (all when None), in a fixed order."""
        ...

    def rewards(self, question: Question, responses: Sequence[np.ndarray], truncated: np.ndarray) -> np.ndarray:
        """1 where a response's extracted answer is correct; truncated responses score 0."""
        ...

    def token_texts(self, ids: np.ndarray) -> list[str]:
        """The text of each token (for the per-token viewer); joining them gives the response."""
        ...

    def teacher_context(
        self, teacher: TeacherConfig, question: Question, correct: Sequence[np.ndarray], wrong: Sequence[np.ndarray]
    ) -> np.ndarray | Skip:
        """The teacher's context ids, given the solutions it needs (already chosen by the pipeline)."""
        ...


def load_task(name: str, **options) -> Task:
    """The task ``name``: ``synthetic``, or a task YAML under ``tasks/``."""
    if name == "synthetic":
        from harness.tasks.synthetic import SyntheticTask

        return SyntheticTask(**options)
    raise ValueError(f"unknown task {name!r}: available tasks are 'synthetic'")
