"""Configuration: one frozen dataclass per YAML kind, fields match the keys one to one (STYLE.md).

``odiag run --config run.yaml --set k=v`` fills the same ``RunConfig``: YAML first, then each
``--set`` in order, each value parsed as YAML (``--set n_target=200``, ``--set teachers=[a,b]``).
Unknown keys are errors that name the file (or ``--set``) and the key.

Each ``RunConfig`` field is declared with :func:`setting`: its default, its one-line doc and the
rules its value must satisfy, side by side. The dataclass checks every field (type, range, allowed
values) when it is constructed, so a bad value is refused before anything runs or is written;
:func:`field_docs` and :func:`field_rules` expose the same declarations (``odiag run --help``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import math
import subprocess
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from harness.errors import ConfigError, OdiagError, StudentArgsError
from harness.safeio import excerpt, load_yaml_file, parse_yaml_value

T = TypeVar("T")

__all__ = ["ConfigError", "OdiagError", "RunConfig", "build", "field_docs", "field_rules", "load_yaml", "resolve_run_config"]


class FieldError(ConfigError):
    """One field's value is refused; :func:`build` prefixes where the value came from."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        shown = list(value) if isinstance(value, tuple) else value  # as YAML writes a list
        super().__init__(f"key {key!r} must be {allowed}, got {excerpt(shown)}")


# rules: what a field's value must satisfy -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    """``test(value)`` is true for an allowed value; ``allowed()`` says which values are, for the fix."""

    test: Callable[[Any], bool]
    allowed: Callable[[], str]


def at_least(lo: float) -> Rule:
    return Rule(lambda v: v >= lo, lambda: f">= {lo}")


MAX_COUNT = 10**9  # any count setting: past it the arithmetic of rollouts and visits leaves 64-bit integers
MAX_INITIAL = 10**6  # initial rollouts per question: held in memory at once
MAX_VISITS = 10**6  # visits per child: a child's rollouts of a round are one request, held in memory at once
# sampling temperatures: below the floor float32 logits / T overflow (and a float32 T rounds to 0 near
# 1e-45), and above the ceiling every distribution is uniform to within float precision
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-4, 100.0


def at_most(most: int = MAX_COUNT) -> Rule:
    """A count's ceiling (checked after its floor, so a 0 is answered with the floor alone)."""
    return Rule(lambda v: v <= most, lambda: f"<= {most:,}")


def between(lo: float, hi: float, *, low_open: bool = False, high_open: bool = False, hi_text: str | None = None) -> Rule:
    """``lo <= v <= hi``, either end open."""
    return Rule(
        lambda v: (lo < v if low_open else lo <= v) and (v < hi if high_open else v <= hi),
        lambda: f"{'>' if low_open else '>='} {lo} and {'<' if high_open else '<='} {hi_text or hi}",
    )


def positive() -> Rule:
    return Rule(lambda v: v > 0, lambda: "> 0")


def one_of(values: Sequence[str] | Callable[[], Sequence[str]]) -> Rule:
    """One of ``values`` (a registry may be given as a function, read when a value is checked)."""
    choices = values if callable(values) else (lambda: values)
    return Rule(lambda v: v in choices(), lambda: "one of " + ", ".join(map(str, choices())))


def each_one_of(values: Callable[[], Sequence[str]]) -> Rule:
    """A non-empty list of distinct members of ``values``."""
    return Rule(lambda v: len(v) > 0 and len(set(v)) == len(v) and all(x in values() for x in v),
                lambda: "a non-empty list without repeats of " + ", ".join(map(str, values())))


def non_empty() -> Rule:
    return Rule(lambda v: len(v) > 0, lambda: "non-empty")


def repeated(items: Sequence) -> Any | None:
    """The first item that ``items`` holds twice, or None."""
    return next((x for i, x in enumerate(items) if x in items[:i]), None)


