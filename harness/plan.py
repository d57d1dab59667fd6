"""The run plan: a config resolved and checked as a whole before anything is written.

:func:`make_plan` loads the task and every teacher of the config, checks each teacher against the
task (``Task.check_teacher``), names the backend and strategy and checks the backend's options
(``student_args``, the teachers' ``model_args``); only a plan opens a run directory
(:meth:`harness.rundir.RunDir.open`), so a typo in any of them leaves nothing behind.

A teacher is identified by content (:func:`teacher_identity`): the sha256 of its YAML file and of the
models it names, not by its name. The config's teachers plan the targeted rollouts (SPEC §4: their
probabilities pick the candidates), so their identities are part of the tree's hash; teachers added
later with ``odiag add-teacher`` only score the stored tree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from pathlib import Path

from harness.backends import BACKENDS, STUDENT, Backend, ModelSpec, load_backend
from harness.config import (REPOSITORY, SCORING_FIELDS, ConfigError, RunConfig, portable, repeated, to_dict, tree_fields,
                             unread_fields)
from harness.errors import StudentArgsError
from harness.tasks import Task, load_task
from harness.teachers import (TEXT_SUMMARIZERS, TeacherConfig, artefact_models, load_teacher, model_keys, models_named,
                              teacher_path)
from harness.wording import finish_command, shell_word

PLANNER, ADDED = "planner", "added"
log = logging.getLogger(__name__)


def slug(name: str) -> str:
    """A teacher name as it appears in a shard's file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def teacher_identity(teacher: TeacherConfig) -> str:
    """sha256 of the teacher's file content and of the models it names (with revisions), 16 hex digits."""
    h = hashlib.sha256(Path(teacher.file).read_bytes())
    h.update(json.dumps(portable(models_named(teacher)), sort_keys=True).encode())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class TeacherRef:
    """One teacher of a run: as the user named it, loaded from its resolved file, with its identity."""

    entry: str  # as given in the config or to add-teacher
    config: TeacherConfig  # loaded, ``file`` resolved
    identity: str  # teacher_identity(config)
    role: str  # PLANNER (a config teacher: plans the tree) or ADDED (scores only)

    @property
    def name(self) -> str:
        return self.config.name

    def record(self) -> dict:
        return {"name": self.name, "entry": self.entry, "file": portable(self.config.file),
                "identity": self.identity, "role": self.role}


def resolve_teacher(entry: str, role: str, stored_file: str | None = None) -> TeacherRef:
    """Load a teacher by name or path; ``stored_file`` (the run's resolved path) when the entry is a
    path relative to another directory, so a run resumes from any working directory."""
    path = teacher_path(entry)
    if not path.exists() and stored_file:
        path = _stored_path(stored_file)
    if path.is_dir():
        raise ConfigError(f"teacher {entry!r}: {path} is a directory, not a teacher YAML file")
    spec = load_teacher(str(path))
    spec = dataclasses.replace(spec, file=str(Path(spec.file).resolve()))
    return TeacherRef(entry, spec, teacher_identity(spec), role)


