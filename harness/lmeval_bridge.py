"""odiag inside lm-evaluation-harness: ``lm_eval --include_path "$(odiag tasks-dir)" --tasks odiag_boolq``.

Built against lm-eval 0.4.13, whose ``evaluate()`` makes one pass: each task emits its requests,
the model answers them with one ``getattr(lm, request_type)(instances)`` call per request type, and
each task turns its answers into metrics. Tasks never see the model. The diagnostic is adaptive
(targeted rollouts are scored between rounds), so it cannot be cut into lm-eval's stock requests;
instead each task YAML names `DiagnosticTask` (``class: !function odiag_utils.DiagnosticTask``),
which emits one ``odiag_diagnose`` request per question (lm-eval does not validate request types),
and this module gives lm-eval's own ``hf`` and ``vllm`` models an ``odiag_diagnose`` method: it
wraps the model and tokenizer they already loaded in an odiag backend and runs
`harness.pipeline.run` on exactly the questions lm-eval chose, in one call, with as many rounds
as the run needs. Each request's answer is that question's record: per teacher x algorithm, its
alignment (the mean over its paths of the path means), its incorrect-minus-correct difference and
its teacher advantage, as SPEC §5 defines them, so lm-eval's mean over questions is odiag's
per-teacher mean. The run directory is written as ``odiag run`` writes it.

odiag settings come from ``--metadata`` (any `RunConfig` key lm-eval does not decide, plus
``out`` and ``site``); lm-eval merges ``--model_args`` into the same dict, so a model argument is
accepted there too (for ``--model vllm``: vLLM's own engine arguments, which lm-eval passes to the
engine), and anything else is an error. ``--gen_kwargs``: ``temperature`` is the sampling
temperature T (unless ``--metadata`` sets ``temperature``) and ``max_gen_toks`` the response length
limit (unless it sets ``max_new_tokens``); ``do_sample`` must stay true and ``until`` is the task's;
any other key (``top_p``, ``top_k``, ...) would truncate π and is refused in one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from lm_eval.api.instance import Instance
from lm_eval.api.metrics import mean
from lm_eval.api.task import ConfigurableTask

from harness.config import ConfigError, RunConfig, anchored, build
from harness.errors import OdiagError, StudentArgsError, out_of_memory
from harness.tasks import TASKS_DIR
from harness.wording import plural

log = logging.getLogger(__name__)

REQUEST_TYPE = "odiag_diagnose"
# what lm-eval itself decides (the task, the loaded model, the documents), or only `odiag run` does
DECIDED = {
    "task": "the --tasks argument",
    "backend": "the --model argument",
    "student": "--model_args pretrained=...",
    "student_revision": "--model_args revision=...",
    "limit": "lm-eval's --limit",
    "data_files": "the task's dataset (use `odiag run` for a local copy)",
    "executor": "a single process (use `odiag run --set executor=ray` to spread a run)",
    "ray_address": "a single process (use `odiag run` on a Ray cluster)",
    "num_workers": "a single process (use `odiag run` on a Ray cluster)",
}
EXTRA = {
    "out": "run directory (default runs/lmeval/<task>-<config hash>, with -docs<digest> for --samples)",
    "site": "leaderboard site directory to (re)build from the run directory; none by default",
}
LM_EVAL_KEYS = {"version", "config_source", "odiag"}  # lm-eval's own and the YAML's metadata
# --gen_kwargs keys odiag reads (as these RunConfig keys) or that leave π untouched; others are refused
GEN_KWARGS = {"temperature": "temperature", "max_gen_toks": "max_new_tokens"}
LM_EVAL_SEEDS = [0, 1234, 1234, 1234]  # lm-eval's --seed by default: Python's, numpy's, torch's, the few-shot sampler's
LM_EVAL_FEWSHOT_SEED = LM_EVAL_SEEDS[3]
UNSEEDED = ("odiag's draws are seeded by its own run seed, which lm-eval's --seed does not reach (it seeds lm-eval's "
            "few-shot sampler and the libraries' global generators), and lm-eval would record a seed the run never "
            "used; give the run's seed as --metadata key 'seed' (--metadata '{\"seed\": N, ...}')")
NEUTRAL_GEN_KWARGS = {"until": None, "do_sample": True, "top_p": 1.0, "top_k": (None, 0, -1), "min_p": 0.0}
METRICS = ("alignment", "incorrect_minus_correct", "teacher_advantage")
NO_DECISION_POINT = "no_decision_point"  # a metric only a run without decision points has: why, in one line
LM_EVAL_SUBCOMMANDS = ("run", "ls", "validate")
# lm-eval's model classes odiag runs under (its aliases of them too), and the backend each is
SUPPORTED = {"HFLM": "hf", "VLLM": "vllm"}
UNSUPPORTED = ("odiag's diagnostic runs under lm-eval's hf and vllm models only (they load the student it samples "
               "and scores), not a model class of its own")
# why lm-eval's request cache is refused: a cached request carries the task, and its settings, of the command that
# wrote it
CACHED = ("odiag's requests carry the run's settings, which cached ones would take from an earlier command; leave it "
          "out (the same command run again resumes from its run directory)")


@dataclasses.dataclass(frozen=True)
class DiagnoseRequest:
    """What an ``odiag_diagnose`` request carries besides the prompt: the task that made it."""

    task: DiagnosticTask

    def __repr__(self) -> str:  # lm-eval writes request arguments into its samples with str()
        return f"odiag_diagnose({self.task.config.task})"


def metric_name(measure: str, teacher: str, algorithm: str) -> str:
    """``alignment/self-1c/gkd``: one lm-eval metric per measure x teacher x algorithm."""
    return f"{measure}/{teacher}/{algorithm}"


def settings(metadata: Mapping, model_keys: Sequence[str] = (), where: str = "--metadata") -> dict:
    """The odiag settings of a task's merged metadata; unknown keys are a one-line ConfigError."""
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    out = {}
    for key, value in metadata.items():
        if key in LM_EVAL_KEYS or (key in model_keys and key not in fields):
            continue
        if key in DECIDED and key not in model_keys:
            raise ConfigError(f"{where}: key {key!r} is set by {DECIDED[key]} under lm-eval")
        if key in fields or key in EXTRA:
            out[key] = value
        elif key not in DECIDED:
            valid = sorted((fields - set(DECIDED)) | set(EXTRA))
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}; {hint}odiag keys are {valid}")
    return out