def distinct() -> Rule:
    return Rule(lambda v: repeated(v) is None, lambda: "a list without repeats")


def named_keys() -> Rule:
    """A mapping whose keys are names (strings)."""
    return Rule(lambda v: all(isinstance(k, str) and k for k in v), lambda: "a mapping of option names to values")


def setting(default: Any, doc: str, *rules: Rule) -> Any:
    """A config field: its default, its one-line doc and its rules (None always passes an optional
    field's rules). A list or dict default is copied for each instance."""
    metadata = {"doc": doc, "rules": rules}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _backends() -> list[str]:
    from harness.backends import BACKENDS

    return sorted(BACKENDS)


def _strategies() -> list[str]:
    from harness.core.allocation import STRATEGIES

    return sorted(STRATEGIES)


def _algorithms() -> list[str]:
    from harness.core import ALGORITHMS

    return list(ALGORITHMS)


DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's results; saved resolved, with its hash, in the run directory."""

    task: str = setting("synthetic", 'task name (tasks/<name>.yaml) or "synthetic" (the exact synthetic task)', non_empty())
    backend: str = setting("synthetic", "backend name: synthetic, hf or vllm", one_of(_backends))
    student: str = setting(
        "synthetic", 'student model: hub id or local directory ("synthetic" for the synthetic task)', non_empty())
    student_revision: str | None = setting(None, "hub revision of the student", non_empty())
    dtype: str = setting("auto", "model dtype: auto, float32, bfloat16, float16", one_of(DTYPES))
    teachers: tuple[str, ...] = setting(
        ("synthetic-helpful", "synthetic-misleading"), "teacher names or YAML paths", non_empty(), distinct())
    algorithms: tuple[str, ...] = setting(
        ("gkd", "gkd_single_sample", "drgrpo", "minillm", "forward_kl", "jsd"),
        "distillation algorithms scored (SPEC §3)", each_one_of(_algorithms))
    seed: int = setting(0, "every draw derives from it and from ids", between(0, 2**63, high_open=True, hi_text="2**63"))
    limit: int | None = setting(8, "questions to run (the first ones of the task); None for all", at_least(1), at_most())
    temperature: float = setting(1.0, "sampling temperature T; pi is the student's distribution at T",
                                 between(MIN_TEMPERATURE, MAX_TEMPERATURE))
    max_new_tokens: int | None = setting(None, "response length limit; None takes the task's", at_least(1), at_most())
    n_initial: int = setting(64, "initial rollouts per question (SPEC §4 step 1)", at_least(2), at_most(MAX_INITIAL))
    paths_per_outcome: int = setting(2, "representative correct and incorrect paths per question", at_least(1), at_most())
    incorrect_outcomes: tuple[str, ...] = setting(
        ("wrong",), "outcomes that may serve as incorrect paths: wrong, and on request truncated, unparseable",
        non_empty(), distinct(), each_one_of(lambda: ("wrong", "truncated", "unparseable")),
    )
    window: int = setting(50, "first depth window width w: windows [0,w), [w,3w), [3w,7w), ...", at_least(1), at_most())
    k_window: int = setting(10, "top-k per window by GKD gradient magnitude and by |pi_T - pi|", at_least(1), at_most())
    tau: float = setting(0.05, "candidate threshold on pi and |pi_T - pi|", between(0, 1, low_open=True, high_open=True))
    n_target: int = setting(100, "visits each targeted child is enriched to", at_least(1), at_most(MAX_VISITS))
    n_min: int | None = setting(
        None, "visits a child needs to enter A(s); None takes the task's (20, 10 for AIME)", at_least(1),
        at_most(MAX_VISITS))
    cascade: str = setting(
        "unbiased", '"unbiased" counting, or "paper" (biased, reproduces the paper)', one_of(("unbiased", "paper")))
    strategy: str = setting(
        "paper", 'targeted-rollout allocation: "paper" (SPEC §4), "settle" or "survey" (harness/core/allocation.py)',
        one_of(_strategies))
    budget: int | None = setting(None, "most targeted rollouts per question; None: no limit", at_least(1), at_most())
    confidence: float = setting(
        0.95, "settle: posterior probability that each alignment is within tolerance",
        between(0, 1, low_open=True, high_open=True))
    tolerance: float = setting(0.1, "settle: half-width on the alignment score that counts as settled", positive())
    n_max: int = setting(1280, "settle: no child is enriched beyond this many visits", at_least(1), at_most(MAX_VISITS))
    price: float = setting(0.001, "settle: least gain in that probability one more rollout must buy", at_least(0))
    gamma: float = setting(0.95, "MiniLLM reward-to-go discount", between(0, 1))
    jsd_beta: float = setting(0.5, "generalised JSD mixture weight; 0 and 1 only without jsd (TRL's 0 and 1 are "
                                   "forward_kl and gkd)", between(0, 1))
    score_top_k: int = setting(64, "ids per position kept from each scoring pass (besides the path token)", at_least(1), at_most())
    data_files: str | None = setting(None, "a local JSONL copy of the task's data, instead of the hub", non_empty())
    executor: str = setting("local", '"local" or "ray"', one_of(("local", "ray")))
    ray_address: str | None = setting(None, "an existing Ray cluster to join; None starts a local one", non_empty())
    num_workers: int = setting(2, "Ray workers (one backend each)", at_least(1), at_most())
    threads: int | None = setting(None, "torch CPU threads per process (hf backend; vllm's exact scorer); None keeps torch's default", at_least(1), at_most())
    survey_positions: int = setting(64, "survey: positions sampled per path, on average (a systematic grid over depth)", at_least(1), at_most())
    survey_visits: int | None = setting(
        None, "survey: visits each likely child of a sampled position gets; None: n_min", at_least(1),
        at_most(MAX_VISITS))
    student_args: dict = setting(
        {}, "backend options, as lm-eval's model_args (e.g. {gpu_memory_utilization: 0.3}); checked against the backend",
        named_keys())

    def __post_init__(self) -> None:
        check_fields(self)
        if "jsd" in self.algorithms and self.jsd_beta in (0.0, 1.0):  # JSD(β) vanishes there
            raise FieldError("jsd_beta", self.jsd_beta, "> 0 and < 1 with algorithm jsd (TRL's beta 0 and 1 "
                                                        "are the algorithms forward_kl and gkd)")

    def hash(self) -> str:
        """sha256 of the canonical JSON of every field that can move a number (not where it runs).

        Paths inside the odiag checkout count relative to it (:func:`portable`), so a run directory
        keeps its hash when the checkout moves.
        """
        data = {k: v for k, v in portable(to_dict(self)).items() if k not in EXECUTION_FIELDS}
        if numeric := numeric_options(self):
            data["student_args"] = numeric
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# where a run executes never changes its results, so these may differ when a run is resumed
# (student_args apart from its numeric options, see numeric_options)
EXECUTION_FIELDS = ("executor", "ray_address", "num_workers", "threads", "student_args")


