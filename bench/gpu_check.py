"""GPU check of the hf or vllm backend on a student: the tiny Qwen3 toy student that travels with the
repository by default, or ``--student`` (the run's own, whose rate ``odiag plan --measurements`` reads).

For a few batch sizes: sampled tokens/s and rollouts/s with fan-out (requests of ``n`` completions
of one prefix), scored tokens/s (a teacher pass with the student as reference, full-vocabulary
divergences included), and the share of a whole ``odiag run``'s wall time spent outside the
backend. One table; a few minutes. Runs on CPU too (``--device cpu``), which is how it is tested.

    bash bench/gpu_check.sh            # on a CUDA machine
    python bench/gpu_check.py --device cpu --quick
    PYTHON=.venv-vllm/bin/python bash bench/gpu_check.sh --backend vllm   # the vLLM engine (its own venv)

``--backend vllm`` measures one engine (vLLM batches by itself) and scores through the exact scorer
the backend uses by default; ``--json FILE`` writes the rows, with the model and backend measured, for
``odiag plan --measurements`` (which refuses a file of another student or backend). A student other than
the toy scores against itself (a teacher pass of its own size).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampling import TOY, pipeline_overhead  # noqa: E402

from harness.backends import STUDENT, ModelSpec, SampleRequest, ScoreRequest  # noqa: E402
from harness.backends.hf import HFBackend  # noqa: E402
from harness.costplan import MEASURED_PROMPT_TOKENS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STUDENT_DIR = ROOT / "harness" / "toy_models" / "student"
TEACHER_DIR = ROOT / "harness" / "toy_models" / "teacher"


def _models(student: str, dtype: str | None = None) -> tuple[dict, str]:
    """The backend's models and the teacher's name: the toy teacher beside the toy student, else the student itself."""
    toy = Path(student).resolve() == STUDENT_DIR
    teacher = str(TEACHER_DIR) if toy else STUDENT
    models = {STUDENT: ModelSpec(student, dtype=dtype or "auto")}
    return (models | {teacher: ModelSpec(teacher, dtype=dtype or "auto")} if toy else models), teacher


def _prefixes(student: str, n: int, new: int, prefixes: int) -> list[SampleRequest]:
    rng = np.random.default_rng(0)  # ids 5-39: the toy tokenizer's digits and symbols, and in any larger vocabulary
    return [SampleRequest(rng.integers(5, 40, MEASURED_PROMPT_TOKENS), n, seed=i, max_new_tokens=new) for i in range(prefixes)]


def _score_requests(prefix: np.ndarray, paths: list[np.ndarray], teacher: str) -> list[ScoreRequest]:
    """A teacher pass and the student's reference pass over each path, as a run scores it. The teacher reads a
    context one token longer than the student's prompt (a teacher's context shows more): where the teacher is
    the student itself (a student other than the toy one), equal passes would be merged into one and the rate
    would count one pass as two."""
    context = np.concatenate([prefix[:1], prefix])
    return [ScoreRequest(context, p, teacher, reference_model=STUDENT, reference_context=prefix) for p in paths]


_LOADED: dict[tuple[str, str], HFBackend] = {}


def measure(device: str, batch_size: int, n: int, new: int, prefixes: int, student: str = str(STUDENT_DIR)) -> dict:
    models, teacher = _models(student)
    if (device, student) not in _LOADED:  # loaded once for every batch size
        _LOADED[device, student] = HFBackend(models, device=device)
    backend = _LOADED[device, student]
    backend.batch_size = batch_size
    requests = _prefixes(student, n, new, prefixes)
    # warm-up (CUDA kernels, allocator): a few tokens, not a whole completion of --new-tokens
    backend.sample([dataclasses.replace(requests[0], max_new_tokens=min(new, 16))])
    start = time.perf_counter()
    results = backend.sample(requests)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    sample_s = time.perf_counter() - start
    sampled = sum(len(t) for r in results for t in r.tokens)
    paths = [t for r in results[:4] for t in r.tokens[:8]]
    scores = _score_requests(requests[0].prefix, paths, teacher)
    backend.score(scores[:1])  # warm-up of the scoring path, as sampling's above
    start = time.perf_counter()
    backend.score(scores)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    score_s = time.perf_counter() - start
    return {
        "batch": batch_size, "sampled_tok_s": sampled / sample_s, "rollouts_s": n * prefixes / sample_s,
        "scored_tok_s": sum(len(p) for p in paths) / score_s,
    }


def divergence_placement(device: str, student: str = str(STUDENT_DIR)) -> tuple[float, float]:
    """Scored tokens/s of the same passes with the divergences computed on the device (what the scorer does off
    the CPU) and on the host in numpy (what it did): at Qwen3's vocabulary the host's float64 dominated."""
    import harness.backends.hf as hf
    from harness.core import all_divergences

    models, teacher = _models(student)
    backend = _LOADED.get((device, student)) or HFBackend(models, device=device)
    requests = _prefixes(student, 8, 64, 2)
    paths = [t for r in backend.sample(requests) for t in r.tokens]
    scores = _score_requests(requests[0].prefix, paths, teacher)
    rates, on_device = [], hf.device_divergences
    for divergences in (on_device, lambda a, b: all_divergences(a.cpu().numpy(), b.cpu().numpy())):
        hf.device_divergences = divergences
        try:
            backend.score(scores[:1])
            start = time.perf_counter()
            backend.score(scores)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            rates.append(sum(len(p) for p in paths) / (time.perf_counter() - start))
        finally:
            hf.device_divergences = on_device
    return rates[0], rates[1]


def measure_vllm(n: int, new: int, prefixes: int, student: str = str(STUDENT_DIR)) -> dict:
    """Sampled tokens/s and rollouts/s of one vLLM engine on the student; scored tokens/s of its
    exact scorer (transformers on the engine's device)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # read on CPU only
    from harness.backends.vllm import VLLMBackend

    toy = Path(student).resolve() == STUDENT_DIR
    models, teacher = _models(student, "float32" if toy else None)
    backend = VLLMBackend(models, max_model_len=max(512, 32 + new), gpu_memory_utilization=0.3)
    requests = _prefixes(student, n, new, prefixes)
    backend.sample([dataclasses.replace(requests[0], max_new_tokens=min(new, 16))])  # warm-up: the engine starts here
    start = time.perf_counter()
    results = backend.sample(requests)
    sample_s = time.perf_counter() - start
    sampled = sum(len(t) for r in results for t in r.tokens)
    paths = [t for r in results[:4] for t in r.tokens[:8]]
    scores = _score_requests(requests[0].prefix, paths, teacher)
    backend.score(scores[:1])  # the scorer loads here
    start = time.perf_counter()
    backend.score(scores)
    score_s = time.perf_counter() - start
    return {"batch": "engine", "sampled_tok_s": sampled / sample_s, "rollouts_s": n * prefixes / sample_s,
            "scored_tok_s": sum(len(p) for p in paths) / score_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="two batch sizes, fewer prefixes")
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf", help="backend to measure (default hf)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON (odiag plan --measurements)")
    parser.add_argument("--student", default=str(STUDENT_DIR), metavar="MODEL",
                        help="the student to measure, as the run names it (default the toy student)")
    parser.add_argument("--new-tokens", type=int, default=64, metavar="N",
                        help="tokens per completion (default 64; a run's response length measures its rate at length)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads on cpu (default torch's)")
    args = parser.parse_args()
    if args.new_tokens < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--new-tokens and --threads take a whole number >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    # before minutes of device time, not after: a device torch cannot use, vLLM missing, a --json it cannot write
    if args.device != "cpu" and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        parser.error(f"--device {args.device}: torch here runs on cpu{' or cuda' if torch.cuda.is_available() else ''} only")
    if args.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        parser.error("--backend vllm: vllm is not installed in this environment (make install-vllm; .venv-vllm/bin/python)")
    if args.json and (Path(args.json).is_dir() or not (Path(args.json).parent.is_dir() and os.access(Path(args.json).parent, os.W_OK))):
        parser.error(f"--json {args.json}: is a folder, or its folder does not exist or cannot be written; give a file")
    from harness.modelfiles import is_local_path

    if (is_local_path(args.student) or Path(args.student).exists()) and not Path(args.student).expanduser().is_dir():
        parser.error(f"--student {args.student}: no such model folder")
    batches = [16, 64] if args.quick else [16, 64, 256, 1024]
    prefixes = 4 if args.quick else 16
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device {args.device} ({name}), torch {torch.__version__}, student {args.student}, backend {args.backend}")
    print(f"{'batch':>6} {'sampled tok/s':>14} {'rollouts/s':>11} {'scored tok/s':>13}", flush=True)
    rows = []
    n = max(16, min(100, 6400 // args.new_tokens))  # completions per prompt: fewer at length, so a row fits the time limit
    for b in ["engine"] if args.backend == "vllm" else batches:  # each row as it is measured: a stopped check keeps them
        r = (measure_vllm(n, args.new_tokens, prefixes, args.student) if b == "engine"
             else measure(args.device, b, n, args.new_tokens, prefixes, args.student))
        rows.append(r)
        print(f"{r['batch']:>6} {r['sampled_tok_s']:>14,.0f} {r['rollouts_s']:>11,.0f} {r['scored_tok_s']:>13,.0f}", flush=True)
        if args.json:  # after every row: a check stopped at its time limit leaves the rows it measured
            record = {"device": name, "backend": args.backend, "model": args.student, "new_tokens": args.new_tokens,
                      "rows": rows}
            Path(args.json).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if args.backend == "hf" and args.device != "cpu":  # on the CPU the scorer keeps them on the host
        device_rate, host_rate = divergence_placement(args.device, args.student)
        print(f"scoring with the divergences on the device: {device_rate:,.0f} scored tok/s; on the host (numpy): "
              f"{host_rate:,.0f} ({device_rate / host_rate:.1f}x)", flush=True)
    if args.backend == "vllm" or Path(args.student).resolve() != STUDENT_DIR:  # the run's overhead: on the toy task
        return
    overhead = pipeline_overhead([*TOY, "limit=4" if args.quick else "limit=16"], device=args.device)
    print(
        f"odiag run on odiag_toy: wall {overhead['wall']:.1f} s, backend {overhead['inside']:.1f} s, "
        f"outside the backend {overhead['outside_share']:.1%}, {overhead['rollouts']} rollouts "
        f"({overhead['rollouts'] / overhead['wall']:,.0f} rollouts/s end to end)"
    )


if __name__ == "__main__":
    main()