def metadata_config(metadata: Mapping, model_keys: Sequence[str], where: str, complete: bool = True) -> RunConfig:
    """The odiag keys of ``metadata`` as a RunConfig (lm-eval's own keys filled in later): unknown keys,
    bad values and, when it is ``complete`` (not only the command line's part), missing teachers are a
    one-line ConfigError."""
    run = settings(metadata, model_keys, where)
    if "teachers" not in run and complete:
        raise ConfigError(f"{where}: odiag needs its teachers, e.g. --metadata '{{\"teachers\": [\"self-1c\"]}}'")
    for key, unset in (("out", "the default runs/lmeval/<task>-<config hash>"), ("site", "no site")):
        if key in run and not (isinstance(run[key], str) and run[key]):  # named now, before the model loads
            raise ConfigError(f"{where}: key {key!r} must be a directory path, got {run[key]!r} (leave it out for {unset})")
    if run.get("out"):
        from harness.leaderboard import check_writable
        from harness.rundir import check_not_a_file

        check_not_a_file(Path(run["out"]), f"{where}: key 'out'")  # as the run would refuse it, before the model loads
        check_writable(Path(run["out"]), f"{where}: key 'out'")
    if run.get("site"):
        from harness.leaderboard import check_site_dir

        out = Path(str(run["out"])) if run.get("out") else None
        check_site_dir(Path(str(run["site"])), f"{where}: site", out)  # before the model loads and the run, not after
    return build(RunConfig, {k: v for k, v in run.items() if k not in EXTRA and k not in DECIDED}, where)


class DiagnosticTask(ConfigurableTask):
    """An odiag task YAML as lm-eval runs it: one ``odiag_diagnose`` request per question.

    Everything else (data set, ``process_docs``, ``doc_to_text``, targets) is the YAML's, as an
    ordinary ``ConfigurableTask`` reads it; odiag's own `LMEvalTask` loads the same YAML through
    lm-eval and only uses those parts.
    """

    def __init__(self, config: dict | None = None, **kwargs):
        config = {k: v for k, v in (config or {}).items() if k != "class"}
        super().__init__(config=config, **kwargs)

    # lm-eval options the diagnostic cannot honour are refused, not ignored -----------------------

    def set_config(self, key: str, value, update: bool = False) -> None:
        if key == "generation_kwargs" and update:  # lm-eval's --gen_kwargs
            # checked here, before any request; the values are read from generation_kwargs in run_config
            try:
                generation_settings(value, {}, f"task {self.config.task}", _yaml_generation_kwargs(self.config.task))
            except ConfigError as exc:
                refuse(str(exc))
        if key == "num_fewshot" and value not in (None, 0):
            refuse(f"task {self.config.task}: --num_fewshot {value}: odiag's prompts are zero-shot "
                   "(a diagnostic of the student's own prompt)")
        super().set_config(key, value, update)

    def set_fewshot_seed(self, seed: int | None = None) -> None:
        self.lm_eval_seed = seed  # lm-eval's --seed reaches a task only as this: read in run_config
        super().set_fewshot_seed(seed)

    def get_config(self, key: str):
        # lm-eval skips --num_fewshot without a word for a task whose YAML says 0; reporting no
        # default makes it call set_config, where a non-zero value is refused
        if key == "num_fewshot" and getattr(self._config, key, None) == 0:
            return None
        return super().get_config(key)

    def build_all_requests(self, *args, **kwargs):
        where = f"task {self.config.task}"
        if kwargs.get("cache_requests") or kwargs.get("rewrite_requests_cache"):
            refuse(f"{where}: --cache_requests: {CACHED}")
        if kwargs.get("apply_chat_template"):
            refuse(f"{where}: --apply_chat_template: odiag renders every prompt with the student's own "
                   "chat template already (tasks/*.yaml metadata.odiag.thinking sets its thinking mode)")
        if kwargs.get("system_instruction"):
            refuse(f"{where}: --system_instruction: odiag's prompts are the task's user turn only; "
                   "put the instruction in the task YAML's doc_to_text")
        if kwargs.get("fewshot_as_multiturn"):
            refuse(f"{where}: --fewshot_as_multiturn: odiag's prompts are zero-shot")
        return super().build_all_requests(*args, **kwargs)

    @functools.cached_property
    def _run_settings(self) -> RunConfig:
        """The odiag keys of the metadata as a RunConfig (lm-eval's own keys filled in later); a bad key or
        value is one line and exit code 2 under plain ``lm_eval`` too (``odiag eval`` checks them first)."""
        try:
            return metadata_config(self.config.metadata or {}, _model_argument_names(), f"task {self.config.task}: --metadata")
        except OdiagError as exc:
            refuse(str(exc))

    def construct_requests(self, doc: dict, ctx, **kwargs) -> Instance:
        kwargs.pop("apply_chat_template", None)  # refused in build_all_requests when set
        kwargs.pop("chat_template", None)
        return Instance(request_type=REQUEST_TYPE, doc=doc, arguments=(ctx, DiagnoseRequest(self)), idx=0, **kwargs)

    def metric_names(self) -> list[str]:
        cfg = self._run_settings
        teachers = [_teacher_name(t) for t in cfg.teachers]
        return [metric_name(m, t, a) for m in METRICS for t in teachers for a in cfg.algorithms]

    def process_results(self, doc: dict, results: list) -> dict[str, float | str]:
        """A question's record (JSON, as ``--log_samples`` writes it) -> its metric values; a value the
        question does not define is left out. A run without decision points gives one value instead:
        why, with the counts, so that lm-eval's table says it in one line."""
        (record,) = results
        record = json.loads(record) if isinstance(record, str) else record
        if record.get(NO_DECISION_POINT):
            return {NO_DECISION_POINT: record[NO_DECISION_POINT]}
        return {k: v for k, v in record["metrics"].items() if v is not None}

    def aggregation(self) -> dict:
        # mean: lm-eval's closed-form stderr applies; the reason is the run's, the same for every question
        return {name: mean for name in self.metric_names()} | {NO_DECISION_POINT: _first}

    def higher_is_better(self) -> dict:
        # every metric: incorrect-minus-correct above 0 is a teacher aligned best where the student fails
        return dict.fromkeys(self.metric_names(), True) | {NO_DECISION_POINT: None}