def numeric_options(cfg: RunConfig) -> dict:
    """The part of ``student_args`` that moves a number (an approximate scorer, its depth, a weight
    format: ``harness.backends.NUMERIC_OPTIONS``): hashed with the run and part of its tree."""
    return numeric_part(cfg.student_args)


def numeric_part(student_args: dict) -> dict:
    """The options of ``student_args`` (a dict as a config or results.json holds it) that move a number. One
    given inside ``engine_options`` (vLLM's arguments for every engine: ``quantization``, ``kv_cache_dtype``)
    reaches the same engines as one given beside it, and wins over it as there: it counts as given beside it."""
    from harness.backends import NUMERIC_OPTIONS

    args = portable(student_args)
    nested = args.get("engine_options")
    given = {**args, **(nested if isinstance(nested, dict) else {})}
    return {k: v for k, v in sorted(given.items()) if k in NUMERIC_OPTIONS}

# What a setting changes in a run directory (harness/rundir.py, harness/plan.py). Every other field
# (not an execution field) shapes the rollout tree: task, student, seed, sampling, allocation, and the
# config's teachers by content (they are the candidates' planners), so a new value needs a new run.
# Scoring-only: a new value rescores the stored trees with zero rollouts (odiag rescore).
SCORING_FIELDS = ("algorithms", "jsd_beta", "gamma")
# How far a run goes: a larger value grows a stored run (more questions, more targeted rollouts).
GROWTH_FIELDS = ("limit", "budget")
# the allocation settings each strategy reads (harness/core/allocation.py; tau, n_min and budget: all of them)
STRATEGY_FIELDS = {
    "paper": ("n_target", "k_window"),
    "settle": ("n_target", "k_window", "confidence", "tolerance", "n_max", "price"),
    "survey": ("survey_positions", "survey_visits"),
}


