"""Teacher configurations: one YAML file each, one frozen dataclass (STYLE.md, SPEC §1).

A teacher file names everything that moves a log-probability: the model (``student`` for
self-distillation), its revision and dtype, chat-template options, and the context the teacher
sees before the student's response (a Jinja2 template rendered in a sandbox, undefined variables
an error), including what that context needs: correct and wrong solutions, where they come from
(the student's own rollouts, or a named model), and an optional summariser.

Three layers of checks:

- :func:`load_teacher`: the file alone (unknown keys, types, template syntax and variables, what
  the context needs against what the template shows), one line naming the file and the key;
- ``Task.check_teacher``: the file against a task and student (vocabulary of every model it names,
  chat-template options of a self-teacher against the student's prompt, a context that cannot fit
  the model whatever the question);
- ``Task.teacher_context``: per question, a :class:`~harness.tasks.Skip` with the reason when a
  needed solution or summary does not exist or the context would be truncated; never an invented one.

Context artefacts (solutions written by another model, summaries) live in
:mod:`harness.teachers.artefacts`; the context itself is assembled by :mod:`harness.teachers.context`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from harness.backends.base import STUDENT
from harness.config import MAX_COUNT, MAX_TEMPERATURE, MIN_TEMPERATURE, BUNDLED, REPOSITORY, ConfigError, build, data_dir, load_yaml
from harness.safeio import excerpt, render_template, template_variables
from harness.wording import plural

if TYPE_CHECKING:
    from harness.backends import ModelSpec


TEACHER_DIR = data_dir("teachers")

# Summarisers that are deterministic text functions rather than models ("name": "module:function").
TEXT_SUMMARIZERS: dict[str, str] = {
    "toy-summary": "harness.toy:summarize",
}

SUMMARY_VARIABLES = ("question", "solution")


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """One teacher configuration (``teachers/<name>.yaml``)."""

    name: str  # the teacher's name in results (defaults to the file name without .yaml)
    description: str = ""  # one line for the leaderboard
    model: str = STUDENT  # "student" (self-distillation) or a model id / local directory ("./x" is relative to this file)
    revision: str | None = None  # hub revision of an external model
    dtype: str = "auto"  # auto, float32, bfloat16, float16: of every model this file names
    chat_template_options: dict = dataclasses.field(default_factory=dict)  # e.g. {enable_thinking: false}; unset keys take the task's
    context_template: str | None = None  # Jinja2 user message (variables: question, correct, wrong, *_summaries); None: the student's prompt
    correct_solutions: int = 0  # correct solutions the context needs
    wrong_solutions: int = 0  # wrong solutions the context needs
    solution_source: str = STUDENT  # "student" (its own rollouts, never the scored path) or a model id / directory
    solution_revision: str | None = None  # hub revision of the solution_source model
    solution_attempts: int = 8  # solutions sampled from solution_source per question, to find correct and wrong ones
    solution_temperature: float = 0.6  # their sampling temperature (seeded from the question; no top-p/top-k)
    solution_max_new_tokens: int | None = None  # their length limit; None takes the task's
    solution_chat_template_options: dict = dataclasses.field(default_factory=dict)  # their prompt's chat options; unset keys take the task's
    summarizer: str | None = None  # a model id / directory, or a text function of TEXT_SUMMARIZERS (e.g. toy-summary)
    summarizer_revision: str | None = None  # hub revision of the summariser model
    summary_prompt: str | None = None  # Jinja2 user message for a model summariser (variables: question, solution)
    summary_temperature: float = 0.6  # the summariser's sampling temperature (seeded from the solution)
    summary_max_new_tokens: int = 1024  # a summary reaching this length is truncated and not used
    summary_chat_template_options: dict = dataclasses.field(default_factory=lambda: {"enable_thinking": False})  # the summariser's chat options
    model_args: dict = dataclasses.field(default_factory=dict)  # backend options of this teacher's model (vllm: engine arguments, e.g. {tensor_parallel_size: 2})
    file: str = ""  # where it was loaded from (filled by the loader)

    @property
    def is_self(self) -> bool:
        """The student reads the response under a context of its own (self-distillation)."""
        return self.model == STUDENT

    @property
    def needs_artefacts(self) -> bool:
        """Solutions from another model or a model summary must be generated before scoring."""
        return self.solution_source != STUDENT or (self.summarizer is not None and self.summarizer not in TEXT_SUMMARIZERS)


def teacher_path(name_or_path: str) -> Path:
    """``teachers/<name>.yaml`` for a bare name, else the given path (``~`` expanded)."""
    try:
        path = _teacher_path(name_or_path)
        path.exists()  # a name no file system holds (too long) is refused here, not in each caller
        return path
    except OSError as exc:
        raise ConfigError(f"teacher {excerpt(name_or_path, 80)}: {exc.strerror or exc} (a teacher is a name under "
                          f"{TEACHER_DIR} or the path of a teacher YAML file)") from None


def _teacher_path(name_or_path: str) -> Path:
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml") or p.is_file():  # a folder of the same name (a run's --out) is no teacher
        return p
    under = TEACHER_DIR / f"{name_or_path}.yaml"
    if ("/" in name_or_path or name_or_path.startswith("~")) and not under.exists():
        return p  # a path, not a name: its error names it
    return under


def _resolve_model(value: str | None, base: Path) -> str | None:
    """``./dir`` and ``../dir`` are relative to the teacher file's folder ``base`` (of the file a link leads to;
    odiag's own teachers, installed, as from their place in the checkout: ``../harness/toy_models/teacher``);
    anything else is a hub id or path."""
    if value is None or not value.startswith(("./", "../")):
        return value
    if base.resolve().is_relative_to(BUNDLED):
        base = REPOSITORY / base.resolve().relative_to(BUNDLED)
    return str((base / value).resolve())


def _check_beside(value: str, path: Path, key: str) -> None:
    """Refuse a model name that reads as a hub id while a folder of that name lies beside the teacher file
    (and none in the working directory): the hub would be asked for it, and the folder never read."""
    from harness.modelfiles import is_local_path

    if value == STUDENT or value in TEXT_SUMMARIZERS or is_local_path(value) or value.startswith(("./", "../")):
        return
    if (path.parent / value).is_dir() and not Path(value).exists():
        raise ConfigError(f"{path}: key {key!r}: {value!r} reads as a hub id, but {path.parent / value} is a folder beside "
                          f"this file; write './{value}' to load that folder")


# The nested form of a teacher file: where its solutions come from, and how they are summarised.
#   solutions: {source, revision, attempts, temperature, max_new_tokens, chat_template_options}
#   summary:   {summarizer, revision, prompt, temperature, max_new_tokens, chat_template_options}
NESTED: dict[str, dict[str, str]] = {
    "solutions": {"source": "solution_source", "revision": "solution_revision", "attempts": "solution_attempts",
                  "temperature": "solution_temperature", "max_new_tokens": "solution_max_new_tokens",
                  "chat_template_options": "solution_chat_template_options"},
    "summary": {"summarizer": "summarizer", "revision": "summarizer_revision", "prompt": "summary_prompt",
                "temperature": "summary_temperature", "max_new_tokens": "summary_max_new_tokens",
                "chat_template_options": "summary_chat_template_options"},
}


# the keys a teacher file is written in (its unknown-key message offers these): every field but ``file`` (the
# loader's), the flat keys odiag's own teachers use included, and the nested sections that stand for them
FILE_KEYS = (*(f.name for f in dataclasses.fields(TeacherConfig) if f.name != "file"), *NESTED)


def _flatten(data: dict, where: str) -> dict:
    """A teacher file's ``solutions:`` and ``summary:`` sections as the flat keys of TeacherConfig."""
    out = {k: v for k, v in data.items() if k not in NESTED}
    for section, keys in NESTED.items():
        if section not in data:
            continue
        block = data[section]
        if not isinstance(block, dict):
            raise ConfigError(f"{where}: key {section!r} must be a mapping of {', '.join(keys)}")
        for key, value in block.items():
            if key not in keys:
                close = difflib.get_close_matches(str(key), list(keys), n=1)
                hint = f"did you mean {section}.{close[0]}? " if close else ""
                raise ConfigError(f"{where}: unknown key {excerpt(f'{section}.{key}', 60)}; {hint}valid keys are "
                                  f"{', '.join(sorted(keys))}")
            if keys[key] in data:
                raise ConfigError(f"{where}: {section}.{key} and {keys[key]} both given; keep one")
            out[keys[key]] = value
    return out


