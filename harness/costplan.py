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
Targeted rollouts are bounded as README's "Sizing a run" bounds them: the paper's allocation
enriches, per path and depth window, at most ``2 k_window`` targets to ``n_target`` visits each
(existing visits count), over the windows of a response of the full length; a targeted rollout
generates at most the response length. These are upper bounds (a run enriches fewer nodes and children where fewer
qualify); ``budget`` caps the rollouts per question.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

from harness.config import ConfigError, RunConfig
from harness.safeio import excerpt
from harness.wording import plural

GiB = 2**30
# hub ids: (parameters, layers, KV heads, head size, vocabulary), from the published checkpoints
KNOWN_MODELS = {
    "Qwen/Qwen3-0.6B": (0.752e9, 28, 8, 128, 151936),
    "Qwen/Qwen3-1.7B": (2.03e9, 28, 8, 128, 151936),
    "Qwen/Qwen3-4B": (4.02e9, 36, 8, 128, 151936),
    "Qwen/Qwen3-8B": (8.19e9, 36, 8, 128, 151936),
    "Qwen/Qwen3-14B": (14.77e9, 40, 8, 128, 151936),
    "Qwen/Qwen3-32B": (32.76e9, 64, 8, 128, 151936),
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

    @property
    def weights(self) -> float | None:
        return None if self.parameters is None else self.parameters * self.bytes_per_parameter


def _from_config(path: Path) -> tuple | None:
    try:
        c = json.loads((path / "config.json").read_text())
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
    return float(layers * per_layer + embeddings + h), layers, kv, head_dim, vocab


def describe_model(model_id: str, role: str, dtype: str) -> Model:
    """Parameter count and shape of ``model_id`` (a local directory's config.json, or a known hub id)."""
    local = Path(model_id)
    shape = _from_config(local) if local.is_dir() else KNOWN_MODELS.get(model_id)
    stored = None
    if local.is_dir():
        try:
            stored = json.loads((local / "config.json").read_text()).get("dtype") or json.loads(
                (local / "config.json").read_text()).get("torch_dtype")
        except (OSError, ValueError):
            stored = None
    width = DTYPE_BYTES.get(dtype) or DTYPE_BYTES.get(str(stored), 2)  # auto: the checkpoint's (Qwen3: bfloat16)
    if shape is None:
        return Model(model_id, role, None, width)
    return Model(model_id, role, shape[0], width, *shape[1:])


def response_length(cfg: RunConfig) -> int:
    """``max_new_tokens``, or the task YAML's ``max_gen_toks`` (the synthetic task: 16)."""
    if cfg.max_new_tokens:
        return cfg.max_new_tokens
    if cfg.task == "synthetic":
        return 16
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
    return f"{x / GiB:.1f} GiB" if x >= 0.05 * GiB or x == 0 else f"{x / 2**20:.1f} MiB"


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


def make_plan(cfg: RunConfig, teachers: Sequence, gpu_memory: float | None = None, throughput: float | None = None,
              questions: int | None = None) -> Plan:
    """The plan of ``cfg`` with its loaded ``teachers``; ``gpu_memory`` in GiB, ``throughput`` in
    generated tokens per second; ``questions`` when ``limit`` is None (else the limit)."""
    from harness.teachers import TEXT_SUMMARIZERS

    student = describe_model(cfg.student, "student", cfg.dtype) if cfg.task != "synthetic" else None
    readers: dict[str, list[str]] = {}  # every teacher that reads a model, named once with it
    for t in teachers:
        if not t.is_self:
            readers.setdefault(t.model, []).append(t.name)
    externals = {t.model: describe_model(t.model, f"{plural(len(readers[t.model]), 'teacher')} {', '.join(readers[t.model])}",
                                         t.dtype) for t in teachers if not t.is_self}
    artefact = {}
    roles: dict[str, list[str]] = {}
    for t in teachers:
        if t.solution_source != "student":
            roles.setdefault(t.solution_source, []).append(f"solutions of {t.name}")
            artefact.setdefault(t.solution_source, t.dtype)
        if t.summarizer is not None and t.summarizer not in TEXT_SUMMARIZERS:
            roles.setdefault(t.summarizer, []).append(f"summaries of {t.name}")
            artefact.setdefault(t.summarizer, t.dtype)
    artefact = {m: describe_model(m, ", ".join(roles[m]), dtype) for m, dtype in artefact.items()}
    length = response_length(cfg)
    n_q = cfg.limit if cfg.limit is not None else questions
    lines = [f"plan: {cfg.task}, student {cfg.student} ({cfg.dtype}), backend {cfg.backend}, "
             f"{len(teachers)} {plural(len(teachers), 'teacher')}, "
             f"{n_q if n_q is not None else '?'} {plural(n_q, 'question')}"]
    lines.append("models:")
    for m in [x for x in [student] if x] + list(externals.values()) + list(artefact.values()):
        size = "size unknown" if m.parameters is None else f"{parameters_text(m.parameters)} parameters, {_gib(m.weights)}"
        lines.append(f"  {m.id} ({size}): {m.role}")

    # memory per phase ---------------------------------------------------------------------------
    gpu = None if gpu_memory is None else gpu_memory * GiB
    options = dict(cfg.student_args)
    engine_options = dict(options.get("engine_options") or {})
    phases: list[tuple[str, float | None]] = []
    refusals: dict[str, str] = {}  # phase -> why an engine cannot hold its model
    scored = [m for m in [student, *externals.values()] if m]
    everything = scored + list(artefact.values())

    def total(models):
        sizes = [m.weights for m in models]
        return None if any(s is None for s in sizes) else float(sum(sizes))

    if cfg.backend == "vllm":
        score_with = options.get("score_with", "hf")
        util = options.get("gpu_memory_utilization", engine_options.get("gpu_memory_utilization"))
        if util is None:
            util = 0.5 if score_with == "hf" else 0.85 / max(len(everything), 1)
        engine = None if gpu is None else util * gpu
        lines.append(f"layout (vllm, score_with={score_with}): one engine per sampling model, each reserving "
                     f"gpu_memory_utilization={util:g} of the device ("
                     + (f"{_gib(engine)} each" if engine else "without --gpu-memory: weights + 1.5 GiB each") + "), held to the end;")
        if score_with == "hf":
            lines.append("  the exact scorer loads every model in transformers on the same device at the first "
                         "scoring call, held to the end")
        held = 0.0
        order = [("initial rollouts", [student] if student else [], [])]
        if artefact:
            order.append(("teacher contexts (solutions, summaries)", list(artefact.values()), []))
        order.append(("teacher scoring", [], everything if score_with == "hf" else list(externals.values())))
        order.append(("targeted rollouts", [], []))
        known = True
        for phase, engines, scorer in order:
            for m in engines:
                if gpu is not None and m.weights is not None and m.weights + ENGINE_OVERHEAD > engine:
                    refusals.setdefault(phase, f"plan: phase '{phase}': {m.id} needs {_gib(m.weights + ENGINE_OVERHEAD)} "
                                        f"but its engine gets {_gib(engine)} (gpu_memory_utilization={util:g} of "
                                        f"{gpu_memory:g} GiB); raise it in student_args or the teacher's model_args")
                held += engine if engine is not None else (m.weights or 0) + ENGINE_OVERHEAD
                known &= engine is not None or m.weights is not None
            if scorer:
                weights = total(scorer)
                known &= weights is not None
                held += (weights or 0) + _scorer_working(cfg, scorer)
            phases.append((phase, held if known else None))
    else:
        lines.append(f"layout ({cfg.backend}): every model loaded at the start on one device, held to the end")
        weights = total(everything)
        held = None if weights is None else weights + _scorer_working(cfg, everything)
        phases = [("initial rollouts", held), ("teacher contexts (solutions, summaries)", held),
                  ("teacher scoring", held), ("targeted rollouts", held)] if artefact else [
            ("initial rollouts", held), ("teacher scoring", held), ("targeted rollouts", held)]
    lines.append("memory per phase (held at its end):")
    for phase, size in phases:
        fits = "" if gpu is None or size is None else ("  fits" if size <= gpu else f"  DOES NOT FIT {gpu_memory:g} GiB")
        lines.append(f"  {phase:<40} {_gib(size)}{fits}")

    # rollouts and tokens ------------------------------------------------------------------------
    paths = 2 * cfg.paths_per_outcome
    targets = paths * windows(length, cfg.window) * 2 * cfg.k_window
    targeted = targets * cfg.n_target
    if cfg.budget is not None:
        targeted = min(targeted, cfg.budget)
    initial_tokens = cfg.n_initial * length
    targeted_tokens = targeted * length
    artefact_tokens = 0.0
    for t in teachers:
        if t.solution_source != "student":
            artefact_tokens += t.solution_attempts * (t.solution_max_new_tokens or length)
        if t.summarizer is not None and t.summarizer in artefact:
            artefact_tokens += (t.correct_solutions + t.wrong_solutions) * t.summary_max_new_tokens
    per_q = initial_tokens + targeted_tokens + artefact_tokens
    lines.append(f"per question: {cfg.n_initial} initial rollouts (<= {initial_tokens:,.0f} tokens); targeted rollouts "
                 f"<= {targeted:,.0f} ({targets} targets x n_target {cfg.n_target}"
                 f"{'' if cfg.budget is None else ', budget'}; <= {targeted_tokens:,.0f} tokens); {paths} paths x "
                 f"{len(teachers)} {plural(len(teachers), 'teacher')} scored; "
                 + _contexts_text(teachers, artefact_tokens))
    total_tokens = per_q * n_q if n_q is not None else None
    if total_tokens is not None:
        lines.append(f"total: <= {(cfg.n_initial + targeted) * n_q:,.0f} rollouts, <= {total_tokens:,.0f} generated tokens "
                     f"({length:,} per response at most; upper bounds: fewer targets qualify in a real run)")
    if throughput and total_tokens is not None:
        hours = total_tokens / throughput / 3600
        days = f" ({_figure(hours / 24)} days)" if hours >= 48 else ""
        lines.append(f"wall time: <= {_figure(hours)} h{days} at {_figure(throughput, 0)} generated tokens/s "
                     "(sampling; scoring adds 1-2 forward passes per path and teacher)")  # 2: with a fill pass
    elif total_tokens is not None:
        lines.append("wall time: give --throughput TOK/S or --measurements (bench/gpu_check.sh's JSON)")
    if gpu is not None:
        for phase, size in phases:
            if phase in refusals:
                raise PlanDoesNotFit(lines, refusals[phase])
            if size is not None and size > gpu:
                raise PlanDoesNotFit(lines, f"plan: phase '{phase}' needs {_gib(size)}, more than --gpu-memory "
                                            f"{gpu_memory:g} GiB (see `odiag plan`; lower gpu_memory_utilization, "
                                            "drop teachers, or use score_with: vllm)")
    return Plan(lines, phases, total_tokens or 0.0)


class PlanDoesNotFit(ConfigError):
    """A plan larger than the device: the one-line error, and the plan's lines to show before it."""

    def __init__(self, lines: list[str], message: str):
        super().__init__(message)
        self.lines = lines


def _scorer_working(cfg: RunConfig, models) -> float:
    """Working memory of transformers scoring: float32 logits and log-softmax of a score chunk."""
    vocab = max([m.vocab or 0 for m in models] + [0])
    chunk = int(dict(cfg.student_args.get("hf_options") or {}).get("score_chunk", 256))
    return 3.0 * chunk * vocab * 4


def throughput_from(path: str) -> float:
    """Sampled tokens/s from a ``bench/gpu_check.sh --json`` file (the best row's ``sampled_tok_s``)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--measurements {path}: not a readable JSON file ({exc})") from None
    rows = data.get("rows", [data]) if isinstance(data, dict) else data  # a file of rows, or one row
    values = [r.get("sampled_tok_s") for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
    found = [v for v in values if v is not None]
    values = [v for v in found if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf]
    if not values:
        what = f"no positive, finite sampled_tok_s in it (found {excerpt(found[0], 40)})" if found else "no sampled_tok_s in it"
        raise ConfigError(f"--measurements {path}: {what}; write it with bash bench/gpu_check.sh --json FILE")
    return float(max(values))


def plan_for(cfg: RunConfig, gpu_memory: float | None = None, throughput: float | None = None) -> Plan:
    """The plan of ``cfg``; refused, as `odiag run` would refuse it, when the backend cannot run its task,
    teachers or temperatures."""
    from harness.config import local_path
    from harness.plan import backend_options, check_backend, model_specs
    from harness.teachers import load_teacher

    teachers = [load_teacher(t) for t in cfg.teachers]
    if cfg.task != "synthetic" and Path(local_path(cfg.student)).is_dir():
        from harness.plan import make_plan as checked_plan

        checked_plan(cfg)  # every check of run, the task's too with the student's tokenizer at hand
    else:
        model_specs(cfg, teachers)  # one model id, one set of settings
        check_backend(cfg, teachers)
        backend_options(cfg, teachers)  # student_args and the teachers' model_args, as the run checks them
    return make_plan(cfg, teachers, gpu_memory, throughput)


def main_plan(args) -> int:
    """``odiag plan``: print the plan; exit 2 with one line when it does not fit ``--gpu-memory``."""
    import sys

    from harness.config import resolve_run_config

    cfg = resolve_run_config(args.config, args.set)
    throughput = args.throughput or (throughput_from(args.measurements) if args.measurements else None)
    try:
        plan = plan_for(cfg, args.gpu_memory, throughput)
    except PlanDoesNotFit as exc:
        print("\n".join(exc.lines))
        sys.stdout.flush()
        raise
    print("\n".join(plan.lines))
    return 0
