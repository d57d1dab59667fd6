"""``odiag plan``: what a run will load, where, how much device memory each phase holds, how many
rollouts and tokens it will generate and roughly how long it will take, before anything runs.

Memory comes from parameter counts (a local model's ``config.json``, or :data:`KNOWN_MODELS` for
the hub ids the paper uses) times the bytes of the dtype, plus each engine's or scorer's working
memory; counts of rollouts and tokens from the run config (SPEC §4). The layout is the backends'
as they are:

- **hf**: every model (student, external teachers, solution sources, summarisers) is loaded at the
  start, on one device, and held to the end.
- **vllm**: one vLLM engine per model that samples (the student; solution sources and summarisers
  when a teacher needs them), each reserving ``gpu_memory_utilization`` of the device when it
  starts and held to the end; with ``score_with="hf"`` (the default) the exact scorer then loads
  every model in transformers on the same device, at the first scoring call, held to the end.

So nothing is freed before the run ends, and a phase holds everything the earlier phases loaded.
A plan that does not fit ``--gpu-memory`` is refused, naming the first phase that does not fit.
Targeted rollouts are bounded as README's "Sizing a run" bounds them, each strategy by its own rule
(`targeted_bound`); a targeted rollout generates at most the response length. These are upper bounds
(a run enriches fewer nodes and children where fewer qualify); ``budget`` caps the rollouts per question
under every strategy, and is ``settle``'s only bound. The hf backend's memory adds the KV cache of a
decode batch (``batch_size`` rows of the response length) and the scorer's working memory.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

from harness.config import ConfigError, RunConfig
from harness.safeio import excerpt
from harness.wording import plural, shell_word

GiB = 2**30
# hub ids: (parameters, layers, KV heads, head size, vocabulary, positions), from the published checkpoints; a tied
# embedding (0.6B to 4B) counted once, as it is held once in memory and as `_from_config` counts it
KNOWN_MODELS = {
    "Qwen/Qwen3-0.6B": (0.596e9, 28, 8, 128, 151936, 40960),
    "Qwen/Qwen3-1.7B": (1.72e9, 28, 8, 128, 151936, 40960),
    "Qwen/Qwen3-4B": (4.02e9, 36, 8, 128, 151936, 40960),
    "Qwen/Qwen3-8B": (8.19e9, 36, 8, 128, 151936, 40960),
    "Qwen/Qwen3-14B": (14.77e9, 40, 8, 128, 151936, 40960),
    "Qwen/Qwen3-32B": (32.76e9, 64, 8, 128, 151936, 40960),
}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ENGINE_OVERHEAD = 1.5 * GiB  # a vLLM engine's activations and CUDA context beyond weights and KV cache


@dataclasses.dataclass(frozen=True)
class Model:
    """A model the run loads: where it comes from, its size, and its role."""

    id: str
    role: str  # student, teacher, solution source, summariser
    parameters: float | None  # None: unknown (not local, not in KNOWN_MODELS)
    bytes_per_parameter: int
    layers: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    vocab: int | None = None
    positions: int | None = None  # max_position_embeddings: a vLLM engine's max_model_len unless one is set

    @property
    def weights(self) -> float | None:
        return None if self.parameters is None else self.parameters * self.bytes_per_parameter


def _from_config(path: Path) -> tuple | None:
    try:
        c = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    c = c.get("text_config", c)
    h, layers, inter, vocab = c.get("hidden_size"), c.get("num_hidden_layers"), c.get("intermediate_size"), c.get("vocab_size")
    if not all(isinstance(x, int) for x in (h, layers, inter, vocab)):
        return None
    heads = c.get("num_attention_heads", 1)
    kv = c.get("num_key_value_heads", heads)
    head_dim = c.get("head_dim") or h // heads
    attention = h * head_dim * (heads + 2 * kv) + heads * head_dim * h
    per_layer = attention + 3 * h * inter + 2 * h + 2 * head_dim
    embeddings = vocab * h * (1 if c.get("tie_word_embeddings", False) else 2)
    positions = c.get("max_position_embeddings")
    return (float(layers * per_layer + embeddings + h), layers, kv, head_dim, vocab,
            positions if isinstance(positions, int) and positions > 0 else None)


def describe_model(model_id: str, role: str, dtype: str) -> Model:
    """Parameter count and shape of ``model_id`` (a local directory's config.json, or a known hub id)."""
    local = Path(model_id)
    shape = _from_config(local) if local.is_dir() else KNOWN_MODELS.get(model_id)
    stored = None
    if local.is_dir():
        try:
            stored = json.loads((local / "config.json").read_text(encoding="utf-8")).get("dtype") or json.loads(
                (local / "config.json").read_text(encoding="utf-8")).get("torch_dtype")
        except (OSError, ValueError):
            stored = None
    width = DTYPE_BYTES.get(dtype) or DTYPE_BYTES.get(str(stored), 2)  # auto: the checkpoint's (Qwen3: bfloat16)
    if shape is None:
        return Model(model_id, role, None, width)
    return Model(model_id, role, shape[0], width, *shape[1:])


def response_length(cfg: RunConfig) -> int:
    """``max_new_tokens``, or the task YAML's ``max_gen_toks`` (the synthetic task: its horizon)."""
    if cfg.max_new_tokens:
        return cfg.max_new_tokens
    if cfg.task == "synthetic":
        from harness.tasks.exact import SyntheticTask

        return SyntheticTask().max_new_tokens
    from harness.lmeval_bridge import _yaml_generation_kwargs

    return int(_yaml_generation_kwargs(cfg.task).get("max_gen_toks") or 512)


def windows(length: int, width: int) -> int:
    """Depth windows [0,w), [w,3w), [3w,7w), ... that start inside a response of ``length``."""
    count, start = 0, 0
    while start < length:
        count += 1
        start = start * 2 + width
    return count


@dataclasses.dataclass
class Plan:
    lines: list[str]
    phases: list[tuple[str, float | None]]  # (phase, bytes held; None when a size is unknown)
    tokens: float


def _figure(x: float, decimals: int = 1) -> str:
    """A count or a duration grouped by thousands, in powers of ten past a billion or below a thousandth:
    an extreme --throughput never prints a number of 300 digits."""
    if x >= 1e9 or 0 < x < 1e-3:
        return f"{x:.2e}"
    return f"{x:,.{decimals}f}"


def _gib(x: float | None) -> str:
    if x is None:
        return "?"
    return f"{x / GiB:.1f} GiB" if x >= GiB - 0.05 * 2**20 or x == 0 else f"{x / 2**20:.1f} MiB"  # never "1024.0 MiB"


def _duration(hours: float) -> str:
    """A wall time in hours, or in minutes or seconds when under one (never "0.0 h")."""
    if hours >= 1:
        return f"{_figure(hours)} h"
    if hours >= 1 / 60:
        return f"{_figure(hours * 60)} min"
    seconds = hours * 3600
    return f"{_figure(seconds, 0 if seconds >= 1 else 1)} s"


def parameters_text(n: float) -> str:
    """``14.77B``, ``596M``, ``151k``: the unit that shows the figure."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.2f}B" if unit == "B" else f"{n / scale:.0f}{unit}"
    return f"{n:.0f}"


def _contexts_text(teachers: Sequence, tokens: float) -> str:
    """What building the teachers' contexts generates, per question."""
    if tokens:
        return f"teacher contexts (solutions, summaries) generate <= {tokens:,.0f} tokens"
    if any(t.correct_solutions or t.wrong_solutions for t in teachers):
        return "teacher contexts generate nothing (their solutions are the student's own rollouts)"
    return "no teacher context to build"


def targeted_bound(cfg: RunConfig, length: int, n_min: int, n_teachers: int) -> tuple[int | None, str]:
    """Targeted rollouts per question at most under ``cfg.strategy`` (None: no bound), and how the bound is made.

    ``paper``: ``2 k_window`` targets per path and depth window, each to ``n_target`` visits. ``survey``:
    at most ``survey_positions + 1`` sampled positions per path (its grid's rate makes ``survey_positions``
    per path on average; no more than the path has), each with at most ``(1 + teachers) floor(1 / tau)``
    likely children (π ≥ τ or π_T ≥ τ: at most ``1 / τ`` tokens per distribution), to ``survey_visits``.
    ``settle``: each decision point grows while settling it is worth the price, to at most ``n_max``
    visits per child, at however many decision points the tree forms: only ``budget`` bounds it.
    Every strategy stays within ``budget``.
    """
    paths = 2 * cfg.paths_per_outcome
    if cfg.strategy == "survey":
        visits = cfg.survey_visits or n_min
        positions = paths * min(cfg.survey_positions + 1, length)
        likely = (1 + n_teachers) * math.floor(1 / cfg.tau)
        bound, how = positions * likely * visits, f"{positions:,} positions x {likely:,} likely children x {visits:,} visits"
    elif cfg.strategy == "settle":
        bound, how = None, f"settle grows each decision point up to n_max {cfg.n_max:,} visits per child"
    else:
        targets = paths * windows(length, cfg.window) * 2 * cfg.k_window
        bound, how = targets * cfg.n_target, f"{targets:,} targets x n_target {cfg.n_target:,}"
    if cfg.budget is not None and (bound is None or cfg.budget <= bound):
        return cfg.budget, f"the budget; {how}"
    return bound, how


def _sampling_cache(model: Model, rows: int, positions: int) -> float | None:
    """Bytes of the hf backend's KV cache for a decode batch of ``rows`` rows of ``positions`` positions."""
    if None in (model.layers, model.kv_heads, model.head_dim):
        return None
    return float(rows * positions * model.layers * 2 * model.kv_heads * model.head_dim * model.bytes_per_parameter)


def _engine_arg(teachers: Sequence, model_id: str, key: str, default):
    """``key`` of ``model_id``'s engine: its teacher's ``model_args``, else ``default``."""
    for t in teachers:
        if not t.is_self and t.model == model_id and t.model_args:
            args = {**dict(t.model_args.get("engine_options") or {}), **t.model_args}
            if args.get(key) is not None:
                return args[key]
    return default


def _utilisation(teachers: Sequence, model_id: str, default: float) -> float:
    """The ``gpu_memory_utilization`` of ``model_id``'s engine: its teacher's ``model_args``, else ``default``."""
    return float(_engine_arg(teachers, model_id, "gpu_memory_utilization", default))


def _engine_need(cfg: RunConfig, teachers: Sequence, model: Model) -> tuple[float | None, str]:
    """What a vLLM engine of ``model`` needs to start, and how that is counted: its weights, its overhead, and
    the KV cache of one sequence of ``max_model_len`` positions (vLLM refuses to start without it; the model's
    own positions where no max_model_len is set)."""
    if model.weights is None:
        return None, ""
    options = dict(cfg.student_args)
    run_limit = dict(options.get("engine_options") or {}).get("max_model_len", options.get("max_model_len"))
    positions = _engine_arg(teachers, model.id, "max_model_len", run_limit) or model.positions
    kv = _sampling_cache(model, 1, positions) if isinstance(positions, int) else None
    if not kv:
        return model.weights + ENGINE_OVERHEAD, "weights + 1.5 GiB"
    return model.weights + ENGINE_OVERHEAD + kv, f"weights + 1.5 GiB + one sequence of max_model_len {positions:,}"


def _raise_where(teachers: Sequence, model_id: str) -> str:
    """Where a larger ``gpu_memory_utilization`` for ``model_id``'s engine is set."""
    t = next((t for t in teachers if not t.is_self and t.model == model_id), None)
    return f"in {t.file or t.name}'s model_args" if t is not None else "in the run's student_args"


def make_plan(cfg: RunConfig, teachers: Sequence, gpu_memory: float | None = None, throughput: float | None = None,
              questions: int | None = None, n_min: int | None = None, length: int | None = None,
              prompt: int | None = None) -> Plan:
    """The plan of ``cfg`` with its loaded ``teachers``; ``gpu_memory`` in GiB, ``throughput`` in
    generated tokens per second; ``questions`` the run's count when the task is at hand (else ``limit``),
    ``n_min`` and ``length`` the task's (else the config's and the task YAML's), ``prompt`` its longest
    prompt in tokens (else unknown: not counted)."""
    loads = _loads(cfg, teachers)
    length = length or response_length(cfg)
    n_min = n_min or cfg.n_min or 20
    n_q = questions if questions is not None else cfg.limit
    lines = [f"plan: {cfg.task}, student {cfg.student} ({cfg.dtype}), backend {cfg.backend}, "
             f"{len(teachers)} {plural(len(teachers), 'teacher')}, "
             f"{f'{n_q:,}' if n_q is not None else '?'} {plural(n_q, 'question')}"]
    lines.append("models:")
    for m in loads.models.values():
        size = "size unknown" if m.parameters is None else f"{parameters_text(m.parameters)} parameters, {_gib(m.weights)}"
        lines.append(f"  {m.id} ({size}): {m.role}")

    gpu = None if gpu_memory is None else gpu_memory * GiB
    memory = (_vllm_memory(cfg, teachers, loads, gpu_memory) if cfg.backend == "vllm"
              else _local_memory(cfg, teachers, loads, length, prompt))
    lines += memory.lines
    workers = cfg.num_workers if cfg.executor == "ray" else 1
    if cfg.executor == "ray":
        lines.append(f"executor ray: {workers} {plural(workers, 'worker')}, each a backend of its own holding the models "
                     "above on its own device: the memory below is per worker")
    lines.append("memory per phase (held at its end):")
    for phase, size in memory.phases:
        fits = "" if gpu is None or size is None else ("  fits" if size <= gpu else f"  DOES NOT FIT {gpu_memory:g} GiB")
        lines.append(f"  {phase:<40} {_gib(size)}{fits}")

    cost_lines, total_tokens = _generated(cfg, teachers, loads.artefact_ids, length, n_min, n_q)
    lines += cost_lines
    lines.append(_held_passes(cfg, len(teachers), length, n_q, loads.student.vocab if loads.student else None))
    lines += _wall_time(total_tokens, throughput, workers, n_q)
    if gpu is not None:
        for phase, size in memory.phases:
            if phase in memory.refusals:
                raise PlanDoesNotFit(lines, memory.refusals[phase])
            if size is not None and size > gpu:
                raise PlanDoesNotFit(lines, f"plan: phase '{phase}' needs {_gib(size)}, more than --gpu-memory "
                                            f"{gpu_memory:g} GiB (see `odiag plan`; {memory.advice})")
    return Plan(lines, memory.phases, float(total_tokens or 0))


@dataclasses.dataclass
class _Loads:
    """The models a run loads (each id once, with everything it is loaded for), the external teachers'
    models with the teachers that read them, and the models that make teacher contexts."""

    models: dict[str, Model]
    readers: dict[str, list[str]]
    artefact_ids: list[str]
    student: Model | None


def _loads(cfg: RunConfig, teachers: Sequence) -> _Loads:
    """What ``cfg`` with ``teachers`` loads: a run loads each model id once, whatever it is for."""
    from harness.teachers import TEXT_SUMMARIZERS

    roles: dict[str, list[str]] = {}  # model id -> what it is loaded for
    dtypes: dict[str, str] = {}

    def uses(model_id: str, role: str, dtype: str) -> None:
        roles.setdefault(model_id, []).append(role)
        dtypes.setdefault(model_id, dtype)

    if cfg.task != "synthetic":
        uses(cfg.student, "student", cfg.dtype)
    readers: dict[str, list[str]] = {}
    for t in teachers:
        if not t.is_self:
            readers.setdefault(t.model, []).append(t.name)
    for model_id, names in readers.items():
        t = next(t for t in teachers if not t.is_self and t.model == model_id)
        uses(model_id, f"{plural(len(names), 'teacher')} {', '.join(names)}", t.dtype)
    artefact_ids: list[str] = []
    for t in teachers:
        for model_id, role in ((t.solution_source, f"solutions of {t.name}"), (t.summarizer, f"summaries of {t.name}")):
            if model_id is None or model_id == "student" or model_id in TEXT_SUMMARIZERS:
                continue
            uses(model_id, role, t.dtype)
            artefact_ids += [model_id] if model_id not in artefact_ids else []
    models = {m: describe_model(m, ", ".join(r), dtypes[m]) for m, r in roles.items()}
    return _Loads(models, readers, artefact_ids, models.get(cfg.student) if cfg.task != "synthetic" else None)


@dataclasses.dataclass
class _Memory:
    lines: list[str]  # the layout
    phases: list[tuple[str, float | None]]  # (phase, bytes held at its end; None when a size is unknown)
    refusals: dict[str, str]  # phase -> why an engine cannot hold its model
    advice: str  # what makes a plan that does not fit smaller


def _total(models: Sequence[Model]) -> float | None:
    sizes = [m.weights for m in models]
    return None if any(s is None for s in sizes) else float(sum(sizes))


def _vllm_memory(cfg: RunConfig, teachers: Sequence, loads: _Loads, gpu_memory: float | None) -> _Memory:
    """Memory per phase on the vllm backend: each sampling engine reserves its share of the device when it
    starts; the exact scorer (``score_with="hf"``) loads the student and every teacher's model in transformers at the
    first scoring call."""
    gpu = None if gpu_memory is None else gpu_memory * GiB
    options = dict(cfg.student_args)
    score_with = options.get("score_with", "hf")
    util = options.get("gpu_memory_utilization", dict(options.get("engine_options") or {}).get("gpu_memory_utilization"))
    if util is None:  # the run's defaults (harness.plan.backend_options, the backend)
        from harness.plan import sampling_models

        util = round(0.5 / len(sampling_models(cfg, teachers)), 4) if score_with == "hf" else 0.85 / max(len(loads.models), 1)
    lines = [f"layout (vllm, score_with={score_with}): one engine per "
             + ("sampling model" if score_with == "hf" else "model (sampling and scoring)")
             + f", each reserving gpu_memory_utilization={util:g} of the device ("
             + (f"{_gib(util * gpu)} each" if gpu else "without --gpu-memory: weights + 1.5 GiB + one max_model_len "
                                                         "sequence's KV cache each")
             + "), held to the end;"]
    if score_with == "hf":
        lines.append("  the exact scorer loads the student and every teacher's model in transformers on the same "
                     "device at the first scoring call, held to the end")
    scoring_engines = [m for m in loads.models if m in loads.readers] if score_with == "vllm" else []
    order = [("initial rollouts", [cfg.student] if loads.student else [], [])]
    if loads.artefact_ids:
        order.append(("teacher contexts (solutions, summaries)", loads.artefact_ids, []))
    scored = [m for model_id, m in loads.models.items() if model_id in loads.readers or model_id == cfg.student]
    order.append(("teacher scoring", scoring_engines, scored if score_with == "hf" else []))
    order.append(("targeted rollouts", [], []))
    phases: list[tuple[str, float | None]] = []
    refusals: dict[str, str] = {}
    held, known, started = 0.0, True, set()
    for phase, engines, scorer in order:
        for model_id in engines:
            if model_id in started:
                continue
            started.add(model_id)
            m, share = loads.models[model_id], _utilisation(teachers, model_id, util)
            engine = None if gpu is None else share * gpu
            need, how = _engine_need(cfg, teachers, m)
            if engine is not None and need is not None and need > engine:
                refusals.setdefault(phase, f"plan: phase '{phase}': {m.id} needs {_gib(need)} ({how}) but its "
                                    f"engine gets {_gib(engine)} (gpu_memory_utilization={share:g} of {gpu_memory:g} "
                                    f"GiB); raise it, or lower max_model_len, {_raise_where(teachers, model_id)}")
            held += engine if engine is not None else (need or 0)
            known &= engine is not None or m.weights is not None
        if scorer:
            weights = _total(scorer)
            known &= weights is not None
            held += (weights or 0) + _scorer_working(cfg, scorer)
        phases.append((phase, held if known else None))
    advice = ("lower gpu_memory_utilization, drop teachers, or use score_with: vllm" if score_with == "hf"
              else "lower gpu_memory_utilization or drop teachers")
    return _Memory(lines, phases, refusals, advice)


def _row_positions(cfg: RunConfig, teachers: Sequence, loads: _Loads, length: int, prompt: int | None) -> dict[str, tuple[int, str]]:
    """Each sampling model's longest decode row, in positions, and what it holds: the student's the longest prompt
    and a response; a solution source's the prompt and its ``solution_max_new_tokens``; a model summariser's the
    question, a whole solution and the summary prompt's own text (its characters: no fewer than its tokens), then
    its ``summary_max_new_tokens``."""
    from harness.backends.base import STUDENT

    head = prompt or 0
    rows: dict[str, tuple[int, str]] = {}

    def longest(model: str, n: int, what: str) -> None:
        if model in loads.models and n > rows.get(model, (0, ""))[0]:
            rows[model] = (n, what)

    if loads.student:
        longest(cfg.student, head + length, f"the longest prompt, {prompt:,}, and the response" if prompt else "")
    for t in teachers:
        shown = length if t.solution_source == STUDENT else (t.solution_max_new_tokens or length)
        if t.solution_source != STUDENT:
            longest(t.solution_source, head + shown, f"a prompt and a solution of {shown:,} tokens")
        if t.summarizer in loads.artefact_ids:
            template = len(t.summary_prompt or "")
            longest(t.summarizer, head + shown + template + t.summary_max_new_tokens,
                    f"the question, a solution of {shown:,} tokens, the summary prompt's {template:,} characters and "
                    f"a summary of {t.summary_max_new_tokens:,}")
    return rows


def _local_memory(cfg: RunConfig, teachers: Sequence, loads: _Loads, length: int, prompt: int | None) -> _Memory:
    """Memory per phase on the hf (or synthetic) backend: every model from the start, with the KV cache of a
    decode batch (rows left-padded to the longest prompt, plus what is generated: `_row_positions`) and the
    scorer's working memory."""
    rows = int(dict(cfg.student_args).get("batch_size", 64))
    positions = _row_positions(cfg, teachers, loads, length, prompt)
    caches = {m: _sampling_cache(loads.models[m], rows, n) for m, (n, _) in positions.items()}
    cache = None if None in caches.values() else max(caches.values(), default=0.0)
    largest = max(caches, key=lambda m: caches[m] or 0.0, default=cfg.student)
    n, what = positions.get(largest, (length, ""))
    what = "; ".join(x for x in (what, "" if prompt else "the prompt adds its own") if x)
    held_at = f"{n:,} positions per row" + ("" if largest == cfg.student else f" of {largest}") + f" ({what})"
    lines = [f"layout ({cfg.backend}): every model loaded at the start on one device, held to the end"
             + (f"; a decode batch of {rows} rows holds {_gib(cache)} of KV cache at {held_at}" if cache else "")]
    weights = _total(list(loads.models.values()))
    held = None if weights is None or cache is None else weights + cache + _scorer_working(cfg, list(loads.models.values()))
    names = ["initial rollouts", *(["teacher contexts (solutions, summaries)"] if loads.artefact_ids else []),
             "teacher scoring", "targeted rollouts"]
    return _Memory(lines, [(phase, held) for phase in names], {},
                   "drop teachers, lower batch_size in student_args (the KV cache), or use the vllm backend")


def _generated(cfg: RunConfig, teachers: Sequence, artefact_ids: Sequence[str], length: int, n_min: int,
               n_q: int | None) -> tuple[list[str], int | None]:
    """The rollouts and tokens a run generates, per question and in all (upper bounds), and the total tokens
    (None: not bounded)."""
    paths = 2 * cfg.paths_per_outcome
    targeted, how = targeted_bound(cfg, length, n_min, len(teachers))
    artefact_rollouts, artefact_tokens = 0, 0
    for t in teachers:
        if t.solution_source != "student":
            artefact_rollouts += t.solution_attempts
            artefact_tokens += t.solution_attempts * (t.solution_max_new_tokens or length)
    for n, max_tokens in summaries(teachers, artefact_ids, paths, cfg.n_initial):
        artefact_rollouts += n
        artefact_tokens += n * max_tokens
    initial_tokens = cfg.n_initial * length
    targeted_text = (f"<= {targeted:,} ({how}; <= {targeted * length:,} tokens)" if targeted is not None
                     else f"not bounded without a budget ({how}; set budget=N to bound them)")
    lines = [f"per question: {cfg.n_initial:,} initial rollouts (<= {initial_tokens:,} tokens); targeted rollouts "
             f"{targeted_text}; {paths} paths x {len(teachers)} {plural(len(teachers), 'teacher')} scored; "
             + _contexts_text(teachers, artefact_tokens)]
    total_tokens = None
    if n_q is not None and targeted is not None:
        total_tokens = (initial_tokens + targeted * length + artefact_tokens) * n_q
        contexts = f" ({artefact_rollouts * n_q:,} of them solutions and summaries for teacher contexts)" if artefact_rollouts else ""
        lines.append(f"total: <= {(cfg.n_initial + targeted + artefact_rollouts) * n_q:,} rollouts{contexts}, <= {total_tokens:,} "
                     f"generated tokens ({length:,} per response at most; upper bounds: fewer targets qualify in a real run)")
    elif n_q is not None:
        lines.append(f"total: targeted rollouts not bounded without a budget; the rest <= "
                     f"{(cfg.n_initial + artefact_rollouts) * n_q:,} rollouts, "
                     f"<= {(initial_tokens + artefact_tokens) * n_q:,} generated tokens")
    return lines, total_tokens


def held_pass_bytes(score_top_k: int, n_teachers: int, vocab: int | None = None) -> int:
    """Bytes one position of a path holds in its scoring passes at most: the student's pass keeps its top
    ``score_top_k`` ids and the path token (an int64 id, a float32 log-probability each), each teacher's the union
    of both models' top ids and the path token (an id, two log-probabilities) and the float64 divergences; each
    pass one int64 offset. No more ids than the ``vocab``, where it is known."""
    from harness.core.stats import DIVERGENCES

    own, union = min(score_top_k + 1, vocab or score_top_k + 1), _union_ids(score_top_k, vocab)
    student = own * (8 + 4) + 8
    teacher = union * (8 + 4 + 4) + 8 + 8 * len(DIVERGENCES)
    return student + n_teachers * teacher


def _union_ids(score_top_k: int, vocab: int | None) -> int:
    """Ids a teacher's pass keeps per position at most: both models' top ids and the path token."""
    return min(2 * score_top_k + 1, vocab or 2 * score_top_k + 1)


def _held_passes(cfg: RunConfig, n_teachers: int, length: int, n_q: int | None, vocab: int | None) -> str:
    """Host memory of the forward passes over the paths: every pass is stored, a run holds `HELD_PASS_BYTES` of them
    at most (reading the others back from their shards when a phase asks for them) and one scoring call's passes
    besides. Upper bounds, at full-length responses."""
    from harness.pipeline import CALL_POSITIONS
    from harness.rundir import HELD_PASS_BYTES

    paths = 2 * cfg.paths_per_outcome
    per_question = paths * length * held_pass_bytes(cfg.score_top_k, n_teachers, vocab)
    teacher = held_pass_bytes(cfg.score_top_k, 1, vocab) - held_pass_bytes(cfg.score_top_k, 0, vocab)
    total = _gib(per_question) + " per question" if n_q is None else _gib(per_question * n_q)
    workers = cfg.num_workers if cfg.executor == "ray" else 1
    held, call = HELD_PASS_BYTES, max(CALL_POSITIONS * workers, length) * teacher
    if n_q is not None:
        held, call = min(per_question * n_q, held), min(per_question * n_q, call)
    return (f"host memory: the passes over the paths take <= {total} ({paths} paths x {1 + n_teachers} passes x "
            f"<= {length:,} positions per question, <= {_union_ids(cfg.score_top_k, vocab)} ids per position "
            f"(score_top_k {cfg.score_top_k})); held: <= {_gib(held)} of them (the rest read back from their shards) "
            f"and one scoring call's <= {_gib(call)}")


def _wall_time(total_tokens: int | None, throughput: float | None, workers: int, n_q: int | None) -> list[str]:
    """The wall-time line: the generated tokens over ``throughput`` per worker, or what is missing for it."""
    if throughput and total_tokens is not None:
        hours = total_tokens / (throughput * workers) / 3600
        if not math.isfinite(hours):
            return [f"wall time: beyond {_figure(1.7e308)} h at {_figure(throughput, 0)} generated tokens/s"]
        days = f" ({_figure(hours / 24)} days)" if hours >= 48 else ""
        rate = f"{_figure(throughput, 0)} generated tokens/s" + (f" per worker x {workers}" if workers > 1 else "")
        return [f"wall time: <= {_duration(hours)}{days} at {rate} "
                "(sampling; scoring adds 1-2 forward passes per path and teacher)"]  # 2: with a fill pass
    if total_tokens is not None:
        return ["wall time: give --throughput TOK/S or --measurements (bench/gpu_check.sh's JSON)"]
    if throughput:
        return ["wall time: not bounded: " + ("set budget=N to bound the targeted rollouts" if n_q is not None
                                              else "set limit=N (the task's question count is not known here)")]
    return []


def summaries(teachers, artefact_ids: Sequence[str], paths: int, n_initial: int) -> list[tuple[int, int]]:
    """(summaries at most, tokens each) per summariser setting, per question, as ``build_artefacts`` makes them:
    one of every solution a teacher of that setting may show. The student's own are those shown on any path
    (``shown_counts`` of each), distinct ones at most ``n_initial``;
    a named model's, its first correct and wrong ones."""
    from harness.teachers.artefacts import shown_counts, solution_key, summary_key

    shown = min(paths * sum(shown_counts(teachers)), n_initial)
    texts: dict[str, dict[str, int]] = {}  # summariser setting -> solution source -> solutions at most
    tokens: dict[str, int] = {}
    for t in teachers:
        if t.summarizer is None or t.summarizer not in artefact_ids:
            continue
        key = summary_key(t)
        source = "student" if t.solution_source == "student" else solution_key(t)
        n = shown if source == "student" else t.correct_solutions + t.wrong_solutions
        texts.setdefault(key, {})[source] = max(texts.get(key, {}).get(source, 0), n)
        tokens[key] = t.summary_max_new_tokens
    return [(sum(by_source.values()), tokens[key]) for key, by_source in texts.items()]


class PlanDoesNotFit(ConfigError):
    """A plan larger than the device: the one-line error, and the plan's lines to show before it."""

    def __init__(self, lines: list[str], message: str):
        super().__init__(message)
        self.lines = lines


def _scorer_working(cfg: RunConfig, models) -> float:
    """Working memory of transformers scoring: about ``40 x score_chunk x V`` bytes (the hf backend's
    logits, log-softmax and divergences of one chunk, in float32 and float64)."""
    vocab = max([m.vocab or 0 for m in models] + [0])
    options = cfg.student_args if cfg.backend == "hf" else dict(cfg.student_args.get("hf_options") or {})
    return 40.0 * int(options.get("score_chunk", 256)) * vocab


def throughput_from(path: str, cfg: RunConfig | None = None) -> float:
    """Sampled tokens/s from a ``bench/gpu_check.sh --json`` file: the best row's ``sampled_tok_s``, or for an
    hf run (``cfg``) the row of its ``batch_size``, else of the largest batch measured below it (a larger
    batch samples faster than the run will), else of the smallest; with ``cfg``, refused unless the file
    measured that run's student on its backend (a 0.6B student samples orders of magnitude slower than the
    toy one)."""
    from harness.safeio import read_json

    try:
        data = read_json(path, 1 << 20)  # a few rows of figures: a FIFO or a device is refused, not read forever
    except ConfigError as exc:
        raise ConfigError(f"--measurements {exc}") from None
    if cfg is not None:
        _check_measured(path, data, cfg)
    rows = data.get("rows", [data]) if isinstance(data, dict) else data  # a file of rows, or one row
    if cfg is not None and cfg.backend == "hf" and isinstance(rows, list):
        rows = _rows_at_batch(rows, int(dict(cfg.student_args).get("batch_size", 64)))
    values = [r.get("sampled_tok_s") for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
    found = [v for v in values if v is not None]
    values = [v for v in found if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf]
    if not values:
        what = f"no positive, finite sampled_tok_s in it (found {excerpt(found[0], 40)})" if found else "no sampled_tok_s in it"
        raise ConfigError(f"--measurements {path}: {what}; write it with bash bench/gpu_check.sh --json FILE")
    return float(max(values))


def _rows_at_batch(rows: list, batch: int) -> list:
    """The rows measured at ``batch``, else at the largest batch below it, else at the smallest; all rows when
    none names its batch."""
    sizes = sorted({r["batch"] for r in rows if isinstance(r, dict) and type(r.get("batch")) is int})
    if not sizes:
        return rows
    below = [b for b in sizes if b <= batch]
    chosen = below[-1] if below else sizes[0]
    return [r for r in rows if isinstance(r, dict) and r.get("batch") == chosen]


MEASURED_PROMPT_TOKENS = 24  # bench/gpu_check.py's prompt length (it reads it from here)
MEASURED_NEW_TOKENS = 64  # its completions, unless --new-tokens (files written before it say nothing)


def length_note(path: str, cfg: RunConfig) -> str | None:
    """A line saying the measured rate overstates this run's, when ``path`` measured completions far shorter
    than the run's responses (each token of a long response attends to a longer context), else None."""
    from harness.safeio import read_json

    data = read_json(path, 1 << 20)
    measured = data.get("new_tokens", MEASURED_NEW_TOKENS) if isinstance(data, dict) else MEASURED_NEW_TOKENS
    if not isinstance(measured, int) or isinstance(measured, bool) or measured < 1:
        return None
    length = response_length(cfg)
    if length <= 4 * (MEASURED_PROMPT_TOKENS + measured):
        return None
    return (f"note: {path} measured {measured}-token completions of {MEASURED_PROMPT_TOKENS}-token prompts; this run's "
            f"responses run to {length:,} tokens, each sampled over a longer context, so the wall time above is a "
            f"lower bound (measure at length: bash bench/gpu_check.sh --quick --student {cfg.student}"
            + (" --backend vllm" if cfg.backend == "vllm" else "") + f" --new-tokens {length} --json {path})")


def _check_measured(path: str, data, cfg: RunConfig) -> None:
    from harness.config import local_path

    measure = (f"measure it: bash bench/gpu_check.sh --student {cfg.student}"
               + (" --backend vllm" if cfg.backend == "vllm" else "") + f" --json {path}")
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, str):
        raise ConfigError(f"--measurements {path}: does not name the student it measured; {measure}")
    same = model == cfg.student or (Path(local_path(model)).is_dir() and Path(local_path(cfg.student)).is_dir()
                                    and Path(local_path(model)).resolve() == Path(local_path(cfg.student)).resolve())
    if not same:
        raise ConfigError(f"--measurements {path}: measured {model}, and this run's student is {cfg.student}; {measure}")
    if data.get("backend") not in (None, cfg.backend):
        raise ConfigError(f"--measurements {path}: measured backend {data.get('backend')}, and this run uses {cfg.backend}; "
                          f"{measure}")


def plan_for(cfg: RunConfig, gpu_memory: float | None = None, throughput: float | None = None,
             run_dir: str | Path | None = None) -> Plan:
    """The plan of ``cfg``; refused, as `odiag run` would refuse it, for its settings, teachers, models and
    backend options. Where the task can be loaded here (the synthetic task, or a local student's tokenizer),
    its checks run too, and its question count, ``n_min`` and response length are the run's. With
    ``run_dir``, a run directory, the teachers added to it (``odiag add-teacher``) count too: a run scores
    them on every question it grows by."""
    from harness.config import local_path
    from harness.modelfiles import is_local_path
    from harness.plan import check_config, engine_positions, make_plan as checked_plan

    added = added_teachers(run_dir) if run_dir is not None else []

    # a student named by a path that is no directory here is refused as run refuses it (a hub id is planned unread)
    if cfg.task == "synthetic" or Path(local_path(cfg.student)).is_dir() or is_local_path(cfg.student):
        run_plan = checked_plan(cfg, installed=False)  # every check of run, the task's too, the tokenizer at hand
        task = run_plan.task
        prompt = None
        if cfg.task == "synthetic":  # questions are made, not read: any limit is met; responses end at the horizon
            questions, length = len(task.questions(cfg.limit)), min(run_plan.max_new_tokens, task.max_new_tokens)
        else:
            questions = task.n_available if cfg.limit is None else min(cfg.limit, task.n_available)
            length = run_plan.max_new_tokens
            prompt = engine_positions(cfg, task)[0] or None
        return make_plan(cfg, [r.config for r in run_plan.teachers] + added, gpu_memory, throughput,
                         questions=questions, n_min=run_plan.n_min, length=length, prompt=prompt)
    teachers = [r.config for r in check_config(cfg)] + added
    return make_plan(cfg, teachers, gpu_memory, throughput, n_min=cfg.n_min or _yaml_n_min(cfg.task))


def added_teachers(run_dir: str | Path) -> list:
    """The teachers added to the run directory ``run_dir`` (none where it holds no run yet)."""
    from harness.plan import ADDED, recorded_teacher
    from harness.rundir import RunDir

    root = Path(run_dir)
    if not (root / "config.json").is_file():
        return []
    fix = f"or remove it with odiag rescore {shell_word(root)} --drop-teacher NAME"
    return [recorded_teacher(t, str(root), fix).config for t in RunDir.read_saved(root)["teachers"]
            if isinstance(t, dict) and t.get("role") == ADDED]


def _yaml_n_min(task: str) -> int:
    """The task YAML's ``metadata.odiag.n_min`` (20 where it sets none)."""
    from harness.lmeval_bridge import task_yaml

    metadata = task_yaml(task).get("metadata")
    odiag = metadata.get("odiag") if isinstance(metadata, dict) else None
    value = odiag.get("n_min", 20) if isinstance(odiag, dict) else 20
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 20


def main_plan(args) -> int:
    """``odiag plan``: print the plan; exit 2 with one line when it does not fit ``--gpu-memory``."""
    import sys

    from harness.config import naming_where_set, resolve_run_config

    cfg = resolve_run_config(args.config, args.set)
    throughput = args.throughput or (throughput_from(args.measurements, cfg) if args.measurements else None)
    # a run directory's config.yaml: the run grows with the teachers added to it too
    run_dir = Path(args.config).parent if args.config and (Path(args.config).parent / "config.json").is_file() else None
    try:
        with naming_where_set(args.config, args.set):
            plan = plan_for(cfg, args.gpu_memory, throughput, run_dir)
    except PlanDoesNotFit as exc:
        print("\n".join(exc.lines))
        sys.stdout.flush()
        raise
    print("\n".join(plan.lines))
    if args.measurements and not args.throughput and (note := length_note(args.measurements, cfg)):
        print(note)
    return 0