def unread_fields(strategy: str) -> set[str]:
    """Allocation settings ``strategy`` never reads: another value of one leaves its every round as it was."""
    return {f for fields in STRATEGY_FIELDS.values() for f in fields} - set(STRATEGY_FIELDS[strategy])


def tree_fields(cfg: RunConfig) -> dict:
    """The fields that shape the rollout tree, portable (teachers apart: they count by content)."""
    skip = {*EXECUTION_FIELDS, *SCORING_FIELDS, *GROWTH_FIELDS, "teachers"}
    fields = {k: v for k, v in portable(to_dict(cfg)).items() if k not in skip}
    if numeric := numeric_options(cfg):  # a scorer's numbers pick the candidates: they shape the tree
        fields["student_args"] = numeric
    return fields


REPOSITORY = Path(__file__).resolve().parent.parent  # the checkout, or site-packages when odiag is installed
# odiag's task and teacher YAMLs: tasks/ and teachers/ of the checkout, copied here when a wheel is built
BUNDLED = Path(__file__).resolve().parent / "_bundled"


def data_dir(name: str) -> Path:
    """odiag's own ``tasks`` or ``teachers`` folder: the installed copy, else the checkout's."""
    return BUNDLED / name if (BUNDLED / name).is_dir() else REPOSITORY / name


def checkout_commit() -> str | None:
    """The git commit of the odiag checkout this runs from; None when odiag is installed (the folder around
    site-packages may be another project's repository) or git cannot say."""
    try:
        top, commit = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=REPOSITORY,
                                     capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, ValueError, subprocess.CalledProcessError):
        return None
    return commit if Path(top).resolve() == REPOSITORY and not BUNDLED.is_dir() else None


def portable(obj: Any) -> Any:
    """``obj`` with every string (and dict key) naming a path inside the odiag checkout made relative
    to it: what results and leaderboards publish, free of the machine they were made on."""
    if isinstance(obj, dict):
        return {portable(k): portable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v) for v in obj]
    if isinstance(obj, str) and obj.startswith(f"{REPOSITORY}/"):
        return obj[len(str(REPOSITORY)) + 1 :]
    return obj


def local_path(path: str) -> str:
    """A path as :func:`portable` publishes it (relative to the checkout) back to one that opens here;
    anything else unchanged."""
    return str(REPOSITORY / path) if path and not Path(path).is_absolute() and (REPOSITORY / path).exists() else path


