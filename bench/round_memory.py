"""Peak memory of targeted rounds: bounded backend calls and chunked scoring against one call per round.

A round of the targeted phase asks for every active question's rollouts. Sampled in one backend call
and held until the round is stored, all their tokens live at once; odiag samples a round in calls of at
most ``CALL_ROLLOUTS`` rollouts and about ``CALL_TOKENS`` tokens, and keeps only each rollout's exits
(``SCORE_CHUNK_TOKENS`` tokens are scored at a time). Both runs use the exact synthetic backend, the
same config and seed, each in a process of its own; printed: peak resident memory, wall time, and their
ratios, the sampling calls each made, and whether the two runs' results are identical.

    python bench/round_memory.py            # 8 questions, n_target 30,000 (about 8.7 M rollouts)
    python bench/round_memory.py --quick    # 8 questions, n_target 5,000, calls bounded 8x lower

A quick round (about a million rollouts) fits in one call of the default bound, so ``--quick`` bounds
calls at an eighth of it (``CALL_ROLLOUTS`` 2^17, ``CALL_TOKENS`` 2^23): the split is then exercised, and
the line ``rounds split into bounded calls`` says whether the bounded run made more calls than the other.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.cli import at_least

CHILD = """
import json, resource, sys, time
import harness.targeted as targeted
from harness.config import RunConfig
from harness.pipeline import run
from harness.backends.exact import SyntheticBackend
n_target, limit, out, one_call, shrink = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
if one_call:  # one backend call per round, the whole round held until it is stored
    targeted.CALL_ROLLOUTS = targeted.CALL_TOKENS = targeted.SCORE_CHUNK_TOKENS = float("inf")
else:
    targeted.CALL_ROLLOUTS //= shrink
    targeted.CALL_TOKENS //= shrink
calls, sample = [], SyntheticBackend.sample


def counted(self, requests, on_done=None):
    calls.append(sum(r.n for r in requests))
    return sample(self, requests, on_done)


SyntheticBackend.sample = counted
started = time.perf_counter()
results = run(RunConfig(limit=limit, n_target=n_target), out)
print(json.dumps({"seconds": time.perf_counter() - started, "rollouts": results["counts"]["rollouts"],
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "calls": len(calls),
                  "largest_call": max(calls, default=0)}))
"""


def measure(n_target: int, limit: int, out: Path, one_call: bool, shrink: int = 1) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(n_target), str(limit), str(out), "1" if one_call else "0",
                           str(shrink)], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def results_without_time(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    results.pop("created_at")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="n_target 5,000 instead of 30,000, calls bounded 8x lower")
    parser.add_argument("--questions", type=at_least(1), default=8)
    args = parser.parse_args()
    n_target = 5_000 if args.quick else 30_000
    with tempfile.TemporaryDirectory() as tmp:
        one = measure(n_target, args.questions, Path(tmp) / "one", one_call=True)
        bounded = measure(n_target, args.questions, Path(tmp) / "bounded", one_call=False, shrink=8 if args.quick else 1)
        same = results_without_time(Path(tmp) / "one") == results_without_time(Path(tmp) / "bounded")
    print(f"{args.questions} questions, n_target {n_target:,}: {bounded['rollouts']:,} rollouts")
    bound = "bounded calls (1/8 bound)" if args.quick else "bounded calls (default)"
    for name, m in (("one call per round", one), (bound, bounded)):
        print(f"  {name:<26} peak {m['peak_mb']:>7,.0f} MB  {m['seconds']:>6.1f} s  {m['calls']:>4} sampling calls, "
              f"the largest {m['largest_call']:,} rollouts")
    print(f"rounds split into bounded calls: {'yes' if bounded['calls'] > one['calls'] else 'NO (nothing below measures the bound)'}")
    print(f"results identical: {'yes' if same else 'NO'}")
    print(f"peak memory ratio (one call / bounded): {one['peak_mb'] / bounded['peak_mb']:.2f}x, "
          f"time ratio (bounded / one call): {bounded['seconds'] / one['seconds']:.2f}x")


if __name__ == "__main__":
    main()