def check_distinct(refs: list[TeacherRef] | tuple[TeacherRef, ...]) -> None:
    """Refuse a teacher listed twice: the same entry, the same name, or the same content under two names."""
    by_name: dict[str, TeacherRef] = {}
    by_identity: dict[str, TeacherRef] = {}
    by_slug: dict[str, TeacherRef] = {}
    for r in refs:
        if slug(r.name) == STUDENT:  # the student's own passes are stored under that name
            raise ConfigError(f"teacher {r.name!r} ({r.config.file}): the name {STUDENT!r} is the student's; give the teacher "
                              "another (key 'name', or rename the file)")
        if (other := by_name.get(r.name)) is not None:
            same = "listed twice" if other.identity == r.identity else "names two different files"
            raise ConfigError(
                f"teachers: {r.name!r} {same} ({other.entry!r} and {r.entry!r}); each teacher once, under its own name"
            )
        if (other := by_identity.get(r.identity)) is not None:
            raise ConfigError(
                f"teachers: {other.name!r} and {r.name!r} are the same teacher (identity {r.identity}); list it once"
            )
        if (other := by_slug.get(slug(r.name))) is not None:  # their passes would be stored in one file
            raise ConfigError(f"teachers: {other.name!r} and {r.name!r} differ only in characters a file name cannot hold "
                              f"(both are stored as {slug(r.name)!r}); rename one (key 'name', or rename the file)")
        by_name[r.name], by_identity[r.identity], by_slug[slug(r.name)] = r, r, r


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A run config resolved into what it runs: its task, its teachers (checked), backend and strategy."""

    config: RunConfig
    task: Task
    teachers: tuple[TeacherRef, ...]  # the config's (planners) first, then teachers added to the run
    n_min: int  # visits a child needs to enter A(s)
    max_new_tokens: int  # response length limit
    # the task record a run keeps when a rescore runs under another answer checker (it judges no response)
    recorded_task: dict | None = None

    @property
    def planners(self) -> tuple[TeacherConfig, ...]:
        """The teachers whose probabilities pick the targeted rollouts' candidates: the config's."""
        return tuple(t.config for t in self.teachers if t.role == PLANNER)

    @property
    def specs(self) -> tuple[TeacherConfig, ...]:
        """Every teacher scored in the run."""
        return tuple(t.config for t in self.teachers)

    @property
    def tree_hash(self) -> str:
        """sha256 of everything that shapes the rollout tree, planners by identity."""
        data = {"fields": tree_fields(self.config),
                "planners": [[t.name, t.identity] for t in self.teachers if t.role == PLANNER]}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def scoring(self) -> dict:
        return {k: v for k, v in to_dict(self.config).items() if k in SCORING_FIELDS}

    def task_record(self) -> dict:
        return self.recorded_task or task_record(self.config, self.task)

    def record(self) -> dict:
        """What ``config.json`` holds for this plan."""
        from harness.rundir import FORMAT

        return {
            "format": FORMAT,
            "config": to_dict(self.config),
            "config_hash": self.config.hash(),
            "tree_hash": self.tree_hash,
            "tree": tree_fields(self.config),
            "scoring": self.scoring(),
            "task": self.task_record(),
            "teachers": [t.record() for t in self.teachers],
        }


def model_name(teacher: TeacherConfig) -> str:
    """The backend's name of the model a teacher reads with."""
    return STUDENT if teacher.is_self else teacher.model


def model_specs(cfg: RunConfig, teachers) -> dict[str, ModelSpec]:
    """The models the backend loads: the student, every external teacher, solution sources, summarisers.

    Requests name a model by its id, so a run loads each id once. Two teacher files that score with one
    model, or sample solutions or summaries from one, under a different revision or dtype are a
    ConfigError, never one of them read with the other's settings. A solution source or summariser that
    a teacher also scores with is sampled from that teacher's copy.
    """
    scored: dict[str, tuple[ModelSpec, str]] = {}
    sampled: dict[str, tuple[ModelSpec, str]] = {}
    for t in teachers:
        own = {t.model: ModelSpec(t.model, t.revision, t.dtype)} if not t.is_self else {}
        for named, models in ((scored, own), (sampled, artefact_models([t]))):
            for key, spec in models.items():
                first, where = named.setdefault(key, (spec, t.file or t.name))
                if first != spec:
                    differ = "; ".join(f"{f} {getattr(first, f)!r} in one, {getattr(spec, f)!r} in the other"
                                       for f in ("revision", "dtype") if getattr(first, f) != getattr(spec, f))
                    raise ConfigError(f"{where} and {t.file or t.name} both load model {key!r}, with different settings "
                                      f"({differ}); a run loads each model once: give both files the same revision and dtype")
    specs = {STUDENT: ModelSpec(cfg.student, cfg.student_revision, cfg.dtype)}
    specs |= {key: spec for key, (spec, _) in scored.items()}
    return {**{key: spec for key, (spec, _) in sampled.items()}, **specs}


def backend_options(cfg: RunConfig, teachers) -> dict:
    """``student_args`` and the teachers' ``model_args``, checked against the backend (one-line errors)."""
    from harness.backends import check_options

    if cfg.backend != "vllm" and (t := next((t for t in teachers if t.model_args and not t.is_self), None)):
        raise ConfigError(f"{t.file or t.name}: key 'model_args': engine options of the vllm backend, not {cfg.backend} "
                          "(backend options go in the run's student_args)")
    try:
        options = check_options(cfg.backend, cfg.student_args) if cfg.student_args else {}
    except ValueError as exc:
        raise StudentArgsError(str(exc)) from None
    try:
        per_model = {t.model: check_options(cfg.backend, t.model_args, f"teacher {t.name}: model_args")
                     for t in teachers if t.model_args and not t.is_self}
        for t in teachers:
            other = next((o for o in teachers if o.model == t.model and not o.is_self and o.model_args != t.model_args), None)
            if not t.is_self and other is not None:
                raise ValueError(f"{t.file or t.name} and {other.file or other.name} both load model {t.model!r}, with "
                                 "different model_args; a run loads each model once: give both files the same model_args")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if t := next((t for t in teachers if t.model_args and t.is_self), None):
        raise ConfigError(f"{t.file or t.name}: key 'model_args': a self-teacher reads with the student's model; set its "
                          "options in the run's student_args")
    if cfg.backend == "vllm":
        options |= _engine_shares(cfg, teachers, options)
    if per_model:
        from harness.backends import engine_argument_names

        options["model_args"] = {m: {**o.pop("engine_options", {}), **o} for m, o in per_model.items()}
        engine = engine_argument_names()
        for t in teachers:
            odd = sorted(set(options["model_args"].get(t.model, {})) - engine) if engine else []
            if odd:
                raise ConfigError(f"teacher {t.name}: model_args key {odd[0]!r} is not a vLLM engine argument "
                                  "(backend-wide options go in student_args)")
    return options