def _first(items: list):
    return items[0] if items else None


def refuse(message: str) -> None:
    """An lm-eval option odiag cannot honour: one ``odiag: error:`` line and exit code 2, also when
    the task runs under plain ``lm_eval`` (whose own error path would print a traceback)."""
    line = " ".join(str(message).split())  # one line, whatever the message held
    print(f"odiag: error: {line}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _teacher_name(teacher: str) -> str:
    from harness.teachers import load_teacher

    return load_teacher(teacher).name


def _model_argument_names(lm=None) -> set[str]:
    """Keys lm-eval may have merged into the metadata from ``--model_args``: the model classes' parameters."""
    names = set()
    for module, cls in (("huggingface", "HFLM"), ("vllm_causallms", "VLLM")):
        try:
            model = getattr(importlib.import_module(f"lm_eval.models.{module}"), cls)
        except ImportError:  # lm-eval's hf model needs accelerate; odiag's own runs do not
            continue
        for fn in (model.__init__, getattr(model, "_create_model", model.__init__)):
            names |= {p for p in inspect.signature(fn).parameters if p not in ("self", "kwargs")}
        if cls == "VLLM":  # lm-eval passes vLLM's own engine arguments through to the engine
            from harness.backends import engine_argument_names

            names |= engine_argument_names()
    names |= set(getattr(lm, "model_args", None) or {})  # vLLM keeps every engine argument
    return names


def task_yaml(task: str) -> dict:
    """odiag's task YAML ``task`` as written, its ``!function`` tags left unread ({} for another task)."""
    import yaml

    from harness.tasks import read_task_yaml

    try:
        data = read_task_yaml(TASKS_DIR / f"{task}.yaml")
    except (OSError, ValueError, yaml.YAMLError):  # UnicodeDecodeError is a ValueError
        return {}
    return data if isinstance(data, dict) else {}


def _yaml_generation_kwargs(task: str) -> dict:
    """The ``generation_kwargs`` written in odiag's task YAML ``task`` ({} for another task)."""
    kwargs = task_yaml(task).get("generation_kwargs")
    return dict(kwargs) if isinstance(kwargs, dict) else {}


def generation_settings(generation_kwargs: Mapping | None, run: Mapping, where: str, written: Mapping = (),
                        warn: bool = False, given: bool = True) -> dict:
    """RunConfig keys from the task's ``generation_kwargs`` (the YAML's, updated by ``--gen_kwargs``):
    ``temperature`` and ``max_gen_toks`` unless ``run`` (the metadata) sets them (a length equal to
    the YAML's own, ``written``, is left to the task, as ``odiag run`` leaves it); anything that
    would reshape π is a one-line ConfigError. ``warn``: say when the metadata's value is taken over another
    generation_kwargs value (lm-eval's own results record that one). ``given``: the values are --gen_kwargs' own
    (False: the task's merged ones, whose ``until`` lm-eval fills in itself where the YAML names none)."""
    out = {}
    written = dict(written)
    for key, value in (generation_kwargs or {}).items():
        if key in GEN_KWARGS:
            field = GEN_KWARGS[key]
            if warn and field in run and value != run[field]:
                log.warning("%s: odiag runs with --metadata's %s %s; lm-eval's generation_kwargs, which its results "
                            "record, say %s %s", where, field, run[field], key, value)
            if field not in run and not (field == "max_new_tokens" and value == written.get(key)):
                # typed and range-checked as the field itself, the error naming the --gen_kwargs key
                out[field] = getattr(build(RunConfig, {field: value}, where, {field: f"{where}: --gen_kwargs {key}"}), field)
            continue
        if key == "until":  # from --gen_kwargs (``given``): lm-eval fills in its own for a YAML that names none
            if not given or value is None or _stops(value) == _stops(written.get("until")):
                continue
            raise ConfigError(f"{where}: --gen_kwargs until={value!r}: odiag ends a response at the student's own "
                              "end-of-turn tokens and judges it whole (a stop string would cut it short); leave until "
                              "to the task's YAML")
        neutral = NEUTRAL_GEN_KWARGS.get(key, ())
        if value == neutral or (isinstance(neutral, tuple) and value in neutral):
            continue
        raise ConfigError(f"{where}: --gen_kwargs {key}={value!r} would not sample from the student's distribution; "
                          "odiag reads only temperature and max_gen_toks (and takes sampling settings that leave the "
                          "distribution as it is, such as do_sample=true)")
    return out


def _one_out(tasks: Sequence[str]) -> ConfigError:
    """One --metadata 'out' for several odiag tasks, each a run of its own."""
    return ConfigError(f"tasks {', '.join(tasks)}: --metadata key 'out' names one run directory for {len(tasks)} odiag "
                       "tasks, and each task is a run of its own: leave 'out' out (each task's run goes to "
                       "runs/lmeval/<task>-<config hash>) or run one task per command")


def _stops(until) -> list | None:
    """Stop strings as lm-eval reads them: one string is a list of one."""
    return [until] if isinstance(until, str) else until


# the model side ----------------------------------------------------------------------------------


def _check_supported(lm) -> None:
    if getattr(lm, "world_size", 1) > 1 or int(getattr(lm, "data_parallel_size", 1) or 1) > 1:
        raise ConfigError(
            f"{type(lm).__name__}: odiag's diagnostic under lm-eval runs on one process and one engine "
            "(no data parallelism); use `odiag run --set executor=ray` to spread a run"
        )
    if type(lm).__name__ not in SUPPORTED:  # a subclass of lm-eval's hf model (steered, multimodal, ...) inherits the method
        raise ConfigError(f"{type(lm).__name__}: {UNSUPPORTED}")


def _student(lm) -> tuple[str, str | None]:
    """The student's checkpoint and revision as lm-eval loaded it."""
    if hasattr(lm, "model_args") and isinstance(lm.model_args, Mapping):  # vllm
        return str(lm.model_args["model"]), lm.model_args.get("revision")
    if not isinstance(getattr(lm, "pretrained", None), str):
        raise ConfigError("odiag under lm-eval needs --model_args pretrained=<hub id or directory> (not a model object)")
    revision = getattr(lm, "revision", None)
    return lm.pretrained, None if revision in (None, "main") else revision


def _backend(lm, cfg: RunConfig, teachers, task):
    from harness.backends import STUDENT, ModelSpec
    from harness.plan import backend_options, engine_positions, model_specs, with_threads

    specs = model_specs(cfg, teachers)
    spec = ModelSpec(cfg.student, cfg.student_revision, cfg.dtype)
    options = backend_options(cfg, teachers)  # student_args from --metadata, teachers' model_args
    if type(lm).__name__ == "VLLM":
        from harness.backends.vllm import VLLMBackend, checkpoint_dtype, checkpoint_quantization, engine_settings

        check_engine(engine_settings(lm.model), cfg, checkpoint_dtype(spec), sum(engine_positions(cfg, task)),
                     checkpoint_quantization(spec))
        # scored as odiag run scores (exactly, unless student_args says score_with: vllm): one config, one set of numbers
        return VLLMBackend.from_engine(lm.model, lm.tokenizer, spec=spec, models=specs,
                                       **with_threads(cfg.threads, "vllm", options))
    from harness.backends.hf import HFBackend
    from harness.backends.vllm import checkpoint_dtype

    check_dtype(cfg, getattr(getattr(lm, "model", None), "dtype", ""), checkpoint_dtype(spec), "lm-eval loaded")
    given, positions = getattr(lm, "_max_length", None), sum(engine_positions(cfg, task))
    if isinstance(given, int) and not isinstance(given, bool) and given < positions:
        raise ConfigError(f"task {cfg.task}: --model_args max_length={given}: below the longest prompt and its response ({positions} "
                          "positions), which odiag samples and scores whole (lm-eval would cut its own inputs at "
                          f"max_length, odiag does not): give max_length={positions} or more, or leave it out")
    specs.pop(STUDENT)
    return HFBackend.from_model(lm.model, spec, specs, **with_threads(cfg.threads, "hf", options))


def check_dtype(cfg: RunConfig, running, dtype: str, what: str) -> None:
    """The student as lm-eval holds it (``running``) in the dtype the run records and odiag reads it in
    (``dtype``: the run's, or with ``auto`` the checkpoint's): lm-eval loads it, so a ``dtype`` in
    --metadata alone would be recorded and not used, and vLLM's ``auto`` runs a float32 checkpoint in
    bfloat16."""
    running = str(running or "").removeprefix("torch.")
    if dtype != "auto" and running and running != dtype:
        raise ConfigError(f"{what} {cfg.student} in {running} and odiag reads it in {dtype} (the "
                          f"{'run' if cfg.dtype != 'auto' else 'checkpoint'}'s dtype): the run would record other "
                          f"numbers than its settings give; give --model_args dtype={dtype} (lm-eval loads the student)")


def check_engine(engine: Mapping, cfg: RunConfig, dtype: str, positions: int, quantized: str | None = None) -> None:
    """lm-eval's vLLM engine (``engine_settings``) against what ``odiag run`` would build for ``cfg``: the
    same pi, whole responses, the scorer's depth; a ConfigError naming the ``--model_args`` fix. Options of
    the student's engine in ``student_args`` would reach only the engines odiag starts, so they are refused.
    ``dtype``: the one odiag reads the student in; ``positions``: the longest prompt plus its response;
    ``quantized``: the checkpoint's own quantization method (None: plain weights; "unknown": not read, so not
    held against the engine)."""
    from harness.backends import engine_argument_names

    args = dict(cfg.student_args or {})
    engine_keys = {"engine_options", "gpu_memory_utilization", "tensor_parallel_size", "max_model_len"}
    if given := sorted(k for k in args if k in engine_keys or k in engine_argument_names()):
        raise ConfigError(f"student_args {given}: lm-eval builds the student's engine; give vLLM's engine arguments in "
                          "--model_args (a teacher's engine takes them in its file's model_args)")
    check_dtype(cfg, engine.get("dtype"), dtype, "lm-eval's engine runs")
    # a format the run's settings cannot name under lm-eval: the run directory would hold the rollouts of another
    # student than its settings give, and an odiag run resuming it would add unquantized ones
    method, cache = engine.get("quantization"), engine.get("kv_cache_dtype")
    if method is not None and quantized is None:
        raise ConfigError(f"lm-eval's engine samples {cfg.student} quantized ({method}), which odiag's settings under "
                          "lm-eval cannot record: the run would hold other numbers than its settings give; drop "
                          f"quantization from --model_args, or run it with odiag run --set 'student_args={{quantization: "
                          f"{method}}}'")
    if cache not in (None, "auto"):
        raise ConfigError(f"lm-eval's engine keeps its KV cache in {cache}, which odiag's settings under lm-eval cannot "
                          "record: the run would hold other numbers than its settings give; drop kv_cache_dtype from "
                          f"--model_args, or run it with odiag run --set 'student_args={{kv_cache_dtype: {cache}}}'")
    if isinstance(engine.get("max_model_len"), int) and engine["max_model_len"] < positions:
        raise ConfigError(f"lm-eval's engine has max_model_len {engine['max_model_len']}, below the longest prompt and "
                          f"its response ({positions} positions): vLLM would cut responses short, and a cut response "
                          f"scores 0; give --model_args max_model_len={positions} or more")
    share = engine.get("gpu_memory_utilization")
    if (args.get("score_with", "hf") == "hf" and engine.get("device") == "cuda" and isinstance(share, (int, float))
            and not isinstance(share, bool) and share > 0.5):
        raise ConfigError(f"lm-eval's engine reserves {share:g} of the GPU, and the exact scorer (score_with: hf) loads "
                          "the student and the teachers in transformers beside it: give --model_args "
                          "gpu_memory_utilization=0.5 or less (odiag plan --gpu-memory sizes it), or student_args "
                          "score_with: vllm (scores read from the engines)")
    if engine.get("device") == "cpu" and engine.get("enable_chunked_prefill"):
        raise ConfigError("lm-eval's engine prefills in chunks, which vLLM's CPU build cannot do with seeded requests "
                          "(\"CPU Generator does not use offset\"); give --model_args enable_chunked_prefill=False")
    cap, vocab = engine.get("max_logprobs"), engine.get("vocab_size")
    wanted = min(int(args.get("score_logprobs", 128)), vocab or 1 << 62)
    if args.get("score_with") == "vllm" and isinstance(cap, int) and 0 <= cap < wanted:
        raise ConfigError(f"student_args score_with vllm: lm-eval's engine lists at most {cap} log-probabilities per "
                          f"position (its max_logprobs) and the run asks for {wanted} (score_logprobs): give "
                          f"--model_args max_logprobs={wanted}, or student_args score_logprobs: {cap}")


def run_config(task: DiagnosticTask, lm, n_questions: int) -> tuple[RunConfig, dict]:
    """The `RunConfig` of ``task`` under ``lm`` (metadata merged), and the extra settings."""
    from harness.tasks.lmeval import task_names

    if task.config.task not in task_names():
        raise ConfigError(f"task {task.config.task}: not one of odiag's task YAMLs ({TASKS_DIR}): odiag diagnoses the "
                          "tasks whose answer checking it knows; add yours there as odiag_<name>.yaml (odiag ls tasks)")
    where = f"task {task.config.task}: --metadata"
    task._run_settings  # noqa: B018 - the same checks as the task's, before a model call
    metadata = task.config.metadata or {}
    seed = getattr(task, "lm_eval_seed", LM_EVAL_FEWSHOT_SEED)
    if seed not in (None, LM_EVAL_FEWSHOT_SEED) and "seed" not in metadata:
        raise ConfigError(f"task {task.config.task}: lm-eval's --seed {seed}: {UNSEEDED}")
    run = settings(metadata, _model_argument_names(lm), where)
    student, revision = _student(lm)
    for key in ("pretrained", "model"):  # lm-eval merges --model_args into the metadata, --metadata last
        if key in metadata and str(metadata[key]) != student:
            raise ConfigError(f"{where}: key {key!r} is {metadata[key]!r}, but lm-eval loaded {student!r} from "
                              "--model_args: give the model in --model_args alone")
    yaml_block = (task_yaml(task.config.task).get("metadata") or {}).get("odiag")
    if metadata.get("odiag") != yaml_block:  # from --metadata, or from a copy of the YAML under another --include_path
        raise ConfigError(f"task {task.config.task}: metadata.odiag differs from odiag's own "
                          f"{TASKS_DIR / task.config.task}.yaml (given in --metadata, or by the YAML lm-eval read): odiag "
                          "reads its own; give run settings such as n_min as --metadata keys")
    data = {k: v for k, v in run.items() if k not in EXTRA and k not in DECIDED}
    data |= generation_settings(task.config.generation_kwargs, data, f"task {task.config.task}",
                                _yaml_generation_kwargs(task.config.task), warn=True, given=False)
    data |= {"task": task.config.task, "backend": "vllm" if type(lm).__name__ == "VLLM" else "hf",
             "student": anchored(student), "student_revision": revision, "limit": n_questions}
    return build(RunConfig, data, where), {k: run[k] for k in EXTRA if k in run}


def question_records(nodes: Mapping[str, np.ndarray], teachers: Sequence[str], algorithms: Sequence[str]) -> dict[str, dict]:
    """Per question id, the metric values of SPEC §5 (path means, then the question's mean over paths).

    ``alignment``: mean over its paths of each path's mean alignment; ``incorrect_minus_correct``:
    mean over its incorrect paths minus mean over its correct ones (only with both);
    ``teacher_advantage``: mean over paths of each path's mean. None where undefined, so lm-eval's
    mean over questions is `harness.core.stats.aggregate`'s per-teacher mean.
    """
    out: dict[str, dict] = {}
    groups: dict[tuple, dict[int, list]] = {}
    for i in range(len(nodes["alignment"])):
        key = (str(nodes["question_id"][i]), str(nodes["teacher"][i]), str(nodes["algorithm"][i]))
        path = groups.setdefault(key, {}).setdefault(int(nodes["path_id"][i]), [bool(nodes["path_correct"][i]), [], []])
        path[1].append(float(nodes["alignment"][i]))
        path[2].append(float(nodes["teacher_advantage"][i]))

    def finite_mean(values):
        values = [v for v in values if v is not None and np.isfinite(v)]
        return float(np.mean(values)) if values else None

    for qid in {k[0] for k in groups}:
        metrics = {}
        for t in teachers:
            for a in algorithms:
                paths = groups.get((qid, t, a), {}).values()
                align = [(c, finite_mean(al)) for c, al, _ in paths]
                correct = finite_mean([m for c, m in align if c])
                wrong = finite_mean([m for c, m in align if not c])
                metrics[metric_name("alignment", t, a)] = finite_mean([m for _, m in align])
                metrics[metric_name("incorrect_minus_correct", t, a)] = (
                    None if correct is None or wrong is None else wrong - correct)
                metrics[metric_name("teacher_advantage", t, a)] = finite_mean([finite_mean(ta) for _, _, ta in paths])
        out[qid] = metrics
    return out


def _odiag_task(task: DiagnosticTask, cfg: RunConfig, doc_ids: Sequence[int]):
    """odiag's `LMEvalTask` for ``task``, whose questions are exactly lm-eval's documents ``doc_ids``."""
    from harness.tasks import Question
    from harness.tasks.lmeval import LMEvalTask

    class ChosenDocs(LMEvalTask):
        def _build_questions(self, limit):  # built once, as LMEvalTask.questions caches them
            docs = self._task.eval_docs
            return [  # ids as LMEvalTask numbers documents: their index in the evaluation split
                Question(id=f"{i:05d}", prompt_ids=self.chat_ids(self._task.doc_to_text(docs[i])),
                         doc={"prompt": self._task.doc_to_text(docs[i]), "target": self._target(docs[i]),
                              "index": i, "record": docs[i]})
                for i in doc_ids
            ]

    name = task.config.task
    out = ChosenDocs(name, tokenizer=cfg.student, revision=cfg.student_revision, max_new_tokens=cfg.max_new_tokens)

    def question(t, i: int):
        docs = t.eval_docs
        return (t.doc_to_text(docs[i]), t.doc_to_target(docs[i])) if i < len(docs) else None

    # a YAML of another --include_path under odiag's task name: its questions would be recorded as odiag's task's
    if (i := next((i for i in doc_ids if question(out._task, i) != question(task, i)), None)) is not None:
        raise ConfigError(f"task {name}: the YAML lm-eval read gives document {i} another question than odiag's "
                          f"{TASKS_DIR / name}.yaml (another --include_path's task under its name?): odiag diagnoses the "
                          "task YAMLs of its own tasks directory; add yours there under another name, or use odiag's")
    out._task = task  # the documents and prompts lm-eval itself built the requests from
    return out


def _doc_index(task: DiagnosticTask, inst: Instance) -> int:
    """The index of ``inst``'s document in the evaluation split: its ``doc_id``, except under lm-eval's
    ``--samples``, which numbers the chosen documents 0..k-1 (a question's id must be its own)."""
    docs = task.eval_docs
    if inst.doc_id < len(docs) and docs[inst.doc_id] == inst.doc:
        return inst.doc_id
    for i, doc in enumerate(docs):
        if doc == inst.doc:
            return i
    raise ConfigError(f"task {task.config.task}: a request's document is not in the evaluation split")


def odiag_diagnose(self, instances: list[Instance]) -> list[dict]:
    """lm-eval model method: run odiag on each task's questions; one record per instance. An expected
    failure (a run directory that refuses these settings, a teacher the task cannot hold) is one line
    and exit code 2, under plain ``lm_eval`` as under ``odiag eval``."""
    try:
        return _diagnose(self, instances)
    except OdiagError as exc:
        refuse(str(exc))
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM under odiag eval: one line, not lm_eval's traceback
        from harness.cli import Terminated

        line = "odiag: terminated (SIGTERM)" if isinstance(exc, Terminated) else "odiag: interrupted"
        print(line + (f"; finished work is kept in {_kept()}: run the same command again to resume"
                      if _kept() else ""), file=sys.stderr, flush=True)
        raise SystemExit(128 + (15 if isinstance(exc, Terminated) else 2)) from None
    except Exception as exc:
        if (what := out_of_memory(exc)) is None:
            raise
        where = _kept() or "the run directory (--metadata key 'out')"
        refuse(f"{what}; finished work is kept in {where}: size the run with odiag plan --gpu-memory GIB, lower "
               "--model_args gpu_memory_utilization (--model vllm) or student_args batch_size or score_chunk, and "
               "run the same command again")


_OPENED: list[Path] = []  # run directories this process's odiag tasks ran in, the last one's run last


def _kept() -> str | None:
    """The run directory a stop keeps finished work in: the last one a run opened (None: none was)."""
    return str(_OPENED[-1]) if _OPENED and (_OPENED[-1] / "config.json").is_file() else None


def _diagnose(self, instances: list[Instance]) -> list[dict]:
    from harness.pipeline import json_ready, run
    from harness.progress import Reporter
    from harness.report import no_decision_reason
    from harness.teachers import load_teacher

    _check_supported(self)
    by_task: dict[str, list[Instance]] = {}
    for inst in instances:
        by_task.setdefault(inst.task_name, []).append(inst)
    records: dict[int, dict] = {}
    planned = {}
    for name, group in by_task.items():  # every task's settings checked before the first one runs
        task = group[0].args[1].task
        index = {id(inst): _doc_index(task, inst) for inst in group}
        planned[name] = (group, task, index, *run_config(task, self, len(set(index.values()))))
    named = [name for name, (*_, extra) in planned.items() if extra.get("out")]
    if len(named) > 1 and len({str(planned[name][-1]["out"]) for name in named}) < len(named):
        raise _one_out(named)
    sites: dict[str, list[str]] = {}
    for name, (group, task, index, cfg, extra) in planned.items():
        doc_ids = sorted(set(index.values()))
        out = Path(extra.get("out") or Path("runs") / "lmeval" / f"{name}-{cfg.hash()}{_documents(doc_ids)}")
        teachers = [load_teacher(t) for t in cfg.teachers]
        log.info("odiag: %s, %d %s, teachers %s -> %s", name, len(doc_ids), plural(len(doc_ids), "question"),
                 list(cfg.teachers), out)
        odiag_task = _odiag_task(task, cfg, doc_ids)
        backend = _backend(self, cfg, teachers, odiag_task)  # its checks before the run directory is made
        reporter = Reporter()
        _OPENED.append(out)
        try:
            results = run(cfg, out, on_progress=reporter, backend=backend, task=odiag_task,
                          out_flag=f"task {name}: --metadata key 'out'")
        finally:
            reporter.close()
        for line in reporter.closing_lines():
            print(line, file=sys.stderr, flush=True)
        reason = None if results["counts"]["decision_points"] else no_decision_reason(results)
        if extra.get("site"):  # the site shows every task of this command that names it
            from harness.leaderboard import build as build_site

            sites.setdefault(str(extra["site"]), []).append(str(out))
            build_site(sites[str(extra["site"])], str(extra["site"]), None)
        by_question = question_records(_read_nodes(out, results), [t.name for t in teachers], cfg.algorithms)
        notes = {q["id"]: q for q in results["questions"]}
        for inst in group:
            qid = f"{index[id(inst)]:05d}"
            empty = dict.fromkeys(task.metric_names())
            record = {
                "question_id": qid, "run_dir": str(out), "metrics": by_question.get(qid, empty),
                "question": notes.get(qid, {}),
            }
            if reason:
                record[NO_DECISION_POINT] = reason
            # a JSON string: lm-eval writes responses into --log_samples with str()
            records[id(inst)] = json.dumps(json_ready(record), sort_keys=True)
    return [records[id(inst)] for inst in instances]


def _documents(doc_ids: Sequence[int]) -> str:
    """How a default run directory's name tells documents chosen with ``--samples`` from the first ``--limit``
    ones (the same count, the same config hash): ``-docs<digest>``, or nothing for the first ones."""
    if list(doc_ids) == list(range(len(doc_ids))):
        return ""
    return "-docs" + hashlib.sha256(json.dumps(list(map(int, doc_ids))).encode()).hexdigest()[:8]


def _read_nodes(out: Path, results: dict) -> dict[str, np.ndarray]:
    from harness.core.records import NODE_COLUMNS
    from harness.results import read_tables

    # the table of these results, not of a later command's
    table = read_tables(out, results, {"nodes.parquet": NODE_COLUMNS})["nodes.parquet"]
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}