def load_teacher(name_or_path: str) -> TeacherConfig:
    """Load and validate one teacher file; errors name the file and the key."""
    path = teacher_path(name_or_path)
    if not path.exists() and path.suffix == ".yaml" and path.parent.resolve() == TEACHER_DIR.resolve():
        # a name (or a file under teachers/) that names no teacher: say which ones there are
        available = ", ".join(repr(p.stem) for p in sorted(TEACHER_DIR.glob("*.yaml")))
        listed = f"; several teachers are a list: teachers=[{', '.join(path.stem.split(','))}]" if "," in path.stem else ""
        raise ConfigError(f"unknown teacher {path.stem!r}: available teachers are {available} "
                          f"(YAMLs under {TEACHER_DIR}; or give the path of a teacher YAML){listed}")
    if not path.exists() and path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"teacher {name_or_path!r}: {path} does not exist (a teacher is a name under {TEACHER_DIR} "
                          "or the path of a teacher YAML file)")
    data = load_yaml(path)
    if data is None or data == {}:
        raise ConfigError(f"{path}: an empty teacher file; name at least its model, or the context it shows the student "
                          "(see teachers/*.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of teacher keys")
    if "file" in data:
        raise ConfigError(f"{path}: unknown key 'file' (it is filled in by the loader)")
    data = {"name": path.stem, **_flatten(data, str(path)), "file": str(path)}
    home = path.resolve()  # through a link, the file it leads to: its folder holds what ./ and ../ name
    for key in ("model", "solution_source", "summarizer"):
        if isinstance(data.get(key), str):
            _check_beside(data[key], home, key)
            data[key] = _resolve_model(data[key], home.parent)
    cfg = build(TeacherConfig, data, str(path), named=FILE_KEYS)
    validate(cfg)
    return cfg


