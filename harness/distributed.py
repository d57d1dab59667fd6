"""Scale past one machine: a backend whose requests run on Ray actors, one backend instance each.

The pipeline already batches every question's requests of a phase into few large ``sample`` or
``score`` calls (sampling calls bounded by ``harness.targeted.CALL_ROLLOUTS`` and ``CALL_TOKENS``);
``RayBackendPool`` cuts each call into chunks of requests and feeds them to its workers as they free up (questions, and batches of one question's targeted rollouts, spread over workers).
Every request carries its own seed, so which worker runs it changes nothing: results are identical
to a single-process run. A worker that dies loses only the chunk it was running: finished chunks
are kept, a fresh worker is started and the lost chunk runs again with the same seeds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

from harness.backends import ModelSpec, SampleRequest, ScoreRequest, load_backend
from harness.errors import ConfigError, OdiagError, first_line, out_of_memory

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


MAX_TRIES = 3  # fresh workers one chunk of requests may kill before the run stops


def _init(ray, address: str | None) -> None:
    """``ray.init``: an existing cluster at ``address``, else a local one sized to this machine. An address
    nothing answers at, or one Ray cannot read, is one line at once (Ray would retry for minutes). Ray's own
    SIGINT and SIGTERM handlers are replaced by the ones in place before (odiag's clean stop)."""
    import signal
    import socket
    import threading

    if address and address != "auto" and "://" not in address:
        host, _, port = address.rpartition(":")
        if not port.isdigit():
            raise ConfigError(f"ray_address {address!r}: expected HOST:PORT (the head node's GCS address), 'auto' or "
                              "ray://HOST:PORT")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except OSError as exc:
            raise ConfigError(f"ray_address {address}: nothing answers there ({exc.strerror or exc}); start the cluster "
                              "(ray start --head) or correct the address") from None
    in_main = threading.current_thread() is threading.main_thread()
    held = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) if in_main else None
    # Ray warns that the local cluster it starts uses token authentication and how to opt out: that cluster is
    # this process's own, and the line would precede odiag's output (an error's one line among it); kept with -v
    auth = logging.getLogger("ray._private.authentication")
    level = auth.level
    if not log.isEnabledFor(logging.DEBUG):
        auth.setLevel(logging.ERROR)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"ray_address {address}: {first_line(exc)}") from None
    finally:
        auth.setLevel(level)
        if held is not None:
            signal.signal(signal.SIGINT, held[0])
            signal.signal(signal.SIGTERM, held[1])


def _cause(exc: BaseException) -> str:
    """The last line of what killed a Ray actor (its creation error, when that was it)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def worker_error(exc: BaseException) -> BaseException:
    """What to raise for a worker's error: the worker's own when it is an expected failure (a refused input, a
    device out of memory), which the command reports in one line as a local run would; else Ray's, with the
    worker's traceback."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, OdiagError) or (cause is not None and out_of_memory(cause)) else exc


def gpus_per_worker(backend: str, num_workers: int, gpus: float, address: str | None, options: Mapping) -> int:
    """1 where every worker can hold a GPU of its own, 0 for CPU workers (the synthetic backend, a cluster without
    GPUs, an hf backend told ``device: cpu``). A GPU cluster with more workers than GPUs is refused (a local one: Ray cannot
    give every worker one, and giving none would run on CPU) or warned of (a remote one may scale up)."""
    if backend == "synthetic" or gpus < 1 or str(options.get("device", "auto")) == "cpu":
        return 0
    if num_workers > gpus:
        _too_many(num_workers, address, f"{gpus:g} GPUs and each worker takes a whole one, so with more workers than "
                  f"GPUs every worker would run on CPU; ask for at most {int(gpus)}"
                  + (", or set device: cpu in student_args to run on CPUs" if backend == "hf" else ""))
    return 1


def _too_many(num_workers: int, address: str | None, why: str) -> None:
    """More workers than the cluster holds: refused on this machine's local cluster, warned of on a remote one
    (an autoscaler may meet them; the others wait until it does)."""
    where = "this machine's local cluster" if address is None else f"the cluster at {address}"
    message = f"num_workers {num_workers}: {where} has {why}"
    if address is None:
        raise ConfigError(message)
    log.warning("%s (unless the cluster scales up)", message)


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
        try:
            import ray
        except ImportError:
            raise ConfigError("executor ray: Ray is not installed in this environment (pip install 'odiag[ray]'), "
                              "or use executor=local") from None

        if not ray.is_initialized():
            _init(ray, address)
        self._ray = ray
        resources = ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
        if num_workers > cpus:
            _too_many(num_workers, address, f"{cpus:g} CPUs and each worker takes one, so {num_workers - int(cpus)} "
                      f"would wait for ever; ask for at most {int(cpus)}")
        per_worker_gpu = gpus_per_worker(backend, num_workers, gpus, address, options)
        self._actor = ray.remote(num_cpus=1, num_gpus=per_worker_gpu)(_Worker)
        self._spec = (backend, dict(models), options)
        self.workers = [self._start() for _ in range(num_workers)]
        self.chunk_size = chunk_size
        self.completed_chunks = 0
        self.restarted = 0
        try:  # every worker loads its models now: a backend that cannot start is one error, not endless restarts
            ray.get([w.pid.remote() for w in self.workers])
        except ray.exceptions.RayActorError as exc:
            raise ConfigError(f"executor ray: a worker could not start its {backend} backend: {_cause(exc)}") from None

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
        failures: dict[int, int] = {}

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
                failures[i] = failures.get(i, 0) + 1
                if failures[i] >= MAX_TRIES:  # the chunk itself kills workers: running it again would never end
                    raise ConfigError(f"executor ray: {MAX_TRIES} workers died running the same requests "
                                      f"({_cause(exc)}); run with executor=local to see the backend's error") from None
                log.warning("worker %d died (%s); chunk %d runs again on a fresh worker", slot, type(exc).__name__, i)
                self.workers[slot] = self._start()
                self.restarted += 1
                queue.insert(0, i)
            except ray.exceptions.RayTaskError as exc:
                if (own := worker_error(exc)) is not exc:
                    raise own from None
                raise
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
