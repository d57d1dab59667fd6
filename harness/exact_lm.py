"""An exact synthetic language model: ground truth for every estimate (SPEC §7).

The next-token distribution is a deterministic function of a small hidden state and the depth:
``logits[t, state]``; the state moves by a fixed table ``transition[state, token]``. Token 0 is
EOS: it ends the response with reward ``success[state]``. A response that reaches ``horizon``
tokens without EOS is truncated and scores 0, as a real task does at ``max_new_tokens``. Because
the future depends on the prefix only through ``(depth, state)``, ``Q(s, a)`` is computed exactly by
backward induction over ``horizon x n_states`` cells rather than over the exponential tree.

Two synthetic teachers share the student's support: ``helpful`` tilts the student's logits toward
tokens with higher exact ``Q``, ``misleading`` away from them; both add a fixed random perturbation
so that their disagreement with the student is not a pure function of ``Q``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from harness.seeds import derive_seed

EOS = 0
TEACHERS = ("helpful", "misleading")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclasses.dataclass(frozen=True)
class SyntheticLM:
    """One synthetic 'question': a student, its exact Q, two teachers and a sampler."""

    seed: int = 0  # the question: all tables are drawn from it
    vocab_size: int = 6  # token ids 0..V-1, 0 is EOS
    n_states: int = 8  # hidden states; the reward depends on the state at EOS
    horizon: int = 10  # responses longer than this are truncated (reward 0)
    sharpness: float = 1.5  # scale of the student's logits: larger means fewer branching points
    teacher_strength: float = 4.0  # how hard the teachers tilt toward (or away from) high-Q tokens
    eos_offset: float = 0.0  # added to the EOS logit at every depth: negative values make traces longer

    @functools.cached_property
    def _tables(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(derive_seed("synthetic", self.seed, self.vocab_size, self.n_states))
        logits = self.sharpness * rng.standard_normal((self.horizon, self.n_states, self.vocab_size))
        # EOS grows likelier with depth so most responses end before the horizon, some do not
        logits[:, :, EOS] += np.linspace(-2.5, 1.5, self.horizon)[:, None] + self.eos_offset
        transition = rng.integers(0, self.n_states, (self.n_states, self.vocab_size))
        success = rng.random(self.n_states) < 0.5
        success[0] = True  # at least one winning state, so every question is solvable
        noise = {t: rng.standard_normal((self.horizon, self.n_states, self.vocab_size)) for t in TEACHERS}
        return {"logits": logits, "transition": transition, "success": success, **{f"noise_{t}": n for t, n in noise.items()}}

    @functools.cached_property
    def logp(self) -> np.ndarray:
        """``[horizon, n_states, V]`` student log-probabilities (the sampling distribution)."""
        return _log_softmax(self._tables["logits"])

    @functools.cached_property
    def exact_q(self) -> np.ndarray:
        """``Q[t, state, a]``, the exact success probability after choosing ``a`` (backward induction)."""
        tab = self._tables
        pi = np.exp(self.logp)
        q = np.zeros((self.horizon, self.n_states, self.vocab_size))
        value_next = np.zeros(self.n_states)  # V at depth horizon: truncated, reward 0
        for t in range(self.horizon - 1, -1, -1):
            q[t] = value_next[tab["transition"]]
            q[t, :, EOS] = tab["success"]
            value_next = (pi[t] * q[t]).sum(axis=-1)
        return q

    def teacher_logp(self, name: str) -> np.ndarray:
        """``[horizon, n_states, V]`` log-probabilities of teacher ``helpful`` or ``misleading``."""
        if name not in TEACHERS:
            raise ValueError(f"unknown synthetic teacher {name!r}; choose one of {TEACHERS}")
        sign = 1.0 if name == "helpful" else -1.0
        q = self.exact_q
        centred = q - q.mean(axis=-1, keepdims=True)
        tilt = sign * self.teacher_strength * centred + 0.7 * self._tables[f"noise_{name}"]
        return _log_softmax(self._tables["logits"] + tilt)

    def states(self, prefix: Sequence[int]) -> np.ndarray:
        """Hidden state before each token of ``prefix`` and after the last: ``[len(prefix) + 1]``."""
        out = np.zeros(len(prefix) + 1, dtype=np.int64)
        for t, a in enumerate(prefix):
            out[t + 1] = self._tables["transition"][out[t], a]
        return out

    def reward(self, response: Sequence[int]) -> int:
        """1 iff the response ends with EOS in a winning state; truncated responses score 0."""
        if len(response) == 0 or response[-1] != EOS:
            return 0
        return int(self._tables["success"][self.states(response[:-1])[-1]])

    def rewards(self, responses: Sequence[np.ndarray]) -> np.ndarray:
        """``reward`` of many responses at once: states advanced depth by depth over a padded batch."""
        lengths = np.array([len(r) for r in responses], dtype=np.int64)
        width = int(lengths.max(initial=0))
        padded = np.zeros((len(responses), width), dtype=np.int64)
        for i, r in enumerate(responses):
            padded[i, : len(r)] = r
        state = np.zeros(len(responses), dtype=np.int64)
        for t in range(max(width - 1, 0)):
            live = t < lengths - 1  # every token but the final EOS moves the state
            state = np.where(live, self._tables["transition"][state, padded[:, t]], state)
        last = padded[np.arange(len(responses)), np.maximum(lengths - 1, 0)]
        ended = (lengths > 0) & (last == EOS)
        return (ended & self._tables["success"][state]).astype(np.int64)

    def sample(self, prefix: Sequence[int], n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """``n`` continuations of ``prefix``: (token arrays, rewards, truncated flags).

        All ``n`` are advanced together, one inverse-CDF draw per step from ``default_rng(seed)``.
        """
        rng = np.random.default_rng(seed)
        tab = self._tables
        if len(prefix) and prefix[-1] == EOS:  # a forced EOS child: the response is already over
            win = tab["success"][self.states(prefix[:-1])[-1]]
            return [np.zeros(0, np.int64)] * n, np.full(n, int(win)), np.zeros(n, dtype=bool)
        cdf = np.cumsum(np.exp(self.logp), axis=-1)
        start = len(prefix)
        state = np.full(n, self.states(prefix)[-1], dtype=np.int64)
        steps = max(self.horizon - start, 0)
        tokens = np.full((n, steps), -1, dtype=np.int64)
        alive = np.ones(n, dtype=bool)
        for s in range(steps):
            u = rng.random(n)
            a = (u[:, None] > cdf[start + s, state]).sum(axis=1).clip(max=self.vocab_size - 1)
            tokens[alive, s] = a[alive]
            state = np.where(alive & (a != EOS), tab["transition"][state, a], state)
            alive &= a != EOS
        lengths = (tokens >= 0).sum(axis=1)
        ended = ~alive  # EOS was sampled; the rest ran into the horizon and are truncated
        reward = np.where(ended, tab["success"][state], False).astype(np.int64)
        return [tokens[i, : lengths[i]] for i in range(n)], reward, alive