def _unsupported(self, instances: list[Instance]) -> list[dict]:
    """lm-eval's other model classes: odiag's tasks refused in one line (lm-eval would fail on a missing method)."""
    refuse(f"{type(self).__name__}: {UNSUPPORTED}")


def attach() -> None:
    """Give lm-eval's ``hf`` and ``vllm`` models the ``odiag_diagnose`` method (vLLM only when importable), and
    every other model class one that refuses odiag's tasks in one line."""
    from lm_eval.api.model import LM

    if not hasattr(LM, REQUEST_TYPE):
        LM.odiag_diagnose = _unsupported
    for module, cls in (("huggingface", "HFLM"), ("vllm_causallms", "VLLM")):
        try:
            model = getattr(importlib.import_module(f"lm_eval.models.{module}"), cls)
        except ImportError:  # that model type is unusable here anyway (lm-eval's hf model needs accelerate)
            continue
        model.odiag_diagnose = odiag_diagnose


attach()


# the command line --------------------------------------------------------------------------------


def lm_eval_argv(argv: Sequence[str]) -> list[str]:
    """``lm_eval``'s arguments for ``odiag eval ARGS``: the same, with odiag's task directory added as
    ``--include_path`` after the subcommand (``run`` when none is given, as ``lm_eval`` itself does)."""
    argv = list(argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help") or argv == ["run"]:
        return argv  # lm_eval's own help
    if argv[0] not in LM_EVAL_SUBCOMMANDS:
        argv = ["run", *argv]
    if any(a == "--include_path" or a.startswith("--include_path=") for a in argv):
        return argv
    return [argv[0], "--include_path", str(TASKS_DIR), *argv[1:]]


def _yaml_metadata(task: str) -> dict | None:
    """The ``metadata`` mapping of odiag's task YAML ``task`` (as lm-eval merges --metadata into it)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    metadata = load_yaml(TASKS_DIR / f"{task}.yaml", resolve_func=False).get("metadata")
    return metadata if isinstance(metadata, dict) else None


def check_eval_options(argv: Sequence[str]) -> None:
    """Refuse, before a model loads, the ``lm_eval run`` options odiag's tasks cannot honour (the
    tasks refuse them too, under plain ``lm_eval``); other tasks keep every lm-eval option."""
    if argv[:1] != ["run"] or any(a in ("-h", "--help") for a in argv):
        return
    from lm_eval._cli.harness import HarnessCLI

    run = HarnessCLI()._subparsers.choices["run"]

    def refused(message: str):  # lm_eval's own refusal of its arguments, as one line rather than its usage text
        raise ConfigError(f"lm_eval run: {message} (see 'odiag eval run --help')")

    run.error = refused
    args = run.parse_args(list(argv[1:]))
    ours = {p.stem for p in TASKS_DIR.glob("*.yaml")}
    tasks = [t for t in (args.tasks or []) if t in ours]
    if not tasks:
        return
    where = f"task {tasks[0]}"
    if any((args.cache_requests or {}).get(k) for k in ("cache_requests", "rewrite_requests_cache")):
        raise ConfigError(f"{where}: --cache_requests: {CACHED}")
    from lm_eval.api.registry import get_model

    try:
        model_class = get_model(args.model) if args.model else None
    except ValueError:
        model_class = None  # lm-eval names an unknown model itself
    except ImportError:  # its library is not installed here (vLLM): lm-eval says so once it builds the model
        model_class = None
    kind = (SUPPORTED.get(model_class.__name__) if model_class is not None
            else "vllm" if args.model == "vllm" else None)
    if model_class is not None and (kind is None or not hasattr(model_class, REQUEST_TYPE)):
        raise ConfigError(f"{where}: --model {args.model}: {UNSUPPORTED}")
    if args.num_fewshot not in (None, 0):
        raise ConfigError(f"{where}: --num_fewshot {args.num_fewshot}: odiag's prompts are zero-shot "
                          "(a diagnostic of the student's own prompt)")
    if getattr(args, "apply_chat_template", None):
        raise ConfigError(f"{where}: --apply_chat_template: odiag renders every prompt with the student's own "
                          "chat template already (tasks/*.yaml metadata.odiag.thinking sets its thinking mode)")
    if args.system_instruction:
        raise ConfigError(f"{where}: --system_instruction: odiag's prompts are the task's user turn only; "
                          "put the instruction in the task YAML's doc_to_text")
    if getattr(args, "fewshot_as_multiturn", None):
        raise ConfigError(f"{where}: --fewshot_as_multiturn: odiag's prompts are zero-shot")
    from harness.teachers import load_teacher

    metadata = args.metadata or {}
    fields, model_keys = {f.name for f in dataclasses.fields(RunConfig)}, _model_argument_names()
    if misplaced := sorted(k for k in metadata if k in model_keys and k not in fields and k not in EXTRA):
        raise ConfigError(f"{where}: --metadata key {misplaced[0]!r} is an argument of the model: give it in --model_args "
                          "(lm-eval builds the model from those alone)")
    if "odiag" in metadata:
        raise ConfigError(f"{where}: --metadata key 'odiag': the task's own settings (answer type, n_min, ...) are its "
                          f"YAML's ({TASKS_DIR / tasks[0]}.yaml); give odiag's run settings as top-level keys")
    for task in tasks:  # raises with the key it cannot honour (an until other than the task YAML's own)
        generation = generation_settings(args.gen_kwargs or {}, metadata, f"task {task}", _yaml_generation_kwargs(task))
    if args.seed not in (None, LM_EVAL_SEEDS) and "seed" not in metadata:
        raise ConfigError(f"{where}: --seed {','.join(map(str, args.seed))}: {UNSEEDED}")
    if len(tasks) > 1 and metadata.get("out"):
        raise _one_out(tasks)
    _check_model_args(args.model_args if isinstance(args.model_args, dict) else {}, kind, where)
    # before a model loads. A task YAML may add metadata (teachers, say) that lm-eval merges in later: with
    # only odiag's task directory included, its YAMLs are the ones lm-eval reads, so they can be asked now
    ours_only = [str(p) for p in (args.include_path if isinstance(args.include_path, list) else [args.include_path])
                 if p] == [str(TASKS_DIR)]
    complete = ours_only and not any("teachers" in (_yaml_metadata(t) or {}) for t in tasks)
    cfg = metadata_config(metadata, model_keys, f"{where}: --metadata", complete=complete)
    teachers = [load_teacher(t) for t in cfg.teachers] if "teachers" in metadata else []  # unknown names, bad files
    if kind is not None:  # the temperatures that backend samples at: vLLM's floor; its options
        from harness.plan import backend_options, check_backend

        checked = dataclasses.replace(cfg, backend=kind, **generation)
        check_backend(checked, teachers, built=False)
        if kind == "hf" or importlib.util.find_spec("vllm") is not None:  # without vLLM, lm-eval refuses its model
            try:
                backend_options(checked, teachers)
            except StudentArgsError as exc:
                raise ConfigError(f"{where}: --metadata key {exc}") from None
            except ConfigError as exc:
                raise ConfigError(f"{where}: --metadata: {exc}") from None


def _check_model_args(model_args: Mapping, kind: str | None, where: str) -> None:
    """What lm-eval would fail on with a traceback while it builds the student: a local model folder that does
    not exist, a dtype torch does not have (the hf model; vLLM names its own)."""
    from harness.modelfiles import is_local_path

    for key in ("pretrained", "model"):
        name = model_args.get(key)
        if isinstance(name, str) and is_local_path(name) and not Path(name).expanduser().exists():
            raise ConfigError(f"{where}: --model_args {key}={name}: no such directory (a local model is a folder "
                              "holding its config and weights; a hub model is named org/name)")
    dtype = model_args.get("dtype")
    if kind == "hf" and isinstance(dtype, str) and dtype != "auto":
        import torch

        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ConfigError(f"{where}: --model_args dtype={dtype}: not a torch dtype; give auto, float32, bfloat16 "
                              "or float16")


def main_eval(argv: list[str]) -> int:
    """``odiag eval ...``: ``lm_eval`` (any subcommand and flag) with odiag's tasks on the include path."""
    from lm_eval.__main__ import cli_evaluate

    argv = lm_eval_argv(argv)
    check_eval_options(argv)
    from harness.tasks.lmeval import quiet_hub_retries

    saved = sys.argv
    sys.argv = ["lm_eval", *argv]
    try:
        with quiet_hub_retries():  # a data set the hub cannot serve is one line, as under odiag run
            cli_evaluate()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
    return 0


__all__ = ["DiagnosticTask", "generation_settings", "lm_eval_argv", "main_eval", "odiag_diagnose",
           "question_records", "settings"]