def sampling_models(cfg: RunConfig, teachers) -> list[str]:
    """The models that sample, each in an engine of its own under vllm: the student, then every model a
    teacher draws solutions or summaries from."""
    from harness.teachers import TEXT_SUMMARIZERS

    out = [cfg.student]
    for t in teachers:
        for model in (t.solution_source, t.summarizer):
            if model not in (None, STUDENT, *TEXT_SUMMARIZERS, *out):
                out.append(model)
    return out


def _engine_shares(cfg: RunConfig, teachers, options: dict) -> dict:
    """With exact scoring and no ``gpu_memory_utilization`` given, the half of the device the sampling
    engines share by default is split between them (each would otherwise take half, leaving the scorer
    nothing once a teacher samples solutions from a model of its own)."""
    given = options.get("gpu_memory_utilization", dict(options.get("engine_options") or {}).get("gpu_memory_utilization"))
    engines = len(sampling_models(cfg, teachers))
    if given is not None or options.get("score_with", "hf") != "hf" or engines == 1:
        return {}
    return {"gpu_memory_utilization": round(0.5 / engines, 4)}


def with_threads(threads: int | None, backend: str, options: dict) -> dict:
    """Backend ``options`` with ``threads`` where torch runs: the hf backend, and the vllm backend's exact scorer
    (in transformers); a ``threads`` the options set themselves (student_args, its hf_options) first."""
    if not threads:
        return options
    if backend == "hf":
        return {"threads": threads, **options}
    if backend == "vllm":
        return {**options, "hf_options": {"threads": threads, **(options.get("hf_options") or {})}}
    return options


def build_backend(cfg: RunConfig, teachers) -> Backend:
    """The configured backend, in this process or spread over Ray workers (options as :func:`make_plan`
    checked them)."""
    # hf draws from counter-based randomness, so its thread count never moves a number
    options = with_threads(cfg.threads, cfg.backend, backend_options(cfg, teachers))
    if cfg.executor == "ray":
        from harness.distributed import RayBackendPool

        return RayBackendPool(cfg.backend, model_specs(cfg, teachers), cfg.num_workers, cfg.ray_address, **options)
    return load_backend(cfg.backend, model_specs(cfg, teachers), **options)


def run_task(cfg: RunConfig) -> Task:
    """The task a run config names, with its tokenizer, data source and length limit."""
    if cfg.task == "synthetic":
        return load_task(cfg.task)
    return load_task(
        cfg.task, tokenizer=cfg.student, revision=cfg.student_revision, data_files=cfg.data_files,
        max_new_tokens=cfg.max_new_tokens,
    )


def sampling_temperatures(cfg: RunConfig, teachers) -> list[tuple[str, float]]:
    """Every temperature the run samples at, named by the key that sets it: the student's, and the
    teachers' solution sources and summariser models."""
    out = [("temperature", cfg.temperature)]
    for t in teachers:
        if t.solution_source != STUDENT and t.correct_solutions + t.wrong_solutions:
            out.append((f"teacher {t.name}: solution_temperature", t.solution_temperature))
        if t.summarizer is not None and t.summarizer not in TEXT_SUMMARIZERS:
            out.append((f"teacher {t.name}: summary_temperature", t.summary_temperature))
    return out


def check_temperatures(cfg: RunConfig, teachers) -> None:
    """Every temperature the run samples at is one the backend draws at exactly (a one-line ConfigError
    otherwise): the synthetic backend samples at 1 only, vLLM at 0.01 or above (its `MIN_TEMPERATURE`)."""
    if cfg.backend == "synthetic" and cfg.temperature != 1.0:
        raise ConfigError(f"temperature {cfg.temperature:g}: backend synthetic samples its student at temperature 1 only "
                          "(its exact Q are those of that distribution); leave temperature at 1, or use backend hf or vllm")
    if cfg.backend == "vllm":
        from harness.backends.vllm import MIN_TEMPERATURE

        for key, value in sampling_temperatures(cfg, teachers):
            if value < MIN_TEMPERATURE:
                raise ConfigError(f"{key} {value:g}: vLLM samples at temperatures of at least {MIN_TEMPERATURE:g} (it would "
                                  "raise this one silently, and draw from another distribution); raise it, or use backend hf")