# validation of the file alone ----------------------------------------------------------------------


def _variables(template: str, where: str) -> set[str]:
    return template_variables(template, where)


def render(template: str, where: str, *, undefined_hint: str = "", **variables) -> str:
    """Render prompt text in the sandbox, under the resource limits of :mod:`harness.safeio`; a
    missing variable or index (with ``undefined_hint``), or a limit, is a ConfigError naming ``where``."""
    return render_template(template, where, undefined_hint=undefined_hint, **variables)


def context_variables(cfg: TeacherConfig) -> tuple[str, ...]:
    """The variables this teacher's context template may use."""
    names = ["question", "correct", "wrong"]
    if cfg.summarizer is not None:
        names += ["correct_summaries", "wrong_summaries"]
    return tuple(names)


MAX_NAME = 100  # characters of a teacher's name
MAX_SHOWN = 64  # correct or wrong solutions one context shows (more fit no model's context)
MAX_ATTEMPTS = 4096  # solutions sampled from a solution_source per question


def _name_problem(name: str) -> str | None:
    """What keeps ``name`` from naming a teacher, or None."""
    if not name.strip() or name in (".", ".."):
        return "must name the teacher"
    if len(name) > MAX_NAME:
        return f"must be at most {MAX_NAME} characters ({len(name)} here)"
    if any("\udc80" <= c <= "\udcff" for c in name):  # how a file name's bytes that are not UTF-8 arrive
        return "must be UTF-8 text (it holds a byte that is not)"
    if any(c in "/\\" or not c.isprintable() for c in name) or name != name.strip():
        return "must not hold a slash, a control character or a leading or trailing space"
    if "," in name:  # lm-eval reads what follows a metric name's first comma as the name of a filter
        return "must not hold a comma (lm-eval's metric names end at one)"
    return None


