"""Ingest throughput and memory of the tree statistics on an AIME-sized case (SPEC §2, §6).

Full size: 4 tracked paths of 30,000 tokens, 200,000 targeted rollouts whose forced lengths are
spread over the paths, responses of 5,000-25,000 tokens (about 3 billion response tokens). Rollouts
arrive in batches, as they would from a sampler, and are dropped after ingest. Printed: response
tokens ingested per second, rollouts per second, peak resident memory, and the speed ratio against a
straightforward dict-of-dicts trie on a size that trie can hold (both on one core, one run).

    python bench/ingest.py            # full size
    python bench/ingest.py --quick    # a tenth of the rollouts
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from harness.cli import at_least  # noqa: E402
from harness.core import Rollouts, TreeStats  # noqa: E402

VOCAB = 151_936  # Qwen3's vocabulary


def make_paths(rng, n_paths: int, length: int) -> list[np.ndarray]:
    """Paths that share a common opening, as rollouts of one question do."""
    base = rng.integers(0, VOCAB, length)
    paths = []
    for j in range(n_paths):
        p = rng.integers(0, VOCAB, length)
        shared = int(rng.integers(5, 200))
        p[:shared] = base[:shared]
        paths.append(p)
    return paths


def make_batch(rng, paths, size: int, min_len: int, max_len: int, noise: np.ndarray) -> Rollouts:
    """Targeted rollouts: forced at a random depth of a random path, then on-policy.

    The continuation follows the path for a geometric number of tokens (a sampled response keeps
    agreeing with a likely path for a while), then leaves it and runs on to its full length.
    """
    target = rng.integers(0, len(paths), size)
    length = len(paths[0])
    # depths spread over the exponential windows [0,50), [50,150), ... as the targeting does
    forced = np.minimum((np.exp(rng.uniform(0, np.log(length), size))).astype(np.int64), length - 1) + 1
    on_path = rng.random(size) < 0.5
    forced_token = np.where(on_path, [paths[t][f - 1] for t, f in zip(target, forced)], rng.integers(0, VOCAB, size))
    total = rng.integers(min_len, max_len, size)
    cont_len = np.maximum(total - forced, 1)
    follow = np.minimum(rng.geometric(0.05, size), cont_len - 1) * on_path
    offsets = np.zeros(size + 1, dtype=np.int64)
    np.cumsum(cont_len, out=offsets[1:])
    tokens = np.empty(offsets[-1], dtype=np.int32)
    starts = rng.integers(0, len(noise) - max_len, size)
    for i in range(size):
        o, f, k = offsets[i], forced[i], follow[i]
        tokens[o : o + k] = paths[target[i]][f : f + k]
        rest = cont_len[i] - k
        tokens[o + k : o + k + rest] = noise[starts[i] : starts[i] + rest]
    return Rollouts(
        tokens=tokens,
        offsets=offsets,
        reward=rng.integers(0, 2, size),
        forced_len=forced,
        target_path=target,
        forced_token=forced_token.astype(np.int64),
    )


def response_tokens(batch: Rollouts) -> int:
    return int(np.diff(batch.offsets).sum() + batch.forced_len.sum())


def run_tree(paths, batches) -> tuple[float, int, TreeStats]:
    tree = TreeStats(paths)
    tokens = 0
    elapsed = 0.0
    for batch in batches:
        tokens += response_tokens(batch)
        t0 = time.perf_counter()
        tree.ingest(batch)
        elapsed += time.perf_counter() - t0
    return elapsed, tokens, tree


def run_trie(paths, batches) -> tuple[float, int, dict]:
    """The naive structure: every response walked token by token into nested dicts."""
    root: dict = {}
    tokens = 0
    t0 = time.perf_counter()
    for b in batches:
        for i in range(len(b)):
            f = int(b.forced_len[i])
            prefix = list(paths[b.target_path[i]][: f - 1]) + [int(b.forced_token[i])]
            y = prefix + b.tokens[b.offsets[i] : b.offsets[i + 1]].tolist()
            r = int(b.reward[i])
            node = root
            for k, a in enumerate(y):
                child = node.setdefault(a, [0, 0, {}])
                if f <= k + 1:
                    child[0] += 1
                    child[1] += r
                node = child[2]
            tokens += len(y)
    return time.perf_counter() - t0, tokens, root


def trie_on_path_counts(root: dict, path: np.ndarray) -> np.ndarray:
    out, node = [], root
    for a in path:
        if a not in node:
            break
        out.append(node[a][0])
        node = node[a][2]
    return np.array(out + [0] * (len(path) - len(out)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of the rollouts")
    parser.add_argument("--seed", type=at_least(0), default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    noise = rng.integers(0, VOCAB, 2_000_000).astype(np.int32)

    # 1. the AIME-sized case, streamed in batches; its peak memory is read before the trie below exists
    n_rollouts = 20_000 if args.quick else 200_000
    batch_size = 1_000
    paths = make_paths(rng, 4, 30_000)
    tree = TreeStats(paths)
    tokens, elapsed = 0, 0.0
    for _ in range(n_rollouts // batch_size):
        batch = make_batch(rng, paths, batch_size, 5_000, 25_000, noise)
        tokens += response_tokens(batch)
        t0 = time.perf_counter()
        tree.ingest(batch)
        elapsed += time.perf_counter() - t0
        del batch
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = sum(len(tree.children(j).n) for j in range(len(paths)))
    del tree

    # 2. the speed ratio on a size the naive trie can hold
    n_small, small_batch = 4, 500
    small_paths = make_paths(rng, 4, 2_000)
    small = [make_batch(rng, small_paths, small_batch, 200, 1_500, noise) for _ in range(n_small)]
    t_tree, tok_small, small_tree = run_tree(small_paths, small)
    t_trie, tok_trie, trie = run_trie(small_paths, small)
    assert tok_small == tok_trie
    for j, p in enumerate(small_paths):  # the two agree on every on-path count
        np.testing.assert_array_equal(small_tree.on_path_counts(j)[:, 0], trie_on_path_counts(trie, p))
    small_rollouts = n_small * small_batch

    print(f"{'case':<44} {'tokens':>14} {'seconds':>8} {'tokens/s':>14} {'rollouts/s':>11}")
    print(f"{'small: TreeStats':<44} {tok_small:>14,} {t_tree:>8.3f} {tok_small / t_tree:>14,.0f} {small_rollouts / t_tree:>11,.0f}")
    print(f"{'small: dict-of-dicts trie':<44} {tok_trie:>14,} {t_trie:>8.3f} {tok_trie / t_trie:>14,.0f} {small_rollouts / t_trie:>11,.0f}")
    label = f"AIME-sized: 4 x 30,000-token paths, {n_rollouts:,} rollouts"
    print(f"{label:<44} {tokens:>14,} {elapsed:>8.3f} {tokens / elapsed:>14,.0f} {n_rollouts / elapsed:>11,.0f}")
    print(f"\nspeed ratio TreeStats / trie (small case): {t_trie / t_tree:.1f}x")
    print(f"distinct children tracked (AIME-sized): {children:,}; peak resident memory of the AIME-sized ingest: "
          f"{peak_mb:,.0f} MB (the process so far: interpreter, batch generation included)")


if __name__ == "__main__":
    main()