def check_backend_models(cfg: RunConfig, teachers) -> None:
    """The task, the backend and every model the teachers read go together (a one-line ConfigError
    otherwise): the synthetic backend runs the synthetic task and holds only its synthetic models, and
    those models exist nowhere else; a teacher that shows solutions would have no text to show there."""
    from harness.exact_lm import TEACHERS as SYNTHETIC
    from harness.tasks import check_task_name
    from harness.tasks.exact import SyntheticTask

    check_task_name(cfg.task)  # an unknown task is named as such, not as one the backend cannot run
    if (cfg.backend == "synthetic") != (cfg.task == "synthetic"):
        raise ConfigError(f"task {cfg.task!r} on backend {cfg.backend!r}: the synthetic task runs only on backend "
                          "synthetic, and backend synthetic runs only the synthetic task (set both, or neither)")
    if cfg.student_revision is not None and (cfg.task == "synthetic" or Path(cfg.student).is_dir()):
        what = "the synthetic student has no revisions" if cfg.task == "synthetic" else f"{cfg.student} is a local directory"
        raise ConfigError(f"key 'student_revision' pins a hub model's revision, and {what}: remove it "
                          f"(got {cfg.student_revision!r})")
    if cfg.task == "synthetic" and cfg.data_files is not None:
        raise ConfigError("task 'synthetic' generates its questions: data_files does not apply")
    if cfg.task == "synthetic" and cfg.limit is not None and cfg.limit > (most := SyntheticTask.max_questions):
        raise ConfigError(f"key 'limit' must be <= {most:,} with task synthetic (its questions are generated before the "
                          f"first rollout), got {cfg.limit:,}")
    if cfg.backend != "synthetic" and cfg.student == "synthetic" and not Path(cfg.student).exists():
        raise ConfigError("student 'synthetic' is the synthetic model, which only backend synthetic has: set student to a "
                          "model directory or hub id (the toy task's: harness/toy_models/student)")
    if cfg.backend != "synthetic":
        from harness.modelfiles import holds_no_weights

        fix = "(no *.safetensors, *.bin or their shard index): give the directory a model was saved to, weights included"
        if holds_no_weights(cfg.student):
            raise ConfigError(f"student {cfg.student!r}: the directory holds no weights {fix}")
        for t in teachers:
            if model := next((m for m in models_named(t) if holds_no_weights(m)), None):
                raise ConfigError(f"teacher {t.name} ({t.file}): model {model!r} holds no weights {fix}")
    for t in teachers:
        if cfg.backend == "synthetic" and (t.correct_solutions or t.wrong_solutions):
            shown = ", ".join(f"{key} {n}" for key, n in (("correct_solutions", t.correct_solutions),
                                                           ("wrong_solutions", t.wrong_solutions)) if n)
            raise ConfigError(f"teacher {t.name}: shows solutions in its context ({shown}), which the synthetic task has no "
                              "text for: it would be skipped on every question (the synthetic task's teachers read no "
                              "solutions: synthetic-helpful, synthetic-misleading)")
        keys = model_keys(t)
        for model in models_named(t):
            if cfg.backend == "synthetic" and model not in SYNTHETIC:
                raise ConfigError(f"{t.file or 'teacher ' + t.name}: key {keys.get(model, 'model')!r}: model "
                                  f"{portable(model)!r} is not one backend synthetic has (its models: the student and "
                                  f"{', '.join(SYNTHETIC)}; teachers synthetic-helpful, synthetic-misleading and "
                                  "self-teachers); score this teacher in a run on backend hf or vllm")
            if cfg.backend != "synthetic" and model in SYNTHETIC and not Path(model).exists():
                raise ConfigError(f"teacher {t.name}: reads the synthetic model {model!r}, which only backend synthetic has")


def check_backend(cfg: RunConfig, teachers, built: bool = True) -> None:
    """The backend can run ``teachers`` under ``cfg``: the temperatures it samples at (`check_temperatures`)
    and, when it is ``built`` from ``cfg`` rather than handed in, the task and models it holds
    (`check_backend_models`)."""
    check_temperatures(cfg, teachers)
    if built:
        check_backend_models(cfg, teachers)


def check_installed(cfg: RunConfig) -> None:
    """The libraries the backend and executor need are installed here (they are optional extras)."""
    import importlib.util

    if cfg.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError("backend vllm: vLLM is not installed in this environment (make install-vllm, then "
                          ".venv-vllm/bin/odiag; or pip install vllm)")
    if cfg.executor == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("executor ray: Ray is not installed in this environment (pip install 'odiag[ray]'), "
                          "or use executor=local")


