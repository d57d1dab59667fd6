"""Tasks as the pipeline sees them: questions as prompt token ids, and a reward for responses.

Prompts, chat templates and answer extraction live here and in the task YAMLs (``tasks/``); only
token ids reach a backend. ``synthetic`` is the exact synthetic task (SPEC §7); every other name is
a task YAML under ``tasks/`` read through lm-eval (:mod:`harness.tasks.lmeval`).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from harness.config import MAX_COUNT, MAX_VISITS, ConfigError, data_dir
from harness.safeio import excerpt
from harness.teachers import TeacherConfig

TASKS_DIR = data_dir("tasks")  # odiag's task YAMLs (lm_eval --include_path)

if TYPE_CHECKING:
    from harness.teachers import Artefacts


@dataclasses.dataclass(frozen=True)
class Question:
    """One question of a task."""

    id: str  # stable id (used in seeds, file names and results)
    prompt_ids: np.ndarray  # int [C]: the student's prompt, chat template applied
    doc: dict  # the task's record; YAML tasks: {"prompt": student's user message, "target", "index", "record"}


# What became of a response, as an int8 code (the index): SPEC §4 step 2. Only "correct" scores 1;
# the three others score 0 but mean different things (a wrong answer, running out of tokens, no
# readable answer), so paths and outputs keep them apart.
OUTCOMES = ("wrong", "correct", "truncated", "unparseable")
WRONG, CORRECT, TRUNCATED, UNPARSEABLE = range(4)


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
    answer_counts: dict[str, int]  # running totals of rewards(): scored, correct, unparseable, truncated

    def questions(self, limit: int | None) -> list[Question]:
        """The first ``limit`` questions (all when None), in a fixed order."""
        ...

    def outcomes(self, question: Question, responses: Sequence[np.ndarray], truncated: np.ndarray) -> np.ndarray:
        """int8 codes into ``OUTCOMES``: truncated responses are TRUNCATED whatever they say."""
        ...

    def identity(self) -> dict:
        """What judges a response besides its question (the answer checker and its version, the stop ids),
        JSON-ready: recorded with a run, which is then never resumed under another."""
        ...

    def rewards(self, question: Question, responses: Sequence[np.ndarray], truncated: np.ndarray) -> np.ndarray:
        """1 where a response's extracted answer is correct (``outcomes(...) == CORRECT``)."""
        ...

    def token_texts(self, ids: np.ndarray) -> list[str]:
        """The text of each token (for the per-token viewer); joining them gives the response."""
        ...

    def chat_ids(self, user_text: str, chat_template_options: Mapping | None = None) -> np.ndarray:
        """One user turn under the student's chat template (options over the task's), with the generation prompt."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """A response's text, as a teacher context shows it."""
        ...

    def check_teacher(self, teacher: TeacherConfig) -> None:
        """Load-time checks of a teacher against this task and student; raises ConfigError (file and key named)."""
        ...

    def teacher_context(
        self,
        teacher: TeacherConfig,
        question: Question,
        correct: Sequence[np.ndarray],
        wrong: Sequence[np.ndarray],
        artefacts: Artefacts | None = None,
        response_length: int | None = None,
    ) -> np.ndarray | Skip:
        """The teacher's context ids, given the student's own correct and wrong responses (never the
        scored path; chosen by the pipeline), the artefacts of ``build_artefacts`` (solutions from
        named models, summaries) and how many response tokens will follow (default ``max_new_tokens``)."""
        ...


def load_task(name: str, **options) -> Task:
    """The task ``name``: ``synthetic``, or a task YAML under ``tasks/`` (``odiag_boolq``, ``odiag_toy``, ...).

    Options of YAML tasks: ``tokenizer`` (the student model id or directory, required), ``revision``,
    ``data_files`` (a local JSONL copy of the evaluation split), ``thinking`` (overrides the task's
    ``enable_thinking``), ``max_new_tokens`` (overrides the YAML's ``max_gen_toks``).
    """
    if name == "synthetic":
        from harness.tasks.exact import SyntheticTask

        return SyntheticTask(**options)
    from harness.tasks.lmeval import LMEvalTask

    check_task_name(name)
    return LMEvalTask(name, **options)


# the one rule odiag (run, plan, ls tasks) and lm-eval's index read tasks by
TASK_FILE_RULE = "a task is tasks/odiag_<name>.yaml, its task: key the file's name"


def read_task_yaml(path: Path):
    """A task YAML as written, lm-eval's ``!function`` tags left unread (None); raises what reading or parsing
    raises (OSError, UnicodeDecodeError, yaml.YAMLError)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)


ODIAG_KEYS = ("answer_type", "n_min", "thinking", "shuffle_seed", "description")  # a task YAML's metadata.odiag


def task_count(value, where: str, most: int = MAX_COUNT) -> int:
    """A positive integer setting of a task YAML, at most ``most``; a ConfigError naming it otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise ConfigError(f"{where} must be an integer >= 1 and <= {most:,}, got {value!r}")
    return value