def validate(cfg: TeacherConfig) -> None:
    """Checks that need only the file; ConfigError naming the file and the key."""
    where = cfg.file or cfg.name

    def fail(key: str, why: str) -> None:
        raise ConfigError(f"{where}: key {key!r}: {why}")

    if problem := _name_problem(cfg.name):  # the name goes into file names, page ids and lm-eval metric names
        given = "" if cfg.file is None or cfg.name != Path(cfg.file).stem else " (the file's name: set key 'name')"
        fail("name", f"{problem}, got {excerpt(cfg.name)}{given}")
    for key in ("correct_solutions", "wrong_solutions"):
        if not 0 <= getattr(cfg, key) <= MAX_SHOWN:
            fail(key, f"must be >= 0 and <= {MAX_SHOWN} (solutions a context shows), got {getattr(cfg, key)}")
    if not 1 <= cfg.solution_attempts <= MAX_ATTEMPTS:
        fail("solution_attempts", f"must be >= 1 and <= {MAX_ATTEMPTS} (solutions sampled per question), got {cfg.solution_attempts}")
    for key in ("summary_max_new_tokens", "solution_max_new_tokens"):
        if getattr(cfg, key) is not None and not 1 <= getattr(cfg, key) <= MAX_COUNT:
            fail(key, f"must be >= 1 and <= {MAX_COUNT:,}, got {getattr(cfg, key)}")
    for key in ("solution_temperature", "summary_temperature"):
        if not getattr(cfg, key) > 0:
            fail(key, "must be > 0 (greedy decoding is not available; the temperature is sampled exactly)")
        if not MIN_TEMPERATURE <= getattr(cfg, key) <= MAX_TEMPERATURE:
            fail(key, f"must be >= {MIN_TEMPERATURE} and <= {MAX_TEMPERATURE:g}, got {getattr(cfg, key)!r} (float32 "
                      "sampling divides logits by it: below, they overflow; above, every token is equally likely)")
    if cfg.dtype not in ("auto", "float32", "bfloat16", "float16"):
        fail("dtype", f"must be auto, float32, bfloat16 or float16, got {cfg.dtype!r}")
    for key in ("chat_template_options", "solution_chat_template_options", "summary_chat_template_options"):
        for k, v in getattr(cfg, key).items():
            if not isinstance(k, str) or not isinstance(v, (str, int, float, bool, type(None))):
                fail(key, f"options are name: scalar pairs, got {k!r}: {v!r}")
    if cfg.is_self and cfg.revision is not None:
        fail("revision", "applies to an external model; a self-teacher is the student at its own revision")
    if cfg.model in TEXT_SUMMARIZERS:
        fail("model", f"{cfg.model!r} is a text summariser, not a model")
    needs = cfg.correct_solutions + cfg.wrong_solutions
    if cfg.is_self and cfg.context_template is None and not cfg.chat_template_options and not needs:
        raise ConfigError(f"{where}: this teacher is the student itself (key 'model' is student, its default; the student's own prompt, no "
                          "solution in context): its distillation gradient is zero at every token; give it a context "
                          "(context_template, correct_solutions, wrong_solutions) or another model")
    if cfg.solution_source != STUDENT and not needs:
        fail("solution_source", "is set but the context needs no solution (set correct_solutions or wrong_solutions)")
    if cfg.solution_source == STUDENT and cfg.solution_revision is not None:
        fail("solution_revision", "applies to a solution_source model, not to the student's own rollouts")
    if cfg.summarizer is not None and not needs:
        fail("summarizer", "is set but the context needs no solution to summarise")
    if cfg.summarizer in TEXT_SUMMARIZERS:
        if cfg.summary_prompt is not None:
            fail("summary_prompt", f"the text summariser {cfg.summarizer!r} takes no prompt")
        if cfg.summarizer_revision is not None:
            fail("summarizer_revision", f"the text summariser {cfg.summarizer!r} has no revision")
    elif cfg.summarizer is not None:
        if not cfg.summary_prompt:
            if near := difflib.get_close_matches(cfg.summarizer, TEXT_SUMMARIZERS, n=1):
                fail("summarizer", f"{cfg.summarizer!r} is neither a text summariser nor a model with a prompt; "
                                   f"did you mean the text summariser {near[0]!r}?")
            fail("summary_prompt", f"the summariser model {cfg.summarizer!r} needs a prompt (variables: question, solution)")
        used = _variables(cfg.summary_prompt, f"{where}: key 'summary_prompt'")
        if unknown := sorted(used - set(SUMMARY_VARIABLES)):
            fail("summary_prompt", f"uses undefined variable {unknown[0]!r}; available: {', '.join(SUMMARY_VARIABLES)}")
        if "solution" not in used:
            fail("summary_prompt", "never shows the solution to summarise ({{ solution }})")
    elif cfg.summary_prompt is not None:
        fail("summary_prompt", "is set but there is no summarizer")

    if cfg.context_template is None:
        if needs:
            fail("context_template", "is missing: the context needs solutions but no template shows them")
        return
    available = context_variables(cfg)
    used = _variables(cfg.context_template, f"{where}: key 'context_template'")
    if unknown := sorted(used - set(available)):
        hint = " (set summarizer to use summaries)" if unknown[0].endswith("_summaries") else ""
        fail("context_template", f"uses undefined variable {unknown[0]!r}{hint}; available: {', '.join(available)}")
    if "question" not in used:
        fail("context_template", "never shows the question ({{ question }})")
    for kind, count in (("correct", cfg.correct_solutions), ("wrong", cfg.wrong_solutions)):
        shown = {kind, f"{kind}_summaries"} & used
        if count and not shown:
            fail("context_template",
                 f"needs {count} {kind} {plural(count, 'solution')} but never shows {kind} or {kind}_summaries")
        if shown and not count:
            fail("context_template", f"shows {sorted(shown)[0]} but {kind}_solutions is 0")
    # a dry render catches an index past what the context needs (correct[1] with one correct solution)
    has = " and ".join(_solutions_text(kind, getattr(cfg, f"{kind}_solutions")) for kind in ("correct", "wrong"))
    render(cfg.context_template, f"{where}: key 'context_template'", **_placeholders(cfg, "question"),
           undefined_hint=f" (the context has {has}: raise correct_solutions or wrong_solutions, or lower the index)")