def engine_positions(cfg: RunConfig, task: Task) -> tuple[int, int]:
    """(longest prompt, response tokens) of a run's questions: a vLLM engine's ``max_model_len`` must hold
    their sum, or vLLM cuts the responses short to fit, and a cut response scores 0."""
    longest = max((len(q.prompt_ids) for q in task.questions(cfg.limit)), default=0)
    return longest, cfg.max_new_tokens or task.max_new_tokens


def check_engine_length(cfg: RunConfig, task: Task) -> None:
    """A ``max_model_len`` in ``student_args`` holds every question's prompt and its response (:func:`engine_positions`)."""
    options = dict(cfg.student_args or {})
    limit = dict(options.get("engine_options") or {}).get("max_model_len", options.get("max_model_len"))
    if cfg.backend != "vllm" or not isinstance(limit, int) or cfg.task == "synthetic":
        return
    longest, response = engine_positions(cfg, task)
    if longest + response > limit:
        raise StudentArgsError(f"student_args: max_model_len {limit} is below the longest prompt ({longest} tokens) "
                               f"and {response} response tokens: raise it to at least {longest + response}, or leave it unset")


def make_plan(cfg: RunConfig, task: Task | None = None, stored_files: dict[str, str] | None = None,
              built: bool = True, installed: bool = True) -> RunPlan:
    """Resolve and check ``cfg`` as a whole; a ConfigError, with nothing written, if any part fails.
    ``built``: the backend will be built from ``cfg`` (not handed in), so it must hold the task and teachers;
    ``installed``: and here, so its libraries must be installed (`odiag plan` sizes runs for elsewhere)."""
    refs = check_config(cfg, stored_files, built)
    if built and installed:
        check_installed(cfg)
    task = task or run_task(cfg)
    for r in refs:  # load-time checks: vocabulary, chat template, variables, context length
        task.check_teacher(r.config)
    check_engine_length(cfg, task)
    return RunPlan(
        config=cfg, task=task, teachers=tuple(refs),
        n_min=cfg.n_min or task.n_min, max_new_tokens=cfg.max_new_tokens or task.max_new_tokens,
    )


def check_config(cfg: RunConfig, stored_files: dict[str, str] | None = None, built: bool = True) -> list[TeacherRef]:
    """Every check of `make_plan` that needs no task loaded (no tokenizer, no data): settings, teachers,
    models and backend options; the teachers resolved."""
    from harness.core import ALGORITHMS
    from harness.core.allocation import STRATEGIES

    if cfg.backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {sorted(BACKENDS)}, got {cfg.backend!r}")
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {sorted(STRATEGIES)}, got {cfg.strategy!r}")
    if cfg.executor not in ("local", "ray"):
        raise ConfigError(f"executor must be 'local' or 'ray', got {cfg.executor!r}")
    if unknown := [a for a in cfg.algorithms if a not in ALGORITHMS]:
        raise ConfigError(f"algorithms: unknown {unknown[0]!r}; choose from {sorted(ALGORITHMS)}")
    if len(set(cfg.algorithms)) != len(cfg.algorithms):
        raise ConfigError(f"algorithms: listed twice in {list(cfg.algorithms)}")
    if not cfg.teachers:
        raise ConfigError("teachers: the run needs at least one teacher")
    if (twice := repeated(cfg.teachers)) is not None:
        raise ConfigError(f"teachers: {twice!r} listed twice; each teacher once")
    stored_files = stored_files or {}
    refs = [resolve_teacher(t, PLANNER, stored_files.get(t)) for t in cfg.teachers]
    check_distinct(refs)
    model_specs(cfg, [r.config for r in refs])  # one model id, one set of settings
    check_backend(cfg, [r.config for r in refs], built)  # before the task loads a tokenizer it may not have
    backend_options(cfg, [r.config for r in refs])  # student_args and model_args against the backend
    return refs


def _grows(old: int | None, new: int | None) -> bool:
    """``new`` is no smaller than ``old``, None being unlimited."""
    return new is None or (old is not None and new >= old)


def recorded_teacher(record: dict, where: str, fix: str) -> TeacherRef:
    """A teacher of a run's ``config.json``, loaded from the file it records (its identity recomputed,
    for the caller to compare); a file that is gone is a RunDirError ending in ``fix``."""
    from harness.rundir import RunDirError

    file = _stored_path(record["file"])
    if not file.is_file():
        role = " (added)" if record.get("role") == ADDED else ""
        raise RunDirError(f"{where}: teacher {record['name']!r}{role} was loaded from {file}, which no longer exists; "
                          f"restore it, {fix}")
    return resolve_teacher(str(file), record.get("role", ADDED))


