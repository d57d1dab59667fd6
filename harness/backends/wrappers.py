"""What a run wraps around its backend: counting, building on first use, refusing rollouts."""

from __future__ import annotations

from collections.abc import Callable

from harness.backends.base import Backend
from harness.config import ConfigError


class CountingBackend:
    """Counts what a run asks of its backend: rollouts, generated tokens, forward passes per model."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.rollouts = 0
        self.tokens = 0
        self.passes: dict[str, int] = {}

    def sample(self, requests):
        results = self.inner.sample(requests) if requests else []
        self.rollouts += sum(r.n for r in requests)
        self.tokens += sum(len(t) for res in results for t in res.tokens)
        return results

    def count_complete(self, n: int) -> None:
        """Rollouts whose forced prefix already ended them (a stop id, or the length limit): no sampling."""
        self.rollouts += n

    def score(self, requests):
        for r in requests:
            self.passes[r.model] = self.passes.get(r.model, 0) + 1
        return self.inner.score(requests) if requests else []

    def describe(self):
        return self.inner.describe()


class LazyBackend:
    """A backend built on its first request: a rescore that needs no forward pass loads no model.

    ``described``: what to report as the backend's description if it is never built (the run's last).
    """

    def __init__(self, build: Callable[[], Backend], described: dict | None = None):
        self.build, self.inner, self.described = build, None, described

    def _get(self) -> Backend:
        if self.inner is None:
            self.inner = self.build()
        return self.inner

    def sample(self, requests):
        return self._get().sample(requests) if requests else []

    def score(self, requests):
        return self._get().score(requests) if requests else []

    def describe(self):
        return self.described if self.inner is None and self.described is not None else self._get().describe()


class NoRollouts:
    """A backend that refuses to sample: rescoring and adding a teacher must find the whole tree stored."""

    def __init__(self, inner, where: str):
        self.inner, self.where = inner, where

    def sample(self, requests):
        if requests:
            raise ConfigError(f"{self.where}: the stored rollout tree is incomplete; resume the run with odiag run first")
        return []

    def score(self, requests):
        return self.inner.score(requests)

    def describe(self):
        return self.inner.describe()