def _solutions_text(kind: str, count: int) -> str:
    """``1 correct solution (correct[0])``, ``3 wrong solutions (wrong[0] to wrong[2])``, ``no wrong solution``."""
    if count == 0:
        return f"no {kind} solution"
    last = f" to {kind}[{count - 1}]" if count > 1 else ""
    return f"{count} {kind} {plural(count, 'solution')} ({kind}[0]{last})"


def _placeholders(cfg: TeacherConfig, question: str, solution: str = "solution") -> dict:
    out = {
        "question": question,
        "correct": [solution] * cfg.correct_solutions,
        "wrong": [solution] * cfg.wrong_solutions,
    }
    if cfg.summarizer is not None:
        out["correct_summaries"] = [solution] * cfg.correct_solutions
        out["wrong_summaries"] = [solution] * cfg.wrong_solutions
    return out


def context_text(
    cfg: TeacherConfig,
    question: str,
    correct: Sequence[str] = (),
    wrong: Sequence[str] = (),
    correct_summaries: Sequence[str] | None = None,
    wrong_summaries: Sequence[str] | None = None,
) -> str:
    """The teacher's user message: its template rendered, or the student's own ``question`` text."""
    if cfg.context_template is None:
        return question
    variables = {"question": question, "correct": list(correct), "wrong": list(wrong)}
    if cfg.summarizer is not None:
        variables["correct_summaries"] = list(correct_summaries or [])
        variables["wrong_summaries"] = list(wrong_summaries or [])
    return render(cfg.context_template, f"{cfg.file or cfg.name}: key 'context_template'", **variables)


def placeholder_context(cfg: TeacherConfig, question: str, solution: str = "") -> str:
    """The context with every needed solution (and summary) replaced by ``solution``: load-time checks."""
    if cfg.context_template is None:
        return question
    return render(cfg.context_template, f"{cfg.file or cfg.name}: key 'context_template'", **_placeholders(cfg, question, solution))


def text_summarizer(name: str) -> Callable[[str], str]:
    """The registered text function ``name`` (imported lazily)."""
    module, func = TEXT_SUMMARIZERS[name].split(":")
    return getattr(importlib.import_module(module), func)


def models_named(cfg: TeacherConfig) -> dict[str, str | None]:
    """Every model other than the student this teacher needs loaded: {model id: revision}."""
    out: dict[str, str | None] = {}
    for _, model, revision in _models(cfg):
        out[model] = revision
    return out


def model_keys(cfg: TeacherConfig) -> dict[str, str]:
    """The key of the teacher file that names each model of :func:`models_named` (the first, if several)."""
    out: dict[str, str] = {}
    for key, model, _ in _models(cfg):
        out.setdefault(model, key)
    return out


def _models(cfg: TeacherConfig) -> list[tuple[str, str, str | None]]:
    """(key, model, revision) of every model other than the student the teacher names, in file order."""
    out = []
    if not cfg.is_self:
        out.append(("model", cfg.model, cfg.revision))
    if cfg.solution_source != STUDENT:
        out.append(("solution_source", cfg.solution_source, cfg.solution_revision))
    if cfg.summarizer is not None and cfg.summarizer not in TEXT_SUMMARIZERS:
        out.append(("summarizer", cfg.summarizer, cfg.summarizer_revision))
    return out


def artefact_models(teachers: Sequence[TeacherConfig]) -> dict[str, ModelSpec]:
    """The models :func:`build_artefacts` samples from (solution sources, summarisers), by name.

    The backend must hold them besides the student and the teachers; a request names a model by its id.
    """
    from harness.backends import ModelSpec

    out = {}
    for t in teachers:
        if t.solution_source != STUDENT:
            out[t.solution_source] = ModelSpec(t.solution_source, t.solution_revision, t.dtype)
        if t.summarizer is not None and t.summarizer not in TEXT_SUMMARIZERS:
            out[t.summarizer] = ModelSpec(t.summarizer, t.summarizer_revision, t.dtype)
    return out
