"""Backends by name, imported lazily so that ``import harness`` never imports torch (STYLE.md)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Mapping

from harness.backends.base import STUDENT, Backend, SampleRequest, SampleResult, ScoreRequest, ScoreResult

BACKENDS: dict[str, str] = {
    "synthetic": "harness.backends.exact:SyntheticBackend",
    "hf": "harness.backends.hf:HFBackend",
    "vllm": "harness.backends.vllm:VLLMBackend",
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model a backend loads: everything that moves its log-probabilities."""

    id: str  # hub id or local directory
    revision: str | None = None  # hub revision (commit, tag or branch); None for a local directory
    dtype: str = "auto"  # "auto", "float32", "bfloat16" or "float16"


def load_backend(name: str, models: Mapping[str, ModelSpec], **options) -> Backend:
    """Build backend ``name`` holding ``models`` (keyed by the names requests use; ``student`` first)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose one of {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(models, **options)


# backend options that move a number (an approximate scorer, its depth, a weight format): hashed with the run
NUMERIC_OPTIONS = ("score_with", "score_logprobs", "quantization", "kv_cache_dtype", "hf_options", "attn_implementation")


def engine_argument_names() -> set[str]:
    """vLLM's own engine arguments (``EngineArgs`` fields); empty when vLLM is not importable."""
    try:
        from vllm.engine.arg_utils import EngineArgs
    except ImportError:
        return set()
    return {f.name for f in dataclasses.fields(EngineArgs)}


def check_options(name: str, options: Mapping, where: str = "student_args") -> dict:
    """``options`` for backend ``name``, checked against its constructor (and, for vllm, vLLM's engine
    arguments, which go to every engine as ``engine_options``) and its ``check_option_values``; an unknown
    key or a bad value is a ValueError naming it."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose one of {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    backend = getattr(importlib.import_module(module), cls)
    params = inspect.signature(backend.__init__).parameters
    own = {p for p, v in params.items() if p not in ("self", "models", "loaded", "model_args") and v.kind == v.KEYWORD_ONLY}
    engine = engine_argument_names() if name == "vllm" else set()
    out, engine_options = {}, {}
    for key, value in options.items():
        if key in own:
            out[key] = value
        elif key in engine and key not in ("model", "tokenizer", "revision", "dtype"):
            engine_options[key] = value
        else:
            hint = "" if name != "vllm" or engine else " (vLLM's engine arguments are accepted where vllm is importable)"
            what = "model-specific" if key in ("model", "tokenizer", "revision", "dtype") else "unknown"
            valid = (f"valid keys are {sorted(own)}" + (" and vLLM's EngineArgs" if engine else "") if own or engine
                     else "it takes no options")
            raise ValueError(f"{where}: {what} key {key!r} for the {name} backend{hint}; {valid}")
    if engine_options:
        out["engine_options"] = {**engine_options, **dict(out.get("engine_options") or {})}
    nested = out.get("engine_options")
    if name == "vllm" and nested is not None:  # given as a mapping, they reach every engine: the same check
        if not isinstance(nested, Mapping):
            raise ValueError(f"{where}: key 'engine_options' must be a mapping of vLLM engine arguments, got {nested!r}")
        if engine and (odd := sorted(set(nested) - engine)):
            raise ValueError(f"{where}: engine_options: unknown vLLM engine argument {odd[0]!r}")
    if name == "vllm" and out.get("hf_options") is not None:  # the exact scorer's options: the hf backend's keys
        if not isinstance(out["hf_options"], Mapping):
            raise ValueError(f"{where}: key 'hf_options' must be a mapping of the hf backend's options, got {out['hf_options']!r}")
        check_options("hf", out["hf_options"], f"{where}: hf_options")
    if hasattr(backend, "check_option_values"):  # values too, before a model loads
        try:
            backend.check_option_values(**out)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return out


__all__ = [
    "BACKENDS",
    "NUMERIC_OPTIONS",
    "STUDENT",
    "Backend",
    "ModelSpec",
    "SampleRequest",
    "SampleResult",
    "ScoreRequest",
    "ScoreResult",
    "check_options",
    "engine_argument_names",
    "load_backend",
]
