"""Divergences of full next-token distributions at Qwen3's vocabulary: all five at once against each alone.

The exact scorer computes kl, reverse_kl, js, tv and prob_cosine between the student's and a teacher's
distributions at every scored position, ``score_chunk`` (256) positions at a time, on the host in float64.
``all_divergences`` converts each input to float64 and exponentiates it once for all five, a block of
rows at a time; calling each divergence alone converts and exponentiates again for every one. Printed:
seconds per chunk of each, their ratio, and whether the values are identical.

    python bench/divergences.py            # 256 x 151,936 float32 log-probabilities, best of 3
    python bench/divergences.py --quick    # 64 rows, best of 2
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from harness.core.divergences import DIVERGENCES, all_divergences

VOCAB = 151_936  # Qwen3's output rows


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(axis=-1, keepdims=True))).astype(np.float32)


def best(fn, repeats: int) -> tuple[float, dict]:
    times, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return min(times), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 rows, best of 2")
    args = parser.parse_args()
    rows, repeats = (64, 2) if args.quick else (256, 3)
    rng = np.random.default_rng(0)
    student, teacher = (_log_softmax(rng.normal(scale=3.0, size=(rows, VOCAB))) for _ in range(2))
    alone_s, alone = best(lambda: {name: f(student, teacher) for name, f in DIVERGENCES.items()}, repeats)
    once_s, once = best(lambda: all_divergences(student, teacher), repeats)
    same = all(np.array_equal(alone[name], once[name]) for name in DIVERGENCES)
    print(f"{rows} x {VOCAB:,} float32 log-probabilities (best of {repeats}):")
    print(f"  each divergence alone  {alone_s:.2f} s")
    print(f"  all at once (odiag)    {once_s:.2f} s")
    print(f"speed-up: {alone_s / once_s:.2f}x; identical values: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