# where each entry of a task's record comes from, for a refusal that names it
_TASK_KEYS = {
    "answer_checker": "version of odiag's answer extraction (harness/tasks/scoring.py)",
    "answer_type": "metadata.odiag.answer_type",
    "n_min": "n_min (metadata.odiag.n_min)",
    "max_new_tokens": "response length limit (generation_kwargs.max_gen_toks)",
    "stop_ids": "stop ids (generation_kwargs.until, the tokenizer's end of text)",
}


def task_record(cfg: RunConfig, task: Task) -> dict:
    """What of the task judges and plans beyond the config's fields and each question's prompt and reference
    answer (those are checked per question), as a run records it: a task file or an answer checker changed
    under a run shows here."""
    return {"name": task.name, "n_min": cfg.n_min or task.n_min, "max_new_tokens": cfg.max_new_tokens or task.max_new_tokens,
            **task.identity()}


def task_changes(then: dict | None, now: dict) -> set[str]:
    """The keys of a run's task record that differ now (none for a record written before runs kept one)."""
    return set() if then is None else {k for k in {*then, *now} if then.get(k) != now.get(k)}


def check_task(then: dict | None, now: dict, task: str, where: str, other: str) -> None:
    """Refuse, naming what changed and how to put it back, a run whose task record ``then`` differs from
    ``now``, the task ``task``'s; ``other`` is the command's way out (another directory)."""
    from harness.rundir import RunDirError

    if not (moved := task_changes(then, now)):
        return
    odiag_made = "answer_checker" in moved or task == "synthetic"  # nothing but odiag's code defines these
    version = (f"an odiag whose answer extraction is version {then['answer_checker']}" if "answer_checker" in moved
               else "the odiag version that made the run")
    fix = " and ".join([*([f"restore {task_file(task)}"] if moved - {"answer_checker"} and task != "synthetic" else []),
                        *([f"use {version}"] if odiag_made else [])])
    keys = [*now, *(k for k in then if k not in now)]
    changes = "; ".join(f"{_TASK_KEYS.get(k, k)}: {then.get(k)!r} there, {now.get(k)!r} now" for k in keys if k in moved)
    raise RunDirError(f"{where}: the task changed since the run was made ({changes}), so new responses would be judged "
                      f"or planned apart from the stored ones; {fix}, or {other}")


def task_file(name: str) -> str:
    """Where a task is defined, as a refusal names it."""
    return "odiag itself" if name == "synthetic" else f"tasks/{name}.yaml"


def _stored_path(file: str) -> Path:
    """A teacher file as ``config.json`` records it (inside the checkout, relative to it) opened here."""
    return Path(file) if Path(file).is_absolute() else REPOSITORY / file


def check_against(
    plan: RunPlan, saved: dict | None, *, rescore: bool = False, add: TeacherRef | None = None, root: str = "",
    drop: tuple[str, ...] = (), flag: str = "--out",
) -> tuple[RunPlan, list[str]]:
    """``plan`` checked against a run directory's ``config.json`` (None: a new run).

    Returns the plan with the run's added teachers (and ``add``) appended, and the names of added
    teachers whose file changed (only with ``rescore``: their passes are to be redone). Raises a
    RunDirError saying what differs and how to proceed otherwise.
    """
    from harness.rundir import RunDir, RunDirError, another

    if saved is None:
        return plan, []
    where = root or "the run directory"
    theirs = [t for t in saved["teachers"] if isinstance(t, dict) and {"name", "identity", "file", "role"} <= set(t)]
    if len(theirs) != len(saved["teachers"]):
        raise RunDirError(f"{where}/config.json: not a valid run config (a teacher entry lacks name, identity, file or role)")
    replanned = _check_tree(plan, saved, theirs, rescore=rescore, add=add, root=root, where=where, flag=flag)
    # a rescore of a tree drawn whole (a rescore stopped part-way, its results gone, included) judges no response
    # of the tree: under another answer checker it goes on with the run's record, and a solution it would have to
    # judge anew is refused where it would be made (harness.teachers.build_artefacts)
    then, now = saved.get("task"), plan.task_record()
    if rescore and root and not RunDir.stopped_drawing(root) and task_changes(then, now) == {"answer_checker"}:
        plan = dataclasses.replace(plan, recorded_task=then)
    else:
        check_task(then, now, plan.config.task, where, f"use {another(flag)}")
    if saved.get("scoring") != plan.scoring() and not rescore:
        stored = saved.get("scoring") or {}
        diffs = [f"{k}: {stored.get(k)!r} there, {v!r} now" for k, v in plan.scoring().items() if stored.get(k) != v]
        fix = f"to rescore the stored trees with zero rollouts use odiag rescore {shell_word(where)} --set KEY=VALUE"
        if root and not (Path(root) / "results.json").is_file():  # rescore reads a finished run only
            fix = f"the run has not finished: finish it with the settings it records ({finish_command(where)}), then {fix}"
        raise RunDirError(f"{where}: scoring settings differ ({'; '.join(diffs)}); {fix}")
    for key, smaller in (("budget", "a smaller budget"), ("limit", "fewer questions")):
        old, new = saved["config"].get(key), getattr(plan.config, key)
        if not _grows(old, new):
            what = (f"{key} {new!r} is below the run's {old!r}" if old is not None
                    else f"the run has no {key} (unlimited), and {key} {new!r} would shrink it")
            raise RunDirError(f"{where}: {what}; a run grows, it never shrinks (use {another(flag)} for {smaller})")
    refs, changed = _added_teachers(plan, theirs, rescore=rescore, add=add, root=root, where=where, drop=drop)
    check_distinct(refs)
    return _spelled_as_recorded(dataclasses.replace(plan, teachers=tuple(refs)), saved, theirs), [*replanned, *changed]


