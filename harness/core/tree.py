"""Prefix-tree statistics along tracked paths (SPEC §2, §6).

A rollout is a response ``y`` (token ids), a binary reward ``r`` and a forced length ``F``: the
number of leading response tokens that were given rather than sampled. Against every tracked path
``p`` the only facts the statistics need are where ``y`` first leaves ``p`` (the longest common
prefix ``L``) and the token it took there (the *exit*). From ``(F, L, exit, r)``:

* on-path children ``(p[:k], p[k])`` for ``k < L`` and the exit child ``(p[:L], y[L])`` are visited;
* ``n, w`` count a visit at depth ``k`` when ``F <= k + 1`` (the continuation after the child was
  sampled, so the outcome is an unbiased draw of ``Q``); ``cascade="paper"`` counts every visit,
  which is biased (SPEC §2) and kept only to reproduce the paper;
* ``m`` and its successes count a visit when ``F <= k`` (the child itself was sampled on-policy).

Memory is O(path length + distinct exit children): on-path counts are difference arrays filled by
range additions, exit children live in one sorted table keyed by ``(position, token)``. Every count
is an integer sum, so any batching and any order of ingest give identical statistics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import numpy as np

Cascade = Literal["unbiased", "paper"]
NO_TOKEN = -1  # exit token when the response ended (or the path ended) at the divergence point
_TOKEN_BITS = 32  # exit-table key = position << 32 | token; vocabularies are far below 2**32
_FIRST_CHUNK = 16  # tokens compared per rollout in the first round of the longest-common-prefix scan


@dataclasses.dataclass(frozen=True)
class Rollouts:
    """A batch of rollouts as ragged arrays; the forced prefix is implied, never stored.

    Response ``i`` is ``paths[target_path[i]][:F-1] + [forced_token[i]] + tokens[offsets[i]:offsets[i+1]]``
    for a targeted rollout (``F = forced_len[i] > 0``) and just its token slice when ``F = 0``.
    """

    tokens: np.ndarray  # int [total]: the sampled continuations, concatenated
    offsets: np.ndarray  # int64 [R + 1]: continuation i is tokens[offsets[i]:offsets[i + 1]]
    reward: np.ndarray  # bool/int [R]: 1 iff the extracted answer is correct (truncated -> 0)
    forced_len: np.ndarray  # int64 [R]: F, leading response tokens that were given, not sampled
    target_path: np.ndarray  # int64 [R]: tracked path whose prefix was forced, -1 when F = 0
    forced_token: np.ndarray  # int64 [R]: the forced child a = y[F - 1], -1 when F = 0

    def __len__(self) -> int:
        return len(self.reward)

    @staticmethod
    def from_lists(
        responses: Sequence[Sequence[int]],
        rewards: Sequence[int],
        forced_len: Sequence[int] | None = None,
        target_path: Sequence[int] | None = None,
        forced_token: Sequence[int] | None = None,
    ) -> Rollouts:
        """Build a batch from sequences of continuation token ids (arrays or lists), copied once into one array."""
        r = len(responses)
        lengths = np.fromiter((len(y) for y in responses), dtype=np.int64, count=r)
        offsets = np.zeros(r + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.empty(int(offsets[-1]), dtype=np.int64)
        for y, lo, hi in zip(responses, offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
            tokens[lo:hi] = y
        fill = lambda v, default: np.full(r, default, np.int64) if v is None else np.asarray(v, np.int64)
        return Rollouts(
            tokens=tokens,
            offsets=offsets,
            reward=np.asarray(rewards, dtype=np.int64),
            forced_len=fill(forced_len, 0),
            target_path=fill(target_path, -1),
            forced_token=fill(forced_token, -1),
        )


@dataclasses.dataclass(frozen=True)
class Exits:
    """Where each rollout of a batch leaves one tracked path: the compact record of SPEC §6."""

    lcp: np.ndarray  # int64 [R]: L, length of the longest common prefix of response and path
    token: np.ndarray  # int64 [R]: y[L], or NO_TOKEN when the response ends at L


@dataclasses.dataclass(frozen=True)
class ChildTable:
    """Every visited child along one path, sorted by (position, token)."""

    position: np.ndarray  # int64 [C]: depth k of the node s = path[:k]
    token: np.ndarray  # int64 [C]: the child a
    n: np.ndarray  # int64 [C]: visits whose continuation after a was sampled
    w: np.ndarray  # int64 [C]: successes among those n
    m: np.ndarray  # int64 [C]: on-policy draws of a at s
    m_success: np.ndarray  # int64 [C]: successes among those m

    def q(self) -> np.ndarray:
        """Q(s, a) = w / n (nan where n = 0)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.w / self.n


