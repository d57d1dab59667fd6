"""The forward passes over the paths held in memory: all of them against none, each read back from its shard.

A run stores every pass as its scoring call returns and holds at most ``HELD_PASS_BYTES`` of them; a phase
reads the others back from their shards. Both runs use the exact synthetic backend, the same config and seed,
each in a process of its own: one holds every pass (the default bound is far above them), the other none, so
that every pass a phase asks for again is read back. Printed: wall time and its ratio, the most pass bytes
each held, the passes read back, and whether the two runs' results are identical.

    python bench/pass_memory.py            # 200 questions
    python bench/pass_memory.py --quick    # 40 questions
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
import json, sys, time
import harness.rundir as rundir
from harness.config import RunConfig
from harness.pipeline import run
limit, out, held = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if held != "default":
    rundir.HELD_PASS_BYTES = int(held)
put, get, most, reads = rundir.PassCache.put, rundir.PassCache.get, [0], [0]


def counted_put(self, question, name, res):
    put(self, question, name, res)
    most[0] = max(most[0], self._bytes)


def counted_get(self, question, name):
    res = get(self, question, name)
    reads[0] = self.reads
    return res


rundir.PassCache.put, rundir.PassCache.get = counted_put, counted_get
started = time.perf_counter()
run(RunConfig(limit=limit), out)
print(json.dumps({"seconds": time.perf_counter() - started, "held_bytes": most[0], "read_back": reads[0]}))
"""


def measure(limit: int, out: Path, held: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(limit), str(out), held], check=True, capture_output=True,
                          text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _results(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    results.pop("created_at")
    results["counts"].pop("forward_passes_this_invocation")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=at_least(1), default=200)
    parser.add_argument("--quick", action="store_true", help="40 questions")
    args = parser.parse_args(argv)
    limit = 40 if args.quick else args.questions
    with tempfile.TemporaryDirectory() as tmp:
        every = measure(limit, Path(tmp) / "every", "default")
        none = measure(limit, Path(tmp) / "none", "0")
        same = _results(Path(tmp) / "every") == _results(Path(tmp) / "none")
    print(f"synthetic backend, {limit} questions")
    for name, m in (("every pass held", every), ("no pass held", none)):
        print(f"{name:<16} {m['seconds']:7.2f} s  held at most {m['held_bytes'] / 2**20:8.3f} MiB  "
              f"passes read back {m['read_back']:,}")
    print(f"time no pass held / every pass held: {none['seconds'] / every['seconds']:.2f}x; "
          f"identical results: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