def odiag_options(metadata, generation_kwargs, where: str | None = None) -> dict:
    """A task YAML's own settings, checked (a one-line ConfigError naming the key otherwise): ``metadata.odiag``'s
    answer_type, n_min (default 20), thinking and shuffle_seed, and ``generation_kwargs.max_gen_toks``; ``where``, the
    file, begins each message."""
    from harness.tasks.scoring import ANSWER_TYPES

    at = f"{where}: " if where else ""
    odiag = (metadata if isinstance(metadata, dict) else {}).get("odiag") or {}
    if not isinstance(odiag, dict):
        raise ConfigError(f"{at}metadata.odiag must be a mapping of odiag's task options")
    if unknown := sorted(map(str, set(odiag) - set(ODIAG_KEYS))):
        close = difflib.get_close_matches(unknown[0], ODIAG_KEYS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"{at}unknown key {excerpt('metadata.odiag.' + unknown[0], 60)}; {hint}valid keys are "
                          f"{', '.join(ODIAG_KEYS)}")
    if odiag.get("answer_type") not in ANSWER_TYPES:
        raise ConfigError(f"{at}metadata.odiag.answer_type must be one of {', '.join(ANSWER_TYPES)}, "
                          f"got {excerpt(odiag.get('answer_type'), 40)}")
    generation = generation_kwargs if isinstance(generation_kwargs, dict) else {}
    if "max_gen_toks" not in generation:
        raise ConfigError(f"{at}generation_kwargs.max_gen_toks is missing (the response length limit)")
    if not isinstance(odiag.get("thinking", False), bool):
        raise ConfigError(f"{at}metadata.odiag.thinking must be true or false, got {odiag['thinking']!r}")
    if not isinstance(odiag.get("shuffle_seed", 0), int) or isinstance(odiag.get("shuffle_seed"), bool):
        raise ConfigError(f"{at}metadata.odiag.shuffle_seed must be an integer, got {odiag['shuffle_seed']!r}")
    return {"answer_type": odiag["answer_type"], "n_min": task_count(odiag.get("n_min", 20), f"{at}metadata.odiag.n_min", MAX_VISITS),
            "max_gen_toks": task_count(generation["max_gen_toks"], f"{at}generation_kwargs.max_gen_toks"),
            "thinking": odiag.get("thinking", False), "shuffle_seed": odiag.get("shuffle_seed")}


def task_file_problem(path: Path) -> str | None:
    """Why the task YAML ``path`` is not a task odiag runs under its file's name (lm-eval would not index it
    under that name, or odiag's own settings in it are wrong: :func:`odiag_options`), in a few words; None when
    nothing is found. lm-eval's ``!function`` tags are not resolved."""
    import yaml

    if not path.stem.startswith("odiag_"):
        return f"not read as a task ({TASK_FILE_RULE}): rename it odiag_{path.stem}.yaml, with task: odiag_{path.stem}"
    try:
        cfg = read_task_yaml(path)
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte {exc.start})"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    except yaml.MarkedYAMLError as exc:
        where = f" at line {exc.problem_mark.line + 1}" if exc.problem_mark is not None else ""
        return f"not valid YAML: {exc.problem}{where}"
    except yaml.YAMLError as exc:
        return f"not valid YAML: {' '.join(str(exc).split())}"
    if cfg is None:
        return "empty"
    if not isinstance(cfg, dict):
        return f"expected a mapping at the top level, got a {type(cfg).__name__}"
    if cfg.get("task") != path.stem:
        got = f"task: is {excerpt(cfg['task'], 40)}" if "task" in cfg else "no task: key"
        return f"{got}, not {path.stem!r} ({TASK_FILE_RULE})"
    if "include" not in cfg:  # settings an included file gives are read once lm-eval builds the task
        for key in ("generation_kwargs", "metadata"):
            if key not in cfg and (close := difflib.get_close_matches(key, [str(k) for k in cfg], n=1, cutoff=0.8)):
                return f"no {key}: key, but {excerpt(close[0], 40)} (misspelt?)"
        try:
            odiag_options(cfg.get("metadata"), cfg.get("generation_kwargs"))
        except ConfigError as exc:
            return str(exc)
    return None


def check_task_name(name: str) -> None:
    """A one-line ConfigError naming the tasks there are, unless ``name`` is one of them; a task file that is
    there but is not read as that task (not valid YAML, another ``task:``, not named odiag_*, odiag's own settings
    in it wrong: :func:`task_file_problem`) says why."""
    from harness.tasks.lmeval import TASKS_DIR, task_names

    if name == "synthetic":
        return
    path = TASKS_DIR / f"{name}.yaml"
    try:
        there = path.is_file()
    except OSError:  # a name no file system holds (too long): no task's
        there = False
    if there and (problem := task_file_problem(path)) is not None:
        raise ConfigError(f"task {name!r}: {path}: {problem}")
    if name not in task_names():
        available = ", ".join(repr(n) for n in ["synthetic", *task_names()])
        raise ConfigError(f"unknown task {excerpt(name, 80)}: available tasks are {available} (YAMLs under {TASKS_DIR})")