def common_prefix_length(
    tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray, path: np.ndarray, path_starts: np.ndarray
) -> np.ndarray:
    """Length of the common prefix of ``tokens[starts[i]:starts[i]+lengths[i]]`` and ``path[path_starts[i]:]``.

    Compared in chunks that double in size, so the work is proportional to the matched length, not
    to the length of the responses (a 30,000-token trace that leaves the path after 3 tokens costs 3).
    """
    out = np.zeros(len(starts), dtype=np.int64)
    limit = np.minimum(lengths, len(path) - path_starts)
    active = np.flatnonzero(limit > 0)
    chunk = _FIRST_CHUNK
    while active.size:
        offs = out[active, None] + np.arange(chunk)
        valid = offs < limit[active, None]
        ours = tokens[np.where(valid, starts[active, None] + offs, 0)]
        theirs = path[np.where(valid, path_starts[active, None] + offs, 0)]
        match = valid & (ours == theirs)
        matched = np.where(match.all(axis=1), chunk, np.argmin(match, axis=1))
        out[active] += matched
        active = active[(matched == chunk) & (out[active] < limit[active])]
        chunk *= 2
    return out


def path_common_prefixes(paths: Sequence[np.ndarray]) -> np.ndarray:
    """``c[i, j]`` = longest common prefix of tracked paths i and j (``c[i, i] = len(path i)``)."""
    k = len(paths)
    c = np.zeros((k, k), dtype=np.int64)
    for i in range(k):
        for j in range(k):
            n = min(len(paths[i]), len(paths[j]))
            diff = np.flatnonzero(paths[i][:n] != paths[j][:n])
            c[i, j] = diff[0] if diff.size else n
    return c


