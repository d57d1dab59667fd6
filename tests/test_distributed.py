"""Ray executor: identical results to a local run, and a killed worker loses no finished work."""

import dataclasses
import json
import os
import signal
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'odiag[ray]')")

from harness.config import RunConfig  # noqa: E402
from harness.distributed import RayBackendPool, worker_error  # noqa: E402
from harness.errors import ConfigError  # noqa: E402
from harness.pipeline import model_specs, run  # noqa: E402
from harness.teachers import load_teacher  # noqa: E402

CFG = RunConfig(limit=5)


@pytest.fixture(scope="module")
def local_results(tmp_path_factory):
    return run(CFG, tmp_path_factory.mktemp("local"))


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _same(a: dict, b: dict) -> None:
    assert json.dumps(a["teachers"], sort_keys=True) == json.dumps(b["teachers"], sort_keys=True)
    for key in ("questions", "paths", "decision_points", "rollouts", "tokens_generated", "teacher_forward_passes"):
        assert a["counts"][key] == b["counts"][key]


def test_two_ray_workers_give_the_local_results(ray_cluster, local_results, tmp_path):
    cfg = RunConfig(limit=5, executor="ray", num_workers=2)
    assert cfg.hash() == CFG.hash()  # where a run executes is not part of its identity
    _same(run(cfg, tmp_path), local_results)


class KillingPool(RayBackendPool):
    """Kills worker 0's process (SIGKILL) after the first backend call of the run."""

    def _map(self, method, requests, on_done=None):
        out = super()._map(method, requests, on_done)
        if not getattr(self, "_killed", False):
            self._killed = True
            os.kill(self.worker_pids()[0], signal.SIGKILL)
        return out


def test_a_killed_worker_is_replaced_and_results_are_identical(ray_cluster, local_results, tmp_path):
    teachers = [load_teacher(t) for t in CFG.teachers]
    pool = KillingPool("synthetic", model_specs(CFG, teachers), num_workers=2, chunk_size=1)
    results = run(CFG, tmp_path, backend=pool)
    assert pool.restarted >= 1
    _same(results, local_results)


TOY_STUDENT = Path(__file__).resolve().parent.parent / "harness" / "toy_models" / "student"


@pytest.mark.slow
def test_ray_workers_on_the_tiny_hf_model_give_the_local_results(ray_cluster, tmp_path):
    pytest.importorskip("lm_eval")
    toy = RunConfig(
        task="odiag_toy", backend="hf", student=str(TOY_STUDENT), dtype="float32",
        teachers=("toy-teacher", "toy-self-1c"), algorithms=("gkd",), limit=2, n_initial=16, n_target=20,
        k_window=2, threads=1,
    )
    local = run(toy, tmp_path / "local")
    distributed = run(dataclasses.replace(toy, executor="ray", num_workers=2), tmp_path / "ray")
    assert local["counts"]["decision_points"] > 0
    _same(distributed, local)


def test_more_workers_than_the_local_cluster_has_cpus_is_refused_not_left_waiting(ray_cluster):
    from harness.errors import ConfigError

    teachers = [load_teacher(t) for t in CFG.teachers]
    with pytest.raises(ConfigError, match=r"num_workers 3: this machine's local cluster has 2 CPUs .* at most 2"):
        RayBackendPool("synthetic", model_specs(CFG, teachers), num_workers=3)