def _spelled_as_recorded(plan: RunPlan, saved: dict, theirs: list[dict]) -> RunPlan:
    """``plan`` with the run's own spelling of its teachers, where the same files are named otherwise
    (``teachers/x.yaml``, or an absolute path, for ``x``). The config hash counts teachers as spelled: a resume
    in other words would record the run under another hash, its results redone and its validation dropped."""
    old = [t for t in theirs if t["role"] == PLANNER]
    new = [t for t in plan.teachers if t.role == PLANNER]
    entries = saved["config"].get("teachers")
    if (entries != [t.get("entry") for t in old] or tuple(entries) == plan.config.teachers
            or [(t["name"], t["identity"], t["file"]) for t in old]
            != [(t.name, t.identity, portable(t.config.file)) for t in new]):
        return plan
    spelled = dict(zip((t.name for t in new), entries, strict=True))
    refs = tuple(dataclasses.replace(t, entry=spelled[t.name]) if t.role == PLANNER else t for t in plan.teachers)
    return dataclasses.replace(plan, config=dataclasses.replace(plan.config, teachers=tuple(entries)), teachers=refs)


def _check_tree(plan: RunPlan, saved: dict, theirs: list[dict], *, rescore: bool, add: TeacherRef | None, root: str,
                where: str, flag: str) -> list[str]:
    """The run's rollout tree is the one ``plan`` draws, or a RunDirError naming what differs. Returns the planner
    teachers whose edited file takes over (an edit before any targeted rollout, whose own passes are redone)."""
    from harness.rundir import RunDirError, another

    mine, stored = tree_fields(plan.config), saved.get("tree", {})
    keys = [*mine, *(k for k in stored if k not in mine)]
    differ = [k for k in keys if stored.get(k) != mine.get(k)]
    old = [t for t in theirs if t["role"] == PLANNER]
    new = [t for t in plan.teachers if t.role == PLANNER]
    same_planners = [(t["name"], t["identity"]) for t in old] == [(t.name, t.identity) for t in new]
    # a setting the run's strategy never reads (settle's price under paper) leaves the tree as it is
    unread = bool(differ) and same_planners and set(differ) <= unread_fields(plan.config.strategy)
    if saved["tree_hash"] == plan.tree_hash or unread:
        return []
    if differ == ["student_args"] and same_planners and _numeric_as_now(saved) == (mine.get("student_args") or {}):
        return []  # recorded before options inside engine_options counted: the same settings, the same tree
    edited = ([n.name for o, n in zip(old, new, strict=True) if o["identity"] != n.identity]
              if [t["name"] for t in old] == [t.name for t in new] else [])
    if not differ and edited and not rescore and add is None and root and not _targeted(Path(root)):
        # no targeted rollout is stored yet, so nothing a planner shaped is: an edited planner file (a fixed
        # template) takes over, its own passes redone; the initial rollouts and the other teachers' passes stay
        return edited
    diffs = [f"{k}: {stored.get(k)!r} there, {mine.get(k)!r} now" for k in differ]
    if [t["name"] for t in old] != [t.name for t in new]:
        diffs.append(f"teachers: {[t['name'] for t in old]} there, {[t.name for t in new]} now "
                     "(add a teacher to a finished run with odiag add-teacher)")
    else:
        diffs += [_teacher_differs(o, n, flag) for o, n in zip(old, new, strict=True) if o["identity"] != n.identity]
    fix = (f"odiag rescore changes only {', '.join(SCORING_FIELDS)} and options that move no number: give the run's own "
           "value, or start a new run under another --out" if rescore else f"use {another(flag)}, or the same settings to resume")
    raise RunDirError(f"{where} holds a run with a different rollout tree ({'; '.join(diffs) or 'tree hash differs'}); {fix}")


