"""What a run wraps around its backend: counting, building on first use, refusing rollouts."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from harness.backends.base import Backend
from harness.config import ConfigError
from harness.progress import OnDone, Phase
from harness.progress import call as progress_call


class CountingBackend:
    """Counts what a run asks of its backend: rollouts, generated tokens, forward passes per model.

    While a progress phase is bound to ``phase`` (`harness.progress.Phases.phase`), each call adds
    its work to the phase's plan and reports completions from inside the backend call.
    """

    def __init__(self, inner: Backend):
        self.inner = inner
        self.rollouts = 0
        self.tokens = 0
        self.passes: dict[str, int] = {}
        self.phase: Phase | None = None
        self._ahead = 0  # rollouts (or passes) of a round planned whole (plan_ahead) not yet sampled (or scored)
        self._announced = 0  # rollouts (or passes) given to plan_ahead, planned once the first call has loaded its models
        self._announced_tokens = 0.0  # the tokens plan_ahead was told those rollouts generate

    def _ready(self, phase: Phase, requests, kind: str) -> None:
        """Load what the call will use (a backend not yet built, an engine not yet started) before its work is
        planned: the seconds that took stay out of the phase's rates and ETA (loading a model is not sampling)."""
        models = {r.model for r in requests} | {m for r in requests if (m := getattr(r, "reference_model", None))}
        if hasattr(self.inner, "ready") and (seconds := self.inner.ready(models, kind)):
            phase.loaded(seconds)

    def plan_ahead(self, rollouts: int, tokens: float = 0.0) -> None:
        """A round (or a phase's forward passes) planned whole before its calls: its sampled and complete rollouts
        (its scored passes) plan nothing more, so the phase's total and ETA hold the round from its start, however
        many calls sample it. Planned when its first call has loaded what it uses (or its first complete rollout
        is counted): loading stays out of the phase. ``tokens``: about how many the round generates, for the ETA."""
        if self.phase is not None and rollouts:
            self._announced += rollouts
            self._announced_tokens += tokens

    def _plan_announced(self, phase: Phase) -> None:
        if self._announced:
            phase.plan(self._announced, self._announced_tokens)
            self._ahead, self._announced, self._announced_tokens = self._ahead + self._announced, 0, 0.0

    def replayed(self, rollouts: int) -> None:
        """Rollouts read back from a stored round: spent from the budget, nothing drawn."""
        if self.phase is not None:
            self.phase.replayed(rollouts)

    def _plan(self, phase: Phase, rollouts: int) -> None:
        fresh, self._ahead = max(rollouts - self._ahead, 0), max(self._ahead - rollouts, 0)
        if fresh:
            phase.plan(fresh)

    def sample(self, requests):
        phase = self.phase
        if phase is not None and requests:
            self._ready(phase, requests, "sample")
            self._plan_announced(phase)
            self._plan(phase, sum(r.n for r in requests))
        on_done = phase.sampled if phase is not None else None
        results = progress_call(self.inner.sample, requests, on_done, _tokens) if requests else []
        self.rollouts += sum(r.n for r in requests)
        self.tokens += sum(len(t) for res in results for t in res.tokens)
        return results

    def count_complete(self, n: int) -> None:
        """Rollouts whose forced prefix already ended them (a stop id, or the length limit): no sampling."""
        self.rollouts += n
        if self.phase is not None and n:
            self._plan_announced(self.phase)
            self._plan(self.phase, n)
            self.phase.sampled(n, 0)

    def score(self, requests):
        for r in requests:
            self.passes[r.model] = self.passes.get(r.model, 0) + 1
        phase = self.phase
        if phase is not None and requests:
            self._ready(phase, requests, "score")
            self._plan_announced(phase)
            self._plan(phase, len(requests))
        on_done = phase.scored if phase is not None else None
        return progress_call(self.inner.score, requests, on_done, _no_tokens) if requests else []

    def describe(self):
        return self.inner.describe()


def _tokens(result) -> int:
    return sum(map(len, result.tokens))


def _no_tokens(result) -> int:
    return 0


class LazyBackend:
    """A backend built on its first request: a rescore that needs no forward pass loads no model.

    ``described``: the run's last description of its backend, reported as it is if the backend is never built.
    A backend built now describes itself; the engines it did not start this time (vLLM starts an engine per
    model it runs), and its exact scorer if it made none, are kept from the last description, so a resumed run
    still names the engines whose rollouts it holds.
    """

    def __init__(self, build: Callable[[], Backend], described: dict | None = None):
        self.build, self.inner, self.described = build, None, described

    def _get(self) -> Backend:
        if self.inner is None:
            self.inner = self.build()
        return self.inner

    def ready(self, models: Collection[str], kind: str) -> float:
        """Build the backend if it is not yet built, and have it load what a ``kind`` call ("sample" or
        "score") on ``models`` uses; the seconds that took (0 when all was loaded before)."""
        if self.inner is not None and not hasattr(self.inner, "ready"):
            return 0.0  # built, and nothing more it loads on demand
        started = time.monotonic()
        inner = self._get()
        if hasattr(inner, "ready"):
            inner.ready(models, kind)
        return time.monotonic() - started

    def sample(self, requests, on_done: OnDone | None = None):
        return progress_call(self._get().sample, requests, on_done, _tokens) if requests else []

    def score(self, requests, on_done: OnDone | None = None):
        return progress_call(self._get().score, requests, on_done, _no_tokens) if requests else []

    def describe(self):
        last = self.described
        if self.inner is None and last is not None:
            return last
        now = self._get().describe()
        if not isinstance(last, dict) or not isinstance(now, dict) or last.get("backend") != now.get("backend"):
            return now
        merged = dict(now)
        if isinstance(last.get("engines"), dict) and isinstance(now.get("engines"), dict):
            merged["engines"] = {**last["engines"], **now["engines"]}
        if now.get("scorer") is None and last.get("scorer") is not None:
            merged["scorer"] = last["scorer"]
        return merged


class NoRollouts:
    """A backend that refuses to sample: rescoring and adding a teacher must find the whole tree stored."""

    def __init__(self, inner, where: str):
        self.inner, self.where = inner, where

    def sample(self, requests, on_done: OnDone | None = None):
        if requests:
            raise ConfigError(f"{self.where}: the stored rollout tree is incomplete; resume the run with odiag run first")
        return []

    def score(self, requests, on_done: OnDone | None = None):
        return progress_call(self.inner.score, requests, on_done, _no_tokens)

    def ready(self, models: Collection[str], kind: str) -> float:
        """Nothing to load for a sampling call, which it refuses."""
        return self.inner.ready(models, kind) if kind != "sample" and hasattr(self.inner, "ready") else 0.0

    def describe(self):
        return self.inner.describe()