def test_too_many_workers_on_the_command_line_is_the_error_line_alone(tmp_path):
    """The local cluster odiag starts is its own: Ray's advice on its token authentication, printed as it
    starts, does not precede the refusal."""
    import subprocess
    import sys

    done = subprocess.run([Path(sys.executable).parent / "odiag", "run", "--out", tmp_path / "run", "--set", "limit=1",
                           "--set", "executor=ray", "--set", "num_workers=4096", "--quiet"],
                          capture_output=True, text=True, timeout=300, env={k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("odiag: error: num_workers 4096: this machine's local cluster has ") \
        and len(done.stderr.splitlines()) == 1, done.stderr[-2000:]


def test_a_backend_that_cannot_start_is_one_error_not_endless_restarts(ray_cluster, tmp_path):
    """A corrupt checkpoint: every fresh worker would die loading it."""
    import shutil

    from harness.backends import STUDENT, ModelSpec
    from harness.errors import ConfigError

    bad = tmp_path / "student"
    shutil.copytree(TOY_STUDENT, bad)
    (bad / "model.safetensors").write_bytes((TOY_STUDENT / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(ConfigError, match="a worker could not start its hf backend"):
        RayBackendPool("hf", {STUDENT: ModelSpec(str(bad))}, num_workers=1)


def test_a_chunk_that_kills_every_worker_stops_the_run(ray_cluster):
    """Every fresh worker dies on the chunk: the chunk, not bad luck, so it is not run for ever."""
    import numpy as np

    from harness.backends import SampleRequest
    from harness.errors import ConfigError

    teachers = [load_teacher(t) for t in CFG.teachers]
    pool = RayBackendPool("synthetic", model_specs(CFG, teachers), num_workers=1)

    def doomed():
        worker = pool._actor.remote(*pool._spec)
        os.kill(ray.get(worker.pid.remote()), signal.SIGKILL)
        return worker

    pool._start = doomed
    os.kill(pool.worker_pids()[0], signal.SIGKILL)
    with pytest.raises(ConfigError, match="3 workers died running the same requests"):
        pool.sample([SampleRequest(prefix=np.array([1]), n=1, seed=0, max_new_tokens=2)])
    assert pool.restarted == 2


@pytest.mark.parametrize("address, needle", [
    ("127.0.0.1:1", "ray_address 127.0.0.1:1: nothing answers there"),
    ("nonsense", "ray_address 'nonsense': expected HOST:PORT"),
])
def test_a_cluster_address_nothing_answers_at_is_one_line_at_once(address, needle):
    import time

    from harness.distributed import _init
    from harness.errors import ConfigError

    start = time.monotonic()
    with pytest.raises(ConfigError, match=needle):
        _init(ray, address)
    assert time.monotonic() - start < 10


def test_more_workers_than_gpus_is_refused_not_run_on_cpu(caplog):
    """A worker holds a whole GPU or none; Ray cannot give 3 workers 2, and giving none ran the run on CPU."""
    from harness.distributed import gpus_per_worker
    from harness.errors import ConfigError

    assert gpus_per_worker("hf", 2, 2.0, None, {}) == 1
    with pytest.raises(ConfigError, match=r"num_workers 3: this machine's local cluster has 2 GPUs .* at most 2, or set "
                                          r"device: cpu in student_args"):
        gpus_per_worker("hf", 3, 2.0, None, {})
    with pytest.raises(ConfigError, match="at most 1$"):
        gpus_per_worker("vllm", 2, 1.0, None, {})
    assert gpus_per_worker("hf", 3, 2.0, None, {"device": "cpu"}) == 0  # CPU workers asked for
    assert gpus_per_worker("synthetic", 3, 2.0, None, {}) == 0
    assert gpus_per_worker("hf", 3, 0.0, None, {}) == 0  # a CPU cluster
    with caplog.at_level("WARNING"):
        assert gpus_per_worker("hf", 3, 2.0, "10.0.0.1:6379", {}) == 1  # a remote cluster may add GPUs
    assert "unless the cluster scales up" in caplog.text


def test_a_worker_out_of_device_memory_or_refusing_its_input_is_the_one_line_error_not_a_bug(ray_cluster):
    """Ray re-raises a worker's error as a class of its own, ``RayTaskError(OutOfMemoryError)``, whose text
    starts with Ray's header: a device out of memory, or an input a worker refuses, is still the expected
    failure the command reports in one line (exit 2) with the worker's own words; a bug keeps Ray's error."""
    torch = pytest.importorskip("torch")
    from harness.errors import out_of_memory

    @ray.remote(num_cpus=1)
    def sample():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                                     "139.81 GiB")

    @ray.remote(num_cpus=1)
    def refused():
        raise ConfigError("student_args: unknown option 'batch'")

    @ray.remote(num_cpus=1)
    def broken():
        raise KeyError("a bug")

    with pytest.raises(Exception) as raised:
        ray.get(sample.remote())
    assert type(raised.value).__name__ != "OutOfMemoryError"
    assert out_of_memory(raised.value) == "the device ran out of memory (CUDA out of memory)"
    assert type(worker_error(raised.value)) is torch.OutOfMemoryError
    with pytest.raises(Exception) as raised:
        ray.get(refused.remote())
    own = worker_error(raised.value)
    assert type(own) is ConfigError and str(own) == "student_args: unknown option 'batch'"
    with pytest.raises(Exception) as raised:
        ray.get(broken.remote())
    assert worker_error(raised.value) is raised.value  # a bug keeps Ray's error, with the worker's traceback
