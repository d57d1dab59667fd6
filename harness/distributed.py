"""Scale past one machine: a backend whose requests run on Ray actors, one backend instance each.

The pipeline already batches every question's requests of a phase into one ``sample`` or ``score``
call; ``RayBackendPool`` cuts that call into chunks of requests and feeds them to its workers as
they free up (questions, and batches of one question's targeted rollouts, spread over workers).
Every request carries its own seed, so which worker runs it changes nothing: results are identical
to a single-process run. A worker that dies loses only the chunk it was running: finished chunks
are kept, a fresh worker is started and the lost chunk runs again with the same seeds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

from harness.backends import ModelSpec, SampleRequest, ScoreRequest, load_backend

log = logging.getLogger(__name__)


class _Worker:
    """One backend instance inside a Ray actor."""

    def __init__(self, backend: str, models: Mapping[str, ModelSpec], options: dict):
        self.backend = load_backend(backend, models, **options)

    def pid(self) -> int:
        return os.getpid()

    def run(self, method: str, requests: list):
        return getattr(self.backend, method)(requests)

    def describe(self) -> dict:
        return self.backend.describe()


def _work(method: str, requests: list, results: list) -> tuple[int, int]:
    """(completions or passes, generated tokens) of one finished chunk."""
    if method == "score":
        return len(results), 0
    return sum(r.n for r in requests), sum(len(t) for res in results for t in res.tokens)


class RayBackendPool:
    """A Backend spreading each call's requests over ``num_workers`` Ray actors."""

    def __init__(
        self,
        backend: str,
        models: Mapping[str, ModelSpec],
        num_workers: int = 2,
        address: str | None = None,
        chunk_size: int | None = None,
        **options,
    ):
        import ray

        if not ray.is_initialized():
            # an existing cluster when an address is given; else a local one sized to this machine
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        self._ray = ray
        gpus = ray.cluster_resources().get("GPU", 0)
        per_worker_gpu = 1 if gpus >= num_workers else 0
        self._actor = ray.remote(num_cpus=1, num_gpus=per_worker_gpu)(_Worker)
        self._spec = (backend, dict(models), options)
        self.workers = [self._start() for _ in range(num_workers)]
        self.chunk_size = chunk_size
        self.completed_chunks = 0
        self.restarted = 0

    def _start(self):
        return self._actor.remote(*self._spec)

    def _chunks(self, requests: Sequence) -> list[list]:
        # several chunks per worker so a fast worker takes more, but few enough to keep batches large
        size = self.chunk_size or max(1, -(-len(requests) // (4 * len(self.workers))))
        return [list(requests[i : i + size]) for i in range(0, len(requests), size)]

    def _map(self, method: str, requests: Sequence, on_done=None) -> list:
        ray = self._ray
        chunks = self._chunks(requests)
        results: list = [None] * len(chunks)
        queue = list(range(len(chunks)))
        in_flight: dict = {}

        def submit(slot: int) -> None:
            if queue:
                i = queue.pop(0)
                in_flight[self.workers[slot].run.remote(method, chunks[i])] = (i, slot)

        for slot in range(len(self.workers)):
            submit(slot)
        while in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=1)
            i, slot = in_flight.pop(done[0])
            try:
                results[i] = ray.get(done[0])
                self.completed_chunks += 1
                if on_done is not None:  # progress: a chunk's completions, as it returns
                    on_done(*_work(method, chunks[i], results[i]))
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                log.warning("worker %d died (%s); chunk %d runs again on a fresh worker", slot, type(exc).__name__, i)
                self.workers[slot] = self._start()
                self.restarted += 1
                queue.insert(0, i)
            submit(slot)
        return [r for chunk in results for r in chunk]

    def sample(self, requests: Sequence[SampleRequest], on_done=None):
        return self._map("sample", requests, on_done)

    def score(self, requests: Sequence[ScoreRequest], on_done=None):
        return self._map("score", requests, on_done)

    def describe(self) -> dict:
        inner = self._ray.get(self.workers[0].describe.remote())
        # the executor does not move a number, so it stays out of the identity (results match local runs)
        return inner

    def worker_pids(self) -> list[int]:
        return self._ray.get([w.pid.remote() for w in self.workers])