def to_dict(cfg: Any) -> dict:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _type_name(hint: Any) -> str:
    """``int``, ``float``, ``str``, ``list[str]``, ``int | None``: a field's type as its docs show it."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is tuple:
        return f"list[{_type_name(typing.get_args(hint)[0])}]"
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the field's type hint (FieldError if it fails); tuples accept lists
    (and one string), floats accept ints and must be finite, ints accept whole floats (``2e5``)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if type(None) in args and (value is None or value in ("None", "none")):  # the docs' "None for all", as typed
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except FieldError:
                pass
        raise FieldError(key, value, _type_name(hint))
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise FieldError(key, value, f"a list ({_type_name(hint)})")
        (item,) = typing.get_args(hint)[:1]
        try:
            return tuple(_coerce(v, item, key) for v in value)
        except FieldError:  # the list's type, not its item's: the key holds a list
            raise FieldError(key, value, f"a list of {_type_name(item)}") from None
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise FieldError(key, value, "a mapping")
        return dict(value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise FieldError(key, value, "a finite number")
        return float(value)
    if hint is float and isinstance(value, str) and _not_finite(value):  # "nan", "inf": numbers YAML reads as words
        raise FieldError(key, value, "a finite number")
    if hint is int and isinstance(value, float) and value.is_integer():  # budget: 2e5
        return int(value)
    if hint is Any or (isinstance(hint, type) and isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        return value
    raise FieldError(key, value, _type_name(hint))


def _not_finite(text: str) -> bool:
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return False


def check_fields(obj: Any) -> None:
    """Check every field of a config dataclass against its type and its rules, in declaration order;
    normalise lists to tuples and ints to floats where the type says so. Raises FieldError."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        checked = _coerce(value, hints[f.name], f.name)
        if checked is not value:
            object.__setattr__(obj, f.name, checked)  # frozen: normalised once, here
        if checked is None:
            continue  # an optional field's rules apply to its values, not to None
        for rule in f.metadata.get("rules", ()):
            if not rule.test(checked):
                raise FieldError(f.name, checked, rule.allowed())


class FieldDoc(NamedTuple):
    """One config field as ``--help`` shows it."""

    type: str  # e.g. "int", "int | None", "list[str]"
    default: Any  # the default value (tuples for lists)
    doc: str  # the one-line doc


def field_docs(cls: type) -> dict[str, FieldDoc]:
    """``{name: FieldDoc(type, default, doc)}`` of a config dataclass, in declaration order."""
    hints = _hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out[f.name] = FieldDoc(_type_name(hints[f.name]), default, f.metadata.get("doc", ""))
    return out


def field_rules(cls: type) -> dict[str, str]:
    """``{name: allowed values}`` of a config dataclass, e.g. ``{"window": ">= 1", "limit": "None or >= 1"}``
    (registries are read now); fields without rules map to ``""``."""
    hints = _hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        allowed = "; ".join(rule.allowed() for rule in f.metadata.get("rules", ()))
        optional = type(None) in typing.get_args(hints[f.name])
        out[f.name] = f"None or {allowed}" if allowed and optional else allowed
    return out


def build(cls: type[T], data: Mapping[str, Any], where: str, sources: Mapping[str, str] | None = None,
          named: Sequence[str] | None = None) -> T:
    """``cls(**data)`` with unknown keys, wrong types and refused values reported in one line as
    ``SOURCE: key ...``, SOURCE being ``sources[key]`` (where that key was set) or ``where``. ``named``:
    the keys an unknown key's message offers, when a file is written in other keys than the fields
    (default: every field)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got a {type(data).__name__}")

    def source(key: str) -> str:
        return (sources or {}).get(key, where)

    hints = _hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{where}: key {excerpt(key)} is not a name")
        if key not in fields:
            offered = list(named) if named is not None else fields
            close = difflib.get_close_matches(key, offered, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{source(key)}: unknown key {excerpt(key)}; {hint}valid keys are {', '.join(offered)}")
    values = {}
    try:
        for key, value in data.items():
            values[key] = _coerce(value, hints[key], key)
        return cls(**values)
    except FieldError as exc:
        raise ConfigError(f"{source(exc.key)}: {exc}") from None
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where}: {exc}") from None


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping under the limits of :mod:`harness.safeio`, with the file named in every error."""
    return load_yaml_file(path)


