"""The exact synthetic model as a backend (SPEC §7): a whole run checkable against exact values.

Token ids are the synthetic vocabulary. A prompt is one id, the question's seed, so one backend
serves every question; the response follows. Models: ``student`` and the synthetic teachers
(``helpful``, ``misleading``), which see the same one-id context. Stop id 0 (EOS).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from harness.backends.base import STUDENT, SampleRequest, SampleResult, ScoreRequest, ScoreResult
from harness.core import all_divergences
from harness.exact_lm import TEACHERS, SyntheticLM


class SyntheticBackend:
    """Samples and scores the synthetic models exactly; no truncation, any temperature 1."""

    def __init__(self, models: Mapping[str, object] | None = None, **model_options):
        names = set(models or {STUDENT: None})
        unknown = names - {STUDENT, *TEACHERS}
        if unknown:
            raise ValueError(f"the synthetic backend has models {[STUDENT, *TEACHERS]}, not {sorted(unknown)}")
        self._options = model_options
        self._cache: dict[int, SyntheticLM] = {}

    def question(self, seed: int) -> SyntheticLM:
        if seed not in self._cache:
            self._cache[seed] = SyntheticLM(seed=seed, **self._options)
        return self._cache[seed]

    def _logp(self, model: str, context: np.ndarray) -> tuple[SyntheticLM, np.ndarray]:
        lm = self.question(int(context[0]))
        return lm, (lm.logp if model == STUDENT else lm.teacher_logp(model))

    def sample(self, requests: Sequence[SampleRequest]) -> list[SampleResult]:
        out = []
        for r in requests:
            if r.model != STUDENT or r.temperature != 1.0:
                raise ValueError("the synthetic backend samples the student at temperature 1 only")
            lm = self.question(int(r.prefix[0]))
            toks, _, truncated = lm.sample(list(r.prefix[1:]), r.n, r.seed)
            limit = r.max_new_tokens
            truncated = truncated | np.array([len(t) > limit for t in toks])
            out.append(SampleResult(tokens=[t[:limit] for t in toks], truncated=truncated))
        return out

    def reward(self, prompt: np.ndarray, response: np.ndarray) -> int:
        """The exact reward of a response (the synthetic task's checker)."""
        return self.question(int(prompt[0])).reward(list(response))

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        out = []
        for r in requests:
            lm, logp = self._logp(r.model, r.context)
            states = lm.states(list(r.response))[: len(r.response)]
            depth = np.arange(len(r.response))
            rows = logp[depth, states]  # [P, V]: the full distributions, V is tiny
            ref_rows = None
            if r.reference_model is not None:
                _, ref_logp = self._logp(r.reference_model, r.reference_context)
                ref_rows = ref_logp[depth, states]
            vocab = rows.shape[1]
            ids = np.tile(np.arange(vocab), len(r.response))
            out.append(
                ScoreResult(
                    ids=ids,
                    offsets=np.arange(len(r.response) + 1, dtype=np.int64) * vocab,
                    logprobs=rows.reshape(-1),
                    reference_logprobs=None if ref_rows is None else ref_rows.reshape(-1),
                    divergences=None if ref_rows is None else all_divergences(ref_rows, rows),
                )
            )
        return out

    def describe(self) -> dict:
        return {"backend": "synthetic", "models": {STUDENT: "synthetic", **{t: f"synthetic:{t}" for t in TEACHERS}}}
