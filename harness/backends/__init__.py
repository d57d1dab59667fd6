"""Backends by name, imported lazily so that ``import harness`` never imports torch (STYLE.md)."""

from __future__ import annotations

import dataclasses
import importlib
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


__all__ = [
    "BACKENDS",
    "STUDENT",
    "Backend",
    "ModelSpec",
    "SampleRequest",
    "SampleResult",
    "ScoreRequest",
    "ScoreResult",
    "load_backend",
]
