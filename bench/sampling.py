"""Fan-out sampling of the hf backend against naive repeated-prompt sampling (SPEC §4, step 4).

A targeted rollout batch is ``n`` completions of one prefix. The hf backend runs the prefix once and
repeats its KV cache for the ``n`` completions; the naive way runs the prefix ``n`` times. Measured
on a small random Qwen3 (4 layers, hidden 256, vocabulary 4,096) on CPU, every rollout exactly
``new`` tokens long (no stop ids), all in one run, each timing the best of ``--repeats``:

- ``fan-out``: ``HFBackend.sample`` with one request of ``n`` completions;
- ``naive``: the same sampler with ``n`` requests of one completion each (the prefix run n times);
- ``generate``: ``model.generate`` on the prompt repeated ``n`` times, with ``top_k=0`` so that it
  draws from the same untruncated distribution.

    python bench/sampling.py              # prefixes of 32, 256 and 1,024 tokens
    python bench/sampling.py --quick      # 32 and 256

Then the pipeline's own overhead: one ``odiag run`` on the synthetic backend and one on the toy task
with the tiny Qwen3 student (``harness/toy_models``), timing every ``sample``/``score`` call; printed
is the share of wall time spent outside them (task scoring, tree statistics, planning, I/O).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from harness.backends import STUDENT, ModelSpec, SampleRequest
from harness.cli import at_least
from harness.backends.hf import HFBackend

VOCAB = 4096


def tiny_model(path: str) -> str:
    config = transformers.Qwen3Config(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=4, head_dim=32, max_position_embeddings=4096, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    transformers.Qwen3ForCausalLM(config).save_pretrained(path)
    return path


def _timed(fn, repeats: int) -> float:
    """The best of ``repeats`` wall-clock times: the least disturbed by other work on the machine."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def sampling_comparison(
    path: str, prefix_lengths: list[int], n: int, new: int, temperature: float, repeats: int
) -> list[dict]:
    """Rollouts per second of fan-out, naive and ``generate`` sampling, one row per prefix length."""
    backend = HFBackend({STUDENT: ModelSpec(path)}, batch_size=n)
    model = backend._models[STUDENT].model
    rng = np.random.default_rng(0)
    rows = []
    for length in prefix_lengths:
        prefix = rng.integers(0, VOCAB, length)
        fan_out = [SampleRequest(prefix, n, seed=1, max_new_tokens=new, temperature=temperature)]
        naive = [SampleRequest(prefix, 1, seed=1 + i, max_new_tokens=new, temperature=temperature) for i in range(n)]
        prompts = torch.as_tensor(prefix)[None].repeat(n, 1)

        def generate():
            with torch.inference_mode():
                model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, top_k=0, top_p=1.0,
                               temperature=temperature, max_new_tokens=new, min_new_tokens=new, pad_token_id=0)

        backend.sample(fan_out[:1])  # warm-up, one of each method: no method pays a first call's cost
        backend.sample(naive[:1])
        with torch.inference_mode():
            model.generate(prompts[:1], attention_mask=torch.ones_like(prompts[:1]), do_sample=True, top_k=0,
                           temperature=temperature, max_new_tokens=2, min_new_tokens=2, pad_token_id=0)
        seconds = {
            "fan-out": _timed(lambda: backend.sample(fan_out), repeats),
            "naive": _timed(lambda: backend.sample(naive), repeats),
            "generate": _timed(generate, repeats),
        }
        rows.append({"prefix": length, **{k: n / v for k, v in seconds.items()}})
    return rows


class TimedBackend:
    """Wraps a backend and adds up the wall time spent inside its ``sample`` and ``score`` calls."""

    def __init__(self, inner):
        self.inner = inner
        self.seconds = {"sample": 0.0, "score": 0.0}
        self.tokens = {"sample": 0, "score": 0}

    def sample(self, requests):
        start = time.perf_counter()
        out = self.inner.sample(requests)
        self.seconds["sample"] += time.perf_counter() - start
        self.tokens["sample"] += sum(len(t) for r in out for t in r.tokens)
        return out

    def score(self, requests):
        start = time.perf_counter()
        out = self.inner.score(requests)
        self.seconds["score"] += time.perf_counter() - start
        self.tokens["score"] += sum(len(r.response) for r in requests)
        return out

    def describe(self):
        return self.inner.describe()