def _teacher_differs(recorded: dict, now: TeacherRef, flag: str) -> str:
    """Why a teacher's identity differs from the run's: its file was edited, or its entry names another file (a
    relative path, from another working directory)."""
    from harness.rundir import another

    if "file" in recorded and (was := _stored_path(recorded["file"])).resolve() != Path(now.config.file).resolve():
        entry = Path(now.entry)
        if not entry.is_absolute() and not now.entry.startswith("~") and ("/" in now.entry or entry.suffix in (".yaml", ".yml")):
            return (f"teacher {now.name!r} is another file from this working directory: {now.entry!r} reads "
                    f"{now.config.file} here, the run read {was}; give the run's file, or run from the directory the "
                    "run was started in")
        return (f"teacher {now.name!r} is another file than the run's: {now.entry!r} reads {now.config.file}, the run "
                f"read {was}; give the run's file, or use {another(flag)}")
    return (f"teacher {now.name!r} changed since the run was made ({now.config.file}: identity {recorded['identity']} "
            f"there, {now.identity} now; it plans the targeted rollouts, so restore the file or use {another(flag)})")


def _numeric_as_now(saved: dict) -> dict | None:
    """The options that move a number of the run's recorded ``student_args``, as this odiag reads them."""
    from harness.config import numeric_part

    config = saved.get("config")
    args = config.get("student_args") if isinstance(config, dict) else None
    return numeric_part(args or {}) if isinstance(args, dict) or args is None else None


def _added_teachers(plan: RunPlan, theirs: list[dict], *, rescore: bool, add: TeacherRef | None, root: str, where: str,
                    drop: tuple[str, ...]) -> tuple[list[TeacherRef], list[str]]:
    """``plan``'s teachers with the run's added ones (less ``drop``) and ``add``, each checked against the identity it
    was scored under, and the added teachers whose file changed (only with ``rescore``: their passes are redone)."""
    from harness.rundir import RunDirError

    added = [t["name"] for t in theirs if t["role"] == ADDED]
    for name in drop:
        if name not in added:
            planned = " plans the rollout tree and cannot leave it" if name in [t["name"] for t in theirs] else " is not in this run"
            raise RunDirError(f"--drop-teacher {name}: {name!r}{planned}; teachers added with odiag add-teacher: "
                              f"{', '.join(added) or 'none'}")
    refs, changed = list(plan.teachers), []
    for t in theirs:
        if t["role"] != ADDED or t["name"] in drop:
            continue
        ref = recorded_teacher(t, where, f"or remove the teacher with odiag rescore {shell_word(where)} --drop-teacher {shell_word(t['name'])}")
        file = ref.config.file
        ref = dataclasses.replace(ref, entry=t.get("entry", file))
        if ref.name != t["name"]:
            raise RunDirError(f"{where}: teacher {t['name']!r} (added, {file}) is now named {ref.name!r}; restore its name")
        if ref.identity != t["identity"]:
            if not rescore:
                raise RunDirError(
                    f"{where}: teacher {ref.name!r} changed since it was scored ({file}: identity {t['identity']} there, "
                    f"{ref.identity} now); restore the file, or rescore it with odiag rescore {shell_word(where)}"
                )
            changed.append(ref.name)
        plan.task.check_teacher(ref.config)
        refs.append(ref)
    if add is None:
        return refs, changed
    same = [r for r in refs if r.name == add.name or r.identity == add.identity]
    if any(r.name == add.name and r.identity == add.identity for r in same):
        log.info("teacher %s is already scored in %s (the same file): nothing to add", add.name, root or "this run")
    elif same:
        r = same[0]
        why = (f"a different teacher named {r.name!r} is in this run ({r.config.file}, identity {r.identity}; "
               f"{add.config.file} has identity {add.identity}); give the new one another name (key 'name')")
        if r.name != add.name:
            why = f"{add.config.file} is the same teacher as {r.name!r} (identity {r.identity}), already in this run"
        raise RunDirError(f"{where}: {why}")
    else:
        plan.task.check_teacher(add.config)
        refs.append(add)
    return refs, changed


def _targeted(root: Path) -> bool:
    """Whether a run directory stores targeted rollouts (the tree its planner teachers shaped)."""
    return any((root / "shards").glob("*/window*.npz"))
