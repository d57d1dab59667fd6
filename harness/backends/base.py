"""The token-level backend Protocol: only token ids and numbers cross it (STYLE.md).

Two capabilities. **sample**: ``n`` completions of each of many token-id prefixes at temperature
``T`` with no top-p/top-k truncation (SPEC §1: the rollouts must be draws from exactly ``π``).
**score**: one forward pass of a model over ``context + response``, returning at every response
position the log-probabilities of a set of token ids under that model and, where a reference
(model, context) is given, under the reference too, plus the divergences between the two full
next-token distributions (SPEC §3). Chat templates, prompts and answer checking stay on the task
and teacher side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

STUDENT = "student"  # the model name every backend gives the student


@dataclasses.dataclass(frozen=True)
class SampleRequest:
    """``n`` completions of one prefix."""

    prefix: np.ndarray  # int [L]: prompt ids followed by the forced response prefix
    n: int  # completions to draw
    seed: int  # completion i draws its randomness from (seed, i, step): batching never changes the noise
    max_new_tokens: int  # completions reaching this length are truncated
    temperature: float = 1.0  # the sampling temperature T; pi is the distribution at T
    stop_ids: tuple[int, ...] = ()  # a completion ends after emitting one of these (kept in its tokens)
    model: str = STUDENT  # which loaded model samples


@dataclasses.dataclass(frozen=True)
class SampleResult:
    """The completions of one request, in order."""

    tokens: list[np.ndarray]  # n arrays of sampled ids (a stop id, when hit, is the last token)
    truncated: np.ndarray  # bool [n]: hit max_new_tokens without a stop id


@dataclasses.dataclass(frozen=True)
class ScoreRequest:
    """One forward pass of ``model`` over ``context + response`` (and of the reference, if any)."""

    context: np.ndarray  # int [C]: ids before the response (the model's own prompt / teacher context)
    response: np.ndarray  # int [P]: the response whose positions are scored
    model: str = STUDENT  # which loaded model scores
    temperature: float = 1.0  # distributions are taken at this temperature
    top_k: int = 64  # at every position also return the top_k ids of each model
    reference_model: str | None = None  # a second model for divergences (normally the student)
    reference_context: np.ndarray | None = None  # the reference's own context
    extra_ids: np.ndarray | None = None  # int [P, E]: ids also scored at each position (a short row repeats response[k])


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """Per-position log-probabilities on a ragged id set, and divergences.

    At position ``k`` (the node ``response[:k]``) the id set is ``ids[offsets[k]:offsets[k+1]]``:
    the union of both models' top-k ids, the request's ``extra_ids[k]`` and ``response[k]``, sorted.
    ``logprobs`` are the scored model's, ``reference_logprobs`` the reference's, on the same ids.
    """

    ids: np.ndarray  # int [N]: ragged id sets, position by position
    offsets: np.ndarray  # int64 [P + 1]
    logprobs: np.ndarray  # float [N]: log pi_model(id | context + response[:k]) at temperature T
    reference_logprobs: np.ndarray | None  # float [N]: the same under the reference model and context
    divergences: dict[str, np.ndarray] | None  # name -> float [P], full-vocabulary (SPEC §3)
    approximate: bool = False  # True when the divergences come from top-k plus a tail bucket

    def at(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(ids, logprobs, reference_logprobs) at position ``k``."""
        s = slice(self.offsets[k], self.offsets[k + 1])
        ref = None if self.reference_logprobs is None else self.reference_logprobs[s]
        return self.ids[s], self.logprobs[s], ref


@runtime_checkable
class Backend(Protocol):
    """What the pipeline needs from a model server."""

    def sample(self, requests: Sequence[SampleRequest]) -> list[SampleResult]:
        """Completions for every request, in order; requests should be batched together by the caller."""
        ...

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """One result per request, in order."""
        ...

    def describe(self) -> dict:
        """Identity and versions of the backend and every loaded model, for results.json."""
        ...