def pipeline_overhead(overrides: list[str], **backend_options) -> dict:
    """One ``odiag run`` in a fresh directory: wall time, time inside the backend, and the share outside it."""
    from harness.backends import load_backend
    from harness.config import resolve_run_config
    from harness.pipeline import model_specs, run, run_task
    from harness.teachers import load_teacher

    start = time.perf_counter()
    cfg = resolve_run_config(None, overrides)
    teachers = [load_teacher(t) for t in cfg.teachers]
    backend = TimedBackend(load_backend(cfg.backend, model_specs(cfg, teachers), **backend_options))
    task = run_task(cfg)  # start-up (imports, models, lm-eval task, tokenizer) is timed apart: paid once per run
    startup = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        results = run(cfg, out, backend=backend, task=task)
        wall = time.perf_counter() - start
    inside = sum(backend.seconds.values())
    return {
        "startup": startup, "wall": wall, "inside": inside, "outside_share": 1 - inside / wall,
        "rollouts": results["counts"]["rollouts"],
        "sampled_tokens": backend.tokens["sample"], "scored_tokens": backend.tokens["score"], **backend.seconds,
    }


TOY = [
    "task=odiag_toy", "backend=hf", f"student={Path(__file__).resolve().parent.parent / 'harness/toy_models/student'}",
    "dtype=float32", "teachers=[toy-teacher,toy-self-1c]",
]


def print_overhead(rows: dict[str, dict]) -> None:
    print("\npipeline overhead (share of run() wall time outside the backend's sample/score calls;"
          " start-up before run() apart):")
    print(f"{'run':<34} {'start-up s':>10} {'wall s':>8} {'backend s':>10} {'outside':>8} {'rollouts':>9} {'rollouts/s':>11}")
    for name, r in rows.items():
        print(f"{name:<34} {r['startup']:>10.2f} {r['wall']:>8.2f} {r['inside']:>10.2f} {r['outside_share']:>7.1%} "
              f"{r['rollouts']:>9} {r['rollouts'] / r['wall']:>11.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="prefixes of 32 and 256 tokens only, and pipeline runs of 4 questions (8 without)")
    parser.add_argument("--n", type=at_least(1), default=64, help="completions per prefix")
    parser.add_argument("--new", type=at_least(1), default=32, help="tokens per completion")
    parser.add_argument("--threads", type=at_least(1), default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=at_least(1), default=3, help="timings per method; the best is kept")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    lengths = [32, 256] if args.quick else [32, 256, 1024]
    with tempfile.TemporaryDirectory() as tmp:
        rows = sampling_comparison(tiny_model(tmp), lengths, args.n, args.new, 1.0, args.repeats)
    print(f"{args.n} completions of {args.new} tokens per prefix, {args.threads} thread(s), "
          f"best of {args.repeats}; rollouts/s:")
    print(f"{'prefix':>7} {'fan-out':>9} {'naive':>9} {'generate':>9} {'fan-out/naive':>14} {'fan-out/generate':>17}")
    for r in rows:
        print(f"{r['prefix']:>7} {r['fan-out']:>9.1f} {r['naive']:>9.1f} {r['generate']:>9.1f} "
              f"{r['fan-out'] / r['naive']:>13.2f}x {r['fan-out'] / r['generate']:>16.2f}x")
    limit = "limit=4" if args.quick else "limit=8"
    print_overhead({
        f"synthetic, {limit}": pipeline_overhead([limit]),
        f"toy hf (tiny Qwen3), {limit}": pipeline_overhead([*TOY, limit], threads=args.threads),
    })


if __name__ == "__main__":
    main()
