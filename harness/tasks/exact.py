"""The synthetic task: questions of the exact synthetic model (SPEC §7, backend ``synthetic``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from harness.exact_lm import EOS, SyntheticLM
from harness.seeds import derive_seed
from harness.tasks import CORRECT, TRUNCATED, WRONG, Question, Skip
from harness.teachers import TeacherConfig


class SyntheticTask:
    """Question i is ``SyntheticLM(seed=derive_seed('synthetic-task', i))``; its prompt is that seed."""

    name = "synthetic"
    n_min = 20
    max_questions = 100_000  # limit's ceiling: a day of CPU at the default settings, made in a few seconds
    stop_ids = (EOS,)

    def __init__(self, **model_options):
        self._options = model_options
        self._models: dict[int, SyntheticLM] = {}
        self.max_new_tokens = SyntheticLM(**model_options).horizon
        self.answer_counts = {"scored": 0, "correct": 0, "unparseable": 0, "truncated": 0}  # every answer parses

    def questions(self, limit: int | None) -> list[Question]:
        count = 32 if limit is None else limit
        seeds = [derive_seed("synthetic-task", i) % (2**31) for i in range(count)]
        return [Question(id=f"q{i:03d}", prompt_ids=np.array([s]), doc={"seed": s}) for i, s in enumerate(seeds)]

    def identity(self) -> dict:
        return {"stop_ids": list(self.stop_ids)}  # the exact model judges its own responses

    def rewards(self, question: Question, responses: Sequence[np.ndarray], truncated: np.ndarray) -> np.ndarray:
        return (self.outcomes(question, responses, truncated) == CORRECT).astype(np.int64)

    def outcomes(self, question: Question, responses: Sequence[np.ndarray], truncated: np.ndarray) -> np.ndarray:
        seed = question.doc["seed"]
        lm = self._models.get(seed) or self._models.setdefault(seed, SyntheticLM(seed=seed, **self._options))
        cut = np.asarray(truncated, dtype=bool)
        out = np.where(cut, TRUNCATED, np.where(lm.rewards(responses) > 0, CORRECT, WRONG)).astype(np.int8)
        self.answer_counts["scored"] += len(out)
        self.answer_counts["truncated"] += int(cut.sum())
        self.answer_counts["correct"] += int((out == CORRECT).sum())
        return out

    def token_texts(self, ids: np.ndarray) -> list[str]:
        return ["<eos>" if t == EOS else f" t{t}" for t in ids]

    def chat_ids(self, user_text, chat_template_options=None) -> np.ndarray:
        raise NotImplementedError("the synthetic task has no text prompts")

    def decode(self, ids) -> str:
        return "".join(self.token_texts(np.asarray(ids)))

    def check_teacher(self, teacher: TeacherConfig) -> None:
        """Synthetic teachers see the student's one-id prompt; anything else is skipped per question."""

    def teacher_context(
        self, teacher: TeacherConfig, question: Question, correct, wrong, artefacts=None, response_length=None
    ) -> np.ndarray | Skip:
        if teacher.correct_solutions or teacher.wrong_solutions:
            return Skip("synthetic teachers take no solutions in context")
        return question.prompt_ids