def resolve_run_config(path: str | Path | None, overrides: Sequence[str]) -> RunConfig:
    """The run config from an optional YAML file and ``key=value`` overrides (values parsed as YAML).

    Every value is checked here (:class:`RunConfig` validates itself), so a bad one is refused
    before a run directory exists; the error names the file or ``--set`` that set the key.
    """
    data = load_yaml(path) if path else {}
    if path and not data:  # a file emptied or commented out by mistake would otherwise run every default
        raise ConfigError(f"{path}: holds no settings (empty, or only comments); leave out --config to run the defaults")
    where = str(path) if path else "defaults"
    sources = {key: where for key in data}
    for key in apply_overrides(data, overrides):
        sources[key] = "--set"
    cfg = build(RunConfig, data, where, sources)
    from harness.tasks import check_task_name  # a glob of tasks/ and one YAML read: nothing heavy

    try:
        check_task_name(cfg.task)
    except ConfigError as exc:
        raise ConfigError(f"{sources.get('task', where)}: {exc}") from None
    if cfg.backend == "synthetic":
        return cfg

    def placed(key: str, name: str) -> str:
        try:
            return anchored(name)
        except OSError as exc:  # a name no file system holds (too long), refused as the value it is
            raise ConfigError(f"{sources.get(key, where)}: {key} {excerpt(name, 80)}: {exc.strerror or exc}") from None

    return dataclasses.replace(cfg, student=placed("student", cfg.student),
                               data_files=None if cfg.data_files is None else placed("data_files", cfg.data_files))


@contextlib.contextmanager
def naming_where_set(path: str | Path | None, overrides: Sequence[str]):
    """Name the file (or ``--set``) in a refusal of the run config's ``student_args``, which is checked
    against its backend only once a plan imports it, long after :func:`resolve_run_config`."""
    try:
        yield
    except StudentArgsError as exc:
        text = str(exc)
        given = "student_args" in {item.partition("=")[0].strip() for item in overrides}
        where = "--set" if given else str(path) if path else None
        if where is None:
            raise
        raise ConfigError(f"{where}: {text}") from None


def anchored(name: str) -> str:
    """A model or data file named by a path relative to the working directory, as an absolute path (made
    :func:`portable`): the same spelling in another working directory names something else, so a run
    resumed, grown or merged into a leaderboard from elsewhere must not read it anew. A model directory
    that is no path here but one inside the odiag checkout (``harness/toy_models/student``, as odiag's own
    configs name it) is that one. Anything else (a hub id, a path from ``~``, expanded where it is loaded:
    `harness.modelfiles.loadable`) is returned as is."""
    path = Path(name)
    if name and not path.is_absolute() and not name.startswith("~") and path.exists():
        spelled = portable(str(path.resolve()))  # relative to the checkout where that opens from here too
        return spelled if Path(spelled).exists() else str(path.resolve())
    if name and not path.is_absolute() and not name.startswith(("~", "./", "../")) and (REPOSITORY / path).is_dir():
        return str(REPOSITORY / path)  # as odiag's own configs name its models (harness/demo.yaml): inside the checkout
    return name


def apply_overrides(data: dict, overrides: Sequence[str], example: str = "n_target=200") -> list[str]:
    """Set each ``key=value`` of ``overrides`` in ``data`` (values parsed as YAML); return the keys set. A
    malformed item is one line naming it, with ``example`` (a setting of the command's own); so is an empty value
    (``limit=`` would silently mean every question)."""
    keys = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {excerpt(item)}: expected KEY=VALUE, e.g. --set {example}")
        if not raw.strip():
            raise ConfigError(f"--set {excerpt(item)}: no value; give one ({key}=null where the key takes none; "
                              f"leave --set {key} out for its default)")
        data[key] = parse_yaml_value(raw, f"--set {key}")
        keys.append(key)
    return keys
