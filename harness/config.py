"""Configuration: one frozen dataclass per YAML kind, fields match the keys one to one (STYLE.md).

``odiag run --config run.yaml --set k=v`` fills the same ``RunConfig``: YAML first, then each
``--set`` in order, each value parsed as YAML (``--set n_target=200``, ``--set teachers=[a,b]``).
Unknown keys are errors that name the file (or ``--set``) and the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem, with where it came from and how to fix it, in one line."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's results; saved resolved, with its hash, in the run directory."""

    task: str = "synthetic"  # task name (tasks/<name>.yaml) or "synthetic" (the exact synthetic task)
    backend: str = "synthetic"  # backend name: synthetic, hf or vllm
    student: str = "synthetic"  # student model: hub id or local directory ("synthetic" for the synthetic task)
    student_revision: str | None = None  # hub revision of the student
    dtype: str = "auto"  # model dtype: auto, float32, bfloat16, float16
    teachers: tuple[str, ...] = ("synthetic-helpful", "synthetic-misleading")  # teacher names or YAML paths
    algorithms: tuple[str, ...] = ("gkd", "gkd_single_sample", "drgrpo", "minillm", "forward_kl", "jsd")  # SPEC §3
    seed: int = 0  # every draw derives from it and from ids
    limit: int | None = 8  # questions to run (the first ones of the task); None for all
    temperature: float = 1.0  # sampling temperature T; pi is the student's distribution at T
    max_new_tokens: int | None = None  # response length limit; None takes the task's
    n_initial: int = 64  # initial rollouts per question (SPEC §4 step 1)
    paths_per_outcome: int = 2  # representative correct and incorrect paths per question
    window: int = 50  # first depth window width w: windows [0,w), [w,3w), [3w,7w), ...
    k_window: int = 10  # top-k per window by GKD gradient magnitude and by |pi_T - pi|
    tau: float = 0.05  # candidate threshold on pi and |pi_T - pi|
    n_target: int = 100  # visits each targeted child is enriched to
    n_min: int | None = None  # visits a child needs to enter A(s); None takes the task's (20, 10 for AIME)
    cascade: str = "unbiased"  # "unbiased" counting, or "paper" (biased, reproduces the paper)
    strategy: str = "paper"  # targeted-rollout allocation: "paper" (SPEC §4) or "settle" (harness/core/allocation.py)
    budget: int | None = None  # most targeted rollouts per question; None: no limit
    confidence: float = 0.95  # settle: posterior probability that each alignment is within tolerance
    tolerance: float = 0.1  # settle: half-width on the alignment score that counts as settled
    n_max: int = 1280  # settle: no child is enriched beyond this many visits
    price: float = 0.001  # settle: least gain in that probability one more rollout must buy
    gamma: float = 0.95  # MiniLLM reward-to-go discount
    jsd_beta: float = 0.5  # generalised JSD mixture weight
    score_top_k: int = 64  # ids per position kept from each scoring pass (besides the path token)
    data_files: str | None = None  # a local JSONL copy of the task's data, instead of the hub
    executor: str = "local"  # "local" or "ray"
    ray_address: str | None = None  # an existing Ray cluster to join; None starts a local one
    num_workers: int = 2  # Ray workers (one backend each)
    threads: int | None = None  # hf backend: torch CPU threads per process; None keeps torch's default
    student_args: dict = dataclasses.field(default_factory=dict)  # backend options, as lm-eval's model_args (e.g. {gpu_memory_utilization: 0.3})

    def hash(self) -> str:
        """sha256 of the canonical JSON of every field that can move a number (not where it runs).

        Paths inside the odiag checkout count relative to it (:func:`portable`), so a run directory
        keeps its hash when the checkout moves.
        """
        data = {k: v for k, v in portable(to_dict(self)).items() if k not in EXECUTION_FIELDS}
        from harness.backends import NUMERIC_OPTIONS  # backend options that move a number are hashed

        numeric = {k: v for k, v in sorted(self.student_args.items()) if k in NUMERIC_OPTIONS}
        if numeric:
            data["student_args"] = numeric
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# where a run executes never changes its results, so these may differ when a run is resumed
EXECUTION_FIELDS = ("executor", "ray_address", "num_workers", "threads", "student_args")


REPOSITORY = Path(__file__).resolve().parent.parent


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


def to_dict(cfg: Any) -> dict:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _coerce(value: Any, hint: Any, where: str, key: str) -> Any:
    """Check ``value`` against the field's type hint; tuples accept lists, floats accept ints."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, key)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: key {key!r} must be {hint}, got {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, Sequence):
            raise ConfigError(f"{where}: key {key!r} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1]
        return tuple(_coerce(v, item, where, key) for v in value)
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: key {key!r} must be a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Any or (isinstance(hint, type) and isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        return value
    raise ConfigError(f"{where}: key {key!r} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def build(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """``cls(**data)`` with unknown keys and wrong types reported as ``where: key ...``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys are {sorted(fields)}")
    values = {k: _coerce(v, hints[k], where, k) for k, v in data.items()}
    try:
        return cls(**values)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where}: {exc}") from None


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with the file named in every error."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return {} if data is None else data


def resolve_run_config(path: str | Path | None, overrides: Sequence[str]) -> RunConfig:
    """The run config from an optional YAML file and ``key=value`` overrides (values parsed as YAML)."""
    data = load_yaml(path) if path else {}
    where = str(path) if path else "defaults"
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value")
        data[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        where = f"{path or 'defaults'} with --set"
    return build(RunConfig, data, where)