class TreeStats:
    """Counts ``n, w, m, m_success`` for every child along a set of tracked paths (SPEC §2)."""

    def __init__(self, paths: Sequence[Sequence[int]], cascade: Cascade = "unbiased"):
        if cascade not in ("unbiased", "paper"):
            raise ValueError(f"cascade must be 'unbiased' or 'paper', got {cascade!r}")
        self.paths = [np.asarray(p, dtype=np.int64) for p in paths]
        self.cascade = cascade
        self._prefix = path_common_prefixes(self.paths)
        # on-path child counts kept as difference arrays: column order n, w, m, m_success
        self._on_diff = [np.zeros((len(p) + 1, 4), dtype=np.int64) for p in self.paths]
        self._exit_keys = [np.zeros(0, dtype=np.int64) for _ in self.paths]
        self._exit_counts = [np.zeros((0, 4), dtype=np.int64) for _ in self.paths]
        self.n_rollouts = 0

    # ingest -----------------------------------------------------------------------------------

    def exits(self, batch: Rollouts, j: int) -> Exits:
        """Where each rollout of ``batch`` leaves tracked path ``j``; the forced prefix is not compared."""
        path = self.paths[j]
        forced = batch.forced_len
        cont_len = np.diff(batch.offsets)
        target = np.where(forced > 0, batch.target_path, j)
        # a targeted rollout agrees with path j on its first F-1 tokens up to where its target leaves j
        shared = np.minimum(self._prefix[target, j], np.maximum(forced - 1, 0))
        left_before_forced = (forced > 0) & (shared < forced - 1)
        forced_on_path = (forced > 0) & ~left_before_forced & (forced - 1 < len(path))
        forced_on_path[forced_on_path] &= batch.forced_token[forced_on_path] == path[forced[forced_on_path] - 1]
        scan = (forced == 0) | forced_on_path
        lcp = np.where(forced > 0, forced - 1, 0)
        lcp = np.where(left_before_forced, shared, lcp)
        idx = np.flatnonzero(scan)
        lcp[idx] = forced[idx] + common_prefix_length(
            batch.tokens, batch.offsets[idx], cont_len[idx], path, forced[idx]
        )
        # the exit token: a path token when the target left j before F-1, the forced token when the
        # forced child itself is off path j, else the continuation token at L (if the response goes on)
        token = np.full(len(batch), NO_TOKEN, dtype=np.int64)
        for t in np.unique(batch.target_path[left_before_forced]):
            sel = left_before_forced & (batch.target_path == t)
            token[sel] = self.paths[t][shared[sel]]
        at_forced = (forced > 0) & ~left_before_forced & ~forced_on_path
        token[at_forced] = batch.forced_token[at_forced]
        rel = lcp[idx] - forced[idx]
        goes_on = rel < cont_len[idx]
        token[idx[goes_on]] = batch.tokens[batch.offsets[idx[goes_on]] + rel[goes_on]]
        return Exits(lcp=lcp, token=token)

    def ingest(self, batch: Rollouts) -> list[Exits]:
        """Add a batch of rollouts to the statistics of every tracked path; return their exits."""
        exits = [self.exits(batch, j) for j in range(len(self.paths))]
        self.ingest_all_exits(exits, batch.forced_len, batch.reward)
        return exits

    def ingest_all_exits(self, exits: Sequence[Exits], forced_len: np.ndarray, reward: np.ndarray) -> None:
        """Add rollouts given their exits from every tracked path (as stored in a run directory)."""
        for j, ex in enumerate(exits):
            self.ingest_exits(j, ex, forced_len, reward)
        self.n_rollouts += len(reward)

    def ingest_exits(self, j: int, exits: Exits, forced_len: np.ndarray, reward: np.ndarray) -> None:
        """Add rollouts given only their exits from path ``j`` (the stored form of targeted rollouts)."""
        lcp, token = exits.lcp, exits.token
        win = (np.asarray(reward) > 0).astype(np.int64)
        forced = np.asarray(forced_len, dtype=np.int64)
        # first depth whose visit counts: F <= k + 1 for n, w (all depths in paper mode); F <= k for m
        first_n = np.zeros_like(forced) if self.cascade == "paper" else np.maximum(forced - 1, 0)
        first_m = forced
        diff = self._on_diff[j]
        for col, first, weight in ((0, first_n, 1), (1, first_n, win), (2, first_m, 1), (3, first_m, win)):
            ok = first < lcp
            w = np.broadcast_to(weight, lcp.shape)[ok]
            np.add.at(diff[:, col], first[ok], w)
            np.add.at(diff[:, col], lcp[ok], -w)
        has_exit = token != NO_TOKEN
        rows = np.stack(
            [lcp >= first_n, (lcp >= first_n) & (win > 0), lcp >= first_m, (lcp >= first_m) & (win > 0)], axis=1
        ).astype(np.int64)[has_exit]
        keys = (lcp[has_exit] << _TOKEN_BITS) | token[has_exit]
        keep = rows[:, 0] > 0  # a visit that does not count for n counts for nothing else either
        self._merge_exits(j, keys[keep], rows[keep])

    def _merge_exits(self, j: int, keys: np.ndarray, rows: np.ndarray) -> None:
        """Add a batch's exit counts to path ``j``'s sorted table: the batch is sorted and summed on its
        own, then found in the table or inserted in order, so a batch costs its own sort and one copy of
        the table, not a sort of the whole table (which grew with every batch ingested)."""
        if not len(keys):
            return
        new, inverse = np.unique(keys, return_inverse=True)
        add = np.zeros((len(new), 4), dtype=np.int64)
        np.add.at(add, inverse.reshape(-1), rows)
        table, counts = self._exit_keys[j], self._exit_counts[j].copy()  # state() may hold the arrays
        at = np.searchsorted(table, new)
        found = at < len(table)
        found[found] = table[at[found]] == new[found]
        counts[at[found]] += add[found]
        self._exit_keys[j] = np.insert(table, at[~found], new[~found])
        self._exit_counts[j] = np.insert(counts, at[~found], add[~found], axis=0)

    # queries ----------------------------------------------------------------------------------

    def on_path_counts(self, j: int) -> np.ndarray:
        """``[len(path), 4]`` counts (n, w, m, m_success) of the on-path child ``path[k]`` at every depth k."""
        return np.cumsum(self._on_diff[j][:-1], axis=0)

    def children(self, j: int) -> ChildTable:
        """All visited children along path ``j`` (on-path and exit children), sorted by (position, token)."""
        path = self.paths[j]
        on = self.on_path_counts(j)
        visited = np.flatnonzero(on[:, 0] > 0)
        position = np.concatenate([visited, self._exit_keys[j] >> _TOKEN_BITS])
        token = np.concatenate([path[visited], self._exit_keys[j] & ((1 << _TOKEN_BITS) - 1)])
        counts = np.concatenate([on[visited], self._exit_counts[j]])
        order = np.lexsort((token, position))
        c = counts[order]
        return ChildTable(position[order], token[order], c[:, 0], c[:, 1], c[:, 2], c[:, 3])

    def visits(self, j: int, position: np.ndarray, token: np.ndarray) -> np.ndarray:
        """``n(path[:k], a)`` for each requested (k, a) on path ``j``."""
        position = np.asarray(position, dtype=np.int64)
        token = np.asarray(token, dtype=np.int64)
        path = self.paths[j]
        on = self.on_path_counts(j)[:, 0]
        in_path = position < len(path)
        is_on = in_path & (path[np.minimum(position, len(path) - 1)] == token)
        out = np.zeros(len(position), dtype=np.int64)
        out[is_on] = on[position[is_on]]
        keys = (position << _TOKEN_BITS) | token
        table = self._exit_keys[j]
        at = np.minimum(np.searchsorted(table, keys), max(len(table) - 1, 0))
        found = ~is_on & (len(table) > 0) & (table[at] == keys) if len(table) else np.zeros_like(is_on)
        out[found] = self._exit_counts[j][at[found], 0]
        return out

    def state(self) -> tuple[np.ndarray, ...]:
        """Every count, as arrays; two trees with equal states hold identical statistics."""
        return tuple(a for j in range(len(self.paths)) for a in (self.on_path_counts(j), self._exit_keys[j], self._exit_counts[j]))
