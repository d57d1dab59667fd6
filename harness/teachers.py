"""Teacher configurations: one YAML file each, one frozen dataclass (STYLE.md, SPEC §1).

A teacher file names everything that moves a log-probability: the model (``student`` for
self-distillation), its revision and dtype, chat-template options, and the context the teacher
sees before the student's response (a Jinja2 template rendered in a sandbox, undefined variables
an error), including what that context needs (solutions, summaries).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from harness.config import ConfigError, build, load_yaml

TEACHER_DIR = Path(__file__).resolve().parent.parent / "teachers"


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """One teacher configuration (``teachers/<name>.yaml``)."""

    name: str  # the teacher's name in results (defaults to the file name without .yaml)
    description: str = ""  # one line for the leaderboard
    model: str = "student"  # "student" (self-distillation) or a model id / local directory
    revision: str | None = None  # hub revision of an external model
    dtype: str = "auto"  # auto, float32, bfloat16, float16
    chat_template_options: dict = dataclasses.field(default_factory=dict)  # e.g. {enable_thinking: false}
    context_template: str | None = None  # Jinja2 user message; None shows the student's own prompt
    correct_solutions: int = 0  # correct solutions the context needs
    wrong_solutions: int = 0  # wrong solutions the context needs
    solution_source: str = "student"  # "student" (its own rollouts, never the scored path) or a model id
    summarizer: str | None = None  # a model that summarises each solution before it is shown
    summary_prompt: str | None = None  # Jinja2 prompt for the summariser (variable: solution)
    file: str = ""  # where it was loaded from (filled by the loader)

    @property
    def is_self(self) -> bool:
        return self.model == "student"


def teacher_path(name_or_path: str) -> Path:
    """``teachers/<name>.yaml`` for a bare name, else the given path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return TEACHER_DIR / f"{name_or_path}.yaml"


def load_teacher(name_or_path: str) -> TeacherConfig:
    """Load and validate one teacher file; errors name the file and the key."""
    path = teacher_path(name_or_path)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of teacher keys")
    if "file" in data:
        raise ConfigError(f"{path}: unknown key 'file' (it is filled in by the loader)")
    data = {"name": path.stem, **data, "file": str(path)}
    return build(TeacherConfig, data, str(path))
