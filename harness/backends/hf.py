"""The transformers backend: any causal LM on CPU or CUDA, behind the token-level Protocol (base.py).

**sample** draws from ``π`` exactly: the softmax of the logits at temperature ``T``, with no top-k,
top-p or min-p (SPEC §1; ``generate`` would silently apply top-k 50). Each request's prefix is run
once and its KV cache fanned out to its ``n`` completions, so the ~100 targeted rollouts of one
prefix (SPEC §4) pay for one prefill. Completions of all requests decode together, left-padded, in
batches of up to ``batch_size`` rows; a finished row leaves the batch and queued rows take its
place (continuous batching), so one long completion never holds a batch of short ones. The cache
grows in blocks of 64 positions (``DynamicLayer`` copies the whole cache on every token). Memory:
each row holds its own copy of its prefix's cache (a paged engine such as vLLM shares it), so a
batch costs ``batch_size x (prefix + new tokens)`` cache positions; for long traces lower
``batch_size`` or use the vllm backend.

Randomness is counter-based: token ``step`` of completion ``i`` of a request with seed ``s`` is
drawn by inverse-CDF sampling with the uniform ``U(s, i, step)`` from a splitmix64 hash
(`counter_uniforms`). No generator state is shared between rows, so the tokens do not depend on
batch composition, request order, ``batch_size`` or thread count. In float32 the tokens are
identical in practice: the logits differ between batch shapes in their last bits, which changes a
token only when its uniform falls within rounding of a CDF boundary. In bfloat16 and float16 they
are not, on CPU as on a GPU: the incremental decode rounds differently from one batch shape to the
next (the toy student in bfloat16: half of 48 completions changed between ``batch_size`` 64 and 4,
and its decode distribution differs from one full forward pass by a total variation of 0.005 per
token on average). Each token is still a draw from the ``π`` of its own decode, not a bit-identical
one: a run resumed or spread over workers in those dtypes draws the same noise, not the same tokens.

**score** runs one forward pass of the decoder over ``context + response`` per (model, context)
and applies the output head chunk by chunk, ``score_chunk`` positions at a time: a 30,000-token
path never materialises a positions x vocabulary array, only ``score_chunk x V`` (a few such arrays
in float32 and float64 while the divergences are computed: about ``40 * score_chunk * V`` bytes,
~1.6 GB for 256 positions of a 152k vocabulary). The five divergences are computed in float64 where
the log-probabilities are: on a CUDA device in torch (`device_divergences`, 64 rows at a time), elsewhere by
`harness.core.divergences` on the host (the two agree to the order of float64 sums; MPS has no float64). Within one call a pass shared
by several requests (the student reference of every teacher on a path) runs once.

Options: ``device`` ("auto": CUDA when available), ``batch_size`` (rows decoded together, default
64), ``score_chunk`` (positions per head application, default 256), ``threads`` (torch CPU threads
for the process; one per process is steadier than two on small CPUs), ``attn_implementation``
(passed to ``from_pretrained``).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import inspect
import json
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from harness.backends import ModelSpec
from harness.errors import ConfigError, NonFiniteLogits, first_line
from harness.backends.base import STUDENT, SampleRequest, SampleResult, ScoreRequest, ScoreResult
from harness.core.divergences import DIVERGENCES, all_divergences
from harness.modelfiles import loadable
from harness.wording import plural

log = logging.getLogger(__name__)

_DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# splitmix64 (Steele, Lea & Flood 2014): the golden-ratio increment and the two finaliser multipliers
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)


def load_causal_lm(model_id: str, revision: str | None, dtype: str, **kwargs) -> torch.nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` at ``dtype`` (a key of ``_DTYPES``), without transformers'
    "Loading weights ... it/s" bar: it would sit among odiag's own progress lines, or break ``--quiet``."""
    from safetensors import SafetensorError

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return AutoModelForCausalLM.from_pretrained(loadable(model_id), revision=revision, dtype=_DTYPES[dtype], **kwargs)
    except SafetensorError as exc:  # a truncated download or a damaged copy: the user's to restore, not a bug
        raise ConfigError(f"model {model_id}: its weights cannot be read ({exc}); restore the files or download "
                          "them again") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _mix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijection of uint64 whose output bits all depend on every input bit."""
    z = (z ^ (z >> np.uint64(30))) * _MUL1
    z = (z ^ (z >> np.uint64(27))) * _MUL2
    return z ^ (z >> np.uint64(31))


def counter_uniforms(seed_B: np.ndarray, index_B: np.ndarray, step_B: np.ndarray) -> np.ndarray:
    """Uniforms in [0, 1) that are a pure function of (seed, completion index, step), row by row.

    ``h = mix(mix(mix(seed + γ) ^ index + γ) ^ step + γ)`` with the splitmix64 finaliser ``mix``;
    the top 53 bits of ``h`` give a float64. A counter-based generator (Salmon et al. 2011): a row's
    draws never depend on which other rows are drawn with it, or in which order.
    """
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        h = _mix64(np.asarray(seed_B, dtype=np.uint64) + _GAMMA)
        h = _mix64((h ^ np.asarray(index_B, dtype=np.uint64)) + _GAMMA)
        h = _mix64((h ^ np.asarray(step_B, dtype=np.uint64)) + _GAMMA)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def inverse_cdf_sample(logits_BV: torch.Tensor, temperature_B: torch.Tensor, u_B: torch.Tensor) -> torch.Tensor:
    """One id per row from softmax(logits / T), the first whose cumulative probability exceeds u.

    Exact sampling from π at temperature T with no truncation (SPEC §1). One uniform per token
    instead of Gumbel-max's one per vocabulary entry, so the counter hash costs O(rows), not
    O(rows x V). Float64 cumulative sums; a zero-probability id is never returned.
    """
    probs_BV = torch.softmax(logits_BV.double() / temperature_B.double()[:, None], dim=-1)
    cdf_BV = probs_BV.cumsum_(dim=-1)
    if not bool(torch.isfinite(cdf_BV[:, -1]).all()):  # a NaN or +inf logit: any id "sampled" would be made up
        raise NonFiniteLogits("the model's next-token logits are not finite (NaN or inf): it overflows at this dtype "
                          "(float16 does in many models); run it in bfloat16 or float32 (--set dtype=...)")
    target_B1 = (u_B.double() * cdf_BV[:, -1])[:, None]
    ids_B = torch.searchsorted(cdf_BV, target_B1, right=True)[:, 0]
    return ids_B.clamp_(max=logits_BV.shape[-1] - 1)


@dataclasses.dataclass
class _Model:
    """A loaded model and how to call its decoder and head separately."""

    spec: ModelSpec
    model: torch.nn.Module
    decoder: torch.nn.Module  # the base model: token ids -> final hidden states
    head: torch.nn.Module  # the output embedding: hidden states -> logits
    cache_kwarg: str  # transformers 5 renamed ``past_key_values`` to ``cache``

    def hidden(self, ids_BL, mask_BL=None, position_ids_BL=None, cache=None) -> torch.Tensor:
        kwargs = {"attention_mask": mask_BL, "position_ids": position_ids_BL, "use_cache": cache is not None}
        if cache is not None:
            kwargs[self.cache_kwarg] = cache
        return self.decoder(input_ids=ids_BL, **kwargs).last_hidden_state


@dataclasses.dataclass
class _Running:
    """The rows being decoded together: per-row state, and the batch's left-padded KV cache."""

    request_B: np.ndarray  # int: request index of each row
    index_B: np.ndarray  # int: completion index within its request
    tokens: list[list[int]]  # the tokens drawn so far, per row
    cache: Cache  # a cache of [B, heads, L, head_dim] keys and values per layer
    mask_BL: torch.Tensor  # 1 where the cache holds a real token, 0 on left padding
    position_B: torch.Tensor  # position id of each row's next token
    logits_BV: torch.Tensor  # float32 logits of each row's next token

    def select(self, rows: np.ndarray) -> _Running:
        """The rows ``rows``, without the leading columns that are padding in every one of them. Consumes
        this batch's cache layer by layer, so the two caches are held together one layer at a time."""
        idx = torch.as_tensor(rows, device=self.mask_BL.device)
        mask_BL = self.mask_BL[idx]
        lead = int((mask_BL.cumsum(dim=1) == 0).sum(dim=1).min())
        layers = []
        for layer in self.cache.layers:
            layers.append(_GrowingLayer.gathered(layer.keys, layer.values, idx, lead))
            layer.release()
        return _Running(
            self.request_B[rows],
            self.index_B[rows],
            [self.tokens[r] for r in rows],
            Cache(layers=layers),
            mask_BL[:, lead:],
            self.position_B[idx],
            self.logits_BV[idx],
        )


