"""A teacher's context text for one question: a pure function of the teacher, the question and the
solutions it may show (SPEC §1). Tokenisation and length limits are the task's."""

from __future__ import annotations

from collections.abc import Sequence

from harness.backends.base import STUDENT
from harness.safeio import MAX_RENDER_CHARS, RenderLimit
from harness.teachers.artefacts import Artefacts
from harness.teachers.config import TeacherConfig, context_text


def context_or_skip(
    teacher: TeacherConfig,
    question_id: str,
    prompt: str,
    correct: Sequence[str],
    wrong: Sequence[str],
    artefacts: Artefacts | None = None,
) -> tuple[str | None, str | None]:
    """(the teacher's user message, None), or (None, why it cannot be built for this question).

    ``correct`` / ``wrong`` are the student's own responses as text (never the scored path), used
    when the teacher's solution_source is the student; solutions from a named model and model
    summaries come from ``artefacts`` (:func:`harness.teachers.build_artefacts`). A needed solution or
    summary that does not exist is a reason to skip, never an invented one.
    """
    need_c, need_w = teacher.correct_solutions, teacher.wrong_solutions
    source = "the student's rollouts" if teacher.solution_source == STUDENT else teacher.solution_source
    if teacher.solution_source == STUDENT:
        correct_texts, wrong_texts = list(correct[:need_c]), list(wrong[:need_w])
    elif need_c or need_w:
        if artefacts is None:
            raise ValueError(f"teacher {teacher.name!r} shows solutions from {source}: pass build_artefacts(...)")
        got_c, got_w = artefacts.solutions_for(teacher, question_id)
        correct_texts, wrong_texts = [s.text for s in got_c], [s.text for s in got_w]
    else:
        correct_texts, wrong_texts = [], []
    if len(correct_texts) < need_c:
        return None, f"needs {need_c} correct solution(s); {source} gave {len(correct_texts)}"
    if len(wrong_texts) < need_w:
        return None, f"needs {need_w} wrong solution(s); {source} gave {len(wrong_texts)}"
    summaries: dict[str, list[str]] = {}
    if teacher.summarizer is not None:
        if artefacts is None and teacher.needs_artefacts:
            raise ValueError(f"teacher {teacher.name!r} shows model summaries: pass build_artefacts(...)")
        art = artefacts or Artefacts()
        for kind, texts in (("correct", correct_texts), ("wrong", wrong_texts)):
            summaries[kind] = [art.summary(teacher, t) for t in texts]
            if any(s is None for s in summaries[kind]):
                return None, f"no summary of a {kind} solution by {teacher.summarizer} (truncated, not generated, or its solution unfit for the summary prompt: too long, or spelling a control token)"
    try:
        text = context_text(teacher, prompt, correct_texts, wrong_texts, summaries.get("correct"), summaries.get("wrong"))
    except RenderLimit:
        # the template rendered within its limits on placeholders when the teacher was loaded: what it shows made it
        # too long, so this question is skipped, as a context over the model's positions is
        shown = sum(map(len, [prompt, *correct_texts, *wrong_texts, *(x for v in summaries.values() for x in v)]))
        return None, (f"context longer than {MAX_RENDER_CHARS:,} characters (the question and the solutions it shows "
                      f"are {shown:,})")
    return text, None
