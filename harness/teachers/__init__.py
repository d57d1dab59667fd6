"""Teachers (SPEC §1): what a teacher file says, the context it sees, the artefacts that context needs.

- :mod:`harness.teachers.config`: ``TeacherConfig`` (the teacher YAML schema), its loader and the
  checks that need only the file; prompt templates rendered in a sandbox;
- :mod:`harness.teachers.context`: the context text for one question, a pure function;
- :mod:`harness.teachers.artefacts`: solutions by named models and summaries, generated once per
  question and cached in the run directory.
"""

from harness.teachers.artefacts import Artefacts, Solution, build_artefacts, solution_key, summary_key, text_digest
from harness.teachers.config import (
    STUDENT,
    SUMMARY_VARIABLES,
    TEACHER_DIR,
    TEXT_SUMMARIZERS,
    TeacherConfig,
    artefact_models,
    context_text,
    context_variables,
    load_teacher,
    model_keys,
    models_named,
    placeholder_context,
    render,
    teacher_path,
    text_summarizer,
    validate,
)
from harness.teachers.context import context_or_skip

__all__ = [
    "STUDENT", "SUMMARY_VARIABLES", "TEACHER_DIR", "TEXT_SUMMARIZERS", "Artefacts", "Solution", "TeacherConfig",
    "artefact_models", "build_artefacts", "context_or_skip", "context_text", "context_variables", "load_teacher",
    "model_keys", "models_named", "placeholder_context", "render", "solution_key", "summary_key", "teacher_path", "text_digest",
    "text_summarizer", "validate",
]