def _left_pad(kv_groups: list[list[tuple[torch.Tensor, torch.Tensor]]], masks: list[torch.Tensor],
              consumed: Cache | None = None):
    """One cache and mask from per-group caches and masks, left-padded to the longest, stacked on the batch.
    With ``consumed`` (the running batch's cache), its rows come first (``masks[0]`` is its mask) and each of
    its layers is read and released in turn, so the old and new caches are held together one layer at a time."""
    length = max(m.shape[1] for m in masks)
    layers = []
    for i, per_group in enumerate(zip(*kv_groups, strict=True)):
        group = list(per_group) if consumed is None else [(consumed.layers[i].keys, consumed.layers[i].values), *per_group]
        layers.append(_GrowingLayer.stacked([k for k, _ in group], [v for _, v in group], length))
        del group  # the old layer's last references: released below, freed here
        if consumed is not None:
            consumed.layers[i].release()
    mask = torch.cat([torch.nn.functional.pad(m, (length - m.shape[1], 0)) for m in masks])
    return Cache(layers=layers), mask


class _GrowingLayer(DynamicLayer):
    """A cache layer whose keys and values live in a buffer grown ``_BLOCK`` positions at a time.

    ``DynamicLayer`` concatenates on every decoding step, copying the whole batch's cache once per
    token; here a step writes one slot, and the cache is copied once per block.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, length: int):
        """A layer over buffers ``k``, ``v`` of ``[B, heads, capacity, head_dim]`` whose first ``length``
        positions hold the cache."""
        super().__init__()
        self.device, self.is_initialized, self._length = k.device, True, length
        self._k, self._v = k, v
        self._view()

    @classmethod
    def gathered(cls, keys: torch.Tensor, values: torch.Tensor, idx: torch.Tensor, lead: int) -> _GrowingLayer:
        """Rows ``idx`` of a layer, from position ``lead`` on, copied straight into a new buffer."""
        def gather(x):
            out = x.new_empty((len(idx), x.shape[1], x.shape[2] - lead + _BLOCK, x.shape[3]))
            out[:, :, : x.shape[2] - lead] = x[idx, :, lead:]
            return out

        return cls(gather(keys), gather(values), keys.shape[2] - lead)

    @classmethod
    def stacked(cls, keys: list[torch.Tensor], values: list[torch.Tensor], length: int) -> _GrowingLayer:
        """Groups of rows stacked on the batch, each left-padded with zeros to ``length`` positions."""
        def stack(xs):
            x = xs[0]
            out = x.new_zeros((sum(len(x) for x in xs), x.shape[1], length + _BLOCK, x.shape[3]))
            row = 0
            for x in xs:
                out[row : row + len(x), :, length - x.shape[2] : length] = x
                row += len(x)
            return out

        return cls(stack(keys), stack(values), length)

    @staticmethod
    def _spare(x: torch.Tensor) -> torch.Tensor:
        out = x.new_empty((*x.shape[:2], x.shape[2] + _BLOCK, x.shape[3]))
        out[:, :, : x.shape[2]] = x
        return out

    def release(self) -> None:
        """Frees the buffers: the layer's rows have been copied into another cache."""
        empty = self._k.new_empty((0, *self._k.shape[1:]))
        self._k, self._v, self._length = empty, empty, 0
        self._view()

    def _view(self) -> None:
        self.keys, self.values = self._k[:, :, : self._length], self._v[:, :, : self._length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n = key_states.shape[2]
        if self._length + n > self._k.shape[2]:
            self._k, self._v = self._spare(self.keys), self._spare(self.values)
        self._k[:, :, self._length : self._length + n] = key_states
        self._v[:, :, self._length : self._length + n] = value_states
        self._length += n
        self._view()
        return self.keys, self.values


_BLOCK = 64  # cache positions added at a time while decoding


def _sha16(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _kv_of(cache: Cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


# rows of the device's divergences computed together: a few float64 temporaries of ROWS x V (64 x 151,936: 78 MB
# each), against the float32 head's chunk of score_chunk x V
DEVICE_DIVERGENCE_ROWS = 64


def device_divergences(logp_student_CV: torch.Tensor, logp_teacher_CV: torch.Tensor) -> dict[str, np.ndarray]:
    """`harness.core.divergences.all_divergences` in torch, float64, on the tensors' device: the same formulas
    (0·log 0 = 0; KL +inf exactly where one side has mass the other lacks), equal to them up to the order of
    float64 sums. The exact scorer on a GPU computes them where the log-probabilities are, not on the host."""
    out: dict[str, list[torch.Tensor]] = {name: [] for name in DIVERGENCES}
    for lo in range(0, max(len(logp_student_CV), 1), DEVICE_DIVERGENCE_ROWS):
        lp, lq = (x[lo:lo + DEVICE_DIVERGENCE_ROWS].double() for x in (logp_student_CV, logp_teacher_CV))
        p, q = lp.exp(), lq.exp()
        logm = torch.logaddexp(lp, lq) - np.log(2.0)
        out["kl"].append(_device_kl(lq, lp, q))
        out["reverse_kl"].append(_device_kl(lp, lq, p))
        out["js"].append(0.5 * (_device_kl(lp, logm, p) + _device_kl(lq, logm, q)))
        out["tv"].append(0.5 * (p - q).abs().sum(-1))
        out["prob_cosine"].append((p * q).sum(-1) / torch.sqrt((p * p).sum(-1) * (q * q).sum(-1)))
    return {name: torch.cat(parts).cpu().numpy() for name, parts in out.items()}


def _device_kl(logp: torch.Tensor, logq: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row, as `harness.core.divergences._kl`."""
    terms = torch.where(torch.isneginf(logp), 0.0, (logp - logq) * p)
    mass_where_q_is_zero = (torch.isneginf(logq) & torch.isfinite(logp)).any(-1)
    return torch.where(mass_where_q_is_zero, torch.inf, terms.sum(-1))


class HFBackend:
    """Samples and scores transformers causal LMs; see the module docstring for the method and options."""

    def __init__(
        self,
        models: Mapping[str, ModelSpec],
        *,
        device: str = "auto",
        batch_size: int = 64,
        score_chunk: int = 256,
        threads: int | None = None,
        attn_implementation: str | None = None,
        loaded: Mapping[ModelSpec, torch.nn.Module] | None = None,
    ):
        self.check_option_values(device=device, batch_size=batch_size, score_chunk=score_chunk, threads=threads)
        if threads is not None:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.score_chunk = score_chunk
        self._attn = attn_implementation
        by_spec: dict[ModelSpec, _Model] = {}
        self._models: dict[str, _Model] = {}
        for name, spec in models.items():
            if spec not in by_spec:  # a teacher that is the student's checkpoint is loaded once
                by_spec[spec] = self._wrap(spec, loaded[spec], given=True) if spec in (loaded or {}) else self._load(spec)
            self._models[name] = by_spec[spec]
        self._by_spec = by_spec
        vocab = {name: m.head.weight.shape[0] for name, m in self._models.items()}
        if len(set(vocab.values())) > 1:
            raise ValueError(f"models must share one vocabulary to be compared, got output sizes {vocab}")
        self.vocab_size = next(iter(vocab.values()))

    @staticmethod
    def check_option_values(*, device: str = "auto", batch_size: int = 64, score_chunk: int = 256,
                            threads: int | None = None, attn_implementation: str | None = None, **_) -> None:
        """The options' values, before any model loads: a ValueError naming the option and the fix."""
        for key, value in (("batch_size", batch_size), ("score_chunk", score_chunk), ("threads", threads)):
            if not (value is None and key == "threads") and not (type(value) is int and value >= 1):
                raise ValueError(f"{key} must be a whole number >= 1, got {value!r}")
        if attn_implementation is not None:
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            known = ["eager", *ALL_ATTENTION_FUNCTIONS.keys()]
            # a hub kernel ("kernels-community/flash-attn") is transformers' to fetch and check
            if not isinstance(attn_implementation, str) or attn_implementation not in known and "/" not in attn_implementation:
                import transformers

                raise ValueError(f"attn_implementation {attn_implementation!r} is not one this transformers "
                                 f"{transformers.__version__} has; choose {', '.join(known)}")
        if device == "auto":
            return
        try:
            where = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device {device!r} is not a torch device (auto, cpu, cuda, cuda:1, mps)") from None
        count = {"cpu": 1, "cuda": torch.cuda.device_count(), "mps": int(torch.backends.mps.is_available())}.get(where.type, 0)
        if int(str(device).partition(":")[2] or 0) >= count:  # torch.device keeps 8 bits: 'cuda:999' reads as -25
            raise ValueError(f"device {device!r}: this machine's torch {torch.__version__} has "
                             f"{count or 'no'} {where.type} {plural(count, 'device')}; use device: auto or cpu")

    def _load(self, spec: ModelSpec) -> _Model:
        if spec.dtype not in _DTYPES:
            raise ValueError(f"{spec.id}: dtype {spec.dtype!r} is not one of {sorted(_DTYPES)}")
        kwargs = {"attn_implementation": self._attn} if self._attn is not None else {}
        try:
            model = load_causal_lm(spec.id, spec.revision, spec.dtype, **kwargs)
        except (ImportError, ValueError) as exc:
            if self._attn is None or "attn" not in str(exc).lower() and "attention" not in str(exc).lower():
                raise
            # an implementation transformers knows, whose package or device this machine lacks (flash_attention_2)
            raise ConfigError(f"student_args: attn_implementation {self._attn!r} cannot load {spec.id} here ({first_line(exc)}); "
                              "use sdpa or eager, or install what it needs") from None
        return self._wrap(spec, model)

    @classmethod
    def from_model(cls, model: torch.nn.Module, spec: ModelSpec, models: Mapping[str, ModelSpec] | None = None,
                   *, name: str = STUDENT, **options) -> HFBackend:
        """Wrap an already-loaded causal LM (lm-eval's, say) as ``name`` on its own device.

        ``spec`` names its checkpoint; ``models`` are further models (teachers), loaded as the
        constructor loads them. ``options`` as for the constructor.
        """
        options.setdefault("device", str(next(model.parameters()).device))
        return cls({**(models or {}), name: spec}, loaded={spec: model}, **options)

    def _wrap(self, spec: ModelSpec, model: torch.nn.Module, given: bool = False) -> _Model:
        model = model.to(self.device).eval()
        decoder, head = model.base_model, model.get_output_embeddings()
        params = inspect.signature(decoder.forward).parameters
        loaded = _Model(spec, model, decoder, head, "cache" if "cache" in params else "past_key_values")
        self._check_head(loaded)
        # a model handed over (lm-eval's, validate's in training) was loaded by its owner: said once there, not here
        log.log(logging.DEBUG if given else logging.INFO, "loaded %s (%s) on %s", spec.id, model.dtype, self.device)
        return loaded

    @torch.inference_mode()
    def _check_head(self, m: _Model) -> None:
        """Refuse a model whose forward transforms the head's logits (soft-capping, scaling): the
        chunked scorer and the sampler apply the head to the decoder's states themselves."""
        ids = torch.arange(min(8, m.head.weight.shape[0]), device=self.device)[None]
        ours = m.head(m.hidden(ids)).float()
        theirs = m.model(input_ids=ids).logits.float()
        if not torch.allclose(ours, theirs, rtol=1e-3, atol=1e-3):
            raise ValueError(f"{m.spec.id}: its forward post-processes the output head's logits; unsupported")

    def _model(self, name: str) -> _Model:
        if name not in self._models:
            raise KeyError(f"model {name!r} is not loaded; loaded: {sorted(self._models)}")
        return self._models[name]

    # -- sampling -------------------------------------------------------------------------------------

    @torch.inference_mode()
    def sample(self, requests: Sequence[SampleRequest], on_done=None) -> list[SampleResult]:
        """Completions of every request; ``on_done(completions, tokens)``, if given, hears of each
        decoding step's finished completions and generated tokens (progress, `harness.progress`)."""
        tokens: list[list] = [[None] * r.n for r in requests]
        truncated = [np.zeros(r.n, dtype=bool) for r in requests]
        by_model: dict[str, list[int]] = collections.defaultdict(list)
        for j, r in enumerate(requests):
            self._model(r.model)
            if not r.temperature > 0:
                raise ValueError(f"temperature must be positive, got {r.temperature}")
            if len(r.prefix) == 0:
                raise ValueError("a sample request needs a non-empty prefix")
            self._check_ids("prefix", r.prefix)
            if r.max_new_tokens <= 0:  # nothing may be generated: every completion is cut off at once
                tokens[j] = [np.zeros(0, dtype=np.int64) for _ in range(r.n)]
                truncated[j][:] = True
                if on_done is not None and r.n:
                    on_done(r.n, 0)
            elif r.n > 0:
                by_model[r.model].append(j)
        for name, todo in by_model.items():
            self._decode(self._model(name), requests, todo, tokens, truncated, on_done)
        return [SampleResult(tokens=t, truncated=f) for t, f in zip(tokens, truncated, strict=True)]

    def _decode(self, m: _Model, requests, todo: list[int], tokens_out, truncated_out, on_done=None) -> None:
        """Continuous batching over the completions of requests ``todo`` (see the module docstring)."""
        dev = self.device
        cdf_dev = torch.device("cpu") if dev.type == "mps" else dev  # the sampler's float64 CDF: MPS has no float64
        # short prefixes together: less left padding
        queue = collections.deque(
            (j, i) for j in sorted(todo, key=lambda j: len(requests[j].prefix)) for i in range(requests[j].n)
        )
        seed_R = np.array([int(r.seed) % 2**64 for r in requests], dtype=np.uint64)
        limit_R = np.array([r.max_new_tokens for r in requests])
        temperature_R = torch.tensor([r.temperature for r in requests], device=dev)
        stop_RS = np.full((len(requests), max([len(r.stop_ids) for r in requests] + [1])), -1, dtype=np.int64)
        for j, r in enumerate(requests):
            stop_RS[j, : len(r.stop_ids)] = r.stop_ids
        pending = collections.Counter(j for j, _ in queue)  # completions not yet in the batch
        prefills: dict[int, tuple] = {}
        run: _Running | None = None
        while queue or run is not None:
            free = self.batch_size - (0 if run is None else len(run.tokens))
            # admit in bulk: every admission copies the batch's cache once
            if queue and (run is None or free >= max(1, self.batch_size // 4)):
                run = self._admit(m, requests, queue, free, pending, prefills, run)
            step_B = np.array([len(t) for t in run.tokens])
            u_B = torch.as_tensor(counter_uniforms(seed_R[run.request_B], run.index_B, step_B), device=cdf_dev)
            ids_B = inverse_cdf_sample(run.logits_BV.to(cdf_dev), temperature_R[run.request_B].to(cdf_dev), u_B).cpu().numpy()
            for row, t in zip(run.tokens, ids_B.tolist(), strict=True):
                row.append(t)
            stopped_B = (stop_RS[run.request_B] == ids_B[:, None]).any(axis=1)
            done_B = stopped_B | (step_B + 1 >= limit_R[run.request_B])
            for b in np.flatnonzero(done_B):
                j, i = run.request_B[b], run.index_B[b]
                tokens_out[j][i] = np.array(run.tokens[b], dtype=np.int64)
                truncated_out[j][i] = not stopped_B[b]
            if on_done is not None:
                on_done(int(done_B.sum()), len(ids_B))
            if done_B.all():
                run = None
                continue
            if done_B.any():
                keep = np.flatnonzero(~done_B)
                run, ids_B = run.select(keep), ids_B[keep]
            run.mask_BL = torch.nn.functional.pad(run.mask_BL, (0, 1), value=1)
            ids_B1 = torch.as_tensor(ids_B, device=dev)[:, None]
            hidden = m.hidden(ids_B1, run.mask_BL, run.position_B[:, None], run.cache)
            run.logits_BV = m.head(hidden[:, -1]).float()
            run.position_B = run.position_B + 1

    def _admit(self, m: _Model, requests, queue, free, pending, prefills, run) -> _Running:
        """Move up to ``free`` queued completions into the batch, prefilling each new prefix once."""
        rows = [queue.popleft() for _ in range(min(free, len(queue)))]
        count = collections.Counter(j for j, _ in rows)
        for j in count:
            if j not in prefills:
                prefix = torch.as_tensor(np.asarray(requests[j].prefix, dtype=np.int64), device=self.device)[None]
                cache = DynamicCache()
                hidden = m.hidden(prefix, cache=cache)
                prefills[j] = (_kv_of(cache), m.head(hidden[:, -1]).float())
        # the fan-out: a prefix's cache, computed once, is repeated for each of its completions
        kv_groups = [[(k.expand(c, -1, -1, -1), v.expand(c, -1, -1, -1)) for k, v in prefills[j][0]]
                     for j, c in count.items()]
        masks = [torch.ones(c, len(requests[j].prefix), dtype=torch.long, device=self.device) for j, c in count.items()]
        request_B = np.array([j for j, _ in rows])  # rows of one request are consecutive in the queue
        new = dict(
            request_B=request_B,
            index_B=np.array([i for _, i in rows]),
            tokens=[[] for _ in rows],
            position_B=torch.tensor([len(requests[j].prefix) for j in request_B], device=self.device),
            logits_BV=torch.cat([prefills[j][1].expand(c, -1) for j, c in count.items()]),
        )
        for j, c in count.items():
            pending[j] -= c
            if pending[j] == 0:
                del prefills[j]
        if run is None:
            cache, mask = _left_pad(kv_groups, masks)
            return _Running(cache=cache, mask_BL=mask, **new)
        cache, mask = _left_pad(kv_groups, [run.mask_BL, *masks], consumed=run.cache)
        return _Running(
            request_B=np.concatenate([run.request_B, new["request_B"]]),
            index_B=np.concatenate([run.index_B, new["index_B"]]),
            tokens=run.tokens + new["tokens"],
            cache=cache,
            mask_BL=mask,
            position_B=torch.cat([run.position_B, new["position_B"]]),
            logits_BV=torch.cat([run.logits_BV, new["logits_BV"]]),
        )

    # -- scoring --------------------------------------------------------------------------------------

    @torch.inference_mode()
    def score(self, requests: Sequence[ScoreRequest], on_done=None) -> list[ScoreResult]:
        passes = []  # per request: the (model, context, response) of its pass and of its reference's
        for r in requests:
            if not r.temperature > 0:
                raise ValueError(f"temperature must be positive, got {r.temperature}")
            if (r.reference_model is None) != (r.reference_context is None):
                raise ValueError("reference_model and reference_context are given together or not at all")
            ref = None
            if r.reference_model is not None:
                ref = self._pass_key(r.reference_model, r.reference_context, r.response)
            passes.append((self._pass_key(r.model, r.context, r.response), ref))
            if r.extra_ids is not None:
                self._check_ids("extra_ids", r.extra_ids)
        uses = collections.Counter(key for pair in passes for key in pair if key is not None)
        # requests on one response together, so that a shared pass is held only while it is needed
        first: dict[bytes, int] = {}
        order = sorted(range(len(requests)), key=lambda j: first.setdefault(passes[j][0][2], j))
        memo: dict[tuple, torch.Tensor] = {}
        out: list[ScoreResult | None] = [None] * len(requests)
        for j in order:
            key, ref = passes[j]
            hidden = self._pass(key, memo, uses)
            out[j] = self._positions(requests[j], hidden, None if ref is None else self._pass(ref, memo, uses))
            if on_done is not None:
                on_done(1, 0)
        return out

    def _pass_key(self, name: str, context, response) -> tuple[ModelSpec, bytes, bytes]:
        context = np.asarray(context, dtype=np.int64)
        response = np.asarray(response, dtype=np.int64)
        if len(context) == 0:
            raise ValueError("a score request needs a non-empty context (its last id predicts response[0])")
        self._check_ids("context", context)
        self._check_ids("response", response)
        # names of one checkpoint (a teacher that is the student) share their passes
        return self._model(name).spec, context.tobytes(), response.tobytes()

    def _check_ids(self, what: str, ids) -> None:
        """Token ids outside the vocabulary, refused by name (an embedding lookup would fail without one, or
        assert on the device)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"{what} ids must lie in [0, {self.vocab_size}), got {int(ids.min())} .. {int(ids.max())}")

    def _pass(self, key: tuple[ModelSpec, bytes, bytes], memo: dict, uses: collections.Counter) -> torch.Tensor:
        """Final hidden states [P, H] at the positions predicting each response token (C-1 .. C+P-2)."""
        hidden = memo.pop(key, None)
        if hidden is None:
            m = self._by_spec[key[0]]
            context, response = np.frombuffer(key[1], dtype=np.int64), np.frombuffer(key[2], dtype=np.int64)
            ids = torch.as_tensor(np.concatenate([context, response]), device=self.device)[None]
            hidden = m.hidden(ids)[0, len(context) - 1 : len(context) + len(response) - 1]
        uses[key] -= 1
        if uses[key] > 0:
            memo[key] = hidden
        return hidden

    def _positions(self, r: ScoreRequest, hidden_PH, ref_hidden_PH) -> ScoreResult:
        """Ids, log-probabilities and divergences, ``score_chunk`` positions at a time."""
        m = self._model(r.model)
        ref = None if ref_hidden_PH is None else self._model(r.reference_model)
        response = torch.as_tensor(np.asarray(r.response, dtype=np.int64), device=self.device)
        k = min(max(r.top_k, 0), self.vocab_size)
        ids, lp, ref_lp, counts = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)], [np.zeros(0, np.float32)], []
        divergences = {name: [np.zeros(0)] for name in DIVERGENCES}
        for lo in range(0, len(response), self.score_chunk):
            hi = min(lo + self.score_chunk, len(response))
            logp_CV = torch.log_softmax(m.head(hidden_PH[lo:hi]).float() / r.temperature, dim=-1)
            candidates_CK = [response[lo:hi, None]]
            if k:
                candidates_CK.append(logp_CV.topk(k, dim=-1).indices)
            if r.extra_ids is not None:
                candidates_CK.append(torch.as_tensor(np.asarray(r.extra_ids[lo:hi], dtype=np.int64), device=self.device))
            if ref is not None:
                ref_logp_CV = torch.log_softmax(ref.head(ref_hidden_PH[lo:hi]).float() / r.temperature, dim=-1)
                if k:
                    candidates_CK.append(ref_logp_CV.topk(k, dim=-1).indices)
                # the reference plays π (the student), the scored model π_T (SPEC §3, divergences); on a CUDA device
                # there, not in the host's numpy (5.7 ms a position at Qwen3's vocabulary); MPS has no float64
                on_device = self.device.type == "cuda"
                for name, value in (device_divergences(ref_logp_CV, logp_CV) if on_device
                                    else all_divergences(ref_logp_CV.cpu().numpy(), logp_CV.cpu().numpy())).items():
                    divergences[name].append(value)
            sorted_CK = torch.cat(candidates_CK, dim=1).sort(dim=1).values
            keep_CK = torch.ones_like(sorted_CK, dtype=torch.bool)
            keep_CK[:, 1:] = sorted_CK[:, 1:] != sorted_CK[:, :-1]  # the union: each id once
            ids.append(sorted_CK[keep_CK].cpu().numpy())
            lp.append(logp_CV.gather(1, sorted_CK)[keep_CK].cpu().numpy())
            if ref is not None:
                ref_lp.append(ref_logp_CV.gather(1, sorted_CK)[keep_CK].cpu().numpy())
            counts.append(keep_CK.sum(dim=1).cpu().numpy())
        offsets = np.zeros(len(response) + 1, dtype=np.int64)
        if counts:
            np.cumsum(np.concatenate(counts), out=offsets[1:])
        return ScoreResult(
            ids=np.concatenate(ids),
            offsets=offsets,
            logprobs=np.concatenate(lp),
            reference_logprobs=None if ref is None else np.concatenate(ref_lp),
            divergences=None if ref is None else {name: np.concatenate(v) for name, v in divergences.items()},
        )

    # -- identity -------------------------------------------------------------------------------------

    def loaded(self) -> dict[str, torch.nn.Module]:
        """Each model name's loaded module (a checkpoint named twice is one module)."""
        return {name: m.model for name, m in self._models.items()}

    def describe(self) -> dict:
        import transformers

        models = {}
        for name, m in self._models.items():
            config = {k: v for k, v in m.model.config.to_dict().items()
                      if k not in ("transformers_version", "_name_or_path", "_commit_hash")}
            models[name] = {
                "id": m.spec.id,
                "revision": m.spec.revision,
                "dtype": m.spec.dtype,
                "torch_dtype": str(m.model.dtype).removeprefix("torch."),
                "commit": getattr(m.model.config, "_commit_hash", None),
                "config_sha256": _sha16(json.dumps(config, sort_keys=True, default=str)),
            }
        return {
            "backend": "hf",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "batch_size": self.batch_size,
            "score_chunk": self.score_chunk,
            "sampler": "inverse CDF at temperature T, no truncation; splitmix64 uniforms of (seed, completion, step)",
            "models": models,
        }
