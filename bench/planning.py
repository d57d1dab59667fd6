"""What a targeted round reads of the forward passes to plan: its window's positions against the whole path.

A round plans one depth window, from what the passes over each path say about the tokens at its positions
(`harness.targeted._scored_tokens`: the student's and every planning teacher's log-probabilities, merged by
position and token). Built over the whole path each round, as odiag did, a path of an AIME-length trace
cost every round the whole path's merge; built over the window, a path costs about one merge over all of its
windows together. Passes here are random, of Qwen3's vocabulary (151,936 ids), ``score_top_k`` 64 (65 ids
per position in the student's pass, 129 in each teacher's), over one path cut in the pipeline's windows.
Printed: the seconds for one round per window each way, the most scored tokens one round holds each way,
their ratios, and whether the window's rows are the whole path's rows in it.

    python bench/planning.py            # a path of 30,000 positions, 2 planning teachers
    python bench/planning.py --quick    # 6,000 positions
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import numpy as np

from harness.backends import STUDENT, ScoreResult
from harness.cli import at_least
from harness.questions import Passes, windows
from harness.targeted import _scored_tokens

VOCAB = 151_936
WIDTH = 15  # the first window's width: 30,000 positions make 11 windows, AIME's


def _pass(rng: np.random.Generator, positions: int, k: int, teacher: bool) -> ScoreResult:
    ids = np.sort(rng.choice(VOCAB, size=(positions, k)), axis=1).astype(np.int64).reshape(-1)
    logprobs = rng.normal(-5, 1, positions * k).astype(np.float32)
    return ScoreResult(ids=ids, offsets=np.arange(positions + 1, dtype=np.int64) * k, logprobs=logprobs,
                       reference_logprobs=logprobs.copy() if teacher else None,
                       divergences={"reverse_kl": rng.random(positions)} if teacher else None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=at_least(1), default=30_000)
    parser.add_argument("--teachers", type=at_least(1), default=2)
    parser.add_argument("--quick", action="store_true", help="6,000 positions")
    args = parser.parse_args(argv)
    positions = 6_000 if args.quick else args.positions
    rng = np.random.default_rng(0)
    planners = [SimpleNamespace(name=f"teacher{i}") for i in range(args.teachers)]
    scores = Passes()
    scores[(0, STUDENT)] = _pass(rng, positions, 65, False)
    for t in planners:
        scores[(0, t.name)] = _pass(rng, positions, 129, True)
    state = SimpleNamespace(scores=scores, fills=Passes())
    spans = windows(positions, WIDTH)

    started = time.perf_counter()
    whole = _scored_tokens(state, 0, planners, (0, positions))  # what every round built before
    whole_s = time.perf_counter() - started
    window_s, most, same = 0.0, 0, True
    for lo, hi in spans:
        started = time.perf_counter()
        part = _scored_tokens(state, 0, planners, (lo, hi))
        window_s += time.perf_counter() - started
        most = max(most, len(part.position_S))
        inside = (whole.position_S >= lo) & (whole.position_S < hi)
        same &= all(np.array_equal(a[inside], b, equal_nan=True) for a, b in zip(
            (whole.position_S, whole.token_S, whole.pi_S, whole.pi_teacher_S_T, whole.reverse_kl_S_T),
            (part.position_S, part.token_S, part.pi_S, part.pi_teacher_S_T, part.reverse_kl_S_T), strict=True))
    rounds = len(spans)
    print(f"one path of {positions:,} positions, {len(planners)} planning teachers, {rounds} windows, one round each")
    print(f"whole path every round: {whole_s * rounds:8.2f} s  ({whole_s:.2f} s a round), "
          f"{len(whole.position_S):,} scored tokens a round")
    print(f"the round's window:     {window_s:8.2f} s  (all {rounds} windows), at most {most:,} scored tokens a round")
    print(f"time whole path / window: {whole_s * rounds / window_s:.1f}x; scored tokens held: "
          f"{len(whole.position_S) / most:.1f}x; the window's rows are the whole path's: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
